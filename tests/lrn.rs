//! LRN on emu: the selftest check against the reference, schedule independence (a block
//! stages a tile in shared memory: a missing barrier would show), and shape errors.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16, values};
use vgg_cuda::ops::{self, LrnParams};
use vgg_cuda::{Device, Tensor};

#[test]
fn lrn_matches_reference() {
    assert_check_passes("lrn");
}

#[test]
fn lrn_is_schedule_independent() {
    for shape in [[2, 5, 3, 64], [1, 2, 2, 2100]] {
        assert_schedule_independent(&format!("lrn {shape:?}"), |dev| {
            let n = shape.iter().product();
            let x = Tensor::from_f32(dev, &shape, &values(n, 5, 6.0)).unwrap();
            let dy = Tensor::from_f32(dev, &shape, &values(n, 6, 1.0)).unwrap();
            let p = LrnParams { size: 5, alpha: 0.5, beta: 0.75, k: 2.0 };
            let (mut y, mut dx) =
                (Tensor::<f16>::empty(dev, &shape).unwrap(), Tensor::<f16>::empty(dev, &shape).unwrap());
            ops::lrn_fwd(&x, &mut y, &p).unwrap();
            ops::lrn_bwd(&x, &dy, &mut dx, &p).unwrap();
            (bits16(&y), bits16(&dx))
        });
    }
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let p = LrnParams::ALEXNET;
    let x = Tensor::<f16>::zeros(&dev, &[2, 4, 10]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 4, 10]).unwrap();
    let e = ops::lrn_fwd(&x, &mut y, &p).unwrap_err();
    assert!(e.to_string().contains("NHWC"), "{e}");
    let x = Tensor::<f16>::zeros(&dev, &[1, 1, 1, 5000]).unwrap();
    let (dy, mut dx) =
        (Tensor::<f16>::zeros(&dev, &[1, 1, 1, 5000]).unwrap(), Tensor::zeros(&dev, &[1, 1, 1, 5000]).unwrap());
    let e = ops::lrn_bwd(&x, &dy, &mut dx, &p).unwrap_err();
    assert!(e.to_string().contains("shared memory"), "{e}");
    let x = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[1, 2, 2, 7]).unwrap();
    let e = ops::lrn_fwd(&x, &mut y, &p).unwrap_err();
    assert!(e.to_string().contains("lrn output y (NHWC, x's shape) must have shape [1, 2, 2, 8]"), "{e}");
    let mut nchw = Tensor::<f16>::zeros(&dev, &[1, 8, 2, 2]).unwrap();
    let e = ops::lrn_fwd(&x, &mut nchw, &p).unwrap_err();
    assert!(e.to_string().contains("got [1, 8, 2, 2]"), "{e}");
    let dy = Tensor::<f16>::zeros(&dev, &[1, 8, 2, 2]).unwrap();
    let e = ops::lrn_bwd(&x, &dy, &mut Tensor::zeros(&dev, &[1, 2, 2, 8]).unwrap(), &p).unwrap_err();
    assert!(e.to_string().contains("lrn dy (NHWC"), "{e}");
    let e =
        ops::lrn_fwd(&x, &mut Tensor::zeros(&dev, &[1, 2, 2, 8]).unwrap(), &LrnParams { size: 0, ..p }).unwrap_err();
    assert!(e.to_string().contains("window size"), "{e}");
}
