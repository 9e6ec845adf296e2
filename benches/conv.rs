//! Criterion bench of the 3x3 convolutions, fprop / dgrad / wgrad on a few VGG-16 layers (fprop
//! and dgrad also under Winograd F(4x4)):
//! on the GPU when one is usable (batch 16), else on the emulator at tiny sizes (layers shrunk
//! 16x, at most 32 channels, batch 1). Wall-clock per call including a device synchronise;
//! `vgg bench conv` is the measurement to quote (device events, cuDNN beside it).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use half::f16;
use std::time::Duration;
use vgg_cuda::bench::random_f16;
use vgg_cuda::ops::conv::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
use vgg_cuda::problem::{vgg16_layers, vgg16_layers_reduced, NamedProblem};
use vgg_cuda::{Device, Result, Tensor};

fn device_and_layers() -> (Device, Vec<NamedProblem>) {
    let (dev, all, pick) = match Device::cuda(0) {
        Ok(d) => (d, vgg16_layers(16), ["conv2_2", "conv4_1"]),
        Err(_) => (Device::emu(), vgg16_layers_reduced(1, 16, 32), ["conv1_2", "conv3_1"]),
    };
    let layers = all.into_iter().filter(|l| pick.contains(&l.name)).collect();
    (dev, layers)
}

struct Buffers {
    x: Tensor<f16>,
    w: Tensor<f16>,
    dy: Tensor<f16>,
    y: Tensor<f16>,
    dx: Tensor<f16>,
    dw: Tensor<f32>,
    ws: Tensor<u8>,
}

fn buffers(dev: &Device, conv: &Conv3x3) -> Result<Buffers> {
    let p = conv.problem();
    let ws = [ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad].map(|q| conv.workspace_bytes(q));
    Ok(Buffers {
        x: Tensor::from_host(dev, &[p.n, p.h, p.w, p.c], &random_f16(p.input_len(), 1.0, 1))?,
        w: Tensor::from_host(dev, &[p.k, 3, 3, p.c], &random_f16(p.filter_len(), 0.1, 2))?,
        dy: Tensor::from_host(dev, &[p.n, p.h, p.w, p.k], &random_f16(p.output_len(), 0.1, 3))?,
        y: Tensor::empty(dev, &[p.n, p.h, p.w, p.k])?,
        dx: Tensor::empty(dev, &[p.n, p.h, p.w, p.c])?,
        dw: Tensor::empty(dev, &[p.k, 3, 3, p.c])?,
        ws: Tensor::empty(dev, &[ws.into_iter().max().unwrap_or(0).max(1)])?,
    })
}

fn conv(c: &mut Criterion) {
    let (dev, layers) = device_and_layers();
    let mut g = c.benchmark_group(format!("conv3x3/{}", if dev.is_emu() { "emu" } else { "cuda" }));
    for l in &layers {
        for algo in [ConvAlgo::Auto, ConvAlgo::Winograd4x4] {
            let setup = Conv3x3::new(l.problem, algo).and_then(|conv| Ok((conv, buffers(&dev, &conv)?)));
            let (conv, mut b) = match setup {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("skipping {} ({}, {algo:?}): {e}", l.name, l.problem);
                    continue;
                }
            };
            let tag = if algo == ConvAlgo::Auto { "" } else { "/winograd4x4" };
            let id = |pass: &str| BenchmarkId::new(format!("{pass}{tag}"), format!("{} {}", l.name, l.problem));
            g.bench_function(id("fprop"), |bench| {
                bench.iter(|| {
                    conv.fprop(&b.x, &b.w, None, Epilogue::None, &mut b.y, &mut b.ws).unwrap();
                    dev.synchronize().unwrap();
                })
            });
            g.bench_function(id("dgrad"), |bench| {
                bench.iter(|| {
                    conv.dgrad(&b.dy, &b.w, None, &mut b.dx, &mut b.ws).unwrap();
                    dev.synchronize().unwrap();
                })
            });
            if algo != ConvAlgo::Auto {
                continue; // wgrad is the same implicit GEMM under both
            }
            g.bench_function(id("wgrad"), |bench| {
                bench.iter(|| {
                    conv.wgrad(&b.x, &b.dy, &mut b.dw, None, &mut b.ws).unwrap();
                    dev.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    targets = conv
}
criterion_main!(benches);
