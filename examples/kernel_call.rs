//! A direct kernel call: one 3x3 convolution forward (bias + ReLU fused) through
//! `ops::Conv3x3` on a random NHWC tensor, and the same through the host reference
//! `reference::conv3x3_fprop`, with the error between the two.
//!
//!     cargo run --release --example kernel_call                  # CPU emulator
//!     cargo run --release --example kernel_call -- --device cuda # a GPU
//!
//! The device computes in fp16 with fp32 accumulation; the reference in f64 (returned as f32)
//! from the same fp16-rounded inputs, so the difference is the output's fp16 rounding plus the
//! Winograd transforms' (a few units of 2^-11 relative).

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use vgg_cuda::ops::{Conv3x3, ConvAlgo, ConvPass, Epilogue};
use vgg_cuda::problem::ConvProblem;
use vgg_cuda::{reference, Device, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let device = match args.iter().position(|a| a == "--device") {
        Some(i) => args.get(i + 1).context("--device needs a value (emu, cuda, cuda:N)")?.clone(),
        None => "emu".to_string(),
    };
    let dev = Device::by_name(&device)?;

    // x [N,H,W,C], w [K,3,3,C] (KRSC), bias [K]; N(0, 1) inputs, weights scaled by 1/sqrt(9C).
    let p = ConvProblem::new(2, 16, 16, 32, 64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut normal =
        |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.sample::<f32, _>(StandardNormal) * scale).collect() };
    let (xv, wv, bv) =
        (normal(p.input_len(), 1.0), normal(p.filter_len(), (9.0 * p.c as f32).powf(-0.5)), normal(p.k, 0.1));
    let x = Tensor::from_f32(&dev, &[p.n, p.h, p.w, p.c], &xv)?;
    let w = Tensor::from_f32(&dev, &[p.k, 3, 3, p.c], &wv)?;
    let b = Tensor::from_f32(&dev, &[p.k], &bv)?;

    // Plan (Auto: Winograd F(2x2,3x3) on tensor cores here, C and K being multiples of 8),
    // a workspace of the size the plan asks for, and the launch.
    let conv = Conv3x3::new(p, ConvAlgo::Auto)?;
    let mut ws = Tensor::<u8>::empty(&dev, &[conv.workspace_bytes(ConvPass::Fprop)])?;
    let mut y = Tensor::empty(&dev, &[p.n, p.h, p.w, p.k])?;
    let t = std::time::Instant::now();
    conv.fprop(&x, &w, Some(&b), Epilogue::BiasRelu, &mut y, &mut ws)?;
    let got = y.to_f32()?;
    let secs = t.elapsed().as_secs_f64();

    // The reference from the fp16 values the device actually read.
    let want = reference::conv3x3_fprop(&p, &x.to_f32()?, &w.to_f32()?, Some(&b.to_f32()?), true);
    let (mut max_abs, mut worst) = (0f32, 0usize);
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        let e = (g - r).abs();
        if e > max_abs || e.is_nan() {
            (max_abs, worst) = (e, i);
        }
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (n, rest) = (worst / (p.h * p.w * p.k), worst % (p.h * p.w * p.k));
    let (h, wi, k) = (rest / (p.w * p.k), rest / p.k % p.w, rest % p.k);
    println!(
        "conv3x3 fprop + bias + ReLU, N={} H={} W={} C={} K={}, {:?} on {}",
        p.n,
        p.h,
        p.w,
        p.c,
        p.k,
        conv.algo(ConvPass::Fprop),
        dev.name()
    );
    println!("  {:.1} ms (including the copy back)", secs * 1e3);
    println!(
        "  max |device - reference| = {max_abs:.3e} at y[{n},{h},{wi},{k}] (device {:.5}, reference {:.5}); max |reference| = {scale:.3}",
        got[worst], want[worst]
    );
    let tol = 1e-2 * scale.max(1.0);
    println!("  {} (tolerance {tol:.1e})", if max_abs <= tol { "OK" } else { "MISMATCH" });
    anyhow::ensure!(max_abs <= tol, "device and reference differ by {max_abs:e}");
    Ok(())
}

// `cargo test` runs the example on emu (the harness's arguments carry no `--device`): it fails
// unless the conv agrees with the reference within the tolerance it prints.
#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_emu() {
        super::main().unwrap();
    }
}
