//! Bad arguments: each a clear error, never a panic.

use super::*;

// ---------------------------------------------------------------------------------------------
// Bad arguments.

/// Each call is refused with an error whose message contains its needle: not a panic, not a
/// silent run.
#[test]
fn bad_arguments_are_clear_errors() {
    let dev = Device::emu();
    let t16 = |shape: &[usize]| Tensor::<f16>::zeros(&dev, shape).unwrap();
    let t32 = |shape: &[usize]| Tensor::<f32>::zeros(&dev, shape).unwrap();
    type Call<'a> = Box<dyn Fn() -> vgg_cuda::Result<()> + 'a>;
    let p = LrnParams::ALEXNET;
    let cases: Vec<(&str, Call)> = vec![
        // Max-pool: a side under 2 has no window.
        ("H, W >= 2", Box::new(|| ops::maxpool2x2_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 0, 0, 4])))),
        ("H, W >= 2", Box::new(|| ops::maxpool2x2_fwd(&t16(&[2, 5, 1, 3]), &mut t16(&[2, 2, 0, 3])))),
        (
            "H, W >= 2",
            Box::new(|| ops::maxpool2x2_bwd(&t16(&[1, 1, 6, 2]), &t16(&[1, 0, 3, 2]), &mut t16(&[1, 1, 6, 2]))),
        ),
        (
            "must have shape [1, 1, 1, 4]",
            Box::new(|| ops::maxpool2x2_fwd(&t16(&[1, 3, 3, 4]), &mut t16(&[1, 2, 2, 4]))),
        ),
        ("NHWC", Box::new(|| ops::maxpool2x2_fwd(&t16(&[4, 4, 4]), &mut t16(&[2, 2, 4])))),
        (
            "argmax",
            Box::new(|| {
                ops::maxpool2x2_bwd_arg(
                    &Tensor::<u8>::zeros(&dev, &[1, 2, 1, 4]).unwrap(),
                    &t16(&[1, 1, 2, 4]),
                    &mut t16(&[1, 2, 4, 4]),
                )
            }),
        ),
        // Element-wise: lengths and the bias.
        ("relu output", Box::new(|| ops::relu_fwd(&t16(&[7]), &mut t16(&[8])))),
        ("relu dy", Box::new(|| ops::relu_bwd(&t16(&[7]), &t16(&[6]), &mut t16(&[7])))),
        ("bias", Box::new(|| ops::bias_act(&t16(&[2, 5]), &t16(&[4]), &mut t16(&[2, 5]), true))),
        ("no channel dimension", Box::new(|| ops::bias_act(&t16(&[2, 0]), &t16(&[0]), &mut t16(&[2, 0]), true))),
        ("cast output", Box::new(|| ops::cast_f32_to_f16(&t32(&[5]), &mut t16(&[4])))),
        ("cast output", Box::new(|| ops::cast_f16_to_f32(&t16(&[5]), &mut t32(&[6])))),
        // LRN: the window and the constants.
        (
            "window size",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { size: 0, ..p })),
        ),
        ("k > 0", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { k: 0.0, ..p }))),
        (
            "alpha >= 0",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { alpha: -1.0, ..p })),
        ),
        (
            "finite",
            Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 4]), &mut t16(&[1, 1, 1, 4]), &LrnParams { beta: f32::NAN, ..p })),
        ),
        ("no channels", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 0]), &mut t16(&[1, 1, 1, 0]), &p))),
        ("shared memory", Box::new(|| ops::lrn_fwd(&t16(&[1, 1, 1, 20_000]), &mut t16(&[1, 1, 1, 20_000]), &p))),
        // Softmax: shapes, the scale, the buffers' capacity.
        ("[batch, classes]", Box::new(|| softmax(&dev, &[6], &[6], 1.0, 6))),
        ("empty logits", Box::new(|| softmax(&dev, &[2, 0], &[2], 1.0, 2))),
        ("empty logits", Box::new(|| softmax(&dev, &[0, 3], &[0], 1.0, 2))),
        ("labels", Box::new(|| softmax(&dev, &[2, 3], &[3], 1.0, 2))),
        ("capacity", Box::new(|| softmax(&dev, &[5, 3], &[5], 1.0, 4))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], 0.0, 2))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], f32::NAN, 2))),
        ("loss_scale", Box::new(|| softmax(&dev, &[2, 3], &[2], f32::INFINITY, 2))),
        ("batch must be at least 1", Box::new(|| XentBuffers::new(&dev, 0).map(|_| ()))),
        // Dropout: the probability.
        ("p_drop", Box::new(|| ops::dropout_fwd(&t16(&[4]), &mut t16(&[4]), 1, 1, 1.5))),
        ("p_drop", Box::new(|| ops::dropout_fwd(&t16(&[4]), &mut t16(&[4]), 1, 1, -0.1))),
        ("p_drop", Box::new(|| ops::dropout_bwd(&t16(&[4]), &mut t16(&[4]), 1, 1, f32::NAN))),
        ("dropout dx", Box::new(|| ops::dropout_bwd(&t16(&[4]), &mut t16(&[5]), 1, 1, 0.5))),
        (
            "hidden layer 2",
            Box::new(|| {
                let vars = ops::StepVars::new(&dev)?;
                ops::dropout(&t16(&[4]), &mut t16(&[4]), ops::DropoutKey::Device { vars: &vars, layer: 2 }, 0.5)
            }),
        ),
        // Input normalisation.
        ("3 channels", Box::new(|| norm_input(&dev, [1, 2, 2, 4], &InputNorm::IMAGENET))),
        ("std", Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0; 3], std: Some([1.0, 0.0, 1.0]) }))),
        (
            "std",
            Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0; 3], std: Some([1.0, f32::NAN, 1.0]) })),
        ),
        (
            "mean",
            Box::new(|| norm_input(&dev, [1, 2, 2, 3], &InputNorm { mean: [0.0, f32::INFINITY, 0.0], std: None })),
        ),
        // The optimizer: empty sets and tensors, mismatched lengths, hyper-parameters.
        ("no parameter tensors", Box::new(|| SgdPlan::new(&[]).map(|_| ()))),
        ("parameter 1 is empty", Box::new(|| sgd_lens(&dev, &[3, 0, 2], 3, Sgd::VGG, 1.0))),
        ("parameter 0 momentum", Box::new(|| sgd_lens(&dev, &[3], 2, Sgd::VGG, 1.0))),
        ("learning rate", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { lr: f32::NAN, ..Sgd::VGG }, 1.0))),
        ("learning rate", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { lr: -1.0, ..Sgd::VGG }, 1.0))),
        ("momentum", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { momentum: 1.0, ..Sgd::VGG }, 1.0))),
        ("weight decay", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd { weight_decay: -1e-4, ..Sgd::VGG }, 1.0))),
        ("loss_scale", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd::VGG, 0.0))),
        ("loss_scale", Box::new(|| sgd_lens(&dev, &[3], 3, Sgd::VGG, f32::INFINITY))),
        // GEMM: mismatched operands, a tensor-core shape it cannot take, a split with no or too
        // small a workspace, a zero split.
        (
            "does not flatten",
            Box::new(|| gemm::linear_fwd(&t16(&[3, 9]), &t16(&[8, 8]), None, false, &mut t16(&[3, 8]), None)),
        ),
        (
            "multiples of 8",
            Box::new(|| {
                gemm::linear_fwd_with(tc(1), &t16(&[3, 12]), &t16(&[8, 12]), None, false, &mut t16(&[3, 8]), None)
            }),
        ),
        (
            "at least 1",
            Box::new(|| {
                gemm::linear_fwd_with(tc(0), &t16(&[3, 16]), &t16(&[8, 16]), None, false, &mut t16(&[3, 8]), None)
            }),
        ),
        (
            "needs a workspace",
            Box::new(|| gemm::linear_bwd_data_with(tc(2), &t16(&[3, 256]), &t16(&[256, 8]), &mut t16(&[3, 8]), None)),
        ),
        (
            "workspace has",
            Box::new(|| {
                let mut ws = Tensor::<u8>::zeros(&dev, &[16]).unwrap();
                gemm::linear_bwd_weight_with(
                    tc(3),
                    &t16(&[256, 8]),
                    &t16(&[256, 8]),
                    &mut t32(&[8, 8]),
                    None,
                    Some(&mut ws),
                )
            }),
        ),
        (
            "filters",
            Box::new(|| {
                gemm::conv1x1_fwd(&t16(&[1, 2, 2, 8]), &t16(&[4, 1, 1, 7]), None, false, &mut t16(&[1, 2, 2, 4]), None)
            }),
        ),
    ];
    let mut failures = vec![];
    for (i, (needle, call)) in cases.iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(Err(e)) if e.to_string().contains(needle) => {}
            Ok(Err(e)) => failures.push(format!("#{i} ({needle}): error `{e}` does not say `{needle}`")),
            Ok(Ok(())) => failures.push(format!("#{i} ({needle}): accepted")),
            Err(_) => failures.push(format!("#{i} ({needle}): panicked")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tc(splits: usize) -> Algo {
    Algo::TensorCore { tile: Tile::T64x128, splits }
}

/// One loss launch of logits `[..]` with `labels` of that shape, read back.
fn softmax(dev: &Device, z: &[usize], labels: &[usize], scale: f32, capacity: usize) -> vgg_cuda::Result<()> {
    let zt = Tensor::<f32>::zeros(dev, z)?;
    let lt = Tensor::<i32>::zeros(dev, labels)?;
    let mut bufs = XentBuffers::new(dev, capacity.max(1))?;
    ops::softmax_xent(&zt, &lt, None, scale, &mut bufs)?;
    bufs.check().map(|_| ())
}

fn norm_input(dev: &Device, shape: [usize; 4], norm: &InputNorm) -> vgg_cuda::Result<()> {
    let x = Tensor::<u8>::zeros(dev, &shape)?;
    ops::normalize_input(&x, None, norm, &mut Tensor::zeros(dev, &shape)?)
}

/// A plan over tensors of `lens` (momentum of `v_len` for the first), then one step.
fn sgd_lens(dev: &Device, lens: &[usize], v_len: usize, sgd: Sgd, scale: f32) -> vgg_cuda::Result<()> {
    let mut ws: Vec<Tensor<f32>> = lens.iter().map(|&n| Tensor::zeros(dev, &[n])).collect::<Result<_, _>>()?;
    let mut vs: Vec<Tensor<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| Tensor::zeros(dev, &[if i == 0 { v_len } else { n }]))
        .collect::<Result<_, _>>()?;
    let gs: Vec<Tensor<f32>> = lens.iter().map(|&n| Tensor::zeros(dev, &[n])).collect::<Result<_, _>>()?;
    let mut params: Vec<SgdParam> = ws
        .iter_mut()
        .zip(vs.iter_mut())
        .zip(&gs)
        .map(|((w, v), g)| SgdParam { w, v, g, w16: None, decay: true })
        .collect();
    let plan = SgdPlan::new(&params)?;
    plan.step(&mut params, &sgd.validate().map(|_| sgd)?.with_scale(scale), None)
}

/// Labels outside `[0, classes)` are reported by `check`, naming the first bad row, and give
/// that row a NaN loss and gradient; the other rows' counts stay right.
#[test]
fn softmax_bad_labels_are_reported() {
    let dev = Device::emu();
    let mut rng = ShapeRng(SampleRng::new(env("VGG_SWEEP_SEED", 1)));
    for _ in 0..6 {
        let (batch, classes) = (rng.range(1, 9), rng.range(1, 7));
        let mut labels: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
        let row = rng.below(batch);
        labels[row] = rng.pick(&[-1, classes as i32, i32::MIN, i32::MAX]);
        let z = normals16(&mut rng, batch * classes, 2.0);
        let mut bufs = XentBuffers::new(&dev, batch).unwrap();
        let mut dz = empty16(&dev, &[batch, classes]);
        let lt = Tensor::from_host(&dev, &[batch], &labels).unwrap();
        ops::softmax_xent(&up16(&dev, &[batch, classes], &z), &lt, Some(&mut dz), 1.0, &mut bufs).unwrap();
        let e = bufs.check().unwrap_err();
        let want = format!("label {} of row {row} is not in 0..{classes}", labels[row]);
        assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains(&want), "{labels:?}: {e}");
        let dz = dz.to_f32().unwrap();
        assert!(dz[row * classes..(row + 1) * classes].iter().all(|v| v.is_nan()), "{labels:?}: row {row} dz {dz:?}");
    }
}

/// Past the launch's cap of 132 x 16 blocks of 256 threads x 8 elements (4.3M elements), the
/// dropout and input kernels grid-stride: a tensor just past it, with a flipped image, against
/// the reference.
#[test]
fn grid_striding_launches_match_reference() {
    let dev = Device::emu();
    let mut rng = ShapeRng(SampleRng::new(env("VGG_SWEEP_SEED", 1)));
    let (n, h, w) = (2, 601, 1201); // 4.33M elements: one group of 8 past the cap
    let x: Vec<u8> = (0..n * h * w * 3).map(|_| rng.0.next_u64() as u8).collect();
    let flip = [0u8, 1];
    let mut y = empty16(&dev, &[n, h, w, 3]);
    let (xt, ft) = (Tensor::from_host(&dev, &[n, h, w, 3], &x).unwrap(), Tensor::from_host(&dev, &[n], &flip).unwrap());
    ops::normalize_input(&xt, Some(&ft), &InputNorm::IMAGENET, &mut y).unwrap();
    let want = r::f32_to_f16_round(&r::normalize_input([n, h, w, 3], &x, &InputNorm::IMAGENET, Some(&flip)));
    assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "normalize_input {n}x{h}x{w}");
    let len = 132 * 16 * 256 * 8 + 13;
    let v: Vec<f32> = (0..len).map(|i| (i % 2047) as f32 - 1023.0).collect();
    let mut y = empty16(&dev, &[len]);
    ops::dropout_fwd(&up16(&dev, &[len], &v), &mut y, 5, 6, 0.25).unwrap();
    assert_eq!(
        diff16(&y.to_f32().unwrap(), &r::f32_to_f16_round(&r::dropout_fwd(&v, 5, 6, 0.25))),
        None,
        "dropout {len}"
    );
    check_fences("grid-striding launches");
}
