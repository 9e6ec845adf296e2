// winograd_filter.cu: the filter transform of Winograd F(2x2, 3x3), U = G g G^T per (k, c),
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
// written as fp16 in the layout the main loop (winograd_conv.cu) reads: U[xi][out][in] with
// xi = 4i + j the transform point, `in` (the GEMM reduction) contiguous, so a block's 16-byte
// copies of 64 output channels x 16 input channels are whole aligned pieces.
//   wino2x2_filter_f16  dgrad = 0: fprop,  out = k, in = c, g[r][s] = w[k][r][s][c]
//                       dgrad = 1: dgrad,  out = c, in = k, g[r][s] = w[k][2-r][2-s][c]
// The dgrad variant is the 180-degree rotated filter with K and C swapped: dX is the forward
// convolution of dY with it, so one main loop serves both passes.
// fp16 is enough: every U is a sum of at most 9 terms / 4 (|U| <= 9/4 max|g|), rounded once
// from fp32; with small integer filters the values are exact multiples of 1/4.
// One thread per (k, c), consecutive threads along c: the KRSC reads are contiguous. The
// kernel is tiny next to the convolution (K*C*9 reads, K*C*16 writes) and runs once per step.
#include "common.cuh"

extern "C" __global__ void wino2x2_filter_f16(const __half* __restrict__ wt, __half* __restrict__ u, int k, int c,
                                              int dgrad) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)k * c) return;
    const int ci = (int)(i % c), ko = (int)(i / c);
    float g[3][3];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int s = 0; s < 3; ++s) {
            const int rr = dgrad ? 2 - r : r, ss = dgrad ? 2 - s : s;
            g[r][s] = __half2float(wt[((long long)(ko * 3 + rr) * 3 + ss) * c + ci]);
        }
    // t = G g (4 x 3), then U = t G^T (4 x 4).
    float t[4][3];
#pragma unroll
    for (int s = 0; s < 3; ++s) {
        t[0][s] = g[0][s];
        t[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
        t[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
        t[3][s] = g[2][s];
    }
    const int out = dgrad ? ci : ko, in = dgrad ? ko : ci, n_out = dgrad ? c : k, n_in = dgrad ? k : c;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const float v[4] = {t[a][0], 0.5f * (t[a][0] + t[a][1] + t[a][2]), 0.5f * (t[a][0] - t[a][1] + t[a][2]),
                            t[a][2]};
#pragma unroll
        for (int b = 0; b < 4; ++b) u[((long long)(a * 4 + b) * n_out + out) * n_in + in] = __float2half(v[b]);
    }
}
