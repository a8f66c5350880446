// Streaming probes (bench/stream_probe.py only; not launched by the library): how fast can one read the
// nonzero weight blocks of the small-batch matmul (w [nnz] blocks of BLK bytes, visited in a list order:
// CSC order of the CSR-stored w for fprop) with each way of moving data on sm_90, at a given number of
// bytes in flight per SM? Every probe streams the list `order` [n] (block indices), cut into gridDim.x
// equal contiguous ranges (one per CTA, copied to shared memory first, as xw_small does), optionally with
// an x tile per block (XT: 32 rows of BLK/32 bytes at x + xrow[i]·BLK/32 + row·x_stride, as xw_small's
// activations), and "consumes" each arrived stage with one 16-byte shared load per thread folded into a
// checksum written to sink[global thread] (so no load is dead). What each probe measures:
//   probe_cta:  a CTA-wide ring of STAGES stages of EPS blocks, one __syncthreads per stage (xw_small's
//               scheme); MODE 0: cp.async 16 B per thread (HINT: evict-first policy on w), MODE 1: one
//               cp.async.bulk per block (completion on the stage's mbarrier), MODE 2: one bulk copy per
//               BLK/32-byte row (the padded layout xw_small's ldmatrix wants), issued by warp 0.
//   probe_warp: a ring of SLOTS one-block slots per warp (warp q streams entries q, q + WARPS, ...), no
//               CTA-wide barrier; MODE as above (MODE 0 waits with cp.async.wait_group + __syncwarp,
//               MODES 1-2 on the slot's mbarrier).
//   probe_ldg:  plain ld.global.nc.L1::no_allocate.v4 into registers, U blocks per warp in flight.
#include "common.cuh"

namespace probe {

constexpr int MAX_ENT = 1024;  // entries per CTA (the script launches enough CTAs)

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async16_hint(void* dst, const void* src, unsigned long long policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "l"(policy));
}
__device__ __forceinline__ unsigned long long evict_first_policy() {
    unsigned long long p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
    return p;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

#include "mbarrier.cuh"  // the bulk probes are sm_90 only (never launched below it)

__device__ __forceinline__ uint4 ldg_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// this CTA's entries (block index, x tile index) into shared memory; returns their count
__device__ __forceinline__ int load_range(const int* order, const int* xrow, int n, int* ord_s, int* xr_s) {
    // 32-bit: n · gridDim.x < 2^32 at the script's sizes (no 64-bit division routine in the kernel)
    const int lo = (int)((unsigned)n * blockIdx.x / gridDim.x), hi = (int)((unsigned)n * (blockIdx.x + 1) / gridDim.x);
    for (int i = threadIdx.x; i < hi - lo; i += blockDim.x) {
        ord_s[i] = order[lo + i];
        xr_s[i] = xrow[lo + i];
    }
    return hi - lo;
}

// acc ^= the four words, as a volatile asm: stays after every volatile load issued before it in the source
__device__ __forceinline__ void fold4(unsigned& acc, const uint4& v) {
    asm volatile("xor.b32 %0, %0, %1;\n xor.b32 %0, %0, %2;\n xor.b32 %0, %0, %3;\n xor.b32 %0, %0, %4;\n"
                 : "+r"(acc) : "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}

__device__ __forceinline__ void fold(unsigned& acc, const unsigned char* slot, int bytes) {
    const uint4 v = *reinterpret_cast<const uint4*>(slot + (threadIdx.x * 16) % bytes);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
}

}  // namespace probe

// CTA-wide ring: stage j = entries j·EPS .. j·EPS + EPS - 1 of the CTA's range; slot = EPS · BLK · (1 + XT)
// bytes (w blocks, then x tiles). 256 threads.
template <int BLK, int EPS, int STAGES, int MODE, int HINT, int XT>
__global__ void __launch_bounds__(256) probe_cta(const unsigned char* __restrict__ w, const int* __restrict__ order,
                                                 const unsigned char* __restrict__ x, const int* __restrict__ xrow,
                                                 i64 x_stride, int n, unsigned* __restrict__ sink) {
    using namespace probe;
    constexpr int ROW = BLK / 32, SLOT = EPS * BLK * (1 + XT), THREADS = 256;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int ord_s[MAX_ENT], xr_s[MAX_ENT];
    __shared__ __align__(8) unsigned long long full[STAGES];
    const int cnt = load_range(order, xrow, n, ord_s, xr_s);
    if (MODE && threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) mbar_init(full + s, 1);
        mbar_init_fence();
    }
    __syncthreads();
    const int n_st = (cnt + EPS - 1) / EPS;
    const unsigned long long pol = evict_first_policy();
    auto issue = [&](int j) {  // stage j into slot j % STAGES
        if (j >= n_st) return;
        unsigned char* slot = smem + (j % STAGES) * SLOT;
        const int nb = min(EPS, cnt - j * EPS);
        if (MODE == 0) {
            for (int c = threadIdx.x; c < nb * (BLK / 16); c += THREADS) {
                const int e = c / (BLK / 16), p = c % (BLK / 16);
                const unsigned char* src = w + (i64)ord_s[j * EPS + e] * BLK + p * 16;
                if (HINT)
                    cp_async16_hint(slot + e * BLK + p * 16, src, pol);
                else
                    cp_async16(slot + e * BLK + p * 16, src);
            }
            if (XT)
                for (int c = threadIdx.x; c < nb * (BLK / 16); c += THREADS) {
                    const int e = c / (BLK / 16), r = (c % (BLK / 16)) / (ROW / 16), p = c % (ROW / 16);
                    cp_async16(slot + EPS * BLK + e * BLK + r * ROW + p * 16,
                               x + (i64)xr_s[j * EPS + e] * ROW + r * x_stride + p * 16);
                }
        } else if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            if (lane == 0) mbar_expect_tx(full + j % STAGES, nb * BLK * (1 + XT));
            __syncwarp();
            if (MODE == 1) {
                for (int e = lane; e < nb; e += 32)
                    bulk_g2s(slot + e * BLK, w + (i64)ord_s[j * EPS + e] * BLK, BLK, full + j % STAGES);
            } else {
                for (int e = 0; e < nb; e++)
                    bulk_g2s(slot + e * BLK + lane * ROW, w + (i64)ord_s[j * EPS + e] * BLK + lane * ROW, ROW,
                             full + j % STAGES);
            }
            if (XT)
                for (int e = 0; e < nb; e++)
                    bulk_g2s(slot + EPS * BLK + e * BLK + lane * ROW, x + (i64)xr_s[j * EPS + e] * ROW + lane * x_stride,
                             ROW, full + j % STAGES);
        }
    };
    unsigned acc = 0;
    if (MODE == 0) {
        for (int j = 0; j < STAGES - 1; j++) {
            issue(j);
            cp_async_commit();
        }
        for (int j = 0; j < n_st; j++) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            issue(j + STAGES - 1);
            cp_async_commit();
            fold(acc, smem + (j % STAGES) * SLOT, SLOT);
        }
        cp_async_wait<0>();
    } else {
        for (int j = 0; j < STAGES; j++) issue(j);
        for (int j = 0; j < n_st; j++) {
            mbar_wait(full + j % STAGES, (j / STAGES) & 1);
            fold(acc, smem + (j % STAGES) * SLOT, SLOT);
            __syncthreads();  // every thread is done with the slot: refill it
            issue(j + STAGES);
        }
    }
    sink[(i64)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// Per-warp rings: warp q streams entries q, q + WARPS, ... of the CTA's range through SLOTS slots of
// BLK · (1 + XT) bytes; no CTA-wide barrier after the start.
template <int BLK, int WARPS, int SLOTS, int MODE, int XT>
__global__ void __launch_bounds__(WARPS * 32) probe_warp(const unsigned char* __restrict__ w,
                                                         const int* __restrict__ order,
                                                         const unsigned char* __restrict__ x,
                                                         const int* __restrict__ xrow, i64 x_stride, int n,
                                                         unsigned* __restrict__ sink) {
    using namespace probe;
    constexpr int ROW = BLK / 32, SLOT = BLK * (1 + XT);
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int ord_s[MAX_ENT], xr_s[MAX_ENT];
    __shared__ __align__(8) unsigned long long full[WARPS][SLOTS];
    const int cnt = load_range(order, xrow, n, ord_s, xr_s);
    const int q = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (MODE && lane == 0) {
        for (int s = 0; s < SLOTS; s++) mbar_init(&full[q][s], 1);
        mbar_init_fence();
    }
    __syncthreads();
    unsigned char* ring = smem + q * SLOTS * SLOT;
    const int mine = cnt > q ? (cnt - q + WARPS - 1) / WARPS : 0;
    const unsigned long long pol = evict_first_policy();
    auto issue = [&](int i) {  // the warp's i-th block into slot i % SLOTS
        if (i >= mine) return;
        const int e = q + i * WARPS;
        unsigned char* slot = ring + (i % SLOTS) * SLOT;
        const unsigned char* wb = w + (i64)ord_s[e] * BLK;
        const unsigned char* xb = x + (i64)xr_s[e] * ROW;
        if (MODE == 0) {
#pragma unroll
            for (int c = lane; c < BLK / 16; c += 32) cp_async16_hint(slot + c * 16, wb + c * 16, pol);
            if (XT)
#pragma unroll
                for (int c = lane; c < BLK / 16; c += 32)
                    cp_async16(slot + BLK + c * 16, xb + (c / (ROW / 16)) * x_stride + (c % (ROW / 16)) * 16);
        } else {
            if (lane == 0) mbar_expect_tx(&full[q][i % SLOTS], SLOT);
            __syncwarp();
            if (MODE == 1) {
                if (lane == 0) bulk_g2s(slot, wb, BLK, &full[q][i % SLOTS]);
            } else {
                bulk_g2s(slot + lane * ROW, wb + lane * ROW, ROW, &full[q][i % SLOTS]);
            }
            if (XT) bulk_g2s(slot + BLK + lane * ROW, xb + lane * x_stride, ROW, &full[q][i % SLOTS]);
        }
    };
    unsigned acc = 0;
    if (MODE == 0) {
        for (int i = 0; i < SLOTS - 1; i++) {
            issue(i);
            cp_async_commit();
        }
        for (int i = 0; i < mine; i++) {
            cp_async_wait<SLOTS - 2>();
            __syncwarp();
            fold(acc, ring + (i % SLOTS) * SLOT, SLOT);
            __syncwarp();
            issue(i + SLOTS - 1);  // into the slot consumed one iteration ago
            cp_async_commit();
        }
        cp_async_wait<0>();
    } else {
        for (int i = 0; i < SLOTS; i++) issue(i);
        for (int i = 0; i < mine; i++) {
            mbar_wait(&full[q][i % SLOTS], (i / SLOTS) & 1);
            fold(acc, ring + (i % SLOTS) * SLOT, SLOT);
            __syncwarp();
            issue(i + SLOTS);
        }
    }
    sink[(i64)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// Registers only: warp q reads entries q, q + 8, ... U blocks at a time (BLK / 512 16-byte loads per lane
// per block, all issued before the first is used). 256 threads.
template <int BLK, int U, int XT>
__global__ void __launch_bounds__(256, 1) probe_ldg(const unsigned char* __restrict__ w, const int* __restrict__ order,
                                                 const unsigned char* __restrict__ x, const int* __restrict__ xrow,
                                                 i64 x_stride, int n, unsigned* __restrict__ sink) {
    using namespace probe;
    constexpr int ROW = BLK / 32, PER = BLK / 512, WARPS = 8;
    __shared__ int ord_s[MAX_ENT], xr_s[MAX_ENT];
    const int cnt = load_range(order, xrow, n, ord_s, xr_s);
    __syncthreads();
    const int q = threadIdx.x / 32, lane = threadIdx.x % 32;
    unsigned acc = 0;
    for (int e0 = q; e0 < cnt; e0 += U * WARPS) {
        uint4 v[U][PER], xv[U][PER];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int e = min(e0 + u * WARPS, cnt - 1);
            const uint4* wb = reinterpret_cast<const uint4*>(w + (i64)ord_s[e] * BLK);
#pragma unroll
            for (int p = 0; p < PER; p++) v[u][p] = ldg_stream(wb + lane + 32 * p);
            if (XT)
#pragma unroll
                for (int p = 0; p < PER; p++) {
                    const int c = lane + 32 * p;
                    xv[u][p] = ldg_stream(reinterpret_cast<const uint4*>(
                        x + (i64)xr_s[e] * ROW + (c / (ROW / 16)) * x_stride + (c % (ROW / 16)) * 16));
                }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int p = 0; p < PER; p++) {
                fold4(acc, v[u][p]);
                if (XT) fold4(acc, xv[u][p]);
            }
    }
    sink[(i64)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
