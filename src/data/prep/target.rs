//! The output folder of a prep ([`Target`]): checked against the source and what it holds before
//! any work, written as a temporary sibling under a lock, swapped in only when complete; and the
//! tidying of what stopped preps left beside it, so that a killed prep never costs a later one
//! its disk space or its previous output.

use std::path::{Path, PathBuf};

use super::LOCK_FILE;
use crate::data::shards::INDEX_NAME;
use crate::data::{DataError, Shards};
use crate::lockfile::Lock;

/// `p` made absolute with its existing part canonicalized (symbolic links and `..`
/// resolved), so that two spellings of one folder compare equal even before it exists.
pub(super) fn resolved(p: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let existing = abs.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    let mut out = existing.canonicalize()?;
    for c in abs.strip_prefix(existing).unwrap_or(Path::new("")).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop(); // below the existing part: no link to follow
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// An error unless the output `out` (resolved: `abs`) and the source `src` are apart: neither
/// the same folder nor one inside the other.
pub(super) fn check_overlap(out: &Path, abs: &Path, src: &Path) -> Result<(), DataError> {
    let err = |reason: String| Err(DataError::Io { path: out.into(), reason });
    let src_abs = resolved(src).map_err(|e| DataError::Io { path: src.into(), reason: e.to_string() })?;
    if abs == src_abs {
        return err("is the source folder: prep would write into its own input".into());
    }
    if abs.starts_with(&src_abs) {
        return err(format!("is inside the source folder {}: prep would write into its own input", src.display()));
    }
    if src_abs.starts_with(abs) {
        return err(format!("holds the source folder {}: replacing it would delete the source", src.display()));
    }
    Ok(())
}

/// The output folder of one prep: checked before any work, written as a temporary
/// sibling, swapped in by [`Target::commit`]. Dropping it uncommitted removes the
/// temporary folder, so a failed prep leaves nothing behind.
pub(super) struct Target {
    /// As given (for messages), resolved, and the temporary sibling being written.
    out: PathBuf,
    abs: PathBuf,
    pub(super) tmp: PathBuf,
    /// Holds the lock on `tmp`'s [`LOCK_FILE`] until the folder is renamed or removed (a
    /// field drops after `Drop::drop`), so that no other prep takes it for a leftover.
    _lock: std::fs::File,
}

impl Target {
    /// Checks `out` (a folder, empty or a previous prep output, not overlapping `src`),
    /// creates its parent and the temporary folder. Errors name the folder.
    pub(super) fn new(out: &Path, src: Option<&Path>) -> Result<Self, DataError> {
        let err = |reason: String| DataError::Io { path: out.into(), reason };
        if out.exists() && !out.is_dir() {
            return Err(err("is a file, not a folder".into()));
        }
        if let Some(f) = out.ancestors().skip(1).find(|a| a.is_file()) {
            return Err(err(format!("{} is a file, not a folder", f.display())));
        }
        let abs = resolved(out).map_err(|e| err(e.to_string()))?;
        if let Some(src) = src {
            check_overlap(out, &abs, src)?;
        }
        if out.is_dir() && !Shards::is_shard_dir(out) {
            let mut entries = std::fs::read_dir(out).map_err(|e| err(format!("cannot be read: {e}")))?;
            if entries.next().is_some() {
                return Err(err(format!(
                    "not empty and not the output of a `vgg prep` (no {INDEX_NAME}): refusing to replace it; \
                     give a new or an empty folder"
                )));
            }
        }
        let (Some(parent), Some(_)) = (abs.parent(), abs.file_name()) else {
            return Err(err("is not a folder that can be replaced".into()));
        };
        crate::atomic::create_dir(parent).map_err(|e| err(e.to_string()))?;
        tidy_leftovers(&abs);
        let tmp = crate::atomic::temp_path(&abs);
        if tmp.symlink_metadata().is_ok() {
            // Not removed by tidy_leftovers (named there): a prep with this process id in another
            // PID namespace or on another host holds it, or an older build left it.
            return Err(err(format!(
                "the temporary folder {} is in use by another prep, or without a lock to tell; remove it once \
                 no prep writes it",
                tmp.display()
            )));
        }
        std::fs::create_dir(&tmp)
            .map_err(|e| err(format!("cannot create the temporary folder {}: {e}", tmp.display())))?;
        // Locked before it has its name: another prep's tidy_leftovers, finding this folder,
        // sees no lock file (left alone) or a held one, never a free one to take it for
        // abandoned and remove it.
        let lock = tmp.join(LOCK_FILE);
        let lock = crate::lockfile::create_held(&lock).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            err(format!("cannot lock the temporary folder ({}): {e}", lock.display()))
        })?;
        Ok(Self { out: out.into(), abs, tmp, _lock: lock })
    }

    /// Renames the finished temporary folder to the output, moving a previous output aside
    /// first and removing it only once the new one is in place.
    pub(super) fn commit(self) -> Result<(), DataError> {
        let err = |reason: String| DataError::Io { path: self.out.clone(), reason };
        let name = self.abs.file_name().unwrap_or_default().to_string_lossy();
        let old = self.abs.with_file_name(format!(".{name}.old{}", std::process::id()));
        let had_old = self.abs.exists();
        if had_old {
            if old.exists() {
                let _ = std::fs::remove_dir_all(&old);
            }
            std::fs::rename(&self.abs, &old)
                .map_err(|e| err(format!("moving the previous output aside to {}: {e}", old.display())))?;
        }
        // Still held (the file stays open): the output must not keep it, and a prep that
        // finds the folder without it meanwhile leaves it alone.
        let _ = std::fs::remove_file(self.tmp.join(LOCK_FILE));
        if let Err(e) = std::fs::rename(&self.tmp, &self.abs) {
            if had_old {
                let _ = std::fs::rename(&old, &self.abs);
            }
            return Err(err(format!("renaming {} to it: {e}", self.tmp.display())));
        }
        if had_old {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                eprintln!("warning: the previous output, moved to {}, could not be removed: {e}", old.display());
            }
        }
        Ok(())
    }
}

/// Tidies what earlier preps into `abs` that did not finish left beside it, saying so on
/// stderr. A temporary folder (`.OUT.tmpPID`, as large as the shards written into it, which
/// nothing else would ever clean up) is removed when its [`LOCK_FILE`] can be locked: its prep
/// has ended (however: the system releases the lock), and the lock is held while removing it.
/// One whose lock is held (a running prep, wherever it runs and whatever its process id) or
/// that has no lock file (written by an older build, or one being created or committed) is
/// left alone and named. A previous output that a prep moved aside (`.OUT.oldPID`, left when
/// a prep is stopped between its two renames: then possibly the only complete copy) is only
/// named, for the user to restore or remove. Only folders count (the entry's own type: a link
/// is not followed).
fn tidy_leftovers(abs: &Path) {
    let Some(Ok(entries)) = abs.parent().map(std::fs::read_dir) else {
        return;
    };
    let old_prefix = format!(".{}.old", abs.file_name().unwrap_or_default().to_string_lossy());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = name.strip_prefix(&old_prefix).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let (pid, temporary) = match (crate::atomic::temp_pid(abs, &name), old.and_then(|p| p.parse::<u32>().ok())) {
            (Some(pid), _) => (pid, true),
            (None, Some(pid)) => (pid, false),
            _ => continue,
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        if !temporary {
            // Our own (a reused process id) is replaced by Target::commit.
            if pid != std::process::id() {
                eprintln!(
                    "prep: {} was left by an earlier prep (process {pid}) that did not finish, unless that prep is \
                     finishing now, and holds the output before it, moved aside (it may be the only complete \
                     copy); restore or remove it yourself",
                    path.display()
                );
            }
            continue;
        }
        // Without creating it: a folder with no lock file is not known to be abandoned.
        let _lock = match crate::lockfile::try_lock(&path.join(LOCK_FILE), false) {
            Ok(Lock::Taken(f)) => f,
            Ok(Lock::Held(_)) => {
                eprintln!(
                    "prep: {} is being written by another prep (process {pid}, which holds its lock); left alone",
                    path.display()
                );
                continue;
            }
            Err(err) => {
                // Unless gone meanwhile (committed, or removed by another prep).
                if path.is_dir() {
                    let why = match err.kind() {
                        // An older build's, or one that died between creating the folder and
                        // locking it, or between dropping the lock file and committing.
                        std::io::ErrorKind::NotFound => {
                            "has no lock file to tell whether that prep still runs".to_string()
                        }
                        _ => format!("has a lock file that cannot be locked ({err})"),
                    };
                    eprintln!(
                        "prep: {} may be the unfinished output of an earlier prep (process {pid}) but {why}; left \
                         alone: remove it yourself once no prep writes it",
                        path.display()
                    );
                }
                continue;
            }
        };
        if let Err(err) = std::fs::remove_dir_all(&path) {
            eprintln!(
                "prep: {} was left unfinished by an earlier prep (process {pid}, stopped: its lock was free) and \
                 could not be removed: {err}",
                path.display()
            );
        } else {
            eprintln!(
                "prep: removed {}, the unfinished output of an earlier prep (process {pid}, stopped: its lock was \
                 free)",
                path.display()
            );
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
