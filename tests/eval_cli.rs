//! The command line's checks of its input on emu: `vgg eval` on a `vgg prep` shard directory,
//! with output paths checked before the run, its batch capped at the views it needs, scales
//! below the crop or above the largest side and runs of no images rejected, and class
//! mismatches naming the checkpoint's classes; `vgg predict`'s
//! --scale, --top and --labels; `vgg info --model --json`, and its model options without
//! --model; `vgg selftest --json` checked before the run.

mod common;

use common::{emu_eval_args, vgg, TempDir};
use std::path::{Path, PathBuf};
use vgg_cuda::data::{Dataset, Synthetic};
use vgg_cuda::eval::{self, EvalArgs, PredictArgs};
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::train::checkpoint;
use vgg_cuda::Device;

/// A randomly initialised tiny model (32x32 input) saved with the synthetic set's class names
/// (so that it evaluates on `--data synthetic` and on [`image_folder`]).
fn save_tiny(dir: &Path, classes: usize) -> PathBuf {
    save_tiny_named(dir, Synthetic::new(classes, 32, 1, 0).classes())
}

/// [`save_tiny`] with the class names `names`.
fn save_tiny_named(dir: &Path, names: &[String]) -> PathBuf {
    let cfg = VggConfig { dropout: 0.0, ..VggConfig::small(Arch::A, 0.0625, 32, 16, names.len()) };
    let vgg = Vgg::new(&Device::emu(), cfg.clone(), 1, Init::He, 5).unwrap();
    let path = dir.join("m.safetensors");
    checkpoint::save_with_classes(&path, &vgg.export_params().unwrap(), &[], &cfg, None, names).unwrap();
    path
}

/// `class0, class1, ...`: names the synthetic set does not use.
fn numbered(classes: usize) -> Vec<String> {
    (0..classes).map(|c| format!("class{c}")).collect()
}

/// An ImageFolder of non-square synthetic PNGs (40 pixels or more a side), one folder per
/// synthetic class name.
fn image_folder(dir: &Path, classes: usize, per_class: usize) -> Vec<PathBuf> {
    let syn = Synthetic::new(classes, 40, classes * per_class, 9);
    (0..syn.len())
        .map(|i| {
            let (img, label) = syn.load(i).unwrap();
            let f = dir.join(&syn.classes()[label]).join(format!("img{i:03}.png"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            img.save(&f).unwrap();
            f
        })
        .collect()
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vgg args` fails, its stderr holding every one of `needles`; returns (stdout, stderr).
fn fails_with(args: &[&str], needles: &[&str]) -> (String, String) {
    let out = vgg(args);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: stderr should mention {n:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[test]
fn eval_reads_a_prep_shard_directory_as_its_image_folder() {
    let dir = TempDir::new("eval-cli", "shards");
    let w = save_tiny(&dir.0, 2);
    let (src, shards) = (dir.0.join("data"), dir.0.join("shards"));
    image_folder(&src, 2, 2);
    let out = vgg(&["prep", s(&src), s(&shards)]);
    assert!(out.status.success(), "prep: {}", String::from_utf8_lossy(&out.stderr));
    // The images are smaller than prep's --max-side and stored raw: the same pixels, so the
    // same scores as the folder they came from. Image by image, as `vgg eval` opens either
    // (open_dir): the same label and pixels, so the same posteriors under one deterministic
    // transform and model (eval writes no per-image scores; its per-class totals are compared
    // below). The four images differ, so images out of order would show.
    let per_image = |dir: &Path| {
        let ds = vgg_cuda::data::open_dir(dir).unwrap();
        (0..ds.len()).map(|i| ds.load(i).unwrap()).collect::<Vec<(image::RgbImage, usize)>>()
    };
    let (folder_images, shard_images) = (per_image(&src), per_image(&shards));
    assert_eq!(shard_images.len(), 4);
    for (i, (a, b)) in shard_images.iter().zip(&folder_images).enumerate() {
        assert!(a.1 == b.1 && a.0 == b.0, "image {i}: the shards' is not the folder's (label {} and {})", a.1, b.1);
    }
    assert!((1..4).all(|i| folder_images[..i].iter().all(|a| a.0 != folder_images[i].0)), "two images alike");
    let from_folder = eval::eval(&emu_eval_args(vec![w.clone()], s(&src))).unwrap();
    let from_shards = eval::eval(&emu_eval_args(vec![w], s(&shards))).unwrap();
    assert_eq!((from_shards.images, from_shards.skipped), (4, 0));
    assert!(from_shards.data.contains("shards"), "{}", from_shards.data);
    assert_eq!((from_shards.top1_error, from_shards.top5_error), (from_folder.top1_error, from_folder.top5_error));
    let per = |r: &eval::EvalReport| r.per_class.iter().map(|c| (c.name.clone(), c.images, c.top1)).collect::<Vec<_>>();
    assert_eq!(per(&from_shards), per(&from_folder));
}

/// A split root evaluates its val/ folder; one with train/ and no val/ is refused naming the
/// missing folder (it read train/ as a class of the root, "a folder that is not one of the
/// classes").
#[test]
fn eval_of_a_split_root_needs_its_val_folder() {
    let dir = TempDir::new("eval-cli", "split");
    let w = save_tiny(&dir.0, 2);
    let root = dir.0.join("data");
    image_folder(&root.join("train"), 2, 1);
    let e = err_of(eval::eval(&emu_eval_args(vec![w.clone()], s(&root))));
    assert!(e.contains("without a val/ folder") && e.contains(s(&root.join("val"))), "{e}");
    image_folder(&root.join("val"), 2, 2);
    assert_eq!(eval::eval(&emu_eval_args(vec![w], s(&root))).unwrap().images, 4);
}

#[test]
fn info_model_json_is_json_with_the_parameter_count() {
    let out = vgg(&["info", "--model", "E", "--json", "--batch", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["params"], 143_667_240u64, "VGG-19's torchvision count");
    assert_eq!(v["model"], "E");
    let layers = v["layers"].as_array().unwrap();
    // 16 convs, 5 pools, 3 FC layers; their parameters add up to the total.
    assert_eq!(layers.len(), 24);
    assert_eq!(layers.iter().map(|l| l["params"].as_u64().unwrap()).sum::<u64>(), 143_667_240);
    assert_eq!(layers.iter().map(|l| l["macs"].as_u64().unwrap()).sum::<u64>(), v["forward_macs"].as_u64().unwrap());
    assert_eq!(layers[0]["output"], serde_json::json!([224, 224, 64]));
    let m = &v["memory"][0];
    assert_eq!(m["batch"], 2);
    let (shared, separate) = (m["shared"]["total"].as_u64().unwrap(), m["separate"]["total"].as_u64().unwrap());
    assert!(0 < shared && shared <= separate, "{m}");
}

#[test]
fn info_model_options_need_model() {
    for opt in [&["--input", "300"][..], &["--classes", "10"], &["--width", "0.5"], &["--fc", "64"], &["--batch", "4"]]
    {
        let mut args = vec!["info"];
        args.extend_from_slice(opt);
        fails_with(&args, &[opt[0], "--model"]);
    }
    let out = vgg(&["info", "--model", "A", "--input", "64"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("64x64 input"));
    // --kernels lists the device's kernels, which --model does not print: refused, not ignored.
    fails_with(&["info", "--model", "A", "--kernels"], &["--kernels", "--model"]);
}

#[test]
fn predict_rejects_bad_scale_top_and_labels() {
    let dir = TempDir::new("eval-cli", "predict");
    let w = save_tiny(&dir.0, 3);
    let img = image_folder(&dir.0.join("data"), 1, 1).remove(0);
    let args = PredictArgs { weights: vec![w], images: vec![img], top: 3, device: "emu".into(), ..Default::default() };
    for q in ["0", "1", "31", "32,31", "fixed:40"] {
        let e = err_of(eval::predict(&PredictArgs { scale: Some(q.into()), ..args.clone() }));
        assert!(e.contains("--scale"), "--scale {q}: {e}");
    }
    let e = err_of(eval::predict(&PredictArgs { crops: "grid".into(), ..args.clone() }));
    assert!(e.contains("--crops"), "{e}");
    assert_eq!(eval::predict(&PredictArgs { scale: Some("32".into()), ..args.clone() }).unwrap()[0].top.len(), 3);
    let e = err_of(eval::predict(&PredictArgs { top: 0, ..args.clone() }));
    assert!(e.contains("--top"), "{e}");
    // A labels file is read even though the checkpoint stores names, and wins over them.
    let missing = dir.0.join("missing.txt");
    let e = err_of(eval::predict(&PredictArgs { labels: Some(missing), ..args.clone() }));
    assert!(e.contains("--labels") && e.contains("missing.txt"), "{e}");
    let labels = dir.0.join("labels.txt");
    std::fs::write(&labels, "ant\nbee\n").unwrap();
    let e = err_of(eval::predict(&PredictArgs { labels: Some(labels.clone()), ..args.clone() }));
    assert!(e.contains("labels.txt") && e.contains("2 names for a 3-class model"), "{e}");
    std::fs::write(&labels, "ant\nbee\ncat\n").unwrap();
    let p = eval::predict(&PredictArgs { labels: Some(labels), ..args.clone() }).unwrap();
    common::assert_named_by_labels(&p[0].top, &["ant", "bee", "cat"]);
}

#[test]
fn eval_rejects_scales_below_the_crop() {
    let dir = TempDir::new("eval-cli", "scale");
    let w = save_tiny(&dir.0, 2);
    // fixed:40 is 8,40,72 and jittered:16:64 is 16,40,64: each holds a Q below 32.
    for scale in ["16", "32,31", "fixed:40", "jittered:16:64"] {
        let a = EvalArgs { scale: Some(scale.into()), ..emu_eval_args(vec![w.clone()], "synthetic") };
        let e = err_of(eval::eval(&a));
        assert!(e.contains("--scale") && e.contains("below"), "--scale {scale}: {e}");
    }
    let a = EvalArgs { scale: Some("32,48".into()), ..emu_eval_args(vec![w], "synthetic") };
    assert_eq!(eval::eval(&a).unwrap().scales, [32, 48]);
}

/// Test scales above the data pipeline's largest side are refused by name before any image
/// is rescaled, as training's S and Q are: dense evaluation at `--scale 100000` asked for
/// 30 GB and aborted the process.
#[test]
fn scales_above_the_largest_side_are_refused_naming_the_option() {
    let dir = TempDir::new("eval-cli", "scale-max");
    let w = save_tiny(&dir.0, 2);
    let too_big = (vgg_cuda::data::MAX_SIDE + 1).to_string();
    // fixed:4096 is 4064,4096,4128 and jittered:32:5000 is 32,2516,5000. Centre crops, so
    // that a run that is not refused ends quickly (a crop's rescale computes its window only).
    // Each named as given: a preset's Q (4128) is no value the user typed. fixed:4294967295's
    // S + 32 wrapped to a Q of 31 before, refused as below the crop.
    for (scale, want) in [
        (too_big.as_str(), "--scale 4097 is above 4096"),
        ("32,100000", "--scale 32,100000: 100000 is above 4096"),
        ("fixed:4096", "--scale fixed:4096: Q 4128 is above 4096"),
        ("jittered:32:5000", "--scale jittered:32:5000: 5000 is above 4096"),
        ("fixed:4294967295", "--scale fixed:4294967295: 4294967295 is above 4096"),
    ] {
        let a = EvalArgs { scale: Some(scale.into()), ..emu_eval_args(vec![w.clone()], "synthetic") };
        let e = err_of(eval::eval(&a));
        assert!(e.contains(want), "--scale {scale}: {e}");
    }
    // A Q that comes from the checkpoint (not checked on load) or the default passes the same
    // limit, and says so: the limit sat in --scale's parser, which neither goes through.
    let cfg = VggConfig { dropout: 0.0, ..VggConfig::small(Arch::A, 0.0625, 32, 16, 2) };
    let l = checkpoint::load(&w).unwrap();
    let recorded = dir.0.join("q5000.safetensors");
    let state = checkpoint::TrainState {
        step: 1,
        epoch: 0,
        batch_in_epoch: 1,
        loss_scale: 1024.0,
        scaler_clean_steps: 0,
        scaler_skipped: 0,
        lr: 0.01,
        best_val: -1.0,
        bad_evals: 0,
        decays: 0,
        seed: 0,
        batch: 1,
        keep_last: false,
        conv_plans: vec![],
        test_scale: Some(5000),
        best_top1: None,
        settings: None,
        epoch_sums: Default::default(),
    };
    checkpoint::save(&recorded, &l.weights, &[], &cfg, Some(&state)).unwrap();
    let e = err_of(eval::eval(&emu_eval_args(vec![recorded.clone()], "synthetic")));
    assert!(
        e.contains("q5000.safetensors: the recorded test scale Q 5000 is above 4096") && e.contains("give --scale"),
        "{e}"
    );
    let e = err_of(eval::test_scales(None, &[], 4681));
    assert!(e.contains("the default test scale Q 4681 is above 4096") && e.contains("give --scale"), "{e}");
    let img = dir.0.join("x.png");
    image::RgbImage::new(40, 40).save(&img).unwrap();
    let (_, err) = fails_with(
        &["predict", "--device", "emu", "--weights", s(&w), "--crops", "dense", "--scale", "100000", s(&img)],
        &["--scale 100000 is above 4096"],
    );
    assert!(err.starts_with("error: "), "{err}");
}

/// `--limit 0` and an empty synthetic set are refused as such, not reported after the run as
/// "no image could be evaluated (0 skipped as unreadable)".
#[test]
fn eval_of_no_images_is_refused_naming_the_option() {
    let dir = TempDir::new("eval-cli", "no-images");
    let w = save_tiny(&dir.0, 2);
    let e = err_of(eval::eval(&EvalArgs { limit: Some(0), ..emu_eval_args(vec![w.clone()], "synthetic") }));
    assert!(e.contains("--limit 0: nothing to evaluate"), "{e}");
    let e = err_of(eval::eval(&EvalArgs { synthetic_len: 0, ..emu_eval_args(vec![w.clone()], "synthetic") }));
    assert!(e.contains("--synthetic-len 0: nothing to evaluate"), "{e}");
    // A typo of a length is refused by name; it aborted the process asking for 800 GB.
    let e =
        err_of(eval::eval(&EvalArgs { synthetic_len: 100_000_000_000, ..emu_eval_args(vec![w.clone()], "synthetic") }));
    assert!(e.contains("--synthetic-len 100000000000: at most 100000000 images"), "{e}");
    // A --data that is no folder is named as the option's value (it read "nodir: No such file
    // or directory", and `--data ""` ": No such file or directory").
    for (data, want) in
        [("/no/such/data", "no such folder"), ("", "no such folder"), (s(&w), "is a file, not a folder")]
    {
        let e = err_of(eval::eval(&emu_eval_args(vec![w.clone()], data)));
        assert!(e.contains(&format!("--data `{data}`: {want}")), "{e}");
    }
}

#[test]
fn eval_caps_its_batch_at_the_views_it_needs() {
    let dir = TempDir::new("eval-cli", "batch");
    let w = save_tiny(&dir.0, 2);
    let json = dir.0.join("r.json");
    let out = vgg(&[
        "eval",
        "--weights",
        s(&w),
        "--data",
        "synthetic",
        "--device",
        "emu",
        "--quiet",
        "--synthetic-len",
        "4",
        "--flip",
        "--batch",
        "512",
        "--json",
        s(&json),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--batch 512 capped at 8"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((r["images"].as_u64(), r["batch"].as_u64()), (Some(4), Some(8)));
    // Below the views needed: as given, without a note.
    let r = eval::eval(&EvalArgs { batch: 3, ..emu_eval_args(vec![w], "synthetic") }).unwrap();
    assert_eq!((r.images, r.batch), (8, 3));
}

#[test]
fn eval_checks_its_output_paths_before_the_run() {
    let dir = TempDir::new("eval-cli", "outputs");
    let w = save_tiny(&dir.0, 2);
    let afile = dir.0.join("afile");
    std::fs::write(&afile, b"keep").unwrap();
    for opt in ["--csv", "--json"] {
        let target = afile.join("x.out");
        let (stdout, _) = fails_with(
            &["eval", "--weights", s(&w), "--data", "synthetic", "--device", "emu", "--quiet", opt, s(&target)],
            &[opt, "afile is a file, not a folder"],
        );
        assert!(!stdout.contains("eval 1 model"), "{opt}: the run started: {stdout}");
        let (stdout, _) = fails_with(
            &["eval", "--weights", s(&w), "--data", "synthetic", "--device", "emu", "--quiet", opt, s(&dir.0)],
            &[opt, "is a folder, not a file"],
        );
        assert!(!stdout.contains("eval 1 model"), "{opt}: the run started: {stdout}");
    }
    assert_eq!(std::fs::read(&afile).unwrap(), b"keep");
}

/// `vgg predict` over good images and a bad one prints the good ones' classes, names the bad
/// one, and fails (it printed only the bad one's error); with only bad images, the error alone.
#[test]
fn predict_reports_a_bad_image_and_classifies_the_others() {
    let dir = TempDir::new("eval-cli", "predict-bad");
    let w = save_tiny(&dir.0, 2);
    let imgs = image_folder(&dir.0.join("data"), 2, 1);
    let bad = dir.0.join("zero.jpg");
    std::fs::write(&bad, b"").unwrap();
    let args = ["predict", "--device", "emu", "--top", "1", "--weights", s(&w), s(&imgs[0]), s(&bad), s(&imgs[1])];
    let (stdout, _) =
        fails_with(&args, &["zero.jpg: cannot decode: empty file", "1 of 3 images could not be classified"]);
    for img in &imgs {
        assert!(stdout.contains(s(img)), "{img:?} not classified: {stdout}");
    }
    assert!(!stdout.contains("zero.jpg"), "{stdout}");
    let (stdout, _) =
        fails_with(&["predict", "--device", "emu", "--weights", s(&w), s(&bad)], &["zero.jpg: cannot decode"]);
    assert!(stdout.is_empty(), "{stdout}");
}

/// A checkpoint trained on folders, evaluated on the synthetic set, is refused naming both
/// class lists (it was scored against the shapes' classes without a word); one that stores
/// the synthetic set's own classes evaluates.
#[test]
fn eval_on_synthetic_checks_the_checkpoint_classes() {
    let dir = TempDir::new("eval-cli", "synthetic-classes");
    let w = save_tiny_named(&dir.0, &numbered(3));
    let e = err_of(eval::eval(&emu_eval_args(vec![w], "synthetic")));
    assert!(e.contains("trained on the classes class0, class1, class2") && e.contains("synthetic set's are"), "{e}");
    let cfg = VggConfig { dropout: 0.0, ..VggConfig::small(Arch::A, 0.0625, 32, 16, 3) };
    let vgg = Vgg::new(&Device::emu(), cfg.clone(), 1, Init::He, 5).unwrap();
    let path = dir.0.join("syn.safetensors");
    let names = Synthetic::new(3, 32, 1, 0).classes().to_vec();
    checkpoint::save_with_classes(&path, &vgg.export_params().unwrap(), &[], &cfg, None, &names).unwrap();
    let r = eval::eval(&emu_eval_args(vec![path], "synthetic")).unwrap();
    assert_eq!(r.images, 8);
}

#[test]
fn eval_class_mismatch_names_the_checkpoint_classes() {
    let dir = TempDir::new("eval-cli", "classes");
    let w = save_tiny_named(&dir.0, &numbered(12));
    let data = dir.0.join("data");
    // Two of the checkpoint's classes, and one it does not have.
    for (c, f) in image_folder(&dir.0.join("made"), 2, 1).iter().enumerate() {
        std::fs::create_dir_all(data.join(format!("class{c}"))).unwrap();
        std::fs::copy(f, data.join(format!("class{c}/img.png"))).unwrap();
    }
    std::fs::create_dir_all(data.join("zebra")).unwrap();
    let e = err_of(eval::eval(&emu_eval_args(vec![w.clone()], s(&data))));
    assert!(e.contains("zebra") && e.contains("not one of the classes"), "{e}");
    assert!(e.contains("class0, class1, class2") && e.contains("class9, ... (12 in all)"), "{e}");
    assert!(!e.contains("class10"), "at most ten names: {e}");
    // No class folder at all.
    let other = dir.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let e = err_of(eval::eval(&emu_eval_args(vec![w], s(&other))));
    assert!(e.contains("class0, class1"), "{e}");
}

#[test]
fn selftest_checks_its_json_path_before_the_run() {
    let dir = TempDir::new("eval-cli", "selftest");
    let afile = dir.0.join("afile");
    std::fs::write(&afile, b"keep").unwrap();
    let target = afile.join("x.json");
    let (stdout, _) = fails_with(
        &["selftest", "--device", "emu", "--only", "relu", "--json", s(&target)],
        &["--json", "afile is a file, not a folder"],
    );
    assert!(!stdout.contains("selftest on"), "the run started: {stdout}");
    assert_eq!(std::fs::read(&afile).unwrap(), b"keep");
}

/// `vgg predict`'s views combine as `vgg eval`'s do: a flip averages the crop's and its mirror
/// image's posteriors, several scales average the scales', `both` is the equal-weight mean of
/// `multi` and `dense`; each a posterior that sums to 1.
#[test]
fn predict_combines_views_like_eval() {
    let dir = TempDir::new("eval-cli", "predict-views");
    let w = save_tiny(&dir.0, 3);
    let img = image_folder(&dir.0.join("data"), 1, 1).remove(0);
    let mirror = dir.0.join("mirror.png");
    image::imageops::flip_horizontal(&image::open(&img).unwrap().to_rgb8()).save(&mirror).unwrap();
    let args = PredictArgs {
        weights: vec![w],
        images: vec![img.clone(), mirror],
        top: 3,
        device: "emu".into(),
        scale: Some("40".into()),
        ..Default::default()
    };
    let probs = |a: PredictArgs| -> Vec<Vec<f64>> { eval::predict(&a).unwrap().into_iter().map(|p| p.probs).collect() };
    let close = |a: &[f64], b: &[f64], what: &str| {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        // The same views through the same kernels: equal but for the order of f64 sums.
        assert!(d < 1e-12, "{what}: differ by {d}: {a:?} vs {b:?}");
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{what}: {a:?} does not sum to 1");
    };
    let mean = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect() };
    let plain = probs(args.clone());
    let flipped = probs(PredictArgs { flip: true, images: vec![img.clone()], ..args.clone() });
    close(&flipped[0], &mean(&plain[0], &plain[1]), "centre + flip vs the image and its mirror");
    assert!(plain[0] != plain[1], "the image and its mirror score alike: the flip check cannot fail");
    let q48 = probs(PredictArgs { scale: Some("48".into()), images: vec![img.clone()], ..args.clone() });
    let both_q = probs(PredictArgs { scale: Some("40,48".into()), images: vec![img.clone()], ..args.clone() });
    close(&both_q[0], &mean(&plain[0], &q48[0]), "Q 40,48 vs the mean of Q 40 and Q 48");
    let one = |crops: &str| probs(PredictArgs { crops: crops.into(), images: vec![img.clone()], ..args.clone() });
    let (multi, dense, both) = (one("multi"), one("dense"), one("both"));
    close(&both[0], &mean(&multi[0], &dense[0]), "both vs the mean of multi and dense");
    assert!(multi[0] != dense[0], "multi and dense agree: the combination check cannot fail");
}

#[test]
fn dense_counts_images_too_wide_for_it_apart_from_unreadable_ones() {
    let dir = TempDir::new("eval-cli", "too-wide");
    let w = save_tiny(&dir.0, 2);
    let data = dir.0.join("data");
    image_folder(&data, 2, 1);
    // 10:1: rescaled to Q 36 its long side is 360, above dense evaluation's 8 x Q.
    image::RgbImage::from_fn(400, 40, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(data.join(&Synthetic::new(2, 32, 1, 0).classes()[0]).join("wide.png"))
        .unwrap();
    let r = eval::eval(&emu_eval_args(vec![w.clone()], s(&data))).unwrap();
    assert_eq!((r.images, r.skipped, r.too_wide), (3, 0, 0), "the centre crop scores it");
    let json = dir.0.join("dense.json");
    let dense = ["eval", "--weights", s(&w), "--data", s(&data), "--device", "emu", "--quiet", "--crops", "dense"];
    let out = vgg(&[&dense[..], &["--json", s(&json)]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // Named, with the reason; not "unreadable"; and the summary says the error is over fewer
    // images.
    assert!(
        stderr.contains("wide.png") && stderr.contains("too wide for dense") && stderr.contains("aspect ratio"),
        "{stderr}"
    );
    assert!(
        stdout.contains("(0 skipped as unreadable, 1 too wide for dense: the errors are over 1 image fewer"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((v["images"].as_u64(), v["skipped"].as_u64(), v["too_wide"].as_u64()), (Some(2), Some(0), Some(1)));
    // Dense and multi-crop: the image is scored by neither (the two are averaged).
    let both = EvalArgs { crops: "both".into(), ..emu_eval_args(vec![w.clone()], s(&data)) };
    let r = eval::eval(&both).unwrap();
    assert_eq!((r.images, r.skipped, r.too_wide), (2, 0, 1));
    // --strict: every image scored, or an error naming it.
    let e = err_of(eval::eval(&EvalArgs { strict: true, ..both }));
    assert!(e.contains("wide.png") && e.contains("aspect ratio") && e.contains("--strict"), "{e}");
}

#[test]
fn dense_alone_does_not_report_a_batch_cap() {
    // Dense evaluation has no crop views and runs its own buffers: its batch of 1 is not the
    // user's --batch capped, and was reported as "capped at 1: the run has 0 crop views".
    let dir = TempDir::new("eval-cli", "dense-batch");
    let w = save_tiny(&dir.0, 2);
    let json = dir.0.join("r.json");
    let out = vgg(&[
        "eval",
        "--weights",
        s(&w),
        "--data",
        "synthetic",
        "--device",
        "emu",
        "--quiet",
        "--synthetic-len",
        "2",
        "--crops",
        "dense",
        "--json",
        s(&json),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("capped"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((r["images"].as_u64(), r["batch"].as_u64()), (Some(2), Some(1)));
}
