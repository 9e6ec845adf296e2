//! Per-launch device times: where a training step's time goes, kernel by kernel
//! (`vgg bench train --profile`).
//!
//! Between [`Device::profile_start`] and [`Device::profile_stop`] every kernel launch and
//! memset is timed on its own: on cuda by a pair of events recorded on the stream around it,
//! on emu (which runs each launch as it is queued) by the wall clock. The events cost a few
//! microseconds of device time each, so a profiled step runs a little slower than a plain one;
//! the bench prints both. Each launch carries the label last set with
//! [`Device::profile_label`] (the model sets the layer and pass, e.g. `bwd conv3_2`). Launches
//! made while capturing a graph are not profiled (they do not run then).

use super::{cuda, Backend, Device};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// One profiled launch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LaunchTime {
    /// The label current when it was queued.
    pub label: String,
    /// The kernel's name, or `memset`.
    pub kernel: &'static str,
    /// Device milliseconds from its start to its end.
    pub ms: f64,
}

enum Span {
    Cuda(cuda::StreamMark, cuda::StreamMark),
    Wall(f64),
}

/// The launches profiled so far, their times not read yet.
pub(crate) struct Profile {
    label: Arc<str>,
    spans: Vec<(Arc<str>, &'static str, Span)>,
}

impl Device {
    /// Starts timing each launch and memset on its own, until [`Device::profile_stop`].
    pub fn profile_start(&self) -> Result<()> {
        self.not_capturing("starting a profile")?;
        let mut p = self.0.profile.lock().unwrap();
        if p.is_some() {
            return Err(Error::Shape("Device::profile_start: a profile is already running".into()));
        }
        *p = Some(Profile { label: Arc::from(""), spans: vec![] });
        Ok(())
    }

    /// Whether a profile is running (so that callers build labels only then).
    pub fn profiling(&self) -> bool {
        self.0.profile.lock().unwrap().is_some()
    }

    /// The label of the launches queued from now on (ignored when no profile runs).
    pub fn profile_label(&self, label: &str) {
        if let Some(p) = self.0.profile.lock().unwrap().as_mut() {
            if &*p.label != label {
                p.label = Arc::from(label);
            }
        }
    }

    /// Waits for the device and returns every launch profiled since
    /// [`Device::profile_start`], in the order queued.
    pub fn profile_stop(&self) -> Result<Vec<LaunchTime>> {
        let p = self.0.profile.lock().unwrap().take();
        let p = p.ok_or_else(|| Error::Shape("Device::profile_stop: no profile is running".into()))?;
        self.synchronize()?;
        p.spans
            .into_iter()
            .map(|(label, kernel, span)| {
                let ms = match span {
                    Span::Cuda(a, b) => a.ms_to(&b)?,
                    Span::Wall(ms) => ms,
                };
                Ok(LaunchTime { label: label.to_string(), kernel, ms })
            })
            .collect()
    }

    /// Runs `op` (a launch or memset queued on the stream), timed under a running profile.
    pub(crate) fn profiled(&self, kernel: &'static str, op: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.0.profile.lock().unwrap().is_none() || self.is_capturing() {
            return op();
        }
        let span = match &self.0.backend {
            Backend::Cuda(c) => {
                let a = c.mark()?;
                op()?;
                Span::Cuda(a, c.mark()?)
            }
            Backend::Emu(_) => {
                let t = Instant::now();
                op()?;
                Span::Wall(t.elapsed().as_secs_f64() * 1e3)
            }
        };
        if let Some(p) = self.0.profile.lock().unwrap().as_mut() {
            p.spans.push((p.label.clone(), kernel, span));
        }
        Ok(())
    }
}
