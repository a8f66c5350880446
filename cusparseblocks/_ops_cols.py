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
SM_SMEM = 228 * 1024  # shared memory of an SM (sm_90)
BLOCK_RESERVE = 7 * 1024  # static shared arrays + the 1 KiB the driver reserves per block
MAX_BLOCKS_PER_SM = 3  # kernels/ew_cols.cu __launch_bounds__(THREADS, 3): registers for 3

# Launch table (a benchmark may set entries; clear _PLANS after a change):
#   mode: "auto" (one pass when a tile fits max_bytes), "single" (one pass whenever a tile fits in MAX_SMEM:
#     the tests' force flag), "fallback" (never: the 3-pass path);
#   row_bytes: tile widths to try, in order (bytes of one row of a column tile: 128 = 8 vectors a row);
#   cta_bytes: the preferred shared memory per block, tiers tried in order with every width and cluster
#     size (72 KiB: 3 blocks per SM, 112 KiB: 2); then max_bytes (1 block per SM);
#   max_cluster: the largest cluster size to use (8 portable; 16 on sm_90 with the non-portable attribute,
#     lowered to 8 on a device that refuses it);
#   tiles_per_cluster: column tiles one cluster walks in turn (cols_fwd, cols_bwd), the next tile's loads in
#     flight while the current one is reduced and stored (two shared-memory buffers when above 1);
#   persistent: a grid of the clusters that fit on the GPU at once, tiles handed out by an atomic counter,
#     the next tile's loads in flight (two buffers); used when there are more tiles than such clusters
#     (else the one-tile launch); before tiles_per_cluster;
#   persist_bytes: the shared-memory budget tiers per block of the persistent plan (both buffers; the largest
#     tile width and smallest cluster that fit, as cta_bytes);
#   persist_clusters: the persistent grid in clusters (0: SMs × blocks per SM // cluster size, from the
#     device; more clusters than fit is harmless: a late one finds no tile left).
LAUNCH = {
    "cols1": {
        "mode": "auto",
        "row_bytes": (128, 64, 32),
        "cta_bytes": (72 * 1024, 112 * 1024),
        "max_bytes": MAX_SMEM,
        "max_cluster": 16,
        "tiles_per_cluster": 1,
        "persistent": False,  # measured slower on the H100 (bench/NOTES.md, persistent column ops)
        "persist_bytes": (MAX_SMEM,),
        "persist_clusters": 0,
    }
}


@dataclasses.dataclass(frozen=True)
class ColsPlan:
    """One-pass launch: clusters of ``cluster`` blocks over column tiles of ``width`` columns
    (``row_bytes`` bytes a row, ``vpr`` 16-byte vectors), ``rows_per_cta`` rows per block, ``smem`` bytes
    of dynamic shared memory per block, ``tiles`` tiles, up to ``per_cluster`` of them per cluster
    (grid = ceil(tiles / per_cluster) × cluster blocks); persistent: ``clusters`` clusters draw the tiles
    from a counter (two buffers in ``smem``)."""

    cluster: int
    row_bytes: int
    vpr: int
    width: int
    rows_per_cta: int
    tiles: int
    smem: int
    per_cluster: int = 1
    clusters: int = 0
    persistent: bool = False

    @property
    def grid(self) -> int:
        if self.persistent:
            return self.clusters * self.cluster
        return math.ceil(self.tiles / self.per_cluster) * self.cluster


def _clusters(cfg, cap=16):
    return [cs for cs in CLUSTERS if cs <= min(cfg["max_cluster"], cap)]


def _tiers(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def blocks_per_sm(smem: int) -> int:
    """Blocks of ``smem`` dynamic shared-memory bytes that fit on one SM (sm_90; registers allow 3)."""
    return max(1, min(MAX_BLOCKS_PER_SM, SM_SMEM // (smem + BLOCK_RESERVE)))


def resident_clusters(sms: int, smem: int, cluster: int) -> int:
    """Clusters of ``cluster`` blocks of ``smem`` bytes that the GPU holds at once (an upper bound: a cluster
    must fit in one GPC; the persistent kernels tolerate more)."""
    return max(1, sms * blocks_per_sm(smem) // cluster)


def _budgets(mode, cta_bytes, max_bytes):
    if mode not in ("auto", "single", "fallback"):
        raise ValueError(f"mode: expected 'auto', 'single' or 'fallback', got {mode!r}")
    if mode == "fallback":
        return ()
    tiers = _tiers(cta_bytes)
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
    sms: int | None = None,
    persistent: bool | None = None,
) -> ColsPlan | None:
    """The one-pass plan for statistics per column of [R, C] (``tensors`` inputs held on chip: 1 forward,
    2 backward), or None (3-pass path). Pure: no GPU needed.

    With ``sms`` (the GPU's SM count) and ``persistent`` (default LAUNCH["cols1"]["persistent"]): the
    persistent plan (:func:`persistent_plan`) when it applies.

    Tries each tile width of ``row_bytes`` in order and the smallest cluster whose blocks fit
    ``cta_bytes``, then the same up to ``max_bytes`` (mode "single": MAX_SMEM). None when ``mode`` is
    "fallback", the GPU is not compute capability 9.x, C is not a whole number of 16-byte vectors, or
    no tile fits. ``per_cluster`` > 1 (tiles_per_cluster) doubles the shared memory when a
    cluster gets more than one tile. Defaults: LAUNCH["cols1"].
    """
    cfg = LAUNCH["cols1"]
    mode = mode or cfg["mode"]
    row_bytes = row_bytes or cfg["row_bytes"]
    per_cluster = max(1, per_cluster or 1)
    budgets = _budgets(mode, cta_bytes or cfg["cta_bytes"], max_bytes or cfg["max_bytes"])
    lanes = 16 // itemsize
    if cc_major != 9 or R < 1 or C < 1 or C % lanes or R >= 2**31:
        return None
    if budgets and sms and (cfg["persistent"] if persistent is None else persistent):
        plan = persistent_plan(R, C, itemsize, tensors, sms, row_bytes=row_bytes, max_cluster=max_cluster)
        if plan is not None:
            return plan
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
                smem = rows * rb * tensors * buffers
                if smem <= budget:
                    return ColsPlan(cs, rb, vpr, width, rows, tiles, smem, per_cluster if buffers == 2 else 1)
    return None


def persistent_plan(
    R: int,
    C: int,
    itemsize: int,
    tensors: int,
    sms: int,
    *,
    row_bytes=None,
    budgets=None,
    clusters: int | None = None,
    max_cluster: int = 16,
) -> ColsPlan | None:
    """The persistent plan of [R, C]: blocks with two tile buffers within a tier of ``budgets`` (default
    LAUNCH["cols1"]["persist_bytes"]; the widest row of ``row_bytes``, then the smallest cluster), a grid of
    ``clusters`` clusters (default: persist_clusters, else :func:`resident_clusters` on ``sms`` SMs); None
    when no tile fits or the tiles are no more than the resident clusters (the one-tile launch is as good;
    a grid set by ``clusters`` or persist_clusters is taken as given: tests force over-subscription). Pure."""
    cfg = LAUNCH["cols1"]
    row_bytes = row_bytes or cfg["row_bytes"]
    for budget in _tiers(budgets or cfg["persist_bytes"]):
        for rb in row_bytes:
            vpr = rb // 16
            if vpr < 1 or vpr & (vpr - 1) or rb // itemsize > MAX_COLS:
                continue
            width = rb // itemsize
            tiles = math.ceil(C / width)
            for cs in _clusters(cfg, max_cluster):
                rows = math.ceil(R / cs)
                smem = 2 * rows * rb * tensors
                if smem <= min(budget, MAX_SMEM):
                    given = clusters or cfg["persist_clusters"]
                    n = given or resident_clusters(sms, smem, cs)
                    if tiles <= n and not given:
                        return None
                    return ColsPlan(cs, rb, vpr, width, rows, tiles, smem, 1, n, True)
    return None


@dataclasses.dataclass(frozen=True)
class WnPlan:
    """One-pass weight norm per unit: a cluster of ``cluster`` blocks per block column, ``bpc`` blocks of
    w per block (``smem`` bytes), ``vpr`` 16-byte vectors per block row; persistent (``clusters`` > 0):
    that many clusters draw the block columns from a counter (two buffers in ``smem``)."""

    cluster: int
    bpc: int
    vpr: int
    smem: int
    clusters: int = 0

    def grid(self, ncols: int) -> int:
        return (self.clusters or ncols) * self.cluster


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
    ncols: int = 0,
    sms: int | None = None,
    persistent: bool | None = None,
) -> WnPlan | None:
    """The one-pass plan for the weight norm per unit of w [nnz, b, b] whose largest block column holds
    ``max_blocks`` blocks, or None (the 2-kernel path). Pure. Needs b a power of two with b·itemsize a
    multiple of 16 bytes and b <= 64 columns; the smallest cluster whose blocks fit (budgets as
    :func:`cols_plan`). With ``sms`` and ``persistent`` (as :func:`cols_plan`): persistent over the
    ``ncols`` block columns when they outnumber the clusters that fit (budgets: persist_bytes)."""
    cfg = LAUNCH["cols1"]
    budgets = _budgets(mode or cfg["mode"], cta_bytes or cfg["cta_bytes"], max_bytes or cfg["max_bytes"])
    rb = b * itemsize
    if cc_major != 9 or b < 1 or b & (b - 1) or rb % 16 or b > MAX_COLS:
        return None
    block_bytes = b * rb * tensors
    if budgets and sms and (cfg["persistent"] if persistent is None else persistent):
        for budget in _tiers(cfg["persist_bytes"]):
            for cs in _clusters(cfg, max_cluster):
                bpc = max(1, math.ceil(max_blocks / cs))
                smem = 2 * bpc * block_bytes
                if smem <= min(budget, MAX_SMEM):
                    n = cfg["persist_clusters"] or resident_clusters(sms, smem, cs)
                    if ncols > n or cfg["persist_clusters"]:
                        return WnPlan(cs, bpc, rb // 16, smem, n)
                    break  # the one-column launch
            else:
                continue
            break
    for budget in budgets:
        for cs in _clusters(cfg, max_cluster):
            bpc = max(1, math.ceil(max_blocks / cs))
            if bpc * block_bytes <= budget:
                return WnPlan(cs, bpc, rb // 16, bpc * block_bytes)
    return None


def _specializations():
    for ctype in _CTYPE.values():
        for cs in CLUSTERS:
            for name in ("cols_fwd", "cols_bwd", "wn_unit"):
                yield compiler.KernelSpec(_SOURCE, f"{name}<{ctype}, {cs}>")


compiler.register_family("ew_cols", _specializations)


# ---------------------------------------------------------------------------------------------------
# GPU dispatch

_CACHES = ("_PLANS", "_FUNCS", "_CC", "_WN_MAX", "_SMS", "_COUNTERS")
_PLANS: dict = {}
_FUNCS: dict = {}
_NO_CLUSTER16: set = set()  # devices that refused a cluster of 16 (smaller GPCs, MIG): 8 at most there
_SMEM_SET: dict = {}  # (device, spec): attributes set on the function, the dynamic limit (never cleared)
_CC: dict = {}
_SMS: dict = {}
_COUNTERS: dict = {}  # (device, stream): the persistent launches' tile counters (uint32 [2], kept at 0)
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


def _sm_count(dev) -> int:
    n = _SMS.get(dev)
    if n is None:
        import cupy

        n = _SMS[dev] = int(cupy.cuda.Device(dev).attributes["MultiProcessorCount"])
    return n


def _counter(plan_is_persistent):
    """The tile counters of the current stream (zeroed once; each persistent launch leaves them at 0), or
    None for a static launch. One pair per stream: launches on a stream are ordered."""
    if not plan_is_persistent:
        return None
    import cupy

    stream = cupy.cuda.get_current_stream()
    key = (cupy.cuda.runtime.getDevice(), stream.ptr)
    ctr = _COUNTERS.get(key)
    if ctr is None:
        ctr = _COUNTERS[key] = cupy.zeros(2, dtype=cupy.uint32)
    return ctr


def _plan(kind, dtype, *sizes):
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    key = (kind, dev, dtype, sizes)
    if key in _PLANS:
        return _PLANS[key]
    cc = _cc_major(dev)
    itemsize = np.dtype(dtype).itemsize
    cap = 8 if dev in _NO_CLUSTER16 else 16
    sms = _sm_count(dev) if cc == 9 else None
    if kind == "wn":
        plan = wn_plan(
            sizes[0], sizes[1], itemsize, sizes[2], cc_major=cc, max_cluster=cap, ncols=sizes[3], sms=sms
        )
    else:
        k = LAUNCH["cols1"]["tiles_per_cluster"]
        plan = cols_plan(
            sizes[0], sizes[1], itemsize, sizes[2], cc_major=cc, per_cluster=k, max_cluster=cap, sms=sms
        )
    _PLANS[key] = plan
    return plan


def _launch_or_refused(name, dtype, cluster, grid, smem, args) -> bool:
    """_launch; False when the device refused a (non-portable) cluster of 16: the caller plans again with
    clusters of at most 8 (recorded for the device)."""
    import cupy

    try:
        _launch(name, dtype, cluster, grid, smem, args)
    except Exception:
        if cluster <= 8:
            raise
        _NO_CLUSTER16.add(cupy.cuda.runtime.getDevice())
        _PLANS.clear()
        return False
    return True


def _launch(name, dtype, cluster, grid, smem, args):
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    key = (dev, name, dtype, cluster, smem)  # (no KernelSpec built per call: host time)
    fn = _FUNCS.get(key)
    if fn is None:
        from cupy_backends.cuda.api import driver

        spec = compiler.KernelSpec(_SOURCE, f"{name}<{_CTYPE[dtype_name(dtype)]}, {cluster}>")
        fn = compiler.get_function(spec)
        # the dynamic limit is raised here (only ever raised): static + dynamic shared memory over 48 KiB
        # needs it, also when the dynamic part alone is under 48 KiB
        lkey = (dev, spec)
        if lkey not in _SMEM_SET:
            # all of the unified L1/shared memory as shared memory: 3 blocks of 64 KiB per SM (the loads
            # bypass L1), whatever carve-out the driver would prefer
            driver.funcSetAttribute(fn.ptr, _PREFERRED_CARVEOUT, 100)
            if cluster > 8:
                driver.funcSetAttribute(fn.ptr, _NON_PORTABLE_CLUSTER, 1)
            _SMEM_SET[lkey] = 0
        if smem > 40 * 1024 and _SMEM_SET[lkey] < smem:
            driver.funcSetAttribute(fn.ptr, _MAX_DYNAMIC_SHARED, smem)
            _SMEM_SET[lkey] = smem
        _FUNCS[key] = fn
    fn(
        (grid,),
        (THREADS,),
        tuple([_NULL if a is None else a for a in args]),
        stream=cupy.cuda.get_current_stream(),
        shared_mem=smem,
    )


def _aligned(*arrays) -> bool:
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


def cols_fwd(x, gain, bias, eps, gain_per_col, running=None):
    """(y, mean, rstd) with statistics per column of x [R, C] in one pass, or None (not applicable).
    gain/bias per column (gain_per_col) or per row; running: (run_mean, run_var, momentum, var_scale),
    updated in place (as ops._finalize)."""
    import cupy

    R, C = x.shape
    plan = _plan("cols", x.dtype, R, C, 1)
    if plan is None or not _aligned(x):
        return None
    y = cupy.empty_like(x)
    if not _aligned(y):
        return None
    mean = cupy.empty(C, dtype=cupy.float32)
    rstd = cupy.empty(C, dtype=cupy.float32)
    run_mean, run_var, momentum, var_scale = running or (None, None, 0.0, 0.0)
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
            _counter(plan.persistent),
        ),
    )
    return (y, mean, rstd) if ok else cols_fwd(x, gain, bias, eps, gain_per_col, running)


def cols_bwd(dy, x, gain, mean, rstd, gain_per_col, train, want_sums, row_sums=False):
    """(dx, sum0, sum1, ws_rows) of the column-statistics backward in one pass, or None (not applicable):
    dx = rstd·(gc·t − train·gc·(Σt + x̂·Σt·x̂)/R), t = dy·(gain per row, else 1), gc = gain per column
    (else 1); sum0 = Σt, sum1 = Σt·x̂ per column in x's dtype when want_sums (else None); row_sums: also
    ws_rows [tiles, 2, R] float32, Σ dy and Σ dy·x̂ per row over each column tile (else None)."""
    import cupy

    R, C = x.shape
    plan = _plan("cols", x.dtype, R, C, 2)
    if plan is None or not _aligned(x, dy):
        return None
    dx = cupy.empty_like(x)
    if not _aligned(dx):
        return None
    s0 = cupy.empty(C, dtype=x.dtype) if want_sums else None
    s1 = cupy.empty(C, dtype=x.dtype) if want_sums else None
    ws = cupy.empty((plan.tiles, 2, R), dtype=cupy.float32) if row_sums else None
    ok = _launch_or_refused(
        "cols_bwd",
        x.dtype,
        plan.cluster,
        plan.grid,
        plan.smem,
        (
            dx,
            s0,
            s1,
            ws,
            dy,
            x,
            gain,
            mean,
            rstd,
            np.int32(R),
            np.int64(C),
            np.int32(plan.rows_per_cta),
            np.int32(plan.vpr),
            np.int32(gain_per_col),
            np.int32(train),
            np.int32(plan.tiles),
            _counter(plan.persistent),
        ),
    )
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
    plan = _plan("wn", w.dtype, _max_blocks(lay), b, 1 if dv is None else 2, lay.out_blocks)
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
        plan.grid(lay.out_blocks),
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
            np.int32(lay.out_blocks),
            _counter(plan.clusters > 0),
        ),
    )
    if not ok:
        return wn_unit(lay, tables, w, dv, gain, None if dv is None else rnorm, b, eps)
    return (out, rnorm) if dv is None else (out, dgain)
