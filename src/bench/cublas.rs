//! cuBLAS as the GEMM bench's yardstick: the same row-major linear-layer products as
//! [`crate::ops::gemm`] (fp16 inputs, fp32 compute, tensor ops under cuBLAS's default
//! algorithm; fp16 outputs, fp32 for the weight gradient), run on our context and our stream
//! so that one set of device events times both.
//!
//! The library is found and opened by cudarc (`cudarc::cublas::sys::is_culib_present` /
//! `culib`: `libcublas.so`, `libcublas.so.13`, `libcublas.so.12`, ... on the loader path), but
//! the few entry points used are resolved here with C-ABI signatures of plain integers, as in
//! [`super::cudnn`]: cudarc's bindings take and return Rust enums (undefined behaviour on a
//! status newer than its headers) and panic on a missing symbol. Here a missing library or
//! symbol is a [`CublasError::Unavailable`] that the bench reports as a note, never a panic.
//!
//! cuBLAS is column-major; a row-major `[R][C]` buffer is the column-major `C x R` matrix
//! (its transpose) with leading dimension `C`. So each row-major product is asked for
//! transposed (see [`Cublas::linear_fwd`] and the two others).

use crate::ops::gemm::Linear;
use crate::{Device, Tensor};
use half::f16;
use std::ffi::{c_char, c_int, c_void, CStr};

/// Why cuBLAS could not serve a measurement.
#[derive(Debug, thiserror::Error)]
pub enum CublasError {
    /// The library (or a symbol of it) cannot be loaded, or the device is not a GPU.
    #[error("cuBLAS unavailable: {0}")]
    Unavailable(String),
    /// A cuBLAS call returned an error status.
    #[error("{call} failed: {name} ({status})")]
    Call {
        /// The entry point called, e.g. `cublasCreate_v2`.
        call: &'static str,
        /// The status it returned.
        status: i32,
        /// The status's name from `cublasGetStatusString`, or `status N` when there is none.
        name: String,
    },
    /// Our side (allocation, device, shapes).
    #[error(transparent)]
    Device(#[from] crate::Error),
}

type Status = c_int;
type Handle = *mut c_void;

// Enum values of cublas_api.h / library_types.h (identical in CUDA 11, 12 and 13).
const CUBLAS_STATUS_SUCCESS: Status = 0;
const CUBLAS_OP_N: c_int = 0;
const CUBLAS_OP_T: c_int = 1;
const CUDA_R_32F: c_int = 0;
const CUDA_R_16F: c_int = 2;
const CUBLAS_COMPUTE_32F: c_int = 68;
/// `CUBLAS_GEMM_DEFAULT`: cuBLAS's own heuristic; since CUDA 11 it uses tensor cores for
/// fp16 inputs unless the handle's math mode is pedantic (the default mode allows them).
const CUBLAS_GEMM_DEFAULT: c_int = -1;
/// `libraryPropertyType`: MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL.
const VERSION_PROPERTIES: [c_int; 3] = [0, 1, 2];

macro_rules! cublas_api {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        /// The cuBLAS entry points the bench calls, resolved once.
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            /// `cublasGetStatusString` (cuBLAS 11.4+), optional: only for messages.
            status_string: Option<unsafe extern "C" fn(Status) -> *const c_char>,
        }

        impl Api {
            /// Resolves every entry point, or names the first one the library lacks.
            ///
            /// # Safety
            /// libcublas must be loadable (checked with `is_culib_present` first, else cudarc
            /// panics), and the signatures above must be cublas_api.h's.
            unsafe fn load() -> Result<Self, CublasError> {
                let lib = cudarc::cublas::sys::culib();
                Ok(Self {
                    $($name: {
                        let sym = lib
                            .get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes())
                            .map_err(|e| CublasError::Unavailable(format!("libcublas has no `{}`: {e}", stringify!($name))))?;
                        *sym
                    },)*
                    status_string: lib
                        .get::<unsafe extern "C" fn(Status) -> *const c_char>(b"cublasGetStatusString\0")
                        .ok()
                        .map(|s| *s),
                })
            }
        }
    };
}

// Signatures of cublas_api.h (cuBLAS 11 to 13), enums as `c_int`, the handle and the stream as
// opaque pointers, alpha / beta as `const void*` (floats: the scaling type of
// CUBLAS_COMPUTE_32F, with the default host pointer mode).
cublas_api! {
    cublasGetProperty(c_int, *mut c_int) -> Status;
    cublasCreate_v2(*mut Handle) -> Status;
    cublasDestroy_v2(Handle) -> Status;
    cublasSetStream_v2(Handle, *mut c_void) -> Status;
    cublasGemmEx(
        Handle, c_int, c_int, c_int, c_int, c_int, *const c_void,
        *const c_void, c_int, c_int, *const c_void, c_int, c_int,
        *const c_void, *mut c_void, c_int, c_int, c_int, c_int
    ) -> Status;
}

/// Loads libcublas and resolves every entry point the bench uses; returns them with the
/// library's version (`13.0.2`).
fn load() -> Result<(Api, String), CublasError> {
    // SAFETY: only tries to dlopen the candidate names; no symbol is called.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CublasError::Unavailable(
            "libcublas could not be loaded (tried libcublas.so and libcublas.so.{13,12,11,...} on the loader \
             path; put torch's nvidia/cu13/lib (or nvidia/cublas/lib) on LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    // SAFETY: the library is loadable (just checked); the signatures are cublas_api.h's.
    let api = unsafe { Api::load()? };
    let mut v = [0 as c_int; 3];
    for (prop, out) in VERSION_PROPERTIES.into_iter().zip(v.iter_mut()) {
        // SAFETY: a valid property number and out-pointer; needs no handle or GPU.
        check(&api, "cublasGetProperty", unsafe { (api.cublasGetProperty)(prop, out) })?;
    }
    if v[0] < 11 {
        return Err(CublasError::Unavailable(format!(
            "cuBLAS {}.{} is too old (the bench needs 11 or newer)",
            v[0], v[1]
        )));
    }
    Ok((api, format!("{}.{}.{}", v[0], v[1], v[2])))
}

/// Whether cuBLAS can be loaded here with every entry point the bench calls: its version
/// (`13.0.2`), or why not. Needs no GPU.
pub fn probe() -> Result<String, CublasError> {
    load().map(|(_, v)| v)
}

/// An open cuBLAS handle bound to a cuda [`Device`]'s context and stream.
pub struct Cublas {
    api: Api,
    handle: Handle,
    dev: Device,
    version: String,
}

impl Cublas {
    /// Loads cuBLAS and creates a handle on `dev`'s stream, or says why it cannot.
    pub fn new(dev: &Device) -> Result<Self, CublasError> {
        let Some(stream) = dev.cuda_raw_stream()? else {
            return Err(CublasError::Unavailable(format!("{} is not a GPU", dev.name())));
        };
        let (api, version) = load()?;
        let mut handle: Handle = std::ptr::null_mut();
        // Loading may have run library initialisers: bind our context again before creating.
        dev.cuda_raw_stream()?;
        // SAFETY: our (primary) context is current on this thread, so the handle is created in
        // it; `handle` is a valid out-pointer.
        check(&api, "cublasCreate_v2", unsafe { (api.cublasCreate_v2)(&mut handle) })?;
        let me = Self { api, handle, dev: dev.clone(), version };
        // SAFETY: a live handle and the device's own live stream (kept alive by `me.dev`).
        check(&me.api, "cublasSetStream_v2", unsafe { (me.api.cublasSetStream_v2)(me.handle, stream) })?;
        Ok(me)
    }

    /// The library's version, e.g. `13.0.2`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `y = x W^T` (no bias: plain GEMM), x `[M][K]`, w `[N][K]`, y `[M][N]`, fp16.
    ///
    /// Column-major: `y^T (N x M) = W (N x K) x^T (K x M)`; the buffer of w is `W^T` (K x N,
    /// ld K), so A = w transposed, B = x as is.
    pub fn linear_fwd(
        &self,
        s: Linear,
        x: &Tensor<f16>,
        w: &Tensor<f16>,
        y: &mut Tensor<f16>,
    ) -> Result<(), CublasError> {
        x.check(&self.dev, "cuBLAS fwd x", s.m * s.k)?;
        w.check(&self.dev, "cuBLAS fwd w", s.n * s.k)?;
        y.check(&self.dev, "cuBLAS fwd y", s.m * s.n)?;
        let g =
            Gemm { trans_a: CUBLAS_OP_T, trans_b: CUBLAS_OP_N, m: s.n, n: s.m, k: s.k, lda: s.k, ldb: s.k, ldc: s.n };
        self.gemm(g, w.device_ptr(), x.device_ptr(), y.device_ptr(), CUDA_R_16F)
    }

    /// `dx = dy W`, dy `[M][N]`, w `[N][K]`, dx `[M][K]`, fp16.
    ///
    /// Column-major: `dx^T (K x M) = W^T (K x N) dy^T (N x M)`: both buffers as they are.
    pub fn linear_bwd_data(
        &self,
        s: Linear,
        dy: &Tensor<f16>,
        w: &Tensor<f16>,
        dx: &mut Tensor<f16>,
    ) -> Result<(), CublasError> {
        dy.check(&self.dev, "cuBLAS bwd_data dy", s.m * s.n)?;
        w.check(&self.dev, "cuBLAS bwd_data w", s.n * s.k)?;
        dx.check(&self.dev, "cuBLAS bwd_data dx", s.m * s.k)?;
        let g =
            Gemm { trans_a: CUBLAS_OP_N, trans_b: CUBLAS_OP_N, m: s.k, n: s.m, k: s.n, lda: s.k, ldb: s.n, ldc: s.k };
        self.gemm(g, w.device_ptr(), dy.device_ptr(), dx.device_ptr(), CUDA_R_16F)
    }

    /// `dw = dy^T x` in fp32, x `[M][K]`, dy `[M][N]`, dw `[N][K]`.
    ///
    /// Column-major: `dw^T (K x N) = x^T (K x M) dy (M x N)`: A = x as is, B = dy transposed.
    pub fn linear_bwd_weight(
        &self,
        s: Linear,
        x: &Tensor<f16>,
        dy: &Tensor<f16>,
        dw: &mut Tensor<f32>,
    ) -> Result<(), CublasError> {
        x.check(&self.dev, "cuBLAS bwd_weight x", s.m * s.k)?;
        dy.check(&self.dev, "cuBLAS bwd_weight dy", s.m * s.n)?;
        dw.check(&self.dev, "cuBLAS bwd_weight dw", s.n * s.k)?;
        let g =
            Gemm { trans_a: CUBLAS_OP_N, trans_b: CUBLAS_OP_T, m: s.k, n: s.n, k: s.m, lda: s.k, ldb: s.n, ldc: s.k };
        self.gemm(g, x.device_ptr(), dy.device_ptr(), dw.device_ptr(), CUDA_R_32F)
    }

    /// `C = A op B` (alpha 1, beta 0) with fp16 A and B, fp32 compute, C of `c_type`.
    fn gemm(&self, g: Gemm, a: u64, b: u64, c: u64, c_type: c_int) -> Result<(), CublasError> {
        let dims = [g.m, g.n, g.k, g.lda, g.ldb, g.ldc];
        let mut d = [0 as c_int; 6];
        for (v, out) in dims.into_iter().zip(d.iter_mut()) {
            *out = c_int::try_from(v)
                .map_err(|_| crate::Error::Shape(format!("GEMM dimension {v} does not fit cuBLAS's int")))?;
        }
        if d[0] == 0 || d[1] == 0 {
            return Ok(());
        }
        let (alpha, beta) = (1f32, 0f32);
        self.dev.cuda_raw_stream()?;
        // SAFETY: a live handle on our stream; the callers checked that A, B and C live on our
        // device with exactly the elements the dimensions and leading dimensions address;
        // alpha / beta are floats as CUBLAS_COMPUTE_32F requires with the host pointer mode.
        let status = unsafe {
            (self.api.cublasGemmEx)(
                self.handle,
                g.trans_a,
                g.trans_b,
                d[0],
                d[1],
                d[2],
                &alpha as *const f32 as *const c_void,
                a as *const c_void,
                CUDA_R_16F,
                d[3],
                b as *const c_void,
                CUDA_R_16F,
                d[4],
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                c_type,
                d[5],
                CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT,
            )
        };
        check(&self.api, "cublasGemmEx", status)
    }
}

/// One column-major `cublasGemmEx` problem: `C (m x n) = op(A) (m x k) op(B) (k x n)`.
#[derive(Clone, Copy, Debug)]
struct Gemm {
    trans_a: c_int,
    trans_b: c_int,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
}

impl Drop for Cublas {
    fn drop(&mut self) {
        if self.dev.cuda_raw_stream().is_ok() {
            // SAFETY: the handle was created in `new` and is destroyed once.
            unsafe { (self.api.cublasDestroy_v2)(self.handle) };
        }
    }
}

fn status_name(api: &Api, status: Status) -> String {
    let named = api.status_string.map(|f| {
        // SAFETY: cublasGetStatusString accepts any value and returns a static C string (or null).
        let s = unsafe { f(status) };
        // SAFETY: non-null, NUL-terminated, static.
        (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    });
    named.flatten().unwrap_or_else(|| format!("status {status}"))
}

fn check(api: &Api, call: &'static str, status: Status) -> Result<(), CublasError> {
    if status == CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CublasError::Call { call, status, name: status_name(api, status) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading is a value either way; with `VGG_EXPECT_CUBLAS=1` (a machine whose loader path
    /// holds libcublas) every entry point must resolve.
    #[test]
    fn probe_never_panics() {
        let r = probe();
        eprintln!("cuBLAS probe: {r:?}");
        if std::env::var("VGG_EXPECT_CUBLAS").as_deref() == Ok("1") {
            assert!(r.is_ok(), "{r:?}");
        }
    }

    #[test]
    fn emu_is_not_a_gpu() {
        let e = Cublas::new(&Device::emu()).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("cuBLAS unavailable: emu is not a GPU"));
    }
}
