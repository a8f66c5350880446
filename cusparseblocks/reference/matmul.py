"""Reference block-sparse matmul on the CPU, through scipy.sparse.bsr_matrix.

All functions take the feature axis last (x [N, K]); the op class transposes views for axis 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..blocklayout import BlockLayout


def compute_dtype(dtype) -> np.dtype:
    """float64 stays float64; every other float computes in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def to_scipy(layout: BlockLayout, w: np.ndarray, dtype=None) -> sp.bsr_matrix:
    """W as a bsr_matrix of shape (K, M); ``w`` is [nnz, b, b] in the layout's row-major block order."""
    b = w.shape[-1]
    data = np.asarray(w, dtype=dtype or w.dtype)
    return sp.bsr_matrix(
        (data, layout.cols.astype(np.int64), layout.row_ptr.astype(np.int64)),
        shape=(layout.in_blocks * b, layout.out_blocks * b),
    )


def bsmm_fprop(layout: BlockLayout, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y [N, M] = x [N, K] · W, computed in ``compute_dtype(x.dtype)``."""
    ct = compute_dtype(x.dtype)
    W = to_scipy(layout, w, ct)
    return np.asarray((W.T @ x.astype(ct).T).T, dtype=ct)


def bsmm_bprop(layout: BlockLayout, dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dx [N, K] = dy [N, M] · Wᵀ."""
    ct = compute_dtype(dy.dtype)
    W = to_scipy(layout, w, ct)
    return np.asarray((W @ dy.astype(ct).T).T, dtype=ct)


def bsmm_updat(layout: BlockLayout, xs, dys, block_size: int) -> np.ndarray:
    """dw [nnz, b, b] = Σ_pairs x[:, i-block]ᵀ · dy[:, j-block] for each nonzero block (i, j)."""
    b = block_size
    ct = compute_dtype(xs[0].dtype)
    dw = np.zeros((layout.nnz, b, b), dtype=ct)
    # chunk over blocks so the gathered operands stay near 64 MiB whatever the layout
    for x, dy in zip(xs, dys):
        n = x.shape[0]
        x3 = x.astype(ct).reshape(n, layout.in_blocks, b)
        dy3 = dy.astype(ct).reshape(n, layout.out_blocks, b)
        step = max(1, (64 << 20) // max(1, n * b * ct.itemsize * 2))
        for s in range(0, layout.nnz, step):
            r, c = layout.rows[s : s + step], layout.cols[s : s + step]
            dw[s : s + step] += np.einsum("nkb,nkc->kbc", x3[:, r], dy3[:, c], optimize=True)
    return dw
