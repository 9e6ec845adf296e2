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
pub mod atomic;
pub mod bench;
pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod model;
pub mod ops;
pub mod problem;
pub mod reference;
pub mod selftest;
pub mod tensor;
pub mod train;

pub use device::{Device, KArg, Kernel, LaunchConfig, PinnedBuffer, Schedule};
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
