// Column statistics in one pass over DRAM (issue 5; sm_90: thread-block clusters, distributed shared
// memory). The 3-pass design of ew.cu (norm_cols_reduce -> norm_finalize -> norm_cols_apply) reads x
// twice; here a cluster of CS thread blocks owns a column tile (W = 16 * vpr / sizeof(T) columns) over
// ALL rows: each block copies its slice of rows into shared memory (cp.async, 16 bytes), sums its
// columns, the blocks exchange their partial sums through distributed shared memory (every block adds
// the CS partials in rank order: the same bits in every block, deterministic), and each block applies
// the statistics to the rows it holds and streams the output out. Each input byte crosses DRAM once.
//
// Grid: 1-D, clusters * CS blocks; cluster k = blocks k*CS .. k*CS+CS-1 owns tile k (cols_fwd: tiles k,
// k + clusters, ... in turn, the next tile's loads in flight during the current one), its rank r the rows
// [r * rows_per_cta, (r + 1) * rows_per_cta). Block: THREADS threads; thread t holds the 16-byte column
// chunk t % vpr of the tile (V columns: its statistics stay in registers) and rows t / vpr + k * THREADS / vpr.
// Shared memory: the tile slice [rows_per_cta][vpr] x 16 bytes per input tensor (dynamic; cols_fwd walking
// several tiles: two slices; then any parameters per row as floats) + 5 KB.
// The host (cusparseblocks/_ops_cols.py) launches only with 16-byte aligned pointers and C % V == 0 (a
// 16-byte chunk is either inside the tile's columns or wholly past C); other cases take the 3-pass path.
#include "common.cuh"

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int MAXW = 64;  // columns per tile at most (vpr * V)
// the tall-array kernels (cols_keep_*, below): rows a thread has in flight; 0: no L2 eviction priorities
// (evict_normal). bench/keep_diag.py times other values through -D.
#ifndef KP_U  // rows a thread has in flight (bench/keep_diag.py times other counts through -D)
#define KP_U 4
#endif
#ifndef KP_HINTS  // 0: no L2 eviction priorities (evict_normal), for bench/keep_diag.py
#define KP_HINTS 1
#endif
#ifndef KP_PREF  // 0: no L2 prefetch of the per-row gain and bias before the tile's sums (bench/keep_diag.py)
#define KP_PREF 1
#endif
#ifndef KP_PROF  // 1: globaltimer stamps of each block's phases in kp_prof (bench/keep_diag.py --prof only)
#define KP_PROF 0
#endif
#if KP_PROF
__device__ unsigned long long kp_prof[4096 * 8];
#define KP_STAMP(k)                                                \
    do {                                                           \
        if (threadIdx.x == 0) {                                    \
            unsigned long long t_;                                 \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_)); \
            kp_prof[blockIdx.x * 8 + (k)] = t_;                    \
        }                                                          \
    } while (0)
#else
#define KP_STAMP(k) \
    do {            \
    } while (0)
#endif

#include "pack16.cuh"  // Lanes, unpack16, pack16

// --- PTX wrappers (tests/test_ops_cols.py replaces this block with a CPU emulation) ---
// streaming 16-byte store (the output is not read again by this op)
__device__ __forceinline__ void st_cs16(void* p, const uint4& v) {
    asm volatile("st.global.cs.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

// global -> shared, 16 bytes, bypassing L1 (each byte is read once)
__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\n\tcp.async.wait_group 0;" ::: "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// all but the most recent commit group complete
__device__ __forceinline__ void cp_async_wait_prev() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
// Cluster barrier, split: arrive (release: this block's earlier shared-memory writes and remote reads are
// done) and wait (acquire). Every thread of the block executes both (.aligned).
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
// relaxed: no memory ordering (no MEMBAR.GPU in SASS); for the last arrive, after which this block only
// needs the others to stay resident (its remote reads have returned: their values were used)
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// *p in the shared memory of block `rank` of this cluster (p: the same variable in this block)
__device__ __forceinline__ float ld_dsmem(const float* p, unsigned rank) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p), ra;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
    return v;
}
// Column groups (tall arrays, kernels with groups > 1): a release of this block's earlier global stores
// (after a block barrier: every thread's) and one arrival on a tile's counter; a spin until the counter
// reaches n (acquire); a load from L2 (another SM's store, never a stale L1 line)
__device__ __forceinline__ void group_arrive(int* cnt) {
    asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.s32 [%0], 1;" ::"l"(cnt) : "memory");
}
__device__ __forceinline__ void group_wait(const int* cnt, int n) {
    for (;;) {
        int v;
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
        if (v >= n) break;
        __nanosleep(32);
    }
}
__device__ __forceinline__ float ld_l2(const float* p) { return __ldcg(p); }
// Tall arrays (cols_keep_*): L2 eviction policies (createpolicy), a 16-byte load and a cp.async under one. The
// streamed rows are loaded with evict_last (read again after the statistics: L2 keeps what it can of them), the
// rows kept on chip and the second reads with evict_first.
__device__ __forceinline__ unsigned long long l2_evict_last() {
    unsigned long long p;
#if KP_HINTS
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
#else
    asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
#endif
    return p;
}
__device__ __forceinline__ unsigned long long l2_evict_first() {
    unsigned long long p;
#if KP_HINTS
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
#else
    asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
#endif
    return p;
}
__device__ __forceinline__ uint4 ld_hint16(const void* p, unsigned long long pol) {
    uint4 v;
    asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p), "l"(pol));
    return v;
}
__device__ __forceinline__ void cp_async16_hint(uint4* smem, const void* gmem, unsigned long long pol) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "l"(pol)
                 : "memory");
}
// an L2 prefetch of p's 128-byte line, kept with evict_last (the keep kernels' gain and bias per row: they are
// read again after the tile's sums, when the streamed rows' evict_last lines have pushed them out of L2)
__device__ __forceinline__ void l2_prefetch_last(const void* p) {
#if KP_HINTS
    asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p));
#else
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// --- end of PTX wrappers ---

// Per-block column sums: s[j][k] (NS sums of V columns, chunk cx = lane % vpr) summed over the lanes of
// the same chunk (shuffles, then the warps in order through wred) into part[j][cx * V + k].
// Every thread of the block calls it; ends with __syncthreads (part is complete).
template <int NS, int V>
__device__ __forceinline__ void block_col_sums(float (&s)[NS][V], int vpr, float (&wred)[WARPS][NS][MAXW],
                                               float (&part)[NS][MAXW]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, cx = lane & (vpr - 1);
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) {
        if (off < vpr) break;  // lanes off apart hold the same chunk only when off >= vpr
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int k = 0; k < V; ++k) s[j][k] += __shfl_xor_sync(0xffffffffu, s[j][k], off);
    }
    if (lane < vpr) {
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int k = 0; k < V; ++k) wred[warp][j][cx * V + k] = s[j][k];
    }
    __syncthreads();
    const int W = vpr * V;
    for (int t = threadIdx.x; t < NS * W; t += THREADS) {
        const int j = t / W, col = t - j * W;
        float acc = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) acc += wred[w][j][col];
        part[j][col] = acc;
    }
    __syncthreads();
}

// Column groups: a column tile too tall for one cluster is split over `n` clusters (group g: rows
// [g * CS * rows_per_cta, ...)), which add their sums through global memory. Threads col < W hold the
// cluster's sums s[j] of column col on entry; rank 0 of group g writes them to part [tiles][n][NS][MAXW] at
// tile t and arrives on cnt[t]; every block of the n clusters waits for the n arrivals and adds the n
// partial sums in group order (the same bits in every block). Every thread of the block calls it; n == 1:
// nothing. The clusters of a tile are co-resident (the host launches at most the co-resident clusters,
// cooperatively where the driver accepts it, and each cluster walks its tiles in the same order).
struct Groups {
    float* part;
    int* cnt;
    int n, g;  // groups a tile, this cluster's group
};
template <int NS>
__device__ __forceinline__ void group_sums(float (&s)[NS], const Groups& gr, int t, int W, unsigned rank) {
    if (gr.n == 1) return;
    float* slot = gr.part + (i64)t * gr.n * NS * MAXW;
    if (rank == 0 && (int)threadIdx.x < W)
#pragma unroll
        for (int j = 0; j < NS; ++j) slot[(gr.g * NS + j) * MAXW + threadIdx.x] = s[j];
    __syncthreads();
    if (threadIdx.x == 0) {
        if (rank == 0) group_arrive(gr.cnt + t);
        group_wait(gr.cnt + t, gr.n);
    }
    __syncthreads();
    if ((int)threadIdx.x < W) {
#pragma unroll
        for (int j = 0; j < NS; ++j) s[j] = 0.f;
        for (int q = 0; q < gr.n; ++q)
#pragma unroll
            for (int j = 0; j < NS; ++j) s[j] += ld_l2(slot + (q * NS + j) * MAXW + threadIdx.x);
    }
}

// A block's n rows of a parameter per row p [r0 + row] as floats in shared memory (def where p is null): where
// the block has at most N * THREADS rows, a thread's rows (row = threadIdx.x + i * THREADS) are loaded into
// registers by rows_pre before the block's copies are issued, so that they do not queue behind them (the
// column kernels' per-row gain and bias), and stored by rows_store after them; a taller block loads them all in
// rows_store (the measured faster way there: bench/NOTES.md, tenth session).
template <typename T, int N>
__device__ __forceinline__ void rows_pre(float (&v)[N], const T* __restrict__ p, int r0, int n, float def) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int row = threadIdx.x + i * THREADS;
        v[i] = (p && row < n && n <= N * THREADS) ? to_float<T>(p[r0 + row]) : def;
    }
}
template <typename T, int N>
__device__ __forceinline__ void rows_store(float* dst, const float (&v)[N], const T* __restrict__ p, int r0, int n,
                                           float def) {
    if (n <= N * THREADS) {
#pragma unroll
        for (int i = 0; i < N; ++i)
            if (threadIdx.x + i * THREADS < n) dst[threadIdx.x + i * THREADS] = v[i];
    } else {
        for (int row = threadIdx.x; row < n; row += THREADS) dst[row] = p ? to_float<T>(p[r0 + row]) : def;
    }
}

// ---------------------------------------------------------------------------------------------------
// Forward: statistics per column of x [R, C] and the normalized output, one read of x, one write of y.
//   s0 = sum (x - x[0, c]), s1 = sum (x - x[0, c])^2 (shifted sums: accurate when |mean| >> std, as
//   norm_cols_reduce); mean = x[0, c] + s0 / R, var = max(s1 / R - (s0 / R)^2, 0), rstd = 1/sqrt(var + eps);
//   y = (x - mean) * rstd * g + b, g, b per column (gain_per_col: batch norm, features last) or per row
//   (layer norm, features first); null -> 1, 0.
// Rank 0 writes mean_out, rstd_out [C] (float32) and updates run_mean, run_var (each if non-null) as
// norm_finalize: run = (1 - momentum) * run + momentum * mean / var_scale * var.
template <typename T, int CS, bool GR>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 3)
    cols_fwd(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ gain, const T* __restrict__ bias,
             float* __restrict__ mean_out, float* __restrict__ rstd_out, float* __restrict__ run_mean,
             float* __restrict__ run_var, int R, i64 C, int rows_per_cta, int vpr, float eps, float momentum,
             float var_scale, int gain_per_col, int tiles, int groups, float* __restrict__ gpart,
             int* __restrict__ gcnt) {
    constexpr int V = Lanes<T>::V;
    extern __shared__ uint4 tile[];
    __shared__ float wred[WARPS][2][MAXW];
    __shared__ float part[2][2][MAXW];  // by tile parity: a block may still read the previous tile's
    __shared__ float stat[2][MAXW];
    __shared__ float colp[2][MAXW];  // gain and bias of the tile's columns (params_load); 6 KiB static in all
    const unsigned rank = cluster_rank();
    const int W = vpr * V;
    // column groups (GR, tall arrays): cluster k is group k % groups of tiles k / groups, + walk, ... (the host
    // makes the cluster count a multiple of groups); one buffer (no loads of the next tile ahead). GR false:
    // groups is 1, the code of the kernel before groups (with the groups as variables: -1 to -2.6 points)
    const int cl = blockIdx.x / CS, ncl = gridDim.x / CS, walk = GR ? ncl / groups : ncl, t0 = GR ? cl / groups : cl;
    const Groups grp{gpart, gcnt, GR ? groups : 1, GR ? cl % groups : 0};
    const int r0 = (grp.g * CS + (int)rank) * rows_per_cta;
    const int n = max(0, min(R - r0, rows_per_cta));
    const int cx = threadIdx.x & (vpr - 1), step = THREADS / vpr, row0 = threadIdx.x / vpr;
    const int slice = rows_per_cta * vpr;
    const bool two = !GR && ncl < tiles;  // two buffers: the next tile's loads in flight
    // the slice of tile t's rows into shared memory buffer buf (cp.async: one commit group per call)
    auto load = [&](int t, uint4* buf) {
        const i64 c = (i64)t * W + cx * V;
        if (t < tiles && c < C)
            for (int row = row0; row < n; row += step) cp_async16(&buf[row * vpr + cx], x + (i64)(r0 + row) * C + c);
        cp_async_commit();
    };
    // the per-column parameters of tile t, thread col < W for column col (issued before the tile's copies so
    // that they return first): x's first row (the shift of the sums: kept in the register, the same thread
    // computes the column's statistics), the gain and bias per column (to colp by `params_store` after the
    // copies are issued). All are read after the cluster barrier, where a load would queue behind the other
    // blocks' copies (microseconds under full DRAM load).
    float pre[3];
    auto params_load = [&](int t) {
        const i64 cc = (i64)t * W + threadIdx.x;
        const bool in = threadIdx.x < W && t < tiles && cc < C;
        pre[0] = in ? to_float<T>(x[cc]) : 0.f;
        pre[1] = (in && gain && gain_per_col) ? to_float<T>(gain[cc]) : 1.f;
        pre[2] = (in && bias && gain_per_col) ? to_float<T>(bias[cc]) : 0.f;
    };
    auto params_store = [&]() {
        if (threadIdx.x < W) {
            colp[0][threadIdx.x] = pre[1];
            colp[1][threadIdx.x] = pre[2];
        }
    };
    int p = 0;
    // a gain or bias per row (layer norm with features first): the block's rows of both, as floats, in shared
    // memory after the tile buffers (the host adds 8 bytes a row to the plan), stored once (every tile uses the
    // same rows) and read in the apply (a global load there, after the cluster barrier, queued behind the other
    // blocks' copies: 61 % of the copy against 82 % without them). A thread's first 2 rows of both are loaded
    // before the first copies are issued (staged after them, they still waited behind them: 70 %)
    const bool per_row = !gain_per_col && (gain || bias);
    float* rowp = reinterpret_cast<float*>(tile + (two ? 2 : 1) * slice);  // [2][rows_per_cta]
    float gpre[2], bpre[2];
    if (per_row) {
        rows_pre<T, 2>(gpre, gain, r0, n, 1.f);
        rows_pre<T, 2>(bpre, bias, r0, n, 0.f);
    }
    params_load(t0);
    load(t0, tile);
    if (per_row && n <= 2 * THREADS) {
        rows_store<T, 2>(rowp, gpre, gain, r0, n, 1.f);
        rows_store<T, 2>(rowp + rows_per_cta, bpre, bias, r0, n, 0.f);
    } else if (per_row) {  // taller: both parameters in one loop (two loops, one after the other: -3 points)
        for (int row = threadIdx.x; row < n; row += THREADS) {
            rowp[row] = gain ? to_float<T>(gain[r0 + row]) : 1.f;
            rowp[rows_per_cta + row] = bias ? to_float<T>(bias[r0 + row]) : 0.f;
        }
    }
    // cluster k: tiles t0, t0 + walk, ... (groups == 1: k, k + ncl, ...); with two buffers the next tile's loads
    // are in flight while this one is processed
    for (int t = t0; t < tiles; t += walk, p ^= 1) {
        uint4* buf = GR ? tile : tile + p * slice;
        if (t != t0) {  // after the previous tile's last barrier
            params_load(t);
            if (GR) load(t, tile);
        }
        if (!GR) load(t + walk, tile + (p ^ 1) * slice);  // (past the last tile: an empty group)
        else cp_async_commit();  // an empty group: cp_async_wait_prev below waits for this tile's
        params_store();  // read after block_col_sums' barriers
        const i64 ct = (i64)t * W;  // first column of the tile
        const i64 c = ct + cx * V;  // this thread's first column
        const bool live = c < C;
        float ref[V];
        if (live) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(x + c)), ref);
        else
#pragma unroll
            for (int k = 0; k < V; ++k) ref[k] = 0.f;
        cp_async_wait_prev();  // this tile's copies (a thread reads only the rows it copied)
        // 1. this block's shifted column sums
        float s[2][V];
#pragma unroll
        for (int k = 0; k < V; ++k) { s[0][k] = 0.f; s[1][k] = 0.f; }
        if (live) {
#pragma unroll 4
            for (int row = row0; row < n; row += step) {
                float v[V];
                unpack16<T, V>(buf[row * vpr + cx], v);
#pragma unroll
                for (int k = 0; k < V; ++k) { const float d = v[k] - ref[k]; s[0][k] += d; s[1][k] += d * d; }
            }
        }
        block_col_sums<2, V>(s, vpr, wred, part[p]);
        // 2. the cluster's sums (ranks in order), statistics
        cluster_arrive();
        cluster_wait();
        // the cluster's sums (GR: then the groups', group_sums; GR false: in the block that uses them, as before
        // groups: with a second block, LN fwd ax0 +gain lost 1.1 points of the copy in the half types)
        auto cluster_sums = [&](float (&sums)[2]) {
#pragma unroll
            for (int q = 0; q < CS; ++q) {
                sums[0] += ld_dsmem(&part[p][0][threadIdx.x], q);
                sums[1] += ld_dsmem(&part[p][1][threadIdx.x], q);
            }
        };
        float sums[2] = {0.f, 0.f};
        if constexpr (GR) {
            if (threadIdx.x < W) cluster_sums(sums);
            group_sums<2>(sums, grp, t, W, rank);
        }
        if (threadIdx.x < W) {
            const int col = threadIdx.x;
            if constexpr (!GR) cluster_sums(sums);
            const float s0 = sums[0], s1 = sums[1];
            const i64 cc = ct + col;
            if (cc < C) {
                const float scale = 1.f / (float)R;
                const float m1 = s0 * scale, var = fmaxf(s1 * scale - m1 * m1, 0.f);
                const float mean = pre[0] + m1, rstd = rsqrtf(var + eps);
                stat[0][col] = mean;
                stat[1][col] = rstd;
                if (rank == 0 && grp.g == 0) {
                    if (mean_out) mean_out[cc] = mean;
                    if (rstd_out) rstd_out[cc] = rstd;
                    if (run_mean) run_mean[cc] = (1.f - momentum) * run_mean[cc] + momentum * mean;
                    if (run_var) run_var[cc] = (1.f - momentum) * run_var[cc] + var_scale * var;
                }
            }
        }
        __syncthreads();
        // 3. apply from shared memory, stream y out: y = (x - mean) * sg + b (2 instructions an element)
        // with sg = rstd * gain per column in registers; a gain or bias per row takes the second loop
        if (live) {
            float m[V], sg[V], bc[V];
#pragma unroll
            for (int k = 0; k < V; ++k) {
                m[k] = stat[0][cx * V + k];
                sg[k] = stat[1][cx * V + k] * colp[0][cx * V + k];
                bc[k] = colp[1][cx * V + k];
            }
            T* yp = y + (i64)(r0 + row0) * C + c;
            const i64 ystep = (i64)step * C;
            if (!per_row) {
#pragma unroll 4
                for (int row = row0; row < n; row += step, yp += ystep) {
                    float v[V];
                    unpack16<T, V>(buf[row * vpr + cx], v);
#pragma unroll
                    for (int k = 0; k < V; ++k) v[k] = fmaf(v[k] - m[k], sg[k], bc[k]);
                    st_cs16(yp, pack16<T, V>(v));
                }
            } else {
#pragma unroll 4
                for (int row = row0; row < n; row += step, yp += ystep) {
                    const float gr = rowp[row], br = rowp[rows_per_cta + row];
                    float v[V];
                    unpack16<T, V>(buf[row * vpr + cx], v);
#pragma unroll
                    for (int k = 0; k < V; ++k) v[k] = fmaf((v[k] - m[k]) * sg[k], gr, br);
                    st_cs16(yp, pack16<T, V>(v));
                }
            }
        }
        __syncthreads();  // buf and stat are rewritten for the tile after next
    }
    cluster_arrive_relaxed();  // no block exits while another may still read its partial sums
    cluster_wait();
}

// ---------------------------------------------------------------------------------------------------
// The backward's statistics after the cluster barrier: the cluster's sums of each column (ranks in order,
// from every block's part), times the column gain (gcol: staged in shared memory before the barrier, 1 when
// none) and 1/R (training; 0 otherwise) into stat; rank 0 (of group 0) writes the raw sums in T (batch norm's
// dbias, dgain) when asked. With column groups, the sums of the tile's clusters (group_sums). Every thread
// calls it (threads col < W work); the caller syncs after it.
template <typename T, int CS>
__device__ __forceinline__ void bwd_cluster_stats(const float (&part)[2][MAXW], float (&stat)[2][MAXW], i64 ct, i64 C,
                                                  int W, int R, unsigned rank, const float (&gcol)[MAXW], int train,
                                                  T* __restrict__ sum0_t, T* __restrict__ sum1_t, const Groups& grp,
                                                  int t) {
    float s[2] = {0.f, 0.f};
    if (threadIdx.x < W)
#pragma unroll
        for (int q = 0; q < CS; ++q) {
            s[0] += ld_dsmem(&part[0][threadIdx.x], q);
            s[1] += ld_dsmem(&part[1][threadIdx.x], q);
        }
    group_sums<2>(s, grp, t, W, rank);
    if (threadIdx.x < W) {
        const int col = threadIdx.x;
        const float s0 = s[0], s1 = s[1];
        const i64 cc = ct + col;
        if (cc < C) {
            const float g = gcol[col], scale = train ? 1.f / (float)R : 0.f;
            stat[0][col] = g * s0 * scale;
            stat[1][col] = g * s1 * scale;
            if (rank == 0 && grp.g == 0) {
                if (sum0_t) sum0_t[cc] = from_float<T>(s0);
                if (sum1_t) sum1_t[cc] = from_float<T>(s1);
            }
        }
    }
}

// Layer norm with features first, the backward of one row of a thread's V columns: dx into v (x on entry, dy in
// d) and the row's partial sums of dy (p0) and dy * xhat (p1), xhat = (x - m) * pc (pc = rstd: a layer norm has
// no gain per column): dx = pc * gr * dy - q * (x - m) - o, gr the row's gain (1 without one). Half types: pc *
// dy serves both dx and p1 (6 instructions an element, 7 before; within run-to-run noise in cols_bwd_rx).
// float32 keeps the 7: a float32 loss of 2.5 points first blamed on the 6 came from ws_rows_store's row index
// (bench/NOTES.md, tenth session); the 6 alone was not measured in float32.
template <typename T, int V>
__device__ __forceinline__ void ln_bwd_row(float (&v)[V], const float (&d)[V], const float (&m)[V],
                                           const float (&pc)[V], const float (&q)[V], const float (&o)[V], float gr,
                                           float& p0, float& p1) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const float xm = v[k] - m[k];
        p0 += d[k];
        if constexpr (sizeof(T) == 2) {
            const float pd = pc[k] * d[k];
            p1 = fmaf(pd, xm, p1);
            v[k] = fmaf(pd, gr, fmaf(-q[k], xm, -o[k]));
        } else {
            p1 = fmaf(d[k] * xm, pc[k], p1);
            v[k] = fmaf(pc[k] * gr, d[k], fmaf(-q[k], xm, -o[k]));
        }
    }
}

// The row sums p0, p1 of the vpr lanes of a row (xor shuffles: every lane of the warp calls it), written by the
// row's lane cx = 0 (if the row exists) to ws_rows [tiles, 2, R] at tile t, row r0 + row (layer norm with
// features first: norm_finalize adds the tiles in order). The index keeps the form (i64)t * 2 * R + r0 + row,
// whose prefix ptxas hoists: a 64-bit t * 2 * R + (r0 + row) a row cost float32 2.5 points of the copy, and a
// base pointer hoisted by hand spilled 4-8 bytes in the half types' cols_bwd_rx (bench/NOTES.md, tenth session).
__device__ __forceinline__ void ws_rows_store(float* __restrict__ ws_rows, float p0, float p1, int vpr, int cx,
                                              bool live, int t, int R, int r0, int row) {
    for (int off = 1; off < vpr; off <<= 1) {
        p0 += __shfl_xor_sync(0xffffffffu, p0, off);
        p1 += __shfl_xor_sync(0xffffffffu, p1, off);
    }
    if (cx == 0 && live) {
        const i64 base = (i64)t * 2 * R + r0;
        ws_rows[base + row] = p0;
        ws_rows[base + R + row] = p1;
    }
}

// The gain of column ct + threadIdx.x (threads < W; 1 without a gain per column or past C), loaded before a
// tile's copies are issued and stored to gcol after them: a load after the cluster barrier would queue
// behind the other blocks' copies (microseconds under full DRAM load).
template <typename T>
__device__ __forceinline__ float col_gain(const T* __restrict__ gain, bool per_col, i64 ct, i64 C, int W) {
    const i64 cc = ct + threadIdx.x;
    return (gain && per_col && threadIdx.x < W && cc < C) ? to_float<T>(gain[cc]) : 1.f;
}

// ---------------------------------------------------------------------------------------------------
// Backward of the column statistics, one read of x and dy, one write of dx. With xhat = (x - mean[c]) *
// rstd[c], t = dy * gr (gr = gain per row, layer norm with features first; else 1):
//   S0 = sum_r t, S1 = sum_r t * xhat over all rows (cluster sums, ranks in order);
//   dx = rstd * (gc * t - train * gc * (S0 + xhat * S1) / R)   (gc = gain per column, batch norm; else 1)
// Rank 0 writes sum0_t[c] = S0, sum1_t[c] = S1 in T (each if non-null: batch norm's dbias, dgain).
// ws_rows non-null (layer norm with features first): also sum dy and sum dy * xhat over the tile's columns for
// each row into ws_rows [tiles, 2, R] (float32), the per-row dbias, dgain before the sum over tiles.
// Shared memory: the x slice, then the dy slice (two such buffers when walking several tiles, as cols_fwd),
// then (a gain per row) the block's gains as floats.
template <typename T, int CS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 3)
    cols_bwd(T* __restrict__ dx, T* __restrict__ sum0_t, T* __restrict__ sum1_t, float* __restrict__ ws_rows,
             const T* __restrict__ dy,
             const T* __restrict__ x, const T* __restrict__ gain, const float* __restrict__ mean,
             const float* __restrict__ rstd, int R, i64 C, int rows_per_cta, int vpr, int gain_per_col, int train,
             int tiles) {
    constexpr int V = Lanes<T>::V;
    extern __shared__ uint4 tile[];
    __shared__ float wred[WARPS][2][MAXW];
    __shared__ float part[2][2][MAXW];  // by tile parity (as cols_fwd)
    __shared__ float stat[2][MAXW];
    __shared__ float gcol[MAXW];  // the tile's gains per column (col_gain)
    const unsigned rank = cluster_rank();
    const Groups no_groups{nullptr, nullptr, 1, 0};  // (column groups: cols_fwd and cols_bwd_rx only)
    const int W = vpr * V;
    const int r0 = (int)rank * rows_per_cta;
    const int n = max(0, min(R - r0, rows_per_cta));
    const int cx = threadIdx.x & (vpr - 1), step = THREADS / vpr, row0 = threadIdx.x / vpr;
    const bool per_col = gain_per_col != 0, per_row = gain && !per_col;
    const int ncl = gridDim.x / CS, slice = rows_per_cta * vpr;  // a buffer: the x slice, then the dy slice
    auto load = [&](int t, uint4* buf) {
        const i64 c = (i64)t * W + cx * V;
        if (t < tiles && c < C)
            for (int row = row0; row < n; row += step) {
                const i64 off = (i64)(r0 + row) * C + c;
                cp_async16(&buf[row * vpr + cx], x + off);
                cp_async16(&buf[slice + row * vpr + cx], dy + off);
            }
        cp_async_commit();
    };
    int p = 0;
    // a gain per row (layer norm with features first): the block's rows as floats in shared memory after the
    // buffers (the host adds 4 bytes a row to the plan); a thread's first 4 rows loaded before the first copies
    // are issued, stored after them (as cols_fwd)
    float* rowg = reinterpret_cast<float*>(tile + (ncl < tiles ? 2 : 1) * 2 * slice);
    float grpre[4];
    if (per_row) rows_pre<T, 4>(grpre, gain, r0, n, 1.f);
    float gpre = col_gain<T>(gain, per_col, (i64)(blockIdx.x / CS) * W, C, W);
    load(blockIdx.x / CS, tile);
    if (per_row) rows_store<T, 4>(rowg, grpre, gain, r0, n, 1.f);
    for (int t = blockIdx.x / CS; t < tiles; t += ncl, p ^= 1) {
        uint4* xt = tile + p * 2 * slice;
        uint4* dt = xt + slice;
        if (t != (int)(blockIdx.x / CS)) gpre = col_gain<T>(gain, per_col, (i64)t * W, C, W);
        load(t + ncl, tile + (p ^ 1) * 2 * slice);
        if (threadIdx.x < W) gcol[threadIdx.x] = gpre;  // read after block_col_sums' barriers
        const i64 ct = (i64)t * W;
        const i64 c = ct + cx * V;
        const bool live = c < C;
        float m[V], rs[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            m[k] = live ? mean[c + k] : 0.f;
            rs[k] = live ? rstd[c + k] : 0.f;
        }
        cp_async_wait_prev();
        __syncthreads();
        // sums of t and t * (x - mean), times rstd once at the end (= sum t * xhat)
        float s[2][V];
#pragma unroll
        for (int k = 0; k < V; ++k) { s[0][k] = 0.f; s[1][k] = 0.f; }
        if (live) {
            if (!per_row) {
#pragma unroll 4
                for (int row = row0; row < n; row += step) {
                    float v[V], d[V];
                    unpack16<T, V>(xt[row * vpr + cx], v);
                    unpack16<T, V>(dt[row * vpr + cx], d);
#pragma unroll
                    for (int k = 0; k < V; ++k) { s[0][k] += d[k]; s[1][k] = fmaf(d[k], v[k] - m[k], s[1][k]); }
                }
            } else {
#pragma unroll 4
                for (int row = row0; row < n; row += step) {
                    const float gr = rowg[row];
                    float v[V], d[V];
                    unpack16<T, V>(xt[row * vpr + cx], v);
                    unpack16<T, V>(dt[row * vpr + cx], d);
#pragma unroll
                    for (int k = 0; k < V; ++k) {
                        const float g = d[k] * gr;
                        s[0][k] += g;
                        s[1][k] = fmaf(g, v[k] - m[k], s[1][k]);
                    }
                }
            }
#pragma unroll
            for (int k = 0; k < V; ++k) s[1][k] *= rs[k];
        }
        block_col_sums<2, V>(s, vpr, wred, part[p]);
        cluster_arrive();
        cluster_wait();
        bwd_cluster_stats<T, CS>(part[p], stat, ct, C, W, R, rank, gcol, train, sum0_t, sum1_t, no_groups, t);
        __syncthreads();
        // dx = rstd * (gc * gr * dy - A - xhat * B) = p * dy - q * (x - mean) - o, p = rstd * gc (* gr per row),
        // q = rstd^2 * B, o = rstd * A: 3 instructions an element
        float pc[V], q[V], o[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            pc[k] = live ? rs[k] * gcol[cx * V + k] : 0.f;
            q[k] = live ? rs[k] * rs[k] * stat[1][cx * V + k] : 0.f;
            o[k] = live ? rs[k] * stat[0][cx * V + k] : 0.f;
        }
        if (ws_rows) {
            // layer norm with features first: dx, and the sums of dy and dy * xhat over this tile's columns per
            // row into ws_rows [tiles, 2, R] (dbias, dgain per row; norm_finalize adds the tiles in order).
            // Rows in warp-uniform steps: the vpr lanes of a row add their partials with shuffles.
            const int lane = threadIdx.x & 31;
            for (int base = (threadIdx.x >> 5) * (32 / vpr); base < n; base += step) {
                const int row = base + lane / vpr;  // = row0 + k * step
                float p0 = 0.f, p1 = 0.f;
                if (live && row < n) {
                    float v[V], d[V];
                    unpack16<T, V>(xt[row * vpr + cx], v);
                    unpack16<T, V>(dt[row * vpr + cx], d);
                    ln_bwd_row<T, V>(v, d, m, pc, q, o, per_row ? rowg[row] : 1.f, p0, p1);  // pc = rs (no gcol)
                    st_cs16(dx + (i64)(r0 + row) * C + c, pack16<T, V>(v));
                }
                ws_rows_store(ws_rows, p0, p1, vpr, cx, row < n, t, R, r0, row);
            }
        } else if (live) {
            T* dxp = dx + (i64)(r0 + row0) * C + c;
            const i64 dstep = (i64)step * C;
            if (!per_row) {
#pragma unroll 4
                for (int row = row0; row < n; row += step, dxp += dstep) {
                    float v[V], d[V];
                    unpack16<T, V>(xt[row * vpr + cx], v);
                    unpack16<T, V>(dt[row * vpr + cx], d);
#pragma unroll
                    for (int k = 0; k < V; ++k) v[k] = fmaf(pc[k], d[k], fmaf(-q[k], v[k] - m[k], -o[k]));
                    st_cs16(dxp, pack16<T, V>(v));
                }
            } else {
#pragma unroll 4
                for (int row = row0; row < n; row += step, dxp += dstep) {
                    const float gr = rowg[row];
                    float v[V], d[V];
                    unpack16<T, V>(xt[row * vpr + cx], v);
                    unpack16<T, V>(dt[row * vpr + cx], d);
#pragma unroll
                    for (int k = 0; k < V; ++k) v[k] = fmaf(pc[k] * gr, d[k], fmaf(-q[k], v[k] - m[k], -o[k]));
                    st_cs16(dxp, pack16<T, V>(v));
                }
            }
        }
        __syncthreads();  // the buffers and stat are rewritten for the tile after next
    }
    cluster_arrive_relaxed();
    cluster_wait();
}

// ---------------------------------------------------------------------------------------------------
// The same backward with x held mostly in registers (the default where it fits: cusparseblocks/_ops_cols.py
// rx_plan). Each thread holds RX_ROWS rows of its 16-byte column chunk of x, RX_REG of them in registers (48
// registers; 14 or 16 rows spill in the half types at the 128-register cap of 2 blocks an SM) and the rest in
// shared memory after the block's dy slice. So a block carries RX_ROWS * THREADS / VPR rows of VPR * 16 bytes of
// both inputs at 2 blocks an SM (x: 48 registers a thread and 16 KiB, dy: 64 KiB): 512 rows of 128 bytes (VPR 8,
// clusters of up to 16: arrays up to 8192 rows), 1024 of 64 (VPR 4) or 2048 of 32 (VPR 2) for taller arrays on
// clusters of 16 (up to 16384 and 32768 rows). The H100 probe (bench/cols_probe.py, bench/NOTES.md) moved the
// backward's bytes at 86-90 % of the copy this way with 128-byte rows, 76-77 % with both inputs in shared memory
// (64-byte rows, 3 blocks an SM). GR false: one tile a cluster (tile blockIdx.x / CS), rows_per_cta <= RX_ROWS *
// THREADS / VPR. GR true (column groups, taller arrays): `groups` clusters a tile, each walking its tiles as
// cols_fwd's (group_sums). Arithmetic, outputs and order of the sums as cols_bwd.
constexpr int RX_ROWS = 16, RX_REG = 12;  // rows a block holds: RX_ROWS * THREADS / VPR (_ops_cols.rx_max_rows)

// body(i, row) for a thread's rows i (row = row0 + i * THREADS / VPR) that exist; CHECK false: all of them
// (a full block of a live column chunk), without a test a row
template <int VPR, bool CHECK, typename F>
__device__ __forceinline__ void rx_rows(const F& body, bool live, int row0, int n) {
#pragma unroll
    for (int i = 0; i < RX_ROWS; ++i) {
        const int row = row0 + i * (THREADS / VPR);
        if (!CHECK || (live && row < n)) body(i, row);
    }
}

template <typename T, int CS, bool LN, int VPR, bool GR>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 2)
    cols_bwd_rx(T* __restrict__ dx, T* __restrict__ sum0_t, T* __restrict__ sum1_t, float* __restrict__ ws_rows,
                const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gain,
                const float* __restrict__ mean, const float* __restrict__ rstd, int R, i64 C, int rows_per_cta,
                int gain_per_col, int train, int tiles, int groups, float* __restrict__ gpart,
                int* __restrict__ gcnt) {
    constexpr int V = Lanes<T>::V, STEP = THREADS / VPR, W = VPR * V, MAXR = RX_ROWS * STEP;
    extern __shared__ uint4 tile[];  // the dy slice [rows_per_cta][VPR], then x's rows past RX_REG * STEP
    __shared__ float wred[WARPS][2][MAXW];
    __shared__ float part[2][2][MAXW];  // by tile parity, as cols_fwd (a cluster walks several tiles with groups)
    __shared__ float stat[2][MAXW];
    __shared__ float gcol[MAXW];             // the tile's gains per column (col_gain)
    __shared__ float mcol[2][MAXW];          // the tile's mean and rstd (loaded as gcol)
    __shared__ float grow[MAXR];             // the block's gains per row (layer norm, features first)
    const unsigned rank = cluster_rank();
    // column groups (groups > 1, tall arrays), as cols_fwd: cluster k is group k % groups of tiles k / groups,
    // + walk, ... (groups == 1: the grid has a cluster a tile, one pass of the loop)
    // GR false: groups is 1 and the grid a cluster a tile, so the loop below runs once (as a loop over tiles,
    // the batch-norm half types spilled 32 bytes)
    const int cl = blockIdx.x / CS, walk = GR ? (int)(gridDim.x / CS) / groups : 0, t0 = GR ? cl / groups : cl;
    const Groups grp{gpart, gcnt, GR ? groups : 1, GR ? cl % groups : 0};
    const int r0 = (grp.g * CS + (int)rank) * rows_per_cta;
    const int n = max(0, min(R - r0, rows_per_cta));
    const int cx = threadIdx.x & (VPR - 1), row0 = threadIdx.x / VPR;
    // LN (layer norm, features first): the gain (if any) per row and the row sums into ws_rows (non-null);
    // else (batch norm) the gain (if any) per column and no row sums. gain_per_col is !LN (the host checks).
    const bool per_col = !LN, per_row = LN && gain;
    const i64 rstep = (i64)STEP * C;  // elements between a thread's rows
    // one column tile t (p: its parity); GR false: tile t0 alone (a loop of one pass here cost float32's layer
    // norm 1.2-1.4 points of the copy: more predicates live, 40 more SASS instructions)
    auto tile_pass = [&](int t, int p) {
        const i64 ct = (i64)t * W, c = ct + cx * V;
        const bool live = c < C;
        // the gains, loaded before the copies are issued and stored to shared memory after them (col_gain)
        const float gc = col_gain<T>(gain, per_col, ct, C, W);
        const bool cin = threadIdx.x < W && ct + threadIdx.x < C;
        const float mc = cin ? mean[ct + threadIdx.x] : 0.f, rc = cin ? rstd[ct + threadIdx.x] : 0.f;
        float gr_pre[MAXR / THREADS];  // the rows' gains: the same rows in every tile of the cluster (loaded once)
        if (t == t0)
#pragma unroll
            for (int j = 0; j < MAXR / THREADS; ++j) {
                const int row = threadIdx.x + j * THREADS;
                gr_pre[j] = (per_row && row < n) ? to_float<T>(gain[r0 + row]) : 1.f;
            }
        uint4 xr[RX_REG];
        // x's rows past RX_REG * STEP: row `row` at xs[row * VPR + cx], after dy's slice
        uint4* xs = tile + rows_per_cta * VPR - RX_REG * STEP * VPR;
        // a thread reads only the rows it copied itself (no block barrier needed for them)
        {
            const T* xp = x + (i64)(r0 + row0) * C + c;
            const T* dp = dy + (i64)(r0 + row0) * C + c;
#pragma unroll
            for (int i = 0; i < RX_ROWS; ++i) {
                const int row = row0 + i * STEP;
                if (live && row < n) {
                    if (i < RX_REG) xr[i] = __ldg(reinterpret_cast<const uint4*>(xp + i * rstep));
                    else cp_async16(&xs[row * VPR + cx], xp + i * rstep);
                    cp_async16(&tile[row * VPR + cx], dp + i * rstep);
                }
            }
        }
        // a thread's row i (= row0 + i * STEP) of x and dy as floats; returns the row's gain (LN; else 1)
        auto row_vals = [&](int i, int row, float (&v)[V], float (&d)[V]) -> float {
            unpack16<T, V>(i < RX_REG ? xr[i < RX_REG ? i : 0] : xs[row * VPR + cx], v);
            unpack16<T, V>(tile[row * VPR + cx], d);
            return LN ? grow[row] : 1.f;
        };
        if (threadIdx.x < W) {
            gcol[threadIdx.x] = gc;
            mcol[0][threadIdx.x] = mc;
            mcol[1][threadIdx.x] = rc;
        }
        if (t == t0)
#pragma unroll
            for (int j = 0; j < MAXR / THREADS; ++j) grow[threadIdx.x + j * THREADS] = gr_pre[j];
        cp_async_wait_all();
        __syncthreads();  // grow, mcol
        float m[V];  // rstd is read after the sums (registers: x takes 48 a thread)
#pragma unroll
        for (int k = 0; k < V; ++k) m[k] = mcol[0][cx * V + k];
        // batch norm on a full block (every thread's RX_ROWS rows exist, the common case): row loops without a test
        // a row (the layer-norm form keeps the tests: with both versions it spills)
        // (not with column groups: GR with both versions of the row loops spilled 8-32 bytes)
        const bool full = !LN && !GR && live && n == MAXR;
        float s[2][V];
#pragma unroll
        for (int k = 0; k < V; ++k) { s[0][k] = 0.f; s[1][k] = 0.f; }
        auto sum_row = [&](int i, int row) {
            float v[V], d[V];
            const float gr = row_vals(i, row, v, d);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float g = d[k] * gr;
                s[0][k] += g;
                s[1][k] = fmaf(g, v[k] - m[k], s[1][k]);
            }
        };
        if (full) rx_rows<VPR, LN>(sum_row, live, row0, n);  // LN: never full
        else rx_rows<VPR, true>(sum_row, live, row0, n);
        float pc[V];  // rstd first, times the column gain below
#pragma unroll
        for (int k = 0; k < V; ++k) {
            pc[k] = mcol[1][cx * V + k];  // 0 past C
            s[1][k] *= pc[k];
        }
        block_col_sums<2, V>(s, VPR, wred, part[p]);
        cluster_arrive();
        cluster_wait();
        bwd_cluster_stats<T, CS>(part[p], stat, ct, C, W, R, rank, gcol, train, sum0_t, sum1_t, grp, t);
        __syncthreads();
        // dx = p * gr * dy - q * (x - mean) - o, as cols_bwd. LN: p = rstd (no gain per column), so p also weighs
        // the row sums of dy * xhat.
        // TWO_FMA (batch norm, half types): dx = p * dy - q * x + (q * mean - o), two FMA an element. The float32
        // rounding of q * x and q * mean is ~1e-7 |mean| / std of the q term, far under a half-type ulp of dx
        // unless |mean| / std passes ~1e3; float32 output keeps the form with x - mean.
        constexpr bool TWO_FMA = !LN && sizeof(T) == 2;
        float q[V], o[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            q[k] = pc[k] * pc[k] * stat[1][cx * V + k];
            o[k] = pc[k] * stat[0][cx * V + k];
            if (TWO_FMA) o[k] = fmaf(q[k], m[k], -o[k]);
            pc[k] *= gcol[cx * V + k];
        }
        T* dxp = dx + (i64)(r0 + row0) * C + c;
        if constexpr (!LN) {
            auto dx_row = [&](int i, int row) {
                float v[V], d[V];
                row_vals(i, row, v, d);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    if constexpr (TWO_FMA) v[k] = fmaf(pc[k], d[k], fmaf(-q[k], v[k], o[k]));
                    else v[k] = fmaf(pc[k], d[k], fmaf(-q[k], v[k] - m[k], -o[k]));
                }
                st_cs16(dxp + i * rstep, pack16<T, V>(v));
            };
            if (full) rx_rows<VPR, false>(dx_row, live, row0, n);
            else rx_rows<VPR, true>(dx_row, live, row0, n);
        }
        if constexpr (LN) {
            // layer norm with features first: dx, and the row sums of dy and dy * xhat over the thread's columns;
            // the VPR lanes of a row add their partials (all lanes take part: the loop is warp-uniform), lane
            // cx = 0 writes ws_rows [tiles, 2, R]
#pragma unroll
            for (int i = 0; i < RX_ROWS; ++i) {
                const int row = row0 + i * STEP;
                float p0 = 0.f, p1 = 0.f;
                if (live && row < n) {
                    float v[V], d[V];
                    const float gr = row_vals(i, row, v, d);
                    ln_bwd_row<T, V>(v, d, m, pc, q, o, gr, p0, p1);
                    st_cs16(dxp + i * rstep, pack16<T, V>(v));
                }
                ws_rows_store(ws_rows, p0, p1, VPR, cx, row < n, t, R, r0, row);
            }
        }
        if (GR) __syncthreads();  // gcol, mcol and stat are rewritten for the next tile
    };
    if constexpr (GR) {
        int p = 0;
        for (int t = t0; t < tiles; t += walk, p ^= 1) tile_pass(t, p);
    } else {
        tile_pass(t0, 0);
    }
    cluster_arrive_relaxed();  // no block exits while another may still read its partial sums
    cluster_wait();
}

// ---------------------------------------------------------------------------------------------------
// L2 weight normalization per output unit of block-sparse w [nnz, b, b] (as ew.cu's wn_reduce_unit +
// wn_apply, in one pass): the cluster owns block column j (tile = its b columns, vpr = b * sizeof(T) / 16),
// its rank r the blocks col_order[col_ptr[j] + r + k * CS], k = 0, 1, ... (at most bpc of them, each b * b
// contiguous elements). Unit u = j * b + c:
//   forward (dv null):  s = sum w^2, r = 1/sqrt(s + eps) (rank 0 writes rnorm[u]); out = g[u] * r * w
//   backward:           s = sum dv * w (r = rnorm[u] given; rank 0 writes dgain[u] = s * r in T if non-null);
//                       out = g[u] * r * (dv - w * r^2 * s)
// g null -> 1. lg_b = log2(b), lg_vpr = log2(vpr) (the host checks b, vpr powers of 2, vpr <= 16).
// Dynamic shared memory: the w slice, the dv slice (backward), then bpc ints (the block's col_order entries).
// Launch bounds of 5 blocks an SM (<= 51 registers): the half types' blocks of the bench layout take 43 KiB of
// shared memory, room for 5 an SM, and __half at the former bound of 3 took 62 registers, so 4 an SM (bf16 and
// float32 took 48: 5); the barrier waits of the cluster (ncu: the kernel's largest stall) hide behind more blocks.
template <typename T, int CS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 5)
    wn_unit(T* __restrict__ out, float* __restrict__ rnorm, T* __restrict__ dgain, const T* __restrict__ w,
            const T* __restrict__ dv, const T* __restrict__ gain, const int* __restrict__ col_ptr,
            const int* __restrict__ col_order, int lg_b, int lg_vpr, int bpc, float eps) {
    constexpr int V = Lanes<T>::V;
    extern __shared__ uint4 tile[];
    __shared__ float wred[WARPS][1][MAXW];
    __shared__ float part[1][MAXW];
    __shared__ float stat[MAXW];
    __shared__ float wpar[2][MAXW];  // the units' gain (1 without) and rnorm (backward)
    const unsigned rank = cluster_rank();
    const int j = blockIdx.x / CS, b = 1 << lg_b, vpr = 1 << lg_vpr;
    const int lg_vpb = lg_b + lg_vpr;  // 16-byte vectors per block: b * vpr
    const int cx = threadIdx.x & (vpr - 1);
    const i64 bb = (i64)b * b;
    uint4* dtile = tile + ((i64)bpc << lg_vpb);
    int* ord = reinterpret_cast<int*>(tile + ((i64)(dv ? 2 : 1) * bpc << lg_vpb));  // the block's col_order entries
    // the unit's gain and rnorm (used after the cluster barrier, where a load would queue behind the other
    // blocks' copies: see col_gain) and the block's entries of col_order, all loaded before any copy
    float wg = 1.f, wr = 0.f;
    if (threadIdx.x < b) {
        const i64 u = (i64)j * b + threadIdx.x;
        if (gain) wg = to_float<T>(gain[u]);
        if (dv) wr = rnorm[u];
    }
    // rank r holds the column's blocks r, r + CS, r + 2 CS, ... (dealt round, so no rank holds more than one
    // block over another: the cluster waits for its fullest rank)
    const int p0 = col_ptr[j] + (int)rank;
    const int nblk = min(max(0, (col_ptr[j + 1] - p0 + CS - 1) / CS), bpc);
    const int nvec = nblk << lg_vpb;
    for (int q = threadIdx.x; q < nblk; q += THREADS) ord[q] = col_order[p0 + q * CS];
    if (threadIdx.x < b) {
        wpar[0][threadIdx.x] = wg;
        wpar[1][threadIdx.x] = wr;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nvec; i += THREADS) {
        const int q = i >> lg_vpb;
        const i64 off = (i64)ord[q] * bb + (i64)(i - (q << lg_vpb)) * V;
        cp_async16(&tile[i], w + off);
        if (dv) cp_async16(&dtile[i], dv + off);
    }
    cp_async_wait_all();  // a thread reads only the vectors it copied (i = threadIdx.x + k * THREADS)
    float s[1][V];
#pragma unroll
    for (int k = 0; k < V; ++k) s[0][k] = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < nvec; i += THREADS) {  // THREADS % vpr == 0: chunk cx throughout
        float v[V], d[V];
        unpack16<T, V>(tile[i], v);
        if (dv) unpack16<T, V>(dtile[i], d);
#pragma unroll
        for (int k = 0; k < V; ++k) s[0][k] += v[k] * (dv ? d[k] : v[k]);
    }
    block_col_sums<1, V>(s, vpr, wred, part);
    cluster_arrive();
    cluster_wait();
    if (threadIdx.x < b) {
        const int col = threadIdx.x;
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < CS; ++q) sum += ld_dsmem(&part[0][col], q);
        const i64 u = (i64)j * b + col;
        if (!dv) {
            const float r = rsqrtf(sum + eps);
            stat[col] = r;
            if (rank == 0) rnorm[u] = r;
        } else {
            const float r = wpar[1][col];
            stat[col] = sum;
            if (rank == 0 && dgain) dgain[u] = from_float<T>(sum * r);
        }
    }
    cluster_arrive_relaxed();
    __syncthreads();
    float sc[V], wsc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const float g = wpar[0][cx * V + k];
        const float r = dv ? wpar[1][cx * V + k] : stat[cx * V + k];
        sc[k] = g * r;
        wsc[k] = dv ? r * r * stat[cx * V + k] : 0.f;
    }
#pragma unroll 4
    for (int i = threadIdx.x; i < nvec; i += THREADS) {
        const int q = i >> lg_vpb;
        const i64 off = (i64)ord[q] * bb + (i64)(i - (q << lg_vpb)) * V;
        float v[V], d[V];
        unpack16<T, V>(tile[i], v);
        if (dv) {
            unpack16<T, V>(dtile[i], d);
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = sc[k] * (d[k] - v[k] * wsc[k]);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = sc[k] * v[k];
        }
        st_cs16(out + off, pack16<T, V>(v));
    }
    cluster_wait();
}

// ---------------------------------------------------------------------------------------------------
// Tall arrays: column statistics over more rows than the chip holds ("keep" kernels; the host's keep_plan).
// One launch of at most the co-resident blocks (cooperative where the driver accepts it), every column tile at
// once: block b owns tile t = b / bpt (128-byte rows: W = 8 * V columns) and rows [i * rows_per_cta, ...) of it,
// i = b % bpt. The block's first `keep` rows are copied into shared memory (cp.async); the rest are streamed
// through registers, KP_U rows a thread in flight, summed, and read again after the statistics, first loaded with
// an L2 evict_last policy so that the second read finds in L2 what it can hold of them. The blocks of a tile add
// their partial sums through global memory in block order (grid_sums: the same bits in every block and run).
// DRAM traffic: the array once, the output once, and the streamed rows L2 did not keep; 2 blocks an SM.
constexpr int KP_VPR = 8, KP_STEP = THREADS / KP_VPR;
constexpr int KP_H = THREADS / (2 * MAXW);  // threads a (sum, column) in grid_sums<2>

// The blocks of tile t (n of them, this one number i) add their partial sums: this block's s[j] (threads col < W)
// go to part [tiles][n][NS][MAXW], it arrives on cnt[t] and waits for n arrivals; then the n partials in block
// order, THREADS / (NS * MAXW) threads a (sum, column) over consecutive ranges of blocks with 8 loads in flight
// each, the ranges added in order. On return threads col < W hold the tile's sums in s. Every thread calls it.
template <int NS>
__device__ __forceinline__ void grid_sums(float (&s)[NS], float* __restrict__ part, int* __restrict__ cnt, int t,
                                          int n, int i, int W, float (&red)[THREADS / (NS * MAXW)][NS][MAXW]) {
    constexpr int H = THREADS / (NS * MAXW);
    static_assert(H >= 1 && H * NS * MAXW == THREADS, "grid_sums: a whole number of threads a (sum, column)");
    float* slot = part + (i64)t * n * NS * MAXW;
    if ((int)threadIdx.x < W)
#pragma unroll
        for (int j = 0; j < NS; ++j) slot[(i * NS + j) * MAXW + threadIdx.x] = s[j];
    __syncthreads();
    if (threadIdx.x == 0) {
        group_arrive(cnt + t);
        group_wait(cnt + t, n);
    }
    __syncthreads();
    const int pair = threadIdx.x % (NS * MAXW), h = threadIdx.x / (NS * MAXW);
    const int j = pair / MAXW, col = pair % MAXW, per = (n + H - 1) / H;
    const int qa = min(n, h * per), qb = min(n, qa + per);
    float acc = 0.f;
    if (col < W) {
        const float* src = slot + j * MAXW + col;
        int q = qa;
        for (; q + 8 <= qb; q += 8) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) v[u] = ld_l2(src + (i64)(q + u) * NS * MAXW);
#pragma unroll
            for (int u = 0; u < 8; ++u) acc += v[u];
        }
        for (; q < qb; ++q) acc += ld_l2(src + (i64)q * NS * MAXW);
    }
    red[h][j][col] = acc;
    __syncthreads();
    if ((int)threadIdx.x < W)
#pragma unroll
        for (int jj = 0; jj < NS; ++jj) {
            float a = 0.f;
#pragma unroll
            for (int hh = 0; hh < H; ++hh) a += red[hh][jj][threadIdx.x];
            s[jj] = a;
        }
}

// Rows lo <= row < hi of a block in batches of KP_U a thread: load(u, row) for the batch's rows that exist (ok =
// live && row < hi), then use(u, row, ok) for every row of the batch. The batch loop is block-uniform and a row's
// KP_VPR lanes sit in one warp, so `use` may shuffle among them. REV: the batches last to first (the second read
// of the streamed rows: the rows read last are the likeliest still in L2; first to first re-reads the oldest
// lines, which a least-recently-used cache has evicted first).
template <bool REV, typename L, typename F>
__device__ __forceinline__ void kp_rows(int lo, int hi, bool live, const L& load, const F& use) {
    const int row0 = threadIdx.x / KP_VPR, span = KP_U * KP_STEP;
    const int last = hi > lo ? lo + (hi - lo - 1) / span * span : lo - span;
    for (int b = REV ? last : lo; REV ? b >= lo : b < hi; b += REV ? -span : span) {
#pragma unroll
        for (int u = 0; u < KP_U; ++u) {
            const int row = b + row0 + u * KP_STEP;
            if (live && row < hi) load(u, row);
        }
#pragma unroll
        for (int u = 0; u < KP_U; ++u) {
            const int row = b + row0 + u * KP_STEP;
            use(u, row, live && row < hi);
        }
    }
}

// The 128-byte lines of a[r0 .. r0 + n) and b[r0 .. r0 + n) (each if non-null) prefetched into L2 with evict_last,
// by the threads of the block: the keep kernels' per-row parameters, just before the tile's sums. Without it a
// bf16 layer norm's second read waited on the parameters' DRAM misses: a batch of rows took a DRAM round trip
// where its data came from L2 (bench/NOTES.md, fourteenth session).
template <typename T>
__device__ __forceinline__ void kp_prefetch_rows(const T* __restrict__ a, const T* __restrict__ b, int r0, int n) {
    if (n <= 0) return;
    const int lines = (n * (int)sizeof(T) + 127) / 128 + 1;  // at most, whatever the alignment
    for (int l = threadIdx.x; l < 2 * lines; l += THREADS) {
        const T* p = l < lines ? a : b;
        if (!p) continue;
        const unsigned long long first = reinterpret_cast<unsigned long long>(p + r0) >> 7;
        const unsigned long long last = reinterpret_cast<unsigned long long>(p + r0 + n - 1) >> 7;
        if (first + l % lines <= last) l2_prefetch_last(reinterpret_cast<const void*>((first + l % lines) << 7));
    }
}

// Forward (as cols_fwd): shifted sums, mean, rstd; y = (x - mean) * rstd * g + b, g, b per column (gain_per_col)
// or per row (null: 1, 0). Block 0 of each tile writes mean_out, rstd_out and the running statistics.
template <typename T>
__global__ void __launch_bounds__(THREADS, 2)
    cols_keep_fwd(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ gain, const T* __restrict__ bias,
                  float* __restrict__ mean_out, float* __restrict__ rstd_out, float* __restrict__ run_mean,
                  float* __restrict__ run_var, int R, i64 C, int rows_per_cta, int keep, float eps, float momentum,
                  float var_scale, int gain_per_col, int bpt, float* __restrict__ gpart, int* __restrict__ gcnt) {
    constexpr int V = Lanes<T>::V, W = KP_VPR * V;
    extern __shared__ uint4 tile[];  // [keep][KP_VPR]
    __shared__ float wred[WARPS][2][MAXW];
    __shared__ float part[2][MAXW];
    __shared__ float red[KP_H][2][MAXW];
    __shared__ float stat[4][MAXW];  // mean, rstd * gain, bias of the tile's columns
    KP_STAMP(0);
    const int t = blockIdx.x / bpt, i = blockIdx.x % bpt;
    const int r0 = i * rows_per_cta, n = max(0, min(R - r0, rows_per_cta)), nk = min(n, keep);
    const int cx = threadIdx.x & (KP_VPR - 1), row0 = threadIdx.x / KP_VPR;
    const i64 ct = (i64)t * W, c = ct + cx * V;
    const bool live = c < C, per_row = !gain_per_col && (gain || bias);
    const unsigned long long once = l2_evict_first(), again = l2_evict_last();
    // the column's shift (x's first row), gain and bias before the copies (threads col < W)
    const i64 cc = ct + threadIdx.x;
    const bool colin = (int)threadIdx.x < W && cc < C;
    const float shift = colin ? to_float<T>(x[cc]) : 0.f;
    const float gc = (colin && gain && gain_per_col) ? to_float<T>(gain[cc]) : 1.f;
    const float bc = (colin && bias && gain_per_col) ? to_float<T>(bias[cc]) : 0.f;
    float ref[V];
    if (live) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(x + c)), ref);
    else
#pragma unroll
        for (int k = 0; k < V; ++k) ref[k] = 0.f;
    if (live)
        for (int row = row0; row < nk; row += KP_STEP)
            cp_async16_hint(&tile[row * KP_VPR + cx], x + (i64)(r0 + row) * C + c, once);
    cp_async_commit();
    // 1. sums: the streamed rows (evict_last), then the kept rows from shared memory
    float s[2][V];
#pragma unroll
    for (int k = 0; k < V; ++k) { s[0][k] = 0.f; s[1][k] = 0.f; }
    const T* xb = x + (i64)r0 * C + c;
    uint4 raw[KP_U];
    auto add = [&](const uint4& r) {
        float v[V];
        unpack16<T, V>(r, v);
#pragma unroll
        for (int k = 0; k < V; ++k) { const float d = v[k] - ref[k]; s[0][k] += d; s[1][k] = fmaf(d, d, s[1][k]); }
    };
    kp_rows<false>(nk, n, live, [&](int u, int row) { raw[u] = ld_hint16(xb + (i64)row * C, again); },
            [&](int u, int, bool ok) { if (ok) add(raw[u]); });
    KP_STAMP(1);
    cp_async_wait_all();
    if (live)
        for (int row = row0; row < nk; row += KP_STEP) add(tile[row * KP_VPR + cx]);
    block_col_sums<2, V>(s, KP_VPR, wred, part);
    KP_STAMP(2);
    if (KP_PREF && per_row) kp_prefetch_rows(gain, bias, r0, n);
    // 2. the tile's sums (blocks in order), statistics
    float sums[2] = {0.f, 0.f};
    if ((int)threadIdx.x < W) { sums[0] = part[0][threadIdx.x]; sums[1] = part[1][threadIdx.x]; }
    grid_sums<2>(sums, gpart, gcnt, t, bpt, i, W, red);
    if ((int)threadIdx.x < W) {
        const int col = threadIdx.x;
        float mean = 0.f, rstd = 0.f;
        if (colin) {
            const float scale = 1.f / (float)R;
            const float m1 = sums[0] * scale, var = fmaxf(sums[1] * scale - m1 * m1, 0.f);
            mean = shift + m1;
            rstd = rsqrtf(var + eps);
            if (i == 0) {
                if (mean_out) mean_out[cc] = mean;
                if (rstd_out) rstd_out[cc] = rstd;
                if (run_mean) run_mean[cc] = (1.f - momentum) * run_mean[cc] + momentum * mean;
                if (run_var) run_var[cc] = (1.f - momentum) * run_var[cc] + var_scale * var;
            }
        }
        stat[0][col] = mean;
        stat[1][col] = rstd * gc;
        stat[2][col] = bc;
    }
    __syncthreads();
    KP_STAMP(3);
    // 3. y: the streamed rows read again (evict_first), then the kept rows; per row gain gr, bias br
    float m[V], sg[V], bb[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        m[k] = stat[0][cx * V + k];
        sg[k] = stat[1][cx * V + k];
        bb[k] = stat[2][cx * V + k];
    }
    // A gain and bias per row are loaded with the batch's rows, before its stores: a load after a store (an asm
    // volatile with a memory clobber) waits for it, one round trip a row.
    T* yb = y + (i64)r0 * C + c;
    float gq[KP_U], bq[KP_U];
    auto params = [&](int u, int row) {
        gq[u] = (per_row && gain) ? to_float<T>(gain[r0 + row]) : 1.f;
        bq[u] = (per_row && bias) ? to_float<T>(bias[r0 + row]) : 0.f;
    };
    auto out = [&](const uint4& r, int row, int u) {
        float v[V];
        unpack16<T, V>(r, v);
        if (!per_row) {
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = fmaf(v[k] - m[k], sg[k], bb[k]);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = fmaf((v[k] - m[k]) * sg[k], gq[u], bq[u]);
        }
        st_cs16(yb + (i64)row * C, pack16<T, V>(v));
    };
    kp_rows<true>(nk, n, live,
                  [&](int u, int row) {
                      raw[u] = ld_hint16(xb + (i64)row * C, once);
                      if (per_row) params(u, row);
                  },
                  [&](int u, int row, bool ok) { if (ok) out(raw[u], row, u); });
    KP_STAMP(4);
    // the kept rows, KP_U at a time (their parameters first)
    if (live)
        for (int b = row0; b < nk; b += KP_U * KP_STEP) {
            if (per_row)
#pragma unroll
                for (int u = 0; u < KP_U; ++u)
                    if (b + u * KP_STEP < nk) params(u, b + u * KP_STEP);
#pragma unroll
            for (int u = 0; u < KP_U; ++u)
                if (b + u * KP_STEP < nk) out(tile[(b + u * KP_STEP) * KP_VPR + cx], b + u * KP_STEP, u);
        }
#if KP_PROF
    __syncthreads();
    KP_STAMP(5);
#endif
}

// Backward (as cols_bwd): with xhat = (x - mean) * rstd, t = dy * gr (gr: gain per row, LN; else 1),
// S0 = sum t, S1 = sum t * xhat over all rows; dx = rstd * (gc * t - train * gc * (S0 + xhat * S1) / R) (gc: gain
// per column, batch norm). Block 0 of a tile writes sum0_t = S0, sum1_t = S1 in T (each if non-null). LN: ws_rows
// [tiles, 2, R] gets the sums of dy and dy * xhat over the tile's columns per row. Shared memory: the kept rows
// of x, then of dy.
template <typename T, bool LN>
__global__ void __launch_bounds__(THREADS, 2)
    cols_keep_bwd(T* __restrict__ dx, T* __restrict__ sum0_t, T* __restrict__ sum1_t, float* __restrict__ ws_rows,
                  const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gain,
                  const float* __restrict__ mean, const float* __restrict__ rstd, int R, i64 C, int rows_per_cta,
                  int keep, int gain_per_col, int train, int bpt, float* __restrict__ gpart, int* __restrict__ gcnt) {
    constexpr int V = Lanes<T>::V, W = KP_VPR * V;
    extern __shared__ uint4 tile[];  // x [keep][KP_VPR], then dy
    __shared__ float wred[WARPS][2][MAXW];
    __shared__ float part[2][MAXW];
    __shared__ float red[KP_H][2][MAXW];
    __shared__ float stat[3][MAXW];  // S0 * gc * scale, S1 * gc * scale, gc
    KP_STAMP(0);
    const int t = blockIdx.x / bpt, i = blockIdx.x % bpt;
    const int r0 = i * rows_per_cta, n = max(0, min(R - r0, rows_per_cta)), nk = min(n, keep);
    const int cx = threadIdx.x & (KP_VPR - 1), row0 = threadIdx.x / KP_VPR;
    const i64 ct = (i64)t * W, c = ct + cx * V;
    const bool live = c < C;
    const bool per_row = LN && gain;  // (the host launches LN exactly without a gain per column)
    const unsigned long long once = l2_evict_first(), again = l2_evict_last();
    const i64 cc = ct + threadIdx.x;
    const bool colin = (int)threadIdx.x < W && cc < C;
    const float gc = (colin && gain && gain_per_col) ? to_float<T>(gain[cc]) : 1.f;
    float m[V], rs[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        m[k] = live ? mean[c + k] : 0.f;
        rs[k] = live ? rstd[c + k] : 0.f;
    }
    uint4* dtile = tile + (i64)keep * KP_VPR;
    if (live)
        for (int row = row0; row < nk; row += KP_STEP) {
            const i64 off = (i64)(r0 + row) * C + c;
            cp_async16_hint(&tile[row * KP_VPR + cx], x + off, once);
            cp_async16_hint(&dtile[row * KP_VPR + cx], dy + off, once);
        }
    cp_async_commit();
    // 1. sums of t and t * (x - mean) (times rstd at the end)
    float s[2][V];
#pragma unroll
    for (int k = 0; k < V; ++k) { s[0][k] = 0.f; s[1][k] = 0.f; }
    const T* xb = x + (i64)r0 * C + c;
    const T* db = dy + (i64)r0 * C + c;
    uint4 xr[KP_U], dr[KP_U];
    auto add = [&](const uint4& rx, const uint4& rd, int row) {
        float v[V], d[V];
        unpack16<T, V>(rx, v);
        unpack16<T, V>(rd, d);
        const float gr = per_row ? to_float<T>(gain[r0 + row]) : 1.f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float g = per_row ? d[k] * gr : d[k];
            s[0][k] += g;
            s[1][k] = fmaf(g, v[k] - m[k], s[1][k]);
        }
    };
    kp_rows<false>(nk, n, live,
            [&](int u, int row) {
                xr[u] = ld_hint16(xb + (i64)row * C, again);
                dr[u] = ld_hint16(db + (i64)row * C, again);
            },
            [&](int u, int row, bool ok) { if (ok) add(xr[u], dr[u], row); });
    KP_STAMP(1);
    cp_async_wait_all();
    if (live)
        for (int row = row0; row < nk; row += KP_STEP) add(tile[row * KP_VPR + cx], dtile[row * KP_VPR + cx], row);
#pragma unroll
    for (int k = 0; k < V; ++k) s[1][k] *= rs[k];
    block_col_sums<2, V>(s, KP_VPR, wred, part);
    KP_STAMP(2);
    if (KP_PREF && per_row) kp_prefetch_rows<T>(gain, nullptr, r0, n);
    // 2. the tile's sums (blocks in order)
    float sums[2] = {0.f, 0.f};
    if ((int)threadIdx.x < W) { sums[0] = part[0][threadIdx.x]; sums[1] = part[1][threadIdx.x]; }
    grid_sums<2>(sums, gpart, gcnt, t, bpt, i, W, red);
    if ((int)threadIdx.x < W) {
        const int col = threadIdx.x;
        const float scale = train ? 1.f / (float)R : 0.f;
        stat[0][col] = gc * sums[0] * scale;
        stat[1][col] = gc * sums[1] * scale;
        stat[2][col] = gc;
        if (i == 0 && colin) {
            if (sum0_t) sum0_t[cc] = from_float<T>(sums[0]);
            if (sum1_t) sum1_t[cc] = from_float<T>(sums[1]);
        }
    }
    __syncthreads();
    KP_STAMP(3);
    // 3. dx = p * dy - q * (x - mean) - o, p = rstd * gc (* gr per row), q = rstd^2 * stat1, o = rstd * stat0
    float pc[V], q[V], o[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        pc[k] = live ? rs[k] * stat[2][cx * V + k] : 0.f;
        q[k] = live ? rs[k] * rs[k] * stat[1][cx * V + k] : 0.f;
        o[k] = live ? rs[k] * stat[0][cx * V + k] : 0.f;
    }
    T* dxb = dx + (i64)r0 * C + c;
    // ok: the row exists and the column chunk is live; own: the row is this loop's (its row sums are written); gr:
    // the row's gain (loaded with the batch's rows, before its stores, as the forward's)
    float gq[KP_U];
    auto out = [&](const uint4& rx, const uint4& rd, int row, bool ok, bool own, float gr) {
        float v[V], d[V];
        unpack16<T, V>(rx, v);
        unpack16<T, V>(rd, d);
        if constexpr (LN) {
            float p0 = 0.f, p1 = 0.f;
            if (ok) {
                ln_bwd_row<T, V>(v, d, m, pc, q, o, gr, p0, p1);
                st_cs16(dxb + (i64)row * C, pack16<T, V>(v));
            }
            ws_rows_store(ws_rows, p0, p1, KP_VPR, cx, own, t, R, r0, row);
        } else if (ok) {
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = fmaf(pc[k], d[k], fmaf(-q[k], v[k] - m[k], -o[k]));
            st_cs16(dxb + (i64)row * C, pack16<T, V>(v));
        }
    };
    kp_rows<true>(nk, n, live,
            [&](int u, int row) {
                xr[u] = ld_hint16(xb + (i64)row * C, once);
                dr[u] = ld_hint16(db + (i64)row * C, once);
                gq[u] = per_row ? to_float<T>(gain[r0 + row]) : 1.f;
            },
            [&](int u, int row, bool ok) { out(xr[u], dr[u], row, ok, row < n, gq[u]); });
    KP_STAMP(4);
    // the kept rows, KP_U steps at a time (block-uniform: the row sums shuffle among a row's lanes)
    for (int b = 0; b < nk; b += KP_U * KP_STEP) {
#pragma unroll
        for (int u = 0; u < KP_U; ++u) {
            const int row = b + row0 + u * KP_STEP;
            gq[u] = (per_row && live && row < nk) ? to_float<T>(gain[r0 + row]) : 1.f;
        }
#pragma unroll
        for (int u = 0; u < KP_U; ++u) {
            const int row = b + row0 + u * KP_STEP;
            const bool ok = live && row < nk;
            uint4 rx = make_uint4(0, 0, 0, 0), rd = rx;
            if (ok) { rx = tile[row * KP_VPR + cx]; rd = dtile[row * KP_VPR + cx]; }
            out(rx, rd, row, ok, row < nk, gq[u]);
        }
    }
#if KP_PROF
    __syncthreads();
    KP_STAMP(5);
#endif
}
