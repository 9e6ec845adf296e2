// winograd4_conv.cu: the 3x3 convolution (stride 1, pad 1) by Winograd F(4x4, 3x3) on tensor
// cores, transforms fused into the GEMM main loop, the F(2x2) loop's twin (winograd_conv.cu).
//   wino4x4_fprop_f16   y  = act(conv(x, w) + b), act = ReLU or none, bias optional
//   wino4x4_dgrad_f16   dx = conv(dy, rot180(w)^T), zeroed where the optional ReLU mask <= 0
// Both read U, the transformed filters of winograd_filter.cu's wino4x4_filter_f16 (fp16,
// [36 xi][out][in]).
//
// The math, per 4x4 output tile (6x6 input patch d, rows/cols -1..4 around the tile), with the
// interpolation points 0, 1, -1, 1/2, -2 and infinity:
//   V = B^T d B,  M[xi] = sum_c V[xi][c] U[xi][out][c]  (36 GEMMs),  Y = A^T M A.
// Why these points: the usual 0, +-1, +-2 put the fp16 error of V and U at 3.1e-3 relative L2,
// over the 3e-3 bound of the Winograd checks; 1/2 and -2 keep B^T's entries small and give
// 2.0e-3 (scripts/winograd_fp16_error.py simulates both). The filter side uses G's rows
// [1, a, a^2] unscaled, so U of small integer filters is exact in fp16; the 1/f_j factors that
// Toom-Cook puts in G move to A's columns, applied in fp32 in the epilogue (as 15 A^T, integers,
// and one division by 225 at the end).
//   B^T = [1 -3/2 -2  3/2  1   0]    A^T = [1 1/3 -1/3 -16/15  1/15 0]
//         [0  -1  1/2 5/2  1   0]          [0 1/3  1/3  -8/15 -2/15 0]
//         [0   1 -5/2 1/2  1   0]          [0 1/3 -1/3  -4/15  4/15 0]
//         [0  -2  -1   2   1   0]          [0 1/3  1/3  -2/15 -8/15 1]
//         [0  1/2 -1 -1/2  1   0]
//         [0   1 -3/2 -2  3/2  1]
// With integer d in [-r, r], V is a multiple of 1/4 below 49 r: exact in fp16 for small r.
//
// Tiling: a block owns 32 output tiles (GEMM M, consecutive over (n, tile row, tile col)) x 32
// output channels (GEMM N); 384 threads = 12 warps, warp w owns transform points 3w..3w+2 over
// the whole 32 x 32 tile (3 x 2 x 4 mma fragments = 96 fp32 accumulators a lane; 12 warps of
// 3 points, rather than 8 of 4.5, divide 36 evenly). Per point and 16 channels, 2 ldmatrix.x4 of
// V and 2 of U feed 8 mma's. As in F(2x2), M goes through shared memory (fp32) before A^T M A.
// Per output, F(4x4) needs 36 / 16 = 2.25 products against F(2x2)'s 4, so the same accumulator
// budget covers more outputs; the price is the input transform, ~10x the adds of F(2x2)'s per
// patch, which threads 0..255 do (one tile and channel at a time, fp32, one fp16 rounding)
// while warps 8..11 have only mma's.
// Pipeline over 16-channel steps, one barrier a step: in step i the patches of step i + 2 and
// the filters of step i + 2 are issued (separate groups, patches first), the patches of step
// i + 1 are transformed in place into V, and the mma's of step i run. Buffers: 3 of patches / V
// (36 x 32 tiles x 16 halves) and 3 of U (36 x 32 x 16): 6 x 36 KB = 216 KB.
// Shared rows are 16 halves, swizzled (wino_swz in winograd_common.cuh).
#include "winograd_common.cuh"

namespace w4 {
constexpr int kTiles = 32;                 // output tiles per block (GEMM M)
constexpr int kOut = 32;                   // output channels per block (GEMM N)
static_assert(kOut == 32, "the warp steps of winograd_common.cuh cover 32 output channels");
constexpr int kC = 16;                     // input channels per step (GEMM K)
constexpr int kPts = 36;                   // transform points
constexpr int kThreads = 384;              // 12 warps x 3 points
constexpr int kBufs = 3;                   // ring depth of patches / V and of U
constexpr int kXStage = kPts * kTiles * kC;  // halves
constexpr int kUStage = kPts * kOut * kC;    // halves
constexpr int kMRow = kOut + 8;            // epilogue fp32 row: float2 stores conflict-free
constexpr int kSmem = kBufs * (kXStage + kUStage) * 2;  // 221184 bytes (src/ops/conv.rs)
static_assert(kPts * kTiles * kMRow * 4 <= kSmem, "epilogue fits");
}  // namespace w4

// v = B^T d for one column (or row) of 6 values (see the header for B^T), with the common
// subexpressions of these points' B^T: p = d3 - d1 and q = d4 - d2 serve four rows, so 16 adds
// and fused multiply-adds instead of the 22 of the rows one by one.
__device__ __forceinline__ void wino4_bt(const float d[6], float v[6]) {
    const float p = d[3] - d[1], q = d[4] - d[2];
    v[0] = fmaf(1.5f, p, d[0] - d[2] + q);
    v[1] = fmaf(0.5f, fmaf(5.f, d[3], d[2]), d[4] - d[1]);
    v[2] = fmaf(0.5f, fmaf(-5.f, d[2], d[3]), d[4] + d[1]);
    v[3] = fmaf(2.f, p, q);
    v[4] = fmaf(-0.5f, p, q);
    v[5] = fmaf(1.5f, q, fmaf(-2.f, d[3], d[1] + d[5]));
}

// s = 15 A^T m for 6 values -> 4 (see the header for A^T): integer coefficients, so that on data
// whose M is exact the transform is too (A^T's thirds and fifteenths in fp32 would leave
// residues of ~1e-6 where the result is 0, which fp16's subnormals keep); the epilogue divides
// the two passes' 225 out at the end.
__device__ __forceinline__ void wino4_at15(const float m[6], float s[4]) {
    const float p = 5.f * (m[1] + m[2]), q = 5.f * (m[1] - m[2]);
    s[0] = 15.f * m[0] + q - 16.f * m[3] + m[4];
    s[1] = p - 8.f * m[3] - 2.f * m[4];
    s[2] = q - 4.f * m[3] + 4.f * m[4];
    s[3] = p - 2.f * m[3] - 8.f * m[4] + 15.f * m[5];
}

__device__ __forceinline__ void wino4x4_main(const __half* __restrict__ x, const __half* __restrict__ u,
                                             const __half* __restrict__ bias, const __half* __restrict__ mask,
                                             __half* __restrict__ y, int n, int h, int w, int cin, int cout,
                                             int relu) {
    using namespace w4;
    VGG_DYN_SHARED(__half, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int th = (h + 3) >> 2, tw = (w + 3) >> 2, tiles = n * th * tw;
    // Channel blocks vary fastest: the blocks sharing a set of tiles run together and find its
    // patches in L2.
    const int kblocks = (cout + kOut - 1) / kOut;
    const int tile0 = (int)(blockIdx.x / kblocks) * kTiles, k0 = (int)(blockIdx.x % kblocks) * kOut;
    const int steps = (cin + kC - 1) / kC;
    __half* const sxbase = smem;
    __half* const subase = smem + kBufs * kXStage;
    auto locate = [&](int lt, int& timg, int& ty, int& tx) {
        const int tile = tile0 + lt;
        timg = tile / (th * tw);
        ty = tile / tw % th;
        tx = tile % tw;
        return tile < tiles;
    };

    // Patch copies: 32 tiles x 36 pixels x 2 chunks = 2304 16-byte pieces, 6 a thread: thread
    // tid copies chunk tid & 1 of tile (tid >> 1) & 31, patch column tid >> 6, all 6 rows.
    // (Moving down a row adds 6 x 32 shared rows, which leaves the swizzle bit alone.) What
    // does not change from step to step (which rows lie inside the image, the source offset)
    // is worked out once: the loop's address arithmetic was half its non-math instructions.
    const int lt = (tid >> 1) & 31, ch = tid & 1, pcol = tid >> 6;
    int img, ty, tx;
    const bool tile_ok = locate(lt, img, ty, tx);
    const int iy0 = 4 * ty - 1, ix = 4 * tx - 1 + pcol;
    const bool col_ok = tile_ok && ix >= 0 && ix < w;
    unsigned rows_ok = 0;  // bit j: patch row j lies in the image
#pragma unroll
    for (int j = 0; j < 6; ++j) rows_ok |= (col_ok && iy0 + j >= 0 && iy0 + j < h ? 1u : 0u) << j;
    // Row 1 of the patch (4 ty) always lies in the image; rows j sit (j - 1) w cin further on
    // (w cin < 2^31 / 6, checked by the launcher).
    const int xrow = w * cin;
    const __half* const xrow1 = col_ok ? x + (((long long)img * h + iy0 + 1) * w + ix) * cin + 8 * ch : x;
    const int xdst = wino_swz(pcol * kTiles + lt, ch);
    auto load_patches = [&](int s, int stage) {
        if (s >= steps) return;
        __half* sx = sxbase + stage * kXStage + xdst;
        const __half* const xs = xrow1 + s * kC;
        const unsigned ok_rows = s * kC + 8 * ch < cin ? rows_ok : 0u;
#pragma unroll
        for (int j = 0; j < 6; ++j) {
            const bool ok = ok_rows >> j & 1u;
            cp_async_16(sx + j * 6 * kTiles * 16, ok ? xs + (j - 1) * xrow : x, ok);
        }
    };
    // Filter copies: 36 points x 32 out x 2 chunks = 2304 pieces, 6 a thread: chunk tid & 1 of
    // output channel (tid >> 1) & 31 at points (tid >> 6) + 6 j, 6 cout cin apart (< 2^31 / 6,
    // checked by the launcher). A thread past cout reads u itself, zero-filled.
    const int uo = (tid >> 1) & 31, uc = tid & 1, xi0 = tid >> 6;
    const bool uo_ok = k0 + uo < cout;
    const int upts = uo_ok ? 6 * cout * cin : 0;
    const __half* const ubase = uo_ok ? u + ((long long)xi0 * cout + k0 + uo) * cin + 8 * uc : u;
    const int udst = wino_swz(xi0 * kOut + uo, uc);
    auto load_filters = [&](int s, int stage) {
        if (s >= steps) return;
        __half* su = subase + stage * kUStage + udst;
        const bool ok = uo_ok && s * kC + 8 * uc < cin;
        const __half* const us = ok ? ubase + s * kC : u;
#pragma unroll
        for (int j = 0; j < 6; ++j) cp_async_16(su + j * 6 * kOut * 16, us + (ok ? j * upts : 0), ok);
    };
    // V = B^T d B in place: thread tid < 256 -> tile tid >> 3, channels 2 (tid & 7) and
    // 2 (tid & 7) + 1, one after the other (a pair at once would need 72 more registers beside
    // the 96 accumulators). fp32, rounded to fp16 once: a half2 first pass, tried, loses the
    // small differences of large, smooth inputs (images, ReLU outputs) that the second pass
    // forms, and the whole-model gradient check of tests/model.rs caught it (7% off on the
    // first layer's bias gradient; random normal data hides it).
    // Pixel px of this tile and channel lies at p0 + px * kTiles * 16: a row's swizzle bit is
    // bit 2 of the row, which adding multiples of 32 rows leaves alone.
    const int tr_off = wino_swz(tid >> 3, (tid >> 2) & 1) + 2 * (tid & 3);
    auto transform = [&](int s, int stage) {
        if (s >= steps || tid >= 256) return;
#pragma unroll 1
        for (int e = 0; e < 2; ++e) {
            __half* const p0 = sxbase + stage * kXStage + tr_off + e;
            // Columns first, straight from shared memory, so that only m (36 floats) is live.
            float m[6][6];
#pragma unroll
            for (int b = 0; b < 6; ++b) {
                float d6[6], v6[6];
#pragma unroll
                for (int a = 0; a < 6; ++a) d6[a] = __half2float(p0[(6 * a + b) * kTiles * 16]);
                wino4_bt(d6, v6);
#pragma unroll
                for (int a = 0; a < 6; ++a) m[a][b] = v6[a];
            }
#pragma unroll
            for (int a = 0; a < 6; ++a) {
                float v6[6];
                wino4_bt(m[a], v6);
#pragma unroll
                for (int b = 0; b < 6; ++b) p0[(6 * a + b) * kTiles * 16] = __float2half(v6[b]);
            }
        }
    };

    WinoAcc<3, 2> acc;  // points 3 warp + q, 2 16-tile blocks
    wino_zero_acc(acc);

    // Prologue: groups P0, U0, P1, U1; transform 0 once P0 (and U0) have landed.
    load_patches(0, 0);
    cp_async_commit();
    load_filters(0, 0);
    cp_async_commit();
    load_patches(1, 1);
    cp_async_commit();
    load_filters(1, 1);
    cp_async_commit();
    cp_async_wait<2>();
    __syncthreads();
    transform(0, 0);

    // Ring stages: step it's mma's read stage it % 3, its transform writes (it + 1) % 3, its
    // copies fill (it + 2) % 3, tracked without a division.
    int st = 0;
    for (int it = 0; it < steps; ++it) {
        const int st_next = st == kBufs - 1 ? 0 : st + 1, st_fill = st == 0 ? kBufs - 1 : st - 1;
        // Groups newest first: U it+1, P it+1, U it, ...: all but the newest have landed, so
        // patches it + 1 and filters it are here.
        cp_async_wait<1>();
        // Makes them (and V_it) visible, and ends every read of the buffers refilled next (those
        // of step it - 1).
        __syncthreads();
        load_patches(it + 2, st_fill);
        cp_async_commit();
        load_filters(it + 2, st_fill);
        cp_async_commit();
        transform(it + 1, st_next);

        // M[xi] (32 tiles x 32 out) += V[xi] (32 x 16 c) U[xi]^T for this warp's three points.
        wino_warp_step<kTiles>(acc, sxbase + st * kXStage, subase + st * kUStage, warp, lane);
        st = st_next;
    }
    const float* ms = wino_m_to_shared(acc, smem, kTiles, kMRow, warp, lane);

    // Y = A^T M A + bias, ReLU or mask, in fp32, one channel at a time: thread -> tile idx >> 4,
    // channels 2 (idx & 15), +1, for idx = tid + 384 r below 512; fp16 pairs stored.
#pragma unroll 1
    for (int idx = tid; idx < kTiles * kOut / 2; idx += kThreads) {
        const int lt = idx >> 4, kk = k0 + 2 * (idx & 15);
        int timg, oty, otx;
        if (!locate(lt, timg, oty, otx) || kk >= cout) continue;  // cout is even: kk + 1 < cout too
        float out[2][4][4];  // [channel kk + e][row][col]
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float s[4][6];
#pragma unroll
            for (int b = 0; b < 6; ++b) {
                float m[6], r4[4];
#pragma unroll
                for (int a = 0; a < 6; ++a) m[a] = ms[((6 * a + b) * kTiles + lt) * kMRow + 2 * (idx & 15) + e];
                wino4_at15(m, r4);
#pragma unroll
                for (int i = 0; i < 4; ++i) s[i][b] = r4[i];
            }
            const float bv = bias ? __half2float(bias[kk + e]) : 0.f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float r4[4];
                wino4_at15(s[i], r4);
#pragma unroll
                for (int j = 0; j < 4; ++j) out[e][i][j] = r4[j] * (1.f / 225.f) + bv;
            }
        }
        // The tile's first output; the others lie whole rows (w cout) and pixels (cout) on.
        const long long o00 = (((long long)timg * h + 4 * oty) * w + 4 * otx) * cout + kk;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int oy = 4 * oty + i, ox = 4 * otx + j;
                if (oy >= h || ox >= w) continue;
                const long long o = o00 + (i * w + j) * cout;  // int: Conv3x3::new checks 6 W max(C, K)
                wino_store_pair(y, mask, o, out[0][i][j], out[1][i][j], relu);
            }
    }
}

extern "C" __global__ void __launch_bounds__(384, 1)
    wino4x4_fprop_f16(const __half* __restrict__ x, const __half* __restrict__ u, const __half* __restrict__ bias,
                      __half* __restrict__ y, int n, int h, int w, int c, int k, int relu) {
    wino4x4_main(x, u, bias, nullptr, y, n, h, w, c, k, relu);
}

// dy has K channels, dx has C: the reduction runs over K, the outputs are C channels.
extern "C" __global__ void __launch_bounds__(384, 1)
    wino4x4_dgrad_f16(const __half* __restrict__ dy, const __half* __restrict__ u, const __half* __restrict__ mask,
                      __half* __restrict__ dx, int n, int h, int w, int c, int k) {
    wino4x4_main(dy, u, nullptr, mask, dx, n, h, w, k, c, 0);
}
