// cluster_test.cu: thread-block clusters' primitives (kernels/cluster.cuh) alone, for `vgg
// selftest`'s `cluster` rows (src/selftest/cluster.rs) and the emulator's tests
// (tests/emu_cluster.rs): on emu they test the emulation, on a GPU they confirm the emulator's
// reading of the PTX ISA (ranks, the cluster barrier, mapa's offsets, remote arrivals, where a
// multicast box lands and whose barriers it completes).
//   cluster_dsmem_exchange  every block writes its shared memory, then reads every peer's
//   cluster_remote_arrive   every block but rank 0 writes into rank 0's shared memory and
//                           arrives on its mbarrier; rank 0 waits, then reports what came
//   cluster_tma_multicast   one rank multicasts a 2-D box to every block; each copies its own out
//   cluster_tma_multicast4  the same with a 4-D box
// All shared state in dynamic shared memory, as cluster.cuh requires.
#include "cluster.cuh"

// Word t of block b's shared memory in cluster_dsmem_exchange: distinct across blocks and
// threads, never 0 (an unwritten output) nor -1 (the emulator's poison).
__device__ __forceinline__ int exchange_value(unsigned b, unsigned t) { return (int)(b * 1000u + t + 1u); }

// Block b writes, at out + b * (n * T + 1): its rank * 16 + the cluster's size, then for every
// rank r of its cluster the T words of r's shared memory as read through mapa.
extern "C" __global__ void cluster_dsmem_exchange(int* out, int skip_final_sync) {
    VGG_DYN_SHARED(int, mine);
    const unsigned rank = cluster_ctarank(), n = cluster_nctarank(), t = threadIdx.x, T = blockDim.x;
    mine[t] = exchange_value(blockIdx.x, t);
    cluster_sync();  // every block has started and written its words
    int* row = out + blockIdx.x * (n * T + 1);
    if (t == 0) row[0] = (int)(rank * 16 + n);
    for (unsigned r = 0; r < n; ++r) row[1 + r * T + t] = cluster_map(mine, r)[t];
    // No block may exit while a peer may still read its words (skip_final_sync: the planted bug
    // the emulator must name).
    if (!skip_final_sync) cluster_sync();
}

// Rank 0's shared memory: its mbarrier (n - 1 arrivals), then one word per rank. Every other
// rank writes exchange_value(its block, 0) into its word of rank 0 and arrives; rank 0 waits,
// then writes the n words (its own left at -1) at out + cluster index * n. No final cluster
// barrier: the other blocks' uses of rank 0's shared memory all precede arrivals rank 0 waits
// for, which orders its exit after them.
extern "C" __global__ void cluster_remote_arrive(int* out) {
    VGG_DYN_SHARED(unsigned long long, bar);
    int* words = reinterpret_cast<int*>(bar + 1);
    const unsigned rank = cluster_ctarank(), n = cluster_nctarank();
    if (rank == 0 && threadIdx.x == 0) {
        mbarrier_init(bar, n - 1);
        fence_mbarrier_init();
        for (unsigned r = 0; r < n; ++r) words[r] = -1;
    }
    cluster_sync();  // the barrier initialised, every block started
    if (rank != 0 && threadIdx.x == 0) {
        cluster_map(words, 0)[rank] = exchange_value(blockIdx.x, 0);
        mbarrier_arrive_cluster(bar, 0);
    }
    if (rank != 0) return;
    mbarrier_wait_parity_cluster(bar, 0);
    for (unsigned r = threadIdx.x; r < n; r += blockDim.x) out[blockIdx.x / n * n + r] = words[r];
}

// The protocol both multicast kernels follow: every block initialises its own barrier (1
// arrival) after its 1024-byte aligned tile, cluster_sync, arrives on it with the box's bytes;
// rank `issuer` issues the multicast to every block of `mask`; each block in the mask waits and
// copies its tile to out + blockIdx.x * bytes, a block outside it writes nothing. A final
// cluster_sync keeps every block until the multicast's issuer is done.
template <class Issue>
__device__ __forceinline__ void multicast_one(unsigned char* raw, int bytes, unsigned issuer, unsigned mask,
                                              unsigned char* out, Issue issue) {
    unsigned char* tile = align_shared(raw, 1024);
    auto* bar = reinterpret_cast<unsigned long long*>(tile + bytes);
    const unsigned rank = cluster_ctarank();
    const bool in_mask = (mask >> rank) & 1u;
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
    }
    cluster_sync();
    if (threadIdx.x == 0 && in_mask) mbarrier_arrive_expect_tx(bar, bytes);
    if (threadIdx.x == 0 && rank == issuer) issue(tile, bar, (unsigned short)mask);
    if (in_mask) {
        mbarrier_wait_parity(bar, 0);
        for (int i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16)
            *reinterpret_cast<uint4*>(out + (size_t)blockIdx.x * bytes + i) = *reinterpret_cast<const uint4*>(tile + i);
    }
    cluster_sync();
}

extern "C" __global__ void cluster_tma_multicast(const __grid_constant__ TmaDesc map, int c0, int c1, int bytes,
                                                  int issuer, int mask, unsigned char* out) {
    VGG_DYN_SHARED(unsigned char, raw);
    multicast_one(raw, bytes, issuer, mask, out, [&](unsigned char* s, unsigned long long* bar, unsigned short m) {
        tma_load_2d_multicast(s, &map, c0, c1, bar, m);
    });
}

extern "C" __global__ void cluster_tma_multicast4(const __grid_constant__ TmaDesc map, int c0, int c1, int c2,
                                                   int c3, int bytes, int issuer, int mask, unsigned char* out) {
    VGG_DYN_SHARED(unsigned char, raw);
    multicast_one(raw, bytes, issuer, mask, out, [&](unsigned char* s, unsigned long long* bar, unsigned short m) {
        tma_load_4d_multicast(s, &map, c0, c1, c2, c3, bar, m);
    });
}

// The rules of cluster.cuh broken one at a time (the planted bugs tests/emu_cluster.rs expects
// the emulator to name), in clusters of 2 blocks of 32 threads with 64 bytes of shared memory:
// 1 mapa before any cluster barrier; 2 an arrival on rank 0's mbarrier, never initialised;
// 3 the same initialised, with no cluster barrier between its init and the arrival; 4 an
// mbarrier in static shared memory; 5 a deadlock: rank 1 at a second cluster barrier, rank 0
// waiting for an arrival rank 1 makes after it; 6 rank 0 reading rank 1's shared memory after
// rank 1 exited, through a pointer mapped while it ran; 7 two arrivals without a wait.
extern "C" __global__ void cluster_planted(int* out, int bug) {
    VGG_DYN_SHARED(unsigned long long, bar);
    int* word = reinterpret_cast<int*>(bar + 1);
    const unsigned rank = cluster_ctarank();
    if (bug == 1) *cluster_map(word, rank ^ 1) = 1;
    if (bug == 4) {
        __shared__ unsigned long long static_bar;
        if (threadIdx.x == 0) mbarrier_init(&static_bar, 1);
    }
    if (rank == 0 && threadIdx.x == 0 && bug != 2) mbarrier_init(bar, 1);
    if (bug == 3 && rank == 1 && threadIdx.x == 0) mbarrier_arrive_cluster(bar, 0);
    *word = (int)rank;
    cluster_sync();
    if (bug == 2 && rank == 1 && threadIdx.x == 0) mbarrier_arrive_cluster(bar, 0);
    if (bug == 5) {
        if (rank == 1) {
            cluster_sync();
            if (threadIdx.x == 0) mbarrier_arrive_cluster(bar, 0);
        } else {
            mbarrier_wait_parity_cluster(bar, 0);
        }
    }
    if (bug == 6) {
        const int* peer = cluster_map(word, 1);
        cluster_sync();
        if (rank == 1) return;  // legal as far as its exit check sees: rank 0's mapa came before
        out[threadIdx.x] = *peer;
    }
    if (bug == 7) cluster_arrive(), cluster_arrive();
    out[blockIdx.x * blockDim.x + threadIdx.x] = *word;
    cluster_sync();
}
