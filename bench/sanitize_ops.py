"""A small run of the helper-op kernels for compute-sanitizer (memcheck, racecheck).

Run: PYTHONPATH=. compute-sanitizer --tool racecheck python bench/sanitize_ops.py
Covers the row kernels (layer norm features last, fwd/bwd incl. the gain/bias column sums; batch-norm
inference; same-shape add/mul; plain and bias activation backward; weight norm per block), the one-pass
column kernels of kernels/ew_cols.cu on sm_90 (cols_fwd, cols_bwd_rx, cols_bwd (bwd_regs off), wn_unit;
forced with LAUNCH["cols1"]["mode"] = "single", clusters of 1, 2 and 16 through max_cluster; the tall-array
kernels cols_keep_fwd / cols_keep_bwd with LAUNCH["cols1"]["keep"] = "always") and their
3-pass fallback (with the layer norm's row sums in norm_cols_apply), on ragged shapes (tall ones for the
narrower rows of cols_bwd_rx), for float32 and bfloat16; every GPU result is checked against the NumPy path
of the same function.
"""

import cupy as cp
import numpy as np

from cusparseblocks import _ops_cols, ops
from cusparseblocks._array import bfloat16
from cusparseblocks.blocklayout import BlockLayout


def _cmp(name, got, want, dtype, worst):
    got = [got] if not isinstance(got, (tuple, list)) else list(got)
    want = [want] if not isinstance(want, (tuple, list)) else list(want)
    tol = 1e-4 if dtype == np.float32 else 3e-2
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None or w is None:
            continue
        g = cp.asnumpy(g).astype(np.float64)
        w = np.asarray(w).astype(np.float64)
        err = np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)
        assert np.isfinite(g).all() and err < tol, f"{name}[{i}] ({np.dtype(dtype).name}): {err:.2e}"
        worst = max(worst, err)
    return worst


def main():
    rng = np.random.default_rng(3)
    worst = 0.0
    cfg = _ops_cols.LAUNCH["cols1"]
    for dtype in (np.float32, bfloat16):
        # (9000, 40), (17000, 24): column groups of 2 and 3 clusters of 16 (cols_bwd_rx; cols_fwd for 17000),
        # without them cols_bwd_rx's 64- and 32-byte rows on clusters of 16 (the fallback: the split path's
        # norm_cols_apply with the layer norm's row sums)
        for R, C in ((37, 96), (301, 64), (1030, 48), (9000, 40), (17000, 24)):
            x = rng.standard_normal((R, C)).astype(dtype)
            dy = rng.standard_normal((R, C)).astype(dtype)
            g = (rng.standard_normal(C) * 0.5 + 1).astype(dtype)
            b = rng.standard_normal(C).astype(dtype)
            gr = (rng.standard_normal(R) * 0.5 + 1).astype(dtype)
            br = rng.standard_normal(R).astype(dtype)
            X, DY = cp.asarray(x), cp.asarray(dy)
            # rows: layer norm features last, fwd and bwd (dx, dgain, dbias)
            got = ops.layer_norm_fprop(X, cp.asarray(g), cp.asarray(b))
            want = ops.layer_norm_fprop(x, g, b)
            worst = _cmp("layer_norm fwd ax1", got[0], want[0], dtype, worst)
            gb = ops.layer_norm_bprop(DY, X, cp.asarray(g), got[1], got[2])
            wb = ops.layer_norm_bprop(dy, x, g, want[1], want[2])
            worst = _cmp("layer_norm bwd ax1", gb, wb, dtype, worst)
            # batch-norm inference, activation backward (plain and with a bias)
            rm = rng.standard_normal(C).astype(np.float32)
            rv = (rng.random(C) + 0.5).astype(np.float32)
            got = ops.batch_norm_fprop(X, cp.asarray(g), cp.asarray(b), training=False,
                                       running_mean=cp.asarray(rm), running_var=cp.asarray(rv))
            want = ops.batch_norm_fprop(x, g, b, training=False, running_mean=rm.copy(), running_var=rv.copy())
            worst = _cmp("batch_norm inf ax1", got[0], want[0], dtype, worst)
            worst = _cmp("relu bwd", ops.activation_bprop(DY, X, "gelu_tanh"),
                         ops.activation_bprop(dy, x, "gelu_tanh"), dtype, worst)
            worst = _cmp("bias+relu bwd", ops.activation_bprop(DY, X, "relu", bias=cp.asarray(b)),
                         ops.activation_bprop(dy, x, "relu", bias=b), dtype, worst)
            worst = _cmp("add", ops.add_fprop(X, DY, activation="tanh"), ops.add_fprop(x, dy, activation="tanh"),
                         dtype, worst)
            worst = _cmp("mul", ops.mul_fprop(X, DY), ops.mul_fprop(x, dy), dtype, worst)
            # columns: one pass (clusters of 1..16) and the 3-pass fallback
            # keep "always": the tall-array kernels (cols_keep_*), with their default rows kept and with
            # 16 KiB (128 rows forward, 64 backward: the rest streamed and read twice)
            keep_smem = _ops_cols.KEEP_SMEM
            for mode, max_cluster, regs, groups, keep, kb in (
                ("single", 1, True, True, "never", 0), ("single", 2, True, True, "never", 0),
                ("single", 16, True, True, "never", 0), ("single", 16, True, False, "never", 0),
                ("single", 16, False, True, "never", 0), ("fallback", 16, True, True, "never", 0),
                ("auto", 16, True, True, "always", 0), ("auto", 16, True, True, "always", 16384),
            ):
                saved = dict(cfg)
                cfg.update(mode=mode, max_cluster=max_cluster, bwd_regs=regs, group_tall=groups)
                cfg.update(keep=keep)
                _ops_cols.KEEP_SMEM = kb or keep_smem
                _ops_cols._PLANS.clear()  # plans are cached per shape, not per LAUNCH setting
                try:
                    got = ops.batch_norm_fprop(X, cp.asarray(g), cp.asarray(b))
                    want = ops.batch_norm_fprop(x, g, b)
                    worst = _cmp(f"batch_norm fwd ax1 {mode}/{max_cluster}", got[0], want[0], dtype, worst)
                    gb = ops.batch_norm_bprop(DY, X, cp.asarray(g), got[1], got[2])
                    wb = ops.batch_norm_bprop(dy, x, g, want[1], want[2])
                    worst = _cmp(f"batch_norm bwd ax1 {mode}/{max_cluster}", gb, wb, dtype, worst)
                    got = ops.layer_norm_fprop(X, cp.asarray(gr), cp.asarray(br), feature_axis=0)
                    want = ops.layer_norm_fprop(x, gr, br, feature_axis=0)
                    worst = _cmp(f"layer_norm fwd ax0 {mode}/{max_cluster}", got[0], want[0], dtype, worst)
                    gb = ops.layer_norm_bprop(DY, X, cp.asarray(gr), got[1], got[2], feature_axis=0)
                    wb = ops.layer_norm_bprop(dy, x, gr, want[1], want[2], feature_axis=0)
                    worst = _cmp(f"layer_norm bwd ax0 {mode}/{max_cluster}", gb, wb, dtype, worst)
                finally:
                    cfg.clear()
                    cfg.update(saved)
                    _ops_cols.KEEP_SMEM = keep_smem
                    _ops_cols._PLANS.clear()
        # weight norm per unit (one pass and fallback) and per block, b = 32, a ragged layout
        mask = rng.random((5, 7)) < 0.5
        mask[0, :] = True
        lay = BlockLayout(mask)
        w = rng.standard_normal((lay.nnz, 32, 32)).astype(dtype)
        dv = rng.standard_normal((lay.nnz, 32, 32)).astype(dtype)
        gu = (rng.random(lay.out_blocks * 32) + 0.5).astype(dtype)
        gk = (rng.random(lay.nnz) + 0.5).astype(dtype)
        for mode in ("single", "fallback"):
            saved = dict(cfg)
            cfg.update(mode=mode)
            _ops_cols._PLANS.clear()
            try:
                got = ops.weight_norm_fprop(lay, cp.asarray(w), cp.asarray(gu), per="unit")
                want = ops.weight_norm_fprop(lay, w, gu, per="unit")
                worst = _cmp(f"weight_norm unit fwd {mode}", got[0], want[0], dtype, worst)
                gb = ops.weight_norm_bprop(lay, cp.asarray(dv), cp.asarray(w), cp.asarray(gu), got[1], per="unit")
                wb = ops.weight_norm_bprop(lay, dv, w, gu, want[1], per="unit")
                worst = _cmp(f"weight_norm unit bwd {mode}", gb, wb, dtype, worst)
            finally:
                cfg.clear()
                cfg.update(saved)
                _ops_cols._PLANS.clear()
        got = ops.weight_norm_fprop(lay, cp.asarray(w), cp.asarray(gk), per="block")
        want = ops.weight_norm_fprop(lay, w, gk, per="block")
        worst = _cmp("weight_norm block fwd", got[0], want[0], dtype, worst)
    cp.cuda.get_current_stream().synchronize()
    print(f"sanitize_ops: every result checked, worst relative error {worst:.2e}")


if __name__ == "__main__":
    main()
