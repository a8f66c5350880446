"""BlockSparseMatMul: the contract of issue 2, section 3, on the NumPy reference path.

Every op is checked element by element against scipy.sparse.bsr_matrix in float64, built here from the
mask alone (not from BlockLayout's tables), over dtype x block size x feature axis x layout generator x
ragged N. Then out= / accumulate / out_dtype, grouped updat, conversions, initialisers, the lookup
tables, and every validation path. GPU tests (CuPy arrays) are appended in their own section at the end.
"""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_close, poison, random_array

from cusparseblocks import BlockLayout, BlockSparseMatMul, layouts
from cusparseblocks._array import bfloat16

DTYPES = ["float16", "bfloat16", "float32", "float64"]
BLOCK_SIZES = [8, 16, 32, 64]

LAYOUTS = {
    "random": lambda: layouts.random(5, 7, 0.3, seed=1),
    "random_diag": lambda: layouts.random(6, 6, 0.1, keep_diagonal=True, seed=2),
    "watts_strogatz": lambda: layouts.watts_strogatz(8, 4, 0.2, seed=3),
    "barabasi_albert": lambda: layouts.barabasi_albert(7, 2, seed=4),
    "block_diagonal_shuffle": lambda: layouts.block_diagonal(6, 3, 9, shuffle=True),
    "channel_random": lambda: layouts.channel_random(9, 4, 0.3, seed=5),
}


def np_dtype(dtype):
    return np.dtype(bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def reference_W(mask, w) -> sp.bsr_matrix:
    """float64 bsr_matrix (K, M) from the mask's row-major nonzeros and w."""
    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))])
    b = w.shape[-1]
    return sp.bsr_matrix((np.asarray(w, np.float64), cols, indptr), shape=(mask.shape[0] * b, mask.shape[1] * b))


def reference_updat(mask, pairs, b) -> np.ndarray:
    """Σ xᵀ·dy (x [N, K], dy [N, M], float64) at the nonzero blocks, in row-major block order."""
    dense = sum(np.asarray(x, np.float64).T @ np.asarray(dy, np.float64) for x, dy in pairs)
    rows, cols = np.nonzero(mask)
    return dense.reshape(mask.shape[0], b, mask.shape[1], b).transpose(0, 2, 1, 3)[rows, cols]


def activations(rng, features, n, dtype, feature_axis):
    """(array in the layout of feature_axis, the same as [N, features] float64)."""
    a = random_array(rng, (n, features) if feature_axis == 1 else (features, n), dtype)
    a64 = a.astype(np.float64)
    return a, (a64 if feature_axis == 1 else a64.T)


def as_nf(a, feature_axis):
    a = np.asarray(a, np.float64)
    return a if feature_axis == 1 else a.T


# ---------------------------------------------------------------------------------------------------
# every op against scipy.sparse, float64


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_against_scipy(rng, dtype, block_size, feature_axis, layout_name):
    mask = LAYOUTS[layout_name]()
    bsmm = BlockSparseMatMul(mask, block_size=block_size, feature_axis=feature_axis)
    n = int(rng.choice([1, 3, 37, 100, 131]))  # ragged: not a multiple of anything
    w = random_array(rng, bsmm.w_shape, dtype)
    W = reference_W(mask, w.astype(np.float64))
    x, x64 = activations(rng, bsmm.K, n, dtype, feature_axis)
    dy, dy64 = activations(rng, bsmm.M, n, dtype, feature_axis)

    y = bsmm.fprop(x, w)
    assert y.dtype == np_dtype(dtype) and y.shape == ((n, bsmm.M) if feature_axis == 1 else (bsmm.M, n))
    assert_close(as_nf(y, feature_axis), np.asarray((W.T @ x64.T).T), dtype, "fprop")
    assert_close(bsmm(x, w), np.asarray(y, np.float64), dtype, "__call__")

    dx = bsmm.bprop(dy, w)
    assert dx.dtype == np_dtype(dtype) and dx.shape == x.shape
    assert_close(as_nf(dx, feature_axis), np.asarray((W @ dy64.T).T), dtype, "bprop")

    dw = bsmm.updat(x, dy)
    assert dw.dtype == np_dtype(dtype) and dw.shape == bsmm.w_shape
    assert_close(dw, reference_updat(mask, [(x64, dy64)], block_size), dtype, "updat")


@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_updat(rng, dtype, feature_axis):
    mask = LAYOUTS["channel_random"]()
    bsmm = BlockSparseMatMul(mask, block_size=16, feature_axis=feature_axis)
    pairs, pairs64 = [], []
    for n in (1, 29, 70):  # each pair has its own N
        x, x64 = activations(rng, bsmm.K, n, dtype, feature_axis)
        dy, dy64 = activations(rng, bsmm.M, n, dtype, feature_axis)
        pairs.append((x, dy))
        pairs64.append((x64, dy64))
    xs, dys = [p[0] for p in pairs], [p[1] for p in pairs]
    dw = bsmm.updat(xs, dys)
    assert_close(dw, reference_updat(mask, pairs64, 16), dtype, "grouped updat")
    assert_close(bsmm.updat(tuple(xs[:1]), tuple(dys[:1])), reference_updat(mask, pairs64[:1], 16), dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_accumulates_in_float32(rng, dtype):
    """With out_dtype=float32 the only error left is fp32 accumulation: half inputs never sum in half."""
    mask = np.ones((16, 2), dtype=bool)  # K = 1024: a half-precision accumulator would be far off
    bsmm = BlockSparseMatMul(mask, block_size=64)
    x = random_array(rng, (33, bsmm.K), dtype)
    w = random_array(rng, bsmm.w_shape, dtype)
    W = reference_W(mask, w.astype(np.float64))
    y = bsmm.fprop(x, w, out_dtype=np.float32)
    assert y.dtype == np.float32
    assert_close(y, np.asarray((W.T @ x.astype(np.float64).T).T), "float32", "fprop out_dtype=float32")
    dy = random_array(rng, (33, bsmm.M), dtype)
    assert_close(bsmm.updat(x, dy, out_dtype=np.float32),
                 reference_updat(mask, [(x.astype(np.float64), dy.astype(np.float64))], 64), "float32")


@pytest.mark.parametrize("op", ["fprop", "bprop", "updat"])
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_out_and_accumulate(rng, dtype, feature_axis, op):
    mask = LAYOUTS["random"]()
    bsmm = BlockSparseMatMul(mask, block_size=8, feature_axis=feature_axis)
    n = 23
    x, _ = activations(rng, bsmm.K, n, dtype, feature_axis)
    dy, _ = activations(rng, bsmm.M, n, dtype, feature_axis)
    w = random_array(rng, bsmm.w_shape, dtype)
    run = {"fprop": lambda **kw: bsmm.fprop(x, w, **kw), "bprop": lambda **kw: bsmm.bprop(dy, w, **kw),
           "updat": lambda **kw: bsmm.updat(x, dy, **kw)}[op]
    expected = run().astype(np.float64)
    out = poison(np, expected.shape, np_dtype(dtype))
    assert run(out=out) is out
    assert_close(out, expected, dtype, f"{op} out=")
    start = random_array(rng, expected.shape, dtype)
    out = start.copy()
    assert run(out=out, accumulate=True) is out
    assert_close(out, start.astype(np.float64) + expected, dtype, f"{op} accumulate")
    if dtype != "float32":  # a float32 out for any input dtype
        out32 = poison(np, expected.shape, np.float32)
        run(out=out32)
        assert_close(out32, expected, "float32" if dtype == "float64" else dtype, f"{op} out float32")
        assert run(out_dtype=np.float32).dtype == np.float32


def test_empty_rows_and_columns_give_zeros(rng):
    mask = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=bool)  # input block 1 and output block 1 unused
    bsmm = BlockSparseMatMul(mask, block_size=8)
    w = random_array(rng, bsmm.w_shape, "float32")
    x = random_array(rng, (5, 24), "float32")
    y = bsmm.fprop(x, w)
    assert np.all(y[:, 8:16] == 0)
    dx = bsmm.bprop(random_array(rng, (5, 24), "float32"), w)
    assert np.all(dx[:, 8:16] == 0)
    assert_close(y, np.asarray((reference_W(mask, w).T @ x.astype(np.float64).T).T), "float32")


def test_shapes_and_attributes():
    mask = layouts.random(5, 7, 0.3, seed=1)
    bsmm = BlockSparseMatMul(mask, block_size=16, feature_axis=0)
    assert bsmm.K == 80 and bsmm.M == 112 and bsmm.w_shape == (int(mask.sum()), 16, 16)
    assert bsmm.feature_axis == 0 and bsmm.block_size == 16
    assert isinstance(bsmm.layout, BlockLayout) and np.array_equal(bsmm.layout.mask, mask)
    assert "5x7" in repr(bsmm)


@pytest.mark.parametrize("form", ["bool", "int", "float", "list", "BlockLayout"])
def test_layout_forms(form):
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    value = {"bool": mask, "int": mask.astype(np.int8), "float": mask.astype(np.float32),
             "list": mask.astype(int).tolist(), "BlockLayout": BlockLayout(mask)}[form]
    bsmm = BlockSparseMatMul(value, block_size=8)
    assert np.array_equal(bsmm.layout.mask, mask) and bsmm.w_shape == (3, 8, 8)


# ---------------------------------------------------------------------------------------------------
# conversions, initialisers, tables


@pytest.mark.parametrize("dtype", DTYPES)
def test_scipy_dense_roundtrip(rng, dtype):
    mask = LAYOUTS["barabasi_albert"]()
    bsmm = BlockSparseMatMul(mask, block_size=8)
    w = random_array(rng, bsmm.w_shape, dtype)
    S = bsmm.to_scipy(w)
    assert isinstance(S, sp.bsr_matrix) and S.shape == (bsmm.K, bsmm.M) and S.blocksize == (8, 8)
    D = bsmm.dense(w)
    assert D.dtype == w.dtype and D.shape == (bsmm.K, bsmm.M)
    assert np.array_equal(S.toarray().astype(np.float64), D.astype(np.float64))
    assert np.array_equal(D.astype(np.float64), reference_W(mask, w.astype(np.float64)).toarray())
    noisy = D.astype(np.float64) + (~np.kron(mask, np.ones((8, 8), bool))) * 5.0  # outside the layout
    back = bsmm.from_dense(noisy)
    assert back.shape == bsmm.w_shape and np.array_equal(back, w.astype(np.float64))
    assert back.flags.c_contiguous


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_init_normal(dtype):
    mask = layouts.channel_random(16, 8, 0.25, seed=0)
    bsmm = BlockSparseMatMul(mask, block_size=32)
    w = bsmm.init_normal(seed=1, scale=2.0, dtype=np_dtype(dtype))
    assert w.shape == bsmm.w_shape and w.dtype == np_dtype(dtype)
    assert np.array_equal(w, bsmm.init_normal(seed=1, scale=2.0, dtype=np_dtype(dtype)))
    fan_in = mask.sum(axis=0)[0] * 32
    std = np.asarray(bsmm.dense(w), np.float64)[:, :32][mask[:, 0].repeat(32)].std()
    assert std == pytest.approx(2.0 / np.sqrt(fan_in), rel=0.1)
    assert np.array_equal(bsmm.fan_in(), np.repeat(mask.sum(axis=0) * 32, 32))


def test_init_identity(rng):
    mask = layouts.random(6, 6, 0.3, keep_diagonal=True, seed=0)
    bsmm = BlockSparseMatMul(mask, block_size=16)
    w = bsmm.init_identity(scale=0.5)
    x = random_array(rng, (9, 96), "float32")
    assert_close(bsmm.fprop(x, w), 0.5 * x.astype(np.float64), "float32")
    with pytest.raises(ValueError, match="layout: identity init needs a square layout"):
        BlockSparseMatMul(np.ones((2, 3)), block_size=8).init_identity()
    with pytest.raises(ValueError, match="diagonal"):
        BlockSparseMatMul(np.array([[0, 1], [1, 1]]), block_size=8).init_identity()


def test_layout_tables_match_loops():
    mask = layouts.random(13, 9, 0.3, seed=4)
    mask[3] = False
    mask[:, 2] = False
    mask[0, 0] = True
    lay = BlockLayout(mask)
    blocks = [(i, j) for i in range(13) for j in range(9) if mask[i, j]]  # row-major = w order
    assert list(zip(lay.rows.tolist(), lay.cols.tolist())) == blocks and lay.nnz == len(blocks)
    assert lay.row_ptr.tolist() == [0, *np.cumsum([sum(r) for r in mask]).tolist()]
    assert lay.col_ptr.tolist() == [0, *np.cumsum(mask.sum(axis=0)).tolist()]
    for j in range(9):
        in_column = [k for k, (_, c) in enumerate(blocks) if c == j]  # sorted by row
        assert lay.col_order[lay.col_ptr[j]:lay.col_ptr[j + 1]].tolist() == in_column
    assert np.array_equal(lay.transposed.mask, mask.T)
    for counts, order in ((mask.sum(axis=0), lay.cols_longest_first), (mask.sum(axis=1), lay.rows_longest_first)):
        expect = sorted(range(len(counts)), key=lambda j: (-counts[j], j))  # longest first, ties by index
        assert order.tolist() == expect and order.dtype == np.int32
    expect_index = np.full((13, 9), -1)
    for k, (i, j) in enumerate(blocks):
        expect_index[i, j] = k
    assert lay.block_index.tolist() == expect_index.tolist() and lay.block_index.dtype == np.int32
    for table in (lay.mask, lay.rows, lay.cols, lay.row_ptr, lay.col_ptr, lay.col_order, lay.cols_longest_first,
                  lay.rows_longest_first, lay.block_index):
        assert not table.flags.writeable
    assert lay.row_ptr is lay.row_ptr  # cached


def test_full_density_512_tables_build_fast():
    """512x512 blocks (16384² at b=32, 262144 blocks): every host table well under a second."""
    mask = np.ones((512, 512), dtype=bool)
    start = time.perf_counter()
    bsmm = BlockSparseMatMul(mask, block_size=32)
    lay = bsmm.layout
    _ = (lay.row_ptr, lay.col_ptr, lay.col_order, lay.transposed.row_ptr, bsmm.fan_in())
    seconds = time.perf_counter() - start
    assert lay.nnz == 262144 and bsmm.w_shape == (262144, 32, 32)
    assert seconds < 0.5, f"host tables of a 512x512 full layout took {seconds:.3f} s"


# ---------------------------------------------------------------------------------------------------
# validation: every path raises ValueError/TypeError naming the argument


def _setup(dtype="float32", feature_axis=1):
    mask = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)  # K = 16, M = 24 at b = 8
    bsmm = BlockSparseMatMul(mask, block_size=8, feature_axis=feature_axis)
    dt = np_dtype(dtype)
    shape = (lambda f: (5, f)) if feature_axis == 1 else (lambda f: (f, 5))
    return bsmm, np.ones(shape(16), dt), np.ones(bsmm.w_shape, dt), np.ones(shape(24), dt)


def _bad(call):
    bsmm, x, w, dy = _setup()
    return lambda: call(bsmm, x, w, dy)


INVALID_CALLS = {
    # dtypes
    "x int32": (lambda m, x, w, dy: m.fprop(x.astype(np.int32), w), TypeError, r"x: expected dtype in"),
    "x bool": (lambda m, x, w, dy: m.fprop(x.astype(bool), w), TypeError, r"x: expected dtype in"),
    "x complex": (lambda m, x, w, dy: m.fprop(x.astype(np.complex64), w), TypeError, r"x: expected dtype"),
    "w int": (lambda m, x, w, dy: m.fprop(x, w.astype(np.int64)), TypeError, r"w: expected dtype float32"),
    "w other float": (lambda m, x, w, dy: m.fprop(x, w.astype(np.float16)), TypeError,
                      r"w: expected dtype float32 \(the dtype of x\), got float16"),
    "bprop w dtype": (lambda m, x, w, dy: m.bprop(dy, w.astype(np.float64)), TypeError, r"w: expected dtype"),
    "dy int": (lambda m, x, w, dy: m.bprop(dy.astype(np.int16), w), TypeError, r"dy: expected dtype in"),
    # shapes
    "x features": (lambda m, x, w, dy: m.fprop(x[:, :15].copy(), w), ValueError,
                   r"x: expected 16 on axis 1 \(in_blocks=2 × block_size=8\), got 15"),
    "x 1-D": (lambda m, x, w, dy: m.fprop(x.ravel(), w), ValueError, r"x: expected 2 dimensions"),
    "x 3-D": (lambda m, x, w, dy: m.fprop(x[None], w), ValueError, r"x: expected 2 dimensions"),
    "x N=0": (lambda m, x, w, dy: m.fprop(x[:0], w), ValueError, r"x: expected a positive batch size"),
    "dy features": (lambda m, x, w, dy: m.bprop(x, w), ValueError, r"dy: expected 24 on axis 1"),
    "w nnz": (lambda m, x, w, dy: m.fprop(x, w[:3].copy()), ValueError,
              r"w: expected shape \(4, 8, 8\) \(nnz_blocks=4, block_size=8\), got \(3, 8, 8\)"),
    "w block": (lambda m, x, w, dy: m.fprop(x, np.ones((4, 16, 16), np.float32)), ValueError, r"w: expected shape"),
    "w 2-D": (lambda m, x, w, dy: m.fprop(x, w.reshape(32, 8)), ValueError, r"w: expected shape"),
    # memory layout and types
    "x non-contiguous": (lambda m, x, w, dy: m.fprop(np.ones((16, 5), np.float32).T, w), ValueError,
                         r"x: expected a C-contiguous array"),
    "w non-contiguous": (lambda m, x, w, dy: m.fprop(x, w.transpose(0, 2, 1)), ValueError,
                         r"w: expected a C-contiguous array"),
    "x list": (lambda m, x, w, dy: m.fprop(x.tolist(), w), TypeError, r"x: expected a numpy.ndarray or cupy"),
    "w scalar": (lambda m, x, w, dy: m.fprop(x, 1.0), TypeError, r"w: expected a numpy.ndarray"),
    # out, accumulate, out_dtype
    "out shape": (lambda m, x, w, dy: m.fprop(x, w, out=np.ones((5, 23), np.float32)), ValueError,
                  r"out: expected shape \(5, 24\)"),
    "out dtype": (lambda m, x, w, dy: m.fprop(x, w, out=np.ones((5, 24), np.int32)), TypeError,
                  r"out: expected dtype float32, got int32"),
    "out vs out_dtype": (lambda m, x, w, dy: m.fprop(x.astype(np.float16), w.astype(np.float16),
                                                     out=np.ones((5, 24), np.float16), out_dtype=np.float32),
                         TypeError, r"out: expected dtype float32, got float16"),
    "out non-contiguous": (lambda m, x, w, dy: m.fprop(x, w, out=np.ones((24, 5), np.float32).T), ValueError,
                           r"out: expected a C-contiguous"),
    "out list": (lambda m, x, w, dy: m.fprop(x, w, out=[[0.0] * 24] * 5), TypeError, r"out: expected a numpy"),
    "accumulate no out": (lambda m, x, w, dy: m.fprop(x, w, accumulate=True), ValueError,
                          r"out: accumulate=True needs an out array"),
    "out_dtype half": (lambda m, x, w, dy: m.fprop(x, w, out_dtype=np.float16), TypeError,
                       r"out_dtype: expected None or float32, got float16"),
    "updat out shape": (lambda m, x, w, dy: m.updat(x, dy, out=np.ones((4, 8, 4), np.float32)), ValueError,
                        r"out: expected shape \(4, 8, 8\)"),
    "updat accumulate no out": (lambda m, x, w, dy: m.updat(x, dy, accumulate=True), ValueError, r"out: accumulate"),
    # updat pairs
    "updat batch": (lambda m, x, w, dy: m.updat(x, dy[:4].copy()), ValueError,
                    r"dy: expected batch size 5 \(the batch of x\), got 4"),
    "updat dtype": (lambda m, x, w, dy: m.updat(x, dy.astype(np.float64)), TypeError,
                    r"dy: expected dtype float32 \(the dtype of x\)"),
    "updat list vs array": (lambda m, x, w, dy: m.updat([x], dy), TypeError, r"x, dy: expected both lists"),
    "updat lengths": (lambda m, x, w, dy: m.updat([x, x], [dy]), ValueError, r"dy: expected a list of 2 arrays"),
    "updat empty": (lambda m, x, w, dy: m.updat([], []), ValueError, r"x: expected at least one"),
    "updat pair dtypes": (lambda m, x, w, dy: m.updat([x, x.astype(np.float64)], [dy, dy.astype(np.float64)]),
                          TypeError, r"x\[1\]: expected dtype float32 \(the dtype of x\[0\]\)"),
    "updat pair batch": (lambda m, x, w, dy: m.updat([x, x], [dy, dy[:2].copy()]), ValueError,
                         r"dy\[1\]: expected batch size 5"),
    "updat pair features": (lambda m, x, w, dy: m.updat([x, dy], [dy, dy]), ValueError, r"x\[1\]: expected 16"),
    # conversions
    "to_scipy shape": (lambda m, x, w, dy: m.to_scipy(w[:2]), ValueError, r"w: expected shape"),
    "dense shape": (lambda m, x, w, dy: m.dense(w[:, :4]), ValueError, r"w: expected shape"),
    "dense list": (lambda m, x, w, dy: m.dense(w.tolist()), TypeError, r"w: expected a numpy"),
    "from_dense shape": (lambda m, x, w, dy: m.from_dense(np.ones((16, 23))), ValueError,
                         r"W: expected shape \(16, 24\)"),
    "from_dense 1-D": (lambda m, x, w, dy: m.from_dense(np.ones(16 * 24)), ValueError, r"W: expected 2 dimensions"),
}


@pytest.mark.parametrize("name", sorted(INVALID_CALLS))
def test_invalid_calls(name):
    call, exc, match = INVALID_CALLS[name]
    with pytest.raises(exc, match=match):
        _bad(call)()


def test_invalid_calls_axis0():
    bsmm, x, w, dy = _setup(feature_axis=0)  # x [16, 5], dy [24, 5]
    with pytest.raises(ValueError, match=r"x: expected 16 on axis 0 \(in_blocks=2 × block_size=8\), got 15"):
        bsmm.fprop(np.ones((15, 5), np.float32), w)
    with pytest.raises(ValueError, match=r"dy: expected 24 on axis 0"):
        bsmm.bprop(np.ones((16, 5), np.float32), w)
    with pytest.raises(ValueError, match=r"x: expected a positive batch size on axis 1, got 0"):
        bsmm.fprop(np.ones((16, 0), np.float32), w)
    with pytest.raises(ValueError, match=r"out: expected shape \(24, 5\)"):
        bsmm.fprop(x, w, out=np.ones((5, 24), np.float32))
    with pytest.raises(ValueError, match=r"x: expected a C-contiguous"):
        bsmm.fprop(np.ones((5, 16), np.float32).T, w)
    with pytest.raises(ValueError, match=r"dy: expected batch size 5"):
        bsmm.updat(x, np.ones((24, 4), np.float32))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"layout": np.ones((2, 2, 2))}, ValueError, r"layout: expected a 2-D block mask"),
        ({"layout": np.ones(4)}, ValueError, r"layout: expected a 2-D block mask"),
        ({"layout": np.array([["a", "b"]])}, TypeError, r"layout: expected a boolean-like mask"),
        ({"layout": np.ones((2, 2), np.complex64)}, TypeError, r"layout: expected a boolean-like mask"),
        ({"layout": np.array([[0, 2]])}, ValueError, r"layout: expected a mask of 0/1 values"),
        ({"layout": np.array([[np.nan, 1.0]])}, ValueError, r"layout: expected a mask of 0/1 values"),
        ({"layout": np.zeros((0, 3), bool)}, ValueError, r"layout: expected at least one block row and column"),
        ({"layout": np.zeros((3, 3), bool)}, ValueError, r"layout: expected at least one nonzero block"),
        ({"block_size": 12}, ValueError, r"block_size: expected one of \(8, 16, 32, 64\), got 12"),
        ({"block_size": 128}, ValueError, r"block_size: expected one of"),
        ({"block_size": 32.0}, TypeError, r"block_size: expected an int"),
        ({"block_size": True}, TypeError, r"block_size: expected an int"),
        ({"feature_axis": 2}, ValueError, r"feature_axis: expected 0 or 1, got 2"),
        ({"feature_axis": -1}, ValueError, r"feature_axis: expected 0 or 1"),
        ({"feature_axis": True}, ValueError, r"feature_axis: expected 0 or 1"),
    ],
)
def test_invalid_construction(kwargs, exc, match):
    args = {"layout": np.ones((2, 2), bool), "block_size": 8, "feature_axis": 1, **kwargs}
    with pytest.raises(exc, match=match):
        BlockSparseMatMul(args.pop("layout"), **args)


def test_mixed_numpy_and_cupy_arrays(monkeypatch):
    """A CuPy array next to a NumPy one is an error, never a silent copy (a stand-in class plays cupy)."""
    fake = types.ModuleType("cupy")

    class ndarray:  # noqa: N801 - mirrors cupy.ndarray
        dtype = np.dtype(np.float32)
        shape = (4, 8, 8)
        ndim = 3

    fake.ndarray = ndarray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    bsmm, x, w, dy = _setup()
    with pytest.raises(TypeError, match=r"arrays must all be NumPy or all CuPy, got x=numpy, w=cupy"):
        bsmm.fprop(x, ndarray())
    with pytest.raises(TypeError, match=r"must all be NumPy or all CuPy"):
        bsmm.fprop(x, w, out=ndarray())
    with pytest.raises(TypeError, match=r"must all be NumPy or all CuPy"):
        bsmm.updat([x, ndarray()], [dy, dy])


# ---- GPU tests ----


def test_wide_tables_match_layout(rng):
    """The wide lists cover every block once, super-rows sorted, masks matching the slots."""
    from cusparseblocks import _matmul_gpu

    mask = rng.random((11, 45)) < 0.3
    mask[0, 0] = mask[3, 31] = mask[10, 44] = True
    mask[:, 40] = False  # an empty output column
    lay = BlockLayout(mask)
    for op, c, r in (("fprop", 16, 1), ("bprop", 8, 1), ("fprop", 32, 1), ("fprop", 16, 8), ("bprop", 8, 4),
                     ("bprop", 4, 4), ("fprop", 8, 3)):
        offsets, entries, masks, slots = _matmul_gpu.wide_tables(lay, op, c, r)
        n_out = lay.out_blocks if op == "fprop" else lay.in_blocks
        assert offsets.size == -(-n_out // c) + 1 and offsets[-1] == entries.shape[0]
        assert masks.dtype == np.uint32 and masks.shape == (entries.size, -(-(r * c) // 32))
        np.testing.assert_array_equal(np.sort(slots[slots >= 0]), np.arange(lay.nnz))
        for g in range(offsets.size - 1):
            assert np.all(np.diff(entries[offsets[g]:offsets[g + 1]]) > 0)
            for e in range(offsets[g], offsets[g + 1]):
                for sl in range(r * c):
                    k = slots[e, sl]
                    assert (k >= 0) == bool((int(masks[e, sl // 32]) >> (sl % 32)) & 1)
                    if k >= 0:
                        red, col = (lay.rows[k], lay.cols[k]) if op == "fprop" else (lay.cols[k], lay.rows[k])
                        assert red == entries[e] * r + sl // c and col == g * c + sl % c


def test_wide_tables_column_order(rng):
    """With a column order, group g's slot j is column order[g·c + j]: every block once, in its column's slot;
    an absent slot holds ``absent`` (xw_tma's tables: nnz, a row past w's tensor map that its b = 32 transposed
    tile copies as zeros)."""
    from cusparseblocks import _matmul_gpu

    mask = rng.random((13, 37)) < 0.3
    mask[0, 0] = True
    mask[:, 5] = False  # an empty output column
    lay = BlockLayout(mask)
    for op, c in (("fprop", 2), ("bprop", 2), ("fprop", 4), ("bprop", 8), ("fprop", 1)):
        order = _matmul_gpu.column_order(lay, op, c)
        offsets, records = _matmul_gpu.rs_tables(lay, op, c, 1, order, absent=lay.nnz)
        seen = []
        for g in range(offsets.size - 1):
            assert np.all(np.diff(records[offsets[g]:offsets[g + 1], 0]) > 0)
            for e in range(offsets[g], offsets[g + 1]):
                s, m = records[e, 0], int(records[e, 1]) & 0xFFFFFFFF
                assert m, "a record with no block"
                for j in range(c):
                    if (m >> j) & 1:
                        k = records[e, 2 + j]
                        red, col = (lay.rows[k], lay.cols[k]) if op == "fprop" else (lay.cols[k], lay.rows[k])
                        assert red == s and col == order[g * c + j]
                        seen.append(k)
                    else:
                        assert records[e, 2 + j] == lay.nnz, "an absent slot's index"
        np.testing.assert_array_equal(np.sort(seen), np.arange(lay.nnz))


@pytest.mark.parametrize("c", [1, 2, 3, 4, 8])
def test_column_order(rng, c, monkeypatch):
    """column_order: a permutation; groups of c (a power of two) share more reduction blocks than the index
    order's on random layouts (fewer records, never more here); c = 1 or not a power of two: the index
    order; windows of GROUP_WINDOW columns are grouped apart and the leftovers fill the last group."""
    from cusparseblocks import _matmul_gpu

    for shape, density in (((64, 64), 0.5), ((64, 64), 0.1), ((40, 77), 0.2), ((5, 3), 0.6), ((128, 1), 0.5)):
        mask = rng.random(shape) < density
        mask[0, 0] = True
        lay = BlockLayout(mask)
        for op in ("fprop", "bprop"):
            order = _matmul_gpu.column_order(lay, op, c)
            n_out = lay.out_blocks if op == "fprop" else lay.in_blocks
            np.testing.assert_array_equal(np.sort(order), np.arange(n_out))
            if c & (c - 1) or c == 1:
                np.testing.assert_array_equal(order, np.arange(n_out))
                continue
            recs = [_matmul_gpu.rs_tables(lay, op, c, 1, o)[1].shape[0] for o in (order, None)]
            assert recs[0] <= recs[1], (shape, density, op, recs)
            if shape == (64, 64) and op == "fprop" and c <= 4:  # (8 columns at d = 0.5 cover ~all rows anyway)
                assert recs[0] < 0.97 * recs[1], (density, recs)
    monkeypatch.setattr(_matmul_gpu, "GROUP_WINDOW", 16)
    mask = rng.random((20, 45)) < 0.3
    mask[0, 0] = True
    order = _matmul_gpu.column_order(BlockLayout(mask), "fprop", c)
    np.testing.assert_array_equal(np.sort(order), np.arange(45))
    for w0 in (0, 16, 32):  # each window's columns stay in its positions
        assert set(order[w0:w0 + 16]) == set(range(w0, min(45, w0 + 16)))


@pytest.mark.parametrize("g", [8, 4, 2])
def test_update_groups_packed(rng, g):
    """update_groups(xr=2): every block once, each group a run of consecutive blocks (w order) from at most
    two block rows, filled from slot 0; a group leaves slots empty only at the end of the layout or when the
    next nonempty row has no blocks left for it (it starts a new group after a two-row group)."""
    from cusparseblocks import _matmul_gpu

    for density in (0.05, 0.1, 0.3, 0.9):
        mask = rng.random((23, 40)) < density
        mask[0, 0] = True
        mask[5] = False  # an empty row between nonempty ones
        mask[6, : g + 1] = True  # a row of g + 1 blocks
        lay = BlockLayout(mask)
        table = _matmul_gpu.update_groups(lay, g, 2)
        assert table.dtype == np.int32 and table.shape[1] == g
        valid = table >= 0
        assert np.all(valid[:, 0]) and np.all(np.diff(valid.astype(int), axis=1) <= 0), "slots not filled from 0"
        assert np.array_equal(np.sort(table[valid]), np.arange(lay.nnz)), "not every block exactly once"
        lengths = valid.sum(axis=1)
        for grp, n in zip(table, lengths):
            assert np.array_equal(grp[:n], np.arange(grp[0], grp[0] + n)), "group is not a run of blocks"
            assert len(set(lay.rows[grp[:n]])) <= 2, "group spans more than two rows"
        # groups needed: each short group is followed by one that starts a new row, or is the last
        counts = np.diff(lay.row_ptr)
        assert table.shape[0] <= -(-lay.nnz // g) + np.count_nonzero(counts), "too many groups"
        if density >= 0.3:  # rows of >= g blocks: only the last group of the layout may be short
            assert np.count_nonzero(lengths < g) <= 1 + np.count_nonzero((counts > 0) & (counts < g))


@pytest.mark.parametrize("tr,tc,max_blocks", [(16, 16, 64), (8, 8, 16), (4, 8, 5)])
def test_update_tiles(rng, tr, tc, max_blocks):
    """update_tiles: every block exactly once, items of 1..max_blocks blocks, an item's blocks inside its tile
    (first row and column: the tile's corner), a tile's items of nearly equal counts, entries sorted by tile,
    row, column."""
    from cusparseblocks import _matmul_gpu

    for density in (0.02, 0.2, 0.6, 1.0):
        mask = rng.random((37, 29)) < density
        mask[0, 0] = True
        mask[3] = False
        lay = BlockLayout(mask)
        items, entries = _matmul_gpu.update_tiles(lay, tr, tc, max_blocks)
        assert items.dtype == entries.dtype == np.int32 and items.shape[1] == 4
        assert np.array_equal(np.sort(entries), np.arange(lay.nnz)), "not every block exactly once"
        r0, c0, first, count = items.T
        assert np.all((count >= 1) & (count <= max_blocks)) and np.all(r0 % tr == 0) and np.all(c0 % tc == 0)
        assert np.array_equal(first, np.concatenate([[0], np.cumsum(count)[:-1]])), "items not back to back"
        for r, c, f, n in items:
            k = entries[f : f + n]
            assert np.all(lay.rows[k] // tr * tr == r) and np.all(lay.cols[k] // tc * tc == c), "block off tile"
        tile = lay.rows[entries] // tr * 10000 + lay.cols[entries] // tc
        key = tile.astype(np.int64) * 10**8 + lay.rows[entries] * 10**4 + lay.cols[entries]
        assert np.all(np.diff(key) > 0), "entries not sorted by tile, row, column"
        per_tile = {}
        for r, c, _, n in items:
            per_tile.setdefault((r, c), []).append(n)
        assert all(max(v) - min(v) <= 1 for v in per_tile.values()), "a tile's items are unbalanced"


def test_ffma_update_splits(monkeypatch):
    """ffma_update_splits: 1 when the groups fill whole waves, more when they leave SMs idle; bounded by
    chunks // 4 and 64; the workspace cost keeps it from splitting short batches."""
    from cusparseblocks import _matmul_gpu as G

    monkeypatch.setitem(G._SM_COUNT, 99, 132)
    assert G.ffma_update_splits(1044, 128, 8352, 32, 8, 32, 2, 99) == 1  # 3.95 waves of 2 per SM
    assert G.ffma_update_splits(218, 128, 1737, 32, 8, 32, 2, 99) > 1  # 0.8 wave: SMs idle
    for ctas in (1, 7, 50, 133, 300, 1000):
        for chunks in (1, 3, 8, 40, 128, 10000):
            s = G.ffma_update_splits(ctas, chunks, ctas * 8, 32, 8, 32, 2, 99)
            assert 1 <= s <= max(1, min(chunks // 4, 64))


def test_update_splits(monkeypatch):
    """_update_splits: 1 once the CTAs fill the SMs (per_sm each: 1 for the wgmma updates, else 4), more below;
    each split at least 4 chunks, at most 64 splits."""
    from cusparseblocks import _matmul_gpu as G

    monkeypatch.setattr(G, "_sm_count", lambda dev: 132)
    assert G._update_splits(132, 64, 0, 1) == 1 and G._update_splits(410, 64, 0, 1) == 1
    assert G._update_splits(100, 64, 0, 1) == 2 and G._update_splits(30, 64, 0, 1) == 5
    assert G._update_splits(1, 64, 0, 1) == 16 and G._update_splits(1, 1000, 0, 1) == 64
    assert G._update_splits(5, 3, 0, 1) == 1
    assert G._update_splits(410, 64, 0) == 2 and G._update_splits(528, 64, 0) == 1  # the others: 4 per SM


def test_tile_update_splits(monkeypatch):
    """tile_update_splits: 1 from about one wave of items (2 per SM) up, several below; bounded by
    chunks // 4 and 64."""
    from cusparseblocks import _matmul_gpu as G

    monkeypatch.setitem(G._SM_COUNT, 99, 132)
    assert G.tile_update_splits(256, 128, 99) == 1 and G.tile_update_splits(512, 128, 99) == 1
    assert G.tile_update_splits(100, 128, 99) == 3 and G.tile_update_splits(5, 128, 99) == 32
    for ctas in (1, 7, 50, 133, 300, 1000):
        for chunks in (1, 3, 8, 40, 128, 10000):
            assert 1 <= G.tile_update_splits(ctas, chunks, 99) <= max(1, min(chunks // 4, 64))


# ---- the tensor-core kernels on the CPU ----
# kernels/bsmm.cu's xw_tc, xw_wide_tc and updat_tc (+ updat_reduce) compiled for the host with the CUDA
# execution model emulated (tests/cuda_emulation/bsmm_driver.cpp: threads, barriers, deferred cp.async,
# ldmatrix .x1/.x2/.x4, mma.sync m16n8k8/m16n8k16), launched with the specializations, grids, shared
# memory sizes and lookup tables of cusparseblocks/_matmul_gpu.py, and checked against float64.

def _emulated_xw_cases():
    """(kernel, block size, variant, op, feature axis, aligned, dtype, out dtype): every xw_tc tile "small"
    and "medium" of b = 8, 16, 32 and every xw_wide_tc tile, in rotating (axis, op, dtype) combinations."""
    from cusparseblocks import _matmul_gpu as G

    types = [("float16", "float16"), ("bfloat16", "bfloat16"), ("float16", "float32"), ("bfloat16", "float32")]
    cases, i = [], 0
    for b in (8, 16, 32):
        for variant in ("small", "medium"):
            combos = [(1, "fprop", 1), (1, "bprop", 1), (0, ("fprop", "bprop")[i % 2], 1),
                      (0, ("bprop", "fprop")[i % 2], 0)]
            for j, (axis, op, aligned) in enumerate(combos):
                cases.append(("xw_tc", b, variant, op, axis, aligned, *types[(i + j) % 4]))
            i += 1
    for b, tiles in G.XW_WIDE_TILES.items():
        for variant in tiles:
            for j, (axis, op) in enumerate([(1, "fprop"), (1, "bprop"), (0, "fprop"), (0, "bprop")]):
                cases.append(("xw_wide_tc", b, variant, op, axis, 1, *types[(i + j) % 4]))
            i += 1
    return cases


def _emulated_updat_cases():
    """(block size, feature axis, aligned, splits, dtype, out dtype): b = 8 (pairs of blocks per warp),
    16 and 32, both axes, one CTA per group or a 2-way batch split through the fp32 workspace."""
    types = [("float16", "float16"), ("bfloat16", "bfloat16"), ("float16", "float32"), ("bfloat16", "float32")]
    combos = [(1, 1, 1), (1, 1, 2), (0, 1, 2), (0, 0, 1)]
    return [(b, *c, *types[(i + j) % 4]) for i, b in enumerate((8, 16, 32)) for j, c in enumerate(combos)]


def _emulated_tile_cases():
    """(variant, splits, dtype, out dtype): every updat_tile_tc tile (b = 16), one pass or a 2-way split."""
    from cusparseblocks import _matmul_gpu as G

    types = [("float16", "float16"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"), ("float16", "float32")]
    return [(v, 1 + j % 2, *types[(i + j) % 4]) for i, v in enumerate(G.UPDAT_TILE_TILES[16]) for j in range(2)]


def _emulated_ffma_cases():
    """(block size, variant, op, feature axis): xw_ffma's default tile of each block size on both axes and
    both ops, every other tile on two rotating (axis, op) pairs."""
    from cusparseblocks import _matmul_gpu as G

    combos = [(1, "fprop"), (1, "bprop"), (0, "fprop"), (0, "bprop")]
    cases, i = [], 0
    for b, tiles in G.XW_FFMA_TILES.items():
        for v, variant in enumerate(tiles):
            for j in range(4) if v == 0 else (i % 4, (i + 3) % 4):
                cases.append((b, variant, *combos[j][::-1]))
            i += 1
    return cases


def _emulated_updat_ffma_cases():
    """(block size, variant, feature axis, splits): every updat_ffma tile on both axes, one pass or a
    2-way batch split, alternating."""
    from cusparseblocks import _matmul_gpu as G

    return [(b, variant, axis, 1 + (i + axis) % 2) for b, tiles in G.UPDAT_FFMA_TILES.items()
            for i, variant in enumerate(tiles) for axis in (1, 0)]


def _emulated_specs():
    from cusparseblocks import _matmul_gpu as G

    specs = [G.xw_ffma_spec(b, variant, axis, int(op == "bprop")) for b, variant, op, axis in _emulated_ffma_cases()]
    specs += [G.updat_ffma_spec(b, variant, axis) for b, variant, axis, _ in _emulated_updat_ffma_cases()]
    for kernel, b, variant, op, axis, aligned, dt, odt in _emulated_xw_cases():
        trans = int(op == "bprop")
        specs.append(G.xw_tc_spec(dt, odt, b, variant, axis, trans, aligned) if kernel == "xw_tc"
                     else G.xw_wide_spec(dt, odt, b, variant, axis, trans))
    for b, axis, aligned, _, dt, odt in _emulated_updat_cases():
        specs += [G.updat_tc_spec(dt, odt, b, axis, aligned), G.updat_reduce_spec(odt)]
    for variant, _, dt, odt in _emulated_tile_cases():
        specs += [G.updat_tile_spec(dt, odt, 16, variant), G.updat_reduce_spec(odt)]
    return list(dict.fromkeys(specs))


def _bsmm_emulation_source() -> str:
    """kernels/bsmm.cu with its PTX wrappers cut (tests/cuda_emulation/bsmm_ptx_emulated.h replaces them)."""
    from cusparseblocks import _matmul_gpu as G
    from cusparseblocks import compiler

    text = (compiler.kernel_source_dir() / G.SOURCE).read_text()
    start, end = text.index("// PTX wrappers"), text.index("// Shared-memory row stride")
    text = text[:start] + text[end:]
    text = text.replace('#include "common.cuh"', "")
    return text.replace("extern __shared__ __align__(16) unsigned char smem_raw[];", "")


@pytest.fixture(scope="module")
def bsmm_emulator(tmp_path_factory):
    """The compiled bsmm_driver with every specialization the emulated cases launch, and its launcher."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    from cuda_emulation import fake_cupy

    here = Path(__file__).resolve().parent / "cuda_emulation"
    d = tmp_path_factory.mktemp("bsmm_emu")
    (d / "bsmm_emu.cu").write_text(_bsmm_emulation_source())
    macro = {"xw_tc": "XW_TC", "xw_wide_tc": "XW_WIDE_TC", "updat_tc": "UPDAT_TC", "updat_reduce": "UPDAT_REDUCE",
             "xw_ffma": "XW_FFMA", "updat_ffma": "UPDAT_FFMA",
             "updat_tile_tc": "UPDAT_TILE_TC"}
    lines = [f"{macro[m.group(1)]}({m.group(2)})," for m in (re.fullmatch(r"(\w+)<(.*)>", s.name)
                                                              for s in _emulated_specs())]
    (d / "bsmm_kernels.inc").write_text("\n".join(lines) + "\n")
    exe = d / "bsmm_driver"
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", "-DCSB_HOST_EMULATION", f"-I{d}", f"-I{here}",
                            f"-I{fake_cupy.KERNELS}", "-o", str(exe), str(here / "bsmm_driver.cpp")],
                           capture_output=True, text=True)
    if build.returncode and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the C++ compiler has no <barrier> (C++20)")
    assert build.returncode == 0, build.stderr[-4000:]
    return fake_cupy.make_launcher(exe, [])


def _emulated_op(monkeypatch, mask, b, axis, key):
    """The op and its lookup tables for ``key``, built by _matmul_gpu._tables (NumPy-backed CuPy)."""
    from cuda_emulation import fake_cupy

    from cusparseblocks import _matmul_gpu as G

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy._module())
    op = BlockSparseMatMul(mask, b, axis)
    tables = G._tables(op, key, 0)
    return op, tuple(np.asarray(t) for t in (tables if isinstance(tables, tuple) else (tables,)))


def _emulated_output(rng, ref, odt):
    """(output, expected, accumulate): a poisoned output, or for float32 outputs at random one holding
    data that the kernel accumulates into."""
    if odt == "float32" and rng.random() < 0.5:
        out = random_array(rng, ref.shape, odt)
        return out, ref + out, 1
    return poison(np, ref.shape, odt), ref, 0


def _emulation_mask(rng, kb, mb):
    mask = rng.random((kb, mb)) < 0.4
    mask[0, 0] = mask[1, 1] = True
    mask[kb - 1, :] = False  # an empty block row and an empty block column
    mask[:, mb - 2] = False
    return mask


@pytest.mark.parametrize("case", _emulated_xw_cases(), ids=lambda c: "-".join(map(str, c)))
def test_xw_kernels_emulated(rng, monkeypatch, bsmm_emulator, case):
    """xw_tc / xw_wide_tc fprop (TRANS_W 0) and bprop (TRANS_W 1) on ragged batches, every element
    against float64, outputs poisoned (or accumulated into, for float32 outputs)."""
    from test_matmul_gpu import _io, _ref64

    from cusparseblocks import _matmul_gpu as G

    kernel, b, variant, op_name, axis, aligned, dt, odt = case
    trans = int(op_name == "bprop")
    if kernel == "xw_tc":
        bm, wm, wn, _, _ = G.XW_TC_TILES[b][variant]
        kb, mb, c, r = 4, 5, 1, 1
        spec, smem = G.xw_tc_spec(dt, odt, b, variant, axis, trans, aligned), G.xw_tc_smem(b, variant, axis)
        key = op_name
    else:
        r, c, bm, wm, wn, _, _ = G.XW_WIDE_TILES[b][variant]
        kb, mb = (r + 3, c + 3) if op_name == "fprop" else (c + 3, r + 3)  # 2 super-rows, 2 groups, both ragged
        spec, smem = G.xw_wide_spec(dt, odt, b, variant, axis, trans), G.xw_wide_smem(b, variant, axis)
        key = ("wide", op_name, c, r)
    n = bm + 8 if axis == 0 and aligned else bm + 5 if variant != "small" else 37  # never a multiple of BM
    op, tables = _emulated_op(monkeypatch, _emulation_mask(rng, kb, mb), b, axis, key)
    f_in, f_out = (op.K, op.M) if op_name == "fprop" else (op.M, op.K)
    x = random_array(rng, _io(op, n, f_in), dt)
    w = random_array(rng, op.w_shape, dt, scale=0.2)
    ref = _ref64(op, op_name, x, w=w)
    y, ref, accumulate = _emulated_output(rng, ref, odt)
    grid = (f_out // b, -(-n // bm)) if kernel == "xw_tc" else (-(-(f_out // b) // c), -(-n // bm))
    bsmm_emulator(spec, grid, (wm * wn * 32,), (x, w, y, *tables, np.int64(n), np.int64(f_in), np.int64(f_out),
                                                np.int32(accumulate)), smem)
    assert_close(y, ref, dt, f"{spec.name} n={n}")


@pytest.mark.parametrize("case", _emulated_ffma_cases(), ids=lambda c: "-".join(map(str, c)))
def test_xw_ffma_emulated(rng, monkeypatch, bsmm_emulator, case):
    """xw_ffma (float32 FFMA) fprop and bprop: ragged N (axis 0: N % 4 == 0) over TPC + 1 row tiles (TPC > 1:
    a CTA running TPC tiles in one pipeline, one CTA a partial tile), column lists longer than the pipeline,
    an empty block row and column, every element against float64, output poisoned or accumulated into."""
    from test_matmul_gpu import _io, _ref64

    from cusparseblocks import _matmul_gpu as G

    b, variant, op_name, axis = case
    trans = int(op_name == "bprop")
    warps, tpc = G.XW_FFMA_TILES[b][variant][0], G.XW_FFMA_TILES[b][variant][4]
    bm = G.xw_ffma_rows(b, variant)
    n = tpc * bm + (8 if axis == 0 else 5)  # tpc + 1 row tiles: a CTA of tpc, one of a partial tile
    mask = _emulation_mask(rng, 7, 5)
    mask[:6, 0] = True  # a list of 6 blocks: the pipeline slots wrap around
    op, tables = _emulated_op(monkeypatch, mask, b, axis, G.xw_ffma_tables(b, variant, op_name))
    f_in, f_out = (op.K, op.M) if op_name == "fprop" else (op.M, op.K)
    x = random_array(rng, _io(op, n, f_in), "float32")
    w = random_array(rng, op.w_shape, "float32", scale=0.2)
    ref = _ref64(op, op_name, x, w=w)
    y, ref, accumulate = _emulated_output(rng, ref, "float32")
    spec = G.xw_ffma_spec(b, variant, axis, trans)
    n_tiles = -(-n // bm)
    bsmm_emulator(spec, (f_out // b, -(-n_tiles // tpc)), (warps * 32,),
                  (x, w, y, *tables, np.int64(n), np.int64(f_in), np.int64(f_out), np.int32(accumulate)),
                  G.xw_ffma_smem(b, variant))
    assert_close(y, ref, "float32", f"{spec.name} n={n} accumulate={accumulate}")


@pytest.mark.parametrize("case", _emulated_updat_cases(), ids=lambda c: "-".join(map(str, c)))
def test_updat_kernel_emulated(rng, monkeypatch, bsmm_emulator, case):
    """updat_tc over a grouped update of two ragged pairs, in one pass or split in 2 over the batch
    (fp32 workspace, then updat_reduce), every element against float64."""
    from test_matmul_gpu import _io, _ref64

    from cusparseblocks import _matmul_gpu as G

    b, axis, aligned, splits, dt, odt = case
    g, warps, nc, _ = G.UPDAT_TC_TILES[b]
    op, (groups,) = _emulated_op(monkeypatch, _emulation_mask(rng, 4, g + 3), b, axis, ("groups", g))
    rows, cols = (np.asarray(t) for t in G._tables(op, "updat", 0))
    ns = [nc + 8, 40] if aligned and axis == 0 else [nc + 5, 37]  # ragged last chunks
    xs = [random_array(rng, _io(op, n, op.K), dt) for n in ns]
    dys = [random_array(rng, _io(op, n, op.M), dt) for n in ns]
    ref = _ref64(op, "updat", xs, dys)

    def blob(arrays):  # the pairs' bytes back to back, each at a 16-byte aligned offset
        raw = [np.concatenate([a.reshape(-1).view(np.uint8), np.zeros(-a.nbytes % 16, np.uint8)]) for a in arrays]
        return np.concatenate(raw), np.cumsum([0] + [len(q) for q in raw[:-1]]).astype(np.int64)

    (xb, xoff), (dyb, dyoff) = blob(xs), blob(dys)
    chunks = np.concatenate([[0], np.cumsum(-(-np.array(ns) // nc))]).astype(np.int64)
    dw, ref, accumulate = _emulated_output(rng, ref, odt)
    ws = np.full((splits, op.layout.nnz, b, b), np.nan, np.float32) if splits > 1 else np.uint64(0)
    spec = G.updat_tc_spec(dt, odt, b, axis, aligned)
    bsmm_emulator(spec, (groups.shape[0], splits), (warps * 32,),
                  (xb, dyb, xoff, dyoff, np.array(ns, np.int64), chunks, np.int32(len(ns)), groups, rows, cols,
                   dw, ws, np.int32(op.layout.nnz), np.int64(op.K), np.int64(op.M), np.int32(accumulate)),
                  G.updat_tc_smem(b, axis))
    if splits > 1:
        count = dw.size
        bsmm_emulator(G.updat_reduce_spec(odt), (min(-(-count // 256), 4),), (256,),
                      (ws, dw, np.int32(splits), np.int64(count), np.int32(accumulate)))
    assert_close(dw, ref, dt, f"{spec.name} ns={ns} splits={splits}")


@pytest.mark.parametrize("case", _emulated_tile_cases(), ids=lambda c: "-".join(map(str, c)))
def test_updat_tile_emulated(rng, monkeypatch, bsmm_emulator, case):
    """updat_tile_tc over a grouped update of two ragged pairs: a layout of 2 × 2 tiles with partial edge tiles
    (features past the layout zero-filled), dense tiles split into several items, an empty block row and
    column; one pass or split in 2 (fp32 workspace, then updat_reduce); every element against float64."""
    from test_matmul_gpu import _ref64

    from cusparseblocks import _matmul_gpu as G

    variant, splits, dt, odt = case
    tr, tc, warps, bpw, nc, _ = G.UPDAT_TILE_TILES[16][variant]
    mask = _emulation_mask(rng, tr + 3, tc + 2)
    mask[:tr, :tc] |= rng.random((tr, tc)) < 0.5  # the first tile holds more than one item's blocks
    op, (items, entries) = _emulated_op(monkeypatch, mask, 16, 1, ("tiles", tr, tc, warps * bpw))
    assert (items[:, 3] <= warps * bpw).all() and np.bincount(items[:, 0] * 1000 + items[:, 1]).max() > 1
    rows, cols = (np.asarray(t) for t in G._tables(op, "updat", 0))
    ns = [nc + 5, 37]  # ragged last chunks
    xs = [random_array(rng, (n, op.K), dt) for n in ns]
    dys = [random_array(rng, (n, op.M), dt) for n in ns]
    ref = _ref64(op, "updat", xs, dys)
    (xb, xoff), (dyb, dyoff) = _pair_blob(xs), _pair_blob(dys)
    chunks = np.concatenate([[0], np.cumsum(-(-np.array(ns) // nc))]).astype(np.int64)
    dw, ref, accumulate = _emulated_output(rng, ref, odt)
    ws = np.full((splits, op.layout.nnz, 16, 16), np.nan, np.float32) if splits > 1 else np.uint64(0)
    spec = G.updat_tile_spec(dt, odt, 16, variant)
    bsmm_emulator(spec, (items.shape[0], splits), (warps * 32,),
                  (xb, dyb, xoff, dyoff, np.array(ns, np.int64), chunks, np.int32(len(ns)), items, entries, rows,
                   cols, dw, ws, np.int32(op.layout.nnz), np.int64(op.K), np.int64(op.M), np.int32(accumulate)),
                  G.updat_tile_smem(16, variant))
    if splits > 1:
        count = dw.size
        bsmm_emulator(G.updat_reduce_spec(odt), (min(-(-count // 256), 4),), (256,),
                      (ws, dw, np.int32(splits), np.int64(count), np.int32(accumulate)))
    assert_close(dw, ref, dt, f"{spec.name} ns={ns} splits={splits}")


def _pair_blob(arrays):
    """The pairs' bytes back to back, each at a 16-byte aligned offset, and the offsets."""
    raw = [np.concatenate([a.reshape(-1).view(np.uint8), np.zeros(-a.nbytes % 16, np.uint8)]) for a in arrays]
    return np.concatenate(raw), np.cumsum([0] + [len(q) for q in raw[:-1]]).astype(np.int64)


@pytest.mark.parametrize("case", _emulated_updat_ffma_cases(), ids=lambda c: "-".join(map(str, c)))
def test_updat_ffma_emulated(rng, monkeypatch, bsmm_emulator, case):
    """updat_ffma (float32 FFMA update) over a grouped update of two ragged pairs, a block row with more
    blocks than a CTA's group (a full group and a partial one; XR = 2: the partial one packed with the next
    nonempty row's first blocks), empty rows and columns; one pass or split in 2 over the batch (fp32
    workspace, then updat_reduce); every element against float64."""
    from test_matmul_gpu import _io, _ref64

    from cusparseblocks import _matmul_gpu as G

    b, variant, axis, splits = case
    g, nc, _, _, _, xr, _, _ = G.UPDAT_FFMA_TILES[b][variant]
    mask = _emulation_mask(rng, 5, g + 3)
    mask[0, : g + 1] = True  # exactly g + 1 blocks in row 0 (column g + 1 stays empty)
    mask[0, g + 2 :] = False
    mask[1] = False  # an empty row between two nonempty ones: XR = 2 packs row 0's last block with row 2's
    mask[2, 0] = True
    op, (groups,) = _emulated_op(monkeypatch, mask, b, axis, ("groups", g) if xr == 1 else ("groups", g, xr))
    if xr == 2:
        rows_of = np.where(groups >= 0, op.layout.rows[np.maximum(groups, 0)], -1)
        assert any(len(set(r[r >= 0])) == 2 for r in rows_of), "no group spans two rows"
    rows, cols = (np.asarray(t) for t in G._tables(op, "updat", 0))
    ns = [3 * nc + 8, 40] if axis == 0 else [3 * nc + 5, 37]  # ragged last chunks; split 2 starts mid-pair
    xs = [random_array(rng, _io(op, n, op.K), "float32") for n in ns]
    dys = [random_array(rng, _io(op, n, op.M), "float32") for n in ns]
    ref = _ref64(op, "updat", xs, dys)
    (xb, xoff), (dyb, dyoff) = _pair_blob(xs), _pair_blob(dys)
    chunks = np.concatenate([[0], np.cumsum(-(-np.array(ns) // nc))]).astype(np.int64)
    dw, ref, accumulate = _emulated_output(rng, ref, "float32")
    ws = np.full((splits, op.layout.nnz, b, b), np.nan, np.float32) if splits > 1 else np.uint64(0)
    spec = G.updat_ffma_spec(b, variant, axis)
    bsmm_emulator(spec, (groups.shape[0], splits), (g * (b // 8) ** 2,),
                  (xb, dyb, xoff, dyoff, np.array(ns, np.int64), chunks, np.int32(len(ns)), groups, rows, cols,
                   dw, ws, np.int32(op.layout.nnz), np.int64(op.K), np.int64(op.M), np.int32(accumulate)),
                  G.updat_ffma_smem(b, variant))
    if splits > 1:
        count = dw.size
        bsmm_emulator(G.updat_reduce_spec("float32"), (min(-(-count // 256), 4),), (256,),
                      (ws, dw, np.int32(splits), np.int64(count), np.int32(accumulate)))
    assert_close(dw, ref, "float32", f"{spec.name} ns={ns} splits={splits} accumulate={accumulate}")


# ---- xw_small (kernels/bsmm_small.cu) on the CPU ----
# The same host emulation (tests/cuda_emulation/bsmm_small_driver.cpp) runs the small-batch kernels with the
# work split of _matmul_gpu.small_tables, split columns (in-launch reduction of fp32 partials) included.

def test_small_tables_cover_every_block_once():
    """Each CTA's range holds nnz/CTAs blocks (±1); its stages cover every entry once, in list order, at
    most EPS per stage, a column's pieces flagged FIRST/LAST; empty columns are listed; split columns'
    parts are numbered in list order; small_ctas keeps every CTA within its table limits."""
    from cusparseblocks import _matmul_gpu as G

    rng = np.random.default_rng(7)
    for kb, mb, density, ctas, eps in [(40, 6, 0.6, 5, 8), (7, 9, 0.3, 40, 4), (3, 4, 0.0, 3, 8),
                                       (64, 64, 0.05, 13, 4), (90, 3, 0.9, 2, 8)]:
        mask = rng.random((kb, mb)) < density
        if density:
            mask[:, mb // 2] = False  # an empty column
        ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=0))])
        nnz = int(ptr[-1])
        ent_ptr, stages, stage_ptr, zero_cols, n_zero, parts = G.small_tables(ptr, ctas, eps, eps)
        assert ent_ptr[0] == 0 and ent_ptr[-1] == nnz and np.all(np.diff(ent_ptr) >= 0)
        ideal = np.arange(ctas + 1) * nnz // ctas  # cuts move by at most one stage, onto column boundaries
        assert np.all(np.abs(ent_ptr - ideal) <= eps)
        assert all(e == i or e in ptr for e, i in zip(ent_ptr, ideal))
        assert stage_ptr[0] == 0 and stage_ptr[-1] == len(stages) and np.all(np.diff(stage_ptr) >= 0)
        assert sorted(zero_cols[:n_zero]) == list(np.flatnonzero(np.diff(ptr) == 0))
        covered, pieces = [], {}
        for g in range(ctas):
            for s in stages[stage_ptr[g]:stage_ptr[g + 1]]:
                cnt, c = s[1] & 0xFFFF, s[2]
                assert 1 <= cnt <= eps
                e = ent_ptr[g] + s[0] + np.arange(cnt)
                assert np.all((e >= ptr[c]) & (e < ptr[c + 1]))
                covered += list(e)
                if s[1] & (1 << 16):
                    pieces.setdefault(c, []).append(s[3])
        assert covered == list(range(nnz))
        for ps in pieces.values():
            if len(ps) == 1:
                assert ps == [-1]
            else:
                assert ps == list(range(ps[0], ps[0] + len(ps)))
                assert all(tuple(parts[p]) == (ps[0], len(ps)) for p in ps)
        # all_parts (LATE = 3): every piece numbered in list order, parts per column (first piece, pieces)
        _, st_a, sp_a, _, _, cols_a = G.small_tables(ptr, ctas, eps, eps, all_parts=True)
        last = st_a[(st_a[:, 1] & (1 << 17)) != 0]
        assert list(last[:, 3]) == list(range(len(last)))
        assert len(last) <= mb + ctas - 1  # the bound matmul sizes the partials by
        for c in range(mb):
            got = last[last[:, 2] == c, 3]
            assert cols_a[c, 1] == len(got) and (not len(got) or cols_a[c, 0] == got[0])
        n = G.small_ctas(ptr, eps, ctas, 16, 5)
        ep, _, sp, _, _, _ = G.small_tables(ptr, n, eps, G.small_snap(eps, 16, 5))
        assert n % max(1, min(ctas, -(-nnz // eps))) == 0 and np.max(np.diff(sp)) <= 5
        assert np.max(np.diff(ep)) <= 16


def _emulated_small_cases():
    """(dtype, out dtype, op, N, CTAs, accumulate): both tile heights (N ≤ 32, 32 < N ≤ 64), ragged N,
    fp16/bf16 (mma) and fp32 (FFMA), fprop and bprop, one CTA (no splits) up to more CTAs than stages."""
    return [("float16", "float16", "fprop", 19, 3, 0), ("bfloat16", "float32", "bprop", 37, 4, 1),
            ("float32", "float32", "fprop", 32, 5, 1), ("float32", "float32", "bprop", 64, 2, 0),
            ("float16", "float32", "bprop", 1, 1, 0), ("bfloat16", "bfloat16", "fprop", 50, 7, 0),
            ("float32", "float32", "fprop", 5, 64, 0), ("float16", "float16", "bprop", 32, 9, 0),
            ("float32", "float32", "bprop", 27, 11, 1), ("float16", "float32", "fprop", 30, 5, 1, "tc_eps4"),
            ("bfloat16", "bfloat16", "bprop", 32, 3, 0, "tc_w4"), ("float16", "float32", "fprop", 21, 4, 1, "tc_c2"),
            ("bfloat16", "bfloat16", "bprop", 32, 5, 0, "tc_c4"), ("float32", "float32", "fprop", 32, 3, 1, "simt_c2"),
            ("float32", "float32", "bprop", 13, 1, 0, "simt_c2"), ("float16", "float16", "fprop", 32, 2, 0, "tc_st5"),
            ("float16", "float16", "fprop", 32, 3, 0, "tc_ring"), ("bfloat16", "float32", "bprop", 19, 4, 1, "tc_ring"),
            ("float16", "float32", "bprop", 29, 5, 1, "tc_ring_bulk"), ("bfloat16", "bfloat16", "fprop", 5, 1, 0, "tc_ring_bulk"),
            ("float16", "float16", "fprop", 32, 7, 0, "tc_ring4_bulk"), ("bfloat16", "bfloat16", "bprop", 17, 2, 1, "tc_ring4"),
            ("float32", "float32", "bprop", 32, 5, 1, "simt_ring"), ("float32", "float32", "fprop", 27, 2, 0, "simt_ring_bulk"),
            ("float32", "float32", "bprop", 1, 9, 0, "simt_ring_bulk"), ("float16", "float16", "bprop", 30, 3, 1, "tc_ring12"),
            # the split pieces counted after the CTA's last block (LATE = 1), the CTA-stage kernels of before
            ("float16", "float32", "fprop", 31, 6, 1, "tc_ring_late"), ("float32", "float32", "bprop", 5, 7, 0, "simt_late"),
            ("bfloat16", "bfloat16", "fprop", 32, 5, 0, "tc_stages"), ("float16", "float16", "bprop", 31, 6, 1, "tc_ring_late"),
            ("float32", "float32", "fprop", 29, 5, 1, "simt_stages"),
            ("float32", "float32", "fprop", 31, 3, 1, "simt_ring8"), ("float32", "float32", "bprop", 5, 2, 0, "simt_ring8"),
            ("bfloat16", "float32", "fprop", 31, 4, 1, "tc_ring_swz"), ("float16", "float16", "bprop", 29, 5, 1, "tc_ring_pairs"),
            ("bfloat16", "bfloat16", "fprop", 32, 3, 0, "tc_ring_pairs"),
            ("float16", "float16", "fprop", 32, 5, 0, "tc_ring_kp"), ("bfloat16", "float32", "fprop", 19, 3, 1, "tc_ring_kp"),
            ("float16", "float32", "bprop", 32, 4, 1, "tc_ring_kp"), ("bfloat16", "bfloat16", "bprop", 7, 6, 0, "tc_ring_kp"),
            ("float16", "float32", "fprop", 29, 6, 1, "tc_ring_kp_late"), ("bfloat16", "bfloat16", "bprop", 32, 5, 0, "tc_ring_kp_late"),
            ("float16", "float16", "fprop", 32, 5, 0, "tc_ring_kp_part"), ("bfloat16", "float32", "fprop", 19, 1, 1, "tc_ring_kp_part"),
            ("float16", "float32", "bprop", 7, 4, 1, "tc_ring_kp_part"), ("bfloat16", "bfloat16", "bprop", 32, 9, 0, "tc_ring_kp_part"),
            ("float32", "float32", "fprop", 32, 5, 1, "simt_ring8_part"), ("float32", "float32", "bprop", 13, 3, 0, "simt_ring8_part")]


@pytest.fixture(scope="module")
def small_emulator(tmp_path_factory):
    """The compiled bsmm_small_driver with the specializations the emulated cases launch."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    from cusparseblocks import _matmul_gpu as G
    from cusparseblocks import compiler

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    from cuda_emulation import fake_cupy

    here = Path(__file__).resolve().parent / "cuda_emulation"
    d = tmp_path_factory.mktemp("bsmm_small_emu")
    text = (compiler.kernel_source_dir() / "bsmm_small.cu").read_text()
    start, end = text.index("// PTX wrappers"), text.index("// end of PTX wrappers")
    text = (text[:start] + text[end:]).replace('#include "common.cuh"', "")
    (d / "bsmm_small_emu.cu").write_text(text.replace("extern __shared__ __align__(16) unsigned char smem_raw[];", ""))
    specs = dict.fromkeys(G.xw_small_spec(dt, odt, 32 if n <= 32 else 64, int(op == "bprop"), *variant)
                          for dt, odt, op, n, _, _, *variant in _emulated_small_cases())
    specs.update(dict.fromkeys(G.small_reduce_spec(odt, bm, G.small_tile(dt, bm, (v or [None])[0])[0])
                               for dt, odt, op, n, _, _, *v in _emulated_small_cases()
                               for bm in [32 if n <= 32 else 64] if G._small_late(dt, bm, (v or [None])[0]) == 3))
    lines = [f"{m.group(1).upper()}({m.group(2)}),"
             for m in (re.fullmatch(r"(xw_small(?:_ring|_reduce)?)<(.*)>", s.name) for s in specs)]
    (d / "bsmm_small_kernels.inc").write_text("\n".join(lines) + "\n")
    exe = d / "bsmm_small_driver"
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", "-DCSB_HOST_EMULATION", f"-I{d}", f"-I{here}",
                            f"-I{fake_cupy.KERNELS}", "-o", str(exe), str(here / "bsmm_small_driver.cpp")],
                           capture_output=True, text=True)
    if build.returncode and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the C++ compiler has no <barrier> (C++20)")
    assert build.returncode == 0, build.stderr[-4000:]
    return fake_cupy.make_launcher(exe, [])


@pytest.mark.parametrize("case", _emulated_small_cases(), ids=lambda c: "-".join(map(str, c)))
def test_small_kernel_emulated(rng, monkeypatch, small_emulator, case):
    """xw_small fprop/bprop with the work split over ``CTAs`` (long columns cut into parts summed in the
    launch), an empty block row and column, ragged N; every element against float64, outputs poisoned or
    accumulated into; the arrival counters are back to zero afterwards."""
    from test_matmul_gpu import _io, _ref64

    from cusparseblocks import _matmul_gpu as G

    dt, odt, op_name, n, ctas, accumulate, *variant = case
    variant = variant[0] if variant else None
    b, bm = 32, 32 if n <= 32 else 64
    kb, mb = (23, 5) if op_name == "fprop" else (5, 23)  # columns of 10-20 blocks: several stages each
    mask = rng.random((kb, mb)) < 0.6
    mask[kb - 1, :] = False
    mask[:, mb - 2] = False
    op, _ = _emulated_op(monkeypatch, mask, b, 1, op_name)
    warps, bpw, _, _, _, c = G.small_tile(dt, bm, variant)
    snap = (ctas % 2) * warps * bpw  # odd CTA counts: cuts moved onto column boundaries where near
    all_parts = G._small_late(dt, bm, variant) == 3  # every warp's partial, then xw_small_reduce
    items, ent_ptr, stages, stage_ptr, zero_cols, n_zero, parts = G.small_work(op.layout, op_name, ctas,
                                                                               warps * bpw, snap, c, all_parts)
    f_in, f_out = (op.K, op.M) if op_name == "fprop" else (op.M, op.K)
    x = random_array(rng, _io(op, n, f_in), dt)
    w = random_array(rng, op.w_shape, dt, scale=0.2)
    ref = _ref64(op, op_name, x, w=w)
    if accumulate:
        y = random_array(rng, ref.shape, odt)
        ref = ref + y.astype(np.float64)
    else:
        y = poison(np, ref.shape, odt)
    ws = np.full(((parts.shape[0] + ctas) * warps if all_parts else parts.shape[0], c, bm, b), np.nan, np.float32)
    counters = np.zeros(parts.shape[0], np.uint32)
    spec = G.xw_small_spec(dt, odt, bm, int(op_name == "bprop"), variant)
    small_emulator(spec, (ctas,), (warps * 32,),
                   (x, w, y, items, ent_ptr, stages, stage_ptr, zero_cols, n_zero, parts, ws, counters,
                    np.int64(n), np.int64(f_in), np.int64(f_out), np.int32(accumulate)),
                   G.xw_small_smem(dt, bm, variant))
    if all_parts:
        small_emulator(G.small_reduce_spec(odt, bm, warps), (parts.shape[0],), (256,),
                       (ws, parts, y, np.int64(n), np.int64(f_out), np.int32(accumulate)))
    assert_close(y, ref, dt, f"{spec.name} n={n} ctas={ctas}")
    assert not counters.any(), "split counters not reset"
    assert all_parts or ctas > 1 or not (stages[:, 3] >= 0).any(), "one CTA splits no column"
