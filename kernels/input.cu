// input.cu: the first kernel of a training step, uint8 NHWC images to the network's fp16
// input, as src/reference/input.rs defines it:
//   normalize_u8_f16   y[n][h][w][c] = (x[n][h][w'][c] - mean[c]) / std[c],
//                      w' = flip[n] ? W-1-w : w      (C = 3, per-image flag, std may be 1)
// A byte has 256 values and there are 3 channels, so each block first tabulates all 768
// outputs in shared memory with the reference's exact arithmetic (f64, rounded to f32, then
// to fp16): the result is bit-exact and the per-element work is a table lookup. Then a
// grid-stride over groups of 8 outputs (one 16-byte store each; the position is decomposed
// once a group and stepped), the bytes read coalesced, 3 a pixel.
#include "common.cuh"

// Position of output element i: image, row, column, channel.
struct InputPos {
    long long img;
    int r, col, c;
};

__device__ __forceinline__ InputPos input_pos(long long i, int h, int w) {
    const long long img_len = (long long)h * w * 3;
    InputPos p;
    p.img = i / img_len;
    const int rem = (int)(i - p.img * img_len);
    p.c = rem % 3;
    const int pix = rem / 3;
    p.col = pix % w;
    p.r = pix / w;
    return p;
}

__device__ __forceinline__ void input_step(InputPos& p, int h, int w) {
    if (++p.c < 3) return;
    p.c = 0;
    if (++p.col < w) return;
    p.col = 0;
    if (++p.r < h) return;
    p.r = 0;
    ++p.img;
}

__device__ __forceinline__ __half input_one(const unsigned char* __restrict__ x, const unsigned char* __restrict__ flip,
                                            const unsigned short* lut, const InputPos& p, int h, int w) {
    const int src_col = (flip && flip[p.img]) ? w - 1 - p.col : p.col;
    const long long src = ((p.img * h + p.r) * w + src_col) * 3 + p.c;
    return __ushort_as_half(lut[p.c * 256 + x[src]]);
}

extern "C" __global__ void normalize_u8_f16(const unsigned char* __restrict__ x,
                                            const unsigned char* __restrict__ flip, __half* __restrict__ y,
                                            long long n, int h, int w, float m0, float m1, float m2, float s0,
                                            float s1, float s2) {
    __shared__ unsigned short lut[3 * 256];
    for (int t = threadIdx.x; t < 3 * 256; t += blockDim.x) {
        const int c = t >> 8, v = t & 255;
        const float mean = c == 0 ? m0 : (c == 1 ? m1 : m2);
        const float sd = c == 0 ? s0 : (c == 1 ? s1 : s2);
        lut[t] = __half_as_ushort(__float2half_rn((float)(((double)v - (double)mean) / (double)sd)));
    }
    __syncthreads();

    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long groups = (reinterpret_cast<unsigned long long>(y) & 15) == 0 ? n / 8 : 0;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        InputPos p = input_pos(g * 8, h, w);
        uint4 out;
        __half* o = reinterpret_cast<__half*>(&out);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            o[k] = input_one(x, flip, lut, p, h, w);
            input_step(p, h, w);
        }
        reinterpret_cast<uint4*>(y)[g] = out;
    }
    for (long long i = groups * 8 + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = input_one(x, flip, lut, input_pos(i, h, w), h, w);
}
