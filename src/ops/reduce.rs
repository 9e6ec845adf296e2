//! Whole-tensor sum and maximum magnitude of fp32 / fp16 tensors (kernels/reduce.cu), for
//! tests, metrics and overflow checks: two deterministic passes (per-block f64 partials,
//! then one block), no atomics, so a tensor always reduces to the same bits. As
//! [`crate::reference::tensor_sum`] / [`crate::reference::tensor_max_abs`]: NaN propagates.

use crate::device::{KArg, Kernel, LaunchConfig};
use crate::{DType, Device, Result, Tensor};
use half::f16;

const FINISH: Kernel = Kernel { module: "reduce", name: "reduce_finish" };
const THREADS: u32 = 256;
/// Partials of the first pass: at most this many blocks, so the second pass is one block.
pub const MAX_PARTIALS: usize = 1024;

/// Element types the reductions take. Sealed through [`DType`] (only this crate's types are
/// DTypes, so only this crate can implement its own trait for them): the kernels an
/// implementation names read its tensors as that type.
pub trait Reducible: DType {
    #[doc(hidden)]
    const SUM: Kernel;
    #[doc(hidden)]
    const MAX_ABS: Kernel;
}
impl Reducible for f32 {
    const SUM: Kernel = Kernel { module: "reduce", name: "reduce_sum_f32" };
    const MAX_ABS: Kernel = Kernel { module: "reduce", name: "reduce_maxabs_f32" };
}
impl Reducible for f16 {
    const SUM: Kernel = Kernel { module: "reduce", name: "reduce_sum_f16" };
    const MAX_ABS: Kernel = Kernel { module: "reduce", name: "reduce_maxabs_f16" };
}

/// The first pass's partials (f64, kept in an f32 tensor of twice the length) and the
/// one-element result; allocate once and reuse.
#[derive(Debug)]
pub struct Reducer {
    partials: Tensor<f32>,
    out: Tensor<f32>,
}

impl Reducer {
    /// Allocates the partials and the result on `dev`; every reduction through it must then take
    /// tensors of that device (else an `Error::WrongDevice`).
    pub fn new(dev: &Device) -> Result<Self> {
        Ok(Self { partials: Tensor::empty(dev, &[2 * MAX_PARTIALS])?, out: Tensor::empty(dev, &[1])? })
    }

    /// Blocks of the first pass for `n` elements: a function of `n` alone (16 vectors of
    /// 16 bytes a thread before a second block is worth it), capped at [`MAX_PARTIALS`].
    fn blocks(n: usize) -> u32 {
        n.div_ceil(THREADS as usize * 64).clamp(1, MAX_PARTIALS) as u32
    }

    fn run<T: Reducible>(&mut self, k: &Kernel, op: i32, x: &Tensor<T>) -> Result<&Tensor<f32>> {
        let dev = x.device().clone();
        self.partials.check(&dev, "reduce partials", 2 * MAX_PARTIALS)?;
        self.out.check(&dev, "reduce result", 1)?;
        let blocks = Self::blocks(x.len());
        let cfg = LaunchConfig { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
        // SAFETY: (const T* x, long long n, double* partials): x holds n elements, partials
        // room for MAX_PARTIALS doubles >= blocks.
        unsafe { dev.launch(k, cfg, &[x.arg(), KArg::I64(x.len() as i64), self.partials.arg_mut()])? };
        let one = LaunchConfig { grid: (1, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
        let args = [self.partials.arg(), KArg::I32(blocks as i32), KArg::I32(op), self.out.arg_mut()];
        // SAFETY: (const double* partials, int count, int op, float* out): count partials
        // written above, one output element.
        unsafe { dev.launch(&FINISH, one, &args)? };
        Ok(&self.out)
    }

    /// `sum_i x_i` (f64 accumulation, rounded to f32) into a one-element device tensor, so
    /// that it can be read later or fed to another kernel.
    pub fn sum<T: Reducible>(&mut self, x: &Tensor<T>) -> Result<&Tensor<f32>> {
        self.run(&T::SUM, 0, x)
    }

    /// `max_i |x_i|` (NaN if any element is NaN) into a one-element device tensor.
    pub fn max_abs<T: Reducible>(&mut self, x: &Tensor<T>) -> Result<&Tensor<f32>> {
        self.run(&T::MAX_ABS, 1, x)
    }
}

/// `sum_i x_i`, read back to the host (synchronises).
pub fn reduce_sum<T: Reducible>(x: &Tensor<T>) -> Result<f32> {
    Ok(Reducer::new(x.device())?.sum(x)?.to_host()?[0])
}

/// `max_i |x_i|`, read back to the host (synchronises); NaN if any element is NaN.
pub fn reduce_max_abs<T: Reducible>(x: &Tensor<T>) -> Result<f32> {
    Ok(Reducer::new(x.device())?.max_abs(x)?.to_host()?[0])
}
