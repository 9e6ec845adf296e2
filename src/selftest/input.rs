//! Input normalisation against reference::normalize_input: bit-exact (the kernel repeats
//! the reference's f64 -> f32 -> fp16 sequence), with and without std, with and without
//! per-image flips, on a 1x1 image, odd sizes and a 224x224 batch.

use super::{Bound, CheckRow};
use crate::ops::InputNorm;
use crate::reference::{self as r, compare};
use crate::{ops, Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub fn normalize_input(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let shapes = [[1, 1, 1, 3], [2, 5, 7, 3], [3, 9, 1, 3], [3, 224, 224, 3]];
    for (i, s) in shapes.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(400 + i as u64);
        let x: Vec<u8> = (0..s.iter().product::<usize>()).map(|_| rng.gen()).collect();
        let flips: Vec<u8> = (0..s[0]).map(|j| (j % 2 == 0) as u8).collect();
        let xt = Tensor::from_host(dev, s, &x)?;
        let ft = Tensor::from_host(dev, &[s[0]], &flips)?;
        let custom = InputNorm { mean: [0.5, 255.0, 127.3], std: Some([0.3, 1.0, 3.7]) };
        for (norm, name) in
            [(InputNorm::IMAGENET, "imagenet"), (InputNorm::IMAGENET_MEAN, "mean only"), (custom, "odd")]
        {
            for flip in [false, true] {
                let mut y = Tensor::empty(dev, s)?;
                y.poison()?;
                ops::normalize_input(&xt, flip.then_some(&ft), &norm, &mut y)?;
                let want = r::normalize_input(*s, &x, &norm, flip.then_some(&flips[..]));
                let label = format!("{}x{}x{}x{} {name}{}", s[0], s[1], s[2], s[3], if flip { " flip" } else { "" });
                rows.push(CheckRow::new(
                    "normalize_u8_f16",
                    label,
                    compare(&y.to_f32()?, &r::f32_to_f16_round(&want)),
                    Bound::Exact,
                ));
            }
        }
    }
    Ok(rows)
}
