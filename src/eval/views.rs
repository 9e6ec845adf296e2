//! The views of an image: each scale's centre crop, [`GRID`] x [`GRID`] grid of crops or
//! whole-image rescale for dense evaluation, planned as data-pipeline [`Plan`]s ([`views`],
//! [`dense_views`]) and rendered to the pixels the models score ([`render_views`]). Host work
//! apart from the models: a view depends only on the image, the scale Q and the input side.

use crate::data::{resize, Plan, TestTransform, Transform, Worker};
use anyhow::{bail, Result};
use serde::Serialize;

/// Side of the multi-crop grid (5x5 crops a scale, each also flipped: 50 views).
pub const GRID: usize = 5;

/// How the crops of one scale are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crops {
    /// The centre crop (plus its mirror image with flips).
    Center,
    /// A [`GRID`] x [`GRID`] regular grid of crops, each also flipped.
    Multi,
    /// Dense evaluation of the whole image and its mirror image (no crops).
    Dense,
    /// The average of the dense and the multi-crop posteriors.
    Both,
}

impl Crops {
    /// A `--crops` value: `center` (or `centre`), `multi`, `dense` or `both`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "center" | "centre" => Crops::Center,
            "multi" => Crops::Multi,
            "dense" => Crops::Dense,
            "both" => Crops::Both,
            _ => bail!("unknown --crops `{s}` (center, multi, dense, both)"),
        })
    }

    /// The views of a scale in words (`flip`: the centre crop's mirror image too).
    pub fn describe(self, flip: bool) -> &'static str {
        match (self, flip) {
            (Crops::Center, false) => "centre crop",
            (Crops::Center, true) => "centre crop + flip",
            (Crops::Multi, _) => "5x5 crops x 2 flips",
            (Crops::Dense, _) => "dense (+ flip)",
            (Crops::Both, _) => "dense (+ flip) and 5x5 crops x 2 flips",
        }
    }
}

/// `n` offsets of a `crop`-wide window over `extent` pixels, evenly spaced from 0 to
/// `extent - crop` (both ends included; rounded to the nearest pixel, halves up). With `n`
/// odd, the middle offset is `extent - crop` halved with halves rounded up, which is not
/// always the centre crop's offset (torchvision's rounding, half to even): they differ by a
/// pixel when `(extent - crop) % 4 == 1`, e.g. 341 wide, crop 224: grid middle 59, centre 58.
/// (`n` = 1 rounds down.)
pub fn grid_offsets(extent: u32, crop: u32, n: usize) -> Vec<u32> {
    let span = extent.saturating_sub(crop) as u64;
    match n {
        0 => vec![],
        1 => vec![(span / 2) as u32],
        _ => (0..n as u64).map(|i| ((2 * i * span + (n as u64 - 1)) / (2 * (n as u64 - 1))) as u32).collect(),
    }
}

/// The top-left corners `(x, y)` of the `n` x `n` regular grid of `crop` x `crop` windows
/// over a `w` x `h` image, row by row.
pub fn crop_grid(w: u32, h: u32, crop: u32, n: usize) -> Vec<(u32, u32)> {
    let (xs, ys) = (grid_offsets(w, crop, n), grid_offsets(h, crop, n));
    ys.iter().flat_map(|&y| xs.iter().map(move |&x| (x, y))).collect()
}

/// The whole-image rescales of a `w` x `h` image at the scales `qs` that dense evaluation
/// scores (each also mirrored by [`dense::dense_posterior`]); none unless `crops` is
/// [`Crops::Dense`] or [`Crops::Both`].
///
/// [`dense::dense_posterior`]: super::dense::dense_posterior
pub fn dense_views(w: u32, h: u32, qs: &[u32], crops: Crops) -> Result<Vec<Plan>, String> {
    if !matches!(crops, Crops::Dense | Crops::Both) {
        return Ok(vec![]);
    }
    qs.iter()
        .map(|&q| {
            Transform::Test(TestTransform { scale: q, crop: None }).plan(w, h, &mut crate::data::SampleRng::new(0))
        })
        .collect()
}

/// The crop views of a `w` x `h` image at the scales `qs`, for `crop` x `crop` inputs
/// (none for [`Crops::Dense`]; the multi-crop grid for [`Crops::Both`]).
pub fn views(w: u32, h: u32, qs: &[u32], crop: u32, crops: Crops, flip: bool) -> Result<Vec<Plan>, String> {
    let mut out = vec![];
    for &q in qs {
        match crops {
            Crops::Center => {
                let t = Transform::Test(TestTransform { scale: q, crop: Some(crop) });
                let p = t.plan(w, h, &mut crate::data::SampleRng::new(0))?;
                out.push(p);
                if flip {
                    out.push(Plan { flip: true, ..p });
                }
            }
            Crops::Dense => {}
            Crops::Multi | Crops::Both => {
                if w == 0 || h == 0 {
                    return Err(format!("image of {w}x{h} pixels"));
                }
                let (rw, rh) = resize::rescaled_size(w, h, q.max(crop));
                for (x, y) in crop_grid(rw, rh, crop, GRID) {
                    for f in [false, true] {
                        out.push(Plan { rescaled: (rw, rh), window: (x, y, crop, crop), flip: f, shift: None });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// How many crop views [`views`] makes of each scale: the centre crop (and its mirror image
/// with `flip`), the [`GRID`] x [`GRID`] grid x 2 flips, or none for dense evaluation
/// (which does not depend on the image's size, so `vgg eval` can size its batches first).
pub fn views_per_scale(crops: Crops, flip: bool) -> usize {
    match crops {
        Crops::Center => 1 + flip as usize,
        Crops::Multi | Crops::Both => 2 * GRID * GRID,
        Crops::Dense => 0,
    }
}

/// Why an image was not scored.
#[derive(Debug)]
pub(super) enum Unscored {
    /// It could not be read or decoded, or has no pixels.
    Unreadable(String),
    /// Dense evaluation cannot take it: its rescale's longer side is above
    /// 8 x Q (`MAX_DENSE_ASPECT`).
    TooWide(String),
}

impl std::fmt::Display for Unscored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unscored::Unreadable(e) | Unscored::TooWide(e) => f.write_str(e),
        }
    }
}

/// `img`'s views at the scales `qs` for a network of `input` pixels: its crop views' pixels
/// (concatenated) and its dense views with their pixels.
pub(super) fn render_views(
    img: &image::RgbImage,
    qs: &[u32],
    input: u32,
    crops: Crops,
    flip: bool,
) -> Result<RenderedViews, Unscored> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Unscored::Unreadable(format!("image of {w}x{h} pixels")));
    }
    let plans = views(w, h, qs, input, crops, flip).map_err(Unscored::Unreadable)?;
    // With pixels and a valid Q, the whole-image plan's only error is the aspect limit.
    let dense = dense_views(w, h, qs, crops).map_err(Unscored::TooWide)?;
    Ok((render(img, &plans), dense.into_iter().map(|p| (p, render(img, &[p]))).collect()))
}

/// Crop views' pixels and dense views with theirs, as [`render_views`] makes them.
type RenderedViews = (Vec<u8>, Vec<(Plan, Vec<u8>)>);

/// Applies `plans` to `img`: the views' pixels, concatenated.
fn render(img: &image::RgbImage, plans: &[Plan]) -> Vec<u8> {
    let mut w = Worker::default();
    let mut out = vec![];
    for p in plans {
        w.apply(img, p, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_offsets_span_the_image() {
        assert_eq!(grid_offsets(256, 224, 5), vec![0, 8, 16, 24, 32]);
        assert_eq!(grid_offsets(224, 224, 5), vec![0; 5]);
        assert_eq!(grid_offsets(300, 224, 1), vec![38]);
        assert_eq!(grid_offsets(10, 4, 4), vec![0, 2, 4, 6]);
        assert_eq!(grid_offsets(9, 4, 3), vec![0, 3, 5]);
    }

    #[test]
    fn views_per_scale_counts_what_views_makes() {
        for crops in [Crops::Center, Crops::Multi, Crops::Dense, Crops::Both] {
            for flip in [false, true] {
                let n = views(300, 260, &[256, 288], 224, crops, flip).unwrap().len();
                assert_eq!(n, 2 * views_per_scale(crops, flip), "{crops:?} flip {flip}");
            }
        }
    }

    #[test]
    fn crop_grid_is_row_major() {
        let g = crop_grid(292, 256, 224, 5);
        assert_eq!(g.len(), 25);
        assert_eq!(g[0], (0, 0));
        assert_eq!(g[4], (68, 0));
        assert_eq!(g[5], (0, 8));
        assert_eq!(g[24], (68, 32));
    }
}
