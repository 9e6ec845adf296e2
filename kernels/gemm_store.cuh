// gemm_store.cuh: the epilogue copy the GEMM kernels share (gemm.cu, gemm_wgmma.cu).
#pragma once
#include "common.cuh"

// Copies the block's output tile, staged in shared memory as st [BM][BN + PAD], to rows
// [r0, r0 + BM) x cols [c0, c0 + BN) of out [R][S]: row by row, 16 bytes a thread and copy, so
// a warp writes 512 contiguous bytes (less where a row ends). S % 8 == 0: a chunk is wholly
// inside or outside.
template <int BM, int BN, int PAD, int THREADS, typename E>
__device__ __forceinline__ void gemm_store_tile(E* __restrict__ out, const E* st, int R, int S, int r0, int c0,
                                                int tid) {
  constexpr int kPerChunk = 16 / sizeof(E), kRowChunks = BN / kPerChunk;
  static_assert(BM * kRowChunks % THREADS == 0, "output chunks must divide evenly among the threads");
#pragma unroll 4
  for (int k = 0; k < BM * kRowChunks / THREADS; ++k) {
    const int c = tid + k * THREADS, r = c / kRowChunks, col = (c % kRowChunks) * kPerChunk;
    const int gr = r0 + r, gc = c0 + col;
    if (gr < R && gc < S)
      *reinterpret_cast<uint4*>(out + (long long)gr * S + gc) =
          *reinterpret_cast<const uint4*>(st + r * (BN + PAD) + col);
  }
}
