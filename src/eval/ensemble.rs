//! The models of a run: checkpoints (ours, or torchvision's by [`infer_config`]) loaded and
//! checked against each other ([`load_ensemble`]) with what they record (classes, test scale),
//! then every view scored by every model, the posteriors averaged over views and models
//! ([`posteriors`], [`image_posterior`]). The device buffers live here with the models that
//! own them. [`class_list`] shortens stored class lists for messages (training's too).

use super::dense;
use crate::data::Plan;
use crate::model::{Arch, Init, NamedTensor, Vgg, VggConfig};
use crate::train::checkpoint::{self, TrainState};
use crate::{ops, Device, PinnedBuffer, Tensor};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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
pub(super) fn check_weights_file(path: &Path) -> Result<()> {
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

/// Class names for an error message: the first ten, then how many there are in all.
pub fn class_list(classes: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = classes.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if classes.len() > SHOWN {
        s += &format!(", ... ({} in all)", classes.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_stop_after_ten() {
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        assert_eq!(class_list(&names(3)), "c0, c1, c2");
        assert_eq!(class_list(&names(10)), "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9");
        assert_eq!(class_list(&names(11)), "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, ... (11 in all)");
    }
}
