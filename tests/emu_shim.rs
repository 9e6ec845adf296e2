//! The emulator's own semantics (kernels/shim_test.cu): warp shuffles and votes, a block
//! reduction through shared memory and barriers, and the CUDA rules it must enforce (a
//! divergent barrier, a thread that exits before a barrier, a shuffle from outside its
//! mask, a planted missing barrier found by comparing schedules, an access outside every
//! device allocation).

use vgg_cuda::{Device, Error, KArg, Kernel, LaunchConfig, Schedule, Tensor};

fn k(name: &'static str) -> Kernel {
    Kernel { module: "shim_test", name }
}

fn cfg(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: smem }
}

fn data(n: usize) -> Vec<f32> {
    // Small integers: every partial sum is exact, so any correct order gives the same bits.
    (0..n).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect()
}

#[test]
fn warp_reduce_and_ballot() {
    let dev = Device::emu();
    let x = data(128);
    let xt = Tensor::from_host(&dev, &[128], &x).unwrap();
    let mut sums = Tensor::<f32>::empty(&dev, &[4]).unwrap();
    let mut ballots = Tensor::<i32>::empty(&dev, &[4]).unwrap();
    // SAFETY: (const float* x, float* sums, unsigned* ballots): 128 inputs, 4 warps.
    unsafe { dev.launch(&k("shim_warp_reduce"), cfg(2, 64, 0), &[xt.arg(), sums.arg_mut(), ballots.arg_mut()]) }
        .unwrap();
    let (sums, ballots) = (sums.to_host().unwrap(), ballots.to_host().unwrap());
    for w in 0..4 {
        let chunk = &x[w * 32..(w + 1) * 32];
        assert_eq!(sums[w], chunk.iter().sum::<f32>(), "warp {w} sum");
        let want: u32 = chunk.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(l, _)| 1u32 << l).sum();
        assert_eq!(ballots[w] as u32, want, "warp {w} ballot");
    }
}

fn block_reduce(dev: &Device, racy: bool) -> Result<Vec<f32>, Error> {
    let n = 1000;
    let xt = Tensor::from_host(dev, &[n], &data(n))?;
    let mut out = Tensor::<f32>::empty(dev, &[4])?;
    out.poison()?;
    // SAFETY: (const float* x, float* out, int n, int racy): 4 blocks of 256 threads cover n,
    // 256 floats of dynamic shared memory.
    unsafe {
        dev.launch(
            &k("shim_block_reduce"),
            cfg(4, 256, 1024),
            &[xt.arg(), out.arg_mut(), KArg::I32(n as i32), KArg::I32(racy as i32)],
        )?
    };
    out.to_host()
}

/// What `block_reduce` must give: each block's 256 inputs summed on the host.
fn block_sums() -> Vec<f32> {
    let x = data(1000);
    (0..4).map(|b| x[(b * 256).min(1000)..((b + 1) * 256).min(1000)].iter().sum()).collect()
}

#[test]
fn block_reduce_is_correct_under_every_schedule() {
    let want = block_sums();
    for s in [Schedule::Index, Schedule::Reverse, Schedule::Random(7), Schedule::Random(8)] {
        let dev = Device::emu();
        dev.set_schedule(s);
        assert_eq!(block_reduce(&dev, false).unwrap(), want, "schedule {s:?}");
    }
}

#[test]
fn missing_barrier_is_caught_by_two_schedules() {
    let outs: Vec<Vec<f32>> = [Schedule::Index, Schedule::Reverse]
        .iter()
        .map(|&s| {
            let dev = Device::emu();
            dev.set_schedule(s);
            block_reduce(&dev, true).unwrap()
        })
        .collect();
    assert_ne!(outs[0], outs[1], "the racy reduction gave the same result under index and reverse schedules");
}

fn expect_kernel_error(name: &'static str, threads: u32, needle: &str) {
    let dev = Device::emu();
    let mut out = Tensor::<i32>::zeros(&dev, &[threads as usize]).unwrap();
    // SAFETY: each of these kernels takes one pointer to `threads` 4-byte elements.
    let err = unsafe { dev.launch(&k(name), cfg(1, threads, 0), &[out.arg_mut()]) }.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Kernel(_)), "{name}: unexpected error kind: {msg}");
    assert!(msg.contains(name), "{name}: the error does not name the kernel: {msg}");
    assert!(msg.contains(needle), "{name}: expected `{needle}` in: {msg}");
    assert!(msg.contains("shim_test.cu:"), "{name}: the error does not name the call site: {msg}");
}

#[test]
fn divergent_barrier_is_an_error() {
    expect_kernel_error("shim_divergent_barrier", 32, "divergent __syncthreads");
}

#[test]
fn exit_before_barrier_is_an_error() {
    expect_kernel_error("shim_exit_before_barrier", 64, "never reach");
}

#[test]
fn shuffle_outside_mask_is_an_error() {
    expect_kernel_error("shim_bad_shuffle", 32, "not in mask");
}

#[test]
fn a_copy_past_dynamic_shared_memory_is_an_error() {
    expect_kernel_error("shim_cp_async_overrun", 32, "past the end of dynamic shared memory");
}

/// `dst[to] = src[from]` on emu, `src` of `n_src` floats and `dst` of `n_dst` (one thread).
fn copy_at(dev: &Device, n_src: usize, n_dst: usize, from: i64, to: i64) -> Result<Vec<f32>, Error> {
    let src = Tensor::from_host(dev, &[n_src], &data(n_src))?;
    let mut dst = Tensor::<f32>::zeros(dev, &[n_dst])?;
    // SAFETY: the kernel takes two float pointers and two 64-bit indices; the indices outside the
    // buffers are the point: the emu device must refuse them.
    unsafe {
        dev.launch(&k("shim_copy_at"), cfg(1, 32, 0), &[src.arg(), dst.arg_mut(), KArg::I64(from), KArg::I64(to)])
    }?;
    dst.to_host()
}

#[test]
fn accesses_outside_device_allocations_fail_the_launch_naming_the_allocation() {
    let dev = Device::emu();
    let e = |from, to, n_dst| copy_at(&dev, 64, n_dst, from, to).unwrap_err().to_string();
    // In bounds: the copy lands.
    assert_eq!(copy_at(&dev, 64, 64, 63, 0).unwrap()[0], data(64)[63]);
    // Past the end of a 256-byte allocation: the guard page after it.
    let m = e(64, 0, 64);
    assert!(m.contains("shim_copy_at") && m.contains("invalid global read"), "{m}");
    assert!(m.contains("0 bytes past the end of the 256-byte allocation"), "{m}");
    let m = e(0, 64 + 1000, 64);
    assert!(m.contains("invalid global write") && m.contains("4000 bytes past the end of the 256-byte"), "{m}");
    // Before the start by more than the slack in front (3840 bytes here): the guard page there.
    let m = e(-1000, 0, 64);
    assert!(m.contains("invalid global read") && m.contains("4000 bytes before the start of the 256-byte"), "{m}");
    // Into the slack the guards leave: before the start, and the rounding after 40 bytes (10 floats).
    let m = e(0, -1, 64);
    assert!(
        m.contains("wrote outside the 256-byte device allocation") && m.contains("bytes 1 to 4 before its start"),
        "{m}"
    );
    let m = e(0, 10, 10);
    assert!(
        m.contains("wrote outside the 40-byte device allocation") && m.contains("bytes 0 to 3 past its end"),
        "{m}"
    );
    // The device goes on, its slack restored: the same copies in bounds pass.
    assert_eq!(copy_at(&dev, 64, 10, 5, 9).unwrap()[9], data(64)[5]);
    assert_eq!(block_reduce(&dev, false).unwrap(), block_sums());
}

#[test]
fn a_store_past_dynamic_shared_memory_fails_the_launch() {
    let dev = Device::emu();
    let mut out = Tensor::<i32>::zeros(&dev, &[32]).unwrap();
    let mut store_at = |smem: u32, at: i32| {
        // SAFETY: the kernel takes 32 ints and an offset into its dynamic shared memory.
        unsafe { dev.launch(&k("shim_smem_store_at"), cfg(2, 32, smem), &[out.arg_mut(), KArg::I32(at)]) }
    };
    store_at(64, 63).unwrap();
    let e = store_at(64, 64 + 100).unwrap_err().to_string();
    assert!(e.contains("shim_smem_store_at") && e.contains("block ("), "{e}");
    assert!(
        e.contains("stored past the end of the block's 64 bytes of dynamic shared memory (bytes 100 to 100"),
        "{e}"
    );
    // Without dynamic shared memory, any store to it is past the end.
    let e = store_at(0, 0).unwrap_err().to_string();
    assert!(e.contains("the block's 0 bytes of dynamic shared memory (bytes 0 to 0"), "{e}");
    store_at(256, 255).unwrap();
}

#[test]
fn a_device_survives_a_failed_launch() {
    let dev = Device::emu();
    let mut out = Tensor::<i32>::zeros(&dev, &[32]).unwrap();
    // SAFETY: one pointer to 32 ints.
    assert!(unsafe { dev.launch(&k("shim_divergent_barrier"), cfg(1, 32, 0), &[out.arg_mut()]) }.is_err());
    assert_eq!(block_reduce(&dev, false).unwrap(), block_sums());
}

#[test]
fn unknown_kernel_and_bad_launch_are_errors() {
    let dev = Device::emu();
    let bogus = Kernel { module: "shim_test", name: "no_such_kernel" };
    // SAFETY: the launch fails before any argument is read.
    let e = unsafe { dev.launch(&bogus, cfg(1, 32, 0), &[]) }.unwrap_err();
    assert!(e.to_string().contains("no_such_kernel"), "{e}");
    let mut out = Tensor::<i32>::zeros(&dev, &[32]).unwrap();
    // SAFETY: rejected for its block size before running.
    let e = unsafe { dev.launch(&k("shim_divergent_barrier"), cfg(1, 2048, 0), &[out.arg_mut()]) }.unwrap_err();
    assert!(e.to_string().contains("1 to 1024 threads"), "{e}");
    // An argument list that does not match the parameters (int* out): one too many, one
    // missing, or a 4-byte value where a pointer goes; refused before the kernel reads any.
    let cases: [&[KArg]; 3] = [&[out.arg_mut(), KArg::I32(1)], &[], &[KArg::I32(0)]];
    for args in cases {
        // SAFETY: refused before running (the check under test).
        let e = unsafe { dev.launch(&k("shim_divergent_barrier"), cfg(1, 32, 0), args) }.unwrap_err().to_string();
        assert!(e.contains("shim_divergent_barrier") && e.contains("parameters are [8] bytes"), "{e}");
    }
}

fn cp_async_wait(dev: &Device, waited: i32) -> Vec<f32> {
    let src: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let st = Tensor::from_host(dev, &[64], &src).unwrap();
    let mut out = Tensor::<f32>::empty(dev, &[64]).unwrap();
    // SAFETY: (const float* src, float* out, int waited): 64 floats each, one warp.
    unsafe { dev.launch(&k("shim_cp_async_wait"), cfg(1, 32, 0), &[st.arg(), out.arg_mut(), KArg::I32(waited)]) }
        .unwrap();
    out.to_host().unwrap()
}

#[test]
fn cp_async_lands_as_late_as_its_wait_allows() {
    let want: Vec<f32> = (0..64).map(|i| i as f32).collect();
    for s in [Schedule::Index, Schedule::Reverse, Schedule::Random(3)] {
        let dev = Device::emu();
        dev.set_schedule(s);
        assert_eq!(cp_async_wait(&dev, 0), want, "wait_group 0 covers both groups, schedule {s:?}");
    }
    // Waiting for the older group only: chunk 0 has landed whatever the schedule; chunk 1 is
    // still in flight under reverse (copies land at the covering wait) and reads stale -1s,
    // while index (copies land at issue) hides the bug.
    let dev = Device::emu();
    dev.set_schedule(Schedule::Reverse);
    let late = cp_async_wait(&dev, 1);
    assert_eq!(&late[..32], &want[..32]);
    assert!(late[32..].iter().all(|&v| v == -1.0), "chunk 1 landed before its wait: {:?}", &late[32..]);
    dev.set_schedule(Schedule::Index);
    assert_eq!(cp_async_wait(&dev, 1), want);
}

/// CUDA's launch limits hold on every device, at their boundaries: grid x below 2^31, y and z
/// at most 65535, 1 to 1024 threads a block (z at most 64), no empty grid. The emulator could
/// run past them, so a launcher that outgrew them would otherwise fail only on a GPU; a refused
/// launch names the kernel and the limit, and runs nothing.
#[test]
fn launches_are_held_to_cuda_limits_on_every_device() {
    let lc = |grid, block| LaunchConfig { grid, block, shared_bytes: 0 };
    for ok in [lc((i32::MAX as u32, 65535, 65535), (1024, 1, 1)), lc((1, 1, 1), (16, 1, 64)), lc((1, 1, 1), (1, 1, 1))]
    {
        ok.check("k").unwrap();
    }
    for (bad, why) in [
        (lc((1 << 31, 1, 1), (32, 1, 1)), "grid x is below 2^31"),
        (lc((1, 65536, 1), (32, 1, 1)), "y and z are at most 65535"),
        (lc((1, 1, 65536), (32, 1, 1)), "y and z are at most 65535"),
        (lc((0, 1, 1), (32, 1, 1)), "at least 1"),
        (lc((1, 1, 1), (1025, 1, 1)), "1 to 1024 threads"),
        (lc((1, 1, 1), (1, 1, 65)), "z at most 64"),
        (lc((1, 1, 1), (0, 1, 1)), "1 to 1024 threads"),
    ] {
        let e = bad.check("k").unwrap_err().to_string();
        assert!(e.contains("k: grid") && e.contains(why), "{bad:?}: {e}");
    }
    // Through a device: refused before anything runs.
    let dev = Device::emu();
    let xt = Tensor::from_host(&dev, &[128], &data(128)).unwrap();
    let mut sums = Tensor::<f32>::empty(&dev, &[4]).unwrap();
    let mut ballots = Tensor::<i32>::empty(&dev, &[4]).unwrap();
    let launches = dev.launches();
    // SAFETY: refused before the launch (the arguments would fit a grid of 2 blocks).
    let e = unsafe {
        dev.launch(
            &k("shim_warp_reduce"),
            lc((1, 65536, 1), (64, 1, 1)),
            &[xt.arg(), sums.arg_mut(), ballots.arg_mut()],
        )
    }
    .unwrap_err();
    assert!(e.to_string().contains("shim_warp_reduce: grid"), "{e}");
    assert_eq!(dev.launches(), launches, "nothing may run");
    // Counts past u32 are an error, not a wrapped grid.
    assert!(LaunchConfig::grid_of("big", 1 << 33, 1, 1)
        .unwrap_err()
        .to_string()
        .contains("big: 8589934592 blocks along grid x"));
}

/// mbarrier misuse the emulator must name: an arrival for the next phase before this one's bytes
/// landed, a phase short of arrivals (a deadlock naming the wait), a bulk copy never waited for.
#[test]
fn mbarrier_misuse_is_named() {
    let run = |name: &'static str, schedule: vgg_cuda::device::Schedule| {
        let dev = Device::emu();
        dev.set_schedule(schedule);
        let mut out = Tensor::<i32>::zeros(&dev, &[32]).unwrap();
        // SAFETY: each takes one pointer to 32 ints (read as 16 bytes by the bulk copy).
        let err = unsafe { dev.launch(&k(name), cfg(1, 32, 16), &[out.arg_mut()]) }.unwrap_err();
        assert!(matches!(err, Error::Kernel(_)) && err.to_string().contains(name), "{name}: {err}");
        err.to_string()
    };
    use vgg_cuda::device::Schedule;
    let e = run("shim_mbarrier_early_arrive", Schedule::Index);
    assert!(e.contains("an arrival for the next phase"), "{e}");
    let e = run("shim_mbarrier_short_arrivals", Schedule::Index);
    assert!(e.contains("deadlock") && e.contains("waits on an mbarrier at shim_test.cu:"), "{e}");
    let e = run("shim_bulk_unwaited", Schedule::Reverse);
    assert!(e.contains("bulk copies on an mbarrier never waited for"), "{e}");
}
