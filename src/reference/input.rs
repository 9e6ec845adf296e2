//! Input normalisation: a uint8 NHWC RGB batch to the network's fp16 input, the first op
//! of a training step. The paper subtracts the training set's mean RGB; torchvision's
//! models also divide by a per-channel standard deviation. Both are here, with the
//! optional per-image horizontal flip of training-time augmentation.
//!
//! `y[n][h][w][c] = f32((x[n][h][w'][c] - mean[c]) / std[c])` with `w' = W-1-w` when
//! image n is flipped, computed in f64 and rounded to f32 once (callers round to fp16):
//! the kernel does the same sequence, so the two agree bit for bit.

/// Per-channel mean and optional standard deviation, on the 0..255 pixel scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputNorm {
    /// Subtracted from each channel (R, G, B).
    pub mean: [f32; 3],
    /// `None` subtracts the mean only (the paper's preprocessing).
    pub std: Option<[f32; 3]>,
}

impl InputNorm {
    /// ImageNet's mean RGB (torchvision's 0.485, 0.456, 0.406 times 255), mean only.
    pub const IMAGENET_MEAN: Self = Self { mean: [123.675, 116.28, 103.53], std: None };
    /// ImageNet's mean and standard deviation (torchvision's, times 255).
    pub const IMAGENET: Self = Self { mean: [123.675, 116.28, 103.53], std: Some([58.395, 57.12, 57.375]) };
}

/// Normalises `x` (`[n, h, w, 3]` NHWC bytes); `flip[i] != 0` mirrors image i left-right.
pub fn normalize_input(shape: [usize; 4], x: &[u8], norm: &InputNorm, flip: Option<&[u8]>) -> Vec<f32> {
    let [n, h, w, c] = shape;
    assert_eq!(c, 3, "normalize_input: 3 channels expected");
    assert_eq!(x.len(), n * h * w * c, "normalize_input: x");
    if let Some(f) = flip {
        assert_eq!(f.len(), n, "normalize_input: one flip flag an image");
    }
    let std = norm.std.unwrap_or([1.0; 3]);
    let mut y = Vec::with_capacity(x.len());
    for img in 0..n {
        let flipped = flip.is_some_and(|f| f[img] != 0);
        for r in 0..h {
            for col in 0..w {
                let src = if flipped { w - 1 - col } else { col };
                for ch in 0..3 {
                    let v = x[((img * h + r) * w + src) * 3 + ch] as f64;
                    y.push(((v - norm.mean[ch] as f64) / std[ch] as f64) as f32);
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // One 1x2 image: pixels (0, 128, 255) and (10, 20, 30).
        let x = [0u8, 128, 255, 10, 20, 30];
        let norm = InputNorm { mean: [10.0, 20.0, 30.0], std: Some([2.0, 4.0, 5.0]) };
        let y = normalize_input([1, 1, 2, 3], &x, &norm, None);
        assert_eq!(y, vec![-5.0, 27.0, 45.0, 0.0, 0.0, 0.0]);
        let flipped = normalize_input([1, 1, 2, 3], &x, &norm, Some(&[1]));
        assert_eq!(flipped, vec![0.0, 0.0, 0.0, -5.0, 27.0, 45.0]);
        let mean_only = normalize_input([1, 1, 2, 3], &x, &InputNorm { std: None, ..norm }, Some(&[0]));
        assert_eq!(mean_only, vec![-10.0, 108.0, 225.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn flip_is_per_image() {
        let x: Vec<u8> = (0..2 * 3 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let norm = InputNorm::IMAGENET;
        let plain = normalize_input([2, 3, 4, 3], &x, &norm, None);
        let y = normalize_input([2, 3, 4, 3], &x, &norm, Some(&[0, 1]));
        assert_eq!(y[..36], plain[..36]);
        // Image 1, row 2, column 0 is the unflipped row 2, column 3.
        let at = |img: usize, r: usize, col: usize| ((img * 3 + r) * 4 + col) * 3;
        assert_eq!(y[at(1, 2, 0)..at(1, 2, 0) + 3], plain[at(1, 2, 3)..at(1, 2, 3) + 3]);
    }
}
