"""The fp32 FFMA kernels for Nsight Compute: N = K = M = 4096, b = 32, one op at one density.

Run: PYTHONPATH=. ncu --kernel-name regex:"xw_ffma|updat_ffma" --launch-skip 2 --launch-count 1 \\
         --metrics <list> python bench/profile_ffma.py [fprop|bprop|updat] [density]
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul

op_name = sys.argv[1] if len(sys.argv) > 1 else "fprop"
density = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
rng = np.random.default_rng(0)
mask = rng.random((128, 128)) < density
op = BlockSparseMatMul(mask, 32)
x = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
dy = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
w = cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05
for _ in range(4):
    out = op.fprop(x, w) if op_name == "fprop" else op.bprop(dy, w) if op_name == "bprop" else op.updat(x, dy)
cp.cuda.runtime.deviceSynchronize()
print(op_name, density, "done", float(out.ravel()[0]))
