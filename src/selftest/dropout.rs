//! Dropout forward and backward against reference::dropout_fwd / _bwd: bit-exact (the
//! mask is integer arithmetic, the scale one f32 multiply, then one fp16 rounding), on
//! lengths around the kernel's 8-element vectors and a VGG FC activation; p_drop 0, 0.1,
//! 0.5 (VGG's) and 1.

use super::{randn_f16, Bound, CheckRow};
use crate::reference::{self as r, compare};
use crate::{ops, Device, Result, Tensor};

pub fn dropout(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let cases: [(&[usize], f32); 6] = [
        (&[1], 0.5),
        (&[7], 0.5),
        (&[3, 1003], 0.1),
        (&[2, 64], 0.0),
        (&[5, 17], 1.0),
        (&[32, 4096], 0.5), // FC6 output at batch 32
    ];
    for (i, &(shape, p)) in cases.iter().enumerate() {
        let n: usize = shape.iter().product();
        let (seed, step) = (0x5eed_0000 + i as u64, 1000 + 7 * i as u64);
        let x = randn_f16(n, 200 + i as u64);
        let label = format!("{shape:?} p={p}");
        let xt = Tensor::from_f32(dev, shape, &x)?;
        let mut y = Tensor::empty(dev, shape)?;
        y.poison()?;
        ops::dropout_fwd(&xt, &mut y, seed, step, p)?;
        let want = r::f32_to_f16_round(&r::dropout_fwd(&x, seed, step, p));
        rows.push(CheckRow::new("dropout_f16 fwd", &label, compare(&y.to_f32()?, &want), Bound::Exact));
        let dy = randn_f16(n, 300 + i as u64);
        let dyt = Tensor::from_f32(dev, shape, &dy)?;
        let mut dx = Tensor::empty(dev, shape)?;
        dx.poison()?;
        ops::dropout_bwd(&dyt, &mut dx, seed, step, p)?;
        let want = r::f32_to_f16_round(&r::dropout_bwd(&dy, seed, step, p));
        rows.push(CheckRow::new("dropout_f16 bwd", &label, compare(&dx.to_f32()?, &want), Bound::Exact));
    }
    Ok(rows)
}
