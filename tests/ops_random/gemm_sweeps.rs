//! GEMM: linear passes in every algorithm, split-K, degenerate shapes.

use super::*;

// ---------------------------------------------------------------------------------------------
// GEMM.

/// A GEMM dimension: mostly multiples of 8 (the tensor-core path), one in four anything.
fn gemm_dim(rng: &mut ShapeRng, hi8: usize) -> usize {
    match rng.below(8) {
        0 => rng.pick(&[1, 2, 3, 5, 7, 9, 10, 13, 31, 37]),
        1 => rng.range(1, 70),
        _ => 8 * rng.range(1, hi8),
    }
}

/// The rows: 1 and other small batches, primes, around the 64- and 128-row tiles.
fn gemm_rows(rng: &mut ShapeRng) -> usize {
    match rng.below(4) {
        0 => rng.pick(&[1, 1, 2, 3, 7, 13, 31, 61]),
        1 => rng.pick(&[63, 64, 65, 127, 128, 129, 191, 193]),
        _ => rng.range(1, 200),
    }
}

/// The emulator's cost of one pass, counted as if on whole 64 x 128 x 64 tiles.
fn gemm_cost(s: Linear) -> usize {
    let (m, k, n) = (s.m.next_multiple_of(64), s.k.next_multiple_of(64), s.n.next_multiple_of(128));
    m.max(k) * k.max(n) * n.max(m)
}

/// What one draw runs: an algorithm, with or without the workspace it asks for.
fn gemm_algo(rng: &mut ShapeRng, s: Linear) -> (Algo, bool) {
    let tc = s.tensor_core_ok();
    match rng.below(if tc { 5 } else { 3 }) {
        0 => (Algo::Auto, false),
        1 => (Algo::Simple, rng.below(2) == 0),
        2 => (Algo::Auto, true),
        _ => (Algo::TensorCore { tile: any_tile(rng), splits: rng.pick(&[1, 1, 2, 3, 5, 16]) }, true),
    }
}

/// Any tile, the wgmma one (which the emulator runs) too.
fn any_tile(rng: &mut ShapeRng) -> Tile {
    rng.pick(&[Tile::T128x256, Tile::T128x192, Tile::T128x128, Tile::T64x128, Tile::W128x256])
}

/// A shape from `draw`, drawn again until one pass fits the emulator `budget`.
fn draw_within(rng: &mut ShapeRng, budget: usize, mut draw: impl FnMut(&mut ShapeRng) -> Linear) -> Linear {
    loop {
        let s = draw(rng);
        if gemm_cost(s) <= budget {
            return s;
        }
    }
}

struct GemmData {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl GemmData {
    /// Operands of `s`: integers in `[-k, k]` (a bias in `[-3, 3]`) with `Some(k)`, where every
    /// sum is exact, or fp16-rounded normals.
    fn random(rng: &mut ShapeRng, s: Linear, exact: Option<usize>) -> Self {
        let mut draw = |len: usize, k: Option<usize>, scale: f64| match exact {
            Some(e) => ints(rng, len, k.unwrap_or(e)),
            None => normals16(rng, len, scale),
        };
        GemmData {
            x: draw(s.m * s.k, None, 1.0),
            w: draw(s.n * s.k, None, 0.5),
            b: draw(s.n, Some(3), 1.0),
            dy: draw(s.m * s.n, None, 1.0),
        }
    }
}

/// Runs the three passes of `s` under `algo` (workspaces guarded, outputs poisoned) and checks
/// them against the reference: bit for bit on integers, within the crate's bounds otherwise.
/// `x_shape`: the input's shape, `[M, ...]` flattening to K, or with `conv` an NHWC shape of
/// M pixels, run as a 1x1 convolution through its launchers (filters `[N, 1, 1, K]`, or `[N, K]`
/// when the batch is even).
#[allow(clippy::too_many_arguments)]
fn gemm_run(
    dev: &Device,
    s: Linear,
    (algo, with_ws): (Algo, bool),
    d: &GemmData,
    relu: bool,
    bias: bool,
    exact: bool,
    x_shape: &[usize],
    conv: bool,
) -> String {
    let Linear { m, k, n } = s;
    let what =
        format!("M{m} K{k} N{n} {algo:?} ws {with_ws} relu {relu} bias {bias} ints {exact} x{x_shape:?} conv {conv}");
    let (xs, ws_, ys) = if conv {
        let [b, h, w, _] = *x_shape else { panic!("conv needs an NHWC x, got {x_shape:?}") };
        let filters = if b % 2 == 0 { vec![n, k] } else { vec![n, 1, 1, k] };
        (x_shape.to_vec(), filters, vec![b, h, w, n])
    } else {
        (x_shape.to_vec(), vec![n, k], vec![m, n])
    };
    let x = up16(dev, &xs, &d.x);
    let w = up16(dev, &ws_, &d.w);
    let b = up16(dev, &[n], &d.b);
    let dy = up16(dev, &ys, &d.dy);
    let guard = |p: Pass| {
        let bytes = if algo == Algo::Simple { 0 } else { s.workspace_bytes_with(p, algo) };
        GuardedWorkspace::new(dev, bytes).unwrap()
    };
    let bias_t = bias.then_some(&b);

    let mut y = empty16(dev, &ys);
    let mut g = guard(Pass::Fwd);
    let ws = with_ws.then_some(&mut g.ws);
    let res = if conv {
        gemm::conv1x1_fwd(&x, &w, bias_t, relu, &mut y, ws)
    } else {
        gemm::linear_fwd_with(algo, &x, &w, bias_t, relu, &mut y, ws)
    };
    res.unwrap_or_else(|e| panic!("{what}: fwd: {e}"));
    g.check(&format!("{what} fwd")).unwrap();

    let mut dx = empty16(dev, &xs);
    let mut g = guard(Pass::BwdData);
    let ws = with_ws.then_some(&mut g.ws);
    let res = if conv {
        gemm::conv1x1_dgrad(&dy, &w, &mut dx, ws)
    } else {
        gemm::linear_bwd_data_with(algo, &dy, &w, &mut dx, ws)
    };
    res.unwrap_or_else(|e| panic!("{what}: bwd_data: {e}"));
    g.check(&format!("{what} bwd_data")).unwrap();

    let mut dw = empty32(dev, &ws_);
    let mut db = empty32(dev, &[n]);
    let mut g = guard(Pass::BwdWeight);
    let ws = with_ws.then_some(&mut g.ws);
    let db_t = bias.then_some(&mut db);
    let res = if conv {
        gemm::conv1x1_wgrad(&x, &dy, &mut dw, db_t, ws)
    } else {
        gemm::linear_bwd_weight_with(algo, &x, &dy, &mut dw, db_t, ws)
    };
    res.unwrap_or_else(|e| panic!("{what}: bwd_weight: {e}"));
    g.check(&format!("{what} bwd_weight")).unwrap();

    let want_y = r::f32_to_f16_round(&r::linear_fwd(m, k, n, &d.x, &d.w, bias.then_some(&d.b[..]), relu));
    let want_dx = r::f32_to_f16_round(&r::linear_bwd_data(m, k, n, &d.dy, &d.w));
    let (want_dw, want_db) = r::linear_bwd_weight(m, k, n, &d.x, &d.dy);
    let got = [y.to_f32().unwrap(), dx.to_f32().unwrap(), dw.to_host().unwrap(), db.to_host().unwrap()];
    let want = [want_y, want_dx, want_dw, want_db];
    for (i, name) in ["y", "dx", "dw", "db"].into_iter().enumerate() {
        if i == 3 && !bias {
            continue;
        }
        if exact {
            let bad = if i < 2 { diff16(&got[i], &want[i]) } else { diff32(&got[i], &want[i]) };
            assert!(bad.is_none(), "{what}: {name} not exact on integers: {}", bad.unwrap());
        } else {
            let c = r::compare(&got[i], &want[i]);
            let (rel, max_rel) = if i < 2 { (2e-3, 4e-3) } else { (1e-4, 1e-4) };
            let ok = c.rel_l2 <= rel && c.max_abs <= max_rel * c.max_ref.max(1e-30) || c.max_abs == 0.0;
            assert!(ok, "{what}: {name} beyond the bound (rel_l2 {rel:e}, max {max_rel:e} of max |ref|): {c}");
        }
    }
    what
}

#[test]
fn gemm_random_shapes_match_reference() {
    const BUDGET: usize = 12_000_000;
    sweep("gemm", 1, 60, |rng, dev, what| {
        let s = draw_within(rng, BUDGET, |rng| Linear::new(gemm_rows(rng), gemm_dim(rng, 40), gemm_dim(rng, 40)));
        let exact = rng.below(2) == 0;
        let d = GemmData::random(rng, s, exact.then_some(2));
        let (relu, bias) = (rng.below(2) == 0, rng.below(4) != 0);
        // The input as any [M, ...] that flattens to K, as the first FC layer takes a feature map;
        // for a 1x1 convolution, M pixels as [n, h, w] (n and h divisors of M).
        let conv = rng.below(5) == 0;
        let x_shape = if conv {
            let b = [1, 2, 3].into_iter().rfind(|d| s.m % d == 0).unwrap();
            let h = [1, 2, 3, 5].into_iter().rfind(|d| (s.m / b) % d == 0).unwrap();
            vec![b, h, s.m / b / h, s.k]
        } else if s.k % 4 == 0 && rng.below(3) == 0 {
            vec![s.m, 2, s.k / 4, 2]
        } else {
            vec![s.m, s.k]
        };
        let algo = if conv { (Algo::Auto, rng.below(2) == 0) } else { gemm_algo(rng, s) };
        // Now and then a device with less shared memory a block than sm_90's (an A100's, an
        // sm_89's), where Auto takes a smaller tile or the simple kernel.
        let small = Device::emu();
        let limit = if algo.0 == Algo::Auto { rng.pick(&[0, 0, 0, 0, 163 * 1024, 120 * 1024, 99 * 1024]) } else { 0 };
        let dev = if limit > 0 {
            small.set_emu_shared_limit(limit);
            &small
        } else {
            dev
        };
        *what = gemm_run(dev, s, algo, &d, relu, bias, exact, &x_shape, conv);
        what.push_str(&format!(" shared limit {limit}"));
    });
}

/// The reduction deep enough for split-K at small M (the FC layers at batch 1..64), where
/// Auto splits whenever given a workspace, and explicit splits of every tile.
#[test]
fn gemm_split_k_matches_reference() {
    const BUDGET: usize = 40_000_000;
    sweep("gemm split-K", 2, 12, |rng, dev, what| {
        let s = draw_within(rng, BUDGET, |rng| {
            if rng.below(3) == 0 {
                // Many rows, few columns: bwd_weight's reduction over M splits, and past 1024
                // rows the bias gradient sums chunks into the workspace after the split partials.
                Linear::new(rng.range(1000, 3100), 8 * rng.range(1, 3), 8 * rng.range(1, 3))
            } else {
                let m = rng.pick(&[1, 2, 3, 5, 8, 13, 17, 33, 64]);
                Linear::new(m, 64 * rng.range(4, 20) + 8 * rng.range(0, 7), 8 * rng.range(1, 20))
            }
        });
        let exact = rng.below(2) == 0;
        let d = GemmData::random(rng, s, exact.then_some(1));
        let algo = match rng.below(3) {
            0 => (Algo::Auto, true),
            _ => (Algo::TensorCore { tile: any_tile(rng), splits: rng.range(2, 12) }, true),
        };
        *what = gemm_run(dev, s, algo, &d, rng.below(2) == 0, true, exact, &[s.m, s.k], false);
    });
}

/// The bias gradient past 1024 rows: column sums in chunks into the workspace, then added in
/// chunk order; the last chunk is short wherever the chunk count does not divide M (M 1025:
/// 513 + 512 rows; 2050: 684 + 684 + 682; 3071: 1024 + 1024 + 1023). A chunk that ran past M
/// would read the fence after dY (NaN) into db. The split-K sweep's budget never draws M > 1000.
#[test]
fn gemm_bias_grad_chunks_with_a_short_last_one() {
    let dev = Device::emu();
    for (i, (m, k, n)) in [(1025, 16, 24), (2050, 8, 40), (3071, 24, 8)].into_iter().enumerate() {
        let s = Linear::new(m, k, n);
        for exact in [true, false] {
            let mut rng = ShapeRng(SampleRng::for_sample(1, 4, 2 * i as u64 + exact as u64));
            let d = GemmData::random(&mut rng, s, exact.then_some(1));
            let what = gemm_run(&dev, s, (Algo::Auto, true), &d, false, true, exact, &[m, k], false);
            check_fences(&what);
        }
    }
}

/// Zero-sized products: an empty batch (M = 0), no outputs (N = 0), no inputs (K = 0, where y
/// is the bias and dW is empty) run to the reference's result or refuse with an error; never
/// a panic or an unwritten output.
#[test]
fn gemm_degenerate_shapes() {
    let dev = Device::emu();
    for (m, k, n) in [(0, 16, 8), (3, 16, 0), (3, 0, 8), (0, 0, 0), (2, 0, 5), (1, 5, 0)] {
        for algo in [Algo::Auto, Algo::Simple] {
            let what = format!("M{m} K{k} N{n} {algo:?}");
            let got = catch_unwind(AssertUnwindSafe(|| -> vgg_cuda::Result<()> {
                let b: Vec<f32> = (0..n).map(|i| i as f32 - 1.0).collect();
                let x = up16(&dev, &[m, k], &vec![1.0; m * k]);
                let w = up16(&dev, &[n, k], &vec![1.0; n * k]);
                let bt = up16(&dev, &[n], &b);
                let dy = up16(&dev, &[m, n], &vec![1.0; m * n]);
                let mut y = empty16(&dev, &[m, n]);
                gemm::linear_fwd_with(algo, &x, &w, Some(&bt), false, &mut y, None)?;
                let want = r::linear_fwd(m, k, n, &vec![1.0; m * k], &vec![1.0; n * k], Some(&b), false);
                assert_eq!(diff16(&y.to_f32()?, &want), None, "{what}: y");
                let mut dx = empty16(&dev, &[m, k]);
                gemm::linear_bwd_data_with(algo, &dy, &w, &mut dx, None)?;
                assert_eq!(diff16(&dx.to_f32()?, &vec![n as f32; m * k]), None, "{what}: dx");
                let (mut dw, mut db) = (empty32(&dev, &[n, k]), empty32(&dev, &[n]));
                gemm::linear_bwd_weight_with(algo, &x, &dy, &mut dw, Some(&mut db), None)?;
                assert_eq!(diff32(&dw.to_host()?, &vec![m as f32; n * k]), None, "{what}: dw");
                assert_eq!(diff32(&db.to_host()?, &vec![m as f32; n]), None, "{what}: db");
                Ok(())
            }));
            match got {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("{what}: refused: {e}"),
                Err(_) => panic!("{what}: panicked"),
            }
        }
    }
    check_fences("gemm degenerate shapes");
}
