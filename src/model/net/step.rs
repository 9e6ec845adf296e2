//! Whole training steps over [`Vgg::compute_grads`] and the state around them: the optimizer
//! half (the loss scaler's host, queued and captured steps: SGD with momentum and weight decay
//! on the fp32 masters, skipped on the device on overflow), the step's statistics, evaluation
//! of a batch, the unscaled gradients, and the weights, momentum and scaler state that
//! checkpoints read and write.

use super::params::{self, Init, NamedTensor, Param, State};
use super::Vgg;
use crate::ops::{self, Sgd, SgdParam};
use crate::{Error, Result, Tensor};

/// What one training step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy of the batch (unscaled).
    pub loss: f32,
    /// Images whose label was the top-1 class.
    pub top1: usize,
    /// Images whose label was among the top-5 classes.
    pub top5: usize,
    /// Images in the step.
    pub batch: usize,
    /// The update was skipped: some gradient overflowed at this loss scale.
    pub skipped: bool,
    /// The loss scale this step used.
    pub loss_scale: f32,
    /// Host milliseconds spent queuing the forward and backward passes (on cuda the device
    /// runs behind; on emu, which runs each launch as it is queued, the whole pass).
    pub enqueue_ms: f64,
}

impl StepStats {
    /// Top-1 accuracy of the batch, in `[0, 1]`.
    pub fn acc1(&self) -> f32 {
        self.top1 as f32 / self.batch as f32
    }
    /// Top-5 accuracy of the batch, in `[0, 1]`.
    pub fn acc5(&self) -> f32 {
        self.top5 as f32 / self.batch as f32
    }
}

/// The optimizer's hyper-parameters besides the learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// SGD momentum, in `[0, 1)`.
    pub momentum: f32,
    /// L2 weight decay on the weights (and the biases with `decay_biases`): finite and >= 0.
    pub weight_decay: f32,
    /// Initial loss scale, positive and finite (PyTorch: 65536).
    pub init_scale: f32,
    /// Clean steps in a row after which the loss scale doubles, at least 1 (PyTorch: 2000).
    pub growth_interval: u32,
    /// Weight decay on the biases too (the paper names an L2 penalty without saying whether
    /// the biases carry it; PyTorch's SGD decays every parameter it is given).
    pub decay_biases: bool,
}

impl OptimConfig {
    /// Errors unless the momentum is in `[0, 1)` and the weight decay finite and >= 0 (the
    /// rules every SGD step checks, [`Sgd::validate`]).
    pub fn validate(&self) -> Result<()> {
        crate::ops::optim::check_momentum_decay(self.momentum, self.weight_decay)
    }

    /// Whether SGD decays `p`: every weight, and the biases with `decay_biases`.
    pub fn decays(&self, p: &Param) -> bool {
        !p.bias || self.decay_biases
    }

    /// Every parameter as the SGD kernel takes it (fp32 master, momentum, gradient, fp16 copy):
    /// the list the step's plan is made for and each step runs over, in the same order.
    pub(super) fn sgd_params<'a>(&self, params: &'a mut [Param]) -> Vec<SgdParam<'a>> {
        params
            .iter_mut()
            .map(|p| SgdParam { decay: self.decays(p), w: &mut p.w, v: &mut p.v, g: &p.g, w16: Some(&mut p.h) })
            .collect()
    }
}

impl Default for OptimConfig {
    /// The paper's momentum 0.9 and weight decay 5e-4; GradScaler's scale rules.
    fn default() -> Self {
        Self { momentum: 0.9, weight_decay: 5e-4, init_scale: 65536.0, growth_interval: 2000, decay_biases: false }
    }
}

/// The loss scaler's state, for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    /// The loss scale.
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    /// Steps skipped for overflow so far.
    pub skipped: u64,
}

impl Vgg {
    /// The optimizer step over the gradients [`Vgg::compute_grads`] left: overflow check, SGD
    /// (skipped on the device on overflow), one read of the flag. Returns whether it applied.
    pub fn apply_grads(&mut self, lr: f32) -> Result<bool> {
        let sgd = self.sgd(lr)?;
        self.optimizer_step(sgd, Step::Host).map(|applied| applied.unwrap_or(true))
    }

    /// The step's SGD hyper-parameters at `lr`, checked ([`Sgd::validate`]): what every training
    /// step does before its first launch, so that a bad `lr` leaves the model as it was.
    pub(super) fn sgd(&self, lr: f32) -> Result<Sgd> {
        let sgd = Sgd { lr, momentum: self.optim.momentum, weight_decay: self.optim.weight_decay };
        sgd.validate()?;
        Ok(sgd)
    }

    /// The scaler's host step (Some(applied)), or its device-side step, which reads nothing
    /// (None), with `sgd` as [`Vgg::sgd`] checked it (the learning rate, or with
    /// `Step::QueuedAt` the one in [`crate::ops::StepVars`]).
    pub(super) fn optimizer_step(&mut self, sgd: Sgd, how: Step) -> Result<Option<bool>> {
        self.dev.profile_label("optimizer");
        let mut sp = self.optim.sgd_params(&mut self.params);
        match how {
            Step::Host => self.scaler.step(&self.sgd, &mut sp, sgd).map(Some),
            Step::Queued => self.scaler.step_queued(&self.sgd, &mut sp, sgd).map(|_| None),
            Step::QueuedAt => self.scaler.step_queued_at(&self.sgd, &mut sp, sgd, &self.vars).map(|_| None),
        }
    }

    /// One training step that reads nothing back (the option to avoid even the per-step read
    /// of [`Vgg::train_step`]): the loss scale and its overflow rules live on the device until
    /// [`Vgg::sync`]. The same arithmetic as `train_step`, so a run of queued steps ends with
    /// the same weights, bit for bit. Until the sync, [`Vgg::loss_scale`] and
    /// [`Vgg::scaler_state`] show the state of the last sync.
    pub fn train_step_queued(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, lr: f32, step: u64) -> Result<()> {
        let sgd = self.sgd(lr)?;
        self.scaler.queue()?;
        self.compute_grads(images, labels, step)?;
        self.optimizer_step(sgd, Step::Queued).map(|_| ())
    }

    /// After queued steps: one read of the scaler's state and one of the loss status; the
    /// statistics of the last queued step (None if no step was queued since the last sync; an
    /// [`Vgg::evaluate`] in between keeps a loss status of its own).
    pub fn sync(&mut self) -> Result<Option<StepStats>> {
        let Some((overflow, loss_scale)) = self.scaler.sync()? else { return Ok(None) };
        self.step_stats(overflow, loss_scale, 0.0).map(Some)
    }

    /// The loss status of the last [`Vgg::compute_grads`] (a device read); a bad label is an
    /// `Error::Invalid`, reported once, as by [`Vgg::train_step`].
    pub fn last_loss(&mut self) -> Result<ops::XentStats> {
        self.xent.check_once()
    }

    /// One training step: forward, loss, backward, optimizer. Reads back only the overflow
    /// flag and the loss status.
    ///
    /// `lr`, and the momentum and weight decay of the [`OptimConfig`], are checked first
    /// ([`Sgd::validate`]): a bad one is an `Error::Invalid` with nothing launched.
    ///
    /// A label outside `0..classes` is an `Error::Invalid` naming the first bad row, found only
    /// when the status is read at the end of the step (nothing is read back before the update).
    /// The update itself is skipped on the device: a bad row's logit gradient is NaN, so the
    /// last layer's gradients are, and the overflow check (over every gradient) leaves weights
    /// and momentum as they were; the loss scale halves and the step counts as skipped, as for
    /// any NaN gradient. The error is
    /// reported once: the loss status is cleared, so the next step, or [`Vgg::evaluate`], runs
    /// normally.
    /// Queued and graph steps report it at [`Vgg::sync`], as of the steps since the last sync.
    pub fn train_step(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, lr: f32, step: u64) -> Result<StepStats> {
        let sgd = self.sgd(lr)?;
        let loss_scale = self.scaler.scale();
        let t = std::time::Instant::now();
        self.compute_grads(images, labels, step)?;
        let enqueue_ms = t.elapsed().as_secs_f64() * 1e3;
        let applied = self.optimizer_step(sgd, Step::Host)?.unwrap_or(true);
        self.step_stats(!applied, loss_scale, enqueue_ms)
    }

    /// The last step's statistics: the loss status read from the device, the rest given.
    fn step_stats(&mut self, skipped: bool, loss_scale: f32, enqueue_ms: f64) -> Result<StepStats> {
        let s = self.xent.check_once()?;
        Ok(StepStats { loss: s.loss, top1: s.top1, top5: s.top5, batch: s.rows, skipped, loss_scale, enqueue_ms })
    }

    /// Loss and hit counts of `images` without dropout or any update (a device read); a bad
    /// label is an `Error::Invalid`, reported once, as by [`Vgg::train_step`].
    pub fn evaluate(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>) -> Result<ops::XentStats> {
        self.forward(images, false, 0)?;
        ops::softmax_xent(&self.buf.logits, labels, None, 1.0, &mut self.eval_xent)?;
        self.eval_xent.check_once()
    }

    /// The unscaled fp32 gradients of the last [`Vgg::compute_grads`], torchvision layout.
    pub fn grads(&self) -> Result<Vec<NamedTensor>> {
        if self.scaler.is_queued() {
            return Err(Error::Shape(
                "Vgg::grads: steps are queued and the loss scale is on the device; sync first".into(),
            ));
        }
        let s = self.scaler.scale();
        self.params
            .iter()
            .map(|p| {
                let g: Vec<f32> = p.g.to_host()?.iter().map(|v| v / s).collect();
                Ok((p.name.clone(), p.tv_shape.clone(), p.layout.to_torchvision(&g)?))
            })
            .collect()
    }

    /// fp32 master weights in torchvision's names and layouts.
    pub fn export_params(&self) -> Result<Vec<NamedTensor>> {
        params::export(&self.params, State::Weights)
    }
    /// SGD momentum in torchvision's names and layouts.
    pub fn export_momentum(&self) -> Result<Vec<NamedTensor>> {
        params::export(&self.params, State::Momentum)
    }
    /// Loads weights given in torchvision's names and layouts (every tensor of this model,
    /// nothing else) and refreshes the fp16 copies; momentum is left as it is.
    pub fn import_params(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        params::import(&mut self.params, tensors, State::Weights)
    }
    /// Loads SGD momentum given in torchvision's names and layouts, as [`Vgg::import_params`]
    /// loads weights (every tensor of this model, nothing else). A missing, unexpected, repeated
    /// or misshapen tensor is an `Error::Shape` and a non-finite value an `Error::Invalid`,
    /// either before anything is written.
    pub fn import_momentum(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        params::import(&mut self.params, tensors, State::Momentum)
    }
    /// Re-initialises every weight (momentum zeroed).
    pub fn reinit(&mut self, init: Init, seed: u64) -> Result<()> {
        params::init_params(&mut self.params, init, seed)
    }

    /// The loss scaler's state, for a checkpoint. While steps are queued
    /// ([`Vgg::train_step_queued`]) it is the state of the last [`Vgg::sync`].
    pub fn scaler_state(&self) -> ScalerState {
        ScalerState {
            scale: self.scaler.scale(),
            clean_steps: self.scaler.clean_steps(),
            skipped: self.scaler.skipped(),
        }
    }
    /// Restores a checkpoint's scaler state, replacing a device state that queued steps left
    /// unsynced; `Error::Invalid` unless the scale is positive and finite.
    pub fn set_scaler_state(&mut self, s: ScalerState) -> Result<()> {
        self.scaler.restore(s.scale, s.clean_steps, s.skipped)
    }
}

/// How [`Vgg::optimizer_step`] runs: the host scaler (one read), the device scaler, or the
/// device scaler with the learning rate in [`crate::ops::StepVars`] (captured steps).
#[derive(Clone, Copy)]
pub(super) enum Step {
    Host,
    Queued,
    QueuedAt,
}
