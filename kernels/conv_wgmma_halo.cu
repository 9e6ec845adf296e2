// conv_wgmma_halo.cu: the 3x3 convolution (stride 1, pad 1) as an implicit GEMM on wgmma whose
// input is copied to shared memory once for all 9 taps (conv_wgmma.cu copies it once a tap):
//   igemm3x3_wgmma_halo_n{64,128}_f16   y[p][o] = epilogue(sum_{tap, c} x[p + tap][c] wt[o][tap][c])
//   igemm3x3_wgmma_halo512_n64_f16       the same with items of 512 positions x 64 channels
//   igemm3x3_wgmma_halo_sw_n{64,128}_f16 256 x N with both operands in the 128-byte swizzle
// Same arguments, passes and epilogues as conv_wgmma.cu (fprop: bias + ReLU; dgrad: wt rotated
// by conv_rot180_f16, mask), fp16 in, fp32 accumulation, exact products.
//
// Why: conv_wgmma.cu's 128-pixel tile moves 11.7-23 KB from L2 a MFLOP (its input once per
// tap), which bounds it near cuDNN's time or above (bench/NOTES.md). Here a tap is only a shift
// of the wgmma's A descriptor, and 256 positions x N channels move 5.5-6 (N 128) to 8.9 (N 64,
// 224 wide) KB a useful MFLOP.
//
// The padded position space: each image row gets a zero column on both sides (pitch wp = w + 2)
// and each image a zero row above it (h + 1 rows an image), plus one zero row after the last:
// position P = R wp + xp, row R = img (h + 1) + 1 + y for pixel (img, y, xp - 1). The tap
// (dy, dx) of any position is then the position dy wp + dx on, a zero wherever the 3x3 window
// leaves the image, so A for one tap is 64 consecutive positions, one descriptor. Outputs run
// over positions wp .. n (h + 1) wp - 1; those in a zero row or column (2 / wp + 1 / (h + 1) of
// them) are computed and dropped.
//
// Work item: 256 consecutive positions x N output channels (4 warpgroups of m64nNk16 over 64
// positions each, N / 2 fp32 accumulators a thread); or 512 x 64 (halo512: each warpgroup two
// m64n64k16 blocks of 64 positions, the same 64 accumulators a thread as 256 x 128), which reads
// half the filter bytes a flop and more halo bytes: filters are 3/4 of the 256 x 128 tile's L2
// traffic on VGG's layers (bench/NOTES.md), so ~20% fewer bytes where the halo fits. Blocks
// are persistent (one an SM, the launcher's grid), taking items blockIdx.x, + gridDim.x, ...
// (output-channel blocks vary fastest, so the blocks running together read the same positions).
// Halo steps: per item and 64 input channels, the item's positions and one padded row and one
// position on each side (halo_pos(w, positions an item), rounded to 8) x 64 channels, K-major
// core matrices: position q, chunk k8 (channels 8 k8..) at k8 * lbo + q * 16, lbo = 16 halo_pos,
// sbo 128. A tap's A for warpgroup g's m64 block b (of kMWg, 1 or 2) starts at position
// 64 (kMWg g + b) + (dy + 1) wp + dx + 1. Two halo buffers: halo
// step k + 1 is copied during step k (its copies are issued with stage 9 k + 3, when stage
// 9 k - 1, the last reader of that buffer, has retired everywhere: wgmma_ring_loop's rule).
// Stages: one tap of one halo step (9 a halo step, taps in order), B = N output channels x 64
// input channels of that tap through a 4-buffer ring exactly as conv_wgmma.cu's (prefetch
// distance 2, one barrier and one wgmma group a stage, lbo 128, sbo 1024). After an item's
// last stage: wait for its group, the epilogue from the accumulators (as conv_wgmma.cu's), zero
// them; the next item's copies are already under way.
// The ring, its barrier and wait rules are wgmma_ring_loop's (wgmma.cuh). Shared memory: 4 B
// buffers then 2 halo buffers (the launcher: src/ops/conv/wgmma.rs).
// Swizzled (kSw): the same bytes in wgmma.cuh's 128-byte swizzle instead of unswizzled core
// matrices: a position (or B row) is 128 contiguous bytes, its 16-byte chunks permuted by the
// address, so a tap shift is 128 bytes and a k16 step 32; the copies are the same, only their
// shared destinations move. Why: the swizzle is the layout CUTLASS's Hopper kernels give wgmma,
// meant to read operands without bank conflicts (bench/NOTES.md: "Two more leads").
#include "conv_wgmma.cuh"

namespace ch {
constexpr int kC = 64;         // input channels a halo step
constexpr int kThreads = 512;  // 4 warpgroups
constexpr int kBBufs = 4;
constexpr int kMaxJ = 12;  // halo pieces a thread: halo_pos(w, pos) <= 64 kMaxJ (the launcher checks)
// Positions of a halo step for width w and items of `pos` positions (a multiple of 8).
__host__ __device__ constexpr int halo_pos(int w, int pos) { return (pos + 2 * (w + 2) + 2 + 7) / 8 * 8; }
// Dynamic shared memory: 4 B buffers of out x 64 channels, 2 halo buffers.
__host__ __device__ constexpr int smem_bytes(int out, int w, int pos) {
    return kBBufs * out * kC * 2 + 2 * halo_pos(w, pos) * kC * 2;
}
// VGG's widest layer (224, N 64) fits the 227 KB an sm_90 block may have; halo512 VGG's 112 (the
// launcher allows it up to 125 wide, where a thread's 12 halo pieces end).
static_assert(smem_bytes(64, 224, 256) == 215040 && halo_pos(224, 256) <= 64 * kMaxJ, "src/ops/conv/wgmma.rs");
static_assert(smem_bytes(64, 112, 512) == 223232 && halo_pos(112, 512) <= 64 * kMaxJ, "src/ops/conv/wgmma.rs");
}  // namespace ch

// kMWg: m64 blocks a warpgroup (1: items of 256 positions, 2: of 512); kSw: the 128-byte swizzle.
template <int kOut, int kMWg, bool kSw = false>
__device__ __forceinline__ void igemm_halo(const __half* __restrict__ x, const __half* __restrict__ wt,
                                           const __half* __restrict__ bias, const __half* __restrict__ mask,
                                           __half* __restrict__ y, int n, int h, int w, int cin, int cout, int relu) {
    using namespace ch;
    static_assert(kOut * kMWg == 64 || kOut * kMWg == 128, "4 warpgroups' accumulators fit 128 registers a thread");
    constexpr int kPos = 256 * kMWg;  // positions an item (GEMM M)
    constexpr int kBBytes = kOut * kC * 2, kBPieces = kOut / 64;
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int wp = w + 2, rows = h + 1, npos = halo_pos(w, kPos), hbytes = npos * kC * 2;
    const int oblocks = (cout + kOut - 1) / kOut;
    const int items = ((n * rows - 1) * wp + kPos - 1) / kPos * oblocks;
    const int csteps = (cin + kC - 1) / kC;
    const int mine = (int)blockIdx.x < items ? (items - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int hsteps = mine * csteps, stages = 9 * hsteps;
    unsigned char* const halo = smem + kBBufs * kBBytes;

    // Copies: this thread's pieces sit at position q0 + 64 j (halo) or row row0 + 64 j (B),
    // chunk `chunk`, so the 8 lanes of a 16-byte store phase write 8 consecutive positions or
    // rows of one chunk (128 contiguous bytes unswizzled; one chunk of 8 rows swizzled), and a
    // warp reads 64 contiguous bytes a pixel.
    const int chunk = (tid >> 3) & 7, q0 = 8 * (tid >> 6) + (tid & 7);
    auto load_halo = [&](int k) {  // halo step k: item blockIdx.x + (k / csteps) gridDim.x
        const int item = (int)blockIdx.x + k / csteps * (int)gridDim.x, c = k % csteps * kC + 8 * chunk;
        const int first = wp + item / oblocks * kPos - wp - 1;  // the halo's position 0
        unsigned char* const buf = halo + (k & 1) * hbytes;
#pragma unroll
        for (int j = 0; j < kMaxJ; ++j) {
            const int q = q0 + 64 * j;
            if (q >= npos) break;
            int pix;
            const bool ok = c < cin && conv_halo_pixel(first + q, wp, h, w, n, pix);
            unsigned char* const dst = kSw ? wgmma_sw128(buf + q * 128 + chunk * 16) : buf + chunk * npos * 16 + q * 16;
            cp_async_16(dst, ok ? x + pix * cin + c : x, ok);
        }
    };
    // The B stage to load next: its tap, halo step, channel offset, item and output channel 0.
    int ld_tap = 0, ld_k = 0, ld_c0 = 0, ld_item = blockIdx.x, ld_o0 = (int)blockIdx.x % oblocks * kOut;
    const int row0 = q0;
    auto load = [&](int s) {
        if (s >= stages) return;
        if (s == 0) load_halo(0);
        if (ld_tap == 3 && ld_k + 1 < hsteps) load_halo(ld_k + 1);
        unsigned char* const buf = smem + (s % kBBufs) * kBBytes;
        const int c = ld_c0 + 8 * chunk;
#pragma unroll
        for (int j = 0; j < kBPieces; ++j) {
            const int row = row0 + 64 * j, o = ld_o0 + row;
            const bool ok = c < cin && o < cout;
            unsigned char* const dst =
                kSw ? wgmma_sw128(buf + row * 128 + chunk * 16) : buf + conv_wgmma_off(row, chunk);
            cp_async_16(dst, ok ? wt + (o * 9 + ld_tap) * cin + c : wt, ok);
        }
        if (++ld_tap == 9) {
            ld_tap = 0, ++ld_k, ld_c0 += kC;
            if (ld_c0 >= cin) ld_c0 = 0, ld_item += gridDim.x, ld_o0 = ld_item % oblocks * kOut;
        }
    };

    // Descriptors: this warpgroup's A (its first m64 block; block b is 64 positions on) in halo
    // buffer 0 at tap (-1, -1), B buffer 0. In 16-byte units: a position is kPosU on, a k16
    // step kAStep (A) or kBStep (B).
    constexpr int kPosU = kSw ? 8 : 1, kBStep = kSw ? 2 : 16;
    const int kAStep = kSw ? 2 : 2 * npos;
    const unsigned long long da0 = kSw ? wgmma_desc_sw128(halo + wg * kMWg * 64 * 128, 1024)
                                       : wgmma_desc(halo + wg * kMWg * 64 * 16, npos * 16, 128);
    const unsigned long long db0 = kSw ? wgmma_desc_sw128(smem, 1024) : wgmma_desc(smem, 128, 1024);
    const int t = lane & 3;  // the accumulators' column pair (wgmma.cuh)

    float acc[kMWg][kOut / 2];
#pragma unroll
    for (int b = 0; b < kMWg; ++b)
#pragma unroll
        for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
    int tap = 0, k = 0, cstep = 0, item = blockIdx.x;  // the stage wgmma_ring_loop runs
    wgmma_ring_loop(stages, load, [&](int s) {
        const unsigned long long da = da0 + (k & 1) * (hbytes >> 4) + (tap / 3 * wp + tap % 3) * kPosU;
        const unsigned long long db = db0 + (s % kBBufs) * (kBBytes >> 4);
        wgmma_stage_blocks<kOut, false, false, kC / 16, kMWg>(acc, da, db, kAStep, kBStep, 64 * kPosU);
        if (++tap < 9) return;
        tap = 0, ++k;
        if (++cstep < csteps) return;
        cstep = 0;
        // The item's last stage: its accumulators out (block b's rows 64 (kMWg wg + b) + 16 (warp
        // % 4) + g (+ 8)), then zeros for the next item.
        wgmma_wait<0>();
        const int o0 = item % oblocks * kOut, pos0 = wp + item / oblocks * kPos;
#pragma unroll
        for (int b = 0; b < kMWg; ++b) {
            wgmma_fence_acc(acc[b]);
            // Row r of warpgroup wg's 64 (wgmma_acc_row's, less the warpgroup) in its block b.
            const int row0 = (wg * kMWg + b) * 64 + wgmma_acc_row(0) - 64 * wg;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                int pix;
                const bool ok = conv_halo_pixel(pos0 + row0 + 8 * half, wp, h, w, n, pix);
                conv_wgmma_store_row<kOut>(acc[b], half, pix, ok, o0, t, bias, mask, y, cout, relu);
            }
#pragma unroll
            for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
        }
        item += gridDim.x;
    });
}

// Every tile's kernel takes the same parameters (the emulator's build finds each kernel by its
// declaration, so the declarations stay spelled out and only the lists are shared).
#define HALO_PARAMS                                                                                         \
    const __half *__restrict__ x, const __half *__restrict__ wt, const __half *__restrict__ bias,          \
        const __half *__restrict__ mask, __half *__restrict__ y, int n, int h, int w, int cin, int cout, int relu
#define HALO_ARGS x, wt, bias, mask, y, n, h, w, cin, cout, relu

extern "C" __global__ void __launch_bounds__(ch::kThreads, 1)
    igemm3x3_wgmma_halo_n64_f16(HALO_PARAMS) {
    igemm_halo<64, 1>(HALO_ARGS);
}

extern "C" __global__ void __launch_bounds__(ch::kThreads, 1)
    igemm3x3_wgmma_halo_n128_f16(HALO_PARAMS) {
    igemm_halo<128, 1>(HALO_ARGS);
}

extern "C" __global__ void __launch_bounds__(ch::kThreads, 1)
    igemm3x3_wgmma_halo512_n64_f16(HALO_PARAMS) {
    igemm_halo<64, 2>(HALO_ARGS);
}

extern "C" __global__ void __launch_bounds__(ch::kThreads, 1)
    igemm3x3_wgmma_halo_sw_n64_f16(HALO_PARAMS) {
    igemm_halo<64, 1, true>(HALO_ARGS);
}

extern "C" __global__ void __launch_bounds__(ch::kThreads, 1)
    igemm3x3_wgmma_halo_sw_n128_f16(HALO_PARAMS) {
    igemm_halo<128, 1, true>(HALO_ARGS);
}
