//! A [`Vgg`]'s gradients ([`Vgg::compute_grads`]: forward, loss, backward) and its backward pass:
//! the loss's logit gradient back through the classifier (with its dropout and ReLU) and every
//! feature layer in reverse, each layer's weight and bias gradients into the parameters' `g`, the
//! ReLU undone by a dgrad's mask where that is exact (the parent module's doc says when).

use super::memory::Phase;
use super::params::Param;
use super::{drop_key, Op, Src, Vgg};
use crate::ops::{self, DropoutKey, LrnParams};
use crate::{Result, Tensor};
use half::f16;

impl Vgg {
    /// Forward with dropout, the loss (scaled by the current loss scale) and the backward
    /// pass: every parameter's `g` holds the scaled gradient afterwards (NaN in the last layer,
    /// at least, where a label was outside `0..classes`; see [`Vgg::train_step`]). Nothing is
    /// read back (but the activations under [`Vgg::keep_trace`]).
    pub fn compute_grads(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, step: u64) -> Result<()> {
        self.compute_grads_src(images, labels, Src::Host(step))
    }

    pub(super) fn compute_grads_src(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, src: Src) -> Result<()> {
        self.forward_src(images, true, src)?;
        if self.tracing {
            self.trace = Some(self.snapshot()?);
        }
        self.enter(Phase::Loss)?;
        let dz = Some(&mut self.buf.dlogits);
        if self.scaler.is_queued() {
            ops::softmax_xent_device_scale(&self.buf.logits, labels, dz, &self.scaler, &mut self.xent)?;
        } else {
            ops::softmax_xent(&self.buf.logits, labels, dz, self.scaler.scale(), &mut self.xent)?;
        }
        self.backward(src)
    }

    fn backward(&mut self, src: Src) -> Result<()> {
        let drop = self.cfg.dropout > 0.0;
        let pd = self.cfg.dropout;
        let fc = self.params.len() - 6;
        let (seed0, seed1) = (self.dropout_seed(0), self.dropout_seed(1));
        // classifier.6, then hidden layer 1's dropout and ReLU backward.
        let t = self.enter(Phase::FcBwd(2))?;
        let x3 = self.buf.d2.as_ref().filter(|_| drop).unwrap_or(&self.buf.h2);
        linear_bwd(x3, &self.buf.dlogits, two(&mut self.params, fc + 4), &mut self.buf.g_x3, &mut self.buf.ws[t])?;
        let key = drop_key(&self.vars, seed1, 1, src);
        hidden_bwd(&self.buf.g_x3, self.buf.g_h2.as_mut(), &self.buf.h2, &mut self.buf.g_z2, key, pd)?;
        // classifier.3, then hidden layer 0's.
        let t = self.enter(Phase::FcBwd(1))?;
        let x2 = self.buf.d1.as_ref().filter(|_| drop).unwrap_or(&self.buf.h1);
        linear_bwd(x2, &self.buf.g_z2, two(&mut self.params, fc + 2), &mut self.buf.g_x2, &mut self.buf.ws[t])?;
        let key = drop_key(&self.vars, seed0, 0, src);
        hidden_bwd(&self.buf.g_x2, self.buf.g_h1.as_mut(), &self.buf.h1, &mut self.buf.g_z1, key, pd)?;
        // classifier.0, its data gradient into the last feature map's gradient.
        let t = self.enter(Phase::FcBwd(0))?;
        let last = self.buf.acts.len() - 1;
        let dx = &mut self.buf.dacts[last];
        linear_bwd(&self.buf.acts[last], &self.buf.g_z1, two(&mut self.params, fc), dx, &mut self.buf.ws[t])?;
        for i in (0..self.ops.len()).rev() {
            let t = self.enter(Phase::FeatureBwd(i))?;
            let ws = &mut self.buf.ws[t];
            let p = &mut self.params;
            let (dprev, dcur) = self.buf.dacts.split_at_mut(i);
            let dy = &dcur[0];
            let y = &self.buf.acts[i];
            let x = if i == 0 { &self.buf.x } else { &self.buf.acts[i - 1] };
            // The gradient masked by the ReLU at this layer's output: dy itself where it arrives
            // masked.
            let dz = match &mut self.buf.dpre[i] {
                Some(t) => {
                    ops::relu_bwd(y, dy, t)?;
                    &*t
                }
                None => dy,
            };
            match &self.ops[i] {
                Op::Conv3(conv) => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = two(p, j);
                    conv.wgrad(x, dz, &mut w.g, Some(&mut b.g), ws)?;
                    if i > 0 {
                        conv.dgrad(dz, &w.h, Some(x), &mut dprev[i - 1], ws)?;
                    }
                }
                Op::Conv1 => {
                    let j = self.param_of[i].expect("conv has parameters");
                    let (w, b) = two(p, j);
                    ops::conv1x1_wgrad(x, dz, &mut w.g, Some(&mut b.g), Some(&mut *ws))?;
                    if i > 0 {
                        ops::conv1x1_dgrad(dz, &w.h, &mut dprev[i - 1], Some(ws))?;
                    }
                }
                Op::Lrn => ops::lrn_bwd(x, dy, &mut dprev[i - 1], &LrnParams::ALEXNET)?,
                Op::Pool => {
                    let arg = self.buf.args[i].as_ref().expect("pool argmaxes");
                    ops::maxpool2x2_bwd_arg(arg, dz, &mut dprev[i - 1])?
                }
            }
        }
        Ok(())
    }
}

/// Two consecutive parameters (weight, bias) mutably.
fn two(p: &mut [Param], j: usize) -> (&mut Param, &mut Param) {
    let (a, b) = p.split_at_mut(j + 1);
    (&mut a[j], &mut b[0])
}

/// A linear layer's weight (and bias) gradient into `g`, and its data gradient into `dx`.
fn linear_bwd(
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    (w, b): (&mut Param, &mut Param),
    dx: &mut Tensor<f16>,
    ws: &mut Tensor<u8>,
) -> Result<()> {
    ops::linear_bwd_weight(x, dy, &mut w.g, Some(&mut b.g), Some(&mut *ws))?;
    ops::linear_bwd_data(dy, &w.h, dx, Some(ws))
}

/// A hidden FC layer's backward from the gradient `g_x` at its (dropout's) output: dropout
/// backward into `g_h` when given, then ReLU backward against its output `h` into `g_z`.
fn hidden_bwd(
    g_x: &Tensor<f16>,
    g_h: Option<&mut Tensor<f16>>,
    h: &Tensor<f16>,
    g_z: &mut Tensor<f16>,
    key: DropoutKey<'_>,
    p: f32,
) -> Result<()> {
    let g = match g_h {
        Some(g) => {
            ops::dropout(g_x, g, key, p)?;
            &*g
        }
        None => g_x,
    };
    ops::relu_bwd(h, g, g_z)
}
