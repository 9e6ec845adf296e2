//! Dropout forward and backward against reference::dropout_fwd / _bwd: bit-exact (the
//! mask is integer arithmetic, the scale one f32 multiply, then one fp16 rounding), on
//! lengths around the kernel's 8-element vectors and a VGG FC activation; p_drop 0, 0.1,
//! 0.5 (VGG's) and 1. Also with the key read from a StepVars on the device (what captured
//! training steps run), and step_vars_set's stored values against the reference's keys.

use super::{randn_f16, Bound, CheckRow};
use crate::ops::{DropoutKey, StepVars};
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
        // The same mask from the key on the device: layer 1's slot, with layer 0's holding
        // another key (a mix-up of the two slots shows).
        let mut vars = StepVars::new(dev)?;
        vars.set([seed ^ 0xabcd, seed], step, 0.5)?;
        dx.poison()?;
        ops::dropout(&dyt, &mut dx, DropoutKey::Device { vars: &vars, layer: 1 }, p)?;
        rows.push(CheckRow::new("dropout_f16 bwd@vars", &label, compare(&dx.to_f32()?, &want), Bound::Exact));
        let (keys, lr) = vars.read()?;
        let want = [r::dropout_key(seed ^ 0xabcd, step), r::dropout_key(seed, step)];
        // 16-bit pieces, exact in f32.
        let as_f32 = |k: [u64; 2]| {
            k.iter().flat_map(|v| (0..4).map(move |i| (v >> (16 * i) & 0xffff) as f32)).collect::<Vec<_>>()
        };
        let (got, mut want) = ([as_f32(keys), vec![lr]].concat(), as_f32(want));
        want.push(0.5);
        rows.push(CheckRow::new("step_vars_set", &label, compare(&got, &want), Bound::Exact));
    }
    Ok(rows)
}
