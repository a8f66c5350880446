// The dense route of BlockSparseMatMul (cusparseblocks/_dense_route.py): where a layout is dense enough that
// cuBLAS on the zero-filled [K, M] matrix beats the block-sparse kernels (small blocks at moderate density),
// the weights are expanded into a dense matrix, multiplied by cuBLAS, and the update's dense product is
// gathered back into the nonzero blocks. These two kernels are the expansion and the gather.
//
// w is [nnz, BS, BS], block k holding W[rows[k]·BS : +BS, cols[k]·BS : +BS]; the dense matrix is row-major
// [K, M] (K = in_blocks·BS, M = out_blocks·BS). All indices are 64-bit.
#include "common.cuh"

// densify: dense[K, M] = W, zeros outside the layout. A CTA takes rows r = blockIdx.x, + gridDim.x, ...; its
// threads write 16-byte pieces of the row (V = 16 / sizeof(T) elements, V <= BS: a piece lies in one block).
// block_map [in_blocks · out_blocks]: the w index of the block at (block row, block column), -1 when absent.
// w and dense 16-byte aligned.
template <typename T, int BS>
__global__ void __launch_bounds__(256) densify(T* __restrict__ dense, const T* __restrict__ w,
                                               const int* __restrict__ block_map, i64 K, i64 M) {
    constexpr int V = 16 / sizeof(T);
    static_assert(V <= BS && BS % V == 0, "a 16-byte piece lies in one block row");
    const int pieces = (int)(M / V);
    const i64 out_blocks = M / BS;
    for (i64 r = blockIdx.x; r < K; r += gridDim.x) {
        const int* map_row = block_map + (r / BS) * out_blocks;
        const T* w_row = w + (r % BS) * BS;
        uint4* d_row = reinterpret_cast<uint4*>(dense + r * M);
        for (int p = threadIdx.x; p < pieces; p += blockDim.x) {
            const int c = p * V, k = __ldg(map_row + c / BS);
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (k >= 0) v = __ldg(reinterpret_cast<const uint4*>(w_row + (i64)k * BS * BS + c % BS));
            d_row[p] = v;
        }
    }
}

// gather_blocks: dw[k] = dense[rows[k]·BS : +BS, cols[k]·BS : +BS] (accumulate: dw[k] += ...), dense fp32
// [K, M], dw [nnz, BS, BS] of TO. One thread an element, grid-stride over nnz·BS².
template <typename TO, int BS>
__global__ void __launch_bounds__(256) gather_blocks(TO* __restrict__ dw, const float* __restrict__ dense,
                                                     const int* __restrict__ rows, const int* __restrict__ cols,
                                                     i64 nnz, i64 M, int accumulate) {
    const i64 total = nnz * BS * BS;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 k = i / (BS * BS);
        const int e = (int)(i - k * (BS * BS)), r = e / BS, c = e % BS;
        float v = __ldg(dense + ((i64)__ldg(rows + k) * BS + r) * M + (i64)__ldg(cols + k) * BS + c);
        if (accumulate) v += to_float(dw[i]);
        dw[i] = from_float<TO>(v);
    }
}
