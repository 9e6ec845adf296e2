//! Checkpoints: safetensors files in torchvision's names and layouts, so that a torchvision
//! `vgg11/13/16/19` state dict saved with `safetensors.torch.save_file` loads unchanged, and
//! our checkpoints load into torchvision. Into torchvision's own classes only at the 224-pixel
//! input and 4096-wide classifier they have: their `classifier.0` takes the 7x7x512 map of
//! their adaptive average pool, where ours takes the last pool's map at whatever size the input
//! gives (512 x 2 x 2 at 64 pixels), with no pooling to 7x7 (the paper's dense evaluation
//! needs the map as it is).
//!
//! A training checkpoint holds, beside the weights (`features.N.weight`, ... as F32):
//! - `momentum.<name>`: the SGD momentum of every parameter, same layout;
//! - metadata (strings): `format` = `vgg-cuda-checkpoint-1`, `config` (the [`VggConfig`] as
//!   JSON), `state` (step, epoch, batches done in that epoch, loss-scaler state, LR-schedule
//!   state, seed, the conv layers' plans; JSON), and `checksums` (FNV-1a 64 of every tensor's
//!   bytes, JSON), so that a flipped byte is reported with the tensor it hit.
//!
//! Writes go to a temporary file in the same folder, are synced, then renamed over the
//! target: a crash leaves the previous checkpoint intact.

use crate::model::{ConvPlan, NamedTensor, VggConfig};
use crate::ops::InputNorm;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The `format` metadata of the checkpoints this version writes.
pub const FORMAT: &str = "vgg-cuda-checkpoint-1";
const MOMENTUM: &str = "momentum.";

/// Training state stored with the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken (the next step's index).
    pub step: u64,
    /// The epoch in progress and the batches of it already consumed.
    pub epoch: u64,
    /// Batches of `epoch` already consumed (0 at an epoch's start).
    pub batch_in_epoch: u64,
    /// The dynamic loss scale ([`ScalerState::scale`](crate::model::ScalerState::scale)).
    pub loss_scale: f32,
    /// Clean steps since the loss scale last changed.
    pub scaler_clean_steps: u32,
    /// Steps skipped for overflow in the whole run.
    pub scaler_skipped: u64,
    /// Current learning rate and the plateau schedule's memory (these four fields).
    pub lr: f32,
    /// The validation top-1 the plateau schedule last counted as progress (by more than 1e-3;
    /// -1 before any): not the run's best, which is [`TrainState::best_top1`].
    pub best_val: f64,
    /// Validations in a row without progress on `best_val` (reset by progress and by a decay).
    pub bad_evals: u32,
    /// Times the plateau schedule has divided the rate by 10.
    pub decays: u32,
    /// The run's seed (data order, augmentation, dropout all derive from it and the step).
    pub seed: u64,
    /// The run's batch size (0 in checkpoints written before it was recorded): the epoch's
    /// batch positions above count batches of this size.
    #[serde(default)]
    pub batch: usize,
    /// Whether the run trains each epoch's short last batch (`--keep-last`; false in
    /// checkpoints written before it was recorded, as runs then always dropped it): the
    /// epoch's length in batches, and so the place above, depend on it.
    #[serde(default)]
    pub keep_last: bool,
    /// The conv layers' plans the run computed with (a tuned run's choice, which timing may
    /// make differently next time); a resume that tunes takes these instead. Empty in
    /// checkpoints written before plans were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv_plans: Vec<ConvPlan>,
    /// The run's single-scale test Q (`--test-scale`, by default the paper's pairing with the
    /// training scale: S, or the middle of a jittered range), at which it validates, and which
    /// `vgg eval` and `vgg predict` take by default. `None` in checkpoints written before it
    /// was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_scale: Option<u32>,
    /// The validation top-1 of the `best.safetensors` beside this checkpoint: the best of the
    /// run's epoch-end validations so far. `None` until one is written, in runs without a
    /// checkpoint folder, and in checkpoints written before it was recorded; a resume into a
    /// folder without that file starts its own best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_top1: Option<f64>,
    /// The options that shape the run besides the model's config, the seed, the batch and
    /// the flags above, for a resume to compare its own with. `None` in checkpoints written
    /// before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RunSettings>,
    /// The epoch's train losses and accuracies read so far, summed, which its line averages: a
    /// run resumed mid-epoch averages the whole epoch, as the run it continues would have.
    /// Zero in checkpoints written before they were recorded (the line then averages the
    /// resumed steps only).
    #[serde(default)]
    pub epoch_sums: EpochSums,
}

/// Running sums of an epoch's train steps whose loss was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Sum of the losses.
    pub loss: f64,
    /// Sum of the top-1 accuracies.
    pub acc: f64,
    /// Steps summed.
    pub steps: u64,
}

/// A run's settings as [`TrainState::settings`] records them (resolved: a default that depends
/// on the data is stored as the value it took).
///
/// Every field is an `Option` (and the struct `#[serde(default)]`, for any field): a field the
/// checkpoint lacks (one added after it was written, as each new field will be for today's
/// checkpoints) reads as `None` instead of failing the whole `state`, which lost the run's place along with it. A
/// missing value is unknown, not a default: the resume compares a field only where both the
/// checkpoint and the run have it (refusing on a made-up default would refuse the run's own
/// value), and names on stderr the options it could not check (so that a change to one is not
/// taken without a word).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    /// `--lr`, the base rate the schedule divides or anneals.
    pub lr: Option<f32>,
    /// `--momentum`.
    pub momentum: Option<f32>,
    /// `--wd`.
    pub wd: Option<f32>,
    /// `--bias-decay`.
    pub bias_decay: Option<bool>,
    /// `--schedule`, as given.
    pub schedule: Option<String>,
    /// `--init`, as given.
    pub init: Option<String>,
    /// `--loss-scale`, the initial loss scale (the divergence check's reference).
    pub loss_scale: Option<f32>,
    /// `--synthetic-len` on the synthetic set (`None` on other data).
    pub synthetic_len: Option<usize>,
    /// The training scale S (`--scale`): `256` or `256:512`.
    pub scale: Option<String>,
    /// The colour shift's standard deviation (`--color-shift`).
    pub color_shift: Option<f32>,
    /// The run's last step (`--steps`, or `--epochs` times the epoch's steps): the length the
    /// cosine schedule anneals over.
    pub total_steps: Option<u64>,
}

impl TrainState {
    /// Records validation top-1 `v1`; true when it beats every earlier validation of the run
    /// (the first always does), so that the state is the best so far.
    pub fn improves_best(&mut self, v1: f64) -> bool {
        let better = self.best_top1.is_none_or(|b| v1 > b);
        if better {
            self.best_top1 = Some(v1);
        }
        better
    }
}

/// What a checkpoint file held.
#[derive(Debug)]
pub struct Loaded {
    /// Every tensor not named `momentum.*`, as f32 (F16 and BF16 widened), sorted by name.
    pub weights: Vec<NamedTensor>,
    /// The `momentum.*` tensors with the prefix removed, sorted by name (empty in a
    /// torchvision file).
    pub momentum: Vec<NamedTensor>,
    /// The `config` metadata (None in a torchvision file).
    pub config: Option<VggConfig>,
    /// The `state` metadata (None in a torchvision file or a checkpoint saved without one).
    pub state: Option<TrainState>,
}

impl Loaded {
    /// Errors unless some weight has a VGG parameter's name (`features.*`, `classifier.*`):
    /// a file with no tensors, or only other names, is no VGG checkpoint, and loading it failed
    /// as a shape error about the first missing parameter ("tensor `features.0.weight` appears 0
    /// times"). A file with some VGG names goes on to the import, whose errors name the tensor.
    /// `what` names the option and file, e.g. `--weights ck.safetensors`.
    pub fn ensure_vgg_weights(&self, what: &str) -> Result<()> {
        if self.weights.iter().any(|w| w.0.starts_with("features.") || w.0.starts_with("classifier.")) {
            return Ok(());
        }
        // The file's names as written (momentum ones with their prefix), a few of them: a
        // prefix such as `module.` (a wrapped model) shows here.
        let all: Vec<String> = (self.weights.iter().map(|w| w.0.clone()))
            .chain(self.momentum.iter().map(|m| format!("{MOMENTUM}{}", m.0)))
            .collect();
        if all.is_empty() {
            bail!("{what}: the file holds no VGG weights (it holds no tensors)");
        }
        let names: Vec<String> = all.iter().take(3).map(|n| format!("`{n}`")).collect();
        let more = if all.len() > 3 { format!(" and {} more", all.len() - 3) } else { String::new() };
        bail!(
            "{what}: the file holds no VGG weights (no tensor named features.* or classifier.*; it holds {}{more})",
            names.join(", ")
        )
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes `weights` (and `momentum`, prefixed) with the config and state as metadata,
/// atomically (a temporary file beside `path`, renamed over it), creating `path`'s folder and
/// any missing parents.
pub fn save(
    path: &Path,
    weights: &[NamedTensor],
    momentum: &[NamedTensor],
    config: &VggConfig,
    state: Option<&TrainState>,
) -> Result<()> {
    save_with_classes(path, weights, momentum, config, state, &[])
}

/// [`save`], plus the training set's class names (metadata `classes`, a JSON list, when not
/// empty), so that `vgg predict` and `vgg eval` can name and match classes.
pub fn save_with_classes(
    path: &Path,
    weights: &[NamedTensor],
    momentum: &[NamedTensor],
    config: &VggConfig,
    state: Option<&TrainState>,
    classes: &[String],
) -> Result<()> {
    let bytes = to_bytes(weights, momentum, config, state, classes)?;
    Ok(crate::atomic::write(path, &bytes)?)
}

/// The file [`save_with_classes`] writes, as bytes: for writing one checkpoint to several
/// paths (`last` and `best`) without serializing it again.
pub fn to_bytes(
    weights: &[NamedTensor],
    momentum: &[NamedTensor],
    config: &VggConfig,
    state: Option<&TrainState>,
    classes: &[String],
) -> Result<Vec<u8>> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, shape, data) in weights {
        bufs.push((name.clone(), shape.clone(), bytemuck::cast_slice(data).to_vec()));
    }
    for (name, shape, data) in momentum {
        bufs.push((format!("{MOMENTUM}{name}"), shape.clone(), bytemuck::cast_slice(data).to_vec()));
    }
    let checksums: HashMap<&str, String> =
        bufs.iter().map(|(n, _, b)| (n.as_str(), format!("{:016x}", fnv1a(b)))).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("config".to_string(), serde_json::to_string(config)?);
    if let Some(s) = state {
        meta.insert("state".to_string(), serde_json::to_string(s)?);
    }
    if !classes.is_empty() {
        meta.insert("classes".to_string(), serde_json::to_string(classes)?);
    }
    meta.insert("checksums".to_string(), serde_json::to_string(&checksums)?);
    let views = bufs
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, &Some(meta))?)
}

fn to_f32(name: &str, v: &TensorView<'_>) -> Result<Vec<f32>> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        d => bail!("tensor `{name}` has dtype {d:?}; only F32, F16 and BF16 weights are supported"),
    })
}

/// A safetensors error in words: the crate's `Display` prints the enum's variant name
/// ("HeaderTooLarge" for a text file), which says little to someone holding the wrong file.
fn describe(e: &SafeTensorError) -> String {
    use SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "shorter than a safetensors header (8 bytes of length, then JSON)".into(),
        E::HeaderTooLarge | E::InvalidHeaderLength => {
            "its first 8 bytes are no plausible header length (not a safetensors file, or a truncated one)".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "the header is not the JSON object a safetensors file starts with".into()
        }
        E::JsonError(j) => format!("the header's JSON does not describe tensors: {j}"),
        E::MetadataIncompleteBuffer => {
            "the tensor data does not end where the header says (truncated, or bytes appended)".into()
        }
        E::TensorInvalidInfo | E::ValidationOverflow => "a tensor's shape, dtype and byte range do not agree".into(),
        E::InvalidOffset(name) => format!("tensor `{name}`'s byte range is outside the file or overlaps another"),
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::InvalidTensorView(dtype, shape, bytes) => {
            format!("{bytes} bytes cannot hold a {dtype:?} tensor of shape {shape:?}")
        }
        E::IoError(io) => io.to_string(),
    }
}

/// Reads a checkpoint or a torchvision state dict: safetensors, or PyTorch's own `torch.save`
/// format ([`super::pth`]: torchvision's pretrained `.pth` files). Errors name the file and, where one is
/// to blame, the tensor: truncated or corrupt files, batch-norm variants, checksum
/// mismatches, non-float tensors.
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    if super::pth::is_pth(&bytes) {
        // PyTorch's own format (torchvision's pretrained files): weights only.
        let weights = super::pth::read(&bytes)
            .with_context(|| format!("{}: a PyTorch (torch.save) file that cannot be read", path.display()))?;
        refuse_batch_norm(path, weights.iter().map(|w| &w.0))?;
        return Ok(Loaded { weights, momentum: vec![], config: None, state: None });
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {}", path.display(), describe(&e))
    })?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: unreadable safetensors header: {}", path.display(), describe(&e)))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    // A file without our entry is a foreign state dict (torchvision's, or one saved with
    // safetensors' usual `{"format": "pt"}`); one of our own family with another version was
    // written by a build whose layout this one does not know, and reading its tensors by
    // today's names and meanings could load wrong values without any error.
    let ours = |f: &&String| f.starts_with("vgg-cuda-checkpoint-");
    if let Some(f) = meta.get("format").filter(ours).filter(|f| f.as_str() != FORMAT) {
        bail!("{}: checkpoint format `{f}` is not the one this build reads (`{FORMAT}`)", path.display());
    }
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    refuse_batch_norm(path, names.iter())?;
    let checksums: HashMap<String, String> = match meta.get("checksums") {
        Some(c) => serde_json::from_str(c).with_context(|| format!("{}: corrupt checksum metadata", path.display()))?,
        None => HashMap::new(),
    };
    let (mut weights, mut momentum) = (vec![], vec![]);
    for name in names {
        let v = st.tensor(&name).map_err(|e| anyhow!("{}: tensor `{name}`: {}", path.display(), describe(&e)))?;
        if let Some(want) = checksums.get(&name) {
            let got = format!("{:016x}", fnv1a(v.data()));
            if &got != want {
                bail!("{}: tensor `{name}` is corrupt (checksum {got}, written as {want})", path.display());
            }
        }
        let data = to_f32(&name, &v).with_context(|| path.display().to_string())?;
        let shape = v.shape().to_vec();
        match name.strip_prefix(MOMENTUM) {
            Some(base) => momentum.push((base.to_string(), shape, data)),
            None => weights.push((name, shape, data)),
        }
    }
    let config = match meta.get("config") {
        Some(c) => {
            Some(serde_json::from_str(c).with_context(|| format!("{}: corrupt config metadata", path.display()))?)
        }
        None => None,
    };
    let state = match meta.get("state") {
        Some(s) => {
            Some(serde_json::from_str(s).with_context(|| format!("{}: corrupt state metadata", path.display()))?)
        }
        None => None,
    };
    Ok(Loaded { weights, momentum, config, state })
}

/// Errors, naming a tensor, where the names are a batch-norm VGG's.
fn refuse_batch_norm<'a>(path: &Path, mut names: impl Iterator<Item = &'a String>) -> Result<()> {
    if let Some(bn) = names.find(|n| n.ends_with("running_mean") || n.ends_with("running_var")) {
        bail!(
            "{}: batch-norm VGG (torchvision vgg*_bn) is not supported: found `{bn}`; use the plain vgg11/13/16/19 weights",
            path.display()
        );
    }
    Ok(())
}

/// The class names stored with a checkpoint (see [`save_with_classes`]), reading only the
/// file's header; `None` when it has none (a torchvision file, an older checkpoint).
pub fn load_classes(path: &Path) -> Result<Option<Vec<String>>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let mut head = [0u8; 9];
    f.read_exact(&mut head).with_context(|| format!("{}: not a safetensors file (too short)", path.display()))?;
    if super::pth::is_pth(&head) {
        return Ok(None); // a PyTorch file: weights only
    }
    f.seek(std::io::SeekFrom::Start(8))?;
    let len = u64::from_le_bytes(head[..8].try_into().unwrap());
    if len > 100 << 20 {
        bail!("{}: not a valid safetensors file (header of {len} bytes)", path.display());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
    match header.get("__metadata__").and_then(|m| m.get("classes")).and_then(|c| c.as_str()) {
        Some(c) => Ok(Some(
            serde_json::from_str(c).with_context(|| format!("{}: corrupt class-name metadata", path.display()))?,
        )),
        None => Ok(None),
    }
}

/// Describes how two configs differ (`classes: 10 vs 1000`), or `None` when equal.
pub fn config_diff(a: &VggConfig, b: &VggConfig) -> Option<String> {
    let (ja, jb) = (serde_json::to_value(a).ok()?, serde_json::to_value(b).ok()?);
    let (oa, ob) = (ja.as_object()?, jb.as_object()?);
    let d: Vec<String> =
        oa.iter().filter(|(k, v)| ob.get(*k) != Some(v)).map(|(k, v)| format!("{k}: {v} vs {}", ob[k])).collect();
    (!d.is_empty()).then(|| d.join(", "))
}

/// A warning when the input normalisation a checkpoint was trained with (`from`: its
/// config's; `None` for a file without our config, torchvision's, trained on ImageNet's mean
/// and std) is not this run's (`run`): its layers learnt on inputs of another offset and scale
/// (torchvision's mean and std divide by ~58, `--stats` / `--mean` subtract only), which
/// `--weights` or `--pre-init` would carry on with without a word when a stage of a staged
/// recipe (S = 256, then 384 from it) leaves out the first stage's `--stats`. `None` when they
/// agree. `what` names the option and file.
pub fn input_norm_warning(from: Option<InputNorm>, run: InputNorm, what: &str) -> Option<String> {
    let from = from.unwrap_or(InputNorm::IMAGENET);
    if from == run {
        return None;
    }
    let describe = |n: InputNorm| match n.std {
        Some(std) => format!("mean {:?} and std {std:?}", n.mean),
        None => format!("mean {:?} only", n.mean),
    };
    Some(format!(
        "warning: {what} was trained on inputs normalised by {}, this run normalises by {}: its layers see \
         inputs of another offset or scale (give the --stats or --mean it was trained with)",
        describe(from),
        describe(run)
    ))
}
