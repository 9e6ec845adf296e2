//! How a [`Vgg`] plans its 3x3 conv layers: the Auto rules, one Winograd variant everywhere, or
//! each layer's variants timed on the device ([`crate::ops::conv_tune`]); and the plans as a
//! checkpoint records them ([`ConvPlan`]), so that a resumed run computes as the run it continues.

use super::{Op, Vgg};
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass, WinoTiling};
use crate::ops::conv_tune::{self, PassTiming};
use crate::problem::ConvProblem;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The conv-plan policy of a model (`vgg train --conv-algo`, `vgg bench train --conv-algo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvChoice {
    /// [`ConvAlgo::Auto`]'s rules (F(2x2), tiling by the share of idle slots).
    #[default]
    Auto,
    /// F(2x2) for every Winograd pass.
    Winograd2x2,
    /// F(4x4) for every Winograd pass.
    Winograd4x4,
    /// Each layer's passes timed on the device under every variant they can run (Winograd
    /// and, where the device has it, wgmma; wgrad: the two implicit GEMMs), the fastest kept
    /// ([`crate::ops::conv_tune::tune`]).
    Tune,
    /// The direct twin for every pass: slow, but its kernels fit any GPU's shared memory
    /// (the Winograd main loops need sm_90's 227 KB a block).
    Direct,
    /// [`ConvAlgo::Wgmma`]'s implicit GEMMs for all three passes of every layer Auto runs by
    /// Winograd (C and K multiples of 8); Auto's plan elsewhere. Needs wgmma (compute
    /// capability 9.0, or emu).
    Wgmma,
    /// Auto's plans with, on a device that has wgmma, the variants run 5 measured fastest on the
    /// H200 at batch 64 (bench/results/2026-11-30-h200.md) as a fixed rule: wgmma fprop and
    /// dgrad on every layer Auto runs by Winograd (all of VGG-16's but conv1_1), and the wgmma
    /// wgrad where 128 <= C <= 256 (conv2_2, conv3_x, conv4_1; the mma.sync implicit GEMM won
    /// at C = 64 and 512). Tune's speed without its timing runs, and the same plans every run.
    /// Auto's plans where the device has no wgmma.
    Hopper,
}

/// The input channels between which [`ConvChoice::Hopper`]'s wgrad runs on wgmma.
const HOPPER_WGRAD_C: std::ops::RangeInclusive<usize> = 128..=256;

impl ConvChoice {
    /// The names [`ConvChoice::parse`] accepts, for help and error messages.
    pub const NAMES: &'static str = "auto, winograd2x2, winograd4x4, tune, direct, wgmma, hopper";

    /// The choice of one of [`ConvChoice::NAMES`] (lower case); `Error::Invalid` for any other.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => ConvChoice::Auto,
            "winograd2x2" => ConvChoice::Winograd2x2,
            "winograd4x4" => ConvChoice::Winograd4x4,
            "tune" => ConvChoice::Tune,
            "direct" => ConvChoice::Direct,
            "wgmma" => ConvChoice::Wgmma,
            "hopper" => ConvChoice::Hopper,
            _ => return Err(Error::Invalid(format!("unknown conv algorithm `{s}` (expected {})", Self::NAMES))),
        })
    }
}

/// What one 3x3 conv layer runs after [`Vgg::set_conv_choice`].
#[derive(Clone, Debug)]
pub struct ConvLayerChoice {
    /// Index of the layer in the config's feature list.
    pub feature: usize,
    /// The layer's plan.
    pub conv: Conv3x3,
    /// The measurements behind a tuned choice (empty otherwise, and for a layer whose shape an
    /// earlier layer already tuned).
    pub timings: Vec<PassTiming>,
}

impl ConvLayerChoice {
    /// The algorithm the forward pass runs.
    pub fn fprop(&self) -> ConvAlgo {
        self.conv.algo(ConvPass::Fprop)
    }
    /// The algorithm the data-gradient pass runs.
    pub fn dgrad(&self) -> ConvAlgo {
        self.conv.algo(ConvPass::Dgrad)
    }
    /// `problem fprop / dgrad`, as [`Conv3x3::label`] names them.
    pub fn summary(&self) -> String {
        let c = &self.conv;
        format!("{} {} / {}", c.problem(), c.label(ConvPass::Fprop), c.label(ConvPass::Dgrad))
    }

    /// The tuner's measurements, `problem pass variant ms, ...` (None without them).
    pub fn timings_line(&self) -> Option<String> {
        if self.timings.is_empty() {
            return None;
        }
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|t| {
                if let Some(why) = &t.unsupported {
                    return format!("{:?} {} does not run here ({why})", t.pass, t.variant.name());
                }
                let off = if t.rel_l2 <= conv_tune::AGREEMENT {
                    String::new()
                } else {
                    format!(" (disagrees: rel L2 {:.1e}, not chosen)", t.rel_l2)
                };
                format!("{:?} {} {:.3} ms{off}", t.pass, t.variant.name(), t.ms)
            })
            .collect();
        Some(format!("{}: {}", self.conv.problem(), t.join(", ")))
    }
}

/// One conv layer's plan as a checkpoint records it: which algorithm each pass runs and the
/// tiling. The problem is the layer's own, so a plan only names choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvPlan {
    /// Index of the layer in the config's feature list.
    pub feature: usize,
    /// fprop, dgrad, wgrad, as [`Conv3x3::algo`] names them.
    pub algos: [ConvAlgo; 3],
    /// The plan's tiling ([`Conv3x3::wino_tiling`]).
    pub tiling: WinoTiling,
}

impl Vgg {
    /// The plan of every 3x3 conv layer, indexed by feature layer (None for other layers).
    pub fn conv_plans(&self) -> Vec<Option<Conv3x3>> {
        self.ops.iter().map(|op| if let Op::Conv3(c) = op { Some(*c) } else { None }).collect()
    }

    /// Every 3x3 conv layer's plan, in the form [`Vgg::set_conv_plans`] takes back.
    pub fn conv_plan_records(&self) -> Vec<ConvPlan> {
        let plans = self.conv_plans().into_iter().enumerate();
        plans
            .filter_map(|(feature, c)| {
                let c = c?;
                let algos = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|p| c.algo(p));
                Some(ConvPlan { feature, algos, tiling: c.wino_tiling() })
            })
            .collect()
    }

    /// Plans every 3x3 conv layer as `plans` record it (one plan per conv layer, e.g. a tuned
    /// run's, from its checkpoint), re-placing the buffers where a workspace changes. A plan
    /// for a layer that is not a 3x3 conv, a conv layer without one, a combination no plan of
    /// the layer's shape can run, wgmma on a device without it, or a tile larger than the
    /// device's shared memory a block is an `Error::Shape` that names the layer, and the model
    /// keeps its plans.
    pub fn set_conv_plans(&mut self, plans: &[ConvPlan]) -> Result<Vec<ConvLayerChoice>> {
        let mut out = vec![];
        for (i, op) in self.ops.iter().enumerate() {
            let Op::Conv3(old) = op else { continue };
            let mut mine = plans.iter().filter(|p| p.feature == i);
            let (Some(plan), None) = (mine.next(), mine.next()) else {
                return Err(Error::Shape(format!("conv plans: feature layer {i} needs exactly one plan")));
            };
            let conv = Conv3x3::from_algos(old.problem(), plan.algos, plan.tiling)
                .map_err(|e| Error::Shape(format!("conv plans: feature layer {i}: {e}")))?;
            if plan.algos.contains(&ConvAlgo::Wgmma) && !self.dev.has_wgmma() {
                return Err(Error::Shape(format!(
                    "conv plans: feature layer {i} runs Wgmma, which {} lacks",
                    self.dev.name()
                )));
            }
            let limit = self.dev.max_shared_per_block();
            if let Some(q) =
                [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].into_iter().find(|&q| conv.shared_bytes(q) > limit)
            {
                return Err(Error::Shape(format!(
                    "conv plans: feature layer {i}'s {q:?} needs {} bytes of shared memory a block; {} allows {limit}",
                    conv.shared_bytes(q),
                    self.dev.name()
                )));
            }
            out.push(ConvLayerChoice { feature: i, conv, timings: vec![] });
        }
        if let Some(p) = plans.iter().find(|p| !matches!(self.ops.get(p.feature), Some(Op::Conv3(_)))) {
            return Err(Error::Shape(format!("conv plans: feature layer {} is not a 3x3 conv", p.feature)));
        }
        self.install(&out)?;
        Ok(out)
    }

    /// Puts each layer's plan in place, re-placing the buffers when a workspace changes (between
    /// steps: activations are not kept).
    fn install(&mut self, layers: &[ConvLayerChoice]) -> Result<()> {
        self.graphs.clear(); // a captured step names the old plans' kernels and workspaces
        let workspaces =
            |c: &Conv3x3| [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| c.workspace_bytes(q));
        let mut resize = false;
        for l in layers {
            if let Op::Conv3(old) = self.ops[l.feature] {
                resize |= workspaces(&l.conv) != workspaces(&old);
                self.ops[l.feature] = Op::Conv3(l.conv);
            }
        }
        if resize {
            self.relayout(self.memory.sharing())?;
        }
        Ok(())
    }

    /// Re-plans every 3x3 conv layer by `choice` and, when a layer's workspace changes,
    /// re-places the buffers (call it between steps: activations are not kept). `reps` calls a
    /// timing sample when tuning. Returns each conv layer's algorithms.
    pub fn set_conv_choice(&mut self, choice: ConvChoice, reps: usize) -> Result<Vec<ConvLayerChoice>> {
        let feats = self.cfg.features();
        let mut tuned: HashMap<ConvProblem, Conv3x3> = HashMap::new();
        let mut out = vec![];
        for (i, f) in feats.iter().enumerate() {
            let Op::Conv3(_) = self.ops[i] else { continue };
            let base = super::memory::conv3x3(f, self.batch)?.fitted_to(&self.dev);
            let p = base.problem();
            let mut timings = vec![];
            let conv = match choice {
                ConvChoice::Auto => base,
                ConvChoice::Direct => Conv3x3::new(p, ConvAlgo::Direct)?,
                ConvChoice::Wgmma if base.algo(ConvPass::Fprop).is_winograd() => Conv3x3::new(p, ConvAlgo::Wgmma)?,
                ConvChoice::Wgmma => base,
                ConvChoice::Hopper if self.dev.has_wgmma() && base.algo(ConvPass::Fprop).is_winograd() => {
                    let c = base.with_pass_algo(ConvPass::Fprop, ConvAlgo::Wgmma)?;
                    let c = c.with_pass_algo(ConvPass::Dgrad, ConvAlgo::Wgmma)?;
                    if HOPPER_WGRAD_C.contains(&p.c) {
                        c.with_pass_algo(ConvPass::Wgrad, ConvAlgo::Wgmma)?
                    } else {
                        c
                    }
                }
                ConvChoice::Hopper => base,
                ConvChoice::Winograd2x2 | ConvChoice::Winograd4x4 => {
                    let algo =
                        if choice == ConvChoice::Winograd2x2 { ConvAlgo::Winograd2x2 } else { ConvAlgo::Winograd4x4 };
                    let mut c = base;
                    for pass in [ConvPass::Fprop, ConvPass::Dgrad] {
                        if c.algo(pass).is_winograd() {
                            c = c.with_pass_algo(pass, algo)?;
                        }
                    }
                    c
                }
                ConvChoice::Tune => match tuned.get(&p) {
                    Some(c) => *c,
                    None => {
                        let t = conv_tune::tune(&self.dev, base, reps)?;
                        tuned.insert(p, t.conv);
                        timings = t.timings;
                        t.conv
                    }
                },
            };
            out.push(ConvLayerChoice { feature: i, conv, timings });
        }
        self.install(&out)?;
        Ok(out)
    }
}
