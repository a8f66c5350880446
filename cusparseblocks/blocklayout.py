"""The block layout: a boolean mask over (input block, output block) and every table derived from it.

Tables are built once with vectorized NumPy and cached on the object; ops borrow them. Nonzero blocks
are numbered in row-major order of the mask (the order of ``w``), which is also CSR order.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["BlockLayout", "as_layout"]


class BlockLayout:
    """A 2-D block mask ``[in_blocks, out_blocks]``; block (i, j) links inputs of block i to outputs of j.

    Attributes (NumPy, read-only): ``mask`` bool; ``rows``/``cols`` int32 [nnz] (block coordinates in
    ``w`` order); ``row_ptr`` int32 [in_blocks+1] (CSR); ``col_ptr`` int32 [out_blocks+1] and
    ``col_order`` int32 [nnz] (CSC: the ``w`` indices of column j are
    ``col_order[col_ptr[j]:col_ptr[j+1]]``, sorted by row); ``cols_longest_first`` int32 [out_blocks] and
    ``rows_longest_first`` int32 [in_blocks] (by decreasing block count, ties in index order);
    ``block_index`` int32 [in_blocks, out_blocks] (the ``w`` index of each block, -1 where absent).
    """

    def __init__(self, mask, name: str = "layout"):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D block mask [in_blocks, out_blocks], got shape {mask.shape}")
        if mask.dtype != np.bool_:
            if mask.dtype.kind not in "biuf":
                raise TypeError(f"{name}: expected a boolean-like mask (bool, int or float of 0/1), got {mask.dtype}")
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError(f"{name}: expected a mask of 0/1 values, got values outside {{0, 1}}")
            mask = mask != 0
        if mask.shape[0] == 0 or mask.shape[1] == 0:
            raise ValueError(f"{name}: expected at least one block row and column, got shape {mask.shape}")
        if not mask.any():
            raise ValueError(f"{name}: expected at least one nonzero block, got an empty mask of shape {mask.shape}")
        self.mask = np.ascontiguousarray(mask)
        self.mask.setflags(write=False)
        self.in_blocks, self.out_blocks = mask.shape
        rows, cols = np.nonzero(self.mask)
        self.rows = _frozen(rows.astype(np.int32))
        self.cols = _frozen(cols.astype(np.int32))
        self.nnz = int(rows.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def density(self) -> float:
        return self.nnz / self.mask.size

    @functools.cached_property
    def row_ptr(self) -> np.ndarray:
        counts = np.bincount(self.rows, minlength=self.in_blocks)
        return _frozen(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    @functools.cached_property
    def col_order(self) -> np.ndarray:
        # stable sort by column keeps rows ascending inside a column (w order is row-major)
        return _frozen(np.argsort(self.cols, kind="stable").astype(np.int32))

    @functools.cached_property
    def col_ptr(self) -> np.ndarray:
        counts = np.bincount(self.cols, minlength=self.out_blocks)
        return _frozen(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    @functools.cached_property
    def cols_longest_first(self) -> np.ndarray:
        """int32 [out_blocks]: the block columns by decreasing block count (ties in column order)."""
        return _frozen(np.argsort(-np.diff(self.col_ptr), kind="stable").astype(np.int32))

    @functools.cached_property
    def rows_longest_first(self) -> np.ndarray:
        """int32 [in_blocks]: the block rows by decreasing block count (ties in row order)."""
        return _frozen(np.argsort(-np.diff(self.row_ptr), kind="stable").astype(np.int32))

    @functools.cached_property
    def block_index(self) -> np.ndarray:
        """int32 [in_blocks, out_blocks]: the ``w`` index of the block at each position, -1 where absent."""
        index = np.full(self.mask.shape, -1, dtype=np.int32)
        index[self.rows, self.cols] = np.arange(self.nnz, dtype=np.int32)
        return _frozen(index)

    @functools.cached_property
    def transposed(self) -> BlockLayout:
        """The layout of Wᵀ (its ``w`` order differs: use ``col_order`` to map)."""
        return BlockLayout(self.mask.T)

    def __eq__(self, other) -> bool:
        return isinstance(other, BlockLayout) and np.array_equal(self.mask, other.mask)

    def __hash__(self) -> int:
        # computed once: the mask is read-only, and ops key per-device caches by the layout on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = hash((self.mask.shape, self.mask.tobytes()))
        return h

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_hash", None)  # hashes of bytes differ between processes: recompute after unpickling
        return state

    def __repr__(self) -> str:
        return f"BlockLayout({self.in_blocks}x{self.out_blocks}, nnz={self.nnz}, density={self.density:.3f})"


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def as_layout(layout, name: str = "layout") -> BlockLayout:
    return layout if isinstance(layout, BlockLayout) else BlockLayout(layout, name)
