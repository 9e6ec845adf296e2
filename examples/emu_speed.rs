//! How fast the emu device is: fiber switches per second on a barrier-heavy kernel (the
//! shared-memory tree reduction of kernels/shim_test.cu), and a plain elementwise kernel.
//!
//!     cargo run --release --example emu_speed
use std::time::Instant;
use vgg_cuda::{ops, Device, KArg, Kernel, LaunchConfig, Schedule, Tensor};

fn main() -> vgg_cuda::Result<()> {
    let dev = Device::emu();
    let (blocks, threads) = (2048u32, 256u32);
    let n = (blocks * threads) as usize;
    let x = Tensor::from_host(&dev, &[n], &vec![1.0f32; n])?;
    let mut out = Tensor::<f32>::empty(&dev, &[blocks as usize])?;
    let k = Kernel { module: "shim_test", name: "shim_block_reduce" };
    let cfg = LaunchConfig { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: threads * 4 };
    for (label, s) in [("index, blocks in parallel", Schedule::Index), ("random, one OS thread", Schedule::Random(1))] {
        dev.set_schedule(s);
        let t = Instant::now();
        // SAFETY: (const float* x, float* out, int n, int racy): n inputs, one output a block,
        // blockDim floats of dynamic shared memory.
        unsafe { dev.launch(&k, cfg, &[x.arg(), out.arg_mut(), KArg::I32(n as i32), KArg::I32(0)])? };
        let secs = t.elapsed().as_secs_f64();
        // Per thread: 1 barrier before the tree + log2(256) = 8 in it; each wait is a switch
        // out and back in, plus the switch into the fiber and out at exit.
        let switches = n as f64 * (2.0 * 9.0 + 2.0);
        println!(
            "block reduce, {blocks} blocks x {threads} threads, {label}: {:.1} ms, {:.1} M fiber switches/s",
            secs * 1e3,
            switches / secs / 1e6
        );
    }
    dev.set_schedule(Schedule::Index);
    let m = 1 << 22;
    let a = Tensor::from_f32(&dev, &[m], &vec![-0.5; m])?;
    let mut b = Tensor::empty(&dev, &[m])?;
    let t = Instant::now();
    ops::relu_fwd(&a, &mut b)?;
    let secs = t.elapsed().as_secs_f64();
    println!("relu_fwd_f16, {m} elements: {:.1} ms, {:.1} M threads/s", secs * 1e3, m as f64 / secs / 1e6);
    Ok(())
}
