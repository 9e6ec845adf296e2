//! Helpers shared by the reference tests: seeded random data, dot products and central
//! finite differences of a forward pass.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// `len` standard normal samples from a fixed seed.
pub fn randn(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
}

/// `len` distinct values, well separated (gaps of 0.25 >> the FD step), shuffled by `seed`.
pub fn distinct(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..len).map(|i| (i as f32 - len as f32 / 2.0) * 0.25).collect();
    for i in (1..len).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    v
}

/// `sum_i a_i * b_i` in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Gradient of `L(x) = sum(dy .* f(x))` by central differences with step `h`. Perturbed
/// inputs are rounded to f32, so the quotient divides by the step actually taken.
pub fn fd_grad(x: &[f32], dy: &[f32], h: f64, f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
    fd_grad_scalar(x, h, |x| dot(dy, &f(x)))
}

/// Gradient of a scalar `L(x)` by central differences with step `h`.
pub fn fd_grad_scalar(x: &[f32], h: f64, loss: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let (plus, minus) = ((x[i] as f64 + h) as f32, (x[i] as f64 - h) as f32);
            xp[i] = plus;
            let lp = loss(&xp);
            xp[i] = minus;
            let lm = loss(&xp);
            xp[i] = x[i];
            ((lp - lm) / (plus as f64 - minus as f64)) as f32
        })
        .collect()
}

/// Panics with the metrics unless every element is within `atol + rtol*|want|`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    let c = super::compare_tol(got, want, atol, rtol);
    assert!(c.first_bad.is_none(), "{what}: {c} (atol {atol:e}, rtol {rtol:e})");
}
