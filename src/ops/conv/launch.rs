//! [`Conv3x3`]'s launches: the filter transforms, the channel padding of C < 8 or not a multiple
//! of 8, and fprop, dgrad and wgrad by each algorithm (wgmma's in [`super::wgmma`]), behind
//! checks of every tensor's shape, device and workspace, and that they are disjoint in memory:
//! no pass runs in place (an output reads a 3x3 neighbourhood, or the whole batch), and every
//! pass may write its workspace.

// The parent's kernels, tile constants and helpers are this file's vocabulary.
use super::*;
use crate::tensor::{check_disjoint, Span};

/// fprop's (and its filter transform's) tensors are disjoint: checked before anything is written.
fn fprop_disjoint(
    x: &Tensor<f16>,
    w: &Tensor<f16>,
    b: Option<&Tensor<f16>>,
    y: &Tensor<f16>,
    ws: &Tensor<u8>,
) -> Result<()> {
    let reads = [x.span("x (NHWC)"), w.span("filters w (KRSC)"), Span::of(b, "bias")];
    check_disjoint("conv3x3 fprop", &[y.span("y (NHWC)"), ws.span("workspace")], &reads)
}

/// dgrad's (and its filter transform's) tensors are disjoint: checked before anything is written.
fn dgrad_disjoint(
    dy: &Tensor<f16>,
    w: &Tensor<f16>,
    m: Option<&Tensor<f16>>,
    dx: &Tensor<f16>,
    ws: &Tensor<u8>,
) -> Result<()> {
    let reads = [dy.span("dy (NHWC)"), w.span("filters w (KRSC)"), Span::of(m, "relu mask (NHWC)")];
    check_disjoint("conv3x3 dgrad", &[dx.span("dx (NHWC)"), ws.span("workspace")], &reads)
}

impl Conv3x3 {
    fn check_ws(&self, dev: &Device, pass: ConvPass, ws: &Tensor<u8>) -> Result<()> {
        if !ws.device().same(dev) {
            return Err(crate::tensor::wrong_device("conv3x3 workspace", dev, ws.device()));
        }
        let need = self.workspace_bytes(pass);
        ensure_shape!(
            ws.len() >= need,
            "conv3x3 {} {pass:?}: workspace has {} bytes, needs {need}",
            self.problem,
            ws.len()
        );
        Ok(())
    }

    /// Filter transform for the Winograd fprop: `U = G w G^T` into `ws` (no-op for Direct); a
    /// channel-padded problem pads `w` into `ws` first and transforms that.
    /// [`Conv3x3::fprop`] does this itself; with [`Conv3x3::fprop_prepared`] a training step
    /// transforms once and reuses `ws`.
    pub fn prepare_filter(&self, w: &Tensor<f16>, ws: &mut Tensor<u8>) -> Result<()> {
        self.transform(w, ws, ConvPass::Fprop)
    }

    /// The dgrad twin of [`Conv3x3::prepare_filter`]: the 180-degree rotated filter with K and
    /// C swapped, transformed, into `ws` (no-op for Direct), for [`Conv3x3::dgrad_prepared`].
    pub fn prepare_filter_dgrad(&self, w: &Tensor<f16>, ws: &mut Tensor<u8>) -> Result<()> {
        self.transform(w, ws, ConvPass::Dgrad)
    }

    fn transform(&self, w: &Tensor<f16>, ws: &mut Tensor<u8>, pass: ConvPass) -> Result<()> {
        let (p, dev) = (&self.problem, w.device().clone());
        w.check_shape(&dev, "conv3x3 filters w (KRSC)", &self.w_shape())?;
        self.check_ws(&dev, pass, ws)?;
        check_disjoint("conv3x3 filter transform", &[ws.span("workspace")], &[w.span("filters w (KRSC)")])?;
        if !self.tc(pass) {
            return Ok(());
        }
        if pass == ConvPass::Dgrad && self.algo(pass) == ConvAlgo::Wgmma {
            return self.wgmma_rotate(&dev, w.arg(), ws);
        }
        // Only a Winograd fprop gets here padded (the implicit GEMMs pad in their kernels, a padded
        // Winograd dgrad runs Direct): w -> [K,3,3,Cp] after U.
        let src = self.tc_w(w, ws);
        if self.padded(pass) {
            self.pad_channels(&dev, w.arg(), src, p.k * 9)?;
        }
        let Some(points) = self.wino_points(pass) else {
            return Ok(()); // the implicit GEMM reads the filters as they are
        };
        let kernel = if points == 36 { &WINO4_FILTER } else { &WINO_FILTER };
        // One thread per (output, input) pair of U, padded ones included (F(2x2) writes zeros).
        let (out, inp) = self.u_dims(pass);
        let cfg = LaunchConfig::for_elements(out * inp, ELEMENTWISE_THREADS)?;
        let args = [
            src,
            ws.arg_mut(),
            KArg::I32(int("K", p.k)?),
            KArg::I32(int("Cp", self.pass_c(pass))?),
            KArg::I32((pass == ConvPass::Dgrad) as i32),
        ];
        // SAFETY: (const __half* w, __half* u, int k, int c, int dgrad): src holds K*9*Cp halves
        // (w itself, or its padded copy in ws), ws at least u_bytes before it (checked above;
        // pad_offsets puts the padded copy after them), which covers every (out, in) < u_dims.
        unsafe { dev.launch(kernel, cfg, &args) }
    }

    /// `dst[row][j] = src[row][j]` for `j < C`, 0 for `C <= j < Cp`, over `rows` rows.
    fn pad_channels(&self, dev: &Device, src: KArg, dst: KArg, rows: usize) -> Result<()> {
        let (c, cp) = (self.problem.c, self.cp);
        let cfg = LaunchConfig::for_elements(rows * (cp / 8), ELEMENTWISE_THREADS)?;
        let args = [src, dst, KArg::I64(rows as i64), KArg::I32(int("C", c)?), KArg::I32(int("Cp", cp)?)];
        // SAFETY: (const __half* src, __half* dst, long long rows, int c, int cp): callers pass a
        // src of rows*C halves (a checked tensor) and a 16-byte-aligned dst of rows*Cp halves inside
        // a workspace that check_ws has found at least workspace_bytes long.
        unsafe { dev.launch(&PAD_CHANNELS, cfg, &args) }
    }

    /// The filters as the Winograd fprop's transform reads them: w itself, or, in a
    /// channel-padded problem, its padded copy in `ws` (written by [`Conv3x3::prepare_filter`]).
    fn tc_w(&self, w: &Tensor<f16>, ws: &Tensor<u8>) -> KArg {
        if self.padded(ConvPass::Fprop) {
            KArg::Ptr(ws.device_ptr() + self.pad_offsets().0 as u64)
        } else {
            w.arg()
        }
    }

    /// x as the tensor-core kernel of `pass` (fprop, wgrad) reads it: x itself, or, in a
    /// channel-padded problem, its copy padded to Cp channels, written here into `ws` at the
    /// pass's offset ([`Conv3x3::pad_offsets`]).
    fn tc_x(&self, dev: &Device, pass: ConvPass, x: &Tensor<f16>, ws: &mut Tensor<u8>) -> Result<KArg> {
        if !self.padded(pass) {
            return Ok(x.arg());
        }
        let offset = if pass == ConvPass::Wgrad { self.pad_offsets().2 } else { self.pad_offsets().1 };
        let xp = KArg::Ptr(ws.device_ptr() + offset as u64);
        let p = &self.problem;
        self.pad_channels(dev, x.arg(), xp, p.n * p.h * p.w)?;
        Ok(xp)
    }

    /// `y = epi(conv(x, w))`: x `[N,H,W,C]`, w `[K,3,3,C]`, bias `[K]` (required by `Bias` and
    /// `BiasRelu`, refused by `None`), y `[N,H,W,K]`. Transforms the filters into `ws` first.
    pub fn fprop(
        &self,
        x: &Tensor<f16>,
        w: &Tensor<f16>,
        bias: Option<&Tensor<f16>>,
        epi: Epilogue,
        y: &mut Tensor<f16>,
        ws: &mut Tensor<u8>,
    ) -> Result<()> {
        fprop_disjoint(x, w, bias, y, ws)?;
        self.prepare_filter(w, ws)?;
        self.fprop_prepared(x, w, bias, epi, y, ws)
    }

    /// As [`Conv3x3::fprop`], but the Winograd path reads the filters from `ws` as
    /// [`Conv3x3::prepare_filter`] left them (`w` is then only checked for its shape; the
    /// Direct path reads `w`). A channel-padded problem writes padded x into `ws` past the filters.
    pub fn fprop_prepared(
        &self,
        x: &Tensor<f16>,
        w: &Tensor<f16>,
        bias: Option<&Tensor<f16>>,
        epi: Epilogue,
        y: &mut Tensor<f16>,
        ws: &mut Tensor<u8>,
    ) -> Result<()> {
        let (p, dev) = (&self.problem, x.device().clone());
        x.check_shape(&dev, "conv3x3 x (NHWC)", &self.x_shape())?;
        w.check_shape(&dev, "conv3x3 filters w (KRSC)", &self.w_shape())?;
        y.check_shape(&dev, "conv3x3 y (NHWC)", &self.y_shape())?;
        self.check_ws(&dev, ConvPass::Fprop, ws)?;
        fprop_disjoint(x, w, bias, y, ws)?;
        let bias_arg = match (epi, bias) {
            (Epilogue::None, None) => KArg::Ptr(0),
            (Epilogue::None, Some(_)) => return Err(Error::Shape("conv3x3: bias given with Epilogue::None".into())),
            (_, None) => return Err(Error::Shape(format!("conv3x3: Epilogue::{epi:?} needs a bias"))),
            (_, Some(b)) => {
                b.check_shape(&dev, "conv3x3 bias", &[p.k])?;
                b.arg()
            }
        };
        let relu = KArg::I32((epi == Epilogue::BiasRelu) as i32);
        let dims = self.dims(self.pass_c(ConvPass::Fprop))?;
        if self.algo(ConvPass::Fprop) == ConvAlgo::Wgmma {
            // KRSC filters are [cout][tap][cin] as they are.
            self.wgmma_launch(&dev, ConvPass::Fprop, x.arg(), w.arg(), bias_arg, KArg::Ptr(0), y.arg_mut(), relu)
        } else if self.algo(ConvPass::Fprop) == ConvAlgo::ImplicitGemm {
            let tiles = p.h.div_ceil(IGEMM_C8_ROWS) * p.w.div_ceil(IGEMM_C8_COLS);
            let blocks = p.n.saturating_mul(tiles).saturating_mul(p.k.div_ceil(IGEMM_FPROP_OUT));
            let cfg =
                LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (256, 1, 1), shared_bytes: IGEMM_FPROP_SMEM };
            let args = [x.arg(), w.arg(), bias_arg, y.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], relu];
            // SAFETY: (const __half* x, const __half* w, const __half* bias, __half* y, int n, int h,
            // int w, int c, int k, int relu): sizes checked above (C <= 8 and K a multiple of 8, as
            // Conv3x3::new planned it), bias K halves or null; the grid is N x the 8 x 32 tiles of
            // an image x the 64-channel blocks, as the kernel splits blockIdx.x.
            unsafe { dev.launch(&IGEMM_FPROP_C8, cfg, &args) }
        } else if self.algo(ConvPass::Fprop) == ConvAlgo::Winograd4x4 {
            let xa = self.tc_x(&dev, ConvPass::Fprop, x, ws)?;
            let cfg = self.wino4_config(p.k)?;
            let args = [xa, ws.arg(), bias_arg, y.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], relu];
            // SAFETY: (const __half* x, const __half* u, const __half* bias, __half* y, int n, int h,
            // int w, int c, int k, int relu): c = Cp; x is N*H*W*Cp halves (x itself, or its padded
            // copy in ws), u = 36*K*Cp halves at the start of ws, y and bias (K or null) checked above.
            unsafe { dev.launch(&WINO4_FPROP, cfg, &args) }
        } else if self.tc(ConvPass::Fprop) {
            let xa = self.tc_x(&dev, ConvPass::Fprop, x, ws)?;
            let (cfg, rw) = self.wino_config(p.k)?;
            let args = [xa, ws.arg(), bias_arg, y.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], relu, rw];
            // SAFETY: (const __half* x, const __half* u, const __half* bias, __half* y, int n, int h,
            // int w, int c, int k, int relu, int rw): c = Cp; x is N*H*W*Cp halves (x itself, or its
            // padded copy in ws), u = 16*K*Cp halves at the start of ws, y and bias (K or null)
            // checked above; rw 0 or a power of two dividing 64, matching the grid.
            unsafe { dev.launch(&WINO_FPROP, cfg, &args) }
        } else {
            let cfg = LaunchConfig::for_elements(p.output_len(), ELEMENTWISE_THREADS)?;
            let args = [x.arg(), w.arg(), bias_arg, y.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], relu];
            // SAFETY: (const __half* x, const __half* w, const __half* bias, __half* y, int n, int h,
            // int w, int c, int k, int relu): sizes checked above, bias K halves or null.
            unsafe { dev.launch(&DIRECT_FPROP, cfg, &args) }
        }
    }

    /// `dx = conv_transpose(dy, w)`, zeroed where `relu_mask` (the previous layer's forward
    /// output, `[N,H,W,C]`) is not > 0: dy `[N,H,W,K]`, dx `[N,H,W,C]`. Transforms the
    /// (rotated, K<->C swapped) filters into `ws` first.
    ///
    /// ```
    /// use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass};
    /// use vgg_cuda::{problem::ConvProblem, Device, Tensor};
    /// let dev = Device::emu();
    /// let p = ConvProblem::new(1, 4, 4, 8, 8);
    /// let conv = Conv3x3::new(p, ConvAlgo::Auto)?;
    /// // The identity filter (output channel k takes input channel k at the centre tap), so
    /// // dx = dy, zeroed where the mask (the previous layer's output) is not positive: pixel 0.
    /// let mut wv = vec![0.0; p.filter_len()];
    /// for k in 0..8 {
    ///     wv[((k * 3 + 1) * 3 + 1) * 8 + k] = 1.0;
    /// }
    /// let w = Tensor::from_f32(&dev, &[8, 3, 3, 8], &wv)?;
    /// let dyv: Vec<f32> = (0..p.output_len()).map(|i| (i % 5) as f32 - 2.0).collect();
    /// let dy = Tensor::from_f32(&dev, &[1, 4, 4, 8], &dyv)?;
    /// let mut maskv = vec![1.0; p.input_len()];
    /// maskv[..8].fill(-1.0);
    /// let mask = Tensor::from_f32(&dev, &[1, 4, 4, 8], &maskv)?;
    /// let mut dx = Tensor::empty(&dev, &[1, 4, 4, 8])?;
    /// let mut ws = Tensor::<u8>::empty(&dev, &[conv.workspace_bytes(ConvPass::Dgrad)])?;
    /// conv.dgrad(&dy, &w, Some(&mask), &mut dx, &mut ws)?;
    /// let want: Vec<f32> = dyv.iter().enumerate().map(|(i, &v)| if i < 8 { 0.0 } else { v }).collect();
    /// assert_eq!(dx.to_f32()?, want);
    /// # Ok::<(), vgg_cuda::Error>(())
    /// ```
    pub fn dgrad(
        &self,
        dy: &Tensor<f16>,
        w: &Tensor<f16>,
        relu_mask: Option<&Tensor<f16>>,
        dx: &mut Tensor<f16>,
        ws: &mut Tensor<u8>,
    ) -> Result<()> {
        dgrad_disjoint(dy, w, relu_mask, dx, ws)?;
        self.prepare_filter_dgrad(w, ws)?;
        self.dgrad_prepared(dy, w, relu_mask, dx, ws)
    }

    /// As [`Conv3x3::dgrad`], the Winograd path reading `ws` as
    /// [`Conv3x3::prepare_filter_dgrad`] left it.
    pub fn dgrad_prepared(
        &self,
        dy: &Tensor<f16>,
        w: &Tensor<f16>,
        relu_mask: Option<&Tensor<f16>>,
        dx: &mut Tensor<f16>,
        ws: &Tensor<u8>,
    ) -> Result<()> {
        let (p, dev) = (&self.problem, dy.device().clone());
        dy.check_shape(&dev, "conv3x3 dy (NHWC)", &self.y_shape())?;
        w.check_shape(&dev, "conv3x3 filters w (KRSC)", &self.w_shape())?;
        dx.check_shape(&dev, "conv3x3 dx (NHWC)", &self.x_shape())?;
        self.check_ws(&dev, ConvPass::Dgrad, ws)?;
        dgrad_disjoint(dy, w, relu_mask, dx, ws)?;
        let mask = match relu_mask {
            Some(m) => {
                m.check_shape(&dev, "conv3x3 relu mask (NHWC)", &self.x_shape())?;
                m.arg()
            }
            None => KArg::Ptr(0),
        };
        let dims = self.dims(p.c)?;
        if self.algo(ConvPass::Dgrad) == ConvAlgo::Wgmma {
            // ws holds the rotated filters, [C][9][K] (prepare_filter_dgrad).
            let (none, no_relu) = (KArg::Ptr(0), KArg::I32(0));
            self.wgmma_launch(&dev, ConvPass::Dgrad, dy.arg(), ws.arg(), none, mask, dx.arg_mut(), no_relu)
        } else if self.algo(ConvPass::Dgrad) == ConvAlgo::ImplicitGemm {
            let tiles = p.h.div_ceil(IGEMM_C8_ROWS) * p.w.div_ceil(IGEMM_C8_COLS);
            let blocks = p.n.saturating_mul(tiles);
            let cfg =
                LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (256, 1, 1), shared_bytes: IGEMM_DGRAD_SMEM };
            let args = [dy.arg(), w.arg(), mask, dx.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4]];
            // SAFETY: (const __half* dy, const __half* w, const __half* mask, __half* dx, int n,
            // int h, int w, int c, int k): sizes checked above (C <= 8 and K a multiple of 8, as
            // Conv3x3::new planned it); w K*9*C halves, mask N*H*W*C halves or null; the grid is
            // N x the 8 x 32 tiles of an image, as the kernel splits blockIdx.x.
            unsafe { dev.launch(&IGEMM_DGRAD_C8, cfg, &args) }
        } else if self.algo(ConvPass::Dgrad) == ConvAlgo::Winograd4x4 {
            let cfg = self.wino4_config(p.c)?;
            let args = [dy.arg(), ws.arg(), mask, dx.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4]];
            // SAFETY: (const __half* dy, const __half* u, const __half* mask, __half* dx, int n,
            // int h, int w, int c, int k): sizes checked above; u = 36*C*K halves in ws, mask
            // N*H*W*C halves or null.
            unsafe { dev.launch(&WINO4_DGRAD, cfg, &args) }
        } else if self.tc(ConvPass::Dgrad) {
            let (cfg, rw) = self.wino_config(p.c)?;
            let args = [dy.arg(), ws.arg(), mask, dx.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], rw];
            // SAFETY: (const __half* dy, const __half* u, const __half* mask, __half* dx, int n,
            // int h, int w, int c, int k, int rw): sizes checked above; u = 16*C*K halves in ws,
            // mask N*H*W*C halves or null; rw 0 or a power of two dividing 64, matching the grid.
            unsafe { dev.launch(&WINO_DGRAD, cfg, &args) }
        } else {
            let cfg = LaunchConfig::for_elements(p.input_len(), ELEMENTWISE_THREADS)?;
            let args = [dy.arg(), w.arg(), mask, dx.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4]];
            // SAFETY: (const __half* dy, const __half* w, const __half* mask, __half* dx, int n,
            // int h, int w, int c, int k): sizes checked above; w K*9*C halves, mask N*H*W*C
            // halves or null.
            unsafe { dev.launch(&DIRECT_DGRAD, cfg, &args) }
        }
    }

    /// `dw[k,r,s,c] = sum_{n,h,w} dy[n,h,w,k] x[n,h+r-1,w+s-1,c]` (KRSC, fp32) and
    /// `db[k] = sum dy[..,k]` (fp32) when `db` is given; fp32 accumulation over the whole batch,
    /// split into fixed pixel chunks whose partial sums `ws` holds, added in chunk order. The
    /// tensor-core path of a channel-padded problem pads x into `ws` and sums at Cp channels; the
    /// reduction drops the padded ones.
    ///
    /// ```
    /// use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass};
    /// use vgg_cuda::{problem::ConvProblem, Device, Tensor};
    /// let dev = Device::emu();
    /// let p = ConvProblem::new(1, 4, 4, 8, 8);
    /// let conv = Conv3x3::new(p, ConvAlgo::Auto)?;
    /// // x = dy = 1: dw[k][r][s][c] counts the output pixels whose tap (r, s) lands inside the
    /// // 4x4 image (3 rows for r = 0 or 2, 4 for r = 1; columns alike); db[k] counts them all.
    /// let x = Tensor::from_f32(&dev, &[1, 4, 4, 8], &vec![1.0; p.input_len()])?;
    /// let dy = Tensor::from_f32(&dev, &[1, 4, 4, 8], &vec![1.0; p.output_len()])?;
    /// let (mut dw, mut db) = (Tensor::<f32>::empty(&dev, &[8, 3, 3, 8])?, Tensor::<f32>::empty(&dev, &[8])?);
    /// let mut ws = Tensor::<u8>::empty(&dev, &[conv.workspace_bytes(ConvPass::Wgrad)])?;
    /// conv.wgrad(&x, &dy, &mut dw, Some(&mut db), &mut ws)?;
    /// let dw = dw.to_host()?;
    /// let taps = [3.0, 4.0, 3.0];
    /// for (i, v) in dw.iter().enumerate() {
    ///     let (r, s) = ((i / 8 / 3) % 3, (i / 8) % 3);
    ///     assert_eq!(*v, taps[r] * taps[s], "dw[{i}]");
    /// }
    /// assert_eq!(db.to_host()?, vec![16.0; 8]);
    /// # Ok::<(), vgg_cuda::Error>(())
    /// ```
    pub fn wgrad(
        &self,
        x: &Tensor<f16>,
        dy: &Tensor<f16>,
        dw: &mut Tensor<f32>,
        db: Option<&mut Tensor<f32>>,
        ws: &mut Tensor<u8>,
    ) -> Result<()> {
        let (p, dev) = (&self.problem, x.device().clone());
        x.check_shape(&dev, "conv3x3 x (NHWC)", &self.x_shape())?;
        dy.check_shape(&dev, "conv3x3 dy (NHWC)", &self.y_shape())?;
        dw.check_shape(&dev, "conv3x3 dw (KRSC)", &self.w_shape())?;
        if let Some(b) = &db {
            b.check_shape(&dev, "conv3x3 db", &[p.k])?;
        }
        self.check_ws(&dev, ConvPass::Wgrad, ws)?;
        let writes = [dw.span("dw (KRSC)"), Span::of(db.as_deref(), "db"), ws.span("workspace")];
        check_disjoint("conv3x3 wgrad", &writes, &[x.span("x (NHWC)"), dy.span("dy (NHWC)")])?;
        let (chunks, chunk) = self.wgrad_split();
        let dims = self.dims(self.pass_c(ConvPass::Wgrad))?;
        let nw = p.filter_len() + p.k;
        if self.tc(ConvPass::Wgrad) {
            let xa = self.tc_x(&dev, ConvPass::Wgrad, x, ws)?;
            let (m, _, kernel) = self.wgrad_tile();
            let wgmma = self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma;
            if wgmma {
                self.need_wgmma(&dev)?;
            }
            // The TMA wgrad takes x and dy as tensor maps, and a producer warpgroup.
            let (threads, xa, dya) = if self.wgrad_2d() {
                let xmap = self.nhwc_map_boxed(&dev, xa, p.c, WGRAD_2D_X_BOX.to_vec())?;
                (WGRAD_TMA_THREADS, xmap, self.nhwc_map_boxed(&dev, dy.arg(), p.k, WGRAD_2D_DY_BOX.to_vec())?)
            } else if self.wgrad_tma() {
                let maps = (self.nhwc_map(&dev, xa, p.c)?, self.nhwc_map(&dev, dy.arg(), p.k)?);
                (WGRAD_TMA_THREADS, maps.0, maps.1)
            } else {
                (WG_THREADS, xa, dy.arg())
            };
            // Clusters of 2 along x (Device::launch_cluster's are 1-D) pair k blocks 2 y and 2 y + 1
            // of one filter row and c-block: x = rank + 2 (r + 3 c-block), y = k-block pairs (the
            // last one's rank 1 past K when the k blocks are odd).
            let cluster = if self.wgrad_tma_mc() { super::wgmma::MC_CLUSTER } else { 1 };
            let grid = (cluster * self.wgrad_grid_x(), p.k.div_ceil(m).div_ceil(cluster), chunks);
            let cfg = LaunchConfig {
                grid: LaunchConfig::grid_of("conv3x3 wgrad", grid.0, grid.1, grid.2)?,
                block: (threads, 1, 1),
                shared_bytes: self.wgrad_shared(),
            };
            let args =
                [xa, dya, ws.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], KArg::I32(int("chunk", chunk)?)];
            // SAFETY: (const __half* x, const __half* dy, float* part, int n, int h, int w, int c,
            // int k, int chunk): c = Cp; x is N*H*W*Cp halves (x, or its padded copy in ws past the
            // partials), dy checked above; part = wgrad_parts()*(K*9*Cp+K) floats at the start of ws
            // (2 a chunk for the TMA wgrad's k64 kernels). The TMA wgrad takes the same list with x
            // and dy as tensor maps of those buffers (nhwc_map), which it reads only inside their
            // extents, and a chunk of whole 64-position stages (128 for its k64 kernels); its multicast
            // kernels in clusters of 2 (grid x even), refused on a device without clusters.
            unsafe { dev.launch_cluster(kernel, cfg, cluster as u32, &args)? };
        } else {
            let blocks = u32::try_from(nw.div_ceil(ELEMENTWISE_THREADS as usize))
                .map_err(|_| Error::Shape(format!("conv3x3 {p}: too many weights for one launch")))?;
            let cfg =
                LaunchConfig { grid: (blocks, chunks as u32, 1), block: (ELEMENTWISE_THREADS, 1, 1), shared_bytes: 0 };
            let args =
                [x.arg(), dy.arg(), ws.arg_mut(), dims[0], dims[1], dims[2], dims[3], dims[4], KArg::I64(chunk as i64)];
            // SAFETY: (const __half* x, const __half* dy, float* part, int n, int h, int w, int c,
            // int k, long long chunk): sizes checked above; part = chunks*(K*9*C+K) floats in ws.
            unsafe { dev.launch(&DIRECT_WGRAD, cfg, &args)? };
        }
        let cfg = LaunchConfig::for_elements(nw, ELEMENTWISE_THREADS)?;
        let db_arg = db.map_or(KArg::Ptr(0), |b| b.arg_mut());
        let args = [
            ws.arg(),
            dw.arg_mut(),
            db_arg,
            KArg::I64(p.filter_len() as i64),
            dims[4],
            KArg::I32(int("C", p.c)?),
            dims[3],
            KArg::I32(self.wgrad_parts() as i32),
        ];
        // SAFETY: (const float* part, float* dw, float* db, long long nw, int k, int c, int cp,
        // int chunks): part holds wgrad_parts()*(K*9*cp+K) floats written above (cp = Cp for the
        // tensor-core path, C for Direct), dw nw = K*9*C floats, db K floats or null.
        unsafe { dev.launch(&WGRAD_REDUCE, cfg, &args) }
    }

    /// The shapes every pass checks: x and dx `[N,H,W,C]` (NHWC), w and dw `[K,3,3,C]` (KRSC),
    /// y and dy `[N,H,W,K]`. Checked whole, not by length: an NCHW tensor of the right size
    /// would otherwise be read as NHWC.
    fn x_shape(&self) -> [usize; 4] {
        let p = &self.problem;
        [p.n, p.h, p.w, p.c]
    }
    fn w_shape(&self) -> [usize; 4] {
        let p = &self.problem;
        [p.k, 3, 3, p.c]
    }
    fn y_shape(&self) -> [usize; 4] {
        let p = &self.problem;
        [p.n, p.h, p.w, p.k]
    }

    /// `[n, h, w, c, k]` as kernel ints, with `c` channels (C, or Cp for the padded passes).
    fn dims(&self, c: usize) -> Result<[KArg; 5]> {
        let p = &self.problem;
        Ok([
            KArg::I32(int("N", p.n)?),
            KArg::I32(int("H", p.h)?),
            KArg::I32(int("W", p.w)?),
            KArg::I32(int("C", c)?),
            KArg::I32(int("K", p.k)?),
        ])
    }

    /// Dynamic shared memory of the tensor-core wgrad's main loop, in bytes.
    fn wgrad_shared(&self) -> u32 {
        let (m, n, _) = self.wgrad_tile();
        match (self.algo(ConvPass::Wgrad) == ConvAlgo::Wgmma, self.wgrad_halo()) {
            _ if self.wgrad_2d() => WGRAD_2D_SMEM,
            (true, true) if self.wgrad_tma() => wgrad_wgmma_tma_smem(n / 3, self.wgrad_tma_k64(), self.wgrad_tma_mc()),
            (true, true) => wgrad_wgmma_halo_smem(n / 3),
            (true, false) => WGRAD_WGMMA_SMEM,
            _ => (4 * WG_P * (m + 8 + n + 8) * 2) as u32,
        }
    }

    /// Dynamic shared memory a block of `pass`'s largest launch asks for, in bytes (0 for
    /// Direct): what a GPU must allow a block ([`Device::max_shared_per_block`]) for the pass to
    /// run there. The launches take their sizes from the same functions.
    pub fn shared_bytes(&self, pass: ConvPass) -> usize {
        match (pass, self.algo(pass)) {
            (_, ConvAlgo::Direct) => 0,
            (ConvPass::Wgrad, _) => self.wgrad_shared() as usize,
            (_, ConvAlgo::Wgmma) => self.wgmma_tile(pass).shared,
            (ConvPass::Dgrad, ConvAlgo::ImplicitGemm) => IGEMM_DGRAD_SMEM as usize,
            (_, ConvAlgo::ImplicitGemm) => IGEMM_FPROP_SMEM as usize,
            (_, ConvAlgo::Winograd4x4) => WINO4_SMEM as usize,
            _ => WINO_SMEM as usize,
        }
    }

    /// This plan for `dev`: each pass whose launch asks more shared memory a block than `dev`
    /// allows runs Direct instead (slow, but it fits any GPU), so that a model planned for
    /// sm_90's tiles still trains on one with less (sm_86 / sm_89: 99 KiB). Unchanged where
    /// everything fits.
    pub fn fitted_to(mut self, dev: &Device) -> Self {
        let limit = dev.max_shared_per_block();
        for (i, pass) in [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].into_iter().enumerate() {
            if self.shared_bytes(pass) > limit {
                self.algos[i] = ConvAlgo::Direct;
            }
        }
        if self.algos == [ConvAlgo::Direct; 3] {
            self.cp = self.problem.c; // as Conv3x3::new plans Direct: nothing padded
        }
        self
    }

    /// Grid of the Winograd main loop with `cout` output channels (one dimension, channel
    /// blocks fastest: the kernel splits blockIdx.x) and its `rw` argument.
    fn wino_config(&self, cout: usize) -> Result<(LaunchConfig, KArg)> {
        let p = &self.problem;
        let (th, tw) = (p.h.div_ceil(2), p.w.div_ceil(2));
        let rw = self.wino_region_width();
        let (tile_blocks, smem) = match WINO_TILES.checked_div(rw) {
            None => ((p.n * th * tw).div_ceil(WINO_TILES), WINO_SMEM),
            Some(rh) => (p.n * th.div_ceil(rh) * tw.div_ceil(rw), WINO_SMEM),
        };
        let blocks = tile_blocks * cout.div_ceil(WINO_OUT);
        let cfg = LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (WINO_THREADS, 1, 1), shared_bytes: smem };
        Ok((cfg, KArg::I32(rw as i32)))
    }

    /// Grid of the Winograd F(4x4) main loop with `cout` output channels (channel blocks
    /// fastest, as for F(2x2)); flat tiles of 4x4 outputs.
    fn wino4_config(&self, cout: usize) -> Result<LaunchConfig> {
        let p = &self.problem;
        let tiles = p.n * p.h.div_ceil(4) * p.w.div_ceil(4);
        let blocks = tiles.div_ceil(WINO4_TILES) * cout.div_ceil(WINO4_OUT);
        Ok(LaunchConfig { grid: (grid_x(p, blocks)?, 1, 1), block: (WINO4_THREADS, 1, 1), shared_bytes: WINO4_SMEM })
    }
}
