//! Sum and max-abs reductions against reference::tensor_sum / tensor_max_abs, fp32 and
//! fp16, on lengths around the vector width and the block count, and VGG-16's largest
//! gradient (FC6, 25088 x 4096 elements, on GPUs only). Bounds: sum relative error
//! <= 1e-6 (f64 accumulation, one rounding to f32); max-abs exact; NaN propagates.

use super::{Bound, CheckRow};
use crate::ops::{reduce::Reducible, Reducer};
use crate::reference::{self as r, compare};
use crate::{Device, Result, Tensor};
use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    // A non-zero mean, so the sum is not lost in its own cancellation.
    (0..n).map(|_| f16::from_f32(0.25 + rng.sample::<f32, _>(StandardNormal)).to_f32()).collect()
}

fn one<T: Reducible>(red: &mut Reducer, rows: &mut Vec<CheckRow>, x: &[f32], t: &Tensor<T>) -> Result<()> {
    let shape = format!("n={}", x.len());
    let sum = red.sum(t)?.to_host()?[0];
    let want = r::tensor_sum(x) as f32;
    let rel = Bound::Rel { rel_l2: 1e-6, max_rel: 1e-6 };
    rows.push(CheckRow::new(&format!("reduce_sum_{}", T::NAME), &shape, compare(&[sum], &[want]), rel));
    let m = red.max_abs(t)?.to_host()?[0];
    rows.push(CheckRow::new(
        &format!("reduce_maxabs_{}", T::NAME),
        &shape,
        compare(&[m], &[r::tensor_max_abs(x)]),
        Bound::Exact,
    ));
    Ok(())
}

pub fn reduce(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let mut red = Reducer::new(dev)?;
    let mut sizes = vec![1usize, 7, 8, 1000, 256 * 64 * 3 + 5, 1 << 20];
    if !dev.is_emu() {
        sizes.push(25088 * 4096);
    }
    for (i, &n) in sizes.iter().enumerate() {
        let x = data(n, 500 + i as u64);
        one(&mut red, &mut rows, &x, &Tensor::from_host(dev, &[n], &x)?)?;
        one(&mut red, &mut rows, &x, &Tensor::from_f32(dev, &[n], &x)?)?;
    }
    // NaN anywhere poisons both results; an infinity gives an infinite max.
    let mut x = data(3001, 600);
    x[1234] = f32::INFINITY;
    let t = Tensor::from_host(dev, &[x.len()], &x)?;
    let m = red.max_abs(&t)?.to_host()?[0];
    rows.push(CheckRow::new("reduce_maxabs_f32", "n=3001 one inf", compare(&[m], &[f32::INFINITY]), Bound::Exact));
    x[2000] = f32::NAN;
    let t = Tensor::from_host(dev, &[x.len()], &x)?;
    let (s, m) = (red.sum(&t)?.to_host()?[0], red.max_abs(&t)?.to_host()?[0]);
    rows.push(CheckRow {
        kernel: "reduce_{sum,maxabs}_f32".into(),
        shape: "n=3001 inf+NaN".into(),
        max_abs: 0.0,
        rel_l2: 0.0,
        bound: "both NaN".into(),
        pass: s.is_nan() && m.is_nan(),
        detail: Some(format!("sum {s}, max_abs {m}")),
    });
    Ok(rows)
}
