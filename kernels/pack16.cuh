// 16-byte packs shared by kernels/ew.cu and kernels/ew_cols.cu: T (float, __half, __nv_bfloat16) as
// V = 16 / sizeof(T) lanes of one uint4, unpacked to and packed from float.
#pragma once
#include "common.cuh"

template <typename T> struct Lanes { static constexpr int V = 16 / sizeof(T); };

// Bits of 16-byte packs: every vector load and store goes through uint4 (a struct copy of __half or
// __nv_bfloat16 elements, whose assignment operators are user-defined, compiles to 2-byte accesses).
template <typename T> __device__ __forceinline__ float lo_half(unsigned w);
template <> __device__ __forceinline__ float lo_half<__half>(unsigned w) {
    return __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
}
template <> __device__ __forceinline__ float lo_half<__nv_bfloat16>(unsigned w) { return __uint_as_float(w << 16); }
template <typename T> __device__ __forceinline__ unsigned half_bits(float v);
template <> __device__ __forceinline__ unsigned half_bits<__half>(float v) { return __half_as_ushort(__float2half_rn(v)); }
template <> __device__ __forceinline__ unsigned half_bits<__nv_bfloat16>(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <typename T, int V>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&out)[V]) {
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = __uint_as_float(w[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            out[2 * k] = lo_half<T>(w[k]);
            out[2 * k + 1] = lo_half<T>(w[k] >> 16);
        }
    }
}

template <typename T, int V>
__device__ __forceinline__ uint4 pack16(const float (&in)[V]) {
    unsigned w[4];
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = __float_as_uint(in[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = half_bits<T>(in[2 * k]) | (half_bits<T>(in[2 * k + 1]) << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}
