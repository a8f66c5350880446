// Tensor-memory-accelerator (TMA) copies, mbarriers and thread-block-cluster helpers for the sm_90a kernels
// that a producer warp feeds (bsmm_tma.cu). Shared-memory operands are 32-bit shared::cta addresses
// (gmma::smem_addr); a CTA's own address is also its shared::cluster address.
//
// A tensor map (CUtensorMap, 128 bytes, built on the host by cuTensorMapEncodeTiled: _tma.py) describes a
// 2-D row-major tensor and the box one copy moves; the kernel takes it by value as a __grid_constant__
// parameter and hands its generic address to the copy. A copy lands in shared memory through the async
// proxy, in the swizzled layout the map names (the same layouts as gmma::swizzle), and counts its bytes off
// the mbarrier's transaction count; boxes past the tensor's edge are filled with zeros and still count
// their full size.
#pragma once

struct __align__(64) TensorMap {
    unsigned long long v[16];
};

namespace tma {

__device__ __forceinline__ void bar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// makes the initialized barriers visible to the async proxy and to the other CTAs of the cluster
__device__ __forceinline__ void bar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// one arrival that also expects `bytes` of copies in this phase
__device__ __forceinline__ void arrive_expect(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// one arrival on the barrier at the same offset in CTA `rank` of this cluster (no release at cluster scope:
// the arrival only says that this warp's wgmmas have finished reading a slot, nothing it wrote is published;
// with .release.cluster each arrival costs a MEMBAR.ALL.GPU)
__device__ __forceinline__ void arrive_remote(unsigned bar, unsigned rank) {
    asm volatile("{\n .reg .b32 ra;\n mapa.shared::cluster.u32 ra, %0, %1;\n"
                 " mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar), "r"(rank)
                 : "memory");
}
__device__ __forceinline__ void wait(unsigned bar, unsigned parity) {
    unsigned ok = 0;
    while (!ok)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(ok)
                     : "r"(bar), "r"(parity)
                     : "memory");
}

// box at (c0 = inner coordinate, c1 = row) of the map into shared memory at dst, completing on bar
__device__ __forceinline__ void load_2d(unsigned dst, const TensorMap& map, int c0, int c1, unsigned bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(dst), "l"(reinterpret_cast<unsigned long long>(&map)), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}
// the same box into the same offset dst of every CTA of the cluster in `mask`, each completing on its own
// barrier at offset bar
__device__ __forceinline__ void load_2d_multicast(unsigned dst, const TensorMap& map, int c0, int c1, unsigned bar,
                                                  unsigned short mask) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;\n"
                 ::"r"(dst), "l"(reinterpret_cast<unsigned long long>(&map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
                 : "memory");
}
__device__ __forceinline__ void prefetch_map(const TensorMap& map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&map)) : "memory");
}

// a warpgroup's register budget a thread (sm_90a; every thread of the warpgroup executes it)
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
// every thread of every CTA of the cluster (all threads of a warp together)
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

}  // namespace tma
