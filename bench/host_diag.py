"""Host cost of one call of each op, and whether a call waits for the GPU (a hidden synchronization).

For each op: the host time of a call (median of 40 calls enqueued back to back), then the sync test: a
kernel that sleeps ``--sleep-ms`` on the GPU, then one call of the op, timed on the host; a call that takes
about the sleep waited for the GPU (a pageable upload, a device-to-host read, an allocation that
synchronizes). ``--profile`` prints cProfile's top functions (cumulative) of 40 calls of each op. Table last.

Run: PYTHONPATH=. python bench/host_diag.py [--rows 16384 --cols 2048] [--dtype bfloat16] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import numpy as np

from cusparseblocks._timing import Table

_SLEEP = r"""
extern "C" __global__ void sleep_ns(long long ns) {
    long long t0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
        long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 > ns) break;
        __nanosleep(1000);
    }
}
"""


def _cases(cp, rows, cols, dtype, b, density):
    from cusparseblocks import BlockSparseMatMul, layouts, ops
    from cusparseblocks._array import bfloat16

    dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = cp.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=cp.float32).astype(dt)
    dy = rng.standard_normal((rows, cols), dtype=cp.float32).astype(dt)
    g_row = (rng.standard_normal(rows, dtype=cp.float32) * 0.5 + 1).astype(dt)
    g_col = (rng.standard_normal(cols, dtype=cp.float32) * 0.5 + 1).astype(dt)
    _, m0, r0 = ops.layer_norm_fprop(x, feature_axis=0)
    _, m1, r1 = ops.layer_norm_fprop(x)
    _, mb, rb = ops.batch_norm_fprop(x)
    bsmm = BlockSparseMatMul(layouts.random(cols // b, cols // b, density, seed=0), b)
    w = (rng.standard_normal(bsmm.w_shape, dtype=cp.float32) * 0.05).astype(dt)
    run_m, run_v = cp.zeros(cols, cp.float32), cp.ones(cols, cp.float32)
    y_out = cp.empty((rows, bsmm.M), dtype=dt)
    return [
        ("layer_norm fwd ax0", lambda: ops.layer_norm_fprop(x, feature_axis=0)),
        ("layer_norm fwd ax0 +gain", lambda: ops.layer_norm_fprop(x, g_row, g_row, feature_axis=0)),
        ("layer_norm bwd ax0", lambda: ops.layer_norm_bprop(dy, x, None, m0, r0, feature_axis=0)),
        ("layer_norm fwd ax1 +gain", lambda: ops.layer_norm_fprop(x, g_col, g_col)),
        ("layer_norm bwd ax1 +gain", lambda: ops.layer_norm_bprop(dy, x, g_col, m1, r1)),
        ("batch_norm fwd", lambda: ops.batch_norm_fprop(x, g_col, g_col)),
        ("batch_norm fwd +running", lambda: ops.batch_norm_fprop(x, g_col, g_col, running_mean=run_m,
                                                                 running_var=run_v)),
        ("batch_norm bwd", lambda: ops.batch_norm_bprop(dy, x, g_col, mb, rb)),
        ("gelu fwd", lambda: ops.activation_fprop(x, "gelu_tanh")),
        ("bias+relu bwd", lambda: ops.activation_bprop(dy, x, "relu", bias=g_col)),
        ("dropout fwd", lambda: ops.dropout_fprop(x, 0.1, 1234, 0)),
        ("add fwd", lambda: ops.add_fprop(x, dy)),
        ("bsmm fprop", lambda: bsmm.fprop(x, w)),
        ("bsmm fprop out=", lambda: bsmm.fprop(x, w, out=y_out)),
        ("bsmm bprop", lambda: bsmm.bprop(dy, w)),
        ("bsmm updat", lambda: bsmm.updat(x, dy)),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sleep-ms", type=float, default=20.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated substrings of the op names to keep")
    ap.add_argument("--block", type=int, default=32, help="block size of the bsmm cases")
    ap.add_argument("--density", type=float, default=0.2, help="layout density of the bsmm cases")
    args = ap.parse_args(argv)
    import cupy as cp

    sleep = cp.RawKernel(_SLEEP, "sleep_ns")
    stream = cp.cuda.get_current_stream()
    table = Table(["op", "host us", "after sleep ms", "waits"])
    only = [w for w in args.only.split(",") if w]
    for name, fn in _cases(cp, args.rows, args.cols, args.dtype, args.block, args.density):
        if only and not any(w in name for w in only):
            continue
        for _ in range(3):
            fn()
        stream.synchronize()
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        stream.synchronize()
        sleep((1,), (1,), (np.int64(args.sleep_ms * 1e6),))
        t0 = time.perf_counter()
        fn()
        after = (time.perf_counter() - t0) * 1e3
        stream.synchronize()
        row = {"op": name, "host us": float(np.median(times)) * 1e6, "after sleep ms": after,
               "waits": "YES" if after > args.sleep_ms / 2 else "no"}
        table.add(**row)
        print(row, flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(40):
                fn()
            prof.disable()
            stream.synchronize()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            lines = out.getvalue().splitlines()[:26]
            print(f"--- {name}: cProfile of 40 calls (tottime)\n" + "\n".join(lines))
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
