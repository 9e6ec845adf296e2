// shim_test.cu: kernels that exercise the emulator's own semantics (tests/emu_shim.rs).
// Some are correct (warp and block reductions); others break a CUDA rule on purpose
// and exist only so the tests can check that the emu device reports the break.
#include "bulk.cuh"
#include "common.cuh"
#include "ptx.cuh"

// Sum of each warp's 32 values by butterfly shuffles; also the ballot of positive values.
extern "C" __global__ void shim_warp_reduce(const float* __restrict__ x, float* __restrict__ sums,
                                            unsigned* __restrict__ ballots) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[t];
    unsigned b = __ballot_sync(0xffffffffu, v > 0.f);
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    if (threadIdx.x % 32 == 0) {
        sums[t / 32] = v;
        ballots[t / 32] = b;
    }
}

// Tree reduction in dynamic shared memory: one partial sum a block. blockDim.x must be a
// power of two. With `racy` set, the barrier inside the tree is skipped: the planted bug
// the two-schedule comparison and ThreadSanitizer must catch.
extern "C" __global__ void shim_block_reduce(const float* __restrict__ x, float* __restrict__ out, int n,
                                             int racy) {
    VGG_DYN_SHARED(float, s);
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < (unsigned)n ? x[i] : 0.f;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (!racy) __syncthreads();
    }
    if (racy) __syncthreads();
    if (t == 0) out[blockIdx.x] = s[0];
}

// Half the block waits at one barrier, half at another: undefined on the GPU, an error here.
extern "C" __global__ void shim_divergent_barrier(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// Thread 0 leaves before a barrier the others wait at.
extern "C" __global__ void shim_exit_before_barrier(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Lanes 0-15 shuffle with a half-warp mask but read lane 20, which is outside it.
extern "C" __global__ void shim_bad_shuffle(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, 20);
    out[threadIdx.x] = v;
}

// A two-stage cp.async pipeline: chunk 0 and chunk 1 of src (32 floats each) copied in two
// groups, then both read back after wait_group `waited` (1: only chunk 0 is covered, so reading
// chunk 1 is the planted bug; 0: both covered). Shared memory starts as -1.
extern "C" __global__ void shim_cp_async_wait(const float* __restrict__ src, float* __restrict__ out, int waited) {
    alignas(16) __shared__ float buf[64];
    const int lane = threadIdx.x;
    buf[lane] = -1.f;
    buf[32 + lane] = -1.f;
    __syncthreads();
    if (lane < 8) cp_async_16(&buf[4 * lane], &src[4 * lane]);
    cp_async_commit();
    if (lane < 8) cp_async_16(&buf[32 + 4 * lane], &src[32 + 4 * lane]);
    cp_async_commit();
    if (waited == 1)
        cp_async_wait<1>();
    else
        cp_async_wait<0>();
    __syncthreads();
    out[lane] = buf[lane];
    out[32 + lane] = buf[32 + lane];
}

// A copy into dynamic shared memory that the launch did not ask for (the planted bug: launched
// with none, so byte 0 is already past its end): the emulator reports it at this line instead
// of writing past the block's buffer.
extern "C" __global__ void shim_cp_async_overrun(int* out) {
    VGG_DYN_SHARED(unsigned char, smem);
    if (threadIdx.x == 0) cp_async_16(smem, out);
    cp_async_wait_all();
    out[threadIdx.x] = 1;
}

// An arrival for the next phase while this one still waits for its bytes (the planted bug: a
// producer arriving twice before its copies land): the emulator names it instead of counting on.
extern "C" __global__ void shim_mbarrier_early_arrive(int* out) {
    __shared__ unsigned long long bar;
    if (threadIdx.x == 0) {
        mbarrier_init(&bar, 1);
        mbarrier_arrive_expect_tx(&bar, 16);
        mbarrier_arrive_expect_tx(&bar, 16);
    }
    out[threadIdx.x] = 1;
}

// A phase that can never complete (the planted bug: 2 arrivals expected, 1 made): every thread
// waits on it, and the emulator reports the deadlock with the wait's line.
extern "C" __global__ void shim_mbarrier_short_arrivals(int* out) {
    __shared__ unsigned long long bar;
    if (threadIdx.x == 0) mbarrier_init(&bar, 2);
    __syncthreads();
    if (threadIdx.x == 0) mbarrier_arrive_expect_tx(&bar, 0);
    mbarrier_wait_parity(&bar, 0);
    out[threadIdx.x] = 1;
}

// A bulk copy never waited for (the planted bug): under a schedule that lands copies at the
// wait, the block ends with it in flight, which the emulator reports.
extern "C" __global__ void shim_bulk_unwaited(int* out) {
    VGG_DYN_SHARED(unsigned char, smem);
    __shared__ unsigned long long bar;
    if (threadIdx.x == 0) {
        mbarrier_init(&bar, 1);
        mbarrier_arrive_expect_tx(&bar, 16);
        bulk_copy_g2s(smem, out, 16, &bar);
    }
}

// Thread 0 copies src[from] to dst[to]. The planted bugs are indices outside the buffers: the emu
// device lays every allocation between guard pages and checks the slack they leave after each
// launch (src/device/emu.rs), so each such access fails the launch, naming the allocation.
extern "C" __global__ void shim_copy_at(const float* src, float* dst, long long from, long long to) {
    if (threadIdx.x == 0) dst[to] = src[from];
}

// Thread 0 stores one byte at offset `at` of dynamic shared memory; the planted bug is an offset
// past the launch's shared bytes, which the emulator reports as the block exits (a GPU faults).
extern "C" __global__ void shim_smem_store_at(int* out, int at) {
    VGG_DYN_SHARED(unsigned char, smem);
    if (threadIdx.x == 0) smem[at] = 1;
    out[threadIdx.x] = 1;
}
