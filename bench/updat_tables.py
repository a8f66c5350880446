"""Update with and without the cached pointer table, in one run (bench/NOTES.md, 2026-11-25).

Run from the repository root: PYTHONPATH=. python bench/updat_tables.py
"""

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu
from cusparseblocks._timing import Table, time_ms


def main():
    rng = np.random.default_rng(0)
    table = Table(["b", "density", "cached_ms", "uncached_ms", "speedup"])
    for b in (64, 32, 16, 8):
        for d in (0.5, 0.2, 0.05) if b >= 32 else (0.2,):
            n = k = 4096
            op = BlockSparseMatMul(rng.random((k // b, k // b)) < d, b)
            sets = [tuple(cp.random.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
                          for _ in "xy") for _ in range(3)]
            res = {}
            for size in (8, 0):
                _matmul_gpu._PAIR_TABLES = size
                res[size] = time_ms(op.updat, rotate=sets)["median"]
            _matmul_gpu._PAIR_TABLES = 8
            table.add(b=b, density=d, cached_ms=res[8], uncached_ms=res[0], speedup=res[0] / res[8])
    print(table.render())


if __name__ == "__main__":
    main()
