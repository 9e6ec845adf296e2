//! `vgg train`: the training loop over [`crate::model::Vgg`] and [`crate::data`]: the
//! paper's SGD with a learning rate divided by 10 when validation accuracy stops improving
//! (or step / cosine schedules), a progress bar, a JSON-lines metrics file, PNG plots of
//! loss and accuracy ([`plot`]), the paper's pre-initialisation of deeper configs from A
//! ([`pre_init`]), and checkpoints ([`checkpoint`]) that resume bit-identically on the same
//! device.
//!
//! Reproducibility: data order and augmentation derive from (seed, epoch, sample), dropout
//! masks from (seed, step); a checkpoint stores the step, the epoch and how many of its
//! batches were consumed, so a resumed run sees the same batches and masks.
//!
//! [`run`] reads top-down: the options and outputs checked, the data, the model and the loaders
//! set up, a checkpoint resumed (`resume.rs` holds every check against the run it continues or
//! must not overwrite), then the loop (`epochs.rs`) from the run's step to its last.

mod args;
pub mod checkpoint;
pub mod data;
mod epochs;
pub mod interrupt;
pub mod lock;
pub mod plot;
pub mod pre_init;
pub mod pth;
mod resume;
mod schedule;

pub use args::{validate_model_options, TrainArgs, DEFAULT_LR};
pub use data::{validate, Validation};
pub use schedule::LrSchedule;

use crate::data::{Dataset, Loader, LoaderConfig, Transform};
use crate::model::{ConvChoice, Init, NamedTensor, OptimConfig, Vgg, VggConfig};
use crate::Device;
use anyhow::{bail, Context, Result};
use checkpoint::TrainState;
use std::sync::Arc;
use std::time::Instant;

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// (step, loss) of every step of this process whose loss was read back: all of them by
    /// default, every `--sync-every`-th and each epoch's, checkpoint's and the run's last otherwise. `step` counts the
    /// steps before this one (0 for a run's first), one less than the metrics file's and the
    /// plots' step, which count the steps done.
    pub losses: Vec<(u64, f32)>,
    /// The run's step count at the end (a resumed run's earlier steps included).
    pub steps: u64,
    /// Top-1 accuracy (0 to 1) of the last validation in this process; None without a
    /// validation set or when none ran.
    pub final_val_top1: Option<f64>,
    /// Loss of the last step whose loss was read back in this process.
    pub final_train_loss: Option<f32>,
    /// Loss of the first step whose loss was read back in this process.
    pub first_train_loss: Option<f32>,
    /// Images trained in this process over the wall time since its first step (validations
    /// and checkpoints included), in images/s.
    pub images_per_s: f64,
    /// The run ended early on a stop request ([`interrupt`]: Ctrl-C, SIGTERM or
    /// [`interrupt::request_stop`]), after saving its checkpoint where it has a folder.
    pub stopped: bool,
}

/// Runs `vgg train`.
pub fn run(a: &TrainArgs) -> Result<TrainSummary> {
    let init = Init::parse(&a.init)?;
    let schedule = LrSchedule::parse(&a.schedule)?;
    // The options, the model's config among them, before any data is read.
    let checked = a.checked()?;
    let ckpt_path = a.checkpoint_dir.as_ref().map(|d| d.join("last.safetensors"));
    let best_path = a.checkpoint_dir.as_ref().map(|d| d.join("best.safetensors"));
    // Held to the end of the run, an error's included (dropping it frees the folder).
    let (resume_from, _lock) = resume::outputs_first(a, ckpt_path.as_deref())?;
    let mut s = setup(a, init, &schedule, checked, resume_from.is_some())?;
    let (settings, mut st) = new_state(a, &s.data, s.total);
    // A new run's rate; a resume's is the checkpoint's unless --lr is given (resume_settings).
    let mut base_lr = st.lr;
    initial_weights(a, &mut s.vgg)?;
    if let Some(path) = &resume_from {
        (st, base_lr) = resume::resume(path, a, &mut s, best_path.as_deref(), st, &settings)?;
        if st.step >= s.total {
            println!(
                "{}: already at step {}, this run's last is {} (--steps / --epochs): nothing to train",
                path.display(),
                st.step,
                s.total
            );
            return Ok(TrainSummary { steps: st.step, ..TrainSummary::default() });
        }
    }
    // Before the conv plans, which a tuning run times on the device: a branch into another
    // run's metrics file is refused without that wait.
    let hist = resume::metrics_history(a, resume_from.as_deref(), ckpt_path.as_deref(), &st, s.per_epoch)?;
    conv_plans(&mut s, &st)?;
    let plot_to = plot::destination(a.checkpoint_dir.as_deref(), a.metrics.as_deref());
    let metrics = epochs::Metrics::open(a.metrics.as_deref())?;
    announce(a, &s);
    epochs::train(epochs::Run {
        a,
        metrics,
        hist,
        plot_to,
        ckpt_path,
        best_path,
        st,
        schedule,
        base_lr,
        total: s.total,
        per_epoch: s.per_epoch,
        val_loader: s.val_loader,
        loader: s.loader,
        train_ds: s.train_ds,
        classes: s.classes,
        vgg: s.vgg,
        dev: s.dev,
    })
}

/// What [`setup`] makes of the options: the data, the model on its device and the loaders,
/// with the numbers derived from them that the rest of the run reads.
struct Setup<'a> {
    data: data::RunData,
    train_ds: Arc<dyn Dataset>,
    /// The training set's class count, the model's outputs.
    classes: usize,
    cfg: VggConfig,
    dev: Device,
    /// The conv algorithm and its name as --conv-algo gives it, or the device's default.
    conv: ConvChoice,
    conv_algo: &'a str,
    vgg: Vgg,
    loader: Loader,
    val_loader: Option<Loader>,
    /// Batches an epoch, and the run's last step (--steps, or --epochs of them).
    per_epoch: u64,
    total: u64,
}

/// The data, the device, the model and the loaders, in the order that refuses a run before
/// its costlier parts: the data's classes before the model is built for them, the device
/// before the model is made on it. `resuming`: the run continues a checkpoint, whose weights
/// replace the model's initial ones (so the warning about --init does not apply).
fn setup<'a>(
    a: &'a TrainArgs,
    init: Init,
    schedule: &LrSchedule,
    checked: args::Checked,
    resuming: bool,
) -> Result<Setup<'a>> {
    let arch = checked.arch;
    let data = data::prepare(a)?;
    let train_ds = data.train.clone();
    let classes = train_ds.classes().len();
    if classes < 2 {
        bail!("{}: training needs at least 2 classes, the data has {classes}", a.data);
    }
    let cfg = VggConfig {
        dropout: a.dropout,
        mean: data.norm.mean,
        std: data.norm.std,
        ..VggConfig::small(arch, a.width, a.input, a.fc, classes)
    };
    // Again with a folder's class count, known only now.
    cfg.validate().with_context(|| format!("the model for {} ({classes} classes)", a.data))?;
    let dev = Device::by_name(&a.device).with_context(|| format!("train on `{}`", a.device))?;
    let optim = OptimConfig {
        momentum: a.momentum,
        weight_decay: a.wd,
        init_scale: a.loss_scale,
        decay_biases: a.bias_decay,
        ..OptimConfig::default()
    };
    // --conv-algo as checked() parsed it, by default auto. Not tune: on the H200, whose wgmma
    // convs tune picks, VGG-16's steps on them lowered the loss far less than Auto's at batch 64
    // and raised it at batch 32 (bench/results/2026-11-30-h200.md, run 6), while each wgmma
    // kernel alone agrees with the direct twin; until the next GPU run says whether that is a
    // fault or a run sensitive to rounding (bench/NOTES.md), training runs Auto's plans.
    let (conv, conv_algo) = match (checked.conv, a.conv_algo.as_deref()) {
        (Some(c), Some(name)) => (c, name),
        _ => (ConvChoice::Auto, "auto"),
    };
    if matches!(conv, ConvChoice::Tune | ConvChoice::Wgmma | ConvChoice::Hopper) && !dev.is_emu() && dev.has_wgmma() {
        eprintln!(
            "warning: --conv-algo {conv_algo} runs wgmma convs, on which VGG-16 training on the H200 did not learn \
             at batch 32 and 64 where Auto's plans did (bench/results/2026-11-30-h200.md, run 6; each kernel alone \
             agrees with the direct twin, and whether a fault or a run sensitive to rounding is not yet known: \
             bench/NOTES.md); --conv-algo auto is what training has been checked with"
        );
    }
    // He, Glorot and torchvision's init keep unit-variance inputs at unit variance; pixels that
    // are only mean-subtracted have a standard deviation near 60, so the logits start ~60x too
    // large and such runs tend to diverge within a few steps (the paper paired mean subtraction
    // with its N(0, 0.01^2) init). Allowed, since a low --lr can work, but said up front.
    let own_first_layer = a.weights.is_none() && a.pre_init.is_none() && !resuming;
    if own_first_layer && data.norm.std.is_none() && !matches!(init, Init::Normal { .. }) {
        eprintln!(
            "warning: --init {} expects unit-variance inputs, but --stats / --mean only subtract the mean \
             (pixels keep a std near 60), so training may diverge; the paper's pairing is --init paper, \
             or leave out --stats and --mean for torchvision's mean and std",
            a.init
        );
    }
    let vgg = Vgg::with_optim(&dev, cfg.clone(), a.batch, init, a.seed, optim)?;
    let (loader, val_loader) = loaders(a, &data, &dev);
    if val_loader.is_none() && matches!(schedule, LrSchedule::Plateau { .. }) {
        eprintln!(
            "warning: {} has no val/ folder, so the plateau schedule never lowers the learning rate \
             (give DIR/train and DIR/val, or --schedule step:EPOCHS or cosine)",
            a.data
        );
    }
    let per_epoch = loader.batches() as u64;
    if per_epoch == 0 {
        let hint = if a.keep_last { "" } else { " (--keep-last trains on a short one)" };
        bail!("the training set ({} images) has no full batch of {}{hint}", train_ds.len(), a.batch);
    }
    let total = a.steps.unwrap_or(a.epochs * per_epoch);
    Ok(Setup { data, train_ds, classes, cfg, dev, conv, conv_algo, vgg, loader, val_loader, per_epoch, total })
}

/// The training loader (shuffled, short last batch dropped unless --keep-last) and the
/// validation set's, where there is one.
fn loaders(a: &TrainArgs, data: &data::RunData, dev: &Device) -> (Loader, Option<Loader>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(if dev.is_emu() { 1 } else { cpus.saturating_sub(1).max(1) });
    let lcfg = |shuffle, drop_last| LoaderConfig {
        batch: a.batch,
        shuffle,
        seed: a.seed,
        workers,
        drop_last,
        prefetch: 4,
        strict: a.strict,
    };
    let loader = Loader::new(data.train.clone(), data.train_tf.clone(), lcfg(true, !a.keep_last));
    let val_loader = data.val.clone().map(|v| Loader::new(v, data.test_tf.clone(), lcfg(false, false)));
    (loader, val_loader)
}

/// A new run's settings (what a checkpoint records of the options, for a resume to compare)
/// and its state at step 0; a resume replaces the state with its checkpoint's.
fn new_state(a: &TrainArgs, data: &data::RunData, total: u64) -> (checkpoint::RunSettings, TrainState) {
    let new_lr = a.lr.unwrap_or(DEFAULT_LR);
    let settings = checkpoint::RunSettings {
        lr: Some(new_lr),
        momentum: Some(a.momentum),
        wd: Some(a.wd),
        bias_decay: Some(a.bias_decay),
        schedule: Some(a.schedule.clone()),
        init: Some(a.init.clone()),
        loss_scale: Some(a.loss_scale),
        synthetic_len: (a.data == "synthetic").then_some(a.synthetic_len),
        scale: Some(match data.train_tf.scale {
            crate::data::Scale::Fixed(s) => s.to_string(),
            crate::data::Scale::Jitter(lo, hi) => format!("{lo}:{hi}"),
        }),
        color_shift: Some(data.train_tf.color_std),
        total_steps: Some(total),
    };
    let st = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        loss_scale: a.loss_scale,
        scaler_clean_steps: 0,
        scaler_skipped: 0,
        lr: new_lr,
        best_val: -1.0,
        bad_evals: 0,
        decays: 0,
        seed: a.seed,
        batch: a.batch,
        keep_last: a.keep_last,
        conv_plans: vec![],
        test_scale: Some(data.test_tf.scale),
        best_top1: None,
        settings: Some(settings.clone()),
        epoch_sums: Default::default(),
    };
    (settings, st)
}

/// The weights a new run starts from where they are not --init's: --weights, then the
/// layers --pre-init copies from a trained shallower config.
fn initial_weights(a: &TrainArgs, vgg: &mut Vgg) -> Result<()> {
    if let Some(w) = &a.weights {
        let what = format!("--weights {}", w.display());
        let mut l = checkpoint::load(w)?;
        l.ensure_vgg_weights(&what)?;
        fresh_head(a, vgg, &mut l.weights, &what)?;
        vgg.import_params(&l.weights).with_context(|| format!("loading weights from {}", w.display()))?;
        if let Some(warn) =
            checkpoint::input_norm_warning(l.config.as_ref().map(VggConfig::norm), vgg.config().norm(), &what)
        {
            eprintln!("{warn}");
        }
    }
    if let Some(p) = &a.pre_init {
        let map = pre_init::apply(vgg, p)?;
        let pairs: Vec<String> =
            map.iter().map(|(f, t)| if f == t { f.clone() } else { format!("{f}->{t}") }).collect();
        println!("pre-initialised from {}: {} (the rest: --init {})", p.display(), pairs.join(", "), a.init);
    }
    Ok(())
}

/// The last layer for --weights: with --fresh-head the model's own (--init's, for this run's
/// classes) replaces the file's; without it, a file for another class count is refused here,
/// naming both counts and the flag, rather than as a shape error about `classifier.6.bias`.
fn fresh_head(a: &TrainArgs, vgg: &Vgg, weights: &mut Vec<NamedTensor>, what: &str) -> Result<()> {
    let shapes = vgg.config().param_shapes();
    let last: Vec<&(String, Vec<usize>)> = shapes.iter().rev().take(2).collect();
    if !a.fresh_head {
        let (name, want) = last.iter().find(|(n, _)| n.ends_with(".weight")).expect("a weight");
        if let Some(t) = weights.iter().find(|t| t.0 == *name).filter(|t| t.1 != *want && t.1.len() == 2) {
            let layer = name.trim_end_matches(".weight");
            bail!(
                "{what}: its last layer ({layer}) scores {} classes, this run has {}: --fresh-head trains a new last \
                 layer for this run's classes (fine-tuning), or give --classes {} (synthetic data)",
                t.1[0],
                want[0],
                t.1[0]
            );
        }
        return Ok(());
    }
    let own = vgg.export_params()?;
    weights.retain(|t| last.iter().all(|(n, _)| *n != t.0));
    weights.extend(own.into_iter().filter(|t| last.iter().any(|(n, _)| *n == t.0)));
    let layer = last[0].0.rsplit_once('.').map_or("", |(l, _)| l);
    println!(
        "{what}: every layer but {layer}, which --fresh-head draws anew (--init {}, {} classes)",
        a.init,
        vgg.config().classes
    );
    Ok(())
}

/// The conv plans the run computes with, said on stderr: found once here, before the first
/// step, so that every step runs the same plans.
fn conv_plans(s: &mut Setup<'_>, st: &TrainState) -> Result<()> {
    let (vgg, conv, conv_algo) = (&mut s.vgg, s.conv, s.conv_algo);
    // A tuning run resumes with the plans it computed with (bit-identical losses); they are
    // tuned anew only where they cannot run here (wgmma on another GPU) or were not recorded.
    let from_checkpoint = if conv == ConvChoice::Tune && !st.conv_plans.is_empty() {
        let set = vgg.set_conv_plans(&st.conv_plans);
        set.map_err(|e| eprintln!("warning: the checkpoint's conv plans do not run here ({e}); tuning anew")).ok()
    } else {
        None
    };
    let planning = Instant::now();
    let (layers, how) = match from_checkpoint {
        Some(layers) => (Some(layers), "tune, from the checkpoint".to_string()),
        None if conv == ConvChoice::Auto => (None, String::new()),
        None => {
            let layers = vgg.set_conv_choice(conv, crate::ops::conv_tune::reps(&s.dev))?;
            (Some(layers), format!("{conv_algo}, {:.1} s", planning.elapsed().as_secs_f64()))
        }
    };
    if let Some(layers) = layers {
        let list: Vec<String> = layers.iter().map(|l| l.summary()).collect();
        eprintln!("conv plans ({how}; fprop / dgrad): {}", list.join("; "));
    }
    if !st.conv_plans.is_empty() && vgg.conv_plan_records() != st.conv_plans {
        eprintln!(
            "note: the checkpoint's run computed with other conv plans than --conv-algo {conv_algo} gives; \
             the losses from here on will not repeat that run's bit for bit (--conv-algo tune reuses its plans)"
        );
    }
    Ok(())
}

/// The run's first lines on stdout: the model, the device, the data and the run's length.
fn announce(a: &TrainArgs, s: &Setup<'_>) {
    let (cfg, data) = (&s.cfg, &s.data);
    println!(
        "train VGG {} on {}: {} params, {} train images ({} an epoch), batch {}, {}",
        cfg.describe(),
        s.dev.name(),
        cfg.param_count(),
        s.train_ds.len(),
        steps(s.per_epoch),
        a.batch,
        steps(s.total)
    );
    let norm = match data.norm.std {
        Some(sd) => format!("mean {:?}, std {sd:?}", data.norm.mean),
        None => format!("mean {:?}", data.norm.mean),
    };
    println!(
        "data: {}; {}; input {norm}",
        Transform::from(data.train_tf.clone()).describe(),
        Transform::from(data.test_tf.clone()).describe()
    );
}

/// `n steps`, or `1 step`.
fn steps(n: u64) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}
