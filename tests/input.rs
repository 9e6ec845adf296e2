//! Input normalisation on emu: bit-exact against the reference (selftest check),
//! schedule independence, and shape errors.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16};
use vgg_cuda::ops::{self, InputNorm};
use vgg_cuda::{Device, Tensor};

#[test]
fn normalize_input_matches_reference() {
    assert_check_passes("normalize_input");
}

#[test]
fn normalize_input_is_schedule_independent() {
    assert_schedule_independent("normalize_u8_f16", |dev| {
        let s = [3, 7, 5, 3];
        let x: Vec<u8> = (0..s.iter().product::<usize>()).map(|i| (i * 97 % 256) as u8).collect();
        let xt = Tensor::from_host(dev, &s, &x).unwrap();
        let flip = Tensor::from_host(dev, &[3], &[1u8, 0, 1]).unwrap();
        let mut y = Tensor::<f16>::empty(dev, &s).unwrap();
        ops::normalize_input(&xt, Some(&flip), &InputNorm::IMAGENET, &mut y).unwrap();
        bits16(&y)
    });
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let x = Tensor::<u8>::zeros(&dev, &[2, 4, 4, 4]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 4, 4, 4]).unwrap();
    let e = ops::normalize_input(&x, None, &InputNorm::IMAGENET, &mut y).unwrap_err();
    assert!(e.to_string().contains("3 channels"), "{e}");
    let x = Tensor::<u8>::zeros(&dev, &[2, 4, 4, 3]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 4, 4, 3]).unwrap();
    let flip = Tensor::<u8>::zeros(&dev, &[3]).unwrap();
    let e = ops::normalize_input(&x, Some(&flip), &InputNorm::IMAGENET, &mut y).unwrap_err();
    assert!(e.to_string().contains("flip flags must have shape [2], got [3]"), "{e}");
    // An output of the right size in NCHW.
    let mut nchw = Tensor::<f16>::zeros(&dev, &[2, 3, 4, 4]).unwrap();
    let e = ops::normalize_input(&x, None, &InputNorm::IMAGENET, &mut nchw).unwrap_err();
    assert!(e.to_string().contains("(NHWC, x's shape) must have shape [2, 4, 4, 3], got [2, 3, 4, 4]"), "{e}");
    let zero_std = InputNorm { mean: [0.0; 3], std: Some([1.0, 0.0, 1.0]) };
    let e = ops::normalize_input(&x, None, &zero_std, &mut y).unwrap_err();
    assert!(e.to_string().contains("has a zero"), "{e}");
}
