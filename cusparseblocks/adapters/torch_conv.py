"""PyTorch adapter for the block-sparse convolution: ``block_sparse_conv`` and ``BlockSparseConv2d``.

CUDA tensors run the CuPy kernels with no copy, on torch's current stream and with torch's caching
allocator (the helpers of :mod:`cusparseblocks.adapters.torch`); CPU tensors run the NumPy reference
(float64 too, for gradcheck). Autograd: dx = bprop(dy, w), dw = updat(x, dy) (the nonzero blocks only),
d edge_bias = updat_edge_bias(dy). This module imports torch; ``import cusparseblocks`` does not.

Memory format, never converted silently: :func:`block_sparse_conv` takes tensors laid out as its op's
``data_format`` says (NHWC arrays [N, H, W, C] or NCHW arrays [N, C, H, W], contiguous).
:class:`BlockSparseConv2d` takes PyTorch's logical NCHW tensors and picks the kernels from the memory
format: a ``torch.channels_last`` input runs the fast NHWC kernels and returns a channels_last output;
a contiguous (NCHW) input runs the NCHW kernels and returns an NCHW output. Anything else is an error
(call ``.contiguous(memory_format=...)`` yourself).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..conv import BlockSparseConv, ChannelBlockLayout
from .torch import _to_numpy, cupy_on_torch, to_cupy

__all__ = ["block_sparse_conv", "BlockSparseConv2d"]


def _call(fn, *tensors, **kwargs):
    """Run ``fn`` on CuPy views (CUDA, torch's stream) or NumPy views (CPU) of torch tensors."""
    first = next(t for t in tensors if t is not None)
    if first.is_cuda:
        with cupy_on_torch(first.device):
            return fn(
                *[None if t is None else to_cupy(t) for t in tensors],
                **{k: (to_cupy(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
            )
    return fn(
        *[None if t is None else _to_numpy(t) for t in tensors],
        **{k: (_to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
    )


def _empty(shape, like):
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)


def _check(op, x, w, edge_bias):
    if not isinstance(op, BlockSparseConv):
        raise TypeError(f"op: expected a cusparseblocks.conv.BlockSparseConv, got {type(op).__name__}")
    for name, t in (("x", x), ("w", w), ("edge_bias", edge_bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
        if not t.is_contiguous():
            raise ValueError(
                f"{name}: expected a contiguous tensor in the op's data_format ({op.data_format}), "
                f"got strides {t.stride()} for shape {tuple(t.shape)}"
            )


class _ConvFn(torch.autograd.Function):
    """forward: y = op.fprop(x, w, edge_bias); backward: bprop, updat, updat_edge_bias."""

    @staticmethod
    def forward(ctx, x, w, edge_bias, op):
        y = _empty(op.output_shape(tuple(x.shape)), x)
        _call(op.fprop, x, w, edge_bias, out=y)
        ctx.save_for_backward(x, w)
        ctx.op = op
        ctx.has_edge_bias = edge_bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        op = ctx.op
        dy = dy.contiguous()
        if dy.dtype != x.dtype:
            dy = dy.to(x.dtype)
        dx = dw = deb = None
        if ctx.needs_input_grad[0]:
            dx = _empty(x.shape, x)
            spatial = tuple(x.shape[1:-1]) if op.channels_last else tuple(x.shape[2:])
            _call(op.bprop, dy, w, out=dx, input_spatial=spatial)
        if ctx.needs_input_grad[1]:
            dw = _empty(w.shape, w)
            _call(op.updat, x, dy, out=dw)
        if ctx.has_edge_bias and ctx.needs_input_grad[2]:
            deb = _empty(op.edge_bias_shape, x)
            _call(op.updat_edge_bias, dy, out=deb)
        return dx, dw, deb, None


def block_sparse_conv(
    x: torch.Tensor, w: torch.Tensor, op: BlockSparseConv, edge_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Differentiable ``op.fprop(x, w, edge_bias)``.

    x: [N, *in, C] (op channels last) or [N, C, *in], contiguous, float16|bfloat16|float32 (float64 on
    the CPU); w: ``op.w_shape``, same dtype; edge_bias: ``op.edge_bias_shape`` or None. Returns y in
    op's data_format.
    """
    _check(op, x, w, edge_bias)
    return _ConvFn.apply(x, w, edge_bias, op)


class BlockSparseConv2d(nn.Module):
    """A 2-D convolution whose channel connections follow a :class:`ChannelBlockLayout`.

    Args:
        layout: a ChannelBlockLayout, or a bool-like block mask [C/b, K/b] with ``block_size``.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (padding may be (lo, hi) pairs per axis).
        edge_bias: learn a bias for output positions whose window overlaps the padding (needs
            ``input_size`` (H, W)).
    Parameters: ``weight`` (``w_shape``: the nonzero blocks), ``edge_bias`` [E, K] if enabled.
    Input [N, C, H, W] as channels_last (fast NHWC kernels) or contiguous NCHW memory; output in the
    same memory format.
    """

    def __init__(
        self,
        layout,
        kernel_size,
        *,
        block_size: int | None = None,
        stride=1,
        padding=0,
        dilation=1,
        edge_bias: bool = False,
        input_size=None,
        seed=None,
        device=None,
        dtype=torch.float32,
    ):
        super().__init__()
        if not isinstance(layout, ChannelBlockLayout):
            if block_size is None:
                raise ValueError("block_size: expected a block size with a mask layout, got None")
            layout = ChannelBlockLayout.from_mask(np.asarray(layout), block_size)
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        common = dict(
            stride=stride, padding=padding, dilation=dilation, input_spatial=input_size, edge_bias=edge_bias
        )
        self.op_nhwc = BlockSparseConv(layout, ks, data_format="NHWC", **common)
        self.op_nchw = BlockSparseConv(layout, ks, data_format="NCHW", **common)
        self.layout = layout
        w = self.op_nhwc.init_normal(seed, dtype=np.float32)
        self.weight = nn.Parameter(torch.from_numpy(w).to(device=device, dtype=dtype))
        if edge_bias:
            self.edge_bias = nn.Parameter(
                torch.zeros(self.op_nhwc.edge_bias_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("edge_bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected 4 dimensions [N, C, H, W], got shape {tuple(x.shape)}")
        if x.is_contiguous(memory_format=torch.channels_last) and not (x.is_contiguous() and x.shape[1] != 1):
            y = block_sparse_conv(x.permute(0, 2, 3, 1), self.weight, self.op_nhwc, self.edge_bias)
            return y.permute(0, 3, 1, 2)
        if x.is_contiguous():
            return block_sparse_conv(x, self.weight, self.op_nchw, self.edge_bias)
        raise ValueError(
            f"x: expected a contiguous or channels_last tensor, got strides {x.stride()} for shape "
            f"{tuple(x.shape)}; call x.contiguous(memory_format=torch.channels_last) for the fast path"
        )

    def dense_weight(self) -> torch.Tensor:
        """The dense [K, C, R, S] weight (zeros outside the layout), detached, on the weight's device."""
        w = self.weight.detach()
        if w.is_cuda:
            with cupy_on_torch(w.device):
                return torch.from_dlpack(self.op_nhwc.dense(to_cupy(w.contiguous())))
        return torch.from_numpy(np.asarray(self.op_nhwc.dense(_to_numpy(w)))).to(w.dtype)

    def extra_repr(self) -> str:
        op = self.op_nhwc
        return (
            f"{op.C}->{op.K}, layout={self.layout!r}, kernel_size={op.filter_shape}, stride={op.stride}, "
            f"padding={op.padding}, dilation={op.dilation}, edge_bias={op.edge_bias}"
        )
