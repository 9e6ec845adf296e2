//! A procedural dataset that needs no download: each class is a shape (disc, square,
//! triangle, stripes, checkerboard, ring, cross, diamond, ...) drawn at a random place,
//! size and colour over a noisy two-colour gradient. With more classes than shapes, the
//! shapes repeat in separate hue bands, so colour becomes part of the class. A small VGG
//! learns it in a few epochs; every image is a pure function of (seed, index).

use image::{Rgb, RgbImage};

use super::{DataError, Dataset, SampleRng};

const SHAPES: [&str; 10] =
    ["disc", "square", "triangle", "hstripes", "vstripes", "checker", "ring", "cross", "diagstripes", "diamond"];

/// `len` images of `classes` classes; image `i` has class `i % classes`. Images are
/// `size` pixels on their shorter side and up to a quarter longer on the other.
#[derive(Clone, Debug)]
pub struct Synthetic {
    classes: Vec<String>,
    size: u32,
    len: usize,
    seed: u64,
    square: bool,
}

impl Synthetic {
    /// `len` images of `classes` classes (at least 1), `size` pixels (at least 1) on the
    /// shorter side, drawn from `seed`. Classes are named after their shape (`disc`,
    /// `square`, ...; `disc-1`, ... once the shapes repeat).
    pub fn new(classes: usize, size: u32, len: usize, seed: u64) -> Self {
        let classes = (0..classes.max(1))
            .map(|c| match c / SHAPES.len() {
                0 => SHAPES[c].to_string(),
                g => format!("{}-{g}", SHAPES[c % SHAPES.len()]),
            })
            .collect();
        Self { classes, size: size.max(1), len, seed, square: false }
    }

    /// Every image exactly `size` x `size`.
    pub fn square(mut self) -> Self {
        self.square = true;
        self
    }

    /// Width and height of image `i` (without drawing it).
    pub fn dims(&self, i: usize) -> (u32, u32) {
        self.layout(i).0
    }

    fn layout(&self, i: usize) -> ((u32, u32), SampleRng) {
        let mut rng = SampleRng::for_sample(self.seed, 0x5e1f_da7a, i as u64);
        let s = self.size;
        let extra = if self.square { 0 } else { rng.range(0, s / 4) };
        let dims = if rng.coin() { (s + extra, s) } else { (s, s + extra) };
        (dims, rng)
    }

    fn render(&self, i: usize) -> RgbImage {
        let ((w, h), mut rng) = self.layout(i);
        let nclass = self.classes.len();
        let class = i % nclass;
        let shape = class % SHAPES.len();
        let groups = nclass.div_ceil(SHAPES.len());
        let hue = if groups == 1 {
            rng.uniform()
        } else {
            ((class / SHAPES.len()) as f64 + 0.35 * (rng.uniform() - 0.5)) / groups as f64
        };
        let fg = hsv(hue, 0.55 + 0.45 * rng.uniform(), 0.55 + 0.45 * rng.uniform());
        let bg0 = hsv(rng.uniform(), 0.3 * rng.uniform(), 0.15 + 0.3 * rng.uniform());
        let bg1 = hsv(rng.uniform(), 0.3 * rng.uniform(), 0.15 + 0.3 * rng.uniform());
        let m = w.min(h) as f64;
        let r = m * (0.22 + 0.16 * rng.uniform());
        let cx = r + (w as f64 - 2.0 * r) * rng.uniform();
        let cy = r + (h as f64 - 2.0 * r) * rng.uniform();
        let period = 2.0 / (2 * rng.range(2, 4) + 1) as f64;
        let anti = rng.coin();
        let noise_seed = rng.next_u64();
        let parity = |t: f64| ((t + 1.0) / period).floor() as i64 % 2 == 0;
        RgbImage::from_fn(w, h, |x, y| {
            let u = (x as f64 + 0.5 - cx) / r;
            let v = (y as f64 + 0.5 - cy) / r;
            let boxed = u.abs().max(v.abs()) <= 1.0;
            let inside = match shape {
                0 => u * u + v * v <= 1.0,
                1 => u.abs().max(v.abs()) <= 0.85,
                2 => (-0.8..=0.8).contains(&v) && u.abs() <= (v + 0.8) / 1.6 * 0.95,
                3 => boxed && parity(v),
                4 => boxed && parity(u),
                5 => boxed && (parity(u) ^ parity(v)),
                6 => (0.55..=1.0).contains(&(u * u + v * v).sqrt()),
                7 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
                8 => boxed && parity((if anti { u - v } else { u + v }) * 0.5),
                _ => u.abs() + v.abs() <= 1.0,
            };
            let t = (x + y) as f64 / (w + h) as f64;
            let base = if inside { fg } else { [0, 1, 2].map(|c| bg0[c] * (1.0 - t) + bg1[c] * t) };
            let mut n = SampleRng::for_sample(noise_seed, y as u64, x as u64).next_u64();
            Rgb([0, 1, 2].map(|c| {
                let jitter = (n & 15) as f64 - 7.5;
                n >>= 8;
                (base[c] * 255.0 + jitter).round().clamp(0.0, 255.0) as u8
            }))
        })
    }
}

/// HSV (all in 0..1) to RGB in 0..1.
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h6 as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        if i >= self.len {
            return Err(DataError::Index { index: i, len: self.len });
        }
        Ok((self.render(i), i % self.classes.len()))
    }

    fn describe(&self, i: usize) -> String {
        format!("synthetic image {i} (seed {})", self.seed)
    }
}
