"""The block-diagonal conv fprop (bench/conv.py's shape) for Nsight Compute: one launch per schedule.

256→256 channels, 8 groups (block 32), 3×3 pad 1, 32×32, batch 64, fp16 NHWC; argv: "shuffle" for the
merged channel shuffle, or "d=0.5" for a random layout of that density (seed 0), then the force_variant
values to profile (default: the previous schedule "halo:256x4:v1", then the
automatic one). Each variant runs twice (compile + warm-up, then the profiled
launch), so profile with --launch-skip 1 --launch-count 1 per variant, or use regex and count 2·variants:

Run: PYTHONPATH=. ncu --kernel-name regex:conv_fprop_halo --set full -o conv python bench/profile_conv.py
(bench/device_conv.sh); ``python bench/profile_conv.py --table RAW.csv`` prints the metrics read in
bench/NOTES.md from ``ncu --import conv.ncu-rep --page raw --csv``.
"""

import csv
import sys

METRICS = {
    "gpu__time_duration.sum": "time",
    "launch__grid_size": "grid",
    "launch__registers_per_thread": "regs",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy %",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "SM %",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "memory %",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor pipe %",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue active %",
    "smsp__inst_executed.sum": "instructions",
    "dram__bytes_read.sum": "DRAM read",
    "dram__bytes_write.sum": "DRAM write",
    "lts__t_bytes.sum": "L2 bytes",
    "lts__t_sectors_op_write.sum": "L2 write sectors",
    "lts__t_requests_srcunit_tex_op_write.sum": "L2 write requests",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum": "smem bank conflicts",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum": "smem wavefronts",
    "smsp__warps_issue_stalled_barrier_per_warp_active.pct": "stall barrier %",
}


def table(path: str) -> None:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) > 5]
    if len(rows) < 3:
        print(f"{path}: no kernels")
        return
    head, units, data = rows[0], rows[1], rows[2:]
    for r in data:
        rec = dict(zip(head, r))
        unit = dict(zip(head, units))
        print(f"-- {rec.get('Kernel Name', '?')[:60]}")
        for m, label in METRICS.items():
            if m in rec:
                print(f"   {label:22s} {rec[m]:>14s} {unit.get(m, '')}")
        stalls = []
        pre, post = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
        for m, v in rec.items():
            if m.startswith(pre) and m.endswith(post):
                try:
                    stalls.append((float(v.replace(",", "")), m[len(pre) : -len(post)]))
                except ValueError:
                    pass
        stalls.sort(reverse=True)
        print("   stalls per issue:", ", ".join(f"{n} {v:.2f}" for v, n in stalls[:7]))


if sys.argv[1:2] == ["--table"]:
    table(sys.argv[2])
    sys.exit(0)

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

from cusparseblocks import conv as conv_module  # noqa: E402
from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout  # noqa: E402

args = sys.argv[1:]
shuffle = bool(args) and args[0] == "shuffle"
density = float(args[0][2:]) if args and args[0].startswith("d=") else None  # "d=0.5": a random layout
rest = args[1:] if shuffle or density else args
variants = [None if v == "auto" else v for v in rest] or ["halo:256x4:v1", None]
if density is not None:
    mask = np.random.default_rng(0).random((8, 8)) < density
    mask[0, ~mask.any(axis=0)] = True
    lay = ChannelBlockLayout.from_mask(mask, 32)
else:
    lay = ChannelBlockLayout.block_diagonal(256, 8, shuffle=shuffle, block_size=32)
op = BlockSparseConv(lay, (3, 3), padding=1, data_format="NHWC")
x = cp.random.standard_normal((64, 32, 32, 256), dtype=cp.float32).astype(cp.float16)
w = cp.asarray(op.init_normal(0, dtype=np.float32)).astype(cp.float16)
y = cp.empty((64, 32, 32, 256), dtype=cp.float16)
for v in variants:
    conv_module.force_variant = v
    for _ in range(2):
        op.fprop(x, w, out=y)
    cp.cuda.runtime.deviceSynchronize()
    print(v or "auto", "done", float(y[0, 0, 0, 0]), flush=True)
