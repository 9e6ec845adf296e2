//! `vgg prep` and the shard dataset: an ImageFolder of generated images, prepped, reads back
//! with the same classes, labels and (exactly) the resized images; corrupt shards and a
//! missing index fail naming the file; `bench data` and the loader run on shards.

use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use vgg_cuda::data::prep::{prep, prep_dataset, prep_image, PrepConfig};
use vgg_cuda::data::{
    bench, open_dir, resize, DataError, Dataset, ImageFolder, Loader, LoaderConfig, Scale, Shards, TrainTransform,
    Transform,
};

mod common;
use common::TempDir;

fn pattern(w: u32, h: u32, k: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + k * 31) as u8, (y * 5 + k) as u8, ((x ^ y) * 3) as u8]))
}

/// Three classes of PNGs (lossless, so decoding gives back exactly `pattern`): large ones
/// that prep shrinks, small ones it keeps, portrait and landscape.
fn write_folder(root: &Path) -> Vec<(String, RgbImage)> {
    let sizes = [(90, 60), (40, 70), (20, 20), (64, 33), (33, 120)];
    let mut out = vec![];
    for (c, class) in ["ant", "bee", "cat"].iter().enumerate() {
        for (k, &(w, h)) in sizes.iter().enumerate().skip(c % 2) {
            let rel = format!("{class}/img{k}.png");
            let img = pattern(w, h, (c * 10 + k) as u32);
            let p = root.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            img.save(&p).unwrap();
            out.push((rel, img));
        }
    }
    out
}

fn cfg(max_side: u32, shard_size: usize) -> PrepConfig {
    PrepConfig { max_side, shard_size, quality: None, strict: true }
}

#[test]
fn prep_round_trip_is_exact() {
    let t = TempDir::new("prep", "roundtrip");
    let (src, out) = (t.0.join("src"), t.0.join("out"));
    write_folder(&src);
    let folder = ImageFolder::open(&src).unwrap();
    let mut calls = vec![];
    let rep = prep(&src, &out, &cfg(32, 4), |d, n| calls.push((d, n))).unwrap();
    assert_eq!((rep.images, rep.skipped, rep.classes), (folder.len(), 0, 3));
    assert_eq!(rep.shards, folder.len().div_ceil(4));
    assert_eq!(calls.last(), Some(&(folder.len(), folder.len())));
    assert!(out.join("shard-00000.bin").is_file() && out.join("index.json").is_file());
    assert!(!out.join("index.tmp").exists());

    let shards = Shards::open(&out).unwrap();
    assert_eq!(shards.classes(), folder.classes());
    assert_eq!(shards.len(), folder.len());
    assert_eq!(shards.bytes(), rep.bytes);
    for i in 0..folder.len() {
        let (orig, label) = folder.load(i).unwrap();
        let (got, got_label) = shards.load(i).unwrap();
        assert_eq!(got_label, label, "image {i}");
        let (w, h) = orig.dimensions();
        let want = if w.min(h) > 32 {
            let (nw, nh) = vgg_cuda::data::resize::rescaled_size(w, h, 32);
            resize::resize(&orig, nw, nh)
        } else {
            orig.clone() // never upscaled
        };
        assert_eq!(got.dimensions().0.min(got.dimensions().1), w.min(h).min(32));
        assert_eq!(got, want, "image {i}: {}", shards.describe(i));
        assert_eq!(got, prep_image(&orig, 32));
        assert!(shards.describe(i).contains(".png"), "{}", shards.describe(i));
    }
    // open_dir detects the shard directory by its index.json, and the ImageFolder otherwise.
    assert_eq!(open_dir(&out).unwrap().len(), folder.len());
    assert_eq!(open_dir(&src).unwrap().len(), folder.len());
    // max_side 0 keeps native sizes.
    let native = t.0.join("native");
    prep(&src, &native, &cfg(0, 100), |_, _| {}).unwrap();
    let s = Shards::open(&native).unwrap();
    for i in 0..folder.len() {
        assert_eq!(s.load(i).unwrap().0, folder.load(i).unwrap().0);
    }
}

/// The library's single-set prep refuses a train/val root (read as one ImageFolder, its two
/// splits were the classes), pointing to prep_split, before writing anything.
#[test]
fn prep_refuses_a_split_root() {
    let t = TempDir::new("prep", "split-root");
    let (src, out) = (t.0.join("src"), t.0.join("out"));
    write_folder(&src.join("train"));
    write_folder(&src.join("val"));
    let err = prep(&src, &out, &cfg(32, 4), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("has a train/ folder") && err.contains("prep_split"), "{err}");
    assert!(!out.exists());
}

#[test]
fn prep_of_the_synthetic_set_round_trips() {
    let t = TempDir::new("prep", "synthetic");
    let syn = vgg_cuda::data::Synthetic::new(3, 40, 7, 5);
    let rep = prep_dataset(&syn, None, &t.0, &cfg(24, 3), |_, _| {}).unwrap();
    assert_eq!((rep.images, rep.shards, rep.classes), (7, 3, 3));
    let shards = Shards::open(&t.0).unwrap();
    assert_eq!(shards.classes(), syn.classes());
    for i in 0..7 {
        let ((got, gl), (img, wl)) = (shards.load(i).unwrap(), syn.load(i).unwrap());
        assert_eq!(gl, wl, "label of image {i}");
        assert!(got == prep_image(&img, 24), "image {i} differs from its resized original");
        assert!(shards.describe(i).contains(&syn.describe(i)), "source of image {i}: {}", shards.describe(i));
    }
}

#[test]
fn jpeg_shards_decode_to_the_stored_size() {
    let t = TempDir::new("prep", "jpeg");
    let (src, out) = (t.0.join("src"), t.0.join("out"));
    write_folder(&src);
    let c = PrepConfig { quality: Some(90), ..cfg(32, 3) };
    prep(&src, &out, &c, |_, _| {}).unwrap();
    let (folder, shards) = (ImageFolder::open(&src).unwrap(), Shards::open(&out).unwrap());
    assert_eq!(shards.index().encoding, "jpeg");
    for i in 0..folder.len() {
        let (orig, label) = folder.load(i).unwrap();
        let (got, got_label) = shards.load(i).unwrap();
        let want = prep_image(&orig, 32);
        assert_eq!((got.dimensions(), got_label), (want.dimensions(), label));
        // JPEG's loss, per channel: the mean absolute difference from the raw shard's pixels.
        let mad = |a: &RgbImage, b: &RgbImage, ca: usize, cb: usize| {
            let d: u64 = a.pixels().zip(b.pixels()).map(|(p, q)| u64::from(p[ca].abs_diff(q[cb]))).sum();
            d as f64 / f64::from(a.width() * a.height())
        };
        let worst = (0..3).map(|c| mad(&got, &want, c, c)).fold(0.0, f64::max);
        // Measured at quality 90 on these sawtooth patterns: 3.3-5.6 levels; the same comparison
        // with the channels rotated (a wrong channel order in the encode path) gives 28-78, so
        // the bound tells them apart.
        assert!(worst <= 10.0, "image {i}: mean error {worst:.2} levels from its raw resize");
        let rotated = (0..3).map(|c| mad(&got, &want, c, (c + 1) % 3)).fold(f64::INFINITY, f64::min);
        assert!(rotated > 20.0, "image {i}: rotated channels only {rotated:.2} levels apart");
    }
    let e = prep(&src, &t.0.join("q0"), &PrepConfig { quality: Some(0), ..cfg(32, 3) }, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("JPEG quality 0: must be 1-100"), "{e}");
}

#[test]
fn corrupt_shards_and_missing_index_name_the_file() {
    let t = TempDir::new("prep", "corrupt");
    let (src, out) = (t.0.join("src"), t.0.join("out"));
    write_folder(&src);
    prep(&src, &out, &cfg(32, 5), |_, _| {}).unwrap();

    // Missing index.
    let err = Shards::open(&t.0.join("src")).unwrap_err().to_string();
    assert!(err.contains("index.json"), "{err}");
    // An index that is not JSON.
    let bad = t.0.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("index.json"), "{ nope").unwrap();
    let err = Shards::open(&bad).unwrap_err().to_string();
    assert!(err.contains("index.json") && err.contains("not a shard index"), "{err}");

    // A missing shard.
    let shard1 = out.join("shard-00001.bin");
    let saved = std::fs::read(&shard1).unwrap();
    std::fs::remove_file(&shard1).unwrap();
    let err = Shards::open(&out).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin"), "{err}");
    // A truncated shard.
    std::fs::write(&shard1, &saved[..saved.len() - 10]).unwrap();
    let err = Shards::open(&out).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin") && err.contains("truncated"), "{err}");
    // A bad magic.
    let mut bad_magic = saved.clone();
    bad_magic[0] = b'X';
    std::fs::write(&shard1, &bad_magic).unwrap();
    let err = Shards::open(&out).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin") && err.contains("magic"), "{err}");
    // A corrupt record header (same size): opens, and loading that image fails naming the
    // file; it is a per-image error the loader can skip.
    let mut bad_rec = saved.clone();
    bad_rec[16 + 8..16 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&shard1, &bad_rec).unwrap();
    let s = Shards::open(&out).unwrap();
    let first_of_1 = s.index().records.iter().position(|r| r.0 == 1).unwrap();
    let e = s.load(first_of_1).unwrap_err();
    assert!(e.is_per_image() && e.to_string().contains("shard-00001.bin"), "{e}");
    assert!(s.load(0).is_ok());
    assert!(matches!(s.load(s.len()), Err(DataError::Index { .. })));
}

#[test]
fn loader_and_bench_data_run_on_shards() {
    let t = TempDir::new("prep", "bench");
    let (src, out) = (t.0.join("src"), t.0.join("out"));
    write_folder(&src);
    prep(&src, &out, &cfg(48, 4), |_, _| {}).unwrap();
    let ds: Arc<dyn Dataset> = Arc::new(Shards::open(&out).unwrap());
    let tf = TrainTransform { crop: 16, ..TrainTransform::paper(Scale::Jitter(16, 48)) };
    let rep = bench::run(ds.clone(), "shards", tf.clone().into(), 100, &[1, 2], 4, true).unwrap();
    assert_eq!((rep.images, rep.skipped), (ds.len(), 0));
    assert!(rep.per_core_images_per_s > 0.0 && rep.total_images_per_s > 0.0);
    assert_eq!(rep.scaling.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((rep.workers, rep.total_images_per_s), rep.scaling[1]);

    // The same transform over the shards and over the folder prepped in memory gives the
    // same batches: prep only moves the rescale from every epoch to once.
    let lc = LoaderConfig { batch: 4, shuffle: true, seed: 3, workers: 2, drop_last: false, prefetch: 2, strict: true };
    let batches = |ds: Arc<dyn Dataset>| -> Vec<(Vec<u8>, Vec<i32>)> {
        let loader = Loader::try_new(ds, Transform::from(tf.clone()), lc.clone()).unwrap();
        loader.epoch(1).map(|b| b.unwrap()).map(|b| (b.images, b.labels)).collect()
    };
    let from_shards = batches(ds);
    let from_folder = batches(Arc::new(Prepped(ImageFolder::open(&src).unwrap())));
    assert_eq!(from_shards.iter().map(|b| b.1.len()).sum::<usize>(), ImageFolder::open(&src).unwrap().len());
    assert!(from_shards == from_folder, "shard batches differ from the prepped folder's");
}

/// An ImageFolder whose images go through `prep_image` on every load.
struct Prepped(ImageFolder);

impl Dataset for Prepped {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn classes(&self) -> &[String] {
        self.0.classes()
    }
    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        let (img, label) = self.0.load(i)?;
        Ok((prep_image(&img, 48), label))
    }
}

/// Writes a synthetic ImageFolder of JPEGs (quality 90, shorter side 375, like
/// `vgg bench data --synthetic`) to `$VGG_PREP_BENCH_DIR` for measuring `vgg bench data`
/// on files against their shards: `VGG_PREP_BENCH_DIR=/tmp/sf VGG_PREP_BENCH_N=512 cargo
/// test --test data_prep -- --ignored`, then `vgg prep /tmp/sf /tmp/sf-shards`.
#[test]
#[ignore]
fn write_synthetic_folder_for_bench() {
    let Ok(dir) = std::env::var("VGG_PREP_BENCH_DIR") else { return };
    let n = std::env::var("VGG_PREP_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(512);
    let syn = vgg_cuda::data::Synthetic::new(10, 375, n, 0);
    for i in 0..n {
        let (img, label) = syn.load(i).unwrap();
        let p = Path::new(&dir).join(&syn.classes()[label]).join(format!("{i:06}.jpg"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut bytes = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&img).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}
