//! The library end to end, small: build a VGG (config A at 1/16 width, 32x32 input, 10
//! classes), save its weights as a safetensors file with torchvision's names and layouts,
//! load them into a fresh model, and classify one synthetic image with it.
//!
//!     cargo run --release --example library_forward                  # CPU emulator
//!     cargo run --release --example library_forward -- --device cuda # a GPU
//!
//! The weights are random (He init), so the top-5 is arbitrary; what the example shows is
//! the calls, and that the reloaded model computes bit-identical logits.

use anyhow::{Context, Result};
use vgg_cuda::data::{Dataset, Synthetic};
use vgg_cuda::eval::{softmax, top_k};
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::train::checkpoint;
use vgg_cuda::{Device, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let device = match args.iter().position(|a| a == "--device") {
        Some(i) => args.get(i + 1).context("--device needs a value (emu, cuda, cuda:N)")?.clone(),
        None => "emu".to_string(),
    };
    let dev = Device::by_name(&device)?;
    let cfg = VggConfig::small(Arch::A, 0.0625, 32, 64, 10);
    println!("VGG {} on {}: {} parameters", cfg.describe(), dev.name(), cfg.param_count());

    // A model with batch 1, and its weights in a torchvision-named file.
    let mut vgg = Vgg::new(&dev, cfg.clone(), 1, Init::He, 42)?;
    let dir = std::env::temp_dir().join(format!("vgg-library-forward-{}", std::process::id()));
    let path = dir.join("vgg11-tiny.safetensors");
    checkpoint::save(&path, &vgg.export_params()?, &[], &cfg, None)?;
    println!("saved {} ({} bytes)", path.display(), std::fs::metadata(&path)?.len());

    // A fresh model (other seed, so other weights) loaded from the file.
    let loaded = checkpoint::load(&path)?;
    let names: Vec<&str> = loaded.weights.iter().take(3).map(|t| t.0.as_str()).collect();
    println!("loaded {} tensors ({}, ...)", loaded.weights.len(), names.join(", "));
    let mut fresh = Vgg::new(&dev, cfg.clone(), 1, Init::He, 7)?;
    fresh.import_params(&loaded.weights)?;
    std::fs::remove_dir_all(&dir).ok();

    // One synthetic image (HWC u8, the model's input size) through both models.
    let data = Synthetic::new(cfg.classes, cfg.input as u32, 1, 0).square();
    let (img, label) = data.load(0)?;
    let images = Tensor::<u8>::from_host(&dev, &[1, cfg.input, cfg.input, 3], img.as_raw())?;
    let logits = fresh.forward(&images, false, 0)?.to_f32()?;
    let original = vgg.forward(&images, false, 0)?.to_f32()?;
    let same = logits.iter().zip(&original).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("logits of the reloaded model bit-identical to the original's: {same}");

    // Softmax and the five most likely classes.
    // `eval::top_k` ranks as `vgg eval` counts hits: ties to the lower class, NaN (an fp16
    // overflow upstream) first, so a broken model shows as one.
    let p = softmax(&logits);
    println!("image 0 (class `{}`), top-5:", data.classes()[label]);
    for c in top_k(&p, 5) {
        println!("  {:>3}  {:<12} p = {:.3}  logit {:+.3}", c, data.classes()[c], p[c], logits[c]);
    }
    anyhow::ensure!(same, "reloaded model computes other logits");
    Ok(())
}

// `cargo test` runs the example on emu (the harness's arguments carry no `--device`): it fails
// unless the reloaded model computes the same logits bit for bit.
#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_emu() {
        super::main().unwrap();
    }
}
