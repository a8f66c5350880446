// Sparse persistent RNN (seed 003): h_t = f(h_{t-1}·W + u_t), f = relu | tanh, or an LSTM cell.
//
// W is [H, G·H] (G = 1, or 4 for the LSTM, gate order i, f, g, o); the host hands it over by output
// row ("row" = one (gate, unit) column of W): row g·H + j holds the nonzeros W[k, g·H + j] as
// (value, k) pairs. Unstructured and block-sparse weights both arrive in this form (the host expands
// blocks into their elements, so a block row reads h at consecutive k: conflict-free gathers).
//
// Packing: fp16 weights are one 32-bit word per nonzero (half bits low, k high; k < 65536), four to a
// 16-byte vector; fp32 weights are two words (float bits, k), two to a vector. Each row is padded to
// a multiple of lanes·V nonzeros with (0, last k of the row) so padding reads data the row reads anyway.
//
// The exchange buffer holds every h_t once: [T+1][nchunks][Hp][BC] of T (slot 0 = h_0 written by the
// host; batch split in chunks of BC columns; units padded to Hp, a multiple of 8, so each chunk is whole
// 16-byte vectors). Each slot is written once, so there is no write-after-read hazard between blocks a
// step apart and a block waits only for the h_{t-1} slices it reads. Two protocols tell a reader a slice
// is written: a sentinel value (rnn_persistent_sentinel, the default: the buffer starts as a NaN pattern
// no step writes, one load both waits and reads) or per-block step flags (rnn_persistent: acquire loads
// of the producers' counters, then the data; two fences per step).
#include "common.cuh"

// Tests run this file on the CPU (tests/test_rnn.py, RNN_HOST_EMULATION: every CUDA thread a std::thread,
// all blocks at once); these hooks are the only host-specific lines, and compile to nothing on the GPU.
#ifdef RNN_HOST_EMULATION
#define RNN_BLOCK_SMEM(name) unsigned char* name = emu_block_smem()
#define RNN_BLOCK_INT(name) int& name = *emu_block_int()
#else
#define RNN_BLOCK_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define RNN_BLOCK_INT(name) __shared__ int name
#endif

#define RNN_THREADS 512
#define RNN_UPT 4  // pointwise items (unit, batch) per thread: the host keeps units·B <= RNN_UPT·RNN_THREADS
#define RNN_LOADS 4  // exchange vectors a thread has in flight at once

enum { RNN_RELU = 0, RNN_TANH = 1, RNN_LSTM = 2 };

// exchange="flags": per-block step counters, st.release / ld.acquire at gpu scope; a block waits for the
// counters of the blocks whose slices it reads.
#ifndef RNN_HOST_EMULATION
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release_gpu(int* p, int v) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
#endif

// exchange="sentinel": values double as their own "written" flags (the seed's Lamport timestamps, folded
// into the data): the buffer starts filled with a NaN bit pattern that arithmetic never produces (0xFFFF
// for fp16, 0xFFFFFFFF for fp32; the writer turns any NaN into the canonical one), so a reader that sees
// another pattern sees the value; no flag, no fence. Each element is one single-copy-atomic store.

#ifndef RNN_HOST_EMULATION
// one 16-byte vector (16-byte aligned), relaxed at gpu scope: bypasses L1, re-read on every call
__device__ __forceinline__ uint4 ld_relaxed_v4(const void* p) {
    uint4 v;
    asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

__device__ __forceinline__ void red_release_gpu_add(int* p, int v) {
    asm volatile("red.release.gpu.global.add.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed_u16(unsigned short* p, unsigned short v) {
    asm volatile("st.relaxed.gpu.global.u16 [%0], %1;" ::"l"(p), "h"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed_u32(unsigned* p, unsigned v) {
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#endif

template <typename T> struct RnnX;

template <> struct RnnX<__half> {
    static constexpr int EPV = 8;  // values per 16-byte vector
    __device__ __forceinline__ static uint4 load(const __half* p) { return ld_relaxed_v4(p); }
    __device__ __forceinline__ static void store(__half* p, __half h) {
        unsigned short v = __half_as_ushort(h);
        if ((v & 0x7c00u) == 0x7c00u && (v & 0x03ffu)) v = 0x7fffu;  // any NaN -> canonical NaN
        st_relaxed_u16(reinterpret_cast<unsigned short*>(p), v);
    }
    // the mask of written values in one 16-byte vector
    __device__ __forceinline__ static unsigned written(const uint4& out) {
        const unsigned w[4] = {out.x, out.y, out.z, out.w};
        unsigned mask = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            mask |= ((w[i] & 0xffffu) != 0xffffu ? 1u : 0u) << (2 * i);
            mask |= ((w[i] >> 16) != 0xffffu ? 1u : 0u) << (2 * i + 1);
        }
        return mask;
    }
};

template <> struct RnnX<float> {
    static constexpr int EPV = 4;
    __device__ __forceinline__ static uint4 load(const float* p) { return ld_relaxed_v4(p); }
    __device__ __forceinline__ static void store(float* p, float f) {
        unsigned v = __float_as_uint(f);
        if ((v & 0x7f800000u) == 0x7f800000u && (v & 0x007fffffu)) v = 0x7fffffffu;
        st_relaxed_u32(reinterpret_cast<unsigned*>(p), v);
    }
    __device__ __forceinline__ static unsigned written(const uint4& out) {
        return (out.x != 0xffffffffu ? 1u : 0u) | (out.y != 0xffffffffu ? 2u : 0u) |
               (out.z != 0xffffffffu ? 4u : 0u) | (out.w != 0xffffffffu ? 8u : 0u);
    }
};

// Spin-wait guard: every 64 spins, give up when *status is set (another block gave up) or the wait has
// lasted timeout_ns; giving up sets *status and the block's abort flag, so a wait can never hang.
struct RnnWatchdog {
    unsigned spins = 0;
    unsigned long long since = 0;
    __device__ __forceinline__ bool expired(int* status, long long timeout_ns, int* abort_flag) {
        if ((++spins & 63u) != 0) return false;
        const unsigned long long now = global_ns();
        if (since == 0) since = now;
        if (*(volatile int*)status == 0 && (long long)(now - since) <= timeout_ns) return false;
        atomicExch(status, 1);
        *abort_flag = 1;
        return true;
    }
};

// accurate under --use_fast_math (expm1f has no fast intrinsic); |x| > 9 is ±1 to fp32 precision
__device__ __forceinline__ float rnn_tanh(float x) {
    float ax = fminf(fabsf(x), 9.0f);
    float e = expm1f(2.0f * ax);
    return copysignf(e / (e + 2.0f), x);
}

__device__ __forceinline__ float rnn_sigmoid(float x) { return 0.5f * rnn_tanh(0.5f * x) + 0.5f; }

// ---------------------------------------------------------------------------------------------------
// packed weights: V nonzeros per 16-byte vector

template <typename T> struct RnnPack;

template <> struct RnnPack<__half> {
    static constexpr int V = 4;
    __device__ __forceinline__ static void get(const uint4& q, int e, float& w, int& k) {
        unsigned x = e == 0 ? q.x : e == 1 ? q.y : e == 2 ? q.z : q.w;
        w = __half2float(__ushort_as_half((unsigned short)(x & 0xffffu)));
        k = (int)(x >> 16);
    }
};

template <> struct RnnPack<float> {
    static constexpr int V = 2;
    __device__ __forceinline__ static void get(const uint4& q, int e, float& w, int& k) {
        w = __uint_as_float(e == 0 ? q.x : q.z);
        k = (int)(e == 0 ? q.y : q.w);
    }
};

// BC values of h at unit k from shared memory ([Hp][BC] of T), widest aligned load
__device__ __forceinline__ void rnn_unpack(unsigned x, float* out, __half) {
    float2 f = __half22float2(*reinterpret_cast<const __half2*>(&x));
    out[0] = f.x;
    out[1] = f.y;
}
__device__ __forceinline__ void rnn_unpack(unsigned x, float* out, float) { out[0] = __uint_as_float(x); }

template <typename T, int BC>
__device__ __forceinline__ void rnn_gather(const T* hs, int k, float (&hv)[BC]) {
    constexpr int BYTES = BC * (int)sizeof(T);
    constexpr int PER_WORD = 4 / (int)sizeof(T);
    const T* p = hs + k * BC;
    if constexpr (BYTES == 2) {
        hv[0] = to_float<T>(p[0]);
    } else if constexpr (BYTES == 4) {
        rnn_unpack(*reinterpret_cast<const unsigned*>(p), hv, T());
    } else if constexpr (BYTES == 8) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        rnn_unpack(q.x, hv, T());
        rnn_unpack(q.y, hv + PER_WORD, T());
    } else {
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i) {
            uint4 q = reinterpret_cast<const uint4*>(p)[i];
            float* o = hv + i * 4 * PER_WORD;
            rnn_unpack(q.x, o, T());
            rnn_unpack(q.y, o + PER_WORD, T());
            rnn_unpack(q.z, o + 2 * PER_WORD, T());
            rnn_unpack(q.w, o + 3 * PER_WORD, T());
        }
    }
}

// one exchange vector (16 bytes of T) into shared memory as HS at dst (16-byte aligned): a copy
// (HS = T), or fp16 -> fp32 (two 16-byte stores); the last argument is a T tag
__device__ __forceinline__ void rnn_put_h(__half* dst, const uint4& v, __half) { *reinterpret_cast<uint4*>(dst) = v; }
__device__ __forceinline__ void rnn_put_h(float* dst, const uint4& v, float) { *reinterpret_cast<uint4*>(dst) = v; }
__device__ __forceinline__ void rnn_put_h(float* dst, const uint4& v, __half) {
    float f[8];
    rnn_unpack(v.x, f, __half());
    rnn_unpack(v.y, f + 2, __half());
    rnn_unpack(v.z, f + 4, __half());
    rnn_unpack(v.w, f + 6, __half());
    uint4* d = reinterpret_cast<uint4*>(dst);
    d[0] = make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    d[1] = make_uint4(__float_as_uint(f[4]), __float_as_uint(f[5]), __float_as_uint(f[6]), __float_as_uint(f[7]));
}

template <int MODE>
__device__ __forceinline__ float rnn_cell(const float* p, float& c) {
    if constexpr (MODE == RNN_RELU) {
        return fmaxf(p[0], 0.0f);
    } else if constexpr (MODE == RNN_TANH) {
        return rnn_tanh(p[0]);
    } else {
        float i = rnn_sigmoid(p[0]), f = rnn_sigmoid(p[1]), g = rnn_tanh(p[2]), o = rnn_sigmoid(p[3]);
        c = f * c + i * g;
        return o * rnn_tanh(c);
    }
}

// A thread's pointwise items: i = tid + q·THREADS is (unit u0 + i % units, batch i / units). Their c_0
// (LSTM) into c and u_t into up (t = 0), or u_t alone (rnn_load_u), in every persistent kernel.
template <typename T, int MODE, int UPT, int THREADS>
__device__ __forceinline__ void rnn_load_u(T (&up)[UPT][MODE == RNN_LSTM ? 4 : 1], const T* u, int t, int tid,
                                           int u0, int units, int nitems, int B, int H) {
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
#pragma unroll
    for (int q = 0; q < UPT; ++q) {
        const int i = tid + q * THREADS;
        const int ul = i % max(units, 1), b = i / max(units, 1), j = u0 + ul;
        if (i < nitems && j < H) {
#pragma unroll
            for (int g = 0; g < G; ++g) up[q][g] = u[((i64)t * B + b) * G * H + (i64)g * H + j];
        }
    }
}

template <typename T, int MODE, int UPT, int THREADS>
__device__ __forceinline__ void rnn_load_state(float (&c)[UPT], T (&up)[UPT][MODE == RNN_LSTM ? 4 : 1],
                                               const T* u, const T* c0, int tid, int u0, int units, int nitems,
                                               int B, int H) {
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
#pragma unroll
    for (int q = 0; q < UPT; ++q) {
        const int i = tid + q * THREADS;
        const int ul = i % max(units, 1), b = i / max(units, 1), j = u0 + ul;
        c[q] = 0.0f;
        if (i < nitems && j < H) {
            if (MODE == RNN_LSTM && c0 != nullptr) c[q] = to_float<T>(c0[(i64)b * H + j]);
#pragma unroll
            for (int g = 0; g < G; ++g) up[q][g] = u[(i64)b * G * H + (i64)g * H + j];
        }
    }
}

// One item's output at step t: the cell on its pre-activations p, h_t into y [T, B, H] and (LSTM, last
// step) c_T into c_out; returns h_t for the exchange.
template <typename T, int MODE>
__device__ __forceinline__ T rnn_output(const float* p, float& c, T* y, T* c_out, int t, int steps, int B, int H,
                                        int b, int j) {
    const T hv = from_float<T>(rnn_cell<MODE>(p, c));
    y[((i64)(t - 1) * B + b) * H + j] = hv;
    if (MODE == RNN_LSTM && t == steps) c_out[(i64)b * H + j] = from_float<T>(c);
    return hv;
}

// Shared-memory carve-up, mirrored by cusparseblocks/rnn.py (_smem_bytes): weights [smem_wvec] uint4,
// h chunk [Hp·BC] T (16-byte aligned), pre-activations [smem_rows][nchunks·BC] float, rows [smem_rows] int2.
template <typename T, int BC>
struct RnnSmem {
    uint4* w;
    T* h;
    float* pre;
    int2* rows;
    __device__ RnnSmem(unsigned char* base, int smem_wvec, int Hp, int smem_rows, int Bp) {
        w = reinterpret_cast<uint4*>(base);
        size_t off = (size_t)smem_wvec * 16;
        h = reinterpret_cast<T*>(base + off);
        off += (((size_t)Hp * BC * sizeof(T)) + 15) / 16 * 16;
        pre = reinterpret_cast<float*>(base + off);
        off += (size_t)smem_rows * Bp * sizeof(float);
        off = (off + 15) / 16 * 16;
        rows = reinterpret_cast<int2*>(base + off);
    }
};

// rnn_persistent<T, MODE, BC>: the whole sequence in one launch.
// One thread block owns the units [unit_start[b], unit_start[b+1]) (all G gate rows of each) and keeps
// their packed rows of W in shared memory for all T steps. Grid = number of blocks the host planned, at
// most the number that are co-resident (1 per SM), so spinning on another block's flag cannot deadlock.
// Step t: wait until flags[d] >= t-1 for every block d whose units this block's rows read (ld.acquire
// at gpu scope; a watchdog sets *status and leaves instead of hanging), copy those slices of h_{t-1}
// (batch chunk by chunk, 16-byte L2 loads) into shared memory, then `lanes` consecutive threads share a
// row: lane l reads the row's 16-byte weight vectors l, l+lanes, ... (consecutive lanes, consecutive
// vectors: no bank conflicts), gathers BC values of h per nonzero and accumulates in fp32; a shuffle
// reduction gives the row's dot products. The pointwise cell (u_t prefetched into registers one step
// ahead, c kept in fp32 registers) writes h_t to y [T, B, H] and to the exchange slot t; after a block
// barrier one thread publishes flags[b] = t with st.release.gpu.
template <typename T, int MODE, int BC>
__global__ void __launch_bounds__(RNN_THREADS, 1)
rnn_persistent(const uint4* __restrict__ wpack, const int* __restrict__ wvec_off,
               const int2* __restrict__ row_info, const int* __restrict__ row_off,
               const int* __restrict__ unit_start, const int* __restrict__ dep_off,
               const int* __restrict__ dep_block, const int2* __restrict__ load_range,
               const int* __restrict__ load_off, const T* __restrict__ u, const T* __restrict__ c0,
               T* __restrict__ y, T* __restrict__ c_out, T* xch, int* flags, int* status, int H, int Hp,
               int B, int steps, int nchunks, int lanes, int smem_wvec, int smem_rows,
               long long timeout_ns) {
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
    constexpr int V = RnnPack<T>::V;
    RNN_BLOCK_SMEM(rnn_smem_raw);
    RNN_BLOCK_INT(abort_s);
    const int Bp = nchunks * BC;
    RnnSmem<T, BC> sm(rnn_smem_raw, smem_wvec, Hp, smem_rows, Bp);

    const int blk = blockIdx.x, tid = threadIdx.x;
    const int u0 = unit_start[blk], units = unit_start[blk + 1] - u0, nrows = units * G;
    const int nitems = units * B;

    if (tid == 0) abort_s = 0;
    {
        const int wv0 = wvec_off[blk], nwv = wvec_off[blk + 1] - wv0;
        for (int v = tid; v < nwv; v += RNN_THREADS) sm.w[v] = wpack[wv0 + v];
        const int ro = row_off[blk];
        for (int r = tid; r < nrows; r += RNN_THREADS) sm.rows[r] = row_info[ro + r];
    }

    float creg[RNN_UPT];
    T upre[RNN_UPT][G];
    rnn_load_state<T, MODE, RNN_UPT, RNN_THREADS>(creg, upre, u, c0, tid, u0, units, nitems, B, H);
    __syncthreads();

    const int slot = tid / lanes, lane = tid % lanes, nslots = RNN_THREADS / lanes;
    const int rounds = (nrows + nslots - 1) / nslots;

    for (int t = 1; t <= steps; ++t) {
        if (t > 1) {
            const unsigned long long start = global_ns();
            for (int d = dep_off[blk] + tid; d < dep_off[blk + 1]; d += RNN_THREADS) {
                const int* f = flags + dep_block[d];
                unsigned spins = 0;
                while (ld_acquire_gpu(f) < t - 1) {
                    if ((++spins & 255u) == 0) {
                        if (*(volatile int*)status != 0 || (long long)(global_ns() - start) > timeout_ns) {
                            atomicExch(status, 1);
                            abort_s = 1;
                            break;
                        }
                    }
                }
            }
            __threadfence();
        }
        __syncthreads();
        if (abort_s) return;

        const T* src = xch + (i64)(t - 1) * nchunks * Hp * BC;
        for (int c = 0; c < nchunks; ++c) {
            const uint4* s4 = reinterpret_cast<const uint4*>(src + (i64)c * Hp * BC);
            uint4* h4 = reinterpret_cast<uint4*>(sm.h);
            for (int r = load_off[blk]; r < load_off[blk + 1]; ++r) {
                const int2 rg = load_range[r];  // (first 16-byte vector, count) of one contiguous slice
                for (int v = tid; v < rg.y; v += RNN_THREADS) h4[rg.x + v] = __ldcg(s4 + rg.x + v);
            }
            __syncthreads();

            for (int rr = 0; rr < rounds; ++rr) {
                const int r = slot + rr * nslots;
                const int2 info = r < nrows ? sm.rows[r] : make_int2(0, 0);
                float acc[BC];
#pragma unroll
                for (int b = 0; b < BC; ++b) acc[b] = 0.0f;
                const uint4* wp = sm.w + info.x + lane;
#pragma unroll 2
                for (int m = 0; m < info.y; ++m) {
                    const uint4 q = wp[m * lanes];
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        float w;
                        int k;
                        RnnPack<T>::get(q, e, w, k);
                        float hv[BC];
                        rnn_gather<T, BC>(sm.h, k, hv);
#pragma unroll
                        for (int b = 0; b < BC; ++b) acc[b] = fmaf(w, hv[b], acc[b]);
                    }
                }
                for (int off = lanes >> 1; off > 0; off >>= 1) {
#pragma unroll
                    for (int b = 0; b < BC; ++b) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], off);
                }
                if (lane == 0 && r < nrows) {
#pragma unroll
                    for (int b = 0; b < BC; ++b) sm.pre[r * Bp + c * BC + b] = acc[b];
                }
            }
            __syncthreads();
        }

        T* dst = xch + (i64)t * nchunks * Hp * BC;
#pragma unroll
        for (int q = 0; q < RNN_UPT; ++q) {
            const int i = tid + q * RNN_THREADS;
            const int ul = i % max(units, 1), b = i / max(units, 1), j = u0 + ul;
            if (i < nitems && j < H) {
                float p[G];
#pragma unroll
                for (int g = 0; g < G; ++g) p[g] = sm.pre[(g * units + ul) * Bp + b] + to_float<T>(upre[q][g]);
                dst[((i64)(b / BC) * Hp + j) * BC + (b % BC)] =
                    rnn_output<T, MODE>(p, creg[q], y, c_out, t, steps, B, H, b, j);
            }
        }
        __syncthreads();
        if (tid == 0) {
            __threadfence();
            st_release_gpu(flags + blk, t);
        }
        if (t < steps) rnn_load_u<T, MODE, RNN_UPT, RNN_THREADS>(upre, u, t, tid, u0, units, nitems, B, H);
    }
}

// rnn_persistent_sentinel<T, MODE, BC, HS>: rnn_persistent with the sentinel exchange (the default).
// One thread block owns the units [unit_start[b], unit_start[b+1]) (all G gate rows of each) and keeps
// their packed rows of W in shared memory for all T steps. Grid = number of blocks the host planned, at
// most the number that are co-resident (1 per SM), so spinning on another block's output cannot deadlock.
// Step t, per batch chunk: copy the slices of h_{t-1} this block's rows read (load_range: 16-byte
// vectors, relaxed gpu-scope loads) into shared memory as HS (fp32 when it fits: the gathers then need no
// conversion, 4 instructions fewer per nonzero at BC = 4 than fp16), re-reading a vector until every value
// it needs is no longer the sentinel: a block waits only for the h values it reads, no flag, no fence, no
// grid barrier (a watchdog sets *status and leaves instead of hanging). Then `lanes` consecutive threads
// share a row: lane l reads the row's 16-byte weight vectors l, l+lanes, ... (consecutive lanes,
// consecutive vectors: no bank conflicts), gathers BC values of h per nonzero and accumulates in fp32; a
// shuffle reduction gives the row's dot products. The pointwise cell (u_t prefetched into registers one
// step ahead, c kept in fp32 registers) writes h_t to y [T, B, H] and to the exchange slot t. Also:
// RNN_LOADS exchange loads in flight per thread, two accumulator sets (ILP) where BC <= 4.
// prof (benchmarks; null otherwise): [blocks][steps + 1][4] of long long. Thread 0 of each block writes
// clock64() at 4 points of step t (start, first chunk of h_{t-1} in shared memory, dot products done, its
// h_t stored) to row t, and to row 0: clock64() at entry, after the weights are loaded, at exit, and the
// globaltimer nanoseconds from entry to exit (so cycles convert to time).
// wait = 0 is a benchmark diagnostic only (no block waits: the cost of everything but the exchange; the
// result is wrong).
template <typename T, int MODE, int BC, typename HS>
__global__ void __launch_bounds__(RNN_THREADS, 1)
rnn_persistent_sentinel(const uint4* __restrict__ wpack, const int* __restrict__ wvec_off,
               const int2* __restrict__ row_info, const int* __restrict__ row_off,
               const int* __restrict__ unit_start, const int2* __restrict__ load_range,
               const int* __restrict__ load_off, const T* __restrict__ u, const T* __restrict__ c0,
               T* __restrict__ y, T* __restrict__ c_out, T* xch, int* status, long long* prof, int H, int Hp,
               int B, int steps, int nchunks, int lanes, int smem_wvec, int smem_rows, long long timeout_ns,
               int wait, int poll_all) {
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
    constexpr int V = RnnPack<T>::V;
    typedef RnnX<T> X;
    constexpr int EPV = X::EPV;
    constexpr int NACC = BC <= 4 ? 2 : 1;  // independent accumulator sets (ILP) where registers allow
    RNN_BLOCK_SMEM(rnn_smem_raw);
    RNN_BLOCK_INT(abort_s);
    const int Bp = nchunks * BC;
    RnnSmem<HS, BC> sm(rnn_smem_raw, smem_wvec, Hp, smem_rows, Bp);

    const int blk = blockIdx.x, tid = threadIdx.x;
    const int u0 = unit_start[blk], units = unit_start[blk + 1] - u0, nrows = units * G;
    const int nitems = units * B;

    long long* prow = prof != nullptr && tid == 0 ? prof + (i64)blk * (steps + 1) * 4 : nullptr;
    unsigned long long ns0 = 0;
    if (prow) {
        prow[0] = clock64();
        ns0 = global_ns();
    }
    if (tid == 0) abort_s = 0;
    {
        const int wv0 = wvec_off[blk], nwv = wvec_off[blk + 1] - wv0;
        for (int v = tid; v < nwv; v += RNN_THREADS) sm.w[v] = wpack[wv0 + v];
        const int ro = row_off[blk];
        for (int r = tid; r < nrows; r += RNN_THREADS) sm.rows[r] = row_info[ro + r];
    }

    float creg[RNN_UPT];
    T upre[RNN_UPT][G];
    rnn_load_state<T, MODE, RNN_UPT, RNN_THREADS>(creg, upre, u, c0, tid, u0, units, nitems, B, H);

    __syncthreads();

    const int slot = tid / lanes, lane = tid % lanes, nslots = RNN_THREADS / lanes;
    const int rounds = (nrows + nslots - 1) / nslots;
    const int r_begin = load_off[blk], r_end = load_off[blk + 1];
    if (prow) prow[1] = clock64();

    for (int t = 1; t <= steps; ++t) {
        if (prow) prow[t * 4] = clock64();
        const T* src = xch + (i64)(t - 1) * nchunks * Hp * BC;
        for (int c = 0; c < nchunks; ++c) {
            const T* sc = src + (i64)c * Hp * BC;
            for (int r = r_begin; r < r_end; ++r) {
                const int2 rg = load_range[r];  // (first 16-byte vector, count) of one contiguous slice
                // RNN_LOADS vectors in flight per thread before any is checked. A vector still unwritten
                // is re-read alone until written, then the next (poll_all = 0), or every unwritten one is
                // re-read together (poll_all = 1: one round trip per poll, but more L2 traffic while
                // blocks wait; H100, T 256, H 2304, B 4: fp16 3.98 µs/step alone vs 5.07 together,
                // fp32 6.90 alone vs 4.93 together; cusparseblocks/rnn.py picks per dtype)
                for (int v0 = tid; v0 < rg.y; v0 += RNN_LOADS * RNN_THREADS) {
                    uint4 vals[RNN_LOADS];
                    unsigned need[RNN_LOADS];  // values of each vector this block waits for (slot 0: none)
                    unsigned pending = 0;
#pragma unroll
                    for (int q = 0; q < RNN_LOADS; ++q) {
                        const int v = v0 + q * RNN_THREADS;
                        vals[q] = v < rg.y ? X::load(sc + (rg.x + v) * EPV) : make_uint4(0, 0, 0, 0);
                    }
#pragma unroll
                    for (int q = 0; q < RNN_LOADS; ++q) {
                        const int e0 = (rg.x + v0 + q * RNN_THREADS) * EPV;  // unit e0 / BC, column e0 % BC
                        need[q] = 0;
#pragma unroll
                        for (int i = 0; i < EPV; ++i) {
                            const int e = e0 + i;
                            need[q] |= (wait && t > 1 && v0 + q * RNN_THREADS < rg.y && e / BC < H &&
                                        c * BC + e % BC < B) ? (1u << i) : 0u;
                        }
                        pending |= (X::written(vals[q]) & need[q]) != need[q] ? 1u << q : 0u;
                    }
                    RnnWatchdog dog;
                    if (poll_all) {
                        while (pending != 0) {
                            if (dog.expired(status, timeout_ns, &abort_s)) break;
#pragma unroll
                            for (int q = 0; q < RNN_LOADS; ++q) {
                                if (pending & (1u << q)) vals[q] = X::load(sc + (rg.x + v0 + q * RNN_THREADS) * EPV);
                            }
#pragma unroll
                            for (int q = 0; q < RNN_LOADS; ++q) {
                                if ((X::written(vals[q]) & need[q]) == need[q]) pending &= ~(1u << q);
                            }
                        }
                    } else {
#pragma unroll
                        for (int q = 0; q < RNN_LOADS; ++q) {
                            while ((pending & (1u << q)) && (X::written(vals[q]) & need[q]) != need[q]) {
                                if (dog.expired(status, timeout_ns, &abort_s)) {
                                    pending = 0;
                                    break;
                                }
                                vals[q] = X::load(sc + (rg.x + v0 + q * RNN_THREADS) * EPV);
                            }
                        }
                    }
#pragma unroll
                    for (int q = 0; q < RNN_LOADS; ++q) {
                        const int v = v0 + q * RNN_THREADS;
                        if (v < rg.y) rnn_put_h(sm.h + (rg.x + v) * EPV, vals[q], T());
                    }
                }
            }
            __syncthreads();
            if (abort_s) return;
            if (prow && c == 0) prow[t * 4 + 1] = clock64();

            for (int rr = 0; rr < rounds; ++rr) {
                const int r = slot + rr * nslots;
                const int2 info = r < nrows ? sm.rows[r] : make_int2(0, 0);
                float acc[NACC][BC];
#pragma unroll
                for (int a = 0; a < NACC; ++a) {
#pragma unroll
                    for (int b = 0; b < BC; ++b) acc[a][b] = 0.0f;
                }
                const uint4* wp = sm.w + info.x + lane;
#pragma unroll 2
                for (int m = 0; m < info.y; ++m) {
                    const uint4 q = wp[m * lanes];
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        float w;
                        int k;
                        RnnPack<T>::get(q, e, w, k);
                        float hv[BC];
                        rnn_gather<HS, BC>(sm.h, k, hv);
#pragma unroll
                        for (int b = 0; b < BC; ++b) acc[e % NACC][b] = fmaf(w, hv[b], acc[e % NACC][b]);
                    }
                }
#pragma unroll
                for (int b = 0; b < BC; ++b) {
                    if (NACC == 2) acc[0][b] += acc[NACC - 1][b];
                }
                for (int off = lanes >> 1; off > 0; off >>= 1) {
#pragma unroll
                    for (int b = 0; b < BC; ++b) acc[0][b] += __shfl_xor_sync(0xffffffffu, acc[0][b], off);
                }
                if (lane == 0 && r < nrows) {
#pragma unroll
                    for (int b = 0; b < BC; ++b) sm.pre[r * Bp + c * BC + b] = acc[0][b];
                }
            }
            __syncthreads();
        }

        if (prow) prow[t * 4 + 2] = clock64();
        T* dst = xch + (i64)t * nchunks * Hp * BC;
#pragma unroll
        for (int q = 0; q < RNN_UPT; ++q) {
            const int i = tid + q * RNN_THREADS;
            const int ul = i % max(units, 1), b = i / max(units, 1), j = u0 + ul;
            if (i < nitems && j < H) {
                float p[G];
#pragma unroll
                for (int g = 0; g < G; ++g) p[g] = sm.pre[(g * units + ul) * Bp + b] + to_float<T>(upre[q][g]);
                X::store(dst + ((i64)(b / BC) * Hp + j) * BC + (b % BC),
                         rnn_output<T, MODE>(p, creg[q], y, c_out, t, steps, B, H, b, j));
            }
        }
        if (prow) prow[t * 4 + 3] = clock64();
        if (t < steps) rnn_load_u<T, MODE, RNN_UPT, RNN_THREADS>(upre, u, t, tid, u0, units, nitems, B, H);
    }
    if (prow) {
        prow[2] = clock64();
        prow[3] = (long long)(global_ns() - ns0);
    }
}

// rnn_step<T, MODE, BC>: one timestep, the non-persistent fallback (launched T times, in a CUDA graph).
// One warp per unit j (8 per 256-thread block; grid = ceil(H / 8)): lanes stride over the nonzeros of
// the unit's G rows (CSR by output row, from global memory), gather h_{t-1} from the exchange slot, and
// reduce with shuffles; lane 0 applies the cell for the warp's unit and every batch column of the chunk.
// c [B, H] is the fp32 LSTM state, updated in place.
template <typename T, int MODE, int BC>
__global__ void __launch_bounds__(256, 1)
rnn_step(const i64* __restrict__ row_ptr, const int* __restrict__ col, const T* __restrict__ val,
         const T* __restrict__ hprev, T* __restrict__ hnext, const T* __restrict__ u_t, float* __restrict__ c,
         T* __restrict__ y_t, T* __restrict__ c_out, int H, int Hp, int B, int nchunks) {
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (j >= H) return;
    for (int ch = 0; ch < nchunks; ++ch) {
        const T* hs = hprev + (i64)ch * Hp * BC;
        float p[G][BC];
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int b = 0; b < BC; ++b) p[g][b] = 0.0f;
            const i64 row = (i64)g * H + j;
            for (i64 e = row_ptr[row] + lane; e < row_ptr[row + 1]; e += 32) {
                const float w = to_float<T>(val[e]);
                const i64 k = col[e];
#pragma unroll
                for (int b = 0; b < BC; ++b) p[g][b] = fmaf(w, to_float<T>(hs[k * BC + b]), p[g][b]);
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
                for (int b = 0; b < BC; ++b) p[g][b] += __shfl_xor_sync(0xffffffffu, p[g][b], off);
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int bb = 0; bb < BC; ++bb) {
                const int b = ch * BC + bb;
                if (b < B) {
                    float q[G];
#pragma unroll
                    for (int g = 0; g < G; ++g) q[g] = p[g][bb] + to_float<T>(u_t[(i64)b * G * H + (i64)g * H + j]);
                    float cv = MODE == RNN_LSTM ? c[(i64)b * H + j] : 0.0f;
                    const T hv = from_float<T>(rnn_cell<MODE>(q, cv));
                    if (MODE == RNN_LSTM) {
                        c[(i64)b * H + j] = cv;
                        if (c_out != nullptr) c_out[(i64)b * H + j] = from_float<T>(cv);
                    }
                    y_t[(i64)b * H + j] = hv;
                    hnext[((i64)ch * Hp + j) * BC + bb] = hv;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core persistent kernel (fp16 weights and h, fp32 accumulation)

#ifdef RNN_HOST_EMULATION
#include "conv_ptx_emulated.h"  // mma16816 on the CPU (tests/cuda_emulation, the PTX fragment layouts)
#else
template <typename T> __device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
// 16 bytes global -> shared, cached in L2 only (.cg): a fresh read of the exchange on every call
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ int lds_s32(const int* p) {
    int v;
    asm volatile("ld.shared.s32 %0, [%1];" : "=r"(v) : "r"((unsigned)__cvta_generic_to_shared(p)));
    return v;
}
__device__ __forceinline__ uint2 lds_v2u32(const void* p) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"((unsigned)__cvta_generic_to_shared(p)));
    return v;
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// rnn_persistent_tc<MODE, MT, KS, NT, THREADS, MINB>: the whole sequence in one launch, dot products on
// tensor cores (mma.sync m16n8k16, fp16 in, fp32 accumulate), W's rows held densified in registers.
// One thread block owns the units [blk·U, min((blk+1)·U, Hu)) (U = `units`, Hu = H rounded up to 16; local
// row r = g·U + unit: all G gate rows of a unit in one block, so the LSTM cell stays local) = MT M-tiles
// of 16 rows. Each warp holds, per M-tile, up to KS k16-steps of those rows as A fragments in registers
// for all T steps (afrag: [blocks][warps][MT][KS][32 lanes] uint4; kstep: [blocks][warps][MT][KS] first
// k of the step; kcount: [blocks][warps][MT] steps in use): k-steps that are all zero for a tile are not
// held at all. Within a step the host permutes k (A'[m][2q, 2q+1, 2q+8, 2q+9] = W[m][k0+4q .. k0+4q+3]), so
// a lane's two B registers are 4 consecutive h values: one 8-byte shared-memory load, no ldmatrix.
// The exchange holds every h_t once, [T+1][B][Kp] fp16 (slot 0 = h_0 from the host), and shared memory
// holds h_{t-1} in the same [NT·8][Kp] layout (Kp ≡ 16 mod 64 halves: the lanes' 8-byte loads hit distinct
// banks; rows b >= B and never-loaded columns stay zero). Step t: copy the runs of 8-value vectors the
// block's k-steps read (load_range: (first vector, count), the same offsets in the slot and in shared
// memory), re-reading a vector until no value is the sentinel (as rnn_persistent_sentinel: values double
// as flags; a watchdog instead of a hang). Then each warp runs its k-steps in groups (two accumulator
// chains per tile for ILP), writes its partial 16×8 tiles to shared memory, and after a barrier each
// (unit, batch) item sums the warps' partials in warp order (deterministic), adds u_t, applies the cell
// and stores h_t to y [T, B, H] and to exchange slot t (units in [H, Hu) store 0: every value a block
// reads is written). Grid = ceil(Hu / U) blocks, at most the co-resident ones (occupancy query, host).
// prof and wait: as rnn_persistent_sentinel.
#define RNN_TC_PARAMS                                                                                          \
    const uint4 *__restrict__ afrag, const int *__restrict__ kstep, const int *__restrict__ kcount,            \
        const int2 *__restrict__ load_range, const int *__restrict__ load_off, const __half *__restrict__ u,   \
        const __half *__restrict__ c0, __half *__restrict__ y, __half *__restrict__ c_out, __half *xch,        \
        int *status, long long *prof, int H, int Hu, int Kp, int units, int B, int steps, long long timeout_ns, \
        int wait, int *counters, int nblocks, int block_flags
#define RNN_TC_ARGS                                                                                            \
    afrag, kstep, kcount, load_range, load_off, u, c0, y, c_out, xch, status, prof, H, Hu, Kp, units, B, steps, \
        timeout_ns, wait, counters, nblocks, block_flags

// Thread-block clusters (exchange="cluster", sm_90): PTX helpers; tests/test_rnn.py's host emulation
// provides the same names.
#if !defined(RNN_HOST_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RNN_HAS_CLUSTERS 1
__device__ __forceinline__ unsigned cluster_ctarank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
// 16 bytes into the shared memory of cluster block `rank` at the offset `addr` has in this block's
__device__ __forceinline__ void st_cluster_v4(unsigned addr, unsigned rank, const uint4& v) {
    unsigned ra;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(addr), "r"(rank));
    asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(ra), "r"(v.x), "r"(v.y), "r"(v.z),
                 "r"(v.w) : "memory");
}
#elif defined(RNN_HOST_EMULATION)
#define RNN_HAS_CLUSTERS 1
#endif

// The body of rnn_persistent_tc (CLUSTER = 1) and rnn_persistent_tc_cluster (CLUSTER = C > 1: the
// exchange="cluster" variant). With clusters, block `rank` of a cluster of C copies only its 1/C of each
// run of h_{t-1} from the exchange slot (load_range: the cluster's union, the same list for every member),
// then stores it into every other member's shared memory (mapa + st.shared::cluster), and one cluster
// barrier (arrive.release / wait.acquire) replaces the block barrier: L2 reads and polled lines per step
// drop C×. h is double-buffered by step parity: a member writes step t's buffer while a slower peer may
// still read step t-1's; the barrier of step t-1 (which every peer reaches only after its step t-2 dot
// products) makes the step-t buffer free. A block whose watchdog fires keeps going through the barriers
// (every later wait gives up at once: *status is set), so no peer waits on a barrier forever.
template <int MODE, int MT, int KS, int NT, int THREADS, int CLUSTER>
__device__ __forceinline__ void rnn_tc_body(RNN_TC_PARAMS) {
    constexpr bool CL = CLUSTER > 1;
    constexpr int G = MODE == RNN_LSTM ? 4 : 1;
    constexpr int WARPS = THREADS / 32;
    constexpr int TC_P = NT >= 4 ? 1 : 4 / NT;  // k-steps per group of the mma loop
    // pointwise items (unit, batch) a thread owns: units·B <= 16·MT/G · 8·NT
    constexpr int UPT = (128 * MT * NT / G + THREADS - 1) / THREADS < RNN_UPT
                            ? (128 * MT * NT / G + THREADS - 1) / THREADS : RNN_UPT;
    typedef RnnX<__half> X;
    RNN_BLOCK_SMEM(rnn_smem_raw);
    RNN_BLOCK_INT(abort_s);
    // shared memory, mirrored by cusparseblocks/rnn.py (_tc_smem_bytes): hs [1 or 2 (clusters)][NT·8][Kp]
    // half, partial sums [WARPS][MT][NT][16][8] float, k-step table [WARPS][MT][KS] int
    constexpr int NBUF = CL ? 2 : 1;
    __half* hs0 = reinterpret_cast<__half*>(rnn_smem_raw);
    float* part = reinterpret_cast<float*>(rnn_smem_raw + (size_t)NBUF * NT * 8 * Kp * 2);
    int* ktab = reinterpret_cast<int*>(part + WARPS * MT * NT * 128);

    const int blk = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g4 = lane / 4, q4 = lane % 4;
    const int u0 = blk * units, nunits = min(units, Hu - u0), nitems = nunits * B;

    long long* prow = prof != nullptr && tid == 0 ? prof + (i64)blk * (steps + 1) * 4 : nullptr;
    if (prow) {  // the start time waits in prow[3] (not a register held through the steps)
        prow[0] = clock64();
        prow[3] = (long long)global_ns();
    }
    if (tid == 0) abort_s = 0;
    {
        uint4* hz = reinterpret_cast<uint4*>(hs0);
        for (int i = tid; i < NBUF * NT * 8 * Kp / 8; i += THREADS) hz[i] = make_uint4(0, 0, 0, 0);
        const int* kt = kstep + (i64)blk * WARPS * MT * KS;
        for (int i = tid; i < WARPS * MT * KS; i += THREADS) ktab[i] = kt[i];
    }
    unsigned afr[MT][KS][4];
    int kcnt[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        kcnt[m] = kcount[((i64)blk * WARPS + warp) * MT + m];
#pragma unroll
        for (int s = 0; s < KS; ++s) {
            const uint4 a = afrag[((((i64)blk * WARPS + warp) * MT + m) * KS + s) * 32 + lane];
            afr[m][s][0] = a.x;
            afr[m][s][1] = a.y;
            afr[m][s][2] = a.z;
            afr[m][s][3] = a.w;
        }
    }

    float creg[UPT];
    __half upre[UPT][G];
    rnn_load_state<__half, MODE, UPT, THREADS>(creg, upre, u, c0, tid, u0, nunits, nitems, B, H);
    unsigned rank = 0;
#ifdef RNN_HAS_CLUSTERS
    if constexpr (CL) {
        rank = cluster_ctarank();
        cluster_arrive();  // every member's buffers are zeroed before any peer writes into them
        cluster_wait();
    } else {
        __syncthreads();
    }
#else
    __syncthreads();
#endif
    const int r_begin = load_off[blk], r_end = load_off[blk + 1];
    const int* myk = ktab + warp * MT * KS;
    if (prow) prow[1] = clock64();

    for (int t = 1; t <= steps; ++t) {
        if (prow) prow[t * 4] = clock64();
        __half* hs = hs0 + (CL ? (t & 1) * NT * 8 * Kp : 0);
        const unsigned hs_u32 = smem_u32(hs);
        const __half* src = xch + (i64)(t - 1) * B * Kp;
        if (!CL && counters != nullptr && t > 1) {
            // exchange="counter": one hot word a step instead of every thread polling h, then one copy.
            // exchange="group_counter": block_flags = NG groups (a power of two <= 32; block b in group
            // b & (NG - 1)), one arrival counter a group and step ([steps + 1][NG]); "counter" is NG = 1. Lane g
            // of warp 0 waits for group g's count, all NG polled at once (shifts only, no divisions).
            // exchange="block_flags": warp 0 polls every block's step flag (counters[b] = last step stored)
            // (bf: block_flags made opaque each step, so that nothing derived from it is hoisted out of the step
            // loop and held in registers: on sm_80 at 128 registers, that spilled)
            int bf = block_flags;
            asm volatile("" : "+r"(bf));
            if (wait && bf != 1 && warp == 0) {
                const int ng = max(bf, 1), lg = __ffs(ng) - 1;
                if (lane < ng && lane < nblocks) {
                    const int need = ((nblocks - 1 - lane) >> lg) + 1;
                    RnnWatchdog dog;
                    while (ld_acquire_gpu(counters + ((i64)(t - 1) << lg) + lane) < need) {
                        if (dog.expired(status, timeout_ns, &abort_s)) break;
                    }
                }
            } else if (wait && bf == 1 && warp == 0) {
                RnnWatchdog dog;
                for (int b = lane; b < nblocks; b += 32) {
                    while (ld_acquire_gpu(counters + b) < t - 1) {
                        if (dog.expired(status, timeout_ns, &abort_s)) break;
                    }
                }
            }
            __syncthreads();
            if (abort_s) return;
        }
        // every vector of the step (of this block's part of each run, with clusters) in flight at once
        // without registers (cp.async, L2 only), then each thread checks its own copies and re-reads only
        // those still holding the sentinel (relaxed loads)
        for (int r = r_begin; r < r_end; ++r) {
            const int2 rg = load_range[r];  // (first 8-value vector of the slot, count): same offsets in hs
            const int part_len = CL ? (rg.y + CLUSTER - 1) / CLUSTER : rg.y;
            const int a = rg.x + min((int)rank * part_len, rg.y), e = rg.x + min(((int)rank + 1) * part_len, rg.y);
            for (int v = a + tid; v < e; v += THREADS) cp_async16(hs_u32 + v * 16, src + v * 8, 16);
        }
        cp_async_commit();
        cp_async_wait<0>();
        // A thread's vectors still holding the sentinel: spin (relaxed loads) on the first one only; once
        // it is written, re-read every other unwritten one together (cp.async again, no registers) and
        // repeat. A thread's ~4 vectors then cost the wait plus ~2 L2 round trips, where polling them one
        // after another cost one round trip each (H100, first version: 6.35 µs of wait+load a step).
        if (wait && t > 1 && counters == nullptr) {
            RnnWatchdog dog;
            for (;;) {
                int first = -1;
                for (int r = r_begin; r < r_end && first < 0; ++r) {
                    const int2 rg = load_range[r];
                    const int part_len = CL ? (rg.y + CLUSTER - 1) / CLUSTER : rg.y;
                    const int a = rg.x + min((int)rank * part_len, rg.y);
                    const int e = rg.x + min(((int)rank + 1) * part_len, rg.y);
                    for (int v = a + tid; v < e; v += THREADS) {
                        if (X::written(*reinterpret_cast<const uint4*>(hs + v * 8)) != 0xffu) {
                            first = v;
                            break;
                        }
                    }
                }
                if (first < 0) break;
                uint4 val;
                bool gave_up = false;
                do {
                    if (dog.expired(status, timeout_ns, &abort_s)) {
                        gave_up = true;
                        break;
                    }
                    val = X::load(src + first * 8);
                } while (X::written(val) != 0xffu);
                if (gave_up) break;
                *reinterpret_cast<uint4*>(hs + first * 8) = val;
                for (int r = r_begin; r < r_end; ++r) {
                    const int2 rg = load_range[r];
                    const int part_len = CL ? (rg.y + CLUSTER - 1) / CLUSTER : rg.y;
                    const int a = rg.x + min((int)rank * part_len, rg.y);
                    const int e = rg.x + min(((int)rank + 1) * part_len, rg.y);
                    for (int v = a + tid; v < e; v += THREADS) {
                        if (X::written(*reinterpret_cast<const uint4*>(hs + v * 8)) != 0xffu)
                            cp_async16(hs_u32 + v * 16, src + v * 8, 16);
                    }
                }
                cp_async_commit();
                cp_async_wait<0>();
            }
        }
#ifdef RNN_HAS_CLUSTERS
        if constexpr (CL) {  // this block's part of h_(t-1) into every peer's buffer
            for (int r = r_begin; r < r_end; ++r) {
                const int2 rg = load_range[r];
                const int part_len = (rg.y + CLUSTER - 1) / CLUSTER;
                const int a = rg.x + min((int)rank * part_len, rg.y);
                const int e = rg.x + min(((int)rank + 1) * part_len, rg.y);
                for (int v = a + tid; v < e; v += THREADS) {
                    const uint4 val = *reinterpret_cast<const uint4*>(hs + v * 8);
#pragma unroll
                    for (int p = 1; p < CLUSTER; ++p) st_cluster_v4(hs_u32 + v * 16, (rank + p) % CLUSTER, val);
                }
            }
        }
#endif
#ifdef RNN_HAS_CLUSTERS
        if constexpr (CL) {
            cluster_arrive();
            cluster_wait();
        } else {
            __syncthreads();
            if (abort_s) return;
        }
#else
        __syncthreads();
        if (abort_s) return;
#endif
        if (prow) prow[t * 4 + 1] = clock64();

        float acc[MT][NT][2][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[m][n][c][i] = 0.0f;
                }
            }
        }
        // k-steps in groups of P: the group's table entries, then its B fragments, then its mma (volatile
        // loads keep this order, so at most P·NT B fragments are live beside the A fragments)
        const __half* hl = hs + g4 * Kp + 4 * q4;  // this step's buffer
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
            for (int s0 = 0; s0 < KS; s0 += TC_P) {
                int k0[TC_P];
                uint2 bf[TC_P][NT];
#pragma unroll
                for (int p = 0; p < TC_P; ++p) {
                    if (s0 + p < KS && s0 + p < kcnt[m]) k0[p] = lds_s32(myk + m * KS + s0 + p);
                }
#pragma unroll
                for (int p = 0; p < TC_P; ++p) {
                    if (s0 + p < KS && s0 + p < kcnt[m]) {
#pragma unroll
                        for (int n = 0; n < NT; ++n) bf[p][n] = lds_v2u32(hl + n * 8 * Kp + k0[p]);
                    }
                }
#pragma unroll
                for (int p = 0; p < TC_P; ++p) {
                    if (s0 + p < KS && s0 + p < kcnt[m]) {
#pragma unroll
                        for (int n = 0; n < NT; ++n)
                            mma16816<__half>(acc[m][n][(s0 + p) & 1], afr[m][s0 + p < KS ? s0 + p : 0],
                                             bf[p][n].x, bf[p][n].y);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                float* p = part + ((warp * MT + m) * NT + n) * 128 + g4 * 8 + 2 * q4;
                *reinterpret_cast<float2*>(p) =
                    make_float2(acc[m][n][0][0] + acc[m][n][1][0], acc[m][n][0][1] + acc[m][n][1][1]);
                *reinterpret_cast<float2*>(p + 64) =
                    make_float2(acc[m][n][0][2] + acc[m][n][1][2], acc[m][n][0][3] + acc[m][n][1][3]);
            }
        }
        __syncthreads();

        if (prow) prow[t * 4 + 2] = clock64();
        __half* dst = xch + (i64)t * B * Kp;
        int nit = nunits;  // nitems, recomputed each step (held through the step loop, it spilled on sm_80)
        asm volatile("" : "+r"(nit));
        nit *= B;
#pragma unroll
        for (int q = 0; q < UPT; ++q) {
            const int i = tid + q * THREADS;
            const int ul = i % max(nunits, 1), b = i / max(nunits, 1), j = u0 + ul;
            if (i < nit) {
                float p[G];
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const int r = g * units + ul;
                    const float* pp = part + ((r / 16) * NT + b / 8) * 128 + (r % 16) * 8 + b % 8;
                    float s = 0.0f;
#pragma unroll
                    for (int w = 0; w < WARPS; ++w) s += pp[w * MT * NT * 128];
                    p[g] = s + (j < H ? to_float<__half>(upre[q][g]) : 0.0f);
                }
                X::store(dst + (i64)b * Kp + j,  // units in [H, Hu): 0, so every value a block reads is written
                         j < H ? rnn_output<__half, MODE>(p, creg[q], y, c_out, t, steps, B, H, b, j)
                               : from_float<__half>(0.0f));
            }
        }
        if (prow) prow[t * 4 + 3] = clock64();
        if (t < steps) rnn_load_u<__half, MODE, UPT, THREADS>(upre, u, t, tid, u0, nunits, nit, B, H);
        if (!CL && counters != nullptr && t < steps) {
            // exchange="counter": one arrival per block on counters[t] after its h_t stores (barrier, then a
            // release add by thread 0); the next step's thread 0 waits (acquire) for all `nblocks`
            __syncthreads();
            int me = tid, bf = block_flags;  // opaque, as in the wait (the predicate is not held either)
            asm volatile("" : "+r"(me), "+r"(bf));
            if (me == 0) {
                const int ng = max(bf, 1);
                if (bf == 1)
                    st_release_gpu(counters + blk, t);
                else
                    red_release_gpu_add(counters + ((i64)t << (__ffs(ng) - 1)) + (blk & (ng - 1)), 1);
            }
        }
    }
    if (prow) {
        prow[2] = clock64();
        prow[3] = (long long)(global_ns() - (unsigned long long)prow[3]);
    }
}

template <int MODE, int MT, int KS, int NT, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) rnn_persistent_tc(RNN_TC_PARAMS) {
    rnn_tc_body<MODE, MT, KS, NT, THREADS, 1>(RNN_TC_ARGS);
}

// rnn_persistent_tc_cluster<..., CLUSTER>: the same kernel in thread-block clusters of CLUSTER blocks
// (grid = a multiple of CLUSTER; blocks of a cluster are consecutive), the cluster exchange (rnn_tc_body).
// sm_90 only: on older targets the specialization compiles to a trap and the host never launches it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(RNN_HOST_EMULATION)
#define RNN_CLUSTER_DIMS(c) __cluster_dims__(c, 1, 1)
#else
#define RNN_CLUSTER_DIMS(c)
#endif
template <int MODE, int MT, int KS, int NT, int THREADS, int MINB, int CLUSTER>
__global__ void RNN_CLUSTER_DIMS(CLUSTER) __launch_bounds__(THREADS, MINB) rnn_persistent_tc_cluster(RNN_TC_PARAMS) {
#ifdef RNN_HAS_CLUSTERS
    rnn_tc_body<MODE, MT, KS, NT, THREADS, CLUSTER>(RNN_TC_ARGS);
#else
    __trap();
#endif
}
