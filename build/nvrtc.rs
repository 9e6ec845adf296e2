// Build-time CUDA compilation. Loads NVRTC with libloading (no CUDA toolkit, no GPU needed),
// compiles every top-level `kernels/*.cu` to a cubin per arch plus one PTX for the lowest
// arch, reads ptxas resource usage, and generates `kernels_embedded.rs`, which
// `src/device/kernels.rs` `include!`s. build.rs includes this file with `#[path] mod nvrtc;`.
// Linux only: the names searched for (libnvrtc.so*) are the Linux ones.
// The API is wider than one caller uses (the search list is a parameter for tests), hence:
#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{atomic::AtomicUsize, atomic::Ordering, Mutex};
use std::{env, fs};

pub struct Config {
    pub kernels_dir: PathBuf,
    pub out_dir: PathBuf,
    /// The first arch is the primary one: its ptxas log fills the resource table.
    pub cubin_archs: Vec<u32>,
    pub ptx_arch: u32,
}

pub enum Outcome {
    Compiled { nvrtc_version: (i32, i32), lib_path: PathBuf },
    Missing { reason: String },
}

/// Field names match the crate's `KernelResources`, so `{:?}` of this is a valid initialiser.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// ptxas serialized the kernel's wgmma's (its notes C7515: other instructions write the
    /// accumulators while wgmma's are in flight; C7518: a wgmma wait it had to insert on a
    /// divergent path), a silent loss of most of their speed.
    pub wgmma_serialized: bool,
}

const NVRTC_ERROR_INVALID_OPTION: c_int = 5;

/// sm_90 (the GPU machines) always, then those of `VGG_CUDA_ARCHS` ("80,90" or "sm_80 sm_86").
pub fn archs_from_env() -> Vec<u32> {
    let mut archs = vec![90];
    let spec = env::var("VGG_CUDA_ARCHS").unwrap_or_default();
    for tok in spec.split([',', ' ', ';']).filter(|t| !t.is_empty()) {
        let arch = tok
            .trim_start_matches("sm_")
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("VGG_CUDA_ARCHS=`{spec}`: `{tok}` is not an SM number such as 80 or 90"));
        if !archs.contains(&arch) {
            archs.push(arch);
        }
    }
    archs
}

/// Stems of the top-level `*.cu` files, sorted (`*.cuh` are headers, `emu/` is the CPU shim).
pub fn module_names(kernels_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_in(kernels_dir)
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "cu"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    names
}

/// Where libnvrtc is looked for, in order, as (origin for messages, file or folder).
pub fn search_locations(crate_root: &Path) -> Vec<(&'static str, PathBuf)> {
    let var = |k| env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut locs: Vec<_> = var("VGG_NVRTC").map(|p| ("VGG_NVRTC", p)).into_iter().collect();
    for k in ["CUDA_PATH", "CUDA_HOME"] {
        let p = var(k).into_iter();
        locs.extend(p.flat_map(|p| [(k, p.join("lib64")), (k, p.join("lib"))]));
    }
    let ld = var("LD_LIBRARY_PATH").unwrap_or_default();
    let ld = env::split_paths(&ld).filter(|p| p.is_absolute());
    locs.extend(ld.map(|p| ("LD_LIBRARY_PATH", p)));
    locs.push(("scripts/setup-cuda", crate_root.join(".cuda/lib")));
    locs
}

pub fn compile_all(cfg: &Config) -> Outcome {
    let root = cfg.kernels_dir.parent().unwrap_or(Path::new("."));
    compile_with(cfg, &search_locations(root))
}

/// `compile_all` with an explicit search list, so that tests can reach `Missing` without
/// moving the shared `.cuda/` install.
pub fn compile_with(cfg: &Config, locations: &[(&str, PathBuf)]) -> Outcome {
    emit_rerun(&cfg.kernels_dir);
    let (api, lib_path) = match load(locations) {
        Ok(found) => found,
        Err(reason) => return Outcome::Missing { reason },
    };
    let includes = include_dirs(&lib_path);
    if !includes.iter().any(|d| d.join("cuda_fp16.h").is_file()) {
        let lib = lib_path.display();
        let reason = format!(
            "{lib} found, but no cuda_fp16.h in its ../include, ../include/cccl, \
             $CUDA_PATH/include or $CUDA_HOME/include (existing of these: {includes:?}); \
             run scripts/setup-cuda"
        );
        return Outcome::Missing { reason };
    }
    let version = api.version();
    if version > (13, 0) {
        // The 580-series drivers on the GPU machines reject PTX from a newer NVRTC.
        let (a, b, lib) = (version.0, version.1, lib_path.display());
        println!("cargo:warning=NVRTC {a}.{b} ({lib}) emits PTX that CUDA 13.0 drivers may reject");
    }
    let mut opts = vec!["-std=c++17".to_owned(), format!("-I{}", cfg.kernels_dir.display())];
    opts.extend(includes.iter().map(|d| format!("-I{}", d.display())));
    opts.extend(["-lineinfo", "-DVGG_NVRTC=1"].map(String::from));
    // An optional flag: kept only where this NVRTC accepts it (probed on an empty kernel).
    let vec_flag = "--extra-device-vectorization".to_owned();
    let probe = [format!("--gpu-architecture=compute_{}", cfg.ptx_arch), vec_flag.clone()];
    let probe = api.compile("probe.cu", "__global__ void k() {}", &probe);
    if !matches!(probe, Err((NVRTC_ERROR_INVALID_OPTION, _))) {
        opts.push(vec_flag);
    }

    // One job per (module, target); target None = the PTX.
    let names = module_names(&cfg.kernels_dir);
    let mut targets: Vec<Option<u32>> = cfg.cubin_archs.iter().copied().map(Some).collect();
    targets.push(None);
    let jobs: Vec<(&str, Option<u32>)> =
        (names.iter()).flat_map(|n| targets.iter().map(move |&t| (n.as_str(), t))).collect();
    let kdir = cfg.out_dir.join("kernels");
    let _ = fs::remove_dir_all(&kdir); // drop artefacts of deleted kernels or dropped archs
    fs::create_dir_all(&kdir).unwrap_or_else(|e| panic!("creating {}: {e}", kdir.display()));
    let mut modules: Vec<ModuleOut> = names.iter().map(|n| ModuleOut::named(n)).collect();
    let mut failed = Vec::new();
    for (i, result) in run_jobs(&api, cfg, &opts, &jobs).into_iter().enumerate() {
        let (name, target) = jobs[i];
        let tname = target.map_or(format!("compute_{}", cfg.ptx_arch), |a| format!("sm_{a}"));
        let (bytes, log) = match result {
            Ok(ok) => ok,
            // One log per module (its other targets repeat it). The log names file and line
            // (`relu.cu(12): error: ...`); cargo prints a failed build script's stderr.
            Err((rc, log)) if !failed.contains(&name) => {
                eprintln!("{log}\nerror: NVRTC failed on {name}.cu for {tname}: {}", api.err(rc));
                failed.push(name);
                continue;
            }
            Err(_) => continue,
        };
        let ext = if target.is_some() { "cubin" } else { "ptx" };
        let out = kdir.join(format!("{name}.{tname}.{ext}"));
        fs::write(&out, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        let m = &mut modules[i / targets.len()];
        let Some(arch) = target else {
            m.ptx = Some((cfg.ptx_arch, out));
            continue;
        };
        m.cubins.push((arch, out));
        if Some(&arch) == cfg.cubin_archs.first() {
            m.kernels = parse_ptxas(&log);
            for k in &m.kernels {
                if k.spill_store_bytes + k.spill_load_bytes > 0 {
                    let n = &k.name;
                    println!("cargo:warning=kernel `{n}` ({name}.cu, {tname}) spills: {k:?}");
                }
                if k.wgmma_serialized {
                    let n = &k.name;
                    println!("cargo:warning=kernel `{n}` ({name}.cu, {tname}): ptxas serialized its wgmma's");
                }
            }
        }
    }
    if !failed.is_empty() {
        std::process::exit(1); // not panic!: its location and backtrace would bury the log
    }
    write_embedded(&cfg.out_dir, Some(version), &modules);
    Outcome::Compiled { nvrtc_version: version, lib_path }
}

/// Compiles the jobs on a few threads (NVRTC allows concurrent compiles of distinct
/// programs, and big kernels take seconds each); results come back in job order.
fn run_jobs(api: &Api, cfg: &Config, opts: &[String], jobs: &[(&str, Option<u32>)]) -> Vec<Compiled> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    let jobserver = env::var("NUM_JOBS").ok().and_then(|n| n.parse().ok()); // set by cargo
    let threads = jobserver.unwrap_or(cpus).clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(name, target)) = jobs.get(i) else {
                        break;
                    };
                    let file = format!("{name}.cu");
                    let path = cfg.kernels_dir.join(&file);
                    let src = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                    let mut o = opts.to_vec();
                    o.push(match target {
                        // sm_90 as sm_90a: its arch-specific instructions (wgmma) for the
                        // H100 / H200; such a cubin loads only on compute capability 9.0,
                        // which is every sm_90 GPU.
                        Some(90) => "--gpu-architecture=sm_90a".to_owned(),
                        Some(a) => format!("--gpu-architecture=sm_{a}"),
                        None => format!("--gpu-architecture=compute_{}", cfg.ptx_arch),
                    });
                    if target.is_some() {
                        o.push("-Xptxas=-v".into()); // resource usage into the program log
                    }
                    let r = (i, api.compile(&file, &src, &o));
                    done.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|r| r.0);
    done.into_iter().map(|r| r.1).collect()
}

/// The no-NVRTC `kernels_embedded.rs`: modules listed, nothing embedded.
pub fn write_missing(out_dir: &Path, modules: &[String]) {
    let mods: Vec<ModuleOut> = modules.iter().map(|n| ModuleOut::named(n)).collect();
    write_embedded(out_dir, None, &mods);
}

fn emit_rerun(kernels_dir: &Path) {
    println!("cargo:rerun-if-changed={}", file!());
    println!("cargo:rerun-if-changed={}", kernels_dir.display());
    // The project-local NVRTC (scripts/setup-cuda): installing or removing it must rebuild,
    // or a build would keep kernels compiled by an NVRTC that is gone (or miss a new one).
    if let Some(root) = kernels_dir.parent() {
        println!("cargo:rerun-if-changed={}", root.join(".cuda").display());
    }
    if !kernels_dir.is_dir() {
        println!("cargo:warning=no kernels folder at {}", kernels_dir.display());
    }
    for dir in [kernels_dir.to_path_buf(), kernels_dir.join("emu")] {
        for path in files_in(&dir) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let vars = "VGG_NVRTC CUDA_PATH CUDA_HOME VGG_CUDA_ARCHS LD_LIBRARY_PATH VGG_REQUIRE_NVRTC";
    for var in vars.split(' ') {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    let mut v: Vec<PathBuf> = entries.map(|e| e.path()).collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

#[derive(Default)]
struct ModuleOut {
    name: String,
    cubins: Vec<(u32, PathBuf)>,
    ptx: Option<(u32, PathBuf)>,
    kernels: Vec<KernelResources>,
}

impl ModuleOut {
    fn named(name: &str) -> Self {
        ModuleOut { name: name.to_owned(), ..Default::default() }
    }
}

/// Writes `kernels_embedded.rs` (types from `src/device/kernels.rs`, named unqualified) and
/// the same resource table as `kernel_resources.json`.
fn write_embedded(out_dir: &Path, version: Option<(i32, i32)>, modules: &[ModuleOut]) {
    // `{:?}` of a str is a Rust string literal, escapes included.
    let lit = |p: &Path| format!("{:?}", p.display().to_string());
    let mut rs = String::from("// Generated by build/nvrtc.rs; do not edit.\n");
    rs += "/// The NVRTC version (major, minor) that compiled the kernels; `None` when NVRTC was\n";
    rs += "/// missing at build time and no GPU kernels are embedded (emu still runs).\n";
    rs += &format!("pub static NVRTC_VERSION: Option<(i32, i32)> = {version:?};\n");
    rs += "/// One module for each `kernels/*.cu`, in file-name order; without NVRTC each is listed\n";
    rs += "/// with no cubin, no PTX and no kernels.\n";
    rs += "pub static MODULES: &[EmbeddedModule] = &[\n";
    for m in modules {
        let cubins = m.cubins.iter();
        let cubins = cubins.map(|(a, p)| format!("({a}, include_bytes!({})), ", lit(p)));
        let ptx = m.ptx.as_ref().map(|(a, p)| format!("({a}, include_str!({}))", lit(p)));
        let ptx = ptx.map_or("None".into(), |p| format!("Some({p})"));
        let kernels = m.kernels.iter().map(|k| format!("            {k:?},\n"));
        rs += &format!("    EmbeddedModule {{\n        name: {:?},\n", m.name);
        rs += &format!("        cubins: &[{}],\n", cubins.collect::<String>());
        rs += &format!("        ptx: {ptx},\n        kernels: &[\n");
        rs += &format!("{}        ],\n    }},\n", kernels.collect::<String>());
    }
    rs += "];\n";
    let mods = modules.iter().map(|m| serde_json::json!({"name": m.name, "kernels": m.kernels}));
    let table = serde_json::json!({"nvrtc_version": version, "modules": mods.collect::<Vec<_>>()});
    let json = serde_json::to_string_pretty(&table).unwrap_or_default();
    for (file, text) in [("kernels_embedded.rs", rs), ("kernel_resources.json", json)] {
        let p = out_dir.join(file);
        fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }
}

/// Reads the `-Xptxas=-v` program log. NVRTC 13.0 writes, per entry function (zero smem is
/// omitted; non-entry functions get a properties block, but no "Compiling" or "Used" line):
///   ptxas info    : Compiling entry function 'k' for 'sm_90'
///   ptxas info    : Function properties for k
///   ptxas         .     664 bytes stack frame, 1240 bytes spill stores, 1328 bytes spill loads
///   ptxas info    : Used 32 registers, used 1 barriers, 384 bytes smem, 664 bytes cumulative stack size
pub fn parse_ptxas(log: &str) -> Vec<KernelResources> {
    // The number before `what` in the comma-separated part that ends with it; absent = 0.
    let num = |line: &str, what: &str| {
        let part = line.split(',').find_map(|p| p.trim().strip_suffix(what));
        part.and_then(|p| p.split_whitespace().last()?.parse().ok()).unwrap_or(0)
    };
    let mut kernels: Vec<KernelResources> = Vec::new();
    // Index of the entry awaiting its "Used" line / owning the current properties block.
    let (mut entry, mut props) = (None, None);
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once("Compiling entry function '") {
            let name = rest.split('\'').next().unwrap_or_default().to_owned();
            kernels.push(KernelResources { name, ..Default::default() });
            entry = Some(kernels.len() - 1);
        } else if let Some((_, name)) = line.split_once("Function properties for ") {
            props = kernels.iter().position(|k| k.name == name.trim());
        } else if let Some(k) = props.filter(|_| line.contains("bytes stack frame")) {
            let k = &mut kernels[k];
            k.stack_bytes = num(line, "bytes stack frame");
            k.spill_store_bytes = num(line, "bytes spill stores");
            k.spill_load_bytes = num(line, "bytes spill loads");
            props = None;
        } else if let Some(k) = entry.filter(|_| line.contains(" registers")) {
            kernels[k].registers = num(line, "registers");
            kernels[k].shared_bytes = num(line, "bytes smem");
            entry = None;
        }
    }
    // "ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are
    // serialized due to ... in the function 'k'" (before the function's own lines), and likewise
    // with other reasons under other codes (C7518): matched by the text, not the code.
    for line in log.lines().filter(|l| l.contains("wgmma.mma_async instructions are serialized")) {
        let name = line.rsplit_once("in the function '").and_then(|(_, r)| r.split('\'').next());
        for k in kernels.iter_mut().filter(|k| Some(k.name.as_str()) == name) {
            k.wgmma_serialized = true;
        }
    }
    kernels
}

/// `../include` and `../include/cccl` of the library's folder, taken lexically, as the OS
/// resolves `lib/..`, and from the library's real file (toolkit symlinks differ in all three),
/// then `$CUDA_PATH/include`, `$CUDA_HOME/include`; only those that exist, deduplicated.
fn include_dirs(lib: &Path) -> Vec<PathBuf> {
    let real = lib.canonicalize().unwrap_or(lib.to_path_buf());
    let dirs = [lib.parent(), real.parent()].map(|d| d.unwrap_or(Path::new(".")));
    let bases = [dirs[0].parent().unwrap_or(dirs[0]), &dirs[0].join(".."), &dirs[1].join("..")];
    let mut dirs: Vec<PathBuf> = (bases.iter()).flat_map(|b| [b.join("include"), b.join("include/cccl")]).collect();
    let cuda_vars = ["CUDA_PATH", "CUDA_HOME"].into_iter().filter_map(env::var_os);
    dirs.extend(cuda_vars.map(|p| PathBuf::from(p).join("include")));
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs.iter().filter_map(|d| d.canonicalize().ok()) {
        if dir.is_dir() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

type Prog = *mut c_void;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
/// Ok((cubin or PTX, log)) or Err((nvrtcResult, log)).
type Compiled = Result<(Vec<u8>, String), (c_int, String)>;

/// NVRTC's entry points; `_libs` (builtins, nvrtc) keeps the pointers valid.
struct Api {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    create: CreateFn,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int,
    log_size: SizeFn,
    log: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    destroy: unsafe extern "C" fn(*mut Prog) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    _libs: [libloading::Library; 2],
}

/// The first usable libnvrtc among `locations` (each a file, or a folder with libnvrtc.so*).
fn load(locations: &[(&str, PathBuf)]) -> Result<(Api, PathBuf), String> {
    let mut tried = Vec::new();
    for (origin, loc) in locations {
        match load_one(loc) {
            Ok(found) => {
                // A VGG_NVRTC that was set but did not work deserves a word.
                if let (Some(why), "VGG_NVRTC") = (tried.first(), locations[0].0) {
                    println!("cargo:warning=VGG_NVRTC unusable: {why}; using {}", found.1.display());
                }
                return Ok(found);
            }
            Err(why) => tried.push(format!("{} ({origin}): {why}", loc.display())),
        }
    }
    Err(format!(
        "NVRTC not found; searched VGG_NVRTC, CUDA_PATH and CUDA_HOME (lib64/, lib/), \
        LD_LIBRARY_PATH, <crate>/.cuda/lib: [{}]. Run scripts/setup-cuda (NVRTC 13.0 into .cuda/) \
        or set VGG_NVRTC to libnvrtc.so.13 or its folder",
        tried.join("; ")
    ))
}

fn load_one(loc: &Path) -> Result<(Api, PathBuf), String> {
    let named = |dir: &Path, prefix: &str| -> Vec<PathBuf> {
        let is = |p: &PathBuf| file_name(p).starts_with(prefix);
        files_in(dir).into_iter().filter(is).collect()
    };
    let lib = match loc {
        l if l.is_file() => l.to_path_buf(),
        l if l.is_dir() => named(l, "libnvrtc.so").into_iter().next().ok_or("no libnvrtc.so*")?,
        _ => return Err("does not exist".into()),
    };
    // NVRTC dlopens libnvrtc-builtins.so.<maj>.<min> by soname when compiling; the pip layout
    // is not on the loader path, so load it by full path first. Where several versions share
    // a folder, take the major of the real libnvrtc file (libnvrtc.so -> libnvrtc.so.13.0.88).
    let real = lib.canonicalize().unwrap_or(lib.clone());
    let real = file_name(&real);
    let major = real.strip_prefix("libnvrtc.so.").and_then(|v| v.split('.').next());
    let builtins = named(lib.parent().unwrap_or(Path::new(".")), "libnvrtc-builtins.so");
    let same_major = |b: &&PathBuf| major.is_some_and(|m| file_name(b).contains(&format!(".so.{m}.")));
    let builtins = (builtins.iter().find(same_major).or(builtins.first()))
        .ok_or_else(|| format!("{} has no libnvrtc-builtins.so* beside it", lib.display()))?;
    // SAFETY: loading runs NVRTC's initialisers, which have no preconditions.
    let open = |p: &Path| unsafe { libloading::Library::new(p) }.map_err(|e| e.to_string());
    let libs = [open(builtins)?, open(&lib)?];
    fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
        // SAFETY: T is the field type below, spelled as in nvrtc.h (NVRTC 11-13); the
        // Library moves into the same Api, so the pointer never outlives it.
        let f = unsafe { lib.get::<T>(name.as_bytes()) };
        f.map(|s| *s).map_err(|e| format!("symbol {name}: {e}"))
    }
    let l = &libs[1];
    let api = Api {
        version: sym(l, "nvrtcVersion")?,
        create: sym(l, "nvrtcCreateProgram")?,
        compile: sym(l, "nvrtcCompileProgram")?,
        log_size: sym(l, "nvrtcGetProgramLogSize")?,
        log: sym(l, "nvrtcGetProgramLog")?,
        cubin_size: sym(l, "nvrtcGetCUBINSize")?,
        cubin: sym(l, "nvrtcGetCUBIN")?,
        ptx_size: sym(l, "nvrtcGetPTXSize")?,
        ptx: sym(l, "nvrtcGetPTX")?,
        destroy: sym(l, "nvrtcDestroyProgram")?,
        error_string: sym(l, "nvrtcGetErrorString")?,
        _libs: libs,
    };
    Ok((api, lib))
}

impl Api {
    fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    fn err(&self, rc: c_int) -> String {
        // SAFETY: NVRTC returns a static NUL-terminated string for any code.
        unsafe { CStr::from_ptr((self.error_string)(rc)) }.to_string_lossy().into_owned()
    }

    /// Compiles `src` (called `name` in diagnostics): a cubin when an `sm_` arch is given.
    fn compile(&self, name: &str, src: &str, opts: &[String]) -> Compiled {
        let cubin = opts.iter().any(|o| o.starts_with("--gpu-architecture=sm_"));
        let cstr = |s: &str| CString::new(s).unwrap_or_else(|_| panic!("NUL byte in {name}"));
        let (csrc, cname) = (cstr(src), cstr(name));
        let copts: Vec<CString> = opts.iter().map(|o| cstr(o)).collect();
        let ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: C strings and arrays outlive the calls; buffers are sized by NVRTC's own
        // size queries; the program is destroyed exactly once, after its last use.
        unsafe {
            let (null, n_opts) = (std::ptr::null(), ptrs.len() as c_int);
            let rc = (self.create)(&mut prog, csrc.as_ptr(), cname.as_ptr(), 0, null, null);
            if rc != 0 {
                return Err((rc, format!("nvrtcCreateProgram({name}): {}", self.err(rc))));
            }
            let rc = (self.compile)(prog, n_opts, ptrs.as_ptr());
            let read = |size: SizeFn, get: GetFn| {
                let mut n = 0;
                size(prog, &mut n);
                let mut buf = vec![0u8; n];
                get(prog, buf.as_mut_ptr().cast());
                buf
            };
            let mut log = read(self.log_size, self.log);
            log.retain(|&b| b != 0); // sizes count the trailing NUL
            let log = String::from_utf8_lossy(&log).into_owned();
            let out = match (rc, cubin) {
                (0, true) => Ok((read(self.cubin_size, self.cubin), log)),
                (0, false) => {
                    let mut ptx = read(self.ptx_size, self.ptx);
                    ptx.retain(|&b| b != 0); // include_str! wants text
                    Ok((ptx, log))
                }
                _ => Err((rc, log)),
            };
            (self.destroy)(&mut prog);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC 13.0's `-Xptxas=-v` log for sm_90a of three kernels (`with_smem` with 384 bytes of
    /// shared memory, `plain`, `spills` forced to spill by `__launch_bounds__(1024, 2)`) and a
    /// `__noinline__` device function, verbatim but for three edits: a C7515 note for `spills`
    /// and a C7518 one for `plain` spliced in before their lines, as ptxas writes them for a
    /// kernel whose wgmma's it serializes, and the device function's stack and spills (0 in the
    /// real log) made nonzero.
    const LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'with_smem' for 'sm_90a'
ptxas info    : Function properties for with_smem
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 384 bytes smem
ptxas info    : Compile time = 4.944 ms
ptxas info    : (C7518) Potential Performance Loss: wgmma.mma_async instructions are serialized due to program dependence on compiler-inserted WG.DP in divergent path in the function 'plain'
ptxas info    : Compiling entry function 'plain' for 'sm_90a'
ptxas info    : Function properties for plain
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compile time = 1.386 ms
ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to non wgmma instruction defining accumulator registers of a wgmma between start and end of the pipeline stage in the function 'spills'
ptxas info    : Compiling entry function 'spills' for 'sm_90a'
ptxas info    : Function properties for spills
ptxas         .     1616 bytes stack frame, 1596 bytes spill stores, 3912 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 1616 bytes cumulative stack size
ptxas info    : Compile time = 192.814 ms
ptxas info    : Function properties for _Z6helperPfi
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
";

    fn kernel(name: &str, registers: u32, shared_bytes: u32) -> KernelResources {
        KernelResources { name: name.into(), registers, shared_bytes, ..Default::default() }
    }

    #[test]
    fn parse_ptxas_reads_each_entry_function() {
        let spills = KernelResources {
            stack_bytes: 1616,
            spill_store_bytes: 1596,
            spill_load_bytes: 3912,
            wgmma_serialized: true,
            ..kernel("spills", 32, 0)
        };
        // The device function's properties (its own stack and spills, edited in here) belong
        // to no entry: no row, and no entry takes its numbers.
        let plain = KernelResources { wgmma_serialized: true, ..kernel("plain", 8, 0) };
        assert_eq!(parse_ptxas(LOG), vec![kernel("with_smem", 12, 384), plain, spills]);
    }

    #[test]
    fn parse_ptxas_of_a_log_without_entries_is_empty() {
        assert_eq!(parse_ptxas(""), vec![]);
        assert_eq!(parse_ptxas("ptxas info    : 0 bytes gmem\n"), vec![]);
    }
}
