"""Reference block-sparse convolution on the CPU: a masked dense convolution in NumPy.

Every function takes activations channels-last (x [N, *spatial, C], 1 to 3 spatial axes) and the
dense weight ``W`` [K, C, *filter] (zeros outside the layout's blocks); the op class transposes views
for channels-first data and builds ``W`` from the blocks. Arithmetic is in ``compute_dtype``: float64
stays float64, every other dtype computes in float32 (the tests pass float64).

Convolution (cross-correlation, as cuDNN and PyTorch), per spatial axis with input size H, filter R,
stride s, dilation d and padding (lo, hi)::

    P = (H + lo + hi - d·(R-1) - 1) // s + 1
    y[n, p, k] = Σ_r Σ_c x[n, p·s - lo + r·d, c] · W[k, c, r]     (x = 0 outside [0, H))

Edge bias (seed 000): output positions whose receptive field overlaps the padding are grouped by which
filter taps fall outside the input (one pattern per distinct set); ``edge_bias`` [E, K] adds row e to
every output position of pattern e. Interior positions get nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .matmul import compute_dtype

__all__ = [
    "ConvGeometry",
    "conv_fprop",
    "conv_bprop",
    "conv_updat",
    "edge_bias_map",
    "edge_bias_fprop",
    "edge_bias_updat",
]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Spatial geometry of one convolution (all tuples have one entry per spatial axis)."""

    input_spatial: tuple[int, ...]
    filter_shape: tuple[int, ...]
    stride: tuple[int, ...]
    pad_lo: tuple[int, ...]
    pad_hi: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def dims(self) -> int:
        return len(self.filter_shape)

    @property
    def taps(self) -> int:
        return int(np.prod(self.filter_shape))

    @functools.cached_property
    def output_spatial(self) -> tuple[int, ...]:
        return tuple(
            (h + lo + hi - d * (r - 1) - 1) // s + 1
            for h, r, s, lo, hi, d in zip(
                self.input_spatial, self.filter_shape, self.stride, self.pad_lo, self.pad_hi, self.dilation
            )
        )


def _taps(geom: ConvGeometry):
    """Every filter tap as (flat index, per-axis tap) in row-major order of the filter."""
    return list(enumerate(np.ndindex(*geom.filter_shape)))


def _window(geom: ConvGeometry, tap) -> tuple[slice, ...]:
    """The slice of the padded input that tap ``tap`` reads for all output positions."""
    out = geom.output_spatial
    return tuple(
        slice(r * d, r * d + (p - 1) * s + 1, s) for r, d, p, s in zip(tap, geom.dilation, out, geom.stride)
    )


def _padded_shape(geom: ConvGeometry) -> tuple[int, ...]:
    # big enough for every window, even when hi padding is larger than any window reaches
    return tuple(
        max(h + lo + hi, d * (f - 1) + (p - 1) * s + 1)
        for h, lo, hi, f, d, p, s in zip(
            geom.input_spatial,
            geom.pad_lo,
            geom.pad_hi,
            geom.filter_shape,
            geom.dilation,
            geom.output_spatial,
            geom.stride,
        )
    )


def _interior(geom: ConvGeometry) -> tuple[slice, ...]:
    return tuple(slice(lo, lo + h) for lo, h in zip(geom.pad_lo, geom.input_spatial))


def _pad(x: np.ndarray, geom: ConvGeometry, ct) -> np.ndarray:
    n, c = x.shape[0], x.shape[-1]
    xp = np.zeros((n, *_padded_shape(geom), c), dtype=ct)
    xp[(slice(None), *_interior(geom))] = x
    return xp


def conv_fprop(geom: ConvGeometry, x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y [N, *out, K] = conv(x [N, *in, C], W [K, C, *filter]), in ``compute_dtype(x.dtype)``."""
    ct = compute_dtype(x.dtype)
    xp = _pad(x.astype(ct, copy=False), geom, ct)
    Wc = W.astype(ct, copy=False)
    y = np.zeros((x.shape[0], *geom.output_spatial, W.shape[0]), dtype=ct)
    for _, tap in _taps(geom):
        patch = xp[(slice(None), *_window(geom, tap))]
        y += patch @ Wc[(slice(None), slice(None), *tap)].T
    return y


def conv_bprop(geom: ConvGeometry, dy: np.ndarray, W: np.ndarray) -> np.ndarray:
    """dx [N, *in, C] = the adjoint of :func:`conv_fprop` applied to dy [N, *out, K]."""
    ct = compute_dtype(dy.dtype)
    dyc = dy.astype(ct, copy=False)
    Wc = W.astype(ct, copy=False)
    dxp = np.zeros((dy.shape[0], *_padded_shape(geom), W.shape[1]), dtype=ct)
    for _, tap in _taps(geom):
        dxp[(slice(None), *_window(geom, tap))] += dyc @ Wc[(slice(None), slice(None), *tap)]
    return np.ascontiguousarray(dxp[(slice(None), *_interior(geom))])


def conv_updat(geom: ConvGeometry, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dW [K, C, *filter] = Σ_n,p dy[n, p, k] · x[n, p·s - lo + r·d, c] (the dense weight gradient)."""
    ct = compute_dtype(x.dtype)
    xp = _pad(x.astype(ct, copy=False), geom, ct)
    dyc = dy.astype(ct, copy=False)
    k, c = dy.shape[-1], x.shape[-1]
    dW = np.zeros((k, c, *geom.filter_shape), dtype=ct)
    dy2 = dyc.reshape(-1, k)
    for _, tap in _taps(geom):
        patch = xp[(slice(None), *_window(geom, tap))].reshape(-1, c)
        dW[(slice(None), slice(None), *tap)] = dy2.T @ patch
    return dW


@functools.lru_cache(maxsize=64)
def edge_bias_map(geom: ConvGeometry) -> tuple[np.ndarray, int]:
    """(map [*out] int32, E): the edge pattern of each output position (-1 inside), and the count E.

    Patterns are numbered in raster order of their first output position. A pattern is the set of
    filter taps that fall outside the input (into the padding), so positions that see the padding the
    same way share a bias.
    """
    per_axis = []
    for h, f, s, lo, d, p in zip(
        geom.input_spatial, geom.filter_shape, geom.stride, geom.pad_lo, geom.dilation, geom.output_spatial
    ):
        pos = np.arange(p)[:, None] * s - lo + np.arange(f)[None, :] * d
        valid = (pos >= 0) & (pos < h)
        _, ids = np.unique(valid, axis=0, return_inverse=True)
        ids = ids.reshape(-1)
        inside = np.all(valid, axis=1)
        per_axis.append((ids, inside))
    grids = np.meshgrid(*[a[0] for a in per_axis], indexing="ij")
    inside = functools.reduce(np.logical_and, np.meshgrid(*[a[1] for a in per_axis], indexing="ij"))
    key = np.zeros(geom.output_spatial, dtype=np.int64)
    for g, (ids, _) in zip(grids, per_axis):
        key = key * (int(ids.max()) + 1) + g
    flat_key = key.reshape(-1)
    flat_inside = inside.reshape(-1)
    out = np.full(flat_key.shape, -1, dtype=np.int32)
    edge_keys = flat_key[~flat_inside]
    if edge_keys.size:
        uniq, first = np.unique(edge_keys, return_index=True)
        order = np.argsort(first, kind="stable")  # raster order of first appearance
        rank = np.empty(uniq.size, dtype=np.int32)
        rank[order] = np.arange(uniq.size, dtype=np.int32)
        out[~flat_inside] = rank[np.searchsorted(uniq, edge_keys)]
    out = out.reshape(geom.output_spatial)
    out.setflags(write=False)
    return out, int(out.max()) + 1


def edge_bias_fprop(geom: ConvGeometry, y: np.ndarray, edge_bias: np.ndarray) -> np.ndarray:
    """y + edge_bias[map[p]] at every edge position p (y [N, *out, K], edge_bias [E, K])."""
    emap, _ = edge_bias_map(geom)
    flat = emap.reshape(-1)
    sel = flat >= 0
    y2 = y.reshape(y.shape[0], -1, y.shape[-1]).copy()
    y2[:, sel] += edge_bias.astype(y.dtype, copy=False)[flat[sel]]
    return y2.reshape(y.shape)


def edge_bias_updat(geom: ConvGeometry, dy: np.ndarray) -> np.ndarray:
    """d edge_bias [E, K] = Σ_n Σ_{p: map[p] = e} dy[n, p, k]."""
    emap, e = edge_bias_map(geom)
    ct = compute_dtype(dy.dtype)
    flat = emap.reshape(-1)
    dy2 = dy.astype(ct, copy=False).reshape(dy.shape[0], -1, dy.shape[-1]).sum(axis=0)
    out = np.zeros((e, dy.shape[-1]), dtype=ct)
    sel = flat >= 0
    np.add.at(out, flat[sel], dy2[sel])
    return out
