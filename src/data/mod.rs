//! The data pipeline: datasets, the paper's transforms and a threaded loader, in pure Rust.
//!
//! - [`Dataset`]: indexed, decoded RGB images with class labels. [`ImageFolder`] reads
//!   torchvision's layout and class order; [`Synthetic`] draws learnable procedural images
//!   (no download); [`MemoryDataset`] holds encoded files in memory (benchmarks, tests);
//!   [`Shards`] reads the pre-resized shard files of `vgg prep` ([`prep`]).
//! - [`Transform`]: training ([`TrainTransform`]: isotropic rescale to S, fixed or
//!   jittered, random crop, flip, AlexNet's PCA colour shift) or test ([`TestTransform`]:
//!   rescale to Q, centre crop or the whole image). Resizing is antialiased bilinear, the
//!   filter of PIL and torchvision ([`resize`]), computed only over the crop's window.
//! - [`Loader`]: worker threads, a bounded prefetch window, shuffling, recycled buffers;
//!   batches of u8 NHWC RGB. Mean subtraction happens on the GPU
//!   ([`crate::ops::normalize_input`], with `flip = None`: flips are already applied).
//! - [`stats`]: the training set's mean RGB and colour PCA (`vgg stats`); [`mod@bench`]:
//!   decode and augmentation throughput (`vgg bench data`).
//!
//! Every random choice is drawn from a [`SampleRng`] seeded by (seed, epoch, sample index),
//! never from thread order, so a run is reproducible whatever the number of workers.

pub mod bench;
mod folder;
mod loader;
pub mod prep;
pub mod resize;
pub mod shards;
pub mod stats;
mod synthetic;
mod transform;

use std::path::PathBuf;

pub use folder::{decode_rgb, ImageFolder, MemoryDataset, IMG_EXTENSIONS};
pub use loader::{Epoch, EpochSummary, HostBatch, Loader, LoaderConfig};
pub use shards::{open_dir, open_dir_with_classes, split_dirs, Shards};
pub use stats::{DatasetStats, Pca};
pub use synthetic::Synthetic;
pub use transform::{Plan, Scale, StageTimes, TestTransform, TrainTransform, Transform, Worker};

/// The largest image side any size option accepts: the rescale S and Q, crops, `vgg stats
/// --size`, the synthetic sets' `--synthetic-size`. Options are checked against it before any
/// work, because one image of side s costs s * s * 3 bytes (more with the longer side) and
/// its f32 resize intermediate four times that: a typo such as 100000 asked for 36 GB and
/// aborted the process. 4096 is eight times the paper's largest scale (512); a 4096 x 5120
/// image (the synthetic set's 5:4) is 60 MiB of RGB and 240 MiB of intermediate, well under
/// a GiB even with several loader workers.
pub const MAX_SIDE: u32 = 4096;

/// The most images `--synthetic-len` accepts (`vgg train`, `vgg eval`): each image of an epoch
/// costs 8 bytes of shuffled index up front, so a typo such as 100000000000 asked for 800 GB and
/// aborted the process. 10^8 is 78 times ImageNet's training set (800 MB of indices).
pub const MAX_SYNTHETIC_LEN: usize = 100_000_000;

/// `Ok` when `value` is at most [`MAX_SIDE`]; else an error naming `option` (e.g. `--size`).
pub fn check_side(option: &str, value: u32) -> Result<(), DataError> {
    if value > MAX_SIDE {
        return Err(DataError::Config(format!(
            "{option} {value} is above {MAX_SIDE}, the largest image side the data pipeline accepts \
             (an image of that size would need gigabytes)"
        )));
    }
    Ok(())
}

/// A labelled image collection, indexed `0..len()`. Implementations are shared between
/// loader threads, so `load` takes `&self`.
pub trait Dataset: Send + Sync {
    /// Images in the dataset.
    fn len(&self) -> usize;
    /// No images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names, in class-index order.
    fn classes(&self) -> &[String];
    /// Decoded RGB image `i` (native size) and its class index.
    fn load(&self, i: usize) -> Result<(image::RgbImage, usize), DataError>;
    /// Image `i`'s class index without reading the image, where the dataset knows it (an
    /// ImageFolder does from its folders); `None` where only `load` can tell.
    fn label(&self, _i: usize) -> Option<usize> {
        None
    }
    /// Where image `i` comes from (a path, or a description), for reports.
    fn describe(&self, i: usize) -> String {
        format!("image {i}")
    }
}

/// Errors of the data pipeline. Each names the file (or dataset index) and the reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's error, as text.
        reason: String,
    },
    /// A file is empty, truncated, corrupt, or not an image the decoder knows.
    #[error("{}: cannot decode: {reason}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's error, as text.
        reason: String,
    },
    /// The folder does not have torchvision's ImageFolder layout.
    #[error("{}: not an ImageFolder: {reason}", path.display())]
    Layout {
        /// The folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An index past the end of the dataset.
    #[error("index {index} out of range for a dataset of {len} images")]
    Index {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// An image the transform cannot use (named by its source).
    #[error("{source_name}: {reason}")]
    Image {
        /// Where the image comes from ([`Dataset::describe`]).
        source_name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Every image of a run was unreadable and skipped: nothing to measure or write.
    #[error("no image could be read ({skipped} skipped)")]
    NoImage {
        /// Images skipped as unreadable.
        skipped: usize,
    },
    /// Settings that do not fit together.
    #[error("invalid data configuration: {0}")]
    Config(String),
    /// A loader worker thread died (a bug: the message is the panic's).
    #[error("data loader worker panicked: {0}")]
    Worker(String),
}

impl DataError {
    /// True for a problem with one image (skippable unless strict), false for the run's setup.
    pub fn is_per_image(&self) -> bool {
        matches!(self, DataError::Io { .. } | DataError::Decode { .. } | DataError::Image { .. })
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The small deterministic generator behind every random choice of the pipeline
/// (SplitMix64: a fixed algorithm, so streams never change with a dependency's version).
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    /// The stream for one (seed, epoch, sample index): independent of thread and batch order.
    pub fn for_sample(seed: u64, epoch: u64, index: u64) -> Self {
        Self(mix64(mix64(mix64(seed ^ 0x5eed_da7a) ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ index))
    }
    /// A stream from one seed, for draws that belong to no sample.
    pub fn new(seed: u64) -> Self {
        Self(mix64(seed))
    }
    /// The next 64 random bits (SplitMix64's step).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in `lo..=hi` (Lemire's multiply-shift; the bias is below 2^-32).
    ///
    /// # Panics
    /// If `lo > hi` (an empty range), as `rand`'s `gen_range` does: a release build used to
    /// wrap the span and return numbers outside both bounds.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        assert!(lo <= hi, "SampleRng::range: empty range {lo}..={hi}");
        let span = (hi - lo) as u64 + 1;
        lo + (((self.next_u64() >> 32) * span) >> 32) as u32
    }
    /// A fair coin flip (the top bit of [`SampleRng::next_u64`]).
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A permutation of `0..n` for one (seed, epoch): Fisher-Yates over a [`SampleRng`].
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SampleRng::for_sample(seed ^ 0x05ff_1e00, epoch, u64::MAX);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// `Ok` when `--data` names a folder; else an error naming the option and its value (the
/// file system's "No such file or directory" named neither, and `--data ""` read as `: No
/// such file or directory`).
pub fn check_data_dir(data: &str) -> Result<(), DataError> {
    let p = std::path::Path::new(data);
    if p.is_dir() {
        return Ok(());
    }
    let what = if p.exists() { "is a file, not a folder" } else { "no such folder" };
    Err(DataError::Config(format!(
        "--data `{data}`: {what} (give `synthetic`, an ImageFolder or a `vgg prep` shard directory)"
    )))
}

/// The images `indices` of another dataset, in that order (a quick run on part of a set).
pub struct Subset {
    inner: std::sync::Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// Image `i` of the subset is image `indices[i]` of `inner` (an index past `inner`'s end
    /// fails when loaded, with `inner`'s error).
    pub fn new(inner: std::sync::Arc<dyn Dataset>, indices: Vec<usize>) -> Self {
        Self { inner, indices }
    }

    /// `n` images drawn without replacement by a seeded shuffle (all when `n >= len`).
    pub fn sample(inner: std::sync::Arc<dyn Dataset>, n: usize, seed: u64) -> Self {
        let mut idx = shuffled(inner.len(), seed, 0);
        idx.truncate(n);
        Self::new(inner, idx)
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> &[String] {
        self.inner.classes()
    }

    fn load(&self, i: usize) -> Result<(image::RgbImage, usize), DataError> {
        let j = *self.indices.get(i).ok_or(DataError::Index { index: i, len: self.indices.len() })?;
        self.inner.load(j)
    }

    fn describe(&self, i: usize) -> String {
        self.indices.get(i).map_or_else(|| format!("image {i}"), |&j| self.inner.describe(j))
    }
}
