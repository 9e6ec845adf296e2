// fault.cpp: the emulator's SIGSEGV handler. A kernel's access to memory it may not touch ends
// its launch with a message naming the thread and the access, where it would otherwise crash
// the process (or, on a GPU, corrupt a neighbour silently):
// - a block's shared memory after that block exited while the rest of its cluster runs
//   (cluster.cpp makes it inaccessible: a use after the exit breaks kExitRule);
// - global memory outside every live device allocation: src/device/emu.rs lays each one
//   between two inaccessible guard pages, ending it at the one after it, as compute-sanitizer's
//   memcheck checks on the GPU. So a read or write past an allocation's end, or before its start
//   by more than the slack in front of it, faults here; the host side describes the address
//   against its allocations (take_global_fault hands it the address: which allocation, how many
//   bytes past its end) and checks the few bytes
//   of slack the guards leave for writes after every launch.
// A fault outside a kernel's fibers, or on a fiber stack's own guard page (an overflow: the
// stack the launch would resume on is spent), is left to the previous handler: the process dies
// as it would have. Under ThreadSanitizer no handler is installed (its signal handling would be
// upset by one that resumes elsewhere); a guard page then crashes the instrumented run.
#include "runtime.h"

#include <signal.h>
#include <ucontext.h>

#include <mutex>

namespace emu::rt {
#ifndef EMU_TSAN
namespace {

// What the handler saw, for the function the faulting fiber resumes in.
thread_local const Block* t_fault_block = nullptr;
thread_local size_t t_fault_offset = 0;
thread_local const void* t_fault_addr = nullptr;
thread_local bool t_fault_write = false;

[[noreturn]] void exited_access() {
    const Block& t = *t_fault_block;
    fail("thread %s used byte %zu of the shared memory of block %s (rank %u) after that block exited (%s)",
         tid_str(cur()).c_str(), t_fault_offset, idx_str(t.idx).c_str(), t.rank, kExitRule);
}

[[noreturn]] void global_access() {
    fail("thread %s: invalid global %s at address %p: outside every live device allocation", tid_str(cur()).c_str(),
         t_fault_write ? "write" : "read", t_fault_addr);
}

struct sigaction g_prev_segv;

// Resumes the faulting fiber at `fn` on its own stack, below the faulting frame's red zone,
// aligned as at a call (the handler itself may run on a small signal stack).
void resume_at(void* ctx, void (*fn)()) {
    auto& r = static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs;
    r[REG_RSP] = greg_t(((unsigned long long)r[REG_RSP] - 256) / 16 * 16 - 8);
    r[REG_RIP] = greg_t(fn);
}

void on_segv(int sig, siginfo_t* si, void* ctx) {
    const Block* b = g_block;
    auto* a = static_cast<unsigned char*>(si->si_addr);
    if (b && b->cluster && b->cluster->in_fiber) {
        for (const Block& t : b->cluster->blocks)
            if (t.exited && t.map && a >= t.map && a < t.map + t.map_len) {
                t_fault_block = &t;
                t_fault_offset = size_t(a - t.map);
                resume_at(ctx, &exited_access);
                return;
            }
        if (!in_stack_guard(cur(), a)) {
            t_fault_addr = a;
            // x86-64 page-fault error code: bit 1 set for a write.
            t_fault_write = (static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
            resume_at(ctx, &global_access);
            return;
        }
    }
    // Not ours: as if this handler were not there.
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        g_prev_segv.sa_sigaction(sig, si, ctx);
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // the access runs again and the process dies as it would have
    }
}

}  // namespace
#endif

const void* take_global_fault() {
#ifndef EMU_TSAN
    const void* a = t_fault_addr;
    t_fault_addr = nullptr;
    return a;
#else
    return nullptr;
#endif
}

void install_fault_handler() {
#ifndef EMU_TSAN
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_prev_segv);
    });
#endif
}

}  // namespace emu::rt

// Called once an emu device exists (src/device/emu.rs), before its first allocation.
extern "C" void vgg_emu_install_fault_handler() { emu::rt::install_fault_handler(); }
