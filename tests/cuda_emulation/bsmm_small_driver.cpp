// Runs one launch of a kernels/bsmm_small.cu kernel on the CPU (tests only): bsmm_small_driver IN OUT.
// conv_driver.cpp's emulated launch and file format; tests/test_matmul.py writes bsmm_small.cu without its
// PTX wrappers as bsmm_small_emu.cu (bsmm_ptx_emulated.h stands in for them) and the specializations it
// launches as bsmm_small_kernels.inc (XW_SMALL(...) lines). Blocks run one after another, so the split
// columns' arrival counters see every order the kernel's in-launch reduction allows only for that order;
// the arithmetic (part order, accumulate, counter reset) is what this checks.
#define main conv_driver_main
#include "conv_driver.cpp"
#undef main

#include "bsmm_ptx_emulated.h"

#include <map>
#include <mutex>

struct int4 { int x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };  // SWZ = 3: 16-byte shared loads
// float4: bsmm_ptx_emulated.h
// __threadfence, atomicAdd: cuda_host_shim.h (through conv_driver.cpp)
inline float __ldcg(const float* p) { return *p; }
inline unsigned long long evict_first_policy() { return 0; }  // L2 hints do not change results
inline void cp_async16_hint(void* dst, const void* src, unsigned long long) { cp_async16(dst, src, 16); }
inline void cp_async16_full(void* dst, const void* src) { cp_async16(dst, src, 16); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// __syncwarp: the warp's barrier. mbarriers and 1-D bulk copies (xw_small_ring, BULK = 1): a bulk copy is
// recorded on its mbarrier and its bytes counted; the phase completes when the expected arrivals and
// bytes (arrive.expect_tx) are in, and only then do the copies land (the latest moment the hardware may),
// performed by the first thread that waits on that phase. A missing wait shows up as stale data, a byte
// count that never matches as a hang (caught by the test's timeout), more bytes than expected aborts.
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_sync(); }
struct EmuMbar {
  int arrivals = 1, arrived = 0;
  long long expect = 0, pushed = 0;
  unsigned phase = 0;
  std::vector<EmuCopy> copies;
};
static std::mutex emu_mbar_lock;
static std::map<const void*, EmuMbar> emu_mbars;
inline void mbar_init(unsigned long long* bar, int count) {
  std::lock_guard<std::mutex> g(emu_mbar_lock);
  emu_mbars[bar] = EmuMbar{count};
}
inline void mbar_init_fence() {}
inline void mbar_expect_tx(unsigned long long* bar, int bytes) {
  std::lock_guard<std::mutex> g(emu_mbar_lock);
  EmuMbar& b = emu_mbars.at(bar);
  b.expect += bytes;
  b.arrived += 1;
  emu_require(b.arrived <= b.arrivals, "mbarrier: more arrivals than its count in one phase");
}
inline void bulk_g2s(void* dst, const void* src, int bytes, unsigned long long* bar) {
  const unsigned off = smem_u32(dst);
  emu_require(off % 16 == 0 && bytes % 16 == 0 && bytes > 0 && off + bytes <= emu_dynamic_smem,
              "cp.async.bulk: destination or size not a multiple of 16 B, or past the dynamic shared memory");
  emu_require((uintptr_t)src % 16 == 0, "cp.async.bulk: source not 16-byte aligned");
  std::lock_guard<std::mutex> g(emu_mbar_lock);
  EmuMbar& b = emu_mbars.at(bar);
  b.copies.push_back({off, src, bytes});
  b.pushed += bytes;
}
inline void bulk_g2s_hint(void* dst, const void* src, int bytes, unsigned long long* bar, unsigned long long) {
  bulk_g2s(dst, src, bytes, bar);
}
inline void mbar_wait(unsigned long long* bar, unsigned parity) {
  for (;;) {
    {
      std::lock_guard<std::mutex> g(emu_mbar_lock);
      EmuMbar& b = emu_mbars.at(bar);
      if ((b.phase & 1u) != (parity & 1u)) return;  // the phase of this parity has completed
      if (b.arrived == b.arrivals) {
        emu_require(b.pushed <= b.expect, "mbarrier: more bulk-copy bytes than expected");
        if (b.pushed == b.expect) {
          for (const EmuCopy& c : b.copies) std::memcpy(smem_raw + c.dst, c.src, c.bytes);
          b.copies.clear();
          b.arrived = 0;
          b.expect = b.pushed = 0;
          b.phase += 1;
          return;
        }
      }
    }
    std::this_thread::yield();
  }
}

#undef __shared__
#define __shared__ static  // static shared variables: one copy for the block's threads (blocks run in order)
using std::min;
#include "bsmm_small_emu.cu"  // kernels/bsmm_small.cu without its PTX wrappers (written by the test)

static long long L(int k) { return args[k].i; }

// argument list as cusparseblocks/_matmul_gpu.py launches it
#define XW_SMALL(T, TO, ...) {"xw_small<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { return [] { \
  xw_small<T, TO, __VA_ARGS__>(P<T>(0), P<T>(1), P<TO>(2), P<int>(3), P<int>(4), P<int4>(5), P<int>(6), \
  P<int>(7), I(8), P<int2>(9), P<float>(10), P<unsigned>(11), L(12), L(13), L(14), I(15)); }; }}

#define XW_SMALL_RING(T, TO, ...) {"xw_small_ring<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { return [] { \
  xw_small_ring<T, TO, __VA_ARGS__>(P<T>(0), P<T>(1), P<TO>(2), P<int>(3), P<int>(4), P<int4>(5), P<int>(6), \
  P<int>(7), I(8), P<int2>(9), P<float>(10), P<unsigned>(11), L(12), L(13), L(14), I(15)); }; }}

#define XW_SMALL_REDUCE(TO, ...) {"xw_small_reduce<" #TO ", " #__VA_ARGS__ ">", [] { return [] { \
  xw_small_reduce<TO, __VA_ARGS__>(P<float>(0), P<int2>(1), P<TO>(2), L(3), L(4), I(5)); }; }}

static const int bsmm_small_registered = [] {
  using Table = std::map<std::string, std::function<std::function<void()>()>>;
  const_cast<Table&>(kernels).insert({
#include "bsmm_small_kernels.inc"
  });
  return 0;
}();

int main(int argc, char** argv) { return conv_driver_main(argc, argv); }
