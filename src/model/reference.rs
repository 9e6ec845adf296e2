//! The host twin of [`super::Vgg`]: the same network composed from [`crate::reference`] ops
//! (f64 accumulation, f32 values), written as the plain chain rule (an explicit `relu_bwd`
//! after every conv, where the device fuses it into the next dgrad). Tests use it for
//! finite-difference gradient checks (`round16 = false`: a smooth function of the weights)
//! and for golden training steps (`round16 = true`: every activation and activation
//! gradient rounded to fp16 where the device stores fp16, so that only accumulation order
//! and Winograd's transform rounding separate the two). For the golden steps the backward
//! pass can also take its ReLU masks and max-pool argmaxes from the device's activations
//! (`route` in [`HostVgg::grads`]): the few-ulp differences that remain flip the odd decision
//! that sits on a near-tie, and each flip moves a whole gradient element elsewhere.
//!
//! Parameters are in the device layout, in [`super::Vgg::params`] order (KRSC filters,
//! `[out][in]` FC weights with the first FC's columns in HWC order).

use super::config::{FeatureKind, VggConfig};
use crate::problem::ConvProblem;
use crate::reference as r;
use crate::reference::LrnParams;

/// The forward pass's values, kept for the backward pass.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The normalised input, `[batch, input, input, 3]` NHWC.
    pub x: Vec<f32>,
    /// Each feature layer's output, NHWC, in [`VggConfig::features`] order.
    pub acts: Vec<Vec<f32>>,
    /// The first hidden FC layer's ReLU output, `[batch, fc]`.
    pub h1: Vec<f32>,
    /// `h1` after dropout (`h1` itself without it): the second FC layer's input.
    pub x2: Vec<f32>,
    /// The second hidden FC layer's ReLU output, `[batch, fc]`.
    pub h2: Vec<f32>,
    /// `h2` after dropout (`h2` itself without it): the last FC layer's input.
    pub x3: Vec<f32>,
    /// The logits, `[batch, classes]`.
    pub logits: Vec<f32>,
}

/// A host VGG of one config and batch size.
#[derive(Clone, Debug)]
pub struct HostVgg {
    /// The network.
    pub cfg: VggConfig,
    /// Images a forward pass takes.
    pub batch: usize,
    /// Round to fp16 wherever the device stores fp16.
    pub round16: bool,
    /// Dropout seeds of the two hidden FC layers ([`super::Vgg::dropout_seed`]).
    pub seeds: [u64; 2],
}

impl HostVgg {
    fn rnd(&self, v: Vec<f32>) -> Vec<f32> {
        if self.round16 {
            r::f32_to_f16_round(&v)
        } else {
            v
        }
    }

    /// Forward of `images` (u8 NHWC); `train` applies dropout with the masks of `step`.
    pub fn forward(&self, params: &[Vec<f32>], images: &[u8], train: bool, step: u64) -> Trace {
        let (n, s) = (self.batch, self.cfg.input);
        let x = self.rnd(r::normalize_input([n, s, s, 3], images, &self.cfg.norm(), None));
        let mut acts: Vec<Vec<f32>> = vec![];
        let mut j = 0;
        for f in self.cfg.features() {
            let input = acts.last().unwrap_or(&x);
            let y = match f.kind {
                FeatureKind::Conv3x3 => {
                    let p = ConvProblem::new(n, f.h, f.w, f.c_in, f.c_out);
                    let y = r::conv3x3_fprop(&p, input, &params[j], Some(&params[j + 1]), true);
                    j += 2;
                    y
                }
                FeatureKind::Conv1x1 => {
                    let y =
                        r::conv1x1_fprop(n * f.h * f.w, f.c_in, f.c_out, input, &params[j], Some(&params[j + 1]), true);
                    j += 2;
                    y
                }
                FeatureKind::Lrn => r::lrn_fwd(input, f.c_in, &LrnParams::ALEXNET),
                FeatureKind::Pool => r::maxpool2x2_fwd(n, f.h, f.w, f.c_in, input),
            };
            acts.push(self.rnd(y));
        }
        let c = self.cfg.classifier();
        let feat = acts.last().expect("features are never empty");
        let drop = train && self.cfg.dropout > 0.0;
        let pd = self.cfg.dropout;
        let h1 = self.rnd(r::linear_fwd(n, c[0].0, c[0].1, feat, &params[j], Some(&params[j + 1]), true));
        let x2 = if drop { self.rnd(r::dropout_fwd(&h1, self.seeds[0], step, pd)) } else { h1.clone() };
        let h2 = self.rnd(r::linear_fwd(n, c[1].0, c[1].1, &x2, &params[j + 2], Some(&params[j + 3]), true));
        let x3 = if drop { self.rnd(r::dropout_fwd(&h2, self.seeds[1], step, pd)) } else { h2.clone() };
        let logits = self.rnd(r::linear_fwd(n, c[2].0, c[2].1, &x3, &params[j + 4], Some(&params[j + 5]), false));
        Trace { x, acts, h1, x2, h2, x3, logits }
    }

    /// Mean cross-entropy of the training forward pass (dropout of `step`).
    pub fn loss(&self, params: &[Vec<f32>], images: &[u8], labels: &[i32], step: u64) -> f64 {
        let t = self.forward(params, images, true, step);
        r::softmax_xent_fwd(self.batch, self.cfg.classes, &t.logits, labels).0
    }

    /// `(loss, gradients)`: the gradients of `loss_scale * loss` (as the device's fp32 `g`),
    /// parameter order, device layout. With `route` (the device's activations,
    /// [`super::Vgg::trace`]) every ReLU mask and max-pool argmax of the backward pass is
    /// decided by those rather than by this host forward; every value still comes from the
    /// host forward.
    pub fn grads(
        &self,
        params: &[Vec<f32>],
        images: &[u8],
        labels: &[i32],
        step: u64,
        loss_scale: f32,
        route: Option<&Trace>,
    ) -> (f64, Vec<Vec<f32>>) {
        let t = self.forward(params, images, true, step);
        self.backward(params, &t, route.unwrap_or(&t), labels, step, loss_scale)
    }

    /// The backward pass over the values of `t`, with ReLU masks and pool argmaxes from `route`.
    fn backward(
        &self,
        params: &[Vec<f32>],
        t: &Trace,
        route: &Trace,
        labels: &[i32],
        step: u64,
        loss_scale: f32,
    ) -> (f64, Vec<Vec<f32>>) {
        let (n, k) = (self.batch, self.cfg.classes);
        let loss = r::softmax_xent_fwd(n, k, &t.logits, labels).0;
        let dz: Vec<f32> = r::softmax_xent_bwd(n, k, &t.logits, labels).iter().map(|v| v * loss_scale).collect();
        let mut dy = self.rnd(dz);
        let mut g: Vec<Vec<f32>> = vec![vec![]; params.len()];
        let c = self.cfg.classifier();
        let fc = params.len() - 6;
        let drop = self.cfg.dropout > 0.0;
        let pd = self.cfg.dropout;
        let layers = [(&t.x3, &route.h2, 1), (&t.x2, &route.h1, 0)];
        for (li, (x_in, h_prev, seed)) in layers.into_iter().enumerate() {
            let (fi, fo) = c[2 - li];
            let wj = fc + 4 - 2 * li;
            let (dw, db) = r::linear_bwd_weight(n, fi, fo, x_in, &dy);
            (g[wj], g[wj + 1]) = (dw, db);
            let mut dx = self.rnd(r::linear_bwd_data(n, fi, fo, &dy, &params[wj]));
            if drop {
                dx = self.rnd(r::dropout_bwd(&dx, self.seeds[seed], step, pd));
            }
            dy = r::relu_bwd(h_prev, &dx);
        }
        let feat = t.acts.last().expect("features are never empty");
        let (dw, db) = r::linear_bwd_weight(n, c[0].0, c[0].1, feat, &dy);
        (g[fc], g[fc + 1]) = (dw, db);
        dy = self.rnd(r::linear_bwd_data(n, c[0].0, c[0].1, &dy, &params[fc]));
        let feats = self.cfg.features();
        let mut j = fc;
        for (i, f) in feats.iter().enumerate().rev() {
            let x = if i == 0 { &t.x } else { &t.acts[i - 1] };
            match f.kind {
                FeatureKind::Conv3x3 | FeatureKind::Conv1x1 => {
                    j -= 2;
                    let dz = r::relu_bwd(&route.acts[i], &dy);
                    let pix = n * f.h * f.w;
                    let p = ConvProblem::new(n, f.h, f.w, f.c_in, f.c_out);
                    let (dw, db) = if f.kind == FeatureKind::Conv3x3 {
                        r::conv3x3_wgrad(&p, x, &dz)
                    } else {
                        r::conv1x1_wgrad(pix, f.c_in, f.c_out, x, &dz)
                    };
                    (g[j], g[j + 1]) = (dw, db);
                    if i > 0 {
                        dy = self.rnd(if f.kind == FeatureKind::Conv3x3 {
                            r::conv3x3_dgrad(&p, &dz, &params[j])
                        } else {
                            r::conv1x1_dgrad(pix, f.c_in, f.c_out, &dz, &params[j])
                        });
                    }
                }
                FeatureKind::Lrn => dy = self.rnd(r::lrn_bwd(x, &dy, f.c_in, &LrnParams::ALEXNET)),
                FeatureKind::Pool => dy = r::maxpool2x2_bwd(n, f.h, f.w, f.c_in, &route.acts[i - 1], &dy),
            }
        }
        (loss, g)
    }
}
