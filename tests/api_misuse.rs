//! The library called directly with bad input, as a third-party user might: each case is an
//! error that names the problem, never a panic, a wrapped size or a silently wrong result (a
//! NaN or zero output, a model that trains on NaN). Values that are not shapes (probabilities,
//! loss scales, normalisation and LRN constants, imported weights) are `Error::Invalid`.

use half::f16;
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::ops::{self, InputNorm, LrnParams, Sgd, SgdParam, SgdPlan, XentBuffers};
use vgg_cuda::{Device, Error, Tensor};

fn small() -> VggConfig {
    VggConfig::small(Arch::A, 0.0625, 32, 16, 10)
}

fn assert_invalid<T>(r: vgg_cuda::Result<T>, want: &str) {
    match r {
        Err(e @ Error::Invalid(_)) => assert!(e.to_string().contains(want), "want `{want}`, got: {e}"),
        Err(e) => panic!("want an Error::Invalid containing `{want}`, got: {e:?}"),
        Ok(_) => panic!("want an Error::Invalid containing `{want}`, got Ok"),
    }
}

/// The window matrix's shape of a map whose products overflow (a zero-channel map may have any
/// other dimensions; the function also takes bare shapes) wrapped to a small one: [2, 3] here.
#[test]
fn dense_gather_shape_refuses_overflowing_products() {
    for (x, th, tw) in [([usize::MAX, usize::MAX, 2, 3], 1, 1), ([1, 1 << 33, 1 << 33, 1 << 33], 1 << 32, 1 << 32)] {
        let e = ops::dense_gather_shape(&x, th, tw).unwrap_err();
        assert!(matches!(e, Error::Shape(_)) && e.to_string().contains("overflow"), "{x:?}: {e}");
    }
    assert_eq!(ops::dense_gather_shape(&[2, 4, 5, 3], 2, 3).unwrap(), [2 * 3 * 3, 2 * 3 * 3]);
}

/// A NaN mean or std (NaN passes a `!= 0` test) made every input NaN, an infinite std every
/// input 0.
#[test]
fn normalize_input_refuses_non_finite_constants() {
    let dev = Device::emu();
    let x = Tensor::<u8>::zeros(&dev, &[1, 2, 2, 3]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 3]).unwrap();
    let bad = [
        (InputNorm { mean: [f32::NAN, 0.0, 0.0], std: None }, "mean [NaN"),
        (InputNorm { mean: [0.0, f32::INFINITY, 0.0], std: None }, "mean [0.0, inf"),
        (InputNorm { mean: [0.0; 3], std: Some([1.0, f32::NAN, 1.0]) }, "std [1.0, NaN"),
        (InputNorm { mean: [0.0; 3], std: Some([f32::INFINITY; 3]) }, "std [inf"),
        (InputNorm { mean: [0.0; 3], std: Some([1.0, 0.0, 1.0]) }, "has a zero"),
    ];
    for (norm, want) in bad {
        assert_invalid(ops::normalize_input(&x, None, &norm, &mut y), want);
    }
    ops::normalize_input(&x, None, &InputNorm::IMAGENET, &mut y).unwrap();
}

/// A VggConfig's mean and std follow `vgg train --mean`'s 0..255 rule: a NaN mean trained on
/// NaN inputs (every update skipped for overflow), a std of 0 failed only at the first step.
#[test]
fn model_config_refuses_bad_input_normalisation() {
    let dev = Device::emu();
    let bad = [
        (VggConfig { mean: [f32::NAN; 3], ..small() }, "input mean [NaN"),
        (VggConfig { mean: [-1.0, 0.0, 0.0], ..small() }, "input mean [-1.0"),
        (VggConfig { mean: [0.0, 0.0, 256.0], ..small() }, "input mean [0.0, 0.0, 256.0]"),
        (VggConfig { std: Some([1.0, 0.0, 1.0]), ..small() }, "input std [1.0, 0.0"),
        (VggConfig { std: Some([f32::INFINITY; 3]), ..small() }, "input std [inf"),
    ];
    for (cfg, want) in bad {
        assert_invalid(cfg.validate(), want);
        assert_invalid(Vgg::new(&dev, cfg, 1, Init::He, 1), want);
    }
    VggConfig { mean: [0.0, 255.0, 1.5], std: Some([255.0, 1.0, 0.5]), ..small() }.validate().unwrap();
    VggConfig { std: None, ..small() }.validate().unwrap();
}

/// `Init::parse`'s rule for an `Init::Normal` built directly: std 0 gave all-zero weights, a
/// negative std its absolute value, an infinite one an "invalid shape" error.
#[test]
fn model_refuses_a_normal_init_without_a_positive_finite_std() {
    let dev = Device::emu();
    for std in [0.0, -0.01, f32::NAN, f32::INFINITY] {
        assert_invalid(Vgg::new(&dev, small(), 1, Init::Normal { std }, 1), "standard deviation");
    }
    let mut vgg = Vgg::new(&dev, small(), 1, Init::Normal { std: 0.01 }, 1).unwrap();
    assert_invalid(vgg.reinit(Init::Normal { std: 0.0 }, 2), "normal:0");
}

/// Imported weights or momenta with a NaN or Inf (a corrupt or diverged file) are refused by
/// name and index, and nothing is written.
#[test]
fn import_refuses_non_finite_values() {
    let dev = Device::emu();
    let mut vgg = Vgg::new(&dev, small(), 1, Init::He, 1).unwrap();
    let good = vgg.export_params().unwrap();
    for bad_value in [f32::NAN, f32::INFINITY] {
        let mut bad = good.clone();
        bad[2].2[5] = bad_value;
        let want = format!("tensor `{}` holds {bad_value} at index 5", bad[2].0);
        assert_invalid(vgg.import_params(&bad), &want);
        assert_invalid(vgg.import_momentum(&bad), &want);
    }
    assert_eq!(vgg.export_params().unwrap(), good, "a refused import wrote nothing");
    vgg.import_params(&good).unwrap();
}

/// NaN or infinite LRN constants made every output NaN or 0 without a word.
#[test]
fn lrn_refuses_non_finite_constants() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let a = LrnParams::ALEXNET;
    for p in
        [LrnParams { alpha: f32::NAN, ..a }, LrnParams { beta: f32::INFINITY, ..a }, LrnParams { k: f32::NAN, ..a }]
    {
        assert_invalid(ops::lrn_fwd(&x, &mut y, &p), "must be finite");
        let mut dx = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
        assert_invalid(ops::lrn_bwd(&x, &y, &mut dx, &p), "must be finite");
    }
    ops::lrn_fwd(&x, &mut y, &a).unwrap();
}

/// A dropout probability and a loss scale are values, not shapes: `Error::Invalid` (they read
/// "invalid shape: ...").
#[test]
fn probabilities_and_loss_scales_are_invalid_values() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[16]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[16]).unwrap();
    for p in [-0.1, 1.5, f32::NAN] {
        assert_invalid(ops::dropout_fwd(&x, &mut y, 1, 2, p), "p_drop");
    }
    let logits = Tensor::<f16>::zeros(&dev, &[2, 10]).unwrap();
    let labels = Tensor::<i32>::zeros(&dev, &[2]).unwrap();
    let mut bufs = XentBuffers::new(&dev, 2).unwrap();
    let (mut w, mut v, g) = (
        Tensor::<f32>::zeros(&dev, &[8]).unwrap(),
        Tensor::zeros(&dev, &[8]).unwrap(),
        Tensor::zeros(&dev, &[8]).unwrap(),
    );
    let mut params = [SgdParam { w: &mut w, v: &mut v, g: &g, w16: None, decay: true }];
    let plan = SgdPlan::new(&params).unwrap();
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_invalid(ops::softmax_xent(&logits, &labels, None, s, &mut bufs), "loss_scale");
        assert_invalid(plan.step(&mut params, &Sgd::VGG.with_scale(s), None), "loss_scale");
    }
}

/// A tensor from another `Device::emu()` (a separate device, whose memory the op's cannot use)
/// read "tensor is on device emu, but the op runs on emu": the error names the tensor and says so.
#[test]
fn a_tensor_of_another_device_of_the_same_name_is_named() {
    let (dev, other) = (Device::emu(), Device::emu());
    let x = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&other, &[8]).unwrap();
    let e = ops::relu_fwd(&x, &mut y).unwrap_err();
    assert!(matches!(e, Error::WrongDevice { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("relu output") && msg.contains("another device of that name"), "{msg}");
}
