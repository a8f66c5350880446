"""The tall-array kernels (cols_keep_*) against the cluster kernels, piece by piece: the plan of each op and
its CUDA-graph time against a device copy under a few LAUNCH settings, same run. --ncu: each op of the
selected settings three times without timing (for `ncu --kernel-name regex:cols_keep`). --prof: each op once
more on a build with KP_PROF (globaltimer stamps of every block's phases, kernels/ew_cols.cu), the phases'
times across blocks printed and saved. --rw: also a read-only and a write-only pass over the array (how fast
each phase of a keep kernel could go), in % of the copy as the ops (a pass moves one array, a copy two).

    PYTHONPATH=. python bench/keep_diag.py [--shapes 65536x512,131072x256 --dtypes bfloat16] [--ncu | --prof]
        [--rw]
"""

from __future__ import annotations

import argparse
import sys

try:
    from bench.harness import Table, save_json, time_ms
except ImportError:
    from cusparseblocks._timing import Table, save_json, time_ms

# (label, LAUNCH["cols1"] fields; "KEEP_SMEM": _ops_cols.KEEP_SMEM, the shared memory of kept rows a block)
SETTINGS = [
    ("default", {}),
    ("keep never", {"keep": "never"}),
    ("keep always", {"keep": "always"}),
    ("keep U=8", {"keep": "always", "keep_defines": (("KP_U", "8"),)}),
    ("keep U=2", {"keep": "always", "keep_defines": (("KP_U", "2"),)}),
    ("keep no hints", {"keep": "always", "keep_defines": (("KP_HINTS", "0"),)}),
    ("keep no pref", {"keep": "always", "keep_defines": (("KP_PREF", "0"),)}),
    ("keep 16K", {"keep": "always", "KEEP_SMEM": 16 * 1024}),
    ("keep 52K", {"keep": "always", "KEEP_SMEM": 52 * 1024}),
]
# the stamps of KP_PROF (kernels/ew_cols.cu): 0 entry, 1 streamed rows summed, 2 block's sums, 3 tile's sums
# (after grid_sums), 4 streamed rows written, 5 all written
PHASES = ["entry", "streamed read", "block sums", "tile sums", "streamed written", "end"]


# the read-only and write-only passes of --rw: 16-byte vectors, 4 a thread in flight, a grid of 8 blocks an SM
_RW = r"""
extern "C" __global__ void rd_only(const uint4* __restrict__ p, long long n, unsigned* __restrict__ out) {
    const long long step = (long long)gridDim.x * blockDim.x;
    unsigned a = 0;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * step < n; i += 4 * step) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = __ldcs(p + i + u * step);
#pragma unroll
        for (int u = 0; u < 4; ++u) a ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += step) { const uint4 v = __ldcs(p + i); a ^= v.x ^ v.y ^ v.z ^ v.w; }
    if (a == 0x9e3779b9u) out[0] = a;  // keeps the loads
}
extern "C" __global__ void wr_only(uint4* __restrict__ p, long long n) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        __stcs(p + i, make_uint4((unsigned)i, 1u, 2u, 3u));
}
"""


def _rw_passes(x):
    """[(label, fn)]: read-only passes over ``x``'s bytes with 2, 4, 8 and 16 blocks of 256 threads an SM (4
    16-byte loads a thread in flight: 32 to 256 KiB an SM), and a write-only pass (8 blocks an SM)."""
    import cupy

    mod = cupy.RawModule(code=_RW)
    rd, wr = mod.get_function("rd_only"), mod.get_function("wr_only")
    n = x.nbytes // 16
    out = cupy.zeros(1, dtype=cupy.uint32)
    buf = cupy.empty(x.nbytes // 4, dtype=cupy.uint32)
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    passes = [(f"read only {k}/SM" if k != 8 else "read only",
               lambda k=k: rd((sms * k,), (256,), (x, cupy.int64(n), out))) for k in (2, 4, 8, 16)]
    return passes + [("write only", lambda: wr((sms * 8,), (256,), (buf, cupy.int64(n))))]


def _prof_array(kind, ln, dtype, defines):
    """The kp_prof array (uint64 [4096 * 8]) of the loaded cols_keep kernel ``kind`` (``ln``: the layer-norm
    backward) built with ``defines``."""
    import hashlib

    import cupy

    from cusparseblocks import _ops_cols, compiler
    from cusparseblocks._array import dtype_name

    name, extra = ("cols_keep_fwd", "") if kind == "fwd" else ("cols_keep_bwd", ", true" if ln else ", false")
    dev = cupy.cuda.runtime.getDevice()
    spec = compiler.KernelSpec(_ops_cols._SOURCE, f"{name}<{_ops_cols._CTYPE[dtype_name(dtype)]}{extra}>",
                               tuple(defines))
    cubin = compiler.compile_specs([spec], compiler.device_arch(dev))[spec].cubin
    module = compiler._modules[(dev, hashlib.sha1(cubin).digest())]
    ptr = module.get_global_var("kp_prof")
    n = 4096 * 8
    mem = cupy.cuda.UnownedMemory(ptr, n * 8, module)
    return cupy.ndarray((4096, 8), cupy.uint64, cupy.cuda.MemoryPointer(mem, 0))


def _profile(fn, kind, ln, dtype, defines, plan_of):
    """Run ``fn`` once on the KP_PROF build; per phase (µs from the earliest entry) min / median / max over
    the blocks of that build's plan (``plan_of()``: its own occupancy may give another grid)."""
    import cupy
    import numpy as np

    fn()  # compiles and loads the build
    arr = _prof_array(kind, ln, dtype, defines)
    arr.fill(0)
    cupy.cuda.get_current_stream().synchronize()
    fn()
    cupy.cuda.get_current_stream().synchronize()
    kp = plan_of()
    a = cupy.asnumpy(arr[: kp.tiles * kp.bpt, :6]).astype(np.int64)
    a = (a - a[:, 0].min()) / 1000.0
    out = {}
    for k, ph in enumerate(PHASES):
        col = a[:, k]
        out[ph] = [float(col.min()), float(np.median(col)), float(col.max())]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x2048,32768x1024,65536x512,131072x256,262144x128")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--settings", default="", help="comma-separated substrings of the setting labels to run")
    ap.add_argument("--ncu", action="store_true", help="run each op 3 times, no timing (for ncu)")
    ap.add_argument("--prof", action="store_true", help="phase stamps of each keep setting's kernels")
    ap.add_argument("--rw", action="store_true", help="also a read-only and a write-only pass")
    args = ap.parse_args(argv)
    import cupy

    from cusparseblocks import _ops_cols, ops
    from cusparseblocks._array import bfloat16, dtype_name

    settings = [s for s in SETTINGS if not args.settings or any(k in s[0] for k in args.settings.split(","))]
    table = Table(["dtype", "shape", "setting", "op", "plan", "ms", "%copy"])
    rows = []
    cfg = _ops_cols.LAUNCH["cols1"]
    for dname in args.dtypes.split(","):
        dt = bfloat16 if dname == "bfloat16" else cupy.dtype(dname)
        for shape in args.shapes.split(","):
            R, C = (int(v) for v in shape.split("x"))
            rng = cupy.random.default_rng(0)
            x = (rng.standard_normal((R, C), dtype=cupy.float32) * 3 + 5).astype(dt)
            dy = rng.standard_normal((R, C), dtype=cupy.float32).astype(dt)
            g = (rng.standard_normal(C, dtype=cupy.float32) * 0.5 + 1).astype(dt)
            y = cupy.empty_like(x)
            copy_ms = None if args.ncu else time_ms(lambda: cupy.copyto(y, x), graph=True)["median"]
            _, mean, rstd = ops.batch_norm_fprop(x)
            if args.rw and not args.ncu:
                for op, fn in _rw_passes(x):
                    ms = time_ms(fn, graph=True)["median"]
                    row = {"dtype": dtype_name(x.dtype), "shape": shape, "setting": "-", "op": op,
                           "plan": "-", "ms": ms, "%copy": 100 * 1 / 2 * copy_ms / ms}
                    rows.append(row)
                    table.add(**row)
                    print(row, flush=True)
            g0 = (rng.standard_normal(R, dtype=cupy.float32) * 0.5 + 1).astype(dt)  # a gain and bias per row
            cases = [
                ("bn fwd", 2, "fwd", lambda: ops.batch_norm_fprop(x, g, g)),
                ("ln0 fwd +g", 2, "fwd", lambda: ops.layer_norm_fprop(x, g0, g0, feature_axis=0)),
                ("bn bwd", 3, "bwd", lambda: ops.batch_norm_bprop(dy, x, g, mean, rstd)),
                ("ln0 bwd", 3, "bwd", lambda: ops.layer_norm_bprop(dy, x, None, mean, rstd, feature_axis=0)),
                ("ln0 bwd +g", 3, "bwd", lambda: ops.layer_norm_bprop(dy, x, g0, mean, rstd, feature_axis=0)),
            ]
            for label, fields in settings:
                saved, smem = dict(cfg), _ops_cols.KEEP_SMEM
                cfg.update({k: v for k, v in fields.items() if k != "KEEP_SMEM"})
                _ops_cols.KEEP_SMEM = fields.get("KEEP_SMEM", smem)
                _ops_cols._PLANS.clear()
                try:
                    for op, units, kind, fn in cases:
                        if args.ncu:
                            for _ in range(3):
                                fn()
                            cupy.cuda.get_current_stream().synchronize()
                            continue
                        ms = time_ms(fn, graph=True)["median"]
                        kp = _ops_cols._PLANS.get(_ops_cols._plan_key("keep-" + kind, x.dtype, R, C))
                        desc = "-" if kp is None else f"t{kp.tiles} b{kp.bpt} r{kp.rows_per_cta} k{kp.keep}"
                        row = {"dtype": dtype_name(x.dtype), "shape": shape, "setting": label, "op": op,
                               "plan": desc, "ms": ms, "%copy": 100 * units / 2 * copy_ms / ms}
                        rows.append(row)
                        table.add(**row)
                        print(row, flush=True)
                        if args.prof and kp is not None:
                            defines = tuple(cfg["keep_defines"]) + (("KP_PROF", "1"),)
                            cfg["keep_defines"] = defines
                            _ops_cols._PLANS.clear()
                            try:
                                key = _ops_cols._plan_key("keep-" + kind, x.dtype, R, C)
                                ph = _profile(fn, kind, op.startswith("ln"), x.dtype, defines,
                                              lambda key=key: _ops_cols._PLANS[key])
                            finally:
                                cfg["keep_defines"] = defines[:-1]
                                _ops_cols._PLANS.clear()
                            row["phases_us"] = ph
                            stamps = (f"{k}: {v[0]:.1f}/{v[1]:.1f}/{v[2]:.1f}" for k, v in ph.items())
                            print("   " + "  ".join(stamps), flush=True)
                finally:
                    cfg.clear()
                    cfg.update(saved)
                    _ops_cols.KEEP_SMEM = smem
                    _ops_cols._PLANS.clear()
    if args.ncu:
        return 0
    save_json("keep_diag", {"args": vars(args), "rows": rows},
              command="PYTHONPATH=. python bench/keep_diag.py " + " ".join(sys.argv[1:]))
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
