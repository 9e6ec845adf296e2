// conv_first_dgrad.cu: the backward-data 3x3 convolution (stride 1, pad 1) of a layer with few
// input channels (VGG's first: C = 3), as an implicit GEMM on tensor cores:
//   igemm3x3_dgrad_c8_f16   dx[q][c] = sum_{r, s, k} dy[q + (1 - r, 1 - s)][k] w[k][r][s][c]
//                           (c < C <= 8), zeroed where the optional ReLU mask is not > 0
// GEMM M = pixels, N = C padded to 8 (one mma n-block), reduction 9 taps x K. The padding of C
// happens here, as the filters are read: no workspace. Winograd does not pay with N = 8, and
// the direct twin (conv_direct.cu) reads every dy value once per output channel and tap.
//
// Tiling: a block owns 8 rows x 32 columns of one image's outputs (256 pixels, one row a warp,
// two m16 blocks a warp), and takes K in chunks of 64: each chunk's dy halo, 10 x 34 pixels x
// 64 channels (1.33 halo pixels an output, against 9 reads a pixel for a flat tile that loads
// each tap), is copied once, and the 9 taps read it at a shift of (r, s): ldmatrix takes a row
// address a lane, so a tap is only another set of addresses. The filters arrive rotated and
// transposed, sB[tap'][c][k] = w[k][8 - tap'][c] (zero for c >= C), so B is n-major like
// conv_first.cu's. Rows are 72 halves (36 words: the 8 rows of an ldmatrix land on distinct
// 4-bank groups). dx rows are C halves, so the epilogue stores single halves (dx is 1/21 of
// dy's bytes at C = 3, K = 64).
#include "common.cuh"
#include "ptx.cuh"

namespace cfd {
constexpr int kTH = 8, kTW = 32;                  // output rows x columns a block
constexpr int kHH = kTH + 2, kHW = kTW + 2;       // halo rows x columns
constexpr int kKc = 64;                           // k a chunk (GEMM reduction per tap)
constexpr int kRow = 72;                          // padded shared row, halves
constexpr int kHalo = kHH * kHW;                  // 340 halo pixels
constexpr int kSmemHalves = (kHalo + 9 * 8) * kRow;  // halo, then 9 taps x 8 channels of filters
static_assert(kSmemHalves * 2 == 59328, "src/ops/conv.rs's IGEMM_DGRAD_C8_SMEM");
}  // namespace cfd

// 3 blocks an SM (59 KB of shared memory each): registers capped at 85 a thread.
extern "C" __global__ void __launch_bounds__(256, 3)
    igemm3x3_dgrad_c8_f16(const __half* __restrict__ dy, const __half* __restrict__ wt,
                          const __half* __restrict__ mask, __half* __restrict__ dx, int n, int h, int w, int c,
                          int k) {
    using namespace cfd;
    VGG_DYN_SHARED(__half, sA);  // [halo pixel][kRow], poisoned per block on the emu device
    __half* const sB = sA + kHalo * kRow;  // [tap' * 8 + c][kRow]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int tiles_x = (w + kTW - 1) / kTW, tiles_y = (h + kTH - 1) / kTH;
    const int bx = (int)blockIdx.x % tiles_x, by = (int)blockIdx.x / tiles_x % tiles_y;
    const int img = (int)blockIdx.x / tiles_x / tiles_y;
    const int oy0 = by * kTH, ox0 = bx * kTW;

    float acc[2][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mb][i] = 0.f;

    for (int kc = 0; kc < k; kc += kKc) {
        // Halo: piece i = (halo pixel i >> 3, 16-byte piece i & 7), so 8 consecutive lanes read
        // one pixel's 128 contiguous bytes and a warp 4 neighbouring pixels. K is a multiple of
        // 8: a piece is all inside K or all past it (zeros, as outside the image).
        for (int i = tid; i < kHalo * 8; i += 256) {
            const int hp = i >> 3, piece = i & 7, gy = oy0 + hp / kHW - 1, gx = ox0 + hp % kHW - 1;
            const int kk = kc + 8 * piece;
            const bool ok = gy >= 0 && gy < h && gx >= 0 && gx < w && kk < k;
            const long long off = (((long long)img * h + gy) * w + gx) * k + kk;
            cp_async_16(&sA[hp * kRow + 8 * piece], ok ? dy + off : dy, ok);
        }
        cp_async_commit();
        // Filters, rotated: entry i = (tap' i >> 9, channel (i >> 6) & 7, k i & 63). 9 K C halves
        // in all (3.5 KB for VGG's first layer), read from L1 / L2 by every block.
        for (int i = tid; i < 9 * 8 * kKc; i += 256) {
            const int tap = i >> 9, cc = (i >> 6) & 7, kk = kc + (i & 63);
            const bool ok = cc < c && kk < k;
            sB[(tap * 8 + cc) * kRow + (i & 63)] =
                ok ? wt[((long long)kk * 9 + (8 - tap)) * c + cc] : __float2half(0.f);
        }
        cp_async_wait<0>();
        __syncthreads();

        // Tap' (r, s) reads the halo at (row warp + r, column px + s): dy at q + (r - 1, s - 1).
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
            const int r = tap / 3, s = tap % 3;
#pragma unroll
            for (int kp = 0; kp < kKc / 32; ++kp) {
                unsigned b[4];  // k 32 kp + 0-7, 8-15, 16-23, 24-31 of channels 0-7
                ldmatrix_x4(b, &sB[(tap * 8 + (lane & 7)) * kRow + 32 * kp + 8 * (lane >> 3)]);
#pragma unroll
                for (int hk = 0; hk < 2; ++hk)
#pragma unroll
                    for (int mb = 0; mb < 2; ++mb) {
                        unsigned a[4];
                        const int hp = (warp + r) * kHW + 16 * mb + (lane & 15) + s;
                        ldmatrix_x4(a, &sA[hp * kRow + 32 * kp + 16 * hk + 8 * (lane >> 4)]);
                        mma_m16n8k16_f16f32(acc[mb], a, &b[2 * hk], acc[mb]);
                    }
            }
        }
        __syncthreads();  // every warp is done with this chunk's halo and filters
    }

    // Fragment: pixels (column 16 mb + g, + 8), channels 2t, 2t + 1; only c < C is stored.
    const int oy = oy0 + warp;
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int ox = ox0 + 16 * mb + g + 8 * (i >> 1), cc = 2 * t + (i & 1);
            if (oy >= h || ox >= w || cc >= c) continue;
            const long long idx = (((long long)img * h + oy) * w + ox) * c + cc;
            const float v = mask && !(__half2float(mask[idx]) > 0.f) ? 0.f : acc[mb][i];
            dx[idx] = __float2half(v);
        }
}
