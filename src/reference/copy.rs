//! The copies kernels/bulk.cuh and kernels/probe_copy.cu make: what a TMA load lays in shared
//! memory, and the copy probe's checksum of a landed tile.

use crate::device::TensorMapSpec;

/// The box at `coords` (innermost first) of the tensor `t` (16-bit elements, laid out as `spec`'s
/// strides say) as the copy engine should lay it in shared memory: its elements innermost first,
/// zeros outside the tensor, the 128-byte swizzle applied to each 16-byte chunk's offset.
pub fn tma_box(t: &[u16], spec: &TensorMapSpec, coords: &[i64]) -> Vec<u8> {
    let rank = spec.dims.len();
    let mut out = vec![0u8; spec.box_bytes()];
    let elems = spec.boxd.iter().product::<usize>();
    for e in 0..elems {
        // e's index along each dimension of the box, innermost fastest.
        let (mut rest, mut src, mut inside) = (e, 0i64, true);
        for (k, &at) in coords.iter().enumerate().take(rank) {
            let x = at + (rest % spec.boxd[k]) as i64;
            rest /= spec.boxd[k];
            inside &= x >= 0 && x < spec.dims[k] as i64;
            src += x * if k == 0 { 2 } else { spec.strides[k - 1] as i64 };
        }
        if !inside {
            continue;
        }
        let mut off = 2 * e;
        if spec.swizzle128 {
            off ^= ((off >> 7) & 7) << 4;
        }
        out[off..off + 2].copy_from_slice(&t[src as usize / 2].to_le_bytes());
    }
    out
}

/// The copy probe's checksum of one landed 256 x 8-unit tile (kernels/probe_copy.cu): the sum,
/// wrapping, over rows r and 16-byte units u of (x + 3 y + 5 z + 7 w) (2 (8 r + u) + 1), where
/// `unit(r, u)` gives the unit's four 32-bit words.
pub fn copy_probe_tile_sum(unit: impl Fn(usize, usize) -> [u32; 4]) -> u32 {
    let mut acc = 0u32;
    for r in 0..256 {
        for u in 0..8 {
            let [x, y, z, w] = unit(r, u);
            let v = x
                .wrapping_add(3u32.wrapping_mul(y))
                .wrapping_add(5u32.wrapping_mul(z))
                .wrapping_add(7u32.wrapping_mul(w));
            acc = acc.wrapping_add(v.wrapping_mul(2 * (8 * r + u) as u32 + 1));
        }
    }
    acc
}
