//! The window matrix of dense evaluation (kernels/dense_gather.cu): every `th x tw` window
//! of an NHWC fp16 feature map as one row, in the first FC layer's HWC column order, so the
//! feature map never leaves the device before fc6. Bit-exact against
//! [`crate::reference::dense_gather()`]. Not in place: each input element goes to many rows.

use super::{int, nhwc};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::check_disjoint;
use crate::{ensure_shape, Error, Result, Tensor};
use half::f16;

const KERNEL: Kernel = Kernel { module: "dense_gather", name: "dense_gather_f16" };
const THREADS: u32 = 256;
/// Enough blocks to fill any GPU; the kernel's grid-stride loop covers the rest.
const MAX_BLOCKS: usize = 132 * 16;

/// The `[n * oh * ow, th * tw * c]` shape of the window matrix of an `[n, fh, fw, c]` map.
pub fn dense_gather_shape(x: &[usize], th: usize, tw: usize) -> Result<[usize; 2]> {
    let (n, fh, fw, c) = nhwc(x)?;
    ensure_shape!(
        th >= 1 && tw >= 1 && th <= fh && tw <= fw,
        "dense_gather: {th}x{tw} windows do not fit a feature map of shape {x:?}"
    );
    // Checked: a zero-element map may have any other dimensions, and this is also called on bare
    // shapes, so the products can overflow (and would wrap to a small, valid-looking shape).
    let m = n.checked_mul(fh - th + 1).and_then(|v| v.checked_mul(fw - tw + 1));
    let k = th.checked_mul(tw).and_then(|v| v.checked_mul(c));
    match (m, k) {
        (Some(m), Some(k)) => Ok([m, k]),
        _ => Err(Error::Shape(format!("dense_gather: the {th}x{tw} windows of shape {x:?} overflow a usize"))),
    }
}

/// `cols` = the `th x tw` windows of `x` (`[n, fh, fw, c]` NHWC), one a row, shape
/// [`dense_gather_shape`]: `cols[(i*oh + oy)*ow + ox][(dy*tw + dx)*c + ch] = x[i][oy+dy][ox+dx][ch]`.
pub fn dense_gather(x: &Tensor<f16>, th: usize, tw: usize, cols: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    let (n, fh, fw, c) = nhwc(x.shape())?;
    let [m, k] = dense_gather_shape(x.shape(), th, tw)?;
    ensure_shape!(
        k <= i32::MAX as usize,
        "dense_gather: {th}x{tw}x{c} windows overflow the kernel's 32-bit column index"
    );
    cols.check_shape(&dev, "dense_gather output cols", &[m, k])?;
    check_disjoint("dense_gather", &[cols.span("cols")], &[x.span("x (NHWC)")])?;
    let work = if c % 8 == 0 { m * k / 8 } else { m * k };
    let cfg = LaunchConfig::for_elements(work.clamp(1, MAX_BLOCKS * THREADS as usize), THREADS)?;
    let args = [
        x.arg(),
        cols.arg_mut(),
        KArg::I32(int("N", n)?),
        KArg::I32(int("H", fh)?),
        KArg::I32(int("W", fw)?),
        KArg::I32(int("C", c)?),
        KArg::I32(int("window height", th)?),
        KArg::I32(int("window width", tw)?),
    ];
    // SAFETY: (const __half* x, __half* cols, int n, int fh, int fw, int c, int th, int tw):
    // x holds n*fh*fw*c elements (its shape), cols the checked m*k, 1 <= th <= fh, 1 <= tw <= fw.
    unsafe { dev.launch(&KERNEL, cfg, &args) }
}
