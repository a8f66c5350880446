"""JAX adapter: ``block_sparse_matmul`` as a ``jax.custom_vjp`` function that works eagerly, inside
``jax.jit``, under ``jax.grad`` and ``jax.vmap`` (sequentially), on the CPU and the GPU.

How the kernels are reached (``mechanism``):

- ``"buffer"`` (default where JAX has it): ``jax.experimental.buffer_callback``. XLA calls back into
  Python at run time with its own device buffers (``__cuda_array_interface__``) and its CUDA stream;
  the CuPy kernels read the inputs and write the outputs in place, on XLA's stream, with no copy and no
  host synchronisation. Works inside ``jit``. On the CPU the same callback gets host buffers and runs
  the NumPy reference in place. Outputs are XLA's buffers (its allocator); CuPy allocates only the op's
  small lookup tables (once per device) and the kernels' temporaries, from CuPy's own pool.
- ``"host"``: ``jax.pure_callback``, for JAX versions without ``buffer_callback``: operands travel to
  the host and back (device→host, host→device for the kernel, and the result back again). On a GPU it
  costs four PCIe transfers and a synchronisation per call; ``bench/adapters.py`` measures it.
- ``"dlpack"``: eager only (concrete arrays, not tracers): DLPack exchange with CuPy, no copy; the
  output is a CuPy allocation handed to JAX. ``to_cupy`` / ``from_cupy`` are the same exchange.

A compiled XLA FFI handler (``jax.ffi``) would avoid the Python call per launch but needs a C++ build
against XLA's headers; the buffer callback gets the same zero-copy, same-stream behaviour without one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._array import cupy
from ..matmul import BlockSparseMatMul
from ._dlpack import ArraySpec, check_matmul, cupy_view, external_stream, lookup_op, register_op

try:  # JAX >= 0.7
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - older JAX
    _buffer_callback = None

__all__ = ["block_sparse_matmul", "bsmm", "MECHANISMS", "default_mechanism", "to_cupy", "from_cupy"]

MECHANISMS = ("buffer", "host", "dlpack")
_KDL_CUDA = 2


def default_mechanism() -> str:
    return "buffer" if _buffer_callback is not None else "host"


def _spec(a) -> ArraySpec:
    return ArraySpec(tuple(a.shape), np.dtype(a.dtype))


def _on_gpu(a) -> bool:
    if isinstance(a, jax.core.Tracer):
        return jax.default_backend() == "gpu"
    if not hasattr(a, "devices"):  # NumPy (check_grads hands cotangents over as NumPy)
        return False
    return all(d.platform == "gpu" for d in a.devices())


# ------------------------------------------------------------------------------------------------
# run time: what XLA's callbacks execute
def _buffer_kernel(kind, key, ctx, out, a, b):
    op = lookup_op(key)
    fn = getattr(op, kind)
    if a.__dlpack_device__()[0] != _KDL_CUDA:  # host buffers: the reference, in place
        fn(np.asarray(a), np.asarray(b), out=np.asarray(out))
        return
    cp = cupy()
    ptrs = [buf.__cuda_array_interface__["data"][0] for buf in (a, b, out)]
    device = a.__dlpack_device__()[1]
    with cp.cuda.Device(device), external_stream(int(ctx.stream), device):
        va, vb, vo = (cupy_view(p, buf.shape, buf.dtype, device, buf) for p, buf in zip(ptrs, (a, b, out)))
        fn(va, vb, out=vo)


def _host_kernel(kind, key, a, b):
    op = lookup_op(key)
    fn = getattr(op, kind)
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if jax.default_backend() == "gpu" and a.dtype != np.float64:
        cp = cupy()
        return fn(cp.asarray(a), cp.asarray(b)).get()
    return fn(a, b)


def _call(kind, a, b, key, mechanism):
    op = lookup_op(key)
    shape = check_matmul(op, kind, _spec(a), _spec(b), _on_gpu(a))
    out = jax.ShapeDtypeStruct(shape, a.dtype)
    if mechanism == "buffer":
        if _buffer_callback is None:
            raise ValueError(f"mechanism: 'buffer' needs jax.experimental.buffer_callback (JAX >= 0.7), "
                             f"got JAX {jax.__version__}; use 'host'")
        fn = _buffer_callback(functools.partial(_buffer_kernel, kind, key), out, vmap_method="sequential")
        return fn(a, b)
    if mechanism == "host":
        host = functools.partial(_host_kernel, kind, key)
        return jax.pure_callback(host, out, a, b, vmap_method="sequential")
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        raise ValueError("mechanism: 'dlpack' needs concrete arrays (eager mode), got a tracer (inside "
                         "jax.jit, vmap or a transformation); use 'buffer' or 'host'")
    return _dlpack_call(op, kind, a, b)


def _dlpack_call(op, kind, a, b):
    if not _on_gpu(a):
        return jnp.asarray(getattr(op, kind)(np.asarray(a), np.asarray(b)))
    cp = cupy()
    with cp.cuda.Device(next(iter(a.devices())).local_hardware_id or 0):
        result = getattr(op, kind)(to_cupy(a), to_cupy(b))
        return from_cupy(result)


# ------------------------------------------------------------------------------------------------
# eager DLPack exchange
def to_cupy(a):
    """A JAX GPU array as a CuPy array on the same memory (DLPack; no copy). Read it, don't write it."""
    cp = cupy()
    try:
        return cp.from_dlpack(a)
    except (BufferError, TypeError, ValueError):  # an exporter without bfloat16 in DLPack: by pointer
        a.block_until_ready()
        device = next(iter(a.devices())).local_hardware_id or 0
        return cupy_view(a.unsafe_buffer_pointer(), a.shape, a.dtype, device, a)


def from_cupy(c):
    """A CuPy array as a JAX array on the same memory (DLPack; no copy; JAX keeps ``c`` alive)."""
    try:
        return jnp.from_dlpack(c)
    except (BufferError, TypeError, ValueError):  # bfloat16 through its bits
        bits = jnp.from_dlpack(c.view(np.int16))
        return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


# ------------------------------------------------------------------------------------------------
# the differentiable product
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def bsmm(x, w, key: int, mechanism: str):
    """y = x·W for the op registered under ``key`` (see :func:`block_sparse_matmul`)."""
    return _call("fprop", x, w, key, mechanism)


def _bsmm_fwd(x, w, key, mechanism):
    return _call("fprop", x, w, key, mechanism), (x, w)


def _bsmm_bwd(key, mechanism, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    return _call("bprop", dy, w, key, mechanism), _call("updat", x, dy, key, mechanism)


bsmm.defvjp(_bsmm_fwd, _bsmm_bwd)


def block_sparse_matmul(x, w, op: BlockSparseMatMul, *, mechanism: str | None = None):
    """y = x·W, differentiable (``jax.grad``) in x and w; usable inside ``jax.jit``.

    x: [N, K] (``op.feature_axis`` 1) or [K, N] (0); w: ``op.w_shape`` [nnz, b, b]; same dtype,
    float16|bfloat16|float32 on the GPU (float64 too on the CPU). Returns y [N, M] (or [M, N]) in that
    dtype. ``mechanism``: "buffer" (default), "host" or "dlpack" (module docstring).
    """
    mechanism = default_mechanism() if mechanism is None else mechanism
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism: expected one of {MECHANISMS}, got {mechanism!r}")
    for name, a in (("x", x), ("w", w)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name}: expected a jax.Array, got {type(a).__name__}")
    x, w = jnp.asarray(x), jnp.asarray(w)
    key = register_op(op)
    check_matmul(op, "fprop", _spec(x), _spec(w), _on_gpu(x))
    return bsmm(x, w, key, mechanism)
