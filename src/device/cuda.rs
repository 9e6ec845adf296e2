//! The `cuda` backend: one context (the device's primary context), one non-blocking
//! stream, modules loaded lazily from the embedded cubins / PTX and cached, stream-ordered
//! allocation, device-event timing. The driver library is loaded dynamically and probed
//! before the first call, so a machine without a driver or GPU gets a sentence, not a panic.

use super::kernels::{self, EmbeddedModule};
use super::{Kernel, LaunchConfig};
use crate::{Error, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

/// The lowest compute capability the kernels need (mma.sync m16n8k16, cp.async, ldmatrix).
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

fn drv(call: &'static str) -> impl Fn(result::DriverError) -> Error {
    move |e| Error::Driver { call, message: e.to_string() }
}

/// One GPU as the driver reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuInfo {
    /// The driver's device ordinal, as in [`Device::cuda`](super::Device::cuda).
    pub ordinal: usize,
    /// The product name, such as `NVIDIA H200`.
    pub name: String,
    /// (major, minor), such as (9, 0) for sm_90.
    pub compute_capability: (i32, i32),
    /// Total device memory, in bytes.
    pub memory_bytes: usize,
    /// Streaming multiprocessors.
    pub multiprocessors: i32,
    /// Shared memory a block may opt in to (227 KB on sm_90, 163 KB on sm_80, 99 KB on
    /// sm_86/89): the Winograd main loops need 177-216 KB.
    pub max_shared_per_block: usize,
}

/// What `vgg info` says about CUDA on this machine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaReport {
    /// Driver API version as (major, minor), when a driver is installed.
    pub driver_version: Option<(i32, i32)>,
    /// Every GPU the driver lists, in ordinal order (empty without a driver).
    pub gpus: Vec<GpuInfo>,
    /// Why the cuda device cannot be used, or None when GPU 0 can run the kernels.
    pub unusable_because: Option<String>,
}

/// Loads the driver library and initialises it, or says what is missing.
fn init_driver() -> Result<()> {
    // SAFETY: only probes whether libcuda can be dlopen'ed; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable(
            "no NVIDIA driver: libcuda.so could not be loaded (install the NVIDIA driver, or use --device emu)".into(),
        ));
    }
    result::init().map_err(|e| Error::DeviceUnavailable(format!("the NVIDIA driver failed to initialise: {e}")))
}

fn gpu_info(ordinal: usize) -> Result<GpuInfo> {
    let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
    let attr = |a| {
        // SAFETY: `dev` came from cuDeviceGet.
        unsafe { result::device::get_attribute(dev, a) }.map_err(drv("cuDeviceGetAttribute"))
    };
    use sys::CUdevice_attribute::*;
    Ok(GpuInfo {
        ordinal,
        name: result::device::get_name(dev).map_err(drv("cuDeviceGetName"))?,
        compute_capability: (
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        // SAFETY: `dev` came from cuDeviceGet.
        memory_bytes: unsafe { result::device::total_mem(dev) }.map_err(drv("cuDeviceTotalMem"))?,
        multiprocessors: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        max_shared_per_block: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize,
    })
}

/// Probes the driver and GPUs without creating a context.
pub fn cuda_report() -> CudaReport {
    let mut rep = CudaReport { driver_version: None, gpus: vec![], unusable_because: None };
    if let Err(e) = init_driver() {
        rep.unusable_because = Some(e.to_string());
        return rep;
    }
    let mut v = 0;
    // SAFETY: the driver is loaded and initialised; `v` is a valid out-pointer.
    if unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS {
        rep.driver_version = Some((v / 1000, (v % 1000) / 10));
    }
    let count = result::device::get_count().unwrap_or(0);
    for i in 0..count.max(0) as usize {
        match gpu_info(i) {
            Ok(g) => rep.gpus.push(g),
            Err(e) => rep.unusable_because = Some(e.to_string()),
        }
    }
    if rep.unusable_because.is_none() {
        rep.unusable_because = match rep.gpus.first() {
            None => Some("the NVIDIA driver is installed but reports no GPU".into()),
            Some(g) if g.compute_capability < MIN_COMPUTE_CAPABILITY => Some(format!(
                "GPU 0 ({}) has compute capability {}.{}; the kernels need {}.{} or newer",
                g.name, g.compute_capability.0, g.compute_capability.1, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
            )),
            Some(_) if kernels::NVRTC_VERSION.is_none() => {
                Some("this build embeds no GPU kernels (NVRTC was missing at build time: run scripts/setup-cuda and rebuild)".into())
            }
            Some(_) => None,
        };
    }
    rep
}

pub(crate) struct CudaDevice {
    info: GpuInfo,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    modules: Mutex<HashMap<&'static str, sys::CUmodule>>,
    /// Each kernel's function and the dynamic shared memory it has been allowed so far (so the
    /// opt-in above 48 KiB is one driver call a kernel, not one a launch).
    functions: Mutex<HashMap<Kernel, (sys::CUfunction, u32)>>,
}

// SAFETY: the driver API is thread-safe; every call first makes `ctx` current on the
// calling thread (`bind`), and the handles are plain identifiers owned by this struct.
unsafe impl Send for CudaDevice {}
// SAFETY: as above; the caches are behind mutexes.
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    pub fn new(ordinal: usize) -> Result<Self> {
        init_driver()?;
        let count = result::device::get_count().map_err(drv("cuDeviceGetCount"))?;
        if count <= 0 {
            return Err(Error::DeviceUnavailable("the NVIDIA driver is installed but reports no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::DeviceUnavailable(format!("GPU {ordinal} requested, but this machine has {count}")));
        }
        let info = gpu_info(ordinal)?;
        if info.compute_capability < MIN_COMPUTE_CAPABILITY {
            return Err(Error::DeviceUnavailable(format!(
                "{} has compute capability {}.{}; the kernels need {}.{} or newer",
                info.name,
                info.compute_capability.0,
                info.compute_capability.1,
                MIN_COMPUTE_CAPABILITY.0,
                MIN_COMPUTE_CAPABILITY.1
            )));
        }
        if kernels::NVRTC_VERSION.is_none() {
            return Err(Error::DeviceUnavailable(
                "this build embeds no GPU kernels (NVRTC was missing at build time: run scripts/setup-cuda and rebuild)".into(),
            ));
        }
        let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
        // SAFETY: `dev` came from cuDeviceGet; the primary context lives as long as the process.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: `ctx` is the valid context just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(drv("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(drv("cuStreamCreate"))?;
        Ok(Self { info, ctx, stream, modules: Mutex::default(), functions: Mutex::default() })
    }

    pub fn name(&self) -> String {
        format!("cuda:{} ({})", self.info.ordinal, self.info.name)
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: `ctx` is the primary context retained in `new` and never released.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(drv("cuCtxSetCurrent"))
    }

    /// A tiled tensor map of 16-bit elements, encoded by the driver: `dims` elements (innermost
    /// first), `strides` bytes (one fewer), `boxd` elements, the 128-byte swizzle or none.
    pub fn encode_tensor_map(
        &self,
        base: u64,
        dims: &[u64],
        strides: &[u64],
        boxd: &[u32],
        swizzle128: bool,
    ) -> Result<[u64; 16]> {
        use sys::{CUtensorMapDataType as T, CUtensorMapFloatOOBfill as F, CUtensorMapInterleave as I};
        use sys::{CUtensorMapL2promotion as L, CUtensorMapSwizzle as S};
        let rank = dims.len();
        if !(1..=5).contains(&rank) || strides.len() + 1 != rank || boxd.len() != rank {
            return Err(Error::Invalid(format!(
                "tensor map of rank {rank}: {} strides, {} box extents",
                strides.len(),
                boxd.len()
            )));
        }
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let elem_strides = [1u32; 5];
        let swizzle = if swizzle128 { S::CU_TENSOR_MAP_SWIZZLE_128B } else { S::CU_TENSOR_MAP_SWIZZLE_NONE };
        // SAFETY: every pointer addresses a live array of at least the length the rank implies
        // (dims and boxd: rank, strides: rank - 1, checked by the caller; elem_strides 5); the
        // driver only encodes, it reads nothing at `base`.
        let r = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                T::CU_TENSOR_MAP_DATA_TYPE_UINT16,
                dims.len() as u32,
                base as *mut c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxd.as_ptr(),
                elem_strides.as_ptr(),
                I::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                L::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Invalid(format!("cuTensorMapEncodeTiled refused the tensor map: {r:?}")));
        }
        Ok(map.opaque)
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.info.compute_capability
    }

    pub fn max_shared_per_block(&self) -> usize {
        self.info.max_shared_per_block
    }

    pub fn multiprocessors(&self) -> usize {
        self.info.multiprocessors.max(1) as usize
    }

    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: stream-ordered allocation on our own stream.
        unsafe { result::malloc_async(self.stream, bytes.max(1)) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory(format!("{}: out of device memory allocating {bytes} bytes", self.name()))
            } else {
                drv("cuMemAllocAsync")(e)
            }
        })
    }

    pub fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from `alloc`; freeing is ordered after queued work on the stream.
            let _ = unsafe { result::free_async(ptr, self.stream) };
        }
    }

    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller guarantees `dst` spans src.len() bytes; we wait before returning,
        // so `src` outlives the copy.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }.map_err(drv("cuMemcpyHtoDAsync"))?;
        self.synchronize()
    }

    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller guarantees `src` spans dst.len() bytes; we wait before returning.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }.map_err(drv("cuMemcpyDtoHAsync"))?;
        self.synchronize()
    }

    pub fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller guarantees `dst` spans `bytes` bytes.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream) }.map_err(drv("cuMemsetD8Async"))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: our own live stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(drv("cuStreamSynchronize"))
    }

    /// Picks the cubin for this GPU's arch, else JIT-compiles the PTX when the GPU is at
    /// least the PTX's arch.
    fn load_module(&self, m: &'static EmbeddedModule) -> Result<sys::CUmodule> {
        let (maj, min) = self.info.compute_capability;
        let arch = (maj * 10 + min) as u32;
        let unavailable = |reason: String| Error::ModuleUnavailable { module: m.name, reason };
        if let Some((_, cubin)) = m.cubins.iter().find(|(a, _)| *a == arch) {
            // SAFETY: an embedded cubin produced by NVRTC for exactly this arch.
            return unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
                .map_err(drv("cuModuleLoadData"));
        }
        match m.ptx {
            Some((ptx_arch, ptx)) if ptx_arch <= arch => {
                let text = CString::new(ptx).map_err(|_| unavailable("embedded PTX contains a NUL byte".into()))?;
                // SAFETY: a NUL-terminated PTX image.
                unsafe { result::module::load_data(text.as_ptr() as *const c_void) }.map_err(drv("cuModuleLoadData (PTX JIT)"))
            }
            _ => Err(unavailable(format!(
                "no cubin for sm_{arch} and no PTX this GPU can JIT (embedded: {:?}; rebuild with VGG_CUDA_ARCHS={arch})",
                m.cubins.iter().map(|c| c.0).collect::<Vec<_>>()
            ))),
        }
    }

    /// The kernel's function and the dynamic shared memory it is allowed so far.
    fn function(&self, k: &Kernel) -> Result<(sys::CUfunction, u32)> {
        if let Some(e) = self.functions.lock().unwrap().get(k) {
            return Ok(*e);
        }
        let module = {
            let mut mods = self.modules.lock().unwrap();
            match mods.get(k.module) {
                Some(m) => *m,
                None => {
                    let em = kernels::module(k.module).ok_or_else(|| Error::ModuleUnavailable {
                        module: k.module,
                        reason: "no such kernels/*.cu file in this build".into(),
                    })?;
                    let m = self.load_module(em)?;
                    mods.insert(k.module, m);
                    m
                }
            }
        };
        let name = CString::new(k.name).expect("kernel names have no NUL");
        // SAFETY: `module` is a loaded module; `name` is NUL-terminated.
        let f = unsafe { result::module::get_function(module, name) }.map_err(drv("cuModuleGetFunction"))?;
        self.functions.lock().unwrap().insert(*k, (f, 48 * 1024));
        Ok((f, 48 * 1024))
    }

    /// The kernel's function, allowed `shared_bytes` of dynamic shared memory: above 48 KiB a
    /// kernel must opt in to the larger carve-out (once per size it grows to).
    fn function_for(&self, k: &Kernel, shared_bytes: u32) -> Result<sys::CUfunction> {
        let (f, allowed) = self.function(k)?;
        if shared_bytes > allowed {
            // SAFETY: `f` is a function of a module loaded in this (bound) context.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
            }
            .map_err(drv("cuFuncSetAttribute"))?;
            if let Some(e) = self.functions.lock().unwrap().get_mut(k) {
                e.1 = shared_bytes;
            }
        }
        Ok(f)
    }

    /// `cluster`: blocks a thread-block cluster along x (1: none).
    ///
    /// # Safety
    /// As [`super::Device::launch_cluster`].
    pub unsafe fn launch(&self, k: &Kernel, cfg: LaunchConfig, cluster: u32, args: &mut [*mut c_void]) -> Result<()> {
        self.bind()?;
        let f = self.function_for(k, cfg.shared_bytes)?;
        if cluster == 1 {
            return result::launch_kernel(f, cfg.grid, cfg.block, cfg.shared_bytes, self.stream, args)
                .map_err(|e| Error::Driver { call: "cuLaunchKernel", message: format!("{}: {e}", k.name) });
        }
        let mut attr = cluster_attribute(cluster);
        let config = self.cluster_config(cfg, &mut attr);
        // SAFETY: `config` and the attribute it points at live across the call; `args` as for
        // cuLaunchKernel (this fn's contract); no `extra` array.
        sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()).result().map_err(|e| Error::Driver {
            call: "cuLaunchKernelEx",
            message: format!("{} (cluster of {cluster}): {e}", k.name),
        })
    }

    /// Clusters of `cluster` blocks of `k` at `cfg`'s block size and shared memory that can be
    /// resident at once (cuOccupancyMaxActiveClusters; the grid in `cfg` is not used).
    pub fn max_active_clusters(&self, k: &Kernel, cfg: LaunchConfig, cluster: u32) -> Result<usize> {
        self.bind()?;
        let f = self.function_for(k, cfg.shared_bytes)?;
        let mut attr = cluster_attribute(cluster);
        // The query wants a grid the cluster divides; one cluster is enough.
        let one = LaunchConfig { grid: (cluster, 1, 1), ..cfg };
        let config = self.cluster_config(one, &mut attr);
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `n` is a valid out-pointer; `config` and its attribute live across the call.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f, &config) }
            .result()
            .map_err(|e| Error::Driver { call: "cuOccupancyMaxActiveClusters", message: format!("{}: {e}", k.name) })?;
        Ok(n.max(0) as usize)
    }

    /// cuLaunchKernelEx's configuration of `cfg` on this stream with the one attribute `attr`.
    fn cluster_config(&self, cfg: LaunchConfig, attr: &mut sys::CUlaunchAttribute) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: cfg.grid.0,
            gridDimY: cfg.grid.1,
            gridDimZ: cfg.grid.2,
            blockDimX: cfg.block.0,
            blockDimY: cfg.block.1,
            blockDimZ: cfg.block.2,
            sharedMemBytes: cfg.shared_bytes,
            hStream: self.stream,
            attrs: attr,
            numAttrs: 1,
        }
    }

    /// Makes this device's context current on the calling thread and returns its stream, so
    /// that a vendor library (cuDNN in the benches) runs on exactly our context and stream.
    pub fn raw_stream(&self) -> Result<sys::CUstream> {
        self.bind()?;
        Ok(self.stream)
    }

    /// (free, total) device memory as the driver reports it.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    pub fn start_timer(&self) -> Result<EventTimer> {
        self.bind()?;
        Ok(EventTimer { start: StreamMark::record(self.stream)?, stream: self.stream })
    }
}

impl CudaDevice {
    /// A timing event recorded on the stream now, behind the work queued so far
    /// ([`super::Device::profile_start`]).
    pub fn mark(&self) -> Result<StreamMark> {
        self.bind()?;
        StreamMark::record(self.stream)
    }
}

/// A recorded event, destroyed when dropped.
pub(crate) struct StreamMark {
    ev: sys::CUevent,
}

impl StreamMark {
    /// A fresh timing event recorded on `stream` (of the current context).
    fn record(stream: sys::CUstream) -> Result<Self> {
        let ev = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("cuEventCreate"))?;
        let mark = StreamMark { ev };
        // SAFETY: a fresh event on a live stream of the current context.
        unsafe { result::event::record(mark.ev, stream) }.map_err(drv("cuEventRecord"))?;
        Ok(mark)
    }

    /// Waits until the work queued before the event has run.
    fn wait(&self) -> Result<()> {
        // SAFETY: a live, recorded event.
        unsafe { result::event::synchronize(self.ev) }.map_err(drv("cuEventSynchronize"))
    }

    /// Milliseconds from this event to `later`; both must have completed (the stream was
    /// synchronized after recording them).
    pub fn ms_to(&self, later: &StreamMark) -> Result<f64> {
        // SAFETY: two live events, both recorded and completed.
        unsafe { result::event::elapsed(self.ev, later.ev) }.map(f64::from).map_err(drv("cuEventElapsedTime"))
    }
}

impl Drop for StreamMark {
    fn drop(&mut self) {
        // SAFETY: the event is owned by this mark and not used afterwards.
        unsafe {
            let _ = result::event::destroy(self.ev);
        }
    }
}

// SAFETY: a plain driver handle, used only through the thread-safe driver API.
unsafe impl Send for StreamMark {}

/// An instantiated CUDA graph (the executable and the graph it came from).
pub(crate) struct CudaGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
}

// SAFETY: plain driver handles, used only through the thread-safe driver API after binding
// the context (as CudaDevice).
unsafe impl Send for CudaGraph {}
// SAFETY: as above; launching takes &self and the driver serialises it on the stream.
unsafe impl Sync for CudaGraph {}

impl CudaDevice {
    /// Starts capturing this device's stream. Relaxed mode: the driver does not police other
    /// calls; `Device` itself refuses the ones a replay could not repeat.
    pub fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // Every module loaded first: loading one inside a capture (at a kernel's first launch)
        // is not a stream operation the graph could hold.
        for (module, k) in kernels::all_resources() {
            self.function(&Kernel { module, name: k.name })?;
        }
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: our own live stream, not being captured (Device::capture checks).
        unsafe { result::stream::begin_capture(self.stream, mode) }.map_err(drv("cuStreamBeginCapture"))
    }

    /// Ends the capture (always: the stream must leave capture mode even when the captured
    /// work is to be discarded) and instantiates the graph.
    pub fn end_capture(&self) -> Result<CudaGraph> {
        self.bind()?;
        // SAFETY: the stream is capturing (begin_capture succeeded).
        let graph = unsafe { result::stream::end_capture(self.stream) }.map_err(drv("cuStreamEndCapture"))?;
        let flags = sys::CUgraphInstantiate_flags(0);
        // SAFETY: the graph just captured.
        match unsafe { result::graph::instantiate(graph, flags) } {
            Ok(exec) => Ok(CudaGraph { graph, exec, ctx: self.ctx, stream: self.stream }),
            Err(e) => {
                // SAFETY: the graph is ours and not instantiated.
                unsafe {
                    let _ = result::graph::destroy(graph);
                }
                Err(drv("cuGraphInstantiateWithFlags")(e))
            }
        }
    }
}

impl CudaGraph {
    pub fn launch(&self) -> Result<()> {
        // SAFETY: the context the graph was captured in, retained for the process.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: an instantiated graph and the stream of its device (live while the Device is).
        unsafe { result::graph::launch(self.exec, self.stream) }.map_err(drv("cuGraphLaunch"))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: handles owned by this graph. The stream is drained first, so that no launch of
        // it is still queued or running when it goes (a graph is dropped rarely: when its model
        // re-places buffers, or goes).
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::stream::synchronize(self.stream);
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// Device events bracketing queued work: the start recorded by `start_timer`, the end by
/// `stop_ms`.
pub struct EventTimer {
    start: StreamMark,
    stream: sys::CUstream,
}

impl EventTimer {
    pub fn stop_ms(self) -> Result<f64> {
        let end = StreamMark::record(self.stream)?;
        end.wait()?;
        self.start.ms_to(&end)
    }
}

/// Page-locked host memory, so that a copy to or from it is a true asynchronous copy queued on
/// the stream (from pageable memory the driver waits for the stream first); `event` marks when
/// the last copy has finished.
pub(crate) struct PinnedHost {
    ptr: *mut u8,
    len: usize,
    event: sys::CUevent,
    pending: bool,
}

// SAFETY: the pointer is owned page-locked memory, written only through `&mut self`.
unsafe impl Send for PinnedHost {}

impl CudaDevice {
    pub fn alloc_pinned(&self, len: usize) -> Result<PinnedHost> {
        self.bind()?;
        // SAFETY: a fresh allocation of len bytes (at least 1), owned by the PinnedHost.
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }.map_err(drv("cuMemHostAlloc"))? as *mut u8;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
        match event {
            Ok(event) => Ok(PinnedHost { ptr, len, event, pending: false }),
            Err(e) => {
                // SAFETY: allocated just above, not shared.
                unsafe {
                    let _ = result::free_host(ptr as *mut c_void);
                }
                Err(drv("cuEventCreate")(e))
            }
        }
    }

    /// Queues `dst[..len] = src[..len]` on the stream and returns; `src` stays busy until
    /// [`PinnedHost::wait`].
    ///
    /// # Safety
    /// `dst` spans `src.len` bytes of one live allocation of this device.
    pub unsafe fn upload_pinned(&self, dst: u64, src: &mut PinnedHost) -> Result<()> {
        self.copy_pinned(src, "cuMemcpyHtoDAsync", |host, stream| {
            result::memcpy_htod_async(dst, std::slice::from_raw_parts(host.ptr, host.len), stream)
        })
    }

    /// Queues `dst[..] = src[..dst.len]` (device to host) on the stream and returns; `dst`
    /// holds the data after [`PinnedHost::wait`].
    ///
    /// # Safety
    /// `src` spans `dst.len` bytes of one live allocation of this device.
    pub unsafe fn download_pinned(&self, dst: &mut PinnedHost, src: u64) -> Result<()> {
        self.copy_pinned(dst, "cuMemcpyDtoHAsync", |host, stream| {
            result::memcpy_dtoh_async(std::slice::from_raw_parts_mut(host.ptr, host.len), src, stream)
        })
    }

    /// Queues `copy` of `p`'s bytes on the stream once no earlier copy uses them, and marks `p`
    /// busy until it is done.
    ///
    /// # Safety
    /// `copy` must touch only `p`'s bytes and device memory its caller vouches for.
    unsafe fn copy_pinned(
        &self,
        p: &mut PinnedHost,
        call: &'static str,
        copy: impl FnOnce(&PinnedHost, sys::CUstream) -> std::result::Result<(), result::DriverError>,
    ) -> Result<()> {
        self.bind()?;
        p.wait()?;
        copy(p, self.stream).map_err(drv(call))?;
        result::event::record(p.event, self.stream).map_err(drv("cuEventRecord"))?;
        p.pending = true;
        Ok(())
    }

    /// Frees `p` once its last copy is done (the context must be current for the free).
    pub fn free_pinned(&self, p: &mut PinnedHost) {
        let _ = p.wait();
        if self.bind().is_ok() {
            // SAFETY: owned by `p`, no copy reads it any more (waited above), not used afterwards.
            unsafe {
                let _ = result::free_host(p.ptr as *mut c_void);
                let _ = result::event::destroy(p.event);
            }
        }
        p.ptr = std::ptr::null_mut();
    }
}

impl PinnedHost {
    /// Waits until the last copy to or from this buffer is done (not for the rest of the stream).
    pub fn wait(&mut self) -> Result<()> {
        if self.pending {
            // SAFETY: an event of this buffer, recorded on the stream after its last copy.
            unsafe { result::event::synchronize(self.event) }.map_err(drv("cuEventSynchronize"))?;
            self.pending = false;
        }
        Ok(())
    }

    /// The bytes, once no copy is in flight.
    pub fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        self.wait()?;
        // SAFETY: len bytes owned by this buffer, no copy in flight (waited above).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }
}

/// A cluster is a launch attribute of cuLaunchKernelEx (the kernels declare no
/// __cluster_dims__): the cluster's extent in blocks along each grid dimension, here x only.
fn cluster_attribute(cluster: u32) -> sys::CUlaunchAttribute {
    // SAFETY (zeroed): a C union of plain integers and pointers, all valid as zeros.
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value: unsafe { std::mem::zeroed() },
    };
    attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x: cluster, y: 1, z: 1 };
    attr
}
