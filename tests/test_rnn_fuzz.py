"""Random sizes through SparseRNN's default path on the GPU (needs a CUDA GPU).

test_rnn.py forces each kernel and exchange on chosen sizes; here each seed draws hidden size (ragged, up to
3000), batch (1 to 32), steps (1 to 40), density, mode, dtype and a CSR or block layout, and runs
forward(path="auto") into a poisoned out= against the float64 recurrence (test_rnn.reference).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poison
from test_rnn import MODES, check_gpu, make_inputs, make_model

pytestmark = pytest.mark.gpu

SEEDS = range(32)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_rnn_default_path(seed):
    import cupy

    rng = np.random.default_rng(4000 + seed)
    mode = str(rng.choice(MODES))
    kind = str(rng.choice(["csr", "block"]))
    dtype = str(rng.choice(["float16", "float32"]))
    H = int(rng.choice([9, 64, 100, 333, 777, 1024, 2304, 3001]))
    if kind == "block":
        H = -(-H // 8) * 8
    B = int(rng.choice([1, 2, 3, 4, 8, 13, 16, 32]))
    T = int(rng.integers(1, 41))
    density = float(rng.choice([0.05, 0.1, 0.2, 0.3, 0.5]))
    model = make_model(rng, H, mode, kind, density=density)
    u, h0, c0 = make_inputs(rng, model, T, B, dtype)
    out = poison(cupy, (T, B, H), dtype)
    y = check_gpu(model, u, h0, c0, dtype, out=out)
    assert y is out
