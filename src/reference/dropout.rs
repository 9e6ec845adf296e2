//! Inverted dropout driven by a counter-based hash, so the mask is a pure function of
//! `(seed, step, index)`: nothing is stored between forward and backward, and the CUDA
//! kernels reproduce it bit for bit with plain 64-bit integer arithmetic.
//!
//! The formula, all arithmetic on u64 with wrapping multiply and add:
//!
//! ```text
//! mix(z)  = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
//! key     = mix(seed ^ mix(step))
//! hash    = mix(key + (index + 1) * 0x9E3779B97F4A7C15)
//! keep    = ((hash >> 40) as f32) * 2^-24 >= p_drop
//! ```
//!
//! `mix` is splitmix64's finaliser and `hash` is the `index`-th output (0-based) of a
//! splitmix64 stream started at `key`; `key` does not depend on the element, so a kernel
//! may compute it once (or take it from the host). `hash >> 40` is 24 bits, exact in f32,
//! so the keep test is exact and `p_drop = 0` keeps everything, `p_drop = 1` nothing.
//! Kept values are multiplied by `scale = 1 / (1 - p_drop)`, computed in f32, and the
//! product `x * scale` is one f32 multiply: the reference is bit-exact for kernels to match.
//! `index` is the element's flat position in the tensor; use distinct seeds for distinct
//! dropout layers, or they share masks.

/// Splitmix64's finaliser: `z ^= z>>30; z *= 0xBF58476D1CE4E5B9; z ^= z>>27; z *= 0x94D049BB133111EB; z ^ (z>>31)`.
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `key = mix(seed ^ mix(step))`: the per-(seed, step) stream key, element-independent.
pub fn dropout_key(seed: u64, step: u64) -> u64 {
    splitmix64_mix(seed ^ splitmix64_mix(step))
}

/// `hash = mix(key(seed, step) + (index + 1) * 0x9E3779B97F4A7C15)`, wrapping u64 arithmetic.
pub fn dropout_hash(seed: u64, step: u64, index: u64) -> u64 {
    let gamma = 0x9E37_79B9_7F4A_7C15u64;
    splitmix64_mix(dropout_key(seed, step).wrapping_add(index.wrapping_add(1).wrapping_mul(gamma)))
}

/// Keep element iff `((hash(seed, step, index) >> 40) as f32) * 2^-24 >= p_drop`.
pub fn dropout_keep(seed: u64, step: u64, index: u64, p_drop: f32) -> bool {
    let u = (dropout_hash(seed, step, index) >> 40) as f32 * (1.0 / 16_777_216.0);
    u >= p_drop
}

/// `y_i = keep(seed, step, i, p) ? x_i * f32(1 / (1 - p)) : 0` (inverted dropout; any layout, i = flat index).
pub fn dropout_fwd(x: &[f32], seed: u64, step: u64, p_drop: f32) -> Vec<f32> {
    masked_scale(x, seed, step, p_drop)
}

/// `dx_i = keep(seed, step, i, p) ? dy_i * f32(1 / (1 - p)) : 0`: the same mask and scale as the forward.
pub fn dropout_bwd(dy: &[f32], seed: u64, step: u64, p_drop: f32) -> Vec<f32> {
    masked_scale(dy, seed, step, p_drop)
}

fn masked_scale(x: &[f32], seed: u64, step: u64, p_drop: f32) -> Vec<f32> {
    assert!((0.0..=1.0).contains(&p_drop), "dropout: p_drop {p_drop} not in [0, 1]");
    // p_drop = 1 drops everything, so the infinite scale is never used.
    let scale = 1.0f32 / (1.0 - p_drop);
    x.iter()
        .enumerate()
        .map(|(i, &v)| if dropout_keep(seed, step, i as u64, p_drop) { v * scale } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, fd_grad, randn};
    use super::*;

    #[test]
    fn splitmix64_known_outputs() {
        // Seed 0's first outputs of Vigna's splitmix64 (published test vector): key 0 at step 0.
        assert_eq!(dropout_key(0, 0), 0);
        assert_eq!(dropout_hash(0, 0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(dropout_hash(0, 0, 1), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn pinned_hashes() {
        // Golden values for CUDA ports (cross-checked with an independent Python transcription
        // of the formula in the module docs); they change only if the formula changes.
        let got: Vec<u64> = [(1u64, 0u64, 0u64), (1, 0, 1), (1, 1, 0), (42, 7, 123_456_789)]
            .iter()
            .map(|&(s, t, i)| dropout_hash(s, t, i))
            .collect();
        assert_eq!(got, PINNED.to_vec());
    }

    const PINNED: [u64; 4] =
        [0xBFEF_8030_DDC2_D772, 0x5F55_2CE4_82F2_AA47, 0x275F_2AE7_91FE_F8A1, 0x797E_671C_92E3_A1EE];

    #[test]
    fn deterministic_and_depends_on_every_input() {
        let x = randn(1000, 1);
        assert_eq!(dropout_fwd(&x, 5, 9, 0.5), dropout_fwd(&x, 5, 9, 0.5));
        assert_ne!(dropout_fwd(&x, 5, 9, 0.5), dropout_fwd(&x, 6, 9, 0.5));
        assert_ne!(dropout_fwd(&x, 5, 9, 0.5), dropout_fwd(&x, 5, 10, 0.5));
        assert_ne!(dropout_hash(5, 9, 0), dropout_hash(5, 9, 1));
    }

    #[test]
    fn keep_rate_and_scale() {
        let n = 100_000;
        for p in [0.1f32, 0.5, 0.9] {
            let kept = (0..n).filter(|&i| dropout_keep(3, 11, i, p)).count() as f64 / n as f64;
            // Binomial standard deviation is at most 0.0016 here; allow about 4 of them.
            assert!((kept - (1.0 - p as f64)).abs() < 0.006, "p {p}: kept {kept}");
        }
        let y = dropout_fwd(&[1.5; 64], 3, 11, 0.5);
        assert!(y.iter().all(|&v| v == 0.0 || v == 3.0));
        assert_eq!(dropout_fwd(&[1.5; 64], 3, 11, 0.0), vec![1.5; 64]);
        assert_eq!(dropout_fwd(&[1.5; 64], 3, 11, 1.0), vec![0.0; 64]);
    }

    #[test]
    fn backward_uses_forward_mask() {
        let (x, dy) = (randn(500, 2), randn(500, 3));
        let (y, dx) = (dropout_fwd(&x, 8, 1, 0.3), dropout_bwd(&dy, 8, 1, 0.3));
        let scale = 1.0f32 / 0.7;
        for i in 0..x.len() {
            let kept = dropout_keep(8, 1, i as u64, 0.3);
            assert_eq!(y[i], if kept { x[i] * scale } else { 0.0 });
            assert_eq!(dx[i], if kept { dy[i] * scale } else { 0.0 });
        }
        let num = fd_grad(&x[..60], &dy[..60], 1e-3, |x| dropout_fwd(x, 8, 1, 0.3));
        assert_close("dropout_bwd", &dx[..60], &num, 1e-4, 1e-3);
    }
}
