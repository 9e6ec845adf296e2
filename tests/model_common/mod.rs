//! Helpers shared by the integration tests of the VGG model on emu (tests/model.rs,
//! model_steps.rs, model_memory.rs): the small 1/8-width config and a seeded batch on the device.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use vgg_cuda::model::{Arch, VggConfig};
use vgg_cuda::{Device, Tensor};

/// A config at 1/8 width on 32x32 inputs, FC 32, 5 classes, a 1x1x64 feature map. A: convs 8,
/// 16, 32, 32, 64, 64, 64, 64 channels (the first on the Direct kernel, the rest Winograd);
/// A-LRN: the same with an LRN over the first conv's 8 channels; C: 3x3 convs 8, 8, 16, 16, 32,
/// 32, 64, 64, 64, 64 and a 1x1 conv (a GEMM) closing each of the last three blocks (32, 64, 64).
pub fn small(arch: Arch, dropout: f32) -> VggConfig {
    VggConfig { dropout, ..VggConfig::small(arch, 0.125, 32, 32, 5) }
}

pub fn batch_data(cfg: &VggConfig, batch: usize, seed: u64) -> (Vec<u8>, Vec<i32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let px = batch * cfg.input * cfg.input * 3;
    let images = (0..px).map(|_| rng.gen::<u8>()).collect();
    let labels = (0..batch).map(|_| rng.gen_range(0..cfg.classes as i32)).collect();
    (images, labels)
}

pub fn upload(dev: &Device, cfg: &VggConfig, images: &[u8], labels: &[i32]) -> (Tensor<u8>, Tensor<i32>) {
    let n = labels.len();
    let s = cfg.input;
    (Tensor::from_host(dev, &[n, s, s, 3], images).unwrap(), Tensor::from_host(dev, &[n], labels).unwrap())
}
