"""A small run of the tensor-core conv fprop kernels for compute-sanitizer (memcheck, racecheck).

Run: PYTHONPATH=. compute-sanitizer --tool racecheck python bench/sanitize_conv.py
Covers conv_fprop_halo (mma.sync: the default tile) and, on an sm_90 device, the same kernel on wgmma
(128x4: one step loop, 256x4: the other), conv_fprop_ws (cp.async producers), conv_fprop_wst (TMA, 128
positions, and the default: four consumer warpgroups of 256), fprop and the FLIP
bprop, fp16 and bf16, b = 16 and 32, on a
ragged output (partial tiles), an empty output column, edge bias and a shuffled block-diagonal layout, with
more items than co-resident CTAs. Checks every result against the float64 reference.
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import conv as conv_module
from cusparseblocks._array import bfloat16
from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout


def _case(rng, lay, dtype, variant):
    conv_module.force_variant = variant
    try:
        op = BlockSparseConv(
            lay, (3, 3), padding=1, edge_bias=True, input_spatial=(13, 19), data_format="NHWC"
        )
        x = rng.standard_normal((5, 13, 19, op.C)).astype(dtype)
        w = op.init_normal(rng, dtype=np.float32).astype(dtype)
        eb = (rng.standard_normal(op.edge_bias_shape) * 0.1).astype(dtype)
        dy = rng.standard_normal((5, 13, 19, op.K)).astype(dtype)
        y = op.fprop(cp.asarray(x), cp.asarray(w), cp.asarray(eb)).get().astype(np.float64)
        dx = op.bprop(cp.asarray(dy), cp.asarray(w)).get().astype(np.float64)
        f = lambda a: a.astype(np.float64)  # noqa: E731
        yr, dxr = op.fprop(f(x), f(w), f(eb)), op.bprop(f(dy), f(w))
        return max(float(np.linalg.norm(a - r) / np.linalg.norm(r)) for a, r in ((y, yr), (dx, dxr)))
    finally:
        conv_module.force_variant = None


def main():
    rng = np.random.default_rng(0)
    variants = ["halo:256x4"]
    if conv_module._gmma_device():
        variants += ["gmma:128x4", "gmma:256x4", "ws:256", "wst:128", "wss", "wss:128"]
        variants += [None]  # the default (wst4:256)
    worst = 0.0
    for b in (16, 32):
        mask = rng.random((4, 3)) < 0.5
        mask[:, 1] = False
        mask[0, 0] = mask[1, 2] = True
        layouts = [
            ChannelBlockLayout.from_mask(mask, b),
            ChannelBlockLayout.block_diagonal(3 * b, 3, shuffle=True, block_size=b),
        ]
        for lay in layouts:
            for dtype in (np.float16, bfloat16):
                for v in variants:
                    err = _case(rng, lay, dtype, v)
                    worst = max(worst, err)
                    print(f"b={b} {np.dtype(dtype).name} {v or 'auto'} rel_err={err:.2e}", flush=True)
    print(f"worst relative error {worst:.2e}")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
