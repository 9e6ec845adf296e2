//! From posteriors to classes: the host's f64 softmax and the one ranking rule ([`top_k`]'s
//! order) by which `vgg predict` lists classes and `vgg eval` counts hits.

/// Softmax of one row of logits, in f64: the host's exact posterior, which tests hold the
/// device's ([`ops::softmax_fwd`]) against.
///
/// [`ops::softmax_fwd`]: crate::ops::softmax_fwd
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    softmax64(&logits.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

/// [`softmax`] of f64 scores.
pub fn softmax64(scores: &[f64]) -> Vec<f64> {
    let m = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = scores.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Class indices of the `k` largest of `p`, largest first (ties: lower index first); NaN
/// ranks first, above every number (NaNs among themselves by index): the order `vgg eval`
/// counts hits by (label `l` is a top-k hit when fewer than k classes come before it and
/// `p[l]` is not NaN).
pub fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| rank_order(p, a, b));
    idx.truncate(k);
    idx
}

/// The order of classes `a` and `b` in the posterior `p`, best first: NaN first (by index),
/// then larger first, ties by index. (`total_cmp` would rank a NaN by its sign bit: first
/// when positive, last when negative.)
fn rank_order(p: &[f64], a: usize, b: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (p[a].is_nan(), p[b].is_nan()) {
        (true, true) => a.cmp(&b),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => p[b].partial_cmp(&p[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b)),
    }
}

/// Whether class `j` outranks class `l` in the posterior `p`: `p[j] > p[l]`, or `p[j]` is
/// NaN, or `p[j] == p[l]` and `j < l` (ties go to the lower class index, as [`top_k`] and an
/// argmax break them). The rule of `vgg eval` and `vgg predict`, the same as
/// `reference::topk_hits`' for `vgg train`'s validation (whose logits may be infinite after an
/// fp16 overflow; a posterior here is then NaN, a miss in both). Counting only strictly larger scores
/// made a tie (a uniform posterior: fc8 all zeros) and a NaN label score (every comparison
/// false) hits.
fn outranks(p: &[f64], j: usize, l: usize) -> bool {
    j != l && (p[j].is_nan() || rank_order(p, j, l).is_lt())
}

/// How many classes outrank class `l` in `p` ([`outranks`]).
fn outranked_by(p: &[f64], l: usize) -> usize {
    (0..p.len()).filter(|&j| outranks(p, j, l)).count()
}

/// Whether label `l` is a top-`k` hit in `p`: fewer than `k` classes outrank it, and its
/// posterior is finite (a NaN is never a hit, whatever the others).
pub(crate) fn top_k_hit(p: &[f64], l: usize, k: usize) -> bool {
    p[l].is_finite() && outranked_by(p, l) < k
}
