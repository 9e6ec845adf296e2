//! The shard files and `index.json` of a dataset: images loaded and encoded in parallel, one
//! shard's worth at a time (so that memory stays at one shard whatever the dataset's size), each
//! file written atomically into a [`Target`](super::target::Target)'s temporary folder.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use super::{prep_image, PrepConfig, PrepReport};
use crate::data::shards::{
    ShardEntry, ShardIndex, INDEX_NAME, RECORD_HEADER, SHARD_HEADER, SHARD_MAGIC, SHARD_VERSION,
};
use crate::data::{DataError, Dataset};

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

/// The shards and index of `ds` written into the folder `out` (a [`Target`](super::target::Target)'s temporary one).
pub(super) fn fill(
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
