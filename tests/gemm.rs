//! The GEMM family (linear layers, 1x1 convolutions) against the reference through the
//! checks `vgg selftest` runs, on the emu device always and on a GPU when one is usable; plus
//! the API's errors, the workspace-less path, and (ignored, GPU only) a timing run.

use half::f16;
use vgg_cuda::ops::gemm::{self, Algo, Linear, Pass, Tile};
use vgg_cuda::reference as r;
use vgg_cuda::{selftest, Device, Error, Tensor};

const CHECKS: [&str; 4] = ["gemm", "gemm_conv1x1", "gemm_determinism", "gemm_tma"];

/// The devices the same test body runs on: emu, and cuda when this machine has a GPU.
fn devices() -> Vec<Device> {
    let mut v = vec![Device::emu()];
    if let Ok(d) = Device::cuda(0) {
        v.push(d);
    }
    v
}

fn assert_check_passes(name: &str) {
    // The TMA tile's check has rows only where there is wgmma (sm_90; the emulator has it).
    for dev in devices().into_iter().filter(|d| name != "gemm_tma" || d.has_wgmma()) {
        let rows = selftest::run(&dev, Some(name));
        assert!(!rows.is_empty(), "check {name} produced no rows on {}", dev.name());
        let bad: Vec<_> = rows.iter().filter(|r| !r.ran_and_passed()).take(10).collect();
        assert!(bad.is_empty(), "check {name} failed on {}: {bad:#?}", dev.name());
    }
}

#[test]
fn linear_matches_reference() {
    assert_check_passes(CHECKS[0]);
}
#[test]
fn conv1x1_matches_reference() {
    assert_check_passes(CHECKS[1]);
}
#[test]
fn deterministic_across_schedules() {
    assert_check_passes(CHECKS[2]);
}
/// On an H100 / H200 this runs in the same process as the tests above: a TMA copy that never
/// lands traps there (kernels/bulk.cuh) and loses the context for every test still running.
#[test]
fn tma_tile_matches_reference() {
    assert_check_passes(CHECKS[3]);
}

fn randn(len: usize, seed: u64) -> Vec<f32> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| f16::from_f32(rng.gen_range(-2.0f32..2.0)).to_f32()).collect()
}

fn shape_err(r: vgg_cuda::Result<()>, needle: &str) {
    match r {
        Err(Error::Shape(m)) => assert!(m.contains(needle), "message {m:?} should mention {needle:?}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let t = |shape: &[usize]| Tensor::<f16>::zeros(&dev, shape).unwrap();
    let (x, w) = (t(&[4, 16]), t(&[24, 16]));
    let mut y = t(&[4, 24]);
    // N = 10: the tensor-core kernels refuse it by name; Auto takes the simple kernel.
    let (w10, mut y10) = (t(&[10, 16]), t(&[4, 10]));
    let tc = Algo::TensorCore { tile: Tile::T64x128, splits: 1 };
    shape_err(gemm::linear_fwd_with(tc, &x, &w10, None, false, &mut y10, None), "multiples of 8");
    gemm::linear_fwd(&x, &w10, None, false, &mut y10, None).unwrap();
    // Inputs that do not fit the weights, outputs of the wrong size, a 3-D weight.
    shape_err(gemm::linear_fwd(&t(&[4, 8]), &w, None, false, &mut y, None), "does not flatten to [M, 16]");
    shape_err(
        gemm::linear_fwd(&x, &w, None, false, &mut t(&[4, 23]), None),
        "output y ([M, N]) must have shape [4, 24]",
    );
    shape_err(gemm::linear_fwd(&x, &t(&[24, 4, 4]), None, false, &mut y, None), "weights must be [N, K]");
    shape_err(gemm::linear_fwd(&x, &w, Some(&t(&[23])), false, &mut y, None), "bias");
    shape_err(gemm::linear_bwd_data(&t(&[4, 23]), &w, &mut t(&[4, 16]), None), "dy must be [M, 24]");
    let mut dw = Tensor::<f32>::zeros(&dev, &[24, 16]).unwrap();
    let mut db = Tensor::<f32>::zeros(&dev, &[23]).unwrap();
    shape_err(gemm::linear_bwd_weight(&x, &y, &mut dw, Some(&mut db), None), "bias gradient db");
    // An explicit split without (enough) workspace.
    let split = Algo::TensorCore { tile: Tile::T64x128, splits: 2 };
    let deep = Linear::new(4, 256, 24);
    let (xd, wd) = (t(&[4, 256]), t(&[24, 256]));
    shape_err(gemm::linear_fwd_with(split, &xd, &wd, None, false, &mut y, None), "needs a workspace");
    let mut small = Tensor::<u8>::zeros(&dev, &[deep.workspace_bytes_with(Pass::Fwd, split) - 4]).unwrap();
    shape_err(gemm::linear_fwd_with(split, &xd, &wd, None, false, &mut y, Some(&mut small)), "workspace has");
    // 1x1 convolutions: filters that do not match the input's channels, outputs of the wrong shape.
    let xc = t(&[1, 3, 3, 16]);
    shape_err(gemm::conv1x1_fwd(&xc, &t(&[8, 1, 1, 12]), None, false, &mut t(&[1, 3, 3, 8]), None), "filters");
    shape_err(gemm::conv1x1_fwd(&xc, &t(&[8, 16]), None, false, &mut t(&[1, 3, 4, 8]), None), "output must be");
    shape_err(gemm::conv1x1_fwd(&t(&[9, 16]), &t(&[8, 16]), None, false, &mut t(&[9, 8]), None), "NHWC");
}

/// A workspace too small for the bias gradient's partials is refused before anything is
/// written: dw and db keep what they held (dw used to be computed first, then the error).
#[test]
fn a_short_workspace_writes_no_output() {
    let dev = Device::emu();
    // M 4096: the column sums run in chunks, whose partials need the workspace.
    let s = Linear::new(4096, 64, 64);
    let x = Tensor::<f16>::from_f32(&dev, &[4096, 64], &vec![1.0; 4096 * 64]).unwrap();
    let dy = Tensor::<f16>::from_f32(&dev, &[4096, 64], &vec![1.0; 4096 * 64]).unwrap();
    let mut dw = Tensor::<f32>::from_host(&dev, &[64, 64], &vec![7.0; 64 * 64]).unwrap();
    let mut db = Tensor::<f32>::from_host(&dev, &[64], &[7.0; 64]).unwrap();
    let need = s.workspace_bytes(Pass::BwdWeight);
    let mut ws = Tensor::<u8>::zeros(&dev, &[need - 4]).unwrap();
    shape_err(gemm::linear_bwd_weight(&x, &dy, &mut dw, Some(&mut db), Some(&mut ws)), "bias gradient needs");
    assert!(dw.to_host().unwrap().iter().all(|&v| v == 7.0), "dw written before the error");
    assert!(db.to_host().unwrap().iter().all(|&v| v == 7.0), "db written before the error");
    let mut ws = Tensor::<u8>::zeros(&dev, &[need]).unwrap();
    gemm::linear_bwd_weight(&x, &dy, &mut dw, Some(&mut db), Some(&mut ws)).unwrap();
    assert!(dw.to_host().unwrap().iter().all(|&v| v == 4096.0) && db.to_host().unwrap().iter().all(|&v| v == 4096.0));
}

/// Operands of the right sizes in other shapes (transposed, flat, a `[1, N]` bias) are refused
/// with both shapes named, not read as `[M, K]`, `[N, K]`, `[M, N]`; an input or its gradient
/// may still be any `[M, ...]` flattening to K (a feature map into the first FC layer).
#[test]
fn operands_of_the_right_size_in_another_shape_are_refused() {
    let dev = Device::emu();
    let t = |shape: &[usize]| Tensor::<f16>::zeros(&dev, shape).unwrap();
    let f = |shape: &[usize]| Tensor::<f32>::zeros(&dev, shape).unwrap();
    let (x, w, dy) = (t(&[4, 16]), t(&[24, 16]), t(&[4, 24]));
    for y in [&mut t(&[24, 4]), &mut t(&[96]), &mut t(&[2, 2, 24])] {
        let want = format!("must have shape [4, 24], got {:?}", y.shape());
        shape_err(gemm::linear_fwd(&x, &w, None, false, y, None), &want);
    }
    shape_err(gemm::linear_fwd(&x, &w, Some(&t(&[1, 24])), false, &mut t(&[4, 24]), None), "bias");
    shape_err(gemm::linear_bwd_data(&dy, &w, &mut t(&[16, 4]), None), "dx shape [16, 4] does not flatten to");
    gemm::linear_bwd_data(&dy, &w, &mut t(&[4, 4, 4]), None).unwrap();
    let mut dw = f(&[24, 16]);
    shape_err(gemm::linear_bwd_weight(&x, &t(&[24, 4]), &mut dw, None, None), "dy ([M, N]) must have shape [4, 24]");
    shape_err(gemm::linear_bwd_weight(&x, &dy, &mut dw, Some(&mut f(&[1, 24])), None), "db must have shape [24]");
    gemm::linear_bwd_weight(&t(&[4, 1, 4, 4]), &dy, &mut dw, Some(&mut f(&[24])), None).unwrap();
    let xc = t(&[1, 3, 3, 16]);
    let b8 = t(&[1, 8]);
    shape_err(gemm::conv1x1_fwd(&xc, &t(&[8, 16]), Some(&b8), false, &mut t(&[1, 3, 3, 8]), None), "bias");
}

/// Without a workspace, Auto runs unsplit; with one, split. Both match the reference, and
/// the split plan is what runs: with the workspace the launches are the tiled kernel and the
/// split-K reduction, without it the one tiled kernel.
#[test]
fn workspace_is_optional() {
    let dev = Device::emu();
    let s = Linear::new(5, 1024, 16);
    assert!(matches!(s.plan(Pass::Fwd), Algo::TensorCore { splits, .. } if splits > 1));
    assert!(s.workspace_bytes(Pass::Fwd) > 0);
    let (xv, wv, bv) = (randn(s.m * s.k, 1), randn(s.n * s.k, 2), randn(s.n, 3));
    let x = Tensor::from_f32(&dev, &[s.m, s.k], &xv).unwrap();
    let w = Tensor::from_f32(&dev, &[s.n, s.k], &wv).unwrap();
    let b = Tensor::from_f32(&dev, &[s.n], &bv).unwrap();
    let want = r::f32_to_f16_round(&r::linear_fwd(s.m, s.k, s.n, &xv, &wv, Some(&bv), false));
    let mut ws = Tensor::<u8>::empty(&dev, &[s.workspace_bytes(Pass::Fwd)]).unwrap();
    for ws in [None, Some(&mut ws)] {
        let split = ws.is_some();
        let mut y = Tensor::empty(&dev, &[s.m, s.n]).unwrap();
        y.poison().unwrap();
        dev.profile_start().unwrap();
        gemm::linear_fwd(&x, &w, Some(&b), false, &mut y, ws).unwrap();
        let kernels: Vec<&str> = dev.profile_stop().unwrap().iter().map(|l| l.kernel).collect();
        let want_kernels: &[&str] = if split { &["gemm_fwd_f16_", "gemm_reduce_f16"] } else { &["gemm_fwd_f16_"] };
        assert!(
            kernels.len() == want_kernels.len() && kernels.iter().zip(want_kernels).all(|(k, w)| k.starts_with(w)),
            "workspace {split}: launched {kernels:?}, want {want_kernels:?}"
        );
        let c = r::compare_tol(&y.to_f32().unwrap(), &want, 2e-2, 2e-3);
        assert!(c.first_bad.is_none() && c.rel_l2 < 2e-3, "workspace {split}: {c}");
    }
}

/// On a GPU with less shared memory a block than sm_90's 227 KiB, Auto runs the planned tile
/// where it fits, else the fitting tile with the same splits (same workspace), else the simple
/// kernel; the emu device stands in for such GPUs, and each plan matches the reference.
#[test]
fn auto_fits_the_tile_to_the_device() {
    let (sm90, a100, between, sm89) = (227 * 1024, 163 * 1024, 120 * 1024, 99 * 1024);
    let fc = [Linear::new(64, 25088, 4096), Linear::new(64, 4096, 4096), Linear::new(64, 4096, 1000)];
    for s in fc.iter().chain([&Linear::new(5, 1024, 16), &Linear::new(256, 4096, 4096)]) {
        for pass in [Pass::Fwd, Pass::BwdData, Pass::BwdWeight] {
            let planned = s.plan(pass);
            assert_eq!(s.plan_within(pass, sm90), planned, "{s:?} {pass:?}");
            assert_eq!(s.plan_within(pass, a100), planned, "{s:?} {pass:?}: the largest tile takes 162 KiB");
            assert_eq!(s.plan_within(pass, sm89), Algo::Simple, "{s:?} {pass:?}: every tile takes 108 KiB or more");
            match (planned, s.plan_within(pass, between)) {
                (Algo::TensorCore { tile, splits }, Algo::TensorCore { tile: t, splits: n }) => {
                    assert_eq!(n, splits, "{s:?} {pass:?}");
                    assert!(matches!(t, Tile::T128x128 | Tile::T64x128), "{s:?} {pass:?}: {tile:?} -> {t:?}");
                }
                other => panic!("{s:?} {pass:?}: {other:?}"),
            }
        }
    }
    let s = Linear::new(5, 1024, 16);
    let (xv, wv, bv) = (randn(s.m * s.k, 4), randn(s.n * s.k, 5), randn(s.n, 6));
    let want = r::f32_to_f16_round(&r::linear_fwd(s.m, s.k, s.n, &xv, &wv, Some(&bv), true));
    for limit in [sm90, between, sm89] {
        let dev = Device::emu();
        dev.set_emu_shared_limit(limit);
        let x = Tensor::from_f32(&dev, &[s.m, s.k], &xv).unwrap();
        let w = Tensor::from_f32(&dev, &[s.n, s.k], &wv).unwrap();
        let b = Tensor::from_f32(&dev, &[s.n], &bv).unwrap();
        let mut ws = Tensor::<u8>::empty(&dev, &[s.workspace_bytes(Pass::Fwd)]).unwrap();
        let mut y = Tensor::empty(&dev, &[s.m, s.n]).unwrap();
        y.poison().unwrap();
        gemm::linear_fwd(&x, &w, Some(&b), true, &mut y, Some(&mut ws)).unwrap();
        let c = r::compare_tol(&y.to_f32().unwrap(), &want, 2e-2, 2e-3);
        assert!(c.first_bad.is_none() && c.rel_l2 < 2e-3, "limit {limit}: {c}");
        // An explicit tile that does not fit is refused, naming the kernel.
        let big = Algo::TensorCore { tile: Tile::T128x256, splits: 1 };
        match gemm::linear_fwd_with(big, &x, &w, Some(&b), true, &mut y, Some(&mut ws)) {
            Err(Error::Unsupported(m)) if limit < 162 * 1024 => assert!(m.contains("shared memory"), "{m}"),
            r => assert!(limit >= 162 * 1024 && r.is_ok(), "limit {limit}: {r:?}"),
        }
    }
}

/// Rough GPU timings of the classifier shapes, all three passes, workspace as planned.
/// `cargo test --release --test gemm -- --ignored --nocapture` on a machine with a GPU.
#[test]
#[ignore]
fn cuda_timing() {
    let Ok(dev) = Device::cuda(0) else {
        eprintln!("no usable GPU: skipped");
        return;
    };
    for batch in [1, 64, 128, 256] {
        for (k, n) in [(25088, 4096), (4096, 4096), (4096, 1000)] {
            let s = Linear::new(batch, k, n);
            let x = Tensor::from_f32(&dev, &[s.m, s.k], &randn(s.m * s.k, 1)).unwrap();
            let w = Tensor::from_f32(&dev, &[s.n, s.k], &randn(s.n * s.k, 2)).unwrap();
            let b = Tensor::from_f32(&dev, &[s.n], &randn(s.n, 3)).unwrap();
            let dy = Tensor::from_f32(&dev, &[s.m, s.n], &randn(s.m * s.n, 4)).unwrap();
            let mut y = Tensor::empty(&dev, &[s.m, s.n]).unwrap();
            let mut dx = Tensor::empty(&dev, &[s.m, s.k]).unwrap();
            let mut dw = Tensor::<f32>::empty(&dev, &[s.n, s.k]).unwrap();
            let mut db = Tensor::<f32>::empty(&dev, &[s.n]).unwrap();
            let bytes = [Pass::Fwd, Pass::BwdData, Pass::BwdWeight].map(|p| s.workspace_bytes(p)).into_iter().max();
            let mut ws = Tensor::<u8>::empty(&dev, &[bytes.unwrap().max(1)]).unwrap();
            let mut line = format!("M{batch:<4} K{k:<6} N{n:<5}");
            for pass in [Pass::Fwd, Pass::BwdData, Pass::BwdWeight] {
                let mut run = || match pass {
                    Pass::Fwd => gemm::linear_fwd(&x, &w, Some(&b), true, &mut y, Some(&mut ws)),
                    Pass::BwdData => gemm::linear_bwd_data(&dy, &w, &mut dx, Some(&mut ws)),
                    Pass::BwdWeight => gemm::linear_bwd_weight(&x, &dy, &mut dw, Some(&mut db), Some(&mut ws)),
                };
                for _ in 0..3 {
                    run().unwrap();
                }
                let reps = 20;
                let t = dev.start_timer().unwrap();
                for _ in 0..reps {
                    run().unwrap();
                }
                let ms = t.stop_ms().unwrap() / reps as f64;
                line += &format!("  {pass:?} {ms:.3} ms {:.0} TF/s ({:?})", s.flops() / ms / 1e9, s.plan(pass));
            }
            println!("{line}");
        }
    }
}

/// `Tile::parse` reads every tile's name (any case) and names them all when given another.
#[test]
fn tiles_parse_by_name() {
    use vgg_cuda::ops::gemm::Tile;
    for (name, tile) in [
        ("t128x256", Tile::T128x256),
        ("T128x192", Tile::T128x192),
        ("t128x128", Tile::T128x128),
        ("t64x128", Tile::T64x128),
        ("w128x256", Tile::W128x256),
        ("WT128x256", Tile::WT128x256),
    ] {
        assert_eq!(Tile::parse(name).unwrap(), tile, "{name}");
    }
    let e = Tile::parse("w128x128").unwrap_err();
    assert!(matches!(e, vgg_cuda::Error::Invalid(_)) && e.to_string().contains("w128x256, wt128x256"), "{e}");
}

/// The TMA tile (operands brought by the copy engine, landing when a wait needs them under the
/// reverse and random schedules): every pass bit for bit the same under every schedule and equal
/// to the reference on integers, ragged in every dimension and split; its backward passes read
/// M/N-major swizzled boxes (wgmma.cuh's layout).
#[test]
fn tma_tile_runs_every_pass_under_every_schedule() {
    use vgg_cuda::device::Schedule;
    // 2-way split of 17 k-tiles (fwd, K 1032; bwd_data, N 1048) and 18 (bwd_weight, M 1090):
    // each split has at least 8, twice the ring's 4 buffers, so every buffer is refilled (its
    // barrier's second phase, parity 1); all three ragged against the 128 x 256 tile, the 64-wide
    // boxes and the 64-deep k-tiles.
    let (m, k, n) = (1090, 1032, 1048);
    let ints = |len: usize, seed: u64| -> Vec<f32> { randn(len, seed).iter().map(|v| v.round()).collect() };
    let (xv, wv, bv, dyv) = (ints(m * k, 1), ints(n * k, 2), ints(n, 3), ints(m * n, 4));
    let want_y = r::f32_to_f16_round(&r::linear_fwd(m, k, n, &xv, &wv, Some(&bv), true));
    let want_dx = r::f32_to_f16_round(&r::linear_bwd_data(m, k, n, &dyv, &wv));
    let (want_dw, want_db) = r::linear_bwd_weight(m, k, n, &xv, &dyv);
    let algo = Algo::TensorCore { tile: Tile::WT128x256, splits: 2 };
    let s = Linear::new(m, k, n);
    let ws_bytes = [Pass::Fwd, Pass::BwdData, Pass::BwdWeight].map(|p| s.workspace_bytes_with(p, algo));
    let mut first: Option<Vec<Vec<u32>>> = None;
    for sched in [Schedule::Index, Schedule::Reverse, Schedule::Random(11)] {
        let dev = Device::emu();
        dev.set_schedule(sched);
        let x = Tensor::<f16>::from_f32(&dev, &[m, k], &xv).unwrap();
        let w = Tensor::<f16>::from_f32(&dev, &[n, k], &wv).unwrap();
        let b = Tensor::<f16>::from_f32(&dev, &[n], &bv).unwrap();
        let dy = Tensor::<f16>::from_f32(&dev, &[m, n], &dyv).unwrap();
        let mut y = Tensor::<f16>::empty(&dev, &[m, n]).unwrap();
        let mut dx = Tensor::<f16>::empty(&dev, &[m, k]).unwrap();
        let mut dw = Tensor::<f32>::empty(&dev, &[n, k]).unwrap();
        let mut db = Tensor::<f32>::empty(&dev, &[n]).unwrap();
        y.poison().unwrap();
        dx.poison().unwrap();
        dw.poison().unwrap();
        db.poison().unwrap();
        let mut ws = Tensor::<u8>::zeros(&dev, &[*ws_bytes.iter().max().unwrap()]).unwrap();
        gemm::linear_fwd_with(algo, &x, &w, Some(&b), true, &mut y, Some(&mut ws)).unwrap();
        gemm::linear_bwd_data_with(algo, &dy, &w, &mut dx, Some(&mut ws)).unwrap();
        gemm::linear_bwd_weight_with(algo, &x, &dy, &mut dw, Some(&mut db), Some(&mut ws)).unwrap();
        let (y, dx) = (y.to_host().unwrap(), dx.to_host().unwrap());
        let (dw, db) = (dw.to_host().unwrap(), db.to_host().unwrap());
        let f = |v: &[f16]| -> Vec<f32> { v.iter().map(|h| h.to_f32()).collect() };
        assert_eq!(f(&y), want_y, "fwd {sched:?}");
        assert_eq!(f(&dx), want_dx, "bwd_data {sched:?}");
        assert_eq!(dw, want_dw, "bwd_weight dw {sched:?}");
        assert_eq!(db, want_db, "bwd_weight db {sched:?}");
        let bits = vec![
            y.iter().map(|v| v.to_bits() as u32).collect(),
            dx.iter().map(|v| v.to_bits() as u32).collect(),
            dw.iter().map(|v| v.to_bits()).collect(),
            db.iter().map(|v| v.to_bits()).collect(),
        ];
        assert_eq!(first.get_or_insert_with(|| bits.clone()), &bits, "{sched:?}");
    }
}
