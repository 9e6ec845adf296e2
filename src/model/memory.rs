//! Device memory of a VGG training step, planned once per (config, batch) and without a
//! device: [`MemoryPlan::new`] lists every buffer a step uses with the phases of the step
//! that write and read it, and places the buffers in one arena so that buffers whose
//! lifetimes do not overlap share bytes. [`MemoryPlan::breakdown`] says where the bytes go;
//! [`crate::model::Vgg`] allocates exactly [`MemoryPlan::total`] bytes.
//!
//! Outside the arena, for the life of the model: per parameter tensor the fp32 master, its
//! momentum, its fp32 gradient (written by the backward pass, read by the optimizer step, a
//! separate call) and the fp16 copy the kernels read; the loss buffers, the loss scaler's
//! flag and the SGD descriptor table.
//!
//! In the arena, for part of a step: the normalised input and the feature layers' outputs
//! (a conv's backward reads its input, and its ReLU mask from it; a pool's reads the argmaxes
//! its forward recorded, so the conv output a pool reads dies in the forward pass), the FC
//! activations, every activation gradient, and each phase's conv / GEMM workspace. A buffer
//! lives from the first phase that writes it to the last that reads it, so the backward
//! pass's gradients land in the bytes of activations whose last reader has run, and a phase's
//! workspace in whatever is free during that phase (the first conv's padded-input wgrad
//! workspace, the largest, among the dead activations of the deep layers). Nothing is
//! recomputed and no kernel changes for the sharing: only addresses do. Within a phase no two
//! of its buffers share bytes, so no kernel reads what it writes.

use super::config::{Feature, FeatureKind, VggConfig};
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass};
use crate::ops::gemm::{Linear, Pass};
use crate::ops::{LossScaler, SgdPlan, StepVars, XentBuffers};
use crate::problem::ConvProblem;
use crate::tensor::DType;
use crate::{ensure_shape, Error, Result, Tensor};
use std::sync::Arc;

/// Offsets and sizes in the arena are multiples of this (cudaMalloc's alignment; the
/// kernels' 16-byte loads need less).
pub const ALIGN: usize = 256;
/// Bytes a [`Sharing::Separate`] plan leaves unused behind every buffer (and behind the
/// workspace region): a guard band. Under [`crate::model::Vgg::check_lifetimes`] the bands
/// hold poison, checked as each phase begins, so a kernel writing past a buffer's end is named
/// with the buffer and the phase ([`MemoryPlan::guard_bands`]) instead of corrupting the next
/// buffer. 64 KiB: more than a row of the widest activation (224 x 64 channels x 2 bytes =
/// 28 KiB), the likeliest overrun of a tile past an image's last row.
pub const GUARD_BYTES: usize = 64 << 10;
// Every buffer's offset is a sum of sizes rounded up to ALIGN, so a view of it is aligned as
// Tensor::view requires.
const _: () = assert!(ALIGN.is_multiple_of(crate::tensor::VIEW_ALIGN));

/// A phase of a training step: the launches of one layer's pass, which read and write a
/// fixed set of buffers. In step order: `Input`, `Feature(0..)`, `Fc(0..3)`, `Loss`,
/// `FcBwd(2..=0)`, `FeatureBwd(..=0)`. A forward pass alone runs a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Normalising the uploaded images.
    Input,
    /// Feature layer `i`: conv (+ bias + ReLU), LRN or pool.
    Feature(usize),
    /// Classifier layer `j` (+ ReLU and dropout for the hidden ones).
    Fc(usize),
    /// Softmax cross-entropy and the logit gradient.
    Loss,
    /// Classifier layer `j`'s weight and data gradients, then (j > 0) the dropout and ReLU
    /// backward of the hidden layer below.
    FcBwd(usize),
    /// Feature layer `i`'s backward: ReLU backward where its gradient arrives unmasked, wgrad
    /// and dgrad (not for the first layer), or the LRN / pool backward.
    FeatureBwd(usize),
}

/// What a buffer of the arena holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The normalised input batch.
    Input,
    /// Feature layer `i`'s output.
    Act(usize),
    /// The gradient w.r.t. feature layer `i`'s output.
    DAct(usize),
    /// Layer `i`'s output gradient after `relu_bwd`, where it arrives unmasked: a conv's
    /// pre-activation gradient (below a 1x1 conv), or a pool's gradient masked at its output
    /// (the last pool, below the first FC layer).
    DPre(usize),
    /// Pool `i`'s argmaxes, a byte an output element: its backward pass reads them instead of
    /// its input, which thus dies in the forward pass.
    PoolArg(usize),
    /// Hidden FC layer `j`'s ReLU output.
    Hidden(usize),
    /// Hidden FC layer `j`'s dropout output (with dropout on): the next layer's input.
    Dropped(usize),
    /// The logits, `[batch, classes]` fp16; kept live to the end of the step, so that
    /// [`crate::model::Vgg::logits`] stays valid after it.
    Logits,
    /// The gradient w.r.t. the logits, `[batch, classes]` fp16.
    DLogits,
    /// The gradient w.r.t. the input of FC layer `j + 1` (hidden layer `j`'s last output).
    DNext(usize),
    /// The gradient w.r.t. hidden layer `j`'s ReLU output, after dropout backward.
    DHidden(usize),
    /// The gradient at hidden layer `j`'s pre-activation.
    DPreFc(usize),
    /// Scratch of the phase at this timeline index.
    Workspace(usize),
}

/// What a group of bytes is for: the [`Breakdown`] sum a buffer of the arena counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// The input, feature outputs, pool argmaxes, FC activations and logits
    /// ([`Breakdown::activations`]).
    Activations,
    /// Every gradient w.r.t. an activation ([`Breakdown::activation_grads`]).
    ActivationGrads,
    /// A phase's scratch ([`Breakdown::workspace_max`] counts the largest).
    Workspace,
}

impl Role {
    /// The category this role's bytes count in.
    pub fn category(self) -> Category {
        match self {
            Role::Input | Role::Act(_) | Role::PoolArg(_) | Role::Hidden(_) | Role::Dropped(_) | Role::Logits => {
                Category::Activations
            }
            Role::Workspace(_) => Category::Workspace,
            _ => Category::ActivationGrads,
        }
    }
}

/// One buffer of the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// What it holds.
    pub role: Role,
    /// Its tensor's shape.
    pub shape: Vec<usize>,
    /// Its tensor's element size, in bytes.
    pub elem: usize,
    /// Bytes it occupies: the tensor's, rounded up to [`ALIGN`] (at least `ALIGN`).
    pub bytes: usize,
    /// Its byte offset in the arena, a multiple of [`ALIGN`].
    pub offset: usize,
    /// The timeline index of the first phase that writes it.
    pub first: usize,
    /// The timeline index of the last phase that uses it, reading or writing (the step's last
    /// for [`Role::Logits`]).
    pub last: usize,
}

impl Buffer {
    /// Live at timeline index `t`.
    pub fn live_at(&self, t: usize) -> bool {
        self.first <= t && t <= self.last
    }
    /// Live in some common phase with `o`.
    pub fn overlaps_in_time(&self, o: &Buffer) -> bool {
        self.first <= o.last && o.first <= self.last
    }
    /// Shares some byte with `o`.
    pub fn overlaps_in_memory(&self, o: &Buffer) -> bool {
        self.offset < o.offset + o.bytes && o.offset < self.offset + self.bytes
    }
}

/// How buffers are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Buffers whose lifetimes do not overlap share bytes: greedy by size, each buffer at the
    /// lowest offset clear of the placed buffers it is live with.
    Lifetimes,
    /// Every buffer its own bytes, the phases' workspaces one region sized by the largest,
    /// each followed by a guard band of [`GUARD_BYTES`]: the layout before the plan, kept to
    /// measure against, as the reference that the lifetime tests compare bit for bit
    /// ([`crate::model::Vgg::relayout`]), and to catch writes past a buffer's end.
    Separate,
}

/// Bytes by what they hold. The arena's categories are the sums of their buffers before
/// sharing; `arena` is what they take shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// The fp32 master weights of every parameter tensor.
    pub masters: usize,
    /// Their fp32 momentum.
    pub momentum: usize,
    /// Their fp32 gradients.
    pub grads: usize,
    /// Their fp16 copies, which the kernels read.
    pub fp16: usize,
    /// Loss buffers, the loss scaler's flag, the SGD descriptor table.
    pub small: usize,
    /// The normalised input, the feature outputs, the pools' argmaxes and the FC activations.
    pub activations: usize,
    /// Every activation gradient.
    pub activation_grads: usize,
    /// The largest phase's workspace.
    pub workspace_max: usize,
    /// The arena as placed.
    pub arena: usize,
    /// The arena's lower bound: the most bytes live in one phase.
    pub peak_live: usize,
}

impl Breakdown {
    /// Everything outside the arena.
    pub fn fixed(&self) -> usize {
        self.masters + self.momentum + self.grads + self.fp16 + self.small
    }
    /// What the model allocates.
    pub fn total(&self) -> usize {
        self.fixed() + self.arena
    }
}

/// The memory of a VGG training step: the timeline, the arena's buffers and the bytes outside it.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    sharing: Sharing,
    timeline: Vec<Phase>,
    buffers: Vec<Buffer>,
    arena: usize,
    fixed: Breakdown,
}

/// A 3x3 conv feature layer as the model runs it at batch `n`: Auto (Winograd for channel
/// counts in multiples of 8, the implicit GEMM for the 3-channel input), Direct for other
/// counts that width multipliers give.
pub(crate) fn conv3x3(f: &Feature, n: usize) -> Result<Conv3x3> {
    conv3x3_plan(ConvProblem::new(n, f.h, f.w, f.c_in, f.c_out))
}

/// The plan a model runs a 3x3 conv of `p` with (at any image size: dense evaluation's too).
pub(crate) fn conv3x3_plan(p: ConvProblem) -> Result<Conv3x3> {
    let tc = (p.c.is_multiple_of(8) && p.k.is_multiple_of(8)) || p.c < 8;
    Conv3x3::new(p, if tc { ConvAlgo::Auto } else { ConvAlgo::Direct })
}

/// The three FC layers at batch `n`.
pub(crate) fn classifier(cfg: &VggConfig, n: usize) -> [Linear; 3] {
    cfg.classifier().map(|(i, o)| Linear::new(n, i, o))
}

/// Per feature layer: its gradient arrives unmasked, so a conv or pool runs `relu_bwd` at its
/// output (into a [`Role::DPre`] buffer). The dgrad of a 3x3 conv masks its output with its
/// input's ReLU; a 1x1 conv's dgrad and the first FC layer's do not. An LRN passes the
/// masking through (its input gradient is dy times a factor plus a term proportional to its
/// input); so does a pool, which masks itself when it has to: a window whose max is 0 holds
/// only zeros (its ReLUs are all off), and a positive max routes the gradient to a positive
/// element, so masking at the pool's output is exact, on a quarter of the elements.
pub(crate) fn unmasked(feats: &[Feature]) -> Vec<bool> {
    let mut out = vec![false; feats.len()];
    let mut masked = false;
    for i in (0..feats.len()).rev() {
        out[i] = !masked;
        masked = match feats[i].kind {
            FeatureKind::Conv3x3 | FeatureKind::Pool => true,
            FeatureKind::Conv1x1 => false,
            FeatureKind::Lrn => masked,
        };
    }
    out
}

/// Layer `f` runs `relu_bwd` at its output in the backward pass.
fn relu_at_output(f: &Feature, unmasked: bool) -> bool {
    unmasked && f.kind != FeatureKind::Lrn
}

/// The step's phases with what each reads and writes, built in step order.
#[derive(Default)]
struct Uses {
    timeline: Vec<Phase>,
    reads: Vec<Vec<Role>>,
    writes: Vec<Vec<Role>>,
    shapes: Vec<(Role, Vec<usize>, usize)>,
}

impl Uses {
    fn phase(&mut self, p: Phase, reads: &[Role], writes: &[Role], ws_bytes: usize) {
        let t = self.timeline.len();
        self.timeline.push(p);
        self.reads.push(reads.to_vec());
        self.writes.push([writes, &[Role::Workspace(t)]].concat());
        self.shapes.push((Role::Workspace(t), vec![ws_bytes], 1));
    }
    fn shape(&mut self, r: Role, shape: &[usize]) {
        self.shapes.push((r, shape.to_vec(), 2));
    }
}

impl MemoryPlan {
    /// The plan of `cfg` at `batch` images a step, its 3x3 conv layers planned by the Auto
    /// rules (as [`crate::model::Vgg::new`] plans them).
    pub fn new(cfg: &VggConfig, batch: usize, sharing: Sharing) -> Result<Self> {
        Self::with_convs(cfg, batch, sharing, &[])
    }

    /// As [`MemoryPlan::new`], with `convs[i]` (where given) the plan of feature layer `i`, a
    /// 3x3 conv: its workspaces follow that plan's algorithms (a tuned model's).
    pub fn with_convs(cfg: &VggConfig, batch: usize, sharing: Sharing, convs: &[Option<Conv3x3>]) -> Result<Self> {
        cfg.validate()?;
        ensure_shape!(batch >= 1, "VGG batch must be at least 1");
        let n = batch;
        let feats = cfg.features();
        let last = feats.len() - 1;
        let drop = cfg.dropout > 0.0;
        let unmasked = unmasked(&feats);
        let fcs = classifier(cfg, n);
        let mut u = Uses::default();
        u.shape(Role::Input, &[n, cfg.input, cfg.input, 3]);
        for (i, f) in feats.iter().enumerate() {
            let (oh, ow) = f.out_hw();
            let shape = [n, oh, ow, f.c_out];
            u.shape(Role::Act(i), &shape);
            u.shape(Role::DAct(i), &shape);
            if relu_at_output(f, unmasked[i]) {
                u.shape(Role::DPre(i), &shape);
            }
            if f.kind == FeatureKind::Pool {
                u.shapes.push((Role::PoolArg(i), shape.to_vec(), 1));
            }
        }
        for j in 0..2 {
            for r in [Role::Hidden(j), Role::Dropped(j), Role::DNext(j), Role::DHidden(j), Role::DPreFc(j)] {
                u.shape(r, &[n, cfg.fc]);
            }
        }
        u.shape(Role::Logits, &[n, cfg.classes]);
        u.shape(Role::DLogits, &[n, cfg.classes]);

        let input = |i: usize| if i == 0 { Role::Input } else { Role::Act(i - 1) };
        // Workspace of a feature layer's forward phase, or of its backward phase (wgrad, and
        // dgrad but for the first layer).
        let ws = |i: usize, f: &Feature, bwd: bool, dgrad: bool| -> Result<usize> {
            let pick =
                |fwd: usize, wgrad: usize, dg: usize| if !bwd { fwd } else { wgrad.max(if dgrad { dg } else { 0 }) };
            Ok(match f.kind {
                FeatureKind::Conv3x3 => {
                    let c = match convs.get(i).copied().flatten() {
                        Some(c) => c,
                        None => conv3x3(f, n)?,
                    };
                    let w = |p| c.workspace_bytes(p);
                    pick(w(ConvPass::Fprop), w(ConvPass::Wgrad), w(ConvPass::Dgrad))
                }
                FeatureKind::Conv1x1 => {
                    let l = Linear::conv1x1(n, f.h, f.w, f.c_in, f.c_out);
                    let w = |p| l.workspace_bytes(p);
                    pick(w(Pass::Fwd), w(Pass::BwdWeight), w(Pass::BwdData))
                }
                FeatureKind::Lrn | FeatureKind::Pool => 0,
            })
        };
        u.phase(Phase::Input, &[], &[Role::Input], 0);
        for (i, f) in feats.iter().enumerate() {
            let writes: &[Role] =
                if f.kind == FeatureKind::Pool { &[Role::Act(i), Role::PoolArg(i)] } else { &[Role::Act(i)] };
            u.phase(Phase::Feature(i), &[input(i)], writes, ws(i, f, false, false)?);
        }
        // What FC layer j reads (in training: dropout's output).
        let fc_in = |j: usize| match j {
            0 => Role::Act(last),
            _ if drop => Role::Dropped(j - 1),
            _ => Role::Hidden(j - 1),
        };
        for (j, l) in fcs.iter().enumerate() {
            let writes = match j {
                2 => vec![Role::Logits],
                _ if drop => vec![Role::Hidden(j), Role::Dropped(j)],
                _ => vec![Role::Hidden(j)],
            };
            u.phase(Phase::Fc(j), &[fc_in(j)], &writes, l.workspace_bytes(Pass::Fwd));
        }
        u.phase(Phase::Loss, &[Role::Logits], &[Role::DLogits], 0);
        for (j, l) in fcs.iter().enumerate().rev() {
            let dy = if j == 2 { Role::DLogits } else { Role::DPreFc(j) };
            let mut reads = vec![fc_in(j), dy];
            let mut writes = vec![];
            if j == 0 {
                writes.push(Role::DAct(last));
            } else {
                let h = j - 1;
                reads.push(Role::Hidden(h));
                writes.extend([Role::DNext(h), Role::DPreFc(h)]);
                if drop {
                    writes.push(Role::DHidden(h));
                }
            }
            let wsb = l.workspace_bytes(Pass::BwdWeight).max(l.workspace_bytes(Pass::BwdData));
            u.phase(Phase::FcBwd(j), &reads, &writes, wsb);
        }
        for (i, f) in feats.iter().enumerate().rev() {
            // A pool reads its argmaxes, not its input.
            let x = if f.kind == FeatureKind::Pool { Role::PoolArg(i) } else { input(i) };
            let mut reads = vec![x, Role::DAct(i)];
            let mut writes = vec![];
            if relu_at_output(f, unmasked[i]) {
                reads.push(Role::Act(i));
                writes.push(Role::DPre(i));
            }
            if i > 0 {
                writes.push(Role::DAct(i - 1));
            }
            u.phase(Phase::FeatureBwd(i), &reads, &writes, ws(i, f, true, i > 0)?);
        }

        let end = u.timeline.len() - 1;
        let mut buffers = vec![];
        for (role, shape, elem) in &u.shapes {
            let first = (0..=end).find(|&t| u.writes[t].contains(role));
            let Some(first) = first else { continue };
            let used = |t: &usize| u.reads[*t].contains(role) || u.writes[*t].contains(role);
            let mut last = (0..=end).rev().find(used).unwrap_or(first);
            if *role == Role::Logits {
                // [`crate::model::Vgg::logits`] stays valid after a step.
                last = end;
            }
            debug_assert!((0..first).all(|t| !u.reads[t].contains(role)), "{role:?} read before written");
            let tensor = shape.iter().product::<usize>() * elem;
            let bytes = tensor.next_multiple_of(ALIGN).max(ALIGN);
            buffers.push(Buffer { role: *role, shape: shape.clone(), elem: *elem, bytes, offset: 0, first, last });
        }
        let arena = place(&mut buffers, sharing);

        let lens: Vec<usize> = cfg.param_shapes().iter().map(|(_, s)| s.iter().product()).collect();
        let count: usize = lens.iter().sum();
        let fixed = Breakdown {
            masters: 4 * count,
            momentum: 4 * count,
            grads: 4 * count,
            fp16: 2 * count,
            // The training steps' loss status and the evaluations' (`Vgg::evaluate`).
            small: 2 * XentBuffers::device_bytes(n)
                + LossScaler::DEVICE_BYTES
                + StepVars::DEVICE_BYTES
                + SgdPlan::table_bytes(&lens),
            ..Default::default()
        };
        Ok(Self { sharing, timeline: u.timeline, buffers, arena, fixed })
    }

    /// How the buffers were placed.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }
    /// The phases of a training step, in order.
    pub fn timeline(&self) -> &[Phase] {
        &self.timeline
    }
    /// The timeline index of `p`.
    pub fn index(&self, p: Phase) -> Result<usize> {
        self.timeline.iter().position(|&q| q == p).ok_or_else(|| Error::Shape(format!("no phase {p:?} in this plan")))
    }
    /// The arena's buffers, each with its place and lifetime. A buffer no phase writes (such
    /// as a dropout output with dropout off) is not listed.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }
    /// The buffer of role `r`, if the plan has one.
    pub fn buffer(&self, r: Role) -> Option<&Buffer> {
        self.buffers.iter().find(|b| b.role == r)
    }
    /// Bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena
    }
    /// Every byte the model allocates: the parameters with their state, the small buffers,
    /// the arena.
    pub fn total(&self) -> usize {
        self.fixed.fixed() + self.arena
    }

    /// The most bytes of buffers live in one phase: no placement can make the arena smaller.
    pub fn peak_live(&self) -> usize {
        (0..self.timeline.len())
            .map(|t| self.buffers.iter().filter(|b| b.live_at(t)).map(|b| b.bytes).sum::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Where the bytes go: the fixed buffers, the arena's categories before sharing, the
    /// largest workspace, the arena and its lower bound.
    pub fn breakdown(&self) -> Breakdown {
        let sum = |c: Category| self.buffers.iter().filter(|b| b.role.category() == c).map(|b| b.bytes).sum();
        let ws = self.buffers.iter().filter(|b| b.role.category() == Category::Workspace);
        Breakdown {
            activations: sum(Category::Activations),
            activation_grads: sum(Category::ActivationGrads),
            workspace_max: ws.map(|b| b.bytes).max().unwrap_or(0),
            arena: self.arena,
            peak_live: self.peak_live(),
            ..self.fixed
        }
    }

    /// The byte ranges of the arena that no buffer live at timeline index `t` holds, merged,
    /// in order.
    pub fn free_ranges(&self, t: usize) -> Vec<(usize, usize)> {
        let mut live: Vec<(usize, usize)> =
            self.buffers.iter().filter(|b| b.live_at(t)).map(|b| (b.offset, b.offset + b.bytes)).collect();
        live.sort_unstable();
        let mut out = vec![];
        let mut at = 0;
        for (s, e) in live {
            if s > at {
                out.push((at, s - at));
            }
            at = at.max(e);
        }
        if at < self.arena {
            out.push((at, self.arena - at));
        }
        out
    }

    /// A [`Sharing::Separate`] plan's guard bands (none for shared plans): each buffer's bytes
    /// past its tensor (from the next 16-byte boundary: the rounding to [`ALIGN`]) and the
    /// [`GUARD_BYTES`] behind it, and the band behind the workspace region, as (offset, bytes,
    /// the buffer before it: None for the workspace region).
    pub fn guard_bands(&self) -> Vec<(usize, usize, Option<Role>)> {
        if self.sharing != Sharing::Separate {
            return vec![];
        }
        let ws = workspace_region(&self.buffers).map(|w| (w, GUARD_BYTES, None));
        let bands = self.buffers.iter().filter(|b| b.role.category() != Category::Workspace).map(|b| {
            // From the first 16-byte boundary (where tensor views may start) at or past its end.
            let end = (b.offset + b.elem * b.shape.iter().product::<usize>()).next_multiple_of(16);
            (end, b.offset + b.bytes + GUARD_BYTES - end, Some(b.role))
        });
        ws.into_iter().chain(bands).collect()
    }

    /// Whether the plan has a buffer for `r`.
    pub fn has(&self, r: Role) -> bool {
        self.buffer(r).is_some()
    }

    /// `r`'s tensor in `arena` (an allocation of [`MemoryPlan::arena_bytes`] bytes).
    pub fn view<T: DType>(&self, arena: &Arc<Tensor<u8>>, r: Role) -> Result<Tensor<T>> {
        let b = self.buffer(r).ok_or_else(|| Error::Shape(format!("no buffer {r:?} in this plan")))?;
        ensure_shape!(arena.bytes() == self.arena, "arena of {} bytes, the plan's has {}", arena.bytes(), self.arena);
        ensure_shape!(b.elem == std::mem::size_of::<T>(), "{r:?} holds {}-byte elements, not {}", b.elem, T::NAME);
        Tensor::view(arena, b.offset, &b.shape)
    }
}

/// Bytes of a separate plan's workspace region, at offset 0: the largest phase's workspace.
fn workspace_region(buffers: &[Buffer]) -> Option<usize> {
    buffers.iter().filter(|b| b.role.category() == Category::Workspace).map(|b| b.bytes).max()
}

/// Places `buffers` by `sharing`; returns the arena's size.
fn place(buffers: &mut [Buffer], sharing: Sharing) -> usize {
    match sharing {
        Sharing::Separate => {
            let mut at = workspace_region(buffers).map_or(0, |w| w + GUARD_BYTES);
            for b in buffers.iter_mut() {
                if b.role.category() == Category::Workspace {
                    b.offset = 0;
                } else {
                    b.offset = at;
                    at += b.bytes + GUARD_BYTES;
                }
            }
            at
        }
        Sharing::Lifetimes => {
            let mut order: Vec<usize> = (0..buffers.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), buffers[i].first));
            let mut placed: Vec<usize> = vec![];
            let mut arena = 0;
            for i in order {
                let mut clash: Vec<(usize, usize)> = placed
                    .iter()
                    .map(|&j| &buffers[j])
                    .filter(|o| o.overlaps_in_time(&buffers[i]))
                    .map(|o| (o.offset, o.offset + o.bytes))
                    .collect();
                clash.sort_unstable();
                let mut at = 0;
                for (s, e) in clash {
                    if at + buffers[i].bytes <= s {
                        break;
                    }
                    at = at.max(e);
                }
                buffers[i].offset = at;
                arena = arena.max(at + buffers[i].bytes);
                placed.push(i);
            }
            arena
        }
    }
}

/// `vgg info --model X --batch N`: where a training step's bytes go, shared and separate.
pub fn report(cfg: &VggConfig, batch: usize) -> Result<String> {
    use std::fmt::Write;
    let shared = MemoryPlan::new(cfg, batch, Sharing::Lifetimes)?.breakdown();
    let separate = MemoryPlan::new(cfg, batch, Sharing::Separate)?.breakdown();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let mut s = String::new();
    let _ = writeln!(s, "device memory of a training step at batch {batch}, GiB (separate: every buffer its own");
    let _ = writeln!(s, "bytes; shared: buffers share bytes by lifetime, the layout the model allocates)");
    let _ = writeln!(s, "{:<46} {:>10} {:>10}", "", "separate", "shared");
    let rows = [
        ("parameters: fp32 masters", separate.masters, shared.masters),
        ("  fp32 momentum", separate.momentum, shared.momentum),
        ("  fp32 gradients", separate.grads, shared.grads),
        ("  fp16 copies", separate.fp16, shared.fp16),
        ("loss buffers, scaler flag, SGD table", separate.small, shared.small),
        ("arena: activations, pool argmaxes", separate.activations, shared.activations),
        ("  activation gradients", separate.activation_grads, shared.activation_grads),
        ("  workspace (largest phase)", separate.workspace_max, shared.workspace_max),
        ("  arena as placed", separate.arena, shared.arena),
        ("  most bytes live in one phase (lower bound)", separate.peak_live, shared.peak_live),
        ("total", separate.total(), shared.total()),
    ];
    for (what, a, b) in rows {
        let _ = writeln!(s, "{what:<46} {:>10.3} {:>10.3}", gib(a), gib(b));
    }
    Ok(s)
}
