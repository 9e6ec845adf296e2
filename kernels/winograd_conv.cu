// winograd_conv.cu: the 3x3 convolution (stride 1, pad 1) by Winograd F(2x2, 3x3) on tensor
// cores, input and output transforms fused into the GEMM main loop.
//   wino2x2_fprop_f16   y  = act(conv(x, w) + b), act = ReLU or none, bias optional
//   wino2x2_dgrad_f16   dx = conv(dy, rot180(w)^T), zeroed where the optional ReLU mask <= 0
// Both read U, the transformed filters of winograd_filter.cu (fp16, in mma fragment order);
// dgrad is the same computation as fprop with the rotated, K<->C swapped filters that the dgrad
// variant of the filter transform writes, so one main loop serves both and only the epilogue
// differs.
//
// The math, per 2x2 output tile (4x4 input patch d, rows/cols -1..2 around the tile):
//   V = B^T d B  (adds only),  M[xi] = sum_c V[xi][c] U[xi][out][c]  (16 GEMMs),  Y = A^T M A.
//
// Tiling: a block owns 64 output tiles (GEMM M; flat or region, below) x 32
// output channels (GEMM N); 256 threads = 8 warps, and warp w owns transform points 2w and 2w+1
// over the whole 64 x 32 block tile (2 x 4 x 4 mma fragments = 128 fp32 accumulators a lane).
// Splitting the warps by transform point rather than by tile makes each warp's GEMM 64 x 32:
// per point and 16 channels, 4 ldmatrix.x4 of V and U's fragments feed 16 mma's (the first
// version, 16 x 16 per warp over all 16 points, needed 2 ldmatrix per 2 mma and was
// shared-memory bound). The price is the epilogue: a tile's 16 points live in 8 warps, so M goes through
// shared memory (fp32, 160 KB, reusing the pipeline buffers) before A^T M A.
// The reduction over input channels goes 16 at a time (one mma k-step), in a pipeline with one
// barrier per step. In step i: the copy of patches i+3 is issued (cp.async 16 B, zero-fill for
// padding, ragged tiles and a C that is 8 mod 16), each lane loads its B fragments of U_i from
// global memory into registers (U is stored in that order, padded with zeros to 32 outputs x 16
// inputs: no trip through shared memory, no ldmatrix), patches i+1 are transformed in
// place (flat) or from the raw window (region) into V (one thread a tile and channel pair,
// half2 adds: |V| <= 4 max|d|), and the mma's of step i run on V_i and U_i. Different warps
// reach the transform and the mma's at different times, so the adders and the tensor cores
// overlap.
// Two ways to group a block's 64 tiles (src/ops/conv.rs picks one per shape, WinoTiling):
//   flat    64 consecutive tiles over (n, tile row, tile col); each tile's 4x4 patch is copied
//           on its own, straight into the layout of V, and transformed in place. Neighbouring
//           patches overlap, so each input pixel is copied from L2 about 4 times.
//   region  an rh x rw window of one image (rh * rw = 64, rw = 1..64); its (2 rh + 2) x (2 rw + 2)
//           input pixels are copied once into a raw buffer (48 bytes a pixel, below),
//           and the transform reads each tile's patch from there into V: about 3x less input
//           traffic than flat (at rw = 8, 324 pixels instead of 1024), but a window crossing the
//           image's edge leaves slots idle.
// Buffers: flat: 4 of patches / V (mma, transform, landed, in flight) x 32 KB; region: 4 raw
// windows x 24 KB and 2 of V x 32 KB; 160 KB for the epilogue's M. One block per SM (the 128
// accumulators allow no second one anyway).
// Shared rows are 16 halves (two 16-byte chunks), swizzled (wino_swz in winograd_common.cuh).
// Known costs to attack next (bench/NOTES.md, "Static instruction counts"): a step moves ~1000
// wavefronts through shared memory, half of them the transform's read and write back of V, and
// issues ~340 (flat) to ~375 (region) instructions a warp (scripts/sass-stats); every block
// re-reads its 32 channels' U from L2 (16 KB a step).
#include "winograd_common.cuh"

namespace w2 {
constexpr int kTiles = 64;                  // output tiles per block (GEMM M)
constexpr int kOut = 32;                    // output channels per block (GEMM N)
static_assert(kOut == 32, "the warp steps of winograd_common.cuh cover 32 output channels");
constexpr int kC = 16;                      // input channels per step (GEMM K)
constexpr int kXBufs = 4;                   // pipeline buffers of patches / V (see above)
constexpr int kXStage = 16 * kTiles * kC;   // halves: flat patches, then V in place; region V
constexpr int kRegionPx = 4 * 130;          // largest region: 1 x 64 tiles, 4 x 130 pixels
constexpr int kRPitch = 24;                 // halves a raw pixel takes: 16 channels + 8 of padding
constexpr int kRStage = kRegionPx * kRPitch;  // halves: one region of raw pixels
constexpr int kRPieces = 5;                 // most 16-byte region copies a thread makes a step
constexpr int kMRow = kOut + 8;             // epilogue fp32 row: float2 stores conflict-free
// Dynamic shared memory (src/ops/conv.rs): the larger of the epilogue's 16 * 64 * kMRow
// floats (163840 bytes) and the region pipeline ((4 * kRStage + 2 * kXStage) * 2 = 165376);
// flat's pipeline needs 4 * kXStage * 2 = 131072.
constexpr int kMBytes = 16 * kTiles * kMRow * 4;
constexpr int kRegionBytes = (4 * kRStage + 2 * kXStage) * 2;
constexpr int kSmem = kMBytes > kRegionBytes ? kMBytes : kRegionBytes;
static_assert(kSmem == 165376, "src/ops/conv.rs's WINO_SMEM");
static_assert(kXBufs * kXStage * 2 <= kSmem, "pipeline fits");
static_assert(2 * ((kRegionPx + 7) / 8 * 8) <= 256 * kRPieces, "region copies fit kRPieces a thread");
}  // namespace w2

// V = B^T d B for a pair of channels, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], in half2
// arithmetic: each pass adds two values, so V is d rounded to fp16 twice (after B^T d and after
// the right factor) instead of once from fp32, which the simulation in
// scripts/winograd_fp16_error.py puts at 6.1e-4 relative L2 instead of 5.3e-4 (bound 3e-3),
// for 32 half2 adds a pair instead of 64 fp32 adds and 48 conversions. Small integers stay
// exact (|V| <= 4 max|d|).
__device__ __forceinline__ void wino2x2_input_transform(__half2 d[4][4]) {
    __half2 m[4][4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        m[0][b] = __hsub2(d[0][b], d[2][b]);
        m[1][b] = __hadd2(d[1][b], d[2][b]);
        m[2][b] = __hsub2(d[2][b], d[1][b]);
        m[3][b] = __hsub2(d[1][b], d[3][b]);
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        d[a][0] = __hsub2(m[a][0], m[a][2]);
        d[a][1] = __hadd2(m[a][1], m[a][2]);
        d[a][2] = __hsub2(m[a][2], m[a][1]);
        d[a][3] = __hsub2(m[a][1], m[a][3]);
    }
}

// Region ring layout: raw window pixel p at halves kRPitch p, its 16 channels then 8 halves of
// padding (48 bytes a pixel). A warp's transform reads one channel pair of one pixel of each of
// 4 neighbouring tiles, 2 pixels apart along a window row (p, p + 2, p + 4, p + 6; or two rows
// of two when the window is 2 tiles wide): at 48 bytes a pixel they start 24 banks apart, so
// the 4 x 8 words fill all 32 banks (at 32 bytes a pixel p and p + 4 collided). Every address
// is then a row base plus constants: no per-read swizzle arithmetic. Width 1 (stacked tiles)
// stays 4-way conflicted. The copies write 16-byte chunks: 8 lanes (one shared-memory phase)
// take the same chunk of 8 consecutive pixels, 16-byte units 3 p + chunk, distinct mod 8.
// scripts/region-banks enumerates both for every width. The price: 24 KB a raw stage instead of
// 16, so region's shared memory (165376 bytes) outgrows the epilogue's 163840.

// Tile lt (0..63) of a block -> its image and tile row / column; false if outside the image.
// Flat: tiles numbered over (n, tile row, tile col). Region: an rh x rw window of one image.
template <bool kRegion>
struct WinoTiles {
    int tiles, th, tw, rw, rh, rows, cols;  // region grid: rows x cols windows an image
    int tile0, img, ty0, tx0;               // this block: first flat tile, or window origin
    __device__ __forceinline__ WinoTiles(int n, int h, int w, int rw_, int tblock) {
        th = (h + 1) >> 1;
        tw = (w + 1) >> 1;
        tiles = n * th * tw;
        rw = rw_;
        rh = kRegion ? w2::kTiles / rw : 0;
        rows = kRegion ? (th + rh - 1) / rh : 0;
        cols = kRegion ? (tw + rw - 1) / rw : 0;
        tile0 = tblock * w2::kTiles;
        img = kRegion ? tblock / (rows * cols) : 0;
        ty0 = kRegion ? tblock / cols % rows * rh : 0;
        tx0 = kRegion ? tblock % cols * rw : 0;
    }
    __device__ __forceinline__ bool locate(int lt, int& timg, int& ty, int& tx) const {
        if (kRegion) {
            timg = img;
            ty = ty0 + lt / rw;
            tx = tx0 + lt % rw;
            return ty < th && tx < tw;
        }
        const int tile = tile0 + lt;
        timg = tile / (th * tw);
        ty = tile / tw % th;
        tx = tile % tw;
        return tile < tiles;
    }
};

template <bool kRegion>
__device__ __forceinline__ void wino2x2_main(const __half* __restrict__ x, const __half* __restrict__ u,
                                             const __half* __restrict__ bias, const __half* __restrict__ mask,
                                             __half* __restrict__ y, int n, int h, int w, int cin, int cout,
                                             int relu, int rw) {
    using namespace w2;
    VGG_DYN_SHARED(__half, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // Channel blocks vary fastest: the blocks sharing a set of tiles run together and find its
    // patches in L2.
    const int kblocks = (cout + kOut - 1) / kOut;
    const WinoTiles<kRegion> tl(n, h, w, rw, (int)(blockIdx.x / kblocks));
    const int k0 = (int)(blockIdx.x % kblocks) * kOut;
    const int steps = (cin + kC - 1) / kC;
    // Shared memory: flat: X ring (patches, V in place). Region: raw ring, V pair.
    __half* const sraw = smem;
    __half* const svbase = kRegion ? smem + 4 * kRStage : smem;
    auto vbuf = [&](int s) { return svbase + (kRegion ? s & 1 : s % kXBufs) * kXStage; };

    // Copy roles (flat). Patches: tile lt, chunk ch (channels 8 ch..), columns pb and pb + 2, all
    // 4 rows. What does not change from step to step (which pixels lie in the image, the source
    // address) is worked out once: in the loop, address arithmetic outnumbered the mma's 10 to 1.
    const int lt = (tid >> 1) & 63, ch = tid & 1, pb = tid >> 7;
    int img, ty, tx;
    const bool tile_ok = tl.locate(lt, img, ty, tx);
    const int iy0 = 2 * ty - 1, ix0 = 2 * tx - 1;
    unsigned px_ok = 0;  // bit 4 a + b: patch row a, column pb + 2 b lies in the image
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            const int iy = iy0 + a, ix = ix0 + pb + 2 * b;
            px_ok |= (tile_ok && iy >= 0 && iy < h && ix >= 0 && ix < w ? 1u : 0u) << (4 * a + b);
        }
    // Pixel (1, 1) of the patch, (2 ty, 2 tx), always lies in the image; the others sit whole
    // rows (w cin, < 2^31 / 6, checked by the launcher) and columns (cin) away.
    const int xrow = w * cin;
    const __half* const x11 = tile_ok && !kRegion ? x + (((long long)img * h + iy0 + 1) * w + ix0 + 1) * cin + 8 * ch : x;
    // Region: (2 rh + 2) x (2 rw + 2) input pixels from (2 ty0 - 1, 2 tx0 - 1), at kRPitch
    // halves a pixel. This thread's pieces r = 0..kRPieces-1: chunk rch of window pixel
    // rpx0 + 128 r (8 lanes, 8 pixels, one chunk: the ring layout above), to shared offset
    // rdst + 128 r kRPitch.
    // Their source offsets from the image's channel 8 rch (< h w cin < 2^31: the launcher picks
    // flat tiling otherwise) and whether they lie in the image or the window are the same every
    // step: worked out once.
    const int rcols = 2 * rw + 2, rpx = kRegion ? (2 * tl.rh + 2) * rcols : 0;
    const int rch = (tid >> 3) & 1, rpx0 = (tid >> 4) * 8 + (tid & 7), rdst = rpx0 * kRPitch + 8 * rch;
    int roff[kRPieces];
    unsigned rok = 0, rhas = 0;  // bit r: piece r lies in the image / in the window
#pragma unroll
    for (int r = 0; r < kRPieces; ++r) {
        const int pp = rpx0 + 128 * r, row = kRegion ? pp / rcols : 0;
        const int iy = 2 * tl.ty0 - 1 + row, ix = 2 * tl.tx0 - 1 + pp - row * rcols;
        const bool ok = iy >= 0 && iy < h && ix >= 0 && ix < w;
        roff[r] = ok ? (iy * w + ix) * cin : 0;
        rok |= (kRegion && pp < rpx && ok ? 1u : 0u) << r;
        rhas |= (kRegion && pp < rpx ? 1u : 0u) << r;
    }
    const __half* const rbase = x + ((long long)tl.img * h * w) * cin + 8 * rch;
    // U: this lane's mma B fragments of its warp's points 2 warp, 2 warp + 1 (winograd_filter.cu
    // writes them in fragment order: [xi][out / 32][in / 16][lane][8 u32]), 2 x 16 bytes a point
    // and step, loaded straight into registers: no copy through shared memory, no ldmatrix.
    const uint4* const ulane = reinterpret_cast<const uint4*>(u) +
                               ((long long)(2 * warp * kblocks + (int)(blockIdx.x % kblocks)) * steps) * 64 + lane * 2;
    const long long upoint = (long long)kblocks * steps * 64;  // uint4s from point xi to xi + 1
    auto load = [&](int s) {
        const bool c_ok = s * kC + 8 * ch < cin;
        if (s < steps && !kRegion) {
            __half* const sx = vbuf(s) + wino_swz(pb * kTiles + lt, ch);
            const __half* const xs = x11 + s * kC;
            const unsigned ok_px = c_ok ? px_ok : 0u;
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    const bool ok = ok_px >> (4 * a + b) & 1u;
                    const __half* src = ok ? xs + (a - 1) * xrow + (pb + 2 * b - 1) * cin : x;
                    // (a * 4 + 2 b) * kTiles rows on from the thread's first: the same swizzle.
                    cp_async_16(sx + (a * 4 + 2 * b) * kTiles * 16, src, ok);
                }
        }
        if (s < steps && kRegion) {
            __half* const sr = sraw + (s & 3) * kRStage + rdst;
            const __half* const xs = rbase + s * kC;
            const unsigned ok_px = s * kC + 8 * rch < cin ? rok : 0u;
#pragma unroll
            for (int r = 0; r < kRPieces; ++r) {
                if (!(rhas >> r & 1u)) continue;
                const bool ok = ok_px >> r & 1u;
                cp_async_16(sr + r * 128 * kRPitch, ok ? xs + roff[r] : x, ok);
            }
        }
    };
    // V = B^T d B of step s: thread -> tiles (tid >> 3) and 32 + (tid >> 3), channels 2 (tid & 7),
    // +1. Flat: in place. Region: from the raw ring (48-byte pixels, whose reads by a warp's 4
    // tiles are conflict-free) into the V pair. Pixel px of a tile's V lies px * kTiles rows
    // after its first (a multiple of 8 rows: the same swizzle).
    int rw_log = 0;
    while (kRegion && (1 << rw_log) < rw) ++rw_log;  // rw is a power of two
    auto transform = [&](int s) {
        if (s >= steps) return;
        __half* sv = vbuf(s);
        const __half* sr = sraw + (s & 3) * kRStage;
        const int pair = tid & 7;
#pragma unroll 1
        for (int q = 0; q < 2; ++q) {
            const int tile = q * 32 + (tid >> 3);
            __half* const v0 = sv + wino_swz(tile, pair >> 2) + 2 * (pair & 3);
            __half2 d[4][4];
            if (kRegion) {
                // The patch's first pixel: window row 2 (tile / rw), column 2 (tile % rw); the
                // others one row (rcols pixels) or one pixel on, at kRPitch halves a pixel.
                const __half* const rb =
                    sr + 2 * pair + (2 * (tile >> rw_log) * rcols + 2 * (tile & (rw - 1))) * kRPitch;
#pragma unroll
                for (int a = 0; a < 4; ++a)
#pragma unroll
                    for (int b = 0; b < 4; ++b)
                        d[a][b] = *reinterpret_cast<const __half2*>(rb + (a * rcols + b) * kRPitch);
            } else {
#pragma unroll
                for (int px = 0; px < 16; ++px)
                    d[px >> 2][px & 3] = *reinterpret_cast<const __half2*>(v0 + px * kTiles * 16);
            }
            wino2x2_input_transform(d);
#pragma unroll
            for (int px = 0; px < 16; ++px)
                *reinterpret_cast<__half2*>(v0 + px * kTiles * 16) = d[px >> 2][px & 3];
        }
    };

    WinoAcc<2, 4> acc;  // points 2 warp + q, 4 16-tile blocks
    wino_zero_acc(acc);

    // Prologue: patches 0, 1 and 2, one group each; transform 0 once its group has landed.
    load(0);
    cp_async_commit();
    load(1);
    cp_async_commit();
    load(2);
    cp_async_commit();
    cp_async_wait<2>();
    __syncthreads();
    transform(0);

    for (int it = 0; it < steps; ++it) {
        // Patches it + 1 were the second newest group; the newest may fly on.
        cp_async_wait<1>();
        // Makes them (and V_it) visible, and ends every read of the buffers refilled next.
        __syncthreads();
        load(it + 3);
        cp_async_commit();
        // U of step it, issued before the transform so that its latency hides behind it.
        unsigned b[2][2][4];
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint4 v = ulane[q * upoint + it * 64 + h];
                b[q][h][0] = v.x, b[q][h][1] = v.y, b[q][h][2] = v.z, b[q][h][3] = v.w;
            }
        transform(it + 1);

        // M[xi] (64 tiles x 32 out) += V[xi] (64 x 16 c) U[xi]^T for this warp's two points.
        const __half* const v = wino_warp_v<kTiles, 2>(vbuf(it), warp, lane);
#pragma unroll
        for (int q = 0; q < 2; ++q) wino_point_mma_b<4>(acc[q], v + q * kTiles * 16, b[q]);
    }
    const float* ms = wino_m_to_shared(acc, smem, kTiles, kMRow, warp, lane);

    // Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1], + bias, ReLU or mask, fp16 pairs: thread -> tile
    // idx >> 4, channels 2 (idx & 15), +1, for idx = tid + 256 r.
#pragma unroll 1
    for (int r = 0; r < 4; ++r) {
        const int idx = tid + 256 * r, lt2 = idx >> 4, kk = k0 + 2 * (idx & 15);
        int timg, oty, otx;
        if (!tl.locate(lt2, timg, oty, otx) || kk >= cout) continue;  // cout is even: kk + 1 < cout too
        float2 m[16];
#pragma unroll
        for (int xi = 0; xi < 16; ++xi)
            m[xi] = *reinterpret_cast<const float2*>(ms + (xi * kTiles + lt2) * kMRow + 2 * (idx & 15));
        const int oy0 = 2 * oty, ox0 = 2 * otx;
        const float b0 = bias ? __half2float(bias[kk]) : 0.f, b1 = bias ? __half2float(bias[kk + 1]) : 0.f;
        float out[2][2][2];  // [channel kk + e][row][col]
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float s[2][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float m0 = e ? m[j].y : m[j].x, m1 = e ? m[4 + j].y : m[4 + j].x;
                const float m2 = e ? m[8 + j].y : m[8 + j].x, m3 = e ? m[12 + j].y : m[12 + j].x;
                s[0][j] = m0 + m1 + m2;
                s[1][j] = m1 - m2 - m3;
            }
            const float b = e ? b1 : b0;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                out[e][i][0] = s[i][0] + s[i][1] + s[i][2] + b;
                out[e][i][1] = s[i][1] - s[i][2] - s[i][3] + b;
            }
        }
        // The tile's first output; the others lie whole rows (w cout) and pixels (cout) on.
        const long long o00 = (((long long)timg * h + oy0) * w + ox0) * cout + kk;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int oy = oy0 + i, ox = ox0 + j;
                if (oy >= h || ox >= w) continue;
                const long long o = o00 + (i * w + j) * cout;  // int: Conv3x3::new checks 6 W max(C, K)
                wino_store_pair(y, mask, o, out[0][i][j], out[1][i][j], relu);
            }
    }
}

// rw: 0 for flat tiles, else the region width in tiles (a power of two dividing 64).
extern "C" __global__ void __launch_bounds__(256, 1)
    wino2x2_fprop_f16(const __half* __restrict__ x, const __half* __restrict__ u, const __half* __restrict__ bias,
                      __half* __restrict__ y, int n, int h, int w, int c, int k, int relu, int rw) {
    if (rw)
        wino2x2_main<true>(x, u, bias, nullptr, y, n, h, w, c, k, relu, rw);
    else
        wino2x2_main<false>(x, u, bias, nullptr, y, n, h, w, c, k, relu, 0);
}

// dy has K channels, dx has C: the reduction runs over K, the outputs are C channels.
extern "C" __global__ void __launch_bounds__(256, 1)
    wino2x2_dgrad_f16(const __half* __restrict__ dy, const __half* __restrict__ u, const __half* __restrict__ mask,
                      __half* __restrict__ dx, int n, int h, int w, int c, int k, int rw) {
    if (rw)
        wino2x2_main<true>(dy, u, nullptr, mask, dx, n, h, w, k, c, 0, rw);
    else
        wino2x2_main<false>(dy, u, nullptr, mask, dx, n, h, w, k, c, 0, 0);
}
