//! Build script: kernels/*.cu -> (1) sm_90 cubins + compute_80 PTX through NVRTC, embedded
//! with their resource usage (build/nvrtc.rs); (2) the same sources compiled for the CPU
//! emulator (build/emu.rs). Without NVRTC the crate still builds (emu only) with a warning;
//! VGG_REQUIRE_NVRTC=1 makes that an error, so CI notices a kernel that stopped compiling.

#[path = "build/emu.rs"]
mod emu;
#[path = "build/nvrtc.rs"]
mod nvrtc;

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels_dir = root.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();

    let cfg = nvrtc::Config {
        kernels_dir: kernels_dir.clone(),
        out_dir: out_dir.clone(),
        cubin_archs: nvrtc::archs_from_env(),
        ptx_arch: 80,
    };
    match nvrtc::compile_all(&cfg) {
        nvrtc::Outcome::Compiled { .. } => {}
        nvrtc::Outcome::Missing { reason } => {
            if std::env::var("VGG_REQUIRE_NVRTC").as_deref() == Ok("1") {
                eprintln!("error: VGG_REQUIRE_NVRTC=1 but NVRTC is unusable: {reason}");
                std::process::exit(1);
            }
            println!(
                "cargo:warning=NVRTC not found, so no GPU kernels are embedded (the emu device works; \
                 the cuda device will say why it cannot run): {reason}"
            );
            nvrtc::write_missing(&out_dir, &nvrtc::module_names(&kernels_dir));
        }
    }
    // After NVRTC, so that a kernel with a syntax error fails with NVRTC's log (the GPU
    // compiler's view) rather than the host compiler's.
    emu::build(&kernels_dir, &out_dir, &sources);
}
