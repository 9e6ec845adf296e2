//! The data commands on bad input (`vgg prep`, `vgg stats`, `vgg bench data`): each fails
//! at once with an error that names the problem, and what was already written stays as it was.

use std::path::Path;
use std::process::Output;

use image::{Rgb, RgbImage};
use vgg_cuda::data::prep::LOCK_FILE;
use vgg_cuda::data::{Dataset, Shards, MAX_SIDE};

mod common;
use common::{vgg, TempDir};

/// `per` small PNGs in each class folder of `root`, named `img0.png`, `img1.png`, ...
fn folder(root: &Path, classes: &[&str], per: usize) {
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for k in 0..per {
            let img = RgbImage::from_fn(24, 20, |x, y| Rgb([(x * 9 + k as u32) as u8, (y * 11) as u8, (c * 70) as u8]));
            img.save(root.join(class).join(format!("img{k}.png"))).unwrap();
        }
    }
}

/// A file with an image extension that is not an image.
fn bad_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"not an image at all").unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `vgg args`, which must fail with exit code 1 (an error, not an abort), and returns
/// its stderr and stdout.
fn fails(args: &[&str]) -> (String, String) {
    let out: Output = vgg(args);
    let (err, stdout) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "vgg {args:?} should fail with an error\nstderr: {err}\nstdout: {stdout}");
    assert!(!err.contains("panicked"), "vgg {args:?}: {err}");
    (err.into_owned(), stdout.into_owned())
}

fn succeeds(args: &[&str]) -> (String, String) {
    let out = vgg(args);
    let (err, stdout) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "vgg {args:?}\nstderr: {err}\nstdout: {stdout}");
    (err.into_owned(), stdout.into_owned())
}

/// The names in `dir`, sorted (hidden temporary folders included).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_failed_prep_keeps_the_previous_output() {
    let t = TempDir::new("data-cli", "prep-keep");
    let (good, bad, out) = (t.0.join("good"), t.0.join("bad"), t.0.join("out"));
    folder(&good, &["cat", "dog"], 3);
    folder(&bad, &["a", "b"], 2);
    bad_image(&bad.join("a/zz.jpg")); // after a/img0, a/img1: the first shard is written first
    succeeds(&["prep", s(&good), s(&out), "--shard-size", "2"]);
    assert_eq!(Shards::open(&out).unwrap().len(), 6);

    let (err, _) = fails(&["prep", s(&bad), s(&out), "--shard-size", "2", "--strict"]);
    assert!(err.contains("zz.jpg"), "{err}");
    // The progress line is ended before the error.
    assert!(err.lines().any(|l| l.starts_with("error: ")) && !err.contains("imageserror"), "{err}");
    let kept = Shards::open(&out).unwrap_or_else(|e| panic!("the previous output is lost: {e}"));
    assert_eq!((kept.len(), kept.classes()), (6, &["cat".to_string(), "dog".to_string()][..]));
    assert_eq!(names(&t.0), ["bad", "good", "out"], "temporary folders left behind");

    // A successful prep replaces the previous output whole (no stale shard of the old one).
    succeeds(&["prep", s(&good), s(&out), "--shard-size", "100"]);
    assert_eq!(names(&out), ["index.json", "shard-00000.bin"]);
    assert_eq!(Shards::open(&out).unwrap().len(), 6);
    assert_eq!(names(&t.0), ["bad", "good", "out"]);
}

#[test]
fn prep_refuses_a_non_empty_folder_that_is_not_its_output() {
    let t = TempDir::new("data-cli", "prep-foreign");
    let (good, out) = (t.0.join("good"), t.0.join("mine"));
    folder(&good, &["cat", "dog"], 2);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    let (err, _) = fails(&["prep", s(&good), s(&out)]);
    assert!(err.contains("mine") && err.contains("not the output of a `vgg prep`"), "{err}");
    assert_eq!(names(&out), ["notes.txt"]);
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    // An empty folder is fine.
    let empty = t.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    succeeds(&["prep", s(&good), s(&empty)]);
    assert_eq!(Shards::open(&empty).unwrap().len(), 4);
}

#[test]
fn prep_refuses_to_write_into_its_source() {
    let t = TempDir::new("data-cli", "prep-self");
    let src = t.0.join("src");
    folder(&src, &["cat", "dog"], 2);
    let before = tree(&t.0);
    let respelled = format!("{}/../src/", s(&src));
    let inner = src.join("cat");
    for (from, to, want) in [
        (s(&src), s(&src), "is the source folder"),
        (s(&src), respelled.as_str(), "is the source folder"),
        (s(&src), &format!("{}/sub/out", s(&src)), "is inside the source folder"),
        (s(&inner), s(&src), "holds the source folder"),
    ] {
        let (err, _) = fails(&["prep", from, to]);
        assert!(err.contains(want), "prep {from} {to}: {err}");
        assert_eq!(tree(&t.0), before, "prep {from} {to} changed the source");
    }
}

#[test]
fn sizes_above_the_limit_are_refused_naming_the_option() {
    let t = TempDir::new("data-cli", "sizes");
    let good = t.0.join("good");
    folder(&good, &["cat", "dog"], 1);
    let big = (MAX_SIDE + 1).to_string();
    let huge = "100000";
    for (args, option) in [
        (vec!["stats", s(&good), "--size", huge], "--size"),
        (vec!["stats", s(&good), "--size", &big], "--size"),
        (vec!["stats", "--synthetic", "--synthetic-size", huge, "--samples", "2"], "--synthetic-size"),
        (vec!["bench", "data", "--synthetic", "--synthetic-size", huge, "--images", "2"], "--synthetic-size"),
        (vec!["bench", "data", s(&good), "--scale", huge, "--images", "2"], "--scale"),
        (vec!["bench", "data", s(&good), "--scale", "256:100000", "--images", "2"], "--scale"),
        (vec!["bench", "data", s(&good), "--scale", "100", "--crop", huge, "--images", "2"], "--crop"),
        (vec!["prep", "synthetic", s(&t.0.join("out")), "--images", "2", "--synthetic-size", huge], "--synthetic-size"),
    ] {
        let (err, _) = fails(&args);
        assert!(err.contains(option) && err.contains(&MAX_SIDE.to_string()), "{args:?}: {err}");
    }
    assert!(!t.0.join("out").exists());
}

#[test]
fn stats_of_a_split_folder_uses_its_train_part() {
    let t = TempDir::new("data-cli", "split");
    let split = t.0.join("split");
    folder(&split.join("train"), &["ant", "bee"], 3);
    folder(&split.join("val"), &["ant", "bee"], 1);
    let (err, json) = succeeds(&["stats", s(&split), "--size", "0"]);
    assert!(err.contains(&format!("using {}", s(&split.join("train")))), "{err}");
    // --size 0 keeps the images' own size (the line said "rescaled to 0").
    assert!(err.contains("images at their own size") && !err.contains("rescaled to 0"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["classes"], serde_json::json!(["ant", "bee"]), "{json}");
    assert_eq!(v["images"], 6);
    let (err, report) =
        succeeds(&["bench", "data", s(&split), "--images", "4", "--scale", "24", "--crop", "16", "--workers", "1"]);
    assert!(err.contains("train") && report.contains(s(&split.join("train"))), "{err}\n{report}");
}

/// A train/val root, as `vgg train --data` reads it, is prepped split by split into OUT/train
/// and OUT/val, both with the training set's classes (it was prepped as one ImageFolder of two
/// classes, `train` and `val`, the validation images mixed into the training set); `stats` of OUT
/// then reads OUT/train, as of the source root. A second prep replaces both; one of a root
/// with no val/ drops the old OUT/val; an OUT holding anything else is refused.
#[test]
fn prep_of_a_split_folder_writes_train_and_val_shards() {
    let t = TempDir::new("data-cli", "prep-split");
    let (src, out) = (t.0.join("ds"), t.0.join("sh"));
    folder(&src.join("train"), &["ant", "bee", "cat"], 3);
    folder(&src.join("val"), &["ant", "bee"], 2);
    let (_, stdout) = succeeds(&["prep", s(&src), s(&out), "--shard-size", "4"]);
    assert!(stdout.contains("prep train: 9 images (0 skipped), 3 classes"), "{stdout}");
    assert!(stdout.contains("prep val: 4 images (0 skipped), 3 classes"), "{stdout}");
    let (train, val) = (Shards::open(&out.join("train")).unwrap(), Shards::open(&out.join("val")).unwrap());
    assert_eq!(train.classes(), ["ant", "bee", "cat"]);
    assert_eq!(val.classes(), train.classes());
    assert_eq!((train.len(), val.len()), (9, 4));
    assert_eq!(names(&out), ["train", "val"]);
    let (err, _) = succeeds(&["stats", s(&out), "--size", "0"]);
    assert!(err.contains("has a train/ folder") && err.contains("3 classes"), "{err}");

    succeeds(&["prep", s(&src), s(&out)]);
    assert_eq!(Shards::open(&out.join("train")).unwrap().index().shards.len(), 1);
    std::fs::remove_dir_all(src.join("val")).unwrap();
    succeeds(&["prep", s(&src), s(&out)]);
    assert_eq!(names(&out), ["train"]);

    let other = t.0.join("other");
    std::fs::create_dir_all(other.join("notes")).unwrap();
    let (err, _) = fails(&["prep", s(&src), s(&other)]);
    assert!(err.contains("not the output of a `vgg prep` of a train/val split"), "{err}");
    assert_eq!(names(&other), ["notes"]);
}

#[test]
fn bench_data_refuses_a_crop_above_the_scale() {
    let syn = ["bench", "data", "--synthetic", "--synthetic-size", "40", "--images", "2", "--workers", "1"];
    for extra in [
        &["--crop", "64", "--scale", "36"][..],
        &["--crop", "64", "--scale", "36:128"],
        &["--test", "--crop", "64", "--scale", "36"],
    ] {
        let args: Vec<&str> = syn.iter().chain(extra).copied().collect();
        let (err, _) = fails(&args);
        assert!(err.contains("--scale 36") && err.contains("--crop of 64"), "{args:?}: {err}");
    }
    let args: Vec<&str> = syn.iter().chain(&["--crop", "32", "--scale", "32"]).copied().collect();
    succeeds(&args);
}

#[test]
fn bench_data_and_stats_of_unreadable_images_are_errors() {
    let t = TempDir::new("data-cli", "allbad");
    let dir = t.0.join("allbad");
    bad_image(&dir.join("a/x.jpg"));
    bad_image(&dir.join("b/y.png"));
    let (err, stdout) = fails(&["bench", "data", s(&dir), "--images", "4", "--workers", "1"]);
    assert!(err.contains("no image could be read (2 skipped)"), "{err}");
    assert!(!stdout.contains("images/s"), "{stdout}");
    let (err, _) = fails(&["stats", s(&dir)]);
    assert!(err.contains("no image could be read (2 skipped)"), "{err}");
}

#[test]
fn output_paths_are_checked_before_the_work() {
    let t = TempDir::new("data-cli", "outputs");
    let good = t.0.join("good");
    folder(&good, &["cat", "dog"], 2);
    let file = t.0.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let under = file.join("out.json");

    let (err, _) = fails(&["stats", s(&good), "--out", s(&under)]);
    assert!(err.contains("plain is a file, not a folder") && err.contains("--out"), "{err}");
    assert!(!err.contains("skipped) in"), "the stats were computed before the check: {err}");

    let (err, stdout) = fails(&["bench", "data", s(&good), "--json", s(&under), "--images", "2", "--workers", "1"]);
    assert!(err.contains("plain is a file, not a folder") && err.contains("--json"), "{err}");
    assert!(stdout.is_empty(), "the benchmark ran before the check: {stdout}");

    let (err, _) = fails(&["prep", s(&good), s(&file.join("shards"))]);
    assert!(err.contains("plain is a file, not a folder"), "{err}");
    let (err, _) = fails(&["prep", s(&good), s(&file)]);
    assert!(err.contains("plain: is a file, not a folder"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// A skipped image is reported on its own line after the progress lines, naming its file once.
#[test]
fn prep_reports_skipped_images_after_its_progress_line() {
    let t = TempDir::new("data-cli", "prep-warn");
    let src = t.0.join("src");
    folder(&src, &["a", "b"], 2);
    bad_image(&src.join("a").join("broken.jpg"));
    let (err, out) = succeeds(&["prep", s(&src), s(&t.0.join("out")), "--shard-size", "2"]);
    assert!(out.contains("4 images (1 skipped)"), "{out}");
    let line = err.lines().find(|l| l.contains("broken.jpg")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.starts_with("warning: skipped "), "{line:?}");
    assert_eq!(line.matches("broken.jpg").count(), 1, "{line:?}");
    assert!(!err.contains("no image stored"), "{err}");
    // A class all of whose images are unreadable is named (it trained as an empty class
    // with nothing said about the class).
    let c = src.join("c");
    std::fs::create_dir_all(&c).unwrap();
    bad_image(&c.join("x.jpg"));
    let (err, _) = succeeds(&["prep", s(&src), s(&t.0.join("out")), "--shard-size", "2"]);
    assert!(err.contains("warning: prep: no image stored of class c (every one unreadable"), "{err}");
}

/// Progress into a pipe or log (not a terminal): one line per shard, no carriage returns (they
/// ran together as "prep: 2/6 imagesprep: 4/6 images").
#[test]
fn prep_progress_is_one_line_per_report_when_not_a_terminal() {
    let t = TempDir::new("data-cli", "prep-progress");
    let src = t.0.join("src");
    folder(&src, &["a", "b", "c"], 2);
    let (err, _) = succeeds(&["prep", s(&src), s(&t.0.join("out")), "--shard-size", "2"]);
    assert!(!err.contains('\r'), "{err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("prep: ")).collect();
    assert_eq!(lines, ["prep: 2/6 images", "prep: 4/6 images", "prep: 6/6 images"], "{err:?}");
}

/// --quality outside JPEG's 1-100 is refused naming the option and that range: as a bare u8,
/// 300 got "300 is not in 0..=255" (a range that is not the option's).
#[test]
fn prep_quality_outside_1_to_100_is_refused_naming_the_range() {
    let t = TempDir::new("data-cli", "quality");
    let out_dir = t.0.join("out");
    for q in ["300", "101", "0"] {
        let out = vgg(&["prep", "synthetic", s(&out_dir), "--images", "2", "--synthetic-size", "32", "--quality", q]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--quality {q} was accepted: {err}");
        assert!(err.contains("--quality") && err.contains("1..=100"), "--quality {q}: {err}");
        assert!(!err.contains("255"), "--quality {q}: {err}");
    }
    assert!(!out_dir.exists());
    succeeds(&["prep", "synthetic", s(&out_dir), "--images", "2", "--synthetic-size", "32", "--quality", "100"]);
}

/// A prep stopped before its end (killed, power loss) leaves its temporary folder beside OUT,
/// as large as the shards it wrote, and, when stopped between its two renames, the previous
/// output moved aside. The next prep into OUT removes a temporary folder whose lock file it can
/// lock (its prep has ended), saying so; keeps one whose lock is held, whatever its process id
/// (a prep in another PID namespace or on another host, whose id is no process here: here the
/// test holds it), and one without a lock file (an older build's), naming both; names the
/// moved-aside output without touching it (it may be the only complete copy); and leaves
/// another output's folder and a link alone. The output it commits holds no lock file.
#[cfg(unix)]
#[test]
fn prep_removes_what_killed_preps_left_unfinished() {
    let t = TempDir::new("data-cli", "stale-tmp");
    let out_dir = t.0.join("shards");
    // Process ids that no process here has (above Linux's largest pid_max, 2^22): the held
    // folder's is another namespace's, which the old kill(pid, 0) check took for gone.
    let pid = |k: u32| (1 << 22) + k;
    let stopped = t.0.join(format!(".shards.tmp{}", pid(1)));
    let held = t.0.join(format!(".shards.tmp{}", pid(2)));
    let unlocked = t.0.join(format!(".shards.tmp{}", pid(3)));
    let old = t.0.join(format!(".shards.old{}", pid(1)));
    let other = t.0.join(format!(".other.tmp{}", pid(1)));
    let target = t.0.join("kept");
    for d in [&stopped, &held, &unlocked, &old, &other, &target] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("shard-00000.bin"), b"half a shard").unwrap();
    }
    for d in [&stopped, &held, &other, &target] {
        std::fs::write(d.join(LOCK_FILE), b"").unwrap();
    }
    let holder = std::fs::File::open(held.join(LOCK_FILE)).unwrap();
    holder.try_lock().unwrap();
    let link = t.0.join(format!(".shards.tmp{}", pid(4)));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (err, _) = succeeds(&["prep", "synthetic", s(&out_dir), "--images", "2", "--synthetic-size", "32"]);
    drop(holder);
    let removed =
        format!("prep: removed {}, the unfinished output of an earlier prep (process {}", stopped.display(), pid(1));
    assert!(err.contains(&removed), "{err}");
    assert!(!stopped.exists(), "{err}");
    let busy = format!("prep: {} is being written by another prep (process {}", held.display(), pid(2));
    assert!(err.contains(&busy), "{err}");
    let lockless =
        format!("prep: {} may be the unfinished output of an earlier prep (process {})", unlocked.display(), pid(3));
    assert!(err.contains(&lockless) && err.contains("has no lock file"), "{err}");
    let named = format!("prep: {} was left by an earlier prep (process {})", old.display(), pid(1));
    assert!(err.contains(&named) && err.contains("restore or remove it yourself"), "{err}");
    assert!(!err.contains(".other.") && !err.contains("kept"), "{err}");
    for d in [&held, &unlocked, &old, &other, &target] {
        assert!(d.join("shard-00000.bin").is_file(), "{} was touched; stderr: {err}", d.display());
    }
    assert!(link.symlink_metadata().is_ok(), "{err}");
    assert_eq!(Shards::open(&out_dir).unwrap().len(), 2);
    assert!(!out_dir.join(LOCK_FILE).exists(), "the committed output kept the lock file");
}
