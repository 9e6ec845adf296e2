// reduce.cu: whole-tensor reductions for tests, metrics and overflow checks, deterministic
// in two passes (no atomics): a grid of partials, then one block over the partials.
//   reduce_sum_f32 / reduce_sum_f16          partial[b] = sum of block b's elements (f64)
//   reduce_maxabs_f32 / reduce_maxabs_f16    partial[b] = max |x| (NaN if any NaN)
//   reduce_finish                            out[0] = f32(sum or max of the partials)
// The grid size is a function of n alone (the launcher's), each thread grid-strides over
// 16-byte vectors, and every combine has a fixed tree, so a given tensor always gives the
// same bits. Sums accumulate in f64 (error ~ 1e-16 * sum |x|), so the f32 result is the
// correctly rounded sum unless the data cancel to within 1e-9 of their magnitude.
#include "common.cuh"

#define REDUCE_SUM 0
#define REDUCE_MAXABS 1

// |v| folded into acc, NaN sticky (a NaN acc is never replaced; fmax would drop it).
__device__ __forceinline__ double reduce_maxabs_step(double acc, double v) {
    double a = fabs(v);
    return (a > acc || a != a) ? a : acc;
}
__device__ __forceinline__ double reduce_combine(int op, double a, double b) {
    return op == REDUCE_SUM ? a + b : reduce_maxabs_step(a, b);
}

// Block-wide combine (blockDim.x a multiple of 32); the result is valid in thread 0.
__device__ double reduce_block(int op, double v) {
    __shared__ double warps[32];
    for (int o = 16; o > 0; o >>= 1) v = reduce_combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = v;
    __syncthreads();
    double r = warps[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) r = reduce_combine(op, r, warps[w]);
    return r;
}

__device__ __forceinline__ float reduce_load(const float* p) { return *p; }
__device__ __forceinline__ float reduce_load(const __half* p) { return __half2float(*p); }

// Vectors of 16 bytes: 4 floats or 8 halves.
template <typename T>
__device__ void reduce_partial(int op, const T* __restrict__ x, long long n, double* __restrict__ partials) {
    constexpr int V = 16 / sizeof(T);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long groups = (reinterpret_cast<unsigned long long>(x) & 15) == 0 ? n / V : 0;
    double acc = 0.0;
    for (long long g = first; g < groups; g += stride) {
        uint4 raw = reinterpret_cast<const uint4*>(x)[g];
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int k = 0; k < V; ++k) acc = reduce_combine(op, acc, (double)reduce_load(e + k));
    }
    for (long long i = groups * V + first; i < n; i += stride) acc = reduce_combine(op, acc, (double)reduce_load(x + i));
    acc = reduce_block(op, acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void reduce_sum_f32(const float* __restrict__ x, long long n, double* __restrict__ partials) {
    reduce_partial(REDUCE_SUM, x, n, partials);
}
extern "C" __global__ void reduce_sum_f16(const __half* __restrict__ x, long long n, double* __restrict__ partials) {
    reduce_partial(REDUCE_SUM, x, n, partials);
}
extern "C" __global__ void reduce_maxabs_f32(const float* __restrict__ x, long long n, double* __restrict__ partials) {
    reduce_partial(REDUCE_MAXABS, x, n, partials);
}
extern "C" __global__ void reduce_maxabs_f16(const __half* __restrict__ x, long long n,
                                             double* __restrict__ partials) {
    reduce_partial(REDUCE_MAXABS, x, n, partials);
}

// One block: the partials in thread-strided order, then the block tree. A NaN max becomes
// the canonical quiet NaN so that the bits do not depend on which NaN was seen.
extern "C" __global__ void reduce_finish(const double* __restrict__ partials, int count, int op,
                                         float* __restrict__ out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc = reduce_combine(op, acc, partials[i]);
    acc = reduce_block(op, acc);
    if (threadIdx.x == 0) out[0] = acc != acc ? __int_as_float(0x7fc00000) : (float)acc;
}
