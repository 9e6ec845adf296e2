//! `vgg train`'s data options on an ImageFolder: the paper's scale jittering, the colour
//! shift, mean subtraction from `vgg stats` or given, and unreadable images (skipped and
//! counted, their batch still trained; an error with --strict).

mod common;

use common::{vgg, TempDir};
use image::{Rgb, RgbImage};
use std::path::Path;
use vgg_cuda::data::{DatasetStats, Scale};
use vgg_cuda::train::{checkpoint, data, TrainArgs};

/// Two classes of four 40x30 PNGs (a red and a blue gradient), plus `bad` non-images in
/// class a.
fn folder(t: &TempDir, bad: usize) -> String {
    for (class, c) in [("a", 0usize), ("b", 2)] {
        std::fs::create_dir_all(t.0.join(class)).unwrap();
        for i in 0..4u32 {
            let img = RgbImage::from_fn(40, 30, |x, y| {
                let mut p = [40u8; 3];
                p[c] = (100 + 3 * x + y + 10 * i) as u8;
                Rgb(p)
            });
            img.save(t.0.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    for i in 0..bad {
        std::fs::write(t.0.join("a").join(format!("bad{i}.jpg")), b"not a JPEG").unwrap();
    }
    t.0.to_str().unwrap().to_string()
}

/// A tiny run on emu: 32x32 crops, batch 3, one epoch.
fn run_args<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--device", "emu", "--data", dir, "--batch", "3", "--epochs", "1", "--quiet"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn an_unreadable_image_is_counted_and_its_batch_still_trains() {
    let t = TempDir::new("train-data", "bad");
    let dir = folder(&t, 1);
    let out = vgg(&run_args(&dir, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Nine files, batch 3: three batches an epoch. The one holding bad0.jpg is filled up
    // with its two readable images and trained, not dropped.
    assert!(stdout.contains("epoch 0 step 3:"), "{stdout}");
    assert!(stdout.contains("1 unreadable training image skipped"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad0.jpg"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("no image of class"));

    let out = vgg(&run_args(&dir, &["--strict"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad0.jpg") && !err.contains("panicked"), "{err}");
}

/// A class whose every file is unreadable trains as absent: the epoch's end says so by name, since
/// the per-file warnings do not. A run stopped mid-epoch does not (it has no epoch end).
#[test]
fn a_class_with_no_readable_image_is_named_at_the_epoch_end() {
    let t = TempDir::new("train-data", "unread-class");
    let dir = folder(&t, 0);
    let bad = |class: &str| {
        std::fs::create_dir(t.0.join(class)).unwrap();
        for i in 0..2 {
            std::fs::write(t.0.join(class).join(format!("bad{i}.png")), b"not a PNG").unwrap();
        }
    };
    let warning = |extra: &[&str]| {
        let out = vgg(&run_args(&dir, extra));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr.lines().find(|l| l.contains("no image of")).map(str::to_string)
    };
    // Ten files at batch 3: --keep-last trains the last one too, so both bad files are read.
    bad("c");
    let want = "warning: epoch 0: no image of class c could be read (2 unreadable training images skipped): the \
                model trained on none of it this epoch";
    assert_eq!(warning(&["--keep-last"]).as_deref(), Some(want));
    assert_eq!(warning(&["--keep-last", "--steps", "2"]), None);
    // Twelve files: four full batches.
    bad("d");
    let want = "warning: epoch 0: no image of classes c, d could be read (4 unreadable training images skipped): \
                the model trained on none of them this epoch";
    assert_eq!(warning(&[]).as_deref(), Some(want));
}

#[test]
fn a_filled_batch_repeats_its_own_images_in_turn() {
    let b = vgg_cuda::data::HostBatch { images: vec![1, 1, 2, 2], labels: vec![7, 8], n: 2, ..Default::default() };
    let (images, labels) = data::fill(&b, 5);
    assert_eq!(images, [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]);
    assert_eq!(labels, [7, 8, 7, 8, 7]);
}

fn args(data: &str, f: impl FnOnce(&mut TrainArgs)) -> TrainArgs {
    let mut a = TrainArgs { data: data.into(), device: "emu".into(), ..Default::default() };
    f(&mut a);
    a
}

#[test]
fn scale_colour_shift_and_mean_options_reach_the_transforms() {
    let stats = DatasetStats { mean: [10.0, 20.0, 30.0], ..vgg_cuda::data::stats::of_pixels(&[0, 0, 0, 255, 0, 0]) };
    // ImageFolder defaults: S = 8/7 of the crop, Q = S, ImageNet's PCA shift of 0.1,
    // torchvision's mean and std.
    let a = args("dir", |_| {});
    let (tr, te) = data::transforms(&a, None).unwrap();
    assert_eq!((tr.scale, tr.crop, te.scale, te.crop), (Scale::Fixed(36), 32, 36, Some(32)));
    assert_eq!((tr.color_shift, tr.color_std), (Some(vgg_cuda::data::Pca::IMAGENET), 0.1));
    assert_eq!(data::input_norm(&a, None).unwrap(), vgg_cuda::reference::InputNorm::IMAGENET);
    // Jittering: Q is the range's middle; the shift takes --stats' components; the mean
    // becomes the training set's, subtracted only.
    let a = args("dir", |a| (a.scale, a.color_shift) = (Some("36:48".into()), Some(0.2)));
    let (tr, te) = data::transforms(&a, Some(&stats)).unwrap();
    assert_eq!((tr.scale, te.scale, tr.color_shift, tr.color_std), (Scale::Jitter(36, 48), 42, Some(stats.pca), 0.2));
    let norm = data::input_norm(&a, Some(&stats)).unwrap();
    assert_eq!((norm.mean, norm.std), ([10.0, 20.0, 30.0], None));
    let a = args("dir", |a| (a.mean, a.test_scale, a.color_shift) = (Some("1,2.5,3".into()), Some(40), Some(0.0)));
    assert_eq!(data::input_norm(&a, Some(&stats)).unwrap().mean, [1.0, 2.5, 3.0]);
    let (tr, te) = data::transforms(&a, None).unwrap();
    assert_eq!((tr.color_shift, te.scale), (None, 40));
    // The synthetic set's images are the crop's size, and its classes differ in colour.
    let (tr, _) = data::transforms(&args("synthetic", |_| {}), None).unwrap();
    assert_eq!((tr.scale, tr.color_shift), (Scale::Fixed(32), None));
}

#[test]
fn bad_data_options_are_errors_that_name_them() {
    for (f, want) in [
        (Box::new(|a: &mut TrainArgs| a.scale = Some("20".into())) as Box<dyn Fn(&mut TrainArgs)>, "--scale 20"),
        (Box::new(|a| a.scale = Some("48:36".into())), "min above max"),
        (Box::new(|a| a.test_scale = Some(16)), "--test-scale 16"),
        (Box::new(|a| a.color_shift = Some(-0.1)), "--color-shift"),
        (Box::new(|a| a.color_shift = Some(f32::NAN)), "--color-shift"),
    ] {
        let a = args("dir", f);
        let e = format!("{:#}", data::transforms(&a, None).unwrap_err());
        assert!(e.contains(want), "{e}");
    }
    for m in ["1,2", "1,2,x", "1,2,300", ""] {
        let a = args("dir", |a| a.mean = Some(m.into()));
        assert!(format!("{:#}", data::input_norm(&a, None).unwrap_err()).contains("--mean"), "{m}");
    }
    let a = args("dir", |a| a.stats = Some("/nonexistent/stats.json".into()));
    let e = format!("{:#}", data::prepare(&a).err().unwrap());
    assert!(e.contains("--stats") && e.contains("/nonexistent/stats.json"), "{e}");
}

#[test]
fn a_run_with_stats_subtracts_their_mean_and_records_it() {
    let t = TempDir::new("train-data", "stats");
    let dir = folder(&t, 0);
    let stats = t.0.join("stats.json");
    let out = vgg(&["stats", &dir, "--size", "0", "--out", stats.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = DatasetStats::load(&stats).unwrap();
    let ck = TempDir::new("train-data", "ck");
    let out = vgg(&run_args(
        &dir,
        &["--stats", stats.to_str().unwrap(), "--scale", "36:48", "--checkpoint-dir", ck.0.to_str().unwrap()],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("S 36..48, crop 32, flip, PCA colour shift 0.1; test: Q 42"), "{stdout}");
    // A flat folder has no validation set: the default plateau schedule says it cannot act.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no val/ folder") && stderr.contains("never lowers"), "{stderr}");
    let path = ck.0.join("last.safetensors");
    let l = checkpoint::load(&path).unwrap();
    let cfg = l.config.clone().unwrap();
    assert_eq!((cfg.mean, cfg.std), (st.mean.map(|m| m as f32), None));
    assert!(Path::new(&ck.0.join("loss.png")).exists());
    // The run's Q is recorded, and eval and predict test at it by default.
    let state = l.state.clone().unwrap();
    assert_eq!(state.test_scale, Some(42));
    let out = vgg(&["eval", "--weights", path.to_str().unwrap(), "--data", &dir, "--device", "emu", "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Q [42]"), "{stdout}");
    let img = Path::new(&dir).join("a").join("0.png");
    let out = vgg(&["predict", "--weights", path.to_str().unwrap(), img.to_str().unwrap(), "--device", "emu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("Q [42]"), "{stderr}");
    // An ensemble whose checkpoints were validated at different Q needs --scale.
    let other = ck.0.join("other.safetensors");
    let moved = checkpoint::TrainState { test_scale: Some(40), ..state };
    checkpoint::save(&other, &l.weights, &l.momentum, &cfg, Some(&moved)).unwrap();
    let ens = ["eval", "--weights", path.to_str().unwrap(), "--weights", other.to_str().unwrap()];
    let out = vgg(&[&ens[..], &["--data", &dir, "--device", "emu", "--quiet"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Q 42") && stderr.contains("--scale"), "{stderr}");
    let out = vgg(&[&ens[..], &["--data", &dir, "--device", "emu", "--quiet", "--scale", "40"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Eight images at batch 3: two full batches an epoch, and a short third one that is dropped
/// by default and trained (filled up with its own images) with --keep-last.
#[test]
fn keep_last_trains_the_short_last_batch() {
    let t = TempDir::new("train-data", "keep-last");
    let dir = folder(&t, 0);
    for (extra, steps) in [(&[][..], 2), (&["--keep-last"][..], 3)] {
        let out = vgg(&run_args(&dir, extra));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("epoch 0 step {steps}:")), "{extra:?}: {stdout}");
    }
    // A resume that changes the flag would change the epoch's batches: refused either way.
    let ck = TempDir::new("train-data", "keep-last-ck");
    let ckd = ck.0.to_str().unwrap();
    let out = vgg(&run_args(&dir, &["--keep-last", "--steps", "2", "--checkpoint-dir", ckd]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = vgg(&run_args(&dir, &["--checkpoint-dir", ckd, "--resume"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("written by a run with --keep-last, this run is without"), "{err}");
}

/// A validation set none of whose images can be read scores nothing: a warning, no metrics
/// line, no best checkpoint and no schedule step (it reported loss 0 and top-1 0, a division
/// by a count of at least 1, and saved best.safetensors on it). One partly unreadable is
/// scored on the rest, its skipped images on the epoch line.
#[test]
fn a_validation_set_without_a_readable_image_scores_nothing() {
    let t = TempDir::new("train-data", "val-unreadable");
    folder(&t, 0);
    let root = t.0.join("root");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join("train")).unwrap();
        std::fs::rename(t.0.join(class), root.join("train").join(class)).unwrap();
        std::fs::create_dir_all(root.join("val").join(class)).unwrap();
        std::fs::write(root.join("val").join(class).join("x.jpg"), b"not a JPEG").unwrap();
    }
    let (ck, m) = (t.0.join("ck"), t.0.join("m.jsonl"));
    let (rs, cks, ms) = (root.to_str().unwrap(), ck.to_str().unwrap(), m.to_str().unwrap());
    let out = vgg(&run_args(rs, &["--checkpoint-dir", cks, "--metrics", ms]));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("no validation image could be read (2 skipped"), "{stderr}");
    assert!(!stdout.contains("val loss"), "{stdout}");
    assert!(ck.join("last.safetensors").is_file() && !ck.join("best.safetensors").exists());
    assert!(!std::fs::read_to_string(&m).unwrap().contains("\"eval\""));

    std::fs::copy(root.join("train/a/0.png"), root.join("val/a/0.png")).unwrap();
    let out = vgg(&run_args(rs, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("top-5 1.000 (2 unreadable validation images skipped)"), "{stdout}");
}

/// Weights trained on another input normalisation (here --mean only, against the default
/// mean and std of a run that leaves it out) are warned about when a run starts from them
/// (they took inputs ~58x larger, without a word); the same normalisation is not.
#[test]
fn weights_of_another_input_normalisation_are_warned_about() {
    let t = TempDir::new("train-data", "norm");
    let dir = folder(&t, 0);
    let out_dir = TempDir::new("train-data", "norm-ck");
    let ck = out_dir.0.join("ck");
    let (cks, w) = (ck.to_str().unwrap(), ck.join("last.safetensors"));
    let out = vgg(&run_args(&dir, &["--mean", "100,100,100", "--checkpoint-dir", cks]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ws = w.to_str().unwrap();
    // One step at --lr 1e-30 (common::unmoved) leaves the weights the run started from in its
    // checkpoint: every tensor the file's; without --weights, the init's, which are not.
    let file = checkpoint::load(&w).unwrap().weights;
    let started_from = |extra: &[&str], name: &str| {
        let ck = out_dir.0.join(name);
        let mut v = vec!["--steps", "1", "--lr", "1e-30", "--checkpoint-dir", ck.to_str().unwrap()];
        v.extend(extra);
        let out = vgg(&run_args(&dir, &v));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (checkpoint::load(&ck.join("last.safetensors")).unwrap().weights, stderr)
    };
    let (got, stderr) = started_from(&["--weights", ws], "from-file");
    assert_eq!(common::moved_tensors(&got, &file), Vec::<String>::new(), "--weights did not reach the model");
    assert!(stderr.contains("was trained on inputs normalised by mean [100.0, 100.0, 100.0] only"), "{stderr}");
    let (own, _) = started_from(&[], "own-init");
    assert_eq!(
        common::moved_tensors(&own, &file).len(),
        file.len(),
        "without --weights: the init's, every tensor off the trained file's"
    );
    let out = vgg(&run_args(&dir, &["--weights", ws, "--steps", "1", "--mean", "100,100,100"]));
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("normalised by"));
    // A file without our config (torchvision's) was trained on ImageNet's mean and std.
    let plain = out_dir.0.join("plain.safetensors");
    common::write_plain(&plain, &file);
    let ps = plain.to_str().unwrap();
    let (got, stderr) = started_from(&["--weights", ps, "--mean", "100,100,100"], "from-plain");
    assert_eq!(
        common::moved_tensors(&got, &file),
        Vec::<String>::new(),
        "a torchvision --weights file did not reach the model"
    );
    assert!(stderr.contains("normalised by mean [123.675"), "{stderr}");
    let out = vgg(&run_args(&dir, &["--weights", ps, "--steps", "1"]));
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("normalised by"));
}
