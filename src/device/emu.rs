//! The `emu` backend: kernels/*.cu compiled for the CPU (build/emu.rs), run by the fiber
//! scheduler of kernels/emu/runtime.cpp. Device memory is host memory, each allocation between
//! guard pages ([`Guarded`]) so that a kernel's access outside it fails the launch; launches are
//! synchronous; blocks run in parallel on rayon's pool when the schedule allows.

use super::{Kernel, LaunchConfig};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

type Launcher = unsafe extern "C" fn(*mut *mut c_void);

/// kernels/emu/launch.h's KernelEntry: a kernel's launcher and its parameters' sizes.
#[repr(C)]
struct KernelEntry {
    name: *const c_char,
    launch: Launcher,
    arity: c_int,
    sizes: *const u8,
}

extern "C" {
    fn vgg_emu_install_fault_handler();
    fn vgg_emu_find(name: *const c_char) -> *const KernelEntry;
    fn vgg_emu_sync(token: *mut c_void, release: c_int);
    fn vgg_emu_run_blocks(
        f: Launcher,
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem_bytes: usize,
        args: *mut *mut c_void,
        first: u64,
        last: u64,
        cluster: u32,
        schedule: c_int,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
        fault_addr: *mut u64,
    ) -> c_int;
}

/// The order in which the emulator runs threads and blocks. A kernel whose output
/// changes with the schedule has a race (a missing barrier, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Threads and blocks in index order, blocks in parallel.
    Index,
    /// Reverse index order, blocks in parallel.
    Reverse,
    /// A seeded random order, reshuffled at every barrier round; blocks run one after
    /// the other so the whole launch is reproducible.
    Random(u64),
}

impl Schedule {
    /// Parses `index`, `reverse`, `random` or `random:SEED`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "index" => Some(Self::Index),
            "reverse" => Some(Self::Reverse),
            "random" => Some(Self::Random(1)),
            _ => s.strip_prefix("random:").and_then(|n| n.parse().ok()).map(Self::Random),
        }
    }
}

pub(crate) struct EmuDevice {
    schedule: Mutex<Schedule>,
    /// Each kernel's launcher and parameter sizes in bytes.
    launchers: Mutex<HashMap<&'static str, (Launcher, &'static [u8])>>,
    /// Shared memory a block may use (Device::max_shared_per_block).
    shared_limit: std::sync::atomic::AtomicUsize,
    /// Bytes all live allocations may total (Device::set_emu_memory_limit; unlimited by default).
    memory_limit: std::sync::atomic::AtomicUsize,
    /// Live allocations by device address, each between guard pages ([`Guarded`]).
    allocations: Mutex<BTreeMap<u64, Guarded>>,
}

/// One device allocation as the emu device lays it out: its own mapping of an inaccessible
/// guard page, the data pages and another guard page, the allocation (`bytes`, rounded up to
/// cudaMalloc's 256) ending at the second guard. A kernel's access past the end, or before the
/// start by more than the slack in front, faults, and kernels/emu/fault.cpp fails the launch
/// naming the thread and the address ([`EmuDevice::describe`] names the allocation). The slack
/// (before the start, and the rounding after `bytes`) holds the fresh-memory fill, 0xFF, which
/// [`EmuDevice::check_guards`] checks after every launch, so a write there fails it too (a read
/// there is not caught: it sees 0xFF, NaN as fp16 or fp32, as a read of unwritten memory does).
struct Guarded {
    /// The mapping's first byte (a guard page) and length in bytes.
    map: usize,
    map_len: usize,
    /// Bytes asked for.
    bytes: usize,
    /// The two ranges of slack, before the start and after `bytes` (to the rounded end).
    slack: [(usize, usize); 2],
}

/// The fill of fresh device memory and of the slack around allocations.
const FILL: u8 = 0xFF;

/// Allocations from this size on are checked against the host's available memory first.
/// Linux overcommits: a too-large allocation succeeds, and filling it then gets this process
/// (or a neighbour) killed by the OOM killer instead of returning an error. Smaller ones are
/// not worth reading /proc/meminfo for; many of them add up slowly, through the large ones.
const CHECKED_ALLOC: usize = 16 << 20;
/// Host memory left to everything else on the machine.
const HOST_HEADROOM: usize = 512 << 20;

/// `MemAvailable` of a /proc/meminfo text, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

const ALIGN: usize = 256; // cudaMalloc's alignment

impl EmuDevice {
    pub fn new() -> Self {
        let s = std::env::var("VGG_EMU_SCHEDULE").ok().and_then(|s| Schedule::parse(&s)).unwrap_or(Schedule::Index);
        Self {
            schedule: Mutex::new(s),
            launchers: Mutex::default(),
            shared_limit: super::SM90_SHARED_PER_BLOCK.into(),
            memory_limit: usize::MAX.into(),
            allocations: Mutex::default(),
        }
    }

    pub fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Errors unless `bytes` more, beside `live` bytes already allocated, fit the device's limit
    /// and, for large allocations, the host's available memory (the emu device's memory is the
    /// host's).
    pub fn check_alloc(&self, bytes: usize, live: usize) -> Result<()> {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let limit = self.memory_limit.load(std::sync::atomic::Ordering::Relaxed);
        if live.saturating_add(bytes) > limit {
            return Err(Error::OutOfMemory(format!(
                "emu: out of device memory: {:.2} GiB requested beside {:.2} GiB allocated, limit {:.2} GiB",
                gib(bytes),
                gib(live),
                gib(limit)
            )));
        }
        if bytes >= CHECKED_ALLOC {
            let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| mem_available(&m));
            if let Some(avail) = avail.filter(|&a| bytes.saturating_add(HOST_HEADROOM) > a) {
                return Err(Error::OutOfMemory(format!(
                    "emu: out of host memory: {:.2} GiB requested, {:.2} GiB available (the emu device \
                     computes in host memory)",
                    gib(bytes),
                    gib(avail)
                )));
            }
        }
        Ok(())
    }

    pub fn shared_limit(&self) -> usize {
        self.shared_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_shared_limit(&self, bytes: usize) {
        self.shared_limit.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_schedule(&self, s: Schedule) {
        *self.schedule.lock().unwrap() = s;
    }

    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        static HANDLER: std::sync::Once = std::sync::Once::new();
        // SAFETY: installs a SIGSEGV handler once; it chains to the one it replaces.
        HANDLER.call_once(|| unsafe { vgg_emu_install_fault_handler() });
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize };
        let size = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let data = size.div_ceil(page) * page;
        let map_len = data + 2 * page;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(Error::OutOfMemory(format!("emu: out of host memory allocating {bytes} bytes")));
        }
        let (first, end) = (m as usize + page, m as usize + page + data);
        let start = end - size;
        // SAFETY: both guard pages and the data pages lie in the mapping just made. Fresh memory
        // is filled like the shim's shared memory, so a kernel that reads what nobody wrote sees
        // NaN rather than a plausible zero.
        let ok = unsafe {
            std::ptr::write_bytes(first as *mut u8, FILL, data);
            libc::mprotect(m, page, libc::PROT_NONE) == 0
                && libc::mprotect(end as *mut c_void, page, libc::PROT_NONE) == 0
        };
        if !ok {
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(m, map_len) };
            return Err(Error::OutOfMemory(format!("emu: cannot lay guard pages around {bytes} bytes")));
        }
        let g = Guarded { map: m as usize, map_len, bytes, slack: [(first, start), (start + bytes, end)] };
        self.allocations.lock().unwrap().insert(start as u64, g);
        Ok(start as u64)
    }

    /// # Safety
    /// `ptr` came from `alloc`, and nothing uses it any more.
    pub unsafe fn free(&self, ptr: u64, _bytes: usize) {
        if let Some(g) = self.allocations.lock().unwrap().remove(&ptr) {
            libc::munmap(g.map as *mut c_void, g.map_len);
        }
    }

    /// Where `addr` lies against the live allocations: in a guard or slack, which allocation and
    /// how far past its end or before its start.
    pub fn describe(&self, addr: u64) -> String {
        let map = self.allocations.lock().unwrap();
        let a = addr as usize;
        for (&start, g) in map.iter() {
            if a < g.map || a >= g.map + g.map_len {
                continue;
            }
            let (s, end) = (start as usize, start as usize + g.bytes);
            return if a >= end {
                format!("{} bytes past the end of the {}-byte allocation at {start:#x}", a - end, g.bytes)
            } else if a < s {
                format!("{} bytes before the start of the {}-byte allocation at {start:#x}", s - a, g.bytes)
            } else {
                format!("byte {} of the {}-byte allocation at {start:#x}", a - s, g.bytes)
            };
        }
        "in no live allocation's guard pages (freed memory, or a pointer into none)".to_string()
    }

    /// Fails when a launch of `kernel` wrote into the slack around an allocation (restored, so
    /// that the next launch is not blamed), naming the allocation and the bytes.
    fn check_guards(&self, kernel: &str) -> Result<()> {
        let map = self.allocations.lock().unwrap();
        for (&start, g) in map.iter() {
            for (lo, hi) in g.slack {
                // SAFETY: the slack lies in the allocation's data pages, mapped while it is live.
                let bytes = unsafe { std::slice::from_raw_parts_mut(lo as *mut u8, hi - lo) };
                let Some(first) = bytes.iter().position(|&b| b != FILL) else { continue };
                let last = bytes.iter().rposition(|&b| b != FILL).unwrap_or(first);
                bytes.fill(FILL);
                let (s, end) = (start as usize, start as usize + g.bytes);
                let span = if lo >= end {
                    format!("bytes {} to {} past its end", lo + first - end, lo + last - end)
                } else {
                    format!("bytes {} to {} before its start", s - (lo + last), s - (lo + first))
                };
                return Err(Error::Kernel(format!(
                    "{kernel}: wrote outside the {}-byte device allocation at {start:#x} ({span}; seen after the launch \
                     in the slack the emu device's guard pages leave)",
                    g.bytes
                )));
            }
        }
        Ok(())
    }

    fn launcher(&self, k: &Kernel) -> Result<(Launcher, &'static [u8])> {
        let mut map = self.launchers.lock().unwrap();
        if let Some(e) = map.get(k.name) {
            return Ok(*e);
        }
        let name = CString::new(k.name).expect("kernel names have no NUL");
        // SAFETY: looks a name up in the generated table; returns null when absent.
        let p = unsafe { vgg_emu_find(name.as_ptr()) };
        if p.is_null() {
            return Err(Error::ModuleUnavailable {
                module: k.module,
                reason: format!("no kernel `{}` in the emu build", k.name),
            });
        }
        // SAFETY: a static entry of the generated table: its launcher, and `arity` sizes.
        let e = unsafe { ((*p).launch, std::slice::from_raw_parts((*p).sizes, (*p).arity as usize)) };
        map.insert(k.name, e);
        Ok(e)
    }

    /// `sizes`: the size in bytes of each argument, checked against the kernel's parameters
    /// (the launcher reads one argument per parameter, whatever the array holds). `cluster`:
    /// blocks a cluster along x (1: none), whose blocks run together on one OS thread.
    ///
    /// # Safety
    /// As [`super::Device::launch_cluster`].
    pub unsafe fn launch(
        &self,
        k: &Kernel,
        cfg: LaunchConfig,
        cluster: u32,
        args: &mut [*mut c_void],
        sizes: &[u8],
    ) -> Result<()> {
        let (f, params) = self.launcher(k)?;
        if sizes != params {
            return Err(Error::Kernel(format!(
                "{}: arguments of {sizes:?} bytes given, the kernel's parameters are {params:?} bytes",
                k.name
            )));
        }
        let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        // Device::launch held cfg to CUDA's limits (LaunchConfig::check).
        let total: u64 = grid.iter().map(|&g| g as u64).product();
        let schedule = *self.schedule.lock().unwrap();
        let (code, seed, parallel) = match schedule {
            Schedule::Index => (0, 0, true),
            Schedule::Reverse => (1, 0, true),
            Schedule::Random(s) => (2, s, false),
        };
        let name = CString::new(k.name).expect("kernel names have no NUL");
        // Raw pointers are not Send; the launch only reads them while this call lasts.
        let args_addr = args.as_mut_ptr() as usize;
        let run = |first: u64, last: u64| -> Result<()> {
            let mut err = vec![0 as c_char; 2048];
            let mut fault = 0u64;
            // SAFETY: the caller guarantees the argument list; `f` is the generated launcher
            // of this kernel; grid / block arrays have three entries; `err` is writable.
            let rc = vgg_emu_run_blocks(
                f,
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_bytes as usize,
                args_addr as *mut *mut c_void,
                first,
                last,
                cluster,
                code,
                seed,
                err.as_mut_ptr(),
                err.len(),
                &mut fault,
            );
            if rc == 0 {
                return Ok(());
            }
            let mut msg = CStr::from_ptr(err.as_ptr()).to_string_lossy().into_owned();
            // An access outside every allocation (kernels/emu/fault.cpp): say which one it missed.
            if fault != 0 {
                msg = format!("{msg} ({})", self.describe(fault));
            }
            Err(Error::Kernel(msg))
        };
        // SAFETY: only annotates the hand-over for ThreadSanitizer builds (no-op otherwise).
        vgg_emu_sync(args.as_mut_ptr() as *mut c_void, 1);
        let result = self.dispatch(total, cluster as u64, parallel, schedule, run);
        // SAFETY: as above.
        vgg_emu_sync(args.as_mut_ptr() as *mut c_void, 0);
        result.and_then(|()| self.check_guards(k.name))
    }

    /// Runs blocks [0, total) through `run`, split into chunks of whole clusters of `cluster`
    /// blocks on rayon's pool when allowed.
    fn dispatch(
        &self,
        total: u64,
        cluster: u64,
        parallel: bool,
        schedule: Schedule,
        run: impl Fn(u64, u64) -> Result<()> + Sync,
    ) -> Result<()> {
        let workers = rayon::current_num_threads() as u64;
        let units = total / cluster;
        if !parallel || units < 2 || workers < 2 {
            return run(0, total);
        }
        use rayon::prelude::*;
        let chunks = (workers * 4).min(units);
        let per = units.div_ceil(chunks);
        let mut ranges: Vec<(u64, u64)> = (0..chunks)
            .map(|i| (i * per * cluster, ((i + 1) * per).min(units) * cluster))
            .filter(|r| r.0 < r.1)
            .collect();
        if schedule == Schedule::Reverse {
            ranges.reverse();
        }
        ranges.into_par_iter().map(|(a, b)| run(a, b)).collect::<Result<Vec<()>>>().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_stop_at_the_limit_and_at_the_hosts_available_memory() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n";
        assert_eq!(mem_available(text), Some(2_048_000_000));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let e = EmuDevice::new();
        e.set_memory_limit(64 << 20);
        e.check_alloc(32 << 20, 0).unwrap();
        let err = e.check_alloc(40 << 20, 32 << 20).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("out of device memory") && err.contains("limit 0.06 GiB"), "{err}");
        e.set_memory_limit(usize::MAX);
        // More than any machine has: refused before the allocator is asked.
        let err = e.check_alloc(1 << 50, 0).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("out of host memory"), "{err}");
    }
}
