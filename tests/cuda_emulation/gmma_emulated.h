// Host emulation of the wgmma helpers (kernels/gmma.cuh) that conv_fprop_halo<..., GM = true> uses (tests
// only). Asynchrony is modelled at its latest: wgmma.mma_async only records the operation (a pointer to the
// A registers, the B descriptor, the accumulators) and wgmma.wait_group performs the oldest committed groups,
// reading A from the registers and B from shared memory at that moment. So an A register reused, a weight
// slot refilled or an accumulator read before its group was waited for shows up as a wrong result. Every
// thread of the block must issue the same sequence (the kernel's warpgroups do): performing an operation
// exchanges the A fragments through a block barrier.
#pragma once
#include <deque>
#include <mutex>

// named barriers (bar.sync / bar.arrive id, count): one std::barrier per id, made by its first user
inline std::unique_ptr<std::barrier<>> emu_named[16];
inline std::mutex emu_named_mu;
inline std::barrier<>& emu_named_bar(int id, int n) {
  std::lock_guard<std::mutex> lock(emu_named_mu);
  if (!emu_named[id]) emu_named[id] = std::make_unique<std::barrier<>>(n);
  return *emu_named[id];
}
inline void nbar_sync(int id, int n) { emu_named_bar(id, n).arrive_and_wait(); }
inline void nbar_arrive(int id, int n) { (void)emu_named_bar(id, n).arrive(); }
// the threads that issue wgmma (a warp-specialized kernel's consumers): the A exchange's barrier
inline std::unique_ptr<std::barrier<>> emu_gmma_bar;
inline unsigned emu_gmma_n = 0;
#define EMU_GMMA_PARTICIPANTS(n)                                   \
  {                                                                \
    std::lock_guard<std::mutex> lock(emu_named_mu);                \
    if (emu_gmma_n != (n)) {                                       \
      emu_gmma_bar = std::make_unique<std::barrier<>>(n);          \
      emu_gmma_n = (n);                                            \
    }                                                              \
  }
inline void emu_gmma_sync() {
  if (emu_gmma_n) emu_gmma_bar->arrive_and_wait();
  else __syncthreads();
}

namespace gmma {

template <int ROW>
inline unsigned swizzle(unsigned row, unsigned chunk) {
  static_assert(ROW == 128 || ROW == 64 || ROW == 32, "swizzled rows of 32, 64 or 128 bytes");
  const unsigned lin = row * ROW + chunk * 16;
  constexpr unsigned MASK = ROW / 16 - 1;
  return lin ^ (((lin >> 7) & MASK) << 4);
}
template <int ROW>
inline unsigned long long desc(unsigned addr) {
  constexpr unsigned long long mode = ROW == 128 ? 1ull : ROW == 64 ? 2ull : 3ull;
  return (unsigned long long)((addr >> 4) & 0x3FFF) | (1ull << 16) | ((unsigned long long)((8 * ROW) >> 4) << 32) |
         (mode << 62);
}
template <int ROW, int LBO_BYTES>
inline unsigned long long desc_lbo(unsigned addr) {
  return desc<ROW>(addr) & ~(0x3FFFull << 16) | ((unsigned long long)(LBO_BYTES >> 4) << 16);
}
// a K-major operand without swizzle: 8 rows × 16 bytes a core matrix, LBO along k, SBO along the rows
inline unsigned long long desc_kmajor(unsigned addr, unsigned lbo, unsigned sbo) {
  return (unsigned long long)((addr >> 4) & 0x3FFF) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
         ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32);
}
inline void fence_proxy_async() {}
inline void wgmma_fence() {}
inline void fence_operand(float&) {}

struct EmuGmma {
  float* d;
  int n, tb, bf16, keep;
  const unsigned* a;
  unsigned long long b;
  unsigned long long ad = 0;  // A through a descriptor (GmmaSSz) when a is null
  int ta = 0;                 // that A: K-major (0) or M-major (1)
};

// The shared-memory byte address of element (mn, k) of an operand read through descriptor d (the PTX ISA's
// canonical layouts): K-major (rows mn) or MN-major (rows k); without swizzle, core matrices of 8 rows × 16
// bytes (K-major: LBO along k, SBO along the rows; MN-major: LBO along k, SBO along mn); swizzled (rows of ROW
// bytes, 8-row atoms): K-major rows ROW bytes apart, the next 8 rows SBO further; MN-major atoms of ROW / 2
// elements along mn LBO apart, the next 8 k-rows SBO further, and the address bits 4.. XOR bits 7..
inline unsigned emu_desc_addr(unsigned long long d, int mn, int k, int mn_major) {
  const unsigned start = (unsigned)(d & 0x3FFF) << 4, lbo = (unsigned)((d >> 16) & 0x3FFF) << 4;
  const unsigned sbo = (unsigned)((d >> 32) & 0x3FFF) << 4, mode = (unsigned)(d >> 62);
  if (mode == 0) {
    if (!mn_major) return start + (mn / 8) * sbo + (mn % 8) * 16 + (k / 8) * lbo + (k % 8) * 2;
    return start + (mn / 8) * sbo + (mn % 8) * 2 + (k / 8) * lbo + (k % 8) * 16;
  }
  const unsigned ROW = mode == 1 ? 128 : mode == 2 ? 64 : 32, MASK = ROW / 16 - 1, AW = ROW / 2;
  const unsigned lin = mn_major ? start + (mn / AW) * lbo + (mn % AW) * 2 + (k / 8) * sbo + (k % 8) * ROW
                                : start + (mn / 8) * sbo + (mn % 8) * ROW + k * 2;
  return lin ^ (((lin >> 7) & MASK) << 4);
}
inline thread_local std::vector<EmuGmma> emu_gmma_open;
inline thread_local std::deque<std::vector<EmuGmma>> emu_gmma_groups;
inline uint32_t emu_gmma_a[1024][4];

inline float emu_gmma_f(uint16_t bits, int bf16) {
  if (bf16) { uint32_t u = (uint32_t)bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
  return emu_f<__half>(bits);
}

// one m64nNk16 of the block's warpgroups: the A fragments of every thread exchanged, then each thread its
// accumulators (rows 16v + lane/4 (+8), columns 8q + 2(lane % 4) (+1) of its warpgroup's 64 × N)
inline void emu_gmma_perform(const EmuGmma& op) {
  const unsigned tid = threadIdx.x;
  for (int i = 0; i < 4; ++i) emu_gmma_a[tid][i] = op.a != nullptr ? op.a[i] : 0u;
  emu_gmma_sync();
  const unsigned wg0 = tid / 128 * 128, v = tid % 128 / 32, lane = tid % 32;
  // B[k][n]: N-major (tb = 1) or K-major (tb = 0)
  auto bval = [&](int k, int n) { return emu_gmma_f(emu_u16(emu_desc_addr(op.b, n, k, op.tb)), op.bf16); };
  auto aval = [&](int row, int k) {  // A[row][k] of the warpgroup: mma.sync's m16k16 fragment of warp row / 16
    if (op.a == nullptr) return emu_gmma_f(emu_u16(emu_desc_addr(op.ad, row, k, op.ta)), op.bf16);  // SS
    const int r16 = row % 16, g = r16 % 8, reg = r16 / 8 + 2 * (k / 8);
    const unsigned t = wg0 + (row / 16) * 32 + g * 4 + (k % 8) / 2;
    return emu_gmma_f((uint16_t)(emu_gmma_a[t][reg] >> (16 * (k % 2))), op.bf16);
  };
  for (int q = 0; q < op.n / 8; ++q)
    for (int h = 0; h < 2; ++h)
      for (int e = 0; e < 2; ++e) {
        const int row = 16 * v + lane / 4 + 8 * h, col = 8 * q + 2 * (lane % 4) + e;
        float s = op.keep ? op.d[q * 4 + h * 2 + e] : 0.f;
        for (int k = 0; k < 16; ++k) s += aval(row, k) * bval(k, col);
        op.d[q * 4 + h * 2 + e] = s;
      }
  emu_gmma_sync();
}

inline void wgmma_commit() {
  emu_gmma_groups.push_back(std::move(emu_gmma_open));
  emu_gmma_open.clear();
}
template <int N>
inline void wgmma_wait() {
  while ((int)emu_gmma_groups.size() > N) {
    for (const EmuGmma& op : emu_gmma_groups.front()) emu_gmma_perform(op);
    emu_gmma_groups.pop_front();
  }
}

template <typename T, int N, int TB>
struct GmmaRSz {
  static void run(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long b, int keep) {
    emu_gmma_open.push_back({d, N, TB, std::is_same<T, __nv_bfloat16>::value ? 1 : 0, keep, a, b});
  }
};

template <typename T, int N, int TA, int TB>
struct GmmaSSz {
  static void run(float (&d)[N / 2], unsigned long long a, unsigned long long b, int keep) {
    emu_gmma_open.push_back({d, N, TB, std::is_same<T, __nv_bfloat16>::value ? 1 : 0, keep, nullptr, b, a, TA});
  }
};

}  // namespace gmma
