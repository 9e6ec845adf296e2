//! `vgg`: the command line of vgg-cuda.
//!   vgg info [--kernels] [--json]           driver, GPUs, NVRTC, embedded kernels
//!   vgg info --model D [--batch 64,128]     a VGG config's layers, parameters, FLOPs, memory plan
//!   vgg selftest [--device cuda|emu]       every kernel against the reference
//!   vgg bench conv [--device cuda|emu] ...  our 3x3 convs vs cuDNN on VGG-16's layers
//!   vgg bench gemm [--device cuda|emu] ...  our FC GEMMs vs cuBLAS, the SGD step's GB/s
//!   vgg bench train [--device cuda|emu] ... whole training steps: images/s, TFLOP/s, memory
//!   vgg bench data DIR | --synthetic        decode + augmentation images/s, where the time goes
//!   vgg train [--device cuda|emu] ...       train a VGG (checkpoints, metrics, plots)
//!   vgg prep SRC OUT                        pre-resize an ImageFolder into raw-RGB shard files
//!   vgg stats DIR                          the training set's mean RGB and colour PCA (JSON)
//!   vgg predict --weights W IMAGE...       top-k classes of images
//!   vgg eval --weights W --data DIR|synthetic  top-1/top-5 error (multi-scale, multi-crop, ensembles)

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod copy;
mod data;
mod info;

use bench::{bench_conv_cmd, bench_gemm_cmd, bench_train_cmd, BenchConvArgs, BenchGemmArgs, BenchTrainArgs};
use data::{bench_data_cmd, prep_cmd, stats_cmd, BenchDataArgs, PrepArgs, StatsArgs};
use info::{info, model_info, selftest_cmd, weights_info};

#[derive(Parser)]
#[command(name = "vgg", version, about = "VGG on hand-tuned CUDA kernels (GPU, or the CPU emulator)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The training set's mean RGB, standard deviation and colour PCA (AlexNet's lighting
    /// augmentation) over a sample of images, as JSON (read back by training).
    Stats(StatsArgs),
    /// Pre-resizes an ImageFolder (shorter side to --max-side, never upscaled) and packs it
    /// into shard files of raw RGB (or JPEG) plus index.json: loads without decoding. OUT works
    /// wherever an ImageFolder does (`vgg train --data`, `vgg eval --data`, `vgg stats`,
    /// `vgg bench data`).
    Prep(PrepArgs),
    /// Driver, GPUs, the NVRTC the kernels were built with, and the embedded kernels; with
    /// --model, a VGG config's layers, parameters, FLOPs and training memory plan instead.
    Info {
        /// Also list every kernel's registers, shared memory, stack and spills.
        #[arg(long, conflicts_with_all = ["model", "weights"])]
        kernels: bool,
        /// Describe a weights file instead (ours, torchvision's .pth or a safetensors state
        /// dict): its format, tensors, the VGG config it records or implies, class names, and a
        /// checkpoint's place in its run.
        #[arg(long, conflicts_with = "model")]
        weights: Option<std::path::PathBuf>,
        /// Print JSON instead of text (with --model: the layers, totals and memory plans).
        #[arg(long)]
        json: bool,
        /// Describe a VGG config instead (A, A-LRN, B, C, D, E): layers, parameters, FLOPs.
        #[arg(long)]
        model: Option<String>,
        /// With --model: input side in pixels.
        #[arg(long, default_value_t = 224, requires = "model")]
        input: usize,
        /// With --model: number of classes.
        #[arg(long, default_value_t = 1000, requires = "model")]
        classes: usize,
        /// With --model: conv channel multiplier.
        #[arg(long, default_value_t = 1.0, requires = "model", allow_negative_numbers = true)]
        width: f32,
        /// With --model: width of the hidden FC layers.
        #[arg(long, default_value_t = 4096, requires = "model")]
        fc: usize,
        /// With --model: also the device memory plan of a training step at these batch sizes
        /// (comma-separated), computed without a device.
        #[arg(long, requires = "model")]
        batch: Option<String>,
    },
    /// Runs every kernel against the f64 reference; exits non-zero on any failure.
    Selftest {
        /// cuda, cuda:N or emu.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Only this check, e.g. relu, conv_wino4x4, sgd (an unknown name lists them all).
        #[arg(long)]
        only: Option<String>,
        /// Emulator schedule: index, reverse, random[:seed].
        #[allow(rustdoc::broken_intra_doc_links)] // `[:seed]` is option syntax in --help
        #[arg(long)]
        schedule: Option<String>,
        /// Also write the table as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Trains a VGG (small on emu: `--device emu`), with checkpoints and a metrics log.
    Train(Box<vgg_cuda::train::TrainArgs>),
    /// Top-k classes of images under a checkpoint or an ensemble, by `vgg eval`'s views (by
    /// default the centre crop at the checkpoint's test scale Q), softmax posteriors averaged.
    Predict(vgg_cuda::eval::PredictArgs),
    /// Top-1 / top-5 error of a checkpoint (or an ensemble) on an ImageFolder or `vgg train`'s
    /// synthetic set: single or multi-scale, centre crop, multi-crop or dense, flips. Demo:
    /// `vgg train --device emu --checkpoint-dir ck` then
    /// `vgg eval --weights ck/last.safetensors --data synthetic --device emu`.
    Eval(vgg_cuda::eval::EvalArgs),
    /// Benchmarks, timed with device events against cuDNN / cuBLAS / PyTorch's conditions.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The data pipeline on the CPU: decode + augmentation images/s on one core and on all
    /// workers, and how one core's time splits between decode, resize and crop/flip/colour.
    Data(BenchDataArgs),
    /// VGG-16's 3x3 convolutions (fprop, dgrad, wgrad): ours vs cuDNN's fastest algorithm, on
    /// the same stream and inputs, with the agreement of the outputs. Exits non-zero when a
    /// pass fails or disagrees.
    Conv(BenchConvArgs),
    /// VGG-16's classifier GEMMs (fc6, fc7, fc8; fwd, bwd_data, bwd_weight) at several
    /// batches: ours vs cuBLAS (cublasGemmEx, fp16 in, fp32 compute) on the same stream and
    /// inputs, with the agreement of the outputs; then the SGD step over VGG-16's parameters
    /// in GB/s against a device-to-device copy. Exits non-zero when a pass fails or disagrees.
    Gemm(BenchGemmArgs),
    /// Global -> shared copies in the forms our tensor-core kernels use or could (cp.async with
    /// and without a src-size operand, through L1 or not, ld.global + st.shared, in two lane
    /// patterns; the TMA engine's bulk and 2-D tensor copies), from L2 and from device memory:
    /// GB/s each, every copied tile checked. Exits non-zero when a row fails or copies wrong
    /// bytes.
    Copy(copy::BenchCopyArgs),
    /// Whole training steps (forward, loss, backward, SGD) of a VGG on device-resident
    /// synthetic data: images/s, TFLOP/s and device memory. scripts/torch_baseline.py measures
    /// torchvision under the same conditions.
    Train(BenchTrainArgs),
}

fn main() {
    // Rust ignores SIGPIPE, so `vgg info | head` made println! panic once head exited. Restore
    // the default: a closed pipe ends the process quietly, as it does other Unix tools.
    // SAFETY: set before any other thread exists; SIG_DFL runs no handler code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse_from(negatives_as_values(std::env::args_os()));
    if let Err(e) = run(cli) {
        // Folders made for outputs a failed command never wrote go again (kept if not empty).
        vgg_cuda::atomic::remove_created_dirs();
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `--opt -4` becomes `--opt=-4` wherever the word after a long option starts with `-` and a
/// digit or `.`: clap reads such a word as a flag, not as the option's value (even with
/// `allow_negative_numbers`, which covers `-4` but not `-1e-3` or `-1,64`), and said
/// "unexpected argument '-4' found", naming neither the option nor what was wrong. Joined, the
/// option's own check names the bad value (`--batch -4`, `--lr -1e-3`, `--mean -1,2,3`). No
/// option or flag of ours starts with a digit, so no flag is lost; a flag followed by such a
/// word becomes an error naming the flag, where it was an unknown `-4` before. Words after `--`
/// stay as they are.
fn negatives_as_values(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut rest = false;
    for a in args {
        let numeric = a.to_str().is_some_and(|v| {
            let mut c = v.chars();
            c.next() == Some('-') && c.next().is_some_and(|d| d.is_ascii_digit() || d == '.')
        });
        let after_option =
            out.last().and_then(|o| o.to_str()).is_some_and(|o| o.starts_with("--") && o.len() > 2 && !o.contains('='));
        if !rest && numeric && after_option {
            let mut joined = out.pop().unwrap();
            joined.push("=");
            joined.push(&a);
            out.push(joined);
            continue;
        }
        rest |= a == "--";
        out.push(a);
    }
    out
}

/// `vgg train`, which a first Ctrl-C or SIGTERM stops after the step under way, saving its
/// checkpoint there; the process then ends with the status the signal would have given it.
fn train_cmd(args: &vgg_cuda::train::TrainArgs) -> Result<()> {
    use vgg_cuda::train::interrupt;
    interrupt::stop_on_signals().context("installing the Ctrl-C handler")?;
    let summary = vgg_cuda::train::run(args)?;
    if let (true, Some(sig)) = (summary.stopped, interrupt::signal()) {
        std::process::exit(128 + sig);
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { model: Some(m), input, classes, width, fc, batch, json, .. } => {
            model_info(&m, input, classes, width, fc, batch.as_deref(), json)
        }
        Cmd::Info { weights: Some(w), json, .. } => weights_info(&w, json),
        Cmd::Info { kernels, json, .. } => info(kernels, json),
        Cmd::Selftest { device, only, schedule, json } => {
            selftest_cmd(&device, only.as_deref(), schedule.as_deref(), json)
        }
        Cmd::Bench { what: BenchCmd::Conv(args) } => bench_conv_cmd(args),
        Cmd::Bench { what: BenchCmd::Data(args) } => bench_data_cmd(args),
        Cmd::Stats(args) => stats_cmd(args),
        Cmd::Prep(args) => prep_cmd(args),
        Cmd::Train(args) => train_cmd(&args),
        Cmd::Predict(args) => vgg_cuda::eval::predict(&args).map(|_| ()),
        Cmd::Eval(args) => vgg_cuda::eval::eval(&args).map(|_| ()),
        Cmd::Bench { what: BenchCmd::Gemm(args) } => bench_gemm_cmd(args),
        Cmd::Bench { what: BenchCmd::Copy(args) } => copy::bench_copy_cmd(args),
        Cmd::Bench { what: BenchCmd::Train(args) } => bench_train_cmd(args),
    }
}
