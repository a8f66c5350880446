"""One xw_gmma fprop and one updat_gmma update (N = K = M = 4096, b = 64, d = 0.5, fp16) for Nsight Compute.

Run: PYTHONPATH=. ncu --kernel-name regex:"gmma" --launch-skip 2 --launch-count 2 --section SpeedOfLight \
         --section WarpStateStats --section Occupancy python bench/profile_gmma.py [update variant]
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu

_matmul_gpu.updat_gmma_variant = sys.argv[1] if len(sys.argv) > 1 else None
rng = np.random.default_rng(0)
op = BlockSparseMatMul(rng.random((64, 64)) < 0.5, 64)
x = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
dy = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
w = (cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05).astype(cp.float16)
for _ in range(3):
    y = op.fprop(x, w)
    dw = op.updat(x, dy)
cp.cuda.runtime.deviceSynchronize()
print("done", float(y[0, 0]), float(dw[0, 0, 0]))
