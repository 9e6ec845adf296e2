//! What `vgg train` reads and how: the training and validation sets, their transforms
//! (the paper's rescale to S or scale jittering, random crops, flips and colour shift; the
//! test scale Q), the network's input normalisation, and validation passes.

use super::TrainArgs;
use crate::data::{
    open_dir, open_dir_with_classes, split_dirs, Dataset, DatasetStats, HostBatch, Loader, Pca, Scale, Synthetic,
    TestTransform, TrainTransform, Transform,
};
use crate::model::Vgg;
use crate::reference::InputNorm;
use crate::{reference, Tensor};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// The data side of a run.
pub struct RunData {
    /// The training set: `--data`'s `train/` (or `--data` itself without one), or the
    /// synthetic set.
    pub train: Arc<dyn Dataset>,
    /// The validation set: `--data`'s `val/` with the training set's classes, or a synthetic
    /// one; None when `--data` has no `val/`.
    pub val: Option<Arc<dyn Dataset>>,
    /// The training augmentation (`--scale`, `--input`, `--color-shift`).
    pub train_tf: TrainTransform,
    /// The validation preprocessing: rescale to Q (`--test-scale`, else the training scale's
    /// Q), then the centre `--input` crop.
    pub test_tf: TestTransform,
    /// What the network subtracts (and divides by) at its input; recorded in checkpoints.
    pub norm: InputNorm,
}

/// Opens the datasets and works out the transforms and the normalisation from `a`.
pub fn prepare(a: &TrainArgs) -> Result<RunData> {
    let stats = match &a.stats {
        Some(p) => Some(DatasetStats::load(p).with_context(|| format!("--stats {}", p.display()))?),
        None => None,
    };
    let (train_tf, test_tf) = transforms(a, stats.as_ref())?;
    let norm = input_norm(a, stats.as_ref())?;
    let (train, val) = datasets(a)?;
    Ok(RunData { train, val, train_tf, test_tf, norm })
}

/// The training augmentation and the validation preprocessing `a` asks for.
pub fn transforms(a: &TrainArgs, stats: Option<&DatasetStats>) -> Result<(TrainTransform, TestTransform)> {
    let synthetic = a.data == "synthetic";
    let crop = u32::try_from(a.input).context("--input")?;
    let scale = match &a.scale {
        Some(s) => Scale::parse(s).context("--scale")?,
        // The synthetic images are `input` pixels a side; an ImageFolder's are rescaled to
        // 8/7 of the crop, torchvision's 256 for 224.
        None if synthetic => Scale::Fixed(crop),
        None => Scale::Fixed(crop * 8 / 7),
    };
    let smallest = scale.range().0;
    if smallest < crop {
        bail!("--scale {smallest} is below the --input crop of {crop}: a rescaled image must hold the crop");
    }
    let q = a.test_scale.unwrap_or_else(|| scale.test_q());
    if q < crop {
        bail!("--test-scale {q} is below the --input crop of {crop}");
    }
    let color_std = a.color_shift.unwrap_or(if synthetic { 0.0 } else { 0.1 });
    if !(color_std.is_finite() && color_std >= 0.0) {
        bail!("--color-shift {color_std}: the alphas' standard deviation must be finite and non-negative");
    }
    let pca = stats.map_or(Pca::IMAGENET, |s| s.pca);
    let train_tf = TrainTransform { scale, crop, flip: true, color_shift: (color_std > 0.0).then_some(pca), color_std };
    let test_tf = TestTransform { scale: q, crop: Some(crop) };
    Transform::from(train_tf.clone()).validate()?;
    Transform::from(test_tf.clone()).validate()?;
    Ok((train_tf, test_tf))
}

/// The input normalisation: --mean, else --stats' mean (both mean-only, the paper's), else
/// torchvision's ImageNet mean and std.
pub fn input_norm(a: &TrainArgs, stats: Option<&DatasetStats>) -> Result<InputNorm> {
    if let Some(m) = &a.mean {
        let v: Vec<f32> = m.split(',').map(|t| t.trim().parse::<f32>()).collect::<Result<_, _>>().unwrap_or_default();
        match v[..] {
            [r, g, b] if v.iter().all(|&x| crate::data::stats::is_rgb_value(x as f64)) => {
                return Ok(InputNorm { mean: [r, g, b], std: None })
            }
            _ => bail!("--mean `{m}`: expected three numbers from 0 to 255, like 123.68,116.78,103.94"),
        }
    }
    Ok(stats.map_or(InputNorm::IMAGENET, |s| s.norm()))
}

/// Training set and optional validation set.
type Datasets = (Arc<dyn Dataset>, Option<Arc<dyn Dataset>>);

fn datasets(a: &TrainArgs) -> Result<Datasets> {
    if a.data == "synthetic" {
        let s = a.input as u32;
        let train = Synthetic::new(a.classes, s, a.synthetic_len, a.seed).square();
        let val = Synthetic::new(a.classes, s, (a.synthetic_len / 4).max(a.batch), a.seed ^ 0x5eed).square();
        return Ok((Arc::new(train), Some(Arc::new(val))));
    }
    crate::data::check_data_dir(&a.data)?;
    let dir = PathBuf::from(&a.data);
    // Each of these may be an ImageFolder or a `vgg prep` shard directory (with index.json).
    match split_dirs(&dir)? {
        Some((tr, va)) => {
            let train = open_dir(&tr)?;
            let val = va.map(|va| open_dir_with_classes(&va, train.classes())).transpose()?;
            Ok((train, val))
        }
        None => Ok((open_dir(&dir)?, None)),
    }
}

/// A batch's images and labels, filled up to `n` rows with its own images in turn. Loader
/// batches are short by unreadable images, or by being an epoch's last (kept by validation,
/// and by training with --keep-last): a training step keeps the batch's images instead of
/// dropping them all; validation counts only the batch's own rows. `b.n` must be positive.
pub fn fill(b: &HostBatch, n: usize) -> (Vec<u8>, Vec<i32>) {
    assert!(b.n > 0 && b.n <= n, "fill: a batch of {} rows into {n}", b.n);
    let per = b.images.len() / b.n;
    let images = b.images.iter().copied().cycle().take(n * per).collect();
    let labels = b.labels.iter().copied().cycle().take(n).collect();
    (images, labels)
}

/// A validation pass's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    /// Mean cross-entropy over the images scored (NaN when none was).
    pub loss: f64,
    /// Top-1 accuracy, 0 to 1 (NaN when no image was scored).
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = min(5, classes)), 0 to 1 (NaN when no image was scored).
    pub top5: f64,
    /// Images scored.
    pub images: usize,
    /// Images left out as unreadable.
    pub skipped: usize,
}

/// Scores a whole dataset (no dropout). A short batch (an epoch's last, or one short of
/// unreadable images) is filled up with its own images ([`fill`]); the copies are not counted.
/// With no image scored (every one unreadable) the scores are NaN, not the 0 of a division by
/// a count of at least 1, which read as a real validation of 0% accuracy and loss 0.
pub fn validate(vgg: &mut Vgg, loader: &Loader) -> Result<Validation> {
    let (n, s, k) = (vgg.batch(), vgg.config().input, vgg.config().classes);
    let dev = vgg.device().clone();
    let mut images = Tensor::<u8>::zeros(&dev, &[n, s, s, 3])?;
    let (mut loss, mut top1, mut top5, mut count, mut skipped) = (0f64, 0usize, 0usize, 0usize, 0usize);
    for b in loader.epoch(0) {
        let b = b?;
        skipped += b.skipped;
        if b.n == 0 {
            continue; // every image of it unreadable
        }
        images.copy_from_host(&fill(&b, n).0)?;
        let logits = vgg.forward(&images, false, 0)?.to_f32()?;
        let m = b.n;
        let (l, _) = reference::softmax_xent_fwd(m, k, &logits[..m * k], &b.labels[..m]);
        loss += l * m as f64;
        top1 += reference::topk_hits(m, k, &logits[..m * k], &b.labels[..m], 1);
        top5 += reference::topk_hits(m, k, &logits[..m * k], &b.labels[..m], 5.min(k));
        count += m;
    }
    let c = count as f64;
    Ok(Validation { loss: loss / c, top1: top1 as f64 / c, top5: top5 as f64 / c, images: count, skipped })
}
