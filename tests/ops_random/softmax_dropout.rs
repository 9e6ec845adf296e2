//! Softmax cross-entropy and softmax, dropout.

use super::*;

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy and softmax.

/// Logits of one draw: normals at some scale, small-integer ties, confident rows (the label far
/// above the rest), rows shifted far from zero; fp16 values unless `f32`.
fn logits(rng: &mut ShapeRng, batch: usize, classes: usize, labels: &[i32], f32_: bool) -> (Vec<f32>, &'static str) {
    let kind = rng.pick(&["normal", "ties", "confident", "shifted", "tiny", "overflow"]);
    let mut z = match kind {
        "ties" => ints(rng, batch * classes, 2),
        "tiny" => normals(rng, batch * classes, 1e-4),
        _ => {
            let scale = rng.pick(&[1.0, 3.0, 8.0]);
            normals(rng, batch * classes, scale)
        }
    };
    for (i, row) in z.chunks_exact_mut(classes).enumerate() {
        match kind {
            "confident" => row[labels[i] as usize] += rng.pick(&[20.0, 30.0, 80.0]) as f32,
            "shifted" => {
                let shift = if f32_ { rng.pick(&[3e4, -3e4, 1e6]) } else { rng.pick(&[3e4, -3e4, 6e4]) };
                row.iter_mut().for_each(|v| *v += shift as f32);
            }
            // An overflow upstream: a few infinities or NaN (the largest fp16 values too).
            "overflow" if rng.below(3) == 0 => {
                let j = rng.below(classes);
                row[j] = rng.pick(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 65504.0, -65504.0]);
            }
            _ => {}
        }
    }
    (if f32_ { z } else { r::f32_to_f16_round(&z) }, kind)
}

/// The largest finite `|z - max|` of any row.
fn max_spread(z: &[f32], classes: usize) -> f64 {
    let finite = |v: &&f32| v.is_finite();
    z.chunks_exact(classes)
        .map(|row| {
            let m = row.iter().filter(finite).fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            row.iter().filter(finite).fold(0f64, |d, &v| d.max(m - v as f64))
        })
        .fold(0.0, f64::max)
}

#[test]
fn softmax_xent_random_match_reference() {
    sweep("softmax_xent", 6, 40, |rng, dev, what| {
        let classes = match rng.below(3) {
            0 => rng.range(1, 7),
            1 => rng.pick(&[8, 10, 31, 32, 33, 255, 256, 257, 1000]),
            _ => rng.range(1, 1100),
        };
        let any = rng.range(1, 40);
        // Past 256 rows the finishing block's threads take several rows each.
        let big = if classes <= 64 { rng.pick(&[255, 256, 257, 600]) } else { 1 };
        let batch = rng.pick(&[1, 2, 3, 5, 31, 32, 33, any, any, big]);
        let f32_ = rng.below(3) == 0;
        let labels: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
        let (z, kind) = logits(rng, batch, classes, &labels, f32_);
        let scale = rng.pick(&[1.0f32, 3.0, 128.0, 1024.0, 65536.0]);
        let capacity = batch + rng.pick(&[0, 0, 1, 7]);
        *what = format!("{batch}x{classes} {kind} f32 {f32_} scale {scale} capacity {capacity}");
        let lt = Tensor::from_host(dev, &[batch], &labels).unwrap();
        let mut bufs = XentBuffers::new(dev, capacity).unwrap();
        let mut dz = empty16(dev, &[batch, classes]);
        // The scale from the host, or from a loss scaler's device state (a queued step's).
        let scaler = (rng.below(4) == 0).then(|| {
            let mut s = LossScaler::with(dev, scale, 1000).unwrap();
            s.queue().unwrap();
            s
        });
        what.push_str(&format!(" device scale {}", scaler.is_some()));
        let (z16, z32) = (up16(dev, &[batch, classes], &z), up32(dev, &[batch, classes], &z));
        match (&scaler, f32_) {
            (None, false) => ops::softmax_xent(&z16, &lt, Some(&mut dz), scale, &mut bufs),
            (None, true) => ops::softmax_xent(&z32, &lt, Some(&mut dz), scale, &mut bufs),
            (Some(s), false) => ops::softmax_xent_device_scale(&z16, &lt, Some(&mut dz), s, &mut bufs),
            (Some(s), true) => ops::softmax_xent_device_scale(&z32, &lt, Some(&mut dz), s, &mut bufs),
        }
        .unwrap();
        let got = bufs.check().unwrap();
        let (loss, _) = r::softmax_xent_fwd(batch, classes, &z, &labels);
        let err = (got.loss as f64 - loss).abs();
        // From fp32 logits the kernel's z - max rounds (up to one fp32 ulp of it, |z - max|
        // 2^-23), which a confident row's loss, a sum of exp(z - max), carries as relative
        // error; fp16 logits (11-bit significands) subtract exactly in fp32 unless their
        // magnitudes lie more than 2^13 apart, which these draws do not reach.
        let spread = if f32_ { max_spread(&z, classes) * 2f64.powi(-23) } else { 0.0 };
        let ok = err <= (1e-6 + spread) * loss.abs() || got.loss as f64 == loss || loss.is_nan() && got.loss.is_nan();
        assert!(ok, "{what}: loss {} want {loss} (rel {:e})", got.loss, err / loss);
        let want_dz: Vec<f32> = r::softmax_xent_bwd(batch, classes, &z, &labels).iter().map(|v| v * scale).collect();
        let bad = beyond_ulp16(&dz.to_f32().unwrap(), &want_dz, 0.0);
        assert!(bad.is_none(), "{what}: dlogits beyond one fp16 ulp: {}", bad.unwrap());
        let want = (r::topk_hits(batch, classes, &z, &labels, 1), r::topk_hits(batch, classes, &z, &labels, 5));
        assert_eq!((got.top1, got.top5, got.rows), (want.0, want.1, batch), "{what}: top-1, top-5, rows");
        // The forward softmax of the same logits: a few fp32 ulps from fp16 logits, plus the
        // rounding of z - max (|z - max| 2^-23 absolute) from fp32 ones.
        let mut p = empty32(dev, &[batch, classes]);
        if f32_ {
            ops::softmax_fwd(&up32(dev, &[batch, classes], &z), &mut p).unwrap();
        } else {
            ops::softmax_fwd(&up16(dev, &[batch, classes], &z), &mut p).unwrap();
        }
        let (got, want) = (p.to_host().unwrap(), r::softmax_fwd(batch, classes, &z));
        for (row, (g, w)) in z.chunks_exact(classes).zip(got.chunks_exact(classes).zip(want.chunks_exact(classes))) {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            for j in 0..classes {
                let tol = 1e-38 + w[j] as f64 * (4e-6 + (m - row[j] as f64).abs() * 2f64.powi(-23));
                assert!(
                    g[j] == w[j] || g[j].is_nan() && w[j].is_nan() || (g[j] as f64 - w[j] as f64).abs() <= tol,
                    "{what}: softmax_fwd [{j}] got {:e} want {:e}",
                    g[j],
                    w[j]
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Dropout.

#[test]
fn dropout_random_match_reference() {
    sweep("dropout", 7, 40, |rng, dev, what| {
        let len = match rng.below(3) {
            0 => rng.pick(&[0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 257]),
            _ => rng.range(1, 20_000),
        };
        let p = match rng.below(4) {
            0 => rng.pick(&[0.0, 1.0, 1e-7, 0.5, 0.9999]),
            _ => rng.0.uniform() as f32,
        };
        let (seed, step) = (rng.0.next_u64(), rng.0.next_u64() >> rng.range(0, 63));
        let inplace = rng.below(3) == 0;
        *what = format!("len {len} p {p} seed {seed} step {step} in place {inplace}");
        let x = wild16(rng, len);
        let want_y = r::f32_to_f16_round(&r::dropout_fwd(&x, seed, step, p));
        let want_dx = r::f32_to_f16_round(&r::dropout_bwd(&x, seed, step, p));
        let got = |bwd: bool| {
            let (a, mut b) =
                if inplace { aliased16(dev, &[len], &x) } else { (up16(dev, &[len], &x), empty16(dev, &[len])) };
            if bwd { ops::dropout_bwd(&a, &mut b, seed, step, p) } else { ops::dropout_fwd(&a, &mut b, seed, step, p) }
                .unwrap();
            b.to_f32().unwrap()
        };
        assert_eq!(diff16(&got(false), &want_y), None, "{what}: fwd");
        assert_eq!(diff16(&got(true), &want_dx), None, "{what}: bwd");
        // The key a captured step reads from a StepVars: the mask of (that layer's seed, step).
        let layer = rng.below(2);
        let mut seeds = [rng.0.next_u64(), rng.0.next_u64()];
        seeds[layer] = seed;
        let mut vars = ops::StepVars::new(dev).unwrap();
        vars.set(seeds, step, 0.0).unwrap();
        let mut y = empty16(dev, &[len]);
        ops::dropout(&up16(dev, &[len], &x), &mut y, ops::DropoutKey::Device { vars: &vars, layer }, p).unwrap();
        assert_eq!(diff16(&y.to_f32().unwrap(), &want_y), None, "{what}: key of StepVars layer {layer}");
    });
}
