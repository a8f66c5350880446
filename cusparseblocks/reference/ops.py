"""Reference helper ops on the CPU (NumPy): activations, broadcast add/mul/scale, dropout, layer and batch
normalization, L2 weight normalization, fused LSTM gates. Real code users can run, and the ground truth of
the GPU kernels in ``kernels/ew.cu``.

Half-precision inputs compute in float32 and return their own dtype; float64 computes in float64.
Statistics (mean, rstd) and norms come back in the compute dtype.
"""

from __future__ import annotations

import numpy as np

from .matmul import compute_dtype

ACTIVATIONS = ("identity", "relu", "elu", "gelu_tanh", "gelu_erf", "sigmoid", "tanh", "softplus", "swish")

_SQRT_2_OVER_PI = 0.7978845608028654


def _erf(z):
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is a dependency
        from math import erf as _e

        return np.vectorize(_e)(z)
    return erf(z)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def act_f(z: np.ndarray, activation: str) -> np.ndarray:
    """act(z) elementwise, in z's dtype."""
    if activation == "identity":
        return z
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if activation == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3)))
    if activation == "gelu_erf":
        return 0.5 * z * (1 + _erf(z / np.sqrt(2)))
    if activation == "sigmoid":
        return _sigmoid(z)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "softplus":
        return np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20))))
    if activation == "swish":
        return z * _sigmoid(z)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def act_d(z: np.ndarray, activation: str) -> np.ndarray:
    """d act(z) / dz elementwise (relu'(0) = 0, elu'(0) = 1 from the left: exp(0))."""
    if activation == "identity":
        return np.ones_like(z)
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    if activation == "elu":
        return np.where(z > 0, 1, np.exp(np.minimum(z, 0))).astype(z.dtype)
    if activation == "gelu_tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
    if activation == "gelu_erf":
        return 0.5 * (1 + _erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    if activation == "sigmoid":
        s = _sigmoid(z)
        return s * (1 - s)
    if activation == "tanh":
        return 1 - np.tanh(z) ** 2
    if activation == "softplus":
        return _sigmoid(z)
    if activation == "swish":
        s = _sigmoid(z)
        return s + z * s * (1 - s)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


# ---------------------------------------------------------------------------------------------------
# elementwise: y = act(alpha * (a OP b)), b broadcast against a (numpy rules)


def _combine(op, a, b):
    if op == "none":
        return a
    return a + b if op == "add" else a * b


def ew_fprop(op: str, a, b, activation: str = "identity", alpha: float = 1.0):
    """y = act(alpha · (a op b)) with op in ('none', 'add', 'mul'); returns the broadcast shape, a's dtype."""
    ct = compute_dtype(a.dtype)
    z = _combine(op, a.astype(ct), None if b is None else np.asarray(b).astype(ct))
    return act_f(ct.type(alpha) * z, activation).astype(a.dtype)


def _reduce_to(g, shape):
    """Sum g over the axes numpy broadcasting added or stretched to reach g.shape from ``shape``."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def ew_bprop(op: str, dy, a, b, activation: str = "identity", alpha: float = 1.0):
    """(da, db) of :func:`ew_fprop`; db summed back to b's shape (None when b is None)."""
    ct = compute_dtype(a.dtype)
    a_c = a.astype(ct)
    b_c = None if b is None else np.asarray(b).astype(ct)
    z = _combine(op, a_c, b_c)
    g = dy.astype(ct) * act_d(ct.type(alpha) * z, activation) * ct.type(alpha)
    if op == "none":
        return g.astype(a.dtype), None
    da = g * b_c if op == "mul" else g
    db = g * a_c if op == "mul" else g
    da = _reduce_to(np.broadcast_to(da, g.shape), a.shape).reshape(a.shape)
    db = _reduce_to(np.broadcast_to(db, g.shape), np.shape(b)).reshape(np.shape(b))
    return da.astype(a.dtype), db.astype(b.dtype)


# ---------------------------------------------------------------------------------------------------
# dropout: Philox4x32-10, counter (e // 4, offset), key = seed, lane e % 4

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC'11) on uint64 arrays holding 32-bit words; returns 4 uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in (c0, c1, c2, c3))
    k0, k1 = np.uint64(k0 & 0xFFFFFFFF), np.uint64(k1 & 0xFFFFFFFF)
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    for _ in range(10):
        p0 = m0 * c0
        p1 = m1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + w0) & _MASK32
        k1 = (k1 + w1) & _MASK32
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def dropout_threshold(p: float) -> tuple[int, np.float32]:
    """(threshold, scale): keep an element when its 32-bit random word is >= threshold; kept ones × scale."""
    threshold = min(int(p * 4294967296.0), 0xFFFFFFFF)
    return threshold, np.float32(1.0 / (1.0 - p))


def dropout_mask(shape, p: float, seed: int, offset: int = 0) -> np.ndarray:
    """Boolean keep-mask of ``shape`` (C order): element e is kept when
    Philox(e // 4, offset; seed)[e % 4] >= p·2³²."""
    n = int(np.prod(shape, dtype=np.int64))
    groups = np.arange((n + 3) // 4, dtype=np.uint64)
    words = philox4x32_10(
        groups & _MASK32,
        groups >> np.uint64(32),
        offset & 0xFFFFFFFF,
        offset >> 32,
        seed & 0xFFFFFFFF,
        seed >> 32,
    )
    r = np.stack(words, axis=1).reshape(-1)[:n]
    threshold, _ = dropout_threshold(p)
    return (r >= np.uint32(threshold)).reshape(shape)


def dropout(x, p: float, seed: int, offset: int = 0):
    """y = x · mask · 1/(1-p) (also the backward: dx = dropout(dy, same p, seed, offset))."""
    ct = compute_dtype(x.dtype)
    _, scale = dropout_threshold(p)
    scale = ct.type(scale) if ct == np.float32 else ct.type(1.0 / (1.0 - p))
    keep = dropout_mask(x.shape, p, seed, offset)
    return np.where(keep, x.astype(ct) * scale, ct.type(0)).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------
# normalization over 2-D arrays: statistics along ``stat_axis``, gain/bias along ``feature_axis``


def _along(v, axis, ct):
    """A 1-D per-feature vector shaped to broadcast along ``axis`` of a 2-D array."""
    v = np.asarray(v).astype(ct)
    return v[None, :] if axis == 1 else v[:, None]


def _norm_fprop(x, gain, bias, stat_axis, feature_axis, eps):
    ct = compute_dtype(x.dtype)
    xc = x.astype(ct)
    mean = xc.mean(axis=stat_axis, keepdims=True)
    var = ((xc - mean) ** 2).mean(axis=stat_axis, keepdims=True)
    rstd = 1 / np.sqrt(var + ct.type(eps))
    y = (xc - mean) * rstd
    if gain is not None:
        y = y * _along(gain, feature_axis, ct)
    if bias is not None:
        y = y + _along(bias, feature_axis, ct)
    return y.astype(x.dtype), mean.reshape(-1), rstd.reshape(-1), var.reshape(-1)


def _norm_bprop(dy, x, gain, mean, rstd, stat_axis, feature_axis, train):
    ct = compute_dtype(x.dtype)
    shape = [1, 1]
    shape[1 - stat_axis] = -1
    m = np.asarray(mean, dtype=ct).reshape(shape)
    r = np.asarray(rstd, dtype=ct).reshape(shape)
    xhat = (x.astype(ct) - m) * r
    d = dy.astype(ct)
    gd = d * _along(gain, feature_axis, ct) if gain is not None else d
    if train:
        dx = r * (
            gd
            - gd.mean(axis=stat_axis, keepdims=True)
            - xhat * (gd * xhat).mean(axis=stat_axis, keepdims=True)
        )
    else:
        dx = r * gd
    batch_axis = 1 - feature_axis
    dgain = None if gain is None else (d * xhat).sum(axis=batch_axis).astype(gain.dtype)
    dbias = d.sum(axis=batch_axis)
    return dx.astype(x.dtype), dgain, dbias


def layer_norm_fprop(x, gain=None, bias=None, feature_axis: int = 1, eps: float = 1e-5):
    """y = (x - mean) / sqrt(var + eps) · gain + bias over the features of each sample.

    x: [N, F] (feature_axis 1) or [F, N] (0); gain, bias: [F] or None. Returns (y, mean [N], rstd [N]).
    """
    y, mean, rstd, _ = _norm_fprop(x, gain, bias, feature_axis, feature_axis, eps)
    return y, mean, rstd


def layer_norm_bprop(dy, x, gain, mean, rstd, feature_axis: int = 1):
    """(dx, dgain, dbias) of :func:`layer_norm_fprop`; dgain is None without gain, dbias always [F]."""
    dx, dgain, dbias = _norm_bprop(dy, x, gain, mean, rstd, feature_axis, feature_axis, True)
    return dx, dgain, dbias.astype(x.dtype)


def batch_norm_fprop(
    x,
    gain=None,
    bias=None,
    feature_axis: int = 1,
    training: bool = True,
    running_mean=None,
    running_var=None,
    momentum: float = 0.1,
    eps: float = 1e-5,
):
    """Batch norm over the batch axis. x: [N, C] (feature_axis 1) or [C, N] (0); gain, bias: [C].

    training: statistics of this batch; running_mean/var (float32 or float64 [C], optional) are updated
    in place: r ← (1 - momentum)·r + momentum·s, the variance unbiased (N / (N - 1)), as PyTorch does.
    Otherwise the running statistics normalize. Returns (y, mean [C], rstd [C]) as used.
    """
    batch_axis = 1 - feature_axis
    ct = compute_dtype(x.dtype)
    if training:
        y, mean, rstd, var = _norm_fprop(x, gain, bias, batch_axis, feature_axis, eps)
        n = x.shape[batch_axis]
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * (n / max(n - 1, 1))
        return y, mean, rstd
    mean = np.asarray(running_mean, dtype=ct)
    rstd = 1 / np.sqrt(np.asarray(running_var, dtype=ct) + ct.type(eps))
    shape = [1, 1]
    shape[feature_axis] = -1
    y = (x.astype(ct) - mean.reshape(shape)) * rstd.reshape(shape)
    if gain is not None:
        y = y * _along(gain, feature_axis, ct)
    if bias is not None:
        y = y + _along(bias, feature_axis, ct)
    return y.astype(x.dtype), mean, rstd


def batch_norm_bprop(dy, x, gain, mean, rstd, feature_axis: int = 1, training: bool = True):
    """(dx, dgain, dbias) of :func:`batch_norm_fprop` (training: through the batch statistics)."""
    dx, dgain, dbias = _norm_bprop(dy, x, gain, mean, rstd, 1 - feature_axis, feature_axis, training)
    return dx, dgain, dbias.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------
# L2 weight normalization of block-sparse weights w [nnz, b, b]


def _per_q(layout, values, b, per):
    """A per-unit [M] or per-block [nnz] vector broadcast to [nnz, b, b]."""
    if per == "unit":
        return values.reshape(layout.out_blocks, b)[layout.cols][:, None, :]
    return values[:, None, None]


def _reduce_q(layout, prod, per):
    """Sum [nnz, b, b] products per output unit ([M]) or per block ([nnz])."""
    if per == "block":
        return prod.sum(axis=(1, 2))
    b = prod.shape[-1]
    out = np.zeros((layout.out_blocks, b), dtype=prod.dtype)
    np.add.at(out, layout.cols, prod.sum(axis=1))
    return out.reshape(-1)


def weight_norm_fprop(layout, w, gain=None, per: str = "unit", eps: float = 1e-12):
    """v = gain · w / sqrt(‖w‖² + eps), the norm per output unit (gain [M]) or per block (gain [nnz]).

    Returns (v in w's dtype, rnorm = 1/sqrt(‖w‖² + eps) in the compute dtype).
    """
    ct = compute_dtype(w.dtype)
    b = w.shape[-1]
    wc = w.astype(ct)
    rnorm = 1 / np.sqrt(_reduce_q(layout, wc * wc, per) + ct.type(eps))
    s = _per_q(layout, rnorm, b, per)
    if gain is not None:
        s = s * _per_q(layout, gain.astype(ct), b, per)
    return (wc * s).astype(w.dtype), rnorm


def weight_norm_bprop(layout, dv, w, gain, rnorm, per: str = "unit"):
    """(dw, dgain) of :func:`weight_norm_fprop`: dw = g·r·(dv − w·r²·Σ dv·w), dgain = r·Σ dv·w."""
    ct = compute_dtype(w.dtype)
    b = w.shape[-1]
    wc, dvc = w.astype(ct), dv.astype(ct)
    rnorm = np.asarray(rnorm, dtype=ct)
    dot = _reduce_q(layout, dvc * wc, per)
    r = _per_q(layout, rnorm, b, per)
    g = _per_q(layout, gain.astype(ct), b, per) if gain is not None else ct.type(1)
    dw = g * r * (dvc - wc * r * r * _per_q(layout, dot, b, per))
    dgain = None if gain is None else (dot * rnorm).astype(gain.dtype)
    return dw.astype(w.dtype), dgain


# ---------------------------------------------------------------------------------------------------
# fused LSTM gates, gate order (i, f, g, o)


def _gates(z, feature_axis):
    if feature_axis == 1:
        n, h4 = z.shape
        return [z[:, k * (h4 // 4) : (k + 1) * (h4 // 4)] for k in range(4)]
    h4 = z.shape[0]
    return [z[k * (h4 // 4) : (k + 1) * (h4 // 4)] for k in range(4)]


def lstm_gates_fprop(z, c_prev, feature_axis: int = 1):
    """c = σ(f)·c_prev + σ(i)·tanh(g), h = σ(o)·tanh(c); z [N, 4H] gates (i, f, g, o) (or [4H, N])."""
    ct = compute_dtype(z.dtype)
    zi, zf, zg, zo = (g.astype(ct) for g in _gates(z, feature_axis))
    c = _sigmoid(zf) * c_prev.astype(ct) + _sigmoid(zi) * np.tanh(zg)
    h = _sigmoid(zo) * np.tanh(c)
    return c.astype(z.dtype), h.astype(z.dtype)


def lstm_gates_bprop(dh, dc, z, c_prev, feature_axis: int = 1):
    """(dz, dc_prev) of :func:`lstm_gates_fprop`; dc (gradient into c from later steps) may be None."""
    ct = compute_dtype(z.dtype)
    zi, zf, zg, zo = (g.astype(ct) for g in _gates(z, feature_axis))
    cp = c_prev.astype(ct)
    i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
    c = f * cp + i * g
    tc = np.tanh(c)
    dhc = dh.astype(ct)
    dct = dhc * o * (1 - tc * tc) + (dc.astype(ct) if dc is not None else 0)
    parts = [dct * g * i * (1 - i), dct * cp * f * (1 - f), dct * i * (1 - g * g), dhc * tc * o * (1 - o)]
    dz = np.concatenate(parts, axis=feature_axis)
    return dz.astype(z.dtype), (dct * f).astype(z.dtype)
