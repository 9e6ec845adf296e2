// conv_first.cu: the forward 3x3 convolution (stride 1, pad 1) of a layer with few input
// channels (VGG's first: C = 3), C zero-padded to 8 (src/ops/conv.rs), as an implicit GEMM on
// tensor cores:
//   igemm3x3_fprop_c8_f16   y[p][k] = act(sum_{tap, c} x[p + tap][c] w[k][tap][c] + b[k])
// GEMM M = pixels, N = K, reduction 9 taps x 8 channels = 72, padded to 80 (five mma k-steps)
// with a zero tenth tap. Winograd does not pay here: with 8 channels the GEMMs are too thin, and
// its fp16 transforms of raw image values cost accuracy where the direct sum is exact in fp32.
//
// Tiling: a block owns 128 pixels (consecutive in n, y, x order) x 64 output channels; the
// whole reduction fits one shared-memory stage, so one round of 16-byte cp.async (each pixel's
// 10 taps of 8 channels: 20 KB of A, the filters' 64 x 80 halves of B), one barrier, 5 k-steps of
// mma. 8 warps as 4 (pixels) x 2 (channels), warp tile 32 x 32: 2 + 2 ldmatrix.x4 feed 8 mma a
// k-step, 32 fp32 accumulators a lane. Rows are padded to 88 halves (44 words: the 8 rows of an
// ldmatrix land on distinct 4-bank groups). The epilogue (bias, ReLU, fp16) goes through shared
// memory so that y is written in whole 16-byte pieces of 128-byte pixel rows.
// The kernel is bound by memory, not math: each input pixel is read 9 times (from L2) and each
// output written once, 16 and 128 bytes a pixel.
#include "common.cuh"
#include "ptx.cuh"

namespace cf {
constexpr int kPix = 128;  // pixels per block (GEMM M)
constexpr int kOut = 64;   // output channels per block (GEMM N)
constexpr int kRed = 80;   // reduction: 9 taps x 8 channels + 8 zeros
constexpr int kRow = 88;   // padded shared row, halves
constexpr int kYRow = 72;  // epilogue row: 64 channels + 8 (36 words: conflict-free half2 stores)
}  // namespace cf

extern "C" __global__ void __launch_bounds__(256)
    igemm3x3_fprop_c8_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                          const __half* __restrict__ bias, __half* __restrict__ y, int n, int h, int w, int k,
                          int relu) {
    using namespace cf;
    // Dynamic shared memory (poisoned per block on the emu device, unlike static arrays), 33792
    // bytes: sA [pixel][tap * 8 + c], later y [pixel][kYRow]; sB [k][tap * 8 + c].
    VGG_DYN_SHARED(__half, sA);
    __half* const sB = sA + kPix * kRow;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int wp = warp >> 1, wk = warp & 1;
    const int kblocks = (k + kOut - 1) / kOut;
    const int p0 = (int)(blockIdx.x / kblocks) * kPix, k0 = (int)(blockIdx.x % kblocks) * kOut;
    const int npix = n * h * w;

    // A: piece i = (tap i >> 7, pixel i & 127), 10 x 128 pieces, 5 a thread.
#pragma unroll
    for (int j = 0; j < 5; ++j) {
        const int i = tid + 256 * j, tap = i >> 7, px = i & (kPix - 1), p = p0 + px;
        const int ox = p % w, oy = p / w % h, img = p / w / h;
        const int iy = oy + tap / 3 - 1, ix = ox + tap % 3 - 1;
        const bool ok = tap < 9 && p < npix && iy >= 0 && iy < h && ix >= 0 && ix < w;
        cp_async_16(&sA[px * kRow + tap * 8], ok ? x + (((long long)img * h + iy) * w + ix) * 8 : x, ok);
    }
    // B: the block's filters are one contiguous run of 64 x 72 halves; piece i < 576 is its
    // 16-byte unit i (channel i / 9, tap i % 9), so a warp reads 512 contiguous bytes (whole
    // sectors; one tap a piece across channels would use half of each); pieces 576.. are the
    // zero tenth tap of channel i - 576.
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        const int i = tid + 256 * j, real = i < 9 * kOut;
        const int kk = real ? i / 9 : i - 9 * kOut, tap = real ? i % 9 : 9;
        if (i >= 10 * kOut) break;
        const bool ok = tap < 9 && k0 + kk < k;
        cp_async_16(&sB[kk * kRow + tap * 8], ok ? wt + (long long)(k0 + kk) * 72 + tap * 8 : wt, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float acc[2][4][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mb][nb][i] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kRed / 16; ++ks) {
        unsigned a[2][4], b[2][4];
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
            ldmatrix_x4(a[mb], &sA[(wp * 32 + mb * 16 + (lane & 15)) * kRow + ks * 16 + 8 * (lane >> 4)]);
#pragma unroll
        for (int np = 0; np < 2; ++np)
            ldmatrix_x4(b[np], &sB[(wk * 32 + np * 16 + (lane & 7) + 8 * (lane >> 4)) * kRow + ks * 16 +
                                   8 * ((lane >> 3) & 1)]);
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int nb = 0; nb < 4; ++nb)
                mma_m16n8k16_f16f32(acc[mb][nb], a[mb], &b[nb >> 1][2 * (nb & 1)], acc[mb][nb]);
    }
    __syncthreads();  // every warp is done with sA: it becomes the output tile

    // Fragment (rows = pixels g, g + 8; columns = channels 2t, 2t + 1) -> bias, ReLU, fp16 pairs.
#pragma unroll
    for (int nb = 0; nb < 4; ++nb) {
        const int kl = wk * 32 + nb * 8 + 2 * t;  // even; k is a multiple of 8, so kl + 1 < k too
        const bool kv = k0 + kl < k;
        const float b0 = bias && kv ? __half2float(bias[k0 + kl]) : 0.f;
        const float b1 = bias && kv ? __half2float(bias[k0 + kl + 1]) : 0.f;
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                float v0 = acc[mb][nb][2 * hh] + b0, v1 = acc[mb][nb][2 * hh + 1] + b1;
                if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
                const int px = wp * 32 + mb * 16 + g + 8 * hh;
                *reinterpret_cast<__half2*>(&sA[px * kYRow + kl]) = __floats2half2_rn(v0, v1);
            }
    }
    __syncthreads();
    // 128 pixels x 8 pieces of 8 channels, 4 a thread, consecutive threads along a pixel's row.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int i = tid + 256 * j, px = i >> 3, piece = i & 7, p = p0 + px, kk = k0 + piece * 8;
        if (p < npix && kk < k)
            *reinterpret_cast<uint4*>(y + (long long)p * k + kk) = *reinterpret_cast<const uint4*>(&sA[px * kYRow + piece * 8]);
    }
}
