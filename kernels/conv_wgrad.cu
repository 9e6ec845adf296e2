// conv_wgrad.cu: backward-filter of the 3x3 convolution on tensor cores, and the fixed-order
// reduction shared with the direct twin.
//   igemm3x3_wgrad_f16   implicit GEMM  dW[k][(r,s,c)] = sum_p dY[p][k] * X[p + (r-1, s-1)][c]
//                        (M = K, N = 9C, reduction over the N*H*W pixels), fp16 inputs, fp32
//                        mma accumulators; each pixel chunk (blockIdx.z) writes its partial sums
//                        (and, for one block column, the db partials) to the workspace
//   wgrad_reduce_f32     dw[i] = sum over chunks in order of part[z][i]; db likewise
// Determinism: no atomics. The chunking depends only on the shape (src/ops/conv.rs), each
// partial is a fixed sequence of mma's, and the reduction adds chunks in index order, so two
// runs (and two emulator schedules) give bit-identical dw and db.
//
// Tiling: a block owns 64 output channels k x 64 input channels c of one tap (r, s) (grid.x =
// 9 taps x C/64 blocks, grid.y = K/64) and one pixel chunk (grid.z). Per stage it copies 32
// pixels of dY (32 x 64 k, the rows are 128 contiguous bytes) and the same 32 pixels of X
// shifted by the tap (zero-filled in the padding and past the chunk) with 16-byte cp.async
// into a double buffer, so the next stage's copy overlaps this stage's mma's. Both tiles are
// stored pixel-major (k or c contiguous), which is the transposed layout the mma wants for A
// (rows k) and the natural one for B (k = pixel rows): ldmatrix.trans turns both into fragments.
// Rows are padded to 72 halves (144 B = 36 words), so the 8 row addresses of an ldmatrix fall
// on 8 distinct 4-bank groups. 4 warps as 2 x 2, each 32 k x 32 c: 2 x 4 mma per 16 pixels,
// 32 fp32 accumulators a lane. Smem 2 x 2 x 32 x 72 x 2 B = 18 KB (static), so several
// blocks share an SM and hide each other's copy latency.
// The dY tile is re-read by the 9 taps' blocks (from L2); a block holding all nine taps would
// read it once but needs 9x the accumulators: a later step.
#include "common.cuh"
#include "ptx.cuh"

namespace wg {
constexpr int kM = 64;         // output channels per block (GEMM M)
constexpr int kN = 64;         // input channels per block, one tap (GEMM N)
constexpr int kP = 32;         // pixels per stage (GEMM K: two mma k-steps)
constexpr int kThreads = 128;  // 4 warps, 2 x 2, warp tile 32 x 32
constexpr int kRow = 72;       // padded smem row, halves
}  // namespace wg

// part layout: [chunk][K*9*C + K], the first K*9*C in KRSC order, then db.
extern "C" __global__ void __launch_bounds__(128)
    igemm3x3_wgrad_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                       int n, int h, int w, int c, int k, int chunk) {
    using namespace wg;
    __shared__ __align__(128) __half sA[2][kP][kRow];  // dY  [pixel][k]
    __shared__ __align__(128) __half sB[2][kP][kRow];  // X   [pixel][c], shifted by the tap
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
    const int rs = blockIdx.x % 9, r = rs / 3, s = rs % 3;
    const int c0 = (blockIdx.x / 9) * kN, k0 = blockIdx.y * kM;
    const int npix = n * h * w;
    const int p_begin = blockIdx.z * chunk, p_end = min(npix, p_begin + chunk);
    const int stages = (p_end - p_begin + kP - 1) / kP;
    const bool bias_block = rs == 0 && c0 == 0 && tid < kM;

    // Copies: 32 rows x 8 16-byte pieces per tile = 2 per thread per tile.
    const int col8 = (tid & 7) * 8;
    auto load = [&](int stage, int buf) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int row = (tid >> 3) + 16 * j, p = p_begin + stage * kP + row;
            const bool pv = p < p_end;
            const bool kv = pv && k0 + col8 < k;
            cp_async_16(&sA[buf][row][col8], kv ? dy + (long long)p * k + k0 + col8 : dy, kv);
            const int ow = p % w, oh = p / w % h, img = p / w / h;
            const int ih = oh + r - 1, iw = ow + s - 1;
            const bool xv = pv && ih >= 0 && ih < h && iw >= 0 && iw < w && c0 + col8 < c;
            const __half* src = xv ? x + (((long long)img * h + ih) * w + iw) * c + c0 + col8 : x;
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

    // Epilogue: this chunk's partial sums, fp32 pairs along c.
    const long long nw = (long long)k * 9 * c;
    float* out = part + (long long)blockIdx.z * (nw + k);
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int kk = k0 + wm * 32 + mb * 16 + g + 8 * hh;
                const int cc = c0 + wn * 32 + nb * 8 + 2 * t;
                if (kk < k && cc < c)
                    *reinterpret_cast<float2*>(out + ((long long)kk * 9 + rs) * c + cc) =
                        make_float2(acc[mb][nb][2 * hh], acc[mb][nb][2 * hh + 1]);
            }
    if (bias_block && k0 + tid < k) out[nw + k0 + tid] = dbacc;
}

// One thread per output: i < nw -> dw[i], nw <= i < nw + k -> db[i - nw] (skipped if null).
extern "C" __global__ void wgrad_reduce_f32(const float* __restrict__ part, float* __restrict__ dw,
                                            float* __restrict__ db, long long nw, int k, int chunks) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nw + k) return;
    float sum = 0.f;
    for (int z = 0; z < chunks; ++z) sum += part[(long long)z * (nw + k) + i];
    if (i < nw)
        dw[i] = sum;
    else if (db)
        db[i - nw] = sum;
}
