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

struct int4 { int x, y, z, w; };
// float4: bsmm_ptx_emulated.h
inline void __threadfence() {}
inline float __ldcg(const float* p) { return *p; }
inline unsigned long long evict_first_policy() { return 0; }  // L2 hints do not change results
inline void cp_async16_hint(void* dst, const void* src, unsigned long long) { cp_async16(dst, src, 16); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {  // one thread of a block calls it; blocks run in order
  const unsigned old = *p;
  *p = old + v;
  return old;
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

static const int bsmm_small_registered = [] {
  using Table = std::map<std::string, std::function<std::function<void()>()>>;
  const_cast<Table&>(kernels).insert({
#include "bsmm_small_kernels.inc"
  });
  return 0;
}();

int main(int argc, char** argv) { return conv_driver_main(argc, argv); }
