//! The values of a training step that change from one step to the next, in device memory
//! (kernels/optim.cu, `step_vars_set`): the two hidden layers' dropout keys and the learning
//! rate. A captured step ([`crate::device::Graph`]) replays its kernels with the arguments
//! they were captured with, so those kernels read these values here instead
//! ([`crate::ops::DropoutKey::Device`], [`crate::ops::LossScaler::step_queued_at`]); setting them
//! is one launch, queued before each replay.

use crate::device::{KArg, Kernel, LaunchConfig};
use crate::reference::dropout_key;
use crate::{Device, Error, Result, Tensor};

const SET: Kernel = Kernel { module: "optim", name: "step_vars_set" };

/// kernels/optim.cu's StepVars: four 64-bit words (key 0, key 1, lr in the low half, unused).
#[derive(Debug)]
pub struct StepVars {
    t: Tensor<u64>,
}

impl StepVars {
    /// Device bytes of the values (for memory plans).
    pub const DEVICE_BYTES: usize = 32;

    /// Allocates the values on `dev`, zeroed (keys 0, learning rate 0) until [`StepVars::set`];
    /// an error only when the allocation fails.
    pub fn new(dev: &Device) -> Result<Self> {
        Ok(Self { t: Tensor::zeros(dev, &[4])? })
    }

    /// Queues the values of the step `step`: the dropout keys of `seeds` (one per hidden
    /// layer, as [`crate::ops::dropout_fwd`] derives them) and the learning rate (finite and
    /// >= 0, else an `Error::Invalid`).
    pub fn set(&mut self, seeds: [u64; 2], step: u64, lr: f32) -> Result<()> {
        crate::ops::optim::check_lr(lr)?;
        let dev = self.t.device().clone();
        let one = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: 0 };
        let [k0, k1] = seeds.map(|s| dropout_key(s, step));
        let args = [self.t.arg_mut(), KArg::I64(k0 as i64), KArg::I64(k1 as i64), KArg::F32(lr)];
        // SAFETY: (StepVars* v, unsigned long long key0, unsigned long long key1, float lr): the
        // 32-byte tensor of this struct.
        unsafe { dev.launch(&SET, one, &args) }
    }

    /// The values on the device (a read): the dropout keys and the learning rate.
    pub fn read(&self) -> Result<([u64; 2], f32)> {
        let w = self.t.to_host()?;
        Ok(([w[0], w[1]], f32::from_bits(w[2] as u32)))
    }

    /// Hidden layer `layer`'s dropout key, as a `const unsigned long long*` argument.
    pub(crate) fn key_arg(&self, dev: &Device, layer: usize) -> Result<KArg> {
        // Reachable from ops::dropout with any DropoutKey::Device: a bad layer is the caller's
        // error, not a broken invariant.
        if layer >= 2 {
            return Err(Error::Invalid(format!(
                "dropout key of hidden layer {layer}: StepVars holds the keys of layers 0 and 1"
            )));
        }
        self.t.check(dev, "step values", 4)?;
        Ok(KArg::Ptr(self.t.device_ptr() + 8 * layer as u64))
    }

    /// The learning rate, as a `const float*` argument.
    pub(crate) fn lr_arg(&self, dev: &Device) -> Result<KArg> {
        self.t.check(dev, "step values", 4)?;
        Ok(KArg::Ptr(self.t.device_ptr() + 16))
    }
}
