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
//! Not in place: an output element reads a whole row and column of the inputs, so no output
//! (nor the workspace) may overlap an input or another output.
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
use crate::tensor::{check_disjoint, Span};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;

mod launch;
use launch::{bias_grad, bias_grad_ws_bytes, smem_bytes, Operands, Out};

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

    /// Every tile by name, as `parse` reads them.
    const NAMES: [(&'static str, Tile); 5] = [
        ("t128x256", Tile::T128x256),
        ("t128x192", Tile::T128x192),
        ("t128x128", Tile::T128x128),
        ("t64x128", Tile::T64x128),
        ("w128x256", Tile::W128x256),
    ];

    /// A tile by name (`t128x256`, `t128x192`, `t128x128`, `t64x128`, `w128x256`, any case), or
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
    TensorCore {
        /// The block tile.
        tile: Tile,
        /// Parts the pass's reduction is asked to be split into: at least 1 (0 is an
        /// `Error::Shape` at the launch). The k-tiles (64 deep) are dealt out evenly, so the
        /// count run is the fewest parts of that size: at most the k-tiles, and no part empty
        /// (6 asked over 10 k-tiles runs 5 parts of 2).
        splits: usize,
    },
    /// One thread per output, fp32 accumulation in index order: the simple twin.
    Simple,
}

/// Shape of a linear layer: `M` rows (batch, or pixels of a 1x1 convolution), `K` inputs,
/// `N` outputs. `X` is `[M][K]`, `W` `[N][K]`, `Y` `[M][N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Linear {
    /// Rows: the batch, or the pixels `n*h*w` of a 1x1 convolution.
    pub m: usize,
    /// Inputs: input features, or input channels of a 1x1 convolution.
    pub k: usize,
    /// Outputs: output features, or output channels of a 1x1 convolution.
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
        // Saturating and f64 products: a caller's Linear may be any size (conv1x1 saturates).
        let blocks =
            r.div_ceil(tile.rows()).max(1).saturating_mul(s.div_ceil(tile.cols()).max(1)).saturating_mul(splits);
        let waves = blocks.div_ceil(SMS * tile.per_sm()) as f64;
        let block_flops = (2 * tile.rows() * tile.cols() * per_split * BK) as f64;
        let compute = waves * (block_flops * tile.per_sm() as f64 / (SM_FLOPS * tile.speed()) + FILL_S);
        let out = if pass == Pass::BwdWeight { 4.0 } else { 2.0 };
        let (r, s, t) = (r as f64, s as f64, t as f64);
        let (inputs, outputs) = (2.0 * (r * t + t * s), r * s);
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
                let partials = if splits > 1 { splits.saturating_mul(r).saturating_mul(s) } else { 0 };
                let db = if pass == Pass::BwdWeight { self.colsum_plan(true).1 } else { 0 };
                partials.saturating_add(if db > 1 { db.saturating_mul(self.n) } else { 0 }).saturating_mul(4)
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
    fn resolve(&self, pass: Pass, algo: Algo, have_ws: bool, max_shared: usize) -> Result<Plan> {
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

/// `(M, K, N)` of a linear layer from X `[M, ...]` (trailing dimensions flattened, as
/// PyTorch's `flatten(1)`) and W `[N, K]`.
fn linear_shape(what: &str, x: &[usize], w: &[usize]) -> Result<Linear> {
    let [n, k] = *w else {
        return Err(Error::Shape(format!("{what}: weights must be [N, K] ([out][in]), got shape {w:?}")));
    };
    let m = x.first().copied().unwrap_or(0);
    flattens(what, "input", x, m, k, n)?;
    Ok(Linear { m, k, n })
}

/// Errors unless `shape` (the input x or its gradient dx, named `name`) is `[m, ...]` with the
/// trailing dimensions flattening to `k`, for weights `[n, k]`.
fn flattens(what: &str, name: &str, shape: &[usize], m: usize, k: usize, n: usize) -> Result<()> {
    let inner = shape.iter().skip(1).try_fold(1usize, |a, &d| a.checked_mul(d));
    ensure_shape!(
        shape.len() >= 2 && shape[0] == m && inner == Some(k),
        "{what}: {name} shape {shape:?} does not flatten to [M, {k}] = [{m}, {k}] for weights [{n}, {k}]"
    );
    Ok(())
}

/// `y = act(x W^T + bias)`: x `[M, K]` (or `[M, ...]` flattening to K), w `[N, K]`, bias `[N]`,
/// y `[M, N]`; `act` is ReLU when `relu`. `ws`: see [`Linear::workspace_bytes`].
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
    y.check_shape(x.device(), "linear_fwd output y ([M, N])", &[shape.m, shape.n])?;
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
        b.check_shape(&dev, "bias", &[n])?;
    }
    if let Some(ws) = ws.as_deref() {
        ws.check(&dev, "GEMM workspace", ws.len())?;
    }
    let writes = [y.span("y"), Span::of(ws.as_deref(), "workspace")];
    check_disjoint("GEMM fwd", &writes, &[x.span("x"), w.span("w"), Span::of(bias, "bias")])?;
    let plan = shape.resolve(Pass::Fwd, algo, ws.is_some(), dev.max_shared_per_block())?;
    Operands { dev, pass: Pass::Fwd, shape, a: x, b: w }.run(plan, Out::F16 { y, bias, relu }, ws)
}

/// `dx = dy W`: dy `[M, N]`, w `[N, K]`, dx `[M, K]` or `[M, ...]` flattening to K (the
/// forward input's shape). `ws`: see [`Linear::workspace_bytes`].
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
    flattens("linear_bwd_data", "dx", dx.shape(), d[0], k, n)?;
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
    let writes = [dx.span("dx"), Span::of(ws.as_deref(), "workspace")];
    check_disjoint("GEMM bwd_data", &writes, &[dy.span("dy"), w.span("w")])?;
    let plan = shape.resolve(Pass::BwdData, algo, ws.is_some(), dev.max_shared_per_block())?;
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
    dy.check_shape(x.device(), "linear_bwd_weight dy ([M, N])", &[shape.m, shape.n])?;
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
        db.check_shape(&dev, "bias gradient db", &[n])?;
    }
    if let Some(ws) = ws.as_deref() {
        ws.check(&dev, "GEMM workspace", ws.len())?;
    }
    let writes = [dw.span("dw"), Span::of(db.as_deref(), "db"), Span::of(ws.as_deref(), "workspace")];
    check_disjoint("GEMM bwd_weight", &writes, &[x.span("x"), dy.span("dy")])?;
    let plan = shape.resolve(Pass::BwdWeight, algo, ws.is_some(), dev.max_shared_per_block())?;
    // The bias gradient's partials go after the split-K partials in the workspace, and only
    // where the plan budgeted for them (the tensor-core path with a workspace).
    let offset = match plan {
        Plan::Tiled { splits, .. } if splits > 1 => splits * n * k,
        _ => 0,
    };
    let tiled = matches!(plan, Plan::Tiled { .. });
    if let (Some(_), Some(w), true) = (db.as_deref(), ws.as_deref(), tiled) {
        // Checked before dw is written: an error leaves the outputs as they were.
        let need = bias_grad_ws_bytes(shape, offset);
        ensure_shape!(w.len() >= need, "GEMM workspace has {} bytes, the bias gradient needs {need}", w.len());
    }
    let ops = Operands { dev, pass: Pass::BwdWeight, shape, a: dy, b: x };
    ops.run(plan, Out::F32(dw), ws.as_deref_mut())?;
    if let Some(db) = db {
        bias_grad(dy, shape, db, if tiled { ws } else { None }, offset)?;
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
