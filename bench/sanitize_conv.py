"""A small run of the tensor-core conv fprop kernels for compute-sanitizer (memcheck, racecheck).

Run: PYTHONPATH=. compute-sanitizer --tool racecheck python bench/sanitize_conv.py
Covers conv_fprop_halo (mma.sync: the default tile) and, on an sm_90 device, the same kernel on wgmma
(128x4: one step loop, 256x4: the other), conv_fprop_ws (cp.async producers), conv_fprop_wst (TMA, 128
positions, and four consumer warpgroups of 256), conv_fprop_wss, conv_fprop_wtp (the transposed output-block
groups: 16 and 32 rows, the cp.async-fed wtpc; with edge bias the general stores, without the staged epilogue
of the default), fprop and the FLIP bprop, fp16 and bf16, b = 16 and 32, on a
ragged output (partial tiles), an empty output column, edge bias and a shuffled block-diagonal layout, with
more items than co-resident CTAs. Checks every result against the float64 reference.
"""

import sys

import cupy as cp
import numpy as np

from cusparseblocks import conv as conv_module
from cusparseblocks._array import bfloat16
from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout


def _case(rng, lay, dtype, variant, edge=True):
    conv_module.force_variant = variant
    try:
        op = BlockSparseConv(
            lay, (3, 3), padding=1, edge_bias=edge, input_spatial=(13, 19), data_format="NHWC"
        )
        x = rng.standard_normal((5, 13, 19, op.C)).astype(dtype)
        w = op.init_normal(rng, dtype=np.float32).astype(dtype)
        eb = (rng.standard_normal(op.edge_bias_shape) * 0.1).astype(dtype) if edge else None
        dy = rng.standard_normal((5, 13, 19, op.K)).astype(dtype)
        ebd = None if eb is None else cp.asarray(eb)
        y = op.fprop(cp.asarray(x), cp.asarray(w), ebd).get().astype(np.float64)
        dx = op.bprop(cp.asarray(dy), cp.asarray(w)).get().astype(np.float64)
        f = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
        yr, dxr = op.fprop(f(x), f(w), f(eb)), op.bprop(f(dy), f(w))
        return max(float(np.linalg.norm(a - r) / np.linalg.norm(r)) for a, r in ((y, yr), (dx, dxr)))
    finally:
        conv_module.force_variant = None


def main():
    rng = np.random.default_rng(0)
    variants = ["halo:256x4"]
    if conv_module._gmma_device():
        variants += ["gmma:128x4", "gmma:256x4", "ws:256", "wst:128", "wss", "wss:128", "wtp:32", "wtpc:16"]
        variants += [None]  # the default (with edge bias: wst4:256; without, b = 32: wtp:16)
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
                plain = [(v, False) for v in variants if v is None or "wtp" in v]
                for v, edge in [(v, True) for v in variants] + plain:
                    err = _case(rng, lay, dtype, v, edge)
                    worst = max(worst, err)
                    name = f"{v or 'auto'} edge={edge}"
                    print(f"b={b} {np.dtype(dtype).name} {name} rel_err={err:.2e}", flush=True)
    print(f"worst relative error {worst:.2e}")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
