//! `vgg eval`: top-1 and top-5 error over a labelled set by the paper's protocol, per class
//! and in all, with images/s; the report as a line, JSON and CSV.

// The parent's views, models and posteriors are this file's vocabulary.
use super::*;

use super::ensemble::check_weights_file;
use super::views::{render_views, Unscored};
use crate::data::{open_dir, open_dir_with_classes, DataError, Dataset, Plan, Shards, Subset, Synthetic};
use crate::train::checkpoint;
use crate::Device;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `vgg eval`.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// A checkpoint (ours, or torchvision's pretrained vgg*.pth as downloaded, or its state
    /// dict as .safetensors); repeat for an ensemble (posteriors averaged).
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// An ImageFolder (its val/ sub-folder when there is one), a shard directory written by
    /// `vgg prep` (detected by its index.json), or `synthetic`: the validation images of
    /// `vgg train`'s synthetic set.
    #[arg(long)]
    pub data: String,
    /// Test scales Q, comma-separated (several: posteriors averaged), or a preset: fixed:S
    /// (S-32,S,S+32), jittered[:MIN:MAX] (MIN,(MIN+MAX)/2,MAX; 256,384,512); each Q at least
    /// the model's input side [default: the Q the checkpoint's training run validated at (the
    /// paper's single-scale Q: S, or (Smin + Smax) / 2); for checkpoints that do not record
    /// it, the input side for synthetic data, input * 8 / 7 otherwise].
    #[allow(rustdoc::broken_intra_doc_links)] // `[:MIN:MAX]` is option syntax in --help, not a link
    #[arg(long)]
    pub scale: Option<String>,
    /// center, multi (a 5x5 grid of crops x 2 flips per scale), dense (the FC layers as
    /// convolutions over the whole image and its mirror image), or both (dense and multi,
    /// posteriors averaged).
    #[arg(long, default_value = "center")]
    pub crops: String,
    /// Also evaluate the mirror image of each centre crop.
    #[arg(long)]
    pub flip: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write per-class accuracy as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Crop views per forward pass (capped at the views the run has).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Evaluate a seeded sample of this many images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Synthetic images (the validation set of `vgg train` with its defaults has 80).
    #[arg(long, default_value_t = 80)]
    pub synthetic_len: usize,
    /// Synthetic data seed [default: the training seed stored in the checkpoint, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Expected VGG config (A, ..., E); an error when a checkpoint is another.
    #[arg(long)]
    pub model: Option<String>,
    /// An image that cannot be scored is an error instead of being reported and skipped:
    /// an unreadable one, or with dense evaluation one too wide or tall for it (its longer
    /// side above 8x the shorter), so that the error is over every image or the run fails.
    #[arg(long)]
    pub strict: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for EvalArgs {
    /// The command line's defaults, with no weights and no data (tests fill those in).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: EvalArgs,
        }
        let mut a = <Cli as clap::Parser>::parse_from(["eval", "--weights", "-", "--data", "-"]).args;
        a.weights.clear();
        a.data.clear();
        a
    }
}

/// Accuracy on one class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassRow {
    /// The class index.
    pub class: usize,
    /// The class name (the dataset's).
    pub name: String,
    /// Images of the class evaluated (skipped ones not counted).
    pub images: usize,
    /// Top-1 accuracy on them, 0 to 1 (an accuracy, not an error; 0 without images).
    pub top1: f64,
    /// Top-5 accuracy on them, 0 to 1.
    pub top5: f64,
}

/// What `vgg eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The checkpoints of the ensemble, as given.
    pub weights: Vec<String>,
    /// The data set in words (its folder, or the synthetic set's seed and length).
    pub data: String,
    /// The device's name.
    pub device: String,
    /// The test scales Q.
    pub scales: Vec<u32>,
    /// The views of each scale.
    pub crops: Crops,
    /// Mirror images were scored (`--flip`, or any `--crops` but `center`, which flip always).
    pub flip: bool,
    /// Views scored per image and model (a dense view and its mirror image count as two).
    pub views_per_image: usize,
    /// Crop views per forward pass: `--batch`, capped at the views the run has (1 with
    /// `--crops dense`, which has none: dense evaluation runs its own buffers).
    pub batch: usize,
    /// Images evaluated.
    pub images: usize,
    /// Images skipped as unreadable (not in `images`).
    pub skipped: usize,
    /// Images not scored because dense evaluation (`--crops dense` or `both`) cannot take
    /// them: the rescale's longer side is above 8 x Q (`MAX_DENSE_ASPECT`) (an
    /// aspect ratio above about 8:1). Not in `images`, so the errors are then over fewer
    /// images than crop views would score; an error with `--strict`.
    pub too_wide: usize,
    /// Evaluated images whose posterior had a non-finite value (NaN): the model's fp16
    /// forward overflowed. They are in `images` and ranked by the rule of [`super::top_k`]
    /// (a NaN outranks every class; a NaN label posterior is a miss); a warning says so.
    pub non_finite: usize,
    /// Top-1 error over the evaluated images, 0 to 1.
    pub top1_error: f64,
    /// Top-5 error over the evaluated images, 0 to 1.
    pub top5_error: f64,
    /// Wall time of the evaluation loop in seconds (loading the models not counted).
    pub seconds: f64,
    /// `images` over `seconds`.
    pub images_per_s: f64,
    /// One row per class, in class-index order.
    pub per_class: Vec<ClassRow>,
}

impl EvalReport {
    /// The summary line `vgg eval` prints: images, skipped (unreadable; with dense
    /// evaluation also those too wide for it, and a note when there are any), views, top-1
    /// and top-5 error in percent, images/s.
    pub fn line(&self) -> String {
        let wide = match (self.crops, self.too_wide) {
            (Crops::Center | Crops::Multi, 0) => String::new(),
            (_, 0) => ", 0 too wide for dense".to_string(),
            (_, n) => format!(
                ", {n} too wide for dense: the errors are over {} fewer than crop views score",
                plural(n, "image")
            ),
        };
        // With 5 classes or fewer every label is in the top 5: the 0% says nothing.
        let trivial = if self.per_class.len() <= 5 { " (every class is in the top 5)" } else { "" };
        format!(
            "{} ({} skipped as unreadable{wide}), {} each: top-1 error {:.2}%, top-5 error {:.2}%{trivial} ({:.1} img/s)",
            plural(self.images, "image"),
            self.skipped,
            plural(self.views_per_image, "view"),
            100.0 * self.top1_error,
            100.0 * self.top5_error,
            self.images_per_s
        )
    }

    /// `class,name,images,top1,top5`, one row a class (RFC 4180: a name holding a comma, a
    /// quote or a line break is quoted, so that a folder named with a newline stays one row).
    pub fn csv(&self) -> String {
        let mut s = String::from("class,name,images,top1,top5\n");
        for r in &self.per_class {
            let name = if r.name.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", r.name.replace('"', "\"\""))
            } else {
                r.name.clone()
            };
            s += &format!("{},{},{},{:.6},{:.6}\n", r.class, name, r.images, r.top1, r.top5);
        }
        s
    }
}

/// The data `vgg eval` scores, opened before the models so that their batch can be sized
/// by it: `vgg train`'s synthetic validation set (made once the models' config and seed are
/// known), or a folder with its description.
enum Source {
    Synthetic,
    Folder(Arc<dyn Dataset>, String),
}

/// Opens `--data`: an ImageFolder (its val/ sub-folder when there is one) or a `vgg prep`
/// shard directory, labelled by the class names stored with the first checkpoint when it
/// has them (a mismatch names them).
fn open_source(a: &EvalArgs) -> Result<Source> {
    if a.data == "synthetic" {
        return Ok(Source::Synthetic);
    }
    crate::data::check_data_dir(&a.data)?;
    let dir = PathBuf::from(&a.data);
    let dir = match crate::data::split_dirs(&dir)? {
        Some((_, Some(val))) => val,
        Some((_, None)) => bail!(
            "{}: a dataset split into train/ without a val/ folder: give the validation images as {} (or the \
             folder that holds them)",
            dir.display(),
            dir.join("val").display()
        ),
        None if !Shards::is_shard_dir(&dir) && dir.join("val").is_dir() => dir.join("val"),
        None => dir,
    };
    check_weights_file(&a.weights[0])?;
    let ds = match checkpoint::load_classes(&a.weights[0])? {
        Some(c) => open_dir_with_classes(&dir, &c).map_err(|e| match e {
            DataError::Layout { .. } => {
                anyhow::anyhow!("{e} ({} stores the classes {})", a.weights[0].display(), class_list(&c))
            }
            e => e.into(),
        })?,
        None => open_dir(&dir)?,
    };
    if ds.is_empty() {
        bail!("{}: no images", dir.display());
    }
    Ok(Source::Folder(ds, dir.display().to_string()))
}

/// The data set of `src` for `models`, and its description.
fn dataset(a: &EvalArgs, src: Source, models: &[Model]) -> Result<(Arc<dyn Dataset>, String)> {
    let cfg = models[0].vgg.config();
    let (ds, what): (Arc<dyn Dataset>, String) = match src {
        Source::Synthetic => {
            // `vgg train`'s validation set: the same images whatever its length (each is a
            // pure function of seed and index), seed = training seed ^ 0x5eed.
            let seed = a.seed.or(models[0].state.as_ref().map(|s| s.seed)).unwrap_or(0);
            let ds = Synthetic::new(cfg.classes, cfg.input as u32, a.synthetic_len, seed ^ 0x5eed).square();
            // A model trained on folders scored against the shapes' classes would give a
            // meaningless error rate without a word; the folders' check does this by name.
            for w in &a.weights {
                if let Some(c) = checkpoint::load_classes(w)?.filter(|c| c.as_slice() != ds.classes()) {
                    bail!(
                        "{} was trained on the classes {}, but the synthetic set's are {}: evaluate it on its own data",
                        w.display(),
                        class_list(&c),
                        class_list(ds.classes())
                    );
                }
            }
            (Arc::new(ds), format!("synthetic (seed {seed}, {} images)", a.synthetic_len))
        }
        Source::Folder(ds, what) => {
            if ds.classes().len() != cfg.classes {
                bail!(
                    "{what}: {} class folders, but the model has {} classes (and its checkpoint stores no class names)",
                    ds.classes().len(),
                    cfg.classes
                );
            }
            (ds, what)
        }
    };
    Ok(match a.limit {
        Some(n) if n < ds.len() => (Arc::new(Subset::sample(ds, n, 0)), what),
        _ => (ds, what),
    })
}

/// One image's crop views' pixels (concatenated), its dense views with their pixels, and
/// its label.
type Rendered = (Vec<u8>, Vec<(Plan, Vec<u8>)>, usize);

/// Runs `vgg eval`.
pub fn eval(a: &EvalArgs) -> Result<EvalReport> {
    let crops = Crops::parse(&a.crops)?;
    let scale_arg = a.scale.as_deref().map(parse_scales).transpose()?;
    if a.weights.is_empty() {
        bail!("give at least one --weights file");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // Nothing to evaluate: said as such, not as "no image could be evaluated (0 skipped as
    // unreadable)" after loading the models.
    if a.limit == Some(0) {
        bail!("--limit 0: nothing to evaluate (give at least 1 image, or leave --limit out for all)");
    }
    if a.data == "synthetic" && a.synthetic_len == 0 {
        bail!("--synthetic-len 0: nothing to evaluate (give at least 1 image)");
    }
    if a.data == "synthetic" && a.synthetic_len > crate::data::MAX_SYNTHETIC_LEN {
        bail!("--synthetic-len {}: at most {} images", a.synthetic_len, crate::data::MAX_SYNTHETIC_LEN);
    }
    // Output paths before any work, so that a bad one does not cost the run.
    for (opt, p) in [("--json", &a.json), ("--csv", &a.csv)] {
        if let Some(p) = p {
            crate::atomic::check_writable(p).context(opt)?;
        }
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("eval on `{}`", a.device))?;
    let src = open_source(a)?;
    // A batch holds crop views; more of them than the run has would be allocated and
    // computed for nothing (dense evaluation runs its own buffers: one will do).
    let images = match &src {
        Source::Synthetic => a.synthetic_len,
        Source::Folder(ds, _) => ds.len(),
    };
    let images = a.limit.map_or(images, |n| n.min(images));
    let n_views = images * scale_arg.as_ref().map_or(1, Vec::len) * views_per_scale(crops, a.flip);
    let batch = a.batch.min(n_views.max(1));
    // Dense alone has no crop views: its batch of 1 is no cap of the user's to report.
    if batch < a.batch && n_views > 0 {
        eprintln!("eval: --batch {} capped at {batch}: the run has {n_views} crop views ({images} images)", a.batch);
    }
    let mut models = load_ensemble(&dev, &a.weights, a.model.as_deref(), batch)?;
    let (ds, what) = dataset(a, src, &models)?;
    let (input, k) = (models[0].vgg.config().input as u32, models[0].vgg.config().classes);
    let scales = test_scales(
        a.scale.as_deref().zip(scale_arg),
        &models,
        if a.data == "synthetic" { input } else { input * 8 / 7 },
    )?;
    let vpc = views(input, input, &scales, input, crops, a.flip).map_err(anyhow::Error::msg)?.len();
    // Each dense view is the whole image and its mirror image.
    let vpi = vpc + 2 * dense_views(input, input, &scales, crops).map_err(anyhow::Error::msg)?.len();
    let names: Vec<String> = ds.classes().to_vec();
    // An ensemble's models may differ in config (A and B, say): each is named.
    let model = match models.as_slice() {
        [m] => format!("VGG {}", m.vgg.config().describe()),
        ms => format!(
            "an ensemble of {} models ({}), {} classes",
            ms.len(),
            ms.iter()
                .map(|m| format!("VGG {} from {}", m.vgg.config().arch, m.path.display()))
                .collect::<Vec<_>>()
                .join(", "),
            k
        ),
    };
    println!(
        "eval {model} on {} ({what}, {} images): Q {:?}, {}, {} an image",
        dev.name(),
        ds.len(),
        scales,
        crops.describe(a.flip),
        plural(vpi, "view"),
    );
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(ds.len() as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let (mut n_img, mut skipped, mut hit1, mut hit5) = (0usize, 0usize, 0usize, 0usize);
    let (mut too_wide, mut non_finite) = (0usize, 0usize);
    let mut per = vec![(0usize, 0usize, 0usize); k];
    // Enough images a chunk to fill a few forward batches and keep the decoders busy.
    let chunk = (4 * batch).div_ceil(vpi).max(rayon::current_num_threads());
    let idx: Vec<usize> = (0..ds.len()).collect();
    for part in idx.chunks(chunk) {
        let rendered: Vec<_> = part
            .par_iter()
            .map(|&i| -> Result<Rendered, Unscored> {
                let (img, label) = ds.load(i).map_err(|e| Unscored::Unreadable(e.to_string()))?;
                let (px, dense) = render_views(&img, &scales, input, crops, a.flip).map_err(|e| match e {
                    Unscored::Unreadable(e) => Unscored::Unreadable(format!("{}: {e}", ds.describe(i))),
                    Unscored::TooWide(e) => Unscored::TooWide(format!("{}: {e}", ds.describe(i))),
                })?;
                Ok((px, dense, label))
            })
            .collect();
        let mut pixels = vec![];
        let mut labels = vec![];
        let mut dense_px = vec![];
        for r in rendered {
            match r {
                Ok((px, d, l)) => {
                    pixels.extend(px);
                    dense_px.push(d);
                    labels.push(l);
                }
                Err(e) if a.strict => bail!("{e} (--strict: every image must be scored)"),
                Err(Unscored::Unreadable(e)) => {
                    bar.suspend(|| eprintln!("skipped: {e}"));
                    skipped += 1;
                }
                // Not unreadable, and not silently dropped from the denominator: counted
                // apart and named, with the limit's reason in `e`.
                Err(Unscored::TooWide(e)) => {
                    bar.suspend(|| eprintln!("skipped, too wide for dense evaluation: {e}"));
                    too_wide += 1;
                }
            }
        }
        let post = if vpc > 0 { posteriors(&mut models, &pixels, labels.len() * vpc)? } else { vec![] };
        for (j, &l) in labels.iter().enumerate() {
            let p = image_posterior(&models, &post[j * vpc * k..(j + 1) * vpc * k], &dense_px[j], k)?;
            // One ranking rule with predict's `top_k` (see rank.rs's `outranks`): ties go to the lower
            // class index and NaN is never a hit, so neither a uniform nor a NaN posterior
            // scores 0% error.
            non_finite += !p.iter().all(|v| v.is_finite()) as usize;
            let (h1, h5) = (top_k_hit(&p, l, 1), top_k_hit(&p, l, 5));
            hit1 += h1 as usize;
            hit5 += h5 as usize;
            per[l].0 += 1;
            per[l].1 += h1 as usize;
            per[l].2 += h5 as usize;
        }
        n_img += labels.len();
        bar.inc(part.len() as u64);
        bar.set_message(format!("top-1 err {:.2}%", 100.0 * (1.0 - hit1 as f64 / n_img.max(1) as f64)));
    }
    bar.finish_and_clear();
    if n_img == 0 {
        let wide = if too_wide > 0 { format!(", {too_wide} too wide for dense evaluation") } else { String::new() };
        bail!("no image could be evaluated ({skipped} skipped as unreadable{wide})");
    }
    if non_finite > 0 {
        eprintln!(
            "eval: warning: {non_finite} of {} had a non-finite posterior (NaN): the model's fp16 forward \
             overflowed (a logit beyond fp16's range); a NaN label score counts as a miss",
            plural(n_img, "image")
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let frac = |h: usize, n: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
    let report = EvalReport {
        weights: models.iter().map(|m| m.path.display().to_string()).collect(),
        data: what,
        device: dev.name(),
        scales,
        crops,
        flip: a.flip || crops != Crops::Center,
        views_per_image: vpi,
        batch,
        images: n_img,
        skipped,
        too_wide,
        non_finite,
        top1_error: 1.0 - frac(hit1, n_img),
        top5_error: 1.0 - frac(hit5, n_img),
        seconds: secs,
        images_per_s: n_img as f64 / secs.max(1e-9),
        per_class: per
            .iter()
            .enumerate()
            .map(|(c, &(n, h1, h5))| ClassRow {
                class: c,
                name: names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                images: n,
                top1: frac(h1, n),
                top5: frac(h5, n),
            })
            .collect(),
    };
    println!("{}", report.line());
    if let Some(p) = &a.json {
        crate::atomic::write(p, &serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = &a.csv {
        crate::atomic::write(p, report.csv().as_bytes())?;
    }
    Ok(report)
}

/// `n` and `word`, with an `s` unless `n` is 1.
fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
