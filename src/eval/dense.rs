//! Dense evaluation (Section 3.2): the FC layers applied as convolutions over the whole
//! rescaled image.
//!
//! The conv stack runs at the image's own `H x W` (a feature-only runner over the same ops
//! as [`Vgg::forward`], with the model's fp16 weights). The first FC layer becomes a
//! `th x tw` convolution, where `th x tw` is the final feature map of the training input
//! (7x7 at 224, 1x1 at 32), and the last two FC layers become 1x1 convolutions, all with the
//! trained weights as they are: the first FC's columns are stored in HWC order
//! (`(y*tw + x)*C + c`, see [`crate::model::params`]), which is exactly the order of a
//! `th x tw` window of the NHWC feature map flattened row by row. So the windows are
//! gathered into rows on the device ([`ops::dense_gather()`], an im2col) and the three layers
//! run as [`ops::linear_fwd`] GEMMs over all positions.
//!
//! The score map has `(fh - th + 1) x (fw - tw + 1)` positions for a final map of
//! `fh x fw`. As the paper does, the class scores (logits) are spatially averaged to one
//! vector (in f64 on the host) before the softmax; then the posteriors of the image and of its
//! horizontal flip, which run together as a batch of two, are averaged. (Averaging the
//! positions' posteriors instead is another estimator: it weighs a position's confident
//! vote less than its scores do.)
//!
//! Limitation: buffers are allocated per call (image sizes vary).

use crate::model::{FeatureKind, Vgg};
use crate::ops::conv::{ConvPass, Epilogue};
use crate::ops::gemm::{Linear, Pass};
use crate::ops::{self, LrnParams};
use crate::problem::ConvProblem;
use crate::{ensure_shape, Result, Tensor};
use half::f16;

/// The class scores of every position of a dense evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreMap {
    /// Images.
    pub n: usize,
    /// Score-map rows ([`score_map_size`]).
    pub h: usize,
    /// Score-map columns.
    pub w: usize,
    /// Logits, `[n][h][w][classes]`.
    pub logits: Vec<f32>,
}

/// The score-map size of an `h x w` input to a network trained at `input` pixels with
/// `pools` 2x2 pools: `(h / 2^pools - input / 2^pools + 1)` per side (each pool floors),
/// or `None` when the image is smaller than the training input.
pub fn score_map_size(h: usize, w: usize, input: usize, pools: u32) -> Option<(usize, usize)> {
    let f = |s: usize| (0..pools).fold(s, |s, _| s / 2);
    let t = f(input);
    let (fh, fw) = (f(h), f(w));
    (t >= 1 && fh >= t && fw >= t).then(|| (fh - t + 1, fw - t + 1))
}

/// Runs `vgg`'s network densely over `images` (`[n, h, w, 3]` u8 NHWC, any `h, w` at least
/// the training input): the class-score logits of every position.
/// `vgg`'s own buffers are not touched.
pub fn dense_logits(vgg: &Vgg, images: &Tensor<u8>) -> Result<ScoreMap> {
    let cfg = vgg.config();
    let dev = vgg.device().clone();
    let s = images.shape();
    ensure_shape!(s.len() == 4 && s[3] == 3, "dense eval: images must be [n, h, w, 3] u8 NHWC, got {s:?}");
    let (n, h, w) = (s[0], s[1], s[2]);
    let feats = cfg.features();
    let pools = feats.iter().filter(|f| f.kind == FeatureKind::Pool).count() as u32;
    let Some((oh, ow)) = score_map_size(h, w, cfg.input, pools) else {
        return Err(crate::Error::Shape(format!(
            "dense eval: a {h}x{w} image is smaller than the network's {0}x{0} input",
            cfg.input
        )));
    };
    let params = vgg.params();
    let mut x = Tensor::<f16>::zeros(&dev, &[n, h, w, 3])?;
    ops::normalize_input(images, None, &cfg.norm(), &mut x)?;
    let (mut ch, mut cw) = (h, w);
    let mut j = 0;
    let mut ws = Tensor::<u8>::zeros(&dev, &[16])?;
    let grow = |ws: &mut Tensor<u8>, bytes: usize| -> Result<()> {
        if bytes > ws.len() {
            *ws = Tensor::<u8>::zeros(&dev, &[bytes])?;
        }
        Ok(())
    };
    for f in &feats {
        let (yh, yw) = if f.kind == FeatureKind::Pool { (ch / 2, cw / 2) } else { (ch, cw) };
        let mut y = Tensor::<f16>::zeros(&dev, &[n, yh, yw, f.c_out])?;
        match f.kind {
            FeatureKind::Conv3x3 => {
                let p = ConvProblem::new(n, ch, cw, f.c_in, f.c_out);
                // As `Vgg::new` plans it, fitted to the device's shared memory.
                let conv = crate::model::memory::conv3x3_plan(p)?.fitted_to(&dev);
                grow(&mut ws, conv.workspace_bytes(ConvPass::Fprop))?;
                conv.fprop(&x, &params[j].h, Some(&params[j + 1].h), Epilogue::BiasRelu, &mut y, &mut ws)?;
                j += 2;
            }
            FeatureKind::Conv1x1 => {
                grow(&mut ws, Linear::conv1x1(n, ch, cw, f.c_in, f.c_out).workspace_bytes(Pass::Fwd))?;
                ops::conv1x1_fwd(&x, &params[j].h, Some(&params[j + 1].h), true, &mut y, Some(&mut ws))?;
                j += 2;
            }
            FeatureKind::Lrn => ops::lrn_fwd(&x, &mut y, &LrnParams::ALEXNET)?,
            FeatureKind::Pool => ops::maxpool2x2_fwd(&x, &mut y)?,
        }
        x = y;
        (ch, cw) = (yh, yw);
    }
    // fc6 as a th x tw conv over the windows, gathered on the device in HWC order (the
    // first FC's column order).
    let (th, tw, _) = cfg.feature_out();
    let mut cols = Tensor::<f16>::empty(&dev, &ops::dense_gather_shape(x.shape(), th, tw)?)?;
    ops::dense_gather(&x, th, tw, &mut cols)?;
    let m = cols.shape()[0];
    debug_assert_eq!(m, n * oh * ow, "the gathered windows are the score map's positions");
    let [c0, c1, c2] = cfg.classifier();
    let fc = params.len() - 6;
    let mut a = Tensor::<f16>::zeros(&dev, &[m, c0.1])?;
    let mut b = Tensor::<f16>::zeros(&dev, &[m, c1.1])?;
    let mut logits = Tensor::<f16>::zeros(&dev, &[m, c2.1])?;
    for l in [Linear::new(m, c0.0, c0.1), Linear::new(m, c1.0, c1.1), Linear::new(m, c2.0, c2.1)] {
        grow(&mut ws, l.workspace_bytes(Pass::Fwd))?;
    }
    ops::linear_fwd(&cols, &params[fc].h, Some(&params[fc + 1].h), true, &mut a, Some(&mut ws))?;
    ops::linear_fwd(&a, &params[fc + 2].h, Some(&params[fc + 3].h), true, &mut b, Some(&mut ws))?;
    ops::linear_fwd(&b, &params[fc + 4].h, Some(&params[fc + 5].h), false, &mut logits, Some(&mut ws))?;
    Ok(ScoreMap { n, h: oh, w: ow, logits: logits.to_f32()? })
}

/// Per image of `map`, the softmax of its positions' logits averaged (sum-pooled, in f64):
/// `n * classes` posteriors.
pub fn pooled_posteriors(map: &ScoreMap, classes: usize) -> Vec<f64> {
    let pos = map.h * map.w;
    let mut out = Vec::with_capacity(map.n * classes);
    for img in map.logits.chunks_exact(pos * classes) {
        let mut mean = vec![0f64; classes];
        for row in img.chunks_exact(classes) {
            mean.iter_mut().zip(row).for_each(|(m, &z)| *m += z as f64 / pos as f64);
        }
        out.extend(super::softmax64(&mean));
    }
    out
}

/// `w x h` RGB pixels mirrored left to right.
pub fn flip_rgb(pixels: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len());
    for y in 0..h {
        for x in (0..w).rev() {
            out.extend_from_slice(&pixels[(y * w + x) * 3..][..3]);
        }
    }
    out
}

/// The dense posterior of one `w x h` image (RGB bytes) under `vgg`: the posteriors of the
/// image's and its mirror image's spatially averaged scores, averaged.
pub fn dense_posterior(vgg: &Vgg, pixels: &[u8], w: usize, h: usize) -> Result<Vec<f64>> {
    let k = vgg.config().classes;
    let mut both = pixels.to_vec();
    both.extend(flip_rgb(pixels, w, h));
    let images = Tensor::<u8>::from_host(vgg.device(), &[2, h, w, 3], &both)?;
    let post = pooled_posteriors(&dense_logits(vgg, &images)?, k);
    Ok((0..k).map(|c| 0.5 * (post[c] + post[k + c])).collect())
}
