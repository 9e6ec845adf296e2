//! Parameters of a VGG on the device: per tensor an fp32 master, its SGD momentum, its fp32
//! gradient and the fp16 copy the kernels compute with; initialisation; and the conversion
//! between our device layouts and torchvision's (the names and layouts of export / import
//! and of checkpoints).
//!
//! Layouts, device (ours) vs torchvision:
//! - 3x3 conv filters: KRSC `[K][3][3][C]` (our kernels read a tap's C channels
//!   contiguously) vs OIHW `[K][C][3][3]`.
//! - 1x1 conv filters (config C): `[K][C]` vs `[K][C][1][1]`: the same bytes.
//! - FC weights: `[out][in]` on both sides, but the first FC layer's input is the flattened
//!   last feature map, which torchvision flattens in CHW order (`c*H*W + y*W + x`) and we,
//!   holding NHWC activations, in HWC order (`(y*W + x)*C + c`). Its weight columns are
//!   permuted between the two orders on export and import, so that `x_nhwc . w_ours` equals
//!   `x_nchw . w_torchvision`. At a 1x1 feature map (32x32 inputs) the two orders coincide.
//! - Biases: identical.

use super::config::{FeatureKind, VggConfig};
use crate::{ensure_shape, Device, Error, Result, Tensor};
use half::f16;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

/// Weight initialisation (biases are always zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every weight from N(0, std^2). The paper's config A: variance 1e-2, i.e. std 0.1
    /// ([`Init::PAPER`]); note that this scale blows activations up in deep or wide nets,
    /// which is why the paper pre-initialised the deeper configs from A.
    Normal { std: f32 },
    /// Glorot / Xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    Glorot,
    /// He / Kaiming normal for ReLU: N(0, 2 / fan_in).
    He,
    /// torchvision's VGG init: Kaiming normal with fan_out for convs, N(0, 0.01^2) for FC.
    Torchvision,
}

impl Init {
    pub const PAPER: Init = Init::Normal { std: 0.1 };

    /// `paper`, `normal:STD`, `glorot` (or `xavier`), `he` (or `kaiming`), `torchvision`.
    pub fn parse(s: &str) -> Result<Self> {
        let l = s.to_ascii_lowercase();
        Ok(match l.as_str() {
            "paper" => Init::PAPER,
            "glorot" | "xavier" => Init::Glorot,
            "he" | "kaiming" => Init::He,
            "torchvision" => Init::Torchvision,
            _ => match l.strip_prefix("normal:").and_then(|v| v.parse::<f32>().ok()) {
                Some(std) if std > 0.0 && std.is_finite() => Init::Normal { std },
                _ => {
                    return Err(Error::Shape(format!(
                        "unknown init `{s}` (paper, normal:STD, glorot, he, torchvision)"
                    )))
                }
            },
        })
    }
}

/// How a tensor's device layout maps to torchvision's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Same element order (biases, 1x1 convs, FC layers after the first).
    Same,
    /// 3x3 filters: device KRSC, torchvision OIHW.
    Krsc { k: usize, c: usize },
    /// First FC layer: columns in HWC order on the device, CHW in torchvision.
    FcHwc { out: usize, h: usize, w: usize, c: usize },
}

impl Layout {
    /// For element `i` of the device tensor, its index in the torchvision tensor.
    fn tv_index(&self, i: usize) -> usize {
        match *self {
            Layout::Same => i,
            Layout::Krsc { c, .. } => {
                let (k, rest) = (i / (9 * c), i % (9 * c));
                let (rs, ch) = (rest / c, rest % c);
                (k * c + ch) * 9 + rs
            }
            Layout::FcHwc { h, w, c, .. } => {
                let cols = h * w * c;
                let (o, col) = (i / cols, i % cols);
                let (pix, ch) = (col / c, col % c);
                o * cols + ch * h * w + pix
            }
        }
    }

    /// Device order -> torchvision order.
    pub fn to_torchvision(&self, dev: &[f32]) -> Vec<f32> {
        let mut tv = vec![0f32; dev.len()];
        for (i, &v) in dev.iter().enumerate() {
            tv[self.tv_index(i)] = v;
        }
        tv
    }

    /// Torchvision order -> device order.
    pub fn from_torchvision(&self, tv: &[f32]) -> Vec<f32> {
        (0..tv.len()).map(|i| tv[self.tv_index(i)]).collect()
    }
}

/// One parameter tensor on the device.
#[derive(Debug)]
pub struct Param {
    /// torchvision's name, e.g. `features.0.weight`, `classifier.6.bias`.
    pub name: String,
    /// torchvision's shape (OIHW, `[out][in]`, `[out]`).
    pub tv_shape: Vec<usize>,
    pub layout: Layout,
    /// fp32 master weights, device layout (KRSC / `[K][C]` / `[out][in]`).
    pub w: Tensor<f32>,
    /// SGD momentum, device layout.
    pub v: Tensor<f32>,
    /// Gradient of the loss-scaled loss, fp32, device layout.
    pub g: Tensor<f32>,
    /// fp16 copy of `w` that the kernels read.
    pub h: Tensor<f16>,
    /// Weight decay applies (weights) or not (biases).
    pub decay: bool,
    /// fan-in and fan-out, for initialisation.
    fan: (usize, usize),
    conv: bool,
}

impl Param {
    pub fn len(&self) -> usize {
        self.w.len()
    }
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }
}

/// Allocates every parameter of `cfg` (in torchvision's state-dict order) and initialises it.
pub(crate) fn allocate(dev: &Device, cfg: &VggConfig, init: Init, seed: u64) -> Result<Vec<Param>> {
    let mut out = vec![];
    let mut push = |name: String, tv_shape: Vec<usize>, shape: Vec<usize>, layout, fan, conv, decay| -> Result<()> {
        let w = Tensor::<f32>::zeros(dev, &shape)?;
        let v = Tensor::<f32>::zeros(dev, &shape)?;
        let g = Tensor::<f32>::zeros(dev, &shape)?;
        let h = Tensor::<f16>::zeros(dev, &shape)?;
        out.push(Param { name, tv_shape, layout, w, v, g, h, decay, fan, conv });
        Ok(())
    };
    for f in cfg.features() {
        let (k, c) = (f.c_out, f.c_in);
        let (shape, layout, taps) = match f.kind {
            FeatureKind::Conv3x3 => (vec![k, 3, 3, c], Layout::Krsc { k, c }, 9),
            FeatureKind::Conv1x1 => (vec![k, c], Layout::Same, 1),
            _ => continue,
        };
        let ks = if taps == 9 { 3 } else { 1 };
        let fan = (c * taps, k * taps);
        push(format!("features.{}.weight", f.index), vec![k, c, ks, ks], shape, layout, fan, true, true)?;
        push(format!("features.{}.bias", f.index), vec![k], vec![k], Layout::Same, fan, true, false)?;
    }
    let (h, w, c) = cfg.feature_out();
    for (j, (i, (fi, fo))) in [0, 3, 6].into_iter().zip(cfg.classifier()).enumerate() {
        let layout = if j == 0 { Layout::FcHwc { out: fo, h, w, c } } else { Layout::Same };
        push(format!("classifier.{i}.weight"), vec![fo, fi], vec![fo, fi], layout, (fi, fo), false, true)?;
        push(format!("classifier.{i}.bias"), vec![fo], vec![fo], Layout::Same, (fi, fo), false, false)?;
    }
    init_params(&mut out, init, seed)?;
    Ok(out)
}

/// Draws every weight (device layout, in parameter order, from one RNG seeded by `seed`),
/// zeroes biases and momenta, and refreshes the fp16 copies.
pub(crate) fn init_params(params: &mut [Param], init: Init, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for p in params.iter_mut() {
        let n = p.len();
        let data: Vec<f32> = if !p.decay {
            vec![0.0; n]
        } else {
            let (fan_in, fan_out) = (p.fan.0 as f64, p.fan.1 as f64);
            let normal = |std: f64, rng: &mut rand::rngs::StdRng| -> Result<Vec<f32>> {
                let d = Normal::new(0.0, std).map_err(|e| Error::Shape(format!("init std {std}: {e}")))?;
                Ok((0..n).map(|_| d.sample(rng) as f32).collect())
            };
            match init {
                Init::Normal { std } => normal(std as f64, &mut rng)?,
                Init::He => normal((2.0 / fan_in).sqrt(), &mut rng)?,
                Init::Torchvision if p.conv => normal((2.0 / fan_out).sqrt(), &mut rng)?,
                Init::Torchvision => normal(0.01, &mut rng)?,
                Init::Glorot => {
                    let a = (6.0 / (fan_in + fan_out)).sqrt();
                    let d = Uniform::new_inclusive(-a, a);
                    (0..n).map(|_| d.sample(&mut rng) as f32).collect()
                }
            }
        };
        p.w.copy_from_host(&data)?;
        p.v.copy_from_host(&vec![0.0; n])?;
        p.g.copy_from_host(&vec![0.0; n])?;
        crate::ops::cast_f32_to_f16(&p.w, &mut p.h)?;
    }
    Ok(())
}

/// A named tensor in torchvision's layout: `(name, shape, values)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Which per-parameter state to export or import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Weights,
    Momentum,
}

pub(crate) fn export(params: &[Param], which: State) -> Result<Vec<NamedTensor>> {
    params
        .iter()
        .map(|p| {
            let t = if which == State::Weights { &p.w } else { &p.v };
            Ok((p.name.clone(), p.tv_shape.clone(), p.layout.to_torchvision(&t.to_host()?)))
        })
        .collect()
}

/// Imports exactly this model's tensors (any order); errors name the first missing,
/// unexpected or misshapen tensor, and nothing is written unless every tensor fits.
pub(crate) fn import(params: &mut [Param], tensors: &[NamedTensor], which: State) -> Result<()> {
    for (name, shape, data) in tensors {
        let Some(p) = params.iter().find(|p| &p.name == name) else {
            return Err(Error::Shape(format!("tensor `{name}` (shape {shape:?}) is not a parameter of this model")));
        };
        ensure_shape!(
            *shape == p.tv_shape,
            "tensor `{name}` has shape {shape:?}, this model's is {:?} (a different config, width, input size or class count?)",
            p.tv_shape
        );
        ensure_shape!(data.len() == p.len(), "tensor `{name}` holds {} values for shape {shape:?}", data.len());
    }
    for p in params.iter() {
        let n = tensors.iter().filter(|t| t.0 == p.name).count();
        ensure_shape!(n == 1, "tensor `{}` appears {n} times (expected once)", p.name);
    }
    for p in params.iter_mut() {
        let (_, _, data) = tensors.iter().find(|t| t.0 == p.name).expect("checked above");
        let dev = p.layout.from_torchvision(data);
        match which {
            State::Weights => {
                p.w.copy_from_host(&dev)?;
                crate::ops::cast_f32_to_f16(&p.w, &mut p.h)?;
            }
            State::Momentum => p.v.copy_from_host(&dev)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_match_definitions() {
        // KRSC [2][3][3][4] -> OIHW [2][4][3][3].
        let l = Layout::Krsc { k: 2, c: 4 };
        let dev: Vec<f32> = (0..72).map(|i| i as f32).collect();
        let tv = l.to_torchvision(&dev);
        // dev[k=1][r=2][s=0][c=3] = ((1*3+2)*3+0)*4+3 = 63 sits at tv[k=1][c=3][r=2][s=0] = ((1*4+3)*3+2)*3+0 = 69.
        assert_eq!(tv[69], 63.0);
        assert_eq!(l.from_torchvision(&tv), dev);
        // First FC: out 2, feature map 2x3x5 (h, w, c).
        let l = Layout::FcHwc { out: 2, h: 2, w: 3, c: 5 };
        let dev: Vec<f32> = (0..60).map(|i| i as f32).collect();
        let tv = l.to_torchvision(&dev);
        // dev[o=1][(y=1*3+x=2)*5+c=4] = 30 + 29 = 59 at tv[o=1][c=4*6 + 1*3+2] = 30 + 29 = 59 (coincidence of this
        // corner); check an interior one: dev[o=0][(0*3+1)*5+2] = 7 -> tv[0][2*6+0*3+1] = 13.
        assert_eq!(tv[13], 7.0);
        assert_eq!(l.from_torchvision(&tv), dev);
    }
}
