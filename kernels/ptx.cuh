// ptx.cuh: the inline-PTX primitives the tensor-core kernels use (mma.sync, ldmatrix, cp.async,
// plus fp16 pair packing), each behind one __device__ __forceinline__ helper.
//
// Every helper has two bodies. Under __CUDA_ARCH__ (NVRTC) it is the single PTX instruction.
// Otherwise (the host build, g++ 12, each CUDA thread a fiber) it is an exact per-lane emulation:
// warp-wide instructions go through emu::warp_collective, whose last arriving lane computes every
// lane's outputs from the operands all 32 lanes deposited. The emulation follows the PTX ISA
// fragment layouts literally, so a kernel whose indexing disagrees with them fails on the CPU.
// Kernels never write asm themselves; they call these helpers with generic pointers.
//
// Notation (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"):
//   lane = linear thread index in the block % 32,  g = lane >> 2 ("groupID"),  t = lane % 4
//   ("threadID_in_group"). An .f16x2 register holds element 2j in bits 0-15 and 2j+1 in 16-31.
//
// Host build only: each helper takes two hidden defaulted parameters, the caller's file and line
// (filled in by __builtin_FILE/__builtin_LINE at the call site), so the emulator's reports (lane
// missing, lanes at different call sites, misaligned address) name the kernel line, not this file.
// Callers never pass them.
#pragma once
#include "common.cuh"

#ifdef __CUDA_ARCH__
#define PTX_SITE_PARAMS
#define PTX_SITE_PARAMS_ONLY
#define PTX_SITE_ARGS
#else
#include <cstring>
#define PTX_SITE_PARAMS , const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define PTX_SITE_PARAMS_ONLY const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define PTX_SITE_ARGS , site_file, site_line
#endif

// ---------------------------------------------------------------------------------------------
// fp16 pairs <-> u32 fragment registers. mma/ldmatrix fragments are plain u32 registers; these
// keep the "even element in the low half" convention in one place.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ unsigned pack_half2(__half lo, __half hi) {
  return (unsigned)__half_as_ushort(lo) | ((unsigned)__half_as_ushort(hi) << 16);
}

__device__ __forceinline__ void unpack_half2(unsigned r, __half& lo, __half& hi) {
  lo = __ushort_as_half((unsigned short)(r & 0xffffu));
  hi = __ushort_as_half((unsigned short)(r >> 16));
}

// ---------------------------------------------------------------------------------------------
// Host-only emulation machinery.
// ---------------------------------------------------------------------------------------------
#ifndef __CUDA_ARCH__
namespace ptx_emu {

constexpr unsigned kFullWarp = 0xffffffffu;

// Misuse is a kernel error: emu::fail ends the launch with this message (it never returns).
[[noreturn]] inline void fail(const char* op, const char* file, int line, const char* what,
                              const void* addr) {
  emu::fail("%s at %s:%d, lane %u of thread (%u,%u,%u): %s (address %p)", op, file, line,
            emu::lane_id(), (unsigned)threadIdx.x, (unsigned)threadIdx.y, (unsigned)threadIdx.z,
            what, addr);
}

inline void check_align(const void* p, unsigned bytes, const char* op, const char* file,
                        int line, const char* what) {
  if (((unsigned long long)p) % bytes != 0) fail(op, file, line, what, p);
}

// Element i (0-based, two per register) of an .f16x2 fragment, as float (exact).
inline float f16_elem(const unsigned* regs, int i) {
  __half lo, hi;
  unpack_half2(regs[i >> 1], lo, hi);
  return __half2float((i & 1) ? hi : lo);
}

// D = A*B + C for one warp. Lane data: each lane's a/b/c registers in, d registers out.
// K = 16 or 8. Every D element is C + sum_k A[m][k]*B[k][n], the sum taken in float in k order
// starting from C. fp16*fp16 products are exact in float, so this is the exact-product,
// float-accumulate model; the tensor core's own order and rounding are undocumented, hence
// tests compare with a tolerance.
template <int K>
struct MmaLane {
  unsigned a[K / 4];  // 4 regs for k16, 2 for k8
  unsigned b[K / 8];  // 2 regs for k16, 1 for k8
  float c[4];
  float d[4];
};

// d[0..W) += a[k] * b[k][0..W) for k = 0..K-1 (b's rows ldb floats apart): each d[j] adds its K
// products one after another in k order, as a scalar loop would (no fused multiply-add:
// -ffp-contract=off), 4 columns a vector held in registers over the k loop. It touches only its
// callers' local arrays, so ThreadSanitizer need not watch it (emu-tsan's wgmma runs: wgmma_compute).
template <int W, int K>
#if defined(__SANITIZE_THREAD__)
__attribute__((no_sanitize_thread))
#endif
inline void row_madd(float* d, const float* a, const float* b, int ldb) {
  static_assert(W % 4 == 0, "row_madd: whole vectors of 4 columns");
  typedef float v4 __attribute__((vector_size(16)));
  v4 acc[W / 4], bv[W / 4];
  std::memcpy(acc, d, sizeof acc);
  for (int k = 0; k < K; ++k) {
    const v4 av = {a[k], a[k], a[k], a[k]};
    std::memcpy(bv, b + (size_t)k * ldb, sizeof bv);
#pragma GCC unroll 16  // (unrolled, acc stays in registers; a loop kept it in memory at -O2)
    for (int j = 0; j < W / 4; ++j) acc[j] += av * bv[j];
  }
  std::memcpy(d, acc, sizeof acc);
}

// Fragment coordinates (PTX ISA, "Matrix fragments for mma.m16n8k16 / mma.m16n8k8").
//   A f16 (a_i):  row = g + 8*((i>>1)&1), col = 2t + (i&1) + 8*(i>>2)     [k8: i < 4]
//   B f16 (b_i):  k   = 2t + (i&1) + 8*(i>>1), n = g                       [k8: i < 2]
//   C/D f32 (c_i): row = g + 8*(i>>1),       col = 2t + (i&1)
template <int K>
void mma_collective(void* const* lanes, unsigned) {
  float A[16][K], B[K][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaLane<K>& in = *static_cast<const MmaLane<K>*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < K / 2; ++i)
      A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = f16_elem(in.a, i);
    for (int i = 0; i < K / 4; ++i) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = f16_elem(in.b, i);
    for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = in.c[i];
  }
  for (int m = 0; m < 16; ++m) row_madd<8, K>(C[m], A[m], B[0], 8);  // C becomes D
  for (int l = 0; l < 32; ++l) {
    MmaLane<K>& out = *static_cast<MmaLane<K>*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) out.d[i] = C[g + 8 * (i >> 1)][2 * t + (i & 1)];
  }
}

// ldmatrix.m8n8.b16 (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): lanes 8j..8j+7
// supply the row addresses of matrix j (16 contiguous bytes each, 16-byte aligned); the other
// lanes' addresses are ignored. Register j of lane l receives
//   M_j[l/4][2(l%4) + k]               (k = 0 in bits 0-15, k = 1 in bits 16-31)
//   M_j[2(l%4) + k][l/4]               with .trans
struct LdmatrixLane {
  const unsigned short* row;  // this lane's row address
  unsigned r[4];
};

template <int N, bool Trans>
void ldmatrix_collective(void* const* lanes, unsigned) {
  unsigned out[32][N];
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < N; ++j) {
      unsigned v = 0;
      for (int k = 0; k < 2; ++k) {
        const int row = Trans ? 2 * (l & 3) + k : l >> 2;
        const int col = Trans ? l >> 2 : 2 * (l & 3) + k;
        const unsigned short* p = static_cast<const LdmatrixLane*>(lanes[8 * j + row])->row;
        v |= (unsigned)p[col] << (16 * k);
      }
      out[l][j] = v;
    }
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < N; ++j) static_cast<LdmatrixLane*>(lanes[l])->r[j] = out[l][j];
}

template <int N, bool Trans>
inline void ldmatrix(unsigned* r, const void* row, const char* op, const char* file, int line) {
  LdmatrixLane me;
  me.row = static_cast<const unsigned short*>(row);
  // Only lanes whose address is used must be aligned; the hardware ignores the rest.
  if ((int)emu::lane_id() < 8 * N)
    check_align(row, 16, op, file, line, "ldmatrix row address not 16-byte aligned");
  emu::warp_collective(kFullWarp, op, file, line, &me, &ldmatrix_collective<N, Trans>);
  for (int j = 0; j < N; ++j) r[j] = me.r[j];
}

}  // namespace ptx_emu
#endif  // !__CUDA_ARCH__

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: D(16x8) = A(16x16) * B(16x8) + C, all 32
// lanes of the warp. a: 4 .f16x2 regs, b: 2 .f16x2 regs, c/d: 4 floats; layouts above. d may
// alias c (the usual accumulate-in-place call).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void mma_m16n8k16_f16f32(float d[4], const unsigned a[4],
                                                    const unsigned b[2],
                                                    const float c[4] PTX_SITE_PARAMS) {
#ifdef __CUDA_ARCH__
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  ptx_emu::MmaLane<16> me;
  for (int i = 0; i < 4; ++i) me.a[i] = a[i], me.c[i] = c[i];
  me.b[0] = b[0], me.b[1] = b[1];
  emu::warp_collective(ptx_emu::kFullWarp, "mma.m16n8k16", site_file, site_line, &me,
                       &ptx_emu::mma_collective<16>);
  for (int i = 0; i < 4; ++i) d[i] = me.d[i];
#endif
}

// mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32: D(16x8) = A(16x8) * B(8x8) + C.
// a: 2 .f16x2 regs (row g / g+8, col 2t+(i&1)); b: 1 .f16x2 reg (k = 2t+i, n = g); c/d as k16.
__device__ __forceinline__ void mma_m16n8k8_f16f32(float d[4], const unsigned a[2],
                                                   const unsigned b[1],
                                                   const float c[4] PTX_SITE_PARAMS) {
#ifdef __CUDA_ARCH__
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
  ptx_emu::MmaLane<8> me;
  for (int i = 0; i < 4; ++i) me.c[i] = c[i];
  me.a[0] = a[0], me.a[1] = a[1], me.b[0] = b[0];
  emu::warp_collective(ptx_emu::kFullWarp, "mma.m16n8k8", site_file, site_line, &me,
                       &ptx_emu::mma_collective<8>);
  for (int i = 0; i < 4; ++i) d[i] = me.d[i];
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: loads 1/2/4 8x8 b16 matrices from
// shared memory into r[0..N-1] of every lane, all 32 lanes of the warp. smem_row_ptr: this
// lane's row address (lane 8j+i gives row i of matrix j; lanes >= 8N are ignored), a generic
// pointer into shared memory, 16-byte aligned. Each 8x8 result has the mma fragment layout:
//  - A (16x16, stored [m][k]): x4 with lane l pointing at &A[l % 16][8 * (l / 16)] gives a[0..3].
//  - B stored [n][k] (k contiguous): no .trans; x2 with lane l at &B[l % 8][8 * (l / 8)] gives
//    b[0..1] of m16n8k16 (lanes 0-15 used).
//  - B stored [k][n] (n contiguous): .trans, rows = k; x2 with lane l at &B[l % 16][n0] gives
//    b[0..1] of m16n8k16 (lanes 0-15 used).
// ---------------------------------------------------------------------------------------------
#ifdef __CUDA_ARCH__
#define PTX_LDMATRIX(NAME, N, TRANS, SHAPE, OUTS, ...)                                      \
  __device__ __forceinline__ void NAME(unsigned* r, const void* smem_row_ptr) {            \
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem_row_ptr);                    \
    asm volatile("ldmatrix.sync.aligned.m8n8." SHAPE ".shared.b16 " OUTS ", [%" #N "];\n"  \
                 : __VA_ARGS__                                                              \
                 : "r"(s)                                                                   \
                 : "memory");                                                               \
  }
#else
#define PTX_LDMATRIX(NAME, N, TRANS, SHAPE, OUTS, ...)                                       \
  __device__ __forceinline__ void NAME(unsigned* r, const void* smem_row_ptr PTX_SITE_PARAMS) { \
    ptx_emu::ldmatrix<N, TRANS>(r, smem_row_ptr, "ldmatrix." SHAPE, site_file, site_line);   \
  }
#endif
PTX_LDMATRIX(ldmatrix_x1, 1, false, "x1", "{%0}", "=r"(r[0]))
PTX_LDMATRIX(ldmatrix_x2, 2, false, "x2", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
PTX_LDMATRIX(ldmatrix_x4, 4, false, "x4", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
             "=r"(r[3]))
PTX_LDMATRIX(ldmatrix_x1_trans, 1, true, "x1.trans", "{%0}", "=r"(r[0]))
PTX_LDMATRIX(ldmatrix_x2_trans, 2, true, "x2.trans", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
PTX_LDMATRIX(ldmatrix_x4_trans, 4, true, "x4.trans", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]),
             "=r"(r[2]), "=r"(r[3]))
#undef PTX_LDMATRIX

// ---------------------------------------------------------------------------------------------
// cp.async (PTX ISA, "Data movement: cp.async"): per-thread asynchronous copy global -> shared of
// Bytes = 4, 8 or 16 bytes; the first src_bytes are copied and the rest of the Bytes zero-filled
// (src-size operand), so src_bytes = 0 writes zeros and reads nothing: tile loads use this for
// padding and ragged edges. Still pass an in-bounds src (e.g. clamped) when src_bytes = 0; the
// host build never reads it. dst and src must be Bytes-aligned, 0 <= src_bytes <= Bytes.
// 16-byte copies use .cg (bypass L1: tiles are staged in shared memory, not reused from L1);
// .cg exists only for 16 bytes, so 4/8 use .ca.
// Ordering: the data is visible to the issuing thread after cp_async_wait*() covering its group,
// and to other threads only after a __syncthreads() that follows that wait.
// Host build: the source is read at issue time; the copy lands at issue, or as late as the
// wait that covers its group, as the emu schedule decides (emu::cp_async_issue), so a pipeline
// that waits for too few groups reads stale shared memory under some schedule. cp.async is
// per-thread, not a warp collective.
// ---------------------------------------------------------------------------------------------
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* smem_dst, const void* gmem_src,
                                               unsigned src_bytes PTX_SITE_PARAMS) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef __CUDA_ARCH__
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem_dst);
  const unsigned long long gp = (unsigned long long)__cvta_generic_to_global(gmem_src);
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gp),
                 "r"(src_bytes)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gp),
                 "n"(Bytes), "r"(src_bytes)
                 : "memory");
#else
  ptx_emu::check_align(smem_dst, Bytes, "cp.async", site_file, site_line,
                       "shared destination not aligned to the copy size");
  ptx_emu::check_align(gmem_src, Bytes, "cp.async", site_file, site_line,
                       "global source not aligned to the copy size");
  if (src_bytes > (unsigned)Bytes)
    ptx_emu::fail("cp.async", site_file, site_line, "src-size larger than cp-size", gmem_src);
  const unsigned char *d = static_cast<unsigned char*>(smem_dst), *end = emu::dyn_smem() + emu::dyn_smem_bytes();
  if (d >= emu::dyn_smem() && d < end + emu::kSmemGuard && d + Bytes > end)
    ptx_emu::fail("cp.async", site_file, site_line, "shared destination past the end of dynamic shared memory",
                  smem_dst);
  emu::cp_async_issue(smem_dst, gmem_src, Bytes, src_bytes);
#endif
}

// The common case: copy all Bytes when valid, else zero-fill them.
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src,
                                           bool valid = true PTX_SITE_PARAMS) {
  cp_async_zfill<4>(smem_dst, gmem_src, valid ? 4u : 0u PTX_SITE_ARGS);
}
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src,
                                           bool valid = true PTX_SITE_PARAMS) {
  cp_async_zfill<8>(smem_dst, gmem_src, valid ? 8u : 0u PTX_SITE_ARGS);
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src,
                                            bool valid = true PTX_SITE_PARAMS) {
  cp_async_zfill<16>(smem_dst, gmem_src, valid ? 16u : 0u PTX_SITE_ARGS);
}

// The other two forms of a 16-byte cp.async, for the copy probe (kernels/probe_copy.cu), which
// asks whether the form changes how many sectors the hardware moves: cp_async_16 always passes
// a src-size operand (zero-fill at the edges); these pass none. L1 false: .cg (L2 only, as
// cp_async_16); true: .ca (allocating in L1, where two lanes' halves of a sector might merge).
template <bool L1>
__device__ __forceinline__ void cp_async_16_whole(void* smem_dst, const void* gmem_src PTX_SITE_PARAMS) {
#ifdef __CUDA_ARCH__
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem_dst);
  const unsigned long long gp = (unsigned long long)__cvta_generic_to_global(gmem_src);
  if constexpr (L1)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gp) : "memory");
  else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gp) : "memory");
#else
  cp_async_zfill<16>(smem_dst, gmem_src, 16u PTX_SITE_ARGS);
#endif
}

// Closes the group of this thread's cp.async issued since the previous commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  emu::cp_async_commit();
#endif
}

// Waits until at most N of this thread's committed groups are still pending (N = 0: all
// committed groups done). Multi-stage pipelines wait<stages - 2> to keep loads in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
  emu::cp_async_wait(N);
#endif
}

// Waits for every cp.async of this thread, committed or not.
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  emu::cp_async_wait(-1);
#endif
}
