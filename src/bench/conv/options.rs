//! `vgg bench conv`'s choices: the passes, the algorithms and the layers, parsed from the
//! command line's words.

use super::super::cudnn::CudnnPass;
use crate::ops::conv::{ConvAlgo, ConvPass};
use crate::problem::{vgg16_layers, vgg16_layers_reduced, NamedProblem};

/// A command-line value the bench cannot use; the message lists the valid ones.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArgument(pub String);

/// One of the three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    /// y = conv(x, w).
    Fprop,
    /// dx from dy and w.
    Dgrad,
    /// dw from x and dy.
    Wgrad,
}

impl Pass {
    /// The three passes, in the order they are benched.
    pub const ALL: [Pass; 3] = [Pass::Fprop, Pass::Dgrad, Pass::Wgrad];

    /// `fprop`, `dgrad` or `wgrad`: the `--passes` word and the table's pass column.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fprop => "fprop",
            Pass::Dgrad => "dgrad",
            Pass::Wgrad => "wgrad",
        }
    }

    /// `fprop,dgrad,wgrad` (any subset, any order) or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Pass>, BadArgument> {
        super::super::parse_passes(s, &Self::ALL, Pass::name)
    }

    pub(super) fn ops(self) -> ConvPass {
        match self {
            Pass::Fprop => ConvPass::Fprop,
            Pass::Dgrad => ConvPass::Dgrad,
            Pass::Wgrad => ConvPass::Wgrad,
        }
    }

    pub(super) fn cudnn(self) -> CudnnPass {
        match self {
            Pass::Fprop => CudnnPass::Forward,
            Pass::Dgrad => CudnnPass::BackwardData,
            Pass::Wgrad => CudnnPass::BackwardFilter,
        }
    }
}

/// The algorithm asked of [`Conv3x3`](crate::ops::conv::Conv3x3) (`auto` lets it choose per pass; `tune` times the
/// variants on the device first, as training does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// `auto`: [`ConvAlgo::Auto`], the choice made per pass.
    Auto,
    /// `direct`: [`ConvAlgo::Direct`].
    Direct,
    /// `winograd2x2`: [`ConvAlgo::Winograd2x2`].
    Winograd2x2,
    /// `winograd4x4`: [`ConvAlgo::Winograd4x4`].
    Winograd4x4,
    /// `igemm`: [`ConvAlgo::ImplicitGemm`].
    ImplicitGemm,
    /// `wgmma`: [`ConvAlgo::Wgmma`] (Hopper).
    Wgmma,
    /// The plan [`conv_tune::tune`](crate::ops::conv_tune::tune) picks from the model's base plan, per layer.
    Tune,
}

impl Algo {
    const ALL: [Algo; 7] =
        [Algo::Auto, Algo::Direct, Algo::Winograd2x2, Algo::Winograd4x4, Algo::ImplicitGemm, Algo::Wgmma, Algo::Tune];

    /// The `--algo` word: `auto`, `direct`, `winograd2x2`, `winograd4x4`, `igemm`, `wgmma` or
    /// `tune`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Direct => "direct",
            Algo::Winograd2x2 => "winograd2x2",
            Algo::Winograd4x4 => "winograd4x4",
            Algo::ImplicitGemm => "igemm",
            Algo::Wgmma => "wgmma",
            Algo::Tune => "tune",
        }
    }

    /// The algorithm [`Algo::name`] gives `s` (surrounding spaces ignored, case kept); an
    /// unknown word is a [`BadArgument`] listing the valid ones.
    pub fn parse(s: &str) -> Result<Algo, BadArgument> {
        Self::ALL.into_iter().find(|a| a.name() == s.trim()).ok_or_else(|| {
            BadArgument(format!(
                "unknown algorithm `{s}` (algorithms: auto, direct, winograd2x2, winograd4x4, igemm, wgmma, tune)"
            ))
        })
    }

    /// The algorithm [`Conv3x3::new`] takes (None: `tune`, which no single algorithm names).
    pub(super) fn ops(self) -> Option<ConvAlgo> {
        Some(match self {
            Algo::Auto => ConvAlgo::Auto,
            Algo::Direct => ConvAlgo::Direct,
            Algo::Winograd2x2 => ConvAlgo::Winograd2x2,
            Algo::Winograd4x4 => ConvAlgo::Winograd4x4,
            Algo::ImplicitGemm => ConvAlgo::ImplicitGemm,
            Algo::Wgmma => ConvAlgo::Wgmma,
            Algo::Tune => return None,
        })
    }

    pub(super) fn of(a: &ConvAlgo) -> Algo {
        match a {
            ConvAlgo::Auto => Algo::Auto,
            ConvAlgo::Direct => Algo::Direct,
            ConvAlgo::Winograd2x2 => Algo::Winograd2x2,
            ConvAlgo::Winograd4x4 => Algo::Winograd4x4,
            ConvAlgo::ImplicitGemm => Algo::ImplicitGemm,
            ConvAlgo::Wgmma => Algo::Wgmma,
        }
    }

    /// (max_rel, rel_l2) an fp16 result of this algorithm must meet against a trusted one:
    /// loose enough for fp16 rounding and Winograd's transforms, tight enough that any
    /// indexing or synchronisation bug (errors of order 1) fails.
    pub(super) fn bounds(self) -> (f64, f64) {
        match self {
            Algo::Auto | Algo::Direct | Algo::ImplicitGemm | Algo::Wgmma => (1e-2, 3e-3),
            Algo::Winograd2x2 => (2e-2, 5e-3),
            // A row's bounds are its resolved algorithm's; `tune` resolves to one of the others.
            Algo::Winograd4x4 | Algo::Tune => (5e-2, 2e-2),
        }
    }
}

/// The VGG-16 layers the bench runs: full size at `batch` (default 64) on a GPU (`emu` false),
/// shrunk 16x in space with at most 32 channels at `batch` (default 1) on the emulator.
/// `names` is `all` or a comma-separated list such as `conv1_2,conv3_1`.
pub fn select_layers(emu: bool, batch: Option<usize>, names: &str) -> Result<Vec<NamedProblem>, BadArgument> {
    let all = if emu {
        vgg16_layers_reduced(batch.unwrap_or(1).max(1), 16, 32)
    } else {
        vgg16_layers(batch.unwrap_or(64).max(1))
    };
    if names.trim() == "all" {
        return Ok(all);
    }
    let known: Vec<&str> = all.iter().map(|l| l.name).collect();
    let valid = format!("layers: {}, or all", known.join(", "));
    let mut v: Vec<NamedProblem> = vec![];
    for name in crate::bench::list_items(names, "layer", &valid)? {
        let l = all
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| BadArgument(format!("unknown layer `{name}` ({valid})")))?;
        if !v.iter().any(|x| x.name == name) {
            v.push(*l);
        }
    }
    Ok(v)
}
