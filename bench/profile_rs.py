"""xw_gmma / xw_gmma_rs fprop launches for Nsight Compute: one launch per named variant (N = K = M = 4096).

Run: PYTHONPATH=. ncu --kernel-name regex:"xw_gmma" --section SpeedOfLight --section WarpStateStats \
         --section Occupancy python bench/profile_rs.py B DENSITY VARIANT [VARIANT ...]
(a variant of XW_GMMA_TILES, XW_GMMA_RS_TILES or XW_TMA_TILES, with "/seq" appended: its columns in index
order instead of grouped by shared blocks; launches in the order given).
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu

b, d = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(int(b * 1000 * d))
mask = rng.random((4096 // b, 4096 // b)) < d
mask[0, 0] = True
op = BlockSparseMatMul(mask, b)
x = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
w = (cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05).astype(cp.float16)
for variant in sys.argv[3:]:
    _matmul_gpu.force_variant = variant.removesuffix("/seq")
    _matmul_gpu.group_columns = not variant.endswith("/seq")
    y = op.fprop(x, w)
_matmul_gpu.force_variant = None
_matmul_gpu.group_columns = True
cp.cuda.runtime.deviceSynchronize()
print("done", float(y[0, 0]))
