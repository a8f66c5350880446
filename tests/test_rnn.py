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
    cls = k % (32 // (access // 4)) if access >= 4 else (k // 2) % 32
    dealt = cls[order][: k.size // 2]                 # the first half: every class still has nonzeros
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
    with pytest.raises(ValueError, match="lanes"):
        m.forward(u, h0, lanes=3)
    with pytest.raises(ValueError, match="exchange"):
        m.forward(u, h0, exchange="mpi")
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
    assert len(specs) == 72


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
@pytest.mark.parametrize("exchange", ["flags", "sentinel"])
def test_gpu_long_sequence_stable(rng, exchange):
    """T = 256 at the headline shape: a race between steps would show up as a wrong or moving result."""
    import cupy

    model = make_model(rng, 2304, "tanh", "csr", density=0.3)
    u, h0, _ = make_inputs(rng, model, 256, 4, "float32")
    ud, hd = cupy.asarray(u), cupy.asarray(h0)
    y1, _ = model.forward(ud, hd, path="persistent", exchange=exchange)
    y2, _ = model.forward(ud, hd, path="persistent", exchange=exchange)
    assert_close(y1, reference(model, u, h0, None, "float32")[0], "float32")
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
