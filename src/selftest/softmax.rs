//! Softmax cross-entropy against reference::softmax_xent_fwd / _bwd / topk_hits, on batch
//! 1, classes 1 and 1000, odd sizes and VGG's 256 x 1000; random normal logits, small
//! integers (many ties, for the top-k tie rule), confident rows (the log1p and
//! -(others)/sum paths) and rows shifted far from zero (stability).
//! Bounds: mean loss relative error <= 1e-6 (fp32 math); dz = dlogits at loss scale 1024
//! (fp16) within one fp16 ulp of the reference rounded to fp16; hit counts exact.

use super::{randn_f16, small_ints, Bound, CheckRow};
use crate::ops::{self, XentBuffers};
use crate::reference::{self as r, compare, compare_tol};
use crate::{Device, Result, Tensor};
use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `got` (fp16 values) against `want` rounded to fp16: pass iff every element is within one
/// fp16 ulp of it (distance in representable values; NaN never passes).
pub(super) fn ulp16_row(kernel: &str, shape: impl Into<String>, got: &[f32], want: &[f32]) -> CheckRow {
    let want16 = r::f32_to_f16_round(want);
    let c = compare(got, &want16);
    let key = |v: f32| {
        let b = f16::from_f32(v).to_bits() as i32;
        if b & 0x8000 != 0 {
            -(b & 0x7fff)
        } else {
            b
        }
    };
    let bad = got.iter().zip(&want16).position(|(&g, &w)| g.is_nan() || w.is_nan() || (key(g) - key(w)).abs() > 1);
    CheckRow {
        kernel: kernel.into(),
        shape: shape.into(),
        max_abs: c.max_abs,
        rel_l2: c.rel_l2,
        bound: "<= 1 fp16 ulp of ref".into(),
        pass: bad.is_none(),
        detail: bad.map(|i| format!("first beyond 1 ulp at {i}: got {}, want {} (f16 {})", got[i], want[i], want16[i])),
    }
}

/// How a case fills its logits.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Normal,
    /// Integers in [-3, 3]: exact in fp16, full of ties.
    Ties,
    /// The label 30 above the rest: row losses ~1e-8, where fp32 `lse - z_label` would
    /// be all rounding error.
    Confident,
    /// Rows shifted by +-3e4 (fp16 keeps a resolution of 16 there).
    Shifted,
}

fn case(batch: usize, classes: usize, fill: Fill, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Vec<i32> = (0..batch).map(|_| rng.gen_range(0..classes as i32)).collect();
    let mut z = match fill {
        Fill::Normal | Fill::Confident | Fill::Shifted => {
            randn_f16(batch * classes, seed).iter().map(|v| 3.0 * v).collect()
        }
        Fill::Ties => small_ints(batch * classes, 3, seed),
    };
    for (i, row) in z.chunks_exact_mut(classes).enumerate() {
        match fill {
            Fill::Confident => row[labels[i] as usize] += 30.0,
            Fill::Shifted => row.iter_mut().for_each(|v| *v += if i % 2 == 0 { 3e4 } else { -3e4 }),
            _ => {}
        }
    }
    (r::f32_to_f16_round(&z), labels)
}

fn cases() -> Vec<(usize, usize, Fill)> {
    vec![
        (1, 1, Fill::Normal),
        (1, 1000, Fill::Normal),
        (3, 7, Fill::Ties),
        (5, 1, Fill::Normal),
        (4, 1000, Fill::Confident),
        (6, 100, Fill::Shifted),
        (9, 1025, Fill::Normal),
        (33, 10, Fill::Ties),
        (256, 1000, Fill::Normal),
    ]
}

fn check_one<T: ops::softmax::XentLogit>(
    dev: &Device,
    rows: &mut Vec<CheckRow>,
    name: &str,
    logits: &Tensor<T>,
    z: &[f32],
    labels: &[i32],
    fill: Fill,
) -> Result<()> {
    let [batch, classes] = *logits.shape() else { unreachable!() };
    let shape = format!("{batch}x{classes} {fill:?}");
    let lt = Tensor::from_host(dev, &[batch], labels)?;
    let mut dz = Tensor::<f16>::empty(dev, &[batch, classes])?;
    dz.poison()?;
    let mut bufs = XentBuffers::new(dev, batch)?;
    let scale = 1024.0;
    ops::softmax_xent(logits, &lt, Some(&mut dz), scale, &mut bufs)?;
    let got = bufs.check()?;
    let (loss, _) = r::softmax_xent_fwd(batch, classes, z, labels);
    let want_dz: Vec<f32> = r::softmax_xent_bwd(batch, classes, z, labels).iter().map(|v| v * scale).collect();
    let rel = Bound::Rel { rel_l2: 1e-6, max_rel: 1e-6 };
    rows.push(CheckRow::new(&format!("{name} loss"), &shape, compare(&[got.loss], &[loss as f32]), rel));
    rows.push(ulp16_row(&format!("{name} dz"), &shape, &dz.to_f32()?, &want_dz));
    let hits = [r::topk_hits(batch, classes, z, labels, 1), r::topk_hits(batch, classes, z, labels, 5)];
    rows.push(CheckRow::new(
        &format!("{name} top1,top5"),
        &shape,
        compare(&[got.top1 as f32, got.top5 as f32, got.rows as f32], &[hits[0] as f32, hits[1] as f32, batch as f32]),
        Bound::Exact,
    ));
    Ok(())
}

pub fn softmax_xent(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, &(batch, classes, fill)) in cases().iter().enumerate() {
        let (z, labels) = case(batch, classes, fill, 100 + i as u64);
        let lf16 = Tensor::from_f32(dev, &[batch, classes], &z)?;
        check_one(dev, &mut rows, "softmax_xent_f16", &lf16, &z, &labels, fill)?;
        if batch * classes < 20_000 {
            // fp32 logits: unrounded values, so the fp32 path sees more than fp16 holds.
            let z32: Vec<f32> = z.iter().enumerate().map(|(j, v)| v + 1e-3 * ((j % 7) as f32 - 3.0)).collect();
            let lf32 = Tensor::from_host(dev, &[batch, classes], &z32)?;
            check_one(dev, &mut rows, "softmax_xent_f32", &lf32, &z32, &labels, fill)?;
        }
    }
    Ok(rows)
}

/// Evaluation's forward-only softmax against reference::softmax_fwd (f64, rounded to f32)
/// on the same cases, from fp16 and from fp32 logits, probabilities poisoned first.
/// Bound, per element: |p - ref| <= 4e-6 * ref + 1e-38 (the 1e-38 admits the subnormal
/// tail). From fp32 logits `z - max` itself rounds, a relative error of |z - max| * 2^-24
/// in p: emu measured up to 1.2e-6 (19 ulps) at logits of scale 10, 4.4e-7 at these cases'
/// scale 3, 2.3e-7 from fp16 logits (z - max exact); the GPU's expf adds up to 2 ulps.
pub fn softmax_fwd(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, &(batch, classes, fill)) in cases().iter().enumerate() {
        let (z, _) = case(batch, classes, fill, 700 + i as u64);
        let z32: Vec<f32> = z.iter().enumerate().map(|(j, v)| v + 1e-3 * ((j % 7) as f32 - 3.0)).collect();
        let shape = format!("{batch}x{classes} {fill:?}");
        let mut p = Tensor::<f32>::empty(dev, &[batch, classes])?;
        for (name, z) in [("softmax_fwd_f16", &z), ("softmax_fwd_f32", &z32)] {
            p.poison()?;
            if name.ends_with("f16") {
                ops::softmax_fwd(&Tensor::<f16>::from_f32(dev, &[batch, classes], z)?, &mut p)?;
            } else {
                ops::softmax_fwd(&Tensor::from_host(dev, &[batch, classes], z)?, &mut p)?;
            }
            let c = compare_tol(&p.to_host()?, &r::softmax_fwd(batch, classes, z), 1e-38, 4e-6);
            let detail = c.first_bad.map(|(i, g, w)| format!("first beyond the bound at {i}: got {g}, want {w}"));
            rows.push(CheckRow {
                kernel: name.into(),
                shape: shape.clone(),
                max_abs: c.max_abs,
                rel_l2: c.rel_l2,
                bound: "|err| <= 4e-6*|ref| + 1e-38".into(),
                pass: detail.is_none(),
                detail,
            });
        }
    }
    Ok(rows)
}
