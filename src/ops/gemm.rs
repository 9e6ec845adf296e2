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
mod plan;
use launch::{bias_grad, bias_grad_ws_bytes, Operands, Out};
use plan::Plan;

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
    /// [`Tile::W128x256`] with its operands brought by the TMA engine in the 128-byte swizzle
    /// (kernels/gemm_wgmma.cu, `gemm_{fwd,bwd_data,bwd_weight}_f16_wt128x256`; the backward
    /// passes' M/N-major boxes in a layout only the GPU can confirm: the selftest's `mn-major
    /// sw128` rows). Where [`Device::has_wgmma`]; never planned, only when asked for (unmeasured).
    WT128x256,
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
