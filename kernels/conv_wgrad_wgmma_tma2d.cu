// conv_wgrad_wgmma_tma2d.cu: the backward-filter pass for K <= 64 over 2-D position tiles, with all 9
// taps in one block, dY and X brought by the TMA engine in the 128-byte swizzle, sm_90 only; the same
// partial sums for the same reduction (wgrad_reduce_f32) as conv_wgrad_wgmma_tma.cu:
//   igemm3x3_wgrad_wgmma_2d_tma_k64_f16
//     part[z][k][(r,s,c)] = sum_{p in tiles of chunk z} dY[p][k] X[p + (r - 1, s - 1)][c]
//     (and, in block x = 0, part[z][K 9 C + k] = sum_p dY[p][k])
//
// Why: conv1_2 (K = C = 64) is our most expensive layer, and its wgrad the pass furthest behind
// (run 5: 1.176 ms on the mma.sync igemm, cuDNN 0.496). The halo wgrads run a filter row a block,
// so each of the 3 rows' blocks reads the stage's dY again, plus a run of X for its row: 26-34 KiB
// of L2 a stage for 1.6-3.1 MFLOP (bench/NOTES.md, "The TMA wgrad for K <= 64"). With K <= 64 one
// block can hold all 9 taps (64 k x 9 x 64 c: 3 warpgroups of 3 m64n64 accumulators), and a 2-D
// tile of positions lets one X box serve the 3 filter rows: 46 KiB a stage for 9.4 MFLOP.
//
// A stage is a tile of 8 image rows x 16 columns (128 positions, the GEMM's reduction) of one
// image: dY as one box (64 k x 16 columns x 8 rows), position (i, j) at (16 i + j) 128 bytes, M-major
// (k along a 128-byte row); X as one box (64 c x 24 columns x 10 rows) from (c0, x0 - 1, y0 - 1),
// position (i, j) at (24 i + j) 128 bytes, N-major. Tiles past the image's edge read zeros
// (outside the tensor), so they add nothing. Warpgroup r (filter row r) issues, for each image
// row i of the tile (a k16 step: 2 groups of 8 positions, 1024 bytes apart in both operands) and
// tap s, a wgmma whose A starts at dY's row i and B at X's position (i + r, s): a start on any
// 128-byte row of the pattern, as conv_wgrad_wgmma_tma.cu's B starts are.
// Pipeline: conv_wgmma_tma.cu's with a block barrier a stage: a ring of 4 stage buffers three
// stages ahead, a `full` mbarrier a buffer armed by thread 0, which refills the buffer of stage
// s - 1 after stage s's barrier (every warpgroup is past group s - 1 by then).
// db (grid x 0): warpgroups 0 and 1, k = tid & 63 over 32 positions (tid >> 6) of each stage,
// read before the stage's wgmma's are issued and fenced before the copy engine's refill; 4 sums a
// k added in a fixed order at the end.
// Shared memory: 1024 bytes of alignment slack and 4 buffers of 46 KiB (the launcher:
// src/ops/conv.rs).
#include "bulk.cuh"
#include "conv_wgmma.cuh"

namespace cw2 {
constexpr int kRows = 8, kCols = 16, kPos = kRows * kCols, kXCols = kCols + 8, kXRows = kRows + 2;
constexpr int kThreads = 384, kBufs = 4;
constexpr int kABytes = kPos * 128, kXBytes = kXRows * kXCols * 128, kBufBytes = kABytes + kXBytes;
constexpr int kSmemBytes = 1024 + kBufs * kBufBytes;
static_assert(kABytes % 1024 == 0 && kXBytes % 1024 == 0 && kXCols % 8 == 0, "buffers and rows on patterns");
static_assert(kSmemBytes == 189440, "src/ops/conv.rs's shared bytes for the 2-D TMA wgrad");
}  // namespace cw2

__device__ __forceinline__ void wgrad_2d_tma(const TmaDesc* xm, const TmaDesc* dym, float* __restrict__ part, int n,
                                             int h, int w, int c, int k, int chunk) {
    using namespace cw2;
    VGG_DYN_SHARED(unsigned char, raw);
    unsigned char* const smem = align_shared(raw, 1024);  // the swizzle's 1024-byte pattern
    __shared__ unsigned long long full[kBufs];
    const int tid = threadIdx.x, wg = tid >> 7;  // warpgroup wg: filter row r = wg
    const int c0 = (int)blockIdx.x * 64, z = (int)blockIdx.z, cols = 9 * c;
    const int rt = (h + kRows - 1) / kRows, ct = (w + kCols - 1) / kCols, tiles = n * rt * ct;
    const int t0 = z * chunk, stages = max(0, min(chunk, tiles - t0));
    if (tid == 0) {
        for (int b = 0; b < kBufs; ++b) mbarrier_init(&full[b], 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    auto load = [&](int s) {  // one thread: stage s's two boxes into buffer s % kBufs
        if (s >= stages) return;
        const int t = t0 + s, cb = t % ct, rb = t / ct % rt, img = t / (ct * rt);
        unsigned char* const buf = smem + (s % kBufs) * kBufBytes;
        mbarrier_arrive_expect_tx(&full[s % kBufs], kBufBytes);
        tma_load_4d(buf, dym, 0, cb * kCols, rb * kRows, img, &full[s % kBufs]);
        tma_load_4d(buf + kABytes, xm, c0, cb * kCols - 1, rb * kRows - 1, img, &full[s % kBufs]);
    };
    if (tid == 0)
        for (int s = 0; s < kBufs - 1; ++s) load(s);

    const bool do_db = blockIdx.x == 0;
    float db_sum = 0.f;
    // A: buffer 0's dY (one atom of 64 k wide: lbo unread), groups of 8 positions 1024 bytes
    // apart; B: buffer 0's X from filter row r's first row.
    const unsigned long long da0 = wgmma_desc_mn_sw128(smem, kABytes, 1024);
    const unsigned long long db0 = wgmma_desc_mn_sw128(smem + kABytes + wg * kXCols * 128, kXBytes, 1024);
    float acc[3][32];
#pragma unroll
    for (int s = 0; s < 3; ++s)
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[s][i] = 0.f;
    for (int s = 0; s < stages; ++s) {
        mbarrier_wait_parity(&full[s % kBufs], (s / kBufs) & 1);
        const unsigned char* const buf = smem + (s % kBufs) * kBufBytes;
        if (do_db && tid < 256) {
            // Positions 32 (tid >> 6).. of the swizzled dY box: row p's k chunk at (k / 8) ^ (p % 8).
            const int kk = tid & 63, chunk16 = kk >> 3;
            const unsigned char* const a = buf + (tid >> 6) * 32 * 128 + (kk & 7) * 2;
#pragma unroll 8
            for (int p = 0; p < 32; ++p)
                db_sum += __half2float(*reinterpret_cast<const __half*>(a + p * 128 + ((chunk16 ^ (p & 7)) << 4)));
            fence_proxy_async_shared();  // these reads before the buffer's refill by the copy engine
        }
        const unsigned stage = (s % kBufs) * (kBufBytes >> 4);
#pragma unroll
        for (int t = 0; t < 3; ++t) wgmma_fence_acc(acc[t]);
        wgmma_fence();
        // Image row i of the tile is a k16 step: 16 positions (2048 bytes, 128 units) of dY, and
        // X's row i + r from column s (a halo row is kXCols x 8 units).
#pragma unroll
        for (int i = 0; i < kRows; ++i)
#pragma unroll
            for (int t = 0; t < 3; ++t)
                wgmma_ss<64, true, true>(acc[t], da0 + stage + 128 * i, db0 + stage + (i * kXCols + t) * 8, 1);
        wgmma_commit();
        wgmma_wait<1>();
#pragma unroll
        for (int t = 0; t < 3; ++t) wgmma_fence_acc(acc[t]);
        __syncthreads();  // every warpgroup is past group s - 1: its buffer is free
        if (tid == 0) load(s + kBufs - 1);
    }
    wgmma_wait<0>();
#pragma unroll
    for (int t = 0; t < 3; ++t) wgmma_fence_acc(acc[t]);
    float* const out = part + (long long)z * ((long long)k * cols + k);
    // Accumulator rows are k 0..63 in every warpgroup (the store adds 64 wg to a row).
    conv_wgrad_store_taps<64>(acc, out, -64 * wg, k, wg, c, c0);
    if (do_db) {
        // Thread k + 64 j summed k over positions 32 j.. of each stage: 4 sums a k, in a fixed order.
        __syncthreads();
        float* const sdb = reinterpret_cast<float*>(smem);
        sdb[tid] = db_sum;
        __syncthreads();
        if (tid < 64 && tid < k)
            out[(long long)k * cols + tid] = sdb[tid] + sdb[tid + 64] + sdb[tid + 128] + sdb[tid + 192];
    }
}

// xm: x (C, w, h, n) in boxes of 64 x 24 x 10 x 1, dym: dy (K, w, h, n) in boxes of 64 x 16 x 8 x 1,
// both in the 128-byte swizzle (src/ops/conv/wgmma.rs); chunk: tiles a chunk.
extern "C" __global__ void __launch_bounds__(cw2::kThreads, 1)
    igemm3x3_wgrad_wgmma_2d_tma_k64_f16(const __grid_constant__ TmaDesc xm, const __grid_constant__ TmaDesc dym,
                                        float* __restrict__ part, int n, int h, int w, int c, int k, int chunk) {
    wgrad_2d_tma(&xm, &dym, part, n, h, w, c, k, chunk);
}
