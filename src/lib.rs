//! vgg-cuda: hand-tuned CUDA kernels for VGG training, with a Rust host layer.
//!
//! Kernels live in `kernels/*.cu`. They run on a [`Device`]: an NVIDIA GPU (`cuda`,
//! through cudarc, needs compute capability 8.0+) or the CPU emulator (`emu`), which runs
//! the same source with CUDA's semantics. [`ops`] holds the typed launchers, [`mod@reference`]
//! the f64 oracle they are tested against, [`problem`] the shared shape list.
//!
//! ```
//! use vgg_cuda::{ops, Device, Tensor};
//! let dev = Device::emu();
//! let x = Tensor::from_f32(&dev, &[1, 2, 2, 1], &[-1.0, 2.0, 3.0, -4.0])?;
//! let mut y = Tensor::empty(&dev, &[1, 2, 2, 1])?;
//! ops::relu_fwd(&x, &mut y)?;
//! assert_eq!(y.to_f32()?, vec![0.0, 2.0, 3.0, 0.0]);
//! # Ok::<(), vgg_cuda::Error>(())
//! ```
//!
//! Where to start, by use:
//! - **A kernel call:** [`ops::conv::Conv3x3`] (3x3 fprop, dgrad and wgrad with a typed problem,
//!   an algorithm choice and a workspace query), the GEMMs ([`ops::linear_fwd`] and its
//!   backward twins, which also serve 1x1 convolutions), and the training kernels around them
//!   ([`ops::softmax_xent`], [`ops::dropout()`], [`ops::Sgd`] with [`ops::LossScaler`], ...).
//!   `examples/kernel_call.rs` runs one conv against the reference.
//! - **A network:** [`model::Vgg`] builds configs A to E ([`model::VggConfig`]), runs forward
//!   and whole mixed-precision training steps, and imports or exports torchvision-named
//!   weights; `examples/library_forward.rs` loads weights and classifies one image.
//! - **The pipeline around it:** [`data`] (ImageFolder, the paper's transforms, the threaded
//!   loader), [`train::run`] and [`eval`] (what `vgg train` and `vgg eval` run), and
//!   [`mod@bench`] (the measurements behind `vgg bench`).

// Every public item of the library is documented; an undocumented one fails the build.
#![deny(missing_docs)]

pub mod atomic;
pub mod bench;
pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod lockfile;
pub mod model;
pub mod ops;
pub mod problem;
pub mod reference;
pub mod selftest;
pub mod tensor;
pub mod train;

pub use device::{Device, KArg, Kernel, LaunchConfig, PinnedBuffer, Schedule};
pub use error::{Error, Result};
/// The `half` crate, whose [`f16`](half::f16) is the element type of fp16 tensors
/// (`Tensor<f16>`): `use vgg_cuda::half::f16;` names it without a dependency of your own.
pub use half;
pub use tensor::{DType, Tensor};
