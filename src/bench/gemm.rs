//! `vgg bench gemm`: VGG-16's three classifier layers (fc6 25088->4096, fc7 4096->4096,
//! fc8 4096->1000) at several batches, all three passes of [`crate::ops::gemm`], timed beside
//! cuBLAS (`cublasGemmEx`, fp16 in, fp32 compute) on the same problem, in the same process, on
//! the same stream, with the same inputs, and checked against it on the same run; then the
//! memory-bound end of a training step: the multi-tensor SGD step over VGG-16's 138M
//! parameters, read as GB/s against a device-to-device copy measured in the same run.
//!
//! Per layer and batch: random normal inputs in enough sets that the bytes touched between
//! two uses of one set exceed twice the L2 (the weights are shared by the batches of a
//! layer); per pass: ours timed ([`super::time_calls`]), then cuBLAS, then one more call of
//! each on set 0 whose outputs are compared. Our forward adds the bias in its epilogue;
//! cuBLAS's GEMM has none, so the bias is added to its output on the host before the
//! comparison (its time is the plain product's). Our weight gradient is timed without the
//! bias gradient (`db`: None), as cuBLAS's. Without cuBLAS the check is against the f64
//! reference (emu) or our simple kernel (GPU). A failing row keeps its error, and the bench
//! goes on.

use super::conv::BadArgument;
use super::cublas::Cublas;
use super::{
    measured_cells, problem_lines, random_f16, time_calls, Agreement, Tally, Timing, TimingConfig, VersusRow, L2_BYTES,
};
use crate::ops::gemm::{self, Algo as GemmAlgo, Linear, Tile as GemmTile};
use crate::ops::optim::{Sgd, SgdParam, SgdPlan};
use crate::problem::{vgg16_layers, vgg16_layers_reduced};
use crate::{reference, Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// The H200's measured device-to-device copy bandwidth (bytes read + written), in GB/s: the
/// ceiling a memory-bound kernel is read against.
pub const COPY_CEILING_GB_S: f64 = 4300.0;

/// Bytes one SGD step moves per parameter: fp32 master, momentum and gradient read (12),
/// master and momentum written (8), the fp16 copy written (2).
pub const SGD_BYTES_PER_PARAM: usize = 22;

/// One of the three products of a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// `Y = X W^T + b`.
    Fwd,
    /// `dX = dY W`.
    BwdData,
    /// `dW = dY^T X` (fp32).
    BwdWeight,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Fwd, Pass::BwdData, Pass::BwdWeight];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::BwdData => "bwd_data",
            Pass::BwdWeight => "bwd_weight",
        }
    }

    /// `fwd,bwd_data,bwd_weight` (any subset, any order) or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Pass>, BadArgument> {
        const VALID: &str = "passes: fwd, bwd_data, bwd_weight, or all";
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut v = vec![];
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let p = Self::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| BadArgument(format!("unknown pass `{name}` ({VALID})")))?;
            if !v.contains(&p) {
                v.push(p);
            }
        }
        if v.is_empty() {
            return Err(BadArgument(format!("no pass given ({VALID})")));
        }
        Ok(v)
    }

    fn ops(self) -> gemm::Pass {
        match self {
            Pass::Fwd => gemm::Pass::Fwd,
            Pass::BwdData => gemm::Pass::BwdData,
            Pass::BwdWeight => gemm::Pass::BwdWeight,
        }
    }
}

/// A fully connected layer: `k` inputs, `n` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FcLayer {
    pub name: &'static str,
    pub k: usize,
    pub n: usize,
}

/// VGG-16's classifier.
pub const VGG16_FC: [FcLayer; 3] = [
    FcLayer { name: "fc6", k: 25088, n: 4096 },
    FcLayer { name: "fc7", k: 4096, n: 4096 },
    FcLayer { name: "fc8", k: 4096, n: 1000 },
];

/// The classifier shrunk for the emulator (every dimension a multiple of 8, so the same
/// tensor-core path runs): fc6 takes 7x7x8 features.
pub const VGG16_FC_EMU: [FcLayer; 3] = [
    FcLayer { name: "fc6", k: 392, n: 64 },
    FcLayer { name: "fc7", k: 64, n: 64 },
    FcLayer { name: "fc8", k: 64, n: 16 },
];

/// The layers to run: `all` or a comma-separated list such as `fc6,fc8`; full size on a GPU
/// (`emu` false), shrunk on the emulator.
pub fn select_layers(emu: bool, names: &str) -> Result<Vec<FcLayer>, BadArgument> {
    let all = if emu { VGG16_FC_EMU } else { VGG16_FC };
    if names.trim() == "all" {
        return Ok(all.to_vec());
    }
    let mut v: Vec<FcLayer> = vec![];
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let l = all.iter().find(|l| l.name == name).ok_or_else(|| {
            BadArgument(format!(
                "unknown shape `{name}` (shapes: fc6 (25088->4096), fc7 (4096->4096), fc8 (4096->1000), or all)"
            ))
        })?;
        if !v.contains(l) {
            v.push(*l);
        }
    }
    if v.is_empty() {
        return Err(BadArgument("no shape given (shapes: fc6, fc7, fc8, or all)".into()));
    }
    Ok(v)
}

/// Batches as `64,128,256`: positive integers, duplicates dropped.
pub fn parse_batches(s: &str) -> Result<Vec<usize>, BadArgument> {
    let mut v = vec![];
    for b in s.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let n: usize = b.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            BadArgument(format!("bad batch `{b}` (a comma-separated list of positive integers, e.g. 64,128,256)"))
        })?;
        if !v.contains(&n) {
            v.push(n);
        }
    }
    if v.is_empty() {
        return Err(BadArgument("no batch given (e.g. 64,128,256)".into()));
    }
    Ok(v)
}

/// The batches run by default: 64, 128 and 256 on a GPU, 4 on the emulator.
pub fn default_batches(emu: bool) -> Vec<usize> {
    if emu {
        vec![4]
    } else {
        vec![64, 128, 256]
    }
}

/// One parameter tensor of the SGD step.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ParamTensor {
    pub name: String,
    pub len: usize,
    /// Weight decay applies (weights), or not (biases).
    pub decay: bool,
}

/// VGG-16's parameter tensors in model order (a weight, then its bias, per layer): 138.36M
/// parameters in 32 tensors; on the emulator (`emu`), the layers shrunk as the conv bench's
/// and the classifier as [`VGG16_FC_EMU`].
pub fn vgg16_params(emu: bool) -> Vec<ParamTensor> {
    let convs = if emu { vgg16_layers_reduced(1, 16, 32) } else { vgg16_layers(1) };
    let fcs = if emu { VGG16_FC_EMU } else { VGG16_FC };
    let mut v = vec![];
    let mut layer = |name: &str, weights: usize, bias: usize| {
        v.push(ParamTensor { name: format!("{name}.weight"), len: weights, decay: true });
        v.push(ParamTensor { name: format!("{name}.bias"), len: bias, decay: false });
    };
    for c in &convs {
        layer(c.name, c.problem.filter_len(), c.problem.k);
    }
    for f in &fcs {
        layer(f.name, f.k * f.n, f.n);
    }
    v
}

/// What to run.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    pub layers: Vec<FcLayer>,
    pub batches: Vec<usize>,
    pub passes: Vec<Pass>,
    pub timing: TimingConfig,
    /// Compare with cuBLAS when the device is a GPU and the library loads (on by default).
    pub cublas: bool,
    /// The rotation makes the bytes touched between two uses of an input set exceed twice this.
    pub l2_bytes: usize,
    /// Also time the device-to-device copy and the SGD step.
    pub bandwidth: bool,
    /// The SGD step's parameter tensors.
    pub params: Vec<ParamTensor>,
    /// Bytes of the copied buffer.
    pub copy_bytes: usize,
    /// Our products on this tile (with the planner's split count) instead of the planner's
    /// choice: `--tile w128x256` times the wgmma kernels.
    pub tile: Option<GemmTile>,
}

impl GemmBenchConfig {
    /// The defaults for `dev`: every layer and pass at the default batches, the device's
    /// timing, cuBLAS on, the bandwidth section on (VGG-16's full parameter set and a 1 GiB
    /// copy on a GPU, small ones on emu).
    pub fn new(dev: &Device) -> Self {
        let emu = dev.is_emu();
        Self {
            layers: select_layers(emu, "all").unwrap_or_default(),
            batches: default_batches(emu),
            passes: Pass::ALL.to_vec(),
            timing: TimingConfig::for_device(dev),
            cublas: true,
            l2_bytes: if emu { 0 } else { L2_BYTES },
            bandwidth: true,
            params: vgg16_params(emu),
            copy_bytes: if emu { 1 << 20 } else { 1 << 30 },
            tile: None,
        }
    }
}

/// One timed implementation of one pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Our resolved algorithm (`tc64x128/split4`, `simple`), or cuBLAS's call.
    pub algo: String,
    /// Median time per call.
    pub ms: f64,
    pub min_ms: f64,
    /// `2 M N K` over the median time.
    pub tflops: f64,
    pub samples: usize,
    pub calls_per_sample: usize,
    pub workspace_bytes: usize,
}

impl Measured {
    fn new(algo: String, t: Timing, s: &Linear, workspace_bytes: usize) -> Self {
        Self {
            algo,
            ms: t.median_ms,
            min_ms: t.min_ms,
            tflops: s.flops() / (t.median_ms * 1e-3) / 1e12,
            samples: t.samples,
            calls_per_sample: t.calls_per_sample,
            workspace_bytes,
        }
    }
}

/// One line of the table: one layer at one batch, one pass.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GemmRow {
    pub layer: String,
    pub pass: Pass,
    /// Batch (rows of X), inputs, outputs.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub gflop: f64,
    /// Input sets rotated, and the bytes one set plus the pass's output touch.
    pub sets: usize,
    pub pass_bytes: usize,
    pub ours: Option<Measured>,
    pub ours_error: Option<String>,
    pub cublas: Option<Measured>,
    pub cublas_error: Option<String>,
    /// Our speed over cuBLAS's (> 1: we are faster).
    pub ratio: Option<f64>,
    pub agreement: Option<Agreement>,
}

impl GemmRow {
    fn new(layer: &FcLayer, s: Linear, pass: Pass) -> Self {
        Self {
            layer: layer.name.to_string(),
            pass,
            m: s.m,
            k: s.k,
            n: s.n,
            gflop: s.flops() / 1e9,
            sets: 0,
            pass_bytes: 0,
            ours: None,
            ours_error: None,
            cublas: None,
            cublas_error: None,
            ratio: None,
            agreement: None,
        }
    }

    /// Our pass failed to run, or its result disagrees.
    pub fn failed(&self) -> bool {
        self.ours_error.is_some() || self.agreement.as_ref().is_some_and(|a| !a.pass)
    }

    /// `64x25088>4096`: batch x inputs > outputs.
    pub fn shape(&self) -> String {
        format!("{}x{}>{}", self.m, self.k, self.n)
    }

    /// The column titles of [`GemmRow::table_line`].
    pub fn table_header() -> String {
        format!(
            "{:<5} {:<10} {:<16} {:<16} {:>9} {:>7} {:>9} {:>7} {:>6}  agreement (max_rel / rel_l2)",
            "layer", "pass", "shape", "our algo", "ours ms", "TFLOP/s", "cuBLAS ms", "TFLOP/s", "ratio"
        )
    }

    /// The row as a table line, errors on indented lines below it.
    pub fn table_line(&self) -> String {
        let [oa, oms, otf] = measured_cells(self.ours.as_ref().map(|m| (m.algo.as_str(), m.ms, m.tflops)));
        let [_, cms, ctf] = measured_cells(self.cublas.as_ref().map(|m| (m.algo.as_str(), m.ms, m.tflops)));
        let ratio = self.ratio.map_or("-".into(), |r| format!("{r:.2}"));
        let agree = self.agreement.as_ref().map_or("-".into(), Agreement::cell);
        let problems =
            problem_lines(self.ours_error.as_deref(), "cuBLAS", self.cublas_error.as_deref(), self.agreement.as_ref());
        format!(
            "{:<5} {:<10} {:<16} {:<16} {:>9} {:>7} {:>9} {:>7} {:>6}  {}{problems}",
            self.layer,
            self.pass.name(),
            self.shape(),
            oa,
            oms,
            otf,
            cms,
            ctf,
            ratio,
            agree
        )
    }
}

impl VersusRow for GemmRow {
    type Pass = Pass;
    fn pass(&self) -> Pass {
        self.pass
    }
    fn ms(&self) -> (Option<f64>, Option<f64>) {
        (self.ours.as_ref().map(|m| m.ms), self.cublas.as_ref().map(|m| m.ms))
    }
    fn ratio(&self) -> Option<f64> {
        self.ratio
    }
    fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }
    fn failed(&self) -> bool {
        GemmRow::failed(self)
    }
}

/// Totals over the rows.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GemmSummary {
    pub rows: usize,
    pub ours_measured: usize,
    pub cublas_measured: usize,
    pub failed: usize,
    pub agreement_checked: usize,
    pub agreement_failed: usize,
    /// Geometric mean of the speed ratios (ours / cuBLAS), over all rows and per pass.
    pub geomean_ratio: Option<f64>,
    pub geomean_ratio_by_pass: Vec<(Pass, f64)>,
    /// Sums of median times over the rows where both were measured.
    pub ours_total_ms: f64,
    pub cublas_total_ms: f64,
}

impl GemmSummary {
    pub fn of(rows: &[GemmRow]) -> Self {
        let t = Tally::of(rows, &Pass::ALL);
        Self {
            rows: t.rows,
            ours_measured: t.ours_measured,
            cublas_measured: t.theirs_measured,
            failed: t.failed,
            agreement_checked: t.agreement_checked,
            agreement_failed: t.agreement_failed,
            geomean_ratio: t.geomean_ratio,
            geomean_ratio_by_pass: t.geomean_ratio_by_pass,
            ours_total_ms: t.ours_total_ms,
            cublas_total_ms: t.theirs_total_ms,
        }
    }

    /// One line: counts, agreement, the speed ratios.
    pub fn line(&self) -> String {
        let t = Tally {
            rows: self.rows,
            ours_measured: self.ours_measured,
            theirs_measured: self.cublas_measured,
            failed: self.failed,
            agreement_checked: self.agreement_checked,
            agreement_failed: self.agreement_failed,
            geomean_ratio: self.geomean_ratio,
            geomean_ratio_by_pass: self.geomean_ratio_by_pass.clone(),
            ours_total_ms: self.ours_total_ms,
            theirs_total_ms: self.cublas_total_ms,
        };
        t.line("cuBLAS", Pass::name)
    }
}

/// A memory-bound measurement: the device-to-device copy or the SGD step.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BandwidthRow {
    /// `copy` or `sgd_step`.
    pub name: String,
    /// What was moved, in words.
    pub detail: String,
    /// Elements updated (SGD) or bytes copied (copy).
    pub elements: usize,
    /// Bytes read plus bytes written by one call.
    pub bytes_per_call: usize,
    pub timing: Option<Timing>,
    /// `bytes_per_call` over the median time.
    pub gb_s: Option<f64>,
    /// The fraction of [`COPY_CEILING_GB_S`].
    pub of_ceiling: Option<f64>,
    /// The fraction of the copy measured in this run (SGD only).
    pub of_copy: Option<f64>,
    /// The SGD step's result on the last tensors against the reference.
    pub check: Option<Agreement>,
    pub error: Option<String>,
}

impl BandwidthRow {
    fn new(name: &str, detail: String, elements: usize, bytes_per_call: usize) -> Self {
        Self {
            name: name.into(),
            detail,
            elements,
            bytes_per_call,
            timing: None,
            gb_s: None,
            of_ceiling: None,
            of_copy: None,
            check: None,
            error: None,
        }
    }

    /// The measurement failed, or its check did.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.check.as_ref().is_some_and(|c| !c.pass)
    }

    fn set_timing(&mut self, t: Timing) {
        let gb_s = self.bytes_per_call as f64 / (t.median_ms * 1e-3) / 1e9;
        self.timing = Some(t);
        self.gb_s = Some(gb_s);
        self.of_ceiling = Some(gb_s / COPY_CEILING_GB_S);
    }

    /// The row as one line (errors on an indented line below).
    pub fn line(&self) -> String {
        let mut s = format!("{:<9} {}", self.name, self.detail);
        if let (Some(t), Some(g), Some(f)) = (&self.timing, self.gb_s, self.of_ceiling) {
            s += &format!(
                ": {:.4} ms, {g:.0} GB/s = {:.1}% of {:.1} TB/s",
                t.median_ms,
                100.0 * f,
                COPY_CEILING_GB_S / 1e3
            );
            if let Some(c) = self.of_copy {
                s += &format!(", {:.1}% of this run's copy", 100.0 * c);
            }
        }
        if let Some(a) = &self.check {
            s += &format!("; vs {}", a.cell());
        }
        if let Some(e) = &self.error {
            s += &format!("\n    {e}");
        }
        s
    }
}

/// The whole bench run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GemmReport {
    pub device: String,
    pub vgg_version: String,
    /// cuBLAS's version when it was used.
    pub cublas_version: Option<String>,
    /// Why cuBLAS was not used, when it was not.
    pub cublas_note: Option<String>,
    pub batches: Vec<usize>,
    pub l2_bytes: usize,
    pub timing: TimingConfig,
    pub rows: Vec<GemmRow>,
    pub summary: GemmSummary,
    pub copy_ceiling_gb_s: f64,
    /// The copy, then the SGD step (empty when not asked for).
    pub bandwidth: Vec<BandwidthRow>,
}

/// A bench ready to run: the device, the configuration, and cuBLAS when it could be opened.
pub struct GemmBench<'a> {
    dev: &'a Device,
    cfg: &'a GemmBenchConfig,
    cublas: Option<Cublas>,
    cublas_note: Option<String>,
}

impl<'a> GemmBench<'a> {
    /// Opens cuBLAS on `dev` when the configuration asks for it; when it cannot (emulator, no
    /// library), the reason is kept as a note and the bench runs without it.
    pub fn new(dev: &'a Device, cfg: &'a GemmBenchConfig) -> Self {
        let (cublas, cublas_note) = if !cfg.cublas {
            (None, Some("cuBLAS comparison off".to_string()))
        } else if dev.is_emu() {
            (None, Some("no cuBLAS on the emulator: checked against the f64 reference".to_string()))
        } else {
            match Cublas::new(dev) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("{e}; our numbers alone, checked against our simple kernel"))),
            }
        };
        Self { dev, cfg, cublas, cublas_note }
    }

    /// cuBLAS's version, when it is used.
    pub fn cublas_version(&self) -> Option<String> {
        self.cublas.as_ref().map(|c| c.version().to_string())
    }

    /// Why cuBLAS is not used, when it is not.
    pub fn cublas_note(&self) -> Option<&str> {
        self.cublas_note.as_deref()
    }

    /// Runs every layer, batch and pass. `on_row` sees each row as soon as it is complete.
    /// Never fails as a whole: every error is a row.
    pub fn run_gemm(&self, mut on_row: impl FnMut(&GemmRow)) -> Vec<GemmRow> {
        let mut rows = vec![];
        for layer in &self.cfg.layers {
            bench_layer(self.dev, self.cfg, self.cublas.as_ref(), layer, &mut |r| {
                on_row(&r);
                rows.push(r);
            });
        }
        rows
    }

    /// The copy, then the SGD step (nothing when the configuration turns them off). `on_row`
    /// sees each as soon as it is complete. Never fails as a whole.
    pub fn run_bandwidth(&self, mut on_row: impl FnMut(&BandwidthRow)) -> Vec<BandwidthRow> {
        if !self.cfg.bandwidth {
            return vec![];
        }
        let copy = bench_copy(self.dev, self.cfg);
        on_row(&copy);
        let mut sgd = bench_sgd(self.dev, self.cfg);
        if let (Some(s), Some(c)) = (sgd.gb_s, copy.gb_s) {
            sgd.of_copy = Some(s / c);
        }
        on_row(&sgd);
        vec![copy, sgd]
    }

    /// Runs everything: [`GemmBench::run_gemm`] then [`GemmBench::run_bandwidth`].
    pub fn run(&self, on_row: impl FnMut(&GemmRow)) -> GemmReport {
        let rows = self.run_gemm(on_row);
        let bw = self.run_bandwidth(|_| {});
        self.report(rows, bw)
    }

    /// The report of `rows` and `bandwidth` (all of them, or those done so far).
    pub fn report(&self, rows: Vec<GemmRow>, bandwidth: Vec<BandwidthRow>) -> GemmReport {
        GemmReport {
            device: self.dev.name(),
            vgg_version: env!("CARGO_PKG_VERSION").into(),
            cublas_version: self.cublas_version(),
            cublas_note: self.cublas_note.clone(),
            batches: self.cfg.batches.clone(),
            l2_bytes: self.cfg.l2_bytes,
            timing: self.cfg.timing,
            summary: GemmSummary::of(&rows),
            rows,
            copy_ceiling_gb_s: COPY_CEILING_GB_S,
            bandwidth,
        }
    }
}

/// Runs the bench of `cfg` on `dev`: [`GemmBench::new`] then [`GemmBench::run`].
pub fn run(dev: &Device, cfg: &GemmBenchConfig, on_row: impl FnMut(&GemmRow)) -> GemmReport {
    GemmBench::new(dev, cfg).run(on_row)
}

/// Bytes one call of `pass` touches: its two inputs and its output (and the bias).
fn pass_bytes(s: &Linear, pass: Pass) -> usize {
    let (x, w, y) = (2 * s.m * s.k, 2 * s.n * s.k, 2 * s.m * s.n);
    match pass {
        Pass::Fwd => x + w + y + 2 * s.n,
        Pass::BwdData => y + w + x,
        Pass::BwdWeight => x + y + 4 * s.n * s.k,
    }
}

/// The rotating inputs of one layer at one batch: set `i` is `x[i]`, the layer's `w[i]`
/// ([`LayerParams`]) and `dy[i]`, with the tensors the passes do not read left out.
struct Inputs {
    sets: usize,
    x: Vec<Tensor<f16>>,
    dy: Vec<Tensor<f16>>,
}

fn pick<'a>(v: &'a [Tensor<f16>], i: usize, what: &str) -> crate::Result<&'a Tensor<f16>> {
    v.get(i).ok_or_else(|| crate::Error::Shape(format!("bench input {what} set {i} was not allocated")))
}

impl Inputs {
    fn x(&self, i: usize) -> crate::Result<&Tensor<f16>> {
        pick(&self.x, i % self.sets, "x")
    }
    fn w<'a>(&self, weights: &'a [Tensor<f16>], i: usize) -> crate::Result<&'a Tensor<f16>> {
        pick(weights, i % self.sets, "w")
    }
    fn dy(&self, i: usize) -> crate::Result<&Tensor<f16>> {
        pick(&self.dy, i % self.sets, "dy")
    }
}

/// A layer's weights and bias, shared by its batches: `w` grows to the most sets any batch
/// needs.
struct LayerParams {
    w: Vec<Tensor<f16>>,
    b: Option<Tensor<f16>>,
}

fn seed_of(layer: &FcLayer) -> u64 {
    ((layer.k * 31 + layer.n) as u64) * 1000
}

/// Input sets for `s`: enough that the bytes touched between two uses of a set exceed
/// `2 * l2_bytes` for the lightest pass, at least two, at most 64. Scales keep every output
/// near unit size in fp16: x, dy ~ N(0, 1), w ~ N(0, 1/K) (He-like), bias ~ N(0, 1/4).
fn input_sets(
    dev: &Device,
    layer: &FcLayer,
    s: Linear,
    passes: &[Pass],
    l2_bytes: usize,
    params: &mut LayerParams,
) -> crate::Result<Inputs> {
    let lightest = passes.iter().map(|&q| pass_bytes(&s, q)).min().unwrap_or(1).max(1);
    let n = (2 * l2_bytes).div_ceil(lightest).clamp(2, 64);
    let uses = |q: Pass| passes.contains(&q);
    let seed = seed_of(layer);
    let make = |shape: &[usize], scale: f32, seed: u64| -> crate::Result<Tensor<f16>> {
        Tensor::from_host(dev, shape, &random_f16(shape.iter().product(), scale, seed))
    };
    if uses(Pass::Fwd) || uses(Pass::BwdData) {
        let w_scale = 1.0 / (s.k as f32).sqrt();
        while params.w.len() < n {
            let i = params.w.len() as u64;
            params.w.push(make(&[s.n, s.k], w_scale, seed + 4 * i + 1)?);
        }
    }
    if uses(Pass::Fwd) && params.b.is_none() {
        params.b = Some(make(&[s.n], 0.5, seed + 3)?);
    }
    let mut inputs = Inputs { sets: n, x: vec![], dy: vec![] };
    let batch_seed = seed + 100_000 * s.m as u64;
    for i in 0..n as u64 {
        if uses(Pass::Fwd) || uses(Pass::BwdWeight) {
            inputs.x.push(make(&[s.m, s.k], 1.0, batch_seed + 4 * i)?);
        }
        if uses(Pass::BwdData) || uses(Pass::BwdWeight) {
            inputs.dy.push(make(&[s.m, s.n], 1.0, batch_seed + 4 * i + 2)?);
        }
    }
    Ok(inputs)
}

/// A pass's output: fp16 activations, fp32 weight gradients.
enum Out {
    Half(Tensor<f16>),
    Float(Tensor<f32>),
}

impl Out {
    fn new(dev: &Device, s: &Linear, pass: Pass) -> crate::Result<Self> {
        Ok(match pass {
            Pass::Fwd => Out::Half(Tensor::empty(dev, &[s.m, s.n])?),
            Pass::BwdData => Out::Half(Tensor::empty(dev, &[s.m, s.k])?),
            Pass::BwdWeight => Out::Float(Tensor::empty(dev, &[s.n, s.k])?),
        })
    }
    fn poison(&mut self) -> crate::Result<()> {
        match self {
            Out::Half(t) => t.poison(),
            Out::Float(t) => t.poison(),
        }
    }
    fn to_f32(&self) -> crate::Result<Vec<f32>> {
        match self {
            Out::Half(t) => t.to_f32(),
            Out::Float(t) => t.to_host(),
        }
    }
}

/// Everything one call reads: the rotating inputs, the layer's weights and bias.
struct Operands<'a> {
    s: Linear,
    inputs: &'a Inputs,
    params: &'a LayerParams,
}

impl Operands<'_> {
    fn bias(&self) -> crate::Result<&Tensor<f16>> {
        self.params.b.as_ref().ok_or_else(|| crate::Error::Shape("bench bias was not allocated".into()))
    }

    /// One call of our pass on set `i`, with `algo`.
    fn ours(
        &self,
        algo: GemmAlgo,
        pass: Pass,
        i: usize,
        out: &mut Out,
        ws: Option<&mut Tensor<u8>>,
    ) -> crate::Result<()> {
        let inp = self.inputs;
        let w = || inp.w(&self.params.w, i);
        match (pass, out) {
            (Pass::Fwd, Out::Half(y)) => gemm::linear_fwd_with(algo, inp.x(i)?, w()?, Some(self.bias()?), false, y, ws),
            (Pass::BwdData, Out::Half(dx)) => gemm::linear_bwd_data_with(algo, inp.dy(i)?, w()?, dx, ws),
            (Pass::BwdWeight, Out::Float(dw)) => {
                gemm::linear_bwd_weight_with(algo, inp.x(i)?, inp.dy(i)?, dw, None, ws)
            }
            _ => Err(crate::Error::Shape(format!("bench: wrong output type for {}", pass.name()))),
        }
    }

    /// One call of cuBLAS's product for `pass` on set `i`.
    fn cublas(&self, c: &Cublas, pass: Pass, i: usize, out: &mut Out) -> crate::Result<()> {
        let inp = self.inputs;
        let w = || inp.w(&self.params.w, i);
        let r = match (pass, out) {
            (Pass::Fwd, Out::Half(y)) => c.linear_fwd(self.s, inp.x(i)?, w()?, y),
            (Pass::BwdData, Out::Half(dx)) => c.linear_bwd_data(self.s, inp.dy(i)?, w()?, dx),
            (Pass::BwdWeight, Out::Float(dw)) => c.linear_bwd_weight(self.s, inp.x(i)?, inp.dy(i)?, dw),
            _ => return Err(crate::Error::Shape(format!("bench: wrong output type for {}", pass.name()))),
        };
        r.map_err(|e| match e {
            super::cublas::CublasError::Device(e) => e,
            e => crate::Error::Kernel(e.to_string()),
        })
    }

    /// The f64 reference's output of `pass` on set 0 (emu sizes only: it runs on one core).
    fn reference(&self, pass: Pass) -> crate::Result<Vec<f32>> {
        let Linear { m, k, n } = self.s;
        let inp = self.inputs;
        Ok(match pass {
            Pass::Fwd => {
                let b = self.bias()?.to_f32()?;
                reference::linear_fwd(
                    m,
                    k,
                    n,
                    &inp.x(0)?.to_f32()?,
                    &inp.w(&self.params.w, 0)?.to_f32()?,
                    Some(&b),
                    false,
                )
            }
            Pass::BwdData => {
                reference::linear_bwd_data(m, k, n, &inp.dy(0)?.to_f32()?, &inp.w(&self.params.w, 0)?.to_f32()?)
            }
            Pass::BwdWeight => reference::linear_bwd_weight(m, k, n, &inp.x(0)?.to_f32()?, &inp.dy(0)?.to_f32()?).0,
        })
    }
}

/// `tc64x128/split4`, `tc128x128`, `tcW128x256`, `simple`: what `algo` ([`GemmAlgo::Auto`]:
/// the plan) runs for `pass`.
fn algo_name(s: &Linear, pass: Pass, algo: GemmAlgo) -> String {
    match if algo == GemmAlgo::Auto { s.plan(pass.ops()) } else { algo } {
        GemmAlgo::TensorCore { tile, splits } => {
            let tile = format!("{tile:?}");
            let tile = tile.trim_start_matches('T');
            if splits > 1 {
                format!("tc{tile}/split{splits}")
            } else {
                format!("tc{tile}")
            }
        }
        GemmAlgo::Simple => "simple".into(),
        GemmAlgo::Auto => "auto".into(),
    }
}

/// (max_rel, rel_l2) our result must meet against a trusted one: fp16 outputs are rounded
/// once (half an ulp, ~5e-4 relative), sums in another order differ far less; any indexing or
/// synchronisation bug gives errors of order 1.
const BOUNDS: (f64, f64) = (1e-2, 3e-3);

fn bench_layer(
    dev: &Device,
    cfg: &GemmBenchConfig,
    cublas: Option<&Cublas>,
    layer: &FcLayer,
    emit: &mut dyn FnMut(GemmRow),
) {
    let mut params = LayerParams { w: vec![], b: None };
    for &batch in &cfg.batches {
        let s = Linear::new(batch, layer.k, layer.n);
        let inputs = match input_sets(dev, layer, s, &cfg.passes, cfg.l2_bytes, &mut params) {
            Ok(i) => i,
            Err(e) => {
                for &pass in &cfg.passes {
                    let mut row = GemmRow::new(layer, s, pass);
                    row.ours_error = Some(format!("allocating the inputs: {e}"));
                    emit(row);
                }
                continue;
            }
        };
        let ops = Operands { s, inputs: &inputs, params: &params };
        for &pass in &cfg.passes {
            emit(bench_pass(dev, cfg, cublas, layer, &ops, pass));
        }
    }
}

fn bench_pass(
    dev: &Device,
    cfg: &GemmBenchConfig,
    cublas: Option<&Cublas>,
    layer: &FcLayer,
    ops: &Operands<'_>,
    pass: Pass,
) -> GemmRow {
    let s = ops.s;
    let mut row = GemmRow::new(layer, s, pass);
    row.sets = ops.inputs.sets;
    row.pass_bytes = pass_bytes(&s, pass);
    let ours = match bench_ours(dev, cfg, ops, pass) {
        Ok((m, out)) => {
            row.ours = Some(m);
            Some(out)
        }
        Err(e) => {
            row.ours_error = Some(e.to_string());
            None
        }
    };
    let theirs = cublas.and_then(|c| match bench_cublas(dev, cfg, c, ops, pass) {
        Ok((m, out)) => {
            row.cublas = Some(m);
            Some(out)
        }
        Err(e) => {
            row.cublas_error = Some(e.to_string());
            None
        }
    });
    if let (Some(o), Some(c)) = (&row.ours, &row.cublas) {
        row.ratio = Some(c.ms / o.ms);
    }
    let Some(ours) = ours else {
        return row;
    };
    let (max_rel, rel_l2) = BOUNDS;
    let agreement = match theirs {
        Some(mut theirs) => {
            if pass == Pass::Fwd {
                // cuBLAS's product has no bias: add ours to its output.
                match ops.bias().and_then(|b| b.to_f32()) {
                    Ok(b) => {
                        theirs.par_chunks_mut(s.n.max(1)).for_each(|r| r.iter_mut().zip(&b).for_each(|(y, b)| *y += b))
                    }
                    Err(e) => {
                        row.cublas_error = Some(format!("reading the bias: {e}"));
                        return row;
                    }
                }
            }
            Ok(Some(Agreement::new("cublas", &ours, &theirs, max_rel, rel_l2)))
        }
        None if dev.is_emu() => {
            ops.reference(pass).map(|want| Some(Agreement::new("reference", &ours, &want, max_rel, rel_l2)))
        }
        None if !matches!(s.plan(pass.ops()), GemmAlgo::Simple) => {
            simple_output(dev, ops, pass).map(|want| Some(Agreement::new("simple", &ours, &want, max_rel, rel_l2)))
        }
        None => Ok(None),
    };
    match agreement {
        Ok(a) => row.agreement = a,
        Err(e) => row.ours_error = Some(format!("computing the output to compare with: {e}")),
    }
    row
}

/// Times our pass (the algorithm and workspace [`GemmAlgo::Auto`] plans) and returns the
/// timing and our output on set 0.
fn bench_ours(
    dev: &Device,
    cfg: &GemmBenchConfig,
    ops: &Operands<'_>,
    pass: Pass,
) -> crate::Result<(Measured, Vec<f32>)> {
    let s = ops.s;
    let algo = match (cfg.tile, s.plan(pass.ops())) {
        (Some(tile), GemmAlgo::TensorCore { splits, .. }) => GemmAlgo::TensorCore { tile, splits },
        _ => GemmAlgo::Auto,
    };
    let ws_bytes = s.workspace_bytes_with(pass.ops(), algo);
    let mut ws = Tensor::<u8>::empty(dev, &[ws_bytes.max(1)])?;
    let mut out = Out::new(dev, &s, pass)?;
    let t = time_calls(dev, &cfg.timing, |i| ops.ours(algo, pass, i, &mut out, Some(&mut ws)))?;
    out.poison()?;
    ops.ours(algo, pass, 0, &mut out, Some(&mut ws))?;
    let result = out.to_f32()?;
    Ok((Measured::new(algo_name(&s, pass, algo), t, &s, ws_bytes), result))
}

/// Times cuBLAS's product for the pass and returns the timing and its output on set 0.
fn bench_cublas(
    dev: &Device,
    cfg: &GemmBenchConfig,
    c: &Cublas,
    ops: &Operands<'_>,
    pass: Pass,
) -> crate::Result<(Measured, Vec<f32>)> {
    let s = ops.s;
    let mut out = Out::new(dev, &s, pass)?;
    let t = time_calls(dev, &cfg.timing, |i| ops.cublas(c, pass, i, &mut out))?;
    out.poison()?;
    ops.cublas(c, pass, 0, &mut out)?;
    let result = out.to_f32()?;
    let algo = if pass == Pass::BwdWeight { "gemmex f16>f32" } else { "gemmex f16" };
    Ok((Measured::new(algo.into(), t, &s, 0), result))
}

/// Our simple kernel's output of the pass on set 0: the check of the fast path when no
/// cuBLAS is at hand.
fn simple_output(dev: &Device, ops: &Operands<'_>, pass: Pass) -> crate::Result<Vec<f32>> {
    let mut out = Out::new(dev, &ops.s, pass)?;
    out.poison()?;
    ops.ours(GemmAlgo::Simple, pass, 0, &mut out, None)?;
    out.to_f32()
}

/// A device-to-device copy of `src` into `dst` on the device's stream (`cuMemcpyDtoDAsync`);
/// on the emulator, through the host.
fn copy_dtod(dev: &Device, src: &Tensor<u8>, dst: &mut Tensor<u8>) -> crate::Result<()> {
    src.check(dev, "copy source", dst.len())?;
    match dev.cuda_raw_stream()? {
        // SAFETY: both buffers live on this device (checked) and span `dst.len()` bytes; the
        // stream is the device's own, its context current (cuda_raw_stream bound it).
        Some(stream) => unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.device_ptr(),
                src.device_ptr(),
                dst.len(),
                stream as cudarc::driver::sys::CUstream,
            )
        }
        .map_err(|e| crate::Error::Driver { call: "cuMemcpyDtoDAsync", message: e.to_string() }),
        None => dst.copy_from_host(&src.to_host()?),
    }
}

fn bench_copy(dev: &Device, cfg: &GemmBenchConfig) -> BandwidthRow {
    let bytes = cfg.copy_bytes.max(1);
    let how = if dev.is_emu() { "copy through the host (emu)" } else { "cuMemcpyDtoDAsync" };
    let detail = format!("{how} of {:.1} MiB", bytes as f64 / (1u64 << 20) as f64);
    let mut row = BandwidthRow::new("copy", detail, bytes, 2 * bytes);
    let timed = (|| {
        let src = Tensor::<u8>::zeros(dev, &[bytes])?;
        let mut dst = Tensor::<u8>::empty(dev, &[bytes])?;
        time_calls(dev, &cfg.timing, |_| copy_dtod(dev, &src, &mut dst))
    })();
    match timed {
        Ok(t) => row.set_timing(t),
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}

/// `len` normal(0, `scale`^2) values as f32 (from the shared pool, rounded through fp16).
fn random_f32(len: usize, scale: f32, seed: u64) -> Vec<f32> {
    random_f16(len, scale, seed).par_iter().map(|x| x.to_f32()).collect()
}

fn bench_sgd(dev: &Device, cfg: &GemmBenchConfig) -> BandwidthRow {
    let elements: usize = cfg.params.iter().map(|p| p.len).sum();
    let bytes = (SGD_BYTES_PER_PARAM * elements) as f64;
    let detail = format!(
        "SGD step (fp32 master + momentum, fp32 grads, fp16 copies) over {:.2}M params in {} tensors, {} a step",
        elements as f64 / 1e6,
        cfg.params.len(),
        if bytes >= 1e9 { format!("{:.2} GB", bytes / 1e9) } else { format!("{:.2} MB", bytes / 1e6) }
    );
    let mut row = BandwidthRow::new("sgd_step", detail, elements, SGD_BYTES_PER_PARAM * elements);
    if let Err(e) = sgd_measure(dev, cfg, &mut row) {
        row.error = Some(e.to_string());
    }
    row
}

/// Checks one step on the last two tensors against the reference, then times the step.
fn sgd_measure(dev: &Device, cfg: &GemmBenchConfig, row: &mut BandwidthRow) -> crate::Result<()> {
    crate::ensure_shape!(!cfg.params.is_empty(), "SGD bench: no parameter tensors");
    let (mut w, mut v, mut g, mut h) = (vec![], vec![], vec![], vec![]);
    for (i, p) in cfg.params.iter().enumerate() {
        let seed = 0x0057_e900 + 8 * i as u64;
        w.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.05, seed))?);
        v.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.01, seed + 1))?);
        g.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.01, seed + 2))?);
        h.push(Tensor::<f16>::empty(dev, &[p.len])?);
    }
    let mut params: Vec<SgdParam<'_>> = w
        .iter_mut()
        .zip(v.iter_mut())
        .zip(g.iter())
        .zip(h.iter_mut())
        .zip(&cfg.params)
        .map(|((((w, v), g), h), p)| SgdParam { w, v, g, w16: Some(h), decay: p.decay })
        .collect();
    let plan = SgdPlan::new(&params)?;
    let hp = Sgd::VGG.with_scale(1.0);

    // One step, checked against the reference on the last (smallest) tensors.
    let checked = params.len().saturating_sub(2)..params.len();
    let mut want_w = vec![];
    let mut want_v = vec![];
    for p in &params[checked.clone()] {
        let (mut ww, mut vv, gg) = (p.w.to_host()?, p.v.to_host()?, p.g.to_host()?);
        reference::sgd_step(&mut ww, &mut vv, &gg, &hp, p.decay);
        want_w.extend(ww);
        want_v.extend(vv);
    }
    plan.step(&mut params, &hp, None)?;
    let (mut got_w, mut got_v, mut got_h) = (vec![], vec![], vec![]);
    for p in &params[checked] {
        got_w.extend(p.w.to_host()?);
        got_v.extend(p.v.to_host()?);
        if let Some(h) = &p.w16 {
            got_h.extend(h.to_f32()?);
        }
    }
    let want_h: Vec<f32> = want_w.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    let (mut got, mut want) = (got_w, want_w);
    got.extend(got_v);
    want.extend(want_v);
    got.extend(got_h);
    want.extend(want_h);
    // The step is the reference's bit for bit; allow an ulp or so should it ever use f32 math.
    row.check = Some(Agreement::new("reference", &got, &want, 1e-6, 1e-6));

    let t = time_calls(dev, &cfg.timing, |_| plan.step(&mut params, &hp, None))?;
    row.set_timing(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_has_138m_params() {
        let p = vgg16_params(false);
        assert_eq!(p.len(), 32);
        assert_eq!(p.iter().map(|t| t.len).sum::<usize>(), 138_357_544);
        assert_eq!((p[0].len, p[0].decay, p[1].len, p[1].decay), (1728, true, 64, false));
        assert!(vgg16_params(true).iter().map(|t| t.len).sum::<usize>() < 1_000_000);
    }

    #[test]
    fn emu_shapes_take_the_tensor_core_path() {
        for l in VGG16_FC_EMU.iter().chain(&VGG16_FC) {
            assert!(Linear::new(4, l.k, l.n).tensor_core_ok(), "{l:?}");
        }
    }

    #[test]
    fn rotation_exceeds_twice_l2() {
        let s = Linear::new(64, 4096, 1000);
        let lightest = Pass::ALL.iter().map(|&p| pass_bytes(&s, p)).min().unwrap();
        let n = (2 * L2_BYTES).div_ceil(lightest).clamp(2, 64);
        assert!(n * lightest >= 2 * L2_BYTES && n < 64, "{n} sets of {lightest} bytes");
    }

    #[test]
    fn argument_parsing() {
        assert_eq!(Pass::parse_list("bwd_weight, fwd").unwrap(), vec![Pass::BwdWeight, Pass::Fwd]);
        assert_eq!(Pass::parse_list("all").unwrap(), Pass::ALL.to_vec());
        assert!(Pass::parse_list("fprop").unwrap_err().to_string().contains("unknown pass `fprop`"));
        assert!(Pass::parse_list(" , ").is_err());
        assert_eq!(parse_batches("64, 128,64").unwrap(), vec![64, 128]);
        assert!(parse_batches("64,0").unwrap_err().to_string().contains("bad batch `0`"));
        assert!(parse_batches("x").is_err());
        let l = select_layers(false, "fc8,fc6").unwrap();
        assert_eq!((l[0].k, l[0].n, l[1].k), (4096, 1000, 25088));
        assert_eq!(select_layers(true, "all").unwrap()[0].k, 392);
        let e = select_layers(false, "fc9").unwrap_err().to_string();
        assert!(e.contains("unknown shape `fc9`") && e.contains("fc7"), "{e}");
    }

    #[test]
    fn algo_names() {
        assert!(algo_name(&Linear::new(64, 25088, 4096), Pass::Fwd, GemmAlgo::Auto).starts_with("tc64x128"));
        assert_eq!(algo_name(&Linear::new(4, 16, 10), Pass::Fwd, GemmAlgo::Auto), "simple");
        let wgmma = GemmAlgo::TensorCore { tile: GemmTile::W128x256, splits: 2 };
        assert_eq!(algo_name(&Linear::new(64, 4096, 4096), Pass::Fwd, wgmma), "tcW128x256/split2");
    }
}
