//! Whole-tensor reductions: the sum (f64 accumulation) and the maximum magnitude, with
//! NaN propagating through both, as the device reductions, metrics and overflow checks use
//! them.

/// `sum_i x_i`, accumulated in f64 in index order.
pub fn tensor_sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// `max_i |x_i|`: 0 for an empty slice, NaN if any element is NaN, inf if any is infinite.
pub fn tensor_max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        assert_eq!(tensor_sum(&[1.0, -2.5, 4.0]), 2.5);
        assert_eq!(tensor_max_abs(&[1.0, -2.5, 2.0]), 2.5);
        assert_eq!(tensor_max_abs(&[]), 0.0);
        assert!(tensor_max_abs(&[1.0, f32::NAN, 3.0]).is_nan());
        assert_eq!(tensor_max_abs(&[1.0, f32::NEG_INFINITY]), f32::INFINITY);
        assert!(tensor_sum(&[f32::INFINITY, f32::NEG_INFINITY]).is_nan());
    }
}
