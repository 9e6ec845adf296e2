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

use super::cudnn::{Cudnn, CudnnPlan};
use super::{time_calls, Agreement, TimingConfig, L2_BYTES};
use crate::ops::conv::{Conv3x3, ConvAlgo, Epilogue, WinoTiling};
use crate::ops::conv_tune::{self, Tuned};
use crate::problem::{ConvProblem, NamedProblem};
use crate::{reference, Device, Tensor};
use half::f16;
use std::collections::HashMap;

mod options;
mod rows;
pub use options::{select_layers, Algo, BadArgument, Pass};
pub use rows::{ConvReport, ConvRow, ConvSummary, Measured, TuneCandidate, TunedPass};

/// What to run.
#[derive(Clone, Debug)]
pub struct ConvBenchConfig {
    /// The layers to run, in order ([`select_layers`]; `--layers`).
    pub layers: Vec<NamedProblem>,
    /// The passes benched per layer, in order (`--passes`).
    pub passes: Vec<Pass>,
    /// Our algorithm (`--algo`).
    pub algo: Algo,
    /// How the Winograd passes group their tiles (not under `tune`, which chooses the tiling).
    pub wino_tiling: WinoTiling,
    /// How each pass is timed (`--repeats` sets its `samples`).
    pub timing: TimingConfig,
    /// Compare with cuDNN when the device is a GPU and the library loads.
    pub cudnn: bool,
    /// The rotation makes the bytes touched between two uses of an input set exceed twice this.
    pub l2_bytes: usize,
    /// Workspace offered to cuDNN's algorithm search.
    pub cudnn_max_workspace: usize,
}

impl ConvBenchConfig {
    /// The defaults for `dev`: every layer, every pass, `auto`, the device's timing, cuDNN on a
    /// GPU (off on the emulator, which has none).
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
