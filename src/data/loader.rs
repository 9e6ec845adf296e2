//! The threaded loader: batches of transformed images, built by worker threads ahead of
//! the consumer, delivered in order.
//!
//! Workers claim whole batches (batch `b` is positions `b * batch..` of the epoch's order)
//! and may run at most `prefetch + workers` batches ahead of the consumer, so memory stays
//! bounded; finished batches are re-ordered before delivery. The epoch's order is a
//! seeded shuffle of (seed, epoch) and every augmentation draw comes from (seed, epoch,
//! image index), so the batches are identical for any number of workers. Buffers handed
//! back with [`Loader::recycle`] are reused.
//!
//! An unreadable image (empty, truncated, corrupt, not an image) is reported on stderr
//! with its path and reason, left out of its batch (which is then short; a batch may even
//! be empty) and counted in [`HostBatch::skipped`] and the [`EpochSummary`]; with
//! `strict` it ends the epoch with the error instead.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{shuffled, DataError, Dataset, StageTimes, Transform, Worker};

/// How the loader batches, orders and parallelises.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images a batch (at least 1; exactly 1 for whole-image test batches).
    pub batch: usize,
    /// A new seeded permutation every epoch; otherwise dataset order.
    pub shuffle: bool,
    /// Seed of the shuffle and of every augmentation draw.
    pub seed: u64,
    /// Worker threads; 0 builds batches on the calling thread, on demand.
    pub workers: usize,
    /// Drop the last, short batch of an epoch instead of delivering it.
    pub drop_last: bool,
    /// Batches that may wait, finished, beyond the ones being built.
    pub prefetch: usize,
    /// An unreadable image is an error instead of being skipped.
    pub strict: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { batch: 32, shuffle: true, seed: 0, workers: cores, drop_last: false, prefetch: 4, strict: false }
    }
}

/// One batch on the host: u8 RGB images, NHWC, ready to upload for
/// [`crate::ops::normalize_input`] (flips already applied: pass no flip flags).
#[derive(Clone, Debug, Default)]
pub struct HostBatch {
    /// `n * height * width * 3` bytes.
    pub images: Vec<u8>,
    /// Class index of each image.
    pub labels: Vec<i32>,
    /// Images in the batch: the batch size less the skipped ones (and less the missing ones
    /// in an epoch's last, short batch).
    pub n: usize,
    /// Side of the square images (the crop); 0 for whole-image test batches, whose size
    /// is `height` x `width`.
    pub size: u32,
    /// Images of this batch left out as unreadable.
    pub skipped: usize,
    /// Height of every image of the batch, in pixels.
    pub height: u32,
    /// Width of every image of the batch, in pixels.
    pub width: u32,
    /// Position of this batch in the epoch.
    pub index: usize,
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    /// Why each skipped image was left out.
    pub failures: Vec<DataError>,
    /// Dataset index of each skipped image, in the order of `failures`.
    pub failed: Vec<usize>,
}

/// Totals of an epoch so far; `times` are complete once the epoch has ended.
#[derive(Clone, Debug, Default)]
pub struct EpochSummary {
    /// The epoch's number.
    pub epoch: u64,
    /// Batches delivered.
    pub batches: usize,
    /// Images delivered (skipped ones not counted).
    pub images: usize,
    /// Images left out as unreadable.
    pub skipped: usize,
    /// "path: reason" of each skipped image.
    pub failures: Vec<String>,
    /// Summed over workers (thread time, not wall time).
    pub times: StageTimes,
    /// Wall time from the epoch's start to the last batch delivered (or the epoch's end).
    pub elapsed: Duration,
}

impl EpochSummary {
    /// One line for reports: batches, images, the rate in images/s over `elapsed`, and the
    /// skipped count.
    pub fn line(&self) -> String {
        let rate = self.images as f64 / self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "data epoch {}: {} batches, {} images ({rate:.0}/s), {} unreadable images skipped",
            self.epoch, self.batches, self.images, self.skipped
        )
    }
}

/// Batches of a dataset under a transform.
pub struct Loader {
    ds: Arc<dyn Dataset>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    invalid: Option<DataError>,
    pool: Arc<Mutex<Vec<HostBatch>>>,
}

impl Loader {
    /// A loader; invalid settings are reported by the first item of every epoch (see
    /// [`Loader::try_new`] to get them here instead).
    pub fn new(ds: Arc<dyn Dataset>, transform: impl Into<Transform>, cfg: LoaderConfig) -> Self {
        let transform = transform.into();
        let invalid = Self::check(&*ds, &transform, &cfg).err();
        Self { ds, transform: Arc::new(transform), cfg, invalid, pool: Arc::default() }
    }

    /// [`Loader::new`], with invalid settings (transform, batch 0, a whole-image batch above
    /// 1, an empty dataset) as an error here.
    pub fn try_new(
        ds: Arc<dyn Dataset>,
        transform: impl Into<Transform>,
        cfg: LoaderConfig,
    ) -> Result<Self, DataError> {
        let l = Self::new(ds, transform, cfg);
        match &l.invalid {
            Some(e) => Err(e.clone()),
            None => Ok(l),
        }
    }

    fn check(ds: &dyn Dataset, t: &Transform, cfg: &LoaderConfig) -> Result<(), DataError> {
        t.validate()?;
        if cfg.batch == 0 {
            return Err(DataError::Config("batch size 0".into()));
        }
        if t.output_size().is_none() && cfg.batch != 1 {
            return Err(DataError::Config(format!(
                "whole-image test batches hold one image (sizes vary), got batch {}",
                cfg.batch
            )));
        }
        if ds.is_empty() {
            return Err(DataError::Config("the dataset is empty".into()));
        }
        Ok(())
    }

    /// The dataset it loads.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.ds
    }

    /// Its settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The transform every image goes through.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Batches per epoch (each may be short by its skipped images).
    pub fn batches(&self) -> usize {
        let n = self.ds.len();
        if self.cfg.batch == 0 {
            0
        } else if self.cfg.drop_last {
            n / self.cfg.batch
        } else {
            n.div_ceil(self.cfg.batch)
        }
    }

    /// Hands a consumed batch's buffers back for reuse.
    pub fn recycle(&self, batch: HostBatch) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.cfg.prefetch + self.cfg.workers + 2 {
            pool.push(batch);
        }
    }

    /// The batches of epoch `epoch`, built in background threads while they are consumed.
    /// Dropping the iterator stops the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let n = self.ds.len();
        let order = if self.cfg.shuffle { shuffled(n, self.cfg.seed, epoch) } else { (0..n).collect() };
        let shared = Arc::new(Shared {
            ds: self.ds.clone(),
            transform: self.transform.clone(),
            cfg: self.cfg.clone(),
            epoch,
            order,
            pool: self.pool.clone(),
            gate: Mutex::new(Gate { next: 0, delivered: 0, stop: false }),
            cv: Condvar::new(),
        });
        let nbatches = if self.invalid.is_some() { 0 } else { self.batches() };
        let mut e = Epoch {
            shared: shared.clone(),
            nbatches,
            next: 0,
            pending: BTreeMap::new(),
            rx: None,
            threads: vec![],
            local: Worker::default(),
            invalid: self.invalid.clone(),
            done: false,
            summary: EpochSummary { epoch, ..Default::default() },
            started: Instant::now(),
        };
        if self.cfg.workers > 0 && nbatches > 0 {
            let (tx, rx) = channel();
            for _ in 0..self.cfg.workers.min(nbatches) {
                let (s, tx) = (shared.clone(), tx.clone());
                e.threads.push(std::thread::spawn(move || {
                    let mut w = Worker::default();
                    while let Some(b) = s.claim(nbatches) {
                        let r = s.build_caught(b, &mut w);
                        if tx.send((b, r)).is_err() {
                            break;
                        }
                    }
                    w.times
                }));
            }
            e.rx = Some(rx);
        }
        e
    }
}

struct Gate {
    next: usize,
    delivered: usize,
    stop: bool,
}

struct Shared {
    ds: Arc<dyn Dataset>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    epoch: u64,
    order: Vec<usize>,
    pool: Arc<Mutex<Vec<HostBatch>>>,
    gate: Mutex<Gate>,
    cv: Condvar,
}

impl Shared {
    /// The next batch to build, once the window allows; `None` when done or stopped.
    fn claim(&self, nbatches: usize) -> Option<usize> {
        let window = self.cfg.prefetch + self.cfg.workers;
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        while !g.stop && g.next < nbatches && g.next >= g.delivered + window {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.stop || g.next >= nbatches {
            return None;
        }
        g.next += 1;
        Some(g.next - 1)
    }

    fn build_caught(&self, b: usize, w: &mut Worker) -> Result<HostBatch, DataError> {
        catch_unwind(AssertUnwindSafe(|| self.build(b, w))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(DataError::Worker(format!("batch {b}: {msg}")))
        })
    }

    fn build(&self, b: usize, w: &mut Worker) -> Result<HostBatch, DataError> {
        let cfg = &self.cfg;
        let idx = &self.order[b * cfg.batch..((b + 1) * cfg.batch).min(self.order.len())];
        let mut hb = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        let size = self.transform.output_size();
        hb.images.clear();
        hb.labels.clear();
        hb.indices.clear();
        hb.failures.clear();
        hb.failed.clear();
        if let Some(s) = size {
            hb.images.reserve(idx.len() * s as usize * s as usize * 3);
        }
        hb.index = b;
        hb.size = size.unwrap_or(0);
        (hb.width, hb.height) = (size.unwrap_or(0), size.unwrap_or(0));
        for &i in idx {
            match w.process(&*self.ds, &self.transform, cfg.seed, self.epoch, i, &mut hb.images) {
                Ok(p) => {
                    hb.labels.push(p.label as i32);
                    hb.indices.push(i);
                    (hb.width, hb.height) = (p.width, p.height);
                }
                Err(e) if !cfg.strict && e.is_per_image() => {
                    eprintln!("warning: skipped {e}");
                    hb.failures.push(e);
                    hb.failed.push(i);
                }
                Err(e) => return Err(e),
            }
        }
        hb.n = hb.labels.len();
        hb.skipped = hb.failures.len();
        Ok(hb)
    }
}

/// The batches of one epoch, in order. Ends after the last batch, or after the first error.
pub struct Epoch {
    shared: Arc<Shared>,
    nbatches: usize,
    next: usize,
    pending: BTreeMap<usize, Result<HostBatch, DataError>>,
    rx: Option<Receiver<(usize, Result<HostBatch, DataError>)>>,
    threads: Vec<JoinHandle<StageTimes>>,
    local: Worker,
    invalid: Option<DataError>,
    done: bool,
    summary: EpochSummary,
    started: Instant,
}

impl Epoch {
    /// Batches this epoch delivers (if nothing fails).
    pub fn batches(&self) -> usize {
        self.nbatches
    }

    /// Totals so far; stage times are complete after the last batch.
    pub fn summary(&self) -> &EpochSummary {
        &self.summary
    }

    fn stop(&mut self) {
        {
            let mut g = self.shared.gate.lock().unwrap_or_else(|p| p.into_inner());
            g.stop = true;
        }
        self.shared.cv.notify_all();
        self.rx = None;
        self.pending.clear();
        for t in self.threads.drain(..) {
            if let Ok(times) = t.join() {
                self.summary.times.add(&times);
            }
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.stop();
            self.summary.times.add(&std::mem::take(&mut self.local.times));
            self.summary.elapsed = self.started.elapsed();
        }
    }

    fn receive(&mut self, b: usize) -> Result<HostBatch, DataError> {
        let Some(rx) = &self.rx else {
            return self.shared.build(b, &mut self.local);
        };
        loop {
            if let Some(r) = self.pending.remove(&b) {
                return r;
            }
            match rx.recv() {
                Ok((i, r)) => {
                    self.pending.insert(i, r);
                }
                Err(_) => return Err(DataError::Worker(format!("all workers exited before batch {b}"))),
            }
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<HostBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.invalid.take() {
            self.finish();
            return Some(Err(e));
        }
        if self.done || self.next >= self.nbatches {
            self.finish();
            return None;
        }
        let b = self.next;
        let r = self.receive(b);
        self.next += 1;
        {
            let mut g = self.shared.gate.lock().unwrap_or_else(|p| p.into_inner());
            g.delivered = self.next;
        }
        self.shared.cv.notify_all();
        match &r {
            Ok(hb) => {
                self.summary.batches += 1;
                self.summary.images += hb.n;
                self.summary.skipped += hb.skipped;
                self.summary.failures.extend(hb.failures.iter().map(|e| e.to_string()));
                self.summary.elapsed = self.started.elapsed();
                if self.next >= self.nbatches {
                    self.finish();
                }
            }
            Err(_) => self.finish(),
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.done { 0 } else { self.nbatches - self.next };
        (0, Some(left + self.invalid.is_some() as usize))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop();
    }
}
