//! The dense-evaluation window matrix against reference::dense_gather: bit-exact (a copy),
//! output poisoned first. Shapes: edge cases first (a 1x1 map, a map exactly the window,
//! odd channel counts on the one-element path, 1-wide windows, N > 1, non-square maps),
//! seeded random ones, then VGG's fc6 windows over a 384x512 image's 12x16x512 map.

use super::{randn_f16, Bound, CheckRow};
use crate::reference::{self as r, compare};
use crate::{ops, Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `([n, fh, fw, c], th, tw)`.
type Case = ([usize; 4], usize, usize);

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = vec![
        ([1, 1, 1, 3], 1, 1),
        ([1, 7, 7, 512], 7, 7),
        ([2, 7, 7, 16], 7, 7),
        ([2, 9, 12, 5], 7, 7),
        ([3, 4, 6, 8], 2, 3),
        ([1, 5, 3, 1], 1, 3),
        ([2, 3, 8, 24], 3, 1),
        // C = 4 mod 8 must take the one-element path: a 16-byte group would straddle two runs
        // (odd tw) and start mid-pixel (odd ox).
        ([2, 6, 7, 4], 3, 3),
        ([3, 5, 6, 12], 2, 3),
        ([1, 4, 9, 20], 4, 5),
    ];
    let mut rng = StdRng::seed_from_u64(800);
    for _ in 0..6 {
        let (th, tw) = (rng.gen_range(1..=4), rng.gen_range(1..=4));
        let c = if rng.gen() { 8 * rng.gen_range(1..=4) } else { rng.gen_range(1..=13) };
        v.push(([rng.gen_range(1..=3), th + rng.gen_range(0..=5), tw + rng.gen_range(0..=5), c], th, tw));
    }
    v.push(([1, 12, 16, 512], 7, 7));
    v
}

pub fn dense_gather(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, (s, th, tw)) in cases().into_iter().enumerate() {
        let x = randn_f16(s.iter().product(), 810 + i as u64);
        let xt = Tensor::from_f32(dev, &s, &x)?;
        let mut cols = Tensor::empty(dev, &ops::dense_gather_shape(&s, th, tw)?)?;
        cols.poison()?;
        ops::dense_gather(&xt, th, tw, &mut cols)?;
        let want = r::dense_gather(s, th, tw, &x);
        let label = format!("{}x{}x{}x{} {th}x{tw}", s[0], s[1], s[2], s[3]);
        rows.push(CheckRow::new("dense_gather_f16", label, compare(&cols.to_f32()?, &want), Bound::Exact));
    }
    Ok(rows)
}
