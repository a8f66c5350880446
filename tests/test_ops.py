"""Helper ops (cusparseblocks.ops): every op and gradient against the float64 reference, finite differences
on the reference, the dropout mask's identity across backends, validation, and (GPU) the CuPy kernels
against the reference and against PyTorch's ops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_array, to_numpy

from cusparseblocks import BlockSparseMatMul, ops
from cusparseblocks.reference import ops as ref

CPU_DTYPES = ("float32", "float16", "bfloat16", "float64")
GPU_DTYPES = ("float32", "float16", "bfloat16")
SHAPES = ((37, 203), (64, 256), (1, 7), (5, 1))  # ragged, aligned, tiny


def f64(a):
    return to_numpy(a).astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# finite differences on the float64 reference


def fd_check(fprop, inputs, grads, rng, eps=1e-6, rtol=1e-6):
    """<dy, f(x + eps·v) − f(x − eps·v)> / 2eps == Σ <grad_i, v_i> for a random direction v.

    fprop(*inputs) returns a tuple of outputs; dys: the cotangents used for ``grads``.
    """
    vs = [rng.standard_normal(x.shape) for x in inputs]
    plus = fprop(*[x + eps * v for x, v in zip(inputs, vs)])
    minus = fprop(*[x - eps * v for x, v in zip(inputs, vs)])
    numeric = sum(float(np.sum(d * (p - m))) for d, p, m in zip(fd_check.dys, plus, minus)) / (2 * eps)
    analytic = sum(float(np.sum(g * v)) for g, v in zip(grads, vs) if g is not None)
    assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic)), f"fd {numeric} vs analytic {analytic}"


@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_activation_fd(activation, rng):
    x = rng.standard_normal((6, 9))
    b = rng.standard_normal(9)
    dy = rng.standard_normal((6, 9))
    fd_check.dys = [dy]
    dx, db = ops.activation_bprop(dy, x, activation, bias=b)
    fd_check(lambda x, b: (ops.activation_fprop(x, activation, bias=b),), [x, b], [dx, db], rng)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("bshape", [(6, 9), (9,), (6, 1), (1,), (3, 6, 1)])
def test_add_mul_fd(op, bshape, rng):
    a = rng.standard_normal((6, 9))
    b = rng.standard_normal(bshape)
    fwd = ops.add_fprop if op == "add" else ops.mul_fprop
    bwd = ops.add_bprop if op == "add" else ops.mul_bprop
    y = fwd(a, b, activation="swish", alpha=0.7)
    dy = rng.standard_normal(y.shape)
    fd_check.dys = [dy]
    da, db = bwd(dy, a, b, activation="swish", alpha=0.7)
    assert da.shape == a.shape and db.shape == b.shape
    fd_check(lambda a, b: (fwd(a, b, activation="swish", alpha=0.7),), [a, b], [da, db], rng)


def test_scale_mlstm_fd(rng):
    x, y, dy = (rng.standard_normal((4, 5)) for _ in range(3))
    fd_check.dys = [dy]
    fd_check(
        lambda x: (ops.scale_fprop(x, 1.5, activation="tanh"),),
        [x],
        [ops.scale_bprop(dy, x, 1.5, activation="tanh")],
        rng,
    )
    fd_check(lambda a, b: (ops.mlstm_fprop(a, b),), [x, y], list(ops.mlstm_bprop(dy, x, y)), rng)


@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("kind", ["layer", "batch", "batch_eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_norm_fd(kind, feature_axis, affine, rng):
    x = rng.standard_normal((7, 5)) * 2 + 3
    F = x.shape[feature_axis]
    g = rng.standard_normal(F) if affine else None
    b = rng.standard_normal(F) if affine else None
    dy = rng.standard_normal(x.shape)
    fd_check.dys = [dy]
    if kind == "layer":
        y, m, r = ops.layer_norm_fprop(x, g, b, feature_axis=feature_axis)
        dx, dg, dbias = ops.layer_norm_bprop(dy, x, g, m, r, feature_axis=feature_axis)
        fwd = lambda x, g=None, b=None: (ops.layer_norm_fprop(x, g, b, feature_axis=feature_axis)[0],)
    else:
        training = kind == "batch"
        rm, rv = rng.standard_normal(F), rng.random(F) + 0.5
        y, m, r = ops.batch_norm_fprop(
            x,
            g,
            b,
            feature_axis=feature_axis,
            training=training,
            running_mean=rm.copy(),
            running_var=rv.copy(),
        )
        dx, dg, dbias = ops.batch_norm_bprop(dy, x, g, m, r, feature_axis=feature_axis, training=training)
        fwd = lambda x, g=None, b=None: (
            ops.batch_norm_fprop(
                x,
                g,
                b,
                feature_axis=feature_axis,
                training=training,
                running_mean=rm.copy(),
                running_var=rv.copy(),
            )[0],
        )
    if affine:
        fd_check(fwd, [x, g, b], [dx, dg, dbias], rng)
    else:
        assert dg is None
        fd_check(fwd, [x], [dx], rng)


def test_batch_norm_running_update(rng):
    x = rng.standard_normal((50, 6)) * 2 + 1
    rm, rv = np.zeros(6), np.ones(6)
    ops.batch_norm_fprop(x, running_mean=rm, running_var=rv, momentum=0.25)
    np.testing.assert_allclose(rm, 0.25 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("per", ["unit", "block"])
@pytest.mark.parametrize("gain", [True, False])
def test_weight_norm_fd(per, gain, rng):
    mask = rng.random((4, 3)) < 0.5
    mask[0, 0] = mask[1, 2] = True
    bsmm = BlockSparseMatMul(mask, block_size=8)
    w = rng.standard_normal(bsmm.w_shape)
    n = bsmm.M if per == "unit" else bsmm.layout.nnz
    g = rng.standard_normal(n) if gain else None
    v, rn = ops.weight_norm_fprop(bsmm, w, g, per=per)
    dv = rng.standard_normal(w.shape)
    fd_check.dys = [dv]
    dw, dg = ops.weight_norm_bprop(bsmm, dv, w, g, rn, per=per)
    if gain:
        fd_check(lambda w, g: (ops.weight_norm_fprop(bsmm, w, g, per=per)[0],), [w, g], [dw, dg], rng)
    else:
        assert dg is None
        fd_check(lambda w: (ops.weight_norm_fprop(bsmm, w, per=per)[0],), [w], [dw], rng)
    # the normalized weights have norm |gain| per unit / block
    dense = bsmm.dense(v)
    if per == "unit":
        cols = np.linalg.norm(dense, axis=0)
        expect = np.abs(g) if gain else np.ones(bsmm.M)
        used = np.repeat(mask.any(0), 8)
        np.testing.assert_allclose(cols[used], expect[used], rtol=1e-9)


@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("with_dc", [True, False])
def test_lstm_gates_fd(feature_axis, with_dc, rng):
    N, H = 5, 3
    zshape, cshape = ((N, 4 * H), (N, H)) if feature_axis == 1 else ((4 * H, N), (H, N))
    z, cp = rng.standard_normal(zshape), rng.standard_normal(cshape)
    dh, dc = rng.standard_normal(cshape), rng.standard_normal(cshape)
    fd_check.dys = [dc if with_dc else np.zeros(cshape), dh]
    dz, dcp = ops.lstm_gates_bprop(dh, dc if with_dc else None, z, cp, feature_axis=feature_axis)
    fd_check(lambda z, cp: ops.lstm_gates_fprop(z, cp, feature_axis=feature_axis), [z, cp], [dz, dcp], rng)


def test_lstm_gate_order(rng):
    """Gate order (i, f, g, o), as torch.nn.LSTMCell."""
    H = 4
    z = np.zeros((1, 4 * H))
    z[0, H : 2 * H] = 50.0  # forget gate open, input gate half, cell candidate 0
    cp = rng.standard_normal((1, H))
    c, h = ops.lstm_gates_fprop(z, cp)
    np.testing.assert_allclose(c, cp, rtol=1e-12)
    np.testing.assert_allclose(h, 0.5 * np.tanh(cp), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# reference precision: each dtype against float64


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_cpu_dtypes_vs_float64(dtype, rng):
    x, b, dy = (
        random_array(rng, (13, 21), dtype),
        random_array(rng, (21,), dtype),
        random_array(rng, (13, 21), dtype),
    )
    assert_close(
        ops.activation_fprop(x, "gelu_erf", bias=b), ref.ew_fprop("add", f64(x), f64(b), "gelu_erf"), dtype
    )
    g = random_array(rng, (21,), dtype)
    y, m, r = ops.layer_norm_fprop(x, g, b)
    assert y.dtype == x.dtype and m.dtype == (np.float64 if dtype == "float64" else np.float32)
    ry, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), f64(b))
    assert_close(y, ry, dtype)
    for a, e in zip(
        ops.layer_norm_bprop(dy, x, g, m, r), ref.layer_norm_bprop(f64(dy), f64(x), f64(g), rm, rr)
    ):
        assert_close(a, e, dtype)


# ---------------------------------------------------------------------------------------------------
# dropout


def test_philox_known_answers():
    out = ref.philox4x32_10(0, 0, 0, 0, 0, 0)
    assert [int(v) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    assert [int(v) for v in ref.philox4x32_10(m, m, m, m, m, m)] == [
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    ]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_dropout_cpu(dtype, rng):
    x = random_array(rng, (31, 17), dtype)
    p, seed, offset = 0.3, 2**40 + 17, 5
    y = ops.dropout_fprop(x, p, seed, offset)
    keep = ops.dropout_mask(x.shape, p, seed, offset)
    assert_close(y, np.where(keep, f64(x) / (1 - p), 0.0), dtype)
    assert np.array_equal(ops.dropout_bprop(x, p, seed, offset), y)  # same mask in the backward
    assert np.array_equal(ops.dropout_fprop(x, p, seed, offset), y)  # reproducible
    assert not np.array_equal(ops.dropout_mask(x.shape, p, seed, offset + 1), keep)
    assert np.array_equal(ops.dropout_fprop(x, 0.0, seed), x)


def test_dropout_statistics():
    keep = ops.dropout_mask((1000, 1000), 0.25, 99, 0)
    assert abs(keep.mean() - 0.75) < 0.003
    # the mask is a function of the flat index: any shape of the same size gives the same bits
    assert np.array_equal(
        ops.dropout_mask((10, 100), 0.5, 3, 1).ravel(), ops.dropout_mask((1000,), 0.5, 3, 1)
    )


# ---------------------------------------------------------------------------------------------------
# validation


def test_validation_errors(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="activation"):
        ops.activation_fprop(x, "gelu2")
    with pytest.raises(ValueError, match="bias: expected shape \\(6,\\)"):
        ops.activation_fprop(x, "relu", bias=np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        ops.activation_fprop(x, "relu", bias=np.zeros(6, np.float64))
    with pytest.raises(ValueError, match="feature_axis"):
        ops.activation_fprop(x, "relu", bias=np.zeros(6, np.float32), feature_axis=2)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.activation_fprop(x.T, "relu")
    with pytest.raises(TypeError, match="x: expected dtype"):
        ops.activation_fprop(x.astype(np.int32), "relu")
    with pytest.raises(ValueError, match="b: expected a shape that broadcasts"):
        ops.add_fprop(x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="dy: expected shape"):
        ops.add_bprop(np.zeros((4, 5), np.float32), x, x)
    with pytest.raises(TypeError, match="alpha"):
        ops.scale_fprop(x, "2")
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p: expected a drop probability in \\[0, 1\\)"):
            ops.dropout_fprop(x, p, 1)
    with pytest.raises(ValueError, match="seed"):
        ops.dropout_fprop(x, 0.1, -1)
    with pytest.raises(TypeError, match="offset"):
        ops.dropout_fprop(x, 0.1, 1, 0.5)
    with pytest.raises(ValueError, match="gain: expected shape \\(6,\\)"):
        ops.layer_norm_fprop(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="gain: expected shape \\(4,\\)"):
        ops.layer_norm_fprop(x, np.ones(6, np.float32), feature_axis=0)
    with pytest.raises(ValueError, match="feature_axis: expected 0 or 1"):
        ops.layer_norm_fprop(x, feature_axis=2)
    with pytest.raises(ValueError, match="x: expected 2 dimensions"):
        ops.layer_norm_fprop(x[None])
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm_fprop(x, eps=-1.0)
    y, m, r = ops.layer_norm_fprop(x)
    with pytest.raises(ValueError, match="mean: expected shape \\(4,\\)"):
        ops.layer_norm_bprop(x, x, None, m[:3], r)
    with pytest.raises(ValueError, match="bias: expected shape \\(6,\\)"):
        ops.batch_norm_fprop(x, None, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="running_mean, running_var"):
        ops.batch_norm_fprop(x, training=False)
    with pytest.raises(ValueError, match="running_var: expected shape"):
        ops.batch_norm_fprop(x, running_mean=np.zeros(6, np.float32), running_var=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="z: expected 4·H"):
        ops.lstm_gates_fprop(np.zeros((3, 10), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="c_prev: expected shape \\(3, 2\\)"):
        ops.lstm_gates_fprop(np.zeros((3, 8), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="mh: expected shape"):
        ops.mlstm_fprop(x, x[:, :3].copy())
    bsmm = BlockSparseMatMul(np.eye(2, dtype=bool), block_size=8)
    w = np.ones(bsmm.w_shape, np.float32)
    with pytest.raises(ValueError, match="per"):
        ops.weight_norm_fprop(bsmm, w, per="row")
    with pytest.raises(ValueError, match="w: expected shape \\(2, 8, 8\\)"):
        ops.weight_norm_fprop(bsmm, w[:1])
    with pytest.raises(ValueError, match="gain: expected shape \\(16,\\)"):
        ops.weight_norm_fprop(bsmm, w, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="layout"):
        ops.weight_norm_fprop("nope", w)
    with pytest.raises(TypeError, match="cupy.ndarray"):
        ops.activation_fprop([1.0, 2.0], "relu")


def test_self_check_numpy():
    rows = ops.self_check("numpy")
    assert rows and all(ok for _, _, _, ok in rows), [r for r in rows if not r[3]]


def test_specializations_registered():
    from cusparseblocks import compiler

    specs = compiler.all_specializations()["ew"]
    per_type = (
        # ew_fwd, ew_bwd per unroll; ew_bias_cols_bwd, ew_act_bwd, ew_bin_fwd (add, mul); ew_act_fwd per U
        len(ops.ACTIVATIONS) * (2 * len(ops.UNROLLS) + 4 + len(ops.ACT_FWD_VECS))
        # norm_rows_fwd_reg<T, NV, G>, norm_rows_bwd_cols<T, NV, G>
        + len(list(ops._fwd_shapes()))
        + len(list(ops._bwd_cols_shapes()))
        + len(ops.WN_BLOCK_VECS)  # wn_block_reg
        + len(ops.ROW_VECS)  # norm_rows_bwd_reg without column sums
        + sum(nv <= ops.COLS_MAX_VECS for nv in ops.ROW_VECS)  # norm_rows_bwd_reg with column sums
        + 2  # norm_cols_apply forward and reverse
        + len(ops._SINGLE_KERNELS)
    )
    assert len(specs) == 3 * per_type


@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("fwd_vecs", ops.FWD_MAX_VECS)
@pytest.mark.parametrize("bwd_vecs", ops.BWD_COLS_MAX_VECS)
def test_row_kernel_shapes(dtype, fwd_vecs, bwd_vecs):
    """The (NV, G) the row plans pick, for every LAUNCH value compiled: a compiled specialization, enough
    vectors for the row, the fewest warps a row; None (the fallback) only for rows too long (forward) or
    not a whole number of 16-byte vectors (backward)."""
    dt = random_array(np.random.default_rng(0), (1,), dtype).dtype
    lanes = 16 // dt.itemsize
    saved = (ops.LAUNCH["rows_fwd"]["vecs"], ops.LAUNCH["rows_bwd_cols"]["vecs"])
    ops.LAUNCH["rows_fwd"]["vecs"], ops.LAUNCH["rows_bwd_cols"]["vecs"] = fwd_vecs, bwd_vecs
    try:
        fwd_specs, bwd_specs = set(ops._fwd_shapes()), set(ops._bwd_cols_shapes())
        for L in (1, 7, 8, 24, 72, 203, 256, 4096, 4101, 8192, 12288, 65536, 73728, 1 << 20):
            grid, block, nv = ops.launch_config("rows_fwd", dt, R=37, L=L)
            vecs = -(-L // lanes)
            if nv is None:
                assert 32 * ops.FWD_WARPS[-1] * fwd_vecs < vecs
            else:
                g = block[0] // 32
                assert (nv, g) in fwd_specs and 32 * g * nv >= vecs
                assert g == 1 or 32 * (g // 2) * fwd_vecs < vecs  # fewest warps
                assert block[0] * block[1] <= 1024 and grid[0] * block[1] >= 37
            shape = ops._bwd_cols_shape(dt, L)
            if shape is None:
                assert L % lanes or 32 * ops.FWD_WARPS[-1] * bwd_vecs < L // lanes
            else:
                nv, g = shape
                assert (nv, g) in bwd_specs and 32 * g * nv * lanes >= L
                assert g == 1 or 32 * (g // 2) * bwd_vecs < L // lanes
    finally:
        ops.LAUNCH["rows_fwd"]["vecs"], ops.LAUNCH["rows_bwd_cols"]["vecs"] = saved


# ---------------------------------------------------------------------------------------------------
# GPU: kernels against the reference (fresh data, poisoned memory pool, aligned and offset views)


def _gpu(host, misalign=False):
    import cupy

    if not misalign:
        return cupy.asarray(host)
    flat = cupy.empty(host.size + 1, dtype=host.dtype)
    view = flat[1:].reshape(host.shape)
    view[...] = cupy.asarray(host)
    return view


def _poison_pool(nbytes=64 << 20):
    """Fill freed pool memory with NaN so outputs a kernel forgets to write show up."""
    import cupy

    for n in (nbytes // 4, 1 << 20, 1 << 16, 1 << 12):
        a = cupy.full(n, np.nan, dtype=cupy.float32)
        del a


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "shape,misalign", [((37, 203), True), ((64, 256), False), ((5, 1), False), ((3001, 72), False)]
)
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("act_kernels", [(True, "auto"), (True, 1), (True, 2), (True, 4), (False, 1)])
def test_gpu_activation(dtype, shape, misalign, activation, act_kernels, rng):
    """act_kernels: the plain activation through ew_act_fwd (1, 2 or 4 vectors a thread) / ew_act_bwd
    (default) or ew_fwd / ew_bwd."""
    cfg = ops.LAUNCH["elementwise"]
    saved = cfg["act_kernels"], cfg["act_fwd_vecs"]
    cfg["act_kernels"], cfg["act_fwd_vecs"] = act_kernels
    ops._PLANS.clear()
    try:
        _check_activation(dtype, shape, misalign, activation, rng)
    finally:
        cfg["act_kernels"], cfg["act_fwd_vecs"] = saved
        ops._PLANS.clear()


def _check_activation(dtype, shape, misalign, activation, rng):
    x, b, dy = (random_array(rng, s, dtype) for s in (shape, shape[1:], shape))
    _poison_pool()
    gx, gb, gdy = _gpu(x, misalign), _gpu(b), _gpu(dy, misalign)
    assert_close(ops.activation_fprop(gx, activation), ref.ew_fprop("none", f64(x), None, activation), dtype)
    # no bias: ew_act_bwd (its own kernel)
    dx0, db0 = ops.activation_bprop(gdy, gx, activation)
    assert db0 is None
    assert_close(dx0, ref.ew_bprop("none", f64(dy), f64(x), None, activation)[0], dtype, "dx (no bias)")
    assert_close(
        ops.scale_bprop(gdy, gx, -0.75, activation=activation),
        ref.ew_bprop("none", f64(dy), f64(x), None, activation, -0.75)[0],
        dtype,
        "scale dx",
    )
    y = ops.activation_fprop(gx, activation, bias=gb)
    dx, db = ops.activation_bprop(gdy, gx, activation, bias=gb)
    rdx, rdb = ref.ew_bprop("add", f64(dy), f64(x), f64(b), activation)
    assert_close(y, ref.ew_fprop("add", f64(x), f64(b), activation), dtype, "y")
    assert_close(dx, rdx, dtype, "dx")
    # dbias is the column sum of the returned (rounded) dx, as in PyTorch: check it against that sum, and
    # against the float64 reference, both with a scale of the summed magnitudes (a column of few rows can
    # cancel to far below its terms: 5 rows once summed to 1e-3 of them, over float32's 1e-5 of the result)
    assert_close(db, f64(dx).sum(axis=0), dtype, "dbias", scale=np.abs(f64(dx)).sum(axis=0))
    scale = np.abs(rdx).sum(axis=0).max() + 1e-30
    assert np.abs(f64(db) - rdb).max() / scale <= {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize(
    "shapes",
    [
        ((33, 70), (33, 70)),
        ((33, 70), (70,)),
        ((33, 64), (33, 1)),
        ((33, 70), (1,)),
        ((4, 5, 6), (5, 1)),
        ((4, 5, 6), (4, 1, 6)),
        ((5, 1), (1, 7)),
        ((3, 1001), (3, 1001)),
    ],
)
@pytest.mark.parametrize("act_kernels", [True, False])
def test_gpu_add_mul(dtype, op, shapes, act_kernels, rng, monkeypatch):
    """add/mul with broadcasting; same-shape operands through ew_bin_fwd (act_kernels) or ew_fwd."""
    monkeypatch.setitem(ops.LAUNCH["elementwise"], "act_kernels", act_kernels)
    a, b = (random_array(rng, s, dtype) for s in shapes)
    _poison_pool()
    fwd, bwd = (ops.add_fprop, ops.add_bprop) if op == "add" else (ops.mul_fprop, ops.mul_bprop)
    y = fwd(_gpu(a), _gpu(b), activation="sigmoid", alpha=0.5)
    ry = ref.ew_fprop(
        op, np.broadcast_to(f64(a), np.broadcast_shapes(a.shape, b.shape)), f64(b), "sigmoid", 0.5
    )
    assert_close(y, ry, dtype)
    dy = random_array(rng, ry.shape, dtype)
    da, db = bwd(_gpu(dy), _gpu(a), _gpu(b), activation="sigmoid", alpha=0.5)
    ra, rb = ref.ew_bprop(op, f64(dy), np.broadcast_to(f64(a), ry.shape), f64(b), "sigmoid", 0.5)
    # a broadcast operand's gradient is a sum that can cancel (a scalar b: one sum of every element):
    # errors relative to the sums of the terms' magnitudes
    _, rb_full = ref.ew_bprop(op, f64(dy), np.broadcast_to(f64(a), ry.shape),
                              np.broadcast_to(f64(b), ry.shape), "sigmoid", 0.5)
    scale_a = ref._reduce_to(np.abs(ra), a.shape).reshape(a.shape)
    scale_b = ref._reduce_to(np.abs(rb_full), b.shape).reshape(b.shape)
    assert_close(da, ref._reduce_to(ra, a.shape).reshape(a.shape), dtype, "da", scale=scale_a)
    assert_close(db, rb, dtype, "db", scale=scale_b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("size", [1, 7, 1000, 4099, 65536 + 3])
def test_gpu_dropout_identical_mask(dtype, size, rng):
    import cupy

    seed = int(rng.integers(0, 2**63)) * 2 + 1
    offset = int(rng.integers(0, 2**40))
    x = random_array(rng, (size,), dtype)
    _poison_pool()
    for misalign in (False, True):
        y = ops.dropout_fprop(_gpu(x, misalign), 0.4, seed, offset)
        assert_close(y, ref.dropout(f64(x), 0.4, seed, offset), dtype)
        assert np.array_equal(to_numpy(y), ops.dropout_fprop(x, 0.4, seed, offset))
    mask = ops.dropout_mask((size,), 0.4, seed, offset, xp=cupy)
    assert np.array_equal(mask.get(), ops.dropout_mask((size,), 0.4, seed, offset))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "shape", [(37, 203), (64, 256), (3, 4096 + 5), (3, 5), (1000, 24), (4099, 72), (40, 2048 + 64)]
)
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("kind", ["layer", "batch", "batch_eval"])
def test_gpu_norms(dtype, shape, feature_axis, kind, rng):
    import cupy

    x = (random_array(rng, shape, "float32") * 3 + 5).astype(random_array(rng, (1,), dtype).dtype)
    F = shape[feature_axis]
    g, b, dy = random_array(rng, (F,), dtype), random_array(rng, (F,), dtype), random_array(rng, shape, dtype)
    _poison_pool()
    gx, gg, gb, gdy = map(_gpu, (x, g, b, dy))
    if kind == "layer":
        y, m, r = ops.layer_norm_fprop(gx, gg, gb, feature_axis=feature_axis)
        grads = ops.layer_norm_bprop(gdy, gx, gg, m, r, feature_axis=feature_axis)
        ry, rm, rr = ref.layer_norm_fprop(f64(x), f64(g), f64(b), feature_axis)
        rgrads = ref.layer_norm_bprop(f64(dy), f64(x), f64(g), rm, rr, feature_axis)
    else:
        training = kind == "batch"
        if shape[1 - feature_axis] < 2:
            pytest.skip("batch norm needs 2 samples")
        rm0 = rng.standard_normal(F).astype(np.float32)
        rv0 = (rng.random(F) + 0.5).astype(np.float32)
        grm, grv = cupy.asarray(rm0), cupy.asarray(rv0)
        hrm, hrv = rm0.astype(np.float64), rv0.astype(np.float64)
        y, m, r = ops.batch_norm_fprop(
            gx, gg, gb, feature_axis=feature_axis, training=training, running_mean=grm, running_var=grv
        )
        grads = ops.batch_norm_bprop(gdy, gx, gg, m, r, feature_axis=feature_axis, training=training)
        ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(g), f64(b), feature_axis, training, hrm, hrv)
        rgrads = ref.batch_norm_bprop(f64(dy), f64(x), f64(g), rm, rr, feature_axis, training)
        assert_close(grm, hrm, "float32", "running_mean")
        assert_close(grv, hrv, "float32" if dtype == "float32" else "float16", "running_var")
    assert_close(m, rm, "float32", "mean")
    assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")

    def along(v, axis):  # a vector laid along `axis` of the 2-D tensors
        return np.reshape(np.asarray(v, np.float64), (-1, 1) if axis == 0 else (1, -1))

    # y = (x − mean)·rstd·g + b is ill-conditioned where a norm spans few close values (3 rows: rstd large,
    # x − mean cancels in float32): its error is measured against the terms, |x|·rstd·|g| + |b|
    sa = (1 - feature_axis) if kind == "layer" else feature_axis  # the axis the statistics run along
    g_abs, b_abs = np.abs(along(f64(g), feature_axis)), np.abs(along(f64(b), feature_axis))
    y_terms = np.abs(f64(x)) * along(rr, sa) * g_abs + b_abs
    assert_close(y, ry, dtype, "y", scale=y_terms)
    # dx = g·rstd·(dy − mean(dy) − x̂·mean(dy·x̂)) cancels when a norm spans few elements (3 samples or
    # features): its error is measured against the terms it is computed from, g·rstd·dy

    # float32 forms x − mean with an error of ~eps·|x|, which x̂ = (x − mean)·rstd scales by rstd: over 3 close
    # samples rstd is large, so the terms are also weighted by 1 + |x|·rstd (the conditioning of x̂)
    terms = None
    if kind != "batch_eval":
        r_along = along(rr, feature_axis if kind == "batch" else 1 - feature_axis)
        terms = along(f64(g), feature_axis) * r_along * np.abs(f64(dy)) * (1 + np.abs(f64(x)) * r_along)
    for name, a, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
        assert_close(a, e, dtype, name, scale=terms if name == "dx" else None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "shape", [(37, 256), (5, 4096), (2, 8192 + 64), (1, 3 * 4096), (203, 24), (9, 72 * 1024), (6, 8)]
)
@pytest.mark.parametrize("vecs", [None, 2, 8, 16])
@pytest.mark.parametrize("force_fallback", [False, True])
def test_gpu_rows_fwd_paths(dtype, shape, vecs, force_fallback, rng):
    """Statistics per row (layer norm, features last; batch norm training, features first): the row in
    registers with one warp or G warps a row (every NV; LAUNCH["rows_fwd"]["vecs"] 2, 8, 16 and the
    default 4), and the forced two-read fallback, on aligned shapes (the ragged ones are in test_gpu_norms)."""
    import cupy

    x = (random_array(rng, shape, "float32") * 3 + 5).astype(random_array(rng, (1,), dtype).dtype)
    R, L = shape
    g, b = random_array(rng, (L,), dtype), random_array(rng, (L,), dtype)
    gr, br = random_array(rng, (R,), dtype), random_array(rng, (R,), dtype)
    saved = ops.LAUNCH["rows_fwd"]["vecs"]
    try:
        if vecs is not None:
            ops.LAUNCH["rows_fwd"]["vecs"] = vecs
        if force_fallback:
            ops._FORCE_FALLBACK.add("rows_fwd")
        ops._PLANS.clear()
        _poison_pool()
        for gain, bias, misalign in ((g, b, False), (None, None, False), (g, None, True)):
            y, m, r = ops.layer_norm_fprop(  # a misaligned view takes the fallback
                _gpu(x, misalign), None if gain is None else _gpu(gain), None if bias is None else _gpu(bias)
            )
            ry, rm, rr = ref.layer_norm_fprop(
                f64(x), None if gain is None else f64(gain), None if bias is None else f64(bias), 1
            )
            assert_close(m, rm, "float32", "mean")
            assert_close(r, rr, "float32" if dtype == "float32" else "float16", "rstd")
            assert_close(y, ry, dtype, "y")
        if L >= 2:  # batch norm over the L samples of each of the R channels (features first)
            rm0, rv0 = rng.standard_normal(R).astype(np.float32), (rng.random(R) + 0.5).astype(np.float32)
            grm, grv = cupy.asarray(rm0), cupy.asarray(rv0)
            y, m, r = ops.batch_norm_fprop(
                _gpu(x), _gpu(gr), _gpu(br), feature_axis=0, running_mean=grm, running_var=grv
            )
            hrm, hrv = rm0.astype(np.float64), rv0.astype(np.float64)
            ry, rm, rr = ref.batch_norm_fprop(f64(x), f64(gr), f64(br), 0, True, hrm, hrv)
            assert_close(y, ry, dtype, "batch norm y")
            assert_close(m, rm, "float32", "batch norm mean")
            # (1 - momentum)·rm0 + momentum·mean can cancel: errors relative to the terms' magnitudes
            assert_close(grm, hrm, "float32", "running_mean", scale=np.abs(rm0) + np.abs(rm))
            assert_close(grv, hrv, "float32" if dtype == "float32" else "float16", "running_var")
    finally:
        ops.LAUNCH["rows_fwd"]["vecs"] = saved
        ops._FORCE_FALLBACK.discard("rows_fwd")
        ops._PLANS.clear()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "shape", [(37, 256), (1100, 4096), (2, 8192 + 64), (1, 3 * 4096), (20011, 24), (5, 72 * 1024), (6, 8)]
)
@pytest.mark.parametrize("variant", [None, ("vecs", 1), ("vecs", 4), ("vecs", 8), ("groups", 1), ("groups", 7)])
@pytest.mark.parametrize("force_fallback", [False, True])
def test_gpu_layer_norm_bwd_paths(dtype, shape, variant, force_fallback, rng):
    """Layer norm backward, features last: norm_rows_bwd_cols (one warp or G warps a row, 1 to 7 row groups
    a block sharing the column sums in shared memory, rows spread over a persistent grid: several rows a
    group) and the forced fallback (norm_rows_bwd_reg / norm_rows_bwd + a column pass), with and without
    gain; dgain/dbias also checked for determinism (two calls, same bits)."""
    x = (random_array(rng, shape, "float32") * 2 + 3).astype(random_array(rng, (1,), dtype).dtype)
    R, L = shape
    g, b, dy = random_array(rng, (L,), dtype), random_array(rng, (L,), dtype), random_array(rng, shape, dtype)
    saved = dict(ops.LAUNCH["rows_bwd_cols"])
    try:
        if variant is not None:
            ops.LAUNCH["rows_bwd_cols"][variant[0]] = variant[1]
        if force_fallback:
            ops._FORCE_FALLBACK.add("rows_bwd")
        ops._PLANS.clear()
        _poison_pool()
        for gain, misalign in ((g, False), (None, False), (g, True)):  # misaligned views: the fallback
            gx, gdy = _gpu(x, misalign), _gpu(dy, misalign)
            gg = None if gain is None else _gpu(gain)
            _, m, r = ops.layer_norm_fprop(gx, gg, _gpu(b))
            dx, dgain, dbias = ops.layer_norm_bprop(gdy, gx, gg, m, r)
            rm, rr = ref.layer_norm_fprop(f64(x), None, None, 1)[1:]
            rdx, rdg, rdb = ref.layer_norm_bprop(f64(dy), f64(x), None if gain is None else f64(gain), rm, rr, 1)
            terms = (f64(gain) if gain is not None else 1.0) * np.reshape(rr, (-1, 1)) * f64(dy)
            assert_close(dx, rdx, dtype, "dx", scale=terms)
            assert_close(dbias, rdb, dtype, "dbias")
            if gain is None:
                assert dgain is None
            else:
                assert_close(dgain, rdg, dtype, "dgain")
                again = ops.layer_norm_bprop(gdy, gx, gg, m, r)
                assert np.array_equal(to_numpy(again[1]), to_numpy(dgain)), "dgain not deterministic"
                assert np.array_equal(to_numpy(again[2]), to_numpy(dbias)), "dbias not deterministic"
    finally:
        ops.LAUNCH["rows_bwd_cols"].clear()
        ops.LAUNCH["rows_bwd_cols"].update(saved)
        ops._FORCE_FALLBACK.discard("rows_bwd")
        ops._PLANS.clear()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(37, 203), (64, 256), (3, 4096 + 5), (4099, 72), (70, 4096), (33, 8)])
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("misalign", [False, True])
def test_gpu_batch_norm_inference(dtype, shape, feature_axis, misalign, rng):
    """One launch: the kernel computes rstd from running_var and eps, returns fresh mean/rstd [C] float32
    (not views of the running statistics, which stay unchanged) and y."""
    import cupy

    x = random_array(rng, shape, dtype, scale=2.0)
    C = shape[feature_axis]
    g, b = random_array(rng, (C,), dtype), random_array(rng, (C,), dtype)
    rm0 = (rng.standard_normal(C) * 0.5).astype(np.float32)
    rv0 = (rng.random(C) * 3 + 0.1).astype(np.float32)
    _poison_pool()
    grm, grv = cupy.asarray(rm0), cupy.asarray(rv0)
    for gain, bias in ((g, b), (None, None)):
        y, m, r = ops.batch_norm_fprop(
            _gpu(x, misalign),
            None if gain is None else _gpu(gain),
            None if bias is None else _gpu(bias),
            feature_axis=feature_axis,
            training=False,
            running_mean=grm,
            running_var=grv,
            eps=1e-3,
        )
        ry, rmean, rrstd = ref.batch_norm_fprop(
            f64(x),
            None if gain is None else f64(gain),
            None if bias is None else f64(bias),
            feature_axis,
            False,
            rm0.astype(np.float64),
            rv0.astype(np.float64),
            0.1,
            1e-3,
        )
        assert m.dtype == r.dtype == np.float32 and m.shape == r.shape == (C,)
        assert m.data.ptr != grm.data.ptr and r.data.ptr != grv.data.ptr
        assert_close(m, rmean, "float32", "mean")
        assert_close(r, rrstd, "float32", "rstd")
        assert_close(y, ry, dtype, "y")
        assert np.array_equal(grm.get(), rm0) and np.array_equal(grv.get(), rv0), "running stats changed"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(37, 203), (3, 4096 + 5), (4099, 72), (40, 2048 + 64)])
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("which", ["both", "mean", "var"])
def test_gpu_batch_norm_running_update(dtype, shape, feature_axis, which, rng):
    """Training updates the running statistics in place in the launch that finishes the statistics."""
    import cupy

    x = (random_array(rng, shape, "float32") * 2 + 1).astype(random_array(rng, (1,), dtype).dtype)
    C = shape[feature_axis]
    g, b = random_array(rng, (C,), dtype), random_array(rng, (C,), dtype)
    rm0 = rng.standard_normal(C).astype(np.float32)
    rv0 = (rng.random(C) + 0.5).astype(np.float32)
    _poison_pool()
    grm = cupy.asarray(rm0) if which != "var" else None
    grv = cupy.asarray(rv0) if which != "mean" else None
    y, m, r = ops.batch_norm_fprop(
        _gpu(x), _gpu(g), _gpu(b), feature_axis=feature_axis, running_mean=grm, running_var=grv, momentum=0.25
    )
    hrm, hrv = rm0.astype(np.float64), rv0.astype(np.float64)
    ry, rmean, rrstd = ref.batch_norm_fprop(f64(x), f64(g), f64(b), feature_axis, True, hrm, hrv, 0.25)
    assert_close(m, rmean, "float32", "mean")
    assert_close(r, rrstd, "float32" if dtype == "float32" else "float16", "rstd")
    assert_close(y, ry, dtype, "y")
    if grm is not None:
        assert_close(grm, hrm, "float32", "running_mean")
    if grv is not None:
        assert_close(grv, hrv, "float32" if dtype == "float32" else "float16", "running_var")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("per", ["unit", "block", "block-fallback"])
def test_gpu_weight_norm_fused_outputs(dtype, block_size, per, rng):
    """rnorm (forward) and dgain (backward, in the gain's dtype) come out of the reduction kernels; every
    element against the reference; no gain: dgain None. Per block: wn_block_reg (b = 16, 32) and wn_block
    (b = 8, and forced: "block-fallback")."""
    if per == "block-fallback":
        per = "block"
        ops._FORCE_FALLBACK.add("wn_block")
    try:
        _check_weight_norm_fused_outputs(dtype, block_size, per, rng)
    finally:
        ops._FORCE_FALLBACK.discard("wn_block")


def _check_weight_norm_fused_outputs(dtype, block_size, per, rng):
    mask = rng.random((6, 5)) < 0.5
    mask[:, 0] = True  # every block column non-empty: every rnorm finite
    mask[0, :] = True
    bsmm = BlockSparseMatMul(mask, block_size=block_size)
    w, dv = random_array(rng, bsmm.w_shape, dtype), random_array(rng, bsmm.w_shape, dtype)
    n = bsmm.M if per == "unit" else bsmm.layout.nnz
    g = random_array(rng, (n,), dtype)
    _poison_pool()
    v, rn = ops.weight_norm_fprop(bsmm, _gpu(w), _gpu(g), per=per, eps=1e-6)
    assert rn.dtype == np.float32 and rn.shape == (n,)
    rv, rrn = ref.weight_norm_fprop(bsmm.layout, f64(w), f64(g), per, 1e-6)
    assert_close(rn, rrn, "float32" if dtype == "float32" else "float16", "rnorm")
    assert_close(v, rv, dtype, "v")
    dw, dg = ops.weight_norm_bprop(bsmm, _gpu(dv), _gpu(w), _gpu(g), rn, per=per)
    rn64 = to_numpy(rn).astype(np.float64)
    rdw, rdg = ref.weight_norm_bprop(bsmm.layout, f64(dv), f64(w), f64(g), rn64, per)
    assert dg.dtype == _gpu(g).dtype and dg.shape == (n,)
    assert_close(dg, rdg, dtype, "dgain")
    assert_close(dw, rdw, dtype, "dw")
    dw0, dg0 = ops.weight_norm_bprop(bsmm, _gpu(dv), _gpu(w), None, rn, per=per)
    assert dg0 is None
    rdw0, _ = ref.weight_norm_bprop(bsmm.layout, f64(dv), f64(w), None, rn64, per)
    assert_close(dw0, rdw0, dtype, "dw (no gain)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("block_size", [8, 32, 64])
@pytest.mark.parametrize("per", ["unit", "block"])
def test_gpu_weight_norm(dtype, block_size, per, rng):
    mask = rng.random((5, 7)) < 0.4
    mask[0, 0] = True
    bsmm = BlockSparseMatMul(mask, block_size=block_size)
    w, dv = random_array(rng, bsmm.w_shape, dtype), random_array(rng, bsmm.w_shape, dtype)
    n = bsmm.M if per == "unit" else bsmm.layout.nnz
    g = random_array(rng, (n,), dtype)
    _poison_pool()
    v, rn = ops.weight_norm_fprop(bsmm, _gpu(w), _gpu(g), per=per)
    dw, dg = ops.weight_norm_bprop(bsmm, _gpu(dv), _gpu(w), _gpu(g), rn, per=per)
    rv, rrn = ref.weight_norm_fprop(bsmm.layout, f64(w), f64(g), per)
    rdw, rdg = ref.weight_norm_bprop(bsmm.layout, f64(dv), f64(w), f64(g), rrn, per)
    used = np.isfinite(rrn) & (rrn < 1e5)  # units of empty block columns have norm 0
    assert_close(to_numpy(rn)[used], rrn[used], "float32" if dtype == "float32" else "float16", "rnorm")
    assert_close(v, rv, dtype, "v")
    assert_close(dw, rdw, dtype, "dw")
    assert_close(to_numpy(dg)[used], rdg[used], dtype, "dgain")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("NH", [(37, 29), (64, 128), (3, 8), (1, 1)])
@pytest.mark.parametrize("feature_axis", [0, 1])
@pytest.mark.parametrize("misalign", [False, True])
def test_gpu_lstm(dtype, NH, feature_axis, misalign, rng):
    N, H = NH
    zs, cs = ((N, 4 * H), (N, H)) if feature_axis == 1 else ((4 * H, N), (H, N))
    z, cp, dh, dc = (random_array(rng, s, dtype) for s in (zs, cs, cs, cs))
    _poison_pool()
    c, h = ops.lstm_gates_fprop(_gpu(z, misalign), _gpu(cp), feature_axis=feature_axis)
    rc, rh = ref.lstm_gates_fprop(f64(z), f64(cp), feature_axis)
    assert_close(c, rc, dtype, "c")
    assert_close(h, rh, dtype, "h")
    for dcv in (dc, None):
        dz, dcp = ops.lstm_gates_bprop(
            _gpu(dh),
            None if dcv is None else _gpu(dcv, misalign),
            _gpu(z),
            _gpu(cp),
            feature_axis=feature_axis,
        )
        rdz, rdcp = ref.lstm_gates_bprop(
            f64(dh), None if dcv is None else f64(dcv), f64(z), f64(cp), feature_axis
        )
        assert_close(dz, rdz, dtype, "dz")
        assert_close(dcp, rdcp, dtype, "dc_prev")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_mlstm_scale(dtype, rng):
    a, b, dy = (random_array(rng, (19, 45), dtype) for _ in range(3))
    _poison_pool()
    assert_close(ops.mlstm_fprop(_gpu(a), _gpu(b)), f64(a) * f64(b), dtype)
    dmx, dmh = ops.mlstm_bprop(_gpu(dy), _gpu(a), _gpu(b))
    assert_close(dmx, f64(dy) * f64(b), dtype)
    assert_close(dmh, f64(dy) * f64(a), dtype)
    assert_close(
        ops.scale_fprop(_gpu(a), -1.5, activation="softplus"),
        ref.ew_fprop("none", f64(a), None, "softplus", -1.5),
        dtype,
    )


@pytest.mark.gpu
def test_gpu_validation():
    import cupy

    x = cupy.ones((4, 6), dtype=cupy.float32)
    with pytest.raises(TypeError, match="x: expected dtype"):
        ops.activation_fprop(cupy.ones(3, dtype=cupy.float64), "relu")
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.layer_norm_fprop(x.T)
    with pytest.raises(TypeError, match="all be NumPy or all CuPy"):
        ops.add_fprop(x, np.ones((4, 6), np.float32))
    with pytest.raises(TypeError, match="all be NumPy or all CuPy"):
        ops.layer_norm_bprop(x, x, None, np.zeros(4, np.float32), cupy.zeros(4, cupy.float32))
    with pytest.raises(ValueError, match="rstd: expected shape \\(4,\\)"):
        ops.layer_norm_bprop(x, x, None, cupy.zeros(4, cupy.float32), cupy.zeros(3, cupy.float32))


@pytest.mark.gpu
def test_gpu_self_check():
    rows = ops.self_check("cupy")
    assert all(ok for _, _, _, ok in rows), [r for r in rows if not r[3]]


# ---------------------------------------------------------------------------------------------------
# GPU: against PyTorch's own ops (float64 on the GPU as the reference)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_vs_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import cupy

    F_ = torch.nn.functional
    x = random_array(rng, (45, 300), dtype)
    b = random_array(rng, (300,), dtype)
    tx = torch.tensor(f64(x), device="cuda")
    tb = torch.tensor(f64(b), device="cuda")
    gx, gb = cupy.asarray(x), cupy.asarray(b)
    pairs = {
        "relu": F_.relu,
        "elu": F_.elu,
        "gelu_tanh": lambda t: F_.gelu(t, approximate="tanh"),
        "gelu_erf": F_.gelu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F_.softplus,
        "swish": F_.silu,
    }
    for act, fn in pairs.items():
        assert_close(ops.activation_fprop(gx, act, bias=gb), fn(tx + tb).cpu().numpy(), dtype, act)
    y, m, r = ops.layer_norm_fprop(gx, gb, gb)
    assert_close(y, F_.layer_norm(tx, (300,), tb, tb).cpu().numpy(), dtype, "layer_norm")
    y, m, r = ops.batch_norm_fprop(gx, gb, gb)
    assert_close(y, F_.batch_norm(tx, None, None, tb, tb, training=True).cpu().numpy(), dtype, "batch_norm")
    z = random_array(rng, (45, 4 * 75), dtype)
    cp = random_array(rng, (45, 75), dtype)
    tz, tcp = torch.tensor(f64(z), device="cuda"), torch.tensor(f64(cp), device="cuda")
    th, tc, _ = torch.ops.aten._thnn_fused_lstm_cell(
        tz, torch.zeros_like(tz), tcp
    )  # gates (i, f, g, o), as ours
    cs, hs = [tc], [th]
    c, h = ops.lstm_gates_fprop(cupy.asarray(z), cupy.asarray(cp))
    assert_close(c, torch.cat(cs).cpu().numpy(), dtype, "lstm c")
    assert_close(h, torch.cat(hs).cpu().numpy(), dtype, "lstm h")


# ---------------------------------------------------------------------------------------------------
# PyTorch adapter: autograd functions (CPU: the reference in float64 under torch.autograd.gradcheck)


def _torch_cases(torch, dev, dtype):
    from cusparseblocks.adapters import torch_ops as T

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dev, dtype).requires_grad_()
    bsmm = BlockSparseMatMul(np.array([[1, 0], [1, 1]], bool), block_size=8)
    return [
        ("activation", T.activation, (r(5, 7), "gelu_erf", r(7))),
        ("add", T.add_activation, (r(5, 7), r(7), "swish", 0.5)),
        ("mul", T.mul_activation, (r(5, 7), r(5, 1), "tanh")),
        ("scale", T.scale_activation, (r(5, 7), 1.5, "softplus")),
        ("mlstm", T.mlstm, (r(5, 7), r(5, 7))),
        ("dropout", T.dropout, (r(5, 7), 0.3, 11, 2)),
        ("layer_norm1", T.layer_norm, (r(5, 7), r(7), r(7), 1)),
        ("layer_norm0", T.layer_norm, (r(7, 5), r(7), r(7), 0)),
        ("batch_norm1", T.batch_norm, (r(6, 4), r(4), r(4), None, None, 1)),
        ("batch_norm0", T.batch_norm, (r(4, 6), r(4), r(4), None, None, 0)),
        ("weight_norm", T.weight_norm, (r(*bsmm.w_shape), r(bsmm.M), bsmm, "unit")),
        ("lstm_gates", T.lstm_gates, (r(3, 8), r(3, 2), 1)),
    ]


@pytest.mark.parametrize("index", range(12))
def test_torch_autograd_cpu(index):
    torch = pytest.importorskip("torch")
    name, fn, args = _torch_cases(torch, "cpu", torch.float64)[index]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def call(*ts):
        full = list(args)
        for i, t in zip(positions, ts):
            full[i] = t
        return fn(*full)

    assert torch.autograd.gradcheck(call, tensors, eps=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_torch_autograd_gpu(dtype_name):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    dtype = getattr(torch, dtype_name)
    for (name, fn, gargs), (_, _, cargs) in zip(
        _torch_cases(torch, "cuda", dtype), _torch_cases(torch, "cpu", dtype)
    ):
        outs = []
        for args in (gargs, cargs):
            out = fn(*args)
            out = out if isinstance(out, tuple) else (out,)
            loss = sum(
                (o.float() * (1 + torch.arange(o.numel(), device=o.device).reshape(o.shape) % 3)).sum()
                for o in out
            )
            loss.backward()
            outs.append(
                [o.detach().float().cpu() for o in out]
                + [a.grad.float().cpu() for a in args if isinstance(a, torch.Tensor)]
            )
        for i, (a, c) in enumerate(zip(*outs)):
            assert_close(a, c.double().numpy(), dtype_name, f"{name}[{i}]")
