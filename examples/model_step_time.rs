//! Wall time of a small VGG's forward pass and of its training step (config A, 32x32, constant
//! images), three times, on the emu device:
//! `cargo run --release --example model_step_time [width] [batch]` (defaults 0.125 and 32).
use std::time::Instant;
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let width: f32 = args.get(1).map_or(Ok(0.125), |s| s.parse())?;
    let batch: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let dev = Device::emu();
    let cfg = VggConfig { dropout: 0.0, ..VggConfig::small(Arch::A, width, 32, 64, 10) };
    let mut vgg = Vgg::new(&dev, cfg, batch, Init::He, 0)?;
    let images = Tensor::<u8>::from_host(&dev, &[batch, 32, 32, 3], &vec![100u8; batch * 32 * 32 * 3])?;
    let labels = Tensor::<i32>::from_host(&dev, &[batch], &vec![1; batch])?;
    for step in 0..3 {
        let t = Instant::now();
        vgg.forward(&images, true, step)?;
        let f = t.elapsed().as_secs_f64();
        let s = vgg.train_step(&images, &labels, 0.01, step)?;
        println!(
            "width {width} batch {batch}: forward {:.2} s, step {:.2} s, loss {}",
            f,
            t.elapsed().as_secs_f64() - f,
            s.loss
        );
    }
    Ok(())
}
