// conv_wgmma.cuh: what the wgmma 3x3 conv kernels share: the fprop / dgrad kernels'
// (conv_wgmma.cu, conv_wgmma_halo.cu) B tile layout and epilogue, the wgrad kernels'
// (conv_wgrad_wgmma.cu, conv_wgrad_wgmma_halo.cu) bias-gradient sums, and the TMA tiles'
// (conv_wgmma_tma.cu, conv_wgrad_wgmma_tma.cu) padded space of 8-position boxes.
#pragma once
#include "bulk.cuh"
#include "cluster.cuh"
#include "wgmma.cuh"

// Byte offset of 16-byte chunk `chunk` (channels 8 chunk..) of row `row` in a K-major tile of
// 64-channel rows, core matrix (row / 8, chunk) at ((row / 8) * 8 + chunk) * 128 bytes: lbo 128,
// sbo 1024.
__device__ __forceinline__ int conv_wgmma_off(int row, int chunk) { return ((row >> 3) * 8 + chunk) * 128 + (row & 7) * 16; }

// Accumulator row `half` (0: row g, 1: row g + 8 of the warp's 16) of an m64nN tile, output
// channels o0 + 8 j + 2 t (+ 1), to pixel p of y where `ok`: plus bias, ReLU (fprop) or zeroed
// where the mask is not > 0 (dgrad), as fp16. cout is a multiple of 8, so an 8-channel block is
// wholly inside or outside. Every lane of the warp calls it (the shuffle), `ok` says which store.
// Stored as they lie, a quad's fp16 pairs are 16 bytes of a row: half a sector a store, every
// sector of y written twice (ncu on the halo fprop: "16.0 of the 32 bytes transmitted per sector",
// 6.4M of its 84.5M L2 sectors). One exchange with the neighbouring lane a pair of blocks gives
// each lane 4 consecutive channels of the pair's 16 instead, so a quad writes 32 whole bytes: even
// lanes keep their block-j pair and take their neighbour's (channels 2 t .. 2 t + 3 of block j),
// odd lanes keep their block-(j + 1) pair and take their neighbour's (block j + 1's 2 t - 2 ..).
template <int kOut>
__device__ __forceinline__ void conv_wgmma_store_row(const float (&acc)[kOut / 2], int half, long long p, bool ok,
                                                     int o0, int t, const __half* __restrict__ bias,
                                                     const __half* __restrict__ mask, __half* __restrict__ y,
                                                     int cout, int relu) {
    static_assert(kOut % 16 == 0, "the exchange pairs 8-channel blocks");
    const bool odd = t & 1;
    const int off = odd ? 2 * t + 6 : 2 * t;  // this lane's 4 channels within a pair's 16
#pragma unroll
    for (int j = 0; j < kOut / 8; j += 2) {
        unsigned v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int o = o0 + 8 * (j + e) + 2 * t;
            float v0 = acc[4 * (j + e) + 2 * half], v1 = acc[4 * (j + e) + 2 * half + 1];
            if (bias && o < cout) v0 += __half2float(bias[o]), v1 += __half2float(bias[o + 1]);
            if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);
            const __half2 h2 = __floats2half2_rn(v0, v1);
            v[e] = *reinterpret_cast<const unsigned*>(&h2);
        }
        const unsigned keep = odd ? v[1] : v[0];
        const unsigned got = __shfl_xor_sync(0xffffffffu, odd ? v[0] : v[1], 1);
        const int o = o0 + 8 * j + off;
        if (!ok || o >= cout) continue;
        uint2 out = odd ? make_uint2(got, keep) : make_uint2(keep, got);
        if (mask) {
            const uint2 m = *reinterpret_cast<const uint2*>(mask + p * cout + o);
            const float2 m01 = __half22float2(*reinterpret_cast<const __half2*>(&m.x));
            const float2 m23 = __half22float2(*reinterpret_cast<const __half2*>(&m.y));
            // Zeroed lanes become +0 (bits 0), as the fp32 zero rounded did before the exchange.
            if (!(m01.x > 0.f)) out.x &= 0xffff0000u;
            if (!(m01.y > 0.f)) out.x &= 0x0000ffffu;
            if (!(m23.x > 0.f)) out.y &= 0xffff0000u;
            if (!(m23.y > 0.f)) out.y &= 0x0000ffffu;
        }
        *reinterpret_cast<uint2*>(y + p * cout + o) = out;
    }
}

// The wgrad kernels' epilogue: accumulator row `half` of an m64nN tile (as above) as fp32 pairs
// to row[o0 + 8 j + 2 t (+ 1)], those below `limit` (a multiple of 8, so o + 1 < limit too).
template <int kN>
__device__ __forceinline__ void conv_wgmma_store_f32_row(const float (&acc)[kN / 2], int half, float* __restrict__ row,
                                                         int o0, int t, int limit) {
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
        const int o = o0 + 8 * j + 2 * t;
        if (o < limit) *reinterpret_cast<float2*>(row + o) = make_float2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
    }
}

// The halo kernels' padded position space (conv_wgmma_halo.cu): whether position P holds a
// pixel of the n x h x w image (pitch wp = w + 2, h + 1 rows an image), and which (`pix`).
__device__ __forceinline__ bool conv_halo_pixel(int P, int wp, int h, int w, int n, int& pix) {
    const int r = P / wp, xp = P - r * wp, img = r / (h + 1), yy = r - img * (h + 1) - 1;
    pix = (img * h + yy) * w + xp - 1;
    return P >= 0 && img < n && yy >= 0 && xp >= 1 && xp <= w;
}

// The TMA tiles' row pitch for width w (conv_wgmma_tma.cu's header): w + 2 rounded up to 8, so
// that 8 consecutive positions from a multiple of 8 (a chunk) never cross a padded row.
__host__ __device__ constexpr int conv_tma_pitch(int w) { return (w + 2 + 7) / 8 * 8; }

// Chunk j (>= -1) of the TMA tiles' padded space (pitch sp, h + 1 rows an image) as one box of
// the NHWC tensor map `map` (channels, w, h, n): 8 pixels x 64 channels from c0 into dst, on
// bar. Chunk j is at pixel x = 8 (j mod sp / 8) - 1 of padded row R = j div (sp / 8), image row
// ((R - 1) / (h + 1), (R - 1) % (h + 1)) (R <= 0: image 0, y = R - 1); what lies outside the
// tensor (x = -1, x >= w, y < 0, y = h, images past the last, channels past the end) lands as
// zeros, counted on bar like the rest. mcast != 0: multicast to the cluster's blocks in that mask
// (cluster.cuh), at dst's offset and bar's in each.
__device__ __forceinline__ void conv_tma_load_chunk(void* dst, const TmaDesc* map, int c0, int j, int sp, int h,
                                                    unsigned long long* bar, unsigned short mcast = 0) {
    const int rc = sp / 8, r = (j + rc) / rc - 1, x0 = 8 * (j - r * rc) - 1;  // j >= -1: floor division
    const int img = r > 0 ? (r - 1) / (h + 1) : 0, yy = r > 0 ? r - 1 - img * (h + 1) : r - 1;
    if (mcast)
        tma_load_4d_multicast(dst, map, c0, x0, yy, img, bar, mcast);
    else
        tma_load_4d(dst, map, c0, x0, yy, img, bar);
}

// The halo wgrads' stage (conv_wgrad_wgmma_halo.cu, conv_wgrad_wgmma_tma.cu): a warpgroup's 3
// tap accumulators acc[s] (m64n{kC}) += A B_s over the stage's 64 positions as 4 k16 steps, A and
// B M/N-major at da and db (tap 0), a k16 step k16_step descriptor units on, tap s tap_step x s
// on in B; then commit and wait until only this stage's group is pending.
template <int kC>
__device__ __forceinline__ void conv_wgrad_taps_stage(float (&acc)[3][kC / 2], unsigned long long da,
                                                      unsigned long long db, unsigned k16_step, unsigned tap_step) {
#pragma unroll
    for (int tap = 0; tap < 3; ++tap) wgmma_fence_acc(acc[tap]);
    wgmma_fence();
#pragma unroll
    for (int k16 = 0; k16 < 4; ++k16)
#pragma unroll
        for (int tap = 0; tap < 3; ++tap)
            wgmma_ss<kC, true, true>(acc[tap], da + k16_step * k16, db + k16_step * k16 + tap_step * tap, 1);
    wgmma_commit();
    wgmma_wait<1>();
#pragma unroll
    for (int tap = 0; tap < 3; ++tap) wgmma_fence_acc(acc[tap]);
}

// The halo wgrads' epilogue: acc[s][4 j + i] (this thread's, every group retired) to part row
// k0 + wgmma_acc_row(i >> 1) (those below k) of `out` (9 C columns a row), column
// (3 r + s) C + c0 + 8 j + 2 t + (i & 1) (those below C).
template <int kC>
__device__ __forceinline__ void conv_wgrad_store_taps(const float (&acc)[3][kC / 2], float* __restrict__ out, int k0,
                                                      int k, int r, int c, int c0) {
    const int t = (int)threadIdx.x & 3, cols = 9 * c;  // t: the accumulators' column pair (wgmma.cuh)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int kk = k0 + wgmma_acc_row(half);
        if (kk >= k) continue;
        float* const row = out + (long long)kk * cols + 3 * r * c;
#pragma unroll
        for (int s = 0; s < 3; ++s) conv_wgmma_store_f32_row<kC>(acc[s], half, row + s * c, c0, t, c);
    }
}

// db in the wgrad kernels: this thread's share of one stage's dY tile (M/N-major, 128 k x 64
// pixels, k block i at 1024 i, pixel q's row at 16 q): k = tid & 127, pixels 32 (tid >> 7)..
// + 31, added to db_sum. Called before the stage's wgmma's are issued: ptxas serializes wgmma's
// (C7515) when other instructions run while they are in flight and it cannot tell their
// registers apart.
__device__ __forceinline__ void conv_wgmma_db_stage(const unsigned char* tile, int tid, float& db_sum) {
    const int kk = tid & 127, half = tid >> 7;
    const unsigned char* const a = tile + (kk / 8) * 1024 + (kk % 8) * 2;
#pragma unroll 8
    for (int q = 32 * half; q < 32 * half + 32; ++q) db_sum += __half2float(*reinterpret_cast<const __half*>(a + q * 16));
}

// The two halves' db sums (256 threads) added in a fixed order through shared memory (free by
// now: call after the main loop, every thread of the block) into db[k0 ..] below k.
__device__ __forceinline__ void conv_wgmma_db_finish(float db_sum, unsigned char* smem, float* __restrict__ db, int k0,
                                                     int k, int tid) {
    __syncthreads();
    float* const sdb = reinterpret_cast<float*>(smem);
    sdb[tid] = db_sum;
    __syncthreads();
    if (tid < 128 && k0 + tid < k) db[k0 + tid] = sdb[tid] + sdb[tid + 128];
}
