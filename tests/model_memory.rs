//! The model's memory plan on emu: made without a device, it is what the model allocates,
//! VGG-16 plans batches past 2^31 activation elements, and steps on the shared arena match
//! steps with every buffer its own memory, bit for bit.

mod model_common;

use model_common::{batch_data, upload};
use vgg_cuda::model::{Arch, Init, MemoryPlan, OptimConfig, Role, Sharing, Vgg, VggConfig};
use vgg_cuda::Device;

/// Tiny variants that between them run every layer kind and buffer: pools and dropout (A),
/// LRN (A-LRN), 1x1 convs whose dgrad leaves the conv below an unmasked gradient (C).
fn memory_configs() -> Vec<VggConfig> {
    let tiny = |arch, dropout| VggConfig { dropout, ..VggConfig::small(arch, 1.0 / 16.0, 32, 16, 5) };
    vec![tiny(Arch::A, 0.5), tiny(Arch::ALrn, 0.0), tiny(Arch::C, 0.5)]
}

/// VGG-16 at 224 px plans (without a device) at batch 512 and 1024, 11.7 and 21.5 GB (`vgg info
/// --model D --batch 512,1024`) on an H200's 141: every conv layer's Auto plan accepts them
/// (Conv3x3::new holds N*H*W below 2^30), though conv1's activations then reach 1.64G and 3.29G
/// elements, past 2^31 at 1024, which the element-wise, pool, Winograd and implicit-GEMM kernels
/// index in 64 bits (Wgmma plans stop at batch 668: tests/conv.rs).
#[test]
fn vgg16_plans_batches_whose_activations_pass_2_31_elements() {
    let cfg = VggConfig::paper(Arch::D);
    assert_eq!(cfg.input, 224);
    for n in [512, 1024] {
        let plan = MemoryPlan::new(&cfg, n, Sharing::Lifetimes).unwrap_or_else(|e| panic!("batch {n}: {e}"));
        let conv1 = plan.buffer(Role::Act(0)).unwrap();
        assert_eq!(conv1.shape, [n, 224, 224, 64], "batch {n}");
        assert!(plan.total() < 141 << 30, "batch {n}: {} bytes", plan.total());
    }
}

/// The plan, made without a device, is what the model allocates, byte for byte; buffers that
/// share arena bytes are never live in the same phase; sharing saves memory.
#[test]
fn memory_plan_is_what_the_model_allocates() {
    let dev = Device::emu();
    for cfg in memory_configs() {
        for sharing in [Sharing::Lifetimes, Sharing::Separate] {
            let plan = MemoryPlan::new(&cfg, 3, sharing).unwrap();
            let before = dev.allocated_bytes();
            let mut vgg = Vgg::new(&dev, cfg.clone(), 3, Init::He, 1).unwrap();
            vgg.relayout(sharing).unwrap();
            let what = format!("{} {sharing:?}", cfg.describe());
            assert_eq!(dev.allocated_bytes() - before, plan.total(), "{what}: allocated vs planned");
            assert_eq!(vgg.device_bytes(), plan.total(), "{what}");
            let b = plan.breakdown();
            assert_eq!(b.total(), plan.total(), "{what}");
            assert_eq!(b.masters, 4 * cfg.param_count(), "{what}");
            drop(vgg);
            assert_eq!(dev.allocated_bytes(), before, "{what}: bytes left after the model is dropped");
            let bufs = plan.buffers();
            for (i, x) in bufs.iter().enumerate() {
                assert!(x.offset + x.bytes <= plan.arena_bytes(), "{what}: {x:?} outside the arena");
                for y in &bufs[i + 1..] {
                    let together = x.overlaps_in_memory(y) && x.overlaps_in_time(y);
                    assert!(!together, "{what}: {x:?} and {y:?} share bytes while both live");
                }
            }
            assert!(plan.arena_bytes() >= plan.peak_live(), "{what}");
        }
        let shared = MemoryPlan::new(&cfg, 3, Sharing::Lifetimes).unwrap();
        let separate = MemoryPlan::new(&cfg, 3, Sharing::Separate).unwrap();
        let saved = separate.breakdown().activation_grads;
        assert!(
            shared.total() + saved / 2 < separate.total(),
            "{}: sharing saves {} bytes of {saved} of activation gradients",
            cfg.describe(),
            separate.total() - shared.total()
        );
    }
}

/// Steps on the shared arena, every byte outside the live buffers poisoned as each phase
/// begins, give bit for bit the losses, logits, gradients and weights of steps with every
/// buffer its own memory: no phase reads a buffer outside its planned lifetime, and no two
/// buffers that share bytes are live together.
#[test]
fn shared_memory_steps_match_separate_bit_for_bit() {
    let dev = Device::emu();
    for cfg in memory_configs() {
        let batch = 2;
        let build = |sharing, check| {
            // A scale at which these nets' steps apply (their fp16 gradients overflow at 65536).
            let o = OptimConfig { init_scale: 256.0, ..Default::default() };
            let mut v = Vgg::with_optim(&dev, cfg.clone(), batch, Init::He, 5, o).unwrap();
            v.relayout(sharing).unwrap();
            v.check_lifetimes(check);
            v
        };
        let mut runs =
            [build(Sharing::Lifetimes, true), build(Sharing::Separate, true), build(Sharing::Separate, false)];
        for step in 0..2u64 {
            let (images, labels) = batch_data(&cfg, batch, 40 + step);
            let (xi, xl) = upload(&dev, &cfg, &images, &labels);
            let out: Vec<_> = runs
                .iter_mut()
                .map(|v| {
                    let s = v.train_step(&xi, &xl, 0.01, step).unwrap();
                    assert!(!s.skipped, "{}: step {step} overflowed", cfg.describe());
                    let logits = v.logits().to_host().unwrap();
                    let bits = |t: &vgg_cuda::Tensor<f32>| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect();
                    let p: Vec<(Vec<u32>, Vec<u32>)> = v.params().iter().map(|p| (bits(&p.g), bits(&p.w))).collect();
                    (s.loss.to_bits(), logits, p)
                })
                .collect();
            for (r, o) in out.iter().enumerate().skip(1) {
                let what = format!("{} step {step}: run {r}", cfg.describe());
                assert_eq!(o.0, out[0].0, "{what}: loss");
                assert_eq!(o.1, out[0].1, "{what}: logits");
                for (t, (a, b)) in o.2.iter().zip(&out[0].2).enumerate() {
                    let name = &runs[0].params()[t].name;
                    assert!(a.0 == b.0 && a.1 == b.1, "{what}: {name} gradient or weights differ");
                }
            }
            // Evaluation (forward only) on the same arena.
            let e: Vec<_> = runs.iter_mut().map(|v| v.evaluate(&xi, &xl).unwrap().loss.to_bits()).collect();
            assert!(e.iter().all(|&l| l == e[0]), "{}: eval losses {e:?}", cfg.describe());
        }
    }
}

/// Under the lifetime check with every buffer its own bytes, a guard band of poison follows
/// each buffer; a write past a buffer's end (planted here between two steps, where a faulty
/// kernel's would land) fails the next step, naming the buffer, and an untouched band passes.
#[test]
fn a_write_past_a_buffer_fails_the_checked_step_naming_the_buffer() {
    let dev = Device::emu();
    let cfg = memory_configs().remove(0);
    let mut vgg = Vgg::new(&dev, cfg.clone(), 2, Init::He, 3).unwrap();
    vgg.relayout(Sharing::Separate).unwrap();
    vgg.check_lifetimes(true);
    let plan = vgg.memory().clone();
    // A band behind every buffer and the workspace region, at least GUARD_BYTES, covering no
    // tensor's bytes.
    let bands = plan.guard_bands();
    assert_eq!(bands.len(), plan.buffers().iter().filter(|b| !matches!(b.role, Role::Workspace(_))).count() + 1);
    for &(offset, len, before) in &bands {
        assert!(len >= vgg_cuda::model::GUARD_BYTES, "{before:?}: a band of {len} bytes");
        for b in plan.buffers() {
            let end = b.offset + b.elem * b.shape.iter().product::<usize>();
            assert!(offset + len <= b.offset || offset >= end, "the band after {before:?} overlaps {:?}", b.role);
        }
    }
    assert!(MemoryPlan::new(&cfg, 2, Sharing::Lifetimes).unwrap().guard_bands().is_empty());
    let (images, labels) = batch_data(&cfg, 2, 1);
    let (xi, xl) = upload(&dev, &cfg, &images, &labels);
    for step in 0..2 {
        vgg.train_step(&xi, &xl, 0.01, step).unwrap();
    }
    // One byte just past the end of the second feature layer's activations.
    let act = plan.buffer(Role::Act(1)).unwrap();
    let end = act.offset + 2 * act.shape.iter().product::<usize>();
    let mut byte = vgg_cuda::Tensor::<u8>::view(vgg.arena(), end, &[1]).unwrap();
    byte.copy_from_host(&[0]).unwrap();
    let e = vgg.train_step(&xi, &xl, 0.01, 2).unwrap_err().to_string();
    assert!(e.contains("wrote past the end of Act(1)") && e.contains("bytes 0 to 0 after it"), "{e}");
    // The band is poisoned again: the next step passes.
    vgg.train_step(&xi, &xl, 0.01, 3).unwrap();
}
