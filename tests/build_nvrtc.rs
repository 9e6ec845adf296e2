//! The unit tests of build/nvrtc.rs (its `#[cfg(test)]` module: the ptxas log parser behind
//! the resource table tests/build_artifacts.rs checks). build.rs includes the file with
//! `#[path]`, and cargo never tests a build script, so this target includes it the same way.

#[path = "../build/nvrtc.rs"]
mod nvrtc;
