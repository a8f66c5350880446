"""One representative fprop for Nsight Compute: N = K = M = 4096, b = 32, density 0.5, fp16.

Run: PYTHONPATH=. ncu --kernel-name regex:xw_tc --launch-skip 3 --launch-count 1 --set full \
         python bench/profile_bsmm.py
"""

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul

rng = np.random.default_rng(0)
mask = rng.random((128, 128)) < 0.5
op = BlockSparseMatMul(mask, 32)
x = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
w = (cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05).astype(cp.float16)
for _ in range(5):
    y = op.fprop(x, w)
cp.cuda.runtime.deviceSynchronize()
print("done", float(y[0, 0]))
