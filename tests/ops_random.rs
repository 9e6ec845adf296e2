//! Seeded random sweeps of the non-convolution ops through their public API on the emu device,
//! each against its f64 reference (src/reference): the GEMM family (linear fwd / bwd_data /
//! bwd_weight + bias under Auto with and without a workspace, the simple twin and forced
//! tensor-core tiles and splits; 1x1 convolutions), max-pool with and without the recorded
//! argmax, ReLU / bias_act / casts, LRN, softmax cross-entropy with its top-1 / top-5 counts and
//! the forward softmax, dropout, the multi-tensor SGD step with the loss scaler (host and
//! queued), input normalisation and the reductions; plus degenerate shapes and bad arguments,
//! each a clear error (never a panic). The fixed tests (tests/gemm.rs, softmax.rs, ...) hold
//! hand-picked shapes; the draws here reach the combinations between them (M = 1 with a split,
//! prime sizes against every tile, 1..7 classes under top-5, odd pools, length-1 tensors in
//! one optimizer launch, values near fp16's limits).
//!
//! Bounds are the crate's: GEMM fp16 outputs relative L2 <= 2e-3 (max error <= 4e-3 of the
//! largest reference value) against the f64 reference of the same fp16 inputs, fp32 dW / db
//! 1e-4, and bit-exact on small integers in every algorithm; softmax loss 1e-6 relative (plus
//! the rounding of z - max, |z - max| 2^-23, from fp32 logits), dlogits one fp16 ulp, hit counts
//! exact; LRN one fp16 ulp plus fp32 rounding of the window;
//! the element-wise ops, pool, dropout, input normalisation and SGD bit-exact.
//!
//! The tensors the sweeps hand to an op are views fenced by guard bytes in their allocation (see
//! [`fenced`]): the emulator does not bound global memory, so a read past an input shows as NaN
//! in the result and a write past an output as a broken fence.
//!
//! Every test draws `VGG_SWEEP` cases (its own default otherwise; about 6 s for all on emu in
//! release on two cores) from `VGG_SWEEP_SEED` (default 1); a failing case prints its seed and
//! index, and `VGG_SWEEP_ONLY=i` reruns case i alone, `VGG_SWEEP_VERBOSE=1` prints every case.
//! A bigger sweep (500 cases a test, about 3 minutes): `VGG_SWEEP=500 VGG_SWEEP_SEED=7 cargo
//! test --release --test ops_random -- --nocapture`.

use half::f16;
use std::panic::{catch_unwind, AssertUnwindSafe};
use vgg_cuda::data::SampleRng;
use vgg_cuda::ops::gemm::{self, Algo, Linear, Pass, Tile};
use vgg_cuda::ops::{self, LossScaler, LrnParams, OverflowFlag, Sgd, SgdParam, SgdPlan, XentBuffers};
use vgg_cuda::reference::{self as r, InputNorm, LossScaleState, SgdParams};
use vgg_cuda::selftest::GuardedWorkspace;
use vgg_cuda::{DType, Device, Error, Tensor};
mod common;
use common::ShapeRng;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Names the case that was running when a check panics (the seed and index that redraw it).
struct CaseGuard<'a> {
    test: &'a str,
    seed: u64,
    index: u64,
    what: String,
}

impl Drop for CaseGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILED {} case #{} of VGG_SWEEP_SEED={} ({}); rerun alone with VGG_SWEEP_SEED={} VGG_SWEEP_ONLY={}",
                self.test, self.index, self.seed, self.what, self.seed, self.index
            );
        }
    }
}

/// Runs `count` cases of `test` (or `VGG_SWEEP`), each from its own stream of the seed, so that
/// case i draws the same whichever cases run before it. `case` writes a one-line description of
/// its draw into its last argument, which a failure prints with the seed and index.
fn sweep(test: &str, salt: u64, count: u64, mut case: impl FnMut(&mut ShapeRng, &Device, &mut String)) {
    let (count, seed) = (env("VGG_SWEEP", count), env("VGG_SWEEP_SEED", 1));
    let only = std::env::var("VGG_SWEEP_ONLY").ok().and_then(|v| v.parse::<u64>().ok());
    let dev = Device::emu();
    let t = std::time::Instant::now();
    for i in 0..count {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let mut rng = ShapeRng(SampleRng::for_sample(seed, salt, i));
        let mut g = CaseGuard { test, seed, index: i, what: String::new() };
        case(&mut rng, &dev, &mut g.what);
        check_fences(&g.what);
        if std::env::var("VGG_SWEEP_VERBOSE").is_ok() {
            eprintln!("{test} seed {seed} #{i}: {}", g.what);
        }
    }
    eprintln!("{test}: {count} cases of seed {seed} in {:.1} s", t.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Data and comparisons.

fn normals(rng: &mut ShapeRng, len: usize, scale: f64) -> Vec<f32> {
    (0..len).map(|_| (rng.0.normal() * scale) as f32).collect()
}
/// Normals rounded to fp16 (what an fp16 tensor holds).
fn normals16(rng: &mut ShapeRng, len: usize, scale: f64) -> Vec<f32> {
    r::f32_to_f16_round(&normals(rng, len, scale))
}
/// Integers in `[-k, k]`: exact through every sum the GEMM shapes here reach.
fn ints(rng: &mut ShapeRng, len: usize, k: usize) -> Vec<f32> {
    (0..len).map(|_| rng.range(0, 2 * k) as f32 - k as f32).collect()
}

/// fp16 bits with every NaN one NaN (the payload is no part of any op's contract).
fn key16(v: f32) -> u16 {
    if v.is_nan() {
        0x7e00
    } else {
        f16::from_f32(v).to_bits()
    }
}

/// None when `got` and `want` (fp16 values) are the same bits (NaN equal to NaN), else the
/// first differences.
fn diff16(got: &[f32], want: &[f32]) -> Option<String> {
    assert_eq!(got.len(), want.len());
    let bad: Vec<usize> = (0..got.len()).filter(|&i| key16(got[i]) != key16(want[i])).collect();
    let show: Vec<String> = bad.iter().take(4).map(|&i| format!("[{i}] got {:e} want {:e}", got[i], want[i])).collect();
    (!bad.is_empty()).then(|| format!("{} of {} differ: {}", bad.len(), got.len(), show.join(", ")))
}

/// As [`diff16`] for fp32 values: the same bits, NaN equal to NaN.
fn diff32(got: &[f32], want: &[f32]) -> Option<String> {
    assert_eq!(got.len(), want.len());
    let k = |v: f32| if v.is_nan() { 0x7fc0_0000 } else { v.to_bits() };
    let bad: Vec<usize> = (0..got.len()).filter(|&i| k(got[i]) != k(want[i])).collect();
    let show: Vec<String> = bad.iter().take(4).map(|&i| format!("[{i}] got {:e} want {:e}", got[i], want[i])).collect();
    (!bad.is_empty()).then(|| format!("{} of {} differ: {}", bad.len(), got.len(), show.join(", ")))
}

/// An fp16 value's position on the number line in representable steps (ulp distances).
fn ord16(v: f32) -> i32 {
    let b = f16::from_f32(v).to_bits() as i32;
    if b & 0x8000 != 0 {
        -(b & 0x7fff)
    } else {
        b
    }
}

/// The first element of `got` more than one fp16 ulp from `want` rounded to fp16 and also
/// farther than `atol` from `want` (NaN only where the reference is NaN).
fn beyond_ulp16(got: &[f32], want: &[f32], atol: f64) -> Option<String> {
    let i = (0..got.len()).find(|&i| {
        let (g, w) = (got[i], want[i]);
        if w.is_nan() || g.is_nan() {
            return !(w.is_nan() && g.is_nan());
        }
        (ord16(g) - ord16(w)).abs() > 1 && (g as f64 - w as f64).abs() > atol
    })?;
    Some(format!("[{i}] got {:e} want {:e} (fp16 {:e})", got[i], want[i], f16::from_f32(want[i]).to_f32()))
}

/// A tensor of `shape` as a view fenced on both sides, in the same allocation, by bytes as long
/// as the tensor plus 4 KiB. The emulator has no bounds on global memory: an input (holding `v`)
/// is fenced by 0xFF bytes, NaN as fp16 and fp32, so a kernel reading outside it computes NaN;
/// an output (`v` None: NaN inside, so an element never written shows) is fenced by 0x5A bytes
/// (203.25 as fp16, 1.5e16 as fp32), which no write leaves alone, NaN included. A kernel that
/// writes outside a tensor breaks its fence, which [`check_fences`] finds after each case.
fn fenced<T: DType>(dev: &Device, shape: &[usize], v: Option<&[T]>) -> Tensor<T> {
    let bytes = shape.iter().product::<usize>() * std::mem::size_of::<T>();
    let fence = (bytes + 4096).next_multiple_of(256);
    let byte = if v.is_some() { 0xFF } else { 0x5A };
    let mut base = Tensor::<u8>::empty(dev, &[2 * fence + bytes]).unwrap();
    let mut fill = vec![byte; base.len()];
    fill[fence..fence + bytes].fill(0xFF);
    base.copy_from_host(&fill).unwrap();
    let base = std::sync::Arc::new(base);
    let mut t = Tensor::view(&base, fence, shape).unwrap();
    if let Some(v) = v {
        t.copy_from_host(v).unwrap();
    }
    FENCES.with(|f| f.borrow_mut().push((base, fence, bytes, byte)));
    t
}

/// A fenced allocation: its base, the fence's bytes (each side), the tensor's bytes, the fence byte.
type Fence = (std::sync::Arc<Tensor<u8>>, usize, usize, u8);

thread_local! {
    /// Every fenced allocation of the running case.
    static FENCES: std::cell::RefCell<Vec<Fence>> = const { std::cell::RefCell::new(vec![]) };
}

/// Panics unless every fence of the case's tensors is intact; forgets them.
fn check_fences(what: &str) {
    for (base, fence, bytes, byte) in FENCES.with(|f| std::mem::take(&mut *f.borrow_mut())) {
        let h = base.to_host().unwrap();
        let broken = h[..fence].iter().chain(&h[fence + bytes..]).position(|&b| b != byte);
        assert!(broken.is_none(), "{what}: a kernel wrote outside a tensor of {bytes} bytes (fence byte {broken:?})");
    }
}

fn up16(dev: &Device, shape: &[usize], v: &[f32]) -> Tensor<f16> {
    fenced(dev, shape, Some(&r::f32_to_f16(v)))
}
fn up32(dev: &Device, shape: &[usize], v: &[f32]) -> Tensor<f32> {
    fenced(dev, shape, Some(v))
}
fn empty16(dev: &Device, shape: &[usize]) -> Tensor<f16> {
    fenced(dev, shape, None)
}
fn empty32(dev: &Device, shape: &[usize]) -> Tensor<f32> {
    fenced(dev, shape, None)
}

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

struct GemmData {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
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
        let s = loop {
            let s = Linear::new(gemm_rows(rng), gemm_dim(rng, 40), gemm_dim(rng, 40));
            if gemm_cost(s) <= BUDGET {
                break s;
            }
        };
        let exact = rng.below(2) == 0;
        let d = GemmData {
            x: if exact { ints(rng, s.m * s.k, 2) } else { normals16(rng, s.m * s.k, 1.0) },
            w: if exact { ints(rng, s.n * s.k, 2) } else { normals16(rng, s.n * s.k, 0.5) },
            b: if exact { ints(rng, s.n, 3) } else { normals16(rng, s.n, 1.0) },
            dy: if exact { ints(rng, s.m * s.n, 2) } else { normals16(rng, s.m * s.n, 1.0) },
        };
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
        let s = loop {
            let s = if rng.below(3) == 0 {
                // Many rows, few columns: bwd_weight's reduction over M splits, and past 1024
                // rows the bias gradient sums chunks into the workspace after the split partials.
                Linear::new(rng.range(1000, 3100), 8 * rng.range(1, 3), 8 * rng.range(1, 3))
            } else {
                let m = rng.pick(&[1, 2, 3, 5, 8, 13, 17, 33, 64]);
                Linear::new(m, 64 * rng.range(4, 20) + 8 * rng.range(0, 7), 8 * rng.range(1, 20))
            };
            if gemm_cost(s) <= BUDGET {
                break s;
            }
        };
        let exact = rng.below(2) == 0;
        let d = GemmData {
            x: if exact { ints(rng, s.m * s.k, 1) } else { normals16(rng, s.m * s.k, 1.0) },
            w: if exact { ints(rng, s.n * s.k, 1) } else { normals16(rng, s.n * s.k, 0.5) },
            b: if exact { ints(rng, s.n, 3) } else { normals16(rng, s.n, 1.0) },
            dy: if exact { ints(rng, s.m * s.n, 1) } else { normals16(rng, s.m * s.n, 1.0) },
        };
        let algo = match rng.below(3) {
            0 => (Algo::Auto, true),
            _ => (Algo::TensorCore { tile: any_tile(rng), splits: rng.range(2, 12) }, true),
        };
        *what = gemm_run(dev, s, algo, &d, rng.below(2) == 0, true, exact, &[s.m, s.k], false);
    });
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

// ---------------------------------------------------------------------------------------------
// Max-pool.

#[test]
fn maxpool_random_shapes_match_reference() {
    sweep("maxpool", 3, 40, |rng, dev, what| {
        let any = rng.range(1, 70);
        // An empty batch now and then: nothing to do, and nothing to refuse.
        let n = if rng.below(15) == 0 { 0 } else { rng.range(1, 3) };
        let c = rng.pick(&[1, 2, 3, 5, 8, 13, 16, 31, 64, any]);
        let (h, w) = match rng.below(3) {
            0 => (rng.range(2, 3), rng.range(2, 3)),
            _ => (rng.range(2, 19), rng.range(2, 19)),
        };
        let len = n * h * w * c;
        // Small integers (ties everywhere: the first maximum wins), some NaN and infinities.
        let mut x = ints(rng, len, 2);
        if len > 0 && rng.below(2) == 0 {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(len);
                x[i] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 65504.0]);
            }
        }
        *what = format!("x [{n}, {h}, {w}, {c}]");
        let (oh, ow) = (h / 2, w / 2);
        let dyv = normals16(rng, n * oh * ow * c, 1.0);
        let xt = up16(dev, &[n, h, w, c], &x);
        let dyt = up16(dev, &[n, oh, ow, c], &dyv);
        let (mut y, mut y2) = (empty16(dev, &[n, oh, ow, c]), empty16(dev, &[n, oh, ow, c]));
        let mut arg = Tensor::<u8>::zeros(dev, &[n, oh, ow, c]).unwrap();
        ops::maxpool2x2_fwd(&xt, &mut y).unwrap();
        ops::maxpool2x2_fwd_arg(&xt, &mut y2, &mut arg).unwrap();
        let want = r::maxpool2x2_fwd(n, h, w, c, &x);
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: fwd");
        assert_eq!(diff16(&y2.to_f32().unwrap(), &want), None, "{what}: fwd with argmax");
        let (mut dx, mut dx2) = (empty16(dev, &[n, h, w, c]), empty16(dev, &[n, h, w, c]));
        ops::maxpool2x2_bwd(&xt, &dyt, &mut dx).unwrap();
        ops::maxpool2x2_bwd_arg(&arg, &dyt, &mut dx2).unwrap();
        let want = r::maxpool2x2_bwd(n, h, w, c, &x, &dyv);
        assert_eq!(diff16(&dx.to_f32().unwrap(), &want), None, "{what}: bwd");
        assert_eq!(diff16(&dx2.to_f32().unwrap(), &want), None, "{what}: bwd from argmax");
    });
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops and casts.

/// fp16 values across the whole range: normals, zeros of both signs, subnormals, the largest
/// finite values, infinities and NaN.
fn wild16(rng: &mut ShapeRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| match rng.below(12) {
            // Zeros, the smallest subnormal, the smallest normal, the largest finite, infinities.
            0 => rng.pick(&[
                0.0,
                -0.0,
                2f32.powi(-24),
                -2f32.powi(-24),
                2f32.powi(-14),
                65504.0,
                -65504.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
            ]),
            1 => f16::from_bits(rng.0.next_u64() as u16).to_f32(),
            _ => f16::from_f64(rng.0.normal() * 4.0).to_f32(),
        })
        .collect()
}

/// A random shape of `len`-ish elements with the channel dimension `c` last.
fn shape_with_last(rng: &mut ShapeRng, c: usize) -> Vec<usize> {
    match rng.below(3) {
        0 => vec![rng.range(1, 40), c],
        1 => vec![rng.range(1, 3), rng.range(1, 7), rng.range(1, 7), c],
        _ => vec![rng.range(0, 2), rng.range(1, 9), c],
    }
}

#[test]
fn elementwise_random_match_reference() {
    sweep("elementwise", 4, 40, |rng, dev, what| {
        let any = rng.range(1, 300);
        let c = rng.pick(&[1, 2, 3, 7, 8, 64, any]);
        let shape = shape_with_last(rng, c);
        let len: usize = shape.iter().product();
        *what = format!("shape {shape:?}");
        let x = wild16(rng, len);
        let dyv = wild16(rng, len);
        let bias = wild16(rng, c);
        let xt = up16(dev, &shape, &x);
        let dyt = up16(dev, &shape, &dyv);
        let bt = up16(dev, &[c], &bias);
        // ReLU, out of place and in place.
        let want = r::relu_fwd(&x);
        let mut y = empty16(dev, &shape);
        ops::relu_fwd(&xt, &mut y).unwrap();
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: relu_fwd");
        let (alias, mut inplace) = aliased16(dev, &shape, &x);
        ops::relu_fwd(&alias, &mut inplace).unwrap();
        assert_eq!(diff16(&inplace.to_f32().unwrap(), &want), None, "{what}: relu_fwd in place");
        let want_dx = r::relu_bwd(&r::relu_fwd(&x), &dyv);
        let mut dx = empty16(dev, &shape);
        ops::relu_bwd(&y, &dyt, &mut dx).unwrap();
        assert_eq!(diff16(&dx.to_f32().unwrap(), &want_dx), None, "{what}: relu_bwd");
        // bias_act with and without ReLU: one fp32 add, rounded once.
        for relu in [false, true] {
            let sum = r::bias_add_nhwc(&x, &bias, c);
            let want = r::f32_to_f16_round(&if relu { r::relu_fwd(&sum) } else { sum });
            let mut y = empty16(dev, &shape);
            ops::bias_act(&xt, &bt, &mut y, relu).unwrap();
            assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: bias_act relu {relu}");
        }
        // Casts: fp32 values around fp16's limits (65519.99 rounds down, 65520 to inf, 2^-25
        // ties to 0, 3 * 2^-26 up to the smallest subnormal).
        let f: Vec<f32> = (0..len)
            .map(|_| match rng.below(4) {
                0 => rng.pick(&[
                    65519.99,
                    65520.0,
                    -65520.0,
                    2f32.powi(-25),
                    3.0 * 2f32.powi(-26),
                    1e-30,
                    1e30,
                    f32::NAN,
                ]),
                1 => (rng.0.normal() * 1e5) as f32,
                _ => (rng.0.normal() * 3.0) as f32,
            })
            .collect();
        let ft = up32(dev, &shape, &f);
        let mut h = empty16(dev, &shape);
        ops::cast_f32_to_f16(&ft, &mut h).unwrap();
        assert_eq!(diff16(&h.to_f32().unwrap(), &r::f32_to_f16_round(&f)), None, "{what}: cast_f32_to_f16");
        let mut back = empty32(dev, &shape);
        ops::cast_f16_to_f32(&xt, &mut back).unwrap();
        assert_eq!(diff32(&back.to_host().unwrap(), &x), None, "{what}: cast_f16_to_f32");
    });
}

/// Two handles on the same bytes holding `v`: the in-place form of the ops that document one.
fn aliased16(dev: &Device, shape: &[usize], v: &[f32]) -> (Tensor<f16>, Tensor<f16>) {
    let base = std::sync::Arc::new(Tensor::<u8>::zeros(dev, &[(2 * v.len()).max(1)]).unwrap());
    let (mut a, b) = (Tensor::view(&base, 0, shape).unwrap(), Tensor::view(&base, 0, shape).unwrap());
    a.copy_from_host(&r::f32_to_f16(v)).unwrap();
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// LRN.

#[test]
fn lrn_random_match_reference() {
    sweep("lrn", 5, 30, |rng, dev, what| {
        let any = rng.range(1, 300);
        let c = rng.pick(&[1, 2, 3, 4, 5, 6, 7, 64, 96, 129, any]);
        // Up to 2 x 40 x 40 pixels: a block stages 2048 / C whole pixels, so even C = 1 spans
        // several blocks, the last one partial.
        let pixels_shape = loop {
            let s = [rng.range(0, 2), rng.range(1, 40), rng.range(1, 40)];
            if s.iter().product::<usize>() * c <= 100_000 {
                break s;
            }
        };
        let shape = [pixels_shape[0], pixels_shape[1], pixels_shape[2], c];
        let p = match rng.below(3) {
            0 => LrnParams::ALEXNET,
            _ => LrnParams {
                size: rng.pick(&[1, 2, 3, 4, 5, 7, 9, 11, 600]),
                alpha: rng.pick(&[0.0, 1e-4, 0.1, 1.0, 5.0]),
                beta: rng.pick(&[0.0, 0.5, 0.75, 1.0, 2.0]),
                k: rng.pick(&[0.5, 1.0, 2.0, 10.0]),
            },
        };
        *what = format!("x {shape:?} {p:?}");
        let len = shape.iter().product();
        let scale = rng.pick(&[0.1, 1.0, 10.0, 100.0]);
        let x = normals16(rng, len, scale);
        let dyv = normals16(rng, len, 1.0);
        let xt = up16(dev, &shape, &x);
        let mut y = empty16(dev, &shape);
        ops::lrn_fwd(&xt, &mut y, &p).unwrap();
        let want = r::lrn_fwd(&x, c, &p);
        let amax = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let bad = beyond_ulp16(&y.to_f32().unwrap(), &want, 1e-5 * amax);
        assert!(bad.is_none(), "{what}: lrn_fwd: {}", bad.unwrap());
        let mut dx = empty16(dev, &shape);
        ops::lrn_bwd(&xt, &up16(dev, &shape, &dyv), &mut dx, &p).unwrap();
        let want = r::lrn_bwd(&x, &dyv, c, &p);
        // The backward pass subtracts two fp32 terms: its error is fp32 rounding of the larger.
        let amax = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let bad = beyond_ulp16(&dx.to_f32().unwrap(), &want, 1e-5 * amax);
        assert!(bad.is_none(), "{what}: lrn_bwd: {}", bad.unwrap());
    });
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy and softmax.

/// Logits of one draw: normals at some scale, small-integer ties, confident rows (the label far
/// above the rest), rows shifted far from zero; fp16 values unless `f32`.
fn logits(rng: &mut ShapeRng, batch: usize, classes: usize, labels: &[i32], f32_: bool) -> (Vec<f32>, &'static str) {
    let kind = rng.pick(&["normal", "ties", "confident", "shifted", "tiny", "overflow"]);
    let mut z = match kind {
        "ties" => ints(rng, batch * classes, 2),
        "tiny" => normals(rng, batch * classes, 1e-4),
        _ => {
            let scale = rng.pick(&[1.0, 3.0, 8.0]);
            normals(rng, batch * classes, scale)
        }
    };
    for (i, row) in z.chunks_exact_mut(classes).enumerate() {
        match kind {
            "confident" => row[labels[i] as usize] += rng.pick(&[20.0, 30.0, 80.0]) as f32,
            "shifted" => {
                let shift = if f32_ { rng.pick(&[3e4, -3e4, 1e6]) } else { rng.pick(&[3e4, -3e4, 6e4]) };
                row.iter_mut().for_each(|v| *v += shift as f32);
            }
            // An overflow upstream: a few infinities or NaN (the largest fp16 values too).
            "overflow" if rng.below(3) == 0 => {
                let j = rng.below(classes);
                row[j] = rng.pick(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 65504.0, -65504.0]);
            }
            _ => {}
        }
    }
    (if f32_ { z } else { r::f32_to_f16_round(&z) }, kind)
}

/// The largest finite `|z - max|` of any row.
fn max_spread(z: &[f32], classes: usize) -> f64 {
    let finite = |v: &&f32| v.is_finite();
    z.chunks_exact(classes)
        .map(|row| {
            let m = row.iter().filter(finite).fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            row.iter().filter(finite).fold(0f64, |d, &v| d.max(m - v as f64))
        })
        .fold(0.0, f64::max)
}

#[test]
fn softmax_xent_random_match_reference() {
    sweep("softmax_xent", 6, 40, |rng, dev, what| {
        let classes = match rng.below(3) {
            0 => rng.range(1, 7),
            1 => rng.pick(&[8, 10, 31, 32, 33, 255, 256, 257, 1000]),
            _ => rng.range(1, 1100),
        };
        let any = rng.range(1, 40);
        // Past 256 rows the finishing block's threads take several rows each.
        let big = if classes <= 64 { rng.pick(&[255, 256, 257, 600]) } else { 1 };
        let batch = rng.pick(&[1, 2, 3, 5, 31, 32, 33, any, any, big]);
        let f32_ = rng.below(3) == 0;
        let labels: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
        let (z, kind) = logits(rng, batch, classes, &labels, f32_);
        let scale = rng.pick(&[1.0f32, 3.0, 128.0, 1024.0, 65536.0]);
        let capacity = batch + rng.pick(&[0, 0, 1, 7]);
        *what = format!("{batch}x{classes} {kind} f32 {f32_} scale {scale} capacity {capacity}");
        let lt = Tensor::from_host(dev, &[batch], &labels).unwrap();
        let mut bufs = XentBuffers::new(dev, capacity).unwrap();
        let mut dz = empty16(dev, &[batch, classes]);
        // The scale from the host, or from a loss scaler's device state (a queued step's).
        let scaler = (rng.below(4) == 0).then(|| {
            let mut s = LossScaler::with(dev, scale, 1000).unwrap();
            s.queue().unwrap();
            s
        });
        what.push_str(&format!(" device scale {}", scaler.is_some()));
        let (z16, z32) = (up16(dev, &[batch, classes], &z), up32(dev, &[batch, classes], &z));
        match (&scaler, f32_) {
            (None, false) => ops::softmax_xent(&z16, &lt, Some(&mut dz), scale, &mut bufs),
            (None, true) => ops::softmax_xent(&z32, &lt, Some(&mut dz), scale, &mut bufs),
            (Some(s), false) => ops::softmax_xent_device_scale(&z16, &lt, Some(&mut dz), s, &mut bufs),
            (Some(s), true) => ops::softmax_xent_device_scale(&z32, &lt, Some(&mut dz), s, &mut bufs),
        }
        .unwrap();
        let got = bufs.check().unwrap();
        let (loss, _) = r::softmax_xent_fwd(batch, classes, &z, &labels);
        let err = (got.loss as f64 - loss).abs();
        // From fp32 logits the kernel's z - max rounds (|z - max| 2^-24), which a confident row's
        // loss, a sum of exp(z - max), carries as relative error; fp16 logits subtract exactly.
        let spread = if f32_ { max_spread(&z, classes) * 2f64.powi(-23) } else { 0.0 };
        let ok = err <= (1e-6 + spread) * loss.abs() || got.loss as f64 == loss || loss.is_nan() && got.loss.is_nan();
        assert!(ok, "{what}: loss {} want {loss} (rel {:e})", got.loss, err / loss);
        let want_dz: Vec<f32> = r::softmax_xent_bwd(batch, classes, &z, &labels).iter().map(|v| v * scale).collect();
        let bad = beyond_ulp16(&dz.to_f32().unwrap(), &want_dz, 0.0);
        assert!(bad.is_none(), "{what}: dlogits beyond one fp16 ulp: {}", bad.unwrap());
        let want = (r::topk_hits(batch, classes, &z, &labels, 1), r::topk_hits(batch, classes, &z, &labels, 5));
        assert_eq!((got.top1, got.top5, got.rows), (want.0, want.1, batch), "{what}: top-1, top-5, rows");
        // The forward softmax of the same logits: a few fp32 ulps from fp16 logits, plus the
        // rounding of z - max (|z - max| 2^-24 relative) from fp32 ones.
        let mut p = empty32(dev, &[batch, classes]);
        if f32_ {
            ops::softmax_fwd(&up32(dev, &[batch, classes], &z), &mut p).unwrap();
        } else {
            ops::softmax_fwd(&up16(dev, &[batch, classes], &z), &mut p).unwrap();
        }
        let (got, want) = (p.to_host().unwrap(), r::softmax_fwd(batch, classes, &z));
        for (row, (g, w)) in z.chunks_exact(classes).zip(got.chunks_exact(classes).zip(want.chunks_exact(classes))) {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            for j in 0..classes {
                let tol = 1e-38 + w[j] as f64 * (4e-6 + (m - row[j] as f64).abs() * 2f64.powi(-23));
                assert!(
                    g[j] == w[j] || g[j].is_nan() && w[j].is_nan() || (g[j] as f64 - w[j] as f64).abs() <= tol,
                    "{what}: softmax_fwd [{j}] got {:e} want {:e}",
                    g[j],
                    w[j]
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Dropout.

#[test]
fn dropout_random_match_reference() {
    sweep("dropout", 7, 40, |rng, dev, what| {
        let len = match rng.below(3) {
            0 => rng.pick(&[0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 257]),
            _ => rng.range(1, 20_000),
        };
        let p = match rng.below(4) {
            0 => rng.pick(&[0.0, 1.0, 1e-7, 0.5, 0.9999]),
            _ => rng.0.uniform() as f32,
        };
        let (seed, step) = (rng.0.next_u64(), rng.0.next_u64() >> rng.range(0, 63));
        let inplace = rng.below(3) == 0;
        *what = format!("len {len} p {p} seed {seed} step {step} in place {inplace}");
        let x = wild16(rng, len);
        let want_y = r::f32_to_f16_round(&r::dropout_fwd(&x, seed, step, p));
        let want_dx = r::f32_to_f16_round(&r::dropout_bwd(&x, seed, step, p));
        let got = |bwd: bool| {
            if inplace {
                let (a, mut b) = aliased16(dev, &[len], &x);
                if bwd {
                    ops::dropout_bwd(&a, &mut b, seed, step, p)
                } else {
                    ops::dropout_fwd(&a, &mut b, seed, step, p)
                }
                .unwrap();
                b.to_f32().unwrap()
            } else {
                let (a, mut b) = (up16(dev, &[len], &x), empty16(dev, &[len]));
                if bwd {
                    ops::dropout_bwd(&a, &mut b, seed, step, p)
                } else {
                    ops::dropout_fwd(&a, &mut b, seed, step, p)
                }
                .unwrap();
                b.to_f32().unwrap()
            }
        };
        assert_eq!(diff16(&got(false), &want_y), None, "{what}: fwd");
        assert_eq!(diff16(&got(true), &want_dx), None, "{what}: bwd");
        // The key a captured step reads from a StepVars: the mask of (that layer's seed, step).
        let layer = rng.below(2);
        let mut seeds = [rng.0.next_u64(), rng.0.next_u64()];
        seeds[layer] = seed;
        let mut vars = ops::StepVars::new(dev).unwrap();
        vars.set(seeds, step, 0.0).unwrap();
        let mut y = empty16(dev, &[len]);
        ops::dropout(&up16(dev, &[len], &x), &mut y, ops::DropoutKey::Device { vars: &vars, layer }, p).unwrap();
        assert_eq!(diff16(&y.to_f32().unwrap(), &want_y), None, "{what}: key of StepVars layer {layer}");
    });
}

// ---------------------------------------------------------------------------------------------
// The optimizer.

struct Param {
    w: Tensor<f32>,
    v: Tensor<f32>,
    g: Tensor<f32>,
    w16: Option<Tensor<f16>>,
    decay: bool,
    host: (Vec<f32>, Vec<f32>, Vec<f32>),
}

fn sgd_params(ps: &mut [Param]) -> Vec<SgdParam<'_>> {
    ps.iter_mut().map(|p| SgdParam { w: &mut p.w, v: &mut p.v, g: &p.g, w16: p.w16.as_mut(), decay: p.decay }).collect()
}

/// Every tensor's w, v and fp16 copy against the host's, bit for bit.
fn check_params(ps: &[Param], what: &str) {
    for (i, p) in ps.iter().enumerate() {
        let (w, v, _) = &p.host;
        assert_eq!(diff32(&p.w.to_host().unwrap(), w), None, "{what}: tensor {i} (len {}) w", w.len());
        assert_eq!(diff32(&p.v.to_host().unwrap(), v), None, "{what}: tensor {i} (len {}) momentum", w.len());
        if let Some(h) = &p.w16 {
            assert_eq!(diff16(&h.to_f32().unwrap(), &r::f32_to_f16_round(w)), None, "{what}: tensor {i} fp16 copy");
        }
    }
}

#[test]
fn sgd_random_tensor_sets_match_reference() {
    sweep("sgd", 8, 30, |rng, dev, what| {
        let any = rng.range(1, 60);
        let count = rng.pick(&[1, 2, 3, 7, 30, any]);
        let big = rng.below(6) == 0;
        let lens: Vec<usize> = (0..count)
            .map(|_| match rng.below(6) {
                0 => rng.pick(&[1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17]),
                1 if big => rng.pick(&[ops::optim::CHUNK - 1, ops::optim::CHUNK + 1, 2 * ops::optim::CHUNK + 3]),
                _ => rng.range(1, 3000),
            })
            .collect();
        let gscale = rng.pick(&[1e-3, 1.0, 1e4, 6e4]);
        let mut ps: Vec<Param> = lens
            .iter()
            .map(|&n| {
                let (w, g) = (normals(rng, n, 0.1), normals(rng, n, gscale));
                let v = if rng.below(2) == 0 { vec![0.0; n] } else { normals(rng, n, 0.01) };
                Param {
                    w: up32(dev, &[n], &w),
                    v: up32(dev, &[n], &v),
                    g: up32(dev, &[n], &g),
                    w16: (rng.below(3) != 0).then(|| empty16(dev, &[n])),
                    decay: rng.below(2) == 0,
                    host: (w, v, g),
                }
            })
            .collect();
        let sgd = Sgd {
            lr: rng.pick(&[0.0, 1e-2, 0.3]),
            momentum: rng.pick(&[0.0, 0.9, 0.99]),
            weight_decay: rng.pick(&[0.0, 5e-4, 1e-2]),
        };
        // Scales at f32's ends too: a run of overflows halves one to the smallest positive value
        // (never to 0), clean steps double one to f32::MAX (never to infinity).
        let scale = rng.pick(&[0.5f32, 1.0, 3.0, 128.0, 65536.0, f32::from_bits(3), f32::MAX / 2.0]);
        let interval = rng.range(1, 3) as u32;
        *what = format!("{count} tensors {lens:?} {sgd:?} scale {scale} interval {interval}");
        let plan = SgdPlan::new(&sgd_params(&mut ps)).unwrap();
        assert_eq!(plan.tensors(), count, "{what}");
        // Two plain steps at a fixed scale.
        for step in 0..2 {
            let hp = sgd.with_scale(scale);
            plan.step(&mut sgd_params(&mut ps), &hp, None).unwrap();
            for p in &mut ps {
                let (w, v, g) = &mut p.host;
                r::sgd_step(w, v, g, &hp, p.decay);
            }
            check_params(&ps, &format!("{what} step {step}"));
        }
        // The loss scaler, on the host and queued, with an Inf or NaN gradient in some steps:
        // a skipped step changes nothing, and the scale follows the reference's rules.
        let mut scaler = LossScaler::with(dev, scale, interval).unwrap();
        let mut st = LossScaleState { scale, clean_steps: 0, growth_interval: interval, skipped: 0 };
        let queued = rng.below(2) == 0;
        let mut vars = ops::StepVars::new(dev).unwrap();
        for step in 0..4 {
            let bad = rng.below(3) == 0;
            let (t, i) = (rng.below(count), rng.below(lens[0].max(1)));
            let i = i.min(lens[t] - 1);
            if bad {
                let mut g = ps[t].host.2.clone();
                g[i] = rng.pick(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
                ps[t].g.copy_from_host(&g).unwrap();
            }
            // Queued steps take the learning rate from a StepVars half the time (a captured
            // step's), set to another value than `sgd.lr`, which must then go unused.
            let vars_lr = (queued && rng.below(2) == 0).then(|| rng.pick(&[0.0f32, 0.05, 0.7]));
            let applied_here = match (queued, vars_lr) {
                (true, Some(lr)) => {
                    vars.set([1, 2], step as u64, lr).unwrap();
                    scaler.step_queued_at(&plan, &mut sgd_params(&mut ps), sgd, &vars).unwrap();
                    None
                }
                (true, None) => {
                    scaler.step_queued(&plan, &mut sgd_params(&mut ps), sgd).unwrap();
                    None
                }
                _ => Some(scaler.step(&plan, &mut sgd_params(&mut ps), sgd).unwrap()),
            };
            let hp = SgdParams { loss_scale: st.scale, lr: vars_lr.unwrap_or(sgd.lr), ..sgd.with_scale(1.0) };
            let applied = r::loss_scale_update(&mut st, bad);
            if let Some(a) = applied_here {
                assert_eq!(a, applied, "{what}: scaler step {step} applied");
            }
            if applied {
                for p in &mut ps {
                    let (w, v, g) = &mut p.host;
                    r::sgd_step(w, v, g, &hp, p.decay);
                }
            }
            if bad {
                let p = &mut ps[t];
                p.g.copy_from_host(&p.host.2).unwrap();
            }
            check_params(
                &ps,
                &format!("{what} scaler step {step} (bad gradient {bad} at tensor {t} [{i}], queued {queued})"),
            );
        }
        scaler.sync().unwrap();
        assert_eq!(
            (scaler.scale(), scaler.clean_steps(), scaler.skipped()),
            (st.scale, st.clean_steps, st.skipped),
            "{what}: scaler state"
        );
        // The overflow check alone, on a clean set, then with one bad element.
        let mut flag = OverflowFlag::new(dev).unwrap();
        plan.check_overflow(&sgd_params(&mut ps), &mut flag).unwrap();
        assert!(!flag.read().unwrap(), "{what}: clean gradients flagged");
        let t = rng.below(count);
        let i = rng.below(lens[t]);
        let mut g = ps[t].host.2.clone();
        g[i] = f32::NAN;
        ps[t].g.copy_from_host(&g).unwrap();
        plan.check_overflow(&sgd_params(&mut ps), &mut flag).unwrap();
        assert!(flag.read().unwrap(), "{what}: NaN at tensor {t} [{i}] not flagged");
    });
}

// ---------------------------------------------------------------------------------------------
// Input normalisation.

#[test]
fn normalize_input_random_match_reference() {
    sweep("normalize_input", 9, 40, |rng, dev, what| {
        let (n, h, w) = match rng.below(3) {
            0 => (rng.range(0, 3), rng.range(1, 3), rng.range(1, 3)),
            _ => (rng.range(1, 4), rng.range(1, 33), rng.range(1, 33)),
        };
        let norm = match rng.below(4) {
            0 => InputNorm::IMAGENET,
            1 => InputNorm::IMAGENET_MEAN,
            2 => InputNorm { mean: [0.0, 255.0, 1e4], std: Some([1e-3, -2.0, 1e5]) },
            _ => {
                let m = [0, 1, 2].map(|_| (rng.0.uniform() * 255.0) as f32);
                let s = [0, 1, 2].map(|_| (rng.0.uniform() * 100.0 + 0.01) as f32);
                InputNorm { mean: m, std: rng.0.coin().then_some(s) }
            }
        };
        let flip: Option<Vec<u8>> = (rng.below(3) != 0).then(|| (0..n).map(|_| rng.pick(&[0, 0, 1, 255])).collect());
        *what = format!("[{n}, {h}, {w}, 3] {norm:?} flip {flip:?}");
        let x: Vec<u8> = (0..n * h * w * 3).map(|_| rng.0.next_u64() as u8).collect();
        let xt = Tensor::from_host(dev, &[n, h, w, 3], &x).unwrap();
        let ft = flip.as_ref().map(|f| Tensor::from_host(dev, &[n], f).unwrap());
        let mut y = empty16(dev, &[n, h, w, 3]);
        ops::normalize_input(&xt, ft.as_ref(), &norm, &mut y).unwrap();
        let want = r::f32_to_f16_round(&r::normalize_input([n, h, w, 3], &x, &norm, flip.as_deref()));
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}");
    });
}

// ---------------------------------------------------------------------------------------------
// Reductions.

#[test]
fn reductions_random_match_reference() {
    sweep("reduce", 10, 30, |rng, dev, what| {
        let len = match rng.below(4) {
            0 => rng.pick(&[0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 256, 257]),
            1 => rng.range(16_000, 70_000),
            _ => rng.range(1, 5000),
        };
        let scale = rng.pick(&[1e-3, 1.0, 1e3, 3e4]);
        let mut x = normals(rng, len, scale);
        if rng.below(4) == 0 {
            x.iter_mut().for_each(|v| *v = v.abs()); // no cancellation: the f32 result is the rounded sum
        }
        let special = len > 0 && rng.below(5) == 0;
        if special {
            let i = rng.below(len);
            x[i] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        }
        let half = rng.below(2) == 0;
        if half {
            x = r::f32_to_f16_round(&x);
        }
        *what = format!("len {len} scale {scale} fp16 {half} special {special}");
        let (sum, max) = if half {
            let t = up16(dev, &[len], &x);
            (ops::reduce_sum(&t).unwrap(), ops::reduce_max_abs(&t).unwrap())
        } else {
            let t = up32(dev, &[len], &x);
            (ops::reduce_sum(&t).unwrap(), ops::reduce_max_abs(&t).unwrap())
        };
        let want_sum = r::tensor_sum(&x);
        let abs_sum: f64 = x.iter().map(|v| v.abs() as f64).sum();
        // f64 partials in another order than the reference's: one f32 rounding of a sum that
        // differs by ~1e-16 of sum |x|.
        let ok = if want_sum.is_nan() {
            sum.is_nan()
        } else if want_sum.is_infinite() {
            sum as f64 == want_sum
        } else {
            (sum as f64 - want_sum).abs() <= want_sum.abs() * 2f64.powi(-24) + abs_sum * 1e-14
        };
        assert!(ok, "{what}: sum {sum:e} want {want_sum:e}");
        assert_eq!(diff32(&[max], &[r::tensor_max_abs(&x)]), None, "{what}: max_abs");
    });
}

// ---------------------------------------------------------------------------------------------
// Bad arguments.

/// Each call is refused with an error whose message contains its needle: not a panic, not a
/// silent run.
#[test]
fn bad_arguments_are_clear_errors() {
    let dev = Device::emu();
    let t16 = |shape: &[usize]| Tensor::<f16>::zeros(&dev, shape).unwrap();
    let t32 = |shape: &[usize]| Tensor::<f32>::zeros(&dev, shape).unwrap();
    type Call<'a> = Box<dyn Fn() -> vgg_cuda::Result<()> + 'a>;
    let p = LrnParams::ALEXNET;
    let cases: Vec<(&str, Call)> = vec![
        // Max-pool: a side under 2 has no window.
        ("H, W >= 2", Box::new(|| ops::maxpool2x2_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 0, 0, 4])))),
        ("H, W >= 2", Box::new(|| ops::maxpool2x2_fwd(&t16(&[2, 5, 1, 3]), &mut t16(&[2, 2, 0, 3])))),
        (
            "H, W >= 2",
            Box::new(|| ops::maxpool2x2_bwd(&t16(&[1, 1, 6, 2]), &t16(&[1, 0, 3, 2]), &mut t16(&[1, 1, 6, 2]))),
        ),
        (
            "must have shape [1, 1, 1, 4]",
            Box::new(|| ops::maxpool2x2_fwd(&t16(&[1, 3, 3, 4]), &mut t16(&[1, 2, 2, 4]))),
        ),
        ("NHWC", Box::new(|| ops::maxpool2x2_fwd(&t16(&[4, 4, 4]), &mut t16(&[2, 2, 4])))),
        (
            "argmax",
            Box::new(|| {
                ops::maxpool2x2_bwd_arg(
                    &Tensor::<u8>::zeros(&dev, &[1, 2, 1, 4]).unwrap(),
                    &t16(&[1, 1, 2, 4]),
                    &mut t16(&[1, 2, 4, 4]),
                )
            }),
        ),
        // Element-wise: lengths and the bias.
        ("relu output", Box::new(|| ops::relu_fwd(&t16(&[7]), &mut t16(&[8])))),
        ("relu dy", Box::new(|| ops::relu_bwd(&t16(&[7]), &t16(&[6]), &mut t16(&[7])))),
        ("bias", Box::new(|| ops::bias_act(&t16(&[2, 5]), &t16(&[4]), &mut t16(&[2, 5]), true))),
        ("no channel dimension", Box::new(|| ops::bias_act(&t16(&[2, 0]), &t16(&[0]), &mut t16(&[2, 0]), true))),
        ("cast output", Box::new(|| ops::cast_f32_to_f16(&t32(&[5]), &mut t16(&[4])))),
        ("cast output", Box::new(|| ops::cast_f16_to_f32(&t16(&[5]), &mut t32(&[6])))),
        // LRN: the window and the constants.
        (
            "window size",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { size: 0, ..p })),
        ),
        ("k > 0", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { k: 0.0, ..p }))),
        (
            "alpha >= 0",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { alpha: -1.0, ..p })),
        ),
        (
            "finite",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { beta: f32::NAN, ..p })),
        ),
        ("no channels", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 0]), &mut t16(&[1, 1, 1, 0]), &p))),
        ("shared memory", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 20_000]), &mut t16(&[1, 1, 1, 20_000]), &p))),
        // Softmax: shapes, the scale, the buffers' capacity.
        ("[batch, classes]", Box::new(|| softmax(&dev, &[6], &[6], 1.0, 6))),
        ("empty logits", Box::new(|| softmax(&dev, &[2, 0], &[2], 1.0, 2))),
        ("empty logits", Box::new(|| softmax(&dev, &[0, 3], &[0], 1.0, 2))),
        ("labels", Box::new(|| softmax(&dev, &[2, 3], &[3], 1.0, 2))),
        ("capacity", Box::new(|| softmax(&dev, &[5, 3], &[5], 1.0, 4))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], 0.0, 2))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], f32::NAN, 2))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], f32::INFINITY, 2))),
        ("batch must be at least 1", Box::new(|| XentBuffers::new(&dev, 0).map(|_| ()))),
        // Dropout: the probability.
        ("p_drop", Box::new(|| ops::dropout_fwd(&t16(&[4]), &mut t16(&[4]), 1, 1, 1.5))),
        ("p_drop", Box::new(|| ops::dropout_fwd(&t16(&[4]), &mut t16(&[4]), 1, 1, -0.1))),
        ("p_drop", Box::new(|| ops::dropout_bwd(&t16(&[4]), &mut t16(&[4]), 1, 1, f32::NAN))),
        ("dropout dx", Box::new(|| ops::dropout_bwd(&t16(&[4]), &mut t16(&[5]), 1, 1, 0.5))),
        (
            "hidden layer 2",
            Box::new(|| {
                let vars = ops::StepVars::new(&dev)?;
                ops::dropout(&t16(&[4]), &mut t16(&[4]), ops::DropoutKey::Device { vars: &vars, layer: 2 }, 0.5)
            }),
        ),
        // Input normalisation.
        ("3 channels", Box::new(|| norm_input(&dev, [1, 2, 2, 4], &InputNorm::IMAGENET))),
        ("std", Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0; 3], std: Some([1.0, 0.0, 1.0]) }))),
        (
            "std",
            Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0; 3], std: Some([1.0, f32::NAN, 1.0]) })),
        ),
        (
            "mean",
            Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0, f32::INFINITY, 0.0], std: None })),
        ),
        // The optimizer: empty sets and tensors, mismatched lengths, hyper-parameters.
        ("no parameter tensors", Box::new(|| SgdPlan::new(&[]).map(|_| ()))),
        ("parameter 1 is empty", Box::new(|| sgd_lens(&dev, &[3, 0, 2], 3, Sgd::VGG, 1.0))),
        ("parameter 0 momentum", Box::new(|| sgd_lens(&dev, &[3], 2, Sgd::VGG, 1.0))),
        ("learning rate", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { lr: f32::NAN, ..Sgd::VGG }, 1.0))),
        ("learning rate", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { lr: -1.0, ..Sgd::VGG }, 1.0))),
        ("momentum", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { momentum: 1.0, ..Sgd::VGG }, 1.0))),
        ("weight decay", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { weight_decay: -1e-4, ..Sgd::VGG }, 1.0))),
        ("loss_scale", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd::VGG, 0.0))),
        ("loss_scale", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd::VGG, f32::INFINITY))),
        // GEMM: mismatched operands, a tensor-core shape it cannot take, a split with no or too
        // small a workspace, a zero split.
        (
            "does not flatten",
            Box::new(|| gemm::linear_fwd(&t16(&[3, 9]), &t16(&[8, 8]), None, false, &mut t16(&[3, 8]), None)),
        ),
        (
            "multiples of 8",
            Box::new(|| {
                gemm::linear_fwd_with(tc(1), &t16(&[3, 12]), &t16(&[8, 12]), None, false, &mut t16(&[3, 8]), None)
            }),
        ),
        (
            "at least 1",
            Box::new(|| {
                gemm::linear_fwd_with(tc(0), &t16(&[3, 16]), &t16(&[8, 16]), None, false, &mut t16(&[3, 8]), None)
            }),
        ),
        (
            "needs a workspace",
            Box::new(|| gemm::linear_bwd_data_with(tc(2), &t16(&[3, 256]), &t16(&[256, 8]), &mut t16(&[3, 8]), None)),
        ),
        (
            "workspace has",
            Box::new(|| {
                let mut ws = Tensor::<u8>::zeros(&dev, &[16]).unwrap();
                gemm::linear_bwd_weight_with(
                    tc(3),
                    &t16(&[256, 8]),
                    &t16(&[256, 8]),
                    &mut t32(&[8, 8]),
                    None,
                    Some(&mut ws),
                )
            }),
        ),
        (
            "filters",
            Box::new(|| {
                gemm::conv1x1_fwd(&t16(&[1, 2, 2, 8]), &t16(&[4, 1, 1, 7]), None, false, &mut t16(&[1, 2, 2, 4]), None)
            }),
        ),
    ];
    let mut failures = vec![];
    for (i, (needle, call)) in cases.iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(Err(e)) if e.to_string().contains(needle) => {}
            Ok(Err(e)) => failures.push(format!("#{i} ({needle}): error `{e}` does not say `{needle}`")),
            Ok(Ok(())) => failures.push(format!("#{i} ({needle}): accepted")),
            Err(_) => failures.push(format!("#{i} ({needle}): panicked")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tc(splits: usize) -> Algo {
    Algo::TensorCore { tile: Tile::T64x128, splits }
}

/// One loss launch of logits `[..]` with `labels` of that shape, read back.
fn softmax(dev: &Device, z: &[usize], labels: &[usize], scale: f32, capacity: usize) -> vgg_cuda::Result<()> {
    let zt = Tensor::<f32>::zeros(dev, z)?;
    let lt = Tensor::<i32>::zeros(dev, labels)?;
    let mut bufs = XentBuffers::new(dev, capacity.max(1))?;
    ops::softmax_xent(&zt, &lt, None, scale, &mut bufs)?;
    bufs.check().map(|_| ())
}

fn norm_input(dev: &Device, shape: [usize; 4], norm: &InputNorm) -> vgg_cuda::Result<()> {
    let x = Tensor::<u8>::zeros(dev, &shape)?;
    ops::normalize_input(&x, None, norm, &mut Tensor::zeros(dev, &shape)?)
}

/// A plan over tensors of `lens` (momentum of `v_len` for the first), then one step.
fn sgd_lens(dev: &Device, lens: &[usize], v_len: usize, sgd: Sgd, scale: f32) -> vgg_cuda::Result<()> {
    let mut ws: Vec<Tensor<f32>> = lens.iter().map(|&n| Tensor::zeros(dev, &[n])).collect::<Result<_, _>>()?;
    let mut vs: Vec<Tensor<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| Tensor::zeros(dev, &[if i == 0 { v_len } else { n }]))
        .collect::<Result<_, _>>()?;
    let gs: Vec<Tensor<f32>> = lens.iter().map(|&n| Tensor::zeros(dev, &[n])).collect::<Result<_, _>>()?;
    let mut params: Vec<SgdParam> = ws
        .iter_mut()
        .zip(vs.iter_mut())
        .zip(&gs)
        .map(|((w, v), g)| SgdParam { w, v, g, w16: None, decay: true })
        .collect();
    let plan = SgdPlan::new(&params)?;
    plan.step(&mut params, &sgd.validate().map(|_| sgd)?.with_scale(scale), None)
}

/// Labels outside `[0, classes)` are reported by `check`, naming the first bad row, and give
/// that row a NaN loss and gradient; the other rows' counts stay right.
#[test]
fn softmax_bad_labels_are_reported() {
    let dev = Device::emu();
    let mut rng = ShapeRng(SampleRng::new(env("VGG_SWEEP_SEED", 1)));
    for _ in 0..6 {
        let (batch, classes) = (rng.range(1, 9), rng.range(1, 7));
        let mut labels: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
        let row = rng.below(batch);
        labels[row] = rng.pick(&[-1, classes as i32, i32::MIN, i32::MAX]);
        let z = normals16(&mut rng, batch * classes, 2.0);
        let mut bufs = XentBuffers::new(&dev, batch).unwrap();
        let mut dz = empty16(&dev, &[batch, classes]);
        let lt = Tensor::from_host(&dev, &[batch], &labels).unwrap();
        ops::softmax_xent(&up16(&dev, &[batch, classes], &z), &lt, Some(&mut dz), 1.0, &mut bufs).unwrap();
        let e = bufs.check().unwrap_err();
        let want = format!("label {} of row {row} is not in 0..{classes}", labels[row]);
        assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains(&want), "{labels:?}: {e}");
        let dz = dz.to_f32().unwrap();
        assert!(dz[row * classes..(row + 1) * classes].iter().all(|v| v.is_nan()), "{labels:?}: row {row} dz {dz:?}");
    }
}

/// Past the launch's cap of 132 x 16 blocks of 256 threads x 8 elements (4.3M elements), the
/// dropout and input kernels grid-stride: a tensor just past it, with a flipped image, against
/// the reference.
#[test]
fn grid_striding_launches_match_reference() {
    let dev = Device::emu();
    let mut rng = ShapeRng(SampleRng::new(env("VGG_SWEEP_SEED", 1)));
    let (n, h, w) = (2, 601, 1201); // 4.33M elements: one group of 8 past the cap
    let x: Vec<u8> = (0..n * h * w * 3).map(|_| rng.0.next_u64() as u8).collect();
    let flip = [0u8, 1];
    let mut y = empty16(&dev, &[n, h, w, 3]);
    let (xt, ft) = (Tensor::from_host(&dev, &[n, h, w, 3], &x).unwrap(), Tensor::from_host(&dev, &[n], &flip).unwrap());
    ops::normalize_input(&xt, Some(&ft), &InputNorm::IMAGENET, &mut y).unwrap();
    let want = r::f32_to_f16_round(&r::normalize_input([n, h, w, 3], &x, &InputNorm::IMAGENET, Some(&flip)));
    assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "normalize_input {n}x{h}x{w}");
    let len = 132 * 16 * 256 * 8 + 13;
    let v: Vec<f32> = (0..len).map(|i| (i % 2047) as f32 - 1023.0).collect();
    let mut y = empty16(&dev, &[len]);
    ops::dropout_fwd(&up16(&dev, &[len], &v), &mut y, 5, 6, 0.25).unwrap();
    assert_eq!(
        diff16(&y.to_f32().unwrap(), &r::f32_to_f16_round(&r::dropout_fwd(&v, 5, 6, 0.25))),
        None,
        "dropout {len}"
    );
    check_fences("grid-striding launches");
}
