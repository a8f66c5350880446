"""JAX adapter: values and gradients (eager, jit, grad, vmap) against jax.numpy's dense product on the
masked weight, check_grads in float64, zero-copy buffers, validation; on the GPU the CuPy kernels."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU to CuPy and torch too
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from conftest import assert_close, random_array  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from cusparseblocks import BlockSparseMatMul  # noqa: E402
from cusparseblocks.adapters import jax as cj  # noqa: E402

MECHANISMS = [m for m in cj.MECHANISMS if m != "buffer" or cj._buffer_callback is not None]


def _mask(rng, shape, density=0.5):
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    return mask


def _array(rng, shape, dtype, device):
    return jax.device_put(jnp.asarray(random_array(rng, shape, dtype)), device)


def _dense_loss(op, dense_w):
    """The same loss through jnp.matmul on the masked dense weight (the reference for values and grads)."""
    def loss(x, w, dy):
        W = dense_w(w)
        y = x @ W if op.feature_axis == 1 else (x.T @ W).T
        return jnp.sum(y * dy), y
    return loss


def _masked_dense(op):
    lay, b = op.layout, op.block_size
    rows, cols = jnp.asarray(lay.rows), jnp.asarray(lay.cols)

    def dense(w):
        d = jnp.zeros((lay.in_blocks, lay.out_blocks, b, b), w.dtype).at[rows, cols].set(w)
        return d.transpose(0, 2, 1, 3).reshape(op.K, op.M)
    return dense


def _check(rng, dtype, block_size, feature_axis, n, blocks, mechanism, device, jit):
    op = BlockSparseMatMul(_mask(rng, blocks), block_size, feature_axis)
    x_shape = (n, op.K) if feature_axis == 1 else (op.K, n)
    y_shape = (n, op.M) if feature_axis == 1 else (op.M, n)
    x = _array(rng, x_shape, dtype, device)
    w = _array(rng, op.w_shape, dtype, device)
    dy = _array(rng, y_shape, "float32", device)

    def loss(x, w):
        y = cj.block_sparse_matmul(x, w, op, mechanism=mechanism)
        return jnp.sum(y.astype(jnp.float32) * dy), y

    fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    if jit:
        fn = jax.jit(fn)
    (_, y), (dx, dw) = fn(x, w)
    assert y.dtype == x.dtype and y.shape == y_shape and dx.dtype == x.dtype and dw.shape == op.w_shape
    # float64 truth from NumPy, and jnp's dense matmul on the masked weight in float32
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in (x, w, dy))
    xt, dyt = (x64, dy64) if feature_axis == 1 else (x64.T, dy64.T)
    W = op.dense(w64)
    y_ref, dx_ref, dw_ref = xt @ W, dyt @ W.T, op.from_dense(xt.T @ dyt)
    if feature_axis == 0:
        y_ref, dx_ref = y_ref.T, dx_ref.T
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, dx_ref, dtype, "dx")
    assert_close(dw, dw_ref, dtype, "dw")
    dense_loss = _dense_loss(op, _masked_dense(op))
    wide = jnp.float64 if dtype == "float64" else jnp.float32
    with jax.default_matmul_precision("highest"):  # not TF32, JAX's default for float32 on a GPU
        (_, y_jnp), (dx_jnp, dw_jnp) = jax.value_and_grad(dense_loss, argnums=(0, 1), has_aux=True)(
            x.astype(wide), w.astype(wide), dy.astype(wide))
    assert_close(y, np.asarray(y_jnp, np.float64), dtype, "y vs jnp")
    assert_close(dw, np.asarray(dw_jnp, np.float64), dtype, "dw vs jnp")
    return op, x, w


CPU = jax.devices("cpu")[0]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis,block_size,n,blocks", [(1, 8, 1, (3, 5)), (0, 16, 21, (4, 3))])
def test_matmul_cpu(rng, mechanism, dtype, feature_axis, block_size, n, blocks):
    _check(rng, dtype, block_size, feature_axis, n, blocks, mechanism, CPU, jit=mechanism != "dlpack")


@pytest.mark.parametrize("feature_axis", [1, 0])
def test_check_grads_float64(rng, feature_axis):
    with jax.enable_x64(True):
        op = BlockSparseMatMul(_mask(rng, (3, 2)), 8, feature_axis)
        x = _array(rng, (4, op.K) if feature_axis == 1 else (op.K, 4), "float64", CPU)
        w = _array(rng, op.w_shape, "float64", CPU)
        assert x.dtype == jnp.float64
        check_grads(lambda x, w: cj.block_sparse_matmul(x, w, op), (x, w), order=1, modes=["rev"])
        _check(rng, "float64", 8, feature_axis, 5, (2, 3), cj.default_mechanism(), CPU, jit=True)


def test_vmap(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    xs = _array(rng, (3, 5, op.K), "float32", CPU)
    w = _array(rng, op.w_shape, "float32", CPU)
    ys = jax.jit(jax.vmap(lambda x: cj.block_sparse_matmul(x, w, op)))(xs)
    assert_close(ys, np.asarray(xs, np.float64) @ op.dense(np.asarray(w, np.float64)), "float32")


@pytest.mark.skipif(cj._buffer_callback is None, reason="needs jax.experimental.buffer_callback")
def test_buffer_mechanism_shares_memory_cpu(rng, monkeypatch):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x, w = _array(rng, (4, op.K), "float32", CPU), _array(rng, op.w_shape, "float32", CPU)
    seen = {}
    original = BlockSparseMatMul.fprop

    def spy(self, a, b, **kw):
        seen.update(x=a.ctypes.data, w=b.ctypes.data, out=kw["out"].ctypes.data)
        return original(self, a, b, **kw)

    monkeypatch.setattr(BlockSparseMatMul, "fprop", spy)
    y = cj.block_sparse_matmul(x, w, op, mechanism="buffer")
    y.block_until_ready()
    assert seen == {"x": x.unsafe_buffer_pointer(), "w": w.unsafe_buffer_pointer(), "out": y.unsafe_buffer_pointer()}


def test_validation(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x, w = jnp.zeros((4, op.K)), jnp.zeros(op.w_shape)
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 1 \(in_blocks=2 × block_size=8\), got 15"):
        cj.block_sparse_matmul(jnp.zeros((4, 15)), w, op)
    with pytest.raises(ValueError, match=r"w: expected shape"):
        cj.block_sparse_matmul(x, jnp.zeros((op.layout.nnz + 1, 8, 8)), op)  # never the right count
    with pytest.raises(TypeError, match=r"w: expected dtype float32 \(the dtype of x\), got float16"):
        cj.block_sparse_matmul(x, w.astype(jnp.float16), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in .*, got int32"):
        cj.block_sparse_matmul(x.astype(jnp.int32), w.astype(jnp.int32), op)
    with pytest.raises(ValueError, match=r"x: expected 2 dimensions"):
        cj.block_sparse_matmul(jnp.zeros((2, 4, op.K)), w, op)
    with pytest.raises(ValueError, match=r"mechanism: expected one of"):
        cj.block_sparse_matmul(x, w, op, mechanism="ffi")
    with pytest.raises(TypeError, match=r"x: expected a jax.Array, got list"):
        cj.block_sparse_matmul([[0.0]], w, op)
    with pytest.raises(TypeError, match=r"op: expected a cusparseblocks.BlockSparseMatMul"):
        cj.block_sparse_matmul(x, w, None)
    with pytest.raises(ValueError, match=r"mechanism: 'dlpack' needs concrete arrays"):
        jax.jit(lambda x, w: cj.block_sparse_matmul(x, w, op, mechanism="dlpack"))(x, w)
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 1"):  # inside jit too, at trace time
        jax.jit(lambda x, w: cj.block_sparse_matmul(x, w, op))(jnp.zeros((4, 15)), w)


# ---------------------------------------------------------------------------------------------------
def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX sees no GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("block_size,n,blocks", [(8, 5, (5, 3)), (32, 130, (3, 4)), (64, 17, (2, 2))])
def test_matmul_gpu(rng, mechanism, dtype, feature_axis, block_size, n, blocks):
    _check(rng, dtype, block_size, feature_axis, n, blocks, mechanism, _gpu(), jit=mechanism != "dlpack")


@pytest.mark.gpu
def test_gpu_zero_copy(rng, monkeypatch):
    device = _gpu()
    op = BlockSparseMatMul(_mask(rng, (4, 4)), 32)
    x, w = _array(rng, (64, op.K), "float32", device), _array(rng, op.w_shape, "float32", device)
    seen = {}
    original = BlockSparseMatMul.fprop

    def spy(self, a, b, **kw):
        seen.update(x=a.data.ptr, w=b.data.ptr, out=kw.get("out").data.ptr if kw.get("out") is not None else None)
        return original(self, a, b, **kw)

    monkeypatch.setattr(BlockSparseMatMul, "fprop", spy)
    if "buffer" in MECHANISMS:
        y = cj.block_sparse_matmul(x, w, op, mechanism="buffer").block_until_ready()
        assert seen == {"x": x.unsafe_buffer_pointer(), "w": w.unsafe_buffer_pointer(),
                        "out": y.unsafe_buffer_pointer()}
    # eager DLPack exchange, both ways
    c = cj.to_cupy(x)
    assert c.data.ptr == x.unsafe_buffer_pointer()
    back = cj.from_cupy(c)
    assert back.unsafe_buffer_pointer() == c.data.ptr
    for dtype in ("bfloat16", "float16"):
        a = _array(rng, (8, 16), dtype, device)
        assert cj.to_cupy(a).data.ptr == a.unsafe_buffer_pointer()
        assert_close(cj.from_cupy(cj.to_cupy(a)), np.asarray(a, np.float64), dtype)
