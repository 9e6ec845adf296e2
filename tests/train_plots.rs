//! `vgg train` draws loss and accuracy plots at the end of each epoch: valid PNGs of the
//! expected size, not blank, with the curves' colours in them; in the checkpoint folder, or
//! next to the metrics file without one.

use std::path::Path;
use vgg_cuda::train::{run, TrainArgs};
mod common;

/// A fresh folder for test `name`, removed when the test ends.
fn tmpdir(name: &str) -> common::TempDir {
    common::TempDir::new("train-plots", name)
}

/// A at 1/16 width on 32x32 synthetic images, 6 steps an epoch, on emu.
fn args() -> TrainArgs {
    TrainArgs {
        width: 0.0625,
        fc: 16,
        classes: 3,
        synthetic_len: 24,
        batch: 4,
        epochs: 2,
        lr: Some(0.01),
        device: "emu".into(),
        workers: Some(0),
        quiet: true,
        ..TrainArgs::default()
    }
}

/// Decodes `path` and checks it: 900x500, more than one colour, and a pixel of each `colors`.
fn check_png(path: &Path, colors: &[[u8; 3]]) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), (900, 500), "{}", path.display());
    let first = *img.get_pixel(0, 0);
    assert!(img.pixels().any(|p| *p != first), "{}: blank", path.display());
    for c in colors {
        assert!(img.pixels().any(|p| p.0 == *c), "{}: no pixel of colour {c:?}", path.display());
    }
}

const TRAIN: [u8; 3] = [31, 119, 180];
const VAL: [u8; 3] = [255, 127, 14];
const TOP5: [u8; 3] = [44, 160, 44];

#[test]
fn plots_in_checkpoint_dir_and_next_to_metrics() {
    let dir = tmpdir("ckpt");
    let metrics = dir.join("run.jsonl");
    let a = TrainArgs { checkpoint_dir: Some(dir.to_path_buf()), metrics: Some(metrics.clone()), ..args() };
    run(&a).unwrap();
    check_png(&dir.join("loss.png"), &[TRAIN, VAL]);
    check_png(&dir.join("accuracy.png"), &[TRAIN, TOP5]);
    // No temporary file left behind.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");

    // Metrics file only: `run.loss.png` beside it, also for a run that stops mid-epoch.
    let dir2 = tmpdir("metrics");
    let m2 = dir2.join("run.jsonl");
    run(&TrainArgs { metrics: Some(m2.clone()), steps: Some(3), ..args() }).unwrap();
    check_png(&dir2.join("run.loss.png"), &[TRAIN, VAL]);
    check_png(&dir2.join("run.accuracy.png"), &[TRAIN, TOP5]);

    // The history a resumed run starts from: the metrics file's steps up to the checkpoint's.
    let h = vgg_cuda::train::plot::History::from_metrics(&metrics, 6).unwrap();
    assert_eq!(h.train.keys().copied().collect::<Vec<_>>(), (1..=6).collect::<Vec<u64>>());
    assert_eq!(h.evals.keys().copied().collect::<Vec<_>>(), vec![6]);
}
