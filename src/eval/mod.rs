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
//! whole rescale to Q, the score map's posteriors averaged over positions and over the
//! image and its mirror image; `--crops both` averages the dense and the multi-crop
//! posteriors of each image (equal weights), the paper's best single-model combination.
//!
//! Demo on the CPU emulator (about a minute, then a second):
//! `vgg train --device emu --checkpoint-dir ck` and
//! `vgg eval --weights ck/last.safetensors --data synthetic --device emu`, which scores
//! the training run's own validation images (its seed is stored in the checkpoint).

pub mod dense;

use crate::data::{
    decode_rgb, resize, Dataset, ImageFolder, Plan, Subset, Synthetic, TestTransform, Transform, Worker,
};
use crate::model::{Arch, Init, NamedTensor, Vgg, VggConfig};
use crate::train::checkpoint;
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
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "center" | "centre" => Crops::Center,
            "multi" => Crops::Multi,
            "dense" => Crops::Dense,
            "both" => Crops::Both,
            _ => bail!("unknown --crops `{s}` (center, multi, dense, both)"),
        })
    }
}

/// `n` offsets of a `crop`-wide window over `extent` pixels, evenly spaced from 0 to
/// `extent - crop` (both ends included; rounded to the nearest pixel, halves up). One
/// offset is the centre one, torchvision's rounding.
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

/// Softmax of one row of logits, in f64: the host's exact posterior, which tests hold the
/// device's ([`ops::softmax_fwd`]) against.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Class indices of the `k` largest of `p`, largest first (ties: lower index first).
pub fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
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
    let mut have: Vec<(String, Vec<usize>)> = weights.iter().map(|w| (w.0.clone(), w.1.clone())).collect();
    have.sort();
    let width = f0[0] as f32 / 64.0;
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
    pub path: PathBuf,
    pub vgg: Vgg,
    /// Class names stored with the checkpoint, if any.
    pub classes: Option<Vec<String>>,
    /// The training seed stored with the checkpoint, if any.
    pub seed: Option<u64>,
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
    if !path.is_file() {
        bail!("weights file {} does not exist (or is not a file)", path.display());
    }
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
        .with_context(|| format!("{}: config mismatch: weights do not fit VGG {}", path.display(), cfg.describe()))?;
    let classes = checkpoint::load_classes(path)?;
    if let Some(c) = &classes {
        if c.len() != cfg.classes {
            bail!("{}: {} class names stored for a {}-class model", path.display(), c.len(), cfg.classes);
        }
    }
    Ok(Model { path: path.to_path_buf(), vgg, classes, seed: l.state.map(|s| s.seed), io: None })
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

/// Runs `n` views (`input` x `input` x 3 bytes each, concatenated) through every model and
/// returns the posteriors averaged over models, `n * classes`. Short batches are padded.
///
/// Two batches are in flight: batch j + 1's upload, forward and softmax are queued before the
/// host reads batch j's posteriors (through page-locked buffers on cuda, see
/// [`PinnedBuffer`]), so the device does not wait for the host between batches.
pub fn posteriors(models: &mut [Model], pixels: &[u8], n: usize) -> Result<Vec<f64>> {
    let (s, k, b) = {
        let c = models[0].vgg.config();
        (c.input, c.classes, models[0].vgg.batch())
    };
    let per = s * s * 3;
    debug_assert_eq!(pixels.len(), n * per);
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
/// (MIN + MAX) / 2, MAX; `jittered` alone is `jittered:256:512` (256, 384, 512).
pub fn parse_scales(s: &str) -> Result<Vec<u32>> {
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

/// The class names to print: the checkpoint's, else a labels file (one a line), else indices.
fn class_names(models: &[Model], labels: Option<&Path>) -> Result<Vec<String>> {
    let k = models[0].vgg.config().classes;
    if let Some(c) = &models[0].classes {
        return Ok(c.clone());
    }
    if let Some(p) = labels {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading labels file {}", p.display()))?;
        let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if names.len() != k {
            bail!("labels file {} has {} names for a {k}-class model", p.display(), names.len());
        }
        return Ok(names);
    }
    Ok((0..k).map(|i| i.to_string()).collect())
}

/// Arguments of `vgg predict`.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// A checkpoint (ours or a torchvision vgg*.safetensors); repeat for an ensemble.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Class names, one a line (when the checkpoint stores none).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Test scale Q (shorter side after rescaling) [default: input * 8 / 7, 256 for 224].
    #[arg(long)]
    pub scale: Option<u32>,
    /// Expected VGG config (A, ..., E); an error when the checkpoint is another.
    #[arg(long)]
    pub model: Option<String>,
}

/// A class and its probability.
#[derive(Clone, Debug, Serialize)]
pub struct TopClass {
    pub class: usize,
    pub name: String,
    pub prob: f64,
}

/// One image's classes, most probable first.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub image: String,
    pub top: Vec<TopClass>,
    /// The full posterior (sums to 1).
    #[serde(skip)]
    pub probs: Vec<f64>,
}

/// Runs `vgg predict`: prints (and returns) the top classes of every image.
pub fn predict(a: &PredictArgs) -> Result<Vec<Prediction>> {
    let dev = Device::by_name(&a.device).with_context(|| format!("predict on `{}`", a.device))?;
    let batch = a.images.len().clamp(1, 16);
    let mut models = load_ensemble(&dev, &a.weights, a.model.as_deref(), batch)?;
    let names = class_names(&models, a.labels.as_deref())?;
    let input = models[0].vgg.config().input as u32;
    let q = a.scale.unwrap_or(input * 8 / 7);
    let mut pixels = vec![];
    for p in &a.images {
        let bytes = std::fs::read(p).with_context(|| format!("reading image {}", p.display()))?;
        let img = decode_rgb(&bytes, p)?;
        let plans = views(img.width(), img.height(), &[q], input, Crops::Center, false)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        pixels.extend(render(&img, &plans));
    }
    let post = posteriors(&mut models, &pixels, a.images.len())?;
    let k = names.len();
    let preds: Vec<Prediction> = a
        .images
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let probs = post[i * k..(i + 1) * k].to_vec();
            let top = top_k(&probs, a.top.max(1))
                .into_iter()
                .map(|c| TopClass { class: c, name: names[c].clone(), prob: probs[c] })
                .collect();
            Prediction { image: p.display().to_string(), top, probs }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&preds)?);
    } else {
        let cfg = models[0].vgg.config();
        eprintln!("VGG {} on {}, Q {q}, centre crop {input}", cfg.describe(), dev.name());
        for p in &preds {
            println!("{}", p.image);
            for (r, t) in p.top.iter().enumerate() {
                println!("  {}. {:<24} {:>8.4}  (class {})", r + 1, t.name, t.prob, t.class);
            }
        }
    }
    Ok(preds)
}

/// Arguments of `vgg eval`.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// A checkpoint; repeat for an ensemble (posteriors averaged).
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// An ImageFolder (its val/ sub-folder when there is one), or `synthetic`: the
    /// validation images of `vgg train`'s synthetic set.
    #[arg(long)]
    pub data: String,
    /// Test scales Q, comma-separated (several: posteriors averaged), or a preset: fixed:S
    /// (S-32,S,S+32), jittered[:MIN:MAX] (MIN,(MIN+MAX)/2,MAX; 256,384,512) [default: the
    /// input side for synthetic data, input * 8 / 7 otherwise, as `vgg train` validates].
    #[allow(rustdoc::broken_intra_doc_links)] // `[:MIN:MAX]` is option syntax in --help, not a link
    #[arg(long)]
    pub scale: Option<String>,
    /// center, multi (a 5x5 grid of crops x 2 flips per scale), dense (the FC layers as
    /// convolutions over the whole image and its mirror image), or both (dense and multi,
    /// posteriors averaged).
    #[arg(long, default_value = "center")]
    pub crops: String,
    /// Also evaluate the mirror image of each centre crop.
    #[arg(long)]
    pub flip: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write per-class accuracy as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Views per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Evaluate a seeded sample of this many images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Synthetic images (the validation set of `vgg train` with its defaults has 80).
    #[arg(long, default_value_t = 80)]
    pub synthetic_len: usize,
    /// Synthetic data seed [default: the training seed stored in the checkpoint, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Expected VGG config (A, ..., E); an error when a checkpoint is another.
    #[arg(long)]
    pub model: Option<String>,
    /// An unreadable image is an error instead of being reported and skipped.
    #[arg(long)]
    pub strict: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for EvalArgs {
    /// The command line's defaults, with no weights and no data (tests fill those in).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: EvalArgs,
        }
        let mut a = <Cli as clap::Parser>::parse_from(["eval", "--weights", "-", "--data", "-"]).args;
        a.weights.clear();
        a.data.clear();
        a
    }
}

/// Accuracy on one class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassRow {
    pub class: usize,
    pub name: String,
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
}

/// What `vgg eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub weights: Vec<String>,
    pub data: String,
    pub device: String,
    pub scales: Vec<u32>,
    pub crops: Crops,
    pub flip: bool,
    pub views_per_image: usize,
    pub images: usize,
    pub skipped: usize,
    pub top1_error: f64,
    pub top5_error: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    pub per_class: Vec<ClassRow>,
}

impl EvalReport {
    pub fn line(&self) -> String {
        format!(
            "{} images ({} skipped), {} views each: top-1 error {:.2}%, top-5 error {:.2}% ({:.1} img/s)",
            self.images,
            self.skipped,
            self.views_per_image,
            100.0 * self.top1_error,
            100.0 * self.top5_error,
            self.images_per_s
        )
    }

    /// `class,name,images,top1,top5`, one row a class.
    pub fn csv(&self) -> String {
        let mut s = String::from("class,name,images,top1,top5\n");
        for r in &self.per_class {
            let name = if r.name.contains([',', '"']) {
                format!("\"{}\"", r.name.replace('"', "\"\""))
            } else {
                r.name.clone()
            };
            s += &format!("{},{},{},{:.6},{:.6}\n", r.class, name, r.images, r.top1, r.top5);
        }
        s
    }
}

fn dataset(a: &EvalArgs, models: &[Model]) -> Result<(Arc<dyn Dataset>, String)> {
    let cfg = models[0].vgg.config();
    if a.data == "synthetic" {
        // `vgg train`'s validation set: the same images whatever its length (each is a pure
        // function of seed and index), seed = training seed ^ 0x5eed.
        let seed = a.seed.or(models[0].seed).unwrap_or(0);
        let ds = Synthetic::new(cfg.classes, cfg.input as u32, a.synthetic_len, seed ^ 0x5eed).square();
        return Ok((Arc::new(ds), format!("synthetic (seed {seed}, {} images)", a.synthetic_len)));
    }
    let dir = PathBuf::from(&a.data);
    let dir = if dir.join("val").is_dir() { dir.join("val") } else { dir };
    let ds = match &models[0].classes {
        Some(c) => ImageFolder::open_with_classes(&dir, c)?,
        None => ImageFolder::open(&dir)?,
    };
    if ds.classes().len() != cfg.classes {
        bail!(
            "{}: {} class folders, but the model has {} classes (and its checkpoint stores no class names)",
            dir.display(),
            ds.classes().len(),
            cfg.classes
        );
    }
    if ds.is_empty() {
        bail!("{}: no images", dir.display());
    }
    Ok((Arc::new(ds), dir.display().to_string()))
}

/// Runs `vgg eval`.
pub fn eval(a: &EvalArgs) -> Result<EvalReport> {
    let crops = Crops::parse(&a.crops)?;
    let scale_arg = a.scale.as_deref().map(parse_scales).transpose()?;
    let dev = Device::by_name(&a.device).with_context(|| format!("eval on `{}`", a.device))?;
    let mut models = load_ensemble(&dev, &a.weights, a.model.as_deref(), a.batch)?;
    let (ds, what) = dataset(a, &models)?;
    let ds: Arc<dyn Dataset> = match a.limit {
        Some(n) if n < ds.len() => Arc::new(Subset::sample(ds, n, 0)),
        _ => ds,
    };
    let (input, k) = (models[0].vgg.config().input as u32, models[0].vgg.config().classes);
    let scales = scale_arg.unwrap_or_else(|| vec![if a.data == "synthetic" { input } else { input * 8 / 7 }]);
    let vpc = views(input, input, &scales, input, crops, a.flip).map_err(anyhow::Error::msg)?.len();
    // Each dense view is the whole image and its mirror image.
    let vpi = vpc + 2 * dense_views(input, input, &scales, crops).map_err(anyhow::Error::msg)?.len();
    let names: Vec<String> = ds.classes().to_vec();
    println!(
        "eval {} model(s) VGG {} on {} ({what}, {} images): Q {:?}, {} crops{}, {vpi} views an image",
        models.len(),
        models[0].vgg.config().describe(),
        dev.name(),
        ds.len(),
        scales,
        match crops {
            Crops::Center => "centre",
            Crops::Multi => "5x5 x 2 flips",
            Crops::Dense => "dense (+ flip)",
            Crops::Both => "dense (+ flip) and 5x5 x 2 flips",
        },
        if a.flip && crops == Crops::Center { " + flips" } else { "" }
    );
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(ds.len() as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let (mut n_img, mut skipped, mut hit1, mut hit5) = (0usize, 0usize, 0usize, 0usize);
    let mut per = vec![(0usize, 0usize, 0usize); k];
    // Enough images a chunk to fill a few forward batches and keep the decoders busy.
    let chunk = (4 * a.batch).div_ceil(vpi).max(rayon::current_num_threads());
    let idx: Vec<usize> = (0..ds.len()).collect();
    for part in idx.chunks(chunk) {
        let rendered: Vec<_> = part
            .par_iter()
            .map(|&i| -> Result<Rendered, String> {
                let (img, label) = ds.load(i).map_err(|e| e.to_string())?;
                let plans = views(img.width(), img.height(), &scales, input, crops, a.flip)
                    .map_err(|e| format!("{}: {e}", ds.describe(i)))?;
                let dense = dense_views(img.width(), img.height(), &scales, crops)
                    .map_err(|e| format!("{}: {e}", ds.describe(i)))?
                    .into_iter()
                    .map(|p| (p, render(&img, &[p])))
                    .collect();
                Ok((render(&img, &plans), dense, label))
            })
            .collect();
        let mut pixels = vec![];
        let mut labels = vec![];
        let mut dense_px = vec![];
        for r in rendered {
            match r {
                Ok((px, d, l)) => {
                    pixels.extend(px);
                    dense_px.push(d);
                    labels.push(l);
                }
                Err(e) if a.strict => bail!("{e}"),
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped: {e}"));
                    skipped += 1;
                }
            }
        }
        let post = if vpc > 0 { posteriors(&mut models, &pixels, labels.len() * vpc)? } else { vec![] };
        for (j, &l) in labels.iter().enumerate() {
            let mut p = vec![0f64; k];
            for v in 0..vpc {
                for (o, x) in p.iter_mut().zip(&post[(j * vpc + v) * k..][..k]) {
                    *o += x / vpc as f64;
                }
            }
            if !dense_px[j].is_empty() {
                let mut d = vec![0f64; k];
                let views = (dense_px[j].len() * models.len()) as f64;
                for (plan, px) in &dense_px[j] {
                    let (w, h) = (plan.window.2 as usize, plan.window.3 as usize);
                    for m in &models {
                        let q = dense::dense_posterior(&m.vgg, px, w, h)?;
                        d.iter_mut().zip(q).for_each(|(o, x)| *o += x / views);
                    }
                }
                // Dense alone, or the equal-weight average with the crops' posterior.
                let wd = if vpc > 0 { 0.5 } else { 1.0 };
                p.iter_mut().zip(d).for_each(|(o, x)| *o = (1.0 - wd) * *o + wd * x);
            }
            // `vgg train`'s rule (`reference::topk_hits`): a hit when fewer than k classes
            // score strictly higher, so fp16 ties count for the label.
            let larger = p.iter().filter(|&&v| v > p[l]).count();
            let (h1, h5) = (larger < 1, larger < 5.min(k));
            hit1 += h1 as usize;
            hit5 += h5 as usize;
            per[l].0 += 1;
            per[l].1 += h1 as usize;
            per[l].2 += h5 as usize;
        }
        n_img += labels.len();
        bar.inc(part.len() as u64);
        bar.set_message(format!("top-1 err {:.2}%", 100.0 * (1.0 - hit1 as f64 / n_img.max(1) as f64)));
    }
    bar.finish_and_clear();
    if n_img == 0 {
        bail!("no image could be evaluated ({skipped} skipped as unreadable)");
    }
    let secs = t0.elapsed().as_secs_f64();
    let frac = |h: usize, n: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
    let report = EvalReport {
        weights: models.iter().map(|m| m.path.display().to_string()).collect(),
        data: what,
        device: dev.name(),
        scales,
        crops,
        flip: a.flip || crops != Crops::Center,
        views_per_image: vpi,
        images: n_img,
        skipped,
        top1_error: 1.0 - frac(hit1, n_img),
        top5_error: 1.0 - frac(hit5, n_img),
        seconds: secs,
        images_per_s: n_img as f64 / secs.max(1e-9),
        per_class: per
            .iter()
            .enumerate()
            .map(|(c, &(n, h1, h5))| ClassRow {
                class: c,
                name: names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                images: n,
                top1: frac(h1, n),
                top5: frac(h5, n),
            })
            .collect(),
    };
    println!("{}", report.line());
    if let Some(p) = &a.json {
        checkpoint::write_atomic(p, &serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = &a.csv {
        checkpoint::write_atomic(p, report.csv().as_bytes())?;
    }
    Ok(report)
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
    fn crop_grid_is_row_major() {
        let g = crop_grid(292, 256, 224, 5);
        assert_eq!(g.len(), 25);
        assert_eq!(g[0], (0, 0));
        assert_eq!(g[4], (68, 0));
        assert_eq!(g[5], (0, 8));
        assert_eq!(g[24], (68, 32));
    }
}
