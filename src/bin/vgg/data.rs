//! `vgg prep`, `vgg stats` and `vgg bench data`: the commands over image folders.

use anyhow::{bail, Context, Result};
use vgg_cuda::atomic;

#[derive(clap::Args)]
pub(crate) struct DataSourceArgs {
    /// An ImageFolder: one sub-folder per class (torchvision's layout and class order),
    /// or a shard directory written by `vgg prep` (detected by its index.json). A folder
    /// with a train/ sub-folder means that training set, as for `vgg train`.
    dir: Option<std::path::PathBuf>,
    /// Use generated images (encoded as JPEG in memory, so decoding is real) instead of DIR.
    #[arg(long)]
    synthetic: bool,
    /// Synthetic images: shorter side (the other up to 1/4 longer).
    #[arg(long, default_value_t = 375)]
    synthetic_size: u32,
    /// Seed of the image sample and of the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An unreadable image is an error instead of being reported and skipped.
    #[arg(long)]
    strict: bool,
}

impl DataSourceArgs {
    /// The dataset and a description; synthetic: `n` images.
    fn open(&self, n: usize) -> Result<(std::sync::Arc<dyn vgg_cuda::data::Dataset>, String)> {
        use vgg_cuda::data::{Dataset, ImageFolder, MemoryDataset, Synthetic};
        // A split folder (train/, maybe val/) means its training set, as for `vgg train`.
        let dir = match &self.dir {
            Some(d) if !self.synthetic => Some(match vgg_cuda::data::split_dirs(d)? {
                Some((train, _)) => {
                    eprintln!("{} has a train/ folder: using {} (as `vgg train` does)", d.display(), train.display());
                    train
                }
                None => d.clone(),
            }),
            d => d.clone(),
        };
        match (&dir, self.synthetic) {
            (Some(_), true) => bail!("give either DIR or --synthetic, not both"),
            (None, false) => bail!("give an ImageFolder DIR, or --synthetic"),
            (Some(dir), false) if vgg_cuda::data::Shards::is_shard_dir(dir) => {
                let ds = vgg_cuda::data::Shards::open(dir)?;
                let what = format!(
                    "shards {} ({} images, {} classes, {}, {:.0} KiB each)",
                    dir.display(),
                    ds.len(),
                    ds.classes().len(),
                    ds.index().encoding,
                    ds.bytes() as f64 / 1024.0 / ds.len().max(1) as f64
                );
                Ok((std::sync::Arc::new(ds), what))
            }
            (Some(dir), false) => {
                let ds = ImageFolder::open(dir)?;
                let what = format!("{} ({} images, {} classes)", dir.display(), ds.len(), ds.classes().len());
                Ok((std::sync::Arc::new(ds), what))
            }
            (None, true) => {
                if self.synthetic_size == 0 {
                    bail!("--synthetic-size must be at least 1");
                }
                vgg_cuda::data::check_side("--synthetic-size", self.synthetic_size)?;
                let ds = MemoryDataset::jpeg_of(&Synthetic::new(10, self.synthetic_size, n, self.seed), 90)?;
                let what = format!(
                    "synthetic JPEGs ({n} images, shorter side {}, quality 90, {:.0} KiB each)",
                    self.synthetic_size,
                    ds.bytes() as f64 / 1024.0 / n.max(1) as f64
                );
                Ok((std::sync::Arc::new(ds), what))
            }
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct PrepArgs {
    /// The source ImageFolder; a folder with train/ (and val/) ImageFolders, prepped into
    /// OUT/train and OUT/val (which `vgg train --data OUT` reads); or `synthetic` for the
    /// built-in generated set (benchmarks).
    src: std::path::PathBuf,
    /// With `synthetic`: how many images.
    #[arg(long, default_value_t = 2048)]
    images: usize,
    /// With `synthetic`: their shorter side (the other up to 1/4 longer).
    #[arg(long, default_value_t = 375)]
    synthetic_size: u32,
    /// The shard directory to write: new, empty, or a previous prep output (replaced only
    /// once the new one is complete); never the source or a folder holding it.
    out: std::path::PathBuf,
    /// Rescale so that the shorter side is this (Smax of scale jittering; never upscales; 0: native).
    #[arg(long, default_value_t = 512)]
    max_side: u32,
    /// Images per shard file.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Store JPEGs of this quality (1-100) instead of raw RGB (smaller, but decoded on load).
    // The range is JPEG's, checked by clap: as a bare u8, 300 was refused as "not in 0..=255".
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: Option<u8>,
    /// An unreadable image is an error instead of being reported and skipped.
    #[arg(long)]
    strict: bool,
}

pub(crate) fn prep_cmd(a: PrepArgs) -> Result<()> {
    use vgg_cuda::data::prep::{prep, prep_split, PrepConfig};
    let cfg = PrepConfig { max_side: a.max_side, shard_size: a.shard_size, quality: a.quality, strict: a.strict };
    // On a terminal the progress line is rewritten in place (and ended before anything else is
    // printed); in a log or pipe a carriage return rewrites nothing and the reports ran together
    // on one line, so there each is a line of its own.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let shown = std::cell::Cell::new(false);
    let split_shown = std::cell::RefCell::new(String::new());
    let progress = |split: &str, done, all| {
        let what = if split.is_empty() { String::new() } else { format!(" {split}") };
        if tty {
            // A new split starts a line of its own.
            if shown.get() && *split_shown.borrow() != split {
                eprintln!();
            }
            split_shown.replace(split.to_string());
            eprint!("\rprep{what}: {done}/{all} images");
            shown.set(true);
        } else {
            eprintln!("prep{what}: {done}/{all} images");
        }
    };
    // (split name, report, its folder) of each shard set written.
    let reps = if a.src.as_os_str() == "synthetic" {
        if a.images == 0 || a.synthetic_size == 0 {
            bail!("--images and --synthetic-size must be at least 1");
        }
        vgg_cuda::data::check_side("--synthetic-size", a.synthetic_size)?;
        let ds = vgg_cuda::data::Synthetic::new(10, a.synthetic_size, a.images, 0);
        vgg_cuda::data::prep::prep_dataset(&ds, None, &a.out, &cfg, |d, n| progress("", d, n))
            .map(|r| vec![("", r, a.out.clone())])
    } else if vgg_cuda::data::split_dirs(&a.src)?.is_some() {
        // A train/ (and val/) root, as `vgg train --data` reads it: one shard set per split.
        prep_split(&a.src, &a.out, &cfg, progress).map(|r| {
            let mut v = vec![("train", r.train, a.out.join("train"))];
            v.extend(r.val.map(|val| ("val", val, a.out.join("val"))));
            v
        })
    } else {
        prep(&a.src, &a.out, &cfg, |d, n| progress("", d, n)).map(|r| vec![("", r, a.out.clone())])
    };
    if shown.get() {
        eprintln!();
    }
    for (split, rep, dir) in reps? {
        for f in &rep.failures {
            eprintln!("warning: skipped {f}");
        }
        let what = if split.is_empty() { String::new() } else { format!(" {split}") };
        println!(
            "prep{what}: {} images ({} skipped), {} classes -> {} shards in {}, {:.1} MiB ({:.0} KiB/image), {:.1} s",
            rep.images,
            rep.skipped,
            rep.classes,
            rep.shards,
            dir.display(),
            rep.bytes as f64 / (1 << 20) as f64,
            rep.bytes as f64 / 1024.0 / rep.images.max(1) as f64,
            rep.seconds
        );
        let (n, names) = (rep.empty_classes.len(), rep.empty_classes.join(", "));
        let (es, it) = if n == 1 { ("", "it") } else { ("es", "them") };
        // A validation split may lack a class (labelled by the training set's classes).
        if n > 0 && split == "val" {
            eprintln!("note: prep{what}: these validation shards hold no image of class{es} {names}");
        } else if n > 0 {
            eprintln!(
                "warning: prep{what}: no image stored of class{es} {names} (every one unreadable, or none in the \
                 source): a model trained on these shards never sees {it}"
            );
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    /// Images to sample (0: all).
    #[arg(long, default_value_t = 10000)]
    samples: usize,
    /// Rescale each image so that its shorter side is this first (0: native size).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Write the JSON to this file instead of standard output.
    #[arg(long, short)]
    out: Option<std::path::PathBuf>,
}

pub(crate) fn stats_cmd(a: StatsArgs) -> Result<()> {
    vgg_cuda::data::check_side("--size", a.size)?;
    if let Some(path) = &a.out {
        atomic::check_writable(path).context("--out")?;
    }
    let n = if a.samples == 0 { 1000 } else { a.samples };
    let (ds, what) = a.source.open(n)?;
    let sampled = if a.samples == 0 || a.samples >= ds.len() { "all".to_string() } else { a.samples.to_string() };
    // --size 0 keeps each image's own size (it read "shorter side rescaled to 0").
    let size = if a.size == 0 {
        "images at their own size".to_string()
    } else {
        format!("shorter side rescaled to {}", a.size)
    };
    eprintln!("stats of {what}: {sampled} images, {size}");
    let t0 = std::time::Instant::now();
    let st = vgg_cuda::data::stats::compute(&*ds, a.samples, a.size, a.source.seed, a.source.strict)?;
    eprintln!(
        "{} images ({} skipped) in {:.1} s: mean RGB {:.2?}, std {:.2?}",
        st.images,
        st.skipped,
        t0.elapsed().as_secs_f64(),
        st.mean,
        st.std
    );
    let json = serde_json::to_string_pretty(&st)?;
    match &a.out {
        Some(path) => atomic::write(path, json.as_bytes())?,
        None => println!("{json}"),
    }
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct BenchDataArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    /// Images to run (a seeded sample of DIR).
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Loader worker threads, or a comma-separated list of counts to measure the scaling
    /// (1,2,4,8,16; the last is the reported total) [default: the number of cores].
    #[arg(long)]
    workers: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Training scale S: 256, or MIN:MAX for scale jittering (256:512). With --test, Q.
    #[arg(long, default_value = "256")]
    scale: String,
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Test preprocessing (rescale to Q, centre crop) instead of training augmentation.
    #[arg(long)]
    test: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(crate) fn bench_data_cmd(a: BenchDataArgs) -> Result<()> {
    use vgg_cuda::data::{Scale, TestTransform, TrainTransform, Transform};
    let scale = Scale::parse(&a.scale)?;
    let workers: Vec<usize> = match &a.workers {
        Some(list) => list
            .split(',')
            .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0))
            .collect::<Option<_>>()
            .with_context(|| format!("--workers `{list}`: expected counts >= 1 such as 16 or 1,2,4,8,16"))?,
        None => vec![std::thread::available_parallelism().map_or(1, |n| n.get())],
    };
    if a.images == 0 || a.batch == 0 {
        bail!("--images and --batch must be at least 1");
    }
    let (smallest, largest) = scale.range();
    vgg_cuda::data::check_side("--scale", largest)?;
    vgg_cuda::data::check_side("--crop", a.crop)?;
    let transform: Transform = if a.test {
        let q = scale.test_q();
        if q < a.crop {
            bail!("--scale {q} (the test Q) is below the --crop of {}: a rescaled image must hold the crop", a.crop);
        }
        TestTransform { scale: q, crop: Some(a.crop) }.into()
    } else {
        if smallest < a.crop {
            bail!("--scale {smallest} is below the --crop of {}: a rescaled image must hold the crop", a.crop);
        }
        TrainTransform { crop: a.crop, ..TrainTransform::paper(scale) }.into()
    };
    transform.validate()?;
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let (ds, what) = a.source.open(a.images)?;
    let report = vgg_cuda::data::bench::run(ds, &what, transform, a.images, &workers, a.batch, a.source.strict)
        .with_context(|| format!("bench data of {what}"))?;
    println!("{}", report.text());
    if let Some(path) = &a.json {
        atomic::write(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
