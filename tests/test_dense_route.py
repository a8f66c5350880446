"""The dense route of BlockSparseMatMul (cuBLAS on the zero-filled weights) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, poison, random_array
from test_matmul_gpu import _io, _random_problem, _ref64

from cusparseblocks import BlockSparseMatMul, _dense_route
from cusparseblocks import _matmul_gpu as _gpu


@pytest.fixture
def route():
    """Set ROUTE["mode"] for one test, restored after."""
    saved = dict(_dense_route.ROUTE)
    yield _dense_route.ROUTE
    _dense_route.ROUTE.clear()
    _dense_route.ROUTE.update(saved)


def _op(density, block_size, kb=64, mb=64, **kw):
    rng = np.random.default_rng(1)
    return BlockSparseMatMul(rng.random((kb, mb)) < density, block_size, **kw)


def test_auto_choice(route, monkeypatch):
    """The route where DENSE_MIN, MIN_ROWS and MAX_DENSE_BYTES allow it; forced modes and tiles win."""
    monkeypatch.setattr(_gpu, "force_variant", None)
    route["mode"] = "auto"
    dense_b8 = _op(0.5, 8)
    assert _dense_route.wanted(dense_b8, "fprop", "float16", 4096)
    assert _dense_route.wanted(dense_b8, "updat", "bfloat16", 4096)
    assert not _dense_route.wanted(dense_b8, "fprop", "float16", 64)  # small batch: the sparse kernels
    assert not _dense_route.wanted(_op(0.01, 8), "fprop", "float16", 4096)  # too sparse
    assert not _dense_route.wanted(_op(0.5, 64), "fprop", "float16", 4096)  # b = 64 fprop: never
    for (kind, bs), limits in _dense_route.DENSE_MIN.items():
        for op, least in zip(("fprop", "updat"), limits):
            dt = "float32" if kind == "float32" else "float16"
            high = _op(0.9, bs, 16, 16)
            assert _dense_route.wanted(high, op, dt, 4096) == (least is not None and least <= high.layout.density)
    tf32 = _op(0.9, 8, 16, 16, allow_tf32=True)
    assert not _dense_route.wanted(tf32, "fprop", "float32", 4096)
    monkeypatch.setattr(_dense_route, "MAX_DENSE_BYTES", 1024)
    assert not _dense_route.wanted(dense_b8, "fprop", "float16", 4096)
    route["mode"] = "always"
    assert _dense_route.wanted(_op(0.01, 64), "fprop", "float32", 1)
    monkeypatch.setattr(_gpu, "force_variant", "medium")  # a benchmark's tile: not the route
    assert not _dense_route.wanted(dense_b8, "fprop", "float16", 4096)
    monkeypatch.setattr(_gpu, "force_variant", "dense")
    route["mode"] = "never"
    assert _dense_route.wanted(_op(0.01, 64), "fprop", "float32", 1)
    monkeypatch.setattr(_gpu, "force_variant", None)
    route["mode"] = "always"
    for knob, value in (("updat_tile_variant", "tile8"), ("updat_gmma_variant", "g2"), ("small_variant", "x"),
                        ("updat_ffma_variant", "simt"), ("gmma_enabled", False), ("small_enabled", False)):
        with monkeypatch.context() as m:  # a test's or benchmark's kernel choice: never the route
            m.setattr(_gpu, knob, value)
            assert not _dense_route.wanted(dense_b8, "updat", "float16", 4096), knob


def test_specializations_registered():
    from cusparseblocks import compiler

    specs = compiler.all_specializations()["dense_route"]
    assert len(specs) == 2 * 3 * 4
    assert {s.name.split("<")[0] for s in specs} == {"densify", "gather_blocks"}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("block_size", [8, 16, 32, 64])
@pytest.mark.parametrize("feature_axis", [1, 0])
@pytest.mark.parametrize("n", [1, 37, 300])
def test_dense_route_ops(rng, route, dtype, block_size, feature_axis, n):
    """fprop / bprop / updat (grouped) through the dense route: out=, allocated, accumulate, fp32 output."""
    import cupy as cp

    route["mode"] = "always"
    op, (x, dy, w), (xg, dyg, wg) = _random_problem(rng, dtype, block_size, feature_axis, n)

    y = poison(cp, _io(op, n, op.M), dtype)
    op.fprop(xg, wg, out=y)
    y_ref = _ref64(op, "fprop", x, w=w)
    assert_close(y, y_ref, dtype, "fprop")
    assert_close(op.fprop(xg, wg), y_ref, dtype, "fprop (allocated)")
    dx = poison(cp, _io(op, n, op.K), dtype)
    op.bprop(dyg, wg, out=dx)
    dx_ref = _ref64(op, "bprop", dy, w=w)
    assert_close(dx, dx_ref, dtype, "bprop")

    y0 = random_array(rng, _io(op, n, op.M), dtype)
    acc = cp.asarray(y0)
    op.fprop(xg, wg, out=acc, accumulate=True)
    assert_close(acc, y0.astype(np.float64) + y_ref, dtype, "fprop accumulate")
    if dtype != "float32":
        y32 = poison(cp, _io(op, n, op.K), "float32")
        op.bprop(dyg, wg, out=y32)
        assert_close(y32, dx_ref, "float16", "bprop fp32 output")

    dw = poison(cp, op.w_shape, dtype)
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _ref64(op, "updat", [x], [dy]), dtype, "updat")
    # grouped pairs of other lengths, accumulated into an fp32 dw
    ns = [n, 5, 130]
    xs = [random_array(rng, _io(op, m, op.K), dtype) for m in ns]
    dys = [random_array(rng, _io(op, m, op.M), dtype) for m in ns]
    dw0 = random_array(rng, op.w_shape, "float32")
    dwg = cp.asarray(dw0)
    op.updat([cp.asarray(a) for a in xs], [cp.asarray(a) for a in dys], out=dwg, accumulate=True)
    assert_close(dwg, dw0 + _ref64(op, "updat", xs, dys), "float16" if dtype != "float32" else dtype,
                 "grouped updat accumulate")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_auto_route_matches_sparse(rng, route, block_size, dtype):
    """A layout dense enough for "auto" takes the route, and agrees with the block-sparse kernels."""
    import cupy as cp

    op = BlockSparseMatMul(rng.random((24, 40)) < 0.5, block_size)
    n = _dense_route.MIN_ROWS + 3
    assert _dense_route.wanted(op, "fprop", dtype, n) and _dense_route.wanted(op, "updat", dtype, n)
    x = random_array(rng, (n, op.K), dtype)
    dy = random_array(rng, (n, op.M), dtype)
    w = random_array(rng, op.w_shape, dtype, scale=0.2)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    results = {}
    for mode in ("auto", "never"):
        route["mode"] = mode
        results[mode] = (op.fprop(xg, wg), op.bprop(dyg, wg), op.updat(xg, dyg))
    for name, got, sparse, ref in zip(("fprop", "bprop", "updat"), results["auto"], results["never"],
                                      (_ref64(op, "fprop", x, w=w), _ref64(op, "bprop", dy, w=w),
                                       _ref64(op, "updat", [x], [dy]))):
        assert_close(got, ref, dtype, f"{name} (dense route)")
        assert_close(sparse, ref, dtype, f"{name} (block-sparse)")


@pytest.mark.gpu
def test_misaligned_w_takes_the_kernels(rng, route):
    """A w view that is not 16-byte aligned never takes the route (it is read in 16-byte pieces)."""
    import cupy as cp

    route["mode"] = "always"
    op = BlockSparseMatMul(rng.random((4, 5)) < 0.6, 8)
    w = random_array(rng, op.w_shape, "float16", scale=0.2)
    flat = cp.empty(w.size + 1, dtype=cp.float16)
    wg = flat[1:].reshape(op.w_shape)
    wg[...] = cp.asarray(w)
    assert wg.data.ptr % 16 and not _dense_route.wanted(op, "fprop", "float16", 64, wg)
    x = random_array(rng, (70, op.K), "float16")
    assert_close(op.fprop(cp.asarray(x), wg), _ref64(op, "fprop", x, w=w), "float16", "fprop")


@pytest.mark.gpu
def test_route_in_a_cuda_graph(rng, route):
    """fprop and updat through the route captured into a CUDA graph: each replay recomputes from the inputs."""
    import cupy as cp

    route["mode"] = "always"
    op = BlockSparseMatMul(rng.random((6, 5)) < 0.5, 16)
    x = cp.asarray(random_array(rng, (200, op.K), "float16"))
    dy = cp.asarray(random_array(rng, (200, op.M), "float16"))
    w = cp.asarray(random_array(rng, op.w_shape, "float16", scale=0.2))
    y = cp.empty((200, op.M), dtype=cp.float16)
    dw = cp.empty(op.w_shape, dtype=cp.float16)
    op.fprop(x, w, out=y)  # compile and fill the pool outside the capture
    op.updat(x, dy, out=dw)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        op.fprop(x, w, out=y)
        op.updat(x, dy, out=dw)
        graph = stream.end_capture()
    for _ in range(2):
        xh = random_array(rng, (200, op.K), "float16")
        dyh = random_array(rng, (200, op.M), "float16")
        wh = random_array(rng, op.w_shape, "float16", scale=0.2)
        x[...], dy[...], w[...] = cp.asarray(xh), cp.asarray(dyh), cp.asarray(wh)
        y.fill(cp.nan)
        dw.fill(cp.nan)
        cp.cuda.get_current_stream().synchronize()
        graph.launch(stream)
        stream.synchronize()
        assert_close(y, _ref64(op, "fprop", xh, w=wh), "float16", "fprop (graph)")
        assert_close(dw, _ref64(op, "updat", [xh], [dyh]), "float16", "updat (graph)")


def test_no_route_past_2_31_elements(route):
    route["mode"] = "always"
    op = _op(0.5, 8, 64, 64)
    assert _dense_route.wanted(op, "fprop", "float16", (1 << 31) // op.K - 1)
    assert not _dense_route.wanted(op, "fprop", "float16", (1 << 31) // op.K)


def test_environment_sets_the_mode():
    import os
    import subprocess
    import sys

    code = "from cusparseblocks import _dense_route; print(_dense_route.ROUTE['mode'])"
    env = dict(os.environ, CUSPARSEBLOCKS_DENSE_ROUTE="never")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "never"
    env["CUSPARSEBLOCKS_DENSE_ROUTE"] = "sometimes"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "CUSPARSEBLOCKS_DENSE_ROUTE" in out.stderr
