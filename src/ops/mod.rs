//! The library API: one module per kernel family, each a thin, typed, validated launcher
//! over [`crate::Device::launch`]. Every op checks that its tensors live on its device and
//! have the sizes the shapes imply, and returns an error rather than panicking.

pub mod elementwise;
pub mod pool;

pub use elementwise::{bias_act, cast_f16_to_f32, cast_f32_to_f16, relu_bwd, relu_fwd};
pub use pool::{maxpool2x2_bwd, maxpool2x2_fwd};

/// Threads per block of the one-thread-per-element kernels: a multiple of the warp and
/// enough blocks per SM on every size that matters.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;

/// Shape `[n, h, w, c]` of an NHWC activation.
pub(crate) fn nhwc(t: &[usize]) -> crate::Result<(usize, usize, usize, usize)> {
    match *t {
        [n, h, w, c] => Ok((n, h, w, c)),
        _ => Err(crate::Error::Shape(format!("expected an NHWC tensor [n, h, w, c], got shape {t:?}"))),
    }
}

/// Converts a dimension to the kernel's `int`, or errors when it does not fit.
pub(crate) fn int(what: &str, v: usize) -> crate::Result<i32> {
    i32::try_from(v).map_err(|_| crate::Error::Shape(format!("{what} = {v} does not fit the kernel's 32-bit index")))
}
