//! cuDNN as the conv bench's yardstick: the same 3x3 problem (fp16 NHWC activations, fp16
//! KRSC filters = cuDNN's NHWC filter format, pad 1, stride 1, fp32 compute, tensor-op math
//! allowed), with the algorithm cuDNN itself measures fastest (`cudnnFind*AlgorithmEx`, not
//! the heuristic), run on our context and our stream so that one set of device events times
//! both.
//!
//! The library is found and opened by cudarc (`cudarc::cudnn::sys::is_culib_present` /
//! `culib`: `libcudnn.so`, ..., `libcudnn.so.9`, on the loader path), but the legacy
//! convolution entry points are resolved here with C-ABI signatures of plain integers:
//! cudarc's bindings return Rust enums, which would be undefined behaviour on a status code
//! newer than its headers, and panic on a missing symbol. Here a missing library or symbol is
//! a [`CudnnError::Unavailable`] that the bench reports as a note, never a panic.

mod api;

use crate::problem::ConvProblem;
use crate::{Device, Tensor};
use api::{check, load, status_name, version_string, AlgoPerf, Api, Descriptors, Handle, CUDNN_STATUS_SUCCESS};
use half::f16;
use std::ffi::{c_int, c_void};

/// Why cuDNN could not serve a measurement.
#[derive(Debug, thiserror::Error)]
pub enum CudnnError {
    /// The library (or a symbol of it) cannot be loaded, or the device is not a GPU.
    #[error("cuDNN unavailable: {0}")]
    Unavailable(String),
    /// A cuDNN call returned an error status.
    #[error("{call} failed: {name} ({status})")]
    Call {
        /// The entry point called, e.g. `cudnnCreate`.
        call: &'static str,
        /// The status it returned.
        status: i32,
        /// The status's name from `cudnnGetErrorString`, or `status N` when there is none.
        name: String,
    },
    /// No algorithm of cuDNN's search ran successfully.
    #[error("{0}")]
    NoAlgorithm(String),
    /// Our side (allocation, device, shapes).
    #[error(transparent)]
    Device(#[from] crate::Error),
}

/// The pass of a convolution as cuDNN names its three entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudnnPass {
    /// `cudnnConvolutionForward`: y = conv(x, w).
    Forward,
    /// `cudnnConvolutionBackwardData`: dx from dy and w.
    BackwardData,
    /// `cudnnConvolutionBackwardFilter`: dw from x and dy.
    BackwardFilter,
}

impl CudnnPass {
    /// Element counts of (first input, second input, output) of this pass.
    fn lens(self, p: &ConvProblem) -> (usize, usize, usize) {
        match self {
            CudnnPass::Forward => (p.input_len(), p.filter_len(), p.output_len()),
            CudnnPass::BackwardData => (p.output_len(), p.filter_len(), p.input_len()),
            CudnnPass::BackwardFilter => (p.input_len(), p.output_len(), p.filter_len()),
        }
    }

    fn algo_name(self, algo: c_int) -> String {
        const FWD: &[&str] = &[
            "implicit_gemm",
            "implicit_precomp_gemm",
            "gemm",
            "direct",
            "fft",
            "fft_tiling",
            "winograd",
            "winograd_nonfused",
        ];
        const BWD_DATA: &[&str] = &["algo_0", "algo_1", "fft", "fft_tiling", "winograd", "winograd_nonfused"];
        const BWD_FILTER: &[&str] =
            &["algo_0", "algo_1", "fft", "algo_3", "winograd", "winograd_nonfused", "fft_tiling"];
        let names = match self {
            CudnnPass::Forward => FWD,
            CudnnPass::BackwardData => BWD_DATA,
            CudnnPass::BackwardFilter => BWD_FILTER,
        };
        usize::try_from(algo).ok().and_then(|i| names.get(i)).map_or_else(|| format!("algo#{algo}"), |s| s.to_string())
    }
}

/// Whether cuDNN can be loaded here with every entry point the bench calls: its version
/// (`9.19.1`), or why not. Needs no GPU.
pub fn probe() -> Result<String, CudnnError> {
    load().map(|(_, v)| version_string(v))
}

/// An open cuDNN handle bound to a cuda [`Device`]'s context and stream.
pub struct Cudnn {
    api: Api,
    handle: Handle,
    dev: Device,
    version: usize,
}

impl Cudnn {
    /// Loads cuDNN and creates a handle on `dev`'s stream, or says why it cannot.
    pub fn new(dev: &Device) -> Result<Self, CudnnError> {
        let Some(stream) = dev.cuda_raw_stream()? else {
            return Err(CudnnError::Unavailable(format!("{} is not a GPU", dev.name())));
        };
        let (api, version) = load()?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: our context is current on this thread (cuda_raw_stream bound it), so the
        // handle is created in it; `handle` is a valid out-pointer.
        check(&api, "cudnnCreate", unsafe { (api.cudnnCreate)(&mut handle) })?;
        let me = Self { api, handle, dev: dev.clone(), version };
        // SAFETY: a live handle and the device's own live stream (kept alive by `me.dev`).
        check(&me.api, "cudnnSetStream", unsafe { (me.api.cudnnSetStream)(me.handle, stream) })?;
        Ok(me)
    }

    /// The library's version, e.g. `9.19.1`.
    pub fn version(&self) -> String {
        version_string(self.version)
    }

    /// Describes `problem` to cuDNN for `pass`, lets cuDNN time every algorithm on the given
    /// buffers (`cudnnFind*AlgorithmEx`, with a workspace of up to `max_workspace` bytes) and
    /// keeps the fastest that succeeded. `a`, `b`, `out` are as in [`CudnnPlan::run`]; `out`
    /// is overwritten.
    pub fn plan(
        &self,
        problem: ConvProblem,
        pass: CudnnPass,
        a: &Tensor<f16>,
        b: &Tensor<f16>,
        out: &mut Tensor<f16>,
        max_workspace: usize,
    ) -> Result<CudnnPlan<'_>, CudnnError> {
        let mut plan = CudnnPlan {
            cudnn: self,
            problem,
            pass,
            d: Descriptors::new(&self.api, &problem)?,
            algo: -1,
            algo_name: String::new(),
            workspace_bytes: 0,
            find_ms: f32::NAN,
        };
        plan.check_buffers(a, b, out, None)?;
        let (ws_bytes, ws) = self.find_workspace(&plan, max_workspace)?;
        let api = &self.api;
        let h = self.handle;
        let mut perf = vec![AlgoPerf::default(); 16];
        let mut count: c_int = 0;
        let (pa, pb, po) = (ptr(a), ptr(b), out.device_ptr() as *mut c_void);
        let pws = ws.as_ref().map_or(std::ptr::null_mut(), |t| t.device_ptr() as *mut c_void);
        self.dev.cuda_raw_stream()?;
        self.dev.synchronize()?;
        // SAFETY: descriptors were set in `describe`; the buffers were checked to hold the
        // elements the descriptors imply and live on our device; `perf` holds 16 entries
        // (more than any cuDNN 8 / 9 algorithm count) and we ask for at most that many; the
        // workspace spans `ws_bytes`.
        let status = unsafe {
            match pass {
                CudnnPass::Forward => (api.cudnnFindConvolutionForwardAlgorithmEx)(
                    h,
                    plan.d.x,
                    pa,
                    plan.d.w,
                    pb,
                    plan.d.conv,
                    plan.d.y,
                    po,
                    perf.len() as c_int,
                    &mut count,
                    perf.as_mut_ptr(),
                    pws,
                    ws_bytes,
                ),
                CudnnPass::BackwardData => (api.cudnnFindConvolutionBackwardDataAlgorithmEx)(
                    h,
                    plan.d.w,
                    pb,
                    plan.d.y,
                    pa,
                    plan.d.conv,
                    plan.d.x,
                    po,
                    perf.len() as c_int,
                    &mut count,
                    perf.as_mut_ptr(),
                    pws,
                    ws_bytes,
                ),
                CudnnPass::BackwardFilter => (api.cudnnFindConvolutionBackwardFilterAlgorithmEx)(
                    h,
                    plan.d.x,
                    pa,
                    plan.d.y,
                    pb,
                    plan.d.conv,
                    plan.d.w,
                    po,
                    perf.len() as c_int,
                    &mut count,
                    perf.as_mut_ptr(),
                    pws,
                    ws_bytes,
                ),
            }
        };
        check(api, find_name(pass), status)?;
        drop(ws);
        let found = &perf[..(count.max(0) as usize).min(perf.len())];
        // cuDNN sorts the results by time; keep the first that ran.
        let best = found.iter().find(|r| r.status == CUDNN_STATUS_SUCCESS && r.time >= 0.0 && r.algo >= 0).ok_or_else(
            || {
                let tried: Vec<String> = found
                    .iter()
                    .map(|r| format!("{}: {}", pass.algo_name(r.algo), status_name(api, r.status)))
                    .collect();
                CudnnError::NoAlgorithm(format!(
                    "{}: no algorithm ran within a {} MiB workspace (tried: {})",
                    find_name(pass),
                    ws_bytes >> 20,
                    tried.join(", ")
                ))
            },
        )?;
        plan.algo = best.algo;
        let math = match best.math_type {
            0 => "",
            1 => "+tc",
            2 => "+tc_conv",
            3 => "+fma",
            _ => "+math?",
        };
        plan.algo_name = format!("{}{math}", pass.algo_name(best.algo));
        plan.workspace_bytes = best.memory;
        plan.find_ms = best.time;
        // The math type the winner was measured with must be the one it runs with.
        // SAFETY: a live convolution descriptor; the value came from cuDNN itself.
        check(api, "cudnnSetConvolutionMathType", unsafe {
            (api.cudnnSetConvolutionMathType)(plan.d.conv, best.math_type)
        })?;
        Ok(plan)
    }

    /// A workspace for the algorithm search: the largest any algorithm asks for, capped at
    /// `max`, halved until it can be allocated (algorithms that need more are skipped).
    fn find_workspace(&self, plan: &CudnnPlan, max: usize) -> Result<(usize, Option<Tensor<u8>>), CudnnError> {
        let api = &self.api;
        let mut n: c_int = 0;
        // SAFETY: live handle, valid out-pointer.
        let st = unsafe {
            match plan.pass {
                CudnnPass::Forward => (api.cudnnGetConvolutionForwardAlgorithmMaxCount)(self.handle, &mut n),
                CudnnPass::BackwardData => (api.cudnnGetConvolutionBackwardDataAlgorithmMaxCount)(self.handle, &mut n),
                CudnnPass::BackwardFilter => {
                    (api.cudnnGetConvolutionBackwardFilterAlgorithmMaxCount)(self.handle, &mut n)
                }
            }
        };
        check(api, "cudnnGetConvolution*AlgorithmMaxCount", st)?;
        let mut want = 0usize;
        for algo in 0..n.clamp(0, 16) {
            let mut bytes = 0usize;
            // SAFETY: live handle and descriptors, valid out-pointer; an algorithm that does
            // not support the problem answers with an error status, which we skip.
            let st = unsafe {
                match plan.pass {
                    CudnnPass::Forward => (api.cudnnGetConvolutionForwardWorkspaceSize)(
                        self.handle,
                        plan.d.x,
                        plan.d.w,
                        plan.d.conv,
                        plan.d.y,
                        algo,
                        &mut bytes,
                    ),
                    CudnnPass::BackwardData => (api.cudnnGetConvolutionBackwardDataWorkspaceSize)(
                        self.handle,
                        plan.d.w,
                        plan.d.y,
                        plan.d.conv,
                        plan.d.x,
                        algo,
                        &mut bytes,
                    ),
                    CudnnPass::BackwardFilter => (api.cudnnGetConvolutionBackwardFilterWorkspaceSize)(
                        self.handle,
                        plan.d.x,
                        plan.d.y,
                        plan.d.conv,
                        plan.d.w,
                        algo,
                        &mut bytes,
                    ),
                }
            };
            if st == CUDNN_STATUS_SUCCESS {
                want = want.max(bytes);
            }
        }
        let mut bytes = want.min(max);
        while bytes > 0 {
            match Tensor::<u8>::empty(&self.dev, &[bytes]) {
                Ok(t) => return Ok((bytes, Some(t))),
                Err(_) if bytes > 16 << 20 => bytes /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((0, None))
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        if self.dev.cuda_raw_stream().is_ok() {
            // SAFETY: the handle was created in `new` and every plan borrowing it is gone.
            unsafe { (self.api.cudnnDestroy)(self.handle) };
        }
    }
}

/// One problem and pass described to cuDNN, with the algorithm its search found fastest.
pub struct CudnnPlan<'a> {
    cudnn: &'a Cudnn,
    problem: ConvProblem,
    pass: CudnnPass,
    d: Descriptors<'a>,
    algo: c_int,
    algo_name: String,
    workspace_bytes: usize,
    find_ms: f32,
}

impl CudnnPlan<'_> {
    /// `implicit_precomp_gemm+tc`: cuDNN's algorithm name and the math type it was measured
    /// with (`+tc` tensor-op math, `+tc_conv` with down-conversion, `+fma`, none: default).
    pub fn algo_name(&self) -> &str {
        &self.algo_name
    }
    /// Bytes of workspace [`CudnnPlan::run`] needs.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_bytes
    }
    /// cuDNN's own time for the winner during its search, in ms.
    pub fn find_ms(&self) -> f32 {
        self.find_ms
    }

    /// Queues the pass on the device's stream: forward `a` = x, `b` = w, `out` = y;
    /// backward data `a` = dy, `b` = w, `out` = dx; backward filter `a` = x, `b` = dy,
    /// `out` = dw (fp16, KRSC).
    pub fn run(
        &self,
        a: &Tensor<f16>,
        b: &Tensor<f16>,
        out: &mut Tensor<f16>,
        ws: &mut Tensor<u8>,
    ) -> Result<(), CudnnError> {
        self.check_buffers(a, b, out, Some(ws))?;
        let c = self.cudnn;
        let api = &c.api;
        let (alpha, beta) = (1f32, 0f32);
        let (pa, pb, po) = (ptr(a), ptr(b), out.device_ptr() as *mut c_void);
        let pws = ws.device_ptr() as *mut c_void;
        c.dev.cuda_raw_stream()?;
        // SAFETY: descriptors set in `describe`; buffers checked above to live on our device
        // with the lengths the descriptors imply; the workspace spans at least the bytes the
        // chosen algorithm asked for; alpha / beta are floats, as half data requires.
        let status = unsafe {
            match self.pass {
                CudnnPass::Forward => (api.cudnnConvolutionForward)(
                    c.handle,
                    &alpha,
                    self.d.x,
                    pa,
                    self.d.w,
                    pb,
                    self.d.conv,
                    self.algo,
                    pws,
                    self.workspace_bytes,
                    &beta,
                    self.d.y,
                    po,
                ),
                CudnnPass::BackwardData => (api.cudnnConvolutionBackwardData)(
                    c.handle,
                    &alpha,
                    self.d.w,
                    pb,
                    self.d.y,
                    pa,
                    self.d.conv,
                    self.algo,
                    pws,
                    self.workspace_bytes,
                    &beta,
                    self.d.x,
                    po,
                ),
                CudnnPass::BackwardFilter => (api.cudnnConvolutionBackwardFilter)(
                    c.handle,
                    &alpha,
                    self.d.x,
                    pa,
                    self.d.y,
                    pb,
                    self.d.conv,
                    self.algo,
                    pws,
                    self.workspace_bytes,
                    &beta,
                    self.d.w,
                    po,
                ),
            }
        };
        check(api, run_name(self.pass), status)
    }

    fn check_buffers(
        &self,
        a: &Tensor<f16>,
        b: &Tensor<f16>,
        out: &Tensor<f16>,
        ws: Option<&Tensor<u8>>,
    ) -> Result<(), CudnnError> {
        let dev = &self.cudnn.dev;
        let (la, lb, lo) = self.pass.lens(&self.problem);
        let (na, nb, no) = match self.pass {
            CudnnPass::Forward => ("cuDNN fprop x", "cuDNN fprop w", "cuDNN fprop y"),
            CudnnPass::BackwardData => ("cuDNN dgrad dy", "cuDNN dgrad w", "cuDNN dgrad dx"),
            CudnnPass::BackwardFilter => ("cuDNN wgrad x", "cuDNN wgrad dy", "cuDNN wgrad dw"),
        };
        a.check(dev, na, la)?;
        b.check(dev, nb, lb)?;
        out.check(dev, no, lo)?;
        if let Some(ws) = ws {
            if !ws.device().same(dev) || ws.len() < self.workspace_bytes {
                return Err(crate::Error::Shape(format!(
                    "{} workspace has {} bytes, the algorithm needs {}",
                    run_name(self.pass),
                    ws.len(),
                    self.workspace_bytes
                ))
                .into());
            }
        }
        Ok(())
    }
}

fn ptr(t: &Tensor<f16>) -> *const c_void {
    t.device_ptr() as *const c_void
}

fn find_name(pass: CudnnPass) -> &'static str {
    match pass {
        CudnnPass::Forward => "cudnnFindConvolutionForwardAlgorithmEx",
        CudnnPass::BackwardData => "cudnnFindConvolutionBackwardDataAlgorithmEx",
        CudnnPass::BackwardFilter => "cudnnFindConvolutionBackwardFilterAlgorithmEx",
    }
}

fn run_name(pass: CudnnPass) -> &'static str {
    match pass {
        CudnnPass::Forward => "cudnnConvolutionForward",
        CudnnPass::BackwardData => "cudnnConvolutionBackwardData",
        CudnnPass::BackwardFilter => "cudnnConvolutionBackwardFilter",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_string(91901), "9.19.1");
        assert_eq!(version_string(8907), "8.9.7");
    }

    /// Loading is a value either way; with `VGG_EXPECT_CUDNN=1` (a machine whose loader path
    /// holds libcudnn) every entry point must resolve.
    #[test]
    fn probe_never_panics() {
        let r = probe();
        eprintln!("cuDNN probe: {r:?}");
        if std::env::var("VGG_EXPECT_CUDNN").as_deref() == Ok("1") {
            assert!(r.is_ok(), "{r:?}");
        }
    }

    /// Our descriptors are ones cuDNN accepts (no handle or GPU needed), when it loads here.
    #[test]
    fn descriptors_are_accepted() {
        let Ok((api, _)) = load() else {
            eprintln!("no cuDNN here: descriptors not checked");
            return;
        };
        for np in crate::problem::vgg16_layers(64) {
            if let Err(e) = Descriptors::new(&api, &np.problem) {
                panic!("{}: {e}", np.name);
            }
        }
        let huge = ConvProblem::new(1 << 20, 224, 224, 64, 64);
        assert!(Descriptors::new(&api, &huge).is_err());
    }

    #[test]
    fn emu_is_not_a_gpu() {
        let e = Cudnn::new(&Device::emu()).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("cuDNN unavailable: emu is not a GPU"));
    }
}
