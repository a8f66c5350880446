"""Helpers shared by the framework adapters: zero-copy views, validation on shapes, op keys.

No framework is imported here. The adapters describe their tensors with :class:`ArraySpec` (shape and
NumPy dtype) so that every framework validates through :mod:`cusparseblocks._validate` and raises the
same messages as the NumPy/CuPy entry points, before anything is launched or traced.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings

import numpy as np

from .. import _validate as V
from .._array import bfloat16, cupy, dtype_name
from ..matmul import BlockSparseMatMul

__all__ = [
    "ArraySpec",
    "KINDS",
    "GPU_DTYPES",
    "CPU_DTYPES",
    "check_matmul",
    "cupy_view",
    "numpy_view_bf16",
    "register_op",
    "lookup_op",
    "external_stream",
]

#: the three products of the BlockSparseMatMul contract, by the names of their two operands
KINDS = {"fprop": ("x", "w"), "bprop": ("dy", "w"), "updat": ("x", "dy")}
GPU_DTYPES = ("float16", "bfloat16", "float32")
CPU_DTYPES = GPU_DTYPES + ("float64",)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What validation needs of a framework tensor: its shape and NumPy dtype (no data, no strides).

    ``dtype`` is None for a dtype NumPy has no name for (int4, complex32, ...); ``dtype_label`` names it.
    """

    shape: tuple
    dtype: np.dtype | None
    dtype_label: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _check_dtype(name: str, spec: ArraySpec, allowed) -> None:
    label = dtype_name(spec.dtype) if spec.dtype is not None else spec.dtype_label
    if label not in allowed:
        raise TypeError(f"{name}: expected dtype in {allowed}, got {label}")


_CHECKED: dict[tuple, tuple] = {}  # signatures that passed, with their output shape (host cost per call)


def check_matmul(op: BlockSparseMatMul, kind: str, a: ArraySpec, b: ArraySpec, on_gpu: bool) -> tuple:
    """Validate the operands of ``op.<kind>`` and return the output shape.

    ``kind``: "fprop" (a=x, b=w), "bprop" (a=dy, b=w) or "updat" (a=x, b=dy). The checks and messages
    are those of :class:`BlockSparseMatMul`; the adapters call this before any launch and inside
    tracing (torch.compile's fake tensors, jax.jit's abstract values), where the core never runs.
    Signatures that passed are remembered, so a training loop pays a dict lookup per call.
    """
    key = getattr(op, "_adapter_key", None)  # a configuration's key (register_op); no id() reuse
    if key is None:
        return _check_matmul(op, kind, a, b, on_gpu)
    signature = (key, kind, a, b, on_gpu)
    try:
        shape = _CHECKED.get(signature)
    except TypeError:  # symbolic sizes (torch.compile's dynamic shapes) don't hash: check each time
        return _check_matmul(op, kind, a, b, on_gpu)
    if shape is None:
        shape = _check_matmul(op, kind, a, b, on_gpu)
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED[signature] = shape
    return shape


def _check_matmul(op, kind, a, b, on_gpu):
    an, bn = KINDS[kind]
    allowed = GPU_DTYPES if on_gpu else CPU_DTYPES
    _check_dtype(an, a, allowed)
    _check_dtype(bn, b, allowed)
    V.check_same_dtype(**{an: a, bn: b})
    fa = op.feature_axis
    lay, bs = op.layout, op.block_size
    in_detail = f"in_blocks={lay.in_blocks} × block_size={bs}"
    out_detail = f"out_blocks={lay.out_blocks} × block_size={bs}"
    f_in, detail = (op.M, out_detail) if kind == "bprop" else (op.K, in_detail)
    V.check_ndim(an, a, 2)
    V.check_dim(an, a, fa, f_in, detail)
    n = a.shape[1 - fa]
    if n == 0:
        raise ValueError(f"{an}: expected a positive batch size on axis {1 - fa}, got 0")
    if kind == "updat":
        V.check_ndim(bn, b, 2)
        V.check_dim(bn, b, fa, op.M, out_detail)
        if b.shape[1 - fa] != n:
            raise ValueError(f"{bn}: expected batch size {n} (the batch of {an}), got {b.shape[1 - fa]}")
        return tuple(op.w_shape)
    V.check_shape(bn, b, op.w_shape, f"nnz_blocks={lay.nnz}, block_size={bs}")
    f_out = op.K if kind == "bprop" else op.M
    return (n, f_out) if fa == 1 else (f_out, n)


def numpy_view_bf16(int16_array: np.ndarray) -> np.ndarray:
    """An int16 NumPy array's memory seen as bfloat16 (frameworks hand bf16 to NumPy as raw 16 bits)."""
    if bfloat16 is None:  # pragma: no cover - ml_dtypes is a dependency
        raise TypeError("bfloat16 on the CPU needs ml_dtypes: pip install ml_dtypes")
    return int16_array.view(bfloat16)


def cupy_view(ptr: int, shape, dtype, device_id: int, owner):
    """A CuPy array over device memory ``ptr`` (C-contiguous), without a copy.

    ``owner`` is kept alive as long as the view: the framework tensor or buffer the memory belongs to.
    Any dtype CuPy knows works, bfloat16 included, whatever the exporter's DLPack or CUDA array
    interface support for it.
    """
    cp = cupy()
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mem = cp.cuda.UnownedMemory(int(ptr), nbytes, owner, device_id)
    return cp.ndarray(tuple(shape), dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))


# ------------------------------------------------------------------------------------------------
# Ops by key. Framework graphs (torch.library schemas, jax static arguments) carry an int, not the
# BlockSparseMatMul object; equal configurations share one op and so one set of GPU tables.
_OPS: list[BlockSparseMatMul] = []
_KEYS: dict[tuple, int] = {}
_LOCK = threading.Lock()


def _config(op: BlockSparseMatMul) -> tuple:
    lay = op.layout
    return (lay.shape, lay.mask.tobytes(), op.block_size, op.feature_axis, op.allow_tf32, op.deterministic)


def register_op(op: BlockSparseMatMul) -> int:
    """The int key of ``op``'s configuration (registered once per process, kept for its lifetime)."""
    key = getattr(op, "_adapter_key", None)
    if key is not None:
        return key
    if not isinstance(op, BlockSparseMatMul):
        raise TypeError(f"op: expected a cusparseblocks.BlockSparseMatMul, got {type(op).__name__}")
    config = _config(op)
    with _LOCK:
        key = _KEYS.get(config)
        if key is None:
            key = len(_OPS)
            _OPS.append(op)
            _KEYS[config] = key
        op._adapter_key = key  # the next calls (and torch.compile's tracing) read it back directly
        return key


def lookup_op(key: int) -> BlockSparseMatMul:
    return _OPS[key]


class _StreamRef:
    """A raw CUDA stream pointer that speaks the CUDA stream protocol (``__cuda_stream__``)."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


_STREAMS: dict[tuple[int, int], object] = {}


def external_stream(ptr: int, device_id: int):
    """A CuPy stream object for a framework's stream ``ptr`` on ``device_id`` (made once, then reused)."""
    stream = _STREAMS.get((ptr, device_id))
    if stream is None:
        cp = cupy()
        if ptr == 0:  # the legacy default stream (torch's default): CuPy's null stream is the same one
            return cp.cuda.Stream.null
        try:
            with cp.cuda.Device(device_id):
                stream = cp.cuda.Stream.from_external(_StreamRef(ptr))
        except Exception:  # noqa: BLE001 - CuPy < 14 has only ExternalStream (deprecated in 14)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = cp.cuda.ExternalStream(ptr, device_id)
        _STREAMS[(ptr, device_id)] = stream
    return stream
