// runtime.cpp: the emu device's block scheduler.
//
// One OS thread runs one block at a time. Every CUDA thread of the block is a fiber with
// its own stack; the scheduler switches into each runnable fiber in the launch's schedule
// order (index, reverse or seeded random) and the fiber runs until it finishes or waits:
// at __syncthreads (released when every thread of the block has arrived at the same call
// site) or at a warp collective (released when every lane of its mask has arrived). When
// no fiber can run and some have not finished, the kernel broke a CUDA rule (divergent
// barrier, a lane missing from a mask, a thread that exited before a barrier): the launch
// fails with a message naming the kernel and the call sites. A kernel that never waits
// simply runs its threads one after the other, a plain loop with two switches a thread.
#include "shim.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <string>
#include <deque>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#define EMU_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define EMU_NO_TSAN
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

extern "C" void emu_fiber_switch(void** save_sp, void* new_sp);
#if defined(__x86_64__)
// Saves the callee-saved registers of the System V ABI on the current stack, stores the
// stack pointer in *save_sp, and resumes the stack new_sp. ~10x cheaper than swapcontext,
// which makes a signal-mask system call on every switch.
asm(R"(
.text
.globl emu_fiber_switch
.type emu_fiber_switch,@function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_fiber_switch, .-emu_fiber_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#else
#error "the emu fiber switch is written for x86-64 only"
#endif

typedef void (*emu_kernel_fn)(void** args);

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // virtual; only touched pages are committed
constexpr size_t kGuardBytes = 4096;

enum class State { Ready, AtBarrier, AtWarp, AtMbarrier, Done };

// One cp.async in flight: the source bytes (read at issue, zero-filled past src_bytes) and
// where they land.
struct AsyncCopy {
    unsigned char* dst;
    unsigned bytes;
    unsigned char data[16];
};

// One bulk copy or TMA box not yet landed (it lands at a wait on its mbarrier, or at issue):
// its bytes as read at issue, and where they go.
struct BulkCopy {
    unsigned char* dst;
    std::vector<unsigned char> data;
};

// An mbarrier's state: arrivals a phase expects and still expects, transaction bytes still
// expected, phases completed, and the bulk copies on it not yet landed.
struct Mbarrier {
    unsigned count = 0, pending = 0;
    long long tx = 0;
    unsigned long long phase = 0;
    std::vector<BulkCopy> copies;
};

struct Fiber {
    void* sp = nullptr;
    unsigned char* stack = nullptr;  // lowest address of the mapping (guard page first)
    State state = State::Ready;
    uint3 tid{};
    unsigned linear = 0;
    std::vector<AsyncCopy> cp_open;                // cp.async issued since the last commit
    std::deque<std::vector<AsyncCopy>> cp_groups;  // committed, not yet landed, oldest first
    const void* mbar_wait = nullptr;               // the mbarrier it waits on (AtMbarrier)
    const char* wait_file = nullptr;
    int wait_line = 0;
#ifdef EMU_TSAN
    void* tsan = nullptr;
#endif
};

struct WarpSlot {
    unsigned mask = 0, arrived = 0;
    const char* op = nullptr;
    const char* file = nullptr;
    int line = 0;
    CollectiveFn fn = nullptr;
    void* data[32] = {};
};

struct Block {
    const char* kernel = "";
    emu_kernel_fn fn = nullptr;
    void** args = nullptr;
    std::vector<Fiber> fibers;
    unsigned nthreads = 0, done = 0, current = 0;
    int schedule = 0;
    uint64_t* rng = nullptr;  // the launch's random stream (random schedule)
    void* sched_sp = nullptr;
    // __syncthreads state of the current generation
    unsigned bar_arrived = 0, bar_gen = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    std::vector<WarpSlot> warps;
    std::unordered_map<const void*, Mbarrier> mbars;
    std::string error;
    bool failed = false;
    std::vector<unsigned char> smem_store;
    unsigned char* smem = nullptr;
    size_t smem_bytes = 0;
    unsigned long long serial = 0;  // block_serial(): distinct for every block run in the process
#ifdef EMU_TSAN
    void* tsan_sched = nullptr;
    char bar_sync[2];
    char block_start, block_end;
#endif
};

thread_local Block* g_block = nullptr;

Fiber& cur() { return g_block->fibers[g_block->current]; }

EMU_NO_TSAN void switch_to_scheduler() {
    Block* b = g_block;
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(b->tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
    emu_fiber_switch(&b->fibers[b->current].sp, b->sched_sp);
}

std::string site(const char* file, int line) {
    const char* base = std::strrchr(file, '/');
    return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}

std::string tid_str(const Fiber& f) {
    return "(" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) + "," + std::to_string(f.tid.z) + ")";
}

// Body of every fiber: run the kernel for this thread, then hand control back for good.
EMU_NO_TSAN void fiber_main() {
    Block* b = g_block;
#ifdef EMU_TSAN
    // Ordered after everything before the block (the launch's inputs, earlier blocks'
    // use of static shared memory), but not after the other fibers of this block.
    __tsan_acquire(&b->block_start);
#endif
    b->fn(b->args);
    cp_async_wait(-1);  // copies still in flight land, as they would on the GPU
    Fiber& f = cur();
    f.state = State::Done;
    b->done++;
    if (b->bar_arrived > 0)
        fail("thread %s exited while %u threads wait at __syncthreads (%s): a barrier some "
             "threads never reach",
             tid_str(f).c_str(), b->bar_arrived, site(b->bar_file, b->bar_line).c_str());
    WarpSlot& w = b->warps[f.linear / 32];
    if (w.arrived && ((w.mask >> (f.linear % 32)) & 1u))
        fail("lane %u exited while lanes wait for it at %s (%s, mask 0x%08x)", f.linear % 32, w.op,
             site(w.file, w.line).c_str(), w.mask);
#ifdef EMU_TSAN
    __tsan_release(&b->block_end);  // last, so every access of this fiber is ordered before it
#endif
    switch_to_scheduler();
    __builtin_unreachable();
}

// Stacks are kept per OS thread across launches: mapping them anew for every block would
// cost more than running most kernels.
thread_local std::vector<unsigned char*> t_stacks;

void prepare_stack(Fiber& f) {
    if (t_stacks.size() <= f.linear) t_stacks.resize(f.linear + 1, nullptr);
    f.stack = t_stacks[f.linear];
    if (!f.stack) {
        void* m = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "emu: cannot map a fiber stack\n");
            std::abort();
        }
        // A guard page turns a fiber stack overflow into a crash instead of silent corruption.
        mprotect(m, kGuardBytes, PROT_NONE);
        f.stack = static_cast<unsigned char*>(m);
        t_stacks[f.linear] = f.stack;
    }
    // Initial frame for emu_fiber_switch: mxcsr / fpu control word, six callee-saved
    // registers, then fiber_main as the return address, with the 16-byte alignment a
    // called function expects.
    auto* top = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);
    top -= 2;
    top[1] = 0;
    top[0] = reinterpret_cast<uint64_t>(&fiber_main);
    top -= 6;
    for (int i = 0; i < 6; ++i) top[i] = 0;
    top -= 1;
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    std::memcpy(top, csr, 8);
    f.sp = top;
}

EMU_NO_TSAN uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void order(std::vector<unsigned>& v, int schedule, uint64_t& rng) {
    for (unsigned i = 0; i < v.size(); ++i) v[i] = i;
    if (schedule == 1) std::reverse(v.begin(), v.end());
    if (schedule == 2)
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix(rng) % i]);
}

std::string waiting_report(Block& b) {
    std::string r;
    int shown = 0;
    for (auto& f : b.fibers) {
        if (f.state == State::Done || shown >= 4) continue;
        shown++;
        r += "; thread " + tid_str(f);
        if (f.state == State::AtBarrier)
            r += " waits at __syncthreads " + site(b.bar_file, b.bar_line);
        else if (f.state == State::AtWarp) {
            WarpSlot& w = b.warps[f.linear / 32];
            char m[16];
            std::snprintf(m, sizeof m, "%08x", w.mask);
            r += std::string(" waits at ") + w.op + " " + site(w.file, w.line) + " (mask 0x" + m + ")";
        } else if (f.state == State::AtMbarrier) {
            r += " waits on an mbarrier at " + site(f.wait_file, f.wait_line);
        }
    }
    return r;
}

// Orders the scheduler after everything the block's fibers did: each fiber released one
// of these addresses before it last switched out (at exit, a barrier, a warp collective or
// a failure), including fibers abandoned by a failed launch whose stacks are reused later.
void acquire_block(Block& b) {
#ifdef EMU_TSAN
    __tsan_acquire(&b.block_end);
    __tsan_acquire(&b.bar_sync[0]);
    __tsan_acquire(&b.bar_sync[1]);
    for (auto& w : b.warps) __tsan_acquire(&w);
#else
    (void)b;
#endif
}

// Runs one block to completion or failure. Returns false on a kernel error.
EMU_NO_TSAN bool run_block(Block& b, int schedule, uint64_t& rng) {
    g_block = &b;
    b.schedule = schedule;
    b.rng = &rng;
    b.done = 0;
    b.bar_arrived = 0;
    b.failed = false;
    b.mbars.clear();
    for (auto& w : b.warps) w = WarpSlot{};
    std::memset(b.smem, 0xFF, b.smem_bytes);
    unsigned i = 0;
    for (unsigned z = 0; z < blockDim.z; ++z)
        for (unsigned y = 0; y < blockDim.y; ++y)
            for (unsigned x = 0; x < blockDim.x; ++x, ++i) {
                Fiber& f = b.fibers[i];
                f.state = State::Ready;
                f.tid = {x, y, z};
                f.linear = i;
                f.cp_open.clear();  // a failed launch may have abandoned copies
                f.cp_groups.clear();
                prepare_stack(f);
            }
    std::vector<unsigned> ord(b.nthreads);
#ifdef EMU_TSAN
    __tsan_release(&b.block_start);
#endif
    // Index and reverse schedules are depth-first: after every switch back the scan restarts
    // at the first thread of the order, so the first warp runs ahead until a __syncthreads
    // holds it, then the next. That is the largest skew between warps a block can show, the
    // one that exposes a missing barrier between a shared-memory stage's readers and the
    // next stage's writers (warps in lockstep would hide it). The random schedule instead
    // interleaves: one pass over a fresh random order per round.
    const bool depth_first = schedule != 2;
    while (b.done < b.nthreads) {
        order(ord, schedule, rng);
        bool progress = false;
        for (size_t pos = 0; pos < ord.size(); ++pos) {
            unsigned idx = ord[pos];
            Fiber& f = b.fibers[idx];
            if (f.state != State::Ready) continue;
            progress = true;
            b.current = idx;
            threadIdx = f.tid;
#ifdef EMU_TSAN
            __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
            emu_fiber_switch(&b.sched_sp, f.sp);
            if (b.failed) {
                acquire_block(b);
                return false;
            }
            if (depth_first) pos = size_t(-1);  // restart the scan (++pos wraps to 0)
        }
        if (!progress) {
            b.error = "deadlock: no thread can proceed" + waiting_report(b);
            acquire_block(b);
            return false;
        }
    }
    acquire_block(b);
    for (auto& [bar, m] : b.mbars)
        if (!m.copies.empty()) {
            b.error = "the block ended with bulk copies on an mbarrier never waited for";
            return false;
        }
    return true;
}

}  // namespace

// ---- hooks called from kernel code (on a fiber) ----------------------------------------------

void fail(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Block* b = g_block;
    if (!b) {
        std::fprintf(stderr, "emu: %s\n", buf);
        std::abort();
    }
    b->error = buf;
    b->failed = true;
#ifdef EMU_TSAN
    __tsan_release(&b->block_end);
#endif
    switch_to_scheduler();  // never resumed: the launch is abandoned
    __builtin_unreachable();
}

unsigned lane_id() { return cur().linear % 32; }

unsigned char* dyn_smem() { return g_block->smem; }

size_t dyn_smem_bytes() { return g_block->smem_bytes; }

unsigned long long block_serial() { return g_block->serial; }

EMU_NO_TSAN void syncthreads(const char* file, int line) {
    Block* b = g_block;
    Fiber& f = cur();
    if (b->done > 0)
        fail("__syncthreads at %s reached after %u threads of the block exited: a barrier some "
             "threads never reach",
             site(file, line).c_str(), b->done);
    if (b->bar_arrived == 0) {
        b->bar_file = file;
        b->bar_line = line;
    } else if (b->bar_line != line || std::strcmp(b->bar_file, file) != 0) {
        fail("divergent __syncthreads: thread %s at %s while other threads wait at %s",
             tid_str(f).c_str(), site(file, line).c_str(), site(b->bar_file, b->bar_line).c_str());
    }
#ifdef EMU_TSAN
    __tsan_release(&b->bar_sync[b->bar_gen & 1]);
#endif
    unsigned gen = b->bar_gen;
    if (++b->bar_arrived == b->nthreads) {
        b->bar_arrived = 0;
        b->bar_gen++;
        for (auto& o : b->fibers)
            if (o.state == State::AtBarrier) o.state = State::Ready;
        // The last thread to arrive yields too, so that the schedule, not arrival order,
        // decides who runs first after the barrier (else "reverse" would still start with
        // whichever thread happened to arrive last).
        switch_to_scheduler();
    } else {
        f.state = State::AtBarrier;
        switch_to_scheduler();
    }
#ifdef EMU_TSAN
    __tsan_acquire(&b->bar_sync[gen & 1]);
#else
    (void)gen;
#endif
}

EMU_NO_TSAN void warp_collective(unsigned mask, const char* op, const char* file, int line,
                                 void* lane_data, CollectiveFn fn) {
    Block* b = g_block;
    Fiber& f = cur();
    unsigned lane = f.linear % 32, warp = f.linear / 32;
    if (!((mask >> lane) & 1u))
        fail("%s at %s: calling lane %u is not in mask 0x%08x", op, site(file, line).c_str(), lane, mask);
    unsigned warp_threads = std::min(32u, b->nthreads - warp * 32);
    unsigned present = warp_threads == 32 ? 0xffffffffu : ((1u << warp_threads) - 1);
    if (mask & ~present)
        fail("%s at %s: mask 0x%08x names lanes that do not exist (the warp has %u threads)", op,
             site(file, line).c_str(), mask, warp_threads);
    WarpSlot& w = b->warps[warp];
    if (w.arrived == 0) {
        w.mask = mask;
        w.op = op;
        w.file = file;
        w.line = line;
        w.fn = fn;
    } else if (w.mask != mask || w.line != line || std::strcmp(w.file, file) != 0) {
        fail("divergent warp collective: lane %u at %s %s (mask 0x%08x) while lanes wait at %s %s "
             "(mask 0x%08x)",
             lane, op, site(file, line).c_str(), mask, w.op, site(w.file, w.line).c_str(), w.mask);
    }
    for (unsigned l = 0; l < 32; ++l) {
        unsigned gl = warp * 32 + l;
        if (((mask >> l) & 1u) && gl < b->nthreads && b->fibers[gl].state == State::Done)
            fail("%s at %s: lane %u of mask 0x%08x has exited", op, site(file, line).c_str(), l, mask);
    }
    w.data[lane] = lane_data;
    w.arrived |= 1u << lane;
#ifdef EMU_TSAN
    __tsan_release(&w);
#endif
    if (w.arrived == mask) {
        void* data[32];
        for (unsigned l = 0; l < 32; ++l) data[l] = ((mask >> l) & 1u) ? w.data[l] : nullptr;
        CollectiveFn run = w.fn;
        w = WarpSlot{};
#ifdef EMU_TSAN
        __tsan_acquire(&w);  // the last lane reads every lane's data
#endif
        run(data, mask);
#ifdef EMU_TSAN
        __tsan_release(&w);  // ... and writes every lane's results
#endif
        for (unsigned l = 0; l < 32; ++l) {
            unsigned gl = warp * 32 + l;
            if (((mask >> l) & 1u) && gl < b->nthreads && b->fibers[gl].state == State::AtWarp)
                b->fibers[gl].state = State::Ready;
        }
        switch_to_scheduler();  // as at __syncthreads: the schedule picks who resumes first
    } else {
        f.state = State::AtWarp;
        switch_to_scheduler();
    }
#ifdef EMU_TSAN
    __tsan_acquire(&w);
#endif
}

// Whether a cp.async lands at issue. The random stream is the scheduler's, shared by every
// fiber of the block on this OS thread: not a race, but TSan cannot know (fiber switches carry
// no synchronisation, so that it can see the kernel's own races), hence no instrumentation here.
EMU_NO_TSAN bool cp_async_lands_now() {
    Block* b = g_block;
    return b->schedule == 0 || (b->schedule == 2 && (splitmix(*b->rng) & 1));
}

void cp_async_issue(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    AsyncCopy c{static_cast<unsigned char*>(dst), bytes, {}};
    if (src_bytes) std::memcpy(c.data, src, src_bytes);
    if (cp_async_lands_now())
        std::memcpy(c.dst, c.data, bytes);
    else
        cur().cp_open.push_back(c);
}

void cp_async_commit() {
    Fiber& f = cur();
    f.cp_groups.push_back(std::move(f.cp_open));
    f.cp_open.clear();
}

void cp_async_wait(int pending) {
    Fiber& f = cur();
    auto land = [](const std::vector<AsyncCopy>& g) {
        for (const AsyncCopy& c : g) std::memcpy(c.dst, c.data, c.bytes);
    };
    while (!f.cp_groups.empty() && (pending < 0 || f.cp_groups.size() > size_t(pending))) {
        land(f.cp_groups.front());
        f.cp_groups.pop_front();
    }
    if (pending < 0) {
        land(f.cp_open);
        f.cp_open.clear();
    }
}

namespace {
Mbarrier& mbarrier_at(void* bar, const char* op) {
    auto it = g_block->mbars.find(bar);
    if (it == g_block->mbars.end()) fail("%s on %p: no mbarrier was initialised there in this block", op, bar);
    return it->second;
}

// Lets the fibers waiting on `bar` look at it again.
void mbarrier_wake(const void* bar) {
    for (auto& f : g_block->fibers)
        if (f.state == State::AtMbarrier && f.mbar_wait == bar) f.state = State::Ready;
}

// Lands the barrier's bulk copies, taking their bytes off its tx-count.
void mbarrier_land(Mbarrier& m) {
    for (const BulkCopy& c : m.copies) {
        std::memcpy(c.dst, c.data.data(), c.data.size());
        m.tx -= (long long)c.data.size();
    }
    m.copies.clear();
}

// Completes the phase once every arrival and every expected byte is in.
EMU_NO_TSAN void mbarrier_try_complete(void* bar, Mbarrier& m) {
    if (m.pending != 0 || m.tx != 0) return;
    m.phase++;
    m.pending = m.count;
#ifdef EMU_TSAN
    __tsan_release(&m);
#endif
    mbarrier_wake(bar);
}

// The mbarrier table belongs to the OS thread that runs the block; its fibers reach it one at a
// time, in an order the scheduler imposes. ThreadSanitizer sees fibers as threads, so each hook
// brackets its bookkeeping with an acquire and a release of one address: that order, made
// visible (as wgmma.cuh's WgmmaOrdered does for the wgmma state).
struct MbarOrdered {
    MbarOrdered() {
#ifdef EMU_TSAN
        __tsan_acquire(&g_block->mbars);
#endif
    }
    ~MbarOrdered() {
#ifdef EMU_TSAN
        __tsan_release(&g_block->mbars);
#endif
    }
};

// Queues a bulk copy or TMA box on `bar`: it lands now (the index schedule, or at random) or
// when a wait needs it, whose fibers may look again.
EMU_NO_TSAN void mbarrier_queue(void* bar, BulkCopy c, const char* op) {
    MbarOrdered ordered;
    Mbarrier& m = mbarrier_at(bar, op);
    m.copies.push_back(std::move(c));
#ifdef EMU_TSAN
    __tsan_release(&m);  // the queued copy, before the waiter that lands it
#endif
    if (cp_async_lands_now()) {
        mbarrier_land(m);
        mbarrier_try_complete(bar, m);
    } else {
        mbarrier_wake(bar);
    }
}
}  // namespace

void mbarrier_init(void* bar, unsigned count) {
    MbarOrdered ordered;
    if (reinterpret_cast<uintptr_t>(bar) % 8) fail("mbarrier.init: %p is not 8-byte aligned", bar);
    if (count == 0 || count >= (1u << 20)) fail("mbarrier.init: count %u (1 to 2^20 - 1)", count);
    Mbarrier& m = g_block->mbars[bar];
    if (!m.copies.empty()) fail("mbarrier.init at %p while bulk copies on it are in flight", bar);
    m = Mbarrier{count, count, 0, 0, {}};
}

EMU_NO_TSAN void mbarrier_arrive_expect_tx(void* bar, unsigned bytes) {
    MbarOrdered ordered;
    Mbarrier& m = mbarrier_at(bar, "mbarrier.arrive.expect_tx");
    // pending reaches 0 only as the phase completes (then it is the count again), unless the
    // phase still waits for bytes: an arrival then belongs to no phase.
    if (m.pending == 0)
        fail("mbarrier.arrive on %p while its phase waits only for bytes: an arrival for the next phase "
             "before this one completed",
             bar);
    m.tx += bytes;
    if (m.tx >= (1ll << 20)) fail("mbarrier.arrive.expect_tx on %p: tx-count %lld past 2^20 - 1", bar, m.tx);
#ifdef EMU_TSAN
    __tsan_release(&m);  // the bytes expected, before the waiter that lands the copies reads them
#endif
    if (--m.pending == 0) mbarrier_wake(bar);  // a waiter may now land the copies
    mbarrier_try_complete(bar, m);
}

EMU_NO_TSAN void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, void* bar) {
    auto* d = static_cast<unsigned char*>(dst);
    if (bytes == 0 || bytes % 16 || reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16)
        fail("cp.async.bulk of %u bytes from %p to %p: sizes and addresses must be multiples of 16", bytes, src, dst);
    if (d < dyn_smem() || d + bytes > dyn_smem() + dyn_smem_bytes())
        fail("cp.async.bulk of %u bytes to %p: outside the block's dynamic shared memory", bytes, dst);
    // The source is read at issue, as a TMA box's is (a kernel may overwrite it after).
    const auto* s = static_cast<const unsigned char*>(src);
    mbarrier_queue(bar, {d, std::vector<unsigned char>(s, s + bytes)}, "cp.async.bulk");
}

// The emulator's tensor map (src/device/tensor_map.rs writes it): 16 words: magic, base, rank,
// swizzle (0 none, 3 the 128-byte pattern), element bytes, 5 dimensions (elements, innermost
// first), 4 strides (bytes, of dimensions 1 to 4), the box's 5 extents as 16-bit fields of
// words 14 and 15.
constexpr unsigned long long kTensorMapMagic = 0x564747544d415032ull;  // "VGGTMAP2"

EMU_NO_TSAN void tma_load(void* dst, const void* map, const int* coords, int rank, void* bar) {
    if (reinterpret_cast<uintptr_t>(map) % 64)
        fail("cp.async.bulk.tensor: tensor map at %p is not 64-byte aligned", map);
    const auto* w = static_cast<const unsigned long long*>(map);
    if (w[0] != kTensorMapMagic) fail("cp.async.bulk.tensor: %p holds no tensor map of the emulator", map);
    if ((long long)w[2] != rank)
        fail("cp.async.bulk.tensor.%dd through a tensor map of rank %llu", rank, (unsigned long long)w[2]);
    const auto* base = reinterpret_cast<const unsigned char*>(w[1]);
    const bool swizzle = w[3] == 3;
    const long long elem = w[4];
    long long dim[5] = {1, 1, 1, 1, 1}, stride[5] = {elem, 0, 0, 0, 0}, box[5] = {1, 1, 1, 1, 1}, at[5] = {};
    for (int i = 0; i < rank; ++i) {
        dim[i] = w[5 + i];
        if (i > 0) stride[i] = w[10 + i - 1];
        box[i] = (w[14 + i / 4] >> (16 * (i % 4))) & 0xffff;
        at[i] = coords[i];
    }
    const long long bytes = elem * box[0] * box[1] * box[2] * box[3] * box[4];
    auto* d = static_cast<unsigned char*>(dst);
    if (d < dyn_smem() || d + bytes > dyn_smem() + dyn_smem_bytes())
        fail("cp.async.bulk.tensor of %lld bytes to %p: outside the block's dynamic shared memory", bytes, dst);
    // Shared addresses are offsets into the dynamic shared memory, as wgmma's are (wgmma.cuh).
    if ((d - dyn_smem()) % (swizzle ? 1024 : 128))
        fail("cp.async.bulk.tensor to %p: shared address not %d-byte aligned", dst, swizzle ? 1024 : 128);
    BulkCopy c{d, std::vector<unsigned char>(bytes, 0)};
    // The box's elements in order, innermost first; off counts them in bytes.
    long long off = 0;
    for (long long i4 = 0; i4 < box[4]; ++i4)
        for (long long i3 = 0; i3 < box[3]; ++i3)
            for (long long i2 = 0; i2 < box[2]; ++i2)
                for (long long i1 = 0; i1 < box[1]; ++i1)
                    for (long long i0 = 0; i0 < box[0]; ++i0, off += elem) {
                        const long long x[5] = {at[0] + i0, at[1] + i1, at[2] + i2, at[3] + i3, at[4] + i4};
                        long long src = 0;
                        bool inside = true;
                        for (int k = 0; k < 5; ++k) {
                            inside = inside && x[k] >= 0 && x[k] < dim[k];
                            src += x[k] * stride[k];
                        }
                        if (!inside) continue;  // outside the tensor: zero
                        // The 128-byte swizzle as the address rule the wgmma emulation reads it
                        // by: 16-byte chunk bits 4-6 of the shared address XOR its row bits 7-9
                        // (d's address is a multiple of 1024, so the offset's bits are the
                        // address's).
                        const long long to = swizzle ? off ^ (((off >> 7) & 7) << 4) : off;
                        std::memcpy(&c.data[to], base + src, elem);
                    }
    mbarrier_queue(bar, std::move(c), "cp.async.bulk.tensor");
}

EMU_NO_TSAN void mbarrier_wait_parity(void* bar, unsigned parity, const char* file, int line) {
    for (;;) {
        {
            MbarOrdered ordered;  // released before the fiber switches out below
            Mbarrier& m = mbarrier_at(bar, "mbarrier.try_wait.parity");
            if ((m.phase & 1) != (parity & 1)) {
#ifdef EMU_TSAN
                __tsan_acquire(&m);
#endif
                return;
            }
            if (m.pending == 0 && !m.copies.empty()) {
#ifdef EMU_TSAN
                __tsan_acquire(&m);  // the producers' queued copies
#endif
                mbarrier_land(m);
                mbarrier_try_complete(bar, m);
                continue;
            }
            Fiber& f = cur();
            f.state = State::AtMbarrier;
            f.mbar_wait = bar;
            f.wait_file = file;
            f.wait_line = line;
        }
#ifdef EMU_TSAN
        // As at a barrier: what this fiber did is ordered before the block's end, even if it is
        // abandoned here (a wait that never completes) and its stack and the block are reused.
        __tsan_release(&g_block->block_end);
#endif
        switch_to_scheduler();
    }
}

void syncwarp_at(const char* file, int line, unsigned mask) {
    warp_collective(mask, "__syncwarp", file, line, nullptr, [](void* const*, unsigned) {});
}

void vote_compute(void* const* lanes, unsigned) {
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
        if (lanes[l] && static_cast<VoteLane*>(lanes[l])->pred) bits |= 1u << l;
    for (int l = 0; l < 32; ++l)
        if (lanes[l]) static_cast<VoteLane*>(lanes[l])->out = bits;
}

}  // namespace emu

// ---- the C ABI used by src/device/emu.rs ------------------------------------------------------

// Runs blocks [first, last) (linear block index, x fastest) of a launch on the calling OS
// thread. schedule: 0 index order, 1 reverse, 2 seeded random. Returns 0, or 1 with a
// message in err.
extern "C" EMU_NO_TSAN int vgg_emu_run_blocks(emu_kernel_fn fn, const char* kernel, const unsigned grid[3],
                                              const unsigned block[3], size_t smem_bytes, void** args,
                                              uint64_t first, uint64_t last, int schedule,
                                              uint64_t seed, char* err, size_t err_len) {
    using namespace emu;
#ifdef EMU_TSAN
    __tsan_acquire(args);  // see vgg_emu_sync
#endif
    Block b;
    b.kernel = kernel;
    b.fn = fn;
    b.args = args;
    b.nthreads = block[0] * block[1] * block[2];
    b.fibers.resize(b.nthreads);
    b.warps.resize((b.nthreads + 31) / 32);
    // A guard after the dynamic shared memory, so that a copy past its end is reported
    // (cp_async_issue) instead of corrupting the heap.
    b.smem_store.resize(smem_bytes + 128 + kSmemGuard);
    b.smem = b.smem_store.data() + (128 - reinterpret_cast<uintptr_t>(b.smem_store.data()) % 128) % 128;
    b.smem_bytes = smem_bytes;
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
#ifdef EMU_TSAN
    b.tsan_sched = __tsan_get_current_fiber();
    for (auto& f : b.fibers) f.tsan = __tsan_create_fiber(0);
#endif
    uint64_t rng = seed ^ (first * 0x9E3779B97F4A7C15ull);
    std::vector<uint64_t> blocks;
    for (uint64_t i = first; i < last; ++i) blocks.push_back(i);
    if (schedule == 1) std::reverse(blocks.begin(), blocks.end());
    if (schedule == 2)
        for (size_t i = blocks.size(); i > 1; --i) std::swap(blocks[i - 1], blocks[splitmix(rng) % i]);
    int rc = 0;
    for (uint64_t lin : blocks) {
        blockIdx = {unsigned(lin % grid[0]), unsigned(lin / grid[0] % grid[1]),
                    unsigned(lin / grid[0] / grid[1])};
        static std::atomic<unsigned long long> next_serial{1};
        b.serial = next_serial.fetch_add(1, std::memory_order_relaxed);
        if (!run_block(b, schedule, rng)) {
            std::snprintf(err, err_len, "kernel %s, block (%u,%u,%u): %s", kernel, blockIdx.x, blockIdx.y,
                          blockIdx.z, b.error.c_str());
            rc = 1;
            break;
        }
    }
    g_block = nullptr;
#ifdef EMU_TSAN
    for (auto& f : b.fibers) __tsan_destroy_fiber(f.tsan);
    __tsan_release(args);
#endif
    return rc;
}

// The launching thread hands the launch to rayon's workers through Rust code that TSan does
// not see: it calls this with release=1 before and release=0 after, on the argument array
// that every worker acquires / releases, so the hand-over is an edge TSan knows about.
extern "C" void vgg_emu_sync(void* token, int release) {
#ifdef EMU_TSAN
    if (release)
        __tsan_release(token);
    else
        __tsan_acquire(token);
#else
    (void)token;
    (void)release;
#endif
}
