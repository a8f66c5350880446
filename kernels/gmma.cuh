// wgmma helpers shared by the sm_90a kernels (bsmm_gmma.cu): shared-memory addresses, cp.async,
// proxy fences, wgmma fence/commit/wait, the swizzled tile layouts and matrix descriptors, the
// shared-memory-operand wgmma wrappers, paired epilogue stores and the in-launch split finish.
#pragma once
#include "common.cuh"

namespace gmma {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// keeps the compiler from moving accumulator reads across a wgmma wait
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Byte offset of (row, 16-byte chunk) in a tile of rows of ROW bytes (128, 64 or 32), swizzled as the
// wgmma descriptors' 128B / 64B / 32B modes read it (the tile starts on a 1024-byte boundary; 256 bytes
// suffice for 32-byte rows): bits 4.. of the offset XOR bits 7.. (3, 2 or 1 bits).
template <int ROW>
__device__ __forceinline__ unsigned swizzle(unsigned row, unsigned chunk) {
    static_assert(ROW == 128 || ROW == 64 || ROW == 32, "swizzled rows of 32, 64 or 128 bytes");
    const unsigned lin = row * ROW + chunk * 16;
    constexpr unsigned MASK = ROW / 16 - 1;
    return lin ^ (((lin >> 7) & MASK) << 4);
}

// Matrix descriptor: start address, LBO (unused by these layouts: 1), SBO = 8 rows, swizzle mode.
template <int ROW>
__device__ __forceinline__ unsigned long long desc(unsigned addr) {
    constexpr unsigned long long mode = ROW == 128 ? 1ull : ROW == 64 ? 2ull : 3ull;  // 128B / 64B / 32B
    return (unsigned long long)((addr >> 4) & 0x3FFF) | (1ull << 16) |
           ((unsigned long long)((8 * ROW) >> 4) << 32) | (mode << 62);
}

#define GMMA_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), \
                   "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

// D[64 × N] += A[64 × 16] · B[16 × N], fp32 accumulators (N / 2 per thread); A K-major (TA = 0) or
// M-major (TA = 1), B K-major (TB = 0) or N-major (TB = 1).
template <typename T, int N, int TA, int TB> struct Gmma;
#define GMMA_N64(TY)                                                                                       \
    template <int TA, int TB> struct Gmma<TY, 64, TA, TB> {                                                            \
        static __device__ __forceinline__ void run(float (&d)[32], unsigned long long a, unsigned long long b) { \
            asm volatile(                                                                                  \
                "wgmma.mma_async.sync.aligned.m64n64k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " "         \
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "        \
                "%32, %33, 1, 1, 1, %34, %35;\n"                                                          \
                : GMMA_D8(0), GMMA_D8(8), GMMA_D8(16), GMMA_D8(24)                                          \
                : "l"(a), "l"(b), "n"(TA), "n"(TB));                                                                \
        }                                                                                                  \
    };
#define GMMA_N32(TY)                                                                                       \
    template <int TA, int TB> struct Gmma<TY, 32, TA, TB> {                                                            \
        static __device__ __forceinline__ void run(float (&d)[16], unsigned long long a, unsigned long long b) { \
            asm volatile(                                                                                  \
                "wgmma.mma_async.sync.aligned.m64n32k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " "         \
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "                 \
                "%16, %17, 1, 1, 1, %18, %19;\n"                                                          \
                : GMMA_D8(0), GMMA_D8(8)                                                                   \
                : "l"(a), "l"(b), "n"(TA), "n"(TB));                                                                \
        }                                                                                                  \
    };
#define GMMA_PTX___half "f16"
#define GMMA_PTX___nv_bfloat16 "bf16"
GMMA_N64(__half)
GMMA_N64(__nv_bfloat16)
GMMA_N32(__half)
GMMA_N32(__nv_bfloat16)

template <typename TO> struct Pair;
template <> struct Pair<float> {
    static __device__ __forceinline__ void store(float* p, float a, float b, int acc) {
        float2 v = make_float2(a, b);
        if (acc) { float2 o = *reinterpret_cast<float2*>(p); v.x += o.x; v.y += o.y; }
        *reinterpret_cast<float2*>(p) = v;
    }
};
template <> struct Pair<__half> {
    static __device__ __forceinline__ void store(__half* p, float a, float b, int acc) {
        if (acc) { float2 o = __half22float2(*reinterpret_cast<__half2*>(p)); a += o.x; b += o.y; }
        *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
    }
};
template <> struct Pair<__nv_bfloat16> {
    static __device__ __forceinline__ void store(__nv_bfloat16* p, float a, float b, int acc) {
        if (acc) { float2 o = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(p)); a += o.x; b += o.y; }
        *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
    }
};

// Split updates (gridDim.y > 1) finish in the same launch: each CTA has written its fp32 partials to ws
// [splits][nnz][BS][BS]; the last CTA of group blockIdx.x to arrive (counter done[group], reset to 0 for
// the next launch) sums the partials of the group's NB blocks (blk, -1 = empty) in split order into dw,
// the order and arithmetic of updat_reduce, so the result is the same bits on every run.
template <typename TO, int BS, int NB, int THREADS>
__device__ __forceinline__ void finish_splits(const int* blk, const float* ws, TO* dw, unsigned* done, int nnz,
                                              int accumulate) {
    __shared__ unsigned last;
    __threadfence();  // this CTA's partials are visible to the CTA that sums them
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done + blockIdx.x, 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < NB * BS * BS; i += THREADS) {
        const int k = blk[i / (BS * BS)];
        if (k < 0) continue;
        const i64 off = (i64)k * BS * BS + i % (BS * BS), count = (i64)nnz * BS * BS;
        const float v = accumulate ? to_float<TO>(dw[off]) : 0.f;
        float sum = 0.f;
        for (int s2 = 0; s2 < (int)gridDim.y; s2++) sum += __ldcg(ws + s2 * count + off);
        dw[off] = from_float<TO>(v + sum);
    }
    if (threadIdx.x == 0) done[blockIdx.x] = 0;
}

}  // namespace gmma
