"""PyTorch adapter: a differentiable block-sparse matmul and ``BlockSparseLinear``.

CUDA tensors run the CuPy kernels with no copy: inputs and outputs are shared through DLPack, the
outputs are allocated by torch (its caching allocator), CuPy launches on ``torch.cuda.current_stream()``
and any temporary CuPy allocates inside the adapter comes from torch's caching allocator too, so one
pool serves the card. CPU tensors run the NumPy reference path (float64 included, for gradcheck).

``torch.compile``: the three products are registered as custom ops (``cusparseblocks::bsmm_fprop``,
``bsmm_bprop``, ``bsmm_updat``) with fake implementations, so they trace without a graph break
(``fullgraph=True`` works). AMP: under ``torch.autocast`` the operands are cast to the autocast dtype
(float16 or bfloat16), as ``torch.matmul`` would be; the backward runs in that dtype.
``DistributedDataParallel``: ``BlockSparseLinear`` holds ordinary parameters, so DDP all-reduces
their gradients like any other module's.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import threading

import numpy as np
import torch
from torch import nn

from .._array import cupy
from ..blocklayout import BlockLayout, as_layout
from ..matmul import BlockSparseMatMul
from ._dlpack import (
    ArraySpec,
    check_matmul,
    cupy_view,
    external_stream,
    lookup_op,
    numpy_view_bf16,
    register_op,
)

__all__ = [
    "block_sparse_matmul",
    "bsmm_fprop",
    "bsmm_bprop",
    "bsmm_updat",
    "BlockSparseLinear",
    "to_cupy",
    "cupy_on_torch",
]

_NUMPY_DTYPES = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


def _spec(t: torch.Tensor) -> ArraySpec:
    if t.dtype == torch.bfloat16:
        from .._array import bfloat16

        return ArraySpec(tuple(t.shape), np.dtype(bfloat16))
    return ArraySpec(tuple(t.shape), _NUMPY_DTYPES.get(t.dtype), str(t.dtype).replace("torch.", ""))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as NumPy (no copy; bfloat16 through an int16 view)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return numpy_view_bf16(t.view(torch.int16).numpy())
    return t.numpy()


def to_cupy(t: torch.Tensor):
    """A contiguous CUDA tensor as a CuPy array on the same memory (no copy).

    Made from the pointer, shape and dtype (bfloat16 included) and holding a reference to ``t``; use it
    on ``t``'s stream (inside :func:`cupy_on_torch`), as the adapter does.
    """
    if not t.is_cuda:
        raise ValueError(f"tensor: expected a CUDA tensor, got device {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"tensor: expected a contiguous tensor, got strides {t.stride()} "
                         f"for shape {tuple(t.shape)}")
    return cupy_view(t.data_ptr(), tuple(t.shape), _spec(t).dtype, t.device.index, t)


# ------------------------------------------------------------------------------------------------
# CuPy inside torch: same device, torch's current stream, torch's caching allocator.
_allocator_lock = threading.Lock()
_allocator = None


def _torch_allocator():
    """A CuPy allocator that takes memory from torch's caching allocator on CuPy's current stream."""
    global _allocator
    with _allocator_lock:
        if _allocator is None:
            cp = cupy()

            alloc, delete = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
            exiting = []  # set by atexit: frees after that are skipped (the process is going away)

            def malloc(size: int, device_id: int) -> int:
                stream = cp.cuda.get_current_stream().ptr
                return alloc(size, device_id, stream)

            def free(ptr: int, device_id: int) -> None:
                # CuPy arrays cached in long-lived objects (lookup tables, plans) are freed during
                # interpreter teardown, after torch's modules are gone; calling into torch then raises
                # where no exception can be printed ("Error in sys.excepthook"). Skip those frees.
                if exiting:
                    return
                try:
                    delete(ptr)
                except Exception:  # noqa: BLE001
                    pass

            atexit.register(exiting.append, True)
            _allocator = cp.cuda.memory.PythonFunctionAllocator(malloc, free)
        return _allocator


@contextlib.contextmanager
def cupy_on_torch(device: torch.device | int | None = None):
    """Run CuPy on ``device`` (default: torch's current), on torch's current stream, with torch's memory.

    Inside the block, CuPy kernels are ordered with torch's work on that stream (no synchronization
    needed either way) and every CuPy allocation is a block of torch's caching allocator, freed back
    to it when the CuPy array dies.
    """
    cp = cupy()
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = external_stream(torch.cuda.current_stream(index).cuda_stream, index)
    with cp.cuda.Device(index), stream, cp.cuda.using_allocator(_torch_allocator().malloc):
        yield


# ------------------------------------------------------------------------------------------------
# The three products as torch.library custom ops (traceable by torch.compile through their fakes).
def _run(kind: str, a: torch.Tensor, b: torch.Tensor, key: int) -> torch.Tensor:
    op = lookup_op(key)
    shape = check_matmul(op, kind, _spec(a), _spec(b), a.is_cuda)
    out = _new_output(shape, a)
    fn = getattr(op, kind)
    if a.is_cuda:
        with cupy_on_torch(a.device):
            fn(to_cupy(a), to_cupy(b), out=to_cupy(out))
    else:
        fn(_to_numpy(a), _to_numpy(b), out=_to_numpy(out))
    return out


def _new_output(shape, like: torch.Tensor) -> torch.Tensor:
    # torch allocates every output (its caching allocator); the tests swap in NaN-filled buffers here
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _fake(kind: str, a: torch.Tensor, b: torch.Tensor, key: int) -> torch.Tensor:
    shape = check_matmul(lookup_op(key), kind, _spec(a), _spec(b), a.device.type == "cuda")
    return a.new_empty(shape)


@torch.library.custom_op("cusparseblocks::bsmm_fprop", mutates_args=())
def bsmm_fprop(x: torch.Tensor, w: torch.Tensor, key: int) -> torch.Tensor:
    """y = x·W for the op registered under ``key``; x [N, K] (or [K, N]), w ``w_shape``. No autograd."""
    return _run("fprop", x, w, key)


@torch.library.custom_op("cusparseblocks::bsmm_bprop", mutates_args=())
def bsmm_bprop(dy: torch.Tensor, w: torch.Tensor, key: int) -> torch.Tensor:
    """dx = dy·Wᵀ; dy [N, M] (or [M, N]). No autograd."""
    return _run("bprop", dy, w, key)


@torch.library.custom_op("cusparseblocks::bsmm_updat", mutates_args=())
def bsmm_updat(x: torch.Tensor, dy: torch.Tensor, key: int) -> torch.Tensor:
    """dw = xᵀ·dy on the nonzero blocks, [nnz, b, b]. No autograd."""
    return _run("updat", x, dy, key)


@bsmm_fprop.register_fake
def _(x, w, key):
    return _fake("fprop", x, w, key)


@bsmm_bprop.register_fake
def _(dy, w, key):
    return _fake("bprop", dy, w, key)


@bsmm_updat.register_fake
def _(x, dy, key):
    return _fake("updat", x, dy, key)


_CUSTOM_OPS = {"fprop": bsmm_fprop, "bprop": bsmm_bprop, "updat": bsmm_updat}


def _product(kind: str, a: torch.Tensor, b: torch.Tensor, key: int) -> torch.Tensor:
    # torch.compile traces the custom op (its fake gives the shape); eager calls skip its dispatcher
    if torch.compiler.is_compiling():
        return _CUSTOM_OPS[kind](a, b, key)
    return _run(kind, a, b, key)


class _BlockSparseMatMulFn(torch.autograd.Function):
    """forward: y = fprop(x, w); backward: dx = bprop(dy, w), dw = updat(x, dy). Saves x and w only."""

    @staticmethod
    def forward(x, w, key):
        return _product("fprop", x, w, key)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, key = inputs
        ctx.save_for_backward(x, w)
        ctx.key = key

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy = dy.contiguous()
        if dy.dtype != x.dtype:  # a consumer may hand back another dtype; the kernels want x's
            dy = dy.to(x.dtype)
        dx = _product("bprop", dy, w, ctx.key) if ctx.needs_input_grad[0] else None
        dw = _product("updat", x, dy, ctx.key) if ctx.needs_input_grad[1] else None
        return dx, dw, None


@torch.compiler.assume_constant_result
def _key(op: BlockSparseMatMul) -> int:
    # run at trace time by torch.compile and baked into the graph as a constant
    return register_op(op)


def _check_devices(x: torch.Tensor, w: torch.Tensor) -> None:
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: expected a CPU or CUDA tensor, got device {t.device}")
    if x.device != w.device:
        raise ValueError(f"w: expected a tensor on {x.device} (the device of x), got {w.device}")


def block_sparse_matmul(x: torch.Tensor, w: torch.Tensor, op: BlockSparseMatMul) -> torch.Tensor:
    """y = x·W, differentiable in x and w.

    x: [N, K] (``op.feature_axis`` 1) or [K, N] (0); w: ``op.w_shape`` [nnz, b, b]; both float16,
    bfloat16 or float32 (float64 on the CPU), same dtype and device. Returns y [N, M] (or [M, N]) in
    that dtype. Non-contiguous operands are made contiguous (one copy); contiguous ones are shared
    with the kernels. Under ``torch.autocast`` both are cast to the autocast dtype first.
    """
    _check_devices(x, w)
    key = getattr(op, "_adapter_key", None)  # set by register_op: a plain attribute read when tracing
    if key is None:
        key = _key(op)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, w = x.to(dtype), w.to(dtype)
    if not torch.compiler.is_compiling():  # when tracing, the custom op's fake checks the same
        check_matmul(op, "fprop", _spec(x), _spec(w), x.is_cuda)
    x, w = x.contiguous(), w.contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if not needs_grad and not torch.compiler.is_compiling():
        return _run("fprop", x, w, key)  # nothing to differentiate: no autograd node
    return _BlockSparseMatMulFn.apply(x, w, key)


# ------------------------------------------------------------------------------------------------
def _index(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.int64)).to(device)


class BlockSparseLinear(nn.Module):
    """y = x·W + bias with W block-sparse: ``layout`` [in_blocks, out_blocks] of ``block_size`` blocks.

    x: [N, in_features] (``feature_axis=1``) or [in_features, N] (0), in_features = in_blocks·b;
    y: [N, out_features] or [out_features, N]. ``weight``: [nnz, b, b] (the op's ``w_shape``), block k
    at mask position (rows[k], cols[k]) in row-major order; ``bias``: [out_features] or None.
    Initialised like ``nn.Linear``: U(±1/√fan_in) with the fan-in of each output's nonzero blocks.
    Extra keyword arguments (``allow_tf32``, ``deterministic``) go to :class:`BlockSparseMatMul`.
    """

    def __init__(self, layout, block_size: int = 32, bias: bool = True, feature_axis: int = 1, *,
                 device=None, dtype=None, **op_options):
        super().__init__()
        self.op = BlockSparseMatMul(layout, block_size, feature_axis, **op_options)
        register_op(self.op)  # its key is then a plain attribute, which torch.compile reads as a constant
        self.layout: BlockLayout = self.op.layout
        self.block_size = self.op.block_size
        self.feature_axis = self.op.feature_axis
        self.in_features, self.out_features = self.op.K, self.op.M
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.op.w_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = torch.as_tensor(self.op.fan_in(), dtype=torch.float64)  # [M] inputs per output
        lay, b = self.layout, self.block_size
        bound_w = fan_in.reshape(lay.out_blocks, b)[_index(lay.cols, "cpu")].clamp(min=1).rsqrt()
        with torch.no_grad():
            # torch's RNG, so that torch.manual_seed repeats an initialisation (DDP replicas, tests)
            u = torch.rand(self.op.w_shape, dtype=torch.float64) * 2 - 1
            self.weight.copy_(u * bound_w[:, None, :])
            if self.bias is not None:
                bound_b = fan_in.clamp(min=1).rsqrt()
                self.bias.copy_((torch.rand(self.out_features, dtype=torch.float64) * 2 - 1) * bound_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = block_sparse_matmul(x, self.weight, self.op)
        if self.bias is None:
            return y
        bias = self.bias.to(y.dtype)
        return y + (bias if self.feature_axis == 1 else bias[:, None])

    def to_dense(self) -> torch.Tensor:
        """W as a dense [in_features, out_features] tensor (zeros outside the layout); differentiable."""
        lay, b = self.layout, self.block_size
        dense = self.weight.new_zeros(lay.in_blocks, lay.out_blocks, b, b)
        rows, cols = _index(lay.rows, dense.device), _index(lay.cols, dense.device)
        dense = dense.index_put((rows, cols), self.weight)
        return dense.permute(0, 2, 1, 3).reshape(self.in_features, self.out_features)

    @classmethod
    def from_dense(cls, W: torch.Tensor, layout, block_size: int = 32, bias: torch.Tensor | None = None,
                   feature_axis: int = 1, **op_options) -> BlockSparseLinear:
        """A layer whose weight is the blocks of dense ``W`` [in_features, out_features] in ``layout``.

        Values outside the layout are dropped. ``W`` is x·W's W, i.e. ``nn.Linear.weight.T``. ``bias``:
        [out_features] or None (no bias). Parameters take W's device and dtype.
        """
        lay = as_layout(layout)
        layer = cls(lay, block_size, bias is not None, feature_axis, device=W.device, dtype=W.dtype,
                    **op_options)
        if W.ndim != 2 or tuple(W.shape) != (layer.in_features, layer.out_features):
            raise ValueError(f"W: expected shape ({layer.in_features}, {layer.out_features}) "
                             f"(in_blocks × block_size, out_blocks × block_size), got {tuple(W.shape)}")
        b = layer.block_size
        blocks = W.detach().reshape(lay.in_blocks, b, lay.out_blocks, b).permute(0, 2, 1, 3)
        rows, cols = _index(lay.rows, W.device), _index(lay.cols, W.device)
        with torch.no_grad():
            layer.weight.copy_(blocks[rows, cols])
            if bias is not None:
                if tuple(bias.shape) != (layer.out_features,):
                    raise ValueError(f"bias: expected shape ({layer.out_features},), got {tuple(bias.shape)}")
                layer.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        lay = self.layout
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, blocks={lay.in_blocks}x{lay.out_blocks}, nnz={lay.nnz}, "
                f"density={lay.density:.3f}, bias={self.bias is not None}, feature_axis={self.feature_axis}")


# ------------------------------------------------------------------------------------------------
# The other torch modules of the package (helper ops, conv, RNN), re-exported when present. Imported
# without a guard once found, so that an error inside one of them shows rather than hides it.
def _reexport(name: str) -> None:
    if importlib.util.find_spec(f"{__package__}.{name}") is None:
        return
    module = importlib.import_module(f"{__package__}.{name}")
    names = getattr(module, "__all__", None)
    if names is None:  # only what the module defines, not what it imports
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
    for n in names:
        globals()[n] = getattr(module, n)
        if n not in __all__:
            __all__.append(n)


for _name in ("torch_ops", "torch_conv", "torch_rnn"):
    _reexport(_name)
del _name
