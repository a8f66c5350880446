"""A small representative run of every bsmm kernel family for compute-sanitizer (memcheck, racecheck).

Run: PYTHONPATH=. compute-sanitizer --tool memcheck python bench/sanitize_bsmm.py
Covers xw_tc (small/medium tiles, both axes, fprop/bprop, aligned and element paths), xw_wide_tc
(b = 8), xw_simt (both tiles), xw_ffma and updat_ffma (float32, b = 32/64, N = 152 and 700), xw_small
(N = 37, b = 32, feature axis 1, every dtype; its ring variants, bulk copies on sm_90, at N = 29 and 1),
xw_tf32, updat_tc (b = 8 pairs too) and updat_tf32 (one split and several), updat_simt and updat_reduce,
on ragged shapes; on an sm_90 device also the wgmma kernels (xw_gmma fprop/bprop and updat_gmma /
updat_gmma32 / updat_gmma_stack for b = 64 / 32 / 16 and 8, feature axis 1, N = 152 and 700; every
xw_gmma_rs and xw_tma tile forced); the dense route (densify + cuBLAS, the update's gather) for every dtype,
block size and feature axis, a grouped update. ``--route``: the dense route alone; ``--small V1,V2``: those
xw_small_ring variants alone. Checks every result.
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul
from cusparseblocks._array import bfloat16
from cusparseblocks.reference import matmul as ref


def _fprop_bprop_error(rng, mask, b, n, dtype):
    """The worse relative error of fprop and bprop (feature axis 1, batch n) against the float64 reference."""
    op = BlockSparseMatMul(mask, b)
    x = rng.standard_normal((n, op.K)).astype(dtype)
    dy = rng.standard_normal((n, op.M)).astype(dtype)
    w = (rng.standard_normal(op.w_shape) * 0.2).astype(dtype)
    y = op.fprop(cp.asarray(x), cp.asarray(w)).get().astype(np.float64)
    dx = op.bprop(cp.asarray(dy), cp.asarray(w)).get().astype(np.float64)
    y_ref = ref.bsmm_fprop(op.layout, x.astype(np.float64), w.astype(np.float64))
    dx_ref = ref.bsmm_bprop(op.layout, dy.astype(np.float64), w.astype(np.float64))
    return max(float(np.linalg.norm(a - r) / np.linalg.norm(r)) for a, r in ((y, y_ref), (dx, dx_ref)))


def _route_errors(rng):
    """The dense route (ROUTE "always") on ragged layouts: fprop, bprop, a grouped update; the worst error."""
    from cusparseblocks import _dense_route

    worst = 0.0
    saved = dict(_dense_route.ROUTE)
    _dense_route.ROUTE["mode"] = "always"
    try:
        for dtype in (np.float16, bfloat16, np.float32):
            for b in (8, 16, 32, 64):
                for axis in (1, 0):
                    op = BlockSparseMatMul(rng.random((5, 3)) < 0.5, b, axis)
                    ns = (37, 130)
                    shp = (lambda f, n: (n, f)) if axis == 1 else (lambda f, n: (f, n))
                    t = (lambda a: a.astype(np.float64)) if axis == 1 else (lambda a: a.astype(np.float64).T)
                    xs = [rng.standard_normal(shp(op.K, n)).astype(dtype) for n in ns]
                    dys = [rng.standard_normal(shp(op.M, n)).astype(dtype) for n in ns]
                    w = (rng.standard_normal(op.w_shape) * 0.2).astype(dtype)
                    y = op.fprop(cp.asarray(xs[0]), cp.asarray(w)).get().astype(np.float64)
                    dx = op.bprop(cp.asarray(dys[0]), cp.asarray(w)).get().astype(np.float64)
                    dw = op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys]).get()
                    y_ref = ref.bsmm_fprop(op.layout, t(xs[0]), w.astype(np.float64))
                    dx_ref = ref.bsmm_bprop(op.layout, t(dys[0]), w.astype(np.float64))
                    dw_ref = ref.bsmm_updat(op.layout, [t(a) for a in xs], [t(a) for a in dys], b)
                    if axis == 0:
                        y_ref, dx_ref = y_ref.T, dx_ref.T
                    for a, r in ((y, y_ref), (dx, dx_ref), (dw.astype(np.float64), dw_ref)):
                        worst = max(worst, float(np.linalg.norm(a - r) / np.linalg.norm(r)))
    finally:
        _dense_route.ROUTE.clear()
        _dense_route.ROUTE.update(saved)
    return worst


def _small_errors(rng, variants):
    """xw_small_ring's named variants, fp16 and bf16 (or fp32), N = 29, 32 and 1, split columns: the worst
    error."""
    from cusparseblocks import _matmul_gpu

    worst = 0.0
    for variant in variants:
        _matmul_gpu.small_variant = variant
        kind = _matmul_gpu.XW_SMALL_VARIANTS[variant][0]
        for dtype in ((np.float16, bfloat16) if kind == "tc" else (np.float32,)):
            for n in (29, 32, 1):
                worst = max(worst, _fprop_bprop_error(rng, rng.random((40, 23)) < 0.5, 32, n, dtype))
    _matmul_gpu.small_variant = None
    return worst


def main():
    from cusparseblocks import _matmul_gpu

    if "--small" in sys.argv[1:]:  # --small V1,V2: those xw_small_ring variants alone
        worst = _small_errors(np.random.default_rng(3), sys.argv[sys.argv.index("--small") + 1].split(","))
        cp.cuda.runtime.deviceSynchronize()
        print(f"sanitize_bsmm --small: worst relative error {worst:.2e}")
        assert worst < 2e-2
        return
    if "--route" in sys.argv[1:]:
        worst = _route_errors(np.random.default_rng(2))
        cp.cuda.runtime.deviceSynchronize()
        print(f"sanitize_bsmm --route: worst relative error {worst:.2e}")
        assert worst < 2e-2
        return

    # xw_small for every dtype at N = 37 (fp16/bf16 take it by default only with >= 80 blocks per SM)
    _matmul_gpu.SMALL_TC_MIN_BLOCKS_PER_SM = 0
    rng = np.random.default_rng(1)
    worst = 0.0
    for dtype, tf32 in ((np.float16, False), (bfloat16, False), (np.float32, False), (np.float32, True)):
        for b in (8, 16, 32, 64):
            for axis in (1, 0):
                for n in (37, 152, 700):  # 152: N % 8 == 0 (AXIS 0 wide tiles)
                    mask = rng.random((3, 4)) < 0.5
                    mask[0, 0] = True
                    op = BlockSparseMatMul(mask, b, axis, allow_tf32=tf32)
                    shp = (lambda f, n=n: (n, f)) if axis == 1 else (lambda f, n=n: (f, n))
                    x = rng.standard_normal(shp(op.K)).astype(dtype)
                    dy = rng.standard_normal(shp(op.M)).astype(dtype)
                    w = (rng.standard_normal(op.w_shape) * 0.2).astype(dtype)
                    t = (lambda a: a.astype(np.float64)) if axis == 1 else (lambda a: a.astype(np.float64).T)
                    y = op.fprop(cp.asarray(x), cp.asarray(w)).get().astype(np.float64)
                    y_ref = ref.bsmm_fprop(op.layout, t(x), w.astype(np.float64))
                    dx = op.bprop(cp.asarray(dy), cp.asarray(w)).get().astype(np.float64)
                    dx_ref = ref.bsmm_bprop(op.layout, t(dy), w.astype(np.float64))
                    dw = op.updat(cp.asarray(x), cp.asarray(dy)).get().astype(np.float64)
                    dw_ref = ref.bsmm_updat(op.layout, [t(x)], [t(dy)], b)
                    if axis == 0:
                        y_ref, dx_ref = y_ref.T, dx_ref.T
                    for a, r in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
                        worst = max(worst, float(np.linalg.norm(a - r) / np.linalg.norm(r)))
    # xw_small_ring (per-warp rings; the bulk-copy variants where the device has them), split columns
    for variant, (kind, _, tile) in _matmul_gpu.XW_SMALL_VARIANTS.items():
        if len(tile) <= 6:
            continue
        _matmul_gpu.small_variant = variant
        for dtype in ((np.float16, bfloat16) if kind == "tc" else (np.float32,)):
            for n in (29, 1):
                worst = max(worst, _fprop_bprop_error(rng, rng.random((40, 23)) < 0.5, 32, n, dtype))
    _matmul_gpu.small_variant = None
    # xw_gmma_rs (sm_90): every tile forced, fprop and bprop, a partial last column group, ragged N
    if _matmul_gpu._gmma_device(cp.cuda.runtime.getDevice()):
        for b, tiles in _matmul_gpu.XW_GMMA_RS_TILES.items():
            for variant in tiles:
                _matmul_gpu.force_variant = variant
                for n in (152, 700):
                    worst = max(worst, _fprop_bprop_error(rng, rng.random((7, 19)) < 0.4, b, n, np.float16))
        # xw_tma: every tile forced (clusters, multicast, column groups, the persistent grid), twice each
        for b, tiles in _matmul_gpu.XW_TMA_TILES.items():
            for variant in tiles:
                _matmul_gpu.force_variant = variant
                for n in (152, 700, 700):
                    worst = max(worst, _fprop_bprop_error(rng, rng.random((7, 19)) < 0.4, b, n, np.float16))
        _matmul_gpu.force_variant = None
    worst = max(worst, _route_errors(rng))
    cp.cuda.runtime.deviceSynchronize()
    print(f"sanitize_bsmm: worst relative error {worst:.2e}")
    assert worst < 2e-2


if __name__ == "__main__":
    main()
