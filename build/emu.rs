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
    let mut files = vec![kernels_dir.join("emu/runtime.cpp")];
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let names = kernel_names(&text);
        let mut cpp = format!("#include \"{}\"\n#include \"emu/launch.h\"\n", src.display());
        let entries: Vec<String> = names.iter().map(|n| format!("    EMU_KERNEL({n}),\n")).collect();
        let _ = write!(
            cpp,
            "static const ::emu::KernelEntry k_table[] = {{\n{}    {{nullptr, nullptr}}}};\n\
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
         // The host launcher of a kernel by name, or null when no kernel file defines it.\n\
         extern \"C\" void* vgg_emu_find(const char* name) {{\n\
         \x20   for (const TableFn* t = k_tables; *t; ++t)\n\
         \x20       for (const ::emu::KernelEntry* e = (*t)(); e->name; ++e)\n\
         \x20           if (std::strcmp(e->name, name) == 0) return reinterpret_cast<void*>(e->launch);\n\
         \x20   return nullptr;\n}}\n"
    );
    let table_path = gen.join("tables.cpp");
    write_if_changed(&table_path, &table);
    files.push(table_path);

    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .include(kernels_dir)
        .files(&files)
        .opt_level(2)
        .warnings(false)
        // Kernels reinterpret buffers (half2 over half, uint4 over anything) as CUDA allows;
        // no fused multiply-add so that the emulator's rounding does not depend on the host CPU.
        .flag("-fno-strict-aliasing")
        .flag("-ffp-contract=off")
        .flag("-Wno-unknown-pragmas");
    if std::env::var("VGG_EMU_SANITIZE").as_deref() == Ok("thread") {
        b.flag("-fsanitize=thread").flag("-fno-omit-frame-pointer").opt_level(1);
        println!("cargo:rustc-link-lib=dylib=tsan");
    }
    b.compile("vgg_emu");
    println!("cargo:rerun-if-env-changed=VGG_EMU_SANITIZE");
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
