// winograd_filter.cu: the filter transforms of Winograd F(2x2, 3x3) and F(4x4, 3x3) (the latter
// at the end of the file), U = G g G^T per (k, c); for F(2x2)
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
// written as fp16 in the layout the main loop (winograd_conv.cu) reads: mma fragment order
// (below), xi = 4i + j the transform point.
//   wino2x2_filter_f16  dgrad = 0: fprop,  out = k, in = c, g[r][s] = w[k][r][s][c]
//                       dgrad = 1: dgrad,  out = c, in = k, g[r][s] = w[k][2-r][2-s][c]
// The dgrad variant is the 180-degree rotated filter with K and C swapped: dX is the forward
// convolution of dY with it, so one main loop serves both passes.
// fp16 is enough: every U is a sum of at most 9 terms / 4 (|U| <= 9/4 max|g|), rounded once
// from fp32; with small integer filters the values are exact multiples of 1/4.
// One thread per (k, c) (F(2x2): per padded pair), consecutive threads along the input
// channels. The kernels are tiny next to the convolution and run once per step.
#include "winograd_common.cuh"

// This thread's (k, c) pair of the F(4x4) transform: its 3x3 taps g (rotated for dgrad) and
// where its U values go, U[xi * stride + at] (out and in swapped for dgrad). False past the
// last pair.
__device__ __forceinline__ bool wino_filter_job(const __half* __restrict__ wt, int k, int c, int dgrad, float g[3][3],
                                                long long& at, long long& stride) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)k * c) return false;
    const int ci = (int)(i % c), ko = (int)(i / c);
    wino_filter_taps(wt, ko, ci, c, dgrad, g);
    const long long out = dgrad ? ci : ko, in = dgrad ? ko : ci, n_out = dgrad ? c : k, n_in = dgrad ? k : c;
    at = out * n_in + in;
    stride = n_out * n_in;
    return true;
}

// F(2x2)'s U goes out in the order of the main loop's mma B fragments, so that each lane loads
// its own from global memory (winograd_conv.cu): [xi][out / 32][in / 16][lane][8 u32], out
// padded to 32 and in to 16 with zeros. Lane g 4 + t's 8 registers for 32 outputs o and 16
// inputs: register 2 nb + h holds U[o = 8 nb + g][in = 8 h + 2t, + 1] (PTX ISA, mma.m16n8k16's
// B: b0 k = 2t, 2t + 1; b1 k = 2t + 8, + 9; n = g). One thread per padded (out, in) pair.
extern "C" __global__ void wino2x2_filter_f16(const __half* __restrict__ wt, __half* __restrict__ u, int k, int c,
                                              int dgrad) {
    const int n_out = dgrad ? c : k, n_in = dgrad ? k : c;
    const int kbs = (n_out + 31) / 32, css = (n_in + 15) / 16;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)kbs * 32 * css * 16) return;
    const int in = (int)(i % (css * 16)), out = (int)(i / (css * 16));
    float g[3][3] = {};
    if (out < n_out && in < n_in) wino_filter_taps(wt, dgrad ? in : out, dgrad ? out : in, c, dgrad, g);
    const int ol = out & 31, cl = in & 15, lane = (ol & 7) * 4 + ((cl & 7) >> 1);
    const long long at =
        ((((long long)(out >> 5) * css + (in >> 4)) * 32 + lane) * 8 + (ol >> 3) * 2 + (cl >> 3)) * 2 + (cl & 1);
    const long long stride = (long long)kbs * css * 32 * 16;  // halves a transform point
    // t = G g (4 x 3), then U = t G^T (4 x 4).
    float t[4][3];
#pragma unroll
    for (int s = 0; s < 3; ++s) {
        t[0][s] = g[0][s];
        t[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
        t[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
        t[3][s] = g[2][s];
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const float v[4] = {t[a][0], 0.5f * (t[a][0] + t[a][1] + t[a][2]), 0.5f * (t[a][0] - t[a][1] + t[a][2]),
                            t[a][2]};
#pragma unroll
        for (int b = 0; b < 4; ++b) u[(a * 4 + b) * stride + at] = __float2half(v[b]);
    }
}

// The filter transform of Winograd F(4x4, 3x3) (points 0, 1, -1, 1/2, -2, infinity; see
// winograd4_conv.cu), U = G g G^T with G's rows [1, a, a^2] (and [0, 0, 1]): the Toom-Cook
// factors 1/f_j live in the main loop's A^T instead, so U of small integer filters is exact
// (multiples of 1/16, |U| <= 49 max|g|). Layout U[xi = 6i + j][out][in], `in` (the GEMM
// reduction) contiguous, so a block's 16-byte copies of 32 output channels x 16 input channels
// are whole aligned pieces; the dgrad variant likewise rotates and swaps K and C.
extern "C" __global__ void wino4x4_filter_f16(const __half* __restrict__ wt, __half* __restrict__ u, int k, int c,
                                              int dgrad) {
    float g[3][3];
    long long at, stride;
    if (!wino_filter_job(wt, k, c, dgrad, g, at, stride)) return;
    // Row j of G applied to a 3-vector v: v0 + a v1 + a^2 v2, a = 0, 1, -1, 1/2, -2; then v2.
    auto gv = [](const float v[3], float o[6]) {
        o[0] = v[0];
        o[1] = v[0] + v[1] + v[2];
        o[2] = v[0] - v[1] + v[2];
        o[3] = v[0] + 0.5f * v[1] + 0.25f * v[2];
        o[4] = v[0] - 2.f * v[1] + 4.f * v[2];
        o[5] = v[2];
    };
    float t[6][3];  // t = G g
#pragma unroll
    for (int s = 0; s < 3; ++s) {
        const float col[3] = {g[0][s], g[1][s], g[2][s]};
        float o[6];
        gv(col, o);
#pragma unroll
        for (int a = 0; a < 6; ++a) t[a][s] = o[a];
    }
#pragma unroll
    for (int a = 0; a < 6; ++a) {
        float v[6];
        gv(t[a], v);
#pragma unroll
        for (int b = 0; b < 6; ++b) u[(a * 6 + b) * stride + at] = __float2half(v[b]);
    }
}
