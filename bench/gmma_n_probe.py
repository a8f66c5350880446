"""Throughput of Hopper's wgmma by N (bench/NOTES.md, eighteenth session): does a m64n32k16 run at 32 / 256 of
a m64n256k16's time, or is a narrow wgmma slower per flop?

Every SM runs one CTA of W warpgroups; each warpgroup issues back-to-back groups of 4 m64nNk16 (fp16, fp32
accumulate) on the same shared-memory tiles (SS: A and B through descriptors, 128-byte swizzled K-major;
RS: A from registers), two groups in flight, for ITERS groups. Prints TFLOP/s per (N, form, W) and the
fraction of the dense peak (989.4 TFLOP/s at 1.83 GHz boost for H100 SXM; the ratio between rows is what
counts). Run: PYTHONPATH=. python bench/gmma_n_probe.py (needs an sm_90 GPU).
"""

import sys

import numpy as np

SRC = r"""
#include <cuda_fp16.h>
#include "gmma.cuh"
using namespace gmma;
template <int N, int RS>
__global__ void probe(float* out, int iters) {
  extern __shared__ __align__(1024) unsigned char sm_raw[];
  unsigned char* sm = sm_raw + ((1024u - (smem_addr(sm_raw) & 1023u)) & 1023u);
  __half* h = reinterpret_cast<__half*>(sm);
  for (int i = threadIdx.x; i < (8192 + N * 128) / 2; i += blockDim.x)
    h[i] = __float2half(((i * 37) % 11 - 5) * 0.001f);
  __syncthreads();
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  const unsigned sa = smem_addr(sm), sb = sa + 8192;
  unsigned a[4];
  ldmatrix_x4(a, sa + (threadIdx.x % 128 % 16) * 128 + (threadIdx.x % 32 / 16) * 16);
  for (int it = 0; it < iters; ++it) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (RS)
        GmmaRS<__half, N, 0>::run(acc, a, desc<128>(sb + kk * 32));
      else
        Gmma<__half, N, 0, 0>::run(acc, desc<128>(sa + kk * 32), desc<128>(sb + kk * 32));
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += acc[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""


def main() -> int:
    import cupy as cp

    from cusparseblocks import compiler

    opts = ("-arch=sm_90a", "-std=c++17", f"-I{compiler.kernel_source_dir()}")
    opts += tuple(f"-I{d}" for d in compiler.cuda_include_dirs())
    names = [f"probe<{n}, {rs}>" for n in (16, 32, 64, 128, 256) for rs in (0, 1)]
    mod = cp.RawModule(code=SRC, options=opts, name_expressions=names)
    sms = cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
    clock = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrClockRate, 0) * 1e3
    rows = []
    for wgs in (1, 2, 3):
        for n in (16, 32, 64, 128, 256):
            for rs in (0, 1):
                fn = mod.get_function(f"probe<{n}, {rs}>")
                smem = 1024 + 8192 + n * 128
                fn.max_dynamic_shared_size_bytes = smem
                out = cp.empty(sms * 128 * wgs, dtype=cp.float32)
                iters = max(200, 400000 // n)
                args = (out, np.int32(iters))
                fn((sms,), (128 * wgs,), args, shared_mem=smem)
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                for _ in range(5):
                    fn((sms,), (128 * wgs,), args, shared_mem=smem)
                end.record()
                end.synchronize()
                ms = cp.cuda.get_elapsed_time(start, end) / 5
                flop = sms * wgs * iters * 4 * 2 * 64 * n * 16
                tf = flop / (ms * 1e-3) / 1e12
                per_clk = flop / (ms * 1e-3) / clock / sms
                rows.append((wgs, n, "RS" if rs else "SS", ms, tf, per_clk))
                print(
                    f"wg={wgs} N={n:3d} {'RS' if rs else 'SS'} {ms:8.3f} ms {tf:7.1f} TFLOP/s "
                    f"{per_clk:7.0f} flop/clk/SM",
                    flush=True,
                )
    print(f"GPU clock {clock / 1e9:.2f} GHz (attribute), {sms} SMs; dense peak 4096 flop/clk/SM")
    print(" wg    N  form   TFLOP/s  flop/clk/SM  of 4096")
    for wgs, n, form, _ms, tf, pc in rows:
        print(f"{wgs:3d} {n:4d}  {form}  {tf:8.1f}  {pc:10.0f}  {pc / 4096:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
