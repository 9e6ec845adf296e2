//! Thread-block clusters on the emulator (kernels/emu/cluster.cpp, kernels/cluster_test.cu): the
//! selftest rows, the same bits under every schedule, a graph replaying a cluster launch, and
//! the CUDA rules the emulator must name instead of computing on (a missing final cluster
//! barrier, a deadlock across blocks, shared memory used too early or after its block exited,
//! an mbarrier of another block not ready, static shared memory, a bad cta mask or cluster size).

use vgg_cuda::device::{TensorMap, TensorMap2dSpec};
use vgg_cuda::reference as r;
use vgg_cuda::{selftest, Device, Error, KArg, Kernel, LaunchConfig, Schedule, Tensor};

fn k(name: &'static str) -> Kernel {
    Kernel { module: "cluster_test", name }
}

fn cfg(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: smem }
}

#[test]
fn selftest_rows_pass() {
    let rows = selftest::run(&Device::emu(), Some("cluster"));
    assert!(rows.len() >= 8, "{rows:#?}");
    let bad: Vec<_> = rows.iter().filter(|r| !r.ran_and_passed()).collect();
    assert!(bad.is_empty(), "cluster rows failed on emu: {bad:#?}");
}

/// Every peer's words read through mapa, in 3 clusters of 4 blocks.
fn exchange(dev: &Device, skip_final_sync: bool) -> Result<Vec<i32>, Error> {
    let mut out = Tensor::<i32>::empty(dev, &[12 * (4 * 96 + 1)])?;
    out.poison()?;
    // SAFETY: (int* out, int skip_final_sync): 12 blocks of 96 threads write 4 * 96 + 1 words
    // each; shared memory a word a thread.
    unsafe {
        let args = [out.arg_mut(), KArg::I32(skip_final_sync as i32)];
        dev.launch_cluster(&k("cluster_dsmem_exchange"), cfg(12, 96, 4 * 96), 4, &args)?
    };
    out.to_host()
}

/// A multicast box to 3 of 4 ranks from rank 3, as raw bytes of 2 clusters' outputs.
fn multicast(dev: &Device) -> Vec<u8> {
    let (inner, outer) = (96usize, 80usize);
    let m: Vec<u16> = (0..inner * outer).map(|i| (i * 37 % 65521) as u16).collect();
    let bytes: Vec<u8> = m.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mt = Tensor::from_host(dev, &[bytes.len()], &bytes).unwrap();
    let spec = TensorMap2dSpec { inner, outer, row_stride: 2 * inner, box_inner: 64, box_outer: 24, swizzle128: true };
    let map = TensorMap::new_2d(dev, mt.device_ptr(), spec).unwrap();
    let b = spec.box_bytes();
    let mut out = Tensor::from_host(dev, &[8 * b], &vec![0xA5u8; 8 * b]).unwrap();
    let args = [map.arg(), KArg::I32(40), KArg::I32(70), KArg::I32(b as i32), KArg::I32(3), KArg::I32(0b1011)];
    let args: Vec<KArg> = args.into_iter().chain([out.arg_mut()]).collect();
    // SAFETY: (TmaDesc map, int c0, int c1, int bytes, int issuer, int mask, unsigned char* out):
    // the map describes mt, out holds a box a block; shared memory the box, alignment, mbarrier.
    unsafe { dev.launch_cluster(&k("cluster_tma_multicast"), cfg(8, 64, (b + 1040) as u32), 4, &args) }.unwrap();
    let got = out.to_host().unwrap();
    let want = r::tma_box(&m, &spec.nd(), &[40, 70]);
    assert_eq!(got, r::cluster_multicast(&want, 8, 4, 0b1011, 0xA5), "multicast");
    got
}

#[test]
fn clusters_give_the_same_bits_under_every_schedule() {
    let want = r::cluster_exchange(12, 4, 96);
    let mut casts = vec![];
    for s in [Schedule::Index, Schedule::Reverse, Schedule::Random(3), Schedule::Random(4)] {
        let dev = Device::emu();
        dev.set_schedule(s);
        assert_eq!(exchange(&dev, false).unwrap(), want, "exchange under {s:?}");
        casts.push(multicast(&dev));
    }
    assert!(casts.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_graph_replays_a_cluster_launch() {
    let dev = Device::emu();
    let mut out = Tensor::<i32>::empty(&dev, &[4]).unwrap();
    // SAFETY: (int* out): a word a block; shared memory an mbarrier and 2 words.
    let launch = |out: &mut Tensor<i32>| unsafe {
        dev.launch_cluster(&k("cluster_remote_arrive"), cfg(4, 32, 16), 2, &[out.arg_mut()])
    };
    let graph = dev.capture(|| launch(&mut out)).unwrap();
    out.poison().unwrap();
    // SAFETY: out, the graph's one buffer, lives on.
    unsafe { graph.launch() }.unwrap();
    assert_eq!(out.to_host().unwrap(), r::cluster_remote_words(2, 2));
}

#[test]
fn a_missing_final_cluster_barrier_is_named_under_every_schedule() {
    for s in [Schedule::Index, Schedule::Reverse, Schedule::Random(5)] {
        let dev = Device::emu();
        dev.set_schedule(s);
        // Named as the exit of a block whose shared memory a peer mapped, or (when the peer maps
        // it only after that exit) as the peer's mapa of an exited block.
        let e = exchange(&dev, true).unwrap_err().to_string();
        assert!(e.contains("cluster_dsmem_exchange") && e.contains("mapa at cluster_test.cu:"), "{s:?}: {e}");
        assert!(e.contains("exited") && e.contains("end the kernel with cluster_sync"), "{s:?}: {e}");
    }
}

/// The error of cluster_planted's bug `bug` under schedule `s` (clusters of 2, 32 threads).
fn planted(bug: i32, s: Schedule) -> String {
    let dev = Device::emu();
    dev.set_schedule(s);
    let mut out = Tensor::<i32>::zeros(&dev, &[64]).unwrap();
    // SAFETY: (int* out, int bug): out holds a word a thread of 2 blocks; 64 bytes of shared
    // memory hold the kernel's mbarrier and word.
    let e = unsafe { dev.launch_cluster(&k("cluster_planted"), cfg(2, 32, 64), 2, &[out.arg_mut(), KArg::I32(bug)]) }
        .expect_err("the planted bug went unnoticed");
    assert!(matches!(e, Error::Kernel(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("cluster_planted"), "{e}");
    e
}

#[test]
fn cluster_rules_are_named() {
    let idx = Schedule::Index;
    let e = planted(1, idx);
    assert!(e.contains("mapa at cluster_test.cu:") && e.contains("before any cluster barrier"), "{e}");
    let e = planted(2, idx);
    assert!(e.contains("no mbarrier was initialised at offset 0 of rank 0"), "{e}");
    let e = planted(3, idx);
    assert!(e.contains("with no cluster barrier between its init and this use"), "{e}");
    let e = planted(4, idx);
    assert!(e.contains("mbarrier.init") && e.contains("static __shared__"), "{e}");
    let e = planted(7, idx);
    assert!(e.contains("cluster_test.cu:") && e.contains("arrives again before its barrier.cluster.wait"), "{e}");
}

#[test]
fn a_deadlock_across_blocks_names_every_blocks_wait() {
    for s in [Schedule::Index, Schedule::Reverse, Schedule::Random(1)] {
        let e = planted(5, s);
        assert!(e.contains("cluster of blocks (0,0,0) to (1,0,0): deadlock"), "{s:?}: {e}");
        assert!(e.contains("block (0,0,0) thread") && e.contains("waits on an mbarrier at cluster_test.cu:"), "{e}");
        assert!(e.contains("block (1,0,0) thread") && e.contains("waits at barrier.cluster.wait"), "{e}");
    }
}

/// A read through a pointer mapped while the peer ran, after the peer exited: the schedule that
/// runs the peer to its exit first (reverse) faults on its unmapped shared memory.
#[test]
fn shared_memory_used_after_its_block_exited_is_named() {
    let e = planted(6, Schedule::Reverse);
    assert!(e.contains("block (0,0,0), rank 0 of a cluster of 2"), "{e}");
    assert!(e.contains("shared memory of block (1,0,0) (rank 1) after that block exited"), "{e}");
}

#[test]
fn bad_cluster_launches_are_errors() {
    let dev = Device::emu();
    let mut out = Tensor::<i32>::zeros(&dev, &[3 * 64]).unwrap();
    for (blocks, cluster, needle) in [(3, 2, "grid x 3 is not a multiple of the cluster size 2"), (16, 16, "1 to 8")] {
        // SAFETY: refused before the kernel runs.
        let e = unsafe {
            dev.launch_cluster(&k("cluster_planted"), cfg(blocks, 32, 64), cluster, &[out.arg_mut(), KArg::I32(0)])
        }
        .unwrap_err();
        assert!(matches!(e, Error::Shape(_)) && e.to_string().contains(needle), "{e}");
    }
    // A multicast whose cta mask names a rank the cluster of 2 does not have.
    let mt = Tensor::<u8>::zeros(&dev, &[2 * 64 * 8]).unwrap();
    let spec = TensorMap2dSpec { inner: 64, outer: 8, row_stride: 128, box_inner: 64, box_outer: 8, swizzle128: false };
    let map = TensorMap::new_2d(&dev, mt.device_ptr(), spec).unwrap();
    let mut o = Tensor::<u8>::zeros(&dev, &[2 * 1024]).unwrap();
    let args = [map.arg(), KArg::I32(0), KArg::I32(0), KArg::I32(1024), KArg::I32(0), KArg::I32(0b101), o.arg_mut()];
    // SAFETY: as in `multicast`; refused at the multicast, before anything lands.
    let e = unsafe { dev.launch_cluster(&k("cluster_tma_multicast"), cfg(2, 32, 2064), 2, &args) }.unwrap_err();
    assert!(e.to_string().contains("cta mask 0x0005 names ranks outside the cluster"), "{e}");
}

/// The wgmma emulation's per-warp state belongs to the block: two blocks of a cluster, their
/// warps' wgmma's interleaved on one OS thread (random schedule), each get their own product.
#[test]
fn wgmma_state_follows_the_block_in_a_cluster() {
    use vgg_cuda::half::f16;
    let ints = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed) % 9) as f32 - 4.0).collect() };
    let (a, bt, c) = (ints(64 * 16, 1), ints(64 * 16, 2), ints(64 * 64, 3));
    let mut want = vec![0f32; 64 * 64];
    for i in 0..64 {
        for j in 0..64 {
            want[i * 64 + j] = c[i * 64 + j] + (0..16).map(|k| a[i * 16 + k] * bt[j * 16 + k]).sum::<f32>();
        }
    }
    for s in [Schedule::Index, Schedule::Random(3), Schedule::Random(4)] {
        let dev = Device::emu();
        dev.set_schedule(s);
        let at = Tensor::<f16>::from_f32(&dev, &[64 * 16], &a).unwrap();
        let btt = Tensor::<f16>::from_f32(&dev, &[64 * 16], &bt).unwrap();
        let ct = Tensor::from_host(&dev, &[64 * 64], &c).unwrap();
        let mut d = Tensor::<f32>::empty(&dev, &[64 * 64]).unwrap();
        // The kernel ignores blockIdx: both blocks compute the same product into D.
        let args = [at.arg(), btt.arg(), ct.arg(), d.arg_mut()]
            .into_iter()
            .chain([128, 256, 128, 256, 1, 0].map(KArg::I32))
            .collect::<Vec<_>>();
        let wg = Kernel { module: "wgmma_test", name: "prim_wgmma_n64" };
        // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D, int lbo_a, int
        // sbo_a, int lbo_b, int sbo_b, int acc, int off): A and Bt 64 x 16, C and D 64 x 64; the
        // selftest's k-adjacent strides, inside 2064 + 32 * 64 bytes of shared memory.
        unsafe { dev.launch_cluster(&wg, cfg(2, 128, 2064 + 32 * 64), 2, &args) }.unwrap();
        let got = d.to_host().unwrap();
        let bad = got.iter().zip(&want).position(|(g, w)| g != w);
        assert!(bad.is_none(), "{s:?}: first mismatch at {bad:?} of 64 x 64");
    }
}
