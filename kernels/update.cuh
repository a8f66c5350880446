// The weight-gradient update's walk over its (x, dy) pairs, shared by every update kernel (updat_tc,
// updat_tile_tc, updat_simt in bsmm.cu, updat_tf32, updat_gmma*): each pair p holds ns[p] batch rows cut
// into chunks of NC rows, numbered through all pairs (chunk_ptr [pairs + 1]: each pair's first chunk), and
// split y of gridDim.y takes an equal range of them.
#pragma once
#include "common.cuh"

// this split's chunks: [q0, q0 + total)
__device__ __forceinline__ void update_split(const long long* chunk_ptr, int pairs, int& q0, int& total) {
    const int all = (int)chunk_ptr[pairs], per = (all + gridDim.y - 1) / gridDim.y;
    q0 = min(all, (int)blockIdx.y * per);
    total = min(all, q0 + per) - q0;
}

// The CTA's group of NB blocks of one block row (groups [n_groups][NB]: w indices, -1 for an empty slot)
// into shared memory: blk_s[i] the block, ycol_s[i] its dy column (cols · BS; -1: empty). Returns the x
// column of the row (rows · BS). Barriers once.
template <int NB, int BS>
__device__ __forceinline__ i64 update_group(const int* groups, const int* rows, const int* cols, int* blk_s,
                                            long long* ycol_s) {
    if (threadIdx.x < NB) {
        const int k = groups[blockIdx.x * NB + threadIdx.x];
        blk_s[threadIdx.x] = k;
        ycol_s[threadIdx.x] = k >= 0 ? (long long)cols[k] * BS : -1;
    }
    __syncthreads();
    return (i64)rows[blk_s[0]] * BS;
}

// One chunk: its pair's x and dy, the pair's batch rows and the chunk's first row.
template <typename T> struct UpdateChunk {
    const T* x;
    const T* dy;
    i64 rows, n0;
};

// The pairs, visited in increasing chunk order (the loader's current pair stays in a register).
template <typename T> struct UpdatePairs {
    const long long* x_ptrs;
    const long long* dy_ptrs;
    const long long* ns;
    const long long* chunk_ptr;
    int p = 0;
    __device__ __forceinline__ UpdateChunk<T> chunk(int q, int nc) {
        while (chunk_ptr[p + 1] <= q) p++;
        return {reinterpret_cast<const T*>(x_ptrs[p]), reinterpret_cast<const T*>(dy_ptrs[p]), ns[p],
                (i64)(q - chunk_ptr[p]) * nc};
    }
};

// Element idx of block k's dW (BS × BS): with several splits the split's fp32 partial in ws [splits][nnz]
// [BS][BS] (summed later in split order), else dw itself, added to when accumulating.
template <typename TO, int BS>
__device__ __forceinline__ void update_store(TO* dw, float* ws, int nnz, i64 k, int idx, float val, int accumulate) {
    if (gridDim.y > 1) {
        ws[((i64)blockIdx.y * nnz + k) * BS * BS + idx] = val;
        return;
    }
    TO* o = dw + k * BS * BS + idx;
    if (accumulate) val += to_float<TO>(*o);
    *o = from_float<TO>(val);
}
