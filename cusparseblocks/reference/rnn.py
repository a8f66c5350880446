"""NumPy float64 reference recurrence for the sparse RNN: relu/tanh RNN and LSTM.

Math (one layer, W [H, G·H], G = 1 for relu/tanh and 4 for the LSTM; u [T, B, G·H]; h, c [B, H]):

- relu / tanh: ``h_t = f(h_{t-1}·W + u_t)``
- LSTM, gate order (i, f, g, o) along the G·H axis as in ``torch.nn.LSTM``:
  ``z = h_{t-1}·W + u_t``; ``i = σ(z[:, 0:H])``, ``f = σ(z[:, H:2H])``, ``g = tanh(z[:, 2H:3H])``,
  ``o = σ(z[:, 3H:4H])``; ``c_t = f·c_{t-1} + i·g``; ``h_t = o·tanh(c_t)``.

``u`` holds the input projections already computed (``x_t·W_x + bias``), as the persistent kernel takes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MODES", "gates", "rnn_forward"]

MODES = ("relu", "tanh", "lstm")


def gates(mode: str) -> int:
    """Rows of W per hidden unit: 4 for the LSTM, 1 otherwise."""
    return 4 if mode == "lstm" else 1


def _sigmoid(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5


def rnn_forward(W, u, h0, c0=None, mode: str = "tanh", round_dtype=None):
    """Run the recurrence in float64.

    W: [H, G·H] dense array or scipy.sparse matrix; u: [T, B, G·H]; h0: [B, H]; c0: [B, H] or None
    (zeros; LSTM only). ``round_dtype`` (e.g. float16): round h_t to that dtype after every step, as a
    kernel that stores and exchanges h in that dtype does (c stays float64).
    Returns (y [T, B, H] float64 holding h_1..h_T, c_T [B, H] float64 or None for relu/tanh).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    G = gates(mode)
    Wd = W.astype(np.float64) if hasattr(W, "tocsr") else np.asarray(W, dtype=np.float64)
    if hasattr(Wd, "tocsr"):
        Wd = Wd.tocsr()
    u = np.asarray(u, dtype=np.float64)
    T, B, GH = u.shape
    H = GH // G
    h = np.asarray(h0, dtype=np.float64).copy()
    c = np.zeros((B, H)) if c0 is None else np.asarray(c0, dtype=np.float64).copy()
    y = np.empty((T, B, H))
    for t in range(T):
        z = np.asarray(Wd.T @ h.T).T + u[t] if hasattr(Wd, "tocsr") else h @ Wd + u[t]
        if mode == "relu":
            h = np.maximum(z, 0.0)
        elif mode == "tanh":
            h = np.tanh(z)
        else:
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        if round_dtype is not None:
            h = h.astype(round_dtype).astype(np.float64)
        y[t] = h
    return y, (c if mode == "lstm" else None)
