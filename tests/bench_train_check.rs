//! `vgg bench train --check-against`: the first step under two conv-plan policies from the same
//! weights and batch, compared gradient by gradient (the tool that is to find which layer and
//! pass of the wgmma convs goes wrong inside VGG-16 on the H200).

use vgg_cuda::bench::train::TrainBenchConfig;
use vgg_cuda::bench::train_check::{check_against, ChoiceCheck, DIFFERS, LOSSES_PART};
use vgg_cuda::model::{Arch, ConvChoice};
use vgg_cuda::Device;

#[test]
fn a_policy_against_itself_agrees_exactly_and_another_within_rounding() {
    let dev = Device::emu();
    let mut cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    // Deterministic kernels: the same plans from the same seed give the same step, bit for bit.
    let same = check_against(&dev, &cfg, ConvChoice::Auto, None).unwrap();
    assert_eq!(same.loss(), same.other_loss());
    assert!(!same.skipped && same.grads.len() == 22, "{same:?}");
    assert!(same.grads.iter().all(|g| g.rel_l2 == 0.0), "{same:?}");
    assert_eq!(same.grads[0].name, "features.0.weight");
    // Every warm-up and timed step (1 + 2 on emu), the first the compared one, bit for bit.
    assert_eq!(same.losses.len(), cfg.warmup + cfg.steps);
    assert_eq!(same.losses[0], same.loss());
    assert_eq!(same.losses, same.other_losses);
    assert_eq!(same.parted_at(), None);
    // wgmma's exact products against Winograd's transforms: every conv layer with a Winograd
    // pass (all but the first two at 1/16 width) computes differently, so the gradients of the
    // layers before them do too, by rounding and near-tie routing, not by a fault.
    cfg.conv = ConvChoice::Wgmma;
    let c = check_against(&dev, &cfg, ConvChoice::Auto, None).unwrap();
    assert_eq!(c.other, "auto");
    assert!((c.loss() - c.other_loss()).abs() <= 1e-2 * c.other_loss(), "{c:?}");
    assert!(c.grads[0].rel_l2 > 0.0, "the two steps ran the same kernels: {c:?}");
    assert_eq!(c.differing().count(), 0, "correct kernels differ by more than {DIFFERS}: {c:?}");
    assert_eq!(c.parted_at(), None, "correct kernels' losses part over 3 steps: {c:?}");
}

#[test]
fn losses_part_at_the_first_step_beyond_the_bound_or_not_finite() {
    let check = |losses: Vec<f32>, other_losses: Vec<f32>| ChoiceCheck {
        other: "auto".into(),
        skipped: false,
        grads: vec![],
        losses,
        other_losses,
    };
    let within = 1.0 - LOSSES_PART as f32 / 2.0;
    assert_eq!(check(vec![6.0, 5.0, 4.0], vec![6.0, 5.0 * within, 4.0]).parted_at(), None);
    let beyond = 1.0 + 2.0 * LOSSES_PART as f32;
    assert_eq!(check(vec![6.0, 5.0, 4.0 * beyond], vec![6.0, 5.0, 4.0]).parted_at(), Some(2));
    assert_eq!(check(vec![6.0, f32::NAN, 4.0], vec![6.0, 5.0, 4.0]).parted_at(), Some(1));
    assert_eq!(check(vec![6.0, 5.0, 4.0], vec![6.0, f32::INFINITY, 4.0]).parted_at(), Some(1));
}

#[test]
fn cli_prints_every_gradient_and_checks_the_policy_name() {
    let vgg = env!("CARGO_BIN_EXE_vgg");
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "train", "--device", "emu", "--model", "A", "--batch", "2", "--steps", "1"];
        args.extend_from_slice(extra);
        std::process::Command::new(vgg).args(&args).output().unwrap()
    };
    let out = run(&["--check-against", "fastest"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--check-against") && err.contains("unknown conv algorithm `fastest`"), "{err}");
    let out = run(&["--check-memory", "--graph"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--check-memory cannot run with --graph"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bench train on"), "the run started");
    let out = run(&["--conv-algo", "wgmma", "--check-against", "auto"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("check at batch 2, first step, wgmma against auto: loss"), "{text}");
    // All 22 of VGG-11's tensors, in the model's order, and the verdict.
    assert!(text.contains("features.0.weight ") && text.contains("classifier.6.bias "), "{text}");
    assert!(text.find("features.0.weight").unwrap() < text.find("classifier.6.bias").unwrap(), "{text}");
    assert!(text.contains(&format!("no gradient differs by more than {DIFFERS}")), "{text}");
    // Then both runs' loss at each of the 1 + 1 steps, and whether they part.
    assert!(text.contains("loss at each step, wgmma / auto:\n     0: 2.303/2.303 "), "{text}");
    assert!(text.contains("the losses stay within 5% of each other for all 2 steps"), "{text}");
    let out = run(&["--lr", "-0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("learning rate -0.1 must be finite and >= 0"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bench train on"), "the run started");
}

#[test]
fn a_memory_checked_run_repeats_the_losses_of_correct_kernels() {
    let dev = Device::emu();
    let mut cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    cfg.conv = ConvChoice::Wgmma;
    let plain = vgg_cuda::bench::train::run(&dev, &cfg).unwrap();
    cfg.check_memory = true;
    let checked = vgg_cuda::bench::train::run(&dev, &cfg).unwrap();
    assert!(checked.check_memory && !plain.check_memory);
    // Separate buffers take more bytes than buffers shared by lifetime: the layout changed.
    assert!(checked.model_bytes > plain.model_bytes, "{} vs {}", checked.model_bytes, plain.model_bytes);
    // With free bytes poisoned, correct kernels still give the same steps, bit for bit.
    assert_eq!(checked.first_loss.to_bits(), plain.first_loss.to_bits());
    assert_eq!(checked.last_loss.to_bits(), plain.last_loss.to_bits());
    cfg.graph = true;
    let err = vgg_cuda::bench::train::run(&dev, &cfg).unwrap_err().to_string();
    assert!(err.contains("memory check cannot run with graph steps"), "{err}");
}

/// `--dump-step0`: the first step's fp16 weights (torchvision layout), batch and both
/// policies' unscaled gradients, with a meta.json that names the layers, for
/// scripts/torch_grad_check.py. The weights are the model's initial ones rounded to fp16; a
/// policy against itself writes two identical gradient sets.
#[test]
fn the_first_step_is_dumped_for_another_framework() {
    let dev = Device::emu();
    let cfg = TrainBenchConfig::for_device(&dev, Arch::A, Some(2));
    let dir = std::env::temp_dir().join(format!("vgg-dump-step0-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    check_against(&dev, &cfg, ConvChoice::Auto, Some(&dir)).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let names: Vec<&str> = meta["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["auto", "auto-2"]);
    assert_eq!(meta["features"][0], serde_json::json!({"kind": "conv3x3", "name": "features.0"}));
    assert_eq!(meta["features"][1], serde_json::json!({"kind": "maxpool2x2", "name": "features.2"}));
    let f32s = |p: std::path::PathBuf| -> Vec<f32> { bytemuck::pod_collect_to_vec(&std::fs::read(p).unwrap()) };
    let (vgg, _) = cfg.model(&dev, ConvChoice::Auto).unwrap();
    let initial = vgg.export_params().unwrap();
    assert_eq!(meta["tensors"].as_array().unwrap().len(), initial.len());
    for (name, shape, w) in &initial {
        let got = f32s(dir.join("weights").join(format!("{name}.bin")));
        assert_eq!(got, vgg_cuda::reference::f32_to_f16_round(w), "{name}: the fp16 weights, torchvision layout");
        assert_eq!(got.len(), shape.iter().product::<usize>());
        let (a, b) = (
            f32s(dir.join("grads/auto").join(format!("{name}.bin"))),
            f32s(dir.join("grads/auto-2").join(format!("{name}.bin"))),
        );
        assert!(a == b && a.len() == got.len() && a.iter().all(|v| v.is_finite()), "{name}: gradients");
    }
    assert!(initial
        .iter()
        .any(|(n, ..)| f32s(dir.join("grads/auto").join(format!("{n}.bin"))).iter().any(|v| *v != 0.0)));
    let images = std::fs::read(dir.join("images.bin")).unwrap();
    assert_eq!(images.len(), 2 * cfg.model.input * cfg.model.input * 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
