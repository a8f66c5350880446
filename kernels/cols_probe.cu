// Access-pattern probe for the column-statistics kernels (kernels/ew_cols.cu; issue 5), used only by
// bench/cols_probe.py, never by the library. It moves the bytes of a one-pass column op in the same pattern
// without its arithmetic: a group of G blocks owns a column tile (VPR 16-byte vectors a row) over all R rows,
// block rank r of the group copies rows [r * rows_per_cta, ...) of NIN inputs, waits for them, and writes
// one output (the inputs' XOR) to the same places. What it separates: the cost of the pattern itself (tile
// width, bytes a block, blocks a SM), of the cluster barrier between the loads and the stores (MODE 1), and
// of holding input 0 in registers instead of shared memory (NR > 0 rows a thread).
//
// cols_probe<NIN, VPR, CS, NR, MODE, MINB>: CS = __cluster_dims__ (1 or G); rank = blockIdx.x % G, tile =
// blockIdx.x / G; NR = 0: every input in shared memory ([NIN][rows_per_cta][VPR] vectors); NR > 0: a thread's
// first NR rows of input 0 (rows row0 + i * step) in registers, the others in shared memory: the other inputs'
// slices first, then input 0's rows from NR * step on.
#include "common.cuh"

namespace probe {
constexpr int THREADS = 256;

__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ uint4 ld_nc16(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ void st_cs16(void* p, const uint4& v) {
    asm volatile("st.global.cs.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
__device__ __forceinline__ uint4 xor4(uint4 a, const uint4& b) {
    a.x ^= b.x; a.y ^= b.y; a.z ^= b.z; a.w ^= b.w;
    return a;
}
}  // namespace probe

template <int NIN, int VPR, int CS, int NR, int MODE, int MINB>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(probe::THREADS, MINB)
    cols_probe(uint4* __restrict__ out, const uint4* __restrict__ a, const uint4* __restrict__ b, int R,
               i64 pitch, int rows_per_cta, int G) {
    using namespace probe;
    extern __shared__ uint4 sm[];
    constexpr int STEP = THREADS / VPR;
    const int rank = blockIdx.x % G, t = blockIdx.x / G;
    const int r0 = rank * rows_per_cta, n = max(0, min(R - r0, rows_per_cta));
    const int cx = threadIdx.x % VPR, row0 = threadIdx.x / VPR;
    const i64 c = (i64)t * VPR + cx;
    constexpr int SIN = NR > 0 ? NIN - 1 : NIN;  // inputs held in shared memory
    const uint4* src[2] = {NR > 0 ? b : a, b};
    uint4 reg[NR > 0 ? NR : 1];
    uint4* over = sm + (SIN * rows_per_cta - NR * STEP) * VPR;  // input 0's rows >= NR * STEP (NR > 0)
    if constexpr (NR > 0) {
#pragma unroll
        for (int i = 0; i < NR; ++i) {
            const int row = row0 + i * STEP;
            if (row < n) reg[i] = ld_nc16(a + (i64)(r0 + row) * pitch + c);
        }
        for (int row = row0 + NR * STEP; row < n; row += STEP)
            cp_async16(&over[row * VPR + cx], a + (i64)(r0 + row) * pitch + c);
    }
#pragma unroll
    for (int s = 0; s < SIN; ++s)
        for (int row = row0; row < n; row += STEP)
            cp_async16(&sm[(s * rows_per_cta + row) * VPR + cx], src[s] + (i64)(r0 + row) * pitch + c);
    asm volatile("cp.async.commit_group;\n\tcp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    if constexpr (MODE == 1) {
        asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
        asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
    }
    if constexpr (NR > 0) {
#pragma unroll
        for (int i = 0; i < NR; ++i) {
            const int row = row0 + i * STEP;
            if (row < n) {
                uint4 v = reg[i];
                if constexpr (SIN > 0) v = xor4(v, sm[row * VPR + cx]);
                st_cs16(out + (i64)(r0 + row) * pitch + c, v);
            }
        }
        for (int row = row0 + NR * STEP; row < n; row += STEP) {
            uint4 v = over[row * VPR + cx];
            if constexpr (SIN > 0) v = xor4(v, sm[row * VPR + cx]);
            st_cs16(out + (i64)(r0 + row) * pitch + c, v);
        }
    } else {
        for (int row = row0; row < n; row += STEP) {
            uint4 v = sm[row * VPR + cx];
            if constexpr (SIN > 1) v = xor4(v, sm[(rows_per_cta + row) * VPR + cx]);
            st_cs16(out + (i64)(r0 + row) * pitch + c, v);
        }
    }
    if constexpr (MODE == 1) {
        asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
        asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
    }
}
