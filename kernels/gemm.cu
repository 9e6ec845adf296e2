// gemm.cu: the tensor-core GEMM behind the fully connected layers and config C's 1x1
// convolutions (mma.sync m16n8k16, fp16 inputs, fp32 accumulation).
//
// Every pass is one product C[R][S] = sum_t A(r, t) B(t, s) over row-major tensors:
//   fwd        Y[M][N]  = X[M][K] W[N][K]^T   A = X  stored [r][t]   B = W  stored [s][t]
//   bwd_data   dX[M][K] = dY[M][N] W[N][K]    A = dY stored [r][t]   B = W  stored [t][s]
//   bwd_weight dW[N][K] = dY^T X              A = dY stored [t][r]   B = X  stored [t][s]
// Operands whose reduction index t is contiguous are staged in shared memory as [r|s][t] and
// read with plain ldmatrix; the others as [t][r|s], read with ldmatrix.trans, which delivers
// the same fragments. So one kernel body serves all three passes, templated on the two layouts.
//
// Tiling (from first principles for the H200; first measurements in the note below):
//  - Block tile 128x128x64, 8 warps as 2 (r) x 4 (s), warp tile 64x32 = 4x4 mma tiles, 64 fp32
//    accumulators a thread. 128x128 is the smallest tile whose shared-memory traffic per mma
//    (ldmatrix bytes per flop) keeps mma.sync fed, and 256 threads x 2 blocks fill an SM.
//  - 64x128x64 with warp tile 32x32 for R <= 64: the FC layers at batch 1..64, where a
//    128-row tile would be mostly zero-fill. Those products stream W once and are memory
//    bound, so the smaller tile costs nothing and doubles the blocks.
//  - BK = 64: 128-byte row segments per copy of a [.][t] tile, and half the barriers of
//    BK = 32. cp.async pipeline of 3 stages (128x128) or 4 (64x128): the memory-bound small-M
//    products need the bytes in flight. 16-byte copies, zero-filled outside the matrix: any M,
//    and N, K multiples of 8 so that every 16-byte chunk is wholly inside or outside.
//  - Rows padded by 8 halves (16 bytes): pitches of 144 B ([.][t] tiles) and 272 / 144 B
//    ([t][.] tiles, 128 / 64 wide) put the 8 row addresses of every ldmatrix phase in distinct
//    bank quads. Shared memory at most 108 KiB a block, so 2 blocks fit an SM; registers
//    capped at 128 by __launch_bounds__(256, 2) (ptxas: 125-128 for 128x128, 96-110 for
//    64x128, no spills).
//  - Split-K over blockIdx.z: with few output tiles (small M, or the long reductions of
//    bwd_weight over N*H*W pixels), each split writes fp32 partials to a workspace and
//    gemm_reduce_* sums them in split order, then applies bias / ReLU / fp16 rounding. The
//    order of every sum is fixed by the launch shape alone: results are deterministic.
//  - Epilogue: without split, bias + ReLU + fp16 rounding straight from the accumulators
//    (half2 stores); with split (and always for bwd_weight), fp32 float2 stores.
//
// First H200 timings (2026-11-28, batch 64, 25088 -> 4096): fwd 77 us (171 TFLOP/s, about
// 2.7 TB/s of W; cuBLAS via torch 56 us), bwd_data 85 us, bwd_weight 173 us (its fp32 dW is
// 411 MB of stores; every block does one k-tile, so load latency is not hidden: a persistent
// tile loop would overlap it). At batch 256: 299 TFLOP/s fwd (cuBLAS, with wgmma: 570).
//
// Kernels (launch: block 256, grid (ceil(R/BM), ceil(S/BN), splits), dynamic shared memory
// gemm_smem_bytes below; src/ops/gemm.rs computes the same):
//   gemm_{fwd,bwd_data,bwd_weight}_f16_{128x128,64x128}
//   gemm_reduce_f16    out16 = act(sum_z ws[z] + bias)        (split-K epilogue)
//   gemm_reduce_f32    out32 = sum_z ws[z]                    (split bwd_weight, bias grad)
//   gemm_colsum_f32    partial column sums of an fp16 matrix  (bias gradient, fixed order)
#include "ptx.cuh"

namespace gemm {

constexpr int kThreads = 256;
constexpr int kBK = 64;
constexpr int kPad = 8;  // halves of padding per shared-memory row

// Halves of one staged operand tile: [rows][cols + pad], stored either way round.
__host__ __device__ constexpr int tile_halves(int mn, bool t_major) {
  return t_major ? kBK * (mn + kPad) : mn * (kBK + kPad);
}

// Copies rows [r0, r0 + ROWS) x cols [c0, c0 + COLS) of the row-major matrix g (nrows x
// ncols, row pitch ld) into s (pitch COLS + kPad), 16 bytes a thread and copy; chunks outside
// the matrix are zero-filled (their source is clamped to g, never read).
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(__half* s, const __half* __restrict__ g, long long ld,
                                          int r0, int c0, int nrows, int ncols, int tid) {
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int gr = r0 + r, gc = c0 + col;
    const bool ok = gr < nrows && gc < ncols;
    const __half* src = ok ? g + (long long)gr * ld + gc : g;
    cp_async_16(s + r * (COLS + kPad) + col, src, ok);
  }
}

// The block's main loop and epilogue. A_T: A staged [t][r] (stored t-major in global
// memory), else [r][t]; likewise B_T for B ([t][s] vs [s][t]).
template <int BM, int BN, int WARPS_M, int STAGES, bool A_T, bool B_T>
__device__ __forceinline__ void gemm_block(const __half* __restrict__ A, const __half* __restrict__ B,
                                           int R, int S, int T, int kt_per_split,
                                           const __half* __restrict__ bias, int relu,
                                           __half* __restrict__ out16, float* __restrict__ out32) {
  constexpr int WARPS_N = kThreads / 32 / WARPS_M;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MI = WTM / 16, NI = WTN / 8;              // mma tiles per warp
  static_assert(MI >= 1 && NI % 2 == 0, "warp tile must be 16 x 16k");
  constexpr int kAHalves = tile_halves(BM, A_T), kBHalves = tile_halves(BN, B_T);
  constexpr int kApitch = A_T ? BM + kPad : kBK + kPad;
  constexpr int kBpitch = B_T ? BN + kPad : kBK + kPad;

  VGG_DYN_SHARED(__half, smem);
  __half* sA = smem;                       // STAGES x kAHalves
  __half* sB = smem + STAGES * kAHalves;  // STAGES x kBHalves

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int block_r = blockIdx.x * BM, block_s = blockIdx.y * BN;

  // This split's range of k-tiles (blockIdx.z); the host makes every split non-empty.
  const int kt_total = (T + kBK - 1) / kBK;
  const int kt_begin = blockIdx.z * kt_per_split;
  const int kt_count = max(0, min(kt_total, kt_begin + kt_per_split) - kt_begin);

  // Stage one k-tile of both operands. Rows or columns past T, R or S are zero-filled, so the
  // last partial k-tile and ragged tiles contribute zeros to the accumulators.
  auto load_stage = [&](int stage, int kt) {
    const int t0 = kt * kBK;
    __half* a = sA + stage * kAHalves;
    __half* b = sB + stage * kBHalves;
    if constexpr (A_T)
      load_tile<kBK, BM>(a, A, R, t0, block_r, T, R, tid);
    else
      load_tile<BM, kBK>(a, A, T, block_r, t0, R, T, tid);
    if constexpr (B_T)
      load_tile<kBK, BN>(b, B, S, t0, block_s, T, S, tid);
    else
      load_tile<BN, kBK>(b, B, T, block_s, t0, S, T, tid);
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;

  // Prologue: STAGES - 1 tiles in flight. Every iteration commits one group (possibly
  // empty), so wait<STAGES - 2> always means "the tile about to be used has landed".
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kt_count) load_stage(s, kt_begin + s);
    cp_async_commit();
  }

  // ldmatrix lane roles (ptx.cuh): lane l addresses row l % 8 of 8x8 matrix j = l / 8.
  const int lrow = lane & 7, lmat = lane >> 3;

  for (int it = 0; it < kt_count; ++it) {
    cp_async_wait<STAGES - 2>();
    // The tile of `it` is visible to all threads, and every warp is done with the stage that
    // the prefetch below overwrites (it was consumed in iteration it - 1).
    __syncthreads();
    {
      const int next = it + STAGES - 1;
      if (next < kt_count) load_stage(next % STAGES, kt_begin + next);
      cp_async_commit();
    }

    const __half* a = sA + (it % STAGES) * kAHalves;
    const __half* b = sB + (it % STAGES) * kBHalves;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      unsigned af[MI][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int m0 = wm * WTM + i * 16;
        if constexpr (A_T) {
          // Matrix j: k half j >> 1, m half j & 1 (a0..a3 = (m0-7,k0-7) (m8-15,k0-7) ...).
          const __half* p = a + (kk + lrow + 8 * (lmat >> 1)) * kApitch + m0 + 8 * (lmat & 1);
          ldmatrix_x4_trans(af[i], p);
        } else {
          // Matrix j: m half j & 1, k half j >> 1: lane l at row m0 + l % 16, col 8 * (l / 16).
          const __half* p = a + (m0 + (lane & 15)) * kApitch + kk + 8 * (lane >> 4);
          ldmatrix_x4(af[i], p);
        }
      }
#pragma unroll
      for (int j = 0; j < NI; j += 2) {
        // Two n8 tiles at once: matrices (n-tile j, k0-7) (j, k8-15) (j+1, k0-7) (j+1, k8-15).
        const int n0 = wn * WTN + j * 8;
        unsigned r[4];
        if constexpr (B_T) {
          const __half* p = b + (kk + lrow + 8 * (lmat & 1)) * kBpitch + n0 + 8 * (lmat >> 1);
          ldmatrix_x4_trans(r, p);
        } else {
          const __half* p = b + (n0 + lrow + 8 * (lmat >> 1)) * kBpitch + kk + 8 * (lmat & 1);
          ldmatrix_x4(r, p);
        }
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_m16n8k16_f16f32(acc[i][j], af[i], bf[j], acc[i][j]);
    }
  }
  // Drain the (empty) trailing groups so no copy is in flight when the block exits.
  cp_async_wait_all();

  // Epilogue. Accumulator c of tile (i, j) is element (row g + 8 (c >> 1), col 2t + (c & 1)).
  const int g = lane >> 2, t4 = lane & 3;
  float* part = out32 ? out32 + (long long)blockIdx.z * R * S : nullptr;
#pragma unroll
  for (int j = 0; j < NI; ++j) {
    const int col = block_s + wn * WTN + j * 8 + 2 * t4;
    if (col >= S) continue;  // S % 8 == 0: the whole n8 tile is out
    float b0 = 0.f, b1 = 0.f;
    if (bias && !part) b0 = __half2float(bias[col]), b1 = __half2float(bias[col + 1]);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = block_r + wm * WTM + i * 16 + g + 8 * h;
        if (row >= R) continue;
        const long long o = (long long)row * S + col;
        float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (part) {
          *reinterpret_cast<float2*>(part + o) = make_float2(v0, v1);
        } else {
          v0 += b0, v1 += b1;
          if (relu) v0 = v0 > 0.f ? v0 : 0.f, v1 = v1 > 0.f ? v1 : 0.f;
          *reinterpret_cast<__half2*>(out16 + o) = __floats2half2_rn(v0, v1);
        }
      }
  }
}

}  // namespace gemm

// Shared memory of one launch, in bytes (src/ops/gemm.rs mirrors this).
__host__ __device__ constexpr int gemm_smem_bytes(int bm, int bn, int stages, bool a_t, bool b_t) {
  return stages * (gemm::tile_halves(bm, a_t) + gemm::tile_halves(bn, b_t)) * 2;
}

// One entry point per (pass, tile). Arguments: A, B as in the table at the top; R, S, T the
// product's dimensions; kt_per_split k-tiles of 64 per blockIdx.z; bias (nullable, length S)
// and relu for the fp16 epilogue; out16 [R][S] fp16, used when out32 is null; out32, when not
// null, receives fp32 [gridDim.z][R][S] partials (no bias, no ReLU).
// Two blocks an SM: __launch_bounds__(256, 2) caps registers at 128 a thread.
#define GEMM_PARAMS                                                                               \
  const __half *__restrict__ A, const __half *__restrict__ B, int R, int S, int T, int kt_per_split, \
      const __half *__restrict__ bias, int relu, __half *__restrict__ out16, float *__restrict__ out32
#define GEMM_ARGS A, B, R, S, T, kt_per_split, bias, relu, out16, out32

extern "C" __global__ void __launch_bounds__(256, 2) gemm_fwd_f16_128x128(GEMM_PARAMS) {
  gemm::gemm_block<128, 128, 2, 3, false, false>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_fwd_f16_64x128(GEMM_PARAMS) {
  gemm::gemm_block<64, 128, 2, 4, false, false>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_bwd_data_f16_128x128(GEMM_PARAMS) {
  gemm::gemm_block<128, 128, 2, 3, false, true>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_bwd_data_f16_64x128(GEMM_PARAMS) {
  gemm::gemm_block<64, 128, 2, 4, false, true>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_bwd_weight_f16_128x128(GEMM_PARAMS) {
  gemm::gemm_block<128, 128, 2, 3, true, true>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_bwd_weight_f16_64x128(GEMM_PARAMS) {
  gemm::gemm_block<64, 128, 2, 4, true, true>(GEMM_ARGS);
}
#undef GEMM_PARAMS
#undef GEMM_ARGS

// ---------------------------------------------------------------------------------------------
// Split-K epilogues: element e of the result is sum_{z < splits} ws[z * count + e], summed in z
// order (deterministic), four elements a thread (count % 4 == 0, ws 16-byte aligned).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float4 gemm_sum_splits(const float* __restrict__ ws, int splits,
                                                  long long count, long long e) {
  float4 s = *reinterpret_cast<const float4*>(ws + e);
  for (int z = 1; z < splits; ++z) {
    const float4 v = *reinterpret_cast<const float4*>(ws + z * count + e);
    s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
  }
  return s;
}

// out16[e] = act(sum + bias[e % cols]); bias nullable.
extern "C" __global__ void gemm_reduce_f16(const float* __restrict__ ws, int splits, long long count,
                                           int cols, const __half* __restrict__ bias, int relu,
                                           __half* __restrict__ out16) {
  const long long e = 4 * ((long long)blockIdx.x * blockDim.x + threadIdx.x);
  if (e >= count) return;
  const float4 s = gemm_sum_splits(ws, splits, count, e);
  float v[4] = {s.x, s.y, s.z, s.w};
  const int c0 = (int)(e % cols);  // cols % 4 == 0: the four share a row
  for (int i = 0; i < 4; ++i) {
    if (bias) v[i] += __half2float(bias[c0 + i]);
    if (relu) v[i] = v[i] > 0.f ? v[i] : 0.f;
  }
  __half2* o = reinterpret_cast<__half2*>(out16 + e);
  o[0] = __floats2half2_rn(v[0], v[1]);
  o[1] = __floats2half2_rn(v[2], v[3]);
}

extern "C" __global__ void gemm_reduce_f32(const float* __restrict__ ws, int splits, long long count,
                                           float* __restrict__ out32) {
  const long long e = 4 * ((long long)blockIdx.x * blockDim.x + threadIdx.x);
  if (e >= count) return;
  *reinterpret_cast<float4*>(out32 + e) = gemm_sum_splits(ws, splits, count, e);
}

// ---------------------------------------------------------------------------------------------
// Column sums of x [rows][cols] fp16, for the bias gradient db[n] = sum_m dY[m][n]:
// out[chunk][col] = sum of rows [chunk * rows_per_chunk, +rows_per_chunk) (blockIdx.y = chunk).
// Block (32, 8): 32 consecutive columns (coalesced), 8 row phases each summing every 8th row
// in order, then the 8 phase sums added in phase order: a fixed order, so deterministic. With
// one chunk this is the whole sum; with several, gemm_reduce_f32 adds the chunks in order.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256)
    gemm_colsum_f32(const __half* __restrict__ x, int rows, int cols, int rows_per_chunk,
                    float* __restrict__ out) {
  __shared__ float part[8][32];
  const int col = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float s = 0.f;
  if (col < cols)
    for (int r = r0 + threadIdx.y; r < r1; r += 8) s += __half2float(x[(long long)r * cols + col]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = part[0][threadIdx.x];
    for (int p = 1; p < 8; ++p) total += part[p][threadIdx.x];
    out[(long long)blockIdx.y * cols + col] = total;
  }
}
