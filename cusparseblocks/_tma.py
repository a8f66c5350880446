"""Tensor maps for the TMA kernels (kernels/bsmm_tma.cu, conv_fprop_wst in kernels/conv.cu).

A tensor map (the driver's 128-byte ``CUtensorMap``) describes a 2-D row-major tensor in global memory and the
box one copy moves into shared memory, with its swizzle. It is encoded on the host by the driver's
``cuTensorMapEncodeTiled`` (called through ctypes: CuPy does not wrap it) and passed to the kernel by value
as a structured NumPy scalar of :data:`MAP_DTYPE` (a ``__grid_constant__`` parameter), so a launch copies it
with the other arguments and CUDA-graph capture keeps it. Maps are cached per (pointer, shape, box).
"""

from __future__ import annotations

import ctypes

import numpy as np

# the kernel's TensorMap: 16 × u64
MAP_DTYPE = np.dtype([("v", np.uint64, (16,))])
# CUtensorMapDataType / CUtensorMapSwizzle / CUtensorMapL2promotion values of cuda.h
_DATA_TYPE = {"float16": 6, "bfloat16": 9}
_SWIZZLE = {32: 1, 64: 2, 128: 3}  # box rows of 32 / 64 / 128 bytes
_L2_PROMOTION_128B = 2
_CACHE_SIZE = 64

_encode = None
_maps: dict[tuple, np.void] = {}


def _driver():
    global _encode
    if _encode is None:
        lib = ctypes.CDLL("libcuda.so.1")
        fn = lib.cuTensorMapEncodeTiled
        fn.restype = ctypes.c_int
        u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p,
                       u32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _encode = fn
    return _encode


def tiled_2d(ptr: int, dtype: str, rows: int, cols: int, box_rows: int, box_cols: int) -> np.void:
    """The map of a C-contiguous [rows, cols] tensor of ``dtype`` (float16/bfloat16) at device address ``ptr``
    (16-byte aligned, cols·2 a multiple of 16), box [box_rows, box_cols] with the swizzle of box_cols·2-byte
    rows; elements past the edges read as zeros."""
    key = (ptr, dtype, rows, cols, box_rows, box_cols)
    m = _maps.get(key)
    if m is not None:
        return m
    buf = (ctypes.c_uint8 * 192)()  # a 64-byte aligned 128-byte window
    addr = ctypes.addressof(buf)
    addr += -addr % 64
    dims = (ctypes.c_uint64 * 2)(cols, rows)
    strides = (ctypes.c_uint64 * 1)(cols * 2)
    box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
    elem = (ctypes.c_uint32 * 2)(1, 1)
    err = _driver()(addr, _DATA_TYPE[dtype], 2, ctypes.c_void_p(ptr), dims, strides, box, elem, 0,
                    _SWIZZLE[box_cols * 2], _L2_PROMOTION_128B, 0)
    if err != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed with CUresult {err} for a [{rows}, {cols}] "
                           f"{dtype} tensor, box [{box_rows}, {box_cols}]")
    m = np.frombuffer(ctypes.string_at(addr, 128), dtype=MAP_DTYPE)[0]
    if len(_maps) >= _CACHE_SIZE:
        _maps.pop(next(iter(_maps)))
    _maps[key] = m
    return m


def tiled(ptr: int, dtype: str, shape: tuple, box: tuple, swizzle: bool = True,
          strides: tuple | None = None) -> np.void:
    """The map of a C-contiguous tensor of ``shape`` (outermost first, up to 5 dimensions; the innermost's
    bytes a multiple of 16) of ``dtype`` at ``ptr``, box ``box`` (same order) with the swizzle of the box's
    innermost bytes (32, 64 or 128), or none (``swizzle`` False: the box lands row-major, any multiple of 16
    bytes a row); elements past the edges (negative coordinates included) read as zeros. ``strides``: the
    byte strides of every dimension but the innermost (outermost first, multiples of 16) of a tensor that is
    not C-contiguous in ``shape``'s order (a permuted view: the box lands in ``shape``'s order)."""
    key = (ptr, dtype, tuple(shape), tuple(box), swizzle, strides)
    m = _maps.get(key)
    if m is not None:
        return m
    rank = len(shape)
    buf = (ctypes.c_uint8 * 192)()
    addr = ctypes.addressof(buf)
    addr += -addr % 64
    dims = (ctypes.c_uint64 * rank)(*reversed([int(v) for v in shape]))
    inner = [int(v) for v in reversed(shape)]
    strides_b, acc = [], 2
    for v in inner[:-1]:
        acc *= v
        strides_b.append(acc)
    if strides is not None:
        strides_b = [int(v) for v in reversed(strides)]
    strides = (ctypes.c_uint64 * max(1, rank - 1))(*strides_b)
    boxv = (ctypes.c_uint32 * rank)(*reversed([int(v) for v in box]))
    elem = (ctypes.c_uint32 * rank)(*([1] * rank))
    err = _driver()(addr, _DATA_TYPE[dtype], rank, ctypes.c_void_p(ptr), dims, strides, boxv, elem, 0,
                    _SWIZZLE[int(box[-1]) * 2] if swizzle else 0, _L2_PROMOTION_128B, 0)
    if err != 0:
        raise RuntimeError(
            f"cuTensorMapEncodeTiled failed with CUresult {err} for a {tuple(shape)} {dtype} tensor, "
            f"box {tuple(box)}"
        )
    m = np.frombuffer(ctypes.string_at(addr, 128), dtype=MAP_DTYPE)[0]
    if len(_maps) >= _CACHE_SIZE:
        _maps.pop(next(iter(_maps)))
    _maps[key] = m
    return m
