//! The GEMM launches behind [`super::Linear`]'s plans: the tiled tensor-core kernels (mma.sync
//! and wgmma tiles, split-K reduced in the workspace), the simple twin, and the bias gradient's
//! column sums.

// The parent's plan types and helpers are this file's vocabulary (Plan too, which the parent imports).
use super::plan::smem_bytes;
use super::*;
use crate::device::{TensorMap, TensorMap2dSpec};

/// Threads of the element-wise launches (split-K reduce, bias gradient).
const THREADS: u32 = 256;

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
        (Pass::Fwd, WT128x256) => return k("gemm_wgmma", "gemm_fwd_f16_wt128x256"),
        (Pass::BwdData, WT128x256) => return k("gemm_wgmma", "gemm_bwd_data_f16_wt128x256"),
        (Pass::BwdWeight, WT128x256) => return k("gemm_wgmma", "gemm_bwd_weight_f16_wt128x256"),
    };
    k("gemm", name)
}

/// The views of one pass's product that the kernels take.
pub(super) struct Operands<'a> {
    pub(super) dev: Device,
    pub(super) pass: Pass,
    pub(super) shape: Linear,
    pub(super) a: &'a Tensor<f16>,
    pub(super) b: &'a Tensor<f16>,
}

/// Where a tiled product's result goes.
pub(super) enum Out<'a> {
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
    pub(super) fn run(&self, plan: Plan, out: Out<'_>, ws: Option<&mut Tensor<u8>>) -> Result<()> {
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
        let wgmma = matches!(tile, Tile::W128x256 | Tile::WT128x256);
        ensure_shape!(
            !wgmma || self.dev.has_wgmma(),
            "GEMM tile {tile:?} needs wgmma (compute capability 9.0: H100 / H200); {} has none",
            self.dev.name()
        );
        // The grid's y and z limits (65535) in the GEMM's own terms; x (rows) is held to
        // CUDA's limit at the launch (LaunchConfig::check).
        let grid_y = s.div_ceil(tile.cols());
        ensure_shape!(grid_y <= 65535, "GEMM output has {s} columns, more than the grid allows");
        ensure_shape!(splits <= 65535, "GEMM split count {splits} is above the grid's 65535");
        let cfg = LaunchConfig {
            grid: LaunchConfig::grid_of("GEMM", r.div_ceil(tile.rows()), grid_y, splits)?,
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
        // The TMA tile takes its operands as tensor maps, the others as pointers. A K-major
        // operand ([rows][T]: fwd's X and W, bwd_data's dY) goes in boxes of 64 t x the tile's
        // rows (128 for A, 256 for B), an M/N-major one ([T][rows]: bwd_data's W, bwd_weight's dY
        // and X) in boxes of 64 rows x 64 t (kernels/gemm_wgmma.cu's gemm_tma).
        let (a_arg, b_arg) = if tile == Tile::WT128x256 {
            let (a_t, b_t) = self.pass.t_major();
            let map = |m: &Tensor<f16>, rows: usize, t_major: bool, box_rows: usize| {
                let (inner, outer, box_outer) = if t_major { (rows, t, 64) } else { (t, rows, box_rows) };
                let spec =
                    TensorMap2dSpec { inner, outer, row_stride: 2 * inner, box_inner: 64, box_outer, swizzle128: true };
                TensorMap::new_2d(&self.dev, m.device_ptr(), spec).map(|map| map.arg())
            };
            (map(self.a, r, a_t, 128)?, map(self.b, s, b_t, 256)?)
        } else {
            (self.a.arg(), self.b.arg())
        };
        let launch = |bias: KArg, relu: bool, out16: KArg, out32: KArg| {
            let args = [a_arg, b_arg, dims[0], dims[1], dims[2], dims[3], bias, KArg::I32(relu as i32), out16, out32];
            // SAFETY: (const __half* A, const __half* B, int R, int S, int T, int kt_per_split,
            // const __half* bias, int relu, __half* out16, float* out32), or for WT128x256 A and
            // B as tensor maps (TmaDesc by value) of those matrices. A and B hold the pass's R*T
            // and T*S elements (checked by the callers), bias S or null, out16 R*S or null; out32
            // null, or gridDim.z * R*S floats (the output itself when z = 1, else the workspace,
            // checked below).
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

/// Workspace bytes [`bias_grad`] needs with a workspace whose first `offset` floats are the
/// split-K partials: 0 when the column sums take one chunk (no partials).
pub(super) fn bias_grad_ws_bytes(shape: Linear, offset: usize) -> usize {
    let (_, chunks) = shape.colsum_plan(shape.n.is_multiple_of(8));
    if chunks == 1 || shape.n == 0 {
        0
    } else {
        4 * (offset + chunks * shape.n)
    }
}

/// `db[c] = sum_m dy[m][c]` in a fixed order: one pass of column sums when `chunks == 1`,
/// else per-chunk partials into `ws[offset..]`, added in chunk order.
pub(super) fn bias_grad(
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
    let cfg = |chunks: usize| -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid: LaunchConfig::grid_of("column sums", n.div_ceil(32), chunks, 1)?,
            block: (32, 8, 1),
            shared_bytes: 0,
        })
    };
    let dims = [KArg::I32(int("rows", m)?), KArg::I32(int("columns", n)?), KArg::I32(int("rows per chunk", rows)?)];
    if chunks == 1 {
        // SAFETY: (const __half* x, int rows, int cols, int rows_per_chunk, float* out): dy
        // holds m*n halves, db n floats (one chunk).
        return unsafe { dev.launch(&COLSUM, cfg(1)?, &[dy.arg(), dims[0], dims[1], dims[2], db.arg_mut()]) };
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
    unsafe { dev.launch(&COLSUM, cfg(chunks)?, &[dy.arg(), dims[0], dims[1], dims[2], part])? };
    let args = [part, KArg::I32(chunks as i32), KArg::I64(n as i64), db.arg_mut()];
    // SAFETY: (const float* ws, int splits, long long count, float* out32): chunks*n partials
    // at ws + offset (16-byte aligned: offset % 4 == 0), db n floats, n % 4 == 0.
    unsafe { dev.launch(&REDUCE_F32, elements_cfg(n / 4)?, &args) }
}
