//! The arena's views that a step reads and writes ([`Buffers`], placed by the model's
//! [`MemoryPlan`]), and the bookkeeping of the step's phases over them: each phase's timeline index
//! and workspace, the lifetime check that poisons what no live buffer holds, the profile labels,
//! and the host copy of the forward's activations before the backward pass reuses their bytes.

use super::memory::{MemoryPlan, Phase, Role};
use super::Vgg;
use crate::model::reference::Trace;
use crate::tensor::DType;
use crate::{ensure_shape, Device, Result, Tensor};
use half::f16;
use std::sync::Arc;

/// The arena and the views of it that a step uses (see [`Role`] for what each holds).
pub(super) struct Buffers {
    pub(super) arena: Arc<Tensor<u8>>,
    pub(super) x: Tensor<f16>,
    pub(super) acts: Vec<Tensor<f16>>,
    /// Gradients w.r.t. each feature output.
    pub(super) dacts: Vec<Tensor<f16>>,
    /// Per conv or pool whose gradient arrives unmasked: the gradient after `relu_bwd`.
    pub(super) dpre: Vec<Option<Tensor<f16>>>,
    /// Per pool: its argmaxes.
    pub(super) args: Vec<Option<Tensor<u8>>>,
    pub(super) h1: Tensor<f16>,
    pub(super) d1: Option<Tensor<f16>>,
    pub(super) h2: Tensor<f16>,
    pub(super) d2: Option<Tensor<f16>>,
    pub(super) logits: Tensor<f16>,
    pub(super) dlogits: Tensor<f16>,
    pub(super) g_x3: Tensor<f16>,
    pub(super) g_h2: Option<Tensor<f16>>,
    pub(super) g_z2: Tensor<f16>,
    pub(super) g_x2: Tensor<f16>,
    pub(super) g_h1: Option<Tensor<f16>>,
    pub(super) g_z1: Tensor<f16>,
    /// Per phase of the timeline: its workspace.
    pub(super) ws: Vec<Tensor<u8>>,
}

impl Buffers {
    /// A zeroed arena of `memory`'s size and the views of a net of `layers` feature layers.
    pub(super) fn new(dev: &Device, memory: &MemoryPlan, layers: usize) -> Result<Self> {
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

impl Vgg {
    pub(super) fn snapshot(&mut self) -> Result<Trace> {
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
    pub(super) fn enter(&mut self, p: Phase) -> Result<usize> {
        let t = self.memory.index(p)?;
        if self.dev.profiling() {
            self.dev.profile_label(&self.phase_label(p));
        }
        if self.check {
            let expect = if p == Phase::Input { 0 } else { self.next_phase };
            ensure_shape!(t == expect, "phase {p:?} ran at timeline index {expect}, the plan has it at {t}");
            self.check_guard_bands()?;
            for (offset, len) in self.memory.free_ranges(t) {
                Tensor::<u8>::view(&self.buf.arena, offset, &[len])?.poison()?;
            }
            self.guarded = Some(p);
        }
        self.next_phase = t + 1;
        Ok(t)
    }

    /// Fails if a guard band ([`MemoryPlan::guard_bands`]) lost its poison in the phase that ran
    /// last, naming the phase and the buffer written past; poisons them the first time (they
    /// include bytes no free range covers: each buffer's rounding).
    fn check_guard_bands(&mut self) -> Result<()> {
        for (offset, len, before) in self.memory.guard_bands() {
            let mut band = Tensor::<u8>::view(&self.buf.arena, offset, &[len])?;
            let Some(last) = self.guarded else {
                band.poison()?;
                continue;
            };
            let bytes = band.to_host()?;
            if let Some(first) = bytes.iter().position(|&b| b != 0xFF) {
                let end = bytes.iter().rposition(|&b| b != 0xFF).unwrap_or(first);
                band.poison()?;
                let before = match before.and_then(|r| self.memory.buffer(r)) {
                    Some(b) => format!("{:?} {:?}", b.role, b.shape),
                    None => "the workspace region".to_string(),
                };
                return Err(crate::Error::Kernel(format!(
                    "memory check: `{}` wrote past the end of {before}: bytes {first} to {end} after it",
                    self.phase_label(last)
                )));
            }
        }
        Ok(())
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
}
