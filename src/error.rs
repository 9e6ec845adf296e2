//! The library's error type. Every failure a user can cause or meet through the device, the
//! tensors, the ops and the model (no GPU, a bad shape or layout, a misaligned view, a size that
//! overflows, a bad hyper-parameter or label, a kernel that broke a CUDA rule on the emulator)
//! is a value, not a panic; a panic there is a bug. The exception is [`crate::reference`], the
//! test oracle, which asserts its preconditions.

/// Errors of the vgg-cuda library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA device cannot be used on this machine; the message says exactly why.
    #[error("CUDA device unavailable: {0}")]
    DeviceUnavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver {
        /// The driver function, such as `cuMemAllocAsync`.
        call: &'static str,
        /// The driver's error, as cudarc words it.
        message: String,
    },
    /// The kernel's module has no code this GPU can run (e.g. built without NVRTC).
    #[error("kernel module `{module}` cannot be loaded: {reason}")]
    ModuleUnavailable {
        /// The `kernels/<module>.cu` file stem.
        module: &'static str,
        /// Why no code could be loaded.
        reason: String,
    },
    /// A kernel failed on the device (on emu: a broken CUDA rule such as a divergent barrier).
    #[error("{0}")]
    Kernel(String),
    /// An allocation the device cannot satisfy: the GPU's memory (cuda) or the host's (emu).
    /// The message gives the size asked for.
    #[error("{0}")]
    OutOfMemory(String),
    /// Arguments that do not fit together or within the library's limits: tensor shapes and
    /// layouts, lengths, a view's 16-byte alignment, sizes that overflow, a model config's
    /// dimensions, an op's output that overlaps another of its tensors in device memory (views
    /// of one buffer); also a call the device's current state refuses (while capturing a graph).
    #[error("invalid shape: {0}")]
    Shape(String),
    /// The device cannot run a launch within its limits (shared memory a block): the kernel
    /// is fine, the GPU too small for its tile; a plan with other kernels may run.
    #[error("{0}")]
    Unsupported(String),
    /// A value outside those accepted: a name or option (a config, an init; the message lists
    /// them), an optimizer hyper-parameter or loss scale, a dropout probability, an input mean or
    /// std, LRN constants, a label outside `0..classes`, a dropout key's layer, a non-finite
    /// imported weight. The message names the value.
    #[error("{0}")]
    Invalid(String),
    /// A tensor (named by the op: `conv3x3 x (NHWC)`) belongs to another device than an operand
    /// the op checked before it (its first input, as a rule): one op's tensors must share one
    /// device, and either of the two may be the misplaced one. Both devices may have one name
    /// (two `Device::emu()` calls, two `Device::cuda(0)`: two devices, neither of which can use
    /// the other's memory); the message then says so.
    #[error(
        "{tensor} is on device {found}, but {other} is on {expected}: one op's tensors must share one device{}",
        same_name_hint(.found, .expected)
    )]
    WrongDevice {
        /// The tensor, as the op names it.
        tensor: String,
        /// The device of the operand checked before it ([`crate::Device::name`]).
        expected: String,
        /// What is on `expected`: "an operand checked before it", or "the model" for a
        /// model's input.
        other: String,
        /// The tensor's device.
        found: String,
    },
}

/// The library's result: [`Error`] unless another error type is given.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn same_name_hint(found: &str, expected: &str) -> &'static str {
    if found == expected {
        " (two devices of one name: each Device::emu() or Device::cuda(n) call makes another; share one by cloning it)"
    } else {
        ""
    }
}

/// Shape check helper: `ensure_shape!(cond, "fmt", args)` returns `Error::Shape` when `cond` is
/// false. Exported only because the crate's modules reach it by path; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Error::Shape(format!($($fmt)+)));
        }
    };
}
