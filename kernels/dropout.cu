// dropout.cu: inverted dropout with the counter-based mask of src/reference/dropout.rs.
//   dropout_f16   y_i = keep(key, i) ? x_i * scale : 0   (forward on x, backward on dy)
// The mask is a pure function of (seed, step, flat index): the backward pass recomputes
// it instead of storing it, and the result does not depend on the launch shape. The host
// passes key = mix(seed ^ mix(step)) (element-independent), p_drop and scale =
// f32(1 / (1 - p_drop)) computed exactly as the reference does, so the output is bit-exact.
// key_at, when not null, holds the key instead (a captured training step reads each step's
// keys from device memory: src/ops/step_vars.rs).
// Grid-stride over groups of 8 elements (16-byte loads and stores); the last partial group
// is done element by element.
#include "common.cuh"

// splitmix64's finaliser, wrapping u64 arithmetic (unsigned overflow is defined in C++).
__device__ __forceinline__ unsigned long long dropout_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// keep iff the hash's top 24 bits, as a fraction of 2^24, are >= p_drop (exact in f32).
__device__ __forceinline__ bool dropout_keep(unsigned long long key, unsigned long long index, float p_drop) {
    unsigned long long h = dropout_mix(key + (index + 1ull) * 0x9E3779B97F4A7C15ull);
    return (float)(unsigned)(h >> 40) * (1.0f / 16777216.0f) >= p_drop;
}

__device__ __forceinline__ __half dropout_one(__half x, unsigned long long key, unsigned long long i, float p_drop,
                                              float scale) {
    return dropout_keep(key, i, p_drop) ? __float2half_rn(__half2float(x) * scale) : __float2half(0.f);
}

// x and y may be the same bytes (in place: each thread reads its group, then writes it), so
// they carry no __restrict__.
extern "C" __global__ void dropout_f16(const __half* x, __half* y, long long n,
                                       unsigned long long key, float p_drop, float scale,
                                       const unsigned long long* __restrict__ key_at) {
    if (key_at) key = *key_at;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long groups = n / 8;
    // 16-byte vectors when both buffers allow them (tensors are allocated 256-aligned).
    const bool vec = ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(y)) & 15) == 0;
    long long done = 0;
    if (vec) {
        for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
            uint4 in = reinterpret_cast<const uint4*>(x)[g];
            const __half* h = reinterpret_cast<const __half*>(&in);
            uint4 out;
            __half* o = reinterpret_cast<__half*>(&out);
#pragma unroll
            for (int k = 0; k < 8; ++k) o[k] = dropout_one(h[k], key, (unsigned long long)(g * 8 + k), p_drop, scale);
            reinterpret_cast<uint4*>(y)[g] = out;
        }
        done = groups * 8;
    }
    for (long long i = done + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = dropout_one(x[i], key, (unsigned long long)i, p_drop, scale);
}
