//! The paper's transforms, per image: decoded RGB in, u8 HWC pixels out.
//!
//! Training (Section 3.1): isotropic rescale so that the shorter side is S (fixed, or drawn
//! per image from [Smin, Smax]), a random `crop` x `crop` window, a random horizontal flip,
//! AlexNet's PCA colour shift. Test (Section 3.2): rescale to Q, then the centre crop or
//! the whole image (dense evaluation). The crop is taken from the rescale without
//! computing the rest of it ([`resize::resize_window`]). Mean subtraction is not here: it
//! runs on the GPU ([`crate::ops::normalize_input`]).
//!
//! Random draws, in this order from the sample's [`SampleRng`]: S, crop x, crop y, flip,
//! the three colour-shift alphas.

use std::time::{Duration, Instant};

use image::RgbImage;

use super::{check_side, resize, DataError, Dataset, Pca, SampleRng};

/// The training scale S: the shorter side after isotropic rescaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// The same S for every image (`256`).
    Fixed(u32),
    /// Drawn per image uniformly from `lo..=hi` (the paper's scale jittering: 256, 512).
    Jitter(u32, u32),
}

impl Scale {
    /// The S of one image: the fixed one, or a uniform draw from the jitter range (one draw
    /// of `rng` only when jittering).
    pub fn draw(&self, rng: &mut SampleRng) -> u32 {
        match *self {
            Scale::Fixed(s) => s,
            Scale::Jitter(..) => {
                let (lo, hi) = self.range();
                rng.range(lo, hi)
            }
        }
    }

    /// `256` or `256:512`.
    pub fn parse(s: &str) -> Result<Scale, DataError> {
        let num = |t: &str| {
            t.trim().parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                DataError::Config(format!("scale `{s}`: expected a positive size or MIN:MAX, like 256 or 256:512"))
            })
        };
        match s.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(DataError::Config(format!("scale `{s}`: min above max")));
                }
                Ok(if a == b { Scale::Fixed(a) } else { Scale::Jitter(a, b) })
            }
            None => Ok(Scale::Fixed(num(s)?)),
        }
    }

    /// The smallest and the largest S it draws.
    pub fn range(&self) -> (u32, u32) {
        match *self {
            Scale::Fixed(s) => (s, s),
            Scale::Jitter(a, b) => (a.min(b), a.max(b)),
        }
    }

    /// The single-scale test Q the paper pairs with it: S, or (Smin + Smax) / 2.
    pub fn test_q(&self) -> u32 {
        match *self {
            Scale::Fixed(s) => s,
            Scale::Jitter(lo, hi) => (lo + hi) / 2,
        }
    }
}

/// Training-time augmentation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainTransform {
    /// S: the shorter side after isotropic rescaling, fixed or jittered.
    pub scale: Scale,
    /// Side of the square random crop (224 in the paper). A rescale smaller than the crop
    /// is raised to the crop's size.
    pub crop: u32,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// AlexNet's PCA colour shift: per image, alphas drawn from N(0, `color_std`).
    pub color_shift: Option<Pca>,
    /// The alphas' standard deviation (0.1 in AlexNet).
    pub color_std: f32,
}

impl TrainTransform {
    /// The paper's augmentation at scale `scale`: 224 crops, flips, the ImageNet PCA shift.
    pub fn paper(scale: Scale) -> Self {
        Self { scale, crop: 224, flip: true, color_shift: Some(Pca::IMAGENET), color_std: 0.1 }
    }
}

/// Evaluation-time preprocessing (deterministic).
#[derive(Clone, Debug, PartialEq)]
pub struct TestTransform {
    /// Q: the shorter side after isotropic rescaling.
    pub scale: u32,
    /// `Some(c)`: the centre `c` x `c` crop (torchvision's `CenterCrop`; Q below c is
    /// raised to c). `None`: the whole rescaled image, for dense evaluation; its size
    /// varies, so a loader batch holds one image.
    pub crop: Option<u32>,
}

/// What the loader applies: training augmentation or test preprocessing.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Random rescale, crop, flip and colour shift.
    Train(TrainTransform),
    /// Deterministic rescale to Q, then a centre crop or the whole image.
    Test(TestTransform),
}

impl From<TrainTransform> for Transform {
    fn from(t: TrainTransform) -> Self {
        Transform::Train(t)
    }
}

impl From<TestTransform> for Transform {
    fn from(t: TestTransform) -> Self {
        Transform::Test(t)
    }
}

/// Everything decided for one image: the rescaled size, the window, flip and shift.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// The rescaled image's size (shorter side S or Q).
    pub rescaled: (u32, u32),
    /// The window of the rescaled image that is kept: x, y, width, height.
    pub window: (u32, u32, u32, u32),
    /// Mirror the window left-right.
    pub flip: bool,
    /// Added to R, G, B (0..255 units) before rounding.
    pub shift: Option<[f32; 3]>,
}

/// The longest side a whole-image (dense) test rescale may have, as a multiple of Q.
pub const MAX_DENSE_ASPECT: u32 = 8;

/// Python's `round` (half to even) of `d / 2`: torchvision's `CenterCrop` offset.
fn centre_offset(d: u32) -> u32 {
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

impl Transform {
    /// The side of the square images it outputs (`None`: whole images, sizes vary).
    pub fn output_size(&self) -> Option<u32> {
        match self {
            Transform::Train(t) => Some(t.crop),
            Transform::Test(t) => t.crop,
        }
    }

    /// One line for reports, e.g. "train: S 256..512, crop 224, flip, PCA colour shift 0.1".
    pub fn describe(&self) -> String {
        match self {
            Transform::Train(t) => {
                let s = match t.scale {
                    Scale::Fixed(s) => format!("S {s}"),
                    Scale::Jitter(a, b) => format!("S {a}..{b}"),
                };
                let flip = if t.flip { ", flip" } else { "" };
                let colour = match t.color_shift {
                    Some(_) => format!(", PCA colour shift {}", t.color_std),
                    None => String::new(),
                };
                format!("train: {s}, crop {}{flip}{colour}", t.crop)
            }
            Transform::Test(t) => match t.crop {
                Some(c) => format!("test: Q {}, centre crop {c}", t.scale),
                None => format!("test: Q {}, whole image", t.scale),
            },
        }
    }

    /// A [`DataError::Config`] for settings no image can use: a crop, S or Q of 0, a
    /// colour-shift std that is negative or not finite, or a side above [`MAX_SIDE`](super::MAX_SIDE).
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |m: &str| Err(DataError::Config(m.into()));
        match self {
            Transform::Train(t) => {
                if t.crop == 0 {
                    return bad("crop size 0");
                }
                if matches!(t.scale, Scale::Fixed(0) | Scale::Jitter(0, _)) {
                    return bad("scale S of 0");
                }
                if !(t.color_std.is_finite() && t.color_std >= 0.0) {
                    return bad("colour-shift std must be finite and non-negative");
                }
                check_side("scale S", t.scale.range().1)?;
                check_side("crop", t.crop)?;
            }
            Transform::Test(t) => {
                if t.scale == 0 || t.crop == Some(0) {
                    return bad("test scale Q or crop of 0");
                }
                check_side("test scale Q", t.scale)?;
                check_side("crop", t.crop.unwrap_or(0))?;
            }
        }
        Ok(())
    }

    /// Decides the rescale, window, flip and shift of a `w` x `h` image.
    pub fn plan(&self, w: u32, h: u32, rng: &mut SampleRng) -> Result<Plan, String> {
        if w == 0 || h == 0 {
            return Err(format!("image of {w}x{h} pixels"));
        }
        match self {
            Transform::Train(t) => {
                let s = t.scale.draw(rng).max(t.crop);
                let (rw, rh) = resize::rescaled_size(w, h, s);
                let x0 = rng.range(0, rw - t.crop);
                let y0 = rng.range(0, rh - t.crop);
                let flip = rng.coin() && t.flip;
                let shift = t.color_shift.map(|pca| {
                    let std = t.color_std as f64;
                    let alpha = [rng.normal() * std, rng.normal() * std, rng.normal() * std];
                    pca.shift(alpha)
                });
                Ok(Plan { rescaled: (rw, rh), window: (x0, y0, t.crop, t.crop), flip, shift })
            }
            Transform::Test(t) => match t.crop {
                Some(c) => {
                    let (rw, rh) = resize::rescaled_size(w, h, t.scale.max(c));
                    let window = (centre_offset(rw - c), centre_offset(rh - c), c, c);
                    Ok(Plan { rescaled: (rw, rh), window, flip: false, shift: None })
                }
                None => {
                    let (rw, rh) = resize::rescaled_size(w, h, t.scale);
                    if rw.max(rh) > MAX_DENSE_ASPECT * t.scale {
                        return Err(format!(
                            "aspect ratio {w}x{h} too extreme for whole-image evaluation (rescaled {rw}x{rh}, \
                             limit {MAX_DENSE_ASPECT}x Q)"
                        ));
                    }
                    Ok(Plan { rescaled: (rw, rh), window: (0, 0, rw, rh), flip: false, shift: None })
                }
            },
        }
    }
}

/// Where a worker's time went, summed over the images it processed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Images processed (those that failed to load or to plan are not counted).
    pub images: usize,
    /// Reading and decoding (or, for [`super::Synthetic`], drawing).
    pub decode: Duration,
    /// The antialiased rescale of the crop window.
    pub resize: Duration,
    /// Flip, colour shift and the copy into the batch.
    pub finish: Duration,
}

impl StageTimes {
    /// Adds `o`'s images and times to these (to sum workers).
    pub fn add(&mut self, o: &StageTimes) {
        self.images += o.images;
        self.decode += o.decode;
        self.resize += o.resize;
        self.finish += o.finish;
    }
}

/// One thread's reusable buffers and timings.
#[derive(Default)]
pub struct Worker {
    scratch: Vec<f32>,
    window: Vec<u8>,
    /// Where this worker's time went so far.
    pub times: StageTimes,
}

/// One transformed image as placed in the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    pub label: usize,
    pub width: u32,
    pub height: u32,
    pub flip: bool,
}

impl Worker {
    /// Loads image `index` of `ds`, transforms it with the draws of (seed, epoch, index),
    /// and appends its `height * width * 3` bytes (HWC RGB) to `out`.
    pub fn process(
        &mut self,
        ds: &dyn Dataset,
        t: &Transform,
        seed: u64,
        epoch: u64,
        index: usize,
        out: &mut Vec<u8>,
    ) -> Result<Placed, DataError> {
        let t0 = Instant::now();
        let (img, label) = ds.load(index)?;
        let t1 = Instant::now();
        let mut rng = SampleRng::for_sample(seed, epoch, index as u64);
        let plan = t
            .plan(img.width(), img.height(), &mut rng)
            .map_err(|reason| DataError::Image { source_name: ds.describe(index), reason })?;
        self.times.decode += t1 - t0;
        self.times.images += 1;
        let placed = self.apply(&img, &plan, out);
        Ok(Placed { label, ..placed })
    }

    /// Applies `plan` to `img`, appending the result to `out`.
    pub fn apply(&mut self, img: &RgbImage, plan: &Plan, out: &mut Vec<u8>) -> Placed {
        let t0 = Instant::now();
        let (x0, y0, cw, ch) = plan.window;
        let n = cw as usize * ch as usize * 3;
        self.window.resize(n, 0);
        let win = resize::Window { out_w: plan.rescaled.0, out_h: plan.rescaled.1, x0, y0, cw, ch };
        resize::resize_window(img, win, &mut self.scratch, &mut self.window);
        let t1 = Instant::now();
        let at = out.len();
        out.resize(at + n, 0);
        let dst = &mut out[at..];
        let row = cw as usize * 3;
        // The shift is constant over the image: one 256-entry table per channel.
        let lut = plan.shift.map(|sh| {
            sh.map(|d| std::array::from_fn::<u8, 256, _>(|v| (v as f32 + d).round().clamp(0.0, 255.0) as u8))
        });
        for (drow, srow) in dst.chunks_exact_mut(row).zip(self.window.chunks_exact(row)) {
            if plan.flip {
                for (d, s) in drow.chunks_exact_mut(3).zip(srow.chunks_exact(3).rev()) {
                    d.copy_from_slice(s);
                }
            } else {
                drow.copy_from_slice(srow);
            }
            if let Some([r, g, b]) = &lut {
                for p in drow.chunks_exact_mut(3) {
                    p[0] = r[p[0] as usize];
                    p[1] = g[p[1] as usize];
                    p[2] = b[p[2] as usize];
                }
            }
        }
        let t2 = Instant::now();
        self.times.resize += t1 - t0;
        self.times.finish += t2 - t1;
        Placed { label: 0, width: cw, height: ch, flip: plan.flip }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_offset_is_pythons_round() {
        // round(d / 2) in Python 3: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4.
        let want = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (7, 4), (117, 58), (119, 60)];
        for (d, o) in want {
            assert_eq!(centre_offset(d), o, "d = {d}");
        }
    }

    #[test]
    fn scale_parse() {
        assert_eq!(Scale::parse("256").unwrap(), Scale::Fixed(256));
        assert_eq!(Scale::parse("256:512").unwrap(), Scale::Jitter(256, 512));
        assert_eq!(Scale::parse("384:384").unwrap(), Scale::Fixed(384));
        assert!(Scale::parse("512:256").unwrap_err().to_string().contains("scale `512:256`: min above max"));
        for bad in ["0", "abc", "256:"] {
            let e = Scale::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("scale `{bad}`: expected a positive size")), "{e}");
        }
        assert_eq!(Scale::Jitter(256, 512).test_q(), 384);
    }
}
