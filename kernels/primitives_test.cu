// primitives_test.cu: one-warp test kernels for the PTX primitives in ptx.cuh. Each runs the
// primitive once on known data and writes the raw result to global memory, so a host test can
// check it against a plain matrix product or the documented layout formula, on the emulator and
// on a GPU alike.
//
// Launch every kernel with grid (1,1,1), block (32,1,1), no dynamic shared memory.
//   prim_mma_m16n8k16  D = A*B + C, A 16x16, B 16x8, fragments built by the per-lane formulas
//   prim_mma_m16n8k8   D = A*B + C, A 16x8,  B 8x8
//   prim_ldmatrix      raw registers of ldmatrix .x1/.x2/.x4, with or without .trans
//   prim_cp_async      16/8/4-byte cp.async with zero-fill past n_valid, read back
// The mma tests build fragments from global memory directly (not with ldmatrix), so a wrong
// mma layout and a wrong ldmatrix layout cannot cancel out.
#include "ptx.cuh"

// Fragment coordinates, PTX ISA "Matrix fragments for mma.m16n8k16 / mma.m16n8k8"; g = lane/4,
// t = lane%4, element i of a fragment lives in register i/2, low half when i is even.
__device__ __forceinline__ int frag_a_row(int g, int i) { return g + 8 * ((i >> 1) & 1); }
__device__ __forceinline__ int frag_a_col(int t, int i) { return 2 * t + (i & 1) + 8 * (i >> 2); }
__device__ __forceinline__ int frag_b_k(int t, int i) { return 2 * t + (i & 1) + 8 * (i >> 1); }
__device__ __forceinline__ int frag_c_row(int g, int i) { return g + 8 * (i >> 1); }
__device__ __forceinline__ int frag_c_col(int t, int i) { return 2 * t + (i & 1); }

// A: 16xK row-major, B: Kx8 stored B[k][n] row-major, C, D: 16x8 row-major floats.
// Every lane writes its four D elements, so all 128 outputs are written exactly once.
template <int K>
__device__ __forceinline__ void mma_test(const __half* A, const __half* B, const float* C,
                                         float* D) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  unsigned a[K / 4], b[K / 8];
  float c[4], d[4];
  for (int r = 0; r < K / 4; ++r)  // register r holds elements 2r, 2r+1
    a[r] = pack_half2(A[frag_a_row(g, 2 * r) * K + frag_a_col(t, 2 * r)],
                      A[frag_a_row(g, 2 * r + 1) * K + frag_a_col(t, 2 * r + 1)]);
  for (int r = 0; r < K / 8; ++r)
    b[r] = pack_half2(B[frag_b_k(t, 2 * r) * 8 + g], B[frag_b_k(t, 2 * r + 1) * 8 + g]);
  for (int i = 0; i < 4; ++i) c[i] = C[frag_c_row(g, i) * 8 + frag_c_col(t, i)];
  if constexpr (K == 16)
    mma_m16n8k16_f16f32(d, a, b, c);
  else
    mma_m16n8k8_f16f32(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[frag_c_row(g, i) * 8 + frag_c_col(t, i)] = d[i];
}

extern "C" __global__ void prim_mma_m16n8k16(const __half* A, const __half* B, const float* C,
                                             float* D) {
  mma_test<16>(A, B, C, D);
}

extern "C" __global__ void prim_mma_m16n8k8(const __half* A, const __half* B, const float* C,
                                            float* D) {
  mma_test<8>(A, B, C, D);
}

// M: four 8x8 b16 matrices, 256 halves, matrix j at M[64j], each row-major.
// out: 128 u32, out[lane*4 + j] = register j of `lane`, for j < count; slots j >= count are not
// written (poison them). Expected, with m_j(r, c) = bits of M[64j + 8r + c]:
//   trans = 0: out[l*4+j] = m_j(l/4, 2(l%4)) | m_j(l/4, 2(l%4)+1) << 16
//   trans = 1: out[l*4+j] = m_j(2(l%4), l/4) | m_j(2(l%4)+1, l/4) << 16
// count must be 1, 2 or 4; other values write nothing.
extern "C" __global__ void prim_ldmatrix(const __half* M, unsigned* out, int trans, int count) {
  // Rows are 24 halves (48 bytes) apart, not 8, so an emulator that assumes contiguous rows
  // instead of using each lane's address fails; 48 keeps every row 16-byte aligned.
  constexpr int kPitch = 24;
  alignas(16) __shared__ unsigned short tile[32 * kPitch];
  const int lane = threadIdx.x;
  const unsigned short* m = reinterpret_cast<const unsigned short*>(M);
  for (int i = lane; i < 256; i += 32) tile[(i / 8) * kPitch + i % 8] = m[i];
  __syncthreads();

  // Lane 8j+r points at row r of matrix j. Lanes whose address the hardware ignores (lane >=
  // 8*count) point at a different, still aligned row, so using them would change the result.
  int row = lane;
  if (lane >= 8 * count) row = 31 - lane % 8;
  const unsigned short* p = &tile[row * kPitch];

  unsigned r[4] = {0, 0, 0, 0};
  if (trans) {
    if (count == 1) ldmatrix_x1_trans(r, p);
    if (count == 2) ldmatrix_x2_trans(r, p);
    if (count == 4) ldmatrix_x4_trans(r, p);
  } else {
    if (count == 1) ldmatrix_x1(r, p);
    if (count == 2) ldmatrix_x2(r, p);
    if (count == 4) ldmatrix_x4(r, p);
  }
  if (count == 1 || count == 2 || count == 4)
    for (int j = 0; j < count; ++j) out[lane * 4 + j] = r[j];
}

// src, dst: 192 floats, src 16-byte aligned. Expected: dst[i] = i < n_valid ? src[i] : 0.0f.
//   floats [0, 64):    16-byte copies (lanes 0-15), partial src-size at the n_valid edge
//   floats [64, 128):  8-byte copies (one per lane), partial src-size at the edge
//   floats [128, 192): 4-byte copies (two per lane), valid flag
// Shared memory is poisoned first, so a missing zero-fill shows as the poison (-7.0f).
extern "C" __global__ void prim_cp_async(const float* src, float* dst, int n_valid) {
  constexpr int kN = 192;
  alignas(16) __shared__ float buf[kN];
  const int lane = threadIdx.x;
  for (int i = lane; i < kN; i += 32) buf[i] = -7.0f;
  __syncthreads();

  // Bytes of the chunk [base, base + width) that lie below n_valid.
  auto valid_bytes = [n_valid](int base, int width) -> unsigned {
    const int n = n_valid - base;
    return 4u * (unsigned)(n <= 0 ? 0 : n >= width ? width : n);
  };
  if (lane < 16) cp_async_zfill<16>(&buf[4 * lane], &src[4 * lane], valid_bytes(4 * lane, 4));
  cp_async_commit();
  cp_async_zfill<8>(&buf[64 + 2 * lane], &src[64 + 2 * lane], valid_bytes(64 + 2 * lane, 2));
  cp_async_commit();
  for (int i = 128 + lane; i < kN; i += 32) cp_async_4(&buf[i], &src[i], i < n_valid);
  cp_async_commit();
  cp_async_wait<1>();  // exercises wait_group N; wait_all below finishes the rest
  cp_async_wait_all();
  __syncthreads();  // other lanes' copies become visible only after the barrier

  for (int i = lane; i < kN; i += 32) dst[i] = buf[i];
}
