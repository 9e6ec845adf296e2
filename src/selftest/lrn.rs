//! LRN forward and backward against reference::lrn_fwd / lrn_bwd on NHWC shapes: one
//! channel, odd channel counts, fewer channels than the window, more channels than a
//! block's tile (one pixel a block), and conv1 of VGG A-LRN (64 channels, reduced image).
//! Bounds: with AlexNet's constants (VGG's) every output is within one fp16 ulp of the
//! reference rounded to fp16. With alpha = 2 (a strong normalisation, where the backward
//! pass subtracts two comparable terms) relative L2 <= 1e-3 and max |err| <= 2e-3 max|ref|:
//! fp16 rounding of the cancelled difference.

use super::softmax::ulp16_row;
use super::{randn_f16, Bound, CheckRow};
use crate::ops::LrnParams;
use crate::reference::{self as r, compare};
use crate::{ops, Device, Result, Tensor};

pub fn lrn(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let shapes: [[usize; 4]; 6] =
        [[1, 1, 1, 1], [2, 3, 5, 7], [1, 2, 2, 3], [1, 4, 4, 64], [1, 1, 3, 2100], [2, 8, 8, 64]];
    let strong = LrnParams { size: 5, alpha: 2.0, beta: 0.75, k: 2.0 };
    for (i, s) in shapes.iter().enumerate() {
        let c = s[3];
        let n: usize = s.iter().product();
        let label = format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3]);
        // Activations after a ReLU'd conv are O(1..10); scale so the sum of squares matters.
        let x: Vec<f32> =
            r::f32_to_f16_round(&randn_f16(n, 700 + i as u64).iter().map(|v| 4.0 * v).collect::<Vec<_>>());
        let dy = randn_f16(n, 800 + i as u64);
        let (xt, dyt) = (Tensor::from_f32(dev, s, &x)?, Tensor::from_f32(dev, s, &dy)?);
        for (p, name) in [(LrnParams::ALEXNET, "alexnet"), (strong, "alpha=2")] {
            let mut y = Tensor::empty(dev, s)?;
            y.poison()?;
            ops::lrn_fwd(&xt, &mut y, &p)?;
            let mut dx = Tensor::empty(dev, s)?;
            dx.poison()?;
            ops::lrn_bwd(&xt, &dyt, &mut dx, &p)?;
            let (want_y, want_dx) = (r::lrn_fwd(&x, c, &p), r::lrn_bwd(&x, &dy, c, &p));
            let shape = format!("{label} {name}");
            if name == "alexnet" {
                rows.push(ulp16_row("lrn_fwd_f16", &shape, &y.to_f32()?, &want_y));
                rows.push(ulp16_row("lrn_bwd_f16", &shape, &dx.to_f32()?, &want_dx));
            } else {
                let b = Bound::Rel { rel_l2: 1e-3, max_rel: 2e-3 };
                let (y16, dx16) = (r::f32_to_f16_round(&want_y), r::f32_to_f16_round(&want_dx));
                rows.push(CheckRow::new("lrn_fwd_f16", &shape, compare(&y.to_f32()?, &y16), b));
                rows.push(CheckRow::new("lrn_bwd_f16", &shape, compare(&dx.to_f32()?, &dx16), b));
            }
        }
    }
    Ok(rows)
}
