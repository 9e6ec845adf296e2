// winograd_conv.cu: the 3x3 convolution (stride 1, pad 1) by Winograd F(2x2, 3x3) on tensor
// cores, input and output transforms fused into the GEMM main loop.
//   wino2x2_fprop_f16   y  = act(conv(x, w) + b), act = ReLU or none, bias optional
//   wino2x2_dgrad_f16   dx = conv(dy, rot180(w)^T), zeroed where the optional ReLU mask <= 0
// Both read U, the transformed filters of winograd_filter.cu (fp16, [16 xi][out][in]); dgrad is
// the same computation as fprop with the rotated, K<->C swapped filters that the dgrad variant
// of the filter transform writes, so one main loop serves both and only the epilogue differs.
//
// The math, per 2x2 output tile (4x4 input patch d, rows/cols -1..2 around the tile):
//   V = B^T d B  (adds only),  M[xi] = sum_c V[xi][c] U[xi][out][c]  (16 GEMMs),  Y = A^T M A.
//
// Tiling: a block owns 32 output tiles (GEMM M, tiles numbered over n, tile row, tile col)
// x 64 output channels (GEMM N), 256 threads = 8 warps as 2 (tiles) x 4 (channels). A warp
// owns 16 tiles x 16 channels for all 16 transform points, so it holds, in registers, every
// M[xi] a tile's output transform needs: the epilogue (A^T M A, bias, ReLU or mask, fp16
// store) runs straight from the mma accumulators, with no shared-memory round trip. That is
// 16 x 2 x 4 = 128 fp32 accumulators a lane; 256 threads stay within 255 registers.
// The reduction over input channels goes 16 at a time (one mma k-step), double-buffered:
//   1. cp.async (16 B, zero-fill for padding, ragged tiles and a C that is 8 mod 16) of the 32
//      tiles' 4x4 patches [px][tile][16 c] and of U [xi][64 out][16 c] for chunk i+1, while
//   2. chunk i's patches are transformed in place into V [xi][tile][16 c] (one thread a tile
//      and channel pair, fp32 adds, one fp16 rounding: |V| <= 4 max|d|), then
//   3. per xi one ldmatrix.x4 of V (A: 16 tiles x 16 c), one of U (B: 16 out x 16 c), two mma.
// Rows are padded from 16 to 24 halves (48 B = 12 words): the 8 row addresses of an ldmatrix
// land on 8 distinct 4-bank groups. Smem: 2 stages x (16x32 + 16x64) x 24 x 2 B = 144 KB,
// one block per SM (the 128 accumulators allow no second one anyway).
// Known costs to attack next: neighbouring tiles' patches overlap (each pixel is copied about
// 4 times from L2), the transform and the mma's of one stage do not overlap within a block,
// and the 2 ldmatrix per 2 mma keep shared-memory bandwidth close to the limit.
#include "common.cuh"
#include "ptx.cuh"

namespace w2 {
constexpr int kTiles = 32;                     // output tiles per block (GEMM M)
constexpr int kOut = 64;                       // output channels per block (GEMM N)
constexpr int kC = 16;                         // input channels per stage (GEMM K)
constexpr int kRow = 24;                       // padded shared row, halves
constexpr int kDStage = 16 * kTiles * kRow;    // halves: patches, then V in place
constexpr int kUStage = 16 * kOut * kRow;      // halves: transformed filters
// Dynamic shared memory: 2 * (kDStage + kUStage) * 2 bytes = 147456 (src/ops/conv.rs).
}  // namespace w2

// V = B^T d B for one channel, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
__device__ __forceinline__ void wino2x2_input_transform(float d[4][4]) {
    float m[4][4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        m[0][b] = d[0][b] - d[2][b];
        m[1][b] = d[1][b] + d[2][b];
        m[2][b] = d[2][b] - d[1][b];
        m[3][b] = d[1][b] - d[3][b];
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        d[a][0] = m[a][0] - m[a][2];
        d[a][1] = m[a][1] + m[a][2];
        d[a][2] = m[a][2] - m[a][1];
        d[a][3] = m[a][1] - m[a][3];
    }
}

__device__ __forceinline__ void wino2x2_main(const __half* __restrict__ x, const __half* __restrict__ u,
                                             const __half* __restrict__ bias, const __half* __restrict__ mask,
                                             __half* __restrict__ y, int n, int h, int w, int cin, int cout,
                                             int relu) {
    using namespace w2;
    VGG_DYN_SHARED(__half, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int th = (h + 1) >> 1, tw = (w + 1) >> 1, tiles = n * th * tw;
    const int tile0 = blockIdx.x * kTiles, k0 = blockIdx.y * kOut;
    const int chunks = (cin + kC - 1) / kC;

    // Copy roles. Patches: tile lt, channels ch8..ch8+7, column pb of the 4x4 patch, all 4 rows.
    // Filters: output channel uo, channels ch8..ch8+7, transform points (tid >> 7) + 2j.
    const int lt = (tid >> 1) & 31, ch8 = (tid & 1) * 8, pb = tid >> 6, uo = (tid >> 1) & 63;
    const bool tile_ok = tile0 + lt < tiles;
    const int tt = tile_ok ? tile0 + lt : 0;
    const int img = tt / (th * tw), iy0 = 2 * (tt / tw % th) - 1, ix = 2 * (tt % tw) - 1 + pb;
    const bool col_ok = tile_ok && ix >= 0 && ix < w;
    auto load = [&](int chunk, int buf) {
        const int c = chunk * kC + ch8;
        __half* sd = smem + buf * kDStage;
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int iy = iy0 + a;
            const bool ok = col_ok && iy >= 0 && iy < h && c < cin;
            const __half* src = ok ? x + (((long long)img * h + iy) * w + ix) * cin + c : x;
            cp_async_16(sd + ((a * 4 + pb) * kTiles + lt) * kRow + ch8, src, ok);
        }
        __half* su = smem + 2 * kDStage + buf * kUStage;
        const bool uok = k0 + uo < cout && c < cin;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int xi = (tid >> 7) + 2 * j;
            const __half* src = uok ? u + ((long long)xi * cout + k0 + uo) * cin + c : u;
            cp_async_16(su + (xi * kOut + uo) * kRow + ch8, src, uok);
        }
    };

    float acc[16][2][4];
#pragma unroll
    for (int xi = 0; xi < 16; ++xi)
#pragma unroll
        for (int nb = 0; nb < 2; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[xi][nb][i] = 0.f;

    const int wt = warp >> 2, wk = warp & 3;  // this warp: tiles wt*16.., channels wk*16..
    load(0, 0);
    cp_async_commit();
    for (int it = 0; it < chunks; ++it) {
        const int buf = it & 1;
        if (it + 1 < chunks) load(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        // Input transform in place: thread -> tile tid >> 3, channels 2 (tid & 7), +1.
        {
            __half* p = smem + buf * kDStage + (tid >> 3) * kRow + 2 * (tid & 7);
            float d[2][4][4];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(p + (a * 4 + b) * kTiles * kRow));
                    d[0][a][b] = v.x;
                    d[1][a][b] = v.y;
                }
            wino2x2_input_transform(d[0]);
            wino2x2_input_transform(d[1]);
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b)
                    *reinterpret_cast<__half2*>(p + (a * 4 + b) * kTiles * kRow) =
                        __floats2half2_rn(d[0][a][b], d[1][a][b]);
        }
        __syncthreads();

        // 16 GEMMs, one k-step each: M[xi] (16 tiles x 16 out) += V[xi] (16 x 16c) U[xi]^T.
        const __half* sv = smem + buf * kDStage;
        const __half* su = smem + 2 * kDStage + buf * kUStage;
#pragma unroll
        for (int xi = 0; xi < 16; ++xi) {
            unsigned a[4], b[4];
            ldmatrix_x4(a, sv + (xi * kTiles + wt * 16 + (lane & 15)) * kRow + 8 * (lane >> 4));
            ldmatrix_x4(b, su + (xi * kOut + wk * 16 + (lane & 7) + 8 * (lane >> 4)) * kRow + 8 * ((lane >> 3) & 1));
            mma_m16n8k16_f16f32(acc[xi][0], a, b, acc[xi][0]);
            mma_m16n8k16_f16f32(acc[xi][1], a, b + 2, acc[xi][1]);
        }
        __syncthreads();  // the next iteration's copy overwrites this buffer
    }

    // Epilogue from registers: lane holds M[0..15] of tiles g, g+8 and channels 2t, 2t+1 of
    // each 8-channel block. Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1].
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int tile = tile0 + wt * 16 + g + 8 * hh;
        if (tile >= tiles) continue;
        const int timg = tile / (th * tw), oy0 = 2 * (tile / tw % th), ox0 = 2 * (tile % tw);
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) {
            const int kk = k0 + wk * 16 + nb * 8 + 2 * t;  // even, and kk + 1 < cout when kk < cout
            if (kk >= cout) continue;
            float out[2][2][2];  // [channel kk + e][row][col]
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float s[2][4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float m0 = acc[j][nb][2 * hh + e], m1 = acc[4 + j][nb][2 * hh + e];
                    const float m2 = acc[8 + j][nb][2 * hh + e], m3 = acc[12 + j][nb][2 * hh + e];
                    s[0][j] = m0 + m1 + m2;
                    s[1][j] = m1 - m2 - m3;
                }
                const float b = bias ? __half2float(bias[kk + e]) : 0.f;
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    out[e][i][0] = s[i][0] + s[i][1] + s[i][2] + b;
                    out[e][i][1] = s[i][1] - s[i][2] - s[i][3] + b;
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int oy = oy0 + i, ox = ox0 + j;
                    if (oy >= h || ox >= w) continue;
                    const long long o = (((long long)timg * h + oy) * w + ox) * cout + kk;
                    float v0 = out[0][i][j], v1 = out[1][i][j];
                    if (relu) v0 = v0 > 0.f ? v0 : 0.f, v1 = v1 > 0.f ? v1 : 0.f;
                    if (mask) {
                        const float2 mv = __half22float2(*reinterpret_cast<const __half2*>(mask + o));
                        if (!(mv.x > 0.f)) v0 = 0.f;
                        if (!(mv.y > 0.f)) v1 = 0.f;
                    }
                    *reinterpret_cast<__half2*>(y + o) = __floats2half2_rn(v0, v1);
                }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
    wino2x2_fprop_f16(const __half* __restrict__ x, const __half* __restrict__ u, const __half* __restrict__ bias,
                      __half* __restrict__ y, int n, int h, int w, int c, int k, int relu) {
    wino2x2_main(x, u, bias, nullptr, y, n, h, w, c, k, relu);
}

// dy has K channels, dx has C: the reduction runs over K, the outputs are C channels.
extern "C" __global__ void __launch_bounds__(256, 1)
    wino2x2_dgrad_f16(const __half* __restrict__ dy, const __half* __restrict__ u, const __half* __restrict__ mask,
                      __half* __restrict__ dx, int n, int h, int w, int c, int k) {
    wino2x2_main(dy, u, nullptr, mask, dx, n, h, w, k, c, 0);
}
