"""The b = 64 / 16 / 8 fp16 update kernels for compute-sanitizer: every updat_gmma (b = 64, PW > 1 included)
and updat_gmma_stack tile (sm_90), updat_tc (gmma_enabled False) and every updat_tile_tc tile (b = 16),
N = 152, 700 and 3000 (a split update, finished in the launch), a layout with an empty block row and rows
longer than a group; checks every result against float64.

Run: PYTHONPATH=. compute-sanitizer --tool memcheck python bench/sanitize_updat.py   (or --tool racecheck)
"""

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu
from cusparseblocks.reference import matmul as ref


def main():
    rng = np.random.default_rng(2)
    worst = 0.0
    for b in (64, 16, 8):
        mask = rng.random((6, 40)) < 0.4
        mask[0, :20] = True
        mask[2, :] = False
        op = BlockSparseMatMul(mask, b)
        kernels = [("tc", None), *((None, v) for v in _matmul_gpu.UPDAT_GMMA_TILES[b]),
                   *(("tile", v) for v in _matmul_gpu.UPDAT_TILE_TILES.get(b, {}))]
        for n in (152, 700, 3000):
            x = rng.standard_normal((n, op.K)).astype(np.float16)
            dy = rng.standard_normal((n, op.M)).astype(np.float16)
            dw_ref = ref.bsmm_updat(op.layout, [x.astype(np.float64)], [dy.astype(np.float64)], b)
            for kind, variant in kernels:
                _matmul_gpu.gmma_enabled = kind != "tc"
                _matmul_gpu.updat_gmma_variant = variant if kind is None else None
                _matmul_gpu.updat_tile_variant = variant if kind == "tile" else None
                try:
                    dw = op.updat(cp.asarray(x), cp.asarray(dy)).get().astype(np.float64)
                finally:
                    _matmul_gpu.gmma_enabled, _matmul_gpu.updat_gmma_variant = True, None
                    _matmul_gpu.updat_tile_variant = None
                err = float(np.linalg.norm(dw - dw_ref) / np.linalg.norm(dw_ref))
                worst = max(worst, err)
                print(f"b={b} n={n} {variant or 'updat_tc'}: rel err {err:.2e}")
    cp.cuda.runtime.deviceSynchronize()
    print(f"sanitize_updat: worst relative error {worst:.2e}")
    assert worst < 2e-2


if __name__ == "__main__":
    main()
