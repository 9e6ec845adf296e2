//! PyTorch's own weight files (`torch.save` of a state dict: `.pth`, `.pt`), read without
//! Python, so that torchvision's pretrained VGG weights (`vgg16-397923af.pth` and the like)
//! load as they are downloaded: `vgg eval --weights vgg16-397923af.pth`.
//!
//! Two containers: the zip archive of PyTorch 1.6 and later (`<name>/data.pkl`, the pickled
//! state dict, beside `<name>/data/<key>`, each storage's raw bytes), and the legacy stream
//! of earlier releases and of `_use_new_zipfile_serialization=False` (pickles of a magic
//! number, the protocol version and the system's sizes, then of the state dict, then of the
//! storage keys, then each storage as an 8-byte element count and its bytes). Either way the
//! state dict is a pickle whose tensors refer to storages by key (`pickle.rs`). Tensors come back
//! as f32, contiguous, by name: what [`super::checkpoint::load`] returns for a safetensors file.

mod pickle;

use crate::model::NamedTensor;
use anyhow::{anyhow, bail, Context, Result};
use pickle::{Machine, TensorRef, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// The legacy stream's first pickle: `torch.serialization.MAGIC_NUMBER`.
const MAGIC: i128 = 0x1950_a86a_20f9_469c_fc6c;
/// The legacy stream's protocol version.
const LEGACY_VERSION: i128 = 1001;

/// Whether `head` (a file's first 9 bytes or more) starts a `torch.save` file: a zip archive,
/// or a pickle of protocol 2 or later whose first opcode is the magic number's LONG1 (or a
/// protocol-4 FRAME before it). A safetensors file starts with its header's length, 8 bytes,
/// then `{`: one whose length's first bytes read so (a header of 9 MB or more) is told apart by
/// that brace.
pub fn is_pth(head: &[u8]) -> bool {
    let pickle = matches!(head, [0x80, 2..=5, 0x8a | 0x95, ..]);
    head.starts_with(b"PK\x03\x04") || (pickle && head.get(8) != Some(&b'{'))
}

/// The tensors of the state dict in `bytes` (a `torch.save` file), as f32, sorted by name. A
/// checkpoint dict holding the state dict under `state_dict` or `model` gives that one; a
/// `module.` prefix on every name (a model wrapped in DataParallel) is removed.
pub fn read(bytes: &[u8]) -> Result<Vec<NamedTensor>> {
    let (m, storages) = if bytes.starts_with(b"PK") { zip_file(bytes)? } else { legacy(bytes)? };
    let dict = state_dict(&m, m.root, true)?;
    let mut out = Vec::with_capacity(dict.len());
    for (name, t) in dict {
        let data = storages.get(&t.storage.key).ok_or_else(|| anyhow!("tensor `{name}`: its storage is missing"))?;
        let v = tensor(&t, data).with_context(|| format!("tensor `{name}`"))?;
        out.push((name, t.shape.clone(), v));
    }
    if !out.is_empty() && out.iter().all(|t| t.0.starts_with("module.")) {
        for t in &mut out {
            t.0.drain(.."module.".len());
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Each storage's bytes by key: read out of a zip archive (which checks their CRC), or borrowed
/// from a legacy stream.
type Storages<'a> = HashMap<String, Cow<'a, [u8]>>;

/// The zip archive: its pickle and every storage file by key.
fn zip_file(bytes: &[u8]) -> Result<(Machine, Storages<'_>)> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| anyhow!("not a readable zip archive (truncated?): {e}"))?;
    let names: Vec<String> = z.file_names().map(String::from).collect();
    let pkl = names
        .iter()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| anyhow!("a zip archive without data.pkl: not a file torch.save wrote"))?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let mut entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = z.by_name(name).map_err(|e| anyhow!("{name}: {e}"))?;
        // Stored entries (PyTorch compresses none): no larger than the archive.
        let mut v = Vec::with_capacity((f.size() as usize).min(bytes.len()));
        f.read_to_end(&mut v).map_err(|e| anyhow!("{name}: {e} (truncated or corrupt archive?)"))?;
        Ok(v)
    };
    if names.iter().any(|n| *n == format!("{prefix}byteorder")) && entry(&format!("{prefix}byteorder"))? != b"little" {
        bail!("the file was saved on a big-endian machine, which this reader does not convert");
    }
    let (m, _) = pickle::load(&entry(pkl)?)?;
    let mut storages = HashMap::new();
    for s in storage_refs(&m) {
        if storages.contains_key(&s.key) {
            continue;
        }
        let data = entry(&format!("{prefix}data/{}", s.key))?;
        let want = elem_size(&s.dtype).map(|es| s.numel.saturating_mul(es as u64));
        if want.is_some_and(|w| (data.len() as u64) < w) {
            bail!(
                "storage `{}` holds {} bytes, fewer than its {} elements need (corrupt archive?)",
                s.key,
                data.len(),
                s.numel
            );
        }
        storages.insert(s.key.clone(), Cow::Owned(data));
    }
    Ok((m, storages))
}

/// The legacy stream: its pickles in order, then the storages' records (borrowed from
/// `bytes`: torchvision's VGG-16 file holds 528 MB of them).
fn legacy(bytes: &[u8]) -> Result<(Machine, Storages<'_>)> {
    let mut at = 0;
    let mut next = |what: &str| -> Result<Machine> {
        let (m, n) = pickle::load(&bytes[at..]).with_context(|| format!("reading the {what}"))?;
        at += n;
        Ok(m)
    };
    let magic = next("magic number")?;
    if !matches!(magic.get(magic.root), Value::Int(MAGIC)) {
        bail!("a pickle, but not a file torch.save wrote (no PyTorch magic number)");
    }
    let version = next("protocol version")?;
    if !matches!(version.get(version.root), Value::Int(LEGACY_VERSION)) {
        bail!("a torch.save file of a protocol version other than {LEGACY_VERSION}");
    }
    let sys = next("system information")?;
    if let Value::Dict(items) = sys.get(sys.root) {
        let little = items.iter().find(|(k, _)| sys.str(*k) == Some("little_endian"));
        if little.is_some_and(|(_, v)| matches!(sys.get(*v), Value::Bool(false))) {
            bail!("the file was saved on a big-endian machine, which this reader does not convert");
        }
    }
    let m = next("state dict")?;
    let order = next("storage keys")?;
    let Value::List(ks) = order.get(order.root) else { bail!("the storage key list is not a list") };
    let ks: Vec<String> = ks
        .iter()
        .map(|&k| order.str(k).map(String::from))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("a storage key that is not a string"))?;
    // Each storage: its element count (8 bytes, little-endian), then its bytes; the element
    // size is its type's, named where a tensor refers to it.
    let sizes: HashMap<String, Option<usize>> =
        storage_refs(&m).map(|s| (s.key.clone(), elem_size(&s.dtype))).collect();
    let mut storages = HashMap::new();
    for key in ks {
        let head: [u8; 8] = bytes
            .get(at..at + 8)
            .ok_or_else(|| anyhow!("storage `{key}`: the file ends before it (truncated?)"))?
            .try_into()
            .unwrap();
        let numel = u64::from_le_bytes(head);
        let es = sizes
            .get(&key)
            .copied()
            .flatten()
            .ok_or_else(|| anyhow!("storage `{key}`: of a type this reader does not know"))?;
        let len = numel.checked_mul(es as u64).and_then(|l| usize::try_from(l).ok());
        let data = len
            .and_then(|l| bytes.get(at + 8..(at + 8).checked_add(l)?))
            .ok_or_else(|| anyhow!("storage `{key}`: {numel} elements run past the end of the file (truncated?)"))?;
        storages.insert(key, Cow::Borrowed(data));
        at += 8 + data.len();
    }
    Ok((m, storages))
}

/// Every storage the pickle names (by persistent id), tensors' and any other.
fn storage_refs(m: &Machine) -> impl Iterator<Item = &pickle::Storage> {
    m.values.iter().filter_map(|v| match v {
        Value::Tensor(t) => Some(&t.storage),
        Value::Storage(s) => Some(s),
        _ => None,
    })
}

/// Bytes an element of a storage type (`FloatStorage`, ...); None for a type not known here.
fn elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

/// The name -> tensor pairs of the state dict: the pickled dict itself, or (`nested`) its
/// `state_dict` / `model` entry where the file is a training checkpoint holding one. One level
/// only: a dict that holds itself (a pickle may) does not recurse forever.
fn state_dict(m: &Machine, root: usize, nested: bool) -> Result<Vec<(String, TensorRef)>> {
    let items = match m.get(root) {
        Value::Dict(items) => items,
        Value::Object(what) => bail!(
            "the file holds a pickled {what}, not a state dict (a dict of tensors): save model.state_dict() instead"
        ),
        Value::Tensor(_) => bail!("the file holds a single tensor, not a state dict (a dict of tensors)"),
        _ => bail!("the file holds no state dict (its pickled object is not a dict)"),
    };
    let tensors: Vec<(String, TensorRef)> = items
        .iter()
        .filter_map(|&(k, v)| match (m.str(k), m.get(v)) {
            (Some(name), Value::Tensor(t)) => Some((name.to_string(), t.clone())),
            _ => None,
        })
        .collect();
    if !tensors.is_empty() {
        return Ok(tensors);
    }
    for want in ["state_dict", "model"].into_iter().filter(|_| nested) {
        if let Some(&(_, v)) = items.iter().find(|(k, _)| m.str(*k) == Some(want)) {
            if matches!(m.get(v), Value::Dict(_)) {
                return state_dict(m, v, false);
            }
        }
    }
    Ok(vec![])
}

/// A tensor's elements in row-major order, as f32, gathered by its offset and strides.
fn tensor(t: &TensorRef, data: &[u8]) -> Result<Vec<f32>> {
    let s = &t.storage;
    let es = elem_size(&s.dtype).ok_or_else(|| anyhow!("storage type {} is not one this reader knows", s.dtype))?;
    // A legacy view: a window of its root storage.
    let data = match &s.view {
        Some((_, off, len)) => (off.checked_mul(es as u64))
            .zip((off + len).checked_mul(es as u64))
            .and_then(|(a, b)| data.get(a as usize..b as usize))
            .ok_or_else(|| anyhow!("its storage view lies outside its storage"))?,
        None => data,
    };
    let numel = data.len() / es;
    // No more elements than the storage holds (a state dict's tensors do not broadcast): a
    // corrupt shape is an error here, not an allocation of its product.
    let count = t.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).filter(|&c| c <= numel);
    let count = count.ok_or_else(|| anyhow!("shape {:?} has more elements than its storage's {numel}", t.shape))?;
    if count > 0 {
        let last = t.shape.iter().zip(&t.stride).map(|(&n, &st)| (n - 1) as u128 * st as u128).sum::<u128>();
        if t.offset as u128 + last >= numel as u128 {
            bail!(
                "shape {:?} at offset {} with strides {:?} reaches past its storage of {numel} elements",
                t.shape,
                t.offset,
                t.stride
            );
        }
    }
    let get = |i: usize| -> f32 {
        let b = &data[i * es..(i + 1) * es];
        match s.dtype.as_str() {
            "FloatStorage" => f32::from_le_bytes(b.try_into().unwrap()),
            "HalfStorage" => half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            "BFloat16Storage" => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            _ => f64::from_le_bytes(b.try_into().unwrap()) as f32,
        }
    };
    if !matches!(s.dtype.as_str(), "FloatStorage" | "HalfStorage" | "BFloat16Storage" | "DoubleStorage") {
        bail!("has dtype {}; only float weights are supported", s.dtype.trim_end_matches("Storage"));
    }
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..count {
        let at = t.offset as usize + idx.iter().zip(&t.stride).map(|(i, st)| i * st).sum::<usize>();
        out.push(get(at));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
