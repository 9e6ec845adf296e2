//! `vgg bench copy`: how fast global -> shared copies run by the forms our tensor-core kernels
//! stage operands with (kernels/probe_copy.cu), from L2 and from device memory, every landed
//! tile checked by a checksum against the host's.
//!
//! Why it exists: ncu counted ~50% of every tensor-core kernel's global sectors as excess on the
//! H200 (bench/NOTES.md, runs 5 and 6), and our wgmma kernels run at the L2's limit, so the
//! ceiling of the copies, and whether their form (the src-size operand, the cache level, which
//! bytes an 8-lane phase takes) doubles the sectors, decides where the conv and GEMM tiles go
//! next. The probe moves the same tiles every way and reports GB/s for each.

use super::{time_calls, Timing, TimingConfig};
use crate::device::{KArg, Kernel, LaunchConfig, TensorMap, TensorMap2dSpec};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use rayon::prelude::*;

/// Rows of one tile (each 8 units of 16 bytes: a k-tile of 64 halves), as the kernels' kRows.
pub const TILE_ROWS: usize = 256;
/// Bytes of one tile.
pub const TILE_BYTES: usize = TILE_ROWS * 8 * 16;

/// How a kernel of the probe copies a 16-byte unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CopyMethod {
    /// `cp.async.cg` with a src-size operand: every tensor-core kernel's copy.
    CgZfill,
    /// `cp.async.cg` without one.
    Cg,
    /// `cp.async.ca`, allocating in L1.
    Ca,
    /// `ld.global.v4` into registers, `st.shared.v4` a tile later.
    Ldg,
    /// `cp.async.bulk` (the TMA engine): 128 bytes a copy, a tile row each, counted by an
    /// mbarrier (kernels/bulk.cuh). sm_90 only.
    Bulk,
    /// `cp.async.bulk.tensor.2d` (the TMA engine's tensor form): a tile as one 64 x 256 box in
    /// the 128-byte swizzle, through a [`TensorMap`]. sm_90 only.
    Tma,
}

impl CopyMethod {
    /// Every method, in the report's order.
    pub const ALL: [CopyMethod; 6] =
        [CopyMethod::CgZfill, CopyMethod::Cg, CopyMethod::Ca, CopyMethod::Ldg, CopyMethod::Bulk, CopyMethod::Tma];

    /// `cgz`, `cg`, `ca`, `ldg`, `bulk` or `tma`, as the kernels' names and `--methods` spell them.
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::CgZfill => "cgz",
            CopyMethod::Cg => "cg",
            CopyMethod::Ca => "ca",
            CopyMethod::Ldg => "ldg",
            CopyMethod::Bulk => "bulk",
            CopyMethod::Tma => "tma",
        }
    }

    /// A method by name, or an `Error::Invalid` listing them.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown copy method `{s}` (methods: cgz, cg, ca, ldg, bulk, tma)")))
    }

    /// The lane patterns it runs: both, or for the copy engine's forms (no lanes' phases)
    /// [`Phase::Rows`] alone.
    pub fn phases(self) -> &'static [Phase] {
        if self.engine() {
            &[Phase::Rows]
        } else {
            &[Phase::Rows, Phase::Runs]
        }
    }

    /// Whether the copy engine (TMA) moves the bytes: sm_90 only.
    pub fn engine(self) -> bool {
        matches!(self, CopyMethod::Bulk | CopyMethod::Tma)
    }

    fn kernel(self, phase: Phase) -> Kernel {
        match self {
            CopyMethod::Bulk => return Kernel { module: "probe_copy", name: "probe_copy_bulk" },
            CopyMethod::Tma => return Kernel { module: "probe_copy", name: "probe_copy_tma" },
            _ => {}
        }
        const NAMES: [[&str; 2]; 4] = [
            ["probe_copy_cgz_p0", "probe_copy_cgz_p1"],
            ["probe_copy_cg_p0", "probe_copy_cg_p1"],
            ["probe_copy_ca_p0", "probe_copy_ca_p1"],
            ["probe_copy_ldg_p0", "probe_copy_ldg_p1"],
        ];
        Kernel { module: "probe_copy", name: NAMES[self as usize][phase as usize] }
    }

    /// Dynamic shared memory a block asks for: the ring's 3 tiles, the register-staged copy's
    /// 2, or for the swizzled boxes 3 and the 1 KiB their 1024-byte alignment may skip.
    fn shared_bytes(self) -> usize {
        match self {
            CopyMethod::Ldg => 2 * TILE_BYTES,
            CopyMethod::Tma => 3 * TILE_BYTES + 1024,
            _ => 3 * TILE_BYTES,
        }
    }
}

/// Which bytes the 8 lanes of one store phase take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// 8 rows x one 16-byte unit: our kernels' K-major copies.
    Rows = 0,
    /// One row's 8 units, 128 contiguous bytes.
    Runs = 1,
}

/// A source matrix of `rows` x `pitch` 16-byte units and how many tiles one launch copies.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CopyCase {
    /// `l2`, `dram` or `l2-contig`.
    pub name: String,
    /// Matrix rows, a multiple of [`TILE_ROWS`].
    pub rows: usize,
    /// Row pitch in 16-byte units, a multiple of 8.
    pub pitch: usize,
    /// Tiles one launch copies (the matrix's tiles, cycled).
    pub count: usize,
}

impl CopyCase {
    /// Tiles of the matrix.
    pub fn tiles(&self) -> usize {
        self.rows / TILE_ROWS * (self.pitch / 8)
    }

    /// Bytes one launch copies.
    pub fn bytes(&self) -> usize {
        self.count * TILE_BYTES
    }

    /// The report's cases for `grid` blocks: on a GPU a 16 MiB matrix of 32 KiB rows re-read
    /// from L2 (64 tiles a block), the same rows in a 1 GiB matrix read once from device memory,
    /// and 16 MiB of 128-byte rows (each tile contiguous) from L2; on emu, one small matrix.
    pub fn defaults(emu: bool, grid: usize) -> Vec<CopyCase> {
        let case = |name: &str, rows, pitch, count| CopyCase { name: name.into(), rows, pitch, count };
        if emu {
            return vec![case("l2", 512, 16, 10)];
        }
        vec![
            case("l2", 512, 2048, grid * 64),
            case("dram", 32768, 2048, 32768),
            case("l2-contig", 131072, 8, grid * 64),
        ]
    }

    fn check(&self) -> Result<()> {
        ensure_shape!(
            self.rows > 0 && self.rows.is_multiple_of(TILE_ROWS) && self.pitch > 0 && self.pitch.is_multiple_of(8),
            "copy probe `{}`: rows must be a positive multiple of {TILE_ROWS} and the pitch a positive multiple \
             of 8 units, got {} x {}",
            self.name,
            self.rows,
            self.pitch
        );
        let int = |v: usize| v <= i32::MAX as usize;
        ensure_shape!(
            self.count >= 1 && int(self.count) && int(self.rows) && int(self.pitch),
            "copy probe `{}`: {} tiles of a {} x {} matrix (at least 1 tile; counts must fit the kernels' ints)",
            self.name,
            self.count,
            self.rows,
            self.pitch
        );
        Ok(())
    }
}

/// A source matrix on the device and the per-block sums of the last launch.
pub struct CopyProbe {
    case: CopyCase,
    src: Tensor<u64>,
    sums: Tensor<i32>,
    grid: usize,
    /// The source as a tensor map, made at the first TMA launch.
    map: Option<TensorMap>,
}

/// The 16-byte unit `i` of the probe's source: two 64-bit mixes of it (splitmix64), so that
/// every word differs and the host can recompute any unit without a copy of the matrix.
fn unit(i: u64) -> [u64; 2] {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    [mix(2 * i), mix(2 * i + 1)]
}

impl CopyProbe {
    /// The case's matrix on `dev`, for launches of `grid` blocks.
    pub fn new(dev: &Device, case: &CopyCase, grid: usize) -> Result<Self> {
        case.check()?;
        ensure_shape!((1..=1 << 16).contains(&grid), "copy probe: grid of {grid} blocks (1 to 65536)");
        let units = case.rows * case.pitch;
        let data: Vec<u64> = (0..units as u64).into_par_iter().flat_map_iter(unit).collect();
        Ok(Self {
            case: case.clone(),
            src: Tensor::from_host(dev, &[2 * units], &data)?,
            sums: Tensor::empty(dev, &[grid])?,
            grid,
            map: None,
        })
    }

    /// One launch of `method` / `phase` over the case's tiles (bulk copies: on sm_90 or emu,
    /// else an `Error::Unsupported`).
    pub fn run(&mut self, method: CopyMethod, phase: Phase) -> Result<()> {
        let c = &self.case;
        let dev = self.src.device().clone();
        if method.engine() && !dev.has_wgmma() {
            return Err(Error::Unsupported(format!("copy-engine loads need an sm_90 GPU; {} is not one", dev.name())));
        }
        if method == CopyMethod::Tma && self.map.is_none() {
            let spec = TensorMap2dSpec {
                inner: 8 * c.pitch,
                outer: c.rows,
                row_stride: 16 * c.pitch,
                box_inner: 64,
                box_outer: TILE_ROWS,
                swizzle128: true,
            };
            self.map = Some(TensorMap::new_2d(&dev, self.src.device_ptr(), spec)?);
        }
        let cfg = LaunchConfig {
            grid: (self.grid as u32, 1, 1),
            block: (256, 1, 1),
            shared_bytes: method.shared_bytes() as u32,
        };
        let mut args = vec![
            self.src.arg(),
            KArg::I32(c.rows as i32),
            KArg::I32(c.pitch as i32),
            KArg::I32(c.tiles() as i32),
            KArg::I32(c.count as i32),
            self.sums.arg_mut(),
        ];
        if let (CopyMethod::Tma, Some(map)) = (method, &self.map) {
            args.push(map.arg());
        }
        // SAFETY: (const uint4* src, int rows, int pitch, int tiles, int count, unsigned* out
        // [, TmaDesc map by value for tma]): src holds rows x pitch units (checked by
        // CopyCase::check, allocated in new), tiles is the matrix's count, out one word per block
        // of the grid; the map describes src.
        unsafe { dev.launch(&method.kernel(phase), cfg, &args) }
    }

    /// One more launch into poisoned sums, and the sums it wrote (so a block that writes nothing
    /// cannot pass on an earlier launch's result).
    pub fn checked_sums(&mut self, method: CopyMethod, phase: Phase) -> Result<Vec<u32>> {
        let poison = vec![0x5EED_F00Du32 as i32; self.grid];
        self.sums = Tensor::from_host(self.src.device(), &[self.grid], &poison)?;
        self.run(method, phase)?;
        Ok(self.sums.to_host()?.into_iter().map(|s| s as u32).collect())
    }

    /// The block sums a correct launch writes, from the host's own copy of every unit.
    pub fn expected(&self) -> Vec<u32> {
        let c = &self.case;
        let per_row_block = c.pitch / 8;
        let tile_sum = |t: usize| -> u32 {
            let base = (t / per_row_block) * TILE_ROWS * c.pitch + (t % per_row_block) * 8;
            crate::reference::copy_probe_tile_sum(|r, u| {
                let [a, b] = unit((base + r * c.pitch + u) as u64);
                [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]
            })
        };
        let tiles: Vec<u32> = (0..c.tiles()).into_par_iter().map(tile_sum).collect();
        (0..self.grid)
            .map(|b| (b..c.count).step_by(self.grid).fold(0u32, |s, i| s.wrapping_add(tiles[i % tiles.len()])))
            .collect()
    }
}

/// One measured method / phase on one case.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CopyRow {
    /// The case's name.
    pub case: String,
    /// [`CopyMethod::name`]: `cgz`, `cg`, `ca`, `ldg`, `bulk` or `tma`.
    pub method: String,
    /// The 8-lane phase's bytes.
    pub phase: Phase,
    /// Bytes one launch copies.
    pub bytes: usize,
    /// The launch's timing.
    pub timing: Option<Timing>,
    /// `bytes` over the median time.
    pub gb_s: Option<f64>,
    /// Every block's checksum equals the host's (after the timed launches).
    pub check_ok: bool,
    /// Why the row could not run.
    pub error: Option<String>,
}

impl CopyRow {
    /// The table's header, matching [`CopyRow::line`].
    pub fn header() -> String {
        format!("{:<10} {:<6} {:<6} {:>9} {:>10} {:>9}  check", "case", "method", "phase", "MiB", "ms", "GB/s")
    }

    /// One line of the table.
    pub fn line(&self) -> String {
        let ms = self.timing.map_or("-".into(), |t| format!("{:.4}", t.median_ms));
        let gb = self.gb_s.map_or("-".into(), |g| if g < 10.0 { format!("{g:.2}") } else { format!("{g:.0}") });
        let check = match &self.error {
            Some(e) => format!("error: {e}"),
            None if self.check_ok => "ok".into(),
            None => "WRONG SUMS".into(),
        };
        let phase = match self.phase {
            _ if self.method == "bulk" => "row128",
            _ if self.method == "tma" => "box-sw",
            Phase::Rows => "8x16",
            Phase::Runs => "1x128",
        };
        let mib = self.bytes as f64 / (1 << 20) as f64;
        format!("{:<10} {:<6} {:<6} {mib:>9.1} {ms:>10} {gb:>9}  {check}", self.case, self.method, phase)
    }
}

/// Times every method in `methods` and both phases on `case`, `grid` blocks a launch (two an SM
/// on a GPU: the cp.async ring is 96 KiB), calling `each` as a row is done.
pub fn bench_case(
    dev: &Device,
    case: &CopyCase,
    methods: &[CopyMethod],
    grid: usize,
    mut each: impl FnMut(&CopyRow),
) -> Result<Vec<CopyRow>> {
    let mut probe = CopyProbe::new(dev, case, grid)?;
    let want = probe.expected();
    let timing = TimingConfig::for_device(dev);
    let mut rows = vec![];
    for &method in methods {
        for &phase in method.phases() {
            let mut row = CopyRow {
                case: case.name.clone(),
                method: method.name().into(),
                phase,
                bytes: case.bytes(),
                timing: None,
                gb_s: None,
                check_ok: false,
                error: None,
            };
            let timed = time_calls(dev, &timing, |_| probe.run(method, phase));
            match timed.and_then(|t| Ok((t, probe.checked_sums(method, phase)?))) {
                Ok((t, sums)) => {
                    row.gb_s = Some(case.bytes() as f64 / t.median_ms / 1e6);
                    row.timing = Some(t);
                    row.check_ok = sums == want;
                }
                Err(e) => row.error = Some(e.to_string()),
            }
            each(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}
