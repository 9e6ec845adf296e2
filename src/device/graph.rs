//! Captured work replayed with one call: a CUDA graph on cuda, the recorded list of launches
//! and memsets on emu. What a training step gains from it is the host's time to queue ~110
//! launches; it pays where the device would otherwise wait for them (small models and
//! batches), which `vgg bench train --graph` measures.
//!
//! While [`Device::capture`] runs its closure, the device queues work without running it and
//! refuses what a replay could not repeat: allocations, copies to or from the host, and waits
//! (each an error naming the operation). Frees are held back until the capture ends, so that
//! no free becomes part of the graph. Kernel arguments are captured by value: a pointer
//! argument names the same buffer at every replay, and a value that must change between
//! replays has to live in device memory (see [`crate::ops::StepVars`]).

use super::{cuda, Backend, Device, KArg, Kernel, LaunchConfig};
use crate::{Error, Result};

/// One recorded operation of an emu capture.
pub(crate) enum EmuOp {
    Launch { kernel: Kernel, cfg: LaunchConfig, cluster: u32, args: Vec<KArg> },
    Memset { dst: u64, byte: u8, bytes: usize },
}

/// The state of a capture in progress.
#[derive(Default)]
pub(crate) struct Capture {
    /// emu: the operations queued so far (cuda records them in the stream's graph).
    pub ops: Vec<EmuOp>,
    /// Allocations released during the capture, freed when it ends.
    pub frees: Vec<(u64, usize)>,
    /// Kernel launches captured.
    pub launches: usize,
}

enum Body {
    Cuda(cuda::CudaGraph),
    Emu(Vec<EmuOp>),
}

/// Work captured by [`Device::capture`], replayed by [`Graph::launch`].
pub struct Graph {
    dev: Device,
    body: Body,
    launches: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph({} launches on {})", self.launches, self.dev.name())
    }
}

impl Graph {
    /// Queues the captured work on the device's stream (on emu: runs it), after what is queued
    /// already. The host's launch counter ([`Device::launches`]) counts this as one launch.
    ///
    /// # Safety
    ///
    /// The graph holds the raw addresses its captured launches and memsets name, not the
    /// tensors: every buffer they name must still be alive and not reallocated (a tensor
    /// dropped and made again may get another address, or give its old one to another
    /// buffer). A replay after that reads and writes freed or foreign memory: on cuda a fault
    /// that poisons the context, on emu undefined behaviour in the host process.
    ///
    /// Launching it is unsafe, so safe code cannot replay a graph whose buffers were dropped:
    ///
    /// ```compile_fail,E0133
    /// # use vgg_cuda::{ops, Device, Tensor};
    /// # let dev = Device::emu();
    /// # let x = Tensor::<half::f16>::zeros(&dev, &[4]).unwrap();
    /// # let mut y = Tensor::<half::f16>::zeros(&dev, &[4]).unwrap();
    /// let relu = dev.capture(|| ops::relu_fwd(&x, &mut y)).unwrap();
    /// drop((x, y));
    /// relu.launch().unwrap(); // error[E0133]: call to unsafe function
    /// ```
    pub unsafe fn launch(&self) -> Result<()> {
        self.dev.not_capturing("launching a graph")?;
        self.dev.count_launch();
        // Under a profile, one entry named `graph`: its launches are not timed one by one.
        self.dev.profiled("graph", || match &self.body {
            Body::Cuda(g) => g.launch(),
            Body::Emu(ops) => {
                for op in ops {
                    match op {
                        // SAFETY: the arguments were checked by the launcher that captured them,
                        // and every buffer they name is still alive (this fn's contract).
                        EmuOp::Launch { kernel, cfg, cluster, args } => unsafe {
                            self.dev.launch_now(kernel, *cfg, *cluster, args)?
                        },
                        // SAFETY: as above: dst spans bytes bytes of a live allocation.
                        EmuOp::Memset { dst, byte, bytes } => unsafe {
                            std::ptr::write_bytes(*dst as *mut u8, *byte, *bytes)
                        },
                    }
                }
                Ok(())
            }
        })
    }

    /// Kernel launches the graph holds.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// The device the graph was captured on, and runs on.
    pub fn device(&self) -> &Device {
        &self.dev
    }
}

impl Device {
    /// Runs `body` with this device capturing instead of running, and returns the captured
    /// work as a [`Graph`]. An error from `body` (such as an allocation, which a capture
    /// refuses) ends the capture and is returned; nothing captured runs.
    ///
    /// The graph keeps the buffers' addresses, not the tensors (their lifetimes cannot be tied
    /// to it: a model keeps its graph beside the buffers it names), so [`Graph::launch`] is
    /// unsafe: its caller promises that every buffer captured is still alive and in place.
    ///
    /// ```
    /// use half::f16;
    /// use vgg_cuda::{ops, Device, Tensor};
    ///
    /// let dev = Device::emu();
    /// let x = Tensor::from_f32(&dev, &[4], &[-1.0, 2.0, -3.0, 4.0])?;
    /// let mut y = Tensor::<f16>::zeros(&dev, &[4])?; // buffers are made before the capture
    /// let relu = dev.capture(|| ops::relu_fwd(&x, &mut y))?;
    /// // SAFETY: x and y, the graph's only buffers, live until the end of this block.
    /// unsafe { relu.launch()? }; // as often as needed, reading x as it is then
    /// assert_eq!(y.to_f32()?, [0.0, 2.0, 0.0, 4.0]);
    /// # Ok::<(), vgg_cuda::Error>(())
    /// ```
    pub fn capture(&self, body: impl FnOnce() -> Result<()>) -> Result<Graph> {
        {
            let mut c = self.0.capture.lock().unwrap();
            if c.is_some() {
                return Err(Error::Shape("Device::capture: a capture is already in progress".into()));
            }
            if let Backend::Cuda(d) = &self.0.backend {
                d.begin_capture()?;
            }
            *c = Some(Capture::default());
        }
        let result = body();
        let cap = self.0.capture.lock().unwrap().take().expect("capture in progress");
        // The stream leaves capture mode before the held-back frees, which would otherwise be
        // captured too.
        let cuda = match &self.0.backend {
            Backend::Cuda(d) => Some(d.end_capture()),
            Backend::Emu(_) => None,
        };
        for &(ptr, bytes) in &cap.frees {
            // SAFETY: allocations whose owners released them during the capture; the captured
            // work is discarded (below: a capture that freed anything is refused), so nothing
            // reaches them afterwards.
            unsafe { self.free_now(ptr, bytes) };
        }
        result?;
        let body = match cuda {
            Some(g) => Body::Cuda(g?),
            None => Body::Emu(cap.ops),
        };
        if !cap.frees.is_empty() {
            return Err(Error::Shape(format!(
                "Device::capture: {} buffer(s) were freed during the capture (a replay would use them)",
                cap.frees.len()
            )));
        }
        Ok(Graph { dev: self.clone(), body, launches: cap.launches })
    }

    /// Whether a capture is in progress on this device.
    pub fn is_capturing(&self) -> bool {
        self.0.capture.lock().unwrap().is_some()
    }

    /// An error naming `what` if a capture is in progress (what a replay could not repeat).
    pub(crate) fn not_capturing(&self, what: &str) -> Result<()> {
        if self.is_capturing() {
            return Err(Error::Shape(format!(
                "{what} is not allowed while capturing a graph (a replay could not repeat it)"
            )));
        }
        Ok(())
    }

    /// emu while capturing: records the launch and returns true; false otherwise. cuda's
    /// stream records its own launches (counted here; a cluster's dimension is one of the launch
    /// attributes a captured kernel node keeps).
    pub(crate) fn record_launch(&self, kernel: &Kernel, cfg: LaunchConfig, cluster: u32, args: &[KArg]) -> bool {
        let mut c = self.0.capture.lock().unwrap();
        let Some(cap) = c.as_mut() else { return false };
        cap.launches += 1;
        if self.is_emu() {
            cap.ops.push(EmuOp::Launch { kernel: *kernel, cfg, cluster, args: args.to_vec() });
            return true;
        }
        false
    }

    /// emu while capturing: records the memset and returns true.
    pub(crate) fn record_memset(&self, dst: u64, byte: u8, bytes: usize) -> bool {
        let mut c = self.0.capture.lock().unwrap();
        match c.as_mut() {
            Some(cap) if self.is_emu() => {
                cap.ops.push(EmuOp::Memset { dst, byte, bytes });
                true
            }
            _ => false,
        }
    }

    /// While capturing: holds the free back until the capture ends and returns true.
    pub(crate) fn defer_free(&self, ptr: u64, bytes: usize) -> bool {
        let mut c = self.0.capture.lock().unwrap();
        match c.as_mut() {
            Some(cap) => {
                cap.frees.push((ptr, bytes));
                true
            }
            None => false,
        }
    }
}
