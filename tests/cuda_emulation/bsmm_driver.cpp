// Runs one launch of a kernels/bsmm.cu tensor-core or FFMA kernel on the CPU (tests only): bsmm_driver IN OUT.
// conv_driver.cpp's emulated launch, file format and kernel table, extended with bsmm's kernels:
// tests/test_matmul.py writes bsmm.cu without its PTX wrappers as bsmm_emu.cu (bsmm_ptx_emulated.h
// stands in for them) and the specializations it launches as bsmm_kernels.inc (XW_TC(...) lines, ...).
// updat_tc's pointer tables (arguments 2, 3) hold byte offsets into the first two array arguments (the
// x and dy blobs of all pairs), made into addresses here before the launch.
#define main conv_driver_main
#include "conv_driver.cpp"
#undef main

#include "bsmm_ptx_emulated.h"
#undef __shared__
#define __shared__ static  // static shared arrays: one copy for the block's threads (blocks run in order)
using std::min;
#include "bsmm_emu.cu"     // kernels/bsmm.cu without its PTX wrappers (written by the test)

static long long L(int k) { return args[k].i; }

static void relocate_pair_tables() {
  for (int t = 0; t < 2; t++)
    for (size_t p = 0; p < args[t + 2].data.size() / 8; p++)
      P<long long>(t + 2)[p] += (long long)(uintptr_t)args[t].data.data();
}

// argument lists as cusparseblocks/_matmul_gpu.py launches them
#define XW_TC(T, TO, ...) {"xw_tc<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { return [] { xw_tc<T, TO, __VA_ARGS__>( \
  P<T>(0), P<T>(1), P<TO>(2), P<int>(3), P<int2>(4), L(5), L(6), L(7), I(8)); }; }}
#define XW_WIDE_TC(T, TO, ...) {"xw_wide_tc<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { return [] { \
  xw_wide_tc<T, TO, __VA_ARGS__>(P<T>(0), P<T>(1), P<TO>(2), P<int>(3), P<int>(4), P<unsigned>(5), P<int>(6), \
  L(7), L(8), L(9), I(10)); }; }}
#define UPDAT_TC(T, TO, ...) {"updat_tc<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { relocate_pair_tables(); \
  return [] { updat_tc<T, TO, __VA_ARGS__>(P<long long>(2), P<long long>(3), P<long long>(4), P<long long>(5), \
  I(6), P<int>(7), P<int>(8), P<int>(9), P<TO>(10), P<float>(11), I(12), L(13), L(14), I(15)); }; }}
#define UPDAT_TILE_TC(T, TO, ...) {"updat_tile_tc<" #T ", " #TO ", " #__VA_ARGS__ ">", [] { relocate_pair_tables(); \
  return [] { updat_tile_tc<T, TO, __VA_ARGS__>(P<long long>(2), P<long long>(3), P<long long>(4), \
  P<long long>(5), I(6), P<int>(7), P<int>(8), P<int>(9), P<int>(10), P<TO>(11), P<float>(12), I(13), L(14), \
  L(15), I(16)); }; }}
#define XW_FFMA(...) {"xw_ffma<" #__VA_ARGS__ ">", [] { return [] { xw_ffma<__VA_ARGS__>( \
  P<float>(0), P<float>(1), P<float>(2), P<int>(3), P<int2>(4), P<int>(5), L(6), L(7), L(8), I(9)); }; }}
#define UPDAT_FFMA(...) {"updat_ffma<" #__VA_ARGS__ ">", [] { relocate_pair_tables(); \
  return [] { updat_ffma<__VA_ARGS__>(P<long long>(2), P<long long>(3), P<long long>(4), P<long long>(5), \
  I(6), P<int>(7), P<int>(8), P<int>(9), P<float>(10), P<float>(11), I(12), L(13), L(14), I(15)); }; }}
#define UPDAT_REDUCE(TO) {"updat_reduce<" #TO ">", [] { return [] { \
  updat_reduce<TO>(P<float>(0), P<TO>(1), I(2), L(3), I(4)); }; }}

static const int bsmm_registered = [] {
  using Table = std::map<std::string, std::function<std::function<void()>()>>;
  const_cast<Table&>(kernels).insert({
#include "bsmm_kernels.inc"
  });
  return 0;
}();

int main(int argc, char** argv) { return conv_driver_main(argc, argv); }
