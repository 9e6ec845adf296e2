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

mod conv_choice;
mod graph_step;
mod step;
pub use conv_choice::{ConvChoice, ConvLayerChoice, ConvPlan};
use graph_step::StepGraph;
pub use step::{OptimConfig, ScalerState, StepStats};

use super::config::{FeatureKind, VggConfig};
use super::memory::{self, MemoryPlan, Phase, Role, Sharing};
use super::params::{self, Init, Param};
use super::reference::Trace;
use crate::ops::conv::{Conv3x3, Epilogue};
use crate::ops::{self, DropoutKey, LossScaler, LrnParams, SgdPlan, StepVars, XentBuffers};
use crate::tensor::DType;
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

/// The arena and the views of it that a step uses (see [`Role`] for what each holds).
struct Buffers {
    arena: Arc<Tensor<u8>>,
    x: Tensor<f16>,
    acts: Vec<Tensor<f16>>,
    /// Gradients w.r.t. each feature output.
    dacts: Vec<Tensor<f16>>,
    /// Per conv or pool whose gradient arrives unmasked: the gradient after `relu_bwd`.
    dpre: Vec<Option<Tensor<f16>>>,
    /// Per pool: its argmaxes.
    args: Vec<Option<Tensor<u8>>>,
    h1: Tensor<f16>,
    d1: Option<Tensor<f16>>,
    h2: Tensor<f16>,
    d2: Option<Tensor<f16>>,
    logits: Tensor<f16>,
    dlogits: Tensor<f16>,
    g_x3: Tensor<f16>,
    g_h2: Option<Tensor<f16>>,
    g_z2: Tensor<f16>,
    g_x2: Tensor<f16>,
    g_h1: Option<Tensor<f16>>,
    g_z1: Tensor<f16>,
    /// Per phase of the timeline: its workspace.
    ws: Vec<Tensor<u8>>,
}

impl Buffers {
    /// A zeroed arena of `memory`'s size and the views of a net of `layers` feature layers.
    fn new(dev: &Device, memory: &MemoryPlan, layers: usize) -> Result<Self> {
        let arena = Arc::new(Tensor::<u8>::zeros(dev, &[memory.arena_bytes()])?);
        let view = |r: Role| memory.view::<f16>(&arena, r);
        fn maybe<T: DType>(memory: &MemoryPlan, arena: &Arc<Tensor<u8>>, r: Role) -> Result<Option<Tensor<T>>> {
            memory.has(r).then(|| memory.view(arena, r)).transpose()
        }
        let opt = |r: Role| maybe::<f16>(memory, &arena, r);
        let per_layer = |f: fn(usize) -> Role| (0..layers).map(|i| view(f(i))).collect::<Result<Vec<_>>>();
        let ws = (0..memory.timeline().len()).map(|t| memory.view::<u8>(&arena, Role::Workspace(t)));
        Ok(Self {
            x: view(Role::Input)?,
            acts: per_layer(Role::Act)?,
            dacts: per_layer(Role::DAct)?,
            dpre: (0..layers).map(|i| opt(Role::DPre(i))).collect::<Result<_>>()?,
            args: (0..layers).map(|i| maybe(memory, &arena, Role::PoolArg(i))).collect::<Result<_>>()?,
            h1: view(Role::Hidden(0))?,
            d1: opt(Role::Dropped(0))?,
            h2: view(Role::Hidden(1))?,
            d2: opt(Role::Dropped(1))?,
            logits: view(Role::Logits)?,
            dlogits: view(Role::DLogits)?,
            g_x3: view(Role::DNext(1))?,
            g_h2: opt(Role::DHidden(1))?,
            g_z2: view(Role::DPreFc(1))?,
            g_x2: view(Role::DNext(0))?,
            g_h1: opt(Role::DHidden(0))?,
            g_z1: view(Role::DPreFc(0))?,
            ws: ws.collect::<Result<_>>()?,
            arena,
        })
    }
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

    /// For tests: as each phase of a step begins, fill every arena byte that no buffer live
    /// in that phase holds with 0xFF (NaN), and check that the phases run in the plan's order.
    /// A step whose results then differ from an unchecked one's reads a buffer outside its
    /// planned lifetime. Slow (a memset per free range per phase).
    pub fn check_lifetimes(&mut self, on: bool) {
        self.graphs.clear();
        self.check = on;
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

    fn snapshot(&mut self) -> Result<Trace> {
        let f = |t: &Tensor<f16>| t.to_f32();
        let (x2, x3) = match (&self.buf.d1, &self.buf.d2) {
            (Some(d1), Some(d2)) => (f(d1)?, f(d2)?),
            _ => (f(&self.buf.h1)?, f(&self.buf.h2)?),
        };
        Ok(Trace {
            x: f(&self.buf.x)?,
            acts: std::mem::take(&mut self.trace_acts),
            h1: f(&self.buf.h1)?,
            x2,
            h2: f(&self.buf.h2)?,
            x3,
            logits: f(&self.buf.logits)?,
        })
    }

    /// Phase `p` begins: its timeline index (for its workspace); under
    /// [`Vgg::check_lifetimes`], the order check and the poisoning.
    fn enter(&mut self, p: Phase) -> Result<usize> {
        let t = self.memory.index(p)?;
        if self.dev.profiling() {
            self.dev.profile_label(&self.phase_label(p));
        }
        if self.check {
            let expect = if p == Phase::Input { 0 } else { self.next_phase };
            ensure_shape!(t == expect, "phase {p:?} ran at timeline index {expect}, the plan has it at {t}");
            for (offset, len) in self.memory.free_ranges(t) {
                Tensor::<u8>::view(&self.buf.arena, offset, &[len])?.poison()?;
            }
        }
        self.next_phase = t + 1;
        Ok(t)
    }

    /// What [`Device::profile_label`] calls phase `p`: `fwd conv3_2`, `bwd pool1`, `fwd fc6`
    /// (the classifier's layers as the paper numbers VGG-16's: fc6, fc7, fc8), `loss`.
    fn phase_label(&self, p: Phase) -> String {
        match p {
            Phase::Input => "input".into(),
            Phase::Feature(i) => format!("fwd {}", self.names[i]),
            Phase::Fc(j) => format!("fwd fc{}", 6 + j),
            Phase::Loss => "loss".into(),
            Phase::FcBwd(j) => format!("bwd fc{}", 6 + j),
            Phase::FeatureBwd(i) => format!("bwd {}", self.names[i]),
        }
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

    /// Forward with dropout, the loss (scaled by the current loss scale) and the backward
    /// pass: every parameter's `g` holds the scaled gradient afterwards (NaN in the last layer,
    /// at least, where a label was outside `0..classes`; see [`Vgg::train_step`]). Nothing is
    /// read back (but the activations under [`Vgg::keep_trace`]).
    pub fn compute_grads(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, step: u64) -> Result<()> {
        self.compute_grads_src(images, labels, Src::Host(step))
    }

    fn compute_grads_src(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, src: Src) -> Result<()> {
        self.forward_src(images, true, src)?;
        if self.tracing {
            self.trace = Some(self.snapshot()?);
        }
        self.enter(Phase::Loss)?;
        let dz = Some(&mut self.buf.dlogits);
        if self.scaler.is_queued() {
            ops::softmax_xent_device_scale(&self.buf.logits, labels, dz, &self.scaler, &mut self.xent)?;
        } else {
            ops::softmax_xent(&self.buf.logits, labels, dz, self.scaler.scale(), &mut self.xent)?;
        }
        self.backward(src)
    }

    fn backward(&mut self, src: Src) -> Result<()> {
        let drop = self.cfg.dropout > 0.0;
        let pd = self.cfg.dropout;
        let fc = self.params.len() - 6;
        let (seed0, seed1) = (self.dropout_seed(0), self.dropout_seed(1));
        // classifier.6, then hidden layer 1's dropout and ReLU backward.
        let t = self.enter(Phase::FcBwd(2))?;
        let x3 = self.buf.d2.as_ref().filter(|_| drop).unwrap_or(&self.buf.h2);
        linear_bwd(x3, &self.buf.dlogits, two(&mut self.params, fc + 4), &mut self.buf.g_x3, &mut self.buf.ws[t])?;
        let key = drop_key(&self.vars, seed1, 1, src);
        hidden_bwd(&self.buf.g_x3, self.buf.g_h2.as_mut(), &self.buf.h2, &mut self.buf.g_z2, key, pd)?;
        // classifier.3, then hidden layer 0's.
        let t = self.enter(Phase::FcBwd(1))?;
        let x2 = self.buf.d1.as_ref().filter(|_| drop).unwrap_or(&self.buf.h1);
        linear_bwd(x2, &self.buf.g_z2, two(&mut self.params, fc + 2), &mut self.buf.g_x2, &mut self.buf.ws[t])?;
        let key = drop_key(&self.vars, seed0, 0, src);
        hidden_bwd(&self.buf.g_x2, self.buf.g_h1.as_mut(), &self.buf.h1, &mut self.buf.g_z1, key, pd)?;
        // classifier.0, its data gradient into the last feature map's gradient.
        let t = self.enter(Phase::FcBwd(0))?;
        let last = self.buf.acts.len() - 1;
        let dx = &mut self.buf.dacts[last];
        linear_bwd(&self.buf.acts[last], &self.buf.g_z1, two(&mut self.params, fc), dx, &mut self.buf.ws[t])?;
        for i in (0..self.ops.len()).rev() {
            let t = self.enter(Phase::FeatureBwd(i))?;
            let ws = &mut self.buf.ws[t];
            let p = &mut self.params;
            let (dprev, dcur) = self.buf.dacts.split_at_mut(i);
            let dy = &dcur[0];
            let y = &self.buf.acts[i];
            let x = if i == 0 { &self.buf.x } else { &self.buf.acts[i - 1] };
            // The gradient masked by the ReLU at this layer's output: dy itself where it arrives
            // masked.
            let dz = match &mut self.buf.dpre[i] {
                Some(t) => {
                    ops::relu_bwd(y, dy, t)?;
                    &*t
                }
                None => dy,
            };
            match &self.ops[i] {
                Op::Conv3(conv) => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = two(p, j);
                    conv.wgrad(x, dz, &mut w.g, Some(&mut b.g), ws)?;
                    if i > 0 {
                        conv.dgrad(dz, &w.h, Some(x), &mut dprev[i - 1], ws)?;
                    }
                }
                Op::Conv1 => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = two(p, j);
                    ops::conv1x1_wgrad(x, dz, &mut w.g, Some(&mut b.g), Some(&mut *ws))?;
                    if i > 0 {
                        ops::conv1x1_dgrad(dz, &w.h, &mut dprev[i - 1], Some(ws))?;
                    }
                }
                Op::Lrn => ops::lrn_bwd(x, dy, &mut dprev[i - 1], &LrnParams::ALEXNET)?,
                Op::Pool => {
                    let arg = self.buf.args[i].as_ref().expect("pool argmaxes");
                    ops::maxpool2x2_bwd_arg(arg, dz, &mut dprev[i - 1])?
                }
            }
        }
        Ok(())
    }

    /// Floating-point operations of one training step (forward + both backward passes,
    /// 3x the forward's 2 MACs per image; the first layer's unneeded data gradient excluded).
    pub fn train_flops(&self) -> f64 {
        let first = self.cfg.features()[0];
        let first_dgrad = (first.h * first.w * first.c_out * 9 * first.c_in) as f64;
        2.0 * self.batch as f64 * (3.0 * self.cfg.forward_macs() as f64 - first_dgrad)
    }
}

/// Two consecutive parameters (weight, bias) mutably.
fn two(p: &mut [Param], j: usize) -> (&mut Param, &mut Param) {
    let (a, b) = p.split_at_mut(j + 1);
    (&mut a[j], &mut b[0])
}

/// A linear layer's weight (and bias) gradient into `g`, and its data gradient into `dx`.
fn linear_bwd(
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    (w, b): (&mut Param, &mut Param),
    dx: &mut Tensor<f16>,
    ws: &mut Tensor<u8>,
) -> Result<()> {
    ops::linear_bwd_weight(x, dy, &mut w.g, Some(&mut b.g), Some(&mut *ws))?;
    ops::linear_bwd_data(dy, &w.h, dx, Some(ws))
}

/// A hidden FC layer's backward from the gradient `g_x` at its (dropout's) output: dropout
/// backward into `g_h` when given, then ReLU backward against its output `h` into `g_z`.
fn hidden_bwd(
    g_x: &Tensor<f16>,
    g_h: Option<&mut Tensor<f16>>,
    h: &Tensor<f16>,
    g_z: &mut Tensor<f16>,
    key: DropoutKey<'_>,
    p: f32,
) -> Result<()> {
    let g = match g_h {
        Some(g) => {
            ops::dropout(g_x, g, key, p)?;
            &*g
        }
        None => g_x,
    };
    ops::relu_bwd(h, g, g_z)
}
