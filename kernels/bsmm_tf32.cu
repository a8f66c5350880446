// Block-sparse matmul on the TF32 tensor cores, for float32 arrays (opt-in: allow_tf32=True).
//
// Same contract, grids, lists and arguments as xw_tc / updat_tc in bsmm.cu (see the notation there):
//     fprop/bprop  Y[:, c] = Σ_{(r, k) ∈ list(c)} X[:, r] · op(w[k])
//     update       dw[k] = Σ_p Σ_n x_p[n, rows[k]·b + i] · dy_p[n, cols[k]·b + j]
// Operands stay fp32 in memory and in shared memory (cp.async 16-byte copies, multi-stage pipelines);
// each fragment element is rounded to TF32 (cvt.rna, 10-bit mantissa) just before
// mma.sync m16n8k8.tf32 with fp32 accumulation. Fragments are read with plain 32-bit shared loads
// (ldmatrix moves 16-bit elements); the row strides below make every fragment load bank-conflict-free.
// MMA fragment layout (g = lane / 4, t = lane % 4):
//     A 16×8 (row):  a0 = (g, t)   a1 = (g + 8, t)   a2 = (g, t + 4)   a3 = (g + 8, t + 4)
//     B 8×8  (col):  b0 = (k = t, n = g)   b1 = (k = t + 4, n = g)
//     C 16×8:        c0, c1 = (g, 2t), (g, 2t + 1)   c2, c3 = (g + 8, 2t), (g + 8, 2t + 1)
// ALIGNED = 0 replaces every 16-byte async copy (x, dy and w) by element loads: pointers that are not
// 16-byte aligned, or AXIS = 0 with a batch size that is not a multiple of 4. All global indices are 64-bit.
#include "common.cuh"
#include "update.cuh"

// ------------------------------------------------------------------------------------------------
// PTX wrappers (own names: this file is compiled on its own, but keeps clear of bsmm.cu's helpers)

__device__ __forceinline__ unsigned tf32_smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes < 16 zero-fills the rest (0 = all zeros).
__device__ __forceinline__ void tf32_cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(tf32_smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void tf32_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void tf32_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// fp32 -> tf32 bits, rounded to nearest (ties away from zero), as the mma expects its operands.
__device__ __forceinline__ unsigned tf32_round(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
    return r;
}

__device__ __forceinline__ void tf32_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared row strides (floats, multiples of 4 so rows stay 16-byte aligned for cp.async).
// tf32_stride4: stride/4 odd (≡ 4, 12, 20, 28 mod 32) -- the 8 rows g = 0..7 read at column t = 0..3
//   fall in 8 distinct 4-bank groups (fragments read along a row: A [m][k], B [n][k]).
// tf32_stride8: stride/8 odd (≡ 8, 24 mod 32) -- the 4 rows t = 0..3 read at columns g = 0..7 fall in
//   4 distinct 8-bank groups (fragments read down a column: A [k][m], B [k][n]).
__host__ __device__ constexpr int tf32_stride4(int n) { return ((n / 4) % 2 == 0) ? n + 4 : n; }
__host__ __device__ constexpr int tf32_stride8(int n) { return ((n / 8) % 2 == 0) ? n + 8 : n; }

// Fragment loads from fp32 shared tiles, rounded to TF32. `p` points at this lane's first element:
// (row g, column t) of the operand's 16×8 (A) or 8×8 (B) piece, S is the tile's row stride.
// A stored [m][k]: a0..a3 = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4).
__device__ __forceinline__ void tf32_frag_a_mk(unsigned (&a)[4], const float* p, int S) {
    a[0] = tf32_round(p[0]); a[1] = tf32_round(p[8 * S]); a[2] = tf32_round(p[4]); a[3] = tf32_round(p[8 * S + 4]);
}
// A stored [k][m] (p at (k = t, m = g)).
__device__ __forceinline__ void tf32_frag_a_km(unsigned (&a)[4], const float* p, int S) {
    a[0] = tf32_round(p[0]); a[1] = tf32_round(p[8]); a[2] = tf32_round(p[4 * S]); a[3] = tf32_round(p[4 * S + 8]);
}
// B stored [n][k] (p at (n = g, k = t)): b0 = (k = t, n = g), b1 = (k = t + 4, n = g).
__device__ __forceinline__ void tf32_frag_b_nk(unsigned (&b)[2], const float* p) {
    b[0] = tf32_round(p[0]); b[1] = tf32_round(p[4]);
}
// B stored [k][n] (p at (k = t, n = g)).
__device__ __forceinline__ void tf32_frag_b_kn(unsigned (&b)[2], const float* p, int S) {
    b[0] = tf32_round(p[0]); b[1] = tf32_round(p[4 * S]);
}

// cp.async pipeline of STAGES slots over `count` stages; load(e, slot) issues stage e's copies.
// Prologue: the first STAGES - 1 stages in flight (one commit group each, empty past `count`).
template <int STAGES, typename Load>
__device__ __forceinline__ void tf32_pipeline_prologue(int count, Load& load) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < count) load(s, s);
        tf32_cp_async_commit();
    }
}
// Before computing stage e: wait for it, then (after the barrier, so every warp is done with the slot
// of stage e - 1) start loading stage e + STAGES - 1 into that slot.
template <int STAGES, typename Load>
__device__ __forceinline__ void tf32_pipeline_advance(int e, int count, Load& load) {
    tf32_cp_async_wait<STAGES - 2>();
    __syncthreads();
    int next = e + STAGES - 1;
    if (next < count) load(next, next % STAGES);
    tf32_cp_async_commit();
}

// Copy a [ROWS][COLS] fp32 block (row-major, contiguous: one w block) into shared rows of stride S.
template <int ROWS, int COLS, int S, int THREADS, int ALIGNED>
__device__ __forceinline__ void tf32_load_block(float* dst, const float* __restrict__ src) {
    if (ALIGNED) {
#pragma unroll 1
        for (int ch = threadIdx.x; ch < ROWS * COLS / 4; ch += THREADS) {
            int row = ch / (COLS / 4), c4 = (ch % (COLS / 4)) * 4;
            tf32_cp_async16(dst + row * S + c4, src + row * COLS + c4, 16);
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * COLS; idx += THREADS) dst[(idx / COLS) * S + idx % COLS] = src[idx];
    }
}

// Copy the activation tile of features [col, col + FEATS) and batch rows [n0, n0 + NB) of a [nt, feats]
// (AXIS 1) or [feats, nt] (AXIS 0) array into shared memory as stored: AXIS 1 -> [NB][FEATS],
// AXIS 0 -> [FEATS][NB], rows of stride S; batch rows past nt read as zeros.
template <int NB, int FEATS, int S, int AXIS, int THREADS, int ALIGNED>
__device__ __forceinline__ void tf32_load_act(float* dst, const float* __restrict__ src, i64 nt, i64 feats,
                                              i64 n0, i64 col) {
    constexpr int R = AXIS == 1 ? NB : FEATS, C = AXIS == 1 ? FEATS : NB;
    if (ALIGNED) {
#pragma unroll 1
        for (int ch = threadIdx.x; ch < R * C / 4; ch += THREADS) {
            int row = ch / (C / 4), c4 = (ch % (C / 4)) * 4;
            bool ok;
            const float* p;
            if (AXIS == 1) {
                i64 n = n0 + row;
                ok = n < nt;
                p = src + (ok ? n * feats + col + c4 : 0);
            } else {
                i64 n = n0 + c4;
                ok = n < nt;  // nt % 4 == 0 here: a chunk is wholly in or out
                p = src + (ok ? (col + row) * nt + n : 0);
            }
            tf32_cp_async16(dst + row * S + c4, p, ok ? 16 : 0);
        }
    } else {
        for (int idx = threadIdx.x; idx < R * C; idx += THREADS) {
            int row = idx / C, cc = idx % C;
            float v = 0.f;
            if (AXIS == 1) {
                i64 n = n0 + row;
                if (n < nt) v = src[n * feats + col + cc];
            } else {
                i64 n = n0 + cc;
                if (n < nt) v = src[(col + row) * nt + n];
            }
            dst[row * S + cc] = v;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// xw_tf32: TF32 tensor-core fprop/bprop for float32.
// One CTA computes the output tile Y[n0 : n0 + BM, c·BS : (c+1)·BS] for block column c = blockIdx.x
// and batch tile n0 = blockIdx.y·BM, looping over the blocks of list(c) through a STAGES-deep
// cp.async pipeline (stage = one x tile [BM × BS] and one w block [BS × BS], both fp32). Warps form a
// WARPS_M × WARPS_N grid over the tile; each warp runs MI × NI m16n8k8 mmas per k-step of 8.
// Shared layouts: x as stored (AXIS 1 [m][k], stride/4 odd; AXIS 0 [k][m], stride/8 odd);
// w block as stored (fprop: rows k, stride/8 odd; bprop: rows n, stride/4 odd). The epilogue goes
// through an fp32 tile [BM][BS + 4] so the stores follow y's contiguous axis.
template <int BS, int BM, int WARPS_M, int WARPS_N, int STAGES, int AXIS, int TRANS_W, int ALIGNED>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
xw_tf32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
        const int* __restrict__ offsets, const int2* __restrict__ entries, i64 n_total, i64 in_features,
        i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BS / WARPS_N;  // warp tile
    constexpr int MI = WTM / 16, NI = WTN / 8;
    static_assert(STAGES >= 2 && MI >= 1 && NI >= 1 && WTM % 16 == 0 && WTN % 8 == 0, "bad warp tiling");
    constexpr int A_ROWS = AXIS == 1 ? BM : BS;
    constexpr int SA = AXIS == 1 ? tf32_stride4(BS) : tf32_stride8(BM);
    constexpr int SB = TRANS_W ? tf32_stride4(BS) : tf32_stride8(BS);
    constexpr int A_ELEMS = A_ROWS * SA, B_ELEMS = BS * SB, STAGE = A_ELEMS + B_ELEMS;
    constexpr int TS = BS + 4;  // epilogue tile stride
    static_assert(SA % 4 == 0 && SB % 4 == 0 && STAGE % 4 == 0, "shared rows must stay 16-byte aligned");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* smem = reinterpret_cast<float*>(smem_raw);

    const int c = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[c], count = offsets[c + 1] - begin;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int g = lane / 4, t = lane % 4;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    auto load_stage = [&](int e, int slot) {
        int2 ent = entries[begin + e];
        float* As = smem + slot * STAGE;
        tf32_load_act<BM, BS, SA, AXIS, THREADS, ALIGNED>(As, x, n_total, in_features, n0, (i64)ent.x * BS);
        tf32_load_block<BS, BS, SB, THREADS, ALIGNED>(As + A_ELEMS, w + (i64)ent.y * BS * BS);
    };

    tf32_pipeline_prologue<STAGES>(count, load_stage);
    for (int e = 0; e < count; e++) {
        tf32_pipeline_advance<STAGES>(e, count, load_stage);

        const float* As = smem + (e % STAGES) * STAGE;
        const float* Bs = As + A_ELEMS;
#pragma unroll
        for (int kk = 0; kk < BS; kk += 8) {
            unsigned a[MI][4], bfr[NI][2];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                int m = wm * WTM + i * 16 + g;
                if (AXIS == 1) tf32_frag_a_mk(a[i], As + m * SA + kk + t, SA);
                else tf32_frag_a_km(a[i], As + (kk + t) * SA + m, SA);
            }
#pragma unroll
            for (int j = 0; j < NI; j++) {
                int n = wn * WTN + j * 8 + g;
                if (TRANS_W) tf32_frag_b_nk(bfr[j], Bs + n * SB + kk + t);  // B[k][n] = w[n][k]: rows n
                else tf32_frag_b_kn(bfr[j], Bs + (kk + t) * SB + n, SB);    // B[k][n] = w[k][n]: rows k
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++) tf32_mma(acc[i][j], a[i], bfr[j][0], bfr[j][1]);
        }
    }
    tf32_cp_async_wait<0>();
    __syncthreads();

    // epilogue through shared memory (fp32 tile [BM][BS + 4], reusing the pipeline's buffers)
    float* tile = smem;
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++) {
            int m = wm * WTM + i * 16 + g, f = wn * WTN + j * 8 + 2 * t;
            tile[m * TS + f] = acc[i][j][0];
            tile[m * TS + f + 1] = acc[i][j][1];
            tile[(m + 8) * TS + f] = acc[i][j][2];
            tile[(m + 8) * TS + f + 1] = acc[i][j][3];
        }
    __syncthreads();
    const i64 col0 = (i64)c * BS;
    for (int idx = threadIdx.x; idx < BM * BS; idx += THREADS) {
        int m, f;
        if (AXIS == 1) { m = idx / BS; f = idx % BS; }
        else { f = idx / BM; m = idx % BM; }
        i64 n = n0 + m;
        if (n >= n_total) continue;
        i64 off = AXIS == 1 ? n * out_features + col0 + f : (col0 + f) * n_total + n;
        float v = tile[m * TS + f];
        if (accumulate) v += y[off];
        y[off] = v;
    }
}

// ------------------------------------------------------------------------------------------------
// updat_tf32: TF32 tensor-core update for float32 (BS 16, 32, 64; BS = 8 has no 16-row warp tile and
// stays on updat_simt). Same grouping, chunking and split scheme as updat_tc in bsmm.cu:
// one CTA per group of up to G nonzero blocks of one block row (blockIdx.x = group; `groups`
// [n_groups][G] holds their indices in w, -1 for an empty slot); blockIdx.y = batch split, which
// writes fp32 partials to ws [splits][nnz][b][b] when gridDim.y > 1 (updat_reduce<float> sums them).
// The x chunk of the row [NC batch rows × BS] is loaded once per stage and shared by the G blocks;
// each block has its own dy chunk. Warp w owns rows [(w % WPB)·WTM, +WTM) of block w / WPB over the
// whole chunk: no cross-warp reduction, fixed summation order (bit-reproducible).
// Shared layouts: AXIS 1 tiles [NC][BS] (batch rows, stride/8 odd), AXIS 0 tiles [BS][NC]
// (feature rows, stride/4 odd) -- both make the A (x) and B (dy) fragment loads conflict-free.
template <int BS, int G, int WARPS, int NC, int STAGES, int AXIS, int ALIGNED>
__global__ void __launch_bounds__(WARPS * 32)
updat_tf32(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
           const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
           const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
           float* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features,
           int accumulate) {
    constexpr int THREADS = WARPS * 32;
    constexpr int WPB = WARPS / G;  // warps per block
    constexpr int WTM = BS / WPB;   // rows of the block per warp
    constexpr int MI = WTM / 16, NI = BS / 8;
    static_assert(STAGES >= 2 && BS >= 16 && WTM % 16 == 0 && NC % 8 == 0 && WARPS % G == 0,
                  "bad updat_tf32 tiling");
    constexpr int R = AXIS == 1 ? NC : BS;
    constexpr int S = AXIS == 1 ? tf32_stride8(BS) : tf32_stride4(NC);
    constexpr int TILE = R * S, STAGE = (1 + G) * TILE;
    static_assert(S % 4 == 0 && TILE % 4 == 0, "shared rows must stay 16-byte aligned");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* smem = reinterpret_cast<float*>(smem_raw);
    __shared__ int blk_s[G];
    __shared__ long long ycol_s[G];
    if (threadIdx.x < G) {
        int k = groups[(i64)blockIdx.x * G + threadIdx.x];
        blk_s[threadIdx.x] = k;
        ycol_s[threadIdx.x] = k >= 0 ? (long long)cols[k] * BS : -1;
    }
    __syncthreads();
    const i64 xcol = (i64)rows[blk_s[0]] * BS;
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gw = warp / WPB, m0 = (warp % WPB) * WTM;
    const int g = lane / 4, t = lane % 4;
    const bool active = blk_s[gw] >= 0;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    UpdatePairs<float> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<float> ch = walk.chunk(q0 + q, NC);
        const float* xp = ch.x;
        const float* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        float* base = smem + slot * STAGE;
        tf32_load_act<NC, BS, S, AXIS, THREADS, ALIGNED>(base, xp, nt, in_features, n0, xcol);
#pragma unroll
        for (int s2 = 0; s2 < G; s2++) {
            if (ycol_s[s2] < 0) continue;  // empty slot: nothing to load
            tf32_load_act<NC, BS, S, AXIS, THREADS, ALIGNED>(base + (1 + s2) * TILE, dyp, nt, out_features, n0,
                                                            ycol_s[s2]);
        }
    };

    tf32_pipeline_prologue<STAGES>(total, load_stage);
    for (int q = 0; q < total; q++) {
        tf32_pipeline_advance<STAGES>(q, total, load_stage);
        if (!active) continue;
        const float* Xs = smem + (q % STAGES) * STAGE;
        const float* Ys = Xs + (1 + gw) * TILE;
#pragma unroll
        for (int kk = 0; kk < NC; kk += 8) {
            // A[m = x feature][k = batch]; B[k = batch][n = dy feature]
            unsigned a[MI][4], bfr[NI][2];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                int m = m0 + i * 16 + g;
                if (AXIS == 1) tf32_frag_a_km(a[i], Xs + (kk + t) * S + m, S);  // Xs[n][i]
                else tf32_frag_a_mk(a[i], Xs + m * S + kk + t, S);             // Xs[i][n]
            }
#pragma unroll
            for (int j = 0; j < NI; j++) {
                int n = j * 8 + g;
                if (AXIS == 1) tf32_frag_b_kn(bfr[j], Ys + (kk + t) * S + n, S);  // Ys[n][j]
                else tf32_frag_b_nk(bfr[j], Ys + n * S + kk + t);                // Ys[j][n]
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++) tf32_mma(acc[i][j], a[i], bfr[j][0], bfr[j][1]);
        }
    }
    tf32_cp_async_wait<0>();
    if (!active) return;
    const i64 k = blk_s[gw];
    float* out = dw + k * BS * BS;
    float* part = ws + ((i64)blockIdx.y * nnz + k) * BS * BS;  // split partials (gridDim.y > 1)
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = m0 + i * 16 + g + h * 8, f = j * 8 + 2 * t;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (gridDim.y > 1) {
                    *reinterpret_cast<float2*>(part + m * BS + f) = make_float2(v0, v1);
                    continue;
                }
                float* o = out + m * BS + f;  // dw may be any 4-byte aligned view: scalar stores
                if (accumulate) { v0 += o[0]; v1 += o[1]; }
                o[0] = v0;
                o[1] = v1;
            }
}
