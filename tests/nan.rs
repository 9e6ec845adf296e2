//! An overflow upstream is never hidden: a NaN passes every ReLU (the standalone kernel and
//! each fused conv / linear epilogue) and every max-pool window, as in PyTorch, so a forward
//! that overflowed fp16 ends in non-finite logits instead of finite garbage. An infinity
//! passes ReLU as itself, and a negative one becomes 0 (both rules agree there).

use half::f16;
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue, WinoTiling};
use vgg_cuda::ops::gemm::{linear_fwd_with, Algo, Tile};
use vgg_cuda::ops::{self, pool};
use vgg_cuda::problem::ConvProblem;
use vgg_cuda::{selftest, Device, Tensor};

/// Channel `NAN_CH`'s bias is NaN, `INF_CH`'s +inf and `NEG_CH`'s -inf; the rest are small.
const NAN_CH: usize = 3;
const INF_CH: usize = 5;
const NEG_CH: usize = 6;

fn bias(k: usize) -> Vec<f32> {
    (0..k)
        .map(|i| match i {
            NAN_CH => f32::NAN,
            INF_CH => f32::INFINITY,
            NEG_CH => f32::NEG_INFINITY,
            _ => 0.25 * (i % 3) as f32,
        })
        .collect()
}

/// Every element of channel (last dimension index) NAN_CH is NaN, INF_CH's +inf, NEG_CH's 0,
/// the others finite and >= 0 (ReLU applied).
fn check_channels(what: &str, y: &[f32], k: usize) {
    for (i, v) in y.iter().enumerate() {
        let ok = match i % k {
            NAN_CH => v.is_nan(),
            INF_CH => *v == f32::INFINITY,
            NEG_CH => *v == 0.0,
            _ => v.is_finite() && *v >= 0.0,
        };
        assert!(ok, "{what}: element {i} (channel {}) is {v}", i % k);
    }
}

fn small(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + seed) % 5) as f32 * 0.125 - 0.25).collect()
}

#[test]
fn nan_passes_every_fused_conv_relu() {
    let dev = Device::emu();
    // C = 16 reaches the Winograd / wgmma / implicit-GEMM kernels, C = 3 the first layer's.
    for p in [ConvProblem::new(1, 8, 8, 16, 16), ConvProblem::new(1, 9, 7, 3, 16)] {
        let up = |shape: &[usize], v: &[f32]| Tensor::from_f32(&dev, shape, v).unwrap();
        let x = up(&[p.n, p.h, p.w, p.c], &small(p.input_len(), 1));
        let w = up(&[p.k, 3, 3, p.c], &small(p.filter_len(), 2));
        let b = up(&[p.k], &bias(p.k));
        let mut ran = std::collections::HashSet::new();
        for algo in [ConvAlgo::Direct, ConvAlgo::Winograd2x2, ConvAlgo::Winograd4x4, ConvAlgo::Auto, ConvAlgo::Wgmma] {
            let Ok(conv) = Conv3x3::new(p, algo) else { continue };
            for tiling in [
                WinoTiling::Flat,
                WinoTiling::Region,
                WinoTiling::Tall,
                WinoTiling::Swizzled,
                WinoTiling::Tma,
                WinoTiling::TmaTall,
                WinoTiling::TmaWs,
                WinoTiling::TmaMc,
                WinoTiling::Tma2d,
            ] {
                let conv = conv.with_wino_tiling(tiling);
                let label = conv.label(ConvPass::Fprop);
                if !ran.insert(label.clone()) {
                    continue;
                }
                let mut ws = selftest::GuardedWorkspace::new(&dev, conv.workspace_bytes(ConvPass::Fprop)).unwrap();
                let mut y = Tensor::<f16>::empty(&dev, &[p.n, p.h, p.w, p.k]).unwrap();
                conv.fprop(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, &mut ws.ws).unwrap();
                check_channels(&format!("{p} {label}"), &y.to_f32().unwrap(), p.k);
            }
        }
        assert!(ran.len() >= if p.c == 3 { 2 } else { 5 }, "{p}: only {ran:?} ran");
    }
}

#[test]
fn nan_passes_every_fused_linear_relu() {
    let dev = Device::emu();
    let (m, k, n) = (5, 64, 16);
    let x = Tensor::from_f32(&dev, &[m, k], &small(m * k, 3)).unwrap();
    let w = Tensor::from_f32(&dev, &[n, k], &small(n * k, 4)).unwrap();
    let b = Tensor::from_f32(&dev, &[n], &bias(n)).unwrap();
    let tiles = ["t128x128", "t64x128", "t128x256", "t128x192", "w128x256"].map(|t| Tile::parse(t).unwrap());
    // Split 2 ends in the split-K reduction's epilogue, 1 in the main kernel's.
    let algos = tiles.iter().flat_map(|&tile| [1, 2].map(|splits| Algo::TensorCore { tile, splits }));
    for algo in [Algo::Simple, Algo::Auto].into_iter().chain(algos) {
        let mut y = Tensor::<f16>::empty(&dev, &[m, n]).unwrap();
        let mut ws = Tensor::<u8>::empty(&dev, &[1 << 20]).unwrap();
        linear_fwd_with(algo, &x, &w, Some(&b), true, &mut y, Some(&mut ws)).unwrap();
        check_channels(&format!("linear {algo:?}"), &y.to_f32().unwrap(), n);
    }
}

#[test]
fn nan_passes_relu_and_bias_act() {
    let dev = Device::emu();
    let v = [1.5, -2.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 3.0];
    let x = Tensor::from_f32(&dev, &[8], &v).unwrap();
    let mut y = Tensor::<f16>::empty(&dev, &[8]).unwrap();
    ops::relu_fwd(&x, &mut y).unwrap();
    let got = y.to_f32().unwrap();
    assert!(got[2].is_nan() && got[3] == f32::INFINITY, "{got:?}");
    assert_eq!([got[0], got[1], got[4], got[5], got[6], got[7]], [1.5, 0.0, 0.0, 0.0, 0.0, 3.0]);
    let c = 8;
    let xb = Tensor::from_f32(&dev, &[2, c], &small(2 * c, 5)).unwrap();
    let b = Tensor::from_f32(&dev, &[c], &bias(c)).unwrap();
    let mut yb = Tensor::<f16>::empty(&dev, &[2, c]).unwrap();
    ops::bias_act(&xb, &b, &mut yb, true).unwrap();
    check_channels("bias_act", &yb.to_f32().unwrap(), c);
}

/// A NaN anywhere in a window is its maximum (the first NaN, in row-major order), and the
/// gradient goes there; a window with none keeps the first-maximum rule.
#[test]
fn max_pool_keeps_a_nan_wherever_it_is_in_the_window() {
    let dev = Device::emu();
    // One 2x2 window per channel: channel q's NaN at window position q - 1 (channel 0: none),
    // channel 4's NaNs at positions 1 and 3 (the first wins).
    let (h, w, c) = (2, 2, 5);
    let mut x = vec![0f32; h * w * c];
    for pos in 0..4 {
        for ch in 0..c {
            x[pos * c + ch] = [1.0, 4.0, 2.0, 3.0][pos];
        }
    }
    for ch in 1..4 {
        x[(ch - 1) * c + ch] = f32::NAN;
    }
    x[c + 4] = f32::NAN;
    x[3 * c + 4] = f32::NAN;
    assert_eq!(vgg_cuda::reference::maxpool2x2_fwd(1, h, w, c, &x)[1..].iter().filter(|v| v.is_nan()).count(), 4);
    let xt = Tensor::from_f32(&dev, &[1, h, w, c], &x).unwrap();
    let mut y = Tensor::<f16>::empty(&dev, &[1, 1, 1, c]).unwrap();
    let mut arg = Tensor::<u8>::empty(&dev, &[1, 1, 1, c]).unwrap();
    pool::maxpool2x2_fwd_arg(&xt, &mut y, &mut arg).unwrap();
    let got = y.to_f32().unwrap();
    assert_eq!(got[0], 4.0);
    assert!(got[1..].iter().all(|v| v.is_nan()), "{got:?}");
    assert_eq!(arg.to_host().unwrap(), vec![1, 0, 1, 2, 1]);
    // Both backward paths route the gradient to the NaN (or the maximum).
    let dy = Tensor::from_f32(&dev, &[1, 1, 1, c], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let want = vgg_cuda::reference::maxpool2x2_bwd(1, h, w, c, &x, &[1.0, 2.0, 3.0, 4.0, 5.0]);
    for (q, at) in [1, 0, 1, 2, 1].into_iter().enumerate() {
        assert_eq!(want[at * c + q], (q + 1) as f32, "reference, channel {q}");
    }
    let mut dx = Tensor::<f16>::empty(&dev, &[1, h, w, c]).unwrap();
    pool::maxpool2x2_bwd(&xt, &dy, &mut dx).unwrap();
    assert_eq!(dx.to_f32().unwrap(), want, "bwd from x");
    let mut dx = Tensor::<f16>::empty(&dev, &[1, h, w, c]).unwrap();
    pool::maxpool2x2_bwd_arg(&arg, &dy, &mut dx).unwrap();
    assert_eq!(dx.to_f32().unwrap(), want, "bwd from arg");
}
