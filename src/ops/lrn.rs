//! Local response normalisation across channels over NHWC fp16 activations
//! (kernels/lrn.cu), fp32 math, PyTorch's convention as [`crate::reference::lrn_fwd`] /
//! [`crate::reference::lrn_bwd`]. VGG's A-LRN uses [`LrnParams::ALEXNET`].
//!
//! Not in place: an output reads its neighbours' channels. (Today's kernels stage a block's
//! pixels in shared memory before writing them, so `y == x` would happen to work; that is not
//! part of their contract, and the launchers refuse any overlap rather than depend on it.)

use super::{int, nhwc};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::check_disjoint;
use crate::{ensure_shape, Error, Result, Tensor};
use half::f16;

pub use crate::reference::LrnParams;

const FWD: Kernel = Kernel { module: "lrn", name: "lrn_fwd_f16" };
const BWD: Kernel = Kernel { module: "lrn", name: "lrn_bwd_f16" };
const THREADS: u32 = 256;
/// Elements a block stages in shared memory (whole pixels; at least one pixel).
const TILE: usize = 2048;
/// Shared memory a block may use without opting in to more (48 KB).
const MAX_SMEM: usize = 48 * 1024;

/// (launch config, pixels, channels, pixels a block) for `arrays` staged f32 arrays.
fn plan(x: &Tensor<f16>, p: &LrnParams, arrays: usize) -> Result<(LaunchConfig, usize, usize, usize)> {
    let (n, h, w, c) = nhwc(x.shape())?;
    ensure_shape!(c > 0, "lrn: input shape {:?} has no channels", x.shape());
    ensure_shape!(p.size >= 1, "lrn: window size must be at least 1");
    // A NaN or infinite constant made every output NaN (or 0) without a word, and so does a base
    // k + alpha/size * sum that can reach 0 or below (k <= 0 on a window of zeros, as ReLU outputs
    // often are, or alpha < 0): k > 0 and alpha >= 0 keep it at least k, and k^-beta must be
    // finite too (k = 1e-30 with beta 2 overflows, and a zero window then gives 0 * inf).
    let finite = [p.alpha, p.beta, p.k].iter().all(|v| v.is_finite());
    if !(finite && p.k > 0.0 && p.alpha >= 0.0 && p.k.powf(-p.beta).is_finite()) {
        return Err(Error::Invalid(format!(
            "lrn: alpha {}, beta {}, k {} must be finite, with k > 0 and alpha >= 0",
            p.alpha, p.beta, p.k
        )));
    }
    let ppb = (TILE / c).max(1);
    let smem = arrays * ppb * c * 4;
    ensure_shape!(smem <= MAX_SMEM, "lrn: {c} channels need {smem} bytes of shared memory a block (max {MAX_SMEM})");
    let pixels = n * h * w;
    let blocks = u32::try_from(pixels.div_ceil(ppb).max(1))
        .map_err(|_| crate::Error::Shape(format!("lrn: {pixels} pixels is too many for one launch")))?;
    let cfg = LaunchConfig { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: smem as u32 };
    Ok((cfg, pixels, c, ppb))
}

fn params_args(p: &LrnParams) -> Result<[KArg; 4]> {
    Ok([KArg::I32(int("lrn size", p.size)?), KArg::F32(p.alpha), KArg::F32(p.beta), KArg::F32(p.k)])
}

/// `y = x / (k + alpha/size * sum_window x^2)^beta` across channels, NHWC; `y` has `x`'s shape.
pub fn lrn_fwd(x: &Tensor<f16>, y: &mut Tensor<f16>, p: &LrnParams) -> Result<()> {
    let dev = x.device().clone();
    let (cfg, pixels, c, ppb) = plan(x, p, 1)?;
    y.check_shape(&dev, "lrn output y (NHWC, x's shape)", x.shape())?;
    check_disjoint("lrn fwd", &[y.span("y (NHWC)")], &[x.span("x (NHWC)")])?;
    let [size, alpha, beta, k] = params_args(p)?;
    let args = [
        x.arg(),
        y.arg_mut(),
        KArg::I64(pixels as i64),
        KArg::I32(int("C", c)?),
        KArg::I32(int("ppb", ppb)?),
        size,
        alpha,
        beta,
        k,
    ];
    // SAFETY: (const __half* x, __half* y, long long pixels, int channels, int ppb, int size,
    // float alpha, float beta, float k): x and y hold pixels*channels elements; shared_bytes
    // = ppb*channels floats.
    unsafe { dev.launch(&FWD, cfg, &args) }
}

/// `dx` from the forward input `x` and the output gradient `dy` (all the same NHWC shape).
pub fn lrn_bwd(x: &Tensor<f16>, dy: &Tensor<f16>, dx: &mut Tensor<f16>, p: &LrnParams) -> Result<()> {
    let dev = x.device().clone();
    let (cfg, pixels, c, ppb) = plan(x, p, 3)?;
    dy.check_shape(&dev, "lrn dy (NHWC, x's shape)", x.shape())?;
    dx.check_shape(&dev, "lrn dx (NHWC, x's shape)", x.shape())?;
    check_disjoint("lrn bwd", &[dx.span("dx (NHWC)")], &[x.span("x (NHWC)"), dy.span("dy (NHWC)")])?;
    let [size, alpha, beta, k] = params_args(p)?;
    let args = [
        x.arg(),
        dy.arg(),
        dx.arg_mut(),
        KArg::I64(pixels as i64),
        KArg::I32(int("C", c)?),
        KArg::I32(int("ppb", ppb)?),
        size,
        alpha,
        beta,
        k,
    ];
    // SAFETY: (const __half* x, const __half* dy, __half* dx, long long pixels, int channels,
    // int ppb, int size, float alpha, float beta, float k): three tensors of pixels*channels
    // elements; shared_bytes = 3*ppb*channels floats.
    unsafe { dev.launch(&BWD, cfg, &args) }
}
