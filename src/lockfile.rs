//! Advisory file locks on a lock file at a path (`File::try_lock`, flock on Unix): what a
//! training run holds on its checkpoint folder ([`crate::train::lock`]) and a prep on the
//! temporary folder it writes ([`crate::data::prep`]).
//!
//! A lock, not the file's mere presence or a process id written in it, tells whether its
//! holder still runs: the system releases it when its process ends however it ends (Ctrl-C, a
//! kill, a crash), while a process id may since have been reused, or belong to another PID
//! namespace (a container sharing the folder) or another host, where it cannot be looked up.
//!
//! A holder removes its lock file before releasing the lock, so that a file left at the path
//! is either held or stale; a file opened before that removal is locked by the next taker but
//! no longer the path's, which [`try_lock`] notices and opens the current one instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// What [`try_lock`] found.
#[derive(Debug)]
pub enum Lock {
    /// Taken: held for as long as this file stays open.
    Taken(File),
    /// Held by another open file (another process, or another opening in this one); the file
    /// is open for reading what its holder wrote in it.
    Held(File),
}

/// Takes the lock of the lock file at `path` without waiting, creating the file when `create`
/// (otherwise a missing file is an error of kind `NotFound`). The file taken is the one at
/// `path` when this returns.
pub fn try_lock(path: &Path, create: bool) -> io::Result<Lock> {
    loop {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(Lock::Held(file)),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Removed by its holder (see the module doc) between our open and our lock.
        let current = std::fs::metadata(path).ok();
        if current.is_some_and(|m| same_file(&m, &file)) {
            return Ok(Lock::Taken(file));
        }
    }
}

#[cfg(unix)]
fn same_file(m: &std::fs::Metadata, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|f| (f.dev(), f.ino()) == (m.dev(), m.ino()))
}

/// Elsewhere an open file cannot be removed, so the file at the path is the one opened.
#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &File) -> bool {
    true
}
