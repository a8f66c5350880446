"""Random shapes through BlockSparseMatMul's default dispatch on the GPU (needs a CUDA GPU).

test_matmul_gpu.py forces every tile on small layouts; here each seed draws a case the way a user would
bring one: block size, dtype, feature axis, a layout of 1 to 64 block rows and columns at a random density
(one block, dense, empty rows and columns), a batch N from 1 to past 4096 (so that the large-N kernels chosen
by density, xw_tma among them, run on ragged N), out= or allocated outputs, fp32 output, accumulate, grouped
updates. Every element against float64 NumPy (dense W from scipy's BSR), outputs poisoned.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, poison, random_array

from cusparseblocks import BlockSparseMatMul
from cusparseblocks.reference.matmul import to_scipy

pytestmark = pytest.mark.gpu

SEEDS = range(96)


def _case(seed):
    rng = np.random.default_rng(1000 + seed)
    b = int(rng.choice([8, 16, 32, 64]))
    dtype = str(rng.choice(["float16", "bfloat16", "float32"]))
    fa = int(rng.choice([1, 0]))
    most = min(64, 4096 // b)
    kb, mb = int(rng.integers(1, most + 1)), int(rng.integers(1, most + 1))
    density = float(rng.choice([1.0, 0.5, 0.35, 0.2, 0.1, 0.05, 0.01]))
    mask = rng.random((kb, mb)) < density
    if seed % 11 == 0:  # a layout of one block
        mask[:] = False
    mask[rng.integers(kb), rng.integers(mb)] = True
    n = int(rng.choice([1, 7, 33, 100, 257, 1000, 2048, 2048 + int(rng.integers(1, 200)), 4096 + int(rng.integers(0, 90))]))
    # keep the float64 reference cheap: at most ~8e9 multiply-adds a case
    while n > 64 and n * kb * mb * b * b > 8e9:
        n //= 2
    return rng, b, dtype, fa, mask, n


def _io(fa, n, features):
    return (n, features) if fa == 1 else (features, n)


def _dense_refs(op, x, dy, w):
    """float64 (y, dx, xᵀ·dy) through the dense W of the layout."""
    W = to_scipy(op.layout, np.asarray(w, np.float64)).toarray()
    x64, dy64 = (np.asarray(a, np.float64) for a in (x, dy))
    if op.feature_axis == 0:
        x64, dy64 = x64.T, dy64.T
    y_ref, dx_ref, G = x64 @ W, dy64 @ W.T, x64.T @ dy64
    if op.feature_axis == 0:
        y_ref, dx_ref = y_ref.T, dx_ref.T
    return y_ref, dx_ref, G


def _inputs(rng, op, n, dtype):
    """Fresh x, dy (batch n) and w of the op in dtype."""
    fa = op.feature_axis
    x = random_array(rng, _io(fa, n, op.K), dtype)
    dy = random_array(rng, _io(fa, n, op.M), dtype)
    return x, dy, random_array(rng, op.w_shape, dtype, scale=0.2)


def _blocks(op, G):
    """The nonzero blocks [nnz, b, b] of a dense [K, M] matrix, in the layout's order."""
    lay, b = op.layout, op.block_size
    return G.reshape(lay.in_blocks, b, lay.out_blocks, b)[lay.rows, :, lay.cols, :]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_case_default_dispatch(seed):
    import cupy as cp

    rng, b, dtype, fa, mask, n = _case(seed)
    op = BlockSparseMatMul(mask, b, fa)
    x, dy, w = _inputs(rng, op, n, dtype)
    y_ref, dx_ref, _ = _dense_refs(op, x, dy, w)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    tol = dtype

    # fprop: into a poisoned out=, or allocated with fp32 output
    if seed % 2:
        y = poison(cp, _io(fa, n, op.M), dtype)
        op.fprop(xg, wg, out=y)
    else:
        y = op.fprop(xg, wg, out_dtype=np.float32)
        assert y.dtype == np.float32
    assert_close(y, y_ref, tol, f"fprop seed {seed}")

    # bprop: allocated, or accumulated into an fp32 buffer
    if seed % 3:
        dx = op.bprop(dyg, wg)
        assert_close(dx, dx_ref, tol, f"bprop seed {seed}")
    else:
        dx0 = random_array(rng, _io(fa, n, op.K), "float32")
        dx = cp.asarray(dx0)
        op.bprop(dyg, wg, out=dx, accumulate=True)
        assert_close(dx, dx0 + dx_ref, tol, f"bprop accumulate seed {seed}")

    # update: one pair or a group of pairs with other batch sizes, into a poisoned out=
    pairs = [(x, dy)]
    if seed % 4 == 1:
        for m in rng.integers(1, max(2, n), size=2):
            pairs.append((random_array(rng, _io(fa, int(m), op.K), dtype), random_array(rng, _io(fa, int(m), op.M), dtype)))
    G = np.zeros((op.K, op.M))
    for xa, da in pairs:
        xa64, da64 = np.asarray(xa, np.float64), np.asarray(da, np.float64)
        G += (xa64.T @ da64) if fa == 1 else (xa64 @ da64.T)
    dw_ref = _blocks(op, G)
    dw = poison(cp, op.w_shape, dtype)
    if len(pairs) == 1:
        op.updat(xg, dyg, out=dw)
    else:
        op.updat([cp.asarray(a) for a, _ in pairs], [cp.asarray(d) for _, d in pairs], out=dw)
    assert_close(dw, dw_ref, tol, f"updat seed {seed} ({len(pairs)} pairs)")


# large ragged batches at the benchmark's densities, where the TMA-fed kernels are the defaults on sm_90a
# (b = 32, 64 in fp16/bf16 with features last), the column-group kernel (b = 16) and the mma.sync tiles (b = 8)
LARGE = [
    (64, "float16", 1, 16, 24, 0.5, 4099),
    (64, "bfloat16", 0, 24, 16, 0.2, 2050),
    (64, "float16", 1, 32, 32, 0.05, 4200),
    (64, "bfloat16", 1, 20, 28, 0.1, 3333),
    (32, "float16", 1, 40, 48, 0.5, 3001),
    (32, "bfloat16", 1, 48, 40, 0.35, 2047),
    (32, "float16", 0, 64, 64, 0.1, 4097),
    (16, "float16", 1, 64, 64, 0.2, 4100),
    (8, "bfloat16", 1, 64, 64, 0.2, 4100),
    (32, "float32", 1, 48, 48, 0.5, 2100),
]


@pytest.mark.parametrize("case", LARGE, ids=lambda c: "-".join(map(str, c)))
def test_large_ragged_default_dispatch(case):
    import cupy as cp

    from cusparseblocks import compiler

    b, dtype, fa, kb, mb, density, n = case
    rng = np.random.default_rng(7)
    mask = rng.random((kb, mb)) < density
    mask[0, 0] = True
    mask[kb - 1, :] = False  # an empty block row and column
    mask[:, mb - 1] = False
    op = BlockSparseMatMul(mask, b, fa)
    x, dy, w = _inputs(rng, op, n, dtype)
    y_ref, dx_ref, G = _dense_refs(op, x, dy, w)
    xg, dyg, wg = cp.asarray(x), cp.asarray(dy), cp.asarray(w)
    y = poison(cp, _io(fa, n, op.M), dtype)
    op.fprop(xg, wg, out=y)
    assert_close(y, y_ref, dtype, "fprop")
    dx = poison(cp, _io(fa, n, op.K), dtype)
    op.bprop(dyg, wg, out=dx)
    assert_close(dx, dx_ref, dtype, "bprop")
    dw = poison(cp, op.w_shape, dtype)
    op.updat(xg, dyg, out=dw)
    assert_close(dw, _blocks(op, G), dtype, "updat")
    if b in (32, 64) and dtype != "float32" and fa == 1 and compiler.device_arch() == "sm_90":
        # the launch tables of xw_tma are cached under (device, ("tma", op, columns a CTA))
        tma = [k for k in op._gpu_tables if isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], tuple)]
        tma = [k for k in tma if k[1][:1] == ("tma",)]
        assert {k[1][1] for k in tma} == {"fprop", "bprop"}, "xw_tma did not run"
