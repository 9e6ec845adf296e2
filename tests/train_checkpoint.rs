//! Checkpoints: bit-identical resume on emu, torchvision names and layouts, and clear errors
//! for corrupt, truncated, batch-norm, wrong-config and wrong-shape files.

use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::ops::conv::ConvAlgo;
use vgg_cuda::train::{checkpoint, run, TrainArgs};
use vgg_cuda::Device;
mod common;

fn args(dir: &std::path::Path, steps: u64) -> TrainArgs {
    TrainArgs {
        model: "A".into(),
        width: 0.0625,
        input: 32,
        fc: 16,
        classes: 3,
        data: "synthetic".into(),
        synthetic_len: 24,
        batch: 4,
        steps: Some(steps),
        epochs: 1,
        lr: Some(0.01),
        momentum: 0.9,
        wd: 5e-4,
        dropout: 0.5,
        schedule: "plateau".into(),
        init: "he".into(),
        loss_scale: 1024.0,
        seed: 5,
        device: "emu".into(),
        conv_algo: Some("auto".into()),
        sync_every: 1,
        graph: false,
        workers: Some(0),
        checkpoint_dir: Some(dir.to_path_buf()),
        checkpoint_every: Some(4),
        resume: None,
        weights: None,
        pre_init: None,
        metrics: None,
        quiet: true,
        ..Default::default()
    }
}

/// A fresh folder for test `name`, removed when the test ends.
fn tmpdir(name: &str) -> common::TempDir {
    common::TempDir::new("train", name)
}

/// [`vgg_train`]'s process, whether it succeeded or not.
fn vgg_train_output(dir: &std::path::Path, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["train", "--device", "emu", "--quiet", "--model", "A", "--width", "0.0625", "--input", "32"];
    a.extend(["--fc", "16", "--classes", "3", "--synthetic-len", "24", "--batch", "4", "--workers", "0"]);
    a.extend(["--steps", steps, "--checkpoint-dir", dir.to_str().unwrap()]);
    a.extend(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_vgg")).args(&a).output().unwrap()
}

/// Rewrites the `state` metadata of the checkpoint at `path` with `f` (on its JSON object), as
/// an older build would have written it; the tensors and their checksums stay.
fn edit_state(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    f(state.as_object_mut().unwrap());
    meta.insert("state".into(), state.to_string());
    std::fs::write(path, safetensors::serialize(st.tensors(), &Some(meta)).unwrap()).unwrap();
}

/// `vgg train` on emu (A at 1/16 width, 32x32, 6 steps an epoch) for `steps` steps into the
/// checkpoint folder `dir`, with `extra` arguments; its stdout and stderr, after checking that
/// it succeeded.
fn vgg_train(dir: &std::path::Path, steps: &str, extra: &[&str]) -> (String, String) {
    let out = vgg_train_output(dir, steps, extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn resume_is_bit_identical() {
    // 6 steps an epoch; 8 steps straight vs 4 steps, then a resumed run to 8 (crossing the
    // epoch boundary with validation in between).
    let (d1, d2) = (tmpdir("straight"), tmpdir("resumed"));
    let straight = run(&args(&d1, 8)).unwrap();
    let first = run(&args(&d2, 4)).unwrap();
    let mut a = args(&d2, 8);
    a.resume = Some(String::new());
    let second = run(&a).unwrap();
    let resumed: Vec<(u64, u32)> = first.losses.iter().chain(&second.losses).map(|(s, l)| (*s, l.to_bits())).collect();
    let want: Vec<(u64, u32)> = straight.losses.iter().map(|(s, l)| (*s, l.to_bits())).collect();
    assert_eq!(resumed, want, "losses of the resumed run differ");
    let w1 = checkpoint::load(&d1.join("last.safetensors")).unwrap();
    let w2 = checkpoint::load(&d2.join("last.safetensors")).unwrap();
    assert_eq!(w1.weights, w2.weights);
    assert_eq!(w1.momentum, w2.momentum);
    assert_eq!(w1.state, w2.state);
}

/// A run that tunes its conv plans records them in its checkpoints, and a resume that tunes
/// computes with the recorded plans instead of timing again, so its losses continue the run's
/// bit for bit. The recorded plans here are F(4x4)'s (a run with `--conv-algo winograd4x4`),
/// which timing on emu would not all pick again.
#[test]
fn tuned_resume_keeps_the_recorded_conv_plans() {
    let (d1, d2) = (tmpdir("f4straight"), tmpdir("f4resumed"));
    let f4 = |d: &std::path::Path, steps| TrainArgs { conv_algo: Some("winograd4x4".into()), ..args(d, steps) };
    let straight = run(&f4(&d1, 8)).unwrap();
    let first = run(&f4(&d2, 4)).unwrap();
    let recorded = checkpoint::load(&d2.join("last.safetensors")).unwrap().state.unwrap().conv_plans;
    let f4_passes = recorded.iter().flat_map(|p| p.algos).filter(|a| *a == ConvAlgo::Winograd4x4).count();
    assert!(f4_passes >= 4, "plans recorded: {recorded:?}");
    let tuned = TrainArgs { conv_algo: Some("tune".into()), resume: Some(String::new()), ..args(&d2, 8) };
    let second = run(&tuned).unwrap();
    let bits = |l: &[(u64, f32)]| l.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    let resumed: Vec<_> = bits(&first.losses).into_iter().chain(bits(&second.losses)).collect();
    assert_eq!(resumed, bits(&straight.losses), "losses of the tuned resume differ");
    let [w1, w2] = [&d1, &d2].map(|d| checkpoint::load(&d.join("last.safetensors")).unwrap());
    assert_eq!(w1.weights, w2.weights);
    assert_eq!(w1.state, w2.state, "state, conv plans included");
}

/// Reading the loss only every 3 steps (the others queued, the loss scale's rules on the
/// device) trains the same run: the losses it reads equal the every-step run's at those
/// steps, bit for bit, and the final checkpoint (weights, momenta, scaler state) is the same.
/// So does replaying the steps from captured graphs (--graph), every step or every 3rd read.
#[test]
fn sync_every_n_steps_trains_the_same_run() {
    let (d1, d2, d3, d4) = (tmpdir("sync1"), tmpdir("sync3"), tmpdir("graph1"), tmpdir("graph3"));
    let every = run(&args(&d1, 10)).unwrap();
    let sparse = run(&TrainArgs { sync_every: 3, ..args(&d2, 10) }).unwrap();
    let graphed = run(&TrainArgs { graph: true, ..args(&d3, 10) }).unwrap();
    let graphed3 = run(&TrainArgs { graph: true, sync_every: 3, ..args(&d4, 10) }).unwrap();
    // Read (0-based): 2, 5, 8 (every 3rd), 3, 7 (checkpoints every 4), 5 (epoch end), 9 (the last).
    let steps: Vec<u64> = sparse.losses.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![2, 3, 5, 7, 8, 9], "steps read (0-based)");
    let bits = |r: &vgg_cuda::train::TrainSummary| r.losses.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&graphed), bits(&every), "graph steps read every step");
    assert_eq!(bits(&graphed3), bits(&sparse), "graph steps read every 3rd step");
    for (s, l) in &sparse.losses {
        let want = every.losses.iter().find(|(t, _)| t == s).unwrap().1;
        assert_eq!(l.to_bits(), want.to_bits(), "step {s}: loss");
    }
    let w1 = checkpoint::load(&d1.join("last.safetensors")).unwrap();
    for d in [&d2, &d3, &d4] {
        let w = checkpoint::load(&d.join("last.safetensors")).unwrap();
        assert_eq!(w1.weights, w.weights, "{d:?}");
        assert_eq!(w1.momentum, w.momentum, "{d:?}");
        // Less the epoch's sums for its line, which cover the steps read (as the metrics do).
        let training = |s: &Option<checkpoint::TrainState>| {
            s.clone().map(|s| checkpoint::TrainState { epoch_sums: Default::default(), ..s })
        };
        assert_eq!(training(&w1.state), training(&w.state), "{d:?}");
    }
    let zero = run(&TrainArgs { sync_every: 0, ..args(&tmpdir("sync0"), 2) }).unwrap_err();
    assert!(zero.to_string().contains("--sync-every must be at least 1"), "{zero}");
    let bad = run(&TrainArgs { conv_algo: Some("fastest".into()), ..args(&tmpdir("convbad"), 2) }).unwrap_err();
    assert!(format!("{bad:#}").contains("unknown conv algorithm `fastest`"), "{bad:#}");
}

#[test]
fn checkpoint_errors_name_the_problem() {
    let dir = tmpdir("errors");
    let dev = Device::emu();
    let cfg = VggConfig::small(Arch::A, 0.0625, 32, 16, 3);
    let vgg = Vgg::new(&dev, cfg.clone(), 1, Init::He, 1).unwrap();
    let w = vgg.export_params().unwrap();
    let path = dir.join("w.safetensors");
    checkpoint::save(&path, &w, &[], &cfg, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Round trip, torchvision names and OIHW shapes.
    let l = checkpoint::load(&path).unwrap();
    assert_eq!(l.weights.len(), 22);
    assert!(l.weights.iter().any(|(n, s, _)| n == "features.0.weight" && s == &vec![4, 3, 3, 3]));
    // Truncated.
    let t = dir.join("trunc.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() - 100]).unwrap();
    let e = format!("{:#}", checkpoint::load(&t).unwrap_err());
    assert!(e.contains("trunc.safetensors") && e.contains("not a valid safetensors"), "{e}");
    assert!(e.contains("does not end where the header says"), "{e}");
    // Not a safetensors file at all, and one shorter than a header: said in words, not as the
    // safetensors crate's variant names (HeaderTooLarge, HeaderTooSmall).
    for (name, content, want) in [
        ("text.safetensors", &b"{\"features.0.weight\": [1, 2, 3]}\n"[..], "no plausible header length"),
        ("short.safetensors", &b"abc"[..], "shorter than a safetensors header"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let e = format!("{:#}", checkpoint::load(&p).unwrap_err());
        assert!(e.contains(name) && e.contains(want) && !e.contains("Header"), "{e}");
    }
    // A flipped byte in a tensor's data names that tensor: the one whose data_offsets (from the
    // end of the 8-byte length and the header, as the safetensors crate reads them) hold the
    // byte. The last byte of the data, and one in the middle.
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let data_start = 8 + header_len;
    let holder = |at: usize| -> String {
        let off = at - data_start;
        let tensors = meta.tensors();
        let (name, _) = tensors.iter().find(|(_, t)| (t.data_offsets.0..t.data_offsets.1).contains(&off)).unwrap();
        name.clone()
    };
    let c = dir.join("corrupt.safetensors");
    let mut named = vec![];
    for at in [bytes.len() - 3, data_start + (bytes.len() - data_start) / 2] {
        let mut b = bytes.clone();
        b[at] ^= 0x55;
        std::fs::write(&c, &b).unwrap();
        let e = format!("{:#}", checkpoint::load(&c).unwrap_err());
        let name = holder(at);
        let want = format!("tensor `{name}` is corrupt");
        assert!(e.contains(&want), "byte {at} flipped: the error does not say `{want}`: {e}");
        named.push(name);
    }
    assert_ne!(named[0], named[1], "the two flips should hit two tensors");
    // Another checkpoint format: refused by name, not read by today's layout.
    let f = dir.join("format.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some(checkpoint::FORMAT));
    meta.insert("format".into(), "vgg-cuda-checkpoint-99".into());
    std::fs::write(&f, safetensors::serialize(st.tensors(), &Some(meta.clone())).unwrap()).unwrap();
    let e = format!("{:#}", checkpoint::load(&f).unwrap_err());
    assert!(e.contains("format.safetensors") && e.contains("`vgg-cuda-checkpoint-99`"), "{e}");
    // safetensors' usual `{"format": "pt"}` (a converted torchvision state dict) is not ours: read.
    meta.insert("format".into(), "pt".into());
    std::fs::write(&f, safetensors::serialize(st.tensors(), &Some(meta)).unwrap()).unwrap();
    assert_eq!(checkpoint::load(&f).unwrap().weights.len(), 22);
    // Batch-norm variant.
    let bn = dir.join("bn.safetensors");
    let mut wb = w.clone();
    wb.push(("features.1.running_mean".into(), vec![4], vec![0.0; 4]));
    checkpoint::save(&bn, &wb, &[], &cfg, None).unwrap();
    let e = format!("{:#}", checkpoint::load(&bn).unwrap_err());
    assert!(e.contains("batch-norm") && e.contains("features.1.running_mean"), "{e}");
    // Wrong config: another class count -> the classifier's shape names the tensor.
    let other = VggConfig::small(Arch::A, 0.0625, 32, 16, 7);
    let mut v2 = Vgg::new(&dev, other, 1, Init::He, 1).unwrap();
    let e = v2.import_params(&l.weights).unwrap_err().to_string();
    assert!(e.contains("classifier.6.") && e.contains("[7"), "{e}");
    // Wrong architecture: B's convs sit elsewhere in `features`. By torchvision's cfg lists
    // (M a pool, one index; a conv two, itself and its ReLU) A's conv indices are 0, 3, 6, 8,
    // ..., B's 0, 2, 5, 7, ...; import_params walks the file's tensors in the order
    // checkpoint::load gives them (by name) and names the first that is not one of B's.
    const M: usize = 0;
    let conv_indices = |cfg: &[usize]| {
        let (mut at, mut convs) = (0, vec![]);
        for &c in cfg {
            if c != M {
                convs.push(at);
            }
            at += if c == M { 1 } else { 2 };
        }
        convs
    };
    let a_convs = conv_indices(&[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]);
    let b_convs = conv_indices(&[64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]);
    let index = |n: &str| n.strip_prefix("features.").map(|r| r.split_once('.').unwrap().0.parse::<usize>().unwrap());
    let mut in_file: Vec<usize> = l.weights.iter().filter_map(|t| index(&t.0)).collect();
    in_file.sort();
    in_file.dedup();
    assert_eq!(in_file, a_convs, "the file's conv indices are not A's of the cfg list");
    let first = l.weights.iter().map(|t| t.0.as_str()).find(|n| index(n).is_some_and(|i| !b_convs.contains(&i)));
    let want = format!("tensor `{}` (shape", first.unwrap());
    let mut vb = Vgg::new(&dev, VggConfig::small(Arch::B, 0.0625, 32, 16, 3), 1, Init::He, 1).unwrap();
    let e = vb.import_params(&l.weights).unwrap_err().to_string();
    assert!(
        e.contains(&want) && e.contains("is not a parameter of this model"),
        "the error does not say `{want}`: {e}"
    );
    assert!(checkpoint::config_diff(&cfg, &VggConfig { classes: 7, ..cfg.clone() }).unwrap().contains("classes"));
}

/// A run that ends on an epoch's last step ends that epoch: its line, and a checkpoint at the
/// next epoch's start. One written at an epoch's last step before its end (a --checkpoint-every
/// save, then a crash) resumes into an epoch end without a step of it: its line says so instead
/// of printing a zero loss and rate as if measured.
#[test]
fn resume_at_an_epoch_end_reports_no_train_steps() {
    let dir = tmpdir("epochend");
    let train = |steps: &str, extra: &[&str]| vgg_train(&dir, steps, extra).0;
    // 6 steps an epoch: the first run stops at the epoch's last step.
    let first = train("6", &[]);
    let line = first.lines().find(|l| l.starts_with("epoch 0 step 6:")).unwrap_or_else(|| panic!("{first}"));
    assert!(line.contains("train loss") && line.contains("val loss"), "{line}");
    let path = dir.join("last.safetensors");
    let l = checkpoint::load(&path).unwrap();
    let st = l.state.clone().unwrap();
    assert_eq!((st.step, st.epoch, st.batch_in_epoch), (6, 1, 0));
    // The state a save at step 6 before the epoch's end wrote.
    let mid = checkpoint::TrainState { epoch: 0, batch_in_epoch: 6, ..st };
    checkpoint::save(&path, &l.weights, &l.momentum, l.config.as_ref().unwrap(), Some(&mid)).unwrap();
    let second = train("8", &["--resume"]);
    let line = second.lines().find(|l| l.starts_with("epoch 0 step 6:")).unwrap_or_else(|| panic!("{second}"));
    assert!(line.contains("no train steps read in this process") && line.contains("val loss"), "{line}");
    assert!(!line.contains("img/s") && !line.contains("train loss"), "{line}");
}

/// A resume whose `--conv-algo` gives other plans than the checkpoint recorded says that its
/// losses will not repeat the run's; one that reuses them (tune) does not.
#[test]
fn resume_with_other_conv_plans_says_so() {
    let dir = tmpdir("otherplans");
    let train = |steps: &str, extra: &[&str]| vgg_train(&dir, steps, extra).1;
    let note = "other conv plans than --conv-algo";
    assert!(!train("2", &["--conv-algo", "winograd4x4"]).contains(note));
    let auto = train("3", &["--resume"]);
    assert!(auto.contains(&format!("{note} auto gives")), "{auto}");
    let tuned = train("4", &["--resume", "--conv-algo", "tune"]);
    assert!(tuned.contains("conv plans (tune, from the checkpoint") && !tuned.contains(note), "{tuned}");
}

/// `best.safetensors` is the checkpoint of the first epoch-end validation that reached the run's
/// best top-1 (a later tie does not replace it; the validations of runs stopped mid-epoch by
/// --steps do not compete, since a straight run makes none), complete like `last.safetensors`,
/// and a resumed run keeps beating the best of the whole run, not of its own part.
#[test]
fn best_checkpoint_is_the_first_best_validation() {
    let d = tmpdir("best");
    let metrics = d.0.join("m.jsonl");
    // Without dropout, at this rate, validation improves at the second epoch and then ties (the
    // run's numbers, not the rule: 0.015 since the first layers' dgrad runs the implicit GEMM,
    // whose rounding moved the run that 0.02 gave; the asserts below check it is still that run).
    let with = |steps: u64, resume: bool| TrainArgs {
        metrics: Some(metrics.clone()),
        checkpoint_every: None,
        resume: resume.then(String::new),
        dropout: 0.0,
        lr: Some(0.015),
        ..args(&d, steps)
    };
    // Stopped mid-epoch twice (6 steps an epoch): validations at 9 and 15 besides the epochs'.
    run(&with(9, false)).unwrap();
    run(&with(15, true)).unwrap();
    run(&with(24, true)).unwrap();
    let all: Vec<(u64, f64)> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["eval"] == true)
        .map(|v| (v["step"].as_u64().unwrap(), v["val_top1"].as_f64().unwrap()))
        .collect();
    assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), [6, 9, 12, 15, 18, 24]);
    let evals: Vec<(u64, f64)> = all.iter().copied().filter(|e| e.0 % 6 == 0).collect();
    let top = evals.iter().map(|e| e.1).fold(f64::MIN, f64::max);
    let first_top = evals.iter().find(|e| e.1 == top).unwrap().0;
    // The run this test needs: the best at the second epoch, tied by the third and fourth (a
    // resume that forgot the best would write the tie at 18), and beaten by the mid-epoch
    // validation at 9 (which would then have been written).
    assert_eq!(first_top, 12, "evals {all:?}");
    assert!(evals.last().unwrap().1 == top && all[1].1 > all[0].1, "evals {all:?}");
    let best = checkpoint::load(&d.join("best.safetensors")).unwrap();
    let last = checkpoint::load(&d.join("last.safetensors")).unwrap();
    let (bs, ls) = (best.state.unwrap(), last.state.unwrap());
    assert_eq!((bs.step, bs.best_top1, ls.best_top1), (12, Some(top), Some(top)), "evals {all:?}");
    assert!(!best.momentum.is_empty(), "the best checkpoint is a whole one, resumable");
    assert_ne!(best.weights, last.weights, "evals {all:?}");
    // A branch from the best into a new folder starts its own best there (its first validation).
    let d2 = tmpdir("best-branch");
    let branch =
        TrainArgs { resume: Some(d.join("best.safetensors").display().to_string()), metrics: None, ..with(18, false) };
    run(&TrainArgs { checkpoint_dir: Some(d2.0.clone()), ..branch.clone() }).unwrap();
    let b2 = checkpoint::load(&d2.join("best.safetensors")).unwrap().state.unwrap();
    assert_eq!(b2.step, 18);
    // A folder holding another run's best (and no last) is not resumed into: refused.
    let e = format!("{:#}", run(&TrainArgs { checkpoint_dir: Some(d.0.clone()), ..branch }).unwrap_err());
    assert!(e.contains("last.safetensors: a checkpoint that --resume"), "{e}");
    std::fs::remove_file(d2.join("last.safetensors")).unwrap();
    let resume_last = Some(d.join("last.safetensors").display().to_string());
    let into_d2 =
        TrainArgs { resume: resume_last, checkpoint_dir: Some(d2.0.clone()), metrics: None, ..with(30, false) };
    let e = format!("{:#}", run(&into_d2).unwrap_err());
    assert!(e.contains("best.safetensors: a checkpoint that --resume"), "{e}");
    // A new run into the folder would replace the earlier run's best: refused.
    std::fs::remove_file(d.join("last.safetensors")).unwrap();
    std::fs::remove_file(&metrics).unwrap();
    let e = format!("{:#}", run(&with(6, false)).unwrap_err());
    assert!(e.contains("best.safetensors: an earlier run's best checkpoint"), "{e}");
}

/// A run interrupted after its last checkpoint (here: 8 steps done, the checkpoint at step 4)
/// and resumed reads as the uninterrupted run: the metrics file loses the lines past the
/// checkpoint that the interrupted run logged (they were logged twice), the epoch line averages
/// the whole epoch (the sums of its steps before the checkpoint come with it, where it averaged
/// the resumed steps only), and the done line says which steps this process ran (it said
/// "10 steps" of a process that ran 6).
#[test]
fn an_interrupted_run_resumes_into_one_run() {
    let (s, i) = (tmpdir("uninterrupted"), tmpdir("interrupted"));
    let metrics = |d: &std::path::Path| d.join("m.jsonl").display().to_string();
    let (ms, mi) = (metrics(&s), metrics(&i));
    let straight = vgg_train(&s, "10", &["--metrics", &ms]).0;
    vgg_train(&i, "4", &["--metrics", &mi]);
    let at4 = i.join("at4.safetensors");
    std::fs::copy(i.join("last.safetensors"), &at4).unwrap();
    vgg_train(&i, "8", &["--metrics", &mi, "--resume"]);
    // The run "killed" after step 8: its last checkpoint is step 4's, the metrics go to 8.
    std::fs::copy(&at4, i.join("last.safetensors")).unwrap();
    let (resumed, err) = vgg_train(&i, "10", &["--metrics", &mi, "--resume"]);
    assert!(err.contains("past the checkpoint's step 4"), "{err}");
    // Each line as logged, less the times; losses and accuracies compared exactly.
    let lines = common::metrics_lines;
    // Less the validation of the first run, stopped at step 4 by --steps (kept: that run made it).
    let mut got = lines(&mi);
    let at = got.iter().position(|l| l["eval"] == true && l["step"] == 4).expect("the step-4 validation");
    got.remove(at);
    assert_eq!(got, lines(&ms), "metrics of the resumed run");
    let epoch = |out: &str| {
        let l = out.lines().find(|l| l.starts_with("epoch 0 step 6:")).unwrap_or_else(|| panic!("{out}"));
        l.split(" (").next().unwrap().to_string() // without the images/s
    };
    assert_eq!(epoch(&resumed), epoch(&straight));
    let done = resumed.lines().find(|l| l.starts_with("done:")).unwrap_or_else(|| panic!("{resumed}"));
    assert!(done.starts_with("done: steps 5-10 (6 this run) in "), "{done}");
    assert!(straight.lines().any(|l| l.starts_with("done: 10 steps in ")), "{straight}");
}

/// A resume cuts the metrics file back to its checkpoint's step only when it continues the
/// checkpoint folder's own last.safetensors (the interrupted run): a branch from an older
/// checkpoint into another folder deletes none of the original run's lines (it dropped every
/// line past the branch's step). Logging to the original run's file, which has steps past the
/// branch's, it is refused (it appended, mixing two runs that share step numbers); a file of
/// its own takes it.
#[test]
fn only_a_resume_of_the_folders_last_checkpoint_cuts_the_metrics() {
    let (d, d2) = (tmpdir("cut-own"), tmpdir("cut-branch"));
    let m = d.join("m.jsonl");
    let with = |dir: &std::path::Path, steps, resume: Option<String>| TrainArgs {
        metrics: Some(m.clone()),
        resume,
        ..args(dir, steps)
    };
    run(&with(&d, 4, None)).unwrap();
    let at4 = d.join("at4.safetensors");
    std::fs::copy(d.join("last.safetensors"), &at4).unwrap();
    run(&with(&d, 8, Some(String::new()))).unwrap();
    // The train lines' steps (the validations of runs stopped by --steps left out).
    let steps = || -> Vec<u64> {
        let text = std::fs::read_to_string(&m).unwrap();
        let lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        lines.filter(|v| v["eval"] != true).map(|v| v["step"].as_u64().unwrap()).collect()
    };
    let original = std::fs::read_to_string(&m).unwrap();
    assert_eq!(steps(), (1..=8).collect::<Vec<_>>());
    // The branch: at4 into d2, refused with the original run's file, which keeps every line.
    let e = format!("{:#}", run(&with(&d2, 6, Some(at4.display().to_string()))).unwrap_err());
    assert!(e.contains("already logs steps 5-8") && e.contains("another --metrics"), "{e}");
    assert_eq!(std::fs::read_to_string(&m).unwrap(), original);
    assert!(!d2.join("last.safetensors").exists());
    let m2 = d2.join("branch.jsonl");
    let branch = TrainArgs { metrics: Some(m2.clone()), ..with(&d2, 6, Some(at4.display().to_string())) };
    run(&branch).unwrap();
    assert_eq!(std::fs::read_to_string(&m).unwrap(), original);
    let text = std::fs::read_to_string(&m2).unwrap();
    let branch_steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["eval"] != true)
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(branch_steps, vec![5, 6]);
    // The interrupted run: the folder's own last checkpoint (here step 4's again) cuts past 4.
    std::fs::copy(&at4, d.join("last.safetensors")).unwrap();
    std::fs::write(&m, &original).unwrap();
    run(&with(&d, 5, Some(d.join("last.safetensors").display().to_string()))).unwrap();
    assert_eq!(steps(), (1..=5).collect::<Vec<_>>());
    // A checkpoint saved at the epoch's last step (6 of 6) before its end (a --checkpoint-every
    // save, made here from the end's own by its state): the file logs that step's validation,
    // which a branch would log again (its epoch's end is redone).
    let d3 = tmpdir("cut-epoch-end");
    std::fs::remove_file(&m).unwrap();
    run(&with(&d, 6, Some(String::new()))).unwrap();
    let at6 = d.join("at6.safetensors");
    std::fs::copy(d.join("last.safetensors"), &at6).unwrap();
    edit_state(&at6, |s| {
        assert_eq!(
            (s["step"].as_u64(), s["epoch"].as_u64(), s["batch_in_epoch"].as_u64()),
            (Some(6), Some(1), Some(0))
        );
        s.insert("epoch".into(), 0.into());
        s.insert("batch_in_epoch".into(), 6.into());
    });
    let e = format!("{:#}", run(&with(&d3, 8, Some(at6.display().to_string()))).unwrap_err());
    assert!(e.contains("already logs the validation at step 6"), "{e}");
}

/// A checkpoint whose recorded settings lack a field (written before it was added, as every
/// later field will be for today's checkpoints) still loads and resumes: the missing value is
/// neither refused nor silently taken (stderr names it), and the recorded ones are still
/// compared. A missing field failed the whole state ("corrupt state metadata").
#[test]
fn a_checkpoint_without_a_settings_field_resumes() {
    let d = tmpdir("settings-field");
    vgg_train(&d, "2", &[]);
    let last = d.join("last.safetensors");
    edit_state(&last, |st| {
        st["settings"].as_object_mut().unwrap().remove("wd").unwrap();
    });
    // The recorded settings as JSON (an absent value is null or missing).
    let recorded = || serde_json::to_value(checkpoint::load(&last).unwrap().state.unwrap().settings).unwrap();
    let s = recorded();
    assert!(s["wd"].is_null() && s["momentum"] == 0.9f32 as f64, "{s}");
    let out = vgg_train_output(&d, "3", &["--resume", "--momentum", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--momentum 0.9, this run has --momentum 0.5"), "{err}");
    let err = vgg_train(&d, "3", &["--resume", "--wd", "0.001"]).1;
    assert!(err.contains("last.safetensors does not record the run's --wd (written before"), "{err}");
    assert_eq!(checkpoint::load(&last).unwrap().state.unwrap().step, 3);
    assert_eq!(recorded()["wd"], 0.001f32 as f64);
}

/// A checkpoint of the build before the run's settings and the epoch's sums were recorded (its
/// state has neither) resumes: without --lr under the plateau schedule, whose rate is the
/// checkpoint's, and under the step schedule, whose rates derive from the base rate it does not
/// record, only with --lr (refused without: a guess rescaled the run), the run's own then
/// continuing it; both bit for bit. Under the plateau schedule the base rate is known after all
/// (the current rate times 10 per decay): an explicit --lr rescales from it, so that the run's
/// own --lr leaves a decayed rate as it is (it was ignored without a word, then taken as the
/// current rate, undoing the decays).
#[test]
fn an_older_checkpoint_resumes() {
    let older = |p: &std::path::Path| {
        edit_state(p, |st| {
            st.remove("settings").unwrap();
            st.remove("epoch_sums").unwrap();
        })
    };
    let bits = |l: &[(u64, f32)]| l.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    for (name, schedule) in [("plateau", "plateau"), ("step", "step:1")] {
        let (d1, d2) = (tmpdir(&format!("older-{name}-straight")), tmpdir(&format!("older-{name}")));
        let with = |d: &std::path::Path, steps| TrainArgs { schedule: schedule.into(), ..args(d, steps) };
        let straight = run(&with(&d1, 8)).unwrap();
        let first = run(&with(&d2, 4)).unwrap();
        let last = d2.join("last.safetensors");
        older(&last);
        let resume = |lr| TrainArgs { resume: Some(String::new()), lr, ..with(&d2, 8) };
        let second = if name == "plateau" {
            run(&resume(None)).unwrap()
        } else {
            let e = format!("{:#}", run(&resume(None)).unwrap_err());
            assert!(e.contains("records no base rate") && e.contains("give the run's --lr"), "{e}");
            run(&resume(Some(0.01))).unwrap()
        };
        let resumed: Vec<_> = bits(&first.losses).into_iter().chain(bits(&second.losses)).collect();
        assert_eq!(resumed, bits(&straight.losses), "{schedule}: losses of the resumed run differ");
        let [w1, w2] = [&d1, &d2].map(|d| checkpoint::load(&d.join("last.safetensors")).unwrap());
        assert_eq!((w1.weights, w1.momentum), (w2.weights, w2.momentum), "{schedule}");
        // The plateau run resumed without --lr records the base rate it derived.
        assert_eq!(w1.state.unwrap(), w2.state.unwrap(), "{schedule}");
        if name == "plateau" {
            // A run that has decayed once (0.01 -> 0.001), resumed with its own --lr: the rate
            // stays 0.001; half the base halves it.
            for (steps, given, want) in [(9, 0.01, 0.001), (10, 0.005, 0.0005)] {
                older(&last);
                edit_state(&last, |st| {
                    st.insert("decays".into(), 1.into());
                    st.insert("lr".into(), 0.001f32.into());
                });
                run(&TrainArgs { lr: Some(given), steps: Some(steps), ..resume(None) }).unwrap();
                let st = checkpoint::load(&last).unwrap().state.unwrap();
                assert_eq!(st.step, steps);
                assert!(
                    (st.lr - want).abs() < 1e-9 && st.settings.unwrap().lr == Some(given),
                    "--lr {given}: {}",
                    st.lr
                );
            }
        }
    }
}
