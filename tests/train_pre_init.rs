//! The paper's pre-initialisation on emu with tiny configs: a trained A (1/16 width, 32x32)
//! gives D its first four convs and three FC layers at the block-matched places, the other
//! layers keep `--init`'s draw; mismatched widths and inputs are refused with the knob named.

use std::collections::HashMap;
use vgg_cuda::model::{Arch, Init, NamedTensor, Vgg, VggConfig};
use vgg_cuda::train::{checkpoint, pre_init, run, TrainArgs};
use vgg_cuda::Device;
mod common;

/// A fresh folder for test `name`, removed when the test ends.
fn tmpdir(name: &str) -> common::TempDir {
    common::TempDir::new("pre-init", name)
}

fn args(model: &str) -> TrainArgs {
    TrainArgs { model: model.into(), lr: Some(0.01), ..common::tiny_train_args() }
}

fn cfg(arch: Arch, width: f32, input: usize) -> VggConfig {
    VggConfig { dropout: 0.0, ..VggConfig::small(arch, width, input, 16, 3) }
}

fn by_name(t: Vec<NamedTensor>) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    t.into_iter().map(|(n, s, d)| (n, (s, d))).collect()
}

#[test]
fn d_takes_four_convs_and_the_classifier_from_a() {
    let dir = tmpdir("a");
    run(&TrainArgs { checkpoint_dir: Some(dir.to_path_buf()), steps: Some(2), ..args("A") }).unwrap();
    let a_path = dir.join("last.safetensors");
    let a = by_name(checkpoint::load(&a_path).unwrap().weights);

    let dev = Device::emu();
    let fresh = by_name(Vgg::new(&dev, cfg(Arch::D, 0.0625, 32), 1, Init::He, 3).unwrap().export_params().unwrap());
    let mut d = Vgg::new(&dev, cfg(Arch::D, 0.0625, 32), 1, Init::He, 3).unwrap();
    let map = pre_init::apply(&mut d, &a_path).unwrap();
    let want: Vec<(&str, &str)> = vec![
        ("features.0", "features.0"),
        ("features.3", "features.5"),
        ("features.6", "features.10"),
        ("features.8", "features.12"),
        ("classifier.0", "classifier.0"),
        ("classifier.3", "classifier.3"),
        ("classifier.6", "classifier.6"),
    ];
    assert_eq!(map.iter().map(|(f, t)| (f.as_str(), t.as_str())).collect::<Vec<_>>(), want);
    let got = by_name(d.export_params().unwrap());
    for (name, (shape, data)) in &got {
        let layer = name.rsplit_once('.').unwrap().0;
        match want.iter().find(|m| m.1 == layer) {
            Some((from, _)) => {
                let src = &a[&format!("{from}.{}", name.rsplit_once('.').unwrap().1)];
                assert_eq!((shape, data), (&src.0, &src.1), "{name} should be A's {from}");
            }
            None => assert_eq!(data, &fresh[name].1, "{name} should keep D's own init"),
        }
    }
    // Other targets: A-LRN (indices shifted by the LRN) and E; D from A through `vgg train`.
    let m = pre_init::layer_map(&cfg(Arch::A, 0.0625, 32), &cfg(Arch::ALrn, 0.0625, 32)).unwrap();
    assert_eq!(
        m[..4].iter().map(|p| p.1.as_str()).collect::<Vec<_>>(),
        ["features.0", "features.4", "features.7", "features.9"]
    );
    let m = pre_init::layer_map(&cfg(Arch::A, 0.0625, 32), &cfg(Arch::E, 0.0625, 32)).unwrap();
    assert_eq!(
        m[..4].iter().map(|p| p.1.as_str()).collect::<Vec<_>>(),
        ["features.0", "features.5", "features.10", "features.12"]
    );
    // One step at --lr 1e-30 (common::unmoved) leaves the run's starting weights in its
    // checkpoint: A's at the mapped layers, the rest this run's own --init draw (seed 0).
    let d_dir = dir.join("d");
    let tiny_step = TrainArgs { pre_init: Some(a_path), steps: Some(1), lr: Some(1e-30), ..args("D") };
    let s = run(&TrainArgs { checkpoint_dir: Some(d_dir.clone()), ..tiny_step }).unwrap();
    assert!(s.final_train_loss.unwrap().is_finite());
    let trained = checkpoint::load(&d_dir.join("last.safetensors")).unwrap().weights;
    let own = by_name(Vgg::new(&dev, cfg(Arch::D, 0.0625, 32), 1, Init::He, 0).unwrap().export_params().unwrap());
    assert_eq!(trained.len(), own.len());
    for (name, shape, data) in &trained {
        let (layer, kind) = name.rsplit_once('.').unwrap();
        match want.iter().find(|m| m.1 == layer) {
            Some((from, _)) => {
                let src = &a[&format!("{from}.{kind}")];
                assert!(
                    shape == &src.0 && common::unmoved(data, &src.1),
                    "{name}: `vgg train` did not start from A's {from}"
                );
                // A's values there are not D's init, so the check above tells the two apart.
                assert!(!common::unmoved(&own[name].1, &src.1), "{name}: A's {from} is still the init's");
            }
            None => assert!(common::unmoved(data, &own[name].1), "{name}: `vgg train` did not keep D's own init"),
        }
    }
}

#[test]
fn mismatched_shapes_are_refused_by_name() {
    let dir = tmpdir("mismatch");
    let dev = Device::emu();
    // An A checkpoint (with its config) at another width.
    let wide = Vgg::new(&dev, cfg(Arch::A, 0.125, 32), 1, Init::He, 1).unwrap();
    let p = dir.join("a-wide.safetensors");
    checkpoint::save(&p, &wide.export_params().unwrap(), &[], wide.config(), None).unwrap();
    let mut d = Vgg::new(&dev, cfg(Arch::D, 0.0625, 32), 1, Init::He, 1).unwrap();
    let before = d.export_params().unwrap();
    let e = format!("{:#}", pre_init::apply(&mut d, &p).unwrap_err());
    assert!(e.contains("--width 0.125") && e.contains("a-wide.safetensors"), "{e}");
    // A torchvision-style file (no config) of A at 64x64 input: the convs fit, the first FC
    // layer does not; the message names the tensor and the knob, and nothing was written.
    let big = Vgg::new(&dev, cfg(Arch::A, 0.0625, 64), 1, Init::He, 1).unwrap();
    let p = dir.join("a-64.safetensors");
    common::write_plain(&p, &big.export_params().unwrap());
    let e = format!("{:#}", pre_init::apply(&mut d, &p).unwrap_err());
    assert!(e.contains("classifier.0.weight") && e.contains("--input"), "{e}");
    assert_eq!(d.export_params().unwrap(), before, "a refused pre-init must leave the model unchanged");
    // A file of another config (D: its `features.3` is a ReLU, so it has no such tensor).
    let dfile = dir.join("d.safetensors");
    common::write_plain(&dfile, &before);
    let e = format!("{:#}", pre_init::apply(&mut d, &dfile).unwrap_err());
    assert!(e.contains("features.3.weight"), "{e}");
    // Our checkpoint of config B at this run's knobs: its first four convs fit D's by shape
    // (B's conv1_1 .. conv2_2), but are not a trained A's; refused naming the config.
    let b = Vgg::new(&dev, cfg(Arch::B, 0.0625, 32), 1, Init::He, 1).unwrap();
    let bfile = dir.join("b.safetensors");
    checkpoint::save(&bfile, &b.export_params().unwrap(), &[], b.config(), None).unwrap();
    let e = format!("{:#}", pre_init::apply(&mut d, &bfile).unwrap_err());
    assert!(e.contains("config B run") && e.contains("config A"), "{e}");
    assert_eq!(d.export_params().unwrap(), before, "a refused pre-init must leave the model unchanged");
}

/// A checkpoint trained on other inputs (another mean, or mean-only against mean and std) is
/// warned about, naming both normalisations; the same normalisation is not.
#[test]
fn another_input_normalisation_is_warned_about() {
    let run_cfg = cfg(Arch::A, 0.0625, 32);
    assert_eq!(checkpoint::input_norm_warning(Some(run_cfg.norm()), run_cfg.norm(), "--weights w"), None);
    let mean_only = VggConfig { mean: [100.0; 3], std: None, ..run_cfg.clone() };
    let w = checkpoint::input_norm_warning(Some(mean_only.norm()), run_cfg.norm(), "--weights w").unwrap();
    assert!(w.contains("--weights w") && w.contains("mean [100.0, 100.0, 100.0] only"), "{w}");
    assert!(w.contains(&format!("{:?}", run_cfg.std.unwrap())), "{w}");
    let shifted = VggConfig { mean: [100.0, 101.0, 102.0], ..mean_only.clone() };
    assert!(checkpoint::input_norm_warning(Some(shifted.norm()), mean_only.norm(), "x").is_some());
    // A torchvision-style file (no config) was trained on ImageNet's mean and std: warned about
    // under --mean, not under the default normalisation.
    let dir = tmpdir("norm");
    let a = Vgg::new(&Device::emu(), cfg(Arch::A, 0.0625, 32), 1, Init::He, 1).unwrap();
    let plain = dir.join("a-plain.safetensors");
    common::write_plain(&plain, &a.export_params().unwrap());
    let run_d = |extra: &[&str]| {
        let mut v = vec!["train", "--device", "emu", "--model", "D", "--width", "0.0625", "--input", "32"];
        v.extend(["--fc", "16", "--classes", "3", "--synthetic-len", "12", "--batch", "4", "--steps", "1"]);
        v.extend(["--quiet", "--pre-init", plain.to_str().unwrap()]);
        v.extend(extra);
        let out = common::vgg(&v);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run_d(&["--mean", "100,100,100"]).contains("normalised by mean [123.675"));
    assert!(!run_d(&[]).contains("normalised by"));
}
