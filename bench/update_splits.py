"""The wgmma update's batch splits: op.updat timed at each UPDATE_CTAS_PER_SM, for b = 64, 32, 16 and 8, fp16,
N = K = M = 4096, against dense cuBLAS xᵀ·dy of the same run (per setting: µs back to back / µs of CUDA-graph
replays, inputs rotated past L2; × dense from the graph time).

Run: PYTHONPATH=. python bench/update_splits.py
"""

import cupy as cp
import numpy as np

from cusparseblocks import BlockSparseMatMul, _matmul_gpu
from cusparseblocks._timing import time_ms


def main():
    rs = cp.random.RandomState(0)
    n = k = 4096
    sets = [(rs.standard_normal((n, k), dtype=cp.float32).astype(cp.float16),
             rs.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)) for _ in range(3)]
    dense = time_ms(lambda a, g: cp.matmul(a.T, g), rotate=sets)["median"]
    print("dense ms", dense)
    for b in (64, 32, 16, 8):
        for d in (0.5, 0.2, 0.1, 0.05):
            rng = np.random.default_rng(int(b * 1000 * d))
            mask = rng.random((k // b, k // b)) < d
            mask[0, 0] = True
            op = BlockSparseMatMul(mask, b)
            ratio = op.layout.nnz * b * b / (k * k)  # flops against dense
            outs = [cp.empty(op.w_shape, dtype=cp.float16) for _ in sets]
            row = []
            for per_sm in (1, 2, 3, 4, 8):
                _matmul_gpu.UPDATE_CTAS_PER_SM = per_sm
                t = time_ms(op.updat, rotate=sets)["median"]
                try:  # GPU time alone (the split partials come from the memory pool, warmed up first)
                    args = [(*s, o) for s, o in zip(sets, outs)]
                    fn = lambda a, g, o, op=op: op.updat(a, g, out=o)  # noqa: E731
                    tg = time_ms(fn, rotate=args, graph=True)["median"]
                except Exception as exc:  # noqa: BLE001 - report and go on
                    tg = float("nan")
                    print("graph:", type(exc).__name__, str(exc)[:100])
                row.append(f"{per_sm}:{t * 1e3:.0f}/{tg * 1e3:.0f}us/{ratio * dense / tg:.3f}")
            print(f"b{b} d{d}", " ".join(row), flush=True)
    _matmul_gpu.UPDATE_CTAS_PER_SM = 4


if __name__ == "__main__":
    main()
