//! scripts/gpu-check.sh is the one command a lent GPU runs, and a GPU is lent rarely and for 15
//! minutes: a step whose `vgg` command line no longer parses (a renamed flag, a removed value)
//! would cost its measurement until the next loan. These tests run every `vgg` command of the
//! script here, without a GPU, far enough to know its arguments are accepted.

mod common;

use common::TempDir;
use std::process::Command;
use vgg_cuda::device::cuda_report;

/// Every `vgg` command line of the script's steps, its variables substituted (loop variables
/// once for each value the script gives them): (step name, arguments).
fn script_commands(tmp: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh")).unwrap();
    let script = script.replace("\\\n", " ");
    // The profiler loop's `kern:algo:pass:tiling` items and the 32-pixel loop's modes.
    let ncu_items: Vec<Vec<String>> = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("for k in "))
        .map(|l| l.trim_end_matches("; do").split_whitespace().map(|i| i.split(':').map(String::from).collect()))
        .map(|items| items.collect())
        .unwrap_or_default();
    assert!(!ncu_items.is_empty() && ncu_items.iter().all(|i| i.len() == 4), "the ncu loop's items: {ncu_items:?}");
    let mut loops: Vec<Vec<(&str, String)>> = ncu_items
        .iter()
        .map(|i| vec![("kern", i[0].clone()), ("algo", i[1].clone()), ("pass", i[2].clone()), ("tiling", i[3].clone())])
        .collect();
    // The 32-pixel loop's modes, and the flag the script derives from each
    // (`flag=$([ $mode = one-by-one ] || echo "--$mode")`).
    let modes: Vec<&str> = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("for mode in "))
        .map(|l| l.trim_end_matches("; do").split_whitespace().collect())
        .unwrap_or_default();
    assert!(
        script.contains(r#"flag=$([ $mode = one-by-one ] || echo "--$mode")"#),
        "the mode loop changed: update this test"
    );
    assert!(modes.contains(&"one-by-one") && modes.len() >= 2, "the mode loop's values: {modes:?}");
    for mode in modes {
        let flag = if mode == "one-by-one" { String::new() } else { format!("--{mode}") };
        loops.push(vec![("mode", mode.into()), ("flag", flag)]);
    }
    // The GEMM split sweep's counts.
    let splits: Vec<&str> = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("for n in "))
        .map(|l| l.trim_end_matches("; do").split_whitespace().collect())
        .unwrap_or_default();
    assert!(splits.len() >= 2, "the split loop's values: {splits:?}");
    for n in splits {
        loops.push(vec![("n", n.into())]);
    }
    let fixed = [
        ("BATCH", "64".to_string()),
        ("RAW", tmp.join("raw").display().to_string()),
        ("CK", tmp.join("ck").display().to_string()),
        ("SHARDS", tmp.join("shards").display().to_string()),
        ("STEP0", tmp.join("step0").display().to_string()),
    ];
    let mut out = Vec::new();
    for line in script.lines().map(str::trim).filter(|l| l.starts_with("step ")) {
        let Some(at) = line.find("\"$VGG\"") else { continue };
        let name = line.split_whitespace().nth(1).unwrap();
        let uses_loop = |vars: &[(&str, String)]| vars.iter().any(|(v, _)| line.contains(&format!("${v}")));
        let bindings: Vec<&Vec<(&str, String)>> = loops.iter().filter(|v| uses_loop(v)).collect();
        let none = Vec::new();
        for vars in if bindings.is_empty() { vec![&none] } else { bindings } {
            let expand = |s: &str| {
                let mut s = s.trim_matches('"').to_string();
                for (v, val) in vars.iter().chain(&fixed) {
                    s = s.replace(&format!("${v}"), val);
                }
                s
            };
            let args: Vec<String> = line[at + 6..].split_whitespace().map(expand).filter(|a| !a.is_empty()).collect();
            let name = expand(name);
            assert!(!args.iter().any(|a| a.contains('$')), "{name}: a variable this test does not know: {args:?}");
            out.push((name, args));
        }
    }
    out
}

/// `vgg args`: (success, stdout and stderr).
fn run_vgg(args: &[String]) -> (bool, String) {
    let out = common::vgg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Each command line with `--help` after it: clap parses the arguments before it in order, so
/// an unknown flag, a flag missing its value or a malformed number fails (exit 2) before the
/// help is printed; nothing runs.
#[test]
fn every_vgg_command_of_gpu_check_parses() {
    let tmp = TempDir::new("gpu-check", "parse");
    let cmds = script_commands(&tmp.0);
    assert!(cmds.len() >= 25, "found only {} vgg commands in scripts/gpu-check.sh", cmds.len());
    for (name, args) in &cmds {
        let mut with_help = args.clone();
        with_help.push("--help".into());
        let (ok, out) = run_vgg(&with_help);
        assert!(ok, "gpu-check step {name}: `vgg {}` does not parse:\n{out}", args.join(" "));
    }
}

/// The `--device cuda` commands run as far as opening the device, which fails here: every
/// option's value was checked before that (algorithm names, layer lists, tiles, conv plans,
/// output paths), so reaching the device's error means the GPU would get to work.
#[test]
fn every_cuda_command_of_gpu_check_gets_past_its_arguments() {
    if cuda_report().unusable_because.is_none() {
        eprintln!("a usable GPU is present: the commands would run in full (the script is for that)");
        return;
    }
    let tmp = TempDir::new("gpu-check", "device");
    std::fs::create_dir_all(tmp.0.join("raw")).unwrap();
    let cmds = script_commands(&tmp.0);
    let cuda: Vec<_> = cmds.iter().filter(|(_, a)| a.windows(2).any(|w| w == ["--device", "cuda"])).collect();
    assert!(cuda.len() >= 20, "found only {} --device cuda commands", cuda.len());
    for (name, args) in cuda {
        let (ok, out) = run_vgg(args);
        assert!(
            !ok && out.contains("CUDA device unavailable"),
            "gpu-check step {name}: `vgg {}` did not stop at the device:\n{out}",
            args.join(" ")
        );
    }
}

/// The script runs many steps only `if "$VGG" ARGS --help | grep -q WORD`: a help text that lost
/// WORD (an option renamed, a doc rewrite) would skip that step on the GPU without a word. Each
/// such guard must hold for this binary, so every guarded step runs.
#[test]
fn every_guard_of_gpu_check_holds() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh")).unwrap();
    let mut n = 0;
    for line in script.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("if \"$VGG\" ") else { continue };
        let (cmd, tail) = rest.split_once(" --help").expect("a guard runs --help");
        let mut args: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        args.push("--help".into());
        let (ok, out) = run_vgg(&args);
        assert!(ok, "guard `{line}`: `vgg {}` failed:\n{out}", args.join(" "));
        if let Some(word) = tail.split("grep -q ").nth(1) {
            let word = word.trim_start_matches("-- ").split(';').next().unwrap().trim();
            assert!(
                out.contains(word),
                "guard `{line}`: `vgg {}` does not mention {word}: the step would be skipped",
                args.join(" ")
            );
        }
        n += 1;
    }
    assert!(n >= 10, "found only {n} guards in scripts/gpu-check.sh");
}

/// Runs python3 with `args`; `None` (said on stderr) where there is none, except under
/// `VGG_REQUIRE_NVRTC=1`: NVRTC comes from pip there (scripts/setup-cuda), so python3 is there, and
/// a skip would pass these checks in CI without running them.
fn python3(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("python3").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var("VGG_REQUIRE_NVRTC").as_deref() == Ok("1") => {
            panic!("python3 could not be run ({e}) under VGG_REQUIRE_NVRTC=1")
        }
        Err(e) => {
            eprintln!("skipped: python3 could not be run ({e})");
            None
        }
    }
}

/// The script's own Python helpers, and the other scripts (torch_sensitivity.py), at least
/// compile (their torch imports run only where torch is installed).
#[test]
fn gpu_check_python_scripts_compile() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let script = std::fs::read_to_string(format!("{dir}/gpu-check.sh")).unwrap();
    let tmp = TempDir::new("gpu-check", "python");
    let mut n = 0;
    let runs =
        ["torch_baseline.py", "compare_train.py", "torch_conv_baseline.py", "compare_conv.py", "torch_grad_check.py"];
    for py in runs.into_iter().chain(["torch_sensitivity.py"]) {
        assert!(
            !runs.contains(&py) || script.contains(&format!("scripts/{py}")),
            "gpu-check.sh no longer runs {py}: update this test"
        );
        let compile = "import sys, py_compile; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)";
        let Some(out) =
            python3(&["-c", compile, &format!("{dir}/{py}"), &tmp.0.join(format!("{py}c")).to_string_lossy()])
        else {
            return;
        };
        assert!(out.status.success(), "{py}: {}", String::from_utf8_lossy(&out.stderr));
        n += 1;
    }
    assert_eq!(n, 6);
}

/// scripts/compare_conv.py (run 5's issue-4 headline) takes, per layer and pass, the fastest of
/// our rows whose output agreed, never a faster one that failed its check, and divides cuDNN's
/// time by it; the totals sum over the rows cuDNN ran. A row of another batch size is another
/// problem, never the best of this one.
#[test]
fn compare_conv_picks_the_fastest_variant_that_agreed() {
    let tmp = TempDir::new("gpu-check", "compare-conv");
    let row_n = |n: usize, layer: &str, pass: &str, algo: &str, ms: f64, ok: bool, cudnn: Option<f64>| {
        serde_json::json!({
            "layer": layer, "pass": pass, "gflop": 237.8, "n": n, "h": 56, "w": 56, "c": 256, "k": 256,
            "ours": {"algo": algo, "ms": ms}, "ours_error": null,
            "cudnn": cudnn.map(|c| serde_json::json!({"algo": "x+tc", "ms": c})), "cudnn_error": null,
            "agreement": {"pass": ok},
        })
    };
    let row = |layer: &str, pass: &str, algo: &str, ms: f64, ok: bool, cudnn: Option<f64>| {
        row_n(64, layer, pass, algo, ms, ok, cudnn)
    };
    let write = |name: &str, rows: Vec<serde_json::Value>| {
        let p = tmp.0.join(name);
        std::fs::write(&p, serde_json::json!({ "rows": rows }).to_string()).unwrap();
        p.to_string_lossy().into_owned()
    };
    let base = write(
        "bench-conv.json",
        vec![
            row("conv3_2", "fprop", "winograd2x2/flat", 1.0, true, Some(0.5)),
            row("conv3_2", "wgrad", "igemm/128x256", 2.0, true, Some(1.0)),
        ],
    );
    let other = write(
        "bench-conv-wgmma.json",
        vec![
            row("conv3_2", "fprop", "wgmma/halo256x128", 0.4, true, None),
            row("conv3_2", "wgrad", "wgmma/halo128x384", 0.1, false, None),
            row_n(1, "conv3_2", "fprop", "wgmma/halo256x128", 0.01, true, None),
        ],
    );
    let missing = tmp.0.join("bench-conv-f4.json").to_string_lossy().into_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/compare_conv.py");
    let Some(out) = python3(&[script, &base, &other, &missing]) else { return };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {text}"));
    let fprop = line("conv3_2  fprop   64");
    assert!(line("conv3_2  fprop    1").contains("0.010"), "{text}");
    assert!(fprop.contains("bench-conv-wgmma:wgmma/halo256x128") && fprop.contains("1.25x"), "{fprop}");
    let wgrad = line("conv3_2  wgrad");
    assert!(wgrad.contains("bench-conv:igemm/128x256") && wgrad.contains("0.50x"), "{wgrad}");
    assert!(wgrad.contains("halo128x384 0.100!"), "the failed row is shown, marked: {wgrad}");
    let all = line("all");
    assert!(all.contains("ours     2.40 ms, cuDNN     1.50 ms") && all.contains("geometric mean 0.79x"), "{all}");
    assert!(text.contains("bench-conv-f4.json: not read"), "{text}");
}
