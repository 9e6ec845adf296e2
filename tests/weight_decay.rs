//! Weight decay through the model's own optimizer step: weights decay, biases do not (the
//! paper's L2 penalty is on the weights; torchvision recipes and ours leave biases out)
//! unless `OptimConfig::decay_biases` (`vgg train --bias-decay`) asks for it.

use vgg_cuda::model::{Arch, Init, OptimConfig, Vgg, VggConfig};
use vgg_cuda::Device;

/// One [`Vgg::apply_grads`] with every gradient zero (a fresh model has computed none): SGD
/// then moves each tensor by its decay term alone, w' = w - lr * wd * w for a decayed tensor
/// and w' = w for one that is not. Biases start at zero, where decay is invisible, so every
/// tensor is first set to non-zero values. Which tensors are weights and which biases is read
/// from the torchvision names, not from the model's decay flags. Config C, so that its 1x1
/// convs are covered too.
#[test]
fn sgd_step_decays_weights_but_not_biases() {
    decay_step(false);
}

#[test]
fn with_decay_biases_the_step_decays_biases_too() {
    decay_step(true);
}

fn decay_step(decay_biases: bool) {
    let dev = Device::emu();
    let cfg = VggConfig::small(Arch::C, 1.0 / 16.0, 32, 16, 10);
    let (lr, wd) = (0.1f32, 0.01f32);
    let optim = OptimConfig { weight_decay: wd, decay_biases, ..OptimConfig::default() };
    let mut vgg = Vgg::with_optim(&dev, cfg, 1, Init::PAPER, 5, optim).unwrap();
    // Every value non-zero, weights and biases alike: a tensor the init left at zero would
    // pass either way.
    let mut before = vgg.export_params().unwrap();
    for (i, (_, _, data)) in before.iter_mut().enumerate() {
        for (j, x) in data.iter_mut().enumerate() {
            *x = (0.5 + 0.01 * i as f32 + 0.001 * (j % 97) as f32) * if j % 2 == 0 { 1.0 } else { -1.0 };
        }
    }
    vgg.import_params(&before).unwrap();
    assert!(vgg.apply_grads(lr).unwrap(), "a step over zero gradients was skipped");
    let after = vgg.export_params().unwrap();
    assert_eq!(before.len(), after.len());
    let (mut weights, mut biases) = (0, 0);
    for ((name, _, w0), (name1, _, w1)) in before.iter().zip(&after) {
        assert_eq!(name, name1);
        if name.ends_with(".bias") && !decay_biases {
            biases += 1;
            for (j, (a, b)) in w0.iter().zip(w1).enumerate() {
                assert!(a.to_bits() == b.to_bits(), "{name}[{j}]: bias {a} became {b}: decayed?");
            }
        } else {
            assert!(name.ends_with(".weight") || decay_biases, "{name}");
            if name.ends_with(".bias") {
                biases += 1;
            } else {
                weights += 1;
            }
            // The kernel computes in f32 or f64; 1e-6 relative covers either, while decay moves
            // each weight by lr * wd = 1e-3 of itself.
            let shrink = 1.0 - lr as f64 * wd as f64;
            for (j, (a, b)) in w0.iter().zip(w1).enumerate() {
                let want = *a as f64 * shrink;
                let tol = 1e-6 * (*a as f64).abs() + 1e-30;
                assert!(
                    (*b as f64 - want).abs() <= tol,
                    "{name}[{j}]: {a} became {b}, expected {want} (lr {lr}, wd {wd})"
                );
            }
        }
    }
    // C: 10 3x3 + 3 1x1 convs, 3 FC layers.
    assert_eq!((weights, biases), (16, 16));
}
