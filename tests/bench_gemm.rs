//! `vgg bench gemm` on the emu device: through the library API (rows with finite times whose
//! outputs agree with the f64 reference, the copy and SGD bandwidth rows), the JSON report,
//! and the CLI's errors (no GPU, bad shape and pass names).

mod common;

use common::vgg;

use vgg_cuda::bench::gemm::{self, GemmBench, GemmBenchConfig, GemmReport, Pass};
use vgg_cuda::Device;

fn assert_rows_good(report: &GemmReport, expect_rows: usize) {
    assert_eq!(report.rows.len(), expect_rows, "{report:#?}");
    for r in &report.rows {
        let what = format!("{} {} {} on {}", r.layer, r.pass.name(), r.shape(), report.device);
        assert!(r.ours_error.is_none(), "{what}: {:?}", r.ours_error);
        let m = r.ours.as_ref().unwrap_or_else(|| panic!("{what}: not measured"));
        assert!(m.ms.is_finite() && m.ms > 0.0 && m.min_ms <= m.ms, "{what}: times {m:?}");
        assert!(m.tflops.is_finite() && m.tflops > 0.0, "{what}: {m:?}");
        assert!(m.algo.starts_with("tc"), "{what}: the emu shapes should take the tensor-core path: {m:?}");
        assert!(r.cublas.is_none() && r.ratio.is_none(), "{what}: cuBLAS on the emulator?");
        let a = r.agreement.as_ref().unwrap_or_else(|| panic!("{what}: no agreement check"));
        assert_eq!(a.against, "reference", "{what}");
        assert!(a.pass && a.max_rel.is_finite() && a.rel_l2.is_finite(), "{what}: {a:?}");
        assert!(a.rel_l2 < 3e-3, "{what}: {a:?}");
        assert!(r.sets >= 2 && r.pass_bytes > 0, "{what}: {r:?}");
    }
    assert_eq!(report.summary.failed, 0);
    assert_eq!(report.summary.ours_measured, expect_rows);
    assert_eq!(report.summary.agreement_checked, expect_rows);
}

#[test]
fn emu_bench_measures_and_agrees_with_reference() {
    let dev = Device::emu();
    let mut cfg = GemmBenchConfig::new(&dev);
    cfg.batches = vec![3, 8];
    let mut seen = 0;
    let report = gemm::run(&dev, &cfg, |_| seen += 1);
    assert_eq!(seen, 18);
    assert_rows_good(&report, 18);
    assert!(report.cublas_version.is_none() && report.cublas_note.as_deref().unwrap().contains("emulator"));
    assert_eq!((report.rows[0].layer.as_str(), report.rows[0].pass, report.rows[0].m), ("fc6", Pass::Fwd, 3));
    assert_eq!((report.rows[5].pass, report.rows[5].m), (Pass::BwdWeight, 8));
    assert!(report.summary.line().contains("18 rows: 18 measured"), "{}", report.summary.line());

    // The copy, then the SGD step over the shrunk VGG-16, checked against the reference.
    assert_eq!(report.bandwidth.len(), 2, "{:#?}", report.bandwidth);
    for b in &report.bandwidth {
        assert!(b.error.is_none() && !b.failed(), "{b:#?}");
        let t = b.timing.as_ref().unwrap();
        assert!(t.median_ms.is_finite() && t.median_ms > 0.0, "{b:#?}");
        assert!(b.gb_s.unwrap().is_finite() && b.gb_s.unwrap() > 0.0, "{b:#?}");
        assert!(b.of_ceiling.unwrap() > 0.0, "{b:#?}");
    }
    let (copy, sgd) = (&report.bandwidth[0], &report.bandwidth[1]);
    assert_eq!((copy.name.as_str(), copy.bytes_per_call), ("copy", 2 * cfg.copy_bytes));
    assert_eq!(sgd.name, "sgd_step");
    assert_eq!(sgd.elements, gemm::vgg16_params(true).iter().map(|p| p.len).sum::<usize>());
    assert_eq!(sgd.bytes_per_call, 22 * sgd.elements);
    assert!(sgd.of_copy.is_some_and(|c| c.is_finite() && c > 0.0), "{sgd:#?}");
    let check = sgd.check.as_ref().expect("the SGD step is checked");
    assert!(check.pass && check.against == "reference", "{check:?}");
    assert!(sgd.line().contains("GB/s") && sgd.line().contains("of this run's copy"), "{}", sgd.line());

    // The report round-trips through JSON.
    let json = serde_json::to_string(&report).unwrap();
    let back: GemmReport = serde_json::from_str(&json).unwrap();
    assert_eq!((back.rows.len(), back.bandwidth.len()), (18, 2));
    assert_eq!(back.rows[1].pass, Pass::BwdData);
    assert!(json.contains("\"bwd_weight\""), "passes serialise by name");
}

#[test]
fn emu_bench_subset_without_bandwidth() {
    let dev = Device::emu();
    let mut cfg = GemmBenchConfig::new(&dev);
    cfg.layers = gemm::select_layers(true, "fc8").unwrap();
    cfg.passes = vec![Pass::BwdWeight, Pass::Fwd];
    cfg.bandwidth = false;
    let bench = GemmBench::new(&dev, &cfg);
    let report = bench.run(|_| {});
    assert_rows_good(&report, 2);
    assert_eq!(report.rows[0].pass, Pass::BwdWeight);
    assert!(report.bandwidth.is_empty());
    assert!(report.rows[0].table_line().starts_with("fc8   bwd_weight"), "{}", report.rows[0].table_line());
}

#[test]
fn cli_without_gpu_says_why_in_one_line() {
    common::assert_fails_without_gpu_in_one_line(
        &["bench", "gemm", "--device", "cuda", "--shapes", "fc8"],
        "error: bench gemm on `cuda`: CUDA device unavailable",
    );
}

#[test]
fn cli_rejects_bad_names() {
    for device in ["emu", "cuda"] {
        let cases: [(&[&str], &[&str]); 6] = [
            (&["--shapes", "fc6,fc9"], &["--shapes fc6,fc9: unknown shape `fc9`", "fc7"]),
            (&["--passes", "fwd,fprop"], &["--passes fwd,fprop: unknown pass `fprop`", "bwd_weight"]),
            (&["--batch", "64,zero"], &["--batch 64,zero: bad batch `zero`"]),
            // An empty item is a typo (a lost number or name), refused as such; it was skipped
            // and the run went on with the rest.
            (&["--batch", "64,,256"], &["--batch 64,,256: an empty batch in `64,,256` (two commas, or one at an end"]),
            (&["--shapes", "fc6,,fc8"], &["--shapes fc6,,fc8: an empty shape in `fc6,,fc8`"]),
            (&["--passes", "fwd,"], &["--passes fwd,: an empty pass in `fwd,`"]),
        ];
        for (args, needles) in cases {
            let mut all = vec!["bench", "gemm", "--device", device];
            all.extend_from_slice(args);
            let out = vgg(&all);
            assert!(!out.status.success(), "{all:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{all:?}: stderr: {err}");
            for n in needles {
                assert!(err.contains(n), "{all:?}: stderr should mention {n:?}: {err}");
            }
        }
    }
}

#[test]
fn cli_emu_run_prints_the_table_and_writes_json() {
    let dir = common::TempDir::new("bench-gemm", "cli");
    let json = dir.join("cli.json");
    let out = vgg(&[
        "bench",
        "gemm",
        "--device",
        "emu",
        "--shapes",
        "fc7",
        "--passes",
        "fwd,bwd_data",
        "--batch",
        "2,4",
        "--repeats",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fc7   fwd") && stdout.contains("fc7   bwd_data"), "{stdout}");
    assert!(stdout.contains("4 rows: 4 measured"), "{stdout}");
    assert!(stdout.contains("copy ") && stdout.contains("sgd_step "), "{stdout}");
    let report: GemmReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((report.rows.len(), report.bandwidth.len()), (4, 2));
    assert_eq!(report.batches, vec![2, 4]);
    assert!(report.rows.iter().all(|r| r.ours.as_ref().is_some_and(|m| m.samples == 2)));
    assert!(!json.with_extension("tmp").exists(), "the temporary file was renamed away");
}

#[test]
fn cli_json_path_is_checked_before_the_run() {
    let dir = common::TempDir::new("bench-gemm", "outputs");
    let afile = dir.0.join("afile");
    std::fs::write(&afile, b"keep").unwrap();
    let json = afile.join("x.json");
    let out = vgg(&["bench", "gemm", "--device", "emu", "--shapes", "fc8", "--json", json.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "succeeded: {stdout}");
    assert!(stderr.contains("--json") && stderr.contains("afile is a file, not a folder"), "stderr: {stderr}");
    assert!(!stdout.contains("bench gemm on"), "the run started: {stdout}");
    assert_eq!(std::fs::read(&afile).unwrap(), b"keep");
}

/// A batch no device holds is a failed row and an error, not an abort: the inputs' random
/// values were made on the host before the device allocation, and `--batch 100000000000`
/// asked the host for 800 GB (the process died with "memory allocation ... failed").
#[test]
fn cli_batch_beyond_the_device_fails_the_row_not_the_process() {
    let out = vgg(&[
        "bench",
        "gemm",
        "--device",
        "emu",
        "--shapes",
        "fc8",
        "--passes",
        "fwd",
        "--no-bandwidth",
        "--batch",
        "100000000000",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("error: bench gemm on emu: nothing could be measured"), "stderr: {stderr}");
    assert!(stdout.contains("1 failed"), "stdout: {stdout}");
}

/// `--splits` (the planner's model checked by a sweep): every tensor-core row runs at the given
/// count, on the planner's tile or `tile`'s, and still agrees with the reference.
#[test]
fn emu_bench_runs_a_given_split_count() {
    let dev = Device::emu();
    let mut cfg = GemmBenchConfig::new(&dev);
    cfg.batches = vec![5];
    cfg.layers.truncate(1); // fc6 at emu size: K 392 (7 k-tiles: 3 splits of 3, 3, 1), N 64
    cfg.bandwidth = false;
    cfg.splits = Some(3);
    cfg.tile = Some(vgg_cuda::ops::gemm::Tile::T64x128);
    let report = gemm::run(&dev, &cfg, |_| {});
    assert_rows_good(&report, 3);
    for r in &report.rows {
        let algo = &r.ours.as_ref().unwrap().algo;
        // bwd_data reduces over N (64: one k-tile), bwd_weight over the batch (5): one split.
        let want = if r.pass == Pass::Fwd { "tc64x128/split3" } else { "tc64x128" };
        assert_eq!(algo, want, "{} {}", r.layer, r.pass.name());
    }
}
