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
#[path = "../common/mod.rs"]
mod common;
use common::ShapeRng;

mod bad_args;
mod gemm_sweeps;
mod optim_input;
mod pointwise;
mod softmax_dropout;

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

/// Two handles on the same bytes holding `v`: the in-place form of the ops that document one.
fn aliased16(dev: &Device, shape: &[usize], v: &[f32]) -> (Tensor<f16>, Tensor<f16>) {
    let base = std::sync::Arc::new(Tensor::<u8>::zeros(dev, &[(2 * v.len()).max(1)]).unwrap());
    let (mut a, b) = (Tensor::view(&base, 0, shape).unwrap(), Tensor::view(&base, 0, shape).unwrap());
    a.copy_from_host(&r::f32_to_f16(v)).unwrap();
    (a, b)
}
