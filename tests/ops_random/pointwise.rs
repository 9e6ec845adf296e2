//! Max-pool, the element-wise ops and casts, LRN.

use super::*;

// ---------------------------------------------------------------------------------------------
// Max-pool.

#[test]
fn maxpool_random_shapes_match_reference() {
    sweep("maxpool", 3, 40, |rng, dev, what| {
        let any = rng.range(1, 70);
        // An empty batch now and then: nothing to do, and nothing to refuse.
        let n = if rng.below(15) == 0 { 0 } else { rng.range(1, 3) };
        let c = rng.pick(&[1, 2, 3, 5, 8, 13, 16, 31, 64, any]);
        let (h, w) = match rng.below(3) {
            0 => (rng.range(2, 3), rng.range(2, 3)),
            _ => (rng.range(2, 19), rng.range(2, 19)),
        };
        let len = n * h * w * c;
        // Small integers (ties everywhere: the first maximum wins), some NaN and infinities.
        let mut x = ints(rng, len, 2);
        if len > 0 && rng.below(2) == 0 {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(len);
                x[i] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 65504.0]);
            }
        }
        *what = format!("x [{n}, {h}, {w}, {c}]");
        let (oh, ow) = (h / 2, w / 2);
        let dyv = normals16(rng, n * oh * ow * c, 1.0);
        let xt = up16(dev, &[n, h, w, c], &x);
        let dyt = up16(dev, &[n, oh, ow, c], &dyv);
        let (mut y, mut y2) = (empty16(dev, &[n, oh, ow, c]), empty16(dev, &[n, oh, ow, c]));
        let mut arg = Tensor::<u8>::zeros(dev, &[n, oh, ow, c]).unwrap();
        ops::maxpool2x2_fwd(&xt, &mut y).unwrap();
        ops::maxpool2x2_fwd_arg(&xt, &mut y2, &mut arg).unwrap();
        let want = r::maxpool2x2_fwd(n, h, w, c, &x);
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: fwd");
        assert_eq!(diff16(&y2.to_f32().unwrap(), &want), None, "{what}: fwd with argmax");
        let (mut dx, mut dx2) = (empty16(dev, &[n, h, w, c]), empty16(dev, &[n, h, w, c]));
        ops::maxpool2x2_bwd(&xt, &dyt, &mut dx).unwrap();
        ops::maxpool2x2_bwd_arg(&arg, &dyt, &mut dx2).unwrap();
        let want = r::maxpool2x2_bwd(n, h, w, c, &x, &dyv);
        assert_eq!(diff16(&dx.to_f32().unwrap(), &want), None, "{what}: bwd");
        assert_eq!(diff16(&dx2.to_f32().unwrap(), &want), None, "{what}: bwd from argmax");
    });
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops and casts.

/// A random shape of `len`-ish elements with the channel dimension `c` last.
fn shape_with_last(rng: &mut ShapeRng, c: usize) -> Vec<usize> {
    match rng.below(3) {
        0 => vec![rng.range(1, 40), c],
        1 => vec![rng.range(1, 3), rng.range(1, 7), rng.range(1, 7), c],
        _ => vec![rng.range(0, 2), rng.range(1, 9), c],
    }
}

#[test]
fn elementwise_random_match_reference() {
    sweep("elementwise", 4, 40, |rng, dev, what| {
        let any = rng.range(1, 300);
        let c = rng.pick(&[1, 2, 3, 7, 8, 64, any]);
        let shape = shape_with_last(rng, c);
        let len: usize = shape.iter().product();
        *what = format!("shape {shape:?}");
        let x = wild16(rng, len);
        let dyv = wild16(rng, len);
        let bias = wild16(rng, c);
        let xt = up16(dev, &shape, &x);
        let dyt = up16(dev, &shape, &dyv);
        let bt = up16(dev, &[c], &bias);
        // ReLU, out of place and in place.
        let want = r::relu_fwd(&x);
        let mut y = empty16(dev, &shape);
        ops::relu_fwd(&xt, &mut y).unwrap();
        assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: relu_fwd");
        let (alias, mut inplace) = aliased16(dev, &shape, &x);
        ops::relu_fwd(&alias, &mut inplace).unwrap();
        assert_eq!(diff16(&inplace.to_f32().unwrap(), &want), None, "{what}: relu_fwd in place");
        let want_dx = r::relu_bwd(&r::relu_fwd(&x), &dyv);
        let mut dx = empty16(dev, &shape);
        ops::relu_bwd(&y, &dyt, &mut dx).unwrap();
        assert_eq!(diff16(&dx.to_f32().unwrap(), &want_dx), None, "{what}: relu_bwd");
        // bias_act with and without ReLU: one fp32 add, rounded once.
        for relu in [false, true] {
            let sum = r::bias_add_nhwc(&x, &bias, c);
            let want = r::f32_to_f16_round(&if relu { r::relu_fwd(&sum) } else { sum });
            let mut y = empty16(dev, &shape);
            ops::bias_act(&xt, &bt, &mut y, relu).unwrap();
            assert_eq!(diff16(&y.to_f32().unwrap(), &want), None, "{what}: bias_act relu {relu}");
        }
        // Casts: fp32 values around fp16's limits (65519.99 rounds down, 65520 to inf, 2^-25
        // ties to 0, 3 * 2^-26 up to the smallest subnormal).
        let f: Vec<f32> = (0..len)
            .map(|_| match rng.below(4) {
                0 => rng.pick(&[
                    65519.99,
                    65520.0,
                    -65520.0,
                    2f32.powi(-25),
                    3.0 * 2f32.powi(-26),
                    1e-30,
                    1e30,
                    f32::NAN,
                ]),
                1 => (rng.0.normal() * 1e5) as f32,
                _ => (rng.0.normal() * 3.0) as f32,
            })
            .collect();
        let ft = up32(dev, &shape, &f);
        let mut h = empty16(dev, &shape);
        ops::cast_f32_to_f16(&ft, &mut h).unwrap();
        assert_eq!(diff16(&h.to_f32().unwrap(), &r::f32_to_f16_round(&f)), None, "{what}: cast_f32_to_f16");
        let mut back = empty32(dev, &shape);
        ops::cast_f16_to_f32(&xt, &mut back).unwrap();
        assert_eq!(diff32(&back.to_host().unwrap(), &x), None, "{what}: cast_f16_to_f32");
    });
}

// ---------------------------------------------------------------------------------------------
// LRN.

#[test]
fn lrn_random_match_reference() {
    sweep("lrn", 5, 30, |rng, dev, what| {
        let any = rng.range(1, 300);
        let c = rng.pick(&[1, 2, 3, 4, 5, 6, 7, 64, 96, 129, any]);
        // Up to 2 x 40 x 40 pixels: a block stages 2048 / C whole pixels, so even C = 1 spans
        // several blocks, the last one partial.
        let pixels_shape = loop {
            let s = [rng.range(0, 2), rng.range(1, 40), rng.range(1, 40)];
            if s.iter().product::<usize>() * c <= 100_000 {
                break s;
            }
        };
        let shape = [pixels_shape[0], pixels_shape[1], pixels_shape[2], c];
        let p = match rng.below(3) {
            0 => LrnParams::ALEXNET,
            _ => LrnParams {
                size: rng.pick(&[1, 2, 3, 4, 5, 7, 9, 11, 600]),
                alpha: rng.pick(&[0.0, 1e-4, 0.1, 1.0, 5.0]),
                beta: rng.pick(&[0.0, 0.5, 0.75, 1.0, 2.0]),
                k: rng.pick(&[0.5, 1.0, 2.0, 10.0]),
            },
        };
        *what = format!("x {shape:?} {p:?}");
        let len = shape.iter().product();
        let scale = rng.pick(&[0.1, 1.0, 10.0, 100.0]);
        let x = normals16(rng, len, scale);
        let dyv = normals16(rng, len, 1.0);
        let xt = up16(dev, &shape, &x);
        let mut y = empty16(dev, &shape);
        ops::lrn_fwd(&xt, &mut y, &p).unwrap();
        let want = r::lrn_fwd(&x, c, &p);
        let amax = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let bad = beyond_ulp16(&y.to_f32().unwrap(), &want, 1e-5 * amax);
        assert!(bad.is_none(), "{what}: lrn_fwd: {}", bad.unwrap());
        let mut dx = empty16(dev, &shape);
        ops::lrn_bwd(&xt, &up16(dev, &shape, &dyv), &mut dx, &p).unwrap();
        let want = r::lrn_bwd(&x, &dyv, c, &p);
        // The backward pass subtracts two fp32 terms: its error is fp32 rounding of the larger.
        let amax = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let bad = beyond_ulp16(&dx.to_f32().unwrap(), &want, 1e-5 * amax);
        assert!(bad.is_none(), "{what}: lrn_bwd: {}", bad.unwrap());
    });
}
