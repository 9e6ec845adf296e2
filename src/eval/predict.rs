//! `vgg predict`: the top classes of single images, by the views `vgg eval` takes (centre
//! crop by default at the checkpoint's test scale; flips, multi-crop, dense, several scales)
//! and every model of an ensemble.

// The parent's views, models and posteriors are this file's vocabulary.
use super::*;

use super::views::render_views;
use crate::data::decode_rgb;
use crate::Device;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// ImageNet's 1000 class names in the order of torchvision's class indices (the sorted
/// synset folders), as torchvision's weights metadata lists them: `--labels imagenet`.
const IMAGENET: &str = include_str!("imagenet_classes.txt");

/// The names in a labels file, one a line (blank lines skipped); `imagenet`, where no file of
/// that name exists, is the built-in ImageNet list.
fn read_labels(p: &Path) -> Result<Vec<String>> {
    let text = if p == Path::new("imagenet") && !p.exists() {
        IMAGENET.to_string()
    } else {
        std::fs::read_to_string(p).with_context(|| format!("--labels: reading {}", p.display()))?
    };
    Ok(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// The class names to print: a labels file's (which takes precedence), else the checkpoint's,
/// else indices.
fn class_names(models: &[Model], labels: Option<(&Path, Vec<String>)>) -> Result<Vec<String>> {
    let k = models[0].vgg.config().classes;
    if let Some((p, names)) = labels {
        if names.len() != k {
            bail!("--labels: {} has {} names for a {k}-class model", p.display(), names.len());
        }
        return Ok(names);
    }
    if let Some(c) = &models[0].classes {
        return Ok(c.clone());
    }
    Ok((0..k).map(|i| i.to_string()).collect())
}

/// Arguments of `vgg predict`.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// A checkpoint (ours, or torchvision's pretrained vgg*.pth as downloaded, or its state
    /// dict as .safetensors); repeat for an ensemble.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to print per image (at least 1).
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Class names, one a line; they take precedence over names stored in the checkpoint.
    /// `imagenet`: the built-in ImageNet names (torchvision's order), for torchvision's weights.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Test scales Q as `vgg eval` takes them (Q, Q1,Q2,..., fixed:S, jittered[:MIN:MAX]),
    /// each at least the model's input side [default: the Q the checkpoint's training run
    /// validated at, else input * 8 / 7, 256 for 224].
    #[allow(rustdoc::broken_intra_doc_links)] // `[:MIN:MAX]` is option syntax in --help, not a link
    #[arg(long)]
    pub scale: Option<String>,
    /// Views of each scale, as `vgg eval` takes them: center, multi, dense or both.
    #[arg(long, default_value = "center")]
    pub crops: String,
    /// Also the mirror image of the centre crop.
    #[arg(long)]
    pub flip: bool,
    /// Expected VGG config (A, ..., E); an error when the checkpoint is another.
    #[arg(long)]
    pub model: Option<String>,
}

impl Default for PredictArgs {
    /// The command line's defaults, with no weights and no images (tests fill those in).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: PredictArgs,
        }
        let mut a = <Cli as clap::Parser>::parse_from(["predict", "--weights", "-", "-"]).args;
        a.weights.clear();
        a.images.clear();
        a
    }
}

/// A class and its probability.
#[derive(Clone, Debug, Serialize)]
pub struct TopClass {
    /// The class index.
    pub class: usize,
    /// Its name: from `--labels`, else the checkpoint's, else the index as text.
    pub name: String,
    /// Its posterior probability, averaged over views and models (0 to 1).
    pub prob: f64,
}

/// One image's classes, most probable first.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The image's path, as given.
    pub image: String,
    /// The `--top` most probable classes, most probable first (a NaN probability first of
    /// all, as [`super::top_k`] ranks it; a warning is printed).
    pub top: Vec<TopClass>,
    /// The full posterior (sums to 1).
    #[serde(skip)]
    pub probs: Vec<f64>,
}

/// Runs `vgg predict`: prints (and returns) the top classes of every image. An image that
/// cannot be read or decoded is reported on stderr and left out; the others are still printed,
/// and the call then returns an error counting the failures (the only one when no image could
/// be classified).
pub fn predict(a: &PredictArgs) -> Result<Vec<Prediction>> {
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let crops = Crops::parse(&a.crops)?;
    let scale_arg = a.scale.as_deref().map(parse_scales).transpose()?;
    let labels = a.labels.as_deref().map(|p| read_labels(p).map(|n| (p, n))).transpose()?;
    let dev = Device::by_name(&a.device).with_context(|| format!("predict on `{}`", a.device))?;
    // A batch holds crop views: as many as the run has, up to 16.
    let n_scales = scale_arg.as_ref().map_or(1, Vec::len);
    let batch = (a.images.len() * n_scales * views_per_scale(crops, a.flip)).clamp(1, 16);
    let mut models = load_ensemble(&dev, &a.weights, a.model.as_deref(), batch)?;
    let names = class_names(&models, labels)?;
    let input = models[0].vgg.config().input as u32;
    let scales = test_scales(a.scale.as_deref().zip(scale_arg), &models, input * 8 / 7)?;
    // An image that cannot be read, decoded or cut into views is reported and left out, so that
    // one bad file among many does not hide the others' results; the run still fails at the end.
    let (mut pixels, mut dense, mut n_views, mut good, mut failed) = (vec![], vec![], vec![], vec![], vec![]);
    for p in &a.images {
        let views = std::fs::read(p)
            .with_context(|| format!("reading image {}", p.display()))
            .and_then(|bytes| Ok(decode_rgb(&bytes, p)?))
            .and_then(|img| {
                render_views(&img, &scales, input, crops, a.flip).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            });
        match views {
            Ok((px, d)) => {
                n_views.push(px.len() / (input as usize * input as usize * 3));
                pixels.extend(px);
                dense.push(d);
                good.push(p);
            }
            Err(e) => {
                eprintln!("predict: {e:#}");
                failed.push(e);
            }
        }
    }
    if good.is_empty() {
        return Err(failed.swap_remove(0));
    }
    let crop_views: usize = n_views.iter().sum();
    let post = if crop_views > 0 { posteriors(&mut models, &pixels, crop_views)? } else { vec![] };
    let k = names.len();
    let preds: Vec<Prediction> = good
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let first: usize = n_views[..i].iter().sum();
            let probs = image_posterior(&models, &post[first * k..(first + n_views[i]) * k], &dense[i], k)?;
            if !probs.iter().all(|v| v.is_finite()) {
                // Else a NaN posterior prints as NaN (null in JSON) with no word of why.
                eprintln!(
                    "predict: warning: {}: the posterior is not finite (NaN): the model's fp16 forward overflowed \
                     (a logit beyond fp16's range); NaN classes are listed first, by index",
                    p.display()
                );
            }
            let top = top_k(&probs, a.top)
                .into_iter()
                .map(|c| TopClass { class: c, name: names[c].clone(), prob: probs[c] })
                .collect();
            Ok(Prediction { image: p.display().to_string(), top, probs })
        })
        .collect::<Result<_>>()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&preds)?);
    } else {
        let cfg = models[0].vgg.config();
        eprintln!("VGG {} on {}, Q {scales:?}, {} of {input}", cfg.describe(), dev.name(), crops.describe(a.flip));
        for p in &preds {
            println!("{}", p.image);
            for (r, t) in p.top.iter().enumerate() {
                println!("  {}. {:<24} {:>8.4}  (class {})", r + 1, t.name, t.prob, t.class);
            }
        }
    }
    match failed.len() {
        0 => Ok(preds),
        n => Err(anyhow::anyhow!(
            "{n} of {} images could not be classified (the first: {:#}); the others' classes are above",
            a.images.len(),
            failed[0]
        )),
    }
}
