"""TF32 tensor-core path of BlockSparseMatMul (float32 with allow_tf32=True) against float64 references.

GPU tests (``gpu`` marker) check every element with the "tf32" tolerance, on poisoned outputs, ragged
batches, both feature axes, every block size, fprop/bprop/updat (grouped, split, accumulate) and the
unaligned element-load variant; one test proves the TF32 kernels actually run (an input that TF32 rounds
away). CPU tests check the launch plans against the registered specializations and compile them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, poison, random_array
from test_matmul_gpu import _io, _layout, _ref64  # the same layouts and float64 references

from cusparseblocks import BlockSparseMatMul, compiler
from cusparseblocks import _matmul_tf32 as T

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [8, 16, 32, 64]
ARCHS = ("sm_80", "sm_90")
A100_MAX_SMEM = 163 * 1024  # the smaller of the two architectures' opt-in limits per block


def _offset_view(cp, host):
    """A CuPy copy of ``host`` starting 4 bytes into its buffer: not 16-byte aligned."""
    flat = cp.asarray(np.concatenate([np.zeros(1, host.dtype), host.ravel()]))
    view = flat[1:].reshape(host.shape)
    assert view.data.ptr % 16 != 0
    return view


# ------------------------------------------------------------------------------------------------
# GPU

@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("n", [1, 37, 64, 130, 333, 2051])
def test_fprop_bprop_updat(rng, block_size, feature_axis, n):
    import cupy as cp

    kb, mb = rng.integers(3, 7), rng.integers(3, 7)
    op = BlockSparseMatMul(_layout(rng, kb, mb), block_size, feature_axis, allow_tf32=True)
    x = random_array(rng, _io(op, n, op.K), "float32")
    dy = random_array(rng, _io(op, n, op.M), "float32")
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)

    y = poison(cp, _io(op, n, op.M), "float32")
    op.fprop(xg, wg, out=y)
    assert_close(y, _ref64(op, "fprop", x, w=w), "tf32", "fprop")
    assert_close(op.fprop(xg, wg), _ref64(op, "fprop", x, w=w), "tf32", "fprop (allocated)")

    dx = poison(cp, _io(op, n, op.K), "float32")
    op.bprop(dyg, wg, out=dx)
    assert_close(dx, _ref64(op, "bprop", dy, w=w), "tf32", "bprop")

    dw = poison(cp, op.w_shape, "float32")
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", [x], [dy]), "tf32", "updat")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_accumulate(rng, block_size, feature_axis):
    import cupy as cp

    n = int(rng.integers(20, 200))
    op = BlockSparseMatMul(_layout(rng, 4, 5), block_size, feature_axis, allow_tf32=True)
    x = random_array(rng, _io(op, n, op.K), "float32")
    dy = random_array(rng, _io(op, n, op.M), "float32")
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)

    y0 = random_array(rng, _io(op, n, op.M), "float32")
    y = cp.asarray(y0)
    op.fprop(xg, wg, out=y, accumulate=True)
    assert_close(y, y0 + _ref64(op, "fprop", x, w=w), "tf32", "fprop accumulate")

    dx0 = random_array(rng, _io(op, n, op.K), "float32")
    dx = cp.asarray(dx0)
    op.bprop(dyg, wg, out=dx, accumulate=True)
    assert_close(dx, dx0 + _ref64(op, "bprop", dy, w=w), "tf32", "bprop accumulate")

    dw0 = random_array(rng, op.w_shape, "float32")
    dw = cp.asarray(dw0)
    op.updat(xg, dyg, out=dw, accumulate=True)
    assert_close(dw, dw0 + _ref64(op, "updat", [x], [dy]), "tf32", "updat accumulate")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_grouped_update_is_deterministic(rng, block_size, feature_axis):
    """Several (x, dy) pairs of ragged batches in one launch; the same bits on every run."""
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 5, 4), block_size, feature_axis, allow_tf32=True)
    ns = [int(v) for v in rng.integers(1, 150, size=5)]
    xs = [random_array(rng, _io(op, n, op.K), "float32") for n in ns]
    dys = [random_array(rng, _io(op, n, op.M), "float32") for n in ns]
    xg, dyg = [cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys]
    dw = poison(cp, op.w_shape, "float32")
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", xs, dys), "tf32", "grouped updat")
    again = op.updat(xg, dyg)
    assert cp.array_equal(dw.view(cp.uint8), again.view(cp.uint8)), "update is not bit-reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_split_update_accumulates(rng, block_size, feature_axis):
    """Few blocks and a long batch: the update splits the batch (fp32 partials, ordered reduction)."""
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 3, 3, 0.3), block_size, feature_axis, allow_tf32=True)
    n = int(rng.integers(2000, 3000))
    x = random_array(rng, _io(op, n, op.K), "float32")
    dy = random_array(rng, _io(op, n, op.M), "float32")
    dw0 = random_array(rng, op.w_shape, "float32")
    dw = cp.asarray(dw0)
    op.updat(cp.asarray(x), cp.asarray(dy), out=dw, accumulate=True)
    assert_close(dw, dw0 + _ref64(op, "updat", [x], [dy]), "tf32", "split updat accumulate")
    again = cp.asarray(dw0)
    op.updat(cp.asarray(x), cp.asarray(dy), out=again, accumulate=True)
    assert cp.array_equal(dw, again), "split update is not bit-reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_unaligned_and_ragged_element_loads(rng, block_size, feature_axis):
    """Offset views (not 16-byte aligned) and, on axis 0, a batch not a multiple of 4: element loads."""
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 3, 4), block_size, feature_axis, allow_tf32=True)
    n = 50 if feature_axis == 1 else 51
    x = random_array(rng, _io(op, n, op.K), "float32")
    dy = random_array(rng, _io(op, n, op.M), "float32")
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    xg, dyg, wg = _offset_view(cp, x), _offset_view(cp, dy), _offset_view(cp, w)
    assert_close(op.fprop(xg, wg), _ref64(op, "fprop", x, w=w), "tf32", "fprop unaligned")
    assert_close(op.bprop(dyg, wg), _ref64(op, "bprop", dy, w=w), "tf32", "bprop unaligned")
    dw = poison(cp, op.w_shape, "float32")
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", [x], [dy]), "tf32", "updat unaligned")
    if feature_axis == 0:  # aligned pointers, ragged batch
        xa, dya, wa = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
        assert_close(op.fprop(xa, wa), _ref64(op, "fprop", x, w=w), "tf32", "fprop n % 4 != 0")
        assert_close(op.updat(xa, dya), _ref64(op, "updat", [x], [dy]), "tf32", "updat n % 4 != 0")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_tf32_kernels_run_only_when_allowed(block_size, feature_axis):
    """x = 1 + 2⁻¹² rounds to 1 in TF32 (10-bit mantissa) but not in fp32 FFMA: the result tells the path."""
    import cupy as cp

    mask = np.ones((2, 2), bool)
    n = 64
    exact = BlockSparseMatMul(mask, block_size, feature_axis)
    tf32 = BlockSparseMatMul(mask, block_size, feature_axis, allow_tf32=True)
    v = np.float32(1 + 2.0**-12)
    x = cp.full(_io(tf32, n, tf32.K), v, dtype=cp.float32)
    dy = cp.ones(_io(tf32, n, tf32.M), dtype=cp.float32)
    w = tf32.init_identity(dtype=np.float32, xp=cp)
    assert float(tf32.fprop(x, w).max()) == 1.0, "fprop did not round x to TF32"
    assert float(exact.fprop(x, w).min()) == v, "fprop without allow_tf32 must be exact fp32"
    assert float(tf32.bprop(x, w).max()) == 1.0, "bprop did not round dy to TF32"
    dw_tf32, dw_exact = tf32.updat(x, dy), exact.updat(x, dy)
    full = n * float(v)  # exact in fp32 for n = 64
    assert float(dw_exact.min()) == full
    if block_size in T.UPDAT_TF32_TILES:
        assert float(dw_tf32.max()) == n, "updat did not round x to TF32"
    else:  # block_size 8: the update stays on updat_simt (exact)
        assert float(dw_tf32.min()) == full


# ------------------------------------------------------------------------------------------------
# CPU: launch plans and compilation

class _FakeOp:
    """The attributes xw_plan reads from a BlockSparseMatMul."""

    def __init__(self, block_size, feature_axis):
        self.block_size, self.feature_axis = block_size, feature_axis
        self.K, self.M = 3 * block_size, 5 * block_size
        self._gpu_tables = {}


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_plans_use_registered_specializations(monkeypatch, block_size, feature_axis):
    registered = set(T.specializations())
    launched = []
    monkeypatch.setattr(compiler, "get_function", lambda spec, smem=0: launched.append((spec, smem)) or spec)
    op = _FakeOp(block_size, feature_axis)
    for kind in ("fprop", "bprop"):
        for n in (1, 63, 64, 65, 130, 2047, 2048, 5001):
            for ax, aw in ((True, True), (False, True), (True, False)):
                spec, grid, block, smem = T.xw_plan(op, kind, n, ax, aw, 0)
                assert spec in registered, spec
                bm = int(spec.name.split(",")[1])
                assert grid == ((op.M if kind == "fprop" else op.K) // block_size, -(-n // bm))
                assert block[0] % 32 == 0 and block[0] <= 1024
                assert 0 < smem <= A100_MAX_SMEM
                aligned = spec.name.rstrip(">").split(",")[-1].strip()
                want = ax and aw and (feature_axis == 1 or n % 4 == 0)
                assert aligned == ("1" if want else "0"), (spec, n, ax, aw)
                assert T.xw_plan(op, kind, n, ax, aw, 0)[0] is spec  # cached
    for aligned in (True, False):
        cfg = T.updat_launch_config(op, feature_axis, aligned)
        if block_size not in T.UPDAT_TF32_TILES:
            assert cfg is None
            continue
        spec, smem, threads, g, nc = cfg
        assert spec in registered and 0 < smem <= A100_MAX_SMEM and threads % 32 == 0
        assert nc % 8 == 0 and g >= 1


def test_batch_past_grid_limit_is_an_error(monkeypatch):
    monkeypatch.setattr(compiler, "get_function", lambda spec, smem=0: spec)
    op = _FakeOp(8, 1)
    bm = T.XW_TF32_TILES[8]["large"][0]
    with pytest.raises(ValueError, match="x: batch of"):
        T.xw_plan(op, "fprop", 65535 * bm + 1, True, True, 0)


def test_family_is_registered():
    """compiler.all_specializations() (the compile test, ``info``) sees the bsmm_tf32 family.

    Run in a fresh interpreter: this module's own import of _matmul_tf32 would register it here.
    """
    code = ("from cusparseblocks import compiler; f = compiler.all_specializations(); "
            "print(len(f.get('bsmm_tf32', [])))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    count = int(out.stdout.split()[-1])
    assert count, "bsmm_tf32 is not registered: _matmul_gpu must import cusparseblocks._matmul_tf32"
    assert count == len(set(T.specializations()))


@pytest.mark.parametrize("arch", ARCHS)
def test_specializations_compile_without_spills(arch):
    """Every bsmm_tf32 specialization compiles for the arch with no local-memory spills (NVRTC, no GPU)."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed: cannot run NVRTC")
    specs = list(dict.fromkeys(T.specializations()))  # the family's list: shares test_compile's disk cache
    compiled = compiler.compile_specs(specs, arch)
    assert len(compiled) == len(specs)
    bad = {s.name: (k.registers, k.spill_stores, k.spill_loads) for s, k in compiled.items()
           if k.registers is None or (k.spill_stores or 0) + (k.spill_loads or 0) > 0}
    assert not bad, f"{arch}: spills or no ptxas report: {bad}"


# ------------------------------------------------------------------------------------------------
# CPU: the kernels themselves, compiled for the host with the CUDA execution model emulated

def _emulation_cases() -> list[str]:
    """C++ calls for tests/cuda_emulation/bsmm_tf32_driver.cpp: every tile of both tables, each
    (feature axis, transpose, aligned) combination several times, ragged batches, grouped and split updates."""
    combos = [(axis, trans) for axis in (1, 0) for trans in (0, 1)]
    calls, i = [], 0
    for bs, tiles in T.XW_TF32_TILES.items():
        for variant, (bm, wm, wn, st) in tiles.items():
            picks = [(*combos[i % 4], 1), (*combos[(i + 1) % 4], 1)]
            if variant == T.UNALIGNED_VARIANT:
                picks += [(*combos[(i + 2) % 4], 0), (*combos[(i + 3) % 4], 0)]
            for j, (axis, trans, aligned) in enumerate(picks):
                n = bm + 3 + 2 * j if variant != "small" else 37
                n -= n % 4 if axis == 0 and aligned else 0
                kb, mb = 3 + (i + j) % 3, 3 + (i + 2 * j) % 4
                calls.append(f"test_xw<{bs}, {bm}, {wm}, {wn}, {st}, {axis}, {trans}, {aligned}>"
                             f"({kb}, {mb}, {n}, {(i + j) % 2});")
            i += 1
    ragged = ["{70}", "{33, 5}", "{61, 1, 100}"]  # batch sizes of the (x, dy) pairs
    for bs, (g, warps, nc, st) in T.UPDAT_TF32_TILES.items():
        for j, (axis, aligned) in enumerate([(1, 1), (0, 1), (1, 0), (0, 0)]):
            ns = "{64, 200}" if axis == 0 and aligned else ragged[(j + bs // 16) % 3]
            calls.append(f"test_updat<{bs}, {g}, {warps}, {nc}, {st}, {axis}, {aligned}>"
                         f"(3, {3 + j + g}, {ns}, {1 + j % 3}, {j % 2});")
    return calls


def _emulation_source() -> str:
    """kernels/bsmm_tf32.cu with its PTX wrappers and common.cuh cut (the driver defines host versions), and
    update.cuh inlined without its includes."""
    kernels = compiler.kernel_source_dir()
    text = (kernels / T.SOURCE).read_text()
    start, end = text.index("// PTX wrappers"), text.index("// Shared row strides")
    text = text[:start] + text[end:]
    update = (kernels / "update.cuh").read_text().replace("#pragma once", "").replace('#include "common.cuh"', "")
    text = text.replace('#include "common.cuh"', "").replace('#include "update.cuh"', update)
    return text.replace("extern __shared__ __align__(16) unsigned char smem_raw[];", "")


def test_kernels_on_emulated_gpu(tmp_path):
    """Every tile of xw_tf32 and updat_tf32 against float64 on the CPU (threads, barriers, deferred cp.async,
    mma.sync m16n8k8.tf32 emulated): fragment layouts, strides, pipelines and epilogues, without a GPU."""
    import shutil

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    (tmp_path / "bsmm_tf32_emu.cu").write_text(_emulation_source())
    (tmp_path / "cases.inc").write_text("\n".join(_emulation_cases()) + "\n")
    exe = tmp_path / "driver"
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", f"-I{tmp_path}", "-o", str(exe),
                            str(ROOT / "tests" / "cuda_emulation" / "bsmm_tf32_driver.cpp")],
                           capture_output=True, text=True)
    if build.returncode and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the C++ compiler has no <barrier> (C++20)")
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("0 failures"), run.stdout[-6000:] + run.stderr[-2000:]
    assert run.stdout.count(" ok ") == len(_emulation_cases())
