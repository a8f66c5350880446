// Host emulation of the PTX wrappers of kernels/bsmm.cu (tests only): the same operations as
// conv_ptx_emulated.h (whose deferred cp.async and m16n8k16 are reused), with bsmm.cu's signatures
// (generic pointers into shared memory), plus ldmatrix .x1/.x2 and mma.sync m16n8k8 built on them
// (PTX ISA fragment layouts). Misaligned cp.async or ldmatrix addresses abort, as they fault on the GPU.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "conv_ptx_emulated.h"

struct int2 { int x, y; };
struct float2 { float x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline int2 make_int2(int a, int b) { return {a, b}; }
struct alignas(16) float4 { float x, y, z, w; };

extern unsigned emu_dynamic_smem;

inline void emu_require(bool ok, const char* what) {
  if (!ok) { fprintf(stderr, "%s (thread %u, block %u,%u)\n", what, threadIdx.x, blockIdx.x, blockIdx.y); std::abort(); }
}

inline void cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned off = smem_u32(dst);
  emu_require(off % 16 == 0 && off + 16 <= emu_dynamic_smem,
              "cp.async: destination not 16-byte aligned or past the launch's dynamic shared memory");
  emu_require(src_bytes == 0 || (src_bytes == 16 && (uintptr_t)src % 16 == 0), "cp.async: misaligned source");
  cp_async16(off, src, src_bytes);
}

inline void opaque_ptr(const float*&) {}

// ldmatrix .xNUM (conv_ptx_emulated.h's .x4): lanes 0 .. 8·NUM-1 give the row addresses of the NUM
// matrices; the other lanes' addresses are ignored, so each lane here reads the .x4 with lane
// l % (8·NUM)'s address and keeps the first NUM registers.
template <int NUM, bool TRANS> inline void emu_ldmatrix_n(unsigned* r, const void* p) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  emu_scratch[w][l][1] = smem_u32(p);
  emu_warp_sync();
  const unsigned addr = emu_scratch[w][l % (8 * NUM)][1];
  emu_warp_sync();
  emu_require(addr % 16 == 0, "ldmatrix: row address not 16-byte aligned");
  unsigned r4[4];
  emu_ldmatrix<TRANS>(r4, addr);
  for (int i = 0; i < NUM; ++i) r[i] = r4[i];
}
template <bool TRANS> inline void ldmatrix_x4(unsigned (&r)[4], const void* p) { emu_ldmatrix_n<4, TRANS>(r, p); }
template <bool TRANS> inline void ldmatrix_x2(unsigned (&r)[2], const void* p) { emu_ldmatrix_n<2, TRANS>(r, p); }
template <bool TRANS> inline void ldmatrix_x1(unsigned& r, const void* p) { emu_ldmatrix_n<1, TRANS>(&r, p); }

// mma.sync m16n8k8 is m16n8k16 with A[:, 8:16] = B[8:16, :] = 0: its a0, a1 (A[g][2q, 2q+1], A[g+8][2q, 2q+1])
// and b0 (B[2q, 2q+1][g]) sit where m16n8k16 has them (g = lane/4, q = lane%4), and 0·0 adds nothing.
template <typename T> struct Mma {
  static void k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) { mma16816<T>(c, a, b0, b1); }
  static void k8(float (&c)[4], const unsigned (&a)[2], unsigned b0) { mma16816<T>(c, {a[0], a[1], 0u, 0u}, b0, 0u); }
};
