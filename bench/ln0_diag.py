"""The column-statistics backwards and the weight norm per unit, piece by piece (H100 diagnosis).

CUDA-graph time of layer norm's backward with features first, of its two launches (cols_bwd_rx with the row
sums, norm_finalize), of batch norm's backward kernel on the same array, and of the weight norm per unit
under several launch tables, each against a device copy of the same bytes in the same run.

    PYTHONPATH=. python bench/ln0_diag.py [--rows 8192 --cols 4096 --dtypes bfloat16,float16,float32]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

try:
    from bench.harness import Table, save_json, time_ms
except ImportError:
    from cusparseblocks._timing import Table, save_json, time_ms

# launch-table variants of the weight norm per unit: (label, LAUNCH["cols1"] entries)
WN_VARIANTS = [
    ("", {}),
    (" cta 112K", {"cta_bytes": (112 * 1024,)}),
    (" cluster<=8", {"max_cluster": 8}),
]


def _graph_ms(fn, sets):
    return time_ms(lambda s, f=fn: f(s), rotate=[(s,) for s in sets], graph=True)["median"]


def _wn_layout(R, C, b, seed=0):
    """bench/ew.py's layout: w [nnz, b, b] of R * C elements, half of a square block grid."""
    from cusparseblocks.blocklayout import BlockLayout

    nnz = R * C // (b * b)
    side = int(np.ceil(np.sqrt(2 * nnz)))
    flat = np.zeros(side * side, bool)
    flat[np.random.default_rng(seed).permutation(side * side)[:nnz]] = True
    return BlockLayout(flat.reshape(side, side)), nnz


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    args = ap.parse_args(argv)
    import cupy

    from cusparseblocks import _ops_cols, ops
    from cusparseblocks._array import bfloat16

    R, C, b = args.rows, args.cols, 32
    lay, nnz = _wn_layout(R, C, b)
    table = Table(["dtype", "piece", "graph ms", "%copy"])
    rows = []
    for dname in args.dtypes.split(","):
        dt = bfloat16 if dname == "bfloat16" else np.dtype(dname)
        rs = cupy.random.RandomState(1)

        def arr(*shape, rs=rs, dt=dt):
            return rs.standard_normal(shape, dtype=cupy.float32).astype(dt)

        sets = []
        for _ in range(2):
            s = dict(x=arr(R, C), dy=arr(R, C), g=arr(R), gc=arr(C))
            _, s["mean"], s["rstd"] = ops.layer_norm_fprop(s["x"], None, None, feature_axis=0)
            _, s["bm"], s["br"] = ops.batch_norm_fprop(s["x"], s["gc"], None, feature_axis=1)
            s["ws"] = _ops_cols.cols_bwd(s["dy"], s["x"], None, s["mean"], s["rstd"], 0, 1, want_sums=False,
                                         row_sums=True)[3]
            s["out"] = cupy.empty_like(s["x"])
            sets.append(s)
        # (label, tensor passes moved, fn)
        pieces = [
            ("copy (2 reads, 2 writes)", 4,
             lambda s: (cupy.copyto(s["out"], s["x"]), cupy.copyto(s["out"], s["dy"]))),
            ("LN bwd ax0, no gain (op)", 3,
             lambda s: ops.layer_norm_bprop(s["dy"], s["x"], None, s["mean"], s["rstd"], feature_axis=0)),
            ("LN bwd ax0, gain (op)", 3,
             lambda s: ops.layer_norm_bprop(s["dy"], s["x"], s["g"], s["mean"], s["rstd"], feature_axis=0)),
            ("  cols_bwd_rx LN, no gain", 3,
             lambda s: _ops_cols.cols_bwd(s["dy"], s["x"], None, s["mean"], s["rstd"], 0, 1, want_sums=False,
                                          row_sums=True)),
            ("  norm_finalize", 3,
             lambda s: ops._finalize(s["ws"], s["x"], None, R, 1.0, 0.0, 1, want=(), sums_t=True)),
            ("BN bwd ax1 kernel, gain", 3,
             lambda s: _ops_cols.cols_bwd(s["dy"], s["x"], s["gc"], s["bm"], s["br"], 1, 1, want_sums=True)),
        ]
        copy4 = None
        for name, k, fn in pieces:
            t = _graph_ms(fn, sets)
            copy4 = copy4 or t
            row = dict(dtype=dname, piece=name, **{"graph ms": t, "%copy": 100 * copy4 * k / 4 / t})
            rows.append(row)
            table.add(**row)
        wn = []
        for _ in range(2):
            s = dict(w=arr(nnz, b, b), dv=arr(nnz, b, b), gu=arr(lay.out_blocks * b))
            s["ru"] = ops.weight_norm_fprop(lay, s["w"], s["gu"], per="unit")[1]
            wn.append(s)
        cfg = _ops_cols.LAUNCH["cols1"]
        for direction, k in (("bwd", 3), ("fwd", 2)):
            for label, change in WN_VARIANTS if direction == "bwd" else WN_VARIANTS[:1]:
                saved = dict(cfg)
                cfg.update(change)
                _ops_cols._PLANS.clear()
                try:
                    if direction == "fwd":
                        fn = lambda s: ops.weight_norm_fprop(lay, s["w"], s["gu"], per="unit")  # noqa: E731
                    else:
                        fn = lambda s: ops.weight_norm_bprop(  # noqa: E731
                            lay, s["dv"], s["w"], s["gu"], s["ru"], per="unit"
                        )
                    plan = _ops_cols._plan("wn", dt, _ops_cols._max_blocks(lay), b, k - 1)
                    t = _graph_ms(fn, wn)
                finally:
                    cfg.clear()
                    cfg.update(saved)
                    _ops_cols._PLANS.clear()
                name = f"WN unit {direction}{label} (cluster {plan.cluster}, {plan.bpc} blocks)"
                row = dict(dtype=dname, piece=name, **{"graph ms": t, "%copy": 100 * copy4 * k / 4 / t})
                rows.append(row)
                table.add(**row)
        print(table.render(), flush=True)
    command = "PYTHONPATH=. python bench/ln0_diag.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = save_json("ln0_diag", {"args": vars(args), "rows": rows}, command=command)
    print(f"json: {path}")
    print(table.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
