// probe_copy.cu: how fast global -> shared copies run, by the ways our tensor-core kernels stage
// their operands, so that their byte models rest on a measured ceiling (`vgg bench copy`).
//   probe_copy_<method>_p<phase>
//     method  cgz  cp.async.cg with a src-size operand: every tensor-core kernel's copy (its
//                  zero-fill handles the tile edges)
//             cg   cp.async.cg without one          ca   cp.async.ca (through L1)
//             ldg  ld.global.v4 into registers, st.shared.v4 one tile later
//             bulk cp.async.bulk (the TMA engine, kernels/bulk.cuh): warp 0's lanes each copy 8
//                  of the tile's 256 rows, 128 bytes a copy, counted by one mbarrier a buffer
//                  (one kernel, probe_copy_bulk: its copies have no lanes' phases)
//             tma  cp.async.bulk.tensor.2d (the TMA engine's tensor form): thread 0 loads each tile
//                  as one 64 x 256 box in the 128-byte swizzle the wgmma operands use, through a
//                  tensor map (probe_copy_tma, one more argument: the map, by value)
//     phase   0    an 8-lane phase takes 8 rows x one 16-byte unit (our K-major copies)
//             1    an 8-lane phase takes one row's 8 units, 128 contiguous bytes
// Why: ncu counted ~50% of every tensor-core kernel's global sectors as excess (runs 5 and 6,
// bench/NOTES.md), and that excess did not move when run 6 changed the copies from phase 0 to
// phase 1; these kernels move the same bytes each way, so the next run can tell whether the form
// of the copy (the src-size operand, the cache level) or nothing we control doubles the sectors.
//
// The source is a matrix of `rows` x `pitch` 16-byte units; a tile is 256 rows x 8 units (a
// k-tile of 64 halves for 256 rows, what the GEMM and conv tiles copy), 32 KiB, tiles numbered
// along a row block first. Block b takes tiles b, b + gridDim.x, ... below `count` (tile i is
// the matrix's tile i % tiles, so a small matrix is re-read from L2) through a ring of 3 buffers
// filled 2 tiles ahead (the GEMM's pipeline). Shared memory holds a tile in lane-piece order
// (piece q = tid + 256 j at q * 16 bytes: conflict-free stores either phase), so only the global
// side differs between phases. Each landed tile is read back into a checksum,
//   sum over units (row r, unit u) of (x + 3 y + 5 z + 7 w) * (2 (8 r + u) + 1)   mod 2^32,
// which a copy that lands in the wrong place, or not at all, changes; out[b] = block b's sum.
#include "bulk.cuh"

namespace probe {
constexpr int kThreads = 256, kRows = 256, kUnits = kRows * 8, kPerThread = kUnits / kThreads, kBufs = 3;
enum Method { kCgz, kCg, kCa, kLdg, kBulk };

// The tile row and unit of piece q under `phase` (a bijection of 0..2047 either way).
template <int PHASE>
__device__ __forceinline__ int piece_row(int q) {
    return PHASE == 0 ? 8 * (q >> 6) + (q & 7) : q >> 3;
}
template <int PHASE>
__device__ __forceinline__ int piece_unit(int q) {
    return PHASE == 0 ? (q >> 3) & 7 : q & 7;
}

struct Matrix {
    const uint4* src;
    int rows, pitch, tiles;
    // The first unit of tile i's row 0 (tiles along a row block first).
    __device__ __forceinline__ long long tile_base(int i) const {
        const int t = i % tiles, per_block = pitch >> 3;
        return (long long)(t / per_block) * kRows * pitch + (t % per_block) * 8;
    }
};

template <int METHOD, int PHASE>
__device__ __forceinline__ void copy_tile(unsigned char* buf, const Matrix& m, int i, int tid) {
    const long long base = m.tile_base(i);
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
        const int q = tid + kThreads * j, r = piece_row<PHASE>(q);
        const uint4* g = m.src + base + (long long)r * m.pitch + piece_unit<PHASE>(q);
        if constexpr (METHOD == kCgz)
            cp_async_16(buf + q * 16, g, r < m.rows);  // always true: the operand is the point
        else
            cp_async_16_whole<METHOD == kCa>(buf + q * 16, g);
    }
}

// SWIZZLED: the tile landed row-major in the 128-byte swizzle, unit u of row r at chunk u ^ (r % 8).
template <int PHASE, bool SWIZZLED = false>
__device__ __forceinline__ unsigned checksum(const unsigned char* buf, int tid) {
    unsigned acc = 0;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
        const int q = tid + kThreads * j, r = piece_row<PHASE>(q);
        const uint4 v = *reinterpret_cast<const uint4*>(buf + q * 16);
        const unsigned place = 8u * r + (piece_unit<PHASE>(q) ^ (SWIZZLED ? r & 7 : 0));
        acc += (v.x + 3u * v.y + 5u * v.z + 7u * v.w) * (2u * place + 1u);
    }
    return acc;
}

// The block's sum (wrapping, so any order gives the same bits) into out[blockIdx.x].
__device__ __forceinline__ void block_sum(unsigned v, unsigned* out, int tid) {
    __shared__ unsigned warps[kThreads / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((tid & 31) == 0) warps[tid >> 5] = v;
    __syncthreads();
    if (tid == 0) {
        unsigned s = 0;
        for (int w = 0; w < kThreads / 32; ++w) s += warps[w];
        out[blockIdx.x] = s;
    }
}

// Tiles this block takes (b, b + gridDim.x, ... below count), and the k-th of them.
__device__ __forceinline__ int tiles_mine(int count) {
    return count > (int)blockIdx.x ? (count - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
}
__device__ __forceinline__ int tile_of(int k) { return (int)blockIdx.x + k * (int)gridDim.x; }

// The copy engine's ring (bulk and tma): kBufs buffers filled 2 tiles ahead, an mbarrier a buffer
// counting its tile's bytes. Thread 0 announces a tile's bytes, then issue(k, buf, bar) starts
// its copies on the first ISSUERS threads (1 or a warp); every thread waits for its tile, then
// sums it (landed row-major, piece order under phase 1; SWIZZLED: in the 128-byte swizzle).
template <bool SWIZZLED, int ISSUERS, class Issue>
__device__ __forceinline__ unsigned engine_ring(unsigned char* smem, int mine, Issue issue) {
    const int tid = threadIdx.x;
    __shared__ unsigned long long full[kBufs];
    if (tid == 0) {
        for (int b = 0; b < kBufs; ++b) mbarrier_init(&full[b], 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    auto load = [&](int k) {  // the issuers
        if (k >= mine) return;
        if (tid == 0) mbarrier_arrive_expect_tx(&full[k % kBufs], kUnits * 16);
        if constexpr (ISSUERS > 1) __syncwarp(0xffffffffu);
        fence_proxy_async_shared();  // this buffer's checksum reads (tile k - 3) before the copies
        issue(k, smem + (k % kBufs) * kUnits * 16, &full[k % kBufs]);
    };
    if (tid < ISSUERS) load(0), load(1);
    unsigned acc = 0;
    for (int k = 0; k < mine; ++k) {
        mbarrier_wait_parity(&full[k % kBufs], (k / kBufs) & 1);
        __syncthreads();  // everyone is done with tile k - 1, whose buffer tile k + 2 takes
        if (tid < ISSUERS) load(k + 2);
        acc += checksum<1, SWIZZLED>(smem + (k % kBufs) * kUnits * 16, tid);
    }
    return acc;
}

// The TMA form: one 64 x 256 box a tile, swizzled, into 1024-byte aligned buffers.
__device__ __forceinline__ void run_tma(const Matrix m, int count, unsigned* out, const TmaDesc* map) {
    VGG_DYN_SHARED(unsigned char, raw);
    const int per_row_block = m.pitch >> 3;
    const unsigned acc = engine_ring<true, 1>(
        align_shared(raw, 1024), tiles_mine(count), [&](int k, unsigned char* buf, unsigned long long* bar) {
            const int t = tile_of(k) % m.tiles;
            tma_load_2d(buf, map, (t % per_row_block) * 64, (t / per_row_block) * kRows, bar);
        });
    block_sum(acc, out, threadIdx.x);
}

template <int METHOD, int PHASE>
__device__ __forceinline__ void run(const Matrix m, int count, unsigned* out) {
    VGG_DYN_SHARED(unsigned char, smem);
    const int tid = threadIdx.x;
    const int mine = tiles_mine(count);
    unsigned acc = 0;
    if constexpr (METHOD == kLdg) {
        // One tile in registers while the previous one is summed: 8 loads of 16 bytes in flight
        // a thread, 32 KiB a block.
        uint4 r[kPerThread];
        auto load = [&](int k) {
            const long long base = m.tile_base(tile_of(k));
#pragma unroll
            for (int j = 0; j < kPerThread; ++j) {
                const int q = tid + kThreads * j;
                r[j] = m.src[base + (long long)piece_row<PHASE>(q) * m.pitch + piece_unit<PHASE>(q)];
            }
        };
        if (mine > 0) load(0);
        for (int k = 0; k < mine; ++k) {
            unsigned char* const buf = smem + (k & 1) * kUnits * 16;
#pragma unroll
            for (int j = 0; j < kPerThread; ++j) *reinterpret_cast<uint4*>(buf + (tid + kThreads * j) * 16) = r[j];
            if (k + 1 < mine) load(k + 1);
            __syncthreads();  // the tile is everyone's; the other buffer's reads (k - 1) are done
            acc += checksum<PHASE>(buf, tid);
        }
    } else if constexpr (METHOD == kBulk) {
        // Warp 0's lanes copy the tile's rows, 128 bytes each, to r * 128.
        acc = engine_ring<false, 32>(smem, mine, [&](int k, unsigned char* buf, unsigned long long* bar) {
            const uint4* const g = m.src + m.tile_base(tile_of(k));
            for (int r = tid; r < kRows; r += 32) bulk_copy_g2s(buf + r * 128, g + (long long)r * m.pitch, 128, bar);
        });
    } else {
        auto load = [&](int k) {
            if (k < mine) copy_tile<METHOD, PHASE>(smem + (k % kBufs) * kUnits * 16, m, tile_of(k), tid);
            cp_async_commit();
        };
        load(0);
        load(1);
        for (int k = 0; k < mine; ++k) {
            cp_async_wait<1>();
            __syncthreads();  // tile k landed for everyone; everyone is done with tile k - 1
            load(k + 2);      // into tile k - 1's buffer
            acc += checksum<PHASE>(smem + (k % kBufs) * kUnits * 16, tid);
        }
        cp_async_wait<0>();
    }
    block_sum(acc, out, tid);
}
}  // namespace probe

// Spelled out, not made by a macro: the emulator's build finds kernels by their declarations.
#define PROBE_PARAMS \
    const uint4 *__restrict__ src, int rows, int pitch, int tiles, int count, unsigned *__restrict__ out
#define PROBE_RUN(METHOD, PHASE) probe::run<probe::METHOD, PHASE>(probe::Matrix{src, rows, pitch, tiles}, count, out)
extern "C" __global__ void __launch_bounds__(256) probe_copy_cgz_p0(PROBE_PARAMS) { PROBE_RUN(kCgz, 0); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_cgz_p1(PROBE_PARAMS) { PROBE_RUN(kCgz, 1); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_cg_p0(PROBE_PARAMS) { PROBE_RUN(kCg, 0); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_cg_p1(PROBE_PARAMS) { PROBE_RUN(kCg, 1); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_ca_p0(PROBE_PARAMS) { PROBE_RUN(kCa, 0); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_ca_p1(PROBE_PARAMS) { PROBE_RUN(kCa, 1); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_ldg_p0(PROBE_PARAMS) { PROBE_RUN(kLdg, 0); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_ldg_p1(PROBE_PARAMS) { PROBE_RUN(kLdg, 1); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_bulk(PROBE_PARAMS) { PROBE_RUN(kBulk, 0); }
extern "C" __global__ void __launch_bounds__(256) probe_copy_tma(PROBE_PARAMS, const __grid_constant__ TmaDesc map) {
    probe::run_tma(probe::Matrix{src, rows, pitch, tiles}, count, out, &map);
}
