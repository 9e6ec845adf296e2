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
use super::{measured_cells, problem_lines, Agreement, Tally, Timing, TimingConfig, VersusRow, L2_BYTES};
use crate::ops::gemm::{self, Linear, Tile as GemmTile};
use crate::Device;

mod bandwidth;
mod measure;
use bandwidth::{bench_copy, bench_sgd};
pub use bandwidth::{vgg16_params, BandwidthRow, ParamTensor, COPY_CEILING_GB_S, SGD_BYTES_PER_PARAM};
use measure::bench_layer;

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
    /// The three products, in the order they are benched.
    pub const ALL: [Pass; 3] = [Pass::Fwd, Pass::BwdData, Pass::BwdWeight];

    /// `fwd`, `bwd_data` or `bwd_weight`: the `--passes` word and the table's pass column.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::BwdData => "bwd_data",
            Pass::BwdWeight => "bwd_weight",
        }
    }

    /// `fwd,bwd_data,bwd_weight` (any subset, any order) or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Pass>, BadArgument> {
        super::parse_passes(s, &Self::ALL, Pass::name)
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
    /// `fc6`, `fc7` or `fc8`: the `--shapes` word.
    pub name: &'static str,
    /// Inputs (the reduction dimension of the forward product).
    pub k: usize,
    /// Outputs.
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
    let valid = "shapes: fc6 (25088->4096), fc7 (4096->4096), fc8 (4096->1000), or all";
    let mut v: Vec<FcLayer> = vec![];
    for name in crate::bench::list_items(names, "shape", valid)? {
        let l = all
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| BadArgument(format!("unknown shape `{name}` ({valid})")))?;
        if !v.contains(l) {
            v.push(*l);
        }
    }
    Ok(v)
}

/// Batches as `64,128,256`: positive integers, duplicates dropped.
pub fn parse_batches(s: &str) -> Result<Vec<usize>, BadArgument> {
    let valid = "a comma-separated list of positive integers, e.g. 64,128,256";
    let mut v = vec![];
    for b in crate::bench::list_items(s, "batch", valid)? {
        let n: usize =
            b.parse().ok().filter(|&n| n > 0).ok_or_else(|| BadArgument(format!("bad batch `{b}` ({valid})")))?;
        if !v.contains(&n) {
            v.push(n);
        }
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

/// What to run.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    /// The layers to run, in order ([`select_layers`]; `--shapes`).
    pub layers: Vec<FcLayer>,
    /// The batches (rows of X) each layer runs at, in order (`--batch`).
    pub batches: Vec<usize>,
    /// The passes benched per layer and batch, in order (`--passes`).
    pub passes: Vec<Pass>,
    /// How each measurement is timed (`--repeats` sets its `samples`).
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
    /// choice: `--tile w128x256` times the wgmma kernels, the `t...` tiles the mma.sync ones.
    pub tile: Option<GemmTile>,
    /// Our products split this many ways over K (on the planner's tile, or `tile`) instead of
    /// the planner's count: a sweep that checks the planner's model (`--splits`). Shapes the
    /// planner sends to the simple kernel stay there.
    pub splits: Option<usize>,
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
            splits: None,
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
    /// Fastest sample, per call, in ms.
    pub min_ms: f64,
    /// `2 M N K` over the median time.
    pub tflops: f64,
    /// Timed samples taken.
    pub samples: usize,
    /// Back-to-back calls in one sample.
    pub calls_per_sample: usize,
    /// Workspace our product was given, in bytes ([`Linear::workspace_bytes_with`] of the
    /// algorithm run); 0 for cuBLAS.
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
    /// The layer's name: `fc6`, `fc7` or `fc8`.
    pub layer: String,
    /// The pass benched.
    pub pass: Pass,
    /// Batch (rows of X).
    pub m: usize,
    /// The layer's inputs.
    pub k: usize,
    /// The layer's outputs.
    pub n: usize,
    /// `2 M N K / 1e9`, the same for all three passes.
    pub gflop: f64,
    /// Input sets rotated (0 when none could be allocated).
    pub sets: usize,
    /// Bytes one call of the pass touches: its two fp16 inputs and its output (fp32 for
    /// `bwd_weight`; the forward's bias too).
    pub pass_bytes: usize,
    /// Our pass's timing, when it ran.
    pub ours: Option<Measured>,
    /// Why our pass did not run or could not be checked.
    pub ours_error: Option<String>,
    /// cuBLAS's timing, when it ran.
    pub cublas: Option<Measured>,
    /// Why cuBLAS's product did not run (or its output could not be completed with the bias).
    pub cublas_error: Option<String>,
    /// Our speed over cuBLAS's (> 1: we are faster).
    pub ratio: Option<f64>,
    /// Our output on set 0 against cuBLAS's, else the f64 reference (emu) or our simple kernel
    /// (GPU, unless the plan is the simple kernel); None when nothing was compared.
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
    /// Rows in the report.
    pub rows: usize,
    /// Rows with our timing.
    pub ours_measured: usize,
    /// Rows with cuBLAS's timing.
    pub cublas_measured: usize,
    /// Rows where our pass failed to run or disagrees ([`GemmRow::failed`]).
    pub failed: usize,
    /// Rows whose output was compared.
    pub agreement_checked: usize,
    /// Rows whose comparison broke its bound.
    pub agreement_failed: usize,
    /// Geometric mean of the speed ratios (ours / cuBLAS), over all rows and per pass.
    pub geomean_ratio: Option<f64>,
    /// The geometric mean per pass, in [`Pass::ALL`]'s order (passes without a finite positive
    /// ratio left out).
    pub geomean_ratio_by_pass: Vec<(Pass, f64)>,
    /// Sums of median times over the rows where both were measured.
    pub ours_total_ms: f64,
    /// cuBLAS's sum of median times over the same rows, in ms.
    pub cublas_total_ms: f64,
}

impl GemmSummary {
    /// The totals of `rows`.
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

/// The whole bench run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GemmReport {
    /// The device's name ([`Device::name`]).
    pub device: String,
    /// This crate's version (`CARGO_PKG_VERSION`).
    pub vgg_version: String,
    /// cuBLAS's version when it was used.
    pub cublas_version: Option<String>,
    /// Why cuBLAS was not used, when it was not.
    pub cublas_note: Option<String>,
    /// The batches run.
    pub batches: Vec<usize>,
    /// The L2 size the input rotation was sized against, in bytes (0 on the emulator).
    pub l2_bytes: usize,
    /// How each measurement was timed.
    pub timing: TimingConfig,
    /// One row per layer, batch and pass, in run order.
    pub rows: Vec<GemmRow>,
    /// Totals over `rows`.
    pub summary: GemmSummary,
    /// [`COPY_CEILING_GB_S`], the bandwidth rows' yardstick.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emu_shapes_take_the_tensor_core_path() {
        for l in VGG16_FC_EMU.iter().chain(&VGG16_FC) {
            assert!(Linear::new(4, l.k, l.n).tensor_core_ok(), "{l:?}");
        }
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
}
