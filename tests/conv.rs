//! The 3x3 convolutions on the emu device: the selftest checks (every pass against the f64
//! reference on the shared problem list), bit-identical results under two schedules for every
//! kernel, exact results on integer data for every algorithm (on fixed and on seeded random
//! shapes), and shape errors.

use half::f16;
use vgg_cuda::data::SampleRng;
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use vgg_cuda::problem::ConvProblem;
use vgg_cuda::{reference as r, selftest, Device, Error, Schedule, Tensor};
mod common;
use common::ShapeRng;

fn assert_check_passes(name: &str) {
    let rows = selftest::run(&Device::emu(), Some(name));
    assert!(!rows.is_empty(), "check {name} produced no rows");
    let bad: Vec<_> = rows.iter().filter(|r| !r.ran_and_passed()).collect();
    assert!(bad.is_empty(), "check {name} failed on emu ({} of {} rows): {bad:#?}", bad.len(), rows.len());
}

/// On a GPU whose shared memory a block is too small for a check's kernels (emu at 200 KiB:
/// F(4x4) needs 216), the check is one row saying so, neither passed nor failed; the checks
/// whose kernels fit run as ever.
#[test]
fn a_check_that_does_not_fit_the_device_says_so() {
    let dev = Device::emu();
    dev.set_emu_shared_limit(200 * 1024);
    let rows = selftest::run(&dev, Some("conv_wino4x4"));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert!(r.pass && r.bound == selftest::NOT_RUN && r.kernel == "conv_wino4x4", "{r:#?}");
    assert!(r.detail.as_deref().is_some_and(|d| d.contains("shared memory")), "{r:#?}");
    let f2 = selftest::run(&dev, Some("conv_wino2x2"));
    assert!(f2.len() > 10 && f2.iter().all(|r| r.pass && r.bound != selftest::NOT_RUN), "{f2:#?}");
}

#[test]
fn direct_matches_reference() {
    assert_check_passes("conv_direct");
}
#[test]
fn winograd2x2_matches_reference() {
    assert_check_passes("conv_wino2x2");
}
#[test]
fn winograd4x4_matches_reference() {
    assert_check_passes("conv_wino4x4");
}
#[test]
fn tensor_core_wgrad_matches_reference() {
    assert_check_passes("conv_wgrad");
}
#[test]
fn first_layer_implicit_gemm_matches_reference() {
    assert_check_passes("conv_igemm_c8");
}
#[test]
fn wgmma_implicit_gemm_matches_reference() {
    assert_check_passes("conv_wgmma");
    assert_check_passes("conv_wgmma_tma");
}

/// Deterministic values: integers in [-r, r] (exact in every algorithm) or a spread of fp16
/// values (to compare bits across schedules). The integers are splitmix64 of (seed, index), so
/// no period lines up with C, W or K (a multiplicative step ≡ 1 mod 2r+1 repeats every 2r+1
/// elements, which made every row of a C = 5 problem the same).
fn ints(len: usize, r: i64, seed: u64) -> Vec<f32> {
    let key = r::splitmix64_mix(seed);
    let span = 2 * r as u64 + 1;
    (0..len as u64).map(|i| (r::splitmix64_mix(key ^ i) % span) as f32 - r as f32).collect()
}
fn spread(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64).map(|i| (((i * 7919 + seed * 31) % 1013) as f32 - 506.0) / 211.0).collect()
}

/// All outputs of all passes of `algo` on `p` for the given inputs: (y with BiasRelu, dx with
/// the mask, dw, db), as bits.
fn run_all(
    dev: &Device,
    p: ConvProblem,
    (algo, tiling): (ConvAlgo, WinoTiling),
    data: &[Vec<f32>; 5],
) -> (Vec<u16>, Vec<u16>, Vec<u32>, Vec<u32>) {
    let [x, w, b, dy, mask] = data;
    let conv = Conv3x3::new(p, algo).unwrap().with_wino_tiling(tiling);
    // Each pass in exactly the workspace its query asks for, followed by a guard: a query that
    // under-counts fails here (the emulator has no bounds on global memory).
    let ws = |q| selftest::GuardedWorkspace::new(dev, conv.workspace_bytes(q)).unwrap();
    let xt = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.c], x).unwrap();
    let wt = Tensor::from_f32(dev, &[p.k, 3, 3, p.c], w).unwrap();
    let bt = Tensor::from_f32(dev, &[p.k], b).unwrap();
    let dyt = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.k], dy).unwrap();
    let mt = Tensor::from_f32(dev, &[p.n, p.h, p.w, p.c], mask).unwrap();
    let mut y = Tensor::empty(dev, &[p.n, p.h, p.w, p.k]).unwrap();
    let mut dx = Tensor::empty(dev, &[p.n, p.h, p.w, p.c]).unwrap();
    let mut dw = Tensor::<f32>::empty(dev, &[p.k, 3, 3, p.c]).unwrap();
    let mut db = Tensor::<f32>::empty(dev, &[p.k]).unwrap();
    y.poison().unwrap();
    dx.poison().unwrap();
    dw.poison().unwrap();
    db.poison().unwrap();
    let what = |q| format!("{p} {algo:?}/{tiling:?} {q:?} ({})", conv.label(q));
    let mut g = ws(ConvPass::Fprop);
    conv.fprop(&xt, &wt, Some(&bt), Epilogue::BiasRelu, &mut y, &mut g.ws).unwrap();
    g.check(&what(ConvPass::Fprop)).unwrap();
    let mut g = ws(ConvPass::Dgrad);
    conv.dgrad(&dyt, &wt, Some(&mt), &mut dx, &mut g.ws).unwrap();
    g.check(&what(ConvPass::Dgrad)).unwrap();
    let mut g = ws(ConvPass::Wgrad);
    conv.wgrad(&xt, &dyt, &mut dw, Some(&mut db), &mut g.ws).unwrap();
    g.check(&what(ConvPass::Wgrad)).unwrap();
    let h = |t: &Tensor<f16>| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let f = |t: &Tensor<f32>| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    (h(&y), h(&dx), f(&dw), f(&db))
}

fn problem_data(p: &ConvProblem, gen: impl Fn(usize, u64) -> Vec<f32>) -> [Vec<f32>; 5] {
    let mask = r::relu_fwd(&spread(p.input_len(), 9));
    [gen(p.input_len(), 1), gen(p.filter_len(), 2), gen(p.k, 3), gen(p.output_len(), 4), mask]
}

/// Every pass of each (problem, algorithm, tiling) bit-identical under two emu schedules (block
/// order and warp interleaving), nothing left unwritten.
fn assert_two_schedules(cases: impl IntoIterator<Item = (ConvProblem, ConvAlgo, WinoTiling)>) {
    for (p, algo, tiling) in cases {
        let conv = Conv3x3::new(p, algo).unwrap().with_wino_tiling(tiling);
        if (algo, tiling) == (ConvAlgo::Wgmma, WinoTiling::Flat) {
            let labels = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| conv.label(q));
            assert!(labels.iter().all(|l| l.starts_with("wgmma/") && !l.contains("halo")), "{p}: {labels:?}");
        }
        if tiling == WinoTiling::TmaWs {
            assert!(conv.label(ConvPass::Wgrad).ends_with("/tma-ws"), "{p}: {}", conv.label(ConvPass::Wgrad));
        }
        if tiling == WinoTiling::TmaMc {
            // Its own wgrad in clusters where K > 128, else Region's.
            let label = conv.label(ConvPass::Wgrad);
            assert_eq!(label.ends_with("/tma-mc"), p.k > 128, "{p}: {label}");
            assert!(p.k > 128 || !label.contains("tma"), "{p}: {label}");
        }
        let algo = (algo, tiling);
        let data = problem_data(&p, spread);
        let dev = Device::emu();
        dev.set_schedule(Schedule::Index);
        let a = run_all(&dev, p, algo, &data);
        dev.set_schedule(Schedule::Random(7));
        let b = run_all(&dev, p, algo, &data);
        assert!(a.0 == b.0, "{p} {algo:?}: fprop differs between schedules");
        assert!(a.1 == b.1, "{p} {algo:?}: dgrad differs between schedules");
        assert!(a.2 == b.2, "{p} {algo:?}: wgrad dw differs between schedules");
        assert!(a.3 == b.3, "{p} {algo:?}: wgrad db differs between schedules");
        // Nothing left unwritten (poison is NaN: 0x7fff / 0xffff bit patterns).
        assert!(a.0.iter().chain(&a.1).all(|&v| v & 0x7c00 != 0x7c00), "{p} {algo:?}: NaN/inf in outputs");
    }
}

/// The mma.sync convolutions (Winograd flat and region, F(4x4), the implicit GEMMs, the direct
/// twin) under two schedules; `scripts/emu-tsan` runs this one under ThreadSanitizer too.
#[test]
fn two_schedules_bit_identical() {
    // Ragged tiles (odd H and W), two k-blocks, a C that ends in a half chunk, and enough
    // pixels for several wgrad chunks; C = 3 and 12 padded under Auto; Winograd region windows
    // of several widths, some crossing the image's edge.
    let region = |p: ConvProblem| (p, ConvAlgo::Winograd2x2, WinoTiling::Region);
    let cases = [
        (ConvProblem::new(2, 7, 9, 24, 72), ConvAlgo::Winograd2x2),
        (ConvProblem::new(1, 33, 35, 8, 16), ConvAlgo::Winograd2x2),
        (ConvProblem::new(2, 9, 13, 88, 40), ConvAlgo::Winograd2x2),
        (ConvProblem::new(2, 5, 7, 3, 16), ConvAlgo::Direct),
        (ConvProblem::new(1, 33, 35, 8, 16), ConvAlgo::ImplicitGemm),
        (ConvProblem::new(1, 9, 10, 4, 72), ConvAlgo::ImplicitGemm),
        (ConvProblem::new(1, 50, 45, 8, 8), ConvAlgo::Direct),
        (ConvProblem::new(1, 30, 33, 3, 64), ConvAlgo::Auto),
        (ConvProblem::new(1, 30, 33, 3, 64), ConvAlgo::Winograd2x2),
        (ConvProblem::new(2, 5, 7, 12, 24), ConvAlgo::Winograd2x2),
        (ConvProblem::new(2, 9, 13, 88, 40), ConvAlgo::Winograd4x4),
        (ConvProblem::new(1, 33, 35, 8, 16), ConvAlgo::Winograd4x4),
        (ConvProblem::new(2, 5, 7, 12, 24), ConvAlgo::Winograd4x4),
        // C = 128, K = 72: the wgrad's 128 x 256 tiles, the last column block half used.
        (ConvProblem::new(1, 3, 5, 128, 72), ConvAlgo::Winograd2x2),
    ]
    .map(|(p, a)| (p, a, WinoTiling::Auto));
    assert_two_schedules(cases.into_iter().chain([
        region(ConvProblem::new(2, 9, 13, 88, 40)),
        region(ConvProblem::new(1, 33, 35, 8, 16)),
        region(ConvProblem::new(1, 6, 70, 16, 8)),
    ]));
}

/// The wgmma convolutions under two schedules: their own test, which ThreadSanitizer's run takes
/// only with `scripts/emu-tsan --wgmma` (instrumented, ~6 minutes on 2 cores).
#[test]
fn two_schedules_bit_identical_wgmma() {
    // wgmma's flat tiles (Auto takes the halo ones): N 64 / 128 / 256 and the flat wgrad; its
    // tall tile (two m64 blocks a warpgroup in one wgmma group), its swizzled one, and its TMA one
    // (copies that land when a wait needs them, or at issue, as the schedule has it).
    let wgmma = |tiling: WinoTiling| move |p: ConvProblem| (p, ConvAlgo::Wgmma, tiling);
    let (auto, flat, tall, swizzled) =
        (wgmma(WinoTiling::Auto), wgmma(WinoTiling::Flat), wgmma(WinoTiling::Tall), wgmma(WinoTiling::Swizzled));
    let (tma, tma_tall, tma_ws) = (wgmma(WinoTiling::Tma), wgmma(WinoTiling::TmaTall), wgmma(WinoTiling::TmaWs));
    let (tma_mc, tma_2d) = (wgmma(WinoTiling::TmaMc), wgmma(WinoTiling::Tma2d));
    assert_two_schedules([
        // C = 88 (a half-used second stage of 64 channels), two pixel blocks; K = 136 (two
        // output-channel blocks, the second nearly empty).
        auto(ConvProblem::new(2, 9, 13, 88, 40)),
        auto(ConvProblem::new(1, 12, 11, 16, 136)),
        // K = 256 (fprop) and C = 256 (dgrad): two blocks of the halo tile's 128 channels.
        auto(ConvProblem::new(1, 7, 6, 24, 256)),
        auto(ConvProblem::new(1, 5, 6, 256, 16)),
        flat(ConvProblem::new(2, 9, 13, 88, 40)),
        flat(ConvProblem::new(1, 12, 11, 16, 136)),
        flat(ConvProblem::new(1, 7, 6, 24, 256)),
        flat(ConvProblem::new(1, 5, 6, 256, 16)),
        tall(ConvProblem::new(2, 9, 13, 88, 40)),
        tall(ConvProblem::new(1, 12, 11, 16, 136)),
        swizzled(ConvProblem::new(2, 9, 13, 88, 40)),
        swizzled(ConvProblem::new(1, 7, 6, 24, 256)),
        tma(ConvProblem::new(2, 9, 13, 88, 40)),
        tma(ConvProblem::new(1, 7, 6, 24, 256)),
        tma_tall(ConvProblem::new(2, 9, 13, 88, 40)),
        tma_ws(ConvProblem::new(2, 9, 13, 88, 40)),
        tma_ws(ConvProblem::new(1, 7, 6, 24, 256)),
        // The TMA wgrad's ring wrapped (11 stages a block into 8 buffers at 64 channels a block,
        // 10 into 6 at 128), two position chunks, two k blocks.
        tma_ws(ConvProblem::new(1, 33, 35, 8, 16)),
        tma_ws(ConvProblem::new(1, 20, 30, 72, 136)),
        // The multicast tile: one cluster, two channel steps (88); two clusters on an odd number
        // of position blocks (3), rank 1's last item past the end; rank 1 with no real item at all
        // (1 position block), two output-channel blocks.
        tma_mc(ConvProblem::new(2, 9, 13, 88, 40)),
        tma_mc(ConvProblem::new(2, 10, 30, 72, 136)),
        tma_mc(ConvProblem::new(1, 7, 6, 24, 256)),
        // Its wgrad in clusters sharing X (K > 128; the two above also run it): 3 k blocks, the
        // last cluster's rank 1 past K, 2 chunks of 10 and 9 stages through a ring of 8.
        tma_mc(ConvProblem::new(1, 37, 30, 16, 264)),
        // The 2-D items: a halo box a step landing whenever the schedule has it, rows and columns
        // past the image's edge.
        tma_2d(ConvProblem::new(2, 9, 13, 88, 40)),
        tma_2d(ConvProblem::new(1, 17, 35, 24, 136)),
        // Its wgrad for K <= 64: 2 chunks of 15 tiles through a ring of 4.
        tma_2d(ConvProblem::new(2, 33, 35, 8, 16)),
    ]);
}

/// All three passes of wgmma under `tiling` on small integers, against the exact references: y and dx
/// (zeros alike), dw and db bit for bit (`what` names the wgrad in the failure).
fn assert_all_passes_exact(dev: &Device, p: ConvProblem, tiling: WinoTiling, what: &str) {
    let data = problem_data(&p, |len, s| ints(len, 2, s));
    let (want_y, want_dx) = exact_y_dx(&p, &data);
    let (y, dx, dw, db) = run_all(dev, p, (ConvAlgo::Wgmma, tiling), &data);
    assert_eq!(zeros_alike(y), zeros_alike(want_y), "{p}: fprop not exact");
    assert_eq!(zeros_alike(dx), zeros_alike(want_dx), "{p}: dgrad not exact");
    let (want_dw, want_db) = r::conv3x3_wgrad(&p, &data[0], &data[3]);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let bad = mismatches(&dw, &bits(want_dw)).or_else(|| mismatches(&db, &bits(want_db)));
    assert!(bad.is_none(), "{p}: {what} dw / db not exact: {}", bad.unwrap());
}

/// The exact fp16 bits of y (bias + ReLU) and dx (masked) for integer `data` of `p`.
fn exact_y_dx(p: &ConvProblem, data: &[Vec<f32>; 5]) -> (Vec<u16>, Vec<u16>) {
    let [x, w, b, dy, mask] = data;
    let bits = |v: &[f32]| v.iter().map(|&v| f16::from_f32(v).to_bits()).collect::<Vec<_>>();
    let y = bits(&r::f32_to_f16_round(&r::conv3x3_fprop(p, x, w, Some(b), true)));
    (y, bits(&r::relu_bwd(mask, &r::conv3x3_dgrad(p, dy, w))))
}

/// fp16 bits with -0 as +0: both are exact zeros.
fn zeros_alike(v: Vec<u16>) -> Vec<u16> {
    v.into_iter().map(|b| if b == 0x8000 { 0 } else { b }).collect()
}

/// Every plan of each shape exact on integers ([`check_every_plan`]): shapes that put one
/// boundary each under test (ragged pixel and channel tiles, a second block of 256 output
/// channels, C = 3 and 5 padded, 1-pixel rows).
#[test]
fn integer_data_is_exact_in_every_algorithm() {
    let dev = Device::emu();
    for (i, p) in [
        ConvProblem::new(2, 7, 9, 24, 72),
        ConvProblem::new(1, 33, 35, 8, 16),
        ConvProblem::new(2, 9, 13, 88, 40),
        ConvProblem::new(3, 1, 2, 16, 8),
        ConvProblem::new(2, 9, 11, 3, 64),
        ConvProblem::new(1, 6, 7, 5, 16),
        ConvProblem::new(2, 5, 6, 12, 24),
        ConvProblem::new(1, 7, 6, 24, 256),
        ConvProblem::new(1, 5, 6, 256, 16),
    ]
    .into_iter()
    .enumerate()
    {
        check_every_plan(&dev, p, i as u64);
    }
}

/// The wgmma fprop / dgrad tile: the halo one wherever it fits (widths up to 193 at 128
/// output channels a tile, shared memory; up to 253 at 64, the kernel's 12 copy pieces a
/// thread), the flat one past those edges or when asked; exact on integers at each edge, and
/// the halo wgrad with them.
#[test]
fn wgmma_halo_tile_where_it_fits_exact_at_its_edges() {
    let dev = Device::emu();
    for (p, fprop, dgrad) in [
        (ConvProblem::new(2, 3, 193, 72, 136), "wgmma/halo256x128", "wgmma/halo256x128"),
        (ConvProblem::new(1, 2, 194, 8, 136), "wgmma/128x128", "wgmma/halo256x64"),
        (ConvProblem::new(1, 3, 253, 16, 64), "wgmma/halo256x64", "wgmma/halo256x64"),
        (ConvProblem::new(1, 2, 254, 8, 64), "wgmma/128x64", "wgmma/128x64"),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap();
        assert_eq!((conv.label(ConvPass::Fprop).as_str(), conv.label(ConvPass::Dgrad).as_str()), (fprop, dgrad), "{p}");
        let flat = conv.with_wino_tiling(WinoTiling::Flat);
        assert!(
            flat.label(ConvPass::Fprop).starts_with("wgmma/128x"),
            "{p}: Flat asked, {}",
            flat.label(ConvPass::Fprop)
        );
        let data = problem_data(&p, |len, s| ints(len, 2, s));
        let (want_y, want_dx) = exact_y_dx(&p, &data);
        let (y, dx, dw, db) = run_all(&dev, p, (ConvAlgo::Wgmma, WinoTiling::Auto), &data);
        assert_eq!(zeros_alike(y), zeros_alike(want_y), "{p}: fprop not exact");
        assert_eq!(zeros_alike(dx), zeros_alike(want_dx), "{p}: dgrad not exact");
        // The wgrad over the same padded positions, whatever the width (its X tile is 80
        // positions a stage).
        // 3 taps x 64 channels a block for C <= 64 (a 128-channel block would be half idle).
        let wgrad = if p.c <= 64 { "wgmma/halo128x192" } else { "wgmma/halo128x384" };
        assert_eq!(conv.label(ConvPass::Wgrad), wgrad, "{p}");
        let (want_dw, want_db) = r::conv3x3_wgrad(&p, &data[0], &data[3]);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(dw, bits(want_dw), "{p}: dw not exact");
        assert_eq!(db, bits(want_db), "{p}: db not exact");
    }
}

/// The other halo tiles for fprop and dgrad, exact on integers at their edges, with several items
/// a block (3 emulated SMs) and two channel steps (72 channels): [`WinoTiling::Tall`], 512
/// positions x 64 channels wherever it fits (widths up to 125: 12 copy pieces a thread), the
/// 256 x N one past that edge, the wgrad keeping its halo kernel; [`WinoTiling::Swizzled`], the
/// 256 x N tile in the 128-byte swizzle, with the plain one's edges (193 wide at 128 output
/// channels a tile, 253 at 64); [`WinoTiling::Tma`], the 256 x N tile fed by the TMA engine,
/// whose halo buffers fit widths up to 182 at 128 output channels a tile, 246 at 64;
/// [`WinoTiling::TmaTall`], its 512 x 64 items up to 118 wide, past that Tma's tile;
/// [`WinoTiling::TmaWs`], Tma's tile with a producer warp, at Tma's edges; [`WinoTiling::TmaMc`],
/// that tile in clusters of 2 sharing the filters, at the same edges, and on odd numbers of
/// position blocks (rank 1's last item past the end: it loads its half of the filters and stores
/// nothing), one of them with rank 1 holding no real item.
#[test]
fn wgmma_tall_swizzled_and_tma_halo_tiles_exact_at_their_edges() {
    let dev = Device::emu();
    let (tall, sw, tma, tma_tall) = (WinoTiling::Tall, WinoTiling::Swizzled, WinoTiling::Tma, WinoTiling::TmaTall);
    let (tma_ws, tma_mc) = (WinoTiling::TmaWs, WinoTiling::TmaMc);
    for (tiling, p, fprop, dgrad) in [
        (tall, ConvProblem::new(2, 3, 125, 16, 72), "wgmma/halo512x64", "wgmma/halo512x64"),
        (tall, ConvProblem::new(1, 5, 7, 72, 8), "wgmma/halo512x64", "wgmma/halo512x64"),
        (tall, ConvProblem::new(1, 2, 126, 8, 136), "wgmma/halo256x128", "wgmma/halo256x64"),
        (sw, ConvProblem::new(2, 3, 193, 72, 136), "wgmma/halo256x128/sw128", "wgmma/halo256x128/sw128"),
        (sw, ConvProblem::new(1, 3, 253, 16, 64), "wgmma/halo256x64/sw128", "wgmma/halo256x64/sw128"),
        (sw, ConvProblem::new(1, 2, 254, 8, 64), "wgmma/128x64", "wgmma/128x64"),
        (tma, ConvProblem::new(2, 3, 182, 72, 136), "wgmma/halo256x128/tma", "wgmma/halo256x128/tma"),
        (tma, ConvProblem::new(1, 2, 183, 8, 136), "wgmma/halo256x128", "wgmma/halo256x64/tma"),
        (tma, ConvProblem::new(1, 3, 246, 16, 64), "wgmma/halo256x64/tma", "wgmma/halo256x64/tma"),
        (tma, ConvProblem::new(1, 2, 247, 8, 64), "wgmma/halo256x64", "wgmma/halo256x64"),
        (tma_tall, ConvProblem::new(2, 3, 118, 72, 136), "wgmma/halo512x64/tma", "wgmma/halo512x64/tma"),
        (tma_tall, ConvProblem::new(1, 2, 119, 8, 136), "wgmma/halo256x128/tma", "wgmma/halo256x64/tma"),
        (tma_ws, ConvProblem::new(2, 3, 182, 72, 136), "wgmma/halo256x128/tma-ws", "wgmma/halo256x128/tma-ws"),
        (tma_ws, ConvProblem::new(1, 3, 246, 16, 64), "wgmma/halo256x64/tma-ws", "wgmma/halo256x64/tma-ws"),
        (tma_ws, ConvProblem::new(1, 2, 247, 8, 64), "wgmma/halo256x64", "wgmma/halo256x64"),
        // 6 position blocks, 2 clusters of 3 item pairs each (fprop: 2 output-channel blocks).
        (tma_mc, ConvProblem::new(2, 3, 182, 72, 136), "wgmma/halo256x128/tma-mc", "wgmma/halo256x128/tma-mc"),
        (tma_mc, ConvProblem::new(1, 2, 183, 8, 136), "wgmma/halo256x128", "wgmma/halo256x64/tma-mc"),
        // 3 position blocks (odd).
        (tma_mc, ConvProblem::new(1, 3, 246, 16, 64), "wgmma/halo256x64/tma-mc", "wgmma/halo256x64/tma-mc"),
        (tma_mc, ConvProblem::new(1, 2, 247, 8, 64), "wgmma/halo256x64", "wgmma/halo256x64"),
        // 3 position blocks, 2 channel steps, 2 output-channel blocks (fprop) or 1 (dgrad).
        (tma_mc, ConvProblem::new(2, 10, 30, 72, 136), "wgmma/halo256x128/tma-mc", "wgmma/halo256x128/tma-mc"),
        // 1 position block: rank 1 runs only a tail item.
        (tma_mc, ConvProblem::new(1, 7, 6, 24, 256), "wgmma/halo256x128/tma-mc", "wgmma/halo256x64/tma-mc"),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(tiling);
        let labels = (conv.label(ConvPass::Fprop), conv.label(ConvPass::Dgrad));
        assert_eq!((labels.0.as_str(), labels.1.as_str()), (fprop, dgrad), "{p} {tiling:?}");
        if fprop.starts_with("wgmma/halo") {
            // The halo wgrad: 128 k a block, or 64 for the TMA wgrad's k64 kernels (K <= 64).
            let m = if tiling == WinoTiling::TmaWs && p.k <= 64 { 64 } else { 128 };
            let wgrad = conv.label(ConvPass::Wgrad);
            assert!(wgrad.starts_with(&format!("wgmma/halo{m}x")), "{p}: {wgrad}");
        }
        let data = problem_data(&p, |len, s| ints(len, 2, s));
        let (want_y, want_dx) = exact_y_dx(&p, &data);
        let (y, dx, ..) = run_all(&dev, p, (ConvAlgo::Wgmma, tiling), &data);
        assert_eq!(zeros_alike(y), zeros_alike(want_y), "{p} {tiling:?}: fprop not exact");
        assert_eq!(zeros_alike(dx), zeros_alike(want_dx), "{p} {tiling:?}: dgrad not exact");
    }
}

/// [`WinoTiling::Tma2d`]'s items of 16 rows x 32 columns x 64 channels, exact on integers: rows
/// and columns past the image's edge (17 x 33: a last item with one row and one column inside),
/// several images, items a block (3 emulated SMs) and channel steps (72), a last output-channel
/// block nearly empty (136), an image that is exactly one item, and one smaller than a block; the
/// wgrad is the 2-D one for K <= 64, else the cp.async halo kernel. Any shape fits: its halo does not
/// grow with the width.
#[test]
fn wgmma_tma_2d_items_exact_on_ragged_images() {
    let dev = Device::emu();
    for p in
        [ConvProblem::new(2, 17, 33, 72, 136), ConvProblem::new(1, 16, 32, 8, 64), ConvProblem::new(3, 1, 1, 16, 8)]
    {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::Tma2d);
        for pass in [ConvPass::Fprop, ConvPass::Dgrad] {
            assert_eq!(conv.label(pass), "wgmma/halo16x32x64/tma-2d", "{p} {pass:?}");
        }
        // Its wgrad: the 2-D one for K <= 64, else the cp.async halo kernel.
        let wgrad = if p.k <= 64 { "wgmma/halo64x576/tma-2d" } else { "wgmma/halo128x" };
        assert!(conv.label(ConvPass::Wgrad).starts_with(wgrad), "{p}: {}", conv.label(ConvPass::Wgrad));
        let data = problem_data(&p, |len, s| ints(len, 2, s));
        let (want_y, want_dx) = exact_y_dx(&p, &data);
        let (y, dx, ..) = run_all(&dev, p, (ConvAlgo::Wgmma, WinoTiling::Tma2d), &data);
        assert_eq!(zeros_alike(y), zeros_alike(want_y), "{p}: fprop not exact");
        assert_eq!(zeros_alike(dx), zeros_alike(want_dx), "{p}: dgrad not exact");
    }
}

/// [`WinoTiling::Tma2d`]'s wgrad for K <= 64 (all 9 taps a block, 2-D tiles of 8 rows x 16 columns),
/// exact on integers (dw and db bit for bit, the other passes with it): tiles past the image's edge
/// (17 x 35: a last tile row of 1 and a last column of 3), several images and chunks (2 x 33 x 35:
/// 2 x 5 x 3 tiles, at least 16 a chunk), rings that wrap (more than 4 stages a chunk), two
/// channel blocks (C 72: a second block of 8), K 16, 40 and 64; under a random schedule. K > 64
/// keeps the cp.async halo wgrad.
#[test]
fn wgmma_tma_2d_wgrad_exact_for_k_up_to_64() {
    let dev = Device::emu();
    dev.set_schedule(Schedule::Random(5));
    for (p, chunks) in [
        (ConvProblem::new(2, 33, 35, 8, 16), 2),
        (ConvProblem::new(1, 17, 35, 72, 40), 1),
        (ConvProblem::new(3, 5, 6, 16, 64), 1),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::Tma2d);
        assert_eq!(conv.label(ConvPass::Wgrad), "wgmma/halo64x576/tma-2d", "{p}");
        assert_eq!(conv.wgrad_kernel_name(), "igemm3x3_wgrad_wgmma_2d_tma_k64_f16", "{p}");
        assert_eq!(conv.workspace_bytes(ConvPass::Wgrad), chunks * (p.filter_len() + p.k) * 4, "{p}");
        assert_all_passes_exact(&dev, p, WinoTiling::Tma2d, "2-D TMA wgrad");
    }
    let wide = Conv3x3::new(ConvProblem::new(1, 6, 6, 16, 72), ConvAlgo::Wgmma).unwrap();
    assert_eq!(wide.with_wino_tiling(WinoTiling::Tma2d).label(ConvPass::Wgrad), "wgmma/halo128x192");
}

/// The TMA-fed wgrad with a producer warpgroup ([`WinoTiling::TmaWs`]), exact on integers (dw and
/// db, the other passes with it): 64 channels a block (C <= 64) and 128, each with 128 k a block
/// and, for K <= 64, with its k64 kernel (both warpgroups on k 0..63), ragged C and K blocks, a
/// pitch with no extra column (W 6 and 14: W + 2 a multiple of 8) and with some, several images,
/// several position chunks, and rings that wrap; under a random schedule (copies landing at issue
/// or at the wait that needs them), so that a buffer refilled too early fails here too. Its stages
/// do not depend on the width, so its only limit is the 32-bit position index at its wider pitch:
/// past it the cp.async halo wgrad runs.
#[test]
fn wgmma_tma_wgrad_exact_and_where_it_runs() {
    let dev = Device::emu();
    dev.set_schedule(Schedule::Random(3));
    // (problem, channels a block, partial sums): K <= 64 runs the k64 kernels, two parts a chunk of
    // 128-position stages (chunks: the positions (N (H + 1) - 1) x pitch over at most 1024 a
    // chunk, rounded up to whole stages; 2 x 33 x 35: 2680 positions, 3 chunks of 7 stages
    // through a ring of 6; 1 x 20 x 30 at C 128: 640, 5 stages through a ring of 4).
    for (p, cb, parts) in [
        (ConvProblem::new(2, 33, 35, 8, 16), 64, 6),
        (ConvProblem::new(1, 20, 30, 72, 136), 128, 1),
        (ConvProblem::new(3, 5, 6, 16, 24), 64, 2),
        (ConvProblem::new(3, 5, 6, 16, 72), 64, 1),
        (ConvProblem::new(1, 6, 14, 256, 16), 128, 2),
        (ConvProblem::new(1, 20, 30, 128, 40), 128, 2),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::TmaWs);
        let (m, k64) = if p.k <= 64 { (64, "_k64") } else { (128, "") };
        assert_eq!(conv.label(ConvPass::Wgrad), format!("wgmma/halo{m}x{}/tma-ws", 3 * cb), "{p}");
        assert_eq!(conv.wgrad_kernel_name(), format!("igemm3x3_wgrad_wgmma_halo_tma_ws_c{cb}{k64}_f16"), "{p}");
        // Partial sums a chunk (two for k64): the workspace says how many.
        assert_eq!(conv.workspace_bytes(ConvPass::Wgrad), parts * (p.filter_len() + p.k) * 4, "{p}");
        assert_all_passes_exact(&dev, p, WinoTiling::TmaWs, "TMA wgrad");
    }
    // Images of 1 x 1 pixel: 16 positions an image at the TMA pitch 8 (2 padded rows), 6 at the
    // cp.async tile's pitch W + 2 = 3; N H W C stays below 2^31 for wgmma.
    let tiny = |n| ConvProblem::new(n, 1, 1, 8, 8);
    let plan = |n| Conv3x3::new(tiny(n), ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::TmaWs);
    assert_eq!(plan(134_217_694).label(ConvPass::Wgrad), "wgmma/halo64x192/tma-ws");
    assert_eq!(plan(134_217_695).label(ConvPass::Wgrad), "wgmma/halo128x192");
}

/// [`WinoTiling::TmaMc`]'s wgrad: the TMA wgrad in clusters of 2 blocks (k blocks 2 y and 2 y + 1)
/// that share each stage's X boxes by multicast, where K > 128; exact on integers (dw and db bit
/// for bit) at 64 and 128 channels a block, 2 k blocks (the second ragged: K 200, nearly empty:
/// 136), 3 (the last cluster's rank 1 wholly past K: it loads its X half and stores nothing),
/// several position chunks and c-blocks, rings that wrap; under a random schedule. With one k
/// block (K <= 128) TmaMc's wgrad is Region's cp.async halo wgrad, not the TmaWs kernel, so that a
/// TmaMc plan's wgrad is what the tuner timed (src/ops/conv_tune.rs).
#[test]
fn wgmma_tma_mc_wgrad_exact_and_where_it_runs() {
    let dev = Device::emu();
    dev.set_schedule(Schedule::Random(5));
    // (problem, channels a block, chunks): 2 x 33 x 35 at pitch 40 is 2680 positions, 3 chunks of
    // 14 stages through the ring of 8 (64 channels a block); 1 x 20 x 30: 640 positions, 10 stages
    // through the ring of 6 (128); 2 x 17 x 14: 560, 9 stages, 2 c-blocks.
    for (p, cb, chunks) in [
        (ConvProblem::new(2, 33, 35, 16, 256), 64, 3),
        (ConvProblem::new(1, 20, 30, 128, 200), 128, 1),
        (ConvProblem::new(3, 9, 6, 72, 384), 128, 1),
        (ConvProblem::new(2, 17, 14, 256, 136), 128, 1),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::TmaMc);
        assert_eq!(conv.label(ConvPass::Wgrad), format!("wgmma/halo128x{}/tma-mc", 3 * cb), "{p}");
        assert_eq!(conv.wgrad_kernel_name(), format!("igemm3x3_wgrad_wgmma_halo_tma_mc_c{cb}_f16"), "{p}");
        assert_eq!(conv.workspace_bytes(ConvPass::Wgrad), chunks * (p.filter_len() + p.k) * 4, "{p}");
        let (x, dy) = (ints(p.input_len(), 2, 1), ints(p.output_len(), 2, 2));
        let xt = Tensor::from_f32(&dev, &[p.n, p.h, p.w, p.c], &x).unwrap();
        let dyt = Tensor::from_f32(&dev, &[p.n, p.h, p.w, p.k], &dy).unwrap();
        let mut dw = Tensor::<f32>::empty(&dev, &[p.k, 3, 3, p.c]).unwrap();
        let mut db = Tensor::<f32>::empty(&dev, &[p.k]).unwrap();
        dw.poison().unwrap();
        db.poison().unwrap();
        // The exact workspace with a guard after it: a tail block's stores past K would show.
        let mut g = selftest::GuardedWorkspace::new(&dev, conv.workspace_bytes(ConvPass::Wgrad)).unwrap();
        conv.wgrad(&xt, &dyt, &mut dw, Some(&mut db), &mut g.ws).unwrap();
        g.check(&format!("{p} TmaMc wgrad")).unwrap();
        let (want_dw, want_db) = r::conv3x3_wgrad(&p, &x, &dy);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let f = |t: &Tensor<f32>| bits(t.to_host().unwrap());
        let bad = mismatches(&f(&dw), &bits(want_dw)).or_else(|| mismatches(&f(&db), &bits(want_db)));
        assert!(bad.is_none(), "{p}: TmaMc wgrad dw / db not exact: {}", bad.unwrap());
    }
    // One k block: Region's wgrad (K 128, 72; K <= 64 too), whose tiling it does not own.
    for (p, want) in [
        (ConvProblem::new(1, 20, 30, 72, 128), "wgmma/halo128x384"),
        (ConvProblem::new(1, 20, 30, 72, 72), "wgmma/halo128x384"),
        (ConvProblem::new(1, 20, 30, 16, 64), "wgmma/halo128x192"),
    ] {
        let conv = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::TmaMc);
        assert_eq!(conv.label(ConvPass::Wgrad), want, "{p}");
    }
}

fn shape_err<T: std::fmt::Debug>(r: vgg_cuda::Result<T>, needle: &str) {
    match r {
        Err(Error::Shape(m)) => assert!(m.contains(needle), "error `{m}` does not mention `{needle}`"),
        other => panic!("expected a shape error mentioning `{needle}`, got {other:?}"),
    }
}

/// Tensors of the right sizes in other layouts (NCHW activations, OIHW filters, a `[1, K]`
/// bias) are refused by every pass, naming NHWC or KRSC and both shapes, instead of being read
/// as NHWC / KRSC.
#[test]
fn tensors_in_other_layouts_are_refused() {
    let dev = Device::emu();
    let t = |shape: &[usize]| Tensor::<f16>::zeros(&dev, shape).unwrap();
    let f = |shape: &[usize]| Tensor::<f32>::zeros(&dev, shape).unwrap();
    for algo in [ConvAlgo::Auto, ConvAlgo::Direct] {
        let conv = Conv3x3::new(ConvProblem::new(1, 4, 4, 8, 16), algo).unwrap();
        let (x, w, b, dy) = (t(&[1, 4, 4, 8]), t(&[16, 3, 3, 8]), t(&[16]), t(&[1, 4, 4, 16]));
        let mut ws = Tensor::<u8>::zeros(&dev, &[conv.workspace_bytes(ConvPass::Wgrad).max(16 << 10)]).unwrap();
        let (x_nchw, w_oihw, dy_nchw) = (t(&[1, 8, 4, 4]), t(&[16, 8, 3, 3]), t(&[1, 16, 4, 4]));
        let (mut y, mut dx) = (t(&[1, 4, 4, 16]), t(&[1, 4, 4, 8]));
        let fprop = |x: &Tensor<f16>, w: &Tensor<f16>, b: &Tensor<f16>, y: &mut Tensor<f16>, ws: &mut Tensor<u8>| {
            conv.fprop(x, w, Some(b), Epilogue::Bias, y, ws)
        };
        let x_err = "conv3x3 x (NHWC) must have shape [1, 4, 4, 8], got [1, 8, 4, 4]";
        let w_err = "conv3x3 filters w (KRSC) must have shape [16, 3, 3, 8], got [16, 8, 3, 3]";
        shape_err(fprop(&x_nchw, &w, &b, &mut y, &mut ws), x_err);
        shape_err(fprop(&x, &w_oihw, &b, &mut y, &mut ws), w_err);
        shape_err(fprop(&x, &w, &t(&[1, 16]), &mut y, &mut ws), "bias must have shape [16], got [1, 16]");
        shape_err(fprop(&x, &w, &b, &mut t(&[1, 16, 4, 4]), &mut ws), "conv3x3 y (NHWC) must have shape [1, 4, 4, 16]");
        shape_err(conv.prepare_filter(&w_oihw, &mut ws), w_err);
        shape_err(conv.dgrad(&dy_nchw, &w, None, &mut dx, &mut ws), "conv3x3 dy (NHWC) must have shape [1, 4, 4, 16]");
        shape_err(conv.dgrad(&dy, &w_oihw, None, &mut dx, &mut ws), w_err);
        shape_err(conv.dgrad(&dy, &w, None, &mut t(&[1, 8, 4, 4]), &mut ws), "conv3x3 dx (NHWC)");
        shape_err(conv.dgrad(&dy, &w, Some(&x_nchw), &mut dx, &mut ws), "relu mask (NHWC)");
        let mut dw = f(&[16, 3, 3, 8]);
        shape_err(conv.wgrad(&x_nchw, &dy, &mut dw, None, &mut ws), x_err);
        shape_err(conv.wgrad(&x, &dy_nchw, &mut dw, None, &mut ws), "conv3x3 dy (NHWC)");
        shape_err(conv.wgrad(&x, &dy, &mut f(&[16, 8, 3, 3]), None, &mut ws), "conv3x3 dw (KRSC)");
        shape_err(conv.wgrad(&x, &dy, &mut dw, Some(&mut f(&[1, 16])), &mut ws), "db must have shape [16]");
        // The right shapes still run.
        conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut y, &mut ws).unwrap();
    }
}

/// Region tiling at every window width the launcher can pick (1 x 64 tiles to 64 x 1): each
/// window's copy walks its raw pixels with a per-width stride and row wrap, so each width gets
/// an exact check on integer data (the selftest's shapes all pick width 8). One shape per width
/// fills its windows exactly, one ends a pixel short of them (the copies zero-fill past the
/// image's edge); C = 24 ends in a half chunk.
#[test]
fn region_windows_of_every_width_are_exact() {
    let dev = Device::emu();
    for rw in [1usize, 2, 4, 8, 16, 32, 64] {
        let rh = 64 / rw;
        for p in [ConvProblem::new(2, 2 * rh, 2 * rw, 24, 16), ConvProblem::new(1, 2 * rh - 1, 2 * rw - 1, 24, 8)] {
            let conv = Conv3x3::new(p, ConvAlgo::Winograd2x2).unwrap().with_wino_tiling(WinoTiling::Region);
            assert_eq!(conv.wino_region_width(), rw, "{p}: expected windows {rw} tiles wide");
            let data = problem_data(&p, |len, s| ints(len, 2, s));
            let (want_y, want_dx) = exact_y_dx(&p, &data);
            let (y, dx, _, _) = run_all(&dev, p, (ConvAlgo::Winograd2x2, WinoTiling::Region), &data);
            assert_eq!(zeros_alike(y), zeros_alike(want_y), "{p} region rw={rw}: fprop not exact");
            assert_eq!(zeros_alike(dx), zeros_alike(want_dx), "{p} region rw={rw}: dgrad not exact");
        }
    }
}

/// The kernels' 32-bit index limits, at shapes far too large to allocate on the emulator: only
/// the planning is checked (Conv3x3::new and the tiling choice take shapes, not tensors).
#[test]
fn index_limits_at_large_shapes() {
    use vgg_cuda::problem::vgg16_layers;
    // VGG-16 at 224 px, batch 512: conv1's activations are 1.64G halves (3.3 GB, byte offsets past
    // 2^31, element offsets below it). Every layer plans under Auto and Wgmma.
    for np in vgg16_layers(512) {
        let p = np.problem;
        Conv3x3::new(p, ConvAlgo::Auto).unwrap_or_else(|e| panic!("{}: {e}", np.name));
        if p.c % 8 == 0 {
            Conv3x3::new(p, ConvAlgo::Wgmma).unwrap_or_else(|e| panic!("{}: {e}", np.name));
        }
    }
    // Wgmma's 32-bit element offsets: N H W max(C, K) < 2^31, so conv1_2 (and every VGG-16 layer
    // but the first, whose C is 3) plans up to batch 668; at 669 it is refused by name, as is a
    // tuner's switch of an Auto plan to it.
    let conv1_2 = |n| ConvProblem::new(n, 224, 224, 64, 64);
    Conv3x3::new(conv1_2(668), ConvAlgo::Wgmma).unwrap();
    let msg = "Wgmma needs N*H*W*max(C, K) below 2^31";
    shape_err(Conv3x3::new(conv1_2(669), ConvAlgo::Wgmma), msg);
    let auto = Conv3x3::new(conv1_2(669), ConvAlgo::Auto).unwrap();
    shape_err(auto.with_pass_algo(ConvPass::Fprop, ConvAlgo::Wgmma), msg);
    // Every algorithm's pixel index: N H W < 2^30 (batch 21399 at 224 px).
    Conv3x3::new(conv1_2(21399), ConvAlgo::Auto).unwrap();
    shape_err(Conv3x3::new(conv1_2(21400), ConvAlgo::Auto), "32-bit pixel index");
    // Winograd's region copies use 32-bit offsets within an image of H W max(Cp, K) halves, Cp
    // the channels the padded fprop reads: a 12000 x 12000 image of C = 13 is 1.87G halves, but
    // 2.3G at Cp = 16, so it runs flat.
    let big = ConvProblem::new(1, 12000, 12000, 13, 8);
    let conv = Conv3x3::new(big, ConvAlgo::Winograd2x2).unwrap().with_wino_tiling(WinoTiling::Region);
    assert!(conv.padded(ConvPass::Fprop), "{big}: expected a padded fprop");
    assert_eq!(conv.wino_region_width(), 0, "{big}: region offsets would pass 2^31");
    assert_eq!(conv.label(ConvPass::Fprop), "winograd2x2/flat");
    let fits = ConvProblem::new(1, 11000, 11000, 16, 8); // 1.94G halves: region allowed
    let conv = Conv3x3::new(fits, ConvAlgo::Winograd2x2).unwrap().with_wino_tiling(WinoTiling::Region);
    assert_ne!(conv.wino_region_width(), 0, "{fits}: fits 32 bits, yet runs flat");
}

#[test]
fn shape_errors() {
    // Tensor-core paths need K a multiple of 8 (C is padded); with K not, C < 8 goes to Direct
    // under Auto.
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 12, 12), ConvAlgo::Auto), "K = 12");
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 16, 20), ConvAlgo::Winograd2x2), "K = 20");
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 16, 20), ConvAlgo::Winograd4x4), "K = 20");
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 12, 16), ConvAlgo::Wgmma), "Wgmma needs C a multiple of 8");
    shape_err(Conv3x3::new(ConvProblem::new(1, 0, 4, 8, 8), ConvAlgo::Direct), ">= 1");
    // C near usize::MAX: rounding it up to a multiple of 8 must not overflow (or wrap to 0).
    shape_err(Conv3x3::new(ConvProblem::new(1, 1, 1, usize::MAX - 3, 8), ConvAlgo::Auto), "K*9*Cp");
    // Strides of the F(4x4) loop must fit 32 bits: 6 W C and 36 K C.
    shape_err(Conv3x3::new(ConvProblem::new(1, 1, 1 << 20, 512, 8), ConvAlgo::Auto), "6*W*max(Cp, K)");
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 8192, 8192), ConvAlgo::Auto), "36*K*Cp");
    // The first layer under Auto: implicit GEMMs, wgrad on C padded to 8 in the workspace, fprop
    // and dgrad padding in their kernels (no workspace); under Winograd2x2 fprop padded
    // Winograd, dgrad Direct. C = 12 under Auto: only wgrad padded.
    let p3 = ConvProblem::new(1, 4, 4, 3, 64);
    let first = Conv3x3::new(p3, ConvAlgo::Auto).unwrap();
    let algos = |c: &Conv3x3| [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| (c.algo(q), c.padded(q)));
    let (d, w, g) = (ConvAlgo::Direct, ConvAlgo::Winograd2x2, ConvAlgo::ImplicitGemm);
    assert_eq!(algos(&first), [(g, false), (g, false), (g, true)]);
    assert_eq!(first.workspace_bytes(ConvPass::Fprop), 0);
    assert_eq!(first.workspace_bytes(ConvPass::Dgrad), 0);
    let c12 = Conv3x3::new(ConvProblem::new(1, 4, 4, 12, 16), ConvAlgo::Auto).unwrap();
    assert_eq!(algos(&c12), [(d, false), (d, false), (g, true)]);
    assert_eq!(c12.workspace_bytes(ConvPass::Fprop), 0);
    let c8 = Conv3x3::new(ConvProblem::new(1, 4, 4, 8, 16), ConvAlgo::ImplicitGemm).unwrap();
    assert_eq!(algos(&c8), [(g, false), (g, false), (g, false)]);
    // A checkpoint from before the first layer's dgrad ran the implicit GEMM recorded it Direct:
    // that plan still rebuilds (a resume computes as the run it continues).
    let old = [g, d, g];
    let rebuilt = Conv3x3::from_algos(p3, old, WinoTiling::Auto).unwrap();
    assert_eq!(algos(&rebuilt), [(g, false), (d, false), (g, true)]);
    assert_eq!(c8.workspace_bytes(ConvPass::Fprop), 0);
    shape_err(Conv3x3::new(ConvProblem::new(1, 4, 4, 16, 16), ConvAlgo::ImplicitGemm), "C <= 8");
    let wino = Conv3x3::new(p3, ConvAlgo::Winograd2x2).unwrap();
    assert_eq!(algos(&wino), [(w, true), (d, false), (g, true)]);
    assert_eq!(wino.workspace_bytes(ConvPass::Dgrad), 0);
    // F(4x4): as F(2x2), with 36 transform points of filters in the workspace.
    let w4 = ConvAlgo::Winograd4x4;
    let wino4 = Conv3x3::new(p3, w4).unwrap();
    assert_eq!(algos(&wino4), [(w4, true), (d, false), (g, true)]);
    let c16 = Conv3x3::new(ConvProblem::new(1, 4, 4, 16, 24), w4).unwrap();
    assert_eq!(algos(&c16), [(w4, false), (w4, false), (g, false)]);
    assert_eq!(c16.workspace_bytes(ConvPass::Fprop), 36 * 24 * 16 * 2);
    assert_eq!(c16.workspace_bytes(ConvPass::Dgrad), 36 * 24 * 16 * 2);
    let direct = Conv3x3::new(p3, ConvAlgo::Direct).unwrap();
    assert_eq!(algos(&direct), [(d, false); 3]);
    // A padded pass checks its larger workspace.
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 3]).unwrap();
    let w3 = Tensor::<f16>::zeros(&dev, &[64, 3, 3, 3]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 64]).unwrap();
    let mut dw = Tensor::<f32>::zeros(&dev, &[64, 3, 3, 3]).unwrap();
    let mut ws = Tensor::<u8>::zeros(&dev, &[wino.workspace_bytes(ConvPass::Fprop) - 1]).unwrap();
    shape_err(wino.fprop(&x, &w3, None, Epilogue::None, &mut y, &mut ws), "workspace");
    let mut ws = Tensor::<u8>::zeros(&dev, &[wino.workspace_bytes(ConvPass::Wgrad) - 1]).unwrap();
    shape_err(wino.wgrad(&x, &y, &mut dw, None, &mut ws), "workspace");
    let odd_k = Conv3x3::new(ConvProblem::new(1, 4, 4, 3, 12), ConvAlgo::Auto).unwrap();
    assert_eq!(odd_k.algo(ConvPass::Fprop), ConvAlgo::Direct);
    assert!(Conv3x3::new(ConvProblem::new(1, 4, 4, 12, 12), ConvAlgo::Direct).is_ok());

    let dev = Device::emu();
    let p = ConvProblem::new(1, 4, 4, 8, 16);
    let conv = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let x = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 8]).unwrap();
    let w = Tensor::<f16>::zeros(&dev, &[16, 3, 3, 8]).unwrap();
    let b = Tensor::<f16>::zeros(&dev, &[16]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 16]).unwrap();
    let mut ws = Tensor::<u8>::zeros(&dev, &[conv.workspace_bytes(ConvPass::Fprop)]).unwrap();
    let short_x = Tensor::<f16>::zeros(&dev, &[1, 4, 3, 8]).unwrap();
    shape_err(conv.fprop(&short_x, &w, Some(&b), Epilogue::Bias, &mut y, &mut ws), "conv3x3 x");
    let mut short_y = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 8]).unwrap();
    shape_err(conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut short_y, &mut ws), "conv3x3 y");
    let short_b = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    shape_err(conv.fprop(&x, &w, Some(&short_b), Epilogue::Bias, &mut y, &mut ws), "bias");
    shape_err(conv.fprop(&x, &w, None, Epilogue::BiasRelu, &mut y, &mut ws), "needs a bias");
    shape_err(conv.fprop(&x, &w, Some(&b), Epilogue::None, &mut y, &mut ws), "Epilogue::None");
    let mut small_ws = Tensor::<u8>::zeros(&dev, &[16]).unwrap();
    shape_err(conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut y, &mut small_ws), "workspace");
    let mut dw = Tensor::<f32>::zeros(&dev, &[16, 3, 3, 4]).unwrap();
    shape_err(conv.wgrad(&x, &y, &mut dw, None, &mut ws), "conv3x3 dw");
    let mut dx = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 8]).unwrap();
    shape_err(conv.dgrad(&y, &w, Some(&y), &mut dx, &mut ws), "relu mask");
}

/// A random shape the emulator runs in about a second in every plan: N H W C K at most
/// `SWEEP_BUDGET`, N H W counted as at least 128 (the tensor-core kernels' smallest pixel tile,
/// which a tiny image costs all the same). C and K first, redrawn until such an image fits:
/// mostly multiples of 8 up to 272 (a third block of 128 channels, a second of 256), one C in six
/// and one K in ten not (padded, Direct, or refused). Then the image, redrawn until it fits:
/// mostly up to 40 x 40, one in five a thin image up to 260 wide, half of those at the wgmma
/// halo tile's width limits (193 / 194 at 128 channels a tile, 253 / 254 at 64).
fn random_problem(rng: &mut ShapeRng) -> ConvProblem {
    const SWEEP_BUDGET: usize = 600_000;
    let (c, k) = loop {
        let c = if rng.below(6) == 0 { rng.pick(&[1, 2, 3, 4, 5, 7, 9, 12, 13, 20, 27]) } else { 8 * rng.range(1, 34) };
        let k = if rng.below(10) == 0 { rng.range(1, 40) } else { 8 * rng.range(1, 34) };
        if 128 * c * k <= SWEEP_BUDGET {
            break (c, k);
        }
    };
    loop {
        let (n, h, w) = if rng.below(5) == 0 {
            let edges = [191, 192, 193, 194, 195, 251, 252, 253, 254, 255];
            let w = if rng.below(2) == 0 { rng.pick(&edges) } else { rng.range(40, 260) };
            (rng.range(1, 2), rng.range(1, 3), w)
        } else {
            (rng.range(1, 3), rng.range(1, 40), rng.range(1, 40))
        };
        if (n * h * w).max(128) * c * k <= SWEEP_BUDGET {
            return ConvProblem::new(n, h, w, c, k);
        }
    }
}

/// Whether [`ConvAlgo`]'s docs promise that `Conv3x3::new(p, algo)` plans `p`.
fn promised(p: &ConvProblem, algo: ConvAlgo) -> bool {
    let k8 = p.k.is_multiple_of(8);
    match algo {
        ConvAlgo::Direct => true,
        ConvAlgo::Auto => k8 || p.c < 8,
        ConvAlgo::Winograd2x2 | ConvAlgo::Winograd4x4 => k8,
        ConvAlgo::ImplicitGemm => k8 && p.c <= 8,
        ConvAlgo::Wgmma => k8 && p.c.is_multiple_of(8),
    }
}

/// The first few differences between `got` and `want`, or None when they are equal.
fn mismatches<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T]) -> Option<String> {
    let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    let show: Vec<String> = bad.iter().take(5).map(|&i| format!("[{i}] {:?} != {:?}", got[i], want[i])).collect();
    (!bad.is_empty()).then(|| format!("{} of {} differ: {}", bad.len(), want.len(), show.join(", ")))
}

/// Every plan of `p` against the f64 reference on small integers, bit for bit: fprop under each
/// epilogue, dgrad with and without the ReLU mask, wgrad (dw and db). Each distinct plan (the
/// kernels its labels name) runs once, however many (algorithm, tiling) pairs reach it. Returns
/// the plans run.
fn check_every_plan(dev: &Device, p: ConvProblem, seed: u64) -> usize {
    let lens = [p.input_len(), p.filter_len(), p.k, p.output_len()];
    let [x, w, b, dy] = [0, 1, 2, 3].map(|i| ints(lens[i], 2, seed.wrapping_mul(8) | i as u64));
    let mask = ints(p.input_len(), 1, seed.wrapping_mul(8) | 4); // -1, 0 or 1: two thirds of dx masked off
    let f16_bits = |v: Vec<f32>| zeros_alike(v.into_iter().map(|v| f16::from_f32(v).to_bits()).collect());
    let f32_bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let want_y = [(None, false), (Some(&b[..]), false), (Some(&b[..]), true)]
        .map(|(bias, relu)| f16_bits(r::conv3x3_fprop(&p, &x, &w, bias, relu)));
    let dx = r::conv3x3_dgrad(&p, &dy, &w);
    let want_dx = [f16_bits(dx.clone()), f16_bits(r::relu_bwd(&mask, &dx))];
    let (want_dw, want_db) = r::conv3x3_wgrad(&p, &x, &dy);
    let (want_dw, want_db) = (f32_bits(want_dw), f32_bits(want_db));

    let up = |shape: &[usize], v: &[f32]| Tensor::from_f32(dev, shape, v).unwrap();
    let (xs, ys) = ([p.n, p.h, p.w, p.c], [p.n, p.h, p.w, p.k]);
    let (xt, wt, bt, dyt, mt) = (up(&xs, &x), up(&[p.k, 3, 3, p.c], &w), up(&[p.k], &b), up(&ys, &dy), up(&xs, &mask));
    let got16 = |t: &Tensor<f16>| zeros_alike(t.to_host().unwrap().iter().map(|v| v.to_bits()).collect());
    let got32 = |t: &Tensor<f32>| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let passes = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad];
    let mut plans = std::collections::HashSet::new();
    for algo in [
        ConvAlgo::Direct,
        ConvAlgo::Winograd2x2,
        ConvAlgo::Winograd4x4,
        ConvAlgo::Auto,
        ConvAlgo::ImplicitGemm,
        ConvAlgo::Wgmma,
    ] {
        let planned = Conv3x3::new(p, algo);
        assert_eq!(
            planned.is_ok(),
            promised(&p, algo),
            "{p} {algo:?}: new() gave {planned:?}, against ConvAlgo's docs"
        );
        let Ok(conv) = planned else { continue };
        for tiling in [
            WinoTiling::Flat,
            WinoTiling::Region,
            WinoTiling::Auto,
            WinoTiling::Tall,
            WinoTiling::Swizzled,
            WinoTiling::Tma,
            WinoTiling::TmaTall,
            WinoTiling::TmaWs,
            WinoTiling::TmaMc,
        ] {
            let conv = conv.with_wino_tiling(tiling);
            let labels = passes.map(|q| (conv.label(q), conv.algo(q), conv.padded(q)));
            if !plans.insert(format!("{labels:?}")) {
                continue;
            }
            let what = |q: ConvPass| format!("{p} {algo:?}/{tiling:?} {q:?} ({})", conv.label(q));
            let ws = |q| selftest::GuardedWorkspace::new(dev, conv.workspace_bytes(q)).unwrap();
            for (epi, want) in [Epilogue::None, Epilogue::Bias, Epilogue::BiasRelu].into_iter().zip(&want_y) {
                let (mut y, mut g) = (Tensor::empty(dev, &ys).unwrap(), ws(ConvPass::Fprop));
                y.poison().unwrap();
                let bias = (epi != Epilogue::None).then_some(&bt);
                conv.fprop(&xt, &wt, bias, epi, &mut y, &mut g.ws).unwrap();
                g.check(&what(ConvPass::Fprop)).unwrap();
                let bad = mismatches(&got16(&y), want);
                assert!(bad.is_none(), "{} {epi:?}: y not exact: {}", what(ConvPass::Fprop), bad.unwrap());
            }
            for (mask, want) in [None, Some(&mt)].into_iter().zip(&want_dx) {
                let (mut dx, mut g) = (Tensor::empty(dev, &xs).unwrap(), ws(ConvPass::Dgrad));
                dx.poison().unwrap();
                conv.dgrad(&dyt, &wt, mask, &mut dx, &mut g.ws).unwrap();
                g.check(&what(ConvPass::Dgrad)).unwrap();
                let bad = mismatches(&got16(&dx), want);
                assert!(
                    bad.is_none(),
                    "{} mask {}: dx not exact: {}",
                    what(ConvPass::Dgrad),
                    mask.is_some(),
                    bad.unwrap()
                );
            }
            let mut dw = Tensor::<f32>::empty(dev, &[p.k, 3, 3, p.c]).unwrap();
            let (mut db, mut g) = (Tensor::<f32>::empty(dev, &[p.k]).unwrap(), ws(ConvPass::Wgrad));
            dw.poison().unwrap();
            db.poison().unwrap();
            conv.wgrad(&xt, &dyt, &mut dw, Some(&mut db), &mut g.ws).unwrap();
            g.check(&what(ConvPass::Wgrad)).unwrap();
            let bad = mismatches(&got32(&dw), &want_dw).or_else(|| mismatches(&got32(&db), &want_db));
            assert!(bad.is_none(), "{}: dw / db not exact: {}", what(ConvPass::Wgrad), bad.unwrap());
        }
    }
    plans.len()
}

/// Random shapes, exact in every plan. The fixed lists above each put one boundary under test
/// (a ragged tile of pixels, of channels, a window width, a halo width limit); a bug that needs
/// two at once (a ragged last pixel tile in the second block of output channels of a thin image)
/// falls between them, and a random draw reaches such combinations. The draw is seeded, so a
/// failure names a shape that fails again. A bigger sweep (300 shapes in about 8 minutes):
/// `VGG_SWEEP=300 VGG_SWEEP_SEED=7 cargo test --release --test conv random_shapes -- --nocapture`.
#[test]
fn random_shapes_are_exact_in_every_algorithm() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (count, seed) = (env("VGG_SWEEP", 10), env("VGG_SWEEP_SEED", 1));
    let mut rng = ShapeRng(SampleRng::new(seed));
    let dev = Device::emu();
    for i in 0..count {
        let p = random_problem(&mut rng);
        let plans = check_every_plan(&dev, p, (seed << 20).wrapping_add(i));
        eprintln!("sweep seed {seed} #{i}: {p}, {plans} plans exact");
    }
}

/// The first-layer implicit GEMMs (fprop; dgrad with the ReLU mask) are exact on small integers
/// where the selftest's list is thin: several images with several column tiles (70 wide: three
/// 32-column tiles, the last ragged), K over 64 (136 and 200: channel blocks and dgrad chunks,
/// the last partly empty), C = 1, 7 and 8, and images one pixel tall or wide.
#[test]
fn first_layer_implicit_gemms_exact_on_ragged_shapes() {
    let dev = Device::emu();
    let shapes = [
        ConvProblem::new(3, 17, 70, 3, 136),
        ConvProblem::new(2, 9, 33, 8, 8),
        ConvProblem::new(2, 1, 65, 1, 64),
        ConvProblem::new(3, 2, 1, 7, 200),
    ];
    for (i, p) in shapes.into_iter().enumerate() {
        let seed = 77 + 10 * i as u64;
        let (x, w, dy) =
            (ints(p.input_len(), 2, seed), ints(p.filter_len(), 2, seed + 1), ints(p.output_len(), 2, seed + 2));
        let mask = ints(p.input_len(), 1, seed + 3);
        let conv = Conv3x3::new(p, ConvAlgo::ImplicitGemm).unwrap();
        assert_eq!([conv.algo(ConvPass::Fprop), conv.algo(ConvPass::Dgrad)], [ConvAlgo::ImplicitGemm; 2]);
        let t = |shape: &[usize], v: &[f32]| Tensor::from_f32(&dev, shape, v).unwrap();
        let (xt, wt) = (t(&[p.n, p.h, p.w, p.c], &x), t(&[p.k, 3, 3, p.c], &w));
        let (dyt, mt) = (t(&[p.n, p.h, p.w, p.k], &dy), t(&[p.n, p.h, p.w, p.c], &mask));
        let bytes = conv.workspace_bytes(ConvPass::Fprop).max(conv.workspace_bytes(ConvPass::Dgrad));
        let mut ws = Tensor::<u8>::zeros(&dev, &[bytes.max(16)]).unwrap();
        let mut y = Tensor::empty(&dev, &[p.n, p.h, p.w, p.k]).unwrap();
        y.poison().unwrap();
        conv.fprop(&xt, &wt, None, Epilogue::None, &mut y, &mut ws).unwrap();
        let want = r::f32_to_f16_round(&r::conv3x3_fprop(&p, &x, &w, None, false));
        assert_eq!(y.to_f32().unwrap(), want, "{p} fprop");
        let mut dx = Tensor::empty(&dev, &[p.n, p.h, p.w, p.c]).unwrap();
        dx.poison().unwrap();
        conv.dgrad(&dyt, &wt, Some(&mt), &mut dx, &mut ws).unwrap();
        let want = r::f32_to_f16_round(&r::relu_bwd(&mask, &r::conv3x3_dgrad(&p, &dy, &w)));
        assert_eq!(dx.to_f32().unwrap(), want, "{p} dgrad");
    }
}
