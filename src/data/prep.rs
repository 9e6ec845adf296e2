//! `vgg prep`: an ImageFolder rescaled once to the training scale range and packed into
//! shard files ([`super::Shards`]), so that training reads pixels instead of decoding
//! JPEGs and resizing them from full size.
//!
//! A dataset root split into `train/` and `val/` (the layout `vgg train --data` reads) is
//! prepped split by split into `OUT/train` and `OUT/val` ([`prep_split`]).
//!
//! Each image is decoded, rescaled (antialiased bilinear, [`super::resize`]) so that its
//! shorter side is `max_side` (never upscaled; the default 512 is Smax of scale jittering,
//! so every later rescale to S in 256..=512 is still a downscale or identity) and stored
//! as raw RGB or, with a JPEG quality, re-encoded. Images are processed in parallel one
//! shard at a time into a temporary sibling folder of the output (`.OUT.tmpPID`); only when
//! its shards and `index.json` are all written is it renamed to the output, and a previous
//! output is removed after that. A failed or killed prep leaves the previous output whole,
//! and a directory with an `index.json` is always complete. A prep holds a lock on
//! [`LOCK_FILE`] in its temporary folder while it writes it ([`crate::lockfile`]: released by
//! the system however the prep ends), so the next prep into the same output removes the
//! temporary folders of stopped preps, whose lock it can take, and leaves those of running
//! ones alone, wherever they run (a process id says nothing of a prep in another PID
//! namespace or on another host sharing the folder). It names a previous output that a
//! stopped prep left moved aside, for the user to restore or remove. An output that is not
//! empty and not a previous prep output (no `index.json`), or that overlaps the source, is
//! refused.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use super::resize::{rescaled_size, resize};
use super::shards::{ShardEntry, ShardIndex, INDEX_NAME, RECORD_HEADER, SHARD_HEADER, SHARD_MAGIC, SHARD_VERSION};
use super::{split_dirs, DataError, Dataset, ImageFolder};
use crate::lockfile::Lock;

/// The lock file a prep holds in its temporary folder (`.OUT.tmpPID`) while it writes it. It
/// is removed, still held, just before the folder is renamed to the output, so that a
/// committed output does not hold it (the shard reader reads only the files its index lists).
pub const LOCK_FILE: &str = ".vgg-prep.lock";

/// Settings of `vgg prep`.
#[derive(Clone, Debug)]
pub struct PrepConfig {
    /// Rescale so that the shorter side is this (never upscale); 0 keeps the native size.
    pub max_side: u32,
    /// Images per shard file.
    pub shard_size: usize,
    /// None: raw RGB; Some(q): JPEG of quality q (1-100).
    pub quality: Option<u8>,
    /// An unreadable source image is an error instead of being reported and skipped.
    pub strict: bool,
}

impl Default for PrepConfig {
    fn default() -> Self {
        Self { max_side: 512, shard_size: 1000, quality: None, strict: false }
    }
}

/// What `vgg prep` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct PrepReport {
    /// Images written.
    pub images: usize,
    /// Source images left out as unreadable.
    pub skipped: usize,
    /// "path: reason" of each skipped image, for the caller to report (the progress line
    /// owns standard error while the prep runs).
    pub failures: Vec<String>,
    /// Classes of the source dataset.
    pub classes: usize,
    /// The classes of which no image was stored (every one unreadable, or none in the source:
    /// a validation split may lack a class), which a model trained on the shards never sees.
    pub empty_classes: Vec<String>,
    /// Shard files written.
    pub shards: usize,
    /// Total size of the shard files, in bytes (`index.json` not counted).
    pub bytes: u64,
    /// Wall time of the prep, in seconds.
    pub seconds: f64,
}

/// An image rescaled so that its shorter side is `max_side` when it is longer than that.
pub fn prep_image(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if max_side == 0 || w.min(h) <= max_side {
        return img.clone();
    }
    let (nw, nh) = rescaled_size(w, h, max_side);
    resize(img, nw, nh)
}

/// The record of one image (header and payload).
fn record(img: &RgbImage, label: usize, quality: Option<u8>, name: &str) -> Result<Vec<u8>, DataError> {
    let (w, h) = img.dimensions();
    let fail = |reason: String| DataError::Image { source_name: name.to_string(), reason };
    if w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(fail(format!("{w}x{h} after rescaling: a side over 65535 pixels does not fit a shard record")));
    }
    let payload = match quality {
        None => img.as_raw().clone(),
        Some(q) => {
            let mut bytes = vec![];
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, q)
                .encode_image(img)
                .map_err(|e| fail(format!("JPEG encoding: {e}")))?;
            bytes
        }
    };
    let len = u32::try_from(payload.len()).map_err(|_| fail("record over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
    out.extend_from_slice(&(label as u32).to_le_bytes());
    out.extend_from_slice(&(w as u16).to_le_bytes());
    out.extend_from_slice(&(h as u16).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<(), DataError> {
    crate::atomic::write_parts(path, parts).map_err(|e| DataError::Io { path: path.into(), reason: e.to_string() })
}

/// `p` made absolute with its existing part canonicalized (symbolic links and `..`
/// resolved), so that two spellings of one folder compare equal even before it exists.
fn resolved(p: &Path) -> std::io::Result<PathBuf> {
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
fn check_overlap(out: &Path, abs: &Path, src: &Path) -> Result<(), DataError> {
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
struct Target {
    /// As given (for messages), resolved, and the temporary sibling being written.
    out: PathBuf,
    abs: PathBuf,
    tmp: PathBuf,
    /// Holds the lock on `tmp`'s [`LOCK_FILE`] until the folder is renamed or removed (a
    /// field drops after `Drop::drop`), so that no other prep takes it for a leftover.
    _lock: std::fs::File,
}

impl Target {
    /// Checks `out` (a folder, empty or a previous prep output, not overlapping `src`),
    /// creates its parent and the temporary folder. Errors name the folder.
    fn new(out: &Path, src: Option<&Path>) -> Result<Self, DataError> {
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
        if out.is_dir() && !super::Shards::is_shard_dir(out) {
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
    fn commit(self) -> Result<(), DataError> {
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

/// Preps the ImageFolder `src` into `out` (created if needed; an existing `out` must be
/// empty or a previous prep output, which is replaced only on success). `progress` is
/// called after each shard with (images done, images in all). Unreadable images are
/// skipped and listed in [`PrepReport::failures`], or an error with `cfg.strict`.
pub fn prep(
    src: &Path,
    out: &Path,
    cfg: &PrepConfig,
    progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    // Settings and the output before scanning a large folder.
    check_config(cfg)?;
    if split_dirs(src)?.is_some() {
        // Read as one ImageFolder, its splits would become two classes, validation images
        // mixed into the training set.
        return Err(DataError::Layout {
            path: src.into(),
            reason: "has a train/ folder: a dataset split into train/ (and val/), not one ImageFolder whose \
                     classes are its splits; prep it with prep_split, which writes OUT/train and OUT/val"
                .into(),
        });
    }
    let target = Target::new(out, Some(src))?;
    let ds = ImageFolder::open(src)?;
    write_shards(&ds, Some(src), target, cfg, progress)
}

/// What [`prep_split`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SplitPrepReport {
    /// `OUT/train`.
    pub train: PrepReport,
    /// `OUT/val`, when the source has a `val/` folder.
    pub val: Option<PrepReport>,
}

/// Preps a dataset root split into `src/train` and, when there is one, `src/val` (the layout
/// of [`super::split_dirs`], which `vgg train --data` reads) into `out/train` and `out/val`, so
/// that `vgg train --data OUT` finds both as it would in `src`. The validation set is labelled
/// by the training set's classes (a class may have no folder there), so that both indices list
/// the same classes. Each split is written and swapped in as [`prep`] does, the training set's
/// only once both are complete; a previous split output is replaced (its `val/` removed when
/// `src` has none). `out` must be new, empty or such an output; `progress` gets the split's name
/// (`train`, `val`) first.
pub fn prep_split(
    src: &Path,
    out: &Path,
    cfg: &PrepConfig,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<SplitPrepReport, DataError> {
    check_config(cfg)?;
    let Some((tr, va)) = split_dirs(src)? else {
        return Err(DataError::Layout {
            path: src.into(),
            reason: "no train/ folder: not a dataset split into train/ and val/ (prep it with prep)".into(),
        });
    };
    check_split_out(src, out)?;
    let existed = out.exists();
    let done = (|| {
        let t_train = Target::new(&out.join("train"), Some(src))?;
        let t_val = va.as_ref().map(|_| Target::new(&out.join("val"), Some(src))).transpose()?;
        let train = ImageFolder::open(&tr)?;
        let val = va.as_ref().map(|v| ImageFolder::open_with_classes(v, train.classes())).transpose()?;
        let train_rep = fill(&train, Some(&tr), &t_train.tmp, cfg, |d, n| progress("train", d, n))?;
        let val_rep = match (&val, &t_val, &va) {
            (Some(ds), Some(t), Some(root)) => Some(fill(ds, Some(root), &t.tmp, cfg, |d, n| progress("val", d, n))?),
            _ => None,
        };
        t_train.commit()?;
        match t_val {
            Some(t) => t.commit()?,
            None => {
                // A previous split output's validation set, of another training set now.
                let stale = out.join("val");
                if super::Shards::is_shard_dir(&stale) {
                    std::fs::remove_dir_all(&stale)
                        .map_err(|e| DataError::Io { path: stale.clone(), reason: e.to_string() })?;
                    eprintln!(
                        "prep: removed {}, the previous prep's validation set ({} has no val/ folder)",
                        stale.display(),
                        src.display()
                    );
                }
            }
        }
        Ok(SplitPrepReport { train: train_rep, val: val_rep })
    })();
    if done.is_err() && !existed {
        let _ = std::fs::remove_dir(out); // only when still empty
    }
    done
}

/// Checks the output of [`prep_split`] before any work: a folder apart from `src` that is new,
/// empty, or holds only what a previous split prep wrote (`train/` and `val/` shard
/// directories, and their hidden temporary or moved-aside folders).
fn check_split_out(src: &Path, out: &Path) -> Result<(), DataError> {
    let err = |reason: String| DataError::Io { path: out.into(), reason };
    if out.exists() && !out.is_dir() {
        return Err(err("is a file, not a folder".into()));
    }
    if super::Shards::is_shard_dir(out) {
        return Err(err(format!(
            "holds one shard set ({INDEX_NAME}), not the train/ and val/ of a split: give a new or an empty folder"
        )));
    }
    let abs = resolved(out).map_err(|e| err(e.to_string()))?;
    check_overlap(out, &abs, src)?;
    if !out.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(out).map_err(|e| err(format!("cannot be read: {e}")))? {
        let e = e.map_err(|e| err(format!("cannot be read: {e}")))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = match name.as_str() {
            "train" | "val" => super::Shards::is_shard_dir(&e.path()),
            _ => name.starts_with(".train.") || name.starts_with(".val."),
        };
        if !ours {
            return Err(err(format!(
                "not empty and not the output of a `vgg prep` of a train/val split ({name} is not its train/ or \
                 val/ shards): refusing to replace it; give a new or an empty folder"
            )));
        }
    }
    Ok(())
}

fn check_config(cfg: &PrepConfig) -> Result<(), DataError> {
    if cfg.shard_size == 0 {
        return Err(DataError::Config("--shard-size must be at least 1".into()));
    }
    if let Some(q) = cfg.quality {
        if !(1..=100).contains(&q) {
            return Err(DataError::Config(format!("JPEG quality {q}: must be 1-100")));
        }
    }
    Ok(())
}

/// As [`prep`], from any dataset (the built-in synthetic set, for instance). Each record's
/// source name is `ds.describe(i)`, relative to `root` when it lies under it; `out` must
/// not overlap `root`.
pub fn prep_dataset(
    ds: &dyn Dataset,
    root: Option<&Path>,
    out: &Path,
    cfg: &PrepConfig,
    progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    check_config(cfg)?;
    let target = Target::new(out, root)?;
    write_shards(ds, root, target, cfg, progress)
}

/// The shards and index of `ds` into `target`'s temporary folder, then swapped in.
fn write_shards(
    ds: &dyn Dataset,
    root: Option<&Path>,
    target: Target,
    cfg: &PrepConfig,
    progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    let rep = fill(ds, root, &target.tmp, cfg, progress)?;
    target.commit()?;
    Ok(rep)
}

/// The shards and index of `ds` written into the folder `out` (a [`Target`]'s temporary one).
fn fill(
    ds: &dyn Dataset,
    root: Option<&Path>,
    out: &Path,
    cfg: &PrepConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    let t0 = std::time::Instant::now();
    let ipath = out.join(INDEX_NAME);
    let rel = |i: usize| {
        let name = ds.describe(i);
        match root {
            Some(r) => Path::new(&name).strip_prefix(r).map_or(name.clone(), |p| p.display().to_string()),
            None => name,
        }
    };
    let mut index = ShardIndex {
        format: "vgg-shards".into(),
        version: SHARD_VERSION,
        encoding: if cfg.quality.is_some() { "jpeg" } else { "raw" }.into(),
        quality: cfg.quality,
        max_side: cfg.max_side,
        classes: ds.classes().to_vec(),
        images: 0,
        skipped: 0,
        shards: vec![],
        records: vec![],
        sources: vec![],
    };
    let mut failures = vec![];
    let mut per_class = vec![0usize; ds.classes().len()];
    let n = ds.len();
    let mut pending: Vec<(Vec<u8>, String)> = vec![];
    let mut start = 0;
    while start < n || !pending.is_empty() {
        // Fill up to one shard's worth of records (skips can leave a chunk short).
        while pending.len() < cfg.shard_size && start < n {
            let end = (start + cfg.shard_size - pending.len()).min(n);
            let recs: Vec<Result<(usize, Vec<u8>), DataError>> = (start..end)
                .into_par_iter()
                .map(|i| {
                    let (img, label) = ds.load(i)?;
                    Ok((label, record(&prep_image(&img, cfg.max_side), label, cfg.quality, &ds.describe(i))?))
                })
                .collect();
            for (i, r) in (start..end).zip(recs) {
                match r {
                    Ok((label, rec)) => {
                        if let Some(c) = per_class.get_mut(label) {
                            *c += 1;
                        }
                        pending.push((rec, rel(i)));
                    }
                    Err(e) if e.is_per_image() && !cfg.strict => {
                        failures.push(e.to_string());
                        index.skipped += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            start = end;
        }
        if pending.is_empty() {
            break;
        }
        let shard = index.shards.len();
        let file = format!("shard-{shard:05}.bin");
        let mut header = Vec::with_capacity(SHARD_HEADER as usize);
        header.extend_from_slice(SHARD_MAGIC);
        header.extend_from_slice(&SHARD_VERSION.to_le_bytes());
        header.extend_from_slice(&(pending.len() as u32).to_le_bytes());
        let mut offset = SHARD_HEADER;
        let mut parts: Vec<&[u8]> = vec![&header];
        for (rec, source) in &pending {
            index.records.push((shard as u32, offset));
            index.sources.push(source.clone());
            offset += rec.len() as u64;
            parts.push(rec);
        }
        write_atomic(&out.join(&file), &parts)?;
        index.shards.push(ShardEntry { file, images: pending.len(), bytes: offset });
        index.images += pending.len();
        pending.clear();
        progress(start, n);
    }
    if index.images == 0 {
        let path = root.map_or_else(|| PathBuf::from(ds.describe(0)), Path::to_path_buf);
        return Err(DataError::Layout { path, reason: format!("no image could be read ({} skipped)", index.skipped) });
    }
    index.validate(&ipath)?;
    let json = serde_json::to_vec(&index).map_err(|e| DataError::Config(format!("index JSON: {e}")))?;
    write_atomic(&ipath, &[&json])?;
    Ok(PrepReport {
        images: index.images,
        skipped: index.skipped,
        failures,
        classes: index.classes.len(),
        empty_classes: index.classes.iter().zip(&per_class).filter(|(_, n)| **n == 0).map(|(c, _)| c.clone()).collect(),
        shards: index.shards.len(),
        bytes: index.shards.iter().map(|s| s.bytes).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
