// mbarriers and 1-D bulk copies (sm_90), shared by bsmm_small.cu (xw_small_ring with BULK = 1) and
// stream_probe.cu (the bulk probes). Include after a `smem_u32(const void*)` is in scope. A bulk copy lands
// in shared memory through the async proxy and counts its bytes off the mbarrier's transaction count; the
// phase completes when the expected bytes (arrive.expect_tx) have arrived. Below sm_90 the functions that
// would wait or copy trap (the host launches those paths only on sm_90; the stubs keep sm_80 builds
// compiling).
#pragma once
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(unsigned long long* bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    unsigned ok = 0;
    while (!ok)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(ok) : "r"(smem_u32(bar)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, int bytes, unsigned long long* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void bulk_g2s_hint(void* dst, const void* src, int bytes, unsigned long long* bar,
                                              unsigned long long policy) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, "
                 "[%3], %4;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(policy)
                 : "memory");
}
#else
__device__ __forceinline__ void mbar_init(unsigned long long*, int) {}
__device__ __forceinline__ void mbar_init_fence() {}
__device__ __forceinline__ void mbar_expect_tx(unsigned long long*, int) {}
__device__ __forceinline__ void mbar_wait(unsigned long long*, unsigned) { __trap(); }
__device__ __forceinline__ void bulk_g2s(void*, const void*, int, unsigned long long*) { __trap(); }
__device__ __forceinline__ void bulk_g2s_hint(void*, const void*, int, unsigned long long*, unsigned long long) {
    __trap();
}
#endif
