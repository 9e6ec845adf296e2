//! `vgg selftest`: every shipped kernel run on a device against the reference, at the
//! shapes of the shared problem list, with a table of errors and bounds. The integration
//! tests run the same checks on the emu device, so one body serves the emulator in CI and
//! the GPU when a session has one.

mod bulk;
mod cluster;
mod conv;
mod dense_gather;
mod dropout;
mod elementwise;
mod gemm;
mod input;
mod lrn;
mod optim;
mod primitives;
mod reduce;
mod softmax;

use crate::reference::Compare;
use crate::{Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

/// One line of the selftest table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckRow {
    /// What was checked: the kernel and its variant (e.g. `dense_gather_f16`), or the check's
    /// name for a row standing for the whole check.
    pub kernel: String,
    /// The problem's shape as text (`-` in a row standing for the whole check).
    pub shape: String,
    /// Largest absolute difference from the reference (NaN when the check did not run).
    pub max_abs: f64,
    /// `||got - want||_2 / ||want||_2` (NaN when the check did not run).
    pub rel_l2: f64,
    /// The bound as text (`exact`, `rel_l2 <= 1e-5`).
    pub bound: String,
    /// Within the bound (also true for a [`NOT_RUN`] row).
    pub pass: bool,
    /// First mismatch, when there is one: index, got, want.
    pub detail: Option<String>,
}

/// How a result must agree with its reference.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    /// Bit-for-bit equal values (NaN never equal).
    Exact,
    /// Relative L2 error and max |err| / max |ref| both under the given values.
    Rel { rel_l2: f64, max_rel: f64 },
}

impl CheckRow {
    /// The row of comparison `c` under `bound`.
    pub(crate) fn new(kernel: &str, shape: impl Into<String>, c: Compare, bound: Bound) -> Self {
        let (pass, text) = match bound {
            Bound::Exact => (c.first_bad.is_none() && c.max_abs == 0.0, "exact".to_string()),
            Bound::Rel { rel_l2, max_rel } => (
                c.rel_l2 <= rel_l2 && c.max_abs <= max_rel * c.max_ref,
                format!("rel_l2 <= {rel_l2:.0e}, max <= {max_rel:.0e}*max|ref|"),
            ),
        };
        let detail = c.first_bad.map(|(i, g, w)| format!("first mismatch at {i}: got {g}, want {w}"));
        Self {
            kernel: kernel.into(),
            shape: shape.into(),
            max_abs: c.max_abs,
            rel_l2: c.rel_l2,
            bound: text,
            pass,
            detail,
        }
    }
}

impl CheckRow {
    /// Whether the row ran and passed. A [`NOT_RUN`] row passes (the device could not run the
    /// check) but shows nothing about the kernels, so a test that asks for a check rejects it.
    pub fn ran_and_passed(&self) -> bool {
        self.pass && self.bound != NOT_RUN
    }
}

/// A named group of checks.
pub struct Check {
    /// The name `vgg selftest --only` takes, e.g. `gemm` or `conv_wino2x2`.
    pub name: &'static str,
    /// Runs the group's checks on a device: one row per kernel and shape.
    pub run: fn(&Device) -> Result<Vec<CheckRow>>,
}

/// Every check, in the order `vgg selftest` prints them.
pub const CHECKS: &[Check] = &[
    Check { name: "relu", run: elementwise::relu },
    Check { name: "bias_act", run: elementwise::bias_act },
    Check { name: "cast", run: elementwise::casts },
    Check { name: "maxpool", run: elementwise::maxpool },
    Check { name: "mma", run: primitives::mma },
    Check { name: "ldmatrix", run: primitives::ldmatrix },
    Check { name: "cp_async", run: primitives::cp_async },
    Check { name: "wgmma", run: primitives::wgmma },
    Check { name: "gemm", run: gemm::linear },
    Check { name: "gemm_conv1x1", run: gemm::conv1x1 },
    Check { name: "gemm_determinism", run: gemm::determinism },
    Check { name: "conv_direct", run: conv::direct },
    Check { name: "conv_wino2x2", run: conv::wino2x2 },
    Check { name: "conv_wino4x4", run: conv::wino4x4 },
    Check { name: "conv_wgrad", run: conv::wgrad_tc },
    Check { name: "conv_igemm_c8", run: conv::igemm_c8 },
    Check { name: "conv_wgmma", run: conv::wgmma },
    Check { name: "softmax_xent", run: softmax::softmax_xent },
    Check { name: "softmax_fwd", run: softmax::softmax_fwd },
    Check { name: "dropout", run: dropout::dropout },
    Check { name: "sgd", run: optim::sgd },
    Check { name: "amp_scaler", run: optim::amp_scaler },
    Check { name: "lrn", run: lrn::lrn },
    Check { name: "normalize_input", run: input::normalize_input },
    Check { name: "reduce", run: reduce::reduce },
    Check { name: "dense_gather", run: dense_gather::dense_gather },
    // The copy engine's checks last: on the GPU a copy that never lands traps (kernels/bulk.cuh)
    // and loses the process's CUDA context, failing every row after it.
    Check { name: "bulk", run: bulk::bulk },
    Check { name: "copy_probe", run: bulk::copy_probe },
    Check { name: "gemm_tma", run: gemm::linear_tma },
    Check { name: "conv_wgmma_tma", run: conv::wgmma_tma },
    // Clusters last of all: a cluster kernel whose barrier or multicast never completes traps the
    // same way, and their rows are the newest reading of the PTX ISA.
    Check { name: "cluster", run: cluster::cluster },
];

/// The bound of a row standing for a check that does not run on the device (its kernels'
/// tiles need more shared memory a block than the GPU has): neither passed nor failed.
pub const NOT_RUN: &str = "not run on this device";

/// Runs the named check (or all with `None`). An error (device failure, kernel error)
/// becomes a failing row naming the check; a check whose kernels do not fit the device
/// (`Error::Unsupported`) one row with the bound [`NOT_RUN`] and the reason.
pub fn run(dev: &Device, only: Option<&str>) -> Vec<CheckRow> {
    let mut rows = vec![];
    for c in CHECKS.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
        match (c.run)(dev) {
            Ok(r) => rows.extend(r),
            Err(crate::Error::Unsupported(why)) => rows.push(CheckRow {
                kernel: c.name.into(),
                shape: "-".into(),
                max_abs: f64::NAN,
                rel_l2: f64::NAN,
                bound: NOT_RUN.into(),
                pass: true,
                detail: Some(why),
            }),
            Err(e) => rows.push(CheckRow {
                kernel: c.name.into(),
                shape: "-".into(),
                max_abs: f64::NAN,
                rel_l2: f64::NAN,
                bound: "-".into(),
                pass: false,
                detail: Some(e.to_string()),
            }),
        }
    }
    rows
}

/// A workspace of exactly the bytes a workspace query asked for (`ws`, poisoned), followed
/// by a guard of a known pattern that a kernel writing past them changes: how a query that
/// under-counts shows on either device (the emulator has no bounds on global memory, and a
/// GPU's allocator rounds sizes up, so an overrun would go unnoticed there too).
pub struct GuardedWorkspace {
    base: std::sync::Arc<Tensor<u8>>,
    len: usize,
    /// The workspace to pass to the kernel: `len` bytes of 0xFF, a view of the guarded buffer.
    pub ws: Tensor<u8>,
}

impl GuardedWorkspace {
    const GUARD: usize = 4096;
    const PATTERN: u8 = 0xA5;

    /// A workspace of `len` bytes on `dev`, followed by the guard.
    pub fn new(dev: &Device, len: usize) -> crate::Result<Self> {
        let mut fill = vec![0xFF; len];
        fill.resize(len + Self::GUARD, Self::PATTERN);
        let base = std::sync::Arc::new(Tensor::from_host(dev, &[len + Self::GUARD], &fill)?);
        let ws = Tensor::view(&base, 0, &[len])?;
        Ok(Self { base, len, ws })
    }

    /// An error naming `what` if a kernel wrote into the guard.
    pub fn check(&self, what: &str) -> crate::Result<()> {
        let host = self.base.to_host()?;
        match host[self.len..].iter().position(|&b| b != Self::PATTERN) {
            None => Ok(()),
            Some(at) => Err(crate::Error::Kernel(format!(
                "{what}: wrote past its {}-byte workspace (guard byte {at} changed)",
                self.len
            ))),
        }
    }
}

/// Deterministic normal(0, 1) data for a check, already rounded to fp16 values.
pub(crate) fn randn_f16(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| half::f16::from_f32(rng.sample::<f32, _>(StandardNormal)).to_f32()).collect()
}

/// Deterministic small integers in [-r, r]: exact in fp16 and in fp32 sums of them.
pub(crate) fn small_ints(len: usize, r: i32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-r..=r) as f32).collect()
}
