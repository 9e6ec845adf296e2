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

pub mod checkpoint;
pub mod plot;
pub mod pre_init;

use crate::data::{
    open_dir, open_dir_with_classes, Dataset, Loader, LoaderConfig, Scale, Synthetic, TestTransform, TrainTransform,
};
use crate::model::{Arch, ConvChoice, Init, OptimConfig, ScalerState, Vgg, VggConfig};
use crate::{reference, Device, PinnedBuffer, Tensor};
use anyhow::{bail, Context, Result};
use checkpoint::TrainState;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The paper's: divide by 10 when validation top-1 has not improved for `patience`
    /// evaluations, at most `max_decays` times.
    Plateau { patience: u32, max_decays: u32 },
    /// Divide by 10 every `every` epochs.
    Step { every: u64 },
    /// Cosine from the base rate to 0 over the run.
    Cosine,
}

impl LrSchedule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "plateau" => LrSchedule::Plateau { patience: 1, max_decays: 3 },
            "cosine" => LrSchedule::Cosine,
            _ => match s.strip_prefix("step:").and_then(|v| v.parse().ok()) {
                Some(every) if every > 0 => LrSchedule::Step { every },
                _ => bail!("unknown --schedule `{s}` (plateau, step:EPOCHS, cosine)"),
            },
        })
    }
}

/// Arguments of `vgg train`. The defaults are a small run that visibly learns on the emu
/// device in about 1.5 minutes (A at 1/16 width, 32x32, 4 synthetic classes); the paper's
/// settings are `--width 1 --input 224 --fc 4096 --dropout 0.5 --lr 0.01 --batch 256`.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// VGG config: A, A-LRN, B, C, D, E.
    #[arg(long, default_value = "A")]
    pub model: String,
    /// Conv channel multiplier.
    #[arg(long, default_value_t = 0.0625)]
    pub width: f32,
    /// Input side in pixels (crops of this size).
    #[arg(long, default_value_t = 32)]
    pub input: usize,
    /// Hidden FC width.
    #[arg(long, default_value_t = 64)]
    pub fc: usize,
    /// Classes (synthetic data; an ImageFolder sets its own).
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    /// `synthetic`, an ImageFolder directory (with train/ and val/ subfolders, or flat) or a
    /// `vgg prep` shard directory (index.json; also as train/ and val/).
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Synthetic training images (validation: a quarter as many, other images).
    #[arg(long, default_value_t = 320)]
    pub synthetic_len: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Stop after this many steps (default: --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 4)]
    pub epochs: u64,
    #[arg(long, default_value_t = 0.02)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 5e-4)]
    pub wd: f32,
    /// Dropout probability of the hidden FC layers (0 = off; the paper: 0.5).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// plateau, step:EPOCHS or cosine.
    #[arg(long, default_value = "plateau")]
    pub schedule: String,
    /// Weight init: paper, normal:STD, glorot, he, torchvision.
    #[arg(long, default_value = "he")]
    pub init: String,
    /// Initial loss scale (dynamic scaling halves it on overflow).
    #[arg(long, default_value_t = 1024.0)]
    pub loss_scale: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// 3x3 conv plans: auto, winograd2x2, winograd4x4, direct (for GPUs short of sm_90's
    /// shared memory), wgmma (implicit GEMMs on Hopper's wgmma where Auto runs Winograd), or
    /// tune (time each layer's variants, Winograd and wgmma, on the device before the first
    /// step and keep the fastest of those that agree with Auto's; timing can choose differently
    /// from run to run, so checkpoints record the plans and a resume that tunes reuses them)
    /// [default: tune on cuda, as PyTorch's cudnn.benchmark; auto on emu, whose times say
    /// nothing about a GPU].
    #[arg(long)]
    pub conv_algo: Option<String>,
    /// Read the loss and the overflow flag only every N steps (and at checkpoints and epoch
    /// ends); the steps between are queued with nothing read back, the loss scale's rules
    /// running on the device. Same weights and losses bit for bit; metrics, plots and the
    /// progress bar's loss cover the steps read.
    #[arg(long, default_value_t = 1)]
    pub sync_every: u64,
    /// Replay each step from a captured graph (a CUDA graph on cuda: one launch a step instead
    /// of ~100, for small models where the GPU waits on the host). Same weights and losses bit
    /// for bit; combines with --sync-every.
    #[arg(long)]
    pub graph: bool,
    /// Data loader threads (0: on the training thread) [default: on cuda, one less than this
    /// machine's CPUs (at least 1), since decoding JPEGs for a GPU takes many cores; on emu, 1,
    /// as the emulator itself runs on every core]. Any count loads the same batches.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Write `last.safetensors` here after every epoch (and every --checkpoint-every steps),
    /// and the plots `loss.png` and `accuracy.png`.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue from `<checkpoint-dir>/last.safetensors`, or from this file.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    /// Start from these weights (a torchvision vgg*.safetensors or one of our checkpoints).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The paper's pre-initialisation: take the first four convs and the three FC layers from
    /// this trained config-A checkpoint (same width, input, FC and classes), the rest per --init.
    #[arg(long)]
    pub pre_init: Option<PathBuf>,
    /// JSON-lines metrics file (one line a step, one an evaluation). Without --checkpoint-dir,
    /// the plots go next to it (`NAME.loss.png`, `NAME.accuracy.png`).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// No progress bar (a line an epoch only).
    #[arg(long)]
    pub quiet: bool,
}

impl Default for TrainArgs {
    /// The command line's defaults (`vgg train` with no flags).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TrainArgs,
        }
        <Cli as clap::Parser>::parse_from(["train"]).args
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// (step, loss) of every step run in this process.
    pub losses: Vec<(u64, f32)>,
    pub steps: u64,
    pub final_val_top1: Option<f64>,
    pub final_train_loss: Option<f32>,
    pub first_train_loss: Option<f32>,
    pub images_per_s: f64,
}

/// Training set and optional validation set.
type Datasets = (Arc<dyn Dataset>, Option<Arc<dyn Dataset>>);

fn datasets(a: &TrainArgs) -> Result<Datasets> {
    if a.data == "synthetic" {
        let s = a.input as u32;
        let train = Synthetic::new(a.classes, s, a.synthetic_len, a.seed).square();
        let val = Synthetic::new(a.classes, s, (a.synthetic_len / 4).max(a.batch), a.seed ^ 0x5eed).square();
        return Ok((Arc::new(train), Some(Arc::new(val))));
    }
    let dir = PathBuf::from(&a.data);
    let (tr, va) = (dir.join("train"), dir.join("val"));
    // Each of these may be an ImageFolder or a `vgg prep` shard directory (with index.json).
    if tr.is_dir() {
        let train = open_dir(&tr)?;
        let val = if va.is_dir() { Some(open_dir_with_classes(&va, train.classes())?) } else { None };
        Ok((train, val))
    } else {
        Ok((open_dir(&dir)?, None))
    }
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

/// Top-1 accuracy and mean loss over a whole dataset (no dropout). The last short batch is
/// padded with copies of its first image; padded rows are not counted.
pub fn validate(vgg: &mut Vgg, loader: &Loader) -> Result<(f64, f64, f64)> {
    let (n, s, k) = (vgg.batch(), vgg.config().input, vgg.config().classes);
    let dev = vgg.device().clone();
    let mut images = Tensor::<u8>::zeros(&dev, &[n, s, s, 3])?;
    let (mut loss, mut top1, mut top5, mut count) = (0f64, 0usize, 0usize, 0usize);
    for b in loader.epoch(0) {
        let b = b?;
        let mut px = b.images.clone();
        let per = s * s * 3;
        while px.len() < n * per {
            px.extend_from_slice(&b.images[..per]);
        }
        images.copy_from_host(&px)?;
        let logits = vgg.forward(&images, false, 0)?.to_f32()?;
        let m = b.n;
        let (l, _) = reference::softmax_xent_fwd(m, k, &logits[..m * k], &b.labels[..m]);
        loss += l * m as f64;
        top1 += reference::topk_hits(m, k, &logits[..m * k], &b.labels[..m], 1);
        top5 += reference::topk_hits(m, k, &logits[..m * k], &b.labels[..m], 5.min(k));
        count += m;
    }
    let c = count.max(1) as f64;
    Ok((loss / c, top1 as f64 / c, top5 as f64 / c))
}

/// Runs `vgg train`.
pub fn run(a: &TrainArgs) -> Result<TrainSummary> {
    let arch = Arch::parse(&a.model)?;
    let init = Init::parse(&a.init)?;
    let schedule = LrSchedule::parse(&a.schedule)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (train_ds, val_ds) = datasets(a)?;
    let classes = train_ds.classes().len();
    let cfg = VggConfig { dropout: a.dropout, ..VggConfig::small(arch, a.width, a.input, a.fc, classes) };
    cfg.validate()?;
    if a.sync_every == 0 {
        bail!("--sync-every must be at least 1 (1 reads the loss every step)");
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("train on `{}`", a.device))?;
    let optim =
        OptimConfig { momentum: a.momentum, weight_decay: a.wd, init_scale: a.loss_scale, growth_interval: 2000 };
    let conv_algo = a.conv_algo.as_deref().unwrap_or(if dev.is_emu() { "auto" } else { "tune" });
    let conv = ConvChoice::parse(conv_algo).context("--conv-algo")?;
    let mut vgg = Vgg::with_optim(&dev, cfg.clone(), a.batch, init, a.seed, optim)?;
    let s = a.input as u32;
    let train_tf =
        TrainTransform { scale: Scale::Fixed(s * 8 / 7), crop: s, flip: true, color_shift: None, color_std: 0.1 };
    let train_tf = if a.data == "synthetic" { TrainTransform { scale: Scale::Fixed(s), ..train_tf } } else { train_tf };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(if dev.is_emu() { 1 } else { cpus.saturating_sub(1).max(1) });
    let lcfg = |shuffle, drop_last| LoaderConfig {
        batch: a.batch,
        shuffle,
        seed: a.seed,
        workers,
        drop_last,
        prefetch: 4,
        strict: false,
    };
    let loader = Loader::new(train_ds.clone(), train_tf, lcfg(true, true));
    let test_tf = TestTransform { scale: if a.data == "synthetic" { s } else { s * 8 / 7 }, crop: Some(s) };
    let val_loader = val_ds.map(|v| Loader::new(v, test_tf, lcfg(false, false)));
    let per_epoch = loader.batches() as u64;
    if per_epoch == 0 {
        bail!("the training set ({} images) has no full batch of {}", train_ds.len(), a.batch);
    }
    let total = a.steps.unwrap_or(a.epochs * per_epoch);
    let mut st = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        loss_scale: a.loss_scale,
        scaler_clean_steps: 0,
        scaler_skipped: 0,
        lr: a.lr,
        best_val: -1.0,
        bad_evals: 0,
        decays: 0,
        seed: a.seed,
        conv_plans: vec![],
    };
    if let Some(w) = &a.weights {
        let l = checkpoint::load(w)?;
        vgg.import_params(&l.weights).with_context(|| format!("loading weights from {}", w.display()))?;
    }
    // On resume every weight comes from the checkpoint; pre-initialisation is for a fresh start.
    if let (Some(p), None) = (&a.pre_init, &a.resume) {
        if a.weights.is_some() {
            bail!("--pre-init and --weights both set the initial weights; pass one");
        }
        let map = pre_init::apply(&mut vgg, p)?;
        let pairs: Vec<String> =
            map.iter().map(|(f, t)| if f == t { f.clone() } else { format!("{f}->{t}") }).collect();
        println!("pre-initialised from {}: {} (the rest: --init {})", p.display(), pairs.join(", "), a.init);
    }
    let ckpt_path = a.checkpoint_dir.as_ref().map(|d| d.join("last.safetensors"));
    if let Some(r) = &a.resume {
        let path = if r.is_empty() {
            ckpt_path.clone().context("--resume without a file needs --checkpoint-dir")?
        } else {
            PathBuf::from(r)
        };
        let l = checkpoint::load(&path)?;
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
        vgg.set_scaler_state(ScalerState {
            scale: state.loss_scale,
            clean_steps: state.scaler_clean_steps,
            skipped: state.scaler_skipped,
        })?;
        st = state;
        eprintln!(
            "resumed from {} at step {} (epoch {}, batch {})",
            path.display(),
            st.step,
            st.epoch,
            st.batch_in_epoch
        );
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
            let layers = vgg.set_conv_choice(conv, if dev.is_emu() { 1 } else { 5 })?;
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
    let mut hist = match (&a.resume, &a.metrics) {
        (Some(_), Some(m)) if m.exists() => plot::History::from_metrics(m, st.step)?,
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
        "train VGG {} on {}: {} params, {} train images ({} steps an epoch), batch {}, {} steps",
        cfg.describe(),
        dev.name(),
        cfg.param_count(),
        train_ds.len(),
        per_epoch,
        a.batch,
        total
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
    let (mut win_loss, mut win_acc, mut win_n) = (0f64, 0f64, 0usize);
    let save = |vgg: &Vgg, st: &TrainState| -> Result<()> {
        if let Some(p) = &ckpt_path {
            let sc = vgg.scaler_state();
            let st = TrainState {
                loss_scale: sc.scale,
                scaler_clean_steps: sc.clean_steps,
                scaler_skipped: sc.skipped,
                conv_plans: vgg.conv_plan_records(),
                ..st.clone()
            };
            let (w, m, classes) = (vgg.export_params()?, vgg.export_momentum()?, train_ds.classes());
            checkpoint::save_with_classes(p, &w, &m, vgg.config(), Some(&st), classes)?;
        }
        Ok(())
    };
    'epochs: while st.step < total {
        let skip = st.batch_in_epoch as usize;
        for (bi, b) in loader.epoch(st.epoch).enumerate() {
            if bi < skip {
                continue;
            }
            let b = b.with_context(|| format!("epoch {} batch {bi}", st.epoch))?;
            if b.n != n {
                continue;
            }
            let (hi, hl) = &mut staged[(st.step % 2) as usize];
            if b.images.len() != hi.len() || b.labels.len() != hl.len() {
                bail!(
                    "epoch {} batch {bi}: {} image bytes and {} labels, expected {} and {}",
                    st.epoch,
                    b.images.len(),
                    b.labels.len(),
                    hi.len(),
                    hl.len()
                );
            }
            hi.write()?.copy_from_slice(&b.images);
            hl.write()?.copy_from_slice(&b.labels);
            hi.upload(&mut images)?;
            hl.upload(&mut labels)?;
            let lr = match schedule {
                LrSchedule::Cosine => a.lr * 0.5 * (1.0 + (std::f32::consts::PI * st.step as f32 / total as f32).cos()),
                LrSchedule::Step { every } => a.lr * 0.1f32.powi((st.epoch / every) as i32),
                LrSchedule::Plateau { .. } => st.lr,
            };
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
            (win_loss, win_acc, win_n) = (win_loss + s.loss as f64, win_acc + s.acc1() as f64, win_n + 1);
            bar.set_position(st.step);
            bar.set_message(format!(
                "loss {:.3} acc {:.2} {:.0} img/s lr {:.1e}",
                win_loss / win_n as f64,
                win_acc / win_n as f64,
                ips,
                lr
            ));
            metrics.log(serde_json::json!({"step": st.step, "epoch": st.epoch, "loss": s.loss, "top1": s.acc1(),
                "top5": s.acc5(), "lr": lr, "loss_scale": s.loss_scale, "skipped": s.skipped, "img_per_s": ips,
                "time_s": t0.elapsed().as_secs_f64()}))?;
            if a.checkpoint_every.is_some_and(|e| st.step.is_multiple_of(e)) {
                save(&vgg, &st)?;
            }
            if st.step >= total {
                break 'epochs;
            }
        }
        // End of an epoch: validate, adjust the rate, checkpoint.
        // A run resumed at an epoch's end has no steps of it to average (nor a rate to show).
        let train_line = match win_n {
            0 => "no train steps read in this process".to_string(),
            n => format!("train loss {:.4} acc {:.3}", win_loss / n as f64, win_acc / n as f64),
        };
        (win_loss, win_acc, win_n) = (0.0, 0.0, 0);
        let val = match &val_loader {
            Some(vl) => Some(validate(&mut vgg, vl)?),
            None => None,
        };
        if let Some((vloss, v1, v5)) = val {
            summary.final_val_top1 = Some(v1);
            hist.evals.insert(st.step, plot::Eval { step: st.step, loss: vloss, top1: v1, top5: v5 });
            metrics.log(serde_json::json!({"eval": true, "step": st.step, "epoch": st.epoch, "val_loss": vloss,
                "val_top1": v1, "val_top5": v5, "lr": st.lr}))?;
            if let LrSchedule::Plateau { patience, max_decays } = schedule {
                if v1 > st.best_val + 1e-3 {
                    (st.best_val, st.bad_evals) = (v1, 0);
                } else {
                    st.bad_evals += 1;
                    if st.bad_evals >= patience && st.decays < max_decays {
                        st.lr /= 10.0;
                        st.decays += 1;
                        st.bad_evals = 0;
                    }
                }
            }
        }
        let rate = match imgs {
            0 => String::new(),
            i => format!(" ({:.0} img/s)", i as f64 / t0.elapsed().as_secs_f64().max(1e-9)),
        };
        bar.suspend(|| {
            println!(
                "epoch {} step {}: {train_line}{}{rate}",
                st.epoch,
                st.step,
                val.map(|(l, v1, v5)| format!(", val loss {l:.4} top-1 {v1:.3} top-5 {v5:.3}")).unwrap_or_default(),
            )
        });
        st.epoch += 1;
        st.batch_in_epoch = 0;
        save(&vgg, &st)?;
        plot(&hist);
    }
    // A run that stopped mid-epoch (--steps, or the last step) validates and saves there.
    if st.batch_in_epoch > 0 {
        if let Some(vl) = &val_loader {
            let (l, v1, v5) = validate(&mut vgg, vl)?;
            summary.final_val_top1 = Some(v1);
            hist.evals.insert(st.step, plot::Eval { step: st.step, loss: l, top1: v1, top5: v5 });
            metrics.log(serde_json::json!({"eval": true, "step": st.step, "epoch": st.epoch, "val_loss": l,
                "val_top1": v1, "val_top5": v5, "lr": st.lr}))?;
            bar.suspend(|| println!("step {}: val loss {l:.4} top-1 {v1:.3} top-5 {v5:.3}", st.step));
        }
        save(&vgg, &st)?;
        plot(&hist);
    }
    bar.finish_and_clear();
    summary.steps = st.step;
    summary.images_per_s = imgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    println!(
        "done: {} steps in {:.1} s on {}, {:.0} img/s, loss {:.4} -> {:.4}{}, {} steps skipped (loss scale {})",
        st.step,
        t0.elapsed().as_secs_f64(),
        dev.name(),
        summary.images_per_s,
        summary.first_train_loss.unwrap_or(f32::NAN),
        summary.final_train_loss.unwrap_or(f32::NAN),
        summary
            .final_val_top1
            .map(|v| format!(", val top-1 {v:.3} (chance {:.3})", 1.0 / classes as f64))
            .unwrap_or_default(),
        vgg.scaler_state().skipped,
        vgg.loss_scale()
    );
    Ok(summary)
}
