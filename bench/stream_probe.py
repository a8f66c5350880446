"""Streaming probe (issue 3, small batch): how fast can the small-batch matmul's weight blocks be read with
cp.async (CTA-wide stages, as xw_small, or per-warp rings), 1-D bulk copies (cp.async.bulk + mbarrier:
one per block or one per 64/128-byte row), or plain 16-byte loads into registers, at a given number of
bytes in flight per SM? Kernels: kernels/stream_probe.cu (sm_90 for the bulk probes).

Run from the repository root on the GPU: `PYTHONPATH=. python bench/stream_probe.py` (~1 min).
The weight list is the fprop order of bench/bsmm.py --small's d = 0.5 layout (K = M = 12288, b = 32:
73728 blocks, 151 MB in fp16 / 302 MB in fp32; CSC order of the CSR-stored w); "seq" rows read it in
storage order. "+x" rows also copy an x tile per block (32 rows of 64 / 128 B from a [32, 12288] x that
stays in L2), as xw_small does. TB/s counts w bytes only ("+x TB/s": w + x bytes); "x floor" is the time
over w bytes / copy bandwidth (read + write bytes of a device copy per second), the measure of
bench/bsmm.py --small's floor column: 1.3 there needs about 1.3 here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.harness import Table, copy_bandwidth, gpu_name, save_json, time_ms
from cusparseblocks import compiler

SOURCE = "stream_probe.cu"
MAX_ENT = 1024  # kernels/stream_probe.cu probe::MAX_ENT

# (kind, template args without BLK, CTAs per SM); kind: cta (EPS, STAGES, MODE, HINT, XT), warp (WARPS,
# SLOTS, MODE, XT), ldg (U, XT). MODE 0 cp.async 16 B, 1 bulk copy per block, 2 bulk copy per row.
CONFIGS_2K = [
    ("cta", (8, 4, 0, 1, 1), 1),  # xw_small today (fp16): 3 stages of 8 blocks of w + x in flight
    ("cta", (8, 4, 0, 1, 0), 1),  # the same without x
    ("cta", (8, 4, 0, 0, 0), 1),  # ... without the evict-first hint
    ("cta", (8, 8, 0, 1, 0), 1),  # 7 stages in flight (112 KB of w)
    ("cta", (16, 6, 0, 1, 0), 1),  # 5 stages of 16 (160 KB)
    ("cta", (4, 4, 0, 1, 0), 2),  # 2 CTAs per SM
    ("cta", (8, 4, 1, 0, 0), 1),  # bulk, one copy per block
    ("cta", (8, 8, 1, 0, 0), 1),
    ("cta", (16, 6, 1, 0, 0), 1),
    ("cta", (8, 4, 2, 0, 0), 1),  # bulk, one copy per 64-byte row
    ("cta", (8, 8, 2, 0, 0), 1),
    ("cta", (8, 4, 1, 0, 1), 1),  # bulk w + x rows
    ("cta", (8, 6, 2, 0, 1), 1),
    ("warp", (8, 4, 0, 0), 1),  # per-warp rings, cp.async
    ("warp", (8, 8, 0, 0), 1),
    ("warp", (8, 12, 0, 0), 1),
    ("warp", (8, 4, 0, 1), 1),
    ("warp", (8, 6, 0, 1), 1),
    ("warp", (8, 4, 1, 0), 1),  # per-warp rings, bulk per block
    ("warp", (8, 8, 1, 0), 1),
    ("warp", (8, 12, 1, 0), 1),
    ("warp", (8, 4, 2, 0), 1),  # per-warp rings, bulk per row
    ("warp", (8, 8, 2, 0), 1),
    ("warp", (8, 4, 2, 1), 1),  # ... + x rows (the planned xw_small ring: 8 warps x 4 slots = 40 KiB ..)
    ("warp", (8, 5, 2, 1), 1),
    ("warp", (4, 9, 2, 1), 1),  # 4 warps x 9 slots
    ("warp", (8, 5, 0, 1), 1),  # the same ring with cp.async
    ("warp", (4, 9, 0, 1), 1),
    ("ldg", (1, 0), 2),
    ("ldg", (2, 0), 2),
    ("ldg", (4, 0), 2),
    ("ldg", (8, 0), 1),
]
CONFIGS_4K = [
    ("cta", (4, 3, 0, 1, 1), 2),  # xw_small today (fp32): 2 CTAs x 2 stages of 4 blocks of w + x in flight
    ("cta", (4, 3, 0, 1, 0), 2),
    ("cta", (8, 6, 1, 0, 0), 1),
    ("warp", (4, 5, 2, 1), 1),
    ("warp", (4, 5, 0, 1), 1),
    ("warp", (8, 4, 1, 0), 1),
    ("ldg", (2, 0), 2),
]


def spec_of(kind, blk, args):
    return compiler.KernelSpec(SOURCE, f"probe_{kind}<{blk}, {', '.join(map(str, args))}>")


def smem_of(kind, blk, args):
    """Dynamic shared memory (mirrors the kernels)."""
    if kind == "cta":
        eps, stages, _, _, xt = args
        return stages * eps * blk * (1 + xt)
    if kind == "warp":
        warps, slots, _, xt = args
        return warps * slots * blk * (1 + xt)
    return 0


def threads_of(kind, args):
    return args[0] * 32 if kind == "warp" else 256


def in_flight(kind, blk, args, per_sm):
    """Bytes of w in flight per SM in the steady state (a slot being consumed is not in flight)."""
    if kind == "cta":
        eps, stages = args[:2]
        return per_sm * eps * blk * (stages - 1)
    if kind == "warp":
        warps, slots = args[:2]
        return per_sm * warps * blk * (slots - 1)
    return per_sm * 8 * blk * args[0]


def layout_order(kb, mb, density, seed=0):
    """fprop list of a random layout: w stored in CSR order (row-major over blocks), visited in CSC order."""
    rng = np.random.default_rng(seed)
    mask = rng.random((kb, mb)) < density
    rows, cols = np.nonzero(mask)  # CSR order: index in w = position here
    csc = np.lexsort((rows, cols))
    return csc.astype(np.int32), rows[csc].astype(np.int32)


def main(argv=None):
    import cupy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--blocks", type=int, default=384, help="blocks per side (K = M = 32 x this)")
    p.add_argument("--only", default="", help="comma-separated substrings of the rows to run")
    a = p.parse_args(argv)

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    sms = int(props["multiProcessorCount"])
    smem_sm = int(props["sharedMemPerMultiprocessor"])
    arch = compiler.device_arch(dev.id)
    bulk_ok = int(arch[3:]) >= 90
    copy_bw = copy_bandwidth(1 << 28)
    print(f"GPU: {gpu_name()}; {sms} SMs; copy bandwidth {copy_bw / 1e9:.0f} GB/s (read + write)", flush=True)

    order, xrow = layout_order(a.blocks, a.blocks, a.density)
    n = int(order.size)
    seq = np.arange(n, dtype=np.int32)
    rows = []
    for blk, configs in ((2048, CONFIGS_2K), (4096, CONFIGS_4K)):
        for kind, args, per_sm in configs:
            mode = args[2] if kind in ("cta", "warp") else 0
            if mode and not bulk_ok:
                continue
            rows.append((blk, kind, args, per_sm, "csc"))
        rows.append(
            (blk, "cta", (8, 4, 0, 1, 0) if blk == 2048 else (4, 3, 0, 1, 0), 1 if blk == 2048 else 2, "seq")
        )
        if bulk_ok:
            rows.append((blk, "warp", (8, 8, 1, 0), 1, "seq"))
    if a.only:
        keys = a.only.split(",")
        rows = [r for r in rows if any(k in str(r) for k in keys)]
    specs = list(dict.fromkeys(spec_of(kind, blk, args) for blk, kind, args, _, _ in rows))
    compiled = compiler.compile_specs(specs, arch)  # one NVRTC program
    module = cupy.cuda.function.Module()
    module.load(next(iter(compiled.values())).cubin)
    from cupy_backends.cuda.api import driver

    regs = [c.registers or 0 for c in compiled.values()]
    worst = max((c.spill_stores or 0) for c in compiled.values())
    print(f"compiled {len(specs)} probes for {arch}: registers {min(regs)}-{max(regs)}, spill stores {worst}")

    x_stride = a.blocks * 32  # elements per x row; bytes = this x itemsize
    out = Table(["probe", "blk", "args", "CTA/SM", "order", "KB/SM", "us", "TB/s w", "x floor", "+x TB/s"])
    results, buffers = [], {}
    for blk, kind, args, per_sm, ordname in rows:
        spec = spec_of(kind, blk, args)
        item = blk // 1024  # fp16 2 KB blocks, fp32 4 KB
        smem = smem_of(kind, blk, args)
        static = compiled[spec].shared_static or 0
        if per_sm * (smem + static + 1024) > smem_sm:
            print(f"skip {spec.name}: {per_sm} x {smem + static} B of shared memory do not fit", flush=True)
            continue
        fn = module.get_function(compiled[spec].lowered_name)
        if smem > 48 * 1024:
            driver.funcSetAttribute(fn.ptr, 8, smem)
        ctas = sms * per_sm
        if -(-n // ctas) > MAX_ENT:
            print(f"skip {spec.name}: {n} entries over {ctas} CTAs exceed {MAX_ENT}", flush=True)
            continue
        if blk not in buffers:  # w: n blocks of blk bytes; x: [32, K] of 2 / 4-byte elements
            buffers.clear()
            buffers[blk] = (
                cupy.ones(n * blk, dtype=cupy.uint8),
                cupy.ones(32 * x_stride * item, dtype=cupy.uint8),
            )
        w, x = buffers[blk]
        ordg = cupy.asarray(order if ordname == "csc" else seq)
        xrg = cupy.asarray(xrow)
        sink = cupy.zeros(ctas * threads_of(kind, args), dtype=cupy.uint32)
        xt = args[-1] if kind != "ldg" else args[1]
        kargs = (w, ordg, x, xrg, np.int64(x_stride * item), np.int32(n), sink)

        def launch(fn=fn, ctas=ctas, kind=kind, args=args, smem=smem, kargs=kargs):
            fn((ctas,), (threads_of(kind, args),), kargs, shared_mem=smem)

        try:
            t = time_ms(launch, graph=True, min_ms=20.0, batches=5)["median"]
        except Exception as e:  # noqa: BLE001 - a probe that fails to launch is reported, the rest run
            print(f"{spec.name}: {type(e).__name__}: {e}", flush=True)
            continue
        wbytes = n * blk
        tbs = wbytes / (t * 1e-3) / 1e12
        row = dict(
            probe=kind,
            blk=blk,
            args=",".join(map(str, args)),
            **{"CTA/SM": per_sm},
            order=ordname,
            **{"KB/SM": in_flight(kind, blk, args, per_sm) // 1024},
            us=t * 1e3,
            **{"TB/s w": tbs},
            **{"x floor": copy_bw / 1e12 / tbs},
        )
        if xt:
            row["+x TB/s"] = 2 * tbs
        out.add(**row)
        results.append(dict(row, name=spec.name, registers=compiled[spec].registers))
        print(f"{spec.name} x{per_sm} {ordname}: {t * 1e3:.1f} us, {tbs:.2f} TB/s of w", flush=True)
    print(out.render())
    path = save_json(
        "stream_probe",
        {"copy_bw": copy_bw, "sms": sms, "rows": results},
        command="PYTHONPATH=. python bench/stream_probe.py " + " ".join(argv or sys.argv[1:]),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
