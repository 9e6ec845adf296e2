//! The checks that protect earlier runs' files and the run a resume continues: the outputs
//! before any work ([`outputs_first`]), a resumed checkpoint against this run's options
//! ([`resume`], [`resume_settings`]) and the --metrics file against the checkpoint's step
//! ([`metrics_history`]). Apart from [`super::run`] and its loop because they are most of what
//! can refuse a run (each refusal says what it protects), and all of them come before the
//! first step.

use super::checkpoint::{self, TrainState};
use super::{lock, plot, LrSchedule, Setup, TrainArgs};
use crate::model::{Init, ScalerState};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Output paths checked before any work: a new run does not overwrite an earlier run's
/// checkpoint or metrics (--resume continues them), a run resumed from another file does not
/// overwrite the checkpoint already in its --checkpoint-dir, and a path that cannot be written
/// fails now instead of at the first checkpoint, after training. Returns the checkpoint to
/// resume from, if any (the one place that resolves a bare --resume), and the lock on
/// --checkpoint-dir that the run holds until it ends.
pub(super) fn outputs_first(a: &TrainArgs, ckpt: Option<&Path>) -> Result<(Option<PathBuf>, Option<lock::RunLock>)> {
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

/// Takes up the run that the checkpoint `path` holds, in place of the new run `now`: its
/// weights, momentum and loss scaler go into the model and its state (the step, the epoch, the
/// rate, the schedule's memory) becomes the run's, unless the checkpoint is one this run would
/// not continue as it was written: another model, no state, another --seed, --batch or
/// --keep-last epoch, or another option that [`resume_settings`] compares. What stays this
/// run's own comes from `now`: --batch, the validation's Q and the settings (`settings`, with
/// the base rate from here on). Returns the state and the schedule's base rate.
pub(super) fn resume(
    path: &Path,
    a: &TrainArgs,
    setup: &mut Setup<'_>,
    best_path: Option<&Path>,
    now: TrainState,
    settings: &checkpoint::RunSettings,
) -> Result<(TrainState, f32)> {
    let l = checkpoint::load(path)?;
    l.ensure_vgg_weights(&format!("resuming from {}", path.display()))?;
    if let Some(c) = &l.config {
        if let Some(d) = checkpoint::config_diff(c, &setup.cfg) {
            bail!("{}: written for another model ({d}; checkpoint vs this run)", path.display());
        }
    }
    setup.vgg.import_params(&l.weights).with_context(|| format!("resuming from {}", path.display()))?;
    if !l.momentum.is_empty() {
        setup.vgg.import_momentum(&l.momentum).with_context(|| format!("resuming momentum from {}", path.display()))?;
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
    if state.keep_last != a.keep_last && !setup.train_ds.len().is_multiple_of(a.batch) {
        let flag = |k: bool| if k { "with --keep-last" } else { "without --keep-last" };
        bail!(
            "{}: written by a run {}, this run is {} (its epochs have another number of batches)",
            path.display(),
            flag(state.keep_last),
            flag(a.keep_last)
        );
    }
    let (base, lr) = resume_settings(path, &state, &now, settings, a.lr)?;
    setup.vgg.set_scaler_state(ScalerState {
        scale: state.loss_scale,
        clean_steps: state.scaler_clean_steps,
        skipped: state.scaler_skipped,
    })?;
    // The run's best top-1 is that of a best.safetensors in this run's folder; a resume into
    // another folder (a branch from a checkpoint) starts its own best.
    let best_top1 = state.best_top1.filter(|_| best_path.is_some_and(|p| p.is_file()));
    let mut st = TrainState { batch: a.batch, test_scale: now.test_scale, best_top1, settings: now.settings, ..state };
    st.lr = lr;
    // An unknown base is used by no schedule (resume_settings): recorded as unknown.
    st.settings = st.settings.map(|s| checkpoint::RunSettings { lr: base, ..s });
    eprintln!("resumed from {} at step {} (epoch {}, batch {})", path.display(), st.step, st.epoch, st.batch_in_epoch);
    Ok((st, base.unwrap_or(lr)))
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
        // The step and cosine schedules derive every rate from the base rate, and a guess (the
        // default rate) rescaled runs started with another rate without a word: refused without
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

/// The history that the run's plots start from, read from its --metrics file once that file is
/// the log of one run: cut back to the checkpoint when the folder's own run continues
/// ([`cut_metrics`]), refused when a branch would append to another run's steps
/// ([`refuse_branch_into`]).
pub(super) fn metrics_history(
    a: &TrainArgs,
    resume_from: Option<&Path>,
    ckpt_path: Option<&Path>,
    st: &TrainState,
    per_epoch: u64,
) -> Result<plot::History> {
    // A metrics stream (`/dev/stderr`) has no history to cut or read back.
    let metrics_file = a.metrics.as_deref().filter(|m| m.is_file() && !crate::atomic::is_stream(m));
    let (Some(from), Some(m)) = (resume_from, metrics_file) else { return Ok(plot::History::default()) };
    // Read once for the checks, the cut and the history.
    let text = std::fs::read_to_string(m).with_context(|| format!("reading metrics file {}", m.display()))?;
    let text = {
        // Cut only when continuing the folder's own last checkpoint, the interrupted run the
        // cut exists for: a branch from an older checkpoint (best.safetensors, another folder's
        // file) into a new folder would otherwise delete the original run's lines past that
        // step from a metrics file that still describes the original run. Compared canonical,
        // so that any spelling of the folder's file counts as it.
        let own = |p: &Path| std::fs::canonicalize(p).ok();
        if ckpt_path.and_then(own).is_some_and(|c| Some(c) == own(from)) {
            // An epoch's end that the checkpoint is before (saved at its last step) is redone,
            // validation and all.
            cut_metrics(m, text, st.step, st.batch_in_epoch >= per_epoch)?
        } else {
            // Continuing the run that wrote the file needs its folder (where a resume cuts).
            let own_last = ckpt_path.is_none() && from.file_name().is_some_and(|n| n == "last.safetensors");
            refuse_branch_into(m, &text, st.step, st.batch_in_epoch >= per_epoch, own_last)?;
            text
        }
    };
    // A resumed run plots from its start: the steps before the checkpoint come from the metrics file.
    Ok(plot::History::from_text(&text, st.step))
}

/// Cuts a resumed run's metrics file back to its checkpoint's `step`, so that it reads as one
/// run: an interrupted run logged steps (and validations) past its last checkpoint, which the
/// resumed run logs again (so [`metrics_history`] calls it only when resuming
/// --checkpoint-dir's own last.safetensors). Kept: lines before the step, the step's own, and
/// its validation unless `epoch_end_redone` (a checkpoint saved at an epoch's last step, before
/// its end). A line that is not ours (no step) stays; a torn last line (the process killed
/// mid-write) goes. Rewritten whole (a temporary file renamed over it) and only when something
/// goes. `text` is the file's; returns what it holds now.
fn cut_metrics(path: &Path, text: String, step: u64, epoch_end_redone: bool) -> Result<String> {
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
    Ok(kept)
}

/// Refuses a branch (a resume of any checkpoint but --checkpoint-dir's own last one) whose
/// --metrics file already holds steps past the checkpoint's `step`: those are the original
/// run's, and the branch's lines appended after them would make one file of two runs that
/// share step numbers, which neither the plots nor a later resume's cut could tell apart (the
/// cut would then delete the original run's lines). `epoch_end_redone`: the checkpoint was
/// saved at an epoch's last step, before its end, so the branch logs that step's validation
/// again. `own_last`: a `last.safetensors` resumed without --checkpoint-dir, perhaps the
/// interrupted run itself, which counts as a branch here (its folder is what makes it the same
/// run), so the message names that remedy too.
fn refuse_branch_into(path: &Path, text: &str, step: u64, epoch_end_redone: bool, own_last: bool) -> Result<()> {
    let logged: Vec<(u64, bool)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["eval"] == true)))
        .collect();
    let past = logged.iter().filter(|(s, _)| *s > step).map(|(s, _)| *s).max();
    let redone_eval = epoch_end_redone && logged.iter().any(|&(s, eval)| s == step && eval);
    if past.is_none() && !redone_eval {
        return Ok(());
    }
    let (what, again) = match past {
        Some(last) => (format!("steps {}-{last}", step + 1), "its own steps from there on after them"),
        None => (format!("the validation at step {step}"), "that validation again after it"),
    };
    let hint = if own_last {
        " (or, to continue the run that wrote it, give its --checkpoint-dir, whose last.safetensors a resume \
         continues into the same file)"
    } else {
        ""
    };
    bail!(
        "--metrics {}: it already logs {what} of the run this checkpoint (step {step}) comes from; this run would \
         log {again}, mixing two runs in one file. Give this run another --metrics file{hint} (nothing was \
         written)",
        path.display()
    );
}
