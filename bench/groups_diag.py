"""Column groups (tall arrays) piece by piece: the plan, the co-resident clusters and the walkers of each
one-pass launch, and its CUDA-graph time against a device copy under a few LAUNCH settings, same run.

    PYTHONPATH=. python bench/groups_diag.py [--shapes 65536x512,16384x2048 --dtypes bfloat16]
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
    ("max_cluster=8", {"max_cluster": 8}),
    ("no groups", {"group_tall": False}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x2048,32768x1024,65536x512,131072x256")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args(argv)
    import cupy

    from cusparseblocks import _ops_cols, ops
    from cusparseblocks._array import bfloat16, dtype_name

    table = Table(["dtype", "shape", "setting", "op", "plan", "walkers", "ms", "%copy"])
    rows = []
    cfg = _ops_cols.LAUNCH["cols1"]
    for dname in args.dtypes.split(","):
        dt = bfloat16 if dname == "bfloat16" else cupy.dtype(dname)
        for shape in args.shapes.split(","):
            R, C = (int(v) for v in shape.split("x"))
            rng = cupy.random.default_rng(0)
            x = (rng.standard_normal((R, C), dtype=cupy.float32) * 3 + 5).astype(dt)
            dy = rng.standard_normal((R, C), dtype=cupy.float32).astype(dt)
            y = cupy.empty_like(x)
            copy_ms = time_ms(lambda: cupy.copyto(y, x), graph=True)["median"]
            _, mean, rstd = ops.batch_norm_fprop(x)
            cases = [
                ("bn fwd", 2, "cols", (R, C, 1, 0), lambda: ops.batch_norm_fprop(x)),
                ("bn bwd", 3, "rx", (R, C, 2), lambda: ops.batch_norm_bprop(dy, x, None, mean, rstd)),
                ("ln0 bwd", 3, "rx", (R, C, 2),
                 lambda: ops.layer_norm_bprop(dy, x, None, mean, rstd, feature_axis=0)),
            ]
            for label, fields in SETTINGS:
                saved = dict(cfg)
                cfg.update(fields)
                _ops_cols._PLANS.clear()
                try:
                    for op, units, kind, sizes, fn in cases:
                        plan = _ops_cols._plan(kind, x.dtype, *sizes)
                        walkers = "-"
                        if plan is not None and plan.groups > 1:
                            name = "cols_fwd" if kind == "cols" else "cols_bwd_rx"
                            ln = "true" if op == "ln0 bwd" else "false"
                            extra = "" if kind == "cols" else f", {ln}, 8, true"
                            nc = _ops_cols._max_active_clusters(name, x.dtype, plan.cluster, plan.smem, extra)
                            walkers = f"{plan.persistent_grid(nc) // (plan.cluster * plan.groups)} of nc {nc}"
                        ms = time_ms(fn, graph=True)["median"]
                        desc = "-" if plan is None else (
                            f"cs{plan.cluster} {plan.row_bytes}B g{plan.groups} r{plan.rows_per_cta}")
                        row = {"dtype": dtype_name(x.dtype), "shape": shape, "setting": label, "op": op,
                               "plan": desc, "walkers": walkers, "ms": ms, "%copy": 100 * units / 2 * copy_ms / ms}
                        rows.append(row)
                        table.add(**row)
                        print(row, flush=True)
                finally:
                    cfg.clear()
                    cfg.update(saved)
                    _ops_cols._PLANS.clear()
    save_json("groups_diag", {"args": vars(args), "rows": rows},
              command="PYTHONPATH=. python bench/groups_diag.py " + " ".join(sys.argv[1:]))
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
