//! Helpers shared by the integration tests: scratch folders, the `vgg` binary, and the
//! one-line error it must give where no GPU is usable.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use vgg_cuda::device::cuda_report;

/// Runs the `vgg` binary with `args`.
pub fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().expect("running the vgg binary")
}

/// Where no GPU is usable, `vgg args` fails with one line of stderr that starts with
/// `expect` (and no panic); where one is, there is nothing to check.
pub fn assert_fails_without_gpu_in_one_line(args: &[&str], expect: &str) {
    if cuda_report().unusable_because.is_none() {
        eprintln!("a usable GPU is present: the no-GPU error cannot be checked here");
        return;
    }
    let out = vgg(args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with(expect), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

/// A fresh, empty folder `vgg-<what>-test-<pid>-<name>` under the temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str, name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vgg-{what}-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

/// The folder's path, so that a `TempDir` is used where a `&Path` is (`dir.join(..)`, `&dir`).
impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vgg eval` arguments for the emu device with small batches and a short synthetic set, so
/// that the runs stay quick; tests state only what they change.
pub fn emu_eval_args(weights: Vec<PathBuf>, data: &str) -> vgg_cuda::eval::EvalArgs {
    vgg_cuda::eval::EvalArgs {
        weights,
        data: data.into(),
        device: "emu".into(),
        batch: 8,
        synthetic_len: 8,
        quiet: true,
        ..Default::default()
    }
}
