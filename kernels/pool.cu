// pool.cu: 2x2, stride 2 max-pooling over NHWC fp16 activations.
//   maxpool2x2_fwd_f16       y[n][i][j][c] = max of x over rows 2i..2i+1, cols 2j..2j+1; with a
//                            non-null arg also the window index (0..3, row-major) of that max
//   maxpool2x2_bwd_f16       dx = dy routed to the window's maximum, zero elsewhere: read from
//                            the forward's arg when given (one byte a window instead of its
//                            four inputs, so training need not keep the pool's input), else
//                            found again in x
//   maxpool2x2_fwd_c8_f16     the forward (and arg), 8 channels a thread
//   maxpool2x2_bwd_arg_c8_f16 the backward from arg, 8 channels a thread
// The _c8 kernels run where C is a multiple of 8 (the launcher's choice); the one-element-a-
// thread kernels are their simple twins and take any C.
// Output size floor(H/2) x floor(W/2): an odd last row or column is dropped (PyTorch's
// default) and receives zero gradient. Ties go to the first maximum in the window's
// row-major order, as in src/reference/pool.rs; comparisons are strict '>' for that reason.
// A window holding a NaN gives its first NaN (and routes the gradient there).
#include "common.cuh"

// Index (0..3, row-major) of the first maximum of a 2x2 window starting at p.
__device__ __forceinline__ int vgg_argmax2x2(const __half* p, long long row_stride, int c_stride, float* best) {
    float v[4] = {__half2float(p[0]), __half2float(p[c_stride]), __half2float(p[row_stride]),
                  __half2float(p[row_stride + c_stride])};
    // The running maximum in a register, not v[arg]: a dynamically indexed v lived in local
    // memory (16 bytes of stack in the one-element-a-thread kernels).
    int arg = 0;
    float m = v[0];
#pragma unroll
    for (int k = 1; k < 4; ++k)
        // The first NaN wins and stays: a NaN is never dropped by the pool (as PyTorch's
        // max-pool keeps it), so an overflow upstream reaches the logits instead of vanishing.
        if (v[k] > m || (v[k] != v[k] && m == m)) arg = k, m = v[k];
    *best = m;
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

// The forward pass, one thread a window and 8 channels: 4 16-byte loads and one 16-byte store
// (and 8 argmax bytes), with 32-bit index arithmetic; why, and the launcher's guarantees, as for
// maxpool2x2_bwd_arg_c8_f16 below (run 5: VGG-16's forward pools 0.77 ms a step, pool1 0.395 ms
// for 565 MB). The max per channel is vgg_argmax2x2's: ties to the first, NaN kept.
extern "C" __global__ void maxpool2x2_fwd_c8_f16(const __half* __restrict__ x, __half* __restrict__ y,
                                                 unsigned char* __restrict__ arg, int n, int h, int w, int c) {
    const int ho = h / 2, wo = w / 2, c8 = c / 8;
    const int total = n * ho * wo * c8;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int q = t % c8, win = t / c8, j = win % wo, r = win / wo % ho, img = win / wo / ho;
        const long long p0 = ((long long)(img * h + 2 * r) * w + 2 * j) * c + 8 * q;
        uint4 v[4];
        v[0] = *reinterpret_cast<const uint4*>(x + p0);
        v[1] = *reinterpret_cast<const uint4*>(x + p0 + c);
        v[2] = *reinterpret_cast<const uint4*>(x + p0 + (long long)w * c);
        v[3] = *reinterpret_cast<const uint4*>(x + p0 + (long long)w * c + c);
        uint4 out;
        uint2 a;
        __half* const oh = reinterpret_cast<__half*>(&out);
        unsigned char* const ab = reinterpret_cast<unsigned char*>(&a);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            __half win4[4];
#pragma unroll
            for (int pos = 0; pos < 4; ++pos) win4[pos] = reinterpret_cast<const __half*>(&v[pos])[k];
            float best;
            // The window as a 2x2 of a 2-wide, 1-channel image: element strides 1 and 2.
            ab[k] = (unsigned char)vgg_argmax2x2(win4, 2, 1, &best);
            oh[k] = __float2half(best);
        }
        const long long o = (long long)win * c + 8 * q;
        *reinterpret_cast<uint4*>(y + o) = out;
        if (arg) *reinterpret_cast<uint2*>(arg + o) = a;
    }
}

// The backward pass from arg, one thread a window and 8 channels: it reads the window's 8 argmax
// bytes and 8 dy halves once (maxpool2x2_bwd_f16 reads them once for each of the 4 inputs) and
// writes its up to 4 inputs' 16 bytes each, all with 32-bit index arithmetic. Why: run 5 timed
// VGG-16's backward pools at 2.5 ms a step (pool1 1.31 ms for 565 MB, ~8x the copy rate), the
// twin's cost being its three 64-bit divisions and one 2-byte store per element. Windows past
// floor(H/2) or floor(W/2), an odd last row or column, write zeros. The launcher guarantees C % 8
// == 0, dy and dx 16-byte and arg 8-byte aligned, and n ceil(H/2) ceil(W/2) C/8 below 2^31.
extern "C" __global__ void maxpool2x2_bwd_arg_c8_f16(const unsigned char* __restrict__ arg,
                                                     const __half* __restrict__ dy, __half* __restrict__ dx, int n,
                                                     int h, int w, int c) {
    const int ho = h / 2, wo = w / 2, hr = (h + 1) / 2, wr = (w + 1) / 2, c8 = c / 8;
    const int total = n * hr * wr * c8;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int q = t % c8, win = t / c8, j = win % wr, r = win / wr % hr, img = win / wr / hr;
        uint4 g = make_uint4(0, 0, 0, 0);
        uint2 a = make_uint2(0xffffffffu, 0xffffffffu);  // no window position is 0xff: all zeros
        if (r < ho && j < wo) {
            const long long o = ((long long)(img * ho + r) * wo + j) * c + 8 * q;
            g = *reinterpret_cast<const uint4*>(dy + o);
            a = *reinterpret_cast<const uint2*>(arg + o);
        }
        const unsigned char* const ab = reinterpret_cast<const unsigned char*>(&a);
        const __half* const gh = reinterpret_cast<const __half*>(&g);
#pragma unroll
        for (int pos = 0; pos < 4; ++pos) {
            const int row = 2 * r + (pos >> 1), col = 2 * j + (pos & 1);
            if (row >= h || col >= w) continue;
            uint4 out;
            __half* const oh = reinterpret_cast<__half*>(&out);
#pragma unroll
            for (int k = 0; k < 8; ++k) oh[k] = ab[k] == pos ? gh[k] : __float2half(0.f);
            *reinterpret_cast<uint4*>(dx + ((long long)(img * h + row) * w + col) * c + 8 * q) = out;
        }
    }
}
