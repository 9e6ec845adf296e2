//! TMA descriptors (CUtensorMap) for kernels' `cp.async.bulk.tensor` loads (kernels/bulk.cuh,
//! `tma_load_2d` / `tma_load_4d`): a tensor of 16-bit elements read a box at a time, optionally
//! in the 128-byte swizzle the wgmma operands use; 2-D maps of matrices ([`TensorMap2dSpec`])
//! and any rank up to 5 ([`TensorMapSpec`]). A kernel takes the map by
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

    /// The same map as a [`TensorMapSpec`].
    pub fn nd(&self) -> TensorMapSpec {
        TensorMapSpec {
            dims: vec![self.inner, self.outer],
            strides: vec![self.row_stride],
            boxd: vec![self.box_inner, self.box_outer],
            swizzle128: self.swizzle128,
        }
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

/// Any tensor map the copy engine takes: rank 1 to 5, dimensions innermost (contiguous) first,
/// 16-bit elements. A 4-D map of an NHWC tensor (C, W, H, N) loads a convolution's input
/// window, its zero padding from coordinates outside the tensor (negative ones included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// Elements along each dimension, innermost first: 1 to 2^32 each.
    pub dims: Vec<usize>,
    /// Bytes from one index to the next along dimensions 1 and up (one fewer than `dims`):
    /// multiples of 16 below 2^40, each at least the one below times that dimension's extent
    /// (the first at least a row's bytes), so that no two elements share bytes.
    pub strides: Vec<usize>,
    /// The box's extent along each dimension: 1 to 256; the innermost a multiple of 8 (16
    /// bytes), exactly 64 with the swizzle.
    pub boxd: Vec<usize>,
    /// The 128-byte swizzle (16-byte chunk c of the box's 128-byte row r lands at c ^ (r % 8)).
    pub swizzle128: bool,
}

impl TensorMapSpec {
    /// Bytes one load brings to shared memory (the whole box, zero-filled parts included).
    pub fn box_bytes(&self) -> usize {
        2 * self.boxd.iter().product::<usize>()
    }

    fn check(&self, base: u64) -> Result<()> {
        let s = self;
        let rank = s.dims.len();
        ensure_shape!(
            (1..=5).contains(&rank) && s.strides.len() + 1 == rank && s.boxd.len() == rank,
            "tensor map: rank {rank} with {} strides and {} box extents (rank 1 to 5, one stride fewer)",
            s.strides.len(),
            s.boxd.len()
        );
        ensure_shape!(base.is_multiple_of(16), "tensor map: base address {base:#x} is not 16-byte aligned");
        ensure_shape!(
            s.dims.iter().all(|&d| (1..=1 << 32).contains(&d)),
            "tensor map: dimensions {:?} (each 1 to 2^32)",
            s.dims
        );
        // Each stride spans at least the dimension below it, so that no two elements share bytes.
        let spans = (0..s.strides.len()).all(|i| {
            let below = if i == 0 { 2 * s.dims[0] } else { s.strides[i - 1] * s.dims[i] };
            s.strides[i] >= below
        });
        ensure_shape!(
            spans && s.strides.iter().all(|&st| st.is_multiple_of(16) && st < 1 << 40),
            "tensor map: strides {:?} bytes (multiples of 16 under 2^40, each spanning the dimension below: \
             the first at least a row's {} bytes)",
            s.strides,
            2 * s.dims[0]
        );
        ensure_shape!(
            s.boxd.iter().all(|&b| (1..=256).contains(&b)) && s.boxd[0].is_multiple_of(8),
            "tensor map: box {:?} elements (each 1 to 256, the innermost a multiple of 8)",
            s.boxd
        );
        ensure_shape!(
            !s.swizzle128 || s.boxd[0] == 64,
            "tensor map: the 128-byte swizzle needs boxes 64 elements (128 bytes) wide, got {}",
            s.boxd[0]
        );
        Ok(())
    }
}

/// An encoded tensor map for the tensor at `base` (which must outlive the launches using it).
#[derive(Clone, Copy, Debug)]
pub struct TensorMap {
    words: [u64; 16],
    box_bytes: usize,
}

impl TensorMap {
    /// Encodes `spec` for the tensor at device address `base` on `dev`; a spec the copy engine
    /// cannot take is an `Error::Shape` naming the field.
    pub fn new(dev: &Device, base: u64, spec: &TensorMapSpec) -> Result<Self> {
        spec.check(base)?;
        let s = spec;
        let words = match &dev.0.backend {
            Backend::Cuda(c) => {
                let dims: Vec<u64> = s.dims.iter().map(|&d| d as u64).collect();
                let strides: Vec<u64> = s.strides.iter().map(|&d| d as u64).collect();
                let boxd: Vec<u32> = s.boxd.iter().map(|&d| d as u32).collect();
                c.encode_tensor_map(base, &dims, &strides, &boxd, s.swizzle128)?
            }
            Backend::Emu(_) => {
                // kernels/emu/runtime.cpp's layout: magic, base, rank, swizzle, element bytes,
                // 5 dimensions, 4 strides, the box's 5 extents as 16-bit fields.
                let mut w = [0u64; 16];
                w[0] = EMU_MAGIC;
                w[1] = base;
                w[2] = s.dims.len() as u64;
                w[3] = if s.swizzle128 { 3 } else { 0 };
                w[4] = 2;
                for (i, &d) in s.dims.iter().enumerate() {
                    w[5 + i] = d as u64;
                }
                for (i, &st) in s.strides.iter().enumerate() {
                    w[10 + i] = st as u64;
                }
                for (i, &b) in s.boxd.iter().enumerate() {
                    w[14 + i / 4] |= (b as u64) << (16 * (i % 4));
                }
                w
            }
        };
        Ok(Self { words, box_bytes: spec.box_bytes() })
    }

    /// [`TensorMap::new`] of a 2-D spec.
    pub fn new_2d(dev: &Device, base: u64, spec: TensorMap2dSpec) -> Result<Self> {
        spec.check(base)?;
        Self::new(dev, base, &spec.nd())
    }

    /// Bytes one load brings to shared memory.
    pub fn box_bytes(&self) -> usize {
        self.box_bytes
    }

    /// The map as a kernel argument (`const __grid_constant__ TmaDesc`).
    pub fn arg(&self) -> KArg {
        KArg::TensorMap(self.words)
    }
}
