"""Random geometries through BlockSparseConv's default dispatch on the GPU (needs a CUDA GPU).

test_conv.py checks chosen layouts and geometries; here each seed draws a case: a uniform layout of block
size 8 to 64 at a random density (or a non-uniform, channel-random or block-diagonal one), 1 to 3 spatial
axes, filter sizes 1 to 5, stride 1 to 3, dilation 1 or 2, symmetric, asymmetric, "same" or "valid" padding,
spatial sizes up to 40, batch 1 to 8, either data format, with or without edge bias. fprop, bprop, update
(and the edge-bias gradient) against the float64 NumPy path, outputs poisoned (test_conv._gpu_case).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_conv import _gpu_case

from cusparseblocks.conv import ChannelBlockLayout

pytestmark = pytest.mark.gpu

SEEDS = range(40)


def _case(seed):
    rng = np.random.default_rng(3000 + seed)
    kind = rng.choice(["uniform"] * 5 + ["nonuniform", "channel_random", "block_diagonal"])
    if kind == "uniform":
        b = int(rng.choice([8, 16, 32, 64]))
        cb, kb = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        mask = rng.random((cb, kb)) < float(rng.choice([1.0, 0.5, 0.25]))
        mask[rng.integers(cb), rng.integers(kb)] = True
        lay = ChannelBlockLayout.from_mask(mask, b)
    elif kind == "nonuniform":
        lay = ChannelBlockLayout([((0, 5), (0, 7)), ([1, 6, 7], (3, 11)), ((5, 13), [10, 2, 12])], 13, 13)
    elif kind == "channel_random":
        lay = ChannelBlockLayout.channel_random(int(rng.integers(4, 40)), int(rng.integers(4, 40)), 0.3,
                                                seed=int(rng.integers(1 << 30)))
    else:
        lay = ChannelBlockLayout.block_diagonal(64, 4, shuffle=bool(rng.integers(2)), block_size=16)
    dims = int(rng.choice([1, 2, 2, 2, 3]))
    fshape = tuple(int(v) for v in rng.integers(1, 6 if dims < 3 else 4, size=dims))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=dims))
    dilation = tuple(int(v) for v in rng.integers(1, 3, size=dims))
    mode = rng.choice(["int", "asym", "same", "valid"])
    if mode == "int":
        padding = int(rng.integers(0, 3))
    elif mode == "asym":
        padding = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(dims))
    else:
        padding = str(mode)
    top = {1: 40, 2: 24, 3: 9}[dims]
    span = [d * (f - 1) + 1 for f, d in zip(fshape, dilation)]  # the dilated filter fits ("valid")
    spatial = tuple(int(rng.integers(s, max(s, top) + 1)) for s in span)
    n = int(rng.integers(1, 9))
    dtype = str(rng.choice(["float16", "bfloat16", "float32"]))
    fmt = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}[dims][int(rng.integers(2))]
    edge_bias = bool(rng.integers(2)) and mode != "valid"
    return rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, edge_bias, n


@pytest.mark.parametrize("seed", SEEDS)
def test_random_conv_default_dispatch(seed):
    rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, edge_bias, n = _case(seed)
    _gpu_case(rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, edge_bias=edge_bias, n=n)
