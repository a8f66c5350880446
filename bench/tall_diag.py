"""The column statistics on tall arrays (more rows than the one-pass kernels hold), piece by piece.

Batch norm with features last on [R, C] with R past the one-pass plans (cols_fwd, cols_bwd_rx, cols_bwd)
runs the split path: norm_cols_reduce (per-split column sums), norm_finalize, norm_cols_apply. This times
each launch back to back (they allocate, so no CUDA graph; at these sizes the GPU time dominates) against a
device copy, as effective bandwidth (bytes each piece must move over its time) and % of the copy's.

    PYTHONPATH=. python bench/tall_diag.py [--shapes 65536x512,131072x256 --dtypes bfloat16,float32]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

try:
    from bench.harness import Table, save_json, time_ms
except ImportError:
    from cusparseblocks._timing import Table, save_json, time_ms


def _pieces(ops, cupy, x, dy, g):
    """(name, bytes moved, fn) of each piece on x, dy [R, C] with gain g [C]."""
    R, C = x.shape
    nb = x.nbytes
    y = cupy.empty_like(x)
    _, mean, rstd = ops.batch_norm_fprop(x, g, None)
    ws = ops._cols_ws(x, dy, None, mean, rstd, 1)
    A, B, _, _ = ops._finalize(ws, x, g, C, 1.0 / R, 0.0, 1, want=("a", "b"), sums_t=True)
    return [
        ("copy", 2 * nb, lambda: cupy.copyto(y, x)),
        ("fwd: norm_cols_reduce", nb, lambda: ops._cols_ws(x, None, None, None, None, 0)),
        ("fwd: all", 2 * nb, lambda: ops.batch_norm_fprop(x, g, None)),
        ("bwd: norm_cols_reduce", 2 * nb, lambda: ops._cols_ws(x, dy, None, mean, rstd, 1)),
        ("bwd: norm_finalize", 0, lambda: ops._finalize(ws, x, g, C, 1.0 / R, 0.0, 1, want=("a", "b"))),
        ("bwd: norm_cols_apply", 3 * nb, lambda: ops._apply_bwd(dy, x, mean, rstd, g, A, B, 1)),
        ("bwd: all", 3 * nb, lambda: ops.batch_norm_bprop(dy, x, g, mean, rstd)),
        ("ln bwd ax0: all", 3 * nb, lambda: ops.layer_norm_bprop(dy, x, None, mean, rstd, feature_axis=0)),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="65536x512,131072x256")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args(argv)
    import cupy

    from cusparseblocks import ops
    from cusparseblocks._array import bfloat16

    table = Table(["dtype", "shape", "piece", "ms", "GB/s", "%copy"])
    rows = []
    for shape in args.shapes.split(","):
        R, C = (int(v) for v in shape.split("x"))
        for dname in args.dtypes.split(","):
            dt = bfloat16 if dname == "bfloat16" else np.dtype(dname)
            rng = cupy.random.default_rng(0)
            x = (rng.standard_normal((R, C), dtype=cupy.float32) * 3 + 5).astype(dt)
            dy = rng.standard_normal((R, C), dtype=cupy.float32).astype(dt)
            g = rng.standard_normal(C, dtype=cupy.float32).astype(dt)
            copy_bw = None
            for name, nbytes, fn in _pieces(ops, cupy, x, dy, g):
                ms = time_ms(fn)["median"]
                bw = nbytes / ms / 1e6 if nbytes else 0.0
                copy_bw = copy_bw or bw
                row = {"dtype": dname, "shape": shape, "piece": name, "ms": ms, "GB/s": bw}
                row["%copy"] = 100 * bw / copy_bw
                rows.append(row)
                table.add(**row)
    command = "PYTHONPATH=. python " + " ".join(sys.argv)
    save_json("tall_diag", {"args": vars(args), "rows": rows}, command=command)
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
