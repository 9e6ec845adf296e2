//! A VGG network on a device: buffers planned once per (config, batch) by a [`MemoryPlan`]
//! (activations, activation gradients and workspaces share one arena by lifetime), forward,
//! backward and the mixed-precision optimizer step, all launched on the device's one stream.
//!
//! Forward: `normalize_input` -> per feature layer: conv3x3 with bias + ReLU fused into the
//! epilogue (by default Winograd F(2x2) where C and K are multiples of 8, the 3-channel first
//! layer an implicit GEMM on tensor cores, Direct for other shapes; [`ConvChoice`] picks
//! others) | 1x1 conv GEMM with bias + ReLU | LRN | 2x2 max-pool -> FC + ReLU (+ dropout) x2
//! -> FC -> softmax cross-entropy, whose kernel also writes the loss-scaled logit gradient.
//!
//! Backward, in reverse. The ReLU after a conv is undone without a separate kernel where
//! possible: the dgrad of a 3x3 conv zeroes its input gradient where its input (the previous
//! layer's output) is not > 0. That input is either the previous conv's ReLU output, or a
//! max-pool (or LRN) of one; in the pool case masking at the pool output is exact too, since
//! a window whose max is 0 holds only zeros (so every ReLU in it was off) and a positive max
//! routes the gradient to a positive element. Where the gradient arrives unmasked an explicit
//! `relu_bwd` runs: for the first FC layer's data gradient at the last pool's output (exact by
//! the same argument, on a quarter of the elements), for a 1x1 conv's dgrad at the conv below.
//! A max-pool's backward reads the argmaxes its forward recorded (a byte an output element),
//! so the conv output it pools is not kept for the backward pass.
//!
//! Gradients: fp32, of the loss multiplied by the current loss scale; `LossScaler::step`
//! checks them for Inf / NaN, skips the step on overflow (halving the scale), and otherwise
//! runs SGD with momentum and weight decay on the fp32 masters, writing the fp16 copies in
//! the same pass. The host reads back only the overflow flag and the loss status; queued and
//! graph steps (`train_step_queued`, `train_step_graph`) read nothing, the loss scale's rules
//! running on the device, until `sync`.

mod backward;
mod buffers;
mod conv_choice;
mod graph_step;
mod step;
use buffers::Buffers;
pub use conv_choice::{ConvChoice, ConvLayerChoice, ConvPlan};
use graph_step::StepGraph;
pub use step::{OptimConfig, ScalerState, StepStats};

use super::config::{FeatureKind, VggConfig};
use super::memory::{self, MemoryPlan, Phase, Sharing};
use super::params::{self, Init, Param};
use super::reference::Trace;
use crate::ops::conv::{Conv3x3, Epilogue};
use crate::ops::{self, DropoutKey, LossScaler, LrnParams, SgdPlan, StepVars, XentBuffers};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;
use std::sync::Arc;

/// How one feature layer runs.
enum Op {
    Conv3(Conv3x3),
    Conv1,
    Lrn,
    Pool,
}

/// A VGG network with its parameters, activations, gradients and workspace on one device.
/// The activations, activation gradients and workspaces are views into one arena placed by a
/// [`MemoryPlan`]: a view is valid only during its buffer's lifetime within a step.
pub struct Vgg {
    dev: Device,
    cfg: VggConfig,
    batch: usize,
    ops: Vec<Op>,
    /// Per feature layer: its short name (`conv3_2`, `pool3`), for profile labels.
    names: Vec<String>,
    /// Per feature layer: the index of its weight in `params` (bias at +1).
    param_of: Vec<Option<usize>>,
    params: Vec<Param>,
    memory: MemoryPlan,
    buf: Buffers,
    /// The training steps' loss status, and [`Vgg::evaluate`]'s own, so that an evaluation
    /// between queued steps and their sync neither reads nor clears theirs.
    xent: XentBuffers,
    eval_xent: XentBuffers,
    sgd: SgdPlan,
    scaler: LossScaler,
    optim: OptimConfig,
    seed: u64,
    /// Poison the arena's free bytes as each phase begins ([`Vgg::check_lifetimes`]), and the
    /// timeline index the next phase must have.
    check: bool,
    next_phase: usize,
    /// Under `check`, the phase that ran last once the guard bands hold poison (None before).
    guarded: Option<Phase>,
    /// Copy the forward's activations to the host in training steps ([`Vgg::keep_trace`]).
    tracing: bool,
    trace_acts: Vec<Vec<f32>>,
    trace: Option<Trace>,
    /// What changes from step to step, on the device, for captured steps.
    vars: StepVars,
    /// The captured training steps ([`Vgg::train_step_graph`]), one per pair of input
    /// buffers, the last used last; dropped by whatever moves a buffer they
    /// name.
    graphs: Vec<StepGraph>,
}

/// Where a step's varying values come from: the host's arguments (the step number, a
/// learning rate) or the model's [`StepVars`] on the device (captured steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Host(u64),
    Vars,
}

/// Hidden layer `layer`'s dropout key under `src`.
fn drop_key(vars: &StepVars, seed: u64, layer: usize, src: Src) -> DropoutKey<'_> {
    match src {
        Src::Host(step) => DropoutKey::Host { seed, step },
        Src::Vars => DropoutKey::Device { vars, layer },
    }
}

impl Vgg {
    /// A network for `cfg` at `batch` images a step, parameters from `init` with `seed` (which
    /// also seeds the dropout masks), the paper's optimizer settings. Its activations are
    /// planned for that batch once: every forward, step and evaluation takes exactly `batch`
    /// images. For another batch (one image to classify with a model trained at 64), build a
    /// second `Vgg` at that batch and [`Vgg::import_params`] the first's
    /// [`Vgg::export_params`].
    pub fn new(dev: &Device, cfg: VggConfig, batch: usize, init: Init, seed: u64) -> Result<Self> {
        Self::with_optim(dev, cfg, batch, init, seed, OptimConfig::default())
    }

    /// As [`Vgg::new`], with the optimizer settings `optim`. Allocates every parameter with
    /// its optimizer state and the arena of [`Vgg::memory`] on `dev`, initialises the weights,
    /// and uploads the SGD plan. Errors: `cfg` or `optim` that do not validate
    /// ([`VggConfig::validate`], [`OptimConfig::validate`]), a `batch` of 0 or a layer the conv
    /// kernels cannot index (`Error::Shape`), an invalid `init` or loss-scale setting
    /// (`Error::Invalid`), or memory the device cannot give.
    pub fn with_optim(
        dev: &Device,
        cfg: VggConfig,
        batch: usize,
        init: Init,
        seed: u64,
        optim: OptimConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        optim.validate()?;
        // Checked here too, before the first conv's plan would name it as its own "N0".
        ensure_shape!(batch >= 1, "VGG batch must be at least 1");
        let feats = cfg.features();
        // Auto's conv plans, with any pass the device's shared memory cannot hold on Direct.
        let convs = feats
            .iter()
            .map(|f| {
                (f.kind == FeatureKind::Conv3x3).then(|| Ok(memory::conv3x3(f, batch)?.fitted_to(dev))).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let memory = MemoryPlan::with_convs(&cfg, batch, Sharing::Lifetimes, &convs)?;
        let mut params = params::allocate(dev, &cfg, init, seed)?;
        let mut ops = vec![];
        let mut param_of = vec![];
        let mut next_param = 0;
        for (f, conv) in feats.iter().zip(&convs) {
            ops.push(match (f.kind, conv) {
                (FeatureKind::Conv3x3, Some(c)) => Op::Conv3(*c),
                (FeatureKind::Conv3x3, None) => unreachable!("every 3x3 conv layer was planned"),
                (FeatureKind::Conv1x1, _) => Op::Conv1,
                (FeatureKind::Lrn, _) => Op::Lrn,
                (FeatureKind::Pool, _) => Op::Pool,
            });
            param_of.push(f.is_conv().then_some(next_param));
            next_param += if f.is_conv() { 2 } else { 0 };
        }
        let sgd_params = optim.sgd_params(&mut params);
        let sgd = SgdPlan::new(&sgd_params)?;
        std::mem::drop(sgd_params);
        Ok(Self {
            dev: dev.clone(),
            batch,
            ops,
            names: cfg.feature_names(),
            param_of,
            params,
            buf: Buffers::new(dev, &memory, feats.len())?,
            memory,
            xent: XentBuffers::new(dev, batch)?,
            eval_xent: XentBuffers::new(dev, batch)?,
            sgd,
            scaler: LossScaler::with(dev, optim.init_scale, optim.growth_interval)?,
            optim,
            seed,
            cfg,
            check: false,
            next_phase: 0,
            guarded: None,
            tracing: false,
            trace_acts: vec![],
            trace: None,
            vars: StepVars::new(dev)?,
            graphs: vec![],
        })
    }

    /// Re-places the arena's buffers by `sharing`, in a new arena (what the old one held is
    /// gone: call it between steps). [`Sharing::Separate`] measures the sharing, and is the
    /// reference the lifetime tests compare against.
    pub fn relayout(&mut self, sharing: Sharing) -> Result<()> {
        let memory = MemoryPlan::with_convs(&self.cfg, self.batch, sharing, &self.conv_plans())?;
        self.graphs.clear();
        self.buf = Buffers::new(&self.dev, &memory, self.ops.len())?;
        self.memory = memory;
        self.guarded = None;
        Ok(())
    }

    /// The network's configuration.
    pub fn config(&self) -> &VggConfig {
        &self.cfg
    }
    /// Images a step takes: every input and label tensor has this batch.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The device the network lives and runs on.
    pub fn device(&self) -> &Device {
        &self.dev
    }
    /// The seed of the initialisation and the dropout masks, as given at construction.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Every parameter tensor, in torchvision's state-dict order (each conv and FC layer's
    /// weight, then its bias).
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    /// The parameter tensors, mutably (e.g. to plant a gradient in a test). Replacing a tensor
    /// makes the next optimizer step fail: the plan is bound to these allocations.
    pub fn params_mut(&mut self) -> &mut [Param] {
        self.graphs.clear();
        &mut self.params
    }
    /// The parameter of torchvision name `name` (`features.0.weight`), if the model has one.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }
    /// The last forward pass's logits, `[batch, classes]` fp16.
    pub fn logits(&self) -> &Tensor<f16> {
        &self.buf.logits
    }
    /// The loss scale the next host step uses; while steps are queued, the scale of the last
    /// [`Vgg::sync`].
    pub fn loss_scale(&self) -> f32 {
        self.scaler.scale()
    }
    /// The optimizer settings the network was built with.
    pub fn optim(&self) -> OptimConfig {
        self.optim
    }

    /// Bytes of device memory the network holds: [`MemoryPlan::total`] (parameters with their
    /// optimizer state, the arena of activations, gradients and workspaces, the small buffers).
    pub fn device_bytes(&self) -> usize {
        self.memory.total()
    }

    /// Where the network's bytes are and when each arena buffer is live.
    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// The allocation every buffer of a step is a view of, at the offsets of [`Vgg::memory`]
    /// (for tools and tests that inspect a step's buffers; a write into it changes the next
    /// step).
    pub fn arena(&self) -> &Arc<Tensor<u8>> {
        &self.buf.arena
    }

    /// For tests: as each phase of a step begins, fill every arena byte that no buffer live
    /// in that phase holds with 0xFF (NaN), and check that the phases run in the plan's order.
    /// A step whose results then differ from an unchecked one's reads a buffer outside its
    /// planned lifetime. Slow (a memset per free range per phase). With every buffer its own
    /// bytes ([`Sharing::Separate`]), the guard band behind each buffer is checked too, so a
    /// step whose kernels write past a buffer's end fails naming the buffer and the phase.
    pub fn check_lifetimes(&mut self, on: bool) {
        self.graphs.clear();
        self.check = on;
        self.guarded = None;
    }

    /// Keep a host copy of the activations of each training forward pass, for
    /// [`Vgg::trace`] (the arena reuses their bytes during the backward pass).
    pub fn keep_trace(&mut self, on: bool) {
        self.tracing = on;
        self.trace = None;
    }

    /// The activations of the last training forward pass ([`Vgg::compute_grads`]) after
    /// [`Vgg::keep_trace`], widened to f32 in the host twin's layout: tests let the twin follow
    /// the device's ReLU and max-pool decisions with them
    /// ([`super::reference::HostVgg::grads`]).
    pub fn trace(&self) -> Result<Trace> {
        self.trace
            .clone()
            .ok_or_else(|| Error::Shape("no trace: call keep_trace(true) before the training step".into()))
    }

    /// Seed of the dropout mask after hidden FC layer `layer` (0 or 1).
    pub fn dropout_seed(&self, layer: u64) -> u64 {
        self.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(layer + 1)
    }

    fn check_batch(&self, images: &Tensor<u8>) -> Result<()> {
        if !images.device().same(&self.dev) {
            // Named here: the first op would name its own output buffer instead.
            return Err(Error::WrongDevice {
                tensor: "VGG images".into(),
                expected: self.dev.name(),
                other: "the model".into(),
                found: images.device().name(),
            });
        }
        let s = self.cfg.input;
        ensure_shape!(
            images.shape() == [self.batch, s, s, 3],
            "VGG {}: images must be [{}, {s}, {s}, 3] u8 NHWC, got {:?}",
            self.cfg.arch,
            self.batch,
            images.shape()
        );
        Ok(())
    }

    /// Forward pass of `images` (`[batch, input, input, 3]` u8 NHWC) into [`Vgg::logits`];
    /// `train` applies dropout with the masks of `step`.
    pub fn forward(&mut self, images: &Tensor<u8>, train: bool, step: u64) -> Result<&Tensor<f16>> {
        self.forward_src(images, train, Src::Host(step))
    }

    fn forward_src(&mut self, images: &Tensor<u8>, train: bool, src: Src) -> Result<&Tensor<f16>> {
        self.check_batch(images)?;
        self.enter(Phase::Input)?;
        self.trace_acts.clear();
        ops::normalize_input(images, None, &self.cfg.norm(), &mut self.buf.x)?;
        for i in 0..self.ops.len() {
            let t = self.enter(Phase::Feature(i))?;
            let ws = &mut self.buf.ws[t];
            let (prev, cur) = self.buf.acts.split_at_mut(i);
            let x = if i == 0 { &self.buf.x } else { &prev[i - 1] };
            let y = &mut cur[0];
            match &self.ops[i] {
                Op::Conv3(conv) => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = (&self.params[j].h, &self.params[j + 1].h);
                    conv.fprop(x, w, Some(b), Epilogue::BiasRelu, y, ws)?;
                }
                Op::Conv1 => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = (&self.params[j].h, &self.params[j + 1].h);
                    ops::conv1x1_fwd(x, w, Some(b), true, y, Some(ws))?;
                }
                Op::Lrn => ops::lrn_fwd(x, y, &LrnParams::ALEXNET)?,
                Op::Pool => ops::maxpool2x2_fwd_arg(x, y, self.buf.args[i].as_mut().expect("pool argmaxes"))?,
            }
            // Pools' inputs die in the forward pass: copy each layer as it is made.
            if train && self.tracing {
                self.trace_acts.push(self.buf.acts[i].to_f32()?);
            }
        }
        let fc = self.params.len() - 6;
        let (seed0, seed1) = (self.dropout_seed(0), self.dropout_seed(1));
        let (drop, pd) = (train && self.cfg.dropout > 0.0, self.cfg.dropout);
        let t = self.enter(Phase::Fc(0))?;
        let (feat, p) = (self.buf.acts.last().expect("features are never empty"), &self.params);
        ops::linear_fwd(feat, &p[fc].h, Some(&p[fc + 1].h), true, &mut self.buf.h1, Some(&mut self.buf.ws[t]))?;
        if let Some(d1) = self.buf.d1.as_mut().filter(|_| drop) {
            ops::dropout(&self.buf.h1, d1, drop_key(&self.vars, seed0, 0, src), pd)?;
        }
        let t = self.enter(Phase::Fc(1))?;
        let (x2, p) = (self.buf.d1.as_ref().filter(|_| drop).unwrap_or(&self.buf.h1), &self.params);
        ops::linear_fwd(x2, &p[fc + 2].h, Some(&p[fc + 3].h), true, &mut self.buf.h2, Some(&mut self.buf.ws[t]))?;
        if let Some(d2) = self.buf.d2.as_mut().filter(|_| drop) {
            ops::dropout(&self.buf.h2, d2, drop_key(&self.vars, seed1, 1, src), pd)?;
        }
        let t = self.enter(Phase::Fc(2))?;
        let x3 = self.buf.d2.as_ref().filter(|_| drop).unwrap_or(&self.buf.h2);
        let (w, b) = (&self.params[fc + 4].h, &self.params[fc + 5].h);
        ops::linear_fwd(x3, w, Some(b), false, &mut self.buf.logits, Some(&mut self.buf.ws[t]))?;
        Ok(&self.buf.logits)
    }

    /// Floating-point operations of one training step (forward + both backward passes,
    /// 3x the forward's 2 MACs per image; the first layer's unneeded data gradient excluded).
    pub fn train_flops(&self) -> f64 {
        let first = self.cfg.features()[0];
        let first_dgrad = (first.h * first.w * first.c_out * 9 * first.c_in) as f64;
        2.0 * self.batch as f64 * (3.0 * self.cfg.forward_macs() as f64 - first_dgrad)
    }
}
