//! Host buffers whose copies do not stop the host: page-locked memory on cuda, to and from
//! which `cuMemcpy*Async` is a true asynchronous copy queued behind the work already on the
//! stream (with pageable memory, as [`crate::Tensor::copy_from_host`] and `to_host` use, the
//! host waits for the whole stream). A trainer fills one buffer while the other's upload waits
//! its turn, so feeding a batch never waits for the step before it; evaluation reads batch i's
//! results while batch i + 1 runs. On emu, plain memory copied at once.

use super::{cuda, Backend, Device};
use crate::tensor::DType;
use crate::{Error, Result, Tensor};
use std::marker::PhantomData;

/// Plain memory holds `T`s (so that it is aligned for them); page-locked memory is page-aligned.
enum Host<T> {
    Plain(Vec<T>),
    Pinned(cuda::PinnedHost),
}

/// `len` elements of host memory for asynchronous uploads to tensors of the same length.
pub struct PinnedBuffer<T: DType> {
    dev: Device,
    host: Host<T>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: DType> PinnedBuffer<T> {
    /// `len` elements; an error, not a panic, when their bytes overflow or cannot be had.
    pub fn new(dev: &Device, len: usize) -> Result<Self> {
        let too_large = || Error::Shape(format!("PinnedBuffer of {len} {} elements: too large", T::NAME));
        // No allocation may exceed isize::MAX bytes.
        let bytes = len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b <= isize::MAX as usize);
        let bytes = bytes.ok_or_else(too_large)?;
        let host = match &dev.0.backend {
            Backend::Cuda(c) => Host::Pinned(c.alloc_pinned(bytes)?),
            Backend::Emu(_) => {
                let mut v = Vec::new();
                v.try_reserve_exact(len).map_err(|_| too_large())?;
                v.resize(len, T::default());
                Host::Plain(v)
            }
        };
        Ok(Self { dev: dev.clone(), host, len, _t: PhantomData })
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer, to fill before an upload or to read after a download; on cuda it first
    /// waits for the last copy to or from it (that copy only, not the rest of the stream).
    pub fn write(&mut self) -> Result<&mut [T]> {
        match &mut self.host {
            Host::Plain(v) => Ok(v.as_mut_slice()),
            Host::Pinned(p) => Ok(bytemuck::cast_slice_mut(p.bytes_mut()?)),
        }
    }

    /// Queues `dst = self` behind the work on the device's stream and returns; the buffer is
    /// busy until then ([`PinnedBuffer::write`] waits for it). `dst` must have this length and
    /// live on this device.
    pub fn upload(&mut self, dst: &mut Tensor<T>) -> Result<()> {
        dst.check(&self.dev, "upload destination", self.len)?;
        self.dev.not_capturing("an upload from a pinned buffer")?;
        let ptr = dst.device_ptr();
        match (&mut self.host, &self.dev.0.backend) {
            // SAFETY: dst spans len elements = the buffer's bytes (checked above).
            (Host::Pinned(p), Backend::Cuda(c)) => unsafe { c.upload_pinned(ptr, p) },
            (Host::Plain(v), _) => dst.copy_from_host(v),
            _ => Err(Error::Kernel("pinned buffer on the wrong kind of device".into())),
        }
    }
}

impl<T: DType> PinnedBuffer<T> {
    /// Queues `self = src` behind the work on the stream and returns; [`PinnedBuffer::read`]
    /// (or `write`) waits for it. `src` must have this length and live on this device.
    pub fn download(&mut self, src: &Tensor<T>) -> Result<()> {
        src.check(&self.dev, "download source", self.len)?;
        self.dev.not_capturing("a download to a pinned buffer")?;
        let ptr = src.device_ptr();
        match (&mut self.host, &self.dev.0.backend) {
            // SAFETY: src spans len elements = the buffer's bytes (checked above).
            (Host::Pinned(p), Backend::Cuda(c)) => unsafe { c.download_pinned(p, ptr) },
            (Host::Plain(v), _) => {
                *v = src.to_host()?;
                Ok(())
            }
            _ => Err(Error::Kernel("pinned buffer on the wrong kind of device".into())),
        }
    }

    /// The buffer's contents, once the last copy to or from it is done.
    pub fn read(&mut self) -> Result<&[T]> {
        Ok(&*self.write()?)
    }
}

impl<T: DType> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        if let (Host::Pinned(p), Backend::Cuda(c)) = (&mut self.host, &self.dev.0.backend) {
            c.free_pinned(p);
        }
    }
}
