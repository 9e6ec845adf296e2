//! `vgg bench train` on the emu device: the tiny configuration runs whole training steps and
//! reports finite, consistent numbers; bad arguments are clear errors.

use vgg_cuda::bench::train::{run, TrainBenchConfig};
use vgg_cuda::model::Arch;
use vgg_cuda::Device;
mod common;

#[test]
fn tiny_training_steps_are_measured() {
    let dev = Device::emu();
    let cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    let r = run(&dev, &cfg).unwrap();
    assert_eq!(r.batch, 2);
    assert!(r.median_step_ms.is_finite() && r.median_step_ms > 0.0, "{r:?}");
    assert!(r.min_step_ms <= r.median_step_ms, "{r:?}");
    assert!((r.images_per_s - 2.0 / r.median_step_ms * 1e3).abs() < 1e-6 * r.images_per_s, "{r:?}");
    assert!(r.first_loss.is_finite() && r.last_loss.is_finite(), "{r:?}");
    // 10 classes, random labels, fresh weights: the loss starts near ln(10).
    assert!((r.first_loss - 10f32.ln()).abs() < 0.5, "first loss {} far from ln 10", r.first_loss);
    assert!(r.model_bytes > 0 && r.reserved_bytes.is_none(), "{r:?}");
    // Every step launches the same kernels: at least a filter transform or a conv launch per
    // conv layer and pass (A has 8), a whole number a step.
    assert!(r.launches_per_step >= 24.0 && r.launches_per_step.fract() == 0.0, "{r:?}");
    // Queuing forward + backward is part of each step (on emu it is most of it).
    assert!(r.median_enqueue_ms > 0.0 && r.median_enqueue_ms <= r.median_step_ms, "{r:?}");
    assert!(r.conv_layers.len() == 8 && r.conv == "auto", "{r:?}");
}

#[test]
fn tuned_conv_plans_are_reported() {
    let dev = Device::emu();
    let mut cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    cfg.conv = vgg_cuda::model::ConvChoice::Tune;
    let r = run(&dev, &cfg).unwrap();
    assert_eq!(r.conv, "tune");
    assert_eq!(r.conv_layers.len(), 8, "{r:?}");
    // At 1/16 width the first two layers (3 -> 4, 4 -> 8 channels) have no Winograd pass; the
    // others run a Winograd variant or wgmma, whichever the (emulator's) clock found faster.
    let tuned = |l: &String| l.contains("wino") || l.contains("wgmma");
    assert!(r.conv_layers[2..].iter().all(tuned), "{:?}", r.conv_layers);
    // Every distinct Winograd shape was timed under all three variants and wgmma's nine tiles
    // (halo, flat, tall, swizzled, TMA, tall TMA, warp-specialised TMA, multicast TMA, 2-D TMA),
    // both passes, and its wgrad under the mma.sync implicit GEMM and wgmma's four tiles (halo,
    // flat, warp-specialised TMA, and 2-D TMA: every conv layer of this net has K <= 64).
    assert!(!r.conv_timings.is_empty(), "{r:?}");
    for t in &r.conv_timings {
        for v in ["winograd2x2/flat", "winograd2x2/region", "winograd4x4"] {
            assert_eq!(t.matches(v).count(), 2, "{t}");
        }
        let counts = [
            "wgmma/flat",
            "wgmma/tall",
            "wgmma/sw128",
            "wgmma/tma",
            "wgmma/tall-tma",
            "wgmma/tma-ws",
            "wgmma/tma-mc",
            "wgmma/tma-2d",
            "wgmma",
        ]
        .map(|v| t.matches(v).count());
        // "wgmma/tall" also counts tall-tma's names, "wgmma/tma" tma-ws's, tma-mc's and tma-2d's.
        assert_eq!(counts, [3, 4, 2, 10, 2, 3, 2, 3, 22], "{t}");
        assert_eq!(t.matches("Wgrad igemm").count(), 1, "{t}");
    }
    assert!(r.last_loss.is_finite(), "{r:?}");
}

#[test]
fn cli_rejects_bad_arguments() {
    let vgg = env!("CARGO_BIN_EXE_vgg");
    let out =
        std::process::Command::new(vgg).args(["bench", "train", "--device", "emu", "--batch", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a positive batch size"));
    let out =
        std::process::Command::new(vgg).args(["bench", "train", "--device", "emu", "--model", "Z"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown VGG config `Z`"));
    let out = std::process::Command::new(vgg)
        .args(["bench", "train", "--device", "emu", "--conv-algo", "fastest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown conv algorithm `fastest`"));
    let out = std::process::Command::new(vgg)
        .args(["bench", "train", "--device", "emu", "--graph", "--input", "16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VGG input 16 is too small"));
}

#[test]
fn queued_steps_end_where_timed_steps_do() {
    let dev = Device::emu();
    let cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    let one_by_one = run(&dev, &cfg).unwrap();
    let queued = run(&dev, &TrainBenchConfig { queued: true, ..cfg }).unwrap();
    assert!(queued.queued && !one_by_one.queued);
    // Same steps on the same data: the same last loss, bit for bit, and one launch more a
    // step (the loss scale's update on the device).
    assert_eq!(queued.last_loss.to_bits(), one_by_one.last_loss.to_bits(), "{queued:?} vs {one_by_one:?}");
    assert_eq!(queued.first_loss.to_bits(), one_by_one.first_loss.to_bits());
    assert_eq!(queued.launches_per_step, one_by_one.launches_per_step + 1.0);
    assert!(queued.median_step_ms > 0.0 && queued.min_step_ms == queued.median_step_ms, "{queued:?}");
}

/// Graph steps: after one capture per batch buffer (the last two warm-up steps, untimed), each
/// timed step costs the host two launches (the step's values and the graph), whichever of the
/// two buffers it reads.
#[test]
fn graph_steps_cost_the_host_two_launches_each() {
    let dev = Device::emu();
    let cfg = TrainBenchConfig {
        warmup: 2,
        steps: 3,
        queued: true,
        graph: true,
        ..TrainBenchConfig::for_device(&dev, Arch::A, Some(2))
    };
    let r = run(&dev, &cfg).unwrap();
    assert!(r.graph && r.queued);
    assert_eq!(r.launches_per_step, 2.0, "{r:?}");
    assert!(r.last_loss.is_finite() && r.skipped_steps == 0, "{r:?}");
}

/// One by one, queued and replayed from a graph, the same warm-up and timed steps train the same
/// model: the same first and last loss, bit for bit, whether the graph's captures fall in the
/// warm-up or in the timed steps, and a real first loss even with no warm-up to read it (the
/// graph's captures were two extra training steps, and queued steps without a warm-up reported
/// a NaN first loss).
#[test]
fn every_mode_reports_the_losses_of_the_same_steps() {
    let dev = Device::emu();
    for (warmup, steps) in [(0, 1), (0, 3), (1, 2), (3, 2)] {
        let cfg = TrainBenchConfig { warmup, steps, ..TrainBenchConfig::for_device(&dev, Arch::A, Some(2)) };
        let plain = run(&dev, &cfg).unwrap();
        assert!(plain.first_loss.is_finite() && plain.last_loss.is_finite(), "{plain:?}");
        let queued = run(&dev, &TrainBenchConfig { queued: true, ..cfg.clone() }).unwrap();
        let graph = run(&dev, &TrainBenchConfig { graph: true, ..cfg }).unwrap();
        for (mode, r) in [("queued", &queued), ("graph", &graph)] {
            let losses = |r: &vgg_cuda::bench::train::TrainBenchRow| (r.first_loss.to_bits(), r.last_loss.to_bits());
            assert_eq!(
                losses(r),
                losses(&plain),
                "warmup {warmup} steps {steps}, {mode}: {} -> {} vs one by one {} -> {}",
                r.first_loss,
                r.last_loss,
                plain.first_loss,
                plain.last_loss
            );
            assert_eq!(r.skipped_steps, plain.skipped_steps, "{mode}");
        }
    }
}

/// `--profile`: one more step, every launch of it listed once under its phase's label, in the
/// step's order (input, the forward layer by layer, loss, the backward in reverse, optimizer),
/// after plain or queued steps alike.
#[test]
fn a_profiled_step_lists_every_launch_by_layer() {
    let dev = Device::emu();
    for queued in [false, true] {
        let cfg = TrainBenchConfig { profile: true, queued, ..TrainBenchConfig::for_device(&dev, Arch::A, Some(2)) };
        let r = run(&dev, &cfg).unwrap();
        let p = r.profile.as_ref().expect("profile asked for");
        // A plain step's launches (queued steps make one more: the scale update on the device).
        let plain = r.launches_per_step - if queued { 1.0 } else { 0.0 };
        assert_eq!(p.launches.len() as f64, plain, "queued {queued}");
        assert!(p.launches.iter().all(|l| l.ms.is_finite() && l.ms >= 0.0));
        assert!(p.launches_ms() <= p.step_ms, "emu runs launches inside the step's wall time: {p:?}");
        let labels: Vec<String> = p.by_label().into_iter().map(|s| s.name).collect();
        let names = cfg.model.feature_names();
        let mut expect = vec!["input".to_string()];
        expect.extend(names.iter().map(|n| format!("fwd {n}")));
        expect.extend(["fwd fc6", "fwd fc7", "fwd fc8", "loss", "bwd fc8", "bwd fc7", "bwd fc6"].map(String::from));
        expect.extend(names.iter().rev().map(|n| format!("bwd {n}")));
        expect.push("optimizer".into());
        assert_eq!(labels, expect, "queued {queued}");
        let groups: f64 = p.by_group().iter().map(|g| g.ms).sum();
        assert!((groups - p.launches_ms()).abs() <= 1e-9 * p.launches_ms().max(1.0));
        assert!(p.report().contains("bwd conv"), "{}", p.report());
    }
    let plain = run(&dev, &TrainBenchConfig::for_device(&dev, Arch::A, Some(2))).unwrap();
    assert!(plain.profile.is_none());
}

#[test]
fn cli_json_path_is_checked_before_the_run() {
    let dir = common::TempDir::new("bench-train", "outputs");
    let afile = dir.join("afile");
    std::fs::write(&afile, b"keep").unwrap();
    let json = afile.join("x.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["bench", "train", "--device", "emu", "--steps", "1", "--warmup", "0", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "succeeded: {stdout}");
    assert!(stderr.contains("--json") && stderr.contains("afile is a file, not a folder"), "stderr: {stderr}");
    assert!(!stdout.contains("bench train on"), "the run started: {stdout}");
    assert_eq!(std::fs::read(&afile).unwrap(), b"keep");
}

/// A library caller (the CLI refuses `--steps 0` itself) gets an error naming the step count,
/// not a NaN rate: with no timed step there is nothing to divide by.
#[test]
fn zero_timed_steps_is_an_error() {
    let dev = Device::emu();
    let cfg = TrainBenchConfig { steps: 0, ..TrainBenchConfig::for_device(&dev, Arch::A, Some(2)) };
    let e = run(&dev, &cfg).unwrap_err().to_string();
    assert!(e.contains("at least 1 timed step"), "{e}");
}
