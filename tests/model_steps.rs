//! Training steps of the small VGG on emu: overfitting a tiny batch, an overflowing step that
//! skips and halves the loss scale, bad labels and learning rates, and queued, graph-replayed
//! and profiled steps against plain ones, bit for bit.

mod model_common;

use half::f16;
use model_common::{batch_data, small, upload};
use vgg_cuda::model::{Arch, Init, OptimConfig, Sharing, StepStats, Vgg, VggConfig};
use vgg_cuda::{Device, Tensor};

#[test]
fn overfits_a_tiny_batch() {
    let dev = Device::emu();
    let cfg = small(Arch::A, 0.0);
    let batch = 4;
    let o = OptimConfig { init_scale: 1024.0, ..Default::default() };
    let mut vgg = Vgg::with_optim(&dev, cfg.clone(), batch, Init::He, 3, o).unwrap();
    let (images, labels) = batch_data(&cfg, batch, 1);
    let (xi, xl) = upload(&dev, &cfg, &images, &labels);
    let mut losses = vec![];
    for step in 0..40 {
        let s = vgg.train_step(&xi, &xl, 0.005, step).unwrap();
        losses.push(s.loss);
    }
    let last = *losses.last().unwrap();
    assert!(last < 0.05, "loss did not approach zero: {losses:?}");
    let s = vgg.evaluate(&xi, &xl).unwrap();
    assert_eq!(s.top1, batch, "after overfitting every image is classified right: {losses:?}");
}

#[test]
fn overflow_skips_step_halves_scale_keeps_weights() {
    let dev = Device::emu();
    let cfg = small(Arch::A, 0.5);
    let batch = 2;
    let mut vgg = Vgg::new(&dev, cfg.clone(), batch, Init::He, 9).unwrap();
    let (images, labels) = batch_data(&cfg, batch, 2);
    let (xi, xl) = upload(&dev, &cfg, &images, &labels);
    let before: Vec<(Vec<f32>, Vec<f32>, Vec<f16>)> =
        vgg.params().iter().map(|p| (p.w.to_host().unwrap(), p.v.to_host().unwrap(), p.h.to_host().unwrap())).collect();
    let scale = vgg.loss_scale();
    vgg.compute_grads(&xi, &xl, 0).unwrap();
    let p = &mut vgg.params_mut()[4];
    let mut g = p.g.to_host().unwrap();
    g[3] = f32::INFINITY;
    p.g.copy_from_host(&g).unwrap();
    assert!(!vgg.apply_grads(0.01).unwrap(), "the step must be skipped");
    assert_eq!(vgg.loss_scale(), scale / 2.0);
    assert_eq!(vgg.scaler_state().skipped, 1);
    for (p, (w, v, h)) in vgg.params().iter().zip(&before) {
        assert_eq!(&p.w.to_host().unwrap(), w, "{} master changed", p.name);
        assert_eq!(&p.v.to_host().unwrap(), v, "{} momentum changed", p.name);
        assert_eq!(&p.h.to_host().unwrap(), h, "{} fp16 copy changed", p.name);
    }
    // The next clean step applies.
    let s = vgg.train_step(&xi, &xl, 0.01, 1).unwrap();
    assert!(!s.skipped && s.loss_scale == scale / 2.0);
}

/// A bad label is an `Error::Invalid` naming its row, reported once: the step after it, an
/// evaluation, and queued steps run normally instead of failing on the stale status; an
/// evaluation between a queued step and its sync leaves that step's status to the sync. The
/// step that reported it left the weights and momentum as they were (its gradients are NaN, so
/// the overflow check skipped the update) and halved the loss scale.
#[test]
fn a_bad_label_is_reported_once() {
    let dev = Device::emu();
    let cfg = small(Arch::A, 0.0);
    let batch = 2;
    let mut vgg = Vgg::new(&dev, cfg.clone(), batch, Init::He, 5).unwrap();
    let (images, labels) = batch_data(&cfg, batch, 3);
    let (xi, xl) = upload(&dev, &cfg, &images, &labels);
    let bad = Tensor::from_host(&dev, &[batch], &[labels[0], cfg.classes as i32]).unwrap();
    let state = |v: &Vgg| -> Vec<Vec<f32>> {
        v.params().iter().flat_map(|p| [p.w.to_host().unwrap(), p.v.to_host().unwrap()]).collect()
    };
    // A clean step first, so that the momentum is not zero and a skipped update shows in it too.
    vgg.train_step(&xi, &xl, 0.01, 0).unwrap();
    let (before, scale) = (state(&vgg), vgg.loss_scale());
    let e = vgg.train_step(&xi, &bad, 0.01, 1).unwrap_err();
    assert!(matches!(e, vgg_cuda::Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("label 5 of row 1 is not in 0..5"), "{e}");
    assert!(state(&vgg) == before, "a step with a bad label must not update weights or momentum");
    assert_eq!(vgg.loss_scale(), scale / 2.0, "the skipped step halves the scale, as for any NaN");
    let s = vgg.train_step(&xi, &xl, 0.01, 1).unwrap();
    assert!(s.loss.is_finite() && s.batch == batch && !s.skipped, "{s:?}");
    assert!(state(&vgg) != before, "the next clean step applies");
    let e = vgg.evaluate(&xi, &bad).unwrap_err();
    assert!(matches!(e, vgg_cuda::Error::Invalid(_)) && e.to_string().contains("label 5 of row 1"), "{e}");
    assert_eq!(vgg.evaluate(&xi, &xl).unwrap().rows, batch);
    vgg.train_step_queued(&xi, &bad, 0.01, 2).unwrap();
    // An evaluation before the sync has its own status: it neither reports nor clears the
    // queued step's bad label, which the sync does.
    assert_eq!(vgg.evaluate(&xi, &xl).unwrap().rows, batch);
    let e = vgg.sync().unwrap_err();
    assert!(matches!(e, vgg_cuda::Error::Invalid(_)) && e.to_string().contains("label 5 of row 1"), "{e}");
    vgg.train_step_queued(&xi, &xl, 0.01, 3).unwrap();
    assert!(vgg.sync().unwrap().is_some_and(|s| s.loss.is_finite()));
}

/// A NaN, negative or infinite learning rate is an `Error::Invalid` before anything is launched:
/// the weights stay as they were. So is a model built with momentum outside [0, 1).
#[test]
fn a_bad_learning_rate_launches_nothing() {
    let dev = Device::emu();
    let cfg = small(Arch::A, 0.5);
    let batch = 2;
    let mut vgg = Vgg::new(&dev, cfg.clone(), batch, Init::He, 5).unwrap();
    let (images, labels) = batch_data(&cfg, batch, 3);
    let (xi, xl) = upload(&dev, &cfg, &images, &labels);
    let before: Vec<Vec<f32>> = vgg.params().iter().map(|p| p.w.to_host().unwrap()).collect();
    let launches = dev.launches();
    for lr in [f32::NAN, -0.01, f32::INFINITY] {
        for e in [
            vgg.train_step(&xi, &xl, lr, 0).unwrap_err(),
            vgg.train_step_queued(&xi, &xl, lr, 0).unwrap_err(),
            vgg.train_step_graph(&xi, &xl, lr, 0).unwrap_err(),
            vgg.apply_grads(lr).unwrap_err(),
        ] {
            assert!(matches!(e, vgg_cuda::Error::Invalid(_)) && e.to_string().contains("learning rate"), "{lr}: {e}");
        }
    }
    assert_eq!(dev.launches(), launches, "nothing may be launched");
    let after: Vec<Vec<f32>> = vgg.params().iter().map(|p| p.w.to_host().unwrap()).collect();
    assert!(after == before, "the weights changed");
    let o = OptimConfig { momentum: 1.5, ..Default::default() };
    let e = Vgg::with_optim(&dev, cfg, batch, Init::He, 5, o).err().expect("momentum 1.5 accepted");
    assert!(e.to_string().contains("momentum 1.5"), "{e}");
}

/// Two models after the same `steps` training steps: the last step's statistics, the loss
/// scaler's state and every weight and momentum agree bit for bit, and the run both skipped
/// (overflowed) and applied steps.
fn assert_same_state((a, sa): (&Vgg, StepStats), (b, sb): (&Vgg, StepStats), steps: u64) {
    assert_eq!(
        (sb.loss.to_bits(), sb.top1, sb.top5, sb.skipped, sb.loss_scale),
        (sa.loss.to_bits(), sa.top1, sa.top5, sa.skipped, sa.loss_scale)
    );
    let (x, y) = (a.scaler_state(), b.scaler_state());
    assert_eq!((y.scale, y.clean_steps, y.skipped), (x.scale, x.clean_steps, x.skipped));
    assert!(x.skipped >= 1 && x.skipped < steps, "the run should both skip and apply steps: {x:?}");
    for (p, q) in a.params().iter().zip(b.params()) {
        let bits = |t: &Tensor<f32>| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(&p.w) == bits(&q.w) && bits(&p.v) == bits(&q.v), "{}: weights or momenta differ", p.name);
    }
}

/// Two identical small nets (config A, dropout 0.5, batch 2, He init, seed 8) whose fp16
/// gradients overflow at the starting scale 65536 and whose scale grows every 2 clean steps:
/// the pair the step-mode comparisons below run side by side.
fn twin_nets(dev: &Device) -> (VggConfig, usize, Vgg, Vgg) {
    let (cfg, batch) = (small(Arch::A, 0.5), 2);
    let o = OptimConfig { init_scale: 65536.0, growth_interval: 2, ..Default::default() };
    let net = || Vgg::with_optim(dev, cfg.clone(), batch, Init::He, 8, o).unwrap();
    let (a, b) = (net(), net());
    (cfg, batch, a, b)
}

/// Queued steps (nothing read back, the loss scale's rules on the device) end where
/// `train_step` does, bit for bit, through overflowing steps (this net's fp16 gradients overflow
/// at 65536) and scale growth (every 2 clean steps); the sync reports the last step.
#[test]
fn queued_steps_match_train_step_bit_for_bit() {
    let dev = Device::emu();
    let (cfg, batch, mut host, mut queued) = twin_nets(&dev);
    let mut last = None;
    for step in 0..6u64 {
        let (images, labels) = batch_data(&cfg, batch, 70 + step);
        let (xi, xl) = upload(&dev, &cfg, &images, &labels);
        last = Some(host.train_step(&xi, &xl, 0.01, step).unwrap());
        queued.train_step_queued(&xi, &xl, 0.01, step).unwrap();
    }
    // The host cannot unscale gradients while the scale it would divide by is on the device.
    assert!(queued.grads().unwrap_err().to_string().contains("sync first"));
    let (h, q) = (last.unwrap(), queued.sync().unwrap().expect("steps were queued"));
    assert_same_state((&host, h), (&queued, q), 6);
    assert!(queued.sync().unwrap().is_none(), "nothing queued since");
}

/// Steps replayed from a captured graph end where queued steps do, bit for bit: dropout on (its
/// keys change every step), a learning rate that changes every step, overflowing steps. The
/// graph is captured again after a relayout and for new input buffers; between captures a
/// step costs the host two launches (the step's values, the graph).
#[test]
fn graph_steps_match_queued_steps_bit_for_bit() {
    let dev = Device::emu();
    let (cfg, batch, mut queued, mut graphed) = twin_nets(&dev);
    let (images, labels) = batch_data(&cfg, batch, 70);
    let (mut xi, mut xl) = upload(&dev, &cfg, &images, &labels);
    for step in 0..7u64 {
        let (images, labels) = batch_data(&cfg, batch, 70 + step);
        if step == 5 {
            // A second pair of buffers, made while the first is alive: other addresses.
            let (ni, nl) = upload(&dev, &cfg, &images, &labels);
            (xi, xl) = (ni, nl);
        } else {
            xi.copy_from_host(&images).unwrap();
            xl.copy_from_host(&labels).unwrap();
        }
        if step == 3 {
            graphed.relayout(Sharing::Separate).unwrap();
        }
        let lr = 0.01 / (1 + step) as f32;
        queued.train_step_queued(&xi, &xl, lr, step).unwrap();
        let launches = dev.launches();
        graphed.train_step_graph(&xi, &xl, lr, step).unwrap();
        let host_launches = dev.launches() - launches;
        // Captures count their launches as they are queued.
        let captured = if [0, 3, 5].contains(&step) { graphed.graph_launches() as u64 } else { 0 };
        assert_eq!(host_launches, captured + 2, "step {step}: (a capture,) the step's values and the graph");
        assert!(graphed.graph_launches() > 30, "a whole step is captured: {}", graphed.graph_launches());
    }
    let (q, g) = (queued.sync().unwrap().unwrap(), graphed.sync().unwrap().unwrap());
    assert_same_state((&queued, q), (&graphed, g), 7);
    graphed.keep_trace(true);
    let err = graphed.train_step_graph(&xi, &xl, 0.01, 7).unwrap_err().to_string();
    assert!(err.contains("keep_trace"), "{err}");
}

/// Profiling a training step (events around every launch) changes nothing it computes.
#[test]
fn a_profiled_step_computes_what_a_plain_one_does() {
    let dev = Device::emu();
    let (cfg, batch, mut plain, mut profiled) = twin_nets(&dev);
    let mut last = None;
    for step in 0..4u64 {
        let (images, labels) = batch_data(&cfg, batch, 90 + step);
        let (xi, xl) = upload(&dev, &cfg, &images, &labels);
        let a = plain.train_step(&xi, &xl, 0.01, step).unwrap();
        dev.profile_start().unwrap();
        let b = profiled.train_step(&xi, &xl, 0.01, step).unwrap();
        assert!(!dev.profile_stop().unwrap().is_empty());
        last = Some((a, b));
    }
    let (a, b) = last.unwrap();
    assert_same_state((&plain, a), (&profiled, b), 4);
}
