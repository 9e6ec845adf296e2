//! Elementwise ops: ReLU forward/backward, per-channel bias add and its gradient on NHWC
//! tensors, and the fp16 casts the kernels store activations with.
//!
//! ReLU is `x <= 0 ? 0 : x` everywhere in this crate: NaN passes (as in PyTorch), where
//! CUDA's `fmaxf(x, 0)` and `__hmax` would map it to 0 and hide an overflow upstream behind
//! finite logits; the fused conv/linear epilogues use the same rule (`vgg_relu`, common.cuh).
//! The backward passes the gradient only where the output is positive (NaN: not).

use half::f16;

/// The crate's ReLU on one f64 value: `v <= 0 ? 0 : v` (NaN passes).
pub(crate) fn relu64(v: f64) -> f64 {
    if v <= 0.0 {
        0.0
    } else {
        v
    }
}

/// `y_i = x_i <= 0 ? 0 : x_i` (NaN passes), any layout.
pub fn relu_fwd(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| if v <= 0.0 { 0.0 } else { v }).collect()
}

/// `dx_i = y_i > 0 ? dy_i : 0`, where `y_or_x` is the forward input or output (same sign test).
pub fn relu_bwd(y_or_x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(y_or_x.len(), dy.len(), "relu_bwd: y vs dy");
    y_or_x.iter().zip(dy).map(|(&y, &g)| if y > 0.0 { g } else { 0.0 }).collect()
}

/// `y[p][c] = x[p][c] + bias[c]` on a tensor whose innermost dimension is C (NHWC, or `[M][N]` with c = N).
pub fn bias_add_nhwc(x: &[f32], bias: &[f32], c: usize) -> Vec<f32> {
    assert_eq!(bias.len(), c, "bias_add_nhwc: bias vs c");
    assert_eq!(x.len() % c, 0, "bias_add_nhwc: x.len() not a multiple of c");
    x.iter().enumerate().map(|(i, &v)| (v as f64 + bias[i % c] as f64) as f32).collect()
}

/// `db[c] = sum_p dy[p][c]`: sum over every dimension but the innermost C (NHWC), f64 accumulation.
pub fn bias_grad_nhwc(dy: &[f32], c: usize) -> Vec<f32> {
    assert_eq!(dy.len() % c, 0, "bias_grad_nhwc: dy.len() not a multiple of c");
    let mut acc = vec![0f64; c];
    for row in dy.chunks_exact(c) {
        for (a, &g) in acc.iter_mut().zip(row) {
            *a += g as f64;
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
}

/// `y_i = f32(f16(x_i))`: the exact value an fp16 store keeps (round to nearest even, overflow to ±inf).
pub fn f32_to_f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

/// `y_i = f16(x_i)`, round to nearest even: host data for fp16 device buffers.
pub fn f32_to_f16(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}

/// `y_i = f32(x_i)`, exact: widen fp16 device results for comparison.
pub fn f16_to_f32(x: &[f16]) -> Vec<f32> {
    x.iter().map(|&v| v.to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, fd_grad, randn};
    use super::*;

    #[test]
    fn relu_by_hand() {
        let y = relu_fwd(&[-1.0, 0.0, 2.5, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(y[..4], [0.0, 0.0, 2.5, 0.0]);
        assert!(y[4].is_nan() && y[5] == f32::INFINITY && y[6] == 0.0, "{y:?}");
        assert!(relu64(f64::NAN).is_nan() && relu64(-0.0) == 0.0);
        assert_eq!(relu_bwd(&[-1.0, 0.0, 2.5], &[7.0, 8.0, 9.0]), vec![0.0, 0.0, 9.0]);
        // Testing the output or the input gives the same mask.
        let x = randn(50, 1);
        let dy = randn(50, 2);
        assert_eq!(relu_bwd(&x, &dy), relu_bwd(&relu_fwd(&x), &dy));
    }

    #[test]
    fn relu_bwd_matches_fd() {
        // Keep inputs away from the kink at 0, where the derivative is undefined.
        let x: Vec<f32> = randn(40, 3).iter().map(|&v| if v.abs() < 0.05 { v + 0.1 } else { v }).collect();
        let dy = randn(40, 4);
        let num = fd_grad(&x, &dy, 1e-3, relu_fwd);
        assert_close("relu_bwd", &relu_bwd(&x, &dy), &num, 1e-4, 1e-4);
    }

    #[test]
    fn bias_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(bias_add_nhwc(&x, &[10.0, 20.0, 30.0], 3), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        assert_eq!(bias_grad_nhwc(&x, 3), vec![5.0, 7.0, 9.0]);
        assert_eq!(bias_grad_nhwc(&x, 2), vec![9.0, 12.0]);
    }

    #[test]
    fn bias_grad_matches_fd() {
        let (c, x, dy) = (5, randn(30, 5), randn(30, 6));
        let b = randn(c, 7);
        let num = fd_grad(&b, &dy, 1e-3, |b| bias_add_nhwc(&x, b, c));
        assert_close("bias_grad_nhwc", &bias_grad_nhwc(&dy, c), &num, 1e-3, 1e-3);
    }

    #[test]
    fn f16_rounding() {
        let x = [1.0, 1.0 + 1.0 / 4096.0, 1.0 + 3.0 / 4096.0, 65504.0, 70000.0, 1e-8, -2.5];
        // 1 + 2^-12 is a tie between 1 and 1 + 2^-10: rounds to even (1); 1 + 3*2^-12 rounds up.
        let want = [1.0, 1.0, 1.0 + 1.0 / 1024.0, 65504.0, f32::INFINITY, 0.0, -2.5];
        assert_eq!(f32_to_f16_round(&x), want);
        assert_eq!(f16_to_f32(&f32_to_f16(&x)), want);
    }
}
