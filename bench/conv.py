"""Block-sparse convolution vs cuDNN (issue 6).

256→256 channels, 3×3, pad 1, 32×32 images, fp16, NHWC, channel-block 32, batch 64 (the issue's shape;
``--batch`` picks others, several in one run):
- random block layouts at density d ∈ {0.5, 0.25, 0.125}: our fprop vs torch conv2d on the masked
  dense weight (cuDNN, channels_last); target ≤ 1.5·d × dense;
- block-diagonal, 8 groups: ours vs torch conv2d(groups=8) (target: no slower), and with the merged
  channel shuffle vs grouped conv + shuffle.

Every time is given two ways: back to back (calls enqueued without synchronization, as a training
loop issues them: host overhead shows when it exceeds the GPU time) and as CUDA-graph replays (GPU
time alone). cuDNN is timed the same two ways (torch.cuda.CUDAGraph). Each fprop variant (the per-tap
kernel and every halo tile) is checked against torch's result and timed; "ours" is the op's automatic
choice, timed twice (first and last) to show the run-to-run spread. bprop and the weight update are
timed too, and the kernel launches per call are counted from a captured graph's nodes. Table last;
JSON in bench/results/.

    PYTHONPATH=. python bench/conv.py [--batch 64] [--batch 8] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

import numpy as np


def _graph_nodes(fn, args) -> int | None:
    """Kernel/memcpy/memset nodes of one call of ``fn(*args)`` captured on a side stream (None if the
    capture fails, e.g. a call that allocates fresh device memory)."""
    import cupy

    try:
        fn(*args)
        cupy.cuda.get_current_stream().synchronize()
        cap = cupy.cuda.Stream(non_blocking=True)
        with cap:
            cap.begin_capture()
            fn(*args)
            g = cap.end_capture()
        lib = ctypes.CDLL("libcuda.so.1")
        n = ctypes.c_size_t(0)
        if lib.cuGraphGetNodes(ctypes.c_void_p(g.graph), None, ctypes.byref(n)) != 0:
            return None
        return int(n.value)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        print(f"graph capture failed: {type(e).__name__}: {e}", flush=True)
        return None


def _torch_ms(fn, rotate, graph: bool, reps: int = 200, batches: int = 7) -> dict | None:
    """Milliseconds per call of a torch function: back to back, or replays of a CUDA graph of one
    call per argument set. Median over ``batches`` of CUDA-event timings."""
    import torch

    try:
        if graph:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for a in rotate:
                    fn(*a)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for a in rotate:
                    fn(*a)
            step, per = g.replay, len(rotate)
        else:
            it = [0]

            def step():
                fn(*rotate[it[0] % len(rotate)])
                it[0] += 1

            per = 1
        for _ in range(3 * len(rotate)):
            step()
        torch.cuda.synchronize()
        times = []
        calls = max(1, reps // (per * batches))
        for _ in range(batches):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(calls):
                step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / (calls * per))
        t = np.asarray(times)
        return {
            "median": float(np.median(t)),
            "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)),
            "calls": calls * per * batches,
        }
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        print(f"torch timing (graph={graph}) failed: {type(e).__name__}: {e}", flush=True)
        return None


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 64)")
    parser.add_argument("--quick", action="store_true", help="batch 8 only")
    args = parser.parse_args(argv)
    batches = args.batch or ([8] if args.quick else [64])

    import cupy
    import torch
    import torch.nn.functional as F

    from bench.harness import Table, gpu_name, save_json, time_ms
    from cusparseblocks import conv as conv_module
    from cusparseblocks import layouts
    from cusparseblocks.adapters.torch import cupy_on_torch, to_cupy
    from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout

    torch.backends.cudnn.benchmark = True
    C = K = 256
    H = W = 32
    b = 32
    dev = torch.device("cuda")
    dt = torch.float16
    rotate = 3
    GROUPS = 8
    halo_tiles = [f"halo:{p}x{w}" for p, w in conv_module._LAUNCH["halo"]["tiles"]]
    # the default tile's earlier schedules: ":full" a CTA per item, ":v1" the persistent grid of single-item
    # claims (before runs, the weight-slice cache, the deferred claim, the paired store and the stepped
    # load); ":runN" the new kernel with runs of N tiles (the automatic choice may differ); ":roll" without
    # the unrolled 3 × 3 taps
    dflt = "halo:{}x{}".format(*conv_module._LAUNCH["halo"]["default"])
    fprop_variants = ["tap", *halo_tiles, f"{dflt}:full", f"{dflt}:v1", f"{dflt}:run1", f"{dflt}:run4"]
    fprop_variants += [f"{dflt}:roll", "halo:512x8:v1", "halo:512x8:run1"]
    # the halo kernel on wgmma (sm_90a; the default there): every tile, the default's runs of 1 and 4, and
    # ":roll" (the first version of the step loop: no fragments loaded ahead, no table of tap offsets)
    gdflt = "gmma:{}x{}".format(*conv_module._LAUNCH["gmma"]["default"])
    fprop_variants += [f"gmma:{p}x{w}" for p, w in conv_module._LAUNCH["gmma"]["tiles"]]
    fprop_variants += [f"{gdflt}:run1", f"{gdflt}:run4", "gmma:128x4:roll", "gmma:256x8:roll"]
    # the warp-specialized wgmma kernel (conv_fprop_ws): both tiles, runs of 1 and 4
    fprop_variants += [f"ws:{p}" for p in conv_module._LAUNCH["ws"]["tiles"]] + ["ws:256:run1", "ws:256:run4"]
    # the same fed by TMA (conv_fprop_wst)
    fprop_variants += [f"wst:{p}" for p in conv_module._LAUNCH["ws"]["tiles"]]
    fprop_variants += ["wst:256:run1", "wst:256:run4"]
    fprop_variants += ["wst4:256", "wst4:256:run1", "ws4:256"]  # four consumer warpgroups of one m64 group
    fprop_variants += ["wss", "wss:128", "wss:256:run1"]  # A from shared memory too (conv_fprop_wss)
    if os.environ.get("CONV_VARIANTS"):  # a quick run: comma-separated force_variant values
        fprop_variants = os.environ["CONV_VARIANTS"].split(",")
    table = Table(
        [
            "N",
            "case",
            "ours_ms",
            "ours_graph",
            "cudnn_ms",
            "cudnn_graph",
            "ratio",
            "ratio_graph",
            "target",
            "ok",
            "kernel",
            "bprop_ms",
            "bprop_graph",
            "updat_ms",
            "launches",
            "tflops",
        ]
    )
    vtable = Table(["N", "case", "variant", "ms", "graph_ms", "rel_err"])
    rows = []

    def x_nhwc(t):
        return to_cupy(t.permute(0, 2, 3, 1))  # channels_last memory seen as [N, H, W, C]

    def run_case(N, xs, dys, name, lay, d, baseline, dense_w_fn):
        op = BlockSparseConv(lay, (3, 3), padding=1, data_format="NHWC")
        w_np = op.init_normal(1, dtype=np.float32)
        w = cupy.asarray(w_np).astype(cupy.float16)
        Wd = torch.from_numpy(op.dense(w_np)).to(dev, dt).contiguous(memory_format=torch.channels_last)
        outs = [cupy.empty((N, H, W, K), dtype=cupy.float16) for _ in range(rotate)]
        xcs = [x_nhwc(t) for t in xs]
        dycs = [to_cupy(t.permute(0, 2, 3, 1)) for t in dys]
        rot = [(i,) for i in range(rotate)]
        # torch's result (cuDNN, fp32 accumulation) on the same data: every variant is checked against it
        Wb = dense_w_fn(Wd) if dense_w_fn is not None else Wd  # the baseline's weight
        yt = baseline(xs[0], Wb)
        ytn = cupy.asarray(yt.permute(0, 2, 3, 1).contiguous().float())
        fprop = lambda i: op.fprop(xcs[i], w, out=outs[i])  # noqa: E731

        def check():
            outs[0].fill(cupy.nan)
            y = fprop(0)
            return float(cupy.linalg.norm(y.astype(cupy.float32) - ytn) / cupy.linalg.norm(ytn))

        def both(fn):
            bb = time_ms(fn, rotate=rot)
            try:
                gr = time_ms(fn, rotate=rot, graph=True)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                print(f"{name}: graph timing failed: {type(e).__name__}: {e}", flush=True)
                gr = None
            return bb, gr

        first, first_g = both(fprop)
        rel = check()
        geo = conv_module._forward_geo(op, op.geometry((H, W)), N)
        single = int(np.diff(lay.column_tables[0]).max()) <= 1
        kernel = conv_module._fprop_variant(geo, b, lay.out_perm is not None, single)
        variants = {}
        for variant in fprop_variants:
            conv_module.force_variant = variant
            try:
                err = check()
                bb, gr = both(fprop)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                print(f"{name} {variant}: {type(e).__name__}: {e}", flush=True)
                continue
            finally:
                conv_module.force_variant = None
            variants[variant] = dict(ms=bb, graph=gr, rel_err=err)
            vtable.add(
                N=N,
                case=name,
                variant=variant,
                ms=bb["median"],
                graph_ms=gr["median"] if gr else "",
                rel_err=err,
            )
        ref = _torch_ms(lambda i: baseline(xs[i], Wb), rot, graph=False)
        ref_g = _torch_ms(lambda i: baseline(xs[i], Wb), rot, graph=True)
        dxs = [cupy.empty((N, H, W, C), dtype=cupy.float16) for _ in range(rotate)]
        bprop = lambda i: op.bprop(dycs[i], w, out=dxs[i])  # noqa: E731
        bp, bp_g = both(bprop)
        dws = [cupy.empty(op.w_shape, dtype=cupy.float16) for _ in range(rotate)]
        updat = lambda i: op.updat(xcs[i], dycs[i], out=dws[i])  # noqa: E731
        up = time_ms(updat, rotate=rot, warmup=2, reps=10, min_ms=0)
        launches = {
            k: _graph_nodes(f, (0,)) for k, f in (("fprop", fprop), ("bprop", bprop), ("updat", updat))
        }
        last, last_g = both(fprop)  # the default again: run-to-run spread
        flops = 2.0 * N * H * W * K * C * 9 * lay.density
        target = 1.5 * d if d is not None else 1.0
        ours_ms = min(first["median"], last["median"])
        ours_g = min(first_g["median"], last_g["median"]) if first_g and last_g else None
        ratio = ours_ms / ref["median"] if ref else None
        ratio_g = ours_g / ref_g["median"] if ours_g and ref_g else None
        row = dict(
            N=N,
            case=name,
            d=d if d is not None else lay.density,
            ours_ms=ours_ms,
            ours_graph=ours_g,
            cudnn_ms=ref["median"] if ref else None,
            cudnn_graph=ref_g["median"] if ref_g else None,
            ratio=ratio,
            ratio_graph=ratio_g,
            target=target,
            ok="yes" if ratio is not None and ratio <= target else "NO",
            kernel=kernel[0] if kernel[1] is None else "{} {}x{}x{}w".format(kernel[0], *kernel[1][:3]),
            rel_err=max([rel, *(v["rel_err"] for v in variants.values())]),
            bprop_ms=bp["median"],
            bprop_graph=bp_g["median"] if bp_g else None,
            updat_ms=up["median"],
            launches="/".join(str(launches[k]) for k in ("fprop", "bprop", "updat")),
            tflops=flops / (ours_g or ours_ms) * 1e-9,
            ours_first=first,
            ours_last=last,
            ours_graph_first=first_g,
            ours_graph_last=last_g,
            cudnn=ref,
            cudnn_graph_t=ref_g,
            bprop=bp,
            bprop_graph_t=bp_g,
            updat=up,
            variants=variants,
            launches_per_call=launches,
            column_blocks=np.bincount(lay.block_cols).tolist() if lay.uniform else None,
        )
        table.add(**{k: v for k, v in row.items() if k in table.columns})
        rows.append(row)
        print(name, {k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)

    def dense_baseline(x, Wb):
        return F.conv2d(x, Wb, padding=1)

    def grouped_weight(shuffle):
        def fn(Wd):
            # the grouped weight [K, C/g, 3, 3] in torch's group order from our dense weight
            gk, gc = K // GROUPS, C // GROUPS
            Wg = torch.empty(K, gc, 3, 3, device=dev, dtype=dt)
            for gi in range(GROUPS):
                for a in range(gk):
                    o = a * GROUPS + gi if shuffle else gi * gk + a
                    Wg[gi * gk + a] = Wd[o, gi * gc : (gi + 1) * gc]
            return Wg.contiguous(memory_format=torch.channels_last)

        return fn

    def grouped_baseline(shuffle):
        def run(x, Wb):
            y = F.conv2d(x, Wb, padding=1, groups=GROUPS)
            return F.channel_shuffle(y, GROUPS) if shuffle else y

        return run

    with cupy_on_torch(dev):
        for N in batches:
            gen = torch.Generator(device="cpu").manual_seed(0)
            xs = [
                torch.randn(N, C, H, W, generator=gen)
                .to(dev, dt)
                .contiguous(memory_format=torch.channels_last)
                for _ in range(rotate)
            ]
            dys = [
                torch.randn(N, K, H, W, generator=gen)
                .to(dev, dt)
                .contiguous(memory_format=torch.channels_last)
                for _ in range(rotate)
            ]

            for d in (0.5, 0.25, 0.125):
                mask = layouts.random(C // b, K // b, density=d, seed=7)
                lay = ChannelBlockLayout.from_mask(mask, b)
                run_case(N, xs, dys, f"random d={d}", lay, d, dense_baseline, None)
            for shuffle in (False, True):
                lay = ChannelBlockLayout.block_diagonal(C, GROUPS, shuffle=shuffle, block_size=b)
                name = f"block-diag g={GROUPS}{' +shuffle' if shuffle else ''}"
                run_case(N, xs, dys, name, lay, None, grouped_baseline(shuffle), grouped_weight(shuffle))
            del xs, dys

    payload = {
        "shape": {
            "N": batches,
            "C": C,
            "K": K,
            "H": H,
            "W": W,
            "filter": [3, 3],
            "block": b,
            "dtype": "float16",
            "format": "NHWC",
        },
        "gpu": gpu_name(),
        "rows": rows,
    }
    path = save_json(
        "conv",
        payload,
        command=(f"CONV_VARIANTS={os.environ['CONV_VARIANTS']} " if os.environ.get("CONV_VARIANTS") else "")
        + "PYTHONPATH=. python bench/conv.py "
        + " ".join(argv or sys.argv[1:]),
    )
    print(f"saved {path}")
    print(vtable.render())
    print(
        f"GPU: {gpu_name()}  C=K={C} {H}x{W} 3x3 fp16 NHWC block {b}; ms = back to back, graph = CUDA-graph "
        "replays (GPU time); ratio = ours / cuDNN, target ≤ 1.5·d (block-diag: ≤ 1 vs grouped conv); "
        "launches = graph nodes per fprop/bprop/updat call"
    )
    print(table.render())


if __name__ == "__main__":
    main()
