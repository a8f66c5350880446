// Host emulation of the CUDA execution model for testing kernels/*.cu on a CPU (tests only).
// Each CUDA thread of a block is a std::thread; __syncthreads and warp collectives are std::barriers.
// Blocks run one after another, so "shared memory" is one global buffer.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
extern thread_local emu_dim3 threadIdx, blockIdx;
extern emu_dim3 blockDim, gridDim;
extern unsigned char smem_raw[] __attribute__((aligned(16)));

struct EmuBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
};
extern EmuBlock emu_block;
// per-warp scratch for collectives: 32 lanes × 8 words
extern uint32_t emu_scratch[32][32][8];

inline void __syncthreads() { emu_block.block->arrive_and_wait(); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void emu_warp_sync() { emu_block.warps[threadIdx.x / 32]->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  std::memcpy(&emu_scratch[w][l][0], &v, 4);
  emu_warp_sync();
  float r;
  std::memcpy(&r, &emu_scratch[w][l ^ o][0], 4);
  emu_warp_sync();
  return r;
}
inline int __shfl_sync(unsigned, int v, int src) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  std::memcpy(&emu_scratch[w][l][0], &v, 4);
  emu_warp_sync();
  int r;
  std::memcpy(&r, &emu_scratch[w][src & 31][0], 4);
  emu_warp_sync();
  return r;
}
