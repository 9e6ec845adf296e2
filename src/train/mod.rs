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

mod args;
pub mod checkpoint;
pub mod data;
pub mod lock;
pub mod plot;
pub mod pre_init;
mod schedule;

pub use args::{validate_model_options, TrainArgs, DEFAULT_LR};
pub use data::validate;
pub use schedule::LrSchedule;

use crate::data::{Loader, LoaderConfig, Transform};
use crate::model::{ConvChoice, Init, OptimConfig, ScalerState, Vgg, VggConfig};
use crate::{Device, PinnedBuffer, Tensor};
use anyhow::{bail, Context, Result};
use checkpoint::TrainState;
use std::io::Write;
use std::path::{Path, PathBuf};
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
}

struct Metrics(Option<std::fs::File>);
impl Metrics {
    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Output paths checked before any work: a new run does not overwrite an earlier run's
/// checkpoint or metrics (--resume continues them), a run resumed from another file does not
/// overwrite the checkpoint already in its --checkpoint-dir, and a path that cannot be written
/// fails now instead of at the first checkpoint, after training. Returns the checkpoint to
/// resume from, if any (the one place that resolves a bare --resume), and the lock on
/// --checkpoint-dir that the run holds until it ends.
fn outputs_first(a: &TrainArgs, ckpt: Option<&Path>) -> Result<(Option<PathBuf>, Option<lock::RunLock>)> {
    let best = a.checkpoint_dir.as_ref().map(|d| d.join("best.safetensors"));
    // A bare --resume continues --checkpoint-dir's own checkpoint, which must be there.
    let resume = match a.resume.as_deref() {
        None => None,
        Some("") => match ckpt {
            None => bail!("--resume without a file needs --checkpoint-dir (its last.safetensors is resumed)"),
            Some(p) if !p.is_file() => bail!("--resume: {} does not exist (nothing to resume)", p.display()),
            Some(p) => Some(p.to_path_buf()),
        },
        Some(r) => Some(PathBuf::from(r)),
    };
    // Locked before the folder's files are looked at: a run started while another was still
    // before its first checkpoint found nothing to refuse, and replaced that run's files.
    let held = match (ckpt, &a.checkpoint_dir) {
        (Some(p), Some(dir)) => {
            crate::atomic::check_writable(p).context("the checkpoint")?;
            Some(lock::RunLock::acquire(dir)?)
        }
        _ => None,
    };
    if let Some(r) = a.resume.as_deref().filter(|r| !r.is_empty()) {
        // Resolved first and reported as itself: a typo (ck/lst.safetensors) has no canonical
        // path, and comparing that "nothing" with the folder's file blamed an overwrite instead.
        let resumed =
            std::fs::canonicalize(r).with_context(|| format!("--resume {r}: the checkpoint cannot be read"))?;
        // The run the folder holds: its last.safetensors or, without one, its best.safetensors.
        // Compared only when it resolves: a folder without a checkpoint has nothing to lose.
        let own = ckpt.filter(|p| p.exists()).or(best.as_deref().filter(|p| p.exists()));
        if let Some(p) = own.filter(|p| std::fs::canonicalize(p).is_ok_and(|p| p != resumed)) {
            bail!(
                "{}: a checkpoint that --resume {r} is not; the resumed run would overwrite it \
                 (nothing was overwritten: resume from it, or choose another --checkpoint-dir)",
                p.display()
            );
        }
    }
    for (p, what) in
        [(ckpt, "checkpoint"), (best.as_deref(), "best checkpoint"), (a.metrics.as_deref(), "metrics file")]
    {
        let Some(p) = p else { continue };
        // A folder is no earlier run's file: check_writable names it as a folder.
        // A regular file only: a stream (`--metrics /dev/stderr`, a FIFO) holds no run, even
        // when the shell redirected it to a file.
        if a.resume.is_none() && p.is_file() && !crate::atomic::is_stream(p) {
            bail!(
                "{}: an earlier run's {what}; --resume continues that run, or choose another path \
                 (nothing was overwritten)",
                p.display()
            );
        }
        crate::atomic::check_writable(p).with_context(|| format!("the {what}"))?;
    }
    Ok((resume, held))
}

/// A resume's settings against those its checkpoint recorded (`state.settings`, and Q in
/// `state.test_scale`; `now` holds this run's Q). Every option that shapes the run must be
/// the run's own, refused otherwise as --seed and --batch are: the data and their
/// augmentation (another dataset, another epoch length, other images), the optimizer, the
/// schedule (its recorded memory belongs to the schedule that wrote it), the validation's Q
/// (the plateau schedule and the best checkpoint compare its accuracies), the initial loss
/// scale (the divergence check's reference) and --init (the weights come from the checkpoint,
/// so another init would be silently ignored). `--lr` alone may change, and only when given
/// (`lr`; without it the run keeps its base rate): lowering the rate by hand is how the paper
/// trained, so another base rate rescales the schedule from here on, said on stderr. Returns
/// the base rate from here on (`None` where it is unknown and unused: see below) and the
/// current rate. Options that give the same steps (device, conv plans, --sync-every, --graph,
/// workers, outputs) are free, and so are --steps / --epochs, which extend or shorten the run;
/// --data's path is not compared, as a dataset may move (the classes are, with the model's
/// config). An option the checkpoint does not record (written before it was:
/// [`checkpoint::RunSettings`]) cannot be compared: taken as this run's, and named on stderr.
fn resume_settings(
    path: &Path,
    state: &TrainState,
    now: &TrainState,
    settings: &checkpoint::RunSettings,
    lr: Option<f32>,
) -> Result<(Option<f32>, f32)> {
    let differs = |opt: &str, was: String, is: String| -> Result<()> {
        if was != is {
            bail!("{}: written by a run with {opt} {was}, this run has {opt} {is}", path.display());
        }
        Ok(())
    };
    // After --scale, whose Q is --test-scale's default: a new --scale is named as itself.
    let test_scale = || match (state.test_scale, now.test_scale) {
        (Some(q), Some(now_q)) => differs("--test-scale", q.to_string(), now_q.to_string()),
        _ => Ok(()),
    };
    // A checkpoint written before the settings were recorded has none of them.
    let was = state.settings.clone().unwrap_or_default();
    let is = settings;
    // The options the checkpoint does not record: not compared (an unknown value is no
    // evidence of a change, and refusing would refuse the run's own), but said below.
    let mut unchecked = vec![];
    let mut check =
        |opt: &'static str, was: Option<String>, is: Option<String>, eq: fn(&str, &str) -> bool| match (was, is) {
            (Some(w), Some(i)) if !eq(&w, &i) => differs(opt, w, i),
            (None, Some(_)) => {
                unchecked.push(opt);
                Ok(())
            }
            _ => Ok(()),
        };
    let text = |v: f32| v.to_string();
    check("--momentum", was.momentum.map(text), is.momentum.map(text), |a, b| a == b)?;
    check("--wd", was.wd.map(text), is.wd.map(text), |a, b| a == b)?;
    // Compared as parsed: `plateau` and `plateau:1` are one schedule.
    let schedule: fn(&str, &str) -> bool = |a, b| LrSchedule::parse(a).ok() == LrSchedule::parse(b).ok();
    check("--schedule", was.schedule.clone(), is.schedule.clone(), schedule)?;
    check("--init", was.init.clone(), is.init.clone(), |a, b| Init::parse(a).ok() == Init::parse(b).ok())?;
    check("--loss-scale", was.loss_scale.map(text), is.loss_scale.map(text), |a, b| a == b)?;
    check("--scale", was.scale.clone(), is.scale.clone(), |a, b| a == b)?;
    check("--color-shift", was.color_shift.map(text), is.color_shift.map(text), |a, b| a == b)?;
    // None on other data than the synthetic set: not a missing record.
    if let (Some(n), Some(m)) = (was.synthetic_len, is.synthetic_len) {
        differs("--synthetic-len", n.to_string(), m.to_string())?;
    }
    match (was.bias_decay, is.bias_decay) {
        (Some(w), Some(i)) if w != i => {
            let flag = |b: bool| if b { "with --bias-decay" } else { "without --bias-decay" };
            bail!("{}: written by a run {}, this run is {}", path.display(), flag(w), flag(i));
        }
        (None, Some(_)) => unchecked.push("--bias-decay"),
        _ => {}
    }
    test_scale()?;
    if !unchecked.is_empty() {
        eprintln!(
            "note: {} does not record the run's {} (written before they were recorded): this run's are taken \
             unchecked",
            path.display(),
            unchecked.join(", ")
        );
    }
    // The cosine's rate is a function of step / total: a longer or shorter run (legitimate, as
    // for every schedule) bends the rest of its curve, which is said, not refused.
    if let (Some(Ok(LrSchedule::Cosine)), Some(n), Some(m)) =
        (is.schedule.as_deref().map(LrSchedule::parse), was.total_steps, is.total_steps)
    {
        if n != m {
            eprintln!(
                "note: the cosine schedule now anneals over {m} steps, not the run's {n}: the rates from step {} on \
                 follow the new length",
                state.step
            );
        }
    }
    let step = state.step;
    let schedule = is.schedule.as_deref().map(LrSchedule::parse).and_then(Result::ok);
    let plateau = matches!(schedule, Some(LrSchedule::Plateau { .. }));
    // A checkpoint that records no base rate (written before it was): the plateau schedule's
    // is its current rate times 10 per decay so far, which the state does record, so it is
    // known after all (taking a given --lr as the current rate, as this code once did, undid
    // the decays of a run resumed with its own --lr).
    let was_lr = was.lr.or(plateau.then(|| state.lr * 10f32.powi(state.decays.min(38) as i32)));
    let (base, given) = match (was_lr, lr) {
        (Some(base), None) => return Ok((Some(base), state.lr)),
        (Some(base), Some(given)) if base == given => return Ok((Some(base), state.lr)),
        (Some(base), Some(given)) => (base, given),
        // The step and cosine schedules derive every rate from the base rate, and a guess
        // (0.02) rescaled runs started with another rate without a word: refused without
        // --lr. With --lr, the given rate is their base from here on, as the build that wrote
        // the checkpoint took it (the run's own --lr then continues it exactly); said on stderr.
        (None, None) => bail!(
            "{}: the checkpoint records no base rate (written before it was), from which the schedule's rates \
             are computed: give the run's --lr",
            path.display()
        ),
        (None, Some(given)) => {
            eprintln!(
                "note: {} records no base rate (written before it was): the schedule's rates from step {step} on \
                 derive from --lr {given}, as the run's did from its --lr",
                path.display()
            );
            return Ok((Some(given), state.lr));
        }
    };
    // Every schedule's rate is the base rate times a factor (of the epoch, the step, or the
    // plateau's decays so far): the new base scales the current rate alike.
    let lr = state.lr * (given / base);
    eprintln!(
        "note: --lr {given} replaces the run's base rate {base}: its schedule continues from step {step} with every \
         rate scaled by {}, now {lr:e}",
        given / base
    );
    Ok((Some(given), lr))
}

/// Cuts a resumed run's metrics file back to its checkpoint's `step`, so that it reads as one
/// run: an interrupted run logged steps (and validations) past its last checkpoint, which the
/// resumed run logs again (so [`run`] calls it only when resuming --checkpoint-dir's own
/// last.safetensors). Kept: lines before the step, the step's own, and its validation
/// unless `epoch_end_redone` (a checkpoint saved at an epoch's last step, before its end). A
/// line that is not ours (no step) stays; a torn last line (the process killed mid-write) goes.
/// Rewritten whole (a temporary file renamed over it) and only when something goes.
fn cut_metrics(path: &Path, step: u64, epoch_end_redone: bool) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        t => t.with_context(|| format!("reading metrics file {}", path.display()))?,
    };
    let (mut kept, mut dropped) = (String::with_capacity(text.len()), 0usize);
    for line in text.split_inclusive('\n') {
        let parsed = serde_json::from_str::<serde_json::Value>(line);
        let keep = match &parsed {
            Ok(v) => match v["step"].as_u64() {
                Some(s) => s < step || (s == step && !(epoch_end_redone && v["eval"] == true)),
                None => true,
            },
            Err(_) => line.ends_with('\n'),
        };
        if !keep {
            dropped += 1;
            continue;
        }
        kept.push_str(line);
        if !line.ends_with('\n') {
            kept.push('\n');
        }
    }
    if kept != text {
        crate::atomic::write(path, kept.as_bytes())?;
    }
    if dropped > 0 {
        eprintln!(
            "note: {}: removed {dropped} line{} past the checkpoint's step {step} (logged by the interrupted run; \
             this run repeats those steps)",
            path.display(),
            if dropped == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Refuses a branch (a resume of any checkpoint but --checkpoint-dir's own last one) whose
/// --metrics file already holds steps past the checkpoint's `step`: those are the original
/// run's, and the branch's lines appended after them would make one file of two runs that
/// share step numbers, which neither the plots nor a later resume's cut could tell apart (the
/// cut would then delete the original run's lines).
fn refuse_branch_into(path: &Path, step: u64) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading metrics file {}", path.display()))?;
    let past = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .filter(|s| *s > step)
        .max();
    if let Some(last) = past {
        bail!(
            "--metrics {}: it already logs steps {}-{last} of the run this checkpoint (step {step}) comes from; \
             this run's steps from {} on would follow them, mixing two runs in one file. Give this run another \
             --metrics file (nothing was written)",
            path.display(),
            step + 1,
            step + 1
        );
    }
    Ok(())
}

/// A run whose steps keep overflowing ends with an error instead of skipping to the end and
/// reporting "done". Each overflow halves the loss scale; once it is 16x below both 1 and the
/// initial scale, the scaled gradients overflow at a sixteenth of their true size (or the loss
/// or the forward pass is not finite at all), which no further halving mends: the run has
/// diverged. Healthy runs settle far above that (gradients of fp16 networks are small).
fn diverged(vgg: &Vgg, init_scale: f32, step: u64, loss: f32) -> Result<()> {
    let scale = vgg.loss_scale();
    if scale < init_scale.min(1.0) / 16.0 {
        bail!(
            "training diverged at step {step}: the loss is {loss} and every recent step overflowed, \
             so the loss scale fell from {init_scale} to {scale} ({} steps skipped in all; the weights are \
             those of the last step applied, and checkpoints already written are kept). Try a lower --lr, \
             or check --init and the input normalisation (--stats, --mean)",
            vgg.scaler_state().skipped
        );
    }
    Ok(())
}

/// Runs `vgg train`.
pub fn run(a: &TrainArgs) -> Result<TrainSummary> {
    let init = Init::parse(&a.init)?;
    let schedule = LrSchedule::parse(&a.schedule)?;
    // The options, the model's config among them, before any data is read.
    let checked = a.checked()?;
    let arch = checked.arch;
    let ckpt_path = a.checkpoint_dir.as_ref().map(|d| d.join("last.safetensors"));
    let best_path = a.checkpoint_dir.as_ref().map(|d| d.join("best.safetensors"));
    // Held to the end of the run, an error's included (dropping it frees the folder).
    let (resume_from, _lock) = outputs_first(a, ckpt_path.as_deref())?;
    let data = data::prepare(a)?;
    let (train_ds, val_ds) = (data.train.clone(), data.val.clone());
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
    // --conv-algo as checked() parsed it; by default, tune on cuda, auto on emu (whose times
    // say nothing about a GPU).
    let (conv, conv_algo) = match (checked.conv, a.conv_algo.as_deref()) {
        (Some(c), Some(name)) => (c, name),
        _ if dev.is_emu() => (ConvChoice::Auto, "auto"),
        _ => (ConvChoice::Tune, "tune"),
    };
    // He, Glorot and torchvision's init keep unit-variance inputs at unit variance; pixels that
    // are only mean-subtracted have a standard deviation near 60, so the logits start ~60x too
    // large and such runs tend to diverge within a few steps (the paper paired mean subtraction
    // with its N(0, 0.01^2) init). Allowed, since a low --lr can work, but said up front.
    let own_first_layer = a.weights.is_none() && a.pre_init.is_none() && resume_from.is_none();
    if own_first_layer && data.norm.std.is_none() && !matches!(init, Init::Normal { .. }) {
        eprintln!(
            "warning: --init {} expects unit-variance inputs, but --stats / --mean only subtract the mean \
             (pixels keep a std near 60), so training may diverge; the paper's pairing is --init paper, \
             or leave out --stats and --mean for torchvision's mean and std",
            a.init
        );
    }
    let mut vgg = Vgg::with_optim(&dev, cfg.clone(), a.batch, init, a.seed, optim)?;
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
    let loader = Loader::new(train_ds.clone(), data.train_tf.clone(), lcfg(true, !a.keep_last));
    let val_loader = val_ds.map(|v| Loader::new(v, data.test_tf.clone(), lcfg(false, false)));
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
    // A new run's rate; a resume's is the checkpoint's unless --lr is given (resume_settings).
    let new_lr = a.lr.unwrap_or(DEFAULT_LR);
    let mut base_lr = new_lr;
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
    let mut st = TrainState {
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
    if let Some(w) = &a.weights {
        let l = checkpoint::load(w)?;
        l.ensure_vgg_weights(&format!("--weights {}", w.display()))?;
        vgg.import_params(&l.weights).with_context(|| format!("loading weights from {}", w.display()))?;
    }
    if let Some(p) = &a.pre_init {
        let map = pre_init::apply(&mut vgg, p)?;
        let pairs: Vec<String> =
            map.iter().map(|(f, t)| if f == t { f.clone() } else { format!("{f}->{t}") }).collect();
        println!("pre-initialised from {}: {} (the rest: --init {})", p.display(), pairs.join(", "), a.init);
    }
    if let Some(path) = &resume_from {
        let l = checkpoint::load(path)?;
        l.ensure_vgg_weights(&format!("resuming from {}", path.display()))?;
        if let Some(c) = &l.config {
            if let Some(d) = checkpoint::config_diff(c, &cfg) {
                bail!("{}: written for another model ({d}; checkpoint vs this run)", path.display());
            }
        }
        vgg.import_params(&l.weights).with_context(|| format!("resuming from {}", path.display()))?;
        if !l.momentum.is_empty() {
            vgg.import_momentum(&l.momentum).with_context(|| format!("resuming momentum from {}", path.display()))?;
        }
        let state = l.state.with_context(|| format!("{}: no training state (weights only?)", path.display()))?;
        if state.seed != a.seed {
            bail!("{}: written by a run with --seed {}, this run has --seed {}", path.display(), state.seed, a.seed);
        }
        if state.batch != 0 && state.batch != a.batch {
            bail!(
                "{}: written by a run with --batch {b}, this run has --batch {} (its place in the epoch counts \
                 batches of {b})",
                path.display(),
                a.batch,
                b = state.batch
            );
        }
        // Only where the flag changes the epoch: a set of whole batches has no short one.
        if state.keep_last != a.keep_last && !train_ds.len().is_multiple_of(a.batch) {
            let flag = |k: bool| if k { "with --keep-last" } else { "without --keep-last" };
            bail!(
                "{}: written by a run {}, this run is {} (its epochs have another number of batches)",
                path.display(),
                flag(state.keep_last),
                flag(a.keep_last)
            );
        }
        let (base, lr) = resume_settings(path, &state, &st, &settings, a.lr)?;
        vgg.set_scaler_state(ScalerState {
            scale: state.loss_scale,
            clean_steps: state.scaler_clean_steps,
            skipped: state.scaler_skipped,
        })?;
        // The run's best top-1 is that of a best.safetensors in this run's folder; a resume into
        // another folder (a branch from a checkpoint) starts its own best.
        let best_top1 = state.best_top1.filter(|_| best_path.as_ref().is_some_and(|p| p.is_file()));
        st = TrainState { batch: a.batch, test_scale: st.test_scale, best_top1, settings: st.settings, ..state };
        st.lr = lr;
        // An unknown base is used by no schedule (resume_settings): recorded as unknown.
        st.settings = st.settings.map(|s| checkpoint::RunSettings { lr: base, ..s });
        base_lr = base.unwrap_or(lr);
        eprintln!(
            "resumed from {} at step {} (epoch {}, batch {})",
            path.display(),
            st.step,
            st.epoch,
            st.batch_in_epoch
        );
        if st.step >= total {
            println!(
                "{}: already at step {}, this run's last is {total} (--steps / --epochs): nothing to train",
                path.display(),
                st.step
            );
            return Ok(TrainSummary { steps: st.step, ..TrainSummary::default() });
        }
    }
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
            let layers = vgg.set_conv_choice(conv, crate::ops::conv_tune::reps(&dev))?;
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
    // A resumed run plots from its start: the steps before the checkpoint come from the metrics file.
    // A metrics stream (`/dev/stderr`) has no history to cut or read back.
    let metrics_file = a.metrics.as_deref().filter(|m| m.is_file() && !crate::atomic::is_stream(m));
    if let (Some(from), Some(m)) = (&resume_from, metrics_file) {
        // Cut only when continuing the folder's own last checkpoint, the interrupted run the
        // cut exists for: a branch from an older checkpoint (best.safetensors, another folder's
        // file) into a new folder would otherwise delete the original run's lines past that
        // step from a metrics file that still describes the original run. Compared canonical,
        // so that any spelling of the folder's file counts as it.
        let own = |p: &Path| std::fs::canonicalize(p).ok();
        if ckpt_path.as_deref().and_then(own).is_some_and(|c| Some(c) == own(from)) {
            // An epoch's end that the checkpoint is before (saved at its last step) is redone,
            // validation and all.
            cut_metrics(m, st.step, st.batch_in_epoch >= per_epoch)?;
        } else {
            refuse_branch_into(m, st.step)?;
        }
    }
    let mut hist = match (&a.resume, metrics_file) {
        (Some(_), Some(m)) => plot::History::from_metrics(m, st.step)?,
        _ => plot::History::default(),
    };
    let plot_to = plot::destination(a.checkpoint_dir.as_deref(), a.metrics.as_deref());
    let plot = |hist: &plot::History| {
        if let Some((dir, prefix)) = &plot_to {
            if let Err(e) = hist.write(dir, prefix) {
                eprintln!("warning: plots not written: {e:#}");
            }
        }
    };
    let mut metrics = Metrics(match &a.metrics {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening metrics file {}", p.display()))?,
        ),
        None => None,
    });
    println!(
        "train VGG {} on {}: {} params, {} train images ({} an epoch), batch {}, {}",
        cfg.describe(),
        dev.name(),
        cfg.param_count(),
        train_ds.len(),
        steps(per_epoch as u64),
        a.batch,
        steps(total as u64)
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
    let bar = if a.quiet || st.step >= total {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_position(st.step);
        b
    };
    let mut summary = TrainSummary::default();
    let (n, sz) = (a.batch, a.input);
    let mut images = Tensor::<u8>::zeros(&dev, &[n, sz, sz, 3])?;
    let mut labels = Tensor::<i32>::zeros(&dev, &[n])?;
    // Two host buffers a kind, used in turn: a batch's upload is queued behind the step before
    // it, and the host fills the other buffer meanwhile (page-locked on cuda).
    let mut staged = Vec::with_capacity(2);
    for _ in 0..2 {
        let buf = (PinnedBuffer::<u8>::new(&dev, images.len())?, PinnedBuffer::<i32>::new(&dev, n)?);
        staged.push(buf);
    }
    let t0 = Instant::now();
    let mut imgs = 0usize;
    let first_step = st.step;
    // The checkpoint as last.safetensors, and first as best.safetensors after a validation that
    // beat every earlier one: exported and serialized once, written best first, so that a run
    // killed between the two writes keeps the best weights (a resume repeats the epoch and its
    // validation).
    let save = |vgg: &Vgg, st: &TrainState, best: bool| -> Result<()> {
        let Some(last) = &ckpt_path else { return Ok(()) };
        let sc = vgg.scaler_state();
        let st = TrainState {
            loss_scale: sc.scale,
            scaler_clean_steps: sc.clean_steps,
            scaler_skipped: sc.skipped,
            conv_plans: vgg.conv_plan_records(),
            ..st.clone()
        };
        let (w, m, classes) = (vgg.export_params()?, vgg.export_momentum()?, train_ds.classes());
        let bytes = checkpoint::to_bytes(&w, &m, vgg.config(), Some(&st), classes)?;
        for p in best_path.iter().filter(|_| best).chain([last]) {
            crate::atomic::write(p, &bytes)?;
        }
        Ok(())
    };
    'epochs: while st.step < total {
        let skip = st.batch_in_epoch as usize;
        let (mut epoch_skipped, mut epoch_read) = (0usize, 0usize);
        for (bi, b) in loader.epoch(st.epoch).enumerate() {
            if bi < skip {
                continue;
            }
            let b = b.with_context(|| format!("epoch {} batch {bi}", st.epoch))?;
            (epoch_skipped, epoch_read) = (epoch_skipped + b.skipped, epoch_read + b.n);
            if b.n == 0 {
                continue; // every image of it unreadable
            }
            let filled = (b.n < n).then(|| data::fill(&b, n));
            let (bimg, blab) = filled.as_ref().map_or((&b.images[..], &b.labels[..]), |(i, l)| (&i[..], &l[..]));
            let (hi, hl) = &mut staged[(st.step % 2) as usize];
            if bimg.len() != hi.len() || blab.len() != hl.len() {
                bail!(
                    "epoch {} batch {bi}: {} image bytes and {} labels, expected {} and {}",
                    st.epoch,
                    bimg.len(),
                    blab.len(),
                    hi.len(),
                    hl.len()
                );
            }
            hi.write()?.copy_from_slice(bimg);
            hl.write()?.copy_from_slice(blab);
            hi.upload(&mut images)?;
            hl.upload(&mut labels)?;
            let lr = schedule.rate(base_lr, &st, total);
            st.lr = lr;
            let read = a.sync_every == 1
                || (st.step + 1).is_multiple_of(a.sync_every)
                || st.step + 1 >= total
                || bi as u64 + 1 >= per_epoch
                || a.checkpoint_every.is_some_and(|e| (st.step + 1).is_multiple_of(e));
            if !read {
                if a.graph {
                    vgg.train_step_graph(&images, &labels, lr, st.step)?;
                } else {
                    vgg.train_step_queued(&images, &labels, lr, st.step)?;
                }
                imgs += n;
                st.step += 1;
                st.batch_in_epoch = bi as u64 + 1;
                bar.set_position(st.step);
                continue;
            }
            let s = if a.graph {
                vgg.train_step_graph(&images, &labels, lr, st.step)?;
                vgg.sync()?.expect("a step was queued")
            } else {
                vgg.train_step(&images, &labels, lr, st.step)?
            };
            summary.losses.push((st.step, s.loss));
            hist.train.insert(st.step + 1, s.loss);
            summary.first_train_loss.get_or_insert(s.loss);
            summary.final_train_loss = Some(s.loss);
            imgs += n;
            st.step += 1;
            st.batch_in_epoch = bi as u64 + 1;
            let ips = imgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let w = &mut st.epoch_sums;
            (w.loss, w.acc, w.steps) = (w.loss + s.loss as f64, w.acc + s.acc1() as f64, w.steps + 1);
            let w = st.epoch_sums;
            bar.set_position(st.step);
            bar.set_message(format!(
                "loss {:.3} acc {:.2} {:.0} img/s lr {:.1e}",
                w.loss / w.steps as f64,
                w.acc / w.steps as f64,
                ips,
                lr
            ));
            metrics.log(serde_json::json!({"step": st.step, "epoch": st.epoch, "loss": s.loss, "top1": s.acc1(),
                "top5": s.acc5(), "lr": lr, "loss_scale": s.loss_scale, "skipped": s.skipped, "img_per_s": ips,
                "time_s": t0.elapsed().as_secs_f64()}))?;
            diverged(&vgg, a.loss_scale, st.step, s.loss)?;
            if a.checkpoint_every.is_some_and(|e| st.step.is_multiple_of(e)) {
                save(&vgg, &st, false)?;
            }
            if st.step >= total {
                // A run that ends on an epoch's last batch still ends that epoch below.
                if bi as u64 + 1 < per_epoch {
                    break 'epochs;
                }
                break;
            }
        }
        // Nothing readable in a whole epoch would repeat forever.
        if skip == 0 && epoch_read == 0 {
            bail!("epoch {}: no image of the training set could be read ({epoch_skipped} skipped)", st.epoch);
        }
        // End of an epoch: validate, adjust the rate, checkpoint.
        // A run resumed at an epoch's end has no steps of it to average (nor a rate to show).
        let w = std::mem::take(&mut st.epoch_sums);
        let train_line = match w.steps {
            0 => "no train steps read in this process".to_string(),
            n => format!("train loss {:.4} acc {:.3}", w.loss / n as f64, w.acc / n as f64),
        };
        let val = match &val_loader {
            Some(vl) => Some(validate(&mut vgg, vl)?),
            None => None,
        };
        if let Some((vloss, v1, v5)) = val {
            summary.final_val_top1 = Some(v1);
            hist.evals.insert(st.step, plot::Eval { step: st.step, loss: vloss, top1: v1, top5: v5 });
            metrics.log(serde_json::json!({"eval": true, "step": st.step, "epoch": st.epoch, "val_loss": vloss,
                "val_top1": v1, "val_top5": v5, "lr": st.lr}))?;
            schedule.after_validation(&mut st, v1);
        }
        // Only the epochs' validations compete for the best: a straight run makes no other, so a
        // run stopped mid-epoch by --steps and resumed keeps the same state as one that was not.
        let best = best_path.is_some() && val.is_some_and(|(_, v1, _)| st.improves_best(v1));
        let rate = match imgs {
            0 => String::new(),
            i => format!(" ({:.0} img/s)", i as f64 / t0.elapsed().as_secs_f64().max(1e-9)),
        };
        bar.suspend(|| {
            println!(
                "epoch {} step {}: {train_line}{}{rate}{}{}",
                st.epoch,
                st.step,
                val.map(|(l, v1, v5)| format!(", val loss {l:.4} top-1 {v1:.3} top-5 {v5:.3}")).unwrap_or_default(),
                match epoch_skipped {
                    0 => String::new(),
                    k => format!(", {k} unreadable image{} skipped", if k == 1 { "" } else { "s" }),
                },
                if best { ", the best so far (best.safetensors)" } else { "" },
            )
        });
        st.epoch += 1;
        st.batch_in_epoch = 0;
        save(&vgg, &st, best)?;
        plot(&hist);
    }
    // A run that stopped mid-epoch (--steps) validates and saves there.
    if st.batch_in_epoch > 0 {
        if let Some(vl) = &val_loader {
            let (l, v1, v5) = validate(&mut vgg, vl)?;
            summary.final_val_top1 = Some(v1);
            hist.evals.insert(st.step, plot::Eval { step: st.step, loss: l, top1: v1, top5: v5 });
            metrics.log(serde_json::json!({"eval": true, "step": st.step, "epoch": st.epoch, "val_loss": l,
                "val_top1": v1, "val_top5": v5, "lr": st.lr}))?;
            bar.suspend(|| println!("step {}: val loss {l:.4} top-1 {v1:.3} top-5 {v5:.3}", st.step));
        }
        save(&vgg, &st, false)?;
        plot(&hist);
    }
    bar.finish_and_clear();
    summary.steps = st.step;
    summary.images_per_s = imgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    println!(
        "done: {} in {:.1} s on {}, {:.0} img/s, {}{}, {} steps skipped (loss scale {})",
        // A resumed run says which of the run's steps it ran: its loss, time and rate are theirs.
        match first_step {
            0 => format!("{} steps", st.step),
            f => format!("steps {}-{} ({} this run)", f + 1, st.step, st.step - f),
        },
        t0.elapsed().as_secs_f64(),
        dev.name(),
        summary.images_per_s,
        match (summary.first_train_loss, summary.final_train_loss) {
            (Some(f), Some(l)) => format!("loss {f:.4} -> {l:.4}"),
            _ => "no loss read in this process".to_string(),
        },
        summary
            .final_val_top1
            .map(|v| format!(", val top-1 {v:.3} (chance {:.3})", 1.0 / classes as f64))
            .unwrap_or_default(),
        vgg.scaler_state().skipped,
        vgg.loss_scale()
    );
    Ok(summary)
}

/// `n steps`, or `1 step`.
fn steps(n: u64) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}
