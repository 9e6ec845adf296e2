//! Checks of the copy engine's primitives (kernels/bulk.cuh: bulk copies, 2-D and 4-D TMA loads,
//! the mbarriers counting their bytes) through kernels/bulk_test.cu. On emu they test the
//! plumbing (tensor maps, barriers, the box as the emulator lays it); on a GPU they confirm the
//! emulator's reading of the PTX ISA: a box's elements innermost first, dense, zeros where it
//! leaves the tensor, the 128-byte swizzle (16-byte chunk c of box row r at c ^ (r % 8)), and the whole
//! box's bytes completing the barrier. Not run where the copy engine is not (a GPU other than
//! sm_90).

use super::{Bound, CheckRow};
use crate::device::{TensorMap, TensorMap2dSpec, TensorMapSpec};
use crate::reference::{self as r, compare};
use crate::{Device, KArg, Kernel, LaunchConfig, Result, Tensor};

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "bulk_test", name }
}

/// Varied 16-bit values (neighbours differ), so that a misplaced element shows.
pub(super) fn pattern(len: usize, seed: u32) -> Vec<u16> {
    (0..len as u32).map(|i| (i.wrapping_mul(0x9E37_79B1).wrapping_add(seed) >> 13) as u16).collect()
}

pub(super) fn as_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// 16-bit words as exact f32s, for `compare`.
pub(super) fn words(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as f32).collect()
}

pub fn bulk(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    if !dev.has_wgmma() {
        return Ok(rows);
    }
    let one_warp = |shared: usize| LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: shared as u32 };

    // Bulk copies: one 16-byte unit, an odd number of them, a page; from offsets 0 and 48.
    let src = as_bytes(&pattern(4096, 1));
    let st = Tensor::from_host(dev, &[src.len()], &src)?;
    for (bytes, off) in [(16usize, 0usize), (144, 48), (4096, 0), (2032, 48)] {
        let mut out = Tensor::from_host(dev, &[bytes], &vec![0xA5u8; bytes])?;
        let view = st.device_ptr() + off as u64;
        // SAFETY: (const unsigned char* src, int bytes, unsigned char* out): src + off holds
        // `bytes` (off + bytes <= 8192), out `bytes`; shared memory `bytes`.
        unsafe {
            dev.launch(
                &kernel("prim_bulk_copy"),
                one_warp(bytes),
                &[KArg::Ptr(view), KArg::I32(bytes as i32), out.arg_mut()],
            )?
        };
        let cmp = compare(&words(&out.to_host()?), &words(&src[off..off + bytes]));
        rows.push(CheckRow::new("bulk", format!("cp.async.bulk {bytes} B from +{off}"), cmp, Bound::Exact));
    }

    // 2-D boxes of a 300 x 200 matrix whose rows are 208 elements apart (416 bytes: padded past
    // the row, as a tensor's rows may be): inside, hanging over every edge, swizzled or not.
    let (inner, outer, stride) = (200usize, 300usize, 208usize);
    let m = pattern(outer * stride, 2);
    let mt = Tensor::from_host(dev, &[2 * m.len()], &as_bytes(&m))?;
    let boxes = [
        (64, 256, true, 0, 0),
        (64, 256, true, 160, 100),
        (64, 256, true, -16, -5),
        (32, 16, false, 40, 7),
        (64, 8, false, 136, 292),
    ];
    for (box_inner, box_outer, swizzle128, c0, c1) in boxes {
        let spec = TensorMap2dSpec { inner, outer, row_stride: 2 * stride, box_inner, box_outer, swizzle128 };
        let map = TensorMap::new_2d(dev, mt.device_ptr(), spec)?;
        let bytes = spec.box_bytes();
        let mut out = Tensor::from_host(dev, &[bytes], &vec![0xA5u8; bytes])?;
        let args = [map.arg(), KArg::I32(c0), KArg::I32(c1), KArg::I32(bytes as i32), out.arg_mut()];
        // SAFETY: (TmaDesc map by value, int c0, int c1, int bytes, unsigned char* out): the map
        // describes mt (alive), `bytes` is its box's size and out's; shared memory the box plus
        // the 1024 bytes its alignment may skip.
        unsafe { dev.launch(&kernel("prim_tma_box"), one_warp(bytes + 1024), &args)? };
        let want = r::tma_box(&m, &spec.nd(), &[c0 as i64, c1 as i64]);
        let cmp = compare(&words(&out.to_host()?), &words(&want));
        let sw = if swizzle128 { " sw128" } else { "" };
        let shape = format!("tma 2-D box {box_outer}x{box_inner}{sw} at ({c0}, {c1}) of {outer}x{inner}");
        rows.push(CheckRow::new("bulk", shape, cmp, Bound::Exact));
    }

    // 4-D boxes of NHWC tensors (C, W, H, N innermost first), as a convolution's input window
    // would load them: padding from coordinates left of and above the image (negative), and
    // past its right and bottom edges; 24 channels unswizzled, 64 swizzled.
    let windows = [(24usize, 8usize, [8i64, -1, -1, 1]), (24, 16, [16, 3, 2, 0]), (64, 64, [0, -1, 3, 1])];
    for (c, box_c, coords) in windows {
        let (n, h, w) = (2usize, 5usize, 7usize);
        let t = pattern(n * h * w * c, 3);
        let tt = Tensor::from_host(dev, &[2 * t.len()], &as_bytes(&t))?;
        let spec = TensorMapSpec {
            dims: vec![c, w, h, n],
            strides: vec![2 * c, 2 * c * w, 2 * c * w * h],
            boxd: vec![box_c, w + 2, 3, 1],
            swizzle128: box_c == 64,
        };
        let map = TensorMap::new(dev, tt.device_ptr(), &spec)?;
        let bytes = spec.box_bytes();
        let mut out = Tensor::from_host(dev, &[bytes], &vec![0xA5u8; bytes])?;
        let [c0, c1, c2, c3] = coords.map(|v| v as i32);
        let args = [
            map.arg(),
            KArg::I32(c0),
            KArg::I32(c1),
            KArg::I32(c2),
            KArg::I32(c3),
            KArg::I32(bytes as i32),
            out.arg_mut(),
        ];
        // SAFETY: (TmaDesc map by value, int c0, int c1, int c2, int c3, int bytes, unsigned
        // char* out): the map describes tt (alive), `bytes` is its box's size and out's; shared
        // memory the box plus the 1024 bytes its alignment may skip.
        unsafe { dev.launch(&kernel("prim_tma_box4"), one_warp(bytes + 1024), &args)? };
        let cmp = compare(&words(&out.to_host()?), &words(&r::tma_box(&t, &spec, &coords)));
        let sw = if spec.swizzle128 { " sw128" } else { "" };
        let shape = format!("tma 4-D box {:?}{sw} at {coords:?} of NHWC {n}x{h}x{w}x{c}", spec.boxd);
        rows.push(CheckRow::new("bulk", shape, cmp, Bound::Exact));
    }
    Ok(rows)
}

/// The copy probe's kernels (kernels/probe_copy.cu, `vgg bench copy`) on a small matrix: every
/// form the device has, in each lane pattern, lands every tile where the checksum expects it
/// (the block sums against [`r::copy_probe_tile_sum`]'s, each compared as two 16-bit halves).
pub fn copy_probe(dev: &Device) -> Result<Vec<CheckRow>> {
    use crate::bench::copy::{CopyCase, CopyMethod, CopyProbe};
    let case = CopyCase { name: "selftest".into(), rows: 512, pitch: 16, count: 10 };
    let mut probe = CopyProbe::new(dev, &case, 3)?;
    let want = probe.expected();
    let halves = |v: &[u32]| -> Vec<f32> { v.iter().flat_map(|&s| [(s >> 16) as f32, (s & 0xffff) as f32]).collect() };
    let mut rows = vec![];
    for method in CopyMethod::ALL.into_iter().filter(|m| dev.has_wgmma() || !m.engine()) {
        for &phase in method.phases() {
            let got = probe.checked_sums(method, phase)?;
            let shape = format!("{} {phase:?}, 10 tiles of 512 x 16 units over 3 blocks", method.name());
            rows.push(CheckRow::new("copy_probe", shape, compare(&halves(&got), &halves(&want)), Bound::Exact));
        }
    }
    Ok(rows)
}
