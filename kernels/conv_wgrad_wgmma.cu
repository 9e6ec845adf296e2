// conv_wgrad_wgmma.cu: backward-filter of the 3x3 convolution on Hopper's warpgroup MMA
// (wgmma.cuh), the wgmma twin of conv_wgrad.cu's mma.sync kernels, writing the same partial
// sums for the same reduction (wgrad_reduce_f32):
//   igemm3x3_wgrad_wgmma_f16   part[z][k][(r,s,c)] = sum_{p in chunk z} dY[p][k] X[p + (r-1, s-1)][c]
//                              (and, in column block 0, part[z][K 9 C + k] = sum_p dY[p][k])
// GEMM M = K (output channels), N = 9C (the flattened KRSC filter row), reduction over the
// pixels of chunk z. Both operands have the reduction (pixels) outermost in memory (dY[p][k],
// X[p][c]), so both go to shared memory M/N-major (wgmma's transposed operands), which 16-byte
// copies of 8 channels of one pixel fill directly: a core matrix is 8 pixels x 8 channels.
//
// Tiling: a block owns 128 k x 256 columns (grid x: column blocks, y: k blocks, z: pixel
// chunks); 256 threads = 2 warpgroups of 64 k x 256 columns (m64n256k16, 128 fp32 accumulators
// a thread). Stages of 64 pixels through a 4-buffer ring of cp.async copies, one barrier and
// one wgmma group a stage, as in conv_wgmma.cu (prefetch distance 2, wgmma_wait<1>).
// Shared layout per buffer: A (dY: 128 k x 64 pixels, 16 KB) then B (X: 256 columns x 64
// pixels, 32 KB), core matrix (channel block i, pixel block j) at (8 i + j) * 128 bytes, its
// row (pixel % 8) 16 bytes: lbo 128 (next 8 pixels), sbo 1024 (next 8 channels). A thread
// copies pixel 8 (tid >> 5) + (tid & 7) of each stage, channel blocks ((tid >> 3) & 3) + 4 j: a
// warp's copy reads 8 pixels x 4 adjacent blocks (64 contiguous bytes a pixel, whole 32-byte
// sectors; 32 pixels x 1 block would fetch 32 sectors for 16 bytes each), and the 8 lanes of a
// store phase write 8 consecutive 16-byte units. Since C is a multiple of 8 an 8-column block
// lies in one tap: each of the thread's B blocks has a fixed tap and channel, worked out once.
// Pixels past the chunk's end or the image count as zeros (zero-filled copies). Offsets are
// 32-bit (N H W max(C, K) < 2^31, src/ops/conv.rs): with 64-bit ones ptxas serialized the
// wgmma's (its C7515 note, which the build reports; tests/build_artifacts.rs fails on it).
// db: the blocks of column block 0 also sum their dY tiles from shared memory: thread -> k =
// tid & 127, pixels 32 (tid >> 7) .. + 31 of each stage; the two halves meet in shared memory in
// a fixed order at the end. Deterministic: no atomics, fixed orders throughout.
#include "conv_wgmma.cuh"

namespace cwg {
constexpr int kM = 128, kN = 256, kP = 64, kBufs = 4;
constexpr int kABytes = kM * kP * 2;             // 16384
constexpr int kBufBytes = kABytes + kN * kP * 2;  // 49152
static_assert(kBufs * kBufBytes == 196608, "src/ops/conv.rs's shared bytes for the wgmma wgrad");
}  // namespace cwg

// part layout: [chunk][K*9*C + K] (conv_wgrad.cu), C a multiple of 8.
extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgrad_wgmma_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                             int n, int h, int w, int c, int k, int chunk) {
    using namespace cwg;
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int n0 = (int)blockIdx.x * kN, k0 = (int)blockIdx.y * kM, z = (int)blockIdx.z;
    const int cols = 9 * c, npix = n * h * w;
    const int pstart = z * chunk, pend = min(pstart + chunk, npix);
    const int stages = (pend - pstart + kP - 1) / kP;

    // This thread's pieces: pixel 8 warp + (tid & 7) of each stage; A channel blocks blk0 + 4 j
    // (j < 4), B column blocks blk0 + 4 j (j < 8), each with a fixed tap and channel.
    const int px = 8 * warp + (tid & 7), blk0 = (tid >> 3) & 3;
    unsigned a_ok = 0;  // bit j: A block j's channels lie below K
    int a_col[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a_col[j] = k0 + 8 * (blk0 + 4 * j);
        a_ok |= (a_col[j] < k ? 1u : 0u) << j;
    }
    unsigned b_ok = 0;  // bit j: B block j's columns lie below 9C
    int b_dy[8], b_dx[8], b_off[8];  // tap row / column offset (-1..1), channel offset
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int col = n0 + 8 * (blk0 + 4 * j), tap = col / c;
        b_ok |= (col < cols ? 1u : 0u) << j;
        b_dy[j] = tap / 3 - 1, b_dx[j] = tap % 3 - 1;
        b_off[j] = ((tap / 3 - 1) * w + (tap % 3 - 1)) * c + col - tap * c;
    }
    // Shared offset of the thread's first piece; piece j is 4 channel blocks (4096 bytes) on.
    unsigned char* const piece0 = smem + (blk0 * 8 + px / 8) * 128 + (px & 7) * 16;
    auto load = [&](int s) {
        if (s >= stages) return;
        const int p = pstart + s * kP + px;
        const bool p_ok = p < pend;
        const int ox = p % w, oy = p / w % h;
        unsigned char* const buf = piece0 + (s % kBufs) * kBufBytes;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool ok = p_ok && (a_ok >> j & 1u);
            cp_async_16(buf + 4096 * j, ok ? dy + p * k + a_col[j] : dy, ok);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int iy = oy + b_dy[j], ix = ox + b_dx[j];
            const bool ok = p_ok && (b_ok >> j & 1u) && iy >= 0 && iy < h && ix >= 0 && ix < w;
            cp_async_16(buf + kABytes + 4096 * j, ok ? x + p * c + b_off[j] : x, ok);
        }
    };
    const unsigned long long da0 = wgmma_desc(smem + wg * 8192, 128, 1024);
    const unsigned long long db0 = wgmma_desc(smem + kABytes, 128, 1024);

    float acc[kN / 2];
    // db (column block 0): this thread's channel and half of each stage's pixels.
    const bool do_db = blockIdx.x == 0;
    float db_sum = 0.f;
    auto sum_db = [&](int s) {
        if (do_db) conv_wgmma_db_stage(smem + (s % kBufs) * kBufBytes, tid, db_sum);
    };
    static_assert(kBufs == 4, "wgmma_ring's ring");
    wgmma_ring<kN, true, true, kP / 16, kBufBytes>(acc, stages, da0, db0, load, sum_db);

    float* const out = part + (long long)z * ((long long)k * cols + k);
    // Epilogue: d[4 j + i] -> k row 64 wg + 16 (warp % 4) + g + 8 (i >> 1), column 8 j + 2 t + (i & 1).
    const int t = lane & 3;  // the accumulators' column pair (wgmma.cuh)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int kk = k0 + wgmma_acc_row(half);
        if (kk >= k) continue;
        conv_wgmma_store_f32_row<kN>(acc, half, out + (long long)kk * cols, n0, t, cols);
    }
    if (do_db) conv_wgmma_db_finish(db_sum, smem, out + (long long)k * cols, k0, k, tid);
}
