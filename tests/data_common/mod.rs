//! Helpers shared by the integration tests of the data pipeline (tests/data.rs,
//! data_transform.rs, data_loader.rs): generated images with known content, the tests'
//! transform and loader settings, and an epoch's batches.
#![allow(dead_code)]

use image::{Rgb, RgbImage};
use vgg_cuda::data::{HostBatch, Loader, LoaderConfig, Scale, TrainTransform};

pub fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(c))
}

/// Pixel (x, y) holds (x, y, 200): a crop says where it came from.
pub fn coords(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 200]))
}

pub fn train(scale: Scale, crop: u32) -> TrainTransform {
    TrainTransform { scale, crop, flip: false, color_shift: None, color_std: 0.1 }
}

pub fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig { batch, shuffle: true, seed: 11, workers, drop_last: false, prefetch: 2, strict: false }
}

pub fn all_batches(l: &Loader, epoch: u64) -> Vec<HostBatch> {
    l.epoch(epoch).map(|b| b.unwrap()).collect()
}
