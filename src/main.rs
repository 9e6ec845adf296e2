//! `vgg`: the command line of vgg-cuda.
//!   vgg info [--kernels] [--json]           driver, GPUs, NVRTC, embedded kernels
//!   vgg selftest [--device cuda|emu]       every kernel against the reference
//!   vgg bench conv [--device cuda|emu] ...  our 3x3 convs vs cuDNN on VGG-16's layers
//!   vgg bench gemm [--device cuda|emu] ...  our FC GEMMs vs cuBLAS, the SGD step's GB/s
//!   vgg bench data DIR | --synthetic        decode + augmentation images/s, where the time goes
//!   vgg prep SRC OUT                        pre-resize an ImageFolder into raw-RGB shard files
//!   vgg stats DIR                          the training set's mean RGB and colour PCA (JSON)
//!   vgg predict --weights W IMAGE...       top-k classes of images
//!   vgg eval --weights W --data DIR|synthetic  top-1/top-5 error (multi-scale, multi-crop, ensembles)

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vgg_cuda::bench::conv::{select_layers, Algo, ConvBench, ConvBenchConfig, ConvRow, Pass};
use vgg_cuda::bench::gemm::{self as bench_gemm, GemmBench, GemmBenchConfig, GemmRow};
use vgg_cuda::device::{cuda_report, kernels};
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, WinoTiling};
use vgg_cuda::{atomic, selftest, Device, Schedule};

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
    /// into shard files of raw RGB (or JPEG) plus index.json: loads without decoding. The
    /// OUT_DIR works wherever an ImageFolder does (`vgg train --data`, `vgg bench data`).
    Prep(PrepArgs),
    /// Driver, GPUs, the NVRTC the kernels were built with, and the embedded kernels.
    Info {
        /// Also list every kernel's registers, shared memory, stack and spills.
        #[arg(long)]
        kernels: bool,
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
        #[arg(long, default_value_t = 1.0, requires = "model")]
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
    /// Top-k classes of images under a checkpoint (centre crop at test scale Q, softmax).
    Predict(vgg_cuda::eval::PredictArgs),
    /// Top-1 / top-5 error of a checkpoint (or an ensemble) on an ImageFolder or `vgg train`'s
    /// synthetic set: single or multi-scale, centre crop or multi-crop, flips. Demo:
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
    /// Whole training steps (forward, loss, backward, SGD) of a VGG on device-resident
    /// synthetic data: images/s, TFLOP/s and device memory. scripts/torch_baseline.py measures
    /// torchvision under the same conditions.
    Train(BenchTrainArgs),
}

#[derive(clap::Args)]
struct BenchTrainArgs {
    /// cuda, cuda:N or emu (emu: a tiny network at 32x32).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// A, A-LRN, B, C, D (VGG-16) or E (VGG-19).
    #[arg(long, default_value = "D")]
    model: String,
    /// Comma-separated batch sizes [default: 64 on a GPU, 4 on emu].
    #[arg(long)]
    batch: Option<String>,
    /// Timed steps [default: 20 on a GPU, 2 on emu].
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed warm-up steps [default: 5 on a GPU, 1 on emu].
    #[arg(long)]
    warmup: Option<usize>,
    /// 3x3 conv plans: auto, winograd2x2, winograd4x4, direct (for GPUs short of sm_90's
    /// shared memory), wgmma (implicit GEMM on Hopper's wgmma where Auto runs Winograd), or
    /// tune (time each layer's variants, Winograd and wgmma, on the device first, untimed,
    /// and keep the fastest).
    #[arg(long, default_value = "auto")]
    conv_algo: String,
    /// Queue the timed steps with nothing read back (the loss scale kept on the device) and
    /// time them together, instead of one step at a time.
    #[arg(long)]
    queued: bool,
    /// As --queued, each step replayed from one captured graph (a CUDA graph on cuda): one
    /// launch a step instead of ~100. Pays where the GPU would wait for the host's launches:
    /// small inputs and batches.
    #[arg(long)]
    graph: bool,
    /// After the timed steps, profile one more step launch by launch (device events around
    /// each kernel) and print where its time goes: by pass and layer kind, by kernel, by layer.
    #[arg(long)]
    profile: bool,
    /// Input pixels a side [default: 224 on a GPU, 32 on emu] (at least 32).
    #[arg(long)]
    input: Option<usize>,
    /// Conv channel multiplier [default: 1 on a GPU, 1/16 on emu].
    #[arg(long)]
    width: Option<f32>,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct BenchGemmArgs {
    /// cuda, cuda:N or emu (emu: a tiny run, shapes shrunk, no cuBLAS).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Comma-separated batches [default: 64,128,256 on a GPU, 4 on emu].
    #[arg(long)]
    batch: Option<String>,
    /// `all` or a comma-separated list of fc6 (25088->4096), fc7 (4096->4096), fc8 (4096->1000).
    #[arg(long, default_value = "all")]
    shapes: String,
    /// Comma-separated passes: fwd, bwd_data, bwd_weight (or all).
    #[arg(long, default_value = "all")]
    passes: String,
    /// Timed samples per measurement [default: enough for ~20 ms, at least 10; 3 on emu].
    #[arg(long)]
    repeats: Option<usize>,
    /// Do not load cuBLAS (our numbers alone, checked against our simple kernel).
    #[arg(long)]
    no_cublas: bool,
    /// Skip the bandwidth section (device-to-device copy and SGD step).
    #[arg(long)]
    no_bandwidth: bool,
    /// Run our products on this tile (the planner's split count) instead of the planner's
    /// choice: w128x256 (Hopper's wgmma; kernels/gemm_wgmma.cu).
    #[arg(long)]
    tile: Option<String>,
    /// Write the report as JSON to this file (rewritten after every row, so a killed run
    /// leaves its rows so far).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct BenchConvArgs {
    /// cuda, cuda:N or emu (emu: a tiny run, layers shrunk 16x, no cuDNN).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Batch size [default: 64 on a GPU, 1 on emu].
    #[arg(long)]
    batch: Option<usize>,
    /// `all` or a comma-separated list of layers, e.g. conv1_2,conv3_1.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Comma-separated passes: fprop, dgrad, wgrad (or all).
    #[arg(long, default_value = "fprop,dgrad,wgrad")]
    passes: String,
    /// Our algorithm: auto, direct, winograd2x2, winograd4x4, igemm, wgmma (implicit GEMM on
    /// Hopper's wgmma, all three passes).
    #[arg(long, default_value = "auto")]
    algo: String,
    /// How Winograd F(2x2) groups its tiles, and which tile the wgmma fprop / dgrad run (flat: 128 pixels; auto, region: the halo tile): auto, flat, region.
    #[arg(long, default_value = "auto")]
    wino_tiling: String,
    /// Timed samples per measurement [default: enough for ~20 ms, at least 10; 3 on emu].
    #[arg(long)]
    repeats: Option<usize>,
    /// Do not load cuDNN (our numbers alone, checked against our direct kernel).
    #[arg(long)]
    no_cudnn: bool,
    /// Write the report as JSON to this file (rewritten after every row, so a killed run
    /// leaves its rows so far).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Draw a PNG bar chart of the TFLOP/s to this file (.png; a failed chart fails the
    /// command once the rest is written).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

fn main() {
    // Rust ignores SIGPIPE, so `vgg info | head` made println! panic once head exited. Restore
    // the default: a closed pipe ends the process quietly, as it does other Unix tools.
    // SAFETY: set before any other thread exists; SIG_DFL runs no handler code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { model: Some(m), input, classes, width, fc, batch, json, .. } => {
            model_info(&m, input, classes, width, fc, batch.as_deref(), json)
        }
        Cmd::Info { kernels, json, .. } => info(kernels, json),
        Cmd::Selftest { device, only, schedule, json } => {
            selftest_cmd(&device, only.as_deref(), schedule.as_deref(), json)
        }
        Cmd::Bench { what: BenchCmd::Conv(args) } => bench_conv_cmd(args),
        Cmd::Bench { what: BenchCmd::Data(args) } => bench_data_cmd(args),
        Cmd::Stats(args) => stats_cmd(args),
        Cmd::Prep(args) => prep_cmd(args),
        Cmd::Train(args) => vgg_cuda::train::run(&args).map(|_| ()),
        Cmd::Predict(args) => vgg_cuda::eval::predict(&args).map(|_| ()),
        Cmd::Eval(args) => vgg_cuda::eval::eval(&args).map(|_| ()),
        Cmd::Bench { what: BenchCmd::Gemm(args) } => bench_gemm_cmd(args),
        Cmd::Bench { what: BenchCmd::Train(args) } => bench_train_cmd(args),
    }
}

fn info(show_kernels: bool, json: bool) -> Result<()> {
    let rep = cuda_report();
    if json {
        let mods: Vec<_> = kernels::MODULES
            .iter()
            .map(|m| {
                serde_json::json!({"module": m.name, "cubin_archs": m.cubins.iter().map(|c| c.0).collect::<Vec<_>>(),
                "ptx_arch": m.ptx.map(|p| p.0), "kernels": m.kernels})
            })
            .collect();
        let v = serde_json::json!({"cuda": rep, "nvrtc": kernels::NVRTC_VERSION, "modules": mods});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("vgg-cuda {}", env!("CARGO_PKG_VERSION"));
    match rep.driver_version {
        Some((a, b)) => println!("driver:   CUDA {a}.{b}"),
        None => println!("driver:   none"),
    }
    for g in &rep.gpus {
        println!(
            "gpu {}:    {} (sm_{}{}, {} SMs, {:.1} GiB, {} KiB shared memory a block)",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.multiprocessors,
            g.memory_bytes as f64 / (1u64 << 30) as f64,
            g.max_shared_per_block / 1024
        );
        // What the Winograd main loops ask a block, from the plans themselves (any problem:
        // their tiles are fixed); the FC GEMM's tiles take 108-162 KiB.
        let need = |algo| {
            let p = vgg_cuda::problem::ConvProblem::new(1, 8, 8, 64, 64);
            Conv3x3::new(p, algo).map_or(0, |c| c.shared_bytes(ConvPass::Fprop))
        };
        let (f2, f4) = (need(ConvAlgo::Winograd2x2), need(ConvAlgo::Winograd4x4));
        let kib = |b: usize| b as f64 / 1024.0;
        if g.max_shared_per_block < f2 {
            println!(
                "          too little shared memory for the Winograd convs (F(2x2) needs {:.1} KiB a block) and \
                 the FC GEMM's tensor-core tiles (108-162 KiB): models run those passes on the direct conv \
                 and the simple GEMM (slow; the tiles are sized for sm_90)",
                kib(f2)
            );
        } else if g.max_shared_per_block < f4 {
            println!(
                "          F(4x4) needs {:.1} KiB a block and does not run here (tune skips it); F(2x2) and the rest do",
                kib(f4)
            );
        }
    }
    match &rep.unusable_because {
        Some(why) => println!("cuda:     unusable: {why}"),
        None => println!("cuda:     usable (GPU 0)"),
    }
    println!("emu:      available (CPU emulator, {} threads)", rayon::current_num_threads());
    match kernels::NVRTC_VERSION {
        Some((a, b)) => {
            let archs: Vec<String> = kernels::MODULES
                .first()
                // sm_90 is built as sm_90a (build/nvrtc.rs: Hopper's wgmma).
                .map(|m| m.cubins.iter().map(|c| format!("sm_{}{}", c.0, if c.0 == 90 { "a" } else { "" })).collect())
                .unwrap_or_default();
            let ptx =
                kernels::MODULES.first().and_then(|m| m.ptx).map(|p| format!("compute_{}", p.0)).unwrap_or_default();
            println!(
                "kernels:  {} modules built by NVRTC {a}.{b}: cubin {} + PTX {ptx}",
                kernels::MODULES.len(),
                archs.join(", ")
            );
        }
        None => {
            println!("kernels:  no GPU code embedded (NVRTC missing at build time: run scripts/setup-cuda, rebuild)")
        }
    }
    if show_kernels {
        println!(
            "\n{:<16} {:<28} {:>5} {:>10} {:>7} {:>12}",
            "module", "kernel", "regs", "smem (B)", "stack", "spills (B)"
        );
        for (m, k) in kernels::all_resources() {
            println!(
                "{:<16} {:<28} {:>5} {:>10} {:>7} {:>12}",
                m,
                k.name,
                k.registers,
                k.shared_bytes,
                k.stack_bytes,
                format!("{}/{}", k.spill_store_bytes, k.spill_load_bytes)
            );
        }
    }
    Ok(())
}

fn selftest_cmd(
    device: &str,
    only: Option<&str>,
    schedule: Option<&str>,
    json: Option<std::path::PathBuf>,
) -> Result<()> {
    if let Some(o) = only {
        if !selftest::CHECKS.iter().any(|c| c.name == o) {
            let names: Vec<_> = selftest::CHECKS.iter().map(|c| c.name).collect();
            bail!("unknown check `{o}` (checks: {})", names.join(", "));
        }
    }
    if let Some(path) = &json {
        atomic::check_writable(path).context("--json")?;
    }
    let dev = Device::by_name(device).with_context(|| format!("selftest on `{device}`"))?;
    if let Some(s) = schedule {
        dev.set_schedule(
            Schedule::parse(s).with_context(|| format!("unknown schedule `{s}` (index, reverse, random[:seed])"))?,
        );
    }
    println!("selftest on {}", dev.name());
    let t0 = std::time::Instant::now();
    let rows = selftest::run(&dev, only);
    println!("{:<24} {:<22} {:>10} {:>10}  {:<36} result", "kernel", "shape", "max abs", "rel L2", "bound");
    for r in &rows {
        println!(
            "{:<24} {:<22} {:>10.3e} {:>10.3e}  {:<36} {}",
            r.kernel,
            r.shape,
            r.max_abs,
            r.rel_l2,
            r.bound,
            match (r.pass, r.bound == selftest::NOT_RUN) {
                (true, true) => "not run",
                (true, false) => "pass",
                (false, _) => "FAIL",
            }
        );
        match &r.detail {
            Some(d) if !r.pass || r.bound == selftest::NOT_RUN => println!("    {d}"),
            _ => {}
        }
    }
    if let Some(path) = json {
        atomic::write(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    let not_run = rows.iter().filter(|r| r.bound == selftest::NOT_RUN).count();
    let not_run = if not_run > 0 { format!(" ({not_run} not run on this device)") } else { String::new() };
    println!(
        "{} checks{not_run}, {} failed, {:.2} s on {}",
        rows.len(),
        failed,
        t0.elapsed().as_secs_f64(),
        dev.name()
    );
    if failed > 0 {
        bail!("{failed} selftest checks failed on {}", dev.name());
    }
    Ok(())
}

fn bench_conv_cmd(a: BenchConvArgs) -> Result<()> {
    // Arguments first, so a typo is reported even where the device is unusable.
    let passes = Pass::parse_list(&a.passes)?;
    let algo = Algo::parse(&a.algo)?;
    let wino_tiling = match a.wino_tiling.as_str() {
        "auto" => WinoTiling::Auto,
        "flat" => WinoTiling::Flat,
        "region" => WinoTiling::Region,
        other => bail!("unknown --wino-tiling `{other}` (auto, flat, region)"),
    };
    let emu = a.device == "emu";
    let layers = select_layers(emu, a.batch, &a.layers)?;
    if a.repeats == Some(0) {
        bail!("--repeats must be at least 1");
    }
    if a.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    if let Some(path) = &a.plot {
        if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            bail!("--plot {}: the chart is a PNG: give a path ending in .png", path.display());
        }
        atomic::check_writable(path).context("--plot")?;
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench conv on `{}`", a.device))?;
    let mut cfg = ConvBenchConfig::new(&dev, a.batch);
    cfg.layers = layers;
    cfg.passes = passes;
    cfg.algo = algo;
    cfg.wino_tiling = wino_tiling;
    cfg.cudnn = !a.no_cudnn;
    if a.repeats.is_some() {
        cfg.timing.samples = a.repeats;
    }
    let t0 = std::time::Instant::now();
    let bench = ConvBench::new(&dev, &cfg);
    println!(
        "bench conv on {}: {} layers x {} passes, algo {}, winograd tiling {}, {}",
        dev.name(),
        cfg.layers.len(),
        cfg.passes.len(),
        algo.name(),
        a.wino_tiling,
        match (bench.cudnn_version(), bench.cudnn_note()) {
            (Some(v), _) => format!("cuDNN {v} (fastest of cudnnFind*AlgorithmEx)"),
            (None, Some(note)) => note.to_string(),
            (None, None) => "no cuDNN".to_string(),
        }
    );
    println!("{}", ConvRow::table_header());
    let mut done: Vec<ConvRow> = vec![];
    let mut json_error = None;
    let report = bench.run(|row| {
        println!("{}", row.table_line());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        done.push(row.clone());
        if let Some(path) = &a.json {
            // Partial results survive a run that is killed part-way.
            let partial = bench.report(done.clone());
            if let Err(e) = serde_json::to_vec_pretty(&partial)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(atomic::write(path, &b)?))
            {
                json_error.get_or_insert(e);
            }
        }
    });
    println!("{} ({:.1} s)", report.summary.line(), t0.elapsed().as_secs_f64());
    if let Some(path) = &a.json {
        atomic::write(path, &serde_json::to_vec_pretty(&report)?)?;
        if let Some(e) = json_error {
            eprintln!("warning: a partial JSON write failed earlier: {e:#}");
        }
    }
    // A failed plot fails the command as a failed JSON write does, once the rest is written.
    let mut plot_error = None;
    if let Some(path) = &a.plot {
        match vgg_cuda::bench::plot::conv_chart(&report, path) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => plot_error = Some(anyhow::anyhow!("--plot: no chart written: {e}")),
        }
    }
    let s = &report.summary;
    let failed = if s.ours_measured == 0 {
        Some(format!("bench conv on {}: nothing could be measured", dev.name()))
    } else if s.failed > 0 {
        Some(format!("bench conv on {}: {} of {} rows failed or disagree", dev.name(), s.failed, s.rows))
    } else {
        None
    };
    match (failed, plot_error) {
        (Some(f), Some(p)) => bail!("{f}; and {p:#}"),
        (Some(f), None) => bail!("{f}"),
        (None, Some(p)) => Err(p),
        (None, None) => Ok(()),
    }
}

fn bench_gemm_cmd(a: BenchGemmArgs) -> Result<()> {
    // Arguments first, so a typo is reported even where the device is unusable.
    let passes = bench_gemm::Pass::parse_list(&a.passes)?;
    let emu = a.device == "emu";
    let layers = bench_gemm::select_layers(emu, &a.shapes)?;
    let batches = match &a.batch {
        Some(b) => bench_gemm::parse_batches(b)?,
        None => bench_gemm::default_batches(emu),
    };
    if a.repeats == Some(0) {
        bail!("--repeats must be at least 1");
    }
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench gemm on `{}`", a.device))?;
    let mut cfg = GemmBenchConfig::new(&dev);
    cfg.layers = layers;
    cfg.batches = batches;
    cfg.passes = passes;
    cfg.cublas = !a.no_cublas;
    cfg.bandwidth = !a.no_bandwidth;
    cfg.tile = match a.tile.as_deref() {
        None => None,
        Some("w128x256") => Some(vgg_cuda::ops::gemm::Tile::W128x256),
        Some(t) => bail!("--tile: unknown tile `{t}` (tiles: w128x256)"),
    };
    if a.repeats.is_some() {
        cfg.timing.samples = a.repeats;
    }
    let t0 = std::time::Instant::now();
    let bench = GemmBench::new(&dev, &cfg);
    let batches: Vec<String> = cfg.batches.iter().map(|b| b.to_string()).collect();
    println!(
        "bench gemm on {}: {} shapes x batch {} x {} passes, {}",
        dev.name(),
        cfg.layers.len(),
        batches.join(","),
        cfg.passes.len(),
        match (bench.cublas_version(), bench.cublas_note()) {
            (Some(v), _) => format!("cuBLAS {v} (cublasGemmEx, fp32 compute, default algorithm)"),
            (None, Some(note)) => note.to_string(),
            (None, None) => "no cuBLAS".to_string(),
        }
    );
    println!("{}", GemmRow::table_header());
    let mut done: Vec<GemmRow> = vec![];
    let mut done_bw = vec![];
    let mut json_error = None;
    let mut save = |rows: &[GemmRow], bw: &[bench_gemm::BandwidthRow]| {
        if let Some(path) = &a.json {
            // Partial results survive a run that is killed part-way.
            let partial = bench.report(rows.to_vec(), bw.to_vec());
            if let Err(e) = serde_json::to_vec_pretty(&partial)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(atomic::write(path, &b)?))
            {
                json_error.get_or_insert(e);
            }
        }
    };
    use std::io::Write;
    let rows = bench.run_gemm(|row| {
        println!("{}", row.table_line());
        let _ = std::io::stdout().flush();
        done.push(row.clone());
        save(&done, &[]);
    });
    println!("{} ({:.1} s)", bench_gemm::GemmSummary::of(&rows).line(), t0.elapsed().as_secs_f64());
    let bw = bench.run_bandwidth(|b| {
        println!("{}", b.line());
        let _ = std::io::stdout().flush();
        done_bw.push(b.clone());
        save(&rows, &done_bw);
    });
    let report = bench.report(rows, bw);
    if let Some(path) = &a.json {
        atomic::write(path, &serde_json::to_vec_pretty(&report)?)?;
        if let Some(e) = json_error {
            eprintln!("warning: a partial JSON write failed earlier: {e:#}");
        }
    }
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    let s = &report.summary;
    if s.ours_measured == 0 && !report.rows.is_empty() {
        bail!("bench gemm on {}: nothing could be measured", dev.name());
    }
    let bw_failed: Vec<&str> = report.bandwidth.iter().filter(|b| b.failed()).map(|b| b.name.as_str()).collect();
    if s.failed > 0 || !bw_failed.is_empty() {
        bail!(
            "bench gemm on {}: {} of {} rows failed or disagree{}",
            dev.name(),
            s.failed,
            s.rows,
            if bw_failed.is_empty() { String::new() } else { format!("; failed: {}", bw_failed.join(", ")) }
        );
    }
    Ok(())
}

/// `vgg bench train`: the rows of every batch size; the JSON is rewritten after each (through
/// a temporary file and a rename, so a killed run leaves the rows so far).
fn bench_train_cmd(a: BenchTrainArgs) -> Result<()> {
    use vgg_cuda::bench::train::{run, TrainBenchConfig};
    let arch = vgg_cuda::model::Arch::parse(&a.model)?;
    let batches: Vec<Option<usize>> = match &a.batch {
        None => vec![None],
        Some(list) => list
            .split(',')
            .map(|b| match b.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(anyhow::anyhow!("--batch: `{b}` is not a positive batch size")),
            })
            .collect::<Result<_>>()?,
    };
    if a.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    let conv = vgg_cuda::model::ConvChoice::parse(&a.conv_algo).context("--conv-algo")?;
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench train on `{}`", a.device))?;
    println!(
        "bench train on {}: VGG {}, device-resident synthetic data, conv plans: {}, {}",
        dev.name(),
        arch.name(),
        a.conv_algo,
        match (a.graph, a.queued) {
            (true, _) => "steps replayed from a captured graph (no reads), timed together",
            (false, true) => "steps queued (no reads), timed together",
            _ => "steps timed one by one",
        }
    );
    println!(
        "{:<14} {:>5} {:>10} {:>10} {:>8} {:>10} {:>12}  loss first -> last, skipped",
        "model", "batch", "ms/step", "img/s", "TFLOP/s", "model GiB", "reserved GiB"
    );
    let mut rows = vec![];
    for b in batches {
        let mut cfg = TrainBenchConfig::for_device(&dev, arch, b);
        cfg.steps = a.steps.unwrap_or(cfg.steps);
        cfg.warmup = a.warmup.unwrap_or(cfg.warmup);
        cfg.conv = conv;
        cfg.queued = a.queued;
        cfg.graph = a.graph;
        cfg.profile = a.profile;
        cfg.model.input = a.input.unwrap_or(cfg.model.input);
        cfg.model.width = a.width.unwrap_or(cfg.model.width);
        cfg.model.validate().context("--input / --width")?;
        let r = run(&dev, &cfg).with_context(|| format!("training steps at batch {}", cfg.batch))?;
        let gib = |x: usize| x as f64 / (1u64 << 30) as f64;
        println!(
            "{:<14} {:>5} {:>10.2} {:>10.1} {:>8.1} {:>10.2} {:>12}  {:.3} -> {:.3}, {}",
            r.model,
            r.batch,
            r.median_step_ms,
            r.images_per_s,
            r.tflops,
            gib(r.model_bytes),
            r.reserved_bytes.map(|x| format!("{:.2}", gib(x))).unwrap_or_else(|| "-".into()),
            r.first_loss,
            r.last_loss,
            r.skipped_steps
        );
        println!(
            "  host: {:.0} launches a step, forward + backward queued in {:.2} ms (median) of the {:.2} ms step",
            r.launches_per_step, r.median_enqueue_ms, r.median_step_ms
        );
        if conv != vgg_cuda::model::ConvChoice::Auto {
            println!("  conv layers (fprop / dgrad): {}", r.conv_layers.join("; "));
            for t in &r.conv_timings {
                println!("  tuned {t}");
            }
        }
        if let Some(p) = &r.profile {
            print!("{}", p.report());
        }
        rows.push(r);
        if let Some(path) = &a.json {
            atomic::write(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct DataSourceArgs {
    /// An ImageFolder: one sub-folder per class (torchvision's layout and class order),
    /// or a shard directory written by `vgg prep` (detected by its index.json). A folder
    /// with a train/ sub-folder means that training set, as for `vgg train`.
    dir: Option<std::path::PathBuf>,
    /// Use generated images (encoded as JPEG in memory, so decoding is real) instead of DIR.
    #[arg(long)]
    synthetic: bool,
    /// Synthetic images: shorter side (the other up to 1/4 longer).
    #[arg(long, default_value_t = 375)]
    synthetic_size: u32,
    /// Seed of the image sample and of the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An unreadable image is an error instead of being reported and skipped.
    #[arg(long)]
    strict: bool,
}

impl DataSourceArgs {
    /// The dataset and a description; synthetic: `n` images.
    fn open(&self, n: usize) -> Result<(std::sync::Arc<dyn vgg_cuda::data::Dataset>, String)> {
        use vgg_cuda::data::{Dataset, ImageFolder, MemoryDataset, Synthetic};
        // A split folder (train/, maybe val/) means its training set, as for `vgg train`.
        let dir = self.dir.as_ref().map(|d| {
            let train = d.join("train");
            if !self.synthetic && !vgg_cuda::data::Shards::is_shard_dir(d) && train.is_dir() {
                eprintln!("{} has a train/ folder: using {} (as `vgg train` does)", d.display(), train.display());
                train
            } else {
                d.clone()
            }
        });
        match (&dir, self.synthetic) {
            (Some(_), true) => bail!("give either DIR or --synthetic, not both"),
            (None, false) => bail!("give an ImageFolder DIR, or --synthetic"),
            (Some(dir), false) if vgg_cuda::data::Shards::is_shard_dir(dir) => {
                let ds = vgg_cuda::data::Shards::open(dir)?;
                let what = format!(
                    "shards {} ({} images, {} classes, {}, {:.0} KiB each)",
                    dir.display(),
                    ds.len(),
                    ds.classes().len(),
                    ds.index().encoding,
                    ds.bytes() as f64 / 1024.0 / ds.len().max(1) as f64
                );
                Ok((std::sync::Arc::new(ds), what))
            }
            (Some(dir), false) => {
                let ds = ImageFolder::open(dir)?;
                let what = format!("{} ({} images, {} classes)", dir.display(), ds.len(), ds.classes().len());
                Ok((std::sync::Arc::new(ds), what))
            }
            (None, true) => {
                if self.synthetic_size == 0 {
                    bail!("--synthetic-size must be at least 1");
                }
                vgg_cuda::data::check_side("--synthetic-size", self.synthetic_size)?;
                let ds = MemoryDataset::jpeg_of(&Synthetic::new(10, self.synthetic_size, n, self.seed), 90)?;
                let what = format!(
                    "synthetic JPEGs ({n} images, shorter side {}, quality 90, {:.0} KiB each)",
                    self.synthetic_size,
                    ds.bytes() as f64 / 1024.0 / n.max(1) as f64
                );
                Ok((std::sync::Arc::new(ds), what))
            }
        }
    }
}

#[derive(clap::Args)]
struct PrepArgs {
    /// The source ImageFolder, or `synthetic` for the built-in generated set (benchmarks).
    src: std::path::PathBuf,
    /// With `synthetic`: how many images, and their shorter side.
    #[arg(long, default_value_t = 2048)]
    images: usize,
    #[arg(long, default_value_t = 375)]
    synthetic_size: u32,
    /// The shard directory to write: new, empty, or a previous prep output (replaced only
    /// once the new one is complete); never the source or a folder holding it.
    out: std::path::PathBuf,
    /// Rescale so that the shorter side is this (Smax of scale jittering; never upscales; 0: native).
    #[arg(long, default_value_t = 512)]
    max_side: u32,
    /// Images per shard file.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Store JPEGs of this quality (1-100) instead of raw RGB (smaller, but decoded on load).
    #[arg(long)]
    quality: Option<u8>,
    /// An unreadable image is an error instead of being reported and skipped.
    #[arg(long)]
    strict: bool,
}

fn prep_cmd(a: PrepArgs) -> Result<()> {
    use vgg_cuda::data::prep::{prep, PrepConfig};
    let cfg = PrepConfig { max_side: a.max_side, shard_size: a.shard_size, quality: a.quality, strict: a.strict };
    // The progress line is rewritten in place: end it before anything else is printed.
    let shown = std::cell::Cell::new(false);
    let progress = |done, all| {
        eprint!("\rprep: {done}/{all} images");
        shown.set(true);
    };
    let rep = if a.src.as_os_str() == "synthetic" {
        if a.images == 0 || a.synthetic_size == 0 {
            bail!("--images and --synthetic-size must be at least 1");
        }
        vgg_cuda::data::check_side("--synthetic-size", a.synthetic_size)?;
        let ds = vgg_cuda::data::Synthetic::new(10, a.synthetic_size, a.images, 0);
        vgg_cuda::data::prep::prep_dataset(&ds, None, &a.out, &cfg, progress)
    } else {
        prep(&a.src, &a.out, &cfg, progress)
    };
    if shown.get() {
        eprintln!();
    }
    let rep = rep?;
    println!(
        "prep: {} images ({} skipped), {} classes -> {} shards in {}, {:.1} MiB ({:.0} KiB/image), {:.1} s",
        rep.images,
        rep.skipped,
        rep.classes,
        rep.shards,
        a.out.display(),
        rep.bytes as f64 / (1 << 20) as f64,
        rep.bytes as f64 / 1024.0 / rep.images.max(1) as f64,
        rep.seconds
    );
    Ok(())
}

#[derive(clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    /// Images to sample (0: all).
    #[arg(long, default_value_t = 10000)]
    samples: usize,
    /// Rescale each image so that its shorter side is this first (0: native size).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Write the JSON to this file instead of standard output.
    #[arg(long, short)]
    out: Option<std::path::PathBuf>,
}

fn stats_cmd(a: StatsArgs) -> Result<()> {
    vgg_cuda::data::check_side("--size", a.size)?;
    if let Some(path) = &a.out {
        atomic::check_writable(path).context("--out")?;
    }
    let n = if a.samples == 0 { 1000 } else { a.samples };
    let (ds, what) = a.source.open(n)?;
    let sampled = if a.samples == 0 || a.samples >= ds.len() { "all".to_string() } else { a.samples.to_string() };
    eprintln!("stats of {what}: {sampled} images, shorter side rescaled to {}", a.size);
    let t0 = std::time::Instant::now();
    let st = vgg_cuda::data::stats::compute(&*ds, a.samples, a.size, a.source.seed, a.source.strict)?;
    eprintln!(
        "{} images ({} skipped) in {:.1} s: mean RGB {:.2?}, std {:.2?}",
        st.images,
        st.skipped,
        t0.elapsed().as_secs_f64(),
        st.mean,
        st.std
    );
    let json = serde_json::to_string_pretty(&st)?;
    match &a.out {
        Some(path) => atomic::write(path, json.as_bytes())?,
        None => println!("{json}"),
    }
    Ok(())
}

#[derive(clap::Args)]
struct BenchDataArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    /// Images to run (a seeded sample of DIR).
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Loader worker threads, or a comma-separated list of counts to measure the scaling
    /// (1,2,4,8,16; the last is the reported total) [default: the number of cores].
    #[arg(long)]
    workers: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Training scale S: 256, or MIN:MAX for scale jittering (256:512). With --test, Q.
    #[arg(long, default_value = "256")]
    scale: String,
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Test preprocessing (rescale to Q, centre crop) instead of training augmentation.
    #[arg(long)]
    test: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn bench_data_cmd(a: BenchDataArgs) -> Result<()> {
    use vgg_cuda::data::{Scale, TestTransform, TrainTransform, Transform};
    let scale = Scale::parse(&a.scale)?;
    let workers: Vec<usize> = match &a.workers {
        Some(list) => list
            .split(',')
            .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0))
            .collect::<Option<_>>()
            .with_context(|| format!("--workers `{list}`: expected counts >= 1 such as 16 or 1,2,4,8,16"))?,
        None => vec![std::thread::available_parallelism().map_or(1, |n| n.get())],
    };
    if a.images == 0 || a.batch == 0 {
        bail!("--images and --batch must be at least 1");
    }
    let (smallest, largest) = match scale {
        Scale::Fixed(s) => (s, s),
        Scale::Jitter(lo, hi) => (lo, hi),
    };
    vgg_cuda::data::check_side("--scale", largest)?;
    vgg_cuda::data::check_side("--crop", a.crop)?;
    let transform: Transform = if a.test {
        let q = scale.test_q();
        if q < a.crop {
            bail!("--scale {q} (the test Q) is below the --crop of {}: a rescaled image must hold the crop", a.crop);
        }
        TestTransform { scale: q, crop: Some(a.crop) }.into()
    } else {
        if smallest < a.crop {
            bail!("--scale {smallest} is below the --crop of {}: a rescaled image must hold the crop", a.crop);
        }
        TrainTransform { crop: a.crop, ..TrainTransform::paper(scale) }.into()
    };
    transform.validate()?;
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let (ds, what) = a.source.open(a.images)?;
    let report = vgg_cuda::data::bench::run(ds, &what, transform, a.images, &workers, a.batch, a.source.strict)
        .with_context(|| format!("bench data of {what}"))?;
    println!("{}", report.text());
    if let Some(path) = &a.json {
        atomic::write(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// `vgg info --model X [--batch N,...] [--json]`: the layer table, parameter count and FLOPs
/// of a VGG config, and the memory plan of its training step at each batch size; as text, or
/// as one JSON object.
fn model_info(
    model: &str,
    input: usize,
    classes: usize,
    width: f32,
    fc: usize,
    batch: Option<&str>,
    json: bool,
) -> Result<()> {
    use vgg_cuda::model::{Breakdown, MemoryPlan, Sharing};
    let arch = vgg_cuda::model::Arch::parse(model)?;
    let cfg = vgg_cuda::model::VggConfig { input, classes, width, fc, ..vgg_cuda::model::VggConfig::paper(arch) };
    cfg.validate()?;
    let batches = batch
        .map(|b| b.split(',').collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!("--batch: `{b}` is not a positive batch size")),
        })
        .collect::<Result<Vec<_>>>()?;
    if !json {
        print!("{}", cfg.summary());
        for n in batches {
            print!("\n{}", vgg_cuda::model::memory::report(&cfg, n)?);
        }
        return Ok(());
    }
    // The rows of `VggConfig::summary`, as numbers.
    let mut layers = vec![];
    for (f, name) in cfg.features().iter().zip(cfg.feature_names()) {
        let (oh, ow) = f.out_hw();
        let (op, params, macs) = f.op_cost();
        layers.push(serde_json::json!({
            "layer": format!("features.{}", f.index), "name": name, "op": op, "relu": f.is_conv(),
            "output": [oh, ow, f.c_out], "params": params, "macs": macs,
        }));
    }
    for (j, (fi, fo)) in cfg.classifier().into_iter().enumerate() {
        layers.push(serde_json::json!({
            "layer": format!("classifier.{}", 3 * j), "name": format!("fc{}", 6 + j), "op": "fc", "relu": j < 2,
            "dropout": if j < 2 { cfg.dropout } else { 0.0 }, "output": [fo], "params": fo * (fi + 1), "macs": fi * fo,
        }));
    }
    let bytes = |b: Breakdown| {
        serde_json::json!({
            "masters": b.masters, "momentum": b.momentum, "grads": b.grads, "fp16": b.fp16, "small": b.small,
            "activations": b.activations, "activation_grads": b.activation_grads, "workspace_max": b.workspace_max,
            "arena": b.arena, "peak_live": b.peak_live, "total": b.total(),
        })
    };
    let memory = batches
        .iter()
        .map(|&n| -> Result<serde_json::Value> {
            let plan = |s| MemoryPlan::new(&cfg, n, s).map(|p| p.breakdown());
            // Bytes; separate: every buffer its own, shared: the layout the model allocates.
            Ok(serde_json::json!({
                "batch": n, "separate": bytes(plan(Sharing::Separate)?), "shared": bytes(plan(Sharing::Lifetimes)?),
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let macs = cfg.forward_macs();
    let v = serde_json::json!({
        "model": arch.name(), "description": cfg.describe(), "config": cfg, "layers": layers,
        "params": cfg.param_count(), "forward_macs": macs, "forward_gflop_per_image": 2.0 * macs as f64 / 1e9,
        "train_step_gflop_per_image": 6.0 * macs as f64 / 1e9, "memory": memory,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
