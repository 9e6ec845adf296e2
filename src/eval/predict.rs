//! `vgg predict`: the top classes of single images from their centre crop at one test scale,
//! with the posteriors averaged over the models of an ensemble (`vgg eval` has the paper's
//! other views: flips, multi-crop, dense, several scales).

// The parent's views, models and posteriors are this file's vocabulary.
use super::*;

/// The names in a labels file, one a line (blank lines skipped).
fn read_labels(p: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("--labels: reading {}", p.display()))?;
    Ok(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// The class names to print: a labels file's (which takes precedence), else the checkpoint's,
/// else indices.
fn class_names(models: &[Model], labels: Option<(&Path, Vec<String>)>) -> Result<Vec<String>> {
    let k = models[0].vgg.config().classes;
    if let Some((p, names)) = labels {
        if names.len() != k {
            bail!("--labels: {} has {} names for a {k}-class model", p.display(), names.len());
        }
        return Ok(names);
    }
    if let Some(c) = &models[0].classes {
        return Ok(c.clone());
    }
    Ok((0..k).map(|i| i.to_string()).collect())
}

/// Arguments of `vgg predict`.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// A checkpoint (ours or a torchvision vgg*.safetensors); repeat for an ensemble.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to print per image (at least 1).
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// cuda, cuda:N or emu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Class names, one a line; they take precedence over names stored in the checkpoint.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Test scale Q (shorter side after rescaling), at least the model's input side
    /// [default: the Q the checkpoint's training run validated at, else input * 8 / 7, 256
    /// for 224].
    #[arg(long)]
    pub scale: Option<u32>,
    /// Expected VGG config (A, ..., E); an error when the checkpoint is another.
    #[arg(long)]
    pub model: Option<String>,
}

/// A class and its probability.
#[derive(Clone, Debug, Serialize)]
pub struct TopClass {
    pub class: usize,
    pub name: String,
    pub prob: f64,
}

/// One image's classes, most probable first.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub image: String,
    pub top: Vec<TopClass>,
    /// The full posterior (sums to 1).
    #[serde(skip)]
    pub probs: Vec<f64>,
}

/// Runs `vgg predict`: prints (and returns) the top classes of every image.
pub fn predict(a: &PredictArgs) -> Result<Vec<Prediction>> {
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    if a.scale == Some(0) {
        bail!("--scale must be a positive size");
    }
    let labels = a.labels.as_deref().map(|p| read_labels(p).map(|n| (p, n))).transpose()?;
    let dev = Device::by_name(&a.device).with_context(|| format!("predict on `{}`", a.device))?;
    let batch = a.images.len().clamp(1, 16);
    let mut models = load_ensemble(&dev, &a.weights, a.model.as_deref(), batch)?;
    let names = class_names(&models, labels)?;
    let input = models[0].vgg.config().input as u32;
    let q = match a.scale {
        Some(q) => q,
        None => recorded_test_scale(&models)?.unwrap_or(input * 8 / 7),
    };
    if q < input {
        bail!("--scale {q} is below the model's {input}x{input} crop (the image is rescaled to Q, then cropped: give Q >= {input})");
    }
    let mut pixels = vec![];
    for p in &a.images {
        let bytes = std::fs::read(p).with_context(|| format!("reading image {}", p.display()))?;
        let img = decode_rgb(&bytes, p)?;
        let plans = views(img.width(), img.height(), &[q], input, Crops::Center, false)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        pixels.extend(render(&img, &plans));
    }
    let post = posteriors(&mut models, &pixels, a.images.len())?;
    let k = names.len();
    let preds: Vec<Prediction> = a
        .images
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let probs = post[i * k..(i + 1) * k].to_vec();
            let top = top_k(&probs, a.top)
                .into_iter()
                .map(|c| TopClass { class: c, name: names[c].clone(), prob: probs[c] })
                .collect();
            Prediction { image: p.display().to_string(), top, probs }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&preds)?);
    } else {
        let cfg = models[0].vgg.config();
        eprintln!("VGG {} on {}, Q {q}, centre crop {input}", cfg.describe(), dev.name());
        for p in &preds {
            println!("{}", p.image);
            for (r, t) in p.top.iter().enumerate() {
                println!("  {}. {:<24} {:>8.4}  (class {})", r + 1, t.name, t.prob, t.class);
            }
        }
    }
    Ok(preds)
}
