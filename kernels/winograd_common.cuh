// winograd_common.cuh: what the Winograd F(2x2) and F(4x4) main loops (winograd_conv.cu,
// winograd4_conv.cu) share: the swizzled shared-memory rows, one transform point's GEMM step
// over a block of 32 output channels, M's trip through shared memory, and the epilogue's store.
#pragma once
#include "common.cuh"
#include "ptx.cuh"

// Offset in halves of 16-byte chunk `chunk` (0, 1) of 16-half row `row`: the chunk index is
// XORed with bit 2 of the row, so the 8 rows an ldmatrix matrix reads (and a warp's transform
// accesses) hit 32 distinct banks without padding. Adding a multiple of 8 rows keeps the bit.
__device__ __forceinline__ int wino_swz(int row, int chunk) { return row * 16 + (((chunk ^ (row >> 2)) & 1) << 3); }

// This lane's offsets (halves) within a 16-row block, for the ldmatrix.x4 of an A operand
// (V: 16 rows x 16 k, lanes 0-15 rows of chunk 0, lanes 16-31 rows of chunk 1) and of a B
// operand pair (U: rows 0-7 and 8-15 at chunk 0 then 1 = lanes 0-7, 8-15, 16-23, 24-31 as
// rows 0-7 c0, 0-7 c1, 8-15 c0, 8-15 c1). Any block starting at a multiple of 8 rows has the
// same swizzle, so a whole step's addresses are one base plus compile-time offsets.
__device__ __forceinline__ int wino_a_lane(int lane) { return wino_swz(lane & 15, lane >> 4); }
__device__ __forceinline__ int wino_b_lane(int lane) { return wino_swz((lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1); }

// acc (kMb 16-tile blocks x 4 8-channel blocks of m16n8 fragments) += V (kMb * 16 tiles x 16 c
// from sv) U^T (32 out x 16 c), U's B fragments given: b[p] = those of outputs 16 p to 16 p + 15,
// as ldmatrix_x4 of U's rows 16 p.. delivers them (and winograd_filter.cu stores them for
// F(2x2)). sv points at this lane's row (a block start, a multiple of 8 rows, plus
// wino_a_lane). Per 16 channels: kMb ldmatrix.x4 of V feed 8 kMb mma's.
template <int kMb>
__device__ __forceinline__ void wino_point_mma_b(float (&acc)[kMb][4][4], const __half* sv, const unsigned (&b)[2][4]) {
#pragma unroll
    for (int mb = 0; mb < kMb; ++mb) {
        unsigned a[4];
        ldmatrix_x4(a, sv + mb * 16 * 16);
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            mma_m16n8k16_f16f32(acc[mb][2 * p], a, b[p], acc[mb][2 * p]);
            mma_m16n8k16_f16f32(acc[mb][2 * p + 1], a, b[p] + 2, acc[mb][2 * p + 1]);
        }
    }
}

// As wino_point_mma_b, with U from shared memory: su points at this lane's row (a block start
// plus wino_b_lane); 2 ldmatrix.x4 of U.
template <int kMb>
__device__ __forceinline__ void wino_point_mma(float (&acc)[kMb][4][4], const __half* sv, const __half* su) {
    unsigned b[2][4];
#pragma unroll
    for (int p = 0; p < 2; ++p) ldmatrix_x4(b[p], su + p * 16 * 16);
    wino_point_mma_b<kMb>(acc, sv, b);
}

// One point's fragments to ms[row0 + tile][channel] (fp32 rows of `mrow` floats). Fragment:
// rows (tiles) g and g + 8, columns (channels) 2t, 2t + 1.
template <int kMb>
__device__ __forceinline__ void wino_store_m(const float (&acc)[kMb][4][4], float* ms, int row0, int mrow, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mb = 0; mb < kMb; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) {
            float* r = ms + (row0 + mb * 16 + g) * mrow + nb * 8 + 2 * t;
            *reinterpret_cast<float2*>(r) = make_float2(acc[mb][nb][0], acc[mb][nb][1]);
            *reinterpret_cast<float2*>(r + 8 * mrow) = make_float2(acc[mb][nb][2], acc[mb][nb][3]);
        }
}

// A warp's accumulators: kQ transform points x kMb 16-tile blocks x 4 8-channel blocks of
// m16n8 fragments (the warp's points over the block's whole tile x 32-channel GEMM).
template <int kQ, int kMb>
using WinoAcc = float[kQ][kMb][4][4];

template <int kQ, int kMb>
__device__ __forceinline__ void wino_zero_acc(WinoAcc<kQ, kMb>& acc) {
#pragma unroll
    for (int q = 0; q < kQ; ++q)
#pragma unroll
        for (int mb = 0; mb < kMb; ++mb)
#pragma unroll
            for (int nb = 0; nb < 4; ++nb)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[q][mb][nb][i] = 0.f;
}

// This lane's row of V for the first of its warp's points xi = kQ warp + q (V rows xi * kTiles..
// of sv); point q's lies q * kTiles * 16 halves on.
template <int kTiles, int kQ>
__device__ __forceinline__ const __half* wino_warp_v(const __half* sv, int warp, int lane) {
    static_assert(kTiles % 8 == 0, "point blocks must start at a multiple of 8 rows (wino_a_lane)");
    return sv + kQ * warp * kTiles * 16 + wino_a_lane(lane);
}

// One 16-channel step for this warp's points xi = kQ warp + q: M[xi] (kMb * 16 tiles x 32
// out) += V[xi] U[xi]^T, V rows xi * kTiles.. of sv, U rows xi * 32.. of su.
template <int kTiles, int kQ, int kMb>
__device__ __forceinline__ void wino_warp_step(WinoAcc<kQ, kMb>& acc, const __half* sv, const __half* su, int warp,
                                               int lane) {
    const __half* const v = wino_warp_v<kTiles, kQ>(sv, warp, lane);
    const __half* const u = su + kQ * warp * 32 * 16 + wino_b_lane(lane);
#pragma unroll
    for (int q = 0; q < kQ; ++q) wino_point_mma<kMb>(acc[q], v + q * kTiles * 16, u + q * 32 * 16);
}

// After the main loop: waits for the copy groups (only empty ones remain, but none may land on
// the epilogue's data) and for every warp to finish with the pipeline buffers, then stores this
// warp's points of M to ms[xi][tile][channel] (fp32 rows of mrow floats) at the start of shared
// memory and returns ms, visible to the whole block.
template <int kQ, int kMb>
__device__ __forceinline__ float* wino_m_to_shared(const WinoAcc<kQ, kMb>& acc, void* smem, int tiles, int mrow,
                                                   int warp, int lane) {
    cp_async_wait<0>();
    __syncthreads();
    float* ms = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int q = 0; q < kQ; ++q) wino_store_m<kMb>(acc[q], ms, (kQ * warp + q) * tiles, mrow, lane);
    __syncthreads();
    return ms;
}

// Output channels o, o + 1 of one pixel: ReLU (fprop) or zeroed where the mask is not > 0
// (dgrad), stored as an fp16 pair.
__device__ __forceinline__ void wino_store_pair(__half* __restrict__ y, const __half* __restrict__ mask, long long o,
                                                float v0, float v1, int relu) {
    if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
    if (mask) {
        const float2 mv = __half22float2(*reinterpret_cast<const __half2*>(mask + o));
        if (!(mv.x > 0.f)) v0 = 0.f;
        if (!(mv.y > 0.f)) v1 = 0.f;
    }
    *reinterpret_cast<__half2*>(y + o) = __floats2half2_rn(v0, v1);
}

// The 3x3 filter g[r][s] of (output ko, input ci) from KRSC w with c inputs; dgrad: rotated
// 180 degrees (the filter transforms then swap K and C in their output layout).
__device__ __forceinline__ void wino_filter_taps(const __half* __restrict__ wt, int ko, int ci, int c, int dgrad,
                                                 float g[3][3]) {
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int s = 0; s < 3; ++s) {
            const int rr = dgrad ? 2 - r : r, ss = dgrad ? 2 - s : s;
            g[r][s] = __half2float(wt[((long long)(ko * 3 + rr) * 3 + ss) * c + ci]);
        }
}
