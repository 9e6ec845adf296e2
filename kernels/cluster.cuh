// cluster.cuh: thread-block clusters (sm_90). The blocks of a cluster (launched with
// Device::launch_cluster: `n` consecutive blocks along x, n <= 8) run at the same time on one
// GPC, so their threads can wait for each other (barrier.cluster), read and write each other's
// shared memory (distributed shared memory, through mapa), arrive on each other's mbarriers, and
// receive one TMA box in all of their shared memories at once (multicast). What a cluster is for
// here: two blocks that need the same filter tile load it once from L2 instead of twice.
//
// Each primitive is one helper, asm under __CUDA_ARCH__ and an exact emulation otherwise
// (kernels/emu/cluster.cpp, whose header states the model and the rules it checks), as in
// ptx.cuh and bulk.cuh. References: PTX ISA 8.x, "Special Registers: %cluster_ctarank,
// %cluster_nctarank", "barrier.cluster", "mapa", "mbarrier.arrive" (.shared::cluster, .cluster
// scope), "mbarrier.test_wait/try_wait" (.acquire.cluster), "cp.async.bulk.tensor"
// (.multicast::cluster, ctaMask); CUDA C++ Programming Guide, "Thread Block Clusters" and
// "Distributed Shared Memory"; the driver API's cuLaunchKernelEx and
// CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (cuda.h).
//
// The rules a cluster kernel follows (the emulator fails the launch on each that it can see):
// - all shared state in dynamic shared memory (VGG_DYN_SHARED): the emulator runs a cluster's
//   blocks on one OS thread, where a static __shared__ would be one variable for all of them;
// - cluster_sync before using another block's shared memory (every block must have started),
//   and between initialising an mbarrier (then fence_mbarrier_init) and another block's arrival
//   or multicast on it;
// - no block exits while another may still use its shared memory: end with cluster_sync, unless
//   every such use is an mbarrier operation the block waits for;
// - wait for another block only through barrier.cluster or an mbarrier, never by polling its
//   memory (an emulated thread yields only at a barrier or a wait).
// sm_90 instructions (the multicast sm_90a's): the compute_80 PTX traps, and launchers must not
// pick these kernels there (Device::has_clusters).
#pragma once
#include "bulk.cuh"

// The sm_90a cubin (NVRTC defines __CUDA_ARCH_FEAT_SM90_ALL) and the emulator have multicast.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VGG_HAS_MULTICAST 1
#else
#define VGG_HAS_MULTICAST 0
#endif

// This block's rank in its cluster (%cluster_ctarank): blockIdx.x % n for our 1-D clusters.
__device__ __forceinline__ unsigned cluster_ctarank() {
#ifndef __CUDA_ARCH__
  return emu::cluster_rank();
#elif VGG_HAS_BULK
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
#else
  __trap();
  return 0;
#endif
}

// The blocks in this block's cluster (%cluster_nctarank); 1 in a launch without a cluster.
__device__ __forceinline__ unsigned cluster_nctarank() {
#ifndef __CUDA_ARCH__
  return emu::cluster_size();
#elif VGG_HAS_BULK
  unsigned n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
#else
  __trap();
  return 1;
#endif
}

// This thread's arrival at the cluster barrier, releasing its earlier writes (shared memory of
// any block of the cluster, and global) to the threads that wait for the phase. Not .aligned:
// the threads of a warp need not arrive together, a requirement the emulator could not check.
__device__ __forceinline__ void cluster_arrive(PTX_SITE_PARAMS_ONLY) {
#ifndef __CUDA_ARCH__
  emu::cluster_arrive(site_file, site_line);
#elif VGG_HAS_BULK
  asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
#else
  __trap();
#endif
}

// Waits until every (non-exited) thread of the cluster has arrived in this thread's current
// phase, acquiring what they released. Each thread arrives once before each wait.
__device__ __forceinline__ void cluster_wait(PTX_SITE_PARAMS_ONLY) {
#ifndef __CUDA_ARCH__
  emu::cluster_wait(site_file, site_line);
#elif VGG_HAS_BULK
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
#else
  __trap();
#endif
}

// A cluster-wide __syncthreads.
__device__ __forceinline__ void cluster_sync(PTX_SITE_PARAMS_ONLY) {
#ifndef __CUDA_ARCH__
  emu::cluster_arrive(site_file, site_line);
  emu::cluster_wait(site_file, site_line);
#else
  cluster_arrive();
  cluster_wait();
#endif
}

// `p`, an address in this block's dynamic shared memory, moved to the same offset in the shared
// memory of block `rank` of the cluster: a generic pointer that plain loads and stores use
// (mapa on generic addresses). rank = cluster_ctarank() gives p back.
template <class T>
__device__ __forceinline__ T* cluster_map(T* p, unsigned rank PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  return static_cast<T*>(emu::cluster_map(p, rank, site_file, site_line));
#elif VGG_HAS_BULK
  unsigned long long q;
  asm volatile("mapa.u64 %0, %1, %2;\n" : "=l"(q) : "l"((unsigned long long)p), "r"(rank));
  return reinterpret_cast<T*>(q);
#else
  __trap();
  return p;
#endif
}

// One arrival (no bytes) on the mbarrier at bar's offset in block `rank`'s shared memory, with
// release at cluster scope: what this thread wrote before, in any block's shared memory, is
// visible to a thread of that block that waits for the phase with mbarrier_wait_parity_cluster.
// ClusterRelease = false: the PTX default instead, release at CTA scope, for a thread that has
// only finished reading a buffer (its reads complete, e.g. its wgmma group retired) and tells
// another block's producer that it may overwrite it. A read that has completed cannot see a later
// write, so there is nothing to make visible; CUTLASS's TMA pipelines release multicast buffers
// this way. Why: ptxas puts MEMBAR.ALL.GPU before each release.cluster arrival (sm_90a, NVRTC
// 13.0), a fence per warp a stage in a main loop. The emulator does not model the difference.
template <bool ClusterRelease = true>
__device__ __forceinline__ void mbarrier_arrive_cluster(unsigned long long* bar, unsigned rank PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  emu::mbarrier_arrive_remote(bar, rank, site_file, site_line);
#elif VGG_HAS_BULK
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
               : "=r"(remote)
               : "r"((unsigned)__cvta_generic_to_shared(bar)), "r"(rank));
  if constexpr (ClusterRelease)
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
  else
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
#else
  __trap();
#endif
}

// mbarrier_wait_parity with acquire at cluster scope: the wait that pairs with other blocks'
// mbarrier_arrive_cluster.
__device__ __forceinline__ void mbarrier_wait_parity_cluster(unsigned long long* bar, unsigned parity PTX_SITE_PARAMS) {
  mbarrier_wait_parity<true>(bar, parity PTX_SITE_ARGS);
}

// The TMA loads of bulk.cuh, multicast: the box lands at smem_dst's offset in the shared memory
// of every block whose rank is set in `mask` (bit r: rank r; this block's own bit may be clear),
// and its bytes complete on the mbarrier at bar's offset in each of them (each block arrives on
// its own barrier with the bytes it expects). One read of the box from L2 for all of them.
__device__ __forceinline__ void tma_load_2d_multicast(void* smem_dst, const TmaDesc* map, int c0, int c1,
                                                      unsigned long long* bar, unsigned short mask PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  const int coords[2] = {c0, c1};
  emu::tma_load_multicast(smem_dst, map, coords, 2, bar, mask, site_file, site_line);
#elif VGG_HAS_MULTICAST
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"((unsigned)__cvta_generic_to_shared(bar)), "h"(mask)
      : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void tma_load_3d_multicast(void* smem_dst, const TmaDesc* map, int c0, int c1, int c2,
                                                      unsigned long long* bar, unsigned short mask PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  const int coords[3] = {c0, c1, c2};
  emu::tma_load_multicast(smem_dst, map, coords, 3, bar, mask, site_file, site_line);
#elif VGG_HAS_MULTICAST
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"((unsigned)__cvta_generic_to_shared(bar)), "h"(mask)
      : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void tma_load_4d_multicast(void* smem_dst, const TmaDesc* map, int c0, int c1, int c2,
                                                      int c3, unsigned long long* bar,
                                                      unsigned short mask PTX_SITE_PARAMS) {
#ifndef __CUDA_ARCH__
  const int coords[4] = {c0, c1, c2, c3};
  emu::tma_load_multicast(smem_dst, map, coords, 4, bar, mask, site_file, site_line);
#elif VGG_HAS_MULTICAST
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem_dst)),
      "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"((unsigned)__cvta_generic_to_shared(bar)),
      "h"(mask)
      : "memory");
#else
  __trap();
#endif
}
