// lrn.cu: local response normalisation across channels (AlexNet's, VGG config A-LRN) over
// NHWC fp16 activations, fp32 math, PyTorch's convention as src/reference/lrn.rs:
//   s_c = k + alpha/size * sum_{c' in W(c)} a_c'^2,   W(c) = [c - size/2, c + (size-1)/2] ∩ [0, C)
//   lrn_fwd_f16   b_c = a_c * s_c^-beta
//   lrn_bwd_f16   da_j = dy_j s_j^-beta - (2 alpha beta / size) a_j sum_{c: j in W(c)} dy_c a_c s_c^(-beta-1)
// NHWC puts a pixel's channels side by side, so a block stages a tile of whole pixels
// (`ppb` pixels, contiguous in memory, read coalesced) in shared memory and every thread
// then reads its channel window from there. The backward pass stages a and dy, computes
// each s_c once into t_c = dy_c a_c s_c^(-beta-1), then gathers t over the covering window.
// Windows are summed in increasing channel order by the one thread that owns the output.
#include "common.cuh"

__device__ __forceinline__ float lrn_scale(const float* a, int c, int channels, int size, float coef, float k) {
    int lo = max(c - size / 2, 0), hi = min(c + (size - 1) / 2, channels - 1);
    float sum = 0.f;
    for (int i = lo; i <= hi; ++i) sum += a[i] * a[i];
    return k + coef * sum;
}

// Dynamic shared memory: fwd ppb*C floats (a); bwd 3*ppb*C floats (a, dy*s^-beta, t).
extern "C" __global__ void lrn_fwd_f16(const __half* __restrict__ x, __half* __restrict__ y, long long pixels,
                                       int channels, int ppb, int size, float alpha, float beta, float k) {
    VGG_DYN_SHARED(float, a);
    const long long first = (long long)blockIdx.x * ppb;
    const int elems = (int)min((long long)ppb, pixels - first) * channels;
    const __half* xs = x + first * channels;
    for (int e = threadIdx.x; e < elems; e += blockDim.x) a[e] = __half2float(xs[e]);
    __syncthreads();
    const float coef = alpha / (float)size;
    for (int e = threadIdx.x; e < elems; e += blockDim.x) {
        int c = e % channels;
        const float* pix = a + (e - c);
        float s = lrn_scale(pix, c, channels, size, coef, k);
        y[first * channels + e] = __float2half_rn(a[e] * powf(s, -beta));
    }
}

extern "C" __global__ void lrn_bwd_f16(const __half* __restrict__ x, const __half* __restrict__ dy,
                                       __half* __restrict__ dx, long long pixels, int channels, int ppb, int size,
                                       float alpha, float beta, float k) {
    VGG_DYN_SHARED(float, a);
    const long long first = (long long)blockIdx.x * ppb;
    const int elems = (int)min((long long)ppb, pixels - first) * channels;
    float* gs = a + ppb * channels;  // dy_c s_c^-beta
    float* t = gs + ppb * channels;  // dy_c a_c s_c^(-beta-1)
    const long long base = first * channels;
    for (int e = threadIdx.x; e < elems; e += blockDim.x) a[e] = __half2float(x[base + e]);
    __syncthreads();
    const float coef = alpha / (float)size;
    for (int e = threadIdx.x; e < elems; e += blockDim.x) {
        int c = e % channels;
        float s = lrn_scale(a + (e - c), c, channels, size, coef, k);
        float sp = powf(s, -beta);
        float g = __half2float(dy[base + e]);
        gs[e] = g * sp;
        t[e] = g * a[e] * (sp / s);
    }
    __syncthreads();
    const float coef2 = 2.f * alpha * beta / (float)size;
    for (int e = threadIdx.x; e < elems; e += blockDim.x) {
        int c = e % channels;
        const float* tp = t + (e - c);
        int lo = max(c - (size - 1) / 2, 0), hi = min(c + size / 2, channels - 1);
        float through_s = 0.f;
        for (int i = lo; i <= hi; ++i) through_s += tp[i];
        dx[base + e] = __float2half_rn(gs[e] - coef2 * a[e] * through_s);
    }
}
