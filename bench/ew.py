"""Helper-op bandwidth on the GPU: cusparseblocks.ops against PyTorch's own kernels and a device copy.

Each row times one op on a tensor of >= 64 MiB (default [8192, 4096]) and reports the bytes it must
move (inputs read once, outputs written once), the bandwidth that gives, its share of a device-to-device
copy of the same bytes (the ceiling), and PyTorch's time for the same op in the same run. "ms" enqueues the
calls back to back as a training loop does (host-bound when "host us" reaches it); "graph ms" replays them
from a CUDA graph, the GPU's time alone, and "%copy graph" compares it with the copy's graph time;
"torch graph ms" replays PyTorch's calls from a torch CUDA graph, so "vs torch graph" compares the two
GPUs' work without either side's host time.

    PYTHONPATH=. python bench/ew.py [--rows 8192 --cols 4096 --dtypes bfloat16,float32] [--only norm,weight]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

try:
    from bench.harness import Table, save_json, time_ms
except ImportError:  # the shared harness lives in the package until bench/harness.py exists
    from cusparseblocks._timing import Table, save_json, time_ms


def _torch():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def cases(cp, ops, torch, dtype, N, F, rng_seed=0):
    """(name, bytes moved, [ours(arg-set)...], torch fn or None, arg sets) for one dtype."""
    from cusparseblocks._array import bfloat16

    dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rs = cp.random.RandomState(rng_seed)

    def arr(*shape):
        return rs.standard_normal(shape, dtype=cp.float32).astype(dt)

    views = {}  # id -> (array, tensor): one DLPack view per array, made outside any graph capture

    def T(a):
        hit = views.get(id(a))
        if hit is None:
            hit = views[id(a)] = (a, torch.from_dlpack(a))
        return hit[1]

    F_ = torch.nn.functional if torch else None
    e = np.dtype(dt).itemsize
    n = N * F
    # g0, b0: a gain and bias per row (layer norm with features first)
    sets = [
        dict(x=arr(N, F), y=arr(N, F), dy=arr(N, F), b=arr(F), g=arr(F), g0=arr(N), b0=arr(N))
        for _ in range(2)
    ]
    H = F // 4
    lstm = [dict(z=arr(N, 4 * H), cp=arr(N, H), dh=arr(N, H), dc=arr(N, H)) for _ in range(2)]
    if torch:  # PyTorch's fused cell adds input and hidden gates: the hidden ones are zeros here
        for s in lstm:
            s["zeros"] = torch.zeros_like(T(s["z"]))
    out = []

    def add(name, nbytes, ours, theirs, args):
        out.append((name, nbytes, ours, theirs if torch else None, args))

    add(
        "copy",
        2 * n * e,
        lambda s: s["y"].__setitem__(Ellipsis, s["x"]),
        lambda s: T(s["y"]).copy_(T(s["x"])),
        sets,
    )
    for act, tfn in (
        ("relu", lambda t: F_.relu(t)),
        ("gelu_tanh", lambda t: F_.gelu(t, approximate="tanh")),
        ("gelu_erf", lambda t: F_.gelu(t)),
        ("sigmoid", lambda t: torch.sigmoid(t)),
        ("tanh", lambda t: torch.tanh(t)),
        ("softplus", lambda t: F_.softplus(t)),
        ("swish", lambda t: F_.silu(t)),
        ("elu", lambda t: F_.elu(t)),
    ):
        add(
            f"{act} fwd",
            2 * n * e,
            lambda s, a=act: ops.activation_fprop(s["x"], a),
            lambda s, f=tfn: f(T(s["x"])),
            sets,
        )
    add(
        "gelu_tanh bwd",
        3 * n * e,
        lambda s: ops.activation_bprop(s["dy"], s["x"], "gelu_tanh"),
        lambda s: torch.ops.aten.gelu_backward(T(s["dy"]), T(s["x"]), approximate="tanh"),
        sets,
    )
    add(
        "relu bwd",
        3 * n * e,
        lambda s: ops.activation_bprop(s["dy"], s["x"], "relu"),
        lambda s: torch.ops.aten.threshold_backward(T(s["dy"]), T(s["x"]), 0),
        sets,
    )
    add(
        "elu bwd",
        3 * n * e,
        lambda s: ops.activation_bprop(s["dy"], s["x"], "elu"),
        lambda s: torch.ops.aten.elu_backward(T(s["dy"]), 1.0, 1.0, 1.0, False, T(s["x"])),
        sets,
    )
    add(
        "bias+gelu fwd",
        2 * n * e,
        lambda s: ops.activation_fprop(s["x"], "gelu_tanh", bias=s["b"]),
        lambda s: F_.gelu(T(s["x"]) + T(s["b"]), approximate="tanh"),
        sets,
    )
    add(
        "bias+relu bwd",
        3 * n * e,
        lambda s: ops.activation_bprop(s["dy"], s["x"], "relu", bias=s["b"]),
        lambda s: _torch_bias_relu_bwd(torch, T(s["dy"]), T(s["x"]), T(s["b"])),
        sets,
    )
    add("add", 3 * n * e, lambda s: ops.add_fprop(s["x"], s["y"]), lambda s: T(s["x"]) + T(s["y"]), sets)
    add(
        "mul (mlstm)",
        3 * n * e,
        lambda s: ops.mlstm_fprop(s["x"], s["y"]),
        lambda s: T(s["x"]) * T(s["y"]),
        sets,
    )
    add(
        "mlstm bwd",
        5 * n * e,
        lambda s: ops.mlstm_bprop(s["dy"], s["x"], s["y"]),
        lambda s: (T(s["dy"]) * T(s["y"]), T(s["dy"]) * T(s["x"])),
        sets,
    )
    add("scale", 2 * n * e, lambda s: ops.scale_fprop(s["x"], 0.5), lambda s: T(s["x"]) * 0.5, sets)
    add(
        "dropout fwd",
        2 * n * e,
        lambda s: ops.dropout_fprop(s["x"], 0.1, 1234, 5),
        lambda s: F_.dropout(T(s["x"]), 0.1, training=True),
        sets,
    )
    if torch:
        for s in sets:
            s["mask"] = T(ops.dropout_mask(s["x"].shape, 0.1, 1234, 5, xp=cp))
    add(
        "dropout bwd",
        2 * n * e,
        lambda s: ops.dropout_bprop(s["dy"], 0.1, 1234, 5),
        lambda s: torch.ops.aten.native_dropout_backward(T(s["dy"]), s["mask"], 1 / 0.9),
        sets,
    )
    add(
        "layer_norm fwd ax1",
        2 * n * e,
        lambda s: ops.layer_norm_fprop(s["x"], s["g"], s["b"]),
        lambda s: F_.layer_norm(T(s["x"]), (F,), T(s["g"]), T(s["b"])),
        sets,
    )
    ln = [dict(s, stats=ops.layer_norm_fprop(s["x"], s["g"], s["b"])) for s in sets]
    if torch:
        for s in ln:
            s["tstats"] = torch.ops.aten.native_layer_norm(T(s["x"]), (F,), T(s["g"]), T(s["b"]), 1e-5)
    add(
        "layer_norm bwd ax1",
        3 * n * e,
        lambda s: ops.layer_norm_bprop(s["dy"], s["x"], s["g"], s["stats"][1], s["stats"][2]),
        lambda s: torch.ops.aten.native_layer_norm_backward(
            T(s["dy"]),
            T(s["x"]),
            (F,),
            s["tstats"][1],
            s["tstats"][2],
            T(s["g"]),
            T(s["b"]),
            [True, True, True],
        ),
        ln,
    )
    add(
        "layer_norm fwd ax0",
        2 * n * e,
        lambda s: ops.layer_norm_fprop(s["x"], None, None, feature_axis=0),
        None,
        sets,
    )
    ln0 = [dict(s, stats=ops.layer_norm_fprop(s["x"], None, None, feature_axis=0)) for s in sets]
    add(
        "layer_norm bwd ax0",
        3 * n * e,
        lambda s: ops.layer_norm_bprop(s["dy"], s["x"], None, s["stats"][1], s["stats"][2], feature_axis=0),
        None,
        ln0,
    )
    # the same with a gain and bias per feature (per row here), as the ax1 rows have
    add(
        "layer_norm fwd ax0 +gain",
        2 * n * e,
        lambda s: ops.layer_norm_fprop(s["x"], s["g0"], s["b0"], feature_axis=0),
        None,
        sets,
    )
    ln0g = [dict(s, stats=ops.layer_norm_fprop(s["x"], s["g0"], s["b0"], feature_axis=0)) for s in sets]
    add(
        "layer_norm bwd ax0 +gain",
        3 * n * e,
        lambda s: ops.layer_norm_bprop(
            s["dy"], s["x"], s["g0"], s["stats"][1], s["stats"][2], feature_axis=0
        ),
        None,
        ln0g,
    )
    add(
        "batch_norm fwd ax1",
        2 * n * e,
        lambda s: ops.batch_norm_fprop(s["x"], s["g"], s["b"]),
        lambda s: F_.batch_norm(T(s["x"]), None, None, T(s["g"]), T(s["b"]), training=True),
        sets,
    )
    bn = [dict(s, stats=ops.batch_norm_fprop(s["x"], s["g"], s["b"])) for s in sets]
    if torch:
        for s in bn:
            s["tstats"] = torch.ops.aten.native_batch_norm(
                T(s["x"]), T(s["g"]), T(s["b"]), None, None, True, 0.1, 1e-5
            )
    add(
        "batch_norm bwd ax1",
        3 * n * e,
        lambda s: ops.batch_norm_bprop(s["dy"], s["x"], s["g"], s["stats"][1], s["stats"][2]),
        lambda s: torch.ops.aten.native_batch_norm_backward(
            T(s["dy"]),
            T(s["x"]),
            T(s["g"]),
            None,
            None,
            s["tstats"][1],
            s["tstats"][2],
            True,
            1e-5,
            [True, True, True],
        ),
        bn,
    )
    for s in sets:
        s["rm"] = rs.standard_normal(F, dtype=cp.float32)
        s["rv"] = rs.random_sample(F, dtype=cp.float32) + 0.5
    add(
        "batch_norm inf ax1",
        2 * n * e,
        lambda s: ops.batch_norm_fprop(
            s["x"], s["g"], s["b"], training=False, running_mean=s["rm"], running_var=s["rv"]
        ),
        lambda s: F_.batch_norm(T(s["x"]), T(s["rm"]), T(s["rv"]), T(s["g"]), T(s["b"]), training=False),
        sets,
    )
    add(
        "lstm_gates fwd",
        7 * N * H * e,
        lambda s: ops.lstm_gates_fprop(s["z"], s["cp"]),
        lambda s: torch.ops.aten._thnn_fused_lstm_cell(T(s["z"]), s["zeros"], T(s["cp"]))[:2],
        lstm,
    )
    add(
        "lstm_gates bwd",
        12 * N * H * e,
        lambda s: ops.lstm_gates_bprop(s["dh"], s["dc"], s["z"], s["cp"]),
        None,
        lstm,
    )
    # block-sparse weights w [nnz, b, b] of the same bytes as x: b = 32, half of a square layout
    from cusparseblocks.blocklayout import BlockLayout

    b = 32
    nnz = n // (b * b)
    side = int(np.ceil(np.sqrt(2 * nnz)))
    flat = np.zeros(side * side, bool)
    flat[np.random.default_rng(rng_seed).permutation(side * side)[:nnz]] = True
    layout = BlockLayout(flat.reshape(side, side))
    wn = []
    for _ in range(2):
        s = dict(w=arr(nnz, b, b), dv=arr(nnz, b, b), gu=arr(layout.out_blocks * b), gb=arr(nnz))
        s["ru"] = ops.weight_norm_fprop(layout, s["w"], s["gu"], per="unit")[1]
        s["rb"] = ops.weight_norm_fprop(layout, s["w"], s["gb"], per="block")[1]
        wn.append(s)
    add(
        "weight_norm unit fwd",
        2 * n * e,
        lambda s: ops.weight_norm_fprop(layout, s["w"], s["gu"], per="unit"),
        None,
        wn,
    )
    add(
        "weight_norm unit bwd",
        3 * n * e,
        lambda s: ops.weight_norm_bprop(layout, s["dv"], s["w"], s["gu"], s["ru"], per="unit"),
        None,
        wn,
    )
    add(
        "weight_norm block fwd",
        2 * n * e,
        lambda s: ops.weight_norm_fprop(layout, s["w"], s["gb"], per="block"),
        lambda s: torch._weight_norm(T(s["w"]), T(s["gb"]).view(-1, 1, 1), 0),
        wn,
    )
    add(
        "weight_norm block bwd",
        3 * n * e,
        lambda s: ops.weight_norm_bprop(layout, s["dv"], s["w"], s["gb"], s["rb"], per="block"),
        None,
        wn,
    )
    return out


_ELEMENTWISE = (
    "relu fwd",
    "gelu_tanh fwd",
    "gelu_erf fwd",
    "add",
    "relu bwd",
    "gelu_tanh bwd",
    "bias+gelu fwd",
    "mlstm bwd",
)
_ACT_FWD = ("relu fwd", "gelu_tanh fwd", "gelu_erf fwd", "sigmoid fwd", "tanh fwd", "softplus fwd", "swish fwd",
            "elu fwd", "scale")
_COLS = ("layer_norm fwd ax0", "batch_norm fwd ax1", "batch_norm bwd ax1")
_COLS1 = _COLS + ("layer_norm bwd ax0", "layer_norm fwd ax0 +gain", "layer_norm bwd ax0 +gain",
                  "weight_norm unit fwd", "weight_norm unit bwd")
# (label, ops.LAUNCH kind, field, value, the ops it changes): timed against the defaults with --variants
VARIANTS = [
    ("elementwise unroll=4", "elementwise", "unroll", 4, _ELEMENTWISE),
    ("elementwise act_kernels=False", "elementwise", "act_kernels", False, _ELEMENTWISE),
    ("elementwise act_fwd_vecs=2", "elementwise", "act_fwd_vecs", 2, _ACT_FWD),
    ("elementwise act_fwd_vecs=4", "elementwise", "act_fwd_vecs", 4, _ACT_FWD),
    ("rows_fwd vecs=2", "rows_fwd", "vecs", 2, ("layer_norm fwd ax1",)),
    ("rows_fwd vecs=8", "rows_fwd", "vecs", 8, ("layer_norm fwd ax1",)),
    ("rows_fwd vecs=16", "rows_fwd", "vecs", 16, ("layer_norm fwd ax1",)),
    ("rows_fwd threads=256", "rows_fwd", "threads", 256, ("layer_norm fwd ax1",)),
    ("rows_bwd_cols vecs=1", "rows_bwd_cols", "vecs", 1, ("layer_norm bwd ax1",)),
    ("rows_bwd_cols vecs=4", "rows_bwd_cols", "vecs", 4, ("layer_norm bwd ax1",)),
    ("rows_bwd_cols groups=2", "rows_bwd_cols", "groups", 2, ("layer_norm bwd ax1",)),
    ("rows_bwd_cols groups=6", "rows_bwd_cols", "groups", 6, ("layer_norm bwd ax1",)),
    ("cols reverse=True", "cols", "reverse", True, _COLS),
    ("cols blocks_per_sm=8", "cols", "blocks_per_sm", 8, _COLS),
    # the one-pass column-statistics kernels (cusparseblocks/_ops_cols.py LAUNCH; defaults: 128-, 64-, 32-byte
    # rows, clusters up to 16, 72 KiB then 112 KiB blocks): the old 3-pass path, portable clusters, the
    # first widths, one budget tier, clusters walking 2 tiles (double-buffered)
    ("cols1 mode=fallback", "cols1", "mode", "fallback", _COLS1),
    ("cols1 max_cluster=8", "cols1", "max_cluster", 8, _COLS1),
    ("cols1 row_bytes=64,32", "cols1", "row_bytes", (64, 32), _COLS1),
    ("cols1 cta_bytes=112K", "cols1", "cta_bytes", 112 * 1024, _COLS1),
    # no plan of 1 block an SM (the 221 KiB tier): such tall arrays take the split path instead
    ("cols1 max_bytes=112K", "cols1", "max_bytes", 112 * 1024, _COLS1),
    ("cols1 2 tiles/cluster", "cols1", "tiles_per_cluster", 2, _COLS1),
    # tall arrays without column groups (narrower rows, one block an SM, or the split path)
    ("cols1 group_tall=False", "cols1", "group_tall", False, _COLS1),
    # the tall-array kernels (cols_keep_*): never (column groups, narrower rows, the split path), or wherever
    # they have a plan (also where one cluster holds a column tile)
    ("cols1 keep=never", "cols1", "keep", "never", _COLS1),
    ("cols1 keep=always", "cols1", "keep", "always", _COLS1),
]


def _torch_bias_relu_bwd(torch, dy, x, b):
    dx = torch.ops.aten.threshold_backward(dy, x + b, 0)
    return dx, dx.sum(0)


def _compile_one(spec_arch):
    from cusparseblocks import compiler

    spec, arch = spec_arch
    compiler.compile_specs([spec], arch)


def warm(arch: str, jobs: int = 16) -> int:
    """Compile every ew specialization into the on-disk cache, in parallel worker processes."""
    import concurrent.futures
    import multiprocessing

    from cusparseblocks import _ops_cols, compiler, ops

    specs = list(ops._specializations())
    specs += [s for s in _ops_cols._specializations() if compiler.target_arch(s.source, arch)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as ex:
        list(ex.map(_compile_one, [(s, arch) for s in specs]))
    return len(specs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument(
        "--calls",
        type=int,
        default=8,
        help="back-to-back calls per timed region (launch overhead overlaps the GPU, as in a model)",
    )
    ap.add_argument(
        "--variants", action="store_true", help="also time the LAUNCH table entries of VARIANTS on their ops"
    )
    ap.add_argument(
        "--variant", default="", help="comma-separated substrings: with --variants, the labels with one"
    )
    ap.add_argument(
        "--warm-only", action="store_true", help="compile every specialization (parallel) and exit"
    )
    ap.add_argument(
        "--only",
        "--ops",
        dest="only",
        default="",
        help="comma-separated substrings: time only the ops whose name contains one (copy always runs)",
    )
    args = ap.parse_args(argv)
    import cupy

    from cusparseblocks import compiler

    if args.warm_only:
        t0 = time.perf_counter()
        n = warm(compiler.device_arch())
        print(f"warm: {n} specializations in {time.perf_counter() - t0:.1f} s")
        return 0

    from cusparseblocks import _ops_cols, ops

    torch = _torch()
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    table = Table(["dtype", "op", "MiB", "ms", "GB/s", "%copy", "torch ms", "vs torch", "host us", "graph ms",
                   "%copy graph", "torch graph ms", "vs torch graph"])
    rows = []
    warm_x = cupy.ones(1 << 28, dtype=cupy.float32)  # ~0.3 s of copies so the clocks are up
    for _ in range(100):
        warm_x.copy()
    cupy.cuda.get_current_stream().synchronize()
    del warm_x
    k = args.calls

    def timed(fn, sets):
        seq = [sets[i % len(sets)] for i in range(k)]
        return time_ms(lambda f=fn, q=seq: [f(s) for s in q], reps=args.reps)["median"] / k

    def graphed(fn, sets):
        """GPU time alone: the calls captured in a CUDA graph and replayed (no host time); NaN when the op
        cannot be captured (a host synchronization inside)."""
        try:
            return time_ms(lambda s, f=fn: f(s), rotate=[(s,) for s in sets], graph=True)["median"]
        except Exception as exc:  # noqa: BLE001
            print(f"graph {fn}: {type(exc).__name__}: {exc}", flush=True)
            return float("nan")

    def torch_graphed(fn, sets):
        """PyTorch's GPU time alone, as graphed() for ours: the calls captured in a torch CUDA graph (warmed
        up on a side stream first) and its replays timed with CUDA events, median of 7 batches; NaN when the
        op cannot be captured."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for s in sets:
                    fn(s)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for s in sets:
                    fn(s)
            g.replay()
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            stop.record()
            stop.synchronize()
            reps = int(min(max(1, 60.0 / 7 / max(start.elapsed_time(stop), 1e-3)), 5000))
            times = []
            for _ in range(7):
                start.record()
                for _ in range(reps):
                    g.replay()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) / (reps * len(sets)))
            del g
            return float(np.median(times))
        except Exception as exc:  # noqa: BLE001
            print(f"torch graph {fn}: {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.synchronize()
            return float("nan")

    vrows = []
    vtable = Table(["dtype", "variant", "op", "ms", "default ms", "default/variant"])
    for dtype in args.dtypes.split(","):
        copy_gbs = copy_graph_gbs = None
        ours_ms = {}
        case_list = cases(cupy, ops, torch, dtype, args.rows, args.cols)
        for name, nbytes, ours, theirs, sets in case_list:
            if only and name != "copy" and not any(w in name for w in only):
                continue
            t = timed(ours, sets)
            ours_ms[name] = t
            cupy.cuda.get_current_stream().synchronize()
            t0 = time.perf_counter()
            for s in [sets[i % len(sets)] for i in range(4 * k)]:
                ours(s)
            host_us = (time.perf_counter() - t0) / (4 * k) * 1e6  # enqueue time: host-bound if >= ms
            cupy.cuda.get_current_stream().synchronize()
            tt = None
            if theirs:
                try:
                    tt = timed(theirs, sets)
                except Exception as exc:  # noqa: BLE001 - a PyTorch build without the op: no column
                    print(f"torch {name}: {type(exc).__name__}: {exc}", flush=True)
            if torch is not None and theirs:  # torch's work must be done before the next case's timing
                torch.cuda.synchronize()
            ttg = torch_graphed(theirs, sets) if tt is not None else None
            if torch is not None and theirs:
                torch.cuda.synchronize()
            tg = graphed(ours, sets)
            gbs, gbs_graph = nbytes / (t * 1e-3) / 1e9, nbytes / (tg * 1e-3) / 1e9
            if name == "copy":
                copy_gbs, copy_graph_gbs = gbs, gbs_graph
            row = dict(
                dtype=dtype,
                op=name,
                MiB=nbytes / 2**20,
                ms=t,
                **{"GB/s": gbs},
                **{"%copy": 100 * gbs / copy_gbs if copy_gbs else float("nan")},
                **{"torch ms": tt if tt is not None else "-"},
                **{"vs torch": (tt / t) if tt is not None else "-"},
                **{"host us": host_us},
                **{"graph ms": tg},
                **{"%copy graph": 100 * gbs_graph / copy_graph_gbs if copy_graph_gbs else float("nan")},
                **{"torch graph ms": ttg if ttg is not None else "-"},
                **{"vs torch graph": (ttg / tg) if ttg is not None else "-"},
            )
            rows.append(row)
            table.add(**row)
            print(
                f"{dtype:9s} {name:22s} {t:8.3f} ms  {gbs:7.0f} GB/s  torch {tt or float('nan'):8.3f}",
                flush=True,
            )
        if not args.variants:
            continue
        picked = [w.strip() for w in args.variant.split(",") if w.strip()]
        for label, kind, field, value, names in VARIANTS:
            if picked and not any(w in label for w in picked):
                continue
            launch = ops.LAUNCH if kind in ops.LAUNCH else _ops_cols.LAUNCH
            fields, values = (field, value) if isinstance(field, tuple) else ((field,), (value,))
            saved = [launch[kind][f] for f in fields]
            launch[kind].update(zip(fields, values))
            ops._PLANS.clear()  # launch plans are cached from the table
            _ops_cols._PLANS.clear()
            try:
                for name, _nbytes, ours, _theirs, sets in case_list:
                    if name not in names or name not in ours_ms:
                        continue
                    t = timed(ours, sets)
                    vrow = dict(dtype=dtype, variant=label, op=name, ms=t, **{"default ms": ours_ms[name]})
                    vrow["default/variant"] = ours_ms[name] / t
                    vrows.append(vrow)
                    vtable.add(**vrow)
            finally:
                launch[kind].update(zip(fields, saved))
                ops._PLANS.clear()
                _ops_cols._PLANS.clear()
        del case_list
    path = save_json(
        "ew",
        {"args": vars(args), "rows": rows, "variants": vrows},
        command="PYTHONPATH=. python bench/ew.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(f"json: {path}")
    if vrows:
        print(vtable.render())
    print(table.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
