// Block-sparse fprop / bprop on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only).
//
// Same contract as xw_tc in bsmm.cu (AXIS = 1 only: x is [N, in_features], y is [N, out_features]):
//     Y[:, c] = Σ_{(r, k) ∈ list(c)} X[:, r] · op(w[k]),   op = identity (fprop) or transpose (bprop),
// list(c) given by offsets [n_out + 1] and entries [nnz] of int2 (r, k); an empty list writes zeros.
//
// One CTA computes Y[n0 : n0 + BM, c·BS : (c+1)·BS] with WG warpgroups; warpgroup g owns rows
// g·MI·64 .. +MI·64 and issues, per 16 of k, MI wgmma m64nBSk16 whose A (the x tile) and B (the w block)
// both come from shared memory through matrix descriptors. Tiles are stored row by row (BS·2 bytes a
// row: 128 for BS = 64, 64 for BS = 32) in the canonical swizzled layout of that row width (byte offset
// bits 4-6 (128B) or 4-5 (64B) XOR bits 7-9 / 7-8: the 16-byte chunk j of row r lands in chunk
// j ^ (r mod 8) for 128-byte rows, j ^ ((r / 2) mod 4) for 64-byte rows), so that:
//   - the x tile [BM][BS] is K-major A (k contiguous),
//   - the w block [BS][BS] as stored in memory is N-major B for fprop (B[k][n] = w[k][n], rows k) and
//     K-major B for bprop (B[k][n] = w[n][k], rows n): one smem image, the transpose bit decides.
// Loads are 16-byte cp.async by all threads through a STAGES-deep pipeline: iteration s waits for stage
// s, fences the generic-proxy writes for the async proxy, barriers, issues stage s's wgmmas, prefetches
// stage s + STAGES - 2 into the slot of stage s - 2 (every warpgroup finished reading it: each waited
// for its wgmma group s - 2 before the barrier), then waits for its group s - 1. The epilogue writes
// the fp32 accumulators straight from registers (two consecutive features per thread).
#include "gmma.cuh"
#include "update.cuh"

// sm_90a only (compiler.py compiles this source for that target alone). x, w, y 16-byte aligned;
// in_features and out_features multiples of BS (always: they are block counts · BS).
template <typename T, typename TO, int BS, int WG, int MI, int STAGES, int TRANS_W>
__global__ void __launch_bounds__(WG * 128, 1)
xw_gmma(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ offsets,
        const int2* __restrict__ entries, i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    using namespace gmma;
    static_assert(BS == 32 || BS == 64, "wgmma tiles: BS = 32 or 64");
    static_assert(STAGES >= 3, "the slot of stage s - 2 is refilled at stage s");
    constexpr int THREADS = WG * 128, BM = WG * MI * 64;
    constexpr int ROW = BS * 2, CPR = BS / 8;  // bytes and 16-byte chunks per tile row
    constexpr int A_BYTES = BM * ROW, STAGE = A_BYTES + BS * ROW;
    constexpr int NACC = BS / 2;
    static_assert((BM * CPR) % THREADS == 0 && STAGE % 1024 == 0, "tile shape");

    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;  // swizzle patterns repeat every 1 KiB

    const int c = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[c], count = offsets[c + 1] - begin;
    const int wg = threadIdx.x / 128;

    float acc[MI][NACC];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int q = 0; q < NACC; q++) acc[i][q] = 0.f;

    auto load_stage = [&](int e, int slot) {
        const int2 ent = entries[begin + e];
        const unsigned sa = base + slot * STAGE, sb = sa + A_BYTES;
        const T* xs = x + (i64)ent.x * BS;
#pragma unroll
        for (int i = 0; i < BM * CPR / THREADS; i++) {
            const int ch = threadIdx.x + i * THREADS, row = ch / CPR, j = ch % CPR;
            const i64 n = n0 + row;
            const bool ok = n < n_total;
            cp_async16(sa + swizzle<ROW>(row, j), xs + (ok ? n * in_features + j * 8 : 0), ok ? 16 : 0);
        }
        const T* wb = w + (i64)ent.y * BS * BS;
        for (int ch = threadIdx.x; ch < BS * CPR; ch += THREADS)
            cp_async16(sb + swizzle<ROW>(ch / CPR, ch % CPR), wb + ch * 8, 16);
    };

    gmma_pipeline<STAGES>(count, load_stage, [&](int slot) {
        const unsigned sa = base + slot * STAGE, sb = sa + A_BYTES;
#pragma unroll
        for (int kk = 0; kk < BS / 16; kk++) {
            // fprop: B rows are k (N-major), 16 rows per step; bprop: rows are n (K-major), 32 bytes per step
            const unsigned long long db = desc<ROW>(TRANS_W ? sb + kk * 32 : sb + kk * 16 * ROW);
#pragma unroll
            for (int i = 0; i < MI; i++)
                Gmma<T, BS, 0, TRANS_W ? 0 : 1>::run(acc[i], desc<ROW>(sa + (wg * MI + i) * 64 * ROW + kk * 32), db);
        }
    });
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int q = 0; q < NACC; q++) fence_operand(acc[i][q]);

    // accumulator fragment: warp v of the warpgroup holds rows 16v + lane/4 (+8), and for each 8 features
    // q, features 8q + 2·(lane % 4) (+1)
    const int lane = threadIdx.x % 32, v = (threadIdx.x % 128) / 32;
    TO* yc = y + (i64)c * BS + (lane % 4) * 2;
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const i64 n = n0 + (wg * MI + i) * 64 + v * 16 + lane / 4 + h * 8;
            if (n >= n_total) continue;
            TO* yr = yc + n * out_features;
#pragma unroll
            for (int q = 0; q < BS / 8; q++)
                Pair<TO>::store(yr + q * 8, acc[i][q * 4 + h * 2], acc[i][q * 4 + h * 2 + 1], accumulate);
        }
}

// updat_gmma: the update dw[k] = Σ_p Σ_n x_p[n, rows[k]·BS + i] · dy_p[n, cols[k]·BS + j] on wgmma, BS = 64,
// feature axis 1, 16-byte aligned pairs. Same arguments (plus the split counters `done`), groups, chunk
// sequence, splits and deterministic order as updat_tc (bsmm.cu), but a split update finishes in this
// launch (finish_splits) instead of updat_reduce: one CTA per group of up to G blocks of one block row;
// warpgroup g computes block slot g as D[m = x feature][n = dy feature] = Σ_k A[m][k]·B[k][n] over the
// chunks' batch rows k, with A = the x chunk (shared by the G warpgroups) and B = slot g's dy chunk, both
// stored [NC][64] in 128-byte swizzled rows (M-major A and N-major B: 16 batch rows per wgmma).
// Pipeline as xw_gmma's. Nothing is loaded into an empty slot, and its warpgroup stores nothing.
// PW = 2: warpgroup g computes the slots 2g, 2g + 1 with one m64n128k16 wgmma per 16 batch rows, B = the two
// dy chunks side by side (N-major atoms of 64 features, LBO = one tile apart): the x chunk is read from shared
// memory once per two blocks instead of once per block (an m64n64k16 with both operands in shared memory reads
// 4 KiB for 32 clocks of tensor work, all the shared memory delivers; this one 6 KiB for 64). An empty slot's
// columns of D hold whatever its tile held and are never stored.
template <typename T, typename TO, int G, int NC, int STAGES, int PW = 1>
__global__ void __launch_bounds__(G / PW * 128, 1)
updat_gmma(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
           const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
           const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
           TO* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features,
           int accumulate, unsigned* __restrict__ done) {
    using namespace gmma;
    constexpr int BS = 64, ROW = 128, CPR = 8, THREADS = G / PW * 128;
    constexpr int TILE = NC * ROW, STAGE = (1 + G) * TILE;
    static_assert(NC % 16 == 0 && STAGES >= 3, "updat_gmma tiling");
    static_assert((PW == 1 || PW == 2) && G % PW == 0, "blocks a warpgroup (PW = 4, m64n256k16, measured slower)");

    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    __shared__ int blk_s[G];
    __shared__ long long ycol_s[G];
    const i64 xcol = update_group<G, BS>(groups, rows, cols, blk_s, ycol_s);
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int wg = threadIdx.x / 128;

    float acc[32 * PW];
#pragma unroll
    for (int q = 0; q < 32 * PW; q++) acc[q] = 0.f;

    // each thread copies the 16-byte chunk j of rows r0 + p·RPT of every tile: fixed shared-memory offsets,
    // one address per (tile, pass) (the address arithmetic, not the bytes, limited a generic loop)
    constexpr int RPT = THREADS / CPR, PASSES = NC / RPT;
    static_assert(NC % RPT == 0, "rows per pass");
    const int j = threadIdx.x % CPR, r0 = threadIdx.x / CPR;
    unsigned soff[PASSES];
#pragma unroll
    for (int p = 0; p < PASSES; p++) soff[p] = swizzle<ROW>(r0 + p * RPT, j);
    i64 tcol[1 + G];
    tcol[0] = xcol + j * 8;
#pragma unroll
    for (int t = 0; t < G; t++) tcol[1 + t] = ycol_s[t] < 0 ? -1 : ycol_s[t] + j * 8;

    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<T> ch = walk.chunk(q0 + q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0 + r0;
        const unsigned dst = base + slot * STAGE;
#pragma unroll
        for (int t = 0; t <= G; t++) {
            if (tcol[t] < 0) continue;  // empty slot: nothing to load
            const T* src = (t == 0 ? xp : dyp) + tcol[t];
            const i64 feats = t == 0 ? in_features : out_features;
#pragma unroll
            for (int p = 0; p < PASSES; p++) {
                const i64 n = n0 + p * RPT;
                const bool ok = n < nt;
                cp_async16(dst + t * TILE + soff[p], src + (ok ? n * feats : 0), ok ? 16 : 0);
            }
        }
    };

    gmma_pipeline<STAGES>(total, load_stage, [&](int slot) {
        // an empty slot's warpgroup multiplies whatever its slot holds and stores nothing: a branch
        // around the wgmmas would make ptxas serialize them
        const unsigned sx = base + slot * STAGE, sy = sx + (1 + wg * PW) * TILE;
#pragma unroll
        for (int kk = 0; kk < NC / 16; kk++)
            Gmma<T, 64 * PW, 1, 1>::run(acc, desc<ROW>(sx + kk * 16 * ROW), desc_lbo<ROW, TILE>(sy + kk * 16 * ROW));
    });
#pragma unroll
    for (int q = 0; q < 32 * PW; q++) fence_operand(acc[q]);

    const int lane = threadIdx.x % 32, v = (threadIdx.x % 128) / 32;
#pragma unroll
    for (int p = 0; p < PW; p++) {
        const i64 k = blk_s[wg * PW + p];
        if (k < 0) continue;
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int q = 0; q < BS / 8; q++) {
                const int m = v * 16 + lane / 4 + h * 8, f = q * 8 + (lane % 4) * 2, idx = m * BS + f;
                const float v0 = acc[p * 32 + q * 4 + h * 2], v1 = acc[p * 32 + q * 4 + h * 2 + 1];
                if (gridDim.y > 1)  // split partials, summed below by the group's last CTA
                    *reinterpret_cast<float2*>(ws + ((i64)blockIdx.y * nnz + k) * BS * BS + idx) = make_float2(v0, v1);
                else
                    Pair<TO>::store(dw + k * BS * BS + idx, v0, v1, accumulate);
            }
    }
    if (gridDim.y > 1) finish_splits<TO, BS, G, THREADS>(blk_s, ws, dw, done, nnz, accumulate);
}

// updat_gmma32: the update for BS = 32 on wgmma (feature axis 1, aligned pairs; arguments, groups, splits
// and order as updat_tc). A block has too few rows for wgmma's m64, so warpgroup g computes the transposes
// of the pair of blocks in slots 2g, 2g+1 of its group (one block row, columns c1, c2) stacked:
// D[64 × 32] = [dy_c1 | dy_c2]ᵀ · x, rows 0-31 giving dW(2g)ᵀ and rows 32-63 dW(2g+1)ᵀ (rows of D do not
// mix: an empty second slot is neither loaded nor stored). A (M-major) is the pair's dy chunk [NC][64]
// in 128-byte swizzled rows (dy[:, c1] in the first 64 bytes, dy[:, c2] in the second); B (N-major) is the
// row's x chunk [NC][32] in 64-byte swizzled rows, shared by the G warpgroups.
template <typename T, typename TO, int G, int NC, int STAGES>
__global__ void __launch_bounds__(G * 128, 1)
updat_gmma32(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
             const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
             const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
             TO* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features,
             int accumulate, unsigned* __restrict__ done) {
    using namespace gmma;
    constexpr int BS = 32, THREADS = G * 128, A_TILE = NC * 128, B_TILE = NC * 64, STAGE = G * A_TILE + B_TILE;
    constexpr int RPT_A = THREADS / 8, PASSES_A = NC / RPT_A, RPT_B = THREADS / 4, PASSES_B = NC / RPT_B;
    static_assert(NC % 16 == 0 && STAGES >= 3 && STAGE % 1024 == 0, "updat_gmma32 tiling");
    static_assert(NC % RPT_A == 0 && NC % RPT_B == 0, "rows per pass");

    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    __shared__ int blk_s[2 * G];
    __shared__ long long ycol_s[2 * G];
    const i64 xcol = update_group<2 * G, BS>(groups, rows, cols, blk_s, ycol_s);
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int wg = threadIdx.x / 128;

    float acc[16];
#pragma unroll
    for (int q = 0; q < 16; q++) acc[q] = 0.f;

    // fixed per-thread copies: 16-byte chunk ja of half h of A rows ra + p·RPT_A (every warpgroup's tile),
    // chunk jb of B rows rb + p·RPT_B
    const int ja = threadIdx.x % 4, h = (threadIdx.x / 4) % 2, ra = threadIdx.x / 8;
    const int jb = threadIdx.x % 4, rb = threadIdx.x / 4;
    unsigned soff_a[PASSES_A], soff_b[PASSES_B];
#pragma unroll
    for (int p = 0; p < PASSES_A; p++) soff_a[p] = swizzle<128>(ra + p * RPT_A, h * 4 + ja);
#pragma unroll
    for (int p = 0; p < PASSES_B; p++) soff_b[p] = swizzle<64>(rb + p * RPT_B, jb);
    i64 acol[G];
#pragma unroll
    for (int t = 0; t < G; t++) acol[t] = ycol_s[2 * t + h] < 0 ? -1 : ycol_s[2 * t + h] + ja * 8;
    const i64 bcol = xcol + jb * 8;

    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<T> ch = walk.chunk(q0 + q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        const unsigned dst = base + slot * STAGE;
#pragma unroll
        for (int t = 0; t < G; t++) {
            if (acol[t] < 0) continue;  // empty slot: its half of A is never stored
#pragma unroll
            for (int p = 0; p < PASSES_A; p++) {
                const i64 n = n0 + ra + p * RPT_A;
                const bool ok = n < nt;
                cp_async16(dst + t * A_TILE + soff_a[p], dyp + (ok ? n * out_features + acol[t] : 0), ok ? 16 : 0);
            }
        }
#pragma unroll
        for (int p = 0; p < PASSES_B; p++) {
            const i64 n = n0 + rb + p * RPT_B;
            const bool ok = n < nt;
            cp_async16(dst + G * A_TILE + soff_b[p], xp + (ok ? n * in_features + bcol : 0), ok ? 16 : 0);
        }
    };

    gmma_pipeline<STAGES>(total, load_stage, [&](int slot) {
        const unsigned sa = base + slot * STAGE + wg * A_TILE, sb = base + slot * STAGE + G * A_TILE;
#pragma unroll
        for (int kk = 0; kk < NC / 16; kk++)
            Gmma<T, 32, 1, 1>::run(acc, desc<128>(sa + kk * 16 * 128), desc<64>(sb + kk * 16 * 64));
    });
#pragma unroll
    for (int q = 0; q < 16; q++) fence_operand(acc[q]);

    // D rows 16v + lane/4 (+8): warps 0, 1 hold slot 2g (rows 0-31), warps 2, 3 slot 2g+1; D[m][n] = dW[n][m]
    const int lane = threadIdx.x % 32, v = (threadIdx.x % 128) / 32;
    const int kb = blk_s[2 * wg + v / 2];
    if (kb >= 0) {
        const i64 k = kb;
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int m = (v % 2) * 16 + lane / 4 + hh * 8, n = q * 8 + (lane % 4) * 2 + e;
                    // split partials are summed below by the group's last CTA
                    update_store<TO, BS>(dw, ws, nnz, k, n * BS + m, acc[q * 4 + hh * 2 + e], accumulate);
                }
    }
    if (gridDim.y > 1) finish_splits<TO, BS, 2 * G, THREADS>(blk_s, ws, dw, done, nnz, accumulate);
}

// updat_gmma_stack: the update for BS = 16 / 8 on wgmma (feature axis 1, aligned pairs; arguments, groups,
// splits, order and the in-launch split finish as updat_gmma32). Warpgroup g stacks the transposes of the
// S = 64 / BS blocks in slots S·g .. S·g + S - 1 of its group (one block row, columns c_1 .. c_S):
// D[64 × BS] = [dy_c1 | … | dy_cS]ᵀ · x, rows s·BS .. s·BS + BS - 1 giving dW(slot S·g + s)ᵀ (rows of D never
// mix: an empty slot's rows are neither loaded nor stored). A (M-major) is the warpgroup's stacked dy chunk
// [NC][64] in 128-byte swizzled rows (slot s in bytes s·2·BS .. +2·BS); B (N-major) is the row's x chunk
// [NC][BS], shared by the G warpgroups: 32-byte rows in the 32B swizzle (BS = 16) or 16-byte rows without
// swizzle (BS = 8, desc_interleave). Every tile starts on a 1024-byte boundary; each 32-byte global sector
// (a dy block row of BS = 16, an x row) lands in one 32-byte aligned shared-memory unit.
template <typename T, typename TO, int BS, int G, int NC, int STAGES>
__global__ void __launch_bounds__(G * 128, 1)
updat_gmma_stack(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
                 const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
                 const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
                 TO* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features,
                 int accumulate, unsigned* __restrict__ done) {
    using namespace gmma;
    static_assert(BS == 16 || BS == 8, "updat_gmma_stack: BS = 16 or 8");
    constexpr int S = 64 / BS, CPB = BS / 8;  // blocks per warpgroup, 16-byte chunks per block row
    constexpr int THREADS = G * 128, A_TILE = NC * 128, B_ROW = BS * 2, B_TILE = NC * B_ROW;
    constexpr int STAGE = G * A_TILE + B_TILE;
    // A: chunk j (of 8) of rows ra + p·RPT_A of every warpgroup's tile; B: chunk jb of rows rb + p·RPT_B
    // (B has NC·CPB chunks: with fewer than THREADS, the first NC·CPB threads copy one each)
    constexpr int RPT_A = THREADS / 8, PASSES_A = NC / RPT_A;
    constexpr int B_CH = NC * CPB, RPT_B = THREADS / CPB, PASSES_B = B_CH >= THREADS ? B_CH / THREADS : 1;
    static_assert(NC % 16 == 0 && STAGES >= 3 && STAGE % 1024 == 0, "updat_gmma_stack tiling");
    static_assert(NC % RPT_A == 0 && (B_CH < THREADS ? B_CH % 32 == 0 : B_CH % THREADS == 0), "rows per pass");

    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    __shared__ int blk_s[S * G];
    __shared__ long long ycol_s[S * G];
    const i64 xcol = update_group<S * G, BS>(groups, rows, cols, blk_s, ycol_s);
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int wg = threadIdx.x / 128;

    constexpr int NACC = BS / 2;
    float acc[NACC];
#pragma unroll
    for (int q = 0; q < NACC; q++) acc[q] = 0.f;

    // fixed per-thread copies: the swizzled offsets, dy columns and row strides are computed once and pinned
    // in registers (an empty asm makes them opaque, so ptxas cannot rematerialize them in the copy loop); per
    // stage a pass costs one 64-bit row pointer, per 16-byte chunk one 64-bit add and the LDGSTS
    const int j = threadIdx.x % 8, ra = threadIdx.x / 8;
    const int jb = threadIdx.x % CPB, rb = threadIdx.x / CPB;
    const bool copies_b = B_CH >= THREADS || (int)threadIdx.x < B_CH;
    unsigned soff_a[PASSES_A], soff_b[PASSES_B];
#pragma unroll
    for (int p = 0; p < PASSES_A; p++) {
        soff_a[p] = swizzle<128>(ra + p * RPT_A, j);
        asm volatile("" : "+r"(soff_a[p]));
    }
#pragma unroll
    for (int p = 0; p < PASSES_B; p++) {
        soff_b[p] = BS == 16 ? swizzle<32>(rb + p * RPT_B, jb) : (unsigned)(rb + p * RPT_B) * 16u;
        asm volatile("" : "+r"(soff_b[p]));
    }
    i64 acol[G];  // this thread's dy column in warpgroup t's tile, -1: an empty slot (nothing to load)
#pragma unroll
    for (int t = 0; t < G; t++) {
        const long long c = ycol_s[t * S + j / CPB];
        acol[t] = c < 0 ? -1 : c + (j % CPB) * 8;
        asm volatile("" : "+l"(acol[t]));
    }
    i64 bcol = xcol + jb * 8, step_a = RPT_A * out_features, step_b = RPT_B * in_features;
    asm volatile("" : "+l"(bcol), "+l"(step_a), "+l"(step_b));

    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<T> ch = walk.chunk(q0 + q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        const unsigned dst = base + slot * STAGE;
        const T* dyrow = dyp + (n0 + ra) * out_features;
#pragma unroll
        for (int p = 0; p < PASSES_A; p++) {
            const bool ok = n0 + ra + p * RPT_A < nt;
            const T* src = ok ? dyrow + p * step_a : dyp;  // rows past the batch: zero-filled, from row 0
            const unsigned d = dst + soff_a[p];
#pragma unroll
            for (int t = 0; t < G; t++)
                if (acol[t] >= 0) cp_async16(d + t * A_TILE, src + acol[t], ok ? 16 : 0);
        }
        if (copies_b) {
            const T* xrow = xp + (n0 + rb) * in_features + bcol;
#pragma unroll
            for (int p = 0; p < PASSES_B; p++) {
                const bool ok = n0 + rb + p * RPT_B < nt;
                cp_async16(dst + G * A_TILE + soff_b[p], ok ? xrow + p * step_b : xp + bcol, ok ? 16 : 0);
            }
        }
    };

    gmma_pipeline<STAGES>(total, load_stage, [&](int slot) {
        const unsigned sa = base + slot * STAGE + wg * A_TILE, sb = base + slot * STAGE + G * A_TILE;
#pragma unroll
        for (int kk = 0; kk < NC / 16; kk++) {
            const unsigned long long da = desc<128>(sa + kk * 16 * 128);
            if constexpr (BS == 16)
                Gmma<T, 16, 1, 1>::run(acc, da, desc<32>(sb + kk * 16 * B_ROW));
            else
                Gmma<T, 8, 1, 1>::run(acc, da, desc_interleave(sb + kk * 16 * B_ROW));
        }
    });
#pragma unroll
    for (int q = 0; q < NACC; q++) fence_operand(acc[q]);

    // D rows 16v + lane/4 (+8 for h = 1) of warp v, columns 8q + 2·(lane % 4) (+1); D row m is feature m % BS
    // of slot m / BS's dy block, column n feature n of the x block: dW(slot)[n][m % BS]
    const int lane = threadIdx.x % 32, v = (threadIdx.x % 128) / 32;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int m = v * 16 + lane / 4 + h * 8;
        const int kb = blk_s[wg * S + m / BS];
        if (kb < 0) continue;
        const i64 k = kb;
#pragma unroll
        for (int q = 0; q < BS / 8; q++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int idx = (q * 8 + (lane % 4) * 2 + e) * BS + m % BS;
                // split partials are summed below by the group's last CTA
                update_store<TO, BS>(dw, ws, nnz, k, idx, acc[q * 4 + h * 2 + e], accumulate);
            }
    }
    if (gridDim.y > 1) finish_splits<TO, BS, S * G, THREADS>(blk_s, ws, dw, done, nnz, accumulate);
}
