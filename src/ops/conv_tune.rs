//! Picks each pass's variant of a planned 3x3 convolution by timing it on the device, as
//! cuDNN's benchmark mode does. fprop and dgrad: F(2x2) with flat tiles, F(2x2) with region
//! windows, F(4x4), and, where the device has wgmma and C is a multiple of 8, the wgmma
//! implicit GEMM with its halo tile, its flat one, and its tall, swizzled and TMA-fed halo tiles;
//! wgrad: the mma.sync implicit GEMM or the wgmma one (halo, flat, and the halo tile fed by the
//! TMA engine with a producer warpgroup). Which is faster depends
//! on the layer (region tiling saves L2 traffic but idles slots on small images; F(4x4) does
//! 44% fewer products but a costlier input transform; wgmma does all the products at the
//! tensor cores' full rate), and on the card, so no fixed rule chooses as well as a measurement
//! there.
//!
//! Timed inputs are zeros: the kernels' work and memory traffic do not depend on the values.
//! Before it is timed, each candidate runs once on one image of random data and is compared
//! with the base plan ([`AGREEMENT`]), so a fast but wrong kernel is never chosen.
//! On the emu device the times are the emulator's, which says nothing about a GPU; the choice
//! is still made by the same rule, which is what the tests check.

use super::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use crate::{Device, Error, Result, Tensor};
use half::f16;

/// One candidate for a pass: the Winograd ones and wgmma (fprop, dgrad), ImplicitGemm and
/// wgmma (wgrad).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinoVariant {
    /// [`ConvAlgo::Winograd2x2`] with [`WinoTiling::Flat`] (fprop, dgrad).
    F2Flat,
    /// [`ConvAlgo::Winograd2x2`] with [`WinoTiling::Region`] (fprop, dgrad).
    F2Region,
    /// [`ConvAlgo::Winograd4x4`] (fprop, dgrad; flat tiling only).
    F4,
    /// [`ConvAlgo::Wgmma`] (any pass) with its halo kernels where they fit.
    Wgmma,
    /// [`ConvAlgo::Wgmma`]'s flat kernels ([`WinoTiling::Flat`]).
    WgmmaFlat,
    /// [`ConvAlgo::Wgmma`]'s 512 x 64 halo tile ([`WinoTiling::Tall`]; fprop, dgrad).
    WgmmaTall,
    /// [`ConvAlgo::Wgmma`]'s halo tile in the 128-byte swizzle ([`WinoTiling::Swizzled`]; fprop,
    /// dgrad).
    WgmmaSwizzled,
    /// [`ConvAlgo::Wgmma`]'s halo tile fed by the TMA engine ([`WinoTiling::Tma`]; fprop, dgrad).
    WgmmaTma,
    /// [`ConvAlgo::Wgmma`]'s 512 x 64 halo tile fed by the TMA engine ([`WinoTiling::TmaTall`];
    /// fprop, dgrad).
    WgmmaTmaTall,
    /// [`ConvAlgo::Wgmma`]'s TMA halo tiles with a producer warp ([`WinoTiling::TmaWs`]; any
    /// pass: fprop and dgrad's 256 x N tile, the wgrad's 128 x 3 Cb one).
    WgmmaTmaWs,
    /// [`ConvAlgo::Wgmma`]'s warp-specialised TMA halo tile in clusters of 2 sharing the filter
    /// boxes by multicast ([`WinoTiling::TmaMc`]; fprop, dgrad; devices with clusters), and for
    /// K > 128 the TMA wgrad in clusters of 2 sharing the X boxes (below that its wgrad is
    /// Region's, and the variant is fprop and dgrad's only, as Tma is).
    WgmmaTmaMc,
    /// [`ConvAlgo::Wgmma`]'s 16 x 32 pixel items fed by the TMA engine ([`WinoTiling::Tma2d`];
    /// fprop, dgrad).
    WgmmaTma2d,
    /// [`ConvAlgo::ImplicitGemm`] (wgrad).
    Igemm,
}

impl WinoVariant {
    /// The Winograd variants (every Winograd pass is timed under each).
    pub const ALL: [WinoVariant; 3] = [WinoVariant::F2Flat, WinoVariant::F2Region, WinoVariant::F4];

    /// The variant as reports name it: `winograd2x2/flat`, `winograd2x2/region`,
    /// `winograd4x4`, `wgmma`, `wgmma/flat`, `wgmma/tall`, `wgmma/sw128`, `wgmma/tma`,
    /// `wgmma/tall-tma`, `wgmma/tma-ws`, `wgmma/tma-mc`, `wgmma/tma-2d` or `igemm`.
    pub fn name(self) -> &'static str {
        match self {
            WinoVariant::F2Flat => "winograd2x2/flat",
            WinoVariant::F2Region => "winograd2x2/region",
            WinoVariant::F4 => "winograd4x4",
            WinoVariant::Wgmma => "wgmma",
            WinoVariant::WgmmaFlat => "wgmma/flat",
            WinoVariant::WgmmaTall => "wgmma/tall",
            WinoVariant::WgmmaSwizzled => "wgmma/sw128",
            WinoVariant::WgmmaTma => "wgmma/tma",
            WinoVariant::WgmmaTmaTall => "wgmma/tall-tma",
            WinoVariant::WgmmaTmaWs => "wgmma/tma-ws",
            WinoVariant::WgmmaTmaMc => "wgmma/tma-mc",
            WinoVariant::WgmmaTma2d => "wgmma/tma-2d",
            WinoVariant::Igemm => "igemm",
        }
    }

    /// The plan tiling this variant needs: F(2x2)'s, and wgmma's (Region: its halo kernels
    /// where they fit); None where the variant ignores it.
    pub fn tiling(self) -> Option<WinoTiling> {
        match self {
            WinoVariant::F2Flat | WinoVariant::WgmmaFlat => Some(WinoTiling::Flat),
            WinoVariant::F2Region | WinoVariant::Wgmma => Some(WinoTiling::Region),
            WinoVariant::WgmmaTall => Some(WinoTiling::Tall),
            WinoVariant::WgmmaSwizzled => Some(WinoTiling::Swizzled),
            WinoVariant::WgmmaTma => Some(WinoTiling::Tma),
            WinoVariant::WgmmaTmaTall => Some(WinoTiling::TmaTall),
            WinoVariant::WgmmaTmaWs => Some(WinoTiling::TmaWs),
            WinoVariant::WgmmaTmaMc => Some(WinoTiling::TmaMc),
            WinoVariant::WgmmaTma2d => Some(WinoTiling::Tma2d),
            _ => None,
        }
    }

    /// The wgmma halo variants for fprop and dgrad (Tall, Swizzled, Tma, TmaTall, TmaMc, Tma2d), beside
    /// which the wgrad runs its halo kernel as under Region, unless the tiling has a wgrad tile of its
    /// own for the layer (TmaMc for K > 128, Tma2d for K <= 64: [`WinoVariant::fprop_dgrad_only`]).
    const FPROP_DGRAD_ONLY: [WinoVariant; 6] = [
        WinoVariant::WgmmaTall,
        WinoVariant::WgmmaSwizzled,
        WinoVariant::WgmmaTma,
        WinoVariant::WgmmaTmaTall,
        WinoVariant::WgmmaTmaMc,
        WinoVariant::WgmmaTma2d,
    ];

    /// Whether this variant changes only `conv`'s fprop and dgrad: one of
    /// [`WinoVariant::FPROP_DGRAD_ONLY`] whose tiling runs the wgmma wgrad as Region does there.
    fn fprop_dgrad_only(self, conv: Conv3x3) -> bool {
        let own_wgrad = |t| {
            let c = conv.with_pass_algo(ConvPass::Wgrad, ConvAlgo::Wgmma);
            c.is_ok_and(|c| c.with_wino_tiling(t).runs_tilings_own_tile(ConvPass::Wgrad))
        };
        Self::FPROP_DGRAD_ONLY.contains(&self) && !self.tiling().is_some_and(own_wgrad)
    }

    fn algo(self) -> ConvAlgo {
        match self {
            WinoVariant::F2Flat | WinoVariant::F2Region => ConvAlgo::Winograd2x2,
            WinoVariant::F4 => ConvAlgo::Winograd4x4,
            WinoVariant::Wgmma
            | WinoVariant::WgmmaFlat
            | WinoVariant::WgmmaTall
            | WinoVariant::WgmmaSwizzled
            | WinoVariant::WgmmaTma
            | WinoVariant::WgmmaTmaTall
            | WinoVariant::WgmmaTmaWs
            | WinoVariant::WgmmaTmaMc
            | WinoVariant::WgmmaTma2d => ConvAlgo::Wgmma,
            WinoVariant::Igemm => ConvAlgo::ImplicitGemm,
        }
    }

    /// `conv` with `pass` running this variant. The tiling is the plan's, shared by the passes:
    /// the variant sets its own, except that the halo wgrad keeps the tiling of a fprop- and
    /// dgrad-only variant (Tall, Swizzled, Tma, TmaTall, TmaMc, Tma2d: [`WinoVariant::fprop_dgrad_only`]),
    /// under which it runs as under Region.
    fn apply(self, conv: Conv3x3, pass: ConvPass) -> Result<Conv3x3> {
        let c = conv.with_pass_algo(pass, self.algo())?;
        let keeps = pass == ConvPass::Wgrad
            && self == WinoVariant::Wgmma
            && Self::FPROP_DGRAD_ONLY
                .iter()
                .any(|&v| v.tiling() == Some(conv.wino_tiling()) && v.fprop_dgrad_only(conv));
        Ok(self.tiling().filter(|_| !keeps).map_or(c, |t| c.with_wino_tiling(t)))
    }
}

/// The measured time of one pass under one variant.
#[derive(Clone, Debug)]
pub struct PassTiming {
    /// The pass timed.
    pub pass: ConvPass,
    /// The candidate it ran.
    pub variant: WinoVariant,
    /// Fastest of the samples, per call, in milliseconds (device events; wall clock on emu).
    pub ms: f64,
    /// Relative L2 distance of its output from `base`'s on one image of random data; above the
    /// tolerance (or not finite) the variant is not chosen.
    pub rel_l2: f64,
    /// Why the variant cannot run on this device (a tile larger than its shared memory a
    /// block); `ms` and `rel_l2` are then infinite, and it is not chosen.
    pub unsupported: Option<String>,
}

/// The tolerance [`tune`] holds candidates to: F(4x4) and F(2x2) differ by ~2e-3 relative L2
/// (their fp16 transforms), a kernel computing the wrong thing by ~1. A variant nobody has run on
/// this device (wgmma's, before a GPU run) cannot then be chosen for being fast and wrong.
pub const AGREEMENT: f64 = 2e-2;

/// The tuned plan and every measurement behind it.
#[derive(Clone, Debug)]
pub struct Tuned {
    /// `base` with each tuned pass running its chosen variant.
    pub conv: Conv3x3,
    /// Per pass and variant (empty when `base` has no pass to tune).
    pub timings: Vec<PassTiming>,
    /// The chosen variant of fprop, dgrad and wgrad (None: not tuned).
    pub chosen: [Option<WinoVariant>; 3],
}

const PASSES: [ConvPass; 3] = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad];

/// The calls a timing sample that training and the benches tune with: 5 on a GPU (a single
/// short kernel is too close to the events' resolution), 1 on emu (its times say nothing, and
/// the path is what its runs check).
pub fn reps(dev: &Device) -> usize {
    if dev.is_emu() {
        1
    } else {
        5
    }
}

/// The variants `pass` of `base` can run on `dev`: every Winograd variant for a Winograd fprop
/// or dgrad, ImplicitGemm for an ImplicitGemm wgrad, and wgmma beside them where `dev` has it
/// and the plan allows it (its flat kernel too, where the halo one runs instead, for fprop and
/// dgrad its tall, swizzled and TMA halo tiles where they fit, the multicast one where `dev` also
/// has clusters, and for every pass the TMA tiles with a producer warp where they fit). Empty: the
/// pass is not tuned.
fn candidates(dev: &Device, base: Conv3x3, pass: ConvPass) -> Vec<WinoVariant> {
    let mut v = match base.algo(pass) {
        a if a.is_winograd() && pass != ConvPass::Wgrad => WinoVariant::ALL.to_vec(),
        ConvAlgo::ImplicitGemm if pass == ConvPass::Wgrad => vec![WinoVariant::Igemm],
        _ => return vec![],
    };
    if let (true, Ok(halo)) = (dev.has_wgmma(), WinoVariant::Wgmma.apply(base, pass)) {
        v.push(WinoVariant::Wgmma);
        let flat = WinoVariant::WgmmaFlat.apply(base, pass);
        if flat.is_ok_and(|f| f.label(pass) != halo.label(pass)) {
            v.push(WinoVariant::WgmmaFlat);
        }
        for variant in WinoVariant::FPROP_DGRAD_ONLY.into_iter().chain([WinoVariant::WgmmaTmaWs]) {
            let c = variant.apply(base, pass);
            let times = (pass != ConvPass::Wgrad || !variant.fprop_dgrad_only(base))
                && (variant != WinoVariant::WgmmaTmaMc || dev.has_clusters());
            if times && c.is_ok_and(|c| c.runs_tilings_own_tile(pass)) {
                v.push(variant);
            }
        }
    }
    if v.len() < 2 {
        v.clear(); // nothing to choose between
    }
    v
}

/// Times every candidate of each tunable pass of `base` (`reps` calls a sample, 3 samples
/// after one warm-up call) and returns `base` with the fastest combination: the smallest sum of
/// the three passes' times, among the combinations one plan can hold (the passes share the
/// plan's tiling, so F(2x2) or wgmma flat for one and F(2x2) region or wgmma halo for another is
/// out; the halo wgrad goes with wgmma's tall, swizzled, TMA or tall TMA fprop / dgrad, its kernel the
/// same under their tilings, and the producer-warp TMA tiles go together) and among the candidates
/// whose output agrees with `base`'s within [`AGREEMENT`] (checked on one image of the layer). Other
/// passes, and a pass none of whose candidates agree, keep `base`'s algorithm.
pub fn tune(dev: &Device, base: Conv3x3, reps: usize) -> Result<Tuned> {
    tune_within(dev, base, reps, AGREEMENT)
}

/// One pass's output under `conv` on the inputs (y for fprop, dx for dgrad, dw then db for
/// wgrad), as f32.
fn pass_output(conv: &Conv3x3, pass: ConvPass, [x, w, b, dy]: &[Tensor<f16>; 4]) -> Result<Vec<f32>> {
    let (p, dev) = (conv.problem(), x.device().clone());
    let mut ws = Tensor::<u8>::zeros(&dev, &[conv.workspace_bytes(pass).max(1)])?;
    Ok(match pass {
        ConvPass::Fprop => {
            let mut y = Tensor::<f16>::zeros(&dev, &[p.n, p.h, p.w, p.k])?;
            conv.fprop(x, w, Some(b), Epilogue::Bias, &mut y, &mut ws)?;
            y.to_f32()?
        }
        ConvPass::Dgrad => {
            let mut dx = Tensor::<f16>::zeros(&dev, &[p.n, p.h, p.w, p.c])?;
            conv.dgrad(dy, w, None, &mut dx, &mut ws)?;
            dx.to_f32()?
        }
        ConvPass::Wgrad => {
            let mut dw = Tensor::<f32>::zeros(&dev, &[p.k, 3, 3, p.c])?;
            let mut db = Tensor::<f32>::zeros(&dev, &[p.k])?;
            conv.wgrad(x, dy, &mut dw, Some(&mut db), &mut ws)?;
            [dw.to_host()?, db.to_host()?].concat()
        }
    })
}

/// Relative L2 distance of each plan's pass output from `base`'s, on one image of the layer
/// (the same plans at N = 1) with random data in [-1, 1); `Err(why)` for a plan the device
/// cannot run (`Error::Unsupported`). Any other error, and base's own, is returned.
fn agreement(
    dev: &Device,
    base: Conv3x3,
    plans: &[(ConvPass, WinoVariant, Conv3x3)],
) -> Result<Vec<std::result::Result<f64, String>>> {
    let p = base.problem();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    };
    let inputs = [
        Tensor::from_f32(dev, &[1, p.h, p.w, p.c], &random(p.h * p.w * p.c))?,
        Tensor::from_f32(dev, &[p.k, 3, 3, p.c], &random(9 * p.k * p.c))?,
        Tensor::from_f32(dev, &[p.k], &random(p.k))?,
        Tensor::from_f32(dev, &[1, p.h, p.w, p.k], &random(p.h * p.w * p.k))?,
    ];
    let mut want: [Option<Vec<f32>>; 3] = Default::default();
    plans
        .iter()
        .map(|&(pass, _, conv)| {
            let reference = match &mut want[pass as usize] {
                Some(v) => v,
                slot => slot.insert(pass_output(&base.with_batch(1)?, pass, &inputs)?),
            };
            let got = match pass_output(&conv.with_batch(1)?, pass, &inputs) {
                Err(Error::Unsupported(why)) => return Ok(Err(why)),
                got => got?,
            };
            let rel = crate::reference::compare(&got, reference).rel_l2;
            Ok(Ok(if rel.is_finite() { rel } else { f64::INFINITY }))
        })
        .collect()
}

/// [`tune`] with the agreement tolerance given (relative L2; 0 keeps only candidates whose
/// output is bit-identical to `base`'s).
pub fn tune_within(dev: &Device, base: Conv3x3, reps: usize, tolerance: f64) -> Result<Tuned> {
    let cands = PASSES.map(|pass| candidates(dev, base, pass));
    if cands.iter().all(Vec::is_empty) {
        return Ok(Tuned { conv: base, timings: vec![], chosen: [None; 3] });
    }
    let p = base.problem();
    let x = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.c])?;
    let w = Tensor::<f16>::zeros(dev, &[p.k, 3, 3, p.c])?;
    let b = Tensor::<f16>::zeros(dev, &[p.k])?;
    let mut y = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.k])?;
    let mut dx = Tensor::<f16>::zeros(dev, &[p.n, p.h, p.w, p.c])?;
    let mut dw = Tensor::<f32>::zeros(dev, &[p.k, 3, 3, p.c])?;
    let mut db = Tensor::<f32>::zeros(dev, &[p.k])?;
    let mut plans = vec![];
    for (pass, vs) in PASSES.into_iter().zip(&cands) {
        for &v in vs {
            plans.push((pass, v, v.apply(base, pass)?));
        }
    }
    let rels = agreement(dev, base, &plans)?;
    let ws_len = plans.iter().map(|(pass, _, c)| c.workspace_bytes(*pass)).max().unwrap_or(0);
    let mut ws = Tensor::<u8>::zeros(dev, &[ws_len.max(1)])?;
    let mut timings = vec![];
    for ((pass, variant, conv), rel_l2) in plans.into_iter().zip(rels) {
        let rel_l2 = match rel_l2 {
            Ok(r) => r,
            Err(why) => {
                let (ms, rel_l2, unsupported) = (f64::INFINITY, f64::INFINITY, Some(why));
                timings.push(PassTiming { pass, variant, ms, rel_l2, unsupported });
                continue;
            }
        };
        let mut call = |ws: &mut Tensor<u8>| match pass {
            ConvPass::Fprop => conv.fprop_prepared(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, ws),
            ConvPass::Dgrad => conv.dgrad_prepared(&y, &w, Some(&x), &mut dx, ws),
            ConvPass::Wgrad => conv.wgrad(&x, &y, &mut dw, Some(&mut db), ws),
        };
        match pass {
            ConvPass::Fprop => conv.prepare_filter(&w, &mut ws)?,
            ConvPass::Dgrad => conv.prepare_filter_dgrad(&w, &mut ws)?,
            ConvPass::Wgrad => {}
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
        timings.push(PassTiming { pass, variant, ms: best, rel_l2, unsupported: None });
    }
    let time = |pass: ConvPass, v: WinoVariant| {
        timings.iter().find(|t| t.pass == pass && t.variant == v).map_or(0.0, |t| t.ms)
    };
    // A pass's choices: its candidates that agree with base (None, base's own algorithm, when
    // none does or it has none).
    let pick = |i: usize| -> Vec<Option<WinoVariant>> {
        let ok: Vec<_> =
            timings.iter().filter(|t| t.pass == PASSES[i] && t.rel_l2 <= tolerance).map(|t| Some(t.variant)).collect();
        if ok.is_empty() {
            vec![None]
        } else {
            ok
        }
    };
    let mut best: Option<(f64, [Option<WinoVariant>; 3])> = None;
    // One tiling a plan: the passes that need one must need the same, except that the halo
    // wgrad runs under Tall, Swizzled, Tma, TmaTall, TmaMc and Tma2d as under Region (they change only the
    // fprop and dgrad tiles; TmaWs changes the wgrad's too, TmaMc where K > 128 and Tma2d for K <= 64).
    let one_tiling = |[f, d, g]: [Option<WinoVariant>; 3]| {
        let halo_fd = [f, d].into_iter().flatten().any(|v| v.fprop_dgrad_only(base));
        let g = if halo_fd && g == Some(WinoVariant::Wgmma) { None } else { g };
        let mut t = [f, d, g].into_iter().flatten().filter_map(WinoVariant::tiling);
        t.next().is_none_or(|first| t.all(|x| x == first))
    };
    for f in pick(0) {
        for d in pick(1) {
            for g in pick(2) {
                if !one_tiling([f, d, g]) {
                    continue;
                }
                let cost: f64 = PASSES.into_iter().zip([f, d, g]).map(|(q, v)| v.map_or(0.0, |v| time(q, v))).sum();
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, [f, d, g]));
                }
            }
        }
    }
    let chosen = best.map_or([None; 3], |(_, c)| c);
    let mut conv = base;
    for (pass, v) in PASSES.into_iter().zip(chosen) {
        if let Some(v) = v {
            conv = v.apply(conv, pass)?;
        }
    }
    Ok(Tuned { conv, timings, chosen })
}
