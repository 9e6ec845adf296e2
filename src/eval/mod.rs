//! `vgg predict` and `vgg eval`: the paper's testing protocol (Section 3.2) over
//! [`crate::model::Vgg`] and the data pipeline's test transform.
//!
//! Every image becomes a list of *views*, each a data-pipeline [`Plan`] (rescale, window,
//! flip) applied by [`Worker::apply`]:
//! - centre crop: the rescale to Q and the centre `input` x `input` crop, exactly
//!   [`TestTransform`]'s; `--flip` adds its mirror image;
//! - multi-crop: a 5x5 regular grid of crops over the rescale to Q, each also flipped
//!   (50 views a scale, [`crop_grid`]);
//! - multi-scale: the views of every Q in `--scale Q1,Q2,...`.
//!
//! Every model of an ensemble scores every view; softmax posteriors ([`ops::softmax_fwd`],
//! fp32 on the device) are averaged in f64 over views and models, the paper's combination
//! for scales, crops, flips and ensembles alike.
//!
//! Dense evaluation (`--crops dense`, [`dense`]): the FC layers as convolutions over the
//! whole rescale to Q, the score map's class scores averaged over positions before the
//! softmax (as the paper does), the posteriors of the image and its mirror image averaged;
//! `--crops both` averages the dense and the multi-crop posteriors of each image (equal
//! weights), the paper's best single-model combination.
//!
//! Padding: each multi-crop view is its own image, so its conv layers pad its border with
//! zeros, while dense evaluation runs over the whole rescaled image, where the border of the
//! same window sees the neighbouring pixels. The paper (Section 3.2) attributes their
//! complementarity to this difference in boundary conditions; VGG.md records the result:
//! "Multi-crop and dense are complementary: averaging the two gave the best single-model
//! result".
//!
//! Ranking: eval's top-k hits and predict's top classes follow one rule ([`top_k`]'s order): a
//! class outranks the label when its posterior is larger, or NaN, or equal with a lower class
//! index; a NaN label posterior is never a hit. An image whose posterior is not finite (the
//! fp16 forward overflowed) is reported by both commands.
//!
//! Dense evaluation cannot take an image whose rescale's longer side is above
//! 8 x Q (`MAX_DENSE_ASPECT`): `vgg eval` counts such images apart from the
//! unreadable ones ([`EvalReport::too_wide`]), and its error is then over fewer images than
//! the crop views would score.
//!
//! Demo on the CPU emulator (about a minute, then a second):
//! `vgg train --device emu --checkpoint-dir ck` and
//! `vgg eval --weights ck/last.safetensors --data synthetic --device emu`, which scores
//! the training run's own validation images (its seed is stored in the checkpoint).

pub mod dense;
mod predict;
mod run;

pub use predict::{predict, PredictArgs, Prediction, TopClass};
pub use run::{eval, ClassRow, EvalArgs, EvalReport};

use crate::data::{decode_rgb, resize, Dataset, Plan, Subset, Synthetic, TestTransform, Transform, Worker};
use crate::model::{Arch, Init, NamedTensor, Vgg, VggConfig};
use crate::train::checkpoint::{self, TrainState};
use crate::{ops, Device, PinnedBuffer, Tensor};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Side of the multi-crop grid (5x5 crops a scale, each also flipped: 50 views).
pub const GRID: usize = 5;

/// How the crops of one scale are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crops {
    /// The centre crop (plus its mirror image with flips).
    Center,
    /// A [`GRID`] x [`GRID`] regular grid of crops, each also flipped.
    Multi,
    /// Dense evaluation of the whole image and its mirror image (no crops).
    Dense,
    /// The average of the dense and the multi-crop posteriors.
    Both,
}

impl Crops {
    /// A `--crops` value: `center` (or `centre`), `multi`, `dense` or `both`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "center" | "centre" => Crops::Center,
            "multi" => Crops::Multi,
            "dense" => Crops::Dense,
            "both" => Crops::Both,
            _ => bail!("unknown --crops `{s}` (center, multi, dense, both)"),
        })
    }

    /// The views of a scale in words (`flip`: the centre crop's mirror image too).
    pub fn describe(self, flip: bool) -> &'static str {
        match (self, flip) {
            (Crops::Center, false) => "centre crop",
            (Crops::Center, true) => "centre crop + flip",
            (Crops::Multi, _) => "5x5 crops x 2 flips",
            (Crops::Dense, _) => "dense (+ flip)",
            (Crops::Both, _) => "dense (+ flip) and 5x5 crops x 2 flips",
        }
    }
}

/// `n` offsets of a `crop`-wide window over `extent` pixels, evenly spaced from 0 to
/// `extent - crop` (both ends included; rounded to the nearest pixel, halves up). With `n`
/// odd, the middle offset is `extent - crop` halved with halves rounded up, which is not
/// always the centre crop's offset (torchvision's rounding, half to even): they differ by a
/// pixel when `(extent - crop) % 4 == 1`, e.g. 341 wide, crop 224: grid middle 59, centre 58.
/// (`n` = 1 rounds down.)
pub fn grid_offsets(extent: u32, crop: u32, n: usize) -> Vec<u32> {
    let span = extent.saturating_sub(crop) as u64;
    match n {
        0 => vec![],
        1 => vec![(span / 2) as u32],
        _ => (0..n as u64).map(|i| ((2 * i * span + (n as u64 - 1)) / (2 * (n as u64 - 1))) as u32).collect(),
    }
}

/// The top-left corners `(x, y)` of the `n` x `n` regular grid of `crop` x `crop` windows
/// over a `w` x `h` image, row by row.
pub fn crop_grid(w: u32, h: u32, crop: u32, n: usize) -> Vec<(u32, u32)> {
    let (xs, ys) = (grid_offsets(w, crop, n), grid_offsets(h, crop, n));
    ys.iter().flat_map(|&y| xs.iter().map(move |&x| (x, y))).collect()
}

/// The whole-image rescales of a `w` x `h` image at the scales `qs` that dense evaluation
/// scores (each also mirrored by [`dense::dense_posterior`]); none unless `crops` is
/// [`Crops::Dense`] or [`Crops::Both`].
pub fn dense_views(w: u32, h: u32, qs: &[u32], crops: Crops) -> Result<Vec<Plan>, String> {
    if !matches!(crops, Crops::Dense | Crops::Both) {
        return Ok(vec![]);
    }
    qs.iter()
        .map(|&q| {
            Transform::Test(TestTransform { scale: q, crop: None }).plan(w, h, &mut crate::data::SampleRng::new(0))
        })
        .collect()
}

/// The crop views of a `w` x `h` image at the scales `qs`, for `crop` x `crop` inputs
/// (none for [`Crops::Dense`]; the multi-crop grid for [`Crops::Both`]).
pub fn views(w: u32, h: u32, qs: &[u32], crop: u32, crops: Crops, flip: bool) -> Result<Vec<Plan>, String> {
    let mut out = vec![];
    for &q in qs {
        match crops {
            Crops::Center => {
                let t = Transform::Test(TestTransform { scale: q, crop: Some(crop) });
                let p = t.plan(w, h, &mut crate::data::SampleRng::new(0))?;
                out.push(p);
                if flip {
                    out.push(Plan { flip: true, ..p });
                }
            }
            Crops::Dense => {}
            Crops::Multi | Crops::Both => {
                if w == 0 || h == 0 {
                    return Err(format!("image of {w}x{h} pixels"));
                }
                let (rw, rh) = resize::rescaled_size(w, h, q.max(crop));
                for (x, y) in crop_grid(rw, rh, crop, GRID) {
                    for f in [false, true] {
                        out.push(Plan { rescaled: (rw, rh), window: (x, y, crop, crop), flip: f, shift: None });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// How many crop views [`views`] makes of each scale: the centre crop (and its mirror image
/// with `flip`), the [`GRID`] x [`GRID`] grid x 2 flips, or none for dense evaluation
/// (which does not depend on the image's size, so `vgg eval` can size its batches first).
pub fn views_per_scale(crops: Crops, flip: bool) -> usize {
    match crops {
        Crops::Center => 1 + flip as usize,
        Crops::Multi | Crops::Both => 2 * GRID * GRID,
        Crops::Dense => 0,
    }
}

/// Class names for an error message: the first ten, then how many there are in all.
pub fn class_list(classes: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = classes.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if classes.len() > SHOWN {
        s += &format!(", ... ({} in all)", classes.len());
    }
    s
}

/// Softmax of one row of logits, in f64: the host's exact posterior, which tests hold the
/// device's ([`ops::softmax_fwd`]) against.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    softmax64(&logits.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

/// [`softmax`] of f64 scores.
pub fn softmax64(scores: &[f64]) -> Vec<f64> {
    let m = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = scores.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Class indices of the `k` largest of `p`, largest first (ties: lower index first); NaN
/// ranks first, above every number (NaNs among themselves by index): the order `vgg eval`
/// counts hits by (label `l` is a top-k hit when fewer than k classes come before it and
/// `p[l]` is not NaN).
pub fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| rank_order(p, a, b));
    idx.truncate(k);
    idx
}

/// The order of classes `a` and `b` in the posterior `p`, best first: NaN first (by index),
/// then larger first, ties by index. (`total_cmp` would rank a NaN by its sign bit: first
/// when positive, last when negative.)
fn rank_order(p: &[f64], a: usize, b: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (p[a].is_nan(), p[b].is_nan()) {
        (true, true) => a.cmp(&b),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => p[b].partial_cmp(&p[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b)),
    }
}

/// Whether class `j` outranks class `l` in the posterior `p`: `p[j] > p[l]`, or `p[j]` is
/// NaN, or `p[j] == p[l]` and `j < l` (ties go to the lower class index, as [`top_k`] and an
/// argmax break them). The rule of `vgg eval` and `vgg predict`, the same as
/// `reference::topk_hits`' for `vgg train`'s validation (whose logits may be infinite after an
/// fp16 overflow; a posterior here is then NaN, a miss in both). Counting only strictly larger scores
/// made a tie (a uniform posterior: fc8 all zeros) and a NaN label score (every comparison
/// false) hits.
pub(crate) fn outranks(p: &[f64], j: usize, l: usize) -> bool {
    j != l && (p[j].is_nan() || rank_order(p, j, l).is_lt())
}

/// How many classes outrank class `l` in `p` ([`outranks`]).
pub(crate) fn outranked_by(p: &[f64], l: usize) -> usize {
    (0..p.len()).filter(|&j| outranks(p, j, l)).count()
}

/// Whether label `l` is a top-`k` hit in `p`: fewer than `k` classes outrank it, and its
/// posterior is finite (a NaN is never a hit, whatever the others).
pub(crate) fn top_k_hit(p: &[f64], l: usize, k: usize) -> bool {
    p[l].is_finite() && outranked_by(p, l) < k
}

/// The config of a checkpoint without config metadata (a torchvision state dict): the
/// paper's network whose parameter names and shapes are exactly the file's (width, FC
/// width, classes and input side read from the shapes). A and A-LRN have the same
/// parameters: A is chosen.
pub fn infer_config(weights: &[NamedTensor]) -> Result<VggConfig> {
    let shape = |n: &str| weights.iter().find(|w| w.0 == n).map(|w| w.1.clone());
    let (Some(f0), Some(c0), Some(c6)) =
        (shape("features.0.weight"), shape("classifier.0.weight"), shape("classifier.6.weight"))
    else {
        bail!("not a VGG state dict: features.0.weight, classifier.0.weight or classifier.6.weight is missing");
    };
    let (&[f0, ..], &[c0o, c0i], &[c6o, _]) = (&f0[..], &c0[..], &c6[..]) else {
        bail!(
            "not a VGG state dict: features.0.weight {f0:?} (want [K, 3, 3, 3]), classifier.0.weight {c0:?} \
             and classifier.6.weight {c6:?} (want 2-d)"
        );
    };
    let (c0, c6) = ([c0o, c0i], [c6o]);
    let mut have: Vec<(String, Vec<usize>)> = weights.iter().map(|w| (w.0.clone(), w.1.clone())).collect();
    have.sort();
    let width = f0 as f32 / 64.0;
    for arch in Arch::ALL {
        let probe = VggConfig { width, fc: c0[0], classes: c6[0], ..VggConfig::paper(arch) };
        let c_last = probe.channels(512);
        let side = ((c0[1] / c_last.max(1)) as f64).sqrt().round() as usize;
        let cfg = VggConfig { input: side * 32, ..probe };
        let mut want = cfg.param_shapes();
        want.sort();
        if cfg.validate().is_ok() && want == have {
            return Ok(cfg);
        }
    }
    bail!("the tensors match no VGG config (A, A-LRN, B, C, D, E) at any width")
}

/// One network of an ensemble with where it came from.
pub struct Model {
    /// The checkpoint file it was loaded from.
    pub path: PathBuf,
    /// The network with the checkpoint's weights.
    pub vgg: Vgg,
    /// Class names stored with the checkpoint, if any.
    pub classes: Option<Vec<String>>,
    /// The training state stored with the checkpoint, if any (its seed draws the synthetic
    /// validation set; its test scale is the default Q).
    pub state: Option<TrainState>,
    /// [`posteriors`]' device and page-locked buffers, made on its first call and kept.
    io: Option<EvalIo>,
}

/// The buffers of two batches in flight: one device input (uploads queue behind the forward
/// before them), two posterior tensors and two page-locked buffers each way.
struct EvalIo {
    images: Tensor<u8>,
    probs: [Tensor<f32>; 2],
    up: [PinnedBuffer<u8>; 2],
    down: [PinnedBuffer<f32>; 2],
}

impl EvalIo {
    fn new(dev: &Device, batch: usize, side: usize, classes: usize) -> Result<Self> {
        let px = batch * side * side * 3;
        Ok(Self {
            images: Tensor::zeros(dev, &[batch, side, side, 3])?,
            probs: [Tensor::empty(dev, &[batch, classes])?, Tensor::empty(dev, &[batch, classes])?],
            up: [PinnedBuffer::new(dev, px)?, PinnedBuffer::new(dev, px)?],
            down: [PinnedBuffer::new(dev, batch * classes)?, PinnedBuffer::new(dev, batch * classes)?],
        })
    }
}

/// Loads a checkpoint (ours, or a torchvision state dict) into a network of `batch` images.
/// `arch`, when given, must be the checkpoint's.
pub fn load_model(dev: &Device, path: &Path, arch: Option<Arch>, batch: usize) -> Result<Model> {
    check_weights_file(path)?;
    let l = checkpoint::load(path)?;
    let cfg = match l.config {
        Some(c) => c,
        None => infer_config(&l.weights).with_context(|| format!("{}: no config metadata", path.display()))?,
    };
    if let Some(a) = arch {
        if a != cfg.arch {
            bail!("{}: config mismatch: the checkpoint is VGG {}, --model asks for {}", path.display(), cfg.arch, a);
        }
    }
    cfg.validate().with_context(|| format!("{}: invalid config", path.display()))?;
    let mut vgg = Vgg::new(dev, cfg.clone(), batch, Init::He, 0)?;
    vgg.import_params(&l.weights)
        .with_context(|| format!("{}: cannot load into VGG {}", path.display(), cfg.describe()))?;
    let classes = checkpoint::load_classes(path)?;
    if let Some(c) = &classes {
        if c.len() != cfg.classes {
            bail!("{}: {} class names stored for a {}-class model", path.display(), c.len(), cfg.classes);
        }
    }
    Ok(Model { path: path.to_path_buf(), vgg, classes, state: l.state, io: None })
}

/// An error naming `path` unless it is a file; a folder (a `--checkpoint-dir`) is named as
/// such, with the checkpoints `vgg train` writes there.
fn check_weights_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        let inside = ["last.safetensors", "best.safetensors"].iter().map(|f| path.join(f)).filter(|p| p.is_file());
        let inside: Vec<String> = inside.map(|p| p.display().to_string()).collect();
        if inside.is_empty() {
            bail!("weights file {} is a folder, not a checkpoint file", path.display());
        }
        bail!(
            "weights file {} is a folder, not a checkpoint file: give one inside it ({})",
            path.display(),
            inside.join(" or ")
        );
    }
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    Ok(())
}

/// Loads every checkpoint of an ensemble; they must agree on input side and classes.
pub fn load_ensemble(dev: &Device, paths: &[PathBuf], arch: Option<&str>, batch: usize) -> Result<Vec<Model>> {
    if paths.is_empty() {
        bail!("give at least one --weights file");
    }
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let arch = arch.map(Arch::parse).transpose()?;
    let models = paths.iter().map(|p| load_model(dev, p, arch, batch)).collect::<Result<Vec<_>>>()?;
    let c0 = models[0].vgg.config();
    for m in &models[1..] {
        let c = m.vgg.config();
        if (c.input, c.classes) != (c0.input, c0.classes) {
            bail!(
                "config mismatch in the ensemble: {} is {}-class at {}px, {} is {}-class at {}px",
                models[0].path.display(),
                c0.classes,
                c0.input,
                m.path.display(),
                c.classes,
                c.input
            );
        }
        if let (Some(a), Some(b)) = (&models[0].classes, &m.classes) {
            if a != b {
                bail!("{} and {} were trained on different class lists", models[0].path.display(), m.path.display());
            }
        }
    }
    Ok(models)
}

/// The test scale Q the ensemble's checkpoints record ([`TrainState::test_scale`]): `None`
/// when none does, an error when two disagree (each model's own Q would need one run each).
pub fn recorded_test_scale(models: &[Model]) -> Result<Option<u32>> {
    let mut recorded = models.iter().filter_map(|m| Some((m.state.as_ref()?.test_scale?, &m.path)));
    let Some((q, path)) = recorded.next() else { return Ok(None) };
    if let Some((q2, path2)) = recorded.find(|&(q2, _)| q2 != q) {
        bail!(
            "{} was validated at Q {q} and {} at Q {q2}: give the test scale with --scale",
            path.display(),
            path2.display()
        );
    }
    Ok(Some(q))
}

/// Runs `n` views (`input` x `input` x 3 bytes each, concatenated) through every model and
/// returns the posteriors averaged over models, `n * classes`. Short batches are padded.
///
/// Two batches are in flight: batch j + 1's upload, forward and softmax are queued before the
/// host reads batch j's posteriors (through page-locked buffers on cuda, see
/// [`PinnedBuffer`]), so the device does not wait for the host between batches.
pub fn posteriors(models: &mut [Model], pixels: &[u8], n: usize) -> Result<Vec<f64>> {
    let Some(first) = models.first() else { bail!("posteriors: no models") };
    let (s, k, b) = {
        let c = first.vgg.config();
        (c.input, c.classes, first.vgg.batch())
    };
    let per = s * s * 3;
    if pixels.len() != n * per {
        bail!("posteriors: {} bytes for {n} views of {s}x{s}x3 (want {})", pixels.len(), n * per);
    }
    let mut out = vec![0f64; n * k];
    let starts: Vec<usize> = (0..n).step_by(b).collect();
    for m in models.iter_mut() {
        let Model { vgg, io, .. } = m;
        let io = match io {
            Some(io) => io,
            None => io.insert(EvalIo::new(vgg.device(), b, s, k)?),
        };
        let EvalIo { images, probs, up, down } = io;
        // Batch j's posteriors, added into `out` (its download was queued one batch earlier).
        let mut collect = |j: usize, down: &mut PinnedBuffer<f32>| -> Result<()> {
            let start = starts[j];
            let rows = (n - start).min(b);
            for (o, &p) in out[start * k..(start + rows) * k].iter_mut().zip(down.read()?) {
                *o += p as f64;
            }
            Ok(())
        };
        for (j, &start) in starts.iter().enumerate() {
            let (slot, rows) = (j % 2, (n - start).min(b));
            let host = up[slot].write()?;
            host[..rows * per].copy_from_slice(&pixels[start * per..(start + rows) * per]);
            host[rows * per..].fill(0);
            up[slot].upload(images)?;
            ops::softmax_fwd(vgg.forward(images, false, 0)?, &mut probs[slot])?;
            down[slot].download(&probs[slot])?;
            if j > 0 {
                collect(j - 1, &mut down[1 - slot])?;
            }
        }
        if let Some(last) = starts.len().checked_sub(1) {
            collect(last, &mut down[last % 2])?;
        }
    }
    let inv = 1.0 / models.len() as f64;
    out.iter_mut().for_each(|v| *v *= inv);
    Ok(out)
}

/// One image's crop views' pixels (concatenated), its dense views with their pixels, and
/// its label.
type Rendered = (Vec<u8>, Vec<(Plan, Vec<u8>)>, usize);

/// One image's posterior under the ensemble: the mean of its crop views' posteriors
/// (`crop_post`, one row of `classes` a view, already averaged over the models), the mean of
/// its dense views' (each the image and its mirror image, every model), or, with both, their
/// equal-weight average (the paper's "complementary" combination).
pub fn image_posterior(
    models: &[Model],
    crop_post: &[f64],
    dense: &[(Plan, Vec<u8>)],
    classes: usize,
) -> Result<Vec<f64>> {
    let k = classes;
    let vpc = crop_post.len() / k;
    let mut p = vec![0f64; k];
    for row in crop_post.chunks_exact(k) {
        p.iter_mut().zip(row).for_each(|(o, x)| *o += x / vpc as f64);
    }
    if dense.is_empty() {
        return Ok(p);
    }
    let mut d = vec![0f64; k];
    let views = (dense.len() * models.len()) as f64;
    for (plan, px) in dense {
        let (w, h) = (plan.window.2 as usize, plan.window.3 as usize);
        for m in models {
            let q = dense::dense_posterior(&m.vgg, px, w, h)?;
            d.iter_mut().zip(q).for_each(|(o, x)| *o += x / views);
        }
    }
    // Dense alone, or the equal-weight average with the crops' posterior.
    let wd = if vpc > 0 { 0.5 } else { 1.0 };
    p.iter_mut().zip(d).for_each(|(o, x)| *o = (1.0 - wd) * *o + wd * x);
    Ok(p)
}

/// Why an image was not scored.
#[derive(Debug)]
enum Unscored {
    /// It could not be read or decoded, or has no pixels.
    Unreadable(String),
    /// Dense evaluation cannot take it: its rescale's longer side is above
    /// 8 x Q (`MAX_DENSE_ASPECT`).
    TooWide(String),
}

impl std::fmt::Display for Unscored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unscored::Unreadable(e) | Unscored::TooWide(e) => f.write_str(e),
        }
    }
}

/// `img`'s views at the scales `qs` for a network of `input` pixels: its crop views' pixels
/// (concatenated) and its dense views with their pixels.
fn render_views(
    img: &image::RgbImage,
    qs: &[u32],
    input: u32,
    crops: Crops,
    flip: bool,
) -> Result<RenderedViews, Unscored> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Unscored::Unreadable(format!("image of {w}x{h} pixels")));
    }
    let plans = views(w, h, qs, input, crops, flip).map_err(Unscored::Unreadable)?;
    // With pixels and a valid Q, the whole-image plan's only error is the aspect limit.
    let dense = dense_views(w, h, qs, crops).map_err(Unscored::TooWide)?;
    Ok((render(img, &plans), dense.into_iter().map(|p| (p, render(img, &[p]))).collect()))
}

/// Crop views' pixels and dense views with theirs, as [`render_views`] makes them.
type RenderedViews = (Vec<u8>, Vec<(Plan, Vec<u8>)>);

/// The test scales of a run: those given (`given`: --scale's text and its parsed scales),
/// else the Q the ensemble's checkpoints record ([`recorded_test_scale`]), else `fallback`;
/// each at least the models' input side and at most [`crate::data::MAX_SIDE`], as training's
/// S and Q: dense evaluation rescales the whole image to Q, and a typo such as 100000 asked
/// for 30 GB and aborted the process. Checked here, where every Q of eval and predict passes
/// whatever its source (a checkpoint's Q is not checked on load), and errors name that
/// source as the user knows it (the preset `fixed:4096`, not its 4128).
pub fn test_scales(given: Option<(&str, Vec<u32>)>, models: &[Model], fallback: u32) -> Result<Vec<u32>> {
    // A Q the user did not type says how to replace it.
    let hint = if given.is_some() { "" } else { "; give --scale" };
    let (scales, source) = match given {
        // A lone Q is its own name; a list or a preset is named, then the Q of it.
        Some((text, v)) if v.len() == 1 && text.trim() == v[0].to_string() => (v, "--scale".to_string()),
        Some((text, v)) => (v, format!("--scale {}: Q", text.trim())),
        None => match recorded_test_scale(models)? {
            Some(q) => {
                let m = models.iter().find(|m| m.state.as_ref().and_then(|s| s.test_scale).is_some());
                let path = m.map_or_else(String::new, |m| m.path.display().to_string());
                (vec![q], format!("{path}: the recorded test scale Q"))
            }
            None => (vec![fallback], "the default test scale Q".to_string()),
        },
    };
    let input = models.first().map_or(0, |m| m.vgg.config().input as u32);
    if let Some(q) = scales.iter().find(|&&q| q < input) {
        bail!(
            "{source} {q} is below the model's {input}x{input} crop (the image is rescaled to Q, then cropped: \
             give Q >= {input}){hint}"
        );
    }
    for &q in &scales {
        crate::data::check_side(&source, q).map_err(|e| anyhow::anyhow!("{e}{hint}"))?;
    }
    Ok(scales)
}

/// Applies `plans` to `img`: the views' pixels, concatenated.
fn render(img: &image::RgbImage, plans: &[Plan]) -> Vec<u8> {
    let mut w = Worker::default();
    let mut out = vec![];
    for p in plans {
        w.apply(img, p, &mut out);
    }
    out
}

/// `Q1,Q2,...`, each a positive size, or one of the paper's multi-scale presets (VGG.md,
/// "multi-scale evaluation"): `fixed:S` for a model trained at a fixed S tests at
/// S - 32, S, S + 32; `jittered:MIN:MAX` for one trained with S in [MIN, MAX] at MIN,
/// (MIN + MAX) / 2, MAX; `jittered` alone is `jittered:256:512` (256, 384, 512). Each Q is at
/// most [`crate::data::MAX_SIDE`], checked here so that a typo fails before any work (and
/// before `S + 32` or `MIN + MAX` could overflow); the lower bound is [`test_scales`]', which
/// knows the model's input and also checks a Q recorded in a checkpoint.
pub fn parse_scales(s: &str) -> Result<Vec<u32>> {
    let max = crate::data::MAX_SIDE;
    // Every number as given first (this also keeps the presets' sums below u32::MAX) ...
    for t in s.split([':', ',']) {
        if let Some(v) = t.trim().parse::<u64>().ok().filter(|&v| v > max as u64) {
            let given = if t.trim() == s.trim() { format!("--scale {v}") } else { format!("--scale {s}: {v}") };
            bail!("{given} is above {max}, the largest image side the data pipeline accepts");
        }
    }
    // ... then the Qs a preset makes of them (fixed:S tests at S + 32).
    let v = parse_scales_unbounded(s)?;
    for &q in &v {
        crate::data::check_side(&format!("--scale {s}: Q"), q)?;
    }
    Ok(v)
}

fn parse_scales_unbounded(s: &str) -> Result<Vec<u32>> {
    let size = |t: &str| t.trim().parse::<u32>().ok().filter(|&q| q > 0);
    let parts: Vec<&str> = s.trim().split(':').collect();
    match parts.as_slice() {
        ["fixed", v] => {
            let s0 = size(v).filter(|&q| q > 32);
            let s0 = s0.ok_or_else(|| anyhow::anyhow!("--scale {s}: fixed:S needs a training scale S > 32"))?;
            return Ok(vec![s0 - 32, s0, s0 + 32]);
        }
        ["jittered"] => return Ok(vec![256, 384, 512]),
        ["jittered", lo, hi] => {
            return match (size(lo), size(hi)) {
                (Some(a), Some(b)) if a < b => Ok(vec![a, (a + b) / 2, b]),
                _ => Err(anyhow::anyhow!("--scale {s}: jittered:MIN:MAX needs sizes 0 < MIN < MAX")),
            };
        }
        [_] => {}
        _ => return Err(anyhow::anyhow!("--scale {s}: give Q, Q1,Q2,..., fixed:S or jittered[:MIN:MAX]")),
    }
    let v: Vec<u32> = s
        .split(',')
        .map(|t| match t.trim().parse::<u32>() {
            Ok(q) if q > 0 => Ok(q),
            _ => Err(anyhow::anyhow!("--scale: `{t}` is not a positive size (give Q or Q1,Q2,...)")),
        })
        .collect::<Result<_>>()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_offsets_span_the_image() {
        assert_eq!(grid_offsets(256, 224, 5), vec![0, 8, 16, 24, 32]);
        assert_eq!(grid_offsets(224, 224, 5), vec![0; 5]);
        assert_eq!(grid_offsets(300, 224, 1), vec![38]);
        assert_eq!(grid_offsets(10, 4, 4), vec![0, 2, 4, 6]);
        assert_eq!(grid_offsets(9, 4, 3), vec![0, 3, 5]);
    }

    #[test]
    fn views_per_scale_counts_what_views_makes() {
        for crops in [Crops::Center, Crops::Multi, Crops::Dense, Crops::Both] {
            for flip in [false, true] {
                let n = views(300, 260, &[256, 288], 224, crops, flip).unwrap().len();
                assert_eq!(n, 2 * views_per_scale(crops, flip), "{crops:?} flip {flip}");
            }
        }
    }

    #[test]
    fn class_lists_stop_after_ten() {
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        assert_eq!(class_list(&names(3)), "c0, c1, c2");
        assert_eq!(class_list(&names(10)), "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9");
        assert_eq!(class_list(&names(11)), "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, ... (11 in all)");
    }

    #[test]
    fn crop_grid_is_row_major() {
        let g = crop_grid(292, 256, 224, 5);
        assert_eq!(g.len(), 25);
        assert_eq!(g[0], (0, 0));
        assert_eq!(g[4], (68, 0));
        assert_eq!(g[5], (0, 8));
        assert_eq!(g[24], (68, 32));
    }
}
