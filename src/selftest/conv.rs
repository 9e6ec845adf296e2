//! Checks of the 3x3 convolutions (src/ops/conv.rs) against the f64 reference
//! (src/reference/conv.rs), computed from the same fp16-rounded inputs, on the shared problem
//! list: the edge cases, then VGG-16 reduced for the emulator (`problem::conv_problems`), then
//! one 48x48 image whose wgrad reduction splits into several pixel chunks, and C not a multiple
//! of 8 (5, 12, and 3 with several wgrad chunks) beside the list's C = 3 rows.
//! The Winograd checks run `ConvAlgo::Winograd2x2` and `Winograd4x4`, whose fprop takes C not a multiple of 8 by
//! zero-padding it to one (`pad_channels_f16 + ...` rows; dgrad of such C is Direct's); the
//! tensor-core wgrad check runs `ConvAlgo::Auto`, which pads C likewise for wgrad; the
//! first-layer check runs `ConvAlgo::ImplicitGemm` fprop and dgrad on every problem with C <= 8; the
//! wgmma check, where the device has wgmma, runs `ConvAlgo::Wgmma`'s three passes with the
//! halo tiles and with the flat ones.
//! On a GPU also VGG-16 reduced at batch 2 with up to 128 channels and the real conv5_1
//! (14x14, 512 -> 512) at batch 1: the host reference stays near 1e10 multiply-adds in all.
//!
//! Two kinds of data for every pass, and a third for wgrad:
//! - random normals: fprop and dgrad (fp16 outputs) within relative L2 3e-3 and max
//!   |got - ref| <= 2e-2 max |ref| (the reference unrounded); wgrad's fp32 sums within fp32
//!   rounding of their length ([`wgrad_randn`]), far below what any fp16 rounding gives;
//! - small integers in [-2, 2] (not on the GPU's extra problems): bit-exact against the
//!   reference rounded to the output type. Direct and the tensor-core wgrad are exact because
//!   every product and partial sum is an integer below 2^24; Winograd F(2x2) too, because its
//!   transforms only add and halve: V is an integer, U a multiple of 1/4 (exact in fp16 at these
//!   sizes), M and Y multiples of 1/4 far below 2^22 in fp32, and Y is rounded to fp16 once;
//! - wgrad on the problems with several pixel chunks (wgrad_split, c3_split): integers in
//!   [0, 8], whose partial sums pass 2048 (the [-2, 2] ones, cancelling, stay in the tens and
//!   hundreds, where fp16 is exact too), so that a partial or a sum rounded through fp16
//!   anywhere breaks bit-exactness.
//!
//! Every output is poisoned (NaN) before the launch.

use super::{randn_f16, small_ints, Bound, CheckRow, GuardedWorkspace};
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use crate::problem::{self, ConvProblem, NamedProblem};
use crate::reference::{self as r, compare, compare_tol};
use crate::{Device, Result, Tensor};

const RANDN: Bound = Bound::Rel { rel_l2: 3e-3, max_rel: 2e-2 };
/// wgrad's dw and db on random normals, summed over `pixels` (N x H x W) products: fp16 inputs
/// whose products are exact in fp32, summed in fp32 (mma accumulators, then the chunks in
/// order), so only fp32 rounding separates them from the f64 reference. Rounded to nearest,
/// that error grows like u sqrt(pixels) (u = 2^-24). Measured on emu over every problem below
/// and every wgrad algorithm (Direct, the mma.sync implicit GEMM, wgmma halo and flat; 124
/// rows): relative L2 <= 0.30 u sqrt(pixels) (7.0e-7 on 1600 pixels, Direct c3_split), max
/// |err| <= 0.86 u sqrt(pixels) max |ref| (1.45e-7 on 8 pixels); bounds ~4x: 1.2 and 3.5
/// u sqrt(pixels), 3e-6 and 8e-6 at the emulator's largest 2304. An fp16 rounding of the
/// partial sums is ~1e-4. On the H200 (run 4's selftest log, bench/results/2026-11-28-h200-
/// run4/selftest-cuda.json; the mma.sync implicit GEMM and Direct, up to 6272 pixels) relative
/// L2 measured <= 0.35 u sqrt(pixels); the max bound and the wgmma wgrads are not measured on
/// a GPU yet: a GPU row over this bound wants measuring there before loosening.
fn wgrad_randn(pixels: usize) -> Bound {
    let u_sqrt = (pixels as f64).sqrt() / (1u64 << 24) as f64;
    Bound::Rel { rel_l2: 1.2 * u_sqrt, max_rel: 3.5 * u_sqrt }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Randn,
    Ints,
    /// wgrad only: x and dy integers in [0, 8], so that every partial sum of a chunk grows past
    /// 2048 (products average 16, and a chunk holds >= 256 pixels), where fp16 would round it,
    /// while the whole sum stays exact in fp32 (at most 64 per pixel, far below 2^24).
    Sums,
}

/// `(problem, kinds of data)` for `dev`.
fn problems(dev: &Device) -> Vec<(NamedProblem, &'static [Kind])> {
    let mut base = problem::conv_problems();
    // Enough pixels that both wgrad paths split the reduction into several chunks.
    base.push(NamedProblem { name: "wgrad_split", problem: ConvProblem::new(1, 48, 48, 8, 16) });
    // C padded to 8 (ragged tiles), to 16 (a whole Winograd chunk; 144 wgrad columns: a ragged
    // column block), and C = 3 -> 64 (conv1_1's channels) with several wgrad chunks.
    base.push(NamedProblem { name: "c5_pad", problem: ConvProblem::new(1, 6, 7, 5, 16) });
    base.push(NamedProblem { name: "c12_pad", problem: ConvProblem::new(2, 5, 6, 12, 24) });
    base.push(NamedProblem { name: "c3_split", problem: ConvProblem::new(1, 40, 40, 3, 64) });
    // K > 64: the 128-row tensor-core wgrad, with a ragged row block (136) and column block (144).
    base.push(NamedProblem { name: "k136_wgrad", problem: ConvProblem::new(1, 12, 11, 16, 136) });
    // C = 4, K = 72: two channel blocks of the first-layer implicit GEMM, the second ragged.
    base.push(NamedProblem { name: "c4_k72", problem: ConvProblem::new(1, 9, 10, 4, 72) });
    let sums = |np: &NamedProblem| ["wgrad_split", "c3_split"].contains(&np.name);
    let kinds = |np: &NamedProblem| {
        if sums(np) {
            &[Kind::Randn, Kind::Ints, Kind::Sums][..]
        } else {
            &[Kind::Randn, Kind::Ints][..]
        }
    };
    let mut v: Vec<_> = base.into_iter().map(|p| (kinds(&p), p)).map(|(k, p)| (p, k)).collect();
    if !dev.is_emu() {
        let mut big = problem::vgg16_layers_reduced(2, 4, 128);
        big.push(problem::vgg16_layers(1)[10]); // conv5_1: 14x14, 512 -> 512
        v.extend(big.into_iter().map(|p| (p, &[Kind::Randn][..])));
    }
    v
}

/// `algo` planned on `p`, if its `pass` resolves to `family` (Direct, or Winograd2x2 for the
/// tensor-core paths).
fn plan(p: ConvProblem, algo: ConvAlgo, family: ConvAlgo, pass: ConvPass) -> Option<Conv3x3> {
    Conv3x3::new(p, algo).ok().filter(|c| c.algo(pass) == family)
}

/// The kernel name of a row: `name`, after the channel padding when `pass` pads.
fn kname(conv: &Conv3x3, pass: ConvPass, name: &str) -> String {
    if conv.padded(pass) {
        format!("pad_channels_f16 (C {} -> {}) + {name}", conv.problem().c, conv.problem().c.next_multiple_of(8))
    } else {
        name.to_string()
    }
}

/// Inputs of all three passes: x, w, b, dy, and a ReLU mask (a forward output: >= 0, zeros).
struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    mask: Vec<f32>,
}

fn data(p: &ConvProblem, kind: Kind, seed: u64) -> Data {
    let gen = |len: usize, s: u64| match kind {
        Kind::Randn => randn_f16(len, seed * 8 + s),
        Kind::Ints => small_ints(len, 2, seed * 8 + s),
        Kind::Sums => small_ints(len, 4, seed * 8 + s).iter().map(|v| v + 4.0).collect(),
    };
    Data {
        x: gen(p.input_len(), 0),
        w: gen(p.filter_len(), 1),
        b: gen(p.k, 2),
        dy: gen(p.output_len(), 3),
        mask: r::relu_fwd(&randn_f16(p.input_len(), seed * 8 + 4)),
    }
}

fn label(np: &NamedProblem, kind: Kind) -> String {
    let data = match kind {
        Kind::Randn => "randn",
        Kind::Ints => "ints",
        Kind::Sums => "ints in [0, 8]",
    };
    format!("{} {} {data}", np.name, np.problem)
}

/// What a row's output is: an fp16 tensor (fprop, dgrad), or wgrad's fp32 sums over a number
/// of pixels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    F16,
    F32Sums { pixels: usize },
}

/// A row comparing `got` with `want`: on random normals the bound of the output (fp16 or
/// wgrad's fp32 sums), on integers exact against `want` rounded to fp16 (`Out::F16`) or as is.
fn row(kernel: String, np: &NamedProblem, kind: Kind, got: &[f32], want: &[f32], out: Out) -> CheckRow {
    let shape = label(np, kind);
    match kind {
        Kind::Randn => {
            let (bound, max_rel) = match out {
                Out::F16 => (RANDN, 2e-2),
                Out::F32Sums { pixels } => match wgrad_randn(pixels) {
                    b @ Bound::Rel { max_rel, .. } => (b, max_rel),
                    Bound::Exact => unreachable!("wgrad_randn is relative"),
                },
            };
            let max_ref = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            CheckRow::new(&kernel, shape, compare_tol(got, want, max_rel * max_ref, 0.0), bound)
        }
        Kind::Ints | Kind::Sums => {
            let want = if out == Out::F16 { r::f32_to_f16_round(want) } else { want.to_vec() };
            CheckRow::new(&kernel, shape, compare(got, &want), Bound::Exact)
        }
    }
}

/// fprop (randn: Bias, then BiasRelu against ReLU of that output; ints: None) and dgrad
/// (against the reference, then with the ReLU mask against the mask applied to that output)
/// of `algo` on every problem where the pass resolves to `family`.
fn fprop_dgrad(
    dev: &Device,
    algo: ConvAlgo,
    family: ConvAlgo,
    tiling: WinoTiling,
    names: [&str; 2],
) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, (np, kinds)) in problems(dev).iter().enumerate() {
        let p = np.problem;
        let do_fprop = plan(p, algo, family, ConvPass::Fprop).is_some();
        let do_dgrad = plan(p, algo, family, ConvPass::Dgrad).is_some();
        if !do_fprop && !do_dgrad {
            continue;
        }
        let conv = Conv3x3::new(p, algo)?.with_wino_tiling(tiling);
        let tiled = |name: &str, pass| match (family, conv.wino_region_width()) {
            (ConvAlgo::Winograd2x2, 0) => format!("{name} (flat)"),
            (ConvAlgo::Winograd2x2, rw) => format!("{name} (region rw={rw})"),
            // wgmma/128xN or wgmma/halo256xN: which of the two kernels ran.
            (ConvAlgo::Wgmma, _) => format!("{name} ({})", conv.label(pass)),
            _ => name.to_string(),
        };
        let fname = kname(&conv, ConvPass::Fprop, &tiled(names[0], ConvPass::Fprop));
        let dname = tiled(names[1], ConvPass::Dgrad);
        let mut fws = GuardedWorkspace::new(dev, conv.workspace_bytes(ConvPass::Fprop))?;
        let mut dws = GuardedWorkspace::new(dev, conv.workspace_bytes(ConvPass::Dgrad))?;
        for &kind in kinds.iter().filter(|&&k| k != Kind::Sums) {
            let d = data(&p, kind, 100 + i as u64);
            let x = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.c], &d.x)?;
            let w = Tensor::from_f32(dev, &[p.k, 3, 3, p.c], &d.w)?;
            let b = Tensor::from_f32(dev, &[p.k], &d.b)?;
            let mut y = Tensor::empty(dev, &[p.n, p.h, p.w, p.k])?;
            // The pass's accuracy is measured before the activation; the fused ReLU must then
            // equal ReLU of that output bit for bit (clipping leaves so few elements of a tiny
            // shape that a relative error over them measures nothing).
            if do_fprop && kind == Kind::Ints {
                y.poison()?;
                conv.fprop(&x, &w, None, Epilogue::None, &mut y, &mut fws.ws)?;
                fws.check(&fname)?;
                let want = r::conv3x3_fprop(&p, &d.x, &d.w, None, false);
                rows.push(row(format!("{fname} (None)"), np, kind, &y.to_f32()?, &want, Out::F16));
            } else if do_fprop {
                y.poison()?;
                conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut y, &mut fws.ws)?;
                fws.check(&fname)?;
                let pre = y.to_f32()?;
                let want = r::conv3x3_fprop(&p, &d.x, &d.w, Some(&d.b), false);
                rows.push(row(format!("{fname} (Bias)"), np, kind, &pre, &want, Out::F16));
                y.poison()?;
                conv.fprop(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, &mut fws.ws)?;
                fws.check(&fname)?;
                let cmp = compare(&y.to_f32()?, &r::relu_fwd(&pre));
                rows.push(CheckRow::new(
                    &format!("{fname} (BiasRelu) = relu(Bias)"),
                    label(np, kind),
                    cmp,
                    Bound::Exact,
                ));
            }

            if !do_dgrad {
                continue;
            }
            let dy = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.k], &d.dy)?;
            let mut dx = Tensor::empty(dev, &[p.n, p.h, p.w, p.c])?;
            dx.poison()?;
            conv.dgrad(&dy, &w, None, &mut dx, &mut dws.ws)?;
            dws.check(&dname)?;
            let plain = dx.to_f32()?;
            rows.push(row(dname.clone(), np, kind, &plain, &r::conv3x3_dgrad(&p, &d.dy, &d.w), Out::F16));
            // The fused mask must zero exactly where the mask is not > 0 and keep the rest.
            let mask = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.c], &d.mask)?;
            dx.poison()?;
            conv.dgrad(&dy, &w, Some(&mask), &mut dx, &mut dws.ws)?;
            dws.check(&dname)?;
            let cmp = compare(&dx.to_f32()?, &r::relu_bwd(&d.mask, &plain));
            rows.push(CheckRow::new(&format!("{dname} (relu mask)"), label(np, kind), cmp, Bound::Exact));
        }
    }
    Ok(rows)
}

/// wgrad (dw and db) of `algo` on every problem where wgrad resolves to `family`.
fn wgrad(dev: &Device, algo: ConvAlgo, family: ConvAlgo, tiling: WinoTiling) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, (np, kinds)) in problems(dev).iter().enumerate() {
        let p = np.problem;
        let Some(conv) = plan(p, algo, family, ConvPass::Wgrad) else { continue };
        let conv = conv.with_wino_tiling(tiling);
        // TmaMc's wgrad is its own only in clusters (K > 128); elsewhere the Auto rows' kernel.
        if tiling == WinoTiling::TmaMc && !conv.runs_tilings_own_tile(ConvPass::Wgrad) {
            continue;
        }
        let name = kname(&conv, ConvPass::Wgrad, conv.wgrad_kernel_name());
        let mut ws = GuardedWorkspace::new(dev, conv.workspace_bytes(ConvPass::Wgrad))?;
        for &kind in kinds.iter() {
            let d = data(&p, kind, 200 + i as u64);
            let x = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.c], &d.x)?;
            let dy = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.k], &d.dy)?;
            let mut dw = Tensor::<f32>::empty(dev, &[p.k, 3, 3, p.c])?;
            let mut db = Tensor::<f32>::empty(dev, &[p.k])?;
            dw.poison()?;
            db.poison()?;
            conv.wgrad(&x, &dy, &mut dw, Some(&mut db), &mut ws.ws)?;
            ws.check(&name)?;
            let (want_w, want_b) = r::conv3x3_wgrad(&p, &d.x, &d.dy);
            let out = Out::F32Sums { pixels: p.n * p.h * p.w };
            rows.push(row(format!("{name} dw"), np, kind, &dw.to_host()?, &want_w, out));
            rows.push(row(format!("{name} db"), np, kind, &db.to_host()?, &want_b, out));
        }
    }
    Ok(rows)
}

/// Direct fprop, dgrad and wgrad on every problem (the C = 3 first layer included).
pub fn direct(dev: &Device) -> Result<Vec<CheckRow>> {
    let d = ConvAlgo::Direct;
    let mut rows = fprop_dgrad(dev, d, d, WinoTiling::Auto, ["direct3x3_fprop_f16", "direct3x3_dgrad_f16"])?;
    rows.extend(wgrad(dev, d, d, WinoTiling::Auto)?);
    Ok(rows)
}

/// Winograd F(2x2, 3x3) fprop and dgrad (with the filter transform) where K % 8 == 0: dgrad
/// where also C % 8 == 0, fprop for any C (padded).
pub fn wino2x2(dev: &Device) -> Result<Vec<CheckRow>> {
    let w = ConvAlgo::Winograd2x2;
    let names = ["wino2x2_fprop_f16", "wino2x2_dgrad_f16"];
    let mut rows = fprop_dgrad(dev, w, w, WinoTiling::Flat, names)?;
    rows.extend(fprop_dgrad(dev, w, w, WinoTiling::Region, names)?);
    Ok(rows)
}

/// Winograd F(4x4, 3x3) fprop and dgrad, on the same problems as F(2x2) (flat tiles only).
pub fn wino4x4(dev: &Device) -> Result<Vec<CheckRow>> {
    let w = ConvAlgo::Winograd4x4;
    fprop_dgrad(dev, w, w, WinoTiling::Auto, ["wino4x4_fprop_f16", "wino4x4_dgrad_f16"])
}

/// The names of the wgmma fprop and dgrad rows.
const WGMMA_NAMES: [&str; 2] = ["igemm3x3_wgmma", "conv_rot180_f16 + igemm3x3_wgmma"];

/// The wgmma implicit GEMM's three passes (C and K multiples of 8), where the device has wgmma
/// (emu, compute capability 9.0).
pub fn wgmma(dev: &Device) -> Result<Vec<CheckRow>> {
    if !dev.has_wgmma() {
        return Ok(vec![]);
    }
    let (g, names) = (ConvAlgo::Wgmma, WGMMA_NAMES);
    // Auto: the halo kernels (every problem of the list fits them); Flat: the 128-pixel tiles;
    // Tall: the 512 x 64 halo tile where it fits (widths up to 125), else the 256 x N one;
    // Swizzled: the halo tiles with their operands in the 128-byte swizzle (the TMA-fed ones are
    // wgmma_tma's).
    let mut rows = fprop_dgrad(dev, g, g, WinoTiling::Auto, names)?;
    for tiling in [WinoTiling::Flat, WinoTiling::Tall, WinoTiling::Swizzled] {
        rows.extend(fprop_dgrad(dev, g, g, tiling, names)?);
    }
    rows.extend(wgrad(dev, g, g, WinoTiling::Auto)?);
    rows.extend(wgrad(dev, g, g, WinoTiling::Flat)?);
    Ok(rows)
}

/// The halo tiles fed by the TMA engine (Tma: 256 x N, TmaTall: 512 x 64, TmaWs: 256 x N with a
/// producer warp, TmaMc: that in clusters of 2 sharing the filters by multicast, where the device
/// has clusters, Tma2d: 16 x 32 pixels x 64; fprop and dgrad) and the wgrad's (TmaWs: with a
/// producer warpgroup; TmaMc: that in clusters of 2 sharing X by multicast, where K > 128), a check
/// of their own that `vgg selftest` runs last: a copy that never lands traps on the GPU
/// (kernels/bulk.cuh), which loses the process's CUDA context for every row after it.
pub fn wgmma_tma(dev: &Device) -> Result<Vec<CheckRow>> {
    if !dev.has_wgmma() {
        return Ok(vec![]);
    }
    let (g, names) = (ConvAlgo::Wgmma, WGMMA_NAMES);
    let mut rows = fprop_dgrad(dev, g, g, WinoTiling::Tma, names)?;
    rows.extend(fprop_dgrad(dev, g, g, WinoTiling::TmaTall, names)?);
    rows.extend(fprop_dgrad(dev, g, g, WinoTiling::TmaWs, names)?);
    rows.extend(wgrad(dev, g, g, WinoTiling::TmaWs)?);
    if dev.has_clusters() {
        rows.extend(fprop_dgrad(dev, g, g, WinoTiling::TmaMc, names)?);
        rows.extend(wgrad(dev, g, g, WinoTiling::TmaMc)?);
    }
    rows.extend(fprop_dgrad(dev, g, g, WinoTiling::Tma2d, names)?);
    Ok(rows)
}

/// The tensor-core implicit-GEMM fprop and dgrad of layers with C <= 8 (fprop: C = 8 read as is,
/// smaller C padded in the workspace; dgrad: any such C padded as the filters are read), which
/// `Auto` runs for C < 8.
pub fn igemm_c8(dev: &Device) -> Result<Vec<CheckRow>> {
    let g = ConvAlgo::ImplicitGemm;
    fprop_dgrad(dev, g, g, WinoTiling::Auto, ["igemm3x3_fprop_c8_f16", "igemm3x3_dgrad_c8_f16"])
}

/// The tensor-core implicit-GEMM wgrad where `Auto` runs it: K a multiple of 8, any C (padded).
pub fn wgrad_tc(dev: &Device) -> Result<Vec<CheckRow>> {
    wgrad(dev, ConvAlgo::Auto, ConvAlgo::ImplicitGemm, WinoTiling::Auto)
}
