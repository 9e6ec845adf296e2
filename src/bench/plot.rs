//! PNG bar charts of bench tables, through plotters' bitmap backend. Labels use a built-in
//! 5x7 pixel font drawn as rectangles: no system font is needed, so a chart renders the
//! same on a bare GPU machine as here.

use super::conv::{ConvReport, Pass};
use plotters::prelude::*;
use std::path::Path;

const OURS: RGBColor = RGBColor(31, 119, 180);
const CUDNN: RGBColor = RGBColor(255, 127, 14);
const GRID: RGBColor = RGBColor(220, 220, 220);
const INK: RGBColor = RGBColor(30, 30, 30);

/// Writes a grouped bar chart of effective TFLOP/s per layer and pass (ours blue, cuDNN
/// orange) to `path` (PNG), through a temporary file and a rename.
pub fn conv_chart(report: &ConvReport, path: &Path) -> Result<(), String> {
    let rows = &report.rows;
    if rows.is_empty() {
        return Err("no rows to plot".into());
    }
    crate::atomic::replace_with(path, |tmp| draw_conv_chart(report, tmp)).map_err(|e| e.to_string())
}

fn draw_conv_chart(report: &ConvReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    const GROUP_W: i32 = 44;
    const RIGHT: i32 = 20;
    const TOP: i32 = 70;
    const BOTTOM: i32 = 60;
    const PLOT_H: i32 = 480;
    let rows = &report.rows;

    // The y axis: 0 to a little above the best bar in steps of 1, 2 or 5 x 10^n.
    let vals = rows.iter().flat_map(|r| [r.ours.as_ref().map(|m| m.tflops), r.cudnn.as_ref().map(|m| m.tflops)]);
    let top = vals.flatten().filter(|v| v.is_finite()).fold(0f64, f64::max);
    // Nothing measured: an empty 0..1 axis rather than a degenerate one.
    let top = if top > 0.0 { top } else { 1.0 };
    let step = nice_step(top * 1.05 / 6.0);
    let ymax = (top * 1.05 / step).ceil().max(1.0) * step;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let ticks: Vec<(f64, String)> = (0..)
        .map(|i| i as f64 * step)
        .take_while(|v| *v <= ymax + step * 0.01)
        .map(|v| (v, format!("{v:.decimals$}")))
        .collect();
    let left = 20 + ticks.iter().map(|t| text_width(&t.1, 2)).max().unwrap_or(0).max(40);

    let width = (left + RIGHT + GROUP_W * rows.len() as i32).max(900);
    let height = TOP + PLOT_H + BOTTOM;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_of = |v: f64| TOP + PLOT_H - ((v / ymax).clamp(0.0, 1.0) * PLOT_H as f64).round() as i32;
    for (v, label) in &ticks {
        let y = y_of(*v);
        root.draw(&PathElement::new(vec![(left, y), (width - RIGHT, y)], GRID))?;
        text(&root, left - 8 - text_width(label, 2), y - 7, label, 2, INK)?;
    }
    root.draw(&PathElement::new(vec![(left, TOP), (left, TOP + PLOT_H)], INK))?;
    root.draw(&PathElement::new(vec![(left, TOP + PLOT_H), (width - RIGHT, TOP + PLOT_H)], INK))?;

    // Bars, two per group, and the group's labels (layer without `conv`, pass initial).
    let bar_w = (GROUP_W - 8) / 2;
    for (i, r) in rows.iter().enumerate() {
        let x0 = left + 4 + GROUP_W * i as i32;
        for (j, (m, color)) in [(&r.ours, OURS), (&r.cudnn, CUDNN)].into_iter().enumerate() {
            if let Some(t) = m.as_ref().map(|m| m.tflops).filter(|t| t.is_finite()) {
                let xa = x0 + j as i32 * bar_w;
                root.draw(&Rectangle::new([(xa, y_of(t)), (xa + bar_w - 1, TOP + PLOT_H)], color.filled()))?;
            }
        }
        if r.failed() {
            text(&root, x0 + bar_w - 5, TOP + PLOT_H - 18, "X", 2, RGBColor(200, 0, 0))?;
        }
        let layer = r.layer.trim_start_matches("conv");
        let pass = match r.pass {
            Pass::Fprop => "F",
            Pass::Dgrad => "D",
            Pass::Wgrad => "W",
        };
        let cx = x0 + bar_w;
        text(&root, cx - text_width(layer, 2) / 2, TOP + PLOT_H + 8, layer, 2, INK)?;
        text(&root, cx - text_width(pass, 2) / 2, TOP + PLOT_H + 28, pass, 2, INK)?;
    }

    // Title and legend.
    let batch = rows.first().map_or(0, |r| r.n);
    let title = format!("VGG-16 3X3 CONV, BATCH {batch}, {}: EFFECTIVE TFLOP/S", report.device);
    text(&root, left, 12, &title, 2, INK)?;
    let mut x = left;
    let legend_ours = format!("OURS ({})", report.algo);
    let cudnn = match &report.cudnn_version {
        Some(v) => format!("CUDNN {v} (FASTEST OF ITS SEARCH)"),
        None => "CUDNN: NOT RUN".into(),
    };
    for (label, color) in [(legend_ours.as_str(), OURS), (cudnn.as_str(), CUDNN), ("X = FAILED", RGBColor(200, 0, 0))] {
        root.draw(&Rectangle::new([(x, 40), (x + 14, 54)], color.filled()))?;
        text(&root, x + 20, 40, label, 2, INK)?;
        x += 40 + text_width(label, 2);
    }
    root.present()?;
    Ok(())
}

/// A step of 1, 2 or 5 times a power of ten, at least `raw`.
pub(crate) fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
}

/// Pixel width of `s` in the built-in font at `scale` (also used by src/train/plot.rs).
pub(crate) fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale
}

/// Draws `s` with its top-left corner at (x, y), each font pixel `scale` pixels wide.
pub(crate) fn text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    y: i32,
    s: &str,
    scale: i32,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        let gx = x + i as i32 * 6 * scale;
        for (r, bits) in g.iter().enumerate() {
            for c in 0..5 {
                if bits & (0b10000 >> c) != 0 {
                    let px = gx + c * scale;
                    let py = y + r as i32 * scale;
                    area.draw(&Rectangle::new([(px, py), (px + scale - 1, py + scale - 1)], color.filled()))?;
                }
            }
        }
    }
    Ok(())
}

/// The 5x7 bitmap of a character (rows top to bottom, bit 4 = leftmost column); lower case
/// is drawn as upper case, anything unknown as `?`.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(45.0), 50.0);
        assert_eq!(nice_step(100.0), 100.0);
    }
}
