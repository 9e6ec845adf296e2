//! The copies kernels/bulk.cuh, kernels/cluster.cuh and kernels/probe_copy.cu make: what a TMA
//! load lays in shared memory, what the cluster test kernels read from each other's shared
//! memories, and the copy probe's checksum of a landed tile.

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

/// Word `t` of block `b`'s shared memory in kernels/cluster_test.cu's exchange kernels.
pub fn cluster_exchange_value(b: usize, t: usize) -> i32 {
    (b * 1000 + t + 1) as i32
}

/// What `cluster_dsmem_exchange` writes for `blocks` blocks of `threads` threads in clusters of
/// `n`: for each block, its rank * 16 + n, then every rank's words of its cluster as each holds
/// them.
pub fn cluster_exchange(blocks: usize, n: usize, threads: usize) -> Vec<i32> {
    let mut out = vec![];
    for b in 0..blocks {
        let first = b - b % n;
        out.push((b % n * 16 + n) as i32);
        out.extend((0..n).flat_map(|r| (0..threads).map(move |t| cluster_exchange_value(first + r, t))));
    }
    out
}

/// What `cluster_remote_arrive` writes for `clusters` clusters of `n`: for each, rank 0's words,
/// its own unwritten (-1), rank r's the value block first + r wrote through mapa.
pub fn cluster_remote_words(clusters: usize, n: usize) -> Vec<i32> {
    (0..clusters * n).map(|b| if b % n == 0 { -1 } else { cluster_exchange_value(b, 0) }).collect()
}

/// What a multicast kernel of kernels/cluster_test.cu leaves in an output of `blocks` boxes filled
/// with `fill` beforehand: the box, in the slots of the blocks whose rank (in clusters of `n`) is
/// in `mask`.
pub fn cluster_multicast(boxb: &[u8], blocks: usize, n: usize, mask: u32, fill: u8) -> Vec<u8> {
    (0..blocks).flat_map(|b| if (mask >> (b % n)) & 1 == 1 { boxb.to_vec() } else { vec![fill; boxb.len()] }).collect()
}
