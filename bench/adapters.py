"""What the framework adapters cost on the GPU: PyTorch and JAX calls of the block-sparse matmul against
CuPy calling the same kernel directly, against each framework's dense matmul on the masked weight, and
the JAX mechanisms inside ``jax.jit`` (device-buffer callback vs host round trip) side by side.

    PYTHONPATH=. python bench/adapters.py [--quick]

torch rows: the shared harness (CUDA events on the legacy default stream, which torch and CuPy share
here; calls enqueued back to back). jax rows: wall clock, median of 50+ calls rotated over 3 input
sets, each call waited for (``block_until_ready``: "sync", the latency a step sees) and, for the
asynchronous mechanisms, 50 calls enqueued then waited for once ("async", throughput).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the card here
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.harness import Table, gpu_name, save_json, time_ms  # noqa: E402
from cusparseblocks import BlockSparseMatMul, layouts  # noqa: E402

ROTATE = 3


def _wall_ms(fn, args, reps=50, sync_each=True):
    for a in args:  # warm-up: compile, tables
        fn(*a).block_until_ready()
    times = []
    if sync_each:
        for i in range(max(reps, 50)):
            t = time.perf_counter()
            fn(*args[i % len(args)]).block_until_ready()
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1e3)
    for _ in range(7):
        t = time.perf_counter()
        outs = [fn(*args[i % len(args)]) for i in range(reps)]
        outs[-1].block_until_ready()
        for o in outs:
            o.block_until_ready()
        times.append((time.perf_counter() - t) / reps)
    return float(np.median(times) * 1e3)


def bench_torch(op, n, dtype, table, results):
    import cupy
    import torch

    from cusparseblocks.adapters import torch as ct

    tdt = {"float16": torch.float16, "float32": torch.float32}[dtype]
    rng = np.random.default_rng(0)
    xs = [torch.randn(n, op.K, device="cuda", dtype=tdt) for _ in range(ROTATE)]
    ws = [torch.from_numpy(op.init_normal(seed=i)).to("cuda", tdt) for i in range(ROTATE)]
    dys = [torch.randn(n, op.M, device="cuda", dtype=tdt) for _ in range(ROTATE)]
    del rng
    dense = [ct.BlockSparseLinear(op.layout, op.block_size, bias=False, device="cuda", dtype=tdt)
             for _ in range(ROTATE)]
    for d, w in zip(dense, ws):
        d.weight.data.copy_(w)
    Ws = [d.to_dense().detach() for d in dense]
    cx = [ct.to_cupy(x) for x in xs]
    cw = [ct.to_cupy(w) for w in ws]
    cy = [cupy.empty((n, op.M), dtype=cx[0].dtype) for _ in range(ROTATE)]
    flop = 2 * n * op.layout.nnz * op.block_size**2

    def fwd_grad(x, w, dy):
        x.grad = w.grad = None
        ct.block_sparse_matmul(x, w, op).backward(dy)

    xg = [x.clone().requires_grad_() for x in xs]
    wg = [w.clone().requires_grad_() for w in ws]
    Wg = [W.clone().requires_grad_() for W in Ws]

    def dense_fwd_grad(x, W, dy):
        x.grad = W.grad = None
        (x @ W).backward(dy)

    rows = {
        "cupy fprop (kernel direct)": time_ms(lambda x, w, y: op.fprop(x, w, out=y), list(zip(cx, cw, cy))),
        "torch adapter fprop": time_ms(lambda x, w: ct.block_sparse_matmul(x, w, op), list(zip(xs, ws))),
        "torch dense matmul (masked W)": time_ms(lambda x, W: x @ W, list(zip(xs, Ws))),
        "torch adapter fprop+bprop+updat": time_ms(fwd_grad, list(zip(xg, wg, dys))),
        "torch dense fwd+bwd (masked W)": time_ms(dense_fwd_grad, list(zip(xg, Wg, dys))),
    }
    for name, r in rows.items():
        mult = 3 if "+" in name else 1
        table.add(framework="torch", path=name, N=n, dtype=dtype, ms=r["median"],
                  TFLOPs=mult * flop / (r["median"] * 1e-3) / 1e12 if "dense" not in name else "")
        results.append({"framework": "torch", "path": name, "N": n, "dtype": dtype, **r})


def bench_jax(op, n, dtype, table, results):
    import jax
    import jax.numpy as jnp

    from cusparseblocks.adapters import jax as cj

    dev = jax.devices("gpu")[0]
    rng = np.random.default_rng(1)
    jdt = jnp.dtype(dtype)
    xs = [jax.device_put(jnp.asarray(rng.standard_normal((n, op.K)), jdt), dev) for _ in range(ROTATE)]
    ws = [jax.device_put(jnp.asarray(op.init_normal(seed=i), jdt), dev) for i in range(ROTATE)]
    Ws = [jax.device_put(jnp.asarray(op.dense(np.asarray(w, np.float32)), jdt), dev) for w in ws]
    args = list(zip(xs, ws))
    flop = 2 * n * op.layout.nnz * op.block_size**2
    fns = {}
    for mech in ("buffer", "host"):
        if mech == "buffer" and cj._buffer_callback is None:
            continue
        fn = jax.jit(lambda x, w, m=mech: cj.block_sparse_matmul(x, w, op, mechanism=m))
        fns[f"jit {mech} callback fprop"] = (fn, args)
    fns["eager dlpack fprop"] = (lambda x, w: cj.block_sparse_matmul(x, w, op, mechanism="dlpack"), args)
    fns["jit jnp dense matmul (masked W)"] = (jax.jit(lambda x, W: x @ W), list(zip(xs, Ws)))
    for name, (fn, a) in fns.items():
        sync = _wall_ms(fn, a, sync_each=True)
        asyn = _wall_ms(fn, a, sync_each=False) if "host" not in name else ""
        table.add(framework="jax", path=name, N=n, dtype=dtype, ms=sync, async_ms=asyn,
                  TFLOPs=flop / (sync * 1e-3) / 1e12 if "dense" not in name else "")
        results.append({"framework": "jax", "path": name, "N": n, "dtype": dtype, "sync_ms": sync,
                        "async_ms": asyn})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    args = parser.parse_args()
    configs = [(256, 1024, 32, 0.25, "float16"), (4096, 4096, 32, 0.1, "float16"),
               (4096, 4096, 32, 0.1, "float32")]
    if args.quick:
        configs = configs[:1]
    table = Table(["framework", "path", "N", "dtype", "ms", "async_ms", "TFLOPs"])
    results = []
    for n, k, bs, density, dtype in configs:
        op = BlockSparseMatMul(layouts.random(k // bs, k // bs, density, seed=0), bs)
        for bench in (bench_torch, bench_jax):
            try:
                bench(op, n, dtype, table, results)
            except ImportError as exc:
                print(f"skipped {bench.__name__}: {exc}")
    path = save_json("adapters", {"configs": configs, "results": results},
                     command="PYTHONPATH=. python bench/adapters.py" + (" --quick" if args.quick else ""))
    print(f"GPU: {gpu_name()}; K=M=4096 (N=256 row: 1024), block 32, density 0.1 (0.25); raw: {path}")
    print(table.render())


if __name__ == "__main__":
    main()
