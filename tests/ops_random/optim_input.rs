//! The multi-tensor SGD step with the loss scaler, input normalisation, reductions.

use super::*;

// ---------------------------------------------------------------------------------------------
// The optimizer.

struct Param {
    w: Tensor<f32>,
    v: Tensor<f32>,
    g: Tensor<f32>,
    w16: Option<Tensor<f16>>,
    decay: bool,
    host: (Vec<f32>, Vec<f32>, Vec<f32>),
}

fn sgd_params(ps: &mut [Param]) -> Vec<SgdParam<'_>> {
    ps.iter_mut().map(|p| SgdParam { w: &mut p.w, v: &mut p.v, g: &p.g, w16: p.w16.as_mut(), decay: p.decay }).collect()
}

/// Every tensor's w, v and fp16 copy against the host's, bit for bit.
fn check_params(ps: &[Param], what: &str) {
    for (i, p) in ps.iter().enumerate() {
        let (w, v, _) = &p.host;
        assert_eq!(diff32(&p.w.to_host().unwrap(), w), None, "{what}: tensor {i} (len {}) w", w.len());
        assert_eq!(diff32(&p.v.to_host().unwrap(), v), None, "{what}: tensor {i} (len {}) momentum", w.len());
        if let Some(h) = &p.w16 {
            assert_eq!(diff16(&h.to_f32().unwrap(), &r::f32_to_f16_round(w)), None, "{what}: tensor {i} fp16 copy");
        }
    }
}

#[test]
fn sgd_random_tensor_sets_match_reference() {
    sweep("sgd", 8, 30, |rng, dev, what| {
        let any = rng.range(1, 60);
        let count = rng.pick(&[1, 2, 3, 7, 30, any]);
        let big = rng.below(6) == 0;
        let lens: Vec<usize> = (0..count)
            .map(|_| match rng.below(6) {
                0 => rng.pick(&[1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17]),
                1 if big => rng.pick(&[ops::optim::CHUNK - 1, ops::optim::CHUNK + 1, 2 * ops::optim::CHUNK + 3]),
                _ => rng.range(1, 3000),
            })
            .collect();
        let gscale = rng.pick(&[1e-3, 1.0, 1e4, 6e4]);
        let mut ps: Vec<Param> = lens
            .iter()
            .map(|&n| {
                let (w, g) = (normals(rng, n, 0.1), normals(rng, n, gscale));
                let v = if rng.below(2) == 0 { vec![0.0; n] } else { normals(rng, n, 0.01) };
                Param {
                    w: up32(dev, &[n], &w),
                    v: up32(dev, &[n], &v),
                    g: up32(dev, &[n], &g),
                    w16: (rng.below(3) != 0).then(|| empty16(dev, &[n])),
                    decay: rng.below(2) == 0,
                    host: (w, v, g),
                }
            })
            .collect();
        let sgd = Sgd {
            lr: rng.pick(&[0.0, 1e-2, 0.3]),
            momentum: rng.pick(&[0.0, 0.9, 0.99]),
            weight_decay: rng.pick(&[0.0, 5e-4, 1e-2]),
        };
        // Scales at f32's ends too: a run of overflows halves one to the smallest positive value
        // (never to 0), clean steps double one to f32::MAX (never to infinity).
        let scale = rng.pick(&[0.5f32, 1.0, 3.0, 128.0, 65536.0, f32::from_bits(3), f32::MAX / 2.0]);
        let interval = rng.range(1, 3) as u32;
        *what = format!("{count} tensors {lens:?} {sgd:?} scale {scale} interval {interval}");
        let plan = SgdPlan::new(&sgd_params(&mut ps)).unwrap();
        assert_eq!(plan.tensors(), count, "{what}");
        // Two plain steps at a fixed scale.
        for step in 0..2 {
            let hp = sgd.with_scale(scale);
            plan.step(&mut sgd_params(&mut ps), &hp, None).unwrap();
            for p in &mut ps {
                let (w, v, g) = &mut p.host;
                r::sgd_step(w, v, g, &hp, p.decay);
            }
            check_params(&ps, &format!("{what} step {step}"));
        }
        // The loss scaler, on the host and queued, with an Inf or NaN gradient in some steps:
        // a skipped step changes nothing, and the scale follows the reference's rules.
        let mut scaler = LossScaler::with(dev, scale, interval).unwrap();
        let mut st = LossScaleState { scale, clean_steps: 0, growth_interval: interval, skipped: 0 };
        let queued = rng.below(2) == 0;
        let mut vars = ops::StepVars::new(dev).unwrap();
        for step in 0..4 {
            let bad = rng.below(3) == 0;
            let (t, i) = (rng.below(count), rng.below(lens[0].max(1)));
            let i = i.min(lens[t] - 1);
            if bad {
                let mut g = ps[t].host.2.clone();
                g[i] = rng.pick(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
                ps[t].g.copy_from_host(&g).unwrap();
            }
            // Queued steps take the learning rate from a StepVars half the time (a captured
            // step's), set to another value than `sgd.lr`, which must then go unused.
            let vars_lr = (queued && rng.below(2) == 0).then(|| rng.pick(&[0.0f32, 0.05, 0.7]));
            let applied_here = match (queued, vars_lr) {
                (true, Some(lr)) => {
                    vars.set([1, 2], step as u64, lr).unwrap();
                    scaler.step_queued_at(&plan, &mut sgd_params(&mut ps), sgd, &vars).unwrap();
                    None
                }
                (true, None) => {
                    scaler.step_queued(&plan, &mut sgd_params(&mut ps), sgd).unwrap();
                    None
                }
                _ => Some(scaler.step(&plan, &mut sgd_params(&mut ps), sgd).unwrap()),
            };
            let hp = SgdParams { loss_scale: st.scale, lr: vars_lr.unwrap_or(sgd.lr), ..sgd.with_scale(1.0) };
            let applied = r::loss_scale_update(&mut st, bad);
            if let Some(a) = applied_here {
                assert_eq!(a, applied, "{what}: scaler step {step} applied");
            }
            if applied {
                for p in &mut ps {
                    let (w, v, g) = &mut p.host;
                    r::sgd_step(w, v, g, &hp, p.decay);
                }
            }
            if bad {
                let p = &mut ps[t];
                p.g.copy_from_host(&p.host.2).unwrap();
            }
            check_params(
                &ps,
                &format!("{what} scaler step {step} (bad gradient {bad} at tensor {t} [{i}], queued {queued})"),
            );
        }
        scaler.sync().unwrap();
        assert_eq!(
            (scaler.scale(), scaler.clean_steps(), scaler.skipped()),
            (st.scale, st.clean_steps, st.skipped),
            "{what}: scaler state"
        );
        // The overflow check alone, on a clean set, then with one bad element.
        let mut flag = OverflowFlag::new(dev).unwrap();
        plan.check_overflow(&sgd_params(&mut ps), &mut flag).unwrap();
        assert!(!flag.read().unwrap(), "{what}: clean gradients flagged");
        let t = rng.below(count);
        let i = rng.below(lens[t]);
        let mut g = ps[t].host.2.clone();
        g[i] = f32::NAN;
        ps[t].g.copy_from_host(&g).unwrap();
        plan.check_overflow(&sgd_params(&mut ps), &mut flag).unwrap();
        assert!(flag.read().unwrap(), "{what}: NaN at tensor {t} [{i}] not flagged");
    });
}

// ---------------------------------------------------------------------------------------------
// Input normalisation.

#[test]
fn normalize_input_random_match_reference() {
    sweep("normalize_input", 9, 40, |rng, dev, what| {
        let (n, h, w) = match rng.below(3) {
            0 => (rng.range(0, 3), rng.range(1, 3), rng.range(1, 3)),
            _ => (rng.range(1, 4), rng.range(1, 33), rng.range(1, 33)),
        };
        let norm = match rng.below(4) {
            0 => InputNorm::IMAGENET,
            1 => InputNorm::IMAGENET_MEAN,
            2 => InputNorm { mean: [0.0, 255.0, 1e4], std: Some([1e-3, -2.0, 1e5]) },
            _ => {
                let m = [0, 1, 2].map(|_| (rng.0.uniform() * 255.0) as f32);
                let s = [0, 1, 2].map(|_| (rng.0.uniform() * 100.0 + 0.01) as f32);
                InputNorm { mean: m, std: rng.0.coin().then_some(s) }
            }
        };
        let flip: Option<Vec<u8>> = (rng.below(3) != 0).then(|| (0..n).map(|_| rng.pick(&[0, 0, 1, 255])).collect());
        *what = format!("[{n}, {h}, {w}, 3] {norm:?} flip {flip:?}");
        let x: Vec<u8> = (0..n * h * w * 3).map(|_| rng.0.next_u64() as u8).collect();
        let xt = Tensor::from_host(dev, &[n, h, w, 3], &x).unwrap();
        let ft = flip.as_ref().map(|f| Tensor::from_host(dev, &[n], f).unwrap());
        let mut y = empty16(dev, &[n, h, w, 3]);
        ops::normalize_input(&xt, ft.as_ref(), &norm, &mut y).unwrap();
        let want = r::f32_to_f16_round(&r::normalize_input([n, h, w, 3], &x, &norm, flip.as_deref()));
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}");
    });
}

// ---------------------------------------------------------------------------------------------
// Reductions.

#[test]
fn reductions_random_match_reference() {
    sweep("reduce", 10, 30, |rng, dev, what| {
        let len = match rng.below(4) {
            0 => rng.pick(&[0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 256, 257]),
            1 => rng.range(16_000, 70_000),
            _ => rng.range(1, 5000),
        };
        let scale = rng.pick(&[1e-3, 1.0, 1e3, 3e4]);
        let mut x = normals(rng, len, scale);
        if rng.below(4) == 0 {
            x.iter_mut().for_each(|v| *v = v.abs()); // no cancellation: the f32 result is the rounded sum
        }
        let special = len > 0 && rng.below(5) == 0;
        if special {
            let i = rng.below(len);
            x[i] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        }
        let half = rng.below(2) == 0;
        if half {
            x = r::f32_to_f16_round(&x);
        }
        *what = format!("len {len} scale {scale} fp16 {half} special {special}");
        let (sum, max) = if half {
            let t = up16(dev, &[len], &x);
            (ops::reduce_sum(&t).unwrap(), ops::reduce_max_abs(&t).unwrap())
        } else {
            let t = up32(dev, &[len], &x);
            (ops::reduce_sum(&t).unwrap(), ops::reduce_max_abs(&t).unwrap())
        };
        let want_sum = r::tensor_sum(&x);
        let abs_sum: f64 = x.iter().map(|v| v.abs() as f64).sum();
        // f64 partials in another order than the reference's: one f32 rounding of a sum that
        // differs by ~1e-16 of sum |x|.
        let ok = if want_sum.is_nan() {
            sum.is_nan()
        } else if want_sum.is_infinite() {
            sum as f64 == want_sum
        } else {
            (sum as f64 - want_sum).abs() <= want_sum.abs() * 2f64.powi(-24) + abs_sum * 1e-14
        };
        assert!(ok, "{what}: sum {sum:e} want {want_sum:e}");
        assert_eq!(diff32(&[max], &[r::tensor_max_abs(&x)]), None, "{what}: max_abs");
    });
}
