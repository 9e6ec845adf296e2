// conv_wgrad_wgmma_tma.cu: conv_wgrad_wgmma_halo.cu's backward-filter tile with both operands
// brought by the TMA engine (kernels/bulk.cuh) in the 128-byte swizzle by a producer warp, sm_90
// only; the same partial sums for the same reduction (wgrad_reduce_f32):
//   igemm3x3_wgrad_wgmma_halo_tma_ws_c{64,128}_f16
//     part[z][k][(r,s,c)] = sum_{P in chunk z} dY[P][k] X[P + (r-1) sp + s-1][c]
//     (and, in block x = 0, part[z][K 9 C + k] = sum_P dY[P][k])
//   igemm3x3_wgrad_wgmma_halo_tma_ws_c{64,128}_k64_f16   for K <= 64: the same sums with both
//     warpgroups on k 0..63, each over its half of a 128-position stage, into parts 2 z + wg
//   igemm3x3_wgrad_wgmma_halo_tma_mc_c{64,128}_f16   the ws one in clusters of 2 blocks (k blocks
//     2 y and 2 y + 1) that share each stage's X boxes by multicast
// over conv_wgmma_tma.cu's padded position space (pitch sp = w + 2 rounded up to 8, h + 1 rows an
// image, positions from sp on): dY is zero at every padded position (the copy engine writes
// zeros outside the tensor), so those add nothing, nor do positions past the last image.
//
// Why: the cp.async halo wgrad was profiled latency-bound on the H200 (256 threads at 242
// registers: one block an SM, ~0.38 eligible warps a scheduler), every thread computing
// conv_halo_pixel's divisions for its copies each stage. Here one warp issues whole boxes and
// the two consumer warpgroups do nothing but wait, sum db (grid x 0) and issue wgmma's.
//
// Tiling as conv_wgrad_wgmma_halo.cu's: a block owns 128 k x (3 taps s of filter row r x kC c),
// kC = 128, or 64 for C <= 64 (grid x: r + 3 c-block, y: k blocks, z: position chunks, each a
// multiple of 64 positions so that no stage straddles two); 384 threads: 2 consumer warpgroups
// of 64 k, each 3 m64n{kC}k16 accumulators (one a tap), and a producer warpgroup whose first
// warp issues the copies. 192 accumulators a thread (kC 128) need more than a launch's even
// share of registers, 168 (ptxas caps a 288-thread block, a lone producer warp, at 168 too), so
// the producers give back all but 40 and the consumers take 232 (setmaxnreg, which works on whole
// warpgroups: hence 4 producer warps).
// A stage is 64 positions P0.. (P0 a multiple of 8), in boxes of 8 positions x 64 channels
// (1024 bytes, one swizzle pattern; conv_tma_load_chunk): A = dY, 2 k-halves x 8 chunks, at
// [k-half][chunk], M-major (k along a 128-byte row, a position a row): warpgroup wg's A is
// k-half wg, sbo 1024, a k16 step 2048 bytes. B = X, kC / 64 c-halves x 10 chunks, the 80
// positions from P0 + (r - 1) sp - 8, at [c-half][chunk], N-major: lbo 10 x 1024 between c-halves,
// sbo 1024. Tap s reads position P0 + i + (r - 1) sp + s - 1 at row 7 + s + i: its B descriptor
// starts 7 + s rows of 128 bytes in. Whole rows move with the swizzle's address rule
// (kernels/wgmma.cuh), which conv_wgmma_tma.cu's shifted A descriptors rely on too.
// K <= 64 (conv1_2; kSplit): a block of 128 k would leave warpgroup 1's MMA on zeros, so both
// warpgroups take k 0..63 and a stage is 128 positions instead: dY as 16 chunks of k 0..63 (the
// same [half][chunk] bytes, a half now 64 positions), X as Cb / 64 x 18 chunks; warpgroup wg's A
// is half wg, its B 64 rows (8 chunks) on. Each warpgroup writes its sums as a part of its own,
// 2 z + wg (the host reduces twice the chunks), and db, 4 threads' sums a k, goes to part 2 z
// (part 2 z + 1's db is zeros).
// Pipeline (conv_wgmma_tma.cu's kWs): a ring of as many stage buffers as fit 227 KB (6 at kC 128,
// 8 at 64; with kSplit 4 and 6), a `full` mbarrier a buffer that the producer's lane 0 arms with the stage's bytes
// before its lanes issue the 16 + 10 kC / 64 boxes, and an `empty` one that each consumer warp's
// lane 0 arrives on once the wgmma group that read the buffer has retired (at stage s for s - 1);
// the producer waits for that before refilling it. No __syncthreads in the loop; the producer
// warpgroup stays to the end, for conv_wgmma_db_finish's block barriers.
// db: the blocks of grid x 0 sum each stage's dY from shared memory before its wgmma's are issued
// (conv_wgrad_wgmma.cu's reason), un-swizzling the address; a proxy fence then orders those reads
// before the copy engine's refill.
// Clusters of 2 (kMc; bench/NOTES.md, "The TMA wgrad in clusters of two"): blocks that differ
// only in their k block read the same X boxes every stage (20 of a stage's 36 KiB at kC 128), so
// the two blocks of a cluster take k blocks 2 y and 2 y + 1 of the same filter row, c-block and
// chunk (grid x: rank + 2 (r + 3 c-block), clusters being 1-D along x), and each issues half of
// the stage's X boxes to both (mask 0b11) beside its own dY. Each block's full barrier expects its
// dY and the whole X; an X buffer is written by both producers, so `empty` counts both blocks'
// consumer warps (16: each arrives on its own block's and, fence-free, on the peer's) and the
// producer's wait acquires at cluster scope. With an odd number of k blocks the last cluster's
// rank 1 has k0 >= K: it runs every stage (its dY boxes lie past the tensor's channels, zeros) and
// its stores and db are masked off by k. The cluster rules (kernels/cluster.cuh): the barriers in
// dynamic shared memory after the ring, a cluster_sync after their init, and every thread ends at
// a cluster_sync. Not with kSplit (K <= 64 has one k block: nothing to share).
// Shared memory: 1024 bytes of alignment slack and the ring (the launcher: src/ops/conv.rs), and
// for clusters the 2 kBufs barriers after it.
// Offsets are 32-bit (positions below 2^31 and N H W max(C, K) < 2^31, src/ops/conv.rs).
#include "cluster.cuh"
#include "conv_wgmma.cuh"

namespace cwt {
constexpr int kM = 128, kP = 64, kBox = 1024, kConsumerWarps = 8, kThreads = 384;
// X chunks a c-half and stage: the stage's positions and a chunk before and after (a filter row's
// taps s - 1 = -1..1), 64 positions, or 128 with kSplit.
__host__ __device__ constexpr int x_chunks(bool split) { return split ? 18 : 10; }
// Registers a thread (the header): the launch's 168, then 40 for the producers, 232 for the
// consumers (192 accumulators at kC 128); the pool stays the launch's 384 x 168.
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * 168, "the block's registers");
constexpr int kABytes = kM * kP * 2;  // 16384: dY's 2 k-halves x 8 chunks
// A ring buffer with kC channels a block: dY, then X's kC / 64 c-halves x x_chunks chunks.
__host__ __device__ constexpr int buf_bytes(int c, bool split) { return kABytes + c / 64 * x_chunks(split) * kBox; }
// Buffers that fit an sm_90 block's 227 KB beside the slack and up to 128 bytes of barriers.
__host__ __device__ constexpr int bufs(int c, bool split) {
    return (227 * 1024 - 1024 - 128) / buf_bytes(c, split);
}
__host__ __device__ constexpr int smem_bytes(int c, bool split) { return 1024 + bufs(c, split) * buf_bytes(c, split); }
static_assert(bufs(128, false) == 6 && bufs(64, false) == 8 && smem_bytes(128, false) == 222208 &&
                  smem_bytes(64, false) == 214016,
              "src/ops/conv.rs's shared bytes for the TMA wgrad");
static_assert(bufs(128, true) == 4 && bufs(64, true) == 6 && smem_bytes(128, true) == 214016 &&
                  smem_bytes(64, true) == 209920,
              "src/ops/conv.rs's shared bytes for the TMA wgrad, K <= 64");
}  // namespace cwt

// db from one stage's swizzled dY tile: this thread's k = tid & 127 (k-half k / 64 at 8192 bytes
// a half, its 16-byte chunk (k % 64) / 8 of each 128-byte row XORed with the row's index i in its
// 1024-byte box) over positions 32 (tid >> 7).. + 31 (a row each), added to db_sum. Rows i of
// the 4 boxes first: one address a row index, the boxes at immediate offsets (few registers
// beside the 192 accumulators).
__device__ __forceinline__ void wgrad_tma_db_stage(const unsigned char* tile, int tid, float& db_sum) {
    const int kk = tid & 127, chunk = (kk & 63) >> 3;
    const unsigned char* const a = tile + (kk >> 6) * 8192 + (tid >> 7) * 32 * 128 + (kk & 7) * 2;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const unsigned char* const row = a + i * 128 + ((chunk ^ i) << 4);
#pragma unroll
        for (int box = 0; box < 4; ++box)
            db_sum += __half2float(*reinterpret_cast<const __half*>(row + box * cwt::kBox));
    }
}

// part layout: [chunk][K*9*C + K] (conv_wgrad.cu); chunk a multiple of 64 (kSplit: of 128, and
// 2 parts a chunk). kMc: in clusters of 2 sharing X (the header).
template <int kC, bool kSplit, bool kMc = false>
__device__ __forceinline__ void wgrad_tma_ws(const TmaDesc* xm, const TmaDesc* dym, float* __restrict__ part, int n,
                                             int h, int w, int c, int k, int chunk) {
    using namespace cwt;
    static_assert(kC == 64 || kC == 128, "3 m64nNk16 accumulators a warpgroup");
    static_assert(!(kMc && kSplit), "clusters share X between k blocks: K <= 64 has one");
    constexpr int kBufs = bufs(kC, kSplit), kBufBytes = buf_bytes(kC, kSplit), kXChunks = x_chunks(kSplit);
    constexpr int kXBoxes = kC / 64 * kXChunks, kStageP = kSplit ? 2 * kP : kP;
    constexpr int kXMine = kMc ? kXBoxes / 2 : kXBoxes;  // X boxes this block issues a stage
    static_assert(kXMine * (kMc ? 2 : 1) == kXBoxes, "X halves of whole boxes");
    VGG_DYN_SHARED(unsigned char, raw);
    unsigned char* const smem = align_shared(raw, 1024);  // the swizzle's 1024-byte pattern
    // A cluster's barriers in dynamic shared memory (the emulator's static __shared__ would be one
    // for both blocks), after the ring.
    __shared__ unsigned long long sbars[2 * kBufs];
    unsigned long long* const bars = kMc ? reinterpret_cast<unsigned long long*>(smem + kBufs * kBufBytes) : sbars;
    unsigned long long *const full = bars, *const empty = bars + kBufs;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const unsigned rank = kMc ? cluster_ctarank() : 0;
    const int bx = kMc ? (int)blockIdx.x >> 1 : (int)blockIdx.x;  // clusters: x = rank + 2 (r + 3 c-block)
    const int r = bx % 3, c0 = bx / 3 * kC, k0 = (kMc ? 2 * (int)blockIdx.y + (int)rank : (int)blockIdx.y) * kM;
    const int z = (int)blockIdx.z, sp = conv_tma_pitch(w), cols = 9 * c;
    // The padded images are positions sp .. end - 1; chunk z's from pstart (no sum past end).
    const int end = n * (h + 1) * sp, pstart = sp + z * chunk, pend = pstart + min(chunk, end - pstart);
    const int stages = (pend - pstart + kStageP - 1) / kStageP;
    if (tid == 0) {
        for (int b = 0; b < kBufs; ++b)
            mbarrier_init(&full[b], 1), mbarrier_init(&empty[b], (kMc ? 2 : 1) * kConsumerWarps);
        fence_mbarrier_init();
    }
    if constexpr (kMc)
        cluster_sync();  // the peer's barriers initialised before this block's multicasts and arrivals on them
    else
        __syncthreads();
    const long long part_len = (long long)k * cols + k;
    float* const out = part + (kSplit ? 2 * z + (wg & 1) : z) * part_len;
    const bool do_db = bx == 0;
    float db_sum = 0.f;  // the producer's stays 0

    if (warp >= kConsumerWarps) {
        warpgroup_setmaxnreg<kProducerRegs, false>();
        // The producer warpgroup's first warp (the others idle): stage s into buffer s % kBufs
        // once the consumers (clusters: of both blocks, acquired at cluster scope) released its last lap.
        for (int s = 0; warp == kConsumerWarps && s < stages; ++s) {
            const int b = s % kBufs;
            if (s >= kBufs) mbarrier_wait_parity<kMc>(&empty[b], (s / kBufs - 1) & 1);
            // Every box counts in full; clusters: this block's dY, its X half and the peer's.
            if (lane == 0) mbarrier_arrive_expect_tx(&full[b], kBufBytes);
            __syncwarp(0xffffffffu);  // the bytes are announced before any box can land
            unsigned char* const buf = smem + b * kBufBytes;
            const int ja = (pstart + s * kStageP) / 8, jx = ja + (r - 1) * (sp / 8) - 1;  // dY's, X's first chunk
            for (int i = lane; i < 16 + kXMine; i += 32) {
                if (i < 16) {
                    // [half][chunk]: a half is 64 k of the stage's 8 chunks, or (kSplit) 8 chunks of k 0..63.
                    const int kh = kSplit ? 0 : i >> 3, j = kSplit ? i : i & 7;
                    conv_tma_load_chunk(buf + i * kBox, dym, k0 + 64 * kh, ja + j, sp, h, &full[b]);
                } else {
                    // Clusters: this rank's half of the X boxes, into both blocks.
                    const int q = i - 16 + (int)rank * kXMine, ch = q / kXChunks;
                    conv_tma_load_chunk(buf + kABytes + q * kBox, xm, c0 + 64 * ch, jx + q - ch * kXChunks, sp, h,
                                        &full[b], kMc ? 0b11 : 0);
                }
            }
        }
    } else {
        warpgroup_setmaxnreg<kConsumerRegs, true>();
        // A: this warpgroup's k-half, or (kSplit) position half (lbo, the other half, unread by an
        // m64 A); B: tap 0's rows of buffer 0, 7 rows in (kSplit: 64 more for warpgroup 1).
        const unsigned long long da0 = wgmma_desc_mn_sw128(smem + wg * 8 * kBox, 8 * kBox, kBox);
        const unsigned long long db0 =
            wgmma_desc_mn_sw128(smem + kABytes + 7 * 128 + (kSplit ? wg * 8 * kBox : 0), kXChunks * kBox, kBox);
        float acc[3][kC / 2];
#pragma unroll
        for (int s = 0; s < 3; ++s)
#pragma unroll
            for (int i = 0; i < kC / 2; ++i) acc[s][i] = 0.f;
        for (int s = 0; s < stages; ++s) {
            mbarrier_wait_parity(&full[s % kBufs], (s / kBufs) & 1);
            if (do_db) {
                wgrad_tma_db_stage(smem + (s % kBufs) * kBufBytes, tid, db_sum);
                fence_proxy_async_shared();  // these reads before the buffer's refill by the copy engine
            }
            const unsigned stage = (s % kBufs) * (kBufBytes >> 4);
            // A k16 step is 2 chunks on (128 descriptor units), a tap one 128-byte row (8).
            conv_wgrad_taps_stage<kC>(acc, da0 + stage, db0 + stage, 128, 8);
            // This warp is past group s - 1: its buffer may be refilled.
            if (lane == 0 && s > 0) {
                mbarrier_arrive(&empty[(s - 1) % kBufs]);
                // The peer's producer writes its X half here too (reads done: no fence).
                if constexpr (kMc) mbarrier_arrive_cluster<false>(&empty[(s - 1) % kBufs], rank ^ 1);
            }
        }
        wgmma_wait<0>();
#pragma unroll
        for (int s = 0; s < 3; ++s) wgmma_fence_acc(acc[s]);
        // kSplit: both warpgroups' rows are k 0..63 (the store adds 64 wg to a row).
        conv_wgrad_store_taps<kC>(acc, out, kSplit ? k0 - 64 * wg : k0, k, r, c, c0);
    }
    // Every thread, the producer warpgroup too: conv_wgmma_db_finish's block barriers count all 384
    // (the producers' slots past 255 are written, never read). Every box has landed by then: the
    // consumers waited for each stage (clusters: the peer's X halves too, so nothing more lands).
    if (do_db) {
        if constexpr (kSplit) {
            // Thread k + 64 j summed k over positions 32 j.. of each stage: 4 sums a k, in a fixed order.
            __syncthreads();
            float* const sdb = reinterpret_cast<float*>(smem);
            sdb[tid] = db_sum;
            __syncthreads();
            float* const db = part + 2 * z * part_len + (long long)k * cols;
            if (tid < 64 && k0 + tid < k) {
                db[k0 + tid] = sdb[tid] + sdb[tid + 64] + sdb[tid + 128] + sdb[tid + 192];
                db[part_len + k0 + tid] = 0.f;  // part 2 z + 1's db
            }
        } else {
            // Masked to k < K (clusters: a tail block's k0 >= K writes nothing).
            conv_wgmma_db_finish(db_sum, smem, out + (long long)k * cols, k0, k, tid);
        }
    }
    // Clusters: every thread's last act, so that no block exits while its peer may still arrive on
    // its barriers.
    if constexpr (kMc) cluster_sync();
}

// xm: x (C, w, h, n), dym: dy (K, w, h, n), both in boxes of 64 x 8 x 1 x 1 in the 128-byte
// swizzle (src/ops/conv/wgmma.rs).
#define WGRAD_TMA_PARAMS                                                                                   \
    const __grid_constant__ TmaDesc xm, const __grid_constant__ TmaDesc dym, float *__restrict__ part, int n, \
        int h, int w, int c, int k, int chunk

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_ws_c64_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<64, false>(&xm, &dym, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_ws_c128_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<128, false>(&xm, &dym, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_ws_c64_k64_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<64, true>(&xm, &dym, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_ws_c128_k64_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<128, true>(&xm, &dym, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_mc_c64_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<64, false, true>(&xm, &dym, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(cwt::kThreads, 1)
    igemm3x3_wgrad_wgmma_halo_tma_mc_c128_f16(WGRAD_TMA_PARAMS) {
    wgrad_tma_ws<128, false, true>(&xm, &dym, part, n, h, w, c, k, chunk);
}
