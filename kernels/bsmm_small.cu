// Block-sparse matmul for small batches (N ≤ 64): fprop y = x·W and bprop dx = dy·Wᵀ, b = 32, AXIS = 1.
//
// At small N the op is weight streaming: each nonzero block (2 KB fp16, 4 KB fp32) is read once from
// HBM, the activations (N × features, a few MB at most) stay in L2. What limits the per-column kernels
// of bsmm.cu there is load balance (a CTA per output block column: columns differ in length, and a few
// hundred columns quantize badly on 132 SMs) and bytes in flight (one block per pipeline stage).
//
// xw_small: "stream-K" over the column-sorted block list. The host (cusparseblocks/_matmul_gpu.py,
// small_tables) cuts the list `entries` [nnz] of int2 (r = reduction block, k = index in w) — CSC order
// for fprop, CSR order for bprop, as the other xw kernels take it — into gridDim.x contiguous ranges of
// equal block count, one per CTA (ent_ptr), and each range into pieces of columns, each a run of stages
// of at most EPS blocks: `stages` [stage_ptr[g] : stage_ptr[g+1]) of int4 (first entry relative to
// ent_ptr[g], count | FIRST | LAST, column c, part). part = -1 when the piece is the whole column (the CTA
// writes y), else the index of the piece's fp32 partial tile in `ws` [n_parts][BM][32]: parts[part] =
// (first, count) gives the column's pieces (parts first .. first + count - 1, in list order). Each piece's
// CTA writes its partial, then counts itself in counters[first]; the last to arrive sums the column's
// pieces in part order (the same order and bits on every run), adds y when accumulating, writes y and
// resets the counter to 0 for the next launch. Empty columns (zero_cols) are zeroed, strided over CTAs.
// A CTA first copies its entries and stage records to shared memory: no global load in the loop.
//
// Inside a CTA, blocks stream through a STAGES-deep cp.async pipeline of EPS = WARPS·BPW blocks per
// stage (a stage: EPS × (x tile [BM × 32] from L2, w block [32 × 32]); one barrier per stage); a
// segment starts a new stage. Warp q computes the blocks q, q + WARPS, ... of each stage into its own
// full [BM × 32] fp32 tile, so no warp waits on another inside a segment; at a segment's end the warps'
// tiles are summed in warp order through shared memory (the stage slot just consumed). fp16/bf16 use
// mma.sync m16n8k16 (fp32 accumulation), fp32 FFMA (exact, no TF32) with a register-blocked 8 × TN
// thread tile and 128-bit shared loads. Rows n ≥ N are zero-filled and not stored. Global indices 64-bit.
#include "common.cuh"

// ------------------------------------------------------------------------------------------------
// PTX wrappers (the same as bsmm.cu's; tests/cuda_emulation cuts this section for the host build)

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16_full(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
// 16-byte async copy with an L2 cache-policy hint (createpolicy): for data read exactly once
__device__ __forceinline__ void cp_async16_hint(void* dst, const void* src, unsigned long long policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "l"(policy));
}
__device__ __forceinline__ unsigned long long evict_first_policy() {
    unsigned long long p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
    return p;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// mbarriers and 1-D bulk copies (xw_small_ring with BULK = 1; sm_90: the dispatch launches that path only
// there, the sm_80 build of it traps): mbarrier.cuh
#include "mbarrier.cuh"
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

template <typename T> struct Mma;
template <> struct Mma<__half> {
    static __device__ __forceinline__ void k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
// end of PTX wrappers
// ------------------------------------------------------------------------------------------------

namespace small {

constexpr int BS = 32;  // block size
__device__ __forceinline__ int warp_id() { return threadIdx.x / 32; }
__device__ __forceinline__ int lane_id() { return threadIdx.x % 32; }

template <typename T> struct IsF32 { static constexpr bool value = false; };
template <> struct IsF32<float> { static constexpr bool value = true; };

// Shared-memory row stride (elements) of x tiles and w blocks: fp16 rows of 32 values padded to 40
// (80 B, an odd number of 16-byte units: the 8 rows of an ldmatrix hit distinct bank groups); fp32 rows
// padded to 36 (144 B: adjacent rows shift by 16 B, so the 4-8 rows of one 128-bit load don't collide).
template <typename T> __host__ __device__ constexpr int stride() { return IsF32<T>::value ? 36 : 40; }
constexpr int RS = 36;  // fp32 row stride of the warps' tiles in the segment reduction
// SWZ = 1 (fp16/bf16, xw_small_ring): unpadded 64-byte rows with the 16-byte pieces of row r permuted
// (piece c at c ^ ((r / 2) % 4)). The padded rows cost the cp.async copies dearly: ncu of xw_small (H100,
// d = 0.5) counted 15 shared-memory wavefronts per 16-byte-per-lane LDGSTS where 4 are ideal, and 24 L2
// sectors where 16 are (the instruction is split into passes that fetch sectors again); an unpadded
// destination takes each warp's 512 bytes as 4 whole 128-byte lines. The permutation keeps ldmatrix
// conflict-free: its 8 rows at one logical piece land on 8 distinct 16-byte bank groups.
// Measured (H100, 2026-11-26 (third) run 3): SWZ = 1 made it worse (x copies 20 wavefronts and 32 sectors per
// LDGSTS, w 12 and 32): an LDGSTS is cheap only when consecutive lanes write consecutive 16-byte pieces.
// SWZ = 2 (fp16/bf16): rows in pairs, a pair = 128 contiguous bytes (rows 2p and 2p + 1 unpadded), pairs 144
// bytes apart; 8 lanes copying one row pair write 128 contiguous bytes in lane order, and the 8 rows of an
// ldmatrix at one piece fall on 16-byte bank groups (p + 4 (r % 2) + c) mod 8 over 4 consecutive p: distinct.
// tile_stride is the mean row stride (BM rows take BM · tile_stride elements).
// SWZ = 3 (fp16/bf16, xw_small_ring, "k-permuted"): the x tile and the bprop w block unpadded (64-byte rows,
// pieces in order), the fprop w block unpadded with piece c of row r at c ^ ((r / 8) % 4); every copy lands
// whole (consecutive lanes write consecutive 16-byte pieces, as the stream probe's 1.03× copies did). The
// reduction index k of each block is permuted consistently in both operands: lane t (= lane % 4) of an mma
// row group owns the physical k = 8t .. 8t + 7, i.e. logical k = 16s + 8h + 2t + e (mma step s, half h,
// element e) at p = 8t + 4s + 2h + e. So the A fragments of both steps are one 16-byte shared load per row
// (no ldmatrix), bprop's B fragments (rows n of w, k contiguous) one 16-byte load per n-tile, and fprop's
// (rows k of w) ldmatrix.trans with the row addresses permuted; the row swizzle keeps those 8 rows, 8 apart
// in pairs, on 8 distinct 16-byte bank groups. Slots keep the padded size (tile_stride 40).
template <typename T, int SWZ> __host__ __device__ constexpr int tile_stride() {
    return SWZ == 1 ? 32 : SWZ == 2 ? 36 : stride<T>();
}
// SWZ = 3: element offset of the 16-byte piece at position `pos` of row `row` of an x tile or w block, and
// the logical piece the copy puts there (the fprop w block is stored swizzled)
template <int TRANS_W, bool IS_W> __device__ __forceinline__ int kp_chunk(int row, int pos) {
    return (IS_W && !TRANS_W) ? pos ^ ((row >> 3) & 3) : pos;
}
// element offset of 16-byte piece `chunk` of row `row` in a tile of that layout
template <typename T, int SWZ> __device__ __forceinline__ int tile_off(int row, int chunk) {
    return SWZ == 1   ? row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3)
           : SWZ == 2 ? (row >> 1) * 72 + (row & 1) * 32 + chunk * 8
                      : row * stride<T>() + chunk * (16 / (int)sizeof(T));
}

// The thread's accumulators for one [BM × 32] tile and the multiply-add of one block into them.
template <typename T, int BM, int TRANS_W, int SWZ = 0> struct Warp;

// fp16/bf16: warp tile BM × 32 of m16n8 fragments (MI × 4), k in two steps of 16.
template <typename T, int BM, int TRANS_W, int SWZ> struct Warp {
    static constexpr int MI = BM / 16, NI = 4;
    float acc[MI][NI][4];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NI; j++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;
    }
    // As [BM][S]: x rows (m, k); Ws [32][S]: w block rows as in memory (fprop: k, bprop: n)
    __device__ __forceinline__ void mac(const T* As, const T* Ws, int lane) {
        const int q = lane / 8, r = lane % 8;
        if constexpr (SWZ == 3) {  // k-permuted (see tile_stride): 16-byte loads of the thread's 8 k values
            const int g = lane / 4, t = lane % 4;
            uint4 av[MI][2], bv[NI];
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    av[i][h] = *reinterpret_cast<const uint4*>(As + (i * 16 + h * 8 + g) * BS + t * 8);
            if (TRANS_W)
#pragma unroll
                for (int j = 0; j < NI; j++) bv[j] = *reinterpret_cast<const uint4*>(Ws + (j * 8 + g) * BS + t * 8);
#pragma unroll
            for (int s = 0; s < 2; s++) {
                unsigned a[MI][4], b[NI][2];
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    a[i][0] = s ? av[i][0].z : av[i][0].x;
                    a[i][1] = s ? av[i][1].z : av[i][1].x;
                    a[i][2] = s ? av[i][0].w : av[i][0].y;
                    a[i][3] = s ? av[i][1].w : av[i][1].y;
                }
                if (TRANS_W) {
#pragma unroll
                    for (int j = 0; j < NI; j++) {
                        b[j][0] = s ? bv[j].z : bv[j].x;
                        b[j][1] = s ? bv[j].w : bv[j].y;
                    }
                } else {
                    // matrix q: k half h = q % 2, n piece j + q / 2; its row r is logical k 16s + 8h + r,
                    // physical p = 8 (r / 2) + 4s + 2h + r % 2
                    const int p = 8 * (r / 2) + 4 * s + 2 * (q % 2) + r % 2;
#pragma unroll
                    for (int j = 0; j < NI; j += 2) {
                        unsigned tt[4];
                        ldmatrix_x4<true>(tt, Ws + p * BS + (((j + q / 2) ^ ((p >> 3) & 3)) << 3));
                        b[j][0] = tt[0]; b[j][1] = tt[1]; b[j + 1][0] = tt[2]; b[j + 1][1] = tt[3];
                    }
                }
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int j = 0; j < NI; j++) Mma<T>::k16(acc[i][j], a[i], b[j][0], b[j][1]);
            }
            return;
        }
#pragma unroll
        for (int kk = 0; kk < BS; kk += 16) {
            unsigned a[MI][4], b[NI][2];
#pragma unroll
            for (int i = 0; i < MI; i++)
                ldmatrix_x4<false>(a[i], As + tile_off<T, SWZ>(i * 16 + lane % 16, kk / 8 + lane / 16));
#pragma unroll
            for (int j = 0; j < NI; j += 2) {
                unsigned t[4];
                if (TRANS_W)  // B[k][n] = w[n][k]: rows of Ws are n
                    ldmatrix_x4<false>(t, Ws + tile_off<T, SWZ>(j * 8 + r + (q / 2) * 8, kk / 8 + q % 2));
                else          // B[k][n] = w[k][n]: rows of Ws are k
                    ldmatrix_x4<true>(t, Ws + tile_off<T, SWZ>(kk + r + (q % 2) * 8, j + q / 2));
                b[j][0] = t[0]; b[j][1] = t[1]; b[j + 1][0] = t[2]; b[j + 1][1] = t[3];
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++) Mma<T>::k16(acc[i][j], a[i], b[j][0], b[j][1]);
        }
    }
    // the warp's tile into red [BM][LD] (the reduction's RS, or BS for a partial in global memory)
    template <int LD = RS>
    __device__ __forceinline__ void store(float* red, int lane) const {
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NI; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int m = i * 16 + lane / 4 + h * 8, n = j * 8 + (lane % 4) * 2;
                    *reinterpret_cast<float2*>(red + m * LD + n) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                }
    }
};

// fp32 FFMA: lanes form MG × NG (lane = mi·NG + ni); the thread owns rows mi + MG·i (i < 8) and columns
// ni·TN + j (fprop) or ni + NG·j (bprop), j < TN. Per 4 values of k: 8 + TN 128-bit shared loads, 32·TN FFMA.
// Lanes of one load read distinct adjacent rows (or one row's contiguous 16-byte pieces), so with the
// 144-byte row stride no two hit the same bank group.
template <int BM, int TRANS_W, int SWZ> struct Warp<float, BM, TRANS_W, SWZ> {
    static constexpr int MG = BM == 32 ? 4 : 8, NG = 32 / MG, TM = BM / MG, TN = BS / NG, S = stride<float>();
    static_assert(TM == 8 && TN % 4 == 0 && SWZ == 0, "bad fp32 thread tile");
    float acc[TM][TN];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++) acc[i][j] = 0.f;
    }
    static __device__ __forceinline__ float part(const float4& v, int c) {
        return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
    }
    __device__ __forceinline__ void mac(const float* As, const float* Ws, int lane) {
        const int mi = lane / NG, ni = lane % NG;
#pragma unroll 2
        for (int k0 = 0; k0 < BS; k0 += 4) {
            float4 a[TM], b[TRANS_W ? TN : 4 * (TN / 4)];
#pragma unroll
            for (int i = 0; i < TM; i++) a[i] = *reinterpret_cast<const float4*>(As + (mi + MG * i) * S + k0);
            if (TRANS_W) {
#pragma unroll
                for (int j = 0; j < TN; j++) b[j] = *reinterpret_cast<const float4*>(Ws + (ni + NG * j) * S + k0);
            } else {
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
#pragma unroll
                    for (int jj = 0; jj < TN / 4; jj++)
                        b[kk * (TN / 4) + jj] = *reinterpret_cast<const float4*>(Ws + (k0 + kk) * S + ni * TN + 4 * jj);
            }
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
#pragma unroll
                for (int i = 0; i < TM; i++)
#pragma unroll
                    for (int j = 0; j < TN; j++) {
                        const float bv = TRANS_W ? part(b[j], kk) : part(b[kk * (TN / 4) + j / 4], j % 4);
                        acc[i][j] = fmaf(part(a[i], kk), bv, acc[i][j]);
                    }
        }
    }
    template <int LD = RS>
    __device__ __forceinline__ void store(float* red, int lane) const {
        const int mi = lane / NG, ni = lane % NG;
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++) red[(mi + MG * i) * LD + (TRANS_W ? ni + NG * j : ni * TN + j)] = acc[i][j];
    }
};

// The end of a split group's piece, its fp32 partials [C][BM][32] already written to ws (by every thread):
// the CTA counts itself in the group's counter; the last piece to arrive sums the `cols` columns' parts in
// part order (the same bits on every run), adds y when accumulating, writes y and resets the counter for
// the next launch. The fence waits for every memory operation the thread has in flight, its cp.async copies
// included: inside the stream it drains the pipeline (several µs under load), so LATE kernels call this
// after their last block, when nothing is in flight.
template <typename TO, int BM, int C, int THREADS>
__device__ __forceinline__ void finish_split(int p, int group, int cols, int rows, const int2* __restrict__ parts,
                                             const float* ws, unsigned* __restrict__ counters, TO* __restrict__ y,
                                             i64 out_features, int accumulate, int& last_s) {
    __threadfence();
    __syncthreads();
    const int2 pi = parts[p];
    if (threadIdx.x == 0) last_s = atomicAdd(counters + pi.x, 1u) == (unsigned)(pi.y - 1);
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    for (int idx = threadIdx.x; idx < cols * rows * BS; idx += THREADS) {
        const int jj = idx / (rows * BS), e = idx % (rows * BS), m = e / BS, f = e % BS;
        float v = 0.f;
        for (int q = 0; q < pi.y; q++) v += __ldcg(ws + ((i64)(pi.x + q) * C + jj) * BM * BS + e);
        const i64 off = (i64)m * out_features + (i64)(group * C + jj) * BS + f;
        if (accumulate) v += to_float<TO>(y[off]);
        y[off] = from_float<TO>(v);
    }
    if (threadIdx.x == 0) counters[pi.x] = 0u;
}

}  // namespace small

// Dynamic shared memory: STAGES · EPS · (BM + C·32) · stride(T) · sizeof(T) bytes (xw_small_smem() in
// _matmul_gpu.py), plus MAX_ENT items and MAX_STG stage records of static shared memory.
// Column groups (C > 1): the list holds items (r, k_0 .. k_{C-1}) of the output block columns g·C + j
// (k_j = -1: absent), one x tile shared by the item's blocks, so x is read once per item instead of once
// per block; a stage holds EPS items, warp q computes items q, q + WARPS, ... into C tiles. C = 1: the
// items are the entries (r, k).
// Grid: gridDim.x CTAs (a multiple of the resident CTAs), WARPS·32 threads.
// LATE = 1: a split group's piece writes its partials when it ends but counts itself (fence, atomic, the
// last piece's sum) only after the CTA's last block (finish_split: a fence inside the stream drains it);
// at most two pieces per CTA are split (its first and its last), more are finished on the spot.
template <typename T, typename TO, int BM, int WARPS, int BPW, int STAGES, int MAX_ENT, int MAX_STG, int C,
          int TRANS_W, int LATE>
__global__ void __launch_bounds__(WARPS * 32, 1)
xw_small(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ items,
         const int* __restrict__ ent_ptr, const int4* __restrict__ stages, const int* __restrict__ stage_ptr,
         const int* __restrict__ zero_cols, int n_zero, const int2* __restrict__ parts, float* __restrict__ ws,
         unsigned* __restrict__ counters, i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    using namespace small;
    constexpr int THREADS = WARPS * 32, EPS = WARPS * BPW, S = stride<T>(), IW = C + 1;
    constexpr int A_ELEMS = BM * S, W_ELEMS = BS * S, PAIR = A_ELEMS + C * W_ELEMS, STAGE = EPS * PAIR;
    constexpr int CPR = BS * (int)sizeof(T) / 16;  // 16-byte pieces per row of a tile
    static_assert(STAGE * (int)sizeof(T) >= WARPS * BM * RS * 4, "the segment reduction needs one stage slot");
    static_assert(STAGES >= 2 && BM % 16 == 0 && EPS < (1 << 16) && C >= 1, "bad xw_small tiling");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    __shared__ int ent_s[MAX_ENT * IW];  // this CTA's items (r, k_0 .. k_{C-1})
    __shared__ int4 stg_s[MAX_STG];      // its stages: (first item, count | FIRST | LAST, group, part)
    __shared__ int last_s;
    constexpr int FIRST = 1 << 16, LAST = 1 << 17;

    const int rows = (int)min((i64)BM, n_total);
    const int n_cols = (int)(out_features / BS);
    // every table this CTA reads in its loop goes to shared memory first: a load from global memory
    // inside the loop waits behind the megabytes of w in flight (several µs when HBM is saturated)
    const int e_base = ent_ptr[blockIdx.x], n_ent = ent_ptr[blockIdx.x + 1] - e_base;
    const int s_base = stage_ptr[blockIdx.x], n_st = stage_ptr[blockIdx.x + 1] - s_base;
    // (unrolled to the tables' capacity: all loads in flight at once, one memory latency in all)
#pragma unroll
    for (int i = 0; i < (MAX_ENT * IW + THREADS - 1) / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS;
        if (idx < n_ent * IW) ent_s[idx] = items[(i64)e_base * IW + idx];
    }
#pragma unroll
    for (int i = 0; i < (MAX_STG + THREADS - 1) / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS;
        if (idx < n_st) stg_s[idx] = stages[s_base + idx];
    }
    __syncthreads();

    // Loader: thread (lu = tid / TPB, sub = tid % TPB) copies item lu of a stage (its x tile and present w
    // blocks, 16-byte pieces); w is read once, so it is marked evict-first in L2 (x stays).
    constexpr int TPB = THREADS / EPS, A_CH = BM * CPR, W_CH = BS * CPR, VEC = 16 / (int)sizeof(T);
    static_assert(THREADS % EPS == 0 && A_CH % TPB == 0 && W_CH % TPB == 0, "bad xw_small loader split");
    const int lu = threadIdx.x / TPB, sub = threadIdx.x % TPB;
    const unsigned long long w_policy = evict_first_policy();
    auto load_stage = [&](int j, int slot) {
        if (j >= n_st) return;
        const int4 rec = stg_s[j];
        if (lu >= (rec.y & 0xffff)) return;
        const int* it = ent_s + (rec.x + lu) * IW;
        T* As = smem + slot * STAGE + lu * PAIR;
        const T* xs = x + (i64)it[0] * BS;
#pragma unroll
        for (int i = 0; i < A_CH / TPB; i++) {
            const int ch = sub + i * TPB, row = ch / CPR, c8 = (ch % CPR) * VEC;
            const bool ok = row < n_total;
            cp_async16(As + row * S + c8, ok ? xs + row * in_features + c8 : x, ok ? 16 : 0);
        }
#pragma unroll
        for (int jj = 0; jj < C; jj++) {
            const int k = it[1 + jj];
            if (k < 0) continue;
            T* Ws = As + A_ELEMS + jj * W_ELEMS;
            const T* wb = w + (i64)k * BS * BS;
#pragma unroll
            for (int i = 0; i < W_CH / TPB; i++) {
                const int ch = sub + i * TPB, row = ch / CPR, c8 = (ch % CPR) * VEC;
                cp_async16_hint(Ws + row * S + c8, wb + row * BS + c8, w_policy);
            }
        }
    };

#pragma unroll
    for (int j = 0; j < STAGES - 1; j++) {
        load_stage(j, j);
        cp_async_commit();
    }
    Warp<T, BM, TRANS_W> acc[C];
    int n_late = 0;  // LATE: split pieces ended, to be counted after the stream (at most two)
    int2 late0 = make_int2(0, 0), late1 = late0;
    for (int j = 0; j < n_st; j++) {
        const int4 rec = stg_s[j];
        const int cnt = rec.y & 0xffff;
        if (rec.y & FIRST)
#pragma unroll
            for (int jj = 0; jj < C; jj++) acc[jj].zero();
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        load_stage(j + STAGES - 1, (j + STAGES - 1) % STAGES);
        cp_async_commit();
        const T* base = smem + (j % STAGES) * STAGE;
#pragma unroll
        for (int v = 0; v < BPW; v++) {
            const int u = v * WARPS + warp_id();
            if (u >= cnt) continue;
            const int* it = ent_s + (rec.x + u) * IW;
#pragma unroll
            for (int jj = 0; jj < C; jj++)
                if (C == 1 || it[1 + jj] >= 0)
                    acc[jj].mac(base + u * PAIR, base + u * PAIR + A_ELEMS + jj * W_ELEMS, lane_id());
        }
        if (!(rec.y & LAST)) continue;
        // piece end: per column, the warps' tiles summed in warp order through this stage's slot (the next
        // loads into it are issued after the next stage's barrier)
        float* red = reinterpret_cast<float*>(smem + (j % STAGES) * STAGE);
        const int p = rec.w;
#pragma unroll
        for (int jj = 0; jj < C; jj++) {
            const int c = rec.z * C + jj;
            if (c >= n_cols) break;
            __syncthreads();
            acc[jj].store(red + warp_id() * BM * RS, lane_id());
            __syncthreads();
            for (int idx = threadIdx.x; idx < rows * BS; idx += THREADS) {
                const int m = idx / BS, f = idx % BS;
                float v = 0.f;
#pragma unroll
                for (int q = 0; q < WARPS; q++) v += red[q * BM * RS + m * RS + f];
                if (p >= 0) {
                    ws[((i64)p * C + jj) * BM * BS + idx] = v;
                    continue;
                }
                const i64 off = (i64)m * out_features + (i64)c * BS + f;
                if (accumulate) v += to_float<TO>(y[off]);
                y[off] = from_float<TO>(v);
            }
        }
        if (p >= 0) {  // a piece of a split group: the last piece to finish sums them in part order
            if (LATE && n_late < 2) {
                (n_late ? late1 : late0) = make_int2(p, rec.z);
                n_late++;
            } else {
                finish_split<TO, BM, C, THREADS>(p, rec.z, min(C, n_cols - rec.z * C), rows, parts, ws, counters, y,
                                                 out_features, accumulate, last_s);
            }
        }
    }
    cp_async_wait<0>();
    if (LATE)
        for (int k = 0; k < n_late; k++) {
            const int2 lp = k ? late1 : late0;
            finish_split<TO, BM, C, THREADS>(lp.x, lp.y, min(C, n_cols - lp.y * C), rows, parts, ws, counters, y,
                                             out_features, accumulate, last_s);
        }
    // empty columns: zeros (nothing to add when accumulating); last, so that its loads delay no copy
    if (!accumulate)
        for (int i = blockIdx.x; i < n_zero; i += gridDim.x) {
            const i64 c = zero_cols[i];
            for (int idx = threadIdx.x; idx < rows * BS; idx += THREADS)
                y[(i64)(idx / BS) * out_features + c * BS + idx % BS] = from_float<TO>(0.f);
        }
}

// xw_small_ring: xw_small's work split and tables (C = 1, EPS = WARPS: stage j's block u goes to warp u)
// with a ring of SLOTS one-block slots per warp instead of CTA-wide stages. Warp q streams its own blocks
// (the entries rec.x + q of the stages with more than q blocks, in list order) through its ring: it issues
// its block i + SLOTS - 1 into the slot it consumed last, then waits for block i alone, so a slot is
// usable when its own 4 KB (fp16) have landed, not when the slowest of a stage's 8 blocks has, and no
// CTA-wide barrier gates the refills: SLOTS blocks of w and x are in flight per warp at all times.
// All warps walk all stage records; at a piece's last stage (LAST) they sum their tiles in warp order
// through `red` (its own WARPS · BM · 36 floats after the rings), as xw_small does, and a split column's
// last piece sums the parts. BULK = 0: cp.async 16 B per thread (each lane a 16-byte piece of the slot);
// BULK = 1 (sm_90): one cp.async.bulk per row (64 B fp16, 128 B fp32; lane m copies row m of the w block
// and of the x tile, into the padded rows that ldmatrix wants), completion on the slot's mbarrier; rows
// n ≥ N of the x tiles are zeroed once and never copied. Warp tile and multiply as xw_small (Warp<>).
// LATE = 1 as xw_small's: a split column's piece is counted (fence, atomic, last piece's sum) after the
// stream. LATE = 3: no piece end inside the CTA at all: each warp writes its tile of every piece (zeros
// where it had no block of it) to its own fp32 partial in ws (rec.w = the piece's number in list order)
// and goes on streaming, with no barrier, fence or atomic; a second launch, xw_small_reduce, sums each
// column's partials into y (and writes the empty columns). Measured with SWZ = 3 (bench/NOTES.md, 2026-11-27
// sixteenth): without piece ends the stream runs at the memory floor's rate, with the CTA-wide ones at ~1.6×.
// Dynamic shared memory: WARPS · SLOTS · (BM + 32) · stride(T) · sizeof(T) + WARPS · BM · 36 · 4 bytes.
// DIAG (timing-only builds for bench/small_diag.py, never dispatched by default; the output is wrong):
// each set bit removes one piece of the work so that the benchmark can attribute the time: DIAG_NOMMA
// (the multiply: the warp reads one word of w and x per lane instead), DIAG_NOX (the x tile copies),
// DIAG_NOTAB (the table walk: warp q's i-th block is w block e_base + i·WARPS + q, x tile i·WARPS + q mod
// K/32), DIAG_NOEPI (the piece ends: no tile sums, no y), DIAG_EMPTY (return after the table load),
// DIAG_NOZFILL (x copies without the src-size operand).
namespace small {
constexpr int DIAG_NOMMA = 1, DIAG_NOX = 2, DIAG_NOTAB = 4, DIAG_NOEPI = 8, DIAG_EMPTY = 16, DIAG_NOZFILL = 32;
}
template <typename T, typename TO, int BM, int WARPS, int SLOTS, int MAX_ENT, int MAX_STG, int TRANS_W, int BULK,
          int LATE, int SWZ, int DIAG = 0>
__global__ void __launch_bounds__(WARPS * 32, 1)
xw_small_ring(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ items,
              const int* __restrict__ ent_ptr, const int4* __restrict__ stages, const int* __restrict__ stage_ptr,
              const int* __restrict__ zero_cols, int n_zero, const int2* __restrict__ parts, float* __restrict__ ws,
              unsigned* __restrict__ counters, i64 n_total, i64 in_features, i64 out_features, int accumulate) {
    using namespace small;
    constexpr int THREADS = WARPS * 32, S = tile_stride<T, SWZ>(), A_ELEMS = BM * S, SLOT = (BM + BS) * S;
    static_assert(!(SWZ && (BULK || IsF32<T>::value)), "the swizzled tiles take 16-byte cp.async of fp16/bf16");
    constexpr int CPR = BS * (int)sizeof(T) / 16, ROWB = BS * (int)sizeof(T), VEC = 16 / (int)sizeof(T);
    static_assert(SLOTS >= 2 && BM % 16 == 0 && BM <= 64 && (BM * CPR) % 32 == 0, "bad xw_small_ring tiling");
    constexpr int FIRST = 1 << 16, LAST = 1 << 17;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* rings = reinterpret_cast<T*>(smem_raw);
    float* red = reinterpret_cast<float*>(smem_raw + (size_t)WARPS * SLOTS * SLOT * sizeof(T));
    __shared__ int ent_s[MAX_ENT * 2];  // this CTA's entries (r, k)
    __shared__ int4 stg_s[MAX_STG];     // its stages: (first entry, count | FIRST | LAST, column, part)
    __shared__ __align__(8) unsigned long long full[WARPS][SLOTS];  // BULK: slot s of warp q has landed
    __shared__ int last_s;

    const int rows = (int)min((i64)BM, n_total);
    const int e_base = ent_ptr[blockIdx.x], n_ent = ent_ptr[blockIdx.x + 1] - e_base;
    const int s_base = stage_ptr[blockIdx.x], n_st = stage_ptr[blockIdx.x + 1] - s_base;
#pragma unroll
    for (int i = 0; i < (MAX_ENT * 2 + THREADS - 1) / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS;
        if (idx < n_ent * 2) ent_s[idx] = items[(i64)e_base * 2 + idx];
    }
#pragma unroll
    for (int i = 0; i < (MAX_STG + THREADS - 1) / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS;
        if (idx < n_st) stg_s[idx] = stages[s_base + idx];
    }
    const int q = warp_id(), lane = lane_id();
    T* ring = rings + q * SLOTS * SLOT;
    if (BULK) {
        for (int idx = lane; idx < SLOTS * (BM - rows) * BS; idx += 32) {  // x rows n ≥ N: zeros, never copied
            const int s = idx / ((BM - rows) * BS), e = idx % ((BM - rows) * BS);
            ring[s * SLOT + (rows + e / BS) * S + e % BS] = from_float<T>(0.f);
        }
        if (lane == 0) {
            for (int s = 0; s < SLOTS; s++) mbar_init(&full[q][s], 1);
            mbar_init_fence();
        }
    }
    if (DIAG & DIAG_NOX)  // x slots never copied: zeros (no NaN or denormal operands)
        for (int idx = lane; idx < SLOTS * BM * S; idx += 32)
            ring[(idx / (BM * S)) * SLOT + idx % (BM * S)] = from_float<T>(0.f);
    __syncthreads();
    if (DIAG & DIAG_EMPTY) {  // the launch, the table load and the tail alone (the tables kept live)
        if (ent_s[threadIdx.x % (MAX_ENT * 2)] == -1234567 && stg_s[threadIdx.x % MAX_STG].x == -1234567)
            y[threadIdx.x] = from_float<TO>(0.f);
        return;
    }

    const unsigned long long w_policy = evict_first_policy();
    int pj = 0, issued = 0;  // the producer: next stage record to scan for this warp's blocks, blocks issued
    int mine = 0;  // DIAG_NOTAB: this warp's block count, counted once before the loop
    if (DIAG & DIAG_NOTAB)
        for (int j = 0; j < n_st; j++) mine += (stg_s[j].y & 0xffff) > q;
    auto issue_next = [&]() {
        const T *xs, *wb;
        if (DIAG & DIAG_NOTAB) {
            if (issued >= mine) return;
            const int e = min(issued * WARPS + q, n_ent - 1);
            xs = x + (i64)(e % (int)(in_features / BS)) * BS;
            wb = w + (i64)(e_base + e) * BS * BS;
        } else {
            while (pj < n_st && (stg_s[pj].y & 0xffff) <= q) pj++;
            if (pj >= n_st) return;
            const int* it = ent_s + (stg_s[pj].x + q) * 2;
            pj++;
            xs = x + (i64)it[0] * BS;
            wb = w + (i64)it[1] * BS * BS;
        }
        T* As = ring + (issued % SLOTS) * SLOT;
        T* Ws = As + A_ELEMS;
        if (BULK) {
            unsigned long long* bar = &full[q][issued % SLOTS];
            if (lane == 0) mbar_expect_tx(bar, (rows + BS) * ROWB);
            __syncwarp();
#pragma unroll
            for (int m = lane; m < BM; m += 32)
                if (m < rows) bulk_g2s(As + m * S, xs + (i64)m * in_features, ROWB, bar);
            bulk_g2s_hint(Ws + lane * S, wb + lane * BS, ROWB, bar, w_policy);
        } else {
#pragma unroll
            for (int i = 0; i < BM * CPR / 32; i++) {
                if (DIAG & DIAG_NOX) break;
                const int ch = lane + i * 32, row = ch / CPR, c8 = (ch % CPR) * VEC;
                T* dst = SWZ == 3 ? As + row * BS + c8 : As + tile_off<T, SWZ>(row, ch % CPR);
                if (DIAG & DIAG_NOZFILL) {
                    cp_async16_full(dst, xs + row * in_features + c8);
                    continue;
                }
                const bool ok = row < n_total;
                cp_async16(dst, ok ? xs + row * in_features + c8 : x, ok ? 16 : 0);
            }
#pragma unroll
            for (int i = 0; i < BS * CPR / 32; i++) {
                const int ch = lane + i * 32, row = ch / CPR, c8 = (ch % CPR) * VEC;
                if (SWZ == 3)  // unpadded, consecutive destinations; fprop: the source piece swizzled
                    cp_async16_hint(Ws + row * BS + c8, wb + row * BS + kp_chunk<TRANS_W, true>(row, ch % CPR) * VEC,
                                    w_policy);
                else
                    cp_async16_hint(Ws + tile_off<T, SWZ>(row, ch % CPR), wb + row * BS + c8, w_policy);
            }
        }
        issued++;
    };

#pragma unroll
    for (int i = 0; i < SLOTS - 1; i++) {
        issue_next();
        if (!BULK) cp_async_commit();
    }
    Warp<T, BM, TRANS_W, SWZ> acc;
    int n_late = 0;  // LATE = 1: split pieces ended, to be counted after the stream (at most two)
    int2 late0 = make_int2(0, 0), late1 = late0;
    float sink = 0.f;  // DIAG_NOMMA's fold
    int used = 0;  // this warp's blocks consumed
    for (int j = 0; j < n_st; j++) {
        const int4 rec = stg_s[j];
        if (rec.y & FIRST) acc.zero();
        if (q < (rec.y & 0xffff)) {
            issue_next();  // block used + SLOTS - 1, into the slot consumed last
            const T* As = ring + (used % SLOTS) * SLOT;
            if (BULK) {
                mbar_wait(&full[q][used % SLOTS], (used / SLOTS) & 1);
            } else {
                cp_async_commit();
                cp_async_wait<SLOTS - 1>();
            }
            __syncwarp();
            if (DIAG & DIAG_NOMMA)  // one word of x and of w per lane, so that the wait is not idle
                sink += reinterpret_cast<const float*>(As)[lane] + reinterpret_cast<const float*>(As + A_ELEMS)[lane];
            else
                acc.mac(As, As + A_ELEMS, lane);
            __syncwarp();  // every lane is done with the slot: the next issue may overwrite it
            used++;
        }
        if (DIAG & DIAG_NOEPI) continue;
        if (!(rec.y & LAST)) continue;
        if (LATE == 3) {  // every warp's tile of the piece to its own partial; xw_small_reduce sums them
            acc.template store<BS>(ws + ((i64)rec.w * WARPS + q) * BM * BS, lane);
            continue;
        }
        const int c = rec.z, p = rec.w;
        // piece end: the warps' tiles summed in warp order (as xw_small)
        __syncthreads();  // the previous piece's readers are done with red
        acc.store(red + q * BM * RS, lane);
        __syncthreads();
        for (int idx = threadIdx.x; idx < rows * BS; idx += THREADS) {
            const int m = idx / BS, f = idx % BS;
            float v = 0.f;
#pragma unroll
            for (int k = 0; k < WARPS; k++) v += red[k * BM * RS + m * RS + f];
            if (p >= 0) {
                ws[(i64)p * BM * BS + idx] = v;
                continue;
            }
            const i64 off = (i64)m * out_features + (i64)c * BS + f;
            if (accumulate) v += to_float<TO>(y[off]);
            y[off] = from_float<TO>(v);
        }
        if (p >= 0) {  // a piece of a split column: the last piece to finish sums them in part order
            if (LATE == 1 && n_late < 2) {
                (n_late ? late1 : late0) = make_int2(p, c);
                n_late++;
            } else {
                finish_split<TO, BM, 1, THREADS>(p, c, 1, rows, parts, ws, counters, y, out_features, accumulate,
                                                 last_s);
            }
        }
    }
    if (!BULK) cp_async_wait<0>();
    if (LATE == 1)
        for (int k = 0; k < n_late; k++) {
            const int2 lp = k ? late1 : late0;
            finish_split<TO, BM, 1, THREADS>(lp.x, lp.y, 1, rows, parts, ws, counters, y, out_features, accumulate,
                                             last_s);
        }
    if (DIAG) {  // keep the diagnostic's work live: a store no real input triggers
        float v = sink;
        if (!(DIAG & DIAG_NOMMA)) {
            acc.store(red + q * BM * RS, lane);
            v += red[q * BM * RS + lane];
        }
        if (v == 1.2345e-30f) y[threadIdx.x] = from_float<TO>(v);
        return;
    }
    if (!accumulate && LATE != 3)
        for (int i = blockIdx.x; i < n_zero; i += gridDim.x) {
            const i64 c = zero_cols[i];
            for (int idx = threadIdx.x; idx < rows * BS; idx += THREADS)
                y[(i64)(idx / BS) * out_features + c * BS + idx % BS] = from_float<TO>(0.f);
        }
}

// LATE = 3's second launch: y's column c (one CTA each, every output column) = the sum of its pieces'
// partials (colseg[c] = (first piece, pieces); a piece's WARPS tiles [BM][32] at ws + (piece · WARPS + q) ·
// BM · 32), in piece then warp order (the same bits on every run), + y when accumulating; 0 for a column
// without pieces. The partials were written by the launch before on the same stream, so they are in L2.
template <typename TO, int BM, int WARPS>
__global__ void __launch_bounds__(256)
xw_small_reduce(const float* __restrict__ ws, const int2* __restrict__ colseg, TO* __restrict__ y, i64 n_total,
                i64 out_features, int accumulate) {
    using namespace small;
    const int c = blockIdx.x, rows = (int)min((i64)BM, n_total);
    const int2 cs = colseg[c];
    for (int idx = threadIdx.x; idx < rows * BS; idx += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < cs.y; s++) {
            const float* part = ws + (i64)(cs.x + s) * WARPS * BM * BS + idx;
            float t[WARPS];
#pragma unroll
            for (int q = 0; q < WARPS; q++) t[q] = __ldcg(part + q * BM * BS);
#pragma unroll
            for (int q = 0; q < WARPS; q++) v += t[q];
        }
        const i64 off = (i64)(idx / BS) * out_features + (i64)c * BS + idx % BS;
        if (accumulate) v += to_float<TO>(y[off]);
        y[off] = from_float<TO>(v);
    }
}
