"""The dense route (cuBLAS on the zero-filled weights) against the block-sparse kernels, in one run.

For each block size, density, dtype and op: the block-sparse default (``ROUTE["mode"] = "never"``), the
dense route (``"always"``: expansion + cublasGemmEx, or the update's product + gather) and the bare dense
product on a ready dense matrix (cuBLAS alone), as CUDA-graph replays (GPU time). Each route's result is
checked against the block-sparse kernels' (relative Frobenius error printed). The crossovers set
``_dense_route.DENSE_MIN``. Table last; JSON in bench/results/.

Run: PYTHONPATH=. python bench/dense_route.py [--blocks 8,16,32,64] [--densities 0.05,0.1,0.2,0.35,0.5]
     [--dtypes float16,bfloat16,float32] [--ops fprop,bprop,updat] [--n 4096] [--k 4096]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cusparseblocks import BlockSparseMatMul, _dense_route, layouts
from cusparseblocks._timing import Table, save_json, time_ms


def _calls(op, name, x, dy, w, dense, out, n):
    """(the op through BlockSparseMatMul, the bare cuBLAS product on the ready dense matrix) for ``name``."""
    import cupy as cp

    g = _dense_route._gemm
    if name == "updat":
        scratch = cp.empty((op.K, op.M), dtype=cp.float32)
        return lambda: op.updat(x, dy, out=out), lambda: g(scratch, x, dy, True, False, n, False)
    if name == "fprop":
        return lambda: op.fprop(x, w, out=out), lambda: g(out, x, dense, False, False, op.K, False)
    return lambda: op.bprop(dy, w, out=out), lambda: g(out, dy, dense, False, True, op.M, False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="4096", help="comma-separated batch sizes")
    ap.add_argument("--k", type=int, default=4096, help="K = M")
    ap.add_argument("--densities", default="0.05,0.1,0.2,0.35,0.5")
    ap.add_argument("--blocks", default="8,16,32,64")
    ap.add_argument("--dtypes", default="float16,bfloat16,float32")
    ap.add_argument("--ops", default="fprop,bprop,updat")
    args = ap.parse_args(argv)
    import cupy as cp

    from cusparseblocks._array import bfloat16

    table = Table(["dtype", "b", "d", "N", "op", "sparse ms", "route ms", "cuBLAS ms", "sparse x", "route x",
                   "winner", "rel err"])
    rows = []
    saved = dict(_dense_route.ROUTE)
    try:
        for dname in args.dtypes.split(","):
            dt = bfloat16 if dname == "bfloat16" else np.dtype(dname)
            for n in (int(v) for v in args.n.split(",")):
                for b in (int(v) for v in args.blocks.split(",")):
                    kb = args.k // b
                    for d in (float(v) for v in args.densities.split(",")):
                        op = BlockSparseMatMul(layouts.random(kb, kb, d, seed=1), b)
                        rng = cp.random.default_rng(0)
                        x = rng.standard_normal((n, op.K), dtype=cp.float32).astype(dt)
                        dy = rng.standard_normal((n, op.M), dtype=cp.float32).astype(dt)
                        w = (rng.standard_normal(op.w_shape, dtype=cp.float32) * 0.1).astype(dt)
                        dense = op.dense(w)
                        for name in args.ops.split(","):
                            shape = (n, op.M if name == "fprop" else op.K) if name != "updat" else op.w_shape
                            out = cp.empty(shape, dtype=dt)
                            fn, cub = _calls(op, name, x, dy, w, dense, out, n)
                            res = {}
                            for mode in ("never", "always"):
                                _dense_route.ROUTE["mode"] = mode
                                fn()
                                res[mode] = out.astype(cp.float32)
                                res[mode + " ms"] = time_ms(fn, graph=True)["median"]
                            diff = cp.linalg.norm(res["always"] - res["never"])
                            err = float(diff / cp.linalg.norm(res["never"]))
                            cub_ms = time_ms(cub, graph=True)["median"]
                            row = {"dtype": dname, "b": b, "d": d, "N": n, "op": name,
                                   "sparse ms": res["never ms"], "route ms": res["always ms"],
                                   "cuBLAS ms": cub_ms, "sparse x": cub_ms / res["never ms"] * d,
                                   "route x": cub_ms / res["always ms"] * d,
                                   "winner": "route" if res["always ms"] < res["never ms"] else "sparse",
                                   "rel err": err}
                            rows.append(row)
                            table.add(**row)
                            print(row, flush=True)
    finally:
        _dense_route.ROUTE.clear()
        _dense_route.ROUTE.update(saved)
    save_json("dense_route", {"args": vars(args), "rows": rows},
              command="PYTHONPATH=. python bench/dense_route.py " + " ".join(sys.argv[1:]))
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
