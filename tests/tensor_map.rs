//! 2-D tensor maps (TMA descriptors): a spec the copy engine cannot take is refused before any
//! encoding, naming what is wrong; one it can take encodes on emu and loads boxes (the
//! selftest's `bulk` rows check what lands).

use vgg_cuda::device::{TensorMap, TensorMap2dSpec};
use vgg_cuda::{Device, Tensor};

fn spec() -> TensorMap2dSpec {
    TensorMap2dSpec { inner: 200, outer: 300, row_stride: 416, box_inner: 64, box_outer: 256, swizzle128: true }
}

#[test]
fn specs_the_copy_engine_cannot_take_are_refused_by_name() {
    let dev = Device::emu();
    let m = Tensor::<u8>::zeros(&dev, &[416 * 300]).unwrap();
    let base = m.device_ptr();
    let cases: [(u64, TensorMap2dSpec, &str); 7] = [
        (base + 8, spec(), "not 16-byte aligned"),
        (base, TensorMap2dSpec { row_stride: 408, ..spec() }, "row stride 408"),
        (base, TensorMap2dSpec { row_stride: 384, ..spec() }, "row stride 384"),
        (base, TensorMap2dSpec { box_inner: 60, ..spec() }, "box 256 x 60"),
        (base, TensorMap2dSpec { box_outer: 257, ..spec() }, "box 257 x 64"),
        (base, TensorMap2dSpec { box_inner: 32, ..spec() }, "128-byte swizzle needs boxes 64"),
        (base, TensorMap2dSpec { inner: 0, ..spec() }, "300 x 0 elements"),
    ];
    for (b, s, needle) in cases {
        let e = TensorMap::new_2d(&dev, b, s).err().unwrap_or_else(|| panic!("{s:?} at {b:#x} accepted")).to_string();
        assert!(e.contains(needle) && e.contains("tensor map"), "{s:?}: {e}");
    }
    let ok = TensorMap::new_2d(&dev, base, spec()).unwrap();
    assert_eq!(ok.box_bytes(), 32768);
    let unswizzled = TensorMap2dSpec { box_inner: 32, box_outer: 16, swizzle128: false, ..spec() };
    assert_eq!(TensorMap::new_2d(&dev, base, unswizzled).unwrap().box_bytes(), 1024);
}

/// Maps of other ranks (an NHWC tensor as C, W, H, N): checked the same way, by name.
#[test]
fn nd_specs_are_checked_by_name() {
    use vgg_cuda::device::TensorMapSpec;
    let dev = Device::emu();
    let m = Tensor::<u8>::zeros(&dev, &[2 * 64 * 7 * 5 * 2]).unwrap();
    let base = m.device_ptr();
    let nhwc = TensorMapSpec {
        dims: vec![64, 7, 5, 2],
        strides: vec![128, 128 * 7, 128 * 35],
        boxd: vec![64, 9, 3, 1],
        swizzle128: true,
    };
    assert_eq!(TensorMap::new(&dev, base, &nhwc).unwrap().box_bytes(), 2 * 64 * 27);
    let bad = |f: &dyn Fn(&mut TensorMapSpec), needle: &str| {
        let mut s = nhwc.clone();
        f(&mut s);
        let e = TensorMap::new(&dev, base, &s).err().unwrap_or_else(|| panic!("{s:?} accepted")).to_string();
        assert!(e.contains(needle), "{s:?}: {e}");
    };
    bad(
        &|s| {
            s.strides.pop();
        },
        "one stride fewer",
    );
    bad(&|s| s.dims = vec![1; 6], "rank 6");
    bad(&|s| s.boxd[1] = 257, "box [64, 257, 3, 1]");
    bad(&|s| s.strides[1] = 112, "strides [128, 112, 4480]");
    // H rows 7 x 128 bytes apart would overlap images 6 rows of 128 bytes apart: refused.
    bad(&|s| s.strides[2] = 128 * 7 * 4, "each spanning the dimension below");
    bad(&|s| s.strides[0] = 112, "at least a row's 128 bytes");
    bad(&|s| s.boxd[0] = 32, "needs boxes 64 elements");
}
