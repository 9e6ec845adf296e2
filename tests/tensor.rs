//! Tensors refuse, with an error, what would otherwise fault on a GPU: views off the kernels'
//! 16-byte alignment.

use half::f16;
use std::sync::Arc;
use vgg_cuda::{Device, Error, Tensor};

/// The kernels load and store 16 bytes at a time: a view must start on a multiple of 16 bytes
/// of its (256-byte aligned) base, even where its element size would allow less.
#[test]
fn views_start_on_16_byte_offsets() {
    let dev = Device::emu();
    let base = Arc::new(Tensor::<u8>::zeros(&dev, &[4096]).unwrap());
    for offset in [2, 4, 8, 24, 4082] {
        let e = Tensor::<f16>::view(&base, offset, &[4]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Shape(_)), "{msg}");
        assert!(msg.contains(&format!("byte {offset}")) && msg.contains("multiple of 16 bytes"), "{msg}");
    }
    for offset in [0, 16, 256, 4080] {
        let v = Tensor::<f16>::view(&base, offset, &[8]).unwrap();
        assert_eq!(v.device_ptr() % 16, 0, "offset {offset}");
    }
    let e = Tensor::<f16>::view(&base, 4080, &[9]).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
}
