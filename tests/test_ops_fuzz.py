"""Random shapes through the normalization ops' default dispatch on the GPU (needs a CUDA GPU).

test_ops.py and test_ops_cols.py force each path on chosen shapes; here each seed draws a shape the way a
user would bring one (17 to ~20000 rows, 16 to ~5000 features, odd sizes whose rows are not whole 16-byte
vectors, views that are not 16-byte aligned), a dtype, a feature axis, with or without gain and bias, and runs
layer norm and batch norm forward and backward through whatever path the dispatch picks (one-pass rows,
clusters, 3 passes). Every element against the float64 NumPy reference, outputs from a poisoned pool.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_array
from test_ops_cols import _gpu  # a copy on the GPU, optionally a view 1 element off 16-byte alignment

from cusparseblocks import ops
from cusparseblocks.reference import ops as ref

pytestmark = pytest.mark.gpu

SEEDS = range(40)


def _f64(a):
    return np.asarray(a.get() if hasattr(a, "get") else a).astype(np.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_norms_default_dispatch(seed):
    import cupy as cp

    rng = np.random.default_rng(2000 + seed)
    dtype = str(rng.choice(["float16", "bfloat16", "float32"]))
    # (norms over fewer than ~16 values cancel past the float32 tolerance: test_ops covers those with wider ones)
    R = int(rng.choice([17, 256, 1000, 4099, 8192, 20011]))
    C = int(rng.choice([16, 24, 100, 333, 1024, 4096, 5000]))
    while R * C > 3e7:
        R //= 2
    fa = int(rng.integers(2))
    affine = bool(rng.integers(2))
    misalign = seed % 7 == 3
    x = (random_array(rng, (R, C), "float32") * 3 + 5).astype(random_array(rng, (1,), dtype).dtype)
    dy = random_array(rng, (R, C), dtype)
    xg, dyg = _gpu(x, misalign), _gpu(dy, misalign)
    pool = cp.full(1 << 24, np.nan, dtype=cp.float32)  # fresh allocations start from NaN
    del pool
    for kind in ("layer", "batch"):
        F = C if fa == 1 else R  # features (layer norm) or channels (batch norm): x.shape[fa]
        g = random_array(rng, (F,), dtype) if affine else None
        b = random_array(rng, (F,), dtype) if affine else None
        gg, gb = (None if a is None else cp.asarray(a) for a in (g, b))
        hg, hb = (None if a is None else _f64(a) for a in (g, b))
        if kind == "layer":
            y, m, r = ops.layer_norm_fprop(xg, gg, gb, feature_axis=fa)
            ry, rm, rr = ref.layer_norm_fprop(_f64(x), hg, hb, fa)
            grads = ops.layer_norm_bprop(dyg, xg, gg, m, r, feature_axis=fa)
            rgrads = ref.layer_norm_bprop(_f64(dy), _f64(x), hg, _f64(m), _f64(r), fa)
        else:
            y, m, r = ops.batch_norm_fprop(xg, gg, gb, feature_axis=fa)
            ry, rm, rr = ref.batch_norm_fprop(_f64(x), hg, hb, fa, True, None, None)
            grads = ops.batch_norm_bprop(dyg, xg, gg, m, r, feature_axis=fa)
            rgrads = ref.batch_norm_bprop(_f64(dy), _f64(x), hg, _f64(m), _f64(r), fa, True)
        what = f"{kind} norm seed {seed} {dtype} {(R, C)} axis {fa}"
        assert_close(m, rm, "float32", f"{what}: mean")
        assert_close(r, rr, "float32" if dtype == "float32" else "float16", f"{what}: rstd")
        # errors relative to the terms each output is computed from (few samples cancel: see test_ops)
        stat_axis = 1 - fa if kind == "layer" else fa  # the axis the statistics are per
        shape = [1, 1]
        shape[stat_axis] = -1
        rr_b = rr.reshape(shape)
        gs = 1.0 if g is None else np.abs(_f64(g)).reshape((1, -1) if fa == 1 else (-1, 1))
        bs = 0.0 if b is None else np.abs(_f64(b)).reshape((1, -1) if fa == 1 else (-1, 1))
        assert_close(y, ry, dtype, f"{what}: y", scale=np.abs(_f64(x)) * rr_b * gs + bs)
        terms = gs * rr_b * np.abs(_f64(dy))
        for name, a, e in zip(("dx", "dgain", "dbias"), grads, rgrads):
            if e is None:
                assert a is None, f"{what}: {name}"
                continue
            assert_close(a, e, dtype, f"{what}: {name}", scale=terms if name == "dx" else None)
