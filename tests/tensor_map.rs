//! 2-D tensor maps (TMA descriptors): a spec the copy engine cannot take is refused before any
//! encoding, naming what is wrong; one it can take encodes on emu and loads boxes (the
//! selftest's `bulk` rows check what lands).

use vgg_cuda::device::{TensorMap2d, TensorMap2dSpec};
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
        let e = TensorMap2d::new(&dev, b, s).err().unwrap_or_else(|| panic!("{s:?} at {b:#x} accepted")).to_string();
        assert!(e.contains(needle) && e.contains("tensor map"), "{s:?}: {e}");
    }
    let ok = TensorMap2d::new(&dev, base, spec()).unwrap();
    assert_eq!(ok.spec().box_bytes(), 32768);
    let unswizzled = TensorMap2dSpec { box_inner: 32, box_outer: 16, swizzle128: false, ..spec() };
    assert_eq!(TensorMap2d::new(&dev, base, unswizzled).unwrap().spec().box_bytes(), 1024);
}
