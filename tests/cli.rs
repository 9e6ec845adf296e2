//! The command line as a shell uses it.

/// `vgg info | head -1`: the reader is gone before vgg writes. vgg must end quietly (killed by
/// SIGPIPE, as other Unix tools are) instead of panicking in println!.
#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every write now fails with EPIPE
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["info", "--model", "D"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}

/// `vgg info` with these arguments: (exit status, stdout, stderr).
fn vgg(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Forward multiply-accumulates of one 224x224 image, from Table 1's channels per block
/// (each block at half the previous block's resolution) and FC-4096, FC-4096, FC-1000 on the
/// 7x7x512 map; torchvision's docs list the results as 15.47 G (VGG-16) and 19.63 G (VGG-19).
fn table1_macs(blocks: [&[usize]; 5]) -> u64 {
    let (mut side, mut c, mut macs) = (224u64, 3u64, 0u64);
    for block in blocks {
        for &k in block {
            macs += side * side * k as u64 * 9 * c;
            c = k as u64;
        }
        side /= 2;
    }
    macs + 7 * 7 * 512 * 4096 + 4096 * 4096 + 4096 * 1000
}

/// `vgg info --model X` prints one line per layer, the parameter count and the FLOPs. The
/// counts are the published ones (VGG.md; torchvision: VGG-16 138,357,544, VGG-19
/// 143,667,240), and the conv lines are Table 1's: 13 3x3 convs in D, 16 in E, 5 pools and
/// 3 FC layers in both.
#[test]
fn info_model_prints_layers_parameters_and_flops() {
    const D: [&[usize]; 5] = [&[64; 2], &[128; 2], &[256; 3], &[512; 3], &[512; 3]];
    const E: [&[usize]; 5] = [&[64; 2], &[128; 2], &[256; 4], &[512; 4], &[512; 4]];
    for (model, convs, params, blocks) in
        [("D", 13, "138,357,544", D), ("vgg16", 13, "138,357,544", D), ("E", 16, "143,667,240", E)]
    {
        let (status, out, err) = vgg(&["info", "--model", model]);
        assert!(status.success(), "vgg info --model {model}: {status:?}: {err}");
        // Layer lines: `features.N  conv3x3+relu ...`, `classifier.N  fc+relu+drop ...`.
        let rows =
            |op: &str| out.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|o| o.starts_with(op))).count();
        assert_eq!(rows("conv3x3"), convs, "--model {model}: conv lines in\n{out}");
        assert_eq!(rows("conv1x1"), 0, "--model {model}: 1x1 conv lines in\n{out}");
        assert_eq!(rows("maxpool2x2"), 5, "--model {model}: pool lines in\n{out}");
        assert_eq!(rows("fc"), 3, "--model {model}: FC lines in\n{out}");
        assert!(
            out.lines().any(|l| l.starts_with("parameters: ") && l.contains(params)),
            "--model {model}: no `parameters: {params}` in\n{out}"
        );
        // `forward: 15,470,264,320 MACs = 30.94 GFLOP per image; ...`: the MACs exact, and the
        // FLOPs twice them.
        let macs = table1_macs(blocks);
        let line =
            out.lines().find(|l| l.starts_with("forward: ")).unwrap_or_else(|| panic!("no forward line in\n{out}"));
        let printed: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(printed[1].replace(',', "").parse::<u64>().ok(), Some(macs), "--model {model}: {line}");
        let gflop = format!("{:.2}", 2.0 * macs as f64 / 1e9);
        assert_eq!(printed.get(4..6), Some(&[gflop.as_str(), "GFLOP"][..]), "--model {model}: {line}");
    }
}

/// An unknown config is an error that names it, and nothing is printed as if it were one.
#[test]
fn info_unknown_model_fails_naming_it() {
    let (status, out, err) = vgg(&["info", "--model", "Z"]);
    assert!(!status.success(), "vgg info --model Z succeeded:\n{out}");
    assert!(err.contains("`Z`"), "the error does not name `Z`: {err}");
    assert!(!out.contains("parameters:"), "a table was printed for Z:\n{out}");
}

/// A `--batch` no memory plan fits is an error naming it, before anything is printed: the
/// layer table used to come first and end in an error about a conv's 32-bit pixel index.
#[test]
fn info_model_batch_too_large_fails_naming_it_before_the_table() {
    for json in [false, true] {
        let mut args = vec!["info", "--model", "D", "--batch", "8,1000000000"];
        if json {
            args.push("--json");
        }
        let (status, out, err) = vgg(&args);
        assert_eq!(status.code(), Some(1), "{args:?}: {status:?}:\n{out}\n{err}");
        assert!(err.starts_with("error: --batch 1000000000: "), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: printed before the error:\n{out}");
    }
}

/// A config value no network can have is named as the option that set it, in `vgg train`'s
/// words (`the model of --model D --input 0 ...: invalid shape: VGG input 0 is too small`):
/// `vgg info --model` said only "VGG input 0 is too small", naming no option.
#[test]
fn info_model_bad_config_names_the_option() {
    for (flag, value, want) in [
        ("--input", "0", "--input 0 --width 1 --fc 4096 --classes 1000: invalid shape: VGG input 0"),
        ("--fc", "0", "--input 224 --width 1 --fc 0 --classes 1000: invalid shape: VGG FC width"),
        ("--width", "nan", "--input 224 --width NaN --fc 4096 --classes 1000: invalid shape: VGG width"),
        ("--classes", "0", "--fc 4096 --classes 0: invalid shape: VGG needs at least one class"),
    ] {
        let (status, out, err) = vgg(&["info", "--model", "D", flag, value]);
        assert_eq!(status.code(), Some(1), "{flag} {value}: {status:?}:\n{out}\n{err}");
        assert!(err.starts_with("error: the model of --model D --input "), "{flag} {value}: {err}");
        assert!(err.contains(want), "{flag} {value}: the error does not say `{want}`: {err}");
        assert!(out.is_empty(), "{flag} {value}: printed before the error:\n{out}");
    }
}

/// An output path that is the process's own stdout (`-o /dev/stdout`, `/dev/fd/1`,
/// `/proc/self/fd/1`) is written through the descriptor. With stdout redirected to a file, the
/// path resolves to that file, and the atomic write's rename replaced it: what the shell had
/// written there before (and the command's own earlier output) was lost.
#[test]
fn an_output_path_naming_stdout_appends_to_where_stdout_goes() {
    let dir = std::env::temp_dir().join(format!("vgg-cli-stdout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Other spellings of the same descriptor too: decided by what the path is, not its text.
    let names = ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "//dev/fd/1", "/dev/fd/./1", "/proc/thread-self/fd/1"];
    for (i, name) in names.into_iter().enumerate() {
        let log = dir.join(format!("run{i}.log"));
        std::fs::write(&log, b"EARLIER\n").unwrap();
        let out = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(["stats", "--synthetic", "--samples", "2", "--synthetic-size", "40", "-o", name])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{name}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("EARLIER\n{") && text.contains("\"images\": 2"), "{name}: {text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
