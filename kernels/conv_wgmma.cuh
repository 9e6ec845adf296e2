// conv_wgmma.cuh: what the wgmma 3x3 conv kernels share: the fprop / dgrad kernels'
// (conv_wgmma.cu, conv_wgmma_halo.cu) B tile layout and epilogue, and the wgrad kernels'
// (conv_wgrad_wgmma.cu, conv_wgrad_wgmma_halo.cu) bias-gradient sums.
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
        if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
        if (mrow) {
            const float2 mv = __half22float2(*reinterpret_cast<const __half2*>(mrow + o));
            if (!(mv.x > 0.f)) v0 = 0.f;
            if (!(mv.y > 0.f)) v1 = 0.f;
        }
        *reinterpret_cast<__half2*>(yrow + o) = __floats2half2_rn(v0, v1);
    }
}

// The wgrad kernels' epilogue: accumulator row `half` of an m64nN tile (as above) as fp32 pairs
// to row[o0 + 8 j + 2 t (+ 1)], those below `limit` (a multiple of 8, so o + 1 < limit too).
template <int kN>
__device__ __forceinline__ void conv_wgmma_store_f32_row(const float (&acc)[kN / 2], int half, float* __restrict__ row,
                                                         int o0, int t, int limit) {
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
        const int o = o0 + 8 * j + 2 * t;
        if (o < limit) *reinterpret_cast<float2*>(row + o) = make_float2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
    }
}

// The halo kernels' padded position space (conv_wgmma_halo.cu): whether position P holds a
// pixel of the n x h x w image (pitch wp = w + 2, h + 1 rows an image), and which (`pix`).
__device__ __forceinline__ bool conv_halo_pixel(int P, int wp, int h, int w, int n, int& pix) {
    const int r = P / wp, xp = P - r * wp, img = r / (h + 1), yy = r - img * (h + 1) - 1;
    pix = (img * h + yy) * w + xp - 1;
    return P >= 0 && img < n && yy >= 0 && xp >= 1 && xp <= w;
}

// db in the wgrad kernels: this thread's share of one stage's dY tile (M/N-major, 128 k x 64
// pixels, k block i at 1024 i, pixel q's row at 16 q): k = tid & 127, pixels 32 (tid >> 7)..
// + 31, added to db_sum. Called before the stage's wgmma's are issued: ptxas serializes wgmma's
// (C7515) when other instructions run while they are in flight and it cannot tell their
// registers apart.
__device__ __forceinline__ void conv_wgmma_db_stage(const unsigned char* tile, int tid, float& db_sum) {
    const int kk = tid & 127, half = tid >> 7;
    const unsigned char* const a = tile + (kk / 8) * 1024 + (kk % 8) * 2;
#pragma unroll 8
    for (int q = 32 * half; q < 32 * half + 32; ++q) db_sum += __half2float(*reinterpret_cast<const __half*>(a + q * 16));
}

// The two halves' db sums (256 threads) added in a fixed order through shared memory (free by
// now: call after the main loop, every thread of the block) into db[k0 ..] below k.
__device__ __forceinline__ void conv_wgmma_db_finish(float db_sum, unsigned char* smem, float* __restrict__ db, int k0,
                                                     int k, int tid) {
    __syncthreads();
    float* const sdb = reinterpret_cast<float*>(smem);
    sdb[tid] = db_sum;
    __syncthreads();
    if (tid < 128 && k0 + tid < k) db[k0 + tid] = sdb[tid] + sdb[tid + 128];
}
