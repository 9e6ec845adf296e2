//! The emu device's half of the build: every kernels/*.cu compiled unchanged by the host
//! C++ compiler against kernels/emu/shim.h, plus a generated table from kernel name to
//! host launcher (kernels/emu/launch.h), looked up at run time by src/device/emu.rs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `extern "C" __global__` kernel names of one source file, in order. A light scan is
/// enough because the project writes every kernel as
/// `extern "C" __global__ void [__launch_bounds__(..)] name(`.
pub fn kernel_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = src;
    while let Some(pos) = rest.find("__global__") {
        rest = &rest[pos + "__global__".len()..];
        let Some(open) = rest.find('(') else { break };
        let mut head = rest[..open].trim();
        let mut after = open;
        if head.ends_with("__launch_bounds__") {
            // skip the launch-bounds argument list, then take the name before the next '('
            let close = rest[open..].find(')').map(|c| open + c + 1).unwrap_or(open);
            let Some(open2) = rest[close..].find('(') else { break };
            head = rest[close..close + open2].trim();
            after = close + open2;
        }
        let name = head.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap_or("");
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(name.to_string());
        }
        rest = &rest[after..];
    }
    names
}

/// Generates the per-file wrappers and the lookup table, compiles them with the shim and
/// links them into the crate as `vgg_emu`.
pub fn build(kernels_dir: &Path, out_dir: &Path, sources: &[PathBuf]) {
    let gen = out_dir.join("emu");
    std::fs::create_dir_all(&gen).expect("create OUT_DIR/emu");
    let mut table = String::from("#include \"emu/launch.h\"\n#include <cstring>\n");
    let mut lookups = String::new();
    let mut files = vec![
        kernels_dir.join("emu/runtime.cpp"),
        kernels_dir.join("emu/cluster.cpp"),
        kernels_dir.join("emu/fault.cpp"),
    ];
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let names = kernel_names(&text);
        let mut cpp = format!("#include \"{}\"\n#include \"emu/launch.h\"\n", src.display());
        let entries: Vec<String> = names.iter().map(|n| format!("    EMU_KERNEL({n}),\n")).collect();
        let _ = write!(
            cpp,
            "static const ::emu::KernelEntry k_table[] = {{\n{}    {{nullptr, nullptr, 0, nullptr}}}};\n\
             extern \"C\" const ::emu::KernelEntry* vgg_emu_table_{stem}() {{ return k_table; }}\n",
            entries.concat()
        );
        let path = gen.join(format!("{stem}.cpp"));
        write_if_changed(&path, &cpp);
        files.push(path);
        let _ = writeln!(table, "extern \"C\" const ::emu::KernelEntry* vgg_emu_table_{stem}();");
        let _ = writeln!(lookups, "    vgg_emu_table_{stem},");
    }
    let _ = write!(
        table,
        "using TableFn = const ::emu::KernelEntry* (*)();\n\
         static const TableFn k_tables[] = {{\n{lookups}    nullptr}};\n\
         // The table entry (launcher, parameter sizes) of a kernel by name, or null when no\n\
         // kernel file defines it.\n\
         extern \"C\" const ::emu::KernelEntry* vgg_emu_find(const char* name) {{\n\
         \x20   for (const TableFn* t = k_tables; *t; ++t)\n\
         \x20       for (const ::emu::KernelEntry* e = (*t)(); e->name; ++e)\n\
         \x20           if (std::strcmp(e->name, name) == 0) return e;\n\
         \x20   return nullptr;\n}}\n"
    );
    let table_path = gen.join("tables.cpp");
    write_if_changed(&table_path, &table);
    files.push(table_path);

    // Each translation unit is compiled only when its inputs changed: the key hashes the
    // generated wrapper, the kernel source, every shared header and the flags. A kernel edit
    // then rebuilds one object instead of every kernel family.
    let sanitize = std::env::var("VGG_EMU_SANITIZE").as_deref() == Ok("thread");
    let shared = shared_inputs(kernels_dir);
    let mut objects = Vec::new();
    for f in &files {
        let text = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let mut key = fnv(&text, fnv(shared.as_bytes(), FNV_SEED));
        key = fnv(if sanitize { b"tsan" } else { b"plain" }, key);
        key = fnv(include_bytes!("emu.rs"), key); // the flags below are part of the key
        if let Some(src) = sources.iter().find(|s| f.file_stem() == s.file_stem() && f.starts_with(&gen)) {
            key = fnv(&std::fs::read(src).unwrap_or_default(), key);
        }
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let cached = gen.join(format!("{stem}-{key:016x}.o"));
        if !cached.exists() {
            let obj = base_build(kernels_dir, sanitize).file(f).compile_intermediates();
            // Through a temporary name: a concurrent build must never see half an object.
            let tmp = cached.with_extension(format!("o.{}", std::process::id()));
            std::fs::copy(&obj[0], &tmp).expect("cache emu object");
            std::fs::rename(&tmp, &cached).expect("cache emu object");
        }
        objects.push(cached);
    }
    base_build(kernels_dir, sanitize).objects(&objects).compile("vgg_emu");
    if sanitize {
        println!("cargo:rustc-link-lib=dylib=tsan");
        println!("cargo:rustc-link-lib=dylib=ubsan");
    }
    println!("cargo:rerun-if-env-changed=VGG_EMU_SANITIZE");
}

fn base_build(kernels_dir: &Path, sanitize: bool) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .include(kernels_dir)
        .opt_level(2)
        .warnings(false)
        // Kernels reinterpret buffers (half2 over half, uint4 over anything) as CUDA allows;
        // no fused multiply-add so that the emulator's rounding does not depend on the host CPU.
        .flag("-fno-strict-aliasing")
        .flag("-ffp-contract=off")
        .flag("-Wno-unknown-pragmas")
        // g++'s note that 64-byte aligned by-value parameters (tensor maps) changed ABI in GCC
        // 4.6: the kernels and their wrappers are compiled together, by one compiler.
        .flag("-Wno-psabi");
    if sanitize {
        // alignment: a vector load through a misaligned pointer would fault on the GPU.
        b.flag("-fsanitize=thread,alignment")
            .flag("-fno-sanitize-recover=alignment")
            .flag("-fno-omit-frame-pointer")
            .opt_level(1)
            .debug(true);
    }
    b
}

/// The contents of every header a kernel can include (kernels/*.cuh, kernels/emu/*).
fn shared_inputs(kernels_dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = ["", "emu"]
        .iter()
        .filter_map(|d| std::fs::read_dir(kernels_dir.join(d)).ok())
        .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.extension().is_some_and(|x| x == "cuh" || x == "h" || x == "cpp"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect()
}

const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
