"""GPU kernels of BlockSparseMatMul against the float64 scipy.sparse reference (needs a CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, poison, random_array

from cusparseblocks import BlockSparseMatMul
from cusparseblocks import _matmul_gpu as _matmul_gpu_tiles
from cusparseblocks._matmul_gpu import (
    XW_FFMA_TILES,
    XW_GMMA_RS_TILES,
    XW_GMMA_TILES,
    XW_TMA_TILES,
    XW_WIDE_TILES,
)
from cusparseblocks.reference import matmul as ref

pytestmark = pytest.mark.gpu

DTYPES = ["float16", "bfloat16", "float32"]
BLOCKS = [8, 16, 32, 64]


def _layout(rng, kb, mb, density=0.4):
    mask = rng.random((kb, mb)) < density
    mask[0, 0] = True
    if kb > 2 and mb > 2:  # an empty block row and an empty block column
        mask[kb - 1, :] = False
        mask[:, mb - 2] = False
        mask[1, 1] = True
    return mask


def _ref64(op, kind, xs, dys=None, w=None):
    lay = op.layout
    t = (lambda a: np.asarray(a, np.float64)) if op.feature_axis == 1 else (lambda a: np.asarray(a, np.float64).T)
    if kind == "fprop":
        y = ref.bsmm_fprop(lay, t(xs), np.asarray(w, np.float64))
    elif kind == "bprop":
        y = ref.bsmm_bprop(lay, t(xs), np.asarray(w, np.float64))
    else:
        return ref.bsmm_updat(lay, [t(a) for a in xs], [t(a) for a in dys], op.block_size)
    return y if op.feature_axis == 1 else y.T


def _io(op, n, features):
    return (n, features) if op.feature_axis == 1 else (features, n)


def _random_problem(rng, dtype, block_size, feature_axis, n):
    """A random 3-6 × 3-6 block layout (with an empty block row and column) and fresh x, dy, w: (op, host
    arrays (x, dy, w), device copies (x, dy, w))."""
    import cupy as cp

    kb, mb = rng.integers(3, 7), rng.integers(3, 7)
    op = BlockSparseMatMul(_layout(rng, kb, mb), block_size, feature_axis)
    x = random_array(rng, _io(op, n, op.K), dtype)
    dy = random_array(rng, _io(op, n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    return op, (x, dy, w), (cp.asarray(x), cp.asarray(dy), cp.asarray(w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("n", [1, 37, 64, 130, 333])
def test_fprop_bprop_updat(rng, dtype, block_size, feature_axis, n):
    import cupy as cp

    op, (x, dy, w), (xg, dyg, wg) = _random_problem(rng, dtype, block_size, feature_axis, n)

    y = poison(cp, _io(op, n, op.M), dtype)
    op.fprop(xg, wg, out=y)
    assert_close(y, _ref64(op, "fprop", x, w=w), dtype, "fprop")
    assert_close(op.fprop(xg, wg), _ref64(op, "fprop", x, w=w), dtype, "fprop (allocated)")

    dx = poison(cp, _io(op, n, op.K), dtype)
    op.bprop(dyg, wg, out=dx)
    assert_close(dx, _ref64(op, "bprop", dy, w=w), dtype, "bprop")

    dw = poison(cp, op.w_shape, dtype)
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", [x], [dy]), dtype, "updat")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 32, 64])
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_accumulate_and_fp32_output(rng, dtype, block_size, feature_axis):
    import cupy as cp

    n = int(rng.integers(20, 200))
    op = BlockSparseMatMul(_layout(rng, 4, 5), block_size, feature_axis)
    x = random_array(rng, _io(op, n, op.K), dtype)
    dy = random_array(rng, _io(op, n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    tol = "float32" if dtype == "float32" else dtype

    y0 = random_array(rng, _io(op, n, op.M), "float32")
    y = cp.asarray(y0)
    op.fprop(xg, wg, out=y, accumulate=True)
    assert_close(y, y0 + _ref64(op, "fprop", x, w=w), tol, "fprop accumulate into fp32")

    dx = op.bprop(dyg, wg, out_dtype=np.float32)
    assert dx.dtype == np.float32
    assert_close(dx, _ref64(op, "bprop", dy, w=w), tol, "bprop fp32 out")

    dw0 = random_array(rng, op.w_shape, dtype)
    dw = cp.asarray(dw0)
    op.updat(xg, dyg, out=dw, accumulate=True)
    assert_close(dw, dw0.astype(np.float64) + _ref64(op, "updat", [x], [dy]), dtype, "updat accumulate")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_grouped_update_is_deterministic(rng, dtype, block_size, feature_axis):
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 5, 4), block_size, feature_axis)
    ns = [int(v) for v in rng.integers(1, 150, size=5)]
    xs = [random_array(rng, _io(op, n, op.K), dtype) for n in ns]
    dys = [random_array(rng, _io(op, n, op.M), dtype) for n in ns]
    xg, dyg = [cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys]
    dw = poison(cp, op.w_shape, dtype)
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", xs, dys), dtype, "grouped updat")
    again = op.updat(xg, dyg)
    assert cp.array_equal(dw.view(cp.uint8), again.view(cp.uint8)), "update is not bit-reproducible"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_split_update_accumulates(rng, dtype, block_size, feature_axis):
    """Few blocks and a long batch: the update splits the batch and reduces the partials in order."""
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 3, 3, 0.3), block_size, feature_axis)
    n = int(rng.integers(2000, 3000))
    x = random_array(rng, _io(op, n, op.K), dtype)
    dy = random_array(rng, _io(op, n, op.M), dtype)
    dw0 = random_array(rng, op.w_shape, "float32")
    dw = cp.asarray(dw0)
    op.updat(cp.asarray(x), cp.asarray(dy), out=dw, accumulate=True)
    assert_close(dw, dw0 + _ref64(op, "updat", [x], [dy]), "float32" if dtype == "float32" else dtype,
                 "split updat accumulate")
    again = cp.asarray(dw0)
    op.updat(cp.asarray(x), cp.asarray(dy), out=again, accumulate=True)
    assert cp.array_equal(dw, again), "split update is not bit-reproducible"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_unaligned_views_fall_back(rng, dtype, feature_axis):
    """Offset views (not 16-byte aligned) take the SIMT path and stay correct."""
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 3, 4), 16, feature_axis)
    n = 50
    x = random_array(rng, _io(op, n + 1, op.K), dtype)
    x = x[1:] if feature_axis == 1 else x  # axis 0: offset the whole buffer instead
    flat = cp.asarray(np.concatenate([np.zeros(1, x.dtype), x.ravel()]))
    xg = flat[1:].reshape(x.shape)
    assert xg.data.ptr % 16 != 0
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    y = op.fprop(xg, cp.asarray(w))
    assert_close(y, _ref64(op, "fprop", x, w=w), dtype, "fprop unaligned")


@pytest.mark.parametrize("block_size", BLOCKS)
def test_single_block_and_full_layout(rng, block_size):
    import cupy as cp

    for mask in (np.ones((1, 1), bool), np.ones((3, 2), bool)):
        op = BlockSparseMatMul(mask, block_size)
        x = random_array(rng, (77, op.K), "float16")
        w = random_array(rng, op.w_shape, "float16", scale=0.2)
        assert_close(op.fprop(cp.asarray(x), cp.asarray(w)), _ref64(op, "fprop", x, w=w), "float16")


def test_gpu_validation_errors(rng):
    import cupy as cp

    op = BlockSparseMatMul(_layout(rng, 3, 3), 16)
    x = cp.asarray(random_array(rng, (10, op.K), "float16"))
    w = cp.asarray(random_array(rng, op.w_shape, "float16"))
    with pytest.raises(TypeError, match="w"):
        op.fprop(x, w.astype(cp.float32))
    with pytest.raises(TypeError, match="x"):
        op.fprop(x.astype(cp.float64), w.astype(cp.float64))
    with pytest.raises(ValueError, match="contiguous"):
        op.fprop(cp.asfortranarray(cp.asarray(random_array(rng, (10, op.K), "float16"))), w)
    with pytest.raises(TypeError, match="numpy"):
        op.fprop(x, w.get())
    with pytest.raises(ValueError, match="out"):
        op.fprop(x, w, out=cp.empty((10, op.M + 1), cp.float16))


@pytest.mark.slow
def test_index_past_2_31_elements(rng):
    """x with more than 2³¹ elements: rows past that offset are computed correctly."""
    import cupy as cp

    b = 32
    mask = np.zeros((64, 2), bool)
    mask[::3, 0] = True
    mask[5, 1] = True
    op = BlockSparseMatMul(mask, b)
    n = (1 << 31) // op.K + 300
    x = cp.empty((n, op.K), cp.float16)
    tail = random_array(rng, (300, op.K), "float16")
    x[-300:] = cp.asarray(tail)
    x[:-300] = 1.0
    w = random_array(rng, op.w_shape, "float16", scale=0.2)
    y = op.fprop(x, cp.asarray(w))
    assert_close(y[-300:], _ref64(op, "fprop", tail, w=w), "float16", "rows past 2^31 elements")


@pytest.mark.parametrize("variant", ["large", "medium", "small", "medium_lean"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_every_tile_variant(rng, variant, dtype, block_size, feature_axis):
    """Each tensor-core tile (forced) on a ragged N and a layout with empty rows and columns."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    op = BlockSparseMatMul(_layout(rng, 7, 5, 0.5), block_size, feature_axis)
    n = int(rng.integers(100, 300))
    x = random_array(rng, _io(op, n, op.K), dtype)
    dy = random_array(rng, _io(op, n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    _matmul_gpu.force_variant = variant
    try:
        y = poison(cp, _io(op, n, op.M), dtype)
        op.fprop(cp.asarray(x), cp.asarray(w), out=y)
        dx = poison(cp, _io(op, n, op.K), dtype)
        op.bprop(cp.asarray(dy), cp.asarray(w), out=dx)
        y_acc = cp.asarray(random_array(rng, _io(op, n, op.M), "float32"))
        y0 = y_acc.get()
        op.fprop(cp.asarray(x), cp.asarray(w), out=y_acc, accumulate=True)
    finally:
        _matmul_gpu.force_variant = None
    assert_close(y, _ref64(op, "fprop", x, w=w), dtype, f"fprop [{variant}]")
    assert_close(dx, _ref64(op, "bprop", dy, w=w), dtype, f"bprop [{variant}]")
    assert_close(y_acc, y0 + _ref64(op, "fprop", x, w=w), dtype, f"fprop accumulate [{variant}]")


@pytest.mark.parametrize("block_size,variant", [(b, v) for b, vs in XW_WIDE_TILES.items() for v in vs])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_wide_small_block_tiles(rng, variant, dtype, block_size, feature_axis):
    """xw_wide_tc (forced): several column groups with a partial last one, all 32 mask bits in use,
    N a multiple of 8 but ragged against the tile, out=, accumulate and fp32 output; asserts that the
    wide kernel is the one that ran."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    mask = _layout(rng, 19, 37, 0.3)  # 19, 37: ragged against R and C
    mask[2, 31] = mask[31 % 19, 3] = True
    op = BlockSparseMatMul(mask, block_size, feature_axis)
    n = 8 * int(rng.integers(9, 45))
    x = random_array(rng, _io(op, n, op.K), dtype)
    dy = random_array(rng, _io(op, n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    _matmul_gpu.force_variant = variant
    try:
        y = poison(cp, _io(op, n, op.M), dtype)
        op.fprop(xg, wg, out=y)
        dx = poison(cp, _io(op, n, op.K), dtype)
        op.bprop(dyg, wg, out=dx)
        y32 = op.fprop(xg, wg, out_dtype="float32")
        y_acc = cp.asarray(random_array(rng, _io(op, n, op.M), "float32"))
        y0 = y_acc.get()
        op.fprop(xg, wg, out=y_acc, accumulate=True)
    finally:
        _matmul_gpu.force_variant = None
    plans = [v for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "xw"]
    assert plans and all(p[4][0] == "wide" for p in plans), "xw_wide_tc did not run"
    y_ref = _ref64(op, "fprop", x, w=w)
    assert_close(y, y_ref, dtype, f"fprop [{variant}]")
    assert_close(dx, _ref64(op, "bprop", dy, w=w), dtype, f"bprop [{variant}]")
    assert_close(y32, y_ref, dtype, f"fprop fp32 out [{variant}]")
    assert_close(y_acc, y0 + y_ref, dtype, f"fprop accumulate [{variant}]")


def _ran(op, spec, smem):
    """True when every fprop/bprop plan cached on ``op`` launches ``spec``."""
    from cusparseblocks import compiler

    fn = compiler.get_function(spec, smem)
    plans = [v for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "xw"]
    return bool(plans) and all(p[0] is fn for p in plans)


def _needs_wgmma():
    import cupy as cp

    from cusparseblocks import _matmul_gpu, compiler

    if compiler.device_arch(cp.cuda.runtime.getDevice()) != _matmul_gpu.GMMA_ARCH:
        pytest.skip("the wgmma kernels run on compute capability 9.0 only")


def _check_forced_wgmma(rng, op, dtype, n, variant, spec, smem, name):
    """Run ``variant`` (forced) for fprop and bprop into poisoned out=, fprop with float32 output, fprop
    accumulating in the input dtype and bprop accumulating in float32; assert that every plan launched
    ``spec(dtype, out_dtype, trans)`` and that every element matches the float64 reference."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu, compiler

    x = random_array(rng, (n, op.K), dtype)
    dy = random_array(rng, (n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    y_acc = cp.asarray(random_array(rng, (n, op.M), dtype))
    dx_acc32 = cp.asarray(random_array(rng, (n, op.K), "float32"))
    y0, dx032 = y_acc.get().astype(np.float64), dx_acc32.get()
    _matmul_gpu.force_variant = variant
    try:
        y = poison(cp, (n, op.M), dtype)
        op.fprop(xg, wg, out=y)
        dx = poison(cp, (n, op.K), dtype)
        op.bprop(dyg, wg, out=dx)
        y32 = op.fprop(xg, wg, out_dtype="float32")
        op.fprop(xg, wg, out=y_acc, accumulate=True)
        op.bprop(dyg, wg, out=dx_acc32, accumulate=True)
    finally:
        _matmul_gpu.force_variant = None
    fns = [compiler.get_function(spec(dtype, odt, trans), smem)
           for trans, odt in ((0, dtype), (1, dtype), (0, "float32"), (1, "float32"))]
    plans = [v for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "xw"]
    assert len(plans) == 4 and all(any(p[0] is f for f in fns) for p in plans), f"{name} did not run"
    y_ref, dx_ref = _ref64(op, "fprop", x, w=w), _ref64(op, "bprop", dy, w=w)
    assert_close(y, y_ref, dtype, f"fprop [{variant}]")
    assert_close(dx, dx_ref, dtype, f"bprop [{variant}]")
    assert_close(y32, y_ref, dtype, f"fprop fp32 out [{variant}]")
    assert_close(y_acc, y0 + y_ref, dtype, f"fprop accumulate [{variant}]")
    assert_close(dx_acc32, dx032 + dx_ref, dtype, f"bprop accumulate fp32 [{variant}]")


@pytest.mark.parametrize("block_size,variant", [(b, v) for b, vs in XW_GMMA_TILES.items() for v in vs])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [65, 200, 517])
def test_wgmma_tiles(rng, variant, dtype, block_size, n):
    """xw_gmma (forced tile): ragged N against every tile height, column lists longer than the pipeline
    (wrap-around of the stage slots), empty block rows and columns, fprop and bprop into poisoned out=,
    float32 output, accumulate in the input dtype and in float32; asserts that xw_gmma ran."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    op = BlockSparseMatMul(_layout(rng, 19, 13, 0.6), block_size)
    _check_forced_wgmma(rng, op, dtype, n, variant,
                        lambda dt, odt, trans: _matmul_gpu.xw_gmma_spec(dt, odt, block_size, variant, trans),
                        _matmul_gpu.xw_gmma_smem(block_size, variant), "xw_gmma")


def _check_default(rng, op, op_kind, n, default, spec, smem, tiles):
    """fp16 ``op_kind`` of a fresh batch of ``n``, twice (the second call reuses the cached plan), against the
    float64 reference; the plan launched ``spec(default, trans)`` when ``default`` names a tile, else no tile of
    ``tiles``."""
    import cupy as cp

    f_in = op.K if op_kind == "fprop" else op.M
    x = random_array(rng, (n, f_in), "float16")
    w = random_array(rng, op.w_shape, "float16", scale=0.2)
    ref = _ref64(op, op_kind, x, w=w)
    for call in ("first", "second"):
        assert_close(getattr(op, op_kind)(cp.asarray(x), cp.asarray(w)), ref, "float16", f"{op_kind} {call}")
    trans = int(op_kind == "bprop")
    if default is None:
        assert not any(_ran(op, spec(v, trans), smem(v)) for v in tiles), "a tile ran where none is the default"
    else:
        assert _ran(op, spec(default, trans), smem(default)), f"{default} is not the default"


@pytest.mark.parametrize("block_size,density", [(16, 0.6), (16, 0.15), (32, 0.6), (32, 0.15), (64, 0.6)])
@pytest.mark.parametrize("op_kind", ["fprop", "bprop"])
def test_wgmma_rs_default(rng, block_size, density, op_kind):
    """The default fp16 plan for N > 64 on sm_90 is the column-group kernel exactly where
    xw_gmma_rs_default names one for the layout's density (else xw_tma, xw_gmma or xw_wide_tc), and is
    correct."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    op = BlockSparseMatMul(_layout(rng, 24, 20, density), block_size)
    _check_default(rng, op, op_kind, 300, _matmul_gpu.xw_gmma_rs_default(block_size, op.layout.density),
                   lambda v, trans: _matmul_gpu.xw_gmma_rs_spec("float16", "float16", block_size, v, trans),
                   lambda v: _matmul_gpu.xw_gmma_rs_smem(block_size, v), XW_GMMA_RS_TILES.get(block_size, {}))


@pytest.mark.parametrize("block_size,variant", [(b, v) for b, vs in XW_GMMA_RS_TILES.items() for v in vs])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [65, 200, 517])
def test_wgmma_rs_tiles(rng, variant, dtype, block_size, n):
    """xw_gmma_rs (forced tile): ragged N against the 128-row tile, a last column group with fewer than C
    columns, a whole empty column group, an empty block row and column, column groups with more entries
    than pipeline stages (slot wrap-around, both halves of the two-step loop and its odd tail, a last stage
    with fewer than EPS records, a ragged last super-row), fprop and bprop into poisoned out=, float32 output,
    accumulate in the input dtype and in float32; asserts that xw_gmma_rs ran."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    c = XW_GMMA_RS_TILES[block_size][variant][0]
    kb, mb = (23, 2 * c + 3) if c <= 8 else (23, c + 5)
    mask = _layout(rng, kb, mb, 0.5)
    mask[:, c : 2 * c] = False  # fprop: the second column group is empty
    mask[c // 2 + 1 : c // 2 + 3, :] = False  # bprop: rows in a group emptied
    mask[2, c // 2 + 1] = True
    op = BlockSparseMatMul(mask, block_size)
    _check_forced_wgmma(rng, op, dtype, n, variant,
                        lambda dt, odt, trans: _matmul_gpu.xw_gmma_rs_spec(dt, odt, block_size, variant, trans),
                        _matmul_gpu.xw_gmma_rs_smem(block_size, variant), "xw_gmma_rs")


@pytest.mark.parametrize("block_size,density", [(64, 0.6), (64, 0.2), (64, 0.05), (32, 0.6), (32, 0.2), (16, 0.3)])
@pytest.mark.parametrize("op_kind", ["fprop", "bprop"])
def test_tma_default(rng, block_size, density, op_kind):
    """The default fp16 plan for N > 64 on sm_90 is xw_tma exactly where xw_tma_default names a tile for the
    layout's density, and is correct."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    op = BlockSparseMatMul(_layout(rng, 40, 36, density), block_size)
    _check_default(rng, op, op_kind, 700, _matmul_gpu.xw_tma_default(block_size, op.layout.density),
                   lambda v, trans: _matmul_gpu.xw_tma_spec("float16", "float16", block_size, v, trans),
                   lambda v: _matmul_gpu.xw_tma_smem(block_size, v), XW_TMA_TILES.get(block_size, {}))


@pytest.mark.parametrize("block_size,variant", [(b, v) for b, vs in XW_TMA_TILES.items() for v in vs])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [65, 300, 517])
def test_tma_tiles(rng, variant, dtype, block_size, n):
    """xw_tma (forced tile): ragged N against the 128/256-row tile (TMA's zero fill, masked stores), a last
    cluster with fewer than CL columns (its extra CTAs store nothing), a whole empty cluster, an empty block
    row and column, records whose mask holds one CTA (plain copy) or several (multicast), columns with more
    records than pipeline stages (slot wrap-around, releases of absent records), fprop and bprop into poisoned
    out=, float32 output, accumulate in the input dtype and in float32; asserts that xw_tma ran."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    cl = XW_TMA_TILES[block_size][variant][0] * XW_TMA_TILES[block_size][variant][1]  # columns a record
    kb, mb = 29, 2 * cl + 3
    mask = _layout(rng, kb, mb, 0.5)
    mask[:, cl : 2 * cl] = False  # fprop: the second cluster's columns are empty
    mask[cl // 2 + 1 : cl // 2 + 3, :] = False  # bprop: rows in a cluster emptied
    mask[2, cl // 2 + 1] = True
    op = BlockSparseMatMul(mask, block_size)
    _check_forced_wgmma(rng, op, dtype, n, variant,
                        lambda dt, odt, trans: _matmul_gpu.xw_tma_spec(dt, odt, block_size, variant, trans),
                        _matmul_gpu.xw_tma_smem(block_size, variant), "xw_tma")


_GROUPED = [(b, v) for b, vs in XW_TMA_TILES.items() for v, t in vs.items() if t[0] * t[1] > 1]
_GROUPED += [(b, v) for b, vs in XW_GMMA_RS_TILES.items() for v, t in vs.items() if t[0] > 1]


@pytest.mark.parametrize("block_size,variant", _GROUPED)
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_grouped_columns(rng, block_size, variant, density):
    """xw_tma / xw_gmma_rs tiles of several columns with the columns grouped by shared blocks
    (group_columns, the default) and in index order: fprop and bprop (accumulating into the same poisoned
    start) give the same bits either way (each column sums its own blocks in increasing order) and match
    the float64 reference, on a layout of 50 columns (a partial last group) with an empty column."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    mask = _layout(rng, 21, 50, density)
    mask[:, 7] = False
    op = BlockSparseMatMul(mask, block_size)
    n = 300
    x = random_array(rng, (n, op.K), "float16")
    dy = random_array(rng, (n, op.M), "float16")
    w = random_array(rng, op.w_shape, "float16", scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    y_acc = cp.asarray(random_array(rng, (n, op.M), "float16"))
    outs = {}
    _matmul_gpu.force_variant = variant
    try:
        for grouped in (True, False):
            _matmul_gpu.group_columns = grouped
            y = poison(cp, (n, op.M), "float16")
            op.fprop(xg, wg, out=y)
            dx = op.bprop(dyg, wg, out_dtype="float32")
            ya = y_acc.copy()
            op.fprop(xg, wg, out=ya, accumulate=True)
            outs[grouped] = (y.get(), dx.get(), ya.get())
    finally:
        _matmul_gpu.force_variant = None
        _matmul_gpu.group_columns = True
    keys = [k[1] for k in op._gpu_tables if isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], tuple)]
    assert {k[0] for k in keys} & {"tma", "rs"} and {k[-1] for k in keys if k[0] in ("tma", "rs")} == {
        True, False}, "both column orders ran"
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_array_equal(a.view(np.uint16) if a.dtype == np.float16 else a.view(np.uint32),
                                      b.view(np.uint16) if b.dtype == np.float16 else b.view(np.uint32))
    y_ref, dx_ref = _ref64(op, "fprop", x, w=w), _ref64(op, "bprop", dy, w=w)
    assert_close(outs[True][0], y_ref, "float16", f"fprop [{variant}]")
    assert_close(outs[True][1], dx_ref, "float16", f"bprop fp32 out [{variant}]")
    assert_close(outs[True][2], y_acc.get().astype(np.float64) + y_ref, "float16", f"fprop accumulate [{variant}]")


@pytest.mark.parametrize("block_size", sorted({*XW_GMMA_TILES, *XW_GMMA_RS_TILES, *XW_TMA_TILES}))
def test_wgmma_default_and_fallbacks(rng, block_size):
    """On an sm_90 device fp16/bf16 feature-axis-1 calls with N > 64 run a wgmma kernel by default (xw_tma where
    xw_tma_default names a tile, else xw_gmma_rs where xw_gmma_rs_default does, else xw_gmma); a misaligned out=
    or feature axis 0 take the mma.sync kernels; all stay correct."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    op = BlockSparseMatMul(_layout(rng, 6, 5, 0.5), block_size)
    n = 300
    x = random_array(rng, (n, op.K), "bfloat16")
    w = random_array(rng, op.w_shape, "bfloat16", scale=0.2)
    xg, wg = cp.asarray(x), cp.asarray(w)
    y_ref = _ref64(op, "fprop", x, w=w)
    rs = _matmul_gpu.xw_gmma_rs_default(block_size, op.layout.density)
    tma = _matmul_gpu.xw_tma_default(block_size, op.layout.density)
    if tma is not None:  # the TMA kernel is the default at this density
        gmma = _matmul_gpu.xw_tma_spec("bfloat16", "bfloat16", block_size, tma, 0)
        smem = _matmul_gpu.xw_tma_smem(block_size, tma)
    elif rs is not None:  # the column-group kernel is the default at this density
        gmma = _matmul_gpu.xw_gmma_rs_spec("bfloat16", "bfloat16", block_size, rs, 0)
        smem = _matmul_gpu.xw_gmma_rs_smem(block_size, rs)
    else:
        default = next(iter(XW_GMMA_TILES[block_size]))
        gmma = _matmul_gpu.xw_gmma_spec("bfloat16", "bfloat16", block_size, default, 0)
        smem = _matmul_gpu.xw_gmma_smem(block_size, default)
    assert_close(op.fprop(xg, wg), y_ref, "bfloat16", "fprop default")
    assert _ran(op, gmma, smem), "the wgmma kernel is not the default"
    op._gpu_tables.clear()
    flat = poison(cp, (n * op.M + 8,), "bfloat16")
    out = flat[4 : 4 + n * op.M].reshape(n, op.M)  # 8-byte offset: not 16-byte aligned
    op.fprop(xg, wg, out=out)
    assert_close(out, y_ref, "bfloat16", "fprop into a misaligned out=")
    assert not _ran(op, gmma, smem), "misaligned out= ran a wgmma kernel"



def _check_grouped_update(rng, op, dtype, odt, ns):
    """The grouped update of fresh pairs with batch sizes ``ns`` into a poisoned out= and accumulating into
    random values, every element against float64."""
    import cupy as cp

    xs = [random_array(rng, (n, op.K), dtype) for n in ns]
    dys = [random_array(rng, (n, op.M), dtype) for n in ns]
    ref64 = _ref64(op, "updat", xs, dys)
    dw = poison(cp, op.w_shape, odt)
    op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys], out=dw)
    assert_close(dw, ref64, dtype, f"updat {ns}")
    acc = cp.asarray(random_array(rng, op.w_shape, odt))
    acc0 = acc.get().astype(np.float64)
    op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys], out=acc, accumulate=True)
    assert_close(acc, acc0 + ref64, dtype, f"updat accumulate {ns}")


@pytest.mark.parametrize("block_size,variant",
                         [(b, v) for b, vs in _matmul_gpu_tiles.UPDAT_GMMA_TILES.items() for v in vs])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("out_dtype", [None, "float32"])
def test_wgmma_update(rng, monkeypatch, block_size, variant, dtype, out_dtype):
    """updat_gmma / updat_gmma32 / updat_gmma_stack (b = 64 / 32 / 16, 8 on sm_90): an empty block row, block
    rows of 1 to 20 blocks (partly empty groups, empty stacked slots and whole empty warpgroups of the b <= 32
    tiles, rows of several groups), a grouped update of pairs with ragged batch sizes, one split and several
    (in-launch split finish), accumulate, every element against float64; asserts that the variant ran."""
    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    calls = []
    spec_fn = _matmul_gpu.updat_gmma_spec
    monkeypatch.setattr(_matmul_gpu, "updat_gmma_spec", lambda *a: calls.append(a) or spec_fn(*a))
    monkeypatch.setattr(_matmul_gpu, "updat_gmma_variant", variant)
    counts = [1, 0, 2, 3, 5, 4, 9, 13, 20]  # blocks per block row (row 1 empty)
    mask = np.zeros((len(counts), 20), bool)
    for r, c in enumerate(counts):
        mask[r, rng.choice(20, c, replace=False)] = True
    op = BlockSparseMatMul(mask, block_size)
    odt = out_dtype or dtype
    for ns in ([300], [77, 130, 64, 5], [4000]):  # [4000]: enough chunks per CTA for several splits
        _check_grouped_update(rng, op, dtype, odt, ns)
    assert calls and all(c[2:] == (block_size, variant) for c in calls), "updat_gmma did not run"


@pytest.mark.parametrize("variant", list(_matmul_gpu_tiles.UPDAT_TILE_TILES[16]))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("out_dtype", [None, "float32"])
def test_tile_update(rng, monkeypatch, variant, dtype, out_dtype):
    """updat_tile_tc (b = 16, 2-D layout tiles): partial edge tiles, tiles of more blocks than one CTA takes,
    an empty block row, a grouped update of ragged pairs, one pass (forced) and several splits (updat_reduce),
    accumulate, every element against float64; asserts that the tile kernel ran."""
    from cusparseblocks import _matmul_gpu

    calls = []
    spec_fn = _matmul_gpu.updat_tile_spec
    monkeypatch.setattr(_matmul_gpu, "updat_tile_spec", lambda *a: calls.append(a) or spec_fn(*a))
    monkeypatch.setattr(_matmul_gpu, "updat_tile_variant", variant)
    mask = rng.random((21, 26)) < 0.3
    mask[:8, :8] = True  # a dense corner: more blocks in a tile than one CTA takes
    mask[9] = False
    op = BlockSparseMatMul(mask, 16)
    odt = out_dtype or dtype
    splits = []
    real = _matmul_gpu.tile_update_splits
    for ns, force in (([300], None), ([77, 130, 64, 5], 1), ([4000], None), ([4000], 1)):
        # these few items get several splits by default; force = 1: one pass
        monkeypatch.setattr(_matmul_gpu, "tile_update_splits",
                            lambda *a, f=force: splits.append(f or real(*a)) or splits[-1])
        _check_grouped_update(rng, op, dtype, odt, ns)
    assert calls and all(c[2:] == (16, variant) for c in calls), "updat_tile_tc did not run"
    assert 1 in splits and max(splits) > 1, f"splits {splits}: both paths expected"


@pytest.mark.parametrize("block_size", list(_matmul_gpu_tiles.UPDAT_GMMA_TILES))
def test_wgmma_update_default_and_fallback(rng, monkeypatch, block_size):
    """On an sm_90 device the fp16/bf16 feature-axis-1 update runs the wgmma kernel by default (from
    UPDAT_GMMA_MIN_DENSITY up; below it updat_tc; b = 16 from UPDAT_TILE_MIN_DENSITY up: updat_tile_tc); with
    gmma_enabled = False it runs updat_tc; all against float64, split and unsplit."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    _needs_wgmma()
    calls = []
    gmma_fn, tc_fn, tile_fn = _matmul_gpu.updat_gmma_spec, _matmul_gpu.updat_tc_spec, _matmul_gpu.updat_tile_spec
    monkeypatch.setattr(_matmul_gpu, "updat_gmma_spec", lambda *a: calls.append("gmma") or gmma_fn(*a))
    monkeypatch.setattr(_matmul_gpu, "updat_tc_spec", lambda *a: calls.append("tc") or tc_fn(*a))
    monkeypatch.setattr(_matmul_gpu, "updat_tile_spec", lambda *a: calls.append("tile") or tile_fn(*a))
    op = BlockSparseMatMul(_layout(rng, 6, 7, 0.5), block_size)
    # b = 16 from UPDAT_TILE_MIN_DENSITY up: updat_tile_tc is the default
    tile = op.layout.density >= _matmul_gpu.UPDAT_TILE_MIN_DENSITY.get(block_size, 2.0)
    for enabled, kernel in ((True, "tile" if tile else "gmma"), (False, "tc")):
        monkeypatch.setattr(_matmul_gpu, "gmma_enabled", enabled)
        for n in (333, 3000):
            x = random_array(rng, (n, op.K), "bfloat16")
            dy = random_array(rng, (n, op.M), "bfloat16")
            dw = poison(cp, op.w_shape, "bfloat16")
            op.updat(cp.asarray(x), cp.asarray(dy), out=dw)
            assert_close(dw, _ref64(op, "updat", [x], [dy]), "bfloat16", f"updat {kernel} n={n}")
        assert calls and set(calls) == {kernel}, f"gmma_enabled={enabled}: ran {calls}, not {kernel}"
        calls.clear()
    least = _matmul_gpu.UPDAT_GMMA_MIN_DENSITY.get(block_size, 0.0)
    if least > 0:  # a layout below the density rule: updat_tc by default
        monkeypatch.setattr(_matmul_gpu, "gmma_enabled", True)
        mask = np.zeros((30, 30), bool)
        mask[np.arange(30), (np.arange(30) * 7) % 30] = True
        op = BlockSparseMatMul(mask, block_size)
        assert op.layout.density < least
        x = random_array(rng, (333, op.K), "float16")
        dy = random_array(rng, (333, op.M), "float16")
        dw = poison(cp, op.w_shape, "float16")
        op.updat(cp.asarray(x), cp.asarray(dy), out=dw)
        assert_close(dw, _ref64(op, "updat", [x], [dy]), "float16", "updat below the density rule")
        assert calls == ["tc"], f"density {op.layout.density:.3f} < {least}: ran {calls}, not updat_tc"


@pytest.mark.parametrize("block_size", [8, 32])
def test_update_pointer_table_cache(rng, block_size):
    """Update calls alternating between array sets, more sets than the table cache holds, with the
    contents of a set changed between its calls: every result matches the reference."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    op = BlockSparseMatMul(_layout(rng, 5, 4), block_size)
    n_sets = _matmul_gpu._PAIR_TABLES + 2
    shapes = [int(rng.integers(20, 200)) for _ in range(n_sets)]
    xs = [cp.asarray(random_array(rng, (n, op.K), "float16")) for n in shapes]
    dys = [cp.asarray(random_array(rng, (n, op.M), "float16")) for n in shapes]
    for step in range(3):
        for i in (list(range(n_sets)) + [0, 1])[:: 1 if step % 2 == 0 else -1]:
            xs[i][...] = cp.asarray(random_array(rng, xs[i].shape, "float16"))
            dw = op.updat(xs[i], dys[i])
            assert_close(dw, _ref64(op, "updat", [xs[i].get()], [dys[i].get()]), "float16", f"updat set {i}")
    grouped = op.updat(xs[:3], dys[:3])
    assert_close(grouped, _ref64(op, "updat", [a.get() for a in xs[:3]], [a.get() for a in dys[:3]]), "float16")


# ---- xw_small (kernels/bsmm_small.cu): N ≤ 64, b = 32, feature axis 1 ----

def _small_ran(op, dtype, odt, n, trans, variant=None):
    from cusparseblocks import _matmul_gpu

    bm = 32 if n <= 32 else 64
    return _ran_any(op, _matmul_gpu.xw_small_spec(dtype, odt, bm, trans, variant),
                    _matmul_gpu.xw_small_smem(dtype, bm, variant))


@pytest.fixture(autouse=True)
def _small_for_any_size(request, monkeypatch):
    """The xw_small tests use layouts of a few blocks: let fp16/bf16 take xw_small there too (by default they
    need SMALL_TC_MIN_BLOCKS_PER_SM blocks per SM; test_small_batch_threshold checks that rule)."""
    if request.node.name.startswith("test_small_batch") and "threshold" not in request.node.name:
        from cusparseblocks import _matmul_gpu

        monkeypatch.setattr(_matmul_gpu, "SMALL_TC_MIN_BLOCKS_PER_SM", 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_batch_threshold(rng, dtype):
    """Default selection at N = 32: fp16/bf16 run xw_small only with at least SMALL_TC_MIN_BLOCKS_PER_SM
    blocks per SM (else the per-column kernel), float32 always; both paths against float64."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    sms = _matmul_gpu._sm_count(cp.cuda.runtime.getDevice())
    n = 32
    for many in (False, True):
        side = int(np.ceil(np.sqrt(_matmul_gpu.SMALL_TC_MIN_BLOCKS_PER_SM * sms * 1.2))) if many else 12
        mask = np.ones((side, side), bool) if many else _layout(rng, side, side, 0.5)
        op = BlockSparseMatMul(mask, 32)
        x = random_array(rng, (n, op.K), dtype)
        w = random_array(rng, op.w_shape, dtype, scale=0.05)
        y = poison(cp, (n, op.M), dtype)
        op.fprop(cp.asarray(x), cp.asarray(w), out=y)
        assert_close(y, _ref64(op, "fprop", x, w=w), dtype, f"fprop many={many}")
        expect = many or dtype == "float32"
        assert _small_ran(op, dtype, dtype, n, 0) == expect, f"{dtype} many={many}: xw_small ran != {expect}"


def _ran_any(op, spec, smem):
    """True when some fprop/bprop plan cached on ``op`` launches ``spec``."""
    from cusparseblocks import compiler

    fn = compiler.get_function(spec, smem)
    return any(v[0] is fn for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "xw")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 19, 31, 32, 33, 37, 64])
@pytest.mark.parametrize("shape", [(60, 41, 0.5), (130, 97, 0.1)])
def test_small_batch_kernel(rng, dtype, n, shape):
    """xw_small by default at N ≤ 64: columns long enough to be split over CTAs (partials summed in the
    launch), an empty block row and column, ragged N on both tile heights; fprop and bprop into poisoned
    out=, float32 output, accumulate in the input dtype and in float32; every element against float64; the
    same bits on a second run (the split reduction's order is fixed); asserts that xw_small ran."""
    _check_small_batch(rng, dtype, n, shape)


_RING_VARIANTS = [v for v, (_, _, t) in _matmul_gpu_tiles.XW_SMALL_VARIANTS.items() if len(t) > 6]


@pytest.mark.parametrize("variant", _RING_VARIANTS)
@pytest.mark.parametrize("n", [1, 29, 32])
@pytest.mark.parametrize("shape", [(60, 41, 0.5), (130, 97, 0.1)])
def test_small_batch_ring(rng, monkeypatch, variant, n, shape):
    """xw_small_ring (per-warp rings; cp.async or, on sm_90, bulk copies + mbarriers) forced through
    small_variant: the checks of test_small_batch_kernel (poisoned out=, accumulate, every element against
    float64, same bits on a rerun, the kernel ran), for each dtype of its kind."""
    from cusparseblocks import _matmul_gpu

    monkeypatch.setattr(_matmul_gpu, "small_variant", variant)
    kind = _matmul_gpu.XW_SMALL_VARIANTS[variant][0]
    for dtype in (("float16", "bfloat16") if kind == "tc" else ("float32",)):
        _check_small_batch(rng, dtype, n, shape, variant)


def _check_small_batch(rng, dtype, n, shape, variant=None):
    import cupy as cp

    kb, mb, density = shape
    op = BlockSparseMatMul(_layout(rng, kb, mb, density), 32)
    x = random_array(rng, (n, op.K), dtype)
    dy = random_array(rng, (n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    y_acc = cp.asarray(random_array(rng, (n, op.M), dtype))
    dx_acc32 = cp.asarray(random_array(rng, (n, op.K), "float32"))
    y0, dx032 = y_acc.get().astype(np.float64), dx_acc32.get()
    y = poison(cp, (n, op.M), dtype)
    op.fprop(xg, wg, out=y)
    dx = poison(cp, (n, op.K), dtype)
    op.bprop(dyg, wg, out=dx)
    y32 = op.fprop(xg, wg, out_dtype="float32") if dtype != "float32" else None
    op.fprop(xg, wg, out=y_acc, accumulate=True)
    op.bprop(dyg, wg, out=dx_acc32, accumulate=True)  # float32 out: out's dtype decides
    assert _small_ran(op, dtype, dtype, n, 0, variant) and _small_ran(op, dtype, dtype, n, 1, variant), \
        f"xw_small [{variant}] did not run"
    y_ref, dx_ref = _ref64(op, "fprop", x, w=w), _ref64(op, "bprop", dy, w=w)
    assert_close(y, y_ref, dtype, "fprop")
    assert_close(dx, dx_ref, dtype, "bprop")
    if y32 is not None:
        assert_close(y32, y_ref, dtype, "fprop fp32 out")
    assert_close(y_acc, y0 + y_ref, dtype, "fprop accumulate")
    assert_close(dx_acc32, dx032 + dx_ref, dtype, "bprop accumulate fp32")
    y2 = poison(cp, (n, op.M), dtype)
    op.fprop(xg, wg, out=y2)
    dx2 = op.bprop(dyg, wg)
    assert np.array_equal(np.asarray(y.get()).view(np.uint8), np.asarray(y2.get()).view(np.uint8)), "fprop bits differ"
    assert np.array_equal(np.asarray(dx.get()).view(np.uint8), np.asarray(dx2.get()).view(np.uint8)), "bprop bits differ"


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_batch_fallbacks(rng, dtype):
    """The per-column kernels still serve N ≤ 64 where xw_small does not apply (small_enabled off, a
    misaligned x, block size 64) and agree with the float64 reference; a one-block layout runs xw_small."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    n = 29
    op = BlockSparseMatMul(_layout(rng, 9, 7, 0.5), 32)
    x = random_array(rng, (n, op.K), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, wg = cp.asarray(x), cp.asarray(w)
    y_ref = _ref64(op, "fprop", x, w=w)
    _matmul_gpu.small_enabled = False
    try:
        assert_close(op.fprop(xg, wg), y_ref, dtype, "fprop, xw_small off")
    finally:
        _matmul_gpu.small_enabled = True
    assert not _small_ran(op, dtype, dtype, n, 0), "xw_small ran while disabled"
    op._gpu_tables.clear()
    flat = cp.asarray(random_array(rng, (n * op.K + 8,), dtype))
    off = 8 // np.dtype(np.float32 if dtype == "float32" else np.float16).itemsize
    xm = flat[off : off + n * op.K].reshape(n, op.K)  # 8-byte offset: not 16-byte aligned
    assert_close(op.fprop(xm, wg), _ref64(op, "fprop", xm.get(), w=w), dtype, "fprop, misaligned x")
    assert not _small_ran(op, dtype, dtype, n, 0), "xw_small ran on a misaligned x"
    op64 = BlockSparseMatMul(_layout(rng, 4, 3, 0.5), 64)
    x64 = random_array(rng, (n, op64.K), dtype)
    w64 = random_array(rng, op64.w_shape, dtype, scale=0.2)
    assert_close(op64.fprop(cp.asarray(x64), cp.asarray(w64)), _ref64(op64, "fprop", x64, w=w64), dtype, "b=64")
    one = BlockSparseMatMul(np.ones((1, 1), bool), 32)
    x1 = random_array(rng, (n, 32), dtype)
    w1 = random_array(rng, one.w_shape, dtype, scale=0.2)
    y1 = poison(cp, (n, 32), dtype)
    one.fprop(cp.asarray(x1), cp.asarray(w1), out=y1)
    assert_close(y1, _ref64(one, "fprop", x1, w=w1), dtype, "one block")
    assert _small_ran(one, dtype, dtype, n, 0)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_small_batch_bench_shape(rng, dtype):
    """The benchmark's shape class (K = M = 12288, b = 32, N = 32) at densities 0.5 and 0.02: thousands
    of blocks per CTA and a few per CTA; fprop and bprop against float64."""
    import cupy as cp

    for density in (0.5, 0.02):
        mask = rng.random((384, 384)) < density
        mask[np.arange(384), np.arange(384)] = True
        op = BlockSparseMatMul(mask, 32)
        x = random_array(rng, (32, op.K), dtype)
        w = random_array(rng, op.w_shape, dtype, scale=0.05)
        xg, wg = cp.asarray(x), cp.asarray(w)
        assert_close(op.fprop(xg, wg), _ref64(op, "fprop", x, w=w), dtype, f"fprop d={density}")
        assert_close(op.bprop(xg, wg), _ref64(op, "bprop", x, w=w), dtype, f"bprop d={density}")
        assert _small_ran(op, dtype, dtype, 32, 0) and _small_ran(op, dtype, dtype, 32, 1)


@pytest.mark.parametrize("variant", list(_matmul_gpu_tiles.XW_SMALL_VARIANTS))
def test_small_batch_tile_variants(rng, monkeypatch, variant):
    """Each xw_small tile the benchmark times (small_variant) is correct: fprop and bprop, split columns,
    ragged N within its tile height, every element against float64; asserts that the variant ran."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    kind, bm, _ = _matmul_gpu.XW_SMALL_VARIANTS[variant]
    monkeypatch.setattr(_matmul_gpu, "small_variant", variant)
    for dtype in (("float16", "bfloat16") if kind == "tc" else ("float32",)):
        n = bm - 3
        op = BlockSparseMatMul(_layout(rng, 60, 41, 0.5), 32)
        x = random_array(rng, (n, op.K), dtype)
        dy = random_array(rng, (n, op.M), dtype)
        w = random_array(rng, op.w_shape, dtype, scale=0.2)
        y = poison(cp, (n, op.M), dtype)
        op.fprop(cp.asarray(x), cp.asarray(w), out=y)
        dx = op.bprop(cp.asarray(dy), cp.asarray(w))
        assert_close(y, _ref64(op, "fprop", x, w=w), dtype, f"fprop [{variant}]")
        assert_close(dx, _ref64(op, "bprop", dy, w=w), dtype, f"bprop [{variant}]")
        spec = _matmul_gpu.xw_small_spec(dtype, dtype, bm, 0, variant)
        assert _ran_any(op, spec, _matmul_gpu.xw_small_smem(dtype, bm, variant)), f"{variant} did not run"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_small_batch_index_past_2_31_elements(rng, dtype):
    """xw_small with an x of more than 2³¹ elements (32 rows × 69 M features): blocks of the last block rows
    read x past that offset; fprop against float64 computed from the blocks alone."""
    import cupy as cp

    b, n, kb = 32, 32, 2_170_000  # n · K > 2³¹
    rows = [5, kb - 3, kb - 2, kb - 1]
    mask = np.zeros((kb, 2), bool)
    mask[rows[:3], 0] = True
    mask[rows[1:], 1] = True
    op = BlockSparseMatMul(mask, b)
    x = cp.zeros((n, op.K), dtype)
    assert x.size > 2**31
    parts = {r: random_array(rng, (n, b), dtype) for r in rows}
    for r, v in parts.items():
        x[:, r * b:(r + 1) * b] = cp.asarray(v)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    y = op.fprop(x, cp.asarray(w))
    ref = np.zeros((n, op.M))
    lay = op.layout
    for k in range(lay.nnz):
        r, c = int(lay.rows[k]), int(lay.cols[k])
        ref[:, c * b:(c + 1) * b] += parts[r].astype(np.float64) @ w[k].astype(np.float64)
    assert_close(y, ref, dtype, "rows past 2^31 elements")
    assert _small_ran(op, dtype, dtype, n, 0)


# ---- float32 FFMA kernels (xw_ffma) ----

def _xw_functions(op):
    return [v[0] for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "xw"]


@pytest.mark.parametrize("block_size,variant", [(b, v) for b, vs in XW_FFMA_TILES.items() for v in vs] +
                         [(32, "simt"), (64, "simt")])
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("n", [68, 300, 1028])
def test_float32_ffma_tiles(rng, block_size, variant, feature_axis, n):
    """xw_ffma (forced tile; "simt": the old xw_simt on aligned data): ragged N against every tile height,
    column lists longer than the pipeline, empty block rows and columns, fprop and bprop into poisoned
    out=, accumulate; asserts which kernel ran."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu, compiler

    op = BlockSparseMatMul(_layout(rng, 11, 9, 0.6), block_size, feature_axis)
    x = random_array(rng, _io(op, n, op.K), "float32")
    dy = random_array(rng, _io(op, n, op.M), "float32")
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    y_acc = cp.asarray(random_array(rng, _io(op, n, op.M), "float32"))
    y0 = y_acc.get().astype(np.float64)
    _matmul_gpu.force_variant = variant
    try:
        y = poison(cp, _io(op, n, op.M), "float32")
        op.fprop(xg, wg, out=y)
        dx = poison(cp, _io(op, n, op.K), "float32")
        op.bprop(dyg, wg, out=dx)
        op.fprop(xg, wg, out=y_acc, accumulate=True)
    finally:
        _matmul_gpu.force_variant = None
    if variant == "simt":
        expected = [compiler.get_function(_matmul_gpu.xw_simt_spec("float32", "float32", block_size, feature_axis, t))
                    for t in (0, 1)]
    else:
        smem = _matmul_gpu.xw_ffma_smem(block_size, variant)
        expected = [compiler.get_function(_matmul_gpu.xw_ffma_spec(block_size, variant, feature_axis, t), smem)
                    for t in (0, 1)]
    fns = _xw_functions(op)  # the fprop plan, then the bprop plan (accumulate reuses the first)
    assert len(fns) == 2 and all(f is e for f, e in zip(fns, expected)), f"{variant} did not run"
    if variant != "simt":  # the CTAs' column order of this variant (LPT: longest lists first) was used
        lpt = XW_FFMA_TILES[block_size][variant][5]
        used = {k[1] for k in op._gpu_tables if isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], tuple)
                and k[1][0] == "ffma"}
        assert used == {("ffma", "fprop", lpt), ("ffma", "bprop", lpt)}, f"{variant}: tables {used}"
    y_ref = _ref64(op, "fprop", x, w=w)
    assert_close(y, y_ref, "float32", f"fprop [{variant}]")
    assert_close(dx, _ref64(op, "bprop", dy, w=w), "float32", f"bprop [{variant}]")
    assert_close(y_acc, y0 + y_ref, "float32", f"fprop accumulate [{variant}]")


@pytest.mark.parametrize("feature_axis", [1, 0])
def test_float32_ffma_default_and_fallbacks(rng, feature_axis):
    """float32 with N > 64 and aligned x, w runs xw_ffma by default (a misaligned out= too: the epilogue
    stores elements); a misaligned x, or N % 4 != 0 on feature axis 0, takes xw_simt; all stay correct."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu, compiler

    b = 32
    op = BlockSparseMatMul(_layout(rng, 6, 5, 0.5), b, feature_axis)
    default = next(iter(XW_FFMA_TILES[b]))
    smem = _matmul_gpu.xw_ffma_smem(b, default)
    ffma = compiler.get_function(_matmul_gpu.xw_ffma_spec(b, default, feature_axis, 0), smem)
    for n, expect_ffma in ((300, True), (301, feature_axis == 1), (64, False)):
        op._gpu_tables.clear()
        x = random_array(rng, _io(op, n, op.K), "float32")
        w = random_array(rng, op.w_shape, "float32", scale=0.2)
        flat = poison(cp, (n * op.M + 1,), "float32")
        out = flat[1:].reshape(_io(op, n, op.M))  # 4-byte offset: not 16-byte aligned
        op.fprop(cp.asarray(x), cp.asarray(w), out=out)
        assert_close(out, _ref64(op, "fprop", x, w=w), "float32", f"fprop n={n} misaligned out=")
        assert (_xw_functions(op)[0] is ffma) == expect_ffma, f"n={n}: xw_ffma ran = {not expect_ffma}"
    # misaligned x: the SIMT fallback
    op._gpu_tables.clear()
    n = 300
    x = random_array(rng, _io(op, n, op.K), "float32")
    flat = cp.asarray(np.concatenate([np.zeros(1, np.float32), x.ravel()]))
    xg = flat[1:].reshape(x.shape)
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    assert_close(op.fprop(xg, cp.asarray(w)), _ref64(op, "fprop", x, w=w), "float32", "fprop misaligned x")
    assert _xw_functions(op)[0] is not ffma


@pytest.mark.parametrize("block_size,variant",
                         [(b, v) for b, vs in _matmul_gpu_tiles.UPDAT_FFMA_TILES.items() for v in vs] +
                         [(32, "simt")])
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_float32_ffma_update(rng, monkeypatch, block_size, variant, feature_axis):
    """updat_ffma (forced tile; "simt": updat_simt on aligned data): block rows of 1 to 10 blocks (full and
    partial groups), an empty block row and column, grouped pairs with ragged batch sizes, one split and
    several (fp32 partials + updat_reduce), poisoned out= and accumulate; asserts which kernel ran."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    calls = []
    for name in ("updat_ffma_spec", "updat_simt_spec"):
        fn = getattr(_matmul_gpu, name)
        monkeypatch.setattr(_matmul_gpu, name, lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
    monkeypatch.setattr(_matmul_gpu, "updat_ffma_variant", variant)
    mask = np.zeros((11, 12), bool)
    for r in range(10):  # row 10 empty; column 11 empty
        mask[r, rng.choice(11, r + 1, replace=False)] = True
    op = BlockSparseMatMul(mask, block_size, feature_axis)
    for ns in ([300], [76, 132, 64, 4], [4000]):  # [4000]: enough chunks per CTA for several splits
        xs = [random_array(rng, _io(op, n, op.K), "float32") for n in ns]
        dys = [random_array(rng, _io(op, n, op.M), "float32") for n in ns]
        ref64 = _ref64(op, "updat", xs, dys)
        dw = poison(cp, op.w_shape, "float32")
        op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys], out=dw)
        assert_close(dw, ref64, "float32", f"updat {ns}")
        acc = cp.asarray(random_array(rng, op.w_shape, "float32"))
        acc0 = acc.get().astype(np.float64)
        op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys], out=acc, accumulate=True)
        assert_close(acc, acc0 + ref64, "float32", f"updat accumulate {ns}")
    expected = "updat_simt_spec" if variant == "simt" else "updat_ffma_spec"
    assert calls and set(calls) == {expected}, f"{variant}: ran {set(calls)}"


@pytest.mark.parametrize("variant", [v for v, t in _matmul_gpu_tiles.UPDAT_FFMA_TILES[32].items() if t[5] == 2])
@pytest.mark.parametrize("feature_axis", [1, 0])
def test_float32_ffma_update_packed(rng, monkeypatch, variant, feature_axis):
    """updat_ffma with XR = 2 (groups packing a row's last blocks with the next nonempty row's first):
    rows of 0 to 13 blocks with empty rows between, the splits chosen by ffma_update_splits and forced to
    1 and 3, grouped pairs with ragged N, poisoned out= and accumulate; the same bits on a second run."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    monkeypatch.setattr(_matmul_gpu, "updat_ffma_variant", variant)
    g = _matmul_gpu.UPDAT_FFMA_TILES[32][variant][0]
    mask = np.zeros((16, 15), bool)
    for r, n in enumerate([3, 0, 13, 7, 0, 0, 1, 9, 14, 2, 0, 5, 8, 11, 0, 6]):
        mask[r, rng.choice(15, min(n, 15), replace=False)] = True
    op = BlockSparseMatMul(mask, 32, feature_axis)
    groups = _matmul_gpu.update_groups(op.layout, g, 2)
    rows_of = np.where(groups >= 0, op.layout.rows[np.maximum(groups, 0)], -1)
    assert any(len(set(r[r >= 0])) == 2 for r in rows_of)
    chosen = []
    real = _matmul_gpu.ffma_update_splits
    monkeypatch.setattr(_matmul_gpu, "ffma_update_splits", lambda *a: chosen.append(real(*a)) or chosen[-1])
    for ns, force in (([300], None), ([76, 132, 64, 4], None), ([4000], None), ([4000], 1), ([1000, 36], 3)):
        if force is not None:
            monkeypatch.setattr(_matmul_gpu, "ffma_update_splits", lambda *a, f=force: chosen.append(f) or f)
        xs = [random_array(rng, _io(op, n, op.K), "float32") for n in ns]
        dys = [random_array(rng, _io(op, n, op.M), "float32") for n in ns]
        ref64 = _ref64(op, "updat", xs, dys)
        xg, dyg = [cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys]
        dw = poison(cp, op.w_shape, "float32")
        op.updat(xg, dyg, out=dw)
        assert_close(dw, ref64, "float32", f"updat {ns} splits {chosen[-1]}")
        again = poison(cp, op.w_shape, "float32")
        op.updat(xg, dyg, out=again)
        assert cp.array_equal(dw.view(cp.uint32), again.view(cp.uint32)), f"{ns}: not bit-reproducible"
        acc = cp.asarray(random_array(rng, op.w_shape, "float32"))
        acc0 = acc.get().astype(np.float64)
        op.updat(xg, dyg, out=acc, accumulate=True)
        assert_close(acc, acc0 + ref64, "float32", f"updat accumulate {ns} splits {chosen[-1]}")
    assert max(chosen) > 1, f"no split exercised: {chosen}"


def test_float32_ffma_update_fallbacks(rng):
    """updat_ffma needs aligned pairs (and N % 4 == 0 on feature axis 0): a misaligned x or N = 301 on axis 0
    runs updat_simt, correct either way."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu

    for axis, n, misalign, expect in ((1, 301, False, True), (0, 301, False, False), (0, 300, False, True),
                                      (1, 300, True, False)):
        op = BlockSparseMatMul(_layout(rng, 5, 6, 0.5), 32, axis)
        x = random_array(rng, _io(op, n, op.K), "float32")
        dy = random_array(rng, _io(op, n, op.M), "float32")
        xg = cp.asarray(x)
        if misalign:
            flat = cp.asarray(np.concatenate([np.zeros(1, np.float32), x.ravel()]))
            xg = flat[1:].reshape(x.shape)
        dw = op.updat(xg, cp.asarray(dy))
        assert_close(dw, _ref64(op, "updat", [x], [dy]), "float32", f"axis {axis} n {n} misaligned {misalign}")
        plans = [v for k, v in op._gpu_tables.items() if isinstance(k, tuple) and k[0] == "updat"]
        default = next(iter(_matmul_gpu.UPDAT_FFMA_TILES[32]))
        fn = _matmul_gpu.compiler.get_function(_matmul_gpu.updat_ffma_spec(32, default, axis),
                                               _matmul_gpu.updat_ffma_smem(32, default))
        ffma = any(p[0] is fn for p in plans)
        assert ffma == expect, f"axis {axis} n {n} misaligned {misalign}: updat_ffma ran = {ffma}"
