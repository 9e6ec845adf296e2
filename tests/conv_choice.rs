//! Choosing the Winograd variant per pass: `Conv3x3::with_pass_algo`, the timing tuner
//! (`ops::conv_tune`) and a model's conv policy (`Vgg::set_conv_choice`), on the emu device.

use rand::{Rng, SeedableRng};
use vgg_cuda::model::reference::HostVgg;
use vgg_cuda::model::{Arch, ConvChoice, Init, MemoryPlan, OptimConfig, Sharing, Vgg, VggConfig};
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use vgg_cuda::ops::conv_tune::{tune, tune_within, WinoVariant, AGREEMENT};
use vgg_cuda::problem::ConvProblem;
use vgg_cuda::{reference as r, Device, Error, Tensor};

const F2: ConvAlgo = ConvAlgo::Winograd2x2;
const F4: ConvAlgo = ConvAlgo::Winograd4x4;

#[test]
fn with_pass_algo_switches_only_winograd_passes() {
    let p = ConvProblem::new(1, 6, 6, 16, 24);
    let auto = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let c = auto.with_pass_algo(ConvPass::Dgrad, F4).unwrap();
    assert_eq!([c.algo(ConvPass::Fprop), c.algo(ConvPass::Dgrad)], [F2, F4]);
    // Workspace per pass follows that pass's variant: 16 or 36 points of K x C filters, F(2x2)'s
    // in mma fragment blocks of 32 outputs x 16 inputs (K = 24 padded to 32).
    assert_eq!(c.workspace_bytes(ConvPass::Fprop), 16 * 32 * 16 * 2);
    assert_eq!(c.workspace_bytes(ConvPass::Dgrad), 36 * 24 * 16 * 2);
    let bad = |r: vgg_cuda::Result<Conv3x3>, needle: &str| match r {
        Err(Error::Shape(m)) => assert!(m.contains(needle), "`{m}` lacks `{needle}`"),
        other => panic!("expected a shape error with `{needle}`, got {other:?}"),
    };
    bad(auto.with_pass_algo(ConvPass::Wgrad, F4), "Wgrad");
    bad(auto.with_pass_algo(ConvPass::Fprop, ConvAlgo::Direct), "Direct");
    // The first layer's dgrad is the implicit GEMM under Auto: not a Winograd pass.
    let first = Conv3x3::new(ConvProblem::new(1, 6, 6, 3, 16), ConvAlgo::Auto).unwrap();
    bad(first.with_pass_algo(ConvPass::Dgrad, F4), "runs ImplicitGemm");
    // wgmma: for a Winograd fprop / dgrad and an ImplicitGemm wgrad, and back; not with C padded
    // (C = 12: Winograd fprop on 16 padded channels), and wgrad not to Winograd.
    let wg = ConvAlgo::Wgmma;
    let c = auto.with_pass_algo(ConvPass::Fprop, wg).unwrap().with_pass_algo(ConvPass::Wgrad, wg).unwrap();
    assert_eq!([ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| c.algo(q)), [wg, F2, wg]);
    assert_eq!(c.with_pass_algo(ConvPass::Fprop, F4).unwrap().algo(ConvPass::Fprop), F4);
    assert_eq!(
        c.with_pass_algo(ConvPass::Wgrad, ConvAlgo::ImplicitGemm).unwrap().label(ConvPass::Wgrad),
        "igemm/64x256"
    );
    // wgmma's wgrad: over the padded positions (3 taps x 64 channels a block for C = 16), or flat.
    assert_eq!(c.label(ConvPass::Wgrad), "wgmma/halo128x192");
    assert_eq!(c.with_wino_tiling(WinoTiling::Flat).label(ConvPass::Wgrad), "wgmma/128x256");
    bad(c.with_pass_algo(ConvPass::Wgrad, F2), "Wgrad");
    let padded = Conv3x3::new(ConvProblem::new(1, 6, 6, 12, 16), ConvAlgo::Auto).unwrap();
    bad(padded.with_pass_algo(ConvPass::Fprop, wg), "Wgmma");
}

/// Where K > 128, TmaMc names a wgrad of its own (the TMA wgrad in clusters sharing X): the tuner
/// times `wgmma/tma-mc` for wgrad too, and a TmaMc fprop or dgrad then goes only with that wgrad or
/// a tiling-free one, never with the Region wgrad it would no longer run.
#[test]
fn tune_times_the_multicast_wgrad_where_k_exceeds_128() {
    let dev = Device::emu();
    let p = ConvProblem::new(1, 5, 6, 16, 136);
    let t = tune(&dev, Conv3x3::new(p, ConvAlgo::Auto).unwrap(), 1).unwrap();
    let wgrad: Vec<WinoVariant> = t.timings.iter().filter(|x| x.pass == ConvPass::Wgrad).map(|x| x.variant).collect();
    let want = [
        WinoVariant::Igemm,
        WinoVariant::Wgmma,
        WinoVariant::WgmmaFlat,
        WinoVariant::WgmmaTmaMc,
        WinoVariant::WgmmaTmaWs,
    ];
    assert_eq!(wgrad, want, "{:?}", t.timings);
    let [f, d, g] = t.chosen;
    let mc = Some(WinoVariant::WgmmaTmaMc);
    assert!(!((f == mc || d == mc) && g == Some(WinoVariant::Wgmma)), "{:?}", t.chosen);
    let label = t.conv.label(ConvPass::Wgrad);
    assert_eq!(label.ends_with("/tma-mc"), g == mc, "{:?}: {label}", t.chosen);
    // Under TmaMc the wgrad is the clusters' kernel.
    let c = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::TmaMc);
    assert_eq!(c.label(ConvPass::Wgrad), "wgmma/halo128x192/tma-mc");
}

#[test]
fn tune_keeps_the_fastest_combination_one_plan_can_hold() {
    let dev = Device::emu();
    let p = ConvProblem::new(2, 9, 13, 16, 24);
    let base = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let t = tune(&dev, base, 1).unwrap();
    // The emulator has wgmma and clusters: fprop and dgrad under the 3 Winograd variants and wgmma's
    // nine tiles (halo, flat, tall, swizzled halo, TMA halo, tall TMA halo, warp-specialised TMA
    // halo, that in clusters of 2 sharing the filters, 2-D TMA),
    // wgrad under the mma.sync and the wgmma implicit GEMM (halo, flat, warp-specialised TMA halo, 2-D TMA).
    let fd: Vec<WinoVariant> = WinoVariant::ALL
        .into_iter()
        .chain([
            WinoVariant::Wgmma,
            WinoVariant::WgmmaFlat,
            WinoVariant::WgmmaTall,
            WinoVariant::WgmmaSwizzled,
            WinoVariant::WgmmaTma,
            WinoVariant::WgmmaTmaTall,
            WinoVariant::WgmmaTmaWs,
            WinoVariant::WgmmaTmaMc,
            WinoVariant::WgmmaTma2d,
        ])
        .collect();
    // K 24 <= 64: the 2-D TMA tiling has a wgrad of its own (all 9 taps a block), timed as well.
    let wgrad = [
        WinoVariant::Igemm,
        WinoVariant::Wgmma,
        WinoVariant::WgmmaFlat,
        WinoVariant::WgmmaTmaWs,
        WinoVariant::WgmmaTma2d,
    ];
    assert_eq!(t.timings.len(), 2 * fd.len() + wgrad.len(), "{:?}", t.timings);
    assert!(t.timings.iter().all(|x| x.ms > 0.0 && x.ms.is_finite()), "{:?}", t.timings);
    // Every variant computes the convolution on emu: each agrees with the base plan.
    assert!(t.timings.iter().all(|x| x.rel_l2 <= AGREEMENT), "{:?}", t.timings);
    // Recompute the rule from the reported times: the least fprop + dgrad + wgrad over the
    // triples that do not mix a flat tiling (F(2x2) or wgmma) with a region one (F(2x2) region,
    // wgmma's halo kernels) or a tall, swizzled or TMA one (wgmma's fprop / dgrad tiles, beside which
    // the halo wgrad runs as under Region; but TmaWs has a wgrad tile of its own).
    let time = |pass, v| t.timings.iter().find(|x| x.pass == pass && x.variant == v).unwrap().ms;
    let tiling = |v: WinoVariant| match v {
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
    };
    let mut best = (f64::INFINITY, None);
    for &f in &fd {
        for &d in &fd {
            for g in wgrad {
                let only_fd = [f, d].iter().any(|v| {
                    matches!(
                        v,
                        WinoVariant::WgmmaTall
                            | WinoVariant::WgmmaSwizzled
                            | WinoVariant::WgmmaTma
                            | WinoVariant::WgmmaTmaTall
                            | WinoVariant::WgmmaTmaMc
                    )
                });
                let g_tiling = if only_fd && g == WinoVariant::Wgmma { None } else { tiling(g) };
                let ts: Vec<WinoTiling> = [tiling(f), tiling(d), g_tiling].into_iter().flatten().collect();
                if ts.windows(2).any(|w| w[0] != w[1]) {
                    continue;
                }
                let cost = time(ConvPass::Fprop, f) + time(ConvPass::Dgrad, d) + time(ConvPass::Wgrad, g);
                if cost < best.0 {
                    best = (cost, Some([f, d, g]));
                }
            }
        }
    }
    let [f, d, g] = best.1.unwrap();
    assert_eq!(t.chosen, [Some(f), Some(d), Some(g)]);
    let algo = |v: WinoVariant| match v {
        WinoVariant::F4 => F4,
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
        _ => F2,
    };
    let algos = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| t.conv.algo(q));
    assert_eq!(algos, [algo(f), algo(d), algo(g)]);
    if let Some(want) = [f, d, g].into_iter().find_map(tiling) {
        assert_eq!(t.conv.wino_tiling(), want);
    }
    // Each wgmma pass runs the kernel it was timed with.
    for (pass, v) in [(ConvPass::Fprop, f), (ConvPass::Dgrad, d), (ConvPass::Wgrad, g)] {
        match v {
            WinoVariant::Wgmma => assert!(t.conv.label(pass).starts_with("wgmma/halo"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaFlat => assert!(t.conv.label(pass).starts_with("wgmma/128x"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaTall => {
                assert!(t.conv.label(pass).starts_with("wgmma/halo512"), "{}", t.conv.label(pass))
            }
            WinoVariant::WgmmaSwizzled => assert!(t.conv.label(pass).ends_with("/sw128"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaTma => {
                assert!(t.conv.label(pass).starts_with("wgmma/halo256") && t.conv.label(pass).ends_with("/tma"))
            }
            WinoVariant::WgmmaTmaTall => assert!(t.conv.label(pass).ends_with("512x64/tma"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaTmaWs => assert!(t.conv.label(pass).ends_with("/tma-ws"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaTmaMc => assert!(t.conv.label(pass).ends_with("/tma-mc"), "{}", t.conv.label(pass)),
            WinoVariant::WgmmaTma2d => assert!(t.conv.label(pass).ends_with("/tma-2d"), "{}", t.conv.label(pass)),
            _ => {}
        }
    }
    // The tuned plan computes the convolution (within the Winograd bound).
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut normal = |n: usize| -> Vec<f32> {
        r::f32_to_f16_round(&(0..n).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect::<Vec<_>>())
    };
    let (xv, wv) = (normal(p.input_len()), normal(p.filter_len()));
    let x = Tensor::from_f32(&dev, &[p.n, p.h, p.w, p.c], &xv).unwrap();
    let w = Tensor::from_f32(&dev, &[p.k, 3, 3, p.c], &wv).unwrap();
    let mut y = Tensor::empty(&dev, &[p.n, p.h, p.w, p.k]).unwrap();
    y.poison().unwrap();
    let mut ws = Tensor::<u8>::empty(&dev, &[t.conv.workspace_bytes(ConvPass::Fprop)]).unwrap();
    t.conv.fprop(&x, &w, None, Epilogue::None, &mut y, &mut ws).unwrap();
    let c = r::compare(&y.to_f32().unwrap(), &r::conv3x3_fprop(&p, &xv, &wv, None, false));
    assert!(c.rel_l2 <= 3e-3, "tuned fprop rel L2 {:.2e}", c.rel_l2);
}

#[test]
fn tune_never_chooses_a_variant_that_disagrees_with_the_base_plan() {
    let dev = Device::emu();
    let p = ConvProblem::new(2, 9, 13, 16, 24);
    let base = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    // Tolerance 0: only outputs bit-identical to base's (F(2x2), the mma.sync wgrad) qualify;
    // F(4x4)'s transforms round differently, so it disagrees and is never chosen, however fast.
    let t = tune_within(&dev, base, 1, 0.0).unwrap();
    let rel = |pass, v| t.timings.iter().find(|x| x.pass == pass && x.variant == v).unwrap().rel_l2;
    for pass in [ConvPass::Fprop, ConvPass::Dgrad] {
        assert!(rel(pass, WinoVariant::F4) > 0.0, "{pass:?}: F(4x4) bit-identical to F(2x2)?");
        assert!(rel(pass, WinoVariant::F4) <= AGREEMENT, "{pass:?}: F(4x4) off by {}", rel(pass, WinoVariant::F4));
    }
    for (pass, v) in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].into_iter().zip(t.chosen) {
        if let Some(v) = v {
            assert_eq!(rel(pass, v), 0.0, "{pass:?}: chose {v:?}, which disagrees");
        }
    }
    assert!(t.chosen[..2].iter().all(|&v| v != Some(WinoVariant::F4)), "{:?}", t.chosen);
}

#[test]
fn with_batch_keeps_the_plan_for_fewer_images_only() {
    let p = ConvProblem::new(4, 6, 6, 16, 24);
    let c = Conv3x3::new(p, ConvAlgo::Wgmma).unwrap().with_wino_tiling(WinoTiling::Flat);
    let one = c.with_batch(1).unwrap();
    assert_eq!(one.problem(), ConvProblem::new(1, 6, 6, 16, 24));
    for q in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad] {
        assert_eq!((one.algo(q), one.label(q)), (c.algo(q), c.label(q)), "{q:?}");
    }
    for n in [0, 5] {
        match c.with_batch(n) {
            Err(Error::Shape(m)) => assert!(m.contains("with_batch"), "{m}"),
            other => panic!("with_batch({n}): {other:?}"),
        }
    }
}

#[test]
fn tune_leaves_a_plan_without_winograd_passes_alone() {
    let dev = Device::emu();
    // C = 3: the implicit GEMM for all three passes.
    let base = Conv3x3::new(ConvProblem::new(1, 6, 7, 3, 16), ConvAlgo::Auto).unwrap();
    let t = tune(&dev, base, 1).unwrap();
    assert!(t.timings.is_empty());
    assert_eq!(t.chosen, [None; 3]);
    let algos = |c: &Conv3x3| [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| c.algo(q));
    assert_eq!(algos(&t.conv), algos(&base));
}

fn small() -> VggConfig {
    VggConfig { dropout: 0.0, ..VggConfig::small(Arch::A, 0.125, 32, 32, 5) }
}

/// The first training step on a fixed batch: its loss, every parameter's gradient (of the
/// loss-scaled loss), and the host twin's gradients of the same step (fp16 stores mirrored),
/// routed by the step's own activations: every ReLU mask and max-pool argmax as the device
/// decided it, so that only the conv kernels' arithmetic separates the two.
fn first_step(vgg: &mut Vgg, cfg: &VggConfig, dev: &Device) -> (f32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let batch = vgg.batch();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let px: Vec<u8> = (0..batch * cfg.input * cfg.input * 3).map(|_| rng.gen()).collect();
    let labels: Vec<i32> = (0..batch).map(|_| rng.gen_range(0..cfg.classes as i32)).collect();
    let x = Tensor::from_host(dev, &[batch, cfg.input, cfg.input, 3], &px).unwrap();
    let y = Tensor::from_host(dev, &[batch], &labels).unwrap();
    let params16: Vec<Vec<f32>> = vgg.params().iter().map(|p| p.h.to_f32().unwrap()).collect();
    let scale = vgg.loss_scale();
    vgg.keep_trace(true);
    let st = vgg.train_step(&x, &y, 1e-3, 0).unwrap();
    assert!(!st.skipped, "the step overflowed");
    let host = HostVgg { cfg: cfg.clone(), batch, round16: true, seeds: [vgg.dropout_seed(0), vgg.dropout_seed(1)] };
    let (_, want) = host.grads(&params16, &px, &labels, 0, scale, Some(&vgg.trace().unwrap()));
    (st.loss, vgg.params().iter().map(|p| p.g.to_host().unwrap()).collect(), want)
}

#[test]
fn model_conv_choice_replans_layers_and_memory() {
    let dev = Device::emu();
    let cfg = small();
    // A loss scale at which this net's steps apply (its fp16 gradients overflow at 65536).
    let o = OptimConfig { init_scale: 256.0, ..Default::default() };
    let mut auto = Vgg::with_optim(&dev, cfg.clone(), 2, Init::He, 4, o).unwrap();
    let (want_loss, ..) = first_step(&mut auto, &cfg, &dev);
    let all = [
        ConvChoice::Auto,
        ConvChoice::Winograd2x2,
        ConvChoice::Winograd4x4,
        ConvChoice::Tune,
        ConvChoice::Direct,
        ConvChoice::Wgmma,
        ConvChoice::Hopper,
    ];
    for choice in all {
        let mut vgg = Vgg::with_optim(&dev, cfg.clone(), 2, Init::He, 4, o).unwrap();
        let layers = vgg.set_conv_choice(choice, 1).unwrap();
        assert_eq!(layers.len(), cfg.features().iter().filter(|f| f.is_conv()).count());
        // The first layer (3 channels) keeps its implicit GEMMs (Direct under Direct); the others
        // run the variant asked for in both passes (Tune: a Winograd variant or wgmma).
        let want = match choice {
            ConvChoice::Auto | ConvChoice::Winograd2x2 => F2,
            ConvChoice::Winograd4x4 => F4,
            ConvChoice::Direct => ConvAlgo::Direct,
            ConvChoice::Wgmma | ConvChoice::Hopper => ConvAlgo::Wgmma,
            ConvChoice::Tune => ConvAlgo::Auto, // checked below
        };
        let first = if choice == ConvChoice::Direct { ConvAlgo::Direct } else { ConvAlgo::ImplicitGemm };
        assert_eq!([layers[0].fprop(), layers[0].dgrad()], [first; 2], "{choice:?}");
        for l in &layers[1..] {
            for a in [l.fprop(), l.dgrad()] {
                let tuned = choice == ConvChoice::Tune && [F2, F4, ConvAlgo::Wgmma].contains(&a);
                assert!(a == want || tuned, "{choice:?}: {}", l.summary());
            }
        }
        if choice == ConvChoice::Direct {
            let plans = vgg.conv_plans();
            assert!(plans.iter().flatten().all(|c| c.algo(ConvPass::Wgrad) == ConvAlgo::Direct));
        }
        // What the model allocated is the plan of its (new) conv plans.
        let plan = MemoryPlan::with_convs(&cfg, 2, Sharing::Lifetimes, &vgg.conv_plans()).unwrap();
        assert_eq!(vgg.device_bytes(), plan.total(), "{choice:?}");
        // Same weights and batch, other variants: the loss differs from Auto's by the variants'
        // fp16 error compounded over 8 layers (measured: 0.9% for F(4x4)).
        let (loss, g, want_g) = first_step(&mut vgg, &cfg, &dev);
        assert!((loss - want_loss).abs() <= 3e-2 * want_loss, "{choice:?}: loss {loss} vs auto {want_loss}");
        // The gradients are compared with the host twin routed by the same step's activations,
        // not with Auto's: between two variants they differ up to 18% relative L2 (the same
        // at loss scales 256 to 8192, while each F(4x4) dgrad alone is within 2.2e-3 of the
        // reference), because ReLU masks and max-pool windows on near-ties decide
        // differently and a flip moves a whole gradient element. Routed, what is left is the
        // kernels' fp16 arithmetic: see GRAD_REL.
        let f4 = layers.iter().any(|l| l.fprop() == F4 || l.dgrad() == F4);
        let bound = if f4 { GRAD_REL_F4 } else { GRAD_REL };
        let mut worst = 0f64;
        for (t, (a, b)) in g.iter().zip(&want_g).enumerate() {
            let c = r::compare(a, b);
            worst = worst.max(c.rel_l2);
            assert!(
                c.rel_l2 <= bound,
                "{choice:?} {}: gradient vs the routed host twin: rel L2 {:.2e} > {bound:.1e}",
                vgg.params()[t].name,
                c.rel_l2
            );
        }
        eprintln!(
            "{choice:?}: loss {loss} (auto {want_loss}); gradients vs routed host twin: worst rel L2 {worst:.2e}"
        );
    }
    assert!(ConvChoice::parse("winograd8x8").unwrap_err().to_string().contains("unknown conv algorithm"));
}

/// Hopper's rule on VGG-16's channel counts (at half width, 32 px: C from 3 to 256): wgmma fprop
/// and dgrad wherever Auto runs Winograd, the wgmma wgrad exactly where also 128 <= C <= 256,
/// Auto's plan elsewhere, with the workspaces those plans need.
#[test]
fn hopper_runs_wgmma_where_run_5_measured_it_faster() {
    let dev = Device::emu();
    let cfg = VggConfig { dropout: 0.0, ..VggConfig::small(Arch::D, 0.5, 32, 32, 5) };
    let mut vgg = Vgg::new(&dev, cfg.clone(), 1, Init::He, 4).unwrap();
    let auto = vgg.set_conv_choice(ConvChoice::Auto, 1).unwrap();
    let hopper = vgg.set_conv_choice(ConvChoice::Hopper, 1).unwrap();
    let mut wgmma_wgrads = vec![];
    for (a, h) in auto.iter().zip(&hopper) {
        let p = h.conv.problem();
        let wino = a.conv.algo(ConvPass::Fprop) == F2;
        for q in [ConvPass::Fprop, ConvPass::Dgrad] {
            let want = if wino { ConvAlgo::Wgmma } else { a.conv.algo(q) };
            assert_eq!(h.conv.algo(q), want, "{p} {q:?}");
        }
        let wgrad = h.conv.algo(ConvPass::Wgrad);
        if wino && (128..=256).contains(&p.c) {
            assert_eq!(wgrad, ConvAlgo::Wgmma, "{p}");
            wgmma_wgrads.push(p.c);
        } else {
            assert_eq!(wgrad, a.conv.algo(ConvPass::Wgrad), "{p}");
        }
    }
    // conv1_1 (3 channels) keeps Auto's plan; conv3_2 to conv5_3 (C 128 or 256) take the wgmma
    // wgrad, conv1_2 to conv3_1 (C 32 or 64) keep the mma.sync one.
    assert!(auto[0].conv.algo(ConvPass::Fprop) != F2 && hopper[0].conv.algo(ConvPass::Fprop) != ConvAlgo::Wgmma);
    assert_eq!(wgmma_wgrads, [128, 128, 128, 256, 256, 256, 256, 256]);
    let plan = MemoryPlan::with_convs(&cfg, 1, Sharing::Lifetimes, &vgg.conv_plans()).unwrap();
    assert_eq!(vgg.device_bytes(), plan.total());
    assert_eq!(ConvChoice::parse("hopper").unwrap(), ConvChoice::Hopper);
}

/// A step's gradients vs the host twin routed by the same step (relative L2, per tensor), where
/// no pass runs F(4x4). Measured worst: 2.7e-3 (Auto and F(2x2), features.0.bias), 1.7e-3
/// (Direct, wgmma, sm_89's Direct mix); bound ~4x. A 0.95 scale planted on one conv's dgrad
/// puts every layer below it 5e-2 off.
const GRAD_REL: f64 = 1.2e-2;
/// The same where some pass runs F(4x4), whose transforms round ~4x F(2x2)'s: measured 1.03e-2
/// (features.0.bias; Tune with one F(4x4) layer 5.9e-3); bound ~4x.
const GRAD_REL_F4: f64 = 4e-2;

/// Every plan `new` and `with_pass_algo` can make, and `fitted_to` a GPU with less shared
/// memory, is rebuilt by `from_algos` from its per-pass algorithms and tiling (what a checkpoint
/// records), with the same kernels and workspaces; a combination no plan runs is a shape error.
#[test]
fn from_algos_rebuilds_every_plan_and_only_those() {
    use ConvAlgo::*;
    const PASSES: [ConvPass; 3] = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad];
    let all = [Auto, Direct, Winograd2x2, Winograd4x4, ImplicitGemm, Wgmma];
    let tilings = [WinoTiling::Auto, WinoTiling::Flat, WinoTiling::Region, WinoTiling::Tall, WinoTiling::Swizzled];
    // Winograd and wgmma, the first layer, C padded (12), K not a multiple of 8.
    let problems = [(2, 6, 6, 16, 24), (1, 6, 6, 3, 16), (1, 5, 7, 12, 16), (1, 4, 4, 3, 5)];
    let (mut rebuilt, mut mixed) = (0, 0);
    for (n, h, w, c, k) in problems {
        let p = ConvProblem::new(n, h, w, c, k);
        // Every plan reachable by switching passes one at a time (each algorithm set once).
        let mut plans: Vec<Conv3x3> = all.iter().filter_map(|&a| Conv3x3::new(p, a).ok()).collect();
        let mut i = 0;
        while i < plans.len() {
            for pass in PASSES {
                for a in all {
                    let Ok(next) = plans[i].with_pass_algo(pass, a) else { continue };
                    if !plans.iter().any(|q| PASSES.map(|x| q.algo(x)) == PASSES.map(|x| next.algo(x))) {
                        plans.push(next);
                    }
                }
            }
            i += 1;
        }
        // Fitted to sm_89's 99 KiB (Winograd and the larger wgrad tiles on Direct) and to none.
        let small: Vec<Device> = [99 * 1024, 0]
            .map(|l| {
                let d = Device::emu();
                d.set_emu_shared_limit(l);
                d
            })
            .into();
        let fitted: Vec<Conv3x3> = plans.iter().flat_map(|c| small.iter().map(|d| c.fitted_to(d))).collect();
        mixed += fitted.iter().filter(|c| PASSES.map(|q| c.algo(q)) == [Direct, Direct, ImplicitGemm]).count();
        for plan in plans.into_iter().chain(fitted) {
            for t in tilings {
                let plan = plan.with_wino_tiling(t);
                let got = Conv3x3::from_algos(p, PASSES.map(|q| plan.algo(q)), t).unwrap();
                for q in PASSES {
                    assert_eq!(got.algo(q), plan.algo(q), "{p} {q:?}");
                    assert_eq!(got.label(q), plan.label(q), "{p} {q:?}");
                    assert_eq!(got.workspace_bytes(q), plan.workspace_bytes(q), "{p} {q:?}");
                }
                assert_eq!(got.wino_tiling(), t);
                rebuilt += 1;
            }
        }
    }
    assert!(rebuilt >= 60, "only {rebuilt} plans tried");
    assert!(mixed > 0, "no fitted plan ran Direct fprop and dgrad beside a tensor-core wgrad");
    let p = ConvProblem::new(1, 6, 6, 12, 16);
    for algos in [
        [Auto; 3],
        [Winograd2x2; 3],
        [Direct, Winograd2x2, Direct],
        [Wgmma; 3],
        [Winograd4x4, Winograd2x2, Direct],
        [Wgmma, Direct, Direct],
    ] {
        match Conv3x3::from_algos(p, algos, WinoTiling::Auto) {
            Err(Error::Shape(m)) => assert!(m.contains("no plan runs"), "{m}"),
            other => panic!("{algos:?}: expected a shape error, got {other:?}"),
        }
    }
}

/// A model's plans, recorded and put back into another model of the same config, give the
/// same kernels, memory and step, bit for bit; a record that misses a layer, repeats one, names
/// a pool or asks for a combination no plan runs is an error naming the layer, and leaves the
/// model's plans as they were.
#[test]
fn recorded_conv_plans_replan_a_model_exactly() {
    let dev = Device::emu();
    let cfg = small();
    let o = OptimConfig { init_scale: 256.0, ..Default::default() };
    let mut src = Vgg::with_optim(&dev, cfg.clone(), 2, Init::He, 4, o).unwrap();
    src.set_conv_choice(ConvChoice::Winograd4x4, 1).unwrap();
    let mut rec = src.conv_plan_records();
    // A mix the Auto rules never make: one layer's dgrad back on F(2x2), flat tiles.
    rec[2].algos[1] = F2;
    rec[2].tiling = WinoTiling::Flat;
    src.set_conv_plans(&rec).unwrap();
    assert_eq!(src.conv_plan_records(), rec);
    assert!(rec.iter().any(|r| r.algos[0] == F4), "{rec:?}");
    let (want_loss, want_g, _) = first_step(&mut src, &cfg, &dev);

    let mut dst = Vgg::with_optim(&dev, cfg.clone(), 2, Init::He, 4, o).unwrap();
    let auto = dst.conv_plan_records();
    assert_ne!(auto, rec);
    let err = |plans: &[vgg_cuda::model::ConvPlan], dst: &mut Vgg, needle: &str| {
        match dst.set_conv_plans(plans) {
            Err(Error::Shape(m)) => assert!(m.contains(needle), "`{m}` lacks `{needle}`"),
            other => panic!("expected a shape error with `{needle}`, got {other:?}"),
        }
        assert_eq!(dst.conv_plan_records(), auto, "a rejected record changed the plans");
    };
    let missing: Vec<_> = rec.iter().filter(|r| r.feature != rec[1].feature).copied().collect();
    err(&missing, &mut dst, &format!("feature layer {} needs exactly one plan", rec[1].feature));
    let twice: Vec<_> = rec.iter().chain(&rec[3..4]).copied().collect();
    err(&twice, &mut dst, &format!("feature layer {} needs exactly one plan", rec[3].feature));
    let pool = cfg.features().iter().position(|f| !f.is_conv()).unwrap();
    let extra: Vec<_> = rec.iter().copied().chain([vgg_cuda::model::ConvPlan { feature: pool, ..rec[1] }]).collect();
    err(&extra, &mut dst, &format!("feature layer {pool} is not a 3x3 conv"));
    let mut bad = rec.clone();
    bad[1].algos[2] = F4;
    err(&bad, &mut dst, &format!("feature layer {}: ", rec[1].feature));

    let layers = dst.set_conv_plans(&rec).unwrap();
    assert_eq!(layers.len(), rec.len());
    assert_eq!(dst.conv_plan_records(), rec);
    let plan = MemoryPlan::with_convs(&cfg, 2, Sharing::Lifetimes, &dst.conv_plans()).unwrap();
    assert_eq!(dst.device_bytes(), plan.total());
    let (loss, g, _) = first_step(&mut dst, &cfg, &dev);
    assert_eq!(loss.to_bits(), want_loss.to_bits());
    assert_eq!(g, want_g);
}

/// On a GPU with less shared memory a block than sm_90 (the emu device limited to 200 KiB:
/// between F(2x2)'s 161.5 KiB and F(4x4)'s 216, the TMA wgrad's 209 at C <= 64 and the 2-D TMA
/// tile's 213 above it too), a
/// launch whose tile does not fit is an
/// `Error::Unsupported` naming the kernel, and the tuner reports such a variant as not running
/// here and chooses among the others instead of failing.
#[test]
fn tune_skips_variants_the_device_cannot_fit() {
    let dev = Device::emu();
    dev.set_emu_shared_limit(200 * 1024);
    assert_eq!(dev.max_shared_per_block(), 200 * 1024);
    let p = ConvProblem::new(1, 6, 6, 16, 24);
    let f4 = Conv3x3::new(p, F4).unwrap();
    let x = Tensor::from_f32(&dev, &[1, 6, 6, 16], &vec![0.5; p.input_len()]).unwrap();
    let w = Tensor::from_f32(&dev, &[24, 3, 3, 16], &vec![0.25; p.filter_len()]).unwrap();
    let mut y = Tensor::empty(&dev, &[1, 6, 6, 24]).unwrap();
    let mut ws = Tensor::<u8>::zeros(&dev, &[f4.workspace_bytes(ConvPass::Fprop)]).unwrap();
    match f4.fprop(&x, &w, None, Epilogue::None, &mut y, &mut ws) {
        Err(Error::Unsupported(m)) => assert!(m.contains("wino4x4_fprop_f16") && m.contains("204800"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let auto = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let t = tune(&dev, auto, 1).unwrap();
    let skipped: Vec<_> = t.timings.iter().filter(|t| t.unsupported.is_some()).map(|t| (t.pass, t.variant)).collect();
    let want = [
        (ConvPass::Fprop, WinoVariant::F4),
        (ConvPass::Fprop, WinoVariant::WgmmaTma2d),
        (ConvPass::Dgrad, WinoVariant::F4),
        (ConvPass::Dgrad, WinoVariant::WgmmaTma2d),
        (ConvPass::Wgrad, WinoVariant::WgmmaTmaWs),
    ];
    assert_eq!(skipped, want, "{:?}", t.timings);
    assert!(t.timings.iter().any(|t| t.unsupported.is_none() && t.variant == WinoVariant::F2Flat));
    for q in [ConvPass::Fprop, ConvPass::Dgrad] {
        assert_ne!(t.conv.algo(q), F4, "{q:?}: chose a variant that does not run here");
    }
    // The same layer at sm_90's limit: every variant runs.
    dev.set_emu_shared_limit(vgg_cuda::device::SM90_SHARED_PER_BLOCK);
    assert!(tune(&dev, auto, 1).unwrap().timings.iter().all(|t| t.unsupported.is_none()));
}

/// A model on a GPU with less shared memory a block than sm_90 (the emu device standing in)
/// plans what fits: on an A100's 163 KiB, Auto's plans unchanged and the same step bit for bit;
/// on sm_89's 99 KiB, every pass whose tile does not fit on Direct (and the FC layers on the
/// simple GEMM), and a step within the variants' distance of sm_90's.
#[test]
fn a_model_plans_what_the_device_fits() {
    let cfg = small();
    let o = OptimConfig { init_scale: 256.0, ..Default::default() };
    let step_on = |limit: usize| {
        let dev = Device::emu();
        dev.set_emu_shared_limit(limit);
        let mut vgg = Vgg::with_optim(&dev, cfg.clone(), 2, Init::He, 4, o).unwrap();
        let plans = vgg.conv_plans();
        let plan = MemoryPlan::with_convs(&cfg, 2, Sharing::Lifetimes, &plans).unwrap();
        assert_eq!(vgg.device_bytes(), plan.total(), "limit {limit}");
        let (loss, g, twin) = first_step(&mut vgg, &cfg, &dev);
        (vgg.conv_plan_records(), plans, loss, g, twin)
    };
    let (sm90, _, want_loss, want_g, _) = step_on(vgg_cuda::device::SM90_SHARED_PER_BLOCK);
    let (a100, _, loss, g, _) = step_on(163 * 1024);
    assert_eq!(a100, sm90);
    assert_eq!((loss.to_bits(), &g), (want_loss.to_bits(), &want_g));
    let (sm89, plans, loss, g, twin) = step_on(99 * 1024);
    for (rec, (fit, c)) in sm90.iter().zip(sm89.iter().zip(plans.iter().flatten())) {
        for (i, q) in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].into_iter().enumerate() {
            assert!(c.shared_bytes(q) <= 99 * 1024, "layer {}: {q:?}", rec.feature);
            let kept = fit.algos[i] == rec.algos[i];
            assert!(kept || fit.algos[i] == ConvAlgo::Direct, "layer {}: {q:?} {:?}", rec.feature, fit.algos);
        }
        if rec.algos[0] == F2 {
            assert_eq!(fit.algos[..2], [ConvAlgo::Direct; 2], "layer {}: F(2x2) needs 161.5 KiB", rec.feature);
        }
    }
    assert!((loss - want_loss).abs() <= 3e-2 * want_loss, "99 KiB: loss {loss} vs {want_loss}");
    // Its gradients against the host twin routed by its own step (sm_90's differ by the
    // variants' near-tie decisions: see model_conv_choice_replans_layers_and_memory).
    for (t, (a, b)) in g.iter().zip(&twin).enumerate() {
        let rel = r::compare(a, b).rel_l2;
        assert!(rel <= GRAD_REL, "99 KiB: gradient {t} vs the routed host twin: rel L2 {rel:.2e}");
    }
}
