"""Column statistics in one pass over memory (sm_90): the host side of ``kernels/ew_cols.cu``.

Layer norm with features first, batch norm with features last (training) and the weight norm per output
unit compute statistics per column of a row-major array. The 3-pass path of :mod:`cusparseblocks.ops`
(reduce, finalize, apply) reads the input twice; here a thread-block cluster holds a column tile of all
rows in its shared memory, so each input byte crosses DRAM once (fwd: read x, write y; bwd: read x, dy,
write dx). It applies when the tile fits (:func:`cols_plan`, :func:`wn_plan`), the GPU is compute
capability 9.x, pointers are 16-byte aligned and rows are a whole number of 16-byte vectors; otherwise
each entry point returns None and the caller runs its 3-pass path.

Cached: launch plans per (device, shape, dtype) in ``_PLANS``; loaded functions in ``_FUNCS``; the
largest block column of a layout in ``_WN_MAX``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import compiler
from ._array import dtype_name

_CTYPE = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
_SOURCE = "ew_cols.cu"

THREADS = 256  # kernels/ew_cols.cu THREADS
MAX_COLS = 64  # kernels/ew_cols.cu MAXW: columns per tile
# compiled cluster sizes: 8 is the portable maximum; 16 (sm_90's maximum) is non-portable and needs the
# function's attribute, used only when LAUNCH["cols1"]["max_cluster"] allows it
CLUSTERS = (1, 2, 4, 8, 16)
# Shared memory a block may use: 227 KiB on sm_90 (opt-in) less the kernels' ~5 KiB of static arrays.
MAX_SMEM = 227 * 1024 - 6 * 1024

# Launch table (a benchmark may set entries; clear _PLANS after a change):
#   mode: "auto" (one pass when a tile fits max_bytes), "single" (one pass whenever a tile fits in MAX_SMEM:
#     the tests' force flag), "fallback" (never: the 3-pass path);
#   row_bytes: tile widths to try, in order (bytes of one row of a column tile: 128 = 8 vectors a row);
#   cta_bytes: the preferred shared memory per block, tiers tried in order with every width and cluster
#     size (72 KiB: 3 blocks per SM, 112 KiB: 2); then max_bytes (1 block per SM);
#   max_cluster: the largest cluster size to use (8 portable; 16 on sm_90 with the non-portable attribute,
#     lowered to 8 on a device that refuses it);
#   tiles_per_cluster: column tiles one cluster walks in turn (cols_fwd, cols_bwd), the next tile's loads in
#     flight while the current one is reduced and stored (two shared-memory buffers when above 1).
#   bwd_regs: the backward holds x in registers and dy in shared memory (cols_bwd_rx, 128-byte rows, 2 blocks
#     an SM) where a cluster's blocks hold all rows that way (rx_plan), one tile a cluster; else cols_bwd.
#   group_tall: arrays too tall for a cluster of 128-byte rows (at the first cta_bytes tier; cols_bwd_rx's 512
#     rows a block) split each column tile over several clusters ("column groups", at most max_groups), which
#     add their sums through global memory (cols_fwd, cols_bwd_rx: persistent, at most the co-resident
#     clusters); taken before narrower rows. False: narrower rows, then one block an SM, then the 3-pass path.
#   keep: the tall-array kernels (cols_keep_fwd / cols_keep_bwd, keep_plan): "auto" where no cluster holds a
#     column tile of 128-byte rows (the plan would take column groups, narrower rows or the 3-pass path),
#     "always" wherever keep_plan has a plan (the tests' force flag), "never".
#   keep_defines: -D defines of the cols_keep kernels ((name, value) pairs: KP_U, KP_HINTS;
#     bench/keep_diag.py).
LAUNCH = {
    "cols1": {
        "mode": "auto",
        "row_bytes": (128, 64, 32),
        "cta_bytes": (72 * 1024, 112 * 1024),
        "max_bytes": MAX_SMEM,
        "max_cluster": 16,
        "tiles_per_cluster": 1,
        "bwd_regs": True,
        "group_tall": True,
        "max_groups": 64,
        "keep": "auto",
        "keep_defines": (),
    }
}
# cols_bwd_rx (the backward with x in registers): RX_ROWS rows of x a thread (RX_REG of them in registers),
# rows of RX_VPR 16-byte vectors (128 bytes) on clusters of any size; narrower rows (RX_NARROW: 64 and 32
# bytes) only on clusters of 16, for arrays too tall for 128-byte rows (past 8192 rows: up to 16384, 32768)
RX_VPR, RX_ROWS, RX_REG = 8, 16, 12  # kernels/ew_cols.cu
RX_NARROW = (4, 2)


def rx_max_rows(vpr: int) -> int:
    """Rows a block of cols_bwd_rx holds with rows of ``vpr`` 16-byte vectors (kernels/ew_cols.cu)."""
    return RX_ROWS * THREADS // vpr


@dataclasses.dataclass(frozen=True)
class ColsPlan:
    """One-pass launch: clusters of ``cluster`` blocks over column tiles of ``width`` columns
    (``row_bytes`` bytes a row, ``vpr`` 16-byte vectors), ``rows_per_cta`` rows per block, ``smem`` bytes
    of dynamic shared memory per block, ``tiles`` tiles, up to ``per_cluster`` of them per cluster
    (grid = ceil(tiles / per_cluster) × cluster blocks). ``groups`` > 1: each tile's rows split over that
    many clusters (column groups), the grid persistent (:meth:`persistent_grid`)."""

    cluster: int
    row_bytes: int
    vpr: int
    width: int
    rows_per_cta: int
    tiles: int
    smem: int
    per_cluster: int = 1
    groups: int = 1

    @property
    def grid(self) -> int:
        return math.ceil(self.tiles / self.per_cluster) * self.cluster * self.groups

    def persistent_grid(self, max_clusters: int) -> int:
        """Blocks of a launch with column groups on a GPU where ``max_clusters`` clusters are co-resident
        (0 when fewer than ``groups``): whole groups of clusters, at most one group a tile."""
        walkers = min(self.tiles, max_clusters // self.groups)
        return walkers * self.groups * self.cluster


def _clusters(cfg, cap=16):
    return [cs for cs in CLUSTERS if cs <= min(cfg["max_cluster"], cap)]


def _budgets(mode, cta_bytes, max_bytes):
    if mode not in ("auto", "single", "fallback"):
        raise ValueError(f"mode: expected 'auto', 'single' or 'fallback', got {mode!r}")
    if mode == "fallback":
        return ()
    tiers = tuple(cta_bytes) if isinstance(cta_bytes, (tuple, list)) else (cta_bytes,)
    return (*tiers, MAX_SMEM if mode == "single" else min(max_bytes, MAX_SMEM))


def cols_plan(
    R: int,
    C: int,
    itemsize: int,
    tensors: int = 1,
    *,
    cc_major: int = 9,
    mode: str | None = None,
    row_bytes=None,
    cta_bytes=None,
    max_bytes: int | None = None,
    per_cluster: int | None = None,
    max_cluster: int = 16,
    row_params: int = 0,
    groups: bool = True,
) -> ColsPlan | None:
    """The one-pass plan for statistics per column of [R, C] (``tensors`` inputs held on chip: 1 forward,
    2 backward), or None (3-pass path). Pure: no GPU needed. ``row_params``: bytes a row of per-row
    parameters a block also holds (cols_fwd with a gain or bias per row: 8).

    Tries each tile width of ``row_bytes`` in order and the smallest cluster whose blocks fit
    ``cta_bytes``, then the same up to ``max_bytes`` (mode "single": MAX_SMEM). None when ``mode`` is
    "fallback", the GPU is not compute capability 9.x, C is not a whole number of 16-byte vectors, or
    no tile fits. ``per_cluster`` > 1 (tiles_per_cluster) doubles the shared memory when a
    cluster gets more than one tile. The forward (``tensors`` 1) takes column groups of 128-byte rows
    (:func:`_grouped_plan`) over narrower rows or none, unless ``groups`` is False. Defaults: LAUNCH["cols1"].
    """
    cfg = LAUNCH["cols1"]
    mode = mode or cfg["mode"]
    row_bytes = row_bytes or cfg["row_bytes"]
    per_cluster = max(1, per_cluster or 1)
    budgets = _budgets(mode, cta_bytes or cfg["cta_bytes"], max_bytes or cfg["max_bytes"])
    lanes = 16 // itemsize
    if cc_major != 9 or R < 1 or C < 1 or C % lanes or R >= 2**31:
        return None
    plan = None
    for budget in budgets:
        for rb in row_bytes:
            vpr = rb // 16
            if vpr < 1 or vpr & (vpr - 1) or rb // itemsize > MAX_COLS:
                continue
            width = rb // itemsize
            tiles = math.ceil(C / width)
            buffers = 2 if math.ceil(tiles / per_cluster) < tiles else 1
            for cs in _clusters(cfg, max_cluster):
                rows = math.ceil(R / cs)
                smem = rows * rb * tensors * buffers + -(-rows * row_params // 16) * 16
                if smem <= budget and plan is None:
                    plan = ColsPlan(cs, rb, vpr, width, rows, tiles, smem, per_cluster if buffers == 2 else 1)
    wide = plan is not None and plan.row_bytes >= 128
    if groups and tensors == 1 and not wide and budgets and _clusters(cfg, max_cluster):
        grouped = _grouped_plan(R, C, itemsize, budgets[0], row_params, _clusters(cfg, max_cluster)[-1])
        if grouped is not None:
            return grouped
    return plan


def _grouped_plan(R, C, itemsize, budget, row_params, cs):
    """cols_fwd with column groups (LAUNCH["cols1"]["group_tall"]): 128-byte rows, clusters of ``cs``, blocks
    of at most ``budget`` bytes (one buffer), the fewest groups (at least 2) that hold R rows; None when off,
    128-byte rows are wider than MAX_COLS columns, or more than max_groups groups are needed."""
    cfg = LAUNCH["cols1"]
    rb = 128
    if not cfg["group_tall"] or rb // itemsize > MAX_COLS:
        return None

    def smem(rows):
        return rows * rb + -(-rows * row_params // 16) * 16

    cap = budget // (rb + row_params)
    while cap > 0 and smem(cap) > budget:
        cap -= 1
    if cap < 1:
        return None
    groups = max(2, math.ceil(R / (cs * cap)))
    if groups > cfg["max_groups"] or R < groups * cs:
        return None
    rows = math.ceil(R / (groups * cs))
    tiles = math.ceil(C * itemsize / rb)
    return ColsPlan(cs, rb, rb // 16, rb // itemsize, rows, tiles, smem(rows), 1, groups)


def rx_plan(R: int, C: int, itemsize: int, *, cc_major: int = 9, mode: str | None = None,
            max_cluster: int = 16, groups: bool = True) -> ColsPlan | None:
    """The plan of the backward with x in registers (cols_bwd_rx), or None (then :func:`cols_plan`): 128-byte
    rows and the smallest cluster whose blocks hold at most rx_max_rows(RX_VPR) = 512 rows each; else (more
    than 16 · 512 rows) clusters of 16 with 64- or 32-byte rows (1024 or 2048 rows a block); dy's slice in
    shared memory.
    With LAUNCH["cols1"]["group_tall"] (and ``groups``), arrays past 16 · 512 rows take column groups of
    128-byte rows before the narrower rows. None unless LAUNCH["cols1"]["bwd_regs"], one tile a cluster and
    the conditions of :func:`cols_plan`. Pure."""
    cfg = LAUNCH["cols1"]
    mode = mode or cfg["mode"]
    if not _budgets(mode, cfg["cta_bytes"], cfg["max_bytes"]) or not cfg["bwd_regs"]:
        return None
    if cfg["tiles_per_cluster"] > 1 or cc_major != 9 or R < 1 or C < 1 or C % (16 // itemsize) or R >= 2**31:
        return None

    def smem(rows, vpr):
        return (rows + max(0, rows - RX_REG * THREADS // vpr)) * vpr * 16  # dy, x's rows past the registers

    for vpr in (RX_VPR, *RX_NARROW):
        rb = vpr * 16
        for cs in _clusters(cfg, max_cluster):
            rows = math.ceil(R / cs)
            if (vpr == RX_VPR or cs == 16) and rows <= rx_max_rows(vpr):
                tiles = math.ceil(C * itemsize / rb)
                return ColsPlan(cs, rb, vpr, rb // itemsize, rows, tiles, smem(rows, vpr))
        if vpr == RX_VPR and groups and cfg["group_tall"] and _clusters(cfg, max_cluster):  # before narrower
            cs = _clusters(cfg, max_cluster)[-1]
            groups = math.ceil(R / (cs * rx_max_rows(vpr)))
            if groups <= cfg["max_groups"]:
                rows = math.ceil(R / (groups * cs))
                tiles = math.ceil(C * itemsize / rb)
                return ColsPlan(cs, rb, vpr, rb // itemsize, rows, tiles, smem(rows, vpr), 1, groups)
    return None


# cols_keep_fwd / cols_keep_bwd (kernels/ew_cols.cu): 128-byte rows; 2 blocks an SM, each keeping at most
# KEEP_SMEM bytes of rows in shared memory (x; x and dy backward) next to its ~6.5 KiB of static arrays.
KP_VPR, KP_STEP = 8, THREADS // 8
KEEP_SMEM = 104 * 1024


@dataclasses.dataclass(frozen=True)
class KeepPlan:
    """Tall arrays in one launch (cols_keep_*): ``tiles`` column tiles of 128-byte rows, ``bpt`` blocks a tile
    (grid tiles × bpt, all co-resident) with ``rows_per_cta`` rows each, of which the first ``keep`` stay in
    ``smem`` bytes of shared memory and the rest are read twice (the second time from L2 where it kept
    them)."""

    tiles: int
    bpt: int
    rows_per_cta: int
    keep: int
    smem: int

    @property
    def grid(self) -> int:
        return self.tiles * self.bpt

    @property
    def kept(self) -> float:
        """The fraction of the rows kept on chip (the rest are read twice)."""
        return min(1.0, self.keep / self.rows_per_cta)


def _keep_cap(tensors: int, keep_bytes: int) -> int:
    """Rows a block of the cols_keep kernels keeps in ``keep_bytes`` of shared memory (whole KP_STEPs)."""
    return keep_bytes // (KP_VPR * 16 * tensors) // KP_STEP * KP_STEP


def keep_plan(R: int, C: int, itemsize: int, tensors: int, blocks: int, *, cc_major: int = 9,
              keep_bytes: int = KEEP_SMEM) -> KeepPlan | None:
    """The tall-array plan of [R, C] (``tensors`` 1 forward, 2 backward) on a GPU where ``blocks`` blocks of
    the kernel are co-resident, or None: not compute capability 9.x, C not a whole number of 16-byte vectors,
    or more column tiles than blocks. Pure."""
    lanes = 16 // itemsize
    if cc_major != 9 or R < 1 or C < 1 or C % lanes or R >= 2**31 or blocks < 1:
        return None
    rb = KP_VPR * 16
    tiles = math.ceil(C * itemsize / rb)
    bpt = blocks // tiles
    if bpt < 1:
        return None
    rows = math.ceil(R / bpt)
    bpt = math.ceil(R / rows)
    keep = min(rows, _keep_cap(tensors, keep_bytes))
    return KeepPlan(tiles, bpt, rows, keep, keep * rb * tensors)


# "auto" takes the tall-array kernels only where their blocks keep at least this fraction of the rows on
# chip (H100, bench/keep_diag.py: at 0.11, float32 backwards of 128 MiB, they tied or lost to the 3-pass
# path by 2-3 points of the copy; at 0.21 and above they won by 4-35 points)
KEEP_MIN = 0.15


def _keep_wanted(plan, kp=None) -> bool:
    """LAUNCH["cols1"]["keep"]: "auto" takes the tall-array kernels (``kp``: their plan, None before it is
    made) over ``plan`` (the cluster plan after the column-group choice; None: the 3-pass path) where that
    is the 3-pass path, narrower rows than 128 bytes or one block an SM, and ``kp`` keeps at least KEEP_MIN
    of the rows on chip. Column groups of 128-byte rows stay (H100: 3-14 points faster at [16384, 2048] and
    [32768, 1024]; bench/NOTES.md, thirteenth session)."""
    cfg = LAUNCH["cols1"]
    mode = cfg["keep"]
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"keep: expected 'auto', 'always' or 'never', got {mode!r}")
    if mode != "auto":
        return mode == "always"
    tiers = cfg["cta_bytes"] if isinstance(cfg["cta_bytes"], (tuple, list)) else (cfg["cta_bytes"],)
    if plan is not None and plan.row_bytes >= 128 and plan.smem <= max(tiers):
        return False
    return kp is None or kp.kept >= KEEP_MIN


@dataclasses.dataclass(frozen=True)
class WnPlan:
    """One-pass weight norm per unit: a cluster of ``cluster`` blocks per block column, ``bpc`` blocks of
    w per block (``smem`` bytes with their col_order entries), ``vpr`` 16-byte vectors per block row."""

    cluster: int
    bpc: int
    vpr: int
    smem: int


def wn_plan(
    max_blocks: int,
    b: int,
    itemsize: int,
    tensors: int = 1,
    *,
    cc_major: int = 9,
    mode: str | None = None,
    cta_bytes=None,
    max_bytes: int | None = None,
    max_cluster: int = 16,
) -> WnPlan | None:
    """The one-pass plan for the weight norm per unit of w [nnz, b, b] whose largest block column holds
    ``max_blocks`` blocks, or None (the 2-kernel path). Pure. Needs b a power of two with b·itemsize a
    multiple of 16 bytes and b <= 64 columns; the smallest cluster whose blocks fit (budgets as
    :func:`cols_plan`)."""
    cfg = LAUNCH["cols1"]
    budgets = _budgets(mode or cfg["mode"], cta_bytes or cfg["cta_bytes"], max_bytes or cfg["max_bytes"])
    rb = b * itemsize
    if cc_major != 9 or b < 1 or b & (b - 1) or rb % 16 or b > MAX_COLS:
        return None
    block_bytes = b * rb * tensors
    for budget in budgets:
        for cs in _clusters(cfg, max_cluster):
            bpc = max(1, math.ceil(max_blocks / cs))
            smem = bpc * block_bytes + _ord_bytes(bpc)
            if smem <= budget:
                return WnPlan(cs, bpc, rb // 16, smem)
    return None


def _ord_bytes(bpc: int) -> int:
    """wn_unit's copy of a block's col_order entries (after the tiles in shared memory), 16-byte aligned."""
    return -(-4 * bpc // 16) * 16


def _specializations():
    for ctype in _CTYPE.values():
        for cs in CLUSTERS:
            yield compiler.KernelSpec(_SOURCE, f"cols_fwd<{ctype}, {cs}, false>")
            if cs >= 8:  # column groups: on the largest cluster (16, or 8 where refused or more co-resident)
                yield compiler.KernelSpec(_SOURCE, f"cols_fwd<{ctype}, {cs}, true>")
            for name in ("cols_bwd", "wn_unit"):
                yield compiler.KernelSpec(_SOURCE, f"{name}<{ctype}, {cs}>")
            for ln in ("false", "true"):  # batch norm (gain per column), layer norm (gain per row, row sums)
                for vpr in (RX_VPR, *RX_NARROW) if cs == 16 else (RX_VPR,):  # rx_plan's row widths
                    yield compiler.KernelSpec(_SOURCE, f"cols_bwd_rx<{ctype}, {cs}, {ln}, {vpr}, false>")
                if cs >= 8:  # column groups: 128-byte rows on the largest cluster (16, or 8 where refused)
                    yield compiler.KernelSpec(_SOURCE, f"cols_bwd_rx<{ctype}, {cs}, {ln}, {RX_VPR}, true>")
        yield compiler.KernelSpec(_SOURCE, f"cols_keep_fwd<{ctype}>")
        for ln in ("false", "true"):
            yield compiler.KernelSpec(_SOURCE, f"cols_keep_bwd<{ctype}, {ln}>")


compiler.register_family("ew_cols", _specializations)


# kernels/cols_probe.cu (bench/cols_probe.py's access-pattern probes, never launched by the library): rows
# (name, (NIN, VPR, CS, NR, MODE, MINB)); registered so that the source is compiled and checked for spills.
PROBES = (
    ("fwd 128B", (1, 8, 16, 0, 0, 3)),
    ("fwd 128B bar", (1, 8, 16, 0, 1, 3)),
    ("fwd 128B no cluster", (1, 8, 1, 0, 0, 3)),
    ("fwd 64B bar", (1, 4, 16, 0, 1, 3)),
    ("fwd 256B bar", (1, 16, 16, 0, 1, 1)),
    ("fwd 128B regs bar", (1, 8, 16, 16, 1, 2)),
    ("bwd 64B", (2, 4, 16, 0, 0, 3)),
    ("bwd 64B bar", (2, 4, 16, 0, 1, 3)),
    ("bwd 64B no cluster", (2, 4, 1, 0, 0, 3)),
    ("bwd 128B bar", (2, 8, 16, 0, 1, 1)),
    ("bwd 128B regs", (2, 8, 16, 16, 0, 2)),
    ("bwd 128B regs bar", (2, 8, 16, 16, 1, 2)),
    ("bwd 64B regs bar", (2, 4, 16, 8, 1, 3)),
    ("bwd 128B regs12 bar", (2, 8, 16, 12, 1, 2)),  # cols_bwd_rx's split: 12 rows of x in registers, 4 shared
    ("fwd 256B regs16 bar", (1, 16, 16, 16, 1, 2)),
    ("fwd 256B regs12 bar", (1, 16, 16, 12, 1, 2)),
    ("fwd 128B regs8 bar", (1, 8, 16, 8, 1, 3)),
)


def probe_name(cfg) -> str:
    return "cols_probe<{}, {}, {}, {}, {}, {}>".format(*cfg)


compiler.register_family(
    "cols_probe", lambda: (compiler.KernelSpec("cols_probe.cu", probe_name(cfg)) for _, cfg in PROBES)
)


# ---------------------------------------------------------------------------------------------------
# GPU dispatch

_CACHES = ("_PLANS", "_FUNCS", "_CC", "_WN_MAX", "_CLUSTERS_MAX", "_KEEP_BLOCKS")
_PLANS: dict = {}
_FUNCS: dict = {}
_NO_CLUSTER16: set = set()  # devices that refused a cluster of 16 (smaller GPCs, MIG): 8 at most there
_NO_COOP: set = set()  # devices whose driver refused a cooperative launch of a kernel with clusters
_NO_GROUPS: set = set()  # plan keys whose column groups the GPU cannot hold at once: planned without them
_CLUSTERS_MAX: dict = {}  # _max_active_clusters
_KEEP_BLOCKS: dict = {}  # _keep_blocks
_GROUPED = ("cols_fwd", "cols_bwd_rx")  # the kernels with column groups
_SMEM_SET: dict = {}  # (device, spec): attributes set on the function, the dynamic limit (never cleared)
_CC: dict = {}
_WN_MAX: dict = {}
_NULL = np.uint64(0)
_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_PREFERRED_CARVEOUT = 9  # CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT (percent of the maximum)
_NON_PORTABLE_CLUSTER = 14  # CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED


def _cc_major(dev) -> int:
    major = _CC.get(dev)
    if major is None:
        import cupy

        major = _CC[dev] = int(cupy.cuda.Device(dev).compute_capability) // 10
    return major


def _plan_key(kind, dtype, *sizes):
    import cupy

    return (kind, cupy.cuda.runtime.getDevice(), dtype, sizes)


def _plan(kind, dtype, *sizes):
    """The launch plan of ``kind`` ("cols": cols_fwd / cols_bwd, "rx": cols_bwd_rx, "wn") on this GPU, cached.
    A plan with column groups is kept only where the co-resident clusters hold at least 2 groups at once (or
    every tile: :func:`_group_choice`), else planned again without groups."""
    key = _plan_key(kind, dtype, *sizes)
    dev = key[1]
    if key in _PLANS:
        return _PLANS[key]
    cap = 8 if dev in _NO_CLUSTER16 else 16
    plan = _planned(kind, dtype, sizes, cap, key not in _NO_GROUPS)
    if getattr(plan, "groups", 1) > 1:  # (WnPlan has none)
        plan = _group_choice(kind, dtype, sizes, plan)
    _PLANS[key] = plan
    return plan


def _planned(kind, dtype, sizes, cap, groups):
    cc = _cc_major(_plan_key(kind, dtype)[1])
    itemsize = np.dtype(dtype).itemsize
    if kind == "wn":
        return wn_plan(sizes[0], sizes[1], itemsize, sizes[2], cc_major=cc, max_cluster=cap)
    if kind == "rx":
        return rx_plan(sizes[0], sizes[1], itemsize, cc_major=cc, max_cluster=cap, groups=groups)
    k = LAUNCH["cols1"]["tiles_per_cluster"]
    return cols_plan(sizes[0], sizes[1], itemsize, sizes[2], cc_major=cc, per_cluster=k, max_cluster=cap,
                     row_params=sizes[3] if len(sizes) > 3 else 0, groups=groups)


def _grouped_kernel(kind):
    """(name, extra template arguments) of the kernel a plan with column groups launches (cols_bwd_rx: the
    batch-norm form; the layer-norm form has the same registers and shared memory)."""
    return ("cols_fwd", ", true") if kind == "cols" else ("cols_bwd_rx", f", false, {RX_VPR}, true")


def _group_choice(kind, dtype, sizes, plan):
    """Of ``plan`` (column groups on the largest cluster) and the same on clusters of 8, the one that keeps
    the most blocks busy (walkers × groups × cluster, walkers = whole groups of co-resident clusters, at most
    one a tile; a tie keeps the larger cluster), if its walkers are at least 2 or every tile (H100: one walker
    ran the backward of [65536, 512] at 43 % of the copy against the split path's 46 %: each tile's load,
    wait and store in turn with half the GPU idle, bench/NOTES.md); else the plan without groups."""
    best, best_active = None, 0
    for cand in (plan, _planned(kind, dtype, sizes, 8, True) if plan.cluster > 8 else None):
        if cand is None or cand.groups < 2:
            continue
        name, extra = _grouped_kernel(kind)
        nc = _max_active_clusters(name, dtype, cand.cluster, cand.smem, extra)
        walkers = cand.persistent_grid(nc) // (cand.cluster * cand.groups)
        if walkers < min(2, cand.tiles):
            continue
        active = walkers * cand.groups * cand.cluster
        if active > best_active:
            best, best_active = cand, active
    if best is None:
        _NO_GROUPS.add(_plan_key(kind, dtype, *sizes))
        return _planned(kind, dtype, sizes, plan.cluster, False)
    return best


def _launch_or_refused(name, dtype, cluster, grid, smem, args, extra="", plan=None, key=None) -> bool:
    """_launch; False when the device refused a (non-portable) cluster of 16 (a CUDA error naming the
    cluster), or holds too few clusters at once for ``plan``'s column groups (then ``grid`` is not used:
    _groups_launch): the caller plans again (with clusters of at most 8, or without groups for ``key``, the
    plan's key in _PLANS: recorded). cols_fwd and cols_bwd_rx get the groups' arguments after ``args``. Any
    other error is raised: it is a bug of the plan (e.g. more shared memory than a block may have), not a
    smaller device."""
    import cupy

    try:
        if plan is not None and plan.groups > 1:
            if not _groups_launch(name, dtype, plan, args, extra):
                _NO_GROUPS.add(key)
                _PLANS.pop(key, None)
                return False
        else:
            if name in _GROUPED:  # (groups, gpart, gcnt)
                args = (*args, np.int32(1), None, None)
            _launch(name, dtype, cluster, grid, smem, args, extra)
    except Exception as exc:
        if cluster <= 8 or "CLUSTER" not in str(exc).upper():
            raise
        _NO_CLUSTER16.add(cupy.cuda.runtime.getDevice())
        _PLANS.clear()
        return False
    return True


def _launch(name, dtype, cluster, grid, smem, args, extra="", coop=False):
    """Launch ``name<T, cluster{extra}>`` (extra: further template arguments, e.g. ", true"). ``coop``: a
    cooperative launch (column groups: the driver starts all blocks together or refuses), falling back to an
    ordinary one where the driver refuses it for a kernel with clusters (recorded per device)."""
    import cupy

    fn = _function(name, dtype, cluster, smem, extra)
    stream = cupy.cuda.get_current_stream()
    args = tuple(_NULL if a is None else a for a in args)
    dev = cupy.cuda.runtime.getDevice() if coop else None
    if coop and dev not in _NO_COOP:
        try:
            fn((grid,), (THREADS,), args, stream=stream, shared_mem=smem, enable_cooperative_groups=True)
            return
        except Exception:  # noqa: BLE001 - refused: the grid is within the co-resident clusters anyway
            _NO_COOP.add(dev)
    fn((grid,), (THREADS,), args, stream=stream, shared_mem=smem)


def _function(name, dtype, cluster, smem, extra=""):
    """The loaded ``name<T, cluster{extra}>`` with its attributes set for ``smem`` bytes of dynamic shared
    memory."""
    import cupy

    # (cluster None: a kernel without clusters, whose template takes the type and ``extra`` only)
    targs = extra if cluster is None else f", {cluster}{extra}"
    defines = tuple(LAUNCH["cols1"]["keep_defines"]) if name.startswith("cols_keep") else ()
    spec = compiler.KernelSpec(_SOURCE, f"{name}<{_CTYPE[dtype_name(dtype)]}{targs}>", defines)
    key = (cupy.cuda.runtime.getDevice(), spec, smem)
    fn = _FUNCS.get(key)
    if fn is None:
        from cupy_backends.cuda.api import driver

        fn = compiler.get_function(spec)
        # the dynamic limit is raised here (only ever raised): static + dynamic shared memory over 48 KiB
        # needs it, also when the dynamic part alone is under 48 KiB
        lkey = key[:2]
        if lkey not in _SMEM_SET:
            # all of the unified L1/shared memory as shared memory: 3 blocks of 64 KiB per SM (the loads
            # bypass L1), whatever carve-out the driver would prefer
            driver.funcSetAttribute(fn.ptr, _PREFERRED_CARVEOUT, 100)
            if cluster is not None and cluster > 8:
                driver.funcSetAttribute(fn.ptr, _NON_PORTABLE_CLUSTER, 1)
            _SMEM_SET[lkey] = 0
        # (whatever the dynamic part: cols_bwd_rx's static arrays reach 14 KiB with 32-byte rows, so 40 KiB of
        # dynamic memory already passes 48 KiB; a launch over the limit fails with an invalid argument)
        if _SMEM_SET[lkey] < smem:
            driver.funcSetAttribute(fn.ptr, _MAX_DYNAMIC_SHARED, smem)
            _SMEM_SET[lkey] = smem
        _FUNCS[key] = fn
    return fn


def _max_active_clusters(name, dtype, cluster, smem, extra=""):
    """Clusters of ``name`` that can be resident at once with ``smem`` bytes of dynamic shared memory a block
    (cuOccupancyMaxActiveClusters through cuda-python; cached), or 0 when the query is not available (then no
    column groups: a persistent grid must never exceed the co-resident clusters)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), name, dtype_name(dtype), cluster, smem, extra)
    n = _CLUSTERS_MAX.get(key)
    if n is None:
        fn = _function(name, dtype, cluster, smem, extra)
        try:
            from cuda.bindings import driver as cu

            cfg = cu.CUlaunchConfig()
            cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = cluster, 1, 1
            cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = THREADS, 1, 1
            cfg.sharedMemBytes = smem
            err, got = cu.cuOccupancyMaxActiveClusters(cu.CUfunction(fn.ptr), cfg)
            n = int(got) if int(err) == 0 else 0
        except Exception:  # noqa: BLE001 - no cuda-python
            n = 0
        _CLUSTERS_MAX[key] = n
    return n


def _groups_launch(name, dtype, plan, args, extra=""):
    """Launch a plan with column groups on as many whole groups of clusters as are co-resident (at most one a
    tile), ``args`` followed by (groups, partial sums, a counter a tile: zeroed here). False when the GPU
    holds too few clusters at once (nothing launched: the caller plans again without groups)."""
    import cupy

    grid = plan.persistent_grid(_max_active_clusters(name, dtype, plan.cluster, plan.smem, extra))
    if grid == 0:
        return False
    gpart = cupy.empty(plan.tiles * plan.groups * 2 * MAX_COLS, dtype=cupy.float32)
    gcnt = cupy.zeros(plan.tiles, dtype=cupy.int32)
    _launch(name, dtype, plan.cluster, grid, plan.smem, (*args, np.int32(plan.groups), gpart, gcnt), extra,
            coop=True)
    return True


def _keep_blocks(name, dtype, smem, extra=""):
    """Blocks of ``name`` (a cols_keep kernel) co-resident on this GPU with ``smem`` bytes of dynamic shared
    memory a block (cuOccupancyMaxActiveBlocksPerMultiprocessor through cuda-python × the SMs; cached), or 0
    when the query is not available (then no tall-array kernel: its grid must never exceed them)."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    key = (dev, name, dtype_name(dtype), smem, extra, tuple(LAUNCH["cols1"]["keep_defines"]))
    n = _KEEP_BLOCKS.get(key)
    if n is None:
        fn = _function(name, dtype, None, smem, extra)
        try:
            from cuda.bindings import driver as cu

            err, per_sm = cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(cu.CUfunction(fn.ptr), THREADS, smem)
            sms = cupy.cuda.Device(dev).attributes["MultiProcessorCount"]
            n = int(per_sm) * int(sms) if int(err) == 0 else 0
        except Exception:  # noqa: BLE001 - no cuda-python
            n = 0
        _KEEP_BLOCKS[key] = n
    return n


def _keep(kind, dtype, R, C, plan):
    """The KeepPlan of the tall-array kernel ``kind`` ("fwd", "bwd") where LAUNCH wants it over ``plan``, else
    None; cached with the plans."""
    if not _keep_wanted(plan):
        return None
    key = _plan_key("keep-" + kind, dtype, R, C)
    if key in _PLANS:
        return _PLANS[key]
    tensors = 1 if kind == "fwd" else 2
    name, extra = ("cols_keep_fwd", "") if kind == "fwd" else ("cols_keep_bwd", ", false")
    itemsize = np.dtype(dtype).itemsize
    blocks = _keep_blocks(name, dtype, _keep_cap(tensors, KEEP_SMEM) * KP_VPR * 16 * tensors, extra)
    cc = _cc_major(key[1])
    kp = keep_plan(R, C, itemsize, tensors, blocks, cc_major=cc, keep_bytes=KEEP_SMEM)
    kp = _PLANS[key] = kp if kp is not None and _keep_wanted(plan, kp) else None
    return kp


def _keep_launch(name, dtype, kp, args, extra=""):
    """Launch a tall-array kernel on ``kp`` (cooperative where the driver accepts it), ``args`` followed by
    (bpt, partial sums, a counter a tile: zeroed here)."""
    import cupy

    gpart = cupy.empty(kp.tiles * kp.bpt * 2 * MAX_COLS, dtype=cupy.float32)
    gcnt = cupy.zeros(kp.tiles, dtype=cupy.int32)
    _launch(name, dtype, None, kp.grid, kp.smem, (*args, np.int32(kp.bpt), gpart, gcnt), extra, coop=True)


def _aligned(*arrays) -> bool:
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


def cols_fwd(x, gain, bias, eps, gain_per_col, running=None):
    """(y, mean, rstd) with statistics per column of x [R, C] in one pass, or None (not applicable).
    gain/bias per column (gain_per_col) or per row; running: (run_mean, run_var, momentum, var_scale),
    updated in place (as ops._finalize)."""
    import cupy

    R, C = x.shape
    per_row = not gain_per_col and (gain is not None or bias is not None)
    sizes = (R, C, 1, 8 if per_row else 0)  # per row: gain and bias as floats
    plan = _plan("cols", x.dtype, *sizes)
    kp = _keep("fwd", x.dtype, R, C, plan)
    if (plan is None and kp is None) or not _aligned(x):
        return None
    y = cupy.empty_like(x)
    if not _aligned(y):
        return None
    mean = cupy.empty(C, dtype=cupy.float32)
    rstd = cupy.empty(C, dtype=cupy.float32)
    run_mean, run_var, momentum, var_scale = running or (None, None, 0.0, 0.0)
    if kp is not None:
        args = (y, x, gain, bias, mean, rstd, run_mean, run_var, np.int32(R), np.int64(C),
                np.int32(kp.rows_per_cta), np.int32(kp.keep), np.float32(eps), np.float32(momentum),
                np.float32(var_scale), np.int32(gain_per_col))
        _keep_launch("cols_keep_fwd", x.dtype, kp, args)
        return y, mean, rstd
    ok = _launch_or_refused(
        "cols_fwd",
        x.dtype,
        plan.cluster,
        plan.grid,
        plan.smem,
        (
            y,
            x,
            gain,
            bias,
            mean,
            rstd,
            run_mean,
            run_var,
            np.int32(R),
            np.int64(C),
            np.int32(plan.rows_per_cta),
            np.int32(plan.vpr),
            np.float32(eps),
            np.float32(momentum),
            np.float32(var_scale),
            np.int32(gain_per_col),
            np.int32(plan.tiles),
        ),
        ", true" if plan.groups > 1 else ", false",
        plan=plan,
        key=_plan_key("cols", x.dtype, *sizes) if plan.groups > 1 else None,
    )
    return (y, mean, rstd) if ok else cols_fwd(x, gain, bias, eps, gain_per_col, running)


def cols_bwd(dy, x, gain, mean, rstd, gain_per_col, train, want_sums, row_sums=False):
    """(dx, sum0, sum1, ws_rows) of the column-statistics backward in one pass, or None (not applicable):
    dx = rstd·(gc·t − train·gc·(Σt + x̂·Σt·x̂)/R), t = dy·(gain per row, else 1), gc = gain per column
    (else 1); sum0 = Σt, sum1 = Σt·x̂ per column in x's dtype when want_sums (else None); row_sums: also
    ws_rows [tiles, 2, R] float32, Σ dy and Σ dy·x̂ per row over each column tile (else None)."""
    import cupy

    R, C = x.shape
    # cols_bwd_rx is specialized for batch norm (gain per column, no row sums) and layer norm (gain per row,
    # row sums): other combinations take cols_bwd
    forms = bool(row_sums) == (not gain_per_col)  # the rx and keep kernels' two forms (batch, layer norm)
    rx = _plan("rx", x.dtype, R, C, 2) if forms else None
    per_row = gain is not None and not gain_per_col  # cols_bwd holds the gain per row as floats
    plan = rx or _plan("cols", x.dtype, R, C, 2, 4 if per_row else 0)
    kp = _keep("bwd", x.dtype, R, C, plan) if forms else None
    if (plan is None and kp is None) or not _aligned(x, dy):
        return None
    dx = cupy.empty_like(x)
    if not _aligned(dx):
        return None
    s0 = cupy.empty(C, dtype=x.dtype) if want_sums else None
    s1 = cupy.empty(C, dtype=x.dtype) if want_sums else None
    ws = cupy.empty(((kp or plan).tiles, 2, R), dtype=cupy.float32) if row_sums else None
    if kp is not None:
        args = (dx, s0, s1, ws, dy, x, gain, mean, rstd, np.int32(R), np.int64(C), np.int32(kp.rows_per_cta),
                np.int32(kp.keep), np.int32(gain_per_col), np.int32(train))
        _keep_launch("cols_keep_bwd", x.dtype, kp, args, ", true" if row_sums else ", false")
        return dx, s0, s1, ws
    head = (dx, s0, s1, ws, dy, x, gain, mean, rstd, np.int32(R), np.int64(C), np.int32(plan.rows_per_cta))
    if rx:
        args = (*head, np.int32(gain_per_col), np.int32(train), np.int32(plan.tiles))
    else:
        args = (*head, np.int32(plan.vpr), np.int32(gain_per_col), np.int32(train), np.int32(plan.tiles))
    if rx:
        gr = "true" if plan.groups > 1 else "false"
        name, extra = "cols_bwd_rx", f", {'true' if row_sums else 'false'}, {plan.vpr}, {gr}"
    else:
        name, extra = "cols_bwd", ""
    key = _plan_key("rx", x.dtype, R, C, 2) if rx and plan.groups > 1 else None
    ok = _launch_or_refused(name, x.dtype, plan.cluster, plan.grid, plan.smem, args, extra, plan, key)
    return (
        (dx, s0, s1, ws)
        if ok
        else cols_bwd(dy, x, gain, mean, rstd, gain_per_col, train, want_sums, row_sums)
    )


def _max_blocks(lay) -> int:
    n = _WN_MAX.get(lay)
    if n is None:
        ptr = np.asarray(lay.col_ptr)
        n = _WN_MAX[lay] = int(np.diff(ptr).max()) if ptr.size > 1 else 0
    return n


def wn_unit(lay, tables, w, dv, gain, rnorm, b, eps=0.0):
    """The weight norm per unit in one pass, or None (not applicable). tables: the layout's (col_ptr,
    col_order) on this GPU. Forward (dv None): (v, rnorm); backward: (dw, dgain), dgain None without
    a gain."""
    import cupy

    if lay.out_blocks == 0:
        return None
    plan = _plan("wn", w.dtype, _max_blocks(lay), b, 1 if dv is None else 2)
    if plan is None or not _aligned(w, dv):
        return None
    out = cupy.empty_like(w)
    if dv is None:
        rnorm = cupy.empty(lay.out_blocks * b, dtype=cupy.float32)
        dgain = None
    else:
        dgain = None if gain is None else cupy.empty_like(gain)
    col_ptr, col_order = tables
    ok = _launch_or_refused(
        "wn_unit",
        w.dtype,
        plan.cluster,
        lay.out_blocks * plan.cluster,
        plan.smem,
        (
            out,
            rnorm,
            dgain,
            w,
            dv,
            gain,
            col_ptr,
            col_order,
            np.int32(int(b).bit_length() - 1),
            np.int32(int(plan.vpr).bit_length() - 1),
            np.int32(plan.bpc),
            np.float32(eps),
        ),
    )
    if not ok:
        return wn_unit(lay, tables, w, dv, gain, None if dv is None else rnorm, b, eps)
    return (out, rnorm) if dv is None else (out, dgain)
