// pool.cu: 2x2, stride 2 max-pooling over NHWC fp16 activations.
//   maxpool2x2_fwd_f16       y[n][i][j][c] = max of x over rows 2i..2i+1, cols 2j..2j+1; with a
//                            non-null arg also the window index (0..3, row-major) of that max
//   maxpool2x2_bwd_f16       dx = dy routed to the window's maximum, zero elsewhere: read from
//                            the forward's arg when given (one byte a window instead of its
//                            four inputs, so training need not keep the pool's input), else
//                            found again in x
// Output size floor(H/2) x floor(W/2): an odd last row or column is dropped (PyTorch's
// default) and receives zero gradient. Ties go to the first maximum in the window's
// row-major order, as in src/reference/pool.rs; comparisons are strict '>' for that reason.
// A window holding a NaN gives its first NaN (and routes the gradient there).
#include "common.cuh"

// Index (0..3, row-major) of the first maximum of a 2x2 window starting at p.
__device__ __forceinline__ int vgg_argmax2x2(const __half* p, long long row_stride, int c_stride, float* best) {
    float v[4] = {__half2float(p[0]), __half2float(p[c_stride]), __half2float(p[row_stride]),
                  __half2float(p[row_stride + c_stride])};
    int arg = 0;
    for (int k = 1; k < 4; ++k)
        // The first NaN wins and stays: a NaN is never dropped by the pool (as PyTorch's
        // max-pool keeps it), so an overflow upstream reaches the logits instead of vanishing.
        if (v[k] > v[arg] || (v[k] != v[k] && v[arg] == v[arg])) arg = k;
    *best = v[arg];
    return arg;
}

// One thread an output element; consecutive threads read consecutive channels (coalesced).
extern "C" __global__ void maxpool2x2_fwd_f16(const __half* __restrict__ x, __half* __restrict__ y,
                                              unsigned char* __restrict__ arg, int n, int h, int w, int c) {
    int ho = h / 2, wo = w / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * ho * wo * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long long pix = i / c;
    int j = (int)(pix % wo), r = (int)(pix / wo % ho), img = (int)(pix / wo / ho);
    const __half* p = x + (((long long)img * h + 2 * r) * w + 2 * j) * c + ch;
    float best;
    int a = vgg_argmax2x2(p, (long long)w * c, c, &best);
    y[i] = __float2half(best);
    if (arg) arg[i] = (unsigned char)a;
}

// One thread an *input* element, so every element of dx (the dropped odd row / column
// too) is written exactly once without atomics or a separate zero-fill. One of x and arg is
// null.
extern "C" __global__ void maxpool2x2_bwd_f16(const __half* __restrict__ x, const unsigned char* __restrict__ arg,
                                              const __half* __restrict__ dy, __half* __restrict__ dx, int n,
                                              int h, int w, int c) {
    int ho = h / 2, wo = w / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * h * w * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long long pix = i / c;
    int col = (int)(pix % w), row = (int)(pix / w % h), img = (int)(pix / w / h);
    int r = row / 2, j = col / 2;
    if (r >= ho || j >= wo) {
        dx[i] = __float2half(0.f);
        return;
    }
    long long o = (((long long)img * ho + r) * wo + j) * c + ch;
    int a;
    if (arg) {
        a = arg[o];
    } else {
        float best;
        a = vgg_argmax2x2(x + (((long long)img * h + 2 * r) * w + 2 * j) * c + ch, (long long)w * c, c, &best);
    }
    int mine = (row & 1) * 2 + (col & 1);
    dx[i] = a == mine ? dy[o] : __float2half(0.f);
}
