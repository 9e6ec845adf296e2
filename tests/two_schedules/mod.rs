//! Helpers shared by the integration tests of the training ops (softmax, dropout, optim,
//! lrn, input, reduce): the selftest check on emu, and bit-identity across emulator
//! schedules, which finds missing barriers and order-dependent reductions.
#![allow(dead_code)]

use half::f16;
use vgg_cuda::{selftest, Device, Schedule, Tensor};

/// Every row of the named `vgg selftest` check ran and passed on a fresh emu device (a row
/// saying the check does not run on this device fails it: the emulator runs every kernel).
pub fn assert_check_passes(name: &str) {
    let rows = selftest::run(&Device::emu(), Some(name));
    assert!(!rows.is_empty(), "check {name} produced no rows");
    let bad: Vec<_> = rows.iter().filter(|r| !r.ran_and_passed()).collect();
    assert!(bad.is_empty(), "check {name} failed or did not run on emu: {bad:#?}");
}

/// Runs `f` on fresh emu devices under index, reverse and seeded-random schedules and
/// requires the same result from each (compare bits: see [`bits16`], [`bits32`]).
pub fn assert_schedule_independent<T: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn(&Device) -> T) {
    let run = |s: Schedule| {
        let dev = Device::emu();
        dev.set_schedule(s);
        f(&dev)
    };
    let want = run(Schedule::Index);
    for s in [Schedule::Reverse, Schedule::Random(7), Schedule::Random(12345)] {
        assert_eq!(want, run(s), "{what}: the output depends on the emulator schedule ({s:?})");
    }
}

pub fn bits16(t: &Tensor<f16>) -> Vec<u16> {
    t.to_host().unwrap().iter().map(|h| h.to_bits()).collect()
}

pub fn bits32(t: &Tensor<f32>) -> Vec<u32> {
    t.to_host().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Deterministic pseudo-random values in about [-scale, scale] (no rand dependency needed).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
