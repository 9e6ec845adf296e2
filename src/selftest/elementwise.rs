//! Checks of the first kernels (ReLU, bias, casts, max-pool) on NHWC shapes taken from
//! the shared problem list: every edge case's input activation, then a VGG-16 layer.
//! These ops are exact on fp16 values (one fp32 operation, one rounding), so the bound is
//! bit equality with the reference rounded to fp16.

use super::{randn_f16, Bound, CheckRow};
use crate::reference::{self as r, compare};
use crate::{ops, problem, Device, Result, Tensor};

fn shapes() -> Vec<[usize; 4]> {
    let mut v: Vec<[usize; 4]> =
        problem::EDGE_CASES.iter().map(|p| [p.problem.n, p.problem.h, p.problem.w, p.problem.c]).collect();
    let l = problem::vgg16_layers_reduced(2, 8, 64)[1].problem; // conv1_2 at 28x28, 64 channels
    v.push([l.n, l.h, l.w, l.c]);
    v
}

fn label(s: &[usize; 4]) -> String {
    format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3])
}

fn round16(v: &[f32]) -> Vec<f32> {
    r::f32_to_f16_round(v)
}

pub fn relu(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, s) in shapes().iter().enumerate() {
        let x = randn_f16(s.iter().product(), 10 + i as u64);
        let dy = randn_f16(x.len(), 20 + i as u64);
        let xt = Tensor::from_f32(dev, s, &x)?;
        let mut y = Tensor::empty(dev, s)?;
        y.poison()?;
        ops::relu_fwd(&xt, &mut y)?;
        let want_y = r::relu_fwd(&x);
        rows.push(CheckRow::new("relu_fwd_f16", label(s), compare(&y.to_f32()?, &want_y), Bound::Exact));
        let dyt = Tensor::from_f32(dev, s, &dy)?;
        let mut dx = Tensor::empty(dev, s)?;
        dx.poison()?;
        ops::relu_bwd(&y, &dyt, &mut dx)?;
        rows.push(CheckRow::new(
            "relu_bwd_f16",
            label(s),
            compare(&dx.to_f32()?, &r::relu_bwd(&want_y, &dy)),
            Bound::Exact,
        ));
    }
    Ok(rows)
}

pub fn bias_act(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, s) in shapes().iter().enumerate() {
        let x = randn_f16(s.iter().product(), 30 + i as u64);
        let b = randn_f16(s[3], 40 + i as u64);
        let (xt, bt) = (Tensor::from_f32(dev, s, &x)?, Tensor::from_f32(dev, &[s[3]], &b)?);
        for relu in [false, true] {
            let mut y = Tensor::empty(dev, s)?;
            y.poison()?;
            ops::bias_act(&xt, &bt, &mut y, relu)?;
            let mut want = r::bias_add_nhwc(&x, &b, s[3]);
            if relu {
                want = r::relu_fwd(&want);
            }
            let name = if relu { "bias_act_f16 (relu)" } else { "bias_act_f16" };
            rows.push(CheckRow::new(name, label(s), compare(&y.to_f32()?, &round16(&want)), Bound::Exact));
        }
    }
    Ok(rows)
}

pub fn casts(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, s) in shapes().iter().enumerate() {
        // Unrounded fp32 values spanning fp16's range, including overflow to infinity and
        // subnormals, so the rounding mode is what is tested.
        let n: usize = s.iter().product();
        let x: Vec<f32> = randn_f16(n, 50 + i as u64)
            .iter()
            .enumerate()
            .map(|(j, v)| v * [1.0, 1.37e-6, 3.3e3, 7.1e4][j % 4] * (1.0 + 1e-4 * (j % 7) as f32))
            .collect();
        let xt = Tensor::from_host(dev, s, &x)?;
        let mut h = Tensor::empty(dev, s)?;
        h.poison()?;
        ops::cast_f32_to_f16(&xt, &mut h)?;
        let want = round16(&x);
        rows.push(CheckRow::new("cast_f32_to_f16", label(s), compare(&h.to_f32()?, &want), Bound::Exact));
        let mut back = Tensor::<f32>::empty(dev, s)?;
        back.poison()?;
        ops::cast_f16_to_f32(&h, &mut back)?;
        rows.push(CheckRow::new("cast_f16_to_f32", label(s), compare(&back.to_host()?, &want), Bound::Exact));
    }
    Ok(rows)
}

pub fn maxpool(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, s) in shapes().iter().filter(|s| s[1] >= 2 && s[2] >= 2).enumerate() {
        let [n, h, w, c] = *s;
        let x = randn_f16(n * h * w * c, 60 + i as u64);
        let out = ops::pool::maxpool2x2_out_shape(s)?;
        let dy = randn_f16(out.iter().product(), 70 + i as u64);
        let xt = Tensor::from_f32(dev, s, &x)?;
        let mut y = Tensor::empty(dev, &out)?;
        y.poison()?;
        ops::maxpool2x2_fwd(&xt, &mut y)?;
        let want_y = r::maxpool2x2_fwd(n, h, w, c, &x);
        let (fwd, bwd_arg) = ops::pool::maxpool2x2_kernels(s)?;
        rows.push(CheckRow::new(fwd, label(s), compare(&y.to_f32()?, &want_y), Bound::Exact));
        // The training path: the forward records each window's argmax, the backward reads it.
        let mut arg = Tensor::<u8>::empty(dev, &out)?;
        y.poison()?;
        ops::maxpool2x2_fwd_arg(&xt, &mut y, &mut arg)?;
        let kernel = format!("{fwd} +arg");
        rows.push(CheckRow::new(&kernel, label(s), compare(&y.to_f32()?, &want_y), Bound::Exact));
        let dyt = Tensor::from_f32(dev, &out, &dy)?;
        let mut dx = Tensor::empty(dev, s)?;
        dx.poison()?;
        ops::maxpool2x2_bwd(&xt, &dyt, &mut dx)?;
        let want = r::maxpool2x2_bwd(n, h, w, c, &x, &dy);
        rows.push(CheckRow::new("maxpool2x2_bwd_f16", label(s), compare(&dx.to_f32()?, &want), Bound::Exact));
        dx.poison()?;
        ops::maxpool2x2_bwd_arg(&arg, &dyt, &mut dx)?;
        rows.push(CheckRow::new(bwd_arg, label(s), compare(&dx.to_f32()?, &want), Bound::Exact));
    }
    Ok(rows)
}
