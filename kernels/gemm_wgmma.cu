// gemm_wgmma.cu: gemm.cu's products (fully connected layers, 1x1 convolutions) on Hopper's
// warpgroup MMA (wgmma.cuh), same arguments, same split-K partials and reductions:
//   gemm_{fwd,bwd_data,bwd_weight}_f16_w128x256    C[R][S] = sum_t A(r, t) B(t, s)
// A stored [r][t] goes to shared memory K-major, stored [t][r] (bwd_weight's dY) M-major; B
// stored [s][t] K-major, [t][s] (bwd_data's W, bwd_weight's X) N-major: wgmma reads either, so
// every pass is a plain 16-byte copy of its operands (gemm.cu transposes with ldmatrix.trans).
//
// Tiling: 128 x 256 outputs a block, 256 threads = 2 warpgroups of 64 x 256 (m64n256k16, 128
// fp32 accumulators a thread), k-tiles of 64 through a 4-buffer cp.async ring with prefetch
// distance 2, one barrier and one wgmma group a k-tile (as conv_wgmma.cu). Shared layout of an
// operand tile (rows = r or s, 64 t): core matrices of 8 x 8 at ((row / 8) * 8 + t / 8) * 128
// bytes, inside it (row % 8) * 16 + (t % 8) * 2 (K-major) or (t % 8) * 16 + (row % 8) * 2
// (M/N-major); lbo 128 (next 8 t), sbo 1024 (next 8 rows) either way, so the descriptors do
// not depend on the layout. Copies: the 8 lanes of a store phase write 8 consecutive 16-byte
// units (8 rows of one t-chunk, or 8 t of one row-chunk).
// Epilogue as gemm.cu's: the output tile staged in shared memory (fp32 partials, or fp16 after
// bias and ReLU), then copied out by gemm_store_tile (gemm_store.cuh).
// Run 5 measured 81.5-188 TFLOP/s on fc6 / fc7 (slower than the mma.sync tiles); src/ops/gemm.rs
// runs it only when asked (Tile::W128x256), never by plan.
//
//   gemm_{fwd,bwd_data,bwd_weight}_f16_wt128x256   the same products, operands brought by TMA
// The same 128 x 256 tile and wgmma's, but thread 0 loads each k-tile through tensor maps
// (kernels/bulk.cuh) in the 128-byte swizzle: a K-major operand as one box (X's 128 x 64, W's
// 256 x 64), an M/N-major one as boxes of 64 rows x 64 t (2 for A, 4 for B: a swizzled row is
// 128 bytes, 64 elements); three k-tiles ahead into a ring of 4, an mbarrier a buffer counting
// their bytes; zeros past the matrix edges come from the copy engine, so any M, N and K (a
// multiple of 8) pass. Every thread waits for its k-tile on the barrier; one __syncthreads a
// k-tile (each warpgroup has retired its previous group by then) frees the buffer thread 0
// refills. Why: every cp.async kernel of ours ran with ~50% excess global sectors at the L2's
// limit (runs 5-6), and cuBLAS's Hopper kernels load through TMA (bench/NOTES.md, "The copy
// probe"). The M/N-major swizzled layout is read from the PTX ISA and CUTLASS (kernels/wgmma.cuh);
// the selftest's `mn-major sw128` rows check it on the GPU.
#include "bulk.cuh"
#include "gemm_store.cuh"
#include "wgmma.cuh"

namespace gw {
constexpr int kBM = 128, kBN = 256, kBK = 64, kBufs = 4, kThreads = 256, kPad = 8;
constexpr int kABytes = kBM * kBK * 2, kBufBytes = kABytes + kBN * kBK * 2;  // 16384, 49152
static_assert(kBufs * kBufBytes == 196608, "src/ops/gemm/launch.rs's shared bytes for Tile::W128x256");
static_assert(kBM * (kBN + kPad) * 4 <= kBufs * kBufBytes, "the fp32 output tile fits the ring");

// Copies one operand tile (ROWS rows of the product x kBK t) for k-tile t0: `g` stored
// [row][t] (T_MAJOR false, pitch ld) or [t][row] (true). Piece q = tid + 256 j; zero-filled
// outside nrows x nt.
template <int ROWS, bool T_MAJOR>
__device__ __forceinline__ void load(unsigned char* s, const __half* __restrict__ g, long long ld, int row0,
                                     int t0, int nrows, int nt, int tid) {
#pragma unroll
    for (int j = 0; j < ROWS / 32; ++j) {
        const int q = tid + kThreads * j;
        // K-major: row 8 (q >> 6) + (q & 7), t-chunk (q >> 3) & 7. M/N-major: t (q & 7) +
        // 8 ((q >> 5) & 7), row-chunk ((q >> 3) & 3) + 4 (q >> 8). Either way a warp reads 8
        // rows (or t's) x 4 adjacent chunks, 64 contiguous bytes each (whole 32-byte sectors),
        // and the 8 lanes of a store phase fill one core matrix.
        const int row = T_MAJOR ? 8 * (((q >> 3) & 3) + 4 * (q >> 8)) : 8 * (q >> 6) + (q & 7);
        const int t = T_MAJOR ? (q & 7) + 8 * ((q >> 5) & 7) : 8 * ((q >> 3) & 7);
        const int off = T_MAJOR ? ((row >> 3) * 8 + (t >> 3)) * 128 + (t & 7) * 16
                                : ((row >> 3) * 8 + (t >> 3)) * 128 + (row & 7) * 16;
        const int gr = row0 + row, gt = t0 + t;
        const bool ok = gr < nrows && gt < nt;
        const __half* src = !ok ? g : T_MAJOR ? g + (long long)gt * ld + gr : g + (long long)gr * ld + gt;
        cp_async_16(s + off, src, ok);
    }
}

// The output tile from the accumulators `acc`, staged in `smem` (free: every group retired,
// every thread past the barrier before this), to out16 (bias, ReLU, fp16) or out32 (this split's
// fp32 partials); uses the caller's tid, warp, lane, wg, R, S, r0, s0, bias, relu, out16, out32.
// A macro, not a function: ptxas serialized the wgmma's of the bwd_data and bwd_weight kernels
// (C7515) when this was an inlined function, and does not when the same code is textually inline.
#define GW_EPILOGUE(acc, smem)                                                                                       \
    do {                                                                                                             \
    /* d[4 j + 2 h + e] -> tile row 64 wg + 16 (warp % 4) + g + 8 h, col 8 j + 2 t + e */                         \
    const int g = lane >> 2, t4 = lane & 3, row_w = 64 * wg + 16 * (warp & 3) + g;                                   \
    constexpr int kPitch = kBN + kPad;                                                                               \
    if (out32) {                                                                                                     \
        float* const st = reinterpret_cast<float*>(smem);                                                            \
        _Pragma("unroll")                                                                                            \
        for (int j = 0; j < kBN / 8; ++j)                                                                            \
            _Pragma("unroll")                                                                                        \
            for (int h = 0; h < 2; ++h)                                                                              \
                *reinterpret_cast<float2*>(st + (row_w + 8 * h) * kPitch + 8 * j + 2 * t4) =                         \
                    make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);                                         \
    } else {                                                                                                         \
        __half* const st = reinterpret_cast<__half*>(smem);                                                          \
        _Pragma("unroll")                                                                                            \
        for (int j = 0; j < kBN / 8; ++j) {                                                                          \
            const int col = 8 * j + 2 * t4, gc = s0 + col;                                                           \
            const float b0 = bias && gc < S ? __half2float(bias[gc]) : 0.f;                                          \
            const float b1 = bias && gc < S ? __half2float(bias[gc + 1]) : 0.f;                                      \
            _Pragma("unroll")                                                                                        \
            for (int h = 0; h < 2; ++h) {                                                                            \
                float v0 = acc[4 * j + 2 * h] + b0, v1 = acc[4 * j + 2 * h + 1] + b1;                                \
                if (relu) v0 = vgg_relu(v0), v1 = vgg_relu(v1);                                                      \
                *reinterpret_cast<__half2*>(st + (row_w + 8 * h) * kPitch + col) = __floats2half2_rn(v0, v1);        \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    __syncthreads();                                                                                                 \
    if (out32)                                                                                                       \
        gemm_store_tile<kBM, kBN, kPad, kThreads>(out32 + (long long)blockIdx.z * R * S,                             \
                                                  reinterpret_cast<const float*>(smem), R, S, r0, s0, tid);          \
    else                                                                                                             \
        gemm_store_tile<kBM, kBN, kPad, kThreads>(out16, reinterpret_cast<const __half*>(smem), R, S, r0, s0, tid);  \
    } while (0)

template <bool A_T, bool B_T>
__device__ __forceinline__ void gemm_wgmma(const __half* __restrict__ A, const __half* __restrict__ B, int R,
                                           int S, int T, int kt_per_split, const __half* __restrict__ bias,
                                           int relu, __half* __restrict__ out16, float* __restrict__ out32) {
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int r0 = blockIdx.x * kBM, s0 = blockIdx.y * kBN;
    const int kt_total = (T + kBK - 1) / kBK, kt_begin = blockIdx.z * kt_per_split;
    const int kt_count = max(0, min(kt_total, kt_begin + kt_per_split) - kt_begin);
    auto load_stage = [&](int i) {
        if (i >= kt_count) return;
        unsigned char* const buf = smem + (i % kBufs) * kBufBytes;
        const int t0 = (kt_begin + i) * kBK;
        load<kBM, A_T>(buf, A, A_T ? R : T, r0, t0, R, T, tid);
        load<kBN, B_T>(buf + kABytes, B, B_T ? S : T, s0, t0, S, T, tid);
    };
    const unsigned long long da0 = wgmma_desc(smem + wg * 8192, 128, 1024);
    const unsigned long long db0 = wgmma_desc(smem + kABytes, 128, 1024);
    float acc[kBN / 2];
    static_assert(kBufs == 4, "wgmma_ring's ring");
    wgmma_ring<kBN, A_T, B_T, kBK / 16, kBufBytes>(acc, kt_count, da0, db0, load_stage, [](int) {});
    __syncthreads();  // every warp is past its reads of the ring, which now stages the output
    GW_EPILOGUE(acc, smem);
}

// The product through the TMA engine (the header's gemm_*_f16_wt128x256): A_T / B_T as
// gemm_wgmma's. A K-major operand comes as one box (64 t x all its rows: 128-byte swizzled rows
// of one r or s, kernels/wgmma.cuh's K-major layout); an M/N-major one as boxes of 64 rows x
// 64 t, 8192 bytes each (a swizzled 128-byte row is 64 consecutive r or s of one t), one box
// per 64 rows: wgmma.cuh's M/N-major swizzled layout with its K groups 1024 bytes apart (sbo)
// and its 64-wide atoms one box (8192 bytes) apart (lbo). Either way A's rows 64 wg on start
// 8192 wg bytes in.
template <bool A_T, bool B_T>
__device__ __forceinline__ void gemm_tma(const TmaDesc* ma, const TmaDesc* mb, int R, int S, int T, int kt_per_split,
                                         const __half* __restrict__ bias, int relu, __half* __restrict__ out16,
                                         float* __restrict__ out32) {
    VGG_DYN_SHARED(unsigned char, raw);
    unsigned char* const smem = align_shared(raw, 1024);  // the swizzle's 1024-byte pattern
    __shared__ unsigned long long full[kBufs];
    const int tid = threadIdx.x, wg = tid >> 7;
    const int r0 = blockIdx.x * kBM, s0 = blockIdx.y * kBN;
    const int kt_total = (T + kBK - 1) / kBK, kt_begin = blockIdx.z * kt_per_split;
    const int kt_count = max(0, min(kt_total, kt_begin + kt_per_split) - kt_begin);
    if (tid == 0) {
        for (int b = 0; b < kBufs; ++b) mbarrier_init(&full[b], 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    constexpr int kBox = 64 * kBK * 2;  // an M/N-major box: 64 rows x 64 t
    auto load = [&](int i) {            // thread 0: k-tile i into buffer i % kBufs
        if (i >= kt_count) return;
        unsigned char* const buf = smem + (i % kBufs) * kBufBytes;
        unsigned long long* const bar = &full[i % kBufs];
        const int k0 = (kt_begin + i) * kBK;
        // Every box counts in full, its zero fill past the matrix edges included.
        mbarrier_arrive_expect_tx(bar, kBufBytes);
        if (A_T)
            for (int j = 0; j < kBM / 64; ++j) tma_load_2d(buf + j * kBox, ma, r0 + 64 * j, k0, bar);
        else
            tma_load_2d(buf, ma, k0, r0, bar);
        if (B_T)
            for (int j = 0; j < kBN / 64; ++j) tma_load_2d(buf + kABytes + j * kBox, mb, s0 + 64 * j, k0, bar);
        else
            tma_load_2d(buf + kABytes, mb, k0, s0, bar);
    };
    if (tid == 0)
        for (int i = 0; i < kBufs - 1; ++i) load(i);
    float acc[kBN / 2];
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.f;
    // K-major: swizzled rows of 128 bytes, 8-row groups 1024 apart, a k16 step 32 bytes along a
    // row (2 descriptor units). M/N-major: a k16 step is two K groups, 2048 bytes (128 units).
    const unsigned long long da0 = A_T ? wgmma_desc_mn_sw128(smem + wg * kBox, kBox, 1024)
                                       : wgmma_desc_sw128(smem + wg * 64 * 128, 1024);
    const unsigned long long db0 =
        B_T ? wgmma_desc_mn_sw128(smem + kABytes, kBox, 1024) : wgmma_desc_sw128(smem + kABytes, 1024);
    constexpr unsigned kAStep = A_T ? 128 : 2, kBStep = B_T ? 128 : 2;
    for (int i = 0; i < kt_count; ++i) {
        mbarrier_wait_parity(&full[i % kBufs], (i / kBufs) & 1);
        const unsigned stage = (i % kBufs) * (kBufBytes >> 4);
        // Group i - 1 retires in here (wgmma_stage leaves only group i pending).
        wgmma_stage<kBN, A_T, B_T, kBK / 16>(acc, da0 + stage, db0 + stage, kAStep, kBStep);
        __syncthreads();  // both warpgroups are past group i - 1: its buffer takes k-tile i + 3
        if (tid == 0) load(i + kBufs - 1);
    }
    wgmma_wait<0>();
    wgmma_fence_acc(acc);
    __syncthreads();  // every group retired in both warpgroups: the ring stages the output
    const int warp = tid >> 5, lane = tid & 31;
    GW_EPILOGUE(acc, smem);
}
}  // namespace gw

#define GW_PARAMS                                                                                 \
    const __half *__restrict__ A, const __half *__restrict__ B, int R, int S, int T, int kt_per_split, \
        const __half *__restrict__ bias, int relu, __half *__restrict__ out16, float *__restrict__ out32
#define GW_ARGS A, B, R, S, T, kt_per_split, bias, relu, out16, out32

extern "C" __global__ void __launch_bounds__(256, 1) gemm_fwd_f16_w128x256(GW_PARAMS) {
    gw::gemm_wgmma<false, false>(GW_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_data_f16_w128x256(GW_PARAMS) {
    gw::gemm_wgmma<false, true>(GW_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_weight_f16_w128x256(GW_PARAMS) {
    gw::gemm_wgmma<true, true>(GW_ARGS);
}
// ma / mb: tensor maps of A and B in the 128-byte swizzle (TensorMap::new_2d, src/ops/gemm/launch.rs):
// K-major ones (fwd's X [R][T] and W [S][T], bwd_data's dY [R][T]) in boxes of 64 t x 128 or 256
// rows, M/N-major ones (bwd_data's W [T][S], bwd_weight's dY [T][R] and X [T][S]) in boxes of 64
// rows x 64 t.
#define GWT_PARAMS                                                                                             \
    const __grid_constant__ TmaDesc ma, const __grid_constant__ TmaDesc mb, int R, int S, int T, int kt_per_split, \
        const __half *__restrict__ bias, int relu, __half *__restrict__ out16, float *__restrict__ out32
#define GWT_ARGS &ma, &mb, R, S, T, kt_per_split, bias, relu, out16, out32

extern "C" __global__ void __launch_bounds__(256, 1) gemm_fwd_f16_wt128x256(GWT_PARAMS) {
    gw::gemm_tma<false, false>(GWT_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_data_f16_wt128x256(GWT_PARAMS) {
    gw::gemm_tma<false, true>(GWT_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 1) gemm_bwd_weight_f16_wt128x256(GWT_PARAMS) {
    gw::gemm_tma<true, true>(GWT_ARGS);
}
