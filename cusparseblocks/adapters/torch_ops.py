"""PyTorch autograd functions for the helper ops of :mod:`cusparseblocks.ops`.

CUDA tensors run the CuPy kernels zero-copy on torch's current stream (memory from torch's caching
allocator); CPU tensors run the NumPy reference. Each function saves exactly what its backward needs
(inputs and statistics; dropout saves nothing but its seed). No arithmetic here: forward and backward
are :mod:`cusparseblocks.ops` calls. Re-exported by :mod:`cusparseblocks.adapters.torch`.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops

__all__ = [
    "activation",
    "add_activation",
    "mul_activation",
    "scale_activation",
    "dropout",
    "layer_norm",
    "batch_norm",
    "weight_norm",
    "lstm_gates",
    "mlstm",
]


def _call(fn, *tensors, **kwargs):
    """``fn`` on CuPy views (CUDA, torch's stream) or NumPy views (CPU) of tensors; outputs as tensors."""
    from .torch import _to_numpy, cupy_on_torch, to_cupy

    first = next(t for t in tensors if isinstance(t, torch.Tensor))
    for i, t in enumerate(tensors):
        if isinstance(t, torch.Tensor) and t.device != first.device:
            raise ValueError(f"tensor {i}: expected a tensor on {first.device}, got {t.device}")
    if first.is_cuda:
        with cupy_on_torch(first.device):
            out = fn(*[to_cupy(t) if isinstance(t, torch.Tensor) else t for t in tensors], **kwargs)
            torch_out = _to_torch(out)
        return torch_out
    return _to_torch(fn(*[_to_numpy(t) if isinstance(t, torch.Tensor) else t for t in tensors], **kwargs))


def _to_torch(a):
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(_to_torch(x) for x in a)
    if isinstance(a, np.ndarray):
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))
    if a.dtype.name == "bfloat16":  # a CuPy array: DLPack through 16-bit integers
        return torch.from_dlpack(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


def _contiguous(g):
    return None if g is None else g.contiguous()


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, act, feature_axis):
        ctx.save_for_backward(x, bias)
        ctx.act, ctx.feature_axis = act, feature_axis
        return _call(lambda x, b: ops.activation_fprop(x, act, bias=b, feature_axis=feature_axis), x, bias)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx, db = _call(
            lambda d, x, b: ops.activation_bprop(d, x, ctx.act, bias=b, feature_axis=ctx.feature_axis),
            _contiguous(dy),
            x,
            bias,
        )
        return dx, db, None, None


def activation(
    x: torch.Tensor, activation: str = "relu", bias: torch.Tensor | None = None, feature_axis: int = 1
) -> torch.Tensor:
    """act(x + bias) in one pass, bias [x.shape[feature_axis]] (see ops.activation_fprop)."""
    return _Activation.apply(x, bias, activation, feature_axis)


class _Binary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, op, act, alpha):
        ctx.save_for_backward(a, b)
        ctx.op, ctx.act, ctx.alpha = op, act, alpha
        fwd = ops.add_fprop if op == "add" else ops.mul_fprop
        return _call(lambda a, b: fwd(a, b, activation=act, alpha=alpha), a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved_tensors
        bwd = ops.add_bprop if ctx.op == "add" else ops.mul_bprop
        da, db = _call(
            lambda d, a, b: bwd(d, a, b, activation=ctx.act, alpha=ctx.alpha), _contiguous(dy), a, b
        )
        return da, db, None, None, None


def add_activation(a, b, activation: str = "identity", alpha: float = 1.0):
    """act(alpha·(a + b)) with broadcasting, one pass."""
    return _Binary.apply(a, b, "add", activation, alpha)


def mul_activation(a, b, activation: str = "identity", alpha: float = 1.0):
    """act(alpha·a·b) with broadcasting, one pass."""
    return _Binary.apply(a, b, "mul", activation, alpha)


def mlstm(mx, mh):
    """m = mx ⊙ mh, the multiplicative-LSTM intermediate (same shapes)."""
    if mx.shape != mh.shape:
        raise ValueError(f"mh: expected shape {tuple(mx.shape)} (the shape of mx), got {tuple(mh.shape)}")
    return _Binary.apply(mx, mh, "mul", "identity", 1.0)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, act):
        ctx.save_for_backward(x)
        ctx.alpha, ctx.act = alpha, act
        return _call(lambda x: ops.scale_fprop(x, alpha, activation=act), x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return (
            _call(lambda d, x: ops.scale_bprop(d, x, ctx.alpha, activation=ctx.act), _contiguous(dy), x),
            None,
            None,
        )


def scale_activation(x, alpha: float, activation: str = "identity"):
    """act(alpha·x)."""
    return _Scale.apply(x, alpha, activation)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed, offset):
        ctx.p, ctx.seed, ctx.offset = p, seed, offset
        return _call(lambda x: ops.dropout_fprop(x, p, seed, offset), x)

    @staticmethod
    def backward(ctx, dy):
        return (
            _call(lambda d: ops.dropout_bprop(d, ctx.p, ctx.seed, ctx.offset), _contiguous(dy)),
            None,
            None,
            None,
        )


def dropout(x, p: float, seed: int, offset: int = 0, training: bool = True):
    """x·mask/(1-p) with the counter-based mask of (seed, offset); the backward regenerates the mask."""
    if not training or p == 0:
        return x
    return _Dropout.apply(x, p, seed, offset)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, bias, feature_axis, eps):
        y, mean, rstd = _call(
            lambda x, g, b: ops.layer_norm_fprop(x, g, b, feature_axis=feature_axis, eps=eps), x, gain, bias
        )
        ctx.save_for_backward(x, gain, mean, rstd)
        ctx.feature_axis, ctx.has_bias = feature_axis, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gain, mean, rstd = ctx.saved_tensors
        dx, dg, db = _call(
            lambda d, x, g, m, r: ops.layer_norm_bprop(d, x, g, m, r, feature_axis=ctx.feature_axis),
            _contiguous(dy),
            x,
            gain,
            mean,
            rstd,
        )
        return dx, dg, (db if ctx.has_bias else None), None, None


def layer_norm(x, gain=None, bias=None, feature_axis: int = 1, eps: float = 1e-5):
    """Layer norm of x [N, F] (feature_axis 1) or [F, N] (0) with gain, bias [F]."""
    return _LayerNorm.apply(x, gain, bias, feature_axis, eps)


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, bias, running_mean, running_var, feature_axis, training, momentum, eps):
        y, mean, rstd = _call(
            lambda x, g, b, rm, rv: ops.batch_norm_fprop(
                x,
                g,
                b,
                feature_axis=feature_axis,
                training=training,
                running_mean=rm,
                running_var=rv,
                momentum=momentum,
                eps=eps,
            ),
            x,
            gain,
            bias,
            running_mean,
            running_var,
        )
        ctx.save_for_backward(x, gain, mean, rstd)
        ctx.feature_axis, ctx.training, ctx.has_bias = feature_axis, training, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gain, mean, rstd = ctx.saved_tensors
        dx, dg, db = _call(
            lambda d, x, g, m, r: ops.batch_norm_bprop(
                d, x, g, m, r, feature_axis=ctx.feature_axis, training=ctx.training
            ),
            _contiguous(dy),
            x,
            gain,
            mean,
            rstd,
        )
        return dx, dg, (db if ctx.has_bias else None), None, None, None, None, None, None


def batch_norm(
    x,
    gain=None,
    bias=None,
    running_mean=None,
    running_var=None,
    feature_axis: int = 1,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
):
    """Batch norm of x [N, C] (feature_axis 1) or [C, N] (0); running stats (float32 [C]) updated in place."""
    return _BatchNorm.apply(x, gain, bias, running_mean, running_var, feature_axis, training, momentum, eps)


class _WeightNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, gain, layout, per, eps):
        v, rnorm = _call(lambda w, g: ops.weight_norm_fprop(layout, w, g, per=per, eps=eps), w, gain)
        ctx.save_for_backward(w, gain, rnorm)
        ctx.layout, ctx.per = layout, per
        return v

    @staticmethod
    def backward(ctx, dv):
        w, gain, rnorm = ctx.saved_tensors
        dw, dg = _call(
            lambda d, w, g, r: ops.weight_norm_bprop(ctx.layout, d, w, g, r, per=ctx.per),
            _contiguous(dv),
            w,
            gain,
            rnorm,
        )
        return dw, dg, None, None, None


def weight_norm(w, gain, layout, per: str = "unit", eps: float = 1e-12):
    """gain·w/‖w‖ per output unit (gain [M]) or per block (gain [nnz]) for block-sparse w [nnz, b, b]."""
    return _WeightNorm.apply(w, gain, layout, per, eps)


class _LSTMGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, c_prev, feature_axis):
        ctx.save_for_backward(z, c_prev)
        ctx.feature_axis = feature_axis
        return _call(lambda z, c: ops.lstm_gates_fprop(z, c, feature_axis=feature_axis), z, c_prev)

    @staticmethod
    def backward(ctx, dc, dh):
        z, c_prev = ctx.saved_tensors
        if dh is None:
            dh = torch.zeros_like(c_prev)
        dz, dcp = _call(
            lambda h, c, z, cp: ops.lstm_gates_bprop(h, c, z, cp, feature_axis=ctx.feature_axis),
            _contiguous(dh),
            _contiguous(dc),
            z,
            c_prev,
        )
        return dz, dcp, None


def lstm_gates(z, c_prev, feature_axis: int = 1):
    """(c, h) of the fused LSTM cell from gate pre-activations z [N, 4H] in the order (i, f, g, o)."""
    return _LSTMGates.apply(z, c_prev, feature_axis)
