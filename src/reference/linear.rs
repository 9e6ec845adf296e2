//! Fully connected layer: `y = x W^T + b` with W in PyTorch's `[out][in]` layout, and its
//! two backward passes. Row-major throughout: x `[M][K]`, W `[N][K]`, y `[M][N]`.
//!
//! The 1x1 convolutions of config C are this same product over pixels (see `conv.rs`).

use super::elementwise::relu64;

/// `y[i][o] = act(b[o] + sum_j x[i][j] * w[o][j])`: x `[M][K]`, w `[N][K]`, b `[N]`, y `[M][N]`, act = ReLU if `relu`.
pub fn linear_fwd(m: usize, k: usize, n: usize, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear_fwd: x is [M][K]");
    assert_eq!(w.len(), n * k, "linear_fwd: w is [N][K]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear_fwd: bias is [N]");
    }
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for o in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[o] as f64);
            for j in 0..k {
                acc += x[i * k + j] as f64 * w[o * k + j] as f64;
            }
            y[i * n + o] = if relu { relu64(acc) } else { acc } as f32;
        }
    }
    y
}

/// `dx[i][j] = sum_o dy[i][o] * w[o][j]` (dX = dY W): dy `[M][N]`, w `[N][K]`, dx `[M][K]`.
pub fn linear_bwd_data(m: usize, k: usize, n: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), m * n, "linear_bwd_data: dy is [M][N]");
    assert_eq!(w.len(), n * k, "linear_bwd_data: w is [N][K]");
    let mut dx = vec![0f32; m * k];
    for i in 0..m {
        for j in 0..k {
            let mut acc = 0f64;
            for o in 0..n {
                acc += dy[i * n + o] as f64 * w[o * k + j] as f64;
            }
            dx[i * k + j] = acc as f32;
        }
    }
    dx
}

/// `(dw, db)` with `dw[o][j] = sum_i dy[i][o] * x[i][j]` (dW = dY^T X, `[N][K]`) and `db[o] = sum_i dy[i][o]`.
pub fn linear_bwd_weight(m: usize, k: usize, n: usize, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), m * k, "linear_bwd_weight: x is [M][K]");
    assert_eq!(dy.len(), m * n, "linear_bwd_weight: dy is [M][N]");
    let mut dw = vec![0f32; n * k];
    let mut db = vec![0f32; n];
    for o in 0..n {
        for j in 0..k {
            let mut acc = 0f64;
            for i in 0..m {
                acc += dy[i * n + o] as f64 * x[i * k + j] as f64;
            }
            dw[o * k + j] = acc as f32;
        }
        db[o] = (0..m).map(|i| dy[i * n + o] as f64).sum::<f64>() as f32;
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, dot, fd_grad, randn};
    use super::*;

    #[test]
    fn by_hand() {
        // x = [[1, 2]], W = [[1, 0], [0, 1], [1, -1]] ([out][in]), b = [0.5, 0, -10].
        let x = [1.0, 2.0];
        let w = [1.0, 0.0, 0.0, 1.0, 1.0, -1.0];
        let b = [0.5, 0.0, -10.0];
        assert_eq!(linear_fwd(1, 2, 3, &x, &w, Some(&b), false), vec![1.5, 2.0, -11.0]);
        assert_eq!(linear_fwd(1, 2, 3, &x, &w, Some(&b), true), vec![1.5, 2.0, 0.0]);
        assert_eq!(linear_fwd(1, 2, 3, &x, &w, None, false), vec![1.0, 2.0, -1.0]);
        let dy = [1.0, 2.0, 3.0];
        assert_eq!(linear_bwd_data(1, 2, 3, &dy, &w), vec![4.0, -1.0]);
        let (dw, db) = linear_bwd_weight(1, 2, 3, &x, &dy);
        assert_eq!(dw, vec![1.0, 2.0, 2.0, 4.0, 3.0, 6.0]);
        assert_eq!(db, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn backward_matches_fd() {
        let (m, k, n) = (3, 5, 4);
        let (x, w, b, dy) = (randn(m * k, 1), randn(n * k, 2), randn(n, 3), randn(m * n, 4));
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| linear_fwd(m, k, n, x, w, Some(b), false);
        let num_dx = fd_grad(&x, &dy, 1e-3, |x| fwd(x, &w, &b));
        let num_dw = fd_grad(&w, &dy, 1e-3, |w| fwd(&x, w, &b));
        let num_db = fd_grad(&b, &dy, 1e-3, |b| fwd(&x, &w, b));
        let (dw, db) = linear_bwd_weight(m, k, n, &x, &dy);
        assert_close("linear_bwd_data", &linear_bwd_data(m, k, n, &dy, &w), &num_dx, 1e-3, 1e-3);
        assert_close("linear_bwd_weight dw", &dw, &num_dw, 1e-3, 1e-3);
        assert_close("linear_bwd_weight db", &db, &num_db, 1e-3, 1e-3);
    }

    #[test]
    fn adjoint() {
        // <x W^T, dy> = <x, dy W> = <W, dy^T x>.
        let (m, k, n) = (4, 6, 3);
        let (x, w, dy) = (randn(m * k, 5), randn(n * k, 6), randn(m * n, 7));
        let lhs = dot(&linear_fwd(m, k, n, &x, &w, None, false), &dy);
        let via_dx = dot(&x, &linear_bwd_data(m, k, n, &dy, &w));
        let via_dw = dot(&w, &linear_bwd_weight(m, k, n, &x, &dy).0);
        assert!((lhs - via_dx).abs() < 1e-5 * (1.0 + lhs.abs()), "{lhs} vs {via_dx}");
        assert!((lhs - via_dw).abs() < 1e-5 * (1.0 + lhs.abs()), "{lhs} vs {via_dw}");
    }
}
