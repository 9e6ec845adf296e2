// runtime.h: the emu scheduler's state, shared by runtime.cpp (blocks, barriers, warps, copies)
// and cluster.cpp (what blocks of one cluster do to each other). Kernels never include it.
#pragma once
#include "shim.h"

#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#define EMU_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define EMU_NO_TSAN
#endif

typedef void (*emu_kernel_fn)(void** args);

#ifdef EMU_TSAN
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace emu::rt {

// The scheduler's bookkeeping of a cluster (its barrier counters, the fibers' states, each block's
// record of remote uses) is read and written by the fibers of all its blocks, one at a time on one
// OS thread. TSan sees fibers as threads and would report those accesses; ordering them on a sync
// object would also order the kernels' own accesses around them and hide real races. So the
// bookkeeping's accesses (the standard library's inside it too) are ignored for its scope, and
// syncs inside it still count.
struct TsanIgnore {
#ifdef EMU_TSAN
    TsanIgnore() { __tsan_ignore_thread_begin(); }
    ~TsanIgnore() { __tsan_ignore_thread_end(); }
    TsanIgnore(const TsanIgnore&) = delete;
    TsanIgnore& operator=(const TsanIgnore&) = delete;
#endif
};

enum class State { Ready, AtBarrier, AtWarp, AtMbarrier, AtCluster, Done };

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
// expected, phases completed, and the bulk copies on it not yet landed. For other blocks of a
// cluster: the cluster-barrier arrivals its initialising thread had made (an access from
// another block must follow a cluster barrier phase after that), and the phases a wait of its
// own block has seen complete (what orders the block's exit after a remote arrival).
struct Mbarrier {
    unsigned count = 0, pending = 0;
    long long tx = 0;
    unsigned long long phase = 0;
    std::vector<BulkCopy> copies;
    unsigned long long init_epoch = 0, observed = 0;
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
    const char* wait_file = nullptr;               // where it waits (AtMbarrier, AtCluster)
    int wait_line = 0;
    // barrier.cluster: arrivals made, and the last phase a wait of this thread returned for
    // (equal unless the thread has arrived and not yet waited).
    unsigned long long cl_arrivals = 0, cl_waited = 0;
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

// An access of another block of the cluster to this block's shared memory (mapa, a remote
// mbarrier arrive, a multicast copy), which this block's exit must follow: through a cluster
// barrier phase this block waited for (cl_phase), or for an mbarrier operation through a wait of
// this block that saw the phase it counted in complete (bar, bar_phase).
struct RemoteUse {
    unsigned from, thread;  // the accessing block's rank, and the thread's linear index there
    const char* what;
    const char* file;
    int line;
    unsigned long long cl_phase;
    const void* bar;
    unsigned long long bar_phase;
};

struct Cluster;

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
    // Its cluster (a launch without one runs each block as a cluster of one), its rank there,
    // its blockIdx, whether all its threads have exited, the last cluster barrier phase one of
    // its threads waited for, and the accesses of other blocks its exit must follow.
    Cluster* cluster = nullptr;
    unsigned rank = 0;
    uint3 idx{};
    bool exited = false;
    unsigned long long cl_waited = 0;
    std::vector<RemoteUse> remote;
    // A cluster block's shared memory is its own mapping (cluster.cpp), made inaccessible when
    // the block exits while the others still run.
    unsigned char* map = nullptr;
    size_t map_len = 0;
#ifdef EMU_TSAN
    void* tsan_sched = nullptr;
    char bar_sync[2];
    char block_start, block_end;
#endif
};

// The blocks that run together on one OS thread, their fibers interleaved: a thread-block
// cluster, or a single block. barrier.cluster counts arrivals of the current phase and the
// threads that exited without arriving in it (which the PTX ISA's `exit` releases it for).
struct Cluster {
    std::vector<Block> blocks;  // by rank
    std::vector<Fiber*> flat;   // every block's fibers, rank by rank: the scheduler's order indexes it
    unsigned nthreads = 0, done = 0;
    unsigned long long phase = 0;  // barrier.cluster phases completed
    unsigned arrived = 0, gone = 0;
    bool in_fiber = false;  // a fiber runs (what the shared-memory fault handler checks)
    // The fibers made Ready by the one running (flat indices; lo > hi: none): a depth-first scan
    // resumes at the earliest of them, or at the fiber it ran, instead of rescanning from the
    // start the threads before it that still wait (quadratic in the block's threads).
    unsigned wake_lo = ~0u, wake_hi = 0;
#ifdef EMU_TSAN
    char bar_sync[2];
#endif
};

// Fiber `idx` of block `b` waits no longer: notes its place for the scheduler (no TSan: the
// scheduler's bookkeeping, as TsanIgnore's comment explains).
EMU_NO_TSAN inline void wake(Block& b, unsigned idx) {
    b.fibers[idx].state = State::Ready;
    Cluster& c = *b.cluster;
    const unsigned flat = b.rank * b.nthreads + idx;
    if (flat < c.wake_lo) c.wake_lo = flat;
    if (flat > c.wake_hi) c.wake_hi = flat;
}

extern thread_local Block* g_block;

inline Fiber& cur() { return g_block->fibers[g_block->current]; }

void switch_to_scheduler();
std::string site(const char* file, int line);
std::string tid_str(const Fiber& f);
std::string idx_str(const uint3& i);
bool cp_async_lands_now();

// mbarriers of block `b` (the running one's, or another of its cluster's).
Mbarrier& mbarrier_at(Block& b, void* bar, const char* op);
void mbarrier_arrive_on(Block& b, void* bar, unsigned bytes);
void mbarrier_queue(Block& b, void* bar, BulkCopy c, const char* op);
// The box a TMA load of `map` at `coords` brings, bound for dst in the running block: its bytes
// as read now, after the checks every TMA load makes.
BulkCopy tma_box(void* dst, const void* map, const int* coords, int rank);

// cluster.cpp
// The rule every use of an exited block's shared memory breaks.
extern const char* const kExitRule;
// Fails a cluster launch whose kernel hands `op` a shared address outside the block's dynamic
// shared memory (static __shared__, which the cluster's blocks would share).
void cluster_check_dynamic(const void* p, const char* op);
void cluster_thread_exit(Cluster& c, Fiber& f);
bool cluster_block_exit(Cluster& c, Block& b);
void cluster_arenas(Cluster& c, size_t smem_bytes);
void cluster_arenas_reset(Cluster& c);
void cluster_arenas_free(Cluster& c);
std::string cluster_waits(const Cluster& c, const Fiber& f);

// fault.cpp: the SIGSEGV handler that turns a kernel's access to an exited block's shared memory
// or outside every device allocation into a failed launch (once per process; none under TSan).
void install_fault_handler();
// The address of this OS thread's last fault outside every device allocation, cleared (null if none).
const void* take_global_fault();
// Whether `a` lies in the guard page under fiber `f`'s stack (runtime.cpp): a stack overflow.
bool in_stack_guard(const Fiber& f, const void* a);

}  // namespace emu::rt
