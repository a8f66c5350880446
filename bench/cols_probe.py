"""Access-pattern probe of the one-pass column-statistics kernels (issue 5): how fast do their bytes move
without their arithmetic? kernels/cols_probe.cu copies a [8192, 4096] bf16 array (or two, XOR-ed) in the
pattern of kernels/ew_cols.cu: a group of 16 blocks owns a column tile over all rows, each block holds its
rows on chip, then stores. Rows vary the tile width (64 / 128 / 256 bytes a row), the cluster barrier
between loads and stores, clusters at all (CS 1: the same blocks, scheduled one by one), and where input 0
is held (shared memory or registers). The real kernels (cols_fwd, cols_bwd) and a device copy run in the
same process, so every row reads as % of that copy.

Run from the repository root on the GPU: `PYTHONPATH=. python bench/cols_probe.py [--waves]` (~30 s; --waves
also times the backward's pattern and kernel on 56, 64, 70 and 84 column tiles).
"""

from __future__ import annotations

import sys

import numpy as np

from bench.harness import Table, copy_bandwidth, gpu_name, save_json, time_ms
from cusparseblocks import _ops_cols, compiler

R, C = 8192, 4096  # bf16 elements: 8 KiB rows, 512 vectors a row
PITCH = C * 2 // 16


def launch_fn(cfg, out, a, b, cols=C):
    import cupy
    from cupy_backends.cuda.api import driver

    nin, vpr, cs, nr, mode, minb = cfg
    spec = compiler.KernelSpec("cols_probe.cu", _ops_cols.probe_name(cfg))
    fn = compiler.get_function(spec)
    rows = R // 16
    step = 256 // vpr
    smem = ((nin - (1 if nr else 0)) * rows + max(0, rows - nr * step) * (1 if nr else 0)) * vpr * 16
    driver.funcSetAttribute(fn.ptr, 9, 100)  # carve-out: all shared
    if cs > 8:
        driver.funcSetAttribute(fn.ptr, 14, 1)
    if smem > 48 * 1024:
        driver.funcSetAttribute(fn.ptr, 8, smem)
    pitch = cols * 2 // 16
    grid = -(-pitch // vpr) * 16
    args = (out, a, b, np.int32(R), np.int64(pitch), np.int32(rows), np.int32(16))
    return lambda: fn((grid,), (256,), args, stream=cupy.cuda.get_current_stream(), shared_mem=smem)


def main() -> int:
    import cupy

    copy_bps = copy_bandwidth(128 << 20)
    from cusparseblocks._array import bfloat16

    rng = cupy.random.default_rng(1)
    # finite bf16 values (the real kernels read them as numbers; the probes as bits)
    xa = (rng.standard_normal((R, C), dtype=cupy.float32) * 2 + 1).astype(bfloat16)
    dya = rng.standard_normal((R, C), dtype=cupy.float32).astype(bfloat16)
    xb, dyb = xa.view(cupy.uint16), dya.view(cupy.uint16)
    out = cupy.empty_like(xb)
    table = Table(["probe", "nin", "vpr", "cs", "nr", "mode", "ms", "GB/s", "%copy", "check"])
    rows = []

    def record(name, nin, cfg, ms, check):
        nbytes = (nin + 1) * R * C * 2
        gbs = nbytes / (ms * 1e-3) / 1e9
        row = dict(probe=name, nin=nin, vpr=cfg[1] if cfg else "", cs=cfg[2] if cfg else "",
                   nr=cfg[3] if cfg else "", mode=cfg[4] if cfg else "", ms=ms, **{"GB/s": gbs},
                   **{"%copy": 100 * gbs * 1e9 / copy_bps}, check=check)
        table.add(**row)
        rows.append(row)

    for name, cfg in _ops_cols.PROBES:
        nin = cfg[0]
        out.fill(0)
        fn = launch_fn(cfg, out, xb, dyb)
        fn()
        want = xb if nin == 1 else xb ^ dyb
        ok = bool((out == want).all())
        ms = time_ms(fn, graph=True)["median"]
        record(name, nin, cfg, ms, "ok" if ok else "WRONG")

    res = _ops_cols.cols_fwd(xa, None, None, 1e-5, 1)
    if res is None:
        print("cols_fwd: not applicable", file=sys.stderr)
    else:
        _, mean, rstd = res
        ms = time_ms(lambda: _ops_cols.cols_fwd(xa, None, None, 1e-5, 1), graph=True)["median"]
        record("cols_fwd (real)", 1, None, ms, "")
        cfg = _ops_cols.LAUNCH["cols1"]
        for regs in (True, False):  # cols_bwd_rx (x in registers), cols_bwd (both in shared memory)
            cfg["bwd_regs"] = regs
            _ops_cols._PLANS.clear()
            fn = lambda: _ops_cols.cols_bwd(dya, xa, None, mean, rstd, 1, 1, True)  # noqa: E731
            ms = time_ms(fn, graph=True)["median"]
            record("cols_bwd_rx (real)" if regs else "cols_bwd (real)", 2, None, ms, "")
        cfg["bwd_regs"] = True
        _ops_cols._PLANS.clear()
    if "--waves" in sys.argv:
        # wave quantization: the backward's 128-byte tiles on C / 64 tiles (bf16) when ~14 clusters of 16 fit
        # at once (ncu's max active clusters): 56 and 84 tiles fill whole waves, 64 and 70 leave a partial one
        probe = dict(_ops_cols.PROBES)["bwd 128B regs12 bar"]
        for cols in (3584, 4096, 4480, 5376):
            xw = (rng.standard_normal((R, cols), dtype=cupy.float32) * 2 + 1).astype(bfloat16)
            dw = rng.standard_normal((R, cols), dtype=cupy.float32).astype(bfloat16)
            ow = cupy.empty((R, cols), dtype=cupy.uint16)
            fn = launch_fn(probe, ow, xw.view(cupy.uint16), dw.view(cupy.uint16), cols)
            ms_p = time_ms(fn, graph=True)["median"]
            _, mw, rw = _ops_cols.cols_fwd(xw, None, None, 1e-5, 1)
            real = lambda d=dw, x=xw, m=mw, r=rw: _ops_cols.cols_bwd(d, x, None, m, r, 1, 1, True)  # noqa: E731
            ms_r = time_ms(real, graph=True)["median"]
            for name, ms in ((f"waves C={cols} probe", ms_p), (f"waves C={cols} cols_bwd_rx", ms_r)):
                gbs = 3 * R * cols * 2 / (ms * 1e-3) / 1e9
                row = dict(probe=name, nin=2, ms=ms, **{"GB/s": gbs}, **{"%copy": 100 * gbs * 1e9 / copy_bps})
                table.add(**row)
                rows.append(row)
    path = save_json("cols_probe", {"copy_GBps": copy_bps / 1e9, "gpu": gpu_name(), "rows": rows},
                     command="PYTHONPATH=. python " + " ".join(["bench/cols_probe.py", *sys.argv[1:]]))
    print(f"copy {copy_bps / 1e9:.0f} GB/s; {path}")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
