//! SGD with momentum and L2 weight decay, as PyTorch's `torch.optim.SGD` (dampening 0,
//! no Nesterov), on f32 master weights, with the loss-scale division of mixed-precision
//! training folded in.

/// Hyper-parameters of one SGD step. VGG: lr 1e-2, momentum 0.9, weight decay 5e-4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    /// Learning rate.
    pub lr: f32,
    /// Momentum.
    pub momentum: f32,
    /// L2 weight decay, applied where the step's `decay` says so (weights, not biases).
    pub weight_decay: f32,
    /// The factor the loss was multiplied by before backward; gradients are divided by it.
    pub loss_scale: f32,
}

/// In place: `g' = g/loss_scale + wd*w` (wd term only if `decay`; callers pass false for biases), `v = momentum*v + g'`, `w = w - lr*v`.
///
/// Each element is computed in f64 from the f32 inputs and stored rounded to f32. With
/// `v = 0` initially this matches PyTorch, whose first step sets `v = g'`.
pub fn sgd_step(w: &mut [f32], v: &mut [f32], g: &[f32], p: &SgdParams, decay: bool) {
    assert_eq!(w.len(), g.len(), "sgd_step: w vs g");
    assert_eq!(v.len(), g.len(), "sgd_step: v vs g");
    let wd = if decay { p.weight_decay as f64 } else { 0.0 };
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
        let g = g as f64 / p.loss_scale as f64 + wd * *w as f64;
        let v_new = p.momentum as f64 * *v as f64 + g;
        *w = (*w as f64 - p.lr as f64 * v_new) as f32;
        *v = v_new as f32;
    }
}

/// True iff any element is NaN or ±inf: the loss scaler's overflow test (skip the step and lower the scale).
pub fn any_non_finite(g: &[f32]) -> bool {
    g.iter().any(|v| !v.is_finite())
}

/// The dynamic loss scale's state (PyTorch's `GradScaler`): what [`loss_scale_update`] steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleState {
    /// The factor the loss is multiplied by before backward.
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    /// Clean steps in a row after which the scale doubles.
    pub growth_interval: u32,
    /// Steps skipped for overflow so far.
    pub skipped: u64,
}

/// One step of the loss scale's rules: on overflow halve the scale, unless the half is 0, and
/// count a skipped step; after `growth_interval` clean steps in a row double it, unless the
/// double is not finite. The scale so stays positive and finite: at 0 every step would divide
/// the gradients by it (a run of ~170 overflowing steps from 2^16 used to get there).
/// Returns whether the step was applied (`!overflow`). The reference of the host
/// `ops::LossScaler` and of kernel amp_scaler_update (kernels/optim.cu).
pub fn loss_scale_update(st: &mut LossScaleState, overflow: bool) -> bool {
    if overflow {
        if st.scale * 0.5 > 0.0 {
            st.scale *= 0.5;
        }
        st.clean_steps = 0;
        st.skipped += 1;
        return false;
    }
    st.clean_steps += 1;
    if st.clean_steps >= st.growth_interval {
        st.clean_steps = 0;
        if (st.scale * 2.0).is_finite() {
            st.scale *= 2.0;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_by_hand() {
        let p = SgdParams { lr: 0.5, momentum: 0.9, weight_decay: 0.1, loss_scale: 4.0 };
        let mut w = [2.0f32, -1.0];
        let mut v = [1.0f32, 0.0];
        // g' = [8/4 + 0.1*2, 4/4 - 0.1*1] = [2.2, 0.9]; v = [0.9 + 2.2, 0.9] = [3.1, 0.9];
        // w = [2 - 1.55, -1 - 0.45] = [0.45, -1.45].
        sgd_step(&mut w, &mut v, &[8.0, 4.0], &p, true);
        assert!((v[0] - 3.1).abs() < 1e-6 && (v[1] - 0.9).abs() < 1e-6, "{v:?}");
        assert!((w[0] - 0.45).abs() < 1e-6 && (w[1] + 1.45).abs() < 1e-6, "{w:?}");
        // Without decay (a bias): g' = [2, 1]; v = [0.9*3.1 + 2, 0.9*0.9 + 1] = [4.79, 1.81].
        sgd_step(&mut w, &mut v, &[8.0, 4.0], &p, false);
        assert!((v[0] - 4.79).abs() < 1e-5 && (v[1] - 1.81).abs() < 1e-5, "{v:?}");
        assert!((w[0] - (0.45 - 2.395)).abs() < 1e-5 && (w[1] - (-1.45 - 0.905)).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn first_step_from_zero_momentum_is_plain_sgd() {
        let p = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, loss_scale: 1.0 };
        let (mut w, mut v) = ([1.0f32, 3.0], [0.0f32; 2]);
        sgd_step(&mut w, &mut v, &[0.5, -0.25], &p, true);
        let want_v = [0.5 + 5e-4, -0.25 + 5e-4 * 3.0];
        for i in 0..2 {
            assert!((v[i] as f64 - want_v[i]).abs() < 1e-7);
            assert!((w[i] as f64 - ([1.0, 3.0][i] - 0.01 * want_v[i])).abs() < 1e-7);
        }
    }

    #[test]
    fn non_finite_detection() {
        assert!(!any_non_finite(&[0.0, -1e30, f32::MAX, f32::MIN_POSITIVE]));
        assert!(any_non_finite(&[0.0, f32::NAN]));
        assert!(any_non_finite(&[f32::INFINITY]));
        assert!(any_non_finite(&[1.0, f32::NEG_INFINITY]));
        assert!(!any_non_finite(&[]));
    }
}
