//! The data pipeline's reading of files, on generated images with known content: ImageFolder
//! indexing (messy roots, linked folders), decoding to RGB, corrupt files skipped and counted,
//! and images refused per file (a huge claimed size, a truncated JPEG).

use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use vgg_cuda::data::{decode_rgb, DataError, Dataset, HostBatch, ImageFolder, Loader, LoaderConfig, Scale};

mod common;
mod data_common;
use common::TempDir;
use data_common::{cfg, coords, solid, train};

fn write_img(path: &Path, img: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let fmt = match path.extension().unwrap().to_str().unwrap().to_lowercase().as_str() {
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        "bmp" => image::ImageFormat::Bmp,
        _ => image::ImageFormat::Png,
    };
    img.save_with_format(path, fmt).unwrap();
}

#[test]
fn image_folder_classes_and_order_match_torchvision() {
    let t = TempDir::new("data", "order");
    let r = &t.0;
    // Byte order: "C" < "a" < "b"; files sorted, a folder's own files before its sub-folders'.
    write_img(&r.join("b/2.png"), &solid(4, 4, [2, 0, 0]));
    write_img(&r.join("b/10.PNG"), &solid(4, 4, [10, 0, 0]));
    write_img(&r.join("a/z.jpeg"), &solid(4, 4, [0, 0, 0]));
    write_img(&r.join("a/sub/y.bmp"), &solid(4, 4, [0, 0, 0]));
    write_img(&r.join("a/Sub0/x.png"), &solid(4, 4, [0, 0, 0]));
    write_img(&r.join("C/q.JpG"), &solid(4, 4, [0, 0, 0]));
    std::fs::write(r.join("b/notes.txt"), "not an image").unwrap();
    std::fs::write(r.join("stray.png"), "a file at the top is not a class").unwrap();
    let ds = ImageFolder::open(r).unwrap();
    assert_eq!(ds.classes(), ["C", "a", "b"]);
    let got: Vec<(String, usize)> =
        ds.samples().iter().map(|(p, l)| (p.strip_prefix(r).unwrap().to_string_lossy().into_owned(), *l)).collect();
    let want =
        [("C/q.JpG", 0), ("a/z.jpeg", 1), ("a/Sub0/x.png", 1), ("a/sub/y.bmp", 1), ("b/10.PNG", 2), ("b/2.png", 2)];
    assert_eq!(got, want.map(|(p, l)| (p.to_string(), l)));
    assert_eq!(ds.load(5).unwrap().0.get_pixel(0, 0).0, [2, 0, 0]);
    assert!(matches!(ds.load(6), Err(DataError::Index { index: 6, len: 6 })));

    // A validation folder labelled with the training classes, one class missing.
    let v = TempDir::new("data", "val");
    write_img(&v.0.join("b/v.png"), &solid(4, 4, [0, 0, 0]));
    let val = ImageFolder::open_with_classes(&v.0, ds.classes()).unwrap();
    assert_eq!(val.samples()[0].1, 2);
    write_img(&v.0.join("zzz/v.png"), &solid(4, 4, [0, 0, 0]));
    let e = ImageFolder::open_with_classes(&v.0, ds.classes()).unwrap_err();
    assert!(e.to_string().contains("zzz"), "{e}");

    // A class without images, and a folder without classes, are errors naming the path.
    std::fs::create_dir_all(r.join("d")).unwrap();
    let e = ImageFolder::open(r).unwrap_err();
    assert!(e.to_string().contains("/d") && e.to_string().contains("no file"), "{e}");
    let empty = TempDir::new("data", "noclass");
    assert!(ImageFolder::open(&empty.0).unwrap_err().to_string().contains("no class"));
    let e = ImageFolder::open(&empty.0.join("missing")).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
}

/// Messy roots: a class folder whose name is not UTF-8 is refused by name (its lossy name found
/// no folder: the class kept no image, without a word); a dataset's own `index.json` leaves
/// the folder an ImageFolder; a `train/` beside other folders (a class named train) is refused,
/// while train/, val/, test/ and hidden folders make a split root; a FIFO named like an
/// image is a per-file error instead of a read that never ends.
#[cfg(unix)]
#[test]
fn messy_roots_are_read_or_refused_by_name() {
    use std::os::unix::ffi::OsStrExt;
    use vgg_cuda::data::{split_dirs, Shards};
    let t = TempDir::new("data", "messy");
    let r = &t.0;
    write_img(&r.join("dog/0.png"), &solid(4, 4, [0, 0, 0]));
    let latin1 = r.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    write_img(&latin1.join("0.png"), &solid(4, 4, [0, 0, 0]));
    let e = ImageFolder::open(r).unwrap_err().to_string();
    assert!(e.contains("not valid UTF-8") && e.contains("caf"), "{e}");
    // As a validation folder: not one of the classes.
    let e = ImageFolder::open_with_classes(r, &["dog".to_string(), "caf\u{fffd}".to_string()]).unwrap_err();
    assert!(e.to_string().contains("not one of the classes"), "{e}");
    std::fs::remove_dir_all(&latin1).unwrap();

    std::fs::write(r.join("index.json"), r#"{"license": "CC-BY"}"#).unwrap();
    assert!(!Shards::is_shard_dir(r));
    write_img(&r.join("cat/0.png"), &solid(4, 4, [0, 0, 0]));
    assert_eq!(vgg_cuda::data::open_dir(r).unwrap().classes(), ["cat", "dog"]);

    // cat/, dog/ and a class named train holding its images (CIFAR-100's, VOC's): one
    // ImageFolder of three classes.
    write_img(&r.join("train/0.png"), &solid(4, 4, [0, 0, 0]));
    assert_eq!(split_dirs(r).unwrap(), None);
    assert_eq!(vgg_cuda::data::open_dir(r).unwrap().classes(), ["cat", "dog", "train"]);
    // ... and one holding sub-folders: a split root or a nested class, refused as a guess.
    std::fs::remove_file(r.join("train/0.png")).unwrap();
    write_img(&r.join("train/freight/0.png"), &solid(4, 4, [0, 0, 0]));
    let e = split_dirs(r).unwrap_err().to_string();
    assert!(e.contains("beside other folders (cat, dog)"), "{e}");
    let s = TempDir::new("data", "split");
    for d in ["train/a", "train/b", "test/a", ".ipynb_checkpoints", "__MACOSX/train"] {
        std::fs::create_dir_all(s.0.join(d)).unwrap();
    }
    assert_eq!(split_dirs(&s.0).unwrap(), Some((s.0.join("train"), None)));
    // A stray image beside the class folders is ignored, as torchvision ignores it.
    write_img(&s.0.join("train/preview.png"), &solid(4, 4, [0, 0, 0]));
    assert_eq!(split_dirs(&s.0).unwrap(), Some((s.0.join("train"), None)));
    // An unlabelled split (Kaggle's train/*.jpg and test/*.jpg): not two classes train and test.
    let k = TempDir::new("data", "kaggle");
    write_img(&k.0.join("train/0.png"), &solid(4, 4, [0, 0, 0]));
    write_img(&k.0.join("test/0.png"), &solid(4, 4, [0, 0, 0]));
    let e = split_dirs(&k.0).unwrap_err().to_string();
    assert!(e.contains("holds no class folders"), "{e}");
    std::fs::create_dir_all(s.0.join("valid/a")).unwrap();
    let e = split_dirs(&s.0).unwrap_err().to_string();
    assert!(e.contains("(valid)") && e.contains("must be named val/"), "{e}");

    let fifo = r.join("dog/pipe.jpg");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let ds = ImageFolder::open_with_classes(r, &["cat".into(), "dog".into(), "train".into()]).unwrap();
    let i = ds.samples().iter().position(|s| s.0 == fifo).unwrap();
    let e = ds.load(i).unwrap_err();
    assert!(e.is_per_image() && e.to_string().contains("not a regular file"), "{e}");
}

/// Links to folders are followed, as torchvision's `os.walk(followlinks=True)` does (the same
/// folder reached twice lists its images twice); a link back into a folder that holds it,
/// which torchvision follows some 40 times over, is refused naming the link and its target.
#[cfg(unix)]
#[test]
fn linked_folders_are_walked_and_a_link_cycle_is_named() {
    let t = TempDir::new("data", "links");
    let r = &t.0.join("train");
    write_img(&t.0.join("elsewhere/e.png"), &solid(4, 4, [0, 0, 0]));
    write_img(&r.join("a/x.png"), &solid(4, 4, [0, 0, 0]));
    std::os::unix::fs::symlink(t.0.join("elsewhere"), r.join("a/l1")).unwrap();
    std::os::unix::fs::symlink(t.0.join("elsewhere"), r.join("a/l2")).unwrap();
    let ds = ImageFolder::open(r).unwrap();
    let got: Vec<String> = ds.samples().iter().map(|(p, _)| p.strip_prefix(r).unwrap().display().to_string()).collect();
    assert_eq!(got, ["a/x.png", "a/l1/e.png", "a/l2/e.png"]);

    std::os::unix::fs::symlink(t.0.join("elsewhere"), t.0.join("elsewhere/up")).unwrap();
    let e = ImageFolder::open(r).unwrap_err().to_string();
    let link = r.join("a/l1/up");
    assert!(e.starts_with(&format!("{}: ", link.display())), "{e}");
    assert!(e.contains("leads back to") && e.ends_with("elsewhere, a folder above it (a link cycle)"), "{e}");
}

#[test]
fn decoding_converts_to_rgb() {
    let t = TempDir::new("data", "decode");
    let p = |n: &str| t.0.join(n);
    image::GrayImage::from_pixel(3, 2, image::Luma([77])).save(p("g.png")).unwrap();
    image::RgbaImage::from_pixel(3, 2, image::Rgba([1, 2, 3, 0])).save(p("a.png")).unwrap();
    image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(2, 2, Rgb([0xffff, 0x8080, 0])).save(p("d.png")).unwrap();
    image::GrayImage::from_pixel(9, 9, image::Luma([140]))
        .save_with_format(p("g.jpg"), image::ImageFormat::Jpeg)
        .unwrap();
    // A PNG named .jpg: the format comes from the bytes.
    solid(2, 2, [9, 8, 7]).save_with_format(p("png.jpg"), image::ImageFormat::Png).unwrap();
    let load = |n: &str| decode_rgb(&std::fs::read(p(n)).unwrap(), &p(n)).unwrap();
    assert_eq!(load("g.png").get_pixel(2, 1).0, [77, 77, 77]);
    assert_eq!(load("a.png").get_pixel(0, 0).0, [1, 2, 3]);
    assert_eq!(load("d.png").get_pixel(1, 1).0, [255, 128, 0]);
    let g = load("g.jpg").get_pixel(4, 4).0;
    assert!(g.iter().all(|v| v.abs_diff(140) <= 2) && g[0] == g[1] && g[1] == g[2], "{g:?}");
    assert_eq!(load("png.jpg").get_pixel(1, 1).0, [9, 8, 7]);
    // TIFF, which torchvision's extensions list: RGB, and 16-bit grayscale cut to 8 bits.
    coords(5, 3).save_with_format(p("c.tif"), image::ImageFormat::Tiff).unwrap();
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(2, 2, image::Luma([0x8080]))
        .save_with_format(p("g16.tiff"), image::ImageFormat::Tiff)
        .unwrap();
    assert_eq!(load("c.tif").get_pixel(4, 2).0, [4, 2, 200]);
    assert_eq!(load("g16.tiff").get_pixel(1, 1).0, [128; 3]);
    // A CMYK JPEG (Adobe, inverted, as Pillow writes one; tests/fixtures/cmyk-16x16.jpg): four
    // flat 8x8 quadrants of CMYK (0,0,0,0), (255,0,0,0), (0,128,255,0), (0,0,0,128) become
    // white, cyan, orange and mid grey; JPEG's loss on flat blocks stays within a few levels.
    let cmyk = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk-16x16.jpg");
    let img = decode_rgb(&std::fs::read(&cmyk).unwrap(), &cmyk).unwrap();
    assert_eq!(img.dimensions(), (16, 16));
    for ((x, y), want) in
        [((4, 4), [255, 255, 255]), ((12, 4), [0, 255, 255]), ((4, 12), [255, 127, 0]), ((12, 12), [127; 3])]
    {
        let got = img.get_pixel(x, y).0;
        assert!(got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 4), "({x}, {y}): {got:?}, want {want:?}");
    }
}

/// A temp ImageFolder with 6 good images and a truncated JPEG, an empty file and a text
/// file named .jpg.
fn folder_with_bad_files(t: &TempDir) -> (ImageFolder, Vec<&'static str>) {
    let r = &t.0;
    for i in 0..3 {
        write_img(&r.join(format!("cat/{i}.png")), &solid(20, 16, [i * 40, 0, 0]));
        write_img(&r.join(format!("dog/{i}.jpg")), &solid(16, 20, [0, i * 40, 0]));
    }
    let mut jpeg = vec![];
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg).encode_image(&coords(64, 48)).unwrap();
    std::fs::write(r.join("cat/truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(r.join("dog/empty.jpg"), b"").unwrap();
    std::fs::write(r.join("dog/text.jpg"), "this is not a JPEG\n").unwrap();
    (ImageFolder::open(r).unwrap(), vec!["truncated.jpg", "empty.jpg", "text.jpg"])
}

#[test]
fn corrupt_files_are_skipped_and_counted_or_fail_when_strict() {
    let t = TempDir::new("data", "corrupt");
    let (ds, bad) = folder_with_bad_files(&t);
    assert_eq!(ds.len(), 9);
    for (i, (p, _)) in ds.samples().iter().enumerate() {
        let name = p.file_name().unwrap().to_str().unwrap();
        let r = ds.load(i);
        if bad.contains(&name) {
            let e = r.unwrap_err();
            assert!(matches!(e, DataError::Decode { .. }), "{name}: {e:?}");
            assert!(e.to_string().contains(name), "{e}");
        } else {
            r.unwrap();
        }
    }
    let ds: Arc<dyn Dataset> = Arc::new(ds);
    for workers in [0, 2] {
        let l = Loader::new(ds.clone(), train(Scale::Fixed(16), 16), cfg(4, workers));
        let mut epoch = l.epoch(0);
        let batches: Vec<HostBatch> = epoch.by_ref().map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.n).sum::<usize>(), 6);
        assert_eq!(batches.iter().map(|b| b.skipped).sum::<usize>(), 3);
        for b in &batches {
            assert_eq!(b.images.len(), b.n * 16 * 16 * 3);
            assert_eq!(b.labels.len(), b.n);
        }
        let s = epoch.summary();
        assert_eq!((s.images, s.skipped, s.failures.len()), (6, 3, 3));
        for name in &bad {
            assert!(s.failures.iter().any(|f| f.contains(name)), "{name} not in {:?}", s.failures);
        }
        assert!(s.line().contains("3 unreadable"), "{}", s.line());

        let strict =
            Loader::new(ds.clone(), train(Scale::Fixed(16), 16), LoaderConfig { strict: true, ..cfg(4, workers) });
        let r: Vec<_> = strict.epoch(0).collect();
        let e = r.iter().find_map(|b| b.as_ref().err()).expect("strict loader must fail");
        assert!(bad.iter().any(|n| e.to_string().contains(n)), "{e}");
        assert!(r.last().unwrap().is_err(), "the epoch ends at the error");
    }
}

/// A file whose header claims a huge image (a "decompression bomb": a few bytes that would
/// decode to 7.5 GB) is refused by the decoder's allocation limit, quickly and as a per-file
/// error naming the file, so one such file cannot take a worker's memory or end a run.
#[test]
fn an_image_claiming_a_huge_size_is_a_per_file_error() {
    let path = Path::new("bomb.ppm");
    let mut bytes = b"P6\n50000 50000\n255\n".to_vec();
    bytes.extend([7u8; 300]);
    let t = std::time::Instant::now();
    let e = decode_rgb(&bytes, path).unwrap_err();
    assert!(t.elapsed().as_secs_f64() < 5.0, "took {:?}", t.elapsed());
    assert!(e.is_per_image(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("bomb.ppm") && msg.to_lowercase().contains("limit"), "{msg}");
    // Grayscale at 20000 x 20000: 400 MB decoded, under the decoder's 512 MiB, then 1.2 GB as
    // RGB; refused from its header by PIL's pixel bound, as PIL refuses it.
    let mut gray = b"P5\n20000 20000\n255\n".to_vec();
    gray.extend([7u8; 300]);
    let msg = decode_rgb(&gray, path).unwrap_err().to_string();
    assert!(msg.contains("20000x20000") && msg.contains("decompression-bomb"), "{msg}");
}

/// A JPEG cut short after its header decodes to a grey-filled image without a word from the
/// decoder; it is refused as truncated (as PIL refuses it), an EXIF thumbnail's own end
/// marker before the image data notwithstanding, while a whole JPEG with bytes after its end
/// decodes.
#[test]
fn a_truncated_jpeg_is_refused() {
    let mut jpeg = vec![];
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg).encode_image(&coords(256, 192)).unwrap();
    let path = Path::new("photo.jpg");
    assert_eq!(decode_rgb(&jpeg, path).unwrap().dimensions(), (256, 192));
    let mut trailing = jpeg.clone();
    trailing.extend(b"trailer bytes some cameras add");
    assert_eq!(decode_rgb(&trailing, path).unwrap().dimensions(), (256, 192));
    // The encoded data without its last 20%: the decoder alone returns an image.
    let cut = &jpeg[..jpeg.len() * 8 / 10];
    let e = decode_rgb(cut, path).unwrap_err();
    assert!(e.is_per_image() && e.to_string().contains("truncated JPEG"), "{e}");
    // An APP1 segment holding a thumbnail (FF D8 ... FF D9) before the image: still truncated.
    let thumb = [0xFF, 0xD8, 0xFF, 0xD9];
    let mut with_app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0, (2 + thumb.len()) as u8];
    with_app1.extend(thumb);
    with_app1.extend(&cut[2..]);
    let e = decode_rgb(&with_app1, path).unwrap_err();
    assert!(e.to_string().contains("truncated JPEG"), "{e}");
    // Whole files with bytes that are no marker where one is due, which libjpeg only warns
    // about and PIL decodes: stray zeros after the first segment, an APP1 whose length is 2 short.
    let at = 4 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
    let mut stray = jpeg[..at].to_vec();
    stray.extend([0, 0]);
    stray.extend(&jpeg[at..]);
    assert_eq!(decode_rgb(&stray, path).unwrap().dimensions(), (256, 192));
    let mut short = vec![0xFF, 0xD8, 0xFF, 0xE1, 0, 4, 1, 2, 3, 4];
    short.extend(&jpeg[2..]);
    assert_eq!(decode_rgb(&short, path).unwrap().dimensions(), (256, 192));
    // A segment length too short to cover a thumbnail lands on the thumbnail's start: refused,
    // as libjpeg refuses two SOI markers (its end marker would have passed for the image's).
    // The decoder's own header read, which goes on to the first scan, refuses it too (so this
    // holds with or without jpeg_has_end's check, which guards a decoder that would not).
    let sos = cut.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut into_thumb = cut[..sos].to_vec();
    into_thumb.extend([0xFF, 0xE1, 0, 2, 0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 0xFF, 0xD9]);
    into_thumb.extend(&cut[sos..]);
    let e = decode_rgb(&into_thumb, path).unwrap_err();
    assert!(e.is_per_image(), "{e}");
}
