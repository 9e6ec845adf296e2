//! 2x2, stride 2 max-pooling over NHWC fp16 activations (kernels/pool.cu). The output is
//! `floor(H/2) x floor(W/2)`; ties go to the first maximum in the window's row-major order.

use super::{int, nhwc, ELEMENTWISE_THREADS};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::{ensure_shape, Result, Tensor};
use half::f16;

const FWD: Kernel = Kernel { module: "pool", name: "maxpool2x2_fwd_f16" };
const BWD: Kernel = Kernel { module: "pool", name: "maxpool2x2_bwd_f16" };

/// The output shape of a 2x2 pool of an NHWC input of shape `[n, h, w, c]`.
pub fn maxpool2x2_out_shape(x: &[usize]) -> Result<[usize; 4]> {
    let (n, h, w, c) = nhwc(x)?;
    ensure_shape!(h >= 2 && w >= 2, "max-pool 2x2 needs H, W >= 2, got input shape {x:?}");
    Ok([n, h / 2, w / 2, c])
}

fn dims(x: &Tensor<f16>) -> Result<[KArg; 4]> {
    let (n, h, w, c) = nhwc(x.shape())?;
    Ok([KArg::I32(int("N", n)?), KArg::I32(int("H", h)?), KArg::I32(int("W", w)?), KArg::I32(int("C", c)?)])
}

/// `y = maxpool2x2(x)`; `y` has shape [`maxpool2x2_out_shape`]`(x)`.
pub fn maxpool2x2_fwd(x: &Tensor<f16>, y: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    let out = maxpool2x2_out_shape(x.shape())?;
    y.check(&dev, "max-pool output", out.iter().product())?;
    let cfg = LaunchConfig::for_elements(y.len(), ELEMENTWISE_THREADS)?;
    let [n, h, w, c] = dims(x)?;
    // SAFETY: (const __half* x, __half* y, int n, int h, int w, int c): x holds n*h*w*c,
    // y n*(h/2)*(w/2)*c elements, as checked.
    unsafe { dev.launch(&FWD, cfg, &[x.arg(), y.arg_mut(), n, h, w, c]) }
}

/// `dx` (shape of `x`) from the forward input `x` and the output gradient `dy`.
pub fn maxpool2x2_bwd(x: &Tensor<f16>, dy: &Tensor<f16>, dx: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    let out = maxpool2x2_out_shape(x.shape())?;
    dy.check(&dev, "max-pool dy", out.iter().product())?;
    dx.check(&dev, "max-pool dx", x.len())?;
    let cfg = LaunchConfig::for_elements(x.len(), ELEMENTWISE_THREADS)?;
    let [n, h, w, c] = dims(x)?;
    // SAFETY: (const __half* x, const __half* dy, __half* dx, int n, int h, int w, int c)
    // with the sizes checked above.
    unsafe { dev.launch(&BWD, cfg, &[x.arg(), dy.arg(), dx.arg_mut(), n, h, w, c]) }
}
