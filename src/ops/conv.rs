//! 3x3 convolutions (stride 1, pad 1), NHWC fp16 activations, KRSC fp16 filters: forward
//! (fused bias + ReLU), backward-data (fused ReLU-backward mask) and backward-filter (fp32).
//!
//! Kernels: `kernels/conv_direct.cu` (the simple twin, any C and K, fp32 accumulation),
//! `kernels/winograd_filter.cu` + `kernels/winograd_conv.cu` (Winograd F(2x2, 3x3) on tensor
//! cores for fprop and dgrad), `kernels/winograd4_conv.cu` (its F(4x4, 3x3) twin, same
//! structure, 36 transform points), `kernels/conv_wgrad.cu` (implicit-GEMM wgrad on tensor cores
//! and the fixed-order reduction of split-pixel partial sums, used by every wgrad path),
//! `kernels/conv_first.cu` and `kernels/conv_first_dgrad.cu` (implicit-GEMM fprop and dgrad on
//! tensor cores for C <= 8, the first layer),
//! `kernels/conv_wgmma*.cu` and `kernels/conv_wgrad_wgmma*.cu` (all three passes as implicit
//! GEMMs on Hopper's wgmma, [`ConvAlgo::Wgmma`]), and `kernels/conv_pad.cu` (zero-padding C up
//! to a multiple of 8 in the workspace, so that a C such as the first layer's 3 runs the
//! tensor-core wgrad and Winograd fprop). See the header comment of each file for its tiling.

mod launch;
mod wgmma;

use super::{int, ELEMENTWISE_THREADS};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::problem::ConvProblem;
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;
use serde::{Deserialize, Serialize};

const fn kern(module: &'static str, name: &'static str) -> Kernel {
    Kernel { module, name }
}
const DIRECT_FPROP: Kernel = kern("conv_direct", "direct3x3_fprop_f16");
const DIRECT_DGRAD: Kernel = kern("conv_direct", "direct3x3_dgrad_f16");
const DIRECT_WGRAD: Kernel = kern("conv_direct", "direct3x3_wgrad_f32");
const IGEMM_FPROP_C8: Kernel = kern("conv_first", "igemm3x3_fprop_c8_f16");
const IGEMM_DGRAD_C8: Kernel = kern("conv_first_dgrad", "igemm3x3_dgrad_c8_f16");
const WINO_FILTER: Kernel = kern("winograd_filter", "wino2x2_filter_f16");
const WINO_FPROP: Kernel = kern("winograd_conv", "wino2x2_fprop_f16");
const WINO_DGRAD: Kernel = kern("winograd_conv", "wino2x2_dgrad_f16");
const WINO4_FILTER: Kernel = kern("winograd_filter", "wino4x4_filter_f16");
const WINO4_FPROP: Kernel = kern("winograd4_conv", "wino4x4_fprop_f16");
const WINO4_DGRAD: Kernel = kern("winograd4_conv", "wino4x4_dgrad_f16");
const IGEMM_WGRAD_M128: Kernel = kern("conv_wgrad", "igemm3x3_wgrad_m128_f16");
const IGEMM_WGRAD_M128N256: Kernel = kern("conv_wgrad", "igemm3x3_wgrad_m128n256_f16");
const IGEMM_WGRAD_M64: Kernel = kern("conv_wgrad", "igemm3x3_wgrad_m64_f16");
const IGEMM_WGRAD_M64N128: Kernel = kern("conv_wgrad", "igemm3x3_wgrad_m64n128_f16");
const WGRAD_REDUCE: Kernel = kern("conv_wgrad", "wgrad_reduce_f32");
/// wgmma wgrad: 128 k x 256 columns a block, 64 pixels a stage, a 4-buffer ring of 48 KB
/// (kernels/conv_wgrad_wgmma.cu).
const IGEMM_WGRAD_WGMMA: Kernel = kern("conv_wgrad_wgmma", "igemm3x3_wgrad_wgmma_f16");
const WGRAD_WGMMA_SMEM: u32 = 4 * 64 * (128 + 256) * 2;
/// The wgmma wgrad over the padded positions (kernels/conv_wgrad_wgmma_halo.cu): 128 k x (3 taps
/// of one filter row x Cb c) a block, Cb = 64 for C <= 64, else 128; a ring of 4 x (dY 128 k x
/// 64 positions + X Cb c x 80).
const WGRAD_WGMMA_HALO_C64: Kernel = kern("conv_wgrad_wgmma_halo", "igemm3x3_wgrad_wgmma_halo_c64_f16");
const WGRAD_WGMMA_HALO_C128: Kernel = kern("conv_wgrad_wgmma_halo", "igemm3x3_wgrad_wgmma_halo_c128_f16");
const fn wgrad_wgmma_halo_smem(cb: usize) -> u32 {
    (4 * (128 * 64 + cb * 80) * 2) as u32
}
/// Its TMA-fed twin with a producer warpgroup (kernels/conv_wgrad_wgmma_tma.cu, under
/// [`WinoTiling::TmaWs`]): the same block tile, 384 threads, stages of 64 positions in 1024-byte
/// boxes (dY 2 x 8, X Cb / 64 x 10), as many as fit an sm_90 block beside 1024 bytes of alignment
/// slack and 128 of barriers (6 at Cb 128, 8 at 64). For K <= 64 its `k64` kernels: both consumer
/// warpgroups on k 0..63, each over half of a 128-position stage (X Cb / 64 x 18 boxes; 4 and 6
/// buffers), and each writing a part of its own: 2 parts a chunk.
const WGRAD_WGMMA_TMA_C64: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_ws_c64_f16");
const WGRAD_WGMMA_TMA_C128: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_ws_c128_f16");
const WGRAD_WGMMA_TMA_C64_K64: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_ws_c64_k64_f16");
const WGRAD_WGMMA_TMA_C128_K64: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_ws_c128_k64_f16");
/// The 2-D TMA wgrad for K <= 64 (kernels/conv_wgrad_wgmma_tma2d.cu, under [`WinoTiling::Tma2d`]):
/// a block is 64 k x 9 taps x 64 channels (3 consumer warpgroups, one a filter row, 384 threads),
/// a stage a tile of 8 image rows x 16 columns; its chunks are tiles; 4 stage buffers of dY (64 x
/// 16 x 8) and X (64 x 24 x 10) boxes beside 1024 bytes of alignment slack.
const WGRAD_WGMMA_2D: Kernel = kern("conv_wgrad_wgmma_tma2d", "igemm3x3_wgrad_wgmma_2d_tma_k64_f16");
const WGRAD_2D_ROWS: usize = 8;
const WGRAD_2D_COLS: usize = 16;
const WGRAD_2D_DY_BOX: [usize; 4] = [64, WGRAD_2D_COLS, WGRAD_2D_ROWS, 1];
const WGRAD_2D_X_BOX: [usize; 4] = [64, WGRAD_2D_COLS + 8, WGRAD_2D_ROWS + 2, 1];
const WGRAD_2D_SMEM: u32 =
    (1024 + 4 * (WGRAD_2D_ROWS * WGRAD_2D_COLS + WGRAD_2D_X_BOX[1] * WGRAD_2D_X_BOX[2]) * 128) as u32;
/// The same tile in clusters of 2 (k blocks 2 y, 2 y + 1) sharing each stage's X boxes by multicast
/// (under [`WinoTiling::TmaMc`], K > 128); its barriers in dynamic shared memory after the ring.
const WGRAD_WGMMA_TMA_MC_C64: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_mc_c64_f16");
const WGRAD_WGMMA_TMA_MC_C128: Kernel = kern("conv_wgrad_wgmma_tma", "igemm3x3_wgrad_wgmma_halo_tma_mc_c128_f16");
/// Its threads (2 consumer warpgroups, a producer warpgroup) and positions a stage (its chunks are
/// whole stages).
const WGRAD_TMA_THREADS: u32 = 384;
const WGRAD_TMA_STAGE: usize = 64;
const fn wgrad_wgmma_tma_smem(cb: usize, k64: bool, mc: bool) -> u32 {
    let buf = (2 * 8 + cb / 64 * if k64 { 18 } else { 10 }) * 1024;
    let bufs = (crate::device::SM90_SHARED_PER_BLOCK - 1024 - 128) / buf;
    // Clusters: a full and an empty mbarrier a buffer, 8 bytes each.
    (1024 + bufs * buf + if mc { 2 * bufs * 8 } else { 0 }) as u32
}
const PAD_CHANNELS: Kernel = kern("conv_pad", "pad_channels_f16");

/// Winograd main loop: 64 output tiles x 32 channels a block, 256 threads; shared memory for
/// the larger of the epilogue's 16 x 64 x 40 fp32 M and the region pipeline (4 raw windows of
/// up to 520 pixels x 24 halves, 16 channels and 8 of padding, and 2 V buffers of 16 x 64 x 16
/// halves); flat's 4 buffers of patches / V fit in either. U goes to registers
/// (kernels/winograd_conv.cu).
const WINO_TILES: usize = 64;
const WINO_OUT: usize = 32;
const WINO_THREADS: u32 = 256;
const WINO_SMEM: u32 = {
    let (m, region) = (16 * 64 * 40 * 4, (4 * 520 * 24 + 2 * 16 * 64 * 16) * 2);
    if m > region {
        m
    } else {
        region
    }
};
/// Winograd F(4x4) main loop: 32 output tiles of 4x4 x 32 channels a block, 384 threads, 3
/// buffers of 36 x 32 x 16 halves each for patches / V and for U (kernels/winograd4_conv.cu).
const WINO4_TILES: usize = 32;
const WINO4_OUT: usize = 32;
const WINO4_THREADS: u32 = 384;
const WINO4_SMEM: u32 = 3 * 2 * 36 * 32 * 16 * 2;
/// Region tiling is chosen when at most this share of a block's 64 tile slots falls outside
/// the image (averaged over the image).
const WINO_REGION_MAX_IDLE: f64 = 0.125;
/// First-layer implicit GEMMs: a block owns 8 rows x 32 columns of one image's outputs, 256
/// threads. fprop: x 64 output channels, the 10 x 34 x halo as 16-byte rows (and a zero row) and
/// the filters' 64 rows of 88 halves, reused for the 256 x 72-half output tile
/// (kernels/conv_first.cu); dgrad: a chunk of 64 k of the 10 x 34 dy halo and the 9 x 8 rotated
/// filter rows, 72 halves a row (kernels/conv_first_dgrad.cu).
const IGEMM_C8_ROWS: usize = 8;
const IGEMM_C8_COLS: usize = 32;
const IGEMM_FPROP_OUT: usize = 64;
const IGEMM_FPROP_SMEM: u32 = (IGEMM_C8_ROWS * IGEMM_C8_COLS * 72 * 2) as u32;
const IGEMM_DGRAD_SMEM: u32 = (((IGEMM_C8_ROWS + 2) * (IGEMM_C8_COLS + 2) + 9 * 8) * 72 * 2) as u32;
/// Implicit-GEMM wgrad: 128 k x 128 flattened (r, s, c) columns a block, or 64 x 256 when
/// K <= 64; 32 pixels a stage, a 4-stage ring of (32 x (M + 8) + 32 x (N + 8)) halves, 256
/// threads (kernels/conv_wgrad.cu).
const WG_P: usize = 32;
const WG_THREADS: u32 = 256;
/// Blocks the tensor-core wgrad aims for (4 per SM of an H200's 132, two resident at a time),
/// reached by splitting the pixel reduction into chunks; each chunk has at least `WG_MIN_CHUNK`
/// pixels.
const WG_TARGET_BLOCKS: usize = 4 * 132;
const WG_MIN_CHUNK: usize = 256;
/// The wgmma wgrads' smallest chunk: 16 of their 64-pixel stages, so the ring's prologue and
/// drain stay a small share of a block, and small problems (the tests') wrap the 4-buffer ring.
const WG_MIN_CHUNK_WGMMA: usize = 1024;
/// Alignment of the regions a padded problem keeps in the workspace (cp.async needs 16 B).
const WS_ALIGN: usize = 256;
/// Direct wgrad: pixels a thread sums, roughly, and the most chunks.
const DIRECT_WG_CHUNK: usize = 2048;
const DIRECT_WG_MAX_SPLITS: usize = 256;

/// What the forward pass does after the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `y = conv(x, w)`; no bias may be given.
    None,
    /// `y = conv(x, w) + b`.
    Bias,
    /// `y = max(conv(x, w) + b, 0)`.
    BiasRelu,
}

/// Convolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvAlgo {
    /// Winograd2x2 when C and K are multiples of 8 (its wgrad: ImplicitGemm). K a multiple of 8
    /// and C < 8 (the first layer, C = 3): ImplicitGemm for all three passes, wgrad on C
    /// zero-padded to 8 in the workspace, fprop and dgrad padding it as they read (Winograd's
    /// fp16 transforms of raw image values would cost the first layer accuracy that the implicit
    /// GEMM keeps). Other C not a multiple of 8: wgrad ImplicitGemm (padded), fprop and dgrad
    /// Direct. Direct when K is not a multiple of 8 but
    /// C < 8, else an `Error::Shape`.
    Auto,
    /// One thread per output, fp32 accumulation: any C, K >= 1.
    Direct,
    /// Winograd F(2x2, 3x3) on tensor cores for fprop and dgrad; wgrad, which has no Winograd
    /// form here, resolves to ImplicitGemm. K a multiple of 8; a C that is not is padded with
    /// zero channels up to one (fprop, wgrad; its dgrad runs Direct).
    Winograd2x2,
    /// Implicit GEMM on tensor cores (fp32 accumulation of exact fp16 products): wgrad for any
    /// C (padded to a multiple of 8), fprop and dgrad for C <= 8 (padded to 8). K a multiple of
    /// 8; C > 8 is an `Error::Shape` (Auto picks per pass).
    ImplicitGemm,
    /// Winograd F(4x4, 3x3) on tensor cores for fprop and dgrad (2.25 products an output
    /// instead of F(2x2)'s 4, a costlier input transform, and about 4x F(2x2)'s fp16 error:
    /// ~2e-3 relative L2, inside the 3e-3 bound); wgrad resolves to ImplicitGemm. Shapes as for
    /// Winograd2x2. Flat tiling only (`WinoTiling` is ignored). Less fp16 headroom: |V| reaches
    /// 49 max|input| (F(2x2): 4), so a dgrad overflows at a ~12x smaller loss scale (dynamic loss
    /// scaling finds the lower scale; the overflow shows as Inf and skips the step). Auto does
    /// not pick it: which variant is faster per layer is measured, by `vgg bench conv --algo`
    /// or at run time by [`crate::ops::conv_tune::tune`].
    Winograd4x4,
    /// Implicit GEMM on Hopper's warpgroup MMA for all three passes (kernels/conv_wgmma.cu:
    /// fprop, dgrad; kernels/conv_wgrad_wgmma.cu: wgrad, into the same per-chunk partial sums
    /// as ImplicitGemm's), exact fp16 products, fp32 accumulation; fprop and dgrad copy each
    /// input position once for all 9 taps (kernels/conv_wgmma_halo.cu) unless the plan's
    /// [`WinoTiling`] is Flat or the image is too wide, and wgrad once for the 3 taps of a filter
    /// row (kernels/conv_wgrad_wgmma_halo.cu) unless the tiling is Flat. C and K multiples of 8, N H W max(C, K)
    /// below 2^31. Runs where [`Device::has_wgmma`] (the emu
    /// device and compute capability 9.0); elsewhere a launch is an `Error::Shape`. On the H200
    /// its halo tiles are our fastest fprop and dgrad on every layer but conv1_1, yet Auto does
    /// not pick it while the question of VGG-16's training on it is open (bench/NOTES.md).
    Wgmma,
}

impl ConvAlgo {
    /// Winograd2x2 or Winograd4x4: the variants a tuner may swap in a pass.
    pub fn is_winograd(self) -> bool {
        matches!(self, ConvAlgo::Winograd2x2 | ConvAlgo::Winograd4x4)
    }
}

/// How the Winograd F(2x2) main loop groups its 64 output tiles a block, and which kernels
/// [`ConvAlgo::Wgmma`] runs: Flat, 128 consecutive pixels a block (each copied once a tap);
/// Auto or Region, the padded positions with a halo copied once for all 9 taps (fprop and dgrad,
/// where it fits: widths up to 193, or 253 for at most 64 output channels, else flat) or for the
/// 3 taps of a filter row (wgrad); Tall, Swizzled, Tma, TmaTall, TmaWs, TmaMc and Tma2d, other halo
/// tiles for wgmma's fprop and dgrad (the wgrad's is Region's, but for TmaWs's own and TmaMc's
/// where K > 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WinoTiling {
    /// Region when at most 1/8 of the tile slots would be idle, else Flat.
    #[default]
    Auto,
    /// 64 consecutive tiles over (n, tile row, tile col): no idle slots, but each input pixel
    /// is copied from L2 about 4 times (once per overlapping 4x4 patch).
    Flat,
    /// A window of rh x rw tiles (rh * rw = 64) of one image, its (2 rh + 2) x (2 rw + 2) input
    /// pixels copied once: about 3x less input traffic, but windows that cross the image's edge
    /// leave tile slots idle. rw is the power of two with the fewest idle slots. Images of
    /// 2^31 or more halves (H W max(Cp, K), Cp the channels fprop reads) run Flat whatever is
    /// asked.
    Region,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: the halo tile of 512 positions x 64 channels
    /// where it fits (widths up to 125), half the filter bytes a flop of the 256 x 128 one (for
    /// more halo bytes); elsewhere as [`WinoTiling::Auto`].
    Tall,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: the 256 x N halo tile with its operands in the
    /// 128-byte swizzle (kernels/wgmma.cuh) instead of unswizzled core matrices; elsewhere as
    /// [`WinoTiling::Auto`].
    Swizzled,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: the 256 x N halo tile with both operands
    /// brought by the TMA engine in the 128-byte swizzle (kernels/conv_wgmma_tma.cu) where it
    /// fits (widths up to 182 at N 128, 246 at N 64); elsewhere as [`WinoTiling::Auto`].
    Tma,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: [`WinoTiling::Tall`]'s 512 x 64 items fed by the
    /// TMA engine as [`WinoTiling::Tma`]'s (widths up to 118), elsewhere as [`WinoTiling::Tma`].
    TmaTall,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: [`WinoTiling::Tma`]'s tile with a producer warp
    /// and per-buffer barriers instead of a block-wide barrier a stage (warp specialisation); for
    /// its wgrad: the halo wgrad's tile so fed, by a producer warpgroup (any width, below 2^31
    /// positions at the TMA tiles' pitch; else Region's).
    TmaWs,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: [`WinoTiling::TmaWs`]'s tile in thread-block
    /// clusters of 2 that load each filter box once for both blocks (TMA multicast), at TmaWs's
    /// edges, on devices with clusters (compute capability 9.0, as for any wgmma kernel);
    /// elsewhere as [`WinoTiling::Auto`]. Its wgrad, where K > 128: [`WinoTiling::TmaWs`]'s in
    /// clusters of 2 blocks (k blocks 2 y and 2 y + 1) that load each X box once for both; with
    /// one k block (K <= 128) Region's (the cp.async halo wgrad), as under [`WinoTiling::Tma`].
    TmaMc,
    /// For [`ConvAlgo::Wgmma`]'s fprop and dgrad: items of 16 image rows x 32 columns x 64
    /// channels fed by the TMA engine (kernels/conv_wgmma_tma2d.cu), whose halo is 18 x 40
    /// positions whatever the width (the 1-D items' grows with it), at the price of rows and
    /// columns past the image's edge; any shape. Its wgrad, where K <= 64: all 9 taps a block
    /// over 8 x 16 position tiles brought by the TMA engine (kernels/conv_wgrad_wgmma_tma2d.cu);
    /// for larger K Region's.
    Tma2d,
}

/// One of the three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// Forward: y from x and w ([`Conv3x3::fprop`]).
    Fprop,
    /// Data gradient: dx from dy and w ([`Conv3x3::dgrad`]).
    Dgrad,
    /// Weight gradient: dw (and db) from x and dy ([`Conv3x3::wgrad`]).
    Wgrad,
}

/// A planned 3x3 convolution (stride 1, pad 1) of one [`ConvProblem`]: input `N x H x W x C`
/// (NHWC), filters `K x 3 x 3 x C` (KRSC), output `N x H x W x K`, all fp16; dw and db fp32.
///
/// Every pass takes a byte workspace of at least [`Conv3x3::workspace_bytes`] for that pass.
/// With C not a multiple of 8 the tensor-core wgrad (and a Winograd fprop) pad x (and w) there,
/// to `Cp` channels; the first-layer implicit GEMMs (fprop, dgrad) pad as they read.
/// Results are deterministic: no atomics; the same shape always splits its reductions the same
/// way.
///
/// ```
/// use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
/// use vgg_cuda::{problem::ConvProblem, Device, Tensor};
/// let dev = Device::emu();
/// let p = ConvProblem::new(1, 4, 4, 8, 8);
/// let conv = Conv3x3::new(p, ConvAlgo::Auto)?;
/// assert_eq!(conv.algo(ConvPass::Fprop), ConvAlgo::Winograd2x2);
/// // x = 1 everywhere; the filter of output channel k is k at the centre tap of input channel 0.
/// let x = Tensor::from_f32(&dev, &[1, 4, 4, 8], &vec![1.0; p.input_len()])?;
/// let mut wv = vec![0.0; p.filter_len()];
/// for k in 0..8 {
///     wv[((k * 3 + 1) * 3 + 1) * 8] = k as f32;
/// }
/// let w = Tensor::from_f32(&dev, &[8, 3, 3, 8], &wv)?;
/// let b = Tensor::from_f32(&dev, &[8], &[-2.0; 8])?;
/// let mut y = Tensor::empty(&dev, &[1, 4, 4, 8])?;
/// let mut ws = Tensor::<u8>::empty(&dev, &[conv.workspace_bytes(ConvPass::Fprop)])?;
/// conv.fprop(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, &mut ws)?;
/// assert_eq!(&y.to_f32()?[..8], &[0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
/// # Ok::<(), vgg_cuda::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Conv3x3 {
    problem: ConvProblem,
    /// Resolved per pass (fprop, dgrad, wgrad): Direct, Winograd2x2 or Winograd4x4 (fprop,
    /// dgrad), ImplicitGemm (fprop and dgrad with C <= 8, wgrad) or Wgmma.
    algos: [ConvAlgo; 3],
    /// Channels the tensor-core paths see: C rounded up to a multiple of 8 (C for Direct).
    cp: usize,
    tiling: WinoTiling,
}

impl Conv3x3 {
    /// Validates `problem` for `algo` (every dimension >= 1, indices within the kernels' 32-bit
    /// ranges, K a multiple of 8 for the tensor-core paths) and resolves `Auto`.
    pub fn new(problem: ConvProblem, algo: ConvAlgo) -> Result<Self> {
        let p = problem;
        ensure_shape!(p.n > 0 && p.h > 0 && p.w > 0 && p.c > 0 && p.k > 0, "conv3x3 {p}: every dimension must be >= 1");
        let pixels = p.n.checked_mul(p.h).and_then(|v| v.checked_mul(p.w)).unwrap_or(usize::MAX);
        ensure_shape!(
            pixels <= i32::MAX as usize / 2,
            "conv3x3 {p}: N*H*W = {pixels} exceeds the kernels' 32-bit pixel index"
        );
        let cp = p.c.checked_next_multiple_of(8).unwrap_or(usize::MAX);
        int("conv3x3 K*9*Cp", p.k.saturating_mul(9).saturating_mul(cp))?;
        // The F(4x4) main loop steps through a patch's rows and the filters' transform points
        // with 32-bit strides (6 W C and 6 K C); any plan may switch to it (with_pass_algo).
        int("conv3x3 6*W*max(Cp, K)", p.w.saturating_mul(6).saturating_mul(cp.max(p.k)))?;
        int("conv3x3 36*K*Cp", p.k.saturating_mul(36).saturating_mul(cp))?;
        let (d, w, g, w4) = (ConvAlgo::Direct, ConvAlgo::Winograd2x2, ConvAlgo::ImplicitGemm, ConvAlgo::Winograd4x4);
        let k_err = || {
            Error::Shape(format!(
                "conv3x3 {p}: {algo:?} needs K a multiple of 8 (K = {}, C = {}); Direct takes any shape",
                p.k, p.c
            ))
        };
        let padded = cp != p.c;
        if algo == ConvAlgo::Wgmma {
            ensure_shape!(!padded, "conv3x3 {p}: Wgmma needs C a multiple of 8 (C = {})", p.c);
            ensure_shape!(wgmma_fits(&p), "conv3x3 {p}: Wgmma needs N*H*W*max(C, K) below 2^31");
        }
        let algos = match algo {
            ConvAlgo::Direct => [d; 3],
            ConvAlgo::Auto if !p.k.is_multiple_of(8) && p.c < 8 => [d; 3],
            _ if !p.k.is_multiple_of(8) => return Err(k_err()),
            ConvAlgo::ImplicitGemm if p.c > 8 => {
                return Err(Error::Shape(format!(
                    "conv3x3 {p}: ImplicitGemm runs fprop and dgrad only for C <= 8 (C = {}); Auto picks per pass",
                    p.c
                )))
            }
            ConvAlgo::ImplicitGemm => [g, g, g],
            ConvAlgo::Winograd2x2 => [w, if padded { d } else { w }, g],
            ConvAlgo::Winograd4x4 => [w4, if padded { d } else { w4 }, g],
            ConvAlgo::Wgmma => [ConvAlgo::Wgmma; 3],
            ConvAlgo::Auto if p.c < 8 => [g, g, g],
            ConvAlgo::Auto if padded => [d, d, g],
            ConvAlgo::Auto => [w, w, g],
        };
        let cp = if algos == [d; 3] { p.c } else { cp };
        Ok(Self { problem, algos, cp, tiling: WinoTiling::Auto })
    }

    /// The shape this plan was made for.
    pub fn problem(&self) -> ConvProblem {
        self.problem
    }

    /// The plan of `problem` that runs `algos` (fprop, dgrad, wgrad, as [`Conv3x3::algo`] names
    /// them) under `tiling`: how a recorded plan (a tuned one, from a checkpoint) is rebuilt. Only
    /// plans that [`Conv3x3::new`] and [`Conv3x3::with_pass_algo`] can make, with any passes
    /// Direct as [`Conv3x3::fitted_to`] makes them, are accepted; any other combination (an
    /// unresolved `Auto`, Winograd for a wgrad, ...) is an `Error::Shape`.
    pub fn from_algos(problem: ConvProblem, algos: [ConvAlgo; 3], tiling: WinoTiling) -> Result<Self> {
        use ConvAlgo::*;
        // Every plan is one of new()'s with some passes switched; with_pass_algo checks each switch.
        for start in [Auto, Direct, Winograd2x2, Winograd4x4, ImplicitGemm, Wgmma] {
            let Ok(mut conv) = Conv3x3::new(problem, start) else { continue };
            for (i, pass) in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].into_iter().enumerate() {
                if algos[i] == ConvAlgo::Direct {
                    conv.algos[i] = ConvAlgo::Direct; // any pass may ([`Conv3x3::fitted_to`])
                } else if conv.algos[i] != algos[i] {
                    conv = conv.with_pass_algo(pass, algos[i]).unwrap_or(conv);
                }
            }
            if conv.algos == algos {
                if algos == [ConvAlgo::Direct; 3] {
                    conv.cp = problem.c; // as Conv3x3::new plans Direct: nothing padded
                }
                return Ok(conv.with_wino_tiling(tiling));
            }
        }
        Err(Error::Shape(format!("conv3x3 {problem}: no plan runs {algos:?} (fprop, dgrad, wgrad)")))
    }

    /// The same plan (algorithms, tiling) for a batch of `n` images, 1 <= n <= this plan's N (a
    /// smaller batch keeps every index within the limits [`Conv3x3::new`] checked); any other
    /// `n` is an `Error::Shape`.
    pub fn with_batch(mut self, n: usize) -> Result<Self> {
        let p = self.problem;
        ensure_shape!(n >= 1 && n <= p.n, "conv3x3 {p}: with_batch({n}) needs 1 to {} images", p.n);
        self.problem.n = n;
        Ok(self)
    }

    /// The same plan with the Winograd passes grouping tiles as `tiling` says.
    pub fn with_wino_tiling(mut self, tiling: WinoTiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// The same plan with `pass` (fprop or dgrad) running the Winograd variant `algo`
    /// (Winograd2x2 or Winograd4x4) instead of the other: a tuner's per-pass choice. Any other
    /// change (a pass that is not Winograd, another algorithm) is an `Error::Shape`, as
    /// [`Conv3x3::new`] decides the rest.
    ///
    /// Also, where C is a multiple of 8 (and N H W max(C, K) below 2^31): a Winograd fprop or
    /// dgrad may switch to [`ConvAlgo::Wgmma`] and back, and an ImplicitGemm wgrad to Wgmma and
    /// back.
    pub fn with_pass_algo(mut self, pass: ConvPass, algo: ConvAlgo) -> Result<Self> {
        let (cur, wg) = (self.algo(pass), ConvAlgo::Wgmma);
        let swappable = |a: ConvAlgo| match pass {
            ConvPass::Wgrad => a == ConvAlgo::ImplicitGemm || a == wg,
            _ => a.is_winograd() || a == wg,
        };
        let wgmma_ok = || !self.padded(pass) && wgmma_fits(&self.problem);
        // The limit by name: a tuner asks for Wgmma on shapes that Auto plans (batch 669 on).
        ensure_shape!(
            (cur != wg && algo != wg) || wgmma_fits(&self.problem),
            "conv3x3 {}: Wgmma needs N*H*W*max(C, K) below 2^31",
            self.problem
        );
        if !swappable(cur) || !swappable(algo) || ((cur == wg || algo == wg) && !wgmma_ok()) {
            return Err(Error::Shape(format!(
                "conv3x3 {}: {pass:?} runs {:?}; only a Winograd fprop / dgrad can switch (to Winograd2x2, \
                 Winograd4x4 or, C a multiple of 8, Wgmma), or an ImplicitGemm wgrad to Wgmma (asked: {algo:?})",
                self.problem, cur
            )));
        }
        self.algos[pass as usize] = algo;
        Ok(self)
    }

    /// The Winograd tiling the plan asks for (F(2x2) only; see [`Conv3x3::wino_region_width`]).
    pub fn wino_tiling(&self) -> WinoTiling {
        self.tiling
    }

    /// The region width (in tiles) the Winograd F(2x2) passes use, or 0 for flat tiling.
    pub fn wino_region_width(&self) -> usize {
        let p = &self.problem;
        let (th, tw) = (p.h.div_ceil(2), p.w.div_ceil(2));
        // Fewest idle slots; among equals the smallest window (fewest halo pixels).
        let idle = |rw: usize| {
            1.0 - (th * tw) as f64 / (th.next_multiple_of(WINO_TILES / rw) * tw.next_multiple_of(rw)) as f64
        };
        let halo = |rw: usize| (2 * (WINO_TILES / rw) + 2) * (2 * rw + 2);
        let rw = [1, 2, 4, 8, 16, 32, 64]
            .into_iter()
            .min_by(|&a, &b| idle(a).total_cmp(&idle(b)).then(halo(a).cmp(&halo(b))))
            .unwrap_or(8);
        // The region copies address an image with 32-bit offsets; fprop reads x at Cp channels,
        // which passes C where C is padded (C = 13, K = 8: 16 channels).
        if p.h * p.w * self.cp.max(p.k) > i32::MAX as usize {
            return 0;
        }
        match self.tiling {
            WinoTiling::Flat => 0,
            WinoTiling::Region => rw,
            // Auto, and the tilings that only choose wgmma's tiles: Region where few slots idle.
            _ if idle(rw) <= WINO_REGION_MAX_IDLE => rw,
            _ => 0,
        }
    }

    /// The algorithm `pass` runs: `Direct`, `Winograd2x2` or `Winograd4x4` (fprop, dgrad), or
    /// `ImplicitGemm` (fprop and dgrad with C <= 8, wgrad). With C not a multiple of 8 the
    /// tensor-core passes run on C padded to a multiple of 8 (see [`ConvAlgo`]).
    pub fn algo(&self, pass: ConvPass) -> ConvAlgo {
        self.algos[pass as usize]
    }

    /// What `pass` runs, as reports name it: `direct`, `igemm` (fprop, dgrad), `igemm/MxN` (wgrad, its
    /// block tile), `wgmma/MxN` or `wgmma/haloMxN` (its block tile, flat or over the padded
    /// positions), `winograd4x4`, or `winograd2x2/flat` /
    /// `winograd2x2/rN` (region windows N tiles wide).
    pub fn label(&self, pass: ConvPass) -> String {
        if pass == ConvPass::Wgrad && self.tc(pass) {
            let (m, n, _) = self.wgrad_tile();
            let family = match self.algo(pass) {
                ConvAlgo::Wgmma if self.wgrad_halo() || self.wgrad_2d() => "wgmma/halo",
                ConvAlgo::Wgmma => "wgmma/",
                _ => "igemm/",
            };
            let feed = match (self.wgrad_2d(), self.wgrad_tma(), self.wgrad_tma_mc()) {
                (true, ..) => "/tma-2d",
                (_, true, true) => "/tma-mc",
                (_, true, false) => "/tma-ws",
                _ => "",
            };
            return format!("{family}{m}x{n}{feed}");
        }
        match (self.algo(pass), self.wino_region_width()) {
            (ConvAlgo::Winograd2x2, 0) => "winograd2x2/flat".into(),
            (ConvAlgo::Winograd2x2, rw) => format!("winograd2x2/r{rw}"),
            (ConvAlgo::Winograd4x4, _) => "winograd4x4".into(),
            (ConvAlgo::ImplicitGemm, _) => "igemm".into(),
            (ConvAlgo::Wgmma, _) => self.wgmma_label(pass),
            (ConvAlgo::Direct, _) => "direct".into(),
            (ConvAlgo::Auto, _) => "auto".into(),
        }
    }

    /// Whether `pass` runs on C zero-padded to a multiple of 8 in the workspace (the implicit-GEMM
    /// fprop and dgrad pad as they read, with no workspace).
    pub fn padded(&self, pass: ConvPass) -> bool {
        let in_kernel = pass != ConvPass::Wgrad && self.algo(pass) == ConvAlgo::ImplicitGemm;
        self.tc(pass) && self.cp != self.problem.c && !in_kernel
    }

    fn tc(&self, pass: ConvPass) -> bool {
        self.algo(pass) != ConvAlgo::Direct
    }

    /// The channels `pass`'s kernels see: Cp when it pads, else C.
    fn pass_c(&self, pass: ConvPass) -> usize {
        if self.padded(pass) {
            self.cp
        } else {
            self.problem.c
        }
    }

    /// Transform points of `pass`'s Winograd algorithm (16 for F(2x2), 36 for F(4x4)), or None.
    fn wino_points(&self, pass: ConvPass) -> Option<usize> {
        match self.algo(pass) {
            ConvAlgo::Winograd2x2 => Some(16),
            ConvAlgo::Winograd4x4 => Some(36),
            _ => None,
        }
    }

    /// `(outputs, inputs)` of `pass`'s transformed filters U as the Winograd kernels see them
    /// (K x Cp for fprop, C x K for dgrad), padded as the layout needs: F(2x2) keeps U in mma
    /// fragment order, in 32 x 16 blocks (kernels/winograd_filter.cu); F(4x4) unpadded.
    fn u_dims(&self, pass: ConvPass) -> (usize, usize) {
        let (out, inp) = match pass {
            ConvPass::Dgrad => (self.pass_c(pass), self.problem.k),
            _ => (self.problem.k, self.pass_c(pass)),
        };
        match self.algo(pass) {
            ConvAlgo::Winograd2x2 => (out.next_multiple_of(32), inp.next_multiple_of(16)),
            _ => (out, inp),
        }
    }

    /// Bytes of `pass`'s transformed filters (0 unless Winograd).
    fn u_bytes(&self, pass: ConvPass) -> usize {
        let (out, inp) = self.u_dims(pass);
        self.wino_points(pass).map_or(0, |pts| pts * out * inp * 2)
    }

    /// Byte offsets in the workspace of a padded problem: (fprop: padded filters after U,
    /// fprop: padded x after them, wgrad: padded x after the partial sums).
    fn pad_offsets(&self) -> (usize, usize, usize) {
        let p = &self.problem;
        let u = self.u_bytes(ConvPass::Fprop).next_multiple_of(WS_ALIGN);
        let wp = (p.k * 9 * self.cp * 2).next_multiple_of(WS_ALIGN);
        let part = (self.wgrad_parts() * (p.k * 9 * self.cp + p.k) * 4).next_multiple_of(WS_ALIGN);
        (u, u + wp, part)
    }

    /// `(k, columns)` a block of the tensor-core wgrad owns, and its kernel: 64 x 256 for
    /// K <= 64, where 128 rows would be half idle (64 x 128 when also 9 Cp <= 128, the padded
    /// first layer); 128 x 256 where 256-column blocks leave at most 1/8 of their columns idle
    /// (VGG's conv2_2 on), whose 64 x 64 warp tiles read ~30% fewer shared-memory bytes a flop
    /// (bench/NOTES.md); else 128 x 128.
    /// The wgmma wgrad: 128 x 3 Cb (3 taps x Cb channels, Cb = 64 for C <= 64, else 128) over
    /// the padded positions where [`Conv3x3::wgrad_halo`] (fed by the TMA engine where
    /// [`Conv3x3::wgrad_tma`]), else 128 x 256.
    fn wgrad_tile(&self) -> (usize, usize, &'static Kernel) {
        if self.wgrad_2d() {
            return (64, 9 * 64, &WGRAD_WGMMA_2D);
        }
        if self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma {
            if self.wgrad_halo() {
                // The TMA kernels: k64 for K <= 64, in clusters (mc) under TmaMc for K > 128, never both.
                return match (self.cp, self.wgrad_tma(), self.wgrad_tma_k64(), self.wgrad_tma_mc()) {
                    (..=64, false, ..) => (128, 3 * 64, &WGRAD_WGMMA_HALO_C64),
                    (_, false, ..) => (128, 3 * 128, &WGRAD_WGMMA_HALO_C128),
                    (..=64, true, false, false) => (128, 3 * 64, &WGRAD_WGMMA_TMA_C64),
                    (_, true, false, false) => (128, 3 * 128, &WGRAD_WGMMA_TMA_C128),
                    (..=64, true, false, true) => (128, 3 * 64, &WGRAD_WGMMA_TMA_MC_C64),
                    (_, true, false, true) => (128, 3 * 128, &WGRAD_WGMMA_TMA_MC_C128),
                    (..=64, true, true, _) => (64, 3 * 64, &WGRAD_WGMMA_TMA_C64_K64),
                    (_, true, true, _) => (64, 3 * 128, &WGRAD_WGMMA_TMA_C128_K64),
                };
            }
            return (128, 256, &IGEMM_WGRAD_WGMMA);
        }
        let cols = 9 * self.cp;
        match (self.problem.k <= 64, cols <= 128, cols.next_multiple_of(256) * 8 <= cols * 9) {
            (true, true, _) => (64, 128, &IGEMM_WGRAD_M64N128),
            (true, false, _) => (64, 256, &IGEMM_WGRAD_M64),
            (false, _, true) => (128, 256, &IGEMM_WGRAD_M128N256),
            _ => (128, 128, &IGEMM_WGRAD_M128),
        }
    }

    /// The kernel [`Conv3x3::wgrad`] runs before its reduction (reports and selftest rows).
    pub fn wgrad_kernel_name(&self) -> &'static str {
        if self.tc(ConvPass::Wgrad) {
            self.wgrad_tile().2.name
        } else {
            DIRECT_WGRAD.name
        }
    }

    /// Column blocks of the tensor-core wgrad's grid: 3 filter rows x C / Cb (halo), else 9 C / N.
    fn wgrad_grid_x(&self) -> usize {
        if self.wgrad_2d() {
            return self.cp.div_ceil(64);
        }
        if self.wgrad_halo() {
            3 * self.cp.div_ceil(self.wgrad_tile().1 / 3)
        } else {
            (9 * self.cp).div_ceil(self.wgrad_tile().1)
        }
    }

    /// `(chunks, pixels per chunk)` of the wgrad pixel reduction (padded positions for the halo
    /// wgrad, whole 64-position stages for its TMA twin): a function of the shape only.
    fn wgrad_split(&self) -> (usize, usize) {
        let p = &self.problem;
        if self.wgrad_2d() {
            // Chunks of whole tiles: two waves of blocks, at least 16 tiles a chunk.
            let tiles = p.n * p.h.div_ceil(WGRAD_2D_ROWS) * p.w.div_ceil(WGRAD_2D_COLS);
            let want = (WG_TARGET_BLOCKS / 2).div_ceil(self.wgrad_grid_x()).clamp(1, tiles.div_ceil(16).max(1));
            let chunk = tiles.div_ceil(want);
            return (tiles.div_ceil(chunk), chunk);
        }
        let pixels = if self.wgrad_halo() { self.wgrad_positions() } else { p.n * p.h * p.w };
        let want = if self.tc(ConvPass::Wgrad) {
            let (m, _, _) = self.wgrad_tile();
            let base = self.wgrad_grid_x() * p.k.div_ceil(m);
            // The wgmma kernel runs one block an SM (196 KB of shared memory): two waves of it
            // keep the SMs as busy, with half the partial sums to write and reduce.
            let (target, min_chunk) = if self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma {
                (WG_TARGET_BLOCKS / 2, WG_MIN_CHUNK_WGMMA)
            } else {
                (WG_TARGET_BLOCKS, WG_MIN_CHUNK)
            };
            target.div_ceil(base).clamp(1, pixels.div_ceil(min_chunk).max(1))
        } else {
            pixels.div_ceil(DIRECT_WG_CHUNK).clamp(1, DIRECT_WG_MAX_SPLITS)
        };
        let mut chunk = pixels.div_ceil(want);
        if self.tc(ConvPass::Wgrad) {
            let step = match (self.wgrad_tma(), self.wgrad_tma_k64()) {
                (true, true) => 2 * WGRAD_TMA_STAGE,
                (true, false) => WGRAD_TMA_STAGE,
                _ => WG_P,
            };
            chunk = chunk.div_ceil(step) * step;
        }
        (pixels.div_ceil(chunk), chunk)
    }

    /// Partial sums the wgrad writes and its reduction adds: one a chunk, two for the TMA wgrad's
    /// `k64` kernels (one a warpgroup).
    fn wgrad_parts(&self) -> usize {
        self.wgrad_split().0 * if self.wgrad_tma_k64() { 2 } else { 1 }
    }

    /// Bytes of workspace `pass` needs: Winograd fprop / dgrad keep the transformed filters
    /// (16 x K x C fp16 for F(2x2), 36 x K x C for F(4x4)); wgrad keeps one fp32 partial dw
    /// and db per pixel chunk. Direct and implicit-GEMM fprop and dgrad need none. A
    /// channel-padded problem (C not a multiple of 8) also keeps, for a Winograd fprop, the
    /// padded filters (K x 9 x Cp fp16) and x (N x H x W x Cp fp16) after the Cp-channel U, and
    /// for wgrad the padded x after the Cp-channel partial sums.
    pub fn workspace_bytes(&self, pass: ConvPass) -> usize {
        let p = &self.problem;
        let xp = p.n * p.h * p.w * self.cp * 2;
        match pass {
            ConvPass::Fprop if self.padded(pass) => self.pad_offsets().1 + xp,
            ConvPass::Wgrad if self.padded(pass) => self.pad_offsets().2 + xp,
            ConvPass::Dgrad if self.algo(pass) == ConvAlgo::Wgmma => self.wgmma_dgrad_bytes(),
            ConvPass::Fprop | ConvPass::Dgrad => self.u_bytes(pass),
            ConvPass::Wgrad => self.wgrad_parts() * (p.filter_len() + p.k) * 4,
        }
    }
}

/// Whether the wgmma kernels' 32-bit offsets cover `p`: N H W max(C, K) < 2^31.
fn wgmma_fits(p: &ConvProblem) -> bool {
    p.n.saturating_mul(p.h).saturating_mul(p.w).saturating_mul(p.c.max(p.k)) <= i32::MAX as usize
}

/// `blocks` as a one-dimensional grid whose linear block index the kernel splits with 32-bit ints.
fn grid_x(p: &ConvProblem, blocks: usize) -> Result<u32> {
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Shape(format!("conv3x3 {p}: too many blocks for one launch")))
}
