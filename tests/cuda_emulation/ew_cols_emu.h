// Host emulation of a thread-block cluster for kernels/ew_cols.cu (tests only; tests/test_ops_cols.py).
// Every CUDA thread of a cluster is a std::thread (CS x 256); __syncthreads, warp shuffles and the split
// cluster barrier are std::barriers; each block (rank) has its own shared memory, allocated per named
// variable, so that a distributed-shared-memory read (ld_dsmem) finds the same variable and offset in the
// rank it names. cp.async copies at once (checked for 16-byte alignment). Clusters run one after another, or
// all at once for a launch with column groups (whose clusters wait for each other: std::atomic_ref counters).
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __cluster_dims__(...)

typedef long long i64;
using std::max;
using std::min;

struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 gridDim;
inline thread_local unsigned emu_rank = 0;

struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct float2 { float x, y; };
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }

struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };
inline float __half2float(__half h) { _Float16 f; std::memcpy(&f, &h.x, 2); return (float)f; }
inline __half __float2half_rn(float v) { _Float16 f = (_Float16)v; __half h; std::memcpy(&h.x, &f, 2); return h; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  unsigned u = __float_as_uint(v);
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }

template <typename T> inline float to_float(T v);
template <> inline float to_float<float>(float v) { return v; }
template <> inline float to_float<__half>(__half v) { return __half2float(v); }
template <> inline float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> inline T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

[[noreturn]] inline void emu_fail(const char* what) {
  fprintf(stderr, "ew_cols emulation: %s (block %u thread %u)\n", what, blockIdx.x, threadIdx.x);
  std::abort();
}

// one cluster's state
struct EmuRank {
  std::map<std::string, std::vector<unsigned char>> smem;
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  float scratch[32][32];
};
struct EmuCluster {
  std::vector<EmuRank> ranks;
  std::unique_ptr<std::barrier<>> cluster;
  size_t dyn = 0;
  std::mutex lock;
};
inline thread_local EmuCluster* emu_cluster = nullptr;
inline thread_local std::optional<std::barrier<>::arrival_token> emu_token;

// this block's shared variable `name` (allocated on first use, NaN-filled so unwritten reads show)
inline void* emu_smem(const char* name, size_t bytes) {
  std::lock_guard<std::mutex> g(emu_cluster->lock);
  auto& v = emu_cluster->ranks[emu_rank].smem[name];
  if (v.empty()) {
    v.resize(bytes + 16);
    const float nan = std::nanf("");
    for (size_t i = 0; i + 4 <= v.size(); i += 4) std::memcpy(&v[i], &nan, 4);
  }
  if (v.size() != bytes + 16) emu_fail("shared variable size changed");
  return v.data() + (16 - reinterpret_cast<uintptr_t>(v.data()) % 16) % 16;
}

inline void __syncthreads() { emu_cluster->ranks[emu_rank].block->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  auto& r = emu_cluster->ranks[emu_rank];
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  r.scratch[w][l] = v;
  r.warps[w]->arrive_and_wait();
  const float out = r.scratch[w][l ^ o];
  r.warps[w]->arrive_and_wait();
  return out;
}
inline uint4 __ldg(const uint4* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16) emu_fail("misaligned 16-byte load");
  return *p;
}

// the PTX wrappers of kernels/ew_cols.cu (cp.async copies at once: waits are no-ops)
inline void st_cs16(void* p, const uint4& v) {
  if (reinterpret_cast<uintptr_t>(p) % 16) emu_fail("misaligned 16-byte store");
  std::memcpy(p, &v, 16);
}
inline void cp_async16(uint4* smem, const void* gmem) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 || reinterpret_cast<uintptr_t>(gmem) % 16) emu_fail("misaligned cp.async");
  std::memcpy(smem, gmem, 16);
}
inline void cp_async_wait_all() {}
inline void cp_async_commit() {}
inline void cp_async_wait_prev() {}
inline void cluster_arrive() {
  if (emu_token) emu_fail("two cluster arrivals without a wait");
  emu_token.emplace(emu_cluster->cluster->arrive());
}
inline void cluster_arrive_relaxed() { cluster_arrive(); }
inline void cluster_wait() {
  if (!emu_token) emu_fail("cluster wait without an arrival");
  emu_cluster->cluster->wait(std::move(*emu_token));
  emu_token.reset();
}
inline unsigned cluster_rank() { return emu_rank; }
inline float ld_dsmem(const float* p, unsigned rank) {
  auto& mine = emu_cluster->ranks[emu_rank].smem;
  if (rank >= emu_cluster->ranks.size()) emu_fail("ld_dsmem: rank out of the cluster");
  for (auto& [name, v] : mine) {
    const unsigned char* base = v.data() + (16 - reinterpret_cast<uintptr_t>(v.data()) % 16) % 16;
    const auto* q = reinterpret_cast<const unsigned char*>(p);
    if (q >= base && q + 4 <= v.data() + v.size()) {
      auto& other = emu_cluster->ranks[rank].smem[name];
      if (other.size() != v.size()) emu_fail("ld_dsmem: the other block has no such variable");
      const unsigned char* obase = other.data() + (16 - reinterpret_cast<uintptr_t>(other.data()) % 16) % 16;
      float out;
      std::memcpy(&out, obase + (q - base), 4);
      return out;
    }
  }
  emu_fail("ld_dsmem: not a shared-memory address");
}

// column groups: release + arrival, acquire spin, a load from "L2"
inline void group_arrive(int* cnt) { std::atomic_ref<int>(*cnt).fetch_add(1, std::memory_order_acq_rel); }
inline void group_wait(const int* cnt, int n) {
  while (std::atomic_ref<int>(*const_cast<int*>(cnt)).load(std::memory_order_acquire) < n) std::this_thread::yield();
}
inline float ld_l2(const float* p) { return std::atomic_ref<float>(*const_cast<float*>(p)).load(std::memory_order_relaxed); }

// the tall-array kernels' L2 policies (no cache here) and hinted loads / copies
inline unsigned long long l2_evict_last() { return 0; }
inline unsigned long long l2_evict_first() { return 0; }
inline uint4 ld_hint16(const void* p, unsigned long long) { return __ldg(static_cast<const uint4*>(p)); }
inline void cp_async16_hint(uint4* smem, const void* gmem, unsigned long long) { cp_async16(smem, gmem); }
inline void l2_prefetch_last(const void*) {}

// Run `grid` blocks in clusters of CS: body() is the kernel call, run by every thread. concurrent: every
// cluster at once (column groups), else one cluster after another.
template <typename F> void emu_launch(int grid, int CS, int threads, size_t dyn, F body, bool concurrent = false) {
  if (grid % CS) emu_fail("grid not a multiple of the cluster size");
  gridDim.x = grid;
  const int ncl = grid / CS;
  for (int c0 = 0; c0 < ncl; c0 += concurrent ? ncl : 1) {
    const int c1 = concurrent ? ncl : c0 + 1;
    std::vector<EmuCluster> cls(c1 - c0);
    for (auto& cl : cls) {
      cl.dyn = dyn;
      cl.ranks.resize(CS);
      for (auto& r : cl.ranks) {
        r.block = std::make_unique<std::barrier<>>(threads);
        for (int w = 0; w < threads / 32; ++w) r.warps.push_back(std::make_unique<std::barrier<>>(32));
      }
      cl.cluster = std::make_unique<std::barrier<>>(CS * threads);
    }
    std::vector<std::thread> ts;
    for (int c = c0; c < c1; ++c)
      for (int q = 0; q < CS; ++q)
        for (int t = 0; t < threads; ++t)
          ts.emplace_back([&, c, q, t] {
            emu_cluster = &cls[c - c0];
            threadIdx.x = t;
            blockIdx.x = c * CS + q;
            emu_rank = q;
            body();
            if (emu_token) emu_fail("exit after a cluster arrival without its wait");
            emu_cluster = nullptr;
          });
    for (auto& t : ts) t.join();
  }
}
