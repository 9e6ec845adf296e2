// shim.h: what CUDA would supply, for kernels compiled by the host C++ compiler.
//
// Each CUDA thread runs as a fiber on the OS thread that runs its block (runtime.cpp).
// threadIdx & co are OS-thread-locals that the scheduler rewrites before each switch
// into a fiber, so kernel code reads them exactly as on the GPU. Everything a kernel may
// wait on (barriers, warp collectives) is a call into the runtime, which checks CUDA's
// rules (all threads at the same barrier, all lanes of a mask present) and reports
// violations as errors naming the kernel and call site instead of hanging.
#pragma once
#if defined(__CUDA_ARCH__)
#error "the emu shim must never see __CUDA_ARCH__"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <type_traits>

// ---- keywords ---------------------------------------------------------------------
#define __global__
#define __grid_constant__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
// A GNU attribute, not alignas: it may stand among the decl-specifiers, where CUDA code
// puts it (`__shared__ __align__(16) float s[..]`).
#define __align__(n) __attribute__((aligned(n)))
// Block-scope statics are per OS thread, and one OS thread runs one block start to finish,
// so this gives each block its own shared array (not poisoned between blocks: use
// VGG_DYN_SHARED when a test must catch reads of unwritten shared memory). The blocks of a
// thread-block cluster run together on one OS thread and would share it: cluster kernels keep
// all shared state in VGG_DYN_SHARED (the primitives that take a shared address refuse a static
// one in a cluster launch; plain loads and stores cannot be checked).
#define __shared__ static thread_local
#define __constant__ static

// ---- vector types, with CUDA's alignment ------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---- the runtime's hooks ------------------------------------------------------------------
namespace emu {
// lanes[i] = the lane_data pointer passed by lane i, or nullptr for lanes not in mask.
using CollectiveFn = void (*)(void* const* lanes, unsigned mask);
// Every lane in `mask` calls this at the same program point with the same `op`; the calling
// lane must be in `mask`. When the last lane of `mask` arrives, `fn` runs once (on that
// lane's fiber) and all lanes continue. lane_data lives on each lane's own stack.
void warp_collective(unsigned mask, const char* op, const char* file, int line, void* lane_data,
                     CollectiveFn fn);
unsigned lane_id();
void syncthreads(const char* file, int line);
// cp.async (kernels/ptx.cuh): the source is read at issue; when the copy lands in shared memory
// depends on the schedule: at issue (index), at the wait that must cover it (reverse), either
// (random, per copy). A pipeline that waits too little reads stale data under reverse and random.
void cp_async_issue(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
// Lands all but the newest `pending` committed groups; pending < 0: every copy, committed or not.
void cp_async_wait(int pending);
// mbarriers and bulk copies (kernels/bulk.cuh). The barrier's state lives beside shared memory,
// found by its address (initialised per block). A bulk copy reads its source and lands when a
// wait on its barrier needs it (or at issue, as the schedule decides for cp.async), and only
// then takes its bytes off the barrier's tx-count: a kernel that reads before waiting reads stale
// bytes under the reverse and random schedules. A wait blocks the fiber until the phase of that
// parity has completed; waits that can never complete are reported as a deadlock.
void mbarrier_init(void* bar, unsigned count);
void mbarrier_arrive_expect_tx(void* bar, unsigned bytes);
void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, void* bar);
void mbarrier_wait_parity(void* bar, unsigned parity, const char* file, int line);
// A TMA load (cp.async.bulk.tensor of `rank` dimensions, the map's) of the box at `coords`
// (innermost first) of the tensor map at `map`, in the emulator's encoding
// (src/device/tensor_map.rs): the box's elements innermost first, those outside the tensor zero,
// the 128-byte swizzle applied as an address rule; lands as a bulk copy.
void tma_load(void* dst, const void* map, const int* coords, int rank, void* bar);
// Reports a kernel error (the launch fails with this message) and never returns.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Dynamic shared memory of the running block: 128-byte aligned, filled with 0xFF (fp16 NaN)
// at the start of every block, so a read of an unwritten element shows.
unsigned char* dyn_smem();
// Its size in bytes (the launch's shared_bytes).
size_t dyn_smem_bytes();
// Bytes of guard after it: a copy that starts there is an overrun (ptx.cuh reports it) rather
// than heap corruption.
constexpr size_t kSmemGuard = 64 * 1024;
// Bytes of it filled at a block's start and checked as the block exits: a store past the end
// fails the launch. Not the whole guard, so that a block costs a few KiB of memset and compare.
constexpr size_t kSmemCheck = 4096;
// An identity of the running block (changes from block to block on one OS thread).
unsigned long long block_serial();
// Thread-block clusters (kernels/cluster.cuh; emulated in cluster.cpp). A launch without a
// cluster is a cluster of one block. The rank of the running block in its cluster, the blocks in
// it; barrier.cluster's arrive and wait; mapa (p, in this block's dynamic shared memory, moved
// to the same offset in block `rank`'s); an arrival on the mbarrier at bar's offset in block
// `rank`; a TMA load whose box lands at dst's offset in every block of `mask`, completing its
// bytes on the mbarrier at bar's offset in each.
unsigned cluster_rank();
unsigned cluster_size();
void cluster_arrive(const char* file, int line);
void cluster_wait(const char* file, int line);
void* cluster_map(const void* p, unsigned rank, const char* file, int line);
void mbarrier_arrive_remote(void* bar, unsigned rank, const char* file, int line);
void tma_load_multicast(void* dst, const void* map, const int* coords, int rank, void* bar, unsigned mask,
                        const char* file, int line);
}  // namespace emu

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp_at(__FILE__, __LINE__, ##__VA_ARGS__)

// ---- fp16 ------------------------------------------------------------------------------------
// fp16 -> fp32 is exact, but without F16C g++ calls libgcc's generic __extendhfsf2 for it,
// which was ~8% of the wgmma convs' emulation: this does it on the bits, with the same result
// (a signalling NaN comes back quiet, as from __extendhfsf2 and the GPU).
inline float emu_half_bits_to_float(unsigned short h) {
    const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    unsigned bits;
    if (__builtin_expect(exp - 1u < 30u, 1)) {  // normal: a branch, not computing every case
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else {
        const float mag = static_cast<float>(man) * 0x1p-24f;  // a subnormal (or zero): exact
        std::memcpy(&bits, &mag, 4);
        bits |= sign;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
// g++ 12 has _Float16 on x86-64; every operation below rounds once, to nearest even, as
// CUDA's __hadd / __hmul do. A single float operation on two fp16 values followed by one
// rounding to fp16 is correctly rounded (float has more than 2*11+2 bits).
struct alignas(2) __half {
    _Float16 v;
    __half() = default;
    __half(float f) : v(static_cast<_Float16>(f)) {}
    __half(double f) : v(static_cast<_Float16>(static_cast<float>(f))) {}
    __half(int i) : v(static_cast<_Float16>(static_cast<float>(i))) {}
    operator float() const {
        unsigned short u;
        std::memcpy(&u, &v, 2);
        return emu_half_bits_to_float(u);
    }
};
struct alignas(4) __half2 {
    __half x, y;
};
using half = __half;
using half2 = __half2;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline unsigned short __half_as_ushort(__half h) {
    unsigned short u;
    std::memcpy(&u, &h, 2);
    return u;
}
inline __half __ushort_as_half(unsigned short u) {
    __half h;
    std::memcpy(&h, &u, 2);
    return h;
}
inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half __hneg(__half a) { return __half(-float(a)); }
// Fused: one rounding of the exact a*b+c (the product of two fp16 values is exact in double).
inline __half __hfma(__half a, __half b, __half c) {
    return __half(static_cast<float>(std::fma(double(float(a)), double(float(b)), double(float(c)))));
}
inline __half __hmax(__half a, __half b) { return float(a) >= float(b) ? a : b; }
inline __half __hmin(__half a, __half b) { return float(a) <= float(b) ? a : b; }
inline bool __hgt(__half a, __half b) { return float(a) > float(b); }
inline bool __hge(__half a, __half b) { return float(a) >= float(b); }
inline bool __hlt(__half a, __half b) { return float(a) < float(b); }
inline bool __hle(__half a, __half b) { return float(a) <= float(b); }
inline bool __heq(__half a, __half b) { return float(a) == float(b); }
inline bool __hisnan(__half a) { return std::isnan(float(a)); }
inline bool __hisinf(__half a) { return std::isinf(float(a)); }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
inline bool operator>(__half a, __half b) { return __hgt(a, b); }
inline bool operator<(__half a, __half b) { return __hlt(a, b); }

inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __half2 __hadd2(__half2 a, __half2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return {__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
inline __half2 __hmax2(__half2 a, __half2 b) { return {__hmax(a.x, b.x), __hmax(a.y, b.y)}; }

// ---- math and misc intrinsics --------------------------------------------------------------
using std::abs;
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::fma;
using std::isinf;
using std::isnan;
using std::log;
using std::sqrt;
using std::isfinite;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
// CUDA's global min / max overloads accept mixed int / unsigned / float arguments.
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <typename T> inline T __ldg(const T* p) { return *p; }

// Atomics: blocks may run in parallel on several OS threads.
inline float atomicAdd(float* p, float v) {
    float old, desired;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        desired = old + v;
    } while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- warp collectives ---------------------------------------------------------------------
namespace emu {
void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu);

template <typename T>
struct ShflLane {
    T val;
    int arg;    // source lane / delta / xor mask
    int width;
    T out;
    const char* file;
    int line;
};

// kind: 0 idx, 1 up, 2 down, 3 xor. Out-of-segment sources return the lane's own value, as
// on the GPU; a source lane outside the mask is an error (CUDA leaves the result undefined).
template <typename T, int kind>
void shfl_compute(void* const* lanes, unsigned mask) {
    for (int l = 0; l < 32; ++l) {
        auto* me = static_cast<ShflLane<T>*>(lanes[l]);
        if (!me) continue;
        int w = me->width, base = l & ~(w - 1), src;
        if (kind == 0) src = base + (me->arg & (w - 1));
        else if (kind == 1) src = (l - me->arg >= base) ? l - me->arg : l;
        else if (kind == 2) src = (l + me->arg < base + w) ? l + me->arg : l;
        else src = ((l ^ me->arg) < base + w) ? (l ^ me->arg) : l;
        if (!((mask >> src) & 1u))
            fail("shuffle at %s:%d: lane %d reads lane %d, which is not in mask 0x%08x", me->file, me->line, l, src,
                 mask);
        me->out = static_cast<ShflLane<T>*>(lanes[src])->val;
    }
}

template <typename T, int kind>
T shfl(unsigned mask, T v, int arg, int width, const char* op, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s at %s:%d: width %d is not a power of two in [1, 32]", op, file, line, width);
    ShflLane<T> me{v, arg, width, v, file, line};
    warp_collective(mask, op, file, line, &me, &shfl_compute<T, kind>);
    return me.out;
}

struct VoteLane {
    int pred;
    unsigned out;
};
void vote_compute(void* const* lanes, unsigned mask);
}  // namespace emu

#define __shfl_sync(mask, v, src, ...) \
    ::emu::shfl<std::decay_t<decltype(v)>, 0>(mask, v, src, ::emu::width_or_32(__VA_ARGS__), "__shfl_sync", __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) \
    ::emu::shfl<std::decay_t<decltype(v)>, 1>(mask, v, d, ::emu::width_or_32(__VA_ARGS__), "__shfl_up_sync", __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) \
    ::emu::shfl<std::decay_t<decltype(v)>, 2>(mask, v, d, ::emu::width_or_32(__VA_ARGS__), "__shfl_down_sync", __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, m, ...) \
    ::emu::shfl<std::decay_t<decltype(v)>, 3>(mask, v, m, ::emu::width_or_32(__VA_ARGS__), "__shfl_xor_sync", __FILE__, __LINE__)
#define __ballot_sync(mask, p) ::emu::vote(mask, p, "__ballot_sync", __FILE__, __LINE__)
#define __any_sync(mask, p) (::emu::vote(mask, p, "__any_sync", __FILE__, __LINE__) != 0u)
#define __all_sync(mask, p) \
    (::emu::vote(mask, p, "__all_sync", __FILE__, __LINE__) == (unsigned)(mask))

namespace emu {
inline int width_or_32() { return 32; }
inline int width_or_32(int w) { return w; }
inline unsigned vote(unsigned mask, bool pred, const char* op, const char* file, int line) {
    VoteLane me{pred ? 1 : 0, 0};
    warp_collective(mask, op, file, line, &me, &vote_compute);
    return me.out;
}
}  // namespace emu
