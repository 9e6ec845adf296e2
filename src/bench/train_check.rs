//! `vgg bench train --check-against CHOICE`: the first training step under the bench's conv
//! plans and under another policy, from the same weights on the same batch, compared tensor by
//! tensor. Where the gradients part ways says which conv layer and pass computes wrongly inside
//! the model: a fault in layer L's dgrad moves the gradients of every layer before L, one in its
//! wgrad only layer L's own, one in its fprop the loss and everything. Written because on the
//! H200 VGG-16 did not learn on the wgmma convs at batch 32 and 64 while each of those kernels
//! agreed with the direct twin on its own (bench/results/2026-11-30-h200.md, run 6).

use super::train::{synthetic_batches, TrainBenchConfig};
use crate::model::ConvChoice;
use crate::{reference, Device, Result};
use serde::Serialize;

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
    /// The step's loss under the bench's plans, and under `other`'s.
    pub loss: f32,
    /// See `loss`.
    pub other_loss: f32,
    /// Whether the loss scaler skipped either step (an overflow: then gradients hold Inf).
    pub skipped: bool,
    /// Every parameter tensor, in the model's order (features first).
    pub grads: Vec<GradAgreement>,
}

impl ChoiceCheck {
    /// The tensors whose gradients differ by more than [`DIFFERS`].
    pub fn differing(&self) -> impl Iterator<Item = &GradAgreement> {
        // NaN (a non-finite gradient) differs too.
        self.grads.iter().filter(|g| g.rel_l2.is_nan() || g.rel_l2 > DIFFERS)
    }
}

/// Every parameter tensor's name and gradient, in the model's order.
type Grads = Vec<(String, Vec<f32>)>;

/// Builds the bench's model twice from the same seed (one at a time, so that device memory
/// holds one), plans it by `cfg.conv` and by `other`, runs one training step on the bench's
/// first batch and compares the losses and every gradient.
pub fn check_against(dev: &Device, cfg: &TrainBenchConfig, other: ConvChoice) -> Result<ChoiceCheck> {
    let (x, y) = synthetic_batches(dev, cfg)?.swap_remove(0);
    let step = |conv: ConvChoice| -> Result<(f32, bool, Grads)> {
        let (mut vgg, _) = cfg.model(dev, conv)?;
        let s = vgg.train_step(&x, &y, cfg.lr, 0)?;
        let grads = vgg.params().iter().map(|p| Ok((p.name.clone(), p.g.to_host()?))).collect::<Result<_>>()?;
        Ok((s.loss, s.skipped, grads))
    };
    let (loss, skipped, ours) = step(cfg.conv)?;
    let (other_loss, other_skipped, theirs) = step(other)?;
    let grads = ours
        .into_iter()
        .zip(theirs)
        .map(|((name, g), (_, want))| GradAgreement { name, rel_l2: reference::compare(&g, &want).rel_l2 })
        .collect();
    Ok(ChoiceCheck {
        other: format!("{other:?}").to_lowercase(),
        loss,
        other_loss,
        skipped: skipped || other_skipped,
        grads,
    })
}
