//! torchvision's `ImageFolder` (`root/<class>/**/<image>`) and image decoding.
//!
//! Classes are the sorted names of `root`'s sub-folders, indexed from 0; the images of a
//! class are found by a sorted walk of its folder (sub-folders included, links followed),
//! files kept when their lower-cased name ends with one of [`IMG_EXTENSIONS`]: the same
//! classes, order and indices as `torchvision.datasets.ImageFolder`, so labels match
//! torchvision-trained weights. Decoding sniffs the format from the bytes (a PNG named
//! `.jpg` decodes) and converts to RGB the way PIL's `convert("RGB")` does (grayscale
//! replicated, alpha dropped, CMYK JPEGs converted), with these differences: 16-bit samples
//! are scaled to 8 bits (value / 257), where PIL clips 16-bit grayscale at 255 (a dark 16-bit
//! scan turns white there) and rounds 16-bit RGB a unit apart; TIFF orientation tags are not
//! applied (PIL's TIFF reader applies them; its JPEG, PNG and WebP readers, like this, do not);
//! GIF content and float or signed-integer TIFF samples are not decoded (reported, skipped).

use std::path::{Path, PathBuf};

use image::{ImageDecoder, RgbImage};

use super::{DataError, Dataset, Synthetic};

/// torchvision's `IMG_EXTENSIONS`, every one of which decodes here.
pub const IMG_EXTENSIONS: [&str; 9] = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"];

pub(super) fn is_image_name(name: &std::ffi::OsStr) -> bool {
    let lower = name.to_string_lossy().to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// Decodes an encoded image to RGB; `path` only names it in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, DataError> {
    // Trimmed: some decoders end their messages with a newline, which split report lines.
    let fail = |reason: String| DataError::Decode { path: path.to_path_buf(), reason: reason.trim_end().to_string() };
    if bytes.is_empty() {
        return Err(fail("empty file".into()));
    }
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| fail(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(fail("not an image format this build decodes (JPEG, PNG, BMP, WebP, PPM/PGM, TIFF)".into()));
    };
    // The header read once, by the decoder that then decodes (ImageReader::decode would read it
    // again after a separate dimensions query).
    let decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
    // PIL's decompression-bomb bound, checked before decoding: a cap on the decoded buffer alone
    // (ImageReader::decode's 512 MiB) let a 20000 x 20000 grayscale PNG of 431 KB through,
    // tripled by the RGB conversion below (1.5 GB for one image, in every decoding thread).
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(fail(format!("{w}x{h} pixels, over the limit of {MAX_PIXELS} (PIL's decompression-bomb bound)")));
    }
    // ImageReader::decode's own cap, which into_decoder leaves to the caller: a 16-bit RGBA
    // image within the pixel bound may still need more.
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(fail(format!(
            "{w}x{h} pixels decode to {} bytes, over the limit of 512 MiB",
            decoder.total_bytes()
        )));
    }
    if format == image::ImageFormat::Jpeg {
        jpeg_has_end(bytes).map_err(fail)?;
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(fail(format!("image of {}x{} pixels", img.width(), img.height())));
    }
    Ok(img.into_rgb8())
}

/// The most pixels an image may have: PIL's `Image.MAX_IMAGE_PIXELS` x 2, past which PIL
/// refuses to open a file (`DecompressionBombError`), so what torchvision reads, this reads.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The most bytes an image may decode to before the RGB conversion: `image`'s default limit.
const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Errors unless the JPEG in `bytes` ends: an end-of-image marker (FF D9) after its first
/// scan. The JPEG decoder fills the rest of a truncated file's image with grey and says
/// nothing (a half-downloaded photo trained as half a photo), where libjpeg reports a
/// premature end and PIL refuses the file. Within a scan's coded data an FF byte is always
/// followed by 00 or a restart marker (D0-D7), so FF D9 there is the end; the segments before
/// the first scan (an EXIF thumbnail, with its own FF D9, among them) are skipped by length.
/// Markers are found as libjpeg's `next_marker` finds them: bytes that are not a marker (a
/// segment length a few bytes short, stray zeros, FF 00) are skipped, which libjpeg only
/// warns about ("extraneous bytes before marker") and PIL decodes.
fn jpeg_has_end(bytes: &[u8]) -> Result<(), String> {
    let truncated = || Err("truncated JPEG (no end-of-image marker after its image data)".to_string());
    let mut i = 2; // past SOI
    loop {
        // The next marker: FF (after any fill bytes FF FF ...) and a byte other than 00.
        let m = loop {
            while bytes.get(i).is_some_and(|&b| b != 0xFF) {
                i += 1;
            }
            while bytes.get(i) == Some(&0xFF) {
                i += 1;
            }
            match bytes.get(i) {
                None => return truncated(),
                Some(0) => i += 1,
                Some(&m) => break m,
            }
        };
        i += 1;
        // A second start is an embedded thumbnail's, reached through a short segment length: its
        // own scan and end would pass for the image's (libjpeg refuses two SOI markers).
        if m == 0xD8 {
            return Err("corrupt JPEG (a second start-of-image marker before its image data)".into());
        }
        // Markers without a length; an end before any scan is a thumbnail's too.
        if matches!(m, 0x01 | 0xD0..=0xD7 | 0xD9) {
            continue;
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i), bytes.get(i + 1)) else { return truncated() };
        i += usize::from(u16::from_be_bytes([hi, lo]));
        if m == 0xDA {
            break;
        }
    }
    // Searched from the end, where a whole file has it.
    match bytes.get(i..).is_some_and(|rest| rest.windows(2).rev().any(|w| w == [0xFF, 0xD9])) {
        true => Ok(()),
        false => truncated(),
    }
}

/// An ImageFolder dataset: the files, their labels and the class names.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    /// Scans `dir`: one class per sub-folder, sorted. Fails when there is no class folder or
    /// a class has no image file (as torchvision does).
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let mut classes = vec![];
        for entry in read_dir_sorted(dir)? {
            if entry.is_dir() {
                // Class names are text (checkpoints, reports, a validation folder's lookup): a
                // lossy name (caf\xe9 -> caf\u{fffd}) found no folder to scan, so the class kept
                // no image without a word, or matched another folder's valid name twice.
                let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                    return Err(DataError::Layout {
                        path: entry,
                        reason: "a class folder whose name is not valid UTF-8: class names must be text; rename it"
                            .into(),
                    });
                };
                classes.push(name.to_string());
            }
        }
        if classes.is_empty() {
            return Err(DataError::Layout { path: dir.into(), reason: "no class sub-folders".into() });
        }
        Self::open_with_classes(dir, &classes)
    }

    /// Scans `dir` with a given class list (a validation folder labelled like its training
    /// folder): every sub-folder must be one of `classes`; a class may have no folder.
    pub fn open_with_classes(dir: &Path, classes: &[String]) -> Result<Self, DataError> {
        let mut samples = vec![];
        let mut present = 0;
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            if !cdir.is_dir() {
                continue;
            }
            present += 1;
            let before = samples.len();
            walk_images(&cdir, label, &mut samples)?;
            if samples.len() == before {
                return Err(DataError::Layout {
                    path: cdir,
                    reason: format!("class folder has no file with an image extension ({})", IMG_EXTENSIONS.join(" ")),
                });
            }
        }
        for entry in read_dir_sorted(dir)? {
            // Compared as text: a name that is not UTF-8 is no class.
            let name = entry.file_name().and_then(|n| n.to_str());
            if entry.is_dir() && !name.is_some_and(|n| classes.iter().any(|c| c == n)) {
                return Err(DataError::Layout {
                    path: entry,
                    reason: "a folder that is not one of the classes".into(),
                });
            }
        }
        if present == 0 {
            return Err(DataError::Layout { path: dir.into(), reason: "none of the class folders is here".into() });
        }
        Ok(Self { root: dir.into(), classes: classes.to_vec(), samples })
    }

    /// The folder the classes are in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// (path, class index) of every image, in dataset order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }
}

pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |e: std::io::Error| DataError::Io { path: dir.into(), reason: e.to_string() };
    let mut v = vec![];
    for e in std::fs::read_dir(dir).map_err(io)? {
        v.push(e.map_err(io)?.path());
    }
    // Python sorts str by code point, which is UTF-8 byte order: OsStr's order on Unix.
    v.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(v)
}

/// `sorted(os.walk(dir, followlinks=True))` then `sorted(files)`: a folder's own files
/// come before its sub-folders' (a path sorts before its extensions), sub-folders in
/// name order. Paths are compared as strings, as Python does.
fn walk_images(dir: &Path, label: usize, out: &mut Vec<(PathBuf, usize)>) -> Result<(), DataError> {
    let mut dirs: Vec<(PathBuf, Vec<PathBuf>)> = vec![];
    collect_walk(dir, &mut dirs, &mut vec![])?;
    dirs.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    for (_, files) in dirs {
        out.extend(files.into_iter().map(|f| (f, label)));
    }
    Ok(())
}

/// Walks `dir` depth first, following links (as torchvision does). `chain` holds the resolved
/// folders from the class folder down to `dir`'s parent. A link back into one of them is
/// refused with the path that leads back and where it leads: a deliberate departure from
/// torchvision, whose `os.walk` follows the cycle until path resolution fails (ELOOP, about
/// 40 links deep), ignores that error, and lists the same images some 40 times.
fn collect_walk(
    dir: &Path,
    dirs: &mut Vec<(PathBuf, Vec<PathBuf>)>,
    chain: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let layout = |reason: String| DataError::Layout { path: dir.into(), reason };
    let real = std::fs::canonicalize(dir).map_err(|e| DataError::Io { path: dir.into(), reason: e.to_string() })?;
    if let Some(up) = chain.iter().find(|a| **a == real) {
        return Err(layout(format!("leads back to {}, a folder above it (a link cycle)", up.display())));
    }
    // Acyclic, but deeper than any image collection needs: a path that long is a mistake.
    if chain.len() > 64 {
        return Err(layout("folders nested over 64 deep".into()));
    }
    chain.push(real);
    let mut files = vec![];
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            collect_walk(&p, dirs, chain)?;
        } else if p.file_name().is_some_and(is_image_name) {
            files.push(p);
        }
    }
    chain.pop();
    dirs.push((dir.into(), files));
    Ok(())
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        let (path, label) = self.samples.get(i).ok_or(DataError::Index { index: i, len: self.samples.len() })?;
        let io = |reason: String| DataError::Io { path: path.clone(), reason };
        // Links followed: a FIFO or device named like an image would block or never end a read.
        if !std::fs::metadata(path).map_err(|e| io(e.to_string()))?.is_file() {
            return Err(io("not a regular file (a FIFO, socket or device named like an image)".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
        Ok((decode_rgb(&bytes, path)?, *label))
    }

    fn label(&self, i: usize) -> Option<usize> {
        self.samples.get(i).map(|s| s.1)
    }

    fn describe(&self, i: usize) -> String {
        self.samples.get(i).map_or_else(|| format!("image {i}"), |s| s.0.display().to_string())
    }
}

/// Encoded images held in memory (decoded on every load, like files, without the disk).
#[derive(Clone, Debug)]
pub struct MemoryDataset {
    classes: Vec<String>,
    items: Vec<(String, Vec<u8>, usize)>,
}

impl MemoryDataset {
    /// `items`: (name for reports, encoded bytes, class index).
    pub fn new(classes: Vec<String>, items: Vec<(String, Vec<u8>, usize)>) -> Self {
        Self { classes, items }
    }

    /// `ds`'s images encoded as JPEG of the given quality (1-100), in parallel.
    pub fn jpeg_of(ds: &Synthetic, quality: u8) -> Result<Self, DataError> {
        use rayon::prelude::*;
        let items = (0..ds.len())
            .into_par_iter()
            .map(|i| {
                let (img, label) = ds.load(i)?;
                let mut bytes = vec![];
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
                    .encode_image(&img)
                    .map_err(|e| DataError::Image { source_name: ds.describe(i), reason: e.to_string() })?;
                Ok((format!("synthetic{i}.jpg"), bytes, label))
            })
            .collect::<Result<Vec<_>, DataError>>()?;
        Ok(Self::new(ds.classes().to_vec(), items))
    }

    /// Total encoded bytes.
    pub fn bytes(&self) -> usize {
        self.items.iter().map(|i| i.1.len()).sum()
    }
}

impl Dataset for MemoryDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        let (name, bytes, label) = self.items.get(i).ok_or(DataError::Index { index: i, len: self.items.len() })?;
        Ok((decode_rgb(bytes, Path::new(name))?, *label))
    }

    fn describe(&self, i: usize) -> String {
        self.items.get(i).map_or_else(|| format!("image {i}"), |s| s.0.clone())
    }
}
