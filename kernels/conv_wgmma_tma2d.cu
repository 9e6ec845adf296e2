// conv_wgmma_tma2d.cu: the TMA halo tile (conv_wgmma_tma.cu) with items that are rectangles of
// the image instead of runs of the padded row space, sm_90 only:
//   igemm3x3_wgmma_halo2d_tma_n64_f16   y[p][o] = epilogue(sum_{tap, c} x[p + tap][c] wt[o][tap][c])
// Same passes, epilogues and arguments as conv_wgmma_tma.cu (fprop: bias + ReLU; dgrad: wt
// rotated by conv_rot180_f16, mask), x and wt as tensor maps (src/ops/conv/wgmma.rs).
//
// Why: a run of 256 positions of the padded row space needs the rows above and below it, so the
// 1-D items' halo holds 256 + 2 sp + 16 positions: 2.9x the outputs at conv1_2 (w 224), where
// the 256 x 64 item also reads its 72 KiB of filters for only 256 positions (run 5: conv1_2
// 0.33x cuDNN, our worst 3x3 layer). An item of 16 image rows x 32 columns (512 positions x 64
// output channels: each warpgroup two m64 blocks of 8 x 8 pixels) holds a halo of 18 x 40
// positions, 1.4x its outputs, and reads the filters once for 512 positions: at conv1_2, 162 KiB
// of L2 a 64-channel step for 37.7 MFLOP against the 1-D N 64 item's 328 KiB for the same work.
// Its price is columns and rows past the image's edge, computed and dropped: none at 224 x 224
// (7 x 14 items), 12.5% at 112 (3.5 items a row), more on the small layers (the tuner decides).
//
// The halo of an item at image (img, rows r0.., columns c0..) and 64 channels from c0ch is one
// box of the tensor map (64 channels x 40 pixels x 18 rows x 1 image) from (c0ch, c0 - 1, r0 - 1,
// img): position (i, j) of the box (row r0 - 1 + i, column c0 - 1 + j) lands at (40 i + j) 128
// bytes into the buffer; the copy engine writes zeros outside the tensor (the padding and the
// edges past the image). The buffer starts on a 1024-byte boundary and its rows are 5 x 1024 bytes,
// so the swizzle's pattern is the address's (kernels/wgmma.cuh's rule) everywhere.
// An m64 block is 8 rows x 8 columns: its A rows are 8 groups (image rows) of 8 consecutive
// positions, 128 bytes apart within a group and 40 x 128 bytes from group to group, which is
// the K-major descriptor's stride byte offset. Tap (dy, dx) shifts the block's start by
// (40 dy + dx) positions, as the 1-D tile's taps shift its start. Warpgroup wg owns columns
// 8 wg.. of the item, block b its rows 8 b..
// B (a stage's 64 output channels x 64 input channels of one tap) and the pipeline are
// conv_wgmma_tma.cu's with a block barrier a stage: a ring of 4 B buffers three stages ahead, 2
// halo buffers, an mbarrier a buffer; after each stage's barrier thread 0 issues the next B box
// and, at a halo step's first tap, the next step's halo box. Not its warp-specialised form: a
// 17th warp caps a thread at 96 registers (5 warps on an SM sub-partition), and the two m64
// blocks' 64 accumulators then spill.
// Shared memory: 1024 bytes of alignment slack, 4 B buffers of 8 KiB, 2 halo buffers of 90 KiB.
#include "bulk.cuh"
#include "conv_wgmma.cuh"

namespace c2d {
constexpr int kC = 64, kOut = 64, kRows = 16, kCols = 32, kBlocks = 2, kBBufs = 4;
// The halo box: the item's rows and columns and one more on each side, columns rounded up to 8
// (a row of the buffer a whole number of swizzle patterns).
constexpr int kHaloRows = kRows + 2, kPitch = kCols + 8;
constexpr int kThreads = 512;
constexpr int kBBytes = kOut * kC * 2, kHaloBytes = kHaloRows * kPitch * kC * 2;
constexpr int kSmemBytes = 1024 + kBBufs * kBBytes + 2 * kHaloBytes;
static_assert(kHaloBytes % 1024 == 0 && kPitch % 8 == 0, "halo buffers and rows on pattern boundaries");
static_assert(kSmemBytes == 218112, "src/ops/conv/wgmma.rs's TMA2D_SHARED");
static_assert(4 * kBlocks * 64 == kRows * kCols && kCols == 4 * 8 && kRows == kBlocks * 8,
              "4 warpgroups of kBlocks 8 x 8 blocks cover the item");
}  // namespace c2d

__device__ __forceinline__ void igemm_halo2d_tma(const TmaDesc* xm, const TmaDesc* wm, const __half* __restrict__ bias,
                                                 const __half* __restrict__ mask, __half* __restrict__ y, int n, int h,
                                                 int w, int cin, int cout, int relu) {
    using namespace c2d;
    VGG_DYN_SHARED(unsigned char, raw);
    unsigned char* const smem = align_shared(raw, 1024);  // the swizzle's 1024-byte pattern
    unsigned char* const halo = smem + kBBufs * kBBytes;
    __shared__ unsigned long long bfull[kBBufs], hfull[2];
    const int tid = threadIdx.x, wg = tid >> 7;
    const int oblocks = (cout + kOut - 1) / kOut, rblocks = (h + kRows - 1) / kRows;
    const int cblocks = (w + kCols - 1) / kCols;
    // Items: output-channel block fastest (blocks running side by side share their halo in L2),
    // then column block, row block, image.
    const int items = n * rblocks * cblocks * oblocks;
    const int csteps = (cin + kC - 1) / kC;
    const int mine = (int)blockIdx.x < items ? (items - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int hsteps = mine * csteps, stages = 9 * hsteps;
    if (tid == 0) {
        for (int b = 0; b < kBBufs; ++b) mbarrier_init(&bfull[b], 1);
        for (int b = 0; b < 2; ++b) mbarrier_init(&hfull[b], 1);
        fence_mbarrier_init();
    }
    __syncthreads();

    // Item `it`'s first output row and column, image and output-channel block.
    struct Item {
        int r0, c0, img, o0;
    };
    auto item_at = [&](int it) {
        const int ob = it % oblocks, s = it / oblocks, cb = s % cblocks, t = s / cblocks;
        return Item{t % rblocks * kRows, cb * kCols, t / rblocks, ob * kOut};
    };
    auto item_of = [&](int k) { return (int)blockIdx.x + k / csteps * (int)gridDim.x; };  // halo step k's item
    auto load_halo = [&](int k) {  // one thread: halo step k's box
        const Item it = item_at(item_of(k));
        mbarrier_arrive_expect_tx(&hfull[k & 1], kHaloBytes);
        tma_load_4d(halo + (k & 1) * kHaloBytes, xm, k % csteps * kC, it.c0 - 1, it.r0 - 1, it.img, &hfull[k & 1]);
    };
    auto load_b = [&](int s) {  // one thread: stage s (tap s % 9 of halo step s / 9) into buffer s % 4
        if (s >= stages) return;
        const int k = s / 9;
        mbarrier_arrive_expect_tx(&bfull[s % kBBufs], kBBytes);
        tma_load_3d(smem + (s % kBBufs) * kBBytes, wm, k % csteps * kC, s % 9, item_at(item_of(k)).o0,
                    &bfull[s % kBBufs]);
    };
    if (tid == 0 && stages > 0) {
        load_halo(0);
        for (int s = 0; s < kBBufs - 1; ++s) load_b(s);
    }

    // Descriptors of halo buffer 0's position (0, 8 wg) (this warpgroup's first block; block b
    // is 8 rows on) and of B buffer 0.
    constexpr unsigned kRowUnits = kPitch * 128 / 16;  // a halo row in 16-byte descriptor units
    const unsigned long long da0 = wgmma_desc_sw128(halo + 8 * wg * 128, kPitch * 128);
    const unsigned long long db0 = wgmma_desc_sw128(smem, 1024);
    const int t = tid & 3;  // the accumulators' column pair (wgmma.cuh)
    float acc[kBlocks][kOut / 2];
#pragma unroll
    for (int b = 0; b < kBlocks; ++b)
#pragma unroll
        for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
    int tap = 0, k = 0, cstep = 0, item = blockIdx.x;
    for (int s = 0; s < stages; ++s) {
        if (tap == 0) mbarrier_wait_parity(&hfull[k & 1], (k >> 1) & 1);
        mbarrier_wait_parity(&bfull[s % kBBufs], (s / kBBufs) & 1);
        const unsigned shift = (tap / 3) * kRowUnits + (tap % 3) * 8;  // tap (dy, dx): dy rows, dx positions on
        const unsigned long long da = da0 + (((k & 1) * kHaloBytes) >> 4) + shift;
        const unsigned long long db = db0 + (s % kBBufs) * (kBBytes >> 4);
        wgmma_stage_blocks<kOut, false, false, kC / 16, kBlocks>(acc, da, db, 2, 2, 8 * kRowUnits);
        __syncthreads();  // every warpgroup is past group s - 1: its B buffer and halo step k - 1's are free
        if (tid == 0) {
            load_b(s + kBBufs - 1);
            if (tap == 0 && k + 1 < hsteps) load_halo(k + 1);
        }
        if (++tap < 9) continue;
        tap = 0, ++k;
        if (++cstep < csteps) continue;
        cstep = 0;
        // The item's last stage: block b's accumulator row i (0..63 in the warpgroup) is pixel
        // (r0 + 8 b + i / 8, c0 + 8 wg + i % 8); those inside the image out, then zeros.
        wgmma_wait<0>();
        const Item it = item_at(item);
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
            wgmma_fence_acc(acc[b]);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int i = wgmma_acc_row(half) & 63;
                const int yy = it.r0 + 8 * b + i / 8, xx = it.c0 + 8 * wg + i % 8;
                conv_wgmma_store_row<kOut>(acc[b], half, (it.img * h + yy) * w + xx, yy < h && xx < w, it.o0, t,
                                           bias, mask, y, cout, relu);
            }
#pragma unroll
            for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
        }
        item += gridDim.x;
    }
    // As conv_wgmma_tma.cu: without this wait ptxas serializes every wgmma (note C7518).
    wgmma_wait<0>();
}

// xm: x (cin, w, h, n) in boxes of 64 x 40 x 18 x 1; wm: wt (cin, 9, cout) in boxes of 64 x 1 x
// 64; both swizzled (src/ops/conv/wgmma.rs).
extern "C" __global__ void __launch_bounds__(c2d::kThreads, 1)
    igemm3x3_wgmma_halo2d_tma_n64_f16(const __grid_constant__ TmaDesc xm, const __grid_constant__ TmaDesc wm,
                                      const __half* __restrict__ bias, const __half* __restrict__ mask,
                                      __half* __restrict__ y, int n, int h, int w, int cin, int cout, int relu) {
    igemm_halo2d_tma(&xm, &wm, bias, mask, y, n, h, w, cin, cout, relu);
}
