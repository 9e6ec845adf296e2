//! The training set's colour statistics (`vgg stats`): mean RGB (the paper's only input
//! normalisation, subtracted on the GPU), per-channel standard deviation, and the 3x3 RGB
//! covariance with its eigen-decomposition, the basis of AlexNet's PCA colour shift.

// 3x3 matrix maths reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{resize, shuffled, DataError, Dataset};
use crate::reference::InputNorm;

/// Principal components of RGB pixel values in 0..1 units (AlexNet; fb.resnet.torch's
/// `Lighting`): `eigvec[c][j]` is channel `c` of eigenvector `j` (eigenvectors are
/// columns), `eigval[j]` its eigenvalue, largest first.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    /// The eigenvalues, largest first.
    pub eigval: [f32; 3],
    /// The eigenvectors as columns: `eigvec[c][j]` is channel `c` of eigenvector `j`.
    pub eigvec: [[f32; 3]; 3],
}

impl Pca {
    /// The published ImageNet values (fb.resnet.torch, used by most re-implementations).
    pub const IMAGENET: Pca = Pca {
        eigval: [0.2175, 0.0188, 0.0045],
        eigvec: [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    };

    /// AlexNet's shift of every pixel for draws `alpha` (normally N(0, 0.1) each):
    /// `sum_j eigvec[.][j] * alpha[j] * eigval[j]`, returned in 0..255 units.
    pub fn shift(&self, alpha: [f64; 3]) -> [f32; 3] {
        let mut out = [0.0f32; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let s: f64 = (0..3).map(|j| self.eigvec[c][j] as f64 * alpha[j] * self.eigval[j] as f64).sum();
            *o = (s * 255.0) as f32;
        }
        out
    }

    /// The decomposition of a symmetric 3x3 covariance (0..1 units).
    pub fn from_covariance(cov: [[f64; 3]; 3]) -> Pca {
        let (val, vec) = eigen_symmetric3(cov);
        let mut p = Pca { eigval: [0.0; 3], eigvec: [[0.0; 3]; 3] };
        for j in 0..3 {
            p.eigval[j] = val[j] as f32;
            for c in 0..3 {
                p.eigvec[c][j] = vec[c][j] as f32;
            }
        }
        p
    }
}

/// Eigenvalues (descending) and eigenvectors (columns, unit length, each with a
/// non-negative sum of components) of a symmetric 3x3 matrix, by cyclic Jacobi rotations.
pub fn eigen_symmetric3(m: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = m;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..64 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        let scale = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
        if off <= 1e-15 * scale || off == 0.0 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // a <- J^T a J with the rotation J in the (p, q) plane.
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let mut vals = [0.0; 3];
    let mut vecs = [[0.0; 3]; 3];
    for (dst, &src) in order.iter().enumerate() {
        vals[dst] = a[src][src];
        let sign = if v[0][src] + v[1][src] + v[2][src] < 0.0 { -1.0 } else { 1.0 };
        for c in 0..3 {
            vecs[c][dst] = sign * v[c][src];
        }
    }
    (vals, vecs)
}

/// Whether `x` can be a mean (or standard deviation) of R, G or B in 0..255 units: the rule
/// of `vgg train --mean` and of the values read back by [`DatasetStats::load`].
pub fn is_rgb_value(x: f64) -> bool {
    x.is_finite() && (0.0..=255.0).contains(&x)
}

/// What `vgg stats` measures and writes as JSON; the trainer reads it back with [`DatasetStats::load`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Images measured.
    pub images: usize,
    /// Images skipped as unreadable.
    pub skipped: usize,
    /// Each image was first rescaled so that its shorter side is this (0: native size).
    pub size: u32,
    /// Mean of R, G, B over all pixels, 0..255 units.
    pub mean: [f64; 3],
    /// Standard deviation of R, G, B over all pixels, 0..255 units.
    pub std: [f64; 3],
    /// RGB covariance in 0..1 units.
    pub cov: [[f64; 3]; 3],
    /// The covariance's principal components (the colour shift's basis).
    pub pca: Pca,
    /// The dataset's class names, in class-index order.
    pub classes: Vec<String>,
}

impl DatasetStats {
    /// Mean subtraction only, the paper's preprocessing.
    pub fn norm(&self) -> InputNorm {
        InputNorm { mean: self.mean.map(|m| m as f32), std: None }
    }

    /// Reads a `vgg stats` JSON file; an unreadable file, bad JSON or values `vgg stats` never
    /// writes (a mean or std outside 0..255, a bad PCA) are a [`DataError::Io`] naming it.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let io = |e: &dyn std::fmt::Display| DataError::Io { path: path.to_path_buf(), reason: e.to_string() };
        let text = std::fs::read_to_string(path).map_err(|e| io(&e))?;
        let st: Self = serde_json::from_str(&text).map_err(|e| io(&e))?;
        st.check().map_err(|e| io(&e))?;
        Ok(st)
    }

    /// Errors for values `vgg stats` never writes (as `--mean`'s check): training would
    /// subtract the mean and scale the colour shift by them without a word (an edited file
    /// with a mean of 300 or a negative eigenvalue trained silently on nonsense).
    fn check(&self) -> Result<(), String> {
        let rgb = |v: &[f64; 3]| v.iter().all(|&x| is_rgb_value(x));
        if !rgb(&self.mean) {
            return Err(format!("mean {:?}: expected three values from 0 to 255", self.mean));
        }
        if !rgb(&self.std) {
            return Err(format!("std {:?}: expected three values from 0 to 255", self.std));
        }
        let pca = &self.pca;
        // A covariance of rank < 3 (grey images) has eigenvalues of 0 that the Jacobi
        // rotations may leave a rounding error below it.
        // The eigenvalues sum to the covariance's trace, the three channels' variances in 0..1
        // units, each at most 1/4 (half the pixels 0, half 1): at most 3/4 in all, which one
        // eigenvalue alone reaches for black-and-white images (R = G = B), so the bound is on
        // the sum, not 1/4 each. The margin covers f32 rounding of the written values.
        let sum: f32 = pca.eigval.iter().sum();
        if !(pca.eigval.iter().all(|v| v.is_finite() && *v >= -1e-6) && sum <= 0.75 + 1e-4) {
            return Err(format!(
                "pca eigval {:?}: expected variances of RGB in 0..1 units (each at least 0, at most 0.75 in all)",
                pca.eigval
            ));
        }
        // The eigenvectors are the columns, of unit length: the shift's size is the alphas'
        // times the eigenvalues only then (the published ImageNet ones, rounded to 4 decimals,
        // are within 3e-5 of 1).
        for j in 0..3 {
            let len = (0..3).map(|c| (pca.eigvec[c][j] as f64).powi(2)).sum::<f64>().sqrt();
            if !(len.is_finite() && (len - 1.0).abs() <= 1e-3) {
                return Err(format!(
                    "pca eigvec {:?}: column {j} has length {len}, expected unit eigenvectors in the columns",
                    pca.eigvec
                ));
            }
        }
        Ok(())
    }
}

/// Pixel sums of one or more images: count, sum and sum of outer products (0..255).
#[derive(Clone, Copy, Default)]
struct Moments {
    n: f64,
    s: [f64; 3],
    ss: [[f64; 3]; 3],
}

impl Moments {
    fn add_pixels(&mut self, rgb: &[u8]) {
        // Integer sums per image are exact; f64 across images.
        let mut s = [0u64; 3];
        let mut ss = [[0u64; 3]; 3];
        for p in rgb.chunks_exact(3) {
            let v = [p[0] as u64, p[1] as u64, p[2] as u64];
            for i in 0..3 {
                s[i] += v[i];
                for j in i..3 {
                    ss[i][j] += v[i] * v[j];
                }
            }
        }
        self.n += (rgb.len() / 3) as f64;
        for i in 0..3 {
            self.s[i] += s[i] as f64;
            for j in i..3 {
                self.ss[i][j] += ss[i][j] as f64;
                self.ss[j][i] = self.ss[i][j];
            }
        }
    }

    fn merge(mut self, o: Moments) -> Moments {
        self.n += o.n;
        for i in 0..3 {
            self.s[i] += o.s[i];
            for j in 0..3 {
                self.ss[i][j] += o.ss[i][j];
            }
        }
        self
    }
}

/// The most pixels one rescaled image may have (twice a [`super::MAX_SIDE`] square).
const MAX_RESCALED_PIXELS: u64 = 2 * super::MAX_SIDE as u64 * super::MAX_SIDE as u64;

/// Mean RGB and colour PCA over `samples` images of `ds` (all when `samples` is 0 or at
/// least the dataset's size; otherwise a seeded random subset), each rescaled so that its
/// shorter side is `size` (0: native). Unreadable images are reported on stderr and
/// skipped, or fail the call when `strict`.
pub fn compute(
    ds: &dyn Dataset,
    samples: usize,
    size: u32,
    seed: u64,
    strict: bool,
) -> Result<DatasetStats, DataError> {
    super::check_side("--size", size)?;
    let n = ds.len();
    let mut idx =
        if samples == 0 || samples >= n { (0..n).collect() } else { shuffled(n, seed, 0)[..samples].to_vec() };
    idx.sort_unstable();
    let per: Vec<Result<Option<Moments>, DataError>> = idx
        .par_iter()
        .map(|&i| {
            let img = match ds.load(i) {
                Ok((img, _)) => img,
                Err(e) if !strict && e.is_per_image() => {
                    eprintln!("warning: skipped {e}");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let img = if size > 0 {
                let (w, h) = resize::rescaled_size(img.width(), img.height(), size);
                // An extreme aspect ratio would make a huge rescale (1x100000 at 256: 19 GB).
                if w as u64 * h as u64 > MAX_RESCALED_PIXELS {
                    let e = DataError::Image {
                        source_name: ds.describe(i),
                        reason: format!(
                            "{}x{} rescaled to {w}x{h}: more than {MAX_RESCALED_PIXELS} pixels",
                            img.width(),
                            img.height()
                        ),
                    };
                    if strict {
                        return Err(e);
                    }
                    eprintln!("warning: skipped {e}");
                    return Ok(None);
                }
                resize::resize(&img, w, h)
            } else {
                img
            };
            let mut m = Moments::default();
            m.add_pixels(img.as_raw());
            Ok(Some(m))
        })
        .collect();
    let mut total = Moments::default();
    let mut skipped = 0;
    for r in per {
        match r? {
            Some(m) => total = total.merge(m),
            None => skipped += 1,
        }
    }
    let images = idx.len() - skipped;
    if images == 0 {
        return Err(DataError::NoImage { skipped });
    }
    Ok(stats_from_moments(&total, images, skipped, size, ds.classes().to_vec()))
}

fn stats_from_moments(m: &Moments, images: usize, skipped: usize, size: u32, classes: Vec<String>) -> DatasetStats {
    let mean = m.s.map(|s| s / m.n);
    let mut cov = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            cov[i][j] = (m.ss[i][j] / m.n - mean[i] * mean[j]) / (255.0 * 255.0);
        }
    }
    let std = [0, 1, 2].map(|i| (cov[i][i].max(0.0)).sqrt() * 255.0);
    DatasetStats { images, skipped, size, mean, std, cov, pca: Pca::from_covariance(cov), classes }
}

/// Stats of raw RGB pixel bytes (for tests and callers with pixels in hand).
pub fn of_pixels(rgb: &[u8]) -> DatasetStats {
    let mut m = Moments::default();
    m.add_pixels(rgb);
    stats_from_moments(&m, 1, 0, 0, vec![])
}
