//! The test scales Q: `--scale`'s text parsed ([`parse_scales`]) and each run's Q chosen and
//! bounded ([`test_scales`]), where every Q of `vgg eval` and `vgg predict` passes.

use super::{recorded_test_scale, Model};
use anyhow::{bail, Result};

/// The test scales of a run: those given (`given`: --scale's text and its parsed scales),
/// else the Q the ensemble's checkpoints record ([`recorded_test_scale`]), else `fallback`;
/// each at least the models' input side and at most [`crate::data::MAX_SIDE`], as training's
/// S and Q: dense evaluation rescales the whole image to Q, and a typo such as 100000 asked
/// for 30 GB and aborted the process. Checked here, where every Q of eval and predict passes
/// whatever its source (a checkpoint's Q is not checked on load), and errors name that
/// source as the user knows it (the preset `fixed:4096`, not its 4128).
pub fn test_scales(given: Option<(&str, Vec<u32>)>, models: &[Model], fallback: u32) -> Result<Vec<u32>> {
    // A Q the user did not type says how to replace it.
    let hint = if given.is_some() { "" } else { "; give --scale" };
    let (scales, source) = match given {
        // A lone Q is its own name; a list or a preset is named, then the Q of it.
        Some((text, v)) if v.len() == 1 && text.trim() == v[0].to_string() => (v, "--scale".to_string()),
        Some((text, v)) => (v, format!("--scale {}: Q", text.trim())),
        None => match recorded_test_scale(models)? {
            Some(q) => {
                let m = models.iter().find(|m| m.state.as_ref().and_then(|s| s.test_scale).is_some());
                let path = m.map_or_else(String::new, |m| m.path.display().to_string());
                (vec![q], format!("{path}: the recorded test scale Q"))
            }
            None => (vec![fallback], "the default test scale Q".to_string()),
        },
    };
    let input = models.first().map_or(0, |m| m.vgg.config().input as u32);
    if let Some(q) = scales.iter().find(|&&q| q < input) {
        bail!(
            "{source} {q} is below the model's {input}x{input} crop (the image is rescaled to Q, then cropped: \
             give Q >= {input}){hint}"
        );
    }
    for &q in &scales {
        crate::data::check_side(&source, q).map_err(|e| anyhow::anyhow!("{e}{hint}"))?;
    }
    Ok(scales)
}

/// `Q1,Q2,...`, each a positive size, or one of the paper's multi-scale presets (VGG.md,
/// "multi-scale evaluation"): `fixed:S` for a model trained at a fixed S tests at
/// S - 32, S, S + 32; `jittered:MIN:MAX` for one trained with S in [MIN, MAX] at MIN,
/// (MIN + MAX) / 2, MAX; `jittered` alone is `jittered:256:512` (256, 384, 512). Each Q is at
/// most [`crate::data::MAX_SIDE`], checked here so that a typo fails before any work (and
/// before `S + 32` or `MIN + MAX` could overflow); the lower bound is [`test_scales`]', which
/// knows the model's input and also checks a Q recorded in a checkpoint.
pub fn parse_scales(s: &str) -> Result<Vec<u32>> {
    let max = crate::data::MAX_SIDE;
    // Every number as given first (this also keeps the presets' sums below u32::MAX) ...
    for t in s.split([':', ',']) {
        if let Some(v) = t.trim().parse::<u64>().ok().filter(|&v| v > max as u64) {
            let given = if t.trim() == s.trim() { format!("--scale {v}") } else { format!("--scale {s}: {v}") };
            bail!("{given} is above {max}, the largest image side the data pipeline accepts");
        }
    }
    // ... then the Qs a preset makes of them (fixed:S tests at S + 32).
    let v = parse_scales_unbounded(s)?;
    for &q in &v {
        crate::data::check_side(&format!("--scale {s}: Q"), q)?;
    }
    Ok(v)
}

fn parse_scales_unbounded(s: &str) -> Result<Vec<u32>> {
    let size = |t: &str| t.trim().parse::<u32>().ok().filter(|&q| q > 0);
    let parts: Vec<&str> = s.trim().split(':').collect();
    match parts.as_slice() {
        ["fixed", v] => {
            let s0 = size(v).filter(|&q| q > 32);
            let s0 = s0.ok_or_else(|| anyhow::anyhow!("--scale {s}: fixed:S needs a training scale S > 32"))?;
            return Ok(vec![s0 - 32, s0, s0 + 32]);
        }
        ["jittered"] => return Ok(vec![256, 384, 512]),
        ["jittered", lo, hi] => {
            return match (size(lo), size(hi)) {
                (Some(a), Some(b)) if a < b => Ok(vec![a, (a + b) / 2, b]),
                _ => Err(anyhow::anyhow!("--scale {s}: jittered:MIN:MAX needs sizes 0 < MIN < MAX")),
            };
        }
        [_] => {}
        _ => return Err(anyhow::anyhow!("--scale {s}: give Q, Q1,Q2,..., fixed:S or jittered[:MIN:MAX]")),
    }
    let v: Vec<u32> = s
        .split(',')
        .map(|t| match t.trim().parse::<u32>() {
            Ok(q) if q > 0 => Ok(q),
            _ => Err(anyhow::anyhow!("--scale: `{t}` is not a positive size (give Q or Q1,Q2,...)")),
        })
        .collect::<Result<_>>()?;
    Ok(v)
}
