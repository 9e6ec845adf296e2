//! The library called directly with bad input, as a third-party user might: each case is an
//! error that names the problem, never a panic, a wrapped size or a silently wrong result (a
//! NaN or zero output, a model that trains on NaN). Values that are not shapes (probabilities,
//! loss scales, normalisation and LRN constants, imported weights) are `Error::Invalid`.

use half::f16;
use std::sync::Arc;
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
use vgg_cuda::ops::{self, InputNorm, LrnParams, Sgd, SgdParam, SgdPlan, XentBuffers};
use vgg_cuda::problem::ConvProblem;
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

/// NaN or infinite LRN constants made every output NaN or 0 without a word; k <= 0 or alpha < 0
/// let the base k + alpha/size * sum reach 0 or below (NaN on a window of zeros).
#[test]
fn lrn_refuses_non_finite_constants() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let a = LrnParams::ALEXNET;
    for p in [
        LrnParams { alpha: f32::NAN, ..a },
        LrnParams { beta: f32::INFINITY, ..a },
        LrnParams { k: f32::NAN, ..a },
        LrnParams { k: 0.0, ..a },
        LrnParams { alpha: -1e-4, ..a },
        LrnParams { k: 1e-30, beta: 2.0, ..a },
    ] {
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
/// read "tensor is on device emu, but the op runs on emu"; the error names the tensor and says so.
/// Which of the two is misplaced the op cannot know: the message says that an earlier operand is
/// on the other device (it said "the op runs on", blaming the filters for a misplaced input).
/// A model's images are checked against the model's device first, by name (they used to surface
/// as an internal buffer, "normalize_input output y").
#[test]
fn a_tensor_of_another_device_of_the_same_name_is_named() {
    let (dev, other) = (Device::emu(), Device::emu());
    let x = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&other, &[8]).unwrap();
    let e = ops::relu_fwd(&x, &mut y).unwrap_err();
    assert!(matches!(e, Error::WrongDevice { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("relu output") && msg.contains("an operand checked before it"), "{msg}");
    assert!(msg.contains("two devices of one name") && !msg.contains("the op runs on"), "{msg}");
    let mut vgg = Vgg::new(&dev, small(), 1, Init::He, 1).unwrap();
    let images = Tensor::<u8>::zeros(&other, &[1, 32, 32, 3]).unwrap();
    let e = vgg.forward(&images, false, 0).unwrap_err();
    assert!(
        matches!(e, Error::WrongDevice { .. })
            && e.to_string().starts_with("VGG images is on device emu, but the model is on emu"),
        "{e}"
    );
}

/// `Linear::conv1x1`'s pixel count `n*h*w` wrapped in release builds: 2^40 * 2^20 * 2^4 pixels
/// became 0, a valid-looking empty product. It saturates, which no tensor can match.
#[test]
fn conv1x1_pixel_count_does_not_wrap() {
    let l = ops::gemm::Linear::conv1x1(1 << 40, 1 << 20, 1 << 4, 8, 8);
    assert_eq!((l.m, l.k, l.n), (usize::MAX, 8, 8));
    assert_eq!(ops::gemm::Linear::conv1x1(2, 3, 5, 8, 16).m, 30);
}

/// A device name that is none of `cuda`, `cuda:N`, `emu` is a bad value, not a missing GPU: it
/// read "CUDA device unavailable: unknown device `cpu`", which sent users looking for a driver.
#[test]
fn an_unknown_device_name_is_an_invalid_value() {
    for name in ["cpu", "cuda:x", "cuda:", "EMU", ""] {
        assert_invalid(Device::by_name(name), &format!("unknown device `{name}` (expected cuda, cuda:N or emu)"));
    }
}

/// Views of one buffer ([`Tensor::view`]) given to one launch as an output and another of its
/// tensors (an input, a second output, the workspace) that share bytes: the kernel would read
/// what it writes, or two outputs race. An `Error::Shape` naming the op and both tensors.
fn assert_overlap<T>(r: vgg_cuda::Result<T>, want: &str) {
    match r {
        Err(e @ Error::Shape(_)) => assert!(e.to_string().contains(want), "want `{want}`, got: {e}"),
        Err(e) => panic!("want an Error::Shape containing `{want}`, got: {e:?}"),
        Ok(_) => panic!("want an Error::Shape containing `{want}`, got Ok"),
    }
}

fn arena(dev: &Device, bytes: usize) -> Arc<Tensor<u8>> {
    Arc::new(Tensor::zeros(dev, &[bytes]).unwrap())
}

fn view<T: vgg_cuda::DType>(base: &Arc<Tensor<u8>>, offset: usize, shape: &[usize]) -> Tensor<T> {
    Tensor::view(base, offset, shape).unwrap()
}

/// Small integers as fp16 (exact), `seed` varying them.
fn ints(len: usize, seed: usize) -> Vec<f16> {
    (0..len).map(|i| f16::from_f32(((i * 7 + seed * 3) % 9) as f32 - 4.0)).collect()
}

#[test]
fn conv3x3_refuses_overlapping_views_before_writing() {
    let dev = Device::emu();
    let p = ConvProblem::new(1, 4, 4, 8, 8);
    let conv = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let base = arena(&dev, 1 << 16);
    let mut x: Tensor<f16> = view(&base, 0, &[1, 4, 4, 8]);
    x.copy_from_host(&ints(p.input_len(), 1)).unwrap();
    let w = Tensor::from_host(&dev, &[8, 3, 3, 8], &ints(p.filter_len(), 2)).unwrap();
    let b = Tensor::from_host(&dev, &[8], &ints(8, 3)).unwrap();
    let wsb = conv.workspace_bytes(ConvPass::Fprop);
    let mut ws = Tensor::<u8>::zeros(&dev, &[wsb]).unwrap();

    let mut y: Tensor<f16> = view(&base, 128, &[1, 4, 4, 8]); // the second half of x and on
    let e = conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut y, &mut ws);
    assert_overlap(e, "conv3x3 fprop: y (NHWC) overlaps x (NHWC) in device memory; this op cannot run in place");
    // The filter transform would write U over x: refused before it runs, x untouched.
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 4, 4, 8]).unwrap();
    let mut ws_on_x: Tensor<u8> = view(&base, 0, &[wsb]);
    let e = conv.fprop(&x, &w, Some(&b), Epilogue::Bias, &mut y, &mut ws_on_x);
    assert_overlap(e, "conv3x3 fprop: workspace overlaps x (NHWC)");
    assert_eq!(x.to_host().unwrap(), ints(p.input_len(), 1), "a refused fprop wrote x");
    let w_on_x: Tensor<f16> = view(&base, 0, &[8, 3, 3, 8]);
    let mut ws_on_x: Tensor<u8> = view(&base, 1024, &[wsb]);
    let e = conv.prepare_filter(&w_on_x, &mut ws_on_x);
    assert_overlap(e, "conv3x3 filter transform: workspace overlaps filters w (KRSC)");

    // dgrad: dx over its relu mask; wgrad: dw over dy, and db over dw.
    let dy = Tensor::from_host(&dev, &[1, 4, 4, 8], &ints(p.output_len(), 4)).unwrap();
    let mut dx: Tensor<f16> = view(&base, 0, &[1, 4, 4, 8]);
    let mut ws = Tensor::<u8>::zeros(&dev, &[conv.workspace_bytes(ConvPass::Dgrad)]).unwrap();
    assert_overlap(
        conv.dgrad(&dy, &w, Some(&x), &mut dx, &mut ws),
        "conv3x3 dgrad: dx (NHWC) overlaps relu mask (NHWC)",
    );
    let mut ws = Tensor::<u8>::zeros(&dev, &[conv.workspace_bytes(ConvPass::Wgrad)]).unwrap();
    let mut dw: Tensor<f32> = view(&base, 128, &[8, 3, 3, 8]);
    let mut db = Tensor::<f32>::zeros(&dev, &[8]).unwrap();
    assert_overlap(conv.wgrad(&x, &dy, &mut dw, Some(&mut db), &mut ws), "conv3x3 wgrad: dw (KRSC) overlaps x (NHWC)");
    let mut dw: Tensor<f32> = view(&base, 4096, &[8, 3, 3, 8]);
    let mut db: Tensor<f32> = view(&base, 4096 + 2304 - 16, &[8]);
    assert_overlap(conv.wgrad(&x, &dy, &mut dw, Some(&mut db), &mut ws), "conv3x3 wgrad: dw (KRSC) overlaps db");
}

#[test]
fn gemm_pool_and_gather_refuse_overlapping_views() {
    let dev = Device::emu();
    let base = arena(&dev, 1 << 16);
    let x: Tensor<f16> = view(&base, 0, &[2, 8]);
    let w = Tensor::<f16>::zeros(&dev, &[16, 8]).unwrap();
    let mut y: Tensor<f16> = view(&base, 16, &[2, 16]);
    assert_overlap(ops::linear_fwd(&x, &w, None, false, &mut y, None), "GEMM fwd: y overlaps x");
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 16]).unwrap();
    let mut ws: Tensor<u8> = view(&base, 0, &[4096]);
    assert_overlap(ops::linear_fwd(&x, &w, None, false, &mut y, Some(&mut ws)), "GEMM fwd: workspace overlaps x");
    let dy = Tensor::<f16>::zeros(&dev, &[2, 16]).unwrap();
    let mut dw: Tensor<f32> = view(&base, 1024, &[16, 8]);
    let mut db: Tensor<f32> = view(&base, 1024 + 512 - 16, &[16]);
    assert_overlap(ops::linear_bwd_weight(&x, &dy, &mut dw, Some(&mut db), None), "GEMM bwd_weight: dw overlaps db");

    let px: Tensor<f16> = view(&base, 0, &[1, 4, 4, 8]);
    let mut py: Tensor<f16> = view(&base, 8192, &[1, 2, 2, 8]);
    let mut arg: Tensor<u8> = view(&base, 8192 + 48, &[1, 2, 2, 8]);
    assert_overlap(ops::maxpool2x2_fwd_arg(&px, &mut py, &mut arg), "maxpool2x2 fwd: y (NHWC) overlaps argmax");
    let pdy = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let mut pdx: Tensor<f16> = view(&base, 128, &[1, 4, 4, 8]);
    assert_overlap(ops::maxpool2x2_bwd(&px, &pdy, &mut pdx), "maxpool2x2 bwd: dx (NHWC) overlaps x (NHWC)");

    let mut cols: Tensor<f16> = view(&base, 64, &[16, 8]);
    assert_overlap(ops::dense_gather(&px, 1, 1, &mut cols), "dense_gather: cols overlaps x (NHWC)");
    let mut ly: Tensor<f16> = view(&base, 32, &[1, 4, 4, 8]);
    assert_overlap(ops::lrn_fwd(&px, &mut ly, &LrnParams::ALEXNET), "lrn fwd: y (NHWC) overlaps x (NHWC)");
    let img: Tensor<u8> = view(&base, 0, &[1, 2, 2, 3]);
    let mut iy: Tensor<f16> = view(&base, 0, &[1, 2, 2, 3]);
    let e = ops::normalize_input(&img, None, &InputNorm::IMAGENET, &mut iy);
    assert_overlap(e, "normalize_input: y (NHWC) overlaps x (NHWC)");
}

#[test]
fn elementwise_softmax_and_sgd_refuse_overlapping_views() {
    let dev = Device::emu();
    let base = arena(&dev, 1 << 16);
    let x: Tensor<f16> = view(&base, 0, &[64]);
    // A partial overlap of ops that do run in place on the very same bytes.
    let mut y: Tensor<f16> = view(&base, 16, &[64]);
    let want = "relu_fwd: y overlaps x in device memory; it runs in place only when y is exactly x";
    assert_overlap(ops::relu_fwd(&x, &mut y), want);
    assert_overlap(ops::dropout_fwd(&x, &mut y, 1, 2, 0.5), "dropout: y overlaps x");
    let mut y32: Tensor<f32> = view(&base, 0, &[64]);
    assert_overlap(
        ops::cast_f16_to_f32(&x, &mut y32),
        "cast_f16_to_f32: y (f32) overlaps x (f16) in device memory; this op cannot",
    );
    let bias: Tensor<f16> = view(&base, 4096, &[8]);
    let mut by: Tensor<f16> = view(&base, 4096, &[8, 8]);
    let e = ops::bias_act(&x.reshape(&[8, 8]).unwrap(), &bias, &mut by, true);
    assert_overlap(e, "bias_act: y overlaps bias in device memory; this op cannot run in place");

    let logits: Tensor<f16> = view(&base, 8192, &[2, 10]);
    let mut dlogits: Tensor<f16> = view(&base, 8192, &[2, 10]);
    let labels = Tensor::<i32>::zeros(&dev, &[2]).unwrap();
    let mut bufs = XentBuffers::new(&dev, 2).unwrap();
    let e = ops::softmax_xent(&logits, &labels, Some(&mut dlogits), 1.0, &mut bufs);
    assert_overlap(e, "softmax_xent: dlogits overlaps logits");

    // Parameter 1's master weights over parameter 0's momentum.
    let (mut w0, g0, g1) = (
        Tensor::<f32>::zeros(&dev, &[8]).unwrap(),
        Tensor::<f32>::zeros(&dev, &[8]).unwrap(),
        Tensor::<f32>::zeros(&dev, &[16]).unwrap(),
    );
    let (mut v0, mut w1, mut v1): (Tensor<f32>, Tensor<f32>, _) =
        (view(&base, 16384, &[8]), view(&base, 16384 + 16, &[16]), Tensor::<f32>::zeros(&dev, &[16]).unwrap());
    let params = [
        SgdParam { w: &mut w0, v: &mut v0, g: &g0, w16: None, decay: true },
        SgdParam { w: &mut w1, v: &mut v1, g: &g1, w16: None, decay: false },
    ];
    assert_overlap(SgdPlan::new(&params), "sgd: parameter 0 momentum overlaps parameter 1 w");
}

/// Disjoint views of one buffer (a workspace carved into parts, a model's arena) are what a
/// memory plan makes: accepted, and bit for bit the result of separate allocations.
#[test]
fn disjoint_views_of_one_buffer_are_accepted_and_correct() {
    let dev = Device::emu();
    let p = ConvProblem::new(2, 5, 6, 8, 16);
    let conv = Conv3x3::new(p, ConvAlgo::Auto).unwrap();
    let (xv, wv, bv) = (ints(p.input_len(), 1), ints(p.filter_len(), 2), ints(p.k, 3));
    let run =
        |x: &mut Tensor<f16>, w: &mut Tensor<f16>, b: &mut Tensor<f16>, y: &mut Tensor<f16>, ws: &mut Tensor<u8>| {
            x.copy_from_host(&xv).unwrap();
            w.copy_from_host(&wv).unwrap();
            b.copy_from_host(&bv).unwrap();
            y.poison().unwrap();
            conv.fprop(x, w, Some(&*b), Epilogue::BiasRelu, y, ws).unwrap();
            y.to_host().unwrap()
        };
    let wsb = conv.workspace_bytes(ConvPass::Fprop);
    assert!(wsb > 0, "the test wants a Winograd fprop, which writes its workspace");
    let want = run(
        &mut Tensor::empty(&dev, &[2, 5, 6, 8]).unwrap(),
        &mut Tensor::empty(&dev, &[16, 3, 3, 8]).unwrap(),
        &mut Tensor::empty(&dev, &[16]).unwrap(),
        &mut Tensor::empty(&dev, &[2, 5, 6, 16]).unwrap(),
        &mut Tensor::empty(&dev, &[wsb]).unwrap(),
    );
    // Back to back, each at the next 16-byte boundary: x, w, b, y, ws.
    let sizes = [p.input_len() * 2, p.filter_len() * 2, p.k * 2, p.output_len() * 2, wsb];
    let offsets: Vec<usize> =
        sizes.iter().scan(0, |at, s| Some(std::mem::replace(at, (*at + s).next_multiple_of(16)))).collect();
    let base = arena(&dev, offsets[4] + wsb);
    let got = run(
        &mut view(&base, offsets[0], &[2, 5, 6, 8]),
        &mut view(&base, offsets[1], &[16, 3, 3, 8]),
        &mut view(&base, offsets[2], &[16]),
        &mut view(&base, offsets[3], &[2, 5, 6, 16]),
        &mut view(&base, offsets[4], &[wsb]),
    );
    assert_eq!(got, want, "conv3x3 fprop on disjoint views of one buffer");

    // A split-K GEMM whose output, operands and workspace are parts of one buffer.
    let fc = ops::gemm::Linear::new(2, 512, 16);
    let wsb = fc.workspace_bytes(ops::gemm::Pass::Fwd);
    assert!(wsb > 0, "the test wants a split-K GEMM, which writes its workspace");
    let (xv, wv) = (ints(2 * 512, 5), ints(16 * 512, 6));
    let x = Tensor::from_host(&dev, &[2, 512], &xv).unwrap();
    let w = Tensor::from_host(&dev, &[16, 512], &wv).unwrap();
    let mut y = Tensor::<f16>::empty(&dev, &[2, 16]).unwrap();
    ops::linear_fwd(&x, &w, None, false, &mut y, Some(&mut Tensor::empty(&dev, &[wsb]).unwrap())).unwrap();
    let base = arena(&dev, 2048 + 16384 + 64 + wsb);
    let (mut xs, mut ws16): (Tensor<f16>, Tensor<f16>) = (view(&base, 0, &[2, 512]), view(&base, 2048, &[16, 512]));
    xs.copy_from_host(&xv).unwrap();
    ws16.copy_from_host(&wv).unwrap();
    let (mut ys, mut wss): (Tensor<f16>, Tensor<u8>) =
        (view(&base, 2048 + 16384, &[2, 16]), view(&base, 2048 + 16384 + 64, &[wsb]));
    ops::linear_fwd(&xs, &ws16, None, false, &mut ys, Some(&mut wss)).unwrap();
    assert_eq!(ys.to_host().unwrap(), y.to_host().unwrap(), "split-K GEMM on disjoint views of one buffer");
}

/// An op from one fp16 tensor to another.
type UnaryOp<'a> = &'a dyn Fn(&Tensor<f16>, &mut Tensor<f16>) -> vgg_cuda::Result<()>;

/// The element-wise ops documented to run in place take an output that is exactly their input
/// (two views of the same bytes) and give the out-of-place result bit for bit.
#[test]
fn elementwise_ops_run_in_place_where_documented() {
    let dev = Device::emu();
    let n = 8 * 125 + 3; // vector groups and a tail (dropout)
    let (xv, dyv) = (ints(n, 1), ints(n, 2));
    let bias = Tensor::from_host(&dev, &[n], &ints(n, 3)).unwrap();
    let base = arena(&dev, 4 * n.next_multiple_of(16));
    let in_place = |f: UnaryOp| {
        let x = Tensor::from_host(&dev, &[n], &xv).unwrap();
        let mut y = Tensor::<f16>::empty(&dev, &[n]).unwrap();
        f(&x, &mut y).unwrap();
        let (mut a, mut b): (Tensor<f16>, Tensor<f16>) = (view(&base, 0, &[n]), view(&base, 0, &[n]));
        a.copy_from_host(&xv).unwrap();
        f(&a, &mut b).unwrap();
        (b.to_host().unwrap(), y.to_host().unwrap())
    };
    let dy = Tensor::from_host(&dev, &[n], &dyv).unwrap();
    let cases: [(&str, UnaryOp); 5] = [
        ("relu_fwd", &|x, y| ops::relu_fwd(x, y)),
        ("relu_bwd dx = y", &|x, y| ops::relu_bwd(x, &dy, y)),
        ("relu_bwd dx = dy", &|x, y| ops::relu_bwd(&dy, x, y)),
        ("bias_act", &|x, y| ops::bias_act(x, &bias, y, true)),
        ("dropout_fwd", &|x, y| ops::dropout_fwd(x, y, 7, 3, 0.5)),
    ];
    for (name, f) in cases {
        let (got, want) = in_place(f);
        assert_eq!(got, want, "{name} in place");
    }
}
