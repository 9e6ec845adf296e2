//! Captured work (`Device::capture`, `Graph`) on the emu device: nothing runs while capturing,
//! a replay runs the captured launches and memsets with their captured arguments, and what a
//! replay could not repeat (allocations, host copies, waits, frees) is refused by name.

use half::f16;
use vgg_cuda::{ops, Device, Tensor};

fn f16s(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

#[test]
fn a_replay_runs_what_was_captured_and_nothing_runs_before() {
    let dev = Device::emu();
    let mut x = Tensor::from_host(&dev, &[4], &f16s(&[-1.0, 2.0, -3.0, 4.0])).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[4]).unwrap();
    let mut z = Tensor::<f16>::zeros(&dev, &[4]).unwrap();
    let before = dev.launches();
    let graph = dev
        .capture(|| {
            z.poison()?; // a memset node, on a buffer no kernel then writes
            ops::relu_fwd(&x, &mut y)
        })
        .unwrap();
    assert_eq!(graph.launches(), 1);
    assert!(!dev.is_capturing());
    assert_eq!(y.to_f32().unwrap(), [0.0; 4], "capturing must not run the work");
    assert_eq!(z.to_f32().unwrap(), [0.0; 4], "capturing must not run the memset");
    // SAFETY: x, y and z, the only buffers captured, live to the end of the test.
    unsafe { graph.launch() }.unwrap();
    assert_eq!(y.to_f32().unwrap(), [0.0, 2.0, 0.0, 4.0]);
    assert!(z.to_f32().unwrap().iter().all(|v| v.is_nan()), "the replay runs the memset: {:?}", z.to_f32());
    // A replay reads the buffers as they are then: the arguments are pointers, not values.
    x.copy_from_host(&f16s(&[5.0, -6.0, 7.0, -8.0])).unwrap();
    // SAFETY: as above.
    unsafe { graph.launch() }.unwrap();
    assert_eq!(y.to_f32().unwrap(), [5.0, 0.0, 7.0, 0.0]);
    assert_eq!(dev.launches() - before, 3, "one captured launch, then one per graph launch");
}

#[test]
fn what_a_replay_could_not_repeat_is_refused_by_name() {
    let dev = Device::emu();
    let x = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[8]).unwrap();
    type Body<'a> = Box<dyn FnOnce(&mut Tensor<f16>) -> vgg_cuda::Result<()> + 'a>;
    let cases: [(&str, Body); 4] = [
        ("allocating device memory", Box::new(|_| Tensor::<f32>::zeros(&dev, &[4]).map(|_| ()))),
        ("a copy to the host", Box::new(|y| y.to_host().map(|_| ()))),
        ("a copy from the host", Box::new(|y| y.copy_from_host(&[f16::ZERO; 8]))),
        ("waiting for the device", Box::new(|_| dev.synchronize())),
    ];
    for (what, body) in cases {
        let err = dev.capture(|| body(&mut y)).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains("capturing a graph"), "{what}: {err}");
        assert!(!dev.is_capturing(), "a failed capture must end");
    }
    // The device works normally after the failed captures.
    ops::relu_fwd(&x, &mut y).unwrap();
    assert_eq!(y.to_f32().unwrap(), [0.0; 8]);
    // Capturing inside a capture is an error too.
    let err = dev.capture(|| dev.capture(|| Ok(())).map(|_| ())).unwrap_err().to_string();
    assert!(err.contains("already in progress"), "{err}");
}

#[test]
fn a_buffer_freed_during_a_capture_is_freed_after_it_and_the_graph_refused() {
    let dev = Device::emu();
    let baseline = dev.allocated_bytes();
    let x = Tensor::<f16>::zeros(&dev, &[64]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[64]).unwrap();
    let err = dev
        .capture(|| {
            ops::relu_fwd(&x, &mut y)?;
            drop(x); // a replay would read freed memory
            Ok(())
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("freed during the capture"), "{err}");
    assert_eq!(dev.allocated_bytes(), baseline + y.bytes(), "the dropped tensor is freed once the capture ends");
}

/// A profile times each launch and memset on its own under the label current when it was
/// queued, a graph replay as one entry, and nothing queued while capturing; misuse is an error.
#[test]
fn a_profile_lists_each_launch_under_its_label() {
    let dev = Device::emu();
    let x = Tensor::from_host(&dev, &[4], &f16s(&[-1.0, 2.0, -3.0, 4.0])).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[4]).unwrap();
    assert!(dev.profile_stop().unwrap_err().to_string().contains("no profile is running"));
    assert!(!dev.profiling());
    dev.profile_label("ignored: no profile runs");
    dev.profile_start().unwrap();
    assert!(dev.profile_start().unwrap_err().to_string().contains("already running"));
    dev.profile_label("first");
    y.poison().unwrap();
    ops::relu_fwd(&x, &mut y).unwrap();
    dev.profile_label("second");
    let graph = dev.capture(|| ops::relu_fwd(&x, &mut y)).unwrap();
    // SAFETY: x and y, the only buffers captured, live to the end of the test.
    unsafe { graph.launch() }.unwrap();
    let got = dev.profile_stop().unwrap();
    let seen: Vec<(&str, &str)> = got.iter().map(|l| (l.label.as_str(), l.kernel)).collect();
    assert_eq!(seen, [("first", "memset"), ("first", "relu_fwd_f16"), ("second", "graph")]);
    assert!(got.iter().all(|l| l.ms.is_finite() && l.ms >= 0.0), "{got:?}");
    assert_eq!(y.to_f32().unwrap(), [0.0, 2.0, 0.0, 4.0], "profiled work runs as usual");
    assert!(!dev.profiling());
    // Starting a profile inside a capture is refused like any other wait.
    let err = dev.capture(|| dev.profile_start()).unwrap_err().to_string();
    assert!(err.contains("starting a profile"), "{err}");
}
