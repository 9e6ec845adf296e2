//! The C side of [`super`]: cudnn.h's enum values, `AlgoPerf`, every entry point the bench
//! calls as a C-ABI function pointer of plain integers, resolved once from the library cudarc
//! opens, the four descriptors of a problem, and status checks.

use super::CudnnError;
use crate::problem::ConvProblem;
use std::ffi::{c_char, c_int, c_void, CStr};

pub(super) type Status = c_int;
pub(super) type Handle = *mut c_void;
pub(super) type Desc = *mut c_void;

// Enum values of cudnn.h (identical in cuDNN 8 and 9).
pub(super) const CUDNN_STATUS_SUCCESS: Status = 0;
pub(super) const CUDNN_DATA_FLOAT: c_int = 0;
pub(super) const CUDNN_DATA_HALF: c_int = 2;
pub(super) const CUDNN_TENSOR_NHWC: c_int = 1;
pub(super) const CUDNN_CROSS_CORRELATION: c_int = 1;
pub(super) const CUDNN_TENSOR_OP_MATH: c_int = 1;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`: the three share this layout, with the
/// enums read as plain integers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AlgoPerf {
    pub(super) algo: c_int,
    pub(super) status: Status,
    pub(super) time: f32,
    pub(super) memory: usize,
    pub(super) determinism: c_int,
    pub(super) math_type: c_int,
    pub(super) reserved: [c_int; 3],
}

macro_rules! cudnn_api {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        /// The cuDNN entry points the bench calls, resolved once.
        #[allow(non_snake_case)]
        pub(super) struct Api {
            $(pub(super) $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Api {
            /// Resolves every entry point, or names the first one the library lacks.
            ///
            /// # Safety
            /// libcudnn must be loadable (checked with `is_culib_present` first, else cudarc
            /// panics), and the signatures above must be cudnn.h's.
            unsafe fn load() -> Result<Self, CudnnError> {
                let lib = cudarc::cudnn::sys::culib();
                Ok(Self {
                    $($name: {
                        let sym = lib
                            .get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes())
                            .map_err(|e| CudnnError::Unavailable(format!("libcudnn has no `{}`: {e}", stringify!($name))))?;
                        *sym
                    },)*
                })
            }
        }
    };
}

// Signatures of cudnn.h (cuDNN 8.x and 9.x), enums as `c_int`, handles and descriptors as
// opaque pointers, `alpha` / `beta` as `float*` (the scaling type of half data).
cudnn_api! {
    cudnnGetVersion() -> usize;
    cudnnGetErrorString(Status) -> *const c_char;
    cudnnCreate(*mut Handle) -> Status;
    cudnnDestroy(Handle) -> Status;
    cudnnSetStream(Handle, *mut c_void) -> Status;
    cudnnCreateTensorDescriptor(*mut Desc) -> Status;
    cudnnDestroyTensorDescriptor(Desc) -> Status;
    cudnnSetTensor4dDescriptor(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnCreateFilterDescriptor(*mut Desc) -> Status;
    cudnnDestroyFilterDescriptor(Desc) -> Status;
    cudnnSetFilter4dDescriptor(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnCreateConvolutionDescriptor(*mut Desc) -> Status;
    cudnnDestroyConvolutionDescriptor(Desc) -> Status;
    cudnnSetConvolution2dDescriptor(Desc, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnSetConvolutionMathType(Desc, c_int) -> Status;
    cudnnGetConvolution2dForwardOutputDim(Desc, Desc, Desc, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> Status;
    cudnnGetConvolutionForwardAlgorithmMaxCount(Handle, *mut c_int) -> Status;
    cudnnGetConvolutionBackwardDataAlgorithmMaxCount(Handle, *mut c_int) -> Status;
    cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(Handle, *mut c_int) -> Status;
    cudnnGetConvolutionForwardWorkspaceSize(Handle, Desc, Desc, Desc, Desc, c_int, *mut usize) -> Status;
    cudnnGetConvolutionBackwardDataWorkspaceSize(Handle, Desc, Desc, Desc, Desc, c_int, *mut usize) -> Status;
    cudnnGetConvolutionBackwardFilterWorkspaceSize(Handle, Desc, Desc, Desc, Desc, c_int, *mut usize) -> Status;
    cudnnFindConvolutionForwardAlgorithmEx(
        Handle, Desc, *const c_void, Desc, *const c_void, Desc, Desc, *mut c_void,
        c_int, *mut c_int, *mut AlgoPerf, *mut c_void, usize
    ) -> Status;
    cudnnFindConvolutionBackwardDataAlgorithmEx(
        Handle, Desc, *const c_void, Desc, *const c_void, Desc, Desc, *mut c_void,
        c_int, *mut c_int, *mut AlgoPerf, *mut c_void, usize
    ) -> Status;
    cudnnFindConvolutionBackwardFilterAlgorithmEx(
        Handle, Desc, *const c_void, Desc, *const c_void, Desc, Desc, *mut c_void,
        c_int, *mut c_int, *mut AlgoPerf, *mut c_void, usize
    ) -> Status;
    cudnnConvolutionForward(
        Handle, *const f32, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const f32, Desc, *mut c_void
    ) -> Status;
    cudnnConvolutionBackwardData(
        Handle, *const f32, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const f32, Desc, *mut c_void
    ) -> Status;
    cudnnConvolutionBackwardFilter(
        Handle, *const f32, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const f32, Desc, *mut c_void
    ) -> Status;
}

/// Loads libcudnn and resolves every entry point the bench uses; returns them with the
/// library's version number.
pub(super) fn load() -> Result<(Api, usize), CudnnError> {
    // SAFETY: only tries to dlopen the candidate names; no symbol is called.
    if !unsafe { cudarc::cudnn::sys::is_culib_present() } {
        return Err(CudnnError::Unavailable(
            "libcudnn could not be loaded (tried libcudnn.so and libcudnn.so.{9..13} on the loader path; \
             put torch's nvidia/cudnn/lib on LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    // SAFETY: the library is loadable (just checked); the signatures are cudnn.h's.
    let api = unsafe { Api::load()? };
    // SAFETY: no arguments; returns the library's version number.
    let version = unsafe { (api.cudnnGetVersion)() };
    if version < 8000 {
        return Err(CudnnError::Unavailable(format!("cuDNN {version} is too old (the bench needs 8 or newer)")));
    }
    Ok((api, version))
}

/// `9.19.1` from cudnnGetVersion's number (`major*10000 + minor*100 + patch` since 9,
/// `major*1000 + minor*100 + patch` before).
pub(super) fn version_string(v: usize) -> String {
    if v >= 90000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

/// The four descriptors of a problem: NHWC fp16 x (or dx) and y (or dy), KRSC fp16 w (or
/// dw), and the convolution (pad 1, stride 1, cross-correlation, fp32 compute, tensor-op math
/// allowed).
pub(super) struct Descriptors<'a> {
    pub(super) api: &'a Api,
    pub(super) x: Desc,
    pub(super) y: Desc,
    pub(super) w: Desc,
    pub(super) conv: Desc,
}

impl<'a> Descriptors<'a> {
    pub(super) fn new(api: &'a Api, p: &ConvProblem) -> Result<Self, CudnnError> {
        let dim = |what: &str, v: usize| {
            c_int::try_from(v).map_err(|_| crate::Error::Shape(format!("{what} = {v} does not fit cuDNN's int")))
        };
        let (n, h, w, c, k) = (dim("N", p.n)?, dim("H", p.h)?, dim("W", p.w)?, dim("C", p.c)?, dim("K", p.k)?);
        let null = std::ptr::null_mut();
        // Each descriptor is stored in `d` as soon as it exists, so Drop frees it even when a
        // later step fails.
        let mut d = Self { api, x: null, y: null, w: null, conv: null };
        // SAFETY: valid out-pointers; each descriptor is set right after its creation with
        // values cuDNN validates (an unsupported combination is an error status).
        unsafe {
            check(api, "cudnnCreateTensorDescriptor", (api.cudnnCreateTensorDescriptor)(&mut d.x))?;
            check(api, "cudnnCreateTensorDescriptor", (api.cudnnCreateTensorDescriptor)(&mut d.y))?;
            check(api, "cudnnCreateFilterDescriptor", (api.cudnnCreateFilterDescriptor)(&mut d.w))?;
            check(api, "cudnnCreateConvolutionDescriptor", (api.cudnnCreateConvolutionDescriptor)(&mut d.conv))?;
            check(
                api,
                "cudnnSetTensor4dDescriptor",
                (api.cudnnSetTensor4dDescriptor)(d.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, c, h, w),
            )?;
            check(
                api,
                "cudnnSetTensor4dDescriptor",
                (api.cudnnSetTensor4dDescriptor)(d.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, k, h, w),
            )?;
            // Filter format NHWC = [K][R][S][C], our KRSC.
            check(
                api,
                "cudnnSetFilter4dDescriptor",
                (api.cudnnSetFilter4dDescriptor)(d.w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, k, c, 3, 3),
            )?;
            // pad 1 x 1, stride 1 x 1, dilation 1 x 1.
            check(
                api,
                "cudnnSetConvolution2dDescriptor",
                (api.cudnnSetConvolution2dDescriptor)(
                    d.conv,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    CUDNN_CROSS_CORRELATION,
                    CUDNN_DATA_FLOAT,
                ),
            )?;
            check(api, "cudnnSetConvolutionMathType", (api.cudnnSetConvolutionMathType)(d.conv, CUDNN_TENSOR_OP_MATH))?;
        }
        // cuDNN's own idea of the output shape must be ours, N x K x H x W.
        let mut out = [0 as c_int; 4];
        // SAFETY: descriptors set above; four valid out-pointers.
        check(api, "cudnnGetConvolution2dForwardOutputDim", unsafe {
            let [on, ok, oh, ow] = &mut out;
            (api.cudnnGetConvolution2dForwardOutputDim)(d.conv, d.x, d.w, on, ok, oh, ow)
        })?;
        if out != [n, k, h, w] {
            return Err(CudnnError::NoAlgorithm(format!(
                "cuDNN's output shape (NKHW) {out:?} for {p} is not the expected {:?}",
                [n, k, h, w]
            )));
        }
        Ok(d)
    }
}

impl Drop for Descriptors<'_> {
    fn drop(&mut self) {
        let api = self.api;
        // SAFETY: each non-null descriptor was created in `new` and is freed once.
        unsafe {
            if !self.x.is_null() {
                (api.cudnnDestroyTensorDescriptor)(self.x);
            }
            if !self.y.is_null() {
                (api.cudnnDestroyTensorDescriptor)(self.y);
            }
            if !self.w.is_null() {
                (api.cudnnDestroyFilterDescriptor)(self.w);
            }
            if !self.conv.is_null() {
                (api.cudnnDestroyConvolutionDescriptor)(self.conv);
            }
        }
    }
}

pub(super) fn status_name(api: &Api, status: Status) -> String {
    // SAFETY: cudnnGetErrorString accepts any value and returns a static C string (or null).
    let s = unsafe { (api.cudnnGetErrorString)(status) };
    if s.is_null() {
        format!("status {status}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

pub(super) fn check(api: &Api, call: &'static str, status: Status) -> Result<(), CudnnError> {
    if status == CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudnnError::Call { call, status, name: status_name(api, status) })
    }
}
