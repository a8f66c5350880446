// Helper ops (issue 5): activations with fused broadcast add/mul/scale, dropout (Philox counter RNG),
// layer and batch normalization, L2 weight normalization of block-sparse weights, fused LSTM gates.
//
// Every kernel reads and writes its storage type T (float, __half, __nv_bfloat16) and computes in float.
// Elementwise kernels give each thread V = 16 / sizeof(T) consecutive elements: one 16-byte load per
// operand when the host says every pointer is 16-byte aligned (`aligned`) and the V elements are in
// bounds, a scalar path otherwise (ragged tails, odd sizes, offset views). Indices are 64-bit (i64);
// index divisions use 32-bit arithmetic when the sizes allow (a 64-bit division costs ~100 instructions,
// more than the arithmetic of most ops per 16 bytes).
#include "common.cuh"

// ---------------------------------------------------------------------------------------------------
// 16-byte packs

#include "pack16.cuh"

// out[k] = p[i + k] for k < V; elements past n read as 0. `vec`: one 16-byte load (caller checked).
// CS: a last use of the data (ld.global.cs, evict-first), so that it does not push out lines that a
// later read in the same op still wants from L2.
template <typename T, int V, bool CS = false>
__device__ __forceinline__ void load_v(const T* __restrict__ p, i64 i, i64 n, bool vec, float (&out)[V]) {
    if (vec) {
        const uint4* q = reinterpret_cast<const uint4*>(p + i);
        uint4 raw;
        if constexpr (CS) raw = __ldcs(q);
        else raw = __ldg(q);
        unpack16<T, V>(raw, out);
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = (i + k < n) ? to_float<T>(p[i + k]) : 0.f;
    }
}

// CS: streaming store (st.global.cs): the output is not read again by this op.
template <typename T, int V, bool CS = false>
__device__ __forceinline__ void store_v(T* __restrict__ p, i64 i, i64 n, bool vec, const float (&in)[V]) {
    if (vec) {
        // inline PTX: NVVM splits a plain uint4 store into four 4-byte stores in some kernels
        const uint4 raw = pack16<T, V>(in);
        if constexpr (CS)
            asm volatile("st.global.cs.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p + i), "r"(raw.x), "r"(raw.y),
                         "r"(raw.z), "r"(raw.w));
        else
            asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p + i), "r"(raw.x), "r"(raw.y),
                         "r"(raw.z), "r"(raw.w));
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k)
            if (i + k < n) p[i + k] = from_float<T>(in[k]);
    }
}

// i / d and i % d for non-negative i, d; 32-bit arithmetic when `narrow` (both below 2^32).
__device__ __forceinline__ i64 div_(i64 i, i64 d, bool narrow) {
    return narrow ? (i64)((unsigned)i / (unsigned)d) : i / d;
}
__device__ __forceinline__ i64 mod_(i64 i, i64 d, bool narrow) {
    return narrow ? (i64)((unsigned)i % (unsigned)d) : i % d;
}

// float32 side outputs (partial gradients before a reduction): two or one 16-byte stores.
template <int V>
__device__ __forceinline__ void store_f32(float* __restrict__ p, i64 i, i64 n, bool vec, const float (&in)[V]) {
    if (vec) {
#pragma unroll
        for (int k = 0; k < V; k += 4)
            *reinterpret_cast<float4*>(p + i + k) = make_float4(in[k], in[k + 1], in[k + 2], in[k + 3]);
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k)
            if (i + k < n) p[i + k] = in[k];
    }
}

// ---------------------------------------------------------------------------------------------------
// Activations: act_f(z) and its derivative act_d(z), from the pre-activation z.

enum { ACT_IDENTITY = 0, ACT_RELU, ACT_ELU, ACT_GELU_TANH, ACT_GELU_ERF, ACT_SIGMOID, ACT_TANH, ACT_SOFTPLUS, ACT_SWISH };

__device__ __forceinline__ float sigmoidf_(float z) { return 1.f / (1.f + __expf(-z)); }

// tanh. FAST (half types): the MUFU approximation tanh.approx.f32 (relative error ~2^-11, below the
// rounding of a half-type result); else through expm1f, accurate to a few ulp for float32 results.
template <bool FAST> __device__ __forceinline__ float tanhf_(float z) {
    if (FAST) {
        float t;
        asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(z));
        return t;
    }
    const float e = expm1f(2.f * fminf(fabsf(z), 10.f));
    return copysignf(e / (e + 2.f), z);
}

// GELU (tanh form) as z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3): 0.5 (1 + tanh u) = sigmoid(2u)
// exactly, and one exp + one reciprocal is cheaper than an accurate tanh and has no cancellation in the
// negative tail. sigmoid(2u) = 1 / (1 + 2^(-2u log2 e)) with the constants folded into one exponent,
// -2u log2 e = z (c1 + c2 z^2): FMUL, FFMA, FMUL, ex2, add, reciprocal (u's separate products and __expf's
// scaling were ~2 more instructions an element: GELU-tanh forward on the half types ran at 97 % of copy,
// 0.97x PyTorch).
__device__ __forceinline__ float gelu_tanh_sig(float z) {
    float e;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(z * fmaf(z * z, -0.10294324f, -2.3022082f)));
    return __fdividef(1.f, 1.f + e);
}

// The normal CDF's lower tail h = Phi(-|z|) = 0.5 erfc(|z| / sqrt 2) for the half types (FAST):
// h = t 2^(p(t) - 1 - z^2 log2(e) / 2), t = 1 / (1 + |z| / (2 sqrt 2)), p a degree-7 least-squares fit of
// log2(erfcx(a) / t) (a = |z| / sqrt 2, Chebyshev fit on a in [0, 13.5]); Phi(z) = 1 - h for z >= 0, h for
// z < 0. Relative error of Phi (and of z Phi) below 1.6e-5 wherever Phi is a normal float (a float32
// emulation against scipy's ndtr), 15x under the float16 half-ulp. One reciprocal, 9 FMA and one exp2
// (~15 instructions with GELU's product) instead of erff's two selected polynomials and exp (~27):
// gelu_erf on the half types was instruction-bound (81 % of copy).
__device__ __forceinline__ float normcdf_tail_fast(float z) {
    float t, e;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(fmaf(0.35355339059327373f, fabsf(z), 1.f)));
    float p = -0.28992557525634766f;
    p = fmaf(p, t, 1.1587166786193848f);
    p = fmaf(p, t, -1.5634921789169312f);
    p = fmaf(p, t, 0.6055346727371216f);
    p = fmaf(p, t, -0.1053648591041565f);
    p = fmaf(p, t, 0.5812567472457886f);
    p = fmaf(p, t, 1.438869595527649f);
    p = fmaf(p, t, -2.825598955154419f);
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(fmaf(z * z, -0.7213475204444817f, p)));
    return t * e;
}
__device__ __forceinline__ float normcdf_fast(float z) {
    const float h = normcdf_tail_fast(z);
    return z >= 0.f ? 1.f - h : h;
}
__device__ __forceinline__ float gelu_erf_fast(float z) {
    const float zh = z * normcdf_tail_fast(z);
    return z >= 0.f ? z - zh : zh;
}

template <int ACT, bool FAST = false> __device__ __forceinline__ float act_f(float z) {
    if (ACT == ACT_RELU) return fmaxf(z, 0.f);
    if (ACT == ACT_ELU) return z > 0.f ? z : __expf(z) - 1.f;
    if (ACT == ACT_GELU_TANH) return z * gelu_tanh_sig(z);
    if (ACT == ACT_GELU_ERF) return FAST ? gelu_erf_fast(z) : 0.5f * z * (1.f + erff(z * 0.7071067811865476f));
    if (ACT == ACT_SIGMOID) return sigmoidf_(z);
    if (ACT == ACT_TANH) return tanhf_<FAST>(z);
    if (ACT == ACT_SOFTPLUS) return z > 20.f ? z : log1pf(__expf(z));
    if (ACT == ACT_SWISH) return z * sigmoidf_(z);
    return z;
}

template <int ACT, bool FAST = false> __device__ __forceinline__ float act_d(float z) {
    if (ACT == ACT_RELU) return z > 0.f ? 1.f : 0.f;
    if (ACT == ACT_ELU) return z > 0.f ? 1.f : __expf(z);
    if (ACT == ACT_GELU_TANH) {  // s + z * 2 s (1 - s) * u', s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 z^2)
        const float s = gelu_tanh_sig(z);
        return s + z * s * (1.f - s) * 1.5957691216057308f * (1.f + 0.134145f * z * z);
    }
    if (ACT == ACT_GELU_ERF)
        return (FAST ? normcdf_fast(z) : 0.5f * (1.f + erff(z * 0.7071067811865476f))) +
               z * 0.3989422804014327f * __expf(-0.5f * z * z);
    if (ACT == ACT_SIGMOID) { float s = sigmoidf_(z); return s * (1.f - s); }
    if (ACT == ACT_TANH) { float t = tanhf_<FAST>(z); return 1.f - t * t; }
    if (ACT == ACT_SOFTPLUS) return sigmoidf_(z);
    if (ACT == ACT_SWISH) { float s = sigmoidf_(z); return s + z * s * (1.f - s); }
    return 1.f;
}

// b broadcast against the output: b's element for output index i is b[(i / b_inner) % b_mid].
// b_inner == 1 && b_mid == n: same shape; b_inner == 1: a row vector repeated; b_mid == 1: a scalar.
template <typename T, int V>
__device__ __forceinline__ void load_bcast(const T* __restrict__ b, i64 i, i64 n, i64 b_inner, i64 b_mid,
                                           bool vec, bool narrow, float (&out)[V]) {
    if (b_inner == 1) {
        if (vec && (b_mid == n || b_mid % V == 0)) {
            load_v<T, V>(b, b_mid == n ? i : mod_(i, b_mid, narrow), b_mid, true, out);
            return;
        }
    } else if (vec && b_inner % V == 0) {
        float s = to_float<T>(b[mod_(div_(i, b_inner, narrow), b_mid, narrow)]);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = s;
        return;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = (i + k < n) ? to_float<T>(b[((i + k) / b_inner) % b_mid]) : 0.f;
}

enum { OP_NONE = 0, OP_ADD = 1, OP_MUL = 2 };

// y = act(alpha * (a OP b)), b broadcast as in load_bcast (op == OP_NONE: y = act(alpha * a)).
// Grid: a 1-D grid-stride loop; each thread block covers U * blockDim.x * V consecutive outputs a step,
// each thread U vectors blockDim.x * V apart, all U loaded before any is used (U 16-byte loads in flight).
template <typename T, int ACT, int U>
__global__ void ew_fwd(T* __restrict__ y, const T* __restrict__ a, const T* __restrict__ b, i64 n, i64 b_inner,
                       i64 b_mid, int op, float alpha, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const bool narrow = n < (1ll << 32);
    const i64 tile = (i64)blockDim.x * V;
    const i64 step = (i64)gridDim.x * tile * U;
    for (i64 i0 = (i64)blockIdx.x * tile * U + (i64)threadIdx.x * V; i0 < n; i0 += step) {
        float va[U][V], vb[U][V];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = i0 + u * tile;
            const bool vec = aligned && i + V <= n;
            load_v<T, V>(a, i, n, vec, va[u]);
            if (op != OP_NONE) load_bcast<T, V>(b, i, n, b_inner, b_mid, vec, narrow, vb[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = i0 + u * tile;
            if (i >= n) break;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float z = op == OP_ADD ? va[u][k] + vb[u][k] : (op == OP_MUL ? va[u][k] * vb[u][k] : va[u][k]);
                va[u][k] = act_f<ACT, FAST>(alpha * z);
            }
            store_v<T, V>(y, i, n, aligned && i + V <= n, va[u]);
        }
    }
}

// Backward of ew_fwd: g = dy * act'(z) * alpha with z recomputed from a and b;
// da = g * b (mul) or g; db = g * a (mul) or g, written as T into db (b has the output's shape) or as
// float32 into db_f32 (b is broadcast: the host reduces it). Null outputs are skipped.
// Grid: as ew_fwd.
template <typename T, int ACT, int U>
__global__ void ew_bwd(T* __restrict__ da, T* __restrict__ db, float* __restrict__ db_f32, const T* __restrict__ dy,
                       const T* __restrict__ a, const T* __restrict__ b, i64 n, i64 b_inner, i64 b_mid, int op,
                       float alpha, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const bool narrow = n < (1ll << 32);
    const i64 tile = (i64)blockDim.x * V;
    const i64 step = (i64)gridDim.x * tile * U;
    for (i64 i0 = (i64)blockIdx.x * tile * U + (i64)threadIdx.x * V; i0 < n; i0 += step) {
        float va[U][V], vb[U][V], g[U][V];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = i0 + u * tile;
            const bool vec = aligned && i + V <= n;
            load_v<T, V>(a, i, n, vec, va[u]);
            load_v<T, V>(dy, i, n, vec, g[u]);
            if (op != OP_NONE) load_bcast<T, V>(b, i, n, b_inner, b_mid, vec, narrow, vb[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = i0 + u * tile;
            if (i >= n) break;
            const bool vec = aligned && i + V <= n;
            float out[V];
#pragma unroll
            for (int k = 0; k < V; ++k) {
                float z = op == OP_ADD ? va[u][k] + vb[u][k] : (op == OP_MUL ? va[u][k] * vb[u][k] : va[u][k]);
                if (ACT != ACT_IDENTITY) g[u][k] *= act_d<ACT, FAST>(alpha * z);
                g[u][k] *= alpha;
            }
            if (da) {
#pragma unroll
                for (int k = 0; k < V; ++k) out[k] = op == OP_MUL ? g[u][k] * vb[u][k] : g[u][k];
                store_v<T, V>(da, i, n, vec, out);
            }
            if (db || db_f32) {
#pragma unroll
                for (int k = 0; k < V; ++k) out[k] = op == OP_MUL ? g[u][k] * va[u][k] : g[u][k];
                if (db) store_v<T, V>(db, i, n, vec, out);
                else store_f32<V>(db_f32, i, n, vec, out);
            }
        }
    }
}

// The plain activation forward (no second operand), y = act(alpha * a): ew_fwd without its operand and
// broadcast paths, for the same reason as ew_act_bwd (ew_fwd: 40 registers, 6 blocks of 256 a SM; here
// ~30, 8 blocks: more loads in flight and more warps to hide the activation's latency).
// U vectors a thread: a block covers U·blockDim.x consecutive vectors, thread t vectors t, t + blockDim.x,
// ... (coalesced), and issues their U 16-byte loads (raw, 4 registers each) before converting any, so an
// SM has U times the bytes in flight of U = 1 (ew_act_bwd and ew_bin_fwd, with two loads a thread, run at
// ~104 % of a copy, ew_act_fwd with one at ~99 %). Grid: ceil(n / (V·U·blockDim.x)) blocks, grid-stride
// past 2^31 - 1 blocks. Unaligned views and the last partial chunk go vector by vector.
template <typename T, int ACT, int U>
__global__ void ew_act_fwd(T* __restrict__ y, const T* __restrict__ a, i64 n, float alpha, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const i64 stride = (i64)blockDim.x * V;  // between a thread's vectors
    const i64 step = (i64)gridDim.x * stride * U;
    for (i64 base = (i64)blockIdx.x * stride * U + (i64)threadIdx.x * V; base < n; base += step) {
        if (U > 1 && aligned && base + (U - 1) * stride + V <= n) {
            uint4 raw[U];
#pragma unroll
            for (int u = 0; u < U; ++u) raw[u] = __ldg(reinterpret_cast<const uint4*>(a + base + u * stride));
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float va[V];
                unpack16<T, V>(raw[u], va);
#pragma unroll
                for (int k = 0; k < V; ++k) va[k] = act_f<ACT, FAST>(alpha * va[k]);
                store_v<T, V>(y, base + u * stride, n, true, va);
            }
        } else {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const i64 i = base + u * stride;
                if (i >= n) break;
                const bool vec = aligned && i + V <= n;
                float va[V];
                load_v<T, V>(a, i, n, vec, va);
#pragma unroll
                for (int k = 0; k < V; ++k) va[k] = act_f<ACT, FAST>(alpha * va[k]);
                store_v<T, V>(y, i, n, vec, va);
            }
        }
    }
}

// Two operands of the output's shape, y = act(alpha * (a OP b)) (OP_ADD or OP_MUL): ew_fwd without its
// broadcast paths and runtime op (a same-shape add/mul ran ~1.3 % slower than PyTorch's through ew_fwd).
// Grid: as ew_fwd with U = 1.
template <typename T, int ACT, int OP>
__global__ void ew_bin_fwd(T* __restrict__ y, const T* __restrict__ a, const T* __restrict__ b, i64 n,
                           float alpha, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += step) {
        const bool vec = aligned && i + V <= n;
        float va[V], vb[V];
        load_v<T, V>(a, i, n, vec, va);
        load_v<T, V>(b, i, n, vec, vb);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float z = OP == OP_MUL ? va[k] * vb[k] : va[k] + vb[k];
            va[k] = act_f<ACT, FAST>(alpha * z);
        }
        store_v<T, V>(y, i, n, vec, va);
    }
}

// The plain activation backward (no second operand), da = dy * act'(alpha * a) * alpha: ew_bwd with its
// operand, broadcast and output-selection paths left out. Those took the half types to 52 registers
// (4 blocks of 256 threads per SM, half the loads in flight of ew_fwd's 40) and made the activation
// backward ~10 % slower than an `add` that moves the same bytes; here 32-40. Grid: as ew_fwd with U = 1.
template <typename T, int ACT>
__global__ void ew_act_bwd(T* __restrict__ da, const T* __restrict__ dy, const T* __restrict__ a, i64 n,
                           float alpha, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += step) {
        const bool vec = aligned && i + V <= n;
        float va[V], g[V];
        load_v<T, V>(a, i, n, vec, va);
        load_v<T, V>(dy, i, n, vec, g);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            if (ACT != ACT_IDENTITY) g[k] *= act_d<ACT, FAST>(alpha * va[k]);
            g[k] *= alpha;
        }
        store_v<T, V>(da, i, n, vec, g);
    }
}

// Activation with a bias per column of x [R, C] (features last), backward: dx = dy * act'(x + bias[c]),
// and the bias gradient's partial column sums (of dx as rounded to T, as the caller's dx sums) over this
// block's rows into ws [splits, 1, C] (float32), finished by cols_finalize.
// Grid: x = column tiles of 32 * V columns, y = row splits of rows_per_split rows; block (32, 8): each
// thread holds V consecutive columns (their bias and running sums in registers) and walks every 8th row
// of the split, BIAS_ROWS rows at a time with all their 16-byte loads of x and dy issued before the first
// use (one row in flight a thread made the old loop latency-bound: 49-71 % of copy); the 8 row lanes
// reduce through shared memory in a fixed order. No index division.
constexpr int BIAS_ROWS = 4;
template <typename T, int ACT, bool VEC>
__device__ __forceinline__ void bias_cols_rows(T* __restrict__ dx, const T* __restrict__ dy,
                                               const T* __restrict__ x, const float (&bv)[Lanes<T>::V],
                                               float (&acc)[Lanes<T>::V], i64 r_begin, i64 r_end, i64 C, i64 c0) {
    constexpr int V = Lanes<T>::V, U = BIAS_ROWS;
    constexpr bool FAST = sizeof(T) < 4;
    for (i64 r0 = r_begin + threadIdx.y; r0 < r_end; r0 += 8 * U) {
        uint4 rx[U], rd[U];
        if (VEC) {
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (r0 + 8 * u < r_end) {
                    rx[u] = __ldg(reinterpret_cast<const uint4*>(x + (r0 + 8 * u) * C + c0));
                    rd[u] = __ldg(reinterpret_cast<const uint4*>(dy + (r0 + 8 * u) * C + c0));
                }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 r = r0 + 8 * u;
            if (r >= r_end) break;
            float v[V], d[V];
            if (VEC) {
                unpack16<T, V>(rx[u], v);
                unpack16<T, V>(rd[u], d);
            } else {
                load_v<T, V>(x + r * C, c0, C, false, v);
                load_v<T, V>(dy + r * C, c0, C, false, d);
            }
#pragma unroll
            for (int k = 0; k < V; ++k) {
                d[k] = to_float<T>(from_float<T>(d[k] * act_d<ACT, FAST>(v[k] + bv[k])));
                acc[k] += d[k];
            }
            store_v<T, V>(dx + r * C, c0, C, VEC, d);
        }
    }
}

template <typename T, int ACT>
__global__ void ew_bias_cols_bwd(T* __restrict__ dx, float* __restrict__ ws, const T* __restrict__ dy,
                                 const T* __restrict__ x, const T* __restrict__ bias, i64 R, i64 C,
                                 i64 rows_per_split, int aligned) {
    constexpr int V = Lanes<T>::V;
    __shared__ float red[8][32 * V];
    const i64 c0 = ((i64)blockIdx.x * 32 + threadIdx.x) * V;
    const bool vec = aligned && c0 + V <= C;
    const i64 r_begin = (i64)blockIdx.y * rows_per_split;
    const i64 r_end = min(R, r_begin + rows_per_split);
    float acc[V], bv[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.f;
    if (c0 < C) {
        load_v<T, V>(bias, c0, C, vec, bv);
        if (vec) bias_cols_rows<T, ACT, true>(dx, dy, x, bv, acc, r_begin, r_end, C, c0);
        else bias_cols_rows<T, ACT, false>(dx, dy, x, bv, acc, r_begin, r_end, C, c0);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) red[threadIdx.y][threadIdx.x * V + k] = acc[k];
    __syncthreads();
    for (int t = threadIdx.y * 32 + threadIdx.x; t < 32 * V; t += 256) {
        const i64 c = (i64)blockIdx.x * 32 * V + t;
        if (c >= C) continue;
        float s = 0.f;
#pragma unroll
        for (int l = 0; l < 8; ++l) s += red[l][t];
        ws[(i64)blockIdx.y * C + c] = s;
    }
}

// ---------------------------------------------------------------------------------------------------
// Dropout: keep element e when Philox4x32-10(counter = (e / 4, offset), key = seed)[e % 4] >= threshold.
// The mask is a pure function of (seed, offset, e): forward and backward regenerate it, and the NumPy
// reference (cusparseblocks/reference/ops.py) computes the same bits.

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 key) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        unsigned hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        unsigned hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ key.x, lo1, hi0 ^ c.w ^ key.y, lo0);
        key.x += 0x9E3779B9u;
        key.y += 0xBB67AE85u;
    }
    return c;
}

// y = x * keep * scale. Grid: as ew_fwd (V is a multiple of 4, so a thread's elements start a Philox group).
template <typename T>
__global__ void dropout_fwd(T* __restrict__ y, const T* __restrict__ x, i64 n, unsigned seed_lo, unsigned seed_hi,
                            unsigned offset_lo, unsigned offset_hi, unsigned threshold, float scale, int aligned) {
    constexpr int V = Lanes<T>::V;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    const uint2 key = make_uint2(seed_lo, seed_hi);
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += step) {
        const bool vec = aligned && i + V <= n;
        float v[V];
        load_v<T, V>(x, i, n, vec, v);
#pragma unroll
        for (int q = 0; q < V / 4; ++q) {
            unsigned long long group = (unsigned long long)(i / 4 + q);
            uint4 r = philox4x32_10(make_uint4((unsigned)group, (unsigned)(group >> 32), offset_lo, offset_hi), key);
            v[4 * q + 0] = r.x >= threshold ? v[4 * q + 0] * scale : 0.f;
            v[4 * q + 1] = r.y >= threshold ? v[4 * q + 1] * scale : 0.f;
            v[4 * q + 2] = r.z >= threshold ? v[4 * q + 2] * scale : 0.f;
            v[4 * q + 3] = r.w >= threshold ? v[4 * q + 3] * scale : 0.f;
        }
        store_v<T, V>(y, i, n, vec, v);
    }
}

// ---------------------------------------------------------------------------------------------------
// Fused LSTM gates. Pre-activations z hold the gates in the order (i, f, g, o), each H wide:
// feature_axis 1: z [N, 4H], c_prev/c/h [N, H]; feature_axis 0: z [4H, N], c_prev/c/h [H, N].
// c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c).
// Grid: as ew_fwd over the N*H outputs (each thread V consecutive outputs of one row).

__device__ __forceinline__ i64 gate_base(i64 e, i64 H, int feature_axis) {
    // index of gate 0 for output element e (the callers' n = N * H: 32-bit division when it fits)
    return feature_axis == 1 ? e + div_(e, H, (e | H) < (1ll << 32)) * 3 * H : e;
}

// The four gates of outputs e .. e+V-1 (V 16-byte loads when `vec`, else per element with bounds).
template <typename T, int V>
__device__ __forceinline__ void load_gates(const T* __restrict__ z, i64 e, i64 n, i64 H, int feature_axis, bool vec,
                                           float (&zi)[V], float (&zf)[V], float (&zg)[V], float (&zo)[V]) {
    const i64 gate = feature_axis == 1 ? H : n, nz = 4 * n;
    if (vec) {
        const i64 base = gate_base(e, H, feature_axis);
        load_v<T, V>(z, base, nz, true, zi);
        load_v<T, V>(z, base + gate, nz, true, zf);
        load_v<T, V>(z, base + 2 * gate, nz, true, zg);
        load_v<T, V>(z, base + 3 * gate, nz, true, zo);
        return;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const bool ok = e + k < n;
        const i64 base = gate_base(ok ? e + k : e, H, feature_axis);
        zi[k] = ok ? to_float<T>(z[base]) : 0.f;
        zf[k] = ok ? to_float<T>(z[base + gate]) : 0.f;
        zg[k] = ok ? to_float<T>(z[base + 2 * gate]) : 0.f;
        zo[k] = ok ? to_float<T>(z[base + 3 * gate]) : 0.f;
    }
}

template <typename T>
__global__ void lstm_fwd(T* __restrict__ c, T* __restrict__ h, const T* __restrict__ z, const T* __restrict__ c_prev,
                         i64 n, i64 H, int feature_axis, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 e = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; e < n; e += step) {
        const bool vec = aligned && e + V <= n;
        float zi[V], zf[V], zg[V], zo[V], cp[V], cv[V], hv[V];
        load_gates<T, V>(z, e, n, H, feature_axis, vec, zi, zf, zg, zo);
        load_v<T, V>(c_prev, e, n, vec, cp);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            cv[k] = sigmoidf_(zf[k]) * cp[k] + sigmoidf_(zi[k]) * tanhf_<FAST>(zg[k]);
            hv[k] = sigmoidf_(zo[k]) * tanhf_<FAST>(cv[k]);
        }
        store_v<T, V>(c, e, n, vec, cv);
        store_v<T, V>(h, e, n, vec, hv);
    }
}

// Backward of lstm_fwd: from dh, dc (the gradient reaching c from the next step; null = 0), z and
// c_prev (c is recomputed): dz (z's layout) and dc_prev. Grid: as lstm_fwd.
template <typename T>
__global__ void lstm_bwd(T* __restrict__ dz, T* __restrict__ dc_prev, const T* __restrict__ dh,
                         const T* __restrict__ dc, const T* __restrict__ z, const T* __restrict__ c_prev, i64 n,
                         i64 H, int feature_axis, int aligned) {
    constexpr int V = Lanes<T>::V;
    constexpr bool FAST = sizeof(T) < 4;
    const i64 gate = feature_axis == 1 ? H : n;
    const i64 nz = 4 * n;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 e = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; e < n; e += step) {
        const bool vec = aligned && e + V <= n;
        float zi[V], zf[V], zg[V], zo[V], cp[V], gh[V], gc[V];
        const i64 base = gate_base(e, H, feature_axis);
        load_gates<T, V>(z, e, n, H, feature_axis, vec, zi, zf, zg, zo);
        load_v<T, V>(c_prev, e, n, vec, cp);
        load_v<T, V>(dh, e, n, vec, gh);
        if (dc) load_v<T, V>(dc, e, n, vec, gc);
        else {
#pragma unroll
            for (int k = 0; k < V; ++k) gc[k] = 0.f;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float i = sigmoidf_(zi[k]), f = sigmoidf_(zf[k]), g = tanhf_<FAST>(zg[k]), o = sigmoidf_(zo[k]);
            const float cv = f * cp[k] + i * g, tc = tanhf_<FAST>(cv);
            const float dct = gc[k] + gh[k] * o * (1.f - tc * tc);
            zo[k] = gh[k] * tc * o * (1.f - o);
            zi[k] = dct * g * i * (1.f - i);
            zf[k] = dct * cp[k] * f * (1.f - f);
            zg[k] = dct * i * (1.f - g * g);
            cp[k] = dct * f;
        }
        if (vec) {
            store_v<T, V>(dz, base, nz, true, zi);
            store_v<T, V>(dz, base + gate, nz, true, zf);
            store_v<T, V>(dz, base + 2 * gate, nz, true, zg);
            store_v<T, V>(dz, base + 3 * gate, nz, true, zo);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) {
                if (e + k >= n) continue;
                const i64 bk = gate_base(e + k, H, feature_axis);
                dz[bk] = from_float<T>(zi[k]);
                dz[bk + gate] = from_float<T>(zf[k]);
                dz[bk + 2 * gate] = from_float<T>(zg[k]);
                dz[bk + 3 * gate] = from_float<T>(zo[k]);
            }
        }
        store_v<T, V>(dc_prev, e, n, vec, cp);
    }
}

// ---------------------------------------------------------------------------------------------------
// Normalization over a 2-D [R, L] array (C-contiguous). Layer norm and batch norm map onto "statistics
// per row" (the row kernels: one row per group of blockDim.x threads) or "statistics per column" (a
// column reduction, then an elementwise apply). Statistics use sums shifted by the group's first
// element, which keeps the one-pass variance accurate when |mean| >> std.

// Sum a[0..1] over the blockDim.x threads of each row group (blockDim.x a multiple of 32, at most 32
// warps in the block). Every thread of the block must call it.
__device__ __forceinline__ void row_group_sum2(float& a0, float& a1) {
    __shared__ float part[32][2];
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) {
        a0 += __shfl_xor_sync(0xffffffffu, a0, s);
        a1 += __shfl_xor_sync(0xffffffffu, a1, s);
    }
    const int warps = blockDim.x / 32;
    if (warps == 1) return;
    const int warp = threadIdx.x / 32, first = threadIdx.y * warps;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) { part[first + warp][0] = a0; part[first + warp][1] = a1; }
    __syncthreads();
    a0 = 0.f; a1 = 0.f;
    for (int w = 0; w < warps; ++w) { a0 += part[first + w][0]; a1 += part[first + w][1]; }
}

// Per row r of x [R, L]: mean, rstd = 1/sqrt(var + eps) (biased var), then
// y = (x - mean) * rstd * gain + bias, gain/bias per column (gain_per_row 0: layer norm, features last)
// or per row (gain_per_row 1: batch norm with features first). gain/bias may be null (1 and 0).
// mean/rstd are float32 [R]. Running statistics (batch norm training; each if non-null, float32 [R]):
// run_mean = (1 - momentum) * run_mean + momentum * mean, run_var = (1 - momentum) * run_var + var_scale * var
// (var_scale = momentum * N / (N - 1): the unbiased variance), updated in place by the row's thread 0.
// Grid: blockDim.y rows per block, grid-stride over row groups; blockDim.x threads share one row.
template <typename T>
__global__ void norm_rows_fwd(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ gain,
                              const T* __restrict__ bias, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                              float* __restrict__ run_mean, float* __restrict__ run_var, i64 R, i64 L, float eps,
                              float momentum, float var_scale, int gain_per_row, int aligned) {
    constexpr int V = Lanes<T>::V;
    for (i64 r0 = (i64)blockIdx.x * blockDim.y; r0 < R; r0 += (i64)gridDim.x * blockDim.y) {
        const i64 row = r0 + threadIdx.y;
        const bool live = row < R;
        const T* xr = x + (live ? row : 0) * L;
        const float shift = to_float<T>(xr[0]);
        float s1 = 0.f, s2 = 0.f;
        if (live) {
            for (i64 j = (i64)threadIdx.x * V; j < L; j += (i64)blockDim.x * V) {
                float v[V];
                load_v<T, V>(xr, j, L, aligned && j + V <= L, v);
#pragma unroll
                for (int k = 0; k < V; ++k)
                    if (j + k < L) { float d = v[k] - shift; s1 += d; s2 += d * d; }
            }
        }
        row_group_sum2(s1, s2);
        if (!live) continue;
        const float m1 = s1 / (float)L;
        const float var = fmaxf(s2 / (float)L - m1 * m1, 0.f);
        const float mean = shift + m1, rstd = rsqrtf(var + eps);
        if (threadIdx.x == 0) {
            mean_out[row] = mean;
            rstd_out[row] = rstd;
            if (run_mean) run_mean[row] = (1.f - momentum) * run_mean[row] + momentum * mean;
            if (run_var) run_var[row] = (1.f - momentum) * run_var[row] + var_scale * var;
        }
        const float g_row = gain && gain_per_row ? to_float<T>(gain[row]) : 1.f;
        const float b_row = bias && gain_per_row ? to_float<T>(bias[row]) : 0.f;
        T* yr = y + row * L;
        for (i64 j = (i64)threadIdx.x * V; j < L; j += (i64)blockDim.x * V) {
            const bool vec = aligned && j + V <= L;
            float v[V], g[V], b[V];
            load_v<T, V>(xr, j, L, vec, v);
            if (gain && !gain_per_row) load_v<T, V>(gain, j, L, vec, g);
            if (bias && !gain_per_row) load_v<T, V>(bias, j, L, vec, b);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float gk = gain && !gain_per_row ? g[k] : g_row;
                const float bk = bias && !gain_per_row ? b[k] : b_row;
                v[k] = (v[k] - mean) * rstd * gk + bk;
            }
            store_v<T, V>(yr, j, L, vec, v);
        }
    }
}

// The same with the row in registers (one read of x, one write of y): G warps per row (blockDim.x ==
// 32 * G), thread t holding the vectors j = (k * 32 G + t) * V for k < NV as raw 16-byte packs (4
// registers each, converted to float where used: half the registers of a float row for the half
// types), all NV loads issued before the first use; G and NV are template parameters so that the
// vectors' offsets are immediates of one base address. The host picks them with L <= NV * 32 G * V;
// with one warp per row (G = 1) the reduction is shuffles only. Statistics as norm_rows_fwd (sums
// shifted by the row's first element). Grid: blockDim.y rows per block, grid-stride over row groups.
// 16-byte vectors only: the host launches it when every pointer is 16-byte aligned, L % V == 0 and
// L < 2^31 (`aligned` is then 1 and unused), else norm_rows_fwd.
template <typename T, int NV, int G>
__global__ void norm_rows_fwd_reg(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ gain,
                                  const T* __restrict__ bias, float* __restrict__ mean_out,
                                  float* __restrict__ rstd_out, float* __restrict__ run_mean,
                                  float* __restrict__ run_var, i64 R, i64 L, float eps, float momentum,
                                  float var_scale, int gain_per_row, int aligned) {
    constexpr int V = Lanes<T>::V, TX = 32 * G;
    const bool gain_col = gain && !gain_per_row, bias_col = bias && !gain_per_row;
    const int L32 = (int)L, t = threadIdx.x * V;
    for (i64 r0 = (i64)blockIdx.x * blockDim.y; r0 < R; r0 += (i64)gridDim.x * blockDim.y) {
        const i64 row = r0 + threadIdx.y;
        const bool live = row < R;
        const T* xr = x + (live ? row : 0) * L + t;
        const float shift = to_float<T>(x[(live ? row : 0) * L]);
        uint4 raw[NV];
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            raw[k] = make_uint4(0u, 0u, 0u, 0u);
            if (live && k * TX * V + t < L32) raw[k] = __ldg(reinterpret_cast<const uint4*>(xr + k * TX * V));
        }
        float s = 0.f, ss = 0.f;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            if (k * TX * V + t >= L32) break;
            float v[V];
            unpack16<T, V>(raw[k], v);
#pragma unroll
            for (int q = 0; q < V; ++q) { const float d = v[q] - shift; s += d; ss += d * d; }
        }
        row_group_sum2(s, ss);
        if (!live) continue;
        const float m1 = s / (float)L;
        const float mean = shift + m1;
        const float var = fmaxf(ss / (float)L - m1 * m1, 0.f), rstd = rsqrtf(var + eps);
        if (threadIdx.x == 0) {
            mean_out[row] = mean;
            rstd_out[row] = rstd;
            if (run_mean) run_mean[row] = (1.f - momentum) * run_mean[row] + momentum * mean;
            if (run_var) run_var[row] = (1.f - momentum) * run_var[row] + var_scale * var;
        }
        const float g_row = gain && gain_per_row ? to_float<T>(gain[row]) * rstd : rstd;
        const float b_row = bias && gain_per_row ? to_float<T>(bias[row]) : 0.f;
        T* yr = y + row * L + t;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            if (k * TX * V + t >= L32) break;
            float v[V], g[V], b[V];
            unpack16<T, V>(raw[k], v);
            if (gain_col) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(gain + t + k * TX * V)), g);
            if (bias_col) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(bias + t + k * TX * V)), b);
#pragma unroll
            for (int q = 0; q < V; ++q) {
                const float gk = gain_col ? g[q] * rstd : g_row;
                const float bk = bias_col ? b[q] : b_row;
                v[q] = (v[q] - mean) * gk + bk;
            }
            store_v<T, V>(yr, k * TX * V, L, true, v);
        }
    }
}

// Backward per row with the row of x and dy in registers (statistics per row; layout as
// norm_rows_fwd_reg): xhat = (x - mean[r]) * rstd[r], t = dy * gc (gc = gain per column, or 1),
//   s1 = sum_j t, s2 = sum_j t * xhat;  dgain_row[r] = s2, dbias_row[r] = s1 (in T, if non-null);
//   dx = rstd * gr * (t - train * (s1 + xhat * s2) / L)   (gr = gain per row, or 1).
// COLS (layer norm, features last): also the column sums sum_r dy (dbias) and sum_r dy * xhat (dgain)
// over this block's rows, reduced over blockDim.y in shared memory (8 * L bytes, dynamic) and written to
// ws [gridDim.x, 2, L] (float32) for cols_finalize: the parameter gradients cost no extra pass over x, dy.
// Grid: persistent blocks (the host sizes it to the resident capacity), grid-stride over row groups.
template <typename T, int NV, bool COLS>
__global__ void norm_rows_bwd_reg(T* __restrict__ dx, T* __restrict__ dgain_row, T* __restrict__ dbias_row,
                                  float* __restrict__ ws, const T* __restrict__ dy, const T* __restrict__ x,
                                  const T* __restrict__ gain, const float* __restrict__ mean,
                                  const float* __restrict__ rstd, i64 R, i64 L, int gain_per_row, int train,
                                  int aligned) {
    constexpr int V = Lanes<T>::V;
    extern __shared__ float red_cols[];
    const bool gain_col = gain && !gain_per_row;
    float acc0[COLS ? NV : 1][V], acc1[COLS ? NV : 1][V];
#pragma unroll
    for (int k = 0; k < (COLS ? NV : 1); ++k)
#pragma unroll
        for (int q = 0; q < V; ++q) { acc0[k][q] = 0.f; acc1[k][q] = 0.f; }
    for (i64 r0 = (i64)blockIdx.x * blockDim.y; r0 < R; r0 += (i64)gridDim.x * blockDim.y) {
        const i64 row = r0 + threadIdx.y;
        const bool live = row < R;
        const i64 off = (live ? row : 0) * L;
        const float m = mean[live ? row : 0], rs = rstd[live ? row : 0];
        float xh[NV][V], t[NV][V];
        float s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            const i64 j = ((i64)k * blockDim.x + threadIdx.x) * V;
            const bool in = live && j < L, vec = aligned && j + V <= L;
            if (in) {
                load_v<T, V>(x + off, j, L, vec, xh[k]);
                load_v<T, V>(dy + off, j, L, vec, t[k]);
            } else {
#pragma unroll
                for (int q = 0; q < V; ++q) { xh[k][q] = 0.f; t[k][q] = 0.f; }
            }
        }
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            const i64 j = ((i64)k * blockDim.x + threadIdx.x) * V;
            float g[V];
            if (gain_col && live && j < L) load_v<T, V>(gain, j, L, aligned && j + V <= L, g);
#pragma unroll
            for (int q = 0; q < V; ++q) {
                const bool ok = live && j + q < L;
                xh[k][q] = ok ? (xh[k][q] - m) * rs : 0.f;
                if (COLS) { acc0[k][q] += t[k][q]; acc1[k][q] += t[k][q] * xh[k][q]; }
                if (gain_col && ok) t[k][q] *= g[q];
                s1 += t[k][q];
                s2 += t[k][q] * xh[k][q];
            }
        }
        row_group_sum2(s1, s2);
        if (!live) continue;
        if (threadIdx.x == 0) {
            if (dgain_row) dgain_row[row] = from_float<T>(s2);
            if (dbias_row) dbias_row[row] = from_float<T>(s1);
        }
        if (!dx) continue;
        const float gr = gain && gain_per_row ? to_float<T>(gain[row]) : 1.f;
        const float a1 = train ? s1 / (float)L : 0.f, a2 = train ? s2 / (float)L : 0.f;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            const i64 j = ((i64)k * blockDim.x + threadIdx.x) * V;
            if (j >= L) break;
#pragma unroll
            for (int q = 0; q < V; ++q) t[k][q] = rs * gr * (t[k][q] - a1 - xh[k][q] * a2);
            store_v<T, V>(dx + off, j, L, aligned && j + V <= L, t[k]);
        }
    }
    if (!COLS) return;
    // fold the blockDim.y row groups' column sums, one group at a time (a fixed order: deterministic)
    for (int grp = 0; grp < (int)blockDim.y; ++grp) {
        if (threadIdx.y == grp) {
#pragma unroll
            for (int k = 0; k < NV; ++k) {
                const i64 j = ((i64)k * blockDim.x + threadIdx.x) * V;
#pragma unroll
                for (int q = 0; q < V; ++q)
                    if (j + q < L) {
                        red_cols[j + q] = grp ? red_cols[j + q] + acc0[k][q] : acc0[k][q];
                        red_cols[L + j + q] = grp ? red_cols[L + j + q] + acc1[k][q] : acc1[k][q];
                    }
            }
        }
        __syncthreads();
    }
    float* out = ws + (i64)blockIdx.x * 2 * L;
    for (i64 c = (i64)threadIdx.y * blockDim.x + threadIdx.x; c < 2 * L; c += (i64)blockDim.x * blockDim.y)
        out[c] = red_cols[c];
}

// Layer norm backward, features last, with the column sums (one pass over x and dy):
//   xhat = (x - mean[r]) * rstd[r], t = dy * gain (gain null -> 1), s1 = sum_j t, s2 = sum_j t * xhat,
//   dx = rstd * (t - (s1 + xhat * s2) / L),
//   and per column sum_r dy (dbias), sum_r dy * xhat (dgain) over the block's rows into ws [gridDim.x, 2, L]
//   (float32) for norm_finalize.
// G warps a row (blockDim.x == 32 * G), thread t holding the vectors j = (k * 32 G + t) * V, k < NV, of x
// and dy as raw 16-byte packs, all loads issued before the first use. blockDim.y row groups a block,
// each with its own column accumulator in shared memory (dynamic, blockDim.y * 8 * L bytes: a thread owns
// the same columns in every row its group visits, so it adds into them without atomics), folded over the
// groups in a fixed order at the end: deterministic for a given grid. The G warps of a group meet at a
// named barrier (id 1 + group) to sum s1, s2, so groups do not wait for each other; one-warp groups use
// shuffles only. Grid: persistent (the host sizes it to the resident capacity); group y of block b takes
// rows b * blockDim.y + y + i * gridDim.x * blockDim.y. 16-byte vectors only (host: aligned, L % V == 0,
// L < 2^31; else norm_rows_bwd_reg / norm_rows_bwd and a column pass).
template <typename T, int NV, int G>
__global__ void norm_rows_bwd_cols(T* __restrict__ dx, float* __restrict__ ws, const T* __restrict__ dy,
                                   const T* __restrict__ x, const T* __restrict__ gain,
                                   const float* __restrict__ mean, const float* __restrict__ rstd, i64 R, i64 L) {
    constexpr int V = Lanes<T>::V, TX = 32 * G, H = V / 4;  // H float4 of a sum per vector
    extern __shared__ float4 acc4[];                        // [group][sum][H][L / V] float4
    __shared__ float part[2][16][G][2];                     // double-buffered warp partials (G > 1)
    const int L32 = (int)L, nvec = L32 / V, t = threadIdx.x * V, warp = threadIdx.x / 32;
    float4* acc = acc4 + (i64)threadIdx.y * 2 * H * nvec;
    for (int i = threadIdx.x; i < 2 * H * nvec; i += TX) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    __syncthreads();
    const float invL = 1.f / (float)L;
    int parity = 0;
    for (i64 row = (i64)blockIdx.x * blockDim.y + threadIdx.y; row < R; row += (i64)gridDim.x * blockDim.y) {
        const i64 off = row * L + t;
        uint4 rx[NV], rd[NV];
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            rx[k] = make_uint4(0u, 0u, 0u, 0u);
            rd[k] = rx[k];
            if (k * TX * V + t < L32) {
                rx[k] = __ldg(reinterpret_cast<const uint4*>(x + off + k * TX * V));
                rd[k] = __ldg(reinterpret_cast<const uint4*>(dy + off + k * TX * V));
            }
        }
        const float m = mean[row], rs = rstd[row];
        float s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            if (k * TX * V + t >= L32) break;
            const int vi = k * TX + threadIdx.x;
            float xh[V], d[V], g[V];
            unpack16<T, V>(rx[k], xh);
            unpack16<T, V>(rd[k], d);
            if (gain) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(gain + t + k * TX * V)), g);
#pragma unroll
            for (int h = 0; h < H; ++h) {
                float4 a0 = acc[h * nvec + vi], a1 = acc[(H + h) * nvec + vi];
                float* p0 = &a0.x;
                float* p1 = &a1.x;
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int q = 4 * h + e;
                    xh[q] = (xh[q] - m) * rs;
                    p0[e] += d[q];
                    p1[e] += d[q] * xh[q];
                    const float tq = gain ? d[q] * g[q] : d[q];
                    s1 += tq;
                    s2 += tq * xh[q];
                }
                acc[h * nvec + vi] = a0;
                acc[(H + h) * nvec + vi] = a1;
            }
        }
#pragma unroll
        for (int sft = 16; sft > 0; sft >>= 1) {
            s1 += __shfl_xor_sync(0xffffffffu, s1, sft);
            s2 += __shfl_xor_sync(0xffffffffu, s2, sft);
        }
        if (G > 1) {
            if ((threadIdx.x & 31) == 0) { part[parity][threadIdx.y][warp][0] = s1; part[parity][threadIdx.y][warp][1] = s2; }
            asm volatile("bar.sync %0, %1;" ::"r"(1 + (int)threadIdx.y), "r"(TX) : "memory");
            s1 = 0.f;
            s2 = 0.f;
#pragma unroll
            for (int w = 0; w < G; ++w) { s1 += part[parity][threadIdx.y][w][0]; s2 += part[parity][threadIdx.y][w][1]; }
            parity ^= 1;
        }
        const float a1 = s1 * invL, a2 = s2 * invL;
#pragma unroll
        for (int k = 0; k < NV; ++k) {
            if (k * TX * V + t >= L32) break;
            float xh[V], d[V], g[V];
            unpack16<T, V>(rx[k], xh);
            unpack16<T, V>(rd[k], d);
            if (gain) unpack16<T, V>(__ldg(reinterpret_cast<const uint4*>(gain + t + k * TX * V)), g);
#pragma unroll
            for (int q = 0; q < V; ++q) {
                const float xq = (xh[q] - m) * rs;
                const float tq = gain ? d[q] * g[q] : d[q];
                d[q] = rs * (tq - a1 - xq * a2);
            }
            store_v<T, V>(dx + off, k * TX * V, L, true, d);
        }
    }
    __syncthreads();
    // fold the groups' accumulators in group order; column c = vector c / V, float4 (c % V) / 4
    const float* accf = reinterpret_cast<const float*>(acc4);
    const int threads = TX * blockDim.y, tid = threadIdx.y * TX + threadIdx.x;
    float* out = ws + (i64)blockIdx.x * 2 * L;
    for (int i = tid; i < 2 * L32; i += threads) {
        const int sum = i / L32, c = i - sum * L32, vi = c / V, h = (c % V) / 4, e = c % 4;
        const int idx = (((sum * H + h) * nvec + vi) * 4) + e;
        float a = 0.f;
        for (int grp = 0; grp < (int)blockDim.y; ++grp) a += accf[(i64)grp * 2 * H * nvec * 4 + idx];
        out[i] = a;
    }
}

// Backward per row of [R, L] with xhat = (x - mean) * rstd, the statistics per row (stat_per_col 0) or
// per column (1). gc = gain per column (1 if gain_per_row or no gain); gr = gain per row (else 1).
//   s1 = sum_j dy*gc, s2 = sum_j dy*gc*xhat;  dgain_row[r] = s2, dbias_row[r] = s1 (in T, if non-null)
//   dx = rstd * gr * (dy*gc - train * (s1 + xhat*s2) / L)   (written when dx is non-null)
// Layer norm, features last: gain per column; batch norm, features first: gain per row; the layer-norm
// dgain for features first: statistics per column, no dx. Grid: as norm_rows_fwd.
template <typename T>
__global__ void norm_rows_bwd(T* __restrict__ dx, T* __restrict__ dgain_row, T* __restrict__ dbias_row,
                              const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gain,
                              const float* __restrict__ mean, const float* __restrict__ rstd, i64 R, i64 L,
                              int stat_per_col, int gain_per_row, int train, int aligned) {
    constexpr int V = Lanes<T>::V;
    const bool gain_col = gain && !gain_per_row;
    for (i64 r0 = (i64)blockIdx.x * blockDim.y; r0 < R; r0 += (i64)gridDim.x * blockDim.y) {
        const i64 row = r0 + threadIdx.y;
        const bool live = row < R;
        const T* xr = x + (live ? row : 0) * L;
        const T* dyr = dy + (live ? row : 0) * L;
        const float m_row = stat_per_col ? 0.f : mean[live ? row : 0];
        const float r_row = stat_per_col ? 0.f : rstd[live ? row : 0];
        float s1 = 0.f, s2 = 0.f;
        if (live) {
            for (i64 j = (i64)threadIdx.x * V; j < L; j += (i64)blockDim.x * V) {
                const bool vec = aligned && j + V <= L;
                float v[V], d[V], g[V];
                load_v<T, V>(xr, j, L, vec, v);
                load_v<T, V>(dyr, j, L, vec, d);
                if (gain_col) load_v<T, V>(gain, j, L, vec, g);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    if (j + k >= L) continue;
                    const float m = stat_per_col ? mean[j + k] : m_row;
                    const float rs = stat_per_col ? rstd[j + k] : r_row;
                    const float t = gain_col ? d[k] * g[k] : d[k];
                    s1 += t;
                    s2 += t * (v[k] - m) * rs;
                }
            }
        }
        row_group_sum2(s1, s2);
        if (!live) continue;
        if (threadIdx.x == 0) {
            if (dgain_row) dgain_row[row] = from_float<T>(s2);
            if (dbias_row) dbias_row[row] = from_float<T>(s1);
        }
        if (!dx) continue;
        const float gr = gain && gain_per_row ? to_float<T>(gain[row]) : 1.f;
        const float a1 = train ? s1 / (float)L : 0.f, a2 = train ? s2 / (float)L : 0.f;
        T* dxr = dx + row * L;
        for (i64 j = (i64)threadIdx.x * V; j < L; j += (i64)blockDim.x * V) {
            const bool vec = aligned && j + V <= L;
            float v[V], d[V], g[V];
            load_v<T, V>(xr, j, L, vec, v);
            load_v<T, V>(dyr, j, L, vec, d);
            if (gain_col) load_v<T, V>(gain, j, L, vec, g);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float xh = (v[k] - m_row) * r_row;
                const float t = gain_col ? d[k] * g[k] : d[k];
                v[k] = r_row * gr * (t - a1 - xh * a2);
            }
            store_v<T, V>(dxr, j, L, vec, v);
        }
    }
}

// Rows a thread of the split column kernels (norm_cols_reduce, norm_cols_apply) loads before it uses the first
constexpr int COLS_ROWS = 4;

// Column sums over a row range of [R, C], into ws [splits, 2, C] (float32) at this block's split:
//   mode 0 (statistics):  s0 = sum (x - x[0, c]),  s1 = sum (x - x[0, c])^2
//   mode 1 (stats per column): xhat = (x - mean[c]) * rstd[c], t = dy * (gain ? gain[r] : 1):
//                          s0 = sum t, s1 = sum t * xhat
//   mode 2 (stats per row): xhat = (x - mean[r]) * rstd[r]: s0 = sum dy, s1 = sum dy * xhat
//   mode 3 (plain column sums of x, e.g. a bias gradient): s0 = sum x (s1 = sum x^2, unused)
// Grid: x = column tiles of 32 * V columns, y = row splits of rows_per_split rows; block (32, 8): each
// thread holds V consecutive columns and walks every 8th row of the split, then the 8 row lanes reduce
// through shared memory.
template <typename T>
__global__ void norm_cols_reduce(float* __restrict__ ws, const T* __restrict__ x, const T* __restrict__ dy,
                                 const T* __restrict__ gain, const float* __restrict__ mean,
                                 const float* __restrict__ rstd, i64 R, i64 C, i64 rows_per_split, int mode,
                                 int aligned) {
    constexpr int V = Lanes<T>::V;
    __shared__ float red[2][8][32 * V];
    const i64 c0 = ((i64)blockIdx.x * 32 + threadIdx.x) * V;
    const bool vec = aligned && c0 + V <= C;
    const i64 r_begin = (i64)blockIdx.y * rows_per_split;
    const i64 r_end = min(R, r_begin + rows_per_split);
    float s0[V], s1[V], ref[V], sc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) { s0[k] = 0.f; s1[k] = 0.f; ref[k] = 0.f; sc[k] = 1.f; }
    if (c0 < C) {
        if (mode == 0) load_v<T, V>(x, c0, C, vec, ref);
        if (mode == 1) {
#pragma unroll
            for (int k = 0; k < V; ++k)
                if (c0 + k < C) { ref[k] = mean[c0 + k]; sc[k] = rstd[c0 + k]; }
        }
        // batches of COLS_ROWS rows (16-byte vectors): every load of a batch issued before the first is used
        const bool two = mode == 1 || mode == 2;
        constexpr int U = COLS_ROWS;
        for (i64 r0 = r_begin + threadIdx.y; r0 < r_end; r0 += 8 * U) {
            uint4 rx[U], rd[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const i64 r = r0 + 8 * u;
                if (vec && r < r_end) {
                    rx[u] = __ldg(reinterpret_cast<const uint4*>(x + r * C + c0));
                    if (two) rd[u] = __ldg(reinterpret_cast<const uint4*>(dy + r * C + c0));
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const i64 r = r0 + 8 * u;
                if (r >= r_end) break;
                float v[V], d[V];
                if (vec) unpack16<T, V>(rx[u], v);
                else load_v<T, V>(x + r * C, c0, C, false, v);
                if (!two) {
#pragma unroll
                    for (int k = 0; k < V; ++k) { float t = v[k] - ref[k]; s0[k] += t; s1[k] += t * t; }
                } else {
                    if (vec) unpack16<T, V>(rd[u], d);
                    else load_v<T, V>(dy + r * C, c0, C, false, d);
                    const float gr = (mode == 1 && gain) ? to_float<T>(gain[r]) : 1.f;
                    const float mr = mode == 2 ? mean[r] : 0.f, rr = mode == 2 ? rstd[r] : 1.f;
#pragma unroll
                    for (int k = 0; k < V; ++k) {
                        const float xh = mode == 1 ? (v[k] - ref[k]) * sc[k] : (v[k] - mr) * rr;
                        const float t = d[k] * gr;
                        s0[k] += t;
                        s1[k] += t * xh;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
        red[0][threadIdx.y][threadIdx.x * V + k] = s0[k];
        red[1][threadIdx.y][threadIdx.x * V + k] = s1[k];
    }
    __syncthreads();
    // 256 threads finish 2 x 32V column sums over the 8 row lanes
    for (int t = threadIdx.y * 32 + threadIdx.x; t < 2 * 32 * V; t += 256) {
        const int which = t / (32 * V), col = t % (32 * V);
        const i64 c = (i64)blockIdx.x * 32 * V + col;
        if (c >= C) continue;
        float acc = 0.f;
#pragma unroll
        for (int l = 0; l < 8; ++l) acc += red[which][l][col];
        ws[((i64)blockIdx.y * 2 + which) * C + c] = acc;
    }
}

// Finish column sums: s0[c], s1[c] = sums over the splits of ws [splits, nsums, C] (s1 = 0 when nsums is 1):
//   mode 0 (statistics, scale = 1/R): m1 = s0*scale; var = max(s1*scale - m1^2, 0); mean = x_row0[c] + m1;
//           rstd = 1/sqrt(var + eps); out_a = mean, out_b = rstd (each if non-null); running statistics
//           as norm_rows_fwd (run_mean, run_var: float32 [C], each if non-null, updated in place)
//   mode 1 (gradient sums): g = gain ? gain[c] : 1; out_a = g*s0*scale, out_b = g*s1*scale;
//           sum0_t = s0, sum1_t = s1 in T (each if non-null)
// Grid: blocks of (32, ny) over 32-column tiles (ny <= 32: the host takes 32 lanes past 64 splits, else 8): the
// ny split lanes each sum every ny-th split, then lane 0 adds the ny in order (a fixed order for a given count
// of splits: deterministic). With 8 lanes, 527 splits (tall arrays of few columns) took ~20 us.
template <typename T>
__global__ void norm_finalize(float* __restrict__ out_a, float* __restrict__ out_b, float* __restrict__ run_mean,
                              float* __restrict__ run_var, T* __restrict__ sum0_t, T* __restrict__ sum1_t,
                              const float* __restrict__ ws, const T* __restrict__ x_row0, const T* __restrict__ gain,
                              int splits, int nsums, i64 C, float scale, float eps, float momentum, float var_scale,
                              int mode) {
    __shared__ float part[2][32][33];  // [sum][lane y][column]: blockDim.y <= 32 lanes over the splits
    const int ly = threadIdx.y, ny = blockDim.y;
    const i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
    float s0 = 0.f, s1 = 0.f;
    if (c < C) {
        // 4 splits' loads issued before they are added (in the same order: the same bits): one at a time, a
        // few hundred splits took 28 us (bench/NOTES.md, tenth session)
        int s = ly;
        for (; s + 3 * ny < splits; s += 4 * ny) {
            float a0[4], a1[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                a0[u] = ws[((i64)(s + ny * u) * nsums) * C + c];
                a1[u] = nsums == 2 ? ws[((i64)(s + ny * u) * 2 + 1) * C + c] : 0.f;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) { s0 += a0[u]; s1 += a1[u]; }
        }
        for (; s < splits; s += ny) {
            s0 += ws[((i64)s * nsums) * C + c];
            if (nsums == 2) s1 += ws[((i64)s * 2 + 1) * C + c];
        }
    }
    part[0][ly][threadIdx.x] = s0;
    part[1][ly][threadIdx.x] = s1;
    __syncthreads();
    if (ly != 0 || c >= C) return;
    s0 = 0.f;
    s1 = 0.f;
    for (int l = 0; l < ny; ++l) { s0 += part[0][l][threadIdx.x]; s1 += part[1][l][threadIdx.x]; }
    if (mode == 0) {
        const float m1 = s0 * scale, var = fmaxf(s1 * scale - m1 * m1, 0.f);
        const float mean = to_float<T>(x_row0[c]) + m1;
        if (out_a) out_a[c] = mean;
        if (out_b) out_b[c] = rsqrtf(var + eps);
        if (run_mean) run_mean[c] = (1.f - momentum) * run_mean[c] + momentum * mean;
        if (run_var) run_var[c] = (1.f - momentum) * run_var[c] + var_scale * var;
        return;
    }
    const float g = gain ? to_float<T>(gain[c]) : 1.f;
    if (out_a) out_a[c] = g * s0 * scale;
    if (out_b) out_b[c] = g * s1 * scale;
    if (sum0_t) sum0_t[c] = from_float<T>(s0);
    if (sum1_t) sum1_t[c] = from_float<T>(s1);
}

// norm_cols_apply's rows of a split for one thread (rows threadIdx.y + 8 j of the split, last to first with
// REV), with the column terms p = rstd * gain and, backward (dy), dx = p * gr * dy - q * (x - mean) - o with
// q = rstd^2 * B, o = rstd * A; forward, y = (x - mean) * p * gr + o + br with o = the bias per column.
// Batches of COLS_ROWS rows whose loads (x, dy, a gain and bias per row) are all issued before the first is
// used (a row at a time, the loads of the next row waited for the store of this one: 44 % of the copy on tall
// arrays, bench/NOTES.md, tenth session). VEC: 16-byte vectors (else the scalar path, row by row).
template <typename T, bool REV, bool VEC>
__device__ __forceinline__ void cols_apply_rows(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ dy,
                                                const T* __restrict__ gain, const T* __restrict__ bias,
                                                const float (&m)[Lanes<T>::V], const float (&p)[Lanes<T>::V],
                                                const float (&q)[Lanes<T>::V], const float (&o)[Lanes<T>::V],
                                                float* __restrict__ ws_rows, i64 R, i64 C, i64 c0, bool live,
                                                i64 r_begin, i64 r_end, i64 count, int gain_per_col) {
    constexpr int V = Lanes<T>::V, U = VEC ? COLS_ROWS : 1;
    const bool g_row = gain && !gain_per_col, b_row = bias && !gain_per_col;
    for (i64 it0 = threadIdx.y; it0 < count; it0 += 8 * U) {
        uint4 rx[U], rd[U];
        float gr[U], br[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 it = it0 + 8 * u;
            if (it >= count) break;
            const i64 r = REV ? r_end - 1 - it : r_begin + it;
            gr[u] = g_row ? to_float<T>(gain[r]) : 1.f;
            br[u] = b_row ? to_float<T>(bias[r]) : 0.f;
            if (VEC && live) {
                const uint4* px = reinterpret_cast<const uint4*>(x + r * C + c0);
                rx[u] = REV ? __ldcs(px) : __ldg(px);
                if (dy) {
                    const uint4* pd = reinterpret_cast<const uint4*>(dy + r * C + c0);
                    rd[u] = REV ? __ldcs(pd) : __ldg(pd);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 it = it0 + 8 * u;
            if (it >= count) break;
            const i64 r = REV ? r_end - 1 - it : r_begin + it;
            float v[V], d[V];
#pragma unroll
            for (int k = 0; k < V; ++k) { v[k] = 0.f; d[k] = 0.f; }
            if (VEC && live) unpack16<T, V>(rx[u], v);
            else if (live) load_v<T, V, REV>(x + r * C, c0, C, false, v);
            if (dy) {
                if (VEC && live) unpack16<T, V>(rd[u], d);
                else if (live) load_v<T, V, REV>(dy + r * C, c0, C, false, d);
                if (ws_rows) {
                    // the row's sums of dy and dy * xhat over the block's columns (the lanes of the warp: one
                    // row, 32 column chunks), xhat = (x - mean) * p (p = rstd: no gain per column with row sums)
                    float p0 = 0.f, p1 = 0.f;
#pragma unroll
                    for (int k = 0; k < V; ++k) { p0 += d[k]; p1 = fmaf(d[k] * (v[k] - m[k]), p[k], p1); }
#pragma unroll
                    for (int off = 16; off >= 1; off >>= 1) {
                        p0 += __shfl_xor_sync(0xffffffffu, p0, off);
                        p1 += __shfl_xor_sync(0xffffffffu, p1, off);
                    }
                    if (threadIdx.x == 0) {
                        ws_rows[(i64)blockIdx.x * 2 * R + r] = p0;
                        ws_rows[((i64)blockIdx.x * 2 + 1) * R + r] = p1;
                    }
                }
#pragma unroll
                for (int k = 0; k < V; ++k) v[k] = fmaf(p[k] * gr[u], d[k], fmaf(-q[k], v[k] - m[k], -o[k]));
            } else {
#pragma unroll
                for (int k = 0; k < V; ++k) v[k] = fmaf((v[k] - m[k]) * p[k], gr[u], o[k] + br[u]);
            }
            if (live) store_v<T, V, REV>(out + r * C, c0, C, VEC, v);
        }
    }
}

// Statistics per column of [R, C], applied (grid and block as norm_cols_reduce, whose per-split row
// ranges it shares):
//   forward (dy null): out = (x - mean[c]) * rstd[c] * g + b
//   backward:          out = rstd[c] * (g * dy - A[c] - xhat * B[c])   (A, B null -> 0)
// with g, b = gain, bias per column (gain_per_col) or per row; null -> 1, 0. ws_rows non-null (backward, no
// gain per column: layer norm with features first): also the sums of dy and dy * xhat over the block's columns
// for each row into ws_rows [gridDim.x, 2, R] (the per-row dbias, dgain before the sum over column tiles, as
// the one-pass _ops_cols.cols_bwd's). Each thread keeps its V
// columns' statistics (and per-column gain, bias) in registers: no index division.
// run_var non-null (batch norm inference, one launch): rstd[c] = 1/sqrt(run_var[c] + eps) instead of the
// rstd argument (mean = the running mean); the first row split writes mean_out, rstd_out [C] (if non-null).
// REV: each split walks its rows last to first, so that the first rows it reads are those that
// norm_cols_reduce read last and that L2 may still hold; loads and stores stream (evict-first), so
// they do not push those lines out.
template <typename T, bool REV>
__global__ void norm_cols_apply(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ dy,
                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                const T* __restrict__ gain, const T* __restrict__ bias, const float* __restrict__ A,
                                const float* __restrict__ B, const float* __restrict__ run_var, float eps,
                                float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                float* __restrict__ ws_rows, i64 R, i64 C, i64 rows_per_split, int gain_per_col,
                                int aligned) {
    constexpr int V = Lanes<T>::V;
    const i64 c0 = ((i64)blockIdx.x * 32 + threadIdx.x) * V;
    const bool live = c0 < C;
    if (!live && !ws_rows) return;  // with row sums every lane of a warp takes part in their shuffles
    bool vec = aligned && c0 + V <= C;
    if (ws_rows) vec = __all_sync(0xffffffffu, vec || !live);  // a warp-uniform path (a ragged warp: scalar)
    const i64 r_begin = (i64)blockIdx.y * rows_per_split;
    const i64 r_end = min(R, r_begin + rows_per_split);
    float m[V], rs[V], a[V], bb[V], gc[V], bc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const bool ok = c0 + k < C;
        m[k] = ok ? mean[c0 + k] : 0.f;
        rs[k] = ok ? (run_var ? rsqrtf(run_var[c0 + k] + eps) : rstd[c0 + k]) : 0.f;
        if (ok && mean_out && blockIdx.y == 0 && threadIdx.y == 0) { mean_out[c0 + k] = m[k]; rstd_out[c0 + k] = rs[k]; }
        a[k] = ok && A ? A[c0 + k] : 0.f;
        bb[k] = ok && B ? B[c0 + k] : 0.f;
        gc[k] = 1.f;
        bc[k] = 0.f;
    }
    if (gain && gain_per_col && live) load_v<T, V>(gain, c0, C, vec, gc);
    if (bias && gain_per_col && live) load_v<T, V>(bias, c0, C, vec, bc);
    const i64 count = r_end - r_begin;
#pragma unroll
    for (int k = 0; k < V; ++k) {  // the column terms of cols_apply_rows (into rs, a, bb)
        const float p = rs[k] * gc[k];
        a[k] = dy ? rs[k] * a[k] : bc[k];  // o
        bb[k] = rs[k] * rs[k] * bb[k];     // q
        rs[k] = p;
    }
    if (vec) cols_apply_rows<T, REV, true>(out, x, dy, gain, bias, m, rs, bb, a, ws_rows, R, C, c0, live, r_begin,
                                           r_end, count, gain_per_col);
    else cols_apply_rows<T, REV, false>(out, x, dy, gain, bias, m, rs, bb, a, ws_rows, R, C, c0, live, r_begin,
                                        r_end, count, gain_per_col);
}

// Batch norm inference, features last: y[r, c] = (x[r, c] - run_mean[c]) * rs[c] * g[c] + b[c] over x [R, C],
// rs = 1 / sqrt(run_var + eps), gain/bias null -> 1/0; the first row block writes mean_out = run_mean and
// rstd_out = rs (each if non-null). A pure elementwise pass: each thread keeps its V columns' mean, rs * g
// and b in registers and issues the 16-byte loads of its AFFINE_ROWS rows before it reads the
// per-column parameters (their latency overlaps the loads).
// Grid: x = column tiles of 32 * V columns, y = blocks of 8 * AFFINE_ROWS rows (grid-stride over them);
// block (32, 8) (fixed): thread (tx, ty) has columns c0 = (tile * 32 + tx) * V .. + V - 1, rows ty + 8 u.
// `aligned`: 16-byte pointers (run_mean, run_var, mean_out, rstd_out included) and C % V == 0 (else the
// scalar path).
constexpr int AFFINE_ROWS = 4;
template <typename T, bool VEC>
__device__ __forceinline__ void cols_affine_rows(T* __restrict__ y, const T* __restrict__ x,
                                                 const float* __restrict__ run_mean,
                                                 const float* __restrict__ run_var, const T* __restrict__ gain,
                                                 const T* __restrict__ bias, float eps, float* __restrict__ mean_out,
                                                 float* __restrict__ rstd_out, i64 R, i64 C, i64 c0, i64 rb) {
    constexpr int V = Lanes<T>::V, U = AFFINE_ROWS;
    const i64 r0 = rb * 8 * U + threadIdx.y;
    uint4 raw[U];
    if (VEC) {
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (r0 + 8 * u < R) raw[u] = __ldg(reinterpret_cast<const uint4*>(x + (r0 + 8 * u) * C + c0));
    }
    float m[V], sc[V], g[V], b[V];
    if (VEC) {
#pragma unroll
        for (int k = 0; k < V; k += 4) {
            const float4 m4 = __ldg(reinterpret_cast<const float4*>(run_mean + c0 + k));
            const float4 v4 = __ldg(reinterpret_cast<const float4*>(run_var + c0 + k));
            m[k] = m4.x; m[k + 1] = m4.y; m[k + 2] = m4.z; m[k + 3] = m4.w;
            sc[k] = v4.x; sc[k + 1] = v4.y; sc[k + 2] = v4.z; sc[k + 3] = v4.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
            m[k] = c0 + k < C ? run_mean[c0 + k] : 0.f;
            sc[k] = c0 + k < C ? run_var[c0 + k] : 1.f;
        }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) { sc[k] = rsqrtf(sc[k] + eps); g[k] = 1.f; b[k] = 0.f; }
    if (mean_out && rb == 0 && threadIdx.y == 0) {
        store_f32<V>(mean_out, c0, C, VEC, m);
        store_f32<V>(rstd_out, c0, C, VEC, sc);
    }
    if (gain) load_v<T, V>(gain, c0, C, VEC, g);
    if (bias) load_v<T, V>(bias, c0, C, VEC, b);
#pragma unroll
    for (int k = 0; k < V; ++k) sc[k] *= g[k];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const i64 r = r0 + 8 * u;
        if (r >= R) break;
        float v[V];
        if (VEC) unpack16<T, V>(raw[u], v);
        else load_v<T, V>(x + r * C, c0, C, false, v);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = (v[k] - m[k]) * sc[k] + b[k];
        store_v<T, V>(y + r * C, c0, C, VEC, v);
    }
}

template <typename T>
__global__ void norm_cols_affine(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ run_mean,
                                 const float* __restrict__ run_var, const T* __restrict__ gain,
                                 const T* __restrict__ bias, float eps, float* __restrict__ mean_out,
                                 float* __restrict__ rstd_out, i64 R, i64 C, int aligned) {
    constexpr int V = Lanes<T>::V;
    const i64 c0 = ((i64)blockIdx.x * 32 + threadIdx.x) * V;
    if (c0 >= C) return;
    const i64 row_blocks = (R + 8 * AFFINE_ROWS - 1) / (8 * AFFINE_ROWS);
    for (i64 rb = blockIdx.y; rb < row_blocks; rb += gridDim.y) {
        if (aligned && c0 + V <= C)
            cols_affine_rows<T, true>(y, x, run_mean, run_var, gain, bias, eps, mean_out, rstd_out, R, C, c0, rb);
        else
            cols_affine_rows<T, false>(y, x, run_mean, run_var, gain, bias, eps, mean_out, rstd_out, R, C, c0, rb);
    }
}

// Elementwise over [R, C] with statistics and gain each per row or per column (s = r or c, f = r or c):
//   y = (x - mean[s]) * rstd[s] * gain[f] + bias[f]
// gain/bias null -> 1/0. run_var non-null (batch norm inference, one launch): rstd[s] =
// 1/sqrt(run_var[s] + eps) instead of the rstd argument, and the grid first copies the n_stats statistics
// it uses to mean_out, rstd_out (if non-null). Grid: as ew_fwd; `aligned` also promises C % V == 0 (a
// thread's V elements share a row).
template <typename T>
__global__ void norm_apply_fwd(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ mean,
                               const float* __restrict__ rstd, const T* __restrict__ gain, const T* __restrict__ bias,
                               const float* __restrict__ run_var, float eps, float* __restrict__ mean_out,
                               float* __restrict__ rstd_out, i64 n_stats, i64 n, i64 C, int stat_per_col,
                               int gain_per_col, int aligned) {
    constexpr int V = Lanes<T>::V;
    if (mean_out) {
        for (i64 s = (i64)blockIdx.x * blockDim.x + threadIdx.x; s < n_stats; s += (i64)gridDim.x * blockDim.x) {
            mean_out[s] = mean[s];
            rstd_out[s] = run_var ? rsqrtf(run_var[s] + eps) : rstd[s];
        }
    }
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += step) {
        const bool vec = aligned && i + V <= n;
        float v[V];
        load_v<T, V>(x, i, n, vec, v);
        const i64 r0 = i / C, c0 = i - r0 * C;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            i64 r = r0, c = c0 + k;
            if (c >= C) { r += c / C; c %= C; }
            if (r * C + c >= n) break;
            const i64 s = stat_per_col ? c : r, f = gain_per_col ? c : r;
            const float g = gain ? to_float<T>(gain[f]) : 1.f, b = bias ? to_float<T>(bias[f]) : 0.f;
            const float rs = run_var ? rsqrtf(run_var[s] + eps) : rstd[s];
            v[k] = (v[k] - mean[s]) * rs * g + b;
        }
        store_v<T, V>(y, i, n, vec, v);
    }
}

// ---------------------------------------------------------------------------------------------------
// L2 weight normalization of block-sparse weights w [nnz, b, b] (block k at layout position
// (rows[k], cols[k]); column c of block k feeds output unit cols[k] * b + c).
// Per output unit u: n_u = sum over the blocks k of block column u / b and rows r of w[k, r, u % b]^2.
// Per block k: n_k = sum of w[k]^2. v = gain * w * rnorm, rnorm = 1 / sqrt(n + eps).

// s[u] = sum_{k in block column u / b, r} w[k, r, u % b] * w2[k, r, u % b] (w2 = w for the squared norm);
// to_rnorm (forward): out[u] = 1 / sqrt(s[u] + eps); else (backward, w2 = dv) out[u] = s[u] and, if dgain is
// non-null, dgain[u] = s[u] * rnorm[u] in T (the gain gradient).
// Grid: one block of 256 threads per block column (col_order/col_ptr: the layout's CSC tables). Thread t
// holds V consecutive columns (group t % groups, groups = ceil(b / V)) and walks every lanes-th row of the
// column's stacked blocks (lane t / groups), so each load is 16 bytes when `aligned` (b % V == 0); the
// lanes reduce through shared memory in a fixed order.
template <typename T>
__global__ void wn_reduce_unit(float* __restrict__ out, T* __restrict__ dgain, const T* __restrict__ w,
                               const T* __restrict__ w2, const float* __restrict__ rnorm,
                               const int* __restrict__ col_ptr, const int* __restrict__ col_order, int b, float eps,
                               int to_rnorm, int aligned) {
    constexpr int V = Lanes<T>::V;
    __shared__ float part[256 * V];
    const int jb = blockIdx.x;
    const int groups = (b + V - 1) / V, lanes = 256 / groups;
    const int grp = threadIdx.x % groups, lane = threadIdx.x / groups;
    const int c0 = grp * V;
    const int p0 = col_ptr[jb], rows = (col_ptr[jb + 1] - p0) * b;
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.f;
    if (lane < lanes) {
#pragma unroll 4
        for (int f = lane; f < rows; f += lanes) {
            const int p = f / b, r = f - p * b;
            const i64 base = (i64)col_order[p0 + p] * b * b + (i64)r * b;
            float v[V], v2[V];
            load_v<T, V>(w + base, c0, b, aligned, v);
            load_v<T, V>(w2 + base, c0, b, aligned, v2);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += v[k] * v2[k];
        }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) part[threadIdx.x * V + k] = acc[k];
    __syncthreads();
    for (int c = threadIdx.x; c < b; c += blockDim.x) {
        const int g = c / V, k = c % V;
        float s = 0.f;
        for (int l = 0; l < lanes; ++l) s += part[(l * groups + g) * V + k];
        const i64 u = (i64)jb * b + c;
        if (to_rnorm) {
            out[u] = rsqrtf(s + eps);
        } else {
            out[u] = s;
            if (dgain) dgain[u] = from_float<T>(s * rnorm[u]);
        }
    }
}

// Per block k of w [nnz, b, b], one warp each (8 per thread block of 256):
//   forward (dv null):  rnorm[k] = 1 / sqrt(sum w^2 + eps);  out = g[k] * rnorm[k] * w
//   backward:           dot[k] = sum dv * w;  out = g[k] * r * (dv - w * r^2 * dot[k]), r = rnorm[k] (given);
//                       dgain[k] = dot[k] * r (in T) when dgain is non-null
// g null -> 1. The second read of the block (2 to 16 KB) comes from L1/L2: the op costs one pass over
// DRAM per operand. `aligned`: 16-byte loads (b * b % V == 0 and aligned pointers).
template <typename T>
__global__ void wn_block(T* __restrict__ out, float* __restrict__ rnorm, T* __restrict__ dgain,
                         const T* __restrict__ w, const T* __restrict__ dv, const T* __restrict__ g, i64 nnz, int b,
                         float eps, int aligned) {
    constexpr int V = Lanes<T>::V;
    const i64 blk = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nnz) return;
    const int lane = threadIdx.x & 31, bb = b * b;
    const T* wb = w + blk * bb;
    const T* db = dv ? dv + blk * bb : nullptr;
    float acc = 0.f;
#pragma unroll 4
    for (int j = lane * V; j < bb; j += 32 * V) {
        float v[V], d[V];
        load_v<T, V>(wb, j, bb, aligned && j + V <= bb, v);
        if (db) load_v<T, V>(db, j, bb, aligned && j + V <= bb, d);
#pragma unroll
        for (int k = 0; k < V; ++k) acc += v[k] * (db ? d[k] : v[k]);
    }
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    const float r = db ? rnorm[blk] : rsqrtf(acc + eps);
    if (lane == 0) {
        if (!db) rnorm[blk] = r;
        else if (dgain) dgain[blk] = from_float<T>(acc * r);
    }
    const float sc = (g ? to_float<T>(g[blk]) : 1.f) * r, wsc = r * r * acc;
    T* ob = out + blk * bb;
#pragma unroll 4
    for (int j = lane * V; j < bb; j += 32 * V) {
        const bool vec = aligned && j + V <= bb;
        float v[V], d[V];
        load_v<T, V>(wb, j, bb, vec, v);
        if (db) load_v<T, V>(db, j, bb, vec, d);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = db ? sc * (d[k] - v[k] * wsc) : sc * v[k];
        store_v<T, V>(ob, j, bb, vec, v);
    }
}

// wn_block with the block in registers: NV = b * b / (32 V) 16-byte vectors a lane (b * b == NV * 32 * V,
// 16-byte aligned pointers; the host checks both, else wn_block). All loads of w (and dv) are issued
// before the first use and the scaling pass reads the registers, so each operand crosses DRAM once with
// no second read through L1/L2 (wn_block's second read missed L1 for float32, 4 KB blocks: 68 % of copy).
// Arguments and grid as wn_block (`b`, `aligned` unused).
template <typename T, int NV>
__global__ void wn_block_reg(T* __restrict__ out, float* __restrict__ rnorm, T* __restrict__ dgain,
                             const T* __restrict__ w, const T* __restrict__ dv, const T* __restrict__ g, i64 nnz,
                             int b, float eps, int aligned) {
    constexpr int V = Lanes<T>::V;
    const i64 blk = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nnz) return;
    const int lane = threadIdx.x & 31;
    const i64 base = blk * (NV * 32 * V) + lane * V;
    uint4 rw[NV], rd[NV];
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        rw[k] = __ldg(reinterpret_cast<const uint4*>(w + base + k * 32 * V));
        if (dv) rd[k] = __ldg(reinterpret_cast<const uint4*>(dv + base + k * 32 * V));
    }
    const float gain = g ? to_float<T>(g[blk]) : 1.f;
    const float r_in = dv ? rnorm[blk] : 0.f;
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        float v[V], d[V];
        unpack16<T, V>(rw[k], v);
        if (dv) unpack16<T, V>(rd[k], d);
#pragma unroll
        for (int q = 0; q < V; ++q) acc += v[q] * (dv ? d[q] : v[q]);
    }
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    const float r = dv ? r_in : rsqrtf(acc + eps);
    if (lane == 0) {
        if (!dv) rnorm[blk] = r;
        else if (dgain) dgain[blk] = from_float<T>(acc * r);
    }
    const float sc = gain * r, wsc = r * r * acc;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        float v[V], d[V];
        unpack16<T, V>(rw[k], v);
        if (dv) unpack16<T, V>(rd[k], d);
#pragma unroll
        for (int q = 0; q < V; ++q) v[q] = dv ? sc * (d[q] - v[q] * wsc) : sc * v[q];
        store_v<T, V>(out, base + k * 32 * V, 0, true, v);
    }
}

// Per output unit: forward (dv null): v = g[q] * rnorm[q] * w.  Backward:
// dw = g[q] * rnorm[q] * (dv - w * rnorm[q]^2 * dot[q]), dot[q] = sum dv * w over the unit, q = cols[k] * b + c.
// g null -> 1. Grid: as ew_fwd over nnz*b*b; `aligned` also promises b % V == 0, so a thread's V elements
// share a block row (one block and column lookup per vector, 32-bit when the sizes allow).
template <typename T>
__global__ void wn_apply(T* __restrict__ out, const T* __restrict__ w, const T* __restrict__ dv,
                         const T* __restrict__ g, const float* __restrict__ rnorm, const float* __restrict__ dot,
                         const int* __restrict__ cols, i64 n, int b, int aligned) {
    constexpr int V = Lanes<T>::V;
    const bool narrow = n < (1ll << 32);
    const i64 bb = (i64)b * b;
    const i64 step = (i64)gridDim.x * blockDim.x * V;
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += step) {
        const bool vec = aligned && i + V <= n;
        float v[V], d[V];
        load_v<T, V>(w, i, n, vec, v);
        if (dv) load_v<T, V>(dv, i, n, vec, d);
        const i64 q0 = vec ? (i64)cols[div_(i, bb, narrow)] * b + mod_(i, b, narrow) : 0;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 e = i + k;
            if (e >= n) break;
            const i64 q = vec ? q0 + k : (i64)cols[e / bb] * b + e % b;
            const float s = (g ? to_float<T>(g[q]) : 1.f) * rnorm[q];
            v[k] = dv ? s * (d[k] - v[k] * rnorm[q] * rnorm[q] * dot[q]) : s * v[k];
        }
        store_v<T, V>(out, i, n, vec, v);
    }
}
