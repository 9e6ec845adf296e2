// conv_first.cu: the forward 3x3 convolution (stride 1, pad 1) of a layer with few input
// channels (VGG's first: C = 3), as an implicit GEMM on tensor cores:
//   igemm3x3_fprop_c8_f16   y[p][k] = act(sum_{tap, c} x[p + tap][c] w[k][tap][c] + b[k])   (C <= 8)
// GEMM M = pixels, N = K, reduction 9 taps x C padded to 8 = 72, padded to 80 (five mma k-steps)
// with a zero tenth tap. Winograd does not pay here: with 8 channels the GEMMs are too thin, and
// its fp16 transforms of raw image values cost accuracy where the direct sum is exact in fp32.
// C is padded to 8 here, as x and w land in shared memory: no workspace, no padding pass.
//
// Tiling: a block owns 8 rows x 32 columns of one image's outputs (256 pixels, one row a warp)
// x 64 output channels. Its x halo, 10 x 34 pixels, lands once as 16-byte rows of 8 channels
// (1.33 halo pixels an output: a first version copied each pixel's 9 taps, 9 reads of x a pixel
// from L2, after a pass padding x to 8 channels in the workspace). A k-step is 2 taps x 8
// channels, and ldmatrix takes a row address a lane, so the A fragment's rows are the halo
// pixels at the taps' shifts (lanes 0-15 the even tap, 16-31 the odd one; the tenth tap a zero
// row). B: the filters' 64 x 80 halves in rows of 88 (44 words: the 8 rows of an ldmatrix land on
// distinct 4-bank groups). Warp tile 32 pixels x 64 channels: 2 + 4 ldmatrix.x4 feed 16 mma a
// k-step. The epilogue (bias, ReLU, fp16) goes through shared memory, reusing the operands'
// bytes, so that y is written in whole 16-byte pieces of 128-byte pixel rows: writing y (16x x's
// bytes at K = 64) is this kernel's floor.
#include "common.cuh"
#include "ptx.cuh"

namespace cf {
constexpr int kTH = 8, kTW = 32, kHW = kTW + 2;
constexpr int kHalo = (kTH + 2) * kHW;  // 340 halo pixels, then one zero row
constexpr int kOut = 64;                // output channels per block (GEMM N)
constexpr int kRed = 80;                // reduction: 9 taps x 8 channels + 8 zeros
constexpr int kRow = 88;                // padded B row, halves
constexpr int kYRow = 72;               // epilogue row: 64 channels + 8 (36 words: conflict-free half2 stores)
constexpr int kHaloBytes = (kHalo + 1) * 16;
constexpr int kBBytes = kOut * kRow * 2;
constexpr int kYBytes = kTH * kTW * kYRow * 2;
constexpr int kSmem = kHaloBytes + kBBytes > kYBytes ? kHaloBytes + kBBytes : kYBytes;
static_assert(kSmem == 36864 && kHaloBytes % 16 == 0, "src/ops/conv.rs's IGEMM_FPROP_SMEM");
}  // namespace cf

// 64 accumulators a lane: ~100 registers, two blocks an SM (a cap of 85 for three spills).
extern "C" __global__ void __launch_bounds__(256, 2)
    igemm3x3_fprop_c8_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                          const __half* __restrict__ bias, __half* __restrict__ y, int n, int h, int w, int c,
                          int k, int relu) {
    using namespace cf;
    // Dynamic shared memory (poisoned per block on the emu device, unlike static arrays): the halo
    // [pixel][8 channels] and sB [k][tap * 8 + c], later y [pixel][kYRow].
    VGG_DYN_SHARED(unsigned char, smem);
    __half* const sB = reinterpret_cast<__half*>(smem + kHaloBytes);
    __half* const sY = reinterpret_cast<__half*>(smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int kblocks = (k + kOut - 1) / kOut, tiles_x = (w + kTW - 1) / kTW, tiles_y = (h + kTH - 1) / kTH;
    const int kb = (int)blockIdx.x % kblocks, tile = (int)blockIdx.x / kblocks;
    const int bx = tile % tiles_x, by = tile / tiles_x % tiles_y, img = tile / tiles_x / tiles_y;
    const int oy0 = by * kTH, ox0 = bx * kTW, k0 = kb * kOut;

    // Halo pixel hp (and the zero row kHalo): its C channels, zeros to 8, one 16-byte store.
    for (int hp = tid; hp <= kHalo; hp += 256) {
        const int gy = oy0 + hp / kHW - 1, gx = ox0 + hp % kHW - 1;
        __align__(16) __half v[8];
#pragma unroll
        for (int cc = 0; cc < 8; ++cc) v[cc] = __float2half(0.f);
        if (hp < kHalo && gy >= 0 && gy < h && gx >= 0 && gx < w) {
            const __half* const src = x + (((long long)img * h + gy) * w + gx) * c;
#pragma unroll
            for (int cc = 0; cc < 8; ++cc)  // unrolled: v stays in registers (a loop to c would index it)
                if (cc < c) v[cc] = src[cc];
        }
        *reinterpret_cast<uint4*>(smem + hp * 16) = *reinterpret_cast<const uint4*>(v);
    }
    // B: entry i = (channel i / 80, tap (i % 80) / 8, c i % 8), consecutive threads along one
    // filter's taps (contiguous in w for c < C); zero for c >= C, the tenth tap and k >= K.
    for (int i = tid; i < kOut * kRed; i += 256) {
        const int kk = i / kRed, j = i % kRed, tap = j >> 3, cc = j & 7;
        const bool ok = tap < 9 && cc < c && k0 + kk < k;
        sB[kk * kRow + j] = ok ? wt[((long long)(k0 + kk) * 9 + tap) * c + cc] : __float2half(0.f);
    }
    __syncthreads();

    float acc[2][8][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mb][nb][i] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kRed / 16; ++ks) {
        // This lane's row: pixel 16 mb + (lane & 15) of the warp's row, at tap 2 ks + (lane >> 4).
        const int tap = 2 * ks + (lane >> 4);
        unsigned a[2][4], b[4][4];
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
            const int hp = tap < 9 ? (warp + tap / 3) * kHW + 16 * mb + (lane & 15) + tap % 3 : kHalo;
            ldmatrix_x4(a[mb], smem + hp * 16);
        }
#pragma unroll
        for (int np = 0; np < 4; ++np)
            ldmatrix_x4(b[np], &sB[(np * 16 + (lane & 7) + 8 * (lane >> 4)) * kRow + ks * 16 + 8 * ((lane >> 3) & 1)]);
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int nb = 0; nb < 8; ++nb)
                mma_m16n8k16_f16f32(acc[mb][nb], a[mb], &b[nb >> 1][2 * (nb & 1)], acc[mb][nb]);
    }
    __syncthreads();  // every warp is done with the halo and sB: the bytes become the output tile

    // Fragment (rows = pixels g, g + 8; columns = channels 2t, 2t + 1) -> bias, ReLU, fp16 pairs.
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
        const int kl = nb * 8 + 2 * t;  // even; k is a multiple of 8, so kl + 1 < k too
        const bool kv = k0 + kl < k;
        const float b0 = bias && kv ? __half2float(bias[k0 + kl]) : 0.f;
        const float b1 = bias && kv ? __half2float(bias[k0 + kl + 1]) : 0.f;
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                float v0 = acc[mb][nb][2 * hh] + b0, v1 = acc[mb][nb][2 * hh + 1] + b1;
                if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
                const int px = warp * kTW + mb * 16 + g + 8 * hh;
                *reinterpret_cast<__half2*>(&sY[px * kYRow + kl]) = __floats2half2_rn(v0, v1);
            }
    }
    __syncthreads();
    // 256 pixels x 8 pieces of 8 channels, 8 a thread, consecutive threads along a pixel's row.
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int i = tid + 256 * j, px = i >> 3, piece = i & 7, kk = k0 + piece * 8;
        const int oy = oy0 + px / kTW, ox = ox0 + px % kTW;
        if (oy < h && ox < w && kk < k) {
            const long long off = (((long long)img * h + oy) * w + ox) * k + kk;
            *reinterpret_cast<uint4*>(y + off) = *reinterpret_cast<const uint4*>(&sY[px * kYRow + piece * 8]);
        }
    }
}
