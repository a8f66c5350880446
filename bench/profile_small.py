"""The small-batch fprop for Nsight Compute: N = 32, K = M = 12288, b = 32, fp16 then fp32 (density: argv[1]).

Run: PYTHONPATH=. ncu --kernel-name regex:xw_small --launch-skip 2 --launch-count 1 --metrics <list> \
         python bench/profile_small.py 0.5 float16 [--variant=NAME]
(bench/NOTES.md, "Session 2026-11-26: small batch", lists the metrics read.)
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu

args = [a for a in sys.argv[1:] if not a.startswith("--variant=")]
for a in sys.argv[1:]:
    if a.startswith("--variant="):  # a named small kernel (XW_SMALL_VARIANTS or XW_SMALL_DIAG)
        _matmul_gpu.small_variant = a.split("=", 1)[1]
density = float(args[0]) if args else 0.5
dtypes = args[1:] or ["float16", "float32"]
rng = np.random.default_rng(0)
mask = rng.random((384, 384)) < density
mask[np.arange(384), np.arange(384)] = True
op = BlockSparseMatMul(mask, 32)
for dtype in dtypes:
    x = cp.random.standard_normal((32, op.K), dtype=cp.float32).astype(dtype)
    w = (cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05).astype(dtype)
    for _ in range(4):
        y = op.fprop(x, w)
    cp.cuda.runtime.deviceSynchronize()
    print(dtype, "done", float(y[0, 0]))
