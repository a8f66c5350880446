// Runs kernels/bsmm_tf32.cu on the CPU (tests only): tests/test_matmul_tf32.py writes the kernel source
// without its PTX wrappers as bsmm_tf32_emu.cu and the test calls as cases.inc, then builds this file.
// Each CUDA thread of a block is a std::thread; __syncthreads and the warp-wide mma are std::barriers;
// cp.async copies are deferred until cp.async.wait_group lets them complete (the latest moment the
// hardware may), so a missing wait or barrier shows up as stale data; shared memory starts as garbage.
// mma.sync m16n8k8.tf32 follows the PTX ISA fragment layout; cvt.rna.tf32 rounds as the hardware does.
// Every case compares the kernel's output with a float64 reference (relative error bound 3e-3).
#include <cstdio>
#include <random>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
using std::min;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
typedef long long i64;
struct int2 { int x, y; };
struct float2 { float x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
extern thread_local emu_dim3 threadIdx, blockIdx;
extern emu_dim3 blockDim, gridDim;
extern unsigned char smem_raw[] __attribute__((aligned(16)));
struct EmuBlock { std::unique_ptr<std::barrier<>> block; std::vector<std::unique_ptr<std::barrier<>>> warps; };
extern EmuBlock emu_block;
extern uint32_t emu_scratch[32][32][8];
inline void __syncthreads() { emu_block.block->arrive_and_wait(); }
inline void emu_warp_sync() { emu_block.warps[threadIdx.x / 32]->arrive_and_wait(); }
struct EmuCopy { void* dst; const void* src; int bytes; };
extern thread_local std::vector<EmuCopy> emu_open_group;
extern thread_local std::deque<std::vector<EmuCopy>> emu_groups;
inline void tf32_cp_async16(void* dst, const void* src, int n) {
  if ((uintptr_t)dst % 16 || (n && (uintptr_t)src % 16)) { fprintf(stderr, "misaligned cp.async\n"); std::abort(); }
  emu_open_group.push_back({dst, src, n});
}
inline void tf32_cp_async_commit() { emu_groups.push_back(std::move(emu_open_group)); emu_open_group.clear(); }
template <int N> inline void tf32_cp_async_wait() {
  while ((int)emu_groups.size() > N) {
    for (auto& c : emu_groups.front()) { std::memset(c.dst, 0, 16); if (c.bytes) std::memcpy(c.dst, c.src, c.bytes); }
    emu_groups.pop_front();
  }
}
inline unsigned tf32_round(float v) { unsigned u; std::memcpy(&u, &v, 4); return (u + 0x1000u) & 0xffffe000u; }
inline float emu_bits(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline void tf32_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) emu_scratch[w][l][i] = a[i];
  emu_scratch[w][l][4] = b0; emu_scratch[w][l][5] = b1;
  emu_warp_sync();
  float A[16][8], B[8][8];
  for (int t = 0; t < 32; ++t) {
    int g = t / 4, q = t % 4;
    A[g][q] = emu_bits(emu_scratch[w][t][0]); A[g + 8][q] = emu_bits(emu_scratch[w][t][1]);
    A[g][q + 4] = emu_bits(emu_scratch[w][t][2]); A[g + 8][q + 4] = emu_bits(emu_scratch[w][t][3]);
    B[q][g] = emu_bits(emu_scratch[w][t][4]); B[q + 4][g] = emu_bits(emu_scratch[w][t][5]);
  }
  emu_warp_sync();
  int g = l / 4, q = l % 4;
  for (int i = 0; i < 4; ++i) {
    int row = g + 8 * (i / 2), col = 2 * q + (i % 2);
    float s = c[i];
    for (int k = 0; k < 8; ++k) s += A[row][k] * B[k][col];
    c[i] = s;
  }
}
#include "bsmm_tf32_emu.cu"  // kernels/bsmm_tf32.cu without its PTX wrappers (written by the test)
thread_local emu_dim3 threadIdx, blockIdx;
emu_dim3 blockDim, gridDim;
alignas(16) unsigned char smem_raw[256 * 1024];
EmuBlock emu_block;
uint32_t emu_scratch[32][32][8];
thread_local std::vector<EmuCopy> emu_open_group;
thread_local std::deque<std::vector<EmuCopy>> emu_groups;

static void reset_block(unsigned bx) {
  std::memset(smem_raw, 0xcd, sizeof(smem_raw));
  emu_block.block = std::make_unique<std::barrier<>>(bx);
  emu_block.warps.clear();
  for (unsigned w = 0; w < (bx + 31) / 32; ++w) emu_block.warps.push_back(std::make_unique<std::barrier<>>(32));
}
struct ResetNext { unsigned bx; void operator()() noexcept { reset_block(bx); } };
static void launch(unsigned gx, unsigned gy, unsigned bx, const std::function<void()>& body) {
  gridDim = {gx, gy, 1}; blockDim = {bx, 1, 1};
  reset_block(bx);
  std::barrier<ResetNext> done(bx, ResetNext{bx});
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < bx; ++t)
    ts.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        blockIdx = {x, y, 1};
        emu_open_group.clear(); emu_groups.clear();
        body();
        emu_block.warps[t / 32]->arrive_and_drop();
        emu_block.block->arrive_and_drop();
        done.arrive_and_wait();
      }
    });
  for (auto& th : ts) th.join();
}

static std::mt19937 gen(1234);
static float rnd() { return std::normal_distribution<float>(0.f, 1.f)(gen); }
struct Layout { int kb, mb; std::vector<int> rows, cols; };
// A random mask with block (0, 0), an empty last block row and an empty block column mb - 2.
static Layout make_layout(int kb, int mb) {
  Layout L{kb, mb, {}, {}};
  for (int r = 0; r < kb; r++)
    for (int c = 0; c < mb; c++) {
      bool on = gen() % 2 || (r == 0 && c == 0);
      if ((kb > 2 && r == kb - 1) || (mb > 2 && c == mb - 2)) on = false;
      if (on) { L.rows.push_back(r); L.cols.push_back(c); }
    }
  return L;
}
static int fails = 0;
static void check(const char* what, const std::vector<float>& a, const std::vector<double>& r) {
  double mx = 0, err = 0; bool nan = false;
  for (size_t i = 0; i < r.size(); i++) { mx = std::max(mx, std::fabs(r[i])); if (!std::isfinite(a[i])) nan = true; err = std::max(err, std::fabs(a[i] - r[i])); }
  bool ok = !nan && err <= 3e-3 * std::max(mx, 1e-30);
  if (!ok) fails++;
  printf("%-70s %s  max_err/max_ref=%.2e%s\n", what, ok ? "ok  " : "FAIL", err / mx, nan ? " NaN" : "");
}

template <int BS, int BM, int WM, int WN, int ST, int AXIS, int TRANS, int ALIGNED>
void test_xw(int kb, int mb, long long N, int accumulate) {
  Layout L = make_layout(kb, mb);
  int nnz = L.rows.size();
  long long fin = (TRANS ? mb : kb) * BS, fout = (TRANS ? kb : mb) * BS;
  int nout = TRANS ? kb : mb;
  std::vector<int> offsets(nout + 1, 0); std::vector<int2> ent;
  for (int c = 0; c < nout; c++) {
    for (int k = 0; k < nnz; k++) {
      if (!TRANS && L.cols[k] == c) ent.push_back({L.rows[k], k});
      if (TRANS && L.rows[k] == c) ent.push_back({L.cols[k], k});
    }
    offsets[c + 1] = ent.size();
  }
  std::vector<float> xbuf(N * fin + 8), wbuf((size_t)nnz * BS * BS + 8), y(N * fout);
  int off = ALIGNED ? 0 : 1;
  float* x = xbuf.data() + off; float* w = wbuf.data() + off;
  for (long long i = 0; i < N * fin; i++) x[i] = rnd();
  for (long long i = 0; i < (long long)nnz * BS * BS; i++) w[i] = 0.2f * rnd();
  std::vector<double> ref(N * fout, 0.0);
  for (auto& v : y) v = accumulate ? rnd() : NAN;
  for (long long i = 0; i < N * fout; i++) ref[i] = accumulate ? y[i] : 0.0;
  auto X = [&](long long n, long long f) { return AXIS == 1 ? x[n * fin + f] : x[f * N + n]; };
  for (int c = 0; c < nout; c++) for (int e = offsets[c]; e < offsets[c + 1]; e++) {
    int r = ent[e].x, k = ent[e].y;
    for (long long n = 0; n < N; n++) for (int j = 0; j < BS; j++) {
      double s = 0;
      for (int i = 0; i < BS; i++) s += (double)X(n, (long long)r * BS + i) * (TRANS ? w[((long long)k * BS + j) * BS + i] : w[((long long)k * BS + i) * BS + j]);
      long long f = (long long)c * BS + j;
      ref[AXIS == 1 ? n * fout + f : f * N + n] += s;
    }
  }
  launch(nout, (N + BM - 1) / BM, WM * WN * 32, [&] {
    xw_tf32<BS, BM, WM, WN, ST, AXIS, TRANS, ALIGNED>(x, w, y.data(), offsets.data(), ent.data(), N, fin, fout, accumulate);
  });
  char name[200];
  snprintf(name, 200, "xw_tf32<%d,%d,%d,%d,%d,ax%d,tr%d,al%d> N=%lld acc=%d", BS, BM, WM, WN, ST, AXIS, TRANS, ALIGNED, N, accumulate);
  check(name, y, ref);
}

template <int BS, int G, int WARPS, int NC, int ST, int AXIS, int ALIGNED>
void test_updat(int kb, int mb, std::vector<long long> ns, int splits, int accumulate) {
  Layout L = make_layout(kb, mb);
  int nnz = L.rows.size();
  long long K = kb * BS, M = mb * BS;
  std::vector<std::vector<float>> xs, dys;
  std::vector<long long> xp, dyp, chunk{0};
  int off = ALIGNED ? 0 : 1;
  for (auto n : ns) {
    xs.emplace_back(n * K + 8); dys.emplace_back(n * M + 8);
    for (auto& v : xs.back()) v = rnd();
    for (auto& v : dys.back()) v = rnd();
    xp.push_back((long long)(xs.back().data() + off)); dyp.push_back((long long)(dys.back().data() + off));
    chunk.push_back(chunk.back() + (n + NC - 1) / NC);
  }
  std::vector<int> groups;
  for (int r = 0; r < kb; r++) {
    std::vector<int> ks;
    for (int k = 0; k < nnz; k++) if (L.rows[k] == r) ks.push_back(k);
    for (size_t i = 0; i < ks.size(); i += G) for (int s = 0; s < G; s++) groups.push_back(i + s < ks.size() ? ks[i + s] : -1);
  }
  int ngroups = groups.size() / G;
  std::vector<float> dw((size_t)nnz * BS * BS), ws((size_t)splits * nnz * BS * BS, NAN);
  for (auto& v : dw) v = accumulate ? rnd() : NAN;
  std::vector<double> ref(dw.size());
  for (size_t i = 0; i < dw.size(); i++) ref[i] = accumulate ? dw[i] : 0.0;
  for (size_t p = 0; p < ns.size(); p++) {
    const float* x = (const float*)xp[p]; const float* dy = (const float*)dyp[p]; long long n_ = ns[p];
    for (int k = 0; k < nnz; k++) for (int i = 0; i < BS; i++) for (int j = 0; j < BS; j++) {
      double s = 0;
      for (long long n = 0; n < n_; n++) {
        long long fi = (long long)L.rows[k] * BS + i, fj = (long long)L.cols[k] * BS + j;
        s += (double)(AXIS == 1 ? x[n * K + fi] : x[fi * n_ + n]) * (AXIS == 1 ? dy[n * M + fj] : dy[fj * n_ + n]);
      }
      ref[((size_t)k * BS + i) * BS + j] += s;
    }
  }
  launch(ngroups, splits, WARPS * 32, [&] {
    updat_tf32<BS, G, WARPS, NC, ST, AXIS, ALIGNED>(xp.data(), dyp.data(), ns.data(), chunk.data(), (int)ns.size(),
        groups.data(), L.rows.data(), L.cols.data(), dw.data(), ws.data(), nnz, K, M, accumulate);
  });
  if (splits > 1) {
    size_t cnt = dw.size();
    for (size_t i = 0; i < cnt; i++) {
      float v = accumulate ? dw[i] : 0.f, s = 0.f;
      for (int q = 0; q < splits; q++) s += ws[q * cnt + i];
      dw[i] = v + s;
    }
  }
  char name[200];
  snprintf(name, 200, "updat_tf32<%d,%d,%d,%d,%d,ax%d,al%d> P=%zu splits=%d acc=%d", BS, G, WARPS, NC, ST, AXIS, ALIGNED, ns.size(), splits, accumulate);
  check(name, dw, ref);
}

int main() {
#include "cases.inc"
  printf("%d failures\n", fails);
  return fails != 0;
}
