// conv_wgrad.cu: backward-filter of the 3x3 convolution on tensor cores, and the fixed-order
// reduction shared with the direct twin.
//   igemm3x3_wgrad_f16   implicit GEMM  dW[k][(r,s,c)] = sum_p dY[p][k] * X[p + (r-1, s-1)][c]
//                        (M = K, N = 9C, reduction over the N*H*W pixels), fp16 inputs, fp32
//                        mma accumulators; each pixel chunk (blockIdx.z) writes its partial sums
//                        (and, for one block column, the db partials) to the workspace
//   wgrad_reduce_f32     dw[i] = sum over chunks in order of part[z][i]; db likewise; also
//                        drops the zero channels of a channel-padded problem (C padded to Cp)
// Determinism: no atomics. The chunking depends only on the shape (src/ops/conv.rs), each
// partial is a fixed sequence of mma's, and the reduction adds chunks in index order, so two
// runs (and two emulator schedules) give bit-identical dw and db.
//
// Tiling: the GEMM's N dimension is the flattened (r, s, c) of the KRSC filter row, 9C long.
// A block owns 64 output channels k x 64 consecutive columns of it (grid.x = ceil(9C / 64),
// grid.y = K/64) and one pixel chunk (grid.z). Since C is a multiple of 8, every 8-column piece
// lies within one tap: for C a multiple of 64 a block holds 64 channels of one tap; for small C
// (8, the padded first layer) a block holds several taps (8 of them), so no mma works on
// columns past C as it would with one tap a block (8x the work at C = 8).
// Per stage it copies 32 pixels of dY (32 x 64 k, the rows are 128 contiguous bytes) and,
// per 8-column piece, the same 32 pixels of X shifted by that piece's tap (zero-filled in the
// padding and past the chunk) with 16-byte cp.async into a double buffer, so the next stage's
// copy overlaps this stage's mma's. Both tiles are stored pixel-major (k or column
// contiguous), which is the transposed layout the mma wants for A (rows k) and the natural one
// for B (k = pixel rows): ldmatrix.trans turns both into fragments.
// Rows are padded to 72 halves (144 B = 36 words), so the 8 row addresses of an ldmatrix fall
// on 8 distinct 4-bank groups. 4 warps as 2 x 2, each 32 k x 32 columns: 2 x 4 mma per 16
// pixels, 32 fp32 accumulators a lane. Smem 2 x 2 x 32 x 72 x 2 B = 18 KB (static), so several
// blocks share an SM and hide each other's copy latency.
// The dY tile is re-read by every column block (from L2); a block holding all 9C columns
// would read it once but needs more accumulators: a later step.
#include "common.cuh"
#include "ptx.cuh"

namespace wg {
constexpr int kM = 64;         // output channels per block (GEMM M)
constexpr int kN = 64;         // flattened (r, s, c) columns per block (GEMM N)
constexpr int kP = 32;         // pixels per stage (GEMM K: two mma k-steps)
constexpr int kThreads = 128;  // 4 warps, 2 x 2, warp tile 32 x 32
constexpr int kRow = 72;       // padded smem row, halves
}  // namespace wg

// part layout: [chunk][K*9*C + K], the first K*9*C in KRSC order, then db. C is a multiple of 8
// (src/ops/conv.rs pads it for this path).
extern "C" __global__ void __launch_bounds__(128)
    igemm3x3_wgrad_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                       int n, int h, int w, int c, int k, int chunk) {
    using namespace wg;
    __shared__ __align__(128) __half sA[2][kP][kRow];  // dY  [pixel][k]
    __shared__ __align__(128) __half sB[2][kP][kRow];  // X   [pixel][column], each piece shifted by its tap
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
    const int ncol = 9 * c, n0 = blockIdx.x * kN, k0 = blockIdx.y * kM;
    const int npix = n * h * w;
    const int p_begin = blockIdx.z * chunk, p_end = min(npix, p_begin + chunk);
    const int stages = (p_end - p_begin + kP - 1) / kP;
    const bool bias_block = blockIdx.x == 0 && tid < kM;

    // Copies: 32 rows x 8 16-byte pieces per tile = 2 per thread per tile. A thread's piece is
    // the same column range in every stage: its tap (r, s) and channel offset are fixed.
    const int col8 = (tid & 7) * 8;
    const int col = n0 + col8, tap = col / c, r = tap / 3, s = tap % 3, cc8 = col - tap * c;
    const bool col_ok = col < ncol;
    auto load = [&](int stage, int buf) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int row = (tid >> 3) + 16 * j, p = p_begin + stage * kP + row;
            const bool pv = p < p_end;
            const bool kv = pv && k0 + col8 < k;
            cp_async_16(&sA[buf][row][col8], kv ? dy + (long long)p * k + k0 + col8 : dy, kv);
            const int ow = p % w, oh = p / w % h, img = p / w / h;
            const int ih = oh + r - 1, iw = ow + s - 1;
            const bool xv = pv && col_ok && ih >= 0 && ih < h && iw >= 0 && iw < w;
            const __half* src = xv ? x + (((long long)img * h + ih) * w + iw) * c + cc8 : x;
            cp_async_16(&sB[buf][row][col8], src, xv);
        }
    };

    float acc[2][4][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mb][nb][i] = 0.f;
    float dbacc = 0.f;

    // Main loop: copy stage i+1 while the tensor cores work on stage i.
    if (stages > 0) load(0, 0);
    cp_async_commit();
    for (int it = 0; it < stages; ++it) {
        const int buf = it & 1;
        if (it + 1 < stages) load(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (bias_block)
            for (int row = 0; row < kP; ++row) dbacc += __half2float(sA[buf][row][tid]);
#pragma unroll
        for (int ks = 0; ks < kP / 16; ++ks) {
            unsigned a[2][4], b[2][4];
#pragma unroll
            for (int mb = 0; mb < 2; ++mb)
                ldmatrix_x4_trans(a[mb], &sA[buf][ks * 16 + (lane & 7) + 8 * (lane >> 4)]
                                            [wm * 32 + mb * 16 + 8 * ((lane >> 3) & 1)]);
#pragma unroll
            for (int np = 0; np < 2; ++np)
                ldmatrix_x4_trans(b[np], &sB[buf][ks * 16 + (lane & 15)][wn * 32 + np * 16 + 8 * (lane >> 4)]);
#pragma unroll
            for (int mb = 0; mb < 2; ++mb)
#pragma unroll
                for (int nb = 0; nb < 4; ++nb)
                    mma_m16n8k16_f16f32(acc[mb][nb], a[mb], &b[nb >> 1][2 * (nb & 1)], acc[mb][nb]);
        }
        __syncthreads();  // the next iteration's copy overwrites this buffer
    }

    // Epilogue: this chunk's partial sums, fp32 pairs along the columns (KRSC order).
    const long long nw = (long long)k * ncol;
    float* out = part + (long long)blockIdx.z * (nw + k);
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int kk = k0 + wm * 32 + mb * 16 + g + 8 * hh;
                const int cn = n0 + wn * 32 + nb * 8 + 2 * t;
                if (kk < k && cn < ncol)
                    *reinterpret_cast<float2*>(out + (long long)kk * ncol + cn) =
                        make_float2(acc[mb][nb][2 * hh], acc[mb][nb][2 * hh + 1]);
            }
    if (bias_block && k0 + tid < k) out[nw + k0 + tid] = dbacc;
}

// One thread per output: i < nw -> dw[i], nw <= i < nw + k -> db[i - nw] (skipped if null).
// The partials may hold a channel-padded filter (cp >= c channels, src/ops/conv.rs pads C up to
// a multiple of 8 for the tensor-core path): row stride K*9*cp + K, weight i = (k, r, s, ci) read
// at (k, r, s) * cp + ci, so the reduction also compacts [K,3,3,cp] to [K,3,3,c]. cp = c: none.
extern "C" __global__ void wgrad_reduce_f32(const float* __restrict__ part, float* __restrict__ dw,
                                            float* __restrict__ db, long long nw, int k, int c, int cp,
                                            int chunks) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nw + k) return;
    const long long nwp = nw / c * cp;
    const long long src = i < nw ? (cp == c ? i : i / c * cp + i % c) : nwp + (i - nw);
    float sum = 0.f;
    for (int z = 0; z < chunks; ++z) sum += part[(long long)z * (nwp + k) + src];
    if (i < nw)
        dw[i] = sum;
    else if (db)
        db[i - nw] = sum;
}
