"""Block-sparse matrix multiply: ``y = x·W``, ``dx = dy·Wᵀ``, ``dW = xᵀ·dy`` on the nonzero blocks only.

One object per layout (as OpenAI's blocksparse): the constructor turns the mask into lookup tables once;
``w_shape``, ``fprop``, ``bprop`` and ``updat`` are the whole vocabulary. NumPy arrays run the reference
path (:mod:`cusparseblocks.reference`), CuPy arrays run the CUDA kernels in ``kernels/bsmm.cu``.
"""

from __future__ import annotations

import numpy as np

from . import _validate as V
from ._array import backend_of, dtype_name
from .blocklayout import BlockLayout, as_layout
from .reference import matmul as ref

__all__ = ["BlockSparseMatMul"]

_GPU_DTYPES = ("float16", "bfloat16", "float32")
_CPU_DTYPES = _GPU_DTYPES + ("float64",)


class BlockSparseMatMul:
    """Block-sparse matmul for one layout.

    Args:
        layout: bool-like [in_blocks, out_blocks] block mask (or a :class:`BlockLayout`).
        block_size: b in (8, 16, 32, 64). K = in_blocks·b input features, M = out_blocks·b outputs.
        feature_axis: 1 for activations [N, features] (x [N, K] → y [N, M]); 0 for [features, N].
        allow_tf32: float32 inputs on the GPU use TF32 tensor cores (opt-in; default exact FFMA).
        deterministic: the GPU update gives the same bits on every run (default).

    ``w`` is [nnz, b, b] (``w_shape``): block k, at mask position (rows[k], cols[k]) in row-major
    order, holds W[rows[k]·b:(rows[k]+1)·b, cols[k]·b:(cols[k]+1)·b]. Cached: the lookup tables
    (on the host here, on each GPU on first use).
    """

    def __init__(self, layout, block_size: int = 32, feature_axis: int = 1, *, allow_tf32: bool = False,
                 deterministic: bool = True):
        self.layout: BlockLayout = as_layout(layout)
        self.block_size = V.check_block_size(block_size)
        self.feature_axis = V.check_feature_axis(feature_axis)
        self.allow_tf32 = bool(allow_tf32)
        self.deterministic = bool(deterministic)
        b = self.block_size
        self.K = self.layout.in_blocks * b
        self.M = self.layout.out_blocks * b
        self.w_shape = (self.layout.nnz, b, b)
        self._gpu_tables: dict = {}

    def __repr__(self) -> str:
        lay = self.layout
        return (f"BlockSparseMatMul({lay.in_blocks}x{lay.out_blocks} blocks of {self.block_size}, "
                f"K={self.K}, M={self.M}, nnz={lay.nnz}, density={lay.density:.3f}, "
                f"feature_axis={self.feature_axis})")

    # ---------------------------------------------------------------------------------------------
    # validation
    def _batch(self, name, arr, features, detail):
        V.check_ndim(name, arr, 2)
        fa = self.feature_axis
        V.check_dim(name, arr, fa, features, detail)
        n = arr.shape[1 - fa]
        if n == 0:
            raise ValueError(f"{name}: expected a positive batch size on axis {1 - fa}, got 0")
        return n

    def _check_w(self, w, xname, x):
        V.check_shape("w", w, self.w_shape, f"nnz_blocks={self.layout.nnz}, block_size={self.block_size}")
        V.check_same_dtype(**{xname: x, "w": w})
        V.check_contiguous("w", w)

    def _check_float(self, name, arr, backend):
        V.check_float(name, arr, _GPU_DTYPES if backend == "cupy" else _CPU_DTYPES)
        V.check_contiguous(name, arr)

    def _out_dtype(self, dtype, out_dtype, out=None):
        """The result dtype: out_dtype, else out's dtype, else x's; only x's dtype or float32 allowed."""
        allowed = tuple(dict.fromkeys((np.dtype(dtype), np.dtype(np.float32))))
        names = " or ".join(dtype_name(d) for d in allowed)
        if out is not None and out_dtype is None:  # out's dtype decides; name out in the message
            if np.dtype(out.dtype) not in allowed:
                raise TypeError(f"out: expected dtype {names}, got {dtype_name(out.dtype)}")
            return np.dtype(out.dtype)
        if out_dtype is None:
            return np.dtype(dtype)
        if np.dtype(out_dtype) not in allowed:
            raise TypeError(f"out_dtype: expected None or {names}, got {dtype_name(out_dtype)}")
        return np.dtype(out_dtype)

    def _io_shape(self, n, features):
        return (n, features) if self.feature_axis == 1 else (features, n)

    def _in_detail(self):
        return f"in_blocks={self.layout.in_blocks} × block_size={self.block_size}"

    def _out_detail(self):
        return f"out_blocks={self.layout.out_blocks} × block_size={self.block_size}"

    # ---------------------------------------------------------------------------------------------
    # the contract
    def fprop(self, x, w, *, out=None, accumulate: bool = False, out_dtype=None):
        """y = x·W (``out += x·W`` with ``accumulate``).

        x: [N, K] (feature_axis=1) or [K, N] (feature_axis=0), float16|bfloat16|float32 (float64 on
        NumPy); w: ``w_shape``, same dtype. Returns y [N, M] or [M, N] in x's dtype, or ``out_dtype``
        (float32). ``out``: an array of that shape and dtype to write into.
        """
        return self._matmul("fprop", "x", x, w, self.K, self.M, self._in_detail(), out, accumulate, out_dtype)

    __call__ = fprop

    def bprop(self, dy, w, *, out=None, accumulate: bool = False, out_dtype=None):
        """dx = dy·Wᵀ. dy: [N, M] or [M, N]; returns dx [N, K] or [K, N]. Reads w's blocks transposed."""
        return self._matmul("bprop", "dy", dy, w, self.M, self.K, self._out_detail(), out, accumulate, out_dtype)

    def _matmul(self, op, name, x, w, f_in, f_out, detail, out, accumulate, out_dtype):
        backend = backend_of(**{name: x, "w": w, "out": out})
        self._check_float(name, x, backend)
        n = self._batch(name, x, f_in, detail)
        self._check_w(w, name, x)
        odt = self._out_dtype(x.dtype, out_dtype, out)
        shape = self._io_shape(n, f_out)
        V.check_out("out", out, shape, odt, backend == "cupy")
        if accumulate and out is None:
            raise ValueError("out: accumulate=True needs an out array to accumulate into")
        if backend == "cupy":
            from . import _matmul_gpu

            return _matmul_gpu.matmul(self, op, x, w, out, accumulate, odt)
        xt = x if self.feature_axis == 1 else x.T
        fn = ref.bsmm_fprop if op == "fprop" else ref.bsmm_bprop
        y = fn(self.layout, xt, w)
        y = y if self.feature_axis == 1 else y.T
        return _finish(y, out, accumulate, odt)

    def updat(self, x, dy, *, out=None, accumulate: bool = False, out_dtype=None):
        """dw = xᵀ·dy at the nonzero blocks only, [nnz, b, b].

        x: [N, K] (or [K, N]); dy: [N, M] (or [M, N]); same dtype. ``x`` and ``dy`` may be equal-length
        lists of such arrays (each pair with its own N): the result is the sum over pairs, in one launch.
        """
        xs, dys = _as_pairs(x, dy)
        backend = backend_of(**{f"x[{i}]": a for i, a in enumerate(xs)}, **{f"dy[{i}]": a for i, a in enumerate(dys)},
                             out=out)
        for i, (xi, dyi) in enumerate(zip(xs, dys)):
            xn, dyn = (f"x[{i}]", f"dy[{i}]") if len(xs) > 1 or isinstance(x, (list, tuple)) else ("x", "dy")
            self._check_float(xn, xi, backend)
            self._check_float(dyn, dyi, backend)
            V.check_same_dtype(**{xn: xi, dyn: dyi})
            if i:
                V.check_same_dtype(**{"x[0]": xs[0], xn: xi})
            n = self._batch(xn, xi, self.K, self._in_detail())
            ndy = self._batch(dyn, dyi, self.M, self._out_detail())
            if n != ndy:
                raise ValueError(f"{dyn}: expected batch size {n} (the batch of {xn}), got {ndy}")
        odt = self._out_dtype(xs[0].dtype, out_dtype, out)
        V.check_out("out", out, self.w_shape, odt, backend == "cupy")
        if accumulate and out is None:
            raise ValueError("out: accumulate=True needs an out array to accumulate into")
        if backend == "cupy":
            from . import _matmul_gpu

            return _matmul_gpu.updat(self, xs, dys, out, accumulate, odt)
        if self.feature_axis == 0:
            xs, dys = [a.T for a in xs], [a.T for a in dys]
        dw = ref.bsmm_updat(self.layout, xs, dys, self.block_size)
        return _finish(dw, out, accumulate, odt)

    # ---------------------------------------------------------------------------------------------
    # conversions and initialisers (host or device arrays alike)
    def to_scipy(self, w):
        """W as ``scipy.sparse.bsr_matrix`` of shape (K, M) (a host copy for CuPy arrays).

        float16 and bfloat16 blocks come back as float32 (exact): scipy.sparse has no half types.
        """
        backend_of(w=w)
        V.check_shape("w", w, self.w_shape)
        host = _to_host(w)
        return ref.to_scipy(self.layout, host, np.float32 if host.dtype.itemsize == 2 else None)

    def dense(self, w):
        """W as a dense [K, M] array of w's type and dtype, zeros outside the layout."""
        backend_of(w=w)
        V.check_shape("w", w, self.w_shape)
        xp = _xp(w)
        lay, b = self.layout, self.block_size
        dense = xp.zeros((lay.in_blocks, lay.out_blocks, b, b), dtype=w.dtype)
        dense[xp.asarray(lay.rows), xp.asarray(lay.cols)] = w
        return dense.transpose(0, 2, 1, 3).reshape(self.K, self.M)

    def from_dense(self, W):
        """The nonzero blocks of a dense [K, M] array, as ``w`` (values outside the layout are dropped)."""
        backend_of(W=W)
        V.check_ndim("W", W, 2)
        V.check_shape("W", W, (self.K, self.M), f"K={self.K}, M={self.M}")
        xp = _xp(W)
        lay, b = self.layout, self.block_size
        blocks = W.reshape(lay.in_blocks, b, lay.out_blocks, b).transpose(0, 2, 1, 3)
        return xp.ascontiguousarray(blocks[xp.asarray(lay.rows), xp.asarray(lay.cols)])

    def fan_in(self) -> np.ndarray:
        """Inputs feeding each output feature, [M] (block-column count × b)."""
        return np.repeat(np.diff(self.layout.col_ptr) * self.block_size, self.block_size)

    def init_normal(self, seed=None, scale: float = 1.0, dtype=np.float32, xp=np):
        """w ~ N(0, scale²/fan_in) with the fan-in of the nonzero blocks of each output column."""
        rng = np.random.default_rng(seed)
        fan = np.maximum(np.diff(self.layout.col_ptr) * self.block_size, 1)[self.layout.cols]
        w = rng.standard_normal(self.w_shape) * (scale / np.sqrt(fan))[:, None, None]
        return xp.asarray(w.astype(dtype))

    def init_identity(self, scale: float = 1.0, dtype=np.float32, xp=np):
        """Diagonal blocks = scale·I, other blocks 0: y = scale·x at start (square layouts with diagonal)."""
        lay = self.layout
        if lay.in_blocks != lay.out_blocks:
            raise ValueError(f"layout: identity init needs a square layout, got {lay.shape}")
        diag = lay.rows == lay.cols
        if int(diag.sum()) != lay.in_blocks:
            raise ValueError("layout: identity init needs every diagonal block present (use keep_diagonal=True)")
        w = np.zeros(self.w_shape, dtype=np.float64)
        w[diag] = scale * np.eye(self.block_size)
        return xp.asarray(w.astype(dtype))


def _as_pairs(x, dy):
    if isinstance(x, (list, tuple)) or isinstance(dy, (list, tuple)):
        if not isinstance(x, (list, tuple)) or not isinstance(dy, (list, tuple)):
            raise TypeError("x, dy: expected both lists (grouped update) or both arrays")
        if len(x) != len(dy):
            raise ValueError(f"dy: expected a list of {len(x)} arrays (the length of x), got {len(dy)}")
        if len(x) == 0:
            raise ValueError("x: expected at least one (x, dy) pair, got an empty list")
        return list(x), list(dy)
    return [x], [dy]


def _finish(result, out, accumulate, odt):
    if out is None:
        return np.ascontiguousarray(result.astype(odt, copy=False))
    if accumulate:
        out[...] = (out.astype(result.dtype) + result).astype(odt)
    else:
        out[...] = result.astype(odt)
    return out


def _xp(a):
    from ._array import is_cupy

    if is_cupy(a):
        import cupy

        return cupy
    return np


def _to_host(a):
    from ._array import is_cupy

    return a.get() if is_cupy(a) else np.asarray(a)

