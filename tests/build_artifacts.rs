//! What build.rs embedded: with NVRTC (always in CI, where VGG_REQUIRE_NVRTC=1) every
//! kernel file has an sm_90 cubin and PTX, every kernel has a resource row with its registers
//! read (so the log was parsed), and no shipped kernel spills registers or has its wgmma's
//! serialized. The parser itself: tests/build_nvrtc.rs.

use vgg_cuda::device::kernels::{all_resources, KernelResources, MODULES, NVRTC_VERSION};

/// Whether CI asked for NVRTC (build.rs then fails without it, so something must be embedded).
fn nvrtc_required() -> bool {
    std::env::var("VGG_REQUIRE_NVRTC").as_deref() == Ok("1")
}

/// Every embedded kernel's resource row, once the rows are known to be real: with NVRTC (and
/// always under VGG_REQUIRE_NVRTC=1) there are some, and each has registers > 0 (ptxas reports
/// at least one for any kernel: 0 means its "Used" line went unread, and then its spills and
/// notes may have been missed too). Without NVRTC there are none, and the checks below that
/// read them have nothing to check.
fn resources() -> Vec<(&'static str, &'static KernelResources)> {
    let rows: Vec<_> = all_resources().collect();
    assert!(NVRTC_VERSION.is_some() || !nvrtc_required(), "VGG_REQUIRE_NVRTC=1 but no kernels embedded");
    assert_eq!(NVRTC_VERSION.is_some(), !rows.is_empty(), "NVRTC {NVRTC_VERSION:?} but {} resource rows", rows.len());
    let unread: Vec<String> =
        rows.iter().filter(|(_, k)| k.registers == 0).map(|(m, k)| format!("{m}::{}", k.name)).collect();
    assert!(unread.is_empty(), "ptxas resource rows with 0 registers (log not parsed?): {unread:?}");
    rows
}

fn kernel_files() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_kernel_file_is_embedded() {
    if NVRTC_VERSION.is_none() {
        assert!(!nvrtc_required(), "VGG_REQUIRE_NVRTC=1 but no kernels embedded");
        eprintln!("NVRTC was missing at build time: nothing embedded to check");
        return;
    }
    let files = kernel_files();
    for f in &files {
        let m = MODULES.iter().find(|m| m.name == f).unwrap_or_else(|| panic!("kernels/{f}.cu not embedded"));
        assert!(m.cubins.iter().any(|(a, c)| *a == 90 && c.len() > 100), "{f}: no sm_90 cubin");
        assert!(m.ptx.is_some_and(|(_, p)| p.contains(".entry")), "{f}: no PTX with entries");
        assert!(!m.kernels.is_empty(), "{f}: no resource rows");
    }
    assert_eq!(MODULES.len(), files.len(), "embedded modules vs kernels/*.cu");
}

/// ptxas serializes a kernel's wgmma's when other instructions may write their accumulators
/// while they run (its note C7515) or when it must insert a wgmma wait on a divergent path
/// (C7518); the build records it, and no shipped kernel may have it.
#[test]
fn no_kernel_serializes_its_wgmma() {
    let serialized: Vec<String> =
        resources().iter().filter(|(_, k)| k.wgmma_serialized).map(|(m, k)| format!("{m}::{}", k.name)).collect();
    assert!(serialized.is_empty(), "ptxas serialized the wgmma's of {serialized:?}");
}

#[test]
fn no_shipped_kernel_spills() {
    let spills: Vec<String> = resources()
        .iter()
        .filter(|(_, k)| k.spill_store_bytes > 0 || k.spill_load_bytes > 0)
        .map(|(m, k)| format!("{m}::{} ({} B stores, {} B loads)", k.name, k.spill_store_bytes, k.spill_load_bytes))
        .collect();
    assert!(spills.is_empty(), "kernels spill registers: {spills:?}");
}

/// A stack frame is local memory: an array indexed by a value the compiler cannot resolve
/// (the max-pool twins' window held one, 16 bytes) is read and written through L1 and device
/// memory instead of registers, a cost ptxas reports as stack, not as spills.
#[test]
fn no_shipped_kernel_uses_local_memory() {
    let stacks: Vec<String> = resources()
        .iter()
        .filter(|(_, k)| k.stack_bytes > 0)
        .map(|(m, k)| format!("{m}::{} ({} B)", k.name, k.stack_bytes))
        .collect();
    assert!(stacks.is_empty(), "kernels with a stack frame: {stacks:?}");
}
