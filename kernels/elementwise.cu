// elementwise.cu: the memory-bound ops around the convolutions, fp16 storage, fp32 math.
//   relu_fwd_f16 / relu_bwd_f16      y = max(x, 0), NaN kept (vgg_relu); dx = dy where y > 0
//   bias_act_f16                     y = x + b[c] (NHWC, bias along C), optional ReLU
//   cast_f32_to_f16 / cast_f16_to_f32
// One thread an element: these run at memory bandwidth, and the simple form is the one
// the emulator and the reader check most easily. Counts are 64-bit: VGG activations at
// batch 256 exceed 2^31 elements. relu_fwd, relu_bwd and bias_act may run in place (the
// output the same bytes as x, y or dy: each thread reads its element, then writes it), so
// those pointers carry no __restrict__, which would make such a call undefined behaviour.
#include "common.cuh"

__device__ __forceinline__ long long vgg_global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

extern "C" __global__ void relu_fwd_f16(const __half* x, __half* y, long long n) {
    long long i = vgg_global_index();
    if (i >= n) return;
    float v = __half2float(x[i]);
    y[i] = __float2half(vgg_relu(v));
}

// The mask is taken from the forward output y (not the input): y > 0 exactly where x > 0,
// and y is what the forward pass keeps alive for the backward pass anyway.
extern "C" __global__ void relu_bwd_f16(const __half* y, const __half* dy, __half* dx, long long n) {
    long long i = vgg_global_index();
    if (i >= n) return;
    dx[i] = __half2float(y[i]) > 0.f ? dy[i] : __float2half(0.f);
}

// The add is done in fp32 and rounded once, so the result equals the reference's
// round_to_f16(x + b) exactly.
extern "C" __global__ void bias_act_f16(const __half* x, const __half* __restrict__ bias, __half* y,
                                        long long n, int c, int relu) {
    long long i = vgg_global_index();
    if (i >= n) return;
    float v = __half2float(x[i]) + __half2float(bias[i % c]);
    if (relu) v = vgg_relu(v);
    y[i] = __float2half(v);
}

extern "C" __global__ void cast_f32_to_f16(const float* __restrict__ x, __half* __restrict__ y, long long n) {
    long long i = vgg_global_index();
    if (i < n) y[i] = __float2half_rn(x[i]);
}

extern "C" __global__ void cast_f16_to_f32(const __half* __restrict__ x, float* __restrict__ y, long long n) {
    long long i = vgg_global_index();
    if (i < n) y[i] = __half2float(x[i]);
}
