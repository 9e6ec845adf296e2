//! The command line of `vgg train`, also the library's way to describe a run
//! ([`TrainArgs::default`] is `vgg train` with no flags).

use std::path::PathBuf;

/// The learning rate of a new run without `--lr`: the paper's. It was 0.02, at which the
/// default small run learned or collapsed to chance in its last epoch depending on the
/// rounding of its conv plans (on emu: val top-1 0.250-0.512 over four correct plans; at 0.01
/// 0.575-0.688; bench/NOTES.md, "The small run at lr 0.02").
pub const DEFAULT_LR: f32 = 0.01;

/// Arguments of `vgg train`. The defaults are a small run that visibly learns on the emu
/// device in under a minute on 2 cores (README: 28.4 s of training; A at 1/16 width, 32x32,
/// 4 synthetic classes, He init, torchvision's input normalisation); the paper's settings are
/// `--width 1 --input 224 --fc 4096 --dropout 0.5 --batch 256 --epochs 74 --init paper
/// --stats FILE` (the training set's mean RGB from `vgg stats`), with `--scale 256` or
/// `--scale 256:512`, an ImageFolder with a val/ folder for the plateau schedule, and
/// `--pre-init` from a trained A for the deeper configs (README, "Reproducing the paper").
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// VGG config: A, A-LRN, B, C, D, E.
    #[arg(long, default_value = "A")]
    pub model: String,
    /// Conv channel multiplier.
    #[arg(long, default_value_t = 0.0625, allow_negative_numbers = true)]
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
    /// Training scale S: each image's shorter side is rescaled to S before the random
    /// --input crop, or to a size drawn per image from MIN:MAX (the paper's scale jittering,
    /// 256:512) [default: --input x 8/7 (256 for 224) on an ImageFolder; --input on the
    /// synthetic set, whose images are that size].
    #[arg(long)]
    pub scale: Option<String>,
    /// Validation's scale Q (the shorter side, then the centre --input crop) [default: S, or
    /// (MIN + MAX) / 2 with jittering, the paper's pairing].
    #[arg(long)]
    pub test_scale: Option<u32>,
    /// AlexNet's PCA colour shift: the standard deviation of the per-image alphas (0 = off).
    /// The components are --stats' or else ImageNet's published ones [default: 0.1 on an
    /// ImageFolder; 0 on the synthetic set, whose classes differ in colour].
    #[arg(long, allow_negative_numbers = true)]
    pub color_shift: Option<f32>,
    /// The training set's statistics from `vgg stats`: the network subtracts its mean RGB (the
    /// paper's only preprocessing, instead of torchvision's ImageNet mean and std; the paper
    /// pairs it with --init paper, as He and Glorot expect unit-variance inputs), and the
    /// colour shift uses its principal components.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Mean RGB to subtract, 0..255 (e.g. 123.68,116.78,103.94), without std scaling;
    /// overrides --stats' mean [default: torchvision's ImageNet mean and std, which
    /// torchvision's weights expect].
    #[arg(long)]
    pub mean: Option<String>,
    /// An unreadable image ends the run with an error naming it [default: it is reported,
    /// left out (its batch is filled up with the batch's other images), and counted in the
    /// epoch line].
    #[arg(long)]
    pub strict: bool,
    /// Images a step (and a validation batch).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Train on each epoch's last short batch too, filled up to --batch with its own images (as
    /// a batch with unreadable images is) [default: dropped, so every step sees --batch
    /// different images].
    #[arg(long)]
    pub keep_last: bool,
    /// Stop after this many steps (default: --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training set (unused when --steps is given).
    #[arg(long, default_value_t = 4)]
    pub epochs: u64,
    /// Initial learning rate, the base rate the schedule divides or anneals [default: 0.01, the
    /// paper's; with --resume, the run's own]. Given with --resume, another value than the run's scales every
    /// rate of its schedule from the checkpoint on by new / old (said on stderr), as lowering
    /// the rate by hand does. A checkpoint of a build that did not record the base rate takes
    /// --lr as it (under the plateau schedule, as the current rate); under the step and cosine
    /// schedules, whose rates derive from it, such a resume needs --lr.
    // No clap default: a resume must tell a rate the user gave from one it did not, which
    // keeps the run's (a clap default rescaled every run started with another rate).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// SGD momentum (the paper's 0.9).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f32,
    /// L2 weight decay of the weights (the paper's 5e-4).
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub wd: f32,
    /// Decay the biases too [default: the weights only; the paper's L2 penalty of 5e-4 does not
    /// say whether the biases carry it, and PyTorch's SGD decays every parameter it is given].
    #[arg(long)]
    pub bias_decay: bool,
    /// Dropout probability of the hidden FC layers (0 = off; the paper: 0.5).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub dropout: f32,
    /// `plateau[:PATIENCE]` (divide by 10 after PATIENCE validations without progress, that is
    /// without a top-1 more than 0.1 point above the best so far, 1 by default, at most 3
    /// times, as the paper's 3 decays; needs a validation set), step:EPOCHS or cosine.
    #[arg(long, default_value = "plateau")]
    pub schedule: String,
    /// Weight init: paper, normal:STD, glorot, he, torchvision.
    #[arg(long, default_value = "he")]
    pub init: String,
    /// Initial loss scale (dynamic scaling halves it on overflow).
    #[arg(long, default_value_t = 1024.0, allow_negative_numbers = true)]
    pub loss_scale: f32,
    /// Seed of the initial weights, the data order and augmentation, the dropout masks and the
    /// synthetic images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// 3x3 conv plans: auto, winograd2x2, winograd4x4, direct (for GPUs short of sm_90's
    /// shared memory), wgmma (implicit GEMMs on Hopper's wgmma where Auto runs Winograd),
    /// hopper (Auto's plans with the wgmma passes measured faster on the H200, a fixed rule), or
    /// tune (time each layer's variants, Winograd and wgmma, on the device before the first
    /// step and keep the fastest of those that agree with Auto's; timing can choose differently
    /// from run to run, so checkpoints record the plans and a resume that tunes reuses them)
    /// [default: auto. On the H200, training on the wgmma convs that tune picks did not learn at
    /// batch 32 and 64, not yet explained (bench/results/2026-11-30-h200.md, run 6; bench/NOTES.md);
    /// tune, wgmma and hopper print a warning there].
    #[arg(long)]
    pub conv_algo: Option<String>,
    /// Read the loss and the overflow flag only every N steps (and at checkpoints and epoch
    /// ends); the steps between are queued with nothing read back, the loss scale's rules
    /// running on the device. Same weights and losses bit for bit; metrics, plots and the
    /// progress bar's loss cover the steps read.
    #[arg(long, default_value_t = 1)]
    pub sync_every: u64,
    /// Replay each step from a captured graph (a CUDA graph on cuda: 2 launches a step instead
    /// of ~110 for VGG-16, for small models where the GPU waits on the host). Same weights and
    /// losses bit for bit; combines with --sync-every.
    #[arg(long)]
    pub graph: bool,
    /// Data loader threads (0: on the training thread) [default: on cuda, one less than this
    /// machine's CPUs (at least 1), since decoding JPEGs for a GPU takes many cores; on emu, 1,
    /// as the emulator itself runs on every core]. Any count loads the same batches.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Write `last.safetensors` here after every epoch (and every --checkpoint-every steps),
    /// `best.safetensors` (the same checkpoint) after each epoch whose validation beats every
    /// earlier epoch's, and the plots `loss.png` and `accuracy.png`. A run holds the folder
    /// (`.vgg-train.lock`, naming its pid) until it ends: another run into it meanwhile is refused.
    /// A Ctrl-C or SIGTERM stops the run after the step under way and writes `last.safetensors`
    /// at that step (a second signal ends it at once).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Also write `last.safetensors` every N steps (needs --checkpoint-dir).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue from `<checkpoint-dir>/last.safetensors`, or from this file. Give the run's
    /// options again: another model, data (--synthetic-len, --scale, --test-scale,
    /// --color-shift, --keep-last), --seed, --batch, --momentum, --wd, --bias-decay,
    /// --schedule, --init or --loss-scale than the run's is refused; --lr may change (see
    /// there), and --steps / --epochs extend or shorten the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    /// Start from these weights: one of our checkpoints, or torchvision's (its pretrained
    /// vgg11/13/16/19 .pth as downloaded, or its state dict as .safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// With --weights: train a new last layer (classifier.6, drawn per --init for this run's
    /// classes) instead of taking the file's, which scores the file's classes: fine-tuning
    /// torchvision's 1000-class ImageNet weights to another dataset. Every other layer is the
    /// file's.
    #[arg(long)]
    pub fresh_head: bool,
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

/// [`crate::model::VggConfig::validate`], its error in the context of the command-line options
/// that set the config: `the model of --model D --input 0 --width 1 --fc 4096{rest}: invalid
/// shape: VGG input 0 is too small: ...`. The model's errors name its fields only; `vgg train`
/// and `vgg info --model` share this so that both name a bad value as the option the user typed.
/// `rest` is the other options that set it, e.g. ` --dropout 0.5, --classes 4`.
pub fn validate_model_options(model: &str, cfg: &crate::model::VggConfig, rest: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    cfg.validate().with_context(|| {
        format!("the model of --model {model} --input {} --width {} --fc {}{rest}", cfg.input, cfg.width, cfg.fc)
    })
}

/// What [`TrainArgs::checked`] parsed on the way, for the run to use without parsing again.
pub(crate) struct Checked {
    pub arch: crate::model::Arch,
    /// `--conv-algo`, if given (the default depends on the device, opened later).
    pub conv: Option<crate::model::ConvChoice>,
}

impl TrainArgs {
    /// Errors for options no run can use, checked before any data is read or device used.
    pub fn check(&self) -> anyhow::Result<()> {
        self.checked().map(|_| ())
    }

    /// [`TrainArgs::check`], returning what it parsed.
    pub(crate) fn checked(&self) -> anyhow::Result<Checked> {
        use anyhow::{bail, Context};
        let arch = crate::model::Arch::parse(&self.model)?;
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if let Some(lr) = self.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            bail!("--lr {lr}: the learning rate must be positive and finite");
        }
        // LossScaler::with's rule, repeated here to name the option and to refuse before the
        // data are read and the device opened (the scaler's error names only the value).
        if !(self.loss_scale.is_finite() && self.loss_scale > 0.0) {
            bail!("--loss-scale {}: the initial loss scale must be positive and finite", self.loss_scale);
        }
        let optim = crate::model::OptimConfig { momentum: self.momentum, weight_decay: self.wd, ..Default::default() };
        if let Err(e) = optim.validate() {
            bail!("--momentum {} / --wd {}: {e}", self.momentum, self.wd);
        }
        if self.data == "synthetic" && self.synthetic_len > crate::data::MAX_SYNTHETIC_LEN {
            bail!(
                "--synthetic-len {}: at most {} images (each costs an index of the epoch's order up front)",
                self.synthetic_len,
                crate::data::MAX_SYNTHETIC_LEN
            );
        }
        if self.data == "synthetic" && self.classes < 2 {
            bail!("--classes {}: training needs at least 2 classes", self.classes);
        }
        // The network's knobs before any data is read, with the class count where it is known
        // (the synthetic set's --classes; a folder's come with its data, and are checked again
        // then): an ImageFolder is not scanned for a model that cannot be, --input 0 is named
        // as the network's input instead of failing the crop's check as "crop size 0", and a
        // --classes typo such as 1000000000000 is refused before the synthetic set allocates a
        // terabyte for it. The model's errors name its fields only: the context names ours.
        let synthetic = self.data == "synthetic";
        let classes = if synthetic { self.classes } else { 2 };
        let cfg = crate::model::VggConfig {
            dropout: self.dropout,
            ..crate::model::VggConfig::small(arch, self.width, self.input, self.fc, classes)
        };
        let classes = if synthetic { format!(", --classes {}", self.classes) } else { String::new() };
        validate_model_options(&self.model, &cfg, &format!(" --dropout {}{classes}", self.dropout))?;
        if self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0) {
            bail!("--steps 0 / --epochs 0: nothing to train");
        }
        if self.sync_every == 0 {
            bail!("--sync-every must be at least 1 (1 reads the loss every step)");
        }
        if self.checkpoint_every == Some(0) {
            bail!("--checkpoint-every must be at least 1");
        }
        // Checkpoints go to --checkpoint-dir only: without it the run saved nothing and said
        // nothing, and a user counting on them lost the run.
        if let (Some(e), None) = (self.checkpoint_every, &self.checkpoint_dir) {
            bail!("--checkpoint-every {e} needs --checkpoint-dir (where the checkpoints go)");
        }
        if self.resume.is_some() && (self.weights.is_some() || self.pre_init.is_some()) {
            bail!("--resume takes every weight from the checkpoint; --weights and --pre-init are for a new run");
        }
        if self.fresh_head && self.weights.is_none() {
            bail!("--fresh-head replaces the last layer of the --weights file; it needs --weights");
        }
        if self.weights.is_some() && self.pre_init.is_some() {
            bail!("--pre-init and --weights both set the initial weights; pass one");
        }
        // Here, not where the plans are made: a typo is then reported before the data are read
        // or the device is opened (and where the device is unusable); the run keeps the parse.
        let conv = self.conv_algo.as_deref().map(crate::model::ConvChoice::parse).transpose().context("--conv-algo")?;
        Ok(Checked { arch, conv })
    }
}
