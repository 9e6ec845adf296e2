// common.cuh: included first by every kernel file. It is the one place where the two
// builds differ: NVRTC (the GPU) gets CUDA's own headers, the host C++ compiler (the emu
// device) gets the shim that supplies the same names with CUDA's semantics.
#pragma once

#if defined(__CUDACC__)
#include <cuda_fp16.h>
// Dynamic shared memory cannot be written as `extern __shared__` on the host, so kernels
// use this one macro on both paths.
#define VGG_DYN_SHARED(T, name)                                  \
    extern __shared__ __align__(128) unsigned char vgg_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(vgg_dyn_smem_)
#else
#include "emu/shim.h"
#define VGG_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_smem())
#endif

// Linear index of this thread in its block, and its lane / warp.
__device__ __forceinline__ unsigned vgg_thread_linear() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// The crate's ReLU (src/reference/elementwise.rs): x <= 0 -> 0, anything else, NaN included,
// passes. `fmaxf(x, 0)` and `x > 0 ? x : 0` map NaN to 0, which let a forward that overflowed
// fp16 upstream come out finite at the logits, so `vgg eval` scored garbage as if it were real.
__device__ __forceinline__ float vgg_relu(float v) { return v <= 0.f ? 0.f : v; }
