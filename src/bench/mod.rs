//! Benchmarks shared by the `vgg bench` CLI, `benches/` and the tests: measurement that can
//! be trusted, written once over the ops API and run on either device.
//!
//! - [`conv`]: the 3x3 convolutions, ours against cuDNN in the same process;
//! - [`copy`]: the global -> shared copy forms our tensor-core kernels use, in GB/s;
//! - [`cudnn`]: the minimal cuDNN binding that yardstick needs;
//! - [`gemm`]: the classifier's GEMMs, ours against cuBLAS, and the SGD step's bandwidth;
//! - [`cublas`]: the minimal cuBLAS binding that yardstick needs;
//! - [`train`]: whole training steps of a VGG (`vgg bench train`), and [`profile`]: one of
//!   them timed launch by launch;
//! - [`plot`]: PNG bar charts of the tables.
//!
//! The rules the op benches (conv, gemm) follow: inputs are random normals (never zeros),
//! several input sets rotate so that the bytes touched between two uses of one set exceed
//! twice the L2 (60 MB on the H200), warm-up first, then many timed samples with device events
//! and the median of them. The training bench alternates two random batches (a step touches
//! far more than the L2 anyway), after warm-up steps, and reports the median step (queued
//! steps: their mean).

pub mod conv;
pub mod copy;
pub mod cublas;
pub mod cudnn;
pub mod gemm;
pub mod plot;
pub mod profile;
pub mod train;
pub mod train_check;

use crate::{Device, Result};
use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The L2 size input rotation is sized against: the H200's 60 MB (the H100 has 50 MB).
pub const L2_BYTES: usize = 60 << 20;

/// How a bench times an operation.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimingConfig {
    /// Untimed calls first (module loading, clocks, the libraries' caches).
    pub warmup: usize,
    /// Timed samples: `None` picks enough for about `target_ms` of timed work, at least
    /// `min_samples`, fewer when `budget_ms` would be exceeded; the budget alone never cuts
    /// below 3 (a median of fewer says little, so those 3 may exceed it).
    pub samples: Option<usize>,
    /// The fewest timed samples an automatic choice makes (when the budget allows).
    pub min_samples: usize,
    /// Milliseconds of timed work an automatic choice of `samples` aims at.
    pub target_ms: f64,
    /// Back-to-back calls in one sample are chosen so a sample lasts at least this long,
    /// which hides the event and launch overheads of very short calls.
    pub min_sample_ms: f64,
    /// The most time one measurement may take, warm-up included, when the samples are
    /// chosen automatically: a pathologically slow kernel gets a few samples, not minutes.
    pub budget_ms: f64,
}

impl TimingConfig {
    /// The GPU defaults: 5 warm-up calls, ~20 ms of samples, at least 10, each >= 1 ms,
    /// at most ~2 s per measurement.
    pub fn gpu() -> Self {
        Self { warmup: 5, samples: None, min_samples: 10, target_ms: 20.0, min_sample_ms: 1.0, budget_ms: 2000.0 }
    }
    /// The emulator: one warm-up call, three single-call samples (it is slow and has no
    /// caches worth warming).
    pub fn emu() -> Self {
        Self { warmup: 1, samples: Some(3), min_samples: 1, target_ms: 0.0, min_sample_ms: 0.0, budget_ms: f64::MAX }
    }
    /// [`TimingConfig::emu`] on the emulator, [`TimingConfig::gpu`] on a GPU.
    pub fn for_device(dev: &Device) -> Self {
        if dev.is_emu() {
            Self::emu()
        } else {
            Self::gpu()
        }
    }
}

/// The result of timing one operation.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// Median time of one call, in milliseconds.
    pub median_ms: f64,
    /// Fastest sample, per call.
    pub min_ms: f64,
    /// Number of timed samples.
    pub samples: usize,
    /// Calls per sample (the sample's time is divided by it).
    pub calls_per_sample: usize,
}

/// Times `call(i)`, where `i` counts every call made (so `i % sets` rotates input sets).
///
/// One untimed call (module loading, planning), one timed call as a first estimate, the rest
/// of the warm-up when affordable, a better estimate, then `samples` samples of
/// `calls_per_sample` back-to-back calls, each bracketed by device events (wall clock on
/// emu). On a GPU one untimed call precedes every sample, so that the start event is reached
/// only once the GPU is busy and the host has queued the timed calls behind it: the time
/// between a host-side record and the first launch is never measured.
pub fn time_calls(dev: &Device, cfg: &TimingConfig, mut call: impl FnMut(usize) -> Result<()>) -> Result<Timing> {
    let mut i = 0usize;
    let mut calls = |n: usize| -> Result<()> {
        for _ in 0..n {
            call(i)?;
            i += 1;
        }
        Ok(())
    };
    calls(1)?;
    dev.synchronize()?;
    let t = dev.start_timer()?;
    calls(1)?;
    let mut est_ms = t.stop_ms()?.max(1e-4);
    let preroll = usize::from(!dev.is_emu());
    let warm = cfg.warmup.saturating_sub(1);
    if warm > 0 && est_ms * (warm + 4) as f64 <= cfg.budget_ms / 4.0 {
        calls(warm)?;
        calls(preroll)?;
        let t = dev.start_timer()?;
        calls(3)?;
        est_ms = (t.stop_ms()? / 3.0).max(1e-4);
    }
    let per_sample = ((cfg.min_sample_ms / est_ms).ceil() as usize).clamp(1, 1000);
    let sample_ms = est_ms * per_sample as f64;
    let samples = cfg
        .samples
        .unwrap_or_else(|| {
            let want = ((cfg.target_ms / sample_ms).ceil() as usize).max(cfg.min_samples);
            let affordable = (cfg.budget_ms / 2.0 / (sample_ms + preroll as f64 * est_ms)).floor() as usize;
            want.min(affordable.max(3))
        })
        .clamp(1, 10_000);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        calls(preroll)?;
        let t = dev.start_timer()?;
        calls(per_sample)?;
        times.push(t.stop_ms()? / per_sample as f64);
    }
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Timing { median_ms: median(&mut times), min_ms, samples, calls_per_sample: per_sample })
}

/// The median (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Standard normal samples shared by every bench input: generating hundreds of millions of
/// fresh normals per run would take longer than the benchmark, so inputs are windows of this
/// pool at different offsets. Its length is odd and prime to every channel count, so a window
/// never repeats with the period of a tensor dimension.
fn normal_pool() -> &'static [f32] {
    static POOL: OnceLock<Vec<f32>> = OnceLock::new();
    POOL.get_or_init(|| {
        const LEN: usize = (1 << 22) + 15;
        const CHUNK: usize = 1 << 16;
        let mut v = vec![0f32; LEN];
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            let mut rng = StdRng::seed_from_u64(0x5eed_0000 + c as u64);
            out.iter_mut().for_each(|x| *x = rng.sample(StandardNormal));
        });
        v
    })
}

/// `len` normal(0, `scale`^2) values rounded to fp16, the window of the shared pool chosen by
/// `seed`.
pub fn random_f16(len: usize, scale: f32, seed: u64) -> Vec<f16> {
    let pool = normal_pool();
    // splitmix64 of the seed picks the window start.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let start = ((z ^ (z >> 31)) % pool.len() as u64) as usize;
    let mut out = vec![f16::ZERO; len];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let mut j = (start + c * CHUNK) % pool.len();
        for x in o {
            *x = f16::from_f32(pool[j] * scale);
            j += 1;
            if j == pool.len() {
                j = 0;
            }
        }
    });
    out
}

/// A device tensor of `shape` holding [`random_f16`]`(len, scale, seed)`, allocated on the
/// device before its values are made on the host: a shape the device cannot hold (`--batch
/// 100000000000`) is then the device's error, which the benches report in the row, where
/// making the host's values first aborted the process on a giant allocation.
pub fn random_tensor(dev: &Device, shape: &[usize], scale: f32, seed: u64) -> Result<crate::Tensor<f16>> {
    let mut t = crate::Tensor::empty(dev, shape)?;
    t.copy_from_host(&random_f16(t.len(), scale, seed))?;
    Ok(t)
}

/// How an output agrees with a trusted one (cuDNN, the f64 reference, or our direct kernel).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    /// `cudnn`, `reference` or `direct`.
    pub against: String,
    /// `max |ours - theirs| / max |theirs|`.
    pub max_rel: f64,
    /// `||ours - theirs||_2 / ||theirs||_2`.
    pub rel_l2: f64,
    /// The bound as text.
    pub bound: String,
    /// Both relative errors are within their bounds (false for a NaN or a length mismatch).
    pub pass: bool,
}

impl Agreement {
    /// Compares `ours` with `theirs`; passes when both relative errors are within bounds
    /// (and finite: a NaN anywhere fails).
    pub fn new(against: &str, ours: &[f32], theirs: &[f32], max_rel_bound: f64, rel_l2_bound: f64) -> Self {
        let (max_rel, rel_l2) = if ours.len() != theirs.len() {
            (f64::INFINITY, f64::INFINITY)
        } else {
            let c = crate::reference::compare(ours, theirs);
            (c.max_abs / c.max_ref.max(1e-30), c.rel_l2)
        };
        Self {
            against: against.into(),
            max_rel,
            rel_l2,
            bound: format!("max_rel <= {max_rel_bound:.0e}, rel_l2 <= {rel_l2_bound:.0e}"),
            pass: max_rel <= max_rel_bound && rel_l2 <= rel_l2_bound,
        }
    }

    /// The agreement cell of a table line: `reference 1.2e-4 / 3.4e-5 ok` (`FAIL` past the bound).
    pub fn cell(&self) -> String {
        format!("{} {:.1e} / {:.1e} {}", self.against, self.max_rel, self.rel_l2, if self.pass { "ok" } else { "FAIL" })
    }
}

/// TFLOP/s with three significant digits (the emulator's are tiny).
pub(crate) fn tflops(t: f64) -> String {
    match t {
        t if t >= 100.0 => format!("{t:.0}"),
        t if t >= 10.0 => format!("{t:.1}"),
        t if t >= 0.01 => format!("{t:.2}"),
        t => format!("{t:.1e}"),
    }
}

/// The items of a comma-separated option value, trimmed, for the `--layers`, `--shapes`,
/// `--passes` and `--batch` lists: an error when there is none or one is empty (`a,,b` or a comma
/// at an end is a typo, not the items named). `what` names an item ("layer"), `valid` says what
/// is accepted.
pub(crate) fn list_items<'a>(
    s: &'a str,
    what: &str,
    valid: &str,
) -> std::result::Result<Vec<&'a str>, conv::BadArgument> {
    if s.trim().is_empty() {
        return Err(conv::BadArgument(format!("no {what} given ({valid})")));
    }
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if items.contains(&"") {
        return Err(conv::BadArgument(format!("an empty {what} in `{s}` (two commas, or one at an end; {valid})")));
    }
    Ok(items)
}

/// A `--passes` value: names from `all` (any subset, any order, repeats once) or `all`; the
/// errors list the valid names. Shared by `bench conv` and `bench gemm`.
pub(crate) fn parse_passes<P: Copy + PartialEq>(
    s: &str,
    all: &[P],
    name: fn(P) -> &'static str,
) -> std::result::Result<Vec<P>, conv::BadArgument> {
    let names: Vec<&str> = all.iter().map(|&p| name(p)).collect();
    let valid = format!("passes: {}, or all", names.join(", "));
    if s.trim() == "all" {
        return Ok(all.to_vec());
    }
    let mut v = vec![];
    for n in list_items(s, "pass", &valid)? {
        let p = all
            .iter()
            .copied()
            .find(|&p| name(p) == n)
            .ok_or_else(|| conv::BadArgument(format!("unknown pass `{n}` ({valid})")))?;
        if !v.contains(&p) {
            v.push(p);
        }
    }
    Ok(v)
}

/// The cells of one timed implementation in a table line: its algorithm, median ms and
/// TFLOP/s, given as `(algo, ms, tflops)`; `-` each when it was not measured.
pub(crate) fn measured_cells(m: Option<(&str, f64, f64)>) -> [String; 3] {
    match m {
        Some((algo, ms, tf)) => [algo.into(), format!("{ms:.4}"), tflops(tf)],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

/// What goes on indented lines below a table line: our error, the library's (`lib` names
/// it), and a disagreement with the bound it broke.
pub(crate) fn problem_lines(
    ours_error: Option<&str>,
    lib: &str,
    lib_error: Option<&str>,
    agreement: Option<&Agreement>,
) -> String {
    let mut s = String::new();
    if let Some(e) = ours_error {
        s += &format!("\n    ours: {e}");
    }
    if let Some(e) = lib_error {
        s += &format!("\n    {lib}: {e}");
    }
    if let Some(a) = agreement.filter(|a| !a.pass) {
        s += &format!("\n    disagrees with {} beyond {}", a.against, a.bound);
    }
    s
}

/// A table row of ours against a library (cuDNN, cuBLAS), as [`Tally`] counts it.
pub(crate) trait VersusRow {
    type Pass: Copy + PartialEq;
    fn pass(&self) -> Self::Pass;
    /// Median ms per call of ours and of the library, each when measured.
    fn ms(&self) -> (Option<f64>, Option<f64>);
    /// Our speed over the library's.
    fn ratio(&self) -> Option<f64>;
    fn agreement(&self) -> Option<&Agreement>;
    /// Our pass failed to run, or its result disagrees.
    fn failed(&self) -> bool;
}

/// Totals over rows of ours against a library: what the conv and gemm summaries hold, with
/// the library's columns named `theirs`.
pub(crate) struct Tally<P> {
    pub rows: usize,
    pub ours_measured: usize,
    pub theirs_measured: usize,
    pub failed: usize,
    pub agreement_checked: usize,
    pub agreement_failed: usize,
    /// Geometric mean of the speed ratios, over all rows and per pass.
    pub geomean_ratio: Option<f64>,
    pub geomean_ratio_by_pass: Vec<(P, f64)>,
    /// Sums of median times over the rows where both were measured.
    pub ours_total_ms: f64,
    pub theirs_total_ms: f64,
}

impl<P: Copy + PartialEq> Tally<P> {
    /// The totals of `rows`, the geometric means per pass in the order of `passes` (those
    /// with a finite positive ratio).
    pub fn of<R: VersusRow<Pass = P>>(rows: &[R], passes: &[P]) -> Self {
        let geomean = |it: &mut dyn Iterator<Item = f64>| {
            let (n, s) = it.fold((0usize, 0f64), |(n, s), r| (n + 1, s + r.ln()));
            (n > 0).then(|| (s / n as f64).exp())
        };
        let ratios = |pass: Option<P>| {
            rows.iter()
                .filter(move |r| pass.is_none_or(|p| r.pass() == p))
                .filter_map(|r| r.ratio())
                .filter(|r| r.is_finite() && *r > 0.0)
        };
        let both = rows.iter().filter_map(|r| match r.ms() {
            (Some(o), Some(t)) => Some((o, t)),
            _ => None,
        });
        Self {
            rows: rows.len(),
            ours_measured: rows.iter().filter(|r| r.ms().0.is_some()).count(),
            theirs_measured: rows.iter().filter(|r| r.ms().1.is_some()).count(),
            failed: rows.iter().filter(|r| r.failed()).count(),
            agreement_checked: rows.iter().filter(|r| r.agreement().is_some()).count(),
            agreement_failed: rows.iter().filter(|r| r.agreement().is_some_and(|a| !a.pass)).count(),
            geomean_ratio: geomean(&mut ratios(None)),
            geomean_ratio_by_pass: passes.iter().filter_map(|&p| Some((p, geomean(&mut ratios(Some(p)))?))).collect(),
            ours_total_ms: both.clone().map(|b| b.0).sum(),
            theirs_total_ms: both.map(|b| b.1).sum(),
        }
    }

    /// One line: counts, agreement, the speed ratios; `lib` names the library, `name` a pass.
    pub fn line(&self, lib: &str, name: impl Fn(P) -> &'static str) -> String {
        let mut s = format!(
            "{} rows: {} measured, {} with {lib}; agreement {}/{} ok; {} failed",
            self.rows,
            self.ours_measured,
            self.theirs_measured,
            self.agreement_checked - self.agreement_failed,
            self.agreement_checked,
            self.failed
        );
        if let Some(g) = self.geomean_ratio {
            let by: Vec<String> =
                self.geomean_ratio_by_pass.iter().map(|&(p, r)| format!("{} {r:.2}x", name(p))).collect();
            s += &format!(
                "; ours/{lib} speed (geomean) {g:.2}x ({}); total {:.3} ms vs {lib} {:.3} ms",
                by.join(", "),
                self.ours_total_ms,
                self.theirs_total_ms
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn random_data_is_normal_and_seeded() {
        let a = random_f16(100_000, 2.0, 1);
        let b = random_f16(100_000, 2.0, 2);
        assert_eq!(a, random_f16(100_000, 2.0, 1));
        assert_ne!(a, b);
        let v: Vec<f64> = a.iter().map(|x| x.to_f64()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "std {}", var.sqrt());
        assert!(v.iter().filter(|&&x| x == 0.0).count() < 100, "too many zeros");
    }

    #[test]
    fn agreement_bounds() {
        let a = Agreement::new("x", &[1.0, 2.0], &[1.0, 2.0], 1e-3, 1e-3);
        assert!(a.pass && a.max_rel == 0.0);
        let b = Agreement::new("x", &[1.0, f32::NAN], &[1.0, 2.0], 1e-3, 1e-3);
        assert!(!b.pass);
        let c = Agreement::new("x", &[1.0], &[1.0, 2.0], 1e-3, 1e-3);
        assert!(!c.pass);
        // Finite errors on either side of each bound: 2.01 against 2 is a max_rel of 0.01 / 2 =
        // 5e-3 and a rel_l2 of 0.01 / sqrt(5) = 4.5e-3; 2.001 a tenth of both.
        let (ours, theirs) = ([1.0, 2.01], [1.0, 2.0]);
        assert!(!Agreement::new("x", &ours, &theirs, 1e-3, 1e-3).pass);
        assert!(Agreement::new("x", &[1.0, 2.001], &theirs, 1e-3, 1e-3).pass);
        assert!(!Agreement::new("x", &ours, &theirs, 1e-2, 1e-3).pass, "rel_l2 over its bound");
        assert!(!Agreement::new("x", &ours, &theirs, 1e-3, 1e-2).pass, "max_rel over its bound");
        assert!(Agreement::new("x", &ours, &theirs, 1e-2, 1e-2).pass);
    }

    #[test]
    fn timing_on_emu() {
        let dev = Device::emu();
        let mut n = 0;
        let t = time_calls(&dev, &TimingConfig::emu(), |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(t.samples, 3);
        assert!(t.median_ms.is_finite() && t.median_ms >= 0.0);
        assert_eq!(n, 1 + 1 + 3);
    }

    #[test]
    fn slow_calls_get_few_samples() {
        let dev = Device::emu();
        let cfg = TimingConfig {
            warmup: 5,
            samples: None,
            min_samples: 10,
            target_ms: 20.0,
            min_sample_ms: 1.0,
            budget_ms: 100.0,
        };
        let mut n = 0;
        let t = time_calls(&dev, &cfg, |_| {
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        })
        .unwrap();
        // No further warm-up (5 calls would exceed a quarter of the budget), three samples.
        assert_eq!((t.samples, t.calls_per_sample, n), (3, 1, 1 + 1 + 3));
        assert!(t.median_ms >= 19.0, "{t:?}");
    }
}
