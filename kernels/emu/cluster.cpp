// cluster.cpp: what the blocks of a thread-block cluster do to each other on the emu device
// (kernels/cluster.cuh's primitives; runtime.cpp runs the cluster's fibers together).
//
// The model, after the PTX ISA ("Cluster of Cooperative Thread Arrays", "barrier.cluster",
// "mapa", "mbarrier" with .shared::cluster operands, "cp.async.bulk.tensor" with
// .multicast::cluster, "exit") and the CUDA C++ Programming Guide ("Thread Block Clusters",
// "Distributed Shared Memory"):
// - a cluster is `n` consecutive blocks along x (1-D clusters only); a block's rank
//   (%cluster_ctarank) is blockIdx.x % n; a launch without a cluster is a cluster of one;
// - barrier.cluster: every thread arrives once a phase and may then wait for the phase; a
//   thread that exited counts as arrived (PTX `exit`: exiting threads release a barrier they
//   alone hold up). Arriving again before waiting, or waiting without arriving, fails;
// - mapa: an address in this block's dynamic shared memory, moved to the same offset in
//   block `rank`'s; the result is an ordinary host pointer, loads and stores through it plain;
// - an mbarrier arrive on another block's barrier (mapa'd, .release.cluster);
// - a multicast TMA load: the box, read once, lands at the same offset in every block of the
//   cta mask and completes its bytes on the mbarrier at the same offset in each, each landing
//   when that block's wait needs it (or at issue, as the schedule decides for any bulk copy).
// Each CUDA rule below fails the launch with a message naming it:
// - ranks in the cluster, a cta mask naming only its blocks; shared addresses in dynamic shared
//   memory (the emulator's static __shared__ is one variable for all blocks of a cluster);
// - no block's shared memory used by another before a cluster barrier (the Guide: every block
//   must have started; checked at mapa, and for mbarriers through their init below);
// - another block's mbarrier initialised, with a cluster barrier between its init (and
//   fence_mbarrier_init) and the use;
// - no block exiting while another may still use its shared memory. Every use of a block's
//   shared memory by another (mapa, remote arrive, multicast) must be ordered before the block's
//   exit by a cluster barrier phase one of its threads waited for (the use preceding the user's
//   next arrival), or, for an mbarrier, by a wait of the block that saw the phase the use counted
//   in complete: checked as each block exits, the same under every schedule. And any access
//   after the exit itself faults: an exited block's shared memory is made inaccessible while the
//   rest of its cluster runs, and the fault handler below ends the launch naming the access.
// Not modelled: memory ordering (the emulator is sequentially consistent, so a missing fence or
// a relaxed arrive shows on the GPU only), .aligned (warp convergence at barrier.cluster),
// clusters along y or z and sizes past the portable 8, bulk copies between blocks' shared
// memories, and waiting by polling another block's memory (a fiber yields only at a barrier or
// a wait: a spin loop on a flag another block sets never ends).
#include "runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace emu::rt {

const char* const kExitRule =
    "a block must not exit while another block of its cluster may still use its shared memory: end the kernel "
    "with cluster_sync";

namespace {

bool in_dynamic(const Block& b, const void* p) {
    auto* q = static_cast<const unsigned char*>(p);
    return q >= b.smem && q < b.smem + b.smem_bytes;
}

void dynamic_or_fail(const Block& b, const void* p, const char* op, const char* file, int line) {
    if (!in_dynamic(b, p))
        fail("%s at %s: %p is not in the block's dynamic shared memory (cluster kernels keep their shared state "
             "there: the emulator's static __shared__ is one variable for all blocks of a cluster)",
             op, site(file, line).c_str(), p);
}

// Completes the barrier.cluster phase once every thread has arrived or exited.
void cluster_try_complete(Cluster& c) {
    TsanIgnore bookkeeping;
    if (c.arrived == 0 || c.arrived + c.gone < c.nthreads) return;
    c.phase++;
    c.arrived = 0;
    c.gone = c.done;
    for (Block& b : c.blocks)
        for (unsigned i = 0; i < b.nthreads; ++i)
            if (b.fibers[i].state == State::AtCluster && b.fibers[i].cl_arrivals <= c.phase) wake(b, i);
}

// Whether block b's exit, now, follows the use u of its shared memory.
bool covered(const Block& b, const RemoteUse& u) {
    TsanIgnore bookkeeping;
    if (b.cl_waited >= u.cl_phase) return true;
    if (!u.bar) return false;
    auto it = b.mbars.find(u.bar);
    return it != b.mbars.end() && it->second.observed >= u.bar_phase;
}

// Records a use of block t's shared memory by the running block, which t's exit must follow (a
// later use from the same place replaces an earlier one: it needs at least as much).
void note_remote(Block& t, const RemoteUse& u) {
    TsanIgnore bookkeeping;
    std::erase_if(t.remote, [&](const RemoteUse& o) {
        return covered(t, o) ||
               (o.from == u.from && o.thread == u.thread && o.file == u.file && o.line == u.line && o.bar == u.bar);
    });
    t.remote.push_back(u);
}

// Block `rank` of the running block's cluster, named by `op` at file:line.
Block& peer(unsigned rank, const char* op, const char* file, int line) {
    Cluster& c = *g_block->cluster;
    if (rank >= c.blocks.size())
        fail("%s at %s: rank %u, but the cluster has %zu blocks", op, site(file, line).c_str(), rank,
             c.blocks.size());
    return c.blocks[rank];
}

// The mbarrier at tb in block t, another block of the cluster, as CUDA lets the running thread
// use it: t still runs, initialised it, and a cluster barrier this thread waited for followed
// the init (t's initialising thread arrived after it).
Mbarrier& peer_mbarrier(Block& t, void* tb, const char* op, const char* file, int line) {
    const size_t off = static_cast<unsigned char*>(tb) - t.smem;
    if (t.exited) fail("%s at %s: rank %u has exited (%s)", op, site(file, line).c_str(), t.rank, kExitRule);
    auto it = t.mbars.find(tb);
    if (it == t.mbars.end())
        fail("%s at %s: no mbarrier was initialised at offset %zu of rank %u's shared memory", op,
             site(file, line).c_str(), off, t.rank);
    if (cur().cl_waited <= it->second.init_epoch)
        fail("%s at %s: rank %u's mbarrier at offset %zu was initialised with no cluster barrier between its init "
             "and this use (fence_mbarrier_init, then cluster_sync)",
             op, site(file, line).c_str(), t.rank, off);
    return it->second;
}

// An exited block's shared memory while the rest of its cluster runs: inaccessible, so that a
// use faults (under ThreadSanitizer, whose signal handling the fault handler would upset,
// poisoned instead: a read sees 0xFF and TSan reports it racing with the exit).
void retire(Block& b) {
#ifdef EMU_TSAN
    std::memset(b.smem, 0xFF, b.smem_bytes);
#else
    mprotect(b.map, b.map_len, PROT_NONE);
#endif
}

}  // namespace

void cluster_check_dynamic(const void* p, const char* op) {
    if (g_block->cluster->blocks.size() > 1 && !in_dynamic(*g_block, p))
        fail("%s on %p in a cluster launch: not in the block's dynamic shared memory (cluster kernels keep their "
             "shared state there: the emulator's static __shared__ is one variable for all blocks of a cluster)",
             op, p);
}

void cluster_thread_exit(Cluster& c, Fiber& f) {
    // The fibers of a cluster reach its counters one at a time, in the scheduler's order (one OS
    // thread); TSan sees fibers as threads, so that order is made visible on one address.
#ifdef EMU_TSAN
    __tsan_acquire(&c.done);
#endif
    {
        TsanIgnore bookkeeping;
        c.done++;
        if (f.cl_arrivals <= c.phase) c.gone++;  // not arrived in the current phase, and never will
        cluster_try_complete(c);
    }
#ifdef EMU_TSAN
    __tsan_release(&c.done);
#endif
}

bool cluster_block_exit(Cluster& c, Block& b) {
    for (const RemoteUse& u : b.remote)
        if (!covered(b, u)) {
            b.error = "the block exited while rank " + std::to_string(u.from) + " may still use its shared memory (" +
                      u.what + " at " + site(u.file, u.line) +
                      "): no cluster barrier this block waited for orders that use before the exit (" + kExitRule + ")";
            return false;
        }
    b.exited = true;
    if (c.blocks.size() > 1 && c.done < c.nthreads) retire(b);
    return true;
}

// Each block of a cluster gets its shared memory (and the guard after it) as a mapping of its
// own, which retire() can make inaccessible.
void cluster_arenas(Cluster& c, size_t smem_bytes) {
#ifndef EMU_TSAN
    install_fault_handler();
#endif
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    for (Block& b : c.blocks) {
        b.map_len = (smem_bytes + page - 1) / page * page + kSmemGuard;
        void* m = mmap(nullptr, b.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "emu: cannot map a block's shared memory\n");
            std::abort();
        }
        b.map = b.smem = static_cast<unsigned char*>(m);
        b.smem_bytes = smem_bytes;
    }
}

void cluster_arenas_reset(Cluster& c) {
    for (Block& b : c.blocks)
        if (b.exited) mprotect(b.map, b.map_len, PROT_READ | PROT_WRITE);
}

void cluster_arenas_free(Cluster& c) {
    for (Block& b : c.blocks)
        if (b.map) munmap(b.map, b.map_len);
}

std::string cluster_waits(const Cluster& c, const Fiber& f) {
    return " waits at barrier.cluster.wait " + site(f.wait_file, f.wait_line) + " (phase " +
           std::to_string(f.cl_arrivals) + ": " + std::to_string(c.arrived) + " of " +
           std::to_string(c.nthreads - c.gone) + " threads arrived)";
}

}  // namespace emu::rt

namespace emu {
using namespace rt;

unsigned cluster_rank() { return g_block->rank; }

unsigned cluster_size() { return unsigned(g_block->cluster->blocks.size()); }

EMU_NO_TSAN void cluster_arrive(const char* file, int line) {
    Cluster& c = *g_block->cluster;
    Fiber& f = cur();
    if (f.cl_arrivals != f.cl_waited)
        fail("barrier.cluster.arrive at %s: thread %s arrives again before its barrier.cluster.wait",
             site(file, line).c_str(), tid_str(f).c_str());
    f.cl_arrivals++;
#ifdef EMU_TSAN
    __tsan_release(&c.bar_sync[f.cl_arrivals & 1]);
#endif
    c.arrived++;
    cluster_try_complete(c);
}

EMU_NO_TSAN void cluster_wait(const char* file, int line) {
    Cluster& c = *g_block->cluster;
    Fiber& f = cur();
    if (f.cl_arrivals == f.cl_waited)
        fail("barrier.cluster.wait at %s: thread %s has not arrived (barrier.cluster.arrive) since its last wait",
             site(file, line).c_str(), tid_str(f).c_str());
    const unsigned long long want = f.cl_arrivals;
    f.wait_file = file;
    f.wait_line = line;
    // Held until the phase completes; yields even when it has, as at __syncthreads, so that the
    // schedule, not the order of arrival, picks who runs first after the barrier.
    if (c.phase < want) f.state = State::AtCluster;
#ifdef EMU_TSAN
    __tsan_release(&g_block->block_end);  // as at an mbarrier wait that may never complete
#endif
    switch_to_scheduler();
    f.cl_waited = want;
    g_block->cl_waited = std::max(g_block->cl_waited, want);
#ifdef EMU_TSAN
    __tsan_acquire(&c.bar_sync[want & 1]);
#endif
}

EMU_NO_TSAN void* cluster_map(const void* p, unsigned rank, const char* file, int line) {
    Block& b = *g_block;
    Block& t = peer(rank, "mapa", file, line);
    dynamic_or_fail(b, p, "mapa", file, line);
    if (&t == &b) return const_cast<void*>(p);
    const Fiber& f = cur();
    if (f.cl_waited == 0)
        fail("mapa at %s: rank %u's shared memory before any cluster barrier (every block of the cluster must have "
             "started before its shared memory is used: cluster_sync first)",
             site(file, line).c_str(), rank);
    if (t.exited) fail("mapa at %s: rank %u has exited (%s)", site(file, line).c_str(), rank, kExitRule);
    note_remote(t, {b.rank, f.linear, "mapa", file, line, f.cl_arrivals + 1, nullptr, 0});
    return t.smem + (static_cast<const unsigned char*>(p) - b.smem);
}

EMU_NO_TSAN void mbarrier_arrive_remote(void* bar, unsigned rank, const char* file, int line) {
    const char* op = "mbarrier.arrive.shared::cluster";
    Block& b = *g_block;
    Block& t = peer(rank, op, file, line);
    dynamic_or_fail(b, bar, op, file, line);
    if (&t == &b) return mbarrier_arrive_on(b, bar, 0);
    void* tb = t.smem + (static_cast<unsigned char*>(bar) - b.smem);
    const Mbarrier& m = peer_mbarrier(t, tb, op, file, line);
    const Fiber& f = cur();
    // The arrival releases this thread's earlier uses of t's shared memory: t's wait that sees
    // its phase complete orders them before t's exit, as it does the arrival.
    for (RemoteUse& u : t.remote)
        if (u.from == b.rank && u.thread == f.linear) u.bar = tb, u.bar_phase = m.phase + 1;
    note_remote(t, {b.rank, f.linear, op, file, line, f.cl_arrivals + 1, tb, m.phase + 1});
    mbarrier_arrive_on(t, tb, 0);
}

EMU_NO_TSAN void tma_load_multicast(void* dst, const void* map, const int* coords, int rank, void* bar,
                                    unsigned mask, const char* file, int line) {
    const char* op = "cp.async.bulk.tensor.multicast::cluster";
    Block& b = *g_block;
    const unsigned n = unsigned(b.cluster->blocks.size());
    if (mask == 0 || mask >= (1u << n))
        fail("%s at %s: cta mask 0x%04x names %s (the cluster has %u blocks)", op, site(file, line).c_str(), mask,
             mask ? "ranks outside the cluster" : "no block", n);
    dynamic_or_fail(b, bar, op, file, line);
    const BulkCopy box = tma_box(dst, map, coords, rank);
    const size_t dst_off = box.dst - b.smem, bar_off = static_cast<unsigned char*>(bar) - b.smem;
    // Every destination checked before any copy is queued.
    const Fiber& f = cur();
    for (unsigned r = 0; r < n; ++r)
        if (((mask >> r) & 1u) && r != b.rank) {
            Block& t = b.cluster->blocks[r];
            void* tb = t.smem + bar_off;
            const Mbarrier& m = peer_mbarrier(t, tb, op, file, line);
            note_remote(t, {b.rank, f.linear, op, file, line, f.cl_arrivals + 1, tb, m.phase + 1});
        }
    for (unsigned r = 0; r < n; ++r)
        if ((mask >> r) & 1u) {
            Block& t = b.cluster->blocks[r];
            mbarrier_queue(t, t.smem + bar_off, BulkCopy{t.smem + dst_off, box.data}, op);
        }
}

}  // namespace emu
