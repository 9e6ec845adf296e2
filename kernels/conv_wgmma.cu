// conv_wgmma.cu: the 3x3 convolution (stride 1, pad 1) as an implicit GEMM on Hopper's warpgroup
// MMA (wgmma.cuh: sm_90a, or the emulator), fp16 in, fp32 accumulation:
//   igemm3x3_wgmma_n{64,128,256}_f16   y[p][o] = epilogue(sum_{tap, c} x[p + tap][c] wt[o][tap][c])
// GEMM M = output pixels (n, y, x flattened), N = output channels, reduction = 9 taps x cin.
// fprop: x, wt = w (KRSC), epilogue bias (+ ReLU). dgrad: x = dy, wt = w rotated 180 degrees with
// K and C swapped (conv_rot180_f16 below writes it), epilogue zeroing where the ReLU mask (the
// previous layer's output) is not > 0.
//
// Why: every mma.sync design of ours tops out near 0.55-0.7x cuDNN on VGG's large layers by
// its shared-memory traffic and issue count (bench/NOTES.md); wgmma reads its operands from
// shared memory once per warpgroup and issues one instruction per 64 x N x 16 product.
//
// Tiling: a block owns 128 pixels x N output channels (N = 64 for at most 64 channels, else 128
// or 256: src/ops/conv/wgmma.rs picks 256 where it leaves at most 1/8 of the channels idle;
// N 64 runs two blocks an SM); 256 threads = 2 warpgroups, each
// 64 pixels x N (m64nNk16, N / 2 fp32 accumulators a thread). The reduction goes in stages of
// one tap x 64 input channels (channels past cin zero-filled), 9 ceil(cin / 64) stages, through
// a 4-buffer ring of 16-byte cp.async copies with one barrier a stage:
//   wait for stage i's copies, fence them to the async proxy, barrier; copy stage i + 2 into
//   the buffer stage i - 2 used; 4 wgmma's (k16 each) on stage i, commit; wait until only this
//   stage's group is pending (so stage i - 1's buffer is free by the next barrier).
// Shared layout per buffer (16 KB of A + N x 128 bytes of B), K-major without swizzle
// (wgmma.cuh): A then B, rows of 64 channels as core matrices of 8 rows x 16 bytes, core matrix
// (row / 8, chunk) at ((row / 8) * 8 + chunk) * 128 bytes: lbo 128 (next 8 channels), sbo 1024
// (next 8 rows). The copies: piece j of a thread -> row 32 j + 8 (tid >> 6) + (tid & 7), chunk
// (tid >> 3) & 7, so the 8 lanes of a 16-byte store phase write 8 rows of one chunk: 8
// consecutive 16-byte units. Each thread's pixels (and which of their 9 taps lie inside the
// image), its copies' source pointers and the descriptors are worked out once.
// Epilogue: from the accumulators (d[4 j + i]: row 16 (warp % 4) + g + 8 (i >> 1) of the
// warpgroup's 64, channel 8 j + 2 t + (i & 1)) straight to global memory as fp16 pairs.
// Expected bound (bench/NOTES.md, "A wgmma conv"): L2 to shared memory, (128 + N) x 128 bytes
// a stage for 2 x 128 x N x 64 FLOP.
#include "conv_wgmma.cuh"

namespace cw {
constexpr int kPix = 128;               // pixels a block (GEMM M)
constexpr int kC = 64;                  // input channels a stage
constexpr int kBufs = 4;                // ring buffers
constexpr int kABytes = kPix * kC * 2;  // 16384
// A buffer with kOut output channels (GEMM N): A, then B's kOut rows.
__host__ __device__ constexpr int buf_bytes(int out) { return kABytes + out * kC * 2; }
// Dynamic shared memory (src/ops/conv/wgmma.rs): 98304 (kOut 64), 131072 (128), 196608 (256).
static_assert(kBufs * buf_bytes(64) == 98304 && kBufs * buf_bytes(128) == 131072 && kBufs * buf_bytes(256) == 196608,
              "src/ops/conv/wgmma.rs");
}  // namespace cw

template <int kOut>
__device__ __forceinline__ void igemm_wgmma(const __half* __restrict__ x, const __half* __restrict__ wt,
                                            const __half* __restrict__ bias, const __half* __restrict__ mask,
                                            __half* __restrict__ y, int n, int h, int w, int cin, int cout,
                                            int relu) {
    using namespace cw;
    static_assert(kOut == 64 || kOut == 128 || kOut == 256, "m64n{64,128,256}k16 a warpgroup");
    constexpr int kBufBytes = buf_bytes(kOut), kBPieces = kOut / 32;
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int oblocks = (cout + kOut - 1) / kOut;
    // Output-channel blocks vary fastest: the blocks reading the same pixels run together.
    const int p0 = (int)(blockIdx.x / oblocks) * kPix, o0 = (int)(blockIdx.x % oblocks) * kOut;
    const int npix = n * h * w, csteps = (cin + kC - 1) / kC, stages = 9 * csteps;

    // This thread's copy pieces, 4 of A and kOut / 32 of B, piece j at row 32 j + 8 (tid >> 6) +
    // (tid & 7), chunk (tid >> 3) & 7: what does not change from stage to stage is worked out
    // once (in the loop, address arithmetic would otherwise outnumber the copies many times over).
    const int chunk = (tid >> 3) & 7, row0 = 8 * (tid >> 6) + (tid & 7);
    const __half* xsrc[4];           // x at the piece's pixel (centre tap), channel 8 chunk
    const __half* wsrc[kBPieces];    // wt at row o0 + row, tap 0, channel 8 chunk
    unsigned long long taps_ok = 0;  // bit 9 j + tap: piece j's pixel shifted by tap is in the image
    unsigned w_ok = 0;               // bit j: B piece j's output channel is below cout
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int p = p0 + row0 + 32 * j;
        const int ox = p % w, oy = p / w % h, img = p / w / h;
        xsrc[j] = x + (p < npix ? ((img * h + oy) * w + ox) * cin + 8 * chunk : 0);
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
            const int iy = oy + tap / 3 - 1, ix = ox + tap % 3 - 1;
            taps_ok |= (p < npix && iy >= 0 && iy < h && ix >= 0 && ix < w ? 1ull : 0ull) << (9 * j + tap);
        }
    }
#pragma unroll
    for (int j = 0; j < kBPieces; ++j) {
        const int o = o0 + row0 + 32 * j;
        w_ok |= (o < cout ? 1u : 0u) << j;
        wsrc[j] = wt + (o < cout ? o * 9 * cin + 8 * chunk : 0);
    }
    unsigned char* const piece0 = smem + conv_wgmma_off(row0, chunk);  // + 4096 j (32 rows on)
    // Stage s = (tap, c0) is loaded in order s = 0, 1, ...: the tap, its column, the offset of
    // the tap's pixel (halves) and the channel offset are advanced instead of divided.
    int ld_tap = 0, ld_col = 0, ld_c0 = 0, ld_shift = -(w + 1) * cin, ld_wtap = 0;
    auto load = [&](int s) {
        if (s >= stages) return;
        const bool c_ok = ld_c0 + 8 * chunk < cin;
        unsigned char* const buf = piece0 + (s % kBufs) * kBufBytes;
        const int xo = ld_shift + ld_c0, wo = ld_wtap + ld_c0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool ok = c_ok && (taps_ok >> (9 * j + ld_tap) & 1ull);
            cp_async_16(buf + 4096 * j, ok ? xsrc[j] + xo : x, ok);
        }
#pragma unroll
        for (int j = 0; j < kBPieces; ++j) {
            const bool ok = c_ok && (w_ok >> j & 1u);
            cp_async_16(buf + kABytes + 4096 * j, ok ? wsrc[j] + wo : wt, ok);
        }
        ld_c0 += kC;
        if (ld_c0 >= cin) {
            ld_c0 = 0, ++ld_tap, ld_wtap += cin;
            const bool new_row = ++ld_col == 3;
            ld_col = new_row ? 0 : ld_col;
            ld_shift += new_row ? (w - 2) * cin : cin;
        }
    };
    // Descriptors of buffer 0 (this warpgroup's A rows, and B); a descriptor plus (bytes >> 4)
    // names the operand that many bytes further on (wgmma.cuh).
    const unsigned long long da0 = wgmma_desc(smem + wg * 8192, 128, 1024);
    const unsigned long long db0 = wgmma_desc(smem + kABytes, 128, 1024);

    float acc[kOut / 2];
    static_assert(kBufs == 4, "wgmma_ring's ring");
    wgmma_ring<kOut, false, false, kC / 16, kBufBytes>(acc, stages, da0, db0, load, [](int) {});

    // Epilogue: rows 64 wg + 16 (warp % 4) + g (+ 8), channels 8 j + 2 t (+ 1).
    const int t = lane & 3;  // the accumulators' column pair (wgmma.cuh)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int p = p0 + wgmma_acc_row(half);
        conv_wgmma_store_row<kOut>(acc, half, p, p < npix, o0, t, bias, mask, y, cout, relu);
    }
}

// 64 channels: 96 KB of shared memory and 32 accumulators, so two blocks share an SM.
extern "C" __global__ void __launch_bounds__(256, 2)
    igemm3x3_wgmma_n64_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                           const __half* __restrict__ bias, const __half* __restrict__ mask,
                           __half* __restrict__ y, int n, int h, int w, int cin, int cout, int relu) {
    igemm_wgmma<64>(x, wt, bias, mask, y, n, h, w, cin, cout, relu);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgmma_n128_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                            const __half* __restrict__ bias, const __half* __restrict__ mask,
                            __half* __restrict__ y, int n, int h, int w, int cin, int cout, int relu) {
    igemm_wgmma<128>(x, wt, bias, mask, y, n, h, w, cin, cout, relu);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgmma_n256_f16(const __half* __restrict__ x, const __half* __restrict__ wt,
                            const __half* __restrict__ bias, const __half* __restrict__ mask,
                            __half* __restrict__ y, int n, int h, int w, int cin, int cout, int relu) {
    igemm_wgmma<256>(x, wt, bias, mask, y, n, h, w, cin, cout, relu);
}

// wr[c][tap][k] = w[k][8 - tap][c]: the dgrad filters (rotated 180 degrees, K and C swapped),
// one thread an element of wr, 9 K C of them.
extern "C" __global__ void conv_rot180_f16(const __half* __restrict__ w, __half* __restrict__ wr, int k, int c) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 9LL * k * c) return;
    const int kk = (int)(i % k), tap = (int)(i / k % 9), cc = (int)(i / k / 9);
    wr[i] = w[((long long)kk * 9 + 8 - tap) * c + cc];
}
