//! The `Device`: where kernels run. Two backends share one interface and one argument
//! convention (cuLaunchKernel's array of pointers to arguments):
//! - `cuda`: an NVIDIA GPU through cudarc's driver API, dynamically loaded, so the crate
//!   runs on machines without CUDA and says exactly what is missing;
//! - `emu`: the same kernel source compiled for the CPU, every CUDA thread a fiber
//!   (kernels/emu/), slow but exact in its semantics: how tests and GPU-less users run.

mod cuda;
mod emu;
mod graph;
pub mod kernels;
mod pinned;
mod profile;
mod tensor_map;

pub use cuda::{cuda_report, CudaReport, GpuInfo};
pub use emu::Schedule;
pub use graph::Graph;
pub use pinned::PinnedBuffer;
pub use profile::LaunchTime;
pub use tensor_map::{TensorMap, TensorMap2dSpec, TensorMapSpec};

use crate::{Error, Result};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A kernel: its `kernels/<module>.cu` file stem and its `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// The file stem of `kernels/<module>.cu`, which is also the embedded module's name
    /// ([`kernels::module`]).
    pub module: &'static str,
    /// The kernel's `extern "C"` function name in that file.
    pub name: &'static str,
}

/// Grid and block dimensions and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    /// Blocks along x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads a block along x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory a block, in bytes (at most [`Device::max_shared_per_block`]).
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element, `threads` per block (1-D); `threads` must be at least 1.
    pub fn for_elements(n: usize, threads: u32) -> Result<Self> {
        if threads == 0 {
            return Err(Error::Invalid(format!(
                "LaunchConfig::for_elements({n}, 0): a block needs at least one thread"
            )));
        }
        let blocks = n.div_ceil(threads as usize).max(1);
        let grid =
            u32::try_from(blocks).map_err(|_| Error::Shape(format!("{n} elements is too many for one launch")))?;
        Ok(Self { grid: (grid, 1, 1), block: (threads, 1, 1), shared_bytes: 0 })
    }

    /// A grid from `usize` counts, each converted without wrapping (a count past `u32` would
    /// otherwise become a small, valid-looking grid); [`LaunchConfig::check`] then holds it to
    /// CUDA's limits at the launch. `what` names the launch in the error.
    pub fn grid_of(what: &str, x: usize, y: usize, z: usize) -> Result<(u32, u32, u32)> {
        let dim = |v: usize, d: &str| {
            u32::try_from(v).map_err(|_| Error::Shape(format!("{what}: {v} blocks along grid {d}, past CUDA's limits")))
        };
        Ok((dim(x, "x")?, dim(y, "y")?, dim(z, "z")?))
    }

    /// CUDA's launch limits, held on every device (the emulator could run past them, so a
    /// launcher that outgrew them would fail only on a GPU): 1 to 1024 threads a block, block z
    /// at most 64, every grid dimension at least 1, grid x below 2^31, y and z at most 65535.
    pub fn check(&self, kernel: &str) -> Result<()> {
        let ((gx, gy, gz), (bx, by, bz)) = (self.grid, self.block);
        let threads = bx as u64 * by as u64 * bz as u64;
        let why = if threads == 0 || threads > 1024 || bz > 64 {
            "a block has 1 to 1024 threads, z at most 64"
        } else if gx == 0 || gy == 0 || gz == 0 {
            "every grid dimension is at least 1"
        } else if gx > i32::MAX as u32 {
            "grid x is below 2^31"
        } else if gy > 65535 || gz > 65535 {
            "grid y and z are at most 65535"
        } else {
            return Ok(());
        };
        Err(Error::Shape(format!("{kernel}: grid {:?} block {:?}: CUDA's limits say {why}", self.grid, self.block)))
    }

    /// A thread-block cluster of `x` blocks along grid x ([`Device::launch_cluster`]) held to
    /// CUDA's rules: 1 to 8 blocks (the portable limit; 1 is no cluster), dividing grid x.
    pub fn check_cluster(&self, kernel: &str, x: u32) -> Result<()> {
        if !(1..=MAX_CLUSTER).contains(&x) {
            return Err(Error::Shape(format!(
                "{kernel}: a cluster of {x} blocks: CUDA's portable limit is 1 to {MAX_CLUSTER}"
            )));
        }
        if !self.grid.0.is_multiple_of(x) {
            return Err(Error::Shape(format!(
                "{kernel}: grid x {} is not a multiple of the cluster size {x}",
                self.grid.0
            )));
        }
        Ok(())
    }
}

/// The most blocks a cluster may have without the non-portable opt-in.
pub const MAX_CLUSTER: u32 = 8;

/// One kernel argument, packed by value as the kernel signature expects.
#[derive(Clone, Copy, Debug)]
pub enum KArg {
    /// A device pointer (`T*` in the kernel).
    Ptr(u64),
    /// An `int`.
    I32(i32),
    /// An `unsigned int`.
    U32(u32),
    /// A 64-bit integer (`long long`, or an `unsigned long long` passed by its bits).
    I64(i64),
    /// A `float`.
    F32(f32),
    /// A 128-byte TMA descriptor by value (`const __grid_constant__ TmaDesc`, kernels/bulk.cuh):
    /// [`TensorMap::arg`].
    TensorMap([u64; 16]),
}

/// One argument's bytes as the launch passes them: room for the largest (a tensor map), at a
/// tensor map's alignment.
#[repr(C, align(64))]
struct Slot([u64; 16]);

impl KArg {
    /// The size of the kernel parameter this argument fills.
    fn size(self) -> u8 {
        match self {
            KArg::Ptr(_) | KArg::I64(_) => 8,
            KArg::I32(_) | KArg::U32(_) | KArg::F32(_) => 4,
            KArg::TensorMap(_) => 128,
        }
    }

    fn to_slot(self) -> Slot {
        // Little-endian: a 4-byte argument is read from the low half of its first word.
        let word = match self {
            KArg::Ptr(p) => p,
            KArg::I32(v) => v as u32 as u64,
            KArg::U32(v) => v as u64,
            KArg::I64(v) => v as u64,
            KArg::F32(v) => v.to_bits() as u64,
            KArg::TensorMap(w) => return Slot(w),
        };
        let mut s = Slot([0; 16]);
        s.0[0] = word;
        s
    }
}

/// A handle to a device; cheap to clone (shared).
#[derive(Clone)]
pub struct Device(Arc<Shared>);

struct Shared {
    backend: Backend,
    /// Bytes of the allocations made through this device and not yet freed.
    allocated: AtomicUsize,
    /// Kernel launches made through this device.
    launches: AtomicU64,
    /// The capture in progress ([`Device::capture`]), if any.
    capture: Mutex<Option<graph::Capture>>,
    /// The profile running ([`Device::profile_start`]), if any.
    profile: Mutex<Option<profile::Profile>>,
}

enum Backend {
    Cuda(cuda::CudaDevice),
    Emu(emu::EmuDevice),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// The emu device's stand-in for a GPU's multiprocessor count: small, so that persistent
/// kernels give each block several work items in the tests, as they do on a GPU.
pub const EMU_MULTIPROCESSORS: usize = 3;

/// sm_90's opt-in shared memory a block (227 KiB): what the kernels' tiles are sized for, and
/// the emu device's limit unless [`Device::set_emu_shared_limit`] lowers it.
pub const SM90_SHARED_PER_BLOCK: usize = 227 * 1024;

impl Device {
    /// The GPU of the given ordinal, or an error that says why it cannot be used. Each call
    /// makes a separate device (its own stream, whose order no other device follows): clone
    /// one `Device` to share it; tensors of two devices cannot meet in one op
    /// ([`crate::Error::WrongDevice`]).
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(Self::with(Backend::Cuda(cuda::CudaDevice::new(ordinal)?)))
    }

    /// The CPU emulator. Its schedule comes from `VGG_EMU_SCHEDULE` (index, reverse,
    /// `random[:seed]`) unless set with [`Device::set_schedule`]. Each call makes a separate
    /// device, as [`Device::cuda`] does: clone one to share it.
    pub fn emu() -> Self {
        Self::with(Backend::Emu(emu::EmuDevice::new()))
    }

    fn with(backend: Backend) -> Self {
        Self(Arc::new(Shared {
            backend,
            allocated: AtomicUsize::new(0),
            launches: AtomicU64::new(0),
            capture: Mutex::new(None),
            profile: Mutex::new(None),
        }))
    }

    /// `cuda`, `cuda:N` or `emu`.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "emu" => Ok(Self::emu()),
            "cuda" => Self::cuda(0),
            _ => match name.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(i) => Self::cuda(i),
                None => Err(Error::Invalid(format!("unknown device `{name}` (expected cuda, cuda:N or emu)"))),
            },
        }
    }

    /// `cuda:0 (NVIDIA H200)` or `emu`.
    pub fn name(&self) -> String {
        match &self.0.backend {
            Backend::Cuda(c) => c.name(),
            Backend::Emu(_) => "emu".to_string(),
        }
    }

    /// Whether this is the CPU emulator rather than a GPU.
    pub fn is_emu(&self) -> bool {
        matches!(&self.0.backend, Backend::Emu(_))
    }

    /// Whether kernels using Hopper's arch-specific instructions (wgmma, kernels/wgmma.cuh)
    /// run here: on emu, and on a GPU of compute capability 9.0, which loads the sm_90a cubin
    /// (elsewhere such kernels trap).
    pub fn has_wgmma(&self) -> bool {
        match &self.0.backend {
            Backend::Cuda(c) => c.compute_capability() == (9, 0),
            Backend::Emu(_) => true,
        }
    }

    /// Whether kernels using thread-block clusters (kernels/cluster.cuh) run here: on emu, and
    /// where wgmma does (the sm_90a cubin; the compute_80 PTX traps on their instructions).
    pub fn has_clusters(&self) -> bool {
        self.has_wgmma()
    }

    /// Streaming multiprocessors: the GPU's, or on emu [`EMU_MULTIPROCESSORS`]. What a
    /// persistent kernel (one block an SM, each taking several work items) sizes its grid by.
    pub fn multiprocessors(&self) -> usize {
        match &self.0.backend {
            Backend::Cuda(c) => c.multiprocessors(),
            Backend::Emu(_) => EMU_MULTIPROCESSORS,
        }
    }

    /// Clusters of `cluster_x` blocks of `kernel` at `cfg`'s block size and shared memory that can
    /// run at once: what a persistent kernel in clusters sizes its grid by, since a cluster's
    /// blocks must fit one GPC together and a grid past this count runs a second wave. The
    /// driver's occupancy query on cuda (at least 1: a cluster that cannot fit at all is an
    /// `Error::Unsupported`); on emu [`EMU_MULTIPROCESSORS`] / `cluster_x`, rounded up.
    pub fn max_active_clusters(&self, kernel: &Kernel, cfg: LaunchConfig, cluster_x: u32) -> Result<usize> {
        let cluster = cluster_x.max(1) as usize;
        match &self.0.backend {
            Backend::Cuda(c) => match c.max_active_clusters(kernel, cfg, cluster_x.max(1))? {
                0 => Err(Error::Unsupported(format!(
                    "{}: not one cluster of {cluster} blocks of {} threads and {} bytes of shared memory fits {}",
                    kernel.name,
                    cfg.block.0 * cfg.block.1 * cfg.block.2,
                    cfg.shared_bytes,
                    self.name()
                ))),
                n => Ok(n),
            },
            Backend::Emu(_) => Ok(EMU_MULTIPROCESSORS.div_ceil(cluster)),
        }
    }

    /// Dynamic shared memory one block may use: the GPU's opt-in maximum (227 KiB on sm_90,
    /// 163 KiB on sm_80, 99 KiB on sm_86 / sm_89), or on emu [`SM90_SHARED_PER_BLOCK`] unless
    /// [`Device::set_emu_shared_limit`] set another. A launch that asks for more is an
    /// `Error::Unsupported` before anything runs.
    pub fn max_shared_per_block(&self) -> usize {
        match &self.0.backend {
            Backend::Cuda(c) => c.max_shared_per_block(),
            Backend::Emu(e) => e.shared_limit(),
        }
    }

    /// On emu, the shared memory a block may use from now on, to stand in for a GPU with less
    /// than sm_90 (ignored by cuda, whose limit is the GPU's).
    pub fn set_emu_shared_limit(&self, bytes: usize) {
        if let Backend::Emu(e) = &self.0.backend {
            e.set_shared_limit(bytes);
        }
    }

    /// On emu, the bytes all live allocations may total from now on, to stand in for a GPU's
    /// memory in tests (ignored by cuda). Whatever the limit, a large allocation beyond the
    /// host's available memory is an error rather than a case for the OOM killer.
    pub fn set_emu_memory_limit(&self, bytes: usize) {
        if let Backend::Emu(e) = &self.0.backend {
            e.set_memory_limit(bytes);
        }
    }

    /// Two handles to the same device.
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The emulator's thread and block order for later launches (ignored by cuda).
    pub fn set_schedule(&self, s: Schedule) {
        if let Backend::Emu(e) = &self.0.backend {
            e.set_schedule(s);
        }
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        self.not_capturing("allocating device memory")?;
        let ptr = match &self.0.backend {
            Backend::Cuda(c) => c.alloc(bytes),
            Backend::Emu(e) => e.check_alloc(bytes, self.allocated_bytes()).and_then(|()| e.alloc(bytes)),
        }?;
        self.0.allocated.fetch_add(bytes, Ordering::Relaxed);
        Ok(ptr)
    }

    /// Bytes of the tensors allocated on this device (through any handle to it) and not yet
    /// dropped, as requested (before the allocator's rounding); views
    /// ([`crate::Tensor::view`]) add nothing. What a model's memory plan is checked against.
    pub fn allocated_bytes(&self) -> usize {
        self.0.allocated.load(Ordering::Relaxed)
    }

    /// Kernel launches the host made on this device so far (through any handle to it; a
    /// [`Graph`] launch counts once): with the host time a step takes to queue them, what
    /// decides whether CUDA graphs pay.
    pub fn launches(&self) -> u64 {
        self.0.launches.load(Ordering::Relaxed)
    }

    fn count_launch(&self) {
        self.0.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// # Safety
    /// `ptr` came from `alloc(bytes)` on this device and is not used afterwards.
    pub(crate) unsafe fn free(&self, ptr: u64, bytes: usize) {
        if !self.defer_free(ptr, bytes) {
            self.free_now(ptr, bytes);
        }
    }

    /// # Safety
    /// As [`Device::free`].
    unsafe fn free_now(&self, ptr: u64, bytes: usize) {
        self.0.allocated.fetch_sub(bytes, Ordering::Relaxed);
        match &self.0.backend {
            Backend::Cuda(c) => c.free(ptr),
            Backend::Emu(e) => e.free(ptr, bytes),
        }
    }

    /// # Safety
    /// `dst .. dst + src.len()` lies in one live allocation of this device.
    pub(crate) unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.not_capturing("a copy from the host")?;
        match &self.0.backend {
            Backend::Cuda(c) => c.htod(dst, src),
            Backend::Emu(_) => {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
                Ok(())
            }
        }
    }

    /// # Safety
    /// `src .. src + dst.len()` lies in one live allocation of this device.
    pub(crate) unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.not_capturing("a copy to the host")?;
        match &self.0.backend {
            Backend::Cuda(c) => c.dtoh(dst, src),
            Backend::Emu(_) => {
                std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len());
                Ok(())
            }
        }
    }

    /// # Safety
    /// `dst .. dst + bytes` lies in one live allocation of this device.
    pub(crate) unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        if self.record_memset(dst, byte, bytes) {
            return Ok(());
        }
        self.profiled("memset", || match &self.0.backend {
            Backend::Cuda(c) => c.memset(dst, byte, bytes),
            Backend::Emu(_) => {
                std::ptr::write_bytes(dst as *mut u8, byte, bytes);
                Ok(())
            }
        })
    }

    /// Launches `kernel` with `args` packed by value.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, every
    /// pointer must address a live allocation of this device large enough for what the
    /// kernel touches at this launch configuration.
    pub unsafe fn launch(&self, kernel: &Kernel, cfg: LaunchConfig, args: &[KArg]) -> Result<()> {
        self.launch_cluster(kernel, cfg, 1, args)
    }

    /// Launches `kernel` as [`Device::launch`] does, its blocks grouped in thread-block clusters of
    /// `cluster_x` consecutive blocks along x (1: no cluster, exactly `launch`), which run at the
    /// same time and may use each other's shared memory (kernels/cluster.cuh). The cluster size
    /// must divide grid x and be at most [`MAX_CLUSTER`] ([`LaunchConfig::check_cluster`]); a
    /// device without clusters ([`Device::has_clusters`]) refuses a cluster with
    /// `Error::Unsupported`.
    ///
    /// # Safety
    /// As [`Device::launch`].
    pub unsafe fn launch_cluster(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        cluster_x: u32,
        args: &[KArg],
    ) -> Result<()> {
        if cluster_x > 1 && !self.has_clusters() {
            return Err(Error::Unsupported(format!(
                "{}: thread-block clusters need compute capability 9.0, which {} has not",
                kernel.name,
                self.name()
            )));
        }
        let limit = self.max_shared_per_block();
        if cfg.shared_bytes as usize > limit {
            return Err(Error::Unsupported(format!(
                "{}: needs {} bytes of shared memory a block, but {} allows {limit} (the tiles are sized for \
                 sm_90's {})",
                kernel.name,
                cfg.shared_bytes,
                self.name(),
                SM90_SHARED_PER_BLOCK
            )));
        }
        cfg.check(kernel.name)?;
        cfg.check_cluster(kernel.name, cluster_x)?;
        self.count_launch();
        if self.record_launch(kernel, cfg, cluster_x, args) {
            return Ok(());
        }
        self.profiled(kernel.name, || self.launch_now(kernel, cfg, cluster_x, args))
    }

    /// # Safety
    /// As [`Device::launch`].
    unsafe fn launch_now(&self, kernel: &Kernel, cfg: LaunchConfig, cluster_x: u32, args: &[KArg]) -> Result<()> {
        let mut slots: Vec<Slot> = args.iter().map(|a| a.to_slot()).collect();
        let mut ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut Slot as *mut c_void).collect();
        match &self.0.backend {
            Backend::Cuda(c) => c.launch(kernel, cfg, cluster_x, &mut ptrs),
            Backend::Emu(e) => {
                let sizes: Vec<u8> = args.iter().map(|a| a.size()).collect();
                e.launch(kernel, cfg, cluster_x, &mut ptrs, &sizes)
            }
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.not_capturing("waiting for the device")?;
        match &self.0.backend {
            Backend::Cuda(c) => c.synchronize(),
            Backend::Emu(_) => Ok(()),
        }
    }

    /// On cuda: makes the device's context current on the calling thread and returns its
    /// stream (a `CUstream`, usable as a `cudaStream_t`), for vendor libraries such as cuDNN
    /// that must run in our context, ordered with our kernels. `None` on emu.
    ///
    /// The stream stays owned by the device: do not destroy it, and do not use it after the
    /// last handle to the device is dropped.
    pub fn cuda_raw_stream(&self) -> Result<Option<*mut c_void>> {
        match &self.0.backend {
            Backend::Cuda(c) => Ok(Some(c.raw_stream()? as *mut c_void)),
            Backend::Emu(_) => Ok(None),
        }
    }

    /// (free, total) bytes of device memory on cuda (what the driver reports: the
    /// stream-ordered allocator keeps freed blocks reserved, so "total - free" is the peak
    /// this process has reserved so far); `None` on emu.
    pub fn memory_info(&self) -> Result<Option<(usize, usize)>> {
        match &self.0.backend {
            Backend::Cuda(c) => c.memory_info().map(Some),
            Backend::Emu(_) => Ok(None),
        }
    }

    /// Starts a timer: device events on cuda, the wall clock on emu (which runs launches
    /// synchronously).
    pub fn start_timer(&self) -> Result<Timer> {
        self.not_capturing("starting a timer")?;
        match &self.0.backend {
            Backend::Cuda(c) => Ok(Timer::Cuda(c.start_timer()?)),
            Backend::Emu(_) => Ok(Timer::Wall(std::time::Instant::now())),
        }
    }
}

/// A running timer from [`Device::start_timer`].
pub enum Timer {
    /// On cuda: a start event recorded on the device's stream.
    Cuda(cuda::EventTimer),
    /// On emu: the wall-clock start.
    Wall(std::time::Instant),
}

impl Timer {
    /// Milliseconds since the start, once the device finished the work queued in between.
    pub fn stop_ms(self) -> Result<f64> {
        match self {
            Timer::Cuda(t) => t.stop_ms(),
            Timer::Wall(t) => Ok(t.elapsed().as_secs_f64() * 1e3),
        }
    }
}
