// Host emulation of the PTX helpers of kernels/conv.cu (tests only), following the PTX ISA fragment
// layouts: ldmatrix (.x4, .trans) and mma.sync m16n8k16 (row.col, f32 accumulators). cp.async copies
// are deferred until cp.async.wait_group lets them complete (the latest moment the hardware may), so a
// missing wait or barrier shows up as stale data.
#pragma once
#include <deque>

inline unsigned smem_u32(const void* p) {
  return (unsigned)((const unsigned char*)p - smem_raw);
}

struct EmuCopy { unsigned dst; const void* src; int bytes; };
extern thread_local std::vector<EmuCopy> emu_open_group;
extern thread_local std::deque<std::vector<EmuCopy>> emu_groups;

inline void cp_async16(unsigned dst, const void* src, int src_bytes) { emu_open_group.push_back({dst, src, src_bytes}); }
inline void cp_async_commit() { emu_groups.push_back(std::move(emu_open_group)); emu_open_group.clear(); }
template <int N> inline void cp_async_wait() {
  while ((int)emu_groups.size() > N) {
    for (const EmuCopy& c : emu_groups.front()) {
      std::memset(smem_raw + c.dst, 0, 16);
      if (c.bytes) std::memcpy(smem_raw + c.dst, c.src, c.bytes);
    }
    emu_groups.pop_front();
  }
}

inline uint16_t emu_u16(unsigned addr) { uint16_t v; std::memcpy(&v, smem_raw + addr, 2); return v; }

template <bool TRANS> inline void emu_ldmatrix(unsigned (&r)[4], unsigned addr) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  emu_scratch[w][l][0] = addr;
  emu_warp_sync();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!TRANS) {  // thread l: row l/4, columns 2(l%4), 2(l%4)+1 of matrix i
      const unsigned row = emu_scratch[w][i * 8 + l / 4][0];
      lo = emu_u16(row + 2 * (2 * (l % 4)));
      hi = emu_u16(row + 2 * (2 * (l % 4) + 1));
    } else {       // thread l: rows 2(l%4), 2(l%4)+1 at column l/4 of matrix i
      lo = emu_u16(emu_scratch[w][i * 8 + 2 * (l % 4)][0] + 2 * (l / 4));
      hi = emu_u16(emu_scratch[w][i * 8 + 2 * (l % 4) + 1][0] + 2 * (l / 4));
    }
    r[i] = (unsigned)lo | ((unsigned)hi << 16);
  }
  emu_warp_sync();
}
inline void ldmatrix_x4(unsigned (&r)[4], unsigned addr) { emu_ldmatrix<false>(r, addr); }
inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) { emu_ldmatrix<true>(r, addr); }

template <typename T> inline float emu_f(uint16_t bits) { T h; std::memcpy(&h, &bits, 2); return to_float<T>(h); }

template <typename T> inline void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) emu_scratch[w][l][i] = a[i];
  emu_scratch[w][l][4] = b0;
  emu_scratch[w][l][5] = b1;
  emu_warp_sync();
  float A[16][16], B[16][8];
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    for (int h = 0; h < 2; ++h) {
      const int sh = 16 * h;
      A[g][2 * q + h] = emu_f<T>((uint16_t)(emu_scratch[w][t][0] >> sh));
      A[g + 8][2 * q + h] = emu_f<T>((uint16_t)(emu_scratch[w][t][1] >> sh));
      A[g][2 * q + 8 + h] = emu_f<T>((uint16_t)(emu_scratch[w][t][2] >> sh));
      A[g + 8][2 * q + 8 + h] = emu_f<T>((uint16_t)(emu_scratch[w][t][3] >> sh));
      B[2 * q + h][g] = emu_f<T>((uint16_t)(emu_scratch[w][t][4] >> sh));
      B[2 * q + 8 + h][g] = emu_f<T>((uint16_t)(emu_scratch[w][t][5] >> sh));
    }
  }
  emu_warp_sync();
  const int g = l / 4, q = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * q + (i % 2);
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    d[i] = s;
  }
}
