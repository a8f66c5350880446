"""xw_gmma / xw_gmma_rs / updat_gmma* (wgmma) tiles against the mma.sync kernels and dense cuBLAS, in one run.

N = K = M = 4096 (``--n``), b = 16, 32 and 64 (``--blocks``; the update also 8), fp16 (``--dtypes``:
a comma-separated list); each tile is checked against cuBLAS on the dense masked W before it is timed
(relative Frobenius error printed). fprop/bprop times are CUDA-graph replays (GPU time alone), the update's
back-to-back calls, with inputs rotated past L2. ``--ops`` keeps some of fprop,bprop,updat. Table last;
JSON in bench/results/.

Run: PYTHONPATH=. python bench/bsmm_gmma.py [--densities 0.5,0.2,0.05] [--n 4096] [--blocks 16,8 --ops updat]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu
from cusparseblocks._timing import Table, save_json, time_ms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--densities", default="0.5,0.2,0.05")
    ap.add_argument("--blocks", default="16,32,64")
    ap.add_argument("--dtypes", default="float16", help="comma-separated: float16,bfloat16")
    ap.add_argument("--ops", default="fprop,bprop,updat", help="comma-separated: fprop,bprop,updat")
    ap.add_argument("--only", default="", help="comma-separated fprop/bprop tiles to time (default: all)")
    ap.add_argument("--seq", action="store_true",
                    help="also time each tile of several columns with its columns in index order (kernel "
                         "name + '/seq'; the default groups columns by shared blocks: column_order)")
    args = ap.parse_args(argv)
    ops = args.ops.split(",")
    import cupy as cp

    n = k = args.n
    from cusparseblocks._array import bfloat16

    rs = cp.random.RandomState(0)
    table = Table(["op", "dtype", "b", "density", "kernel", "ms", "TFLOPs", "x_dense", "vs mma.sync",
                   "rel err"])
    rows = []
    for dtype in args.dtypes.split(","):
        dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        _run_dtype(cp, rs, args, ops, dtype, dt, n, k, table, rows)
    path = save_json("bsmm_gmma", {"args": vars(args), "rows": rows}, command="PYTHONPATH=. python "
                     + " ".join(["bench/bsmm_gmma.py", *sys.argv[1:]]))
    print(f"wrote {path}")
    print(table.render())
    return 0


def _run_dtype(cp, rs, args, ops, dtype, dt, n, k, table, rows):
    dense = {}
    for b in map(int, args.blocks.split(",")):
        tiled = (_matmul_gpu.XW_GMMA_TILES, _matmul_gpu.XW_GMMA_RS_TILES, _matmul_gpu.XW_TMA_TILES)
        xw = any(b in t for t in tiled) and ("fprop" in ops or "bprop" in ops)
        for d in map(float, args.densities.split(",") if xw else ()):
            rng = np.random.default_rng(int(b * 1000 * d))
            mask = rng.random((k // b, k // b)) < d
            mask[0, 0] = True
            op = BlockSparseMatMul(mask, b)
            sets = [(rs.standard_normal((n, k), dtype=cp.float32).astype(dt),
                     (rs.standard_normal(op.w_shape, dtype=cp.float32) * 0.05).astype(dt)) for _ in range(3)]
            outs = [cp.empty((n, k), dtype=dt) for _ in sets]
            flops = 2.0 * n * op.layout.nnz * b * b
            for kind in [o for o in ("fprop", "bprop") if o in ops]:
                fn = op.fprop if kind == "fprop" else op.bprop
                if kind not in dense:
                    dsets = [(s[0], rs.standard_normal((k, k), dtype=cp.float32).astype(dt)) for s in sets]
                    dfn = cp.matmul if kind == "fprop" else (lambda a, wd: cp.matmul(a, wd.T))
                    dense[kind] = time_ms(dfn, rotate=dsets)["median"]
                dense_tf = 2.0 * n * k * k / (dense[kind] * 1e-3) / 1e12
                x0, w0 = sets[0]
                wd = op.dense(w0.astype(cp.float32))
                ref = x0.astype(cp.float32) @ (wd if kind == "fprop" else wd.T)
                base = None
                # the mma.sync row: xw_tc, or xw_wide_tc at b = 16
                names = [(v, True) for v in ("xw_tc", *(v for t in tiled for v in t.get(b, {})))]
                if args.seq:
                    multi = {v for v, t in _matmul_gpu.XW_TMA_TILES.get(b, {}).items() if t[0] * t[1] > 1}
                    multi |= {v for v, t in _matmul_gpu.XW_GMMA_RS_TILES.get(b, {}).items() if t[0] > 1}
                    names = [(v, g) for v, _ in names for g in ((True, False) if v in multi else (True,))]
                for variant, grouped in names:
                    if args.only and variant != "xw_tc" and variant not in args.only.split(","):
                        continue
                    _matmul_gpu.force_variant = None if variant == "xw_tc" else variant
                    _matmul_gpu.group_columns = grouped
                    saved = _matmul_gpu.gmma_enabled
                    _matmul_gpu.gmma_enabled = variant != "xw_tc"
                    try:
                        y = fn(x0, w0)
                        err = float(cp.linalg.norm(y.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                        t = time_ms(lambda a, w, o, fn=fn: fn(a, w, out=o),
                                    rotate=[(*s, o) for s, o in zip(sets, outs)], graph=True)["median"]
                    finally:
                        _matmul_gpu.force_variant = None
                        _matmul_gpu.gmma_enabled = saved
                        _matmul_gpu.group_columns = True
                    base = base or t
                    tf = flops / (t * 1e-3) / 1e12
                    label = variant if grouped else variant + "/seq"
                    row = dict(op=kind, dtype=dtype, b=b, density=d, kernel=label, ms=t, TFLOPs=tf,
                               x_dense=tf / dense_tf,
                               **{"vs mma.sync": base / t, "rel err": err})
                    rows.append(row)
                    table.add(**row)
                    print(row, flush=True)
        # the update: the wgmma tiles (and b = 16 updat_tile_tc tiles) against updat_tc, back to back
        # (splits allocate)
        if b in _matmul_gpu.UPDAT_GMMA_TILES and "updat" in ops:
            for d in map(float, args.densities.split(",")):
                rng = np.random.default_rng(int(b * 1000 * d))
                mask = rng.random((k // b, k // b)) < d
                mask[0, 0] = True
                op = BlockSparseMatMul(mask, b)
                sets = [(rs.standard_normal((n, k), dtype=cp.float32).astype(dt),
                         rs.standard_normal((n, k), dtype=cp.float32).astype(dt)) for _ in range(3)]
                if "updat" not in dense:
                    dense["updat"] = time_ms(lambda a, g: cp.matmul(a.T, g), rotate=sets)["median"]
                dense_tf = 2.0 * n * k * k / (dense["updat"] * 1e-3) / 1e12
                flops = 2.0 * n * op.layout.nnz * b * b
                x0, g0 = sets[0]
                ref = (x0.astype(cp.float32).T @ g0.astype(cp.float32))
                ref = ref.reshape(k // b, b, k // b, b).transpose(0, 2, 1, 3)[
                    cp.asarray(op.layout.rows), cp.asarray(op.layout.cols)]
                base = None
                # (label, gmma_enabled, updat_gmma_variant, updat_tile_variant)
                kernels = [("updat_tc", False, None, None)]
                kernels += [(v, True, v, None) for v in _matmul_gpu.UPDAT_GMMA_TILES[b]]
                kernels += [(f"tile:{v}", False, None, v) for v in _matmul_gpu.UPDAT_TILE_TILES.get(b, ())]
                for variant, on, gmma_variant, tile_variant in kernels:
                    saved = _matmul_gpu.gmma_enabled
                    _matmul_gpu.gmma_enabled = on
                    _matmul_gpu.updat_gmma_variant = gmma_variant
                    _matmul_gpu.updat_tile_variant = tile_variant
                    try:
                        dw = op.updat(x0, g0)
                        err = float(cp.linalg.norm(dw.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                        t = time_ms(op.updat, rotate=sets)["median"]
                    finally:
                        _matmul_gpu.gmma_enabled = saved
                        _matmul_gpu.updat_gmma_variant = _matmul_gpu.updat_tile_variant = None
                    base = base or t
                    tf = flops / (t * 1e-3) / 1e12
                    row = dict(op="updat", dtype=dtype, b=b, density=d, kernel=variant, ms=t, TFLOPs=tf,
                               x_dense=tf / dense_tf,
                               **{"vs mma.sync": base / t, "rel err": err})
                    rows.append(row)
                    table.add(**row)
                    print(row, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
