"""Block-sparse matmul benchmark (bench/bsmm.py and ``python -m cusparseblocks bench``).

Every system is timed in the same run on the same GPU: our kernels; dense cuBLAS on the same shapes
(``cupy.matmul``, no TF32); PyTorch's BSR kernels (``torch.sparse._triton_ops.bsr_dense_mm`` for
fp16/bf16, ``torch.sparse.mm`` on a BSR tensor, i.e. cuSPARSE, for fp32) when PyTorch is present; and
the memory floor (bytes of nonzero weights + activations over the measured copy bandwidth).
Effective TFLOP/s = 2·N·nnz·b² / time. Prints a table last, writes JSON (+ the command) and a PNG.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ._timing import Table, copy_bandwidth, gpu_name, save_json, time_ms

COLUMNS = ["system", "op", "dtype", "b", "density", "N", "K", "ms", "TFLOPs", "x_dense", "x_floor",
           "ms_graph", "x_floor_graph", "path"]


def _cases(short: bool, small: bool = False):
    main = []
    if small:  # the small-batch table alone: weight streaming, fprop and bprop
        return [(op, dtype, 32, d, 32, 12288) for dtype in ("float16", "float32") for op in ("fprop", "bprop")
                for d in (0.5, 0.2, 0.1, 0.05, 0.02)]
    if short:
        return [("fprop", "float16", 32, 0.1, 4096, 4096), ("updat", "float16", 32, 0.1, 4096, 4096),
                ("fprop", "float16", 32, 0.1, 32, 12288)]
    for op in ("fprop", "bprop", "updat"):
        for dtype in ("float16", "bfloat16"):
            for b in (32, 64):
                for d in (0.5, 0.2, 0.1, 0.05):
                    main.append((op, dtype, b, d, 4096, 4096))
        for b in (16, 8):
            main.append((op, "float16", b, 0.2, 4096, 4096))
        for d in (0.5, 0.2, 0.1):
            main.append((op, "float32", 32, d, 4096, 4096))
    for dtype in ("float16", "float32"):
        for d in (0.5, 0.2, 0.1, 0.05, 0.02):
            main.append(("fprop", dtype, 32, d, 32, 12288))
    # the rest of issue 3's fp32 grid (b = 32 d = 0.05, b = 64), last: the rows above keep their layouts
    for op in ("fprop", "bprop", "updat"):
        main.append((op, "float32", 32, 0.05, 4096, 4096))
        for d in (0.5, 0.2, 0.1, 0.05):
            main.append((op, "float32", 64, d, 4096, 4096))
    return main


def _torch():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def run(short=False, rotate_sets=3, seed=0, compare_tiles=True, small=False, peers=True, only=None):
    """``only``: {"op": [...], "dtype": [...], "N": [...], "b": [...]} keeps the matching cases (None:
    all)."""
    import cupy as cp

    from . import BlockSparseMatMul
    from ._array import bfloat16

    rng = np.random.default_rng(seed)
    crng = cp.random.default_rng(seed)
    bw = copy_bandwidth()
    torch = _torch() if peers else None
    rows, dense_cache = [], {}
    cases = [c for c in _cases(short, small) if not only or all(
        c[i] in only[key] for i, key in ((0, "op"), (1, "dtype"), (2, "b"), (4, "N")) if only.get(key))]
    try:
        from tqdm import tqdm

        cases_iter = tqdm(cases, desc="bsmm bench", file=sys.stderr)
    except ImportError:
        cases_iter = cases
    for op, dtype, b, density, n, k in cases_iter:
        np_dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        kb = k // b
        mask = rng.random((kb, kb)) < density
        mask[np.arange(kb), np.arange(kb)] = True  # no dead units
        bsmm = BlockSparseMatMul(mask, b)
        nnz = bsmm.layout.nnz
        sets = []
        for _ in range(rotate_sets):
            x = crng.standard_normal((n, k), dtype=cp.float32).astype(np_dt)
            dy = crng.standard_normal((n, k), dtype=cp.float32).astype(np_dt)
            w = (crng.standard_normal(bsmm.w_shape, dtype=cp.float32) * 0.05).astype(np_dt)
            sets.append((x, dy, w))
        flops = 2.0 * n * nnz * b * b
        itemsize = np.dtype(np_dt).itemsize
        floor_bytes = (nnz * b * b + 2 * n * k) * itemsize
        floor_ms = floor_bytes / bw * 1e3
        if op == "fprop":
            fn, args = bsmm.fprop, [(x, w) for x, dy, w in sets]
        elif op == "bprop":
            fn, args = bsmm.bprop, [(dy, w) for x, dy, w in sets]
        else:
            fn, args = bsmm.updat, [(x, dy) for x, dy, w in sets]
        t = time_ms(fn, rotate=args)["median"]
        # GPU time alone (CUDA graph replay, preallocated outputs; the update's split partials come from the
        # memory pool, warmed up before the capture)
        outs = [cp.empty((n, k) if op != "updat" else bsmm.w_shape, dtype=np_dt) for _ in args]
        t_graph = time_ms(lambda a, b2, o, fn=fn: fn(a, b2, out=o),
                          rotate=[(*a, o) for a, o in zip(args, outs)], graph=True)["median"]
        # where the default takes the dense route (cuBLAS on the zero-filled weights), the block-sparse
        # kernels on the same case too: "cusparseblocks[kernels]"
        from . import _dense_route

        routed = _dense_route.wanted(bsmm, op, dtype, n)
        kernels = None
        if routed:
            saved_mode = _dense_route.ROUTE["mode"]
            _dense_route.ROUTE["mode"] = "never"
            try:
                kernels = (time_ms(fn, rotate=args)["median"],
                           time_ms(lambda a, b2, o, fn=fn: fn(a, b2, out=o),
                                   rotate=[(*a, o) for a, o in zip(args, outs)], graph=True)["median"])
            finally:
                _dense_route.ROUTE["mode"] = saved_mode
        if compare_tiles and op != "updat" and n >= 2048 and dtype in ("float16", "float32"):
            from . import _matmul_gpu

            gmma_tiles = tuple(_matmul_gpu.XW_GMMA_TILES.get(b, ()))
            tc_tiles = ("medium", "large", "medium_lean", *_matmul_gpu.XW_WIDE_TILES.get(b, ()))
            ffma_tiles = (*_matmul_gpu.XW_FFMA_TILES.get(b, ()), "simt")
            for variant in ((*tc_tiles, *gmma_tiles) if dtype == "float16" else ffma_tiles):
                _matmul_gpu.force_variant = variant
                try:
                    tv = time_ms(fn, rotate=args)["median"]
                finally:
                    _matmul_gpu.force_variant = None
                rows.append(dict(system=f"cusparseblocks[{variant}]", op=op, dtype=dtype, b=b, density=density,
                                 N=n, K=k, ms=tv, TFLOPs=flops / (tv * 1e-3) / 1e12, x_floor=tv / floor_ms))
        if compare_tiles and op != "updat" and n <= 64:  # xw_small against the per-column kernels
            from . import _matmul_gpu

            _matmul_gpu.small_enabled = False
            try:
                tv = time_ms(fn, rotate=args)["median"]
                outs_v = [cp.empty((n, k), dtype=np_dt) for _ in args]
                tg = time_ms(lambda a, b2, o, fn=fn: fn(a, b2, out=o),
                             rotate=[(*a, o) for a, o in zip(args, outs_v)], graph=True)["median"]
            finally:
                _matmul_gpu.small_enabled = True
            rows.append(dict(system="cusparseblocks[per-column]", op=op, dtype=dtype, b=b, density=density,
                             N=n, K=k, ms=tv, TFLOPs=flops / (tv * 1e-3) / 1e12, x_floor=tv / floor_ms,
                             ms_graph=tg, x_floor_graph=tg / floor_ms))
            for name, (kind, bm, _) in _matmul_gpu.XW_SMALL_VARIANTS.items():
                if kind != ("simt" if dtype == "float32" else "tc") or bm != (32 if n <= 32 else 64):
                    continue
                _matmul_gpu.small_variant = name
                try:
                    outs_v = [cp.empty((n, k), dtype=np_dt) for _ in args]
                    tv = time_ms(lambda a, b2, o, fn=fn: fn(a, b2, out=o),
                                 rotate=[(*a, o) for a, o in zip(args, outs_v)], graph=True)["median"]
                finally:
                    _matmul_gpu.small_variant = None
                rows.append(dict(system=f"cusparseblocks[{name}]", op=op, dtype=dtype, b=b, density=density,
                                 N=n, K=k, ms_graph=tv, x_floor_graph=tv / floor_ms))
        if compare_tiles and op == "updat" and n >= 2048 and dtype == "float32":
            from . import _matmul_gpu

            for variant in (*_matmul_gpu.UPDAT_FFMA_TILES.get(b, ()), "simt"):
                _matmul_gpu.updat_ffma_variant = variant
                try:
                    tv = time_ms(fn, rotate=args)["median"]
                finally:
                    _matmul_gpu.updat_ffma_variant = None
                rows.append(dict(system=f"cusparseblocks[{variant}]", op=op, dtype=dtype, b=b,
                                 density=density, N=n, K=k, ms=tv, TFLOPs=flops / (tv * 1e-3) / 1e12,
                                 x_floor=tv / floor_ms))
        # dense cuBLAS on the same shapes (per op, dtype, N, K)
        dkey = (op, dtype, n, k)
        if dkey not in dense_cache:
            dsets = [(crng.standard_normal((n, k), dtype=cp.float32).astype(np_dt),
                      crng.standard_normal((k, k), dtype=cp.float32).astype(np_dt)) for _ in range(rotate_sets)]
            if op == "updat":
                dfn = lambda a, wd: cp.matmul(a.T, a)  # noqa: E731 - [K, N]·[N, M]
            elif op == "bprop":
                dfn = lambda a, wd: cp.matmul(a, wd.T)  # noqa: E731
            else:
                dfn = cp.matmul
            dense_cache[dkey] = time_ms(dfn, rotate=dsets)["median"]
        td = dense_cache[dkey]
        dense_tflops = 2.0 * n * k * k / (td * 1e-3) / 1e12
        eff = flops / (t * 1e-3) / 1e12
        rows.append(dict(system="cusparseblocks", op=op, dtype=dtype, b=b, density=density, N=n, K=k, ms=t,
                         TFLOPs=eff, x_dense=eff / dense_tflops, x_floor=t / floor_ms,
                         ms_graph=t_graph, x_floor_graph=t_graph / floor_ms,
                         path="dense route" if routed else "block-sparse"))
        if kernels is not None:
            eff_k = flops / (kernels[0] * 1e-3) / 1e12
            rows.append(dict(system="cusparseblocks[kernels]", op=op, dtype=dtype, b=b, density=density, N=n,
                             K=k, ms=kernels[0], TFLOPs=eff_k, x_dense=eff_k / dense_tflops,
                             x_floor=kernels[0] / floor_ms, ms_graph=kernels[1],
                             x_floor_graph=kernels[1] / floor_ms, path="block-sparse"))
        rows.append(dict(system="dense cuBLAS", op=op, dtype=dtype, b=b, density=density, N=n, K=k, ms=td,
                         TFLOPs=dense_tflops, x_dense=1.0, x_floor=td / floor_ms))
        if torch is not None and op != "updat":
            tp = _torch_bsr(torch, bsmm, op, dtype, sets)
            if tp is not None:
                eff_t = flops / (tp * 1e-3) / 1e12
                name = "torch BSR (triton)" if dtype != "float32" else "torch BSR (cuSPARSE)"
                rows.append(dict(system=name, op=op, dtype=dtype, b=b, density=density, N=n, K=k, ms=tp,
                                 TFLOPs=eff_t, x_dense=eff_t / dense_tflops, x_floor=tp / floor_ms))
    return {"copy_bandwidth_GBs": bw / 1e9, "gpu": gpu_name(), "rows": rows}


def _torch_bsr(torch, bsmm, op, dtype, sets):
    """PyTorch's BSR kernel on the same problem: yᵀ = Wᵀ·xᵀ (fprop) or dxᵀ = W·dyᵀ (bprop)."""
    try:
        tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        b = bsmm.block_size
        tsets = []
        for x, dy, w in sets:
            dense_w = torch.from_dlpack(bsmm.dense(w))
            mat = dense_w.t().contiguous() if op == "fprop" else dense_w
            bsr = mat.to_sparse_bsr((b, b))
            act = torch.from_dlpack(x if op == "fprop" else dy).t().contiguous().to(tdt)
            tsets.append((bsr, act))
        if dtype == "float32":
            fn = torch.sparse.mm
        else:
            from torch.sparse._triton_ops import bsr_dense_mm

            fn = bsr_dense_mm
        return time_ms(fn, rotate=tsets)["median"]
    except Exception as exc:  # noqa: BLE001 - a peer that can't run this case is reported, not fatal
        print(f"torch BSR peer failed for {op} {dtype} b={bsmm.block_size}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return None


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, op in zip(axes, ("fprop", "bprop", "updat")):
        for (system, dtype, b), marker in zip(
            sorted({(r["system"], r["dtype"], r["b"]) for r in result["rows"]
                    if r["op"] == op and r["N"] == 4096 and r["dtype"] == "float16" and r["b"] in (32, 64)}),
            "os^vD<>x+*"):
            pts = sorted((r["density"], r["TFLOPs"]) for r in result["rows"]
                         if r["op"] == op and r["system"] == system and r["dtype"] == dtype and r["b"] == b
                         and r["N"] == 4096)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"{system} b={b}")
        ax.set_xscale("log")
        ax.set_title(f"{op}, fp16, N=K=M=4096")
        ax.set_xlabel("block density")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("effective TFLOP/s")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"block-sparse matmul on {result['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench/bsmm.py", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="three cases only (the CLI's default)")
    parser.add_argument("--out", default="bench/results", help="directory for JSON and PNG")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--small", action="store_true",
                        help="the small-batch table alone (N = 32, K = M = 12288, b = 32; fprop and bprop)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's BSR peers (faster)")
    parser.add_argument("--op", help="comma-separated ops to keep (fprop,bprop,updat)")
    parser.add_argument("--dtype", help="comma-separated dtypes to keep (float16,bfloat16,float32)")
    parser.add_argument("--n", help="comma-separated batch sizes N to keep (4096,32)")
    parser.add_argument("--b", help="comma-separated block sizes to keep (8,16,32,64)")
    args = parser.parse_args(argv)
    only = {key: [int(v) if key in ("N", "b") else v for v in val.split(",")]
            for key, val in (("op", args.op), ("dtype", args.dtype), ("N", args.n), ("b", args.b)) if val}
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no device")
    except Exception as exc:  # noqa: BLE001
        print(f"bench: needs a CUDA GPU and CuPy ({type(exc).__name__}: {exc}); nothing to time on this machine.")
        return 0
    result = run(short=args.short, small=args.small, peers=not args.no_torch, only=only)
    table = Table(COLUMNS)
    for r in result["rows"]:
        table.add(**r)
    if not args.no_save:
        filters = (("op", args.op), ("dtype", args.dtype), ("n", args.n), ("b", args.b))
        cmd = "PYTHONPATH=. python bench/bsmm.py" + (" --short" if args.short else "") + (
            " --small" if args.small else "") + (" --no-torch" if args.no_torch else "") + "".join(
            f" --{flag} {val}" for flag, val in filters if val)
        tag = "bsmm" + ("-short" if args.short else "") + ("-small" if args.small else "")
        path = save_json(tag, result, args.out, command=cmd)
        try:
            plot(result, path.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001
            print(f"plot skipped: {exc}", file=sys.stderr)
        print(f"wrote {path}")
    print(f"GPU: {result['gpu']}; copy bandwidth {result['copy_bandwidth_GBs']:.0f} GB/s")
    print(table.render())
    return 0
