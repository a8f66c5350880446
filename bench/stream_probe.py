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
import json
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


def probe_rows(bulk_ok, only=""):
    """(blk, kind, args, CTAs per SM, order name) of every row to run, in order."""
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
    if only:
        keys = only.split(",")
        rows = [r for r in rows if any(k in str(r) for k in keys)]
    return rows


def main(argv=None):
    """Parent: measures the copy bandwidth, compiles every probe (one NVRTC program, cached on disk), then
    runs the rows in worker processes: a probe that faults (a sticky CUDA error) costs its own row only,
    the next worker starts after it."""
    import subprocess

    import cupy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--blocks", type=int, default=384, help="blocks per side (K = M = 32 x this)")
    p.add_argument("--only", default="", help="comma-separated substrings of the rows to run")
    p.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--copy-bw", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker >= 0:
        return worker(a)

    dev = cupy.cuda.Device()
    arch = compiler.device_arch(dev.id)
    rows = probe_rows(int(arch[3:].rstrip("a")) >= 90, a.only)
    copy_bw = copy_bandwidth(1 << 28)
    sms = int(cupy.cuda.runtime.getDeviceProperties(dev.id)["multiProcessorCount"])
    print(f"GPU: {gpu_name()}; {sms} SMs; copy bandwidth {copy_bw / 1e9:.0f} GB/s (read + write)", flush=True)
    specs = list(dict.fromkeys(spec_of(kind, blk, args) for blk, kind, args, _, _ in rows))
    compiled = compiler.compile_specs(specs, arch)  # one NVRTC program, cached on disk for the workers
    regs = [c.registers or 0 for c in compiled.values()]
    worst = max((c.spill_stores or 0) for c in compiled.values())
    print(f"compiled {len(specs)} probes for {arch}: registers {min(regs)}-{max(regs)}, spill stores {worst}")

    own = [x for x in (argv if argv is not None else sys.argv[1:])]
    out = Table(["probe", "blk", "args", "CTA/SM", "order", "KB/SM", "us", "TB/s w", "x floor", "+x TB/s"])
    results, k = [], 0
    while k < len(rows):
        proc = subprocess.run(
            [sys.executable, __file__, *own, "--worker", str(k), "--copy-bw", repr(copy_bw)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        nxt = k
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                nxt = row.pop("index") + 1
                results.append(row)
                out.add(**{c: row[c] for c in out.columns if c in row})
            elif line.startswith("SKIP "):
                nxt = int(line.split()[1]) + 1
                print(line, flush=True)
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                print(line[4:][:160], flush=True)
        if nxt < len(rows) and (proc.returncode != 0 or nxt == k):
            blk, kind, args, per_sm, ordname = rows[nxt]
            tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            print(
                f"FAILED row {nxt} {spec_of(kind, blk, args).name} x{per_sm} {ordname}: {tail[:300]}",
                flush=True,
            )
            nxt += 1
        k = max(nxt, k + 1)
    print(out.render())
    path = save_json(
        "stream_probe",
        {"copy_bw": copy_bw, "sms": sms, "rows": results},
        command="PYTHONPATH=. python bench/stream_probe.py " + " ".join(own),
    )
    print(f"wrote {path}")


def worker(a):
    """Runs rows a.worker, a.worker + 1, ... printing one "ROW {json}" line each; exits at a CUDA error."""
    import cupy
    from cupy_backends.cuda.api import driver

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    sms = int(props["multiProcessorCount"])
    smem_sm = int(props["sharedMemPerMultiprocessor"])
    arch = compiler.device_arch(dev.id)
    rows = probe_rows(int(arch[3:].rstrip("a")) >= 90, a.only)
    specs = list(dict.fromkeys(spec_of(kind, blk, args) for blk, kind, args, _, _ in rows))
    compiled = compiler.compile_specs(specs, arch)
    module = cupy.cuda.function.Module()
    module.load(next(iter(compiled.values())).cubin)
    copy_bw = a.copy_bw
    order, xrow = layout_order(a.blocks, a.blocks, a.density)
    n = int(order.size)
    seq = np.arange(n, dtype=np.int32)
    x_stride = a.blocks * 32  # elements per x row; bytes = this x itemsize
    buffers = {}
    for index in range(a.worker, len(rows)):
        blk, kind, args, per_sm, ordname = rows[index]
        spec = spec_of(kind, blk, args)
        item = blk // 1024  # fp16 2 KB blocks, fp32 4 KB
        smem = smem_of(kind, blk, args)
        static = compiled[spec].shared_static or 0
        ctas = sms * per_sm
        if per_sm * (smem + static + 1024) > smem_sm or -(-n // ctas) > MAX_ENT:
            print(
                f"SKIP {index} {spec.name}: {per_sm} x {smem + static} B of shared memory or "
                f"{-(-n // ctas)} entries per CTA do not fit",
                flush=True,
            )
            continue
        fn = module.get_function(compiled[spec].lowered_name)
        if smem > 48 * 1024:
            driver.funcSetAttribute(fn.ptr, 8, smem)
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

        launch()
        cupy.cuda.runtime.deviceSynchronize()  # a fault shows here, named, before any timing
        t = time_ms(launch, graph=True, min_ms=20.0, batches=5)["median"]
        tbs = n * blk / (t * 1e-3) / 1e12
        row = {
            "index": index,
            "probe": kind,
            "blk": blk,
            "args": ",".join(map(str, args)),
            "CTA/SM": per_sm,
            "order": ordname,
            "KB/SM": in_flight(kind, blk, args, per_sm) // 1024,
            "us": t * 1e3,
            "TB/s w": tbs,
            "x floor": copy_bw / 1e12 / tbs,
            "name": spec.name,
            "registers": compiled[spec].registers,
        }
        if xt:
            row["+x TB/s"] = 2 * tbs
        print("ROW " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
