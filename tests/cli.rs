//! The command line as a shell uses it.

/// `vgg info | head -1`: the reader is gone before vgg writes. vgg must end quietly (killed by
/// SIGPIPE, as other Unix tools are) instead of panicking in println!.
#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every write now fails with EPIPE
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["info", "--model", "D"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}
