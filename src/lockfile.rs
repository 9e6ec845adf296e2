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

/// Creates the lock file at `path` already locked, replacing any file there: it is written
/// under another name, locked, then renamed, so that no process finds it at `path` unlocked.
/// What a new folder's lock must be when another process takes a folder whose lock is free
/// for abandoned (a prep's temporary folder): created and then locked at its name, it could be
/// taken between the two.
pub fn create_held(path: &Path) -> io::Result<File> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(format!(".new{}", std::process::id()));
    let staged = std::path::PathBuf::from(staged);
    let result = (|| {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&staged)?;
        // Nobody else opens the staged name: the lock cannot be held.
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => io::Error::other("held by another process"),
        })?;
        std::fs::rename(&staged, path)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock made by `create_held` is found held at its path, under that name only, and taken
    /// once its file is closed.
    #[test]
    fn created_held_is_held_at_its_name() {
        let dir = std::env::temp_dir().join(format!("vgg-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let held = create_held(&path).unwrap();
        assert!(matches!(try_lock(&path, false).unwrap(), Lock::Held(_)));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x.lock"]);
        drop(held);
        assert!(matches!(try_lock(&path, false).unwrap(), Lock::Taken(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
