//! Reductions on emu: the selftest check against the reference, the same bits under every
//! schedule, and an empty tensor.

mod two_schedules;

use two_schedules::{assert_check_passes, assert_schedule_independent, values};
use vgg_cuda::ops::{self, Reducer};
use vgg_cuda::{reference as r, Device, Tensor};

#[test]
fn reductions_match_reference() {
    assert_check_passes("reduce");
}

#[test]
fn reductions_are_schedule_independent() {
    assert_schedule_independent("reduce_sum / reduce_maxabs", |dev| {
        let x = values(300_001, 8, 1e3);
        let t = Tensor::from_host(dev, &[x.len()], &x).unwrap();
        let h = Tensor::from_f32(dev, &[x.len()], &x).unwrap();
        let mut red = Reducer::new(dev).unwrap();
        let bits = |r: &Tensor<f32>| r.to_host().unwrap()[0].to_bits();
        [
            bits(red.sum(&t).unwrap()),
            bits(red.max_abs(&t).unwrap()),
            bits(red.sum(&h).unwrap()),
            bits(red.max_abs(&h).unwrap()),
        ]
    });
}

#[test]
fn host_helpers_and_empty_tensor() {
    let dev = Device::emu();
    let x = values(12_345, 9, 10.0);
    let t = Tensor::from_host(&dev, &[x.len()], &x).unwrap();
    let s = ops::reduce_sum(&t).unwrap();
    assert!(((s as f64 - r::tensor_sum(&x)) / r::tensor_sum(&x)).abs() < 1e-6, "{s}");
    assert_eq!(ops::reduce_max_abs(&t).unwrap(), r::tensor_max_abs(&x));
    let empty = Tensor::<f32>::from_host(&dev, &[0], &[]).unwrap();
    assert_eq!((ops::reduce_sum(&empty).unwrap(), ops::reduce_max_abs(&empty).unwrap()), (0.0, 0.0));
}
