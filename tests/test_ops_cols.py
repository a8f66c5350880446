"""Column statistics in one pass (cusparseblocks/_ops_cols.py, kernels/ew_cols.cu): the launch plans on the
CPU; on the GPU (sm_90) the one-pass kernels, forced on and forced off, against the float64 reference with
poisoned outputs, ragged shapes and shapes at the plans' limits."""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
from conftest import assert_close, random_array, to_numpy

from cusparseblocks import BlockSparseMatMul, _ops_cols, compiler, ops
from cusparseblocks._ops_cols import (
    KEEP_SMEM,
    MAX_SMEM,
    RX_NARROW,
    RX_VPR,
    ColsPlan,
    KeepPlan,
    WnPlan,
    cols_plan,
    keep_plan,
    rx_max_rows,
    rx_plan,
    wn_plan,
)
from cusparseblocks.reference import ops as ref

GPU_DTYPES = ("float32", "float16", "bfloat16")
MODES = ("single", "single2", "single8", "single16", "single_smem", "fallback")
BUDGET = 112 * 1024  # the one-tier budget of the "classic" plans below


def f64(a):
    return to_numpy(a).astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# plans (pure functions)


def test_plan_defaults():
    """The defaults chosen from the H100 run (bench/NOTES.md): 128-byte rows, clusters of 16, 64 KiB
    blocks (3 per SM) where they fit, 112 KiB next."""
    assert cols_plan(8192, 4096, 2) == ColsPlan(16, 128, 8, 64, 512, 64, 65536)
    assert cols_plan(8192, 4096, 4) == ColsPlan(16, 128, 8, 32, 512, 128, 65536)
    assert cols_plan(8192, 4096, 2, 2) == ColsPlan(16, 64, 4, 32, 512, 128, 65536)  # x + dy
    assert cols_plan(8192, 4096, 4, 2) == ColsPlan(16, 64, 4, 16, 512, 256, 65536)
    # the forward with a gain and bias per row: 8 bytes a row more (their floats after the tile)
    assert cols_plan(8192, 4096, 2, row_params=8) == ColsPlan(16, 128, 8, 64, 512, 64, 65536 + 4096)
    assert cols_plan(8191, 4096, 2, row_params=8).smem == 512 * 128 + 4096
    assert cols_plan(100, 4096, 2, row_params=8).smem == 100 * 128 + 800  # 800: a multiple of 16
    assert cols_plan(99, 4096, 2, row_params=8).smem == 99 * 128 + 800  # 792 rounded up
    assert wn_plan(150, 32, 2) == WnPlan(8, 19, 4, 19 * 2048 + 80)  # + the col_order entries
    assert wn_plan(150, 32, 2, 2) == WnPlan(16, 10, 4, 10 * 4096 + 48)
    assert wn_plan(150, 32, 4, 2) == WnPlan(16, 10, 8, 10 * 8192 + 48)  # the 112 KiB tier
    # a device that refused clusters of 16: at most 8; the forward takes column groups of 128-byte rows over
    # 64-byte rows on one cluster
    assert cols_plan(8192, 4096, 2, max_cluster=8) == ColsPlan(8, 128, 8, 64, 512, 64, 65536, 1, 2)
    assert cols_plan(8192, 4096, 2, max_cluster=8, groups=False) == ColsPlan(8, 64, 4, 32, 1024, 128, 65536)
    assert wn_plan(150, 32, 4, 2, max_cluster=8).cluster == 8


def test_rx_plan(monkeypatch):
    """The backward with x in registers: 128-byte rows, at most 512 rows a block (12 of a thread's 16 rows in
    registers, the other 4 in shared memory after dy's slice), the smallest cluster that holds the rows; taller
    arrays in column groups of the largest clusters (or, without groups, on clusters of 16 with narrower rows)."""
    assert rx_plan(8192, 4096, 2) == ColsPlan(16, 128, 8, 64, 512, 64, 512 * 128 + 128 * 128)
    assert rx_plan(8192, 4096, 4) == ColsPlan(16, 128, 8, 32, 512, 128, 80 * 1024)
    assert rx_plan(384, 40, 2) == ColsPlan(1, 128, 8, 64, 384, 1, 384 * 128)  # all of x in registers
    assert rx_plan(1000, 24, 4) == ColsPlan(2, 128, 8, 32, 500, 1, (500 + 116) * 128)
    # taller: column groups of 128-byte rows (as many clusters a tile as hold the rows at 512 a block)
    assert rx_plan(8193, 40, 2) == ColsPlan(16, 128, 8, 64, 257, 1, 257 * 128, 1, 2)
    assert rx_plan(65536, 512, 2) == ColsPlan(16, 128, 8, 64, 512, 8, 80 * 1024, 1, 8)
    assert rx_plan(65536, 512, 4, max_cluster=8) == ColsPlan(8, 128, 8, 32, 512, 16, 80 * 1024, 1, 16)
    assert rx_plan(64 * 16 * 512, 8, 4).groups == 64 and rx_plan(64 * 16 * 512 + 1, 8, 4) is None  # max_groups
    assert rx_plan(8193, 40, 2, groups=False).groups == 1
    # without groups: clusters of 16 with 64-byte rows (up to 1024 rows a block), then 32-byte rows (2048)
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "group_tall", False)
    assert rx_plan(8193, 40, 2) == ColsPlan(16, 64, 4, 32, 513, 2, 513 * 64)
    assert rx_plan(16384, 2048, 2) == ColsPlan(16, 64, 4, 32, 1024, 64, (1024 + 256) * 64)
    assert rx_plan(16385, 40, 4) == ColsPlan(16, 32, 2, 8, 1025, 5, 1025 * 32)
    assert rx_plan(32768, 64, 2) == ColsPlan(16, 32, 2, 16, 2048, 4, (2048 + 512) * 32)
    assert rx_plan(32769, 64, 2) is None  # 2049 rows a block: cols_plan's backward
    assert rx_plan(8193, 40, 2, max_cluster=8) is None  # narrower rows only on clusters of 16
    assert rx_plan(8192, 4096, 2, max_cluster=8) is None
    assert rx_plan(8192, 4096, 2, mode="fallback") is None
    assert rx_plan(64, 4097, 2) is None and rx_plan(64, 4097, 4) is None  # not whole 16-byte vectors
    assert rx_plan(64, 64, 2, cc_major=8) is None


def test_rx_plan_switches(monkeypatch):
    cfg = _ops_cols.LAUNCH["cols1"]
    monkeypatch.setitem(cfg, "bwd_regs", False)
    assert rx_plan(8192, 4096, 2) is None
    monkeypatch.setitem(cfg, "bwd_regs", True)
    monkeypatch.setitem(cfg, "tiles_per_cluster", 2)  # the walking clusters are cols_bwd's
    assert rx_plan(8192, 4096, 2) is None


@pytest.fixture
def classic(monkeypatch):
    """The first plan configuration (64- then 32-byte rows, clusters of at most 8, one 112 KiB tier)."""
    cfg = _ops_cols.LAUNCH["cols1"]
    for key, value in (("row_bytes", (64, 32)), ("cta_bytes", BUDGET), ("max_cluster", 8), ("group_tall", False)):
        monkeypatch.setitem(cfg, key, value)


def test_plan_benchmark_shapes(classic):
    # x [8192, 4096]: 64-byte rows, 8 blocks of 1024 rows (64 KiB) per column tile
    assert cols_plan(8192, 4096, 2) == ColsPlan(8, 64, 4, 32, 1024, 128, 65536)
    assert cols_plan(8192, 4096, 4) == ColsPlan(8, 64, 4, 16, 1024, 256, 65536)
    # backward holds x and dy: 64-byte rows need 128 KiB > budget, 32-byte rows fit in 64 KiB
    assert cols_plan(8192, 4096, 2, 2) == ColsPlan(8, 32, 2, 16, 1024, 256, 65536)
    assert cols_plan(8192, 4096, 2, 2, cta_bytes=MAX_SMEM).row_bytes == 64


def test_plan_wide_rows_and_clusters_of_16(classic, monkeypatch):
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "row_bytes", (128, 64, 32))
    assert cols_plan(8192, 4096, 2) == ColsPlan(8, 64, 4, 32, 1024, 128, 65536)  # 64-byte rows fit 112 KiB
    assert cols_plan(8192, 4096, 2, cta_bytes=MAX_SMEM) == ColsPlan(8, 128, 8, 64, 1024, 64, 131072)
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "max_cluster", 16)
    assert cols_plan(8192, 4096, 2) == ColsPlan(16, 128, 8, 64, 512, 64, 65536)
    assert cols_plan(8192, 4096, 4) == ColsPlan(16, 128, 8, 32, 512, 128, 65536)
    assert cols_plan(8192, 4096, 2, 2) == ColsPlan(16, 64, 4, 32, 512, 128, 65536)
    assert wn_plan(150, 32, 4, 2).cluster == 16


def test_plan_tiles_per_cluster(classic):
    # two buffers when a cluster gets more than one tile: clusters of 16 keep 64 KiB per block
    assert cols_plan(8192, 4096, 2, per_cluster=2).smem == 2 * 32 * 1024  # 32-byte rows fit 2 x 32 KiB
    plan = cols_plan(8192, 4096, 2, per_cluster=2, row_bytes=(64,), max_bytes=BUDGET)
    assert plan is None  # 2 x 64 KiB over the budget with clusters of 8
    plan = cols_plan(8192, 4096, 2, per_cluster=3, cta_bytes=MAX_SMEM)
    assert plan == ColsPlan(8, 64, 4, 32, 1024, 128, 131072, 3) and plan.grid == 43 * 8
    assert cols_plan(8192, 64, 2, per_cluster=4).grid == 8  # 2 tiles, one cluster walks both
    assert cols_plan(8192, 32, 2, per_cluster=4).per_cluster == 1  # one tile: one buffer


def test_plan_fallbacks():
    assert cols_plan(8192, 4096, 2, cc_major=8) is None  # no clusters before sm_90
    assert cols_plan(8192, 4096, 2, cc_major=10) is None  # built for 9.x only
    assert cols_plan(8192, 4096, 2, mode="fallback") is None
    assert cols_plan(64, 203, 4) is None  # rows not a whole number of 16-byte vectors
    assert cols_plan(64, 204, 4) is not None
    assert cols_plan(64, 204, 2) is None
    assert cols_plan(0, 16, 4) is None and cols_plan(16, 0, 4) is None
    with pytest.raises(ValueError, match="mode"):
        cols_plan(8, 8, 4, mode="always")


def test_plan_limits(classic):
    # 64-byte rows up to the preferred budget, then 32-byte rows, then either up to MAX_SMEM, then 3 passes
    r64 = 8 * BUDGET // 64
    assert cols_plan(r64, 64, 2).row_bytes == 64 and cols_plan(r64, 64, 2).smem == BUDGET
    assert cols_plan(r64 + 1, 64, 2).row_bytes == 32
    r32 = 8 * BUDGET // 32
    assert cols_plan(r32, 64, 2).smem == BUDGET
    big = cols_plan(r32 + 1, 64, 2)
    assert big.smem > BUDGET and big.row_bytes == 32 and big.cluster == 8
    assert cols_plan(r32 + 1, 64, 2, max_bytes=BUDGET) is None
    rmax = 8 * (MAX_SMEM // 32)
    for mode in ("auto", "single"):
        plan = cols_plan(rmax, 64, 2, mode=mode)
        assert plan.smem <= MAX_SMEM and plan.cluster == 8 and plan.row_bytes == 32
        assert cols_plan(rmax + 8, 64, 2, mode=mode) is None
    # the smallest cluster that fits
    assert cols_plan(100, 4096, 4).cluster == 1
    assert cols_plan(2 * BUDGET // 64, 4096, 4).cluster == 2


@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("tensors", [1, 2])
def test_plan_covers_the_array(itemsize, tensors):
    rng = np.random.default_rng(0)
    for _ in range(300):
        R = int(rng.integers(1, 40000))
        C = int(rng.integers(1, 3000)) * (16 // itemsize)
        for mode in ("auto", "single"):
            plan = cols_plan(R, C, itemsize, tensors, mode=mode)
            if plan is None:
                assert cols_plan(R, C, itemsize, tensors, mode="single" if mode == "auto" else "auto") is None
                continue
            assert plan.smem <= MAX_SMEM
            assert plan.smem == plan.rows_per_cta * plan.row_bytes * tensors
            assert plan.tiles * plan.width >= C > (plan.tiles - 1) * plan.width
            assert plan.width * itemsize == plan.row_bytes == 16 * plan.vpr
            assert plan.cluster in _ops_cols.CLUSTERS and plan.width <= _ops_cols.MAX_COLS
            assert plan.rows_per_cta == math.ceil(R / (plan.cluster * plan.groups))
            if plan.groups > 1:  # the forward's column groups: 128-byte rows, each group's blocks hold rows
                assert tensors == 1 and plan.row_bytes == 128 and plan.per_cluster == 1
                assert (plan.groups - 1) * plan.cluster * plan.rows_per_cta < R


def test_wn_plan(classic):
    # the benchmark's layout: ~128-150 blocks of 32 x 32 per block column
    plan = wn_plan(150, 32, 2)
    assert plan.cluster == 4 and plan.bpc == 38 and plan.vpr == 4 and plan.smem == 38 * 2048 + 160
    assert wn_plan(150, 32, 2, 2).cluster == 8
    assert wn_plan(150, 32, 4, 2).smem == 19 * 8192 + 80  # over the preferred budget: 1 block per SM
    assert wn_plan(150, 32, 4, 2, max_bytes=BUDGET) is None
    assert wn_plan(1, 8, 2).vpr == 1 and wn_plan(1, 64, 4).vpr == 16
    assert wn_plan(0, 32, 2).bpc == 1  # empty layouts still launch a valid plan
    assert wn_plan(10, 4, 2) is None  # a block row under 16 bytes
    assert wn_plan(10, 48, 2) is None  # not a power of two
    assert wn_plan(10, 128, 2) is None  # wider than a tile
    assert wn_plan(10, 32, 2, cc_major=8) is None
    assert wn_plan(10, 32, 2, mode="fallback") is None
    assert wn_plan(1_000, 32, 2) is None  # a block column too large for a cluster
    assert wn_plan(800, 32, 2, mode="single").smem == 100 * 2048 + 400


def test_keep_plan():
    """The tall-array plan: 128-byte column tiles, the co-resident blocks shared among the tiles, the rows of a
    tile among its blocks (the last one ragged), the first rows up to KEEP_SMEM kept."""
    # [131072, 256] bf16 on 264 blocks (2 an SM of an H100): 4 tiles of 66 blocks, 1986 rows a block
    assert keep_plan(131072, 256, 2, 1, 264) == KeepPlan(4, 66, 1986, 832, 832 * 128)
    assert keep_plan(131072, 256, 2, 2, 264) == KeepPlan(4, 66, 1986, 416, 416 * 256)
    kp = keep_plan(65536, 520, 4, 2, 264)  # 17 tiles (the last one 2 columns): 15 blocks a tile
    assert (kp.tiles, kp.bpt, kp.rows_per_cta) == (17, 15, 4370) and kp.grid <= 264
    kp = keep_plan(100, 64, 2, 1, 264)  # every row kept, blocks of one row
    assert (kp.tiles, kp.bpt, kp.rows_per_cta, kp.keep) == (1, 100, 1, 1)
    for R, C, itemsize, tensors in ((9001, 72, 2, 1), (70001, 1000, 4, 2), (3, 8, 2, 2)):
        kp = keep_plan(R, C, itemsize, tensors, 264)
        assert kp.grid <= 264 and kp.bpt * kp.rows_per_cta >= R > (kp.bpt - 1) * kp.rows_per_cta
        assert kp.tiles * 128 >= C * itemsize > (kp.tiles - 1) * 128 and kp.smem <= KEEP_SMEM
    assert keep_plan(8, 4096 * 8, 2, 1, 264) is None  # 512 tiles: more than the blocks
    assert keep_plan(8, 7, 2, 1, 264) is None  # not a whole number of 16-byte vectors
    assert keep_plan(8, 64, 2, 1, 264, cc_major=8) is None
    assert keep_plan(8, 64, 2, 1, 0) is None  # no occupancy query


def test_keep_wanted(monkeypatch):
    cfg = _ops_cols.LAUNCH["cols1"]
    wide = cols_plan(8192, 4096, 2)
    narrow = cols_plan(8192, 4096, 2, row_bytes=(64,), groups=False)
    assert cfg["keep"] == "auto" and wide.row_bytes == 128 and narrow.row_bytes == 64
    assert not _ops_cols._keep_wanted(wide)
    assert _ops_cols._keep_wanted(narrow) and _ops_cols._keep_wanted(None)
    assert not _ops_cols._keep_wanted(dataclasses_replace(wide, groups=2))  # column groups stay
    assert _ops_cols._keep_wanted(dataclasses_replace(wide, smem=200 * 1024))  # one block an SM
    # the fraction kept on chip (H100, 264 blocks): [131072, 256] bf16 0.42 forward, 0.21 backward; float32
    # backward 0.10 (the 3-pass path stays)
    assert keep_plan(131072, 256, 2, 2, 264).kept > _ops_cols.KEEP_MIN
    low = keep_plan(131072, 256, 4, 2, 264)
    assert low.kept < _ops_cols.KEEP_MIN and not _ops_cols._keep_wanted(None, low)
    assert _ops_cols._keep_wanted(None, keep_plan(131072, 256, 4, 1, 264))
    monkeypatch.setitem(cfg, "keep", "never")
    assert not _ops_cols._keep_wanted(None)
    monkeypatch.setitem(cfg, "keep", "always")
    assert _ops_cols._keep_wanted(wide)
    monkeypatch.setitem(cfg, "keep", "sometimes")
    with pytest.raises(ValueError, match="keep"):
        _ops_cols._keep_wanted(wide)


def test_static_shared_memory_fits_the_plans():
    """The plans give a block up to MAX_SMEM of dynamic shared memory: the kernels' static arrays must fit the
    rest of sm_90's 227 KiB (a launch over it fails; it once did, and the failure read as a refused cluster).
    cols_bwd_rx: two blocks of its largest plan of each row width (80 KiB) an SM."""
    kernels = ("cols_fwd<{}, 16, false>", "cols_fwd<{}, 16, true>", "cols_bwd<{}, 16>", "wn_unit<{}, 16>")
    names = [k.format(t) for k in kernels for t in _ops_cols._CTYPE.values()]
    # cols_bwd_rx: the layer-norm form (the larger of the two), every row width
    rx_max = {vpr: rx_plan(16 * rx_max_rows(vpr), 4096, 2, groups=False).smem for vpr in (RX_VPR, *RX_NARROW)}
    names += [f"cols_bwd_rx<{t}, 16, true, {vpr}, false>" for t in _ops_cols._CTYPE.values() for vpr in rx_max]
    names += [f"cols_bwd_rx<{t}, 16, true, {RX_VPR}, true>" for t in _ops_cols._CTYPE.values()]  # column groups
    # the tall-array kernels: two blocks an SM of KEEP_SMEM each
    names += [f"cols_keep_fwd<{t}>" for t in _ops_cols._CTYPE.values()]
    names += [f"cols_keep_bwd<{t}, {ln}>" for t in _ops_cols._CTYPE.values() for ln in ("false", "true")]
    specs = [compiler.KernelSpec("ew_cols.cu", n) for n in names]
    compiled = compiler.compile_specs(specs, "sm_90")
    for spec in specs:
        static = compiled[spec].shared_static
        assert static is not None, spec
        if "cols_bwd_rx" in spec.name:
            vpr = int(spec.name.split(",")[3])
            assert 2 * (static + rx_max[vpr] + 1024) <= 228 * 1024, (spec, static)
        elif "cols_keep" in spec.name:
            assert 2 * (static + KEEP_SMEM + 1024) <= 228 * 1024, (spec, static)
        else:
            assert static <= 227 * 1024 - MAX_SMEM, (spec, static)


def test_cluster_refusal(monkeypatch):
    """A launch of a cluster of 16 that fails with a cluster error is a refusal (plan again with 8, recorded);
    any other error is raised, never taken for one."""

    def fail(message):
        def launch(*args):
            raise RuntimeError(message)

        return launch

    import types

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 7)))
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake)
    monkeypatch.setattr(_ops_cols, "_NO_CLUSTER16", set())
    monkeypatch.setattr(_ops_cols, "_launch", fail("CUDA_ERROR_INVALID_VALUE: invalid argument"))
    with pytest.raises(RuntimeError, match="INVALID_VALUE"):
        _ops_cols._launch_or_refused("cols_fwd", np.float32, 16, 16, 0, ())
    assert _ops_cols._NO_CLUSTER16 == set()
    monkeypatch.setattr(_ops_cols, "_launch", fail("CUDA_ERROR_INVALID_CLUSTER_SIZE: invalid cluster size"))
    with pytest.raises(RuntimeError):
        _ops_cols._launch_or_refused("cols_fwd", np.float32, 8, 8, 0, ())  # 8 is portable: an error
    assert _ops_cols._launch_or_refused("cols_fwd", np.float32, 16, 16, 0, ()) is False
    assert _ops_cols._NO_CLUSTER16 == {7}


def test_specializations_arch_specific():
    specs = compiler.all_specializations()["ew_cols"]
    # cols_bwd_rx twice (batch norm, layer norm), on clusters of 16 also with each narrower row width, and on
    # clusters of 8 and 16 with column groups (cols_fwd too); the tall-array kernels (forward, two backwards)
    assert len(specs) == 3 * len(_ops_cols.CLUSTERS) * 5 + 3 * 2 * len(RX_NARROW) + 3 * 2 * 3 + 3 * 3
    assert all(compiler.target_arch(s.source, "sm_90") == "sm_90" for s in specs)
    assert not any(compiler.target_arch(s.source, "sm_80") for s in specs)


# ---------------------------------------------------------------------------------------------------
# GPU


def _gpu(host, misalign=False):
    import cupy

    if not misalign:
        return cupy.asarray(host)
    flat = cupy.empty(host.size + 1, dtype=host.dtype)
    view = flat[1:].reshape(host.shape)
    view[...] = cupy.asarray(host)
    return view


def _poison_pool(nbytes=64 << 20):
    import cupy

    for n in (nbytes // 4, 1 << 20, 1 << 16, 1 << 12):
        a = cupy.full(n, np.nan, dtype=cupy.float32)
        del a


@pytest.fixture
def mode(request, monkeypatch):
    """Force the one-pass path ("single"; "single2", "single8", "single16": clusters of 2, 8 or 16 blocks
    whatever the size, so that small arrays cover ranks with few or no rows; "single_smem": the backward without
    x in registers) or the 3-pass path ("fallback"); records the one-pass launches. Yields ("single" or "fallback", the launched kernel names)."""
    import cupy

    name = request.param
    if name != "fallback" and not compiler.device_arch().startswith("sm_9"):
        pytest.skip("the one-pass kernels need compute capability 9.x")
    if name == "single_smem":  # the backward with both inputs in shared memory (cols_bwd) wherever it fits
        monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "bwd_regs", False)
        name = "single"
    if name in ("single2", "single8", "single16"):
        monkeypatch.setattr(_ops_cols, "CLUSTERS", (int(name[6:]),))
        monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "max_cluster", 16)
        name = "single"
    # "keep": the tall-array kernels wherever keep_plan has a plan; the other modes test the cluster kernels
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "keep", "always" if name == "keep" else "never")
    name = "auto" if name == "keep" else name
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "mode", name)
    monkeypatch.setattr(_ops_cols, "_PLANS", {})
    monkeypatch.setattr(_ops_cols, "_NO_CLUSTER16", set())  # a refusal in one test must not change the next
    monkeypatch.setattr(_ops_cols, "_NO_GROUPS", set())
    launched = []
    real = _ops_cols._launch

    def spy(name, *args, **kwargs):
        launched.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(_ops_cols, "_launch", spy)
    yield name, launched
    cupy.cuda.get_current_stream().synchronize()


def _expect(mode_launched, name, shape, dtype, tensors):
    """The one-pass kernel ran (once) iff forced and its plan exists (a forced small cluster may not fit)."""
    mode, launched = mode_launched
    itemsize = np.dtype(random_array(np.random.default_rng(0), (1,), dtype).dtype).itemsize
    k = _ops_cols.LAUNCH["cols1"]["tiles_per_cluster"]
    if name == "cols_bwd" and mode == "single" and rx_plan(*shape, itemsize, mode="single") is not None:
        assert launched == ["cols_bwd_rx"], launched
    elif mode == "single" and cols_plan(*shape, itemsize, tensors, mode="single", per_cluster=k) is not None:
        assert launched == [name], launched
    else:
        assert name not in launched and "cols_bwd_rx" not in launched, launched


# ragged (C not a multiple of the tile, R not a multiple of the cluster), aligned, tiny, tall
# (8193, 40), (16500, 24): cols_bwd_rx's 64- and 32-byte rows on clusters of 16; (33000, 16): taller (cols_bwd
# with 2063 rows a block, past the rows of its gain per row held in registers)
SHAPES = [(37, 208), (64, 256), (2, 16), (1000, 24), (4099, 72), (8193, 40), (16500, 24), (33000, 16), (5, 4096 + 64)]


def _x(rng, shape, dtype):
    return (random_array(rng, shape, "float32") * 3 + 5).astype(random_array(rng, (1,), dtype).dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["layer0", "batch1", "batch1_running"])
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_cols_fwd(mode, dtype, shape, kind, affine, rng):
    import cupy

    x = _x(rng, shape, dtype)
    fa = 0 if kind == "layer0" else 1
    F = shape[fa]
    g = random_array(rng, (F,), dtype) if affine else None
    b = random_array(rng, (F,), dtype) if affine else None
    gg, gb = (None if a is None else _gpu(a) for a in (g, b))
    hg, hb = (None if a is None else f64(a) for a in (g, b))
    _poison_pool()
    if kind == "layer0":
        y, m, r = ops.layer_norm_fprop(_gpu(x), gg, gb, feature_axis=0)
        ry, rm, rr = ref.layer_norm_fprop(f64(x), hg, hb, 0)
    else:
        running = kind == "batch1_running"
        rm0 = rng.standard_normal(F).astype(np.float32)
        rv0 = (rng.random(F) + 0.5).astype(np.float32)
        grm, grv = (cupy.asarray(rm0), cupy.asarray(rv0)) if running else (None, None)
        hrm, hrv = rm0.astype(np.float64), rv0.astype(np.float64)
        y, m, r = ops.batch_norm_fprop(_gpu(x), gg, gb, running_mean=grm, running_var=grv, momentum=0.25)
        ry, rm, rr = ref.batch_norm_fprop(f64(x), hg, hb, 1, True, hrm, hrv, 0.25)
        if running:
            assert_close(grm, hrm, "float32", "running_mean")
            assert_close(grv, hrv, "float32" if dtype == "float32" else "float16", "running_var")
    _expect(mode, "cols_fwd", shape, dtype, 1)
    assert m.dtype == r.dtype == np.float32 and m.shape == r.shape == (shape[1],)
    assert_close(m, rm, "float32", "mean")
    assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")
    # y = (x − mean)·rstd·g + b cancels when a column's values are close (2 rows): errors relative to the
    # terms it is computed from, |x|·rstd·|g| + |b|
    gs = 1.0 if g is None else np.abs(f64(g)).reshape((-1, 1) if fa == 0 else (1, -1))
    bs = 0.0 if b is None else np.abs(f64(b)).reshape((-1, 1) if fa == 0 else (1, -1))
    assert_close(y, ry, dtype, "y", scale=np.abs(f64(x)) * rr.reshape(1, -1) * gs + bs)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["layer0", "batch1", "batch1_eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_cols_bwd(mode, dtype, shape, kind, affine, rng):
    x = _x(rng, shape, dtype)
    dy = random_array(rng, shape, dtype)
    fa = 0 if kind == "layer0" else 1
    F = shape[fa]
    g = random_array(rng, (F,), dtype) if affine else None
    gg, hg = (None, None) if g is None else (_gpu(g), f64(g))
    # the forward statistics from the reference (float32, as the GPU forward returns them)
    if kind == "layer0":
        _, rm, rr = ref.layer_norm_fprop(f64(x), hg, None, 0)
    else:
        _, rm, rr = ref.batch_norm_fprop(f64(x), hg, None, 1, True, None, None)
    m, r = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
    _poison_pool()
    if kind == "layer0":
        grads = ops.layer_norm_bprop(_gpu(dy), _gpu(x), gg, m, r, feature_axis=0)
        rgrads = ref.layer_norm_bprop(f64(dy), f64(x), hg, f64(m), f64(r), 0)
    else:
        training = kind == "batch1"
        grads = ops.batch_norm_bprop(_gpu(dy), _gpu(x), gg, m, r, training=training)
        rgrads = ref.batch_norm_bprop(f64(dy), f64(x), hg, f64(m), f64(r), 1, training)
    _expect(mode, "cols_bwd", shape, dtype, 2)
    # dx cancels when a norm spans few rows: errors relative to the terms it is computed from (test_ops)
    gcol = f64(g).reshape(1, -1) if (g is not None and fa == 1) else 1.0
    grow = f64(g).reshape(-1, 1) if (g is not None and fa == 0) else 1.0
    terms = gcol * grow * f64(r).reshape(1, -1) * f64(dy)
    for name, a, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
        if e is None:
            assert a is None, name
            continue
        assert_close(a, e, dtype, name, scale=terms if name == "dx" else None)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single"], indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_cols_not_applicable(mode, dtype, rng):
    """Misaligned views and rows of a partial 16-byte vector take the 3-pass path even when forced."""
    lanes = 16 // np.dtype(random_array(rng, (1,), dtype).dtype).itemsize
    for shape, misalign in (((40, 3 * lanes + 1), False), ((40, 4 * lanes), True)):
        mode[1].clear()
        x = _x(rng, shape, dtype)
        y, m, r = ops.batch_norm_fprop(_gpu(x, misalign))
        dx, _, _ = ops.batch_norm_bprop(_gpu(x, misalign), _gpu(x, misalign), None, m, r)
        assert mode[1] == [], (shape, misalign, mode[1])
        ry, _, _ = ref.batch_norm_fprop(f64(x), None, None, 1, True, None, None)
        assert_close(y, ry, dtype, "y")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single"], indirect=True)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_gpu_cols_fit_limit(mode, dtype, which, rng, monkeypatch):
    """The tallest array whose tile fits a block's shared memory (cluster of 16, 32-byte rows; no column
    groups)."""
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "group_tall", False)
    itemsize = 2 if dtype == "bfloat16" else 4
    tensors = 1 if which == "fwd" else 2
    R = 16 * (MAX_SMEM // (32 * tensors))
    shape = (R, 64 // itemsize)
    plan = cols_plan(*shape, itemsize, tensors, mode="single")
    assert plan.smem > MAX_SMEM - 32 * tensors and plan.row_bytes == 32 and plan.cluster == 16
    assert cols_plan(R + 16, shape[1], itemsize, tensors, mode="single") is None
    x = _x(rng, shape, dtype)
    g, b = random_array(rng, (shape[1],), dtype), random_array(rng, (shape[1],), dtype)
    _poison_pool()
    if which == "fwd":
        y, m, r = ops.batch_norm_fprop(_gpu(x), _gpu(g), _gpu(b))
        ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), f64(b), 1, True, None, None)
        assert_close(m, rm, "float32", "mean")
        assert_close(y, ry, dtype, "y")
    else:
        dy = random_array(rng, shape, dtype)
        _, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), None, 1, True, None, None)
        m, r = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
        grads = ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m, r)
        rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m), f64(r), 1, True)
        for name, a, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
            assert_close(a, e, dtype, name)
    assert mode[1] == ["cols_fwd" if which == "fwd" else "cols_bwd"]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single8"], indirect=True)
@pytest.mark.parametrize("shape", [(4099, 72), (4000, 72)])  # cols_bwd (513 rows a block), cols_bwd_rx (500)
def test_gpu_cols_deterministic(mode, shape, rng, monkeypatch):
    """(Without column groups; test_gpu_cols_groups runs them twice.)"""
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "group_tall", False)
    x = _x(rng, shape, "float32")
    dy = random_array(rng, shape, "float32")
    outs = []
    for _ in range(2):
        mode[1].clear()
        y, m, r = ops.batch_norm_fprop(_gpu(x))
        dx, dg, db = ops.batch_norm_bprop(_gpu(dy), _gpu(x), None, m, r)
        outs.append([to_numpy(a) for a in (y, m, r, dx, db)])
    assert mode[1] == ["cols_fwd", "cols_bwd" if shape[0] > 4096 else "cols_bwd_rx"]
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single16"], indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "R", [8192, 8193, 384 * 16, 384 * 16 + 1, 768 * 16, 768 * 16 + 1, 16384, 16385, 20011, 32768, 32769]
)
@pytest.mark.parametrize("kind", ["batch1", "layer0"])
@pytest.mark.parametrize("groups", [False, True])
def test_gpu_cols_rx_limit(mode, dtype, R, kind, groups, rng, monkeypatch):
    """The backward at the register kernel's limits: 512 rows a block of 128-byte rows (8192 with clusters of
    16; 8193 takes 64-byte rows), 1024 of 64 bytes (16384; 16385 takes 32-byte rows), 2048 of 32 bytes (32768;
    32769 takes cols_bwd); 384 rows a block of 128 bytes (x wholly in registers) or 385 (one row of x in shared
    memory), 768 and 769 of 64 bytes likewise; 20011: 1251 rows of 32 bytes, static and dynamic shared memory
    together past 48 KiB with the dynamic part under 40 KiB (a launch once failed there); ragged columns, gains
    per column (batch norm) and per row with the row sums (layer norm, features first). With column groups,
    every R past 8192 takes groups of 128-byte rows (2 to 5 clusters a tile)."""
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "group_tall", groups)
    shape = (R, 200) if kind == "batch1" else (R, 72)
    x = _x(rng, shape, dtype)
    dy = random_array(rng, shape, dtype)
    fa = 0 if kind == "layer0" else 1
    g = random_array(rng, (shape[fa],), dtype)
    if fa == 1:
        _, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), None, 1, True, None, None)
    else:
        _, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), None, 0)
    m, r = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
    _poison_pool()
    if fa == 1:
        grads = ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m, r)
        rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m), f64(r), 1, True)
        terms = f64(g).reshape(1, -1) * f64(r).reshape(1, -1) * f64(dy)
    else:
        grads = ops.layer_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m, r, feature_axis=0)
        rgrads = ref.layer_norm_bprop(f64(dy), f64(x), f64(g), f64(m), f64(r), 0)
        terms = f64(g).reshape(-1, 1) * f64(r).reshape(1, -1) * f64(dy)
    assert mode[1] == ["cols_bwd_rx" if R <= 32768 or groups else "cols_bwd"], mode[1]
    for name, a, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
        assert_close(a, e, dtype, name, scale=terms if name == "dx" else None)


# (9001, 200): the backward in 2 groups, the forward in one cluster; (40000, 72), (70001, 40): both in 5-9
# groups; on clusters of 2: 3-60 groups
@pytest.mark.gpu
@pytest.mark.parametrize(
    "mode,shape",
    [("single", (9001, 200)), ("single", (40000, 72)), ("single", (70001, 40)), ("single2", (9001, 200)),
     ("single2", (40000, 72))],
    indirect=["mode"],
)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kind", ["batch1", "layer0"])
def test_gpu_cols_groups(mode, dtype, shape, kind, rng, monkeypatch):
    """Column groups (tall arrays: a tile's rows over several clusters that add their sums through global
    memory), forward and backward against the reference, twice with the same bits; then with the co-resident
    clusters too few for the groups: planned again without them (recorded), the same results."""
    import cupy

    itemsize = np.dtype(random_array(rng, (1,), dtype).dtype).itemsize
    x = _x(rng, shape, dtype)
    dy = random_array(rng, shape, dtype)
    fa = 0 if kind == "layer0" else 1
    g = random_array(rng, (shape[fa],), dtype)
    b = random_array(rng, (shape[fa],), dtype)
    if fa == 1:
        ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), f64(b), 1, True, None, None)
    else:
        ry, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), f64(b), 0)
    m32, r32 = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
    gs = np.abs(f64(g)).reshape((-1, 1) if fa == 0 else (1, -1))
    terms = gs * f64(r32).reshape(1, -1) * f64(dy)

    def run():
        _poison_pool()
        mode[1].clear()
        if fa == 1:
            fwd = ops.batch_norm_fprop(_gpu(x), _gpu(g), _gpu(b))
            bwd = ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32)
        else:
            fwd = ops.layer_norm_fprop(_gpu(x), _gpu(g), _gpu(b), feature_axis=0)
            bwd = ops.layer_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32, feature_axis=0)
        cupy.cuda.get_current_stream().synchronize()
        return [to_numpy(a) for a in (*fwd, *bwd)], list(mode[1])

    first, launched = run()
    # the launch plans (column groups kept where the co-resident clusters hold 2 groups at once, or every tile)
    plans = (_ops_cols._plan("cols", x.dtype, *shape, 1, 0 if fa else 8), _ops_cols._plan("rx", x.dtype, *shape, 2))
    y, m, r, dx, dg, db = first
    assert_close(m, rm, "float32", "mean")
    assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")
    assert_close(y, ry, dtype, "y", scale=np.abs(f64(x)) * rr.reshape(1, -1) * gs + np.abs(f64(b)).reshape(gs.shape))
    rgrads = (ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, True) if fa == 1
              else ref.layer_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 0))
    for name, a, e in zip(("dx", "dgain", "dbias"), (dx, dg, db), rgrads):
        assert_close(a, e, dtype, name, scale=terms if name == "dx" else None)
    assert launched == ["cols_fwd"] + (["cols_bwd_rx"] if plans[1] else []), (launched, plans)
    if shape[0] < 70000 or itemsize == 2:  # H100: 14 co-resident clusters of 16 for cols_bwd_rx
        assert plans[1].groups > 1, plans
    again, _ = run()
    for a, b_ in zip(first, again):
        assert np.array_equal(a, b_, equal_nan=True)
    # too few co-resident clusters: planned again without groups, recorded per shape
    monkeypatch.setattr(_ops_cols, "_max_active_clusters", lambda *a, **k: 1)
    monkeypatch.setattr(_ops_cols, "_PLANS", {})
    monkeypatch.setattr(_ops_cols, "_NO_GROUPS", set())
    flat, _ = run()
    pure = (cols_plan(*shape, itemsize, 1, row_params=0 if fa else 8), rx_plan(*shape, itemsize))
    assert len(_ops_cols._NO_GROUPS) == sum(p.groups > 1 for p in pure if p is not None)
    for name, a, e in zip(("y", "mean", "rstd", "dx", "dgain", "dbias"), flat, first):
        assert_close(a, e, dtype if name not in ("mean", "rstd") else "float32", name)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keep"], indirect=True)
@pytest.mark.parametrize("shape", [(70001, 72), (9001, 200), (300001, 40), (2000, 4104), (3, 16), (40, 8)])
@pytest.mark.parametrize("keep_bytes", [None, 16384])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kind", ["batch1", "layer0"])
def test_gpu_cols_keep(mode, dtype, shape, keep_bytes, kind, rng, monkeypatch):
    """The tall-array kernels (every column tile at once on the co-resident blocks; the rows past what a block
    keeps in shared memory read twice), forward and backward against the reference, twice with the same bits.
    keep_bytes 16384: 128 rows kept forward, 64 backward, so most rows are streamed."""
    import cupy

    if keep_bytes:
        monkeypatch.setattr(_ops_cols, "KEEP_SMEM", keep_bytes)
    x = _x(rng, shape, dtype)
    dy = random_array(rng, shape, dtype)
    fa = 0 if kind == "layer0" else 1
    g = random_array(rng, (shape[fa],), dtype)
    b = random_array(rng, (shape[fa],), dtype)
    rm0 = rng.standard_normal(shape[1]).astype(np.float32)
    rv0 = (rng.random(shape[1]) + 0.5).astype(np.float32)
    if fa == 1:
        ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), f64(b), 1, True, f64(rm0), f64(rv0), 0.25)
    else:
        ry, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), f64(b), 0)
    m32, r32 = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
    gs = np.abs(f64(g)).reshape((-1, 1) if fa == 0 else (1, -1))
    terms = gs * f64(r32).reshape(1, -1) * f64(dy)

    def run():
        _poison_pool()
        mode[1].clear()
        if fa == 1:
            grm, grv = _gpu(rm0), _gpu(rv0)
            fwd = ops.batch_norm_fprop(_gpu(x), _gpu(g), _gpu(b), running_mean=grm, running_var=grv, momentum=0.25)
            bwd = ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32)
            extra = (grm, grv, *ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32, training=False))
        else:
            fwd = ops.layer_norm_fprop(_gpu(x), _gpu(g), _gpu(b), feature_axis=0)
            bwd = ops.layer_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32, feature_axis=0)
            extra = ops.layer_norm_bprop(_gpu(dy), _gpu(x), None, m32, r32, feature_axis=0)
        cupy.cuda.get_current_stream().synchronize()
        return [to_numpy(a) for a in (*fwd, *bwd, *extra) if a is not None], list(mode[1])

    first, launched = run()
    itemsize = np.dtype(x.dtype).itemsize
    blocks = [_ops_cols._keep_blocks(n, x.dtype, s_, e) for n, s_, e in
              (("cols_keep_fwd", _ops_cols.KEEP_SMEM // 128 * 128, ""),
               ("cols_keep_bwd", _ops_cols.KEEP_SMEM // 256 * 256, ", false"))]
    plans = [keep_plan(*shape, itemsize, t, n, keep_bytes=_ops_cols.KEEP_SMEM) for t, n in zip((1, 2), blocks)]
    assert blocks[0] >= 2 * 100 and blocks[1] >= 2 * 100, blocks  # 2 an SM (H100: 132 SMs)
    want = ["cols_keep_fwd" if plans[0] else "cols_fwd", "cols_keep_bwd" if plans[1] else "cols_bwd_rx"]
    assert launched[:2] == want, (launched, plans)
    y, m, r, dx, dg, db, *rest = first
    assert_close(m, rm, "float32", "mean")
    assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")
    assert_close(y, ry, dtype, "y", scale=np.abs(f64(x)) * rr.reshape(1, -1) * gs + np.abs(f64(b)).reshape(gs.shape))
    if fa == 1:
        rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, True)
        hrm, hrv = f64(rm0), f64(rv0)
        ref.batch_norm_fprop(f64(x), f64(g), f64(b), 1, True, hrm, hrv, 0.25)  # the running statistics
        assert_close(rest[0], hrm, "float32", "running_mean")
        assert_close(rest[1], hrv, "float32" if dtype == "float32" else "float16", "running_var")
        for name, a, e in zip(("dx", "dgain", "dbias"), rest[2:],
                              ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, False)):
            assert_close(a, e, dtype, name + " (not training)", scale=terms if name == "dx" else None)
    else:
        rgrads = ref.layer_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 0)
        rdx, _, rdb = ref.layer_norm_bprop(f64(dy), f64(x), None, f64(m32), f64(r32), 0)
        assert_close(rest[0], rdx, dtype, "dx (no gain)", scale=f64(r32).reshape(1, -1) * np.abs(f64(dy)))
        assert_close(rest[1], rdb, dtype, "dbias (no gain)")
    for name, a, e in zip(("dx", "dgain", "dbias"), (dx, dg, db), rgrads):
        assert_close(a, e, dtype, name, scale=terms if name == "dx" else None)
    again, _ = run()
    for a, b_ in zip(first, again):
        assert np.array_equal(a, b_, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32, 64])
@pytest.mark.parametrize("gain", [True, False])
def test_gpu_wn_unit(mode, dtype, block_size, gain, rng):
    mask = rng.random((9, 6)) < 0.5
    mask[:, 0] = True  # a full block column
    mask[:, 2] = False  # an empty one: its units keep rnorm = 1/sqrt(eps) and no blocks to write
    mask[0, 3] = True
    bsmm = BlockSparseMatMul(mask, block_size=block_size)
    w, dv = random_array(rng, bsmm.w_shape, dtype), random_array(rng, bsmm.w_shape, dtype)
    g = random_array(rng, (bsmm.M,), dtype) if gain else None
    gg, hg = (None, None) if g is None else (_gpu(g), f64(g))
    _poison_pool()
    v, rn = ops.weight_norm_fprop(bsmm, _gpu(w), gg, per="unit", eps=1e-6)
    rv, rrn = ref.weight_norm_fprop(bsmm.layout, f64(w), hg, "unit", 1e-6)
    assert rn.dtype == np.float32 and rn.shape == (bsmm.M,)
    assert_close(rn, rrn, "float32" if dtype == "float32" else "float16", "rnorm")
    assert_close(v, rv, dtype, "v")
    dw, dg = ops.weight_norm_bprop(bsmm, _gpu(dv), _gpu(w), gg, rn, per="unit")
    rdw, rdg = ref.weight_norm_bprop(bsmm.layout, f64(dv), f64(w), hg, f64(rn), "unit")
    assert_close(dw, rdw, dtype, "dw")
    if gain:
        assert dg.dtype == gg.dtype and dg.shape == (bsmm.M,)
        assert_close(dg, rdg, dtype, "dgain")
    else:
        assert dg is None
    mode_name, launched = mode
    assert launched == (["wn_unit", "wn_unit"] if mode_name == "single" else []), launched


# ---------------------------------------------------------------------------------------------------
# CPU: the real kernels/ew_cols.cu, compiled for the host with the cluster emulated
# (tests/cuda_emulation/ew_cols_emu.h: a std::thread per CUDA thread, per-block shared memory, DSMEM reads
# by variable and offset), launched by the real host code of _ops_cols through ops with NumPy-backed
# stand-ins for CuPy arrays. float32 and bfloat16 (V = 4 and 8 lanes).


def _build_emulator(directory):
    import ctypes
    import hashlib
    import re
    import subprocess

    from cuda_emulation import fake_cupy

    here = fake_cupy.HERE
    src = (fake_cupy.KERNELS / "ew_cols.cu").read_text()
    a, b = src.index("// --- PTX wrappers"), src.index("// --- end of PTX wrappers ---")
    src = src[:a] + src[b:]
    pack16 = (fake_cupy.KERNELS / "pack16.cuh").read_text().replace("#pragma once", "")
    src = re.sub(r'#include "pack16.cuh".*', lambda m: pack16, src)
    src = src.replace('#include "common.cuh"', "")
    src = src.replace(
        "extern __shared__ uint4 tile[];",
        'uint4* tile = reinterpret_cast<uint4*>(emu_smem("dyn", emu_cluster->dyn));',
    )
    src = re.sub(
        r"__shared__ (\w+) (\w+)((?:\[\w+\])+);",
        lambda m: (
            f'auto& {m[2]} = *reinterpret_cast<{m[1]}(*){m[3]}>(emu_smem("{m[2]}", sizeof({m[1]}{m[3]})));'
        ),
        src,
    )
    assert "__shared__" not in src
    inputs = [(here / n).read_bytes() for n in ("ew_cols_emu.h", "ew_cols_driver.cpp")]
    digest = hashlib.sha256(src.encode() + b"".join(inputs)).hexdigest()[:16]
    lib = directory / f"ew_cols_emu-{digest}.so"
    if not lib.exists():
        (directory / "ew_cols_emu.cu").write_text(src)
        res = subprocess.run(
            [
                "g++",
                "-std=c++20",
                "-O1",
                "-pthread",
                "-shared",
                "-fPIC",
                "-Wno-unknown-pragmas",
                f"-I{directory}",
                f"-I{here}",
                str(here / "ew_cols_driver.cpp"),
                "-o",
                str(lib),
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def emulator_lib(tmp_path_factory):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return _build_emulator(tmp_path_factory.mktemp("ew_cols_emu"))


@pytest.fixture
def emulated(monkeypatch, emulator_lib, request):
    """ops' GPU path on the CPU: fake CuPy arrays, _ops_cols launches into the emulator; clusters of
    request.param blocks (None: the plan's choice). Yields (the fake cupy module, launched names)."""
    import ctypes
    import sys

    from cuda_emulation import fake_cupy

    from cusparseblocks import _array

    mod = fake_cupy._module()
    mod.empty_like = lambda a: fake_cupy._wrap(fake_cupy._poisoned(a.shape, a.dtype))
    monkeypatch.setitem(sys.modules, "cupy", mod)
    assert _array.is_cupy(mod.zeros(1))

    def backend_of(**arrays):  # the stand-in arrays subclass numpy.ndarray: they are "cupy" here
        kinds = {isinstance(a, fake_cupy.ndarray) for a in arrays.values() if a is not None}
        assert len(kinds) <= 1, "mixed arrays"
        return "cupy" if kinds == {True} else "numpy"

    monkeypatch.setattr(ops, "backend_of", backend_of)
    monkeypatch.setattr(_ops_cols, "_PLANS", {})
    monkeypatch.setattr(_ops_cols, "_cc_major", lambda dev: 9)
    monkeypatch.setattr(
        _ops_cols, "_aligned", lambda *arrs: all(a is None or a.ctypes.data % 16 == 0 for a in arrs)
    )
    monkeypatch.setattr(ops, "_WN_TABLES", {})
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "mode", "single")
    if getattr(request, "param", None):
        monkeypatch.setattr(_ops_cols, "CLUSTERS", (request.param,))
        monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "max_cluster", 16)
    launched = []
    fns = {
        "cols_fwd": emulator_lib.emu_cols_fwd,
        "cols_bwd": emulator_lib.emu_cols_bwd,
        "cols_bwd_rx": emulator_lib.emu_cols_bwd_rx,
        "wn_unit": emulator_lib.emu_wn_unit,
        "cols_keep_fwd": emulator_lib.emu_cols_keep_fwd,
        "cols_keep_bwd": emulator_lib.emu_cols_keep_bwd,
    }

    def launch(name, dtype, cluster, grid, smem, args, extra="", coop=False):
        name_t = np.dtype(dtype).name
        assert name_t in ("float32", "bfloat16"), name_t
        launched.append(name)
        conv = []
        for a in args:
            if a is None or (isinstance(a, np.uint64) and a == 0):
                conv.append(ctypes.c_void_p(None))
            elif isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                conv.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                conv.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.int64):
                conv.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.float32):
                conv.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"{name}: argument {type(a).__name__}")
        if name == "cols_bwd_rx":  # the row width and the column-groups flag: the last template arguments
            *_, vpr, gr = extra.split(",")
            conv += [ctypes.c_int(int(vpr)), ctypes.c_int(gr.strip() == "true")]
        if name == "cols_keep_bwd":  # the layer-norm flag
            conv.append(ctypes.c_int(extra.split(",")[-1].strip() == "true"))
        head = () if cluster is None else (ctypes.c_int(cluster),)  # (the keep kernels have no clusters)
        fns[name](ctypes.c_int(name_t == "bfloat16"), *head, ctypes.c_int(grid), ctypes.c_size_t(smem), *conv)

    monkeypatch.setattr(_ops_cols, "_launch", launch)
    # co-resident clusters for column groups (the emulator runs a grouped launch's clusters all at once)
    monkeypatch.setattr(_ops_cols, "_max_active_clusters", lambda name, *a, **k: EMU_MAX_CLUSTERS[name])
    # the tall-array kernels only where a test asks for them ("always"), on an emulated GPU's co-resident blocks
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "keep", "never")
    monkeypatch.setattr(_ops_cols, "_keep_blocks", lambda *a, **k: EMU_KEEP_BLOCKS)
    yield mod, launched


def _fake(mod, host):
    return mod.asarray(host)


EMU_DTYPES = ("float32", "bfloat16")
EMU_MAX_CLUSTERS = {"cols_fwd": 4, "cols_bwd_rx": 6}  # an emulated GPU's co-resident clusters
EMU_KEEP_BLOCKS = 7  # and co-resident blocks of the tall-array kernels


# (shape, forced cluster size): ragged tiles and rows, ranks without rows (3 rows on 8 blocks)
# (800, 40) on clusters of 2: 400 rows a block, so cols_bwd_rx holds rows 384.. of x in shared memory;
# (1024, 24) on clusters of 2: full blocks of 512 rows (cols_bwd_rx's loops without a test a row)
# (1100, 8) on clusters of 1: 1100 rows a block, past the rows of per-row parameters held in registers before
# the copies (rows_pre: 2 * 256 in cols_fwd, 4 * 256 in cols_bwd) and past cols_bwd_rx's 512 (so cols_bwd)
# (8200, 8), (16400, 8) on clusters of 16: cols_bwd_rx in column groups (2 and 3 groups of 16 blocks; without
# groups, regs False: cols_bwd)
# (2100, 80), (2100, 160) on clusters of 2: column groups (forward 2 groups of 525 rows a block, 2 clusters a group
# walking 2 or 3 tiles; cols_bwd_rx 3 groups of 350 rows, 2 clusters a group walking 2, 3 or 5 tiles)
EMU_CASES = [
    ((37, 40), None), ((3, 16), 8), ((70, 72), 2), ((19, 24), 8), ((40, 16), 16), ((800, 40), 2), ((1024, 24), 2),
    ((1100, 8), 1), ((8200, 8), 16), ((16400, 8), 16), ((2100, 80), 2), ((2100, 160), 2),
]


@pytest.mark.parametrize("shape,emulated", EMU_CASES, indirect=["emulated"])
@pytest.mark.parametrize("dtype", EMU_DTYPES)
@pytest.mark.parametrize("kind", ["layer0", "batch1"])
@pytest.mark.parametrize("regs", [True, False])
def test_emulated_cols(emulated, dtype, shape, kind, regs, monkeypatch, rng):
    mod, launched = emulated
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "bwd_regs", regs)
    _emulated_case(mod, dtype, shape, kind, rng)
    assert launched[0] == "cols_fwd"
    rx = regs and _ops_cols.rx_plan(*shape, np.dtype(dtype).itemsize) is not None
    assert launched[-1] == ("cols_bwd_rx" if rx else "cols_bwd")


# the tall-array kernels on 7 co-resident blocks (EMU_KEEP_BLOCKS): (shape, bytes of rows a block keeps). 8 KiB: 64
# rows of x kept (forward), 32 of x and dy (backward), the rest streamed and read twice; (1000, 40): 7 or 3 blocks a
# tile, the last one ragged; (300, 200): 1 block a tile, 4 or 7 tiles, the last one ragged; (50, 8) and (3, 16):
# every row kept, blocks of 8 rows or one; (5, 1024): more tiles than blocks (no plan: the cluster kernels)
KEEP_CASES = [((1000, 40), 8192), ((300, 200), 8192), ((1000, 40), None), ((50, 8), None), ((3, 16), 8192),
              ((5, 1024), None)]


@pytest.mark.parametrize("shape,keep_bytes", KEEP_CASES)
@pytest.mark.parametrize("dtype", EMU_DTYPES)
@pytest.mark.parametrize("kind", ["layer0", "batch1"])
def test_emulated_cols_keep(emulated, dtype, shape, keep_bytes, kind, monkeypatch, rng):
    mod, launched = emulated
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "keep", "always")
    if keep_bytes:
        monkeypatch.setattr(_ops_cols, "KEEP_SMEM", keep_bytes)
    itemsize = np.dtype(dtype).itemsize
    kp = keep_plan(*shape, itemsize, 1, EMU_KEEP_BLOCKS, keep_bytes=keep_bytes or KEEP_SMEM)
    if kp is not None and keep_bytes:
        assert kp.keep < kp.rows_per_cta or shape[0] <= kp.bpt * kp.keep
    _emulated_case(mod, dtype, shape, kind, rng)
    key = _ops_cols._plan_key("keep-fwd", np.dtype(dtype), *shape)
    assert _ops_cols._PLANS.get(key) == kp  # the plan launched
    keep = kp is not None
    assert launched[0] == ("cols_keep_fwd" if keep else "cols_fwd")
    assert launched[-1] == "cols_keep_bwd" if keep else launched[-1] != "cols_keep_bwd"


def _emulated_case(mod, dtype, shape, kind, rng):
    """Layer norm with features first (kind "layer0": forward, the backward's dx and row sums with and without a
    gain) or batch norm with features last ("batch1": forward with running statistics, backward in training and
    not) through the GPU path, against the float64 reference."""
    fa = 0 if kind == "layer0" else 1
    F = shape[fa]
    x = _x(rng, shape, dtype)
    g, b, dy = random_array(rng, (F,), dtype), random_array(rng, (F,), dtype), random_array(rng, shape, dtype)
    gx, gg, gb, gdy = (_fake(mod, a) for a in (x, g, b, dy))
    if kind == "layer0":
        y, m, r = ops.layer_norm_fprop(gx, gg, gb, feature_axis=0)
        ry, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), f64(b), 0)
        m32, r32 = _fake(mod, rm.astype(np.float32)), _fake(mod, rr.astype(np.float32))
        # dx and the per-tile row sums (norm_finalize, which adds the tiles on the GPU, is not emulated:
        # NumPy adds them here), with and without a gain
        for gain in (gg, None):
            dx, s0, s1, ws = _ops_cols.cols_bwd(gdy, gx, gain, m32, r32, 0, 1, False, row_sums=True)
            assert s0 is None and s1 is None and ws.shape[1:] == (2, F)
            hg = None if gain is None else f64(g)
            rdx, rdg, rdb = ref.layer_norm_bprop(
                f64(dy), f64(x), f64(g) if hg is not None else None, f64(m32), f64(r32), 0
            )
            terms = (1.0 if hg is None else hg.reshape(-1, 1)) * f64(r32).reshape(1, -1) * f64(dy)
            assert_close(np.asarray(dx), rdx, dtype, "dx", scale=terms)
            sums = np.asarray(ws).astype(np.float64).sum(axis=0)
            assert_close(sums[0], rdb, "float32", "dbias (row sums)")
            if hg is not None:
                assert_close(sums[1], rdg, "float32", "dgain (row sums)")
    else:
        rm0 = rng.standard_normal(F).astype(np.float32)
        rv0 = (rng.random(F) + 0.5).astype(np.float32)
        grm, grv = _fake(mod, rm0), _fake(mod, rv0)
        y, m, r = ops.batch_norm_fprop(gx, gg, gb, running_mean=grm, running_var=grv, momentum=0.25)
        hrm, hrv = rm0.astype(np.float64), rv0.astype(np.float64)
        ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), f64(b), 1, True, hrm, hrv, 0.25)
        assert_close(grm, hrm, "float32", "running_mean")
        assert_close(grv, hrv, "float32" if dtype == "float32" else "float16", "running_var")
        m32, r32 = _fake(mod, rm.astype(np.float32)), _fake(mod, rr.astype(np.float32))
        for training in (True, False):
            dx, dg, db = ops.batch_norm_bprop(gdy, gx, gg, m32, r32, training=training)
            rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, training)
            terms = f64(g).reshape(1, -1) * f64(r32).reshape(1, -1) * f64(dy)
            for name, a_, e in zip(("dx", "dgain", "dbias"), (dx, dg, db), rgrads):
                assert_close(np.asarray(a_), e, dtype, name, scale=terms if name == "dx" else None)
    assert_close(np.asarray(m), rm, "float32", "mean")
    assert_close(np.asarray(r), rr, "float32" if dtype == "float32" else "float16", "rstd")
    assert_close(np.asarray(y), ry, dtype, "y")


@pytest.mark.parametrize("emulated", [None, 8], indirect=True)
@pytest.mark.parametrize("dtype", EMU_DTYPES)
@pytest.mark.parametrize("block_size", [8, 32, 64])
def test_emulated_wn_unit(emulated, dtype, block_size, rng):
    mod, launched = emulated
    mask = rng.random((5, 3)) < 0.6
    mask[:, 0] = True
    mask[:, 1] = False  # an empty block column
    bsmm = BlockSparseMatMul(mask, block_size=block_size)
    w, dv = random_array(rng, bsmm.w_shape, dtype), random_array(rng, bsmm.w_shape, dtype)
    g = random_array(rng, (bsmm.M,), dtype)
    v, rn = ops.weight_norm_fprop(bsmm, _fake(mod, w), _fake(mod, g), per="unit", eps=1e-6)
    rv, rrn = ref.weight_norm_fprop(bsmm.layout, f64(w), f64(g), "unit", 1e-6)
    assert_close(np.asarray(rn), rrn, "float32" if dtype == "float32" else "float16", "rnorm")
    assert_close(np.asarray(v), rv, dtype, "v")
    for gain in (g, None):
        dw, dg = ops.weight_norm_bprop(
            bsmm, _fake(mod, dv), _fake(mod, w), None if gain is None else _fake(mod, gain), rn, per="unit"
        )
        rdw, rdg = ref.weight_norm_bprop(
            bsmm.layout, f64(dv), f64(w), None if gain is None else f64(gain), f64(rn), "unit"
        )
        assert_close(np.asarray(dw), rdw, dtype, "dw")
        if gain is None:
            assert dg is None
        else:
            assert_close(np.asarray(dg), rdg, dtype, "dgain")
    assert launched == ["wn_unit"] * 3


@pytest.mark.parametrize("emulated", [None, 2], indirect=True)
@pytest.mark.parametrize("dtype", EMU_DTYPES)
@pytest.mark.parametrize("per_cluster", [2, 3])
def test_emulated_cols_tiles_per_cluster(emulated, dtype, per_cluster, monkeypatch, rng):
    """Clusters that walk several column tiles (double-buffered loads; uneven counts per cluster), fwd and
    bwd."""
    mod, launched = emulated
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "tiles_per_cluster", per_cluster)
    shape = (37, 200)
    plan = cols_plan(*shape, 4 if dtype == "float32" else 2, cta_bytes=MAX_SMEM, per_cluster=per_cluster)
    assert plan.per_cluster == per_cluster and plan.grid < plan.tiles * plan.cluster
    x = _x(rng, shape, dtype)
    g, b = random_array(rng, (shape[1],), dtype), random_array(rng, (shape[1],), dtype)
    for gain, bias, fa in ((g, b, 1), (None, None, 1), (None, None, 0)):
        launched.clear()
        gg, gb = (None if a is None else _fake(mod, a) for a in (gain, bias))
        if fa == 1:
            y, m, r = ops.batch_norm_fprop(_fake(mod, x), gg, gb)
            ry, rm, rr = ref.batch_norm_fprop(
                f64(x),
                None if gain is None else f64(gain),
                None if bias is None else f64(bias),
                1,
                True,
                None,
                None,
            )
        else:
            y, m, r = ops.layer_norm_fprop(_fake(mod, x), feature_axis=0)
            ry, rm, rr = ref.layer_norm_fprop(f64(x), None, None, 0)
        assert launched == ["cols_fwd"]
        assert_close(np.asarray(m), rm, "float32", "mean")
        assert_close(np.asarray(r), rr, "float32" if dtype == "float32" else "float16", "rstd")
        assert_close(np.asarray(y), ry, dtype, "y")
    dy = random_array(rng, shape, dtype)
    _, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), None, 1, True, None, None)
    m32, r32 = _fake(mod, rm.astype(np.float32)), _fake(mod, rr.astype(np.float32))
    grads = ops.batch_norm_bprop(_fake(mod, dy), _fake(mod, x), _fake(mod, g), m32, r32)
    rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, True)
    terms = f64(g).reshape(1, -1) * f64(r32).reshape(1, -1) * f64(dy)
    for name, a_, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
        assert_close(np.asarray(a_), e, dtype, name, scale=terms if name == "dx" else None)
    assert launched[-1] == "cols_bwd"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single", "single16"], indirect=True)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("per_cluster", [2, 3])
@pytest.mark.parametrize("shape", [(37, 200), (4099, 72 * 8), (3, 4096 + 64)])
def test_gpu_cols_tiles_per_cluster(mode, dtype, per_cluster, shape, monkeypatch, rng):
    """Clusters that walk several column tiles (the next tile's loads in flight; uneven counts), fwd and
    bwd."""
    monkeypatch.setitem(_ops_cols.LAUNCH["cols1"], "tiles_per_cluster", per_cluster)
    x = _x(rng, shape, dtype)
    g, b = random_array(rng, (shape[1],), dtype), random_array(rng, (shape[1],), dtype)
    for gain, bias, fa in ((g, b, 1), (None, None, 1), (None, None, 0)):
        _poison_pool()
        mode[1].clear()
        gg, gb = (None if a is None else _gpu(a) for a in (gain, bias))
        hg, hb = (None if a is None else f64(a) for a in (gain, bias))
        if fa == 1:
            y, m, r = ops.batch_norm_fprop(_gpu(x), gg, gb)
            ry, rm, rr = ref.batch_norm_fprop(f64(x), hg, hb, 1, True, None, None)
        else:
            y, m, r = ops.layer_norm_fprop(_gpu(x), feature_axis=0)
            ry, rm, rr = ref.layer_norm_fprop(f64(x), None, None, 0)
        assert mode[1] == ["cols_fwd"]
        assert_close(m, rm, "float32", "mean")
        assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")
        # y cancels for columns of few close values (3 rows): errors relative to |x|·rstd·|g| + |b|
        gs = 1.0 if hg is None else np.abs(hg).reshape(1, -1)
        bs = 0.0 if hb is None else np.abs(hb).reshape(1, -1)
        assert_close(y, ry, dtype, "y", scale=np.abs(f64(x)) * np.asarray(rr).reshape(1, -1) * gs + bs)
    dy = random_array(rng, shape, dtype)
    _, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), None, 1, True, None, None)
    m32, r32 = _gpu(rm.astype(np.float32)), _gpu(rr.astype(np.float32))
    _poison_pool()
    mode[1].clear()
    grads = ops.batch_norm_bprop(_gpu(dy), _gpu(x), _gpu(g), m32, r32)
    rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), f64(m32), f64(r32), 1, True)
    terms = f64(g).reshape(1, -1) * f64(r32).reshape(1, -1) * f64(dy)
    for name, a_, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
        assert_close(a_, e, dtype, name, scale=terms if name == "dx" else None)
    _expect(mode, "cols_bwd", shape, dtype, 2)
