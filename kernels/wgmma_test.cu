// wgmma_test.cu: one-warpgroup test kernels for the wgmma helpers of wgmma.cuh. Each stages A
// and B in shared memory by the documented K-major layout formula (not by any helper), runs one
// wgmma and writes D by the documented accumulator layout, so a host test can check the result
// against a plain matrix product, on the emulator and on a GPU alike (sm_90a; elsewhere the
// kernels trap).
//
// Launch with grid (1,1,1), block (128,1,1), dynamic shared memory 2064 + 32 N bytes:
//   prim_wgmma_n64 / prim_wgmma_n256(A, Bt, C, D, lbo_a, sbo_a, lbo_b, sbo_b, acc, off)
//     A: 64 x 16 row-major fp16, Bt: N x 16 row-major fp16 (B transposed: K-major),
//     C, D: 64 x N row-major fp32; D = A Bt^T + (acc ? C : 0). lbo / sbo: the operands' core
//     matrix strides in bytes (A within 2048 bytes from `off`, B within 32 N from 2048 + off).
//     off: 0 or 16, where the operands start; 16 is a descriptor start that is a multiple of 16
//     bytes but not of 128, as the halo kernels' per-tap shifts give (conv_wgmma_halo.cu).
//   prim_wgmma_mn_n64 / prim_wgmma_mn_n256: the same, A and B staged M/N-major (wgmma.cuh)
//   prim_wgmma_sw128_n64(A, Bt, C, D, acc, shift)  K-major, 128-byte swizzle (wgmma.cuh), K = 64
//     as 4 wgmma's: A: 72 x 64 row-major fp16, of which rows shift .. shift + 63 are multiplied
//     (shift 0..8: a start on and off the pattern's 1024-byte boundary, as a halo tap shift
//     gives), Bt: 64 x 64 row-major; C, D: 64 x 64 fp32. Shared memory 18432 bytes.
//   prim_wgmma_sw128_grid_n64(A, Bt, C, D, acc, pitch, start)  K-major, 128-byte swizzle, K = 64,
//     A's 8-row groups `pitch` rows apart (sbo 128 pitch bytes, not the compact 1024): A: 9 pitch
//     x 64 row-major fp16 (9 image rows of `pitch` positions, pitch a multiple of 8), of which
//     rows start + pitch g + j (g, j 0..7) are multiplied: an 8 x 8 pixel block of a 2-D halo,
//     shifted by a tap (conv_wgmma_tma2d.cu). Shared memory 1024 + 128 (9 pitch + 64) bytes.
//   prim_wgmma_mn_sw128_n128(At, B, C, D, acc, adjacent)  M/N-major, 128-byte swizzle
//     (wgmma.cuh), K = 64 as 4 wgmma's: At: 64 x 64 row-major fp16 (A transposed: At[k][m]),
//     B: 64 x 128 row-major (B[k][n]), C, D: 64 x 128 fp32; D = A B + (acc ? C : 0). adjacent 0:
//     each operand's 8-row K groups 1024 bytes apart, its 64-wide M/N atoms 8192 (sbo 1024, lbo
//     8192: what TMA boxes of 64 x 64 give, gemm_wgmma.cu); 1: the atoms of a K group adjacent
//     (lbo 1024, sbo 1024 atoms), as CUTLASS's tile_to_shape orders them. Shared memory 25600.
//   prim_wgmma_early_read(A, Bt, C, D)  N = 64, reads d before the wait (emulator test)
//   prim_wgmma_operand_race(A, Bt, C, D)  N = 64, rewrites an element of B between the issue
//     and the wait (emulator test: the launch must fail)
#include "wgmma.cuh"

// The accumulators d (wgmma.cuh's layout: d[4 j + i] holds D[16 w + g + 8 (i >> 1)][8 j + 2 t +
// (i & 1)]) from or to a 64 x N row-major fp32 matrix.
template <int N>
__device__ __forceinline__ int acc_index(int j, int i) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  return (16 * w + g + 8 * (i >> 1)) * N + 8 * j + 2 * t + (i & 1);
}
template <int N>
__device__ __forceinline__ void acc_load(float (&d)[N / 2], const float* C) {
  for (int j = 0; j < N / 8; ++j)
    for (int i = 0; i < 4; ++i) d[4 * j + i] = C[acc_index<N>(j, i)];
}
template <int N>
__device__ __forceinline__ void acc_store(const float (&d)[N / 2], float* D) {
  for (int j = 0; j < N / 8; ++j)
    for (int i = 0; i < 4; ++i) D[acc_index<N>(j, i)] = d[4 * j + i];
}

template <int N, bool kEarly = false, bool kMN = false, bool kRace = false>
__device__ __forceinline__ void wgmma_test(const __half* A, const __half* Bt, const float* C, float* D, int lbo_a,
                                           int sbo_a, int lbo_b, int sbo_b, int acc, int off) {
  VGG_DYN_SHARED(unsigned char, smem);
  unsigned char* const sa = smem + off;
  unsigned char* const sb = smem + 2048 + off;
  // K-major: a core matrix row is 8 consecutive k of one m (n); M/N-major: 8 consecutive m (n)
  // of one k.
  auto at = [](unsigned char* base, int mn, int k, int lbo, int sbo) {
    const int in_core = kMN ? (k % 8) * 16 + (mn % 8) * 2 : (mn % 8) * 16 + (k % 8) * 2;
    return reinterpret_cast<__half*>(base + (mn / 8) * sbo + (k / 8) * lbo + in_core);
  };
  for (int i = threadIdx.x; i < 64 * 16; i += 128) *at(sa, i / 16, i % 16, lbo_a, sbo_a) = A[i];
  for (int i = threadIdx.x; i < N * 16; i += 128) *at(sb, i / 16, i % 16, lbo_b, sbo_b) = Bt[i];
  wgmma_smem_fence();
  __syncthreads();

  float d[N / 2];
  acc_load<N>(d, C);
  wgmma_fence_acc(d);
  wgmma_fence();
  wgmma_ss<N, kMN, kMN>(d, wgmma_desc(sa, lbo_a, sbo_a), wgmma_desc(sb, lbo_b, sbo_b), acc);
  wgmma_commit();
  if (kRace) {  // what a copy landing late, or a ring buffer refilled too early, does
    __syncthreads();  // every warp has issued (the write must race the retirement, not an issue)
    if (threadIdx.x == 0) sb[0] ^= 1;
    __syncthreads();
  }
  if (!kEarly) wgmma_wait<0>();
  if (!kEarly) wgmma_fence_acc(d);
  acc_store<N>(d, D);
  if (kEarly) wgmma_wait<0>();
}

extern "C" __global__ void prim_wgmma_n64(const __half* A, const __half* Bt, const float* C, float* D, int lbo_a,
                                          int sbo_a, int lbo_b, int sbo_b, int acc, int off) {
  wgmma_test<64>(A, Bt, C, D, lbo_a, sbo_a, lbo_b, sbo_b, acc, off);
}

extern "C" __global__ void prim_wgmma_n256(const __half* A, const __half* Bt, const float* C, float* D, int lbo_a,
                                           int sbo_a, int lbo_b, int sbo_b, int acc, int off) {
  wgmma_test<256>(A, Bt, C, D, lbo_a, sbo_a, lbo_b, sbo_b, acc, off);
}

// The same with both operands M/N-major (imm-trans-a = imm-trans-b = 1).
extern "C" __global__ void prim_wgmma_mn_n64(const __half* A, const __half* Bt, const float* C, float* D, int lbo_a,
                                             int sbo_a, int lbo_b, int sbo_b, int acc, int off) {
  wgmma_test<64, false, true>(A, Bt, C, D, lbo_a, sbo_a, lbo_b, sbo_b, acc, off);
}

extern "C" __global__ void prim_wgmma_mn_n256(const __half* A, const __half* Bt, const float* C, float* D,
                                              int lbo_a, int sbo_a, int lbo_b, int sbo_b, int acc, int off) {
  wgmma_test<256, false, true>(A, Bt, C, D, lbo_a, sbo_a, lbo_b, sbo_b, acc, off);
}

// The 128-byte swizzle: each 16-byte chunk of A (a_rows rows) and B staged where wgmma_sw128 puts
// it (rows of 64 halves 128 bytes apart from a 1024-byte boundary of the shared address), then 4
// wgmma's of k16, each descriptor 32 bytes on, A's start `start` rows in and its groups of 8 rows
// `sbo` bytes apart.
__device__ void wgmma_sw128_test(const __half* A, int a_rows, const __half* Bt, const float* C, float* D, int acc,
                                 int start, unsigned sbo) {
  VGG_DYN_SHARED(unsigned char, smem);
  const unsigned pad = (1024 - wgmma_smem_addr(smem) % 1024) % 1024;
  unsigned char* const sa = smem + pad;
  unsigned char* const sb = sa + a_rows * 128;
  for (int i = threadIdx.x; i < a_rows * 8; i += 128) {  // chunk i % 8 of row i / 8
    const uint4 v = reinterpret_cast<const uint4*>(A)[i];
    *reinterpret_cast<uint4*>(wgmma_sw128(sa + 128 * (i / 8) + 16 * (i % 8))) = v;
  }
  for (int i = threadIdx.x; i < 64 * 8; i += 128) {
    const uint4 v = reinterpret_cast<const uint4*>(Bt)[i];
    *reinterpret_cast<uint4*>(wgmma_sw128(sb + 128 * (i / 8) + 16 * (i % 8))) = v;
  }
  wgmma_smem_fence();
  __syncthreads();
  float d[32];
  acc_load<64>(d, C);
  const unsigned long long da = wgmma_desc_sw128(sa + 128 * start, sbo);
  const unsigned long long db = wgmma_desc_sw128(sb, 1024);
  wgmma_fence_acc(d);
  wgmma_fence();
  for (int k16 = 0; k16 < 4; ++k16) wgmma_ss<64>(d, da + 2 * k16, db + 2 * k16, k16 > 0 || acc);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_acc(d);
  acc_store<64>(d, D);
}

// A: 72 compact rows, rows shift.. multiplied.
extern "C" __global__ void prim_wgmma_sw128_n64(const __half* A, const __half* Bt, const float* C, float* D, int acc,
                                                int shift) {
  wgmma_sw128_test(A, 72, Bt, C, D, acc, shift, 1024);
}

// A: 9 image rows of `pitch` positions, an 8 x 8 pixel block from position `start`.
extern "C" __global__ void prim_wgmma_sw128_grid_n64(const __half* A, const __half* Bt, const float* C, float* D,
                                                     int acc, int pitch, int start) {
  wgmma_sw128_test(A, 9 * pitch, Bt, C, D, acc, start, 128 * pitch);
}

// The M/N-major 128-byte swizzle: the 16-byte chunk c of K-row k of an operand (8 consecutive
// m or n) staged at the header's layout formula, then wgmma_sw128's XOR; 4 wgmma's of k16, each
// descriptor two K groups (2 sbo) on. Whichever arrangement, lbo != sbo for B (two atoms along
// N), so a hardware that swapped their roles would fail both.
extern "C" __global__ void prim_wgmma_mn_sw128_n128(const __half* At, const __half* B, const float* C, float* D,
                                                    int acc, int adjacent) {
  VGG_DYN_SHARED(unsigned char, smem);
  const unsigned pad = (1024 - wgmma_smem_addr(smem) % 1024) % 1024;
  unsigned char* const sa = smem + pad;  // 8 K groups of one atom: 8192 bytes
  unsigned char* const sb = sa + 8192;   // 8 K groups of two atoms: 16384 bytes
  const unsigned lbo_a = adjacent ? 1024 : 8192, sbo_a = 1024;
  const unsigned lbo_b = adjacent ? 1024 : 8192, sbo_b = adjacent ? 2048 : 1024;
  auto stage = [](unsigned char* base, const __half* g, int width, unsigned lbo, unsigned sbo) {
    for (int i = threadIdx.x; i < 64 * width / 8; i += 128) {  // chunk c of K-row k
      const int k = i / (width / 8), c = i % (width / 8);
      unsigned char* const at = base + (c / 8) * lbo + (k / 8) * sbo + (k % 8) * 128 + (c % 8) * 16;
      *reinterpret_cast<uint4*>(wgmma_sw128(at)) = reinterpret_cast<const uint4*>(g)[i];
    }
  };
  stage(sa, At, 64, lbo_a, sbo_a);
  stage(sb, B, 128, lbo_b, sbo_b);
  wgmma_smem_fence();
  __syncthreads();
  float d[64];
  acc_load<128>(d, C);
  const unsigned long long da = wgmma_desc_mn_sw128(sa, lbo_a, sbo_a);
  const unsigned long long db = wgmma_desc_mn_sw128(sb, lbo_b, sbo_b);
  wgmma_fence_acc(d);
  wgmma_fence();
  for (int k16 = 0; k16 < 4; ++k16)
    wgmma_ss<128, true, true>(d, da + k16 * (2 * sbo_a >> 4), db + k16 * (2 * sbo_b >> 4), k16 > 0 || acc);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_acc(d);
  acc_store<128>(d, D);
}

// Emulator only (on a GPU the result is undefined): D written from d before the wait, as a
// kernel with a missing wait would; the emulator retires the group at the wait, so D gets C.
extern "C" __global__ void prim_wgmma_early_read(const __half* A, const __half* Bt, const float* C, float* D) {
  wgmma_test<64, true>(A, Bt, C, D, 128, 256, 128, 256, 1, 0);
}

// Emulator only (on a GPU the result is undefined): B changes while the wgmma is in flight; the
// emulator fails the launch at the wait that retires it.
extern "C" __global__ void prim_wgmma_operand_race(const __half* A, const __half* Bt, const float* C, float* D) {
  wgmma_test<64, false, false, true>(A, Bt, C, D, 128, 256, 128, 256, 1, 0);
}
