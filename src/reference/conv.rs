//! Convolutions: 3x3 (stride 1, pad 1) and 1x1 (stride 1, pad 0), each with forward,
//! backward-data (dgrad) and backward-filter (wgrad).
//!
//! Activations NHWC; 3x3 filters KRSC (`[K][3][3][C]`); 1x1 filters `[K][C]`. Direct
//! loops with f64 accumulators, the host twin of CUTLASS's `Conv2dFprop/Dgrad/Wgrad`.
//! Filter tap `(r, s)` at output pixel `(h, w)` reads input pixel `(h + r - 1, w + s - 1)`:
//! cross-correlation, as PyTorch's `conv2d`, with zeros outside the image.

use super::elementwise::relu64;
use super::linear::{linear_bwd_data, linear_bwd_weight, linear_fwd};
use crate::problem::ConvProblem;

/// Index of pixel `(n, h, w)` in `N x H x W` (multiply by C or K for the element offset).
fn pixel(p: &ConvProblem, n: usize, h: usize, w: usize) -> usize {
    (n * p.h + h) * p.w + w
}

/// Pixel `(n, oh + r - 1, ow + s - 1)`, read by tap `(r, s)` at output `(oh, ow)`; `None` in the padding.
fn input_at(p: &ConvProblem, n: usize, oh: usize, ow: usize, r: usize, s: usize) -> Option<usize> {
    let ih = (oh + r).checked_sub(1).filter(|&v| v < p.h)?;
    let iw = (ow + s).checked_sub(1).filter(|&v| v < p.w)?;
    Some(pixel(p, n, ih, iw))
}

/// Pixel `(n, ih + 1 - r, iw + 1 - s)`, the output whose tap `(r, s)` reads input `(ih, iw)`; `None` outside.
fn output_at(p: &ConvProblem, n: usize, ih: usize, iw: usize, r: usize, s: usize) -> Option<usize> {
    let oh = (ih + 1).checked_sub(r).filter(|&v| v < p.h)?;
    let ow = (iw + 1).checked_sub(s).filter(|&v| v < p.w)?;
    Some(pixel(p, n, oh, ow))
}

/// Offset of `w[k][r][s][0]` in a KRSC filter tensor.
fn tap(p: &ConvProblem, k: usize, r: usize, s: usize) -> usize {
    ((k * 3 + r) * 3 + s) * p.c
}

/// `y[n,h,w,k] = act(b[k] + sum_{r,s,c} x[n,h+r-1,w+s-1,c] * w[k,r,s,c])`, zero padding, x NHWC, w KRSC, y NHWK, act = ReLU if `relu`.
pub fn conv3x3_fprop(p: &ConvProblem, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    assert_eq!(x.len(), p.input_len(), "conv3x3_fprop {p}: x");
    assert_eq!(w.len(), p.filter_len(), "conv3x3_fprop {p}: w");
    if let Some(b) = bias {
        assert_eq!(b.len(), p.k, "conv3x3_fprop {p}: bias");
    }
    let mut y = vec![0f32; p.output_len()];
    for n in 0..p.n {
        for oh in 0..p.h {
            for ow in 0..p.w {
                for k in 0..p.k {
                    let mut acc = bias.map_or(0.0, |b| b[k] as f64);
                    for r in 0..3 {
                        for s in 0..3 {
                            let Some(xi) = input_at(p, n, oh, ow, r, s) else {
                                continue;
                            };
                            let xo = xi * p.c;
                            let wo = tap(p, k, r, s);
                            for c in 0..p.c {
                                acc += x[xo + c] as f64 * w[wo + c] as f64;
                            }
                        }
                    }
                    y[pixel(p, n, oh, ow) * p.k + k] = if relu { relu64(acc) } else { acc } as f32;
                }
            }
        }
    }
    y
}

/// `dx[n,h,w,c] = sum_{k,r,s} dy[n,h-r+1,w-s+1,k] * w[k,r,s,c]` (terms outside the image dropped), dy NHWK, w KRSC, dx NHWC.
pub fn conv3x3_dgrad(p: &ConvProblem, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), p.output_len(), "conv3x3_dgrad {p}: dy");
    assert_eq!(w.len(), p.filter_len(), "conv3x3_dgrad {p}: w");
    let mut dx = vec![0f32; p.input_len()];
    let mut acc = vec![0f64; p.c];
    for n in 0..p.n {
        for ih in 0..p.h {
            for iw in 0..p.w {
                acc.fill(0.0);
                for r in 0..3 {
                    for s in 0..3 {
                        let Some(yi) = output_at(p, n, ih, iw, r, s) else {
                            continue;
                        };
                        let yo = yi * p.k;
                        for k in 0..p.k {
                            let g = dy[yo + k] as f64;
                            let wo = tap(p, k, r, s);
                            for (c, a) in acc.iter_mut().enumerate() {
                                *a += g * w[wo + c] as f64;
                            }
                        }
                    }
                }
                let xo = pixel(p, n, ih, iw) * p.c;
                for (d, &a) in dx[xo..xo + p.c].iter_mut().zip(&acc) {
                    *d = a as f32;
                }
            }
        }
    }
    dx
}

/// `(dw, db)`: `dw[k,r,s,c] = sum_{n,h,w} dy[n,h,w,k] * x[n,h+r-1,w+s-1,c]` (KRSC), `db[k] = sum_{n,h,w} dy[n,h,w,k]`.
pub fn conv3x3_wgrad(p: &ConvProblem, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), p.input_len(), "conv3x3_wgrad {p}: x");
    assert_eq!(dy.len(), p.output_len(), "conv3x3_wgrad {p}: dy");
    let mut dw = vec![0f64; p.filter_len()];
    let mut db = vec![0f64; p.k];
    for n in 0..p.n {
        for oh in 0..p.h {
            for ow in 0..p.w {
                for k in 0..p.k {
                    let g = dy[pixel(p, n, oh, ow) * p.k + k] as f64;
                    db[k] += g;
                    for r in 0..3 {
                        for s in 0..3 {
                            let Some(xi) = input_at(p, n, oh, ow, r, s) else {
                                continue;
                            };
                            let xo = xi * p.c;
                            let wo = tap(p, k, r, s);
                            for c in 0..p.c {
                                dw[wo + c] += g * x[xo + c] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dw.into_iter().map(|v| v as f32).collect(), db.into_iter().map(|v| v as f32).collect())
}

/// `y[p][k] = act(b[k] + sum_c x[p][c] * w[k][c])` over `n_pixels` NHWC pixels: x `[P][C]`, w `[K][C]`, y `[P][K]`.
pub fn conv1x1_fprop(
    n_pixels: usize,
    c: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    linear_fwd(n_pixels, c, k, x, w, bias, relu)
}

/// `dx[p][c] = sum_k dy[p][k] * w[k][c]`: dy `[P][K]`, w `[K][C]`, dx `[P][C]`.
pub fn conv1x1_dgrad(n_pixels: usize, c: usize, k: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    linear_bwd_data(n_pixels, c, k, dy, w)
}

/// `(dw, db)`: `dw[k][c] = sum_p dy[p][k] * x[p][c]`, `db[k] = sum_p dy[p][k]`.
pub fn conv1x1_wgrad(n_pixels: usize, c: usize, k: usize, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    linear_bwd_weight(n_pixels, c, k, x, dy)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, dot, fd_grad, randn};
    use super::*;

    /// Random `[x, w, bias, dy]` for `p`, from seeds `seed..seed + 4`.
    fn data(p: &ConvProblem, seed: u64) -> [Vec<f32>; 4] {
        let lens = [p.input_len(), p.filter_len(), p.k, p.output_len()];
        std::array::from_fn(|i| randn(lens[i], seed + i as u64))
    }

    /// `|a - b| < 1e-5 (1 + |a|)`: two f64 evaluations of one exact value.
    fn assert_same(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }

    /// Forward as one matrix product: the im2col matrix `[N*H*W][9*C]` (zeros in the
    /// padding) times the filters viewed as `[K][9*C]`.
    fn fprop_im2col(p: &ConvProblem, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let cols = 9 * p.c;
        let mut a = vec![0f32; p.n * p.h * p.w * cols];
        for n in 0..p.n {
            for h in 0..p.h {
                for ww in 0..p.w {
                    let row = pixel(p, n, h, ww);
                    for r in 0..3 {
                        for s in 0..3 {
                            let (ih, iw) = (h as isize + r as isize - 1, ww as isize + s as isize - 1);
                            if ih < 0 || iw < 0 || ih >= p.h as isize || iw >= p.w as isize {
                                continue;
                            }
                            let src = pixel(p, n, ih as usize, iw as usize) * p.c;
                            let dst = row * cols + (r * 3 + s) * p.c;
                            a[dst..dst + p.c].copy_from_slice(&x[src..src + p.c]);
                        }
                    }
                }
            }
        }
        linear_fwd(p.n * p.h * p.w, cols, p.k, &a, w, Some(b), false)
    }

    #[test]
    fn one_pixel_one_channel() {
        // A 1x1 image sees only the centre tap: y = w[1][1] * x + b.
        let p = ConvProblem::new(1, 1, 1, 1, 1);
        let w: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        assert_eq!(conv3x3_fprop(&p, &[2.0], &w, Some(&[0.5]), false), vec![10.5]);
        assert_eq!(conv3x3_fprop(&p, &[-2.0], &w, Some(&[0.5]), true), vec![0.0]);
        assert_eq!(conv3x3_dgrad(&p, &[3.0], &w), vec![15.0]);
        let (dw, db) = conv3x3_wgrad(&p, &[2.0], &[3.0]);
        assert_eq!(dw, vec![0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(db, vec![3.0]);
    }

    #[test]
    fn all_ones_counts_taps() {
        // With x = w = 1, each output counts the in-image taps: 4 at corners, 6 on edges, 9 inside.
        let p = ConvProblem::new(1, 3, 3, 2, 1);
        let y = conv3x3_fprop(&p, &[1.0; 18], &[1.0; 18], None, false);
        assert_eq!(y, vec![8.0, 12.0, 8.0, 12.0, 18.0, 12.0, 8.0, 12.0, 8.0]);
    }

    #[test]
    fn fprop_matches_im2col() {
        let p = ConvProblem::new(2, 5, 4, 3, 6);
        let [x, w, b, _] = data(&p, 1);
        let (got, want) = (conv3x3_fprop(&p, &x, &w, Some(&b), false), fprop_im2col(&p, &x, &w, &b));
        assert_close("fprop vs im2col", &got, &want, 1e-6, 1e-6);
        let relu = conv3x3_fprop(&p, &x, &w, Some(&b), true);
        assert_eq!(relu, super::super::relu_fwd(&got));
    }

    #[test]
    fn backward_matches_fd() {
        let p = ConvProblem::new(2, 3, 4, 3, 2);
        let [x, w, b, dy] = data(&p, 4);
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| conv3x3_fprop(&p, x, w, Some(b), false);
        let (dw, db) = conv3x3_wgrad(&p, &x, &dy);
        let num_dx = fd_grad(&x, &dy, 1e-3, |x| fwd(x, &w, &b));
        let num_dw = fd_grad(&w, &dy, 1e-3, |w| fwd(&x, w, &b));
        let num_db = fd_grad(&b, &dy, 1e-3, |b| fwd(&x, &w, b));
        let dx = conv3x3_dgrad(&p, &dy, &w);
        assert_close("conv3x3_dgrad", &dx, &num_dx, 2e-3, 2e-3);
        assert_close("conv3x3_wgrad dw", &dw, &num_dw, 2e-3, 2e-3);
        assert_close("conv3x3_wgrad db", &db, &num_db, 2e-3, 2e-3);
    }

    #[test]
    fn adjoint() {
        // <conv(x, w), dy> = <x, dgrad(dy, w)> = <w, wgrad(x, dy)>, on an odd, non-square shape.
        let p = ConvProblem::new(2, 5, 7, 3, 4);
        let [x, w, _, dy] = data(&p, 8);
        let lhs = dot(&conv3x3_fprop(&p, &x, &w, None, false), &dy);
        let via_dx = dot(&x, &conv3x3_dgrad(&p, &dy, &w));
        let via_dw = dot(&w, &conv3x3_wgrad(&p, &x, &dy).0);
        assert_same(lhs, via_dx);
        assert_same(lhs, via_dw);
    }

    #[test]
    fn conv1x1_is_centre_tap_only() {
        // A 3x3 filter that is zero except the centre equals the 1x1 conv with that centre.
        let p = ConvProblem::new(2, 3, 3, 4, 5);
        let ([x, _, b, dy], w1) = (data(&p, 11), randn(p.k * p.c, 15));
        let mut w3 = vec![0f32; p.filter_len()];
        for k in 0..p.k {
            w3[tap(&p, k, 1, 1)..tap(&p, k, 1, 1) + p.c].copy_from_slice(&w1[k * p.c..(k + 1) * p.c]);
        }
        let px = p.n * p.h * p.w;
        let (y1, y3) =
            (conv1x1_fprop(px, p.c, p.k, &x, &w1, Some(&b), true), conv3x3_fprop(&p, &x, &w3, Some(&b), true));
        assert_close("1x1 fprop", &y1, &y3, 1e-6, 1e-6);
        let dx1 = conv1x1_dgrad(px, p.c, p.k, &dy, &w1);
        assert_close("1x1 dgrad", &dx1, &conv3x3_dgrad(&p, &dy, &w3), 1e-6, 1e-6);
        let (dw1, db1) = conv1x1_wgrad(px, p.c, p.k, &x, &dy);
        let (dw3, db3) = conv3x3_wgrad(&p, &x, &dy);
        let centre: Vec<f32> = (0..p.k).flat_map(|k| dw3[tap(&p, k, 1, 1)..tap(&p, k, 1, 1) + p.c].to_vec()).collect();
        assert_close("1x1 wgrad dw", &dw1, &centre, 1e-6, 1e-6);
        assert_eq!(db1, db3);
    }
}
