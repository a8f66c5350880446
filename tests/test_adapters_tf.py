"""TensorFlow adapter (CPU): values and gradients, eager and in tf.function, against a float64 dense
product on the masked weight; DLPack views without copies; the Keras layer; validation."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402
from conftest import assert_close, random_array  # noqa: E402

from cusparseblocks import BlockSparseMatMul  # noqa: E402
from cusparseblocks.adapters import tensorflow as ctf  # noqa: E402

TF_DTYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16, "float32": tf.float32, "float64": tf.float64}


def _mask(rng, shape, density=0.5):
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    return mask


def _tensor(rng, shape, dtype):
    return tf.cast(tf.constant(random_array(rng, shape, "float32")), TF_DTYPES[dtype])


def _f64(t):
    return tf.cast(t, tf.float64).numpy()


def _grads(op, x, w, dy):
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = ctf.block_sparse_matmul(x, w, op)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cast(dy, tf.float32))
    dx, dw = tape.gradient(loss, [x, w])
    return y, dx, dw


_grads_graph = tf.function(_grads, reduce_retracing=False)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis,block_size,n,blocks", [(1, 8, 1, (3, 5)), (0, 16, 19, (4, 3))])
@pytest.mark.parametrize("graph", [False, True])
def test_matmul_cpu(rng, dtype, feature_axis, block_size, n, blocks, graph):
    op = BlockSparseMatMul(_mask(rng, blocks), block_size, feature_axis)
    x = _tensor(rng, (n, op.K) if feature_axis == 1 else (op.K, n), dtype)
    w = _tensor(rng, op.w_shape, dtype)
    dy = _tensor(rng, (n, op.M) if feature_axis == 1 else (op.M, n), dtype)
    y, dx, dw = (_grads_graph if graph else _grads)(op, x, w, dy)
    assert y.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == x.dtype
    x64, dy64 = _f64(x), _f64(dy)
    xt, dyt = (x64, dy64) if feature_axis == 1 else (x64.T, dy64.T)
    W = op.dense(_f64(w))
    y_ref, dx_ref = xt @ W, dyt @ W.T
    if feature_axis == 0:
        y_ref, dx_ref = y_ref.T, dx_ref.T
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, dx_ref, dtype, "dx")
    assert_close(dw, op.from_dense(xt.T @ dyt), dtype, "dw")
    # and tf.matmul on the masked dense weight
    y_tf = tf.matmul(tf.cast(x, tf.float64), W) if feature_axis == 1 else tf.transpose(
        tf.matmul(tf.transpose(tf.cast(x, tf.float64)), W))
    assert_close(y, y_tf.numpy(), dtype, "y vs tf.matmul")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dlpack_views_share_memory(rng, dtype):
    t = _tensor(rng, (7, 24), dtype)
    a, b = ctf.to_numpy(t), ctf.to_numpy(t)
    assert a.ctypes.data == b.ctypes.data  # two exports, one buffer: no copy
    assert a.dtype.name == dtype
    assert not a.flags.writeable
    c = ctf._aligned_empty(a.shape, a.dtype)
    c[...] = a
    back = ctf.from_numpy(c)  # a writable, aligned array is adopted, not copied
    assert ctf.to_numpy(back).ctypes.data == c.ctypes.data
    assert_close(back, _f64(t), dtype)
    assert_close(ctf.from_numpy(a), _f64(t), dtype)  # a read-only view is copied once


def test_from_numpy_misaligned_and_strided():
    raw = np.arange(33, dtype=np.float32)
    a = raw[1:].reshape(4, 8)  # 4 bytes off TensorFlow's 64-byte alignment
    t = ctf.from_numpy(a)
    assert_close(t + 1, a + 1.0, "float32")  # would abort inside TF if the memory were taken as is
    assert_close(ctf.from_numpy(a.T), a.T.astype(np.float64), "float32")


def test_output_memory_is_the_results(rng, monkeypatch):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x, w = _tensor(rng, (4, op.K), "float32"), _tensor(rng, op.w_shape, "float32")
    seen = {}
    original = BlockSparseMatMul.fprop

    def spy(self, a, b, **kw):
        seen.update(x=a.ctypes.data, w=b.ctypes.data, out=kw["out"].ctypes.data)
        return original(self, a, b, **kw)

    monkeypatch.setattr(BlockSparseMatMul, "fprop", spy)
    y = ctf.block_sparse_matmul(x, w, op)
    assert seen["x"] == ctf.to_numpy(x).ctypes.data and seen["w"] == ctf.to_numpy(w).ctypes.data
    assert seen["out"] == ctf.to_numpy(y).ctypes.data


def test_keras_layer_trains(rng):
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    mask = _mask(rng, (3, 2), 0.7)
    layer = ctf.BlockSparseDense(mask, 8)
    model = keras.Sequential([keras.Input((24,)), layer, keras.layers.ReLU(), keras.layers.Dense(2)])
    assert layer.kernel.shape == layer.op.w_shape and layer.bias.shape == (16,)
    assert layer.count_params() == mask.sum() * 64 + 16
    bound = 1 / np.sqrt(8)
    assert np.abs(layer.kernel.numpy()).max() <= bound
    x = rng.standard_normal((64, 24)).astype(np.float32)
    t = x[:, :2] * 0.5
    model.compile(keras.optimizers.Adam(0.01), "mse")
    before = model.evaluate(x, t, verbose=0)
    model.fit(x, t, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, t, verbose=0) < 0.7 * before
    y = layer(tf.constant(x))
    ref = x.astype(np.float64) @ layer.op.dense(layer.kernel.numpy().astype(np.float64)) + layer.bias.numpy()
    assert_close(y, ref, "float32")


def test_keras_layer_feature_axis_0_and_config(rng):
    mask = _mask(rng, (2, 3))
    layer = ctf.BlockSparseDense(mask, 8, use_bias=True, feature_axis=0)
    x = _tensor(rng, (16, 5), "float32")
    y = layer(x)
    assert tuple(y.shape) == (24, 5) and layer.compute_output_shape((16, 5)) == (24, 5)
    config = layer.get_config()
    clone = ctf.BlockSparseDense.from_config(config)
    assert clone.op.layout == layer.op.layout and clone.feature_axis == 0 and clone.block_size == 8


def test_validation(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x, w = tf.zeros((4, op.K)), tf.zeros(op.w_shape)
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 1 \(in_blocks=2 × block_size=8\), got 15"):
        ctf.block_sparse_matmul(tf.zeros((4, 15)), w, op)
    with pytest.raises(ValueError, match=r"w: expected shape"):
        ctf.block_sparse_matmul(x, tf.zeros((op.layout.nnz + 1, 8, 8)), op)  # never the right count
    with pytest.raises(TypeError, match=r"w: expected dtype float32 \(the dtype of x\), got float64"):
        ctf.block_sparse_matmul(x, tf.cast(w, tf.float64), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in .*, got int32"):
        ctf.block_sparse_matmul(tf.cast(x, tf.int32), tf.cast(w, tf.int32), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in .*, got complex64"):
        ctf.block_sparse_matmul(tf.cast(x, tf.complex64), tf.cast(w, tf.complex64), op)
    with pytest.raises(TypeError, match=r"op: expected a cusparseblocks.BlockSparseMatMul"):
        ctf.block_sparse_matmul(x, w, "op")
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 1"):  # at trace time in tf.function
        tf.function(lambda x, w: ctf.block_sparse_matmul(x, w, op))(tf.zeros((4, 15)), w)
