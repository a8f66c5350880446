// wgmma helpers shared by the sm_90a kernels (bsmm_gmma.cu, bsmm_gmma_rs.cu): shared-memory addresses,
// cp.async, proxy fences, wgmma fence/commit/wait, the swizzled and interleaved tile layouts and matrix
// descriptors, the wgmma wrappers (both operands in shared memory, or A in registers) for N = 8 .. 64,
// ldmatrix, paired epilogue stores and the in-launch split finish.
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

// The same with LBO = LBO_BYTES: an MN-major operand wider than one swizzle atom (64 / 32 / 16 elements for
// 128B / 64B / 32B rows), its atoms LBO_BYTES apart (the PTX ISA's canonical MN-major layouts: LBO is the
// stride between atoms along M or N, SBO between groups of 8 rows along K).
template <int ROW, int LBO_BYTES>
__device__ __forceinline__ unsigned long long desc_lbo(unsigned addr) {
    static_assert(LBO_BYTES % 16 == 0 && (LBO_BYTES >> 4) < (1 << 14), "LBO: 14 bits of 16-byte units");
    return desc<ROW>(addr) & ~(0x3FFFull << 16) | ((unsigned long long)(LBO_BYTES >> 4) << 16);
}

// The accumulators of an m64nNk16 wgmma: N / 2 fp32 registers a thread, asm operands 0 .. N / 2 - 1
#define GMMA_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define GMMA_D8(i) GMMA_D4(i), GMMA_D4(i + 4)
#define GMMA_ACC8 GMMA_D4(0)
#define GMMA_ACC16 GMMA_D8(0)
#define GMMA_ACC32 GMMA_D8(0), GMMA_D8(8)
#define GMMA_ACC64 GMMA_D8(0), GMMA_D8(8), GMMA_D8(16), GMMA_D8(24)
#define GMMA_D32(i) GMMA_D8(i), GMMA_D8(i + 8), GMMA_D8(i + 16), GMMA_D8(i + 24)
#define GMMA_ACC128 GMMA_D32(0), GMMA_D32(32)
#define GMMA_ACC256 GMMA_D32(0), GMMA_D32(32), GMMA_D32(64), GMMA_D32(96)
#define GMMA_PTX___half "f16"
#define GMMA_PTX___nv_bfloat16 "bf16"

// D[64 × N] += A[64 × 16] · B[16 × N], fp32 accumulators (N / 2 per thread):
//   Gmma:   A and B from shared memory through descriptors; A K-major (TA = 0) or M-major (TA = 1);
//   GmmaRS: A in registers (4 × b32 a thread: mma.sync's m16k16 fragment per warp, K-major);
// B K-major (TB = 0) or N-major (TB = 1). (A guard predicate on a wgmma compiles to a branch and a
// wgmma.fence per instruction: callers branch around groups of them instead.)
template <typename T, int N, int TA, int TB> struct Gmma;
template <typename T, int N, int TB> struct GmmaRS;
// one shape for one input type: REGS is the PTX list of the accumulators, SS / RS the operands after it
#define GMMA_SHAPE(TY, N, REGS, SS, RS)                                                                     \
    template <int TA, int TB> struct Gmma<TY, N, TA, TB> {                                                 \
        static __device__ __forceinline__ void run(float (&d)[N / 2], unsigned long long a, unsigned long long b) { \
            asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " " \
                         REGS ", " SS ";\n"                                                                \
                         : GMMA_ACC##N                                                                     \
                         : "l"(a), "l"(b), "n"(TA), "n"(TB));                                              \
        }                                                                                                  \
    };                                                                                                     \
    template <int TB> struct GmmaRS<TY, N, TB> {                                                           \
        static __device__ __forceinline__ void run(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long b) { \
            asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " " \
                         REGS ", " RS ";\n"                                                                \
                         : GMMA_ACC##N                                                                     \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB));                   \
        }                                                                                                  \
    };
#define GMMA_SHAPES(N, REGS, SS, RS) GMMA_SHAPE(__half, N, REGS, SS, RS) GMMA_SHAPE(__nv_bfloat16, N, REGS, SS, RS)
GMMA_SHAPES(8, "{%0, %1, %2, %3}", "%4, %5, 1, 1, 1, %6, %7", "{%4, %5, %6, %7}, %8, 1, 1, 1, %9")
GMMA_SHAPES(16, "{%0, %1, %2, %3, %4, %5, %6, %7}", "%8, %9, 1, 1, 1, %10, %11",
            "{%8, %9, %10, %11}, %12, 1, 1, 1, %13")
GMMA_SHAPES(32, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}",
            "%16, %17, 1, 1, 1, %18, %19", "{%16, %17, %18, %19}, %20, 1, 1, 1, %21")
GMMA_SHAPES(64,
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}",
            "%32, %33, 1, 1, 1, %34, %35", "{%32, %33, %34, %35}, %36, 1, 1, 1, %37")
// m64n128k16 (updat_gmma with two blocks a warpgroup)
GMMA_SHAPES(128,
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}",
            "%64, %65, 1, 1, 1, %66, %67", "{%64, %65, %66, %67}, %68, 1, 1, 1, %69")
// m64n256k16 (the transposed two-column tile of xw_tma: D = op(w)ᵀ · xᵀ, N = 256 rows of x): 128 registers
GMMA_SHAPES(256,
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
            "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
            "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
            "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
            "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}",
            "%128, %129, 1, 1, 1, %130, %131", "{%128, %129, %130, %131}, %132, 1, 1, 1, %133")

// GmmaRSz: GmmaRS whose D is first scaled by `keep` (0: D = A · B, the old accumulators ignored; 1: D += A · B),
// so a kernel starting its next tile needs no zeroing of the accumulators by other instructions (ptxas
// serializes every wgmma of a function where non-wgmma instructions define their accumulators in the loop)
template <typename T, int N, int TB> struct GmmaRSz;
#define GMMA_RSZ_BODY(TY, N, REGS, A, B, KEEP, T)                                                          \
    template <int TB> struct GmmaRSz<TY, N, TB> {                                                          \
        static __device__ __forceinline__ void run(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long b, \
                                                   int keep) {                                             \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " KEEP ", 0;\n"                                  \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " "  \
                         REGS ", " A ", " B ", p, 1, 1, " T ";\n}\n"                                          \
                         : GMMA_ACC##N                                                                     \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(keep), "n"(TB));        \
        }                                                                                                  \
    };
#define GMMA_RSZ_SHAPES(N, REGS, A, B, KEEP, T) \
    GMMA_RSZ_BODY(__half, N, REGS, A, B, KEEP, T) GMMA_RSZ_BODY(__nv_bfloat16, N, REGS, A, B, KEEP, T)
GMMA_RSZ_SHAPES(16, "{%0, %1, %2, %3, %4, %5, %6, %7}", "{%8, %9, %10, %11}", "%12", "%13", "%14")
GMMA_RSZ_SHAPES(32, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}",
                "{%16, %17, %18, %19}", "%20", "%21", "%22")

// GmmaSSz: Gmma (A and B from shared memory) with the same scale-d predicate as GmmaRSz; A K-major (TA = 0) or
// M-major (1), B K-major (TB = 0) or N-major (1)
template <typename T, int N, int TA, int TB> struct GmmaSSz;
#define GMMA_SSZ_BODY(TY, N, REGS, A, B, KEEP, TRA, TRB)                                                   \
    template <int TA, int TB> struct GmmaSSz<TY, N, TA, TB> {                                              \
        static __device__ __forceinline__ void run(float (&d)[N / 2], unsigned long long a, unsigned long long b, \
                                                   int keep) {                                             \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " KEEP ", 0;\n"                                  \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." GMMA_PTX_##TY "." GMMA_PTX_##TY " "  \
                         REGS ", " A ", " B ", p, 1, 1, " TRA ", " TRB ";\n}\n"                              \
                         : GMMA_ACC##N                                                                     \
                         : "l"(a), "l"(b), "r"(keep), "n"(TA), "n"(TB));                                   \
        }                                                                                                  \
    };
#define GMMA_SSZ_SHAPES(N, REGS, A, B, KEEP, TRA, TRB) \
    GMMA_SSZ_BODY(__half, N, REGS, A, B, KEEP, TRA, TRB) GMMA_SSZ_BODY(__nv_bfloat16, N, REGS, A, B, KEEP, TRA, TRB)
GMMA_SSZ_SHAPES(16, "{%0, %1, %2, %3, %4, %5, %6, %7}", "%8", "%9", "%10", "%11", "%12")
GMMA_SSZ_SHAPES(32, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}", "%16", "%17",
                "%18", "%19", "%20")
// m64n128k16 / m64n256k16 (conv_fprop_wtp: D = Wᵀ · Xᵀ, N = a warpgroup's 128 or 256 output positions)
GMMA_SSZ_SHAPES(128,
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}",
                "%64", "%65", "%66", "%67", "%68")
GMMA_SSZ_SHAPES(256,
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
                "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
                "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}",
                "%128", "%129", "%130", "%131", "%132")

// Descriptor of a K-major operand without swizzle (mode 0): core matrices of 8 rows × 16 bytes (128 contiguous
// bytes), the next 16 bytes of k LBO bytes further, the next 8 rows SBO bytes further (the PTX ISA's canonical
// K-major layout ((8, m), (T, 2k)) : ((T, SBO), (1, LBO)))
__device__ __forceinline__ unsigned long long desc_kmajor(unsigned addr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((addr >> 4) & 0x3FFF) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32);
}

// Descriptor of an N-major (MN-major) B tile of 16-byte rows without swizzle (interleave mode 0): the PTX
// ISA's canonical MN-major layout ((T, 1, m), (8, k)) : ((1, T, SBO), (T, LBO)), T = 8 elements, i.e. core
// matrices of 8 consecutive k-rows of 16 bytes (128 contiguous bytes), the next 8 k-rows LBO bytes further
// and the next 8 n SBO bytes further. A [NC][8] tile stored row by row is exactly that with LBO = 128; with
// N = 8 there is no second core matrix along n, so SBO is never used (128 as well).
__device__ __forceinline__ unsigned long long desc_interleave(unsigned addr) {
    return (unsigned long long)((addr >> 4) & 0x3FFF) | (8ull << 16) | (8ull << 32);
}

// ldmatrix of four 8 × 8 b16 matrices at a shared-memory address (the A fragment of mma.sync m16k16, and
// of a warp's 16 rows of a register-A wgmma)
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The STAGES-deep cp.async pipeline of the wgmma kernels over `total` stages: stages 0 .. STAGES - 3 are
// loaded up front (load_stage(stage, slot)); step q waits for stage q, fences its generic-proxy copies for the
// async proxy, barriers, issues mma(slot of q) as one wgmma group, loads stage q + STAGES - 2 into the slot of
// stage q - 2 (every warpgroup finished reading it: each waited for its group q - 2 before the barrier) and
// waits for its group q - 1. Returns with every group and copy complete.
template <int STAGES, typename Load, typename Mma>
__device__ __forceinline__ void gmma_pipeline(int total, Load& load_stage, Mma&& mma) {
    static_assert(STAGES >= 3, "the slot of stage q - 2 is refilled at stage q");
#pragma unroll
    for (int s = 0; s < STAGES - 2; s++) {
        if (s < total) load_stage(s, s);
        cp_async_commit();
    }
    for (int q = 0; q < total; q++) {
        cp_async_wait<STAGES - 3>();
        fence_proxy_async();
        __syncthreads();
        wgmma_fence();
        mma(q % STAGES);
        wgmma_commit();
        const int next = q + STAGES - 2;
        if (next < total) load_stage(next, next % STAGES);
        cp_async_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();
    cp_async_wait<0>();
}

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
