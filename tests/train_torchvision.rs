//! Files in torchvision's own format, written here with the safetensors crate as
//! `safetensors.torch.save_file(torchvision.models.vgg11().state_dict())` would write them
//! (F32, torchvision's names and OIHW / `[out][in]` shapes, no metadata), at 1/16 width and
//! 32x32 input so that the shapes follow from the real vgg11's: the plain file loads into
//! config A with every value where torchvision's layout puts it; the batch-norm one
//! (`vgg11_bn`) is refused with a message naming batch-norm. Full-size A, B, D and E have
//! vgg11, 13, 16 and 19's names, shapes and parameter counts.

use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;
use vgg_cuda::model::{Arch, Init, Vgg, VggConfig};
use vgg_cuda::train::checkpoint;
use vgg_cuda::Device;
mod common;

/// vgg11's conv channels (Table 1, config A) at 1/16 width, and the FC width / classes used.
const CONVS: [usize; 8] = [4, 8, 16, 16, 32, 32, 32, 32];
const POOL_AFTER: [bool; 8] = [true, true, false, true, false, true, false, true];
const FC: usize = 16;
const CLASSES: usize = 3;

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// `(name, shape, data)` of torchvision's vgg11 (or vgg11_bn) state dict, in its order, with
/// hashed values in [-0.05, 0.05): each position of each tensor its own, and small enough for
/// a finite forward in fp16.
fn state_dict(bn: bool) -> Vec<(String, Vec<usize>, Data)> {
    let mut out = vec![];
    let mut fill = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let tag = out.len() as u64;
        let v = (0..n).map(|i| ((i as u64 * 2_654_435_761 + tag * 97) % 10_007) as f32 / 10_007.0 - 0.5);
        out.push((name, shape, Data::F32(v.map(|x| x * 0.1).collect())));
    };
    let (mut idx, mut c) = (0, 3);
    let mut bn_names = vec![];
    for (k, pool) in CONVS.into_iter().zip(POOL_AFTER) {
        fill(format!("features.{idx}.weight"), vec![k, c, 3, 3]);
        fill(format!("features.{idx}.bias"), vec![k]);
        if bn {
            // nn.BatchNorm2d after each conv: weight, bias, running_mean, running_var, num_batches_tracked.
            let b = idx + 1;
            for p in ["weight", "bias", "running_mean", "running_var"] {
                fill(format!("features.{b}.{p}"), vec![k]);
            }
            bn_names.push(format!("features.{b}.num_batches_tracked"));
            idx += 3; // conv, bn, relu
        } else {
            idx += 2; // conv, relu
        }
        idx += pool as usize;
        c = k;
    }
    // 32x32 input: a 1x1 feature map after five pools (torchvision's adaptive pool to 7x7
    // would repeat it; we follow the input size), so classifier.0 takes 32 inputs.
    for (i, (fi, fo)) in [(0, (c, FC)), (3, (FC, FC)), (6, (FC, CLASSES))] {
        fill(format!("classifier.{i}.weight"), vec![fo, fi]);
        fill(format!("classifier.{i}.bias"), vec![fo]);
    }
    for n in bn_names {
        out.push((n, vec![], Data::I64(vec![100])));
    }
    out
}

fn write(path: &Path, tensors: &[(String, Vec<usize>, Data)]) {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| match d {
            Data::F32(v) => (n.clone(), s.clone(), Dtype::F32, bytemuck::cast_slice(v).to_vec()),
            Data::I64(v) => (n.clone(), s.clone(), Dtype::I64, bytemuck::cast_slice(v).to_vec()),
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().map(|(n, s, t, b)| (n.clone(), TensorView::new(*t, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// A fresh folder, removed when the test ends.
fn tmpdir() -> common::TempDir {
    common::TempDir::new("torchvision-file", "file")
}

#[test]
fn torchvision_vgg11_loads_and_vgg11_bn_is_refused() {
    let dir = tmpdir();
    let cfg = VggConfig::small(Arch::A, 0.0625, 32, FC, CLASSES);
    // Our config produces exactly torchvision's names and shapes, in its order.
    let sd = state_dict(false);
    let names: Vec<(String, Vec<usize>)> = sd.iter().map(|t| (t.0.clone(), t.1.clone())).collect();
    assert_eq!(cfg.param_shapes(), names);

    let path = dir.join("vgg11.safetensors");
    write(&path, &sd);
    let l = checkpoint::load(&path).unwrap();
    assert!(l.config.is_none() && l.state.is_none() && l.momentum.is_empty());
    let dev = Device::emu();
    let mut vgg = Vgg::new(&dev, cfg.clone(), 1, Init::He, 0).unwrap();
    vgg.import_params(&l.weights).unwrap();
    // Export gives back the file's values bit for bit (the layouts invert each other) ...
    for (name, shape, data) in vgg.export_params().unwrap() {
        let (_, s, Data::F32(want)) = sd.iter().find(|t| t.0 == name).unwrap() else { unreachable!() };
        assert_eq!(&shape, s, "{name}");
        assert!(data.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} changed in the round trip");
    }
    // ... and on the device they sit in our layouts: conv KRSC, torchvision OIHW.
    let (k, c) = (CONVS[1], CONVS[0]);
    let dev_w = vgg.param("features.3.weight").unwrap().w.to_host().unwrap();
    let (_, _, Data::F32(tv)) = sd.iter().find(|t| t.0 == "features.3.weight").unwrap() else { unreachable!() };
    for (ko, ci, r, s) in [(0, 0, 0, 0), (5, 3, 2, 1), (k - 1, c - 1, 1, 2)] {
        assert_eq!(dev_w[((ko * 3 + r) * 3 + s) * c + ci], tv[((ko * c + ci) * 3 + r) * 3 + s], "w[{ko},{ci},{r},{s}]");
    }
    // The model runs on it.
    let img = vgg_cuda::Tensor::<u8>::from_host(&dev, &[1, 32, 32, 3], &vec![128; 32 * 32 * 3]).unwrap();
    assert!(vgg.forward(&img, false, 0).unwrap().to_f32().unwrap().iter().all(|v| v.is_finite()));

    // vgg11_bn: refused at load, naming batch-norm and its first running statistic.
    let bn = dir.join("vgg11_bn.safetensors");
    write(&bn, &state_dict(true));
    let e = format!("{:#}", checkpoint::load(&bn).unwrap_err());
    assert!(e.contains("batch-norm") && e.contains("features.1.running_mean") && e.contains("vgg11_bn"), "{e}");
}

/// torchvision's `cfgs` for vgg11 / 13 / 16 / 19 ("M" a max-pool, written 0 here), from
/// torchvision/models/vgg.py, not from our configs.
const TORCHVISION_CFGS: [(Arch, &[usize], usize); 4] = [
    (Arch::A, &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0], 132_863_336),
    (Arch::B, &[64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0], 133_047_848),
    (Arch::D, &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0], 138_357_544),
    (
        Arch::E,
        &[64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0],
        143_667_240,
    ),
];

/// Full-size vgg11, 13, 16 and 19 (224x224, 1000 classes) have torchvision's parameter names
/// and shapes, in its order, as `make_layers` numbers them (a conv and its ReLU take two
/// indices of `features`, a pool one), and the parameter counts torchvision's docs give.
#[test]
fn full_size_configs_have_torchvisions_names_shapes_and_counts() {
    for (arch, cfg, count) in TORCHVISION_CFGS {
        let (mut want, mut idx, mut c) = (vec![], 0, 3);
        for &v in cfg {
            if v == 0 {
                idx += 1;
                continue;
            }
            want.push((format!("features.{idx}.weight"), vec![v, c, 3, 3]));
            want.push((format!("features.{idx}.bias"), vec![v]));
            (idx, c) = (idx + 2, v);
        }
        for (i, (fi, fo)) in [(0, (512 * 7 * 7, 4096)), (3, (4096, 4096)), (6, (4096, 1000))] {
            want.push((format!("classifier.{i}.weight"), vec![fo, fi]));
            want.push((format!("classifier.{i}.bias"), vec![fo]));
        }
        let ours = VggConfig::small(arch, 1.0, 224, 4096, 1000).param_shapes();
        assert_eq!(ours, want, "{arch:?}");
        let n: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(n, count, "{arch:?}");
    }
}
