// conv_wgmma.cuh: what the wgmma 3x3 conv kernels (conv_wgmma.cu, conv_wgmma_halo.cu) share:
// their B tiles' layout and their epilogue.
#pragma once
#include "wgmma.cuh"

// Byte offset of 16-byte chunk `chunk` (channels 8 chunk..) of row `row` in a K-major tile of
// 64-channel rows, core matrix (row / 8, chunk) at ((row / 8) * 8 + chunk) * 128 bytes: lbo 128,
// sbo 1024.
__device__ __forceinline__ int conv_wgmma_off(int row, int chunk) { return ((row >> 3) * 8 + chunk) * 128 + (row & 7) * 16; }

// Accumulator row `half` (0: row g, 1: row g + 8 of the warp's 16) of an m64nN tile, output
// channels o0 + 8 j + 2 t (+ 1), to pixel p of y: plus bias, ReLU (fprop) or zeroed where the
// mask is not > 0 (dgrad), as fp16 pairs. cout is even, so o < cout means o + 1 < cout too.
template <int kOut>
__device__ __forceinline__ void conv_wgmma_store_row(const float (&acc)[kOut / 2], int half, long long p, int o0, int t,
                                                     const __half* __restrict__ bias, const __half* __restrict__ mask,
                                                     __half* __restrict__ y, int cout, int relu) {
    __half* const yrow = y + p * cout;
    const __half* const mrow = mask ? mask + p * cout : nullptr;
#pragma unroll
    for (int j = 0; j < kOut / 8; ++j) {
        const int o = o0 + 8 * j + 2 * t;
        if (o >= cout) continue;
        float v0 = acc[4 * j + 2 * half], v1 = acc[4 * j + 2 * half + 1];
        if (bias) v0 += __half2float(bias[o]), v1 += __half2float(bias[o + 1]);
        if (relu) v0 = v0 > 0.f ? v0 : 0.f, v1 = v1 > 0.f ? v1 : 0.f;
        if (mrow) {
            const float2 mv = __half22float2(*reinterpret_cast<const __half2*>(mrow + o));
            if (!(mv.x > 0.f)) v0 = 0.f;
            if (!(mv.y > 0.f)) v1 = 0.f;
        }
        *reinterpret_cast<__half2*>(yrow + o) = __floats2half2_rn(v0, v1);
    }
}
