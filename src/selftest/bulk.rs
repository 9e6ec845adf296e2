//! Checks of the copy engine's primitives (kernels/bulk.cuh: bulk copies, 2-D TMA loads, the
//! mbarriers counting their bytes) through kernels/bulk_test.cu. On emu they test the plumbing
//! (tensor maps, barriers, the box as the emulator lays it); on a GPU they confirm the
//! emulator's reading of the PTX ISA: a box's rows one after the other, zeros where it leaves the
//! tensor, the 128-byte swizzle (16-byte chunk c of box row r at c ^ (r % 8)), and the whole
//! box's bytes completing the barrier. Not run where the copy engine is not (a GPU other than
//! sm_90).

use super::{Bound, CheckRow};
use crate::device::{TensorMap2d, TensorMap2dSpec};
use crate::reference::compare;
use crate::{Device, KArg, Kernel, LaunchConfig, Result, Tensor};

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "bulk_test", name }
}

/// Varied 16-bit values (neighbours differ), so that a misplaced element shows.
fn pattern(len: usize, seed: u32) -> Vec<u16> {
    (0..len as u32).map(|i| (i.wrapping_mul(0x9E37_79B1).wrapping_add(seed) >> 13) as u16).collect()
}

fn as_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// 16-bit words as exact f32s, for `compare`.
fn words(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as f32).collect()
}

/// The box at (c0, c1) of the `inner` x `outer` matrix `m` (row stride `stride` elements) as the
/// copy engine should lay it in shared memory.
fn box_reference(m: &[u16], stride: usize, spec: &TensorMap2dSpec, c0: i32, c1: i32) -> Vec<u8> {
    let row_bytes = 2 * spec.box_inner;
    let mut out = vec![0u8; spec.box_bytes()];
    for i in 0..spec.box_outer {
        for j in 0..spec.box_inner {
            let (x, y) = (c0 as i64 + j as i64, c1 as i64 + i as i64);
            if x < 0 || y < 0 || x >= spec.inner as i64 || y >= spec.outer as i64 {
                continue;
            }
            let mut off = i * row_bytes + 2 * j;
            if spec.swizzle128 {
                off ^= ((off >> 7) & 7) << 4;
            }
            out[off..off + 2].copy_from_slice(&m[y as usize * stride + x as usize].to_le_bytes());
        }
    }
    out
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
        let map = TensorMap2d::new(dev, mt.device_ptr(), spec)?;
        let bytes = spec.box_bytes();
        let mut out = Tensor::from_host(dev, &[bytes], &vec![0xA5u8; bytes])?;
        let args = [map.arg(), KArg::I32(c0), KArg::I32(c1), KArg::I32(bytes as i32), out.arg_mut()];
        // SAFETY: (TmaDesc map by value, int c0, int c1, int bytes, unsigned char* out): the map
        // describes mt (alive), `bytes` is its box's size and out's; shared memory the box plus
        // the 1024 bytes its alignment may skip.
        unsafe { dev.launch(&kernel("prim_tma_box"), one_warp(bytes + 1024), &args)? };
        let want = box_reference(&m, stride, &spec, c0, c1);
        let cmp = compare(&words(&out.to_host()?), &words(&want));
        let sw = if swizzle128 { " sw128" } else { "" };
        let shape = format!("tma 2-D box {box_outer}x{box_inner}{sw} at ({c0}, {c1}) of {outer}x{inner}");
        rows.push(CheckRow::new("bulk", shape, cmp, Bound::Exact));
    }
    Ok(rows)
}
