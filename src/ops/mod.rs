//! The library API: one module per kernel family, each a thin, typed, validated launcher
//! over [`crate::Device::launch`]. Every op checks that its tensors live on its device and
//! have the full shapes its layout implies (NHWC activations, KRSC filters, `[M, K]` GEMM
//! operands: a tensor of the right size in another layout is refused, not misread; the
//! element-wise ops, to which the shape does not matter, check lengths), and returns an error
//! rather than panicking.

pub mod conv;
pub mod conv_tune;
pub mod dense_gather;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod input;
pub mod lrn;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub mod step_vars;

pub use conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
pub use dense_gather::{dense_gather, dense_gather_shape};
pub use dropout::{dropout, dropout_bwd, dropout_fwd, DropoutKey};
pub use elementwise::{bias_act, cast_f16_to_f32, cast_f32_to_f16, relu_bwd, relu_fwd};
pub use gemm::{conv1x1_dgrad, conv1x1_fwd, conv1x1_wgrad, linear_bwd_data, linear_bwd_weight, linear_fwd};
pub use input::{normalize_input, InputNorm};
pub use lrn::{lrn_bwd, lrn_fwd, LrnParams};
pub use optim::{LossScaler, OverflowFlag, Sgd, SgdParam, SgdParams, SgdPlan};
pub use pool::{maxpool2x2_bwd, maxpool2x2_bwd_arg, maxpool2x2_fwd, maxpool2x2_fwd_arg};
pub use reduce::{reduce_max_abs, reduce_sum, Reducer};
pub use softmax::{softmax_fwd, softmax_xent, softmax_xent_device_scale, XentBuffers, XentStats};
pub use step_vars::StepVars;

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
