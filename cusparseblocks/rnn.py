"""Sparse persistent RNN (seed 003): a whole recurrent sequence in one kernel, sparse W kept on-chip.

``h_t = f(h_{t-1}·W + u_t)`` with f = relu or tanh, or an LSTM cell (gate order i, f, g, o along the
G·H axis of W, as ``torch.nn.LSTM``); W is [H, G·H] (G = 4 for the LSTM, else 1), sparse: unstructured
(pruned weights, any scipy.sparse matrix or a dense array whose zeros are pruned) or block-sparse (a
:class:`BlockLayout` [H/b, G·H/b] with blocks ``w`` [nnz, b, b], as :class:`BlockSparseMatMul`).

On CuPy arrays the persistent kernel (``kernels/rnn.cu``) gives each thread block a slice of hidden
units and keeps their rows of W in shared memory for all T steps; blocks exchange h_t through global
memory, each step's h in its own slot, and a block waits only for the values of h_{t-1} it reads: no
grid barrier per step. Default (``exchange="sentinel"``): the buffer starts as a NaN pattern no step
writes, so a value doubles as its own 'written' flag (the seed's Lamport timestamps folded into the
data: one load both waits and reads, no fence). ``exchange="flags"``: per-block step counters
(st.release / ld.acquire at gpu scope), a block waits for the blocks whose slice of h_{t-1} it reads.
The grid never exceeds the co-resident blocks (occupancy query), and a watchdog turns a stuck wait into
an error. When the weights do not fit on-chip, ``path="auto"`` falls
back to one sparse matvec kernel per step, captured in a CUDA graph (``path="persistent"`` raises).
NumPy arrays run the float64 reference (:mod:`cusparseblocks.reference.rnn`).

Weights are packed per row in a bank-aware order (the seed's third optimisation: the lanes that gather
h in one instruction hit different shared-memory banks) and read as 16-byte vectors.

Cached per object: the weights by output row (host), each plan and its packed tables per (dtype, batch,
device), the fallback's CSR arrays per (dtype, device).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import scipy.sparse as sp

from . import _validate as V
from . import compiler
from ._array import backend_of, dtype_name, is_cupy
from .blocklayout import as_layout
from .reference import rnn as ref

__all__ = ["MODES", "SparseRNN", "RnnPlan", "max_hidden_size", "self_check", "LAUNCH"]

MODES = ref.MODES
_MODE_ID = {"relu": 0, "tanh": 1, "lstm": 2}
_GPU_DTYPES = ("float16", "float32")
_CPU_DTYPES = _GPU_DTYPES + ("float64",)
_CTYPE = {"float16": "__half", "float32": "float"}

# Launch table of the family (kernels/rnn.cu mirrors threads and items_per_thread as RNN_THREADS/RNN_UPT).
LAUNCH = {
    "threads": 512,            # threads per persistent block (one block per SM)
    "items_per_thread": 4,     # pointwise (unit, batch) items a thread owns: units·B <= 4·512 per block
    "hidden_align": 8,         # H padded to Hp: every h chunk of the exchange is a whole of 16-byte vectors
    "lanes": (4, 8, 16, 32),   # threads sharing one row of W; the plan picks the cheapest that fits
    "batch_chunks": (8, 4, 2, 1),
    "step_threads": 256,       # fallback: one warp per unit
    "smem_reserve": 64,        # bytes kept below the per-block opt-in limit (static shared memory)
    # how blocks learn h_(t-1) is written; the first is the default. "sentinel": values double as their
    # own flags (no fence); "flags": per-block step counters (release/acquire at gpu scope)
    "exchange": ("sentinel", "flags"),
    # h_(t-1) in shared memory as fp32 when it fits (sentinel kernel; fp16 weights: no conversion per
    # gathered value), else in the storage dtype
    "h_float": (True, False),
    # sentinel kernel: re-read every unwritten exchange vector of a thread together (True) or one at a
    # time (False). H100, H 2304, B 4, T 256 (bench/results/rnn-20261125-2059, -2105): fp16 3.98 µs/step
    # one at a time vs 5.07 together (more polling traffic in L2), fp32 6.90 vs 4.93 (twice the vectors
    # per thread: serial polls cost more than the traffic)
    "poll_all": {"float16": False, "float32": True},
    # tensor-core kernel (rnn_persistent_tc, fp16): (threads, blocks per SM, register budget), the first
    # that fits is the default. W's rows live in registers as mma A fragments (4 registers per (16-row
    # tile, k16-step)); the budget counts them plus 12 per accumulator tile (and 28 for the LSTM cell), see
    # _tc_registers: at 84 (2 blocks of 256 threads, 128 registers) and 200 (1 block, 255) the kernel does
    # not spill on sm_80 or sm_90 (ptxas; tests/test_compile.py checks the boundary cases _TC_REGISTERED).
    # H 2304, G 1: 144 blocks of one tile, 18 k-steps a warp, 84 (bench/NOTES.md, third session)
    "tc_configs": ((256, 2, 84), (256, 1, 200)),
    "tc_max_batch": 32,        # n8 tiles of h: NT = ceil(B / 8) <= 4
    # tensor-core kernel's exchange; the first is the default. "sentinel": every block copies all of
    # h_(t-1) it reads from L2; "cluster" (sm_90): thread-block clusters of tc_cluster blocks, each copies
    # 1/C of it and stores it into its peers' shared memory (kernels/rnn.cu rnn_tc_body)
    # "counter": one arrival counter a step (release add per block, one acquiring thread per block waits
    # for all), then one copy of h_(t-1) without sentinel checks
    # "block_flags": a step flag per block (release store), warp 0 of every block polls them all.
    # "group_counter": an arrival counter a step for each of `groups` groups of blocks (a power of two <= 32;
    # block b in group b mod groups); lane g of warp 0 of every block polls group g's (144 blocks, 16 groups:
    # 9 adds a word instead of 144, 16 words polled at once).
    # H100 run 3: counter 4.24 µs/step, sentinel 5.91, cluster4 6.24 (sparse kernel 4.64 in that run)
    "tc_exchange": ("counter", "sentinel", "cluster", "block_flags", "group_counter"),
    "groups": 16,
    "tc_cluster": 4,
    # whether path="auto" takes the tensor-core kernel for float16 where it fits: H100 run 3, headline,
    # tc with exchange "counter" 4.24 µs/step vs the sparse kernel's 4.64 (bench/NOTES.md, third session)
    "tc_default": True,
}


def _arrival_flag(plan, mode) -> int:
    """The kernel's block_flags argument for an arrival mode: 0 "counter", 1 "block_flags", the number of
    groups (a power of two in [2, 32]) for "group_counter"."""
    if mode == "group_counter":
        groups = LAUNCH["groups"]
        if groups not in (2, 4, 8, 16, 32):
            raise ValueError(f"LAUNCH['groups']: expected a power of two in [2, 32], got {groups!r}")
        return groups
    return int(mode == "block_flags")


# H100 SXM: 132 SMs, 227 KiB of shared memory per block (opt-in); used when no GPU is present
H100 = {"sm_count": 132, "smem_per_block": 232448}


# tensor-core specializations compiled ahead (tests/test_compile.py, the spill check): the headline (H 2304,
# G 1, B 4: tiles 1, k-steps 18, n-tiles 1) and the fit rule's boundary cases per config and mode
# (registers = LAUNCH["tc_configs"] budget); any other (tiles, k-steps, n-tiles) compiles on first use
_TC_REGISTERED = {
    "relu": ((1, 18, 1, 256, 2),),
    "tanh": ((1, 18, 1, 256, 2), (1, 15, 2, 256, 2), (1, 9, 4, 256, 2), (2, 7, 1, 256, 2), (1, 47, 1, 256, 1),
             (2, 22, 1, 256, 1), (1, 38, 4, 256, 1), (2, 13, 4, 256, 1)),
    "lstm": ((1, 11, 1, 256, 2), (2, 4, 1, 256, 2), (2, 19, 1, 256, 1), (4, 8, 1, 256, 1)),
}


# the cluster exchange at the headline shape, each portable cluster size (sm_90; a trap stub on sm_80)
_TC_CLUSTER_REGISTERED = (("tanh", (1, 18, 1, 256, 2, 2)), ("tanh", (1, 18, 1, 256, 2, 4)),
                          ("tanh", (1, 18, 1, 256, 2, 8)), ("lstm", (1, 11, 1, 256, 2, 4)))


def _tc_registers(tiles, slots, ntiles, G):
    """Registers the fit rule charges rnn_persistent_tc: A fragments, accumulators, the LSTM cell."""
    return 4 * tiles * slots + 12 * tiles * ntiles + (28 if G == 4 else 0)


def _specializations():
    for mode in MODES:
        for args in _TC_REGISTERED[mode]:
            yield _tc_spec(mode, *args)
    for mode, args in _TC_CLUSTER_REGISTERED:
        yield _tc_spec(mode, *args)
    for dt in _GPU_DTYPES:
        for mode in MODES:
            for bc in LAUNCH["batch_chunks"]:
                yield _spec("rnn_persistent", dt, mode, bc)
                for h_float in ((True, False) if dt == "float16" else (True,)):
                    yield _spec("rnn_persistent_sentinel", dt, mode, bc, h_float)
                yield _spec("rnn_step", dt, mode, bc)


def _spec(kernel, dtype, mode, bc, h_float=None):
    """``h_float`` (sentinel kernel only): its shared-memory h type HS is float, else the storage type."""
    args = f"{_CTYPE[dtype]}, {_MODE_ID[mode]}, {bc}"
    if h_float is not None:
        args += ", " + ("float" if h_float else _CTYPE[dtype])
    return compiler.KernelSpec("rnn.cu", f"{kernel}<{args}>")


def _tc_spec(mode, mt, ks, nt, threads, minb, cluster=1):
    args = f"{_MODE_ID[mode]}, {mt}, {ks}, {nt}, {threads}, {minb}"
    if cluster > 1:
        return compiler.KernelSpec("rnn.cu", f"rnn_persistent_tc_cluster<{args}, {cluster}>")
    return compiler.KernelSpec("rnn.cu", f"rnn_persistent_tc<{args}>")


compiler.register_family("rnn", _specializations)


@dataclasses.dataclass
class RnnTcPlan:
    """The tensor-core kernel's launch for one (batch, config): ``fits`` with ``reason``; blocks of
    ``units`` hidden units (``tiles`` 16-row M-tiles each), ``slots`` k16-steps per warp and tile (A
    fragments in registers), ``ntiles`` n8 tiles of the batch, ``kp`` the row stride of h in shared memory."""

    fits: bool
    reason: str
    batch: int
    hidden_padded: int
    threads: int = 0
    blocks_per_sm: int = 0
    blocks: int = 0
    units: int = 0
    tiles: int = 0
    slots: int = 0
    ntiles: int = 0
    kp: int = 0
    smem_bytes: int = 0
    a_registers: int = 0
    cluster: int = 1            # blocks per thread-block cluster (1: no clusters, exchange="sentinel")
    max_clusters: int = 0       # co-resident clusters when a launch found too few (forward plans again)
    tables: dict | None = dataclasses.field(default=None, repr=False)

    @property
    def spec_args(self):
        return (self.tiles, self.slots, self.ntiles, self.threads, self.blocks_per_sm)


@dataclasses.dataclass
class RnnPlan:
    """How one (dtype, batch) runs: persistent (and its launch) or the fallback, with the reason."""

    persistent: bool
    reason: str
    dtype: str
    batch: int
    hidden_padded: int
    batch_chunk: int
    nchunks: int
    blocks: int = 0
    lanes: int = 0
    h_float: bool = True        # sentinel kernel: h in shared memory as fp32 (else the storage dtype)
    smem_bytes: int = 0
    weight_bytes: int = 0       # packed weights over all blocks (padding included)
    tables: dict | None = dataclasses.field(default=None, repr=False)
    tc: RnnTcPlan | None = None  # the tensor-core kernel's plan (fp16), when it fits

    @property
    def path(self) -> str:
        """What ``forward(path="auto")`` runs: "tc", "persistent" (sparse FFMA) or "fallback"."""
        if self.tc is not None and self.tc.fits:
            return "tc"
        return "persistent" if self.persistent else "fallback"


def _gates(mode):
    return ref.gates(mode)


def _itemsize(dtype):
    return 2 if dtype == "float16" else 4


def _per_vector(dtype):
    return 4 if dtype == "float16" else 2   # nonzeros per 16-byte vector


def _align(x, a):
    return (x + a - 1) // a * a


def _smem_bytes(dtype, wvec, Hp, bc, nchunks, rows, h_float=False):
    """Mirror of RnnSmem in kernels/rnn.cu (``h_float``: the h chunk is fp32, else ``dtype``)."""
    off = 16 * wvec + _align(Hp * bc * (4 if h_float else _itemsize(dtype)), 16)
    off = _align(off + rows * nchunks * bc * 4, 16)
    return off + rows * 8


def _batch_chunks(batch):
    """Candidate batch chunks BC (columns of h per shared-memory pass), widest first: none wider than
    the batch needs."""
    return [bc for bc in LAUNCH["batch_chunks"] if bc == 1 or bc // 2 < batch]


def _partition(unit_cost, nblk):
    """Contiguous unit ranges of about equal cost: at most ``nblk`` starts plus the end, none empty."""
    n = unit_cost.size
    cum = np.cumsum(unit_cost)
    total = float(cum[-1])
    if total <= 0:
        cuts = np.linspace(0, n, nblk + 1).round().astype(np.int64)
    else:
        targets = total * np.arange(1, nblk) / nblk
        cuts = np.concatenate([[0], np.searchsorted(cum, targets, side="left") + 1, [n]])
    return np.unique(np.clip(cuts, 0, n)).astype(np.int64)


def _size_plan(rownnz, H, G, dtype, batch, sm_count, smem_limit, lanes=None, h_float=None):
    """The launch shape from nonzeros per row ([G, H] ints) alone: blocks, lanes, batch chunk, smem.

    Returns (RnnPlan without tables, unit_start, nvec_lane [G, Hp] for the chosen lanes).
    """
    threads = LAUNCH["threads"]
    Hp = _align(H, LAUNCH["hidden_align"])
    limit = smem_limit - LAUNCH["smem_reserve"]
    chunks = _batch_chunks(batch)
    bc, nchunks = chunks[0], -(-batch // chunks[0])
    Vn = _per_vector(dtype)
    nnz = np.zeros((G, Hp), dtype=np.int64)
    nnz[:, :H] = rownnz
    plan = RnnPlan(False, "", dtype, batch, Hp, bc, nchunks)
    nblk = max(1, min(sm_count, H))
    unit_cost = nnz[:, :H].sum(axis=0) + 8 * G   # a row costs its nonzeros plus a little fixed work
    starts = _partition(unit_cost.astype(np.float64), nblk)
    starts[-1] = Hp                              # the last block also owns the padding units (no rows)
    nblk = starts.size - 1
    units = np.diff(starts)
    items = LAUNCH["items_per_thread"] * threads
    if int(units.max()) * batch > items:
        plan.reason = (f"batch {batch} × {int(units.max())} units per block exceeds "
                       f"{items} pointwise items per block ({sm_count} blocks)")
        return plan, starts, None
    best = None
    for L in (LAUNCH["lanes"] if lanes is None else (lanes,)):
        nvec = -(-nnz // (L * Vn))                      # vectors per lane, per row
        wvec_unit = (nvec * L).sum(axis=0)              # vectors per unit (all gates)
        maxvec_unit = nvec.max(axis=0)
        wvec_blk = np.add.reduceat(wvec_unit, starts[:-1])
        maxvec_blk = np.maximum.reduceat(maxvec_unit, starts[:-1])
        rounds = -(-(units * G) // (threads // L))
        for bc in chunks:
            nch = -(-batch // bc)
            for hf in ((True, False) if h_float is None else (bool(h_float),)):
                hf = hf or dtype == "float32"
                # serial instructions of one thread per pass over the weights (SASS, sm_90): per nonzero
                # 3 + BC FFMA + one 16-byte gather per 4 fp32 values of h (fp16 h: half the gathers, BC
                # conversions); per row a shuffle reduction; per pass (batch chunk) a wait for h in L2
                per_nz = 3 + bc + (-(-bc // 4) if hf else -(-bc // 8) + bc)
                work = rounds * (maxvec_blk * Vn * per_nz + int(np.log2(L)) * 2 * bc)
                cost = nch * (int(work.max()) + 1000)
                smem = _smem_bytes(dtype, int(wvec_blk.max()), Hp, bc, nch, int(units.max()) * G, hf)
                cand = (smem > limit, cost, smem, L, bc, nch, nvec, int(wvec_blk.sum()), hf)
                if best is None or cand[:3] < best[:3]:
                    best = cand
    over, _, smem, L, bc, nchunks, nvec, total_vec, hf = best
    plan.batch_chunk, plan.nchunks = bc, nchunks
    plan.blocks, plan.lanes, plan.smem_bytes, plan.h_float = nblk, L, smem, hf
    plan.weight_bytes = 16 * total_vec
    if over:
        plan.reason = (f"weights need {smem} bytes of shared memory per block ({nblk} blocks, "
                       f"{L} lanes per row), over the {limit} available")
        return plan, starts, nvec
    plan.persistent = True
    plan.reason = "weights fit on-chip"
    return plan, starts, nvec


def _tc_kp(H):
    """Row stride (halves) of h in the tensor-core kernel's shared memory: >= the k16-padded H and
    ≡ 16 mod 64, so a warp's 8-byte B-fragment loads (rows g = lane / 4, 8 bytes at 4·(lane % 4)) fall in
    distinct banks."""
    k16 = -(-H // 16) * 16
    return k16 + (16 - k16) % 64


def _tc_smem_bytes(kp, ntiles, warps, tiles, slots, cluster=1):
    """Mirror of rnn_tc_body's shared memory: h [1 or 2 (clusters)][NT·8][Kp] half, partial sums, k-step
    table."""
    h_bytes = (2 if cluster > 1 else 1) * ntiles * 8 * kp * 2
    return h_bytes + warps * tiles * ntiles * 512 + warps * tiles * slots * 4


def _tc_steps(rows, H, G, units, tiles):
    """Nonzero k16-steps of every (block, M-tile): unique keys (block·tiles + tile)·K16 + k-step, sorted,
    and for each nonzero of ``rows`` (CSR [G·H, H]) the index of its key."""
    k16 = -(-H // 16)
    row_of = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
    g, j = row_of // H, row_of % H
    blk, ul = j // units, j % units
    r = g * units + ul
    key = (blk * tiles + r // 16) * k16 + rows.indices.astype(np.int64) // 16
    ukey, inv = np.unique(key, return_inverse=True)
    return ukey, inv, r % 16


def _tc_plan(rows, H, G, batch, sm_count, smem_limit, config, slots=None, cluster=1, max_blocks=None):
    """RnnTcPlan for ``config`` = (threads, blocks per SM, A-register budget) from the rows of W alone;
    ``cluster`` > 1: the grid rounded up to whole clusters (the extra blocks own no units); ``max_blocks``:
    fewer co-resident blocks than SMs × blocks per SM (clusters pack into GPCs)."""
    threads, per_sm, budget = config
    Hp = _align(H, 16)                                # units up to Hp (a whole k16-step) are written
    plan = RnnTcPlan(False, "", batch, Hp, threads=threads, blocks_per_sm=per_sm)
    if batch > LAUNCH["tc_max_batch"]:
        plan.reason = f"batch {batch} over {LAUNCH['tc_max_batch']} (4 n8 tiles)"
        return plan
    warps = threads // 32
    ug = 16 // G                                      # units per 16-row tile
    cap = sm_count * per_sm if max_blocks is None else min(sm_count * per_sm, int(max_blocks))
    groups = -(-Hp // ug)                             # unit groups of one tile's rows
    units = ug * -(-groups // cap)                    # the fewest units per block that needs <= cap blocks
    nblk = -(-Hp // units)
    nblk = -(-nblk // cluster) * cluster
    tiles = -(-(G * units) // 16)
    ntiles = -(-batch // 8)
    ukey, _, _ = _tc_steps(rows, H, G, units, tiles)
    k16 = -(-H // 16)
    per_tile = np.bincount(ukey // k16, minlength=nblk * tiles) if ukey.size else np.zeros(1, np.int64)
    need = max(1, int(-(-int(per_tile.max()) // warps)))
    if slots is not None:
        if slots < need:
            raise ValueError(f"slots: expected at least {need} k-steps per warp and tile, got {slots}")
        need = int(slots)
    kp = _tc_kp(H)
    plan.blocks, plan.units, plan.tiles, plan.slots = nblk, units, tiles, need
    plan.ntiles, plan.kp, plan.cluster = ntiles, kp, cluster
    plan.a_registers = _tc_registers(tiles, need, ntiles, G)
    plan.smem_bytes = _tc_smem_bytes(kp, ntiles, warps, tiles, need, cluster)
    if units * batch > LAUNCH["items_per_thread"] * threads:
        items = LAUNCH["items_per_thread"] * threads
        plan.reason = f"batch {batch} × {units} units per block exceeds {items} pointwise items per block"
    elif nblk > cap:
        plan.reason = f"{nblk} blocks in clusters of {cluster} exceed the {cap} co-resident ones"
    elif plan.a_registers > budget:
        plan.reason = (f"A fragments and accumulators need {plan.a_registers} registers per thread ({tiles} "
                       f"tiles × {need} k-steps, {ntiles} n-tiles), over the budget of {budget} at {threads} "
                       f"threads × {per_sm} blocks per SM")
    elif plan.smem_bytes > smem_limit // per_sm - LAUNCH["smem_reserve"] - 1024:
        plan.reason = (f"shared memory {plan.smem_bytes} bytes per block over the {smem_limit // per_sm} "
                       "available")
    else:
        plan.fits, plan.reason = True, "A fragments fit in registers"
    return plan


def _tc_tables(rows, H, G, plan):
    """A fragments, k-step tables and h load ranges of rnn_persistent_tc, as NumPy arrays."""
    units, tiles, KS, warps = plan.units, plan.tiles, plan.slots, plan.threads // 32
    nblk, k16 = plan.blocks, -(-H // 16)
    ukey, inv, rr = _tc_steps(rows, H, G, units, tiles)
    group = ukey // k16
    first = np.searchsorted(group, np.arange(nblk * tiles))
    count = np.bincount(group, minlength=nblk * tiles)
    pos = np.arange(ukey.size) - first[group]
    chunk = np.maximum(-(-count // warps), 1)          # k-steps per warp of each (block, tile)
    w, slot = pos // chunk[group], pos % chunk[group]
    b_of, m_of = group // tiles, group % tiles
    kstep = np.zeros((nblk, warps, tiles, KS), dtype=np.int32)
    kstep[b_of, w, m_of, slot] = (ukey % k16) * 16
    kcount = np.zeros((nblk, warps, tiles), dtype=np.int32)
    np.add.at(kcount, (b_of, w, m_of), 1)
    # element (row rr, k) of a step -> lane (rr % 8)·4 + kk // 4, register rr // 8 + 2·(e // 2), half e % 2
    # with kk = k % 16, e = kk % 4 (the in-step k permutation of kernels/rnn.cu)
    kk = rows.indices.astype(np.int64) % 16
    e = kk % 4
    frag = np.zeros((nblk, warps, tiles, KS, 32, 4, 2), dtype=np.float16)
    lane, reg = (rr % 8) * 4 + kk // 4, rr // 8 + 2 * (e // 2)
    frag[b_of[inv], w[inv], m_of[inv], slot[inv], lane, reg, e % 2] = rows.data
    # the k-steps each block reads (any of its tiles uses)
    used = np.zeros((nblk, k16), dtype=np.int8)
    used[b_of, ukey % k16] = 1
    return {
        "afrag": frag.view(np.uint32).reshape(-1, 4),
        "kstep": kstep.reshape(-1),
        "kcount": kcount.reshape(-1),
        "kused": used,
    }


def _tc_load_ranges(tables, nblk, batch, kp, cluster=1):
    """rnn_tc_body's load_range/load_off for ``batch``: runs of consecutive k-steps a block reads (with
    clusters: the union over its cluster, the same list for every member) in every batch row of the
    [B][Kp] slot, as (first 8-value vector, count), block by block."""
    used = tables["kused"]
    if cluster > 1:
        used = np.repeat(used.reshape(nblk // cluster, cluster, -1).max(axis=1), cluster, axis=0)
    used = np.concatenate([np.zeros((nblk, 1), np.int8), used, np.zeros((nblk, 1), np.int8)], axis=1)
    edges = np.diff(used, axis=1)
    rb, rs = np.nonzero(edges == 1)
    _, re_ = np.nonzero(edges == -1)
    run = np.stack([rs, re_ - rs], axis=1)
    rows = np.arange(batch)
    first = (rows[None, :] * (kp // 8) + 2 * run[:, :1]).reshape(-1)     # [runs·B], runs of a block together
    count = np.repeat(2 * run[:, 1], batch)
    blk = np.repeat(rb, batch)
    order = np.argsort(blk, kind="stable")
    off = np.concatenate([[0], np.cumsum(np.bincount(blk, minlength=nblk))])
    return (np.stack([first[order], count[order]], axis=1).astype(np.int32).reshape(-1, 2),
            off.astype(np.int32))


def _bank_order(row_of, k, access_bytes, lane0):
    """Order of each row's nonzeros (``row_of`` sorted, ``k`` their h indices) that deals them round-robin
    over shared-memory bank classes, so the lanes that gather h[k] in the same instruction (consecutive
    nonzeros of the order) hit different banks: the seed's bank-aware weight layout. A gather of
    ``access_bytes`` at k·access_bytes is served per phase of 128 / max(access_bytes, 4) lanes; its class
    is the 4-byte bank group it starts in (for 2-byte accesses, two k that share a word broadcast).
    ``lane0``: the first lane of the nonzero's row in its warp; rows sharing a phase deal from different
    classes."""
    phase = 32 if access_bytes <= 4 else 128 // access_bytes
    if access_bytes >= 4:
        nclass = 32 // (access_bytes // 4)           # 8 bytes: 16 lanes a phase, k % 16 picks the bank pair
        cls = k % nclass
    else:
        nclass = 32
        cls = (k // 2) % 32
    cls = (cls - lane0 % phase) % nclass
    n = row_of.size
    # one stable argsort of a composite int64 key instead of multi-key lexsorts (several times faster)
    row_of = np.asarray(row_of, dtype=np.int64)
    cls = np.asarray(cls, dtype=np.int64)
    by_class = np.argsort(row_of * nclass + cls, kind="stable")    # grouped by (row, class), stable
    key = (row_of * nclass + cls)[by_class]
    first = np.ones(n, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - group_start                     # occurrence of the nonzero in its class
    return np.argsort((row_of * (n + 1) + rank) * nclass + cls, kind="stable")  # per row: rank, then class


_DEVICE_INFO: dict = {}


def _max_active_clusters(fn, plan):
    """Co-resident clusters of ``plan``'s launch (cuOccupancyMaxActiveClusters through cuda-python), or None
    when the query is not available (then only the per-SM occupancy was checked)."""
    try:
        from cuda.bindings import driver as cu

        cfg = cu.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = plan.blocks, 1, 1
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = plan.threads, 1, 1
        cfg.sharedMemBytes = plan.smem_bytes
        err, n = cu.cuOccupancyMaxActiveClusters(cu.CUfunction(fn.ptr), cfg)
        return int(n) if int(err) == 0 else None
    except Exception:  # noqa: BLE001 - no cuda-python: the per-SM check stands alone
        return None


def _check_watchdog(kernel, status, timeout_s):
    """Synchronize on the persistent kernel's status word: RuntimeError when its watchdog fired."""
    if int(status.get()[0]) != 0:
        raise RuntimeError(
            f"{kernel}: a block waited longer than the watchdog ({timeout_s} s) for h_(t-1) from "
            "another block; the result is incomplete")


def _check_gpu_dtype(dtype) -> str:
    name = dtype_name(dtype)
    if name not in _GPU_DTYPES:
        raise TypeError(f"dtype: expected one of {_GPU_DTYPES}, got {name}")
    return name


def _target(sm_count, smem_per_block):
    """(SM count, shared memory per block) to plan for: given values, else the current GPU, else an H100."""
    if sm_count is None or smem_per_block is None:
        info = H100
        try:
            info = _device_info()
        except Exception:  # noqa: BLE001 - no CuPy or no GPU: plan for an H100
            pass
        sm_count = info["sm_count"] if sm_count is None else sm_count
        smem_per_block = info["smem_per_block"] if smem_per_block is None else smem_per_block
    return int(sm_count), int(smem_per_block)


def _device_info():
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    info = _DEVICE_INFO.get(dev)
    if info is None:
        attrs = cupy.cuda.Device(dev).attributes
        info = _DEVICE_INFO[dev] = {"sm_count": int(attrs["MultiProcessorCount"]),
                                    "smem_per_block": int(attrs["MaxSharedMemoryPerBlockOptin"])}
    return info


class SparseRNN:
    """One sparse recurrent layer; ``forward(u, h0[, c0])`` runs a whole sequence.

    Args:
        weight: unstructured: W [H, G·H] as a scipy.sparse matrix or a dense NumPy/CuPy array (zeros
            pruned). Block-sparse (with ``layout``): w [nnz_blocks, b, b] as :class:`BlockSparseMatMul`.
        mode: "relu", "tanh" or "lstm" (G = 4 gates i, f, g, o; u and W carry 4·H columns).
        layout: block mask [H/b, G·H/b] (bool-like or :class:`BlockLayout`) for block-sparse W.
        block_size: b, with ``layout``.

    Hidden size H <= 65535 (fp16 rows pack a 16-bit index beside each weight).
    """

    def __init__(self, weight, mode: str = "tanh", *, layout=None, block_size: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode = mode
        self.gates = G = _gates(mode)
        if layout is not None:
            rows = self._from_blocks(weight, layout, block_size, G)
            self.kind = "block"
        else:
            if block_size is not None:
                raise ValueError("block_size: only meaningful with layout (block-sparse W)")
            rows = self._from_unstructured(weight, G)
            self.kind = "csr"
        self.hidden_size = rows.shape[1]
        if self.hidden_size > 65535:
            raise ValueError(f"weight: expected hidden size <= 65535, got {self.hidden_size}")
        self._rows = rows                      # W^T as CSR [G·H, H], float64, sorted indices
        self._plans: dict = {}
        self._gpu: dict = {}

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _from_unstructured(weight, G):
        if is_cupy(weight):
            weight = weight.get()
        if sp.issparse(weight):
            W = sp.csr_matrix(weight, dtype=np.float64)
        else:
            arr = np.asarray(weight)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"weight: expected a float array or scipy.sparse matrix, "
                                f"got dtype {arr.dtype}")
            V.check_ndim("weight", arr, 2)
            W = sp.csr_matrix(arr.astype(np.float64))
        H, GH = W.shape
        if H == 0 or GH != G * H:
            raise ValueError(f"weight: expected shape [H, {G}·H] (W of h_t = f(h_(t-1)·W + u_t)), "
                             f"got {W.shape}")
        rows = W.T.tocsr()
        rows.sum_duplicates()
        rows.sort_indices()
        return rows

    @staticmethod
    def _from_blocks(w, layout, block_size, G):
        lay = as_layout(layout)
        b = V.check_block_size(block_size if block_size is not None else 32)
        if block_size is None:
            raise ValueError("block_size: expected the block size of layout, got None")
        H, GH = lay.in_blocks * b, lay.out_blocks * b
        if GH != G * H:
            raise ValueError(f"layout: expected [H/b, {G}·H/b] blocks, got {lay.shape} (H={H}, G·H={GH})")
        if is_cupy(w):
            w = w.get()
        w = np.asarray(w)
        V.check_shape("weight", w, (lay.nnz, b, b), f"nnz_blocks={lay.nnz}, block_size={b}")
        if w.dtype.kind != "f":
            raise TypeError(f"weight: expected a float array, got dtype {w.dtype}")
        bsr = sp.bsr_matrix((w.astype(np.float64), lay.cols.astype(np.int64), lay.row_ptr.astype(np.int64)),
                            shape=(H, GH), blocksize=(b, b))
        # keep explicit zeros inside blocks: a block row is dense, its gathers contiguous
        coo = bsr.tocoo()
        rows = sp.csr_matrix((coo.data, (coo.col, coo.row)), shape=(GH, H))
        rows.sort_indices()
        return rows

    def __repr__(self):
        return (f"SparseRNN(mode={self.mode!r}, hidden_size={self.hidden_size}, kind={self.kind!r}, "
                f"nnz={self._rows.nnz}, density={self.density:.3f})")

    @property
    def density(self) -> float:
        return self._rows.nnz / (self._rows.shape[0] * self._rows.shape[1])

    def weight(self, dtype=None):
        """W [H, G·H] as scipy.sparse CSR, float64; ``dtype``: values rounded to it first (as the kernels
        hold them)."""
        W = self._rows.T.tocsr()
        if dtype is not None:
            W.data = W.data.astype(dtype).astype(np.float64)
        return W

    # ---------------------------------------------------------------------------------------------
    def plan(self, dtype="float16", batch: int = 4, *, sm_count=None, smem_per_block=None, lanes=None,
             h_float=None, tables: bool = False) -> RnnPlan:
        """How ``forward`` would run for ``dtype`` and ``batch`` (default device: the current GPU, or an
        H100 without one). ``tables`` builds the packed launch tables too (cached). ``lanes`` and
        ``h_float`` (h in shared memory as fp32; fp16 only) force a launch-table entry (benchmarks)."""
        dtype = _check_gpu_dtype(dtype)
        sm_count, smem_per_block = _target(sm_count, smem_per_block)
        key = (dtype, int(batch), int(sm_count), int(smem_per_block), lanes, h_float)
        cached = self._plans.get(key)
        if cached is not None and (cached.tables is not None or not tables or not cached.persistent):
            return cached
        H, G = self.hidden_size, self.gates
        rownnz = np.diff(self._rows.indptr).reshape(G, H)
        plan, starts, nvec = _size_plan(rownnz, H, G, dtype, int(batch), int(sm_count), int(smem_per_block),
                                        lanes, h_float)
        if plan.persistent and tables:
            # the tables depend on the batch only through (lanes, batch chunk, h type): shared by batches
            tkey = ("tables", dtype, int(sm_count), plan.lanes, plan.batch_chunk, plan.h_float)
            if tkey not in self._plans:
                self._plans[tkey] = self._tables(plan, starts, nvec)
            plan.tables = self._plans[tkey]
        if dtype == "float16" and LAUNCH["tc_default"]:
            tc = self.plan_tc(batch, sm_count=sm_count, smem_per_block=smem_per_block)
            plan.tc = tc if tc.fits else None
        self._plans[key] = plan
        return plan

    def plan_tc(self, batch: int = 4, *, sm_count=None, smem_per_block=None, config=None, slots=None,
                cluster: int = 1, max_blocks=None, tables: bool = False) -> RnnTcPlan:
        """The tensor-core kernel's plan (fp16): the first of ``LAUNCH["tc_configs"]`` that fits, else the
        last tried (``fits`` False, ``reason``). ``config`` = (threads, blocks per SM, register budget)
        forces one entry; ``slots`` forces the k-steps per warp and tile (at least what W needs; tests).
        ``cluster``: blocks per thread-block cluster for exchange="cluster" (1: none); ``max_blocks``: a
        lower co-residency limit (forward passes the cluster occupancy query's).
        ``tables`` builds the A fragments and load tables too (cached per plan)."""
        if int(batch) < 1:
            raise ValueError(f"batch: expected a positive batch size, got {batch}")
        if int(cluster) not in (1, 2, 4, 8):
            raise ValueError(f"cluster: expected 1, 2, 4 or 8 blocks (portable cluster sizes), got {cluster}")
        if config is not None and (len(config) != 3 or int(config[0]) % 32 or int(config[0]) <= 0):
            raise ValueError("config: expected (threads (a multiple of 32), blocks per SM, register "
                             f"budget), got {config!r}")
        sm_count, smem_per_block = _target(sm_count, smem_per_block)
        configs = LAUNCH["tc_configs"] if config is None else (tuple(config),)
        key = ("tc", int(batch), sm_count, smem_per_block, configs, slots, int(cluster), max_blocks)
        plan = self._plans.get(key)
        if plan is None:
            H, G = self.hidden_size, self.gates
            for cfg in configs:
                plan = _tc_plan(self._rows, H, G, int(batch), sm_count, smem_per_block, cfg, slots,
                                int(cluster), max_blocks)
                if plan.fits:
                    break
            self._plans[key] = plan
        if tables and plan.fits and plan.tables is None:
            tkey = ("tc-tables", plan.units, plan.tiles, plan.slots, plan.threads, plan.blocks)
            if tkey not in self._plans:
                self._plans[tkey] = _tc_tables(self._rows, self.hidden_size, self.gates, plan)
            plan.tables = self._plans[tkey]
        return plan

    def _tables(self, plan, starts, nvec):
        """Packed weights and the per-block tables of kernels/rnn.cu, as NumPy arrays."""
        H, G, L, dtype = self.hidden_size, self.gates, plan.lanes, plan.dtype
        Vn = _per_vector(dtype)
        rows = self._rows
        nblk = starts.size - 1
        # local row r of block b = g·units + (j − u0), in pack order; units j >= H (padding) have no rows
        spans = [(int(starts[b]), int(starts[b + 1])) for b in range(nblk)]
        g_of = np.concatenate([np.repeat(np.arange(G), b1 - b0) for b0, b1 in spans])
        j_of = np.concatenate([np.tile(np.arange(b0, b1), G) for b0, b1 in spans])
        units = np.diff(starts)
        nvec_lane = nvec[g_of, j_of].astype(np.int64)
        real = j_of < H
        gidx = np.where(real, g_of * H + np.minimum(j_of, H - 1), 0)
        s = np.where(real, rows.indptr[gidx], 0)
        e = np.where(real, rows.indptr[gidx + 1], 0)
        lens = e - s
        padded = nvec_lane * L * Vn                       # nonzeros incl. padding
        vec_per_row = nvec_lane * L
        blk_of_row = np.repeat(np.arange(nblk), units * G)
        rows_per_blk = units * G
        row_off = np.concatenate([[0], np.cumsum(rows_per_blk)])
        wvec_blk = np.bincount(blk_of_row, weights=vec_per_row, minlength=nblk).astype(np.int64)
        wvec_off = np.concatenate([[0], np.cumsum(wvec_blk)])
        # base vector of each row inside its block
        cum = np.cumsum(vec_per_row) - vec_per_row
        base = cum - wvec_off[blk_of_row]
        pstart = np.cumsum(padded) - padded               # first padded nonzero of each row
        total = int(padded.sum())
        last_k = np.where(lens > 0, rows.indices[np.maximum(e - 1, 0)] if rows.nnz else 0, 0)
        idx_full = np.repeat(last_k, padded).astype(np.int64)
        val_full = np.zeros(total, dtype=np.float64)
        nz = int(lens.sum())
        if nz:
            r_of = np.repeat(np.arange(lens.size), lens)
            within = np.arange(nz) - np.repeat(np.cumsum(lens) - lens, lens)
            src = s[r_of] + within
            # rows that share a warp start their class deal where the previous row's lanes end
            local = np.arange(padded.size) - row_off[blk_of_row]
            lane0 = (local % (LAUNCH["threads"] // L)) % max(32 // L, 1) * L
            h_bytes = 4 if plan.h_float else _itemsize(dtype)   # one h value as the gathers read it
            src = src[_bank_order(r_of, rows.indices[src], plan.batch_chunk * h_bytes, lane0[r_of])]
            i = within                                   # i-th nonzero of its row in bank order goes to
            step, lane = i // L, i % L                   # lane i % L at step i // L: vector step // V of
            dst = pstart[r_of] + ((step // Vn) * L + lane) * Vn + step % Vn   # that lane, element step % V
            idx_full[dst] = rows.indices[src]
            val_full[dst] = rows.data[src]
        if dtype == "float16":
            bits = val_full.astype(np.float16).view(np.uint16).astype(np.uint32)
            words = bits | (idx_full.astype(np.uint32) << 16)
        else:
            words = np.empty(2 * total, dtype=np.uint32)
            words[0::2] = val_full.astype(np.float32).view(np.uint32)
            words[1::2] = idx_full.astype(np.uint32)
        row_info = np.stack([base, nvec_lane], axis=1).astype(np.int32)
        # dependencies: blocks whose units this block's rows read
        block_of_unit = np.repeat(np.arange(nblk), units)
        if rows.nnz:
            row_of_nz = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            dst_blk = block_of_unit[row_of_nz % H]
            src_blk = block_of_unit[rows.indices]
            pairs = np.unique(dst_blk.astype(np.int64) * nblk + src_blk)
        else:
            pairs = np.zeros(0, dtype=np.int64)
        dep_dst, dep_src = pairs // nblk, pairs % nblk
        dep_off = np.concatenate([[0], np.cumsum(np.bincount(dep_dst, minlength=nblk))])
        # contiguous runs of dependency blocks -> 16-byte vector ranges of one h chunk, rounded outwards
        # (values outside a run may be in flight, or waited for by the sentinel kernel; no weight reads them)
        unit_bytes = plan.batch_chunk * _itemsize(dtype)
        ranges, range_off = [], [0]
        for b in range(nblk):
            deps = dep_src[dep_off[b]:dep_off[b + 1]]
            if deps.size:
                brk = np.nonzero(np.diff(deps) != 1)[0] + 1
                for run in np.split(deps, brk):
                    v0 = int(starts[run[0]]) * unit_bytes // 16
                    v1 = -(-int(starts[run[-1] + 1]) * unit_bytes // 16)
                    ranges.append((v0, v1 - v0))
            range_off.append(len(ranges))
        return {
            "wpack": words,
            "wvec_off": wvec_off.astype(np.int32),
            "row_info": row_info,
            "row_off": row_off.astype(np.int32),
            "unit_start": starts.astype(np.int32),
            "dep_off": dep_off.astype(np.int32),
            "dep_block": dep_src.astype(np.int32),
            "load_range": np.asarray(ranges, dtype=np.int32).reshape(-1, 2),
            "load_off": np.asarray(range_off, dtype=np.int32),
            "smem_wvec": int(wvec_blk.max()),
            "smem_rows": int(rows_per_blk.max()),
        }

    # ---------------------------------------------------------------------------------------------
    def forward(self, u, h0, c0=None, *, out=None, path: str = "auto", check: bool = True, lanes=None,
                exchange=None):
        """Run the recurrence over all T steps.

        u: [T, B, G·H] input projections (x_t·W_x + bias), float16|float32 (float64 on NumPy);
        h0: [B, H], c0: [B, H] or None (zeros; LSTM only), same dtype and backend as u.
        out: optional [T, B, H] array (u's dtype and backend) that receives y.
        ``path``: "auto" (float16 with ``LAUNCH["tc_default"]`` or a tensor-core exchange: the
        tensor-core persistent kernel when W's rows fit in registers as mma fragments, ``plan_tc``; else
        the sparse persistent kernel when the weights fit in shared memory, else the per-step fallback),
        "tc" (the tensor-core kernel, float16 only; ValueError when it does not fit), "persistent" (the
        sparse FFMA kernel; ValueError when it does not fit) or "fallback". ``check``: synchronize after
        the persistent kernel and raise RuntimeError if its watchdog fired (default). ``lanes``: force the
        threads per row (one of ``LAUNCH["lanes"]``; benchmarks), default the plan's choice.
        ``exchange``: "sentinel" (default: h values double as their written flags); "flags" (per-block
        step counters with release/acquire; sparse kernel only); "cluster" (sm_90: thread-block clusters
        share the copy of h_(t-1)) and "counter" (one arrival counter a step): tensor-core kernel only.
        Returns (y [T, B, H] holding h_1..h_T, c_T [B, H] for the LSTM else None), in u's dtype.
        """
        backend = backend_of(u=u, h0=h0, c0=c0, out=out)
        H, G = self.hidden_size, self.gates
        allowed = _GPU_DTYPES if backend == "cupy" else _CPU_DTYPES
        V.check_float("u", u, allowed)
        V.check_ndim("u", u, 3)
        V.check_dim("u", u, 2, G * H, f"gates={G} × hidden_size={H}")
        T, B = int(u.shape[0]), int(u.shape[1])
        if T == 0:
            raise ValueError("u: expected at least one timestep on axis 0, got 0")
        if B == 0:
            raise ValueError("u: expected a positive batch size on axis 1, got 0")
        V.check_float("h0", h0, allowed)
        V.check_same_dtype(u=u, h0=h0)
        V.check_shape("h0", h0, (B, H), f"batch={B}, hidden_size={H}")
        if c0 is not None:
            if self.mode != "lstm":
                raise ValueError(f"c0: only the LSTM has a cell state, got c0 with mode={self.mode!r}")
            V.check_float("c0", c0, allowed)
            V.check_same_dtype(u=u, c0=c0)
            V.check_shape("c0", c0, (B, H), f"batch={B}, hidden_size={H}")
        for name, arr in (("u", u), ("h0", h0), ("c0", c0)):
            if arr is not None:
                V.check_contiguous(name, arr)
        V.check_out("out", out, (T, B, H), u.dtype, backend == "cupy")
        if path not in ("auto", "tc", "persistent", "fallback"):
            raise ValueError(f"path: expected 'auto', 'tc', 'persistent' or 'fallback', got {path!r}")
        if lanes is not None and lanes not in LAUNCH["lanes"]:
            raise ValueError(f"lanes: expected one of {LAUNCH['lanes']}, got {lanes!r}")
        exchanges = tuple(dict.fromkeys(LAUNCH["exchange"] + LAUNCH["tc_exchange"]))
        if exchange is not None and exchange not in exchanges:
            raise ValueError(f"exchange: expected one of {exchanges}, got {exchange!r}")
        if backend == "numpy":
            dt = np.dtype(u.dtype)
            W = self.weight(dt)
            y, c = ref.rnn_forward(W, u, h0, c0, self.mode)
            if out is not None:
                out[...] = y
                y = out
            return y.astype(dt, copy=False), (None if c is None else c.astype(dt))
        import cupy

        dev = cupy.cuda.runtime.getDevice()
        for name, arr in (("u", u), ("h0", h0), ("c0", c0)):
            if arr is not None:
                V.check_device(name, arr, dev)
        dtype = dtype_name(u.dtype)
        tc_exchange = LAUNCH["tc_exchange"]
        if exchange in LAUNCH["tc_exchange"] and exchange != "sentinel" and path not in ("auto", "tc"):
            raise ValueError(f"exchange: {exchange!r} is the tensor-core kernel's (path 'auto' or 'tc'), "
                             f"got path {path!r}")
        if path == "tc" or (path == "auto" and dtype == "float16" and lanes is None and (
                (exchange in tc_exchange and exchange != "sentinel")
                or (LAUNCH["tc_default"] and exchange in (None, *tc_exchange)))):
            if dtype != "float16":
                raise ValueError(f"path: the tensor-core kernel runs float16 only, got {dtype}")
            if exchange not in (None, *tc_exchange):
                raise ValueError(f"exchange: the tensor-core kernel takes one of {tc_exchange}, "
                                 f"got {exchange!r}")
            ex = tc_exchange[0] if exchange is None else exchange
            tc = self.plan_tc(B, tables=True, cluster=LAUNCH["tc_cluster"] if ex == "cluster" else 1)
            if tc.fits:
                arrivals = ex if ex in ("counter", "block_flags", "group_counter") else False
                result = self._run_tc(tc, u, h0, c0, out, check=check, counter=arrivals)
                if result is None and tc.max_clusters:     # clusters pack per GPC: plan for what fits
                    fit = tc.max_clusters * tc.cluster
                    tc = self.plan_tc(B, tables=True, cluster=tc.cluster, max_blocks=fit)
                    if tc.fits:
                        result = self._run_tc(tc, u, h0, c0, out, check=check)
                if result is not None:
                    return result
            if path == "tc" or (exchange in tc_exchange and exchange != "sentinel"):
                why = tc.reason if not tc.fits else ("the planned blocks are not co-resident on this GPU, or "
                                                     "clusters without sm_90")
                raise ValueError(f"path: the tensor-core kernel cannot run this model ({why}); "
                                 "use path='auto', 'persistent' or 'fallback'")
        if exchange in tc_exchange and exchange != "sentinel":
            raise ValueError(f"exchange: {exchange!r} runs the tensor-core kernel only (float16), "
                             f"got {dtype}")
        plan = self.plan(dtype, B, tables=(path != "fallback"), lanes=lanes)
        if path == "persistent" and not plan.persistent:
            raise ValueError(f"path: the persistent kernel cannot run this model ({plan.reason}); "
                             f"use path='auto' or 'fallback'")
        if plan.persistent and path != "fallback":
            result = self._run_persistent(plan, u, h0, c0, out, check=check, exchange=exchange)
            if result is not None:
                return result
            if path == "persistent":
                raise ValueError("path: the planned blocks are not co-resident on this GPU (occupancy); "
                                 "use path='auto' or 'fallback'")
        return self._run_fallback(plan, u, h0, c0, out)

    __call__ = forward

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _pack_h0(plan, h0):
        """h0 [B, H] in the exchange slot layout [nchunks, Hp, BC], zeros in the padding."""
        import cupy

        Hp, bc, nch = plan.hidden_padded, plan.batch_chunk, plan.nchunks
        B, H = h0.shape
        hp = cupy.zeros((nch * bc, Hp), dtype=h0.dtype)
        hp[:B, :H] = h0
        return hp.reshape(nch, bc, Hp).transpose(0, 2, 1)

    def _exchange(self, plan, T, h0, sentinel):
        """[T+1, nchunks, Hp, BC] of h0's dtype with h0 in slot 0, the rest zeros or (``sentinel``, for
        the persistent kernel) the NaN pattern that marks 'not written yet' (kernels/rnn.cu RnnX)."""
        import cupy

        Hp, bc, nch = plan.hidden_padded, plan.batch_chunk, plan.nchunks
        hp = self._pack_h0(plan, h0)
        if not sentinel:
            xch = cupy.zeros((T + 1, nch, Hp, bc), dtype=h0.dtype)
        else:
            xch = cupy.empty((T + 1, nch, Hp, bc), dtype=h0.dtype)
            bits = np.uint16 if np.dtype(h0.dtype) == np.float16 else np.uint32
            xch.view(bits).fill(np.iinfo(bits).max)
        xch[0] = hp
        return xch

    def _device_tables(self, plan):
        import cupy

        key = ("persistent", id(plan), cupy.cuda.runtime.getDevice())
        tab = self._gpu.get(key)
        if tab is None:
            tab = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in plan.tables.items()}
            self._gpu[key] = tab
        return tab

    def _run_persistent(self, plan, u, h0, c0, out=None, *, check=True, grid=None, timeout_s=None, wait=True,
                        exchange=None, prof=None, poll_all=None):
        """Launch the persistent kernel (None when the planned blocks are not co-resident). ``grid``,
        ``wait=False`` (a wrong result), ``prof`` (int64 [blocks, T + 1, 4]: per-step clock64 stamps,
        kernels/rnn.cu) and ``poll_all`` (default ``LAUNCH["poll_all"][dtype]``) are sentinel-kernel
        diagnostics for tests and benchmarks."""
        import cupy
        from cupy_backends.cuda.api import driver

        T, B, _ = u.shape
        H = self.hidden_size
        exchange = LAUNCH["exchange"][0] if exchange is None else exchange
        sentinel = exchange == "sentinel"
        tab = self._device_tables(plan)
        kernel = "rnn_persistent_sentinel" if sentinel else "rnn_persistent"
        h_float = (plan.h_float or plan.dtype == "float32") if sentinel else None
        spec = _spec(kernel, plan.dtype, self.mode, plan.batch_chunk, h_float)
        smem = _smem_bytes(plan.dtype, tab["smem_wvec"], plan.hidden_padded, plan.batch_chunk, plan.nchunks,
                           tab["smem_rows"], bool(h_float))
        fn = compiler.get_function(spec, smem)
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, LAUNCH["threads"], smem)
        sm_count = _device_info()["sm_count"]
        if per_sm < 1 or plan.blocks > per_sm * sm_count:
            return None
        stream = cupy.cuda.get_current_stream()
        xch = self._exchange(plan, T, h0, sentinel=sentinel)
        y, c_out, status, timeout_s = self._persistent_outputs(u, out, timeout_s)
        null = np.uint64(0)
        c0_arg = c0 if c0 is not None else null
        c_out_arg = c_out if c_out is not None else null
        sizes = (np.int32(H), np.int32(plan.hidden_padded), np.int32(B), np.int32(T), np.int32(plan.nchunks),
                 np.int32(plan.lanes), np.int32(tab["smem_wvec"]), np.int32(tab["smem_rows"]),
                 np.int64(int(timeout_s * 1e9)))
        head = (tab["wpack"], tab["wvec_off"], tab["row_info"], tab["row_off"], tab["unit_start"])
        if sentinel:
            args = (*head, tab["load_range"], tab["load_off"], u, c0_arg, y, c_out_arg, xch, status,
                    null if prof is None else prof, *sizes, np.int32(bool(wait)),
                    np.int32(LAUNCH["poll_all"][plan.dtype] if poll_all is None else bool(poll_all)))
        else:
            flags = cupy.zeros(plan.blocks, dtype=np.int32)
            args = (*head, tab["dep_off"], tab["dep_block"], tab["load_range"], tab["load_off"], u, c0_arg, y,
                    c_out_arg, xch, flags, status, *sizes)
        fn((plan.blocks if grid is None else grid,), (LAUNCH["threads"],), args, shared_mem=smem,
           stream=stream)
        if check:
            _check_watchdog(kernel, status, timeout_s)
        return y, c_out

    @staticmethod
    def _arrivals(plan, T, mode, xp=None):
        """exchange "counter": an arrival count per step; "block_flags": a step flag per block, padded to
        whole 16-byte vectors with flags that never hold anyone up; "group_counter": [T + 1][groups] counts.
        ``xp``: the array module (CuPy by default)."""
        if xp is None:
            import cupy as xp
        if mode == "group_counter":
            return xp.zeros((T + 1) * _arrival_flag(plan, mode), dtype=np.int32)
        if mode != "block_flags":
            return xp.zeros(T + 1, dtype=np.int32)
        flags = xp.full(-(-plan.blocks // 4) * 4, np.iinfo(np.int32).max, dtype=np.int32)
        flags[:plan.blocks] = 0
        return flags

    def _persistent_outputs(self, u, out, timeout_s):
        """y [T, B, H] (``out`` or new), c_T (LSTM) or None, the watchdog status word and its timeout."""
        import cupy

        T, B, _ = u.shape
        y = cupy.empty((T, B, self.hidden_size), dtype=u.dtype) if out is None else out
        c_out = cupy.empty((B, self.hidden_size), dtype=u.dtype) if self.mode == "lstm" else None
        if timeout_s is None:
            timeout_s = float(os.environ.get("CUSPARSEBLOCKS_RNN_TIMEOUT_S", "30"))
        return y, c_out, cupy.zeros(1, dtype=np.int32), timeout_s

    def _run_tc(self, plan, u, h0, c0, out=None, *, check=True, grid=None, timeout_s=None, wait=True,
                prof=None, counter=False):
        """Launch rnn_persistent_tc (None when the planned blocks are not co-resident). ``counter``: True or
        "counter" (per-step arrival counters instead of sentinel polling), "block_flags" (a step flag per
        block), "group_counter" (per-step counters of groups of blocks); not with clusters.
        ``grid``, ``wait=False`` and ``prof`` as ``_run_persistent`` (diagnostics)."""
        import cupy
        from cupy_backends.cuda.api import driver

        T, B, _ = u.shape
        H, Hp = self.hidden_size, plan.hidden_padded
        if plan.cluster > 1 and int(compiler.device_arch()[3:]) < 90:
            return None                                    # thread-block clusters: sm_90 and later
        key = ("tc", id(plan.tables), B, plan.cluster, cupy.cuda.runtime.getDevice())
        tab = self._gpu.get(key)
        if tab is None:
            tab = {k: cupy.asarray(plan.tables[k]) for k in ("afrag", "kstep", "kcount")}
            ranges, off = _tc_load_ranges(plan.tables, plan.blocks, B, plan.kp, plan.cluster)
            tab.update(load_range=cupy.asarray(ranges), load_off=cupy.asarray(off))
            self._gpu[key] = tab
        fn = compiler.get_function(_tc_spec(self.mode, *plan.spec_args, plan.cluster), plan.smem_bytes)
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, plan.threads, plan.smem_bytes)
        if per_sm < 1 or plan.blocks > per_sm * _device_info()["sm_count"]:
            return None
        if plan.cluster > 1:
            clusters = _max_active_clusters(fn, plan)
            if clusters is not None and clusters * plan.cluster < plan.blocks:
                plan.max_clusters = clusters
                return None
        xch = cupy.empty((T + 1, B, plan.kp), dtype=u.dtype)
        xch.view(np.uint16).fill(0xFFFF)
        xch[0] = 0
        xch[0, :, :H] = h0
        y, c_out, status, timeout_s = self._persistent_outputs(u, out, timeout_s)
        null = np.uint64(0)
        args = (tab["afrag"], tab["kstep"], tab["kcount"], tab["load_range"], tab["load_off"], u,
                c0 if c0 is not None else null, y, c_out if c_out is not None else null, xch, status,
                null if prof is None else prof, np.int32(H), np.int32(Hp), np.int32(plan.kp),
                np.int32(plan.units), np.int32(B), np.int32(T), np.int64(int(timeout_s * 1e9)),
                np.int32(bool(wait)), self._arrivals(plan, T, counter) if counter else null,
                np.int32(plan.blocks), np.int32(_arrival_flag(plan, counter)))
        fn((plan.blocks if grid is None else grid,), (plan.threads,), args, shared_mem=plan.smem_bytes,
           stream=cupy.cuda.get_current_stream())
        if check:
            _check_watchdog("rnn_persistent_tc", status, timeout_s)
        return y, c_out

    def _run_fallback(self, plan, u, h0, c0, out=None):
        import cupy

        T, B, _ = u.shape
        H, G = self.hidden_size, self.gates
        dtype = plan.dtype
        key = ("fallback", dtype, cupy.cuda.runtime.getDevice())
        csr = self._gpu.get(key)
        if csr is None:
            rows = self._rows
            csr = (cupy.asarray(rows.indptr.astype(np.int64)), cupy.asarray(rows.indices.astype(np.int32)),
                   cupy.asarray(rows.data.astype(dtype)))
            self._gpu[key] = csr
        fn = compiler.get_function(_spec("rnn_step", dtype, self.mode, plan.batch_chunk))
        Hp, nch = plan.hidden_padded, plan.nchunks
        xch = self._exchange(plan, T, h0, sentinel=False)
        y = cupy.empty((T, B, H), dtype=u.dtype) if out is None else out
        c_out = cupy.empty((B, H), dtype=u.dtype) if self.mode == "lstm" else None
        c = (c0.astype(np.float32) if c0 is not None else cupy.zeros((B, H), np.float32)) \
            if self.mode == "lstm" else cupy.zeros(1, np.float32)
        stream = cupy.cuda.get_current_stream()
        grid = (-(-H // (LAUNCH["step_threads"] // 32)),)
        null = np.uint64(0)

        def launch(s):
            for t in range(T):
                args = (csr[0], csr[1], csr[2], xch[t], xch[t + 1], u[t], c, y[t],
                        c_out if (c_out is not None and t == T - 1) else null,
                        np.int32(H), np.int32(Hp), np.int32(B), np.int32(nch))
                fn(grid, (LAUNCH["step_threads"],), args, stream=s)

        del G
        side = cupy.cuda.Stream(non_blocking=True)   # captured, not run: the graph runs on `stream`
        try:
            side.begin_capture()
        except Exception:  # noqa: BLE001 - no graph capture here: launch the steps directly
            launch(stream)
            return y, c_out
        try:
            launch(side)
        finally:
            graph = side.end_capture()
        graph.launch(stream=stream)
        stream.synchronize()                       # the graph is freed on return
        return y, c_out


# ---------------------------------------------------------------------------------------------------
def max_hidden_size(dtype="float16", density: float = 0.3, batch: int = 4, mode: str = "tanh", *,
                    sm_count=None, smem_per_block=None) -> int:
    """Largest hidden size H (a multiple of 8) whose unstructured W of ``density`` fits on-chip for the
    persistent kernel, for ``dtype``, ``batch`` and ``mode``, with every row holding density·H nonzeros.
    A random pattern's spread of row lengths needs a little more shared memory, so the largest random W
    that fits can be ~1% smaller: ``SparseRNN.plan`` on the actual W decides. Weights live in shared
    memory only (not registers). Default device: the current GPU, or an H100 (132 SMs, 227 KiB per block)
    without one. H100, batch 4: fp16 4880 / 8320 / 11528 and fp32 3432 / 5808 / 8008 at density
    0.3 / 0.1 / 0.05."""
    dtype = _check_gpu_dtype(dtype)
    if not 0 < density <= 1:
        raise ValueError(f"density: expected a value in (0, 1], got {density}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    sm_count, smem_per_block = _target(sm_count, smem_per_block)
    G = _gates(mode)

    def fits(H):
        rownnz = np.full((G, H), max(1, int(round(density * H))), dtype=np.int64)
        return _size_plan(rownnz, H, G, dtype, batch, sm_count, smem_per_block)[0].persistent

    lo, hi = 0, 65528 // 8
    while lo < hi:                       # largest multiple of 8 that fits (fit is monotone in H)
        mid = (lo + hi + 1) // 2
        if fits(8 * mid):
            lo = mid
        else:
            hi = mid - 1
    return 8 * lo


def random_weights(rng, hidden_size, density, mode="tanh", *, block_size=None, scale=0.9):
    """A random sparse W [H, G·H] (``block_size``: block-sparse, returns (layout mask, w)) with spectral
    scale about ``scale`` (values N(0, scale²/nonzeros per column))."""
    G = _gates(mode)
    H = hidden_size
    if block_size is None:
        W = sp.random(H, G * H, density=density, format="csr", random_state=rng,
                      data_rvs=lambda n: rng.standard_normal(n))
        W.data *= scale / np.sqrt(max(density * H, 1))
        return W
    mask = rng.random((H // block_size, G * H // block_size)) < density
    mask[np.arange(H // block_size), np.arange(H // block_size)] = True
    nnz = int(mask.sum())
    w = rng.standard_normal((nnz, block_size, block_size)) * scale / np.sqrt(max(density * H, 1))
    return mask, w


def self_check(backend: str = "numpy", seed: int = 0, exchange=None, paths=None):
    """Quick random check of every mode and sparsity kind against the float64 reference.

    ``backend``: "numpy" (the reference path against a dense-W recurrence) or "cupy" (the GPU kernels,
    tensor-core (float16), persistent and fallback, in float32 and float16; ``exchange`` as in
    ``forward``; ``paths``: only these GPU paths, e.g. ("tc",) under compute-sanitizer). Returns rows
    (name, rel_err, passed).
    """
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend: expected 'numpy' or 'cupy', got {backend!r}")
    rng = np.random.default_rng(seed)
    rows = []
    tol = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3}
    for mode in MODES:
        G = _gates(mode)
        for kind in ("csr", "block"):
            H = 96 if kind == "block" else 77
            if kind == "block":
                mask, w = random_weights(rng, H, 0.3, mode, block_size=16)
                rnn = SparseRNN(w, mode, layout=mask, block_size=16)
            else:
                rnn = SparseRNN(random_weights(rng, H, 0.3, mode), mode)
            T, B = 6, 3
            u64 = rng.standard_normal((T, B, G * H)) * 0.5
            h64 = rng.standard_normal((B, H)) * 0.5
            c64 = rng.standard_normal((B, H)) * 0.5 if mode == "lstm" else None
            if backend == "numpy":
                y, c = rnn.forward(u64, h64, c64)
                yr, cr = _dense_recurrence(rnn.weight().toarray(), u64, h64, c64, mode)
                err = _rel(y, yr) if c is None else max(_rel(y, yr), _rel(c, cr))
                rows.append((f"{mode}/{kind}/float64/reference", err, err <= tol["float64"]))
                continue
            import cupy

            for dtype in ("float32", "float16"):
                W = rnn.weight(dtype)
                rd = np.float16 if dtype == "float16" else None
                u, h0 = u64.astype(dtype), h64.astype(dtype)
                c0 = None if c64 is None else c64.astype(dtype)
                yr, cr = ref.rnn_forward(W, u, h0, c0, mode, round_dtype=rd)
                for path in (("tc",) if dtype == "float16" else ()) + ("persistent", "fallback"):
                    # "flags" is the sparse kernel's exchange, "cluster" the tensor-core kernel's
                    tc_only = exchange in LAUNCH["tc_exchange"] and exchange != "sentinel"
                    if (exchange == "flags" and path == "tc") or (tc_only and path != "tc"):
                        continue
                    if paths and path not in paths:
                        continue
                    c0d = None if c0 is None else cupy.asarray(c0)
                    y, c = rnn.forward(cupy.asarray(u), cupy.asarray(h0), c0d, path=path, exchange=exchange)
                    y = y.get().astype(np.float64)
                    err = _rel(y, yr) if c is None else max(_rel(y, yr), _rel(c.get().astype(np.float64), cr))
                    ok = bool(np.isfinite(err) and err <= tol[dtype])
                    rows.append((f"{mode}/{kind}/{dtype}/{path}", err, ok))
    return rows


def _rel(a, r):
    a, r = np.asarray(a, dtype=np.float64), np.asarray(r, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))


def _dense_recurrence(W, u, h0, c0, mode):
    """An independent dense loop (the reference path runs scipy.sparse): self_check's NumPy baseline."""
    H = h0.shape[1]
    h, c = h0.copy(), (np.zeros_like(h0) if c0 is None else c0.copy())
    ys = []
    for t in range(u.shape[0]):
        z = h @ W + u[t]
        if mode == "relu":
            h = np.maximum(z, 0)
        elif mode == "tanh":
            h = np.tanh(z)
        else:
            sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
            c = sig(z[:, H:2 * H]) * c + sig(z[:, :H]) * np.tanh(z[:, 2 * H:3 * H])
            h = sig(z[:, 3 * H:]) * np.tanh(c)
        ys.append(h)
    return np.stack(ys), (c if mode == "lstm" else None)
