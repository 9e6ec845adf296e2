// conv_wgrad_wgmma_halo.cu: backward-filter of the 3x3 convolution on wgmma whose X tile serves
// the 3 taps of a filter row (conv_wgrad_wgmma.cu copies X once a tap), writing the same partial
// sums for the same reduction (wgrad_reduce_f32):
//   igemm3x3_wgrad_wgmma_halo_c{64,128}_f16
//     part[z][k][(r,s,c)] = sum_{P in chunk z} dY[P][k] X[P + (r-1) wp + s-1][c]
//     (and, in block x = 0, part[z][K 9 C + k] = sum_P dY[P][k])
// over conv_wgmma_halo.cu's padded position space (a zero column each side of an image row,
// pitch wp = w + 2; a zero row above each image and after the last), where a tap is a constant
// shift of the position: P + (r - 1) wp + (s - 1). dY at a position outside the image or the
// chunk is a zero, so those positions add nothing.
//
// Why: the flat wgmma wgrad copies X once per tap from L2 (11.7 KB a MFLOP); here one X tile of
// a stage's 64 positions plus 2 (80 copied, for whole core matrices) feeds the 3 taps s of the
// block's filter row r, each a descriptor 16 bytes (one position) on: 5.7 KB a MFLOP (kC 128).
//
// Tiling: a block owns 128 k x (3 taps x kC c), kC = 128, or 64 for C <= 64, where 128 would
// leave half of each block idle (grid x: row r + 3 c-block, y: k blocks, z: position chunks);
// 256 threads = 2 warpgroups of 64 k, each 3 m64n{kC}k16 accumulators (one a tap, 192 fp32 a
// thread at kC 128). Stages of 64 positions through a 4-buffer ring (wgmma_ring_loop's rules).
// Both operands are M/N-major (positions are the reduction): A = dY as conv_wgrad_wgmma.cu
// has it, core matrix (k block i, position block j) at 1024 i + 128 j; B = X, core matrix (c
// block i, position block j) at 1280 i + 128 j (80 positions a c block): lbo 128 for both, so
// a shift by one position is 16 bytes. Copies: a warp reads 8 positions x 4 adjacent 16-byte
// blocks (whole sectors), the 8 lanes of a store phase write one core matrix.
// db: the blocks of grid x 0 sum their dY tiles from shared memory as conv_wgrad_wgmma.cu does.
// Offsets are 32-bit (positions below 2^31 and N H W max(C, K) < 2^31, src/ops/conv.rs).
#include "conv_wgmma.cuh"

namespace cwh {
constexpr int kM = 128, kP = 64, kXPos = 80, kBufs = 4;
constexpr int kABytes = kM * kP * 2;  // 16384
constexpr int kXBlock = kXPos * 16;   // 1280: one c block's positions
// A ring buffer with kC channels a block: dY, then X.
__host__ __device__ constexpr int buf_bytes(int c) { return kABytes + c / 8 * kXBlock; }
static_assert(kBufs * buf_bytes(128) == 147456 && kBufs * buf_bytes(64) == 106496,
              "src/ops/conv.rs's shared bytes for the wgmma halo wgrad");
}  // namespace cwh

// part layout: [chunk][K*9*C + K] (conv_wgrad.cu), C a multiple of 8.
template <int kC>
__device__ __forceinline__ void wgrad_halo(const __half* __restrict__ x, const __half* __restrict__ dy,
                                           float* __restrict__ part, int n, int h, int w, int c, int k, int chunk) {
    using namespace cwh;
    static_assert(kC == 64 || kC == 128, "3 m64nNk16 accumulators a warpgroup");
    constexpr int kBufBytes = buf_bytes(kC);
    // X pieces: kC / 8 blocks x 80 positions, in warp-rows of 8 positions x 4 blocks.
    constexpr int kXWarpRows = kC / 32 * 10;
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, wg = warp >> 2;
    const int r = (int)blockIdx.x % 3, c0 = (int)blockIdx.x / 3 * kC, k0 = (int)blockIdx.y * kM;
    const int z = (int)blockIdx.z, wp = w + 2, cols = 9 * c;
    const int pstart = wp + z * chunk, pend = min(pstart + chunk, n * (h + 1) * wp);
    const int stages = (pend - pstart + kP - 1) / kP;

    // Copy roles. A: position 8 (warp) + (tid & 7) of the stage, k blocks ((tid >> 3) & 3) + 4 j
    // (j < 4). B: warp-row v = warp + 8 j (v < kXWarpRows): position 8 (v % 10) + (tid & 7) of
    // the X tile, c block ((tid >> 3) & 3) + 4 (v / 10).
    const int apos = 8 * warp + (tid & 7), blk = (tid >> 3) & 3;
    unsigned char* const a_dst = smem + blk * 1024 + apos * 16;  // + 4096 j
    auto load = [&](int s) {
        if (s >= stages) return;
        unsigned char* const buf = smem + (s % kBufs) * kBufBytes;
        const int P = pstart + s * kP + apos;
        int pix;
        const bool p_ok = P < pend && conv_halo_pixel(P, wp, h, w, n, pix);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kk = k0 + 8 * (blk + 4 * j);
            const bool ok = p_ok && kk < k;
            cp_async_16(buf + (a_dst - smem) + 4096 * j, ok ? dy + pix * k + kk : dy, ok);
        }
        // X positions of the tile: stage start + (r - 1) wp - 1 + q, q < 80.
        const int xbase = pstart + s * kP + (r - 1) * wp - 1;
#pragma unroll
        for (int j = 0; j < (kXWarpRows + 7) / 8; ++j) {
            const int v = warp + 8 * j, q = 8 * (v % 10) + (tid & 7), cb = blk + 4 * (v / 10);
            if (v >= kXWarpRows) break;
            const int cc = c0 + 8 * cb;
            int xpix;
            const bool ok = cc < c && conv_halo_pixel(xbase + q, wp, h, w, n, xpix);
            cp_async_16(buf + kABytes + cb * kXBlock + q * 16, ok ? x + xpix * c + cc : x, ok);
        }
    };
    // A: this warpgroup's 64 k rows (k blocks 8 wg..); B: c blocks 0.. at tap s = 0.
    const unsigned long long da0 = wgmma_desc(smem + wg * 8 * 1024, 128, 1024);
    const unsigned long long db0 = wgmma_desc(smem + kABytes, 128, kXBlock);

    float acc[3][kC / 2];
#pragma unroll
    for (int s = 0; s < 3; ++s)
#pragma unroll
        for (int i = 0; i < kC / 2; ++i) acc[s][i] = 0.f;
    // db (grid x 0): this thread's k and half of each stage's positions, summed from the dY tile
    // before the stage's wgmma's are issued (see conv_wgrad_wgmma.cu).
    const bool do_db = blockIdx.x == 0;
    float db_sum = 0.f;
    wgmma_ring_loop(stages, load, [&](int s) {
        const unsigned stage = (s % kBufs) * (kBufBytes >> 4);
        if (do_db) conv_wgmma_db_stage(smem + (s % kBufs) * kBufBytes, tid, db_sum);
        // A k16 step is 2 core matrices along K (16 units), a tap one position (1).
        conv_wgrad_taps_stage<kC>(acc, da0 + stage, db0 + stage, 16, 1);
    });
#pragma unroll
    for (int s = 0; s < 3; ++s) wgmma_fence_acc(acc[s]);  // after the loop's last wait

    float* const out = part + (long long)z * ((long long)k * cols + k);
    conv_wgrad_store_taps<kC>(acc, out, k0, k, r, c, c0);
    if (do_db) conv_wgmma_db_finish(db_sum, smem, out + (long long)k * cols, k0, k, tid);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgrad_wgmma_halo_c64_f16(const __half* __restrict__ x, const __half* __restrict__ dy,
                                      float* __restrict__ part, int n, int h, int w, int c, int k, int chunk) {
    wgrad_halo<64>(x, dy, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgrad_wgmma_halo_c128_f16(const __half* __restrict__ x, const __half* __restrict__ dy,
                                       float* __restrict__ part, int n, int h, int w, int c, int k, int chunk) {
    wgrad_halo<128>(x, dy, part, n, h, w, c, k, chunk);
}
