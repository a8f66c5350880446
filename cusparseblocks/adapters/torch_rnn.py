"""PyTorch module for the sparse persistent RNN: ``SparsePersistentRNN`` (forward only).

CUDA tensors reach the kernels zero-copy through DLPack and run on torch's current stream; CPU tensors
run the NumPy reference. No arithmetic here: :class:`cusparseblocks.rnn.SparseRNN` does it all. The
backward pass through time is not implemented: inputs that require grad under autograd raise.
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cusparseblocks.adapters.torch_rnn needs PyTorch: "
                      "pip install 'cusparseblocks[torch]'") from exc

from ..rnn import SparseRNN

__all__ = ["SparsePersistentRNN"]


class SparsePersistentRNN(torch.nn.Module):
    """One sparse recurrent layer over precomputed input projections.

    Args: as :class:`cusparseblocks.rnn.SparseRNN` (``weight`` W [H, G·H] unstructured, or block-sparse
    ``w`` with ``layout`` and ``block_size``; ``mode`` "relu" | "tanh" | "lstm"), plus ``path``
    ("auto" | "persistent" | "fallback").

    ``forward(u, h0=None, c0=None)``: u [T, B, G·H] float16|float32 (CUDA or CPU), h0/c0 [B, H] (zeros
    when None). Returns (y [T, B, H] = h_1..h_T, h_T [B, H], c_T [B, H] or None).
    """

    def __init__(self, weight, mode: str = "tanh", *, layout=None, block_size=None, path: str = "auto"):
        super().__init__()
        self.rnn = SparseRNN(weight, mode, layout=layout, block_size=block_size)
        self.mode = mode
        self.path = path
        self.hidden_size = self.rnn.hidden_size

    def extra_repr(self) -> str:
        return f"{self.rnn!r}, path={self.path!r}"

    def forward(self, u, h0=None, c0=None):
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u: expected a torch.Tensor, got {type(u).__name__}")
        tensors = {"u": u, "h0": h0, "c0": c0}
        for name, t in tensors.items():
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t is not None and t.requires_grad and torch.is_grad_enabled():
                raise NotImplementedError(f"{name}: requires grad, but SparsePersistentRNN has no backward "
                                          "pass (run under torch.no_grad() or detach the input)")
            if t is not None and t.device != u.device:
                raise ValueError(f"{name}: expected a tensor on {u.device}, got {t.device}")
        if u.dim() != 3:
            raise ValueError(f"u: expected 3 dimensions [T, B, G·H], got shape {tuple(u.shape)}")
        B, H = u.shape[1], self.hidden_size
        if h0 is None:
            h0 = torch.zeros((B, H), dtype=u.dtype, device=u.device)
        if c0 is None and self.mode == "lstm":
            c0 = torch.zeros((B, H), dtype=u.dtype, device=u.device)
        if u.is_cuda:
            import cupy

            with cupy.cuda.Device(u.device.index), \
                    cupy.cuda.ExternalStream(torch.cuda.current_stream(u.device).cuda_stream):
                args = [None if t is None else cupy.from_dlpack(t.detach()) for t in (u, h0, c0)]
                y, c = self.rnn.forward(*args, path=self.path)
                y = torch.from_dlpack(y)
                c = None if c is None else torch.from_dlpack(c)
        else:
            y, c = self.rnn.forward(*(None if t is None else t.detach().numpy() for t in (u, h0, c0)))
            y = torch.from_numpy(y)
            c = None if c is None else torch.from_numpy(c)
        return y, y[-1], c
