//! `vgg train`'s refusals: options no run can use, outputs an earlier run wrote, paths that
//! cannot be written (all before any work), a resume that does not fit, and a training set
//! of which nothing can be read.

mod common;

use common::{vgg, TempDir};
use std::time::{Duration, Instant};
use vgg_cuda::data::Pca;
use vgg_cuda::train::{run, TrainArgs, DEFAULT_LR};

fn tiny(f: impl FnOnce(&mut TrainArgs)) -> TrainArgs {
    let mut a = TrainArgs {
        device: "emu".into(),
        synthetic_len: 16,
        batch: 4,
        steps: Some(2),
        workers: Some(0),
        quiet: true,
        ..Default::default()
    };
    f(&mut a);
    a
}

fn error_of(a: TrainArgs) -> String {
    format!("{:#}", run(&a).expect_err("the run should have been refused"))
}

/// A run whose every step overflows (a learning rate that blows the weights up at the first
/// update) stops with an error naming the divergence once the loss scale has fallen 16x below
/// 1, instead of skipping every step to the end and printing "done" with exit status 0.
#[test]
fn a_diverging_run_stops_with_an_error() {
    let e = error_of(tiny(|a| (a.lr, a.steps, a.loss_scale) = (Some(1e30), Some(40), 4.0)));
    assert!(e.contains("training diverged at step") && e.contains("--lr"), "{e}");
    let step: u64 = e["training diverged at step ".len()..].split(':').next().unwrap().parse().unwrap();
    // 4 -> below 1/16 takes 7 halvings: the steps after the first update (which applied).
    assert!((7..=10).contains(&step), "stopped at step {step}: {e}");
    // A sane run is untouched by the check.
    run(&tiny(|a| a.steps = Some(6))).unwrap();
}

#[test]
fn options_no_run_can_use_are_refused_by_name() {
    for (f, want) in [
        (Box::new(|a: &mut TrainArgs| a.lr = Some(-1.0)) as Box<dyn Fn(&mut TrainArgs)>, "--lr -1"),
        (Box::new(|a| a.lr = Some(f32::NAN)), "--lr NaN"),
        (Box::new(|a| a.lr = Some(f32::INFINITY)), "--lr inf"),
        (Box::new(|a| a.momentum = 1.5), "--momentum 1.5"),
        (Box::new(|a| a.loss_scale = 0.0), "--loss-scale 0: the initial loss scale"),
        (Box::new(|a| a.loss_scale = f32::INFINITY), "--loss-scale inf"),
        // The network's input, not the data pipeline's "crop size 0", named by our options
        // (the model's own error names its fields only).
        (Box::new(|a| a.input = 0), "the model of --model A --input 0 --width"),
        (Box::new(|a| a.input = 0), "VGG input 0 is too small"),
        (Box::new(|a| a.width = 0.0), "--width 0 --fc 64 --dropout 0, --classes 4: invalid shape: VGG width"),
        (Box::new(|a| a.fc = 0), "--fc 0 --dropout 0, --classes 4: invalid shape: VGG FC width"),
        (Box::new(|a| a.dropout = 1.0), "--dropout 1, --classes 4: VGG dropout 1 is not in [0, 1)"),
        (Box::new(|a| a.wd = -1e-4), "--wd -0.0001"),
        (Box::new(|a| a.classes = 1), "--classes 1"),
        // Refused before the synthetic set names a terabyte of classes (the process aborted).
        (Box::new(|a| a.classes = 1_000_000_000_000), "--classes 1000000000000: invalid shape: VGG `classes`"),
        // A folder's classes come with its data: a model refused before it is scanned, named
        // without --classes (which only the synthetic set reads).
        (
            Box::new(|a| (a.data, a.input) = ("/nonexistent/folder".into(), 0)),
            "--dropout 0: invalid shape: VGG input 0",
        ),
        // A typo is reported before the data are read or the device is opened.
        (
            Box::new(|a| {
                (a.conv_algo, a.data, a.device) =
                    (Some("fastest".into()), "/nonexistent/folder".into(), "cuda:9".into())
            }),
            "--conv-algo: unknown conv algorithm `fastest`",
        ),
        // Each image costs an index up front: this one aborted the process asking for 800 GB.
        (Box::new(|a| a.synthetic_len = 100_000_000_000), "--synthetic-len 100000000000: at most 100000000 images"),
        // Named as the option's value, not as the file system's "No such file or directory".
        (Box::new(|a| a.data = "/no/such/data".into()), "--data `/no/such/data`: no such folder"),
        (Box::new(|a| a.data = String::new()), "--data ``: no such folder"),
        (Box::new(|a| a.steps = Some(0)), "nothing to train"),
        (Box::new(|a| (a.steps, a.epochs) = (None, 0)), "nothing to train"),
        (Box::new(|a| a.checkpoint_every = Some(0)), "--checkpoint-every"),
        // Without a folder the run wrote no checkpoint and said nothing.
        (Box::new(|a| a.checkpoint_every = Some(5)), "--checkpoint-every 5 needs --checkpoint-dir"),
        (Box::new(|a| (a.resume, a.weights) = (Some("x".into()), Some("x".into()))), "--resume takes every weight"),
    ] {
        let e = error_of(tiny(f));
        assert!(e.contains(want), "{want}: {e}");
    }
    // A negative value parses as a value, so the error is ours, not the parser's.
    let out = vgg(&["train", "--device", "emu", "--quiet", "--lr", "-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--lr -1: the learning rate must be positive"), "{err}");
    // The same for every --width (clap used to read `-1` as an unknown flag and say nothing of
    // the width), in each command that takes one, before anything is printed.
    for args in [
        &["train", "--device", "emu", "--quiet", "--width", "-1"][..],
        &["info", "--model", "D", "--width", "-1"],
        &["bench", "train", "--device", "emu", "--width", "-1"],
    ] {
        let out = vgg(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("width multiplier -1 must be > 0"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed before refusing: {}", String::from_utf8_lossy(&out.stdout));
    }
    // The same for every option: clap read `--batch -4` as the option without a value and an
    // unknown flag `-4` ("unexpected argument '-4' found"), naming neither.
    for (args, want) in [
        (&["train", "--device", "emu", "--quiet", "--batch", "-4"][..], "invalid value '-4' for '--batch <BATCH>'"),
        (&["train", "--device", "emu", "--quiet", "--epochs", "-1"], "invalid value '-1' for '--epochs <EPOCHS>'"),
        (&["info", "--model", "D", "--batch", "-1"], "--batch: `-1` is not a positive batch size"),
        (&["bench", "data", "--synthetic", "--workers", "-1"], "--workers `-1`: expected counts >= 1"),
        // Words clap's negative-number rule does not cover: an exponent, a list, a leading dot.
        (&["train", "--device", "emu", "--quiet", "--lr", "-1e-3"], "--lr -0.001: the learning rate must be positive"),
        (&["train", "--device", "emu", "--quiet", "--lr", "-.5"], "--lr -0.5: the learning rate must be positive"),
        (&["train", "--device", "emu", "--quiet", "--mean", "-1,2,3"], "--mean `-1,2,3`: expected three numbers"),
        (&["info", "--model", "D", "--batch", "-1,64"], "--batch: `-1` is not a positive batch size"),
        (&["bench", "data", "--synthetic", "--workers", "-1,2"], "--workers `-1,2`: expected counts >= 1"),
        // After a flag, such a word is named as the flag's unexpected value.
        (&["train", "--device", "emu", "--quiet", "-5"], "unexpected value '-5' for '--quiet'"),
    ] {
        let out = vgg(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// A run refused after its outputs were checked (here: a --resume file that is no checkpoint,
/// read only after the data) leaves no trace: the --checkpoint-dir folders the check created
/// go again, while a folder that already existed stays.
#[test]
fn a_failed_run_removes_the_empty_folders_it_created() {
    let t = TempDir::new("train-cli", "created");
    let bad = t.0.join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let fail = |dir: &std::path::Path| {
        let out = vgg(&[
            "train",
            "--device",
            "emu",
            "--quiet",
            "--steps",
            "1",
            "--synthetic-len",
            "16",
            "--batch",
            "4",
            "--resume",
            bad.to_str().unwrap(),
            "--checkpoint-dir",
            dir.to_str().unwrap(),
        ]);
        let se = String::from_utf8_lossy(&out.stderr).into_owned();
        // The load of the checkpoint, which comes after the output checks made the folders.
        assert!(!out.status.success() && se.contains("bad.safetensors: not a valid safetensors file"), "{se}");
    };
    let new = t.0.join("new").join("deeper");
    fail(&new);
    assert!(!t.0.join("new").exists(), "the created folders were left behind");
    // Folders that were there before the run are not the run's to remove.
    let kept = t.0.join("kept");
    std::fs::create_dir(&kept).unwrap();
    fail(&kept);
    assert!(kept.is_dir());
}

#[test]
fn outputs_are_checked_before_training_and_an_earlier_run_is_not_overwritten() {
    let t = TempDir::new("train-cli", "outputs");
    let file = t.0.join("afile");
    std::fs::write(&file, b"x").unwrap();
    // A checkpoint folder under a file: refused before the first step (no "train VGG" line).
    let under = file.join("sub");
    let out =
        vgg(&["train", "--device", "emu", "--quiet", "--steps", "1", "--checkpoint-dir", under.to_str().unwrap()]);
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && se.contains("afile is a file, not a folder"), "{se}");
    assert!(!so.contains("train VGG"), "{so}");

    let ck = t.0.join("ck");
    run(&tiny(|a| a.checkpoint_dir = Some(ck.clone()))).unwrap();
    let last = ck.join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    let e = error_of(tiny(|a| a.checkpoint_dir = Some(ck.clone())));
    assert!(e.contains("last.safetensors: an earlier run's checkpoint") && e.contains("--resume"), "{e}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    let metrics = t.0.join("m.jsonl");
    std::fs::write(&metrics, b"{}\n").unwrap();
    let e = error_of(tiny(|a| a.metrics = Some(metrics.clone())));
    assert!(e.contains("m.jsonl: an earlier run's metrics file"), "{e}");
    assert_eq!(std::fs::read(&metrics).unwrap(), b"{}\n");
    // A folder is named as one, not as an earlier run's metrics file.
    let e = error_of(tiny(|a| a.metrics = Some(t.0.clone())));
    assert!(e.contains("is a folder, not a file") && !e.contains("earlier run"), "{e}");

    // A resume with another batch size is refused (--keep-last too where the set has a short
    // batch: tests/train_data.rs; these 16 images make whole batches of 4, so it changes
    // nothing and is accepted); one already past --steps has nothing to do.
    let resume = |f: &dyn Fn(&mut TrainArgs)| {
        tiny(|a| {
            (a.checkpoint_dir, a.resume) = (Some(ck.clone()), Some(String::new()));
            f(a)
        })
    };
    let e = error_of(resume(&|a| a.batch = 2));
    assert!(e.contains("written by a run with --batch 4, this run has --batch 2"), "{e}");
    run(&resume(&|a| a.keep_last = true)).unwrap();
    let s = run(&resume(&|a| a.steps = Some(1))).unwrap();
    assert!(s.steps == 2 && s.losses.is_empty(), "{s:?}");
    assert_eq!(std::fs::read(&last).unwrap(), before);

    // A bare --resume into a folder without a checkpoint is refused before the data are read
    // (here a folder that does not exist, which would otherwise be the error).
    let e = error_of(tiny(|a| {
        (a.checkpoint_dir, a.resume, a.data) = (Some(t.0.join("empty")), Some(String::new()), "/no/such/data".into())
    }));
    assert!(e.contains("--resume: ") && e.contains("empty/last.safetensors does not exist"), "{e}");

    // Resuming another run's checkpoint into this folder would replace this run's: refused.
    // Naming this folder's own file (by any path) is a plain resume.
    let other = t.0.join("other.safetensors");
    std::fs::copy(&last, &other).unwrap();
    let e = error_of(resume(&|a| a.resume = Some(other.display().to_string())));
    assert!(e.contains("last.safetensors: a checkpoint that --resume") && e.contains("nothing was overwritten"), "{e}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    // A --resume file that does not exist (a typo) is named as missing, not as another run's
    // checkpoint about to be overwritten.
    let typo = ck.join("lst.safetensors").display().to_string();
    let e = error_of(resume(&|a| a.resume = Some(typo.clone())));
    assert!(e.contains(&format!("--resume {typo}: the checkpoint cannot be read")), "{e}");
    assert!(e.contains("No such file") && !e.contains("overwrite"), "{e}");
    let own = ck.join(".").join("last.safetensors").display().to_string();
    run(&resume(&|a| (a.resume, a.steps) = (Some(own.clone()), Some(3)))).unwrap();
    assert_ne!(std::fs::read(&last).unwrap(), before, "the resumed run wrote its checkpoint");
}

#[test]
fn a_training_set_of_unreadable_files_is_an_error_not_an_endless_loop() {
    let t = TempDir::new("train-cli", "unreadable");
    for class in ["a", "b"] {
        std::fs::create_dir_all(t.0.join(class)).unwrap();
        std::fs::write(t.0.join(class).join("x.jpg"), b"not a JPEG").unwrap();
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["train", "--device", "emu", "--quiet", "--batch", "1", "--epochs", "1"])
        .args(["--data", t.0.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("vgg train did not end in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("no image of the training set could be read (2 skipped)"), "{err}");
}

/// A `--stats` file with values `vgg stats` never writes is refused naming the file and the
/// field: a mean of 300 or 1e30 was subtracted without a word (the loss stuck at ln 4, steps
/// skipped), a negative PCA eigenvalue fed the colour shift.
#[test]
fn a_stats_file_with_impossible_values_is_refused() {
    let t = TempDir::new("train-cli", "stats");
    let good = serde_json::json!({
        "images": 4, "skipped": 0, "size": 256, "mean": [120.0, 110.0, 100.0], "std": [60.0, 58.0, 57.0],
        "cov": [[0.05, 0.0, 0.0], [0.0, 0.05, 0.0], [0.0, 0.0, 0.05]],
        "pca": {"eigval": [0.05, 0.05, 0.05], "eigvec": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]},
        "classes": ["a", "b"],
    });
    let path = t.0.join("stats.json");
    let pca =
        |eigval: serde_json::Value, eigvec: serde_json::Value| serde_json::json!({"eigval": eigval, "eigvec": eigvec});
    let unit = serde_json::json!([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    // One bad value a case, so that each rule is what refuses its case.
    let mut failed = vec![];
    for (field, value, want) in [
        (
            "mean",
            serde_json::json!([-5.0, 110.0, 100.0]),
            "mean [-5.0, 110.0, 100.0]: expected three values from 0 to 255",
        ),
        ("mean", serde_json::json!([120.0, 300.0, 100.0]), "mean [120.0, 300.0, 100.0]"),
        ("mean", serde_json::json!([120.0, 110.0, 1e30]), "mean [120.0, 110.0, 1e30]"),
        ("std", serde_json::json!([-1.0, 0.0, 0.0]), "std [-1.0, 0.0, 0.0]"),
        ("pca", pca(serde_json::json!([-1.0, 0.0, 0.0]), unit.clone()), "pca eigval [-1.0, 0.0, 0.0]"),
        // Variances of RGB in 0..1 units sum to at most 0.75: 1e30 was accepted, and so was
        // 0.5 twice.
        ("pca", pca(serde_json::json!([1e30, 0.0, 0.0]), unit.clone()), "pca eigval [1e30, 0.0, 0.0]"),
        ("pca", pca(serde_json::json!([0.5, 0.5, 0.0]), unit.clone()), "pca eigval [0.5, 0.5, 0.0]"),
        // Eigenvectors of another length scale the shift: only finiteness was checked.
        (
            "pca",
            pca(
                serde_json::json!([0.05, 0.05, 0.05]),
                serde_json::json!([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            ),
            "column 0 has length 2",
        ),
        (
            "pca",
            pca(
                serde_json::json!([0.05, 0.05, 0.05]),
                serde_json::json!([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
            ),
            "column 2 has length 0",
        ),
    ] {
        let mut v = good.clone();
        v[field] = value;
        std::fs::write(&path, v.to_string()).unwrap();
        let r = run(&tiny(|a| (a.stats, a.color_shift, a.steps) = (Some(path.clone()), Some(0.1), Some(1))));
        match r {
            Err(e) if format!("{e:#}").contains("stats.json") && format!("{e:#}").contains(want) => {}
            Err(e) => failed.push(format!("{want}: {e:#}")),
            Ok(_) => failed.push(format!("{want}: accepted")),
        }
    }
    // Every case reported, not only the first that fails.
    assert!(failed.is_empty(), "{failed:#?}");
    // `vgg stats` of grey images: a rank-1 covariance whose smallest eigenvalue the Jacobi
    // rotations leave just below 0 (measured -4e-18); that file is the command's own output.
    let mut grey = good.clone();
    grey["pca"]["eigval"] = serde_json::json!([0.1146, 0.0, -4.0e-18]);
    std::fs::write(&path, grey.to_string()).unwrap();
    run(&tiny(|a| (a.stats, a.color_shift, a.steps) = (Some(path.clone()), Some(0.1), Some(1)))).unwrap();
    // Black-and-white images (R = G = B, half 0, half 1): all the variance, 0.75, lies on one
    // component, the most a file can hold; `vgg stats`' decomposition of their covariance.
    let bw_pca = Pca::from_covariance([[0.25; 3]; 3]);
    assert!((bw_pca.eigval[0] - 0.75).abs() < 1e-6, "{bw_pca:?}");
    let mut bw = good.clone();
    (bw["cov"], bw["pca"]) = (serde_json::to_value([[0.25; 3]; 3]).unwrap(), serde_json::to_value(bw_pca).unwrap());
    std::fs::write(&path, bw.to_string()).unwrap();
    run(&tiny(|a| (a.stats, a.color_shift, a.steps) = (Some(path.clone()), Some(0.1), Some(1)))).unwrap();
}

/// Mean-only inputs (pixels with a std near 60) with an init that expects unit variance get a
/// warning up front, since such runs tend to diverge; the paper's pairing (--init paper) and
/// the default normalisation (mean and std) do not.
#[test]
fn mean_only_inputs_with_a_unit_variance_init_are_warned_about() {
    let warned = |extra: &[&str]| {
        let mut args = vec!["train", "--device", "emu", "--quiet", "--synthetic-len", "8"];
        args.extend(["--batch", "4", "--workers", "0"]);
        args.extend(extra);
        if !extra.contains(&"--steps") {
            args.extend(["--steps", "1"]);
        }
        let out = vgg(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        err.contains("expects unit-variance inputs")
    };
    assert!(warned(&["--mean", "120,110,100"]));
    assert!(warned(&["--mean", "120,110,100", "--init", "glorot"]));
    assert!(!warned(&["--mean", "120,110,100", "--init", "paper"]));
    assert!(!warned(&[]));
    // Weights that come from a file (a resume, --weights) are not the init's: no warning.
    let t = TempDir::new("train-cli", "mean-only");
    let ck = t.0.to_str().unwrap();
    assert!(warned(&["--mean", "120,110,100", "--checkpoint-dir", ck]));
    assert!(!warned(&["--mean", "120,110,100", "--checkpoint-dir", ck, "--resume", "--steps", "2"]));
    let last = t.0.join("last.safetensors");
    assert!(!warned(&["--mean", "120,110,100", "--weights", last.to_str().unwrap()]));
}

/// A safetensors file with no metadata holding `tensors` (name, F32 values, 1-d).
fn write_safetensors(path: &std::path::Path, tensors: &[(&str, &[f32])]) {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, v)| (n.to_string(), TensorView::new(Dtype::F32, vec![v.len()], bytemuck::cast_slice(v)).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// A valid safetensors file with no VGG weights in it (no tensors at all, or only other
/// names) given to --weights or --pre-init is refused as such, naming the option and the
/// file, as `vgg eval` says "not a VGG state dict": it failed as a shape error about one
/// missing parameter ("invalid shape: tensor `features.0.weight` appears 0 times").
#[test]
fn weights_of_no_vgg_are_refused_as_such() {
    let t = TempDir::new("train-cli", "no-vgg-weights");
    let empty = t.0.join("empty.safetensors");
    write_safetensors(&empty, &[]);
    let other = t.0.join("other.safetensors");
    write_safetensors(&other, &[("encoder.weight", &[1.0, 2.0]), ("module.features.0.bias", &[0.5])]);
    for (file, why) in
        [(&empty, "(it holds no tensors)"), (&other, "it holds `encoder.weight`, `module.features.0.bias`")]
    {
        for opt in ["--weights", "--pre-init"] {
            let f = file.to_str().unwrap();
            let out = vgg(&["train", "--device", "emu", "--quiet", "--steps", "1", opt, f]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{opt} {f}: {:?}: {err}", out.status);
            let want = format!("error: {opt} {f}: the file holds no VGG weights");
            assert!(err.starts_with(&want), "{opt} {f}: the error is not `{want}...`: {err}");
            assert!(err.contains(why), "{opt} {f}: the error does not say `{why}`: {err}");
            assert!(!err.contains("invalid shape"), "{opt} {f}: {err}");
        }
    }
}

/// A run holds its --checkpoint-dir until it ends: a second run into the folder meanwhile (a
/// new one, which found no checkpoint yet to refuse, or a resume) is refused naming the folder
/// and the holder's pid, instead of both running and the later one's files replacing the
/// earlier one's. The lock goes when the run ends, on an error too; one left by a run that was
/// killed is taken over with a notice.
#[test]
fn a_checkpoint_folder_in_use_by_another_run_is_refused() {
    use vgg_cuda::train::lock::{RunLock, LOCK_FILE};
    let t = TempDir::new("train-cli", "locked");
    let ck = t.0.join("ck");
    run(&tiny(|a| a.checkpoint_dir = Some(ck.clone()))).unwrap();
    let lock_file = ck.join(LOCK_FILE);
    assert!(!lock_file.exists(), "the run left its lock");
    let cli = |dir: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["train", "--device", "emu", "--quiet", "--synthetic-len", "16", "--batch", "4"];
        args.extend(["--workers", "0", "--checkpoint-dir", dir.to_str().unwrap()]);
        args.extend(extra);
        let out = vgg(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // This process stands for the other run: a resume and a new run into a fresh folder.
    let fresh = t.0.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let before = std::fs::read(ck.join("last.safetensors")).unwrap();
    for (dir, extra) in [(&ck, &["--resume", "--steps", "4"][..]), (&fresh, &["--steps", "2"])] {
        let held = RunLock::acquire(dir).unwrap();
        let (ok, err) = cli(dir, extra);
        let want =
            format!("{}: another run (pid {}) is using this checkpoint folder", dir.display(), std::process::id());
        assert!(!ok && err.contains(&want), "{extra:?}: {err}");
        // In this process too (the lock is the open file's, not the process's).
        let e = error_of(tiny(|a| (a.checkpoint_dir, a.steps) = (Some(dir.to_path_buf()), Some(4))));
        assert!(e.contains("is using this checkpoint folder"), "{e}");
        drop(held);
        assert!(!dir.join(LOCK_FILE).exists());
    }
    assert_eq!(std::fs::read(ck.join("last.safetensors")).unwrap(), before, "a refused run wrote");
    assert!(std::fs::read_dir(&fresh).unwrap().next().is_none(), "a refused run wrote into the fresh folder");
    // A run refused after taking the lock frees it.
    let (ok, err) = cli(&ck, &["--resume", "--steps", "4", "--seed", "9"]);
    assert!(!ok && err.contains("--seed 9") && !lock_file.exists(), "{err}");
    // A lock left by a run that ended without removing it (the pid of a process that has exited).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&lock_file, format!("{}\n", gone.id())).unwrap();
    let (ok, err) = cli(&ck, &["--resume", "--steps", "4"]);
    assert!(ok && err.contains(&format!("taking over the lock of run pid {}", gone.id())), "{err}");
    assert!(!lock_file.exists());
}

/// A resume that changes an option shaping the run is refused naming the option, the run's
/// value and the given one, as --seed and --batch are: --momentum and --wd were applied without
/// a word, and another --synthetic-len trained on another data set. --lr may change: the
/// schedule's rates are scaled by new / old from the checkpoint on, and stderr says so (it was
/// ignored without a word under the plateau schedule).
#[test]
fn a_resume_with_other_settings_is_refused_by_name_except_lr() {
    let t = TempDir::new("train-cli", "settings");
    let ck = t.0.join("ck");
    run(&tiny(|a| a.checkpoint_dir = Some(ck.clone()))).unwrap();
    let resume = |f: &dyn Fn(&mut TrainArgs)| {
        tiny(|a| {
            (a.checkpoint_dir, a.resume, a.steps) = (Some(ck.clone()), Some(String::new()), Some(3));
            f(a)
        })
    };
    let before = std::fs::read(ck.join("last.safetensors")).unwrap();
    for (f, want) in [
        (
            Box::new(|a: &mut TrainArgs| a.momentum = 0.0) as Box<dyn Fn(&mut TrainArgs)>,
            "--momentum 0.9, this run has --momentum 0",
        ),
        (Box::new(|a| a.wd = 0.1), "--wd 0.0005, this run has --wd 0.1"),
        (Box::new(|a| a.bias_decay = true), "written by a run without --bias-decay, this run is with --bias-decay"),
        (Box::new(|a| a.synthetic_len = 32), "--synthetic-len 16, this run has --synthetic-len 32"),
        (Box::new(|a| a.schedule = "cosine".into()), "--schedule plateau, this run has --schedule cosine"),
        (Box::new(|a| a.init = "glorot".into()), "--init he, this run has --init glorot"),
        (Box::new(|a| a.loss_scale = 64.0), "--loss-scale 1024, this run has --loss-scale 64"),
        (Box::new(|a| a.scale = Some("40".into())), "--scale 32, this run has --scale 40"),
        (Box::new(|a| a.color_shift = Some(0.1)), "--color-shift 0, this run has --color-shift 0.1"),
        (Box::new(|a| a.test_scale = Some(40)), "--test-scale 32, this run has --test-scale 40"),
    ] {
        let e = error_of(resume(&*f));
        assert!(e.contains("last.safetensors: written by a run with") || e.contains("--bias-decay"), "{want}: {e}");
        assert!(e.contains(want), "{want}: {e}");
    }
    assert_eq!(std::fs::read(ck.join("last.safetensors")).unwrap(), before, "a refused resume wrote");
    // The same schedule spelled otherwise is the run's.
    run(&resume(&|a| a.schedule = "plateau:1".into())).unwrap();
    let out = vgg(&[
        "train",
        "--device",
        "emu",
        "--quiet",
        "--synthetic-len",
        "16",
        "--batch",
        "4",
        "--workers",
        "0",
        "--steps",
        "4",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--resume",
        "--lr",
        "0.5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let note = format!("note: --lr 0.5 replaces the run's base rate {DEFAULT_LR}");
    assert!(out.status.success() && err.contains(&note), "{err}");
    let st = vgg_cuda::train::checkpoint::load(&ck.join("last.safetensors")).unwrap().state.unwrap();
    assert!((st.lr - 0.5).abs() < 1e-6 && st.settings.as_ref().unwrap().lr == Some(0.5), "{st:?}");
    assert!(err.contains("with every rate scaled by"), "{err}");
    // A cosine run resumed with more steps: its curve's new length is said.
    let ck2 = t.0.join("ck2");
    let cos = ["train", "--device", "emu", "--quiet", "--synthetic-len", "16", "--batch", "4", "--workers", "0"];
    let cos = [&cos[..], &["--schedule", "cosine", "--checkpoint-dir", ck2.to_str().unwrap()]].concat();
    assert!(vgg(&[&cos[..], &["--steps", "2"]].concat()).status.success());
    let out = vgg(&[&cos[..], &["--steps", "4", "--resume"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("cosine schedule now anneals over 4 steps, not the run's 2"), "{err}");
}

/// A resume without --lr keeps the run's base rate: --lr's default is a new run's, and took its
/// place, doubling every rate of a run started with half of it (the step schedule's here,
/// computed from the base rate at every step).
#[test]
fn a_resume_without_lr_keeps_the_runs_rate() {
    let t = TempDir::new("train-cli", "keep-lr");
    let half = DEFAULT_LR / 2.0;
    let with = |dir: &str, steps, lr, resume: bool| {
        tiny(|a| {
            (a.checkpoint_dir, a.steps, a.lr) = (Some(t.0.join(dir)), Some(steps), lr);
            (a.schedule, a.resume) = ("step:1".into(), resume.then(String::new));
        })
    };
    run(&with("straight", 3, Some(half), false)).unwrap();
    run(&with("resumed", 2, Some(half), false)).unwrap();
    run(&with("resumed", 3, None, true)).unwrap();
    let load = |dir: &str| vgg_cuda::train::checkpoint::load(&t.0.join(dir).join("last.safetensors")).unwrap();
    let (s, r) = (load("straight"), load("resumed"));
    assert_eq!(r.state.as_ref().unwrap().settings.as_ref().unwrap().lr, Some(half));
    assert!(s.weights == r.weights && s.state == r.state, "{:?} vs {:?}", s.state, r.state);
}

/// `--metrics /dev/stderr` streams the JSON lines there: it was refused as "an earlier run's
/// metrics file" (the device exists), and plots would have gone next to it, into /dev.
#[test]
fn metrics_may_stream_to_stderr() {
    let args = ["train", "--device", "emu", "--quiet", "--synthetic-len", "8", "--batch", "4", "--workers", "0"];
    let out = vgg(&[&args[..], &["--steps", "2", "--metrics", "/dev/stderr"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = err.lines().filter(|l| l.starts_with('{') && l.contains("\"step\"")).count();
    assert!(lines >= 2, "no metrics lines on stderr: {err}");
    // With stderr redirected to a file that holds earlier lines (where /dev/stderr leads): a
    // new run is not refused as that file's run, and a resume neither cuts nor reads it.
    let dir = TempDir::new("train-cli", "metrics-stream");
    let log = dir.0.join("log");
    std::fs::write(&log, "EARLIER\n").unwrap();
    let ck = dir.0.join("ck");
    for (steps, extra) in [("2", &[][..]), ("3", &["--resume"][..])] {
        let err = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"));
        cmd.args(args).args(["--steps", steps, "--metrics", "/dev/stderr", "--checkpoint-dir", ck.to_str().unwrap()]);
        let status = cmd.args(extra).stderr(err).status().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success() && text.starts_with("EARLIER\n"), "{extra:?}: {text}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("EARLIER").count(), 1, "the log was read back into itself: {text}");
    // The metrics did arrive there: steps 1-2, then the resume's step 3.
    let steps: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("eval").is_none())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, [1, 2, 3], "{text}");
}
