//! The memory-bound end of `vgg bench gemm`: the multi-tensor SGD step over VGG-16's
//! parameters, read as GB/s against a device-to-device copy measured in the same run (and
//! against [`COPY_CEILING_GB_S`]), with the step checked against the reference.

use super::{GemmBenchConfig, VGG16_FC, VGG16_FC_EMU};
use crate::bench::{random_f16, time_calls, Agreement, Timing};
use crate::ops::optim::{Sgd, SgdParam, SgdPlan};
use crate::problem::{vgg16_layers, vgg16_layers_reduced};
use crate::{reference, Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// The H200's measured device-to-device copy bandwidth (bytes read + written), in GB/s: the
/// ceiling a memory-bound kernel is read against.
pub const COPY_CEILING_GB_S: f64 = 4300.0;

/// Bytes one SGD step moves per parameter: fp32 master, momentum and gradient read (12),
/// master and momentum written (8), the fp16 copy written (2).
pub const SGD_BYTES_PER_PARAM: usize = 22;

/// One parameter tensor of the SGD step.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ParamTensor {
    /// `<layer>.weight` or `<layer>.bias`, e.g. `conv1_1.weight`, `fc6.bias`.
    pub name: String,
    /// Elements.
    pub len: usize,
    /// Weight decay applies (weights), or not (biases).
    pub decay: bool,
}

/// VGG-16's parameter tensors in model order (a weight, then its bias, per layer): 138.36M
/// parameters in 32 tensors; on the emulator (`emu`), the layers shrunk as the conv bench's
/// and the classifier as [`VGG16_FC_EMU`].
pub fn vgg16_params(emu: bool) -> Vec<ParamTensor> {
    let convs = if emu { vgg16_layers_reduced(1, 16, 32) } else { vgg16_layers(1) };
    let fcs = if emu { VGG16_FC_EMU } else { VGG16_FC };
    let mut v = vec![];
    let mut layer = |name: &str, weights: usize, bias: usize| {
        v.push(ParamTensor { name: format!("{name}.weight"), len: weights, decay: true });
        v.push(ParamTensor { name: format!("{name}.bias"), len: bias, decay: false });
    };
    for c in &convs {
        layer(c.name, c.problem.filter_len(), c.problem.k);
    }
    for f in &fcs {
        layer(f.name, f.k * f.n, f.n);
    }
    v
}

/// A memory-bound measurement: the device-to-device copy or the SGD step.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BandwidthRow {
    /// `copy` or `sgd_step`.
    pub name: String,
    /// What was moved, in words.
    pub detail: String,
    /// Elements updated (SGD) or bytes copied (copy).
    pub elements: usize,
    /// Bytes read plus bytes written by one call.
    pub bytes_per_call: usize,
    /// The timing, when the measurement ran.
    pub timing: Option<Timing>,
    /// `bytes_per_call` over the median time.
    pub gb_s: Option<f64>,
    /// The fraction of [`COPY_CEILING_GB_S`].
    pub of_ceiling: Option<f64>,
    /// The fraction of the copy measured in this run (SGD only).
    pub of_copy: Option<f64>,
    /// The SGD step's result on the last tensors against the reference.
    pub check: Option<Agreement>,
    /// Why the measurement (or its check) could not run.
    pub error: Option<String>,
}

impl BandwidthRow {
    fn new(name: &str, detail: String, elements: usize, bytes_per_call: usize) -> Self {
        Self {
            name: name.into(),
            detail,
            elements,
            bytes_per_call,
            timing: None,
            gb_s: None,
            of_ceiling: None,
            of_copy: None,
            check: None,
            error: None,
        }
    }

    /// The measurement failed, or its check did.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.check.as_ref().is_some_and(|c| !c.pass)
    }

    fn set_timing(&mut self, t: Timing) {
        let gb_s = self.bytes_per_call as f64 / (t.median_ms * 1e-3) / 1e9;
        self.timing = Some(t);
        self.gb_s = Some(gb_s);
        self.of_ceiling = Some(gb_s / COPY_CEILING_GB_S);
    }

    /// The row as one line (errors on an indented line below).
    pub fn line(&self) -> String {
        let mut s = format!("{:<9} {}", self.name, self.detail);
        if let (Some(t), Some(g), Some(f)) = (&self.timing, self.gb_s, self.of_ceiling) {
            s += &format!(
                ": {:.4} ms, {g:.0} GB/s = {:.1}% of {:.1} TB/s",
                t.median_ms,
                100.0 * f,
                COPY_CEILING_GB_S / 1e3
            );
            if let Some(c) = self.of_copy {
                s += &format!(", {:.1}% of this run's copy", 100.0 * c);
            }
        }
        if let Some(a) = &self.check {
            s += &format!("; vs {}", a.cell());
        }
        if let Some(e) = &self.error {
            s += &format!("\n    {e}");
        }
        s
    }
}

/// A device-to-device copy of `src` into `dst` on the device's stream (`cuMemcpyDtoDAsync`);
/// on the emulator, through the host.
fn copy_dtod(dev: &Device, src: &Tensor<u8>, dst: &mut Tensor<u8>) -> crate::Result<()> {
    src.check(dev, "copy source", dst.len())?;
    match dev.cuda_raw_stream()? {
        // SAFETY: both buffers live on this device (checked) and span `dst.len()` bytes; the
        // stream is the device's own, its context current (cuda_raw_stream bound it).
        Some(stream) => unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.device_ptr(),
                src.device_ptr(),
                dst.len(),
                stream as cudarc::driver::sys::CUstream,
            )
        }
        .map_err(|e| crate::Error::Driver { call: "cuMemcpyDtoDAsync", message: e.to_string() }),
        None => dst.copy_from_host(&src.to_host()?),
    }
}

pub(super) fn bench_copy(dev: &Device, cfg: &GemmBenchConfig) -> BandwidthRow {
    let bytes = cfg.copy_bytes.max(1);
    let how = if dev.is_emu() { "copy through the host (emu)" } else { "cuMemcpyDtoDAsync" };
    let detail = format!("{how} of {:.1} MiB", bytes as f64 / (1u64 << 20) as f64);
    let mut row = BandwidthRow::new("copy", detail, bytes, 2 * bytes);
    let timed = (|| {
        let src = Tensor::<u8>::zeros(dev, &[bytes])?;
        let mut dst = Tensor::<u8>::empty(dev, &[bytes])?;
        time_calls(dev, &cfg.timing, |_| copy_dtod(dev, &src, &mut dst))
    })();
    match timed {
        Ok(t) => row.set_timing(t),
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}

/// `len` normal(0, `scale`^2) values as f32 (from the shared pool, rounded through fp16).
fn random_f32(len: usize, scale: f32, seed: u64) -> Vec<f32> {
    random_f16(len, scale, seed).par_iter().map(|x| x.to_f32()).collect()
}

pub(super) fn bench_sgd(dev: &Device, cfg: &GemmBenchConfig) -> BandwidthRow {
    let elements: usize = cfg.params.iter().map(|p| p.len).sum();
    let bytes = (SGD_BYTES_PER_PARAM * elements) as f64;
    let detail = format!(
        "SGD step (fp32 master + momentum, fp32 grads, fp16 copies) over {:.2}M params in {} tensors, {} a step",
        elements as f64 / 1e6,
        cfg.params.len(),
        if bytes >= 1e9 { format!("{:.2} GB", bytes / 1e9) } else { format!("{:.2} MB", bytes / 1e6) }
    );
    let mut row = BandwidthRow::new("sgd_step", detail, elements, SGD_BYTES_PER_PARAM * elements);
    if let Err(e) = sgd_measure(dev, cfg, &mut row) {
        row.error = Some(e.to_string());
    }
    row
}

/// Checks one step on the last two tensors against the reference, then times the step.
fn sgd_measure(dev: &Device, cfg: &GemmBenchConfig, row: &mut BandwidthRow) -> crate::Result<()> {
    crate::ensure_shape!(!cfg.params.is_empty(), "SGD bench: no parameter tensors");
    let (mut w, mut v, mut g, mut h) = (vec![], vec![], vec![], vec![]);
    for (i, p) in cfg.params.iter().enumerate() {
        let seed = 0x0057_e900 + 8 * i as u64;
        w.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.05, seed))?);
        v.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.01, seed + 1))?);
        g.push(Tensor::<f32>::from_host(dev, &[p.len], &random_f32(p.len, 0.01, seed + 2))?);
        h.push(Tensor::<f16>::empty(dev, &[p.len])?);
    }
    let mut params: Vec<SgdParam<'_>> = w
        .iter_mut()
        .zip(v.iter_mut())
        .zip(g.iter())
        .zip(h.iter_mut())
        .zip(&cfg.params)
        .map(|((((w, v), g), h), p)| SgdParam { w, v, g, w16: Some(h), decay: p.decay })
        .collect();
    let plan = SgdPlan::new(&params)?;
    let hp = Sgd::VGG.with_scale(1.0);

    // One step, checked against the reference on the last (smallest) tensors.
    let checked = params.len().saturating_sub(2)..params.len();
    let mut want_w = vec![];
    let mut want_v = vec![];
    for p in &params[checked.clone()] {
        let (mut ww, mut vv, gg) = (p.w.to_host()?, p.v.to_host()?, p.g.to_host()?);
        reference::sgd_step(&mut ww, &mut vv, &gg, &hp, p.decay);
        want_w.extend(ww);
        want_v.extend(vv);
    }
    plan.step(&mut params, &hp, None)?;
    let (mut got_w, mut got_v, mut got_h) = (vec![], vec![], vec![]);
    for p in &params[checked] {
        got_w.extend(p.w.to_host()?);
        got_v.extend(p.v.to_host()?);
        if let Some(h) = &p.w16 {
            got_h.extend(h.to_f32()?);
        }
    }
    let want_h: Vec<f32> = want_w.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    let (mut got, mut want) = (got_w, want_w);
    got.extend(got_v);
    want.extend(want_v);
    got.extend(got_h);
    want.extend(want_h);
    // The step is the reference's bit for bit; allow an ulp or so should it ever use f32 math.
    row.check = Some(Agreement::new("reference", &got, &want, 1e-6, 1e-6));

    let t = time_calls(dev, &cfg.timing, |_| plan.step(&mut params, &hp, None))?;
    row.set_timing(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_has_138m_params() {
        let p = vgg16_params(false);
        assert_eq!(p.len(), 32);
        assert_eq!(p.iter().map(|t| t.len).sum::<usize>(), 138_357_544);
        assert_eq!((p[0].len, p[0].decay, p[1].len, p[1].decay), (1728, true, 64, false));
        assert!(vgg16_params(true).iter().map(|t| t.len).sum::<usize>() < 1_000_000);
    }
}
