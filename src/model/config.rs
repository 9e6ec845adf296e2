//! VGG configurations (Table 1 of the paper, Simonyan & Zisserman 2015) and the knobs the project
//! adds: number of classes, input size, a width multiplier for the conv channels, the width of
//! the two hidden FC layers, and dropout.
//!
//! A configuration expands to a flat layer list ([`VggConfig::features`]) numbered as
//! torchvision's `features` `nn.Sequential` would number it (conv, ReLU, \[LRN,\] ..., pool), so
//! parameter names (`features.N.weight`) match torchvision's for A, B, D and E. Configs C and
//! A-LRN do not exist in torchvision; they are numbered by the same rule.

use crate::reference::InputNorm;
use crate::{ensure_shape, Error, Result};
use serde::{Deserialize, Serialize};

/// The six architectures of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 11 weight layers (torchvision's `vgg11`).
    A,
    /// A with LRN after the first conv (not in torchvision).
    ALrn,
    /// 13 weight layers (`vgg13`).
    B,
    /// 16 weight layers, three of them 1x1 convs (not in torchvision).
    C,
    /// 16 weight layers, all convs 3x3 (`vgg16`).
    D,
    /// 19 weight layers (`vgg19`).
    E,
}

/// One item of a block in Table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    C3(usize),
    C1(usize),
    Lrn,
}
use Item::{C1, C3};

impl Arch {
    /// Every architecture, in the paper's order.
    pub const ALL: [Arch; 6] = [Arch::A, Arch::ALrn, Arch::B, Arch::C, Arch::D, Arch::E];

    /// `A`, `A-LRN`, `B`, `C`, `D`, `E` (any case), or torchvision's `vgg11` / `vgg13` /
    /// `vgg16` / `vgg19` (= A, B, D, E).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "A" | "VGG11" | "VGG-11" => Arch::A,
            "A-LRN" | "ALRN" | "A_LRN" => Arch::ALrn,
            "B" | "VGG13" | "VGG-13" => Arch::B,
            "C" => Arch::C,
            "D" | "VGG16" | "VGG-16" => Arch::D,
            "E" | "VGG19" | "VGG-19" => Arch::E,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown VGG config `{s}` (A, A-LRN, B, C, D, E or vgg11, vgg13, vgg16, vgg19)"
                )))
            }
        })
    }

    /// The paper's name: `A`, `A-LRN`, ..., `E`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::A => "A",
            Arch::ALrn => "A-LRN",
            Arch::B => "B",
            Arch::C => "C",
            Arch::D => "D",
            Arch::E => "E",
        }
    }

    /// Weight layers (Table 1's depth).
    pub fn depth(self) -> usize {
        match self {
            Arch::A | Arch::ALrn => 11,
            Arch::B => 13,
            Arch::C | Arch::D => 16,
            Arch::E => 19,
        }
    }

    /// The five blocks of Table 1, each ending with a max-pool.
    fn blocks(self) -> [&'static [Item]; 5] {
        const B4_A: &[Item] = &[C3(512), C3(512)];
        match self {
            Arch::A => [&[C3(64)], &[C3(128)], &[C3(256), C3(256)], B4_A, B4_A],
            Arch::ALrn => [&[C3(64), Item::Lrn], &[C3(128)], &[C3(256), C3(256)], B4_A, B4_A],
            Arch::B => [&[C3(64), C3(64)], &[C3(128), C3(128)], &[C3(256), C3(256)], B4_A, B4_A],
            Arch::C => [
                &[C3(64), C3(64)],
                &[C3(128), C3(128)],
                &[C3(256), C3(256), C1(256)],
                &[C3(512), C3(512), C1(512)],
                &[C3(512), C3(512), C1(512)],
            ],
            Arch::D => [
                &[C3(64), C3(64)],
                &[C3(128), C3(128)],
                &[C3(256), C3(256), C3(256)],
                &[C3(512), C3(512), C3(512)],
                &[C3(512), C3(512), C3(512)],
            ],
            Arch::E => [
                &[C3(64), C3(64)],
                &[C3(128), C3(128)],
                &[C3(256), C3(256), C3(256), C3(256)],
                &[C3(512), C3(512), C3(512), C3(512)],
                &[C3(512), C3(512), C3(512), C3(512)],
            ],
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a feature layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureKind {
    /// 3x3 conv, stride 1, pad 1, + bias + ReLU (fused).
    Conv3x3,
    /// 1x1 conv (config C) + bias + ReLU.
    Conv1x1,
    /// AlexNet's LRN (A-LRN), after the first conv's ReLU.
    Lrn,
    /// 2x2 max-pool, stride 2.
    Pool,
}

/// One layer of the convolutional part: its kind, its index in torchvision's `features`
/// sequence, and its input `h x w x c_in` (per image) and output channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What the layer computes.
    pub kind: FeatureKind,
    /// Its index `N` in torchvision's `features` (a conv's parameters are `features.N.weight`
    /// and `features.N.bias`).
    pub index: usize,
    /// Input height, in pixels.
    pub h: usize,
    /// Input width, in pixels.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels (`c_in` for LRN and pools).
    pub c_out: usize,
}

impl Feature {
    /// Output spatial size.
    pub fn out_hw(&self) -> (usize, usize) {
        match self.kind {
            FeatureKind::Pool => (self.h / 2, self.w / 2),
            _ => (self.h, self.w),
        }
    }
    /// Whether the layer is a convolution (3x3 or 1x1), the only kind with parameters.
    pub fn is_conv(&self) -> bool {
        matches!(self.kind, FeatureKind::Conv3x3 | FeatureKind::Conv1x1)
    }

    /// The layer's op name as `vgg info --model` shows it, its parameters (weights and
    /// biases) and its multiply-accumulates per image.
    pub fn op_cost(&self) -> (&'static str, usize, usize) {
        let (h, w, c, k) = (self.h, self.w, self.c_in, self.c_out);
        match self.kind {
            FeatureKind::Conv3x3 => ("conv3x3", k * (9 * c + 1), h * w * k * 9 * c),
            FeatureKind::Conv1x1 => ("conv1x1", k * (c + 1), h * w * k * c),
            FeatureKind::Lrn => ("lrn", 0, 0),
            FeatureKind::Pool => ("maxpool2x2", 0, 0),
        }
    }
}

/// A VGG network: architecture plus the project's knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    /// Which of Table 1's networks.
    pub arch: Arch,
    /// Output classes (1000 for ImageNet).
    pub classes: usize,
    /// Side of the square input image (224 in the paper; 32 gives a 1x1 map after 5 pools).
    pub input: usize,
    /// Conv channel multiplier: every conv gets `max(1, round(c * width))` channels.
    pub width: f32,
    /// Width of the two hidden FC layers (4096 in the paper).
    pub fc: usize,
    /// Drop probability of the dropout after each hidden FC layer's ReLU (0.5 in the paper;
    /// 0 turns dropout off).
    pub dropout: f32,
    /// Per-channel input mean on the 0..255 scale, subtracted by `normalize_input`.
    pub mean: [f32; 3],
    /// Per-channel input std on the 0..255 scale; `None` subtracts the mean only (the paper's
    /// preprocessing).
    pub std: Option<[f32; 3]>,
}

impl VggConfig {
    /// Upper bounds of [`VggConfig::validate`]: 8192-pixel inputs, 16x the paper's channels
    /// (8192 a conv), FC layers of 65536 units, 2^20 classes: each many times what fits a GPU
    /// today, and together still far from overflowing the sizes computed from them (the first
    /// FC layer's 2^16 x 256^2 x 8192 = 2^45 weights).
    pub const MAX_INPUT: usize = 8192;
    /// Largest [`VggConfig::width`] multiplier.
    pub const MAX_WIDTH: f32 = 16.0;
    /// Largest [`VggConfig::fc`] width.
    pub const MAX_FC: usize = 1 << 16;
    /// Most [`VggConfig::classes`].
    pub const MAX_CLASSES: usize = 1 << 20;

    /// The paper's network for `arch`: 224x224 input, 1000 classes, FC-4096, dropout 0.5,
    /// torchvision's input normalisation (mean and std, so that torchvision weights work).
    pub fn paper(arch: Arch) -> Self {
        let n = InputNorm::IMAGENET;
        Self { arch, classes: 1000, input: 224, width: 1.0, fc: 4096, dropout: 0.5, mean: n.mean, std: n.std }
    }

    /// A small variant: `width` times the channels, `input` pixels a side, `fc` hidden units.
    pub fn small(arch: Arch, width: f32, input: usize, fc: usize, classes: usize) -> Self {
        Self { width, input, fc, classes, ..Self::paper(arch) }
    }

    /// The input normalisation of `mean` and `std`, as [`crate::ops::normalize_input`] takes it.
    pub fn norm(&self) -> InputNorm {
        InputNorm { mean: self.mean, std: self.std }
    }

    /// Errors unless every knob makes a network: an input of 32 (five pools) to
    /// [`VggConfig::MAX_INPUT`] pixels, a width multiplier in `(0, MAX_WIDTH]`, 1 to
    /// [`VggConfig::MAX_FC`] FC units and 1 to [`VggConfig::MAX_CLASSES`] classes (the upper
    /// bounds keep every size computed from the config, parameter counts and activation bytes at
    /// any batch a GPU could hold, far from overflowing a usize): [`Error::Shape`]. Dropout in
    /// `[0, 1)`, a mean of 0 to 255 and a std (if any) above 0 and at most 255: values, so
    /// [`Error::Invalid`].
    pub fn validate(&self) -> Result<()> {
        ensure_shape!(
            self.input >= 32,
            "VGG input {} is too small: five 2x2 pools need at least 32 pixels",
            self.input
        );
        ensure_shape!(
            self.input <= Self::MAX_INPUT,
            "VGG `input` {} is too large: at most {} pixels a side",
            self.input,
            Self::MAX_INPUT
        );
        ensure_shape!(self.width > 0.0 && self.width.is_finite(), "VGG width multiplier {} must be > 0", self.width);
        ensure_shape!(
            (0.0..=Self::MAX_WIDTH).contains(&self.width),
            "VGG `width` multiplier {} is too large: at most {}",
            self.width,
            Self::MAX_WIDTH
        );
        ensure_shape!(self.classes >= 1, "VGG needs at least one class");
        ensure_shape!(
            self.classes <= Self::MAX_CLASSES,
            "VGG `classes` {} is too many: at most {}",
            self.classes,
            Self::MAX_CLASSES
        );
        ensure_shape!(self.fc >= 1, "VGG FC width must be at least 1");
        ensure_shape!(self.fc <= Self::MAX_FC, "VGG `fc` width {} is too large: at most {}", self.fc, Self::MAX_FC);
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!("VGG dropout {} is not in [0, 1)", self.dropout)));
        }
        // vgg train --mean's 0..255 rule (std above 0 too): a NaN mean trained every step on NaN
        // inputs (each update skipped for overflow) and a std of 0 failed only at the first step.
        let rgb = |v: f32| crate::data::stats::is_rgb_value(v as f64);
        if !self.mean.iter().all(|&m| rgb(m)) {
            return Err(Error::Invalid(format!("VGG input mean {:?}: expected three values from 0 to 255", self.mean)));
        }
        if let Some(std) = self.std.filter(|s| !s.iter().all(|&v| rgb(v) && v > 0.0)) {
            return Err(Error::Invalid(format!("VGG input std {std:?}: expected three values above 0, at most 255")));
        }
        Ok(())
    }

    /// Conv channels after the width multiplier.
    pub fn channels(&self, c: usize) -> usize {
        ((c as f64 * self.width as f64).round() as usize).max(1)
    }

    /// The paper's short name of each of [`VggConfig::features`]: `conv{block}_{j}` (3x3 or
    /// 1x1), `lrn{block}`, `pool{block}`, blocks counted from 1 and ended by their pool (as
    /// `vgg bench conv` names VGG-16's layers).
    pub fn feature_names(&self) -> Vec<String> {
        let (mut block, mut j) = (1, 0);
        self.features()
            .iter()
            .map(|f| match f.kind {
                FeatureKind::Conv3x3 | FeatureKind::Conv1x1 => {
                    j += 1;
                    format!("conv{block}_{j}")
                }
                FeatureKind::Lrn => format!("lrn{block}"),
                FeatureKind::Pool => {
                    let name = format!("pool{block}");
                    (block, j) = (block + 1, 0);
                    name
                }
            })
            .collect()
    }

    /// The convolutional part as a flat list, torchvision-numbered (each conv and each ReLU
    /// takes one index; the ReLU is fused into the conv here).
    pub fn features(&self) -> Vec<Feature> {
        let (mut h, mut c, mut index) = (self.input, 3, 0);
        let mut out = vec![];
        for block in self.arch.blocks() {
            for item in block {
                match *item {
                    C3(k) | C1(k) => {
                        let k = self.channels(k);
                        let kind = if matches!(item, C3(_)) { FeatureKind::Conv3x3 } else { FeatureKind::Conv1x1 };
                        out.push(Feature { kind, index, h, w: h, c_in: c, c_out: k });
                        c = k;
                        index += 2;
                    }
                    Item::Lrn => {
                        out.push(Feature { kind: FeatureKind::Lrn, index, h, w: h, c_in: c, c_out: c });
                        index += 1;
                    }
                }
            }
            out.push(Feature { kind: FeatureKind::Pool, index, h, w: h, c_in: c, c_out: c });
            index += 1;
            h /= 2;
        }
        out
    }

    /// `(h, w, c)` of the last feature map, which the first FC layer flattens.
    pub fn feature_out(&self) -> (usize, usize, usize) {
        let f = self.features();
        let last = f.last().expect("features are never empty");
        let (h, w) = last.out_hw();
        (h, w, last.c_out)
    }

    /// The three FC layers as `(in, out)`: `classifier.0`, `classifier.3`, `classifier.6`.
    pub fn classifier(&self) -> [(usize, usize); 3] {
        let (h, w, c) = self.feature_out();
        [(h * w * c, self.fc), (self.fc, self.fc), (self.fc, self.classes)]
    }

    /// Every parameter tensor: `(torchvision name, torchvision shape)`, in torchvision's
    /// state-dict order (conv weights OIHW, FC weights `[out][in]`).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![];
        for f in self.features() {
            let ks = match f.kind {
                FeatureKind::Conv3x3 => 3,
                FeatureKind::Conv1x1 => 1,
                _ => continue,
            };
            v.push((format!("features.{}.weight", f.index), vec![f.c_out, f.c_in, ks, ks]));
            v.push((format!("features.{}.bias", f.index), vec![f.c_out]));
        }
        for (i, (fi, fo)) in [0, 3, 6].into_iter().zip(self.classifier()) {
            v.push((format!("classifier.{i}.weight"), vec![fo, fi]));
            v.push((format!("classifier.{i}.bias"), vec![fo]));
        }
        v
    }

    /// Number of parameters (VGG-16 at 224 / 1000 classes: 138,357,544).
    pub fn param_count(&self) -> usize {
        self.param_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Multiply-accumulates of one forward pass of one image (convs and FC layers; pools,
    /// ReLU and LRN not counted). VGG-16 at 224: about 15.5 G.
    pub fn forward_macs(&self) -> u64 {
        let conv: u64 = self
            .features()
            .iter()
            .map(|f| {
                let taps = match f.kind {
                    FeatureKind::Conv3x3 => 9,
                    FeatureKind::Conv1x1 => 1,
                    _ => 0,
                };
                (f.h * f.w * f.c_out * taps * f.c_in) as u64
            })
            .sum();
        conv + self.classifier().iter().map(|(i, o)| (i * o) as u64).sum::<u64>()
    }

    /// A one-line summary: `D (VGG-16), 224x224, 1000 classes, width 1, FC 4096, dropout 0.5`.
    pub fn describe(&self) -> String {
        let tv = match self.arch {
            Arch::A => " (VGG-11)",
            Arch::B => " (VGG-13)",
            Arch::D => " (VGG-16)",
            Arch::E => " (VGG-19)",
            _ => "",
        };
        format!(
            "{}{tv}, {}x{} input, {} classes, width x{}, FC {}, dropout {}",
            self.arch, self.input, self.input, self.classes, self.width, self.fc, self.dropout
        )
    }
}

/// Groups digits in threes: `138,357,544`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl VggConfig {
    /// The layer table `vgg info --model` prints: per layer its torchvision name, output
    /// shape (per image, HWC), parameters and multiply-accumulates; then the totals.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "VGG {}", self.describe());
        let _ = writeln!(s, "{:<16} {:<10} {:>16} {:>14} {:>16}", "layer", "op", "output (HxWxC)", "params", "MACs");
        for f in self.features() {
            let (oh, ow) = f.out_hw();
            let (op, params, macs) = f.op_cost();
            let relu = if f.is_conv() { "+relu" } else { "" };
            let _ = writeln!(
                s,
                "{:<16} {:<10} {:>16} {:>14} {:>16}",
                format!("features.{}", f.index),
                format!("{op}{relu}"),
                format!("{oh}x{ow}x{}", f.c_out),
                thousands(params as u64),
                thousands(macs as u64)
            );
        }
        for (i, (fi, fo)) in [0, 3, 6].into_iter().zip(self.classifier()) {
            let op = if i < 6 {
                if self.dropout > 0.0 {
                    "fc+relu+drop"
                } else {
                    "fc+relu"
                }
            } else {
                "fc"
            };
            let _ = writeln!(
                s,
                "{:<16} {:<10} {:>16} {:>14} {:>16}",
                format!("classifier.{i}"),
                op,
                fo,
                thousands((fo * (fi + 1)) as u64),
                thousands((fi * fo) as u64)
            );
        }
        let macs = self.forward_macs();
        let _ = writeln!(
            s,
            "parameters: {} ({:.1} M)",
            thousands(self.param_count() as u64),
            self.param_count() as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "forward: {} MACs = {:.2} GFLOP per image; training step ~3x: {:.2} GFLOP per image",
            thousands(macs),
            2.0 * macs as f64 / 1e9,
            6.0 * macs as f64 / 1e9
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_counts() {
        for (a, n) in [(Arch::A, 132_863_336), (Arch::B, 133_047_848), (Arch::D, 138_357_544), (Arch::E, 143_667_240)] {
            assert_eq!(VggConfig::paper(a).param_count(), n, "{a}");
        }
        let d = VggConfig::paper(Arch::D);
        let g = d.forward_macs() as f64 / 1e9;
        assert!((15.3..15.6).contains(&g), "VGG-16 forward {g} GMACs");
    }

    #[test]
    fn numbering_matches_torchvision() {
        let f = VggConfig::paper(Arch::D).features();
        let idx: Vec<usize> = f.iter().filter(|f| f.is_conv()).map(|f| f.index).collect();
        assert_eq!(idx, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
        assert_eq!(f.last().unwrap().index, 30);
        assert_eq!(VggConfig::paper(Arch::A).feature_out(), (7, 7, 512));
        assert_eq!(VggConfig::small(Arch::A, 0.125, 32, 64, 10).classifier(), [(64, 64), (64, 64), (64, 10)]);
    }

    #[test]
    fn short_names_follow_the_blocks() {
        let d = VggConfig::paper(Arch::D).feature_names();
        assert_eq!(d.len(), 18);
        assert_eq!(d[..5], ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2"]);
        assert_eq!(d[12], "conv4_3");
        assert_eq!(d[17], "pool5");
        let lrn = VggConfig::paper(Arch::parse("A-LRN").unwrap()).feature_names();
        assert_eq!(lrn[..4], ["conv1_1", "lrn1", "pool1", "conv2_1"]);
    }

    /// Sizes past the bounds, whose products (parameters, activation bytes) would overflow
    /// later, are refused by validate, naming the field; the bounds themselves pass.
    #[test]
    fn validate_bounds_every_size() {
        let ok = VggConfig::small(Arch::A, 0.125, 32, 32, 5);
        let bad = [
            (VggConfig { input: 1 << 32, ..ok.clone() }, "`input` 4294967296"),
            (VggConfig { width: 1e30, ..ok.clone() }, "`width` multiplier"),
            (VggConfig { fc: usize::MAX, ..ok.clone() }, "`fc` width"),
            (VggConfig { classes: 1 << 40, ..ok.clone() }, "`classes` 1099511627776"),
        ];
        for (cfg, needle) in bad {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("at most"), "{e}");
        }
        let top = VggConfig {
            input: VggConfig::MAX_INPUT,
            width: VggConfig::MAX_WIDTH,
            fc: VggConfig::MAX_FC,
            classes: VggConfig::MAX_CLASSES,
            ..ok
        };
        top.validate().unwrap();
        assert!(top.param_count() < 1 << 50, "the largest valid config's sizes stay far from overflow");
    }
}
