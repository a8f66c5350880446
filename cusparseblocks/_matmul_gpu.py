"""GPU dispatch for BlockSparseMatMul: kernel choice, tile tables, device lookup tables, launches.

Kernels are in ``kernels/bsmm.cu``. fp16/bf16 run the tensor-core kernels (``xw_tc``, ``updat_tc``);
float32 runs FFMA: the register-blocked ``xw_ffma``/``updat_ffma`` on 16-byte aligned data, else
``xw_simt``/``updat_simt``. The SIMT kernels take any alignment, so a pointer that is not 16-byte aligned
(an offset view) falls back to them rather than failing.
"""

from __future__ import annotations

import itertools

import numpy as np

from . import _dense_route, _matmul_tf32, _tma, compiler
from ._array import dtype_name
from .compiler import KernelSpec

SOURCE = "bsmm.cu"
_CTYPE = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}

# Tile tables. xw_tc: block_size -> {variant: (BM, WARPS_M, WARPS_N, STAGES, EPS)}, EPS = nonzero blocks
# per pipeline stage (one barrier per EPS·b of k; EPS > 1 measured slower, bench/NOTES.md); "small"
# serves N ≤ 64,
# "large" N ≥ LARGE_N (an x tile of BM rows is read once per nonzero block, so a taller tile reads w
# fewer times), "medium" the rest; "medium_lean" (fewer stages, more CTAs per SM) is timed against them.
XW_TC_TILES = {
    64: {"large": (128, 4, 2, 4, 1), "medium": (128, 2, 2, 3, 1), "small": (32, 1, 4, 4, 1),
         "medium_lean": (128, 2, 2, 2, 1)},
    32: {"large": (256, 8, 1, 4, 1), "medium": (128, 4, 1, 4, 1), "small": (32, 1, 4, 6, 1),
         "medium_lean": (128, 4, 1, 3, 1)},
    16: {"large": (256, 8, 1, 6, 1), "medium": (128, 4, 1, 6, 1), "small": (32, 1, 2, 8, 1),
         "medium_lean": (128, 4, 1, 4, 1)},
    8: {"large": (256, 8, 1, 8, 1), "medium": (128, 4, 1, 8, 1), "small": (32, 1, 1, 8, 1),
        "medium_lean": (128, 4, 1, 6, 1)},
}
# xw_wide_tc (small blocks, N > SMALL_N, aligned): block_size -> {variant: (R reduction blocks per entry,
# C block columns per CTA, BM, WARPS_M, WARPS_N, STAGES, EPS entries per stage)}; the first entry is the
# default. R·b = 64 features make each x row a full 128-byte line (R = 1, the first version, measured
# 8 % faster than xw_tc at b = 8 and slower at b = 16: bench/NOTES.md).
XW_WIDE_TILES = {
    16: {"wide": (4, 8, 128, 4, 2, 2, 1)},  # tiles with 2 columns per warp spill (stack frame): not kept
    8: {"wide": (8, 16, 128, 4, 2, 3, 1), "wide_c8": (8, 8, 128, 4, 2, 3, 1)},
}
# block sizes whose default (N > SMALL_N, aligned) is xw_wide_tc
XW_WIDE_DEFAULT = (8, 16)
# xw_gmma (kernels/bsmm_gmma.cu: wgmma, sm_90a; fp16/bf16, feature axis 1, x/w/y 16-byte aligned,
# N > SMALL_N): block_size -> {variant: (WG warpgroups, MI m64 tiles per warpgroup, STAGES)}, BM = WG·MI·64;
# the first entry is the default. Devices of compute capability 9.0 only (GMMA_ARCH).
XW_GMMA_TILES = {
    64: {"gmma": (2, 1, 4), "gmma_tall": (2, 2, 4), "gmma_wg4": (4, 1, 3)},
    32: {"gmma": (2, 1, 4), "gmma_tall": (2, 2, 6), "gmma_deep": (2, 1, 8)},
}
# xw_gmma_rs (kernels/bsmm_gmma_rs.cu: wgmma with the x tile in registers, sm_90a; fp16/bf16, feature axis 1,
# x/w/y 16-byte aligned, N > SMALL_N): groups of C output block columns per CTA, 128 rows, two warpgroups;
# block_size -> {variant: (C, STAGES, MINB CTAs per SM the registers are budgeted for, ALL: 1 = issue every
# column's wgmmas on zero-filled absent blocks instead of branching per column, EPS records per stage, R
# reduction blocks per record: x-tile rows of R·b features)}.
# ALL tiles are never a default: a non-finite x value would reach the columns whose block is absent as 0·inf.
XW_GMMA_RS_TILES = {
    64: {"rs_c2": (2, 3, 1, 0, 1, 1)},
    32: {"rs_c4": (4, 4, 2, 0, 1, 1), "rs_c4_e2": (4, 3, 2, 0, 2, 1), "rs_c8": (8, 4, 1, 0, 1, 1),
         "rs_c4_all": (4, 4, 2, 1, 1, 1), "rs_c2_r2": (2, 4, 2, 0, 1, 2)},
    16: {"rs_c8": (8, 4, 2, 0, 1, 1), "rs_c8_e2": (8, 4, 2, 0, 2, 1), "rs_c8_e3": (8, 4, 2, 0, 3, 1),
         "rs_c8_e4": (8, 3, 2, 0, 4, 1), "rs_c16_e2": (16, 4, 1, 0, 2, 1), "rs_c8_all_e2": (8, 4, 2, 1, 2, 1),
         "rs_c8_r2": (8, 4, 2, 0, 1, 2)},
}
# block_size -> ((minimum layout density, xw_gmma_rs variant), ...): the default is the first entry whose
# density the layout reaches; none: xw_gmma (b = 32) / xw_wide_tc (b = 16). H100, N = K = M = 4096, fp16,
# TFLOP/s (bench/results/bsmm_gmma-20261126-0758): b = 16 rs_c8_e2 160 / 85 / 47 at d = 0.5 / 0.2 / 0.05
# against xw_wide_tc's 109 / 56 / 21 (rs_c16_e2 164 / 75 / 31); b = 32 (-0747) rs_c4_e2 242 against xw_gmma's
# 200 at d = 0.5, 167 against 185 at d = 0.2 (b = 32 and 64 now default to xw_tma: XW_TMA_DEFAULT).
XW_GMMA_RS_DEFAULT: dict[int, tuple[tuple[float, str], ...]] = {
    16: ((0.0, "rs_c8_e2"),),
}


def _by_density(table, bs, density):
    """The variant of the first (minimum density, variant) entry of table[bs] that the density reaches, or
    None."""
    return next((variant for least, variant in table.get(bs, ()) if density >= least), None)


def xw_gmma_rs_default(bs, density):
    """The default xw_gmma_rs variant for this block size and layout density, or None."""
    return _by_density(XW_GMMA_RS_DEFAULT, bs, density)


# xw_tma (kernels/bsmm_tma.cu: wgmma fed by TMA from a producer warp, sm_90a; fp16/bf16, feature axis 1,
# x/w/y 16-byte aligned, N > SMALL_N, N < 2^31): block_size -> {variant: (C output block columns a CTA (the
# x tile shared by the group's present blocks), CL: clusters of CL CTAs of one column each that multicast
# the x tile (C = 1), MI m64 tiles per consumer warpgroup (BM = 128·MI), STAGES, MINB CTAs per SM the
# registers are budgeted for, RM: clusters of RM row tiles of one column that multicast the w blocks (C = CL
# = 1), PERS: a persistent grid, tiles dealt round-robin (CL = RM = 1), RS: the x tile in registers
# (ldmatrix once a record, one register-A wgmma per present column; each group drained before the next
# stage's fragments load) instead of read from shared memory by every column's wgmma)}.
# 384 threads: at MINB <= 2 the producer warpgroup's registers go to the consumers (MINB = 2: 104 a thread).
# An optional 9th field TT = 1 (BM = 256; b = 64, C = 2 or b = 32, C = 4): the transposed tile, warpgroup j
# computing columns j (b = 64) or 2j, 2j + 1 (b = 32: its m64 is the two blocks, an absent one copied as
# zeros) as D[64 × 256] = op(w)ᵀ · xᵀ with m64n256k16 wgmmas (less shared memory read per flop). An optional
# 10th field NP (after TT): producer warps issuing the stages in turn (STAGES % NP == 0; default 1).
XW_TMA_TILES = {
    64: {"tma_g2_m2": (2, 1, 2, 4, 1, 1, 0, 0), "tma_m2_s2": (1, 1, 2, 2, 2, 1, 0, 0),
         "tma_p": (1, 1, 1, 4, 2, 1, 1, 0), "tma": (1, 1, 1, 4, 2, 1, 0, 0),
         "tma_m2": (1, 1, 2, 4, 1, 1, 0, 0),
         "tma_m2_s2_p": (1, 1, 2, 2, 2, 1, 1, 0), "tma_c2": (1, 2, 1, 4, 2, 1, 0, 0),
         "tma_r2_m2_s2": (1, 1, 2, 2, 2, 2, 0, 0), "tma_rs2": (2, 1, 1, 4, 1, 1, 0, 1),
         "tma_g2_m2_p": (2, 1, 2, 4, 1, 1, 1, 0),
         "tma_g3_s3": (3, 1, 1, 3, 1, 1, 0, 0),
         "tma_t2_m2": (2, 1, 2, 4, 1, 1, 0, 0, 1), "tma_t2_m2_p": (2, 1, 2, 4, 1, 1, 1, 0, 1)},
    32: {"tma_m2": (1, 1, 2, 4, 2, 1, 0, 0), "tma_s4": (1, 1, 1, 4, 2, 1, 0, 0),
         "tma_g4": (4, 1, 1, 4, 2, 1, 0, 0),
         "tma_g4_m2": (4, 1, 2, 6, 1, 1, 0, 0), "tma_rs4": (4, 1, 1, 6, 2, 1, 0, 1),
         "tma_rs4_m2": (4, 1, 2, 4, 1, 1, 0, 1), "tma_rs4_p": (4, 1, 1, 6, 2, 1, 1, 1),
         "tma_c4": (1, 4, 1, 6, 2, 1, 0, 0), "tma_g2_m2": (2, 1, 2, 4, 2, 1, 0, 0),
         "tma_t4_m2_s8": (4, 1, 2, 8, 1, 1, 0, 0, 1), "tma_t4_m2_s8_np2": (4, 1, 2, 8, 1, 1, 0, 0, 1, 2)},
    16: {"tma_rs8": (8, 1, 1, 8, 2, 1, 0, 1), "tma_rs8_m2": (8, 1, 2, 8, 1, 1, 0, 1),
         "tma_rs8_p": (8, 1, 1, 8, 2, 1, 1, 1), "tma_g8": (8, 1, 1, 8, 2, 1, 0, 0),
         "tma_c8": (1, 8, 1, 8, 2, 1, 0, 0)},
}
# block_size -> ((minimum layout density, xw_tma variant or None), ...): the first entry whose density the
# layout reaches names the default (None: not xw_tma); checked before XW_GMMA_RS_DEFAULT. H100, N = K = M =
# 4096, fp16 fprop TFLOP/s at d = 0.5 / 0.2 / 0.1 / 0.05 (bench/results/bsmm_gmma-20261126-1028): b = 64
# tma_g2_m2 394 / 298 / 218 / 139, tma_m2_s2 381 / 311 / 243 / 167, tma_p 323 / 290 / 238 / 174 against
# xw_gmma's 328 / 242 / 211 / 158; b = 32 tma_m2 220 / 195 / 165 / 116 against xw_gmma 200 / 185 / 160 / 115
# and rs_c4_e2 252 at 0.5 (tma_rs4_m2 258); b = 16: the cp.async column groups stay (rs_c8_e2 162 / 86
# against tma_rs8_m2 95 / 58).
# Clusters (tma_c*, tma_r*) were slower everywhere (b = 64 d = 0.5 tma_c2 280 against tma 334). The
# persistent two-column tile (-1114): b = 64 d = 0.5 tma_g2_m2_p 407 against tma_g2_m2 392, tma_m2_s2 386;
# b = 32 two columns at 256 rows: tma_g2_m2 255 / 259 against rs_c4_e2 250 / 246 at d = 0.5 (-1114 / -1120).
# With the columns grouped by shared blocks (column_order; bench/results/bsmm_gmma-20261126-1358, grouped
# against index order in the same run): b = 64 d = 0.5 tma_g2_m2 421 / 390, tma_g2_m2_p 410 / 401; b = 32
# tma_g2_m2 264 / 218 / 177 / 123 at d = 0.5 / 0.2 / 0.1 / 0.05 against tma_m2's 215 / 191 / 159 / 111. The
# transposed b = 64 tile (-1405, -1408): tma_t2_m2 486 / 362 / 285 / 192 fprop against tma_g2_m2's 429 / 308 /
# 233 / 143 and tma_m2_s2's 385 / 316 / 241 / 161.
# The transposed b = 32 tile (bench/results/bsmm_gmma-20261126-2247, with the producer warp reading its
# records a batch at a time): tma_t4_m2_s8 298 / 265 / 214 / 171 / 119 at d = 0.5 / 0.35 / 0.2 / 0.1 / 0.05
# against tma_g2_m2's 273 / 250 / 218 / 175 / 118; with 4 or 6 stages or a persistent grid (tma_t4_m2_s4,
# tma_t4_m2, tma_t4_m2_p: removed) it was slower at every density (-2247, -2255). With two producer warps
# (bench/results/bsmm_gmma-20261127-0332: one warp issuing ~190 instructions a record was what the consumers
# waited for): tma_t4_m2_s8_np2 fprop 336 / 283 / 229 / 184 / 126 at d = 0.5 / 0.35 / 0.2 / 0.1 / 0.05 against
# tma_t4_m2_s8's 315 / 257 / 202 / 170 / 119 and tma_g2_m2's 274 / 250 / 217 / 175 / 122 (bprop alike); four
# producer warps equal to two, two slower for tma_g2_m2 (b = 32 and 64) and b = 64 tma_t2_m2 (500 -> 467 at
# d = 0.5: removed).
XW_TMA_DEFAULT: dict[int, tuple[tuple[float, str | None], ...]] = {
    64: ((0.0, "tma_t2_m2"),),
    32: ((0.0, "tma_t4_m2_s8_np2"),),
}


def xw_tma_default(bs, density):
    """The default xw_tma variant for this block size and layout density, or None."""
    return _by_density(XW_TMA_DEFAULT, bs, density)


# updat_gmma (b = 64) / updat_gmma32 (b = 32; warpgroups stack pairs of blocks) / updat_gmma_stack (b = 16,
# 8; warpgroups stack 4 or 8 blocks), feature axis 1, aligned pairs: block_size -> {variant: (G warpgroups,
# NC batch rows per chunk, STAGES)}; a CTA takes G·max(1, 64 / b) blocks of one row; the first entry is the
# default
# (H100, N = K = M = 4096, b = 64, d = 0.5: g2 296, g4 242, g2_deep 245, g2_nc128 183 TFLOP/s; updat_tc 130;
# b = 16 fp16 d = 0.5 / 0.2 / 0.05, bench/results/bsmm_gmma-20261126-0757: q2_nc128 71 / 56 / 40, q2 64 / 50 /
# 38, q1 56 / 48 / 38; updat_tc 42 / 40 / 32, with its aligned tiles 46 / 47 / 35)
UPDAT_GMMA_TILES = {
    64: {"g2": (2, 64, 4), "g4": (4, 64, 4), "g2_nc128": (2, 128, 3), "g2_deep": (2, 64, 6),
         "g2p2": (2, 64, 4, 2), "g4p2_nc32": (4, 32, 4, 2), "g2p2_nc32": (2, 32, 6, 2)},
    32: {"p2": (2, 64, 4), "p2_deep": (2, 64, 6), "p2_nc128": (2, 128, 3)},
    16: {"q2_nc128": (2, 128, 3), "q2": (2, 64, 4), "q1": (1, 64, 4)},
    8: {"o2": (2, 64, 4), "o1": (1, 64, 4)},
}
# block_size -> the least layout density at which the default update takes the wgmma kernel (below: updat_tc).
# b = 8 (same runs): o2 18 / 14 / 13 / 11 TFLOP/s at d = 0.5 / 0.2 / 0.1 / 0.05, updat_tc 14 / 13 / 13 / 12
UPDAT_GMMA_MIN_DENSITY = {8: 0.15}
# block_size -> ((minimum layout density, updat_gmma variant), ...): the default tile (else the first of
# UPDAT_GMMA_TILES). b = 64 (H100, bench/results/bsmm_gmma-20261126-1450 / -1451, with the batch split only
# below one CTA an SM; fp16 TFLOP/s at d = 0.5 / 0.35 / 0.2 / 0.15 / 0.1 / 0.05): g2p2 333 / 305 / 260 / 217 /
# 250 / 103 against g2 288 / 268 / 218 / 220 / 224 / 130 (g4p2_nc32 280 / 305 / 269 / 227 / 158 / 82).
# Tiles of 4 blocks at 64-row chunks (g4p2, and g4p4 with PW = 4), 8 blocks (g8p4) and g2p2 with 6 stages
# were slower at every density in the same runs and were removed (bench/NOTES.md).
UPDAT_GMMA_DEFAULT: dict[int, tuple[tuple[float, str], ...]] = {64: ((0.075, "g2p2"),)}
updat_gmma_variant = None  # benchmarks: another entry of UPDAT_GMMA_TILES
GMMA_ARCH = "sm_90"
gmma_enabled = True  # False: the mma.sync kernels everywhere (benchmarks compare both)
# xw_simt: block_size -> (BM, TM, TN); threads = (BM/TM)·(BS/TN)
XW_SIMT_TILES = {64: (64, 8, 4), 32: (128, 8, 4), 16: (256, 8, 4), 8: (512, 8, 4)}
# N ≤ SMALL_N: 32-row tiles, 256 threads (the weights stream through more CTAs, no idle rows)
XW_SIMT_SMALL = {64: (32, 2, 4), 32: (32, 2, 2), 16: (32, 2, 1), 8: (32, 1, 1)}
# xw_ffma (float32, x and w 16-byte aligned, axis 0: N % 4 == 0, N > SMALL_N): block_size -> {variant:
# (WARPS, STAGES, KG k per fragment load, MINB CTAs per SM the registers allow, TPC row tiles per CTA,
# LPT, UNR)}; BM = WARPS·2048 / b rows; the first entry is the default. A thread owns 8 × 8 outputs with
# 16-byte fragment loads (bench/NOTES.md, fp32 FFMA sessions). TPC = 2: a CTA runs two row tiles of its
# column in one pipeline (the second tile's first loads overlap the first tile's epilogue). LPT = 1: within
# each row tile the CTAs take the output columns longest list first (the layout's cols/rows_longest_first),
# so the last CTAs to start are the short ones; 0: column order. UNR: k groups of KG per iteration of the
# block's k loop (0: all b/KG, the loop unrolled whole: ~38 KB of code per stage at b = 32, more than the
# instruction cache keeps). "ffma_o3" (3 CTAs per SM by its launch bounds) takes UNR = 4: whole-unrolled under
# the 168-register cap its bprop spilled once the column order table took a register.
XW_FFMA_TILES = {
    32: {"ffma_lpt": (4, 2, 4, 2, 1, 1, 0), "ffma": (4, 2, 4, 2, 1, 0, 0), "ffma_u2": (4, 2, 4, 2, 1, 0, 2),
         "ffma_u4": (4, 2, 4, 2, 1, 0, 4), "ffma_lpt_u4": (4, 2, 4, 2, 1, 1, 4),
         "ffma_t2": (4, 2, 4, 2, 2, 0, 0), "ffma_o3": (4, 2, 4, 3, 1, 0, 4),
         "ffma_kg2": (4, 2, 2, 2, 1, 0, 0), "ffma_s3": (4, 3, 4, 2, 1, 0, 0),
         "ffma_w2": (2, 2, 4, 2, 1, 0, 0)},
    64: {"ffma_u2": (4, 2, 4, 2, 1, 0, 2), "ffma_lpt_u2": (4, 2, 4, 2, 1, 1, 2),
         "ffma_lpt": (4, 2, 4, 2, 1, 1, 0), "ffma": (4, 2, 4, 2, 1, 0, 0), "ffma_kg2": (4, 2, 2, 2, 1, 0, 0),
         "ffma_t2": (4, 2, 4, 2, 2, 0, 0)},
}
# updat_ffma (float32, aligned pairs, axis 0: every N % 4 == 0): block_size -> {variant: (G blocks per CTA,
# NC batch rows per chunk, STAGES, KG, MINB, XR rows per group, TAIL, UNR)}; (b/8)² threads per block; the
# first entry is the default. XR = 2: a group may take the first blocks of the next row (update_groups), and
# the batch split is chosen by ffma_update_splits (whole waves of MINB CTAs per SM); XR = 1: groups within one
# row, splits by _update_splits (the tiles of the first fp32 session, kept for timing). TAIL = 1: the group's
# bookkeeping after the stage buffers, which start 128-byte aligned; 0: in static shared memory, which shifts
# the buffers by 16 bytes so that cp.async fetches every 32-byte sector twice (the "_static" variants: the
# layout before the third fp32 session, kept for timing). UNR: as XW_FFMA_TILES (0: the chunk's k loop whole).
UPDAT_FFMA_TILES = {
    32: {"g8r2_u2": (8, 32, 2, 4, 2, 2, 1, 2), "g8r2": (8, 32, 2, 4, 2, 2, 1, 0),
         "g8r2_static": (8, 32, 2, 4, 2, 2, 0, 0), "g8": (8, 32, 2, 4, 2, 1, 1, 0),
         "g8_kg2": (8, 32, 2, 2, 2, 1, 1, 0), "g8_s3": (8, 32, 3, 4, 2, 1, 1, 0),
         "g4": (4, 32, 3, 4, 2, 1, 1, 0), "g4r2": (4, 32, 3, 4, 2, 2, 1, 0)},
    64: {"g2_u2": (2, 32, 2, 4, 2, 1, 1, 2), "g2": (2, 32, 2, 4, 2, 1, 1, 0),
         "g2r2": (2, 32, 2, 4, 2, 2, 1, 0), "g2r2_static": (2, 32, 2, 4, 2, 2, 0, 0)},
}
updat_ffma_variant = None  # benchmarks: another entry of UPDAT_FFMA_TILES, or "simt" for updat_simt
ffma_enabled = True  # False: xw_simt / updat_simt for float32 everywhere (benchmarks compare both)
# updat_tc: block_size -> (G blocks of one row per CTA, WARPS, NC batch rows per chunk, STAGES);
# BS = 8: each warp computes a pair of blocks (G = 2·WARPS)
UPDAT_TC_TILES = {64: (4, 8, 32, 4), 32: (4, 4, 64, 3), 16: (4, 4, 64, 4), 8: (8, 4, 128, 4)}
# updat_tile_tc (b = 16, fp16/bf16, feature axis 1, aligned pairs; timing variants until measured: chosen
# only by updat_tile_variant): block_size -> {variant: (TR block rows, TC block columns of a layout tile,
# WARPS, BPW blocks per warp, NC batch rows per chunk, STAGES)}; a CTA takes up to WARPS·BPW blocks of one
# tile and reads the tile's x [NC][TR·b] and dy [NC][TC·b] chunks once for all of them
UPDAT_TILE_TILES = {16: {"tile16": (16, 16, 8, 8, 32, 3), "tile8": (8, 8, 4, 4, 64, 3)}}
updat_tile_variant = None  # benchmarks: an entry of UPDAT_TILE_TILES
# block_size -> the least layout density from which the first UPDAT_TILE_TILES entry is the default update
# (fp16/bf16, feature axis 1, aligned, gmma_enabled, no variant forced). H100, N = K = M = 4096, fp16, one run
# (bench/results/bsmm_gmma-20261126-0838): tile16 104 / 70 / 41 TFLOP/s at d = 0.5 / 0.2 / 0.05 against
# updat_gmma_stack q2_nc128 72 / 57 / 40 and updat_tc 47 / 46 / 35.
UPDAT_TILE_MIN_DENSITY = {16: 0.1}
UPDAT_SIMT_NC = 32
SMALL_N = 64
LARGE_N = 2048
# xw_small (kernels/bsmm_small.cu: N ≤ SMALL_N, b = 32, feature axis 1, x and w 16-byte aligned; stream-K
# over the column-sorted block list, see small_tables): {"tc" (fp16/bf16) | "simt" (fp32): {BM: (WARPS,
# BPW blocks per warp per stage, STAGES, MAX_ENT entries and MAX_STG stages per CTA)}}; BM = 32 serves
# N ≤ 32, 64 the rest. MAX_ENT/MAX_STG size the CTA's tables in shared memory; a layout with more per CTA
# runs more CTAs (whole waves). BM = 32: xw_small_ring (7th entry 1), fp16/bf16 8 warps × 4 slots (padded
# tiles), fp32 8 warps × 2 slots (H100, bench/NOTES.md 2026-11-26 (third): 1-4 % and 5-18 % faster than the
# CTA-stage kernels "tc_stages" / "simt_stages" below, the defaults before). SMALL_DEFAULT overrides a
# (kind, BM) with a named variant: fp16/bf16 BM = 32 runs tc_ring_kp_part (k-permuted tiles, every warp's
# partial, a second launch sums them: H100 2026-11-27 (sixteenth), 1.32× / 1.23× / 1.15× faster than the
# padded ring at d = 0.5 / 0.2 / 0.1, bench/NOTES.md)
XW_SMALL_TILES = {"tc": {32: (8, 1, 4, 768, 256, 1, 1), 64: (4, 2, 3, 1024, 512, 1)},
                  "simt": {32: (8, 1, 2, 768, 256, 1, 1), 64: (4, 1, 3, 1024, 512, 1)}}
SMALL_DEFAULT = {("tc", 32): "tc_ring_kp_part"}
XW_SMALL_BS = 32
# fp16/bf16 take xw_small only with at least this many blocks per SM: below it the per-column xw_tc "small"
# tile was as fast or faster (H100, N = 32, K = M = 12288: the padded ring 14-21 % faster at d >= 0.1 = 112+
# blocks per SM, 2-6 % slower at d <= 0.05 = 56 and fewer, bench/results/bsmm-small-20261126-0050.json;
# tc_ring_kp_part 8 % / 2 % faster (fprop / bprop) at 58 blocks per SM, 41 % / 36 % slower at 25,
# small_diag-20261127-0737)
SMALL_TC_MIN_BLOCKS_PER_SM = 55
# tiles timed against the default by the benchmark (small_variant = name; used where kind and BM apply):
# tc_eps4: 4 blocks per stage, 80 KiB, two CTAs per SM; tc_w4: 4 warps of two blocks each per stage (the
# first default; H100 run 3: the 8-warp default 4 % faster at d = 0.5, 5-10 % at d = 0.2-0.02)
# C > 1 (last entry): column groups of C columns sharing each x tile (x read once per item, not per block)
XW_SMALL_VARIANTS = {"tc_eps4": ("tc", 32, (4, 1, 4, 1024, 512, 1)),
                     "tc_w4": ("tc", 32, (4, 2, 4, 1024, 512, 1)),
                     "tc_c2": ("tc", 32, (8, 1, 3, 512, 256, 2)), "tc_c4": ("tc", 32, (4, 1, 3, 512, 256, 4)),
                     "simt_c2": ("simt", 32, (4, 1, 2, 256, 120, 2)),
                     "tc_st5": ("tc", 32, (8, 1, 5, 1024, 512, 1)),  # 4 stages of w in flight, 216 KiB
                     # xw_small_ring (7th entry RING: 1 cp.async, 2 bulk copies, sm_90): WARPS warps, one
                     # block per warp per stage record, STAGES = SLOTS one-block slots per warp (NOTES.md)
                     "tc_ring": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     "tc_ring_bulk": ("tc", 32, (8, 1, 4, 768, 256, 1, 2)),
                     "tc_ring4": ("tc", 32, (4, 1, 9, 768, 256, 1, 1)),
                     "tc_ring4_bulk": ("tc", 32, (4, 1, 9, 768, 256, 1, 2)),
                     "tc_ring12": ("tc", 32, (12, 1, 2, 768, 256, 1, 1)),  # 12 warps: the consumer's latency
                     "simt_ring": ("simt", 32, (4, 1, 5, 768, 256, 1, 1)),
                     "simt_ring_bulk": ("simt", 32, (4, 1, 5, 768, 256, 1, 2)),
                     # fp32, two warps per scheduler (one warp leaves the FFMA pipe idle at every stall), one
                     # block in flight per warp besides the one computed: 184 KiB
                     "simt_ring8": ("simt", 32, (8, 1, 2, 768, 256, 1, 1)),
                     # fp32 BM = 32's default before simt_ring8 (2 CTAs of 4 warps per SM, CTA stages)
                     "simt_stages": ("simt", 32, (4, 1, 3, 320, 128, 1)),
                     # the CTA-stage kernel xw_small, fp16/bf16 BM = 32's default before the swizzled ring
                     "tc_stages": ("tc", 32, (8, 1, 4, 1024, 512, 1)),
                     # tc_ring with other tile layouts (SMALL_SWIZZLE, kernels/bsmm_small.cu tile_off)
                     "tc_ring_swz": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     "tc_ring_pairs": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     # k-permuted (SWZ = 3): unpadded tiles copied whole, A (and bprop's B) fragments by
                     # 16-byte shared loads (kernels/bsmm_small.cu tile_stride)
                     "tc_ring_kp": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     # and with the split pieces counted after the stream (LATE = 1: no fence inside it)
                     "tc_ring_kp_late": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     # and with no piece end inside the CTA: every warp's partial, summed by a second launch
                     "tc_ring_kp_part": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     # fp32's ring with the same piece ends (LATE = 3, padded tiles)
                     "simt_ring8_part": ("simt", 32, (8, 1, 2, 768, 256, 1, 1)),
                     # split pieces counted after the CTA's last block (LATE = 1; H100 2026-11-26 (third): no
                     # gain for fp16, 2-12 % slower for fp32 at d <= 0.2, so not the default)
                     "tc_ring_late": ("tc", 32, (8, 1, 4, 768, 256, 1, 1)),
                     "simt_late": ("simt", 32, (4, 1, 3, 320, 128, 1))}
SMALL_LATE_SPLIT = ("tc_ring_late", "simt_late", "tc_ring_kp_late")  # variants built with LATE = 1
SMALL_PARTS = ("tc_ring_kp_part", "simt_ring8_part")  # variants built with LATE = 3 (xw_small_ring only)
# xw_small_ring's fp16/bf16 tile layout (SWZ) by variant; the others: 0, padded 80-byte rows
SMALL_SWIZZLE = {"tc_ring_swz": 1, "tc_ring_pairs": 2, "tc_ring_kp": 3, "tc_ring_kp_late": 3,
                 "tc_ring_kp_part": 3, "diag_tc_kp_noepi": 3}
# Timing-only builds of xw_small_ring (fp16 "tc", fp32 "simt"; fprop; 8th entry DIAG, kernels/bsmm_small.cu):
# each removes one piece of the work so that bench/small_diag.py can attribute the time. Their output is
# wrong: only a benchmark names them (small_variant), the library never picks them.
_DIAG_BITS = {"nomma": 1, "nox": 2, "notab": 4, "noepi": 8, "empty": 16, "nozfill": 32, "wonly": 3,
              "probe": 1 | 4 | 8 | 32}
XW_SMALL_DIAG = {**{f"diag_tc_{k}": ("tc", 32, (8, 1, 4, 768, 256, 1, 1, v))
                    for k, v in _DIAG_BITS.items()},
                 **{f"diag_simt_{k}": ("simt", 32, (4, 1, 5, 768, 256, 1, 1, v))
                    for k, v in _DIAG_BITS.items() if k in ("nomma", "empty", "probe")},
                 # the k-permuted tiles (SWZ = 3) without their piece ends
                 "diag_tc_kp_noepi": ("tc", 32, (8, 1, 4, 768, 256, 1, 1, 8))}
small_variant = None
small_enabled = True  # False: the per-column kernels of bsmm.cu at N ≤ SMALL_N too (benchmarks compare)
force_variant = None  # benchmarks set "large"/"medium"/"small" to compare tiles in one run


def xw_tc_variant(bs, n, density):
    """Default xw_tc tile. Measured on the H100 (bench/NOTES.md, 2021 run): at N ≥ LARGE_N the 256-row
    tile wins for b = 32 only at high density (fewer w re-reads pay when lists are long; below d ≈ 0.35
    the 128-row tile is 5-12 % faster), and for b = 64 the 4-warp, 2-stage tile (two CTAs per SM) beats
    both others by 6-10 % at every density."""
    if n <= SMALL_N:
        return "small"
    if n < LARGE_N:
        return "medium"
    if bs == 64:
        return "medium_lean"
    if bs == 32 and density < 0.35:
        return "medium"
    return "large"


def xw_ffma_variant(bs, n, dtype, aligned):
    """The xw_ffma tile for a float32 call (None: xw_simt). Needs 16-byte aligned x and w (and N % 4 == 0 on
    feature axis 0); N ≤ SMALL_N keeps the small-batch SIMT tile. A benchmark's force_variant picks a tile of
    XW_FFMA_TILES, or "simt" for the old kernel."""
    if dtype != "float32" or not aligned or bs not in XW_FFMA_TILES:
        return None
    if force_variant is not None:
        return force_variant if force_variant in XW_FFMA_TILES[bs] else None  # e.g. "simt": xw_simt
    if not ffma_enabled or n <= SMALL_N:
        return None
    return next(iter(XW_FFMA_TILES[bs]))


def xw_tc_spec(dtype, out_dtype, bs, variant, axis, trans, aligned):
    bm, wm, wn, st, eps = XW_TC_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"xw_tc<{t}, {to}, {bs}, {bm}, {wm}, {wn}, {st}, {eps}, {axis}, {trans}, "
                              f"{aligned}>")


def xw_wide_spec(dtype, out_dtype, bs, variant, axis, trans):
    r, c, bm, wm, wn, st, eps = XW_WIDE_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"xw_wide_tc<{t}, {to}, {bs}, {r}, {c}, {bm}, {wm}, {wn}, {st}, {eps}, {axis}, "
                              f"{trans}>")


def xw_gmma_spec(dtype, out_dtype, bs, variant, trans):
    wg, mi, st = XW_GMMA_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec("bsmm_gmma.cu", f"xw_gmma<{t}, {to}, {bs}, {wg}, {mi}, {st}, {trans}>")


def xw_gmma_smem(bs, variant):
    wg, mi, st = XW_GMMA_TILES[bs][variant]
    return st * (wg * mi * 64 + bs) * bs * 2 + 1024  # + 1 KiB: the kernel aligns its base to 1 KiB


def xw_gmma_rs_spec(dtype, out_dtype, bs, variant, trans):
    c, st, minb, all_, eps, r = XW_GMMA_RS_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec("bsmm_gmma_rs.cu",
                      f"xw_gmma_rs<{t}, {to}, {bs}, {c}, {st}, {minb}, {all_}, {eps}, {r}, {trans}>")


def xw_gmma_rs_smem(bs, variant):
    c, st, _, _, eps, r = XW_GMMA_RS_TILES[bs][variant]
    return st * eps * (128 * r * bs + r * c * bs * bs) * 2 + 1024  # x tiles + w slots, + 1 KiB alignment


def xw_tma_spec(dtype, out_dtype, bs, variant, trans):
    c, cl, mi, st, minb, rm, pers, rs, *tt = XW_TMA_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    tt = "".join(f", {v}" for v in tt)  # TT, and NP where given
    args = f"{t}, {to}, {bs}, {c}, {cl}, {rm}, {mi}, {st}, {minb}, {pers}, {rs}, {trans}{tt}"
    return KernelSpec("bsmm_tma.cu", f"xw_tma<{args}>")


def xw_tma_smem(bs, variant):
    c, _, mi, st, *_ = XW_TMA_TILES[bs][variant]
    # slots on 1 KiB boundaries, + 1 KiB for the alignment of the base
    return st * -(-(128 * mi * bs + c * bs * bs) * 2 // 1024) * 1024 + 1024


def updat_gmma_spec(dtype, out_dtype, bs, variant):
    g, nc, st, *pw = UPDAT_GMMA_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    if bs < 32:
        return KernelSpec("bsmm_gmma.cu", f"updat_gmma_stack<{t}, {to}, {bs}, {g}, {nc}, {st}>")
    name = "updat_gmma" if bs == 64 else "updat_gmma32"
    pw = f", {pw[0]}" if pw else ""
    return KernelSpec("bsmm_gmma.cu", f"{name}<{t}, {to}, {g}, {nc}, {st}{pw}>")


def updat_gmma_threads(bs, variant):
    """Threads of an updat_gmma* CTA: a warpgroup per PW blocks (b = 64) or per pair / stack of slots."""
    g, _, _, *pw = UPDAT_GMMA_TILES[bs][variant]
    return g // (pw[0] if pw else 1) * 128


def updat_gmma_group(bs, variant):
    """Blocks per CTA of the wgmma update: G warpgroups of max(1, 64 / b) stacked blocks each."""
    return UPDAT_GMMA_TILES[bs][variant][0] * max(1, 64 // bs)


def updat_gmma_smem(bs, variant):
    g, nc, st, *_ = UPDAT_GMMA_TILES[bs][variant]
    # b = 64: x chunk + G dy chunks of 128-byte rows; b <= 32: G stacked dy chunks of 128-byte rows + the x
    # chunk of 2·b-byte rows
    stage = (1 + g) * nc * 128 if bs == 64 else g * nc * 128 + nc * bs * 2
    return st * stage + 1024


def xw_simt_spec(dtype, out_dtype, bs, axis, trans, small=False):
    bm, tm, tn = (XW_SIMT_SMALL if small else XW_SIMT_TILES)[bs]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"xw_simt<{t}, {to}, {bs}, {bm}, {tm}, {tn}, {axis}, {trans}>")


def _small_kind(dtype):
    return "simt" if dtype == "float32" else "tc"


def _small_named(dtype, bm, variant):
    """The named small kernel that runs: ``variant`` where it applies (its kind and tile height), else the
    default's name for this kind and height (SMALL_DEFAULT), else None (XW_SMALL_TILES' unnamed tile)."""
    v = XW_SMALL_VARIANTS.get(variant) or XW_SMALL_DIAG.get(variant)
    if v is not None and v[0] == _small_kind(dtype) and v[1] == bm:
        return variant
    return SMALL_DEFAULT.get((_small_kind(dtype), bm))


def _small_entry(dtype, bm, variant):
    name = _small_named(dtype, bm, variant)
    if name is not None:
        return (XW_SMALL_VARIANTS.get(name) or XW_SMALL_DIAG[name])[2]
    return XW_SMALL_TILES[_small_kind(dtype)][bm]


def small_tile(dtype, bm, variant=None):
    """(WARPS, BPW, STAGES, MAX_ENT, MAX_STG, C) of xw_small for this dtype and tile height."""
    return _small_entry(dtype, bm, variant)[:6]


def small_ring(dtype, bm, variant=None):
    """0: xw_small (CTA-wide stages); 1: xw_small_ring with cp.async; 2: with bulk copies (sm_90)."""
    entry = _small_entry(dtype, bm, variant)
    return entry[6] if len(entry) > 6 else 0


def xw_small_spec(dtype, out_dtype, bm, trans, variant=None):
    warps, bpw, st, me, ms, c = small_tile(dtype, bm, variant)
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    ring = small_ring(dtype, bm, variant)
    # LATE = 1 only for the SMALL_LATE_SPLIT variants, where they apply (their kind and tile height)
    late = _small_late(dtype, bm, variant)
    if ring:
        entry = _small_entry(dtype, bm, variant)
        diag = f", {entry[7]}" if len(entry) > 7 else ""  # timing-only builds (XW_SMALL_DIAG)
        swz = _small_swizzled(dtype, bm, variant)
        args = f"{t}, {to}, {bm}, {warps}, {st}, {me}, {ms}, {trans}, {ring - 1}, {late}, {swz}{diag}"
        name = f"xw_small_ring<{args}>"
        return KernelSpec("bsmm_small.cu", name)
    return KernelSpec("bsmm_small.cu",
                      f"xw_small<{t}, {to}, {bm}, {warps}, {bpw}, {st}, {me}, {ms}, {c}, {trans}, {late}>")


def _small_late(dtype, bm, variant):
    """LATE of the kernel that runs (_small_named): 1 for SMALL_LATE_SPLIT, 3 for SMALL_PARTS, else 0."""
    name = _small_named(dtype, bm, variant)
    return 1 if name in SMALL_LATE_SPLIT else 3 if name in SMALL_PARTS else 0


def small_reduce_spec(out_dtype, bm, warps):
    """xw_small_reduce (LATE = 3's second launch) for the output dtype, tile height and warps."""
    return KernelSpec("bsmm_small.cu", f"xw_small_reduce<{_CTYPE[out_dtype]}, {bm}, {warps}>")


def _small_swizzled(dtype, bm, variant):
    """xw_small_ring's tile layout SWZ (fp16/bf16 with cp.async): 1 permuted pieces, 2 row pairs,
    3 k-permuted, 0 padded."""
    if dtype == "float32" or small_ring(dtype, bm, variant) != 1:
        return 0
    return SMALL_SWIZZLE.get(_small_named(dtype, bm, variant), 0)


def xw_small_smem(dtype, bm, variant=None):
    """Dynamic shared memory: STAGES · EPS · (BM + C·32) rows · stride · itemsize (mirrors xw_small); the
    ring kernel: its WARPS · SLOTS slots of (BM + 32) rows, + the tile reduction's WARPS · BM · 36 floats."""
    warps, bpw, st, _, _, c = small_tile(dtype, bm, variant)
    swz = _small_swizzled(dtype, bm, variant)
    stride, item = (36, 4) if dtype == "float32" else ((40, 32, 36, 40)[swz], 2)
    ring = st * warps * bpw * (bm + c * XW_SMALL_BS) * stride * item
    red = warps * bm * 36 * 4
    return ring + (red if small_ring(dtype, bm, variant) else 0)


def xw_small_static_smem(dtype, bm, variant=None):
    """Static shared memory: the CTA's items ((C + 1)·4 B) and stage records (16 B), + 16 B (+ the ring
    kernel's mbarriers)."""
    warps, _, st, me, ms, c = small_tile(dtype, bm, variant)
    return me * (c + 1) * 4 + ms * 16 + 16 + (warps * st * 8 if small_ring(dtype, bm, variant) else 0)


def small_tables(ptr, n_ctas, eps, snap=0, weight=None, all_parts=False):
    """xw_small's work split: ``ptr`` [n_out + 1] (CSC column pointers for fprop, CSR row pointers for
    bprop; the entries of column c are ptr[c]:ptr[c+1]) cut into ``n_ctas`` ranges of equal block count.

    Returns ent_ptr int32 [n_ctas + 1] (CTA g's entries); stages int32 [n_stages, 4], CTA g's at
    stage_ptr[g]:stage_ptr[g+1] in list order: (first entry relative to ent_ptr[g], count | FIRST (1 << 16,
    a column piece starts) | LAST (1 << 17, it ends), column, part or -1); stage_ptr int32 [n_ctas + 1];
    zero_cols int32 [max(n_zero, 1)] (the empty columns) and n_zero; parts int32 [max(n_parts, 1), 2]
    (first part of the column, its number of parts): a column cut by range boundaries has one part per
    piece, numbered in list order. A piece of a column is a run of stages of ``eps`` blocks (the last one
    shorter). ``all_parts`` (xw_small_ring LATE = 3): every piece's part is its number in list order, and
    parts int32 [max(n_out, 1), 2] is per column (its first piece, its number of pieces; 0 if empty)."""
    ptr = np.asarray(ptr, dtype=np.int64)
    n_out, nnz = ptr.size - 1, int(ptr[-1])
    if weight is None:
        bounds = np.arange(n_ctas + 1, dtype=np.int64) * nnz // n_ctas
    else:  # equal weight (bytes) per CTA
        cum = np.concatenate([[0], np.cumsum(weight, dtype=np.int64)])
        bounds = np.searchsorted(cum, np.arange(n_ctas + 1, dtype=np.int64) * int(cum[-1]) / n_ctas)
        bounds = np.minimum(bounds, nnz).astype(np.int64)
    # a cut within ``snap`` blocks (small_ctas: one stage) of a column boundary moves to it: a column cut in
    # two costs its pieces a partial write, a fence and an atomic (~3 memory latencies), more than a stage
    i = np.clip(np.searchsorted(ptr, bounds), 1, ptr.size - 1)
    lo, hi = ptr[i - 1], ptr[i]
    near = np.where(bounds - lo <= hi - bounds, lo, hi)
    bounds = np.where(np.abs(near - bounds) <= snap, near, bounds)
    bounds[0], bounds[-1] = 0, nnz
    lens = np.diff(ptr)
    zero = np.flatnonzero(lens == 0).astype(np.int32)
    zero_cols = zero if zero.size else np.zeros(1, np.int32)
    if nnz == 0:
        return (bounds.astype(np.int32), np.zeros((0, 4), np.int32), np.zeros(n_ctas + 1, np.int32),
                zero_cols, int(zero.size), np.zeros((max(n_out, 1) if all_parts else 1, 2), np.int32))
    cols = np.flatnonzero(lens > 0)
    first = np.searchsorted(bounds, ptr[cols], side="right") - 1
    last = np.searchsorted(bounds, ptr[cols + 1] - 1, side="right") - 1
    raw = last - first + 1
    col = np.repeat(cols, raw)
    g = np.repeat(first, raw) + np.arange(col.size, dtype=np.int64) - np.repeat(
        np.concatenate([[0], np.cumsum(raw)[:-1]]).astype(np.int64), raw)
    e0 = np.maximum(ptr[col], bounds[g])
    e1 = np.minimum(ptr[col + 1], bounds[g + 1])
    keep = e1 > e0  # a CTA with an empty range inside a column holds no piece of it
    col, g, e0, e1 = col[keep], g[keep], e0[keep], e1[keep]
    pieces = np.bincount(col, minlength=n_out)[col]  # per segment: its column's number of pieces
    seg_start = np.flatnonzero(np.concatenate([[True], col[1:] != col[:-1]]))
    piece = np.arange(col.size, dtype=np.int64) - np.repeat(seg_start,
                                                            np.diff(np.append(seg_start, col.size)))
    split = pieces > 1
    part_first = np.cumsum(np.where(split & (piece == 0), pieces, 0)) - np.where(split, pieces, 0)
    part_first = np.where(split, part_first, 0)
    # part_first of every piece = the running count of split pieces before its column's first piece
    part_first = np.maximum.accumulate(np.where(piece == 0, part_first, -1))
    part = np.where(split, part_first + piece, -1)
    n_parts = int(np.sum(split))
    parts = np.zeros((max(n_parts, 1), 2), dtype=np.int32)
    parts[part[split], 0] = part_first[split]
    parts[part[split], 1] = pieces[split]
    if all_parts:
        part = np.arange(col.size, dtype=np.int64)
        parts = np.zeros((max(n_out, 1), 2), dtype=np.int32)
        parts[col[piece == 0], 0] = part[piece == 0]
        parts[col[piece == 0], 1] = pieces[piece == 0]
    # segments are already in list order (column, then CTA = position); expand them into stages
    n_stg = -(-(e1 - e0) // eps)
    seg = np.repeat(np.arange(col.size), n_stg)
    k = np.arange(seg.size, dtype=np.int64) - np.repeat(np.concatenate([[0], np.cumsum(n_stg)[:-1]]), n_stg)
    s_e0 = e0[seg] + k * eps
    s_cnt = np.minimum(eps, e1[seg] - s_e0)
    flags = np.where(k == 0, 1 << 16, 0) | np.where(k == n_stg[seg] - 1, 1 << 17, 0)
    sg = g[seg]
    stages = np.stack([s_e0 - bounds[sg], s_cnt | flags, col[seg], part[seg]], axis=1).astype(np.int32)
    stage_ptr = np.zeros(n_ctas + 1, dtype=np.int32)
    stage_ptr[1:] = np.cumsum(np.bincount(sg, minlength=n_ctas))
    return (bounds.astype(np.int32), np.ascontiguousarray(stages), stage_ptr, zero_cols, int(zero.size),
            parts)


def small_snap(eps, max_ent, max_stg):
    """How far small_tables may move a cut onto a column boundary: one stage, bounded so that ranges
    shrink below the tables' capacity as CTAs are added (small_ctas ends)."""
    return max(0, min(eps, max_ent // 4, (max_stg - 1) // 2))


def small_items(layout, op, c):
    """xw_small's list for column groups of ``c`` output block columns (fprop: columns of W; bprop: rows):
    items int32 [n_items, c + 1] (reduction block r, then the w index of block (r, group·c + j) or -1),
    sorted by (group, r); group pointers int64 [n_groups + 1]; weights int64 [n_items] (1 + blocks: the
    tiles an item copies). c = 1: the CSC (fprop) / CSR (bprop) entries."""
    fprop = op == "fprop"
    out_b = (layout.cols if fprop else layout.rows).astype(np.int64)
    red_b = (layout.rows if fprop else layout.cols).astype(np.int64)
    n_out, n_red = (layout.out_blocks, layout.in_blocks) if fprop else (layout.in_blocks, layout.out_blocks)
    n_groups = -(-n_out // c)
    keys, inv = np.unique((out_b // c) * n_red + red_b, return_inverse=True)
    items = np.full((keys.size, c + 1), -1, dtype=np.int32)
    items[:, 0] = keys % n_red
    items[inv.reshape(-1), 1 + out_b % c] = np.arange(layout.nnz, dtype=np.int32)
    gptr = np.zeros(n_groups + 1, dtype=np.int64)
    gptr[1:] = np.cumsum(np.bincount(keys // n_red, minlength=n_groups))
    return np.ascontiguousarray(items), gptr, 1 + np.sum(items[:, 1:] >= 0, axis=1)


def small_work(layout, op, ctas, eps, snap, c, all_parts=False):
    """Host arrays of one xw_small launch: items, ent_ptr, stages, stage_ptr, zero columns (at least one
    element), their count (np.int32), parts (small_items, small_tables)."""
    items, gptr, weight = small_items(layout, op, c)
    ent_ptr, stages, stage_ptr, zero, n_zero, parts = small_tables(gptr, ctas, eps, snap, weight, all_parts)
    n_out = layout.out_blocks if op == "fprop" else layout.in_blocks
    zero = (zero[:n_zero, None] * c + np.arange(c)).reshape(-1)  # the columns of empty groups
    zero = zero[zero < n_out].astype(np.int32)
    zero_cols = zero if zero.size else np.zeros(1, np.int32)
    return items, ent_ptr, stages, stage_ptr, zero_cols, np.int32(zero.size), parts


def small_ctas(ptr, eps, resident, max_ent, max_stg, weight=None):
    """The CTA count for xw_small: the resident CTAs (fewer for a short list, at least one stage each),
    times the waves needed for every CTA's entries and stages to fit its shared-memory tables."""
    nnz = int(ptr[-1])
    base = int(max(1, min(resident, -(-nnz // eps))))
    waves = max(1, -(-nnz // (base * max_ent)))
    while True:
        ctas = base * waves
        ent_ptr, stages, stage_ptr, _, _, _ = small_tables(ptr, ctas, eps, small_snap(eps, max_ent, max_stg),
                                                           weight)
        if (int(np.max(np.diff(stage_ptr), initial=0)) <= max_stg
                and int(np.max(np.diff(ent_ptr), initial=0)) <= max_ent):
            return ctas
        waves += 1
def xw_ffma_spec(bs, variant, axis, trans):
    warps, st, kg, minb, tpc, _, unr = XW_FFMA_TILES[bs][variant]
    unr = unr or bs // kg
    return KernelSpec(SOURCE, f"xw_ffma<{bs}, {warps}, {st}, {kg}, {minb}, {axis}, {trans}, {tpc}, {unr}>")


def xw_ffma_tables(bs, variant, op):
    """The _tables key of xw_ffma's (offsets, entries, column order) for op "fprop" / "bprop"."""
    return ("ffma", op, XW_FFMA_TILES[bs][variant][5])


def xw_ffma_rows(bs, variant):
    return XW_FFMA_TILES[bs][variant][0] * 2048 // bs  # a warp: (256 / b) × (b / 8) threads of 8 × 8


def xw_ffma_smem(bs, variant):
    bm, st = xw_ffma_rows(bs, variant), XW_FFMA_TILES[bs][variant][1]
    return max(st * (bm + bs) * bs * 4, bm * (bs + 4) * 4)


def updat_ffma_spec(bs, variant, axis):
    g, nc, st, kg, minb, xr, tail, unr = UPDAT_FFMA_TILES[bs][variant]
    unr = unr or nc // kg
    return KernelSpec(SOURCE, f"updat_ffma<{bs}, {g}, {nc}, {st}, {kg}, {minb}, {axis}, {xr}, {tail}, {unr}>")


def updat_ffma_smem(bs, variant):
    g, nc, st, _, _, xr, tail, _ = UPDAT_FFMA_TILES[bs][variant]
    return st * (xr + g) * (nc * bs + 16) * 4 + (8 * (xr + g) + 8 * g if tail else 0)


def updat_tc_spec(dtype, out_dtype, bs, axis, aligned):
    g, warps, nc, st = UPDAT_TC_TILES[bs]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"updat_tc<{t}, {to}, {bs}, {g}, {warps}, {nc}, {st}, {axis}, {aligned}>")


def updat_tile_spec(dtype, out_dtype, bs, variant):
    tr, tc, warps, bpw, nc, st = UPDAT_TILE_TILES[bs][variant]
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"updat_tile_tc<{t}, {to}, {bs}, {tr}, {tc}, {warps}, {bpw}, {nc}, {st}>")


def updat_tile_smem(bs, variant):
    tr, tc, _, _, nc, st = UPDAT_TILE_TILES[bs][variant]
    return st * nc * (tr + tc) * bs * 2


def updat_simt_spec(dtype, out_dtype, bs, axis):
    t, to = _CTYPE[dtype], _CTYPE[out_dtype]
    return KernelSpec(SOURCE, f"updat_simt<{t}, {to}, {bs}, {axis}>")


def updat_reduce_spec(out_dtype):
    return KernelSpec(SOURCE, f"updat_reduce<{_CTYPE[out_dtype]}>")


def xw_tc_smem(bs, variant, axis):
    bm, _, _, st, eps = XW_TC_TILES[bs][variant]
    rows, cols = (bm, bs) if axis == 1 else (bs, bm)
    stride = lambda n: n + 8 if (n // 8) % 2 == 0 else n  # noqa: E731 - mirrors tc_stride()
    stage = eps * (rows * stride(cols) + bs * stride(bs)) * 2
    return max(st * stage, bm * (bs + 4) * 4)


def xw_wide_smem(bs, variant, axis):
    r, c, bm, _, _, st, eps = XW_WIDE_TILES[bs][variant]
    rows, cols = (bm, r * bs) if axis == 1 else (r * bs, bm)
    stride = lambda n: n + 8 if (n // 8) % 2 == 0 else n  # noqa: E731 - mirrors tc_stride()
    stage = eps * (rows * stride(cols) + r * c * bs * stride(bs)) * 2
    return max(st * stage, bm * (c * bs + 4) * 4)


def updat_tc_smem(bs, axis):
    g, _, nc, st = UPDAT_TC_TILES[bs]
    # unpadded swizzled tiles (kernels/bsmm.cu tc_swz), then the group's columns (int64) and blocks (int32)
    return st * (1 + g) * nc * bs * 2 + 12 * g


def _out_types(dtype):
    return (dtype, "float32") if dtype != "float32" else ("float32",)


def specializations():
    """Every kernel specialization the dispatch below can launch."""
    for dtype in ("float16", "bfloat16"):
        for to, bs, axis, trans in itertools.product(_out_types(dtype), XW_TC_TILES, (0, 1), (0, 1)):
            for variant, aligned in itertools.product(XW_TC_TILES[bs], (1,) if axis == 1 else (0, 1)):
                yield xw_tc_spec(dtype, to, bs, variant, axis, trans, aligned)
        for to, bs, axis, trans in itertools.product(_out_types(dtype), XW_WIDE_TILES, (0, 1), (0, 1)):
            for variant in XW_WIDE_TILES[bs]:
                yield xw_wide_spec(dtype, to, bs, variant, axis, trans)
        for to, bs, axis in itertools.product(_out_types(dtype), UPDAT_TC_TILES, (0, 1)):
            for aligned in ((1,) if axis == 1 else (0, 1)):
                yield updat_tc_spec(dtype, to, bs, axis, aligned)
        for to, bs in itertools.product(_out_types(dtype), UPDAT_TILE_TILES):
            for variant in UPDAT_TILE_TILES[bs]:
                yield updat_tile_spec(dtype, to, bs, variant)
    for dtype in ("float16", "bfloat16", "float32"):
        for to, bs, axis in itertools.product(_out_types(dtype), XW_SIMT_TILES, (0, 1)):
            for trans, small in itertools.product((0, 1), (False, True)):
                yield xw_simt_spec(dtype, to, bs, axis, trans, small)
            yield updat_simt_spec(dtype, to, bs, axis)
        yield updat_reduce_spec(dtype)
    for bs, axis, trans in itertools.product(XW_FFMA_TILES, (0, 1), (0, 1)):
        for variant in XW_FFMA_TILES[bs]:
            yield xw_ffma_spec(bs, variant, axis, trans)
    for bs, axis in itertools.product(UPDAT_FFMA_TILES, (0, 1)):
        for variant in UPDAT_FFMA_TILES[bs]:
            yield updat_ffma_spec(bs, variant, axis)


compiler.register_family("bsmm", specializations)


def gmma_specializations():
    """The wgmma kernels (sm_90a): every tile, fp16/bf16, output in the input dtype or float32."""
    for dtype in ("float16", "bfloat16"):
        for to, bs, trans in itertools.product(_out_types(dtype), XW_GMMA_TILES, (0, 1)):
            for variant in XW_GMMA_TILES[bs]:
                yield xw_gmma_spec(dtype, to, bs, variant, trans)
        for to, bs in itertools.product(_out_types(dtype), UPDAT_GMMA_TILES):
            for variant in UPDAT_GMMA_TILES[bs]:
                yield updat_gmma_spec(dtype, to, bs, variant)


compiler.register_family("bsmm_gmma", gmma_specializations)

def gmma_rs_specializations():
    """xw_gmma_rs (sm_90a): every tile, fp16/bf16, output in the input dtype or float32, fprop and bprop."""
    for dtype in ("float16", "bfloat16"):
        for to, bs, trans in itertools.product(_out_types(dtype), XW_GMMA_RS_TILES, (0, 1)):
            for variant in XW_GMMA_RS_TILES[bs]:
                yield xw_gmma_rs_spec(dtype, to, bs, variant, trans)


compiler.register_family("bsmm_gmma_rs", gmma_rs_specializations)


def tma_specializations():
    """xw_tma (sm_90a): every tile, fp16/bf16, output in the input dtype or float32, fprop and bprop."""
    for dtype in ("float16", "bfloat16"):
        for to, bs, trans in itertools.product(_out_types(dtype), XW_TMA_TILES, (0, 1)):
            for variant in XW_TMA_TILES[bs]:
                yield xw_tma_spec(dtype, to, bs, variant, trans)


compiler.register_family("bsmm_tma", tma_specializations)


def small_specializations():
    """xw_small: fp16/bf16/fp32, output in the input dtype or float32, both tile heights, fprop/bprop."""
    for dtype in ("float16", "bfloat16", "float32"):
        for to, bm, trans in itertools.product(_out_types(dtype), XW_SMALL_TILES[_small_kind(dtype)], (0, 1)):
            yield xw_small_spec(dtype, to, bm, trans)
        for name, (kind, bm, tile) in XW_SMALL_VARIANTS.items():
            if kind == _small_kind(dtype):
                for to, trans in itertools.product(_out_types(dtype), (0, 1)):
                    yield xw_small_spec(dtype, to, bm, trans, name)
                if name in SMALL_PARTS:  # the second launch, for each output dtype once
                    for to in _out_types(dtype):
                        if to == dtype or dtype == "float16":
                            yield small_reduce_spec(to, bm, tile[0])
        if dtype != "bfloat16":  # the diagnostics: fprop, output in the input dtype
            for name, (kind, bm, _) in XW_SMALL_DIAG.items():
                if kind == _small_kind(dtype):
                    yield xw_small_spec(dtype, dtype, bm, 0, name)


compiler.register_family("bsmm_small", small_specializations)


def stream_probe_specializations():
    """kernels/stream_probe.cu (bench/stream_probe.py's streaming probes, never launched by the library):
    one specialization of each probe and copy mode, so that the source is compiled and checked for spills."""
    for name in ("probe_cta<2048, 8, 4, 0, 1, 1>", "probe_cta<2048, 8, 4, 1, 0, 0>",
                 "probe_cta<2048, 8, 6, 2, 0, 1>", "probe_warp<2048, 8, 5, 0, 1>",
                 "probe_warp<2048, 8, 8, 1, 0>", "probe_warp<4096, 4, 5, 2, 1>", "probe_ldg<2048, 8, 0>"):
        yield KernelSpec("stream_probe.cu", name)


compiler.register_family("stream_probe", stream_probe_specializations)


# ------------------------------------------------------------------------------------------------
# device lookup tables and launch plans, cached on the op object per device

def update_groups(layout, g, xr=1):
    """[n_groups, g] int32: the w indices of up to g consecutive blocks of one block row, -1 padded.

    xr = 2: groups of up to g consecutive blocks (w order is row-major) spanning at most two block rows: a
    row's full groups, then its remaining blocks followed by the first blocks of the next nonempty row, so
    that only a row that ends a run of rows too short to fill a group leaves empty slots."""
    if xr == 2:
        return _update_groups_packed(layout, g)
    pos = np.arange(layout.nnz) - layout.row_ptr[layout.rows]
    per_row = -(-np.diff(layout.row_ptr) // g)
    first = np.concatenate([[0], np.cumsum(per_row)])
    table = np.full((int(first[-1]), g), -1, dtype=np.int32)
    table[first[layout.rows] + pos // g, pos % g] = np.arange(layout.nnz, dtype=np.int32)
    return table


def update_tiles(layout, tr, tc, max_blocks):
    """updat_tile_tc's work items over tiles of tr block rows × tc block columns.

    Returns items int32 [n_items, 4] (the tile's first block row and column, first entry, count: a tile's
    blocks split into ceil(n / max_blocks) items of nearly equal counts) and entries int32 [nnz] (w indices
    sorted by tile, row, column)."""
    rows, cols = layout.rows.astype(np.int64), layout.cols.astype(np.int64)
    tile = (rows // tr) * -(-layout.out_blocks // tc) + cols // tc
    order = np.lexsort((cols, rows, tile))
    tiles, start, count = np.unique(tile[order], return_index=True, return_counts=True)
    parts = -(-count // max_blocks)
    t = np.repeat(np.arange(tiles.size), parts)  # the tile of each item
    i = np.arange(t.size) - np.repeat(np.cumsum(parts) - parts, parts)  # item index within its tile
    base, extra = count[t] // parts[t], count[t] % parts[t]
    items = np.stack([rows[order[start[t]]] // tr * tr, cols[order[start[t]]] // tc * tc,
                      start[t] + i * base + np.minimum(i, extra), base + (i < extra)], axis=1)
    return items.astype(np.int32), order.astype(np.int32)


def _update_groups_packed(layout, g):
    counts = np.diff(layout.row_ptr)
    nonempty = np.flatnonzero(counts)
    starts, lengths = [], []
    taken = 0  # blocks of the current row already taken by the previous row's last group
    for i, r in enumerate(nonempty):  # one step per nonempty row (the full groups are ranges)
        begin, n = int(layout.row_ptr[r]) + taken, int(counts[r]) - taken
        full, rest = divmod(n, g)
        starts.extend(range(begin, begin + full * g, g))
        lengths.extend([g] * full)
        taken = 0
        if rest:
            nxt = int(counts[nonempty[i + 1]]) if i + 1 < nonempty.size else 0
            taken = min(g - rest, nxt)
            starts.append(begin + full * g)
            lengths.append(rest + taken)
    starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
    slot = np.arange(g)
    return np.where(slot < lengths[:, None], starts[:, None] + slot, -1).astype(np.int32).reshape(-1, g)


# Column groups for xw_tma: a CTA's C·CL output block columns share each x tile, so a group's record list is
# the union of its columns' reduction blocks. Consecutive columns of a random layout share few (at d = 0.5,
# 1.34 blocks a record for pairs); columns paired by how many blocks they share reach 1.45 at d = 0.5 and
# 1.11 -> 1.27 at d = 0.2 (64 × 64 random layouts), i.e. 7-18 % fewer x tiles read from L2.
group_columns = True  # benchmarks: False keeps the columns in index order
GROUP_WINDOW = 1024  # columns grouped together at most (the overlap matrix is window² at each level)


def column_order(layout, op, c):
    """The output block columns (fprop: columns of W; bprop: its rows) in the order that groups of ``c``
    take them: group g holds columns order[g·c : g·c + c]. For ``c`` a power of two, columns are paired
    greedily by the number of reduction blocks they share (largest first, ties by index), then pairs of pairs
    by the overlap of their unions, and so on; the columns left over at each level (fewer than ``c`` in all)
    fill the last group. Otherwise (and for c = 1) the index order. Deterministic; within windows of
    GROUP_WINDOW columns."""
    n_out = layout.out_blocks if op == "fprop" else layout.in_blocks
    if c <= 1 or c & (c - 1):
        return np.arange(n_out, dtype=np.int32)
    mask = layout.mask if op == "fprop" else layout.mask.T
    order = []
    for w0 in range(0, n_out, GROUP_WINDOW):
        cols = np.arange(w0, min(n_out, w0 + GROUP_WINDOW))
        groups = [[int(j)] for j in cols]  # clusters of columns, each a list in position order
        sets = mask[:, cols].T.astype(np.float32)  # [clusters, reduction blocks]: the union's blocks
        leftover = []
        while len(groups[0]) < c and len(groups) > 1:
            n = len(groups)
            overlap = sets @ sets.T
            iu, ju = np.triu_indices(n, 1)
            used = np.zeros(n, dtype=bool)
            merged, merged_sets = [], []
            for k in np.argsort(-overlap[iu, ju], kind="stable"):
                a, b = iu[k], ju[k]
                if not (used[a] or used[b]):
                    used[a] = used[b] = True
                    merged.append(groups[a] + groups[b])
                    merged_sets.append(np.maximum(sets[a], sets[b]))
                    if 2 * len(merged) >= n - 1:
                        break
            leftover += [groups[i] for i in np.flatnonzero(~used)]
            groups, sets = merged, np.array(merged_sets, dtype=np.float32).reshape(len(merged), -1)
        if len(groups[0]) < c:  # a window too small to fill one group
            leftover, groups = groups + leftover, []
        order += [j for g in groups for j in g] + sorted(j for g in leftover for j in g)
    return np.asarray(order, dtype=np.int32)


def wide_tables(layout, op, c, r=1, order=None):
    """Lists of xw_wide_tc for groups of ``c`` output block columns (fprop: columns of W; bprop: rows)
    over super-rows of ``r`` consecutive reduction blocks; group g holds the columns order[g·c .. g·c + c - 1]
    (``order``: a permutation of the output block columns, default the index order).

    Returns offsets int32 [n_groups + 1]; entries int32 [n_entries] (the super-row s; a group's entries
    are sorted by s); masks uint32 [n_entries, ceil(r·c / 32)] with bit rr·c + j set when block
    (s·r + rr, order[group·c + j]) is present; slots int32 [n_entries, r·c], its index in w or -1.
    """
    fprop = op == "fprop"
    out_b = (layout.cols if fprop else layout.rows).astype(np.int64)
    if order is not None:  # the column's position
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        out_b = pos[out_b]
    red_b = (layout.rows if fprop else layout.cols).astype(np.int64)
    n_out = layout.out_blocks if fprop else layout.in_blocks
    n_super = -(-(layout.in_blocks if fprop else layout.out_blocks) // r)
    n_groups = -(-n_out // c)
    group, slot = out_b // c, (red_b % r) * c + out_b % c
    keys, inv = np.unique(group * n_super + red_b // r, return_inverse=True)
    inv = inv.reshape(-1)
    words = -(-(r * c) // 32)
    masks = np.zeros((keys.size, words), dtype=np.uint32)
    np.bitwise_or.at(masks, (inv, slot // 32), np.left_shift(np.uint32(1), (slot % 32).astype(np.uint32)))
    slots = np.full((keys.size, r * c), -1, dtype=np.int32)
    slots[inv, slot] = np.arange(layout.nnz, dtype=np.int32)
    offsets = np.zeros(n_groups + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.bincount(keys // n_super, minlength=n_groups))
    return offsets, (keys % n_super).astype(np.int32), masks, slots


def rs_tables(layout, op, c, r=1, order=None, absent=0):
    """xw_gmma_rs's lists for groups of ``c`` output block columns over super-rows of ``r`` reduction blocks:
    offsets int32 [n_groups + 1] and records int32 [n_entries, 2 + r·c] = (super-row s, mask with bit rr·c + j
    for block (s·r + rr, column j of the group), the w index of each slot's block, ``absent`` where absent), a
    group's records in increasing s (wide_tables, packed so that the kernel reads one record with one
    pointer). xw_tma's tables take absent = nnz: its b = 32 transposed tile copies a pair's absent block from
    there, past the end of w's tensor map, which reads as zeros."""
    assert r * c <= 32, "one mask word"
    offsets, entries, masks, slots = wide_tables(layout, op, c, r, order)
    rec = np.empty((entries.size, 2 + r * c), dtype=np.int32)
    rec[:, 0] = entries
    rec[:, 1] = masks[:, 0].view(np.int32)
    rec[:, 2:] = np.where(slots >= 0, slots, absent)
    return offsets, rec


def _tables(op_obj, key, dev):
    import cupy

    cache = op_obj._gpu_tables
    if (dev, key) not in cache:
        lay = op_obj.layout
        if key == "fprop":
            order = lay.col_order
            ent = np.stack([lay.rows[order], order], axis=1)
            cache[(dev, key)] = (cupy.asarray(lay.col_ptr), cupy.asarray(np.ascontiguousarray(ent, np.int32)))
        elif key == "bprop":
            ent = np.stack([lay.cols, np.arange(lay.nnz, dtype=np.int32)], axis=1)
            cache[(dev, key)] = (cupy.asarray(lay.row_ptr), cupy.asarray(np.ascontiguousarray(ent, np.int32)))
        elif key[0] == "small":  # ("small", op, ctas, eps, bm, snap, c, LATE = 3: every piece's partial)
            work = small_work(lay, key[1], key[2], key[3], key[5], key[6], key[7])
            cache[(dev, key)] = tuple(a if isinstance(a, np.int32) else cupy.asarray(a) for a in work)
        elif key[0] in ("tma", "rs"):  # ("tma", op, c·cl, grouped) / ("rs", op, c, r, grouped)
            op, c = key[1], key[2]
            r, grouped = (1, key[3]) if key[0] == "tma" else key[3:5]
            n_out = lay.out_blocks if op == "fprop" else lay.in_blocks
            order = column_order(lay, op, c if grouped else 1)
            colmap = np.full(-(-n_out // c) * c, -1, dtype=np.int32)  # position -> column, -1: none
            colmap[:n_out] = order
            absent = lay.nnz if key[0] == "tma" else 0
            cache[(dev, key)] = (*(cupy.asarray(a) for a in rs_tables(lay, op, c, r, order, absent)),
                                 cupy.asarray(colmap))
        elif key[0] == "wide":  # ("wide", op, c, r)
            cache[(dev, key)] = tuple(cupy.asarray(a) for a in wide_tables(lay, key[1], key[2], key[3]))
        elif key[0] == "ffma":  # ("ffma", op, lpt): the op's lists and the CTAs' output columns
            lpt = lay.cols_longest_first if key[1] == "fprop" else lay.rows_longest_first
            cols = lpt if key[2] else np.arange(lay.out_blocks if key[1] == "fprop" else lay.in_blocks)
            cache[(dev, key)] = (*_tables(op_obj, key[1], dev), cupy.asarray(cols.astype(np.int32)))
        elif key == "updat":
            cache[(dev, key)] = (cupy.asarray(lay.rows), cupy.asarray(lay.cols))
        elif key[0] == "tiles":  # ("tiles", tr, tc, max_blocks)
            cache[(dev, key)] = tuple(cupy.asarray(a) for a in update_tiles(lay, *key[1:]))
        else:  # ("groups", g) or ("groups", g, xr)
            cache[(dev, key)] = cupy.asarray(update_groups(lay, *key[1:]))
    return cache[(dev, key)]


_SM_COUNT: dict[int, int] = {}


def _sm_count(dev):
    if dev not in _SM_COUNT:
        import cupy

        _SM_COUNT[dev] = cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]
    return _SM_COUNT[dev]


# The CTAs per SM that _update_splits aims for: the wgmma updates (updat_gmma*) / the others (updat_tc,
# the updat_ffma tiles of one block row). H100 (bench/update_splits.py, -20261126-1432, CUDA-graph µs,
# fp16 N = 4096, 1 against 4): b = 64 d = 0.2 / 0.1 / 0.05 118 / 62 / 53 against 161 / 99 / 76, b = 32
# d = 0.1 / 0.05 107 / 56 against 136 / 76, equal where neither splits: splitting a grid that already
# fills the SMs once only adds waves and fp32 partials there. The fp32 updat_ffma update at b = 64,
# d = 0.05 went the other way (bsmm-20261126-1436: 0.259 -> 0.391 ms with 1), so it keeps 4.
UPDATE_CTAS_PER_SM = 1
UPDATE_CTAS_PER_SM_OTHER = 4


def _update_splits(ctas, chunks, dev, per_sm=None):
    """Batch splits for the update (updat_tc, updat_gmma*, updat_ffma of one block row): enough CTAs for
    ~per_sm per SM (default UPDATE_CTAS_PER_SM_OTHER), each split at least 4 chunks long."""
    per_sm = UPDATE_CTAS_PER_SM_OTHER if per_sm is None else per_sm
    want = -(-per_sm * _sm_count(dev) // max(ctas, 1))
    return int(max(1, min(want, chunks // 4, 64)))


def tile_update_splits(ctas, chunks, dev, per_sm=2):
    """Batch splits for updat_tile_tc (per_sm CTAs fill an SM): the nearest whole number of waves, so that
    ~one wave of items runs unsplit (a split costs an fp32 partial per block and updat_reduce)."""
    want = round(per_sm * _sm_count(dev) / max(ctas, 1))
    return int(max(1, min(want, chunks // 4, 64)))


# ffma_update_splits' cost model, in units u of one chunk step of one CTA on a whole SM (H100, G = 8, b = 32:
# 8 · 32² · 32 rows · 2 flop at ~0.3 TFLOP/s per SM ≈ 1.75 µs): a CTA's fixed cost (first stage's loads,
# epilogue), and the workspace bytes moved in one u (~2.3 TB/s)
UPDAT_SPLIT_CTA_STEPS = 2.0
UPDAT_SPLIT_SM_FLOPS = 0.3e12
UPDAT_SPLIT_BYTES_PER_S = 2.3e12


def ffma_update_splits(ctas, chunks, nnz, block_size, group, nc, per_sm, dev):
    """Batch splits for updat_ffma (XR = 2 tiles): the count s minimizing the time of ctas·s CTAs of
    chunks/s + UPDAT_SPLIT_CTA_STEPS steps each, plus the workspace traffic (s partials written, half
    hidden behind other CTAs' FMAs, and read back by updat_reduce; its launch ~1 u). The CTAs' time is the
    mean of two bounds: whole waves of per_sm CTAs on every SM (per_sm CTAs needed to fill an SM: 1.1 waves
    cost 2) and CTAs spread evenly over the SMs (one CTA fills an SM: only the per-SM count rounds up)."""
    sms = _sm_count(dev)
    slots = per_sm * sms
    unit = group * block_size * block_size * nc * 2 / UPDAT_SPLIT_SM_FLOPS  # seconds
    ws_units = nnz * block_size * block_size * 4 / (UPDAT_SPLIT_BYTES_PER_S * unit)
    best, best_cost = 1, None
    for s in range(1, int(max(1, min(chunks // 4, 64))) + 1):
        steps = -(-chunks // s) + UPDAT_SPLIT_CTA_STEPS
        waves = -(-ctas * s // slots) * per_sm * steps
        spread = -(-ctas * s // sms) * steps
        cost = (waves + spread) / 2 + ((1.5 * s * ws_units + 1) if s > 1 else 0)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = s, cost
    return best


def _aligned(*arrays) -> bool:
    return all(a.data.ptr % 16 == 0 for a in arrays)


def _check_device(dev, **arrays):
    for name, a in arrays.items():
        if a is not None and a.device.id != dev:
            raise ValueError(f"{name}: expected an array on GPU {dev} (the current device), "
                             f"got GPU {a.device.id}")


_ARCH: dict[int, str] = {}


def _gmma_device(dev):
    if dev not in _ARCH:
        _ARCH[dev] = compiler.device_arch(dev)
    return _ARCH[dev] == GMMA_ARCH


def _use_gmma(op_obj, dtype, n, aligned, dev):
    """xw_gmma serves this call: wgmma device, fp16/bf16, feature axis 1, b = 32/64, aligned x, w, y."""
    b = op_obj.block_size
    if not (aligned and dtype != "float32" and op_obj.feature_axis == 1 and b in XW_GMMA_TILES):
        return False
    if force_variant is not None:  # a benchmark's choice (a tile of another kernel: False)
        if force_variant not in XW_GMMA_TILES[b]:
            return False
    elif not (gmma_enabled and n > SMALL_N):
        return False
    return _gmma_device(dev)


_SMEM: dict[int, tuple[int, int]] = {}


def _use_gmma_rs(op_obj, dtype, n, aligned, dev):
    """The xw_gmma_rs tile that serves this call, or None: wgmma device, fp16/bf16, feature axis 1, aligned
    x, w, y; a forced variant of it, or the block size's default (N > SMALL_N)."""
    b = op_obj.block_size
    tiles = XW_GMMA_RS_TILES.get(b, {})
    if not (aligned and dtype != "float32" and op_obj.feature_axis == 1 and tiles):
        return None
    if force_variant is not None:
        variant = force_variant if force_variant in tiles else None
    else:
        variant = xw_gmma_rs_default(b, op_obj.layout.density) if gmma_enabled and n > SMALL_N else None
    return variant if variant is not None and _gmma_device(dev) else None


def _use_tma(op_obj, dtype, n, aligned, dev):
    """The xw_tma tile that serves this call, or None: wgmma device, fp16/bf16, feature axis 1, aligned x, w,
    y, N < 2^31 (TMA coordinates are 32-bit); a forced variant of it, or the block size's default (N >
    SMALL_N)."""
    b = op_obj.block_size
    tiles = XW_TMA_TILES.get(b, {})
    if not (aligned and dtype != "float32" and op_obj.feature_axis == 1 and tiles and 0 < n < 2**31):
        return None
    if force_variant is not None:
        variant = force_variant if force_variant in tiles else None
    else:
        variant = xw_tma_default(b, op_obj.layout.density) if gmma_enabled and n > SMALL_N else None
    if variant is None:
        return None
    _, _, mi, _, _, rm, *_ = tiles[variant]
    row_tiles = -(-n // (128 * mi))
    if -(-row_tiles // rm) * rm > 65535:  # past the grid's y limit: the other kernels (or their error)
        return None
    return variant if _gmma_device(dev) else None


def _smem_limits(dev):
    """(shared memory per SM, opt-in maximum per block) in bytes."""
    if dev not in _SMEM:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(dev)
        _SMEM[dev] = (int(props["sharedMemPerMultiprocessor"]), int(props["sharedMemPerBlockOptin"]))
    return _SMEM[dev]


def _use_small(op_obj, dtype, n, aligned, dev):
    """xw_small serves this call: N ≤ SMALL_N, b = 32, feature axis 1, x and w aligned, tile fits."""
    if force_variant is not None:  # a benchmark's choice: xw_small only when named
        if force_variant != "xw_small":
            return False
    elif not small_enabled:
        return False
    if not (aligned and n <= SMALL_N and op_obj.block_size == XW_SMALL_BS and op_obj.feature_axis == 1):
        return False
    if (force_variant is None and small_variant is None and dtype != "float32"
            and op_obj.layout.nnz < SMALL_TC_MIN_BLOCKS_PER_SM * _sm_count(dev)):
        return False  # few blocks: the per-column mma.sync kernel is as fast (H100: d <= 0.05 at K = 12288)
    bm = 32 if n <= 32 else 64
    if small_ring(dtype, bm, small_variant) == 2:  # bulk copies: sm_90 and later
        if dev not in _ARCH:
            _ARCH[dev] = compiler.device_arch(dev)
        if int(_ARCH[dev][3:].rstrip("a")) < 90:
            return False
    return (xw_small_smem(dtype, bm, small_variant) + xw_small_static_smem(dtype, bm, small_variant)
            <= _smem_limits(dev)[1])


def _small_plan(op_obj, op, dtype, odt, n, dev):
    """xw_small's plan: grid = resident CTAs (SMs × CTAs per SM by shared memory; whole waves more when the
    CTAs' tables would not fit); the table key ("small", op, CTAs, EPS, BM, snap, C, all parts) names the work
    split."""
    bm = 32 if n <= 32 else 64
    warps, bpw, _, max_ent, max_stg, c = small_tile(dtype, bm, small_variant)
    smem = xw_small_smem(dtype, bm, small_variant)
    per_sm = max(1, _smem_limits(dev)[0] // (smem + xw_small_static_smem(dtype, bm, small_variant) + 1024))
    eps = warps * bpw
    _, gptr, weight = small_items(op_obj.layout, op, c)
    ctas = small_ctas(gptr, eps, _sm_count(dev) * per_sm, max_ent, max_stg, weight)
    spec = xw_small_spec(dtype, odt, bm, 0 if op == "fprop" else 1, small_variant)
    return (compiler.get_function(spec, smem), (ctas,), (warps * 32,), smem,
            ("small", op, ctas, eps, bm, small_snap(eps, max_ent, max_stg), c,
             _small_late(dtype, bm, small_variant) == 3))


def _small_buffers(op_obj, dev, stream, n_parts, bm, c):
    """(fp32 partials [n_parts, C, BM, 32], zeroed uint32 arrival counters [n_parts]) for xw_small, one pair
    per stream (launches on one stream are ordered; the kernel resets the counters it used)."""
    import cupy

    key = ("small_buffers", dev, stream.ptr, n_parts, bm, c)
    bufs = op_obj._gpu_tables.get(key)
    if bufs is None:
        bufs = op_obj._gpu_tables[key] = (cupy.empty((n_parts, c, bm, XW_SMALL_BS), dtype=cupy.float32),
                                          cupy.zeros(n_parts, dtype=cupy.uint32))
    return bufs


def _row_tiles(n, bm, b):
    """Row tiles of bm rows for a batch of n (the grid's y extent): a clear error past the grid limit."""
    n_tiles = -(-n // bm)
    if n_tiles > 65535:
        raise ValueError(f"x: batch of {n} exceeds the kernel's grid limit of {65535 * bm} "
                         f"for block_size {b}")
    return n_tiles


def _xw_plan(op_obj, op, dtype, odt, n, aligned_x, aligned_w, dev, aligned_y=True):
    """(function, grid, block, smem, table key) for fprop/bprop; cached per shape and alignment."""
    if dtype == "float32" and op_obj.allow_tf32:  # TF32 tensor cores (plans cached by _matmul_tf32)
        return (*_matmul_tf32.xw_plan(op_obj, op, n, aligned_x, aligned_w, dev), op)
    key = ("xw", op, dtype, odt, n, aligned_x, aligned_w, aligned_y, dev, force_variant, gmma_enabled,
           small_enabled, small_variant, ffma_enabled, group_columns)
    plan = op_obj._gpu_tables.get(key)
    if plan is None:
        b, axis = op_obj.block_size, op_obj.feature_axis
        f_out = op_obj.M if op == "fprop" else op_obj.K
        trans = 0 if op == "fprop" else 1
        if _use_small(op_obj, dtype, n, aligned_x and aligned_w, dev):
            plan = _small_plan(op_obj, op, dtype, odt, n, dev)
            op_obj._gpu_tables[key] = plan
            return plan
        tma = _use_tma(op_obj, dtype, n, aligned_x and aligned_w and aligned_y, dev)
        if tma is not None:
            c, cl, mi, _, minb, rm, pers, *_ = XW_TMA_TILES[b][tma]
            spec, smem = xw_tma_spec(dtype, odt, b, tma, trans), xw_tma_smem(b, tma)
            n_tiles = -(-_row_tiles(n, 128 * mi, b) // rm) * rm
            n_groups = -(-(f_out // b) // (c * cl))  # groups of c·cl columns (records of rs_tables)
            grid = (n_groups * cl, n_tiles)
            if pers:  # the CTAs the GPU holds at once (shared memory and registers), at most one per tile
                per_sm = max(1, min(minb, _smem_limits(dev)[0] // (smem + 2048)))
                grid = (min(n_groups * n_tiles, per_sm * _sm_count(dev)), 1)
            plan = (compiler.get_function(spec, smem), grid, (384,), smem,
                    ("tma", op, c * cl, 128 * mi, rm, n_groups, n_tiles, group_columns))
            op_obj._gpu_tables[key] = plan
            return plan
        rs = _use_gmma_rs(op_obj, dtype, n, aligned_x and aligned_w and aligned_y, dev)
        if rs is not None:
            tile = XW_GMMA_RS_TILES[b][rs]
            c, r = tile[0], tile[5]
            spec, smem = xw_gmma_rs_spec(dtype, odt, b, rs, trans), xw_gmma_rs_smem(b, rs)
            n_tiles = _row_tiles(n, 128, b)
            plan = (compiler.get_function(spec, smem), (-(-(f_out // b) // c), n_tiles), (256,), smem,
                    ("rs", op, c, r, group_columns))
            op_obj._gpu_tables[key] = plan
            return plan
        if _use_gmma(op_obj, dtype, n, aligned_x and aligned_w and aligned_y, dev):
            variant = force_variant or next(iter(XW_GMMA_TILES[b]))
            wg, mi, _ = XW_GMMA_TILES[b][variant]
            spec, smem = xw_gmma_spec(dtype, odt, b, variant, trans), xw_gmma_smem(b, variant)
            bm = wg * mi * 64
            n_tiles = _row_tiles(n, bm, b)
            plan = (compiler.get_function(spec, smem), (f_out // b, n_tiles), (wg * 128,), smem, op)
            op_obj._gpu_tables[key] = plan
            return plan
        wide = force_variant in XW_WIDE_TILES.get(b, {}) or (
            force_variant is None and b in XW_WIDE_DEFAULT and n > SMALL_N)
        if wide and dtype != "float32" and aligned_w and aligned_x and (axis == 1 or n % 8 == 0):
            variant = force_variant or next(iter(XW_WIDE_TILES[b]))
            r, c, bm, wm, wn, _, _ = XW_WIDE_TILES[b][variant]
            spec = xw_wide_spec(dtype, odt, b, variant, axis, trans)
            smem, threads = xw_wide_smem(b, variant, axis), wm * wn * 32
            n_tiles = _row_tiles(n, bm, b)
            plan = (compiler.get_function(spec, smem), (-(-(f_out // b) // c), n_tiles), (256,), smem,
                    ("wide", op, c, r))
            op_obj._gpu_tables[key] = plan
            return plan
        ffma = xw_ffma_variant(b, n, dtype if odt == "float32" else None,
                               aligned_x and aligned_w and (axis == 1 or n % 4 == 0))
        if ffma is not None:
            bm = xw_ffma_rows(b, ffma)
            spec, smem = xw_ffma_spec(b, ffma, axis, trans), xw_ffma_smem(b, ffma)
            n_tiles = _row_tiles(n, bm, b)
            threads, tpc = XW_FFMA_TILES[b][ffma][0] * 32, XW_FFMA_TILES[b][ffma][4]
            plan = (compiler.get_function(spec, smem), (f_out // b, -(-n_tiles // tpc)), (threads,), smem,
                    xw_ffma_tables(b, ffma, op))
            op_obj._gpu_tables[key] = plan
            return plan
        variant = (force_variant if force_variant in XW_TC_TILES[b]
                   else xw_tc_variant(b, n, op_obj.layout.density))
        if dtype != "float32" and aligned_w and (axis == 0 or aligned_x):
            bm, wm, wn, _, _ = XW_TC_TILES[b][variant]
            aligned = 1 if axis == 1 else int(aligned_x and n % 8 == 0)
            spec = xw_tc_spec(dtype, odt, b, variant, axis, trans, aligned)
            smem, threads = xw_tc_smem(b, variant, axis), wm * wn * 32
        else:
            small = n <= SMALL_N
            bm, tm, tn = (XW_SIMT_SMALL if small else XW_SIMT_TILES)[b]
            spec = xw_simt_spec(dtype, odt, b, axis, trans, small)
            smem, threads = 0, (bm // tm) * (b // tn)
        n_tiles = _row_tiles(n, bm, b)
        plan = (compiler.get_function(spec, smem), (f_out // b, n_tiles), (threads,), smem, op)
        op_obj._gpu_tables[key] = plan
    return plan


def matmul(op_obj, op, x, w, out, accumulate, out_dtype):
    """fprop / bprop on CuPy arrays (validated by the caller)."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    _check_device(dev, x=x, w=w, out=out)
    axis = op_obj.feature_axis
    n = x.shape[1 - axis]
    f_in, f_out = (op_obj.K, op_obj.M) if op == "fprop" else (op_obj.M, op_obj.K)
    dtype, odt = dtype_name(x.dtype), dtype_name(out_dtype)
    if _dense_route.wanted(op_obj, op, dtype, n, w):
        return _dense_route.matmul(op_obj, op, x, w, out, accumulate, out_dtype, dev)
    fn, grid, block, smem, tables = _xw_plan(op_obj, op, dtype, odt, n, x.data.ptr % 16 == 0,
                                             w.data.ptr % 16 == 0, dev, out is None or out.data.ptr % 16 == 0)
    y = out if out is not None else cupy.empty((n, f_out) if axis == 1 else (f_out, n), dtype=out_dtype)
    if tables[0] == "small":
        entries, ent_ptr, stages, stage_ptr, zero_cols, n_zero, parts = _tables(op_obj, tables, dev)
        stream = cupy.cuda.get_current_stream()
        warps = block[0] // 32
        # LATE = 3: a partial a piece a warp; a piece is a (column, CTA) overlap: at most columns + CTAs - 1
        n_ws = (parts.shape[0] + grid[0]) * warps if tables[7] else parts.shape[0]
        ws, counters = _small_buffers(op_obj, dev, stream, n_ws, tables[4], tables[6])
        acc = np.int32(bool(accumulate))
        fn(grid, block, (x, w, y, entries, ent_ptr, stages, stage_ptr, zero_cols, n_zero, parts, ws, counters,
                         np.int64(n), np.int64(f_in), np.int64(f_out), acc),
           shared_mem=smem, stream=stream)
        if tables[7]:  # every column's pieces summed by a second launch (parts: per column)
            red = compiler.get_function(small_reduce_spec(odt, tables[4], warps))
            red((parts.shape[0],), (256,), (ws, parts, y, np.int64(n), np.int64(f_out), acc), stream=stream)
        return y
    if tables[0] == "tma":  # x and w through tensor maps (boxes of BM rows × b and b × b)
        b = op_obj.block_size
        tx = _tma.tiled_2d(x.data.ptr, dtype, n, f_in, tables[3], b)
        tw = _tma.tiled_2d(w.data.ptr, dtype, op_obj.layout.nnz * b, b, b // tables[4], b)
        offsets, records, colmap = _tables(op_obj, (*tables[:3], tables[7]), dev)
        n_groups, n_tiles = tables[5], tables[5] * tables[6]
        acc = np.int32(bool(accumulate))
        fn(grid, block, (tx, tw, y, offsets, records, colmap, np.int64(n), np.int64(f_out), acc,
                         np.int32(n_groups), np.int32(n_tiles)),
           shared_mem=smem, stream=cupy.cuda.get_current_stream())
        return y
    # (offsets, entries); xw_wide_tc: (offsets, entries, masks, slots); xw_gmma_rs: (offsets, records, colmap)
    lists = _tables(op_obj, tables, dev)
    fn(grid, block, (x, w, y, *lists, np.int64(n), np.int64(f_in), np.int64(f_out),
                     np.int32(bool(accumulate))),
       shared_mem=smem, stream=cupy.cuda.get_current_stream())
    return y


_PAIR_TABLES = 8  # device copies of recent update pointer tables kept per op


def _pair_table(op_obj, dev, host):
    """The update's (x pointers, dy pointers, lengths, chunk offsets) table on the device, reused when the
    same arrays come back (a training loop's caching allocator hands out the same addresses each step):
    a fresh upload from pageable memory stalls the host until the stream has drained, which at low
    density costs more than the kernel. The table holds values only, so a hit is always exact."""
    import cupy

    if _PAIR_TABLES <= 0:
        return cupy.asarray(host)
    cache = op_obj._gpu_tables.setdefault(("pair_tables", dev), {})
    key = host.tobytes()
    table = cache.pop(key, None)
    if table is None:
        table = cupy.asarray(host)
        while len(cache) >= _PAIR_TABLES:
            cache.pop(next(iter(cache)))
    cache[key] = table  # most recent last
    return table


def _split_counters(op_obj, dev, n_groups, stream):
    """Zeroed uint32 arrival counters [n_groups] for the in-launch split reduction, one array per stream
    (the kernel's last CTA of a group resets its counter, so they stay zero between launches; launches on one
    stream are ordered, and another stream gets its own array)."""
    import cupy

    key = ("split_counters", dev, stream.ptr, n_groups)
    counters = op_obj._gpu_tables.get(key)
    if counters is None:
        counters = op_obj._gpu_tables[key] = cupy.zeros(n_groups, dtype=cupy.uint32)
    return counters


def _updat_plan(op_obj, dtype, odt, aligned, n4, n8, dev):
    """(function, smem, threads, grid, extra arguments, NC, fused, per_sm, tile) of the update; cached per
    dtype, output dtype, alignment and the batch sizes' divisibility (n4: all N % 4 == 0, n8: all N % 8 == 0).
    per_sm > 0: splits by ffma_update_splits with per_sm CTAs per SM; tile (updat_tile_tc): by
    tile_update_splits; else by _update_splits."""
    key = ("updat", dtype, odt, aligned, n4, n8, dev, gmma_enabled, updat_gmma_variant, ffma_enabled,
           updat_ffma_variant, updat_tile_variant)
    plan = op_obj._gpu_tables.get(key)
    if plan is not None:
        return plan
    b, axis = op_obj.block_size, op_obj.feature_axis
    tf32, per_sm, tile = None, 0, False
    if dtype == "float32" and op_obj.allow_tf32:  # None for block_size 8: updat_simt below
        tf32 = _matmul_tf32.updat_launch_config(op_obj, axis, aligned and (axis == 1 or n4))
    if tf32 is not None:
        spec, smem, threads, g, nc = tf32
        groups = _tables(op_obj, ("groups", g), dev)
        grid, extra = groups.shape[0], (groups,)
    elif (dtype == odt == "float32" and b in UPDAT_FFMA_TILES and aligned and (axis == 1 or n4)
          and (updat_ffma_variant in UPDAT_FFMA_TILES[b] or (ffma_enabled and updat_ffma_variant is None))):
        tiles = UPDAT_FFMA_TILES[b]
        variant = updat_ffma_variant if updat_ffma_variant in tiles else next(iter(tiles))
        g, nc, _, _, minb, xr, tail, _ = UPDAT_FFMA_TILES[b][variant]
        spec, smem = updat_ffma_spec(b, variant, axis), updat_ffma_smem(b, variant)
        groups = _tables(op_obj, ("groups", g) if xr == 1 else ("groups", g, xr), dev)
        grid, threads, extra = groups.shape[0], g * (b // 8) ** 2, (groups,)
        per_sm = -1 if xr == 2 else 0  # -1: computed from the compiled kernel below
    elif dtype != "float32" and axis == 1 and aligned and (
            updat_tile_variant in UPDAT_TILE_TILES.get(b, {})
            or (updat_tile_variant is None and updat_gmma_variant is None and gmma_enabled
                and op_obj.layout.density >= UPDAT_TILE_MIN_DENSITY.get(b, 2.0))):
        variant = updat_tile_variant or next(iter(UPDAT_TILE_TILES[b]))
        tr, tc, warps, bpw, nc, _ = UPDAT_TILE_TILES[b][variant]
        spec, smem = updat_tile_spec(dtype, odt, b, variant), updat_tile_smem(b, variant)
        extra = _tables(op_obj, ("tiles", tr, tc, warps * bpw), dev)
        grid, threads, tile = extra[0].shape[0], warps * 32, True
    elif (gmma_enabled and dtype != "float32" and b in UPDAT_GMMA_TILES and axis == 1 and aligned
          and _gmma_device(dev) and (updat_gmma_variant in UPDAT_GMMA_TILES[b]
                                     or op_obj.layout.density >= UPDAT_GMMA_MIN_DENSITY.get(b, 0.0))):
        tiles = UPDAT_GMMA_TILES[b]
        variant = updat_gmma_variant if updat_gmma_variant in tiles else (
            _by_density(UPDAT_GMMA_DEFAULT, b, op_obj.layout.density) or next(iter(tiles)))
        nc = tiles[variant][1]
        spec, smem = updat_gmma_spec(dtype, odt, b, variant), updat_gmma_smem(b, variant)
        groups = _tables(op_obj, ("groups", updat_gmma_group(b, variant)), dev)
        grid, threads, extra = groups.shape[0], updat_gmma_threads(b, variant), (groups,)
    elif dtype != "float32" and b in UPDAT_TC_TILES and (axis == 0 or aligned):
        g, warps, nc, _ = UPDAT_TC_TILES[b]
        spec = updat_tc_spec(dtype, odt, b, axis, 1 if axis == 1 else int(aligned and n8))
        smem = updat_tc_smem(b, axis)
        groups = _tables(op_obj, ("groups", g), dev)
        grid, threads, extra = groups.shape[0], warps * 32, (groups,)
    else:
        nc, smem, threads = UPDAT_SIMT_NC, 0, 256
        spec = updat_simt_spec(dtype, odt, b, axis)
        grid, extra = op_obj.layout.nnz, ()
    fn = compiler.get_function(spec, smem)
    if per_sm < 0:  # CTAs per SM: by shared memory (+ 1 KiB reserved per CTA) and registers
        regs = getattr(fn, "num_regs", 0) or 255
        by_regs = 65536 // (-(-regs // 8) * 8 * threads)
        static = 0 if tail else 16 * (g + 2 * xr)  # TAIL = 0: the bookkeeping in static shared memory
        per_sm = max(1, min(by_regs, _smem_limits(dev)[0] // (smem + 1024 + static)))
    # the wgmma updates sum their split partials in the same launch (no updat_reduce)
    plan = (fn, smem, threads, grid, extra, nc, spec.source == "bsmm_gmma.cu",
            per_sm, tile)
    op_obj._gpu_tables[key] = plan
    return plan


def updat(op_obj, xs, dys, out, accumulate, out_dtype):
    """Grouped update on CuPy arrays: one launch for all (x, dy) pairs."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    for i, (x, dy) in enumerate(zip(xs, dys)):
        _check_device(dev, **{f"x[{i}]": x, f"dy[{i}]": dy})
    _check_device(dev, out=out)
    axis = op_obj.feature_axis
    ns = [x.shape[1 - axis] for x in xs]
    if _dense_route.wanted(op_obj, "updat", dtype_name(xs[0].dtype), sum(ns)):
        return _dense_route.updat(op_obj, xs, dys, out, accumulate, out_dtype, dev)
    fn, smem, threads, grid, extra, nc, fused, per_sm, tile = _updat_plan(
        op_obj, dtype_name(xs[0].dtype), dtype_name(out_dtype), _aligned(*xs, *dys),
        all(n % 4 == 0 for n in ns), all(n % 8 == 0 for n in ns), dev)
    dw = out if out is not None else cupy.empty(op_obj.w_shape, dtype=out_dtype)
    rows, cols = _tables(op_obj, "updat", dev)
    stream = cupy.cuda.get_current_stream()
    chunks = [0]
    for n in ns:
        chunks.append(chunks[-1] + -(-n // nc))
    nnz = op_obj.layout.nnz
    if per_sm:
        g = extra[0].shape[1]
        splits = ffma_update_splits(grid, chunks[-1], nnz, op_obj.block_size, g, nc, per_sm, dev)
    else:
        splits = (tile_update_splits(grid, chunks[-1], dev) if tile else
                  _update_splits(grid, chunks[-1], dev, UPDATE_CTAS_PER_SM if fused else None))
    ws = cupy.empty((splits, nnz) + op_obj.w_shape[1:], dtype=np.float32) if splits > 1 else None
    p = len(xs)
    table = _pair_table(op_obj, dev, np.array(
        [x.data.ptr for x in xs] + [dy.data.ptr for dy in dys] + ns + chunks, dtype=np.int64))
    args = (table[:p], table[p:2 * p], table[2 * p:3 * p], table[3 * p:], np.int32(p), *extra, rows, cols, dw,
            ws if ws is not None else np.uint64(0), np.int32(nnz), np.int64(op_obj.K), np.int64(op_obj.M),
            np.int32(bool(accumulate)))
    if fused:
        args += (_split_counters(op_obj, dev, grid, stream) if splits > 1 else np.uint64(0),)
    fn((grid, splits), (threads,), args, shared_mem=smem, stream=stream)
    if splits > 1 and not fused:
        count = dw.size
        reduce = compiler.get_function(updat_reduce_spec(dtype_name(out_dtype)))
        reduce((min(-(-count // 256), 4 * _sm_count(dev)),), (256,),
               (ws, dw, np.int32(splits), np.int64(count), np.int32(bool(accumulate))), stream=stream)
    return dw
