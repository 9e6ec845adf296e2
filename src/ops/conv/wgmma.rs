//! The 3x3 convolution as an implicit GEMM on Hopper's wgmma: [`ConvAlgo::Wgmma`]'s fprop and
//! dgrad launches (kernels/conv_wgmma_halo.cu where its tile fits, or kernels/conv_wgmma_tma.cu
//! under [`WinoTiling::Tma`], [`WinoTiling::TmaTall`], [`WinoTiling::TmaWs`] and [`WinoTiling::TmaMc`],
//! kernels/conv_wgmma_tma2d.cu under [`WinoTiling::Tma2d`], else
//! kernels/conv_wgmma.cu), the dgrad's rotated filters, which halo tile the wgrad runs (its TMA
//! one, kernels/conv_wgrad_wgmma_tma.cu, under [`WinoTiling::TmaWs`], and in clusters of 2 under
//! [`WinoTiling::TmaMc`] with at least 2 k blocks), and the TMA tiles' tensor maps.

use super::{grid_x, kern, Conv3x3, ConvAlgo, ConvPass, WinoTiling};
use crate::device::{KArg, Kernel, LaunchConfig, TensorMap, TensorMapSpec, SM90_SHARED_PER_BLOCK};
use crate::problem::ConvProblem;
use crate::{Device, Error, Result, Tensor};

const WGMMA_N64: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n64_f16");
const WGMMA_N128: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n128_f16");
const WGMMA_N256: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n256_f16");
const HALO_N64: Kernel = kern("conv_wgmma_halo", "igemm3x3_wgmma_halo_n64_f16");
const HALO_N128: Kernel = kern("conv_wgmma_halo", "igemm3x3_wgmma_halo_n128_f16");
const HALO512_N64: Kernel = kern("conv_wgmma_halo", "igemm3x3_wgmma_halo512_n64_f16");
const HALO_SW_N64: Kernel = kern("conv_wgmma_halo", "igemm3x3_wgmma_halo_sw_n64_f16");
const HALO_SW_N128: Kernel = kern("conv_wgmma_halo", "igemm3x3_wgmma_halo_sw_n128_f16");
const HALO_TMA_N64: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_n64_f16");
const HALO_TMA_N128: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_n128_f16");
const HALO512_TMA_N64: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo512_tma_n64_f16");
const HALO_TMA_WS_N64: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_ws_n64_f16");
const HALO_TMA_WS_N128: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_ws_n128_f16");
const HALO_TMA_MC_N64: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_mc_n64_f16");
const HALO_TMA_MC_N128: Kernel = kern("conv_wgmma_tma", "igemm3x3_wgmma_halo_tma_mc_n128_f16");
const HALO2D_TMA_N64: Kernel = kern("conv_wgmma_tma2d", "igemm3x3_wgmma_halo2d_tma_n64_f16");
const ROT180: Kernel = kern("conv_wgmma", "conv_rot180_f16");
/// Flat tile: 128 pixels x N output channels a block (N = 64, 128 or 256), 256 threads (2
/// warpgroups), a 4-buffer ring of (128 + N) rows of 64 channels (kernels/conv_wgmma.cu).
const PIX: usize = 128;
/// Halo tile: 256 positions of the padded image x N channels (64 or 128) an item, 512 threads (4
/// warpgroups), persistent blocks (kernels/conv_wgmma_halo.cu); [`WinoTiling::Tall`]'s: 512 x 64.
const HALO_POS: usize = 256;
const HALO512_POS: usize = 512;
/// Threads of a halo block: 4 warpgroups; with a producer warp (warp-specialised TMA tiles), 17
/// warps (kernels/conv_wgmma_tma.cu's kThreads, kWsThreads).
const HALO_THREADS: u32 = 512;
const HALO_WS_THREADS: u32 = HALO_THREADS + 32;
/// Blocks a cluster of the multicast TMA tile ([`Feed::TmaMc`]), which share each stage's filter box,
/// and of the multicast TMA wgrad ([`Conv3x3::wgrad_tma_mc`]), which share each stage's X boxes.
pub(super) const MC_CLUSTER: usize = 2;
/// Bytes of the multicast tile's 12 mbarriers, in its dynamic shared memory (the other TMA tiles
/// keep theirs in static shared memory, within the 128 bytes [`tma_tile`] leaves).
const MC_BARRIER_BYTES: usize = 12 * 8;
/// Halo pieces a thread copies at most (the kernel's kMaxJ): halo_pos(w, pos) <= 64 x 12.
const HALO_MAX_PIECES: usize = 12;
/// [`WinoTiling::Tma2d`]'s items: 16 image rows x 32 columns (512 positions) x 64 output channels;
/// its halo box 18 rows x 40 columns, and its dynamic shared bytes (kernels/conv_wgmma_tma2d.cu:
/// alignment slack, 4 B buffers of 8 KiB, 2 halo buffers).
const TMA2D_ROWS: usize = 16;
const TMA2D_COLS: usize = 32;
const TMA2D_BOX: [usize; 4] = [64, TMA2D_COLS + 8, TMA2D_ROWS + 2, 1];
const TMA2D_SHARED: usize = 1024 + 4 * 64 * 64 * 2 + 2 * (TMA2D_COLS + 8) * (TMA2D_ROWS + 2) * 64 * 2;

/// Positions a halo step holds for width `w` and items of `pos` positions: the item's, a padded
/// row (w + 2) and one position on each side, rounded up to 8 (kernels/conv_wgmma_halo.cu's
/// halo_pos).
fn halo_pos(w: usize, pos: usize) -> usize {
    (pos + 2 * (w + 2) + 2).next_multiple_of(8)
}

/// The TMA halo tile's row pitch for width `w` (kernels/conv_wgmma_tma.cu's pitch): w + 2 rounded
/// up to 8, so that a box of 8 positions never crosses a padded row.
fn tma_pitch(w: usize) -> usize {
    (w + 2).next_multiple_of(8)
}

/// The TMA halo tile's dynamic shared bytes for N output channels, width `w` and items of `pos`
/// positions (its smem_bytes): alignment slack, 4 B buffers, 2 halo buffers of pos + 16 + 2 sp
/// positions (the 8-position chunks of an item's halo from any start).
fn tma_shared(n: usize, w: usize, pos: usize) -> usize {
    1024 + 4 * n * 64 * 2 + 2 * (pos + 16 + 2 * tma_pitch(w)) * 64 * 2
}

/// How a wgmma tile's operands reach shared memory, and in which layout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Every thread's cp.async copies, unswizzled core matrices.
    CpAsync,
    /// The same copies into the 128-byte swizzle.
    CpAsyncSw128,
    /// The TMA engine, in the 128-byte swizzle, a block barrier a stage.
    Tma,
    /// The TMA engine with a producer warp and per-buffer barriers (544 threads).
    TmaWs,
    /// As TmaWs, in clusters of [`MC_CLUSTER`] blocks that share each filter box by multicast.
    TmaMc,
    /// As Tma, for items that are rectangles of the image ([`WinoTiling::Tma2d`]: one halo box an
    /// item and channel step).
    Tma2d,
}

/// One fprop or dgrad launch's kernel, its positions an item (halo tiles; 0 for the flat one),
/// its output channels a tile (GEMM N), how its operands are fed, its padded space's row pitch
/// (halo tiles), and its dynamic shared bytes.
pub(super) struct WgmmaTile {
    kernel: &'static Kernel,
    pos: usize,
    n: usize,
    feed: Feed,
    pitch: usize,
    pub(super) shared: usize,
}

/// The flat tile for `cout` output channels: N = 64 for at most 64 (no half-idle tensor work,
/// two blocks an SM), 256 where 256-channel blocks leave at most 1/8 of the channels idle (fewer
/// bytes from L2 a flop), else 128.
fn flat_tile(cout: usize) -> WgmmaTile {
    let n = match cout {
        ..=64 => 64,
        _ if cout >= 256 && cout.next_multiple_of(256) * 8 <= cout * 9 => 256,
        _ => 128,
    };
    let kernel = match n {
        64 => &WGMMA_N64,
        256 => &WGMMA_N256,
        _ => &WGMMA_N128,
    };
    WgmmaTile { kernel, pos: 0, n, feed: Feed::CpAsync, pitch: 0, shared: 4 * (PIX + n) * 64 * 2 }
}

/// Whether the halo kernels' 32-bit position indices cover `p`'s padded positions at row pitch
/// `pitch`, with the margins past the last of an item of `pos` positions and its halo.
fn halo_positions_fit(p: &ConvProblem, pos: usize, pitch: usize) -> bool {
    let positions = p.n.saturating_mul(p.h + 1).saturating_mul(pitch);
    positions.saturating_add(2 * pos + 2 * pitch + 2) <= i32::MAX as usize
}

/// The TMA halo tile for `cout` channels of `p`'s image under `tiling` (Tma, TmaTall, TmaWs or
/// TmaMc), if it fits: items of 256 positions x N 64 for at most 64 channels, else 128 (TmaWs:
/// with a producer warp; TmaMc: also in clusters of 2 sharing the filters), or under TmaTall 512
/// positions x 64 channels whatever `cout`; the buffers within 227 KB with the kernel's 96 bytes
/// of barriers (widths up to 182 at N 128, 246 at N 64, 118 for the tall tile), and the padded
/// positions within 32-bit indices.
fn tma_tile(p: &ConvProblem, cout: usize, tiling: WinoTiling) -> Option<WgmmaTile> {
    let (pos, n, feed, kernel) = match (tiling, cout <= 64) {
        (WinoTiling::TmaTall, _) => (HALO512_POS, 64, Feed::Tma, &HALO512_TMA_N64),
        (WinoTiling::TmaWs, true) => (HALO_POS, 64, Feed::TmaWs, &HALO_TMA_WS_N64),
        (WinoTiling::TmaWs, false) => (HALO_POS, 128, Feed::TmaWs, &HALO_TMA_WS_N128),
        (WinoTiling::TmaMc, true) => (HALO_POS, 64, Feed::TmaMc, &HALO_TMA_MC_N64),
        (WinoTiling::TmaMc, false) => (HALO_POS, 128, Feed::TmaMc, &HALO_TMA_MC_N128),
        (_, true) => (HALO_POS, 64, Feed::Tma, &HALO_TMA_N64),
        (_, false) => (HALO_POS, 128, Feed::Tma, &HALO_TMA_N128),
    };
    let pitch = tma_pitch(p.w);
    let shared = tma_shared(n, p.w, pos);
    let fits = shared + 128 <= SM90_SHARED_PER_BLOCK && halo_positions_fit(p, pos, pitch);
    let shared = if feed == Feed::TmaMc { shared + MC_BARRIER_BYTES } else { shared };
    fits.then_some(WgmmaTile { kernel, pos, n, feed, pitch, shared })
}

/// The halo tile for `cout` channels of `p`'s image under `tiling`, if it fits: N = 64 for at
/// most 64 channels, else 128 (4 warpgroups of 256 accumulators would not fit the registers),
/// its operands in the 128-byte swizzle under [`WinoTiling::Swizzled`]; under
/// [`WinoTiling::Tall`] 512 positions x 64 channels whatever `cout`; 4 B buffers and 2 halo
/// buffers within 227 KB (widths up to 193 at N 128, 129 for the tall tile), at most 12 halo
/// pieces a thread (widths up to 253, 125 for the tall tile), and the padded positions within
/// 32-bit indices.
fn halo_tile(p: &ConvProblem, cout: usize, tiling: WinoTiling) -> Option<WgmmaTile> {
    match tiling {
        WinoTiling::Tma | WinoTiling::TmaWs | WinoTiling::TmaMc => return tma_tile(p, cout, tiling),
        // Its halo does not depend on the width: it fits every shape.
        WinoTiling::Tma2d => {
            let (kernel, pos, n, feed, pitch) = (&HALO2D_TMA_N64, TMA2D_ROWS * TMA2D_COLS, 64, Feed::Tma2d, 0);
            return Some(WgmmaTile { kernel, pos, n, feed, pitch, shared: TMA2D_SHARED });
        }
        WinoTiling::TmaTall => return tma_tile(p, cout, tiling).or_else(|| tma_tile(p, cout, WinoTiling::Tma)),
        _ => {}
    }
    let feed = if tiling == WinoTiling::Swizzled { Feed::CpAsyncSw128 } else { Feed::CpAsync };
    let (pos, tn, kernel) = match (tiling, cout <= 64) {
        (WinoTiling::Tall, _) => (HALO512_POS, 64, &HALO512_N64),
        (WinoTiling::Swizzled, true) => (HALO_POS, 64, &HALO_SW_N64),
        (WinoTiling::Swizzled, false) => (HALO_POS, 128, &HALO_SW_N128),
        (_, true) => (HALO_POS, 64, &HALO_N64),
        (_, false) => (HALO_POS, 128, &HALO_N128),
    };
    let shared = 4 * tn * 64 * 2 + 2 * halo_pos(p.w, pos) * 64 * 2;
    let fits = halo_pos(p.w, pos) <= 64 * HALO_MAX_PIECES
        && shared <= SM90_SHARED_PER_BLOCK
        && halo_positions_fit(p, pos, p.w + 2);
    fits.then_some(WgmmaTile { kernel, pos, n: tn, feed, pitch: p.w + 2, shared })
}

impl Conv3x3 {
    /// The tile `pass` (fprop or dgrad) runs: the plan's tiling's halo tile (the 512 x 64 one
    /// under [`WinoTiling::Tall`], the swizzled one under [`WinoTiling::Swizzled`], the TMA ones
    /// under [`WinoTiling::Tma`], [`WinoTiling::TmaWs`], [`WinoTiling::TmaMc`] and
    /// [`WinoTiling::TmaTall`], whose 512 x 64 items fall back to Tma's tile past width 118) where
    /// it fits, else the 256 x N one, unless the plan's tiling is [`WinoTiling::Flat`] or that
    /// does not fit the shape either; else the flat one.
    pub(super) fn wgmma_tile(&self, pass: ConvPass) -> WgmmaTile {
        let p = &self.problem;
        let cout = if pass == ConvPass::Dgrad { p.c } else { p.k };
        let halo = match self.tiling {
            WinoTiling::Flat => None,
            t => halo_tile(p, cout, t).or_else(|| halo_tile(p, cout, WinoTiling::Auto)),
        };
        halo.unwrap_or_else(|| flat_tile(cout))
    }

    /// Whether `pass` runs the halo tile its plan's tiling names (not a fallback to a smaller or
    /// flat tile where it does not fit): for fprop and dgrad the 512 x 64 one under
    /// [`WinoTiling::Tall`], the swizzled one under [`WinoTiling::Swizzled`], the TMA ones under
    /// [`WinoTiling::Tma`], [`WinoTiling::TmaTall`], [`WinoTiling::TmaWs`] and [`WinoTiling::TmaMc`],
    /// any halo tile otherwise; for wgrad, whose tile only [`WinoTiling::TmaWs`],
    /// [`WinoTiling::TmaMc`] and [`WinoTiling::Tma2d`] name, the TMA one (under TmaMc: in
    /// clusters, where K > 128; under Tma2d: the 2-D one, where K <= 64).
    pub(crate) fn runs_tilings_own_tile(&self, pass: ConvPass) -> bool {
        if pass == ConvPass::Wgrad {
            return matches!(self.tiling, WinoTiling::TmaWs | WinoTiling::TmaMc) && self.wgrad_tma() || self.wgrad_2d();
        }
        let t = self.wgmma_tile(pass);
        match self.tiling {
            WinoTiling::Tall => t.pos == HALO512_POS,
            WinoTiling::Swizzled => t.feed == Feed::CpAsyncSw128,
            WinoTiling::Tma => t.feed == Feed::Tma && t.pos == HALO_POS,
            WinoTiling::TmaWs => t.feed == Feed::TmaWs,
            WinoTiling::TmaMc => t.feed == Feed::TmaMc,
            WinoTiling::TmaTall => t.feed == Feed::Tma && t.pos == HALO512_POS,
            WinoTiling::Tma2d => t.feed == Feed::Tma2d,
            _ => t.pos > 0,
        }
    }

    /// `wgmma/halo256xN`, `wgmma/halo256xN/sw128`, `wgmma/halo{256xN,512x64}/tma`,
    /// `wgmma/halo256xN/tma-ws`, `wgmma/halo256xN/tma-mc`, `wgmma/halo16x32x64/tma-2d`, `wgmma/halo512x64` or
    /// `wgmma/128xN`: the tile `pass` (fprop or dgrad) runs.
    pub(super) fn wgmma_label(&self, pass: ConvPass) -> String {
        match self.wgmma_tile(pass) {
            WgmmaTile { pos: 0, n, .. } => format!("wgmma/{PIX}x{n}"),
            WgmmaTile { pos, n, feed: Feed::TmaWs, .. } => format!("wgmma/halo{pos}x{n}/tma-ws"),
            WgmmaTile { pos, n, feed: Feed::TmaMc, .. } => format!("wgmma/halo{pos}x{n}/tma-mc"),
            WgmmaTile { n, feed: Feed::Tma2d, .. } => format!("wgmma/halo{TMA2D_ROWS}x{TMA2D_COLS}x{n}/tma-2d"),
            WgmmaTile { pos, n, feed: Feed::Tma, .. } => format!("wgmma/halo{pos}x{n}/tma"),
            WgmmaTile { pos, n, feed: Feed::CpAsyncSw128, .. } => format!("wgmma/halo{pos}x{n}/sw128"),
            WgmmaTile { pos, n, .. } => format!("wgmma/halo{pos}x{n}"),
        }
    }

    /// Positions of the padded space the halo kernels run over at row pitch `pitch` (W + 2, or
    /// the TMA tiles' wider one), (N (H + 1) - 1) pitch: each image row with a zero column (or
    /// more) on both sides, a zero row above each image.
    fn halo_positions_at(&self, pitch: usize) -> usize {
        let p = &self.problem;
        (p.n * (p.h + 1) - 1) * pitch
    }

    /// Whether the wgmma wgrad runs over the padded positions (kernels/conv_wgrad_wgmma_halo.cu):
    /// unless the plan's tiling is [`WinoTiling::Flat`] or the positions (with a stage's margins)
    /// leave the kernel's 32-bit indices.
    pub(super) fn wgrad_halo(&self) -> bool {
        self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma
            && self.tiling != WinoTiling::Flat
            && halo_positions_fit(&self.problem, HALO_POS, self.problem.w + 2)
    }

    /// Whether the wgmma wgrad is its TMA-fed, warp-specialised twin
    /// (kernels/conv_wgrad_wgmma_tma.cu): under [`WinoTiling::TmaWs`], and under
    /// [`WinoTiling::TmaMc`] where K > 128 (at least 2 k blocks of 128 to pair in clusters:
    /// [`Conv3x3::wgrad_tma_mc`]), where its ring fits an sm_90 block (always: its stages do not
    /// depend on the width) and its padded positions, at the TMA tiles' wider pitch, the kernel's
    /// 32-bit indices; else the cp.async one runs. Under TmaMc with one k block that is Region's
    /// cp.async halo wgrad, as before the clusters: so a TmaMc plan's wgrad is either its own
    /// tile or the one the tuner times as `wgmma` (under Region), never TmaWs's.
    pub(super) fn wgrad_tma(&self) -> bool {
        let p = &self.problem;
        let shared = super::wgrad_wgmma_tma_smem(if self.cp <= 64 { 64 } else { 128 }, false, false) as usize;
        let tiled = match self.tiling {
            WinoTiling::TmaWs => true,
            WinoTiling::TmaMc => p.k > 128,
            _ => false,
        };
        self.wgrad_halo()
            && tiled
            && shared + 128 <= SM90_SHARED_PER_BLOCK
            && halo_positions_fit(p, HALO_POS, tma_pitch(p.w))
    }

    /// Whether the wgrad is the 2-D TMA one (kernels/conv_wgrad_wgmma_tma2d.cu): wgmma's under
    /// [`WinoTiling::Tma2d`] for K <= 64, where one block holds all 9 taps (its indices are
    /// 32-bit: tiles and N H W max(C, K) below 2^31, as [`ConvAlgo::Wgmma`] requires).
    pub(crate) fn wgrad_2d(&self) -> bool {
        self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma && self.tiling == WinoTiling::Tma2d && self.problem.k <= 64
    }

    /// Whether the TMA wgrad runs in clusters of [`MC_CLUSTER`] blocks (k blocks 2 y and 2 y + 1)
    /// that share each stage's X boxes by multicast: under [`WinoTiling::TmaMc`], K > 128.
    pub(super) fn wgrad_tma_mc(&self) -> bool {
        self.tiling == WinoTiling::TmaMc && self.wgrad_tma()
    }

    /// Whether the TMA wgrad runs its `k64` kernels (K <= 64: both warpgroups on k 0..63, each
    /// over half of a 128-position stage; at most the `wgrad_tma` tile's shared memory).
    pub(super) fn wgrad_tma_k64(&self) -> bool {
        self.problem.k <= 64 && self.wgrad_tma()
    }

    /// Positions the halo wgrad reduces over: (N (H + 1) - 1) (W + 2), or at the TMA pitch for
    /// its TMA twin.
    pub(super) fn wgrad_positions(&self) -> usize {
        let pitch = if self.wgrad_tma() { tma_pitch(self.problem.w) } else { self.problem.w + 2 };
        self.halo_positions_at(pitch)
    }

    /// An error unless `dev` runs wgmma kernels.
    pub(super) fn need_wgmma(&self, dev: &Device) -> Result<()> {
        if dev.has_wgmma() {
            return Ok(());
        }
        Err(Error::Shape(format!(
            "conv3x3 {}: {:?} needs wgmma (compute capability 9.0: H100 / H200); {} has none",
            self.problem,
            ConvAlgo::Wgmma,
            dev.name()
        )))
    }

    /// Bytes of the dgrad's rotated filters (C x 9 x K fp16) in the workspace.
    pub(super) fn wgmma_dgrad_bytes(&self) -> usize {
        let p = &self.problem;
        9 * p.k * p.c * 2
    }

    /// wr[c][tap][k] = w[k][8 - tap][c] into the start of `ws` (checked by the caller).
    pub(super) fn wgmma_rotate(&self, dev: &Device, w: KArg, ws: &mut Tensor<u8>) -> Result<()> {
        let p = &self.problem;
        let cfg = LaunchConfig::for_elements(9 * p.k * p.c, super::ELEMENTWISE_THREADS)?;
        let args = [w, ws.arg_mut(), KArg::I32(p.k as i32), KArg::I32(p.c as i32)];
        // SAFETY: (const __half* w, __half* wr, int k, int c): w holds K*9*C halves, ws at least
        // wgmma_dgrad_bytes (workspace_bytes, checked by the caller); K*9*C fits i32 (new).
        unsafe { dev.launch(&ROT180, cfg, &args) }
    }

    /// One launch of the implicit GEMM: `x` (cin channels) against `wt` ([cout][9][cin]) into
    /// `y` (cout channels), with an optional bias + ReLU (fprop) or mask (dgrad).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wgmma_launch(
        &self,
        dev: &Device,
        pass: ConvPass,
        x: KArg,
        wt: KArg,
        bias: KArg,
        mask: KArg,
        y: KArg,
        relu: KArg,
    ) -> Result<()> {
        let p = &self.problem;
        self.need_wgmma(dev)?;
        let (cin, cout) = if pass == ConvPass::Dgrad { (p.k, p.c) } else { (p.c, p.k) };
        let tile = self.wgmma_tile(pass);
        let cluster = if tile.feed == Feed::TmaMc { MC_CLUSTER } else { 1 };
        let cfg = if tile.pos > 0 {
            // Persistent: one block an SM, each taking every gridDim-th item; in clusters of 2, one
            // cluster a pair of SMs, each taking every (gridDim / 2)-th pair of items (the same
            // output-channel block, two position blocks), as many clusters as can be resident (on
            // emu's 3 SMs two, so that the tests see clusters stride). The 2-D items: rectangles of
            // the image.
            let units = if tile.feed == Feed::Tma2d {
                p.n * p.h.div_ceil(TMA2D_ROWS) * p.w.div_ceil(TMA2D_COLS) * cout.div_ceil(tile.n)
            } else {
                self.halo_positions_at(tile.pitch).div_ceil(tile.pos).div_ceil(cluster) * cout.div_ceil(tile.n)
            };
            // 16 consumer warps (4 warpgroups), and the producer warp of a warp-specialised tile.
            let threads = if matches!(tile.feed, Feed::TmaWs | Feed::TmaMc) { HALO_WS_THREADS } else { HALO_THREADS };
            let block = LaunchConfig { grid: (1, 1, 1), block: (threads, 1, 1), shared_bytes: tile.shared as u32 };
            // Clusters must fit a GPC together: the driver says how many can be resident (66 of 2
            // expected on an H200; fewer would otherwise leave the rest for a second wave). The
            // count only sizes the grid: if the query fails, SMs / 2 as before, and the launch
            // itself reports whatever made it fail.
            let resident = if cluster > 1 {
                let guess = dev.multiprocessors().div_ceil(cluster);
                dev.max_active_clusters(tile.kernel, block, cluster as u32).unwrap_or(guess)
            } else {
                dev.multiprocessors()
            };
            LaunchConfig { grid: (grid_x(p, cluster * units.min(resident))?, 1, 1), ..block }
        } else {
            let blocks = (p.n * p.h * p.w).div_ceil(PIX) * cout.div_ceil(tile.n);
            LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (256, 1, 1), shared_bytes: tile.shared as u32 }
        };
        let dims = [p.n, p.h, p.w, cin, cout].map(|v| KArg::I32(v as i32));
        let tma = matches!(tile.feed, Feed::Tma | Feed::TmaWs | Feed::TmaMc | Feed::Tma2d);
        let (x, wt) = if tma { self.tma_maps(dev, x, wt, cin, cout, &tile)? } else { (x, wt) };
        let args = [x, wt, bias, mask, y, dims[0], dims[1], dims[2], dims[3], dims[4], relu];
        // SAFETY: (const __half* x, const __half* wt, const __half* bias, const __half* mask,
        // __half* y, int n, int h, int w, int cin, int cout, int relu): x N*H*W*cin halves, wt
        // cout*9*cin, y N*H*W*cout, bias cout or null, mask N*H*W*cout or null, all checked by
        // the caller; N*H*W*max(C, K) and 9*K*C fit i32 (Conv3x3::new), the halo tile's
        // padded positions too (halo_tile). The TMA tile takes the same list with x and wt as
        // tensor maps of those buffers (tma_maps), which it reads only inside their extents; the
        // multicast one in clusters of 2 (grid x even), refused on a device without clusters.
        unsafe { dev.launch_cluster(tile.kernel, cfg, cluster as u32, &args) }
    }

    /// The TMA tile's tensor maps of `x` (cin, W, H, N; a box is 8 positions of a padded row x 64
    /// channels, or [`WinoTiling::Tma2d`]'s whole halo) and `wt` (cin, tap, cout; a box is one
    /// tap's 64 channels of N output channels, or of N / 2 for the multicast tile, whose ranks
    /// each load half), both in the 128-byte swizzle (kernels/conv_wgmma_tma.cu,
    /// kernels/conv_wgmma_tma2d.cu).
    fn tma_maps(
        &self,
        dev: &Device,
        x: KArg,
        wt: KArg,
        cin: usize,
        cout: usize,
        tile: &WgmmaTile,
    ) -> Result<(KArg, KArg)> {
        let p = &self.problem;
        let (KArg::Ptr(xp), KArg::Ptr(wp)) = (x, wt) else {
            return Err(Error::Invalid(format!("conv3x3 {p}: the TMA tile needs x and wt as device pointers")));
        };
        let ws = TensorMapSpec {
            dims: vec![cin, 9, cout],
            strides: vec![2 * cin, 2 * cin * 9],
            boxd: vec![64, 1, if tile.feed == Feed::TmaMc { tile.n / MC_CLUSTER } else { tile.n }],
            swizzle128: true,
        };
        let x = if tile.feed == Feed::Tma2d {
            self.nhwc_map_boxed(dev, KArg::Ptr(xp), cin, TMA2D_BOX.to_vec())?
        } else {
            self.nhwc_map(dev, KArg::Ptr(xp), cin)?
        };
        Ok((x, TensorMap::new(dev, wp, &ws)?.arg()))
    }

    /// A tensor map of the NHWC tensor `t` (a device pointer) of this problem's images with
    /// `channels` channels, as (channels, W, H, N) in boxes of 64 channels x 8 pixels of a row in
    /// the 128-byte swizzle: the TMA tiles' 8-position chunks (conv_tma_load_chunk).
    pub(super) fn nhwc_map(&self, dev: &Device, t: KArg, channels: usize) -> Result<KArg> {
        self.nhwc_map_boxed(dev, t, channels, vec![64, 8, 1, 1])
    }

    /// As [`Conv3x3::nhwc_map`], in boxes of `boxd` (channels, columns, rows, images).
    pub(super) fn nhwc_map_boxed(&self, dev: &Device, t: KArg, channels: usize, boxd: Vec<usize>) -> Result<KArg> {
        let p = &self.problem;
        let KArg::Ptr(ptr) = t else {
            return Err(Error::Invalid(format!("conv3x3 {p}: the TMA tiles need their tensors as device pointers")));
        };
        let spec = TensorMapSpec {
            dims: vec![channels, p.w, p.h, p.n],
            strides: vec![2 * channels, 2 * channels * p.w, 2 * channels * p.w * p.h],
            boxd,
            swizzle128: true,
        };
        Ok(TensorMap::new(dev, ptr, &spec)?.arg())
    }
}
