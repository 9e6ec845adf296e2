//! The 3x3 convolution as an implicit GEMM on Hopper's wgmma (kernels/conv_wgmma.cu):
//! [`ConvAlgo::Wgmma`]'s fprop and dgrad launches, and the dgrad's rotated filters.

use super::{grid_x, kern, Conv3x3, ConvAlgo, ConvPass};
use crate::device::{KArg, Kernel, LaunchConfig};
use crate::{Device, Error, Result, Tensor};

const WGMMA_N64: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n64_f16");
const WGMMA_N128: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n128_f16");
const WGMMA_N256: Kernel = kern("conv_wgmma", "igemm3x3_wgmma_n256_f16");
const ROT180: Kernel = kern("conv_wgmma", "conv_rot180_f16");
/// 128 pixels x N output channels a block (N = 128 or 256), 256 threads (2 warpgroups), a
/// 4-buffer ring of (128 + N) rows of 64 channels (kernels/conv_wgmma.cu).
const PIX: usize = 128;

/// `(N, kernel, shared bytes)` for `cout` output channels: 64 for at most 64 (no half-idle
/// tensor work, two blocks an SM), 256 where 256-channel blocks leave at most 1/8 of the
/// channels idle (fewer bytes from L2 a flop), else 128.
fn tile(cout: usize) -> (usize, &'static Kernel, u32) {
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
    (n, kernel, (4 * (PIX + n) * 64 * 2) as u32)
}

impl Conv3x3 {
    /// `wgmma/128xN`: the block tile `pass` (fprop or dgrad) runs.
    pub(super) fn wgmma_label(&self, pass: ConvPass) -> String {
        let cout = if pass == ConvPass::Dgrad { self.problem.c } else { self.problem.k };
        format!("wgmma/{PIX}x{}", tile(cout).0)
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
        let (out, kernel, smem) = tile(cout);
        let blocks = (p.n * p.h * p.w).div_ceil(PIX) * cout.div_ceil(out);
        let cfg = LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (256, 1, 1), shared_bytes: smem };
        let dims = [p.n, p.h, p.w, cin, cout].map(|v| KArg::I32(v as i32));
        let args = [x, wt, bias, mask, y, dims[0], dims[1], dims[2], dims[3], dims[4], relu];
        // SAFETY: (const __half* x, const __half* wt, const __half* bias, const __half* mask,
        // __half* y, int n, int h, int w, int cin, int cout, int relu): x N*H*W*cin halves, wt
        // cout*9*cin, y N*H*W*cout, bias cout or null, mask N*H*W*cout or null, all checked by
        // the caller; N*H*W*max(C, K) and 9*K*C fit i32 (Conv3x3::new).
        unsafe { dev.launch(kernel, cfg, &args) }
    }
}
