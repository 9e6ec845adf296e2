//! Pre-resized images packed into shard files (`vgg prep`), read back as a [`Dataset`].
//!
//! A shard directory holds `index.json` ([`ShardIndex`]: class names, image count, the
//! shard files and every image's (shard, offset)) and `shard-NNNNN.bin` files: a 16-byte
//! header (`VGGSHRD1` magic, format version u32 LE, image count u32 LE) then one record
//! per image: label u32, width u16, height u16, payload length u32 (all LE) and the
//! payload: raw RGB bytes (`width * height * 3`, no decoding at all) or, with
//! `encoding = "jpeg"`, a JPEG. [`Shards::load`] returns the stored image, so the loader
//! and the transforms apply to it unchanged.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{decode_rgb, DataError, Dataset, ImageFolder};

/// The first 8 bytes of every shard file.
pub const SHARD_MAGIC: &[u8; 8] = b"VGGSHRD1";
/// The shard and index format version.
pub const SHARD_VERSION: u32 = 1;
/// Bytes of a shard file's header: magic, version, image count.
pub const SHARD_HEADER: u64 = 16;
/// Bytes of a record's header: label, width, height, payload length.
pub const RECORD_HEADER: u64 = 12;
/// The index's file name inside a shard directory.
pub const INDEX_NAME: &str = "index.json";

/// One shard file of an index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    /// File name, relative to the shard directory.
    pub file: String,
    /// Images stored in it.
    pub images: usize,
    /// File size in bytes.
    pub bytes: u64,
}

/// `index.json`: everything needed to find an image without scanning the shards.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardIndex {
    /// Always `vgg-shards`.
    pub format: String,
    /// The format version ([`SHARD_VERSION`]).
    pub version: u32,
    /// `raw` (RGB bytes) or `jpeg`.
    pub encoding: String,
    /// JPEG quality (jpeg encoding only).
    pub quality: Option<u8>,
    /// Images were rescaled so that their shorter side is at most this (0: native size).
    pub max_side: u32,
    /// Class names, in class-index order (the source dataset's).
    pub classes: Vec<String>,
    /// Images stored, over all shards.
    pub images: usize,
    /// Source images that could not be read and were left out.
    pub skipped: usize,
    /// The shard files, in the order `records` refers to them.
    pub shards: Vec<ShardEntry>,
    /// Per image, in dataset order: (shard index, byte offset of its record).
    pub records: Vec<(u32, u64)>,
    /// Per image: its source file, relative to the source folder (for reports).
    pub sources: Vec<String>,
}

impl ShardIndex {
    /// Structural checks (counts and references agree); `path` names the index in errors.
    pub fn validate(&self, path: &Path) -> Result<(), DataError> {
        let bad = |reason: String| Err(DataError::Layout { path: path.into(), reason });
        if self.format != "vgg-shards" {
            return bad(format!("format {:?}, expected \"vgg-shards\"", self.format));
        }
        if self.version != SHARD_VERSION {
            return bad(format!("version {}, this build reads version {SHARD_VERSION}", self.version));
        }
        if self.encoding != "raw" && self.encoding != "jpeg" {
            return bad(format!("unknown encoding {:?} (raw or jpeg)", self.encoding));
        }
        if self.classes.is_empty() {
            return bad("no classes".into());
        }
        if self.records.len() != self.images || self.sources.len() != self.images {
            return bad(format!(
                "{} images but {} records and {} sources",
                self.images,
                self.records.len(),
                self.sources.len()
            ));
        }
        if self.shards.iter().map(|s| s.images).sum::<usize>() != self.images {
            return bad("the shards' image counts do not add up to the image count".into());
        }
        if let Some((i, r)) = self.records.iter().enumerate().find(|(_, r)| r.0 as usize >= self.shards.len()) {
            return bad(format!("image {i} refers to shard {} of {}", r.0, self.shards.len()));
        }
        Ok(())
    }
}

/// A shard directory written by `vgg prep`: the stored (pre-resized) images and labels.
#[derive(Clone, Debug)]
pub struct Shards {
    root: PathBuf,
    index: Arc<ShardIndex>,
    files: Arc<Vec<File>>,
}

impl Shards {
    /// True when `dir` holds a `vgg prep` `index.json` (a shard directory rather than an
    /// ImageFolder): one whose first 256 bytes hold both `"format"` and `"vgg-shards"` (prep
    /// writes that field first; the whole index is checked when opened). Any other file of
    /// that name (a dataset's licence or metadata) leaves `dir` an ImageFolder, which ignores
    /// files beside its class folders; taken for a shard index, it made the folder unreadable
    /// ("not a shard index: missing field `format`").
    pub fn is_shard_dir(dir: &Path) -> bool {
        use std::io::Read;
        // A regular file only: opening a FIFO of that name would wait for a writer.
        let path = dir.join(INDEX_NAME);
        if !path.is_file() {
            return false;
        }
        let Ok(f) = File::open(&path) else { return false };
        let mut head = Vec::with_capacity(256);
        if f.take(256).read_to_end(&mut head).is_err() {
            return false;
        }
        let head = String::from_utf8_lossy(&head);
        head.contains("\"format\"") && head.contains("\"vgg-shards\"")
    }

    /// Reads `dir/index.json` and opens every shard, checking its header and size.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let ipath = dir.join(INDEX_NAME);
        let text = std::fs::read(&ipath).map_err(|e| DataError::Io { path: ipath.clone(), reason: e.to_string() })?;
        let index: ShardIndex = serde_json::from_slice(&text)
            .map_err(|e| DataError::Layout { path: ipath.clone(), reason: format!("not a shard index: {e}") })?;
        index.validate(&ipath)?;
        let mut files = Vec::with_capacity(index.shards.len());
        for s in &index.shards {
            let path = dir.join(&s.file);
            let io = |e: std::io::Error| DataError::Io { path: path.clone(), reason: e.to_string() };
            let f = File::open(&path).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            let corrupt = |reason: String| DataError::Decode { path: path.clone(), reason };
            if len != s.bytes {
                return Err(corrupt(format!("{len} bytes, {INDEX_NAME} says {} (truncated or rewritten?)", s.bytes)));
            }
            let mut head = [0u8; SHARD_HEADER as usize];
            f.read_exact_at(&mut head, 0).map_err(|e| corrupt(format!("shard header: {e}")))?;
            let count = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
            let version = u32::from_le_bytes(head[8..12].try_into().unwrap());
            if &head[..8] != SHARD_MAGIC || version != SHARD_VERSION {
                return Err(corrupt("not a vgg shard file (bad magic or version)".into()));
            }
            if count != s.images {
                return Err(corrupt(format!("{count} images, {INDEX_NAME} says {}", s.images)));
            }
            files.push(f);
        }
        Ok(Self { root: dir.into(), index: Arc::new(index), files: Arc::new(files) })
    }

    /// The shard directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its `index.json`, as read.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Total bytes of the shard files.
    pub fn bytes(&self) -> u64 {
        self.index.shards.iter().map(|s| s.bytes).sum()
    }
}

impl Dataset for Shards {
    fn len(&self) -> usize {
        self.index.images
    }

    fn classes(&self) -> &[String] {
        &self.index.classes
    }

    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        let &(shard, offset) = self.index.records.get(i).ok_or(DataError::Index { index: i, len: self.len() })?;
        let entry = &self.index.shards[shard as usize];
        let file = &self.files[shard as usize];
        let path = self.root.join(&entry.file);
        let corrupt = |reason: String| DataError::Decode { path: path.clone(), reason: format!("image {i}: {reason}") };
        let mut head = [0u8; RECORD_HEADER as usize];
        file.read_exact_at(&mut head, offset).map_err(|e| corrupt(format!("record at byte {offset}: {e}")))?;
        let label = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
        let w = u16::from_le_bytes(head[4..6].try_into().unwrap()) as u32;
        let h = u16::from_le_bytes(head[6..8].try_into().unwrap()) as u32;
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as u64;
        if label >= self.index.classes.len() || w == 0 || h == 0 {
            return Err(corrupt(format!("bad record at byte {offset}: label {label}, {w}x{h}")));
        }
        let raw = self.index.encoding == "raw";
        if offset + RECORD_HEADER + len > entry.bytes || (raw && len != w as u64 * h as u64 * 3) {
            return Err(corrupt(format!("bad record at byte {offset}: {len} payload bytes for {w}x{h}")));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset + RECORD_HEADER).map_err(|e| corrupt(format!("payload: {e}")))?;
        let img = if raw {
            RgbImage::from_raw(w, h, buf).ok_or_else(|| corrupt("payload size".into()))?
        } else {
            let img = decode_rgb(&buf, &path).map_err(|e| corrupt(e.to_string()))?;
            if img.dimensions() != (w, h) {
                return Err(corrupt(format!("JPEG is {:?}, record says {w}x{h}", img.dimensions())));
            }
            img
        };
        Ok((img, label))
    }

    fn describe(&self, i: usize) -> String {
        match (self.index.records.get(i), self.index.sources.get(i)) {
            (Some(&(s, _)), Some(src)) => {
                format!("{} image {i} ({src})", self.root.join(&self.index.shards[s as usize].file).display())
            }
            _ => format!("image {i}"),
        }
    }
}

/// The training folder and, when there is one, the validation folder of a split dataset root:
/// `dir/train` and `dir/val`, the layout `vgg train --data DIR` reads (each an ImageFolder or a
/// shard directory). `None` when `dir` is itself one dataset: a shard directory, a folder with
/// no `train/` sub-folder, or an ImageFolder with a class named train (CIFAR-100's, Pascal
/// VOC's): a `train/` of images only, beside other class folders. The commands that read the
/// training side of such a root (train, stats, prep, bench data) decide by this, so that none
/// reads its splits as two classes; `vgg eval` reads `DIR/val`, refusing a split root without
/// one (and, not split, takes `DIR/val` when there is one).
///
/// A split root holds a `train/` of class folders (or shards; a stray file beside them is
/// ignored, as torchvision ignores it) and `val/`, optionally `test/` (not read), hidden
/// folders (`.ipynb_checkpoints`) and `__MACOSX/` (left by unzipping a macOS archive). Errors,
/// since any reading would be a guess:
/// - another folder beside a `train/` of class folders: a flat ImageFolder whose class train
///   has sub-folders (bus, car, train/freight), read as a split root, trained on train's
///   sub-folders alone, and Roboflow's `valid/` was silently not validated on;
/// - a `train/` of images beside split folders only (`test/`, `val/`, `valid/`, Kaggle's
///   `test1/`) or none: an unlabelled split (labels in a CSV), which read as one ImageFolder
///   trained a classifier of its split names.
pub fn split_dirs(dir: &Path) -> Result<Option<(PathBuf, Option<PathBuf>)>, DataError> {
    let (train, val) = (dir.join("train"), dir.join("val"));
    if Shards::is_shard_dir(dir) || !train.is_dir() {
        return Ok(None);
    }
    use super::folder::{is_image_name, read_dir_sorted};
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let visible_dir = |p: &&PathBuf| p.is_dir() && !name(p).starts_with('.') && name(p) != "__MACOSX";
    let in_train = read_dir_sorted(&train)?;
    let class_folders = in_train.iter().filter(visible_dir).count() > 0 || Shards::is_shard_dir(&train);
    // Sorted by name, as the message lists them.
    let mut others: Vec<String> =
        read_dir_sorted(dir)?.iter().filter(visible_dir).map(|p| name(p)).filter(|n| n != "train").collect();
    const SPLIT_NAMES: [&str; 5] = ["val", "test", "test1", "valid", "validation"];
    if !class_folders {
        let images = in_train.iter().any(|p| p.is_file() && p.file_name().is_some_and(is_image_name));
        // A class named train among other classes.
        if images && others.iter().any(|o| !SPLIT_NAMES.contains(&o.as_str())) {
            return Ok(None);
        }
        return Err(DataError::Layout {
            path: train,
            reason: "holds no class folders (an unlabelled split? its images must be sorted into one folder per \
                     class), beside split folders only, so it is no class of an ImageFolder either"
                .into(),
        });
    }
    others.retain(|o| o != "val" && o != "test");
    if !others.is_empty() {
        let hint = if others.iter().any(|o| o == "valid" || o == "validation") && !val.is_dir() {
            " (the validation folder must be named val/)"
        } else {
            ""
        };
        return Err(DataError::Layout {
            path: dir.into(),
            reason: format!(
                "has a train/ folder of sub-folders beside other folders ({}){hint}: neither a dataset split into \
                 train/ and val/ (which holds only those, and test/) nor plainly an ImageFolder with a class named \
                 train; move the other folders out of a split dataset, or give a split's train/ or val/ folder \
                 itself",
                others.join(", ")
            ),
        });
    }
    Ok(Some((train, val.is_dir().then_some(val))))
}

/// A shard directory (detected by its `index.json`) or an ImageFolder.
pub fn open_dir(dir: &Path) -> Result<Arc<dyn Dataset>, DataError> {
    if Shards::is_shard_dir(dir) {
        Ok(Arc::new(Shards::open(dir)?))
    } else {
        Ok(Arc::new(ImageFolder::open(dir)?))
    }
}

/// Like [`open_dir`], with a given class list (a validation set labelled like its training
/// set): a shard directory's classes must be exactly these.
pub fn open_dir_with_classes(dir: &Path, classes: &[String]) -> Result<Arc<dyn Dataset>, DataError> {
    if Shards::is_shard_dir(dir) {
        let s = Shards::open(dir)?;
        if s.classes() != classes {
            return Err(DataError::Layout {
                path: dir.join(INDEX_NAME),
                reason: format!(
                    "its {} classes differ from the training set's {} (prep both from folders with the same classes)",
                    s.classes().len(),
                    classes.len()
                ),
            });
        }
        Ok(Arc::new(s))
    } else {
        Ok(Arc::new(ImageFolder::open_with_classes(dir, classes)?))
    }
}
