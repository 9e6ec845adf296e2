//! What build.rs embedded: with NVRTC (always in CI, where VGG_REQUIRE_NVRTC=1) every
//! kernel file has an sm_90 cubin and PTX, every kernel has a resource row, and no
//! shipped kernel spills registers.

use vgg_cuda::device::kernels::{all_resources, MODULES, NVRTC_VERSION};

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
        assert_ne!(
            std::env::var("VGG_REQUIRE_NVRTC").as_deref(),
            Ok("1"),
            "VGG_REQUIRE_NVRTC=1 but no kernels embedded"
        );
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
/// while they run (its note C7515); the build records it, and no shipped kernel may have it.
#[test]
fn no_kernel_serializes_its_wgmma() {
    let serialized: Vec<String> =
        all_resources().filter(|(_, k)| k.wgmma_serialized).map(|(m, k)| format!("{m}::{}", k.name)).collect();
    assert!(serialized.is_empty(), "ptxas serialized the wgmma's of {serialized:?}");
}

#[test]
fn no_shipped_kernel_spills() {
    let spills: Vec<String> = all_resources()
        .filter(|(_, k)| k.spill_store_bytes > 0 || k.spill_load_bytes > 0)
        .map(|(m, k)| format!("{m}::{} ({} B stores, {} B loads)", k.name, k.spill_store_bytes, k.spill_load_bytes))
        .collect();
    assert!(spills.is_empty(), "kernels spill registers: {spills:?}");
}
