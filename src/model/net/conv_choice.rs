//! How a [`Vgg`] plans its 3x3 conv layers: the Auto rules, one Winograd variant everywhere, or
//! each layer's variants timed on the device ([`crate::ops::conv_tune`]).

use super::{Op, Vgg};
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass};
use crate::ops::conv_tune::{self, PassTiming};
use crate::problem::ConvProblem;
use crate::{Error, Result};
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
    /// Each layer's fprop and dgrad variant timed on the device, the fastest kept.
    Tune,
    /// The direct twin for every pass: slow, but its kernels fit any GPU's shared memory
    /// (the Winograd main loops need sm_90's 227 KB a block).
    Direct,
}

impl ConvChoice {
    pub const NAMES: &'static str = "auto, winograd2x2, winograd4x4, tune, direct";

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => ConvChoice::Auto,
            "winograd2x2" => ConvChoice::Winograd2x2,
            "winograd4x4" => ConvChoice::Winograd4x4,
            "tune" => ConvChoice::Tune,
            "direct" => ConvChoice::Direct,
            _ => return Err(Error::Shape(format!("unknown conv algorithm `{s}` (expected {})", Self::NAMES))),
        })
    }
}

/// What one 3x3 conv layer runs after [`Vgg::set_conv_choice`].
#[derive(Clone, Debug)]
pub struct ConvLayerChoice {
    /// Index of the layer in the config's feature list.
    pub feature: usize,
    pub problem: ConvProblem,
    pub fprop: ConvAlgo,
    pub dgrad: ConvAlgo,
    /// F(2x2) region width in tiles (0: flat tiles), where a pass runs F(2x2).
    pub region_width: usize,
    /// The measurements behind a tuned choice (empty otherwise, and for a layer whose shape an
    /// earlier layer already tuned).
    pub timings: Vec<PassTiming>,
}

impl ConvLayerChoice {
    /// `problem fprop / dgrad` algorithms, with `/rN` where F(2x2) runs region tiles of width N.
    pub fn summary(&self) -> String {
        let name = |a: ConvAlgo| match a {
            ConvAlgo::Winograd2x2 if self.region_width > 0 => format!("wino2x2/r{}", self.region_width),
            ConvAlgo::Winograd2x2 => "wino2x2".to_string(),
            ConvAlgo::Winograd4x4 => "wino4x4".to_string(),
            ConvAlgo::ImplicitGemm => "igemm".to_string(),
            ConvAlgo::Direct => "direct".to_string(),
            ConvAlgo::Auto => "auto".to_string(),
        };
        format!("{} {} / {}", self.problem, name(self.fprop), name(self.dgrad))
    }
}

impl Vgg {
    /// The plan of every 3x3 conv layer, indexed by feature layer (None for other layers).
    pub fn conv_plans(&self) -> Vec<Option<Conv3x3>> {
        self.ops.iter().map(|op| if let Op::Conv3(c) = op { Some(*c) } else { None }).collect()
    }

    /// Re-plans every 3x3 conv layer by `choice` and re-places the buffers for the new
    /// workspaces (call it between steps: activations are not kept). `reps` calls a timing
    /// sample when tuning. Returns each conv layer's algorithms.
    pub fn set_conv_choice(&mut self, choice: ConvChoice, reps: usize) -> Result<Vec<ConvLayerChoice>> {
        let feats = self.cfg.features();
        let mut tuned: HashMap<(usize, usize, usize, usize, usize), Conv3x3> = HashMap::new();
        let mut out = vec![];
        for (i, f) in feats.iter().enumerate() {
            let Op::Conv3(_) = self.ops[i] else { continue };
            let base = super::memory::conv3x3(f, self.batch)?;
            let p = base.problem();
            let wino = |c: &Conv3x3, pass| matches!(c.algo(pass), ConvAlgo::Winograd2x2 | ConvAlgo::Winograd4x4);
            let mut timings = vec![];
            let conv = match choice {
                ConvChoice::Auto => base,
                ConvChoice::Direct => Conv3x3::new(p, ConvAlgo::Direct)?,
                ConvChoice::Winograd2x2 | ConvChoice::Winograd4x4 => {
                    let algo =
                        if choice == ConvChoice::Winograd2x2 { ConvAlgo::Winograd2x2 } else { ConvAlgo::Winograd4x4 };
                    let mut c = base;
                    for pass in [ConvPass::Fprop, ConvPass::Dgrad] {
                        if wino(&c, pass) {
                            c = c.with_pass_algo(pass, algo)?;
                        }
                    }
                    c
                }
                ConvChoice::Tune => match tuned.get(&(p.n, p.h, p.w, p.c, p.k)) {
                    Some(c) => *c,
                    None => {
                        let t = conv_tune::tune(&self.dev, base, reps)?;
                        tuned.insert((p.n, p.h, p.w, p.c, p.k), t.conv);
                        timings = t.timings;
                        t.conv
                    }
                },
            };
            self.ops[i] = Op::Conv3(conv);
            let f2 = [ConvPass::Fprop, ConvPass::Dgrad].iter().any(|&q| conv.algo(q) == ConvAlgo::Winograd2x2);
            out.push(ConvLayerChoice {
                feature: i,
                problem: p,
                fprop: conv.algo(ConvPass::Fprop),
                dgrad: conv.algo(ConvPass::Dgrad),
                region_width: if f2 { conv.wino_region_width() } else { 0 },
                timings,
            });
        }
        self.relayout(self.memory.sharing())?;
        Ok(out)
    }
}
