// conv_wgrad.cu: backward-filter of the 3x3 convolution on tensor cores, and the fixed-order
// reduction shared with the direct twin.
//   igemm3x3_wgrad_m128_f16, igemm3x3_wgrad_m128n256_f16, igemm3x3_wgrad_m64_f16, ..._m64n128_f16
//                        implicit GEMM  dW[k][(r,s,c)] = sum_p dY[p][k] * X[p + (r-1, s-1)][c]
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
// A block owns kM output channels k x kN consecutive columns of it (grid.x = ceil(9C / kN),
// grid.y = ceil(K / kM)) and one pixel chunk (grid.z); kM x kN = 128 x 128
// (igemm3x3_wgrad_m128_f16), 128 x 256 where its column blocks leave at most 1/8 of 9C idle
// (igemm3x3_wgrad_m128n256_f16, below) or, for K <= 64, 64 x 256 (igemm3x3_wgrad_m64_f16), so that no
// block computes rows past K, or 64 x 128 (igemm3x3_wgrad_m64n128_f16) when also 9C <= 128
// (the padded first layer: 72 columns), so that fewer columns are computed past 9C. Since C is a multiple of 8, every 8-column piece lies within one
// tap: for C a multiple of kN a block holds channels of one tap; for small C (8, the padded
// first layer) a block holds several taps.
// Per stage it copies 32 pixels of dY (32 x kM k, contiguous rows) and, per 8-column piece,
// the same 32 pixels of X shifted by that piece's tap (zero-filled in the padding and past the
// chunk) with 16-byte cp.async into a 4-buffer ring: stages i+1..i+3 are in flight while the
// tensor cores work on stage i, with one barrier a stage. Each thread keeps the (image, row,
// column) of the pixels it copies and steps them by 32 a stage, so no division in the loop.
// Both tiles are stored pixel-major (k or column contiguous), the transposed layout the mma
// wants for A (rows k) and the natural one for B (k = pixel rows): ldmatrix.trans turns both
// into fragments. Rows are padded by 8 halves (kM + 8, kN + 8 = 68 or 36 / 132 words), so the
// 8 row addresses of an ldmatrix fall on 8 distinct 4-bank groups.
// 8 warps as 2 (k) x 4 (columns), each kM/2 x kN/4 (64 x 32 or 32 x 64): 4 + 2 (or 2 + 4)
// ldmatrix.x4 feed 16 mma's per 16 pixels, 64 fp32 accumulators a lane, so two blocks share an
// SM (68 or 84 KB of shared memory each; the 64 x 128 variant: 32 x 32 warps, 52 KB). db: the blocks of column block 0 also sum their dY
// tiles from shared memory, each thread one k over a fixed quarter or half of the stage's
// pixels; the partial sums meet in shared memory in a fixed order at the end.
// The dY tile is re-read by every column block (from L2); a block holding all 9C columns
// would read it once but needs more accumulators.
#include "common.cuh"
#include "ptx.cuh"

template <int kM, int kN>
struct WgTile {
    static constexpr int M = kM;             // output channels per block (GEMM M)
    static constexpr int N = kN;             // flattened (r, s, c) columns per block (GEMM N)
    static constexpr int P = 32;             // pixels per stage (GEMM K: two mma k-steps)
    static constexpr int Bufs = 4;           // cp.async ring
    static constexpr int RowA = M + 8, RowB = N + 8;
    static constexpr int Stage = P * (RowA + RowB);  // halves
    static constexpr int WM = M / 2, WN = N / 4, MB = WM / 16, NB = WN / 8;
    // Dynamic shared memory: Bufs * Stage * 2 bytes (src/ops/conv.rs: 69632 for 128 x 128,
    // 102400 for 128 x 256, 86016 for 64 x 256, 53248 for 64 x 128).
};

// part layout: [chunk][K*9*C + K], the first K*9*C in KRSC order, then db. C is a multiple of 8
// (src/ops/conv/launch.rs pads it for this path).
template <int kM, int kN>
__device__ __forceinline__ void igemm3x3_wgrad(const __half* __restrict__ x, const __half* __restrict__ dy,
                                               float* __restrict__ part, int n, int h, int w, int c, int k,
                                               int chunk) {
    using T = WgTile<kM, kN>;
    VGG_DYN_SHARED(__half, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, t = lane & 3;
    const int ncol = 9 * c, n0 = blockIdx.x * T::N, k0 = blockIdx.y * T::M;
    const int npix = n * h * w;
    const int p_begin = blockIdx.z * chunk, p_end = min(npix, p_begin + chunk);
    const int stages = (p_end - p_begin + T::P - 1) / T::P;
    const bool bias_block = blockIdx.x == 0;

    // Copy roles: a thread's 16-byte piece is the same column range in every stage, so its tap
    // (r, s) and channel offset are fixed; its rows are a_row0 + j * kARows (dY), b_row0 + j *
    // kBRows (X).
    constexpr int kAPieces = T::M / 8, kARows = 256 / kAPieces, kAPasses = T::P / kARows;
    constexpr int kBPieces = T::N / 8, kBRows = 256 / kBPieces, kBPasses = T::P / kBRows;
    const int a_col8 = (tid % kAPieces) * 8, a_row0 = tid / kAPieces;
    const int b_col8 = (tid % kBPieces) * 8, b_row0 = tid / kBPieces;
    const int col = n0 + b_col8, tap = col / c, r = tap / 3, s = tap % 3, cc8 = col - tap * c;
    const bool col_ok = col < ncol, k_ok = k0 + a_col8 < k;
    // X's pixel p shifted by the tap is pixel p + (r - 1) w + (s - 1) of the same NHWC tensor
    // whenever it lies in the image, so a copy's source is one multiply-add from p; only the
    // bounds need the pixel's row and column.
    const long long tap_off = ((long long)(r - 1) * w + (s - 1)) * c + cc8;
    const __half* const dy_k = dy + k0 + a_col8;
    int cw[kBPasses], ch[kBPasses];  // column and row of row j's pixel in the next stage to copy
#pragma unroll
    for (int j = 0; j < kBPasses; ++j) {
        const int p = p_begin + b_row0 + j * kBRows;
        cw[j] = p % w;
        ch[j] = p / w % h;
    }
    auto load = [&](int stage) {
        const int base = p_begin + stage * T::P;
        __half* sa = smem + (stage % T::Bufs) * T::Stage;
        __half* sb = sa + T::P * T::RowA;
#pragma unroll
        for (int j = 0; j < kAPasses; ++j) {
            const int row = a_row0 + j * kARows, p = base + row;
            const bool ok = p < p_end && k_ok;
            cp_async_16(sa + row * T::RowA + a_col8, ok ? dy_k + (long long)p * k : dy, ok);
        }
#pragma unroll
        for (int j = 0; j < kBPasses; ++j) {
            const int row = b_row0 + j * kBRows, p = base + row;
            const bool ok = p < p_end && col_ok && (unsigned)(ch[j] + r - 1) < (unsigned)h &&
                            (unsigned)(cw[j] + s - 1) < (unsigned)w;
            cp_async_16(sb + row * T::RowB + b_col8, ok ? x + ((long long)p * c + tap_off) : x, ok);
            // Next stage: 32 pixels on (w may be smaller than 32: carry as often as needed).
            cw[j] += T::P;
            while (cw[j] >= w) {
                cw[j] -= w;
                if (++ch[j] == h) ch[j] = 0;
            }
        }
    };

    float acc[T::MB][T::NB][4];
#pragma unroll
    for (int mb = 0; mb < T::MB; ++mb)
#pragma unroll
        for (int nb = 0; nb < T::NB; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mb][nb][i] = 0.f;
    // db: thread -> k0 + tid % M, pixel rows (tid / M) * kDbRows, + kDbRows.
    constexpr int kDbRows = T::P * T::M / 256;
    const int db_k = tid % T::M, db_row0 = (tid / T::M) * kDbRows;
    float dbacc = 0.f;

#pragma unroll
    for (int st = 0; st < T::Bufs - 1; ++st) {
        if (st < stages) load(st);
        cp_async_commit();
    }
    for (int it = 0; it < stages; ++it) {
        cp_async_wait<T::Bufs - 2>();  // stage it has landed; it + 1, it + 2 may fly on
        __syncthreads();               // ... for every thread; and stage it - 1's reads are over
        if (it + T::Bufs - 1 < stages) load(it + T::Bufs - 1);
        cp_async_commit();
        const __half* sa = smem + (it % T::Bufs) * T::Stage;
        const __half* sb = sa + T::P * T::RowA;
        if (bias_block)
#pragma unroll
            for (int row = 0; row < kDbRows; ++row) dbacc += __half2float(sa[(db_row0 + row) * T::RowA + db_k]);
#pragma unroll
        for (int ks = 0; ks < T::P / 16; ++ks) {
            unsigned a[T::MB][4], b[T::NB / 2][4];
#pragma unroll
            for (int mb = 0; mb < T::MB; ++mb)
                ldmatrix_x4_trans(a[mb], sa + (ks * 16 + (lane & 7) + 8 * (lane >> 4)) * T::RowA + wm * T::WM +
                                             mb * 16 + 8 * ((lane >> 3) & 1));
#pragma unroll
            for (int np = 0; np < T::NB / 2; ++np)
                ldmatrix_x4_trans(b[np], sb + (ks * 16 + (lane & 15)) * T::RowB + wn * T::WN + np * 16 + 8 * (lane >> 4));
#pragma unroll
            for (int mb = 0; mb < T::MB; ++mb)
#pragma unroll
                for (int nb = 0; nb < T::NB; ++nb)
                    mma_m16n8k16_f16f32(acc[mb][nb], a[mb], &b[nb >> 1][2 * (nb & 1)], acc[mb][nb]);
        }
    }

    // Epilogue: this chunk's partial sums, fp32 pairs along the columns (KRSC order).
    const long long nw = (long long)k * ncol;
    float* out = part + (long long)blockIdx.z * (nw + k);
#pragma unroll
    for (int mb = 0; mb < T::MB; ++mb)
#pragma unroll
        for (int nb = 0; nb < T::NB; ++nb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int kk = k0 + wm * T::WM + mb * 16 + g + 8 * hh;
                const int cc = n0 + wn * T::WN + nb * 8 + 2 * t;
                if (kk < k && cc < ncol)
                    *reinterpret_cast<float2*>(out + (long long)kk * ncol + cc) =
                        make_float2(acc[mb][nb][2 * hh], acc[mb][nb][2 * hh + 1]);
            }
    // db partials of the 256 / M row groups, added in group order.
    cp_async_wait<0>();  // only empty groups remain
    __syncthreads();     // every warp is done with the ring
    float* red = reinterpret_cast<float*>(smem);
    red[tid] = dbacc;
    __syncthreads();
    if (bias_block && tid < T::M && k0 + tid < k) {
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < 256 / T::M; ++q) sum += red[q * T::M + tid];
        out[nw + k0 + tid] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(256, 2)
    igemm3x3_wgrad_m128_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                            int n, int h, int w, int c, int k, int chunk) {
    igemm3x3_wgrad<128, 128>(x, dy, part, n, h, w, c, k, chunk);
}

// 128 x 256: warps of 64 x 64, so each ldmatrix feeds more mma's (8 per 32 mma's instead of 6
// per 16) and each copied byte more columns; 128 accumulators a lane, one block an SM.
extern "C" __global__ void __launch_bounds__(256, 1)
    igemm3x3_wgrad_m128n256_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                                int n, int h, int w, int c, int k, int chunk) {
    igemm3x3_wgrad<128, 256>(x, dy, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(256, 2)
    igemm3x3_wgrad_m64_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                           int n, int h, int w, int c, int k, int chunk) {
    igemm3x3_wgrad<64, 256>(x, dy, part, n, h, w, c, k, chunk);
}

extern "C" __global__ void __launch_bounds__(256, 2)
    igemm3x3_wgrad_m64n128_f16(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ part,
                               int n, int h, int w, int c, int k, int chunk) {
    igemm3x3_wgrad<64, 128>(x, dy, part, n, h, w, c, k, chunk);
}

// One thread per output: i < nw -> dw[i], nw <= i < nw + k -> db[i - nw] (skipped if null).
// The partials may hold a channel-padded filter (cp >= c channels, src/ops/conv/launch.rs pads C up to
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
