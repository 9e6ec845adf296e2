//! `vgg bench data`: how many images per second the pipeline decodes and augments, on one
//! core and on all workers, and where one core's time goes (decode, resize, the rest).

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{DataError, Dataset, Loader, LoaderConfig, StageTimes, Subset, Transform};

/// One measurement of the pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct DataBenchReport {
    /// What the images come from, as the caller named it.
    pub source: String,
    /// The transform, as [`Transform::describe`] words it.
    pub transform: String,
    /// Images run through the pipeline (the sample: fewer than asked when the dataset is
    /// smaller).
    pub images: usize,
    /// Images skipped as unreadable (in the one-core pass).
    pub skipped: usize,
    /// Loader threads of the total rate (the last count measured).
    pub workers: usize,
    /// CPUs this machine offers (`available_parallelism`).
    pub cores: usize,
    /// Images/s of the calling thread alone (no workers).
    pub per_core_images_per_s: f64,
    /// Images/s of `workers` threads.
    pub total_images_per_s: f64,
    /// (worker threads, images/s) for every count measured, the last being `workers`: how the
    /// rate scales with threads (on a machine whose "cores" are hyperthreads, expect the
    /// per-worker rate to halve past the physical core count).
    pub scaling: Vec<(usize, f64)>,
    /// Milliseconds per image on one core: reading and decoding.
    pub decode_ms: f64,
    /// Milliseconds per image on one core: the antialiased rescale.
    pub resize_ms: f64,
    /// Milliseconds per image on one core: flip, colour shift and the copy into the batch.
    pub finish_ms: f64,
}

impl DataBenchReport {
    /// The report as the lines `vgg bench data` prints.
    pub fn text(&self) -> String {
        let total = self.decode_ms + self.resize_ms + self.finish_ms;
        let pct = |x: f64| 100.0 * x / total.max(1e-12);
        format!(
            "bench data: {} ({}), {} images, {} skipped\n\
             one core:   {:>8.1} images/s  ({:.2} ms/image: decode {:.2} ms {:.0}%, resize {:.2} ms {:.0}%, \
             crop/flip/colour {:.2} ms {:.0}%)\n\
             {} workers: {:>8.1} images/s total, {:.1} per worker ({} cores on this machine){}",
            self.source,
            self.transform,
            self.images,
            self.skipped,
            self.per_core_images_per_s,
            total,
            self.decode_ms,
            pct(self.decode_ms),
            self.resize_ms,
            pct(self.resize_ms),
            self.finish_ms,
            pct(self.finish_ms),
            self.workers,
            self.total_images_per_s,
            self.total_images_per_s / self.workers.max(1) as f64,
            self.cores,
            if self.scaling.len() > 1 {
                let steps: Vec<String> = self.scaling.iter().map(|(w, r)| format!("{w}: {r:.1}")).collect();
                format!("\nscaling (workers: images/s): {}", steps.join(", "))
            } else {
                String::new()
            },
        )
    }
}

fn ms_per(d: std::time::Duration, t: &StageTimes) -> f64 {
    d.as_secs_f64() * 1e3 / t.images.max(1) as f64
}

/// Runs `images` images of `ds` (a seeded sample) through `transform`: once on the calling
/// thread (per-core rate and stage split), then with each count of loader threads in `workers`
/// (the last one is the report's total rate; an empty list means one).
pub fn run(
    ds: Arc<dyn Dataset>,
    source: &str,
    transform: Transform,
    images: usize,
    workers: &[usize],
    batch: usize,
    strict: bool,
) -> Result<DataBenchReport, DataError> {
    let sub: Arc<dyn Dataset> = Arc::new(Subset::sample(ds, images, 1));
    let n = sub.len();
    let describe = transform.describe();
    let cfg = LoaderConfig { batch, shuffle: false, seed: 7, workers: 0, drop_last: false, prefetch: 4, strict };
    let pass = |workers: usize| -> Result<(f64, StageTimes, usize), DataError> {
        let loader = Loader::try_new(sub.clone(), transform.clone(), LoaderConfig { workers, ..cfg.clone() })?;
        let t0 = Instant::now();
        let mut epoch = loader.epoch(0);
        let mut skipped = 0;
        for b in epoch.by_ref() {
            let b = b?;
            skipped += b.skipped;
            loader.recycle(b);
        }
        let wall = t0.elapsed().as_secs_f64();
        Ok((wall, epoch.summary().times, skipped))
    };
    let (wall1, times, skipped) = pass(0)?;
    if skipped == n {
        return Err(DataError::NoImage { skipped });
    }
    let done = (n - skipped) as f64;
    let counts: Vec<usize> = if workers.is_empty() { vec![1] } else { workers.iter().map(|&w| w.max(1)).collect() };
    let mut scaling = vec![];
    for &w in &counts {
        scaling.push((w, done / pass(w)?.0.max(1e-9)));
    }
    let (last_workers, total) = scaling[scaling.len() - 1];
    Ok(DataBenchReport {
        source: source.to_string(),
        transform: describe,
        images: n,
        skipped,
        workers: last_workers,
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        per_core_images_per_s: done / wall1.max(1e-9),
        total_images_per_s: total,
        scaling,
        decode_ms: ms_per(times.decode, &times),
        resize_ms: ms_per(times.resize, &times),
        finish_ms: ms_per(times.finish, &times),
    })
}
