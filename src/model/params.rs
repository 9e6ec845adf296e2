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
    /// Every weight from N(0, std^2); the paper's config A is std 0.01 ([`Init::PAPER`]).
    /// Activations shrink through each layer at that scale (a 3x3 conv of C channels scales
    /// their variance by 9 C std^2 / 2), which is why the paper pre-initialised the deeper
    /// configs from A.
    Normal {
        /// The standard deviation: positive and finite.
        std: f32,
    },
    /// Glorot / Xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    Glorot,
    /// He / Kaiming normal for ReLU: N(0, 2 / fan_in).
    He,
    /// torchvision's VGG init: Kaiming normal with fan_out for convs, N(0, 0.01^2) for FC.
    Torchvision,
}

impl Init {
    /// The paper's init (Section 3.1): "weights sampled from a normal distribution with zero
    /// mean and 10^-2 variance", taken as std 1e-2, as re-implementations (and torchvision's
    /// init of the FC layers) do. Read literally, variance 1e-2 is std 0.1, which multiplies
    /// the activations' variance by 9 C / 200 per 3x3 conv (23x at C = 512): config A's
    /// forward then overflows fp16 before the logits, even at 32x32 (tests/paper_init.rs),
    /// so nothing would train; `normal:0.1` still gives that reading.
    pub const PAPER: Init = Init::Normal { std: 0.01 };

    /// `paper`, `normal:STD`, `glorot` (or `xavier`), `he` (or `kaiming`), `torchvision`.
    pub fn parse(s: &str) -> Result<Self> {
        let l = s.to_ascii_lowercase();
        Ok(match l.as_str() {
            "paper" => Init::PAPER,
            "glorot" | "xavier" => Init::Glorot,
            "he" | "kaiming" => Init::He,
            "torchvision" => Init::Torchvision,
            _ => match l.strip_prefix("normal:").map(|v| v.parse::<f32>().ok()) {
                Some(Some(std)) if std > 0.0 && std.is_finite() => Init::Normal { std },
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "init `{s}`: normal:STD needs a positive, finite standard deviation"
                    )))
                }
                None => {
                    return Err(Error::Invalid(format!(
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
    Krsc {
        /// Output channels.
        k: usize,
        /// Input channels.
        c: usize,
    },
    /// First FC layer: columns in HWC order on the device, CHW in torchvision.
    FcHwc {
        /// Output features (rows).
        out: usize,
        /// Height of the flattened feature map.
        h: usize,
        /// Its width.
        w: usize,
        /// Its channels.
        c: usize,
    },
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

    /// Errors unless `len` values fit this layout: every dimension at least 1 (tv_index divides
    /// by them) and exactly the layout's element count (a shorter or longer slice would index
    /// past one side or the other).
    fn check_len(&self, len: usize) -> Result<()> {
        let dims = match *self {
            Layout::Same => return Ok(()),
            Layout::Krsc { k, c } => vec![k, 3, 3, c],
            Layout::FcHwc { out, h, w, c } => vec![out, h, w, c],
        };
        let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|_| !dims.contains(&0));
        ensure_shape!(want == Some(len), "layout {self:?} ({dims:?}) does not hold {len} values");
        Ok(())
    }

    /// Device order -> torchvision order; an error unless `dev` has the layout's element count.
    pub fn to_torchvision(&self, dev: &[f32]) -> Result<Vec<f32>> {
        self.check_len(dev.len())?;
        let mut tv = vec![0f32; dev.len()];
        for (i, &v) in dev.iter().enumerate() {
            tv[self.tv_index(i)] = v;
        }
        Ok(tv)
    }

    /// Torchvision order -> device order; an error unless `tv` has the layout's element count.
    pub fn from_torchvision(&self, tv: &[f32]) -> Result<Vec<f32>> {
        self.check_len(tv.len())?;
        Ok((0..tv.len()).map(|i| tv[self.tv_index(i)]).collect())
    }
}

/// One parameter tensor on the device.
#[derive(Debug)]
pub struct Param {
    /// torchvision's name, e.g. `features.0.weight`, `classifier.6.bias`.
    pub name: String,
    /// torchvision's shape (OIHW, `[out][in]`, `[out]`).
    pub tv_shape: Vec<usize>,
    /// How the device tensors' element order maps to torchvision's.
    pub layout: Layout,
    /// fp32 master weights, device layout (KRSC / `[K][C]` / `[out][in]`).
    pub w: Tensor<f32>,
    /// SGD momentum, device layout.
    pub v: Tensor<f32>,
    /// Gradient of the loss-scaled loss, fp32, device layout.
    pub g: Tensor<f32>,
    /// fp16 copy of `w` that the kernels read.
    pub h: Tensor<f16>,
    /// A bias: initialised to zero, and decayed only with `OptimConfig::decay_biases`
    /// ([`crate::model::OptimConfig::decays`]).
    pub bias: bool,
    /// fan-in and fan-out, for initialisation.
    fan: (usize, usize),
    conv: bool,
}

impl Param {
    /// Elements of the tensor (of `w`, `v`, `g` and `h` alike).
    pub fn len(&self) -> usize {
        self.w.len()
    }
    /// Whether the tensor has no elements (never, for a parameter of a valid config).
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }
}

/// Allocates every parameter of `cfg` (in torchvision's state-dict order) and initialises it.
pub(crate) fn allocate(dev: &Device, cfg: &VggConfig, init: Init, seed: u64) -> Result<Vec<Param>> {
    let mut out = vec![];
    let mut push =
        |name: String, tv_shape: Vec<usize>, shape: Vec<usize>, layout, fan, conv, bias: bool| -> Result<()> {
            let w = Tensor::<f32>::zeros(dev, &shape)?;
            let v = Tensor::<f32>::zeros(dev, &shape)?;
            let g = Tensor::<f32>::zeros(dev, &shape)?;
            let h = Tensor::<f16>::zeros(dev, &shape)?;
            out.push(Param { name, tv_shape, layout, w, v, g, h, bias, fan, conv });
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
        push(format!("features.{}.weight", f.index), vec![k, c, ks, ks], shape, layout, fan, true, false)?;
        push(format!("features.{}.bias", f.index), vec![k], vec![k], Layout::Same, fan, true, true)?;
    }
    let (h, w, c) = cfg.feature_out();
    for (j, (i, (fi, fo))) in [0, 3, 6].into_iter().zip(cfg.classifier()).enumerate() {
        let layout = if j == 0 { Layout::FcHwc { out: fo, h, w, c } } else { Layout::Same };
        push(format!("classifier.{i}.weight"), vec![fo, fi], vec![fo, fi], layout, (fi, fo), false, false)?;
        push(format!("classifier.{i}.bias"), vec![fo], vec![fo], Layout::Same, (fi, fo), false, true)?;
    }
    init_params(&mut out, init, seed)?;
    Ok(out)
}

/// Draws every weight (device layout, in parameter order, from one RNG seeded by `seed`),
/// zeroes biases and momenta, and refreshes the fp16 copies.
pub(crate) fn init_params(params: &mut [Param], init: Init, seed: u64) -> Result<()> {
    // Init::parse's rule, for an Init built directly: a std of 0 gave all-zero weights, a negative
    // one was taken as its absolute value, and an infinite one failed as a shape error.
    if let Init::Normal { std } = init {
        if !(std > 0.0 && std.is_finite()) {
            return Err(Error::Invalid(format!(
                "init normal:{std}: the standard deviation must be positive and finite"
            )));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for p in params.iter_mut() {
        let n = p.len();
        let data: Vec<f32> = if p.bias {
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
pub(crate) enum State {
    Weights,
    Momentum,
}

pub(crate) fn export(params: &[Param], which: State) -> Result<Vec<NamedTensor>> {
    params
        .iter()
        .map(|p| {
            let t = if which == State::Weights { &p.w } else { &p.v };
            Ok((p.name.clone(), p.tv_shape.clone(), p.layout.to_torchvision(&t.to_host()?)?))
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
        // A NaN or Inf from a corrupt or diverged file would spread through every step (each
        // update then skipped for overflow) instead of failing here.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "tensor `{name}` holds {} at index {i}: values must be finite",
                data[i]
            )));
        }
    }
    for p in params.iter() {
        let n = tensors.iter().filter(|t| t.0 == p.name).count();
        ensure_shape!(n == 1, "tensor `{}` appears {n} times (expected once)", p.name);
    }
    for p in params.iter_mut() {
        let (_, _, data) = tensors.iter().find(|t| t.0 == p.name).expect("checked above");
        let dev = p.layout.from_torchvision(data)?;
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
        let tv = l.to_torchvision(&dev).unwrap();
        // dev[k=1][r=2][s=0][c=3] = ((1*3+2)*3+0)*4+3 = 63 sits at tv[k=1][c=3][r=2][s=0] = ((1*4+3)*3+2)*3+0 = 69.
        assert_eq!(tv[69], 63.0);
        assert_eq!(l.from_torchvision(&tv).unwrap(), dev);
        // First FC: out 2, feature map 2x3x5 (h, w, c).
        let l = Layout::FcHwc { out: 2, h: 2, w: 3, c: 5 };
        let dev: Vec<f32> = (0..60).map(|i| i as f32).collect();
        let tv = l.to_torchvision(&dev).unwrap();
        // dev[o=1][(y=1*3+x=2)*5+c=4] = 30 + 29 = 59 at tv[o=1][c=4*6 + 1*3+2] = 30 + 29 = 59 (coincidence of this
        // corner); check an interior one: dev[o=0][(0*3+1)*5+2] = 7 -> tv[0][2*6+0*3+1] = 13.
        assert_eq!(tv[13], 7.0);
        assert_eq!(l.from_torchvision(&tv).unwrap(), dev);
    }

    /// A slice of another length than the layout's, or a layout with a zero dimension, is an
    /// error (it would index past the slice, or divide by zero), both ways.
    #[test]
    fn layouts_refuse_wrong_lengths_and_zero_dimensions() {
        let cases = [
            (Layout::Krsc { k: 2, c: 4 }, 71),
            (Layout::Krsc { k: 2, c: 4 }, 73),
            (Layout::FcHwc { out: 2, h: 2, w: 3, c: 5 }, 59),
            (Layout::Krsc { k: 2, c: 0 }, 8),
            (Layout::FcHwc { out: 2, h: 0, w: 3, c: 5 }, 4),
            (Layout::FcHwc { out: 2, h: 2, w: 3, c: 0 }, 0),
        ];
        for (l, len) in cases {
            let v = vec![1.0; len];
            for e in [l.to_torchvision(&v).unwrap_err(), l.from_torchvision(&v).unwrap_err()] {
                assert!(
                    matches!(e, Error::Shape(_)) && e.to_string().contains(&format!("does not hold {len} values")),
                    "{e}"
                );
            }
        }
        assert_eq!(Layout::Same.to_torchvision(&[1.0, 2.0]).unwrap(), [1.0, 2.0]);
    }

    // The init tests draw from config A at width 1/4, 32x32 input, FC 512, and read two layers
    // whose fans differ in and out. Their shapes come from Table 1 of the paper, not from
    // the code: features.11 is block 4's first conv, 256 -> 512 channels in the paper, so
    // C = 64, K = 128 here (73,728 weights); classifier.0 reads the 1x1x128 feature map into
    // 512 units (65,536 weights). Textbook fans (Glorot & Bengio; He et al.; PyTorch's
    // `_calculate_fan_in_and_fan_out`): a conv has fan_in = C * kh * kw and fan_out =
    // K * kh * kw, a linear layer fan_in = inputs and fan_out = outputs.
    const CONV: (&str, usize, usize) = ("features.11.weight", 64 * 3 * 3, 128 * 3 * 3);
    const FC: (&str, usize, usize) = ("classifier.0.weight", 128, 512);

    fn drawn(init: Init) -> Vec<Param> {
        allocate(&Device::emu(), &VggConfig::small(crate::model::Arch::A, 0.25, 32, 512, 10), init, 3).unwrap()
    }

    fn weights(params: &[Param], (name, fan_in, fan_out): (&str, usize, usize)) -> Vec<f32> {
        let p = params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no parameter {name}"));
        assert_eq!(p.len(), fan_in * fan_out / if name.starts_with("features") { 9 } else { 1 }, "{name} size");
        p.w.to_host().unwrap()
    }

    /// Sample mean and standard deviation (f64).
    fn moments(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    /// `x` looks like n draws of N(0, std^2). Tolerances are 5 standard errors of each statistic
    /// at this n (a false failure below 1e-6 a statistic, and the seed is fixed anyway):
    /// - mean: standard error std / sqrt(n);
    /// - sample std: relative standard error 1 / sqrt(2n) (the sample variance of a normal has
    ///   relative standard error sqrt(2 / n), and the root halves it); at n = 65,536 that is
    ///   a 1.4 % band, against the 41 % that fan_in vs fan_out or the 3x that forgetting the
    ///   3x3 taps would move it;
    /// - the share of |x| > 2 std: 4.55 % for a normal, standard error sqrt(p (1 - p) / n);
    ///   a uniform of the same std has none (its bound is 1.73 std).
    fn assert_normal(x: &[f32], std: f64, what: &str) {
        let n = x.len() as f64;
        let (mean, s) = moments(x);
        assert!(mean.abs() < 5.0 * std / n.sqrt(), "{what}: mean {mean} (n {n}, std {std})");
        let tol = 5.0 / (2.0 * n).sqrt();
        assert!((s / std - 1.0).abs() < tol, "{what}: sample std {s}, expected {std} within {:.2} %", 100.0 * tol);
        let p = 0.0455;
        let tail = x.iter().filter(|v| (v.abs() as f64) > 2.0 * std).count() as f64 / n;
        assert!(
            (tail - p).abs() < 5.0 * (p * (1.0 - p) / n).sqrt(),
            "{what}: {tail} of |x| beyond 2 std, a normal has {p}"
        );
    }

    /// `x` looks like n draws of U(-a, a):
    /// - every |x| <= a (up to f32 rounding of the draws);
    /// - max |x| >= a (1 - 20 / n): otherwise all n draws missed a band of relative width
    ///   20 / n at the ends, probability (1 - 20 / n)^n ~ e^-20;
    /// - mean within 5 standard errors (a / sqrt 3) / sqrt(n);
    /// - sample std a / sqrt 3 within 5 relative standard errors: the sample variance of a
    ///   uniform has relative standard error sqrt((1/5 - 1/9) / (1/9)^2 / n) = 0.894 / sqrt(n),
    ///   the std half that.
    fn assert_uniform(x: &[f32], a: f64, what: &str) {
        let n = x.len() as f64;
        let max = x.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        assert!(max <= a * (1.0 + 1e-6), "{what}: |x| reaches {max}, bound {a}");
        assert!(max >= a * (1.0 - 20.0 / n), "{what}: |x| only reaches {max}, bound {a}");
        let (mean, s) = moments(x);
        let std = a / 3f64.sqrt();
        assert!(mean.abs() < 5.0 * std / n.sqrt(), "{what}: mean {mean} (n {n}, bound {a})");
        let tol = 5.0 * 0.447 / n.sqrt();
        assert!((s / std - 1.0).abs() < tol, "{what}: sample std {s}, expected {std} within {:.2} %", 100.0 * tol);
    }

    fn assert_biases_zero(params: &[Param], what: &str) {
        let biases: Vec<&Param> = params.iter().filter(|p| p.name.ends_with(".bias")).collect();
        assert_eq!(biases.len(), 11, "{what}: config A has 8 conv + 3 FC biases");
        for p in biases {
            let b = p.w.to_host().unwrap();
            assert!(b.iter().all(|&v| v == 0.0), "{what}: {} is not all zero: {:?}", p.name, &b[..4.min(b.len())]);
        }
    }

    #[test]
    fn paper_init_is_normal_with_std_1e_2() {
        assert_eq!(Init::parse("paper").unwrap(), Init::PAPER);
        let p = drawn(Init::PAPER);
        // VGG.md: "normal, mean 0, variance 1e-2", read as std 0.01 (see `Init::PAPER`) on
        // every weight, conv or FC.
        assert_normal(&weights(&p, CONV), 0.01, "paper, conv");
        assert_normal(&weights(&p, FC), 0.01, "paper, fc");
        assert_biases_zero(&p, "paper");
    }

    #[test]
    fn normal_init_takes_the_given_std() {
        let init = Init::parse("normal:0.03").unwrap();
        assert_eq!(init, Init::Normal { std: 0.03 });
        let p = drawn(init);
        assert_normal(&weights(&p, CONV), 0.03, "normal:0.03, conv");
        assert_normal(&weights(&p, FC), 0.03, "normal:0.03, fc");
        assert_biases_zero(&p, "normal:0.03");
        // A bad value of a known form says what the form needs, not that the init is unknown.
        for bad in ["normal:0", "normal:-1", "normal:x", "normal:inf"] {
            let e = Init::parse(bad).unwrap_err().to_string();
            assert!(e.contains("positive, finite standard deviation"), "{bad}: {e}");
        }
        assert!(Init::parse("uniform").unwrap_err().to_string().contains("unknown init"));
    }

    #[test]
    fn glorot_init_is_uniform_over_textbook_fans() {
        assert_eq!(Init::parse("xavier").unwrap(), Init::Glorot);
        let p = drawn(Init::Glorot);
        // U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010, eq. 16).
        for (l, what) in [(CONV, "glorot, conv"), (FC, "glorot, fc")] {
            assert_uniform(&weights(&p, l), (6.0 / (l.1 + l.2) as f64).sqrt(), what);
        }
        assert_biases_zero(&p, "glorot");
    }

    #[test]
    fn he_init_is_normal_over_fan_in() {
        assert_eq!(Init::parse("kaiming").unwrap(), Init::He);
        let p = drawn(Init::He);
        // N(0, 2 / fan_in) (He et al. 2015, eq. 10), for convs and FC layers alike.
        for (l, what) in [(CONV, "he, conv"), (FC, "he, fc")] {
            assert_normal(&weights(&p, l), (2.0 / l.1 as f64).sqrt(), what);
        }
        assert_biases_zero(&p, "he");
    }

    #[test]
    fn torchvision_init_is_conv_fan_out_and_fc_std_0_01() {
        let p = drawn(Init::parse("torchvision").unwrap());
        // torchvision VGG._initialize_weights: kaiming_normal_(mode="fan_out",
        // nonlinearity="relu") on convs, i.e. N(0, 2 / fan_out); normal_(0, 0.01) on Linear.
        assert_normal(&weights(&p, CONV), (2.0 / CONV.2 as f64).sqrt(), "torchvision, conv");
        assert_normal(&weights(&p, FC), 0.01, "torchvision, fc");
        assert_biases_zero(&p, "torchvision");
    }

    /// Re-initialising (Vgg::reinit) a model whose biases and momenta hold values zeroes them
    /// and leaves the fp16 copies equal to the new masters.
    #[test]
    fn reinit_zeroes_biases_and_momenta() {
        let mut p = drawn(Init::He);
        for q in p.iter_mut() {
            q.w.copy_from_host(&vec![0.25; q.len()]).unwrap();
            q.v.copy_from_host(&vec![-0.5; q.len()]).unwrap();
        }
        init_params(&mut p, Init::Glorot, 4).unwrap();
        assert_biases_zero(&p, "reinit");
        for q in &p {
            assert!(q.v.to_host().unwrap().iter().all(|&v| v == 0.0), "{}: momentum not zeroed", q.name);
            let (w, h) = (q.w.to_host().unwrap(), q.h.to_host().unwrap());
            assert!(w.iter().zip(&h).all(|(w, h)| f16::from_f32(*w) == *h), "{}: fp16 copy is stale", q.name);
        }
        assert_uniform(&weights(&p, CONV), (6.0 / (CONV.1 + CONV.2) as f64).sqrt(), "reinit glorot, conv");
    }
}
