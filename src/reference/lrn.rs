//! Local response normalisation across channels (AlexNet's, used by VGG config A-LRN), on
//! NHWC tensors where the channel window is contiguous.
//!
//! `b_c = a_c / s_c^beta` with `s_c = k + (alpha / size) * sum_{c' in W(c)} a_{c'}^2`:
//! PyTorch's `LocalResponseNorm` convention, alpha divided by `size` (the AlexNet paper and
//! cuDNN's older docs use plain alpha, which with alpha 1e-4 normalises 5x more strongly).
//! Caffe's LRN layer divides by `size` too, and the VGG paper's implementation derives from
//! Caffe (its Sect. 3.3), so this is the form its A-LRN most likely ran.
//!
//! `W(c) = [c - size/2, c + (size-1)/2]` clipped to `0..C` (integer division; symmetric for
//! odd sizes), and missing channels count as zero while the divisor stays `size`, as
//! PyTorch's zero-padded average does.

use std::ops::Range;

/// LRN hyper-parameters; [`LrnParams::ALEXNET`] is VGG's size 5, alpha 1e-4, beta 0.75, k 2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    /// Channels in the window (at least 1).
    pub size: usize,
    /// Scale of the window's sum of squares, applied as `alpha / size` (PyTorch's convention);
    /// at least 0 for the kernels.
    pub alpha: f32,
    /// Exponent of the divisor.
    pub beta: f32,
    /// Additive constant of the divisor; above 0 for the kernels.
    pub k: f32,
}

impl LrnParams {
    /// AlexNet's constants, which VGG's A-LRN uses: size 5, alpha 1e-4, beta 0.75, k 2.
    pub const ALEXNET: Self = Self { size: 5, alpha: 1e-4, beta: 0.75, k: 2.0 };
}

/// `W(c) = [c - size/2, c + (size-1)/2]` clipped to `0..channels`.
fn window(c: usize, size: usize, channels: usize) -> Range<usize> {
    c.saturating_sub(size / 2)..(c + (size - 1) / 2 + 1).min(channels)
}

/// The channels whose window holds `j`: `[j - (size-1)/2, j + size/2]` clipped to `0..channels`.
fn covering(j: usize, size: usize, channels: usize) -> Range<usize> {
    j.saturating_sub((size - 1) / 2)..(j + size / 2 + 1).min(channels)
}

/// `s_c = k + alpha/size * sum_{c' in W(c)} a_{c'}^2` for every channel of one pixel.
fn scales(a: &[f32], p: &LrnParams) -> Vec<f64> {
    let coef = p.alpha as f64 / p.size as f64;
    (0..a.len())
        .map(|c| p.k as f64 + coef * window(c, p.size, a.len()).map(|i| (a[i] as f64).powi(2)).sum::<f64>())
        .collect()
}

/// `b[p][c] = a[p][c] / (k + alpha/size * sum_{c' in W(c)} a[p][c']^2)^beta`, NHWC with `channels` innermost.
pub fn lrn_fwd(x: &[f32], channels: usize, p: &LrnParams) -> Vec<f32> {
    assert!(p.size >= 1, "lrn: size must be at least 1");
    assert_eq!(x.len() % channels, 0, "lrn_fwd: x.len() not a multiple of channels");
    let mut y = Vec::with_capacity(x.len());
    for a in x.chunks_exact(channels) {
        let s = scales(a, p);
        y.extend(a.iter().zip(&s).map(|(&v, &s)| (v as f64 * s.powf(-(p.beta as f64))) as f32));
    }
    y
}

/// `dx_j = dy_j s_j^-beta - (2 alpha beta / size) a_j sum_{c: j in W(c)} dy_c a_c s_c^(-beta-1)`, NHWC, the exact gradient of [`lrn_fwd`].
pub fn lrn_bwd(x: &[f32], dy: &[f32], channels: usize, p: &LrnParams) -> Vec<f32> {
    assert!(p.size >= 1, "lrn: size must be at least 1");
    assert_eq!(x.len(), dy.len(), "lrn_bwd: x vs dy");
    assert_eq!(x.len() % channels, 0, "lrn_bwd: x.len() not a multiple of channels");
    let (beta, coef) = (p.beta as f64, 2.0 * p.alpha as f64 * p.beta as f64 / p.size as f64);
    let mut dx = Vec::with_capacity(x.len());
    for (a, g) in x.chunks_exact(channels).zip(dy.chunks_exact(channels)) {
        let s = scales(a, p);
        // t_c = dy_c a_c s_c^(-beta-1): what channel c's output sends back through s_c.
        let t: Vec<f64> = (0..channels).map(|c| g[c] as f64 * a[c] as f64 * s[c].powf(-beta - 1.0)).collect();
        for j in 0..channels {
            let through_s: f64 = covering(j, p.size, channels).map(|c| t[c]).sum();
            dx.push((g[j] as f64 * s[j].powf(-beta) - coef * a[j] as f64 * through_s) as f32);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, fd_grad, randn};
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(window(0, 5, 8), 0..3);
        assert_eq!(window(4, 5, 8), 2..7);
        assert_eq!(window(7, 5, 8), 5..8);
        assert_eq!(window(3, 4, 8), 1..5);
        assert_eq!(covering(3, 4, 8), 2..6);
        // c's window holds j exactly when j's covering set holds c.
        for size in 1..7 {
            for c in 0..6 {
                for j in 0..6 {
                    assert_eq!(
                        window(c, size, 6).contains(&j),
                        covering(j, size, 6).contains(&c),
                        "size {size} c {c} j {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn by_hand() {
        // One channel with AlexNet's constants: b = a / (2 + 1e-4/5 * a^2)^0.75.
        let y = lrn_fwd(&[1.0], 1, &LrnParams::ALEXNET);
        let want = 1.0 / (2.0f64 + 1e-4 / 5.0).powf(0.75);
        assert!((y[0] as f64 - want).abs() < 1e-7, "{} vs {want}", y[0]);
        // a = [1, 2, 3], size 3, alpha 3 (so alpha/size = 1), beta 1, k 1: s = [6, 15, 14].
        let p = LrnParams { size: 3, alpha: 3.0, beta: 1.0, k: 1.0 };
        assert_close("size 3", &lrn_fwd(&[1.0, 2.0, 3.0], 3, &p), &[1.0 / 6.0, 2.0 / 15.0, 3.0 / 14.0], 0.0, 1e-7);
        // Even size 2 looks one channel back: W(c) = [c-1, c], s = [2, 6, 14].
        let p = LrnParams { size: 2, alpha: 2.0, beta: 1.0, k: 1.0 };
        assert_close("size 2", &lrn_fwd(&[1.0, 2.0, 3.0], 3, &p), &[0.5, 2.0 / 6.0, 3.0 / 14.0], 0.0, 1e-7);
    }

    #[test]
    fn backward_matches_fd() {
        // Large alpha so the cross-channel term is not negligible; odd and even sizes.
        let c = 7;
        let params = [
            LrnParams::ALEXNET,
            LrnParams { size: 5, alpha: 2.0, beta: 0.75, k: 2.0 },
            LrnParams { size: 4, alpha: 1.5, beta: 0.6, k: 1.0 },
            LrnParams { size: 1, alpha: 0.5, beta: 1.2, k: 1.0 },
        ];
        for (i, p) in params.iter().enumerate() {
            let (x, dy) = (randn(3 * c, 10 + i as u64), randn(3 * c, 20 + i as u64));
            let num = fd_grad(&x, &dy, 1e-3, |x| lrn_fwd(x, c, p));
            assert_close(&format!("lrn_bwd {p:?}"), &lrn_bwd(&x, &dy, c, p), &num, 1e-3, 1e-3);
        }
    }
}
