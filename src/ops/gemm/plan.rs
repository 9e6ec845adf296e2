//! The planner behind [`Algo::Auto`]: each tile's shape as kernels/gemm.cu instantiates it, the
//! cost model that picks a tile and split count ([`Linear::estimate`]: waves of mma's, each SM's
//! share of the global-to-shared copies, device-memory traffic and the split-K reduce, with an
//! H200's constants fitted to its measurements, so that a plan never depends on the GPU it runs
//! on) and the resolution of an [`Algo`] into the [`Plan`] a call launches.

use super::{Algo, Linear, Pass, Tile};
use crate::{ensure_shape, Error, Result};

impl Tile {
    /// Every tile, in the planner's order of preference between equal estimates: two blocks an
    /// SM first (one block's loads and stores overlap the other's mma's), then the larger.
    pub const ALL: [Tile; 4] = [Tile::T128x128, Tile::T64x128, Tile::T128x256, Tile::T128x192];

    /// Every tile by name, as `parse` reads them.
    const NAMES: [(&'static str, Tile); 6] = [
        ("t128x256", Tile::T128x256),
        ("t128x192", Tile::T128x192),
        ("t128x128", Tile::T128x128),
        ("t64x128", Tile::T64x128),
        ("w128x256", Tile::W128x256),
        ("wt128x256", Tile::WT128x256),
    ];

    /// A tile by name (`t128x256`, `t128x192`, `t128x128`, `t64x128`, `w128x256`, `wt128x256`, any
    /// case), or
    /// an `Error::Invalid` listing them.
    pub fn parse(s: &str) -> Result<Tile> {
        let l = s.to_ascii_lowercase();
        Self::NAMES.iter().find(|(n, _)| *n == l).map(|&(_, t)| t).ok_or_else(|| {
            let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
            Error::Invalid(format!("unknown GEMM tile `{s}` (tiles: {})", names.join(", ")))
        })
    }

    /// `(rows, columns, warps, cp.async ring depth, blocks an SM)` as instantiated in
    /// kernels/gemm.cu (blocks an SM: what shared memory and registers allow on an H200).
    const fn spec(self) -> (usize, usize, usize, usize, usize) {
        match self {
            Tile::T128x256 => (128, 256, 8, 3, 1),
            Tile::T128x192 => (128, 192, 8, 3, 1),
            Tile::T128x128 => (128, 128, 4, 3, 2),
            Tile::T64x128 => (64, 128, 4, 4, 2),
            Tile::W128x256 | Tile::WT128x256 => (128, 256, 8, 4, 1),
        }
    }
    pub(super) fn rows(self) -> usize {
        self.spec().0
    }
    pub(super) fn cols(self) -> usize {
        self.spec().1
    }
    pub(super) fn threads(self) -> u32 {
        32 * self.spec().2 as u32
    }
    pub(super) fn stages(self) -> usize {
        self.spec().3
    }
    fn per_sm(self) -> usize {
        self.spec().4
    }
    /// Planner's mma rate of one SM running this tile, relative to [`SM_FLOPS`] (128 x 128, two
    /// blocks an SM). Fitted to run 5 (bench/results/2026-11-30-h200-run5/bench-gemm.json):
    /// 128 x 192, one block of 8 warps an SM, ran at 0.89 of 128 x 128. Not measured: 64 x 128
    /// (never compute bound there; 0.85 from its 64 x 32 warps' 50% more ldmatrix bytes an mma,
    /// and the run's fc6 fwd at batch 64 bounds it below by 0.70) and 128 x 256 (never planned
    /// in run 5; taken as 128 x 192, the other one-block tile).
    fn speed(self) -> f64 {
        match self {
            Tile::T128x128 => 1.0,
            Tile::T128x256 | Tile::T128x192 | Tile::W128x256 | Tile::WT128x256 => 0.89,
            Tile::T64x128 => 0.85,
        }
    }
}

/// The planner's machine: an H200's multiprocessors, as a constant rather than the device's
/// count so that a plan, and with it the order of every sum, never depends on the GPU.
const SMS: usize = 132;
/// Its rates, fitted to the 27 FC rows of run 5 (H200, these kernels; the fit, its residuals
/// and the plans it changed are in bench/NOTES.md; tests/gemm_plan.rs holds every row to 1.2x):
/// - `SM_FLOPS`: mma.sync flops a second of one SM at [`Tile::speed`] 1 (fc6 fwd at batch 256
///   ran 2.6e12 an SM on 128 x 128 split 4);
/// - `INGEST_BYTES`: global-to-shared bytes a second of all SMs, each SM at a 132nd of it: the
///   A and B tiles every block copies, re-reads from L2 included;
/// - `DRAM_BYTES`: device-memory bytes a second, not fitted but cuBLAS's stream of fc6's W at
///   batch 64 in the same run (3.68-3.76e12; the run's copy ceiling was 4.27e12);
/// - `EPILOGUE_BYTES`: output-tile bytes a second of all SMs, each at a 132nd, that a block
///   stores after its last mma (not overlapped with its own mma's; the fp32 dW of bwd_weight
///   and the split-K partials are what make it count);
/// - `LAUNCH_S`, `REDUCE_LAUNCH_S`: fixed costs of a call and of the split-K reduce launch
///   (run 5's training profile timed the reduce alone at 5.3-5.9 us, launch included).
const SM_FLOPS: f64 = 2.65e12;
const INGEST_BYTES: f64 = 5.4e12;
const DRAM_BYTES: f64 = 3.7e12;
const EPILOGUE_BYTES: f64 = 4.1e12;
const LAUNCH_S: f64 = 2.9e-6;
const REDUCE_LAUNCH_S: f64 = 2.5e-6;
/// At most this many splits, each of at least this many 64-deep k-tiles (a shorter split is
/// mostly pipeline fill).
const MAX_SPLITS: usize = 16;
const MIN_KTILES_PER_SPLIT: usize = 2;
/// K-tile depth of kernels/gemm.cu.
pub(super) const BK: usize = 64;

/// Dynamic shared memory of a tiled launch, as `gemm_smem_bytes` in kernels/gemm.cu: the
/// tile's ring of both operand tiles, each `[rows][64 + 8]` or (stored t-major)
/// `[64][rows + 8]` halves, or the fp32 output tile `[rows][cols + 8]` that the epilogue stages
/// in it, whichever is larger.
pub(super) fn smem_bytes(pass: Pass, tile: Tile) -> u32 {
    if tile == Tile::WT128x256 {
        return 4 * (128 + 256) * 64 * 2 + 1024; // the same ring, and up to 1 KiB to align it to 1024
    }
    if tile == Tile::W128x256 {
        return 4 * (128 + 256) * 64 * 2; // kernels/gemm_wgmma.cu: 4 k-tiles, unpadded core matrices
    }
    let halves = |mn: usize, t_major: bool| if t_major { BK * (mn + 8) } else { mn * (BK + 8) };
    let (a_t, b_t) = pass.t_major();
    let ring = tile.stages() * (halves(tile.rows(), a_t) + halves(tile.cols(), b_t)) * 2;
    ring.max(4 * tile.rows() * (tile.cols() + 8)) as u32
}

impl Pass {
    /// Whether A and B are stored t-major (`[T][R]`, `[T][S]`: M- / N-major operands) in this
    /// pass's product, as kernels/gemm.cu's and gemm_wgmma.cu's A_T / B_T.
    pub(super) fn t_major(self) -> (bool, bool) {
        match self {
            Pass::Fwd => (false, false),
            Pass::BwdData => (false, true),
            Pass::BwdWeight => (true, true),
        }
    }
}

/// Rows a bias-gradient chunk sums before its partial goes to the workspace, and at most
/// this many chunks.
const COLSUM_ROWS: usize = 1024;
const MAX_COLSUM_CHUNKS: usize = 64;

/// A resolved algorithm: what a call launches.
#[derive(Clone, Copy, Debug)]
pub(super) enum Plan {
    Tiled { tile: Tile, splits: usize, kt_per_split: usize },
    Simple,
}

impl Linear {
    /// The layer of `m` rows, `k` inputs and `n` outputs. No check here: each launch checks it
    /// against its tensors.
    pub const fn new(m: usize, k: usize, n: usize) -> Self {
        Self { m, k, n }
    }

    /// A 1x1 convolution of an NHWC input `[n, h, w, c]` to `k` channels: the GEMM over the
    /// `n*h*w` pixels. An `n*h*w` past `usize::MAX` saturates (no tensor has that many
    /// elements, so every launch refuses the shape, and the planner's and workspace sizes
    /// saturate too) instead of wrapping to a small, valid-looking product in release builds.
    pub const fn conv1x1(n: usize, h: usize, w: usize, c: usize, k: usize) -> Self {
        Self { m: n.saturating_mul(h).saturating_mul(w), k: c, n: k }
    }

    /// Floating-point operations of one pass (`2 M N K`; all three passes are equal).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// The product's dimensions `(R, S, T)`: output `R x S`, reduction over `T`.
    pub(super) fn dims(&self, pass: Pass) -> (usize, usize, usize) {
        match pass {
            Pass::Fwd => (self.m, self.n, self.k),
            Pass::BwdData => (self.m, self.k, self.n),
            Pass::BwdWeight => (self.n, self.k, self.m),
        }
    }

    /// Whether the tensor-core kernels accept this shape.
    pub fn tensor_core_ok(&self) -> bool {
        self.n.is_multiple_of(8) && self.k.is_multiple_of(8)
    }

    /// What [`Algo::Auto`] runs for `pass` on sm_90, given the workspace it asks for (on a GPU
    /// with less shared memory a block, [`Linear::plan_within`]): the tile and
    /// split count with the least [`Linear::estimate`], preferring fewer splits, then the
    /// earlier tile of [`Tile::ALL`], between estimates within 1%.
    pub fn plan(&self, pass: Pass) -> Algo {
        if !self.tensor_core_ok() {
            return Algo::Simple;
        }
        let (_, _, t) = self.dims(pass);
        let kt = t.div_ceil(BK).max(1);
        let max_splits = (kt / MIN_KTILES_PER_SPLIT).clamp(1, MAX_SPLITS);
        let mut best = (f64::INFINITY, Tile::T128x128, 1);
        for splits in (1..=max_splits).map(|n| self.resolve_splits(t, n)) {
            for tile in Tile::ALL {
                let cost = self.estimate(pass, tile, splits);
                if cost < 0.99 * best.0 {
                    best = (cost, tile, splits);
                }
            }
        }
        Algo::TensorCore { tile: best.1, splits: best.2 }
    }

    /// The planner's model of one tensor-core run, in seconds on an H200: a launch, plus the
    /// longest of three limits of the tiled kernel, plus, when split, the reduce.
    /// - Compute, by waves of blocks: each block's mma's at its tile's rate, then its output
    ///   tile's stores (the epilogue does not overlap the block's own mma's).
    /// - Ingest, per SM: the most loaded SM holds `ceil(blocks / 132)` blocks (they are dealt
    ///   out breadth-first) and copies each one's A and B tiles over its k range into shared
    ///   memory at a 132nd of the device's rate. So a plan that leaves SMs idle cannot reach
    ///   the device's bandwidth, and larger tiles, which re-read less from L2, copy less.
    /// - Device memory: both operands once (L2 serves the re-reads) and the output, or the
    ///   fp32 partials when split.
    /// - The reduce: its launch, and reading the partials back and writing the output.
    ///
    /// It ranks plans; it reproduced run 5's measured times within 1.12x (bench/NOTES.md).
    pub fn estimate(&self, pass: Pass, tile: Tile, splits: usize) -> f64 {
        let (r, s, t) = self.dims(pass);
        let kt = t.div_ceil(BK).max(1);
        let per_split = kt.div_ceil(self.resolve_splits(t, splits));
        let splits = kt.div_ceil(per_split);
        // Saturating and f64 products: a caller's Linear may be any size (conv1x1 saturates).
        let blocks =
            r.div_ceil(tile.rows()).max(1).saturating_mul(s.div_ceil(tile.cols()).max(1)).saturating_mul(splits);
        let waves = blocks.div_ceil(SMS * tile.per_sm()) as f64;
        let most_loaded = blocks.div_ceil(SMS) as f64;
        let out = if pass == Pass::BwdWeight { 4.0 } else { 2.0 };
        let tile_out = if splits > 1 { 4.0 } else { out };
        // Rows, columns and depth a block copies and stores: the tile clipped to the product.
        let (rows, cols) = (r.min(tile.rows()) as f64, s.min(tile.cols()) as f64);
        let depth = t.min(per_split.saturating_mul(BK)) as f64;
        let sm = |device_rate: f64| device_rate / SMS as f64;
        let block_flops = 2.0 * (tile.rows() * tile.cols()) as f64 * per_split as f64 * BK as f64;
        let block_s = block_flops / (SM_FLOPS * tile.speed()) + rows * cols * tile_out / sm(EPILOGUE_BYTES);
        let compute = waves * tile.per_sm() as f64 * block_s;
        let ingest = most_loaded * 2.0 * (rows + cols) * depth / sm(INGEST_BYTES);
        let (r, s, t) = (r as f64, s as f64, t as f64);
        let (inputs, outputs) = (2.0 * (r * t + t * s), r * s);
        if splits == 1 {
            return LAUNCH_S + compute.max(ingest).max((inputs + out * outputs) / DRAM_BYTES);
        }
        let partials = 4.0 * (splits as f64) * outputs;
        let reduce = REDUCE_LAUNCH_S + (partials + out * outputs) / DRAM_BYTES;
        LAUNCH_S + compute.max(ingest).max((inputs + partials) / DRAM_BYTES) + reduce
    }

    /// Workspace [`Algo::Auto`] needs for `pass`, in bytes (0 when none).
    pub fn workspace_bytes(&self, pass: Pass) -> usize {
        self.workspace_bytes_with(pass, Algo::Auto)
    }

    /// Workspace `algo` needs for `pass` (with the bias gradient, for `BwdWeight`), in bytes.
    pub fn workspace_bytes_with(&self, pass: Pass, algo: Algo) -> usize {
        let algo = if algo == Algo::Auto { self.plan(pass) } else { algo };
        match algo {
            Algo::TensorCore { splits, .. } => {
                let (r, s, t) = self.dims(pass);
                let splits = self.resolve_splits(t, splits);
                let partials = if splits > 1 { splits.saturating_mul(r).saturating_mul(s) } else { 0 };
                let db = if pass == Pass::BwdWeight { self.colsum_plan(true).1 } else { 0 };
                partials.saturating_add(if db > 1 { db.saturating_mul(self.n) } else { 0 }).saturating_mul(4)
            }
            Algo::Simple | Algo::Auto => 0,
        }
    }

    /// The split count a launch of `pass` asked for `splits` runs: at most one a 64-deep k-tile
    /// of the reduction, and no empty split.
    pub fn splits_run(&self, pass: Pass, splits: usize) -> usize {
        self.resolve_splits(self.dims(pass).2, splits)
    }

    /// `splits` made consistent with the reduction depth: no empty split.
    fn resolve_splits(&self, t: usize, splits: usize) -> usize {
        let kt = t.div_ceil(BK).max(1);
        kt.div_ceil(kt.div_ceil(splits.clamp(1, kt)))
    }

    /// `(rows per chunk, chunks)` of the bias gradient's column sums; one chunk without a
    /// workspace.
    pub(super) fn colsum_plan(&self, with_ws: bool) -> (usize, usize) {
        let want = if with_ws { self.m.div_ceil(COLSUM_ROWS).clamp(1, MAX_COLSUM_CHUNKS) } else { 1 };
        let rows = self.m.div_ceil(want).max(1);
        (rows, self.m.div_ceil(rows).max(1))
    }

    /// [`Linear::plan`] on a device that allows `max_shared` bytes of shared memory a block:
    /// where the planned tile needs more (its tiles are sized for sm_90), the fitting tile with
    /// the least estimate at the same split count (so the same workspace), else the simple
    /// kernel.
    pub fn plan_within(&self, pass: Pass, max_shared: usize) -> Algo {
        match self.plan(pass) {
            Algo::TensorCore { tile, splits } if smem_bytes(pass, tile) as usize > max_shared => {
                let fits = Tile::ALL.into_iter().filter(|&t| smem_bytes(pass, t) as usize <= max_shared);
                let cost = |t: &Tile| self.estimate(pass, *t, splits);
                match fits.min_by(|a, b| cost(a).total_cmp(&cost(b))) {
                    Some(tile) => Algo::TensorCore { tile, splits },
                    None => Algo::Simple,
                }
            }
            a => a,
        }
    }

    /// The launch plan for `algo` on a device allowing `max_shared` bytes of shared memory a
    /// block, checking what the tensor-core path requires.
    pub(super) fn resolve(&self, pass: Pass, algo: Algo, have_ws: bool, max_shared: usize) -> Result<Plan> {
        let auto = algo == Algo::Auto;
        let algo = if auto { self.plan_within(pass, max_shared) } else { algo };
        match algo {
            Algo::Simple | Algo::Auto => Ok(Plan::Simple),
            Algo::TensorCore { tile, splits } => {
                ensure_shape!(
                    self.tensor_core_ok(),
                    "tensor-core GEMM needs N and K to be multiples of 8, got M = {}, K = {}, N = {} \
                     (Algo::Auto runs the simple kernel for such shapes)",
                    self.m,
                    self.k,
                    self.n
                );
                ensure_shape!(splits >= 1, "split count must be at least 1");
                let (_, _, t) = self.dims(pass);
                // Without a workspace, Auto runs unsplit; an explicit split needs one.
                let splits = if auto && !have_ws { 1 } else { self.resolve_splits(t, splits) };
                let kt = t.div_ceil(BK).max(1);
                Ok(Plan::Tiled { tile, splits, kt_per_split: kt.div_ceil(splits) })
            }
        }
    }
}
