//! `vgg`: the command line of vgg-cuda.
//!   vgg info [--kernels] [--json]           driver, GPUs, NVRTC, embedded kernels
//!   vgg selftest [--device cuda|emu]       every kernel against the reference
//!   vgg bench conv [--device cuda|emu] ...  our 3x3 convs vs cuDNN on VGG-16's layers

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vgg_cuda::bench::conv::{select_layers, Algo, ConvBench, ConvBenchConfig, ConvRow, Pass};
use vgg_cuda::device::{cuda_report, kernels};
use vgg_cuda::{selftest, Device, Schedule};

#[derive(Parser)]
#[command(name = "vgg", version, about = "VGG on hand-tuned CUDA kernels (GPU, or the CPU emulator)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Driver, GPUs, the NVRTC the kernels were built with, and the embedded kernels.
    Info {
        /// Also list every kernel's registers, shared memory, stack and spills.
        #[arg(long)]
        kernels: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs every kernel against the f64 reference; exits non-zero on any failure.
    Selftest {
        /// cuda, cuda:N or emu.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Only this check (relu, bias_act, cast, maxpool, mma, ldmatrix, cp_async).
        #[arg(long)]
        only: Option<String>,
        /// Emulator schedule: index, reverse, random[:seed].
        #[arg(long)]
        schedule: Option<String>,
        /// Also write the table as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Benchmarks, timed with device events against cuDNN in the same process.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// VGG-16's 3x3 convolutions (fprop, dgrad, wgrad): ours vs cuDNN's fastest algorithm, on
    /// the same stream and inputs, with the agreement of the outputs. Exits non-zero when a
    /// pass fails or disagrees.
    Conv(BenchConvArgs),
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
    /// Our algorithm: auto, direct, winograd2x2, winograd4x4.
    #[arg(long, default_value = "auto")]
    algo: String,
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
    /// Draw a PNG bar chart of the TFLOP/s to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { kernels, json } => info(kernels, json),
        Cmd::Selftest { device, only, schedule, json } => {
            selftest_cmd(&device, only.as_deref(), schedule.as_deref(), json)
        }
        Cmd::Bench { what: BenchCmd::Conv(args) } => bench_conv_cmd(args),
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
            "gpu {}:    {} (sm_{}{}, {} SMs, {:.1} GiB)",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.multiprocessors,
            g.memory_bytes as f64 / (1u64 << 30) as f64
        );
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
                .map(|m| m.cubins.iter().map(|c| format!("sm_{}", c.0)).collect())
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
            if r.pass { "pass" } else { "FAIL" }
        );
        if let (false, Some(d)) = (r.pass, &r.detail) {
            println!("    {d}");
        }
    }
    if let Some(path) = json {
        write_atomic(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!("{} checks, {} failed, {:.2} s on {}", rows.len(), failed, t0.elapsed().as_secs_f64(), dev.name());
    if failed > 0 {
        bail!("{failed} selftest checks failed on {}", dev.name());
    }
    Ok(())
}

fn bench_conv_cmd(a: BenchConvArgs) -> Result<()> {
    // Arguments first, so a typo is reported even where the device is unusable.
    let passes = Pass::parse_list(&a.passes)?;
    let algo = Algo::parse(&a.algo)?;
    let emu = a.device == "emu";
    let layers = select_layers(emu, a.batch, &a.layers)?;
    if a.repeats == Some(0) {
        bail!("--repeats must be at least 1");
    }
    if a.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench conv on `{}`", a.device))?;
    let mut cfg = ConvBenchConfig::new(&dev, a.batch);
    cfg.layers = layers;
    cfg.passes = passes;
    cfg.algo = algo;
    cfg.cudnn = !a.no_cudnn;
    if a.repeats.is_some() {
        cfg.timing.samples = a.repeats;
    }
    let t0 = std::time::Instant::now();
    let bench = ConvBench::new(&dev, &cfg);
    println!(
        "bench conv on {}: {} layers x {} passes, algo {}, {}",
        dev.name(),
        cfg.layers.len(),
        cfg.passes.len(),
        algo.name(),
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
            if let Err(e) =
                serde_json::to_vec_pretty(&partial).map_err(anyhow::Error::from).and_then(|b| write_atomic(path, &b))
            {
                json_error.get_or_insert(e);
            }
        }
    });
    println!("{} ({:.1} s)", report.summary.line(), t0.elapsed().as_secs_f64());
    if let Some(path) = &a.json {
        write_atomic(path, &serde_json::to_vec_pretty(&report)?)?;
        if let Some(e) = json_error {
            eprintln!("warning: a partial JSON write failed earlier: {e:#}");
        }
    }
    if let Some(path) = &a.plot {
        match vgg_cuda::bench::plot::conv_chart(&report, path) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => eprintln!("warning: no plot: {e}"),
        }
    }
    let s = &report.summary;
    if s.ours_measured == 0 {
        bail!("bench conv on {}: nothing could be measured", dev.name());
    }
    if s.failed > 0 {
        bail!("bench conv on {}: {} of {} rows failed or disagree", dev.name(), s.failed, s.rows);
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
