//! Checks of thread-block clusters (kernels/cluster.cuh) through kernels/cluster_test.cu: ranks
//! and the cluster barrier, reads of every peer's shared memory through mapa, arrivals on another
//! block's mbarrier, and multicast TMA boxes landing in every block of a cta mask. On emu they test
//! the emulation (kernels/emu/cluster.cpp); on a GPU they confirm its model: a block's rank is
//! blockIdx.x % n, mapa keeps the offset, a multicast box lands at the issuer's offset in each
//! block of the mask and completes the barrier at the same offset there. Not run where clusters
//! are not (compute capability below 9.0).

use super::bulk::{as_bytes, pattern, words};
use super::{Bound, CheckRow};
use crate::device::{TensorMap, TensorMap2dSpec, TensorMapSpec};
use crate::reference::{self as r, compare, Compare};
use crate::{Device, Error, KArg, Kernel, LaunchConfig, Result, Tensor};

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "cluster_test", name }
}

/// Exact f32s of i32 words (all small here), for `compare`.
fn ints(v: &[i32]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The row of one check: its comparison, or the launch's error as a failing row (a kernel error
/// ends that launch, not the check: on emu the next rows still run).
fn row(shape: String, cmp: Result<Compare>) -> CheckRow {
    match cmp {
        Ok(c) => CheckRow::new("cluster", shape, c, Bound::Exact),
        Err(e) => CheckRow {
            kernel: "cluster".into(),
            shape,
            max_abs: f64::NAN,
            rel_l2: f64::NAN,
            bound: "exact".into(),
            pass: false,
            detail: Some(e.to_string()),
        },
    }
}

/// `blocks` blocks of `threads` threads, `shared` bytes each.
fn cfg(blocks: usize, threads: u32, shared: usize) -> LaunchConfig {
    LaunchConfig { grid: (blocks as u32, 1, 1), block: (threads, 1, 1), shared_bytes: shared as u32 }
}

pub fn cluster(dev: &Device) -> Result<Vec<CheckRow>> {
    if !dev.has_clusters() {
        return Err(Error::Unsupported("thread-block clusters need compute capability 9.0".into()));
    }
    let mut rows = vec![];
    // Two clusters each, so that a rank mistaken for a block index shows.
    for n in [2usize, 4] {
        rows.push(row(format!("mapa reads of every peer, 2 clusters of {n} x 64 threads"), exchange(dev, n)));
        rows.push(row(format!("remote mbarrier arrive on rank 0, 2 clusters of {n}"), remote_arrive(dev, n)));
    }

    // Multicast boxes of a 300 x 200 matrix (rows 208 elements apart), swizzled or not: to every
    // rank from rank 0, from another rank, and to two ranks of four that leave out the issuer.
    let (inner, outer, stride) = (200usize, 300usize, 208usize);
    let m = pattern(outer * stride, 4);
    let mt = Tensor::from_host(dev, &[2 * m.len()], &as_bytes(&m))?;
    let casts = [
        (64, 32, true, 8, 40, 2, 0, 0b11),
        (32, 16, false, 40, 290, 4, 2, 0b1111),
        (64, 16, true, 136, 7, 4, 1, 0b1100),
    ];
    for (box_inner, box_outer, swizzle128, c0, c1, n, issuer, mask) in casts {
        let spec = TensorMap2dSpec { inner, outer, row_stride: 2 * stride, box_inner, box_outer, swizzle128 };
        let map = TensorMap::new_2d(dev, mt.device_ptr(), spec)?;
        let bytes = spec.box_bytes();
        let want = r::tma_box(&m, &spec.nd(), &[c0 as i64, c1 as i64]);
        let args = |out: &mut Tensor<u8>| {
            [map.arg(), KArg::I32(c0), KArg::I32(c1), KArg::I32(bytes as i32), KArg::I32(issuer), KArg::I32(mask)]
                .into_iter()
                .chain([out.arg_mut()])
                .collect::<Vec<_>>()
        };
        let sw = if swizzle128 { " sw128" } else { "" };
        let shape = format!("multicast 2-D box {box_outer}x{box_inner}{sw}, rank {issuer} to mask {mask:#06b} of {n}");
        rows.push(row(shape, multicast(dev, "cluster_tma_multicast", n, mask as u32, &want, args)));
    }
    // A 4-D window of an NHWC tensor (C, W, H, N), padding included, as a convolution loads one.
    let (nn, h, w, c) = (2usize, 5usize, 7usize, 64usize);
    let t = pattern(nn * h * w * c, 5);
    let tt = Tensor::from_host(dev, &[2 * t.len()], &as_bytes(&t))?;
    let spec = TensorMapSpec {
        dims: vec![c, w, h, nn],
        strides: vec![2 * c, 2 * c * w, 2 * c * w * h],
        boxd: vec![64, w + 2, 3, 1],
        swizzle128: true,
    };
    let map = TensorMap::new(dev, tt.device_ptr(), &spec)?;
    let coords = [0i64, -1, 3, 1];
    let bytes = spec.box_bytes() as i32;
    let want = r::tma_box(&t, &spec, &coords);
    let [c0, c1, c2, c3] = coords.map(|v| KArg::I32(v as i32));
    let args = |out: &mut Tensor<u8>| {
        vec![map.arg(), c0, c1, c2, c3, KArg::I32(bytes), KArg::I32(0), KArg::I32(3), out.arg_mut()]
    };
    let shape = format!("multicast 4-D box {:?} sw128 at {coords:?}, rank 0 to mask 0b11 of 2", spec.boxd);
    rows.push(row(shape, multicast(dev, "cluster_tma_multicast4", 2, 0b11, &want, args)));
    Ok(rows)
}

/// Every block of 2 clusters of `n` reads every peer's shared memory through mapa.
fn exchange(dev: &Device, n: usize) -> Result<Compare> {
    let (blocks, threads) = (2 * n, 64usize);
    let mut out = Tensor::<i32>::empty(dev, &[blocks * (n * threads + 1)])?;
    out.poison()?;
    // SAFETY: (int* out, int skip_final_sync): out holds blocks * (n * threads + 1) words; shared
    // memory one word a thread.
    unsafe {
        let args = [out.arg_mut(), KArg::I32(0)];
        dev.launch_cluster(&kernel("cluster_dsmem_exchange"), cfg(blocks, 64, 4 * threads), n as u32, &args)?
    };
    Ok(compare(&ints(&out.to_host()?), &ints(&r::cluster_exchange(blocks, n, threads))))
}

/// Every other rank of 2 clusters of `n` writes into rank 0's shared memory and arrives on its
/// mbarrier.
fn remote_arrive(dev: &Device, n: usize) -> Result<Compare> {
    let mut out = Tensor::<i32>::empty(dev, &[2 * n])?;
    out.poison()?;
    // SAFETY: (int* out): out holds a word per block; shared memory an mbarrier and n words.
    unsafe {
        let args = [out.arg_mut()];
        dev.launch_cluster(&kernel("cluster_remote_arrive"), cfg(2 * n, 32, 8 + 4 * n), n as u32, &args)?
    };
    Ok(compare(&ints(&out.to_host()?), &ints(&r::cluster_remote_words(2, n))))
}

/// One multicast kernel over 2 clusters of `n`: `args` given the output (a box a block, filled
/// with 0xA5 first, which blocks outside `mask` leave as it is).
fn multicast(
    dev: &Device,
    name: &'static str,
    n: usize,
    mask: u32,
    want_box: &[u8],
    args: impl Fn(&mut Tensor<u8>) -> Vec<KArg>,
) -> Result<Compare> {
    let (bytes, blocks) = (want_box.len(), 2 * n);
    let mut out = Tensor::from_host(dev, &[blocks * bytes], &vec![0xA5u8; blocks * bytes])?;
    // SAFETY: the multicast kernels' parameters are (TmaDesc map by value, the box's coordinates,
    // int bytes, int issuer, int mask, unsigned char* out), as `args` packs them: the map
    // describes a live tensor, `bytes` is its box's size, out holds a box a block; shared memory
    // the box, the 1024 bytes its alignment may skip, and its mbarrier.
    unsafe { dev.launch_cluster(&kernel(name), cfg(blocks, 64, bytes + 1024 + 16), n as u32, &args(&mut out))? };
    let want = r::cluster_multicast(want_box, blocks, n, mask, 0xA5);
    Ok(compare(&words(&out.to_host()?), &words(&want)))
}
