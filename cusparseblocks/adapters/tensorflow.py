"""TensorFlow adapter: ``block_sparse_matmul`` with ``tf.custom_gradient`` and the Keras layer
``BlockSparseDense``.

Tensors cross by DLPack (``__dlpack__`` / ``tf.experimental.dlpack``), with no copy: CPU tensors run
the NumPy reference on views of TensorFlow's memory and the result is handed back the same way;
bfloat16, which TensorFlow does not export through DLPack, crosses as its int16 bits (``tf.bitcast``).
GPU tensors take the same road into CuPy and run the CUDA kernels. Eagerly the product runs at once;
inside ``tf.function`` (and Keras ``fit``) it runs through ``tf.py_function``, which hands it the same
eager tensors.

**The GPU path is untested**: no TensorFlow GPU build can be installed on the machines the project
tests on. It is written as the PyTorch and JAX paths are, except that TensorFlow exposes neither its
CUDA stream nor its allocator to Python: the adapter waits for the device before a launch and for its
stream after it, and outputs are CuPy allocations that TensorFlow adopts through DLPack.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from .._array import bfloat16, cupy
from ..matmul import BlockSparseMatMul
from ._dlpack import ArraySpec, check_matmul, lookup_op, numpy_view_bf16, register_op

__all__ = ["block_sparse_matmul", "BlockSparseDense", "to_numpy", "from_numpy"]

_KDL_CPU = 1


class _Capsule:
    """A DLPack capsule as a ``__dlpack__`` object (for consumers that take only the protocol)."""

    def __init__(self, capsule, device=(_KDL_CPU, 0)):
        self.capsule, self.device = capsule, device

    def __dlpack__(self, stream=None, **_):
        return self.capsule

    def __dlpack_device__(self):
        return self.device


def _is_gpu(t) -> bool:
    return "GPU" in (t.device or "").upper()


def _gpu_index(t) -> int:
    # "/job:localhost/replica:0/task:0/device:GPU:1" -> 1
    return int(t.device.rsplit(":", 1)[-1])


def to_numpy(t: tf.Tensor) -> np.ndarray:
    """An eager CPU tensor as a read-only NumPy view of its memory (DLPack; bfloat16 through int16)."""
    if t.dtype == tf.bfloat16:
        bits = tf.experimental.dlpack.to_dlpack(tf.bitcast(t, tf.int16))
        return numpy_view_bf16(np.from_dlpack(_Capsule(bits)))
    return np.from_dlpack(_Capsule(tf.experimental.dlpack.to_dlpack(t)))


_ALIGN = 64  # TensorFlow's kernels abort (not raise) on tensors whose memory is less aligned


def _aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def from_numpy(a: np.ndarray) -> tf.Tensor:
    """A NumPy array as a TensorFlow tensor on its memory (DLPack; TF keeps it alive).

    Copied once first if it is not C-contiguous or not 64-byte aligned (TensorFlow needs both), or
    read-only (DLPack 0.x, which TensorFlow speaks, cannot mark memory read-only).
    """
    if not a.flags.c_contiguous or not a.flags.writeable or a.ctypes.data % _ALIGN:
        aligned = _aligned_empty(a.shape, a.dtype)
        aligned[...] = a
        a = aligned
    if a.dtype.name == "bfloat16":
        return tf.bitcast(tf.experimental.dlpack.from_dlpack(a.view(np.int16).__dlpack__()), tf.bfloat16)
    return tf.experimental.dlpack.from_dlpack(a.__dlpack__())


def _to_cupy(t):  # GPU: untested (see the module docstring)
    cp = cupy()
    if t.dtype == tf.bfloat16:
        bits = cp.from_dlpack(tf.experimental.dlpack.to_dlpack(tf.bitcast(t, tf.int16)))
        return bits.view(bfloat16)
    return cp.from_dlpack(tf.experimental.dlpack.to_dlpack(t))


def _from_cupy(c):  # GPU: untested
    if c.dtype.name == "bfloat16":
        return tf.bitcast(tf.experimental.dlpack.from_dlpack(c.view(np.int16).toDlpack()), tf.bfloat16)
    return tf.experimental.dlpack.from_dlpack(c.toDlpack())


def _spec(t) -> ArraySpec:
    dtype = t.dtype
    if dtype == tf.bfloat16:
        return ArraySpec(tuple(t.shape), np.dtype(bfloat16))
    try:
        return ArraySpec(tuple(t.shape), np.dtype(dtype.as_numpy_dtype))
    except TypeError:
        return ArraySpec(tuple(t.shape), None, dtype.name)


def _run(kind: str, key: int, a, b):
    """Eager: ``op.<kind>(a, b)`` on views of the two tensors; returns a tensor on the result's memory."""
    op = lookup_op(key)
    fn = getattr(op, kind)
    if _is_gpu(a):  # untested on a GPU
        cp = cupy()
        with cp.cuda.Device(_gpu_index(a)):
            cp.cuda.runtime.deviceSynchronize()  # TF's stream is not exposed: wait for its producers
            result = fn(_to_cupy(a), _to_cupy(b))
            cp.cuda.get_current_stream().synchronize()  # and let TF's consumers find the result ready
            return _from_cupy(result)
    out = _aligned_empty(check_matmul(op, kind, _spec(a), _spec(b), False), to_numpy(a).dtype)
    return from_numpy(fn(to_numpy(a), to_numpy(b), out=out))


def _apply(kind: str, key: int, a, b):
    op = lookup_op(key)
    shape = check_matmul(op, kind, _spec(a), _spec(b), _is_gpu(a))
    if tf.executing_eagerly():
        return _run(kind, key, a, b)
    y = tf.py_function(functools.partial(_run, kind, key), [a, b], Tout=a.dtype)
    y.set_shape(shape)
    return y


def block_sparse_matmul(x, w, op: BlockSparseMatMul):
    """y = x·W, differentiable in x and w (``tf.GradientTape``), eagerly or inside ``tf.function``.

    x: [N, K] (``op.feature_axis`` 1) or [K, N] (0); w: ``op.w_shape`` [nnz, b, b]; same dtype,
    float16|bfloat16|float32|float64 on the CPU (float64 not on the GPU). Returns y [N, M] (or [M, N]).
    """
    key = register_op(op)
    x, w = tf.convert_to_tensor(x), tf.convert_to_tensor(w)

    @tf.custom_gradient
    def matmul(x, w):
        def grad(dy):
            dy = tf.cast(dy, x.dtype)
            return _apply("bprop", key, dy, w), _apply("updat", key, x, dy)

        return _apply("fprop", key, x, w), grad

    return matmul(x, w)


class BlockSparseDense(keras.layers.Layer):
    """Keras layer: y = x·W + bias with W block-sparse (``layout`` [in_blocks, out_blocks] of
    ``block_size`` blocks). x: [N, in_blocks·b] (``feature_axis=1``) or [in_blocks·b, N] (0).

    ``kernel``: [nnz, b, b] (``w_shape``), initialised U(±1/√fan_in) with each output's fan-in;
    ``bias``: [out_blocks·b], zeros. TensorFlow backend only.
    """

    def __init__(self, layout, block_size: int = 32, use_bias: bool = True, feature_axis: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.op = BlockSparseMatMul(layout, block_size, feature_axis)
        self.block_size, self.feature_axis, self.use_bias = self.op.block_size, self.op.feature_axis, use_bias
        self.units = self.op.M

    def build(self, input_shape):
        fan = np.maximum(np.diff(self.op.layout.col_ptr) * self.block_size, 1)[self.op.layout.cols]
        bound = (1.0 / np.sqrt(fan))[:, None, None]

        def init(shape, dtype=None):
            u = keras.random.uniform(shape, -1.0, 1.0, dtype="float32")
            return keras.ops.cast(u * bound.astype(np.float32), dtype or "float32")

        self.kernel = self.add_weight(name="kernel", shape=self.op.w_shape, initializer=init)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, x):
        w = tf.convert_to_tensor(self.kernel)
        x = tf.convert_to_tensor(x)
        if x.dtype != w.dtype:
            w = tf.cast(w, x.dtype)
        y = block_sparse_matmul(x, w, self.op)
        if self.bias is None:
            return y
        bias = tf.cast(tf.convert_to_tensor(self.bias), y.dtype)
        return y + (bias if self.feature_axis == 1 else bias[:, None])

    def compute_output_shape(self, input_shape):
        n = input_shape[1 - self.feature_axis]
        return (n, self.units) if self.feature_axis == 1 else (self.units, n)

    def get_config(self):
        config = super().get_config()
        config.update(layout=self.op.layout.mask.astype(int).tolist(), block_size=self.block_size,
                      use_bias=self.use_bias, feature_axis=self.feature_axis)
        return config
