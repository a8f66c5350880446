"""Block-sparse convolution vs cuDNN (issue 6).

256→256 channels, 3×3, pad 1, 32×32 images, batch 64, fp16, NHWC, channel-block 32:
- random block layouts at density d ∈ {0.5, 0.25, 0.125}: our fprop vs torch conv2d on the masked
  dense weight (cuDNN, channels_last); target ≤ 1.5·d × dense;
- block-diagonal, 8 groups: ours vs torch conv2d(groups=8) (target: no slower), and with the merged
  channel shuffle vs grouped conv + shuffle.
Times both tensor-core fprop kernels (per-tap and halo; "ours" is the op's automatic choice), bprop
(tensor cores for stride 1) and the weight update (tensor cores, split over rows). Every case is checked
against torch's result first. Table last; JSON in bench/results/.

    PYTHONPATH=. python bench/conv.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 8, fewer repeats")
    args = parser.parse_args(argv)

    import cupy
    import torch
    import torch.nn.functional as F

    from bench.harness import Table, gpu_name, save_json, time_ms
    from cusparseblocks import conv as conv_module
    from cusparseblocks import layouts
    from cusparseblocks.adapters.torch import cupy_on_torch, to_cupy
    from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout

    torch.backends.cudnn.benchmark = True
    N = 8 if args.quick else 64
    C = K = 256
    H = W = 32
    b = 32
    dev = torch.device("cuda")
    dt = torch.float16
    rotate = 3
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [
        torch.randn(N, C, H, W, generator=gen).to(dev, dt).contiguous(memory_format=torch.channels_last)
        for _ in range(rotate)
    ]
    dys = [
        torch.randn(N, K, H, W, generator=gen).to(dev, dt).contiguous(memory_format=torch.channels_last)
        for _ in range(rotate)
    ]
    table = Table(
        [
            "case",
            "d",
            "ours_ms",
            "cudnn_ms",
            "ratio",
            "target",
            "ok",
            "rel_err",
            "tap_ms",
            "halo_ms",
            "bprop_ms",
            "updat_ms",
            "tflops",
        ]
    )
    rows = []

    def x_nhwc(t):
        return to_cupy(t.permute(0, 2, 3, 1))  # channels_last memory seen as [N, H, W, C]

    with cupy_on_torch(dev):
        dense_flops = 2.0 * N * H * W * K * C * 9

        def run_case(name, lay, d, baseline, dense_w_fn, shuffle_fn=None):
            op = BlockSparseConv(lay, (3, 3), padding=1, data_format="NHWC")
            w_np = op.init_normal(1, dtype=np.float32)
            w = cupy.asarray(w_np).astype(cupy.float16)
            Wd = torch.from_numpy(op.dense(w_np)).to(dev, dt).contiguous(memory_format=torch.channels_last)
            outs = [cupy.empty((N, H, W, K), dtype=cupy.float16) for _ in range(rotate)]
            xcs = [x_nhwc(t) for t in xs]
            dycs = [to_cupy(t.permute(0, 2, 3, 1)) for t in dys]
            # correctness against torch (float32 accumulate, fp16 out) on the same data
            y = op.fprop(xcs[0], w, out=outs[0])
            yt = baseline(xs[0], Wd, dense_w_fn)
            ytn = cupy.asarray(yt.permute(0, 2, 3, 1).contiguous().float())
            rel = float(cupy.linalg.norm(y.astype(cupy.float32) - ytn) / cupy.linalg.norm(ytn))
            rot = [(i,) for i in range(rotate)]
            variants = {}
            for variant in ("tap", "halo"):  # both tensor-core fprop kernels; the op picks one by itself
                conv_module.force_variant = variant
                y = op.fprop(xcs[0], w, out=outs[0])
                err = float(cupy.linalg.norm(y.astype(cupy.float32) - ytn) / cupy.linalg.norm(ytn))
                variants[variant] = dict(
                    time_ms(lambda i: op.fprop(xcs[i], w, out=outs[i]), rotate=rot), rel_err=err
                )
            conv_module.force_variant = None
            ours = time_ms(lambda i: op.fprop(xcs[i], w, out=outs[i]), rotate=rot)
            ref = time_ms(lambda i: baseline(xs[i], Wd, dense_w_fn), rotate=rot)
            dxs = [cupy.empty((N, H, W, C), dtype=cupy.float16) for _ in range(rotate)]
            bp = time_ms(lambda i: op.bprop(dycs[i], w, out=dxs[i]), rotate=rot)
            dws = [cupy.empty(op.w_shape, dtype=cupy.float16) for _ in range(rotate)]
            up = time_ms(
                lambda i: op.updat(xcs[i], dycs[i], out=dws[i]), rotate=rot, warmup=2, reps=10, min_ms=0
            )
            flops = dense_flops * lay.density
            ratio = ours["median"] / ref["median"]
            target = 1.5 * d if d is not None else 1.0
            row = dict(
                case=name,
                d=d if d is not None else lay.density,
                ours_ms=ours["median"],
                cudnn_ms=ref["median"],
                ratio=ratio,
                target=target,
                ok="yes" if ratio <= target else "NO",
                rel_err=max(rel, *(v["rel_err"] for v in variants.values())),
                tap_ms=variants["tap"]["median"],
                halo_ms=variants["halo"]["median"],
                bprop_ms=bp["median"],
                updat_ms=up["median"],
                tflops=flops / ours["median"] * 1e-9,
                tensor_cores=op.uses_tensor_cores(np.float16),
                ours=ours,
                cudnn=ref,
                bprop=bp,
                updat=up,
                variants=variants,
            )
            table.add(**{k: v for k, v in row.items() if k in table.columns})
            rows.append(row)
            print(name, {k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)

        def dense_baseline(x, Wd, _):
            return F.conv2d(x, Wd, padding=1)

        for d in (0.5, 0.25, 0.125):
            mask = layouts.random(C // b, K // b, density=d, seed=7)
            run_case(f"random d={d}", ChannelBlockLayout.from_mask(mask, b), d, dense_baseline, None)

        g = 8
        gk = K // g

        def grouped_weight(lay_shuffle):
            def fn(Wd):
                # the grouped weight [K, C/g, 3, 3] in torch's group order from our dense weight
                Wg = torch.empty(K, C // g, 3, 3, device=dev, dtype=dt)
                for gi in range(g):
                    for a in range(gk):
                        o = a * g + gi if lay_shuffle else gi * gk + a
                        Wg[gi * gk + a] = Wd[o, gi * (C // g) : (gi + 1) * (C // g)]
                return Wg.contiguous(memory_format=torch.channels_last)

            return fn

        cache = {}

        def grouped_baseline(shuffle):
            def run(x, Wd, fn):
                key = (shuffle, Wd.data_ptr())
                if key not in cache:
                    cache[key] = fn(Wd)
                y = F.conv2d(x, cache[key], padding=1, groups=g)
                if shuffle:
                    y = (
                        F.channel_shuffle(y, g)
                        if hasattr(F, "channel_shuffle")
                        else torch.nn.functional.channel_shuffle(y, g)
                    )
                return y

            return run

        for shuffle in (False, True):
            lay = ChannelBlockLayout.block_diagonal(C, g, shuffle=shuffle)
            run_case(
                f"block-diag g=8{' +shuffle' if shuffle else ''}",
                lay,
                None,
                grouped_baseline(shuffle),
                grouped_weight(shuffle),
            )

    payload = {
        "shape": {
            "N": N,
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
        "conv", payload, command="PYTHONPATH=. python bench/conv.py " + " ".join(argv or sys.argv[1:])
    )
    print(f"saved {path}")
    print(
        f"GPU: {gpu_name()}  N={N} C=K={C} {H}x{W} 3x3 fp16 NHWC block {b}; "
        "ratio = ours / cuDNN, target ≤ 1.5·d "
        f"(block-diag: ≤ 1 vs grouped conv)"
    )
    print(table.render())


if __name__ == "__main__":
    main()
