"""Sparse persistent RNN: reference, plans and packed tables (CPU), kernels vs the float64 reference (GPU)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_close, poison

from cusparseblocks import rnn
from cusparseblocks.reference import rnn as ref

MODES = ("relu", "tanh", "lstm")


def make_model(rng, H, mode, kind, density=0.3, block_size=8):
    if kind == "block":
        mask, w = rnn.random_weights(rng, H, density, mode, block_size=block_size)
        return rnn.SparseRNN(w, mode, layout=mask, block_size=block_size)
    return rnn.SparseRNN(rnn.random_weights(rng, H, density, mode), mode)


def make_inputs(rng, model, T, B, dtype):
    G, H = model.gates, model.hidden_size
    u = (rng.standard_normal((T, B, G * H)) * 0.5).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
    c0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype) if model.mode == "lstm" else None
    return u, h0, c0


def reference(model, u, h0, c0, dtype):
    """float64 recurrence on the weights rounded to ``dtype``; h rounded per step as the kernel stores it."""
    W = model.weight(dtype)
    rd = np.float16 if np.dtype(dtype) == np.float16 else None
    return ref.rnn_forward(W, u, h0, c0, model.mode, round_dtype=rd)


def emulate(model, plan, u, h0, c0):
    """The persistent kernel's arithmetic on its packed tables, in float64 on the CPU.

    h slices a block did not load are NaN, so a missing dependency or a bad index shows up as NaN.
    """
    tab = plan.tables
    T, B, _ = u.shape
    H, G = model.hidden_size, model.gates
    Hp, bc, nch, L = plan.hidden_padded, plan.batch_chunk, plan.nchunks, plan.lanes
    words = tab["wpack"]
    if plan.dtype == "float16":
        w = (words & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64)
        k = (words >> 16).astype(np.int64)
        per_vec = 4
    else:
        w = words[0::2].view(np.float32).astype(np.float64)
        k = words[1::2].astype(np.int64)
        per_vec = 2
    item = np.dtype(plan.dtype).itemsize
    xch = np.zeros((T + 1, nch, Hp, bc))
    hp = np.zeros((nch * bc, Hp))
    hp[:B, :H] = h0
    xch[0] = hp.reshape(nch, bc, Hp).transpose(0, 2, 1)
    c = np.zeros((B, H)) if c0 is None else c0.astype(np.float64).copy()
    y = np.full((T, B, H), np.nan)
    starts = tab["unit_start"]
    per16 = 16 // item
    for t in range(1, T + 1):
        for blk in range(starts.size - 1):
            u0, u1 = int(starts[blk]), int(starts[blk + 1])
            units = u1 - u0
            pre = np.zeros((units * G, nch * bc))
            for ch in range(nch):
                flat = xch[t - 1, ch].ravel()
                hs = np.full(Hp * bc, np.nan)
                for r in range(tab["load_off"][blk], tab["load_off"][blk + 1]):
                    v0, nv = tab["load_range"][r]
                    hs[v0 * per16:(v0 + nv) * per16] = flat[v0 * per16:(v0 + nv) * per16]
                for r in range(units * G):
                    base, nvl = tab["row_info"][tab["row_off"][blk] + r]
                    v_first = tab["wvec_off"][blk] + base
                    sl = slice(v_first * per_vec, (v_first + nvl * L) * per_vec)
                    kk = k[sl]
                    assert np.all(kk < Hp)
                    pre[r, ch * bc:(ch + 1) * bc] = w[sl] @ hs.reshape(Hp, bc)[kk] if kk.size else 0.0
            for ul in range(units):
                j = u0 + ul
                if j >= H:
                    continue
                p = [pre[g * units + ul, :B] + u[t - 1, :, g * H + j].astype(np.float64) for g in range(G)]
                if model.mode == "relu":
                    h = np.maximum(p[0], 0)
                elif model.mode == "tanh":
                    h = np.tanh(p[0])
                else:
                    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
                    c[:, j] = sig(p[1]) * c[:, j] + sig(p[0]) * np.tanh(p[2])
                    h = sig(p[3]) * np.tanh(c[:, j])
                h = h.astype(plan.dtype).astype(np.float64)
                y[t - 1, :, j] = h
                for b in range(B):
                    xch[t, b // bc, j, b % bc] = h[b]
    return y, (c if model.mode == "lstm" else None)


# ---------------------------------------------------------------------------------------------------
# reference

@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_dense_loop(rng, mode):
    model = make_model(rng, 37, mode, "csr")
    u, h0, c0 = make_inputs(rng, model, 5, 3, np.float64)
    y, c = model.forward(u, h0, c0)
    yd, cd = rnn._dense_recurrence(model.weight().toarray(), u, h0, c0, mode)
    assert_close(y, yd, "float64")
    if mode == "lstm":
        assert_close(c, cd, "float64")
    else:
        assert c is None


def test_reference_lstm_gate_order(rng):
    """Gate order (i, f, g, o): with W = 0 a cell is c = σ(u_f)·c0 + σ(u_i)·tanh(u_g), h = σ(u_o)·tanh(c)."""
    H, B = 5, 2
    u = rng.standard_normal((1, B, 4 * H))
    c0 = rng.standard_normal((B, H))
    y, c = ref.rnn_forward(sp.csr_matrix((H, 4 * H)), u, np.zeros((B, H)), c0, "lstm")
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    i, f, g, o = (u[0][:, k * H:(k + 1) * H] for k in range(4))
    cc = sig(f) * c0 + sig(i) * np.tanh(g)
    np.testing.assert_allclose(c, cc, rtol=1e-12)
    np.testing.assert_allclose(y[0], sig(o) * np.tanh(cc), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_numpy_path_in_dtype(rng, dtype):
    model = make_model(rng, 24, "tanh", "block")
    u, h0, _ = make_inputs(rng, model, 4, 2, dtype)
    out = poison(np, (4, 2, 24), dtype)
    y, c = model.forward(u, h0, out=out)
    assert y is out and y.dtype == np.dtype(dtype) and c is None
    W = model.weight(dtype)
    assert_close(y, ref.rnn_forward(W, u, h0, None, "tanh")[0], dtype)


def test_block_weights_expand_to_dense(rng):
    mask, w = rnn.random_weights(rng, 32, 0.4, "lstm", block_size=8)
    model = rnn.SparseRNN(w, "lstm", layout=mask, block_size=8)
    from cusparseblocks import BlockSparseMatMul

    dense = BlockSparseMatMul(mask, 8).dense(w)
    np.testing.assert_array_equal(model.weight().toarray(), dense)
    assert model.weight().nnz == int(mask.sum()) * 64  # explicit zeros inside blocks kept


# ---------------------------------------------------------------------------------------------------
# plans and packed tables (CPU emulation of the kernel)

@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["csr", "block"])
@pytest.mark.parametrize("H,B", [(40, 1), (77, 3), (96, 13)])
def test_tables_emulated(rng, dtype, mode, kind, H, B):
    if kind == "block" and H % 8:
        H = H // 8 * 8 + 8
    model = make_model(rng, H, mode, kind)
    plan = model.plan(dtype, B, sm_count=int(rng.integers(3, 40)), smem_per_block=232448, tables=True)
    assert plan.persistent
    u, h0, c0 = make_inputs(rng, model, 3, B, dtype)
    y, c = emulate(model, plan, u, h0, c0)
    yr, cr = reference(model, u, h0, c0, dtype)
    assert_close(y, yr, dtype)
    if mode == "lstm":
        assert_close(c, cr, dtype)


@pytest.mark.parametrize("lanes", [4, 8, 16, 32])
def test_tables_every_lane_count(rng, lanes):
    model = make_model(rng, 50, "tanh", "csr", density=0.5)
    plan = model.plan("float16", 5, sm_count=7, smem_per_block=232448, lanes=lanes, tables=True)
    assert plan.lanes == lanes
    u, h0, _ = make_inputs(rng, model, 2, 5, "float16")
    assert_close(emulate(model, plan, u, h0, None)[0], reference(model, u, h0, None, "float16")[0], "float16")


def test_tables_sparse_dependencies(rng):
    """Block-diagonal W: each block reads only its own slice, so it waits on (and loads) few blocks."""
    H, b = 64, 8
    mask = np.eye(H // b, dtype=bool)
    w = rng.standard_normal((H // b, b, b)) * 0.3
    model = rnn.SparseRNN(w, "tanh", layout=mask, block_size=b)
    plan = model.plan("float32", 2, sm_count=8, smem_per_block=232448, tables=True)
    deps = np.diff(plan.tables["dep_off"])
    assert deps.max() <= 2
    u, h0, _ = make_inputs(rng, model, 3, 2, "float32")
    assert_close(emulate(model, plan, u, h0, None)[0], reference(model, u, h0, None, "float32")[0], "float32")


def test_empty_rows_and_units(rng):
    """Units with no nonzeros at all (pruned away) still get h = f(u)."""
    H = 30
    W = rnn.random_weights(rng, H, 0.3, "relu").tolil()
    W[:, 5:15] = 0
    W[10:20, :] = 0
    model = rnn.SparseRNN(sp.csr_matrix(W), "relu")
    plan = model.plan("float32", 2, sm_count=16, smem_per_block=232448, tables=True)
    u, h0, _ = make_inputs(rng, model, 3, 2, "float32")
    assert_close(emulate(model, plan, u, h0, None)[0], reference(model, u, h0, None, "float32")[0], "float32")


@pytest.mark.parametrize("access,lanes", [(8, 16), (16, 8), (4, 32), (2, 16), (8, 4)])
def test_bank_order_deals_distinct_classes(rng, access, lanes):
    """Consecutive nonzeros of a row (gathered by one phase of lanes) start in different bank classes."""
    H = 2000
    k = np.sort(rng.choice(H, 600, replace=False))
    row_of = np.zeros(k.size, dtype=np.int64)
    order = rnn._bank_order(row_of, k, access, np.zeros(k.size, dtype=np.int64))
    assert np.array_equal(np.sort(order), np.arange(k.size))
    phase = min(lanes, 32 if access <= 4 else 128 // access)
    nclass = 32 // (access // 4) if access >= 4 else 32
    cls = k % nclass if access >= 4 else (k // 2) % 32
    full = np.bincount(cls, minlength=nclass).min() * nclass
    dealt = cls[order][:full]                         # while every class still has nonzeros
    for start in range(0, dealt.size - phase, phase):
        group = dealt[start:start + phase]
        assert np.unique(group).size == group.size


def test_plan_too_large_is_not_persistent(rng):
    model = make_model(rng, 1024, "tanh", "csr", density=0.5)
    plan = model.plan("float32", 4, sm_count=8, smem_per_block=232448)
    assert not plan.persistent and "shared memory" in plan.reason and plan.path == "fallback"
    assert model.plan("float32", 4, sm_count=132, smem_per_block=232448).persistent


def test_plan_batch_too_large_for_items(rng):
    model = make_model(rng, 600, "tanh", "csr", density=0.05)
    plan = model.plan("float16", 32, sm_count=4, smem_per_block=232448)
    assert not plan.persistent and "pointwise items" in plan.reason


def test_max_hidden_size():
    h16 = rnn.max_hidden_size("float16", 0.3, 4, sm_count=132, smem_per_block=232448)
    h32 = rnn.max_hidden_size("float32", 0.3, 4, sm_count=132, smem_per_block=232448)
    assert h16 % 8 == 0 and 2304 <= h32 < h16
    assert rnn.max_hidden_size("float16", 0.05, 4, sm_count=132, smem_per_block=232448) > h16
    assert rnn.max_hidden_size("float16", 0.3, 4, "lstm", sm_count=132, smem_per_block=232448) < h16
    rows = np.full((1, h16 + 64), int(round(0.3 * (h16 + 64))))
    assert not rnn._size_plan(rows, h16 + 64, 1, "float16", 4, 132, 232448)[0].persistent


# ---------------------------------------------------------------------------------------------------
# validation

def _model(rng, mode="tanh"):
    return make_model(rng, 16, mode, "csr")


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        rnn.SparseRNN(np.eye(4), "gru")


def test_bad_weight_shape():
    with pytest.raises(ValueError, match=r"weight: expected shape \[H, 4·H\]"):
        rnn.SparseRNN(np.ones((4, 8)), "lstm")
    with pytest.raises(TypeError, match="weight"):
        rnn.SparseRNN(np.array([["a"]]), "tanh")


def test_bad_block_args(rng):
    mask, w = rnn.random_weights(rng, 16, 0.5, "tanh", block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        rnn.SparseRNN(w, "tanh", layout=mask)
    with pytest.raises(ValueError, match="block_size"):
        rnn.SparseRNN(np.eye(4), "tanh", block_size=8)
    with pytest.raises(ValueError, match="layout"):
        rnn.SparseRNN(w, "lstm", layout=mask, block_size=8)
    with pytest.raises(ValueError, match="weight: expected shape"):
        rnn.SparseRNN(w[:-1], "tanh", layout=mask, block_size=8)


def test_bad_inputs(rng):
    m = _model(rng)
    u, h0, _ = make_inputs(rng, m, 3, 2, np.float32)
    with pytest.raises(ValueError, match="u: expected 3 dimensions"):
        m.forward(u[0], h0)
    with pytest.raises(ValueError, match="u: expected 16 on axis 2"):
        m.forward(u[:, :, :-1].copy(), h0)
    with pytest.raises(ValueError, match="u: expected at least one timestep"):
        m.forward(u[:0], h0)
    with pytest.raises(ValueError, match="h0: expected shape"):
        m.forward(u, h0[:1])
    with pytest.raises(TypeError, match="h0: expected dtype float32"):
        m.forward(u, h0.astype(np.float64))
    with pytest.raises(TypeError, match="u: expected dtype"):
        m.forward(u.astype(np.int32), h0)
    with pytest.raises(ValueError, match="c0: only the LSTM"):
        m.forward(u, h0, h0)
    with pytest.raises(ValueError, match="C-contiguous"):
        m.forward(np.asfortranarray(u), h0)
    with pytest.raises(ValueError, match="path"):
        m.forward(u, h0, path="fast")
    with pytest.raises(ValueError, match="slots: expected at least"):
        m.plan_tc(2, slots=0, config=(64, 1, 84), sm_count=4, smem_per_block=232448)
    with pytest.raises(ValueError, match="lanes"):
        m.forward(u, h0, lanes=3)
    with pytest.raises(ValueError, match="exchange"):
        m.forward(u, h0, exchange="mpi")
    with pytest.raises(ValueError, match="cluster"):
        m.plan_tc(2, cluster=3)
    with pytest.raises(ValueError, match="out: expected shape"):
        m.forward(u, h0, out=np.empty((3, 2, 15), np.float32))
    with pytest.raises(TypeError, match="u: expected a numpy.ndarray or cupy.ndarray"):
        m.forward(u.tolist(), h0)


def test_bad_lstm_c0(rng):
    m = _model(rng, "lstm")
    u, h0, c0 = make_inputs(rng, m, 2, 2, np.float32)
    with pytest.raises(ValueError, match="c0: expected shape"):
        m.forward(u, h0, c0[:1])
    with pytest.raises(TypeError, match="c0: expected dtype float32"):
        m.forward(u, h0, c0.astype(np.float16))


def test_bad_plan_and_size_args(rng):
    m = _model(rng)
    with pytest.raises(TypeError, match="dtype"):
        m.plan("float64", 4)
    with pytest.raises(ValueError, match="density"):
        rnn.max_hidden_size("float16", 0.0)
    with pytest.raises(TypeError, match="dtype"):
        rnn.max_hidden_size("bfloat16", 0.3)
    with pytest.raises(ValueError, match="backend"):
        rnn.self_check("jax")


def test_hidden_size_limit():
    with pytest.raises(ValueError, match="65535"):
        rnn.SparseRNN(sp.csr_matrix((65536, 65536)), "tanh")


def test_self_check_numpy():
    rows = rnn.self_check("numpy")
    assert len(rows) == 6 and all(ok for _, _, ok in rows)


def test_registered_specializations():
    from cusparseblocks import compiler

    specs = compiler.all_specializations()["rnn"]
    # 2 dtypes × 3 modes × 4 batch chunks × (flags + step + sentinel HS float/T), + the tensor-core cases
    assert len(specs) == 84 + sum(len(v) for v in rnn._TC_REGISTERED.values()) + len(rnn._TC_CLUSTER_REGISTERED)


# ---------------------------------------------------------------------------------------------------
# GPU

def check_gpu(model, u, h0, c0, dtype, **kwargs):
    """forward on the GPU against the float64 reference, every element of y (and c_T); returns y."""
    import cupy

    y, c = model.forward(cupy.asarray(u), cupy.asarray(h0), None if c0 is None else cupy.asarray(c0), **kwargs)
    yr, cr = reference(model, u, h0, c0, dtype)
    assert_close(y, yr, dtype, "y")
    if model.mode == "lstm":
        assert_close(c, cr, dtype, "c_T")
    return y


@pytest.mark.gpu
@pytest.mark.parametrize("exchange", ["flags", "sentinel"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["csr", "block"])
@pytest.mark.parametrize("H,B", [(77, 1), (256, 4), (1000, 9), (520, 32)])
def test_gpu_persistent(rng, exchange, dtype, mode, kind, H, B):
    import cupy

    if kind == "block":
        H = H // 8 * 8 + (8 if H % 8 else 0)
    model = make_model(rng, H, mode, kind, density=0.2)
    u, h0, c0 = make_inputs(rng, model, 12, B, dtype)
    out = poison(cupy, (12, B, H), dtype)
    y = check_gpu(model, u, h0, c0, dtype, out=out, path="persistent", exchange=exchange)
    assert y is out


@pytest.mark.gpu
@pytest.mark.parametrize("exchange", ["sentinel", "cluster", "counter", "block_flags", "group_counter"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["csr", "block"])
@pytest.mark.parametrize("H,B", [(77, 1), (256, 4), (1000, 8), (520, 16), (333, 5)])
def test_gpu_tc(rng, exchange, mode, kind, H, B):
    """The tensor-core kernel (forced; both exchanges) against the float64 reference: ragged H, B 1/4/5/8/16,
    poisoned y."""
    import cupy

    if kind == "block":
        H = H // 8 * 8 + (8 if H % 8 else 0)
    model = make_model(rng, H, mode, kind, density=0.2)
    assert model.plan_tc(B).fits
    u, h0, c0 = make_inputs(rng, model, 12, B, "float16")
    out = poison(cupy, (12, B, H), "float16")
    try:
        y = check_gpu(model, u, h0, c0, "float16", out=out, path="tc", exchange=exchange)
    except ValueError as exc:     # clusters pack per GPC: a plan may not fit them all; refused, never hung
        assert exchange == "cluster" and "co-resident" in str(exc)
        return
    assert y is out


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_auto_takes_tc_for_fp16(rng, mode, monkeypatch):
    """With LAUNCH["tc_default"], fp16 auto runs the tensor-core kernel where it fits (same result as forcing
    it); fp32 never does."""
    import cupy

    monkeypatch.setitem(rnn.LAUNCH, "tc_default", True)
    model = make_model(rng, 300, mode, "csr", density=0.3)
    assert model.plan("float16", 4).path == "tc" and model.plan("float32", 4).path == "persistent"
    u, h0, c0 = make_inputs(rng, model, 9, 4, "float16")
    args = (cupy.asarray(u), cupy.asarray(h0), None if c0 is None else cupy.asarray(c0))
    y_auto = check_gpu(model, u, h0, c0, "float16")
    y_tc, _ = model.forward(*args, path="tc")
    assert bool((y_auto == y_tc).all())
    with pytest.raises(ValueError, match="float16 only"):
        model.forward(*(a.astype(cupy.float32) if a is not None else None for a in args), path="tc")


@pytest.mark.gpu
def test_gpu_tc_empty_rows_and_block_skips(rng):
    """Units with no nonzeros, and block-sparse tiles whose all-zero k-steps are skipped."""
    import cupy

    H = 200
    W = rnn.random_weights(rng, H, 0.3, "tanh").tolil()
    W[:, 16:48] = 0
    W[100:180, :] = 0
    model = rnn.SparseRNN(sp.csr_matrix(W), "tanh")
    u, h0, _ = make_inputs(rng, model, 8, 4, "float16")
    check_gpu(model, u, h0, None, "float16", out=poison(cupy, (8, 4, H), "float16"), path="tc")
    mask = np.zeros((H // 8, H // 8), dtype=bool)
    mask[np.arange(H // 8), np.arange(H // 8)] = True
    mask[np.arange(H // 8), (np.arange(H // 8) + 5) % (H // 8)] = True
    w = rng.standard_normal((int(mask.sum()), 8, 8)) * 0.3
    model = rnn.SparseRNN(w, "tanh", layout=mask, block_size=8)
    plan = model.plan_tc(4, tables=True)
    assert int(plan.tables["kcount"].sum()) < plan.blocks * plan.tiles * -(-H // 16)
    check_gpu(model, u, h0, None, "float16", out=poison(cupy, (8, 4, H), "float16"), path="tc")


@pytest.mark.gpu
def test_gpu_tc_too_large_takes_sparse(rng):
    """An LSTM whose A fragments do not fit in registers: auto runs the sparse kernel, path='tc' raises."""
    import cupy

    W = rnn.random_weights(rng, 2304, 0.3, "lstm")
    model = rnn.SparseRNN(W, "lstm")
    assert not model.plan_tc(4).fits and model.plan("float16", 4).path == "persistent"
    assert not model.plan_tc(4, cluster=4).fits
    u, h0, c0 = make_inputs(rng, model, 4, 4, "float16")
    with pytest.raises(ValueError, match="tensor-core kernel cannot run"):
        model.forward(cupy.asarray(u), cupy.asarray(h0), cupy.asarray(c0), path="tc")
    check_gpu(model, u, h0, c0, "float16")


@pytest.mark.gpu
def test_gpu_tc_long_sequence_stable(rng):
    """T = 256 at the headline shape on the tensor-core kernel: right, and bit-identical run to run."""
    import cupy

    model = make_model(rng, 2304, "tanh", "csr", density=0.3)
    assert model.plan_tc(4).fits
    u, h0, _ = make_inputs(rng, model, 256, 4, "float16")
    ud, hd = cupy.asarray(u), cupy.asarray(h0)
    y1, _ = model.forward(ud, hd, path="tc")
    y2, _ = model.forward(ud, hd, path="tc")
    assert_close(y1, reference(model, u, h0, None, "float16")[0], "float16")
    assert bool((y1 == y2).all())
    for cluster in (2, 4, 8):                      # the cluster exchange: the same sums, bit for bit
        plan = model.plan_tc(4, cluster=cluster, tables=True)
        y3, _ = model._run_tc(plan, ud, hd, None)
        assert bool((y1 == y3).all()), cluster
    for exchange in ("counter", "block_flags", "group_counter", "sentinel"):
        y4, _ = model.forward(ud, hd, path="tc", exchange=exchange)
        assert bool((y1 == y4).all()), exchange


@pytest.mark.gpu
def test_gpu_tc_watchdog_and_profile(rng):
    """Half the blocks: the waiters give up with an error; prof stamps increase and y stays right."""
    import cupy

    model = make_model(rng, 600, "tanh", "csr", density=0.2)
    plan = model.plan_tc(4, tables=True)
    u, h0, _ = make_inputs(rng, model, 9, 4, "float16")
    ud, hd = cupy.asarray(u), cupy.asarray(h0)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="watchdog"):
        model._run_tc(plan, ud, hd, None, grid=plan.blocks // 2, timeout_s=0.2)
    assert time.perf_counter() - start < 30
    prof = cupy.zeros((plan.blocks, 10, 4), dtype=cupy.int64)
    y, _ = model._run_tc(plan, ud, hd, None, prof=prof)
    assert_close(y, reference(model, u, h0, None, "float16")[0], "float16")
    p = prof.get()
    stamps = p[:, 1:, :].reshape(plan.blocks, -1)
    assert (p[:, 0, 3] > 0).all() and (np.diff(stamps, axis=1) >= 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H,B", [(77, 3), (300, 17)])
def test_gpu_fallback(rng, dtype, mode, H, B):
    import cupy

    model = make_model(rng, H, mode, "csr", density=0.2)
    u, h0, c0 = make_inputs(rng, model, 7, B, dtype)
    check_gpu(model, u, h0, c0, dtype, out=poison(cupy, (7, B, H), dtype), path="fallback")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tanh", "lstm"])
def test_gpu_fallback_repeated_calls(rng, mode):
    """Later calls on one model (compiled kernels, cached CSR) with fresh inputs give fresh, right results."""

    model = make_model(rng, 150, mode, "csr", density=0.2)
    for dtype in ("float32", "float32", "float16", "float32"):
        u, h0, c0 = make_inputs(rng, model, 5, 3, dtype)
        check_gpu(model, u, h0, c0, dtype, path="fallback")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H,B", [(256, 4), (1000, 9), (520, 32)])
def test_gpu_sentinel_h_in_storage_dtype(rng, mode, H, B):
    """The sentinel kernel with fp16 h in shared memory (the plan's choice when fp32 h does not fit)."""
    import cupy

    model = make_model(rng, H, mode, "csr", density=0.2)
    plan = model.plan("float16", B, h_float=False, tables=True)
    assert plan.persistent and not plan.h_float
    u, h0, c0 = make_inputs(rng, model, 12, B, "float16")
    out = poison(cupy, (12, B, H), "float16")
    y, c = model._run_persistent(plan, cupy.asarray(u), cupy.asarray(h0), None if c0 is None else cupy.asarray(c0),
                                 out, exchange="sentinel")
    yr, cr = reference(model, u, h0, c0, "float16")
    assert y is out
    assert_close(y, yr, "float16", "y")
    if mode == "lstm":
        assert_close(c, cr, "float16", "c_T")


@pytest.mark.gpu
@pytest.mark.parametrize("poll_all", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_gpu_sentinel_poll_modes(rng, poll_all, dtype):
    """Both ways of re-reading unwritten exchange vectors (one at a time, all together), either dtype."""
    import cupy

    model = make_model(rng, 1000, "tanh", "csr", density=0.2)
    plan = model.plan(dtype, 9, tables=True)
    u, h0, _ = make_inputs(rng, model, 20, 9, dtype)
    out = poison(cupy, (20, 9, 1000), dtype)
    y, _ = model._run_persistent(plan, cupy.asarray(u), cupy.asarray(h0), None, out, exchange="sentinel",
                                 poll_all=poll_all)
    assert_close(y, reference(model, u, h0, None, dtype)[0], dtype)


@pytest.mark.gpu
def test_gpu_step_profile(rng):
    """prof (benchmark stamps): every block writes increasing clock64 stamps for every step; y stays right."""
    import cupy

    model = make_model(rng, 600, "tanh", "csr", density=0.2)
    plan = model.plan("float16", 4, tables=True)
    u, h0, _ = make_inputs(rng, model, 9, 4, "float16")
    prof = cupy.zeros((plan.blocks, 10, 4), dtype=cupy.int64)
    y, _ = model._run_persistent(plan, cupy.asarray(u), cupy.asarray(h0), None, exchange="sentinel", prof=prof)
    assert_close(y, reference(model, u, h0, None, "float16")[0], "float16")
    p = prof.get()
    assert (p[:, 0, 3] > 0).all() and (p[:, 0, 2] > p[:, 0, 1]).all() and (p[:, 0, 1] >= p[:, 0, 0]).all()
    stamps = p[:, 1:, :].reshape(plan.blocks, -1)
    assert (np.diff(stamps, axis=1) >= 0).all() and (stamps[:, 0] >= p[:, 0, 1]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("exchange", ["flags", "sentinel"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_long_sequence_stable(rng, exchange, dtype):
    """T = 256 at the headline shape: a race between steps would show up as a wrong or moving result."""
    import cupy

    model = make_model(rng, 2304, "tanh", "csr", density=0.3)
    u, h0, _ = make_inputs(rng, model, 256, 4, dtype)
    ud, hd = cupy.asarray(u), cupy.asarray(h0)
    y1, _ = model.forward(ud, hd, path="persistent", exchange=exchange)
    y2, _ = model.forward(ud, hd, path="persistent", exchange=exchange)
    assert_close(y1, reference(model, u, h0, None, dtype)[0], dtype)
    assert bool((y1 == y2).all())


@pytest.mark.gpu
def test_gpu_too_large_takes_fallback_or_raises(rng):
    """A model whose weights do not fit on-chip: auto -> fallback (correct), persistent -> ValueError; never hangs."""
    import cupy

    H = rnn.max_hidden_size("float32", 0.3, 2) + 512
    W = rnn.random_weights(rng, H, 0.3, "tanh")
    model = rnn.SparseRNN(W, "tanh")
    assert not model.plan("float32", 2).persistent
    u, h0, _ = make_inputs(rng, model, 3, 2, "float32")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="persistent kernel cannot run"):
        model.forward(cupy.asarray(u), cupy.asarray(h0), path="persistent")
    y, _ = model.forward(cupy.asarray(u), cupy.asarray(h0))
    assert_close(y, reference(model, u, h0, None, "float32")[0], "float32")
    assert time.perf_counter() - start < 120


@pytest.mark.gpu
@pytest.mark.parametrize("exchange", ["flags", "sentinel"])
def test_gpu_watchdog_never_hangs(rng, exchange):
    """Launch fewer blocks than planned: the others never publish h_t, and the waiters give up with an error."""
    import cupy

    model = make_model(rng, 256, "tanh", "csr")
    plan = model.plan("float32", 2, tables=True)
    u, h0, _ = make_inputs(rng, model, 4, 2, "float32")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="watchdog"):
        model._run_persistent(plan, cupy.asarray(u), cupy.asarray(h0), None, grid=plan.blocks // 2, timeout_s=0.2,
                              exchange=exchange)
    assert time.perf_counter() - start < 30


@pytest.mark.gpu
def test_gpu_self_check():
    rows = rnn.self_check("cupy")
    bad = [r for r in rows if not r[2]]
    assert not bad, bad


# ---------------------------------------------------------------------------------------------------
# PyTorch adapter

def test_torch_module_cpu(rng):
    torch = pytest.importorskip("torch")
    from cusparseblocks.adapters.torch_rnn import SparsePersistentRNN

    W = rnn.random_weights(rng, 20, 0.3, "lstm")
    mod = SparsePersistentRNN(W, "lstm")
    u = torch.from_numpy(rng.standard_normal((4, 3, 80)).astype(np.float32))
    y, hT, cT = mod(u)
    yr, cr = ref.rnn_forward(W, u.numpy(), np.zeros((3, 20)), None, "lstm")
    assert_close(y, yr, "float32")
    assert_close(cT, cr, "float32")
    assert torch.equal(hT, y[-1])
    with pytest.raises(NotImplementedError, match="no backward"):
        mod(u.clone().requires_grad_())
    with pytest.raises(TypeError, match="u: expected a torch.Tensor"):
        mod(u.numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_torch_module_gpu(rng, dtype):
    torch = pytest.importorskip("torch")
    from cusparseblocks.adapters.torch_rnn import SparsePersistentRNN

    model = make_model(rng, 300, "tanh", "csr")
    mod = SparsePersistentRNN(model.weight(), "tanh", path="persistent")
    u, h0, _ = make_inputs(rng, model, 9, 4, dtype)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y, hT, _ = mod(torch.from_numpy(u).cuda(), torch.from_numpy(h0).cuda())
    stream.synchronize()
    assert y.is_cuda and y.dtype == getattr(torch, dtype)
    assert_close(y.float().cpu().numpy(), reference(model, u, h0, None, dtype)[0], dtype)


# ---------------------------------------------------------------------------------------------------
# The real kernels/rnn.cu on the CPU: every CUDA thread a pthread, all blocks at once (so blocks really
# wait for each other), __syncthreads and shuffles as barriers, the PTX helpers as C++ atomics. Checks
# the kernels' indexing, barriers and exchange protocols without a GPU (not the GPU memory model).

_EMU_SHIM = r"""
#pragma once
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <deque>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
extern thread_local emu_dim3 threadIdx, blockIdx;
struct int2 { int x, y; };
struct uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct float2 { float x, y; };
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline float2 make_float2(float x, float y) { return {x, y}; }
unsigned char* emu_block_smem();
int* emu_block_int();
void __syncthreads();
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint4 ld_relaxed_v4(const void* p) {
  std::this_thread::yield();
  const unsigned* q = (const unsigned*)p;
  return {__atomic_load_n(q, __ATOMIC_RELAXED), __atomic_load_n(q + 1, __ATOMIC_RELAXED),
          __atomic_load_n(q + 2, __ATOMIC_RELAXED), __atomic_load_n(q + 3, __ATOMIC_RELAXED)};
}
inline uint4 __ldcg(const uint4* p) {
  const unsigned* q = (const unsigned*)p;
  return {__atomic_load_n(q, __ATOMIC_RELAXED), __atomic_load_n(q + 1, __ATOMIC_RELAXED),
          __atomic_load_n(q + 2, __ATOMIC_RELAXED), __atomic_load_n(q + 3, __ATOMIC_RELAXED)};
}
inline int ld_acquire_gpu(const int* p) { std::this_thread::yield(); return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void st_release_gpu(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
inline void red_release_gpu_add(int* p, int v) { __atomic_fetch_add(p, v, __ATOMIC_RELEASE); }
inline void fence_acq_rel_gpu() { std::atomic_thread_fence(std::memory_order_acq_rel); }
inline void st_relaxed_u16(unsigned short* p, unsigned short v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void st_relaxed_u32(unsigned* p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline long long clock64() { return 0; }
// rnn_persistent_tc: plain shared-memory loads; mma16816, cp.async and smem_u32 come from
// tests/cuda_emulation/conv_ptx_emulated.h on this block's shared memory and warp barriers
inline int lds_s32(const int* p) { return *p; }
inline uint2 lds_v2u32(const void* p) { uint2 v; std::memcpy(&v, p, 8); return v; }
uint32_t (*emu_block_scratch())[32][8];
void emu_warp_sync();
#define smem_raw (emu_block_smem())
#define emu_scratch (emu_block_scratch())
// thread-block clusters: consecutive blocks, a std::barrier per cluster, peer shared memory by pointer
unsigned cluster_ctarank();
void cluster_arrive();
void cluster_wait();
void st_cluster_v4(unsigned addr, unsigned rank, const uint4& v);
inline unsigned long long global_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}
"""

_EMU_FP16 = r"""
#pragma once
#include "rnn_host_emulation.h"
struct __half { unsigned short x; };
struct __half2 { __half a, b; };
inline float __half2float(__half h) { _Float16 f; std::memcpy(&f, &h.x, 2); return (float)f; }
inline __half __float2half_rn(float v) { _Float16 f = (_Float16)v; __half h; std::memcpy(&h.x, &f, 2); return h; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.a), __half2float(h.b)}; }
inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
"""

_EMU_BF16 = r"""
#pragma once
#include "rnn_host_emulation.h"
struct __nv_bfloat16 { unsigned short x; };
inline float __bfloat162float(__nv_bfloat16 h) { unsigned u = (unsigned)h.x << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { unsigned u; std::memcpy(&u, &v, 4); return {(unsigned short)(u >> 16)}; }
"""

_EMU_DRIVER = r"""
#include "rnn_host_emulation.h"
#include "rnn.cu"
#include <fstream>
#include <functional>
#include <map>
#include <pthread.h>
#include <string>
#include <vector>
#include <deque>
#include <optional>

thread_local emu_dim3 threadIdx, blockIdx;
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint4> smem;
  int shared_int = 0;
  float scratch[RNN_THREADS / 32][32];
  uint32_t scratch8[RNN_THREADS / 32][32][8];
};
thread_local Block* emu_blk;
thread_local std::vector<EmuCopy> emu_open_group;
thread_local std::deque<std::vector<EmuCopy>> emu_groups;
unsigned char* emu_block_smem() { return reinterpret_cast<unsigned char*>(emu_blk->smem.data()); }
uint32_t (*emu_block_scratch())[32][8] { return emu_blk->scratch8; }
void emu_warp_sync() { emu_blk->warps[threadIdx.x / 32]->arrive_and_wait(); }
static int emu_cluster = 1;
static std::vector<Block>* emu_blocks = nullptr;
static std::vector<std::unique_ptr<std::barrier<>>> emu_cluster_bars;
thread_local std::optional<std::barrier<>::arrival_token> emu_token;
unsigned cluster_ctarank() { return blockIdx.x % emu_cluster; }
void cluster_arrive() { emu_token.emplace(emu_cluster_bars[blockIdx.x / emu_cluster]->arrive()); }
void cluster_wait() {
  emu_cluster_bars[blockIdx.x / emu_cluster]->wait(std::move(*emu_token));
  emu_token.reset();
}
void st_cluster_v4(unsigned addr, unsigned rank, const uint4& v) {
  Block& peer = (*emu_blocks)[blockIdx.x / emu_cluster * emu_cluster + rank];
  std::memcpy(reinterpret_cast<unsigned char*>(peer.smem.data()) + addr, &v, 16);
}
int* emu_block_int() { return &emu_blk->shared_int; }
void __syncthreads() { emu_blk->bar->arrive_and_wait(); }
float __shfl_xor_sync(unsigned, float v, int o) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  emu_blk->scratch[w][l] = v;
  emu_blk->warps[w]->arrive_and_wait();
  const float r = emu_blk->scratch[w][l ^ o];
  emu_blk->warps[w]->arrive_and_wait();
  return r;
}

static std::string dir;
static std::map<std::string, long long> S;
static std::map<std::string, std::vector<uint4>> A;  // 16-byte aligned storage
template <typename P> P* arr(const char* name) {
  auto it = A.find(name);
  if (it == A.end()) {
    std::ifstream f(dir + "/" + name + ".bin", std::ios::binary | std::ios::ate);
    if (!f) return nullptr;
    const size_t n = f.tellg();
    std::vector<uint4> v(n / 16 + 1);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), n);
    it = A.emplace(name, std::move(v)).first;
    S[std::string(name) + "#bytes"] = n;
  }
  return reinterpret_cast<P*>(it->second.data());
}
static void save(const char* name) {
  std::ofstream f(dir + "/" + name + ".out", std::ios::binary);
  f.write(reinterpret_cast<const char*>(A[name].data()), S[std::string(name) + "#bytes"]);
}

struct Job { std::function<void()> fn; };
static void* trampoline(void* p) { static_cast<Job*>(p)->fn(); return nullptr; }

// every block's barriers and poisoned shared memory, then one pthread per CUDA thread running
// kernel(block, thread) with the thread's CUDA coordinates set; joins them and saves the outputs
template <typename K> void launch(int nblk, int threads, std::vector<Block>& blocks, K kernel) {
  for (auto& b : blocks) {
    b.bar = std::make_unique<std::barrier<>>(threads);
    for (int w = 0; w < threads / 32; ++w) b.warps.push_back(std::make_unique<std::barrier<>>(32));
    b.smem.assign(S["smem"] / 16 + 1, uint4{0xcdcdcdcdu, 0xcdcdcdcdu, 0xcdcdcdcdu, 0xcdcdcdcdu});
  }
  std::vector<Job> jobs(nblk * threads);
  std::vector<pthread_t> th(jobs.size());
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (int b = 0; b < nblk; ++b)
    for (int t = 0; t < threads; ++t) {
      jobs[b * threads + t].fn = [&, b, t] {
        blockIdx.x = b;
        threadIdx.x = t;
        emu_blk = &blocks[b];
        kernel();
      };
      if (pthread_create(&th[b * threads + t], &attr, trampoline, &jobs[b * threads + t])) std::abort();
    }
  for (auto& x : th) pthread_join(x, nullptr);
  save("y");
  save("status");
  if (A.count("c_out")) save("c_out");
}

template <typename T, int MODE, int BC> void run() {
  const int nblk = S["grid"];
  std::vector<Block> blocks(nblk);
  const uint4* wpack = arr<uint4>("wpack");
  const int *wvec_off = arr<int>("wvec_off"), *row_off = arr<int>("row_off"), *unit_start = arr<int>("unit_start");
  const int *dep_off = arr<int>("dep_off"), *dep_block = arr<int>("dep_block"), *load_off = arr<int>("load_off");
  const int2 *row_info = arr<int2>("row_info"), *load_range = arr<int2>("load_range");
  const T *u = arr<T>("u"), *c0 = arr<T>("c0");
  T *y = arr<T>("y"), *c_out = arr<T>("c_out"), *xch = arr<T>("xch");
  int *flags = arr<int>("flags"), *status = arr<int>("status");
  const int H = S["H"], Hp = S["Hp"], B = S["B"], steps = S["steps"], nch = S["nchunks"], lanes = S["lanes"];
  const int sw = S["smem_wvec"], sr = S["smem_rows"];
  const long long timeout = S["timeout_ns"];
  launch(nblk, RNN_THREADS, blocks, [&] {
    if (S["sentinel"] && S["h_float"])
      rnn_persistent_sentinel<T, MODE, BC, float>(wpack, wvec_off, row_info, row_off, unit_start, load_range,
                                                  load_off, u, c0, y, c_out, xch, status, nullptr, H, Hp, B,
                                                  steps, nch, lanes, sw, sr, timeout, 1, S["poll_all"]);
    else if (S["sentinel"])
      rnn_persistent_sentinel<T, MODE, BC, T>(wpack, wvec_off, row_info, row_off, unit_start, load_range,
                                              load_off, u, c0, y, c_out, xch, status, nullptr, H, Hp, B, steps,
                                              nch, lanes, sw, sr, timeout, 1, S["poll_all"]);
    else
      rnn_persistent<T, MODE, BC>(wpack, wvec_off, row_info, row_off, unit_start, dep_off, dep_block,
                                  load_range, load_off, u, c0, y, c_out, xch, flags, status, H, Hp, B,
                                  steps, nch, lanes, sw, sr, timeout);
  });
}

template <int MODE, int MT, int KS, int NT, int THREADS, int CLUSTER> void run_tc() {
  const int nblk = S["grid"];
  std::vector<Block> blocks(nblk);
  emu_blocks = &blocks;
  emu_cluster = CLUSTER;
  for (int c = 0; c < nblk / CLUSTER; ++c) emu_cluster_bars.push_back(std::make_unique<std::barrier<>>(CLUSTER * THREADS));
  const uint4* afrag = arr<uint4>("afrag");
  const int *kstep = arr<int>("kstep"), *kcount = arr<int>("kcount"), *load_off = arr<int>("load_off");
  const int2* load_range = arr<int2>("load_range");
  const __half *u = arr<__half>("u"), *c0 = arr<__half>("c0");
  __half *y = arr<__half>("y"), *c_out = arr<__half>("c_out"), *xch = arr<__half>("xch");
  int *status = arr<int>("status"), *counters = arr<int>("counters");
  const int H = S["H"], Hu = S["Hu"], Kp = S["Kp"], units = S["units"], B = S["B"], steps = S["steps"];
  const int nplanned = S["nblocks"], block_flags = S["block_flags"];
  const long long timeout = S["timeout_ns"];
  launch(nblk, THREADS, blocks, [&] {
    if constexpr (CLUSTER > 1)
      rnn_persistent_tc_cluster<MODE, MT, KS, NT, THREADS, 1, CLUSTER>(afrag, kstep, kcount, load_range, load_off, u,
                                                                       c0, y, c_out, xch, status, nullptr, H, Hu, Kp,
                                                                       units, B, steps, timeout, 1, counters,
                                                                       nplanned, block_flags);
    else
      rnn_persistent_tc<MODE, MT, KS, NT, THREADS, 1>(afrag, kstep, kcount, load_range, load_off, u, c0, y, c_out,
                                                      xch, status, nullptr, H, Hu, Kp, units, B, steps, timeout, 1,
                                                      counters, nplanned, block_flags);
  });
}

int main(int argc, char** argv) {
  dir = argv[1];
  std::ifstream f(dir + "/scalars.txt");
  std::string k;
  long long v;
  while (f >> k >> v) S[k] = v;
  if (S["tc"]) {
    const long long tkey = S["cluster"] * 10000 + S["mode"] * 1000 + S["mt"] * 100 + S["ks"] * 10 + S["nt"];
#define RNN_EMU_TC(C, M, MT, KS, NT) \
  case C * 10000 + M * 1000 + MT * 100 + KS * 10 + NT: run_tc<M, MT, KS, NT, 64, C>(); return 0;
    switch (tkey) {
      RNN_EMU_TC(1, 1, 2, 2, 1)
      RNN_EMU_TC(1, 0, 1, 2, 1)
      RNN_EMU_TC(1, 2, 3, 2, 1)
      RNN_EMU_TC(1, 1, 1, 2, 2)
      RNN_EMU_TC(1, 2, 2, 1, 1)
      RNN_EMU_TC(1, 0, 2, 2, 1)
      RNN_EMU_TC(2, 1, 1, 2, 1)
      RNN_EMU_TC(4, 2, 2, 1, 1)
      RNN_EMU_TC(2, 0, 1, 2, 2)
    }
    return 4;
  }
  const long long key = S["dtype"] * 100 + S["mode"] * 10 + S["bc"];
#define RNN_EMU_CASE(D, T, M, C) \
  case D * 100 + M * 10 + C: run<T, M, C>(); return 0;
  switch (key) {
    RNN_EMU_CASE(0, __half, 1, 4)
    RNN_EMU_CASE(1, float, 2, 8)
    RNN_EMU_CASE(0, __half, 0, 2)
    RNN_EMU_CASE(1, float, 1, 1)
    RNN_EMU_CASE(0, __half, 2, 4)
  }
  return 3;
}
"""

_EMU_CASES = {("float16", "tanh", 4), ("float32", "lstm", 8), ("float16", "relu", 2), ("float32", "tanh", 1),
              ("float16", "lstm", 4)}


def _emu_driver():
    """Build (once per source hash) the host driver around kernels/rnn.cu; skip without g++ -std=c++20."""
    import hashlib
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from cusparseblocks.compiler import kernel_source_dir

    if shutil.which("g++") is None:
        pytest.skip("host emulation needs g++")
    kdir = kernel_source_dir()
    emu_dir = Path(__file__).resolve().parent / "cuda_emulation"
    text = "".join([_EMU_SHIM, _EMU_FP16, _EMU_BF16, _EMU_DRIVER, (kdir / "rnn.cu").read_text(),
                    (kdir / "common.cuh").read_text(), (emu_dir / "conv_ptx_emulated.h").read_text()])
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    root = Path(os.environ.get("CUSPARSEBLOCKS_CACHE_DIR", Path.home() / ".cache" / "cusparseblocks"))
    build = root / f"rnn_emulation_{digest}"
    exe = build / "driver"
    if not exe.exists():
        build.mkdir(parents=True, exist_ok=True)
        for name, src in (("rnn_host_emulation.h", _EMU_SHIM), ("cuda_fp16.h", _EMU_FP16),
                          ("cuda_bf16.h", _EMU_BF16), ("driver.cpp", _EMU_DRIVER)):
            tmp = build / f"{name}.{os.getpid()}.tmp"  # never a half-written file under another worker's g++
            tmp.write_text(src)
            os.replace(tmp, build / name)
        res = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", "-DRNN_HOST_EMULATION",
                              f"-I{build}", f"-I{kdir}", f"-I{emu_dir}", str(build / "driver.cpp"), "-o",
                              f"{exe}.{os.getpid()}.tmp"],  # a name per process: xdist workers build at once
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"host emulation driver failed to compile:\n{res.stderr[-4000:]}")
        os.replace(f"{exe}.{os.getpid()}.tmp", exe)
    return exe


def emulate_kernel(model, plan, u, h0, c0, *, exchange, grid=None, timeout_s=30.0, poll_all=None):
    """Run rnn_persistent(_sentinel) from kernels/rnn.cu on the CPU; returns (y, c_T, status)."""
    import subprocess
    import tempfile
    from pathlib import Path

    exe = _emu_driver()
    tab = plan.tables
    T, B, _ = u.shape
    H, Hp, bc, nch = model.hidden_size, plan.hidden_padded, plan.batch_chunk, plan.nchunks
    dt = np.dtype(plan.dtype)
    hp = np.zeros((nch * bc, Hp), dtype=dt)
    hp[:B, :H] = h0
    xch = np.zeros((T + 1, nch, Hp, bc), dtype=dt)
    if exchange == "sentinel":
        xch.view(np.uint16 if dt == np.float16 else np.uint32)[...] = np.iinfo(
            np.uint16 if dt == np.float16 else np.uint32).max
    xch[0] = hp.reshape(nch, bc, Hp).transpose(0, 2, 1)
    h_float = exchange == "sentinel" and (plan.h_float or plan.dtype == "float32")
    smem = rnn._smem_bytes(plan.dtype, tab["smem_wvec"], Hp, bc, nch, tab["smem_rows"], h_float)
    scalars = {"dtype": int(dt == np.float32), "mode": rnn._MODE_ID[model.mode], "bc": bc,
               "sentinel": int(exchange == "sentinel"), "h_float": int(h_float),
               "poll_all": int(rnn.LAUNCH["poll_all"][plan.dtype] if poll_all is None else poll_all),
               "grid": plan.blocks if grid is None else grid,
               "smem": smem, "H": H, "Hp": Hp, "B": B, "steps": T, "nchunks": nch, "lanes": plan.lanes,
               "smem_wvec": tab["smem_wvec"], "smem_rows": tab["smem_rows"], "timeout_ns": int(timeout_s * 1e9)}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "scalars.txt").write_text("".join(f"{k} {v}\n" for k, v in scalars.items()))
        arrays = {k: tab[k] for k in ("wpack", "wvec_off", "row_info", "row_off", "unit_start", "dep_off",
                                      "dep_block", "load_range", "load_off")}
        arrays.update(u=u, xch=xch, y=np.full((T, B, H), np.nan, dt), flags=np.zeros(plan.blocks, np.int32),
                      status=np.zeros(1, np.int32))
        if c0 is not None:
            arrays.update(c0=c0, c_out=np.full((B, H), np.nan, dt))
        for k, v in arrays.items():
            Path(d, f"{k}.bin").write_bytes(np.ascontiguousarray(v).tobytes())
        res = subprocess.run([str(exe), d], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"emulation driver exit {res.returncode}: {res.stderr[-2000:]}"
        y = np.frombuffer(Path(d, "y.out").read_bytes(), dtype=dt).reshape(T, B, H)
        status = int(np.frombuffer(Path(d, "status.out").read_bytes(), dtype=np.int32)[0])
        c = None
        if c0 is not None:
            c = np.frombuffer(Path(d, "c_out.out").read_bytes(), dtype=dt).reshape(B, H)
    return y, c, status


_EMULATED_CASES = [
    (*variant, *case)
    for variant in [("flags", None, None), ("sentinel", None, None), ("sentinel", False, None),
                    ("sentinel", None, True), ("sentinel", None, False)]
    for case in [("float16", "tanh", 3, "csr"), ("float32", "lstm", 9, "block"), ("float16", "relu", 2, "csr"),
                 ("float32", "tanh", 1, "block"), ("float16", "lstm", 4, "block")]
    if not (variant[1] is False and case[0] == "float32")  # fp32 weights always keep h in fp32
]


@pytest.mark.parametrize("exchange,h_float,poll_all,dtype,mode,B,kind", _EMULATED_CASES)
def test_kernel_on_cpu(rng, exchange, h_float, poll_all, dtype, mode, B, kind):
    """kernels/rnn.cu itself, emulated on the CPU with 3 concurrent blocks, against the float64 reference
    (ragged H = 37 for csr: padding units; batches below the chunk width: padding columns). The sentinel
    kernel with h in shared memory as fp32 (the plan's choice here) and in the storage dtype, polling the
    exchange vector by vector and all together."""
    model = make_model(rng, 37 if kind == "csr" else 40, mode, kind)
    plan = model.plan(dtype, B, sm_count=3, smem_per_block=232448, h_float=h_float, tables=True)
    assert plan.h_float == (h_float is not False)
    assert (dtype, mode, plan.batch_chunk) in _EMU_CASES and plan.blocks == 3
    u, h0, c0 = make_inputs(rng, model, 3, B, dtype)
    y, c, status = emulate_kernel(model, plan, u, h0, c0, exchange=exchange, poll_all=poll_all)
    assert status == 0
    yr, cr = reference(model, u, h0, c0, dtype)
    assert_close(y, yr, dtype, "y")
    if mode == "lstm":
        assert_close(c, cr, dtype, "c_T")


@pytest.mark.parametrize("exchange,poll_all", [("flags", None), ("sentinel", False), ("sentinel", True)])
def test_kernel_on_cpu_watchdog(rng, exchange, poll_all):
    """Fewer blocks than planned: the missing block never writes h_t; the others give up, never hang."""
    model = make_model(rng, 40, "tanh", "csr")
    plan = model.plan("float16", 3, sm_count=3, smem_per_block=232448, tables=True)
    u, h0, _ = make_inputs(rng, model, 3, 3, "float16")
    start = time.perf_counter()
    _, _, status = emulate_kernel(model, plan, u, h0, None, exchange=exchange, grid=2, timeout_s=0.3,
                                  poll_all=poll_all)
    assert status == 1
    assert time.perf_counter() - start < 60


# ---------------------------------------------------------------------------------------------------
# the tensor-core kernel (rnn_persistent_tc) on the CPU: 64 threads a block (config (64, 1, 200)), the
# A-fragment slots forced so each case hits one of the driver's instantiations (mode, tiles, slots, n-tiles)

_TC_EMU_CONFIG = (64, 1, 200)


def emulate_tc_kernel(model, plan, u, h0, c0, *, grid=None, timeout_s=30.0, counter=False):
    """Run rnn_persistent_tc from kernels/rnn.cu on the CPU (``counter``: exchange="counter"); returns
    (y, c_T, status)."""
    import subprocess
    import tempfile
    from pathlib import Path

    exe = _emu_driver()
    tab = plan.tables
    T, B, _ = u.shape
    H = model.hidden_size
    xch = np.full((T + 1, B, plan.kp), np.nan, np.float16)
    xch.view(np.uint16)[...] = 0xFFFF
    xch[0] = 0
    xch[0, :, :H] = h0
    ranges, off = rnn._tc_load_ranges(tab, plan.blocks, B, plan.kp, plan.cluster)
    scalars = {"tc": 1, "cluster": plan.cluster, "mode": rnn._MODE_ID[model.mode], "mt": plan.tiles,
               "ks": plan.slots, "nt": plan.ntiles, "grid": plan.blocks if grid is None else grid, "smem": plan.smem_bytes,
               "H": H, "Hu": plan.hidden_padded, "Kp": plan.kp, "units": plan.units, "B": B, "steps": T,
               "timeout_ns": int(timeout_s * 1e9), "nblocks": plan.blocks,
               "block_flags": rnn._arrival_flag(plan, counter)}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "scalars.txt").write_text("".join(f"{k} {v}\n" for k, v in scalars.items()))
        arrays = {k: tab[k] for k in ("afrag", "kstep", "kcount")}
        arrays.update(load_range=ranges, load_off=off, u=u, xch=xch, y=np.full((T, B, H), np.nan, np.float16),
                      status=np.zeros(1, np.int32))
        if counter:
            arrays.update(counters=rnn.SparseRNN._arrivals(plan, T, counter, xp=np))
        if c0 is not None:
            arrays.update(c0=c0, c_out=np.full((B, H), np.nan, np.float16))
        for k, v in arrays.items():
            Path(d, f"{k}.bin").write_bytes(np.ascontiguousarray(v).tobytes())
        res = subprocess.run([str(exe), d], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"emulation driver exit {res.returncode}: {res.stderr[-2000:]}"
        y = np.frombuffer(Path(d, "y.out").read_bytes(), dtype=np.float16).reshape(T, B, H)
        status = int(np.frombuffer(Path(d, "status.out").read_bytes(), dtype=np.int32)[0])
        c = None
        if c0 is not None:
            c = np.frombuffer(Path(d, "c_out.out").read_bytes(), dtype=np.float16).reshape(B, H)
    return y, c, status


# (mode, kind, H, B, sm_count, expected (tiles, slots, n-tiles)): ragged H (not a multiple of 16), B 1, 5
# and 9 (two n-tiles), block-sparse W with all-zero k-steps skipped, an LSTM with 3 tiles a block
_TC_EMU_CASES = [
    ("tanh", "csr", 37, 1, 2, (2, 2, 1)),
    ("relu", "block", 48, 5, 3, (1, 2, 1)),
    ("lstm", "csr", 37, 5, 4, (3, 2, 1)),
    ("tanh", "csr", 40, 9, 3, (1, 2, 2)),
    ("lstm", "block", 32, 1, 4, (2, 1, 1)),
    ("relu", "csr", 45, 5, 2, (2, 2, 1)),
]


@pytest.fixture
def small_groups(monkeypatch):
    """exchange "group_counter" with 2 groups (on the emulation's 2-4 blocks: groups of 1 and 2 blocks)."""
    monkeypatch.setitem(rnn.LAUNCH, "groups", 2)


@pytest.mark.parametrize("counter", [False, "counter", "block_flags", "group_counter"])
@pytest.mark.parametrize("mode,kind,H,B,sm_count,shape", _TC_EMU_CASES)
def test_tc_kernel_on_cpu(rng, small_groups, mode, kind, H, B, sm_count, shape, counter):
    """rnn_persistent_tc itself, emulated on the CPU (every block at once, mma.sync by its fragment layout),
    against the float64 reference, every element of y and c_T; sentinel polling and per-step counters."""
    model = make_model(rng, H, mode, kind, density=0.2 if kind == "block" else 0.3)
    plan = model.plan_tc(B, sm_count=sm_count, smem_per_block=232448, config=_TC_EMU_CONFIG, slots=shape[1],
                         tables=True)
    assert plan.fits and (plan.tiles, plan.slots, plan.ntiles) == shape
    u, h0, c0 = make_inputs(rng, model, 4, B, "float16")
    y, c, status = emulate_tc_kernel(model, plan, u, h0, c0, counter=counter)
    assert status == 0
    yr, cr = reference(model, u, h0, c0, "float16")
    assert_close(y, yr, "float16", "y")
    if mode == "lstm":
        assert_close(c, cr, "float16", "c_T")


@pytest.mark.parametrize("counter", [False, "counter", "block_flags", "group_counter"])
def test_tc_kernel_on_cpu_watchdog(rng, small_groups, counter):
    """Fewer blocks than planned: the missing block never writes h_t; the others give up, never hang."""
    model = make_model(rng, 40, "tanh", "csr")
    plan = model.plan_tc(9, sm_count=3, smem_per_block=232448, config=_TC_EMU_CONFIG, slots=2, tables=True)
    u, h0, _ = make_inputs(rng, model, 3, 9, "float16")
    start = time.perf_counter()
    _, _, status = emulate_tc_kernel(model, plan, u, h0, None, grid=2, timeout_s=0.3, counter=counter)
    assert status == 1
    assert time.perf_counter() - start < 60


# (mode, kind, H, B, sm_count, cluster, expected (blocks, tiles, slots, n-tiles)): the cluster exchange, with
# an empty block that rounds the grid up to whole clusters, a cluster of 4, two n-tiles
_TC_CLUSTER_CASES = [
    ("tanh", "csr", 37, 5, 4, 2, (4, 1, 2, 1)),
    ("lstm", "block", 32, 5, 4, 4, (4, 2, 1, 1)),
    ("relu", "csr", 45, 9, 4, 2, (4, 1, 2, 2)),
]


@pytest.mark.parametrize("mode,kind,H,B,sm_count,cluster,shape", _TC_CLUSTER_CASES)
def test_tc_cluster_kernel_on_cpu(rng, mode, kind, H, B, sm_count, cluster, shape):
    """rnn_persistent_tc_cluster on the CPU: each block copies its 1/C of h_(t-1) and stores it into its
    peers' shared memory (cluster barriers, double-buffered h), against the float64 reference."""
    model = make_model(rng, H, mode, kind, density=0.2 if kind == "block" else 0.3)
    plan = model.plan_tc(B, sm_count=sm_count, smem_per_block=232448, config=_TC_EMU_CONFIG, slots=shape[2],
                         cluster=cluster, tables=True)
    assert plan.fits and (plan.blocks, plan.tiles, plan.slots, plan.ntiles) == shape and plan.cluster == cluster
    u, h0, c0 = make_inputs(rng, model, 4, B, "float16")
    y, c, status = emulate_tc_kernel(model, plan, u, h0, c0)
    assert status == 0
    yr, cr = reference(model, u, h0, c0, "float16")
    assert_close(y, yr, "float16", "y")
    if mode == "lstm":
        assert_close(c, cr, "float16", "c_T")


def test_tc_cluster_kernel_on_cpu_watchdog(rng):
    """A missing cluster never writes its h_t: the other cluster's blocks give up and still pass every
    cluster barrier together (no hang)."""
    model = make_model(rng, 37, "tanh", "csr")
    plan = model.plan_tc(5, sm_count=4, smem_per_block=232448, config=_TC_EMU_CONFIG, slots=2, cluster=2,
                         tables=True)
    u, h0, _ = make_inputs(rng, model, 3, 5, "float16")
    start = time.perf_counter()
    _, _, status = emulate_tc_kernel(model, plan, u, h0, None, grid=2, timeout_s=0.3)
    assert status == 1
    assert time.perf_counter() - start < 60
