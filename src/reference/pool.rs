//! Max-pool 2x2, stride 2, NHWC: forward and backward.
//!
//! Output is `floor(H/2) x floor(W/2)`: an odd trailing row or column is dropped, as in
//! PyTorch's `max_pool2d(2, 2)`, and its elements get zero gradient.
//!
//! Tie rule (kernels must follow it): each window is scanned in row-major order
//! `(0,0), (0,1), (1,0), (1,1)`, and a later element replaces the running maximum only if
//! strictly greater (`v > best`), or NaN while the running maximum is not. So the gradient
//! goes to the first maximum in that order, and a window holding a NaN gives its first NaN:
//! the pool never drops one (PyTorch's max-pool keeps NaN too), so an overflow upstream
//! shows at the logits.

/// Index into x (NHWC, `N x H x W x C`) of the maximum of output window `(b, i, j, ch)` under the tie rule.
fn window_argmax(h: usize, w: usize, c: usize, x: &[f32], (b, i, j, ch): (usize, usize, usize, usize)) -> usize {
    let at = |dh: usize, dw: usize| ((b * h + 2 * i + dh) * w + 2 * j + dw) * c + ch;
    let mut best = at(0, 0);
    for (dh, dw) in [(0, 1), (1, 0), (1, 1)] {
        let (v, m) = (x[at(dh, dw)], x[best]);
        if v > m || (v.is_nan() && !m.is_nan()) {
            best = at(dh, dw);
        }
    }
    best
}

/// `y[n,i,j,c] = max_{di,dj in {0,1}} x[n,2i+di,2j+dj,c]`: x NHWC `N x H x W x C`, y NHWC `N x H/2 x W/2 x C` (floor).
pub fn maxpool2x2_fwd(n: usize, h: usize, w: usize, c: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), n * h * w * c, "maxpool2x2_fwd: x");
    let (oh, ow) = (h / 2, w / 2);
    let mut y = Vec::with_capacity(n * oh * ow * c);
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    y.push(x[window_argmax(h, w, c, x, (b, i, j, ch))]);
                }
            }
        }
    }
    y
}

/// `dx[argmax of window (n,i,j,c)] = dy[n,i,j,c]`, 0 elsewhere (first maximum in row-major window order wins ties): x, dx NHWC `N x H x W x C`.
pub fn maxpool2x2_bwd(n: usize, h: usize, w: usize, c: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), n * h * w * c, "maxpool2x2_bwd: x");
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(dy.len(), n * oh * ow * c, "maxpool2x2_bwd: dy");
    // Windows do not overlap, so each dx element receives at most one dy: no sums needed.
    let mut dx = vec![0f32; x.len()];
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    dx[window_argmax(h, w, c, x, (b, i, j, ch))] = dy[((b * oh + i) * ow + j) * c + ch];
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, distinct, fd_grad, randn};
    use super::*;

    #[test]
    fn two_by_two_by_hand() {
        // One image 2x2, two channels: channel 0 = [1, 4; 3, 2], channel 1 = [-1, -4; -3, -2].
        let x = [1.0, -1.0, 4.0, -4.0, 3.0, -3.0, 2.0, -2.0];
        assert_eq!(maxpool2x2_fwd(1, 2, 2, 2, &x), vec![4.0, -1.0]);
        assert_eq!(maxpool2x2_bwd(1, 2, 2, 2, &x, &[10.0, 20.0]), vec![0.0, 20.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn odd_sizes_drop_trailing_row_and_column() {
        // 3x5 single channel: output 1x2 from rows 0-1, columns 0-3; row 2 and column 4 ignored.
        let x = [1.0, 2.0, 3.0, 4.0, 99.0, 5.0, 6.0, 7.0, 8.0, 99.0, 99.0, 99.0, 99.0, 99.0, 99.0];
        assert_eq!(maxpool2x2_fwd(1, 3, 5, 1, &x), vec![6.0, 8.0]);
        let dx = maxpool2x2_bwd(1, 3, 5, 1, &x, &[1.0, 2.0]);
        let mut want = [0.0; 15];
        want[6] = 1.0;
        want[8] = 2.0;
        assert_eq!(dx, want);
        assert!(maxpool2x2_fwd(1, 1, 7, 3, &randn(21, 1)).is_empty());
    }

    #[test]
    fn ties_go_to_first_maximum_and_nan_wins() {
        // Each row is one 2x2 window (row-major) and the position that must get the gradient.
        let cases: [([f32; 4], usize); 8] = [
            ([5.0, 5.0, 5.0, 5.0], 0),
            ([1.0, 5.0, 5.0, 5.0], 1),
            ([1.0, 2.0, 5.0, 5.0], 2),
            ([5.0, 2.0, 1.0, 5.0], 0),
            ([0.0, -0.0, 0.0, 0.0], 0),
            ([f32::NAN, 1.0, 2.0, 3.0], 0),
            ([1.0, 4.0, f32::NAN, 3.0], 2),
            ([1.0, f32::NAN, 2.0, f32::NAN], 1),
        ];
        for (win, first) in cases {
            let dx = maxpool2x2_bwd(1, 2, 2, 1, &win, &[1.0]);
            let mut want = [0.0; 4];
            want[first] = 1.0;
            assert_eq!(dx, want, "window {win:?}");
        }
        // A NaN anywhere is the window's maximum: the pool never hides one.
        assert!(maxpool2x2_fwd(1, 2, 2, 1, &[1.0, f32::NAN, 3.0, 2.0])[0].is_nan());
    }

    #[test]
    fn backward_matches_fd() {
        let (n, h, w, c) = (2, 5, 4, 3);
        let x = distinct(n * h * w * c, 2);
        let dy = randn(n * (h / 2) * (w / 2) * c, 3);
        let num = fd_grad(&x, &dy, 1e-3, |x| maxpool2x2_fwd(n, h, w, c, x));
        assert_close("maxpool2x2_bwd", &maxpool2x2_bwd(n, h, w, c, &x, &dy), &num, 1e-4, 1e-3);
    }
}
