// wgmma.cuh: Hopper's warpgroup MMA (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate", wgmma.mma_async; sm_90a only) behind helpers with an exact emulation, as in
// ptx.cuh. The unswizzled operand layouts (K-major and M/N-major) and the 128-byte swizzle of
// both are covered.
//
// A warpgroup is 4 consecutive warps (threads 128 q .. 128 q + 127); all 128 threads issue the
// same wgmma. D (64 x N, fp32) = A (64 x 16) * B (16 x N) + (acc ? D : 0), A and B fp16 in shared
// memory named by 64-bit descriptors, D in registers: warp w of the group (w = warp % 4) holds
// rows 16 w .. 16 w + 15, per 8 columns in the layout of an m16n8 accumulator:
//   d[4 j + i] = D[16 w + g + 8 (i >> 1)][8 j + 2 t + (i & 1)]     (g = lane / 4, t = lane % 4)
// Operands, K-major without swizzle: core matrices of 8 rows x 8 halves (16 bytes a row, 128
// contiguous bytes); lbo = bytes between core matrices adjacent in K, sbo = between core matrices
// adjacent in M (for A) or N (for B). Element (m, k) of A is at byte
//   start + (m / 8) sbo + (k / 8) lbo + (m % 8) 16 + (k % 8) 2,
// and (k, n) of B at start + (n / 8) sbo + (k / 8) lbo + (n % 8) 16 + (k % 8) 2.
// M/N-major without swizzle (wgmma_ss<N, true, true>: imm-trans-a / -b = 1), as CUTLASS's
// INTERLEAVE layout has it: core matrices of 8 K-rows x 8 M (or N) elements, 16 bytes a row;
// lbo again between core matrices adjacent in K, sbo between those adjacent in M (N):
//   start + (m / 8) sbo + (k / 8) lbo + (k % 8) 16 + (m % 8) 2.
// K-major with the 128-byte swizzle (wgmma_desc_sw128; swizzle mode 1, descriptor bits 62-63): rows
// of 64 halves (128 bytes) 128 bytes apart, groups of 8 rows sbo apart (1024 when dense), lbo
// unused; the 16-byte chunk of each byte address is XORed with its 128-byte row modulo 8, both
// taken from the shared-memory address itself (bits 4-6 ^= bits 7-9), so data written through
// wgmma_sw128() reads back from any start (a k16 step is +32 bytes, a row shift +128). This is
// the rule as CUTLASS's Swizzle<3,4,3> atoms and the PTX ISA's base-offset text (0 where the
// pattern starts on a 1024-byte boundary, which an address-based pattern always does) describe
// it; the selftest's `sw128` rows check it on the GPU.
// M/N-major with the 128-byte swizzle (wgmma_desc_mn_sw128, imm-trans 1): atoms of 8 K-rows x 64
// M (N) halves, each K-row 128 contiguous bytes (64 consecutive m), the 8 rows 128 bytes apart
// (1024 bytes an atom); sbo = bytes between atoms adjacent in K (8 k on), lbo = bytes between
// atoms adjacent in M (N) (64 m on); then the same address XOR as K-major. Element (m, k) of A
// (likewise (k, n) of B) is at address a ^ (((a >> 7) & 7) << 4), where
//   a = start + (m / 64) lbo + (k / 8) sbo + (k % 8) 128 + (m % 64) 2.
// Sources: PTX ISA 9.7.15.5.1.2 "Shared Memory Matrix Layout" (the 128B M/N-major swizzle atom is
// 8 x 8 128-bit elements, widened along M/N for 16-bit types: 64 x 8), whose stride definitions
// for M/N-major swizzled layouts give the leading-dimension offset as the offset "from the first
// (swizzle-byte-size/16) rows to the next" (8 x 16 bytes = 64 halves of M/N: the next atom along
// M/N) and the stride offset as the one from the first 8 columns (of K) to the next, as its worked
// M/N-major 64B-swizzle example shows (bf16: LBO 512 bytes, SBO 1024); CUTLASS cute/atom/mma_traits_sm90_gmma.hpp, make_gmma_desc<Major::MN>:
// B128 is Swizzle<3,4,3> o ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 halves (one 16-byte
// chunk): LBO strides the M/N atoms, SBO the K groups of 8, the reverse of K-major's roles. An
// m64 A is one atom wide, so only B (N > 64) reads lbo. The selftest's `mn-major sw128` rows
// check it on the GPU, with lbo != sbo in two arrangements, so that swapped roles would fail.
// The 32- and 64-byte swizzles are not emulated (the launch fails).
// Order of use: threads write the operands; wgmma_smem_fence() (their writes reach the async
// proxy that wgmma reads through) and a barrier; wgmma_fence_acc(d) and wgmma_fence() (also
// whenever d was written by ordinary instructions since the last wgmma); wgmma_ss calls;
// wgmma_commit() closes a group; wgmma_wait<n>() returns once at most n groups are pending,
// then wgmma_fence_acc(d) before d is read. Only then may d be read, or the operands of the
// retired groups be overwritten. (wgmma_stage and wgmma_ring do all of this.)
// The emulator runs a group's wgmma's when a wait retires it, writing d then, so a kernel that
// reads d too early computes wrong results on the CPU as well; it snapshots the operands at
// issue and fails the launch if they changed by the retirement. These layouts were read from
// the PTX ISA (and checked against CUTLASS); the selftest's `wgmma` rows check them on the GPU.
#pragma once
#include "ptx.cuh"

// The sm_90a cubin (NVRTC defines __CUDA_ARCH_FEAT_SM90_ALL) and the emulator have wgmma; the
// compute_80 PTX does not: there the helpers trap, and launchers must not pick such kernels.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VGG_HAS_WGMMA 1
#else
#define VGG_HAS_WGMMA 0
#endif

#ifndef __CUDA_ARCH__
#include <vector>
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif
namespace ptx_emu {

// The wgmma state below belongs to the OS thread that runs the block; its fibers reach it only
// inside warp collectives, one at a time, in an order the scheduler imposes. ThreadSanitizer
// sees fibers as threads, so each collective brackets its accesses with an acquire and a
// release of one address: that order, made visible (scripts/emu-tsan).
inline char wgmma_tsan_order;
struct WgmmaOrdered {
  WgmmaOrdered() {
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&wgmma_tsan_order);
#endif
  }
  ~WgmmaOrdered() {
#if defined(__SANITIZE_THREAD__)
    __tsan_release(&wgmma_tsan_order);
#endif
  }
};

struct WgmmaLane {
  float* d;
  unsigned long long da, db;
  int acc;
  unsigned warp;
  const char* file;  // where the wgmma was issued, for error messages
  int line;
};

// Whether an operand is K-major (trans 0) or M/N-major (trans 1).
struct WgmmaTrans {
  bool a, b;
};

// One issued wgmma of one warp: its lanes' accumulators, operands and N, where it was issued,
// and the bits of the operand elements it reads (its warp's 16 rows of A, then all of B) as they
// were at issue (wgmma_operands).
struct WgmmaOp {
  float* d[32];
  unsigned long long da, db;
  int acc, n;
  unsigned wg_warp;
  WgmmaTrans trans;
  const char* file;
  int line;
  std::vector<unsigned short> at_issue;
};

// Per warp of the running block: wgmma's issued but not committed, and committed groups not
// yet retired by a wait (oldest first). The blocks of a cluster share the OS thread, their
// fibers interleaved: each rank has its own 32 warps' state.
struct WgmmaWarp {
  unsigned long long block = 0;
  std::vector<WgmmaOp> open;
  std::vector<std::vector<WgmmaOp>> groups;
};

inline WgmmaWarp& wgmma_state(unsigned warp) {
  // A constant-initialized pointer: no lazy-initialization guard for fibers to race on.
  static thread_local WgmmaWarp* state = nullptr;
  if (!state) state = new WgmmaWarp[8 * 32];  // one per OS thread, kept for its lifetime
  WgmmaWarp& w = state[emu::cluster_rank() % 8 * 32 + warp % 32];
  if (w.block != emu::block_serial()) w = WgmmaWarp{emu::block_serial(), {}, {}};
  return w;
}

// An operand descriptor, decoded once per wgmma (the header's layouts; the 32- and 64-byte swizzles
// and a nonzero base offset are not modelled: the launch fails rather than read some other layout).
struct WgmmaDesc {
  unsigned long long raw;
  size_t start, lbo, sbo;
  bool sw128;
};

inline WgmmaDesc wgmma_decode(unsigned long long desc) {
  const unsigned swizzle = (unsigned)(desc >> 62), base_offset = (unsigned)(desc >> 49) & 7;
  if (swizzle > 1 || (swizzle == 1 && base_offset != 0))
    emu::fail("wgmma: descriptor 0x%016llx asks for a layout that is not emulated (only unswizzled ones, and "
              "K-major or M/N-major ones with the 128-byte swizzle and base offset 0)",
              desc);
  return {desc, (size_t)(desc & 0x3fff) << 4, (size_t)((desc >> 16) & 0x3fff) << 4,
          (size_t)((desc >> 32) & 0x3fff) << 4, swizzle == 1};
}

// The byte offset of element (mn, k) in dynamic shared memory, K-major or (mn_major) M/N-major.
inline size_t wgmma_offset(const WgmmaDesc& d, int mn, int k, bool mn_major) {
  if (d.sw128) {  // the header's 128-byte swizzle: chunk bits 4-6 ^= row bits 7-9 of the address
    const size_t logical = mn_major ? d.start + (mn / 64) * d.lbo + (k / 8) * d.sbo + (k % 8) * 128 + (mn % 64) * 2
                                    : d.start + (mn / 8) * d.sbo + (mn % 8) * 128 + (k / 8) * 16 + (k % 8) * 2;
    return logical ^ (((logical >> 7) & 7) << 4);
  }
  const size_t in_core = mn_major ? (k % 8) * 16 + (mn % 8) * 2 : (mn % 8) * 16 + (k % 8) * 2;
  return d.start + (mn / 8) * d.sbo + (k / 8) * d.lbo + in_core;
}

// How many operand elements one warp's wgmma reads: 16 rows of A (16 x 16) and B (16 x n).
constexpr int wgmma_operand_count(int n) { return 256 + 16 * n; }

// The bits of every operand element op reads, into out, a 16-byte chunk at a time: eight elements
// adjacent along the operand's major dimension (k for K-major, m / n for M/N-major) are one chunk
// in every layout above (the swizzle moves whole chunks). Chunk order: A's (its warp's 16 rows),
// then B's, each in the order of wgmma_index (wgmma_operand_count(op.n) in all). A chunk past the
// dynamic shared memory fails the launch.
inline void wgmma_operands(const WgmmaOp& op, unsigned short* out) {
  const unsigned char* smem = emu::dyn_smem();
  const size_t bytes = emu::dyn_smem_bytes();
  auto chunk = [&](const WgmmaDesc& d, int mn, int k, bool mn_major) {  // (mn, k) and the 7 after it
    const size_t off = wgmma_offset(d, mn, k, mn_major);
    if (off + 16 > bytes)
      emu::fail("wgmma: descriptor 0x%016llx reads bytes %zu to %zu of %zu of dynamic shared memory", d.raw, off,
                off + 15, bytes);
    std::memcpy(out, smem + off, 16);
    out += 8;
  };
  const WgmmaDesc a = wgmma_decode(op.da), b = wgmma_decode(op.db);
  const int m0 = 16 * (int)op.wg_warp, n = op.n;
  for (int k = 0; k < 16; k += op.trans.a ? 1 : 8)
    for (int r = 0; r < 16; r += op.trans.a ? 8 : 1) chunk(a, m0 + r, k, op.trans.a);
  for (int k = 0; k < 16; k += op.trans.b ? 1 : 8)
    for (int c = 0; c < n; c += op.trans.b ? 8 : 1) chunk(b, c, k, op.trans.b);
}

// Where wgmma_operands put element (mn, k) of an operand with `mns` rows (A: 16, B: N): chunks run
// over k outside mn, 8 apart along the major dimension.
inline int wgmma_index(int mn, int k, int mns, bool mn_major) {
  return mn_major ? 8 * (k * (mns / 8) + mn / 8) + mn % 8 : 8 * ((k / 8) * mns + mn) + k % 8;
}

// D (16 x N of this warp) = A B + (acc ? D : 0) from the operands' bits. D's element (r, c) lives in
// lane 4 (r % 8) + (c % 8) / 2, register 4 (c / 8) + 2 (r / 8) + c % 2 (the header's layout). Each
// element sums its 16 products in k order, one after another (row_madd, 16 columns at a time).
// Not instrumented under ThreadSanitizer: it reads only the snapshot and its own arrays, and
// writes the warp's accumulators inside the collective that WgmmaOrdered orders (instrumented, its
// arithmetic was most of the wgmma kernels' time under emu-tsan); the operands' shared-memory
// reads (wgmma_operands) stay instrumented.
template <int N>
#if defined(__SANITIZE_THREAD__)
__attribute__((no_sanitize_thread))
#endif
void wgmma_compute(const WgmmaOp& op, const unsigned short* bits) {
  float a[16][16], b[16][N];
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) a[r][k] = emu_half_bits_to_float(bits[wgmma_index(r, k, 16, op.trans.a)]);
  for (int k = 0; k < 16; ++k)
    for (int c = 0; c < N; ++c) b[k][c] = emu_half_bits_to_float(bits[256 + wgmma_index(c, k, N, op.trans.b)]);
  auto reg = [&](int r, int c) -> float& { return op.d[4 * (r % 8) + (c % 8) / 2][4 * (c / 8) + 2 * (r / 8) + c % 2]; };
  for (int r = 0; r < 16; ++r)
    for (int c0 = 0; c0 < N; c0 += 16) {
      float d[16];
      for (int i = 0; i < 16; ++i) d[i] = op.acc ? reg(r, c0 + i) : 0.f;
      row_madd<16, 16>(d, a[r], &b[0][c0], N);
      for (int i = 0; i < 16; ++i) reg(r, c0 + i) = d[i];
    }
}

// Computes op when a wait retires it. Hardware reads the operands at any time between issue and
// completion, so an operand that changed in between (a cp.async landing after the issue, a
// buffer refilled while the group was in flight) is a race there, whatever result the emulator
// would get: it fails here, naming the issuing site. Otherwise the operands are the snapshot.
inline void wgmma_run(const WgmmaOp& op) {
  unsigned short now[wgmma_operand_count(256)];
  wgmma_operands(op, now);
  if (std::memcmp(now, op.at_issue.data(), 2 * op.at_issue.size()) != 0)
    emu::fail("wgmma at %s:%d (descriptors 0x%016llx, 0x%016llx, warp %u of its warpgroup): its operands "
              "changed between its issue and the wait that retired it: a copy landed after the issue, or "
              "the buffer was rewritten while the group was in flight",
              op.file, op.line, op.da, op.db, op.wg_warp);
  switch (op.n) {
    case 64: return wgmma_compute<64>(op, now);
    case 128: return wgmma_compute<128>(op, now);
    case 256: return wgmma_compute<256>(op, now);
    default: emu::fail("wgmma: N %d (64, 128 or 256)", op.n);
  }
}

template <int N, bool TransA, bool TransB>
void wgmma_issue_collective(void* const* lanes, unsigned) {
  WgmmaOrdered ordered;
  const WgmmaLane& l0 = *static_cast<const WgmmaLane*>(lanes[0]);
  WgmmaOp op{{}, l0.da, l0.db, l0.acc, N, l0.warp % 4, {TransA, TransB}, l0.file, l0.line, {}};
  for (int l = 0; l < 32; ++l) {
    const WgmmaLane& in = *static_cast<const WgmmaLane*>(lanes[l]);
    if (in.da != op.da || in.db != op.db || (in.acc != 0) != (op.acc != 0))
      emu::fail("wgmma: lane %d's descriptors or scale-d differ from lane 0's (they must be uniform)", l);
    op.d[l] = in.d;
  }
  op.at_issue.resize(wgmma_operand_count(N));
  wgmma_operands(op, op.at_issue.data());
  wgmma_state(l0.warp).open.push_back(std::move(op));
}

inline void wgmma_commit_collective(void* const* lanes, unsigned) {
  WgmmaOrdered ordered;
  WgmmaWarp& w = wgmma_state(*static_cast<const unsigned*>(lanes[0]));
  w.groups.push_back(std::move(w.open));
  w.open.clear();
}

struct WgmmaWaitLane {
  unsigned warp;
  int pending;
};

inline void wgmma_wait_collective(void* const* lanes, unsigned) {
  WgmmaOrdered ordered;
  const WgmmaWaitLane& l0 = *static_cast<const WgmmaWaitLane*>(lanes[0]);
  WgmmaWarp& w = wgmma_state(l0.warp);
  while ((int)w.groups.size() > l0.pending) {
    for (const WgmmaOp& op : w.groups.front()) wgmma_run(op);
    w.groups.erase(w.groups.begin());
  }
}

inline unsigned warp_in_block() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) / 32; }

}  // namespace ptx_emu
#else
#if VGG_HAS_WGMMA
// One struct per N (the asm operand list differs); TransA / TransB are the instruction's
// imm-trans-a / imm-trans-b (1: the operand is M- / N-major).
template <int N>
struct WgmmaAsm;

template <>
struct WgmmaAsm<64> {
  template <int TransA, int TransB>
  static __device__ __forceinline__ void run(float (&d)[32], unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(acc), "n"(TransA), "n"(TransB));
  }
};

template <>
struct WgmmaAsm<128> {
  template <int TransA, int TransB>
  static __device__ __forceinline__ void run(float (&d)[64], unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(acc), "n"(TransA), "n"(TransB));
  }
};

template <>
struct WgmmaAsm<256> {
  template <int TransA, int TransB>
  static __device__ __forceinline__ void run(float (&d)[128], unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(acc), "n"(TransA), "n"(TransB));
  }
};
#endif  // VGG_HAS_WGMMA
#endif  // __CUDA_ARCH__

// The descriptor of a K-major, unswizzled operand at `smem` (dynamic shared memory, 16-byte
// aligned), lbo / sbo as above (multiples of 16 below 2^18). The start address is its low 14
// bits, in 16-byte units: desc + (bytes >> 4) describes the operand `bytes` further on, as long
// as the address stays below 2^18 (every shared-memory address does).
__device__ __forceinline__ unsigned long long wgmma_desc(const void* smem, unsigned lbo, unsigned sbo PTX_SITE_PARAMS) {
#ifdef __CUDA_ARCH__
  const unsigned addr = (unsigned)__cvta_generic_to_shared(smem);
#else
  const unsigned char* p = static_cast<const unsigned char*>(smem);
  if (p < emu::dyn_smem() || p >= emu::dyn_smem() + emu::dyn_smem_bytes())
    ptx_emu::fail("wgmma_desc", site_file, site_line, "operand outside dynamic shared memory", smem);
  ptx_emu::check_align(smem, 16, "wgmma_desc", site_file, site_line, "operand not 16-byte aligned");
  if (lbo % 16 || sbo % 16 || lbo >= (1u << 18) || sbo >= (1u << 18))
    ptx_emu::fail("wgmma_desc", site_file, site_line, "lbo / sbo not a multiple of 16 below 2^18", smem);
  const unsigned addr = (unsigned)(p - emu::dyn_smem());
#endif
  return (unsigned long long)((addr & 0x3ffff) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
         ((unsigned long long)(sbo >> 4) << 32);
}

// The shared-memory address of `p` (dynamic shared memory) that descriptors and the 128-byte
// swizzle work from: the GPU's shared window address, or on the emulator the offset into the
// block's dynamic shared memory (its start is 128-byte aligned there, 1024-byte aligned in
// practice on the GPU: kernels that need a 1024-byte boundary align from this address).
__device__ __forceinline__ unsigned wgmma_smem_addr(const void* p) {
#ifdef __CUDA_ARCH__
  return (unsigned)__cvta_generic_to_shared(p);
#else
  return (unsigned)(static_cast<const unsigned char*>(p) - emu::dyn_smem());
#endif
}

// Where the 128-byte swizzle puts the 16-byte chunk that is at `p` unswizzled: p with its
// address's chunk bits (4-6) XORed with its row bits (7-9). Write a K-major operand's row r,
// chunk c through wgmma_sw128(base + 128 r + 16 c) and describe it with wgmma_desc_sw128(base).
__device__ __forceinline__ unsigned char* wgmma_sw128(unsigned char* p) {
  const unsigned a = wgmma_smem_addr(p);
  return p + (int)((((a >> 7) & 7) ^ ((a >> 4) & 7)) - ((a >> 4) & 7)) * 16;
}

// The descriptor of a K-major operand with the 128-byte swizzle at `smem` (16-byte aligned; rows
// of 64 halves 128 bytes apart, groups of 8 rows `sbo` apart): swizzle mode 1, base offset 0
// (the pattern is the address's own), lbo unused (16).
__device__ __forceinline__ unsigned long long wgmma_desc_sw128(const void* smem, unsigned sbo PTX_SITE_PARAMS) {
  return wgmma_desc(smem, 16, sbo PTX_SITE_ARGS) | (1ull << 62);
}

// The descriptor of an M/N-major operand with the 128-byte swizzle at `smem` (the header's
// layout: `lbo` bytes between atoms of 64 M/N halves, `sbo` between groups of 8 K-rows; the
// atoms on 1024-byte boundaries of the shared address): swizzle mode 1, base offset 0.
__device__ __forceinline__ unsigned long long wgmma_desc_mn_sw128(const void* smem, unsigned lbo,
                                                                  unsigned sbo PTX_SITE_PARAMS) {
  return wgmma_desc(smem, lbo, sbo PTX_SITE_ARGS) | (1ull << 62);
}

// fence.proxy.async.shared::cta: this thread's shared-memory writes become visible to the async
// proxy (wgmma's operand reads). Follow it with a barrier before the wgmma.
__device__ __forceinline__ void wgmma_smem_fence() {
#if defined(__CUDA_ARCH__) && VGG_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// wgmma.fence.sync.aligned: orders this warp's register accesses before the wgmma's that follow.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH__) && VGG_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// setmaxnreg.{inc,dec}.sync.aligned.u32 (sm_90a): from here on this warpgroup's threads own kRegs
// registers each, taken from (kInc) or given back to (!kInc) the block's pool, so that a warp-
// specialised block can give its consumers more than the launch's even share while a producer
// keeps few (ptxas allocates the code after it within kRegs). All 4 warps of the warpgroup must
// execute it, so the block must be whole warpgroups: the emulator checks that and a whole warp,
// and does nothing else (its threads have no register budget). kRegs: 24 to 256, a multiple of 8.
template <int kRegs, bool kInc>
__device__ __forceinline__ void warpgroup_setmaxnreg(PTX_SITE_PARAMS_ONLY) {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg: 24 to 256 registers, a multiple of 8");
#ifdef __CUDA_ARCH__
#if VGG_HAS_WGMMA
  if constexpr (kInc) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
  }
#endif
#else
  if (blockDim.x * blockDim.y * blockDim.z % 128)
    ptx_emu::fail("setmaxnreg", site_file, site_line, "the block is not whole warpgroups", nullptr);
  emu::warp_collective(ptx_emu::kFullWarp, "setmaxnreg", site_file, site_line, nullptr, [](void* const*, unsigned) {});
#endif
}

// D (64 x N) = A * B + (acc ? D : 0), N = 64, 128 or 256 (see the header); TransA / TransB:
// A is M-major / B is N-major (the header's MN-major layout) instead of K-major.
template <int N, bool TransA = false, bool TransB = false>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], unsigned long long da, unsigned long long db,
                                         int acc PTX_SITE_PARAMS) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_ss: N is 64, 128 or 256");
#ifdef __CUDA_ARCH__
#if VGG_HAS_WGMMA
  WgmmaAsm<N>::template run<TransA ? 1 : 0, TransB ? 1 : 0>(d, da, db, acc);
#else
  __trap();
#endif
#else
  ptx_emu::WgmmaLane me{d, da, db, acc, ptx_emu::warp_in_block(), site_file, site_line};
  emu::warp_collective(ptx_emu::kFullWarp, "wgmma.mma_async", site_file, site_line, &me,
                       &ptx_emu::wgmma_issue_collective<N, TransA, TransB>);
#endif
}

// wgmma.commit_group.sync.aligned: the wgmma's issued since the last commit form a group.
__device__ __forceinline__ void wgmma_commit(PTX_SITE_PARAMS_ONLY) {
#ifdef __CUDA_ARCH__
#if VGG_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
#else
  unsigned warp = ptx_emu::warp_in_block();
  emu::warp_collective(ptx_emu::kFullWarp, "wgmma.commit_group", site_file, site_line, &warp,
                       &ptx_emu::wgmma_commit_collective);
#endif
}

// wgmma.wait_group.sync.aligned Pending: returns when at most Pending committed groups are
// still running; the others' results are in their d registers.
template <int Pending>
__device__ __forceinline__ void wgmma_wait(PTX_SITE_PARAMS_ONLY) {
#ifdef __CUDA_ARCH__
#if VGG_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#endif
#else
  ptx_emu::WgmmaWaitLane me{ptx_emu::warp_in_block(), Pending};
  emu::warp_collective(ptx_emu::kFullWarp, "wgmma.wait_group", site_file, site_line, &me,
                       &ptx_emu::wgmma_wait_collective);
#endif
}

// Pins this thread's accumulators at this point of the program (an empty asm that reads and
// writes each of them). The asm's of wgmma.fence / wait_group name memory, not registers, so
// the compiler may otherwise move plain uses of d (the zeroing before a fence, an epilogue's
// reads after a wait) across them, which the PTX ISA leaves undefined; on the emulator, built
// by the host compiler, such a move cannot show. CUTLASS's warpgroup_fence_operand does the same.
template <int M>
__device__ __forceinline__ void wgmma_fence_acc(float (&d)[M]) {
#if defined(__CUDA_ARCH__) && VGG_HAS_WGMMA
#pragma unroll
  for (int i = 0; i < M; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// The row (0..127 of a 2-warpgroup tile, 0..255 of a 4-warpgroup one) that this thread's
// accumulators d[4 j + 2 half + (0, 1)] belong to: 64 (warp / 4) + 16 (warp % 4) + lane / 4 +
// 8 half (the header's layout, warpgroup by warpgroup).
__device__ __forceinline__ int wgmma_acc_row(int half) {
  const int tid = (int)threadIdx.x, warp = tid >> 5;
  return 64 * (warp >> 2) + 16 * (warp & 3) + ((tid & 31) >> 2) + 8 * half;
}

// One pipeline stage for kBlocks m64 blocks of A a warpgroup, each with its accumulators d[b]:
// fence, kSteps x kBlocks wgmma's (block b's A a_block 16-byte units after block 0's), commit,
// then wait until only this stage's group is pending. da / db name the stage's first k16 step;
// each k16 step starts a_step / b_step 16-byte units further on.
template <int N, bool TransA, bool TransB, int kSteps, int kBlocks>
__device__ __forceinline__ void wgmma_stage_blocks(float (&d)[kBlocks][N / 2], unsigned long long da,
                                                   unsigned long long db, unsigned a_step, unsigned b_step,
                                                   unsigned a_block) {
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) wgmma_fence_acc(d[b]);
  wgmma_fence();
#pragma unroll
  for (int k16 = 0; k16 < kSteps; ++k16)
#pragma unroll
    for (int b = 0; b < kBlocks; ++b)
      wgmma_ss<N, TransA, TransB>(d[b], da + a_block * b + a_step * k16, db + b_step * k16, 1);
  wgmma_commit();
  wgmma_wait<1>();
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) wgmma_fence_acc(d[b]);
}

// wgmma_stage_blocks for one block (16 = 256 bytes: our unswizzled tiles' k16 step, core
// matrices along K 128 bytes apart).
template <int N, bool TransA, bool TransB, int kSteps>
__device__ __forceinline__ void wgmma_stage(float (&d)[N / 2], unsigned long long da, unsigned long long db,
                                            unsigned a_step = 16, unsigned b_step = 16) {
  wgmma_stage_blocks<N, TransA, TransB, kSteps, 1>(*reinterpret_cast<float(*)[1][N / 2]>(&d), da, db, a_step, b_step,
                                                   0);
}

// The main loop our wgmma kernels share: a ring of 4 shared-memory buffers, one pipeline stage
// each, filled by cp.async two stages ahead. Per stage s: wait for its copies, fence them to the
// async proxy, barrier (stage s is everyone's; stage s - 2's wgmma group has retired in every
// warp, so its buffer may be refilled); load(s + 2) and commit; step(s): the stage's wgmma group
// (wgmma_stage, which leaves only it pending) and whatever goes with it. Returns with every
// group retired and every copy landed. load(i) copies stage i into buffer i % 4 (it must skip
// i >= stages). The accumulators are step's: zero them before.
template <class Load, class Step>
__device__ __forceinline__ void wgmma_ring_loop(int stages, Load&& load, Step&& step) {
  load(0);
  cp_async_commit();
  load(1);
  cp_async_commit();
  for (int s = 0; s < stages; ++s) {
    cp_async_wait<1>();
    wgmma_smem_fence();
    __syncthreads();
    load(s + 2);
    cp_async_commit();
    step(s);
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
}

// wgmma_ring_loop over buffers of kBufBytes holding both operands: zeroes acc, then per stage
// visit(s) (work on stage s's buffer beside the copies, e.g. a bias-gradient sum) and the
// stage's group; da0 / db0 describe buffer 0's operands.
template <int N, bool TransA, bool TransB, int kSteps, int kBufBytes, class Load, class Visit>
__device__ __forceinline__ void wgmma_ring(float (&acc)[N / 2], int stages, unsigned long long da0,
                                           unsigned long long db0, Load&& load, Visit&& visit) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  wgmma_ring_loop(stages, load, [&](int s) {
    visit(s);
    const unsigned stage = (s % 4) * (kBufBytes >> 4);
    wgmma_stage<N, TransA, TransB, kSteps>(acc, da0 + stage, db0 + stage);
  });
  wgmma_fence_acc(acc);  // after the loop's last wait: the caller's epilogue reads acc
}
