//! `vgg bench conv`, `vgg bench gemm` and `vgg bench train`: the arguments and the tables.

use anyhow::{bail, Context, Result};
use vgg_cuda::bench::conv::{select_layers, Algo, ConvBench, ConvBenchConfig, ConvRow, Pass};
use vgg_cuda::bench::gemm::{self as bench_gemm, GemmBench, GemmBenchConfig, GemmRow};
use vgg_cuda::ops::conv::WinoTiling;
use vgg_cuda::{atomic, Device};

#[derive(clap::Args)]
pub(crate) struct BenchTrainArgs {
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
    /// shared memory), wgmma (implicit GEMM on Hopper's wgmma where Auto runs Winograd), hopper
    /// (Auto's plans with the wgmma passes measured faster on the H200, a fixed rule), or tune
    /// (time each layer's variants, Winograd and wgmma, on the device first, untimed, and keep
    /// the fastest).
    #[arg(long, default_value = "auto")]
    conv_algo: String,
    /// Queue the timed steps with nothing read back (the loss scale kept on the device) and
    /// time them together, instead of one step at a time.
    #[arg(long)]
    queued: bool,
    /// As --queued, each step replayed from one captured graph (a CUDA graph on cuda): 2
    /// launches a step instead of ~110 for VGG-16. Pays where the GPU would wait for the host's
    /// launches: small inputs and batches. The two captures (one per batch buffer) are the
    /// last two warm-up steps; with --warmup under 2, the first timed steps include them.
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
    #[arg(long, allow_negative_numbers = true)]
    width: Option<f32>,
    /// Learning rate of every step [default: 1e-2, scripts/torch_baseline.py's].
    #[arg(long)]
    lr: Option<f32>,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Before each batch's timed steps, run the first step under --conv-algo's plans and under
    /// this policy's, from the same weights on the same batch, and print both losses and every
    /// gradient's relative L2 difference: which tensors part ways says which conv layer and pass
    /// goes wrong inside the model (a dgrad fault moves the layers before it, a wgrad fault its
    /// own weights). Then both go on for the warm-up and timed steps, and every step's two
    /// losses are printed: a fault parts them from the first step at any --lr, a run merely
    /// sensitive to rounding only later, and less at a smaller --lr.
    #[arg(long)]
    check_against: Option<String>,
    /// With --check-against: write the first step's weights, batch and both policies'
    /// gradients to this folder (a subfolder per batch size), for scripts/torch_grad_check.py
    /// to recompute in PyTorch: the third opinion where two policies disagree. Use with
    /// --dropout 0 (dropout masks are not written). VGG-16: ~1.7 GB a batch size.
    #[arg(long, requires = "check_against")]
    dump_step0: Option<std::path::PathBuf>,
    /// Dropout of the two hidden FC layers [default: the paper's 0.5].
    #[arg(long)]
    dropout: Option<f32>,
    /// Give every activation, gradient and workspace buffer its own bytes, with a guard band of
    /// 64 KiB behind each, and poison every byte outside the live buffers as each phase of a step
    /// begins (slower): a kernel that reads outside its buffers or their lifetimes then changes
    /// the losses, which correct kernels repeat bit for bit, and one that writes past a buffer's
    /// end fails the step, naming the phase and the buffer.
    #[arg(long)]
    check_memory: bool,
}

#[derive(clap::Args)]
pub(crate) struct BenchGemmArgs {
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
    /// choice: w128x256 (Hopper's wgmma; kernels/gemm_wgmma.cu), wt128x256 (the same with its
    /// operands brought by the TMA engine), or one of the mma.sync tiles
    /// t128x256, t128x192, t128x128, t64x128.
    #[arg(long)]
    tile: Option<String>,
    /// Split our products this many ways over K (on the planner's tile, or --tile's) instead
    /// of the planner's count (each split at least one 64-deep k-tile: a larger count is cut).
    #[arg(long)]
    splits: Option<usize>,
    /// Write the report as JSON to this file (rewritten after every row, so a killed run
    /// leaves its rows so far).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct BenchConvArgs {
    /// cuda, cuda:N or emu (emu: a tiny run, images 16x smaller a side and at most 32 channels,
    /// no cuDNN).
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
    /// Hopper's wgmma, all three passes), or tune (the plan `vgg train --conv-algo tune` runs
    /// at this batch: each layer's fprop, dgrad and wgrad variants timed on the device first,
    /// those that disagree with Auto's output left out, the fastest kept; the rows name it and
    /// what the tuner measured).
    #[arg(long, default_value = "auto")]
    algo: String,
    /// How Winograd F(2x2) groups its tiles, and which tiles wgmma runs (flat: 128 pixels, and
    /// a wgrad copy a tap; auto, region: the halo tiles; tall: the 512 x 64 halo tile for fprop
    /// and dgrad where it fits; swizzled: the halo tile's operands in the 128-byte swizzle; tma:
    /// the halo tile's operands brought by the TMA engine, fprop and dgrad where it fits; tma-tall:
    /// the tall tile so fed; tma-ws: tma's tile with a producer warp, and the wgrad's halo tile
    /// fed by the TMA engine with a producer warpgroup; tma-mc: tma-ws's fprop and dgrad tile in
    /// clusters of 2 blocks that share each filter box by multicast; tma-2d: TMA-fed items of 16 x 32
    /// pixels x 64 channels, fprop and dgrad): auto, flat, region, tall, swizzled, tma, tma-tall,
    /// tma-ws, tma-mc, tma-2d (not with --algo tune, which chooses the tiling).
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

pub(crate) fn bench_conv_cmd(a: BenchConvArgs) -> Result<()> {
    // Arguments first, so a typo is reported even where the device is unusable.
    let passes = Pass::parse_list(&a.passes).with_context(|| format!("--passes {}", a.passes))?;
    let algo = Algo::parse(&a.algo)?;
    let wino_tiling = match a.wino_tiling.as_str() {
        "auto" => WinoTiling::Auto,
        "flat" => WinoTiling::Flat,
        "region" => WinoTiling::Region,
        "tall" => WinoTiling::Tall,
        "swizzled" => WinoTiling::Swizzled,
        "tma" => WinoTiling::Tma,
        "tma-tall" => WinoTiling::TmaTall,
        "tma-ws" => WinoTiling::TmaWs,
        "tma-mc" => WinoTiling::TmaMc,
        "tma-2d" => WinoTiling::Tma2d,
        other => {
            bail!(
                "unknown --wino-tiling `{other}` (auto, flat, region, tall, swizzled, tma, tma-tall, tma-ws, tma-mc, \
                 tma-2d)"
            )
        }
    };
    if algo == Algo::Tune && wino_tiling != WinoTiling::Auto {
        // Training's tuner chooses the tiling; a fixed one would bench a plan it does not run.
        bail!("--wino-tiling {}: --algo tune chooses the tiling itself (leave --wino-tiling auto)", a.wino_tiling);
    }
    let emu = a.device == "emu";
    let layers = select_layers(emu, a.batch, &a.layers).with_context(|| format!("--layers {}", a.layers))?;
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

pub(crate) fn bench_gemm_cmd(a: BenchGemmArgs) -> Result<()> {
    // Arguments first, so a typo is reported even where the device is unusable.
    let passes = bench_gemm::Pass::parse_list(&a.passes).with_context(|| format!("--passes {}", a.passes))?;
    let emu = a.device == "emu";
    let layers = bench_gemm::select_layers(emu, &a.shapes).with_context(|| format!("--shapes {}", a.shapes))?;
    let batches = match &a.batch {
        Some(b) => bench_gemm::parse_batches(b).with_context(|| format!("--batch {b}"))?,
        None => bench_gemm::default_batches(emu),
    };
    if a.repeats == Some(0) {
        bail!("--repeats must be at least 1");
    }
    let tile = a.tile.as_deref().map(vgg_cuda::ops::gemm::Tile::parse).transpose().context("--tile")?;
    if a.splits == Some(0) {
        bail!("--splits must be at least 1");
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
    cfg.tile = tile;
    cfg.splits = a.splits;
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
pub(crate) fn bench_train_cmd(a: BenchTrainArgs) -> Result<()> {
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
    let check = a.check_against.as_deref().map(vgg_cuda::model::ConvChoice::parse).transpose();
    let check = check.context("--check-against")?;
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench train on `{}`", a.device))?;
    // Every batch's config is made and checked before the table starts, so that a bad
    // --input or --width is the only thing printed.
    let configs = batches
        .into_iter()
        .map(|b| {
            let mut cfg = TrainBenchConfig::for_device(&dev, arch, b);
            cfg.steps = a.steps.unwrap_or(cfg.steps);
            cfg.warmup = a.warmup.unwrap_or(cfg.warmup);
            cfg.conv = conv;
            cfg.lr = a.lr.unwrap_or(cfg.lr);
            cfg.queued = a.queued;
            cfg.graph = a.graph;
            cfg.profile = a.profile;
            cfg.check_memory = a.check_memory;
            cfg.model.input = a.input.unwrap_or(cfg.model.input);
            cfg.model.width = a.width.unwrap_or(cfg.model.width);
            cfg.model.dropout = a.dropout.unwrap_or(cfg.model.dropout);
            cfg.model.validate().context("--input / --width / --dropout")?;
            cfg.validate()?;
            Ok(cfg)
        })
        .collect::<Result<Vec<_>>>()?;
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
    if a.check_memory {
        println!("memory checked: every buffer its own bytes, free bytes poisoned as each phase begins");
    }
    println!(
        "{:<14} {:>5} {:>10} {:>10} {:>8} {:>10} {:>12}  loss first -> last, skipped",
        "model", "batch", "ms/step", "img/s", "TFLOP/s", "model GiB", "reserved GiB"
    );
    let mut rows = vec![];
    for cfg in configs {
        if let Some(other) = check {
            let dump = a.dump_step0.as_ref().map(|d| d.join(format!("batch{}", cfg.batch)));
            let c = vgg_cuda::bench::train_check::check_against(&dev, &cfg, other, dump.as_deref())
                .with_context(|| format!("--check-against at batch {}", cfg.batch))?;
            print_check(&c, &a.conv_algo, cfg.batch);
        }
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

/// `--check-against`'s lines: the two losses, every gradient's difference, and which differ.
fn print_check(c: &vgg_cuda::bench::train_check::ChoiceCheck, ours: &str, batch: usize) {
    use vgg_cuda::bench::train_check::{DIFFERS, LOSSES_PART};
    let skipped = if c.skipped { " (a step overflowed and was skipped: its gradients hold Inf)" } else { "" };
    println!(
        "check at batch {batch}, first step, {ours} against {}: loss {:.5} vs {:.5}{skipped}; gradients' relative L2:",
        c.other,
        c.loss(),
        c.other_loss()
    );
    for row in c.grads.chunks(4) {
        let cells: Vec<String> = row.iter().map(|g| format!("{} {:.1e}", g.name, g.rel_l2)).collect();
        println!("  {}", cells.join(", "));
    }
    let bad: Vec<&str> = c.differing().map(|g| g.name.as_str()).collect();
    if bad.is_empty() {
        println!("  no gradient differs by more than {DIFFERS}");
    } else {
        println!("  {} of {} gradients differ by more than {DIFFERS}: {}", bad.len(), c.grads.len(), bad.join(", "));
    }
    println!("  loss at each step, {ours} / {}:", c.other);
    let pairs: Vec<String> = c.losses.iter().zip(&c.other_losses).map(|(a, b)| format!("{a:.3}/{b:.3}")).collect();
    for (i, row) in pairs.chunks(8).enumerate() {
        println!("  {:>4}: {}", 8 * i, row.join(" "));
    }
    match c.parted_at() {
        None => {
            println!("  the losses stay within {}% of each other for all {} steps", 100.0 * LOSSES_PART, c.losses.len())
        }
        Some(s) => {
            println!("  the losses part (by more than {}%) at step {s} of {}", 100.0 * LOSSES_PART, c.losses.len())
        }
    }
}
