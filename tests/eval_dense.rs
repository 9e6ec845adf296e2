//! Dense evaluation on emu (tiny VGG A, width 1/16, trained size 32: the final map is 1x1, so
//! the first FC layer becomes a 1x1 "conv"): at the training size it is the standard
//! forward; on larger images the score map has the predicted size and its averaged
//! posterior matches a host computation over `vgg_cuda::reference`; `vgg eval --crops dense`
//! and `both` run.
//!
//! Bounds: about 4x the largest error measured on emu over the cases, rounded up (each
//! says what it measured), so a real regression fails while a change in fp rounding of
//! the kernels under test does not.

use std::path::{Path, PathBuf};
use vgg_cuda::eval::dense::{dense_logits, dense_posterior, flip_rgb, pooled_posteriors, score_map_size};
use vgg_cuda::eval::{self, softmax, softmax64, Crops, EvalArgs};
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::reference as r;
use vgg_cuda::train::checkpoint;
use vgg_cuda::{Device, Tensor};

mod common;

fn tiny(arch: Arch) -> VggConfig {
    VggConfig { dropout: 0.0, ..VggConfig::small(arch, 0.0625, 32, 16, 10) }
}

/// Deterministic, varied pixels.
fn pixels(n: usize, h: usize, w: usize, seed: u64) -> Vec<u8> {
    (0..n * h * w * 3).map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) as u8).collect()
}

/// The dense posteriors of `n` `h x w` images computed on the host: reference ops with the
/// device's fp16 weights, activations rounded to fp16 where the device stores fp16; per
/// image, the paper's softmax of the positions' mean scores, and (second) the mean of the
/// positions' softmaxes, an estimator the paper does not use.
fn host_dense(vgg: &Vgg, images: &[u8], n: usize, h: usize, w: usize) -> ((usize, usize), Vec<f64>, Vec<f64>) {
    let cfg = vgg.config();
    let params: Vec<Vec<f32>> = vgg.params().iter().map(|p| p.h.to_f32().unwrap()).collect();
    let rnd = |v: Vec<f32>| r::f32_to_f16_round(&v);
    let (x, (ch, cw)) = common::host_features(cfg, &params, images, (n, h, w), true);
    let j = params.len() - 6;
    let (th, tw, c) = cfg.feature_out();
    let (oh, ow) = (ch - th + 1, cw - tw + 1);
    let [c0, c1, c2] = cfg.classifier();
    // The windows in HWC order: the first FC's column order.
    let cols = r::dense_gather([n, ch, cw, c], th, tw, &x);
    let k = cfg.classes;
    let (mut post, mut per_position) = (vec![], vec![0f64; n * k]);
    for i in 0..n {
        let mut mean = vec![0f64; k];
        for oy in 0..oh {
            for ox in 0..ow {
                let win = &cols[((i * oh + oy) * ow + ox) * c0.0..][..c0.0];
                let a = rnd(r::linear_fwd(1, c0.0, c0.1, win, &params[j], Some(&params[j + 1]), true));
                let b = rnd(r::linear_fwd(1, c1.0, c1.1, &a, &params[j + 2], Some(&params[j + 3]), true));
                let z = rnd(r::linear_fwd(1, c2.0, c2.1, &b, &params[j + 4], Some(&params[j + 5]), false));
                mean.iter_mut().zip(&z).for_each(|(m, &z)| *m += z as f64 / (oh * ow) as f64);
                for (o, p) in per_position[i * k..(i + 1) * k].iter_mut().zip(softmax(&z)) {
                    *o += p / (oh * ow) as f64;
                }
            }
        }
        post.extend(softmax64(&mean));
    }
    ((oh, ow), post, per_position)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn score_map_size_arithmetic() {
    assert_eq!(score_map_size(32, 32, 32, 5), Some((1, 1)));
    assert_eq!(score_map_size(64, 64, 32, 5), Some((2, 2)));
    assert_eq!(score_map_size(64, 96, 32, 5), Some((2, 3)));
    assert_eq!(score_map_size(224, 224, 224, 5), Some((1, 1)));
    assert_eq!(score_map_size(256, 341, 224, 5), Some((2, 4)));
    assert_eq!(score_map_size(384, 512, 224, 5), Some((6, 10)));
    assert_eq!(score_map_size(31, 64, 32, 5), None);
}

#[test]
fn dense_at_training_size_is_the_standard_forward() {
    let dev = Device::emu();
    for arch in [Arch::A, Arch::ALrn, Arch::C] {
        let cfg = tiny(arch);
        let mut vgg = Vgg::new(&dev, cfg.clone(), 2, Init::He, 5).unwrap();
        let px = pixels(2, 32, 32, 1);
        let images = Tensor::<u8>::from_host(&dev, &[2, 32, 32, 3], &px).unwrap();
        let map = dense_logits(&vgg, &images).unwrap();
        assert_eq!((map.n, map.h, map.w), (2, 1, 1));
        let logits = vgg.forward(&images, false, 0).unwrap().to_f32().unwrap();
        let k = cfg.classes;
        let want: Vec<f64> = (0..2).flat_map(|i| softmax(&logits[i * k..(i + 1) * k])).collect();
        // The same GEMMs on the same rows (the window gather is a copy): the same logits, so
        // the posteriors differ by the device softmax's fp32 rounding alone (measured 1.1e-8).
        assert!(map.logits == logits, "{arch}: dense logits differ from the forward's");
        let got = pooled_posteriors(&map, k);
        let d = max_diff(&got, &want);
        assert!(d < 5e-8, "{arch}: dense vs forward posteriors differ by {d}");
        // With the flip: the mean of the two crops' posteriors.
        let mut both = px[..32 * 32 * 3].to_vec();
        both.extend(flip_rgb(&px[..32 * 32 * 3], 32, 32));
        let images = Tensor::<u8>::from_host(&dev, &[2, 32, 32, 3], &both).unwrap();
        let logits = vgg.forward(&images, false, 0).unwrap().to_f32().unwrap();
        let want: Vec<f64> = (0..k).map(|c| 0.5 * (softmax(&logits[..k])[c] + softmax(&logits[k..2 * k])[c])).collect();
        let got = dense_posterior(&vgg, &px[..32 * 32 * 3], 32, 32).unwrap();
        let d = max_diff(&got, &want);
        // Measured 7.4e-9; fp32 posteriors sum to 1 within 2.1e-8.
        assert!(d < 3e-8, "{arch}: dense + flip vs forward posteriors differ by {d}");
        let sum = got.iter().sum::<f64>();
        assert!((sum - 1.0).abs() < 1e-7, "{arch}: posteriors sum to {sum}");
    }
}

#[test]
fn dense_on_larger_images_matches_the_host() {
    let dev = Device::emu();
    // Multiples of 32, and sizes whose maps floor on the way down (40x56: 1x1 at the end,
    // via 5x7 and 2x3; 72x104: 2x3, via 9x13 and 4x6).
    let sizes = [(Arch::A, 64, 64), (Arch::A, 64, 96), (Arch::C, 96, 64), (Arch::A, 40, 56), (Arch::C, 72, 104)];
    for (arch, h, w) in sizes {
        let cfg = tiny(arch);
        let vgg = Vgg::new(&dev, cfg.clone(), 1, Init::He, 7).unwrap();
        let px = pixels(2, h, w, 3);
        let images = Tensor::<u8>::from_host(&dev, &[2, h, w, 3], &px).unwrap();
        let map = dense_logits(&vgg, &images).unwrap();
        let want_size = score_map_size(h, w, 32, 5).unwrap();
        assert_eq!((map.h, map.w), want_size, "{arch} {h}x{w}");
        assert_eq!((map.h, map.w), (h / 32, w / 32));
        let (size, want, per_position) = host_dense(&vgg, &px, 2, h, w);
        assert_eq!(size, want_size);
        let got = pooled_posteriors(&map, cfg.classes);
        // fp16 activations: the device and host differ by accumulation order (and Winograd's
        // transform rounding) only. Measured 5.4e-4 (A 64x64), 8.6e-4 (A 64x96), 2.5e-4
        // (C 96x64), 1.3e-3 (A 40x56), 4.8e-4 (C 72x104).
        let d = max_diff(&got, &want);
        assert!(d < 6e-3, "{arch} {h}x{w}: device vs host dense posteriors differ by {d}");
        // The bound tells the paper's pooling from averaging the positions' posteriors, which
        // differs from it by 0.13, 0.28, 8.6e-3 and 1.0e-2 here (at 40x56's one position the
        // two are the same).
        let other = max_diff(&per_position, &want);
        assert!(
            map.h * map.w == 1 || other > 6e-3,
            "{arch} {h}x{w}: the two poolings differ by only {other}: the test cannot tell them apart"
        );
        // The positions really differ (the average is not of one repeated score; with one
        // position, the two images' scores).
        let k = cfg.classes;
        assert!(map.logits[..k] != map.logits[k..2 * k], "{arch} {h}x{w}: positions 0 and 1 score alike");
    }
    // Smaller than the training input: an error that says so.
    let vgg = Vgg::new(&dev, tiny(Arch::A), 1, Init::He, 7).unwrap();
    let images = Tensor::<u8>::zeros(&dev, &[1, 16, 40, 3]).unwrap();
    let e = dense_logits(&vgg, &images).unwrap_err().to_string();
    assert!(e.contains("smaller"), "{e}");
}

/// A fresh folder for test `name`, removed when the test ends.
fn tmpdir(name: &str) -> common::TempDir {
    common::TempDir::new("eval-dense", name)
}

fn save(dir: &Path, cfg: &VggConfig) -> PathBuf {
    let vgg = Vgg::new(&Device::emu(), cfg.clone(), 1, Init::He, 11).unwrap();
    let path = dir.join("m.safetensors");
    checkpoint::save(&path, &vgg.export_params().unwrap(), &[], cfg, None).unwrap();
    path
}

fn args(w: PathBuf, crops: &str, flip: bool) -> EvalArgs {
    EvalArgs { crops: crops.into(), flip, ..common::emu_eval_args(vec![w], "synthetic") }
}

#[test]
fn eval_cli_dense_and_both() {
    let dir = tmpdir("cli");
    let w = save(&dir, &tiny(Arch::A));
    assert_eq!(Crops::parse("dense").unwrap(), Crops::Dense);
    assert_eq!(Crops::parse("both").unwrap(), Crops::Both);
    // Synthetic images are 32x32 and Q = 32: dense is the centre crop and its mirror image.
    let d = eval::eval(&args(w.clone(), "dense", false)).unwrap();
    let c = eval::eval(&args(w.clone(), "center", true)).unwrap();
    assert_eq!((d.images, d.views_per_image, c.views_per_image), (8, 2, 2));
    // The same logits (see above) and softmax, and both average two views exactly (halving
    // is exact in binary): the same posteriors, so the same errors (measured: equal).
    assert_eq!((d.top1_error, d.top5_error), (c.top1_error, c.top5_error));
    let b = eval::eval(&args(w.clone(), "both", false)).unwrap();
    assert_eq!(b.views_per_image, 52);
    assert_eq!(b.images, 8);
    assert!(eval::eval(&args(w, "sparse", false)).unwrap_err().to_string().contains("dense"));
    let _ = std::fs::remove_dir_all(&dir);
}
