//! `vgg bench conv` on the emu device: through the library API (rows with finite times whose
//! outputs agree with the f64 reference), `--algo tune` (the tuner's plan named in each row),
//! the JSON report and the PNG chart, and the CLI's errors (no GPU, a bad layer name).

mod common;

use common::vgg;
use std::path::PathBuf;
use vgg_cuda::bench::conv::{self, select_layers, Algo, ConvBenchConfig, ConvReport, ConvRow, Pass};
use vgg_cuda::bench::plot;
use vgg_cuda::Device;

fn emu_config(layers: &str, algo: Algo) -> ConvBenchConfig {
    let dev = Device::emu();
    let mut cfg = ConvBenchConfig::new(&dev, None);
    cfg.layers = select_layers(true, None, layers).unwrap();
    cfg.algo = algo;
    cfg
}

fn assert_rows_good(report: &ConvReport, expect_rows: usize) {
    assert_eq!(report.rows.len(), expect_rows, "{report:#?}");
    for r in &report.rows {
        let what = format!("{} {} on {}", r.layer, r.pass.name(), report.device);
        assert!(r.ours_error.is_none(), "{what}: {:?}", r.ours_error);
        let m = r.ours.as_ref().unwrap_or_else(|| panic!("{what}: not measured"));
        assert!(m.ms.is_finite() && m.ms > 0.0 && m.min_ms <= m.ms, "{what}: times {m:?}");
        assert!(m.tflops.is_finite() && m.tflops > 0.0, "{what}: {m:?}");
        assert!(r.cudnn.is_none() && r.ratio.is_none(), "{what}: cuDNN on the emulator?");
        let a = r.agreement.as_ref().unwrap_or_else(|| panic!("{what}: no agreement check"));
        assert_eq!(a.against, "reference", "{what}");
        assert!(a.pass && a.max_rel.is_finite() && a.rel_l2.is_finite(), "{what}: {a:?}");
        assert!(a.rel_l2 < 1e-2, "{what}: {a:?}");
    }
    assert_eq!(report.summary.failed, 0);
    assert_eq!(report.summary.ours_measured, expect_rows);
    assert_eq!(report.summary.agreement_checked, expect_rows);
}

#[test]
fn emu_bench_measures_and_agrees_with_reference() {
    let dev = Device::emu();
    let cfg = emu_config("conv1_1,conv1_2,conv3_1", Algo::Auto);
    let mut seen = 0;
    let report = conv::run(&dev, &cfg, |_| seen += 1);
    assert_eq!(seen, 9);
    assert_rows_good(&report, 9);
    assert!(report.cudnn_version.is_none() && report.cudnn_note.is_some());
    // Under `auto` the first layer (C = 3) runs the implicit GEMM forward and backward-data;
    // the others Winograd, and igemm for wgrad.
    assert_eq!(report.rows[0].ours.as_ref().unwrap().algo, "igemm");
    assert_eq!(report.rows[1].ours.as_ref().unwrap().algo, "igemm");
    assert!(report.rows[3].ours.as_ref().unwrap().algo.starts_with("winograd2x2/"));
    // wgrad names its block tile: K = 64 (conv1_2) takes 64 rows.
    assert!(report.rows[5].ours.as_ref().unwrap().algo.starts_with("igemm/64x"));
    assert!(report.summary.line().contains("9 rows: 9 measured"), "{}", report.summary.line());

    // The report round-trips through JSON, and the chart renders without system fonts.
    let json = serde_json::to_string(&report).unwrap();
    let back: ConvReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.rows.len(), 9);
    let dir = common::TempDir::new("bench-conv", "auto");
    let png = dir.join("auto.png");
    plot::conv_chart(&report, &png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn emu_bench_direct_algorithm_agrees() {
    let dev = Device::emu();
    let mut cfg = emu_config("conv2_1", Algo::Direct);
    cfg.passes = vec![Pass::Wgrad, Pass::Fprop];
    let report = conv::run(&dev, &cfg, |_| {});
    assert_rows_good(&report, 2);
    assert_eq!(report.rows[0].pass, Pass::Wgrad);
    assert!(report.rows.iter().all(|r| r.ours.as_ref().unwrap().algo == "direct"));
}

/// A `tune` row names the plan the tuner chose for its pass: `base` with nothing timed where
/// the pass has nothing to choose between, else a variant the tuner timed and found in
/// agreement with the base plan, whose label is the row's algorithm; and the row agrees with
/// the reference like any other.
fn assert_tuned_row(r: &ConvRow) {
    let what = format!("{} {}", r.layer, r.pass.name());
    let t = r.tune.as_ref().unwrap_or_else(|| panic!("{what}: a tune row without the tuner's choice"));
    let label = &r.ours.as_ref().unwrap().algo;
    assert!(r.table_line().contains(&format!("tune: chose {}", t.chosen)), "{what}: {}", r.table_line());
    if t.chosen == "base" {
        return;
    }
    let c = t.candidates.iter().find(|c| c.variant == t.chosen).unwrap_or_else(|| panic!("{what}: {t:?}"));
    assert!(c.ms.is_some_and(|ms| ms > 0.0) && c.unsupported.is_none(), "{what}: {c:?}");
    assert!(c.rel_l2.is_some_and(|r| r <= vgg_cuda::ops::conv_tune::AGREEMENT), "{what}: {c:?}");
    let names = match t.chosen.as_str() {
        "winograd2x2/flat" => label == "winograd2x2/flat",
        "winograd2x2/region" => label.starts_with("winograd2x2/r"),
        "winograd4x4" => label == "winograd4x4",
        // The halo tiles' plain labels: wgmma/halo256xN (fprop, dgrad) or wgmma/halo128xN (wgrad).
        "wgmma" => {
            label.starts_with("wgmma/halo")
                && !label.starts_with("wgmma/halo512")
                && !label.ends_with("/sw128")
                && !label.ends_with("/tma")
                && !label.ends_with("/tma-ws")
                && !label.ends_with("/tma-mc")
                && !label.ends_with("/tma-2d")
        }
        "wgmma/flat" => label.starts_with("wgmma/128x"),
        "wgmma/tall" => label.starts_with("wgmma/halo512") && !label.ends_with("/tma"),
        "wgmma/sw128" => label.ends_with("/sw128"),
        "wgmma/tma" => label.starts_with("wgmma/halo256") && label.ends_with("/tma"),
        "wgmma/tma-ws" => label.ends_with("/tma-ws"),
        "wgmma/tma-mc" => label.ends_with("/tma-mc"),
        "wgmma/tma-2d" => label.ends_with("/tma-2d"),
        "wgmma/tall-tma" => label.ends_with("512x64/tma"),
        "igemm" => label.starts_with("igemm/"),
        other => panic!("{what}: unknown variant {other}"),
    };
    assert!(names, "{what}: chose {} but runs {label}", t.chosen);
}

#[test]
fn emu_bench_tune_runs_the_tuners_plan() {
    let dev = Device::emu();
    // conv1_1 (C = 3) has no pass to tune; conv3_1 and conv3_2 share a shape (32 > 32 at 3x3
    // on emu), tuned once, as training tunes it.
    let cfg = emu_config("conv1_1,conv3_1,conv3_2", Algo::Tune);
    let report = conv::run(&dev, &cfg, |_| {});
    assert_rows_good(&report, 9);
    assert_eq!(report.algo, "tune");
    for r in &report.rows {
        assert_tuned_row(r);
    }
    let (first, tuned) = report.rows.split_at(3);
    for r in first {
        let t = r.tune.as_ref().unwrap();
        assert!(t.chosen == "base" && t.candidates.is_empty(), "{} {}: {t:?}", r.layer, r.pass.name());
    }
    for r in tuned {
        let t = r.tune.as_ref().unwrap();
        // Every Winograd variant is timed for fprop and dgrad (wgmma's too: emu has it).
        let want = if r.pass == Pass::Wgrad { 2 } else { 4 };
        assert!(t.candidates.len() >= want, "{} {}: {t:?}", r.layer, r.pass.name());
        assert_ne!(t.chosen, "base", "{} {}: every candidate agrees on emu", r.layer, r.pass.name());
    }
    for (a, b) in tuned[..3].iter().zip(&tuned[3..]) {
        let (ta, tb) = (a.tune.as_ref().unwrap(), b.tune.as_ref().unwrap());
        assert_eq!(ta.chosen, tb.chosen, "{}: one shape, one tuning", a.pass.name());
        assert_eq!(a.ours.as_ref().unwrap().algo, b.ours.as_ref().unwrap().algo);
    }
    let back: ConvReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back.rows[3].tune.as_ref().unwrap().chosen, report.rows[3].tune.as_ref().unwrap().chosen);
}

#[test]
fn unsupported_algorithm_is_a_failed_row_not_a_panic() {
    let dev = Device::emu();
    let mut cfg = emu_config("conv1_2", Algo::ImplicitGemm);
    cfg.passes = vec![Pass::Fprop];
    let report = conv::run(&dev, &cfg, |_| {});
    assert_eq!(report.rows.len(), 1);
    let r = &report.rows[0];
    assert!(r.failed() && r.ours.is_none());
    assert!(r.ours_error.as_deref().unwrap().contains("C <= 8"), "{:?}", r.ours_error);
    assert!(r.table_line().contains("ours: "), "{}", r.table_line());
}

#[test]
fn argument_parsing() {
    assert_eq!(Pass::parse_list("wgrad, fprop").unwrap(), vec![Pass::Wgrad, Pass::Fprop]);
    assert_eq!(Pass::parse_list("all").unwrap(), Pass::ALL.to_vec());
    assert!(Pass::parse_list("fprop,bprop").unwrap_err().to_string().contains("unknown pass `bprop`"));
    assert_eq!(Algo::parse("winograd2x2").unwrap(), Algo::Winograd2x2);
    assert_eq!(Algo::parse("tune").unwrap(), Algo::Tune);
    assert!(Algo::parse("fft").unwrap_err().to_string().contains("tune"));
    assert!(Algo::parse("fft").is_err());
    let gpu = select_layers(false, None, "conv5_3,conv1_2").unwrap();
    assert_eq!(gpu.iter().map(|l| l.name).collect::<Vec<_>>(), ["conv5_3", "conv1_2"]);
    assert_eq!((gpu[1].problem.n, gpu[1].problem.h, gpu[1].problem.c), (64, 224, 64));
    assert_eq!(select_layers(true, None, "all").unwrap().len(), 13);
    assert_eq!(select_layers(true, None, "conv1_2").unwrap()[0].problem.n, 1);
}

#[test]
fn cli_without_gpu_says_why_in_one_line() {
    common::assert_fails_without_gpu_in_one_line(
        &["bench", "conv", "--device", "cuda", "--layers", "conv1_2"],
        "error: bench conv on `cuda`: CUDA device unavailable",
    );
}

#[test]
fn cli_rejects_an_unknown_layer() {
    for device in ["emu", "cuda"] {
        let out = vgg(&["bench", "conv", "--device", device, "--layers", "conv1_2,conv9_9"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown layer `conv9_9`") && err.contains("conv5_3"), "stderr: {err}");
        // An empty item is a typo, refused naming the option; it was skipped and the run went on.
        for (opt, list, want) in [
            (
                "--layers",
                "conv1_1,,conv1_2",
                "--layers conv1_1,,conv1_2: an empty layer in `conv1_1,,conv1_2` (two commas, or one at an end",
            ),
            ("--passes", "fprop,,dgrad", "--passes fprop,,dgrad: an empty pass in `fprop,,dgrad`"),
        ] {
            let out = vgg(&["bench", "conv", "--device", device, opt, list]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(want), "{opt} {list}: stderr: {err}");
        }
    }
}

#[test]
fn cli_emu_run_prints_the_table_and_writes_json_and_a_plot() {
    let dir = common::TempDir::new("bench-conv", "cli");
    let (json, png) = (dir.join("cli.json"), dir.join("cli.png"));
    let out = vgg(&[
        "bench",
        "conv",
        "--device",
        "emu",
        "--layers",
        "conv3_1",
        "--passes",
        "fprop,dgrad",
        "--repeats",
        "2",
        "--batch",
        "2",
        "--algo",
        "winograd4x4",
        "--plot",
        png.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("conv3_1  fprop") && stdout.contains("conv3_1  dgrad"), "{stdout}");
    assert!(stdout.contains("2 rows: 2 measured"), "{stdout}");
    let report: ConvReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report.rows.len(), 2);
    assert!(report.rows.iter().all(|r| r.ours.as_ref().is_some_and(|m| m.samples == 2)));
    // --batch and --algo reach the rows; the chart is a real PNG.
    assert!(report.rows.iter().all(|r| r.n == 2), "{:?}", report.rows.iter().map(|r| r.n).collect::<Vec<_>>());
    assert!(report.rows.iter().all(|r| r.ours.as_ref().is_some_and(|m| m.algo.contains("winograd4x4"))));
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 900 && img.height() > 100, "{}x{}", img.width(), img.height());
}

#[test]
fn cli_emu_tune_names_the_chosen_plans() {
    let dir = common::TempDir::new("bench-conv", "tune");
    let json = dir.join("tune.json");
    let out = vgg(&[
        "bench",
        "conv",
        "--device",
        "emu",
        "--layers",
        "conv3_1",
        "--passes",
        "fprop,wgrad",
        "--repeats",
        "2",
        "--algo",
        "tune",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("algo tune") && stdout.contains("2 rows: 2 measured"), "{stdout}");
    assert_eq!(stdout.matches("    tune: chose ").count(), 2, "{stdout}");
    let report: ConvReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((report.algo.as_str(), report.rows.len()), ("tune", 2));
    for r in &report.rows {
        assert!(r.agreement.as_ref().is_some_and(|a| a.pass), "{} {}: {:?}", r.layer, r.pass.name(), r.agreement);
        assert_tuned_row(r);
    }
    // The tuner chooses the tiling: a fixed one is refused before the run.
    let out = vgg(&["bench", "conv", "--device", "emu", "--algo", "tune", "--wino-tiling", "flat"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && stderr.contains("--algo tune chooses the tiling"), "stderr: {stderr}");
    assert!(!stdout.contains("bench conv on"), "the run started: {stdout}");
}

#[test]
fn cli_output_paths_are_checked_before_the_run() {
    let dir = common::TempDir::new("bench-conv", "outputs");
    let afile = dir.0.join("afile");
    std::fs::write(&afile, b"keep").unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    let cases = [
        ("--plot", path(afile.join("x.png")), "afile is a file, not a folder"),
        ("--json", path(afile.join("x.json")), "afile is a file, not a folder"),
        ("--plot", "/proc/vgg-no-such-dir/x.png".to_string(), "/proc/vgg-no-such-dir: cannot create the folder"),
        ("--plot", path(dir.0.join("chart.svg")), "give a path ending in .png"),
    ];
    for (opt, path, needle) in cases {
        let out = vgg(&["bench", "conv", "--device", "emu", "--layers", "conv1_1", "--passes", "fprop", opt, &path]);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{opt} {path} succeeded: {stdout}{stderr}");
        assert!(stderr.contains(opt) && stderr.contains(needle), "{opt} {path}: stderr: {stderr}");
        assert!(!stdout.contains("bench conv on"), "{opt} {path}: the run started: {stdout}");
    }
    assert_eq!(std::fs::read(&afile).unwrap(), b"keep");
    assert!(!dir.0.join("chart.svg").exists());
}

/// A batch no device holds is a failed row and an error, not an abort: each input's random
/// values were made on the host before the device allocation, and `--batch 100000000000`
/// asked the host for terabytes (the process died with "memory allocation ... failed"), as
/// bench gemm did.
#[test]
fn cli_batch_beyond_the_device_fails_the_row_not_the_process() {
    let out = vgg(&[
        "bench",
        "conv",
        "--device",
        "emu",
        "--layers",
        "conv1_1",
        "--passes",
        "fprop",
        "--batch",
        "100000000000",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("error: bench conv on emu: nothing could be measured"), "stderr: {stderr}");
    assert!(stdout.contains("allocating the inputs"), "stdout: {stdout}");
}
