// dense_gather.cu: the window matrix of dense evaluation's first FC layer, as
// src/reference/dense_gather.rs defines it:
//   dense_gather_f16   cols[(i*oh + oy)*ow + ox][(dy*tw + dx)*c + ch] = x[i][oy+dy][ox+dx][ch]
// for an NHWC fp16 feature map x of n x fh x fw x c and th x tw windows (oh = fh-th+1,
// ow = fw-tw+1). The column order is the one the trained fc6 weights are stored in (HWC),
// so a plain GEMM with those weights is fc6 applied at every window position.
//
// A pure copy: every output row is th runs of tw*c contiguous input elements. A
// grid-stride loop walks the output in order, so consecutive threads read consecutive
// elements of a run and write consecutive outputs (both coalesced). When c is a multiple of
// 8 and both pointers are 16-byte aligned, each thread moves 8 halves with one 16-byte load
// and store: then no group of 8 straddles two runs (tw*c, and every run start, is a
// multiple of 8). Otherwise one element a thread.
#include "common.cuh"

// Offset in x of output element e, for k = th*tw*c columns and runs of tw*c elements.
__device__ __forceinline__ long long gather_src(long long e, int k, int run, int oh, int ow, int fh, int fw, int c) {
    const long long row = e / k;
    const int col = (int)(e - row * k);
    const int dy = col / run, rest = col - dy * run;
    const long long pos = row / ow;
    const int ox = (int)(row - pos * ow);
    const long long img = pos / oh;
    const int oy = (int)(pos - img * oh);
    return ((img * fh + oy + dy) * fw + ox) * (long long)c + rest;
}

extern "C" __global__ void dense_gather_f16(const __half* __restrict__ x, __half* __restrict__ cols, int n, int fh,
                                            int fw, int c, int th, int tw) {
    const int oh = fh - th + 1, ow = fw - tw + 1, run = tw * c, k = th * run;
    const long long total = (long long)n * oh * ow * k;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = c % 8 == 0 && (reinterpret_cast<unsigned long long>(x) & 15) == 0 &&
                     (reinterpret_cast<unsigned long long>(cols) & 15) == 0;
    if (vec) {
        const uint4* src = reinterpret_cast<const uint4*>(x);
        uint4* dst = reinterpret_cast<uint4*>(cols);
        for (long long g = first; g < total / 8; g += stride)
            dst[g] = src[gather_src(g * 8, k, run, oh, ow, fh, fw, c) / 8];
        return;
    }
    for (long long e = first; e < total; e += stride) cols[e] = x[gather_src(e, k, run, oh, ow, fh, fw, c)];
}
