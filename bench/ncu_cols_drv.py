"""Three launches of one column kernel, for ncu (bench/NOTES.md).

    PYTHONPATH=. python bench/ncu_cols_drv.py KIND [DTYPE]

KIND: ln (layer norm bwd, features first), bn (batch norm bwd, features last), wn (weight norm per unit bwd).
"""

import sys

import cupy
import numpy as np

from cusparseblocks import _ops_cols, ops
from cusparseblocks._array import bfloat16


def main(kind, dname="bfloat16"):
    dt = bfloat16 if dname == "bfloat16" else np.dtype(dname)
    R, C, b = 8192, 4096, 32
    rs = cupy.random.RandomState(1)

    def arr(*shape):
        return rs.standard_normal(shape, dtype=cupy.float32).astype(dt)

    if kind == "wn":
        from bench.ln0_diag import _wn_layout

        lay, nnz = _wn_layout(R, C, b)
        w, dv, g = arr(nnz, b, b), arr(nnz, b, b), arr(lay.out_blocks * b)
        rn = ops.weight_norm_fprop(lay, w, g, per="unit")[1]
        run = lambda: ops.weight_norm_bprop(lay, dv, w, g, rn, per="unit")  # noqa: E731
    else:
        x, dy, gc = arr(R, C), arr(R, C), arr(C)
        _, mean, rstd = ops.layer_norm_fprop(x, None, None, feature_axis=0)
        if kind == "ln":
            run = lambda: _ops_cols.cols_bwd(dy, x, None, mean, rstd, 0, 1, want_sums=False, row_sums=True)  # noqa: E731
        else:
            run = lambda: _ops_cols.cols_bwd(dy, x, gc, mean, rstd, 1, 1, want_sums=True)  # noqa: E731
    for _ in range(3):
        run()
    cupy.cuda.Device().synchronize()


if __name__ == "__main__":
    main(*sys.argv[1:])
