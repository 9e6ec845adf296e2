//! Input normalisation (kernels/input.cu): a uint8 NHWC RGB batch to mean-subtracted
//! (optionally std-divided) fp16, with an optional per-image horizontal flip, in one pass;
//! bit-exact against [`crate::reference::normalize_input`]. Not in place: bytes in, halves out
//! (and a flipped image reads its mirror column).

use super::{int, nhwc};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::{check_disjoint, Span};
use crate::{ensure_shape, Error, Result, Tensor};
use half::f16;

pub use crate::reference::InputNorm;

const KERNEL: Kernel = Kernel { module: "input", name: "normalize_u8_f16" };
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 16;

/// `y = (x - mean) / std` per channel, image `i` mirrored left-right when `flip[i] != 0`.
/// `x` is `[n, h, w, 3]` u8, `y` the same shape in fp16, `flip` `[n]` when given.
pub fn normalize_input(x: &Tensor<u8>, flip: Option<&Tensor<u8>>, norm: &InputNorm, y: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    let (n, h, w, c) = nhwc(x.shape())?;
    ensure_shape!(c == 3, "normalize_input: expected 3 channels (RGB), got shape {:?}", x.shape());
    ensure_shape!(
        h.checked_mul(w).and_then(|p| p.checked_mul(3)).is_some_and(|l| l <= i32::MAX as usize),
        "normalize_input: images of {h}x{w} are too large for the kernel's 32-bit in-image index"
    );
    y.check_shape(&dev, "normalize_input output y (NHWC, x's shape)", x.shape())?;
    let flip_arg = match flip {
        Some(f) => {
            f.check_shape(&dev, "normalize_input flip flags", &[n])?;
            f.arg()
        }
        None => KArg::Ptr(0),
    };
    check_disjoint("normalize_input", &[y.span("y (NHWC)")], &[x.span("x (NHWC)"), Span::of(flip, "flip flags")])?;
    // Values, not shapes: a NaN or infinite mean or std (NaN passes `!= 0`) would make every
    // input NaN or 0 without a word, and a network trained on it learn nothing.
    let std = norm.std.unwrap_or([1.0; 3]);
    if !norm.mean.iter().all(|m| m.is_finite()) {
        return Err(Error::Invalid(format!("normalize_input: mean {:?} must be finite", norm.mean)));
    }
    if !std.iter().all(|s| s.is_finite() && *s != 0.0) {
        return Err(Error::Invalid(format!("normalize_input: std {std:?} has a zero or non-finite value")));
    }
    let groups = x.len().div_ceil(8).clamp(1, MAX_BLOCKS * THREADS as usize);
    let cfg = LaunchConfig::for_elements(groups, THREADS)?;
    let m = norm.mean;
    let args = [
        x.arg(),
        flip_arg,
        y.arg_mut(),
        KArg::I64(x.len() as i64),
        KArg::I32(int("H", h)?),
        KArg::I32(int("W", w)?),
        KArg::F32(m[0]),
        KArg::F32(m[1]),
        KArg::F32(m[2]),
        KArg::F32(std[0]),
        KArg::F32(std[1]),
        KArg::F32(std[2]),
    ];
    // SAFETY: (const unsigned char* x, const unsigned char* flip or null, __half* y, long long
    // n, int h, int w, float m0, m1, m2, float s0, s1, s2): x and y hold n = N*H*W*3 elements,
    // flip N (checked).
    unsafe { dev.launch(&KERNEL, cfg, &args) }
}
