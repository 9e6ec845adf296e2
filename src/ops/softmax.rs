//! Softmax cross-entropy, forward and backward in one launch, with top-1 / top-5 counts
//! (kernels/softmax.cu), as [`crate::reference::softmax_xent_fwd`] / `_bwd` / `topk_hits`;
//! and evaluation's forward-only softmax, [`softmax_fwd`], as [`crate::reference::softmax_fwd`].
//!
//! Nothing is read back during the step: the loss, the hit counts and any bad label land
//! in a small device status buffer ([`XentBuffers`]) that the host reads when it wants,
//! with [`XentBuffers::check`]. A label outside `[0, classes)` is sticky there (counted,
//! first row kept) until [`XentBuffers::clear`], so training can check once per N steps
//! and still name the first offending row; [`XentBuffers::check_once`] clears it once reported.
//!
//! Not in place: an output depends on its whole row, which the kernels sweep three times (today
//! each thread's last read of an element comes before its write, but that is not part of their
//! contract), so `dlogits` and `probs` may not overlap the logits or the labels. The
//! [`XentBuffers`] are allocations of their own, which no view can overlap.

use super::int;
use super::optim::LossScaler;
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::tensor::check_disjoint;
use crate::{ensure_shape, DType, Device, Error, Result, Tensor};
use half::f16;

const FINISH: Kernel = Kernel { module: "softmax", name: "softmax_xent_finish" };
/// Threads of the per-row kernel and of the finishing block.
const THREADS: u32 = 256;
const STATUS_WORDS: usize = 8;

/// Logit element types the loss and [`softmax_fwd`] accept: fp16 (the network's output) or fp32.
/// Sealed through [`DType`] (only this crate's types are DTypes, so only this crate can implement
/// its own trait for them): the kernel an implementation names reads its tensors as that type.
pub trait XentLogit: DType {
    #[doc(hidden)]
    const KERNEL: Kernel;
    #[doc(hidden)]
    const FWD: Kernel;
}
impl XentLogit for f16 {
    const KERNEL: Kernel = Kernel { module: "softmax", name: "softmax_xent_f16" };
    const FWD: Kernel = Kernel { module: "softmax", name: "softmax_fwd_f16" };
}
impl XentLogit for f32 {
    const KERNEL: Kernel = Kernel { module: "softmax", name: "softmax_xent_f32" };
    const FWD: Kernel = Kernel { module: "softmax", name: "softmax_fwd_f32" };
}

/// What one loss launch measured, read back by [`XentBuffers::check`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentStats {
    /// Mean cross-entropy over the batch (unscaled), fp32.
    pub loss: f32,
    /// Rows whose label is the top-1 class (a tie goes to the lower class index, as in the reference).
    pub top1: usize,
    /// Rows whose label is among the top 5.
    pub top5: usize,
    /// The batch size of that launch.
    pub rows: usize,
}

/// Per-row scratch (loss, rank of the label) for up to `batch` rows, and the status words
/// the finishing kernel writes. Allocate once per batch size and reuse every step.
#[derive(Debug)]
pub struct XentBuffers {
    row_loss: Tensor<f32>,
    row_rank: Tensor<i32>,
    status: Tensor<i32>,
}

impl XentBuffers {
    /// Buffers for batches of up to `batch` rows, status cleared.
    pub fn new(dev: &Device, batch: usize) -> Result<Self> {
        ensure_shape!(batch > 0, "softmax_xent: batch must be at least 1");
        Ok(Self {
            row_loss: Tensor::empty(dev, &[batch])?,
            row_rank: Tensor::empty(dev, &[batch])?,
            status: Tensor::zeros(dev, &[STATUS_WORDS])?,
        })
    }

    /// Device bytes of the buffers for `batch` rows (for memory plans).
    pub fn device_bytes(batch: usize) -> usize {
        4 * (2 * batch + STATUS_WORDS)
    }

    /// The largest batch these buffers take.
    pub fn capacity(&self) -> usize {
        self.row_loss.len()
    }

    /// Forgets a recorded bad label (and the last launch's numbers).
    pub fn clear(&mut self) -> Result<()> {
        self.status.copy_from_host(&[0; STATUS_WORDS])
    }

    /// As [`check`](Self::check), and a bad label it reports is then forgotten (the status
    /// cleared): each is reported once, and the launches after it report their own.
    pub fn check_once(&mut self) -> Result<XentStats> {
        let r = self.check();
        if matches!(r, Err(Error::Invalid(_))) {
            self.clear()?;
        }
        r
    }

    /// Reads the status (a device-to-host copy, so it waits for the launches before it):
    /// the last launch's loss and hit counts, or an `Error::Invalid` naming the first row whose
    /// label was outside `[0, classes)` in any launch since the last [`clear`](Self::clear).
    pub fn check(&self) -> Result<XentStats> {
        let s = self.status.to_host()?;
        if s[4] > 0 {
            return Err(Error::Invalid(format!(
                "softmax_xent: label {} of row {} is not in 0..{} ({} bad rows since the status was cleared)",
                s[6], s[5], s[7], s[4]
            )));
        }
        Ok(XentStats {
            loss: f32::from_bits(s[0] as u32),
            top1: s[1] as usize,
            top5: s[2] as usize,
            rows: s[3] as usize,
        })
    }
}

/// Softmax cross-entropy of `logits` `[batch, classes]` against `labels` `[batch]`.
///
/// Writes, when `dlogits` is given, `dlogits = (softmax(logits) - onehot) * loss_scale /
/// batch` in fp16 (the gradient of the scaled mean loss), and into `bufs` the mean loss and
/// the top-1 / top-5 hit counts ([`XentBuffers::check`] reads them). fp32 math throughout;
/// a row with a bad label gets a NaN loss and a NaN gradient (so that a training step's overflow
/// check skips the update) and is reported by `check`.
///
/// Accuracy against the f64 reference of the same logits: relative 1e-6 on the loss, plus the
/// fp32 rounding of each row's `z - max` (up to one fp32 ulp of it, `|z - max| * 2^-23`:
/// fp32 logits spread over tens of units make it visible on a confident row's small loss);
/// dlogits within one fp16 ulp; hit counts exact.
pub fn softmax_xent<T: XentLogit>(
    logits: &Tensor<T>,
    labels: &Tensor<i32>,
    dlogits: Option<&mut Tensor<f16>>,
    loss_scale: f32,
    bufs: &mut XentBuffers,
) -> Result<()> {
    if !(loss_scale.is_finite() && loss_scale > 0.0) {
        return Err(Error::Invalid(format!("softmax_xent: loss_scale {loss_scale} must be positive and finite")));
    }
    xent(logits, labels, dlogits, loss_scale, KArg::Ptr(0), bufs)
}

/// As [`softmax_xent`], with the loss scale `scaler` keeps on the device (its state as of the
/// work queued before), so that a queued training step reads nothing back
/// ([`LossScaler::step_queued`]).
pub fn softmax_xent_device_scale<T: XentLogit>(
    logits: &Tensor<T>,
    labels: &Tensor<i32>,
    dlogits: Option<&mut Tensor<f16>>,
    scaler: &LossScaler,
    bufs: &mut XentBuffers,
) -> Result<()> {
    xent(logits, labels, dlogits, 1.0, scaler.device_state_arg(logits.device())?, bufs)
}

/// `scale`: null, or the device AmpState whose first word is the loss scale.
fn xent<T: XentLogit>(
    logits: &Tensor<T>,
    labels: &Tensor<i32>,
    dlogits: Option<&mut Tensor<f16>>,
    loss_scale: f32,
    scale: KArg,
    bufs: &mut XentBuffers,
) -> Result<()> {
    let dev = logits.device().clone();
    let [batch, classes] = *logits.shape() else {
        return Err(Error::Shape(format!("softmax_xent: logits must be [batch, classes], got {:?}", logits.shape())));
    };
    ensure_shape!(batch > 0 && classes > 0, "softmax_xent: empty logits {:?}", logits.shape());
    ensure_shape!(
        batch <= bufs.capacity(),
        "softmax_xent: batch {batch} exceeds the buffers' capacity {}",
        bufs.capacity()
    );
    labels.check_shape(&dev, "softmax_xent labels", &[batch])?;
    bufs.status.check(&dev, "softmax_xent status", STATUS_WORDS)?;
    let dz = match dlogits {
        Some(d) => {
            d.check_shape(&dev, "softmax_xent dlogits (logits' shape)", &[batch, classes])?;
            check_disjoint("softmax_xent", &[d.span("dlogits")], &[logits.span("logits"), labels.span("labels")])?;
            d.arg_mut()
        }
        None => KArg::Ptr(0),
    };
    let (b, c) = (int("batch", batch)?, int("classes", classes)?);
    let coef = loss_scale / batch as f32;
    let row = LaunchConfig {
        grid: LaunchConfig::grid_of("softmax_xent", batch, 1, 1)?,
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    };
    let args = [
        logits.arg(),
        labels.arg(),
        dz,
        bufs.row_loss.arg_mut(),
        bufs.row_rank.arg_mut(),
        KArg::I32(c),
        KArg::F32(coef),
        scale,
        KArg::I32(b),
    ];
    // SAFETY: (const T* logits, const int* labels, __half* dlogits or null, float* row_loss,
    // int* row_rank, int classes, float coef, const float* scale or null, int batch):
    // batch*classes logits and dlogits, batch labels, and buffers of at least batch rows
    // (checked); scale a live AmpState of this device (device_state_arg checks); one block a row.
    unsafe { dev.launch(&T::KERNEL, row, &args)? };
    let one = LaunchConfig { grid: (1, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
    let args =
        [bufs.row_loss.arg(), bufs.row_rank.arg(), labels.arg(), bufs.status.arg_mut(), KArg::I32(b), KArg::I32(c)];
    // SAFETY: (const float* row_loss, const int* row_rank, const int* labels, int* status,
    // int batch, int classes): batch rows written by the launch above, 8 status words.
    unsafe { dev.launch(&FINISH, one, &args) }
}

/// The softmax of every row of `logits` (`[rows, classes]`) into `probs` (the same shape,
/// fp32): `p = exp(z - max_row) / sum_row exp(z - max_row)`, so logits of any magnitude are
/// safe. From fp16 logits p is within a few fp32 ulps of the exact posterior; fp32 logits
/// add the rounding of `z - max`, `|z - max| * 2^-24` relative. A NaN logit makes its row NaN.
pub fn softmax_fwd<T: XentLogit>(logits: &Tensor<T>, probs: &mut Tensor<f32>) -> Result<()> {
    let dev = logits.device().clone();
    let [rows, classes] = *logits.shape() else {
        return Err(Error::Shape(format!("softmax_fwd: logits must be [rows, classes], got {:?}", logits.shape())));
    };
    ensure_shape!(rows > 0 && classes > 0, "softmax_fwd: empty logits {:?}", logits.shape());
    probs.check_shape(&dev, "softmax_fwd probs (logits' shape)", &[rows, classes])?;
    check_disjoint("softmax_fwd", &[probs.span("probs")], &[logits.span("logits")])?;
    // A warp at least (the block reductions work on whole warps), no idle warps on few classes.
    let threads = (classes.next_multiple_of(32) as u32).min(THREADS);
    let cfg = LaunchConfig { grid: (int("rows", rows)? as u32, 1, 1), block: (threads, 1, 1), shared_bytes: 0 };
    // SAFETY: (const T* logits, float* probs, int classes): rows*classes elements each
    // (checked), one block a row, a multiple of 32 threads.
    unsafe { dev.launch(&T::FWD, cfg, &[logits.arg(), probs.arg_mut(), KArg::I32(int("classes", classes)?)]) }
}
