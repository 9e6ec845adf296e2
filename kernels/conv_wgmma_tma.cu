// conv_wgmma_tma.cu: conv_wgmma_halo.cu's 256 x N halo tile with both operands brought by the
// TMA engine (kernels/bulk.cuh) in the 128-byte swizzle, sm_90 only:
//   igemm3x3_wgmma_halo_tma_n{64,128}_f16   y[p][o] = epilogue(sum_{tap, c} x[p + tap][c] wt[o][tap][c])
//   igemm3x3_wgmma_halo512_tma_n64_f16      the same with items of 512 positions x 64 channels
//   igemm3x3_wgmma_halo_tma_ws_n{64,128}_f16 the 256 x N one with a producer warp instead of a
//                                            __syncthreads a stage (warp specialisation)
//   igemm3x3_wgmma_halo_tma_mc_n{64,128}_f16 the ws one in clusters of 2 blocks that share each
//                                            stage's filter box by multicast
// Same passes and epilogues as conv_wgmma_halo.cu (fprop: bias + ReLU; dgrad: wt rotated by
// conv_rot180_f16, mask); x and wt come as tensor maps instead of pointers.
//
// Why: every cp.async kernel of ours ran with ~50% excess global sectors at the L2's limit (runs
// 5-6), and cuDNN's Hopper kernels load through TMA (bench/NOTES.md, "The copy probe"). Here the
// copy engine moves whole 128-byte rows, and one warp issues them.
//
// The padded space is conv_wgmma_halo.cu's (h + 1 rows an image: a zero row above each image and
// one after the last, outputs from row 1 on), but with the row pitch sp = w + 2 rounded up to 8
// (sp - w - 2 more zero columns, computed and dropped: 0 at w 14, 2 at 28, 6 at 56): then 8
// consecutive positions from a multiple of 8 (a chunk) never cross a row, and are one box of 8
// pixels x 64 channels, 1024 bytes, the swizzle's whole pattern. Chunk J's box starts at pixel
// x = 8 (J mod sp / 8) - 1 of padded row R = J div (sp / 8), image row (img, y) = ((R - 1) /
// (h + 1), (R - 1) % (h + 1)) (R <= 0: image 0, y = R - 1); pixels x = -1 and x >= w and rows
// y < 0 and y = h lie outside the tensor, so the copy engine writes the padding's zeros, and
// channels past cin too.
// A halo step (an item's 64 input channels) holds the chunks of its positions (256, or 512 for
// conv_wgmma_halo.cu's tall tile: each warpgroup two m64 blocks) and their taps (a padded row and
// one position on each side): at most halo_pos(sp, 256) = 272 + 2 sp positions (386 of 400 read at
// w 56), the boxes issued by one warp's lanes (warp 0, or the producer warp) on one mbarrier. Position P of
// the item whose first chunk is Jb sits at (P - 8 Jb) 128 bytes into the buffer, so a tap is
// again a shift of A's descriptor (a position is 128 bytes; a k16 step 32 bytes along the row).
// B, a stage's N output channels x 64 input channels of one tap, is one box of the filters'
// 3-D map (C, tap, K) into a ring of 4, three stages ahead.
// The loop (as conv_wgmma_halo.cu's, the ring's rule as gemm_wgmma.cu's TMA tile): every
// thread waits for its stage's B (and at a halo step's first tap for the halo) on the buffer's
// mbarrier; the stage's wgmma group, which leaves only itself pending; a __syncthreads, after
// which group s - 1 has retired in every warpgroup, so thread 0 refills its B buffer with stage
// s + 3 and, at halo step k's first tap, warp 0 the other halo buffer (last read by step k - 1)
// with step k + 1. The epilogue writes straight from the accumulators (conv_wgmma_store_row), so no
// thread touches shared memory through the generic proxy and no proxy fence is needed.
// Warp-specialised (kWs): a 17th warp is the producer, and nothing synchronises the block in the
// loop. Each consumer warp's lane 0 arrives on an `empty` barrier a buffer (16 arrivals a phase)
// once the wgmma group that read it has retired (at stage s for B stage s - 1, at halo step k's
// first tap for step k - 1); the producer waits for that phase before refilling the buffer: B
// stage s once stage s - 4 is released, halo step k + 1 at its B stage 9 k + 4 (step k - 1 was
// released at stage 9 k, which the consumers have passed by then, as the ring keeps the producer
// at most 4 stages ahead). Why: the __syncthreads of 512 threads at every stage lines all four
// warpgroups up behind the slowest once a stage; CUTLASS's Hopper kernels pipeline this way.
// Clusters of 2 (kMc, warp-specialised only; bench/NOTES.md, "A cluster of two for the TMA halo
// tile"): B is three quarters of the tile's L2 bytes and the same for every item of an
// output-channel block, so the two blocks of a cluster take items of the same output-channel
// blocks in the same order and each loads half of every stage's B box (N / 2 output channels,
// kBBytes / 2 bytes, a multiple of the swizzle's 1024-byte pattern) into both blocks' buffers
// (mask 0b11), completing on the bfull barrier at the same offset in each; each block's full
// barrier expects the whole box. Item pair pi = c + j (gridDim.x / 2) is cluster c's j-th: output
// channel block pi % oblocks, position block 2 (pi / oblocks) + rank. With an odd number of
// position blocks, rank 1's last item lies past the last position: it still runs every stage (its
// half of B is rank 0's other half; its halo boxes lie in images >= n, zeros) and conv_halo_pixel
// rejects every output. A B buffer is written by both producers, so each is refilled only once
// the consumers of both blocks have released it: bempty counts 32 arrivals, each consumer warp
// arriving on its own block's and on the peer's (once its reads are done, with no fence:
// mbarrier_arrive_cluster<false>), and the producer's wait acquires at cluster scope. The
// halo buffers stay each block's own. The cluster rules (kernels/cluster.cuh): the barriers live
// in dynamic shared memory after the halo buffers, a cluster_sync follows their init, and every
// thread ends at a cluster_sync, so that no block exits while its peer may still multicast into
// it or arrive on its barriers.
// Shared memory: 1024 bytes of alignment slack, 4 B buffers, 2 halo buffers (and for clusters the
// 12 barriers; the launcher: src/ops/conv/wgmma.rs).
#include "bulk.cuh"
#include "cluster.cuh"
#include "conv_wgmma.cuh"

namespace ct {
constexpr int kC = 64, kThreads = 512, kBBufs = 4, kWsThreads = kThreads + 32, kConsumerWarps = kThreads / 32;
// The positions a halo step holds for items of `pos` positions at row pitch sp (conv_tma_pitch):
// the chunks of pos + 2 sp + 2 positions from any start.
__host__ __device__ constexpr int halo_pos(int sp, int pos) { return pos + 16 + 2 * sp; }
__host__ __device__ constexpr int smem_bytes(int out, int w, int pos) {
    return 1024 + kBBufs * out * kC * 2 + 2 * halo_pos(conv_tma_pitch(w), pos) * kC * 2;
}
// VGG's widest layers fit the 227 KB of an sm_90 block (less the 96 bytes of barriers):
// conv1_2 at N 64, conv2_x at N 128 (the launcher allows widths up to 246 and 182), and conv2_x
// for the 512-position items (widths up to 118).
static_assert(smem_bytes(64, 224, 256) == 222208 && smem_bytes(128, 112, 256) == 197632 &&
                  smem_bytes(64, 112, 512) == 230400,
              "src/ops/conv/wgmma.rs");
}  // namespace ct

// kMWg: m64 blocks a warpgroup (1: items of 256 positions, 2: of 512); kWs: a producer warp; kMc:
// blocks a cluster sharing B (1 or 2).
template <int kOut, int kMWg, bool kWs = false, int kMc = 1>
__device__ __forceinline__ void igemm_halo_tma(const TmaDesc* xm, const TmaDesc* wm, const __half* __restrict__ bias,
                                               const __half* __restrict__ mask, __half* __restrict__ y, int n, int h,
                                               int w, int cin, int cout, int relu) {
    using namespace ct;
    static_assert(kOut * kMWg == 64 || kOut * kMWg == 128, "4 warpgroups' accumulators fit 128 registers a thread");
    static_assert(kMc == 1 || (kMc == 2 && kWs && kMWg == 1), "clusters of 2, for the warp-specialised 256 x N tile");
    constexpr int kPos = 256 * kMWg, kBBytes = kOut * kC * 2;
    VGG_DYN_SHARED(unsigned char, raw);
    unsigned char* const smem = align_shared(raw, 1024);  // the swizzle's 1024-byte pattern
    unsigned char* const halo = smem + kBBufs * kBBytes;
    const int tid = threadIdx.x, wg = tid >> 7, warp = tid >> 5, lane = tid & 31;
    const int sp = conv_tma_pitch(w), hbytes = halo_pos(sp, kPos) * kC * 2;
    // A cluster's barriers in dynamic shared memory (the emulator's static __shared__ would be one
    // for both blocks), after the halo buffers.
    __shared__ unsigned long long sbars[2 * kBBufs + 4];
    unsigned long long* const bars = kMc == 1 ? sbars : reinterpret_cast<unsigned long long*>(halo + 2 * hbytes);
    unsigned long long *const bfull = bars, *const bempty = bars + kBBufs, *const hfull = bars + 2 * kBBufs,
                              *const hempty = hfull + 2;
    const unsigned rank = kMc == 1 ? 0 : cluster_ctarank();
    const int oblocks = (cout + kOut - 1) / kOut;
    // Work units: items, or a cluster's item pairs (the same output-channel block, two position blocks).
    const int units = (((n * (h + 1) - 1) * sp + kPos - 1) / kPos + kMc - 1) / kMc * oblocks;
    const int unit0 = (int)blockIdx.x / kMc, ustride = (int)gridDim.x / kMc;
    const int csteps = (cin + kC - 1) / kC;
    const int mine = unit0 < units ? (units - 1 - unit0) / ustride + 1 : 0;
    const int hsteps = mine * csteps, stages = 9 * hsteps;
    if (tid == 0) {
        for (int b = 0; b < kBBufs; ++b) mbarrier_init(&bfull[b], 1), mbarrier_init(&bempty[b], kMc * kConsumerWarps);
        for (int b = 0; b < 2; ++b) mbarrier_init(&hfull[b], 1), mbarrier_init(&hempty[b], kConsumerWarps);
        fence_mbarrier_init();
    }
    if constexpr (kMc > 1)
        cluster_sync();  // the peer's barriers initialised before this block's multicasts and arrivals on them
    else
        __syncthreads();

    // The first chunk of item `it`'s halo: its outputs start at position pos0 = sp + kPos (it /
    // oblocks), its halo at pos0 - sp - 1 >= -1 (floor division).
    auto pos0_of = [&](int it) { return sp + it / oblocks * kPos; };
    auto first_chunk = [&](int it) { return (pos0_of(it) - sp + 7) / 8 - 1; };
    // The block's j-th item, as position block x oblocks + output-channel block.
    auto item_at = [&](int j) {
        const int u = unit0 + j * ustride;
        return kMc == 1 ? u : (kMc * (u / oblocks) + (int)rank) * oblocks + u % oblocks;
    };
    auto item_of = [&](int k) { return item_at(k / csteps); };  // halo step k's item
    auto load_halo = [&](int k) {  // one warp: halo step k
        const int it = item_of(k), c0 = k % csteps * kC;
        const int jb = first_chunk(it), je = (pos0_of(it) + kPos + sp) / 8;
        unsigned char* const buf = halo + (k & 1) * hbytes;
        if (lane == 0) mbarrier_arrive_expect_tx(&hfull[k & 1], (je - jb + 1) * 8 * kC * 2);
        __syncwarp(0xffffffffu);  // the bytes are announced before any box can land
        for (int j = jb + lane; j <= je; j += 32)
            conv_tma_load_chunk(buf + (j - jb) * 8 * kC * 2, xm, c0, j, sp, h, &hfull[k & 1]);
    };
    auto load_b = [&](int s) {  // one thread: stage s (tap s % 9 of halo step s / 9) into buffer s % 4
        if (s >= stages) return;
        const int k = s / 9, it = item_of(k);
        unsigned long long* const full = &bfull[s % kBBufs];
        unsigned char* const buf = smem + (s % kBBufs) * kBBytes;
        mbarrier_arrive_expect_tx(full, kBBytes);  // clusters: this block's half and the peer's
        if constexpr (kMc == 1)
            tma_load_3d(buf, wm, k % csteps * kC, s % 9, it % oblocks * kOut, full);
        else  // this rank's N / 2 output channels (wm's box), into both blocks
            tma_load_3d_multicast(buf + rank * (kBBytes / 2), wm, k % csteps * kC, s % 9,
                                  it % oblocks * kOut + rank * (kOut / 2), full, 0b11);
    };
    // Clusters: every thread's last act, so that no block exits while its peer may still use its shared memory.
    auto leave_cluster = [&] {
        if constexpr (kMc > 1) cluster_sync();
    };
    if constexpr (kWs) {
        if (warp == kConsumerWarps) {  // the producer, the ring's rules as the header says
            if (stages > 0) load_halo(0);
            for (int s = 0; s < stages; ++s) {
                const int k1 = s / 9 + 1;
                if (s % 9 == 4 && k1 < hsteps) {
                    // Implied by the B ring: lane 0 waited (iteration 9 k1 - 6) for every warp to release
                    // B stage 9 k1 - 10, which each does at stage 9 k1 - 9 after the same wgmma wait that
                    // ends its reads of halo step k1 - 2. So no emulator test fails without it; kept so
                    // that every lane issuing boxes acquires the release itself.
                    if (k1 >= 2) mbarrier_wait_parity(&hempty[k1 & 1], ((k1 >> 1) - 1) & 1);
                    load_halo(k1);
                }
                if (lane == 0) {
                    // Clusters: both blocks' consumers released the buffer (cluster-scope acquire).
                    if (s >= kBBufs) mbarrier_wait_parity<(kMc > 1)>(&bempty[s % kBBufs], (s / kBBufs - 1) & 1);
                    load_b(s);
                }
            }
            leave_cluster();
            return;
        }
    } else if (warp == 0 && stages > 0) {
        load_halo(0);
        if (lane == 0)
            for (int s = 0; s < kBBufs - 1; ++s) load_b(s);
    }

    // Descriptors of halo buffer 0's position 64 kMWg wg (this warpgroup's first m64 block; block
    // b is 64 positions on) and of B buffer 0.
    const unsigned long long da0 = wgmma_desc_sw128(halo + wg * kMWg * 64 * 128, 1024);
    const unsigned long long db0 = wgmma_desc_sw128(smem, 1024);
    const int t = tid & 3;  // the accumulators' column pair (wgmma.cuh)
    float acc[kMWg][kOut / 2];
#pragma unroll
    for (int b = 0; b < kMWg; ++b)
#pragma unroll
        for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
    int tap = 0, k = 0, cstep = 0, j = 0, item = item_at(0);
    // The item's first output in its halo buffer.
    auto first_out = [&](int it) { return pos0_of(it) - 8 * first_chunk(it); };
    int q0 = first_out(item);
    for (int s = 0; s < stages; ++s) {
        if (tap == 0) mbarrier_wait_parity(&hfull[k & 1], (k >> 1) & 1);
        mbarrier_wait_parity(&bfull[s % kBBufs], (s / kBBufs) & 1);
        const int q = q0 + (tap / 3 - 1) * sp + tap % 3 - 1;  // tap (dy, dx) of output q0: (dy - 1) sp + dx - 1 on
        const unsigned long long da = da0 + (((k & 1) * hbytes) >> 4) + q * 8;
        const unsigned long long db = db0 + (s % kBBufs) * (kBBytes >> 4);
        wgmma_stage_blocks<kOut, false, false, kC / 16, kMWg>(acc, da, db, 2, 2, 64 * 8);
        if constexpr (kWs) {  // this warp is past group s - 1: release its B buffer (and halo step k - 1)
            if (lane == 0 && s > 0) {
                mbarrier_arrive(&bempty[(s - 1) % kBBufs]);
                // The peer's producer writes its half of this buffer here too (reads done: no fence).
                if constexpr (kMc > 1) mbarrier_arrive_cluster<false>(&bempty[(s - 1) % kBBufs], rank ^ 1);
            }
            if (lane == 0 && tap == 0 && k > 0) mbarrier_arrive(&hempty[(k - 1) & 1]);
        } else {
            __syncthreads();  // every warpgroup is past group s - 1: its B buffer and halo step k - 1's are free
            if (warp == 0) {
                if (lane == 0) load_b(s + kBBufs - 1);
                if (tap == 0 && k + 1 < hsteps) load_halo(k + 1);
            }
        }
        if (++tap < 9) continue;
        tap = 0, ++k;
        if (++cstep < csteps) continue;
        cstep = 0;
        // The item's last stage: its accumulators out (block b's rows 64 (kMWg wg + b) + 16 (warp %
        // 4) + g (+ 8)), then zeros.
        wgmma_wait<0>();
        const int o0 = item % oblocks * kOut, pos0 = pos0_of(item);
#pragma unroll
        for (int b = 0; b < kMWg; ++b) {
            wgmma_fence_acc(acc[b]);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                int pix;
                const int row = 64 * (wg * (kMWg - 1) + b) + wgmma_acc_row(half);
                const bool ok = conv_halo_pixel(pos0 + row, sp, h, w, n, pix);
                conv_wgmma_store_row<kOut>(acc[b], half, pix, ok, o0, t, bias, mask, y, cout, relu);
            }
#pragma unroll
            for (int i = 0; i < kOut / 2; ++i) acc[b][i] = 0.f;
        }
        item = item_at(++j);
        q0 = first_out(item);
    }
    // Every group has retired at the last item's epilogue, but ptxas cannot see that through the
    // loop's data-dependent exits: without this wait it inserts one on a divergent path and
    // serializes every wgmma of the kernel (its note C7518; NVRTC 13.0).
    wgmma_wait<0>();
    leave_cluster();
}

// xm: x (cin, w, h, n) in boxes of 64 x 8 x 1 x 1; wm: wt (cin, 9, cout) in boxes of
// 64 x 1 x N; both swizzled (src/ops/conv/wgmma.rs).
#define HALO_TMA_PARAMS                                                                                     \
    const __grid_constant__ TmaDesc xm, const __grid_constant__ TmaDesc wm, const __half *__restrict__ bias, \
        const __half *__restrict__ mask, __half *__restrict__ y, int n, int h, int w, int cin, int cout, int relu
#define HALO_TMA_ARGS &xm, &wm, bias, mask, y, n, h, w, cin, cout, relu

extern "C" __global__ void __launch_bounds__(ct::kThreads, 1)
    igemm3x3_wgmma_halo_tma_n64_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<64, 1>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kThreads, 1)
    igemm3x3_wgmma_halo_tma_n128_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<128, 1>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kThreads, 1)
    igemm3x3_wgmma_halo512_tma_n64_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<64, 2>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kWsThreads, 1)
    igemm3x3_wgmma_halo_tma_ws_n64_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<64, 1, true>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kWsThreads, 1)
    igemm3x3_wgmma_halo_tma_ws_n128_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<128, 1, true>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kWsThreads, 1)
    igemm3x3_wgmma_halo_tma_mc_n64_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<64, 1, true, 2>(HALO_TMA_ARGS);
}

extern "C" __global__ void __launch_bounds__(ct::kWsThreads, 1)
    igemm3x3_wgmma_halo_tma_mc_n128_f16(HALO_TMA_PARAMS) {
    igemm_halo_tma<128, 1, true, 2>(HALO_TMA_ARGS);
}
