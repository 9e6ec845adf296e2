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

use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use super::resize::{rescaled_size, resize};
use super::shards::INDEX_NAME;
use super::{split_dirs, DataError, Dataset, ImageFolder};

mod target;
mod write;
use target::{check_overlap, resolved, Target};
use write::fill;

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
