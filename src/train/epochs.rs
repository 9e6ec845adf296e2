//! The training loop of [`super::run`], from the run's current step to its last: each step (its
//! batch uploaded, the step queued or its loss read back), each epoch's end (validation, the
//! schedule's decision, the checkpoint, the plots) and the run's last line. Kept apart from the
//! setup, which decides everything the loop only reads and hands it over in one [`Run`]: the
//! loop's parts share that struct instead of some twenty locals of one long function.

use super::checkpoint::{self, TrainState};
use super::{data, interrupt, plot, LrSchedule, TrainArgs, TrainSummary};
use crate::data::{Dataset, HostBatch, Loader};
use crate::model::Vgg;
use crate::{Device, PinnedBuffer, Tensor};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The --metrics file, a JSON object a line; nothing without --metrics.
pub(super) struct Metrics(Option<std::fs::File>);
impl Metrics {
    /// Opened to append: a resumed run continues its run's file.
    pub(super) fn open(path: Option<&Path>) -> Result<Self> {
        Ok(Metrics(match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening metrics file {}", p.display()))?,
            ),
            None => None,
        }))
    }

    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

/// What the loop works on, made by [`super::run`] before the first step. The fields are
/// declared in the order they are dropped: the model and its device last.
pub(super) struct Run<'a> {
    pub(super) a: &'a TrainArgs,
    pub(super) metrics: Metrics,
    /// The plots' data, a resumed run's earlier steps included.
    pub(super) hist: plot::History,
    pub(super) plot_to: Option<(PathBuf, String)>,
    /// --checkpoint-dir's last.safetensors and best.safetensors.
    pub(super) ckpt_path: Option<PathBuf>,
    pub(super) best_path: Option<PathBuf>,
    /// Where the run is (a resume's checkpoint's state, or step 0), kept current by every step:
    /// what a checkpoint saves.
    pub(super) st: TrainState,
    pub(super) schedule: LrSchedule,
    /// The base rate the schedule scales.
    pub(super) base_lr: f32,
    /// The run's last step, and the batches of an epoch.
    pub(super) total: u64,
    pub(super) per_epoch: u64,
    pub(super) val_loader: Option<Loader>,
    pub(super) loader: Loader,
    /// The training set, whose class names each checkpoint records.
    pub(super) train_ds: Arc<dyn Dataset>,
    /// The training set's class count (for the chance level on the last line).
    pub(super) classes: usize,
    pub(super) vgg: Vgg,
    pub(super) dev: Device,
}

/// The loop's own record of this process's part of the run, for the bar and the last line.
struct Progress {
    bar: indicatif::ProgressBar,
    summary: TrainSummary,
    /// The start of this process's first step: its rates include validations and checkpoints.
    t0: Instant,
    /// Images trained in this process.
    imgs: usize,
    /// The step this process began at (a resume's), which the last line names.
    first_step: u64,
}

/// The device tensors a step reads its batch from, and the host buffers that fill them.
struct Staging {
    images: Tensor<u8>,
    labels: Tensor<i32>,
    /// Two host buffers a kind, used in turn: a batch's upload is queued behind the step before
    /// it, and the host fills the other buffer meanwhile (page-locked on cuda).
    staged: Vec<(PinnedBuffer<u8>, PinnedBuffer<i32>)>,
}

impl Staging {
    /// For batches of `n` images of `sz` x `sz` pixels.
    fn new(dev: &Device, n: usize, sz: usize) -> Result<Self> {
        let images = Tensor::<u8>::zeros(dev, &[n, sz, sz, 3])?;
        let labels = Tensor::<i32>::zeros(dev, &[n])?;
        let mut staged = Vec::with_capacity(2);
        for _ in 0..2 {
            let buf = (PinnedBuffer::<u8>::new(dev, images.len())?, PinnedBuffer::<i32>::new(dev, n)?);
            staged.push(buf);
        }
        Ok(Staging { images, labels, staged })
    }

    /// Queues the upload of batch `bi` of `epoch` for the step `step`, through that step's host
    /// buffers; a short batch (some images unreadable, or --keep-last's last) is filled out to
    /// the model's `n` images by repeating its own.
    fn upload(&mut self, b: &HostBatch, n: usize, step: u64, epoch: u64, bi: usize) -> Result<()> {
        let filled = (b.n < n).then(|| data::fill(b, n));
        let (bimg, blab) = filled.as_ref().map_or((&b.images[..], &b.labels[..]), |(i, l)| (&i[..], &l[..]));
        let (hi, hl) = &mut self.staged[(step % 2) as usize];
        if bimg.len() != hi.len() || blab.len() != hl.len() {
            bail!(
                "epoch {} batch {bi}: {} image bytes and {} labels, expected {} and {}",
                epoch,
                bimg.len(),
                blab.len(),
                hi.len(),
                hl.len()
            );
        }
        hi.write()?.copy_from_slice(bimg);
        hl.write()?.copy_from_slice(blab);
        hi.upload(&mut self.images)?;
        hl.upload(&mut self.labels)?;
        Ok(())
    }
}

/// Trains from the run's step to its last, epoch by epoch, and says what the run did.
pub(super) fn train(mut r: Run) -> Result<TrainSummary> {
    let bar = if r.a.quiet || r.st.step >= r.total {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(r.total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_position(r.st.step);
        b
    };
    let summary = TrainSummary::default();
    let mut staging = Staging::new(&r.dev, r.a.batch, r.a.input)?;
    let mut p = Progress { bar, summary, t0: Instant::now(), imgs: 0, first_step: r.st.step };
    while r.st.step < r.total {
        match r.epoch(&mut p, &mut staging)? {
            EpochEnd::Done(epoch_skipped) => r.end_epoch(&mut p, epoch_skipped)?,
            EpochEnd::RunEnded => break,
            EpochEnd::Stopped => return r.stopped(p),
        }
    }
    // A run that stopped mid-epoch (--steps) validates and saves there.
    if r.st.batch_in_epoch > 0 {
        if let Some(v) = r.validate(&mut p)? {
            p.bar.suspend(|| println!("step {}: {}", r.st.step, val_text(&v)));
        }
        r.save(false)?;
        r.plot();
    }
    Ok(r.finish(p, false))
}

/// How [`Run::epoch`] ended.
enum EpochEnd {
    /// Its last batch trained: the epoch's end (validation, checkpoint) follows. Holds the
    /// epoch's unreadable images.
    Done(usize),
    /// The run's last step came first: the epoch's end is not reached.
    RunEnded,
    /// A stop was requested ([`interrupt`]): the run ends after the step under way.
    Stopped,
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

impl Run<'_> {
    /// The steps of the current epoch from the run's place in it (a resume may start mid-epoch),
    /// and how the epoch ended.
    fn epoch(&mut self, p: &mut Progress, staging: &mut Staging) -> Result<EpochEnd> {
        let skip = self.st.batch_in_epoch as usize;
        let (mut epoch_skipped, mut epoch_read) = (0usize, 0usize);
        let mut reads = ClassReads::new(self.classes);
        for (bi, b) in self.loader.epoch(self.st.epoch).enumerate() {
            // The batches a resume passes over are built all the same: they count for the classes.
            if let Ok(b) = &b {
                reads.add(b, &*self.train_ds);
            }
            if bi < skip {
                continue;
            }
            let b = b.with_context(|| format!("epoch {} batch {bi}", self.st.epoch))?;
            (epoch_skipped, epoch_read) = (epoch_skipped + b.skipped, epoch_read + b.n);
            if b.n == 0 {
                continue; // every image of it unreadable
            }
            staging.upload(&b, self.a.batch, self.st.step, self.st.epoch, bi)?;
            // Sampled before the step, which then reads its loss and scaler state back: the
            // checkpoint a stop writes is of a step the host has seen whole.
            let stop = interrupt::requested();
            self.step(p, staging, bi, stop)?;
            if stop {
                return Ok(EpochEnd::Stopped);
            }
            if self.st.step >= self.total {
                // A run that ends on an epoch's last batch still ends that epoch (end_epoch).
                if bi as u64 + 1 < self.per_epoch {
                    return Ok(EpochEnd::RunEnded);
                }
                break;
            }
        }
        // Nothing readable in a whole epoch would repeat forever.
        if skip == 0 && epoch_read == 0 {
            bail!("epoch {}: no image of the training set could be read ({epoch_skipped} skipped)", self.st.epoch);
        }
        let (unread, skipped) = reads.unread(self.train_ds.classes());
        if let Some(skipped) = skipped_text(skipped, "training") {
            let (e, list, one) = (self.st.epoch, crate::eval::class_list(&unread), unread.len() == 1);
            p.bar.suspend(|| {
                eprintln!(
                    "warning: epoch {e}: no image of {} {list} could be read ({skipped}): the model trained on \
                     none of {} this epoch",
                    if one { "class" } else { "classes" },
                    if one { "it" } else { "them" }
                )
            });
        }
        Ok(EpochEnd::Done(epoch_skipped))
    }

    /// One step on the staged batch `bi` of the epoch. Its loss is read back (a sync) only where
    /// something needs it: every --sync-every-th step, the run's last, an epoch's last and a
    /// --checkpoint-every step, and one after which the run stops (`stop`); only those are
    /// logged and checked for divergence. The others are only queued, so that the host runs
    /// ahead of the device.
    fn step(&mut self, p: &mut Progress, staging: &Staging, bi: usize, stop: bool) -> Result<()> {
        let (total, per_epoch, n) = (self.total, self.per_epoch, self.a.batch);
        let Run { a, st, vgg, hist, metrics, schedule, base_lr, .. } = self;
        let (images, labels) = (&staging.images, &staging.labels);
        let lr = schedule.rate(*base_lr, st, total);
        st.lr = lr;
        let read = a.sync_every == 1
            || stop
            || (st.step + 1).is_multiple_of(a.sync_every)
            || st.step + 1 >= total
            || bi as u64 + 1 >= per_epoch
            || a.checkpoint_every.is_some_and(|e| (st.step + 1).is_multiple_of(e));
        if !read {
            if a.graph {
                vgg.train_step_graph(images, labels, lr, st.step)?;
            } else {
                vgg.train_step_queued(images, labels, lr, st.step)?;
            }
            p.imgs += n;
            st.step += 1;
            st.batch_in_epoch = bi as u64 + 1;
            p.bar.set_position(st.step);
            return Ok(());
        }
        let s = if a.graph {
            vgg.train_step_graph(images, labels, lr, st.step)?;
            vgg.sync()?.expect("a step was queued")
        } else {
            vgg.train_step(images, labels, lr, st.step)?
        };
        let summary = &mut p.summary;
        summary.losses.push((st.step, s.loss));
        hist.train.insert(st.step + 1, s.loss);
        summary.first_train_loss.get_or_insert(s.loss);
        summary.final_train_loss = Some(s.loss);
        p.imgs += n;
        st.step += 1;
        st.batch_in_epoch = bi as u64 + 1;
        let ips = p.imgs as f64 / p.t0.elapsed().as_secs_f64().max(1e-9);
        let w = &mut st.epoch_sums;
        (w.loss, w.acc, w.steps) = (w.loss + s.loss as f64, w.acc + s.acc1() as f64, w.steps + 1);
        let w = st.epoch_sums;
        p.bar.set_position(st.step);
        p.bar.set_message(format!(
            "loss {:.3} acc {:.2} {:.0} img/s lr {:.1e}",
            w.loss / w.steps as f64,
            w.acc / w.steps as f64,
            ips,
            lr
        ));
        metrics.log(serde_json::json!({"step": st.step, "epoch": st.epoch, "loss": s.loss, "top1": s.acc1(),
            "top5": s.acc5(), "lr": lr, "loss_scale": s.loss_scale, "skipped": s.skipped, "img_per_s": ips,
            "time_s": p.t0.elapsed().as_secs_f64()}))?;
        diverged(vgg, a.loss_scale, st.step, s.loss)?;
        if a.checkpoint_every.is_some_and(|e| st.step.is_multiple_of(e)) {
            self.save(false)?;
        }
        Ok(())
    }

    /// End of an epoch: validate, adjust the rate, checkpoint, and say so on one line.
    /// `epoch_skipped`: the epoch's unreadable images.
    fn end_epoch(&mut self, p: &mut Progress, epoch_skipped: usize) -> Result<()> {
        // A run resumed at an epoch's end has no steps of it to average (nor a rate to show).
        let w = std::mem::take(&mut self.st.epoch_sums);
        let train_line = match w.steps {
            0 => "no train steps read in this process".to_string(),
            n => format!("train loss {:.4} acc {:.3}", w.loss / n as f64, w.acc / n as f64),
        };
        let val = self.validate(p)?;
        if let Some(v) = val {
            self.schedule.after_validation(&mut self.st, v.top1);
        }
        // Only the epochs' validations compete for the best: a straight run makes no other, so a
        // run stopped mid-epoch by --steps and resumed keeps the same state as one that was not.
        let best = self.best_path.is_some() && val.is_some_and(|v| self.st.improves_best(v.top1));
        let rate = match p.imgs {
            0 => String::new(),
            i => format!(" ({:.0} img/s)", i as f64 / p.t0.elapsed().as_secs_f64().max(1e-9)),
        };
        let st = &mut self.st;
        p.bar.suspend(|| {
            println!(
                "epoch {} step {}: {train_line}{}{rate}{}{}",
                st.epoch,
                st.step,
                val.map(|v| format!(", {}", val_text(&v))).unwrap_or_default(),
                skipped_text(epoch_skipped, "training").map(|t| format!(", {t}")).unwrap_or_default(),
                if best { ", the best so far (best.safetensors)" } else { "" },
            )
        });
        st.epoch += 1;
        st.batch_in_epoch = 0;
        self.save(best)?;
        self.plot();
        Ok(())
    }

    /// Validates at the run's step, where there is a validation set, and records the result in
    /// the summary, the plots' history and the metrics file. `None` without a validation set,
    /// or when no validation image could be read (said on stderr): nothing was scored, so
    /// neither the schedule nor the best checkpoint may count it.
    fn validate(&mut self, p: &mut Progress) -> Result<Option<data::Validation>> {
        let Some(vl) = &self.val_loader else { return Ok(None) };
        let v = data::validate(&mut self.vgg, vl)?;
        let st = &self.st;
        if v.images == 0 {
            // The summary's "last validation" is this one, which has no score.
            p.summary.final_val_top1 = None;
            p.bar.suspend(|| {
                eprintln!(
                    "warning: step {}: no validation image could be read ({} skipped as unreadable): nothing \
                     scored, and neither the schedule nor best.safetensors counts this validation",
                    st.step, v.skipped
                )
            });
            return Ok(None);
        }
        p.summary.final_val_top1 = Some(v.top1);
        self.hist.evals.insert(st.step, plot::Eval { step: st.step, loss: v.loss, top1: v.top1, top5: v.top5 });
        self.metrics.log(serde_json::json!({"eval": true, "step": st.step, "epoch": st.epoch, "val_loss": v.loss,
            "val_top1": v.top1, "val_top5": v.top5, "val_skipped": v.skipped, "lr": st.lr}))?;
        Ok(Some(v))
    }

    /// The checkpoint as last.safetensors, and first as best.safetensors after a validation that
    /// beat every earlier one: exported and serialized once, written best first, so that a run
    /// killed between the two writes keeps the best weights (a resume repeats the epoch and its
    /// validation).
    fn save(&self, best: bool) -> Result<()> {
        let Some(last) = &self.ckpt_path else { return Ok(()) };
        let vgg = &self.vgg;
        let sc = vgg.scaler_state();
        let st = TrainState {
            loss_scale: sc.scale,
            scaler_clean_steps: sc.clean_steps,
            scaler_skipped: sc.skipped,
            conv_plans: vgg.conv_plan_records(),
            ..self.st.clone()
        };
        let (w, m, classes) = (vgg.export_params()?, vgg.export_momentum()?, self.train_ds.classes());
        let bytes = checkpoint::to_bytes(&w, &m, vgg.config(), Some(&st), classes)?;
        for p in self.best_path.iter().filter(|_| best).chain([last]) {
            crate::atomic::write(p, &bytes)?;
        }
        Ok(())
    }

    /// The end of a run stopped on request ([`interrupt`]): the checkpoint at this step, where
    /// there is a checkpoint folder, and how to continue. No validation: a stop is asked for
    /// to end soon (a resume that reaches the epoch's end validates there).
    fn stopped(self, p: Progress) -> Result<TrainSummary> {
        interrupt::take();
        self.save(false)?;
        self.plot();
        let mut summary = self.finish(p, true);
        summary.stopped = true;
        match &self.ckpt_path {
            Some(path) => println!(
                "checkpoint at step {}: {} (the same command with --resume continues the run)",
                self.st.step,
                path.display()
            ),
            None => println!("no --checkpoint-dir: nothing was saved"),
        }
        Ok(summary)
    }

    /// Redraws the plots; a failure is a warning, not the run's end (the metrics file holds
    /// what they show).
    fn plot(&self) {
        if let Some((dir, prefix)) = &self.plot_to {
            if let Err(e) = self.hist.write(dir, prefix) {
                eprintln!("warning: plots not written: {e:#}");
            }
        }
    }

    /// The run's last line ("done", or "stopped" on request), and the summary of this
    /// process's part of it.
    fn finish(&self, p: Progress, stopped: bool) -> TrainSummary {
        let Progress { bar, mut summary, t0, imgs, first_step } = p;
        let (st, vgg) = (&self.st, &self.vgg);
        bar.finish_and_clear();
        summary.steps = st.step;
        summary.images_per_s = imgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        println!(
            "{}: {} in {:.1} s on {}, {:.0} img/s, {}{}, {} steps skipped (loss scale {})",
            if stopped { format!("stopped at step {} of {}", st.step, self.total) } else { "done".into() },
            // A resumed run says which of the run's steps it ran: its loss, time and rate are theirs.
            match first_step {
                0 => format!("{} steps", st.step),
                f => format!("steps {}-{} ({} this run)", f + 1, st.step, st.step - f),
            },
            t0.elapsed().as_secs_f64(),
            self.dev.name(),
            summary.images_per_s,
            match (summary.first_train_loss, summary.final_train_loss) {
                (Some(f), Some(l)) => format!("loss {f:.4} -> {l:.4}"),
                _ => "no loss read in this process".to_string(),
            },
            summary
                .final_val_top1
                .map(|v| format!(", val top-1 {v:.3} (chance {:.3})", 1.0 / self.classes as f64))
                .unwrap_or_default(),
            vgg.scaler_state().skipped,
            vgg.loss_scale()
        );
        summary
    }
}

/// A validation's scores for the epoch and step lines, with its unreadable images, if any.
fn val_text(v: &data::Validation) -> String {
    let skipped = skipped_text(v.skipped, "validation").map(|t| format!(" ({t})")).unwrap_or_default();
    format!("val loss {:.4} top-1 {:.3} top-5 {:.3}{skipped}", v.loss, v.top1, v.top5)
}

/// Per class, over an epoch's batches: whether any image was read, and how many were skipped as
/// unreadable. A class with skipped images and none read trained as absent, which the per-file
/// warnings do not say; one whose images the epoch's dropped last batch holds is neither.
struct ClassReads {
    read: Vec<bool>,
    unreadable: Vec<usize>,
}

impl ClassReads {
    fn new(classes: usize) -> Self {
        Self { read: vec![false; classes], unreadable: vec![0; classes] }
    }

    fn add(&mut self, b: &HostBatch, ds: &dyn Dataset) {
        for &l in &b.labels {
            if let Some(r) = usize::try_from(l).ok().and_then(|l| self.read.get_mut(l)) {
                *r = true;
            }
        }
        // Where the dataset knows a skipped image's class without reading it (an ImageFolder).
        for c in b.failed.iter().filter_map(|&i| ds.label(i)) {
            if let Some(u) = self.unreadable.get_mut(c) {
                *u += 1;
            }
        }
    }

    /// The classes with unreadable images and none read, and their unreadable images.
    fn unread(&self, names: &[String]) -> (Vec<String>, usize) {
        let unread = |c: &usize| !self.read[*c] && self.unreadable[*c] > 0;
        let classes = (0..names.len().min(self.read.len())).filter(unread);
        (classes.clone().map(|c| names[c].clone()).collect(), classes.map(|c| self.unreadable[c]).sum())
    }
}

/// `k unreadable <set> image(s) skipped`, or `None` for none.
fn skipped_text(k: usize, set: &str) -> Option<String> {
    (k > 0).then(|| format!("{k} unreadable {set} image{} skipped", if k == 1 { "" } else { "s" }))
}
