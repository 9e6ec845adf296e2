//! Antialiased bilinear resizing of u8 RGB images: PIL's `Image.resize(..., BILINEAR)` and
//! torchvision's `resize(..., antialias=True)`, whose filter is the same.
//!
//! Each axis is a separable convolution with the triangle filter stretched by the
//! downscale factor (so a downscale averages over every source pixel it covers instead of
//! sampling two), centred at `(o + 0.5) * in / out`, cut at the image border and
//! renormalised; PIL's `precompute_coeffs` computes the same taps and weights. Vertical pass
//! first, then horizontal (PIL goes the other way; the order changes only f32 rounding, and
//! this one puts the larger pass of a downscale on contiguous rows). Differences from PIL: the
//! intermediate is kept in f32 where PIL rounds it to 8 bits (so results differ from PIL's by
//! at most one level, and agree with torchvision's float path up to f32 rounding).
//!
//! [`resize_window`] computes only a window of the resized image: a random crop of a
//! rescaled image costs the crop, not the whole rescale, and an extreme aspect ratio never
//! allocates its (possibly huge) full rescale.

use image::RgbImage;

/// The filter taps of one axis for outputs `o0..o0 + n` of a resize from `in_size` to
/// `out_size`: output `i` reads `start[i]..start[i] + len[i]` with `weights[i * k..]`.
struct Taps {
    k: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn taps(in_size: u32, out_size: u32, o0: u32, n: u32) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    let k = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps {
        k,
        start: Vec::with_capacity(n as usize),
        len: Vec::with_capacity(n as usize),
        weights: vec![0.0; k * n as usize],
    };
    let mut buf = vec![0.0f64; k];
    for (i, o) in (o0..o0 + n).enumerate() {
        let center = (o as f64 + 0.5) * scale;
        // PIL truncates toward zero here (C casts); the max(0) makes that a floor.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let len = hi.saturating_sub(lo).min(k);
        let buf = &mut buf[..len];
        let mut total = 0.0;
        for (j, b) in buf.iter_mut().enumerate() {
            *b = triangle(((lo + j) as f64 - center + 0.5) / filterscale);
            total += *b;
        }
        for (dst, b) in t.weights[i * k..i * k + len].iter_mut().zip(buf.iter()) {
            *dst = if total != 0.0 { (b / total) as f32 } else { 0.0 };
        }
        t.start.push(lo);
        t.len.push(len);
    }
    t
}

/// The size of an image of `w` x `h` rescaled isotropically so that its shorter side is
/// `s`: torchvision's `Resize(s)` (the longer side truncated, at least 1).
pub fn rescaled_size(w: u32, h: u32, s: u32) -> (u32, u32) {
    let long = |l: u32, short: u32| ((s as u64 * l as u64 / short as u64) as u32).max(1);
    if w <= h {
        (s, long(h, w))
    } else {
        (long(w, h), s)
    }
}

/// Writes `win` of `src` resized to `win.out_w` x `win.out_h` into `dst` (`cw * ch * 3`
/// bytes, RGB rows). `scratch` is the reusable f32 intermediate.
pub fn resize_window(src: &RgbImage, win: Window, scratch: &mut Vec<f32>, dst: &mut [u8]) {
    let (in_w, in_h) = src.dimensions();
    let Window { out_w, out_h, x0, y0, cw, ch } = win;
    assert!(in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0, "resize_window: empty image");
    assert!(x0 + cw <= out_w && y0 + ch <= out_h, "resize_window: window outside the output");
    assert_eq!(dst.len(), cw as usize * ch as usize * 3, "resize_window: dst");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, all that the function's target_feature asks for.
        return unsafe { window_avx2(src, win, scratch, dst) };
    }
    window(src, win, scratch, dst)
}

/// What [`resize_window`] computes: the window `(x0, y0, cw, ch)` of the `out_w` x `out_h`
/// resize.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Width of the whole resized image, in pixels.
    pub out_w: u32,
    /// Height of the whole resized image, in pixels.
    pub out_h: u32,
    /// Left column of the window in the resized image.
    pub x0: u32,
    /// Top row of the window in the resized image.
    pub y0: u32,
    /// Width of the window (`x0 + cw <= out_w`).
    pub cw: u32,
    /// Height of the window (`y0 + ch <= out_h`).
    pub ch: u32,
}

impl Window {
    /// The whole `w` x `h` resize.
    pub fn whole(w: u32, h: u32) -> Self {
        Self { out_w: w, out_h: h, x0: 0, y0: 0, cw: w, ch: h }
    }
}

/// [`window`] compiled for AVX2: its loops vectorise 8 lanes wide instead of SSE2's 4. Rust
/// never fuses a multiply and an add by itself and each lane keeps its own order of additions,
/// so the result is bit-identical to the baseline build's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn window_avx2(src: &RgbImage, win: Window, scratch: &mut Vec<f32>, dst: &mut [u8]) {
    window(src, win, scratch, dst)
}

/// [`resize_window`]'s work, after its checks; inlined into each instruction-set build.
#[inline(always)]
fn window(src: &RgbImage, win: Window, scratch: &mut Vec<f32>, dst: &mut [u8]) {
    let Window { out_w, out_h, x0, y0, cw, ch } = win;
    let (in_w, in_h) = src.dimensions();
    let (cw, ch) = (cw as usize, ch as usize);
    let pix = src.as_raw();
    let row_bytes = in_w as usize * 3;
    let ht = (out_w != in_w).then(|| taps(in_w, out_w, x0, cw as u32));
    let vt = (out_h != in_h).then(|| taps(in_h, out_h, y0, ch as u32));
    // Source columns the horizontal pass reads.
    let (c0, c1) = match &ht {
        Some(t) => (t.start[0], (0..cw).map(|i| t.start[i] + t.len[i]).max().unwrap_or(0)),
        None => (x0 as usize, x0 as usize + cw),
    };
    let cols = (c1 - c0) * 3;
    scratch.clear();
    // One float more: the horizontal pass reads each pixel as 4 lanes (see below).
    scratch.resize(ch * cols + 1, 0.0);
    // Vertical pass first: source columns c0..c1 -> ch f32 rows. Its inner loop runs along
    // contiguous rows and vectorises; the horizontal pass, a gather, then runs on ch rows
    // only (a downscale has more source rows than output rows).
    for i in 0..ch {
        let trow = &mut scratch[i * cols..(i + 1) * cols];
        let src_row = |r: usize| &pix[r * row_bytes + c0 * 3..r * row_bytes + c1 * 3];
        match &vt {
            Some(t) => {
                for (j, wj) in t.weights[i * t.k..i * t.k + t.len[i]].iter().enumerate() {
                    for (a, v) in trow.iter_mut().zip(src_row(t.start[i] + j)) {
                        *a += *v as f32 * wj;
                    }
                }
            }
            None => {
                for (a, v) in trow.iter_mut().zip(src_row(y0 as usize + i)) {
                    *a = *v as f32;
                }
            }
        }
    }
    let to_u8 = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
    // Horizontal pass: f32 rows -> the window's u8 rows. Each tap reads its pixel as 4 lanes
    // (the 4th is the next pixel's red, or the spare float at the end, and is dropped), so that
    // a tap is one vector multiply and add; each channel still sums its taps in order.
    for i in 0..ch {
        let trow = &scratch[i * cols..(i + 1) * cols + 1];
        let drow = &mut dst[i * cw * 3..(i + 1) * cw * 3];
        match &ht {
            Some(t) => {
                for (o, d) in drow.chunks_exact_mut(3).enumerate() {
                    let (s, n) = (t.start[o] - c0, t.len[o]);
                    let mut acc = [0.0f32; 4];
                    for (j, wj) in t.weights[o * t.k..o * t.k + n].iter().enumerate() {
                        let px: &[f32; 4] = trow[(s + j) * 3..(s + j) * 3 + 4].try_into().expect("4 lanes");
                        for (a, v) in acc.iter_mut().zip(px) {
                            *a += v * wj;
                        }
                    }
                    d.copy_from_slice(&[to_u8(acc[0]), to_u8(acc[1]), to_u8(acc[2])]);
                }
            }
            None => {
                for (d, v) in drow.iter_mut().zip(trow) {
                    *d = to_u8(*v);
                }
            }
        }
    }
}

/// `src` resized to `w` x `h` (the whole image; see [`resize_window`]).
pub fn resize(src: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut out = vec![0u8; w as usize * h as usize * 3];
    resize_window(src, Window::whole(w, h), &mut Vec::new(), &mut out);
    RgbImage::from_raw(w, h, out).expect("resize: buffer size matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaled_sizes() {
        assert_eq!(rescaled_size(500, 375, 256), (341, 256));
        assert_eq!(rescaled_size(375, 500, 256), (256, 341));
        assert_eq!(rescaled_size(10, 10, 256), (256, 256));
        assert_eq!(rescaled_size(1, 1000, 4), (4, 4000));
        assert_eq!(rescaled_size(1000, 1, 1), (1000, 1));
        assert_eq!(rescaled_size(3, 1000, 1), (1, 333));
    }

    #[test]
    fn taps_sum_to_one_and_stay_inside() {
        for (i, o) in [(7, 3), (3, 7), (500, 256), (1, 5), (5, 1), (256, 256)] {
            let t = taps(i, o, 0, o);
            for n in 0..o as usize {
                let s: f32 = t.weights[n * t.k..n * t.k + t.len[n]].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} output {n}: sum {s}");
                assert!(t.start[n] + t.len[n] <= i as usize);
            }
        }
    }

    /// The AVX2 build and the baseline one give the same bytes (they differ only in vector
    /// width), on downscales, upscales and one-axis resizes of odd sizes and windows.
    #[test]
    fn instruction_set_builds_agree_bit_for_bit() {
        let img =
            RgbImage::from_fn(97, 61, |x, y| image::Rgb([(x * 31 + y) as u8, (x * y) as u8, ((y * 53) ^ x) as u8]));
        for (ow, oh, x0, y0, cw, ch) in [(40, 25, 3, 2, 31, 20), (150, 90, 7, 11, 101, 77), (97, 30, 0, 0, 97, 30)] {
            let (mut a, mut b) = (vec![0u8; cw * ch * 3], vec![0u8; cw * ch * 3]);
            let (cw, ch) = (cw as u32, ch as u32);
            let win = Window { out_w: ow, out_h: oh, x0, y0, cw, ch };
            resize_window(&img, win, &mut Vec::new(), &mut a);
            window(&img, win, &mut Vec::new(), &mut b);
            assert!(a == b, "{ow}x{oh} window ({x0}, {y0}) {cw}x{ch}");
        }
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: both calls ran the baseline build");
        }
    }

    #[test]
    fn same_size_is_identity_and_windows_agree() {
        let img = RgbImage::from_fn(9, 6, |x, y| image::Rgb([(x * 29) as u8, (y * 41) as u8, ((x * y) * 7) as u8]));
        assert_eq!(resize(&img, 9, 6), img);
        let full = resize(&img, 5, 13);
        let mut win = vec![0u8; 3 * 4 * 3];
        let w = Window { out_w: 5, out_h: 13, x0: 1, y0: 7, cw: 3, ch: 4 };
        resize_window(&img, w, &mut Vec::new(), &mut win);
        for y in 0..4 {
            for x in 0..3 {
                let at = (y * 3 + x) as usize * 3;
                assert_eq!(&win[at..at + 3], &full.get_pixel(1 + x, 7 + y).0[..], "({x}, {y})");
            }
        }
    }
}
