//! `vgg bench train --check-against CHOICE`: the first training step under the bench's conv
//! plans and under another policy, from the same weights on the same batch, compared tensor by
//! tensor. Where the gradients part ways says which conv layer and pass computes wrongly inside
//! the model: a fault in layer L's dgrad moves the gradients of every layer before L, one in its
//! wgrad only layer L's own, one in its fprop the loss and everything. Written because on the
//! H200 VGG-16 did not learn on the wgmma convs at batch 32 and 64 while each of those kernels
//! agreed with the direct twin on its own (bench/results/2026-11-30-h200.md, run 6).
//!
//! Then both runs go on for the bench's warm-up and timed steps and report every step's loss:
//! the other half of that question. Correct plans round differently, and a run at the edge of
//! stability (VGG-16 at lr 1e-2 on two batches of noise: auto 5.932, PyTorch 5.015 after the
//! same 25 steps in run 6) can turn such differences into different endings. A fault shows in
//! the first step's gradients and at any learning rate; sensitivity shows only later, and
//! fades at a smaller one (`--lr`).

use super::train::{synthetic_batches, TrainBenchConfig};
use crate::model::{ConvChoice, FeatureKind, Vgg};
use crate::{reference, Device, Result, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A relative L2 difference above which a gradient "differs": two correct plans differ by
/// their kernels' fp16 rounding and by the ReLU masks and max-pool windows that near-ties route
/// the other way, up to 18% on the tiny test net (tests/conv_choice.rs); a wrong kernel by ~1.
pub const DIFFERS: f64 = 0.25;

/// One parameter tensor's gradient (of the loss-scaled loss) after the first step under both
/// policies.
#[derive(Clone, Debug, Serialize)]
pub struct GradAgreement {
    /// torchvision's name, e.g. `features.10.weight`.
    pub name: String,
    /// `||g - g_other|| / ||g_other||`; infinite where either holds a non-finite value.
    pub rel_l2: f64,
}

/// The first step under the bench's conv plans against the same step under `other`.
#[derive(Clone, Debug, Serialize)]
pub struct ChoiceCheck {
    /// The policy compared against (`--check-against`).
    pub other: String,
    /// Whether the loss scaler skipped either step (an overflow: then gradients hold Inf).
    pub skipped: bool,
    /// Every parameter tensor, in the model's order (features first).
    pub grads: Vec<GradAgreement>,
    /// The loss of every step under the bench's plans: the warm-up and timed steps on the
    /// bench's two batches in turn, the first of them the step compared above.
    pub losses: Vec<f32>,
    /// The same steps under `other`'s plans.
    pub other_losses: Vec<f32>,
}

impl ChoiceCheck {
    /// The first step's loss under the bench's plans (`losses[0]`).
    pub fn loss(&self) -> f32 {
        self.losses[0]
    }

    /// The first step's loss under `other`'s plans.
    pub fn other_loss(&self) -> f32 {
        self.other_losses[0]
    }

    /// The tensors whose gradients differ by more than [`DIFFERS`].
    pub fn differing(&self) -> impl Iterator<Item = &GradAgreement> {
        // NaN (a non-finite gradient) differs too.
        self.grads.iter().filter(|g| g.rel_l2.is_nan() || g.rel_l2 > DIFFERS)
    }

    /// The first step whose two losses differ by more than [`LOSSES_PART`] of the other's
    /// (or either is not finite), if any.
    pub fn parted_at(&self) -> Option<usize> {
        let close = |a: f32, b: f32| {
            a.is_finite() && b.is_finite() && f64::from((a - b).abs()) <= LOSSES_PART * f64::from(b.abs())
        };
        let parts = |(a, b): (&f32, &f32)| !close(*a, *b);
        self.losses.iter().zip(&self.other_losses).position(parts)
    }
}

/// A relative difference of two runs' losses at one step above which they have "parted". Two
/// correct plans stay well within it over the first steps (tests/bench_train_check.rs; on the
/// H200 at batch 128 auto, wgmma and tune ended 25 steps within 0.6% of each other), while a
/// run that diverges or stops learning leaves it.
pub const LOSSES_PART: f64 = 0.05;

/// Every parameter tensor's name and gradient, in the model's order.
type Grads = Vec<(String, Vec<f32>)>;

/// Builds the bench's model twice from the same seed (one at a time, so that device memory
/// holds one), plans it by `cfg.conv` and by `other`, runs one training step on the bench's
/// first batch and compares the losses and every gradient; then runs the rest of the bench's
/// `warmup + steps` steps under each and keeps every loss.
///
/// `dump`: a folder to write the first step's inputs and both policies' gradients to, for an
/// independent framework to recompute ([`Step0Dump`]; scripts/torch_grad_check.py).
pub fn check_against(
    dev: &Device,
    cfg: &TrainBenchConfig,
    other: ConvChoice,
    dump: Option<&Path>,
) -> Result<ChoiceCheck> {
    cfg.validate()?;
    let sets = synthetic_batches(dev, cfg)?;
    let mut dumped = dump.map(|d| Step0Dump::new(d, cfg, &sets[0])).transpose()?;
    let mut run = |conv: ConvChoice| -> Result<(bool, Grads, Vec<f32>)> {
        let (mut vgg, _) = cfg.model(dev, conv)?;
        let scale = vgg.loss_scale();
        if let Some(d) = dumped.as_mut().filter(|d| d.policies.is_empty()) {
            d.weights(&vgg)?;
        }
        let s = vgg.train_step(&sets[0].0, &sets[0].1, cfg.lr, 0)?;
        if let Some(d) = dumped.as_mut() {
            d.grads(&vgg, conv, scale, s.loss)?;
        }
        let grads = vgg.params().iter().map(|p| Ok((p.name.clone(), p.g.to_host()?))).collect::<Result<_>>()?;
        let mut losses = vec![s.loss];
        for step in 1..cfg.warmup + cfg.steps {
            let (x, y) = &sets[step % 2];
            losses.push(vgg.train_step(x, y, cfg.lr, step as u64)?.loss);
        }
        Ok((s.skipped, grads, losses))
    };
    let (skipped, ours, losses) = run(cfg.conv)?;
    let (other_skipped, theirs, other_losses) = run(other)?;
    if let Some(d) = dumped {
        d.finish()?;
    }
    let grads = ours
        .into_iter()
        .zip(theirs)
        .map(|((name, g), (_, want))| GradAgreement { name, rel_l2: reference::compare(&g, &want).rel_l2 })
        .collect();
    Ok(ChoiceCheck {
        other: format!("{other:?}").to_lowercase(),
        skipped: skipped || other_skipped,
        grads,
        losses,
        other_losses,
    })
}

/// The first step of a [`check_against`] written out for another framework to recompute
/// (`vgg bench train --check-against P --dump-step0 DIR`, read by scripts/torch_grad_check.py):
/// in DIR, `meta.json` (the network as a layer list, the input normalisation, the batch, each
/// policy's loss and loss scale, the tensors' names and shapes), `images.bin` (u8, NHWC),
/// `labels.bin` (i32), `weights/NAME.bin` (the fp16 weights the step computed with, as f32) and
/// `grads/POLICY/NAME.bin` (the gradient of the unscaled loss), tensors in torchvision's
/// layouts, little-endian. With dropout off (`--dropout 0`) the step is a plain function of
/// these, so a correct policy's gradients agree with the other framework's up to fp16 rounding
/// and a faulty one's do not: the third opinion on two policies that disagree.
pub struct Step0Dump {
    dir: PathBuf,
    meta: serde_json::Map<String, serde_json::Value>,
    policies: Vec<serde_json::Value>,
}

impl Step0Dump {
    fn new(dir: &Path, cfg: &TrainBenchConfig, batch: &(Tensor<u8>, Tensor<i32>)) -> Result<Self> {
        mkdir(&dir.join("weights"))?;
        write(&dir.join("images.bin"), &batch.0.to_host()?)?;
        write(&dir.join("labels.bin"), bytemuck::cast_slice::<i32, u8>(&batch.1.to_host()?))?;
        let m = &cfg.model;
        let layers: Vec<serde_json::Value> = m
            .features()
            .iter()
            .map(|f| {
                let kind = match f.kind {
                    FeatureKind::Conv3x3 => "conv3x3",
                    FeatureKind::Conv1x1 => "conv1x1",
                    FeatureKind::Lrn => "lrn",
                    FeatureKind::Pool => "maxpool2x2",
                };
                serde_json::json!({"kind": kind, "name": format!("features.{}", f.index)})
            })
            .collect();
        let lrn = reference::LrnParams::ALEXNET;
        let meta = serde_json::json!({
            "arch": m.arch.name(), "input": m.input, "batch": cfg.batch, "classes": m.classes,
            "dropout": m.dropout, "mean": m.mean, "std": m.std, "features": layers,
            "classifier": ["classifier.0", "classifier.3", "classifier.6"],
            "lrn": {"size": lrn.size, "alpha": lrn.alpha, "beta": lrn.beta, "k": lrn.k},
        });
        let serde_json::Value::Object(meta) = meta else { unreachable!("a JSON object") };
        Ok(Self { dir: dir.to_path_buf(), meta, policies: vec![] })
    }

    /// The fp16 weights the first step computes with (identical under every policy: one seed).
    fn weights(&mut self, vgg: &Vgg) -> Result<()> {
        let mut tensors = vec![];
        for p in vgg.params() {
            let tv = p.layout.to_torchvision(&p.h.to_f32()?)?;
            write(&self.dir.join("weights").join(format!("{}.bin", p.name)), bytemuck::cast_slice(&tv))?;
            tensors.push(serde_json::json!({"name": p.name, "shape": p.tv_shape}));
        }
        self.meta.insert("tensors".into(), tensors.into());
        Ok(())
    }

    /// One policy's gradients after its first step, unscaled by the step's loss scale.
    fn grads(&mut self, vgg: &Vgg, conv: ConvChoice, scale: f32, loss: f32) -> Result<()> {
        let mut name = format!("{conv:?}").to_lowercase();
        if self.policies.iter().any(|p| p["name"] == name.as_str()) {
            name.push_str("-2"); // a policy against itself: two folders all the same
        }
        let dir = self.dir.join("grads").join(&name);
        mkdir(&dir)?;
        for p in vgg.params() {
            let g: Vec<f32> = p.layout.to_torchvision(&p.g.to_host()?)?.iter().map(|v| v / scale).collect();
            write(&dir.join(format!("{}.bin", p.name)), bytemuck::cast_slice(&g))?;
        }
        self.policies.push(serde_json::json!({"name": name, "loss": loss, "loss_scale": scale}));
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.meta.insert("policies".into(), self.policies.into());
        let text = serde_json::to_string_pretty(&self.meta).map_err(|e| crate::Error::Invalid(e.to_string()))?;
        write(&self.dir.join("meta.json"), text.as_bytes())
    }
}

/// The dump's file errors, naming the file (the crate's error has no I/O variant: its
/// launchers do no I/O).
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| crate::Error::Invalid(format!("--dump-step0: writing {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| crate::Error::Invalid(format!("--dump-step0: creating {}: {e}", path.display())))
}
