// bulk.cuh: Hopper's bulk copies (cp.async.bulk, the TMA engine's 1-D form: one thread moves
// any multiple of 16 bytes, global -> shared) and the mbarriers that count their bytes, each
// behind one helper with an emulation (kernels/emu/runtime.cpp), as ptx.cuh's primitives.
//
// The protocol (PTX ISA, "mbarrier" and "cp.async.bulk"): a barrier is initialised once with
// the arrivals a phase needs (then fence_mbarrier_init and a __syncthreads); a producer arrives
// with the bytes it is about to have copied (mbarrier_arrive_expect_tx), then issues the copies
// on that barrier; each copy takes its bytes off the barrier's tx-count as it lands; the phase
// completes when every arrival and every byte is in. Consumers wait for the phase by its parity (phase j of a barrier: parity j & 1).
// Shared memory a bulk copy overwrites must be done with by the generic proxy (the threads'
// own loads): fence_proxy_async_shared() between those reads and the copy's issue.
// sm_90 instructions: the compute_80 PTX traps, and launchers must not pick these kernels there.
#pragma once
#include "ptx.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define VGG_HAS_BULK 1
#else
#define VGG_HAS_BULK 0
#endif

__device__ __forceinline__ void mbarrier_init(unsigned long long* bar, unsigned count) {
#ifndef __CUDA_ARCH__
  emu::mbarrier_init(bar, count);
#elif VGG_HAS_BULK
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)),
               "r"(count)
               : "memory");
#else
  __trap();
#endif
}

// Makes an initialised barrier visible to the copy engine (which completes transactions on it);
// then a __syncthreads before any thread uses it. Nothing to order on the emulator.
__device__ __forceinline__ void fence_mbarrier_init() {
#if defined(__CUDA_ARCH__) && VGG_HAS_BULK
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival on `bar`, announcing `bytes` more that bulk copies will bring in this phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
#ifndef __CUDA_ARCH__
  emu::mbarrier_arrive_expect_tx(bar, bytes);
#elif VGG_HAS_BULK
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   (unsigned)__cvta_generic_to_shared(bar)),
               "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

// One arrival on `bar` with no bytes: a consumer telling a producer it is done with a buffer.
__device__ __forceinline__ void mbarrier_arrive(unsigned long long* bar) {
#ifndef __CUDA_ARCH__
  emu::mbarrier_arrive_expect_tx(bar, 0);
#elif VGG_HAS_BULK
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
#else
  __trap();
#endif
}

#if defined(__CUDA_ARCH__) && VGG_HAS_BULK
// The trap as a call: inlined into a wait of code after setmaxnreg.inc (a warp-specialised
// consumer), it made ptxas allocate that code within the launch's register share instead of
// the raised one (spilling an accumulator set of conv_wgrad_wgmma_tma.cu: NVRTC 13.0).
__device__ __noinline__ void mbarrier_wait_timed_out() { __trap(); }
#endif

// Returns once the phase of parity `parity` has completed (the bytes it counted have landed).
// On the GPU a wait still open after ~4 s traps instead of hanging the process: a copy that
// never lands (a wrong box, a miscounted transaction) would otherwise stall a whole selftest or
// gpu-check step until its time limit. A trap is sticky: the process's CUDA context is lost, so
// every later launch in it fails too (gpu-check's steps are separate processes; in one selftest
// run, the first failing row after it is the one to read). Cluster: acquire at cluster scope,
// pairing with arrivals of other blocks of a cluster (kernels/cluster.cuh); otherwise the
// default, CTA scope.
template <bool Cluster = false>
__device__ __forceinline__ void mbarrier_wait_parity(unsigned long long* bar, unsigned parity PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  emu::mbarrier_wait_parity(bar, parity, site_file, site_line);
#elif VGG_HAS_BULK
  const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
  unsigned done = 0;
  unsigned long long start = 0;
  for (unsigned polls = 1; !done; ++polls) {
    if constexpr (Cluster)
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
          " selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(a), "r"(parity)
          : "memory");
    else
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(a), "r"(parity)
          : "memory");
    if (!done && (polls & 1023) == 0) {
      unsigned long long now;
      asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
      if (start == 0) start = now;
      else if (now - start > 4000000000ull) mbarrier_wait_timed_out();
    }
  }
#else
  __trap();
#endif
}

// Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared
// memory; the copy completes `bytes` of `bar`'s transaction count as it lands.
__device__ __forceinline__ void bulk_copy_g2s(void* smem_dst, const void* gmem_src, unsigned bytes,
                                              unsigned long long* bar) {
#ifndef __CUDA_ARCH__
  emu::bulk_copy_g2s(smem_dst, gmem_src, bytes, bar);
#elif VGG_HAS_BULK
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   (unsigned)__cvta_generic_to_shared(smem_dst)),
               "l"((unsigned long long)__cvta_generic_to_global(gmem_src)), "r"(bytes),
               "r"((unsigned)__cvta_generic_to_shared(bar))
               : "memory");
#else
  __trap();
#endif
}

// A tensor map (CUtensorMap: TensorMap in src/device/tensor_map.rs) as kernels take it: by
// value, `const __grid_constant__ TmaDesc map`, so that its address is in parameter space,
// where the copy engine reads it with no fence.
struct alignas(64) TmaDesc {
  unsigned long long w[16];
};

// The TMA engine's 2-D form: the box at (c0 along the inner dimension, c1 along the outer) of
// the tensor `map` describes lands at smem_dst (1024-byte aligned with the 128-byte swizzle), its
// rows one after the other, elements outside the tensor zero, and completes the box's bytes (all
// of them, zeros included) on `bar`.
__device__ __forceinline__ void tma_load_2d(void* smem_dst, const TmaDesc* map, int c0, int c1,
                                            unsigned long long* bar) {
#ifndef __CUDA_ARCH__
  const int coords[2] = {c0, c1};
  emu::tma_load(smem_dst, map, coords, 2, bar);
#elif VGG_HAS_BULK
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"((unsigned)__cvta_generic_to_shared(bar))
      : "memory");
#else
  __trap();
#endif
}

// The 3-D form (a 3-D map, e.g. filters [K][9][C] as C, tap, K): as tma_load_2d lays and counts it.
__device__ __forceinline__ void tma_load_3d(void* smem_dst, const TmaDesc* map, int c0, int c1, int c2,
                                            unsigned long long* bar) {
#ifndef __CUDA_ARCH__
  const int coords[3] = {c0, c1, c2};
  emu::tma_load(smem_dst, map, coords, 3, bar);
#elif VGG_HAS_BULK
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"((unsigned)__cvta_generic_to_shared(bar))
      : "memory");
#else
  __trap();
#endif
}

// The 4-D form (a 4-D map, e.g. an NHWC tensor as C, W, H, N): the box at (c0 .. c3), innermost
// first, as tma_load_2d lays and counts it; coordinates outside the tensor (negative ones too)
// read as zero, a convolution's padding.
__device__ __forceinline__ void tma_load_4d(void* smem_dst, const TmaDesc* map, int c0, int c1, int c2, int c3,
                                            unsigned long long* bar) {
#ifndef __CUDA_ARCH__
  const int coords[4] = {c0, c1, c2, c3};
  emu::tma_load(smem_dst, map, coords, 4, bar);
#elif VGG_HAS_BULK
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"((unsigned)__cvta_generic_to_shared(bar))
      : "memory");
#else
  __trap();
#endif
}

// `p` (in dynamic shared memory) moved up to the next multiple of `align` bytes of its shared
// address: the GPU's shared window, or on the emulator the offset into the block's dynamic
// shared memory, the address its swizzles (TMA's and wgmma's, wgmma_smem_addr) work from. The
// dynamic base follows the static variables, so a 1024-byte aligned swizzled buffer must be
// aligned by hand.
__device__ __forceinline__ unsigned char* align_shared(unsigned char* p, unsigned align) {
#ifdef __CUDA_ARCH__
  const unsigned s = (unsigned)__cvta_generic_to_shared(p);
#else
  const unsigned s = (unsigned)(p - emu::dyn_smem());
#endif
  return p + ((align - (s & (align - 1))) & (align - 1));
}

// Orders this thread's earlier generic-proxy accesses to shared memory before later async-proxy
// ones (bulk copies into memory it read). Nothing to order on the emulator.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && VGG_HAS_BULK
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
