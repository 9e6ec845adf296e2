// bulk_test.cu: the copy engine's primitives (kernels/bulk.cuh) alone, for `vgg selftest`'s
// `bulk` rows (src/selftest/bulk.rs): on emu they test the emulation, on a GPU they confirm the
// emulator's reading of the PTX ISA (box layout, zero fill outside the tensor, the 128-byte
// swizzle, the transaction count).
//   prim_bulk_copy   one cp.async.bulk of `bytes` from src into shared memory
//   prim_tma_box     one 2-D TMA load of the box at (c0, c1) of the tensor `map` describes
//   prim_tma_box4    one 4-D TMA load, of the box at (c0, c1, c2, c3)
// One warp each: thread 0 initialises the mbarrier, arrives with the bytes to come and issues
// the copy; every thread waits for the phase, then the warp copies the shared bytes out as they
// lie (swizzle included).
#include "bulk.cuh"

// The protocol every kernel here follows: thread 0 initialises the barrier, arrives with `bytes`
// (a box's whole size, zero-filled part included) and issue(smem, bar) starts the copy; every
// thread waits for the phase, then the block copies the shared bytes out as they lie.
template <class Issue>
__device__ __forceinline__ void one_copy(unsigned char* smem, int bytes, unsigned char* out, Issue issue) {
    __shared__ unsigned long long bar;
    if (threadIdx.x == 0) {
        mbarrier_init(&bar, 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&bar, bytes);
        issue(smem, &bar);
    }
    mbarrier_wait_parity(&bar, 0);
    for (int i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16)
        *reinterpret_cast<uint4*>(out + i) = *reinterpret_cast<const uint4*>(smem + i);
}

extern "C" __global__ void prim_bulk_copy(const unsigned char* src, int bytes, unsigned char* out) {
    VGG_DYN_SHARED(unsigned char, smem);
    one_copy(smem, bytes, out, [&](unsigned char* s, unsigned long long* bar) { bulk_copy_g2s(s, src, bytes, bar); });
}

// Swizzled boxes need a 1024-byte aligned destination.
extern "C" __global__ void prim_tma_box(const __grid_constant__ TmaDesc map, int c0, int c1, int bytes,
                                         unsigned char* out) {
    VGG_DYN_SHARED(unsigned char, raw);
    one_copy(align_shared(raw, 1024), bytes, out,
             [&](unsigned char* s, unsigned long long* bar) { tma_load_2d(s, &map, c0, c1, bar); });
}

extern "C" __global__ void prim_tma_box4(const __grid_constant__ TmaDesc map, int c0, int c1, int c2, int c3,
                                          int bytes, unsigned char* out) {
    VGG_DYN_SHARED(unsigned char, raw);
    one_copy(align_shared(raw, 1024), bytes, out,
             [&](unsigned char* s, unsigned long long* bar) { tma_load_4d(s, &map, c0, c1, c2, c3, bar); });
}
