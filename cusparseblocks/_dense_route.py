"""The dense route of BlockSparseMatMul on CuPy arrays: cuBLAS on the zero-filled weights.

Where a layout of small blocks is dense enough, cuBLAS's dense product beats every block-sparse kernel we have
(H100, N = K = M = 4096, fp16, d = 0.2: the b = 8 kernel takes 5.4× and the b = 16 kernel 1.6× the dense
product's time; bench/NOTES.md). There fprop and bprop expand w into a dense [K, M] matrix (``densify``,
kernels/dense_route.cu) and call cuBLAS (``cublasGemmEx``, fp32 accumulation, the output in x's dtype or
fp32, ``accumulate`` as beta = 1); the update computes the dense fp32 product xᵀ·dy (grouped pairs
accumulated by beta = 1) and gathers the nonzero blocks (``gather_blocks``). Same results up to rounding
order; cuBLAS is deterministic on one GPU. One difference: a non-finite x value reaches every output of its
row (0·inf) where the sparse kernels skip the absent blocks.

``ROUTE["mode"]``: "auto" (the route where :data:`DENSE_MIN` says it wins), "never", "always" (tests and
benchmarks); the environment variable ``CUSPARSEBLOCKS_DENSE_ROUTE`` sets it at import. A benchmark's
``_matmul_gpu.force_variant = "dense"`` forces it; any other forced tile or kernel switch of _matmul_gpu /
_matmul_tf32 turns it off. Scratch: the dense
matrix (x's dtype, or fp32 for the update) from CuPy's pool, per call.
"""

from __future__ import annotations

import os

import numpy as np

from . import compiler
from ._array import dtype_name
from .compiler import KernelSpec

SOURCE = "dense_route.cu"
_CTYPE = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}
_BLOCKS = (8, 16, 32, 64)

ROUTE = {"mode": os.environ.get("CUSPARSEBLOCKS_DENSE_ROUTE", "auto")}
if ROUTE["mode"] not in ("auto", "never", "always"):
    raise ValueError(f"CUSPARSEBLOCKS_DENSE_ROUTE: expected auto, never or always, got {ROUTE['mode']!r}")
# (dtype kind, block_size) -> (least layout density for fprop / bprop, least for the update) at which "auto"
# takes the dense route; None: never. Crossovers measured on an H100 at N = K = M = 4096
# (bench/results/dense_route-20261127-0518.json; route / block-sparse ms):
# - half, b = 8: the route wins at every density measured (fprop 0.176 / 0.716 at d = 0.05, update 0.196 /
#   0.563);
# - half, b = 16: the kernels at d = 0.05 (0.142 / 0.175), the route at 0.1 (0.184 / 0.256), the update even;
# - half, b = 32: fprop a tie at 0.5 (0.213 / 0.218); the update a tie at 0.2 (0.213 / 0.220 there, 0.225 /
#   0.194 in bsmm-20261127-0529's graph replays), the route's from 0.35 (0.230 / 0.363; 0.229 / 0.468 at 0.5);
# - half, b = 64: the kernels up to 0.5 (update 0.237 / 0.228 there);
# - float32 (cuBLAS without TF32): b = 8 fprop from ~0.17 (the kernels reach 0.17× dense), update from 0.05;
#   b = 16 fprop from ~0.28, update from ~0.12; b = 32 and 64: the kernels (0.6-0.9× dense) everywhere.
DENSE_MIN = {
    ("half", 8): (0.02, 0.02),
    ("half", 16): (0.07, 0.1),
    ("half", 32): (0.55, 0.3),
    ("half", 64): (None, None),
    ("float32", 8): (0.18, 0.05),
    ("float32", 16): (0.3, 0.13),
    ("float32", 32): (None, None),
    ("float32", 64): (None, None),
}
# "auto" needs at least this many batch rows (below, the sparse kernels read d·K·M weights against the route's
# 3·K·M bytes) and a dense matrix of at most MAX_DENSE_BYTES (the scratch it takes from CuPy's pool a call:
# K = M = 8192 in fp16, 5792 for the update's fp32 product)
MIN_ROWS = 1024
MAX_DENSE_BYTES = 256 << 20


def _kind(dtype):
    return "float32" if dtype == "float32" else "half"


def wanted(op_obj, op, dtype, rows, w=None):
    """Whether fprop/bprop/updat (``op``) of ``dtype`` on ``rows`` batch rows takes the dense route (never for
    a w that is not 16-byte aligned, the expansion reading it in 16-byte pieces, nor for operands of 2³¹
    elements or more)."""
    from . import _matmul_gpu

    if (w is not None and w.data.ptr % 16) or rows * max(op_obj.K, op_obj.M) >= 1 << 31:
        return False  # (cuBLAS's 32-bit interface: operands under 2³¹ elements)
    if _matmul_gpu.force_variant is not None:
        return _matmul_gpu.force_variant == "dense"
    if _kernel_forced():
        return False
    mode = ROUTE["mode"]
    if mode != "auto":
        return mode == "always"
    if dtype == "float32" and op_obj.allow_tf32:
        return False
    least = DENSE_MIN.get((_kind(dtype), op_obj.block_size), (None, None))[op == "updat"]
    itemsize = 4 if op == "updat" else np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize
    return (least is not None and op_obj.layout.density >= least and rows >= MIN_ROWS
            and op_obj.K * op_obj.M * itemsize <= MAX_DENSE_BYTES)


def _kernel_forced():
    """A benchmark's or test's choice of a block-sparse kernel (a knob of _matmul_gpu / _matmul_tf32 other
    than force_variant): the route stays out of its way."""
    from . import _matmul_gpu as g
    from . import _matmul_tf32

    knobs = (g.updat_gmma_variant, g.updat_ffma_variant, g.updat_tile_variant, g.small_variant,
             _matmul_tf32.force_variant)
    return any(k is not None for k in knobs) or not g.gmma_enabled or not g.small_enabled


def densify_spec(dtype, bs):
    return KernelSpec(SOURCE, f"densify<{_CTYPE[dtype]}, {bs}>")


def gather_spec(out_dtype, bs):
    return KernelSpec(SOURCE, f"gather_blocks<{_CTYPE[out_dtype]}, {bs}>")


def specializations():
    for bs in _BLOCKS:
        for dtype in _CTYPE:
            yield densify_spec(dtype, bs)
            yield gather_spec(dtype, bs)


compiler.register_family("dense_route", specializations)


def _grid(total, dev):
    from ._matmul_gpu import _sm_count

    return (max(1, min(-(-total // 256), 8 * _sm_count(dev))),)


def _block_map(op_obj, dev):
    """The layout's ``block_index`` on the device (cached per op and device)."""
    import cupy

    key = ("dense_map", dev)
    m = op_obj._gpu_tables.get(key)
    if m is None:
        m = op_obj._gpu_tables[key] = cupy.asarray(op_obj.layout.block_index)
    return m


def _dense(op_obj, w, dev):
    """W as a dense row-major [K, M] CuPy array of w's dtype (zeros outside the layout)."""
    import cupy

    dense = cupy.empty((op_obj.K, op_obj.M), dtype=w.dtype)
    fn = compiler.get_function(densify_spec(dtype_name(w.dtype), op_obj.block_size))
    args = (dense, w, _block_map(op_obj, dev), np.int64(op_obj.K), np.int64(op_obj.M))
    fn(_grid(op_obj.K * 256, dev), (256,), args, stream=cupy.cuda.get_current_stream())
    return dense


_CUDA_TYPE = {"float16": 2, "bfloat16": 14, "float32": 0}  # cudaDataType: CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _GEMM_DEFAULT = 68, 77, -1
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)


_cublas_fns = None


def _cublas():
    """(cublasSetStream_v2, cublasGemmEx) of the libcublas CuPy loaded, through ctypes: CuPy's own wrappers
    refuse to run during CUDA-graph capture, which cuBLAS itself supports."""
    global _cublas_fns
    if _cublas_fns is None:
        import ctypes

        from cupy_backends.cuda.libs import cublas  # noqa: F401 - loads libcublas into the process

        with open("/proc/self/maps") as maps:
            paths = [ln.split()[-1] for ln in maps if "/libcublas.so" in ln]
        lib = ctypes.CDLL(paths[0] if paths else "libcublas.so")
        set_stream, gemm = lib.cublasSetStream_v2, lib.cublasGemmEx
        set_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        i, p = ctypes.c_int, ctypes.c_void_p
        gemm.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
        set_stream.restype = gemm.restype = ctypes.c_int
        _cublas_fns = (set_stream, gemm)
    return _cublas_fns


def _gemm(c, a, b, trans_a, trans_b, k, beta, tf32=False):
    """Row-major c[m, n] = op(a) · op(b) (+ c with beta = 1) through cublasGemmEx, fp32 accumulation: cuBLAS
    is column-major, so it computes cᵀ = op(b)ᵀ · op(a)ᵀ on the same memory. On the current stream (also
    while it is being captured into a CUDA graph)."""
    import cupy

    set_stream, gemm = _cublas()
    m, n = c.shape
    handle = cupy.cuda.device.get_cublas_handle()
    status = set_stream(handle, cupy.cuda.get_current_stream().ptr)
    t = lambda flag: 1 if flag else 0  # noqa: E731 - CUBLAS_OP_T / CUBLAS_OP_N
    ty = lambda arr: _CUDA_TYPE[dtype_name(arr.dtype)]  # noqa: E731
    if status == 0:
        status = gemm(handle, t(trans_b), t(trans_a), n, m, k, _ONE.ctypes.data,
                      b.data.ptr, ty(b), b.shape[1], a.data.ptr, ty(a), a.shape[1],
                      (_ONE if beta else _ZERO).ctypes.data, c.data.ptr, ty(c), n,
                      _COMPUTE_32F_FAST_TF32 if tf32 else _COMPUTE_32F, _GEMM_DEFAULT)
    if status != 0:
        raise RuntimeError(f"cublasGemmEx failed with status {status} ({m}x{n}x{k}, {dtype_name(a.dtype)})")


def matmul(op_obj, op, x, w, out, accumulate, out_dtype, dev):
    """fprop (y = x·W) / bprop (dx = dy·Wᵀ) through the dense matrix; arrays validated by the caller."""
    import cupy

    axis, n = op_obj.feature_axis, x.shape[1 - op_obj.feature_axis]
    f_out = op_obj.M if op == "fprop" else op_obj.K
    y = out if out is not None else cupy.empty((n, f_out) if axis == 1 else (f_out, n), dtype=out_dtype)
    dense = _dense(op_obj, w, dev)
    tf32 = op_obj.allow_tf32 and x.dtype == np.float32
    beta = bool(accumulate)
    f_in = op_obj.K if op == "fprop" else op_obj.M
    if axis == 1:  # y = x · W, dx = dy · Wᵀ
        _gemm(y, x, dense, False, op == "bprop", f_in, beta, tf32)
    else:  # y = Wᵀ · x, dx = W · dy
        _gemm(y, dense, x, op == "fprop", False, f_in, beta, tf32)
    return y


def updat(op_obj, xs, dys, out, accumulate, out_dtype, dev):
    """dW = Σ xᵀ·dy at the nonzero blocks, from the dense fp32 product; arrays validated by the caller."""
    import cupy

    from ._matmul_gpu import _tables

    dense = cupy.empty((op_obj.K, op_obj.M), dtype=np.float32)
    tf32 = op_obj.allow_tf32 and xs[0].dtype == np.float32
    axis = op_obj.feature_axis
    for i, (x, dy) in enumerate(zip(xs, dys)):
        n = x.shape[1 - axis]
        _gemm(dense, x, dy, axis == 1, axis == 0, n, i > 0, tf32)
    dw = out if out is not None else cupy.empty(op_obj.w_shape, dtype=out_dtype)
    rows, cols = _tables(op_obj, "updat", dev)
    nnz, b = op_obj.layout.nnz, op_obj.block_size
    fn = compiler.get_function(gather_spec(dtype_name(dw.dtype), b))
    fn(_grid(nnz * b * b, dev), (256,), (dw, dense, rows, cols, np.int64(nnz), np.int64(op_obj.M),
                                          np.int32(bool(accumulate))), stream=cupy.cuda.get_current_stream())
    return dw
