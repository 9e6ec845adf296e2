//! The first kernels (ReLU, bias, casts, max-pool) and the PTX primitives against the
//! reference on the emu device, through the same checks `vgg selftest` runs on a GPU;
//! plus bit-identical results under two schedules, and shape errors.

use half::f16;
use vgg_cuda::{ops, selftest, Device, Error, Schedule, Tensor};

fn assert_check_passes(name: &str) {
    let rows = selftest::run(&Device::emu(), Some(name));
    assert!(!rows.is_empty(), "check {name} produced no rows");
    let bad: Vec<_> = rows.iter().filter(|r| !r.ran_and_passed()).collect();
    assert!(bad.is_empty(), "check {name} failed on emu: {bad:#?}");
}

#[test]
fn relu_matches_reference() {
    assert_check_passes("relu");
}
#[test]
fn bias_act_matches_reference() {
    assert_check_passes("bias_act");
}
#[test]
fn casts_match_reference() {
    assert_check_passes("cast");
}
#[test]
fn maxpool_matches_reference() {
    assert_check_passes("maxpool");
}
#[test]
fn mma_matches_reference() {
    assert_check_passes("mma");
}
#[test]
fn ldmatrix_matches_layout() {
    assert_check_passes("ldmatrix");
}
#[test]
fn cp_async_zero_fills() {
    assert_check_passes("cp_async");
}
#[test]
fn wgmma_matches_reference() {
    assert_check_passes("wgmma");
}
/// Bulk copies and 2-D TMA boxes (inside, over every edge, swizzled or not) land as the copy
/// engine lays them, counted by their mbarrier.
#[test]
fn bulk_copies_and_tma_boxes_land_in_place() {
    assert_check_passes("bulk");
}

/// The copy probe's kernels (`vgg bench copy`): every form lands every tile in its place.
#[test]
fn copy_probe_forms_land_every_tile() {
    assert_check_passes("copy_probe");
}

/// The emulator runs a wgmma when the wait retires its group: accumulators read before the
/// wait still hold C (on a GPU that read is undefined), so a kernel missing its wait fails on
/// the CPU too.
#[test]
fn wgmma_results_arrive_at_the_wait() {
    use vgg_cuda::{Kernel, LaunchConfig};
    let dev = Device::emu();
    let ones = |n: usize| Tensor::from_f32(&dev, &[n], &vec![1.0; n]).unwrap();
    let (a, bt) = (ones(64 * 16), ones(64 * 16));
    let c: Vec<f32> = (0..64 * 64).map(|i| i as f32).collect();
    let ct = Tensor::from_host(&dev, &[64 * 64], &c).unwrap();
    let mut d = Tensor::<f32>::empty(&dev, &[64 * 64]).unwrap();
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: 2048 + 32 * 64 };
    let k = Kernel { module: "wgmma_test", name: "prim_wgmma_early_read" };
    // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D): A and Bt 64 x 16,
    // C and D 64 x 64, one warpgroup.
    unsafe { dev.launch(&k, cfg, &[a.arg(), bt.arg(), ct.arg(), d.arg_mut()]).unwrap() };
    assert_eq!(d.to_host().unwrap(), c, "read before the wait: C, not C + 16");
}

/// Hardware reads a wgmma's operands at any time until the wait that retires it; the emulator
/// computes it at that wait. An operand rewritten in between (here one element of B, as a late
/// copy or an early refill would) must fail the launch, naming the race, instead of computing
/// from whatever is there at the wait.
#[test]
fn a_wgmma_operand_changed_in_flight_fails_the_launch() {
    use vgg_cuda::{Kernel, LaunchConfig};
    let dev = Device::emu();
    let ones = |n: usize| Tensor::from_f32(&dev, &[n], &vec![1.0; n]).unwrap();
    let (a, bt) = (ones(64 * 16), ones(64 * 16));
    let c = Tensor::from_host(&dev, &[64 * 64], &vec![1.0f32; 64 * 64]).unwrap(); // fp32, as the kernel reads C
    let mut d = Tensor::<f32>::empty(&dev, &[64 * 64]).unwrap();
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: 2048 + 32 * 64 };
    let k = Kernel { module: "wgmma_test", name: "prim_wgmma_operand_race" };
    // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D): A and Bt 64 x 16,
    // C and D 64 x 64, one warpgroup.
    let e = unsafe { dev.launch(&k, cfg, &[a.arg(), bt.arg(), c.arg(), d.arg_mut()]) }.unwrap_err().to_string();
    assert!(e.contains("changed between its issue and the wait") && e.contains("wgmma_test.cu:"), "{e}");
}

/// Every fp16 bit pattern widens to the fp32 value IEEE 754 gives it (the emulator converts on
/// the bits, kernels/emu/shim.h): zeros and subnormals of both signs, infinities, and NaNs with
/// their payload kept and the quiet bit set, as the GPU and the `half` crate do.
#[test]
fn every_half_widens_exactly() {
    let dev = Device::emu();
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let x = Tensor::from_host(&dev, &[all.len()], &all).unwrap();
    let mut y = Tensor::<f32>::empty(&dev, &[all.len()]).unwrap();
    y.poison().unwrap();
    ops::cast_f16_to_f32(&x, &mut y).unwrap();
    for (h, got) in all.iter().zip(y.to_host().unwrap()) {
        let want = h.to_f32();
        assert_eq!(got.to_bits(), want.to_bits(), "fp16 {:#06x}: got {got:e}, want {want:e}", h.to_bits());
    }
    // The half crate's NaNs come back quiet with the payload: the rule above, checked directly.
    assert_eq!(f16::from_bits(0x7c01).to_f32().to_bits(), 0x7fc0_2000);
}

/// Runs max-pool forward and backward on one shape and returns both outputs' bits.
fn pool_bits(s: Schedule) -> (Vec<u16>, Vec<u16>) {
    let dev = Device::emu();
    dev.set_schedule(s);
    let shape = [3, 9, 7, 24];
    let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 37) % 101) as f32 * 0.25 - 12.0).collect();
    let xt = Tensor::from_f32(&dev, &shape, &x).unwrap();
    let mut y = Tensor::empty(&dev, &[3, 4, 3, 24]).unwrap();
    y.poison().unwrap();
    ops::maxpool2x2_fwd(&xt, &mut y).unwrap();
    let mut dx = Tensor::empty(&dev, &shape).unwrap();
    dx.poison().unwrap();
    ops::maxpool2x2_bwd(&xt, &y, &mut dx).unwrap();
    let bits = |t: &Tensor<f16>| t.to_host().unwrap().iter().map(|h| h.to_bits()).collect();
    (bits(&y), bits(&dx))
}

#[test]
fn maxpool_is_schedule_independent() {
    let a = pool_bits(Schedule::Index);
    for s in [Schedule::Reverse, Schedule::Random(3)] {
        assert_eq!(a, pool_bits(s), "max-pool output depends on the schedule ({s:?})");
    }
}

/// The training path (argmax recorded forward, read backward) gives the bits of the path that
/// finds the maximum again, on data full of ties and with an odd row and column dropped.
#[test]
fn maxpool_argmax_path_matches() {
    let dev = Device::emu();
    let (shape, out) = ([2, 7, 5, 16], [2, 3, 2, 16]);
    let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 7) % 3) as f32 - 1.0).collect();
    let dy: Vec<f32> = (0..out.iter().product::<usize>()).map(|i| i as f32 * 0.5 - 20.0).collect();
    let (xt, dyt) = (Tensor::from_f32(&dev, &shape, &x).unwrap(), Tensor::from_f32(&dev, &out, &dy).unwrap());
    let run = |arg: bool| {
        let mut y = Tensor::empty(&dev, &out).unwrap();
        let mut dx = Tensor::empty(&dev, &shape).unwrap();
        y.poison().unwrap();
        dx.poison().unwrap();
        if arg {
            let mut a = Tensor::<u8>::empty(&dev, &out).unwrap();
            ops::maxpool2x2_fwd_arg(&xt, &mut y, &mut a).unwrap();
            ops::maxpool2x2_bwd_arg(&a, &dyt, &mut dx).unwrap();
        } else {
            ops::maxpool2x2_fwd(&xt, &mut y).unwrap();
            ops::maxpool2x2_bwd(&xt, &dyt, &mut dx).unwrap();
        }
        let bits = |t: &Tensor<f16>| t.to_host().unwrap().iter().map(|h| h.to_bits()).collect::<Vec<_>>();
        (bits(&y), bits(&dx))
    };
    assert_eq!(run(true), run(false));
    let mut a = Tensor::<u8>::empty(&dev, &[7]).unwrap();
    let mut y = Tensor::empty(&dev, &out).unwrap();
    let e = ops::maxpool2x2_fwd_arg(&xt, &mut y, &mut a).unwrap_err();
    assert!(e.to_string().contains("max-pool argmax (NHWC, y's shape) must have shape"), "{e}");
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[2, 1, 5, 8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 1, 2, 8]).unwrap();
    let e = ops::maxpool2x2_fwd(&x, &mut y).unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && e.to_string().contains("H, W >= 2"), "{e}");

    let x = Tensor::<f16>::zeros(&dev, &[2, 4, 4, 8]).unwrap();
    let mut wrong = Tensor::<f16>::zeros(&dev, &[2, 2, 2, 4]).unwrap();
    let e = ops::maxpool2x2_fwd(&x, &mut wrong).unwrap_err();
    assert!(e.to_string().contains("max-pool output y (NHWC) must have shape [2, 2, 2, 8], got [2, 2, 2, 4]"), "{e}");
    // The right size in another layout (NCHW) is refused too, naming both shapes.
    let mut nchw = Tensor::<f16>::zeros(&dev, &[2, 8, 2, 2]).unwrap();
    let e = ops::maxpool2x2_fwd(&x, &mut nchw).unwrap_err();
    assert!(e.to_string().contains("must have shape [2, 2, 2, 8], got [2, 8, 2, 2]"), "{e}");
    let dy = Tensor::<f16>::zeros(&dev, &[2, 8, 2, 2]).unwrap();
    let mut dx = Tensor::<f16>::zeros(&dev, &[2, 4, 4, 8]).unwrap();
    let e = ops::maxpool2x2_bwd(&x, &dy, &mut dx).unwrap_err();
    assert!(e.to_string().contains("max-pool dy (NHWC)"), "{e}");

    let bias = Tensor::<f16>::zeros(&dev, &[7]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[2, 4, 4, 8]).unwrap();
    let e = ops::bias_act(&x, &bias, &mut y, true).unwrap_err();
    assert!(e.to_string().contains("bias ([C], x's last dimension) must have shape [8], got [7]"), "{e}");
    let bias = Tensor::<f16>::zeros(&dev, &[1, 8]).unwrap();
    assert!(ops::bias_act(&x, &bias, &mut y, true).is_err(), "a [1, C] bias");

    let other = Device::emu();
    let mut y_other = Tensor::<f16>::zeros(&other, &[2, 4, 4, 8]).unwrap();
    let e = ops::relu_fwd(&x, &mut y_other).unwrap_err();
    assert!(matches!(e, Error::WrongDevice { .. }), "{e}");

    assert!(Tensor::<f16>::from_host(&dev, &[2, 2], &[f16::ZERO; 3]).is_err());
}

#[test]
fn cuda_device_explains_why_it_is_unavailable() {
    // On a machine with a usable GPU this test has nothing to check.
    match Device::cuda(0) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(matches!(e, Error::DeviceUnavailable(_)), "{msg}");
            assert!(msg.len() > 40, "reason too short to help: {msg}");
        }
    }
}

#[test]
fn launches_are_counted_per_device() {
    let dev = Device::emu();
    let other = Device::emu();
    let x = Tensor::from_f32(&dev, &[64], &vec![-1.0; 64]).unwrap();
    let mut y = Tensor::<f16>::empty(&dev, &[64]).unwrap();
    let (before, other_before) = (dev.launches(), other.launches());
    ops::relu_fwd(&x, &mut y).unwrap();
    ops::relu_fwd(&x, &mut y).unwrap();
    assert_eq!(dev.launches() - before, 2);
    // A clone is the same device; another emu device counts its own.
    assert_eq!(dev.clone().launches(), dev.launches());
    assert_eq!(other.launches(), other_before);
    // A launch refused before reaching the device is not counted.
    let mut short = Tensor::<f16>::empty(&dev, &[8]).unwrap();
    assert!(ops::relu_fwd(&x, &mut short).is_err());
    assert_eq!(dev.launches() - before, 2);
}

#[test]
fn pinned_buffers_upload_and_check_lengths() {
    let dev = Device::emu();
    let mut host = vgg_cuda::PinnedBuffer::<i32>::new(&dev, 5).unwrap();
    let mut t = Tensor::<i32>::zeros(&dev, &[5]).unwrap();
    for round in 0..3 {
        let want: Vec<i32> = (0..5).map(|i| i * 10 + round).collect();
        host.write().unwrap().copy_from_slice(&want);
        host.upload(&mut t).unwrap();
        assert_eq!(t.to_host().unwrap(), want, "round {round}");
    }
    let mut short = Tensor::<i32>::zeros(&dev, &[4]).unwrap();
    assert!(matches!(host.upload(&mut short), Err(Error::Shape(_))));
    let other = Device::emu();
    let mut elsewhere = Tensor::<i32>::zeros(&other, &[5]).unwrap();
    assert!(matches!(host.upload(&mut elsewhere), Err(Error::WrongDevice { .. })));
}

#[test]
fn pinned_buffers_download() {
    let dev = Device::emu();
    let t = Tensor::<f32>::from_host(&dev, &[4], &[1.5, -2.0, 0.25, 8.0]).unwrap();
    let mut host = vgg_cuda::PinnedBuffer::<f32>::new(&dev, 4).unwrap();
    host.download(&t).unwrap();
    assert_eq!(host.read().unwrap(), &[1.5, -2.0, 0.25, 8.0]);
    let long = Tensor::<f32>::zeros(&dev, &[5]).unwrap();
    assert!(matches!(host.download(&long), Err(Error::Shape(_))));
}
