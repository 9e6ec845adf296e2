//! `vgg bench train`: images/s and device memory of whole training steps (forward, loss,
//! backward, overflow check, SGD) of a VGG on device-resident synthetic data, the
//! conditions of scripts/torch_baseline.py: two random batches alternated, so no data
//! loading is timed; each step timed with device events around [`Vgg::train_step`], or, queued
//! or replayed from a graph, all of them under one timer.

use super::profile::StepProfile;
use crate::model::{Arch, ConvChoice, ConvLayerChoice, Init, Sharing, Vgg, VggConfig};
use crate::{Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

/// What to run.
#[derive(Clone, Debug)]
pub struct TrainBenchConfig {
    /// The network (`--model`, `--input`, `--width`).
    pub model: VggConfig,
    /// Images a step (one `--batch` entry).
    pub batch: usize,
    /// Untimed steps first (`--warmup`).
    pub warmup: usize,
    /// Timed steps (`--steps`); at least 1 ([`run`] refuses 0).
    pub steps: usize,
    /// Learning rate of every step (`--lr`, 1e-2 by default: scripts/torch_baseline.py's).
    pub lr: f32,
    /// How the 3x3 conv layers are planned (tuning happens before the warm-up, untimed).
    pub conv: ConvChoice,
    /// Time the steps queued ([`Vgg::train_step_queued`]: nothing read back, one sync at the
    /// end, the mean over the timed steps) instead of one by one.
    pub queued: bool,
    /// Queued steps replayed from a captured graph ([`Vgg::train_step_graph`]; implies
    /// `queued`; one graph per batch buffer, captured by the last two warm-up steps, or with
    /// fewer than two warm-up steps by the first timed ones, whose time then includes it).
    pub graph: bool,
    /// After the timed steps, one more step (one by one) with each launch timed on its own
    /// ([`StepProfile`]).
    pub profile: bool,
    /// Every buffer its own bytes ([`Sharing::Separate`], a poisoned guard band behind each) and
    /// every byte outside the live buffers poisoned as each phase begins
    /// ([`Vgg::check_lifetimes`]): a kernel that reads outside its buffers or their lifetimes
    /// then changes the losses (correct kernels give the same ones bit for bit), and one that
    /// writes past a buffer's end fails the step, naming the phase and the buffer.
    pub check_memory: bool,
}

impl TrainBenchConfig {
    /// An error for settings no run can take: no timed step, a learning rate that is negative
    /// or not finite, or a memory check with graph steps. [`run`] checks it; a caller with
    /// several configurations can check them all first.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(crate::Error::Invalid("the train bench needs at least 1 timed step (steps is 0)".into()));
        }
        // Before any model is built: the steps' own check would come after the tuning.
        crate::ops::optim::check_lr(self.lr)?;
        if self.check_memory && self.graph {
            // The poisoning runs as the host enters each phase, which a graph replay does not.
            return Err(crate::Error::Invalid(
                "a memory check cannot run with graph steps (--check-memory cannot run with --graph)".into(),
            ));
        }
        Ok(())
    }

    /// The bench's model and its conv layers' plans, by `conv` (the bench's own policy, or
    /// another to compare with): the same weights for the same configuration.
    pub fn model(&self, dev: &Device, conv: ConvChoice) -> Result<(Vgg, Vec<ConvLayerChoice>)> {
        let mut vgg = Vgg::new(dev, self.model.clone(), self.batch, Init::Torchvision, 1)?;
        let layers = vgg.set_conv_choice(conv, crate::ops::conv_tune::reps(dev))?;
        Ok((vgg, layers))
    }

    /// The paper's network (224x224, 1000 classes) on a GPU; a tiny one on emu.
    pub fn for_device(dev: &Device, arch: Arch, batch: Option<usize>) -> Self {
        if dev.is_emu() {
            let model = VggConfig::small(arch, 1.0 / 16.0, 32, 64, 10);
            Self {
                model,
                batch: batch.unwrap_or(4),
                warmup: 1,
                steps: 2,
                lr: 1e-2,
                conv: ConvChoice::Auto,
                queued: false,
                graph: false,
                profile: false,
                check_memory: false,
            }
        } else {
            Self {
                model: VggConfig::paper(arch),
                batch: batch.unwrap_or(64),
                warmup: 5,
                steps: 20,
                lr: 1e-2,
                conv: ConvChoice::Auto,
                queued: false,
                graph: false,
                profile: false,
                check_memory: false,
            }
        }
    }
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBenchRow {
    /// The architecture and input size, e.g. `D 224x224`.
    pub model: String,
    /// Images a step.
    pub batch: usize,
    /// Input pixels a side.
    pub input: usize,
    /// Timed steps.
    pub steps: usize,
    /// Per step: median and fastest of the per-step times, or, for queued steps, both the mean
    /// over all of them (one timer around the lot).
    pub median_step_ms: f64,
    /// The fastest per-step time in ms (queued: the mean, as `median_step_ms`).
    pub min_step_ms: f64,
    /// The timed steps were queued and timed together (also true under `graph`).
    pub queued: bool,
    /// Queued steps replayed from a captured graph.
    pub graph: bool,
    /// `batch` over `median_step_ms`, in images/s.
    pub images_per_s: f64,
    /// TFLOP/s of the step: forward, dgrad (but the first layer's) and wgrad FLOPs over the median.
    pub tflops: f64,
    /// Bytes the model planned (parameters, optimizer state, activations, workspaces).
    pub model_bytes: usize,
    /// Device memory reserved by the process after the steps, minus before the model was
    /// built (cuda only).
    pub reserved_bytes: Option<usize>,
    /// Loss of the first step, warm-up or timed (queued with no warm-up: read by a sync after
    /// it, inside the timed steps), the same in every mode.
    pub first_loss: f32,
    /// Loss of the last timed step (queued: read back after the final sync).
    pub last_loss: f32,
    /// Steps the loss scaler skipped on an overflow, warm-up steps included.
    pub skipped_steps: usize,
    /// Host launches a step (a graph launch counts once), and the median host time to queue a
    /// step's forward and backward (queued steps: the mean host time to queue a whole step):
    /// when it is well under `median_step_ms` the device never waits for a launch (only for
    /// the host reads at the end of the step), so CUDA graphs could not pay.
    pub launches_per_step: f64,
    /// The host time to queue a step, in ms: see `launches_per_step`.
    pub median_enqueue_ms: f64,
    /// The conv-plan policy, and per 3x3 conv layer `fprop/dgrad` algorithms (region width
    /// `rN` where F(2x2) runs region tiles).
    pub conv: String,
    /// One entry per 3x3 conv layer: its plan's summary (see `conv`).
    pub conv_layers: Vec<String>,
    /// Under `tune`: each tuned shape's per-pass, per-variant times.
    pub conv_timings: Vec<String>,
    /// The profiled step, when asked for.
    pub profile: Option<StepProfile>,
    /// The steps ran with buffers separate and free bytes poisoned (`check_memory`).
    pub check_memory: bool,
}

/// The bench's two device-resident batches: random pixels and labels, the same for a seed.
pub(super) fn synthetic_batches(dev: &Device, cfg: &TrainBenchConfig) -> Result<Vec<(Tensor<u8>, Tensor<i32>)>> {
    let side = cfg.model.input;
    let mut rng = StdRng::seed_from_u64(7);
    (0..2)
        .map(|_| {
            let px: Vec<u8> = (0..cfg.batch * side * side * 3).map(|_| rng.gen()).collect();
            let labels: Vec<i32> = (0..cfg.batch).map(|_| rng.gen_range(0..cfg.model.classes as i32)).collect();
            Ok((
                Tensor::from_host(dev, &[cfg.batch, side, side, 3], &px)?,
                Tensor::from_host(dev, &[cfg.batch], &labels)?,
            ))
        })
        .collect()
}

/// Builds the model, runs `warmup` untimed and `steps` timed training steps. `steps` must be
/// at least 1 (a rate needs a timed step).
pub fn run(dev: &Device, cfg: &TrainBenchConfig) -> Result<TrainBenchRow> {
    cfg.validate()?;
    let free_before = dev.memory_info()?.map(|(free, _)| free);
    let (mut vgg, layers) = cfg.model(dev, cfg.conv)?;
    if cfg.check_memory {
        vgg.relayout(Sharing::Separate)?;
        vgg.check_lifetimes(true);
    }
    let conv_layers = layers.iter().map(|c| c.summary()).collect();
    let conv_timings = layers.iter().filter_map(|c| c.timings_line()).collect();
    let side = cfg.model.input;
    let sets = synthetic_batches(dev, cfg)?;
    let (mut first_loss, mut last_loss, mut skipped) = (f32::NAN, f32::NAN, 0);
    let mut times = Vec::with_capacity(cfg.steps);
    let mut enqueue = Vec::with_capacity(cfg.steps);
    let queued = cfg.queued || cfg.graph;
    // A graph's first step on each batch buffer captures it and then runs it: a training step
    // like any other, so the captures must be among the warmup + steps counted, or a graph run
    // trains two steps more than the others and ends at another loss. They are the last two
    // warm-up steps (read back one by one, as plain warm-up steps are), or, short of those,
    // the first timed ones.
    let first_graph_step = if cfg.graph { cfg.warmup.saturating_sub(2) } else { usize::MAX };
    for step in 0..cfg.warmup {
        let (x, y) = &sets[step % 2];
        let s = if step >= first_graph_step {
            vgg.train_step_graph(x, y, cfg.lr, step as u64)?;
            vgg.sync()?.expect("a graph step was queued")
        } else {
            vgg.train_step(x, y, cfg.lr, step as u64)?
        };
        if step == 0 {
            first_loss = s.loss;
        }
        last_loss = s.loss;
        skipped += usize::from(s.skipped);
    }
    let launches0 = dev.launches();
    let timed = cfg.warmup..cfg.warmup + cfg.steps;
    if !queued {
        for step in timed {
            let (x, y) = &sets[step % 2];
            let t = dev.start_timer()?;
            let s = vgg.train_step(x, y, cfg.lr, step as u64)?;
            times.push(t.stop_ms()?);
            enqueue.push(s.enqueue_ms);
            if step == 0 {
                first_loss = s.loss;
            }
            last_loss = s.loss;
            skipped += usize::from(s.skipped);
        }
    } else {
        let skipped0 = vgg.scaler_state().skipped;
        let t = dev.start_timer()?;
        let host = std::time::Instant::now();
        let mut stats = None;
        for step in timed {
            let (x, y) = &sets[step % 2];
            if cfg.graph {
                vgg.train_step_graph(x, y, cfg.lr, step as u64)?;
            } else {
                vgg.train_step_queued(x, y, cfg.lr, step as u64)?;
            }
            if step == 0 {
                // No warm-up step read the first loss, and the next step overwrites it on the
                // device: one read inside the timed steps, only without a warm-up.
                stats = vgg.sync()?;
                first_loss = stats.as_ref().expect("a step was queued").loss;
            }
        }
        let queued_ms = host.elapsed().as_secs_f64() * 1e3;
        // None when the only step was read above already.
        if let Some(s) = vgg.sync()? {
            stats = Some(s);
        }
        times.push(t.stop_ms()? / cfg.steps as f64);
        enqueue.push(queued_ms / cfg.steps as f64);
        last_loss = stats.expect("steps were queued").loss;
        skipped += (vgg.scaler_state().skipped - skipped0) as usize;
    }
    let launches_per_step = (dev.launches() - launches0) as f64 / cfg.steps as f64;
    let profile = if cfg.profile {
        // Queued or graph steps left the scaler on the device: the plain step below reads it.
        vgg.sync()?;
        let step = (cfg.warmup + cfg.steps) as u64;
        let (x, y) = &sets[step as usize % 2];
        let t = dev.start_timer()?;
        dev.profile_start()?;
        let stepped = vgg.train_step(x, y, cfg.lr, step);
        let launches = dev.profile_stop()?;
        stepped?;
        Some(StepProfile { step_ms: t.stop_ms()?, launches })
    } else {
        None
    };
    let min_step_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median_step_ms = super::median(&mut times);
    let reserved_bytes = match (free_before, dev.memory_info()?) {
        (Some(before), Some((after, _))) => Some(before.saturating_sub(after)),
        _ => None,
    };
    Ok(TrainBenchRow {
        model: format!("{} {}x{}", cfg.model.arch.name(), side, side),
        batch: cfg.batch,
        input: side,
        steps: cfg.steps,
        median_step_ms,
        min_step_ms,
        queued,
        graph: cfg.graph,
        images_per_s: cfg.batch as f64 / median_step_ms * 1e3,
        tflops: vgg.train_flops() / median_step_ms / 1e9,
        model_bytes: vgg.device_bytes(),
        reserved_bytes,
        first_loss,
        last_loss,
        skipped_steps: skipped,
        launches_per_step,
        median_enqueue_ms: super::median(&mut enqueue),
        conv: format!("{:?}", cfg.conv).to_lowercase(),
        conv_layers,
        conv_timings,
        profile,
        check_memory: cfg.check_memory,
    })
}
