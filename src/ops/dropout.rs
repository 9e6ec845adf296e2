//! Inverted dropout on fp16 tensors with the counter-based mask of
//! [`crate::reference::dropout_fwd`] (kernels/dropout.cu), bit-exact: the mask is a pure
//! function of `(seed, step, flat index)`, so the backward pass recomputes it and nothing
//! is stored in between. Use a distinct `seed` per dropout layer. In place when the output is
//! exactly the input: the kernel's thread reads its 8 (or 1) elements and then writes the same
//! ones; a partial overlap is refused.

use crate::device::{KArg, Kernel, LaunchConfig};
use crate::ops::StepVars;
use crate::reference::dropout_key;
use crate::tensor::check_disjoint;
use crate::{Error, Result, Tensor};
use half::f16;

const KERNEL: Kernel = Kernel { module: "dropout", name: "dropout_f16" };
const THREADS: u32 = 256;
/// Enough blocks to fill an H200 several times over; larger tensors grid-stride.
const MAX_BLOCKS: usize = 132 * 16;

/// Where the mask's key comes from: `(seed, step)` on the host, or hidden layer `layer`'s key in
/// a [`StepVars`] (layer 0 or 1; another is an `Error::Invalid`), read by the kernel when it
/// runs (what a captured step's replays need).
#[derive(Clone, Copy, Debug)]
pub enum DropoutKey<'a> {
    /// The key of `(seed, step)`, passed to the kernel by value at the launch.
    Host {
        /// The dropout layer's seed (one per layer).
        seed: u64,
        /// The training step, so that each step draws a fresh mask.
        step: u64,
    },
    /// The key [`StepVars::set`] last queued for hidden layer `layer`, read by the kernel from
    /// device memory.
    Device {
        /// The step values, on the op's device.
        vars: &'a StepVars,
        /// The hidden layer: 0 or 1.
        layer: usize,
    },
}

/// `what`: the output as errors name it; `names`: the output's and the input's short names.
fn launch(
    x: &Tensor<f16>,
    y: &mut Tensor<f16>,
    key: DropoutKey<'_>,
    p_drop: f32,
    what: &str,
    names: [&str; 2],
) -> Result<()> {
    let dev = x.device().clone();
    if !(0.0..=1.0).contains(&p_drop) {
        return Err(Error::Invalid(format!("dropout: p_drop {p_drop} is not in [0, 1]")));
    }
    y.check(&dev, what, x.len())?;
    check_disjoint("dropout", &[y.span(names[0])], &[x.span(names[1]).in_place()])?;
    // As the reference: computed in f32; p_drop = 1 drops everything, so inf is never used.
    let scale = 1.0f32 / (1.0 - p_drop);
    let groups = x.len().div_ceil(8).clamp(1, MAX_BLOCKS * THREADS as usize);
    let cfg = LaunchConfig::for_elements(groups, THREADS)?;
    let (key, key_at) = match key {
        DropoutKey::Host { seed, step } => (dropout_key(seed, step), KArg::Ptr(0)),
        DropoutKey::Device { vars, layer } => (0, vars.key_arg(&dev, layer)?),
    };
    let args = [
        x.arg(),
        y.arg_mut(),
        KArg::I64(x.len() as i64),
        KArg::I64(key as i64),
        KArg::F32(p_drop),
        KArg::F32(scale),
        key_at,
    ];
    // SAFETY: (const __half* x, __half* y, long long n, unsigned long long key, float p_drop,
    // float scale, const unsigned long long* key_at or null); x and y hold n elements
    // (checked), key_at one word of a StepVars on this device (checked).
    unsafe { dev.launch(&KERNEL, cfg, &args) }
}

/// `y_i = keep(seed, step, i) ? x_i * (1 / (1 - p_drop)) : 0`, rounded to fp16.
pub fn dropout_fwd(x: &Tensor<f16>, y: &mut Tensor<f16>, seed: u64, step: u64, p_drop: f32) -> Result<()> {
    launch(x, y, DropoutKey::Host { seed, step }, p_drop, "dropout output", ["y", "x"])
}

/// `dx_i = keep(seed, step, i) ? dy_i * (1 / (1 - p_drop)) : 0`: the forward's mask, recomputed.
pub fn dropout_bwd(dy: &Tensor<f16>, dx: &mut Tensor<f16>, seed: u64, step: u64, p_drop: f32) -> Result<()> {
    launch(dy, dx, DropoutKey::Host { seed, step }, p_drop, "dropout dx", ["dx", "dy"])
}

/// Dropout with the mask of `key`, forward (`x` -> `y`) or backward (`dy` -> `dx`, the same
/// operation with the forward's key).
pub fn dropout(x: &Tensor<f16>, y: &mut Tensor<f16>, key: DropoutKey<'_>, p_drop: f32) -> Result<()> {
    launch(x, y, key, p_drop, "dropout output", ["y", "x"])
}
