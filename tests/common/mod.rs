//! Helpers shared by the integration tests: scratch folders, the `vgg` binary, and the
//! one-line error it must give where no GPU is usable.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use vgg_cuda::device::cuda_report;

/// Runs the `vgg` binary with `args`.
pub fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().expect("running the vgg binary")
}

/// Where no GPU is usable, `vgg args` fails with one line of stderr that starts with
/// `expect` (and no panic); where one is, there is nothing to check.
pub fn assert_fails_without_gpu_in_one_line(args: &[&str], expect: &str) {
    if cuda_report().unusable_because.is_none() {
        eprintln!("a usable GPU is present: the no-GPU error cannot be checked here");
        return;
    }
    let out = vgg(args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with(expect), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

/// A fresh, empty folder `vgg-<what>-test-<pid>-<name>` under the temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str, name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vgg-{what}-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

/// The folder's path, so that a `TempDir` is used where a `&Path` is (`dir.join(..)`, `&dir`).
impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vgg eval` arguments for the emu device with small batches and a short synthetic set, so
/// that the runs stay quick; tests state only what they change.
pub fn emu_eval_args(weights: Vec<PathBuf>, data: &str) -> vgg_cuda::eval::EvalArgs {
    vgg_cuda::eval::EvalArgs {
        weights,
        data: data.into(),
        device: "emu".into(),
        batch: 8,
        synthetic_len: 8,
        quiet: true,
        ..Default::default()
    }
}

/// Random draws for the seeded sweeps (tests/conv.rs's shapes, tests/model_random.rs's
/// configs), from the data pipeline's fixed generator (SplitMix64), so that a seed names the
/// same draws on every machine and `rand` version.
pub struct ShapeRng(pub vgg_cuda::data::SampleRng);

impl ShapeRng {
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.0.range(lo as u32, hi as u32) as usize
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.range(0, n - 1)
    }
    /// One element of `v`.
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// The host's conv stack (every feature layer) of `cfg` over `images` (`[n, h, w, 3]` uint8)
/// at any `h x w`, with the reference ops and `params` in the device's order and layout, each
/// layer rounded to fp16 when `round16` (as the device stores it). Returns the feature map
/// (NHWC) and its height and width; the classifier's parameters start at index
/// `params.len() - 6`.
pub fn host_features(
    cfg: &vgg_cuda::model::VggConfig,
    params: &[Vec<f32>],
    images: &[u8],
    (n, h, w): (usize, usize, usize),
    round16: bool,
) -> (Vec<f32>, (usize, usize)) {
    use vgg_cuda::model::FeatureKind;
    use vgg_cuda::reference as r;
    let rnd = |v: Vec<f32>| if round16 { r::f32_to_f16_round(&v) } else { v };
    let mut x = rnd(r::normalize_input([n, h, w, 3], images, &cfg.norm(), None));
    let (mut ch, mut cw, mut j) = (h, w, 0);
    for f in cfg.features() {
        x = rnd(match f.kind {
            FeatureKind::Conv3x3 => {
                let p = vgg_cuda::problem::ConvProblem::new(n, ch, cw, f.c_in, f.c_out);
                j += 2;
                r::conv3x3_fprop(&p, &x, &params[j - 2], Some(&params[j - 1]), true)
            }
            FeatureKind::Conv1x1 => {
                j += 2;
                r::conv1x1_fprop(n * ch * cw, f.c_in, f.c_out, &x, &params[j - 2], Some(&params[j - 1]), true)
            }
            FeatureKind::Lrn => r::lrn_fwd(&x, f.c_in, &r::LrnParams::ALEXNET),
            FeatureKind::Pool => {
                let y = r::maxpool2x2_fwd(n, ch, cw, f.c_in, &x);
                (ch, cw) = (ch / 2, cw / 2);
                y
            }
        });
    }
    assert_eq!(j, params.len() - 6, "host_features: the classifier's 6 tensors follow the features");
    (x, (ch, cw))
}

/// A safetensors file of `tensors` (F32) with no metadata, as torchvision's would be.
pub fn write_plain(path: &std::path::Path, tensors: &[vgg_cuda::model::NamedTensor]) {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(d)).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// Whether `got` holds `want`'s values after one SGD step at `--lr 1e-30`, the tests' way of
/// reading through a checkpoint which weights a run started from. The step moves a weight by
/// lr * (gradient / loss scale + wd * weight) in f64, rounded to f32 once (kernels/optim.cu):
/// with these tiny models' gradients far below 1e4, by less than 1e-26 (measured: 3e-31),
/// which is under half an ulp of any weight above 2^-60 (1e-18) in size, so every such weight
/// keeps its exact value; only weights at or near 0 (fresh biases) can move, by at most 1e-26.
pub fn unmoved(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-26)
}

/// The names of `want`'s tensors that `got` (one step at `--lr 1e-30` from them, see
/// [`unmoved`]) does not hold with their shape and values; a name `got` lacks counts too.
pub fn moved_tensors(got: &[vgg_cuda::model::NamedTensor], want: &[vgg_cuda::model::NamedTensor]) -> Vec<String> {
    assert_eq!(got.len(), want.len(), "not the same tensors");
    let moved =
        |(n, s, d): &&vgg_cuda::model::NamedTensor| !got.iter().any(|g| &g.0 == n && &g.1 == s && unmoved(&g.2, d));
    want.iter().filter(moved).map(|t| t.0.clone()).collect()
}

/// `vgg predict`'s top list of one image under `--labels` holding `labels` (one class a line)
/// and `--top` of them all: every class once, each named by its line of the file, not only
/// the file's names in some order.
#[track_caller]
pub fn assert_named_by_labels(top: &[vgg_cuda::eval::TopClass], labels: &[&str]) {
    let mut classes: Vec<usize> = top.iter().map(|t| t.class).collect();
    classes.sort();
    assert_eq!(classes, (0..labels.len()).collect::<Vec<_>>(), "not every class once: {top:?}");
    for t in top {
        assert_eq!(
            t.name,
            labels[t.class],
            "class {} is not named by line {} of the labels file",
            t.class,
            t.class + 1
        );
    }
}

/// `vgg train`'s smallest useful run on emu: VGG A at 1/16 width, 32x32, 3 classes, FC 16, 24
/// synthetic images in batches of 4 (6 steps an epoch), on the training thread, quietly.
pub fn tiny_train_args() -> vgg_cuda::train::TrainArgs {
    vgg_cuda::train::TrainArgs {
        width: 0.0625,
        input: 32,
        fc: 16,
        classes: 3,
        synthetic_len: 24,
        batch: 4,
        device: "emu".into(),
        workers: Some(0),
        quiet: true,
        ..Default::default()
    }
}

/// The lines of a `--metrics` file, less the wall-clock fields (`time_s`, `img_per_s`): what
/// two runs of the same steps must log alike.
pub fn metrics_lines(path: impl AsRef<std::path::Path>) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for l in &mut v {
        let o = l.as_object_mut().unwrap();
        o.remove("time_s");
        o.remove("img_per_s");
    }
    v
}
