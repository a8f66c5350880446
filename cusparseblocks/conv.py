"""Block-sparse convolution: sparsity over channel blocks, dense spatial filters (seeds 000 and 004).

A :class:`ChannelBlockLayout` lists the nonzero blocks of the channel-connection matrix: block b links
input channels ``in_b`` to output channels ``out_b`` with a dense spatial filter. Blocks may be uniform
(a block mask and a block size, 1 to 64 and beyond), non-uniform (any list of channel sets, contiguous
or not, even overlapping), block-diagonal with a merged ShuffleNet channel shuffle, or the channel-random
"sparse random" pattern of seed 004. :class:`BlockSparseConv` runs the convolution for one layout and one
geometry (1-D/2-D/3-D, stride, asymmetric padding, dilation, edge bias) with the contract of the matmul:
``w_shape``, ``fprop``, ``bprop``, ``updat`` (plus ``updat_edge_bias``).

NumPy arrays run the float64-capable reference (:mod:`cusparseblocks.reference.conv`, a masked dense
convolution); CuPy arrays run ``kernels/conv.cu``:

- uniform layouts with block size 16, 32 or 64, fp16/bf16, NHWC: an implicit GEMM on tensor cores
  (``mma.sync`` m16n8k16, fp32 accumulation) over the nonzero blocks of each output block column. Two
  fprop kernels: ``conv_fprop_halo`` (b = 16/32: a 2-D output tile's input halo is loaded once per
  block and every tap reads it from shared memory) and ``conv_fprop_tc`` (one gathered tile per tap;
  b = 64, 1×1 filters, or when the halo does not fit); :data:`force_variant` overrides the choice.
  On sm_90 (``kernels/conv_gmma.cu``, sm_90a), b = 16/32 and an output without permutation:
  ``conv_fprop_wst``, the halo kernel's work on ``wgmma`` with specialized warps (a producer warpgroup
  claims runs and copies each stage's halo and weight slices with TMA; four consumer warpgroups multiply,
  A fragments by ldmatrix from the halo, B through matrix descriptors); the forward at b = 32 without edge
  bias (2-D, unit column stride): ``conv_fprop_wtp``, the transposed product D = Wᵀ·Xᵀ (A = the weight
  slices of a pair of output blocks, B = 128 output positions of the halo, both through descriptors);
  bprop with stride 1 runs the same kernels on the transposed layout; the weight update runs
  ``conv_updat_tc`` (rows split over CTAs, partials summed in a fixed order: deterministic);
- fp32 with uniform blocks of 8 to 64, NHWC: the same implicit GEMM with tiled FFMA (fprop, and bprop
  with stride 1);
- everything else (non-uniform blocks, other block sizes, NCHW, bprop with stride > 1, the fp32 weight
  update): direct kernels with per-channel connection lists, FFMA in fp32.

NHWC (channels last) is the fast activation layout. NCHW runs natively in the direct kernels (no
silent conversion); convert explicitly (``x.transpose(0, 2, 3, 1)`` + copy) to get the fast path.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

from . import _validate as V
from . import compiler
from . import ops as _ops
from ._array import backend_of, dtype_name, is_cupy
from .blocklayout import BlockLayout
from .reference import conv as ref
from .reference.matmul import compute_dtype

__all__ = ["ChannelBlockLayout", "BlockSparseConv", "self_check", "TC_BLOCK_SIZES", "FFMA_BLOCK_SIZES"]

_GPU_DTYPES = ("float16", "bfloat16", "float32")
_CPU_DTYPES = _GPU_DTYPES + ("float64",)
_CTYPE = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}
TC_BLOCK_SIZES = (16, 32, 64)
FFMA_BLOCK_SIZES = (8, 16, 32, 64)

# Launch parameters, one table for the family (a benchmark may call _launch_config with each entry).
_LAUNCH = {
    "direct": {"threads": 256, "max_blocks": 65536},
    "updat_direct": {"threads": 256},  # 8 warps, one (weight element, tap) per warp
    "tc": {"bm": 128, "threads": 128, "stages": 3},
    # fp32 fprop: 64 rows × B columns per CTA, FFMA from the same 3-stage ring
    "ffma": {"bm": 64, "threads": 128, "stages": 3},
    # fprop with the input halo of a 2-D output tile loaded once per (input block, filter depth)
    # tiles: (output positions, warps) per CTA, the height is positions / tile width; "default" is the
    # automatic choice (the smallest, 128, when the default is taller than the output); max_smem fits
    # sm_80's 163 KiB per block
    "halo": {
        "block_sizes": (16, 32),
        "tile_widths": (32, 16, 8),
        "tiles": ((128, 4), (256, 4), (256, 8), (512, 4), (512, 8)),
        "default": (256, 4),
        # a permuted (shuffled) output: the 128-position tile (H100, block-diagonal + shuffle, 256 channels,
        # batch 64: 0.119 ms against 0.139 for 256x4, whose scattered stores come in larger bursts)
        "default_permuted": (128, 4),
        "stages": 2,
        "max_smem": 160 * 1024,
        # grid = co-resident CTAs, each walking items with one stage stream (False: a CTA per item)
        "persistent": True,
        # a claim is a run of up to this many tiles of one output block (the length from _halo_run)
        "run_lengths": (1, 2, 4, 8),
        # the kernel's opts beside the run length: the weight-slice cache, the deferred claim, the paired
        # store of a permuted output, the stepped halo load, the unrolled 3 × 3 taps, the short epilogue
        # (kernels/conv.cu HALO_WCACHE, HALO_DEFER, HALO_PAIR, HALO_STEP, HALO_UNROLL, HALO_PLAIN)
        "weight_cache": True,
        "defer_claim": True,
        "pair_store": True,
        "step_load": True,
        "unroll_taps": True,
        "plain_epilogue": True,
    },
    # the halo kernel on wgmma (kernels/conv_gmma.cu, sm_90a: devices of compute capability 9.0): (output
    # positions, warps) tiles as "halo" (whole warpgroups), the same schedule options; shared memory: the halo
    # ring, the weight ring unpadded + 1024 bytes of alignment + the tap offsets. Not the default ("enabled"
    # False): on the H100 it measured 1.16-1.4x slower than the mma.sync halo kernel at batch 64 (its step
    # loop is latency-bound at 2 warps a scheduler behind the halo kernel's per-stage load and bookkeeping
    # code; bench/NOTES.md, seventeenth session); force_variant "gmma..." runs it
    "gmma": {
        "enabled": False,
        "arch": "sm_90",
        "block_sizes": (16, 32),
        "tiles": ((128, 4), (256, 4), (256, 8), (512, 8)),
        "default": (128, 4),
        "default_permuted": (128, 4),
    },
    # the warp-specialized wgmma kernel (kernels/conv.cu conv_fprop_ws, sm_90a): 8 consumer warps (two
    # warpgroups) + 4 producer warps, "stages" slots of halo + weight slices; tiles of 128 or 256 positions
    # The default on sm_90 for fp16/bf16 b = 16/32 outputs without a permutation (a shuffled output keeps the
    # halo kernel: its 128-position tile stores the scattered channels 1.5x faster): H100, batch 64,
    # bench/conv.py 1.27 / 1.2 / 1.17x the halo kernel at d = 0.5 / 0.25 / 0.125 (bench/NOTES.md, seventeenth
    # session).
    "ws": {
        "enabled": True,
        "block_sizes": (16, 32),
        "tiles": (128, 256),
        "default": 256,
        "stages": 4,
        "max_smem": 225 * 1024,
        # "wst": the same kernel fed by TMA (conv_fprop_wst: one producer thread, the halo a box of a 5-D map)
        "tma": True,
        # consumer warpgroups of the automatic choice at 256 positions (4: one m64 group each, "wst4")
        "warpgroups": 4,
    },
    # conv_fprop_wtp (sm_90a, forced "wtp[:ROWS]"): D = Wᵀ · Xᵀ, a group of 64 / B output blocks × a tile of
    # ROWS output rows × 16 columns, two consumer warpgroups of 8 columns; up to 4 slots (2 at least)
    # The automatic choice on sm_90 for B = 32 (2-D, unit column stride, outputs neither permuted nor with
    # edge bias, whose stores take the general path): 16 rows, 3 slots, the staged epilogue (H100, batch 64,
    # 2026-11-27: 0.100 / 0.062 / 0.045 ms at d = 0.5 / 0.25 / 0.125 against wst4's 0.111 / 0.070 / 0.049)
    "wtp": {
        "block_sizes": (16, 32),
        "rows": (16, 32),
        "default_rows": 16,
        "max_smem": 227 * 1024,
        "auto": True,
        "auto_block_sizes": (32,),
    },
    # update on tensor cores: 128-row tiles; the rows are split over CTAs until about target_ctas run
    "updat_tc": {"bk": 128, "threads": 128, "stages": 3, "target_ctas": 528, "reduce_threads": 256},
}
_FORMATS = {
    "NWC": (1, True),
    "NCW": (1, False),
    "NHWC": (2, True),
    "NCHW": (2, False),
    "NDHWC": (3, True),
    "NCDHW": (3, False),
    "channels_last": (None, True),
    "channels_first": (None, False),
}


# ---------------------------------------------------------------------------------------------------
# the layout


def _index_set(name: str, spec, limit: int | None) -> np.ndarray:
    """Channels of one side of a block: a (start, stop) tuple, a range, or a sequence of indices."""
    if isinstance(spec, range):
        idx = np.arange(spec.start, spec.stop, spec.step, dtype=np.int64)
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, (int, np.integer)) for v in spec):
        idx = np.arange(int(spec[0]), int(spec[1]), dtype=np.int64)
    else:
        arr = np.asarray(spec)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise TypeError(
                f"{name}: expected (start, stop), a range or a 1-D integer sequence, got {spec!r}"
            )
        idx = arr.astype(np.int64)
    if idx.size == 0:
        raise ValueError(f"{name}: expected at least one channel, got an empty set {spec!r}")
    if idx.min() < 0 or (limit is not None and idx.max() >= limit):
        raise ValueError(f"{name}: expected channels in [0, {limit}), got range [{idx.min()}, {idx.max()}]")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{name}: expected distinct channels, got repeats in {idx.tolist()}")
    idx.setflags(write=False)
    return idx


class ChannelBlockLayout:
    """The nonzero blocks of a convolution's channel-connection matrix.

    ``blocks[b] = (in_channels, out_channels)`` (int64 arrays); weight block b holds a dense filter
    [*filter, len(in), len(out)] linking them. ``w`` packs the blocks in this order. Construct with
    a list of blocks (each side ``(start, stop)``, a ``range`` or explicit channel indices), or with
    :meth:`from_mask`, :meth:`block_diagonal`, :meth:`channel_random`.

    ``uniform`` is the block size when every block is b×b on aligned input ranges and the output sets
    partition the output channels (then the tensor-core kernels apply); ``None`` otherwise. Cached: the
    connection lists and block-column tables the kernels use.
    """

    def __init__(self, blocks, in_channels: int | None = None, out_channels: int | None = None):
        blocks = list(blocks)
        if not blocks:
            raise ValueError("blocks: expected at least one (in_channels, out_channels) block, got none")
        parsed = []
        for b, blk in enumerate(blocks):
            if not isinstance(blk, (tuple, list)) or len(blk) != 2:
                raise TypeError(f"blocks[{b}]: expected a pair (in_channels, out_channels), got {blk!r}")
            parsed.append(
                (
                    _index_set(f"blocks[{b}][0]", blk[0], in_channels),
                    _index_set(f"blocks[{b}][1]", blk[1], out_channels),
                )
            )
        self.blocks = tuple(parsed)
        self.in_channels = (
            int(in_channels) if in_channels is not None else int(max(i.max() for i, _ in parsed)) + 1
        )
        self.out_channels = (
            int(out_channels) if out_channels is not None else int(max(o.max() for _, o in parsed)) + 1
        )
        sizes = np.array([i.size * o.size for i, o in parsed], dtype=np.int64)
        self.block_elements = _frozen(sizes)
        self.offsets = _frozen(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        self.nnz = len(parsed)
        self._detect_uniform()

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_mask(cls, mask, block_size: int, out_perm=None) -> ChannelBlockLayout:
        """Uniform blocks: ``mask`` [C/b, K/b]; block (i, j) links inputs i·b:(i+1)·b to outputs
        ``out_perm[j·b:(j+1)·b]`` (default: j·b:(j+1)·b). Blocks in row-major mask order."""
        lay = mask if isinstance(mask, BlockLayout) else BlockLayout(mask, "mask")
        b = _positive_int("block_size", block_size)
        K = lay.out_blocks * b
        perm = np.arange(K) if out_perm is None else np.asarray(out_perm, dtype=np.int64)
        if perm.shape != (K,) or not np.array_equal(np.sort(perm), np.arange(K)):
            raise ValueError(
                f"out_perm: expected a permutation of {K} output channels, got shape {perm.shape}"
            )
        blocks = [
            (range(int(r) * b, int(r + 1) * b), perm[int(c) * b : int(c + 1) * b])
            for r, c in zip(lay.rows, lay.cols)
        ]
        return cls(blocks, lay.in_blocks * b, K)

    @classmethod
    def block_diagonal(
        cls,
        in_channels: int,
        groups: int,
        out_channels: int | None = None,
        *,
        shuffle: bool = False,
        block_size: int | None = None,
    ) -> ChannelBlockLayout:
        """A grouped convolution (``groups`` groups), optionally followed by ShuffleNet's channel shuffle.

        With ``shuffle`` the output of group g's a-th channel lands at channel ``a·groups + g`` (reshape
        [groups, K/groups] → transpose → flatten), exactly ``conv2d(groups=g)`` then the shuffle.
        ``block_size`` splits each group into b×b blocks (the tensor-core path needs b in 16, 32, 64);
        default: one block per group.
        """
        C = _positive_int("in_channels", in_channels)
        K = C if out_channels is None else _positive_int("out_channels", out_channels)
        g = _positive_int("groups", groups)
        for name, v in (("in_channels", C), ("out_channels", K)):
            if v % g:
                raise ValueError(f"groups: expected a divisor of {name}={v}, got {g}")
        gc, gk = C // g, K // g
        pos = np.arange(K).reshape(g, gk)  # pos[g, a]: where output a of group g lands
        if shuffle:
            pos = np.arange(gk)[None, :] * g + np.arange(g)[:, None]
        if block_size is None:
            return cls([((gi * gc, (gi + 1) * gc), pos[gi]) for gi in range(g)], C, K)
        b = _positive_int("block_size", block_size)
        if gc % b or gk % b:
            raise ValueError(f"block_size: expected a divisor of the group sizes {gc} and {gk}, got {b}")
        blocks = [
            ((gi * gc + r * b, gi * gc + (r + 1) * b), pos[gi, s * b : (s + 1) * b])
            for gi in range(g)
            for r in range(gc // b)
            for s in range(gk // b)
        ]
        return cls(blocks, C, K)

    @classmethod
    def channel_random(
        cls,
        in_channels: int,
        out_channels: int | None = None,
        fraction: float = 0.25,
        *,
        block_size: int = 1,
        seed=None,
    ) -> ChannelBlockLayout:
        """Seed 004's sparse random connections: each output (block) connects to a random ``fraction``
        of the input (blocks); no dead input or output. Block size 1 is the paper's per-channel form."""
        from . import layouts

        b = _positive_int("block_size", block_size)
        C = _positive_int("in_channels", in_channels)
        K = C if out_channels is None else _positive_int("out_channels", out_channels)
        if C % b or K % b:
            raise ValueError(
                f"block_size: expected a divisor of in_channels={C} and out_channels={K}, got {b}"
            )
        return cls.from_mask(layouts.channel_random(C // b, K // b, fraction, seed=seed), b)

    # -- derived ------------------------------------------------------------------------------
    def _detect_uniform(self):
        """Uniform b×b blocks on aligned input ranges whose output sets partition the outputs."""
        self.uniform = None
        sizes = {(i.size, o.size) for i, o in self.blocks}
        if len(sizes) != 1:
            return
        b, bo = sizes.pop()
        if b != bo or self.in_channels % b or self.out_channels % b:
            return
        rows = np.empty(self.nnz, dtype=np.int32)
        for n, (i, _) in enumerate(self.blocks):
            if i[0] % b or not np.array_equal(i, np.arange(i[0], i[0] + b)):
                return
            rows[n] = i[0] // b
        outs = np.stack([o for _, o in self.blocks])
        keys, cols = np.unique(outs, axis=0, return_inverse=True)
        cols = cols.reshape(-1).astype(np.int32)
        # distinct output sets must be disjoint; uncovered outputs (dead columns) form empty virtual blocks
        if np.unique(keys).size != keys.size:
            return
        free = np.setdiff1d(np.arange(self.out_channels), keys.reshape(-1))
        if free.size:
            keys = np.concatenate([keys, free.reshape(-1, b)])
        order = np.argsort(keys.min(axis=1), kind="stable")  # virtual block j: the j-th set by first channel
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        cols = rank[cols].astype(np.int32)
        perm = keys[order].reshape(-1).astype(np.int32)
        if len({(int(r), int(c)) for r, c in zip(rows, cols)}) != self.nnz:
            return  # duplicate blocks sum; the block-column kernels assume one block per (i, j)
        self.uniform = b
        self.block_rows = _frozen(rows)
        self.block_cols = _frozen(cols)
        self.out_perm = None if np.array_equal(perm, np.arange(self.out_channels)) else _frozen(perm)
        mask = np.zeros((self.in_channels // b, self.out_channels // b), dtype=bool)
        mask[rows, cols] = True
        self.mask = _frozen(mask)

    @functools.cached_property
    def column_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(col_ptr, col_in, col_w) int32: for virtual output block j, its input blocks and w blocks."""
        order = np.argsort(self.block_cols, kind="stable").astype(np.int32)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(self.block_cols, minlength=self.mask.shape[1]))])
        return _frozen(ptr.astype(np.int32)), _frozen(self.block_rows[order].copy()), _frozen(order)

    @functools.cached_property
    def row_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row_ptr, row_out, row_w) int32: for input block i, its virtual output blocks and w blocks."""
        order = np.argsort(self.block_rows, kind="stable").astype(np.int32)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(self.block_rows, minlength=self.mask.shape[0]))])
        return _frozen(ptr.astype(np.int32)), _frozen(self.block_cols[order].copy()), _frozen(order)

    def connections(self, taps: int) -> dict[str, np.ndarray]:
        """Every (c, k) weight element: c, k (int32), off (int64, index of tap 0 in w), ts (int32 tap
        stride), plus CSR lists by output channel (fw_*) and by input channel (bw_*). Cached per taps."""
        cache = self.__dict__.setdefault("_connections", {})
        if taps not in cache:
            cache[taps] = self._build_connections(taps)
        return cache[taps]

    def _build_connections(self, taps: int) -> dict[str, np.ndarray]:
        cs, ks, offs, tss = [], [], [], []
        for b, (i, o) in enumerate(self.blocks):
            ci, ko = np.meshgrid(np.arange(i.size), np.arange(o.size), indexing="ij")
            cs.append(i[ci.ravel()])
            ks.append(o[ko.ravel()])
            offs.append(self.offsets[b] * taps + ci.ravel() * o.size + ko.ravel())
            tss.append(np.full(ci.size, i.size * o.size))
        c = np.concatenate(cs).astype(np.int32)
        k = np.concatenate(ks).astype(np.int32)
        off = np.concatenate(offs).astype(np.int64)
        ts = np.concatenate(tss).astype(np.int32)
        out = {"c": c, "k": k, "off": off, "ts": ts}
        for tag, key, other, n in (("fw", k, c, self.out_channels), ("bw", c, k, self.in_channels)):
            order = np.argsort(key, kind="stable")
            out[f"{tag}_ptr"] = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=n))]).astype(
                np.int32
            )
            out[f"{tag}_idx"] = other[order]
            out[f"{tag}_off"] = off[order]
            out[f"{tag}_ts"] = ts[order]
        for v in out.values():
            v.setflags(write=False)
        return out

    @property
    def density(self) -> float:
        return float(self.offsets[-1]) / (self.in_channels * self.out_channels)

    def connection_mask(self) -> np.ndarray:
        """[C, K] int: how many blocks link input c to output k (0 = no connection)."""
        m = np.zeros((self.in_channels, self.out_channels), dtype=np.int64)
        for i, o in self.blocks:
            m[np.ix_(i, o)] += 1
        return m

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, ChannelBlockLayout)
            and self.nnz == other.nnz
            and (self.in_channels, self.out_channels) == (other.in_channels, other.out_channels)
            and all(
                np.array_equal(a, c) and np.array_equal(b, d)
                for (a, b), (c, d) in zip(self.blocks, other.blocks)
            )
        )

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        kind = f"uniform b={self.uniform}" if self.uniform else "non-uniform"
        return (
            f"ChannelBlockLayout({self.in_channels}->{self.out_channels} channels, "
            f"{self.nnz} blocks, {kind}, "
            f"density={self.density:.3f})"
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _per_axis(name: str, value, dims: int, minimum: int) -> tuple[int, ...]:
    vals = (value,) * dims if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        vals = tuple(vals)
    except TypeError:
        raise TypeError(f"{name}: expected an int or {dims} ints, got {value!r}") from None
    if len(vals) != dims or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in vals):
        raise ValueError(f"{name}: expected an int or {dims} ints (one per spatial axis), got {value!r}")
    if any(v < minimum for v in vals):
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return tuple(int(v) for v in vals)


# ---------------------------------------------------------------------------------------------------
# the op


class BlockSparseConv:
    """Block-sparse convolution for one channel layout and one filter geometry.

    Args:
        layout: a :class:`ChannelBlockLayout`, or a bool-like block mask [C/b, K/b] with ``block_size``.
        filter_shape: spatial filter, 1 to 3 ints (the number of spatial axes): (S,), (R, S), (T, R, S).
        stride, dilation: an int or one per axis.
        padding: an int, one per axis, one (lo, hi) pair per axis (asymmetric), ``"valid"`` or
            ``"same"`` (TF's rule: output = ceil(input / stride), extra padding at the high end).
        input_spatial: the input's spatial size; required with ``edge_bias`` (the edge patterns depend
            on it), otherwise optional (then checked).
        edge_bias: learn a bias [E, K] for output positions whose window overlaps the padding.
        data_format: "channels_last" (default; NHWC, the fast one) or "channels_first" (NCHW); or by name
            "NWC"/"NCW", "NHWC"/"NCHW", "NDHWC"/"NCDHW" (checked against the filter's axes).

    Shapes: x [N, *in, C] (NHWC) or [N, C, *in]; y [N, *out, K] or [N, K, *out]; ``w`` is ``w_shape``:
    uniform layouts ``(nnz, *filter, b, b)``, others a flat array packing block b as
    [*filter, len(in_b), len(out_b)] at ``offsets[b]·taps``. dtypes float16|bfloat16|float32 (float64
    on NumPy). Cached: geometry per input size, connection lists, device tables per GPU.
    """

    def __init__(
        self,
        layout,
        filter_shape,
        *,
        block_size: int | None = None,
        stride=1,
        padding=0,
        dilation=1,
        input_spatial=None,
        edge_bias: bool = False,
        data_format: str = "channels_last",
    ):
        if not isinstance(layout, ChannelBlockLayout):
            if block_size is None:
                raise ValueError("block_size: expected a block size with a mask layout, got None")
            layout = ChannelBlockLayout.from_mask(layout, block_size)
        elif block_size is not None and layout.uniform != block_size:
            raise ValueError(
                f"block_size: expected None or {layout.uniform} (the layout's), got {block_size}"
            )
        self.layout = layout
        fs = (filter_shape,) if isinstance(filter_shape, (int, np.integer)) else tuple(filter_shape)
        if not 1 <= len(fs) <= 3:
            raise ValueError(f"filter_shape: expected 1 to 3 spatial sizes, got {filter_shape!r}")
        self.dims = len(fs)
        self.filter_shape = _per_axis("filter_shape", fs, self.dims, 1)
        self.taps = int(np.prod(self.filter_shape))
        self.stride = _per_axis("stride", stride, self.dims, 1)
        self.dilation = _per_axis("dilation", dilation, self.dims, 1)
        self.padding = self._parse_padding(padding)
        if data_format not in _FORMATS:
            raise ValueError(f"data_format: expected one of {tuple(_FORMATS)}, got {data_format!r}")
        fdims, self.channels_last = _FORMATS[data_format]
        if fdims is not None and fdims != self.dims:
            raise ValueError(f"data_format: {data_format!r} has {fdims} spatial axes, the filter {self.dims}")
        self.data_format = data_format
        self.input_spatial = (
            None if input_spatial is None else _per_axis("input_spatial", input_spatial, self.dims, 1)
        )
        self.edge_bias = bool(edge_bias)
        if self.edge_bias and self.input_spatial is None:
            raise ValueError("input_spatial: expected the input's spatial size with edge_bias=True, got None")
        self.C, self.K = layout.in_channels, layout.out_channels
        b = layout.uniform
        self.w_shape = (layout.nnz, *self.filter_shape, b, b) if b else (int(layout.offsets[-1]) * self.taps,)
        if self.input_spatial is not None:
            geom = self.geometry(self.input_spatial)
            self.edge_bias_shape = (ref.edge_bias_map(geom)[1], self.K) if self.edge_bias else None
        else:
            self.edge_bias_shape = None
        self._device_tables: dict = {}

    def __repr__(self) -> str:
        return (
            f"BlockSparseConv({self.layout!r}, filter={self.filter_shape}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, {self.data_format}, "
            f"edge_bias={self.edge_bias})"
        )

    def _parse_padding(self, padding):
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same"):
                raise ValueError(f"padding: expected an int, pairs, 'valid' or 'same', got {padding!r}")
            return padding.lower()
        if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
            if padding < 0:
                raise ValueError(f"padding: expected values >= 0, got {padding}")
            return tuple((int(padding), int(padding)) for _ in range(self.dims))
        try:
            items = list(padding)
        except TypeError:
            raise TypeError(f"padding: expected an int, pairs, 'valid' or 'same', got {padding!r}") from None
        if len(items) != self.dims:
            raise ValueError(f"padding: expected {self.dims} entries (one per spatial axis), got {padding!r}")
        out = []
        for v in items:
            pair = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
            if len(pair) != 2 or any(
                isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in pair
            ):
                raise ValueError(f"padding: expected non-negative ints or (lo, hi) pairs, got {padding!r}")
            out.append((int(pair[0]), int(pair[1])))
        return tuple(out)

    def geometry(self, input_spatial: tuple[int, ...]) -> ref.ConvGeometry:
        """The :class:`~cusparseblocks.reference.conv.ConvGeometry` for an input spatial size (cached)."""
        input_spatial = tuple(int(v) for v in input_spatial)
        cache = self.__dict__.setdefault("_geometries", {})
        if input_spatial not in cache:
            cache[input_spatial] = self._build_geometry(input_spatial)
        return cache[input_spatial]

    def _build_geometry(self, input_spatial: tuple[int, ...]) -> ref.ConvGeometry:
        if self.padding == "valid":
            pads = tuple((0, 0) for _ in range(self.dims))
        elif self.padding == "same":
            pads = []
            for h, f, s, d in zip(input_spatial, self.filter_shape, self.stride, self.dilation):
                total = max((-(-h // s) - 1) * s + d * (f - 1) + 1 - h, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            pads = self.padding
        geom = ref.ConvGeometry(
            tuple(input_spatial),
            self.filter_shape,
            self.stride,
            tuple(p[0] for p in pads),
            tuple(p[1] for p in pads),
            self.dilation,
        )
        if any(p < 1 for p in geom.output_spatial):
            raise ValueError(
                f"x: spatial size {tuple(input_spatial)} is too small for filter {self.filter_shape} "
                f"with dilation {self.dilation} and padding {pads} (output {geom.output_spatial})"
            )
        return geom

    def output_shape(self, x_shape) -> tuple[int, ...]:
        n, spatial = x_shape[0], self._spatial_of(x_shape)
        out = self.geometry(tuple(spatial)).output_spatial
        return (n, *out, self.K) if self.channels_last else (n, self.K, *out)

    def _spatial_of(self, shape):
        return tuple(shape[1:-1]) if self.channels_last else tuple(shape[2:])

    # ---------------------------------------------------------------------------------------------
    # validation
    def _check_act(self, name, arr, channels, backend, detail):
        V.check_float(name, arr, _GPU_DTYPES if backend == "cupy" else _CPU_DTYPES)
        V.check_ndim(name, arr, self.dims + 2)
        V.check_dim(name, arr, -1 if self.channels_last else 1, channels, detail)
        if arr.shape[0] == 0:
            raise ValueError(f"{name}: expected a positive batch size on axis 0, got 0")
        V.check_contiguous(name, arr)
        if backend == "cupy":
            import cupy

            V.check_device(name, arr, cupy.cuda.runtime.getDevice())

    def _check_w(self, w, xname, x, backend):
        V.check_shape("w", w, self.w_shape, f"layout {self.layout.nnz} blocks, filter {self.filter_shape}")
        V.check_same_dtype(**{xname: x, "w": w})
        V.check_contiguous("w", w)
        if backend == "cupy":
            import cupy

            V.check_device("w", w, cupy.cuda.runtime.getDevice())

    def _check_input_spatial(self, name, spatial):
        if self.input_spatial is not None and tuple(spatial) != self.input_spatial:
            raise ValueError(
                f"{name}: expected spatial size {self.input_spatial} (input_spatial), got {tuple(spatial)}"
            )

    def _check_edge_bias(self, edge_bias, x, backend):
        if edge_bias is None:
            if self.edge_bias:
                raise ValueError(
                    f"edge_bias: expected an array of shape {self.edge_bias_shape} (edge_bias=True), got None"
                )
            return
        if not self.edge_bias:
            raise ValueError("edge_bias: this op was built with edge_bias=False, got an array")
        V.check_shape("edge_bias", edge_bias, self.edge_bias_shape, "E edge patterns × K")
        V.check_same_dtype(x=x, edge_bias=edge_bias)
        V.check_contiguous("edge_bias", edge_bias)

    def _in_detail(self):
        return f"in_channels of the layout, {'channels last' if self.channels_last else 'channels first'}"

    def _out_detail(self):
        return f"out_channels of the layout, {'channels last' if self.channels_last else 'channels first'}"

    # ---------------------------------------------------------------------------------------------
    # the contract
    def fprop(self, x, w, edge_bias=None, *, out=None):
        """y = conv(x, W) (+ edge bias). x: [N, *in, C] or [N, C, *in]; returns y [N, *out, K] or
        [N, K, *out] in x's dtype. ``out``: an array of that shape and dtype to write into."""
        backend = backend_of(x=x, w=w, edge_bias=edge_bias, out=out)
        self._check_act("x", x, self.C, backend, self._in_detail())
        self._check_w(w, "x", x, backend)
        spatial = self._spatial_of(x.shape)
        self._check_input_spatial("x", spatial)
        self._check_edge_bias(edge_bias, x, backend)
        geom = self.geometry(spatial)
        shape = self.output_shape(x.shape)
        V.check_out("out", out, shape, x.dtype, backend == "cupy")
        if backend == "cupy":
            return _gpu_fprop(self, geom, x, w, edge_bias, out, shape)
        xc = x if self.channels_last else np.moveaxis(x, 1, -1)
        y = ref.conv_fprop(geom, xc, self.dense(w).astype(compute_dtype(x.dtype)))
        if edge_bias is not None:
            y = ref.edge_bias_fprop(geom, y, edge_bias)
        return _finish(y if self.channels_last else np.moveaxis(y, -1, 1), out, x.dtype)

    __call__ = fprop

    def bprop(self, dy, w, *, out=None, input_spatial=None):
        """dx = the gradient of fprop w.r.t. x. dy: [N, *out, K] or [N, K, *out]; returns dx shaped like
        x. The input size is ``input_spatial`` (default: the op's, else the smallest input giving
        dy's size with stride 1, which is exact; pass it for stride > 1)."""
        backend = backend_of(dy=dy, w=w, out=out)
        self._check_act("dy", dy, self.K, backend, self._out_detail())
        self._check_w(w, "dy", dy, backend)
        geom = self._geometry_for_output("dy", self._spatial_of(dy.shape), input_spatial)
        n = dy.shape[0]
        shape = (n, *geom.input_spatial, self.C) if self.channels_last else (n, self.C, *geom.input_spatial)
        V.check_out("out", out, shape, dy.dtype, backend == "cupy")
        if backend == "cupy":
            return _gpu_bprop(self, geom, dy, w, out, shape)
        dyc = dy if self.channels_last else np.moveaxis(dy, 1, -1)
        dx = ref.conv_bprop(geom, dyc, self.dense(w).astype(compute_dtype(dy.dtype)))
        return _finish(dx if self.channels_last else np.moveaxis(dx, -1, 1), out, dy.dtype)

    def updat(self, x, dy, *, out=None, out_dtype=None):
        """dw = the gradient w.r.t. the nonzero weight blocks only, ``w_shape``, in x's dtype (or
        ``out_dtype`` float32). x: as fprop's input; dy: as fprop's output."""
        backend = backend_of(x=x, dy=dy, out=out)
        self._check_act("x", x, self.C, backend, self._in_detail())
        self._check_act("dy", dy, self.K, backend, self._out_detail())
        V.check_same_dtype(x=x, dy=dy)
        spatial = self._spatial_of(x.shape)
        self._check_input_spatial("x", spatial)
        geom = self.geometry(spatial)
        expect = self.output_shape(x.shape)
        V.check_shape("dy", dy, expect, "fprop's output shape for x")
        odt = _out_dtype(x.dtype, out_dtype if out is None else (out_dtype or out.dtype))
        V.check_out("out", out, self.w_shape, odt, backend == "cupy")
        if backend == "cupy":
            return _gpu_updat(self, geom, x, dy, out, odt)
        xc = x if self.channels_last else np.moveaxis(x, 1, -1)
        dyc = dy if self.channels_last else np.moveaxis(dy, 1, -1)
        dW = ref.conv_updat(geom, xc, dyc)
        return _finish(self.from_dense(dW), out, odt)

    def updat_edge_bias(self, dy, *, out=None, out_dtype=None):
        """d edge_bias [E, K] = Σ over the batch and each pattern's positions of dy."""
        if not self.edge_bias:
            raise ValueError(
                "edge_bias: this op was built with edge_bias=False; it has no edge-bias gradient"
            )
        backend = backend_of(dy=dy, out=out)
        self._check_act("dy", dy, self.K, backend, self._out_detail())
        geom = self.geometry(self.input_spatial)
        V.check_shape(
            "dy", dy, self.output_shape((dy.shape[0], *self._fake_x_shape())), "fprop's output shape"
        )
        odt = _out_dtype(dy.dtype, out_dtype if out is None else (out_dtype or out.dtype))
        V.check_out("out", out, self.edge_bias_shape, odt, backend == "cupy")
        if backend == "cupy":
            return _gpu_updat_edge_bias(self, geom, dy, out, odt)
        dyc = dy if self.channels_last else np.moveaxis(dy, 1, -1)
        return _finish(ref.edge_bias_updat(geom, dyc), out, odt)

    def _fake_x_shape(self):
        return (*self.input_spatial, self.C) if self.channels_last else (self.C, *self.input_spatial)

    def _geometry_for_output(self, name, out_spatial, input_spatial):
        if input_spatial is None:
            input_spatial = self.input_spatial
        if input_spatial is None:
            pads = self.padding
            if pads == "valid":
                pads = tuple((0, 0) for _ in range(self.dims))
            elif pads == "same" and all(s == 1 for s in self.stride):
                pads = None
                input_spatial = tuple(out_spatial)
            if pads == "same" or any(s != 1 for s in self.stride):
                raise ValueError(
                    f"input_spatial: needed to invert {name}'s size with stride {self.stride} "
                    f"or padding {self.padding!r}; pass bprop(..., input_spatial=...)"
                )
            if input_spatial is None:
                input_spatial = tuple(
                    p - lo - hi + d * (f - 1)
                    for p, (lo, hi), d, f in zip(out_spatial, pads, self.dilation, self.filter_shape)
                )
        input_spatial = _per_axis("input_spatial", input_spatial, self.dims, 1)
        geom = self.geometry(input_spatial)
        if geom.output_spatial != tuple(out_spatial):
            raise ValueError(
                f"{name}: expected spatial size {geom.output_spatial} (output of input "
                f"{input_spatial}), got {tuple(out_spatial)}"
            )
        return geom

    # ---------------------------------------------------------------------------------------------
    # conversions and initialisers
    def dense(self, w):
        """The dense weight [K, C, *filter] (PyTorch's OIHW) of w's type; zeros outside the blocks,
        overlapping blocks summed."""
        V.check_shape("w", w, self.w_shape)
        xp = _xp(w)
        flat = w.reshape(-1)
        conn = self.layout.connections(self.taps)
        taps = xp.arange(self.taps)
        vals = flat[
            xp.asarray(conn["off"])[:, None] + xp.asarray(conn["ts"]).astype(np.int64)[:, None] * taps
        ]
        acc = np.float64 if np.dtype(w.dtype) == np.float64 else np.float32
        W = xp.zeros((self.K, self.C, self.taps), dtype=acc)
        k, c = xp.asarray(conn["k"]), xp.asarray(conn["c"])
        if xp is np:
            np.add.at(W, (k, c), vals.astype(acc))
        else:
            import cupyx

            cupyx.scatter_add(W, (k, c), vals.astype(acc))
        return W.astype(w.dtype).reshape(self.K, self.C, *self.filter_shape)

    def from_dense(self, W):
        """The blocks of a dense [K, C, *filter] weight as ``w`` (each block reads its own entries)."""
        V.check_shape("W", W, (self.K, self.C, *self.filter_shape), "[K, C, *filter]")
        xp = _xp(W)
        conn = self.layout.connections(self.taps)
        W3 = W.reshape(self.K, self.C, self.taps)
        vals = W3[xp.asarray(conn["k"]), xp.asarray(conn["c"])]  # [elements, taps]
        out = xp.zeros(int(self.layout.offsets[-1]) * self.taps, dtype=W.dtype)
        idx = xp.asarray(conn["off"])[:, None] + xp.asarray(conn["ts"]).astype(np.int64)[:, None] * xp.arange(
            self.taps
        )
        out[idx] = vals
        return out.reshape(self.w_shape)

    def fan_in(self) -> np.ndarray:
        """Inputs feeding each output channel, [K] (connections × taps)."""
        conn = self.layout.connections(self.taps)
        return np.bincount(conn["k"], minlength=self.K) * self.taps

    def init_normal(self, seed=None, scale: float = 1.0, dtype=np.float32, xp=np):
        """w ~ N(0, scale²/fan_in), fan_in of each output channel over its connections."""
        rng = np.random.default_rng(seed)
        conn = self.layout.connections(self.taps)
        fan = np.maximum(self.fan_in(), 1)[conn["k"]]
        flat = np.zeros(int(self.layout.offsets[-1]) * self.taps)
        idx = conn["off"][:, None] + conn["ts"].astype(np.int64)[:, None] * np.arange(self.taps)
        flat[idx] = rng.standard_normal(idx.shape) * (scale / np.sqrt(fan))[:, None]
        return xp.asarray(flat.reshape(self.w_shape).astype(dtype))

    # ---------------------------------------------------------------------------------------------
    def gpu_kernel(self, dtype, op: str = "fprop") -> str:
        """Which kind of GPU kernel runs ``op`` ("fprop", "bprop" or "updat") for ``dtype``:
        "tensor_cores" (uniform blocks of 16/32/64, fp16/bf16, channels last), "ffma_tiled" (fp32
        fprop/bprop, uniform blocks of 8 to 64, channels last) or "direct" (everything else; bprop with
        stride > 1 always)."""
        if op not in ("fprop", "bprop", "updat"):
            raise ValueError(f"op: expected 'fprop', 'bprop' or 'updat', got {op!r}")
        b, name = self.layout.uniform, dtype_name(dtype)
        if not self.channels_last or (op == "bprop" and any(s != 1 for s in self.stride)):
            return "direct"
        if b in TC_BLOCK_SIZES and name in ("float16", "bfloat16"):
            return "tensor_cores"
        if b in FFMA_BLOCK_SIZES and name == "float32" and op != "updat":
            return "ffma_tiled"
        return "direct"

    def uses_tensor_cores(self, dtype, op: str = "fprop") -> bool:
        """Whether the GPU ``op`` ("fprop", "bprop" or "updat") runs a tensor-core kernel for ``dtype``."""
        return self.gpu_kernel(dtype, op) == "tensor_cores"


def _out_dtype(dtype, out_dtype):
    if out_dtype is None:
        return np.dtype(dtype)
    if np.dtype(out_dtype) not in (np.dtype(dtype), np.dtype(np.float32)):
        raise TypeError(
            f"out_dtype: expected None, {dtype_name(dtype)} or float32, got {np.dtype(out_dtype)}"
        )
    return np.dtype(out_dtype)


def _finish(result, out, odt):
    if out is None:
        return np.ascontiguousarray(result.astype(odt, copy=False))
    out[...] = result.astype(odt)
    return out


def _xp(a):
    if is_cupy(a):
        import cupy

        return cupy
    return np


# ---------------------------------------------------------------------------------------------------
# GPU dispatch (CuPy arrays)


def _specs() -> Iterable[compiler.KernelSpec]:
    S = compiler.KernelSpec
    for t in _CTYPE.values():
        yield S("conv.cu", f"conv_fprop_direct<{t}>")
        yield S("conv.cu", f"conv_bprop_direct<{t}>")
        for o in dict.fromkeys((t, "float")):
            yield S("conv.cu", f"conv_updat_direct<{t}, {o}>")
            yield S("conv.cu", f"edge_bias_updat<{t}, {o}>")
    for t in ("__half", "__nv_bfloat16"):
        for b in TC_BLOCK_SIZES:
            yield S("conv.cu", f"conv_fprop_tc<{t}, {b}>")
            yield S("conv.cu", f"conv_updat_tc<{t}, {b}>")
        for b in _LAUNCH["halo"]["block_sizes"]:
            for tw in _LAUNCH["halo"]["tile_widths"]:
                for pixels, warps in _LAUNCH["halo"]["tiles"]:
                    for flip in (False, True):
                        yield _halo_spec(t, b, tw, pixels // tw, warps, flip)
        # the sm_90a kernels (one NVRTC program, ~5 s a specialization): the default conv_fprop_wst at the
        # widest and narrowest tile (256 positions with 4 consumer warpgroups, 128 with 2: the automatic
        # choices); the variants (wgmma halo kernel, cp.async producers) at one tile width, each step loop
        # once. Any other specialization compiles when a call first needs it.
        for b in _LAUNCH["ws"]["block_sizes"]:
            for flip in (False, True):
                for tw in (32, 8):
                    yield _ws_spec(t, b, tw, 256 // tw, flip, True, 4)
                    yield _ws_spec(t, b, tw, 128 // tw, flip, True)
                yield _ws_spec(t, b, 8, 32, flip, False)
                yield _ws_spec(t, b, 8, 16, flip, False)
                yield _gmma_spec(t, b, 8, 16, 4, flip)  # 128x4: the steps loaded ahead
                yield _gmma_spec(t, b, 8, 32, 4, flip)  # 256x4: the first step loop
                yield _ws_spec(t, b, 8, 32, flip, True, 4, ss=True)  # A from shared memory (wss)
        for rows in _LAUNCH["wtp"]["rows"]:
            yield _wtp_spec(t, 32, rows)  # the transposed output-block pairs (wtp)
    for o in _CTYPE.values():
        yield S("conv.cu", f"conv_updat_reduce<{o}>")
    for b in FFMA_BLOCK_SIZES:
        yield S("conv.cu", f"conv_fprop_ffma<{b}>")


compiler.register_family("conv", _specs)


def _tc_smem(b: int) -> int:
    cfg = _LAUNCH["tc"]
    return cfg["stages"] * (cfg["bm"] + b) * (b + 8) * 2


def _dev(conv: BlockSparseConv, key, build):
    import cupy

    dkey = (cupy.cuda.runtime.getDevice(), key)
    val = conv._device_tables.get(dkey)
    if val is None:
        val = build(cupy)
        conv._device_tables[dkey] = val
    return val


def _geo_array(conv, geom: ref.ConvGeometry, n: int, C: int, K: int, in_spatial, out_spatial, stride, pad_lo):
    pad3 = lambda t, v: (v,) * (3 - len(t)) + tuple(t)  # noqa: E731 - leading unit axes
    geo = [
        n,
        C,
        K,
        *pad3(in_spatial, 1),
        *pad3(out_spatial, 1),
        *pad3(geom.filter_shape, 1),
        *pad3(stride, 1),
        *pad3(pad_lo, 0),
        *pad3(geom.dilation, 1),
        int(conv.channels_last),
    ]
    return np.asarray(geo, dtype=np.int32)


def _forward_geo(conv, geom: ref.ConvGeometry, n: int) -> np.ndarray:
    """The geometry array of the forward convolution (x → y) for batch n."""
    return _geo_array(
        conv, geom, n, conv.C, conv.K, geom.input_spatial, geom.output_spatial, geom.stride, geom.pad_lo
    )


_GEO_CACHE: dict = {}


def _upload_geo(geo):
    """The geometry array on the current device, uploaded once per distinct geometry: a host→device copy
    from pageable memory on every call would make the host wait for the stream before each launch."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), geo.tobytes())
    arr = _GEO_CACHE.get(key)
    if arr is None:
        if len(_GEO_CACHE) >= 4096:
            _GEO_CACHE.clear()
        arr = _GEO_CACHE[key] = cupy.asarray(geo)
    return arr


def _grid_1d(total: int, threads: int) -> int:
    return int(max(1, min(-(-total // threads), _LAUNCH["direct"]["max_blocks"])))


def _null():
    return np.uint64(0)


def _launch(spec, grid, block, args, smem=0):
    import cupy

    fn = compiler.get_function(spec, smem)
    fn(grid, block, args, shared_mem=smem, stream=cupy.cuda.get_current_stream())


def _edge_tables(conv, geom):
    def build(cp):
        emap, e = ref.edge_bias_map(geom)
        flat = emap.reshape(-1)
        order = np.argsort(flat, kind="stable")
        order = order[flat[order] >= 0].astype(np.int32)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(flat[flat >= 0], minlength=e))]).astype(np.int32)
        return cp.asarray(flat.astype(np.int32)), cp.asarray(ptr), cp.asarray(order), e

    return _dev(conv, ("edge", geom), build)


def _conn_tables(conv):
    def build(cp):
        return {k: cp.asarray(v) for k, v in conv.layout.connections(conv.taps).items()}

    return _dev(conv, ("conn",), build)


def _gpu_fprop(conv, geom, x, w, edge_bias, out, shape):
    import cupy

    y = out if out is not None else cupy.empty(shape, dtype=x.dtype)
    n = x.shape[0]
    has_eb = edge_bias is not None
    # the launch (kernel, grid, tables, geometry on the device) once per batch size, dtype and variant:
    # a call then costs one dict lookup on top of validation
    key = ("fprop_plan", geom, n, np.dtype(x.dtype).str, force_variant, has_eb)
    spec, grid, block, smem, pre, post = _dev(
        conv, key, lambda cp: _fprop_plan(conv, geom, n, x.dtype, has_eb)
    )
    # the halo kernel's work counters are per stream: not part of the cached plan (its opts are, in post)
    sched = (_halo_sched(),) if "halo" in spec.name or "_ws" in spec.name or "_wtp" in spec.name else ()
    if "_wtp" in spec.name:
        ptr = y.ctypes.data if isinstance(y, np.ndarray) else y.data.ptr  # (the tests' NumPy-backed CuPy)
        if ptr % 16:
            raise ValueError(
                f"out: conv_fprop_wtp stores 16-byte vectors; this array starts {ptr % 16} bytes past a "
                "16-byte boundary (pass an aligned array)"
            )
    geo = _dev(conv, ("geo", geom, n), lambda cp: _forward_geo(conv, geom, n))  # (not rebuilt per launch)
    xin, win = _kernel_inputs(spec, x, w, lambda: geo)
    _launch(
        spec,
        grid,
        block,
        (xin, win, y, *pre, edge_bias if has_eb else _null(), *post[:2], *sched, *post[2:]),
        smem,
    )
    return y


def _kernel_inputs(spec, x, w, geo_fn, names=("x", "w")):
    """The kernel's first two arguments: x and w, or conv_fprop_wst's tensor maps of them (``geo_fn()``: the
    launch's geometry array). The tiled kernels copy 16 bytes at a time: an array that does not start on a
    16-byte boundary (a view at an odd offset) raises a ValueError naming it."""
    if spec.name.startswith(("conv_fprop_halo", "conv_fprop_w", "conv_fprop_tc", "conv_fprop_ffma")):
        for name, a in zip(names, (x, w)):
            ptr = a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr  # (the tests' NumPy-backed CuPy)
            if ptr % 16:
                raise ValueError(
                    f"{name}: the tiled conv kernels read 16-byte aligned memory; this array starts "
                    f"{ptr % 16} bytes past a 16-byte boundary (pass a copy)"
                )
    if "_wss<" in spec.name:
        _, b, th = spec.name[spec.name.index("<") + 1 : -1].split(", ")[:3]
        return _ws_maps(x, w, geo_fn(), int(b), 8, int(th), "chunks")
    if "_wtp<" in spec.name:  # two warpgroups of 8 columns side by side; the halo's positions swizzled rows
        b, rows = (int(v) for v in spec.name[spec.name.index("<") + 1 : -1].split(", ")[1:3])
        return _ws_maps(x, w, geo_fn(), b, 16, rows, "rows")
    if "_wst<" not in spec.name:
        return x, w
    _, b, tw, th = spec.name[spec.name.index("<") + 1 : -1].split(", ")[:4]
    return _ws_maps(x, w, geo_fn(), int(b), int(tw), int(th))


def _fprop_plan(conv, geom, n: int, dtype, has_eb: bool):
    """(spec, grid, block, shared bytes, tables before the edge bias, tables after it) for fprop."""
    dt = dtype_name(dtype)
    geo_host = _forward_geo(conv, geom, n)
    post = (_edge_tables(conv, geom)[0] if has_eb else _null(), _upload_geo(geo_host))
    if conv.gpu_kernel(dtype, "fprop") != "direct":
        lay = conv.layout

        def build(cp):
            ptr, cin, cw = lay.column_tables
            perm = cp.asarray(lay.out_perm) if lay.out_perm is not None else None
            return cp.asarray(ptr), cp.asarray(cin), cp.asarray(cw), perm

        ptr, cin, cw, perm = _dev(conv, ("cols",), build)
        spec, grid, block, smem, _, opts = _tc_plan(
            geo_host,
            lay.mask.shape[1],
            lay.uniform,
            dt,
            False,
            lay.column_tables[0],
            lay.out_perm is not None,
            groups=lambda G: _wtp_groups(lay, G),
            edge_bias=has_eb,
        )
        post = post + ((np.int32(opts),) if opts is not None else ())
        if "_wtp" in spec.name:
            G = 64 // lay.uniform
            gp, gi, gw, go = _dev(conv, ("wtp", G), lambda cp: tuple(map(cp.asarray, _wtp_groups(lay, G))))
            pre = (gp, gi, gw, go, perm if perm is not None else _null())
            return spec, grid, block, smem, pre, post + (np.int32(lay.nnz),)
        return spec, grid, block, smem, (ptr, cin, cw, perm if perm is not None else _null()), post
    conn = _conn_tables(conv)
    threads = _LAUNCH["direct"]["threads"]
    spec = compiler.KernelSpec("conv.cu", f"conv_fprop_direct<{_CTYPE[dt]}>")
    total = n * int(np.prod(geom.output_spatial)) * conv.K
    pre = (conn["fw_ptr"], conn["fw_idx"], conn["fw_off"], conn["fw_ts"])
    return spec, (_grid_1d(total, threads),), (threads,), 0, pre, post


# indices into the geometry array (enum G_* in kernels/conv.cu)
_G = {k: i for i, k in enumerate("N C K D H W OD OH OW FT FR FS SD SH SW PD PH PW DD DH DW CL".split())}

# None (automatic), "tap", "halo" (automatic tile), "halo:PIXELSxWARPS" (e.g. "halo:512x4"), or "gmma" /
# "gmma:PIXELSxWARPS" (the halo kernel on wgmma, sm_90a; the automatic choice there; e.g. "gmma:256x8"), with
# ":full" appended for a CTA per item instead of the persistent grid (the first kernel's schedule), ":v1"
# for the persistent grid of single-item claims without the weight cache, deferred claim or paired store
# (the second), ":runN" for runs of N tiles, ":roll" the automatic schedule without the unrolled 3 × 3
# taps: which tensor-core fprop kernel runs (fprop and stride-1
# bprop) and how; the benchmark times each
force_variant: str | None = None  # as _matmul_gpu.force_variant


def _halo_spec(ctype: str, b: int, tw: int, th: int, warps: int, flip: bool) -> compiler.KernelSpec:
    """conv_fprop_halo's spec; the 128-position, 4-warp forward tile keeps the short name (the
    template's defaults), as the host emulator's kernel table names it."""
    if th * tw == _LAUNCH["tc"]["bm"] and warps == 4 and not flip:
        return compiler.KernelSpec("conv.cu", f"conv_fprop_halo<{ctype}, {b}, {tw}>")
    f = "true" if flip else "false"
    return compiler.KernelSpec("conv.cu", f"conv_fprop_halo<{ctype}, {b}, {tw}, {th}, {warps}, {f}>")


def _gmma_spec(ctype: str, b: int, tw: int, th: int, warps: int, flip: bool) -> compiler.KernelSpec:
    """conv_fprop_halo on wgmma (kernels/conv_gmma.cu, sm_90a)."""
    f = "true" if flip else "false"
    name = f"conv_fprop_halo<{ctype}, {b}, {tw}, {th}, {warps}, {f}, true>"
    return compiler.KernelSpec("conv_gmma.cu", name)


def _ws_spec(
    ctype: str, b: int, tw: int, th: int, flip: bool, tm: bool = False, nwg: int = 2, ss: bool = False
) -> compiler.KernelSpec:
    """conv_fprop_ws, or conv_fprop_wst (``tm``: fed by TMA) with ``nwg`` consumer warpgroups, or
    conv_fprop_wss (``ss``: A from shared memory too; 8 columns) (kernels/conv_gmma.cu, sm_90a)."""
    f = "true" if flip else "false"
    if ss:
        return compiler.KernelSpec("conv_gmma.cu", f"conv_fprop_wss<{ctype}, {b}, {th}, {f}, {nwg}>")
    tail = f", {nwg}" if nwg != 2 else ""
    name = f"conv_fprop_ws{'t' if tm else ''}<{ctype}, {b}, {tw}, {th}, {f}{tail}>"
    return compiler.KernelSpec("conv_gmma.cu", name)


def _wtp_spec(ctype: str, b: int, rows: int, tm: bool = True) -> compiler.KernelSpec:
    """conv_fprop_wtp (fed by TMA) or conv_fprop_wtpc (by cp.async): ``rows`` output rows × 16 columns a
    tile."""
    return compiler.KernelSpec("conv_gmma.cu", f"conv_fprop_wtp{'' if tm else 'c'}<{ctype}, {b}, {rows}>")


def _wtp_smem(g: dict, b: int, rows: int, slots: int) -> int:
    """Shared bytes of conv_fprop_wtp: 1024 to align, the slots (the group's weight slices, the halo a
    position a row; each 1024-aligned), the slots' items, two claim words and the slots' mbarriers (without
    the staged epilogue's buffer)."""
    hr = (rows - 1) * g["SH"] + (g["FR"] - 1) * g["DH"] + 1
    hc = 16 + (g["FS"] - 1) * g["DW"]
    up = lambda v: -(-v // 1024) * 1024  # noqa: E731
    slot = up(g["FR"] * g["FS"] * 64 * b * 2) + up(hr * hc * b * 2)
    return 1024 + slots * slot + 16 * slots + 8 + 8 * slots


def _wtp_variant(g: dict, b: int, fv: str, schedule, fit_only: bool = False):
    """("wtp" or "wtpc", (rows, slots, shared bytes, schedule, staged epilogue)) for force_variant
    "wtp[c][:ROWS][:schedule]" (``fit_only``: (None, None) instead of the error when no slots fit)."""
    cfg = _LAUNCH["wtp"]
    if not _gmma_device():
        raise ValueError(f"force_variant: {force_variant!r} (wgmma) needs a device of compute capability 9.0")
    if g["SW"] != 1 or g["D"] != 1 or g["OD"] != 1 or g["FT"] != 1:
        raise ValueError(f"force_variant: {force_variant!r} runs 2-D convolutions of unit column stride only")
    if b not in cfg["block_sizes"]:
        raise ValueError(f"force_variant: {force_variant!r} runs block sizes {cfg['block_sizes']}, not {b}")
    head, _, rest = fv.partition(":")
    try:
        rows = int(rest) if rest else cfg["default_rows"]
    except ValueError:
        rows = None
    if head not in ("wtp", "wtpc") or rows not in cfg["rows"]:
        raise ValueError(
            f"force_variant: expected 'wtp[c][:ROWS]' with ROWS in {cfg['rows']}, got {force_variant!r}"
        )
    hr = (rows - 1) * g["SH"] + (g["FR"] - 1) * g["DH"] + 1
    if max(hr, 16 + (g["FS"] - 1) * g["DW"]) > 256:  # (a TMA box spans at most 256 rows and columns)
        if fit_only:
            return None, None
        raise ValueError(
            f"force_variant: {force_variant!r}: the halo exceeds a TMA box (256 rows or columns)"
        )
    # (slots, staged epilogue): the most slots, 3 at least with the staging buffer when it fits
    stage = 2 * 8 * rows * (64 + 8) * 2 + 16
    options = [(4, True), (3, True), (4, False), (3, False), (2, True), (2, False)]
    for slots, staged in options:
        smem = _wtp_smem(g, b, rows, slots) + (stage if staged else 0)
        if smem <= cfg["max_smem"]:
            return head, (rows, slots, smem, schedule, staged)
    if fit_only:
        return None, None
    raise ValueError(f"force_variant: {force_variant!r}: two slots need more than {cfg['max_smem']} bytes")


def _wtp_groups(lay, G: int):
    """conv_fprop_wtp's tables for groups of G output blocks (int32): grp_ptr [ngrp + 1], grp_in (the union
    of the members' input blocks, ascending), grp_w [entries, G] (the member's w block of that input block;
    nnz: none) and grp_out [ngrp, G] (the members' virtual output blocks; -1: none). Members are merged in
    log2(G) rounds of greedy pairing: the two groups sharing the most input blocks first (then the smaller
    union), so that few of a group's products are wasted (a member without an input block of the union
    multiplies zeros). The groups are ordered by their stage count, longest first. Cached on the layout."""
    cache = lay.__dict__.setdefault("_wtp_groups", {})
    if G not in cache:
        cache[G] = _build_wtp_groups(lay, G)
    return cache[G]


def _build_wtp_groups(lay, G: int):
    ptr, cin, cw = lay.column_tables
    nout = len(ptr) - 1
    groups = [[j] for j in range(nout)]
    ins = [frozenset(cin[ptr[j] : ptr[j + 1]].tolist()) for j in range(nout)]
    size = 1
    while size < G:
        n = len(groups)
        # (beyond 512 groups, neighbours in order: the full search would sort n² / 2 candidates)
        pairs = (
            ((a, c) for a in range(n) for c in range(a + 1, n))
            if n <= 512
            else ((a, a + 1) for a in range(0, n - 1, 2))
        )
        cand = sorted((-len(ins[a] & ins[c]), len(ins[a] | ins[c]), a, c) for a, c in pairs)
        used = [False] * n
        merged, merged_in = [], []
        for _, _, a, c in cand:
            if not used[a] and not used[c]:
                used[a] = used[c] = True
                merged.append(groups[a] + groups[c])
                merged_in.append(ins[a] | ins[c])
        for a in range(n):  # the odd one out: alone (its partner's rows unused)
            if not used[a]:
                merged.append(groups[a] + [-1] * size)
                merged_in.append(ins[a])
        groups, ins, size = merged, merged_in, size * 2
    lookup = {(int(cin[e]), j): int(cw[e]) for j in range(nout) for e in range(ptr[j], ptr[j + 1])}
    gptr, gin, gw, gout = [0], [], [], []
    # the longest groups first: a launch's units take the groups in order, so its last claims are the shortest
    order = sorted(range(len(groups)), key=lambda i: -len(ins[i]))
    for members, inputs in ((groups[i], ins[i]) for i in order):
        gout.append(members)
        for c in sorted(inputs):
            gin.append(c)
            gw.append([lookup.get((c, j), lay.nnz) if j >= 0 else lay.nnz for j in members])
        gptr.append(len(gin))
    as32 = lambda a: np.asarray(a, dtype=np.int32)  # noqa: E731
    return as32(gptr), as32(gin), as32(gw).reshape(-1, G), as32(gout).reshape(-1, G)


def _ws_maps(x, w, geo_host, b: int, tw: int, th: int, mode: str = "padded"):
    """The tensor maps of the TMA-fed conv kernels: w as [nnz·taps·B, B] with a box of one tap's B × B slice
    (swizzled), and x (the launch's activations) with a box of the halo of a TH × TW tile, by ``mode``:
    "padded" (conv_fprop_wst) [N, D, H, W, C], B + 8 channels unswizzled (the padded rows); "chunks"
    (conv_fprop_wss, 2-D) [N, C / 8, H, W, 8], a permuted view whose halo lands channel-chunk major, B / 8
    chunks; "rows" (conv_fprop_wtp) [N, D, H, W, C], B channels swizzled (a position a row)."""
    from . import _tma

    shape, box, swizzle, strides = _ws_map_geometry(geo_host.tobytes(), b, tw, th, mode)
    dt = dtype_name(x.dtype)
    tx = _tma.tiled(x.data.ptr, dt, shape, box, swizzle=swizzle, strides=strides)
    return tx, _tma.tiled(w.data.ptr, dt, (w.size // b, b), (b, b))


@functools.lru_cache(maxsize=256)
def _ws_map_geometry(geo_bytes: bytes, b: int, tw: int, th: int, mode: str):
    """x's map for _ws_maps: (shape, box, swizzle, strides), once per geometry (not per launch)."""
    geo = np.frombuffer(geo_bytes, dtype=np.int32)
    g = {k: int(geo[i]) for k, i in _G.items()}
    hr = (th - 1) * g["SH"] + (g["FR"] - 1) * g["DH"] + 1
    hc = (tw - 1) * g["SW"] + (g["FS"] - 1) * g["DW"] + 1
    H, W, C = g["H"], g["W"], g["C"]
    if mode == "chunks":
        return (
            (g["N"] * g["D"], C // 8, H, W, 8),
            (1, b // 8, hr, hc, 8),
            False,
            (H * W * C * 2, 16, W * C * 2, C * 2),
        )
    shape = (g["N"], g["D"], H, W, C)
    if mode == "rows":
        return shape, (1, 1, hr, hc, b), True, None
    return shape, (1, 1, hr, hc, b + 8), False, None


def _ws_smem(g: dict, b: int, tw: int, th: int, ss: bool = False) -> int:
    """Shared bytes of conv_fprop_ws: 1024 to align, the slots (weight slices, halo; each 1024-aligned), the
    slots' items and two claim words (``ss``: the halo unpadded)."""
    hr = (th - 1) * g["SH"] + (g["FR"] - 1) * g["DH"] + 1
    hc = (tw - 1) * g["SW"] + (g["FS"] - 1) * g["DW"] + 1
    up = lambda v: -(-v // 1024) * 1024  # noqa: E731
    slot = up(g["FR"] * g["FS"] * b * b * 2) + up(hr * hc * (b if ss else b + 8) * 2)
    n = _LAUNCH["ws"]["stages"]
    return 1024 + n * slot + 16 * n + 8 + 8 * n  # (+ the slots' mbarriers of conv_fprop_wst)


def _halo_smem(g: dict, b: int, tw: int, th: int, gm: bool = False) -> int:
    """Shared bytes of conv_fprop_halo: the halo and weight rings (the wgmma kernel: weight slices unpadded
    and 1024 bytes to align them) + the claim slot."""
    hr = (th - 1) * g["SH"] + (g["FR"] - 1) * g["DH"] + 1
    hc = (tw - 1) * g["SW"] + (g["FS"] - 1) * g["DW"] + 1
    wrow = b if gm else b + 8
    return _LAUNCH["halo"]["stages"] * (hr * hc * (b + 8) + g["FR"] * g["FS"] * b * wrow) * 2 + 16 + 1024 * gm


def _gmma_device() -> bool:
    """The current device runs the wgmma conv kernels (compute capability 9.0); False without CuPy."""
    try:
        import cupy
    except ImportError:
        return False
    dev = cupy.cuda.runtime.getDevice()
    if dev not in _ARCH:
        _ARCH[dev] = compiler.device_arch(dev)
    return _ARCH[dev] == _LAUNCH["gmma"]["arch"]


_ARCH: dict[int, str] = {}


def _parse_schedule(fv: str | None):
    """force_variant without its schedule suffix, and the schedule: "auto", "full", "v1", "roll" (auto
    without the unrolled 3 × 3 taps) or a run length."""
    if fv is None or not fv.startswith(("halo", "gmma", "ws", "wtp")):
        return fv, "auto"
    head, _, tail = fv.partition(":")
    rest = tail.split(":") if tail else []
    sched = "auto"
    if rest and rest[-1] in ("full", "v1", "roll"):
        sched = rest.pop()
    elif rest and rest[-1].startswith("run"):
        n = rest.pop()[3:]
        if not n.isdigit() or not 1 <= int(n) <= 0xFFFF:
            raise ValueError(f"force_variant: expected ':runN' with 1 <= N < 65536, got {fv!r}")
        sched = int(n)
    return ":".join([head, *rest]), sched


def _fprop_variant(
    geo_host, b: int, permuted: bool = False, single_stage: bool = False, flip: bool = False, edge_bias=False
):
    """("halo" or "gmma", (tile width, tile height, warps, shared bytes, schedule)) when the halo kernel
    applies (on wgmma: a device of compute capability 9.0, unless force_variant names "halo"), else ("tap",
    None); the schedule is "full" (a CTA per item), "v1", "auto" or a run length. ``single_stage``: every
    output block has at most one input block (block-diagonal layouts): the automatic choice is then the halo
    kernel, whose weight-slice cache keeps a run's weights from item to item (H100, batch 64, 8 groups: 0.0455
    ms against 0.047-0.052 for conv_fprop_wst in every run of 2026-11-27; bench/NOTES.md, eighteenth).
    Otherwise on sm_90, b = 32, 2-D with unit column stride, neither ``permuted`` nor ``edge_bias`` nor
    ``flip``: "wtp" (conv_fprop_wtp, _wtp_variant's (rows, slots, shared bytes, schedule, staged))."""
    g = {k: int(geo_host[i]) for k, i in _G.items()}
    cfg = _LAUNCH["halo"]
    fv, schedule = _parse_schedule(force_variant)
    if fv is not None and fv.startswith("wtp"):  # "wtp[c]"[:ROWS][:schedule]: transposed output-block groups
        if flip:  # (fprop only: the bprop takes the automatic choice)
            fv, schedule = None, "auto"
        else:
            return _wtp_variant(g, b, fv, schedule)
    if schedule == "auto" and not cfg["persistent"]:
        schedule = "full"
    if fv == "tap" or b not in cfg["block_sizes"] or (g["FR"] * g["FS"] == 1 and fv is None):
        return "tap", None
    gcfg, wcfg, tcfg = _LAUNCH["gmma"], _LAUNCH["ws"], _LAUNCH["wtp"]
    tw = next(t for t in cfg["tile_widths"] if g["OW"] >= t or t == cfg["tile_widths"][-1])
    auto_wtp = fv is None and tcfg["auto"] and not (flip or permuted or single_stage or edge_bias)
    auto_wtp = auto_wtp and b in tcfg["auto_block_sizes"] and g["SW"] == 1 and g["D"] == 1 and g["FT"] == 1
    if auto_wtp and _gmma_device():  # conv_fprop_wtp, the staged epilogue and 3 slots at least, if they fit
        kind, val = _wtp_variant(g, b, "wtp", schedule, fit_only=True)
        if kind is not None and val[1] >= 3 and val[4]:
            return kind, val
    if fv is not None and fv.startswith("wss"):  # "wss"[:PIXELS][:schedule]: A from shared memory
        if not _gmma_device():
            raise ValueError(
                f"force_variant: {force_variant!r} (wgmma) needs a device of compute capability 9.0"
            )
        if g["SW"] != 1 or g["D"] != 1 or g["OD"] != 1 or g["FT"] != 1:
            raise ValueError(
                f"force_variant: {force_variant!r} runs 2-D convolutions of unit column stride only"
            )
        pixels = int(fv.split(":")[1]) if ":" in fv else 256
        if pixels not in (128, 256):
            raise ValueError(
                f"force_variant: expected a wss tile of 128 or 256 positions, got {force_variant!r}"
            )
        smem = _ws_smem(g, b, 8, pixels // 8, ss=True)
        if smem > wcfg["max_smem"]:
            raise ValueError(
                f"force_variant: {force_variant!r}: the slots need more than {wcfg['max_smem']} bytes"
            )
        return "wss", (8, pixels // 8, 4 * (pixels // 64) + 4, smem, schedule)
    want_ws = fv is not None and fv.startswith("ws")  # "ws", "wst", "ws4", "wst4"[:PIXELS][:schedule]
    if want_ws and not _gmma_device():
        raise ValueError(f"force_variant: {force_variant!r} (wgmma) needs a device of compute capability 9.0")
    auto_ws = fv is None and wcfg["enabled"] and not (permuted or single_stage) and b in wcfg["block_sizes"]
    auto_ws = auto_ws and _gmma_device()
    if want_ws or auto_ws:
        if want_ws and ":" in fv:
            try:
                pixels = int(fv.split(":")[1])
            except ValueError:
                pixels = None
            if pixels not in wcfg["tiles"]:
                raise ValueError(
                    f"force_variant: expected a ws tile in {wcfg['tiles']}, got {force_variant!r}"
                )
            shapes = [pixels]
        else:
            first = wcfg["tiles"][0]
            shapes = [p for p in (wcfg["default"], first) if p // tw <= g["OH"] or p == first]
        for pixels in shapes:
            th = pixels // tw
            smem = _ws_smem(g, b, tw, th)
            if smem <= wcfg["max_smem"]:
                tm = fv.startswith("wst") if want_ws else wcfg["tma"]
                four = fv.split(":")[0].endswith("4") if want_ws else wcfg["warpgroups"] == 4
                nwg = 4 if four and pixels == 256 else 2
                return "wst" if tm else "ws", (tw, th, 4 * nwg + 4, smem, schedule)
        if want_ws:
            raise ValueError(
                f"force_variant: {force_variant!r}: the slots need more than {wcfg['max_smem']} bytes"
            )
    if fv is not None and fv.startswith("gmma"):
        if not _gmma_device():
            raise ValueError(
                f"force_variant: {force_variant!r} (wgmma) needs a device of compute capability 9.0"
            )
        kind = "gmma"
    elif fv is None and gcfg["enabled"] and b in gcfg["block_sizes"] and _gmma_device():
        kind = "gmma"
    else:
        kind = "halo"
    kcfg = gcfg if kind == "gmma" else cfg
    tw = next(t for t in cfg["tile_widths"] if g["OW"] >= t or t == cfg["tile_widths"][-1])
    if fv is not None and fv.startswith(("halo:", "gmma:")):
        try:
            pixels, warps = (int(v) for v in fv[5:].split("x"))
        except ValueError:
            pixels = warps = None
        if (pixels, warps) not in kcfg["tiles"]:
            raise ValueError(
                f"force_variant: expected a {kind} tile in {kcfg['tiles']}, got {force_variant!r}"
            )
        shapes = [(pixels, warps)]
    else:
        pixels, warps = kcfg["default_permuted" if permuted else "default"]
        shapes = [(pixels, warps)] if pixels // tw <= g["OH"] else []
        shapes.append(kcfg["tiles"][0])
    for pixels, warps in shapes:
        th = pixels // tw
        smem = _halo_smem(g, b, tw, th, kind == "gmma")
        if smem <= cfg["max_smem"]:
            return kind, (tw, th, warps, smem, schedule)
    return "tap", None


@functools.lru_cache(maxsize=256)
def _halo_run(col_len: tuple, tiles: int, ctas: int) -> int:
    """The run length (tiles of one output block per claim) of conv_fprop_halo: the longest entry of
    _LAUNCH["halo"]["run_lengths"] whose claim order ends within 2 % of the best one's (longer runs claim
    less often and keep their weight slices for more items), simulated with an item costing its stages
    (at least one) and every CTA taking the next run when it is free; a long claim list is estimated as
    the mean work of a CTA plus one run of the longest column. ``col_len``: stages per item of each
    output block."""
    import heapq

    cost = np.maximum(np.asarray(col_len, dtype=np.int64), 1)
    ncol = len(cost)
    spans = {}
    for run in _LAUNCH["halo"]["run_lengths"]:
        chunks = -(-tiles // run)
        if chunks * ncol > 1 << 13:
            spans[run] = tiles * int(cost.sum()) / ctas + run * int(cost.max())
            continue
        last = tiles - (chunks - 1) * run
        free = [0] * min(ctas, chunks * ncol)
        span = 0
        for c in range(chunks):
            r = run if c < chunks - 1 else last
            for j in range(ncol):
                t = heapq.heappop(free) + r * int(cost[j])
                span = max(span, t)
                heapq.heappush(free, t)
        spans[run] = span
    best = min(spans.values())
    return max(run for run, span in spans.items() if span <= 1.02 * best)


def _halo_opts(schedule, col_len, tiles: int, ctas: int) -> int:
    """conv_fprop_halo's opts argument (kernels/conv.cu): the run length and the HALO_* flags."""
    cfg = _LAUNCH["halo"]
    if schedule in ("full", "v1"):
        return 1
    run = schedule if isinstance(schedule, int) else _halo_run(col_len, tiles, ctas)
    flags = (cfg["weight_cache"] << 16) | (cfg["defer_claim"] << 17) | (cfg["pair_store"] << 18)
    flags |= (cfg["step_load"] << 19) | ((cfg["unroll_taps"] and schedule != "roll") << 20)
    flags |= cfg["plain_epilogue"] << 21
    return run | flags


def _tc_plan(
    geo_host,
    out_blocks: int,
    b: int,
    dt: str,
    flip: bool,
    col_ptr: np.ndarray,
    permuted=False,
    groups=None,
    edge_bias=False,
):
    """(spec, grid, block, shared bytes, needs the flipped weight copy, the halo kernel's opts or None) of
    the implicit-GEMM kernel for fprop or (``flip``) stride-1 bprop: conv_fprop_ffma (fp32),
    conv_fprop_halo or conv_fprop_tc. ``col_ptr``: the column (bprop: row) pointers on the host (the
    halo kernel's run length weighs the columns' lengths). ``groups(G)``: conv_fprop_wtp's group tables
    (_wtp_groups) of G output blocks a group, when fprop may run it."""
    cfg = _LAUNCH["tc"]
    g = {k: int(geo_host[i]) for k, i in _G.items()}
    m_total = g["N"] * g["OD"] * g["OH"] * g["OW"]
    if dt == "float32":
        ff = _LAUNCH["ffma"]
        smem = ff["stages"] * (ff["bm"] + b) * (b + 4) * 4
        spec = compiler.KernelSpec("conv.cu", f"conv_fprop_ffma<{b}>")
        return spec, (-(-m_total // ff["bm"]), out_blocks), (ff["threads"],), smem, flip, None
    single = col_ptr is not None and len(col_ptr) > 1 and int(np.diff(np.asarray(col_ptr)).max()) <= 1
    variant, halo = _fprop_variant(geo_host, b, permuted, single, flip, edge_bias or groups is None)
    if variant in ("wtp", "wtpc"):
        rows, nst, smem, schedule, staged = halo
        spec = _wtp_spec(_CTYPE[dt], b, rows, variant == "wtp")
        tiles = g["N"] * g["OD"] * (-(-g["OH"] // rows)) * (-(-g["OW"] // 16))
        grp_ptr = groups(64 // b)[0]
        ngrp = len(grp_ptr) - 1
        if tiles * ngrp >= 2**31:
            raise ValueError(f"x: {tiles * ngrp} output tiles × groups exceed the kernel's 2^31 work items")
        ctas = _ops._sm_count() * _ops._resident_blocks(spec, 384, smem, 1)
        lens = tuple(np.diff(grp_ptr).tolist())
        run = schedule if isinstance(schedule, int) else _halo_run(lens, tiles, ctas)
        runs = -(-tiles // run) * ngrp
        return spec, (min(runs, ctas),), (384,), smem, False, run | (nst << 24) | (staged << 23)
    if variant in ("halo", "gmma", "ws", "wst", "wss"):
        tw, th, warps, smem, schedule = halo
        tiles = g["N"] * g["OD"] * (-(-g["OH"] // th)) * (-(-g["OW"] // tw))
        assert out_blocks * b == g["K"], "the halo kernel's grid has K/B output blocks"
        if variant in ("ws", "wst", "wss"):
            spec = _ws_spec(_CTYPE[dt], b, tw, th, flip, variant != "ws", (warps - 4) // 4, variant == "wss")
            schedule = "auto" if schedule in ("full", "v1") else schedule  # always persistent
        else:
            spec = (_gmma_spec if variant == "gmma" else _halo_spec)(_CTYPE[dt], b, tw, th, warps, flip)
        items = tiles * out_blocks
        if items >= 2**31:
            raise ValueError(f"x: {items} output tiles × blocks exceed the halo kernel's 2^31 work items")
        if schedule == "full":  # a CTA per item
            return spec, (items,), (32 * warps,), smem, False, _halo_opts(schedule, None, tiles, items)
        # the CTAs that fit at once, each claiming runs until none are left
        per_sm = _ops._resident_blocks(spec, 32 * warps, smem, 1 if variant in ("ws", "wst", "wss") else 2)
        ctas = _ops._sm_count() * per_sm
        col_len = tuple((np.diff(np.asarray(col_ptr, dtype=np.int64)) * g["FT"]).tolist())
        opts = _halo_opts(schedule, col_len, tiles, ctas)
        runs = -(-tiles // (opts & 0xFFFF)) * out_blocks
        return spec, (min(runs, ctas),), (32 * warps,), smem, False, opts
    spec = compiler.KernelSpec("conv.cu", f"conv_fprop_tc<{_CTYPE[dt]}, {b}>")
    return spec, (-(-m_total // cfg["bm"]), out_blocks), (cfg["threads"],), _tc_smem(b), flip, None


def _tc_launch(x, w, y, tables, perm, eb_args, geo_host, out_blocks, b, dt, ptr_host, flip_w=None):
    """The implicit-GEMM kernel over the column tables (stride-1 bprop: the layout's row tables).

    ``flip_w`` (bprop): a callable giving the flipped, transposed weight copy that conv_fprop_tc and
    conv_fprop_ffma need; the halo kernel reads ``w`` itself (FLIP)."""
    spec, grid, block, smem, needs_copy, opts = _tc_plan(
        geo_host, out_blocks, b, dt, flip_w is not None, ptr_host
    )
    tail = (*tables, perm if perm is not None else _null(), *eb_args, _upload_geo(geo_host))
    if "halo" in spec.name or "_ws" in spec.name:
        tail += (_halo_sched(), np.int32(opts))
    xin, win = _kernel_inputs(spec, x, flip_w() if needs_copy else w, lambda: geo_host, ("dy", "w"))
    _launch(spec, grid, block, (xin, win, y, *tail), smem)


_SCHED: dict = {}


def _halo_sched():
    """conv_fprop_halo's zeroed work counters (next item, CTAs done), one pair per device and stream:
    launches on one stream run in order, and the kernel's last CTA resets them."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    key = (cupy.cuda.runtime.getDevice(), getattr(stream, "ptr", None))
    if key not in _SCHED:
        _SCHED[key] = cupy.zeros(2, dtype=np.uint32)
    return _SCHED[key]


def _gpu_bprop(conv, geom, dy, w, out, shape):
    import cupy

    dt = dtype_name(dy.dtype)
    dx = out if out is not None else cupy.empty(shape, dtype=dy.dtype)
    n = dy.shape[0]
    if conv.gpu_kernel(dy.dtype, "bprop") != "direct":
        lay = conv.layout
        b = lay.uniform

        def build(cp):
            ptr, rout, rw = lay.row_tables
            perm = cp.asarray(lay.out_perm.astype(np.int64)) if lay.out_perm is not None else None
            return cp.asarray(ptr), cp.asarray(rout), cp.asarray(rw), perm

        ptr, rout, rw, perm = _dev(conv, ("rows",), build)

        def flip_w():  # transposed, spatially flipped blocks: wt[blk, tap', k, c] = w[blk, taps-1-tap', c, k]
            return cupy.ascontiguousarray(w.reshape(lay.nnz, conv.taps, b, b)[:, ::-1].transpose(0, 1, 3, 2))

        # gather dy into virtual output-channel order when the layout permutes its outputs
        dyv = cupy.ascontiguousarray(dy[..., perm]) if perm is not None else dy
        pad_lo = tuple(d * (f - 1) - lo for d, f, lo in zip(geom.dilation, geom.filter_shape, geom.pad_lo))
        geo_host = _geo_array(
            conv, geom, n, conv.K, conv.C, geom.output_spatial, geom.input_spatial, (1,) * conv.dims, pad_lo
        )
        _tc_launch(
            dyv,
            w,
            dx,
            (ptr, rout, rw),
            None,
            (_null(), _null()),
            geo_host,
            lay.mask.shape[0],
            b,
            dt,
            lay.row_tables[0],
            flip_w,
        )
        return dx
    conn = _conn_tables(conv)
    geo = _upload_geo(_forward_geo(conv, geom, n))
    threads = _LAUNCH["direct"]["threads"]
    total = int(np.prod(shape))
    spec = compiler.KernelSpec("conv.cu", f"conv_bprop_direct<{_CTYPE[dt]}>")
    _launch(
        spec,
        (_grid_1d(total, threads),),
        (threads,),
        (dy, w, dx, conn["bw_ptr"], conn["bw_idx"], conn["bw_off"], conn["bw_ts"], geo),
    )
    return dx


def _updat_splits(m_total: int, blocks: int) -> tuple[int, int]:
    """(splits, tiles per split) for conv_updat_tc: enough CTAs to fill the GPU, whole tiles each."""
    cfg = _LAUNCH["updat_tc"]
    tiles = -(-m_total // cfg["bk"])
    splits = max(1, min(tiles, -(-cfg["target_ctas"] // max(1, blocks))))
    per = -(-tiles // splits)
    return -(-tiles // per), per


def _gpu_updat(conv, geom, x, dy, out, odt):
    import cupy

    dt = dtype_name(x.dtype)
    dw = out if out is not None else cupy.empty(conv.w_shape, dtype=odt)
    lay = conv.layout
    if conv.uses_tensor_cores(x.dtype, "updat") and lay.nnz <= 65535:
        b = lay.uniform
        cfg = _LAUNCH["updat_tc"]

        def build(cp):
            perm = cp.asarray(lay.out_perm.astype(np.int64)) if lay.out_perm is not None else None
            return cp.asarray(lay.block_rows), cp.asarray(lay.block_cols), perm

        rows, cols, perm = _dev(conv, ("blocks",), build)
        dyv = cupy.ascontiguousarray(dy[..., perm]) if perm is not None else dy
        m_total = x.shape[0] * int(np.prod(geom.output_spatial))
        splits, per = _updat_splits(m_total, lay.nnz * conv.taps)
        count = lay.nnz * conv.taps * b * b
        ws = cupy.empty((splits, count), dtype=np.float32)
        geo = _upload_geo(_forward_geo(conv, geom, x.shape[0]))
        smem = cfg["stages"] * 2 * cfg["bk"] * (b + 8) * 2
        spec = compiler.KernelSpec("conv.cu", f"conv_updat_tc<{_CTYPE[dt]}, {b}>")
        _launch(
            spec,
            (splits, conv.taps, lay.nnz),
            (cfg["threads"],),
            (x, dyv, ws, rows, cols, np.int32(lay.nnz), np.int32(per), geo),
            smem,
        )
        spec = compiler.KernelSpec("conv.cu", f"conv_updat_reduce<{_CTYPE[dtype_name(odt)]}>")
        threads = cfg["reduce_threads"]
        _launch(spec, (_grid_1d(count, threads),), (threads,), (ws, dw, np.int32(splits), np.int64(count)))
        return dw
    conn = _conn_tables(conv)
    geo = _upload_geo(_forward_geo(conv, geom, x.shape[0]))
    n_elems = int(conn["c"].size)
    threads = _LAUNCH["updat_direct"]["threads"]
    warps = n_elems * conv.taps
    spec = compiler.KernelSpec("conv.cu", f"conv_updat_direct<{_CTYPE[dt]}, {_CTYPE[dtype_name(odt)]}>")
    _launch(
        spec,
        (-(-warps // (threads // 32)),),
        (threads,),
        (x, dy, dw, conn["c"], conn["k"], conn["off"], conn["ts"], np.int32(n_elems), geo),
    )
    return dw


def _gpu_updat_edge_bias(conv, geom, dy, out, odt):
    import cupy

    dt = dtype_name(dy.dtype)
    _, ptr, pix, e = _edge_tables(conv, geom)
    deb = out if out is not None else cupy.empty((e, conv.K), dtype=odt)
    geo = _upload_geo(_forward_geo(conv, geom, dy.shape[0]))
    threads = 256
    spec = compiler.KernelSpec("conv.cu", f"edge_bias_updat<{_CTYPE[dt]}, {_CTYPE[dtype_name(odt)]}>")
    _launch(spec, (-(-(e * conv.K) // threads),), (threads,), (dy, deb, ptr, pix, np.int32(e), geo))
    return deb


# ---------------------------------------------------------------------------------------------------
# self check


def self_check(backend: str = "numpy", seed: int | None = 0) -> list[tuple[str, float, bool]]:
    """A quick random check of fprop/bprop/updat (and edge bias) against the float64 reference.

    ``backend``: "numpy" (reference path at float32) or "cupy" (GPU kernels: the tensor-core path in
    fp16 and the direct path in fp32). Returns rows (name, relative error, passed).
    """
    from ._array import bfloat16  # noqa: F401 - ensures ml_dtypes registered

    rng = np.random.default_rng(seed)
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend: expected 'numpy' or 'cupy', got {backend!r}")
    cases = [
        (
            "uniform b=16 3x3 NHWC",
            ChannelBlockLayout.from_mask([[1, 0], [1, 1]], 16),
            "NHWC",
            "float16" if backend == "cupy" else "float32",
        ),
        (
            "non-uniform 3x3 NCHW",
            ChannelBlockLayout([((0, 5), (0, 7)), ([1, 6, 7], (3, 11)), ((5, 9), [10, 2])]),
            "NCHW",
            "float32",
        ),
    ]
    rows = []
    tol = {"float16": 1e-2, "float32": 1e-4}
    for name, lay, fmt, dt in cases:
        conv = BlockSparseConv(
            lay,
            (3, 3),
            padding=((1, 0), (2, 1)),
            stride=1,
            input_spatial=(7, 6),
            edge_bias=True,
            data_format=fmt,
        )
        xs = (2, 7, 6, conv.C) if fmt == "NHWC" else (2, conv.C, 7, 6)
        x = rng.standard_normal(xs).astype(dt)
        w = conv.init_normal(rng, dtype=dt)
        eb = rng.standard_normal(conv.edge_bias_shape).astype(dt)
        ref_conv = BlockSparseConv(
            lay, (3, 3), padding=conv.padding, input_spatial=(7, 6), edge_bias=True, data_format=fmt
        )
        y64 = ref_conv.fprop(x.astype(np.float64), w.astype(np.float64), eb.astype(np.float64))
        dy = rng.standard_normal(y64.shape).astype(dt)
        dx64 = ref_conv.bprop(dy.astype(np.float64), w.astype(np.float64))
        dw64 = ref_conv.updat(x.astype(np.float64), dy.astype(np.float64))
        de64 = ref_conv.updat_edge_bias(dy.astype(np.float64))
        if backend == "cupy":
            import cupy as xp
        else:
            xp = np
        X, Wt, EB, DY = (xp.asarray(a) for a in (x, w, eb, dy))
        results = {
            "fprop": (conv.fprop(X, Wt, EB), y64),
            "bprop": (conv.bprop(DY, Wt), dx64),
            "updat": (conv.updat(X, DY, out_dtype=np.float32), dw64),
            "updat_edge_bias": (conv.updat_edge_bias(DY, out_dtype=np.float32), de64),
        }
        for op, (got, want) in results.items():
            got = got.get() if hasattr(got, "get") else got
            err = float(np.linalg.norm(got.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-30))
            rows.append((f"{name} {dt} {op}", err, bool(np.isfinite(err) and err <= tol[dt])))
    return rows
