// Runs one launch of a kernels/conv.cu kernel on the CPU (tests only): conv_driver IN OUT.
// IN: name, grid[3], block[3], smem, then the arguments (arrays with their bytes, or scalars);
// OUT: every array argument's bytes after the launch, in order.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "conv.cu"

thread_local emu_dim3 threadIdx, blockIdx;
emu_dim3 blockDim, gridDim;
alignas(16) unsigned char smem_raw[256 * 1024];
unsigned emu_dynamic_smem = 256 * 1024;  // the launch's dynamic shared memory bytes (bsmm's cp.async checks it)
EmuBlock emu_block;
uint32_t emu_scratch[32][32][8];
thread_local std::vector<EmuCopy> emu_open_group;
thread_local std::deque<std::vector<EmuCopy>> emu_groups;

struct Arg { int kind; std::vector<unsigned char> data; long long i; unsigned long long u; float f; };
static std::vector<Arg> args;

template <typename T> T* P(int k) {
  const Arg& a = args[k];
  if (a.kind == 3) return a.u ? (T*)(uintptr_t)a.u : nullptr;  // only null is meaningful
  return (T*)a.data.data();
}
static int I(int k) { return (int)args[k].i; }

static void reset_block(unsigned bx) {
  std::memset(smem_raw, 0xcd, sizeof(smem_raw));  // garbage, as real shared memory
  emu_block.block = std::make_unique<std::barrier<>>(bx);
  emu_block.warps.clear();
  for (unsigned w = 0; w < (bx + 31) / 32; ++w)
    emu_block.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, bx - 32 * w)));
}

struct ResetNext {
  unsigned bx;
  void operator()() noexcept { reset_block(bx); }
};

// One OS thread per CUDA thread of a block, reused for every block of the grid (blocks run in order).
static void launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, const std::function<void()>& body) {
  gridDim = {gx, gy, gz};
  blockDim = {bx, 1, 1};
  reset_block(bx);
  std::barrier<ResetNext> block_done(bx, ResetNext{bx});
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < bx; ++t)
    ts.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
          for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, z};
            emu_open_group.clear();
            emu_groups.clear();
            body();
            emu_block.warps[t / 32]->arrive_and_drop();
            emu_block.block->arrive_and_drop();
            block_done.arrive_and_wait();
          }
    });
  for (auto& th : ts) th.join();
}

#define FPROP_DIRECT(T) {"conv_fprop_direct<" #T ">", [] { return [] { conv_fprop_direct<T>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), P<i64>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9)); }; }}
#define BPROP_DIRECT(T) {"conv_bprop_direct<" #T ">", [] { return [] { conv_bprop_direct<T>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), P<i64>(5), P<int>(6), P<int>(7)); }; }}
#define UPDAT_DIRECT(T, O) {"conv_updat_direct<" #T ", " #O ">", [] { return [] { conv_updat_direct<T, O>(P<T>(0), P<T>(1), P<O>(2), P<int>(3), P<int>(4), P<i64>(5), P<int>(6), I(7), P<int>(8)); }; }}
#define EDGE_UPDAT(T, O) {"edge_bias_updat<" #T ", " #O ">", [] { return [] { edge_bias_updat<T, O>(P<T>(0), P<O>(1), P<int>(2), P<int>(3), I(4), P<int>(5)); }; }}
#define FPROP_TC(T, B) {"conv_fprop_tc<" #T ", " #B ">", [] { return [] { conv_fprop_tc<T, B>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), P<int>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9)); }; }}

#define UPDAT_TC(T, B) {"conv_updat_tc<" #T ", " #B ">", [] { return [] { conv_updat_tc<T, B>(P<T>(0), P<T>(1), P<float>(2), P<int>(3), P<int>(4), I(5), I(6), P<int>(7)); }; }}
#define UPDAT_REDUCE(O) {"conv_updat_reduce<" #O ">", [] { return [] { conv_updat_reduce<O>(P<float>(0), P<O>(1), I(2), args[3].i); }; }}

#define FPROP_HALO(T, B, TW) {"conv_fprop_halo<" #T ", " #B ", " #TW ">", [] { return [] { conv_fprop_halo<T, B, TW>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), P<int>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9), P<unsigned>(10), I(11)); }; }}

#define FPROP_FFMA(B) {"conv_fprop_ffma<" #B ">", [] { return [] { conv_fprop_ffma<B>(P<float>(0), P<float>(1), P<float>(2), P<int>(3), P<int>(4), P<int>(5), P<int>(6), P<float>(7), P<int>(8), P<int>(9)); }; }}

static const std::map<std::string, std::function<std::function<void()>()>> kernels = {
  FPROP_DIRECT(float), FPROP_DIRECT(__half), FPROP_DIRECT(__nv_bfloat16),
  BPROP_DIRECT(float), BPROP_DIRECT(__half), BPROP_DIRECT(__nv_bfloat16),
  UPDAT_DIRECT(float, float), UPDAT_DIRECT(__half, __half), UPDAT_DIRECT(__half, float),
  UPDAT_DIRECT(__nv_bfloat16, __nv_bfloat16), UPDAT_DIRECT(__nv_bfloat16, float),
  EDGE_UPDAT(float, float), EDGE_UPDAT(__half, __half), EDGE_UPDAT(__half, float),
  EDGE_UPDAT(__nv_bfloat16, __nv_bfloat16), EDGE_UPDAT(__nv_bfloat16, float),
  FPROP_TC(__half, 16), FPROP_TC(__half, 32), FPROP_TC(__half, 64),
  FPROP_TC(__nv_bfloat16, 16), FPROP_TC(__nv_bfloat16, 32), FPROP_TC(__nv_bfloat16, 64),
  UPDAT_TC(__half, 16), UPDAT_TC(__half, 32), UPDAT_TC(__half, 64),
  UPDAT_TC(__nv_bfloat16, 16), UPDAT_TC(__nv_bfloat16, 32), UPDAT_TC(__nv_bfloat16, 64),
  FPROP_HALO(__half, 16, 8), FPROP_HALO(__half, 16, 16), FPROP_HALO(__half, 16, 32),
  FPROP_HALO(__half, 32, 8), FPROP_HALO(__half, 32, 16), FPROP_HALO(__half, 32, 32),
  FPROP_HALO(__nv_bfloat16, 16, 8), FPROP_HALO(__nv_bfloat16, 16, 16), FPROP_HALO(__nv_bfloat16, 16, 32),
  FPROP_HALO(__nv_bfloat16, 32, 8), FPROP_HALO(__nv_bfloat16, 32, 16), FPROP_HALO(__nv_bfloat16, 32, 32),
  FPROP_FFMA(8), FPROP_FFMA(16), FPROP_FFMA(32), FPROP_FFMA(64),
  UPDAT_REDUCE(float), UPDAT_REDUCE(__half), UPDAT_REDUCE(__nv_bfloat16),
};

int main(int argc, char** argv) {
  if (argc != 3) { std::cerr << "usage: conv_driver IN OUT\n"; return 2; }
  std::ifstream in(argv[1], std::ios::binary);
  auto rd = [&](void* p, size_t n) { in.read((char*)p, n); if (!in) { std::cerr << "short input\n"; std::exit(2); } };
  int len; rd(&len, 4);
  std::string name(len, ' '); rd(name.data(), len);
  int cfg[7]; rd(cfg, sizeof(cfg));
  int n; rd(&n, 4);
  args.resize(n);
  for (auto& a : args) {
    rd(&a.kind, 4);
    if (a.kind == 0) { long long nb; rd(&nb, 8); a.data.resize(nb + 16); rd(a.data.data(), nb); a.data.resize(nb); }
    else if (a.kind == 1) { int v; rd(&v, 4); a.i = v; }
    else if (a.kind == 2) { rd(&a.i, 8); }
    else if (a.kind == 3) { rd(&a.u, 8); }
    else { rd(&a.f, 4); }
  }
  auto it = kernels.find(name);
  if (it == kernels.end()) { std::cerr << "unknown kernel " << name << "\n"; return 3; }
  if (cfg[4] != 1 || cfg[5] != 1) { std::cerr << "1-D blocks only\n"; return 3; }
  emu_dynamic_smem = cfg[6] > 0 ? (unsigned)cfg[6] : 256 * 1024;
  launch(cfg[0], cfg[1], cfg[2], cfg[3], it->second());
  std::ofstream out(argv[2], std::ios::binary);
  for (auto& a : args)
    if (a.kind == 0) { long long nb = a.data.size(); out.write((char*)&nb, 8); out.write((char*)a.data.data(), nb); }
  return 0;
}
