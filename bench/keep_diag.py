"""The tall-array kernels (cols_keep_*) against the cluster kernels, piece by piece: the plan of each op and
its CUDA-graph time against a device copy under a few LAUNCH settings, same run. --ncu: each op of the
selected settings three times without timing (for `ncu --kernel-name regex:cols_keep`).

    PYTHONPATH=. python bench/keep_diag.py [--shapes 65536x512,131072x256 --dtypes bfloat16] [--ncu]
"""

from __future__ import annotations

import argparse
import sys

try:
    from bench.harness import Table, save_json, time_ms
except ImportError:
    from cusparseblocks._timing import Table, save_json, time_ms

# (label, LAUNCH["cols1"] fields)
SETTINGS = [
    ("default", {}),
    ("keep never", {"keep": "never"}),
    ("keep always", {"keep": "always"}),
    ("keep U=8", {"keep": "always", "keep_defines": (("KP_U", "8"),)}),
    ("keep U=2", {"keep": "always", "keep_defines": (("KP_U", "2"),)}),
    ("keep no hints", {"keep": "always", "keep_defines": (("KP_HINTS", "0"),)}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x2048,32768x1024,65536x512,131072x256,262144x128")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--settings", default="", help="comma-separated substrings of the setting labels to run")
    ap.add_argument("--ncu", action="store_true", help="run each op 3 times, no timing (for ncu)")
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
            cases = [
                ("bn fwd", 2, "fwd", lambda: ops.batch_norm_fprop(x, g, g)),
                ("bn bwd", 3, "bwd", lambda: ops.batch_norm_bprop(dy, x, g, mean, rstd)),
                ("ln0 bwd", 3, "bwd", lambda: ops.layer_norm_bprop(dy, x, None, mean, rstd, feature_axis=0)),
            ]
            for label, fields in settings:
                saved = dict(cfg)
                cfg.update(fields)
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
                finally:
                    cfg.clear()
                    cfg.update(saved)
                    _ops_cols._PLANS.clear()
    if args.ncu:
        return 0
    save_json("keep_diag", {"args": vars(args), "rows": rows},
              command="PYTHONPATH=. python bench/keep_diag.py " + " ".join(sys.argv[1:]))
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
