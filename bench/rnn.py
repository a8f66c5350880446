"""Sparse persistent RNN vs cuDNN, a graph-captured cuBLAS loop and cuSPARSE per step (issue 7).

Per-step time = median time of a whole T = 256 sequence / T. Systems, every one in the same run:
- ours: ``SparseRNN.forward`` (persistent kernel when the weights fit on-chip, else the per-step
  fallback in a CUDA graph; the path is printed);
- cuDNN: ``torch.nn.RNN`` (tanh, no bias, input size 8 so its input GEMM costs next to nothing);
- cuBLAS-graph: dense ``h = tanh(addmm(u_t, h, W))`` per step, all T steps captured in one
  ``torch.cuda.CUDAGraph`` and replayed;
- cuSPARSE: ``torch.sparse`` CSR Wᵀ times hᵀ per step (graph-captured when capture works, else eager).

Headline: H = 2304, B = 4, density 0.3, fp16 and fp32, with every variant of ours timed in the same run
(fp16: the tensor-core kernel, the default, with and without waiting; the sparse FFMA kernel's variants:
exchange sentinel/flags, h in shared memory fp32/fp16, lanes per row, the sentinel kernel without waiting
as a diagnostic) and a per-step breakdown from the kernel's clock64 stamps (``prof``). Sweep (fp16,
``--sweep``): H 1152/2304/4608/8192 × density 0.3/0.1/0.05 × batch 1/4/16/32 against cuBLAS-graph and
cuDNN. Usage: ``PYTHONPATH=. python bench/rnn.py [--sweep] [--budget SECONDS]``; ``--sanitize`` runs one
small case of each mode (for compute-sanitizer) and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Table, gpu_name, save_json, time_ms  # noqa: E402
from cusparseblocks import rnn  # noqa: E402

T_STEPS = 256


def random_csr(rng, H, density, G=1):
    """W [H, G·H] with i.i.d. pruning (each weight kept with probability ``density``), fast for large H."""
    mask = rng.random((H, G * H), dtype=np.float32) < density
    rows, cols = np.nonzero(mask)
    vals = rng.standard_normal(rows.size).astype(np.float32) * (0.9 / np.sqrt(density * H))
    return sp.csr_matrix((vals, (rows, cols)), shape=(H, G * H))


def input_sets(rng, H, B, dtype, n=3):
    import cupy

    return [(cupy.asarray((rng.standard_normal((T_STEPS, B, H)) * 0.5).astype(dtype)),
             cupy.asarray((rng.standard_normal((B, H)) * 0.5).astype(dtype))) for _ in range(n)]


def bench_ours(model, H, B, dtype, rng, reps, lanes=None, min_ms=20, sets=None):
    sets = sets or input_sets(rng, H, B, dtype)
    plan = model.plan(dtype, B, lanes=lanes)
    model.forward(*sets[0], lanes=lanes)                     # compile, tables, watchdog check
    res = time_ms(lambda u, h: model.forward(u, h, check=False, lanes=lanes), rotate=sets, warmup=2,
                  reps=reps, min_ms=min_ms)
    return res, plan, sets[0]


def bench_variant(model, B, dtype, sets, exchange, h_float=None, lanes=None, wait=True, poll_all=None):
    """One launch-table entry of the persistent kernel, timed directly (us/step)."""
    plan = model.plan(dtype, B, lanes=lanes, h_float=h_float, tables=True)
    run = lambda u, h: model._run_persistent(plan, u, h, None, check=False, exchange=exchange,  # noqa: E731
                                             wait=wait, poll_all=poll_all)
    model._run_persistent(plan, *sets[0], None, exchange=exchange, timeout_s=2.0, wait=wait,
                          poll_all=poll_all)
    return us_per_step(time_ms(run, rotate=sets, warmup=2, reps=30, min_ms=20)), plan


def bench_tc(model, B, sets, wait=True, cluster=1, counter=False):
    """The tensor-core kernel (fp16; ``cluster`` > 1: the cluster exchange), timed directly (us/step);
    None when it does not fit."""
    plan = model.plan_tc(B, tables=True, cluster=cluster)
    if not plan.fits:
        return None, plan
    run = lambda u, h: model._run_tc(plan, u, h, None, check=False, wait=wait, counter=counter)  # noqa: E731
    if model._run_tc(plan, *sets[0], None, timeout_s=2.0, wait=wait, counter=counter) is None:
        raise RuntimeError(f"tensor-core kernel (cluster {cluster}) not launchable here (co-residency, arch)")
    return us_per_step(time_ms(run, rotate=sets, warmup=2, reps=30, min_ms=20)), plan


def step_profile(model, B, dtype, u, h, h_float=None, wait=True, tc=False, cluster=1, counter=False):
    """Median per-step phases of the sentinel kernel (``tc``: the tensor-core kernel) from its clock64
    stamps (kernels/rnn.cu ``prof``), in ns: h_(t-1) waited for and loaded, dot products, pointwise and
    stores, the rest of the loop; and the step time (start to start), over every block and step but the
    first 8."""
    import cupy

    plan = (model.plan_tc(B, tables=True, cluster=cluster) if tc
            else model.plan(dtype, B, h_float=h_float, tables=True))
    prof = cupy.zeros((plan.blocks, T_STEPS + 1, 4), dtype=cupy.int64)
    if tc:
        model._run_tc(plan, u, h, None, prof=prof, wait=wait, timeout_s=2.0, counter=counter)
    else:
        model._run_persistent(plan, u, h, None, exchange="sentinel", prof=prof, wait=wait, timeout_s=2.0)
    p = prof.get().astype(np.float64)
    cyc_per_ns = np.median((p[:, 0, 2] - p[:, 0, 0]) / p[:, 0, 3])
    st = p[:, 1:, :] / cyc_per_ns                            # [blocks, T, 4] ns
    lo = 8
    out = {"clock_ghz": float(cyc_per_ns),
           "wait_and_load_h_ns": float(np.median(st[:, lo:, 1] - st[:, lo:, 0])),
           "dot_products_ns": float(np.median(st[:, lo:, 2] - st[:, lo:, 1])),
           "pointwise_store_ns": float(np.median(st[:, lo:, 3] - st[:, lo:, 2])),
           "loop_rest_ns": float(np.median(st[:, lo + 1:, 0] - st[:, lo:-1, 3])),
           "step_ns": float(np.median(st[:, lo + 1:, 0] - st[:, lo:-1, 0])),
           "dot_products_max_block_ns": float(np.max(np.median(st[:, lo:, 2] - st[:, lo:, 1], axis=1))),
           "setup_ns": float(np.median((p[:, 0, 1] - p[:, 0, 0]) / cyc_per_ns)),
           "kernel_ns": float(np.median(p[:, 0, 3]))}
    return out


def torch_dtype(dtype):
    import torch

    return getattr(torch, dtype)


def bench_cublas_graph(W, B, dtype, rng, reps, u_h=None):
    import torch

    H = W.shape[0]
    dt = torch_dtype(dtype)
    Wd = torch.from_numpy(W.toarray()).to("cuda", dt)
    u = torch.randn(T_STEPS, B, H, device="cuda", dtype=dt) * 0.5
    h0 = torch.randn(B, H, device="cuda", dtype=dt) * 0.5
    if u_h is not None:
        u, h0 = torch.from_dlpack(u_h[0]), torch.from_dlpack(u_h[1])
    y = torch.empty(T_STEPS, B, H, device="cuda", dtype=dt)

    def loop():
        h = h0
        for t in range(T_STEPS):
            torch.addmm(u[t], h, Wd, out=y[t])
            torch.tanh_(y[t])
            h = y[t]

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        loop()                                               # warm cuBLAS outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        loop()
    torch.cuda.synchronize()
    return time_ms(g.replay, warmup=2, reps=reps, min_ms=20), y


def bench_cudnn(H, B, dtype, reps):
    import torch

    dt = torch_dtype(dtype)
    cell = torch.nn.RNN(8, H, nonlinearity="tanh", bias=False).to("cuda", dt)
    x = torch.randn(T_STEPS, B, 8, device="cuda", dtype=dt)
    h0 = torch.randn(1, B, H, device="cuda", dtype=dt) * 0.5
    with torch.no_grad():
        return time_ms(lambda: cell(x, h0), warmup=2, reps=reps, min_ms=20)


def bench_cusparse(W, B, dtype, reps):
    import torch

    H = W.shape[0]
    dt = torch_dtype(dtype)
    Wt = torch.from_numpy(W.T.toarray()).to("cuda", dt).to_sparse_csr()
    u = torch.randn(T_STEPS, H, B, device="cuda", dtype=dt) * 0.5
    y = torch.empty(T_STEPS, H, B, device="cuda", dtype=dt)
    h0 = torch.randn(H, B, device="cuda", dtype=dt) * 0.5

    def loop():
        h = h0
        for t in range(T_STEPS):
            torch.addmm(u[t], Wt, h, out=y[t])
            torch.tanh_(y[t])
            h = y[t]

    with torch.no_grad():
        loop()
        torch.cuda.synchronize()
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                loop()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                loop()
            torch.cuda.synchronize()
            return time_ms(g.replay, warmup=2, reps=reps, min_ms=20), "graph"
        except Exception as exc:  # noqa: BLE001 - capture unsupported: time the eager loop
            torch.cuda.synchronize()
            print(f"# cuSPARSE graph capture failed ({type(exc).__name__}: {exc}); timing eager", flush=True)
            return time_ms(loop, warmup=1, reps=max(5, reps // 4), min_ms=20), "eager"


def us_per_step(res):
    return 1000.0 * res["median"] / T_STEPS


def sanitize(paths=None):
    """One small case per mode, path and exchange (run under compute-sanitizer); prints the errors.
    ``paths``: only these (e.g. ["tc"])."""
    for exchange in dict.fromkeys(rnn.LAUNCH["exchange"] + rnn.LAUNCH["tc_exchange"]):
        if paths and exchange == "flags" and set(paths) <= {"tc"}:
            continue
        for row in rnn.self_check("cupy", exchange=exchange, paths=paths):
            print(f"{exchange:9s} {row[0]:36s} rel_err={row[1]:.2e} {'ok' if row[2] else 'FAIL'}")


def headline(rng, records, head):
    """H 2304, B 4, d 0.3, fp16 and fp32: ours (default plan) against every other system, then every variant
    of ours and the per-step profile."""
    import cupy

    H, B, d = 2304, 4, 0.3
    W = random_csr(rng, H, d)
    model = rnn.SparseRNN(W, "tanh")
    for dtype in ("float16", "float32"):
        sets = input_sets(rng, H, B, dtype)
        ours, plan, (u0, h00) = bench_ours(model, H, B, dtype, rng, reps=50, sets=sets)
        cub, ycub = bench_cublas_graph(W, B, dtype, rng, reps=50, u_h=(u0, h00))
        y_ours, _ = model.forward(u0, h00)
        yc = cupy.from_dlpack(ycub).astype(cupy.float64)
        rel = float(cupy.linalg.norm(y_ours.astype(cupy.float64) - yc) / cupy.linalg.norm(yc))
        cud = bench_cudnn(H, B, dtype, reps=50)
        try:
            csp, how = bench_cusparse(W, B, dtype, reps=20)
        except Exception as exc:  # noqa: BLE001
            print(f"# cuSPARSE {dtype} failed: {type(exc).__name__}: {exc}", flush=True)
            csp, how = None, "failed"
        others = {"cuBLAS-graph": cub, "cuDNN": cud}
        if csp is not None:
            others[f"cuSPARSE-{how}"] = csp
        best = min(us_per_step(r) for r in others.values())
        o = us_per_step(ours)
        head.add(dtype=dtype, system="ours", path=plan.path, us_per_step=o, speedup_vs_best_other=best / o,
                 rel_err_vs_cublas=f"{rel:.1e}")
        for name, r in others.items():
            head.add(dtype=dtype, system=name, us_per_step=us_per_step(r))
        rec = {"kind": "headline", "dtype": dtype, "hidden": H, "batch": B, "density": d, "T": T_STEPS,
               "ours": ours, "ours_path": plan.path, "ours_exchange": rnn.LAUNCH["exchange"][0],
               "ours_blocks": plan.blocks, "ours_lanes": plan.lanes, "ours_batch_chunk": plan.batch_chunk,
               "ours_h_float": plan.h_float, "ours_smem": plan.smem_bytes, "rel_err_vs_cublas": rel,
               **{k: v for k, v in others.items()}, "speedup_vs_best": best / o}
        records.append(rec)
        if not plan.persistent and plan.path != "tc":
            continue
        # every variant of the persistent kernel, timed directly (us/step), with its error vs cuBLAS
        variants, profiles = {}, {}
        if dtype == "float16":
            try:
                us_tc, tplan = bench_tc(model, B, sets)
                if us_tc is not None:
                    y, _ = model._run_tc(tplan, u0, h00, None)
                    err = float(cupy.linalg.norm(y.astype(cupy.float64) - yc) / cupy.linalg.norm(yc))
                    variants["tc"] = {"us_per_step": us_tc, "rel_err_vs_cublas": err, "blocks": tplan.blocks,
                                      "units": tplan.units, "tiles": tplan.tiles, "slots": tplan.slots,
                                      "threads": tplan.threads, "blocks_per_sm": tplan.blocks_per_sm}
                    variants["tc/no-wait"] = {"us_per_step": bench_tc(model, B, sets, wait=False)[0]}
                    profiles["tc"] = step_profile(model, B, dtype, u0, h00, tc=True)
                    profiles["tc/no-wait"] = step_profile(model, B, dtype, u0, h00, wait=False, tc=True)
            except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
                variants["tc"] = {"error": f"{type(exc).__name__}: {exc}"}
            for arrivals in ("counter", "block_flags", "group_counter"):  # arrival counters / flags / groups
                name = f"tc/{arrivals}"
                try:
                    us_k, kplan = bench_tc(model, B, sets, counter=arrivals)
                    y, _ = model._run_tc(kplan, u0, h00, None, counter=arrivals)
                    err = float(cupy.linalg.norm(y.astype(cupy.float64) - yc) / cupy.linalg.norm(yc))
                    variants[name] = {"us_per_step": us_k, "rel_err_vs_cublas": err}
                    profiles[name] = step_profile(model, B, dtype, u0, h00, tc=True, counter=arrivals)
                except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
                    variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
            for cs in (2, 4, 8):                     # the cluster exchange, each portable cluster size
                name = f"tc/cluster{cs}"
                try:
                    us_c, cplan = bench_tc(model, B, sets, cluster=cs)
                    if us_c is None:
                        variants[name] = {"error": cplan.reason}
                        continue
                    y, _ = model._run_tc(cplan, u0, h00, None)
                    err = float(cupy.linalg.norm(y.astype(cupy.float64) - yc) / cupy.linalg.norm(yc))
                    variants[name] = {"us_per_step": us_c, "rel_err_vs_cublas": err, "blocks": cplan.blocks}
                    variants[name + "/no-wait"] = {"us_per_step": bench_tc(model, B, sets, wait=False,
                                                                           cluster=cs)[0]}
                    profiles[name] = step_profile(model, B, dtype, u0, h00, tc=True, cluster=cs)
                except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
                    variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
        h_floats = (True, False) if dtype == "float16" else (True,)
        for exchange in rnn.LAUNCH["exchange"]:
            for hf in h_floats if exchange == "sentinel" else (None,):
                name = exchange + ("" if hf is None else ("/h32" if hf else "/h16"))
                try:
                    us, p = bench_variant(model, B, dtype, sets, exchange, h_float=hf)
                    y, _ = model._run_persistent(p, u0, h00, None, exchange=exchange)
                    err = float(cupy.linalg.norm(y.astype(cupy.float64) - yc) / cupy.linalg.norm(yc))
                    variants[name] = {"us_per_step": us, "rel_err_vs_cublas": err, "lanes": p.lanes}
                    if exchange == "sentinel":
                        us_nw = bench_variant(model, B, dtype, sets, exchange, h_float=hf, wait=False)[0]
                        variants[name + "/no-wait"] = {"us_per_step": us_nw}
                        profiles[name] = step_profile(model, B, dtype, u0, h00, h_float=hf)
                        profiles[name + "/no-wait"] = step_profile(model, B, dtype, u0, h00, h_float=hf,
                                                                   wait=False)
                except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
                    variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
        default = rnn.LAUNCH["exchange"][0]
        other_poll = not rnn.LAUNCH["poll_all"][dtype]
        us_p = bench_variant(model, B, dtype, sets, "sentinel", poll_all=other_poll)[0]
        variants["sentinel/poll-" + ("all" if other_poll else "one")] = {"us_per_step": us_p}
        for lanes in rnn.LAUNCH["lanes"]:
            if lanes != plan.lanes:
                us_l = bench_variant(model, B, dtype, sets, default, lanes=lanes)[0]
                variants[f"{default}/lanes{lanes}"] = {"us_per_step": us_l}
        rec["variants"], rec["step_profile"] = variants, profiles
        print(f"# headline {dtype}: ours {o:.2f} us/step ({plan.path}, lanes={plan.lanes}, "
              f"bc={plan.batch_chunk}, h_float={plan.h_float}), best other {best:.2f}", flush=True)
        for k, v in variants.items():
            print(f"#   variant {k}: {v}", flush=True)
        for k, v in profiles.items():
            print(f"#   profile {k}: " + ", ".join(f"{a}={b:.0f}" if b > 10 else f"{a}={b:.2f}"
                                                    for a, b in v.items()), flush=True)


def sweep(rng, records, table, start, budget):
    """fp16, T = 256: H 1152/2304/4608/8192 × density 0.3/0.1/0.05 × batch 1/4/16/32 against cuBLAS-graph
    and cuDNN (dense: once per (H, B))."""
    import cupy
    import torch

    dense_cache = {}
    for H in (1152, 2304, 4608, 8192):
        for d in (0.3, 0.1, 0.05):
            if time.perf_counter() - start > budget:
                print(f"# budget spent: sweep stops before H={H} d={d}", flush=True)
                return
            W = random_csr(rng, H, d)
            model = rnn.SparseRNN(W, "tanh")
            for B in (1, 4, 16, 32):
                ours, plan, _ = bench_ours(model, H, B, "float16", rng, reps=5, min_ms=8,
                                           sets=input_sets(rng, H, B, "float16", n=2))
                if (H, B) not in dense_cache:
                    cub, _ = bench_cublas_graph(W, B, "float16", rng, reps=5)
                    dense_cache[(H, B)] = (cub, bench_cudnn(H, B, "float16", reps=5))
                    torch.cuda.empty_cache()
                cub, cud = dense_cache[(H, B)]
                o, c1, c2 = us_per_step(ours), us_per_step(cub), us_per_step(cud)
                table.add(H=H, density=d, B=B, path=plan.path, lanes=plan.lanes, bc=plan.batch_chunk,
                          h32=int(plan.h_float), ours_us=o, cublas_graph_us=c1, cudnn_us=c2,
                          speedup=min(c1, c2) / o)
                print(f"# sweep H={H} d={d} B={B}: ours {o:.2f} us/step ({plan.path}, lanes {plan.lanes}, "
                      f"bc {plan.batch_chunk}, h32 {plan.h_float}), cuBLAS-graph {c1:.2f}, cuDNN {c2:.2f} "
                      f"[{time.perf_counter() - start:.0f} s]", flush=True)
                records.append({"kind": "sweep", "dtype": "float16", "hidden": H, "density": d, "batch": B,
                                "ours": ours, "ours_path": plan.path, "ours_lanes": plan.lanes,
                                "ours_batch_chunk": plan.batch_chunk, "ours_h_float": plan.h_float,
                                "cublas_graph": cub, "cudnn": cud})
            del model
            cupy.get_default_memory_pool().free_all_blocks()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=240.0, help="seconds; the sweep stops when spent")
    ap.add_argument("--sweep", action="store_true", help="also the H × density × batch sweep (fp16)")
    ap.add_argument("--no-headline", action="store_true", help="skip the headline and its variants")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--sanitize-paths", nargs="*", default=None,
                    help="with --sanitize: only these paths (tc, persistent, fallback)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    if args.sanitize:
        return sanitize(args.sanitize_paths)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    records = []
    head = Table(["dtype", "system", "path", "us_per_step", "speedup_vs_best_other", "rel_err_vs_cublas"])
    if not args.no_headline:
        headline(rng, records, head)
    sizes = {f"{dt}/d{dd}": rnn.max_hidden_size(dt, dd, 4) for dt in ("float16", "float32")
             for dd in (0.3, 0.1, 0.05)}
    records.append({"kind": "max_hidden_size", "batch": 4, **sizes})
    table = Table(["H", "density", "B", "path", "lanes", "bc", "h32", "ours_us", "cublas_graph_us",
                   "cudnn_us", "speedup"])
    if args.sweep:
        sweep(rng, records, table, start, args.budget)
    path = save_json("rnn", {"T": T_STEPS, "records": records}, directory=args.out,
                     command="PYTHONPATH=. python bench/rnn.py " + " ".join(sys.argv[1:]))
    print(f"# max hidden size on-chip (batch 4): {sizes}")
    print(f"# {gpu_name()}, T={T_STEPS}, {time.perf_counter() - start:.0f} s; JSON: {path}")
    if args.sweep:
        print(table.render())
    if not args.no_headline:
        print(head.render())


if __name__ == "__main__":
    main()
