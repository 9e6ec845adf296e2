//! One run at a time in a checkpoint folder. `vgg train` refuses an earlier run's checkpoint
//! at start-up, but two runs started close together both passed that check before either had
//! written one, and the later one's files silently replaced the earlier one's. A run therefore
//! holds a lock on `<checkpoint-dir>/.vgg-train.lock` (the file names its process id) for as
//! long as it uses the folder.
//!
//! The lock is an advisory file lock ([`crate::lockfile`]), not the file's mere presence: the
//! system releases it when its process ends however it ends (Ctrl-C, a kill, a crash), so a
//! lock file left behind is recognised as stale without guessing from a process id that may
//! since have been reused, and two runs that find the same stale file cannot both take it over.

use crate::lockfile::Lock;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the checkpoint folder (a dot file: hidden from folder listings).
pub const LOCK_FILE: &str = ".vgg-train.lock";

/// A checkpoint folder held by this run; dropping it removes the lock file and releases it.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    // Held open for the lock: the system ties it to this open file.
    _file: File,
}

impl RunLock {
    /// Takes `dir`'s lock (the folder must exist). Errors, naming the folder and the holder's
    /// process id, where another run holds it; a lock file whose run is gone is taken over with
    /// a notice on stderr.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let taken = crate::lockfile::try_lock(&path, true)
            .with_context(|| format!("{}: cannot lock the checkpoint folder", path.display()))?;
        let mut file = match taken {
            Lock::Taken(file) => file,
            Lock::Held(mut file) => {
                // The holder writes its id just after locking: it may not be there yet.
                let who = holder(&mut file).map_or("another run".to_string(), |p| format!("another run (pid {p})"));
                bail!(
                    "{}: {who} is using this checkpoint folder (it holds {}); wait for it to end, or \
                     choose another --checkpoint-dir (nothing was written)",
                    dir.display(),
                    path.display()
                );
            }
        };
        if let Some(pid) = holder(&mut file).filter(|p| *p != std::process::id()) {
            eprintln!(
                "note: {}: taking over the lock of run pid {pid}, which ended without removing it \
                 (killed or crashed)",
                path.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("{}: writing the lock", path.display()))?;
        Ok(RunLock { path, _file: file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked (the file is closed after this): see `crate::lockfile`.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process id a lock file holds, if it holds one.
fn holder(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
