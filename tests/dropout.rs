//! Dropout on emu: bit-exact against the reference (selftest check), the same mask at any
//! launch shape and schedule, and parameter errors.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16, values};
use vgg_cuda::ops::{DropoutKey, StepVars};
use vgg_cuda::{ops, reference as r, Device, Error, KArg, Kernel, LaunchConfig, Tensor};

#[test]
fn dropout_matches_reference() {
    assert_check_passes("dropout");
}

#[test]
fn dropout_is_schedule_independent() {
    assert_schedule_independent("dropout 3x1001", |dev| {
        let x = Tensor::from_f32(dev, &[3, 1001], &values(3003, 3, 2.0)).unwrap();
        let mut y = Tensor::<f16>::empty(dev, &[3, 1001]).unwrap();
        ops::dropout_fwd(&x, &mut y, 42, 7, 0.5).unwrap();
        bits16(&y)
    });
}

/// The mask depends on (seed, step, index) only: one block of 32 threads grid-striding,
/// a misaligned view (scalar path) and the launcher's grid all give the reference's bits.
#[test]
fn dropout_mask_ignores_the_launch_shape() {
    let dev = Device::emu();
    let n = 4133;
    let x = values(n, 4, 3.0);
    let xt = Tensor::from_f32(&dev, &[n], &x).unwrap();
    let want: Vec<u16> =
        r::f32_to_f16(&r::dropout_fwd(&r::f32_to_f16_round(&x), 9, 2, 0.3)).iter().map(|h| h.to_bits()).collect();
    let mut y = Tensor::<f16>::empty(&dev, &[n]).unwrap();
    ops::dropout_fwd(&xt, &mut y, 9, 2, 0.3).unwrap();
    assert_eq!(bits16(&y), want, "launcher grid");

    let kernel = Kernel { module: "dropout", name: "dropout_f16" };
    let key = r::dropout_key(9, 2) as i64;
    let scale = 1.0f32 / (1.0 - 0.3);
    for (grid, block) in [(1, 32), (3, 64), (200, 256)] {
        let mut y = Tensor::<f16>::empty(&dev, &[n]).unwrap();
        y.poison().unwrap();
        let cfg = LaunchConfig { grid: (grid, 1, 1), block: (block, 1, 1), shared_bytes: 0 };
        let args = [
            xt.arg(),
            y.arg_mut(),
            KArg::I64(n as i64),
            KArg::I64(key),
            KArg::F32(0.3),
            KArg::F32(scale),
            KArg::Ptr(0),
        ];
        // SAFETY: dropout_f16(const __half* x, __half* y, long long n, u64 key, float p, float scale,
        // const u64* key_at = null: the key argument is used); n elements each.
        unsafe { dev.launch(&kernel, cfg, &args).unwrap() };
        assert_eq!(bits16(&y), want, "grid {grid} x {block}");
    }
    // A view from element 1: not 16-byte aligned, so every element takes the scalar path.
    // The kernel numbers the view's elements from 0, so the reference runs on x[1..].
    let mut y = Tensor::<f16>::empty(&dev, &[n]).unwrap();
    y.poison().unwrap();
    let cfg = LaunchConfig { grid: (2, 1, 1), block: (64, 1, 1), shared_bytes: 0 };
    let args = [
        KArg::Ptr(xt.device_ptr() + 2),
        KArg::Ptr(y.device_ptr() + 2),
        KArg::I64(n as i64 - 1),
        KArg::I64(key),
        KArg::F32(0.3),
        KArg::F32(scale),
        KArg::Ptr(0),
    ];
    // SAFETY: as above, on elements 1..n of both tensors.
    unsafe { dev.launch(&kernel, cfg, &args).unwrap() };
    let shifted: Vec<u16> =
        r::f32_to_f16(&r::dropout_fwd(&r::f32_to_f16_round(&x[1..]), 9, 2, 0.3)).iter().map(|h| h.to_bits()).collect();
    assert_eq!(bits16(&y)[1..], shifted[..], "misaligned (scalar) path");
}

#[test]
fn bad_probability_is_an_error() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    for p in [-0.1, 1.5, f32::NAN] {
        let e = ops::dropout_fwd(&x, &mut y, 1, 1, p).unwrap_err();
        assert!(e.to_string().contains("p_drop"), "{e}");
    }
    let mut short = Tensor::<f16>::zeros(&dev, &[7]).unwrap();
    let e = ops::dropout_bwd(&x, &mut short, 1, 1, 0.5).unwrap_err();
    assert!(e.to_string().contains("dropout dx has 7 elements"), "{e}");
}

/// A device key names one of the two hidden layers whose keys [`StepVars`] holds; another
/// layer is an error, not a panic.
#[test]
fn a_device_key_of_a_third_layer_is_an_error() {
    let dev = Device::emu();
    let mut vars = StepVars::new(&dev).unwrap();
    vars.set([1, 2], 3, 0.1).unwrap();
    let x = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let e = ops::dropout(&x, &mut y, DropoutKey::Device { vars: &vars, layer: 2 }, 0.5).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("hidden layer 2"), "{e}");
    ops::dropout(&x, &mut y, DropoutKey::Device { vars: &vars, layer: 1 }, 0.5).unwrap();
}
