// gemm_simple.cu: the simple twin of gemm.cu, one thread per output element, fp32
// accumulation in index order, no shared memory, no tensor cores. It is the readable
// specification the tiled kernels are checked against on the device, and the path for shapes
// the tiled kernels refuse (N or K not a multiple of 8, such as a 10-class classifier).
//
// C[r][s] = sum_{t < T} A[r * a_r + t * a_t] * B[t * b_t + s * b_s], element strides given
// by the caller, so one body serves all three passes of the linear layer:
//   fwd        Y  = X W^T   A = X  (a_r = K, a_t = 1)  B = W (b_t = 1, b_s = K)   R = M, S = N
//   bwd_data   dX = dY W    A = dY (a_r = N, a_t = 1)  B = W (b_t = K, b_s = 1)   R = M, S = K
//   bwd_weight dW = dY^T X  A = dY (a_r = 1, a_t = N)  B = X (b_t = K, b_s = 1)   R = N, S = K
// Launch: 1-D, one thread per element of the R x S output (64-bit index).
#include "common.cuh"

__device__ __forceinline__ float gemm_simple_dot(const __half* __restrict__ A, long long a_r,
                                                 long long a_t, const __half* __restrict__ B,
                                                 long long b_t, long long b_s, long long r,
                                                 long long s, int T) {
  float acc = 0.f;
  for (int t = 0; t < T; ++t) acc += __half2float(A[r * a_r + t * a_t]) * __half2float(B[t * b_t + s * b_s]);
  return acc;
}

// out16[r][s] = act(C[r][s] + bias[s]), rounded once to fp16; bias nullable.
extern "C" __global__ void gemm_simple_f16(const __half* __restrict__ A, long long a_r, long long a_t,
                                           const __half* __restrict__ B, long long b_t, long long b_s,
                                           int R, int S, int T, const __half* __restrict__ bias,
                                           int relu, __half* __restrict__ out16) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)R * S) return;
  const long long r = i / S, s = i % S;
  float v = gemm_simple_dot(A, a_r, a_t, B, b_t, b_s, r, s, T);
  if (bias) v += __half2float(bias[s]);
  if (relu) v = vgg_relu(v);
  out16[i] = __float2half_rn(v);
}

// out32[r][s] = C[r][s].
extern "C" __global__ void gemm_simple_f32(const __half* __restrict__ A, long long a_r, long long a_t,
                                           const __half* __restrict__ B, long long b_t, long long b_s,
                                           int R, int S, int T, float* __restrict__ out32) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)R * S) return;
  out32[i] = gemm_simple_dot(A, a_r, a_t, B, b_t, b_s, i / S, i % S, T);
}
