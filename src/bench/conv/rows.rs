//! `vgg bench conv`'s results: a row per layer and pass (ours, cuDNN's, the ratio, the
//! agreement and, under `tune`, what the tuner measured), their summary and the whole report.

use super::super::{measured_cells, problem_lines, Agreement, Tally, Timing, TimingConfig, VersusRow};
use super::Pass;
use crate::ops::conv_tune::{self, Tuned};
use crate::problem::{ConvProblem, NamedProblem};

/// One timed implementation of one pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Our resolved algorithm, or cuDNN's (`+tc`: tensor-op math).
    pub algo: String,
    /// Median time per call.
    pub ms: f64,
    /// Fastest sample, per call, in ms.
    pub min_ms: f64,
    /// Effective TFLOP/s: the direct convolution's FLOPs over the median time.
    pub tflops: f64,
    /// Timed samples taken.
    pub samples: usize,
    /// Back-to-back calls in one sample.
    pub calls_per_sample: usize,
    /// Workspace the pass was given, in bytes (ours:
    /// [`Conv3x3::workspace_bytes`](crate::ops::conv::Conv3x3::workspace_bytes); cuDNN: its
    /// plan's).
    pub workspace_bytes: usize,
    /// cuDNN's own time for its pick during its algorithm search.
    pub find_ms: Option<f64>,
}

impl Measured {
    pub(super) fn new(
        algo: String,
        t: Timing,
        problem: &ConvProblem,
        workspace_bytes: usize,
        find_ms: Option<f64>,
    ) -> Self {
        Self {
            algo,
            ms: t.median_ms,
            min_ms: t.min_ms,
            tflops: problem.flops() / (t.median_ms * 1e-3) / 1e12,
            samples: t.samples,
            calls_per_sample: t.calls_per_sample,
            workspace_bytes,
            find_ms,
        }
    }
}

/// One variant the tuner timed for a row's pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TuneCandidate {
    /// [`conv_tune::WinoVariant::name`].
    pub variant: String,
    /// Fastest sample per call (None: it cannot run here).
    pub ms: Option<f64>,
    /// Relative L2 distance of its output from the base plan's (None: it cannot run here).
    pub rel_l2: Option<f64>,
    /// Why it cannot run here.
    pub unsupported: Option<String>,
}

/// Under `tune`: what the tuner chose for a row's pass and what it measured.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TunedPass {
    /// The chosen variant ([`conv_tune::WinoVariant::name`]), or `base` where the pass keeps the
    /// base plan's algorithm (nothing to choose between, or no candidate agreed with it).
    pub chosen: String,
    /// Every candidate timed for the pass (empty: the pass was not tuned).
    pub candidates: Vec<TuneCandidate>,
}

impl TunedPass {
    pub(super) fn of(t: &Tuned, pass: Pass) -> Self {
        let i = Pass::ALL.iter().position(|&q| q == pass).unwrap_or(0);
        let finite = |x: f64| x.is_finite().then_some(x);
        Self {
            chosen: t.chosen[i].map_or("base", |v| v.name()).into(),
            candidates: t
                .timings
                .iter()
                .filter(|c| c.pass == pass.ops())
                .map(|c| TuneCandidate {
                    variant: c.variant.name().into(),
                    ms: finite(c.ms),
                    rel_l2: finite(c.rel_l2),
                    unsupported: c.unsupported.clone(),
                })
                .collect(),
        }
    }

    /// `tune: chose X; timed A 0.1234 ms, B 0.2000 ms (disagrees: rel L2 1.0e0), C does not run here`.
    pub fn line(&self) -> String {
        let cands: Vec<String> = self
            .candidates
            .iter()
            .map(|c| match (c.ms, c.rel_l2, &c.unsupported) {
                (_, _, Some(why)) => format!("{} does not run here ({why})", c.variant),
                (Some(ms), Some(r), None) if r <= conv_tune::AGREEMENT => format!("{} {ms:.4} ms", c.variant),
                (Some(ms), r, None) => {
                    format!(
                        "{} {ms:.4} ms (disagrees: rel L2 {}, not chosen)",
                        c.variant,
                        r.map_or("inf".into(), |r| format!("{r:.1e}"))
                    )
                }
                (None, _, None) => format!("{} not timed", c.variant),
            })
            .collect();
        if cands.is_empty() {
            format!("tune: chose {} (nothing to choose between)", self.chosen)
        } else {
            format!("tune: chose {}; timed {}", self.chosen, cands.join(", "))
        }
    }
}

/// One line of the table: one layer, one pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ConvRow {
    /// The layer's name, e.g. `conv1_2`.
    pub layer: String,
    /// The pass benched.
    pub pass: Pass,
    /// Batch.
    pub n: usize,
    /// Height of the input and output (3x3, stride 1, padding 1).
    pub h: usize,
    /// Width of the input and output.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub k: usize,
    /// The direct convolution's GFLOP (`2 N H W C K 9 / 1e9`), the same for all three passes.
    pub gflop: f64,
    /// Input sets rotated (0 when none could be allocated).
    pub sets: usize,
    /// Bytes one call of the pass touches: its two fp16 inputs and its output (fp32 for wgrad).
    pub pass_bytes: usize,
    /// Our pass's timing, when it ran.
    pub ours: Option<Measured>,
    /// Why our pass did not run or could not be checked.
    pub ours_error: Option<String>,
    /// cuDNN's timing, when it ran.
    pub cudnn: Option<Measured>,
    /// Why cuDNN's pass did not run.
    pub cudnn_error: Option<String>,
    /// Our speed over cuDNN's (> 1: we are faster).
    pub ratio: Option<f64>,
    /// Our output on set 0 against cuDNN's, else the f64 reference (emu) or our direct kernel
    /// (GPU, unless ours is the direct kernel); None when nothing was compared.
    pub agreement: Option<Agreement>,
    /// Under `tune`: the tuner's choice and measurements for this pass (our row then times the
    /// plan it chose, named in `ours.algo`).
    #[serde(default)]
    pub tune: Option<TunedPass>,
}

impl ConvRow {
    pub(super) fn new(np: &NamedProblem, pass: Pass) -> Self {
        let p = np.problem;
        Self {
            layer: np.name.to_string(),
            pass,
            n: p.n,
            h: p.h,
            w: p.w,
            c: p.c,
            k: p.k,
            gflop: p.flops() / 1e9,
            sets: 0,
            pass_bytes: 0,
            ours: None,
            ours_error: None,
            cudnn: None,
            cudnn_error: None,
            ratio: None,
            agreement: None,
            tune: None,
        }
    }

    /// Our pass failed to run, or its result disagrees.
    pub fn failed(&self) -> bool {
        self.ours_error.is_some() || self.agreement.as_ref().is_some_and(|a| !a.pass)
    }

    /// The table's shape cell: `NxHxW C>K`, e.g. `64x224x224 3>64`.
    pub fn shape(&self) -> String {
        format!("{}x{}x{} {}>{}", self.n, self.h, self.w, self.c, self.k)
    }

    /// The column titles of [`ConvRow::table_line`].
    pub fn table_header() -> String {
        format!(
            "{:<8} {:<5} {:<18} {:<18} {:>9} {:>7} {:>9} {:<26} {:>7} {:>6}  agreement (max_rel / rel_l2)",
            "layer", "pass", "shape", "our algo", "ours ms", "TFLOP/s", "cuDNN ms", "cuDNN algo", "TFLOP/s", "ratio"
        )
    }

    /// The row as a table line; the tuner's choice (under `tune`) and errors on indented lines
    /// below it.
    pub fn table_line(&self) -> String {
        let [oa, oms, otf] = measured_cells(self.ours.as_ref().map(|m| (m.algo.as_str(), m.ms, m.tflops)));
        let [ca, cms, ctf] = measured_cells(self.cudnn.as_ref().map(|m| (m.algo.as_str(), m.ms, m.tflops)));
        let ratio = self.ratio.map_or("-".into(), |r| format!("{r:.2}"));
        let agree = self.agreement.as_ref().map_or("-".into(), Agreement::cell);
        let tune = self.tune.as_ref().map_or(String::new(), |t| format!("\n    {}", t.line()));
        let problems =
            problem_lines(self.ours_error.as_deref(), "cuDNN", self.cudnn_error.as_deref(), self.agreement.as_ref());
        format!(
            "{:<8} {:<5} {:<18} {:<18} {:>9} {:>7} {:>9} {:<26} {:>7} {:>6}  {}{tune}{problems}",
            self.layer,
            self.pass.name(),
            self.shape(),
            oa,
            oms,
            otf,
            cms,
            ca,
            ctf,
            ratio,
            agree
        )
    }
}

impl VersusRow for ConvRow {
    type Pass = Pass;
    fn pass(&self) -> Pass {
        self.pass
    }
    fn ms(&self) -> (Option<f64>, Option<f64>) {
        (self.ours.as_ref().map(|m| m.ms), self.cudnn.as_ref().map(|m| m.ms))
    }
    fn ratio(&self) -> Option<f64> {
        self.ratio
    }
    fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }
    fn failed(&self) -> bool {
        ConvRow::failed(self)
    }
}

/// Totals over the rows.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConvSummary {
    /// Rows in the report.
    pub rows: usize,
    /// Rows with our timing.
    pub ours_measured: usize,
    /// Rows with cuDNN's timing.
    pub cudnn_measured: usize,
    /// Rows where our pass failed to run or disagrees ([`ConvRow::failed`]).
    pub failed: usize,
    /// Rows whose output was compared.
    pub agreement_checked: usize,
    /// Rows whose comparison broke its bound.
    pub agreement_failed: usize,
    /// Geometric mean of the speed ratios (ours / cuDNN), over all rows and per pass.
    pub geomean_ratio: Option<f64>,
    /// The geometric mean per pass, in [`Pass::ALL`]'s order (passes without a finite positive
    /// ratio left out).
    pub geomean_ratio_by_pass: Vec<(Pass, f64)>,
    /// Sums of median times over the rows where both were measured.
    pub ours_total_ms: f64,
    /// cuDNN's sum of median times over the same rows, in ms.
    pub cudnn_total_ms: f64,
}

impl ConvSummary {
    /// The totals of `rows`.
    pub fn of(rows: &[ConvRow]) -> Self {
        let t = Tally::of(rows, &Pass::ALL);
        Self {
            rows: t.rows,
            ours_measured: t.ours_measured,
            cudnn_measured: t.theirs_measured,
            failed: t.failed,
            agreement_checked: t.agreement_checked,
            agreement_failed: t.agreement_failed,
            geomean_ratio: t.geomean_ratio,
            geomean_ratio_by_pass: t.geomean_ratio_by_pass,
            ours_total_ms: t.ours_total_ms,
            cudnn_total_ms: t.theirs_total_ms,
        }
    }

    /// One line: counts, agreement, the speed ratios.
    pub fn line(&self) -> String {
        let t = Tally {
            rows: self.rows,
            ours_measured: self.ours_measured,
            theirs_measured: self.cudnn_measured,
            failed: self.failed,
            agreement_checked: self.agreement_checked,
            agreement_failed: self.agreement_failed,
            geomean_ratio: self.geomean_ratio,
            geomean_ratio_by_pass: self.geomean_ratio_by_pass.clone(),
            ours_total_ms: self.ours_total_ms,
            theirs_total_ms: self.cudnn_total_ms,
        };
        t.line("cuDNN", Pass::name)
    }
}

/// The whole bench run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ConvReport {
    /// The device's name ([`Device::name`](crate::Device::name)).
    pub device: String,
    /// This crate's version (`CARGO_PKG_VERSION`).
    pub vgg_version: String,
    /// The `--algo` word ([`Algo::name`](super::Algo::name)).
    pub algo: String,
    /// cuDNN's version when it was used.
    pub cudnn_version: Option<String>,
    /// Why cuDNN was not used, when it was not.
    pub cudnn_note: Option<String>,
    /// The L2 size the input rotation was sized against, in bytes (0 on the emulator).
    pub l2_bytes: usize,
    /// How each pass was timed.
    pub timing: TimingConfig,
    /// One row per layer and pass, in run order.
    pub rows: Vec<ConvRow>,
    /// Totals over `rows`.
    pub summary: ConvSummary,
}
