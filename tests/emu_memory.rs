//! The emu device's memory: a limit that stands in for a GPU's, counted over live tensors.

use vgg_cuda::{Device, Tensor};

#[test]
fn tensors_beyond_the_emu_limit_are_an_error_and_freeing_makes_room() {
    let dev = Device::emu();
    dev.set_emu_memory_limit(64 << 20);
    let a = Tensor::<u8>::zeros(&dev, &[32 << 20]).unwrap();
    let err = Tensor::<u8>::zeros(&dev, &[40 << 20]).unwrap_err().to_string();
    assert!(err.contains("out of device memory"), "{err}");
    drop(a);
    let b = Tensor::<u8>::zeros(&dev, &[40 << 20]).unwrap();
    assert_eq!(b.len(), 40 << 20);
}
