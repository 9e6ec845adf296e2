//! PNG plots of a training run, redrawn at the end of every epoch: `loss.png` (training loss
//! per step, raw and a running mean, and validation loss per evaluation) and `accuracy.png`
//! (validation top-1 and top-5 per evaluation). Bitmap backend and the built-in pixel font
//! of src/bench/plot.rs: no system font, so they render on a bare GPU machine too. Each file
//! is drawn to a temporary name in the same folder and renamed over the old one.

use crate::bench::plot::{nice_step, text, text_width};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const RAW: RGBColor = RGBColor(174, 199, 232);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const TOP5: RGBColor = RGBColor(44, 160, 44);
const GRID: RGBColor = RGBColor(220, 220, 220);
const INK: RGBColor = RGBColor(30, 30, 30);

/// One validation pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// Steps done when it ran (the metrics file's `step`).
    pub step: u64,
    /// Mean validation loss (softmax cross-entropy).
    pub loss: f64,
    /// Top-1 accuracy, 0 to 1.
    pub top1: f64,
    /// Top-5 accuracy, 0 to 1.
    pub top5: f64,
}

/// What the plots show: training loss by step, evaluations by step (a step logged twice, as
/// after a resume that replays it, keeps its last value).
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Training loss by step (steps done after it, as the metrics file's `step`).
    pub train: BTreeMap<u64, f32>,
    /// Validation passes by step.
    pub evals: BTreeMap<u64, Eval>,
}

impl History {
    /// Rebuilds the history of steps `<= upto` from a metrics file of `vgg train` (JSON
    /// lines; unreadable lines are skipped), so that a resumed run plots the whole run.
    pub fn from_metrics(path: &Path, upto: u64) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::from_text(&text, upto))
    }

    /// [`History::from_metrics`] of a metrics file's text.
    pub fn from_text(text: &str, upto: u64) -> Self {
        let mut h = History::default();
        for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            let Some(step) = v["step"].as_u64().filter(|s| *s <= upto) else { continue };
            if v["eval"].as_bool() == Some(true) {
                let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                h.evals.insert(step, Eval { step, loss: f("val_loss"), top1: f("val_top1"), top5: f("val_top5") });
            } else if let Some(l) = v["loss"].as_f64() {
                h.train.insert(step, l as f32);
            }
        }
        h
    }

    /// Writes `loss.png` and `accuracy.png` (or `<prefix>loss.png`, ...) into `dir`; returns
    /// their paths.
    pub fn write(&self, dir: &Path, prefix: &str) -> Result<[PathBuf; 2]> {
        let (lp, ap) = (dir.join(format!("{prefix}loss.png")), dir.join(format!("{prefix}accuracy.png")));
        let raw: Vec<(f64, f64)> = self.train.iter().map(|(s, l)| (*s as f64, *l as f64)).collect();
        // Running mean over ~1/50 of the run (at least 1 step), to see the trend under the noise.
        let win = (raw.len() / 50).max(1);
        let mean: Vec<(f64, f64)> = (0..raw.len())
            .map(|i| {
                let lo = (i + 1).saturating_sub(win);
                let vals: Vec<f64> = raw[lo..=i].iter().map(|p| p.1).filter(|v| v.is_finite()).collect();
                (raw[i].0, vals.iter().sum::<f64>() / vals.len().max(1) as f64)
            })
            .collect();
        let ev =
            |f: fn(&Eval) -> f64| -> Vec<(f64, f64)> { self.evals.values().map(|e| (e.step as f64, f(e))).collect() };
        let mean_label = format!("TRAIN LOSS, MEAN OF {win}");
        // Short runs (under 100 steps) show the raw curve alone, in the dark colour.
        let mut loss = if win > 1 {
            vec![
                Series { label: "TRAIN LOSS", color: RAW, points: raw, markers: false },
                Series { label: &mean_label, color: TRAIN, points: mean, markers: false },
            ]
        } else {
            vec![Series { label: "TRAIN LOSS", color: TRAIN, points: raw, markers: false }]
        };
        loss.push(Series { label: "VAL LOSS", color: VAL, points: ev(|e| e.loss), markers: true });
        chart(&lp, "TRAINING LOSS (CROSS-ENTROPY)", &loss, None)?;
        let acc = [
            Series { label: "VAL TOP-1", color: TRAIN, points: ev(|e| e.top1), markers: true },
            Series { label: "VAL TOP-5", color: TOP5, points: ev(|e| e.top5), markers: true },
        ];
        chart(&ap, "VALIDATION ACCURACY", &acc, Some(1.0))?;
        Ok([lp, ap])
    }
}

/// One line of a chart; non-finite points break it.
struct Series<'a> {
    label: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    markers: bool,
}

/// Ticks from 0 to a little above `max` in 1-2-5 steps, with labels.
fn ticks(max: f64, n: f64) -> (f64, Vec<(f64, String)>) {
    let max = if max > 0.0 && max.is_finite() { max } else { 1.0 };
    let step = nice_step(max / n);
    let top = (max / step).ceil().max(1.0) * step;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let t = (0..).map(|i| i as f64 * step).take_while(|v| *v <= top + step * 0.01);
    (top, t.map(|v| (v, format!("{v:.decimals$}"))).collect())
}

/// A line chart of `series` over steps, y from 0 to `ymax` (or a little above the data), to
/// `path` through a temporary file and a rename.
fn chart(path: &Path, title: &str, series: &[Series], ymax: Option<f64>) -> Result<()> {
    Ok(crate::atomic::replace_with(path, |tmp| draw(tmp, title, series, ymax))?)
}

fn draw(path: &Path, title: &str, series: &[Series], ymax: Option<f64>) -> Result<(), Box<dyn std::error::Error>> {
    const W: i32 = 900;
    const H: i32 = 500;
    const TOP: i32 = 70;
    const BOTTOM: i32 = 56;
    const RIGHT: i32 = 24;
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().filter(finite).copied()).collect();
    let xmax_data = all.iter().map(|p| p.0).fold(0.0, f64::max);
    let (xmax, xt) = ticks(xmax_data, 8.0);
    let (ymax, yt) = match ymax {
        Some(m) => ticks(m, 5.0),
        None => ticks(all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05, 6.0),
    };
    let left = 20 + yt.iter().map(|t| text_width(&t.1, 2)).max().unwrap_or(0).max(30);
    let (pw, ph) = (W - left - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| left + ((x / xmax).clamp(0.0, 1.0) * pw as f64).round() as i32;
    let py = |y: f64| TOP + ph - ((y / ymax).clamp(0.0, 1.0) * ph as f64).round() as i32;

    let root = BitMapBackend::new(path, (W as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (v, label) in &yt {
        root.draw(&PathElement::new(vec![(left, py(*v)), (W - RIGHT, py(*v))], GRID))?;
        text(&root, left - 8 - text_width(label, 2), py(*v) - 7, label, 2, INK)?;
    }
    for (v, label) in &xt {
        root.draw(&PathElement::new(vec![(px(*v), TOP + ph), (px(*v), TOP + ph + 5)], INK))?;
        text(&root, px(*v) - text_width(label, 2) / 2, TOP + ph + 10, label, 2, INK)?;
    }
    root.draw(&PathElement::new(vec![(left, TOP), (left, TOP + ph), (W - RIGHT, TOP + ph)], INK))?;
    text(&root, left + pw / 2 - text_width("STEP", 2) / 2, H - 22, "STEP", 2, INK)?;

    for s in series {
        // Consecutive finite points form one polyline; a non-finite one ends it.
        let mut run: Vec<(i32, i32)> = vec![];
        for p in s.points.iter().chain([&(f64::NAN, f64::NAN)]) {
            if finite(&p) {
                run.push((px(p.0), py(p.1)));
                if s.markers {
                    let (x, y) = (px(p.0), py(p.1));
                    root.draw(&Rectangle::new([(x - 3, y - 3), (x + 3, y + 3)], s.color.filled()))?;
                }
            } else if !run.is_empty() {
                root.draw(&PathElement::new(std::mem::take(&mut run), s.color.stroke_width(2)))?;
            }
        }
    }

    text(&root, left, 12, title, 2, INK)?;
    let mut x = left;
    for s in series {
        root.draw(&Rectangle::new([(x, 40), (x + 14, 54)], s.color.filled()))?;
        text(&root, x + 20, 40, s.label, 2, INK)?;
        x += 40 + text_width(s.label, 2);
    }
    if all.is_empty() {
        text(&root, left + 20, TOP + 20, "NO DATA YET", 2, INK)?;
    }
    root.present()?;
    Ok(())
}

/// Where `vgg train` puts its plots: the checkpoint folder, else next to the metrics file
/// (`run.jsonl` -> `run.loss.png`, `run.accuracy.png`); `None` when the run has neither, or
/// only a metrics stream (`/dev/stderr`: no plots in /dev).
pub fn destination(checkpoint_dir: Option<&Path>, metrics: Option<&Path>) -> Option<(PathBuf, String)> {
    if let Some(d) = checkpoint_dir {
        return Some((d.to_path_buf(), String::new()));
    }
    let m = metrics.filter(|m| !crate::atomic::is_stream(m))?;
    let dir = m.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = m.file_stem().and_then(|s| s.to_str()).unwrap_or("metrics");
    Some((if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir }, format!("{stem}.")))
}
