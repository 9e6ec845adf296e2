//! The paper's initialisation (VGG.md: "normal, mean 0, variance 1e-2, biases 0") trains
//! config A in fp16 only when read as a standard deviation of 1e-2 ([`Init::PAPER`]): at
//! full width, with the paper's mean-only input normalisation, a forward from std 0.01
//! stays finite and clear of fp16's subnormals, while std 0.1 (variance 1e-2 taken
//! literally) overflows fp16 before the logits. Emu, 32x32 inputs (the classifier sized to
//! the 1x1 final map), one image.

use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::{Device, Tensor};

/// Full-width config A drawn from `init` on a varied image: the logits of its forward, and
/// with `trace` the feature layers' outputs too (from a training step's forward, which
/// doubles the emulator's time with the backward pass).
fn forward(init: Init, trace: bool) -> (Vec<Vec<f32>>, Vec<f32>) {
    let dev = Device::emu();
    // The paper subtracts the training set's mean only (ImageNet's, as torchvision lists it).
    let mean = [123.68, 116.78, 103.94];
    let cfg = VggConfig { dropout: 0.0, mean, std: None, ..VggConfig::small(Arch::A, 1.0, 32, 4096, 10) };
    let mut vgg = Vgg::new(&dev, cfg, 1, init, 3).unwrap();
    let px: Vec<u8> = (0..32 * 32 * 3u64).map(|i| (i.wrapping_mul(0x9E3779B97F4A7C15) >> 56) as u8).collect();
    let images = Tensor::<u8>::from_host(&dev, &[1, 32, 32, 3], &px).unwrap();
    if !trace {
        return (vec![], vgg.forward(&images, false, 0).unwrap().to_f32().unwrap());
    }
    vgg.keep_trace(true);
    let labels = Tensor::<i32>::from_host(&dev, &[1], &[3]).unwrap();
    vgg.compute_grads(&images, &labels, 0).unwrap();
    let t = vgg.trace().unwrap();
    (t.acts, t.logits)
}

fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn paper_init_keeps_full_width_a_finite_in_fp16() {
    // A's feature layers: conv1_1 pool conv2_1 pool conv3_1 conv3_2 pool conv4_1 conv4_2 ...
    const CONV4_1: usize = 7;
    // std 0.01: the activations shrink layer by layer, to logits of rms 2.0e-4 (measured),
    // above fp16's smallest normal number, 6.1e-5 (an overflow on the way would have left
    // zeros: past a ReLU or a pool, inf - inf's NaNs become 0).
    let (_, z) = forward(Init::PAPER, false);
    assert!(z.iter().all(|v| v.is_finite()), "std 0.01: non-finite logits {z:?}");
    assert!(rms(&z) > 6.1e-5, "std 0.01: logits of rms {:e} (fp16 subnormals below 6.1e-5)", rms(&z));
    // std 0.1: conv4_1's output reaches 2.9e3 rms and conv4_2's overflows to inf (measured).
    let (acts, _) = forward(Init::Normal { std: 0.1 }, true);
    assert!(acts[CONV4_1].iter().all(|v| v.is_finite()), "std 0.1: conv4_1 already overflows");
    let n_inf = acts[CONV4_1 + 1].iter().filter(|v| v.is_infinite()).count();
    assert!(n_inf > 0, "std 0.1: conv4_2 no longer overflows fp16 (rms {:e})", rms(&acts[CONV4_1 + 1]));
}
