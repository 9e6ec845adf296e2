//! 2-D TMA descriptors (CUtensorMap) for kernels' `cp.async.bulk.tensor` loads
//! (kernels/bulk.cuh, `tma_load_2d`): a row-major matrix of 16-bit elements read a box at a
//! time, optionally in the 128-byte swizzle the wgmma operands use. A kernel takes the map by
//! value (`const __grid_constant__ TmaDesc`, [`KArg::TensorMap`]): nothing to upload, and the
//! copy engine reads it from parameter space. On cuda the driver encodes it; on emu the
//! emulator's own 16 words (kernels/emu/runtime.cpp reads them) describe the same copy.

use super::{Backend, Device, KArg};
use crate::{ensure_shape, Result};

/// The emulator's tag in word 0 ("VGGTMAP2"), as kernels/emu/runtime.cpp checks it.
const EMU_MAGIC: u64 = 0x5647_4754_4d41_5032;

/// What a 2-D tensor map describes: the matrix (its base, `inner` elements a row, `outer`
/// rows, `row_stride` bytes between rows) and the box one load copies (`box_inner` x
/// `box_outer` elements), with the 128-byte swizzle or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap2dSpec {
    /// Elements of a row (16-bit each).
    pub inner: usize,
    /// Rows.
    pub outer: usize,
    /// Bytes from one row to the next: a multiple of 16, at least `2 * inner`.
    pub row_stride: usize,
    /// Elements of a box row: 1 to 256, a multiple of 8 (16 bytes); with the swizzle exactly 64
    /// (one 128-byte swizzle row).
    pub box_inner: usize,
    /// Rows of a box: 1 to 256.
    pub box_outer: usize,
    /// The 128-byte swizzle (16-byte chunk c of a box row r lands at chunk c ^ (r % 8)).
    pub swizzle128: bool,
}

impl TensorMap2dSpec {
    /// Bytes one load brings to shared memory (the whole box, zero-filled parts included).
    pub fn box_bytes(&self) -> usize {
        2 * self.box_inner * self.box_outer
    }

    fn check(&self, base: u64) -> Result<()> {
        let s = self;
        ensure_shape!(base.is_multiple_of(16), "tensor map: base address {base:#x} is not 16-byte aligned");
        ensure_shape!(
            s.inner >= 1 && s.outer >= 1 && s.inner <= 1 << 32 && s.outer <= 1 << 32,
            "tensor map: {} x {} elements (each 1 to 2^32)",
            s.outer,
            s.inner
        );
        ensure_shape!(
            s.row_stride.is_multiple_of(16) && s.row_stride >= 2 * s.inner && s.row_stride < 1 << 40,
            "tensor map: row stride {} bytes (a multiple of 16, at least a row's {} bytes, under 2^40)",
            s.row_stride,
            2 * s.inner
        );
        ensure_shape!(
            (1..=256).contains(&s.box_inner) && s.box_inner.is_multiple_of(8) && (1..=256).contains(&s.box_outer),
            "tensor map: box {} x {} elements (inner 8 to 256 in steps of 8, outer 1 to 256)",
            s.box_outer,
            s.box_inner
        );
        ensure_shape!(
            !s.swizzle128 || s.box_inner == 64,
            "tensor map: the 128-byte swizzle needs boxes 64 elements (128 bytes) wide, got {}",
            s.box_inner
        );
        Ok(())
    }
}

/// An encoded tensor map for the matrix at `base` (which must outlive the launches using it).
#[derive(Clone, Copy, Debug)]
pub struct TensorMap2d {
    words: [u64; 16],
    spec: TensorMap2dSpec,
}

impl TensorMap2d {
    /// Encodes `spec` for the matrix at device address `base` on `dev`; a spec the copy engine
    /// cannot take is an `Error::Shape` naming the field.
    pub fn new(dev: &Device, base: u64, spec: TensorMap2dSpec) -> Result<Self> {
        spec.check(base)?;
        let s = spec;
        let words = match &dev.0.backend {
            Backend::Cuda(c) => c.encode_tensor_map_2d(
                base,
                [s.inner as u64, s.outer as u64],
                s.row_stride as u64,
                [s.box_inner as u32, s.box_outer as u32],
                s.swizzle128,
            )?,
            Backend::Emu(_) => {
                let mut w = [0u64; 16];
                let fields = [s.inner, s.outer, s.row_stride, s.box_inner, s.box_outer];
                w[0] = EMU_MAGIC;
                w[1] = base;
                for (i, v) in fields.into_iter().enumerate() {
                    w[2 + i] = v as u64;
                }
                w[7] = if s.swizzle128 { 3 } else { 0 };
                w[8] = 2;
                w
            }
        };
        Ok(Self { words, spec })
    }

    /// What it describes.
    pub fn spec(&self) -> TensorMap2dSpec {
        self.spec
    }

    /// The map as a kernel argument (`const __grid_constant__ TmaDesc`).
    pub fn arg(&self) -> KArg {
        KArg::TensorMap(self.words)
    }
}
