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
// Tiles (block tile, warps, warp tile, ring). Linear::plan in src/ops/gemm/plan.rs picks the
// tile and split count per pass and shape from a model with an H200's constants, fitted to
// run 5: waves of mma's and epilogues, each SM's share of the global-to-shared copies (the SM
// holding the most of the blocks, dealt out over 132, sets the pace), device-memory traffic and
// the split-K reduce:
//   128x256  8 warps 2x4  64x64  3 x 64-deep  one block an SM: the large products
//   128x192  8 warps 2x4  64x48  3 x 64-deep  one block an SM: fc6's bwd_data at batch 256
//                                             (S = 25088) has 262 such tiles, two full waves
//                                             on 132 SMs, where 128x256 leaves 196, 1.5 waves
//   128x128  4 warps 2x2  64x64  3 x 64-deep  two blocks an SM: finer waves; the store-bound
//                                             bwd_weight overlaps one block's epilogue with
//                                             the other's loads
//   64x128   4 warps 1x4  64x32  4 x 64-deep  two blocks an SM: small R (FC layers at small
//                                             batch), memory bound, more bytes in flight
//  - Warp tiles of 64 rows: per 16-deep step a warp reads MI = 4 A fragments (ldmatrix.x4) and
//    NI / 2 B pairs for 4 NI mma's: 8 ldmatrix per 32 mma (64x64), 7 per 24 (64x48), 6 per 16
//    (64x32), where 32x32 warps need 4 per 8. Once the loads are hidden, shared-memory reads
//    per mma are the expected limit of mma.sync here (reasoned from bandwidths, not measured).
//  - 16-byte cp.async copies into a ring of STAGES k-tiles, zero-filled outside the matrix (any
//    R; S and T multiples of 8, so every 16-byte chunk is wholly inside or outside). One
//    barrier a k-tile: wait_group<STAGES - 2> (this thread's copies of tile i landed), barrier
//    (everyone's landed, and everyone is done with tile i - 1), copy tile i + STAGES - 1 into
//    the buffer tile i - 1 used, then the mma's of tile i.
//  - Registers (ptxas, sm_90): 221-228 for 128x256, 176-184 for 128x192, 210-229 for 128x128,
//    158-176 for 64x128, no spills; shared memory 154-166 KB (128x256), 129-138 KB (128x192),
//    104-111 KB (128x128, 64x128). So the 8-warp tiles run one block an SM and the 4-warp tiles
//    two: 8 warps an SM either way.
//  - Rows padded by 8 halves (pitches of 144 B for [.][t] tiles, 272 / 400 / 528 B for [t][.]
//    tiles 128 / 192 / 256 wide) put the 8 row addresses of every ldmatrix phase in distinct
//    bank quads.
//  - Epilogue through shared memory: after the last k-tile the ring holds the block's output
//    tile ([BM][BN + 8] fp32, or fp16 after bias, ReLU and rounding), written from the
//    fragments without bank conflicts (pitch = 8 words mod 32 for fp32 float2, 4 for half2),
//    then copied out by rows, 16 bytes a thread: a warp writes 512 contiguous bytes (less where
//    a row ends) instead of 8 rows x 32 bytes, with a quarter (fp32) or an eighth (fp16) of
//    the store instructions.
//  - Split-K over blockIdx.z: each split writes fp32 partials [z][R][S] to a workspace and
//    gemm_reduce_* sums them in split order, then applies bias / ReLU / fp16 rounding. The
//    order of every sum is fixed by the launch shape alone: results are deterministic.
//
// History and predictions. Run 2 (H200, 2026-11-28), with 128x128 blocks of 8 warps of 64x32
// and 64x128 blocks of 8 warps of 32x32 (4 ldmatrix per 8 mma), split-K aiming at 264 blocks:
// 0.63x cuBLAS geomean over the 27 FC rows; fc6 at batch 256 0.40-0.50x (fwd and bwd_data
// at 274-298 TFLOP/s), fc8 at batch 64-128 0.82-1.13x. This version (64-row warp tiles, the 128x256 / 128x192
// tiles, the shared-memory epilogue, and a planner that models waves on 132 SMs and the
// split-K partials' traffic instead of aiming at a block count) is unmeasured. Predictions for
// the next GPU run: fc6 / fc7 at batch 128-256 (fwd, bwd_data) gain the most, from fewer
// ldmatrix per mma and from whole waves; bwd_weight (fp32 dW, store bound) gains from the
// row-contiguous 16-byte stores; the batch-64 rows gain less (they stream W once). The
// geomean should rise well above 0.63x, but 0.9x at batch 256 probably needs wgmma (sm_90a):
// cuBLAS ran those at 638-685 TFLOP/s, far beyond anything our mma.sync kernels have reached.
// Run 5 (H200, 2026-11-30) measured this version at 0.70x: fc6 fwd at batch 256 322 TFLOP/s,
// and the batch-64 rows streamed W at 0.56-0.70x cuBLAS's rate where their blocks filled
// 61-74% of the SMs. The planner's model was then refit to those 27 rows (bench/NOTES.md).
//
// Kernels (launch: block 32 x warps, grid (ceil(R/BM), ceil(S/BN), splits), dynamic shared
// memory gemm_smem_bytes below; src/ops/gemm/launch.rs mirrors both):
//   gemm_{fwd,bwd_data,bwd_weight}_f16_{128x256,128x192,128x128,64x128}
//   gemm_reduce_f16    out16 = act(sum_z ws[z] + bias)        (split-K epilogue)
//   gemm_reduce_f32    out32 = sum_z ws[z]                    (split bwd_weight, bias grad)
//   gemm_colsum_f32    partial column sums of an fp16 matrix  (bias gradient, fixed order)
#include "gemm_store.cuh"
#include "ptx.cuh"

namespace gemm {

constexpr int kBK = 64;
constexpr int kPad = 8;                  // halves of padding per shared-memory row
constexpr int kMaxSmem = 227 * 1024;     // sm_90's per-block limit

// Halves of one staged operand tile: [rows][cols + pad], stored either way round.
__host__ __device__ constexpr int tile_halves(int mn, bool t_major) {
  return t_major ? kBK * (mn + kPad) : mn * (kBK + kPad);
}

// Dynamic shared memory of one launch, in bytes: the ring, or the fp32 output tile the
// epilogue stages in it, whichever is larger (src/ops/gemm/launch.rs mirrors this).
__host__ __device__ constexpr int smem_bytes(int bm, int bn, int stages, bool a_t, bool b_t) {
  const int ring = stages * (tile_halves(bm, a_t) + tile_halves(bn, b_t)) * 2;
  const int out = bm * (bn + kPad) * 4;
  return ring > out ? ring : out;
}

// Copies rows [r0, r0 + ROWS) x cols [c0, c0 + COLS) of the row-major matrix g (nrows x
// ncols, row pitch ld) into s (pitch COLS + kPad), 16 bytes a thread and copy; chunks outside
// the matrix are zero-filled (their source is clamped to g, never read).
template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_tile(__half* s, const __half* __restrict__ g, long long ld,
                                          int r0, int c0, int nrows, int ncols, int tid) {
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int gr = r0 + r, gc = c0 + col;
    const bool ok = gr < nrows && gc < ncols;
    const __half* src = ok ? g + (long long)gr * ld + gc : g;
    cp_async_16(s + r * (COLS + kPad) + col, src, ok);
  }
}

// The block's main loop and epilogue. A_T: A staged [t][r] (stored t-major in global
// memory), else [r][t]; likewise B_T for B ([t][s] vs [s][t]).
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool A_T, bool B_T>
__device__ __forceinline__ void gemm_block(const __half* __restrict__ A, const __half* __restrict__ B,
                                           int R, int S, int T, int kt_per_split,
                                           const __half* __restrict__ bias, int relu,
                                           __half* __restrict__ out16, float* __restrict__ out32) {
  constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MI = WTM / 16, NI = WTN / 8;              // mma tiles per warp
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be 16 x 16k");
  static_assert(STAGES >= 2, "the ring needs a buffer to fill while one is read");
  static_assert(smem_bytes(BM, BN, STAGES, A_T, B_T) <= kMaxSmem, "tile needs too much shared memory");
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
      load_tile<kBK, BM, kThreads>(a, A, R, t0, block_r, T, R, tid);
    else
      load_tile<BM, kBK, kThreads>(a, A, T, block_r, t0, R, T, tid);
    if constexpr (B_T)
      load_tile<kBK, BN, kThreads>(b, B, S, t0, block_s, T, S, tid);
    else
      load_tile<BN, kBK, kThreads>(b, B, T, block_s, t0, S, T, tid);
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

  // ldmatrix lane roles (ptx.cuh): lane l addresses row l % 8 of 8x8 matrix j = l / 8. The
  // offsets of this lane's rows within a stage; fragment (i or j, kk) adds a constant.
  const int lrow = lane & 7, lmat = lane >> 3;
  // A, matrix j: m half j & 1, k half j >> 1 (a0..a3 = (m0-7,k0-7) (m8-15,k0-7) ...).
  const int a_lane = A_T ? (lrow + 8 * (lmat >> 1)) * kApitch + wm * WTM + 8 * (lmat & 1)
                         : (wm * WTM + (lane & 15)) * kApitch + 8 * (lane >> 4);
  // B, two n8 tiles at once: matrices (n-tile j, k0-7) (j, k8-15) (j+1, k0-7) (j+1, k8-15).
  const int b_lane = B_T ? (lrow + 8 * (lmat & 1)) * kBpitch + wn * WTN + 8 * (lmat >> 1)
                         : (wn * WTN + lrow + 8 * (lmat >> 1)) * kBpitch + 8 * (lmat & 1);

  int read = 0, write = STAGES - 1;  // ring buffers of tile it and of tile it + STAGES - 1
  for (int it = 0; it < kt_count; ++it) {
    cp_async_wait<STAGES - 2>();
    // The tile of `it` is visible to all threads, and every warp is done with the buffer that
    // the copy below overwrites (it held tile it - 1).
    __syncthreads();
    if (it + STAGES - 1 < kt_count) load_stage(write, kt_begin + it + STAGES - 1);
    cp_async_commit();

    const __half* a = sA + read * kAHalves + a_lane;
    const __half* b = sB + read * kBHalves + b_lane;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      unsigned af[MI][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        if constexpr (A_T)
          ldmatrix_x4_trans(af[i], a + kk * kApitch + i * 16);
        else
          ldmatrix_x4(af[i], a + i * 16 * kApitch + kk);
      }
#pragma unroll
      for (int j = 0; j < NI; j += 2) {
        unsigned r[4];
        if constexpr (B_T)
          ldmatrix_x4_trans(r, b + kk * kBpitch + j * 8);
        else
          ldmatrix_x4(r, b + j * 8 * kBpitch + kk);
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_m16n8k16_f16f32(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    read = read + 1 == STAGES ? 0 : read + 1;
    write = write + 1 == STAGES ? 0 : write + 1;
  }

  // Epilogue. The trailing copy groups are empty; once every warp is past its last mma the
  // ring holds the output tile. Accumulator c of tile (i, j) is element (row g + 8 (c >> 1),
  // col 2t + (c & 1)) of that 16 x 8 tile.
  cp_async_wait_all();
  __syncthreads();
  const int g = lane >> 2, t4 = lane & 3;
  const int row_w = wm * WTM + g, col_w = wn * WTN + 2 * t4;  // this lane's first element
  constexpr int kPitch = BN + kPad;                            // output tile pitch, elements
  float* part = out32 ? out32 + (long long)blockIdx.z * R * S : nullptr;
  if (part) {
    float* st = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<float2*>(st + (row_w + i * 16 + 8 * h) * kPitch + col_w + j * 8) =
              make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
    __syncthreads();
    gemm_store_tile<BM, BN, kPad, kThreads>(part, st, R, S, block_r, block_s, tid);
  } else {
    __half* st = smem;
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int col = col_w + j * 8, gc = block_s + col;
      float b0 = 0.f, b1 = 0.f;
      if (bias && gc < S) b0 = __half2float(bias[gc]), b1 = __half2float(bias[gc + 1]);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
          if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
          *reinterpret_cast<__half2*>(st + (row_w + i * 16 + 8 * h) * kPitch + col) =
              __floats2half2_rn(v0, v1);
        }
    }
    __syncthreads();
    gemm_store_tile<BM, BN, kPad, kThreads>(out16, st, R, S, block_r, block_s, tid);
  }
}

}  // namespace gemm

// Shared memory of one launch, in bytes (src/ops/gemm/launch.rs mirrors this).
__host__ __device__ constexpr int gemm_smem_bytes(int bm, int bn, int stages, bool a_t, bool b_t) {
  return gemm::smem_bytes(bm, bn, stages, a_t, b_t);
}

// One entry point per (pass, tile). Arguments: A, B as in the table at the top; R, S, T the
// product's dimensions; kt_per_split k-tiles of 64 per blockIdx.z; bias (nullable, length S)
// and relu for the fp16 epilogue; out16 [R][S] fp16, used when out32 is null; out32, when not
// null, receives fp32 [gridDim.z][R][S] partials (no bias, no ReLU).
// __launch_bounds__: 8-warp tiles run one block an SM (255 registers a thread allowed), 4-warp
// tiles two (65536 / 256 = 256, so also 255).
#define GEMM_PARAMS                                                                               \
  const __half *__restrict__ A, const __half *__restrict__ B, int R, int S, int T, int kt_per_split, \
      const __half *__restrict__ bias, int relu, __half *__restrict__ out16, float *__restrict__ out32
#define GEMM_ARGS A, B, R, S, T, kt_per_split, bias, relu, out16, out32
//                                       BM   BN  WM WN stages  A_T    B_T
#define GEMM_128x256(A_T, B_T) gemm::gemm_block<128, 256, 2, 4, 3, A_T, B_T>(GEMM_ARGS)
#define GEMM_128x192(A_T, B_T) gemm::gemm_block<128, 192, 2, 4, 3, A_T, B_T>(GEMM_ARGS)
#define GEMM_128x128(A_T, B_T) gemm::gemm_block<128, 128, 2, 2, 3, A_T, B_T>(GEMM_ARGS)
#define GEMM_64x128(A_T, B_T) gemm::gemm_block<64, 128, 1, 4, 4, A_T, B_T>(GEMM_ARGS)

extern "C" __global__ void __launch_bounds__(256, 1) gemm_fwd_f16_128x256(GEMM_PARAMS) {
  GEMM_128x256(false, false);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_fwd_f16_128x192(GEMM_PARAMS) {
  GEMM_128x192(false, false);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_fwd_f16_128x128(GEMM_PARAMS) {
  GEMM_128x128(false, false);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_fwd_f16_64x128(GEMM_PARAMS) {
  GEMM_64x128(false, false);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_data_f16_128x256(GEMM_PARAMS) {
  GEMM_128x256(false, true);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_data_f16_128x192(GEMM_PARAMS) {
  GEMM_128x192(false, true);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_bwd_data_f16_128x128(GEMM_PARAMS) {
  GEMM_128x128(false, true);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_bwd_data_f16_64x128(GEMM_PARAMS) {
  GEMM_64x128(false, true);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_weight_f16_128x256(GEMM_PARAMS) {
  GEMM_128x256(true, true);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_weight_f16_128x192(GEMM_PARAMS) {
  GEMM_128x192(true, true);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_bwd_weight_f16_128x128(GEMM_PARAMS) {
  GEMM_128x128(true, true);
}
extern "C" __global__ void __launch_bounds__(128, 2) gemm_bwd_weight_f16_64x128(GEMM_PARAMS) {
  GEMM_64x128(true, true);
}
#undef GEMM_128x256
#undef GEMM_128x192
#undef GEMM_128x128
#undef GEMM_64x128
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
    if (relu) v[i] = vgg_relu(v[i]);
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
