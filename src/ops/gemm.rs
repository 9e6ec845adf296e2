//! Fully connected layers and 1x1 convolutions as one tensor-core GEMM (kernels/gemm.cu),
//! with its simple twin (kernels/gemm_simple.cu).
//!
//! Row-major throughout, W in PyTorch's `[out][in]` layout:
//! - [`linear_fwd`]: `Y[M][N] = X[M][K] W[N][K]^T + b`, optional ReLU, fp16 out;
//! - [`linear_bwd_data`]: `dX[M][K] = dY[M][N] W[N][K]`, fp16 out;
//! - [`linear_bwd_weight`]: `dW[N][K] = dY^T X` and `db[N] = sum_m dY[m]`, fp32 out.
//!
//! The 1x1 convolutions of config C over NHWC activations are the same products over the
//! `N*H*W` pixels ([`conv1x1_fwd`], [`conv1x1_dgrad`], [`conv1x1_wgrad`]).
//!
//! Inputs are fp16, every sum is fp32. The tensor-core path needs `N` and `K` to be multiples
//! of 8 (its 16-byte loads); `M` is free. [`Algo::Auto`] takes the simple twin for other
//! shapes (such as a 10-class classifier), and [`Algo::TensorCore`] refuses them with an
//! error. Results are deterministic: the order of every sum is fixed by the shape and the
//! algorithm, never by scheduling (split-K partials are summed in split order, no atomics).
//!
//! Small `M` (the FC layers at batch 1..64) gives few output tiles over a long reduction, so
//! [`Algo::Auto`] splits the reduction ("split-K") across blocks, which then needs a workspace
//! of [`Linear::workspace_bytes`]. Pass `None` instead and the op runs unsplit: same API,
//! correct, slower on those shapes.
//!
//! ```
//! use vgg_cuda::ops::gemm::{self, Linear, Pass};
//! use vgg_cuda::{Device, Tensor};
//! let dev = Device::emu();
//! let fc = Linear::new(2, 8, 16); // batch 2, 8 -> 16 features
//! let x = Tensor::from_f32(&dev, &[2, 8], &[1.0; 16])?;
//! let w = Tensor::from_f32(&dev, &[16, 8], &[0.5; 128])?;
//! let b = Tensor::from_f32(&dev, &[16], &[-1.0; 16])?;
//! let mut y = Tensor::empty(&dev, &[2, 16])?;
//! let mut ws = Tensor::<u8>::empty(&dev, &[fc.workspace_bytes(Pass::Fwd)])?;
//! gemm::linear_fwd(&x, &w, Some(&b), true, &mut y, Some(&mut ws))?;
//! assert_eq!(y.to_f32()?, vec![3.0; 32]); // relu(8 * 0.5 - 1)
//! # Ok::<(), vgg_cuda::Error>(())
//! ```

use super::{int, nhwc};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;

/// The three products of a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `Y = X W^T (+ b)`.
    Fwd,
    /// `dX = dY W`.
    BwdData,
    /// `dW = dY^T X` (and `db`).
    BwdWeight,
}

/// Block tile of the tensor-core kernel (rows x columns of the output); kernels/gemm.cu's
/// header says why each exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 128 x 256, 8 warps of 64 x 64, one block an SM: the large products.
    T128x256,
    /// 128 x 192, 8 warps of 64 x 48, one block an SM: widths such as 25088 that 256 splits
    /// into 1.5 waves.
    T128x192,
    /// 128 x 128, 4 warps of 64 x 64, two blocks an SM.
    T128x128,
    /// 64 x 128, 4 warps of 64 x 32, two blocks an SM: few output rows (FC layers at small
    /// batch).
    T64x128,
    /// 128 x 256 on Hopper's wgmma (kernels/gemm_wgmma.cu): 2 warpgroups of 64 x 256, one
    /// block an SM. Where [`Device::has_wgmma`]; never chosen by [`Linear::plan`] (unmeasured),
    /// only when asked for.
    W128x256,
}

impl Tile {
    /// Every tile, in the planner's order of preference between equal estimates: two blocks an
    /// SM first (one block's loads and stores overlap the other's mma's), then the larger.
    pub const ALL: [Tile; 4] = [Tile::T128x128, Tile::T64x128, Tile::T128x256, Tile::T128x192];

    /// `(rows, columns, warps, cp.async ring depth, blocks an SM)` as instantiated in
    /// kernels/gemm.cu (blocks an SM: what shared memory and registers allow on an H200).
    const fn spec(self) -> (usize, usize, usize, usize, usize) {
        match self {
            Tile::T128x256 => (128, 256, 8, 3, 1),
            Tile::T128x192 => (128, 192, 8, 3, 1),
            Tile::T128x128 => (128, 128, 4, 3, 2),
            Tile::T64x128 => (64, 128, 4, 4, 2),
            Tile::W128x256 => (128, 256, 8, 4, 1),
        }
    }
    fn rows(self) -> usize {
        self.spec().0
    }
    fn cols(self) -> usize {
        self.spec().1
    }
    fn threads(self) -> u32 {
        32 * self.spec().2 as u32
    }
    fn stages(self) -> usize {
        self.spec().3
    }
    fn per_sm(self) -> usize {
        self.spec().4
    }
    /// Planner's assumed mma rate of one SM running this tile, relative to 64 x 64 warp tiles
    /// (shared-memory bytes per mma: 64 x 48 and 64 x 32 warps read 16% and 50% more).
    /// Assumptions of the model, to be fitted to the next GPU run's numbers.
    fn speed(self) -> f64 {
        match self {
            Tile::T128x256 | Tile::T128x128 | Tile::W128x256 => 1.0,
            Tile::T128x192 => 0.97,
            Tile::T64x128 => 0.85,
        }
    }
}

/// How a product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// [`Linear::plan`]'s choice: tensor cores with a tile and split count from the shape, or
    /// the simple kernel when `N` or `K` is not a multiple of 8.
    Auto,
    /// Tensor cores with this tile, the reduction split into `splits` parts (1 = unsplit;
    /// more need a workspace). Errors when `N` or `K` is not a multiple of 8.
    TensorCore { tile: Tile, splits: usize },
    /// One thread per output, fp32 accumulation in index order: the simple twin.
    Simple,
}

/// Shape of a linear layer: `M` rows (batch, or pixels of a 1x1 convolution), `K` inputs,
/// `N` outputs. `X` is `[M][K]`, `W` `[N][K]`, `Y` `[M][N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Linear {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// The split-K planner's machine: an H200's multiprocessors, as a constant rather than the
/// device's count so that a plan, and with it the order of every sum, never depends on the GPU.
const SMS: usize = 132;
/// Its assumed rates (model assumptions, not measurements): mma.sync flops a second of one SM
/// at [`Tile::speed`] 1, device-memory bytes a second, the fixed cost of the split-K reduce
/// launch, and one pipeline fill (cold global-memory latency) per wave of blocks.
const SM_FLOPS: f64 = 3.0e12;
const DRAM_BYTES: f64 = 3.5e12;
const REDUCE_LAUNCH_S: f64 = 3e-6;
const FILL_S: f64 = 1e-6;
/// At most this many splits, each of at least this many 64-deep k-tiles (a shorter split is
/// mostly pipeline fill).
const MAX_SPLITS: usize = 16;
const MIN_KTILES_PER_SPLIT: usize = 2;
/// K-tile depth of kernels/gemm.cu.
const BK: usize = 64;
/// Rows a bias-gradient chunk sums before its partial goes to the workspace, and at most
/// this many chunks.
const COLSUM_ROWS: usize = 1024;
const MAX_COLSUM_CHUNKS: usize = 64;
/// Threads of the element-wise launches (split-K reduce, bias gradient).
const THREADS: u32 = 256;

/// A resolved algorithm: what a call launches.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Tiled { tile: Tile, splits: usize, kt_per_split: usize },
    Simple,
}

impl Linear {
    pub const fn new(m: usize, k: usize, n: usize) -> Self {
        Self { m, k, n }
    }

    /// A 1x1 convolution of an NHWC input `[n, h, w, c]` to `k` channels: the GEMM over the
    /// `n*h*w` pixels.
    pub const fn conv1x1(n: usize, h: usize, w: usize, c: usize, k: usize) -> Self {
        Self { m: n * h * w, k: c, n: k }
    }

    /// Floating-point operations of one pass (`2 M N K`; all three passes are equal).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// The product's dimensions `(R, S, T)`: output `R x S`, reduction over `T`.
    fn dims(&self, pass: Pass) -> (usize, usize, usize) {
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

    /// What [`Algo::Auto`] runs for `pass` (given the workspace it asks for): the tile and
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

    /// The planner's model of one tensor-core run, in seconds on an H200: waves of blocks,
    /// each block's mma's at its tile's rate plus one pipeline fill a wave, or the device-memory
    /// traffic of both operands (once: L2 serves the re-reads of blocks that run together) and
    /// the output, whichever is longer; plus, when split, the reduce that reads the fp32
    /// partials back. It ranks plans; it does not predict times.
    pub fn estimate(&self, pass: Pass, tile: Tile, splits: usize) -> f64 {
        let (r, s, t) = self.dims(pass);
        let kt = t.div_ceil(BK).max(1);
        let per_split = kt.div_ceil(self.resolve_splits(t, splits));
        let splits = kt.div_ceil(per_split);
        let blocks = r.div_ceil(tile.rows()).max(1) * s.div_ceil(tile.cols()).max(1) * splits;
        let waves = blocks.div_ceil(SMS * tile.per_sm()) as f64;
        let block_flops = (2 * tile.rows() * tile.cols() * per_split * BK) as f64;
        let compute = waves * (block_flops * tile.per_sm() as f64 / (SM_FLOPS * tile.speed()) + FILL_S);
        let out = if pass == Pass::BwdWeight { 4.0 } else { 2.0 };
        let (inputs, outputs) = (2.0 * (r * t + t * s) as f64, (r * s) as f64);
        if splits == 1 {
            return compute.max((inputs + out * outputs) / DRAM_BYTES);
        }
        let partials = 4.0 * (splits as f64) * outputs;
        compute.max((inputs + partials) / DRAM_BYTES) + (partials + out * outputs) / DRAM_BYTES + REDUCE_LAUNCH_S
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
                let partials = if splits > 1 { splits * r * s } else { 0 };
                let db = if pass == Pass::BwdWeight { self.colsum_plan(true).1 } else { 0 };
                4 * (partials + if db > 1 { db * self.n } else { 0 })
            }
            Algo::Simple | Algo::Auto => 0,
        }
    }

    /// `splits` made consistent with the reduction depth: no empty split.
    fn resolve_splits(&self, t: usize, splits: usize) -> usize {
        let kt = t.div_ceil(BK).max(1);
        kt.div_ceil(kt.div_ceil(splits.clamp(1, kt)))
    }

    /// `(rows per chunk, chunks)` of the bias gradient's column sums; one chunk without a
    /// workspace.
    fn colsum_plan(&self, with_ws: bool) -> (usize, usize) {
        let want = if with_ws { self.m.div_ceil(COLSUM_ROWS).clamp(1, MAX_COLSUM_CHUNKS) } else { 1 };
        let rows = self.m.div_ceil(want).max(1);
        (rows, self.m.div_ceil(rows).max(1))
    }

    /// The launch plan for `algo`, checking what the tensor-core path requires.
    fn resolve(&self, pass: Pass, algo: Algo, have_ws: bool) -> Result<Plan> {
        let auto = algo == Algo::Auto;
        let algo = if auto { self.plan(pass) } else { algo };
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

const fn k(module: &'static str, name: &'static str) -> Kernel {
    Kernel { module, name }
}
const REDUCE_F16: Kernel = k("gemm", "gemm_reduce_f16");
const REDUCE_F32: Kernel = k("gemm", "gemm_reduce_f32");
const COLSUM: Kernel = k("gemm", "gemm_colsum_f32");
const SIMPLE_F16: Kernel = k("gemm_simple", "gemm_simple_f16");
const SIMPLE_F32: Kernel = k("gemm_simple", "gemm_simple_f32");

fn tiled_kernel(pass: Pass, tile: Tile) -> Kernel {
    use Tile::*;
    let name = match (pass, tile) {
        (Pass::Fwd, T128x256) => "gemm_fwd_f16_128x256",
        (Pass::Fwd, T128x192) => "gemm_fwd_f16_128x192",
        (Pass::Fwd, T128x128) => "gemm_fwd_f16_128x128",
        (Pass::Fwd, T64x128) => "gemm_fwd_f16_64x128",
        (Pass::BwdData, T128x256) => "gemm_bwd_data_f16_128x256",
        (Pass::BwdData, T128x192) => "gemm_bwd_data_f16_128x192",
        (Pass::BwdData, T128x128) => "gemm_bwd_data_f16_128x128",
        (Pass::BwdData, T64x128) => "gemm_bwd_data_f16_64x128",
        (Pass::BwdWeight, T128x256) => "gemm_bwd_weight_f16_128x256",
        (Pass::BwdWeight, T128x192) => "gemm_bwd_weight_f16_128x192",
        (Pass::BwdWeight, T128x128) => "gemm_bwd_weight_f16_128x128",
        (Pass::BwdWeight, T64x128) => "gemm_bwd_weight_f16_64x128",
        (Pass::Fwd, W128x256) => return k("gemm_wgmma", "gemm_fwd_f16_w128x256"),
        (Pass::BwdData, W128x256) => return k("gemm_wgmma", "gemm_bwd_data_f16_w128x256"),
        (Pass::BwdWeight, W128x256) => return k("gemm_wgmma", "gemm_bwd_weight_f16_w128x256"),
    };
    k("gemm", name)
}

/// Dynamic shared memory of a tiled launch, as `gemm_smem_bytes` in kernels/gemm.cu: the
/// tile's ring of both operand tiles, each `[rows][64 + 8]` or (stored t-major)
/// `[64][rows + 8]` halves, or the fp32 output tile `[rows][cols + 8]` that the epilogue stages
/// in it, whichever is larger.
fn smem_bytes(pass: Pass, tile: Tile) -> u32 {
    if tile == Tile::W128x256 {
        return 4 * (128 + 256) * 64 * 2; // kernels/gemm_wgmma.cu: 4 k-tiles, unpadded core matrices
    }
    let halves = |mn: usize, t_major: bool| if t_major { BK * (mn + 8) } else { mn * (BK + 8) };
    let (a_t, b_t) = match pass {
        Pass::Fwd => (false, false),
        Pass::BwdData => (false, true),
        Pass::BwdWeight => (true, true),
    };
    let ring = tile.stages() * (halves(tile.rows(), a_t) + halves(tile.cols(), b_t)) * 2;
    ring.max(4 * tile.rows() * (tile.cols() + 8)) as u32
}

/// The views of one pass's product that the kernels take.
struct Operands<'a> {
    dev: Device,
    pass: Pass,
    shape: Linear,
    a: &'a Tensor<f16>,
    b: &'a Tensor<f16>,
}

/// Where a tiled product's result goes.
enum Out<'a> {
    /// fp16 `[R][S]`, with optional bias (along S) and ReLU.
    F16 { y: &'a mut Tensor<f16>, bias: Option<&'a Tensor<f16>>, relu: bool },
    /// fp32 `[R][S]`.
    F32(&'a mut Tensor<f32>),
}

fn null() -> KArg {
    KArg::Ptr(0)
}

fn elements_cfg(n: usize) -> Result<LaunchConfig> {
    LaunchConfig::for_elements(n, THREADS)
}

impl Operands<'_> {
    fn run(&self, plan: Plan, out: Out<'_>, ws: Option<&mut Tensor<u8>>) -> Result<()> {
        match plan {
            Plan::Tiled { tile, splits, kt_per_split } => self.tiled(tile, splits, kt_per_split, out, ws),
            Plan::Simple => self.simple(out),
        }
    }

    fn tiled(
        &self,
        tile: Tile,
        splits: usize,
        kt_per_split: usize,
        out: Out<'_>,
        ws: Option<&mut Tensor<u8>>,
    ) -> Result<()> {
        let (r, s, t) = self.shape.dims(self.pass);
        let count = r * s;
        if count == 0 {
            return Ok(());
        }
        ensure_shape!(
            tile != Tile::W128x256 || self.dev.has_wgmma(),
            "GEMM tile W128x256 needs wgmma (compute capability 9.0: H100 / H200); {} has none",
            self.dev.name()
        );
        let grid_y = s.div_ceil(tile.cols());
        ensure_shape!(grid_y <= 65535, "GEMM output has {s} columns, more than the grid allows");
        let cfg = LaunchConfig {
            grid: (
                u32::try_from(r.div_ceil(tile.rows()))
                    .map_err(|_| Error::Shape(format!("GEMM output has too many rows ({r})")))?,
                grid_y as u32,
                splits as u32,
            ),
            block: (tile.threads(), 1, 1),
            shared_bytes: smem_bytes(self.pass, tile),
        };
        let dims = [
            KArg::I32(int("GEMM rows", r)?),
            KArg::I32(int("GEMM columns", s)?),
            KArg::I32(int("GEMM depth", t)?),
            KArg::I32(int("k-tiles per split", kt_per_split)?),
        ];
        let kernel = tiled_kernel(self.pass, tile);
        let launch = |bias: KArg, relu: bool, out16: KArg, out32: KArg| {
            let args = [
                self.a.arg(),
                self.b.arg(),
                dims[0],
                dims[1],
                dims[2],
                dims[3],
                bias,
                KArg::I32(relu as i32),
                out16,
                out32,
            ];
            // SAFETY: (const __half* A, const __half* B, int R, int S, int T, int kt_per_split,
            // const __half* bias, int relu, __half* out16, float* out32). A and B hold the
            // pass's R*T and T*S elements (checked by the callers), bias S or null, out16 R*S
            // or null; out32 null, or gridDim.z * R*S floats (the output itself when z = 1,
            // else the workspace, checked below).
            unsafe { self.dev.launch(&kernel, cfg, &args) }
        };
        if splits == 1 {
            return match out {
                Out::F16 { y, bias, relu } => launch(bias.map_or(null(), |b| b.arg()), relu, y.arg_mut(), null()),
                Out::F32(y) => launch(null(), false, null(), y.arg_mut()),
            };
        }
        let need = splits * count;
        let ws = ws.ok_or_else(|| {
            Error::Shape(format!("{splits}-way split GEMM needs a workspace of {} bytes, none given", 4 * need))
        })?;
        ensure_shape!(
            ws.len() >= 4 * need,
            "GEMM workspace has {} bytes, {splits}-way split of {r}x{s} needs {}",
            ws.len(),
            4 * need
        );
        launch(null(), false, null(), ws.arg_mut())?;
        let rcfg = elements_cfg(count / 4)?;
        let (z, cnt) = (KArg::I32(splits as i32), KArg::I64(count as i64));
        match out {
            Out::F16 { y, bias, relu } => {
                let args = [
                    ws.arg(),
                    z,
                    cnt,
                    KArg::I32(int("columns", s)?),
                    bias.map_or(null(), |b| b.arg()),
                    KArg::I32(relu as i32),
                    y.arg_mut(),
                ];
                // SAFETY: (const float* ws, int splits, long long count, int cols, const __half*
                // bias, int relu, __half* out16): ws holds splits*count floats, y count halves,
                // bias cols or null; count % 4 == 0 since S % 8 == 0.
                unsafe { self.dev.launch(&REDUCE_F16, rcfg, &args) }
            }
            Out::F32(y) => {
                // SAFETY: (const float* ws, int splits, long long count, float* out32): ws holds
                // splits*count floats, y count; count % 4 == 0.
                unsafe { self.dev.launch(&REDUCE_F32, rcfg, &[ws.arg(), z, cnt, y.arg_mut()]) }
            }
        }
    }

    /// The simple twin: element strides of A and B per pass (see kernels/gemm_simple.cu).
    fn simple(&self, out: Out<'_>) -> Result<()> {
        let (r, s, t) = self.shape.dims(self.pass);
        if r * s == 0 {
            return Ok(());
        }
        let Linear { k, n, .. } = self.shape;
        let (k, n) = (k as i64, n as i64);
        let (a_r, a_t, b_t, b_s) = match self.pass {
            Pass::Fwd => (k, 1, 1, k),
            Pass::BwdData => (n, 1, k, 1),
            Pass::BwdWeight => (1, n, k, 1),
        };
        let cfg = elements_cfg(r * s)?;
        let head = [
            self.a.arg(),
            KArg::I64(a_r),
            KArg::I64(a_t),
            self.b.arg(),
            KArg::I64(b_t),
            KArg::I64(b_s),
            KArg::I32(int("GEMM rows", r)?),
            KArg::I32(int("GEMM columns", s)?),
            KArg::I32(int("GEMM depth", t)?),
        ];
        match out {
            Out::F16 { y, bias, relu } => {
                let mut args = head.to_vec();
                args.extend([bias.map_or(null(), |b| b.arg()), KArg::I32(relu as i32), y.arg_mut()]);
                // SAFETY: (const __half* A, long long a_r, a_t, const __half* B, long long b_t,
                // b_s, int R, int S, int T, const __half* bias, int relu, __half* out16): the
                // strides address only the R*T / T*S elements A and B hold, out16 has R*S.
                unsafe { self.dev.launch(&SIMPLE_F16, cfg, &args) }
            }
            Out::F32(y) => {
                let mut args = head.to_vec();
                args.push(y.arg_mut());
                // SAFETY: as gemm_simple_f16 without bias / relu, out32 R*S floats.
                unsafe { self.dev.launch(&SIMPLE_F32, cfg, &args) }
            }
        }
    }
}

/// `db[c] = sum_m dy[m][c]` in a fixed order: one pass of column sums when `chunks == 1`,
/// else per-chunk partials into `ws[offset..]`, added in chunk order.
fn bias_grad(
    dy: &Tensor<f16>,
    shape: Linear,
    db: &mut Tensor<f32>,
    ws: Option<&mut Tensor<u8>>,
    offset: usize,
) -> Result<()> {
    let dev = dy.device();
    let (m, n) = (shape.m, shape.n);
    if n == 0 {
        return Ok(());
    }
    // Chunked partials only on the tensor-core path's shapes (n % 8 == 0: float4 reduce).
    let (rows, chunks) = shape.colsum_plan(ws.is_some() && n.is_multiple_of(8));
    let cfg = |chunks: usize| LaunchConfig {
        grid: (n.div_ceil(32) as u32, chunks as u32, 1),
        block: (32, 8, 1),
        shared_bytes: 0,
    };
    let dims = [KArg::I32(int("rows", m)?), KArg::I32(int("columns", n)?), KArg::I32(int("rows per chunk", rows)?)];
    if chunks == 1 {
        // SAFETY: (const __half* x, int rows, int cols, int rows_per_chunk, float* out): dy
        // holds m*n halves, db n floats (one chunk).
        return unsafe { dev.launch(&COLSUM, cfg(1), &[dy.arg(), dims[0], dims[1], dims[2], db.arg_mut()]) };
    }
    let Some(ws) = ws else {
        return Err(Error::Shape("bias gradient: chunked column sums need a workspace".into()));
    };
    ensure_shape!(
        ws.len() >= 4 * (offset + chunks * n),
        "GEMM workspace has {} bytes, the bias gradient needs {}",
        ws.len(),
        4 * (offset + chunks * n)
    );
    let part = KArg::Ptr(ws.device_ptr() + 4 * offset as u64);
    // SAFETY: as above, out = ws + offset with chunks*n floats (checked).
    unsafe { dev.launch(&COLSUM, cfg(chunks), &[dy.arg(), dims[0], dims[1], dims[2], part])? };
    let args = [part, KArg::I32(chunks as i32), KArg::I64(n as i64), db.arg_mut()];
    // SAFETY: (const float* ws, int splits, long long count, float* out32): chunks*n partials
    // at ws + offset (16-byte aligned: offset % 4 == 0), db n floats, n % 4 == 0.
    unsafe { dev.launch(&REDUCE_F32, elements_cfg(n / 4)?, &args) }
}

/// `(M, K, N)` of a linear layer from X `[M, ...]` (trailing dimensions flattened, as
/// PyTorch's `flatten(1)`) and W `[N, K]`.
fn linear_shape(what: &str, x: &[usize], w: &[usize]) -> Result<Linear> {
    let [n, k] = *w else {
        return Err(Error::Shape(format!("{what}: weights must be [N, K] ([out][in]), got shape {w:?}")));
    };
    let m = x.first().copied().unwrap_or(0);
    let inner: usize = x.iter().skip(1).product();
    ensure_shape!(
        x.len() >= 2 && inner == k,
        "{what}: input shape {x:?} does not flatten to [M, {k}] for weights [{n}, {k}]"
    );
    Ok(Linear { m, k, n })
}

/// `y = act(x W^T + bias)`: x `[M, K]` (or `[M, ...]` flattening to K), w `[N, K]`, bias `[N]`,
/// y `M*N` elements; `act` is ReLU when `relu`. `ws`: see [`Linear::workspace_bytes`].
pub fn linear_fwd(
    x: &Tensor<f16>,
    w: &Tensor<f16>,
    bias: Option<&Tensor<f16>>,
    relu: bool,
    y: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    linear_fwd_with(Algo::Auto, x, w, bias, relu, y, ws)
}

/// [`linear_fwd`] with a chosen algorithm.
pub fn linear_fwd_with(
    algo: Algo,
    x: &Tensor<f16>,
    w: &Tensor<f16>,
    bias: Option<&Tensor<f16>>,
    relu: bool,
    y: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let shape = linear_shape("linear_fwd", x.shape(), w.shape())?;
    fwd(algo, shape, x, w, bias, relu, y, ws)
}

#[allow(clippy::too_many_arguments)]
fn fwd(
    algo: Algo,
    shape: Linear,
    x: &Tensor<f16>,
    w: &Tensor<f16>,
    bias: Option<&Tensor<f16>>,
    relu: bool,
    y: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let dev = x.device().clone();
    let Linear { m, k, n } = shape;
    x.check(&dev, "GEMM input x", m * k)?;
    w.check(&dev, "GEMM weights", n * k)?;
    y.check(&dev, "GEMM output y", m * n)?;
    if let Some(b) = bias {
        b.check(&dev, "bias", n)?;
    }
    if let Some(ws) = ws.as_deref() {
        ws.check(&dev, "GEMM workspace", ws.len())?;
    }
    let plan = shape.resolve(Pass::Fwd, algo, ws.is_some())?;
    Operands { dev, pass: Pass::Fwd, shape, a: x, b: w }.run(plan, Out::F16 { y, bias, relu }, ws)
}

/// `dx = dy W`: dy `[M, N]`, w `[N, K]`, dx `M*K` elements (any shape, e.g. the forward
/// input's). `ws`: see [`Linear::workspace_bytes`].
pub fn linear_bwd_data(
    dy: &Tensor<f16>,
    w: &Tensor<f16>,
    dx: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    linear_bwd_data_with(Algo::Auto, dy, w, dx, ws)
}

/// [`linear_bwd_data`] with a chosen algorithm.
pub fn linear_bwd_data_with(
    algo: Algo,
    dy: &Tensor<f16>,
    w: &Tensor<f16>,
    dx: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let [n, k] = *w.shape() else {
        return Err(Error::Shape(format!("linear_bwd_data: weights must be [N, K], got shape {:?}", w.shape())));
    };
    let d = dy.shape();
    ensure_shape!(
        d.len() == 2 && d[1] == n,
        "linear_bwd_data: dy must be [M, {n}] for weights [{n}, {k}], got shape {d:?}"
    );
    bwd_data(algo, Linear { m: d[0], k, n }, dy, w, dx, ws)
}

fn bwd_data(
    algo: Algo,
    shape: Linear,
    dy: &Tensor<f16>,
    w: &Tensor<f16>,
    dx: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let dev = dy.device().clone();
    let Linear { m, k, n } = shape;
    dy.check(&dev, "GEMM output gradient dy", m * n)?;
    w.check(&dev, "GEMM weights", n * k)?;
    dx.check(&dev, "GEMM input gradient dx", m * k)?;
    if let Some(ws) = ws.as_deref() {
        ws.check(&dev, "GEMM workspace", ws.len())?;
    }
    let plan = shape.resolve(Pass::BwdData, algo, ws.is_some())?;
    Operands { dev, pass: Pass::BwdData, shape, a: dy, b: w }.run(plan, Out::F16 { y: dx, bias: None, relu: false }, ws)
}

/// `dw = dy^T x` (fp32 `[N, K]`) and, when given, `db = sum over rows of dy` (fp32 `[N]`):
/// x `[M, ...]` flattening to K, dy `[M, N]`. `ws`: see [`Linear::workspace_bytes`].
pub fn linear_bwd_weight(
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    dw: &mut Tensor<f32>,
    db: Option<&mut Tensor<f32>>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    linear_bwd_weight_with(Algo::Auto, x, dy, dw, db, ws)
}

/// [`linear_bwd_weight`] with a chosen algorithm.
pub fn linear_bwd_weight_with(
    algo: Algo,
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    dw: &mut Tensor<f32>,
    db: Option<&mut Tensor<f32>>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let shape = linear_shape("linear_bwd_weight", x.shape(), dw.shape())?;
    bwd_weight(algo, shape, x, dy, dw, db, ws)
}

fn bwd_weight(
    algo: Algo,
    shape: Linear,
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    dw: &mut Tensor<f32>,
    db: Option<&mut Tensor<f32>>,
    mut ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let dev = x.device().clone();
    let Linear { m, k, n } = shape;
    x.check(&dev, "GEMM input x", m * k)?;
    dy.check(&dev, "GEMM output gradient dy", m * n)?;
    dw.check(&dev, "weight gradient dw", n * k)?;
    if let Some(db) = db.as_deref() {
        db.check(&dev, "bias gradient db", n)?;
    }
    if let Some(ws) = ws.as_deref() {
        ws.check(&dev, "GEMM workspace", ws.len())?;
    }
    let plan = shape.resolve(Pass::BwdWeight, algo, ws.is_some())?;
    let ops = Operands { dev, pass: Pass::BwdWeight, shape, a: dy, b: x };
    ops.run(plan, Out::F32(dw), ws.as_deref_mut())?;
    if let Some(db) = db {
        // The bias gradient's partials go after the split-K partials in the workspace, and
        // only where the plan budgeted for them (the tensor-core path with a workspace).
        let offset = match plan {
            Plan::Tiled { splits, .. } if splits > 1 => splits * n * k,
            _ => 0,
        };
        let ws = if matches!(plan, Plan::Tiled { .. }) { ws } else { None };
        bias_grad(dy, shape, db, ws, offset)?;
    }
    Ok(())
}

/// The pixels-by-channels view of an NHWC activation `x` (x or dx) and its channel count,
/// checking the filters `w` against it and that `out` (named `out_name`: y or dy) is
/// `[n, h, w, K]`.
fn conv1x1_shape(what: &str, x: &[usize], w: &[usize], out_name: &str, out: &[usize]) -> Result<Linear> {
    let (n, h, wd, c) = nhwc(x)?;
    let k = w.first().copied().unwrap_or(0);
    ensure_shape!(
        (w.len() == 2 || w == [k, 1, 1, c]) && w.iter().product::<usize>() == k * c && k > 0,
        "{what}: filters must be [K, {c}] or [K, 1, 1, {c}] for input {x:?}, got shape {w:?}"
    );
    ensure_shape!(out == [n, h, wd, k], "{what}: {out_name} must be [{n}, {h}, {wd}, {k}], got {out:?}");
    Ok(Linear::conv1x1(n, h, wd, c, k))
}

/// 1x1 convolution forward over NHWC: `y[p][k] = act(sum_c x[p][c] w[k][c] + bias[k])` for
/// every pixel p; x `[n, h, w, c]`, w `[k, c]` or `[k, 1, 1, c]`, y `[n, h, w, k]`.
/// `ws`: see [`Linear::workspace_bytes`] of [`Linear::conv1x1`].
pub fn conv1x1_fwd(
    x: &Tensor<f16>,
    w: &Tensor<f16>,
    bias: Option<&Tensor<f16>>,
    relu: bool,
    y: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let shape = conv1x1_shape("conv1x1_fwd", x.shape(), w.shape(), "output", y.shape())?;
    fwd(Algo::Auto, shape, x, w, bias, relu, y, ws)
}

/// 1x1 convolution data gradient: `dx[p][c] = sum_k dy[p][k] w[k][c]`; dy `[n, h, w, k]`,
/// w as [`conv1x1_fwd`], dx `[n, h, w, c]`.
pub fn conv1x1_dgrad(
    dy: &Tensor<f16>,
    w: &Tensor<f16>,
    dx: &mut Tensor<f16>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let shape = conv1x1_shape("conv1x1_dgrad", dx.shape(), w.shape(), "dy", dy.shape())?;
    bwd_data(Algo::Auto, shape, dy, w, dx, ws)
}

/// 1x1 convolution weight gradient: `dw[k][c] = sum_p dy[p][k] x[p][c]` (fp32, `[k, c]` or
/// `[k, 1, 1, c]`) and `db[k] = sum_p dy[p][k]` (fp32); x `[n, h, w, c]`, dy `[n, h, w, k]`.
pub fn conv1x1_wgrad(
    x: &Tensor<f16>,
    dy: &Tensor<f16>,
    dw: &mut Tensor<f32>,
    db: Option<&mut Tensor<f32>>,
    ws: Option<&mut Tensor<u8>>,
) -> Result<()> {
    let shape = conv1x1_shape("conv1x1_wgrad", x.shape(), dw.shape(), "dy", dy.shape())?;
    bwd_weight(Algo::Auto, shape, x, dy, dw, db, ws)
}
