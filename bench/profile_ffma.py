"""The fp32 FFMA kernels for Nsight Compute: N = K = M = 4096, b = 32.

One case:  python bench/profile_ffma.py [fprop|bprop|updat] [density] [variant]
           (four calls; profile the third: ncu -k regex:"xw_ffma|updat_ffma" --launch-skip 2 --launch-count 1)
The suite: python bench/profile_ffma.py suite
           (one call per case of SUITE, in order, after all are compiled: profile with
           ncu -k regex:"xw_ffma|updat_ffma" --launch-count len(SUITE); bench/ncu_table.py labels the rows)
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu

# (op, density, variant: force_variant for fprop/bprop, updat_ffma_variant for updat; None: the default)
SUITE = [("fprop", 0.5, None), ("fprop", 0.1, "ffma_lpt"), ("updat", 0.5, "g8r2"),
         ("updat", 0.5, "g8r2_static"), ("updat", 0.1, "g8r2"), ("updat", 0.1, "g8r2_static")]


def case(op_name, density, variant, calls):
    rng = np.random.default_rng(0)
    mask = rng.random((128, 128)) < density
    op = BlockSparseMatMul(mask, 32)
    x = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
    dy = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
    w = cp.random.standard_normal(op.w_shape, dtype=cp.float32) * 0.05
    if op_name == "updat":
        _matmul_gpu.updat_ffma_variant = variant
    else:
        _matmul_gpu.force_variant = variant
    try:
        for _ in range(calls):
            if op_name == "updat":
                out = op.updat(x, dy)
            else:
                out = op.fprop(x, w) if op_name == "fprop" else op.bprop(dy, w)
    finally:
        _matmul_gpu.updat_ffma_variant = _matmul_gpu.force_variant = None
    cp.cuda.runtime.deviceSynchronize()
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["suite"]:
        from cusparseblocks import compiler

        for op_name, _, variant in SUITE:  # compile first: nothing but the cases' kernels runs between
            if op_name == "updat":
                compiler.get_function(_matmul_gpu.updat_ffma_spec(32, variant, 1),
                                      _matmul_gpu.updat_ffma_smem(32, variant))
        for op_name, density, variant in SUITE:
            out = case(op_name, density, variant, 1)
            print("case", op_name, density, variant, float(out.ravel()[0]))
    else:
        op_name = sys.argv[1] if len(sys.argv) > 1 else "fprop"
        density = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
        variant = sys.argv[3] if len(sys.argv) > 3 else None
        out = case(op_name, density, variant, 4)
        print(op_name, density, variant, "done", float(out.ravel()[0]))
