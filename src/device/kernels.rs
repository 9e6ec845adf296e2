//! The kernels embedded at build time by build.rs: one module per `kernels/*.cu`, each with
//! cubins (sm_90 built as sm_90a, plus `VGG_CUDA_ARCHS`), PTX for compute_80, and every kernel's
//! resource usage as ptxas reported it.

/// Registers, shared memory, stack and spills of one kernel, from `ptxas -v`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct KernelResources {
    /// The kernel's `extern "C"` name.
    pub name: &'static str,
    /// Registers a thread.
    pub registers: u32,
    /// Static shared memory a block, in bytes (dynamic shared memory is chosen at the launch).
    pub shared_bytes: u32,
    /// Stack frame a thread, in bytes.
    pub stack_bytes: u32,
    /// Bytes a thread spills to local memory.
    pub spill_store_bytes: u32,
    /// Bytes a thread loads back from its spills.
    pub spill_load_bytes: u32,
    /// ptxas serialized the kernel's wgmma's (notes C7515, C7518): they run one at a time.
    pub wgmma_serialized: bool,
}

/// One compiled `kernels/<name>.cu`.
#[derive(Debug)]
pub struct EmbeddedModule {
    /// The `kernels/<name>.cu` file stem ([`crate::Kernel::module`]).
    pub name: &'static str,
    /// (sm arch as 90 for sm_90, cubin bytes)
    pub cubins: &'static [(u32, &'static [u8])],
    /// (compute arch, PTX text) for the JIT on GPUs without a matching cubin.
    pub ptx: Option<(u32, &'static str)>,
    /// Resources of each kernel in the file, as ptxas reported them for the first cubin arch
    /// (in the order of its log).
    pub kernels: &'static [KernelResources],
}

include!(concat!(env!("OUT_DIR"), "/kernels_embedded.rs"));

/// The embedded module of a given name.
pub fn module(name: &str) -> Option<&'static EmbeddedModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// Every kernel of every module with its resources (each module's in ptxas's log order).
pub fn all_resources() -> impl Iterator<Item = (&'static str, &'static KernelResources)> {
    MODULES.iter().flat_map(|m| m.kernels.iter().map(move |k| (m.name, k)))
}
