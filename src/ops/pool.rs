//! 2x2, stride 2 max-pooling over NHWC fp16 activations (kernels/pool.cu). The output is
//! `floor(H/2) x floor(W/2)`; ties go to the first maximum in the window's row-major order,
//! and a window holding a NaN gives its first NaN (an overflow upstream is never dropped).
//! The backward pass finds each window's maximum again in the input ([`maxpool2x2_bwd`]), or
//! reads the index the forward pass recorded ([`maxpool2x2_fwd_arg`], [`maxpool2x2_bwd_arg`]):
//! a byte an output element, so that training need not keep the pool's input. Not in place:
//! an output element is read from (or written to) a whole window of the input.

use super::{int, nhwc, ELEMENTWISE_THREADS};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::{check_disjoint, Span};
use crate::{ensure_shape, Result, Tensor};
use half::f16;

const FWD: Kernel = Kernel { module: "pool", name: "maxpool2x2_fwd_f16" };
const BWD: Kernel = Kernel { module: "pool", name: "maxpool2x2_bwd_f16" };
const FWD_C8: Kernel = Kernel { module: "pool", name: "maxpool2x2_fwd_c8_f16" };
const BWD_ARG_C8: Kernel = Kernel { module: "pool", name: "maxpool2x2_bwd_arg_c8_f16" };
/// Threads a block, and the most blocks, of the 8-channel kernels (grid-stride loops).
const C8_THREADS: u32 = 256;
const C8_MAX_BLOCKS: usize = 132 * 16;

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

/// What a pool of the NHWC input shape `x` runs, as reports name it: `(forward, backward from
/// the argmaxes)`, the 8-channel kernels where they may run, else their twins (the backward's
/// reading the argmaxes, `maxpool2x2_bwd_f16 +arg`).
pub fn maxpool2x2_kernels(x: &[usize]) -> Result<(&'static str, &'static str)> {
    let fwd = if c8_windows(&maxpool2x2_out_shape(x)?, false).is_some() { FWD_C8.name } else { FWD.name };
    let bwd = if c8_windows(x, true).is_some() { BWD_ARG_C8.name } else { "maxpool2x2_bwd_f16 +arg" };
    Ok((fwd, bwd))
}

/// `y = maxpool2x2(x)`; `y` has shape [`maxpool2x2_out_shape`]`(x)`.
pub fn maxpool2x2_fwd(x: &Tensor<f16>, y: &mut Tensor<f16>) -> Result<()> {
    fwd(x, y, None)
}

/// As [`maxpool2x2_fwd`], and `arg` (`y`'s shape) receives the index in its window (0..3,
/// row-major) of each output's maximum, for [`maxpool2x2_bwd_arg`].
pub fn maxpool2x2_fwd_arg(x: &Tensor<f16>, y: &mut Tensor<f16>, arg: &mut Tensor<u8>) -> Result<()> {
    arg.check_shape(x.device(), "max-pool argmax (NHWC, y's shape)", &maxpool2x2_out_shape(x.shape())?)?;
    fwd(x, y, Some(arg))
}

fn fwd(x: &Tensor<f16>, y: &mut Tensor<f16>, arg: Option<&mut Tensor<u8>>) -> Result<()> {
    let dev = x.device().clone();
    let out = maxpool2x2_out_shape(x.shape())?;
    y.check_shape(&dev, "max-pool output y (NHWC)", &out)?;
    let writes = [y.span("y (NHWC)"), Span::of(arg.as_deref(), "argmax")];
    check_disjoint("maxpool2x2 fwd", &writes, &[x.span("x (NHWC)")])?;
    let arg = arg.map_or(KArg::Ptr(0), |a| a.arg_mut());
    let [n, h, w, c] = dims(x)?;
    if let Some(windows) = c8_windows(y.shape(), false) {
        let cfg = c8_config(windows)?;
        // SAFETY: as below; c % 8 == 0 and n*(h/2)*(w/2)*c/8 below 2^30 (c8_windows), the
        // tensors 16-byte aligned (Tensor::view).
        return unsafe { dev.launch(&FWD_C8, cfg, &[x.arg(), y.arg_mut(), arg, n, h, w, c]) };
    }
    let cfg = LaunchConfig::for_elements(y.len(), ELEMENTWISE_THREADS)?;
    // SAFETY: (const __half* x, __half* y, unsigned char* arg, int n, int h, int w, int c): x holds
    // n*h*w*c, y n*(h/2)*(w/2)*c elements, as checked; arg null or as many bytes as y (checked).
    unsafe { dev.launch(&FWD, cfg, &[x.arg(), y.arg_mut(), arg, n, h, w, c]) }
}

/// `dx` (shape of `x`) from the forward input `x` and the output gradient `dy`.
pub fn maxpool2x2_bwd(x: &Tensor<f16>, dy: &Tensor<f16>, dx: &mut Tensor<f16>) -> Result<()> {
    x.check_shape(dy.device(), "max-pool x (NHWC, dx's shape)", dx.shape())?;
    bwd(Some(x), None, dy, dx)
}

/// `dx` (shape `[n, h, w, c]` of the forward input) from the argmaxes [`maxpool2x2_fwd_arg`]
/// recorded and the output gradient `dy`: bit for bit [`maxpool2x2_bwd`]'s.
pub fn maxpool2x2_bwd_arg(arg: &Tensor<u8>, dy: &Tensor<f16>, dx: &mut Tensor<f16>) -> Result<()> {
    arg.check_shape(dy.device(), "max-pool argmax (NHWC, dy's shape)", dy.shape())?;
    bwd(None, Some(arg), dy, dx)
}

/// One of `x` (the forward input) and `arg` (its argmaxes), as the caller checked it.
fn bwd(x: Option<&Tensor<f16>>, arg: Option<&Tensor<u8>>, dy: &Tensor<f16>, dx: &mut Tensor<f16>) -> Result<()> {
    let dev = dy.device().clone();
    let out = maxpool2x2_out_shape(dx.shape())?;
    dy.check_shape(&dev, "max-pool dy (NHWC)", &out)?;
    dx.check(&dev, "max-pool dx", dx.len())?; // the device
    let reads = [Span::of(x, "x (NHWC)"), Span::of(arg, "argmax"), dy.span("dy (NHWC)")];
    check_disjoint("maxpool2x2 bwd", &[dx.span("dx (NHWC)")], &reads)?;
    if let Some(arg) = arg {
        if let Some(windows) = c8_windows(dx.shape(), true) {
            let cfg = c8_config(windows)?;
            let [n, h, w, c] = dims(dx)?;
            // SAFETY: (const unsigned char* arg, const __half* dy, __half* dx, int n, int h, int w,
            // int c): sizes as below; c % 8 == 0 and n*ceil(h/2)*ceil(w/2)*c/8 below 2^30
            // (c8_windows), the tensors 16-byte aligned (Tensor::view).
            return unsafe { dev.launch(&BWD_ARG_C8, cfg, &[arg.arg(), dy.arg(), dx.arg_mut(), n, h, w, c]) };
        }
    }
    let (x, arg) = (x.map_or(KArg::Ptr(0), Tensor::arg), arg.map_or(KArg::Ptr(0), Tensor::arg));
    let cfg = LaunchConfig::for_elements(dx.len(), ELEMENTWISE_THREADS)?;
    let [n, h, w, c] = dims(dx)?;
    // SAFETY: (const __half* x, const unsigned char* arg, const __half* dy, __half* dx, int n,
    // int h, int w, int c): dx n*h*w*c elements, dy n*(h/2)*(w/2)*c; the callers checked x (the
    // shape of dx) or arg (as many as dy), and pass the other null.
    unsafe { dev.launch(&BWD, cfg, &[x, arg, dy.arg(), dx.arg_mut(), n, h, w, c]) }
}

/// Threads of an 8-channel kernel over the NHWC `shape` (the backward's dx, `ceil` windows:
/// those of an odd last row or column write its zeros; the forward's y, one a window), one a
/// window and 8 channels, where it may run: C a multiple of 8 and the count within its 32-bit
/// index (with room for the grid stride; element offsets are 64-bit); None sends the launch to
/// the one-element-a-thread twin. Its 16-byte loads and stores (and the 8 argmax bytes, at
/// offsets a multiple of C) are aligned: every tensor starts 16 bytes aligned ([`Tensor::view`]).
fn c8_windows(shape: &[usize], ceil: bool) -> Option<usize> {
    let (n, h, w, c) = nhwc(shape).ok()?;
    let (wh, ww) = if ceil { (h.div_ceil(2), w.div_ceil(2)) } else { (h, w) };
    let windows = n.checked_mul(wh)?.checked_mul(ww)?.checked_mul(c / 8)?;
    (c % 8 == 0 && windows <= i32::MAX as usize / 2).then_some(windows)
}

fn c8_config(windows: usize) -> Result<LaunchConfig> {
    LaunchConfig::for_elements(windows.clamp(1, C8_MAX_BLOCKS * C8_THREADS as usize), C8_THREADS)
}
