//! Picks each Winograd pass's variant of a planned 3x3 convolution by timing it on the device,
//! as cuDNN's benchmark mode does: F(2x2) with flat tiles, F(2x2) with region windows, or
//! F(4x4). Which is faster depends on the layer (region tiling saves L2 traffic but idles slots
//! on small images; F(4x4) does 44% fewer products but a costlier input transform), and on the
//! card, so no fixed rule chooses as well as a measurement there.
//!
//! Inputs are zeros: the kernels' work and memory traffic do not depend on the values.
//! On the emu device the times are the emulator's, which says nothing about a GPU; the choice
//! is still made by the same rule, which is what the tests check.

use super::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use crate::{Device, Result, Tensor};
use half::f16;

/// One candidate for a Winograd pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinoVariant {
    F2Flat,
    F2Region,
    F4,
}

impl WinoVariant {
    pub const ALL: [WinoVariant; 3] = [WinoVariant::F2Flat, WinoVariant::F2Region, WinoVariant::F4];

    pub fn name(self) -> &'static str {
        match self {
            WinoVariant::F2Flat => "winograd2x2/flat",
            WinoVariant::F2Region => "winograd2x2/region",
            WinoVariant::F4 => "winograd4x4",
        }
    }

    /// The F(2x2) tiling this variant needs, if it is an F(2x2) one.
    fn tiling(self) -> Option<WinoTiling> {
        match self {
            WinoVariant::F2Flat => Some(WinoTiling::Flat),
            WinoVariant::F2Region => Some(WinoTiling::Region),
            WinoVariant::F4 => None,
        }
    }

    fn algo(self) -> ConvAlgo {
        if self == WinoVariant::F4 {
            ConvAlgo::Winograd4x4
        } else {
            ConvAlgo::Winograd2x2
        }
    }

    /// `conv` with `pass` running this variant (the tiling is the plan's, shared by both passes).
    fn apply(self, conv: Conv3x3, pass: ConvPass) -> Result<Conv3x3> {
        let c = conv.with_pass_algo(pass, self.algo())?;
        Ok(self.tiling().map_or(c, |t| c.with_wino_tiling(t)))
    }
}

/// The measured time of one pass under one variant.
#[derive(Clone, Copy, Debug)]
pub struct PassTiming {
    pub pass: ConvPass,
    pub variant: WinoVariant,
    /// Fastest of the samples, per call, in milliseconds (device events; wall clock on emu).
    pub ms: f64,
}

/// The tuned plan and every measurement behind it.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub conv: Conv3x3,
    /// Per pass and variant (empty when `base` has no Winograd pass).
    pub timings: Vec<PassTiming>,
    /// The chosen variant of fprop and dgrad (None: not a Winograd pass).
    pub chosen: [Option<WinoVariant>; 2],
}

/// Times every variant of each Winograd pass of `base` (`reps` calls a sample, 3 samples after
/// one warm-up call) and returns `base` with the fastest combination: the smallest sum of the
/// fprop and dgrad times, among the combinations one plan can hold (both passes' F(2x2)
/// variants share the plan's tiling, so F(2x2) flat for one and region for the other is out).
/// Non-Winograd passes keep `base`'s algorithm.
pub fn tune(dev: &Device, base: Conv3x3, reps: usize) -> Result<Tuned> {
    let passes: Vec<ConvPass> =
        [ConvPass::Fprop, ConvPass::Dgrad].into_iter().filter(|&p| base.algo(p).is_winograd()).collect();
    if passes.is_empty() {
        return Ok(Tuned { conv: base, timings: vec![], chosen: [None, None] });
    }
    let p = base.problem();
    let x = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.c])?;
    let w = Tensor::<f16>::zeros(dev, &[p.k, 3, 3, p.c])?;
    let b = Tensor::<f16>::zeros(dev, &[p.k])?;
    let mut y = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.k])?;
    let mut dx = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.c])?;
    let mut plans = vec![];
    for &pass in &passes {
        for v in WinoVariant::ALL {
            plans.push((pass, v, v.apply(base, pass)?));
        }
    }
    let ws_len = plans.iter().map(|(pass, _, c)| c.workspace_bytes(*pass)).max().unwrap_or(0);
    let mut ws = Tensor::<u8>::zeros(dev, &[ws_len.max(1)])?;
    let mut timings = vec![];
    for (pass, variant, conv) in plans {
        let mut call = |ws: &mut Tensor<u8>| match pass {
            ConvPass::Fprop => conv.fprop_prepared(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, ws),
            _ => conv.dgrad_prepared(&y, &w, Some(&x), &mut dx, ws),
        };
        match pass {
            ConvPass::Fprop => conv.prepare_filter(&w, &mut ws)?,
            _ => conv.prepare_filter_dgrad(&w, &mut ws)?,
        }
        call(&mut ws)?;
        dev.synchronize()?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = dev.start_timer()?;
            for _ in 0..reps.max(1) {
                call(&mut ws)?;
            }
            best = best.min(t.stop_ms()? / reps.max(1) as f64);
        }
        timings.push(PassTiming { pass, variant, ms: best });
    }
    let time = |pass: ConvPass, v: WinoVariant| {
        timings.iter().find(|t| t.pass == pass && t.variant == v).map_or(0.0, |t| t.ms)
    };
    let pick = |pass: ConvPass| -> Vec<Option<WinoVariant>> {
        if passes.contains(&pass) {
            WinoVariant::ALL.map(Some).to_vec()
        } else {
            vec![None]
        }
    };
    let mut best: Option<(f64, [Option<WinoVariant>; 2])> = None;
    for f in pick(ConvPass::Fprop) {
        for d in pick(ConvPass::Dgrad) {
            let (tf, td) = (f.and_then(WinoVariant::tiling), d.and_then(WinoVariant::tiling));
            if matches!((tf, td), (Some(a), Some(b)) if a != b) {
                continue;
            }
            let cost = f.map_or(0.0, |v| time(ConvPass::Fprop, v)) + d.map_or(0.0, |v| time(ConvPass::Dgrad, v));
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, [f, d]));
            }
        }
    }
    let chosen = best.map_or([None, None], |(_, c)| c);
    let mut conv = base;
    for (pass, v) in [ConvPass::Fprop, ConvPass::Dgrad].into_iter().zip(chosen) {
        if let Some(v) = v {
            conv = v.apply(conv, pass)?;
        }
    }
    Ok(Tuned { conv, timings, chosen })
}
