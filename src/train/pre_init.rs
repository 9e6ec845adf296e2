//! The paper's pre-initialisation (Simonyan & Zisserman 2015, Sect. 3.1): a deeper config starts
//! with the first four conv layers and the three FC layers of a trained config A; its other
//! layers are initialised randomly (as `--init` says).
//!
//! Which conv receives which: the j-th conv of block b of the source goes to the j-th conv
//! of block b of the target, the only placement where the shapes agree. For A -> B, C, D or
//! E that is A's `features.0`, `.3`, `.6`, `.8` (64, 128, 256, 256 channels) to `features.0`,
//! `.5`, `.10`, `.12`; for A -> A-LRN, `features.0`, `.4`, `.7`, `.9`. FC layers keep their
//! names (`classifier.0`, `.3`, `.6`).

use super::checkpoint;
use crate::model::{Arch, FeatureKind, NamedTensor, Vgg, VggConfig};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Source conv layers that pre-initialisation copies (the paper: four).
pub const CONVS: usize = 4;

/// `(block, position in block, torchvision index, kind)` of every conv of `cfg`.
fn conv_slots(cfg: &VggConfig) -> Vec<(usize, usize, usize, FeatureKind)> {
    let (mut block, mut pos, mut out) = (0, 0, vec![]);
    for f in cfg.features() {
        match f.kind {
            FeatureKind::Pool => (block, pos) = (block + 1, 0),
            FeatureKind::Lrn => {}
            k => {
                out.push((block, pos, f.index, k));
                pos += 1;
            }
        }
    }
    out
}

/// The layers `dst` takes from `src`, as `(source layer, target layer)` name prefixes
/// (`("features.3", "features.5")`, ..., `("classifier.6", "classifier.6")`).
pub fn layer_map(src: &VggConfig, dst: &VggConfig) -> Result<Vec<(String, String)>> {
    let to = conv_slots(dst);
    let mut map = vec![];
    for &(b, j, i, kind) in conv_slots(src).iter().take(CONVS) {
        let Some(&(_, _, k, dkind)) = to.iter().find(|t| t.0 == b && t.1 == j) else {
            bail!(
                "config {} has no conv {} in block {} to receive config {}'s features.{i}",
                dst.arch,
                j + 1,
                b + 1,
                src.arch
            );
        };
        if kind != dkind {
            bail!("config {}'s features.{i} is a {kind:?}, config {}'s features.{k} a {dkind:?}", src.arch, dst.arch);
        }
        map.push((format!("features.{i}"), format!("features.{k}")));
    }
    map.extend([0, 3, 6].map(|i| (format!("classifier.{i}"), format!("classifier.{i}"))));
    Ok(map)
}

/// Which knob a mismatched tensor points at.
fn hint(layer: &str) -> &'static str {
    match layer {
        "classifier.0" => "another --input or --width",
        "classifier.3" => "another --fc",
        "classifier.6" => "another --classes or --fc",
        _ => "another --width",
    }
}

/// Copies the mapped layers of the checkpoint `tensors` (torchvision names and layouts) into
/// `vgg`, whose config is `dst`; `src` is the checkpoint's config. Nothing is written unless
/// every tensor is present and has the shape the target expects.
pub fn apply_tensors(vgg: &mut Vgg, src: &VggConfig, tensors: &[NamedTensor]) -> Result<Vec<(String, String)>> {
    let dst = vgg.config().clone();
    let map = layer_map(src, &dst)?;
    let mut all = vgg.export_params()?;
    for (from, to) in &map {
        for suffix in ["weight", "bias"] {
            let (fname, tname) = (format!("{from}.{suffix}"), format!("{to}.{suffix}"));
            let Some((_, fshape, data)) = tensors.iter().find(|t| t.0 == fname) else {
                bail!("no tensor `{fname}` (not a config {} checkpoint?)", src.arch);
            };
            let slot = all.iter_mut().find(|t| t.0 == tname).expect("layer_map names this model's layers");
            if *fshape != slot.1 {
                bail!(
                    "`{fname}` has shape {fshape:?}, but this model's `{tname}` is {:?}: the checkpoint was trained at {} \
                     (this run: config {} at width {}, input {}, FC {}, {} classes)",
                    slot.1,
                    hint(from),
                    dst.arch,
                    dst.width,
                    dst.input,
                    dst.fc,
                    dst.classes
                );
            }
            slot.2.clone_from(data);
        }
    }
    vgg.import_params(&all)?;
    Ok(map)
}

/// `vgg train --pre-init FILE`: loads a checkpoint of config A (ours, or a torchvision
/// `vgg11` state dict, which has no config and is taken to be A at this run's knobs) and
/// copies its first four convs and three FC layers into `vgg`. A checkpoint whose recorded
/// width, input, FC width or class count differs from this run's is refused by name, as is a
/// checkpoint of another config; another input normalisation is warned about on stderr.
pub fn apply(vgg: &mut Vgg, path: &Path) -> Result<Vec<(String, String)>> {
    let loaded = checkpoint::load(path)?;
    loaded.ensure_vgg_weights(&format!("--pre-init {}", path.display()))?;
    let dst = vgg.config().clone();
    let recorded = loaded.config.is_some();
    let src = match loaded.config {
        Some(c) => {
            // The paper's scheme copies a trained A's layers; another config's first four
            // convs are other layers (B's conv1_1, conv1_2, conv2_1, conv2_2), which fit by
            // shape and would be taken without a word.
            if c.arch != Arch::A {
                bail!(
                    "--pre-init {}: written by a config {} run; pre-initialisation takes a trained config A's \
                     first four convs and FC layers (train --model A first, or start from these weights with \
                     --weights on the same config)",
                    path.display(),
                    c.arch
                );
            }
            let diff: Vec<String> = [
                ("width", c.width.to_string(), dst.width.to_string()),
                ("input", c.input.to_string(), dst.input.to_string()),
                ("fc", c.fc.to_string(), dst.fc.to_string()),
                ("classes", c.classes.to_string(), dst.classes.to_string()),
            ]
            .into_iter()
            .filter(|d| d.1 != d.2)
            .map(|(k, a, b)| format!("--{k} {a} (this run: {b})"))
            .collect();
            if !diff.is_empty() {
                bail!(
                    "--pre-init {}: written by a config {} run with {}; layers copied between configs must have the \
                     same shapes",
                    path.display(),
                    c.arch,
                    diff.join(", ")
                );
            }
            c
        }
        None => VggConfig { arch: Arch::A, ..dst.clone() },
    };
    // A file without a config is torchvision's, trained on its ImageNet mean and std.
    let what = format!("--pre-init {}", path.display());
    if let Some(w) = checkpoint::input_norm_warning(recorded.then(|| src.norm()), dst.norm(), &what) {
        eprintln!("{w}");
    }
    apply_tensors(vgg, &src, &loaded.weights).with_context(|| format!("--pre-init {}", path.display()))
}
