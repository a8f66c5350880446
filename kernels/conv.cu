// Block-sparse convolution over channel blocks (dense spatial filters): fprop, bprop, update, edge bias.
//
// Every kernel sees 3 spatial axes (D, H, W); 1-D and 2-D convolutions pass size-1 axes. The geometry
// comes in a small int32 array `geo` (indices G_* below) so that every kernel takes the same arguments.
// Weights are packed block by block; block b holds [taps, cin_b, cout_b] (taps row-major over the
// filter). Arithmetic is in float for every storage type.
//
// Two kernel kinds:
//  * *_direct: one thread per output element (or one warp per weight element), through per-channel
//    connection lists (CSR). Any layout: non-uniform, overlapping, block size 1, NCHW or NHWC.
//  * conv_fprop_tc: implicit GEMM on tensor cores (mma.sync m16n8k16, fp32 accumulation) for
//    uniform channel blocks of B in {16, 32, 64}, NHWC, fp16/bf16. bprop with stride 1 reuses it on
//    the transposed layout with flipped, transposed weight blocks (the host prepares them).
#include "common.cuh"

enum {
  G_N, G_C, G_K, G_D, G_H, G_W, G_OD, G_OH, G_OW, G_FT, G_FR, G_FS,
  G_SD, G_SH, G_SW, G_PD, G_PH, G_PW, G_DD, G_DH, G_DW, G_CL, G_COUNT
};

// -------------------------------------------------------------------------------------------------
// direct kernels

// conv_fprop_direct: y[n, p, k] = Σ_(c, off, ts) in list(k) Σ_tap x[n, in(p, tap), c] · w[off + tap·ts]
// (+ edge_bias[emap[p], k]). One thread computes one output element; the grid is 1-D over
// N·OD·OH·OW·K elements in memory order of y (channels fastest when channels-last).
template <typename T>
__global__ void conv_fprop_direct(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                  const int* __restrict__ fw_ptr, const int* __restrict__ fw_c,
                                  const i64* __restrict__ fw_off, const int* __restrict__ fw_ts,
                                  const T* __restrict__ edge_bias, const int* __restrict__ emap,
                                  const int* __restrict__ geo) {
  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FT = geo[G_FT], FR = geo[G_FR], FS = geo[G_FS];
  const bool cl = geo[G_CL] != 0;
  const i64 IS = (i64)D * H * W, OS = (i64)OD * OH * OW;
  const i64 total = (i64)N * OS * K;
  for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
    i64 n, p;
    int k;
    if (cl) { k = (int)(idx % K); i64 r = idx / K; p = r % OS; n = r / OS; }
    else { p = idx % OS; i64 r = idx / OS; k = (int)(r % K); n = r / K; }
    const int ow = (int)(p % OW), oh = (int)((p / OW) % OH), od = (int)(p / ((i64)OW * OH));
    float acc = 0.f;
    for (int e = fw_ptr[k]; e < fw_ptr[k + 1]; ++e) {
      const int c = fw_c[e];
      const i64 off = fw_off[e];
      const int ts = fw_ts[e];
      const T* xc = cl ? x + n * IS * C + c : x + (n * C + c) * IS;
      const i64 xs = cl ? C : 1;
      int tap = 0;
      for (int t = 0; t < FT; ++t) {
        const int id = od * geo[G_SD] - geo[G_PD] + t * geo[G_DD];
        for (int r = 0; r < FR; ++r) {
          const int ih = oh * geo[G_SH] - geo[G_PH] + r * geo[G_DH];
          for (int s = 0; s < FS; ++s, ++tap) {
            const int iw = ow * geo[G_SW] - geo[G_PW] + s * geo[G_DW];
            if ((unsigned)id < (unsigned)D && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
              acc += to_float(xc[(((i64)id * H + ih) * W + iw) * xs]) * to_float(w[off + (i64)tap * ts]);
          }
        }
      }
    }
    if (emap != nullptr) {
      const int eb = emap[p];
      if (eb >= 0) acc += to_float(edge_bias[(i64)eb * K + k]);
    }
    y[idx] = from_float<T>(acc);
  }
}

// conv_bprop_direct: dx[n, q, c] = Σ_(k, off, ts) in list(c) Σ_tap dy[n, p, k] · w[off + tap·ts] over
// the output positions p whose tap lands on input position q. One thread per dx element, 1-D grid
// over N·D·H·W·C in memory order of dx.
template <typename T>
__global__ void conv_bprop_direct(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                                  const int* __restrict__ bw_ptr, const int* __restrict__ bw_k,
                                  const i64* __restrict__ bw_off, const int* __restrict__ bw_ts,
                                  const int* __restrict__ geo) {
  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FT = geo[G_FT], FR = geo[G_FR], FS = geo[G_FS];
  const int SD = geo[G_SD], SH = geo[G_SH], SW = geo[G_SW];
  const bool cl = geo[G_CL] != 0;
  const i64 IS = (i64)D * H * W, OS = (i64)OD * OH * OW;
  const i64 total = (i64)N * IS * C;
  for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
    i64 n, q;
    int c;
    if (cl) { c = (int)(idx % C); i64 r = idx / C; q = r % IS; n = r / IS; }
    else { q = idx % IS; i64 r = idx / IS; c = (int)(r % C); n = r / C; }
    const int iw = (int)(q % W), ih = (int)((q / W) % H), id = (int)(q / ((i64)W * H));
    float acc = 0.f;
    for (int e = bw_ptr[c]; e < bw_ptr[c + 1]; ++e) {
      const int k = bw_k[e];
      const i64 off = bw_off[e];
      const int ts = bw_ts[e];
      const T* dyk = cl ? dy + n * OS * K + k : dy + (n * K + k) * OS;
      const i64 ys = cl ? K : 1;
      int tap = 0;
      for (int t = 0; t < FT; ++t) {
        const int nd = id + geo[G_PD] - t * geo[G_DD];
        const int od = nd / SD;
        const bool okd = nd >= 0 && nd % SD == 0 && od < OD;
        for (int r = 0; r < FR; ++r) {
          const int nh = ih + geo[G_PH] - r * geo[G_DH];
          const int oh = nh / SH;
          const bool okh = okd && nh >= 0 && nh % SH == 0 && oh < OH;
          for (int s = 0; s < FS; ++s, ++tap) {
            const int nw = iw + geo[G_PW] - s * geo[G_DW];
            const int ow = nw / SW;
            if (okh && nw >= 0 && nw % SW == 0 && ow < OW)
              acc += to_float(dyk[(((i64)od * OH + oh) * OW + ow) * ys]) * to_float(w[off + (i64)tap * ts]);
          }
        }
      }
    }
    dx[idx] = from_float<T>(acc);
  }
}

// conv_updat_direct: dw[off + tap·ts] = Σ_n Σ_p x[n, in(p, tap), c] · dy[n, p, k] for one weight element
// (c, k, off, ts) of the list and one tap. One warp reduces one (element, tap) pair over all N·OD·OH·OW
// output positions in a fixed order (deterministic); the grid is 1-D over elements × taps / 8 warps.
template <typename T, typename OUT>
__global__ void conv_updat_direct(const T* __restrict__ x, const T* __restrict__ dy, OUT* __restrict__ dw,
                                  const int* __restrict__ ue_c, const int* __restrict__ ue_k,
                                  const i64* __restrict__ ue_off, const int* __restrict__ ue_ts, int n_elems,
                                  const int* __restrict__ geo) {
  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FT = geo[G_FT], FR = geo[G_FR], FS = geo[G_FS];
  const bool cl = geo[G_CL] != 0;
  const int taps = FT * FR * FS;
  const i64 IS = (i64)D * H * W, OS = (i64)OD * OH * OW;
  const int lane = threadIdx.x & 31;
  const i64 item = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (item >= (i64)n_elems * taps) return;
  const int e = (int)(item / taps), tap = (int)(item % taps);
  const int t = tap / (FR * FS), r = (tap / FS) % FR, s = tap % FS;
  const int c = ue_c[e], k = ue_k[e];
  float acc = 0.f;
  const i64 M = (i64)N * OS;
  for (i64 m = lane; m < M; m += 32) {
    const i64 n = m / OS, p = m % OS;
    const int ow = (int)(p % OW), oh = (int)((p / OW) % OH), od = (int)(p / ((i64)OW * OH));
    const int id = od * geo[G_SD] - geo[G_PD] + t * geo[G_DD];
    const int ih = oh * geo[G_SH] - geo[G_PH] + r * geo[G_DH];
    const int iw = ow * geo[G_SW] - geo[G_PW] + s * geo[G_DW];
    if ((unsigned)id < (unsigned)D && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
      const i64 q = ((i64)id * H + ih) * W + iw;
      const float xv = to_float(cl ? x[(n * IS + q) * C + c] : x[(n * C + c) * IS + q]);
      const float gv = to_float(cl ? dy[(n * OS + p) * K + k] : dy[(n * K + k) * OS + p]);
      acc += xv * gv;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) dw[ue_off[e] + (i64)tap * ue_ts[e]] = from_float<OUT>(acc);
}

// edge_bias_updat: d_edge_bias[e, k] = Σ_n Σ_(p in list(e)) dy[n, p, k]. One thread per (e, k); the
// grid is 1-D over E·K (k fastest), each thread summing its positions in a fixed order.
template <typename T, typename OUT>
__global__ void edge_bias_updat(const T* __restrict__ dy, OUT* __restrict__ deb, const int* __restrict__ eb_ptr,
                                const int* __restrict__ eb_pix, int E, const int* __restrict__ geo) {
  const int N = geo[G_N], K = geo[G_K];
  const bool cl = geo[G_CL] != 0;
  const i64 OS = (i64)geo[G_OD] * geo[G_OH] * geo[G_OW];
  const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (i64)E * K) return;
  const int e = (int)(idx / K), k = (int)(idx % K);
  float acc = 0.f;
  for (int n = 0; n < N; ++n)
    for (int i = eb_ptr[e]; i < eb_ptr[e + 1]; ++i) {
      const i64 p = eb_pix[i];
      acc += to_float(cl ? dy[((i64)n * OS + p) * K + k] : dy[((i64)n * K + k) * OS + p]);
    }
  deb[idx] = from_float<OUT>(acc);
}

// -------------------------------------------------------------------------------------------------
// tensor-core implicit GEMM

#ifdef CSB_HOST_EMULATION  // tests/cuda_emulation: the same helpers on the CPU
#include "conv_ptx_emulated.h"
#else
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <typename T> __device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <> __device__ __forceinline__ void mma16816<__half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

template <typename T> __device__ __forceinline__ void store2(T* p, float a, float b);
template <> __device__ __forceinline__ void store2<__half>(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
template <> __device__ __forceinline__ void store2<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// the epilogue's store of output column kv of one row: + edge bias (eb >= 0), through the output permutation
template <typename T>
__device__ __forceinline__ void store_out1(T* yrow, int kv, float v, const int* __restrict__ out_perm,
                                           const T* __restrict__ edge_bias, int eb, int K) {
  const int k = out_perm[kv];
  if (eb >= 0) v += to_float(edge_bias[(i64)eb * K + k]);
  yrow[k] = from_float<T>(v);
}

// the epilogue's store of output columns kv, kv + 1 of one row: + edge bias (eb >= 0), through the output
// permutation (a merged channel shuffle: two scattered stores) or as one 4-byte pair
template <typename T>
__device__ __forceinline__ void store_out2(T* yrow, int kv, float v0, float v1, const int* __restrict__ out_perm,
                                           const T* __restrict__ edge_bias, int eb, int K) {
  const int k0 = out_perm != nullptr ? out_perm[kv] : kv;
  const int k1 = out_perm != nullptr ? out_perm[kv + 1] : kv + 1;
  if (eb >= 0) {
    v0 += to_float(edge_bias[(i64)eb * K + k0]);
    v1 += to_float(edge_bias[(i64)eb * K + k1]);
  }
  if (out_perm == nullptr) {
    store2<T>(yrow + k0, v0, v1);
  } else {
    yrow[k0] = from_float<T>(v0);
    yrow[k1] = from_float<T>(v1);
  }
}

#define TC_BM 128
#define TC_THREADS 128
#define TC_STAGES 3

// conv_gmma.cu (sm_90a) includes this file with CONV_GMMA defined: conv_fprop_halo<..., GM = true> then
// multiplies on wgmma (the host emulation: tests/cuda_emulation/gmma_emulated.h)
#ifdef CONV_GMMA
#define CONV_HAS_GMMA 1
#ifdef CSB_HOST_EMULATION
#include "gmma_emulated.h"
#else
#include "gmma.cuh"
#include "tma.cuh"
#endif
#else
#define CONV_HAS_GMMA 0
#endif

// conv_fprop_tc: one thread block computes a tile of 128 output positions (flattened n, od, oh, ow) ×
// B output channels of virtual output block j = blockIdx.y; blockIdx.x walks the 128-position tiles.
// The reduction runs over the (input block, tap) pairs of column j (CSC lists col_ptr/col_in/col_w):
// each stage gathers the 128 × B input tile of that tap (zero-filled outside the input) and the B × B
// weight slice with cp.async into a 3-stage shared-memory ring; 4 warps each own 32 rows × B columns
// and multiply with ldmatrix + mma.sync. Epilogue: + edge bias, optional output-channel permutation
// (a merged channel shuffle), store. NHWC only; C and K multiples of B.
template <typename T, int B>
__global__ void __launch_bounds__(TC_THREADS)
conv_fprop_tc(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
              const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
              const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
              const int* __restrict__ geo) {
  constexpr int BM = TC_BM, LDA = B + 8, LDW = B + 8, VPR = B / 8;
  constexpr int ROWS_PER_PASS = TC_THREADS / VPR;
  constexpr int A_ITERS = BM / ROWS_PER_PASS;
  constexpr int W_VECS = B * VPR;
  constexpr int W_ITERS = (W_VECS + TC_THREADS - 1) / TC_THREADS;
  constexpr int NT = B / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);
  T* sW = sA + TC_STAGES * BM * LDA;

  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS];
  const int taps = geo[G_FT] * FR * FS;
  const int DD = geo[G_DD], DH = geo[G_DH], DW = geo[G_DW];
  const i64 OS = (i64)OD * OH * OW;
  const i64 M = (i64)N * OS;
  const int j = blockIdx.y;
  const i64 m0 = (i64)blockIdx.x * BM;
  const int e0 = col_ptr[j];
  const int niter = (col_ptr[j + 1] - e0) * taps;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int vec = tid % VPR;

  int s_n[A_ITERS], s_d[A_ITERS], s_h[A_ITERS], s_w[A_ITERS];
#pragma unroll
  for (int q = 0; q < A_ITERS; ++q) {
    const i64 m = m0 + tid / VPR + q * ROWS_PER_PASS;
    s_n[q] = -1; s_d[q] = 0; s_h[q] = 0; s_w[q] = 0;
    if (m < M) {
      const i64 n = m / OS, p = m - n * OS;
      const int ow = (int)(p % OW), oh = (int)((p / OW) % OH), od = (int)(p / ((i64)OW * OH));
      s_n[q] = (int)n;
      s_d[q] = od * geo[G_SD] - geo[G_PD];
      s_h[q] = oh * geo[G_SH] - geo[G_PH];
      s_w[q] = ow * geo[G_SW] - geo[G_PW];
    }
  }

  auto load_stage = [&](int it, int buf) {
    const int eo = it / taps, tap = it - eo * taps;
    const int ft = tap / (FR * FS), fr = (tap / FS) % FR, fs = tap % FS;
    const int cblk = col_in[e0 + eo];
    const i64 wblk = col_w[e0 + eo];
    T* dstA = sA + buf * BM * LDA;
#pragma unroll
    for (int q = 0; q < A_ITERS; ++q) {
      const int row = tid / VPR + q * ROWS_PER_PASS;
      const int id = s_d[q] + ft * DD, ih = s_h[q] + fr * DH, iw = s_w[q] + fs * DW;
      const bool ok = s_n[q] >= 0 && (unsigned)id < (unsigned)D && (unsigned)ih < (unsigned)H &&
                      (unsigned)iw < (unsigned)W;
      const T* src = ok ? x + ((((i64)s_n[q] * D + id) * H + ih) * W + iw) * C + cblk * B + vec * 8 : x;
      cp_async16(smem_u32(dstA + row * LDA + vec * 8), src, ok ? 16 : 0);
    }
    const T* wsrc = w + (wblk * taps + tap) * (B * B);
    T* dstW = sW + buf * B * LDW;
#pragma unroll
    for (int q = 0; q < W_ITERS; ++q) {
      const int v = tid + q * TC_THREADS;
      if (v < W_VECS) {
        const int kr = v / VPR, cv = v % VPR;
        cp_async16(smem_u32(dstW + kr * LDW + cv * 8), wsrc + kr * B + cv * 8, 16);
      }
    }
  };

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {
    if (s < niter) load_stage(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < niter; ++it) {
    cp_async_wait<TC_STAGES - 2>();
    __syncthreads();
    const int nx = it + TC_STAGES - 1;
    if (nx < niter) load_stage(nx, nx % TC_STAGES);
    cp_async_commit();
    const int buf = it % TC_STAGES;
    const T* bA = sA + buf * BM * LDA;
    const T* bW = sW + buf * B * LDW;
#pragma unroll
    for (int kk = 0; kk < B / 16; ++kk) {
      unsigned a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int row = warp * 32 + mt * 16 + (lane & 15);
        ldmatrix_x4(a[mt], smem_u32(bA + row * LDA + kk * 16 + (lane >> 4) * 8));
      }
#pragma unroll
      for (int np = 0; np < B / 16; ++np) {
        unsigned b[4];
        const int krow = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
        ldmatrix_x4_trans(b, smem_u32(bW + krow * LDW + np * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const i64 m = m0 + warp * 32 + mt * 16 + (lane >> 2) + 8 * h;
      if (m >= M) continue;
      int eb = -1;
      if (emap != nullptr) eb = emap[m % OS];
      T* yrow = y + m * K;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        store_out2<T>(yrow, j * B + nt * 8 + 2 * (lane & 3), acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1],
                      out_perm, edge_bias, eb, K);
    }
}

#define UPD_BK 128

// conv_updat_tc: partial weight gradient of one nonzero block and one tap over a range of output rows:
// ws[split, blk, tap, c, k] = Σ_m x[in(m, tap), rows(blk)·B + c] · dy[m, cols(blk)·B + k], over the
// 128-row tiles tile0 .. tile0 + tiles_per_split of the N·OD·OH·OW output positions. Grid (splits, taps,
// nnz); 4 warps each reduce their 32 rows of every tile into a full B × B tile on tensor cores (A = the
// gathered input tile read transposed with ldmatrix.trans, B = the dy tile), then the 4 partials are
// summed in a fixed order through shared memory. 3-stage cp.async ring as conv_fprop_tc. NHWC only.
template <typename T, int B>
__global__ void __launch_bounds__(TC_THREADS)
conv_updat_tc(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ ws,
              const int* __restrict__ blk_row, const int* __restrict__ blk_col, int nnz, int tiles_per_split,
              const int* __restrict__ geo) {
  constexpr int BK = UPD_BK, LD = B + 8, VPR = B / 8;
  constexpr int ROWS_PER_PASS = TC_THREADS / VPR;
  constexpr int L_ITERS = BK / ROWS_PER_PASS;
  constexpr int MT = B / 16, NT = B / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sX = reinterpret_cast<T*>(smem_raw);
  T* sY = sX + TC_STAGES * BK * LD;

  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS];
  const int taps = geo[G_FT] * FR * FS;
  const i64 OS = (i64)OD * OH * OW;
  const i64 M = (i64)N * OS;
  const int split = blockIdx.x, tap = blockIdx.y, blk = blockIdx.z;
  const int cblk = blk_row[blk], kblk = blk_col[blk];
  const int ft = tap / (FR * FS), fr = (tap / FS) % FR, fs = tap % FS;
  const int dd = ft * geo[G_DD] - geo[G_PD], dh = fr * geo[G_DH] - geo[G_PH], dw = fs * geo[G_DW] - geo[G_PW];
  const i64 tiles = (M + BK - 1) / BK;
  const i64 tile0 = (i64)split * tiles_per_split;
  const i64 left = tiles - tile0;
  const int niter = left <= 0 ? 0 : (left < tiles_per_split ? (int)left : tiles_per_split);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int vec = tid % VPR;

  auto load_stage = [&](int it, int buf) {
    const i64 mbase = (tile0 + it) * BK;
    T* dX = sX + buf * BK * LD;
    T* dY = sY + buf * BK * LD;
#pragma unroll 2  // full unrolling spills 12 bytes on sm_90 (B=32)
    for (int q = 0; q < L_ITERS; ++q) {
      const int row = tid / VPR + q * ROWS_PER_PASS;
      const i64 m = mbase + row;
      const bool in = m < M;
      const i64 mm = in ? m : 0;  // branch-free: the branchy form spills on sm_80
      const i64 n = mm / OS, p = mm - n * OS;
      const int ow = (int)(p % OW), oh = (int)((p / OW) % OH), od = (int)(p / ((i64)OW * OH));
      const int id = od * geo[G_SD] + dd, ih = oh * geo[G_SH] + dh, iw = ow * geo[G_SW] + dw;
      const bool ok = in && (unsigned)id < (unsigned)D && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
      const i64 xoff = (((n * D + id) * H + ih) * W + iw) * C + cblk * B + vec * 8;
      cp_async16(smem_u32(dX + row * LD + vec * 8), ok ? x + xoff : x, ok ? 16 : 0);
      cp_async16(smem_u32(dY + row * LD + vec * 8), in ? dy + m * K + kblk * B + vec * 8 : dy, in ? 16 : 0);
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {
    if (s < niter) load_stage(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < niter; ++it) {
    cp_async_wait<TC_STAGES - 2>();
    __syncthreads();
    const int nx = it + TC_STAGES - 1;
    if (nx < niter) load_stage(nx, nx % TC_STAGES);
    cp_async_commit();
    const int buf = it % TC_STAGES;
    const T* bX = sX + buf * BK * LD;
    const T* bY = sY + buf * BK * LD;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      const int m0 = warp * 32 + ks * 16;
      unsigned a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4_trans(a[mt], smem_u32(bX + (m0 + (lane >> 4) * 8 + (lane & 7)) * LD + mt * 16 +
                                          ((lane >> 3) & 1) * 8));
#pragma unroll
      for (int np = 0; np < B / 16; ++np) {
        unsigned b[4];
        ldmatrix_x4_trans(b, smem_u32(bY + (m0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + np * 16 +
                                      (lane >> 4) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  float* red = reinterpret_cast<float*>(smem_raw);  // [4 warps][B][B], over the drained ring
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int c = mt * 16 + (lane >> 2) + 8 * (i >> 1), k = nt * 8 + 2 * (lane & 3) + (i & 1);
        red[(warp * B + c) * B + k] = acc[mt][nt][i];
      }
  __syncthreads();
  float* out = ws + (((i64)split * nnz + blk) * taps + tap) * (B * B);
  for (int idx = tid; idx < B * B; idx += TC_THREADS)
    out[idx] = ((red[idx] + red[B * B + idx]) + red[2 * B * B + idx]) + red[3 * B * B + idx];
}

// conv_updat_reduce: dw[i] = Σ_s ws[s, i] in split order (deterministic), cast to OUT. 1-D grid-stride.
template <typename OUT>
__global__ void conv_updat_reduce(const float* __restrict__ ws, OUT* __restrict__ dw, int splits, i64 count) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int sp = 0; sp < splits; ++sp) s += ws[sp * count + i];
    dw[i] = from_float<OUT>(s);
  }
}

#define HALO_STAGES 2
#define HALO_WCACHE (1 << 16)
#define HALO_DEFER (1 << 17)
#define HALO_PAIR (1 << 18)
#define HALO_STEP (1 << 19)
#define HALO_UNROLL (1 << 20)
#define HALO_PLAIN (1 << 21)

#if CONV_HAS_GMMA
// One stage's wgmma steps (conv_fprop_halo GM and conv_fprop_ws): step u = (tap t = u / KS, 16 of k kk) loads the
// A fragments of the MT m64 groups (lane rows abase[mt], the tap's window rows·rowb + columns·colb further, kk·32
// bytes in) by ldmatrix and issues one wgmma group, m64nBk16 per group with B the tap's weight slice in the slot
// at wslot (N-major for fprop, K-major for FLIP). The next step's fragments are loaded while the current group
// runs: 3 × 3 filters unrolled, two steps ahead in four register buffers (wait_group 2); any other filter one
// step ahead in three (wait_group 1). The first wgmma of an item (keep_first 0) ignores the accumulators.
// Returns with every group complete (wait_group 0 here, not in the caller: the A registers live in this scope,
// and a group still reading them after it ends could see them reused).
template <typename T, int B, int MT, bool FLIP>
__device__ __forceinline__ void conv_gmma_stage(float (&acc)[MT][B / 8][4], const unsigned (&abase)[MT], unsigned rowb,
                                                unsigned colb, int FR, int FS, unsigned wslot, int keep_first) {
  constexpr int KS = B / 16, ROW = B * 2;
  const unsigned long long dslot = gmma::desc<ROW>(wslot);
  const unsigned dlo = (unsigned)dslot, dhi = (unsigned)(dslot >> 32);
  auto ld = [&](int u, int fr, int fs, unsigned (&a)[MT][4]) {
    const unsigned off = fr * rowb + fs * colb + (u % KS) * 32u;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], abase[mt] + off);
  };
  auto mma = [&](int u, const unsigned (&a)[MT][4]) {
    const int t = u / KS, kk = u % KS;
    gmma::wgmma_fence();
    // fprop: B rows are k (N-major), 16 rows a step; FLIP: rows are n (K-major), 32 bytes a step (the address
    // field is the descriptor's low bits, in 16 bytes: adding never carries out of it below 256 KiB)
    const unsigned long long db =
        (unsigned long long)dhi << 32 | (dlo + ((t * (B * ROW) + (FLIP ? kk * 32 : kk * 16 * ROW)) >> 4));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      gmma::GmmaRSz<T, B, FLIP ? 0 : 1>::run(reinterpret_cast<float(&)[B / 2]>(acc[mt]), a[mt], db,
                                              u ? 1 : keep_first);
    gmma::wgmma_commit();
  };
  unsigned a[4][MT][4];  // (the other filters use three of them)
  if (FR == 3 && FS == 3) {
    constexpr int NS = 9 * KS;
    ld(0, 0, 0, a[0]);
    ld(1, (1 / KS) / 3, (1 / KS) % 3, a[1]);
#pragma unroll
    for (int u = 0; u < NS; ++u) {
      mma(u, a[u % 4]);
      gmma::wgmma_wait<2>();
      if (u + 2 < NS) ld(u + 2, ((u + 2) / KS) / 3, ((u + 2) / KS) % 3, a[(u + 2) % 4]);
    }
    gmma::wgmma_wait<0>();
    return;
  }
  const int steps = FR * FS * KS;
  auto ldg = [&](int u, unsigned (&a)[MT][4]) {
    const int t = u / KS, fr = t / FS;
    ld(u, fr, t - fr * FS, a);
  };
  // step u: its group, then step u + 1's fragments (into the buffer of step u - 2, waited for in step u - 1)
  auto stp = [&](int u, const unsigned (&cur)[MT][4], unsigned (&nxt)[MT][4]) {
    mma(u, cur);
    if (u + 1 < steps) ldg(u + 1, nxt);
    gmma::wgmma_wait<1>();
  };
  ldg(0, a[0]);
  for (int u = 0; u < steps; u += 3) {
    stp(u, a[0], a[1]);
    if (u + 1 < steps) stp(u + 1, a[1], a[2]);
    if (u + 2 < steps) stp(u + 2, a[2], a[0]);
  }
  gmma::wgmma_wait<0>();
}

// One stage's wgmma steps with A from shared memory too (conv_fprop_wss): the halo is stored channel-chunk
// major ([B / 8][halo rows · HC][8]: 16 bytes of 8 channels a position), so a tap's window of the consumer
// warpgroup's 8 output rows × 8 columns is a canonical K-major operand without swizzle: core matrices of 8
// consecutive positions × 16 bytes, the next 8 channels LBO = halo · 16 bytes further, the next output row
// SBO = SH · HC · 16 bytes further (both in adesc_hi). Every step is one m64nBk16 wgmma reading A and B
// through descriptors; a stage is one group (no ldmatrix, no register operand but the accumulators). abase:
// the warpgroup's window at tap (0, 0); rowb / colb: a filter row / column further; kstep: 16 of k further.
template <typename T, int B, bool FLIP>
__device__ __forceinline__ void conv_ss_stage(float (&acc)[1][B / 8][4], unsigned abase, unsigned long long adesc_hi,
                                              unsigned rowb, unsigned colb, unsigned kstep, int FR, int FS,
                                              unsigned wslot, int keep_first) {
  constexpr int KS = B / 16, ROW = B * 2;
  const unsigned long long dslot = gmma::desc<ROW>(wslot);
  const unsigned dlo = (unsigned)dslot, dhi = (unsigned)(dslot >> 32);
  auto mma = [&](int t, int fr, int fs, int kk, int keep) {
    const unsigned long long da = adesc_hi | (((abase + fr * rowb + fs * colb + kk * kstep) >> 4) & 0x3FFF);
    const unsigned long long db =
        (unsigned long long)dhi << 32 | (dlo + ((t * (B * ROW) + (FLIP ? kk * 32 : kk * 16 * ROW)) >> 4));
    gmma::GmmaSSz<T, B, 0, FLIP ? 0 : 1>::run(reinterpret_cast<float(&)[B / 2]>(acc[0]), da, db, keep);
  };
  gmma::wgmma_fence();
  if (FR == 3 && FS == 3) {
#pragma unroll
    for (int t = 0; t < 9; ++t)
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) mma(t, t / 3, t % 3, kk, t + kk ? 1 : keep_first);
  } else {
    for (int fr = 0; fr < FR; ++fr)
      for (int fs = 0; fs < FS; ++fs)
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) mma(fr * FS + fs, fr, fs, kk, fr + fs + kk ? 1 : keep_first);
  }
  gmma::wgmma_commit();
  gmma::wgmma_wait<0>();
}
#endif

// conv_fprop_halo: the output tile is a TH × TW rectangle of one image n and one output depth od;
// the CTAs claim runs of items (R consecutive tiles (n, od, tile row, tile column) of one virtual output
// block j; runs j fastest) from a counter (persistent when the grid is smaller than the runs). Each stage is
// one (input block of column j, filter depth ft) pair: it loads the input halo that the rectangle's
// FR × FS taps read (zero-filled outside the input) once, plus the FR·FS weight slices, then runs all
// taps from shared memory (ldmatrix takes per-lane row addresses, so a tap is a shifted window of the
// halo). 2-stage cp.async ring. WARPS warps each own TH·TW/WARPS consecutive rows (tile row-major) × B
// columns: a taller tile reads each weight slice from L2 for more output positions, and more rows per
// warp read each B fragment from shared memory for more mma. Epilogue: + edge bias, optional
// output-channel permutation (a merged channel shuffle), store. Shared memory:
// 2 · (HR·HC·(B+8) + FR·FS·B·(B+8)) elements + 16 bytes (the claimed item), from the host.
// opts (the host's schedule; the previous kernel's behaviour is opts = 1): bits 0-15 the run length R,
// HALO_WCACHE the weight-slice cache (a stage whose weights are already in a slot reads them there),
// HALO_DEFER the deferred claim (thread 0 fetches the next run's claim when the current run's last item
// starts), HALO_PAIR the paired store of a permuted output (lane pairs swap a value so a store writes
// channels kv, kv + 1 of one pair together),
// HALO_STEP the halo load with stepped indices (no division or 64-bit product chain per vector),
// HALO_UNROLL the 3 × 3 taps unrolled (the next tap's ldmatrix can overlap this tap's mma), HALO_PLAIN the
// short epilogue of an output without permutation or edge bias.
// FLIP (stride-1 bprop without a transposed copy of w): the column tables are the layout's row tables,
// the weight slice of depth FT-1-ft is stored with its taps reversed and untransposed ([c][k]), and
// the B fragments come from ldmatrix without .trans; the math is dx = conv(dy, flip(w)ᵀ).
// GM (sm_90a, conv_gmma.cu): the same items, stages, halo and epilogue, multiplied on wgmma. The WARPS / 4
// warpgroups each own TH·TW / (WARPS / 4) consecutive rows, MT m64 groups of them; warp v of a warpgroup
// holds rows 16v .. 16v + 15 of each group. A tap's A fragments come from the halo by ldmatrix exactly as
// mma.sync's (a warp's m16 × k16 is its part of the register-A wgmma m64 × k16); B is the tap's weight slice
// read by wgmma through a matrix descriptor, so the weight slots hold each slice [B][B] row by row in the
// swizzled layout of B·2-byte rows (gmma::swizzle; N-major B for fprop, K-major for FLIP: one image, the
// transpose bit decides), 1024-byte aligned at the start of shared memory. Per step (tap, 16 of k) one
// wgmma group (m64nBk16 per m64 group); with HALO_UNROLL the next step's A fragments are loaded (from a
// table of tap offsets) while the current group runs, in three register buffers; without it each step loads
// its own, in two. A stage's groups are all waited for before the next stage's barrier (its weight slot may
// be refilled after it). The first wgmma of an item ignores the accumulators (scale-d 0): no other
// instruction writes them inside the loop (ptxas would serialize every wgmma).
template <typename T, int B, int TW, int TH = TC_BM / TW, int WARPS = 4, bool FLIP = false, bool GM = false>
// 2 CTAs/SM up to 64 accumulators and 256 positions (a 512-position tile's ring takes ~144 KB: one CTA)
// (GM: 2 CTAs of one warpgroup up to 256 positions; two warpgroups need more than 128 registers: one CTA)
__global__ void __launch_bounds__(WARPS * 32, (GM ? WARPS == 4 && TH * TW <= 256
                                                  : TH * TW <= 256 && (TH * TW / WARPS) * B / 32 <= 64) ? 2 : 1)
conv_fprop_halo(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
                const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
                const int* __restrict__ geo, unsigned* __restrict__ sched, int opts) {
  constexpr int THREADS = WARPS * 32, RPW = TH * TW / WARPS, MT = RPW / 16;
  constexpr int LDA = B + 8, VPR = B / 8, NT = B / 8;
  // the unrolled taps and the short epilogue need registers: not with 8 warps × 2 CTAs (128 a thread)
  constexpr bool ROOMY = WARPS == 4 || TH * TW > 256, UNROLL_OK = MT <= 4 && ROOMY;
  static_assert(RPW % 16 == 0 && TW % 8 == 0, "16-row mma tiles; 8 lanes of an ldmatrix in one tile row");
  static_assert(!GM || (CONV_HAS_GMMA && WARPS % 4 == 0 && (TH * TW) % (WARPS * 16) == 0 && B >= 16),
                "wgmma: conv_gmma.cu, whole warpgroups, m64 groups of rows");
  constexpr int ROW = B * 2;  // GM: bytes of a weight-slice row
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS], FT = geo[G_FT];
  const int SH = geo[G_SH], SW = geo[G_SW], DH = geo[G_DH], DW = geo[G_DW];
  const int taps = FT * FR * FS;
  const int HR = (TH - 1) * SH + (FR - 1) * DH + 1, HC = (TW - 1) * SW + (FS - 1) * DW + 1;
  const int halo = HR * HC, wtaps = FR * FS;
  // GM: the weight slots first, 1024-byte aligned (the host adds 1024 bytes), [stages][FR·FS][B][B] swizzled
  T* sA;
  T* sW;
  if (GM) {
    unsigned char* wb = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    sW = reinterpret_cast<T*>(wb);
    sA = sW + HALO_STAGES * wtaps * B * B;
  } else {
    sA = reinterpret_cast<T*>(smem_raw);              // [stages][halo][LDA]
    sW = sA + HALO_STAGES * halo * LDA;               // [stages][FR·FS][B][LDA]
  }

  // Work items (tile, virtual output block j): a claim from the counter sched[0] is a run of R consecutive
  // tiles (n, od, tile row, tile column; the last run of a column may be shorter) of one j, runs j
  // fastest. So the runs in progress at any time are neighbours: the K/B runs of the same tiles start
  // together, an input halo is read from DRAM once and later columns find it in L2, and a permuted
  // (shuffled) output's scattered stores to the same rows merge in L2; and a CTA's consecutive items share
  // j (its weight slices stay in shared memory: the cache below). The grid may be smaller than the runs
  // (persistent: about the co-resident CTAs): a CTA's stages form one stream over all its items, so the
  // next item's first stage is in flight while the current item's last stage multiplies and its epilogue
  // stores. Claiming (not a fixed stride) balances columns of different lengths. The last CTA to finish
  // resets sched[0..1] for the next launch on the stream. The host guarantees fewer than 2^31 runs.
  const int tiles_w = (OW + TW - 1) / TW, tiles_h = (OH + TH - 1) / TH;
  const int ncol = K / B;
  const int run = opts & 0xffff;
  const bool wcache = (opts & HALO_WCACHE) != 0, defer = (opts & HALO_DEFER) != 0;
  const int ntiles = geo[G_N] * OD * tiles_h * tiles_w;
  const int total = (ntiles + run - 1) / run * ncol;  // runs
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  int* s_claim = reinterpret_cast<int*>(GM ? sA + HALO_STAGES * halo * LDA
                                           : sW + HALO_STAGES * wtaps * B * LDA);  // after the rings (+ 16 B)

  struct Item {  // an item of a claimed run; unit == total: none left
    int unit, j, tile, tend, e0, niter;
  };
  struct Tile {  // a tile's origin, decoded where needed (not held in registers across the mma loop)
    int tw0, th0, od, n;
  };
  auto tile_of = [&](int t) {
    Tile g;
    g.tw0 = (t % tiles_w) * TW; t /= tiles_w;
    g.th0 = (t % tiles_h) * TH; t /= tiles_h;
    g.od = t % OD;
    g.n = t / OD;
    return g;
  };
  // HALO_DEFER: thread 0 fetches the next claim when the run's last item starts (prefetch) and the
  // claim publishes it: nobody waits for the atomic's round trip, and a CTA holds at most one claimed
  // run it has not started (fetching at the claim itself would reserve two runs a CTA at the start)
  unsigned pend = 0;
  bool have_pend = false;
  auto prefetch = [&]() {
    if (defer && tid == 0) {
      pend = atomicAdd(sched, 1u);
      have_pend = true;
    }
  };
  auto claim = [&]() {  // all threads; one atomic by thread 0, broadcast through shared memory
    if (tid == 0) {
      const unsigned c = have_pend ? pend : atomicAdd(sched, 1u);
      have_pend = false;
      *s_claim = c < (unsigned)total ? (int)c : total;
    }
    __syncthreads();
    Item r;
    r.unit = *s_claim;
    const int u = r.unit < total ? r.unit : 0;
    r.j = u % ncol;
    const int t0 = u / ncol * run;
    r.tend = t0 + run < ntiles ? t0 + run : ntiles;
    r.tile = t0;
    r.e0 = col_ptr[r.j];
    r.niter = (col_ptr[r.j + 1] - r.e0) * FT;
    if (r.unit < total && r.tend - t0 == 1) prefetch();  // a one-tile run: its first item is its last
    return r;
  };

  // the weight-slice cache: the tag (block · FT + depth) each weight slot holds (-1: none); ws_cur is the
  // slot the stage being multiplied reads. Without HALO_WCACHE a stage loads its weights into the slot the
  // current stage does not use (the ring's slot, as the previous kernel).
  int wtag0 = -1, wtag1 = -1, ws_cur = 1;

  // HALO_STEP: this thread loads 16-byte vector hvec of halo rows hrow0, hrow0 + RPP, ... (the halo's
  // row-major (hr, hc) stepped by (dR, dC) instead of a division by HC per vector; the steps are
  // recomputed each stage rather than held in registers across the mma loop)
  constexpr int RPP = THREADS / VPR;

  auto load_stage = [&](const Item& q, int it, int buf) {  // returns the weight slot of the stage
    const int eo = it / FT, ft = it - eo * FT;
    const int cblk = col_in[q.e0 + eo];
    const i64 wblk = col_w[q.e0 + eo];
    const Tile g = tile_of(q.tile);
    const int id = g.od * geo[G_SD] - geo[G_PD] + ft * geo[G_DD];
    const int ih0 = g.th0 * SH - geo[G_PH], iw0 = g.tw0 * SW - geo[G_PW];
    const bool dok = (unsigned)id < (unsigned)D;
    T* dstA = sA + buf * halo * LDA;
    if (opts & HALO_STEP) {  // the thread's halo rows hrow0, + RPP, ...: (hr, hc) and addresses stepped
      const int hvec = tid % VPR, hrow0 = tid / VPR;
      const int hr0 = hrow0 / HC, hc0 = hrow0 - hr0 * HC, dR = RPP / HC, dC = RPP - dR * HC;
      const i64 off0 = (i64)(hr0 * W + hc0) * C, step_in = (i64)(dR * W + dC) * C;
      const i64 wrap_in = (i64)(W - HC) * C;
      const T* src = x + (((((i64)g.n * D + id) * H + ih0) * (i64)W + iw0) * C + cblk * B + hvec * 8 + off0);
      int hr = hr0, hc = hc0;
      unsigned dst = smem_u32(dstA + hrow0 * LDA + hvec * 8);
      for (int row = hrow0; row < halo; row += RPP) {
        const bool ok = dok && (unsigned)(ih0 + hr) < (unsigned)H && (unsigned)(iw0 + hc) < (unsigned)W;
        cp_async16(dst, ok ? src : x, ok ? 16 : 0);  // src is formed outside x only where ok is false
        dst += RPP * LDA * (int)sizeof(T);
        hc += dC;
        hr += dR;
        src += step_in;
        if (hc >= HC) {
          hc -= HC;
          ++hr;
          src += wrap_in;
        }
      }
    } else {
      for (int v = tid; v < halo * VPR; v += THREADS) {
        const int row = v / VPR, vec = v - row * VPR;
        const int hr = row / HC, hc = row - hr * HC;
        const int ih = ih0 + hr, iw = iw0 + hc;
        const bool ok = dok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
        const T* src = ok ? x + ((((i64)g.n * D + id) * H + ih) * (i64)W + iw) * C + cblk * B + vec * 8 : x;
        cp_async16(smem_u32(dstA + row * LDA + vec * 8), src, ok ? 16 : 0);
      }
    }
    const int wdepth = FLIP ? FT - 1 - ft : ft;
    const int wkey = (int)wblk * FT + wdepth;
    if (wcache && (ws_cur == 0 ? wtag0 : wtag1) == wkey) return ws_cur;  // the current stage's slot: read only
    const int ws = ws_cur ^ 1;
    if (wcache && (ws == 0 ? wtag0 : wtag1) == wkey) return ws;
    if (ws == 0) wtag0 = wkey; else wtag1 = wkey;
    const T* wsrc = w + (wblk * taps + (i64)wdepth * wtaps) * (B * B);
    if (GM) {  // slice `tap` at tap·B·ROW bytes of the slot, rows swizzled
      const unsigned dstW = smem_u32(sW + ws * wtaps * B * B);
      for (int v = tid; v < wtaps * B * VPR; v += THREADS) {
        const int kr = v / VPR, cv = v - kr * VPR;
        const int tap = kr / B, wr = kr - tap * B;
        const int stap = FLIP ? wtaps - 1 - tap : tap;
#if CONV_HAS_GMMA
        cp_async16(dstW + tap * (B * ROW) + gmma::swizzle<ROW>(wr, cv), wsrc + ((i64)stap * B + wr) * B + cv * 8, 16);
#endif
      }
      return ws;
    }
    T* dstW = sW + ws * wtaps * B * LDA;
    for (int v = tid; v < wtaps * B * VPR; v += THREADS) {
      const int kr = v / VPR, cv = v - kr * VPR;  // kr = tap·B + weight row (input channel of w)
      const int tap = kr / B, wr = kr - tap * B;
      const int stap = FLIP ? wtaps - 1 - tap : tap;
      cp_async16(smem_u32(dstW + kr * LDA + cv * 8), wsrc + ((i64)stap * B + wr) * B + cv * 8, 16);
    }
    return ws;
  };

  // this lane's A row in each m16 tile: output (th, tw) → halo position before the tap offset
  // the first row of this warp's m16 tile mt (GM: warpgroup warp / 4, its m64 group mt, rows 16·(warp % 4)..)
  auto rbase = [&](int mt) { return GM ? (warp >> 2) * RPW * 4 + mt * 64 + (warp & 3) * 16 : warp * RPW + mt * 16; };
  int hbase[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int r = rbase(mt) + (lane & 15);
    hbase[mt] = (r / TW) * SH * HC + (r % TW) * SW;
  }

  // the stage stream: (cur, it) is the stage multiplied in this iteration, from ring slot stage % 2;
  // the stage after it (the same item's next stage, or the first of a newly claimed item) is loaded
  // meanwhile. An item without stages (an empty column) takes one empty step: its epilogue writes
  // zeros (+ edge bias).
  Item cur = claim();
  int it = 0;
  if (cur.unit < total && cur.niter > 0) ws_cur = load_stage(cur, 0, 0);
  cp_async_commit();

  const i64 OS = (i64)OD * OH * OW;
  float acc[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

  for (int stage = 0; cur.unit < total; ++stage) {
    cp_async_wait<0>();
#if CONV_HAS_GMMA
    if (GM) gmma::fence_proxy_async();  // the copies (generic proxy) before wgmma reads them (async proxy)
#endif
    __syncthreads();
    const bool last = it + 1 >= cur.niter;  // the item's last (or only, empty) step
    Item nxt = cur;
    int nit = it + 1;
    if (last) {
      if (cur.tile + 1 < cur.tend) {  // the run's next tile
        nxt.tile = cur.tile + 1;
        if (nxt.tile + 1 == nxt.tend) prefetch();
      } else {
        nxt = claim();
      }
      nit = 0;
    }
    const int ws_this = ws_cur;  // the weight slot this stage multiplies from
    if (nxt.unit < total && nit < nxt.niter) ws_cur = load_stage(nxt, nit, (stage + 1) % HALO_STAGES);
    cp_async_commit();
    if (it < cur.niter) {
      const int buf = stage % HALO_STAGES;
      const T* bA = sA + buf * halo * LDA;
      const T* bWs = sW + ws_this * wtaps * B * (GM ? B : LDA);
      auto tap = [&](int fr, int fs) {
        const int toff = fr * DH * HC + fs * DW;
        const T* bW = bWs + (fr * FS + fs) * B * LDA;
#pragma unroll
        for (int kk = 0; kk < B / 16; ++kk) {
          unsigned b[B / 16][4];
#pragma unroll
          for (int np = 0; np < B / 16; ++np) {
            if (FLIP) {  // smem [n = c][k]: B fragments without transposition
              const int nrow = np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
              ldmatrix_x4(b[np], smem_u32(bW + nrow * LDA + kk * 16 + ((lane >> 3) & 1) * 8));
            } else {     // smem [k = c][n = k]
              const int krow = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
              ldmatrix_x4_trans(b[np], smem_u32(bW + krow * LDA + np * 16 + (lane >> 4) * 8));
            }
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            unsigned a[4];
            ldmatrix_x4(a, smem_u32(bA + (hbase[mt] + toff) * LDA + kk * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int np = 0; np < B / 16; ++np) {
              mma16816<T>(acc[mt][2 * np], a, b[np][0], b[np][1]);
              mma16816<T>(acc[mt][2 * np + 1], a, b[np][2], b[np][3]);
            }
          }
        }
      };
#if CONV_HAS_GMMA
      if constexpr (GM) {
        const unsigned wslot = smem_u32(bWs);
        // the item's first wgmma of each m64 group ignores the accumulators (no zeroing between items)
        const int keep_first = it > 0;
        constexpr int KS = B / 16;
        const int steps = wtaps * KS;
        if (MT <= 2 && (opts & HALO_UNROLL)) {
          // the steps with their fragments loaded ahead (conv_gmma_stage); MT = 4: three or four buffers do not
          // fit the registers beside this kernel's state, it runs the first version
          unsigned ab[MT];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
            ab[mt] = smem_u32(bA) + (unsigned)((hbase[mt] * LDA + (lane >> 4) * 8) * (int)sizeof(T));
          conv_gmma_stage<T, B, MT, FLIP>(acc, ab, DH * HC * LDA * (unsigned)sizeof(T), DW * LDA * (unsigned)sizeof(T),
                                          FR, FS, wslot, keep_first);
        } else {  // the first version (":roll", MT = 4): each step loads its fragments, waits for the one before
          auto gstep = [&](int u, unsigned (&a)[MT][4]) {
            const int t = u / KS, kk = u - t * KS;
            const int fr = t / FS, fs = t - fr * FS, toff = fr * DH * HC + fs * DW;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
              ldmatrix_x4(a[mt], smem_u32(bA + (hbase[mt] + toff) * LDA + kk * 16 + (lane >> 4) * 8));
            gmma::wgmma_fence();
            const unsigned long long db =
                gmma::desc<ROW>(wslot + t * (B * ROW)) + ((FLIP ? kk * 32 : kk * 16 * ROW) >> 4);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
              gmma::GmmaRSz<T, B, FLIP ? 0 : 1>::run(reinterpret_cast<float(&)[B / 2]>(acc[mt]), a[mt], db,
                                                      u ? 1 : keep_first);
            gmma::wgmma_commit();
            gmma::wgmma_wait<1>();
          };
          unsigned a0[MT][4], a1[MT][4];
          int u = 0;
          for (; u + 1 < steps; u += 2) {
            gstep(u, a0);
            gstep(u + 1, a1);
          }
          if (u < steps) gstep(u, a0);
          gmma::wgmma_wait<0>();  // (inside the scope of a0, a1: the groups read them)
        }
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) gmma::fence_operand(acc[a][b][c]);
      } else
#endif
      // HALO_UNROLL, 3 × 3 filters: the taps unrolled, so ptxas can issue the next tap's ldmatrix during
      // this tap's mma (a tap at a time leaves the ldmatrix latency exposed); only where the registers
      // allow it (up to 4 m16 tiles a warp, and not 8 warps × 2 CTAs: 128 registers, it spills)
      if (UNROLL_OK && (opts & HALO_UNROLL) && FR == 3 && FS == 3) {
#pragma unroll
        for (int t = 0; t < 9; ++t) tap(t / 3, t % 3);
      } else {
        for (int fr = 0; fr < FR; ++fr)
          for (int fs = 0; fs < FS; ++fs) tap(fr, fs);
      }
    }
    if (last) {  // epilogue from registers (the next item's first stage is in flight meanwhile)
      // HALO_PAIR with a permuted output: lanes 2q, 2q + 1 hold columns c, c + 1 and c + 2, c + 3; one
      // shfl gives the even lane c, c + 2 and the odd lane c + 1, c + 3, so one store writes c, c + 1 (and
      // the next c + 2, c + 3): a shuffle maps such a pair into one 32-byte sector, half the sectors a store
      const bool pair = out_perm != nullptr && (opts & HALO_PAIR) != 0;
      // an item without stages writes zeros (GM: its accumulators still hold the previous item's sums)
      const bool empty = GM && cur.niter == 0;
      auto av = [&](int mt, int nt, int c) { return empty ? 0.f : acc[mt][nt][c]; };
      const Tile g = tile_of(cur.tile);
      if (ROOMY && (opts & HALO_PLAIN) && out_perm == nullptr && emap == nullptr) {
        // HALO_PLAIN, no permutation or edge bias: the tile's origin once, a row's offset from two
        // shifts and a multiply (the general path below spends ~50 instructions a row)
        T* ybase = y + (((((i64)g.n * OD + g.od) * OH + g.th0) * OW + g.tw0) * K + cur.j * B +
                        2 * (lane & 3));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = rbase(mt) + (lane >> 2) + 8 * h, rq = r / TW, rr = r % TW;
            if (g.th0 + rq < OH && g.tw0 + rr < OW) {
              T* yrow = ybase + (i64)(rq * OW + rr) * K;
#pragma unroll
              for (int nt = 0; nt < NT; ++nt) store2<T>(yrow + nt * 8, av(mt, nt, 2 * h), av(mt, nt, 2 * h + 1));
            }
          }
      } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = rbase(mt) + (lane >> 2) + 8 * h;
          const int oh = g.th0 + r / TW, ow = g.tw0 + r % TW;
          const bool inside = oh < OH && ow < OW;
          const i64 p = ((i64)g.od * OH + oh) * OW + ow;
          const i64 m = g.n * OS + p;
          const int eb = emap != nullptr && inside ? emap[p] : -1;
          T* yrow = y + m * K;
          if (pair) {  // every lane takes part in the shfl; lanes 2q, 2q + 1 share a row (inside or not)
            const int odd = lane & 1;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const float v0 = av(mt, nt, 2 * h), v1 = av(mt, nt, 2 * h + 1);
              const float got = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 1);
              const int kv = cur.j * B + nt * 8 + 2 * (lane & 3);
              if (inside) {
                store_out1<T>(yrow, kv - odd, odd ? got : v0, out_perm, edge_bias, eb, K);
                store_out1<T>(yrow, kv + 2 - odd, odd ? v1 : got, out_perm, edge_bias, eb, K);
              }
            }
          } else if (inside) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
              store_out2<T>(yrow, cur.j * B + nt * 8 + 2 * (lane & 3), av(mt, nt, 2 * h),
                            av(mt, nt, 2 * h + 1), out_perm, edge_bias, eb, K);
          }
        }
      }
      if (!GM) {  // (GM: the next item's first wgmma ignores them)
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;
      }
    }
    cur = nxt;
    it = nit;
  }
  cp_async_wait<0>();
  // every claim of this CTA is done: the last CTA out resets the counters for the next launch
  if (tid == 0) {
    __threadfence();
    if (atomicAdd(sched + 1, 1u) == gridDim.x - 1) {
      sched[0] = 0;
      sched[1] = 0;
      __threadfence();
    }
  }
}

#if CONV_HAS_GMMA
#ifndef CSB_HOST_EMULATION
// named barriers with a thread count: the warp-specialized kernel's slot hand-offs
__device__ __forceinline__ void nbar_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void nbar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
#define EMU_GMMA_PARTICIPANTS(n)
#endif

#define WS_STAGES 4
// conv_fprop_ws (sm_90a): conv_fprop_halo's items, stages and wgmma steps (GM) with the warps specialized.
// Warps 8-11 produce: they claim the runs, decode the items and copy each stage's input halo and weight slices
// (cp.async) into one of WS_STAGES slots, then publish it (its item in s_info) on the slot's FULL named barrier;
// they refill a slot after the consumers' arrival on its EMPTY barrier. Warps 0-7 consume: two warpgroups,
// each TH·TW / 2 rows (MT m64 groups), run the stage's wgmma steps (3 × 3: unrolled, fragments two steps
// ahead) and the epilogue of an item's last stage, and never execute a copy or a claim: the halo kernel's
// per-stage load and bookkeeping code (most of its instructions) no longer delays the tensor work. A stage
// with unit = total ends the consumers. Shared memory (host: 1024 + WS_STAGES · slot + 16 · WS_STAGES + 16 +
// 256): slots of [FR·FS][B][B] swizzled weights (1024-aligned) + the halo [HR·HC][B + 8].
// TM (conv_fprop_wst): one producer thread copies a stage with TMA instead: the halo as one box of the 5-D
// map tx over x [N, D, H, W, C] (zeros outside the input) B + 8 channels wide, so that it lands in the padded
// rows the ldmatrix reads are free of bank conflicts in (the 8 extra channels, the next block's or zeros, are
// never read), and each tap's weight slice as a box of the 2-D map tw over w [nnz·taps·B, B] (swizzled); the
// slot's FULL is then an mbarrier (the copies' bytes) instead of a named barrier.
#ifdef CSB_HOST_EMULATION
struct TensorMap { unsigned long long v[16]; };
#endif
// The warp-specialized kernels' work (conv_ws_body, conv_wtp_body): a unit is a run of `run` consecutive tiles of
// one column j = unit % ncol (an output block, or a group of them), claimed by the producers from the launch's
// counter sched[0] (unit = total: no work left). Two claim words alternate: a word is rewritten two claims (and
// barriers) later. e0: the column's first entry of col_ptr; niter: its stages (entries × per).
struct WsItem { int unit, j, tile, tend, e0, niter; };
__device__ __forceinline__ WsItem ws_claim(int* s_claim, int& nclaim, unsigned* sched, int total, int ncol, int run,
                                           int ntiles, const int* __restrict__ col_ptr, int per, int ptid, int pbar,
                                           int nprod) {
  int* slot = s_claim + (nclaim++ & 1);
  if (ptid == 0) {
    const unsigned c = atomicAdd(sched, 1u);
    *slot = c < (unsigned)total ? (int)c : total;
  }
  nbar_sync(pbar, nprod);
  WsItem r;
  r.unit = *slot;
  const int u = r.unit < total ? r.unit : 0;
  r.j = u % ncol;
  const int t0 = u / ncol * run;
  r.tend = t0 + run < ntiles ? t0 + run : ntiles;
  r.tile = t0;
  r.e0 = col_ptr[r.j];
  r.niter = (col_ptr[r.j + 1] - r.e0) * per;
  return r;
}
// tile t of the launch's output (tiles_w × tiles_h per image and depth, TW × TH positions): its first column,
// first row, depth and image
struct WsTile { int tw0, th0, od, n; };
__device__ __forceinline__ WsTile ws_tile(int t, int tiles_w, int tiles_h, int OD, int TW, int TH) {
  WsTile g;
  g.tw0 = (t % tiles_w) * TW; t /= tiles_w;
  g.th0 = (t % tiles_h) * TH; t /= tiles_h;
  g.od = t % OD;
  g.n = t / OD;
  return g;
}
// the last CTA out of a launch resets the work counters for the next one (producer thread 0)
__device__ __forceinline__ void ws_reset_counters(unsigned* sched) {
  __threadfence();
  if (atomicAdd(sched + 1, 1u) == gridDim.x - 1) {
    sched[0] = 0;
    sched[1] = 0;
    __threadfence();
  }
}
template <typename T, int B, int TW, int TH, bool FLIP, bool TM, int NWG, bool SS = false>
__device__ __forceinline__ void conv_ws_body(const T* __restrict__ x, const T* __restrict__ w, const TensorMap* tx,
              const TensorMap* tw, T* __restrict__ y,
              const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
              const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
              const int* __restrict__ geo, unsigned* __restrict__ sched, int opts) {
  // NWG consumer warpgroups (2 or 4), each TH·TW / NWG rows
  constexpr int CONS = 128 * NWG, PROD = 128, THREADS = CONS + PROD, BM = TH * TW, MT = BM / (64 * NWG);
  constexpr int NT = B / 8;
  constexpr int LDA = SS ? B : B + 8, VPR = B / 8, ROW = B * 2, NST = WS_STAGES;
  constexpr int FULL0 = 1, EMPTY0 = 1 + NST, PBAR = 1 + 2 * NST;
  // (512 positions, 4 m64 groups a warpgroup with the producers' registers handed over by setmaxnreg, measured no
  // faster than 256 and spilled once the step loop was shared: not kept)
  static_assert((NWG == 2 || NWG == 4) && BM % (64 * NWG) == 0 && MT >= 1 && MT <= 2 && TW % 8 == 0 && B >= 16,
                "2 or 4 consumer warpgroups, 1 or 2 m64 groups each");
  static_assert(!SS || (TM && TW == 8 && MT == 1), "SS: fed by TMA, 8 output columns, one m64 group a warpgroup");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  EMU_GMMA_PARTICIPANTS(CONS);

  const int C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS], FT = geo[G_FT];
  const int SH = geo[G_SH], SW = geo[G_SW], DH = geo[G_DH], DW = geo[G_DW];
  const int taps = FT * FR * FS;
  const int HR = (TH - 1) * SH + (FR - 1) * DH + 1, HC = (TW - 1) * SW + (FS - 1) * DW + 1;
  const int halo = HR * HC, wtaps = FR * FS;
  const int wbytes = (wtaps * B * ROW + 1023) & ~1023, slot_bytes = wbytes + ((halo * LDA * (int)sizeof(T) + 1023) & ~1023);
  unsigned char* base = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  int* s_info = reinterpret_cast<int*>(base + NST * slot_bytes);  // [NST][4]: unit, tile, it, niter
  int* s_claim = s_info + 4 * NST;                                  // [2]
  // TM: the slots' FULL mbarriers (8-byte aligned after the claim words)
  const unsigned full0 = smem_u32(s_claim + 2);
#if !defined(CSB_HOST_EMULATION)
  if (TM) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < NST; ++i) tma::bar_init(full0 + 8 * i, 1);
      tma::bar_init_fence();
    }
    __syncthreads();
  }
#endif
  const int tiles_w = (OW + TW - 1) / TW, tiles_h = (OH + TH - 1) / TH, ncol = K / B, run = opts & 0xffff;
  const int ntiles = geo[G_N] * OD * tiles_h * tiles_w, total = (ntiles + run - 1) / run * ncol;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  using Tile = WsTile;
  auto tile_of = [&](int t) { return ws_tile(t, tiles_w, tiles_h, OD, TW, TH); };

  if (tid >= CONS) {  // ---------------------------------------------------------------- producers
    const int ptid = tid - CONS;
    int nclaim = 0;
    using Item = WsItem;
    auto claim = [&]() {
      return ws_claim(s_claim, nclaim, sched, total, ncol, run, ntiles, col_ptr, FT, ptid, PBAR, PROD);
    };
    auto load_stage = [&](const Item& q, int it, int sl) {
      const int eo = it / FT, ft = it - eo * FT;
      const int cblk = col_in[q.e0 + eo];
      const i64 wblk = col_w[q.e0 + eo];
      const Tile g = tile_of(q.tile);
      const int id = g.od * geo[G_SD] - geo[G_PD] + ft * geo[G_DD];
      const int ih0 = g.th0 * SH - geo[G_PH], iw0 = g.tw0 * SW - geo[G_PW];
      const bool dok = (unsigned)id < (unsigned)D;
      const unsigned ws = smem_u32(base + sl * slot_bytes), as = ws + wbytes;
      for (int v = ptid; v < halo * VPR; v += PROD) {
        const int row = v / VPR, vec = v - row * VPR;
        const int hr = row / HC, hc = row - hr * HC;
        const int ih = ih0 + hr, iw = iw0 + hc;
        const bool ok = dok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
        const T* src = ok ? x + ((((i64)g.n * D + id) * H + ih) * (i64)W + iw) * C + cblk * B + vec * 8 : x;
        cp_async16(as + (row * LDA + vec * 8) * (int)sizeof(T), src, ok ? 16 : 0);
      }
      const int wdepth = FLIP ? FT - 1 - ft : ft;
      const T* wsrc = w + (wblk * taps + (i64)wdepth * wtaps) * (B * B);
      for (int v = ptid; v < wtaps * B * VPR; v += PROD) {
        const int kr = v / VPR, cv = v - kr * VPR;
        const int tap = kr / B, wr = kr - tap * B;
        const int stap = FLIP ? wtaps - 1 - tap : tap;
        cp_async16(ws + tap * (B * ROW) + gmma::swizzle<ROW>(wr, cv), wsrc + ((i64)stap * B + wr) * B + cv * 8, 16);
      }
    };
    Item cur = claim();
    int it = 0, stage = 0;
#if !defined(CSB_HOST_EMULATION)
    if (TM) {  // one thread issues the copies; the others keep the claims and the refill barriers with it
      for (;; ++stage) {
        const int sl = stage % NST;
        if (stage >= NST) nbar_sync(EMPTY0 + sl, THREADS);
        const bool done = cur.unit >= total;
        if (ptid == 0) {
          s_info[4 * sl] = done ? total : cur.unit;
          s_info[4 * sl + 1] = cur.tile;
          s_info[4 * sl + 2] = it;
          s_info[4 * sl + 3] = cur.niter;
          const bool copy = !done && it < cur.niter;
          const unsigned bar = full0 + 8 * sl;
          tma::arrive_expect(bar, copy ? (unsigned)((halo * LDA + wtaps * B * B) * (int)sizeof(T)) : 0u);
          if (copy) {
            const int eo = it / FT, ft = it - eo * FT;
            const int cblk = col_in[cur.e0 + eo], wblk = col_w[cur.e0 + eo];
            const Tile g = tile_of(cur.tile);
            const int id = g.od * geo[G_SD] - geo[G_PD] + ft * geo[G_DD];
            const int ih0 = g.th0 * SH - geo[G_PH], iw0 = g.tw0 * SW - geo[G_PW];
            const unsigned ws = smem_u32(base + sl * slot_bytes);
            // SS: the map is [N, C / 8, H, W, 8] (channel chunks outside the rows; 2-D only, id = 0)
            asm volatile(
                "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n"
                ::"r"(ws + wbytes), "l"(reinterpret_cast<unsigned long long>(tx)), "r"(SS ? 0 : cblk * B), "r"(iw0),
                "r"(ih0), "r"(SS ? cblk * (B / 8) : id), "r"(g.n), "r"(bar)
                : "memory");
            const int wdepth = FLIP ? FT - 1 - ft : ft;
            for (int tap = 0; tap < wtaps; ++tap) {
              const int stap = FLIP ? wtaps - 1 - tap : tap;
              tma::load_2d(ws + tap * (B * ROW), *tw, 0, ((wblk * FT + wdepth) * wtaps + stap) * B, bar);
            }
          }
        }
        if (done) break;
        if (it + 1 < cur.niter) {
          ++it;
        } else {
          it = 0;
          if (cur.tile + 1 < cur.tend) ++cur.tile;
          else cur = claim();
        }
      }
      for (int s2 = stage - NST + 1 > 0 ? stage - NST + 1 : 0; s2 < stage; ++s2) nbar_sync(EMPTY0 + s2 % NST, THREADS);
      if (ptid == 0) ws_reset_counters(sched);
      return;
    }
#endif
    for (;; ++stage) {
      const int sl = stage % NST;
      if (stage >= NST) nbar_sync(EMPTY0 + sl, THREADS);  // the consumers are done with stage - NST
      const bool done = cur.unit >= total;
      if (!done && it < cur.niter) load_stage(cur, it, sl);
      cp_async_commit();
      if (ptid == 0) {
        s_info[4 * sl] = done ? total : cur.unit;
        s_info[4 * sl + 1] = cur.tile;
        s_info[4 * sl + 2] = it;
        s_info[4 * sl + 3] = cur.niter;
      }
      if (stage > 0) {  // the previous stage's copies have landed: publish it
        cp_async_wait<1>();
        gmma::fence_proxy_async();
        nbar_arrive(FULL0 + (stage - 1) % NST, THREADS);
      }
      if (done) break;
      if (it + 1 < cur.niter) {
        ++it;
      } else {  // the run's next tile, or a new claim (an item without stages took one stage)
        it = 0;
        if (cur.tile + 1 < cur.tend) ++cur.tile;
        else cur = claim();
      }
    }
    cp_async_wait<0>();
    gmma::fence_proxy_async();
    nbar_arrive(FULL0 + stage % NST, THREADS);  // the final stage (unit = total)
    // the consumers' arrivals that no refill waited for: stages stage - NST + 1 .. stage - 1
    for (int s2 = stage - NST + 1 > 0 ? stage - NST + 1 : 0; s2 < stage; ++s2) nbar_sync(EMPTY0 + s2 % NST, THREADS);
    if (ptid == 0) ws_reset_counters(sched);  // the last CTA out resets the counters for the next launch
    return;
  }

  // ---------------------------------------------------------------------------------------------- consumers
  auto rbase = [&](int mt) { return (warp >> 2) * (BM / NWG) + mt * 64 + (warp & 3) * 16; };
  unsigned hoff[MT];  // this lane's A row in each m64 group: output (th, tw) → halo byte offset before the tap
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int r = rbase(mt) + (lane & 15);
    hoff[mt] = (unsigned)(((((r / TW) * SH * HC + (r % TW) * SW)) * LDA + (lane >> 4) * 8) * (int)sizeof(T));
  }
  const unsigned rowb = DH * HC * LDA * (unsigned)sizeof(T), colb = DW * LDA * (unsigned)sizeof(T);
  // SS: the warpgroup's 8 output rows start SH · 8 · (warpgroup) halo rows down; 16-byte positions, chunk-major
  // (LBO along k: the next 8 channels a halo further; SBO along the rows: the next output row. Swapped, every
  // GPU test failed: the fields read as the PTX ISA's canonical K-major layout says)
  const unsigned ss_off = (unsigned)((warp >> 2) * 8 * SH * HC * 16), ss_row = DH * HC * 16u, ss_col = DW * 16u;
  const unsigned ss_k = 2u * halo * 16u;
  const unsigned long long ss_hi = gmma::desc_kmajor(0, halo * 16u, SH * HC * 16u);
  const i64 OS = (i64)OD * OH * OW;
  float acc[MT][NT][4];
  for (int stage = 0;; ++stage) {
    const int sl = stage % NST;
#if !defined(CSB_HOST_EMULATION)
    if (TM) tma::wait(full0 + 8 * sl, (stage / NST) & 1);
    else
#endif
      nbar_sync(FULL0 + sl, THREADS);
    const int unit = s_info[4 * sl], tile = s_info[4 * sl + 1], it = s_info[4 * sl + 2], niter = s_info[4 * sl + 3];
    if (unit >= total) break;
    if (it < niter) {
      const unsigned ws = smem_u32(base + sl * slot_bytes), as = ws + wbytes;
      const int keep_first = it > 0;
      unsigned ab[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ab[mt] = hoff[mt] + as;
      if constexpr (SS)
        conv_ss_stage<T, B, FLIP>(reinterpret_cast<float(&)[1][NT][4]>(acc), as + ss_off, ss_hi, ss_row, ss_col,
                                  ss_k, FR, FS, ws, keep_first);
      else
        conv_gmma_stage<T, B, MT, FLIP>(acc, ab, rowb, colb, FR, FS, ws, keep_first);  // (returns all waited for)
#pragma unroll
      for (int a2 = 0; a2 < MT; ++a2)
#pragma unroll
        for (int b2 = 0; b2 < NT; ++b2)
#pragma unroll
          for (int c2 = 0; c2 < 4; ++c2) gmma::fence_operand(acc[a2][b2][c2]);
    }
    nbar_arrive(EMPTY0 + sl, THREADS);  // this thread's reads of the slot are complete
    if (it + 1 < niter) continue;
    // the item's epilogue (an item without stages writes zeros: its accumulators hold the previous item's)
    const bool empty = niter == 0;
    const int j = unit % ncol;
    const Tile g = tile_of(tile);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = rbase(mt) + (lane >> 2) + 8 * h;
        const int oh = g.th0 + r / TW, ow = g.tw0 + r % TW;
        if (oh >= OH || ow >= OW) continue;
        const i64 p = ((i64)g.od * OH + oh) * OW + ow;
        const int eb = emap != nullptr ? emap[p] : -1;
        T* yrow = y + (g.n * OS + p) * K;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          store_out2<T>(yrow, j * B + nt * 8 + 2 * (lane & 3), empty ? 0.f : acc[mt][nt][2 * h],
                        empty ? 0.f : acc[mt][nt][2 * h + 1], out_perm, edge_bias, eb, K);
      }
  }
}
template <typename T, int B, int TW, int TH, bool FLIP, int NWG = 2>
__global__ void __launch_bounds__(128 * NWG + 128, 1)
conv_fprop_ws(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
              const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
              const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
              const int* __restrict__ geo, unsigned* __restrict__ sched, int opts) {
  conv_ws_body<T, B, TW, TH, FLIP, false, NWG>(x, w, nullptr, nullptr, y, col_ptr, col_in, col_w, out_perm, edge_bias,
                                               emap, geo, sched, opts);
}
#ifndef CSB_HOST_EMULATION
template <typename T, int B, int TW, int TH, bool FLIP, int NWG = 2>
__global__ void __launch_bounds__(128 * NWG + 128, 1)
conv_fprop_wst(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap tw, T* __restrict__ y,
               const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
               const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
               const int* __restrict__ geo, unsigned* __restrict__ sched, int opts) {
  conv_ws_body<T, B, TW, TH, FLIP, true, NWG>(nullptr, nullptr, &tx, &tw, y, col_ptr, col_in, col_w, out_perm,
                                              edge_bias, emap, geo, sched, opts);
}
// conv_fprop_wss: conv_fprop_wst with A from shared memory (conv_ss_stage): 8 output columns × 8 rows a
// consumer warpgroup, the halo a box of the map over x as [N, C / 8, H, W, 8] (host: _ws_maps), 2-D
// convolutions with SW = 1
template <typename T, int B, int TH, bool FLIP, int NWG = 4>
__global__ void __launch_bounds__(128 * NWG + 128, 1)
conv_fprop_wss(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap tw, T* __restrict__ y,
               const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
               const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
               const int* __restrict__ geo, unsigned* __restrict__ sched, int opts) {
  conv_ws_body<T, B, 8, TH, FLIP, true, NWG, true>(nullptr, nullptr, &tx, &tw, y, col_ptr, col_in, col_w, out_perm,
                                                   edge_bias, emap, geo, sched, opts);
}
#endif

// conv_fprop_wtp (sm_90a): the transposed form D = Wᵀ · Xᵀ of conv_fprop_wst, for the case where a narrow
// (N = B) wgmma cannot reach the tensor cores' rate: an m64n32k16 reading 2 KB of A and 1 KB of B from shared
// memory needs ~192 B/clk against ~128 (bench/NOTES.md, eighteenth session). Here M = 64 is a group of G = 64 / B
// output blocks and N = 8 · NR output positions of a consumer warpgroup, so an m64n128k16 reads 2 KB + 4 KB for
// 64 clocks (96 B/clk). An item is a tile of NR output rows × 16 columns (two warpgroups side by side, 8 columns
// each) × one group p of output blocks (the host pairs blocks by the overlap of their input blocks: grp_out[p·G +
// g], -1 = none); its stages are the union of the group's input blocks (grp_ptr, grp_in), each loading the halo
// of that input block and every tap's weight slice of each member (grp_w[e·G + g]; a member without this input
// block: index nnz, copied as zeros, so its rows of D add nothing).
// Shared memory per slot: the weights [FR·FS][G][B][B·2 bytes] (each slice swizzled as gmma::swizzle<B·2>, the
// group's slices adjacent: A is M-major, its G swizzle atoms LBO = B·B·2 bytes apart, 8 k-rows SBO = 8·B·2
// further), then the halo [HR·HC][B·2 bytes], a position a row, swizzled the same way: B is K-major, the 8
// positions of an output row 8 consecutive rows, the next output row SBO = SH·HC rows further, 16 of k 32 bytes
// along the row. A window starts at any row: the hardware swizzles by the address bits, as TMA wrote them (the
// descriptor's base offset set to (address >> 7) & 7 failed every GPU test; the channel-chunk-major halo of
// conv_fprop_wss, whose TMA box has 16-byte rows, cost 18 % of the time). 2-D convolutions of unit column stride.
// TM: one producer thread copies a stage by TMA (the halo one box of the map over x [N, D, H, W, C], B channels
// wide, the slices boxes of the map over w [nnz·taps·B, B], the absent ones rows past its end), the slot's FULL an
// mbarrier; else (conv_fprop_wtpc, and the host emulation) four producer warps copy it by cp.async (one stage in
// flight: a validation path). A consumer releases a slot (EMPTY) when its next stage's group is issued and the
// slot's group waited for. Epilogue as xw_tma's transposed tile: lanes l and l ^ 4 hold channels f, f ^ 1 of the
// same positions and swap one value, so each thread has two consecutive channels of one position; staged
// (without permutation or edge bias, when the host fits the buffer), they pass through shared memory and leave as
// 16-byte vectors of whole sectors, else as 4-byte pairs (+ edge bias, through out_perm).
// opts: bits 0-15 the run length (tiles of one group a claim), bit 23 the staged epilogue, bits 24-26 the slots
// (2 to 4).
struct __align__(16) V16 { unsigned v[4]; };  // 16 bytes copied as one vector
template <typename T, int B, int NR, bool TM>
__device__ __forceinline__ void conv_wtp_body(const T* __restrict__ x, const T* __restrict__ w, const TensorMap* tx,
              const TensorMap* tw, T* __restrict__ y, const int* __restrict__ grp_ptr,
              const int* __restrict__ grp_in, const int* __restrict__ grp_w, const int* __restrict__ grp_out,
              const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
              const int* __restrict__ geo, unsigned* __restrict__ sched, int opts, int nnz) {
  constexpr int G = 64 / B, ROW = B * 2, KS = B / 16, NWG = 2, CONS = 128 * NWG, PROD = 128, THREADS = CONS + PROD;
  constexpr int N = 8 * NR, TW = 8 * NWG, VPR = B / 8, SLICE = B * ROW;
  constexpr int FULL0 = 1, EMPTY0 = 5, PBAR = 9;  // up to 4 slots
  static_assert((B == 16 || B == 32 || B == 64) && (NR == 16 || NR == 32), "B 16, 32 or 64; 16 or 32 rows");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  EMU_GMMA_PARTICIPANTS(CONS);

  const int C = geo[G_C], K = geo[G_K];
  const int H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS];
  const int SH = geo[G_SH], DH = geo[G_DH], DW = geo[G_DW];
  const int HR = (NR - 1) * SH + (FR - 1) * DH + 1, HC = TW + (FS - 1) * DW;
  const int halo = HR * HC, wtaps = FR * FS;
  const int wbytes = (wtaps * G * SLICE + 1023) & ~1023, slot_bytes = wbytes + ((halo * B * 2 + 1023) & ~1023);
  const int nst = (opts >> 24) & 7;
  unsigned char* base = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  int* s_info = reinterpret_cast<int*>(base + nst * slot_bytes);  // [nst][4]: unit, tile, it, niter
  int* s_claim = s_info + 4 * nst;                                  // [2]
  const unsigned full0 = smem_u32(s_claim + 2);                     // TM: the slots' FULL mbarriers
#if !defined(CSB_HOST_EMULATION)
  if (TM) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < nst; ++i) tma::bar_init(full0 + 8 * i, 1);
      tma::bar_init_fence();
    }
    __syncthreads();
  }
#endif
  const int tiles_w = (OW + TW - 1) / TW, tiles_h = (OH + NR - 1) / NR, ngrp = K / B / G + (K / B % G != 0);
  const int run = opts & 0xffff;
  const int ntiles = geo[G_N] * OD * tiles_h * tiles_w, total = (ntiles + run - 1) / run * ngrp;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  using Tile = WsTile;
  auto tile_of = [&](int t) { return ws_tile(t, tiles_w, tiles_h, OD, TW, NR); };

  if (tid >= CONS) {  // ---------------------------------------------------------------- producers
#if !defined(CSB_HOST_EMULATION)
    tma::setmaxnreg_dec<40>();  // (their registers to the consumers: 128 accumulators at N = 256)
#endif
    const int ptid = tid - CONS;
    int nclaim = 0;
    using Item = WsItem;
    auto claim = [&]() {
      return ws_claim(s_claim, nclaim, sched, total, ngrp, run, ntiles, grp_ptr, 1, ptid, PBAR, PROD);
    };
    auto load_stage = [&](const Item& q, int it, int sl) {  // (cp.async)
      const int e = q.e0 + it, cblk = grp_in[e];
      const Tile g = tile_of(q.tile);
      const int ih0 = g.th0 * SH - geo[G_PH], iw0 = g.tw0 - geo[G_PW];
      const unsigned ws = smem_u32(base + sl * slot_bytes), as = ws + wbytes;
      for (int v = ptid; v < halo * VPR; v += PROD) {
        const int pos = v / VPR, ch = v - pos * VPR;
        const int hr = pos / HC, hc = pos - hr * HC;
        const int ih = ih0 + hr, iw = iw0 + hc;
        const bool ok = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
        const T* src = ok ? x + ((((i64)g.n * H + ih) * (i64)W + iw) * C + cblk * B + ch * 8) : x;
        cp_async16(as + gmma::swizzle<ROW>(pos, ch), src, ok ? 16 : 0);
      }
      for (int v = ptid; v < wtaps * G * B * VPR; v += PROD) {
        const int r = v / VPR, cv = v - r * VPR;
        const int tap = r / (G * B), r2 = r - tap * (G * B), gg = r2 / B, wr = r2 - gg * B;
        const int wblk = grp_w[e * G + gg];
        const bool ok = wblk < nnz;
        const T* src = ok ? w + (((i64)wblk * wtaps + tap) * B + wr) * B + cv * 8 : w;
        cp_async16(ws + (tap * G + gg) * SLICE + gmma::swizzle<ROW>(wr, cv), src, ok ? 16 : 0);
      }
    };
    Item cur = claim();
    int it = 0, stage = 0;
    for (;; ++stage) {
      const int sl = stage % nst;
      if (!TM && stage > 0) {  // the previous stage's copies have landed: publish it (before the refill wait: a
        cp_async_wait<0>();    // consumer releases a slot once its next stage is published)
        gmma::fence_proxy_async();
        nbar_arrive(FULL0 + (stage - 1) % nst, THREADS);
      }
      if (stage >= nst) nbar_sync(EMPTY0 + sl, THREADS);  // the consumers are done with stage - nst
      const bool done = cur.unit >= total;
      const bool copy = !done && it < cur.niter;
#if !defined(CSB_HOST_EMULATION)
      if (TM) {  // one thread issues the copies; the others keep the claims and the refill barriers with it
        if (ptid == 0) {
          s_info[4 * sl] = done ? total : cur.unit;
          s_info[4 * sl + 1] = cur.tile;
          s_info[4 * sl + 2] = it;
          s_info[4 * sl + 3] = cur.niter;
          const unsigned bar = full0 + 8 * sl;
          tma::arrive_expect(bar, copy ? (unsigned)((halo * B + wtaps * G * B * B) * (int)sizeof(T)) : 0u);
          if (copy) {
            const int e = cur.e0 + it, cblk = grp_in[e];
            const Tile g = tile_of(cur.tile);
            const int ih0 = g.th0 * SH - geo[G_PH], iw0 = g.tw0 - geo[G_PW];
            const unsigned ws = smem_u32(base + sl * slot_bytes);
            asm volatile(
                "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n"
                ::"r"(ws + wbytes), "l"(reinterpret_cast<unsigned long long>(tx)), "r"(cblk * B), "r"(iw0), "r"(ih0),
                "r"(0), "r"(g.n), "r"(bar)
                : "memory");
            for (int gg = 0; gg < G; ++gg) {
              const int wblk = grp_w[e * G + gg];  // (nnz: rows past the map's end, copied as zeros)
              for (int tap = 0; tap < wtaps; ++tap)
                tma::load_2d(ws + (tap * G + gg) * SLICE, *tw, 0, (wblk * wtaps + tap) * B, bar);
            }
          }
        }
      } else
#endif
      {
        if (copy) load_stage(cur, it, sl);
        cp_async_commit();
        if (ptid == 0) {
          s_info[4 * sl] = done ? total : cur.unit;
          s_info[4 * sl + 1] = cur.tile;
          s_info[4 * sl + 2] = it;
          s_info[4 * sl + 3] = cur.niter;
        }
      }
      if (done) break;
      if (it + 1 < cur.niter) {
        ++it;
      } else {  // the run's next tile, or a new claim (an item without stages took one stage)
        it = 0;
        if (cur.tile + 1 < cur.tend) ++cur.tile;
        else cur = claim();
      }
    }
    if (!TM) {
      cp_async_wait<0>();
      gmma::fence_proxy_async();
      nbar_arrive(FULL0 + stage % nst, THREADS);  // the final stage (unit = total)
    }
    // the consumers' arrivals that no refill waited for: stages stage - nst + 1 .. stage - 1
    for (int s2 = stage - nst + 1 > 0 ? stage - nst + 1 : 0; s2 < stage; ++s2) nbar_sync(EMPTY0 + s2 % nst, THREADS);
    if (ptid == 0) ws_reset_counters(sched);  // the last CTA out resets the counters for the next launch
    return;
  }

  // ---------------------------------------------------------------------------------------------- consumers
#if !defined(CSB_HOST_EMULATION)
  tma::setmaxnreg_inc<232>();
#endif
  // the values a wgmma's branches depend on, made provably warp-uniform (else ptxas serializes the wgmmas)
  const int wg = warp >> 2, v = warp & 3, fr_n = __shfl_sync(0xffffffffu, FR, 0), fs_n = __shfl_sync(0xffffffffu, FS, 0);
  const unsigned long long a_hi = gmma::desc_lbo<ROW, SLICE>(0) & ~0x3FFFull;
  // B: the halo's positions are rows of B · 2 bytes, swizzled as the weights (a K-major operand: 8 positions of an
  // output row consecutive rows, the next output row SBO = SH · HC rows further; 16 of k 32 bytes along the row)
  const unsigned long long b_hi = (gmma::desc<ROW>(0) & ~(0x3FFFull << 32)) | ((unsigned long long)(SH * HC * ROW >> 4) << 32);
  const unsigned rowb = DH * HC * ROW, colb = DW * ROW, kstep = 32u, b_off = wg * 8 * ROW;
  const i64 OS = (i64)OD * OH * OW;
  float acc[N / 2];
  auto full_wait = [&](int stage) {
#if !defined(CSB_HOST_EMULATION)
    if (TM) tma::wait(full0 + 8 * (stage % nst), (stage / nst) & 1);
    else
#endif
      nbar_sync(FULL0 + stage % nst, THREADS);
  };
  // the item's stores: channel pair (m, m + 1) of the group's 64 (m = 16v + 8h + lane/4 - odd: lanes l and l ^ 4
  // hold channels f and f ^ 1 of the same positions), column 8·wg + 2(lane % 4) + odd, output row q, values val
  auto store = [&](int p, const Tile& g, int h, int q, float v0, float v1, int jv) {
    const int odd = (lane >> 2) & 1, m = 16 * v + 8 * h + (lane >> 2) - odd;
    const int oh = g.th0 + q, ow = g.tw0 + 8 * wg + 2 * (lane & 3) + odd;
    if (jv >= 0 && oh < OH && ow < OW) {
      const i64 pos = ((i64)g.od * OH + oh) * OW + ow;
      const int eb = emap != nullptr ? emap[pos] : -1;
      store_out2<T>(y + (g.n * OS + pos) * K, jv * B + m % B, v0, v1, out_perm, edge_bias, eb, K);
    }
  };
  const bool plain = out_perm == nullptr && emap == nullptr, staged = plain && (opts & (1 << 23));
  // staged (bit 23 of opts; the host when it fits): a warpgroup's outputs pass through [N][G·B + 8] elements of shared
  // memory after the mbarriers, so that the stores are 16-byte vectors of whole 32-byte sectors (the 4-byte pair
  // stores of the direct path each touch half a sector: 17 % of the kernel's time at 256 positions, ncu and
  // bench/NOTES.md)
  constexpr int EROW = 64 + 8;
  T* ebuf = reinterpret_cast<T*>(base + nst * slot_bytes + ((16 * nst + 8 + 8 * nst + 15) & ~15)) + wg * N * EROW;
  // the group's output block of rows 16v + 8h .. + 7 (-1: none), warp-uniform
  auto out_block = [&](int p, int h) { return __shfl_sync(0xffffffffu, grp_out[p * G + (16 * v + 8 * h) / B], 0); };
  // items: a loop over an item's stages that always issues its wgmmas (a path into the epilogue without them, or
  // a wait at the loop head, would make ptxas wait for every group at the top of the loop)
  for (int stage = 0;;) {
    full_wait(stage);
    int sl = stage % nst;
    const int unit = __shfl_sync(0xffffffffu, s_info[4 * sl], 0), tile = s_info[4 * sl + 1];
    const int niter = __shfl_sync(0xffffffffu, s_info[4 * sl + 3], 0);
    if (unit >= total) break;
    const int p = unit % ngrp;
    const Tile g = tile_of(tile);
    if (niter == 0) {  // an item without stages (its item words only): zeros (+ edge bias)
      nbar_arrive(EMPTY0 + sl, THREADS);
      ++stage;
      for (int h = 0; h < 2; ++h) {
        const int jv = out_block(p, h);
        for (int q = 0; q < NR; ++q) store(p, g, h, q, 0.f, 0.f, jv);
      }
      continue;
    }
    for (int it = 0; it < niter; ++it, ++stage) {
      if (it > 0) {
        full_wait(stage);
        sl = stage % nst;
      }
      const unsigned ws = smem_u32(base + sl * slot_bytes), as = ws + wbytes + b_off;
      auto mma = [&](int t, int fr, int fs, int kk, int keep) {
        const unsigned long long da = a_hi | (((ws + t * (G * SLICE) + kk * 16 * ROW) >> 4) & 0x3FFF);
        const unsigned ba = as + fr * rowb + fs * colb + kk * kstep;
        const unsigned long long db = b_hi | ((ba >> 4) & 0x3FFF);
        gmma::GmmaSSz<T, N, 1, 0>::run(acc, da, db, keep);
      };
      gmma::wgmma_fence();
      if (fr_n == 3 && fs_n == 3) {
#pragma unroll
        for (int t = 0; t < 9; ++t)
#pragma unroll
          for (int kk = 0; kk < KS; ++kk) mma(t, t / 3, t % 3, kk, it + t + kk ? 1 : 0);
      } else {
        for (int fr = 0; fr < fr_n; ++fr)
          for (int fs = 0; fs < fs_n; ++fs)
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) mma(fr * fs_n + fs, fr, fs, kk, it + fr + fs + kk ? 1 : 0);
      }
      gmma::wgmma_commit();
      if (it > 0) {  // the previous stage's group is done with its slot
        gmma::wgmma_wait<1>();
        nbar_arrive(EMPTY0 + (stage - 1) % nst, THREADS);
      }
    }
    gmma::wgmma_wait<0>();
    nbar_arrive(EMPTY0 + (stage - 1) % nst, THREADS);
#pragma unroll
    for (int r = 0; r < N / 2; ++r) gmma::fence_operand(acc[r]);
    // the item's epilogue: acc[4q + 2h + e] = D[channel 16v + lane/4 + 8h][position 8q + 2(lane % 4) + e] of the
    // warpgroup (output row q, column 8·wg + 2(lane % 4) + e of the tile); every lane reads every accumulator
    // (one read in a divergent path makes ptxas serialize every wgmma of the kernel)
    // Without permutation or edge bias (plain) each store is one 4-byte pair at a row pointer stepped by a
    // constant: the general store's per-value index work took as long as a stage (ncu, bench/NOTES.md)
    const bool odd = (lane >> 2) & 1;
    const int ow = g.tw0 + 8 * wg + 2 * (lane & 3) + odd, rows_left = OH - g.th0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int jv = out_block(p, h);
      const bool col_ok = jv >= 0 && ow < OW;
      const int m = 16 * v + 8 * h + (lane >> 2) - odd;
      T* yq = y + ((g.n * OS + ((i64)g.od * OH + g.th0) * OW + ow) * K + jv * B + m % B);
      const i64 row_step = (i64)OW * K;
#pragma unroll
      for (int q = 0; q < NR; ++q) {
        const float a0 = acc[4 * q + 2 * h], a1 = acc[4 * q + 2 * h + 1];
        const float other = __shfl_xor_sync(0xffffffffu, odd ? a0 : a1, 4);
        const float v0 = odd ? other : a0, v1 = odd ? a1 : other;
        if (staged) {
          store2<T>(ebuf + (8 * q + 2 * (lane & 3) + odd) * EROW + m, v0, v1);
        } else if (plain) {
          if (col_ok && q < rows_left) store2<T>(yq + q * row_step, v0, v1);
        } else {
          store(p, g, h, q, v0, v1, jv);
        }
      }
    }
    if (staged) {  // the warpgroup's positions × 64 channels: 8 threads a position, 16 bytes each
      nbar_sync(10 + wg, 128);
      const int jv0 = __shfl_sync(0xffffffffu, grp_out[p * G], 0);
      int jvs[G];
#pragma unroll
      for (int gg = 0; gg < G; ++gg) jvs[gg] = gg ? __shfl_sync(0xffffffffu, grp_out[p * G + gg], 0) : jv0;
      const int t = tid & 127;
#pragma unroll 4
      for (int i = t; i < N * 8; i += 128) {
        const int n = i >> 3, c8 = i & 7, gg = c8 * 8 / B;
        const int oh = g.th0 + (n >> 3), ow2 = g.tw0 + 8 * wg + (n & 7);
        int jv = jvs[0];
#pragma unroll
        for (int g2 = 1; g2 < G; ++g2) jv = gg == g2 ? jvs[g2] : jv;
        if (jv >= 0 && oh < OH && ow2 < OW)
          *reinterpret_cast<V16*>(y + ((g.n * OS + ((i64)g.od * OH + oh) * OW + ow2) * K + jv * B + c8 * 8 % B)) =
              *reinterpret_cast<const V16*>(ebuf + n * EROW + c8 * 8);
      }
      nbar_sync(10 + wg, 128);  // (the buffer is rewritten by the next item's epilogue)
    }
  }
}
// conv_fprop_wtpc: conv_fprop_wtp fed by cp.async (the host emulation runs it)
template <typename T, int B, int NR>
__global__ void __launch_bounds__(384, 1)
conv_fprop_wtpc(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, const int* __restrict__ grp_ptr,
                const int* __restrict__ grp_in, const int* __restrict__ grp_w, const int* __restrict__ grp_out,
                const int* __restrict__ out_perm, const T* __restrict__ edge_bias, const int* __restrict__ emap,
                const int* __restrict__ geo, unsigned* __restrict__ sched, int opts, int nnz) {
  conv_wtp_body<T, B, NR, false>(x, w, nullptr, nullptr, y, grp_ptr, grp_in, grp_w, grp_out, out_perm, edge_bias, emap,
                                 geo, sched, opts, nnz);
}
#ifndef CSB_HOST_EMULATION
template <typename T, int B, int NR>
__global__ void __launch_bounds__(384, 1)
conv_fprop_wtp(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap tw, T* __restrict__ y,
               const int* __restrict__ grp_ptr, const int* __restrict__ grp_in, const int* __restrict__ grp_w,
               const int* __restrict__ grp_out, const int* __restrict__ out_perm, const T* __restrict__ edge_bias,
               const int* __restrict__ emap, const int* __restrict__ geo, unsigned* __restrict__ sched, int opts,
               int nnz) {
  conv_wtp_body<T, B, NR, true>(nullptr, nullptr, &tx, &tw, y, grp_ptr, grp_in, grp_w, grp_out, out_perm, edge_bias,
                                emap, geo, sched, opts, nnz);
}
#endif
#endif  // CONV_HAS_GMMA

#define FF_BM 64

// conv_fprop_ffma: fp32 version of conv_fprop_tc with FFMA. One thread block computes 64 output
// positions × B output channels of virtual output block j = blockIdx.y (blockIdx.x walks the 64-row
// tiles), reducing over the (input block, tap) pairs of column j with the 3-stage cp.async ring.
// 128 threads = 16 row groups × 8 column groups: thread (g, q) owns rows 4g..4g+3 and columns
// q, q+8, ... (B/8 of them), so a warp reads 8 consecutive weight columns (no bank conflict) and 4
// broadcast input rows. NHWC only; C and K multiples of B.
template <int B>
__global__ void __launch_bounds__(TC_THREADS)
conv_fprop_ffma(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                const int* __restrict__ col_ptr, const int* __restrict__ col_in, const int* __restrict__ col_w,
                const int* __restrict__ out_perm, const float* __restrict__ edge_bias,
                const int* __restrict__ emap, const int* __restrict__ geo) {
  constexpr int BM = FF_BM, LDA = B + 4, VPR = B / 4, CPT = B / 8;
  constexpr int ROWS_PER_PASS = TC_THREADS / VPR;
  constexpr int A_ITERS = (BM + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
  constexpr int W_VECS = B * VPR;
  constexpr int W_ITERS = (W_VECS + TC_THREADS - 1) / TC_THREADS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sA = reinterpret_cast<float*>(smem_raw);
  float* sW = sA + TC_STAGES * BM * LDA;

  const int N = geo[G_N], C = geo[G_C], K = geo[G_K];
  const int D = geo[G_D], H = geo[G_H], W = geo[G_W];
  const int OD = geo[G_OD], OH = geo[G_OH], OW = geo[G_OW];
  const int FR = geo[G_FR], FS = geo[G_FS];
  const int taps = geo[G_FT] * FR * FS;
  const i64 OS = (i64)OD * OH * OW;
  const i64 M = (i64)N * OS;
  const int j = blockIdx.y;
  const i64 m0 = (i64)blockIdx.x * BM;
  const int e0 = col_ptr[j];
  const int niter = (col_ptr[j + 1] - e0) * taps;
  const int tid = threadIdx.x, vec = tid % VPR;
  const int rg = tid / 8, cg = tid % 8;

  int s_n[A_ITERS], s_d[A_ITERS], s_h[A_ITERS], s_w[A_ITERS];
#pragma unroll
  for (int q = 0; q < A_ITERS; ++q) {
    const int row = tid / VPR + q * ROWS_PER_PASS;
    const i64 m = m0 + row;
    s_n[q] = -1; s_d[q] = 0; s_h[q] = 0; s_w[q] = 0;
    if (row < BM && m < M) {
      const i64 n = m / OS, p = m - n * OS;
      const int ow = (int)(p % OW), oh = (int)((p / OW) % OH), od = (int)(p / ((i64)OW * OH));
      s_n[q] = (int)n;
      s_d[q] = od * geo[G_SD] - geo[G_PD];
      s_h[q] = oh * geo[G_SH] - geo[G_PH];
      s_w[q] = ow * geo[G_SW] - geo[G_PW];
    }
  }

  auto load_stage = [&](int it, int buf) {
    const int eo = it / taps, tap = it - eo * taps;
    const int ft = tap / (FR * FS), fr = (tap / FS) % FR, fs = tap % FS;
    const int cblk = col_in[e0 + eo];
    const i64 wblk = col_w[e0 + eo];
    float* dstA = sA + buf * BM * LDA;
#pragma unroll
    for (int q = 0; q < A_ITERS; ++q) {
      const int row = tid / VPR + q * ROWS_PER_PASS;
      if (row < BM) {
        const int id = s_d[q] + ft * geo[G_DD], ih = s_h[q] + fr * geo[G_DH], iw = s_w[q] + fs * geo[G_DW];
        const bool ok = s_n[q] >= 0 && (unsigned)id < (unsigned)D && (unsigned)ih < (unsigned)H &&
                        (unsigned)iw < (unsigned)W;
        const float* src = ok ? x + ((((i64)s_n[q] * D + id) * H + ih) * W + iw) * C + cblk * B + vec * 4 : x;
        cp_async16(smem_u32(dstA + row * LDA + vec * 4), src, ok ? 16 : 0);
      }
    }
    const float* wsrc = w + (wblk * taps + tap) * (B * B);
    float* dstW = sW + buf * B * LDA;
#pragma unroll
    for (int q = 0; q < W_ITERS; ++q) {
      const int v = tid + q * TC_THREADS;
      if (v < W_VECS) {
        const int kr = v / VPR, cv = v % VPR;
        cp_async16(smem_u32(dstW + kr * LDA + cv * 4), wsrc + kr * B + cv * 4, 16);
      }
    }
  };

  float acc[4][CPT];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[r][c] = 0.f;

#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {
    if (s < niter) load_stage(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < niter; ++it) {
    cp_async_wait<TC_STAGES - 2>();
    __syncthreads();
    const int nx = it + TC_STAGES - 1;
    if (nx < niter) load_stage(nx, nx % TC_STAGES);
    cp_async_commit();
    const int buf = it % TC_STAGES;
    const float* bA = sA + buf * BM * LDA + rg * 4 * LDA;
    const float* bW = sW + buf * B * LDA + cg;
#pragma unroll 8
    for (int c = 0; c < B; ++c) {
      float a[4], b[CPT];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = bA[r * LDA + c];
#pragma unroll
      for (int q = 0; q < CPT; ++q) b[q] = bW[c * LDA + q * 8];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < CPT; ++q) acc[r][q] = fmaf(a[r], b[q], acc[r][q]);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const i64 m = m0 + rg * 4 + r;
    if (m >= M) continue;
    const int eb = emap != nullptr ? emap[m % OS] : -1;
    float* yrow = y + m * K;
#pragma unroll
    for (int q = 0; q < CPT; ++q) {
      const int kv = j * B + cg + 8 * q;
      const int k = out_perm != nullptr ? out_perm[kv] : kv;
      float v = acc[r][q];
      if (eb >= 0) v += edge_bias[(i64)eb * K + k];
      yrow[k] = v;
    }
  }
}
