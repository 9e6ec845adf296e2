//! The dense-evaluation window matrix on emu: the selftest check against the reference
//! (bit-exact, poisoned outputs, edge and random shapes), the same bits under every
//! schedule on both kernel paths, and shape errors.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16, values};
use vgg_cuda::{ops, Device, Tensor};

#[test]
fn dense_gather_matches_reference() {
    assert_check_passes("dense_gather");
}

#[test]
fn dense_gather_is_schedule_independent() {
    // c = 16: 16-byte groups; c = 5: one element a thread.
    for s in [[2, 9, 11, 16], [3, 8, 7, 5]] {
        assert_schedule_independent(&format!("dense_gather {s:?}"), |dev| {
            let x = Tensor::<f16>::from_f32(dev, &s, &values(s.iter().product(), 3, 4.0)).unwrap();
            let mut cols = Tensor::empty(dev, &ops::dense_gather_shape(&s, 7, 4).unwrap()).unwrap();
            cols.poison().unwrap();
            ops::dense_gather(&x, 7, 4, &mut cols).unwrap();
            bits16(&cols)
        });
    }
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[2, 6, 9, 8]).unwrap();
    assert_eq!(ops::dense_gather_shape(x.shape(), 6, 7).unwrap(), [2 * 3, 6 * 7 * 8]);
    let mut cols = Tensor::<f16>::zeros(&dev, &[6, 6 * 7 * 8]).unwrap();
    let e = ops::dense_gather(&x, 7, 7, &mut cols).unwrap_err();
    assert!(e.to_string().contains("7x7 windows do not fit"), "{e}");
    let e = ops::dense_gather(&x, 0, 1, &mut cols).unwrap_err();
    assert!(e.to_string().contains("0x1 windows"), "{e}");
    let e = ops::dense_gather(&x, 6, 6, &mut cols).unwrap_err();
    assert!(e.to_string().contains("output cols must have shape [8, 288], got [6, 336]"), "{e}");
    // The right size, transposed.
    let mut cols_t = Tensor::<f16>::zeros(&dev, &[6 * 7 * 8, 6]).unwrap();
    let e = ops::dense_gather(&x, 6, 7, &mut cols_t).unwrap_err();
    assert!(e.to_string().contains("got [336, 6]"), "{e}");
    let flat = Tensor::<f16>::zeros(&dev, &[6, 9, 8]).unwrap();
    let e = ops::dense_gather(&flat, 1, 1, &mut cols).unwrap_err();
    assert!(e.to_string().contains("NHWC"), "{e}");
}
