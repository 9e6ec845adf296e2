//! Softmax cross-entropy over `[batch][classes]` logits, its gradient, and top-k hit
//! counting for the top-1 / top-5 error.
//!
//! Numerically stable: each row subtracts its maximum before `exp`, in f64, so logits of
//! any magnitude give finite results. A NaN logit makes its row's loss NaN.

/// Row `i`'s label as an index, panicking unless `0 <= label < classes`.
fn label_of(labels: &[i32], i: usize, classes: usize) -> usize {
    let l = labels[i];
    assert!(l >= 0 && (l as usize) < classes, "softmax: label {l} of row {i} not in 0..{classes}");
    l as usize
}

/// `ln sum_j exp(row_j)`, computed as `m + ln sum_j exp(row_j - m)` with `m = max_j row_j`.
fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// Row loss `ln sum_j exp(row_j) - row[label]`, relatively accurate however small: where the
/// label holds the row's (finite) maximum it is `ln(1 + sum_{j != label} exp(row_j - row[label]))`,
/// as `ln_1p`, since the difference of two f64 logs has an absolute error of ~1e-16 and rounds a
/// confident row's loss (1e-30 and less, which the kernel keeps) to 0.
fn row_loss(row: &[f32], label: usize) -> f64 {
    let z = row[label] as f64;
    if z.is_finite() && row.iter().all(|&v| v as f64 <= z) {
        let others: f64 = row.iter().enumerate().filter(|&(j, _)| j != label).map(|(_, &v)| (v as f64 - z).exp()).sum();
        return others.ln_1p();
    }
    log_sum_exp(row) - z
}

/// `p[i][j] = exp(z[i][j]) / sum_j' exp(z[i][j'])`, rounded to f32 once; z, p `[batch][classes]`.
pub fn softmax_fwd(batch: usize, classes: usize, logits: &[f32]) -> Vec<f32> {
    assert_eq!(logits.len(), batch * classes, "softmax_fwd: logits");
    let mut probs = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let lse = log_sum_exp(row);
        probs.extend(row.iter().map(|&v| (v as f64 - lse).exp() as f32));
    }
    probs
}

/// `(loss, p)`: `p` = [`softmax_fwd`], `loss = mean_i (ln sum_j exp(z[i][j]) - z[i][label_i])`; z, p `[batch][classes]`.
pub fn softmax_xent_fwd(batch: usize, classes: usize, logits: &[f32], labels: &[i32]) -> (f64, Vec<f32>) {
    assert_eq!(logits.len(), batch * classes, "softmax_xent_fwd: logits");
    assert_eq!(labels.len(), batch, "softmax_xent_fwd: labels");
    let total: f64 =
        logits.chunks_exact(classes).enumerate().map(|(i, row)| row_loss(row, label_of(labels, i, classes))).sum();
    (total / batch as f64, softmax_fwd(batch, classes, logits))
}

/// `dz[i][j] = (softmax(z)[i][j] - [j == label_i]) / batch`: the gradient of the mean loss w.r.t. the logits, `[batch][classes]`.
pub fn softmax_xent_bwd(batch: usize, classes: usize, logits: &[f32], labels: &[i32]) -> Vec<f32> {
    assert_eq!(logits.len(), batch * classes, "softmax_xent_bwd: logits");
    assert_eq!(labels.len(), batch, "softmax_xent_bwd: labels");
    let mut dz = Vec::with_capacity(logits.len());
    for (i, row) in logits.chunks_exact(classes).enumerate() {
        let (lse, label) = (log_sum_exp(row), label_of(labels, i, classes));
        for (j, &v) in row.iter().enumerate() {
            let onehot = if j == label { 1.0 } else { 0.0 };
            dz.push((((v as f64 - lse).exp() - onehot) / batch as f64) as f32);
        }
    }
    dz
}

/// Rows whose label is among the `k` largest logits: hit iff fewer than `k` other classes
/// outrank it.
///
/// Tie rule: a class tied with the label outranks it when its index is lower (argmax's
/// rule: the first maximum wins), so an untrained or collapsed network whose logits are all
/// equal scores only the rows labelled 0..k, not every row. Overflow rule: a non-finite label
/// logit (NaN, or an infinity from an fp16 overflow, whose loss is NaN) is a miss, and a NaN in
/// another class outranks the label, so a diverged network never scores.
pub fn topk_hits(batch: usize, classes: usize, logits: &[f32], labels: &[i32], k: usize) -> usize {
    assert_eq!(logits.len(), batch * classes, "topk_hits: logits");
    assert_eq!(labels.len(), batch, "topk_hits: labels");
    let mut hits = 0;
    for (i, row) in logits.chunks_exact(classes).enumerate() {
        let label = label_of(labels, i, classes);
        let z = row[label];
        let outranks = |j: usize, v: f32| match v.partial_cmp(&z) {
            None | Some(std::cmp::Ordering::Greater) => j != label,
            Some(std::cmp::Ordering::Equal) => j < label,
            Some(std::cmp::Ordering::Less) => false,
        };
        let larger = row.iter().enumerate().filter(|&(j, &v)| outranks(j, v)).count();
        if z.is_finite() && larger < k {
            hits += 1;
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, fd_grad_scalar, randn};
    use super::*;

    #[test]
    fn known_softmax_of_zero_ln2() {
        // softmax([0, ln 2]) = [1/3, 2/3]; losses ln 3 (label 0) and ln 3/2 (label 1).
        let ln2 = std::f32::consts::LN_2;
        for shift in [0.0, 1000.0, -1000.0] {
            let z = [shift, shift + ln2, shift, shift + ln2];
            let (loss, p) = softmax_xent_fwd(2, 2, &z, &[0, 1]);
            assert!((loss - 0.5 * (3f64.ln() + 1.5f64.ln())).abs() < 1e-4, "shift {shift}: loss {loss}");
            assert_close("probs", &p, &[1.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0], 1e-4, 0.0);
            let dz = softmax_xent_bwd(2, 2, &z, &[0, 1]);
            let want = [(1.0 / 3.0 - 1.0) / 2.0, (2.0 / 3.0) / 2.0, (1.0 / 3.0) / 2.0, (2.0 / 3.0 - 1.0) / 2.0];
            assert_close("dlogits", &dz, &want, 1e-4, 0.0);
        }
        // Unshifted, the loss is off only by f32's rounding of ln 2.
        let (loss, _) = softmax_xent_fwd(1, 2, &[0.0, ln2], &[1]);
        assert!((loss - 1.5f64.ln()).abs() < 1e-7);
    }

    #[test]
    fn backward_matches_fd_and_rows_sum_to_zero() {
        let (batch, classes) = (3, 7);
        let z: Vec<f32> = randn(batch * classes, 1).iter().map(|v| 3.0 * v).collect();
        let labels = [6, 0, 3];
        let dz = softmax_xent_bwd(batch, classes, &z, &labels);
        let num = fd_grad_scalar(&z, 1e-3, |z| softmax_xent_fwd(batch, classes, z, &labels).0);
        assert_close("softmax_xent_bwd", &dz, &num, 1e-6, 1e-4);
        for row in dz.chunks_exact(classes) {
            assert!(row.iter().map(|&v| v as f64).sum::<f64>().abs() < 1e-7);
        }
        let (_, p) = softmax_xent_fwd(batch, classes, &z, &labels);
        for row in p.chunks_exact(classes) {
            assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        }
    }

    /// A confident row's loss, `ln(1 + 3 e^-80)` = 5.4e-35, to f64's relative precision (the
    /// kernel's log1p form keeps it; `lse - z` in f64 gave 0).
    #[test]
    fn confident_loss_is_relatively_accurate() {
        let (loss, _) = softmax_xent_fwd(1, 4, &[0.0, 80.0, 0.0, 0.0], &[1]);
        let want = 3.0 * (-80f64).exp();
        assert!((loss - want).abs() <= 1e-12 * want, "{loss:e} vs {want:e}");
        // Not the maximum, infinite, NaN: as before.
        assert!((softmax_xent_fwd(1, 2, &[0.0, 80.0], &[0]).0 - 80.0).abs() < 1e-12);
        assert!(softmax_xent_fwd(1, 2, &[f32::INFINITY, 0.0], &[0]).0.is_nan());
        assert!(softmax_xent_fwd(1, 2, &[1.0, f32::NAN], &[0]).0.is_nan());
    }

    #[test]
    fn nan_logit_poisons_loss() {
        let (loss, _) = softmax_xent_fwd(2, 2, &[0.0, 1.0, f32::NAN, 0.0], &[0, 1]);
        assert!(loss.is_nan());
    }

    #[test]
    fn topk_with_ties_and_nans() {
        let z = [
            1.0,
            5.0,
            3.0,
            2.0, // label 1: the largest
            1.0,
            5.0,
            3.0,
            2.0, // label 3: third largest
            4.0,
            4.0,
            4.0,
            4.0, // label 2: all tied, classes 0 and 1 (lower indices) outrank it
            1.0,
            3.0,
            3.0,
            2.0, // label 0: three strictly larger
            1.0,
            f32::NAN,
            0.0,
            0.0, // label 0: the NaN counts as larger
            f32::NAN,
            1.0,
            0.0,
            0.0, // label 0 is NaN: always a miss
            f32::INFINITY,
            1.0,
            0.0,
            0.0, // label 0 is +inf (an fp16 overflow): a miss too
            2.0,
            2.0,
            1.0,
            0.0, // label 0: tied with class 1, which does not outrank it
        ];
        let labels = [1, 3, 2, 0, 0, 0, 0, 0];
        let per_k: Vec<usize> = (1..=4).map(|k| topk_hits(8, 4, &z, &labels, k)).collect();
        assert_eq!(per_k, vec![2, 3, 5, 6]);
        assert_eq!(topk_hits(1, 4, &z[4..8], &[3], 2), 0);
        assert_eq!(topk_hits(1, 4, &z[4..8], &[3], 3), 1);
    }
}
