//! The mixed-precision optimizer (kernels/optim.cu): SGD with momentum and L2 weight decay
//! on fp32 master weights, as [`crate::reference::sgd_step`] bit for bit, over every
//! parameter tensor in one launch, writing the fp16 copies in the same pass; the overflow
//! check of the loss-scaled gradients on the device; and [`LossScaler`], the dynamic loss
//! scale (PyTorch's `GradScaler` rules), kept on the host, or on the device for steps that
//! read nothing back.
//!
//! A training step, with nothing read back before the update:
//! ```text
//! plan = SgdPlan::new(&params)                       once: descriptor table on the device
//! scaler.step(&plan, &mut params, Sgd::VGG.lr(lr))   each step: check -> update (skipped on
//!                                                    the device if any gradient overflowed)
//!                                                    -> read the flag -> adjust the scale
//! ```
//! or, reading nothing at all: `scaler.step_queued(..)` each step (the scale's state machine
//! runs on the device too, kernel amp_scaler_update) and `scaler.sync()` when the host wants
//! the scale, the skipped count or the last step's flag.

use crate::device::{KArg, Kernel, LaunchConfig};
use crate::ops::StepVars;
use crate::tensor::{check_disjoint, Span};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;

pub use crate::reference::{LossScaleState, SgdParams};

const CLEAR: Kernel = Kernel { module: "optim", name: "amp_flag_clear" };
const CHECK: Kernel = Kernel { module: "optim", name: "amp_check_f32" };
const SGD: Kernel = Kernel { module: "optim", name: "sgd_multi_f32" };
const SCALER_UPDATE: Kernel = Kernel { module: "optim", name: "amp_scaler_update" };
const THREADS: u32 = 256;
/// Elements a block updates: 64 float4 a thread. A multiple of 4, so chunks start aligned.
pub const CHUNK: usize = 1 << 16;
const TENSOR_BYTES: usize = 48;
const CHUNK_BYTES: usize = 16;

/// One parameter tensor of an SGD step: fp32 master `w`, momentum `v`, gradient `g` (all of
/// one length), an optional fp16 copy of `w` to refresh, and whether weight decay applies
/// (true for weights, false for biases).
#[derive(Debug)]
pub struct SgdParam<'a> {
    /// The fp32 master weights, updated in place.
    pub w: &'a mut Tensor<f32>,
    /// The momentum buffer, updated in place (zeros at the start, so that the first step is
    /// PyTorch's).
    pub v: &'a mut Tensor<f32>,
    /// The loss-scaled gradient; the step divides it by the loss scale.
    pub g: &'a Tensor<f32>,
    /// The fp16 copy of `w` the forward and backward passes read, rewritten from the updated
    /// `w` in the same pass; `None` when there is none.
    pub w16: Option<&'a mut Tensor<f16>>,
    /// Whether weight decay applies: true for weights, false for biases.
    pub decay: bool,
}

/// SGD hyper-parameters without the loss scale (the [`LossScaler`] supplies it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate: finite and >= 0.
    pub lr: f32,
    /// Momentum, in `[0, 1)`.
    pub momentum: f32,
    /// L2 weight decay, added to the gradients of the tensors whose [`SgdParam::decay`] is set:
    /// finite and >= 0.
    pub weight_decay: f32,
}

impl Sgd {
    /// The paper's: lr 1e-2, momentum 0.9, weight decay 5e-4.
    pub const VGG: Self = Self { lr: 1e-2, momentum: 0.9, weight_decay: 5e-4 };
    /// The same with another learning rate (the schedule divides it by 10).
    pub fn lr(self, lr: f32) -> Self {
        Self { lr, ..self }
    }
    /// The full parameters of one step at the given loss scale.
    pub fn with_scale(self, loss_scale: f32) -> SgdParams {
        SgdParams { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay, loss_scale }
    }

    /// Errors (`Error::Invalid`, naming the value) unless these make an SGD step: a finite
    /// `lr >= 0`, `momentum` in `[0, 1)`, a finite `weight_decay >= 0`. Every step checks them
    /// before its first launch: one NaN or infinite value makes every weight NaN at once.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        check_momentum_decay(self.momentum, self.weight_decay)
    }
}

/// Errors unless `lr` is finite and >= 0 (also for the learning rate [`StepVars`] hold).
pub(crate) fn check_lr(lr: f32) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(Error::Invalid(format!("sgd: learning rate {lr} must be finite and >= 0")));
    }
    Ok(())
}

/// Errors unless `momentum` is in `[0, 1)` and `weight_decay` is finite and >= 0.
pub(crate) fn check_momentum_decay(momentum: f32, weight_decay: f32) -> Result<()> {
    if !(0.0..1.0).contains(&momentum) {
        return Err(Error::Invalid(format!("sgd: momentum {momentum} must be in [0, 1)")));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err(Error::Invalid(format!("sgd: weight decay {weight_decay} must be finite and >= 0")));
    }
    Ok(())
}

/// A device flag: set by [`SgdPlan::check_overflow`] when any gradient is Inf or NaN.
#[derive(Debug)]
pub struct OverflowFlag {
    t: Tensor<i32>,
}

impl OverflowFlag {
    /// Device bytes a flag holds.
    pub const BYTES: usize = std::mem::size_of::<i32>();

    /// A cleared flag on `dev`; an error only when the allocation fails.
    pub fn new(dev: &Device) -> Result<Self> {
        Ok(Self { t: Tensor::zeros(dev, &[1])? })
    }
    /// Reads the flag (waits for the work queued before it).
    pub fn read(&self) -> Result<bool> {
        Ok(self.t.to_host()?[0] != 0)
    }
}

/// What a plan baked into its descriptor table for one tensor: the addresses it will write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    w: u64,
    v: u64,
    g: u64,
    w16: u64,
    n: usize,
    decay: bool,
}

impl Slot {
    fn of(p: &SgdParam<'_>) -> Self {
        Self {
            w: p.w.device_ptr(),
            v: p.v.device_ptr(),
            g: p.g.device_ptr(),
            w16: p.w16.as_ref().map_or(0, |t| t.device_ptr()),
            n: p.w.len(),
            decay: p.decay,
        }
    }
}

/// Errors unless the `w`, `v` and fp16 copies of all `params` (which the step writes) are pairwise
/// disjoint and disjoint from every gradient (see [`SgdPlan`]).
fn disjoint(params: &[SgdParam<'_>]) -> Result<()> {
    let names: Vec<[String; 4]> = (0..params.len())
        .map(|i| ["w", "momentum", "fp16 copy", "gradient"].map(|t| format!("parameter {i} {t}")))
        .collect();
    let (mut writes, mut reads) = (vec![], vec![]);
    for (p, [w, v, w16, g]) in params.iter().zip(&names) {
        writes.extend([p.w.span(w), p.v.span(v), Span::of(p.w16.as_deref(), w16)]);
        reads.push(p.g.span(g));
    }
    check_disjoint("sgd", &writes, &reads)
}

/// The device table of tensor descriptors and block chunks for one fixed set of parameter
/// tensors. Build it once; every call checks that it is given the same tensors, so the
/// kernels write only memory the caller lends mutably.
///
/// The tensors must be disjoint in device memory (checked by [`SgdPlan::new`], and so for every
/// call): a block updates its chunk of `w`, `v` and the fp16 copy together, so an overlap
/// between any of them, or with a gradient, across parameters too, is refused rather than read
/// half-updated. (Writing a gradient's own bytes is never what a caller means.)
#[derive(Debug)]
pub struct SgdPlan {
    dev: Device,
    table: Tensor<u8>,
    slots: Vec<Slot>,
    chunks: usize,
}

impl SgdPlan {
    /// Device bytes of the table of a plan over tensors of these lengths (for memory plans).
    pub fn table_bytes(lens: &[usize]) -> usize {
        lens.iter().map(|n| TENSOR_BYTES + n.div_ceil(CHUNK) * CHUNK_BYTES).sum()
    }

    /// Builds the table for `params` and uploads it to their device. `Error::Shape` when
    /// `params` is empty, a tensor is empty, a parameter's `v`, `g` or `w16` does not have its
    /// `w`'s length, the tensors overlap in device memory (see above), or they are too many for
    /// one launch; `Error::WrongDevice` when a tensor is not on the first `w`'s device.
    pub fn new(params: &[SgdParam<'_>]) -> Result<Self> {
        ensure_shape!(!params.is_empty(), "SgdPlan: no parameter tensors");
        let dev = params[0].w.device().clone();
        let mut bytes = Vec::with_capacity(params.len() * TENSOR_BYTES);
        let mut chunk_bytes = vec![];
        for (i, p) in params.iter().enumerate() {
            let n = p.w.len();
            ensure_shape!(n > 0, "SgdPlan: parameter {i} is empty");
            p.w.check(&dev, &format!("parameter {i} w"), n)?;
            p.v.check(&dev, &format!("parameter {i} momentum"), n)?;
            p.g.check(&dev, &format!("parameter {i} gradient"), n)?;
            if let Some(h) = &p.w16 {
                h.check(&dev, &format!("parameter {i} fp16 copy"), n)?;
            }
            let s = Slot::of(p);
            for word in [s.w, s.v, s.g, s.w16, n as u64] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            bytes.extend_from_slice(&(s.decay as i32).to_le_bytes());
            bytes.extend_from_slice(&0i32.to_le_bytes());
            let tensor = i32::try_from(i).map_err(|_| Error::Shape("SgdPlan: too many tensors".into()))?;
            for start in (0..n).step_by(CHUNK) {
                chunk_bytes.extend_from_slice(&tensor.to_le_bytes());
                chunk_bytes.extend_from_slice(&0i32.to_le_bytes());
                chunk_bytes.extend_from_slice(&(start as u64).to_le_bytes());
            }
        }
        disjoint(params)?;
        let chunks = chunk_bytes.len() / CHUNK_BYTES;
        ensure_shape!(u32::try_from(chunks).is_ok(), "SgdPlan: {chunks} chunks is too many for one launch");
        bytes.extend_from_slice(&chunk_bytes);
        debug_assert_eq!(bytes.len(), Self::table_bytes(&params.iter().map(|p| p.w.len()).collect::<Vec<_>>()));
        let table = Tensor::from_host(&dev, &[bytes.len()], &bytes)?;
        Ok(Self { dev, table, slots: params.iter().map(Slot::of).collect(), chunks })
    }

    /// Parameter tensors in the plan.
    pub fn tensors(&self) -> usize {
        self.slots.len()
    }
    /// Blocks of one launch (chunks of up to [`CHUNK`] elements).
    pub fn blocks(&self) -> usize {
        self.chunks
    }

    fn same_tensors(&self, params: &[SgdParam<'_>]) -> Result<()> {
        ensure_shape!(
            params.len() == self.slots.len(),
            "SgdPlan: built for {} tensors, given {}",
            self.slots.len(),
            params.len()
        );
        for (i, (p, s)) in params.iter().zip(&self.slots).enumerate() {
            if !p.w.device().same(&self.dev) {
                return Err(crate::tensor::wrong_device(&format!("parameter {i} w"), &self.dev, p.w.device()));
            }
            ensure_shape!(Slot::of(p) == *s, "SgdPlan: parameter {i} is not the tensor set the plan was built for");
            p.v.check(&self.dev, "momentum", s.n)?;
            p.g.check(&self.dev, "gradient", s.n)?;
            if let Some(h) = &p.w16 {
                h.check(&self.dev, "fp16 copy", s.n)?;
            }
        }
        Ok(())
    }

    fn cfg(&self) -> LaunchConfig {
        LaunchConfig { grid: (self.chunks as u32, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 }
    }
    fn tables(&self) -> (KArg, KArg) {
        let base = self.table.device_ptr();
        (KArg::Ptr(base), KArg::Ptr(base + (self.slots.len() * TENSOR_BYTES) as u64))
    }

    /// Clears `flag`, then sets it if any element of any gradient is Inf or NaN.
    pub fn check_overflow(&self, params: &[SgdParam<'_>], flag: &mut OverflowFlag) -> Result<()> {
        self.same_tensors(params)?;
        flag.t.check(&self.dev, "overflow flag", 1)?;
        let one = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: 0 };
        // SAFETY: (int* flag), one element.
        unsafe { self.dev.launch(&CLEAR, one, &[flag.t.arg_mut()])? };
        let (tensors, chunks) = self.tables();
        let args = [tensors, chunks, KArg::I64(CHUNK as i64), flag.t.arg_mut()];
        // SAFETY: (const OptimTensor*, const OptimChunk*, long long chunk_len, int* flag): the
        // table built by new() for exactly these tensors (checked), one chunk a block.
        unsafe { self.dev.launch(&CHECK, self.cfg(), &args) }
    }

    /// One SGD step on every tensor (see [`crate::reference::sgd_step`]), refreshing the fp16
    /// copies; a no-op on the device when `skip_if` is given and set. Hyper-parameters as
    /// [`Sgd::validate`] accepts them, else an `Error::Invalid` and nothing launched.
    pub fn step(&self, params: &mut [SgdParam<'_>], hp: &SgdParams, skip_if: Option<&OverflowFlag>) -> Result<()> {
        check_lr(hp.lr)?;
        check_momentum_decay(hp.momentum, hp.weight_decay)?;
        if !(hp.loss_scale > 0.0 && hp.loss_scale.is_finite()) {
            return Err(Error::Invalid(format!("sgd: loss_scale {} must be positive and finite", hp.loss_scale)));
        }
        self.launch_step(params, hp, KArg::Ptr(0), skip_if, None)
    }

    /// `amp`: null (the loss scale is `hp.loss_scale`) or a device AmpState, whose scale the
    /// kernel reads instead; `vars`: the learning rate read from there instead of `hp.lr`.
    fn launch_step(
        &self,
        params: &mut [SgdParam<'_>],
        hp: &SgdParams,
        amp: KArg,
        skip_if: Option<&OverflowFlag>,
        vars: Option<&StepVars>,
    ) -> Result<()> {
        self.same_tensors(params)?;
        let skip = match skip_if {
            Some(f) => {
                f.t.check(&self.dev, "overflow flag", 1)?;
                f.t.arg()
            }
            None => KArg::Ptr(0),
        };
        let lr_at = match vars {
            Some(v) => v.lr_arg(&self.dev)?,
            None => KArg::Ptr(0),
        };
        let (tensors, chunks) = self.tables();
        let args = [
            tensors,
            chunks,
            KArg::I64(CHUNK as i64),
            skip,
            KArg::F32(hp.lr),
            KArg::F32(hp.momentum),
            KArg::F32(hp.weight_decay),
            KArg::F32(hp.loss_scale),
            amp,
            lr_at,
        ];
        // SAFETY: (const OptimTensor*, const OptimChunk*, long long chunk_len, const int* skip
        // or null, float lr, float momentum, float weight_decay, float loss_scale, const
        // AmpState* or null, const float* lr_at or null): the table of exactly these tensors
        // (checked; w, v, w16 mutably borrowed), one chunk a block; amp a LossScaler's state on
        // this device or null; lr_at a StepVars' learning rate on this device (checked) or null.
        unsafe { self.dev.launch(&SGD, self.cfg(), &args) }
    }
}

/// Dynamic loss scaling as `torch.cuda.amp.GradScaler`: on overflow skip the step and
/// halve the scale (not below the smallest positive f32); after `growth_interval` clean steps
/// in a row, double it (not to infinity).
///
/// The state lives on the host ([`LossScaler::step`] reads the overflow flag each step), or,
/// from the first [`LossScaler::step_queued`] until the next [`LossScaler::sync`], on the
/// device, where kernel amp_scaler_update applies the same rules; the host view (`scale`,
/// `skipped`, `clean_steps`) is then the one of the last sync.
#[derive(Debug)]
pub struct LossScaler {
    /// The host view of the state.
    st: LossScaleState,
    flag: OverflowFlag,
    /// kernels/optim.cu's AmpState as eight 32-bit words: scale bits, clean steps, interval,
    /// last overflow, scale bits the last step used, padding, skipped (low, high).
    state: Tensor<i32>,
    /// Steps were queued since the last sync: the device state is the current one.
    queued: bool,
}

impl LossScaler {
    /// Device bytes a scaler holds (the flag and the state).
    pub const DEVICE_BYTES: usize = OverflowFlag::BYTES + 32;

    /// PyTorch's defaults: initial scale 2^16, growth every 2000 clean steps.
    pub fn new(dev: &Device) -> Result<Self> {
        Self::with(dev, 65536.0, 2000)
    }

    /// A scaler on `dev` starting at `init_scale` (positive and finite) that doubles the scale
    /// after `growth_interval` (at least 1) clean steps in a row; `Error::Invalid` otherwise.
    pub fn with(dev: &Device, init_scale: f32, growth_interval: u32) -> Result<Self> {
        // Values, not shapes: Error::Invalid naming them (a caller's option, such as vgg
        // train's --loss-scale, adds its own name).
        if !(init_scale > 0.0 && init_scale.is_finite()) {
            return Err(Error::Invalid(format!("LossScaler: initial scale {init_scale} must be positive and finite")));
        }
        if growth_interval == 0 {
            return Err(Error::Invalid(format!("LossScaler: growth interval {growth_interval} must be at least 1")));
        }
        Ok(Self {
            st: LossScaleState { scale: init_scale, clean_steps: 0, growth_interval, skipped: 0 },
            flag: OverflowFlag::new(dev)?,
            state: Tensor::zeros(dev, &[8])?,
            queued: false,
        })
    }

    /// The factor to multiply the loss by (pass it to [`crate::ops::softmax_xent`]).
    pub fn scale(&self) -> f32 {
        self.st.scale
    }
    /// Steps skipped for overflow so far.
    pub fn skipped(&self) -> u64 {
        self.st.skipped
    }
    /// The device overflow flag of the last step.
    pub fn flag(&self) -> &OverflowFlag {
        &self.flag
    }
    /// Clean steps since the last change of scale (checkpointed with the scale).
    pub fn clean_steps(&self) -> u32 {
        self.st.clean_steps
    }

    /// Restores the state a checkpoint saved: scale, clean steps, skipped count (replacing a
    /// device state that queued steps left unsynced).
    pub fn restore(&mut self, scale: f32, clean_steps: u32, skipped: u64) -> Result<()> {
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::Invalid(format!("LossScaler: restored scale {scale} must be positive and finite")));
        }
        self.queued = false;
        self.st.scale = scale;
        self.st.clean_steps = clean_steps;
        self.st.skipped = skipped;
        Ok(())
    }

    /// The state machine alone, on the host view: returns whether the step was applied
    /// (`!overflow`) and adjusts the scale. A doubling that would overflow f32 is not taken.
    /// (While steps are queued the host view is stale: sync first.)
    pub fn update(&mut self, overflow: bool) -> bool {
        crate::reference::loss_scale_update(&mut self.st, overflow)
    }

    /// One optimizer step: overflow check, the SGD update (skipped on the device on
    /// overflow), then one 4-byte read of the flag to update the scale. Returns whether
    /// the step was applied.
    pub fn step(&mut self, plan: &SgdPlan, params: &mut [SgdParam<'_>], sgd: Sgd) -> Result<bool> {
        sgd.validate()?;
        self.sync()?;
        plan.check_overflow(params, &mut self.flag)?;
        plan.step(params, &sgd.with_scale(self.st.scale), Some(&self.flag))?;
        let overflow = self.flag.read()?;
        Ok(self.update(overflow))
    }

    /// Hands the state to the device (uploads the host view unless steps are already queued):
    /// from here until [`LossScaler::sync`], kernels read the scale there
    /// ([`crate::ops::softmax_xent_device_scale`]) and [`LossScaler::step_queued`] updates it.
    pub fn queue(&mut self) -> Result<()> {
        if !self.queued {
            let skipped = self.st.skipped;
            let words = [
                self.st.scale.to_bits() as i32,
                self.st.clean_steps as i32,
                self.st.growth_interval as i32,
                0,
                self.st.scale.to_bits() as i32,
                0,
                skipped as u32 as i32,
                (skipped >> 32) as u32 as i32,
            ];
            self.state.copy_from_host(&words)?;
            self.queued = true;
        }
        Ok(())
    }

    /// Whether steps are queued since the last sync (the device state is the current one).
    pub fn is_queued(&self) -> bool {
        self.queued
    }

    /// The device state as a kernel argument (its first word is the scale), for the kernels of
    /// a queued step on `dev`; an error unless the state was handed to the device.
    pub(crate) fn device_state_arg(&self, dev: &Device) -> Result<KArg> {
        if !self.queued {
            return Err(Error::Shape("LossScaler: the scale is on the host; call queue() before a queued step".into()));
        }
        self.state.check(dev, "loss scaler state", 8)?;
        Ok(self.state.arg())
    }

    /// One optimizer step that reads nothing back: overflow check, the SGD update at the
    /// device's scale (skipped on the device on overflow), and the scale's update on the
    /// device, with [`LossScaler::update`]'s rules.
    pub fn step_queued(&mut self, plan: &SgdPlan, params: &mut [SgdParam<'_>], sgd: Sgd) -> Result<()> {
        self.step_queued_with(plan, params, sgd, None)
    }

    /// [`LossScaler::step_queued`] with the learning rate that `vars` holds on the device when
    /// the kernel runs (`sgd.lr` is ignored): what a captured step's replays need.
    pub fn step_queued_at(
        &mut self,
        plan: &SgdPlan,
        params: &mut [SgdParam<'_>],
        sgd: Sgd,
        vars: &StepVars,
    ) -> Result<()> {
        self.step_queued_with(plan, params, sgd, Some(vars))
    }

    fn step_queued_with(
        &mut self,
        plan: &SgdPlan,
        params: &mut [SgdParam<'_>],
        sgd: Sgd,
        vars: Option<&StepVars>,
    ) -> Result<()> {
        match vars {
            // The learning rate is the one StepVars::set checked.
            Some(_) => check_momentum_decay(sgd.momentum, sgd.weight_decay)?,
            None => sgd.validate()?,
        }
        self.queue()?;
        plan.check_overflow(params, &mut self.flag)?;
        let state = self.device_state_arg(&plan.dev)?;
        plan.launch_step(params, &sgd.with_scale(1.0), state, Some(&self.flag), vars)?;
        let one = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: 0 };
        let args = [self.flag.t.arg(), self.state.arg_mut()];
        // SAFETY: (const int* flag, AmpState* st): one flag word and the 32-byte state, both
        // on this plan's device (checked above).
        unsafe { plan.dev.launch(&SCALER_UPDATE, one, &args) }
    }

    /// Brings the host view up to date after queued steps (one read; nothing to do
    /// otherwise). Returns, if steps were queued, whether the last one overflowed and the
    /// scale it ran at.
    pub fn sync(&mut self) -> Result<Option<(bool, f32)>> {
        if !self.queued {
            return Ok(None);
        }
        let w = self.state.to_host()?;
        self.st.scale = f32::from_bits(w[0] as u32);
        self.st.clean_steps = w[1] as u32;
        self.st.skipped = (w[6] as u32 as u64) | ((w[7] as u32 as u64) << 32);
        self.queued = false;
        Ok(Some((w[3] != 0, f32::from_bits(w[4] as u32))))
    }
}
