// conv_direct.cu: the simple twin of the 3x3 convolutions (stride 1, pad 1), NHWC fp16
// activations, KRSC fp16 filters, fp32 accumulation.
//   direct3x3_fprop_f16    y[n,h,w,k] = act(b[k] + sum_{r,s,c} x[n,h+r-1,w+s-1,c] w[k,r,s,c])
//   direct3x3_dgrad_f16    dx[n,h,w,c] = sum_{k,r,s} dy[n,h-r+1,w-s+1,k] w[k,r,s,c],
//                          zeroed where the optional ReLU mask (previous forward output) <= 0
//   direct3x3_wgrad_f32    per pixel chunk: partial dw[k,r,s,c] and db[k] sums (fp32) into a
//                          workspace; conv_wgrad.cu's wgrad_reduce_f32 sums the chunks in order
// One thread per output element, the loops of src/reference/conv.rs in the same order. This
// is the second check on Winograd and the tensor-core implicit GEMMs (which take C = 3 by
// padding it to 8), and ConvAlgo::Auto's plan where K is not a multiple of 8. Consecutive threads
// take consecutive output channels (fprop) or input channels (dgrad, wgrad), so activation reads
// are broadcasts or contiguous and filter reads are contiguous along C.
// wgrad is split over pixel chunks (blockIdx.y) so that a layer with few weights (the first:
// 64 x 27) still fills the GPU; the split is fixed by the shape, so results are deterministic.
#include "common.cuh"

extern "C" __global__ void direct3x3_fprop_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                                               const __half* __restrict__ bias, __half* __restrict__ y, int n,
                                               int h, int w, int c, int k, int relu) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * h * w * k) return;
    // One 64-bit division; the pixel index fits an int (src/ops/conv.rs checks N*H*W), so the
    // rest is 32-bit: 64-bit divisions are subroutines of ~70 instructions on the GPU.
    const long long pl = i / k;
    const int ko = (int)(i - pl * k), pix = (int)pl;
    const int ow = pix % w, oh = pix / w % h, img = pix / w / h;
    float acc = bias ? __half2float(bias[ko]) : 0.f;
    for (int r = 0; r < 3; ++r) {
        int ih = oh + r - 1;
        if (ih < 0 || ih >= h) continue;
        for (int s = 0; s < 3; ++s) {
            int iw = ow + s - 1;
            if (iw < 0 || iw >= w) continue;
            const __half* xp = x + (((long long)img * h + ih) * w + iw) * c;
            const __half* wp = wt + ((long long)(ko * 3 + r) * 3 + s) * c;
            for (int ci = 0; ci < c; ++ci) acc += __half2float(xp[ci]) * __half2float(wp[ci]);
        }
    }
    if (relu) acc = vgg_relu(acc);
    y[i] = __float2half(acc);
}

extern "C" __global__ void direct3x3_dgrad_f16(const __half* __restrict__ dy, const __half* __restrict__ wt,
                                               const __half* __restrict__ mask, __half* __restrict__ dx, int n,
                                               int h, int w, int c, int k) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * h * w * c) return;
    const long long pl = i / c;  // as in fprop: one 64-bit division
    const int ci = (int)(i - pl * c), pix = (int)pl;
    const int iw = pix % w, ih = pix / w % h, img = pix / w / h;
    float acc = 0.f;
    for (int r = 0; r < 3; ++r) {
        int oh = ih + 1 - r;
        if (oh < 0 || oh >= h) continue;
        for (int s = 0; s < 3; ++s) {
            int ow = iw + 1 - s;
            if (ow < 0 || ow >= w) continue;
            const __half* gp = dy + (((long long)img * h + oh) * w + ow) * k;
            for (int ko = 0; ko < k; ++ko)
                acc += __half2float(gp[ko]) * __half2float(wt[((long long)(ko * 3 + r) * 3 + s) * c + ci]);
        }
    }
    if (mask && !(__half2float(mask[i]) > 0.f)) acc = 0.f;
    dx[i] = __float2half(acc);
}

// Thread i < K*9*C: weight element i (KRSC); K*9*C <= i < K*9*C + K: bias k = i - K*9*C.
// Block row blockIdx.y sums pixels [y * chunk, min(P, (y + 1) * chunk)) and writes
// part[y * (K*9*C + K) + i]. The pixel loop walks (oh, ow) with counters: a 64-bit division
// per pixel (as a first version had) costs more than the multiply-add and made this kernel
// take 27 ms for conv1_1 at batch 64. N*H*W fits an int (src/ops/conv.rs checks it).
extern "C" __global__ void direct3x3_wgrad_f32(const __half* __restrict__ x, const __half* __restrict__ dy,
                                               float* __restrict__ part, int n, int h, int w, int c, int k,
                                               long long chunk) {
    const long long nw = (long long)k * 9 * c;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nw + k) return;
    const int npix = n * h * w;
    const int p0 = (int)(blockIdx.y * chunk), p1 = (int)min((long long)npix, p0 + chunk);
    float acc = 0.f;
    if (i >= nw) {
        const int ko = (int)(i - nw);
        for (int p = p0; p < p1; ++p) acc += __half2float(dy[(long long)p * k + ko]);
    } else {
        const int ci = (int)(i % c), s = (int)(i / c % 3), r = (int)(i / c / 3 % 3), ko = (int)(i / c / 9);
        const int shift = (r - 1) * w + (s - 1);  // same image whenever the bounds hold
        int ow = p0 % w, oh = p0 / w % h;
        for (int p = p0; p < p1; ++p) {
            const int ih = oh + r - 1, iw = ow + s - 1;
            if (ih >= 0 && ih < h && iw >= 0 && iw < w)
                acc += __half2float(dy[(long long)p * k + ko]) * __half2float(x[(long long)(p + shift) * c + ci]);
            if (++ow == w) {
                ow = 0;
                if (++oh == h) oh = 0;
            }
        }
    }
    part[(long long)blockIdx.y * (nw + k) + i] = acc;
}
