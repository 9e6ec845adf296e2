//! Reference ops: the plain host loops every GPU kernel is tested against.
//!
//! One module per future `src/ops/` module. Conventions shared by all of them: inputs are
//! `&[f32]` (callers widen fp16 themselves), sums accumulate in f64 and are rounded to f32
//! once at the end, and results come back as fresh `Vec<f32>` (a tuple when a backward
//! pass has two outputs; only the optimizer updates in place). Wrong slice lengths panic:
//! this code serves tests and the selftest, never the training path, so clarity wins over
//! speed everywhere.
//!
//! Also here: [`compare`] / [`compare_tol`], the error metrics tests and selftest report.

pub mod conv;
pub mod copy;
pub mod dense_gather;
pub mod dropout;
pub mod elementwise;
pub mod input;
pub mod linear;
pub mod lrn;
pub mod pool;
pub mod reduce;
pub mod sgd;
pub mod softmax;

#[cfg(test)]
mod testutil;

pub use conv::*;
pub use copy::*;
pub use dense_gather::*;
pub use dropout::*;
pub use elementwise::*;
pub use input::*;
pub use linear::*;
pub use lrn::*;
pub use pool::*;
pub use reduce::*;
pub use sgd::*;
pub use softmax::*;

/// Error of `got` against the reference `want`. Any non-finite difference (NaN in either
/// side, or infinities that differ) makes `max_abs` and `rel_l2` infinite, so a NaN output
/// fails every `<= tolerance` and passes no `> tolerance` check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compare {
    /// `max_i |got_i - want_i|`.
    pub max_abs: f64,
    /// `||got - want||_2 / max(||want||_2, 1e-30)`.
    pub rel_l2: f64,
    /// `max_i |want_i|`, the scale to read `max_abs` against.
    pub max_ref: f64,
    /// First `(index, got, want)` outside the tolerance (exact equality for [`compare`]).
    pub first_bad: Option<(usize, f32, f32)>,
}

/// Error metrics of `got` vs `want` with `first_bad` = first element not exactly equal (NaN never equal).
pub fn compare(got: &[f32], want: &[f32]) -> Compare {
    compare_tol(got, want, 0.0, 0.0)
}

/// Error metrics of `got` vs `want` with `first_bad` = first `i` where not `|got_i - want_i| <= atol + rtol*|want_i|`.
pub fn compare_tol(got: &[f32], want: &[f32], atol: f64, rtol: f64) -> Compare {
    assert_eq!(got.len(), want.len(), "compare: length of got vs want");
    let (mut max_abs, mut max_ref, mut err2, mut ref2) = (0f64, 0f64, 0f64, 0f64);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g64, w64) = (g as f64, w as f64);
        // Equal infinities count as exact; every other non-finite difference poisons.
        let d = if g == w { 0.0 } else { (g64 - w64).abs() };
        let d = if d.is_finite() { d } else { f64::INFINITY };
        // `d == 0` first: with an infinite reference `rtol * |want|` may be NaN.
        let within = d == 0.0 || d <= atol + rtol * w64.abs();
        if first_bad.is_none() && !within {
            first_bad = Some((i, g, w));
        }
        max_abs = max_abs.max(d);
        max_ref = max_ref.max(w64.abs());
        err2 += d * d;
        if w64.is_finite() {
            ref2 += w64 * w64;
        }
    }
    let rel_l2 = if err2.is_finite() { err2.sqrt() / ref2.sqrt().max(1e-30) } else { f64::INFINITY };
    Compare { max_abs, rel_l2, max_ref, first_bad }
}

impl std::fmt::Display for Compare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "max_abs {:.3e} (max_ref {:.3e}) rel_l2 {:.3e}", self.max_abs, self.max_ref, self.rel_l2)?;
        if let Some((i, g, w)) = self.first_bad {
            write!(f, ", first bad [{i}]: got {g:e} want {w:e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_zero() {
        let c = compare(&[1.0, -2.0, f32::INFINITY], &[1.0, -2.0, f32::INFINITY]);
        assert_eq!((c.max_abs, c.rel_l2, c.first_bad), (0.0, 0.0, None));
        assert_eq!(c.max_ref, f64::INFINITY);
    }

    #[test]
    fn known_errors() {
        let c = compare(&[3.0, 4.5], &[3.0, 4.0]);
        assert_eq!(c.max_abs, 0.5);
        assert_eq!(c.max_ref, 4.0);
        assert!((c.rel_l2 - 0.5 / 5.0).abs() < 1e-15);
        assert_eq!(c.first_bad, Some((1, 4.5, 4.0)));
        assert_eq!(compare_tol(&[3.0, 4.5], &[3.0, 4.0], 0.0, 0.2).first_bad, None);
        assert_eq!(compare_tol(&[3.0, 4.5], &[3.0, 4.0], 0.4, 0.0).first_bad, Some((1, 4.5, 4.0)));
    }

    #[test]
    fn nan_and_inf_poison() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let c = compare_tol(&[1.0, bad, 2.0], &[1.0, 1.0, 2.0], 1e9, 1e9);
            assert_eq!(c.max_abs, f64::INFINITY, "{bad}");
            assert_eq!(c.rel_l2, f64::INFINITY, "{bad}");
            assert_eq!(c.first_bad.map(|b| b.0), Some(1), "{bad}");
            assert!(c.rel_l2 > 1e30 && c.max_abs > 1e30);
        }
        // A NaN reference fails too: no result can match it.
        let c = compare(&[f32::NAN], &[f32::NAN]);
        assert_eq!(c.rel_l2, f64::INFINITY);
        assert!(c.first_bad.is_some());
    }

    #[test]
    fn zero_reference() {
        assert_eq!(compare(&[0.0; 3], &[0.0; 3]).rel_l2, 0.0);
        assert!(compare(&[1e-3, 0.0], &[0.0, 0.0]).rel_l2 > 1e20);
    }

    #[test]
    fn display_names_first_bad() {
        let s = compare(&[1.0, 2.0], &[1.0, 3.0]).to_string();
        assert!(s.contains("first bad [1]"), "{s}");
    }
}
