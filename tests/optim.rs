//! The optimizer on emu: multi-tensor SGD bit-exact against the reference (selftest
//! check), schedule independence, the loss scaler's state machine, an Inf gradient that
//! skips the step and halves the scale, and a plan given the wrong tensors.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16, bits32, values};
use vgg_cuda::ops::{LossScaler, Sgd, SgdParam, SgdPlan, StepVars};
use vgg_cuda::{reference as r, Device, Error, Tensor};

#[test]
fn sgd_matches_reference() {
    assert_check_passes("sgd");
}

/// A weight (decayed, with an fp16 copy) and a bias, as one layer has them.
struct Layer {
    w: Tensor<f32>,
    v: Tensor<f32>,
    g: Tensor<f32>,
    w16: Tensor<f16>,
    b: Tensor<f32>,
    bv: Tensor<f32>,
    bg: Tensor<f32>,
}

impl Layer {
    fn new(dev: &Device, n: usize, nb: usize, g: &[f32], bg: &[f32]) -> Self {
        Self {
            w: Tensor::from_host(dev, &[n], &values(n, 10, 0.1)).unwrap(),
            v: Tensor::from_host(dev, &[n], &values(n, 11, 0.01)).unwrap(),
            g: Tensor::from_host(dev, &[n], g).unwrap(),
            w16: Tensor::zeros(dev, &[n]).unwrap(),
            b: Tensor::from_host(dev, &[nb], &values(nb, 12, 0.1)).unwrap(),
            bv: Tensor::zeros(dev, &[nb]).unwrap(),
            bg: Tensor::from_host(dev, &[nb], bg).unwrap(),
        }
    }
    fn params(&mut self) -> Vec<SgdParam<'_>> {
        vec![
            SgdParam { w: &mut self.w, v: &mut self.v, g: &self.g, w16: Some(&mut self.w16), decay: true },
            SgdParam { w: &mut self.b, v: &mut self.bv, g: &self.bg, w16: None, decay: false },
        ]
    }
    /// The bits of everything a step writes: w, v, b, bv (f32) and the fp16 copy.
    fn state(&self) -> (Vec<Vec<u32>>, Vec<u16>) {
        (vec![bits32(&self.w), bits32(&self.v), bits32(&self.b), bits32(&self.bv)], bits16(&self.w16))
    }
}

#[test]
fn sgd_is_schedule_independent() {
    assert_schedule_independent("sgd_multi_f32", |dev| {
        let n = 70_001; // two chunks, a scalar tail
        let mut l = Layer::new(dev, n, 37, &values(n, 13, 100.0), &values(37, 14, 100.0));
        let plan = SgdPlan::new(&l.params()).unwrap();
        plan.step(&mut l.params(), &Sgd::VGG.with_scale(256.0), None).unwrap();
        l.state()
    });
}

#[test]
fn loss_scaler_state_machine() {
    let dev = Device::emu();
    let mut s = LossScaler::with(&dev, 1024.0, 3).unwrap();
    assert!(s.update(false) && s.update(false));
    assert_eq!(s.scale(), 1024.0);
    assert!(s.update(false));
    assert_eq!(s.scale(), 2048.0, "grows after 3 clean steps");
    assert!(s.update(false) && s.update(false));
    assert!(!s.update(true));
    assert_eq!(s.scale(), 1024.0, "halves on overflow");
    assert!(s.update(false) && s.update(false));
    assert_eq!(s.scale(), 1024.0, "the overflow restarted the count");
    assert!(s.update(false));
    assert_eq!((s.scale(), s.skipped()), (2048.0, 1));

    let d = LossScaler::new(&dev).unwrap();
    assert_eq!(d.scale(), 65536.0);
    let mut top = LossScaler::with(&dev, f32::MAX, 1).unwrap();
    top.update(false);
    assert_eq!(top.scale(), f32::MAX, "never grows to infinity");
    // Bad values are Error::Invalid naming them (they were Error::Shape, "invalid shape: ...").
    for (init, interval, want) in [
        (0.0, 1, "initial scale 0 must be positive"),
        (f32::NAN, 1, "initial scale NaN"),
        (f32::INFINITY, 1, "initial scale inf"),
        (-2.0, 1, "initial scale -2"),
        (1.0, 0, "growth interval 0 must be at least 1"),
    ] {
        match LossScaler::with(&dev, init, interval) {
            Err(Error::Invalid(m)) => assert!(m.contains(want), "{want}: {m}"),
            Err(e) => panic!("{want}: expected Error::Invalid, got {e:?}"),
            Ok(_) => panic!("{want}: accepted"),
        }
    }
    // So is a checkpoint's bad scale handed to restore.
    for bad in [0.0, f32::NAN, -1.0] {
        let e = top.restore(bad, 0, 0).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("restored scale"), "{bad}: {e}");
    }
}

#[test]
fn inf_gradient_skips_the_step_and_halves_the_scale() {
    let dev = Device::emu();
    let n = 1000;
    let (mut g, bg) = (values(n, 20, 50.0), values(5, 21, 50.0));
    g[617] = f32::INFINITY;
    let mut l = Layer::new(&dev, n, 5, &g, &bg);
    let plan = SgdPlan::new(&l.params()).unwrap();
    let mut scaler = LossScaler::with(&dev, 4096.0, 2000).unwrap();
    let before = l.state();
    let applied = scaler.step(&plan, &mut l.params(), Sgd::VGG).unwrap();
    assert!(!applied, "an Inf gradient must skip the step");
    assert!(scaler.flag().read().unwrap());
    assert_eq!(scaler.scale(), 2048.0);
    assert_eq!(l.state(), before, "a skipped step must not touch weights, momenta or copies");

    // A NaN in the bias alone (a tensor of 5, scalar path) is caught too.
    g[617] = 1.0;
    l.g.copy_from_host(&g).unwrap();
    let mut bad_b = bg.clone();
    bad_b[4] = f32::NAN;
    l.bg.copy_from_host(&bad_b).unwrap();
    assert!(!scaler.step(&plan, &mut l.params(), Sgd::VGG).unwrap());
    assert_eq!(scaler.scale(), 1024.0);
    assert_eq!(l.state(), before);

    // Clean gradients: the step is applied, at the halved scale, exactly as the reference.
    l.bg.copy_from_host(&bg).unwrap();
    assert!(scaler.step(&plan, &mut l.params(), Sgd::VGG).unwrap());
    assert!(!scaler.flag().read().unwrap());
    let hp = Sgd::VGG.with_scale(1024.0);
    let (mut w, mut v) = (values(n, 10, 0.1), values(n, 11, 0.01));
    r::sgd_step(&mut w, &mut v, &g, &hp, true);
    let (mut b, mut bv) = (values(5, 12, 0.1), vec![0.0; 5]);
    r::sgd_step(&mut b, &mut bv, &bg, &hp, false);
    assert_eq!(l.w.to_host().unwrap(), w);
    assert_eq!(l.v.to_host().unwrap(), v);
    assert_eq!(l.w16.to_f32().unwrap(), r::f32_to_f16_round(&w));
    assert_eq!((l.b.to_host().unwrap(), l.bv.to_host().unwrap()), (b, bv));
}

#[test]
fn plan_rejects_other_tensors() {
    let dev = Device::emu();
    let mut l = Layer::new(&dev, 64, 4, &values(64, 1, 1.0), &values(4, 2, 1.0));
    let plan = SgdPlan::new(&l.params()).unwrap();
    assert_eq!((plan.tensors(), plan.blocks()), (2, 2));
    let mut other = Layer::new(&dev, 64, 4, &values(64, 1, 1.0), &values(4, 2, 1.0));
    let e = plan.step(&mut other.params(), &Sgd::VGG.with_scale(1.0), None).unwrap_err();
    assert!(e.to_string().contains("not the tensor set the plan was built for"), "{e}");
    let mut p = l.params();
    p.pop();
    let e = plan.step(&mut p, &Sgd::VGG.with_scale(1.0), None).unwrap_err();
    assert!(e.to_string().contains("built for 2 tensors, given 1"), "{e}");
    let mut p = l.params();
    p[0].decay = false; // the same tensors, but the table says decay
    let e = plan.step(&mut p, &Sgd::VGG.with_scale(1.0), None).unwrap_err();
    assert!(e.to_string().contains("not the tensor set"), "{e}");
    let bad_g = Tensor::<f32>::zeros(&dev, &[63]).unwrap();
    let mut w = Tensor::<f32>::zeros(&dev, &[64]).unwrap();
    let mut v = Tensor::<f32>::zeros(&dev, &[64]).unwrap();
    let e = SgdPlan::new(&[SgdParam { w: &mut w, v: &mut v, g: &bad_g, w16: None, decay: true }]).unwrap_err();
    assert!(e.to_string().contains("parameter 0 gradient has 63 elements"), "{e}");
}

/// Queued steps (the scale's state machine on the device, nothing read back) against host
/// steps on a twin layer: over a sequence of clean and overflowing gradients that halves, grows
/// (interval 3) and skips, the weights, momenta, copies and the scaler's state agree bit for bit.
#[test]
fn queued_steps_match_host_steps() {
    let dev = Device::emu();
    let n = 300;
    let (g, bg) = (values(n, 30, 20.0), values(5, 31, 20.0));
    let mut host = Layer::new(&dev, n, 5, &g, &bg);
    let mut queued = Layer::new(&dev, n, 5, &g, &bg);
    let (plan_h, plan_q) = (SgdPlan::new(&host.params()).unwrap(), SgdPlan::new(&queued.params()).unwrap());
    let mut sh = LossScaler::with(&dev, 512.0, 3).unwrap();
    let mut sq = LossScaler::with(&dev, 512.0, 3).unwrap();
    // Scale 512 -> 256 (step 1, NaN) -> 512 (step 4, 3 clean) -> 256 (step 6, Inf) -> 512
    // (step 9) -> 1024 (step 12, the last).
    let overflow = [false, true, false, false, false, false, true, false, false, false, false, false, false];
    let mut applied = vec![];
    for (i, &bad) in overflow.iter().enumerate() {
        let mut gi = values(n, 40 + i as u64, 20.0);
        if bad {
            gi[i * 7] = if i % 2 == 0 { f32::INFINITY } else { f32::NAN };
        }
        host.g.copy_from_host(&gi).unwrap();
        queued.g.copy_from_host(&gi).unwrap();
        let sgd = Sgd::VGG.lr(0.01 * (i + 1) as f32);
        applied.push(sh.step(&plan_h, &mut host.params(), sgd).unwrap());
        sq.step_queued(&plan_q, &mut queued.params(), sgd).unwrap();
        assert!(sq.is_queued());
    }
    assert_eq!(applied, overflow.map(|b| !b).to_vec());
    let before_sync = sq.scale();
    let (last_overflow, last_used) = sq.sync().unwrap().expect("steps were queued");
    assert!(!last_overflow && !sq.is_queued());
    assert_eq!(before_sync, 512.0, "the host view waits for the sync");
    assert_eq!((sq.scale(), sq.clean_steps(), sq.skipped()), (sh.scale(), sh.clean_steps(), sh.skipped()));
    assert_eq!(sh.skipped(), 2);
    // The last step ran at the scale before its own update, a doubling (interval 3 reached).
    assert_eq!((last_used, sh.scale()), (512.0, 1024.0));
    assert_eq!(queued.state(), host.state());
    // A host step after queued ones starts from the synced state; a second sync is a no-op.
    assert!(sq.sync().unwrap().is_none());
}

#[test]
fn device_loss_scale_matches_host_rules() {
    assert_check_passes("amp_scaler");
}

/// A NaN or infinite learning rate, momentum or weight decay would make every weight NaN (or
/// diverge) in one step: each is an `Error::Invalid` naming it, from the plan's step and from
/// both scaler steps, before anything is launched.
#[test]
fn bad_hyper_parameters_are_refused_before_any_launch() {
    let dev = Device::emu();
    let mut l = Layer::new(&dev, 64, 4, &values(64, 1, 1.0), &values(4, 2, 1.0));
    let plan = SgdPlan::new(&l.params()).unwrap();
    let mut scaler = LossScaler::with(&dev, 1.0, 2000).unwrap();
    let mut vars = StepVars::new(&dev).unwrap();
    let (before, launches) = (l.state(), dev.launches());
    let bad = [
        (Sgd::VGG.lr(f32::NAN), "learning rate NaN"),
        (Sgd::VGG.lr(-0.1), "learning rate -0.1"),
        (Sgd::VGG.lr(f32::INFINITY), "learning rate inf"),
        (Sgd { momentum: -0.5, ..Sgd::VGG }, "momentum -0.5"),
        (Sgd { momentum: 1.0, ..Sgd::VGG }, "momentum 1"),
        (Sgd { momentum: f32::NAN, ..Sgd::VGG }, "momentum NaN"),
        (Sgd { weight_decay: -1e-4, ..Sgd::VGG }, "weight decay -0.0001"),
        (Sgd { weight_decay: f32::INFINITY, ..Sgd::VGG }, "weight decay inf"),
    ];
    for (sgd, needle) in bad {
        let errors = [
            sgd.validate().unwrap_err(),
            plan.step(&mut l.params(), &sgd.with_scale(1.0), None).unwrap_err(),
            scaler.step(&plan, &mut l.params(), sgd).unwrap_err(),
            scaler.step_queued(&plan, &mut l.params(), sgd).unwrap_err(),
        ];
        for e in errors {
            assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains(needle), "{sgd:?}: {e}");
        }
    }
    let e = vars.set([1, 2], 0, f32::NAN).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("learning rate NaN"), "{e}");
    assert_eq!(dev.launches(), launches, "nothing may be launched");
    assert_eq!(l.state(), before);
    // The edges that make a step: lr 0, momentum 0, no decay.
    let edge = Sgd { lr: 0.0, momentum: 0.0, weight_decay: 0.0 };
    assert!(scaler.step(&plan, &mut l.params(), edge).unwrap());
}

/// A run of overflowing steps halves the scale down to the smallest positive f32 and no
/// further: a scale of 0 broke the scaler's own invariant (positive and finite, as `with` and
/// `restore` require), after which the host step refused every step ("loss_scale 0") and a
/// queued step, reading the device's scale, divided the next clean gradient by 0 and wrote
/// -inf and NaN into the weights without a word.
#[test]
fn a_run_of_overflows_never_takes_the_scale_to_zero() {
    let dev = Device::emu();
    let tiny = f32::from_bits(2); // 2^-148: two halvings from 0
    let mut host = LossScaler::with(&dev, tiny, 2000).unwrap();
    for _ in 0..3 {
        assert!(!host.update(true));
    }
    assert_eq!((host.scale(), host.skipped()), (f32::from_bits(1), 3), "the host scale stops at 2^-149");
    let mut st = r::LossScaleState { scale: tiny, clean_steps: 0, growth_interval: 2000, skipped: 0 };
    for _ in 0..3 {
        r::loss_scale_update(&mut st, true);
    }
    assert_eq!(st.scale, f32::from_bits(1), "the reference stops at 2^-149");
    for queued in [false, true] {
        let mut l = Layer::new(&dev, 8, 2, &[f32::NAN; 8], &[0.5; 2]);
        let plan = SgdPlan::new(&l.params()).unwrap();
        let mut scaler = LossScaler::with(&dev, tiny, 2000).unwrap();
        for step in 0..4 {
            if step == 3 {
                // A clean gradient at such a scale: the loss times 2^-149 leaves subnormals.
                l.g.copy_from_host(&[f32::from_bits(1); 8]).unwrap();
            }
            if queued {
                scaler.step_queued(&plan, &mut l.params(), Sgd::VGG).unwrap();
                scaler.sync().unwrap();
            } else {
                let applied = scaler.step(&plan, &mut l.params(), Sgd::VGG).unwrap();
                assert_eq!(applied, step == 3, "host step {step}");
            }
            assert!(scaler.scale() > 0.0, "queued {queued} step {step}: scale {}", scaler.scale());
        }
        let w = l.w.to_host().unwrap();
        assert!(w.iter().all(|v| v.is_finite()), "queued {queued}: weights {w:?}");
    }
}
