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
//
// Thread-block clusters: the blocks of one cluster run together on one OS thread, as one pool
// of fibers in the schedule's order (block 0's threads first under index, the last block's last
// under reverse, one random permutation of all of them a round under random), so that a cluster
// barrier, or a wait on an mbarrier another block arrives on, can make progress. A launch
// without a cluster runs each block as a cluster of one, which is exactly the block scheduler
// above. Everything a block owns follows the fiber that runs: the current block (g_block),
// blockIdx, its barriers, warps, mbarriers, dynamic shared memory and its poisoning; cp.async
// groups are the fiber's own. What blocks of a cluster do to each other (barrier.cluster,
// mapa, remote arrivals, multicast copies, the checks on a block's exit) is cluster.cpp's.
// Static __shared__ is a thread_local of the OS thread (shim.h), so the blocks of a cluster share
// it: cluster kernels keep every shared variable in dynamic shared memory (VGG_DYN_SHARED).
#include "runtime.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>

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

namespace emu::rt {

thread_local Block* g_block = nullptr;

namespace {
constexpr size_t kStackBytes = 256 * 1024;  // virtual; only touched pages are committed
constexpr size_t kGuardBytes = 4096;
}  // namespace

bool in_stack_guard(const Fiber& f, const void* a) {
    auto* p = static_cast<const unsigned char*>(a);
    return f.stack && p >= f.stack && p < f.stack + kGuardBytes;
}

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

std::string tid_str(const Fiber& f) { return idx_str(f.tid); }

std::string idx_str(const uint3& i) {
    return "(" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
}

namespace {

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
    cluster_thread_exit(*b->cluster, f);
#ifdef EMU_TSAN
    __tsan_release(&b->block_end);  // last, so every access of this fiber is ordered before it
#endif
    switch_to_scheduler();
    __builtin_unreachable();
}

// Stacks are kept per OS thread across launches: mapping them anew for every block would
// cost more than running most kernels. A cluster's blocks take consecutive runs of them.
thread_local std::vector<unsigned char*> t_stacks;

void prepare_stack(Fiber& f, unsigned slot) {
    if (t_stacks.size() <= slot) t_stacks.resize(slot + 1, nullptr);
    f.stack = t_stacks[slot];
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
        t_stacks[slot] = f.stack;
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

// The first waiting threads and what they wait for: 4 of a lone block, 2 a block of a cluster
// (whose blocks' threads are named with their block, so that every block's waits show).
std::string waiting_report(const Cluster& c) {
    const bool one = c.blocks.size() == 1;
    std::string r;
    for (const Block& b : c.blocks) {
        int shown = 0;
        for (auto& f : b.fibers) {
            if (f.state == State::Done || shown >= (one ? 4 : 2)) continue;
            shown++;
            r += one ? "; thread " + tid_str(f) : "; block " + idx_str(b.idx) + " thread " + tid_str(f);
            if (f.state == State::AtBarrier)
                r += " waits at __syncthreads " + site(b.bar_file, b.bar_line);
            else if (f.state == State::AtWarp) {
                const WarpSlot& w = b.warps[f.linear / 32];
                char m[16];
                std::snprintf(m, sizeof m, "%08x", w.mask);
                r += std::string(" waits at ") + w.op + " " + site(w.file, w.line) + " (mask 0x" + m + ")";
            } else if (f.state == State::AtMbarrier) {
                r += " waits on an mbarrier at " + site(f.wait_file, f.wait_line);
            } else if (f.state == State::AtCluster) {
                r += cluster_waits(c, f);
            }
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

void acquire_cluster(Cluster& c) {
    for (Block& b : c.blocks) acquire_block(b);
#ifdef EMU_TSAN
    __tsan_acquire(&c.bar_sync[0]);
    __tsan_acquire(&c.bar_sync[1]);
#endif
}

// A block's state at its start: no thread done or waiting, no mbarrier, shared memory poisoned,
// fresh fiber frames on the OS thread's stacks from `slot` on.
EMU_NO_TSAN void reset_block(Block& b, unsigned slot, int schedule, uint64_t& rng) {
    b.schedule = schedule;
    b.rng = &rng;
    b.done = 0;
    b.bar_arrived = 0;
    b.failed = false;
    b.exited = false;
    b.cl_waited = 0;
    b.remote.clear();
    b.mbars.clear();
    for (auto& w : b.warps) w = WarpSlot{};
    // The first bytes of the guard after it too, which block_exit checks for stores past the end.
    std::memset(b.smem, 0xFF, b.smem_bytes + kSmemCheck);
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
                f.cl_arrivals = f.cl_waited = 0;
                prepare_stack(f, slot + i);
            }
#ifdef EMU_TSAN
    __tsan_release(&b.block_start);
#endif
}

// What a block checks as its last thread exits (the running block's error when it fails).
bool block_exit(Cluster& c, Block& b) {
    acquire_block(b);
    for (auto& [bar, m] : b.mbars)
        if (!m.copies.empty()) {
            b.error = "the block ended with bulk copies on an mbarrier never waited for";
            return false;
        }
    // A store past the end of dynamic shared memory (the GPU faults on one: an out-of-range shared
    // address) lands in the guard after it; its first kSmemCheck bytes still hold the fill unless
    // one did. Which thread is not known here: the bytes are.
    static const std::vector<unsigned char> fill(kSmemCheck, 0xFF);
    const unsigned char* g = b.smem + b.smem_bytes;
    if (std::memcmp(g, fill.data(), kSmemCheck) != 0) {
        size_t first = 0, last = kSmemCheck - 1;
        while (g[first] == 0xFF) ++first;
        while (g[last] == 0xFF) --last;
        b.error = "a thread stored past the end of the block's " + std::to_string(b.smem_bytes) +
                  " bytes of dynamic shared memory (bytes " + std::to_string(first) + " to " + std::to_string(last) +
                  " past it)";
        return false;
    }
    return cluster_block_exit(c, b);
}

// "block (x,y,z)", and its rank when it has a cluster.
std::string where(const Cluster& c, const Block& b) {
    std::string w = "block " + idx_str(b.idx);
    if (c.blocks.size() > 1)
        w += ", rank " + std::to_string(b.rank) + " of a cluster of " + std::to_string(c.blocks.size());
    return w;
}

// Runs one cluster (or lone block) to completion or failure. Returns false on a kernel error,
// with `err` naming the block (or the cluster, for a deadlock) and what went wrong.
EMU_NO_TSAN bool run_cluster(Cluster& c, int schedule, uint64_t& rng, std::string& err) {
    const unsigned n = c.blocks[0].nthreads;
    if (c.blocks.size() > 1) cluster_arenas_reset(c);
    for (Block& b : c.blocks) {
        g_block = &b;
        reset_block(b, b.rank * n, schedule, rng);
    }
    c.done = c.arrived = c.gone = 0;
    c.phase = 0;
    std::vector<unsigned> ord(c.nthreads);
    // Index and reverse schedules are depth-first: after every switch back the scan restarts
    // at the first thread of the order, so the first warp runs ahead until a __syncthreads
    // holds it, then the next. That is the largest skew between warps a block can show, the
    // one that exposes a missing barrier between a shared-memory stage's readers and the
    // next stage's writers (warps in lockstep would hide it). The random schedule instead
    // interleaves: one pass over a fresh random order per round. A cluster's threads are one
    // order: block 0's first (index), or all of them shuffled together (random).
    const bool depth_first = schedule != 2, lone = c.blocks.size() == 1;
    while (c.done < c.nthreads) {
        order(ord, schedule, rng);
        bool progress = false;
        // The order's first threads that are done: a depth-first scan restarts past them (it
        // would only skip them: a thread done stays done), so that a block of threads that
        // never wait costs a scan step a thread rather than a scan of the block.
        size_t done_front = 0;
        for (size_t pos = 0; pos < ord.size(); ++pos) {
            Fiber& f = *c.flat[ord[pos]];
            if (f.state != State::Ready) continue;
            const unsigned rank = lone ? 0 : ord[pos] / n;  // no division on the common path
            Block& b = c.blocks[rank];
            const unsigned idx = ord[pos] - rank * n;
            progress = true;
            g_block = &b;
            b.current = idx;
            threadIdx = f.tid;
            blockIdx = b.idx;
#ifdef EMU_TSAN
            __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
            c.in_fiber = true;
            c.wake_lo = ~0u;
            c.wake_hi = 0;
            emu_fiber_switch(&b.sched_sp, f.sp);
            c.in_fiber = false;
            if (b.failed || (b.done == n && !b.exited && !block_exit(c, b))) {
                acquire_cluster(c);  // before reading what the fibers wrote (b.error: emu::fail)
                err = where(c, b) + ": " + b.error;
                return false;
            }
            if (depth_first) {
                // The scan restarts at the first thread of the order that is not done, and would
                // find the first Ready one: no earlier than this fiber (the threads it passed
                // were waiting) unless this fiber woke earlier ones. Index order: position = flat
                // index; reverse: the last flat index woken comes first.
                while (done_front < ord.size() && c.flat[ord[done_front]]->state == State::Done) ++done_front;
                size_t next = pos;
                if (c.wake_lo <= c.wake_hi) next = std::min<size_t>(next, schedule == 0 ? c.wake_lo : ord.size() - 1 - c.wake_hi);
                pos = std::max(next, done_front) - 1;  // resume there (++pos wraps size_t(-1) to 0)
            }
        }
        if (!progress) {
            acquire_cluster(c);  // before reading the fibers' wait sites
            const Block &first = c.blocks.front(), &last = c.blocks.back();
            err = c.blocks.size() == 1 ? where(c, first)
                                       : "cluster of blocks " + idx_str(first.idx) + " to " + idx_str(last.idx);
            err += ": deadlock: no thread can proceed" + waiting_report(c);
            return false;
        }
    }
    acquire_cluster(c);
    return true;
}

}  // namespace

}  // namespace emu::rt

namespace emu {
using namespace rt;

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
    } else if (b->bar_line != line || (b->bar_file != file && std::strcmp(b->bar_file, file) != 0)) {
        fail("divergent __syncthreads: thread %s at %s while other threads wait at %s",
             tid_str(f).c_str(), site(file, line).c_str(), site(b->bar_file, b->bar_line).c_str());
    }
    unsigned gen = b->bar_gen;
    if (++b->bar_arrived == b->nthreads) {
        b->bar_arrived = 0;
        b->bar_gen++;
        for (unsigned i = 0; i < b->nthreads; ++i)
            if (b->fibers[i].state == State::AtBarrier) wake(*b, i);
    } else {
        f.state = State::AtBarrier;
    }
#ifdef EMU_TSAN
    // After this fiber's last access of the block before it parks: a launch abandoned while it
    // waits (another thread failed) then frees the block ordered after all of them.
    __tsan_release(&b->bar_sync[gen & 1]);
#endif
    // The last thread to arrive yields too, so that the schedule, not arrival order, decides who
    // runs first after the barrier (else "reverse" would still start with whichever thread
    // happened to arrive last).
    switch_to_scheduler();
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
    } else if (w.mask != mask || w.line != line || (w.file != file && std::strcmp(w.file, file) != 0)) {
        fail("divergent warp collective: lane %u at %s %s (mask 0x%08x) while lanes wait at %s %s "
             "(mask 0x%08x)",
             lane, op, site(file, line).c_str(), mask, w.op, site(w.file, w.line).c_str(), w.mask);
    }
    for (unsigned l = 0; b->done != 0 && l < 32; ++l) {  // (no thread of the block has exited: none to find)
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
            if (((mask >> l) & 1u) && gl < b->nthreads && b->fibers[gl].state == State::AtWarp) wake(*b, gl);
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

namespace rt {
// Whether a cp.async lands at issue. The random stream is the scheduler's, shared by every
// fiber of the block on this OS thread: not a race, but TSan cannot know (fiber switches carry
// no synchronisation, so that it can see the kernel's own races), hence no instrumentation here.
EMU_NO_TSAN bool cp_async_lands_now() {
    Block* b = g_block;
    return b->schedule == 0 || (b->schedule == 2 && (splitmix(*b->rng) & 1));
}
}  // namespace rt

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

namespace rt {
Mbarrier& mbarrier_at(Block& b, void* bar, const char* op) {
    auto it = b.mbars.find(bar);
    if (it == b.mbars.end()) fail("%s on %p: no mbarrier was initialised there in this block", op, bar);
    return it->second;
}

namespace {
// Lets the fibers of `b` waiting on `bar` look at it again.
void mbarrier_wake(Block& b, const void* bar) {
    TsanIgnore bookkeeping;  // fibers' states, which a peer block's arrival also writes
    for (unsigned i = 0; i < b.nthreads; ++i)
        if (b.fibers[i].state == State::AtMbarrier && b.fibers[i].mbar_wait == bar) wake(b, i);
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
EMU_NO_TSAN void mbarrier_try_complete(Block& b, void* bar, Mbarrier& m) {
    if (m.pending != 0 || m.tx != 0) return;
    m.phase++;
    m.pending = m.count;
#ifdef EMU_TSAN
    __tsan_release(&m);
#endif
    mbarrier_wake(b, bar);
}

// The mbarrier table belongs to the OS thread that runs the block; its fibers reach it one at a
// time, in an order the scheduler imposes. ThreadSanitizer sees fibers as threads, so each hook
// brackets its bookkeeping with an acquire and a release of one address: that order, made
// visible (as wgmma.cuh's WgmmaOrdered does for the wgmma state). `b`: the table's block (the
// running one, or another of its cluster).
struct MbarOrdered {
    Block& b;
    explicit MbarOrdered(Block& b_) : b(b_) {
#ifdef EMU_TSAN
        __tsan_acquire(&b.mbars);
#endif
    }
    ~MbarOrdered() {
#ifdef EMU_TSAN
        __tsan_release(&b.mbars);
#endif
    }
};
}  // namespace

// Queues a bulk copy or TMA box on `bar` of block `b`: it lands now (the index schedule, or at
// random) or when a wait needs it, whose fibers may look again.
EMU_NO_TSAN void mbarrier_queue(Block& b, void* bar, BulkCopy c, const char* op) {
    MbarOrdered ordered(b);
    Mbarrier& m = mbarrier_at(b, bar, op);
    m.copies.push_back(std::move(c));
#ifdef EMU_TSAN
    __tsan_release(&m);  // the queued copy, before the waiter that lands it
#endif
    if (cp_async_lands_now()) {
        mbarrier_land(m);
        mbarrier_try_complete(b, bar, m);
    } else {
        mbarrier_wake(b, bar);
    }
}

// One arrival on `bar` of block `b`, announcing `bytes` more to come.
EMU_NO_TSAN void mbarrier_arrive_on(Block& b, void* bar, unsigned bytes) {
    MbarOrdered ordered(b);
    Mbarrier& m = mbarrier_at(b, bar, "mbarrier.arrive.expect_tx");
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
    if (--m.pending == 0) mbarrier_wake(b, bar);  // a waiter may now land the copies
    mbarrier_try_complete(b, bar, m);
}
}  // namespace rt

void mbarrier_init(void* bar, unsigned count) {
    MbarOrdered ordered(*g_block);
    if (reinterpret_cast<uintptr_t>(bar) % 8) fail("mbarrier.init: %p is not 8-byte aligned", bar);
    if (count == 0 || count >= (1u << 20)) fail("mbarrier.init: count %u (1 to 2^20 - 1)", count);
    cluster_check_dynamic(bar, "mbarrier.init");
    Mbarrier& m = g_block->mbars[bar];
    if (!m.copies.empty()) fail("mbarrier.init at %p while bulk copies on it are in flight", bar);
    m = Mbarrier{count, count, 0, 0, {}, cur().cl_arrivals, 0};
}

void mbarrier_arrive_expect_tx(void* bar, unsigned bytes) { mbarrier_arrive_on(*g_block, bar, bytes); }

EMU_NO_TSAN void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, void* bar) {
    auto* d = static_cast<unsigned char*>(dst);
    if (bytes == 0 || bytes % 16 || reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16)
        fail("cp.async.bulk of %u bytes from %p to %p: sizes and addresses must be multiples of 16", bytes, src, dst);
    if (d < dyn_smem() || d + bytes > dyn_smem() + dyn_smem_bytes())
        fail("cp.async.bulk of %u bytes to %p: outside the block's dynamic shared memory", bytes, dst);
    // The source is read at issue, as a TMA box's is (a kernel may overwrite it after).
    const auto* s = static_cast<const unsigned char*>(src);
    mbarrier_queue(*g_block, bar, {d, std::vector<unsigned char>(s, s + bytes)}, "cp.async.bulk");
}

// The emulator's tensor map (src/device/tensor_map.rs writes it): 16 words: magic, base, rank,
// swizzle (0 none, 3 the 128-byte pattern), element bytes, 5 dimensions (elements, innermost
// first), 4 strides (bytes, of dimensions 1 to 4), the box's 5 extents as 16-bit fields of
// words 14 and 15.
constexpr unsigned long long kTensorMapMagic = 0x564747544d415032ull;  // "VGGTMAP2"

EMU_NO_TSAN BulkCopy rt::tma_box(void* dst, const void* map, const int* coords, int rank) {
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
    return c;
}

void tma_load(void* dst, const void* map, const int* coords, int rank, void* bar) {
    mbarrier_queue(*g_block, bar, tma_box(dst, map, coords, rank), "cp.async.bulk.tensor");
}

EMU_NO_TSAN void mbarrier_wait_parity(void* bar, unsigned parity, const char* file, int line) {
    for (;;) {
        {
            MbarOrdered ordered(*g_block);  // released before the fiber switches out below
            Mbarrier& m = mbarrier_at(*g_block, bar, "mbarrier.try_wait.parity");
            if ((m.phase & 1) != (parity & 1)) {
#ifdef EMU_TSAN
                __tsan_acquire(&m);
#endif
                m.observed = std::max(m.observed, m.phase);
                return;
            }
            if (m.pending == 0 && !m.copies.empty()) {
#ifdef EMU_TSAN
                __tsan_acquire(&m);  // the producers' queued copies
#endif
                mbarrier_land(m);
                mbarrier_try_complete(*g_block, bar, m);
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
// thread, `cluster` consecutive blocks along x together (first and last are multiples of it,
// and so is grid x). schedule: 0 index order, 1 reverse, 2 seeded random. Returns 0, or 1 with
// a message in err.
extern "C" EMU_NO_TSAN int vgg_emu_run_blocks(emu_kernel_fn fn, const char* kernel, const unsigned grid[3],
                                              const unsigned block[3], size_t smem_bytes, void** args,
                                              uint64_t first, uint64_t last, unsigned cluster, int schedule,
                                              uint64_t seed, char* err, size_t err_len,
                                              uint64_t* fault_addr) {
    using namespace emu::rt;
#ifdef EMU_TSAN
    __tsan_acquire(args);  // see vgg_emu_sync
#endif
    Cluster c;
    c.blocks.resize(cluster);
    for (unsigned r = 0; r < cluster; ++r) {
        Block& b = c.blocks[r];
        b.kernel = kernel;
        b.fn = fn;
        b.args = args;
        b.nthreads = block[0] * block[1] * block[2];
        b.fibers.resize(b.nthreads);
        b.warps.resize((b.nthreads + 31) / 32);
        b.cluster = &c;
        b.rank = r;
#ifdef EMU_TSAN
        b.tsan_sched = __tsan_get_current_fiber();
        for (auto& f : b.fibers) f.tsan = __tsan_create_fiber(0);
#endif
    }
    c.nthreads = cluster * c.blocks[0].nthreads;
    for (Block& b : c.blocks)
        for (Fiber& f : b.fibers) c.flat.push_back(&f);
    if (cluster > 1) {
        cluster_arenas(c, smem_bytes);
    } else {
        // A guard after the dynamic shared memory, so that a copy past its end is reported
        // (cp_async_issue) instead of corrupting the heap.
        Block& b = c.blocks[0];
        b.smem_store.resize(smem_bytes + 128 + emu::kSmemGuard);
        b.smem = b.smem_store.data() + (128 - reinterpret_cast<uintptr_t>(b.smem_store.data()) % 128) % 128;
        b.smem_bytes = smem_bytes;
    }
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    uint64_t rng = seed ^ (first * 0x9E3779B97F4A7C15ull);
    std::vector<uint64_t> starts;
    for (uint64_t i = first; i < last; i += cluster) starts.push_back(i);
    if (schedule == 1) std::reverse(starts.begin(), starts.end());
    if (schedule == 2)
        for (size_t i = starts.size(); i > 1; --i) std::swap(starts[i - 1], starts[splitmix(rng) % i]);
    int rc = 0;
    std::string msg;
    for (uint64_t lin0 : starts) {
        for (Block& b : c.blocks) {
            const uint64_t lin = lin0 + b.rank;
            b.idx = {unsigned(lin % grid[0]), unsigned(lin / grid[0] % grid[1]), unsigned(lin / grid[0] / grid[1])};
            static std::atomic<unsigned long long> next_serial{1};
            b.serial = next_serial.fetch_add(1, std::memory_order_relaxed);
        }
        if (!run_cluster(c, schedule, rng, msg)) {
            std::snprintf(err, err_len, "kernel %s, %s", kernel, msg.c_str());
            *fault_addr = reinterpret_cast<uint64_t>(take_global_fault());
            rc = 1;
            break;
        }
    }
    g_block = nullptr;
    if (cluster > 1) cluster_arenas_free(c);
#ifdef EMU_TSAN
    for (Block& b : c.blocks)
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
