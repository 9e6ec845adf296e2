//! Timings of the training-step ops on a real GPU at VGG-16 sizes (batch 256 for the
//! activations), with the achieved bandwidth: `cargo bench --bench train_ops` on a GPU machine.
//! A bench, not a test: it prints times and asserts nothing (`vgg bench gemm` reports the SGD
//! step's share of the copy bandwidth, the figure issue 5's target is measured by). Without a
//! usable GPU it says so and exits.

use half::f16;
use vgg_cuda::ops::{self, InputNorm, LrnParams, Reducer, Sgd, SgdParam, SgdPlan, XentBuffers};
use vgg_cuda::{Device, Tensor};

/// Mean milliseconds of `f` over `reps` launches after 3 warm-ups, device-timed.
fn time(dev: &Device, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    dev.synchronize().unwrap();
    let t = dev.start_timer().unwrap();
    for _ in 0..reps {
        f();
    }
    t.stop_ms().unwrap() / reps as f64
}

fn row(name: &str, bytes: f64, ms: f64) {
    println!("{name:<44} {ms:>9.4} ms {:>8.0} GB/s", bytes / ms / 1e6);
}

/// A parameter's master weights, momentum, gradient and fp16 copy.
type Slot = (Tensor<f32>, Tensor<f32>, Tensor<f32>, Tensor<f16>);

fn params<'a>(ts: &'a mut [Slot], sizes: &[(usize, bool)]) -> Vec<SgdParam<'a>> {
    ts.iter_mut().zip(sizes).map(|((w, v, g, h), s)| SgdParam { w, v, g, w16: Some(h), decay: s.1 }).collect()
}

/// VGG-16's parameter tensors, (elements, takes weight decay), as `vgg bench gemm` has them.
fn vgg16_params() -> Vec<(usize, bool)> {
    vgg_cuda::bench::gemm::vgg16_params(false).iter().map(|p| (p.len, p.decay)).collect()
}

fn main() {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no GPU: {e}");
            return;
        }
    };
    println!("training-step ops on {}", dev.name());

    // Optimizer over all of VGG-16 (138M parameters) in one launch.
    let sizes = vgg16_params();
    let total: usize = sizes.iter().map(|s| s.0).sum();
    let mut ts: Vec<Slot> = sizes
        .iter()
        .map(|&(n, _)| {
            (
                Tensor::zeros(&dev, &[n]).unwrap(),
                Tensor::zeros(&dev, &[n]).unwrap(),
                Tensor::zeros(&dev, &[n]).unwrap(),
                Tensor::zeros(&dev, &[n]).unwrap(),
            )
        })
        .collect();
    let plan = SgdPlan::new(&params(&mut ts, &sizes)).unwrap();
    let hp = Sgd::VGG.with_scale(1024.0);
    let mut flag = ops::OverflowFlag::new(&dev).unwrap();
    let ms = time(&dev, 20, || plan.step(&mut params(&mut ts, &sizes), &hp, None).unwrap());
    row(&format!("sgd_multi_f32 ({total} params, {} blocks)", plan.blocks()), 22.0 * total as f64, ms);
    let ms = time(&dev, 20, || plan.check_overflow(&params(&mut ts, &sizes), &mut flag).unwrap());
    row("amp_check_f32 (+ flag clear)", 4.0 * total as f64, ms);
    drop(ts);

    // Softmax cross-entropy at batch 256 x 1000 classes.
    let z = Tensor::<f16>::zeros(&dev, &[256, 1000]).unwrap();
    let labels = Tensor::<i32>::zeros(&dev, &[256]).unwrap();
    let mut dz = Tensor::<f16>::zeros(&dev, &[256, 1000]).unwrap();
    let mut bufs = XentBuffers::new(&dev, 256).unwrap();
    let ms = time(&dev, 50, || ops::softmax_xent(&z, &labels, Some(&mut dz), 1024.0, &mut bufs).unwrap());
    row("softmax_xent_f16 + finish (256 x 1000)", 4.0 * 256e3, ms);

    // Dropout on FC6's output, batch 256.
    let x = Tensor::<f16>::zeros(&dev, &[256, 4096]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[256, 4096]).unwrap();
    let ms = time(&dev, 50, || ops::dropout_fwd(&x, &mut y, 1, 2, 0.5).unwrap());
    row("dropout_f16 (256 x 4096)", 4.0 * x.len() as f64, ms);
    let x = Tensor::<f16>::zeros(&dev, &[64, 25088 * 8]).unwrap();
    let mut y = Tensor::<f16>::zeros(&dev, &[64, 25088 * 8]).unwrap();
    let ms = time(&dev, 20, || ops::dropout_fwd(&x, &mut y, 1, 2, 0.5).unwrap());
    row("dropout_f16 (12.8M elements)", 4.0 * x.len() as f64, ms);

    // Input normalisation of a 224x224 batch of 256, with flips.
    let img = Tensor::<u8>::zeros(&dev, &[256, 224, 224, 3]).unwrap();
    let flip = Tensor::<u8>::zeros(&dev, &[256]).unwrap();
    let mut inp = Tensor::<f16>::zeros(&dev, &[256, 224, 224, 3]).unwrap();
    let ms = time(&dev, 20, || ops::normalize_input(&img, Some(&flip), &InputNorm::IMAGENET, &mut inp).unwrap());
    row("normalize_u8_f16 (256 x 224 x 224 x 3)", 3.0 * img.len() as f64, ms);
    drop((img, inp));

    // LRN after conv1 of A-LRN, batch 32.
    let s = [32, 224, 224, 64];
    let a = Tensor::<f16>::zeros(&dev, &s).unwrap();
    let g = Tensor::<f16>::zeros(&dev, &s).unwrap();
    let mut b = Tensor::<f16>::zeros(&dev, &s).unwrap();
    let ms = time(&dev, 10, || ops::lrn_fwd(&a, &mut b, &LrnParams::ALEXNET).unwrap());
    row("lrn_fwd_f16 (32 x 224 x 224 x 64)", 4.0 * a.len() as f64, ms);
    let ms = time(&dev, 10, || ops::lrn_bwd(&a, &g, &mut b, &LrnParams::ALEXNET).unwrap());
    row("lrn_bwd_f16 (32 x 224 x 224 x 64)", 6.0 * a.len() as f64, ms);
    drop((a, g, b));

    // Reductions over FC6's weight gradient.
    let w = Tensor::<f32>::zeros(&dev, &[25088 * 4096]).unwrap();
    let mut red = Reducer::new(&dev).unwrap();
    let ms = time(&dev, 20, || {
        red.sum(&w).unwrap();
    });
    row("reduce_sum_f32 (102.8M)", 4.0 * w.len() as f64, ms);
    let ms = time(&dev, 20, || {
        red.max_abs(&w).unwrap();
    });
    row("reduce_maxabs_f32 (102.8M)", 4.0 * w.len() as f64, ms);
}
