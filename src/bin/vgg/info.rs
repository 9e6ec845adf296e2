//! `vgg info` (the machine, the embedded kernels, a VGG config's layers and memory) and
//! `vgg selftest`.

use anyhow::{bail, Context, Result};
use vgg_cuda::device::{cuda_report, kernels};
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass};
use vgg_cuda::{atomic, selftest, Device, Schedule};

pub(crate) fn info(show_kernels: bool, json: bool) -> Result<()> {
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
        // their tiles are fixed); the FC GEMM's tiles take 102-162 KiB.
        let need = |algo| {
            let p = vgg_cuda::problem::ConvProblem::new(1, 8, 8, 64, 64);
            Conv3x3::new(p, algo).map_or(0, |c| c.shared_bytes(ConvPass::Fprop))
        };
        let (f2, f4) = (need(ConvAlgo::Winograd2x2), need(ConvAlgo::Winograd4x4));
        let kib = |b: usize| b as f64 / 1024.0;
        if g.max_shared_per_block < f2 {
            println!(
                "          too little shared memory for the Winograd convs (F(2x2) needs {:.1} KiB a block) and \
                 the FC GEMM's tensor-core tiles (102-162 KiB): models run those passes on the direct conv \
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

pub(crate) fn selftest_cmd(
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

/// `vgg info --model X [--batch N,...] [--json]`: the layer table, parameter count and FLOPs
/// of a VGG config, and the memory plan of its training step at each batch size; as text, or
/// as one JSON object.
pub(crate) fn model_info(
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
    vgg_cuda::train::validate_model_options(model, &cfg, &format!(" --classes {classes}"))?;
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
        // Every plan before the first line: a batch no plan fits is an error naming it, not
        // a layer table that ends in one.
        let reports = batches
            .iter()
            .map(|&n| vgg_cuda::model::memory::report(&cfg, n).with_context(|| format!("--batch {n}")))
            .collect::<Result<Vec<_>>>()?;
        print!("{}", cfg.summary());
        for r in reports {
            print!("\n{r}");
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
            let plan = |s| MemoryPlan::new(&cfg, n, s).map(|p| p.breakdown()).with_context(|| format!("--batch {n}"));
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

/// `vgg info --weights FILE`: what a weights file is and holds (its format, tensors and
/// parameters, the VGG config it records or its shapes imply, stored class names, and a
/// training checkpoint's place in its run), as text or one JSON object. Nothing is loaded onto
/// a device.
pub(crate) fn weights_info(path: &std::path::Path, json: bool) -> Result<()> {
    use vgg_cuda::train::{checkpoint, pth};
    // First: its errors name the file (a missing one, a foreign format).
    let l = checkpoint::load(path)?;
    l.ensure_vgg_weights(&path.display().to_string())?;
    let mut head = [0u8; 9];
    let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    let format = match (read.is_ok() && pth::is_pth(&head), &l.config) {
        (true, _) => "PyTorch torch.save file (a state dict)",
        (false, Some(_)) => "vgg-cuda checkpoint (safetensors)",
        (false, None) => "safetensors state dict",
    };
    let (cfg, how) = match &l.config {
        Some(c) => (c.clone(), "recorded"),
        None => (vgg_cuda::eval::infer_config(&l.weights)?, "inferred from the shapes"),
    };
    let params: usize = l.weights.iter().map(|t| t.2.len()).sum();
    let classes = checkpoint::load_classes(path)?;
    if json {
        let v = serde_json::json!({"file": path, "format": format, "tensors": l.weights.len(), "parameters": params,
            "config": cfg, "config_source": how, "momentum": !l.momentum.is_empty(), "classes": classes,
            "state": l.state});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: {format}", path.display());
    let momentum = if l.momentum.is_empty() { "" } else { ", with SGD momentum" };
    println!(
        "tensors:  {} ({} parameters){momentum}",
        l.weights.len(),
        vgg_cuda::model::config::thousands(params as u64)
    );
    println!("model:    VGG {} ({how})", cfg.describe());
    match &classes {
        Some(c) => println!("classes:  {} named ({})", c.len(), vgg_cuda::eval::class_list(c)),
        None => println!("classes:  {} (no names stored)", cfg.classes),
    }
    match &l.state {
        Some(s) => {
            let best = s.best_top1.map(|b| format!(", best val top-1 {b:.4}")).unwrap_or_default();
            println!(
                "training: step {}, epoch {} (batch {} of it, batch size {}), lr {:.3e}, loss scale {}{best}, seed {}",
                s.step, s.epoch, s.batch_in_epoch, s.batch, s.lr, s.loss_scale, s.seed
            );
            if !s.conv_plans.is_empty() {
                println!(
                    "          conv plans recorded for {} layers (a resume computes with them)",
                    s.conv_plans.len()
                );
            }
        }
        None => println!("training: no state (weights only: --weights or --pre-init start a new run from it)"),
    }
    Ok(())
}
