"""TF32 tensor-core plans for BlockSparseMatMul on float32 (``allow_tf32=True``): tiles, specs, launch plans.

Kernels are in ``kernels/bsmm_tf32.cu`` (``xw_tf32``, ``updat_tf32``); they take the same arguments, grids
and device tables as ``xw_tc`` / ``updat_tc`` in ``kernels/bsmm.cu``, so ``_matmul_gpu.matmul`` and
``_matmul_gpu.updat`` launch them exactly as they launch the fp16/bf16 kernels. Operands stay fp32 in
memory; each is rounded to TF32 (10-bit mantissa) in registers, products accumulate in fp32.
Unaligned pointers take the element-load variant (``ALIGNED = 0``), never a wrong answer. The update
has no TF32 kernel for block_size 8 (an m16 warp tile needs 16 rows): it stays on ``updat_simt``.
"""

from __future__ import annotations

import itertools

from . import compiler
from .compiler import KernelSpec

SOURCE = "bsmm_tf32.cu"

# xw_tf32: block_size -> {variant: (BM, WARPS_M, WARPS_N, STAGES)}; "small" serves N ≤ SMALL_N,
# "large" N ≥ LARGE_N, "medium" the rest and every unaligned call. fp32 stages are twice the size of
# xw_tc's, so tiles are shorter and pipelines shallower (≤ ~110 KiB: two CTAs per H100 SM).
XW_TF32_TILES = {
    64: {"large": (128, 4, 2, 2), "medium": (64, 2, 2, 3), "small": (32, 1, 4, 3)},
    32: {"large": (128, 4, 2, 4), "medium": (64, 2, 2, 4), "small": (32, 1, 4, 4)},
    16: {"large": (256, 8, 1, 4), "medium": (128, 4, 1, 4), "small": (32, 2, 1, 6)},
    8: {"large": (256, 8, 1, 4), "medium": (128, 4, 1, 6), "small": (32, 2, 1, 8)},
}
VARIANTS = ("large", "medium", "small")
UNALIGNED_VARIANT = "medium"
# updat_tf32: block_size -> (G blocks of one row per CTA, WARPS, NC batch rows per chunk, STAGES);
# block_size 8 is absent (updat_simt)
UPDAT_TF32_TILES = {64: (2, 4, 32, 3), 32: (4, 4, 32, 3), 16: (4, 4, 32, 4)}
SMALL_N = 64
LARGE_N = 2048
force_variant = None  # benchmarks set "large"/"medium"/"small" to compare tiles in one run


def _stride4(n):  # mirrors tf32_stride4(): row stride / 4 odd
    return n + 4 if (n // 4) % 2 == 0 else n


def _stride8(n):  # mirrors tf32_stride8(): row stride / 8 odd
    return n + 8 if (n // 8) % 2 == 0 else n


def xw_spec(bs, variant, axis, trans, aligned):
    bm, wm, wn, st = XW_TF32_TILES[bs][variant]
    return KernelSpec(SOURCE, f"xw_tf32<{bs}, {bm}, {wm}, {wn}, {st}, {axis}, {trans}, {aligned}>")


def updat_spec(bs, axis, aligned):
    g, warps, nc, st = UPDAT_TF32_TILES[bs]
    return KernelSpec(SOURCE, f"updat_tf32<{bs}, {g}, {warps}, {nc}, {st}, {axis}, {aligned}>")


def xw_smem(bs, variant, axis, trans):
    """Dynamic shared memory (bytes) of xw_tf32: the pipeline's stages, or the epilogue tile if larger."""
    bm, _, _, st = XW_TF32_TILES[bs][variant]
    a = bm * _stride4(bs) if axis == 1 else bs * _stride8(bm)
    b = bs * (_stride4(bs) if trans else _stride8(bs))
    return max(st * (a + b), bm * (bs + 4)) * 4


def updat_smem(bs, axis):
    """Dynamic shared memory (bytes) of updat_tf32: STAGES × (1 + G) fp32 tiles."""
    g, _, nc, st = UPDAT_TF32_TILES[bs]
    tile = nc * _stride8(bs) if axis == 1 else bs * _stride4(nc)
    return st * (1 + g) * tile * 4


def _xw_variants(aligned):
    return VARIANTS if aligned else (UNALIGNED_VARIANT,)


def specializations():
    """Every xw_tf32 / updat_tf32 specialization that :func:`xw_plan` and :func:`updat_launch_config` give."""
    for bs, axis, trans, aligned in itertools.product(XW_TF32_TILES, (0, 1), (0, 1), (1, 0)):
        for variant in _xw_variants(aligned):
            yield xw_spec(bs, variant, axis, trans, aligned)
    for bs, axis, aligned in itertools.product(UPDAT_TF32_TILES, (0, 1), (1, 0)):
        yield updat_spec(bs, axis, aligned)


compiler.register_family("bsmm_tf32", specializations)


def xw_plan(op_obj, op, n, aligned_x, aligned_w, dev):
    """(function, grid, block, smem) of xw_tf32 for fprop/bprop of float32 with allow_tf32.

    Same grid and arguments as xw_tc: grid (out_features / b, ceil(n / BM)). ``aligned_x``/``aligned_w``:
    the pointers are 16-byte aligned. Cached in ``op_obj._gpu_tables`` per shape, alignment and device.
    """
    b, axis = op_obj.block_size, op_obj.feature_axis
    aligned = int(bool(aligned_x) and bool(aligned_w) and (axis == 1 or n % 4 == 0))
    variant = (force_variant or ("small" if n <= SMALL_N else "large" if n >= LARGE_N else "medium")) \
        if aligned else UNALIGNED_VARIANT
    key = ("xw_tf32", op, variant, aligned, n, dev)
    plan = op_obj._gpu_tables.get(key)
    if plan is None:
        f_out = op_obj.M if op == "fprop" else op_obj.K
        trans = 0 if op == "fprop" else 1
        bm, wm, wn, _ = XW_TF32_TILES[b][variant]
        spec = xw_spec(b, variant, axis, trans, aligned)
        smem = xw_smem(b, variant, axis, trans)
        n_tiles = -(-n // bm)
        if n_tiles > 65535:
            raise ValueError(
                f"x: batch of {n} exceeds the kernel's grid limit of {65535 * bm} for block_size {b}")
        plan = (compiler.get_function(spec, smem), (f_out // b, n_tiles), (wm * wn * 32,), smem)
        op_obj._gpu_tables[key] = plan
    return plan


def updat_launch_config(op_obj, axis, aligned):
    """(spec, smem, threads, G, NC) of updat_tf32, or None for block_size 8 (use updat_simt).

    ``aligned``: every x and dy pointer is 16-byte aligned and, for feature_axis 0, every batch size is a
    multiple of 4 (else the element-load variant). The caller builds the groups table for G, the chunk
    prefix sums for NC and launches exactly as updat_tc (grid (n_groups, splits)).
    """
    b = op_obj.block_size
    if b not in UPDAT_TF32_TILES:
        return None
    g, warps, nc, _ = UPDAT_TF32_TILES[b]
    return updat_spec(b, axis, int(bool(aligned))), updat_smem(b, axis), warps * 32, g, nc
