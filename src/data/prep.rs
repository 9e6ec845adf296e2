//! `vgg prep`: an ImageFolder rescaled once to the training scale range and packed into
//! shard files ([`super::Shards`]), so that training reads pixels instead of decoding
//! JPEGs and resizing them from full size.
//!
//! Each image is decoded, rescaled (antialiased bilinear, [`super::resize`]) so that its
//! shorter side is `max_side` (never upscaled; the default 512 is Smax of scale jittering,
//! so every later rescale to S in 256..=512 is still a downscale or identity) and stored
//! as raw RGB or, with a JPEG quality, re-encoded. Images are processed in parallel one
//! shard at a time; each shard and then `index.json` are written to a temporary name and
//! renamed, so a directory with an `index.json` is always complete.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use super::resize::{rescaled_size, resize};
use super::shards::{ShardEntry, ShardIndex, INDEX_NAME, RECORD_HEADER, SHARD_HEADER, SHARD_MAGIC, SHARD_VERSION};
use super::{DataError, Dataset, ImageFolder};

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
    pub images: usize,
    pub skipped: usize,
    pub classes: usize,
    pub shards: usize,
    pub bytes: u64,
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

/// Preps the ImageFolder `src` into `out` (created if needed). `progress` is called after
/// each shard with (images done, images in all). Unreadable images are reported on
/// standard error and skipped unless `cfg.strict`.
pub fn prep(
    src: &Path,
    out: &Path,
    cfg: &PrepConfig,
    progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    check_config(cfg)?; // before scanning a large folder (prep_dataset checks again: cheap)
    let ds = ImageFolder::open(src)?;
    prep_dataset(&ds, Some(src), out, cfg, progress)
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
/// source name is `ds.describe(i)`, relative to `root` when it lies under it.
pub fn prep_dataset(
    ds: &dyn Dataset,
    root: Option<&Path>,
    out: &Path,
    cfg: &PrepConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<PrepReport, DataError> {
    check_config(cfg)?;
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(out).map_err(|e| DataError::Io { path: out.into(), reason: e.to_string() })?;
    // A previous index would describe shards about to be overwritten: remove it first.
    let ipath = out.join(INDEX_NAME);
    if ipath.exists() {
        std::fs::remove_file(&ipath).map_err(|e| DataError::Io { path: ipath.clone(), reason: e.to_string() })?;
    }
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
    let n = ds.len();
    let mut pending: Vec<(Vec<u8>, String)> = vec![];
    let mut start = 0;
    while start < n || !pending.is_empty() {
        // Fill up to one shard's worth of records (skips can leave a chunk short).
        while pending.len() < cfg.shard_size && start < n {
            let end = (start + cfg.shard_size - pending.len()).min(n);
            let recs: Vec<Result<Vec<u8>, DataError>> = (start..end)
                .into_par_iter()
                .map(|i| {
                    let (img, label) = ds.load(i)?;
                    record(&prep_image(&img, cfg.max_side), label, cfg.quality, &ds.describe(i))
                })
                .collect();
            for (i, r) in (start..end).zip(recs) {
                match r {
                    Ok(rec) => pending.push((rec, rel(i))),
                    Err(e) if e.is_per_image() && !cfg.strict => {
                        eprintln!("warning: skipped {}: {e}", ds.describe(i));
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
        return Err(DataError::Layout { path, reason: "no image could be read".into() });
    }
    index.validate(&ipath)?;
    let json = serde_json::to_vec(&index).map_err(|e| DataError::Config(format!("index JSON: {e}")))?;
    write_atomic(&ipath, &[&json])?;
    Ok(PrepReport {
        images: index.images,
        skipped: index.skipped,
        classes: index.classes.len(),
        shards: index.shards.len(),
        bytes: index.shards.iter().map(|s| s.bytes).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
