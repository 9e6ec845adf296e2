//! Output files replaced whole or not at all: checkpoints, reports, plots, shards. Each is
//! written to a temporary name beside it, synced, and renamed over the target, so a run
//! that fails or is killed mid-write leaves the previous file as it was. A write that fails
//! removes its temporary file.
//!
//! A path that is a symbolic link is written through: the file it points to is replaced and
//! the link stays. A path that is a device, a FIFO or a socket cannot be replaced by a rename;
//! it is written directly, once the whole output is ready. So is one of the process's own
//! descriptors (`--json /dev/stdout`), through the descriptor: after what the command printed
//! before, whether stdout is a terminal, a pipe or a redirected file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name a write of `path` goes through: `.NAME.tmpPID.EXT` in the same folder
/// (the same file system, so the rename is atomic). The extension is kept because some
/// writers pick the format by it (plotters' PNG backend), and the dot hides the file from
/// folder scans (an ImageFolder would otherwise list a half-written `.png`).
pub fn temp_path(path: &Path) -> PathBuf {
    let (name, ext) = temp_parts(path);
    path.with_file_name(format!(".{name}.tmp{}{ext}", std::process::id()))
}

/// The process id in `file_name` when it is the [`temp_path`] of `path` of some process
/// (`.NAME.tmpPID.EXT`, beside `path`); `None` for any other name. For finding the temporary
/// files or folders that a killed process left behind.
pub fn temp_pid(path: &Path, file_name: &str) -> Option<u32> {
    let (name, ext) = temp_parts(path);
    let pid = file_name.strip_prefix(&format!(".{name}.tmp"))?.strip_suffix(ext.as_str())?;
    // Digits only: `u32::from_str` also takes a leading `+`.
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// `path`'s name and `.EXT` (or ""), as [`temp_path`] names its temporary.
fn temp_parts(path: &Path) -> (&str, String) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| format!(".{e}")).unwrap_or_default();
    (name, ext)
}

/// Checks, before any work, that `path` can be written later: its folder exists or is
/// created (the folders it creates are recorded for [`remove_created_dirs`]), `path` is not a
/// folder, and a file can be created beside it (removed again).
/// Commands call it on their output paths first, so that a bad path is an error at once
/// instead of after a long run. Errors name the path.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let named = |p: &Path, e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", p.display()));
    let path = match target(path) {
        // Opened only when written: a FIFO's open would wait here for its reader.
        Target::Stream | Target::Descriptor(_) => return Ok(()),
        Target::File(p) => p,
    };
    let path = path.as_path();
    if path.is_dir() {
        return Err(named(path, &"is a folder, not a file"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Outermost first, one level at a time: a folder counts as this process's only if its
        // own create_dir made it (not one another process made meanwhile).
        let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).collect();
        for a in missing.into_iter().rev() {
            if std::fs::create_dir(a).is_ok() {
                CREATED.lock().unwrap_or_else(|e| e.into_inner()).push(a.to_path_buf());
            }
        }
        create_dir(dir)?; // the error, naming what stands in the way, if it is still missing
    }
    let probe = temp_path(path);
    std::fs::File::create(&probe).map_err(|e| named(path, &format!("cannot be written: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The folders [`check_writable`] created, for [`remove_created_dirs`].
static CREATED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the folders that [`check_writable`] created in this process and that are still
/// empty, children first. A command that fails after checking its outputs calls it, so that
/// a refused `--resume` or a bad `--data` does not leave behind the empty `--checkpoint-dir`
/// it was checked against. A folder that holds anything (an output written before the
/// failure) stays: `remove_dir` removes only empty folders.
pub fn remove_created_dirs() {
    let mut created = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    // Deepest first, so that a parent created only to hold its child empties before its turn.
    created.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in created {
        let _ = std::fs::remove_dir(d);
    }
}

/// `create_dir_all` whose error names the folder, or the file standing where a folder must be.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        let blocker = dir.ancestors().find(|a| a.is_file());
        match blocker {
            Some(f) => std::io::Error::other(format!("{}: {} is a file, not a folder", dir.display(), f.display())),
            None => std::io::Error::other(format!("{}: cannot create the folder: {e}", dir.display())),
        }
    })
}

/// Writes the concatenation of `parts` to `path` atomically, creating its folder if needed.
/// Errors name the file.
pub fn write_parts(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    replace_with(path, |tmp| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        for p in parts {
            f.write_all(p)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
}

/// Writes `bytes` to `path` atomically (see [`write_parts`]).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_parts(path, &[bytes])
}

/// Lets `make` write the temporary file (its path is the argument), then renames it over
/// `path`. On an error the temporary file is removed and `path` is untouched. Errors name
/// the file.
pub fn replace_with<E: std::fmt::Display>(
    path: &Path,
    make: impl FnOnce(&Path) -> Result<(), E>,
) -> std::io::Result<()> {
    let named = |p: &Path, e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", p.display()));
    let resolved = match target(path) {
        Target::Stream => return write_stream(path, None, make),
        Target::Descriptor(fd) => return write_stream(path, Some(fd), make),
        Target::File(p) => p,
    };
    let path = resolved.as_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let tmp = temp_path(path);
    let done = make(&tmp).map_err(|e| named(path, &e)).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| named(path, &format!("renaming {} over it: {e}", tmp.display())))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp); // may never have been created
    }
    done
}

/// Where a write of a path lands.
enum Target {
    /// A regular file (or nothing yet) at this path, links followed: replaced by a rename.
    File(PathBuf),
    /// A device, FIFO or socket, maybe behind links: written in place.
    Stream,
    /// One of this process's open descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`):
    /// written through it, wherever it leads. Following the link instead would find the file
    /// a shell redirected stdout to and replace it, losing what the command printed before.
    Descriptor(u32),
}

/// What `p` names when it is an open descriptor of a process: `Some(Ok(fd))` for one of ours
/// (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N` and their other spellings: decided by the
/// folder's canonical path, `/proc/PID/fd` or `/proc/PID/task/TID/fd`, not by the text), and
/// `Some(Err(()))` for another process's.
fn proc_fd(p: &Path) -> Option<Result<u32, ()>> {
    let fd: u32 = p.file_name()?.to_str()?.parse().ok()?;
    let dir = std::fs::canonicalize(p.parent()?).ok()?;
    let parts: Vec<&str> = dir.to_str()?.strip_prefix("/proc/")?.split('/').collect();
    let pid = match parts.as_slice() {
        [pid, "fd"] | [pid, "task", _, "fd"] => pid.parse::<u32>().ok()?,
        _ => return None,
    };
    Some(if pid == std::process::id() { Ok(fd) } else { Err(()) })
}

/// Whether a write of `path` goes to a stream (a device, FIFO or socket, or an open descriptor
/// such as `/dev/stderr`), not to a file that an atomic write replaces: such a path holds no
/// earlier output to refuse to overwrite or to read back.
pub fn is_stream(path: &Path) -> bool {
    !matches!(target(path), Target::File(_))
}

/// `path` with its symbolic links followed to what they name, so that a rename replaces the
/// file a link points to instead of the link; a dangling link gives the path it names.
fn target(path: &Path) -> Target {
    // The links by hand first (40 at most, the kernel's limit; past it the write's own error
    // says so): a descriptor of ours anywhere on the way is written through.
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match proc_fd(&p) {
            Some(Ok(fd)) => return Target::Descriptor(fd),
            // Another process's descriptor: written in place (appended), never renamed over.
            Some(Err(())) => return Target::Stream,
            None => {}
        }
        let link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        match std::fs::read_link(&p) {
            Ok(t) if link => p = p.parent().map_or(t.clone(), |d| d.join(&t)),
            _ => break,
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => Target::Stream,
        // The whole chain resolved (the parent folders' links too).
        Ok(_) => std::fs::canonicalize(path).map_or(Target::File(p), Target::File),
        // Missing, or behind a dangling link: the path the last link names.
        Err(_) => Target::File(p),
    }
}

/// [`replace_with`] for a device, FIFO or socket, or a descriptor of ours (`fd`): `make` writes
/// a temporary file in the system's temporary folder (not beside `path`: /dev is no place for
/// one), whose bytes then go to stdout or stderr as the process writes them (after what it
/// printed before), or are appended to `path` opened as it is (no rename, no truncation).
fn write_stream<E: std::fmt::Display>(
    path: &Path,
    fd: Option<u32>,
    make: impl FnOnce(&Path) -> Result<(), E>,
) -> std::io::Result<()> {
    let named = |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", path.display()));
    let tmp = temp_path(&std::env::temp_dir().join(path.file_name().unwrap_or("out".as_ref())));
    let done = make(&tmp).map_err(|e| named(&e)).and_then(|()| {
        let bytes = std::fs::read(&tmp).map_err(|e| named(&e))?;
        let put = |w: &mut dyn Write| w.write_all(&bytes).and_then(|()| w.flush());
        match fd {
            Some(1) => put(&mut std::io::stdout().lock()),
            Some(2) => put(&mut std::io::stderr().lock()),
            // Appended: a descriptor leading to a regular file must not be overwritten from its
            // start; a device or FIFO takes O_APPEND as a plain write.
            _ => put(&mut std::fs::OpenOptions::new().append(true).open(path).map_err(|e| named(&e))?),
        }
        .map_err(|e| named(&e))
    });
    let _ = std::fs::remove_file(&tmp);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_pid_reads_back_temp_path_names_only() {
        for p in ["/d/shards", "/d/report.json", "/d/data.tmp1"] {
            let own = temp_path(Path::new(p));
            assert_eq!(temp_pid(Path::new(p), own.file_name().unwrap().to_str().unwrap()), Some(std::process::id()));
        }
        let out = Path::new("/d/shards");
        assert_eq!(temp_pid(out, ".shards.tmp999999"), Some(999_999));
        // Not its temporaries: another output's, no or a signed PID, a suffix, the old copy.
        for n in [".shards2.tmp1", ".shards.tmp", ".shards.tmp+1", ".shards.tmp1.x", ".shards.old1", "shards.tmp1"] {
            assert_eq!(temp_pid(out, n), None, "{n}");
        }
        assert_eq!(temp_pid(Path::new("/d/data.tmp1"), ".data.tmp1.tmp5"), None);
        assert_eq!(temp_pid(Path::new("/d/data"), ".data.tmp1.tmp5.tmp1"), None);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("vgg-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("report.json");
        write(&path, b"old").unwrap();
        let err = replace_with(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err::<(), _>(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("report.json") && err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_parts(&path, &[b"n", b"ew"]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
        assert!(temp_path(&path).to_str().unwrap().ends_with(".json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_under_a_file_is_an_error_naming_it_before_and_when_writing() {
        let dir = std::env::temp_dir().join(format!("vgg-atomic-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = write(&file.join("out.json"), b"y").unwrap_err();
        assert!(err.to_string().contains("plain is a file, not a folder"), "{err}");
        let err = check_writable(&file.join("sub/out.json")).unwrap_err();
        assert!(err.to_string().contains("plain is a file, not a folder"), "{err}");
        assert!(check_writable(&dir).unwrap_err().to_string().contains("is a folder"));
        check_writable(&dir.join("new/out.json")).unwrap();
        assert!(dir.join("new").is_dir() && std::fs::read_dir(dir.join("new")).unwrap().next().is_none());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn links_are_written_through_and_devices_in_place() {
        use std::os::unix::fs::{symlink, FileTypeExt};
        let dir = std::env::temp_dir().join(format!("vgg-atomic-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let (file, link) = (dir.join("real/report.json"), dir.join("link.json"));
        std::fs::write(&file, b"old").unwrap();
        symlink("real/report.json", &link).unwrap();
        check_writable(&link).unwrap();
        write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        // A dangling link: the file it names is created, the link kept.
        let (dangling, named) = (dir.join("dangling.json"), dir.join("real/later.json"));
        symlink("real/later.json", &dangling).unwrap();
        write(&dangling, b"made").unwrap();
        assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&named).unwrap(), b"made");
        // A FIFO (as `--json /dev/stdout` into a pipe is) stays one and its reader gets the
        // bytes; so through a link to it. (A FIFO of the test's own, not a system device: a
        // regression must not replace /dev/null.)
        for (i, via_link) in [false, true].into_iter().enumerate() {
            let fifo = dir.join(format!("fifo{i}"));
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that lives across the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read(fifo).unwrap())
            };
            let out = if via_link {
                let l = dir.join("fifo.json");
                symlink(&fifo, &l).unwrap();
                l
            } else {
                fifo.clone()
            };
            check_writable(&out).unwrap();
            write(&out, b"streamed").unwrap();
            // Before the join: had the FIFO been replaced, its reader would wait forever.
            assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
            assert_eq!(reader.join().unwrap(), b"streamed");
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.join("real")).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["later.json", "report.json"].map(std::ffi::OsString::from), "temporaries left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
