//! Tensors, launch configs and pinned buffers refuse, with an error, what would otherwise
//! fault on a GPU or panic or wrap on the host: views off the kernels' 16-byte alignment,
//! shapes whose sizes overflow, blocks of zero threads, buffers too large to address.

use half::f16;
use std::sync::Arc;
use vgg_cuda::{Device, Error, LaunchConfig, PinnedBuffer, Tensor};

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

/// A shape whose element count overflows (and would wrap to the tensor's own) is refused.
#[test]
fn reshape_refuses_overflowing_shapes() {
    let dev = Device::emu();
    let t = Tensor::<f32>::zeros(&dev, &[4]).unwrap();
    // (2^62 + 1) * 4 wraps to 4 in 64 bits.
    let e = t.reshape(&[(1 << 62) + 1, 4]).unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && e.to_string().contains("cannot reshape [4]"), "{e}");
    let t = Tensor::<f32>::zeros(&dev, &[4]).unwrap();
    assert_eq!(t.reshape(&[2, 1, 2]).unwrap().shape(), [2, 1, 2]);
}

#[test]
fn a_launch_of_zero_threads_a_block_is_an_error() {
    let e = LaunchConfig::for_elements(10, 0).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("at least one thread"), "{e}");
    assert_eq!(LaunchConfig::for_elements(10, 4).unwrap().grid, (3, 1, 1));
}

/// Lengths whose bytes overflow, exceed `isize::MAX` or cannot be allocated are errors.
#[test]
fn pinned_buffers_too_large_to_address_are_errors() {
    let dev = Device::emu();
    for len in [usize::MAX / 2, isize::MAX as usize / 4 + 1, 1 << 58] {
        match PinnedBuffer::<f32>::new(&dev, len) {
            Err(Error::Shape(m)) => assert!(m.contains(&format!("{len} f32 elements")), "{m}"),
            other => panic!("{len} elements: expected a shape error, got {:?}", other.map(|b| b.len())),
        }
    }
    assert_eq!(PinnedBuffer::<f32>::new(&dev, 3).unwrap().len(), 3);
}
