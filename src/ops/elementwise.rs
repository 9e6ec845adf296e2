//! ReLU, bias (+ReLU), and fp16 <-> fp32 casts (kernels/elementwise.cu).
//!
//! In place: ReLU forward and backward and `bias_act` take an output that is exactly one of
//! their same-typed inputs (their kernels' thread `i` reads element `i` of each input and then
//! writes element `i`, and nothing else touches it); a partial overlap is refused, as is any
//! overlap of a cast (its elements change width, so `y[i]` lands on other elements of `x`) or
//! of the bias (every thread of a channel reads it).

use super::{int, ELEMENTWISE_THREADS};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::check_disjoint;
use crate::{ensure_shape, Result, Tensor};
use half::f16;

const fn k(name: &'static str) -> Kernel {
    Kernel { module: "elementwise", name }
}
const RELU_FWD: Kernel = k("relu_fwd_f16");
const RELU_BWD: Kernel = k("relu_bwd_f16");
const BIAS_ACT: Kernel = k("bias_act_f16");
const CAST_F32_F16: Kernel = k("cast_f32_to_f16");
const CAST_F16_F32: Kernel = k("cast_f16_to_f32");

/// `y = max(x, 0)`. In place when `y` is exactly `x` (a view of the same bytes).
pub fn relu_fwd(x: &Tensor<f16>, y: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    y.check(&dev, "relu output", x.len())?;
    check_disjoint("relu_fwd", &[y.span("y")], &[x.span("x").in_place()])?;
    let cfg = LaunchConfig::for_elements(x.len(), ELEMENTWISE_THREADS)?;
    // SAFETY: (const __half* x, __half* y, long long n) with both tensors holding n elements.
    unsafe { dev.launch(&RELU_FWD, cfg, &[x.arg(), y.arg_mut(), KArg::I64(x.len() as i64)]) }
}

/// `dx = dy` where the forward output `y > 0`, else 0. In place when `dx` is exactly `dy` or `y`.
pub fn relu_bwd(y: &Tensor<f16>, dy: &Tensor<f16>, dx: &mut Tensor<f16>) -> Result<()> {
    let dev = y.device().clone();
    dy.check(&dev, "relu dy", y.len())?;
    dx.check(&dev, "relu dx", y.len())?;
    check_disjoint("relu_bwd", &[dx.span("dx")], &[y.span("y").in_place(), dy.span("dy").in_place()])?;
    let cfg = LaunchConfig::for_elements(y.len(), ELEMENTWISE_THREADS)?;
    // SAFETY: (const __half* y, const __half* dy, __half* dx, long long n), n elements each.
    unsafe { dev.launch(&RELU_BWD, cfg, &[y.arg(), dy.arg(), dx.arg_mut(), KArg::I64(y.len() as i64)]) }
}

/// `y = x + bias[c]` over the innermost (channel) dimension of an NHWC tensor, then ReLU
/// when `relu` is set. Computed in fp32 and rounded once. In place when `y` is exactly `x`.
pub fn bias_act(x: &Tensor<f16>, bias: &Tensor<f16>, y: &mut Tensor<f16>, relu: bool) -> Result<()> {
    let dev = x.device().clone();
    let c = *x.shape().last().unwrap_or(&0);
    ensure_shape!(c > 0, "bias_act: input shape {:?} has no channel dimension", x.shape());
    bias.check_shape(&dev, "bias ([C], x's last dimension)", &[c])?;
    y.check(&dev, "bias_act output", x.len())?;
    check_disjoint("bias_act", &[y.span("y")], &[x.span("x").in_place(), bias.span("bias")])?;
    let cfg = LaunchConfig::for_elements(x.len(), ELEMENTWISE_THREADS)?;
    let args = [
        x.arg(),
        bias.arg(),
        y.arg_mut(),
        KArg::I64(x.len() as i64),
        KArg::I32(int("channels", c)?),
        KArg::I32(relu as i32),
    ];
    // SAFETY: (const __half* x, const __half* bias, __half* y, long long n, int c, int relu);
    // x and y hold n elements, bias c.
    unsafe { dev.launch(&BIAS_ACT, cfg, &args) }
}

/// fp32 to fp16, round to nearest even (overflow to infinity, as `__float2half_rn`).
pub fn cast_f32_to_f16(x: &Tensor<f32>, y: &mut Tensor<f16>) -> Result<()> {
    let dev = x.device().clone();
    y.check(&dev, "cast output", x.len())?;
    check_disjoint("cast_f32_to_f16", &[y.span("y (f16)")], &[x.span("x (f32)")])?;
    let cfg = LaunchConfig::for_elements(x.len(), ELEMENTWISE_THREADS)?;
    // SAFETY: (const float* x, __half* y, long long n), n elements each.
    unsafe { dev.launch(&CAST_F32_F16, cfg, &[x.arg(), y.arg_mut(), KArg::I64(x.len() as i64)]) }
}

/// fp16 to fp32 (exact).
pub fn cast_f16_to_f32(x: &Tensor<f16>, y: &mut Tensor<f32>) -> Result<()> {
    let dev = x.device().clone();
    y.check(&dev, "cast output", x.len())?;
    check_disjoint("cast_f16_to_f32", &[y.span("y (f32)")], &[x.span("x (f16)")])?;
    let cfg = LaunchConfig::for_elements(x.len(), ELEMENTWISE_THREADS)?;
    // SAFETY: (const __half* x, float* y, long long n), n elements each.
    unsafe { dev.launch(&CAST_F16_F32, cfg, &[x.arg(), y.arg_mut(), KArg::I64(x.len() as i64)]) }
}
