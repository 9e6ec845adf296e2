//! Typed device tensors. A `Tensor<T>` owns one allocation on one [`Device`], or is a view
//! into a byte tensor's ([`Tensor::view`]: how a model's memory plan places its buffers in
//! one arena), and knows its shape; activations are NHWC, filters KRSC (see
//! [`crate::problem`]). Element types are the ones the kernels use: `f16` (storage and
//! tensor-core inputs), `f32` (master weights, accumulators), `u8` (images) and `i32` (labels).

use crate::device::{Device, KArg};
use crate::{Error, Result};
use half::f16;
use std::sync::Arc;

/// An element type that can live in a device tensor: one of the five below, no other. Sealed:
/// the launchers trust a tensor's element type to be what its kernel reads, so outside
/// implementations could make a kernel read past a buffer.
///
/// ```compile_fail,E0277
/// #[derive(Clone, Copy, Default, Debug, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Wide([u64; 8]);
/// impl vgg_cuda::DType for Wide {
///     const NAME: &'static str = "wide";
/// }
/// ```
pub trait DType: sealed::Sealed + bytemuck::Pod + Default + std::fmt::Debug + Send + Sync + 'static {
    /// The type's name in messages: `f16`, `f32`, `u8`, `i32` or `u64`.
    const NAME: &'static str;
}

/// The private supertrait that keeps [`DType`] (and through it every trait built on it) to this
/// crate's implementations.
mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
    impl Sealed for u8 {}
    impl Sealed for i32 {}
    impl Sealed for u64 {}
}

impl DType for f16 {
    const NAME: &'static str = "f16";
}
impl DType for f32 {
    const NAME: &'static str = "f32";
}
impl DType for u8 {
    const NAME: &'static str = "u8";
}
impl DType for i32 {
    const NAME: &'static str = "i32";
}
impl DType for u64 {
    const NAME: &'static str = "u64";
}

/// Byte alignment [`Tensor::view`] requires of an offset: the widest access of any kernel.
pub const VIEW_ALIGN: usize = 16;

/// A contiguous, row-major tensor on a device.
pub struct Tensor<T: DType> {
    device: Device,
    ptr: u64,
    shape: Vec<usize>,
    /// A view's allocation, kept alive by the view; `None` when the tensor owns `ptr`.
    base: Option<Arc<Tensor<u8>>>,
    _t: std::marker::PhantomData<T>,
}

impl<T: DType> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}>{:?} on {}", T::NAME, self.shape, self.device.name())
    }
}

impl<T: DType> Tensor<T> {
    /// An uninitialised tensor (its contents are unspecified: poison or fill it before reading).
    pub fn empty(device: &Device, shape: &[usize]) -> Result<Self> {
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = len.and_then(|l| l.checked_mul(std::mem::size_of::<T>()));
        let bytes = bytes.ok_or_else(|| Error::Shape(format!("tensor shape {shape:?} overflows")))?;
        let ptr = device.alloc(bytes)?;
        Ok(Self { device: device.clone(), ptr, shape: shape.to_vec(), base: None, _t: Default::default() })
    }

    /// A tensor of `shape` at byte `offset` of `base`, sharing its memory (nothing is copied,
    /// and dropping the view frees nothing). Views of one base may overlap: whoever makes them
    /// decides which is valid when (a [`crate::model::MemoryPlan`] gives overlapping buffers
    /// disjoint lifetimes); a kernel writing one overwrites the others. Within one launch the ops
    /// refuse, with an `Error::Shape` naming both tensors, an output that shares a byte with
    /// another of their tensors (an input, another output, the workspace): see
    /// [`Tensor::overlaps`]. Only the ops documented to run in place take an output that is
    /// exactly one of their inputs (the same bytes, as `y` and `x` of [`crate::ops::relu_fwd`]).
    ///
    /// `offset` must be a multiple of [`VIEW_ALIGN`] (16) bytes, as allocations are (256): the
    /// kernels load and store 16-byte vectors, which fault on a GPU at a lesser alignment.
    pub fn view(base: &Arc<Tensor<u8>>, offset: usize, shape: &[usize]) -> Result<Self> {
        if !offset.is_multiple_of(VIEW_ALIGN) {
            return Err(Error::Shape(format!(
                "a {} view {shape:?} at byte {offset}: the offset must be a multiple of {VIEW_ALIGN} bytes \
                 (the kernels' 16-byte vector accesses)",
                T::NAME
            )));
        }
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let end = len.and_then(|l| l.checked_mul(std::mem::size_of::<T>())).and_then(|b| b.checked_add(offset));
        match end {
            Some(end) if end <= base.bytes() => Ok(Self {
                device: base.device.clone(),
                ptr: base.ptr + offset as u64,
                shape: shape.to_vec(),
                base: Some(base.clone()),
                _t: Default::default(),
            }),
            _ => Err(Error::Shape(format!(
                "a {} view {shape:?} at byte {offset} does not fit in a base of {} bytes",
                T::NAME,
                base.bytes()
            ))),
        }
    }

    /// A tensor holding `data`, which must have the shape's number of elements.
    pub fn from_host(device: &Device, shape: &[usize], data: &[T]) -> Result<Self> {
        let t = Self::empty(device, shape)?;
        if data.len() != t.len() {
            return Err(Error::Shape(format!(
                "{} values given for shape {shape:?} ({} elements)",
                data.len(),
                t.len()
            )));
        }
        // SAFETY: the allocation spans exactly len() elements.
        unsafe { device.htod(t.ptr, bytemuck::cast_slice(data))? };
        Ok(t)
    }

    /// A tensor with every element set to zero.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Self> {
        let t = Self::empty(device, shape)?;
        // SAFETY: the allocation spans bytes() bytes.
        unsafe { device.memset(t.ptr, 0, t.bytes())? };
        Ok(t)
    }

    /// Copies the tensor to the host.
    pub fn to_host(&self) -> Result<Vec<T>> {
        let mut v = vec![T::default(); self.len()];
        // SAFETY: the allocation spans exactly len() elements.
        unsafe { self.device.dtoh(bytemuck::cast_slice_mut(&mut v), self.ptr)? };
        Ok(v)
    }

    /// Overwrites the tensor with host data of the same length.
    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::Shape(format!("{} values given for tensor of {} elements", data.len(), self.len())));
        }
        // SAFETY: the allocation spans exactly len() elements.
        unsafe { self.device.htod(self.ptr, bytemuck::cast_slice(data)) }
    }

    /// Sets every byte to 0xFF: NaN for f16 and f32, so that an element a kernel forgot to
    /// write shows up in any comparison.
    pub fn poison(&mut self) -> Result<()> {
        // SAFETY: the allocation spans bytes() bytes.
        unsafe { self.device.memset(self.ptr, 0xFF, self.bytes()) }
    }

    /// The dimensions, outermost first (`[n, h, w, c]` for an NHWC activation).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Elements: the product of the shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Size in bytes: `len() * size_of::<T>()`.
    pub fn bytes(&self) -> usize {
        self.len() * std::mem::size_of::<T>()
    }
    /// The device the tensor's memory lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The raw device address (for custom kernels launched through [`Device::launch`]).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// This tensor as a kernel argument.
    pub fn arg(&self) -> KArg {
        KArg::Ptr(self.ptr)
    }
    /// This tensor as a kernel argument the kernel writes (takes `&mut` so that the
    /// borrow checker sees the write).
    pub fn arg_mut(&mut self) -> KArg {
        KArg::Ptr(self.ptr)
    }

    /// Whether this tensor and `other` share a byte of device memory: two views of one base
    /// whose byte ranges intersect, or a view and its base. Tensors on different devices, and
    /// empty tensors, share nothing.
    pub fn overlaps<U: DType>(&self, other: &Tensor<U>) -> bool {
        self.span("").overlaps(&other.span(""))
    }

    /// This tensor's bytes, named `what` in the errors of [`check_disjoint`].
    pub(crate) fn span<'a>(&'a self, what: &'a str) -> Span<'a> {
        Span { what, device: Some(&self.device), start: self.ptr, end: self.ptr + self.bytes() as u64, in_place: false }
    }

    /// Reinterprets the shape (same number of elements).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(self.len()) {
            return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Errors unless this tensor lives on `device` and has exactly `shape`; `what` names the
    /// tensor and its layout (`conv3x3 x (NHWC)`), so that a tensor of the right size in another
    /// layout (NCHW for NHWC) is named with both shapes rather than read wrongly.
    pub fn check_shape(&self, device: &Device, what: &str, shape: &[usize]) -> Result<()> {
        self.check_device(device, what)?;
        if self.shape != shape {
            return Err(Error::Shape(format!("{what} must have shape {shape:?}, got {:?}", self.shape)));
        }
        Ok(())
    }

    /// Errors unless this tensor lives on `device` and has `len` elements (for element-wise ops,
    /// to which the shape does not matter).
    pub fn check(&self, device: &Device, what: &str, len: usize) -> Result<()> {
        self.check_device(device, what)?;
        if self.len() != len {
            return Err(Error::Shape(format!(
                "{what} has {} elements (shape {:?}), expected {len}",
                self.len(),
                self.shape
            )));
        }
        Ok(())
    }

    /// Errors unless this tensor (`what`) lives on `device`.
    fn check_device(&self, device: &Device, what: &str) -> Result<()> {
        if !self.device.same(device) {
            return Err(wrong_device(what, device, &self.device));
        }
        Ok(())
    }
}

/// The error for a tensor (`what`) on `found` given to an op on `expected`, naming the tensor
/// (the message says when both devices have one name, which the names alone would not show).
pub(crate) fn wrong_device(what: &str, expected: &Device, found: &Device) -> Error {
    Error::WrongDevice {
        tensor: what.to_string(),
        expected: expected.name(),
        other: "an operand checked before it".into(),
        found: found.name(),
    }
}

/// The device bytes `[start, end)` of one tensor of a launch, named for the error of
/// [`check_disjoint`]. An input marked [`Span::in_place`] may be exactly an output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    what: &'a str,
    /// `None`: no tensor (an optional argument not given), which overlaps nothing.
    device: Option<&'a Device>,
    start: u64,
    end: u64,
    in_place: bool,
}

impl<'a> Span<'a> {
    /// `t`'s bytes, or none when `t` is `None` (an optional tensor not given).
    pub(crate) fn of<T: DType>(t: Option<&'a Tensor<T>>, what: &'a str) -> Self {
        t.map_or(Span { what, device: None, start: 0, end: 0, in_place: false }, |t| t.span(what))
    }

    /// This input may be the very bytes of an output (the kernel reads each element before it
    /// writes that element, and no other thread reads it): the op runs in place. A partial
    /// overlap is still refused.
    pub(crate) fn in_place(self) -> Self {
        Self { in_place: true, ..self }
    }

    fn overlaps(&self, o: &Span<'_>) -> bool {
        match (self.device, o.device) {
            (Some(a), Some(b)) => {
                a.same(b) && self.start < self.end && o.start < o.end && self.start < o.end && o.start < self.end
            }
            _ => false,
        }
    }
}

/// Errors (`Error::Shape`, naming `op` and both tensors) unless no two of `writes` (the outputs
/// and workspaces a launch writes) share a byte, and no input of `reads` shares a byte with one of
/// `writes`, except an input marked [`Span::in_place`] that is exactly an output. Inputs may
/// overlap each other: nothing writes them. Only views ([`Tensor::view`]) can overlap: distinct
/// allocations never do, and Rust does not let one tensor be passed as `&` and `&mut` at once.
pub(crate) fn check_disjoint(op: &str, writes: &[Span<'_>], reads: &[Span<'_>]) -> Result<()> {
    for (i, w) in writes.iter().enumerate() {
        for o in writes[i + 1..].iter().chain(reads) {
            let exact = o.in_place && (o.start, o.end) == (w.start, w.end);
            if w.overlaps(o) && !exact {
                let why = if o.in_place {
                    format!("it runs in place only when {} is exactly {}, not on a partial overlap", w.what, o.what)
                } else {
                    "this op cannot run in place".to_string()
                };
                return Err(Error::Shape(format!("{op}: {} overlaps {} in device memory; {why}", w.what, o.what)));
            }
        }
    }
    Ok(())
}

impl Tensor<f16> {
    /// Uploads f32 values rounded to fp16.
    pub fn from_f32(device: &Device, shape: &[usize], data: &[f32]) -> Result<Self> {
        let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        Self::from_host(device, shape, &h)
    }
    /// Downloads as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_host()?.into_iter().map(f16::to_f32).collect())
    }
}

impl<T: DType> Drop for Tensor<T> {
    fn drop(&mut self) {
        if self.base.is_none() {
            // SAFETY: `ptr` came from alloc(bytes()) on this device and dies with the tensor.
            unsafe { self.device.free(self.ptr, self.bytes()) }
        }
    }
}
