// Block-sparse matmul kernels: y = x·W (fprop), dx = dy·Wᵀ (bprop), dW = Σ xᵀ·dy (update).
//
// Notation. b = BS is the block size; the weights w are [nnz, b, b], block k holding
// W[rows[k]·b : +b, cols[k]·b : +b]. Activations are [N, features] (AXIS = 1) or [features, N]
// (AXIS = 0). fprop and bprop share one kernel family ("xw"): output block column c is
//     Y[:, c] = Σ_{(r, k) ∈ list(c)} X[:, r] · op(w[k]),   op = identity (fprop) or transpose (bprop),
// where list(c) is the CSC column c of the layout (fprop) or the CSR row c (bprop), given by
// `offsets` [n_out + 1] and `entries` [nnz] of int2 (r, k). An empty list writes zeros.
//
// Variants: *_tc use the tensor cores (mma.sync m16n8k16 / m16n8k8, ldmatrix, cp.async multi-stage
// pipelines, fp32 accumulation) for __half and __nv_bfloat16; *_simt run FFMA in fp32 for any input
// type (the float32 path, and the always-correct fallback for unaligned pointers). `accumulate` = 1 adds the
// result to the existing output (y += ...). All global indices are 64-bit.
#include "common.cuh"
#include "update.cuh"

// ------------------------------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes < 16 zero-fills the rest (0 = all zeros).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// An empty asm that "changes" p: keeps the compiler from precomputing every p + i·step of an unrolled
// copy loop into registers (one 64-bit add per copy instead of a register pair per copy).
__device__ __forceinline__ void opaque_ptr(const float*& p) { asm volatile("" : "+l"(p)); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)));
}
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x1(unsigned& r, const void* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(smem_u32(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(smem_u32(p)));
}

template <typename T> struct Mma;
template <> struct Mma<__half> {
    static __device__ __forceinline__ void k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ void k8(float (&c)[4], const unsigned (&a)[2], unsigned b0) {
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(b0));
    }
};
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ void k8(float (&c)[4], const unsigned (&a)[2], unsigned b0) {
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(b0));
    }
};

// Shared-memory row stride in elements for rows of `n` 16-bit values: padded to an odd number of
// 16-byte units so that the 8 row addresses of one ldmatrix fall in distinct bank groups.
__host__ __device__ constexpr int tc_stride(int n) { return ((n / 8) % 2 == 0) ? n + 8 : n; }

// Element offset of (row, col) in a tile of unpadded rows of C 16-bit values whose 16-byte chunks are permuted
// by an XOR, so that the 8 row addresses of one ldmatrix (8 consecutive rows, one chunk) fall in distinct bank
// groups: chunk j of row r sits at j ^ f(r), f(r) = r mod 8 (C >= 64), (r / 2) mod 4 (C = 32), (r / 4) mod 2
// (C = 16), 0 (C = 8: 8 rows of 16 bytes span the 32 banks already). The XOR keeps the chunk pair (2i, 2i + 1)
// of a 32-byte global sector in one 32-byte aligned unit (given a 32-byte aligned tile), so cp.async fetches
// the sector once; tc_stride's padded rows put every other row 16 bytes off a 32-byte boundary.
template <int C>
__device__ __forceinline__ int tc_swz(int row, int col) {
    constexpr int SH = C >= 64 ? 0 : C == 32 ? 1 : C == 16 ? 2 : 0, MASK = C >= 64 ? 7 : C / 8 - 1;
    return row * C + (col ^ (((row >> SH) & MASK) << 3));
}

// Output tile epilogue: the CTA's fp32 tile `tile` [BM][BS + 4] (row = batch index m, column =
// output feature) goes to y with optional accumulation; element order follows y's contiguous axis.
template <typename TO, int BM, int BS, int AXIS, int THREADS>
__device__ __forceinline__ void store_tile(const float* tile, TO* __restrict__ y, i64 n_total, i64 features,
                                           i64 n0, i64 col0, int accumulate) {
    constexpr int TS = BS + 4;
    for (int idx = threadIdx.x; idx < BM * BS; idx += THREADS) {
        int m, f;
        if (AXIS == 1) { m = idx / BS; f = idx % BS; }
        else { f = idx / BM; m = idx % BM; }
        i64 n = n0 + m;
        if (n >= n_total) continue;
        i64 off = AXIS == 1 ? n * features + col0 + f : (col0 + f) * n_total + n;
        float v = tile[m * TS + f];
        if (accumulate) v += to_float<TO>(y[off]);
        y[off] = from_float<TO>(v);
    }
}

// ------------------------------------------------------------------------------------------------
// xw_tc: tensor-core fprop/bprop.
// One CTA computes the output tile Y[n0 : n0 + BM, c·BS : (c+1)·BS] for block column c = blockIdx.x
// and batch tile n0 = blockIdx.y·BM, looping over the blocks of list(c) through a STAGES-deep
// cp.async pipeline (stage = one x tile [BM × BS] and one w block [BS × BS]). Warps form a
// WARPS_M × WARPS_N grid over the tile. ALIGNED = 0 replaces the 16-byte async copies of x by
// element loads (x misaligned, or AXIS = 0 with N not a multiple of 8).
template <typename T, typename TO, int BS, int BM, int WARPS_M, int WARPS_N, int STAGES, int EPS, int AXIS,
          int TRANS_W, int ALIGNED>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, 1)
xw_tc(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ offsets,
      const int2* __restrict__ entries, i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int KS = BS >= 16 ? 16 : 8;                 // mma k
    constexpr int WTM = BM / WARPS_M, WTN = BS / WARPS_N;  // warp tile
    constexpr int MI = WTM / 16, NI = WTN / 8;
    static_assert(MI >= 1 && NI >= 1 && WTM % 16 == 0 && WTN % 8 == 0, "bad warp tiling");
    // A tile: AXIS 1 -> [BM][BS] (m rows), AXIS 0 -> [BS][BM] (k rows)
    constexpr int A_ROWS = AXIS == 1 ? BM : BS, A_COLS = AXIS == 1 ? BS : BM;
    constexpr int SA = tc_stride(A_COLS), SB = tc_stride(BS);
    constexpr int A_ELEMS = A_ROWS * SA, B_ELEMS = BS * SB, PAIR = A_ELEMS + B_ELEMS, STAGE = EPS * PAIR;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);

    const int c = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[c], count = offsets[c + 1] - begin;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    auto load_pair = [&](int e, T* As) {
        int2 ent = entries[begin + e];
        T* Bs = As + A_ELEMS;
        const i64 col = (i64)ent.x * BS;
        // x tile
        constexpr int A_CHUNKS = A_ROWS * A_COLS / 8;
        if (ALIGNED) {
            for (int ch = threadIdx.x; ch < A_CHUNKS; ch += THREADS) {
                int row = ch / (A_COLS / 8), c8 = (ch % (A_COLS / 8)) * 8;
                const T* src;
                bool ok;
                if (AXIS == 1) {
                    i64 n = n0 + row;
                    ok = n < n_total;
                    src = x + (ok ? n * in_features + col + c8 : 0);
                } else {
                    i64 n = n0 + c8;
                    ok = n < n_total;  // N % 8 == 0 here: a chunk is wholly in or out
                    src = x + (ok ? (col + row) * n_total + n : 0);
                }
                cp_async16(As + row * SA + c8, src, ok ? 16 : 0);
            }
        } else {
            for (int idx = threadIdx.x; idx < A_ROWS * A_COLS; idx += THREADS) {
                int row = idx / A_COLS, cc = idx % A_COLS;
                T v = from_float<T>(0.f);
                if (AXIS == 1) {
                    i64 n = n0 + row;
                    if (n < n_total) v = x[n * in_features + col + cc];
                } else {
                    i64 n = n0 + cc;
                    if (n < n_total) v = x[(col + row) * n_total + n];
                }
                As[row * SA + cc] = v;
            }
        }
        // w block, stored as in memory: [BS][BS] rows of w[k]
        const T* wb = w + (i64)ent.y * BS * BS;
        constexpr int B_CHUNKS = BS * BS / 8;
        for (int ch = threadIdx.x; ch < B_CHUNKS; ch += THREADS) {
            int row = ch / (BS / 8), c8 = (ch % (BS / 8)) * 8;
            cp_async16(Bs + row * SB + c8, wb + row * BS + c8, 16);
        }
    };

    // a stage holds EPS consecutive (x tile, w block) pairs, so each barrier covers EPS·BS of k
    auto load_stage = [&](int st, int slot) {
#pragma unroll
        for (int u = 0; u < EPS; u++)
            if (st * EPS + u < count) load_pair(st * EPS + u, smem + slot * STAGE + u * PAIR);
    };
    const int steps = (count + EPS - 1) / EPS;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < steps) load_stage(s, s);
        cp_async_commit();
    }

    for (int st = 0; st < steps; st++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = st + STAGES - 1;
        if (next < steps) load_stage(next, next % STAGES);
        cp_async_commit();

#pragma unroll
      for (int u = 0; u < EPS; u++) {
        if (st * EPS + u >= count) break;
        const T* As = smem + (st % STAGES) * STAGE + u * PAIR;
        const T* Bs = As + A_ELEMS;
#pragma unroll
        for (int kk = 0; kk < BS; kk += KS) {
            if (KS == 16) {
                unsigned a[MI][4];
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    int m = wm * WTM + i * 16;
                    if (AXIS == 1) {
                        ldmatrix_x4<false>(a[i], As + (m + lane % 16) * SA + kk + (lane / 16) * 8);
                    } else {
                        int q = lane / 8, r = lane % 8;
                        ldmatrix_x4<true>(a[i], As + (kk + r + (q / 2) * 8) * SA + m + (q % 2) * 8);
                    }
                }
                unsigned bfr[NI][2];
#pragma unroll
                for (int j = 0; j < NI; j += 2) {
                    int n = wn * WTN + j * 8;
                    int q = lane / 8, r = lane % 8;
                    if (j + 1 < NI) {
                        unsigned t[4];
                        if (TRANS_W)  // B[k][n] = w[n][k]: rows of Bs are n
                            ldmatrix_x4<false>(t, Bs + (n + r + (q / 2) * 8) * SB + kk + (q % 2) * 8);
                        else          // B[k][n] = w[k][n]: rows of Bs are k
                            ldmatrix_x4<true>(t, Bs + (kk + r + (q % 2) * 8) * SB + n + (q / 2) * 8);
                        bfr[j][0] = t[0]; bfr[j][1] = t[1]; bfr[j + 1][0] = t[2]; bfr[j + 1][1] = t[3];
                    } else {
                        unsigned t[2];
                        int l = lane % 16, q2 = l / 8, r2 = l % 8;
                        if (TRANS_W) ldmatrix_x2<false>(t, Bs + (n + r2) * SB + kk + q2 * 8);
                        else ldmatrix_x2<true>(t, Bs + (kk + r2 + q2 * 8) * SB + n);
                        bfr[j][0] = t[0]; bfr[j][1] = t[1];
                    }
                }
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int j = 0; j < NI; j++) Mma<T>::k16(acc[i][j], a[i], bfr[j][0], bfr[j][1]);
            } else {  // BS == 8: m16n8k8
                unsigned a[MI][2];
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    int m = wm * WTM + i * 16, l = lane % 16;
                    if (AXIS == 1) ldmatrix_x2<false>(a[i], As + (m + l) * SA);
                    else ldmatrix_x2<true>(a[i], As + (l % 8) * SA + m + (l / 8) * 8);
                }
                unsigned bfr[NI];
#pragma unroll
                for (int j = 0; j < NI; j++) {
                    int n = wn * WTN + j * 8, l = lane % 8;
                    if (TRANS_W) ldmatrix_x1<false>(bfr[j], Bs + (n + l) * SB);
                    else ldmatrix_x1<true>(bfr[j], Bs + l * SB + n);
                }
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int j = 0; j < NI; j++) Mma<T>::k8(acc[i][j], a[i], bfr[j]);
            }
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();

    // epilogue through shared memory (fp32 tile [BM][BS + 4])
    float* tile = reinterpret_cast<float*>(smem_raw);
    constexpr int TS = BS + 4;
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++) {
            int m = wm * WTM + i * 16 + lane / 4, f = wn * WTN + j * 8 + (lane % 4) * 2;
            tile[m * TS + f] = acc[i][j][0];
            tile[m * TS + f + 1] = acc[i][j][1];
            tile[(m + 8) * TS + f] = acc[i][j][2];
            tile[(m + 8) * TS + f + 1] = acc[i][j][3];
        }
    __syncthreads();
    store_tile<TO, BM, BS, AXIS, THREADS>(tile, y, n_total, out_features, n0, (i64)c * BS, accumulate);
}

// ------------------------------------------------------------------------------------------------
// xw_wide_tc: tensor-core fprop/bprop for small blocks (BS = 8, 16). With one block column per CTA
// (xw_tc) each x row segment is BS·2 bytes, so the loads are 16- or 32-byte pieces of distinct cache
// lines and the request rate, not the bytes, limits the kernel. Here one CTA computes
// Y[n0 : n0 + BM, g·C·BS : +C·BS] for the group g = blockIdx.x of C consecutive output block columns, and
// walks the reduction dimension in super-rows of R consecutive blocks (R·BS features: 128-byte rows for
// R·BS = 64), visiting only the super-rows s where the group has a nonzero block (`entries` [e] = s,
// sorted). `masks` [e][R·C/32] has bit rr·C + j set when block (s·R + rr, g·C + j) is present and
// `slots` [e][R·C] gives its index in w (-1 if absent). A pipeline stage holds EPS entries, each one x
// tile [BM × R·BS] and R·C weight slots (absent ones neither loaded nor read). Warps form
// WARPS_M × WARPS_N: warp (wm, wn) owns rows wm·WTM.. and block columns wn·CPW.., and skips absent blocks
// with a warp-uniform test of the mask. Requires 16-byte aligned x and w (and N % 8 == 0 for AXIS = 0);
// R·BS features past in_features (a ragged last super-row) are zero-filled and never multiplied.
template <typename T, typename TO, int BS, int R, int C, int BM, int WARPS_M, int WARPS_N, int STAGES, int EPS,
          int AXIS, int TRANS_W>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
xw_wide_tc(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ offsets,
           const int* __restrict__ entries, const unsigned* __restrict__ masks, const int* __restrict__ slots,
           i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int KS = BS >= 16 ? 16 : 8;
    constexpr int WTM = BM / WARPS_M, MI = WTM / 16, CPW = C / WARPS_N, NB = BS / 8;
    constexpr int RC = R * C, MW = (RC + 31) / 32, KF = R * BS;  // slots, mask words, features per entry
    static_assert(WTM % 16 == 0 && C % WARPS_N == 0 && (BS == 8 || BS == 16), "bad wide tiling");
    static_assert((C & (C - 1)) == 0 && C <= 32 && CPW <= 32 && (RC <= 32 || RC % 32 == 0),
                  "a warp's mask bits must not straddle a 32-bit word");
    constexpr int A_ROWS = AXIS == 1 ? BM : KF, A_COLS = AXIS == 1 ? KF : BM;
    constexpr int SA = tc_stride(A_COLS), SB = tc_stride(BS);
    constexpr int A_ELEMS = A_ROWS * SA, B_ELEMS = BS * SB, ENTRY = A_ELEMS + RC * B_ELEMS, STAGE = EPS * ENTRY;
    constexpr int WIDTH = C * BS;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);

    const int g = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[g], count = offsets[g + 1] - begin;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    float acc[MI][CPW][NB][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < CPW; j++)
#pragma unroll
            for (int h = 0; h < NB; h++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[i][j][h][q] = 0.f;

    auto load_entry = [&](int e, T* As) {
        const i64 col = (i64)entries[begin + e] * KF;
        constexpr int A_CHUNKS = A_ROWS * A_COLS / 8;
        for (int ch = threadIdx.x; ch < A_CHUNKS; ch += THREADS) {
            int row = ch / (A_COLS / 8), c8 = (ch % (A_COLS / 8)) * 8;
            bool ok;
            const T* src;
            if (AXIS == 1) {
                i64 n = n0 + row;
                ok = n < n_total && col + c8 < in_features;
                src = x + (ok ? n * in_features + col + c8 : 0);
            } else {
                i64 n = n0 + c8;
                ok = n < n_total && col + row < in_features;  // N % 8 == 0 here: a chunk is wholly in or out
                src = x + (ok ? (col + row) * n_total + n : 0);
            }
            cp_async16(As + row * SA + c8, src, ok ? 16 : 0);
        }
        constexpr int PER_BLOCK = BS * BS / 8;  // 16-byte chunks of one w block
        const int* sl = slots + (i64)(begin + e) * RC;
        for (int ch = threadIdx.x; ch < RC * PER_BLOCK; ch += THREADS) {
            int j = ch / PER_BLOCK, cc = ch % PER_BLOCK;
            int k = sl[j];
            if (k < 0) continue;  // absent block: its slot is never read
            int row = cc / (BS / 8), c8 = (cc % (BS / 8)) * 8;
            cp_async16(As + A_ELEMS + j * B_ELEMS + row * SB + c8, w + (i64)k * BS * BS + row * BS + c8, 16);
        }
    };
    auto load_stage = [&](int st, int slot) {
#pragma unroll
        for (int u = 0; u < EPS; u++)
            if (st * EPS + u < count) load_entry(st * EPS + u, smem + slot * STAGE + u * ENTRY);
    };
    const int steps = (count + EPS - 1) / EPS;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < steps) load_stage(s, s);
        cp_async_commit();
    }

    for (int st = 0; st < steps; st++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = st + STAGES - 1;
        if (next < steps) load_stage(next, next % STAGES);
        cp_async_commit();

#pragma unroll
        for (int u = 0; u < EPS; u++) {
            if (st * EPS + u >= count) break;
            const unsigned* mk = masks + (i64)(begin + st * EPS + u) * MW;
            const T* As = smem + (st % STAGES) * STAGE + u * ENTRY;
#pragma unroll
            for (int rr = 0; rr < R; rr++) {
                const int bit0 = rr * C + wn * CPW;  // this warp's CPW bits of reduction block rr
                const unsigned mask = mk[bit0 / 32] >> (bit0 % 32);
                if ((CPW < 32 ? (mask & ((1u << CPW) - 1u)) : mask) == 0u) continue;
#pragma unroll
                for (int kk = 0; kk < BS; kk += KS) {
                    const int kf = rr * BS + kk;  // feature offset inside the x tile
                    unsigned a[MI][KS / 4];
#pragma unroll
                    for (int i = 0; i < MI; i++) {
                        int m = wm * WTM + i * 16;
                        if constexpr (KS == 16) {
                            int q = lane / 8, r = lane % 8;
                            if (AXIS == 1) ldmatrix_x4<false>(a[i], As + (m + lane % 16) * SA + kf + (lane / 16) * 8);
                            else ldmatrix_x4<true>(a[i], As + (kf + r + (q / 2) * 8) * SA + m + (q % 2) * 8);
                        } else {
                            int l = lane % 16;
                            if (AXIS == 1) ldmatrix_x2<false>(a[i], As + (m + l) * SA + kf);
                            else ldmatrix_x2<true>(a[i], As + (kf + l % 8) * SA + m + (l / 8) * 8);
                        }
                    }
#pragma unroll
                    for (int j = 0; j < CPW; j++) {
                        if (!((mask >> j) & 1u)) continue;
                        const T* Bs = As + A_ELEMS + (bit0 + j) * B_ELEMS;
                        if constexpr (KS == 16) {  // BS = 16: both n8 halves of the block with one ldmatrix
                            int q = lane / 8, r = lane % 8;
                            unsigned t[4];
                            if (TRANS_W) ldmatrix_x4<false>(t, Bs + (r + (q / 2) * 8) * SB + kk + (q % 2) * 8);
                            else ldmatrix_x4<true>(t, Bs + (kk + r + (q % 2) * 8) * SB + (q / 2) * 8);
#pragma unroll
                            for (int i = 0; i < MI; i++) {
                                Mma<T>::k16(acc[i][j][0], a[i], t[0], t[1]);
                                Mma<T>::k16(acc[i][j][NB - 1], a[i], t[2], t[3]);
                            }
                        } else {
                            unsigned bf;
                            int l = lane % 8;
                            if (TRANS_W) ldmatrix_x1<false>(bf, Bs + l * SB);
                            else ldmatrix_x1<true>(bf, Bs + l * SB);
#pragma unroll
                            for (int i = 0; i < MI; i++) Mma<T>::k8(acc[i][j][0], a[i], bf);
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // epilogue through shared memory (fp32 tile [BM][WIDTH + 4]); columns past out_features are dropped
    float* tile = reinterpret_cast<float*>(smem_raw);
    constexpr int TS = WIDTH + 4;
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < CPW; j++)
#pragma unroll
            for (int h = 0; h < NB; h++) {
                int m = wm * WTM + i * 16 + lane / 4, f = (wn * CPW + j) * BS + h * 8 + (lane % 4) * 2;
                tile[m * TS + f] = acc[i][j][h][0];
                tile[m * TS + f + 1] = acc[i][j][h][1];
                tile[(m + 8) * TS + f] = acc[i][j][h][2];
                tile[(m + 8) * TS + f + 1] = acc[i][j][h][3];
            }
    __syncthreads();
    const i64 col0 = (i64)g * WIDTH;
    const int width = (int)min((i64)WIDTH, out_features - col0);
    for (int idx = threadIdx.x; idx < BM * WIDTH; idx += THREADS) {
        int m, f;
        if (AXIS == 1) { m = idx / WIDTH; f = idx % WIDTH; }
        else { f = idx / BM; m = idx % BM; }
        i64 n = n0 + m;
        if (n >= n_total || f >= width) continue;
        i64 off = AXIS == 1 ? n * out_features + col0 + f : (col0 + f) * n_total + n;
        float v = tile[m * TS + f];
        if (accumulate) v += to_float<TO>(y[off]);
        y[off] = from_float<TO>(v);
    }
}

// ------------------------------------------------------------------------------------------------
// xw_simt: FFMA fprop/bprop in fp32 for any input type (same grid and lists as xw_tc).
// One CTA computes Y[n0 : n0 + BM, c·BS : (c+1)·BS]; thread (ty, tx) owns a TM × TN micro-tile with
// rows ty + i·(BM/TM) and columns tx·TN + j. Operands are staged in shared memory as fp32, k-major
// (As[k][m], Bs[k][n]); several CTAs per SM hide the load latency.
template <typename T, typename TO, int BS, int BM, int TM, int TN, int AXIS, int TRANS_W>
__global__ void __launch_bounds__((BM / TM) * (BS / TN))
xw_simt(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ offsets,
        const int2* __restrict__ entries, i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    constexpr int TY = BM / TM, TX = BS / TN, THREADS = TY * TX;
    constexpr int SA = BM + 1, SB = BS + 1;  // row strides (floats): odd, so transposing stores don't conflict
    __shared__ __align__(16) float As[BS * SA];
    __shared__ __align__(16) float Bs[BS * SB];

    const int c = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[c], count = offsets[c + 1] - begin;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.f;

    for (int e = 0; e < count; e++) {
        int2 ent = entries[begin + e];
        const i64 col = (i64)ent.x * BS;
        const T* wb = w + (i64)ent.y * BS * BS;
        __syncthreads();  // the previous block's FMAs are done with As/Bs
        for (int idx = threadIdx.x; idx < BM * BS; idx += THREADS) {
            int m, k;
            if (AXIS == 1) { m = idx / BS; k = idx % BS; }
            else { k = idx / BM; m = idx % BM; }
            i64 n = n0 + m;
            float v = 0.f;
            if (n < n_total) v = to_float<T>(AXIS == 1 ? x[n * in_features + col + k] : x[(col + k) * n_total + n]);
            As[k * SA + m] = v;
        }
        for (int idx = threadIdx.x; idx < BS * BS; idx += THREADS) {
            int r = idx / BS, s2 = idx % BS;  // w[r][s2]
            float v = to_float<T>(wb[idx]);
            if (TRANS_W) Bs[s2 * SB + r] = v;  // B[k=s2][n=r]
            else Bs[r * SB + s2] = v;          // B[k=r][n=s2]
        }
        __syncthreads();
        // unroll 4 stated: NVVM's own choice for this loop changed with unrelated edits elsewhere in the file
        // (ptxas then spilled 4 bytes at 40 registers in some specializations)
#pragma unroll 4
        for (int k = 0; k < BS; k++) {
            float a[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; i++) a[i] = As[k * SA + ty + i * TY];
#pragma unroll
            for (int j = 0; j < TN; j++) bv[j] = Bs[k * SB + tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
    }
#pragma unroll
    for (int i = 0; i < TM; i++) {
        i64 n = n0 + ty + i * TY;
        if (n >= n_total) continue;
#pragma unroll
        for (int j = 0; j < TN; j++) {
            i64 f = (i64)c * BS + tx * TN + j;
            i64 off = AXIS == 1 ? n * out_features + f : f * n_total + n;
            float v = acc[i][j];
            if (accumulate) v += to_float<TO>(y[off]);
            y[off] = from_float<TO>(v);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Register-blocked FFMA (xw_ffma, updat_ffma: fp32 inputs, 16-byte aligned). A thread owns an 8 × 8
// micro-tile of C = A·B and walks k in groups of KG; operands sit in shared memory as fp32 in one of two
// layouts, so that every fragment load is one 16-byte (KG = 4) or 8-byte (KG = 2) LDS:
//   k-major [k][m]: rows of consecutive m (or n); the thread's 8 indices are g·4 + 0..3 and L·4 + g·4 + 0..3
//     (g = its lane coordinate along that axis, L = lanes along it): two float4 per k, each float4 of a
//     warp a contiguous run of L·16 bytes (no bank conflict).
//   swizzled [m][k]: rows of consecutive k (the layout cp.async gives for x with feature axis 1 or for wᵀ);
//     16-byte chunk c of row r sits at chunk c ^ (r % 8); the thread's indices are g + L·t, so the rows a
//     warp reads at one k are consecutive and their chunks fall in distinct banks. One LDS gives KG
//     consecutive k of one row.
// Per k a thread issues 4 LDS.128 per KG = 4 group for 4·64 FFMA (16 FFMA per LDS; xw_simt: ~3).

// offset (floats) of element (r, 4·c4) of a swizzled [rows][COLS] tile
template <int COLS>
__device__ __forceinline__ int swz(int r, int c4) {
    static_assert(COLS % 32 == 0, "swizzled rows hold at least 8 chunks");
    return r * COLS + ((c4 ^ (r & 7)) << 2);
}

// index (within the warp's span of L·8) of the thread's t-th row or column
template <bool KMAJOR, int L>
__device__ __forceinline__ int frag_index(int g, int t) {
    return KMAJOR ? g * 4 + (t % 4) + L * 4 * (t / 4) : g + L * t;
}

// f[t][kk] = operand (index base + frag_index(g, t), k0 + kk); `base_g` = base + (KMAJOR ? g·4 : g)
template <int KG, bool KMAJOR, int L, int STRIDE>
__device__ __forceinline__ void ffma_frag(float (&f)[8][KG], const float* s, int base_g, int k0) {
    if constexpr (KMAJOR) {
#pragma unroll
        for (int kk = 0; kk < KG; kk++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float4 v = *reinterpret_cast<const float4*>(s + (k0 + kk) * STRIDE + base_g + h * L * 4);
                f[4 * h][kk] = v.x; f[4 * h + 1][kk] = v.y; f[4 * h + 2][kk] = v.z; f[4 * h + 3][kk] = v.w;
            }
    } else {
        // row r = base_g + L·t has r % 8 = (base_g % 8) ^ (L·t % 8) (L % 4 == 0), so its chunk offset is a
        // compile-time constant xor one per-thread value: the addresses need no per-row registers
        static_assert(L % 4 == 0 && STRIDE % 32 == 0, "swizzled fragments need L % 4 == 0");
        const float* row0 = s + base_g * STRIDE;
        const int key = (base_g & 7) << 2;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const float* p = row0 + L * t * STRIDE + ((((k0 / 4) ^ ((L * t) & 7)) << 2) ^ key) + k0 % 4;
            if constexpr (KG == 4) {
                const float4 v = *reinterpret_cast<const float4*>(p);
                f[t][0] = v.x; f[t][1] = v.y; f[t][2] = v.z; f[t][3] = v.w;
            } else {
                const float2 v = *reinterpret_cast<const float2*>(p);
                f[t][0] = v.x; f[t][1] = v.y;
            }
        }
    }
}

// Lane coordinates (mg, ng) of thread t in an LM × LN grid. Shared memory returns 128 bytes per clock, one
// register per lane, so an LDS.128 takes 4 passes, or 2 when lanes t and t^1 (or t and t^2) read the same
// address. The bits of t go alternately to ng (bit 0) and mg (bit 1) while both have bits left: mg does not
// depend on bit 0 (A fragments: t, t^1 equal) and ng not on bit 1 (B fragments: t, t^2 equal).
template <int LM, int LN>
__device__ __forceinline__ void lane_coords(int t, int& mg, int& ng) {
    static_assert(LM >= 2 && LN >= 2 && (LM & (LM - 1)) == 0 && (LN & (LN - 1)) == 0, "lane grid of powers of 2");
    mg = 0;
    ng = 0;
    int bm = 0, bn = 0;
#pragma unroll
    for (int b = 0; (1 << b) < LM * LN; b++) {
        const bool to_n = (1 << bn) < LN && (b % 2 == 0 || (1 << bm) >= LM);
        if (to_n) ng |= ((t >> b) & 1) << bn++;
        else mg |= ((t >> b) & 1) << bm++;
    }
}

template <int KG>
__device__ __forceinline__ void ffma_8x8(float (&acc)[8][8], const float (&a)[8][KG], const float (&b)[8][KG]) {
#pragma unroll
    for (int kk = 0; kk < KG; kk++)
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i][kk], b[j][kk], acc[i][j]);
}

// cp.async of an fp32 tile [ROWS][COLS] (COLS / 4 16-byte chunks per row) by THREADS threads: a thread copies
// the same chunk column c4 of rows r0, r0 + RPP, ..., so its addresses advance by constants (no per-chunk
// index arithmetic). Row r comes from src + r·stride; chunks of rows ≥ valid_rows or at columns ≥ valid_cols
// are zero-filled. SWZ: destination chunks XOR-swizzled by row % 8 (swz<COLS>; RPP % 8 == 0 keeps a
// thread's xor key fixed).
template <int ROWS, int COLS, int THREADS, bool SWZ>
__device__ __forceinline__ void cp_async_tile(float* dst, const float* src, i64 stride, i64 valid_rows,
                                              i64 valid_cols) {
    constexpr int CPR = COLS / 4, RPP = THREADS / CPR;
    static_assert(THREADS % CPR == 0 && ROWS % RPP == 0 && (!SWZ || RPP % 8 == 0), "bad cp_async_tile shape");
    const int r0 = threadIdx.x / CPR, c4 = threadIdx.x % CPR;
    float* d = dst + (SWZ ? swz<COLS>(r0, c4) : r0 * COLS + c4 * 4);
    const float* s = src + r0 * stride + c4 * 4;
    const int rows_ok = c4 * 4 < valid_cols ? (int)min(valid_rows, (i64)ROWS) : 0;  // 32-bit compares below
    const i64 step = RPP * stride;
#pragma unroll
    for (int p = 0; p < ROWS / RPP; p++) {
        const bool ok = r0 + p * RPP < rows_ok;
        cp_async16(d + p * RPP * COLS, ok ? s : src, ok ? 16 : 0);
        s += step;
        opaque_ptr(s);
    }
}

// xw_ffma: fp32 fprop/bprop (same grid and lists as xw_tc), x and w 16-byte aligned (feature axis 0:
// N % 4 == 0). MINB: CTAs per SM the registers must allow. One CTA of WARPS warps computes Y[n0 : n0 + BM, c·BS : +BS]
// for TPC consecutive row tiles n0 (blockIdx.y·TPC + t)·BM; a warp's lanes form
// LM × LN = (32·8/BS) × (BS/8) and each owns 8 × 8 outputs, so a warp covers WM = LM·8 rows and BM =
// WARPS·WM. The (x tile, w block) pairs of list(c) stream through a STAGES-deep cp.async pipeline:
// x tile swizzled [m][k] (axis 1) or k-major [k][m] (axis 0); w block k-major [k][n] (fprop) or swizzled
// [n][k] (bprop: B = wᵀ, rows of w are rows of the tile). Epilogue through shared memory (store_tile).
// TPC > 1: the pairs of the CTA's row tiles form one stream, so the next tile's first stages load during
// the current tile's last FMAs and its epilogue (which uses the buffer of the stage just consumed).
// `order` [gridDim.x]: the output column of blockIdx.x (the host lists the longest lists first, so that the
// last CTAs of a row tile, and of the grid, are the short ones). UNR: k groups of KG per iteration of a
// block's k loop (BS / KG: unrolled whole, ~38 KB of code per stage at b = 32; fewer keeps the loop in the
// instruction cache, at the cost of the fragment loads of the next iteration not being hoisted).
template <int BS, int WARPS, int STAGES, int KG, int MINB, int AXIS, int TRANS_W, int TPC, int UNR>
__global__ void __launch_bounds__(WARPS * 32, MINB)
xw_ffma(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
        const int* __restrict__ offsets, const int2* __restrict__ entries, const int* __restrict__ order,
        i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS * 32, LN = BS / 8, LM = 32 / LN, WM = LM * 8, BM = WARPS * WM;
    static_assert(BS % 32 == 0 && (KG == 2 || KG == 4) && STAGES >= 2 && TPC >= 1, "bad xw_ffma tiling");
    constexpr int A_ELEMS = BM * BS, STAGE = A_ELEMS + BS * BS, TS = BS + 4;
    static_assert(TPC == 1 || BM * TS <= STAGE, "the epilogue tile must fit one stage buffer");
    constexpr bool A_KMAJOR = AXIS == 0, B_KMAJOR = TRANS_W == 0;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* smem = reinterpret_cast<float*>(smem_raw);

    const int c = order[blockIdx.x];
    const i64 tile0 = (i64)blockIdx.y * TPC;
    const int tiles = (int)min((i64)TPC, (n_total + BM - 1) / BM - tile0);  // row tiles of this CTA
    const int begin = offsets[c], count = offsets[c + 1] - begin, total = count * tiles;
    const int warp = threadIdx.x / 32;
    int mg, ng;
    lane_coords<LM, LN>(threadIdx.x % 32, mg, ng);
    const int a_base = warp * WM + (A_KMAJOR ? mg * 4 : mg), b_base = B_KMAJOR ? ng * 4 : ng;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.f;

    // the loader's position in the stream: pair ld_e of row tile ld_t
    int ld_e = 0, ld_t = 0;
    // the entry of the pair loaded next is read one iteration ahead, so its latency hides behind the FMAs
    auto load_pair = [&](int2 ent, float* As) {
        const i64 n0 = (tile0 + (TPC > 1 ? ld_t : 0)) * BM;
        const i64 rows_left = n_total - n0;  // valid batch rows of this tile (axis 0: N % 4 == 0, whole chunks)
        const i64 col = (i64)ent.x * BS;
        if (AXIS == 1)  // [m][k] rows of x, swizzled
            cp_async_tile<BM, BS, THREADS, true>(As, x + n0 * in_features + col, in_features, rows_left, BS);
        else            // [k][m] rows of x (feature-major)
            cp_async_tile<BS, BM, THREADS, false>(As, x + col * n_total + n0, n_total, BS, rows_left);
        cp_async_tile<BS, BS, THREADS, !B_KMAJOR>(As + A_ELEMS, w + (i64)ent.y * BS * BS, BS, BS, BS);
        if (TPC > 1 && ++ld_e == count) {
            ld_e = 0;
            ld_t++;
        }
    };
    auto epilogue = [&](float* tile, int t) {  // tile: fp32 [BM][TS] in shared memory, free to overwrite
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 8; j++) {
                tile[(warp * WM + frag_index<A_KMAJOR, LM>(mg, i)) * TS + frag_index<B_KMAJOR, LN>(ng, j)] =
                    acc[i][j];
                acc[i][j] = 0.f;
            }
        __syncthreads();
        store_tile<float, BM, BS, AXIS, THREADS>(tile, y, n_total, out_features, (tile0 + t) * BM, (i64)c * BS,
                                                 accumulate);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < total) load_pair(entries[begin + (TPC > 1 ? ld_e : s)], smem + s * STAGE);
        cp_async_commit();
    }
    int2 ent_next = STAGES - 1 < total ? entries[begin + (TPC > 1 ? ld_e : STAGES - 1)] : make_int2(0, 0);
    int cm_e = 0, cm_t = 0;  // the pair being multiplied
    for (int e = 0; e < total; e++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = e + STAGES - 1;
        if (next < total) {
            load_pair(ent_next, smem + (next % STAGES) * STAGE);
            if (next + 1 < total) ent_next = entries[begin + (TPC > 1 ? ld_e : next + 1)];
        }
        cp_async_commit();
        float* As = smem + (e % STAGES) * STAGE;
        const float* Bs = As + A_ELEMS;
#pragma unroll(UNR)
        for (int k0 = 0; k0 < BS; k0 += KG) {
            float a[8][KG], b[8][KG];
            ffma_frag<KG, A_KMAJOR, LM, A_KMAJOR ? BM : BS>(a, As, a_base, k0);
            ffma_frag<KG, B_KMAJOR, LN, BS>(b, Bs, b_base, k0);
            ffma_8x8<KG>(acc, a, b);
        }
        if (TPC > 1 && ++cm_e == count && e + 1 < total) {  // a row tile done, more follow
            cm_e = 0;
            __syncthreads();  // every warp is done reading this stage's buffer
            epilogue(As, cm_t++);
            // the next iteration's barrier keeps the loads into this buffer behind every thread's store_tile
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    if (TPC > 1 && count == 0) {  // an empty list: zeros (or y unchanged with accumulate) for every row tile
        for (int t = 0; t < tiles; t++) {
            epilogue(smem, t);
            __syncthreads();
        }
        return;
    }
    epilogue(smem, TPC > 1 ? tiles - 1 : 0);
}

// ------------------------------------------------------------------------------------------------
// Update. dw[k] = Σ_p Σ_n x_p[n, rows[k]·b + i] · dy_p[n, cols[k]·b + j] for each nonzero block k.
// gridDim.y > 1 splits the chunk sequence into gridDim.y contiguous ranges (for layouts with too few
// blocks to fill the GPU); each split writes fp32 partials to `ws` [splits][nnz][b][b] and
// updat_reduce sums them in split order.
// The (x, dy) pairs of a grouped update are given by device arrays of pointers and batch sizes;
// `chunk_ptr` [P + 1] is the prefix sum of each pair's batch chunks (of NC rows), so that the
// pipeline runs over all chunks of all pairs in one sequence. Summation order is fixed: the result
// is bit-identical from run to run (no atomics).

// updat_tc: one CTA per group of up to G nonzero blocks of one block row i (blockIdx.x = group;
// `groups` [n_groups][G] holds their indices in w, -1 for an empty slot). The x chunk of row i is
// loaded once per stage and shared by the G blocks; each block has its own dy chunk. Warp w owns
// rows [(w % WPB)·WTM, +WTM) of block w / WPB over the whole chunk, so no cross-warp reduction is
// needed and the summation order is fixed (bit-reproducible).
// BS = 8 (PAIRS): an 8-row block is too short for the m16 of mma, so warp w owns the pair of blocks in
// slots 2w, 2w+1 (G = 2·WARPS) and computes their transposes stacked: D[16 × 8] = [dy_2w | dy_2w+1]ᵀ · x,
// rows 0-7 giving dW(2w)ᵀ and rows 8-15 dW(2w+1)ᵀ (rows of D do not mix, so an empty second slot is
// simply not stored).
template <typename T, typename TO, int BS, int G, int WARPS, int NC, int STAGES, int AXIS, int ALIGNED>
__global__ void __launch_bounds__(WARPS * 32)
updat_tc(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
         const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
         const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
         TO* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS * 32;
    constexpr bool PAIRS = BS == 8;
    constexpr int WPB = PAIRS ? 1 : WARPS / G;  // warps per block
    constexpr int WTM = PAIRS ? 16 : BS / WPB;  // rows of the block per warp
    constexpr int MI = PAIRS ? 1 : WTM / 16, NI = PAIRS ? 1 : BS / 8;
    static_assert(PAIRS ? (G == 2 * WARPS && NC % 16 == 0)
                        : (BS >= 16 && WTM % 16 == 0 && NC % 16 == 0 && WARPS % G == 0), "bad updat_tc tiling");
    // tiles: AXIS 1 -> [NC][BS] (batch rows); AXIS 0 -> [BS][NC] (feature rows)
    constexpr int R = AXIS == 1 ? NC : BS, C = AXIS == 1 ? BS : NC;
    constexpr int TILE = R * C, STAGE = (1 + G) * TILE;  // tiles of unpadded rows, chunks swizzled (tc_swz)

    // the stage buffers start at the dynamic buffer's (aligned) base; the group's bookkeeping follows them
    // (static __shared__ arrays would go in front and put every tile 16 bytes off a 32-byte boundary)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    long long* ycol_s = reinterpret_cast<long long*>(smem_raw + STAGES * STAGE * (int)sizeof(T));
    int* blk_s = reinterpret_cast<int*>(ycol_s + G);
    const i64 xcol = update_group<G, BS>(groups, rows, cols, blk_s, ycol_s);
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gw = PAIRS ? 2 * warp : warp / WPB, m0 = PAIRS ? 0 : (warp % WPB) * WTM;
    const bool active = blk_s[gw] >= 0;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<T> ch = walk.chunk(q0 + q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        T* base = smem + slot * STAGE;
#pragma unroll
        for (int t = 0; t <= G; t++) {
            const i64 col = t == 0 ? xcol : ycol_s[t - 1];
            if (col < 0) continue;  // empty slot: nothing to load
            const T* src0 = t == 0 ? xp : dyp;
            const i64 feats = t == 0 ? in_features : out_features;
            T* dst = base + t * TILE;
            if (ALIGNED) {
                for (int ch = threadIdx.x; ch < R * C / 8; ch += THREADS) {
                    int row = ch / (C / 8), c8 = (ch % (C / 8)) * 8;
                    bool ok;
                    const T* src;
                    if (AXIS == 1) {
                        i64 n = n0 + row;
                        ok = n < nt;
                        src = src0 + (ok ? n * feats + col + c8 : 0);
                    } else {
                        i64 n = n0 + c8;
                        ok = n < nt;
                        src = src0 + (ok ? (col + row) * nt + n : 0);
                    }
                    cp_async16(dst + tc_swz<C>(row, c8), src, ok ? 16 : 0);
                }
            } else {
                // unroll 2: whole (8 at BS = 8, AXIS = 0) or by 4, ptxas spilled a register on sm_80 with the
                // swizzled offsets
#pragma unroll 2
                for (int idx = threadIdx.x; idx < R * C; idx += THREADS) {
                    int row = idx / C, cc = idx % C;
                    T v = from_float<T>(0.f);
                    if (AXIS == 1) {
                        i64 n = n0 + row;
                        if (n < nt) v = src0[n * feats + col + cc];
                    } else {
                        i64 n = n0 + cc;
                        if (n < nt) v = src0[(col + row) * nt + n];
                    }
                    dst[tc_swz<C>(row, cc)] = v;
                }
            }
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < total) load_stage(s, s);
        cp_async_commit();
    }
    for (int q = 0; q < total; q++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = q + STAGES - 1;
        if (next < total) load_stage(next, next % STAGES);
        cp_async_commit();
        if (!active) continue;
        const T* Xs = smem + (q % STAGES) * STAGE;
        const T* Ys = Xs + (1 + gw) * TILE;
        if constexpr (PAIRS) {
            // A[m = dy feature of the pair (16)][k = batch], B[k = batch][n = x feature (8)]
            const int qd = lane / 8, r = lane % 8, l16 = lane % 16;
            const T* Ya = Ys + (qd % 2) * TILE;  // matrices 0, 2: first block; 1, 3: second
#pragma unroll
            for (int kk = 0; kk < NC; kk += 16) {
                unsigned a[4], bx[2];
                if (AXIS == 1) {
                    ldmatrix_x4<true>(a, Ya + tc_swz<C>(kk + r + (qd / 2) * 8, 0));
                    ldmatrix_x2<true>(bx, Xs + tc_swz<C>(kk + l16, 0));
                } else {
                    ldmatrix_x4<false>(a, Ya + tc_swz<C>(r, kk + (qd / 2) * 8));
                    ldmatrix_x2<false>(bx, Xs + tc_swz<C>(l16 % 8, kk + (l16 / 8) * 8));
                }
                Mma<T>::k16(acc[0][0], a, bx[0], bx[1]);
            }
        } else {
#pragma unroll
        for (int kk = 0; kk < NC; kk += 16) {
            // A[m = x feature][k = batch]; B[k = batch][n = dy feature]
            unsigned a[MI][4], bfr[NI][2];
            int qd = lane / 8, r = lane % 8;
#pragma unroll
            for (int i = 0; i < MI; i++) {
                int m = m0 + i * 16;
                if (AXIS == 1) ldmatrix_x4<true>(a[i], Xs + tc_swz<C>(kk + r + (qd / 2) * 8, m + (qd % 2) * 8));
                else ldmatrix_x4<false>(a[i], Xs + tc_swz<C>(m + lane % 16, kk + (lane / 16) * 8));
            }
#pragma unroll
            for (int j = 0; j < NI; j += 2) {
                int n = j * 8;
                unsigned t[4];
                if (AXIS == 1) ldmatrix_x4<true>(t, Ys + tc_swz<C>(kk + r + (qd % 2) * 8, n + (qd / 2) * 8));
                else ldmatrix_x4<false>(t, Ys + tc_swz<C>(n + r + (qd / 2) * 8, kk + (qd % 2) * 8));
                bfr[j][0] = t[0]; bfr[j][1] = t[1]; bfr[j + 1][0] = t[2]; bfr[j + 1][1] = t[3];
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++) Mma<T>::k16(acc[i][j], a[i], bfr[j][0], bfr[j][1]);
        }
        }
    }
    cp_async_wait<0>();
    if (!active) return;
    if constexpr (PAIRS) {
        // c0, c1: D[m = lane/4][n = 2(lane%4) + {0, 1}] -> dW(slot 2w)[n][m]; c2, c3 the same for slot 2w+1
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int kb = blk_s[gw + h];
            if (kb < 0) continue;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int idx = (2 * (lane % 4) + e) * BS + lane / 4;
                float v = acc[0][0][2 * h + e];
                if (gridDim.y > 1) {
                    ws[((i64)blockIdx.y * nnz + kb) * BS * BS + idx] = v;
                    continue;
                }
                TO* o = dw + (i64)kb * BS * BS + idx;
                if (accumulate) v += to_float<TO>(*o);
                *o = from_float<TO>(v);
            }
        }
        return;
    }
    const i64 k = blk_s[gw];
    TO* out = dw + k * BS * BS;
    float* part = ws + ((i64)blockIdx.y * nnz + k) * BS * BS;  // split partials (gridDim.y > 1)
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = m0 + i * 16 + lane / 4 + h * 8, f = j * 8 + (lane % 4) * 2;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (gridDim.y > 1) {
                    *reinterpret_cast<float2*>(part + m * BS + f) = make_float2(v0, v1);
                    continue;
                }
                TO* o = out + m * BS + f;
                if (accumulate) { v0 += to_float<TO>(o[0]); v1 += to_float<TO>(o[1]); }
                o[0] = from_float<TO>(v0);
                o[1] = from_float<TO>(v1);
            }
}

// updat_tile_tc: the update for BS = 16 over 2-D tiles of the layout (TR block rows × TC block columns), so that
// one x chunk [NC][TR·BS] and one dy chunk [NC][TC·BS] per stage serve every block of the tile that the CTA
// takes: (TR + TC)·2·BS bytes a batch row for up to WARPS·BPW blocks (updat_tc and updat_gmma_stack read each
// block's dy slice on its own: ≥ 2·BS bytes a block and batch row). One CTA per work item (`items` [n][4]:
// first block row r0 and column c0 of its tile, first entry, count ≤ WARPS·BPW; `entries`: w indices, sorted by
// tile, row, column; update_tiles in _matmul_gpu.py). Block j of the item is warp j % WARPS's slot j / WARPS; the
// warp computes dW = x_rᵀ·dy_c with mma.sync m16n8k16 on ldmatrix.trans fragments (A: x tile columns of block
// row r, B: dy tile columns of block column c), so no cross-warp reduction (fixed summation order). Tile rows are
// unpadded with their 16-byte chunks swizzled (tc_swz: chunk j of row r at j ^ (r mod 8)); tile columns past the
// layout's features are zero-filled. Same arguments as updat_tc with (items, entries) for groups; feature axis 1,
// 16-byte aligned pairs; splits (gridDim.y > 1) write fp32 partials to ws for updat_reduce.
template <typename T, typename TO, int BS, int TR, int TC, int WARPS, int BPW, int NC, int STAGES>
__global__ void __launch_bounds__(WARPS * 32)
updat_tile_tc(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
              const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
              const int* __restrict__ items, const int* __restrict__ entries, const int* __restrict__ rows,
              const int* __restrict__ cols, TO* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features,
              i64 out_features, int accumulate) {
    constexpr int THREADS = WARPS * 32, XW = TR * BS, YW = TC * BS;  // tile widths (elements)
    constexpr int XC = XW / 8, YC = YW / 8, XTILE = NC * XW, STAGE = NC * (XW + YW);
    constexpr int RPT_X = THREADS / XC, RPT_Y = THREADS / YC, PASSES_X = NC / RPT_X, PASSES_Y = NC / RPT_Y;
    static_assert(BS == 16 && XW >= 64 && YW >= 64 && NC % 16 == 0 && STAGES >= 2, "updat_tile_tc tiling");
    static_assert(THREADS % XC == 0 && THREADS % YC == 0 && NC % RPT_X == 0 && NC % RPT_Y == 0, "copy passes");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    const int r0 = items[blockIdx.x * 4], c0 = items[blockIdx.x * 4 + 1];
    const int first = items[blockIdx.x * 4 + 2], count = items[blockIdx.x * 4 + 3];
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, qd = lane / 8, r = lane % 8;

    // the warp's blocks: w index (-1: none) and its lanes' ldmatrix offsets in the x and dy tiles (kk = 0;
    // (kk + row) mod 8 = row mod 8 for the multiples of 16 that kk takes, so step kk adds kk·XW / kk·YW)
    int kb[BPW], aoff[BPW], boff[BPW];
#pragma unroll
    for (int s = 0; s < BPW; s++) {
        const int j = s * WARPS + warp;
        kb[s] = j < count ? entries[first + j] : -1;
        const int rr = kb[s] >= 0 ? rows[kb[s]] - r0 : 0, cc = kb[s] >= 0 ? cols[kb[s]] - c0 : 0;
        aoff[s] = tc_swz<XW>(r + (qd / 2) * 8, rr * BS + (qd % 2) * 8);
        boff[s] = tc_swz<YW>(r + (qd % 2) * 8, cc * BS + (qd / 2) * 8);
    }
    float acc[BPW][2][4];
#pragma unroll
    for (int s = 0; s < BPW; s++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[s][j][q] = 0.f;

    // fixed per-thread copies: chunk jx of x-tile rows rx + p·RPT_X, chunk jy of dy-tile rows ry + p·RPT_Y
    const int jx = threadIdx.x % XC, rx = threadIdx.x / XC, jy = threadIdx.x % YC, ry = threadIdx.x / YC;
    const i64 xcol = (i64)r0 * BS + jx * 8, ycol = (i64)c0 * BS + jy * 8;
    const bool xin = xcol < in_features, yin = ycol < out_features;  // tile columns past the features: zeros
    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};  // the loader's pair
    auto load_stage = [&](int q, int slot) {
        const UpdateChunk<T> ch = walk.chunk(q0 + q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        T* xs = smem + slot * STAGE;
        T* ys = xs + XTILE;
#pragma unroll
        for (int p = 0; p < PASSES_X; p++) {
            const i64 n = n0 + rx + p * RPT_X;
            const bool ok = xin && n < nt;
            cp_async16(xs + tc_swz<XW>(rx + p * RPT_X, jx * 8), xp + (ok ? n * in_features + xcol : 0), ok ? 16 : 0);
        }
#pragma unroll
        for (int p = 0; p < PASSES_Y; p++) {
            const i64 n = n0 + ry + p * RPT_Y;
            const bool ok = yin && n < nt;
            cp_async16(ys + tc_swz<YW>(ry + p * RPT_Y, jy * 8), dyp + (ok ? n * out_features + ycol : 0), ok ? 16 : 0);
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < total) load_stage(s, s);
        cp_async_commit();
    }
    for (int q = 0; q < total; q++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = q + STAGES - 1;
        if (next < total) load_stage(next, next % STAGES);
        cp_async_commit();
        const T* xs = smem + (q % STAGES) * STAGE;
        const T* ys = xs + XTILE;
#pragma unroll
        for (int kk = 0; kk < NC; kk += 16)
#pragma unroll
            for (int s = 0; s < BPW; s++) {
                if (kb[s] < 0) continue;  // warp-uniform
                unsigned a[4], t[4];
                ldmatrix_x4<true>(a, xs + kk * XW + aoff[s]);
                ldmatrix_x4<true>(t, ys + kk * YW + boff[s]);
                Mma<T>::k16(acc[s][0], a, t[0], t[1]);
                Mma<T>::k16(acc[s][1], a, t[2], t[3]);
            }
    }
    cp_async_wait<0>();
    // D[m][n] = dW[m][n]: c0, c1 at row lane/4, columns 8j + 2·(lane % 4) (+1); c2, c3 at row lane/4 + 8
#pragma unroll
    for (int s = 0; s < BPW; s++) {
        if (kb[s] < 0) continue;
        const i64 k = kb[s];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = lane / 4 + h * 8, f = j * 8 + (lane % 4) * 2;
                float v0 = acc[s][j][2 * h], v1 = acc[s][j][2 * h + 1];
                if (gridDim.y > 1) {
                    *reinterpret_cast<float2*>(ws + ((i64)blockIdx.y * nnz + k) * BS * BS + m * BS + f) =
                        make_float2(v0, v1);
                    continue;
                }
                TO* o = dw + k * BS * BS + m * BS + f;
                if (accumulate) { v0 += to_float<TO>(o[0]); v1 += to_float<TO>(o[1]); }
                o[0] = from_float<TO>(v0);
                o[1] = from_float<TO>(v1);
            }
    }
}

// updat_ffma: fp32 update on FFMA (the register-blocked tiles above), 16-byte aligned pairs (feature axis 0:
// every N % 4 == 0). One CTA per group of up to G nonzero blocks (`groups`, as updat_tc) of one block row
// (XR = 1) or of two consecutive nonempty block rows (XR = 2: update_groups packs a row's last partial group
// with the next row's first blocks, so no slot idles at the end of a row); the x chunk of each of its rows
// (NC batch rows) is loaded once per stage and shared by the blocks of that row, each block with its own dy
// chunk. (b/8)² threads own one block, 8 × 8 outputs each: dW[i][j] += Σ_n x[n][i]·dy[n][j] with A = xᵀ
// (m = i, k = n) and B = dy (n = j). Feature axis 1 keeps the chunks as loaded ([n][i], k-major); axis 0
// loads [i][n] rows, swizzled. Each output is summed by one thread over the chunks in order:
// bit-reproducible; splits (gridDim.y > 1) write fp32 partials to ws for updat_reduce.
// A thread copies the same chunk column of every tile of a stage, so the XR + G source pointers are kept
// in registers (recomputed when a new pair starts) and a stage's copies cost a 64-bit add per tile.
// The group's bookkeeping (blocks, row selectors, tile columns) sits after the stage buffers in dynamic shared
// memory (TAIL = 1), so the buffers start 128-byte aligned: cp.async moves a 32-byte global sector as one unit
// only into a 32-byte aligned shared destination; static __shared__ arrays in front of the dynamic buffers (TAIL
// = 0, the old layout: 144 bytes) shifted every tile by 16 bytes, and each sector was fetched twice (ncu: 305 M
// L2 sectors for the 152 M the copies need). UNR: k groups per iteration of a chunk's k loop (as xw_ffma).
template <int BS, int G, int NC, int STAGES, int KG, int MINB, int AXIS, int XR, int TAIL, int UNR>
__global__ void __launch_bounds__(G * (BS / 8) * (BS / 8), MINB)
updat_ffma(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
           const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
           const int* __restrict__ groups, const int* __restrict__ rows, const int* __restrict__ cols,
           float* __restrict__ dw, float* __restrict__ ws, int nnz, i64 in_features, i64 out_features,
           int accumulate) {
    constexpr int L = BS / 8, TPB = L * L, THREADS = G * TPB, T = XR + G;  // T: tiles per stage
    static_assert(BS % 32 == 0 && NC % 32 == 0 && NC % KG == 0 && STAGES >= 2 && (XR == 1 || XR == 2),
                  "bad updat_ffma tiling");
    constexpr bool KMAJOR = AXIS == 1;            // chunks [n][feature] (axis 1) or swizzled [feature][n]
    constexpr int S = KMAJOR ? BS : NC;            // row length of a chunk tile
    constexpr int TILE = NC * BS + 16;             // + 16 floats: consecutive tiles start 16 banks apart
    constexpr int STAGE = T * TILE;
    // copy geometry of one [R][S] tile: a thread copies chunk column c4 of rows r0 + p·RPP
    constexpr int R = KMAJOR ? NC : BS, CPR = S / 4, RPP = THREADS / CPR, P = R / RPP;
    static_assert(THREADS % CPR == 0 && R % RPP == 0 && (KMAJOR || RPP % 8 == 0), "bad updat_ffma copy shape");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* smem = reinterpret_cast<float*>(smem_raw);
    long long* col_s;  // [T] tiles 0..XR-1: x columns (feature offsets); XR..: dy; -1: no tile
    int *blk_s, *xsel_s;  // [G] each
    if constexpr (TAIL) {
        col_s = reinterpret_cast<long long*>(smem + STAGES * STAGE);
        blk_s = reinterpret_cast<int*>(col_s + T);
        xsel_s = blk_s + G;
    } else {
        __shared__ int blk_st[G], xsel_st[G];
        __shared__ long long col_st[T];
        col_s = col_st;
        blk_s = blk_st;
        xsel_s = xsel_st;
    }
    const int* grp = groups + (i64)blockIdx.x * G;  // slot 0 is never empty
    if (threadIdx.x < G) {
        const int k = grp[threadIdx.x];
        blk_s[threadIdx.x] = k;
        col_s[XR + threadIdx.x] = k >= 0 ? (long long)cols[k] * BS : -1;
        xsel_s[threadIdx.x] = XR == 2 && k >= 0 && rows[k] != rows[grp[0]];
    } else if (threadIdx.x == G) {
        const int r0 = rows[grp[0]];
        col_s[0] = (long long)r0 * BS;
        if (XR == 2) {
            int last = G - 1;
            while (grp[last] < 0) last--;
            const int r1 = rows[grp[last]];
            col_s[XR - 1] = r1 != r0 ? (long long)r1 * BS : -1;
        }
    }
    __syncthreads();
    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    const int gw = threadIdx.x / TPB;
    int mg, ng;
    lane_coords<L, L>(threadIdx.x % TPB, mg, ng);
    const bool active = blk_s[gw] >= 0;
    const int a_base = KMAJOR ? mg * 4 : mg, b_base = KMAJOR ? ng * 4 : ng;
    const int x_tile = xsel_s[gw];  // the x tile of this block's row
    int live_bytes[T];  // 16: tile t is loaded; 0: no tile (empty slot, or one row in an XR = 2 group)
#pragma unroll
    for (int t = 0; t < T; t++) live_bytes[t] = col_s[t] >= 0 ? 16 : 0;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.f;

    const int r0 = threadIdx.x / CPR, c4 = threadIdx.x % CPR;
    const int dst0 = KMAJOR ? r0 * S + c4 * 4 : swz<S>(r0, c4);
    // the loader's current pair, cached in registers (chunks are visited in increasing order): no global
    // loads in front of a stage's copies except when a new pair starts
    int lp = -1;
    long long lp_begin = 0, lp_end = 0, nt = 0;
    const float* xp = nullptr;
    const float* src[T];  // this thread's first chunk of tile t at batch row 0 of the current pair
#pragma unroll
    for (int t = 0; t < T; t++) src[t] = nullptr;
    auto load_stage = [&](int q, float* base) {
        q += q0;
        while (lp_end <= q) {
            lp++;
            lp_begin = lp_end;
            lp_end = chunk_ptr[lp + 1];
            xp = reinterpret_cast<const float*>(x_ptrs[lp]);
            const float* dyp = reinterpret_cast<const float*>(dy_ptrs[lp]);
            nt = ns[lp];
#pragma unroll
            for (int t = 0; t < T; t++) {
                const float* p0 = t < XR ? xp : dyp;
                const i64 col = col_s[t] < 0 ? 0 : col_s[t];
                src[t] = p0 + (KMAJOR ? r0 * (t < XR ? in_features : out_features) + col : (col + r0) * nt) + c4 * 4;
            }
        }
        const i64 n0 = (i64)(q - lp_begin) * NC;
        const i64 left = nt - n0;  // valid batch rows of this chunk (axis 0: N % 4 == 0, whole 16-byte chunks)
        // batch offset of this chunk and the step between a thread's copies, for x and dy tiles; the empty asm
        // keeps the offsets in registers (computed once per stage, not once per tile)
        i64 off_x = KMAJOR ? n0 * in_features : n0, off_y = KMAJOR ? n0 * out_features : n0;
        asm volatile("" : "+l"(off_x), "+l"(off_y));
        const i64 step_x = RPP * (KMAJOR ? in_features : nt), step_y = RPP * (KMAJOR ? out_features : nt);
        bool ok[P];  // the thread's p-th copy holds data (the same rows or columns in every tile)
#pragma unroll
        for (int p = 0; p < P; p++) ok[p] = KMAJOR ? r0 + p * RPP < left : c4 * 4 < left;
        // every tile is copied, an empty slot's with 0 source bytes (zero-filled, never read): no branch per tile
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float* s = src[t] + (t < XR ? off_x : off_y);
            float* d = base + t * TILE + dst0;
#pragma unroll
            for (int p = 0; p < P; p++) {
                cp_async16(d + p * RPP * S, ok[p] ? s : xp, (ok[p] ? 16 : 0) & live_bytes[t]);
                s += t < XR ? step_x : step_y;
                opaque_ptr(s);
            }
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < total) load_stage(s, smem + s * STAGE);
        cp_async_commit();
    }
    for (int q = 0; q < total; q++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = q + STAGES - 1;
        if (next < total) load_stage(next, smem + (next % STAGES) * STAGE);
        cp_async_commit();
        if (!active) continue;
        const float* Ss = smem + (q % STAGES) * STAGE;
        const float* Xs = Ss + x_tile * TILE;
        const float* Ys = Ss + (XR + gw) * TILE;
#pragma unroll(UNR)
        for (int k0 = 0; k0 < NC; k0 += KG) {
            float a[8][KG], b[8][KG];
            ffma_frag<KG, KMAJOR, L, S>(a, Xs, a_base, k0);
            ffma_frag<KG, KMAJOR, L, S>(b, Ys, b_base, k0);
            ffma_8x8<KG>(acc, a, b);
        }
    }
    cp_async_wait<0>();
    if (!active) return;
    const i64 k = blk_s[gw];
    float* out = gridDim.y > 1 ? ws + ((i64)blockIdx.y * nnz + k) * BS * BS : dw + k * BS * BS;
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float* o = out + frag_index<KMAJOR, L>(mg, i) * BS + frag_index<KMAJOR, L>(ng, j);
            float v = acc[i][j];
            if (accumulate && gridDim.y == 1) v += *o;
            *o = v;
        }
}

// updat_reduce: dw = (accumulate ? dw : 0) + Σ_s ws[s], s in increasing order (deterministic).
// Grid-stride over the nnz·b² outputs; ws is [splits][nnz·b²] fp32.
template <typename TO>
__global__ void updat_reduce(const float* __restrict__ ws, TO* __restrict__ dw, int splits, i64 count,
                             int accumulate) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float v = accumulate ? to_float<TO>(dw[i]) : 0.f;
        float sum = 0.f;
        for (int s2 = 0; s2 < splits; s2++) sum += ws[s2 * count + i];
        dw[i] = from_float<TO>(v + sum);
    }
}

// updat_simt: FFMA update in fp32 for any input type, one CTA of 256 threads per nonzero block.
// Threads form G = 256 / (BS/4)² groups; each thread owns a 4 × 4 piece of the block, and group g
// takes the rows n ≡ g (mod G) of each chunk of NC = 32 rows. The G partials are summed in group order.
template <typename T, typename TO, int BS, int AXIS>
__global__ void __launch_bounds__(256)
updat_simt(const long long* __restrict__ x_ptrs, const long long* __restrict__ dy_ptrs,
           const long long* __restrict__ ns, const long long* __restrict__ chunk_ptr, int pairs,
           const int* __restrict__ rows, const int* __restrict__ cols, TO* __restrict__ dw, float* __restrict__ ws,
           int nnz, i64 in_features, i64 out_features, int accumulate) {
    constexpr int NC = 32, THREADS = 256, PER = (BS / 4) * (BS / 4), G = THREADS / PER;
    constexpr int S = BS + 4;
    __shared__ __align__(16) float Xs[NC * S];
    __shared__ __align__(16) float Ys[NC * S];
    __shared__ float red[G > 1 ? G * BS * BS : 1];  // per-group partials (16 KiB when G > 1)

    const int blk = blockIdx.x;
    const i64 xcol = (i64)rows[blk] * BS, ycol = (i64)cols[blk] * BS;
    const int g = threadIdx.x / PER, t = threadIdx.x % PER;
    const int ti = (t / (BS / 4)) * 4, tj = (t % (BS / 4)) * 4;
    float acc[4][4] = {};

    int q0, total;  // this split's chunks
    update_split(chunk_ptr, pairs, q0, total);
    UpdatePairs<T> walk{x_ptrs, dy_ptrs, ns, chunk_ptr};
    for (int q = q0; q < q0 + total; q++) {
        const UpdateChunk<T> ch = walk.chunk(q, NC);
        const T* xp = ch.x;
        const T* dyp = ch.dy;
        const i64 nt = ch.rows, n0 = ch.n0;
        {
            __syncthreads();
            for (int idx = threadIdx.x; idx < NC * BS; idx += THREADS) {
                int r, f;
                if (AXIS == 1) { r = idx / BS; f = idx % BS; }
                else { f = idx / NC; r = idx % NC; }
                i64 n = n0 + r;
                float xv = 0.f, yv = 0.f;
                if (n < nt) {
                    xv = to_float<T>(AXIS == 1 ? xp[n * in_features + xcol + f] : xp[(xcol + f) * nt + n]);
                    yv = to_float<T>(AXIS == 1 ? dyp[n * out_features + ycol + f] : dyp[(ycol + f) * nt + n]);
                }
                Xs[r * S + f] = xv;
                Ys[r * S + f] = yv;
            }
            __syncthreads();
            for (int r = g; r < NC; r += G) {
                float a[4], bv[4];
#pragma unroll
                for (int i = 0; i < 4; i++) { a[i] = Xs[r * S + ti + i]; bv[i] = Ys[r * S + tj + i]; }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
            }
        }
    }
    TO* out = dw + (i64)blk * BS * BS;
    float* part = ws + ((i64)blockIdx.y * nnz + blk) * BS * BS;  // split partials (gridDim.y > 1)
    if (G == 1) {
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int idx = (ti + i) * BS + tj + j;
                float v = acc[i][j];
                if (gridDim.y > 1) { part[idx] = v; continue; }
                if (accumulate) v += to_float<TO>(out[idx]);
                out[idx] = from_float<TO>(v);
            }
        return;
    }
    // G > 1: reduce the groups' partials through shared memory in group order
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) red[g * BS * BS + (ti + i) * BS + tj + j] = acc[i][j];
    __syncthreads();
    for (int idx = threadIdx.x; idx < BS * BS; idx += THREADS) {
        float v = 0.f;
        for (int q = 0; q < G; q++) v += red[q * BS * BS + idx];
        if (gridDim.y > 1) { part[idx] = v; continue; }
        if (accumulate) v += to_float<TO>(out[idx]);
        out[idx] = from_float<TO>(v);
    }
}
