//! Stopping a run cleanly. A Ctrl-C (SIGINT) or a batch scheduler's SIGTERM (Slurm sends it
//! before a job's time runs out or it is preempted, then kills it 30 s later) used to end `vgg
//! train` where it stood, losing every step since the last checkpoint: an epoch of ImageNet
//! unless `--checkpoint-every` was given. With [`stop_on_signals`] installed, as the CLI does,
//! the first signal lets the current step finish, then the run writes `last.safetensors` at
//! that step and ends (`--resume` continues it bit for bit, as from any checkpoint); a second
//! signal ends the process at once, as the first did before.
//!
//! The handler only stores two atomics and writes one line to stderr, both async-signal-safe;
//! the training loop polls [`requested`] between steps. Library users who drive
//! [`super::run`] themselves call [`request_stop`] (from another thread, or their own handler).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The signal that made the request (0: none, or [`request_stop`]).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Asks a running [`super::run`] to stop after its current step, saving a checkpoint there
/// (where it has a checkpoint folder). The request stays until a run takes it: one made before
/// a run starts stops it before its first step.
pub fn request_stop() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested and no run has taken the request yet.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Takes the request, so that a later run in the same process is not stopped by it.
pub(super) fn take() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

/// The signal (SIGINT 2, SIGTERM 15) that asked for the stop, if one did; the CLI exits with
/// 128 + it, the shell's status for a process ended by that signal.
pub fn signal() -> Option<i32> {
    Some(SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
    const MSG: &[u8] = b"\nstopping after this step (and saving a checkpoint where there is a checkpoint folder); \
signal again to end at once\n";
    // SAFETY: write(2) is async-signal-safe; MSG is a static buffer of MSG.len() bytes. A short
    // or failed write loses only the notice.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
    }
}

/// Installs the handler for SIGINT and SIGTERM. Each is reset to its default action as the
/// handler runs (SA_RESETHAND), so the same signal a second time ends the process.
#[cfg(unix)]
pub fn stop_on_signals() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags) before the fields
        // set below; on_signal has the handler signature sigaction expects and touches only
        // atomics and write(2); the old action's pointer may be null.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Without Unix signals there is nothing to install; [`request_stop`] still works.
#[cfg(not(unix))]
pub fn stop_on_signals() -> std::io::Result<()> {
    Ok(())
}
