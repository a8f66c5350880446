"""Where the small-batch fprop's time goes: `PYTHONPATH=. python bench/small_diag.py`.

N = 32, K = M = 12288, b = 32 (bench/bsmm.py --small's case), fprop, CUDA-graph replay of 3 rotated input
sets. Rows per density: the dispatch's default, the small kernel forced (below 80 blocks per SM), the
per-column kernel, the other small kernels (tc_ring: per-warp rings; _pairs / _swz: other tile layouts;
_async: piece ends without a CTA barrier; *_late: split pieces counted after the stream; simt_ring: 4 warps;
simt_stages: the CTA-stage kernel),
the timing-only builds of xw_small_ring that each remove one piece of the work (_matmul_gpu.XW_SMALL_DIAG:
no mma, no x copies, no table walk, no piece ends, no zero-fill form, all of those = the streaming probe,
an empty kernel after the table load), constant weights (are the data values a factor?) and a kernel
that does nothing on the same grid (the graph's launch-to-launch floor). "x floor" = time / memory floor
(bytes of nonzero w + x + y over the measured copy bandwidth, as bench/bsmm.py).

`--ncu`: one launch of xw_small (fp16 fprop) at d = 0.5 and one at d = 0.05, nothing else (for
`ncu -k regex:xw_small --launch-count 2`). `--summarize FILE`: a short table from `ncu --page details --csv`.
"""

import argparse
import csv
import sys

import numpy as np

from bench.harness import Table, copy_bandwidth, gpu_name, save_json, time_ms

N, K, B = 32, 12288, 32
DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.02)


def _op(density, seed=0):
    from cusparseblocks import BlockSparseMatMul

    kb = K // B
    mask = np.random.default_rng(seed).random((kb, kb)) < density
    mask[np.arange(kb), np.arange(kb)] = True
    return BlockSparseMatMul(mask, B)


def _sets(bsmm, dtype, const=False, n_sets=3):
    import cupy as cp

    crng = cp.random.default_rng(1)
    sets = []
    for _ in range(n_sets):
        x = crng.standard_normal((N, K), dtype=cp.float32).astype(dtype)
        w = (crng.standard_normal(bsmm.w_shape, dtype=cp.float32) * 0.05).astype(dtype)
        if const:
            w[...] = 0.05
        sets.append((x, w, cp.empty((N, K), dtype=dtype)))
    return sets


def _time(bsmm, sets, op="fprop"):
    fn = lambda x, w, o: getattr(bsmm, op)(x, w, out=o)  # noqa: E731  (K = M: the same arrays serve bprop)
    return time_ms(fn, rotate=sets, graph=True, min_ms=30.0, batches=5)["median"]


def _nop_ms():
    import cupy as cp

    src = 'extern "C" __global__ void nop(int* p) { if (threadIdx.x == 1234567) p[0] = 0; }'
    nop = cp.RawKernel(src, "nop")
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    buf = cp.zeros(1, dtype=cp.int32)
    fn = lambda: nop((sms,), (256,), (buf,))  # noqa: E731
    return time_ms(fn, rotate=[()] * 3, graph=True, min_ms=30.0, batches=5)["median"]


def run(densities=DENSITIES, dtypes=("float16", "float32"), ops=("fprop",), variants=None):
    """``variants``: the named small kernels to time (default: the older ones and the diagnostics, fprop)."""
    import cupy as cp

    from cusparseblocks import _matmul_gpu as G

    bw = copy_bandwidth()
    rows = [dict(dtype="-", op="-", density="-", system="nop kernel (graph floor)", us=_nop_ms() * 1e3)]
    min_blocks = G.SMALL_TC_MIN_BLOCKS_PER_SM
    for dtype, op in ((dt, o) for dt in dtypes for o in ops):
        kind = "simt" if dtype == "float32" else "tc"
        diags = [n for n, (k, _, _) in G.XW_SMALL_DIAG.items() if k == kind] if op == "fprop" else []
        item = np.dtype(dtype).itemsize
        for d in densities:
            bsmm = _op(d)
            floor_us = (bsmm.layout.nnz * B * B + 2 * N * K) * item / bw * 1e6
            sets = _sets(bsmm, dtype)

            def add(system, t_ms, d=d, floor_us=floor_us, dtype=dtype, op=op):
                rows.append(dict(dtype=dtype, op=op, density=d, system=system, us=t_ms * 1e3,
                                 floor_us=floor_us, x_floor=t_ms * 1e3 / floor_us))

            add("default", _time(bsmm, sets, op))
            G.SMALL_TC_MIN_BLOCKS_PER_SM = 0
            bsmm._gpu_tables.clear()  # the plan cache does not key on the blocks-per-SM rule
            try:
                add("small kernel forced", _time(bsmm, sets, op))
                older = (("tc_stages", "tc_ring_pairs", "tc_ring_swz", "tc_ring_late", "tc_ring_kp")
                         if kind == "tc"
                         else ("simt_ring", "simt_stages", "simt_late"))
                if variants is not None:
                    named = {**G.XW_SMALL_VARIANTS, **G.XW_SMALL_DIAG}
                    older, diags = [v for v in variants if named[v][0] == kind], []
                for name in (*older, *diags):
                    G.small_variant = name
                    try:
                        add(name, _time(bsmm, sets, op))
                    finally:
                        G.small_variant = None
                if d in (0.5, 0.05) and variants is None and op == "fprop":
                    const = _sets(bsmm, dtype, const=True)
                    add("default kernel, w constant", _time(bsmm, const))
                    G.small_variant = f"{kind}_stages"
                    try:
                        add(f"{kind}_stages, w constant", _time(bsmm, const))
                    finally:
                        G.small_variant = None
                    del const
            finally:
                G.SMALL_TC_MIN_BLOCKS_PER_SM = min_blocks
                bsmm._gpu_tables.clear()
            G.small_enabled = False
            try:
                add("per-column", _time(bsmm, sets, op))
            finally:
                G.small_enabled = True
            del sets
            cp.get_default_memory_pool().free_all_blocks()
    return {"copy_bandwidth_GBs": bw / 1e9, "gpu": gpu_name(), "rows": rows}


def fit_table(result):
    """Per (dtype, system): time = fixed + per_block · nnz, least squares over the densities (nnz of each
    density's layout from the floor: floor_us · bandwidth / (b² · itemsize) blocks, less x and y);
    per_block against the floor's time per block (x rate)."""
    bw = result["copy_bandwidth_GBs"] * 1e9
    table = Table(["dtype", "op", "system", "fixed_us", "ns_per_block", "x_floor_rate", "densities"])
    groups = {}
    for r in result["rows"]:
        if r["dtype"] != "-":
            groups.setdefault((r["dtype"], r.get("op", "fprop"), r["system"]), []).append(r)
    for (dtype, op, system), rs in groups.items():
        if len(rs) < 2:
            continue
        item = np.dtype(dtype).itemsize
        nnz = np.array([(r["floor_us"] * 1e-6 * bw / item - 2 * N * K) / (B * B) for r in rs])
        t = np.array([r["us"] for r in rs])
        slope, fixed = np.polyfit(nnz, t, 1)
        floor_ns = B * B * item / bw * 1e9
        table.add(dtype=dtype, op=op, system=system, fixed_us=float(fixed), ns_per_block=float(slope) * 1e3,
                  x_floor_rate=float(slope) * 1e3 / floor_ns, densities=len(rs))
    return table


def ncu_launches():
    import cupy as cp

    from cusparseblocks import _matmul_gpu as G

    G.SMALL_TC_MIN_BLOCKS_PER_SM = 0
    for d in (0.5, 0.05):
        bsmm = _op(d)
        x, w, o = _sets(bsmm, "float16", n_sets=1)[0]
        bsmm.fprop(x, w, out=o)
        cp.cuda.Device().synchronize()


# ncu metrics worth a line each (the details page's "Metric Name" column)
NCU_KEYS = (
    "Duration", "DRAM Throughput", "Memory Throughput", "L2 Hit Rate", "L1/TEX Hit Rate", "Issue Slots Busy",
    "Issued Warp Per Scheduler", "No Eligible", "Achieved Occupancy", "Registers Per Thread",
    "Warp Cycles Per Issued Instruction", "Executed Instructions", "SM Frequency", "DRAM Frequency",
    "Mem Busy", "Max Bandwidth", "L2 Compression Success Rate",
)


def summarize(path, raw=None):
    rows = list(csv.DictReader(open(path, newline="")))
    ids = sorted({r["ID"] for r in rows}, key=int)
    table = Table(["metric", *[f"launch {i}" for i in ids], "unit"])
    for key in NCU_KEYS:
        vals = {r["ID"]: (r["Metric Value"], r["Metric Unit"]) for r in rows if r["Metric Name"] == key}
        if vals:
            table.add(metric=key, unit=next(iter(vals.values()))[1],
                      **{f"launch {i}": vals.get(i, ("", ""))[0] for i in ids})
    print(table.render())
    if raw:  # `ncu --page raw --csv`: a header of metric names, a row of units, a row per launch
        lines = list(csv.reader(open(raw, newline="")))
        head, launches = lines[0], lines[2:]
        keep = [i for i, h in enumerate(head) if h.startswith("smsp__average_warps_issue_stalled_")
                and h.endswith("_per_issue_active.ratio")]
        def num(v):
            try:
                return float(v.replace(",", ""))
            except ValueError:
                return 0.0
        keep.sort(key=lambda i: -max(num(r[i]) for r in launches) if launches else 0)
        stall = Table(["stall (warps per issue)", *[f"launch {k}" for k in range(len(launches))]])
        for i in keep[:12]:
            name = head[i][len("smsp__average_warps_issue_stalled_"):-len("_per_issue_active.ratio")]
            vals = {f"launch {k}": num(r[i]) for k, r in enumerate(launches)}
            stall.add(**{"stall (warps per issue)": name}, **vals)
        print(stall.render())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ncu", action="store_true", help="only the two launches to profile")
    p.add_argument("--summarize", help="print the key rows of an `ncu --page details --csv` file")
    p.add_argument("--raw", help="with --summarize: an `ncu --page raw --csv` file (stall reasons)")
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    p.add_argument("--dtype", default="float16,float32")
    p.add_argument("--ops", default="fprop", help="fprop,bprop")
    p.add_argument("--variants", help="small kernels to time (default: the older ones, the diagnostics)")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)
    if a.summarize:
        summarize(a.summarize, a.raw)
        return 0
    if a.ncu:
        ncu_launches()
        return 0
    result = run(tuple(float(v) for v in a.densities.split(",")), tuple(a.dtype.split(",")),
                 tuple(a.ops.split(",")), a.variants.split(",") if a.variants else None)
    if not a.no_save:
        path = save_json("small_diag", result, command="PYTHONPATH=. python bench/small_diag.py " + " ".join(
            argv if argv is not None else sys.argv[1:]))
        print(f"wrote {path}")
    table = Table(["dtype", "op", "density", "system", "us", "floor_us", "x_floor"])
    for r in result["rows"]:
        table.add(**r)
    print(f"GPU: {result['gpu']}; copy bandwidth {result['copy_bandwidth_GBs']:.0f} GB/s")
    print(table.render())
    print(fit_table(result).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
