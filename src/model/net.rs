//! A VGG network on a device: buffers planned once per (config, batch), forward, backward
//! and the mixed-precision optimizer step, all launched on the device's one stream.
//!
//! Forward: `normalize_input` -> per feature layer: conv3x3 with bias + ReLU fused into the
//! epilogue (Winograd, or Direct for the 3-channel first layer) | 1x1 conv GEMM with bias +
//! ReLU | LRN | 2x2 max-pool -> FC + ReLU (+ dropout) x2 -> FC -> softmax cross-entropy,
//! whose kernel also writes the loss-scaled logit gradient.
//!
//! Backward, in reverse. The ReLU after a conv is undone without a separate kernel where
//! possible: the dgrad of a 3x3 conv zeroes its input gradient where its input (the previous
//! layer's output) is not > 0. That input is either the previous conv's ReLU output, or a
//! max-pool (or LRN) of one; in the pool case masking at the pool output is exact too, since
//! a window whose max is 0 holds only zeros (so every ReLU in it was off) and a positive max
//! routes the gradient to a positive element. Where the gradient arrives unmasked (from the
//! first FC layer, or from a 1x1 conv's dgrad) an explicit `relu_bwd` runs.
//!
//! Gradients: fp32, of the loss multiplied by the current loss scale; `LossScaler::step`
//! checks them for Inf / NaN, skips the step on overflow (halving the scale), and otherwise
//! runs SGD with momentum and weight decay on the fp32 masters, writing the fp16 copies in
//! the same pass. The host reads back only the overflow flag and the loss status.

use super::config::{FeatureKind, VggConfig};
use super::params::{self, Init, NamedTensor, Param, State};
use super::reference::Trace;
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
use crate::ops::gemm::{Linear, Pass};
use crate::ops::{self, LossScaler, LrnParams, Sgd, SgdParam, SgdPlan, XentBuffers};
use crate::problem::ConvProblem;
use crate::{ensure_shape, Device, Result, Tensor};
use half::f16;

/// What one training step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy of the batch (unscaled).
    pub loss: f32,
    /// Images whose label was the top-1 / among the top-5 classes.
    pub top1: usize,
    pub top5: usize,
    pub batch: usize,
    /// The update was skipped: some gradient overflowed at this loss scale.
    pub skipped: bool,
    /// The loss scale this step used.
    pub loss_scale: f32,
}

impl StepStats {
    pub fn acc1(&self) -> f32 {
        self.top1 as f32 / self.batch as f32
    }
    pub fn acc5(&self) -> f32 {
        self.top5 as f32 / self.batch as f32
    }
}

/// The optimizer's hyper-parameters besides the learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    /// Initial loss scale and clean steps between doublings (PyTorch: 65536, 2000).
    pub init_scale: f32,
    pub growth_interval: u32,
}

impl Default for OptimConfig {
    /// The paper's momentum 0.9 and weight decay 5e-4; GradScaler's scale rules.
    fn default() -> Self {
        Self { momentum: 0.9, weight_decay: 5e-4, init_scale: 65536.0, growth_interval: 2000 }
    }
}

/// The loss scaler's state, for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    pub scale: f32,
    pub clean_steps: u32,
    pub skipped: u64,
}

/// How one feature layer runs.
enum Op {
    Conv3(Conv3x3),
    Conv1,
    Lrn,
    Pool,
}

/// A VGG network with its parameters, activations, gradients and workspace on one device.
pub struct Vgg {
    dev: Device,
    cfg: VggConfig,
    batch: usize,
    ops: Vec<Op>,
    /// Per feature layer: the index of its weight in `params` (bias at +1).
    param_of: Vec<Option<usize>>,
    /// Per feature layer: its gradient arrives already multiplied by its ReLU mask.
    arrives_masked: Vec<bool>,
    params: Vec<Param>,
    x: Tensor<f16>,
    acts: Vec<Tensor<f16>>,
    /// Gradients w.r.t. each feature output (index 0 unused: no input gradient is needed).
    dacts: Vec<Tensor<f16>>,
    /// Per conv layer whose gradient arrives unmasked: the gradient after `relu_bwd`.
    dpre: Vec<Option<Tensor<f16>>>,
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
    ws: Tensor<u8>,
    xent: XentBuffers,
    plan: SgdPlan,
    scaler: LossScaler,
    optim: OptimConfig,
    seed: u64,
}

fn fc_flops(cfg: &VggConfig, batch: usize) -> [Linear; 3] {
    let c = cfg.classifier();
    [Linear::new(batch, c[0].0, c[0].1), Linear::new(batch, c[1].0, c[1].1), Linear::new(batch, c[2].0, c[2].1)]
}

impl Vgg {
    /// A network for `cfg` at `batch` images a step, parameters from `init` with `seed` (which
    /// also seeds the dropout masks), the paper's optimizer settings.
    pub fn new(dev: &Device, cfg: VggConfig, batch: usize, init: Init, seed: u64) -> Result<Self> {
        Self::with_optim(dev, cfg, batch, init, seed, OptimConfig::default())
    }

    pub fn with_optim(
        dev: &Device,
        cfg: VggConfig,
        batch: usize,
        init: Init,
        seed: u64,
        optim: OptimConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure_shape!(batch >= 1, "VGG batch must be at least 1");
        let feats = cfg.features();
        let params = params::allocate(dev, &cfg, init, seed)?;
        let (n, s) = (batch, cfg.input);
        let mut ws_bytes = 0usize;
        let mut ops = vec![];
        let mut param_of = vec![];
        let mut acts = vec![];
        let mut dacts = vec![];
        let mut next_param = 0;
        for f in &feats {
            let (oh, ow) = f.out_hw();
            let shape = [n, oh, ow, f.c_out];
            acts.push(Tensor::<f16>::zeros(dev, &shape)?);
            dacts.push(Tensor::<f16>::zeros(dev, &shape)?);
            let op = match f.kind {
                FeatureKind::Conv3x3 => {
                    let p = ConvProblem::new(n, f.h, f.w, f.c_in, f.c_out);
                    // Auto runs Winograd for channel counts in multiples of 8 and Direct for the
                    // 3-channel input; width multipliers can give other counts, which Direct takes.
                    let tc = (f.c_in % 8 == 0 && f.c_out % 8 == 0) || f.c_in < 8;
                    let conv = Conv3x3::new(p, if tc { ConvAlgo::Auto } else { ConvAlgo::Direct })?;
                    for pass in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad] {
                        ws_bytes = ws_bytes.max(conv.workspace_bytes(pass));
                    }
                    Op::Conv3(conv)
                }
                FeatureKind::Conv1x1 => {
                    let l = Linear::conv1x1(n, f.h, f.w, f.c_in, f.c_out);
                    for pass in [Pass::Fwd, Pass::BwdData, Pass::BwdWeight] {
                        ws_bytes = ws_bytes.max(l.workspace_bytes(pass));
                    }
                    Op::Conv1
                }
                FeatureKind::Lrn => Op::Lrn,
                FeatureKind::Pool => Op::Pool,
            };
            if f.is_conv() {
                param_of.push(Some(next_param));
                next_param += 2;
            } else {
                param_of.push(None);
            }
            ops.push(op);
        }
        for l in fc_flops(&cfg, n) {
            for pass in [Pass::Fwd, Pass::BwdData, Pass::BwdWeight] {
                ws_bytes = ws_bytes.max(l.workspace_bytes(pass));
            }
        }
        // Which layers' gradients arrive masked: walk backward as `backward` does.
        let mut arrives_masked = vec![false; feats.len()];
        let mut masked = false; // from the first FC layer's data gradient
        for i in (0..feats.len()).rev() {
            arrives_masked[i] = masked;
            masked = match feats[i].kind {
                FeatureKind::Conv3x3 => true,
                FeatureKind::Conv1x1 => false,
                FeatureKind::Lrn | FeatureKind::Pool => masked,
            };
        }
        let dpre = feats
            .iter()
            .zip(&acts)
            .zip(&arrives_masked)
            .map(|((f, a), &m)| if f.is_conv() && !m { Tensor::zeros(dev, a.shape()).map(Some) } else { Ok(None) })
            .collect::<Result<Vec<_>>>()?;
        let fcw = cfg.fc;
        let drop = cfg.dropout > 0.0;
        let z = |shape: &[usize]| Tensor::<f16>::zeros(dev, shape);
        let opt = |on: bool| if on { z(&[n, fcw]).map(Some) } else { Ok(None) };
        let mut params = params;
        let sgd_params: Vec<SgdParam<'_>> = params
            .iter_mut()
            .map(|p| SgdParam { w: &mut p.w, v: &mut p.v, g: &p.g, w16: Some(&mut p.h), decay: p.decay })
            .collect();
        let plan = SgdPlan::new(&sgd_params)?;
        std::mem::drop(sgd_params);
        Ok(Self {
            dev: dev.clone(),
            batch,
            ops,
            param_of,
            arrives_masked,
            params,
            x: z(&[n, s, s, 3])?,
            acts,
            dacts,
            dpre,
            h1: z(&[n, fcw])?,
            d1: opt(drop)?,
            h2: z(&[n, fcw])?,
            d2: opt(drop)?,
            logits: z(&[n, cfg.classes])?,
            dlogits: z(&[n, cfg.classes])?,
            g_x3: z(&[n, fcw])?,
            g_h2: opt(drop)?,
            g_z2: z(&[n, fcw])?,
            g_x2: z(&[n, fcw])?,
            g_h1: opt(drop)?,
            g_z1: z(&[n, fcw])?,
            ws: Tensor::zeros(dev, &[ws_bytes.max(16)])?,
            xent: XentBuffers::new(dev, n)?,
            plan,
            scaler: LossScaler::with(dev, optim.init_scale, optim.growth_interval)?,
            optim,
            seed,
            cfg,
        })
    }

    pub fn config(&self) -> &VggConfig {
        &self.cfg
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn device(&self) -> &Device {
        &self.dev
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    /// The parameter tensors, mutably (e.g. to plant a gradient in a test). Replacing a tensor
    /// makes the next optimizer step fail: the plan is bound to these allocations.
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }
    /// The last forward pass's logits, `[batch, classes]` fp16.
    pub fn logits(&self) -> &Tensor<f16> {
        &self.logits
    }
    pub fn loss_scale(&self) -> f32 {
        self.scaler.scale()
    }
    pub fn optim(&self) -> OptimConfig {
        self.optim
    }

    /// Bytes of device memory the network holds (parameters with their optimizer state,
    /// activations, gradients, workspace).
    pub fn device_bytes(&self) -> usize {
        let p: usize = self.params.iter().map(|p| p.w.bytes() * 3 + p.h.bytes()).sum();
        let a: usize = self.acts.iter().chain(&self.dacts).map(|t| t.bytes()).sum();
        let d: usize = self.dpre.iter().flatten().map(|t| t.bytes()).sum();
        let fc = [&self.h1, &self.h2, &self.logits, &self.dlogits, &self.g_x3, &self.g_z2, &self.g_x2, &self.g_z1]
            .iter()
            .map(|t| t.bytes())
            .sum::<usize>()
            + [&self.d1, &self.d2, &self.g_h2, &self.g_h1]
                .iter()
                .filter_map(|t| t.as_ref())
                .map(|t| t.bytes())
                .sum::<usize>();
        p + a + d + fc + self.x.bytes() + self.ws.len()
    }

    /// The activations of the last training forward pass ([`Vgg::compute_grads`]), widened to
    /// f32 in the host twin's layout: tests let the twin follow the device's ReLU and max-pool
    /// decisions with them ([`super::reference::HostVgg::grads`]).
    pub fn trace(&self) -> Result<Trace> {
        let f = |t: &Tensor<f16>| t.to_f32();
        let (x2, x3) = match (&self.d1, &self.d2) {
            (Some(d1), Some(d2)) => (f(d1)?, f(d2)?),
            _ => (f(&self.h1)?, f(&self.h2)?),
        };
        Ok(Trace {
            x: f(&self.x)?,
            acts: self.acts.iter().map(f).collect::<Result<_>>()?,
            h1: f(&self.h1)?,
            x2,
            h2: f(&self.h2)?,
            x3,
            logits: f(&self.logits)?,
        })
    }

    /// Seed of the dropout mask after hidden FC layer `layer` (0 or 1).
    pub fn dropout_seed(&self, layer: u64) -> u64 {
        self.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(layer + 1)
    }

    fn check_batch(&self, images: &Tensor<u8>) -> Result<()> {
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
        self.check_batch(images)?;
        ops::normalize_input(images, None, &self.cfg.norm(), &mut self.x)?;
        for i in 0..self.ops.len() {
            let (prev, cur) = self.acts.split_at_mut(i);
            let x = if i == 0 { &self.x } else { &prev[i - 1] };
            let y = &mut cur[0];
            match &self.ops[i] {
                Op::Conv3(conv) => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = (&self.params[j].h, &self.params[j + 1].h);
                    conv.fprop(x, w, Some(b), Epilogue::BiasRelu, y, &mut self.ws)?;
                }
                Op::Conv1 => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = (&self.params[j].h, &self.params[j + 1].h);
                    ops::conv1x1_fwd(x, w, Some(b), true, y, Some(&mut self.ws))?;
                }
                Op::Lrn => ops::lrn_fwd(x, y, &LrnParams::ALEXNET)?,
                Op::Pool => ops::maxpool2x2_fwd(x, y)?,
            }
        }
        let fc = self.params.len() - 6;
        let feat = self.acts.last().expect("features are never empty");
        let (seed0, seed1) = (self.dropout_seed(0), self.dropout_seed(1));
        let p = &self.params;
        let drop = train && self.cfg.dropout > 0.0;
        ops::linear_fwd(feat, &p[fc].h, Some(&p[fc + 1].h), true, &mut self.h1, Some(&mut self.ws))?;
        let x2 = match (&mut self.d1, drop) {
            (Some(d1), true) => {
                ops::dropout_fwd(&self.h1, d1, seed0, step, self.cfg.dropout)?;
                &*d1
            }
            _ => &self.h1,
        };
        ops::linear_fwd(x2, &p[fc + 2].h, Some(&p[fc + 3].h), true, &mut self.h2, Some(&mut self.ws))?;
        let x3 = match (&mut self.d2, drop) {
            (Some(d2), true) => {
                ops::dropout_fwd(&self.h2, d2, seed1, step, self.cfg.dropout)?;
                &*d2
            }
            _ => &self.h2,
        };
        ops::linear_fwd(x3, &p[fc + 4].h, Some(&p[fc + 5].h), false, &mut self.logits, Some(&mut self.ws))?;
        Ok(&self.logits)
    }

    /// Forward with dropout, the loss (scaled by the current loss scale) and the backward
    /// pass: every parameter's `g` holds the scaled gradient afterwards. Nothing is read back.
    pub fn compute_grads(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, step: u64) -> Result<()> {
        self.forward(images, true, step)?;
        let scale = self.scaler.scale();
        ops::softmax_xent(&self.logits, labels, Some(&mut self.dlogits), scale, &mut self.xent)?;
        self.backward(step)
    }

    fn backward(&mut self, step: u64) -> Result<()> {
        let drop = self.cfg.dropout > 0.0;
        let pd = self.cfg.dropout;
        let fc = self.params.len() - 6;
        let (seed0, seed1) = (self.dropout_seed(0), self.dropout_seed(1));
        let ws = &mut self.ws;
        let p = &mut self.params;
        // classifier.6
        let x3 = if drop { self.d2.as_ref().expect("dropout buffer") } else { &self.h2 };
        let (w6, b6) = two(p, fc + 4);
        ops::linear_bwd_weight(x3, &self.dlogits, &mut w6.g, Some(&mut b6.g), Some(&mut *ws))?;
        ops::linear_bwd_data(&self.dlogits, &w6.h, &mut self.g_x3, Some(&mut *ws))?;
        let g_h2 = match &mut self.g_h2 {
            Some(g) => {
                ops::dropout_bwd(&self.g_x3, g, seed1, step, pd)?;
                &*g
            }
            None => &self.g_x3,
        };
        ops::relu_bwd(&self.h2, g_h2, &mut self.g_z2)?;
        // classifier.3
        let x2 = if drop { self.d1.as_ref().expect("dropout buffer") } else { &self.h1 };
        let (w3, b3) = two(p, fc + 2);
        ops::linear_bwd_weight(x2, &self.g_z2, &mut w3.g, Some(&mut b3.g), Some(&mut *ws))?;
        ops::linear_bwd_data(&self.g_z2, &w3.h, &mut self.g_x2, Some(&mut *ws))?;
        let g_h1 = match &mut self.g_h1 {
            Some(g) => {
                ops::dropout_bwd(&self.g_x2, g, seed0, step, pd)?;
                &*g
            }
            None => &self.g_x2,
        };
        ops::relu_bwd(&self.h1, g_h1, &mut self.g_z1)?;
        // classifier.0, its data gradient into the last feature map's gradient.
        let last = self.acts.len() - 1;
        let (w0, b0) = two(p, fc);
        ops::linear_bwd_weight(&self.acts[last], &self.g_z1, &mut w0.g, Some(&mut b0.g), Some(&mut *ws))?;
        ops::linear_bwd_data(&self.g_z1, &w0.h, &mut self.dacts[last], Some(&mut *ws))?;
        for i in (0..self.ops.len()).rev() {
            let (dprev, dcur) = self.dacts.split_at_mut(i);
            let dy = &dcur[0];
            let y = &self.acts[i];
            let x = if i == 0 { &self.x } else { &self.acts[i - 1] };
            // The gradient at the pre-activation of a conv: dy itself where it arrives masked.
            let dz = match (&mut self.dpre[i], &self.ops[i]) {
                (Some(t), Op::Conv3(_) | Op::Conv1) => {
                    ops::relu_bwd(y, dy, t)?;
                    &*t
                }
                _ => dy,
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
                        ops::conv1x1_dgrad(dz, &w.h, &mut dprev[i - 1], Some(&mut *ws))?;
                    }
                }
                Op::Lrn => ops::lrn_bwd(x, dy, &mut dprev[i - 1], &LrnParams::ALEXNET)?,
                Op::Pool => ops::maxpool2x2_bwd(x, dy, &mut dprev[i - 1])?,
            }
        }
        debug_assert!(self.arrives_masked.len() == self.ops.len());
        Ok(())
    }

    /// The optimizer step over the gradients [`Vgg::compute_grads`] left: overflow check, SGD
    /// (skipped on the device on overflow), one read of the flag. Returns whether it applied.
    pub fn apply_grads(&mut self, lr: f32) -> Result<bool> {
        let sgd = Sgd { lr, momentum: self.optim.momentum, weight_decay: self.optim.weight_decay };
        let mut sp: Vec<SgdParam<'_>> = self
            .params
            .iter_mut()
            .map(|p| SgdParam { w: &mut p.w, v: &mut p.v, g: &p.g, w16: Some(&mut p.h), decay: p.decay })
            .collect();
        self.scaler.step(&self.plan, &mut sp, sgd)
    }

    /// The loss status of the last [`Vgg::compute_grads`] (a device read).
    pub fn last_loss(&self) -> Result<ops::XentStats> {
        self.xent.check()
    }

    /// One training step: forward, loss, backward, optimizer. Reads back only the overflow
    /// flag and the loss status.
    pub fn train_step(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, lr: f32, step: u64) -> Result<StepStats> {
        let loss_scale = self.scaler.scale();
        self.compute_grads(images, labels, step)?;
        let applied = self.apply_grads(lr)?;
        let s = self.xent.check()?;
        Ok(StepStats { loss: s.loss, top1: s.top1, top5: s.top5, batch: s.rows, skipped: !applied, loss_scale })
    }

    /// Loss and hit counts of `images` without dropout or any update (a device read).
    pub fn evaluate(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>) -> Result<ops::XentStats> {
        self.forward(images, false, 0)?;
        ops::softmax_xent(&self.logits, labels, None, 1.0, &mut self.xent)?;
        self.xent.check()
    }

    /// The unscaled fp32 gradients of the last [`Vgg::compute_grads`], torchvision layout.
    pub fn grads(&self) -> Result<Vec<NamedTensor>> {
        let s = self.scaler.scale();
        self.params
            .iter()
            .map(|p| {
                let g: Vec<f32> = p.g.to_host()?.iter().map(|v| v / s).collect();
                Ok((p.name.clone(), p.tv_shape.clone(), p.layout.to_torchvision(&g)))
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
    pub fn import_momentum(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        params::import(&mut self.params, tensors, State::Momentum)
    }
    /// Re-initialises every weight (momentum zeroed).
    pub fn reinit(&mut self, init: Init, seed: u64) -> Result<()> {
        params::init_params(&mut self.params, init, seed)
    }

    pub fn scaler_state(&self) -> ScalerState {
        ScalerState {
            scale: self.scaler.scale(),
            clean_steps: self.scaler.clean_steps(),
            skipped: self.scaler.skipped(),
        }
    }
    pub fn set_scaler_state(&mut self, s: ScalerState) -> Result<()> {
        self.scaler.restore(s.scale, s.clean_steps, s.skipped)
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
