//! The data pipeline on generated images with known content: ImageFolder indexing, decoding
//! and corrupt files, resize against PIL and an independent f64 reference, crop / flip /
//! rescale / jitter / colour maths, loader determinism across thread counts, and a round
//! trip through the GPU normalisation kernel on the emulator.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use image::{Rgb, RgbImage};
use vgg_cuda::data::{
    decode_rgb, resize, stats, DataError, Dataset, HostBatch, ImageFolder, Loader, LoaderConfig, Pca, SampleRng, Scale,
    Synthetic, TestTransform, TrainTransform, Transform,
};
use vgg_cuda::ops::{self, InputNorm};
use vgg_cuda::{Device, Tensor};

mod common;
use common::TempDir;

fn write_img(path: &Path, img: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let fmt = match path.extension().unwrap().to_str().unwrap().to_lowercase().as_str() {
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        "bmp" => image::ImageFormat::Bmp,
        _ => image::ImageFormat::Png,
    };
    img.save_with_format(path, fmt).unwrap();
}

fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(c))
}

/// Pixel (x, y) holds (x, y, 200): a crop says where it came from.
fn coords(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 200]))
}

fn train(scale: Scale, crop: u32) -> TrainTransform {
    TrainTransform { scale, crop, flip: false, color_shift: None, color_std: 0.1 }
}

fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig { batch, shuffle: true, seed: 11, workers, drop_last: false, prefetch: 2, strict: false }
}

fn all_batches(l: &Loader, epoch: u64) -> Vec<HostBatch> {
    l.epoch(epoch).map(|b| b.unwrap()).collect()
}

/// A one-image dataset.
struct One(RgbImage);

impl Dataset for One {
    fn len(&self) -> usize {
        1
    }
    fn classes(&self) -> &[String] {
        &[]
    }
    fn load(&self, _: usize) -> Result<(RgbImage, usize), DataError> {
        Ok((self.0.clone(), 0))
    }
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

/// One output of PIL 13.0's `Image.resize(to, Image.BILINEAR)` of `pil_source(from)`, as
/// hex bytes (generated by a 6-line script: `Image.new`, `putdata` with the formula below).
struct PilCase {
    from: (u32, u32),
    to: (u32, u32),
    hex: &'static str,
}

/// Downscale, upscale, one axis only, and a strong horizontal downscale.
const PIL_BILINEAR: [PilCase; 4] = [
    PilCase { from: (13, 9), to: (5, 4), hex: "300415850e1f97272a494e359e7a3e460b209b1541962e675f558bb4819660112cb21b676534a0795b8cc8875f761837ac228a4e3b808f624ea68e99" },
    PilCase { from: (13, 9), to: (20, 15), hex: "0000111200112a01114203115a0611720a118a0e11a21311ba1911d220119728110831111a3a113245114a5011625c117a6911927611aa8511bc90110401111601122e02134604155e0716760b178e0f19a6141abe1a1bd6211c9b291e0c321f1e3b203646214e5123665d247e6a25967727ae8628c091290b03111d03133504174d061a65091d7d0d20951124ad1627c51c2add232da22b31133434253d373d483a55533e6d5f41856c449d7947b5884bc7934d1205112405153c061a54081f6c0b24840f2a9c132fb41834cc1e39e4253ea92d441a36492c3f4e444a535c555874615e8c6e63a47b68bc8a6dce95711807112a071642081d5a0a25720d2b8a1133a2153aba1a41d22048ea2750af2f5620385e3241654a4c6c6257737a637b927081aa7d89c28c90d497951f0811310818490921610b2a790e3391123ca91645c11b4fd92157f12860b6306a27397339427b514d8569588e8164979971a0b17ea9c98db2db98b9250a11370a194f0b24670d307f103a971445af1850c71d5cdd2366b22a7177327d2b3b883f4493574f9e6f5aa98766b49f73beb780cacf8f9fe19a772c0c113e0c1a560d286e0f358612419e164fb61a5bce1f69e02576512c821634902e3d9c4646aa5e51b7765cc38e68d1a675ddbe82ebd69171e89c01330e11450e1c5d0f2b75113a8d1449a51858bd1c66d52176e72785582e931d36a3353fb14d48c16553d07d5ede956a95ad7763c58472dd934bef9e253910114b101d63112e7b133f931650ab1a61c31e72db2382ed29945e30a52338b53b41c6534ab86b55b58360c69b6c61b3791bcb862ce3953df5a04940111152111f6a12328214449a1758b21b6aca1f7de22490f42aa36531b52a39c94242db5a4b6e7256348a6147a26d3cba7a3ad2874cea965ffca16d46131158132070143588164aa0195fb81d73d02188c2269d962cb24a33c7303bba48448c604d3f78581a90632fa86f43c07c58d8896dbb98829ca3914d15115f15227716388f184fa71b66bf1f7dd723938f28aa072ec11f35d8373d9b4f460c674f1c7f5a33976549af7160c77e77df8b8e719aa409a5b55417116617237e183c961a54ae1d6dc62186de259e962ab70e30cc2637813e3f4656481d6e5133865c4c9e6764b6737dce8096e68dae789cc710a7d95818116a182482193e9a1b58b21e72ca228ce226a69a2bc01231d42a384742400e5a49287252428a5d5ca26876ba7490d281aaea8ec47c9dde14a8f1" },
    PilCase { from: (13, 9), to: (7, 9), hex: "170111530611971111a12411253f11696011a582112204145e091ca21425ac272f304239746342b0854a2d0717690c28ad173ab72a4d3b45607f6673bb8883380a1a740f33b81a4ec22d6b4648888a69a3c68bbc430d1d7f123ec31d63473089514baf956cd4d18e7b4e10208a1549ce20775233a75c4ed7a06f65dc912e591324951855d9238c5d36c5675149ab7236e79466641627a01b609926a02b39a6725426b6756678979f6f192aab1e6ba429b4363c3e7d574ec17897839ad8" },
    PilCase { from: (31, 7), to: (6, 3), hex: "660d1c733c30858d46816a5c7b805f7a71507a133880427b7e938d8270747c86807277758819537d489089996b8476817f8c826f7d89" },
];

fn pil_source(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([((x * 37 + y * 11) % 256) as u8, ((x * x + 3 * y) % 256) as u8, ((x * y * 5 + 17) % 256) as u8])
    })
}

/// Antialiased bilinear resize straight from its definition, in f64, over every source
/// pixel (no tap windows): output o of an axis is the triangle filter of half-width
/// max(in/out, 1) centred at (o + 0.5) * in / out, normalised over the pixels inside.
fn reference_resize(src: &RgbImage, ow: u32, oh: u32) -> Vec<f64> {
    let weights = |n_in: u32, n_out: u32, o: u32| -> Vec<f64> {
        let scale = n_in as f64 / n_out as f64;
        let fs = scale.max(1.0);
        let c = (o as f64 + 0.5) * scale;
        let w: Vec<f64> = (0..n_in).map(|i| (1.0 - ((i as f64 + 0.5 - c) / fs).abs()).max(0.0)).collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|v| v / s).collect()
    };
    let (iw, ih) = src.dimensions();
    let mut out = vec![];
    for oy in 0..oh {
        let wy = weights(ih, oh, oy);
        for ox in 0..ow {
            let wx = weights(iw, ow, ox);
            for c in 0..3 {
                let mut acc = 0.0;
                for y in 0..ih {
                    for x in 0..iw {
                        acc += wy[y as usize] * wx[x as usize] * src.get_pixel(x, y).0[c] as f64;
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

#[test]
fn resize_matches_pil_and_an_independent_reference() {
    // PIL rounds its intermediate (after the horizontal pass) to 8 bits; we keep f32: at
    // most one level apart.
    for PilCase { from: (w, h), to: (ow, oh), hex } in PIL_BILINEAR {
        let want: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let got = resize::resize(&pil_source(w, h), ow, oh);
        let worst = got.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "{w}x{h} -> {ow}x{oh}: max difference from PIL {worst} > 1");
    }
    // Against the f64 definition: |ours - reference| <= 0.5 + 1e-3 (the rounding of the
    // output, plus f32 accumulation), down, up, one axis, extreme ratios, 1-pixel images.
    let cases = [
        (13, 9, 5, 4),
        (13, 9, 20, 15),
        (13, 9, 7, 9),
        (31, 7, 6, 3),
        (1, 1, 4, 3),
        (40, 2, 3, 9),
        (5, 5, 1, 1),
        (64, 3, 17, 3),
    ];
    for (w, h, ow, oh) in cases {
        let src = pil_source(w, h);
        let got = resize::resize(&src, ow, oh);
        let want = reference_resize(&src, ow, oh);
        for (i, (g, r)) in got.as_raw().iter().zip(&want).enumerate() {
            assert!((*g as f64 - r).abs() <= 0.5 + 1e-3, "{w}x{h} -> {ow}x{oh}: element {i}: {g} vs {r:.4}");
        }
    }
}

#[test]
fn train_crop_coordinates_and_flip() {
    // S = the image's shorter side: no resampling, so each output pixel names its source.
    let (w, h, crop) = (40u32, 30u32, 16u32);
    let img = coords(w, h);
    let mut seen_x = vec![false; (w - crop + 1) as usize];
    let mut seen_y = vec![false; (h - crop + 1) as usize];
    let mut flips = 0;
    for flip in [false, true] {
        let t = Transform::Train(TrainTransform { flip, ..train(Scale::Fixed(30), crop) });
        let mut worker = vgg_cuda::data::Worker::default();
        for i in 0..300 {
            let mut rng = SampleRng::for_sample(3, 0, i);
            let plan = t.plan(w, h, &mut rng).unwrap();
            assert_eq!(plan.rescaled, (w, h));
            let mut out = vec![];
            let placed = worker.apply(&img, &plan, &mut out);
            assert_eq!((placed.width, placed.height, out.len()), (crop, crop, (crop * crop * 3) as usize));
            let (x0, y0, _, _) = plan.window;
            assert!(x0 <= w - crop && y0 <= h - crop);
            seen_x[x0 as usize] = true;
            seen_y[y0 as usize] = true;
            flips += plan.flip as usize;
            assert!(flip || !plan.flip);
            for r in 0..crop {
                for c in 0..crop {
                    let p = &out[((r * crop + c) * 3) as usize..][..3];
                    let sx = if plan.flip { x0 + crop - 1 - c } else { x0 + c };
                    assert_eq!(p, [sx as u8, (y0 + r) as u8, 200], "sample {i} at ({c}, {r})");
                }
            }
        }
    }
    assert!(seen_x.iter().all(|s| *s) && seen_y.iter().all(|s| *s), "every offset, both extremes, occurs");
    assert!((110..190).contains(&flips), "{flips} flips of 300");
}

#[test]
fn rescale_sizes_extreme_aspects_and_tiny_images() {
    let t = Transform::Train(train(Scale::Fixed(32), 24));
    let mut rng = SampleRng::new(1);
    assert_eq!(t.plan(500, 375, &mut rng).unwrap().rescaled, (42, 32));
    assert_eq!(t.plan(1, 1, &mut rng).unwrap().rescaled, (32, 32));
    assert_eq!(t.plan(2, 3, &mut rng).unwrap().rescaled, (32, 48));
    assert_eq!(t.plan(1, 5000, &mut rng).unwrap().rescaled, (32, 160000));
    assert_eq!(t.plan(5000, 2, &mut rng).unwrap().rescaled, (80000, 32));
    // S below the crop is raised to the crop.
    let small = Transform::Train(train(Scale::Fixed(8), 24));
    assert_eq!(small.plan(30, 60, &mut rng).unwrap().rescaled, (24, 48));
    assert_eq!(t.plan(0, 4, &mut rng).unwrap_err(), "image of 0x4 pixels");
    // Whole pipeline on extreme and tiny images: right size, a solid colour stays solid.
    for (w, h) in [(1, 1), (2, 3), (1, 3000), (3000, 1), (7, 300)] {
        let ds: Arc<dyn Dataset> = Arc::new(One(solid(w, h, [10, 120, 250])));
        for tr in [t.clone(), small.clone(), Transform::Test(TestTransform { scale: 20, crop: Some(24) })] {
            let l = Loader::new(ds.clone(), tr.clone(), cfg(1, 0));
            let b = &all_batches(&l, 0)[0];
            assert_eq!((b.n, b.size, b.images.len()), (1, 24, 24 * 24 * 3), "{w}x{h} {tr:?}");
            assert!(b.images.chunks(3).all(|p| p == [10, 120, 250]), "{w}x{h}");
        }
    }
}

#[test]
fn scale_jitter_covers_its_range_uniformly() {
    let t = Transform::Train(train(Scale::Jitter(256, 512), 224));
    let mut hist = vec![0usize; 257];
    for i in 0..20_000 {
        let plan = t.plan(400, 300, &mut SampleRng::for_sample(5, 2, i)).unwrap();
        let s = plan.rescaled.1;
        assert!((256..=512).contains(&s), "S = {s}");
        assert_eq!(plan.rescaled.0, 400 * s / 300);
        hist[(s - 256) as usize] += 1;
    }
    assert!(hist[0] > 0 && hist[256] > 0, "both ends drawn");
    let mean = hist.iter().enumerate().map(|(i, c)| (i + 256) as f64 * *c as f64).sum::<f64>() / 20_000.0;
    assert!((mean - 384.0).abs() < 2.0, "mean S {mean}");
    let (lo, hi) = (hist[..128].iter().sum::<usize>(), hist[129..].iter().sum::<usize>());
    assert!((lo as f64 / hi as f64 - 1.0).abs() < 0.06, "halves {lo} vs {hi}");
}

#[test]
fn test_transform_centre_crop_and_whole_image() {
    let img = coords(50, 30);
    let t = Transform::Test(TestTransform { scale: 30, crop: Some(17) });
    let plan = t.plan(50, 30, &mut SampleRng::new(0)).unwrap();
    // torchvision: round((50 - 17) / 2) = round(16.5) = 16, round(6.5) = 6.
    assert_eq!(plan.window, (16, 6, 17, 17));
    let mut out = vec![];
    vgg_cuda::data::Worker::default().apply(&img, &plan, &mut out);
    assert_eq!(&out[..3], [16, 6, 200]);
    let whole = Transform::Test(TestTransform { scale: 15, crop: None });
    let ds: Arc<dyn Dataset> = Arc::new(One(img));
    let l = Loader::new(ds.clone(), whole.clone(), cfg(1, 1));
    let b = &all_batches(&l, 0)[0];
    assert_eq!((b.size, b.width, b.height, b.images.len()), (0, 25, 15, 25 * 15 * 3));
    // Whole images vary in size: a batch holds one.
    let e = Loader::try_new(ds, whole, cfg(2, 1)).err().expect("a batch of 2 whole images").to_string();
    assert!(e.contains("whole-image test batches hold one image (sizes vary), got batch 2"), "{e}");
    let far = Transform::Test(TestTransform { scale: 10, crop: None });
    assert!(far.plan(1000, 10, &mut SampleRng::new(0)).unwrap_err().contains("aspect"));
}

/// Sizes above `MAX_SIDE` are refused by the transforms' validation and by the stats, naming
/// what is too large, instead of allocating gigabytes; an image whose rescale would be huge
/// (an extreme aspect ratio) is skipped by the stats, or an error when strict.
#[test]
fn sizes_above_max_side_are_refused() {
    use vgg_cuda::data::MAX_SIDE;
    let big = MAX_SIDE + 1;
    let ok = |t: Transform| t.validate().unwrap();
    let refused = |t: Transform, what: &str| {
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains(what) && e.contains(&MAX_SIDE.to_string()), "{e}");
    };
    ok(train(Scale::Fixed(MAX_SIDE), MAX_SIDE).into());
    refused(train(Scale::Fixed(big), 224).into(), "scale S");
    refused(train(Scale::Jitter(256, big), 224).into(), "scale S");
    refused(train(Scale::Fixed(MAX_SIDE), big).into(), "crop");
    ok(TestTransform { scale: MAX_SIDE, crop: None }.into());
    refused(TestTransform { scale: big, crop: Some(224) }.into(), "test scale Q");
    refused(TestTransform { scale: 256, crop: Some(big) }.into(), "crop");

    let one = One(solid(8, 6, [1, 2, 3]));
    let e = stats::compute(&one, 0, big, 0, false).unwrap_err().to_string();
    assert!(e.contains("--size") && e.contains(&MAX_SIDE.to_string()), "{e}");
    assert_eq!(stats::compute(&one, 0, 64, 0, true).unwrap().images, 1);
    // 1 x 40000 rescaled to 256 would be 256 x 10240000 (7.9 GB).
    let thin = One(solid(1, 40000, [9, 9, 9]));
    let e = stats::compute(&thin, 0, 256, 0, true).unwrap_err();
    assert!(e.is_per_image() && e.to_string().contains("256x10240000"), "{e}");
    assert!(matches!(stats::compute(&thin, 0, 256, 0, false), Err(DataError::NoImage { skipped: 1 })));
}

#[test]
fn pca_and_mean_maths() {
    // Pixels (v, v, v) + (d, -d, 0): mean 127.5-ish, two principal axes.
    let mut px = vec![];
    for i in 0..256u32 {
        for d in [-20i32, 20] {
            let v = i as i32 / 2 + 64;
            px.extend([(v + d) as u8, (v - d) as u8, v as u8]);
        }
    }
    let s = stats::of_pixels(&px);
    let n = px.len() / 3;
    for c in 0..3 {
        let m = px.iter().skip(c).step_by(3).map(|v| *v as f64).sum::<f64>() / n as f64;
        assert!((s.mean[c] - m).abs() < 1e-9);
    }
    let gray = 1.0 / 3f64.sqrt();
    let e0 = [s.pca.eigvec[0][0], s.pca.eigvec[1][0], s.pca.eigvec[2][0]];
    assert!(e0.iter().all(|v| (*v as f64 - gray).abs() < 1e-4), "first axis gray: {e0:?}");
    let e1 = [s.pca.eigvec[0][1], s.pca.eigvec[1][1], s.pca.eigvec[2][1]];
    let r = std::f64::consts::FRAC_1_SQRT_2;
    assert!((e1[0].abs() as f64 - r).abs() < 1e-4 && (e1[0] + e1[1]).abs() < 1e-4 && e1[2].abs() < 1e-4, "{e1:?}");
    // The variance along the gray axis: 3 * var(v) in 0..1 units; along (1,-1,0): 2 * 20^2.
    let var_v = (0..256).map(|i| ((i / 2 + 64) as f64 - 127.75).powi(2)).sum::<f64>() / 256.0;
    assert!((s.pca.eigval[0] as f64 - 3.0 * var_v / 65025.0).abs() < 1e-5, "{:?}", s.pca.eigval);
    assert!((s.pca.eigval[1] as f64 - 800.0 / 65025.0).abs() < 1e-5, "{:?}", s.pca.eigval);
    assert!(s.pca.eigval[2].abs() < 1e-5);

    // A random symmetric matrix: A v = lambda v, orthonormal, descending.
    let a = [[2.0, -0.7, 0.3], [-0.7, 1.1, 0.25], [0.3, 0.25, 0.4]];
    let (val, vec) = stats::eigen_symmetric3(a);
    assert!(val[0] >= val[1] && val[1] >= val[2]);
    for j in 0..3 {
        for i in 0..3 {
            let av: f64 = (0..3).map(|k| a[i][k] * vec[k][j]).sum();
            assert!((av - val[j] * vec[i][j]).abs() < 1e-12);
            let dot: f64 = (0..3).map(|k| vec[k][i] * vec[k][j]).sum();
            assert!((dot - (i == j) as u8 as f64).abs() < 1e-12);
        }
    }
    // AlexNet's shift by hand: alpha (1, 0, 0) moves along the first column by eigval[0].
    let sh = Pca::IMAGENET.shift([1.0, 0.0, 0.0]);
    assert!((sh[0] - (-0.5675 * 0.2175 * 255.0)).abs() < 1e-3, "{sh:?}");
    let sh = Pca::IMAGENET.shift([0.0, 0.0, 2.0]);
    assert!((sh[1] - (-0.8140 * 2.0 * 0.0045 * 255.0)).abs() < 1e-3, "{sh:?}");

    // The colour shift is what the loader adds: a solid image moves by exactly the plan's shift.
    let t = Transform::Train(TrainTransform {
        color_shift: Some(Pca::IMAGENET),
        color_std: 0.5,
        ..train(Scale::Fixed(8), 8)
    });
    let img = solid(8, 8, [100, 100, 100]);
    for i in 0..20 {
        let plan = t.plan(8, 8, &mut SampleRng::for_sample(1, 1, i)).unwrap();
        let sh = plan.shift.unwrap();
        let mut out = vec![];
        vgg_cuda::data::Worker::default().apply(&img, &plan, &mut out);
        for c in 0..3 {
            assert_eq!(out[c], (100.0 + sh[c]).round() as u8, "sample {i}: shift {sh:?}");
        }
    }

    // `vgg stats` over a dataset: mean of solid images of two colours, equal sizes.
    let ds = SolidSet(vec![solid(6, 4, [10, 20, 30]), solid(8, 6, [30, 40, 50]), solid(3, 1, [0, 0, 0])]);
    let st = stats::compute(&ds, 0, 4, 0, false).unwrap();
    assert_eq!(st.images, 3);
    // Each image rescaled to shorter side 4: 6x4, 5x4 (8x6 -> 5x4), 12x4.
    let w = [24.0, 20.0, 48.0];
    let want = [0, 1, 2].map(|c| (w[0] * [10.0, 20.0, 30.0][c] + w[1] * [30.0, 40.0, 50.0][c]) / 92.0);
    for c in 0..3 {
        assert!((st.mean[c] - want[c]).abs() < 1e-9, "{:?} vs {want:?}", st.mean);
    }
    let json = serde_json::to_string(&st).unwrap();
    let back: stats::DatasetStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back.norm().mean, st.norm().mean);
}

struct SolidSet(Vec<RgbImage>);

impl Dataset for SolidSet {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn classes(&self) -> &[String] {
        &[]
    }
    fn load(&self, i: usize) -> Result<(RgbImage, usize), DataError> {
        Ok((self.0[i].clone(), 0))
    }
}

fn paper_like(crop: u32) -> TrainTransform {
    TrainTransform {
        scale: Scale::Jitter(crop, crop * 2),
        crop,
        flip: true,
        color_shift: Some(Pca::IMAGENET),
        color_std: 0.1,
    }
}

#[test]
fn loader_is_deterministic_whatever_the_thread_count() {
    let ds: Arc<dyn Dataset> = Arc::new(Synthetic::new(5, 20, 37, 9));
    let run = |workers: usize, epoch: u64, seed: u64| {
        let l = Loader::new(ds.clone(), paper_like(16), LoaderConfig { seed, ..cfg(5, workers) });
        all_batches(&l, epoch).into_iter().map(|b| (b.images, b.labels, b.indices)).collect::<Vec<_>>()
    };
    let base = run(0, 3, 1);
    assert_eq!(base.len(), 8);
    assert_eq!(base.iter().map(|b| b.1.len()).sum::<usize>(), 37);
    for workers in [1, 2, 5] {
        assert!(run(workers, 3, 1) == base, "{workers} workers differ from the calling thread");
    }
    assert!(run(2, 4, 1) != base, "epochs differ");
    assert!(run(2, 3, 2) != base, "seeds differ");
    // Every image exactly once per epoch, with its own label.
    let mut seen: Vec<usize> = base.iter().flat_map(|b| b.2.clone()).collect();
    for b in &base {
        for (l, i) in b.1.iter().zip(&b.2) {
            assert_eq!(*l as usize, ds.load(*i).unwrap().1);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..37).collect::<Vec<_>>());
}

#[test]
fn drop_last_keep_last_prefetch_and_recycling() {
    let ds: Arc<dyn Dataset> = Arc::new(Synthetic::new(3, 12, 10, 1));
    let keep = Loader::new(ds.clone(), train(Scale::Fixed(12), 12), cfg(4, 2));
    assert_eq!(keep.batches(), 3);
    let b = all_batches(&keep, 0);
    assert_eq!(b.iter().map(|b| b.n).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(b.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2]);
    let dropping = Loader::new(ds.clone(), train(Scale::Fixed(12), 12), LoaderConfig { drop_last: true, ..cfg(4, 2) });
    assert_eq!(all_batches(&dropping, 0).iter().map(|b| b.n).collect::<Vec<_>>(), [4, 4]);
    // Recycled buffers are built into again, and come back filled with the same content as fresh
    // ones. Two buffers are handed back, marked by a capacity no batch asks for (an address would
    // not do: malloc hands a dropped buffer's back); the third batch of the epoch gets a new one.
    let fresh = all_batches(&keep, 1);
    const MARK: usize = 1 << 20;
    for mut b in all_batches(&keep, 0).into_iter().take(2) {
        b.images.reserve_exact(MARK);
        keep.recycle(b);
    }
    let reused = all_batches(&keep, 1);
    assert_eq!(reused.iter().filter(|b| b.images.capacity() >= MARK).count(), 2);
    assert_eq!(fresh.len(), reused.len());
    assert!(fresh.iter().zip(&reused).all(|(a, b)| a.images == b.images && a.labels == b.labels));
    // Unshuffled: dataset order.
    let ordered = Loader::new(ds.clone(), train(Scale::Fixed(12), 12), LoaderConfig { shuffle: false, ..cfg(4, 0) });
    assert_eq!(all_batches(&ordered, 5)[0].indices, [0, 1, 2, 3]);
    // Stopping early (dropping the epoch) with workers running does not hang.
    let mut e = keep.epoch(2);
    e.next().unwrap().unwrap();
    drop(e);
    // Bad settings are reported, not panicked on.
    let bad = Loader::new(ds.clone(), train(Scale::Fixed(12), 12), cfg(0, 1));
    assert!(matches!(bad.epoch(0).next(), Some(Err(DataError::Config(_)))));
    let e = Loader::try_new(ds, train(Scale::Fixed(12), 0), cfg(1, 1)).err().expect("a crop of 0").to_string();
    assert!(e.contains("crop size 0"), "{e}");
}

#[test]
fn synthetic_is_deterministic_and_its_classes_differ() {
    let a = Synthetic::new(12, 24, 40, 3);
    let b = Synthetic::new(12, 24, 40, 3);
    let c = Synthetic::new(12, 24, 40, 4);
    assert_eq!(a.classes().len(), 12);
    assert_eq!(a.classes()[0], "disc");
    assert_eq!(a.classes()[11], "square-1");
    let uniq: std::collections::HashSet<&String> = a.classes().iter().collect();
    assert_eq!(uniq.len(), 12);
    for i in 0..40 {
        let (x, l) = a.load(i).unwrap();
        assert_eq!(l, i % 12);
        assert_eq!(x, b.load(i).unwrap().0);
        assert_ne!(x, c.load(i).unwrap().0);
        assert_eq!(x.dimensions(), a.dims(i));
        assert_eq!(x.width().min(x.height()), 24);
        assert!(x.width().max(x.height()) <= 30);
    }
    let sq = Synthetic::new(2, 8, 4, 0).square();
    assert!((0..4).all(|i| sq.load(i).unwrap().0.dimensions() == (8, 8)));
    assert!(a.load(40).is_err());
}

#[test]
fn synthetic_classes_are_learnable_by_a_simple_feature() {
    // Not a network: nearest class centroid on a 6x6 average-pooled, mean-removed
    // grayscale image already beats chance by far on shapes 0-9 (random colours), a
    // sanity check that the classes carry spatial structure a small VGG can learn.
    let ds = Synthetic::new(10, 24, 600, 21).square();
    let feat = |i: usize| -> Vec<f64> {
        let img = resize::resize(&ds.load(i).unwrap().0, 6, 6);
        let g: Vec<f64> = img.pixels().map(|p| p.0.iter().map(|v| *v as f64).sum::<f64>()).collect();
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let sd = (g.iter().map(|v| (v - m).powi(2)).sum::<f64>() / g.len() as f64).sqrt().max(1.0);
        g.iter().map(|v| ((v - m) / sd).abs()).collect()
    };
    let mut cent = vec![vec![0.0; 36]; 10];
    for i in 0..500 {
        for (c, f) in cent[i % 10].iter_mut().zip(feat(i)) {
            *c += f / 50.0;
        }
    }
    let correct = (500..600)
        .filter(|&i| {
            let f = feat(i);
            let d = |c: &Vec<f64>| c.iter().zip(&f).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            (0..10).min_by(|&a, &b| d(&cent[a]).total_cmp(&d(&cent[b]))).unwrap() == i % 10
        })
        .count();
    assert!(correct >= 20, "nearest centroid: {correct}/100 (chance 10)");
}

#[test]
fn round_trip_through_the_normalisation_kernel_on_emu() {
    let ds: Arc<dyn Dataset> = Arc::new(Synthetic::new(4, 10, 6, 2));
    let l = Loader::new(ds, paper_like(8), cfg(3, 1));
    let b = all_batches(&l, 0).remove(0);
    let dev = Device::emu();
    let shape = [b.n, b.size as usize, b.size as usize, 3];
    let x = Tensor::from_host(&dev, &shape, &b.images).unwrap();
    let mut y = Tensor::<f16>::empty(&dev, &shape).unwrap();
    let norm = InputNorm { mean: [121.5, 113.25, 100.0], std: None };
    ops::normalize_input(&x, None, &norm, &mut y).unwrap();
    let got = y.to_f32().unwrap();
    for (i, (g, v)) in got.iter().zip(&b.images).enumerate() {
        let want = f16::from_f32(*v as f32 - norm.mean[i % 3]).to_f32();
        assert_eq!(*g, want, "element {i}");
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

/// An empty range is a caller's bug and panics, as `rand`'s `gen_range` does, instead of
/// wrapping to numbers outside both bounds in a release build.
#[test]
#[should_panic(expected = "empty range 5..=4")]
fn sample_rng_range_refuses_an_empty_range() {
    let mut rng = SampleRng::new(1);
    assert!((0..100).all(|_| (3..=7).contains(&rng.range(3, 7))));
    rng.range(5, 4);
}
