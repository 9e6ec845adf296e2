//! `vgg bench conv`: our 3x3 convolutions (fprop, dgrad, wgrad) on VGG-16's layers, timed
//! beside cuDNN on the same problem, in the same process, on the same stream, with the same
//! inputs, and checked against it on the same run.
//!
//! Per layer: random normal inputs in enough sets that the bytes touched between two uses of
//! one set exceed twice the L2; per pass: our kernel timed ([`super::time_calls`]), then
//! cuDNN with the algorithm its own search found fastest, then one more call of each on set
//! 0 whose outputs are compared. Without cuDNN the check is against the f64 reference (emu)
//! or our direct kernel (GPU). A failing layer or pass becomes a row with its error, and the
//! bench goes on.
//!
//! Under `--algo tune` each layer's plan is the one `vgg train --conv-algo tune` runs: the
//! model's base plan with each pass's variant chosen by [`conv_tune::tune`] (once a shape, all
//! three passes together, as training tunes them, whichever passes are benched), then timed
//! and checked like any other plan; the rows carry what the tuner measured ([`TunedPass`]).

use super::cudnn::{Cudnn, CudnnPass, CudnnPlan};
use super::{measured_cells, problem_lines, time_calls, Agreement, Tally, Timing, TimingConfig, VersusRow, L2_BYTES};
use crate::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use crate::ops::conv_tune::{self, Tuned};
use crate::problem::{vgg16_layers, vgg16_layers_reduced, ConvProblem, NamedProblem};
use crate::{reference, Device, Tensor};
use half::f16;
use std::collections::HashMap;

/// A command-line value the bench cannot use; the message lists the valid ones.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArgument(pub String);

/// One of the three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    /// y = conv(x, w).
    Fprop,
    /// dx from dy and w.
    Dgrad,
    /// dw from x and dy.
    Wgrad,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Fprop, Pass::Dgrad, Pass::Wgrad];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Fprop => "fprop",
            Pass::Dgrad => "dgrad",
            Pass::Wgrad => "wgrad",
        }
    }

    /// `fprop,dgrad,wgrad` (any subset, any order) or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Pass>, BadArgument> {
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut v = vec![];
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let p = Self::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| BadArgument(format!("unknown pass `{name}` (passes: fprop, dgrad, wgrad, or all)")))?;
            if !v.contains(&p) {
                v.push(p);
            }
        }
        if v.is_empty() {
            return Err(BadArgument("no pass given (passes: fprop, dgrad, wgrad, or all)".into()));
        }
        Ok(v)
    }

    fn ops(self) -> ConvPass {
        match self {
            Pass::Fprop => ConvPass::Fprop,
            Pass::Dgrad => ConvPass::Dgrad,
            Pass::Wgrad => ConvPass::Wgrad,
        }
    }

    fn cudnn(self) -> CudnnPass {
        match self {
            Pass::Fprop => CudnnPass::Forward,
            Pass::Dgrad => CudnnPass::BackwardData,
            Pass::Wgrad => CudnnPass::BackwardFilter,
        }
    }
}

/// The algorithm asked of [`Conv3x3`] (`auto` lets it choose per pass; `tune` times the
/// variants on the device first, as training does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Auto,
    Direct,
    Winograd2x2,
    Winograd4x4,
    ImplicitGemm,
    Wgmma,
    /// The plan [`conv_tune::tune`] picks from the model's base plan, per layer.
    Tune,
}

impl Algo {
    const ALL: [Algo; 7] =
        [Algo::Auto, Algo::Direct, Algo::Winograd2x2, Algo::Winograd4x4, Algo::ImplicitGemm, Algo::Wgmma, Algo::Tune];

    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Direct => "direct",
            Algo::Winograd2x2 => "winograd2x2",
            Algo::Winograd4x4 => "winograd4x4",
            Algo::ImplicitGemm => "igemm",
            Algo::Wgmma => "wgmma",
            Algo::Tune => "tune",
        }
    }

    pub fn parse(s: &str) -> Result<Algo, BadArgument> {
        Self::ALL.into_iter().find(|a| a.name() == s.trim()).ok_or_else(|| {
            BadArgument(format!(
                "unknown algorithm `{s}` (algorithms: auto, direct, winograd2x2, winograd4x4, igemm, wgmma, tune)"
            ))
        })
    }

    /// The algorithm [`Conv3x3::new`] takes (None: `tune`, which no single algorithm names).
    fn ops(self) -> Option<ConvAlgo> {
        Some(match self {
            Algo::Auto => ConvAlgo::Auto,
            Algo::Direct => ConvAlgo::Direct,
            Algo::Winograd2x2 => ConvAlgo::Winograd2x2,
            Algo::Winograd4x4 => ConvAlgo::Winograd4x4,
            Algo::ImplicitGemm => ConvAlgo::ImplicitGemm,
            Algo::Wgmma => ConvAlgo::Wgmma,
            Algo::Tune => return None,
        })
    }

    fn of(a: &ConvAlgo) -> Algo {
        match a {
            ConvAlgo::Auto => Algo::Auto,
            ConvAlgo::Direct => Algo::Direct,
            ConvAlgo::Winograd2x2 => Algo::Winograd2x2,
            ConvAlgo::Winograd4x4 => Algo::Winograd4x4,
            ConvAlgo::ImplicitGemm => Algo::ImplicitGemm,
            ConvAlgo::Wgmma => Algo::Wgmma,
        }
    }

    /// (max_rel, rel_l2) an fp16 result of this algorithm must meet against a trusted one:
    /// loose enough for fp16 rounding and Winograd's transforms, tight enough that any
    /// indexing or synchronisation bug (errors of order 1) fails.
    fn bounds(self) -> (f64, f64) {
        match self {
            Algo::Auto | Algo::Direct | Algo::ImplicitGemm | Algo::Wgmma => (1e-2, 3e-3),
            Algo::Winograd2x2 => (2e-2, 5e-3),
            // A row's bounds are its resolved algorithm's; `tune` resolves to one of the others.
            Algo::Winograd4x4 | Algo::Tune => (5e-2, 2e-2),
        }
    }
}

/// The VGG-16 layers the bench runs on a GPU (`emu` false): full size at `batch` (default 64) on a GPU,
/// shrunk 16x in space with at most 32 channels at `batch` (default 1) on the emulator.
/// `names` is `all` or a comma-separated list such as `conv1_2,conv3_1`.
pub fn select_layers(emu: bool, batch: Option<usize>, names: &str) -> Result<Vec<NamedProblem>, BadArgument> {
    let all = if emu {
        vgg16_layers_reduced(batch.unwrap_or(1).max(1), 16, 32)
    } else {
        vgg16_layers(batch.unwrap_or(64).max(1))
    };
    if names.trim() == "all" {
        return Ok(all);
    }
    let mut v: Vec<NamedProblem> = vec![];
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let l = all.iter().find(|l| l.name == name).ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|l| l.name).collect();
            BadArgument(format!("unknown layer `{name}` (layers: {}, or all)", known.join(", ")))
        })?;
        if !v.iter().any(|x| x.name == name) {
            v.push(*l);
        }
    }
    if v.is_empty() {
        return Err(BadArgument("no layer given (use a name such as conv3_1, or all)".into()));
    }
    Ok(v)
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ConvBenchConfig {
    pub layers: Vec<NamedProblem>,
    pub passes: Vec<Pass>,
    pub algo: Algo,
    /// How the Winograd passes group their tiles (not under `tune`, which chooses the tiling).
    pub wino_tiling: WinoTiling,
    pub timing: TimingConfig,
    /// Compare with cuDNN when the device is a GPU and the library loads.
    pub cudnn: bool,
    /// The rotation makes the bytes touched between two uses of an input set exceed twice this.
    pub l2_bytes: usize,
    /// Workspace offered to cuDNN's algorithm search.
    pub cudnn_max_workspace: usize,
}

impl ConvBenchConfig {
    /// The defaults for `dev`: every layer, every pass, `auto`, the device's timing, cuDNN on.
    pub fn new(dev: &Device, batch: Option<usize>) -> Self {
        Self {
            layers: select_layers(dev.is_emu(), batch, "all").unwrap_or_default(),
            passes: Pass::ALL.to_vec(),
            algo: Algo::Auto,
            wino_tiling: WinoTiling::Auto,
            timing: TimingConfig::for_device(dev),
            cudnn: !dev.is_emu(),
            l2_bytes: if dev.is_emu() { 0 } else { L2_BYTES },
            cudnn_max_workspace: 2 << 30,
        }
    }
}

/// One timed implementation of one pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Our resolved algorithm, or cuDNN's (`+tc`: tensor-op math).
    pub algo: String,
    /// Median time per call.
    pub ms: f64,
    pub min_ms: f64,
    /// Effective TFLOP/s: the direct convolution's FLOPs over the median time.
    pub tflops: f64,
    pub samples: usize,
    pub calls_per_sample: usize,
    pub workspace_bytes: usize,
    /// cuDNN's own time for its pick during its algorithm search.
    pub find_ms: Option<f64>,
}

impl Measured {
    fn new(algo: String, t: Timing, problem: &ConvProblem, workspace_bytes: usize, find_ms: Option<f64>) -> Self {
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
    fn of(t: &Tuned, pass: Pass) -> Self {
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
    pub layer: String,
    pub pass: Pass,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub gflop: f64,
    /// Input sets rotated, and the bytes one set plus the pass's output touch.
    pub sets: usize,
    pub pass_bytes: usize,
    pub ours: Option<Measured>,
    pub ours_error: Option<String>,
    pub cudnn: Option<Measured>,
    pub cudnn_error: Option<String>,
    /// Our speed over cuDNN's (> 1: we are faster).
    pub ratio: Option<f64>,
    pub agreement: Option<Agreement>,
    /// Under `tune`: the tuner's choice and measurements for this pass (our row then times the
    /// plan it chose, named in `ours.algo`).
    #[serde(default)]
    pub tune: Option<TunedPass>,
}

impl ConvRow {
    fn new(np: &NamedProblem, pass: Pass) -> Self {
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
    pub rows: usize,
    pub ours_measured: usize,
    pub cudnn_measured: usize,
    pub failed: usize,
    pub agreement_checked: usize,
    pub agreement_failed: usize,
    /// Geometric mean of the speed ratios (ours / cuDNN), over all rows and per pass.
    pub geomean_ratio: Option<f64>,
    pub geomean_ratio_by_pass: Vec<(Pass, f64)>,
    /// Sums of median times over the rows where both were measured.
    pub ours_total_ms: f64,
    pub cudnn_total_ms: f64,
}

impl ConvSummary {
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
    pub device: String,
    pub vgg_version: String,
    pub algo: String,
    /// cuDNN's version when it was used.
    pub cudnn_version: Option<String>,
    /// Why cuDNN was not used, when it was not.
    pub cudnn_note: Option<String>,
    pub l2_bytes: usize,
    pub timing: TimingConfig,
    pub rows: Vec<ConvRow>,
    pub summary: ConvSummary,
}

/// A bench ready to run: the device, the configuration, and cuDNN when it could be opened.
pub struct ConvBench<'a> {
    dev: &'a Device,
    cfg: &'a ConvBenchConfig,
    cudnn: Option<Cudnn>,
    cudnn_note: Option<String>,
}

impl<'a> ConvBench<'a> {
    /// Opens cuDNN on `dev` when the configuration asks for it; when it cannot (emulator, no
    /// library), the reason is kept as a note and the bench runs without it.
    pub fn new(dev: &'a Device, cfg: &'a ConvBenchConfig) -> Self {
        let (cudnn, cudnn_note) = if !cfg.cudnn {
            (None, Some("cuDNN comparison off".to_string()))
        } else if dev.is_emu() {
            (None, Some("no cuDNN on the emulator: checked against the f64 reference".to_string()))
        } else {
            match Cudnn::new(dev) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("{e}; our numbers alone, checked against our direct kernel"))),
            }
        };
        Self { dev, cfg, cudnn, cudnn_note }
    }

    /// cuDNN's version, when it is used.
    pub fn cudnn_version(&self) -> Option<String> {
        self.cudnn.as_ref().map(|c| c.version())
    }

    /// Why cuDNN is not used, when it is not.
    pub fn cudnn_note(&self) -> Option<&str> {
        self.cudnn_note.as_deref()
    }

    /// Runs every layer and pass. `on_row` sees each row as soon as it is complete (to print
    /// it, or save partial results). Never fails as a whole: every error is a row.
    pub fn run(&self, mut on_row: impl FnMut(&ConvRow)) -> ConvReport {
        let mut rows = vec![];
        let mut tuned = HashMap::new();
        for np in &self.cfg.layers {
            bench_layer(self.dev, self.cfg, self.cudnn.as_ref(), np, &mut tuned, &mut |r| {
                on_row(&r);
                rows.push(r);
            });
        }
        self.report(rows)
    }

    /// The report of `rows` (all of them, or those done so far).
    pub fn report(&self, rows: Vec<ConvRow>) -> ConvReport {
        ConvReport {
            device: self.dev.name(),
            vgg_version: env!("CARGO_PKG_VERSION").into(),
            algo: self.cfg.algo.name().into(),
            cudnn_version: self.cudnn_version(),
            cudnn_note: self.cudnn_note.clone(),
            l2_bytes: self.cfg.l2_bytes,
            timing: self.cfg.timing,
            summary: ConvSummary::of(&rows),
            rows,
        }
    }
}

/// Runs the bench of `cfg` on `dev`: [`ConvBench::new`] then [`ConvBench::run`].
pub fn run(dev: &Device, cfg: &ConvBenchConfig, on_row: impl FnMut(&ConvRow)) -> ConvReport {
    ConvBench::new(dev, cfg).run(on_row)
}

/// One rotation set of inputs; only the tensors the selected passes read exist.
struct InputSet {
    x: Option<Tensor<f16>>,
    w: Option<Tensor<f16>>,
    dy: Option<Tensor<f16>>,
}

fn need<'a>(t: &'a Option<Tensor<f16>>, what: &str) -> crate::Result<&'a Tensor<f16>> {
    t.as_ref().ok_or_else(|| crate::Error::Shape(format!("bench input {what} was not allocated")))
}

impl InputSet {
    /// (first input, second input) of a pass, in the order [`CudnnPlan::run`] takes them.
    fn inputs(&self, pass: Pass) -> crate::Result<(&Tensor<f16>, &Tensor<f16>)> {
        Ok(match pass {
            Pass::Fprop => (need(&self.x, "x")?, need(&self.w, "w")?),
            Pass::Dgrad => (need(&self.dy, "dy")?, need(&self.w, "w")?),
            Pass::Wgrad => (need(&self.x, "x")?, need(&self.dy, "dy")?),
        })
    }
}

/// Bytes one call of `pass` touches: its two inputs and its output.
fn pass_bytes(p: &ConvProblem, pass: Pass) -> usize {
    let (x, w, y) = (p.input_len() * 2, p.filter_len() * 2, p.output_len() * 2);
    match pass {
        Pass::Fprop => x + w + y,
        Pass::Dgrad => y + w + x,
        Pass::Wgrad => x + y + p.filter_len() * 4,
    }
}

/// Input sets for `passes`: enough that the bytes touched between two uses of a set exceed
/// `2 * l2_bytes` for the lightest pass, at least two, at most 64.
fn input_sets(dev: &Device, p: &ConvProblem, passes: &[Pass], l2_bytes: usize) -> crate::Result<Vec<InputSet>> {
    let lightest = passes.iter().map(|&q| pass_bytes(p, q)).min().unwrap_or(1).max(1);
    let n = (2 * l2_bytes).div_ceil(lightest).clamp(2, 64);
    let uses = |q: Pass| passes.contains(&q);
    // Scales keep every output near unit size in fp16: w ~ 1/sqrt(9C) (He-like), dy ~ 1/sqrt(9K).
    let w_scale = 1.0 / ((9 * p.c) as f32).sqrt();
    let dy_scale = 1.0 / ((9 * p.k) as f32).sqrt();
    let shape_x = [p.n, p.h, p.w, p.c];
    let shape_y = [p.n, p.h, p.w, p.k];
    let shape_w = [p.k, 3, 3, p.c];
    let mut sets = Vec::with_capacity(n);
    for s in 0..n as u64 {
        let seed = s * 3 + ((p.c * 131 + p.k * 7 + p.h) as u64) * 1000;
        let make = |on: bool, shape: &[usize], scale: f32, seed: u64| -> crate::Result<Option<Tensor<f16>>> {
            if !on {
                return Ok(None);
            }
            // The device allocation first (a --batch the device cannot hold fails the row).
            super::random_tensor(dev, shape, scale, seed).map(Some)
        };
        sets.push(InputSet {
            x: make(uses(Pass::Fprop) || uses(Pass::Wgrad), &shape_x, 1.0, seed)?,
            w: make(uses(Pass::Fprop) || uses(Pass::Dgrad), &shape_w, w_scale, seed + 1)?,
            dy: make(uses(Pass::Dgrad) || uses(Pass::Wgrad), &shape_y, dy_scale, seed + 2)?,
        });
    }
    Ok(sets)
}

/// Our output of a pass: fp16 activations, fp32 filter gradients.
enum OurOut {
    Half(Tensor<f16>),
    Float(Tensor<f32>),
}

impl OurOut {
    fn new(dev: &Device, p: &ConvProblem, pass: Pass) -> crate::Result<Self> {
        Ok(match pass {
            Pass::Fprop => OurOut::Half(Tensor::empty(dev, &[p.n, p.h, p.w, p.k])?),
            Pass::Dgrad => OurOut::Half(Tensor::empty(dev, &[p.n, p.h, p.w, p.c])?),
            Pass::Wgrad => OurOut::Float(Tensor::empty(dev, &[p.k, 3, 3, p.c])?),
        })
    }
    fn poison(&mut self) -> crate::Result<()> {
        match self {
            OurOut::Half(t) => t.poison(),
            OurOut::Float(t) => t.poison(),
        }
    }
    fn to_f32(&self) -> crate::Result<Vec<f32>> {
        match self {
            OurOut::Half(t) => t.to_f32(),
            OurOut::Float(t) => t.to_host(),
        }
    }
}

/// One call of our pass on `set`.
fn run_ours(conv: &Conv3x3, pass: Pass, set: &InputSet, out: &mut OurOut, ws: &mut Tensor<u8>) -> crate::Result<()> {
    let (a, b) = set.inputs(pass)?;
    match (pass, out) {
        (Pass::Fprop, OurOut::Half(y)) => conv.fprop(a, b, None, Epilogue::None, y, ws),
        (Pass::Dgrad, OurOut::Half(dx)) => conv.dgrad(a, b, None, dx, ws),
        (Pass::Wgrad, OurOut::Float(dw)) => conv.wgrad(a, b, dw, None, ws),
        _ => Err(crate::Error::Shape(format!("bench: wrong output type for {}", pass.name()))),
    }
}

/// A workspace tensor of `bytes` (at least one byte, so that there is a valid pointer).
fn workspace(dev: &Device, bytes: usize) -> crate::Result<Tensor<u8>> {
    Tensor::empty(dev, &[bytes.max(1)])
}

/// The plan our passes run: `cfg.algo`'s, or under `tune` the one training runs: the model's
/// plan of the layer fitted to the device (as `Vgg::set_conv_choice` starts from), tuned by
/// [`conv_tune::tune`] once a shape (`tuned` keeps them, as training does).
fn our_plan(
    dev: &Device,
    cfg: &ConvBenchConfig,
    p: &ConvProblem,
    tuned: &mut HashMap<ConvProblem, Tuned>,
) -> Result<(Conv3x3, Option<Tuned>), String> {
    let Some(algo) = cfg.algo.ops() else {
        if let Some(t) = tuned.get(p) {
            return Ok((t.conv, Some(t.clone())));
        }
        let base = crate::model::memory::conv3x3_plan(*p).map_err(|e| format!("the model's plan of {p}: {e}"))?;
        let t =
            conv_tune::tune(dev, base.fitted_to(dev), conv_tune::reps(dev)).map_err(|e| format!("tuning {p}: {e}"))?;
        tuned.insert(*p, t.clone());
        return Ok((t.conv, Some(t)));
    };
    let conv = Conv3x3::new(*p, algo).map_err(|e| format!("Conv3x3::new({p}, {}): {e}", cfg.algo.name()))?;
    Ok((conv.with_wino_tiling(cfg.wino_tiling), None))
}

fn bench_layer(
    dev: &Device,
    cfg: &ConvBenchConfig,
    cudnn: Option<&Cudnn>,
    np: &NamedProblem,
    tuned: &mut HashMap<ConvProblem, Tuned>,
    emit: &mut dyn FnMut(ConvRow),
) {
    let p = np.problem;
    let sets = match input_sets(dev, &p, &cfg.passes, cfg.l2_bytes) {
        Ok(s) => s,
        Err(e) => {
            for &pass in &cfg.passes {
                let mut row = ConvRow::new(np, pass);
                row.ours_error = Some(format!("allocating the inputs: {e}"));
                emit(row);
            }
            return;
        }
    };
    let plan = our_plan(dev, cfg, &p, tuned);
    for &pass in &cfg.passes {
        let mut row = ConvRow::new(np, pass);
        row.sets = sets.len();
        row.pass_bytes = pass_bytes(&p, pass);
        let ours = match &plan {
            Ok((conv, tuned)) => {
                row.tune = tuned.as_ref().map(|t| TunedPass::of(t, pass));
                match bench_ours(dev, cfg, conv, &p, pass, &sets) {
                    Ok((m, out, algo)) => {
                        row.ours = Some(m);
                        Some((out, algo))
                    }
                    Err(e) => {
                        row.ours_error = Some(e.to_string());
                        None
                    }
                }
            }
            Err(e) => {
                row.ours_error = Some(e.clone());
                None
            }
        };
        let theirs = cudnn.and_then(|c| match bench_cudnn(dev, cfg, c, &p, pass, &sets) {
            Ok((m, out)) => {
                row.cudnn = Some(m);
                Some(out)
            }
            Err(e) => {
                row.cudnn_error = Some(e);
                None
            }
        });
        if let (Some(o), Some(c)) = (&row.ours, &row.cudnn) {
            row.ratio = Some(c.ms / o.ms);
        }
        if let Some((ours, algo)) = &ours {
            let (max_rel, rel_l2) = algo.bounds();
            let agreement = match theirs {
                Some(theirs) => Ok(Some(Agreement::new("cudnn", ours, &theirs, max_rel, rel_l2))),
                None if dev.is_emu() => reference_output(&p, pass, &sets[0])
                    .map(|want| Some(Agreement::new("reference", ours, &want, max_rel, rel_l2))),
                None if *algo != Algo::Direct => direct_output(dev, &p, pass, &sets[0])
                    .map(|want| Some(Agreement::new("direct", ours, &want, max_rel, rel_l2))),
                None => Ok(None),
            };
            match agreement {
                Ok(a) => row.agreement = a,
                Err(e) => row.ours_error = Some(format!("computing the output to compare with: {e}")),
            }
        }
        emit(row);
    }
}

/// Times our pass and returns the timing, our output on set 0 and the algorithm used.
fn bench_ours(
    dev: &Device,
    cfg: &ConvBenchConfig,
    conv: &Conv3x3,
    p: &ConvProblem,
    pass: Pass,
    sets: &[InputSet],
) -> crate::Result<(Measured, Vec<f32>, Algo)> {
    let algo = Algo::of(&conv.algo(pass.ops()));
    let ws_bytes = conv.workspace_bytes(pass.ops());
    let mut ws = workspace(dev, ws_bytes)?;
    let mut out = OurOut::new(dev, p, pass)?;
    let t = time_calls(dev, &cfg.timing, |i| run_ours(conv, pass, &sets[i % sets.len()], &mut out, &mut ws))?;
    out.poison()?;
    run_ours(conv, pass, &sets[0], &mut out, &mut ws)?;
    let result = out.to_f32()?;
    // Winograd F(2x2) rows name their tiling: flat, or the region width in tiles.
    Ok((Measured::new(conv.label(pass.ops()), t, p, ws_bytes, None), result, algo))
}

/// Times cuDNN's fastest algorithm for the pass and returns the timing and its output on set 0.
fn bench_cudnn(
    dev: &Device,
    cfg: &ConvBenchConfig,
    cudnn: &Cudnn,
    p: &ConvProblem,
    pass: Pass,
    sets: &[InputSet],
) -> Result<(Measured, Vec<f32>), String> {
    let shape = match pass {
        Pass::Fprop => [p.n, p.h, p.w, p.k],
        Pass::Dgrad => [p.n, p.h, p.w, p.c],
        Pass::Wgrad => [p.k, 3, 3, p.c],
    };
    let mut out = Tensor::<f16>::empty(dev, &shape).map_err(|e| e.to_string())?;
    let (a0, b0) = sets[0].inputs(pass).map_err(|e| e.to_string())?;
    let plan: CudnnPlan =
        cudnn.plan(*p, pass.cudnn(), a0, b0, &mut out, cfg.cudnn_max_workspace).map_err(|e| e.to_string())?;
    let mut ws = workspace(dev, plan.workspace_bytes()).map_err(|e| e.to_string())?;
    let t = time_calls(dev, &cfg.timing, |i| {
        let (a, b) = sets[i % sets.len()].inputs(pass)?;
        plan.run(a, b, &mut out, &mut ws).map_err(|e| crate::Error::Kernel(e.to_string()))
    })
    .map_err(|e| e.to_string())?;
    out.poison().map_err(|e| e.to_string())?;
    plan.run(a0, b0, &mut out, &mut ws).map_err(|e| e.to_string())?;
    let result = out.to_f32().map_err(|e| e.to_string())?;
    let m = Measured::new(plan.algo_name().into(), t, p, plan.workspace_bytes(), Some(plan.find_ms() as f64));
    Ok((m, result))
}

/// The f64 reference's output of the pass on `set` (emu sizes only: it runs on one core).
fn reference_output(p: &ConvProblem, pass: Pass, set: &InputSet) -> crate::Result<Vec<f32>> {
    Ok(match pass {
        Pass::Fprop => {
            reference::conv3x3_fprop(p, &need(&set.x, "x")?.to_f32()?, &need(&set.w, "w")?.to_f32()?, None, false)
        }
        Pass::Dgrad => reference::conv3x3_dgrad(p, &need(&set.dy, "dy")?.to_f32()?, &need(&set.w, "w")?.to_f32()?),
        Pass::Wgrad => reference::conv3x3_wgrad(p, &need(&set.x, "x")?.to_f32()?, &need(&set.dy, "dy")?.to_f32()?).0,
    })
}

/// Our direct kernel's output of the pass on `set`: the simple twin as the check of the fast
/// path when no cuDNN is at hand.
fn direct_output(dev: &Device, p: &ConvProblem, pass: Pass, set: &InputSet) -> crate::Result<Vec<f32>> {
    let conv = Conv3x3::new(*p, ConvAlgo::Direct)?;
    let mut ws = workspace(dev, conv.workspace_bytes(pass.ops()))?;
    let mut out = OurOut::new(dev, p, pass)?;
    out.poison()?;
    run_ours(&conv, pass, set, &mut out, &mut ws)?;
    out.to_f32()
}
