"""The fp16 update at b = 16 and 8 for Nsight Compute: N = K = M = 4096, density 0.2, one call per case of
SUITE, the suite run twice (the first pass compiles and builds the tables).

Run: PYTHONPATH=. ncu -k regex:updat --launch-skip 5 --launch-count 5 --csv --page raw --metrics ... \
         python bench/profile_updat.py > RAW.csv; python bench/ncu_table.py RAW.csv  (labels: SUITE's)
"""

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu

# (block size, density, kernel: "tc" = updat_tc (gmma_enabled False), "tile:V" = updat_tile_tc variant V, else
# an UPDAT_GMMA_TILES variant)
SUITE = [(16, 0.2, "tc"), (16, 0.2, "q2"), (16, 0.2, "tile:tile16"), (8, 0.2, "tc"), (8, 0.2, "o2")]
LABELS = [f"b={b} d={d} {k}" for b, d, k in SUITE]


def case(b, density, kernel, x, dy):
    rng = np.random.default_rng(0)
    op = BlockSparseMatMul(rng.random((4096 // b, 4096 // b)) < density, b)
    tile = kernel.startswith("tile:")
    _matmul_gpu.gmma_enabled = kernel != "tc" and not tile
    _matmul_gpu.updat_gmma_variant = None if kernel == "tc" or tile else kernel
    _matmul_gpu.updat_tile_variant = kernel[5:] if tile else None
    try:
        return op.updat(x, dy)
    finally:
        _matmul_gpu.gmma_enabled = True
        _matmul_gpu.updat_gmma_variant = _matmul_gpu.updat_tile_variant = None


if __name__ == "__main__":
    x = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
    dy = cp.random.standard_normal((4096, 4096), dtype=cp.float32).astype(cp.float16)
    for _ in range(2):
        for b, density, kernel in SUITE:
            dw = case(b, density, kernel, x, dy)
            cp.cuda.runtime.deviceSynchronize()
            print("case", b, density, kernel, float(dw[0, 0, 0]))
