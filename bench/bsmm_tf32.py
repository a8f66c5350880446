"""float32 block-sparse matmul: FFMA (default) vs TF32 tensor cores (allow_tf32=True), with fp16 for scale.

Run from the repository root: ``PYTHONPATH=. python bench/bsmm_tf32.py [--short] [--variants]``.
Times fprop, bprop and updat (CUDA events, median, inputs rotated so L2 does not flatter), reports
TFLOP/s over the nonzero blocks and the TF32 result's relative error against the exact fp32 path.
``--variants`` also times each xw_tf32 tile variant (large/medium/small) at every size.
Prints one table last; JSON and the command go to bench/results/bsmm_tf32-<date>.json/.cmd.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.harness import Table, save_json, time_ms
from cusparseblocks import BlockSparseMatMul, _matmul_tf32


def _case(features, block_size, density, n, seed=0):
    rng = np.random.default_rng(seed)
    blocks = features // block_size
    mask = rng.random((blocks, blocks)) < density
    mask[np.arange(blocks), np.arange(blocks)] = True
    return mask, n


def _inputs(cp, op, n, dtype, copies, rng):
    """`copies` sets of (x, dy, w), rotated by the timing so L2 does not flatter."""
    xs = [cp.asarray(rng.standard_normal((n, op.K)).astype(dtype)) for _ in range(copies)]
    dys = [cp.asarray(rng.standard_normal((n, op.M)).astype(dtype)) for _ in range(copies)]
    ws = [cp.asarray((0.05 * rng.standard_normal(op.w_shape)).astype(dtype)) for _ in range(copies)]
    return xs, dys, ws


def _rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="one size per block size")
    parser.add_argument("--variants", action="store_true", help="also time each xw_tf32 tile variant")
    args = parser.parse_args(argv)
    import cupy as cp

    rng = np.random.default_rng(1)
    sizes = [(4096, 0.2, 4096)] if args.short else [(4096, 0.2, 1024), (4096, 0.2, 8192), (8192, 0.1, 4096)]
    table = Table(["b", "features", "density", "N", "op", "path", "ms", "TFLOP/s", "rel_err_vs_fp32"])
    rows = []
    for b in (8, 16, 32, 64):
        for features, density, n in sizes:
            mask, n = _case(features, b, density, n)
            flops = 2.0 * n * int(mask.sum()) * b * b
            exact = BlockSparseMatMul(mask, b)
            tf32 = BlockSparseMatMul(mask, b, allow_tf32=True)
            results = {}
            paths = [("fp32 FFMA", exact, np.float32, None), ("tf32", tf32, np.float32, None),
                     ("fp16 TC", exact, np.float16, None)]
            if args.variants:
                paths += [(f"tf32 {v}", tf32, np.float32, v) for v in _matmul_tf32.VARIANTS]
            data32 = _inputs(cp, exact, n, np.float32, 3, rng)  # the same inputs for every path
            data16 = tuple([a.astype(cp.float16) for a in arrays] for arrays in data32)
            for name, op, dtype, variant in paths:
                xs, dys, ws = data32 if dtype == np.float32 else data16
                _matmul_tf32.force_variant = variant
                try:
                    timed = {
                        "fprop": time_ms(op.fprop, rotate=list(zip(xs, ws))),
                        "bprop": time_ms(op.bprop, rotate=list(zip(dys, ws))),
                        "updat": time_ms(op.updat, rotate=list(zip(xs, dys))),
                    }
                    if variant is None and dtype == np.float32:
                        results[name] = (op.fprop(xs[0], ws[0]).get(), op.updat(xs[0], dys[0]).get())
                finally:
                    _matmul_tf32.force_variant = None
                for kind, t in timed.items():
                    err = ""
                    if name == "tf32":
                        i = 0 if kind == "fprop" else 1
                        err = _rel(results["tf32"][i], results["fp32 FFMA"][i]) if kind != "bprop" else ""
                    row = {"b": b, "features": features, "density": density, "N": n, "op": kind, "path": name,
                           "ms": t["median"], "TFLOP/s": flops / t["median"] / 1e9, "rel_err_vs_fp32": err}
                    table.add(**row)
                    rows.append({**row, "p10": t["p10"], "p90": t["p90"]})
    given = argv if argv is not None else sys.argv[1:]
    command = "PYTHONPATH=. python " + " ".join(["bench/bsmm_tf32.py", *given])
    path = save_json("bsmm_tf32", {"rows": rows}, command=command)
    print(f"results: {path}")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
