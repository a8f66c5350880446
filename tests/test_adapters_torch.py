"""PyTorch adapter: values and gradients against a dense float64 product on the masked weight,
gradcheck, torch.compile, autocast, validation; on the GPU zero copies, torch's stream and allocator."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close, random_array  # noqa: E402

from cusparseblocks import BlockSparseMatMul  # noqa: E402
from cusparseblocks.adapters import torch as ct  # noqa: E402

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


def _mask(rng, shape, density=0.5):
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    return mask


def _tensor(rng, shape, dtype, device="cpu", requires_grad=False):
    a = random_array(rng, shape, "float32" if dtype == "bfloat16" else dtype)
    t = torch.from_numpy(np.asarray(a)).to(device=device, dtype=TORCH_DTYPES[dtype])
    return t.requires_grad_(requires_grad)


def _f64(t):
    return t.detach().to("cpu", torch.float64).numpy()


def _dense_reference(op, x, w, dy):
    """y, dx, dw in float64 from dense products on the masked weight (feature axis last)."""
    xs, ws, dys = _f64(x), _f64(w), _f64(dy)
    if op.feature_axis == 0:
        xs, dys = xs.T, dys.T
    W = op.dense(ws)
    y, dx = xs @ W, dys @ W.T
    dw = op.from_dense(xs.T @ dys)
    if op.feature_axis == 0:
        y, dx = y.T, dx.T
    return y, dx, dw


def _check_fprop_bprop(rng, dtype, block_size, feature_axis, n, blocks, device):
    op = BlockSparseMatMul(_mask(rng, blocks), block_size, feature_axis)
    x_shape = (n, op.K) if feature_axis == 1 else (op.K, n)
    y_shape = (n, op.M) if feature_axis == 1 else (op.M, n)
    x = _tensor(rng, x_shape, dtype, device, requires_grad=True)
    w = _tensor(rng, op.w_shape, dtype, device, requires_grad=True)
    dy = _tensor(rng, y_shape, dtype, device)
    y = ct.block_sparse_matmul(x, w, op)
    assert y.dtype == x.dtype and y.device == x.device and tuple(y.shape) == y_shape
    y.backward(dy)
    y_ref, dx_ref, dw_ref = _dense_reference(op, x, w, dy)
    assert_close(y, y_ref, dtype, "y")
    assert_close(x.grad, dx_ref, dtype, "dx")
    assert_close(w.grad, dw_ref, dtype, "dw")
    return op, x, w, y


# ---------------------------------------------------------------------------------------------------
# CPU: reference path
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("block_size,n,blocks", [(8, 1, (3, 5)), (16, 37, (4, 3)), (32, 9, (2, 2))])
def test_matmul_cpu(rng, dtype, feature_axis, block_size, n, blocks):
    _check_fprop_bprop(rng, dtype, block_size, feature_axis, n, blocks, "cpu")


@pytest.mark.parametrize("feature_axis", [1, 0])
def test_gradcheck_float64(rng, feature_axis):
    op = BlockSparseMatMul(_mask(rng, (3, 2)), 8, feature_axis)
    x = _tensor(rng, (5, op.K) if feature_axis == 1 else (op.K, 5), "float64", requires_grad=True)
    w = _tensor(rng, op.w_shape, "float64", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ct.block_sparse_matmul(x, w, op), (x, w))


def test_cpu_shares_memory_with_reference(rng, monkeypatch):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x, w = _tensor(rng, (4, op.K), "float32"), _tensor(rng, op.w_shape, "float32")
    seen = {}
    original = BlockSparseMatMul.fprop

    def spy(self, a, b, **kw):
        seen.update(x=a.ctypes.data, w=b.ctypes.data, out=kw["out"].ctypes.data)
        return original(self, a, b, **kw)

    monkeypatch.setattr(BlockSparseMatMul, "fprop", spy)
    y = ct.block_sparse_matmul(x, w, op)
    assert seen == {"x": x.data_ptr(), "w": w.data_ptr(), "out": y.data_ptr()}


def test_non_contiguous_input(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    xt = _tensor(rng, (op.K, 6), "float32").t()  # [6, K] view, not contiguous
    w = _tensor(rng, op.w_shape, "float32")
    y = ct.block_sparse_matmul(xt, w, op)
    assert_close(y, _f64(xt) @ op.dense(_f64(w)), "float32")


def test_no_grad_for_frozen_operand(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 2)), 8)
    x = _tensor(rng, (3, op.K), "float64")
    w = _tensor(rng, op.w_shape, "float64", requires_grad=True)
    ct.block_sparse_matmul(x, w, op).sum().backward()
    assert x.grad is None and w.grad is not None


# ---------------------------------------------------------------------------------------------------
# BlockSparseLinear
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_dense(rng, feature_axis, bias):
    torch.manual_seed(int(rng.integers(1 << 30)))
    mask = _mask(rng, (3, 4))
    layer = ct.BlockSparseLinear(mask, 8, bias=bias, feature_axis=feature_axis, dtype=torch.float64)
    assert tuple(layer.weight.shape) == layer.op.w_shape
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == mask.sum() * 64 + (32 if bias else 0)
    x = _tensor(rng, (7, 24) if feature_axis == 1 else (24, 7), "float64", requires_grad=True)
    y = layer(x)
    W = layer.to_dense()
    ref = (x @ W if feature_axis == 1 else (x.t() @ W).t())
    if bias:
        ref = ref + (layer.bias if feature_axis == 1 else layer.bias[:, None])
    assert_close(y, _f64(ref), "float64")
    y.sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape
    if bias:
        assert_close(layer.bias.grad, np.full(32, 7.0), "float64")


def test_linear_from_dense_roundtrip(rng):
    mask = _mask(rng, (4, 2))
    W = torch.randn(32, 16, dtype=torch.float64)
    b = torch.randn(16, dtype=torch.float64)
    layer = ct.BlockSparseLinear.from_dense(W, mask, 8, bias=b)
    dense_mask = np.kron(mask, np.ones((8, 8), dtype=bool))
    assert_close(layer.to_dense(), np.where(dense_mask, W.numpy(), 0.0), "float64")
    assert_close(layer.bias, b.numpy(), "float64")
    assert layer.weight.dtype == torch.float64
    with pytest.raises(ValueError, match=r"W: expected shape \(32, 16\)"):
        ct.BlockSparseLinear.from_dense(W[:, :8], mask, 8)
    with pytest.raises(ValueError, match=r"bias: expected shape \(16,\)"):
        ct.BlockSparseLinear.from_dense(W, mask, 8, bias=b[:3])


def test_linear_init_and_repr(rng):
    torch.manual_seed(0)
    mask = np.eye(4, dtype=bool)
    mask[0, 1] = True
    layer = ct.BlockSparseLinear(mask, 16)
    text = repr(layer)
    for part in ("in_features=64", "out_features=64", "block_size=16", "blocks=4x4", "nnz=5",
                 "density=0.312", "bias=True", "feature_axis=1"):
        assert part in text
    # U(±1/sqrt(fan_in)): column block 1 has two input blocks (fan-in 32), the others one (16)
    w = layer.weight.detach().abs()
    col1 = torch.as_tensor(layer.layout.cols == 1)
    assert w[col1].max() <= 32 ** -0.5 and w[~col1].max() <= 16 ** -0.5
    assert w[~col1].max() > 32 ** -0.5  # the bound follows the fan-in, not one global value
    torch.manual_seed(0)
    again = ct.BlockSparseLinear(mask, 16)
    assert torch.equal(again.weight, layer.weight)


# ---------------------------------------------------------------------------------------------------
# torch.compile and autocast
def test_compile_fullgraph_cpu(rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    mask = _mask(rng, (3, 4))
    model = torch.nn.Sequential(ct.BlockSparseLinear(mask, 8), torch.nn.ReLU(),
                                ct.BlockSparseLinear(mask.T.copy(), 8, feature_axis=1))
    x = torch.randn(11, 24)
    y_eager = model(x)
    y_eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: no graph break
    y = compiled(x)
    y.square().sum().backward()
    assert_close(y, _f64(y_eager), "float32")
    for p, g in zip(model.parameters(), grads):
        assert_close(p.grad, _f64(g), "float32")


def test_compile_functional_and_validation(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)  # never called eagerly: registered while tracing
    x = torch.randn(5, op.K, dtype=torch.float64, requires_grad=True)
    w = torch.randn(op.w_shape, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    fn = torch.compile(lambda x, w: ct.block_sparse_matmul(x, w, op).sin(), fullgraph=True, backend="aot_eager")
    y = fn(x, w)
    y.sum().backward()
    dense = op.dense(_f64(w))
    assert_close(y, np.sin(_f64(x) @ dense), "float64")
    assert_close(x.grad, (np.cos(_f64(x) @ dense)) @ dense.T, "float64")
    x7 = torch.randn(7, op.K, dtype=torch.float64)  # another batch: recompiled with a symbolic N
    assert_close(fn(x7, w), np.sin(_f64(x7) @ dense), "float64")
    assert_close(fn(x7[:3], w), np.sin(_f64(x7[:3]) @ dense), "float64")
    with pytest.raises(Exception, match=r"x: expected 16 on axis 1 \(in_blocks=2 × block_size=8\), got"):
        fn(torch.randn(5, 15, dtype=torch.float64), w)  # the fake's check, at trace time (size may be symbolic)


def test_custom_ops_registered():
    for name in ("bsmm_fprop", "bsmm_bprop", "bsmm_updat"):
        assert hasattr(torch.ops.cusparseblocks, name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_cpu(rng, dtype):
    torch.manual_seed(int(rng.integers(1 << 30)))
    layer = ct.BlockSparseLinear(_mask(rng, (2, 3)), 16)
    x = torch.randn(9, 32)
    with torch.autocast("cpu", dtype=TORCH_DTYPES[dtype]):
        y = layer(x)
    assert y.dtype == TORCH_DTYPES[dtype]
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
    ref = _f64(x) @ layer.op.dense(_f64(layer.weight)) + _f64(layer.bias)
    assert_close(y, ref, dtype)


# ---------------------------------------------------------------------------------------------------
# validation: every message names the argument
def test_validation(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    x = torch.zeros(4, op.K)
    w = torch.zeros(op.w_shape)
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 1 \(in_blocks=2 × block_size=8\), got 15"):
        ct.block_sparse_matmul(torch.zeros(4, 15), w, op)
    with pytest.raises(ValueError, match=r"w: expected shape"):
        ct.block_sparse_matmul(x, torch.zeros(op.layout.nnz + 1, 8, 8), op)  # never the right count
    with pytest.raises(ValueError, match=r"x: expected 2 dimensions"):
        ct.block_sparse_matmul(torch.zeros(2, 4, op.K), w, op)
    with pytest.raises(TypeError, match=r"w: expected dtype float32 \(the dtype of x\), got float64"):
        ct.block_sparse_matmul(x, w.double(), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in .*, got int32"):
        ct.block_sparse_matmul(x.int(), w.int(), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in .*, got complex64"):
        ct.block_sparse_matmul(x.to(torch.complex64), w, op)
    with pytest.raises(ValueError, match=r"x: expected a positive batch size on axis 0, got 0"):
        ct.block_sparse_matmul(torch.zeros(0, op.K), w, op)
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got ndarray"):
        ct.block_sparse_matmul(np.zeros((4, op.K), np.float32), w, op)
    with pytest.raises(ValueError, match=r"x: expected a CPU or CUDA tensor, got device meta"):
        ct.block_sparse_matmul(x.to("meta"), w, op)
    with pytest.raises(TypeError, match=r"op: expected a cusparseblocks.BlockSparseMatMul"):
        ct.block_sparse_matmul(x, w, "layout")
    with pytest.raises(ValueError, match=r"block_size: expected one of"):
        ct.BlockSparseLinear(np.ones((2, 2)), 12)


def test_validation_backward_ops(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 8)
    key = ct._key(op)
    with pytest.raises(ValueError, match=r"dy: expected 24 on axis 1 \(out_blocks=3 × block_size=8\), got 16"):
        ct.bsmm_bprop(torch.zeros(4, 16), torch.zeros(op.w_shape), key)
    with pytest.raises(ValueError, match=r"dy: expected batch size 4 \(the batch of x\), got 5"):
        ct.bsmm_updat(torch.zeros(4, 16), torch.zeros(5, 24), key)


# ---------------------------------------------------------------------------------------------------
# GPU: CuPy kernels on torch's memory and stream
@pytest.fixture
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(ct, "_new_output",
                        lambda shape, like: torch.full(shape, float("nan"), dtype=like.dtype, device=like.device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("block_size,n,blocks", [(8, 3, (5, 3)), (16, 77, (4, 6)), (32, 130, (3, 2)),
                                                 (64, 17, (2, 3))])
def test_matmul_gpu(rng, poisoned_outputs, dtype, feature_axis, block_size, n, blocks):
    op, x, w, y = _check_fprop_bprop(rng, dtype, block_size, feature_axis, n, blocks, "cuda")
    # and against torch.matmul on the masked dense weight, in float32 (what the issue asks for)
    layer = ct.BlockSparseLinear(op.layout, block_size, bias=False, device="cuda")
    with torch.no_grad():
        layer.weight.copy_(w.float())
        dense = layer.to_dense()
        ref = x.float() @ dense if feature_axis == 1 else (x.float().t() @ dense).t()
    assert_close(y, _f64(ref), dtype, "y vs torch.matmul")


@pytest.mark.gpu
def test_gpu_zero_copy_stream_and_allocator(rng, monkeypatch):
    import cupy

    op = BlockSparseMatMul(_mask(rng, (4, 4)), 32)
    x = _tensor(rng, (64, op.K), "float32", "cuda")
    w = _tensor(rng, op.w_shape, "float32", "cuda")
    seen = {}
    original = BlockSparseMatMul.fprop

    def spy(self, a, b, **kw):
        seen.update(x=a.data.ptr, w=b.data.ptr, out=kw["out"].data.ptr,
                    stream=cupy.cuda.get_current_stream().ptr, device=cupy.cuda.Device().id)
        before = torch.cuda.memory_allocated()
        tmp = cupy.empty(16 << 20, dtype=cupy.uint8)  # a CuPy temporary comes from torch's allocator
        seen["torch_grew"] = torch.cuda.memory_allocated() - before
        del tmp
        seen["torch_back"] = torch.cuda.memory_allocated() - before
        return original(self, a, b, **kw)

    monkeypatch.setattr(BlockSparseMatMul, "fprop", spy)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = ct.block_sparse_matmul(x, w, op)
    stream.synchronize()
    assert seen["x"] == x.data_ptr() and seen["w"] == w.data_ptr() and seen["out"] == y.data_ptr()
    assert seen["stream"] == stream.cuda_stream
    assert seen["device"] == x.device.index
    assert seen["torch_grew"] >= 16 << 20 and seen["torch_back"] == 0
    assert_close(y, _f64(x) @ op.dense(_f64(w)), "float32")


@pytest.mark.gpu
def test_gpu_device_mismatch(rng):
    op = BlockSparseMatMul(_mask(rng, (2, 2)), 8)
    with pytest.raises(ValueError, match=r"w: expected a tensor on cuda:0 \(the device of x\), got cpu"):
        ct.block_sparse_matmul(torch.zeros(3, op.K, device="cuda:0"), torch.zeros(op.w_shape), op)
    with pytest.raises(TypeError, match=r"x: expected dtype in \('float16', 'bfloat16', 'float32'\), got float64"):
        ct.block_sparse_matmul(torch.zeros(3, op.K, device="cuda", dtype=torch.float64),
                               torch.zeros(op.w_shape, device="cuda", dtype=torch.float64), op)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast_gpu(rng, dtype):
    torch.manual_seed(int(rng.integers(1 << 30)))
    layer = ct.BlockSparseLinear(_mask(rng, (4, 3)), 32, device="cuda")
    x = torch.randn(50, 128, device="cuda")
    with torch.autocast("cuda", dtype=TORCH_DTYPES[dtype]):
        y = layer(x)
    assert y.dtype == TORCH_DTYPES[dtype]
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    ref = _f64(x) @ layer.op.dense(_f64(layer.weight)) + _f64(layer.bias)
    assert_close(y, ref, dtype)
    dw_ref = layer.op.from_dense(_f64(x).T @ (2 * ref))
    assert_close(layer.weight.grad, dw_ref, dtype, "dw")


@pytest.mark.gpu
def test_compile_inductor_gpu(rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    mask = _mask(rng, (4, 4))
    model = torch.nn.Sequential(ct.BlockSparseLinear(mask, 32), torch.nn.GELU(),
                                ct.BlockSparseLinear(mask.T.copy(), 32)).cuda()
    x = torch.randn(96, 128, device="cuda")
    y_eager = model(x)
    y_eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    y = torch.compile(model, fullgraph=True)(x)
    y.sum().backward()
    assert_close(y, _f64(y_eager), "float32")
    for p, g in zip(model.parameters(), grads):
        assert_close(p.grad, _f64(g), "float32")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_second_gpu(rng, poisoned_outputs, dtype):
    """Tensors on cuda:1 while cuda:0 is current: kernels run on the tensors' GPU, on its current stream."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    torch.cuda.set_device(0)
    op, x, w, y = _check_fprop_bprop(rng, dtype, 32, 1, 45, (3, 4), "cuda:1")
    assert y.device == torch.device("cuda", 1) and x.grad.device == y.device and w.grad.device == y.device
    assert torch.cuda.current_device() == 0


@pytest.mark.gpu
def test_cupy_array_on_other_gpu(rng):
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 GPUs")
    op = BlockSparseMatMul(_mask(rng, (2, 3)), 16)
    with cupy.cuda.Device(1):
        x = cupy.asarray(random_array(rng, (7, op.K), "float32"))
        w = cupy.asarray(random_array(rng, op.w_shape, "float32"))
        y = op.fprop(x, w)  # the current device is the arrays' device: runs there
        assert y.device.id == 1
    assert_close(y, np.asarray(x.get(), np.float64) @ op.dense(np.asarray(w.get(), np.float64)), "float32")
    with cupy.cuda.Device(0), pytest.raises(ValueError, match=r"x: expected an array on GPU 0"):
        op.fprop(x, w)
