//! Stopping a run on request: a Ctrl-C (SIGINT) to `vgg train`, or
//! `train::interrupt::request_stop` in a library run, ends the run after the step under way
//! with a checkpoint at that step, from which `--resume` continues as if nothing had stopped.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vgg_cuda::train::{checkpoint, interrupt, run, TrainArgs};

/// `vgg train` on emu: A at 1/16 width, 32x32, 6 steps an epoch, into `dir`, logging to
/// `dir/m.jsonl`.
fn train_cmd(dir: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vgg"));
    c.args(["train", "--device", "emu", "--quiet", "--model", "A", "--width", "0.0625", "--input", "32"]);
    c.args(["--fc", "16", "--classes", "3", "--synthetic-len", "24", "--batch", "4", "--workers", "0"]);
    c.args(["--steps", &steps.to_string(), "--checkpoint-dir", dir.to_str().unwrap()]);
    c.args(["--metrics", dir.join("m.jsonl").to_str().unwrap()]);
    c.args(extra);
    c
}

/// Waits until the metrics file at `p` has `n` whole lines (the run is past its start-up).
fn wait_for_lines(p: &Path, n: usize) {
    let t0 = Instant::now();
    while std::fs::read_to_string(p).map_or(0, |t| t.matches('\n').count()) < n {
        assert!(t0.elapsed() < Duration::from_secs(300), "{} never reached {n} lines", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn step_of(path: &Path) -> u64 {
    checkpoint::load(path).unwrap().state.expect("a training state").step
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_the_step_and_a_resume_continues_bit_for_bit() {
    let (i, s) = (common::TempDir::new("interrupt", "signalled"), common::TempDir::new("interrupt", "straight"));
    // Far more steps than the signal lets it run: the stop, not --steps, ends it.
    let child = train_cmd(&i, 500, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_lines(&i.join("m.jsonl"), 3);
    // SAFETY: kill(2) on the child's pid, which is not yet reaped (so not reused).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The status a shell gives a process ended by SIGINT, after a clean stop.
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("stopped at step ")).unwrap_or_else(|| panic!("{stdout}"));
    let k: u64 = line["stopped at step ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(line.contains(&format!(" of 500: {k} steps in ")), "{line}");
    assert!((3..500).contains(&k), "{line}");
    assert!(stdout.contains(&format!("checkpoint at step {k}: ")) && stdout.contains("--resume"), "{stdout}");
    assert_eq!(step_of(&i.join("last.safetensors")), k);
    assert_eq!(common::metrics_lines(i.join("m.jsonl")).last().unwrap()["step"], k, "the stop step's loss is logged");
    // Past the stop and across an epoch's end: resumed, and straight through.
    let end = (k + 4).max(8);
    let resumed = train_cmd(&i, end, &["--resume"]).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let straight = train_cmd(&s, end, &[]).output().unwrap();
    assert!(straight.status.success(), "{}", String::from_utf8_lossy(&straight.stderr));
    assert_eq!(
        common::metrics_lines(i.join("m.jsonl")),
        common::metrics_lines(s.join("m.jsonl")),
        "metrics of the stopped and resumed run"
    );
    let (a, b) = (
        checkpoint::load(&i.join("last.safetensors")).unwrap(),
        checkpoint::load(&s.join("last.safetensors")).unwrap(),
    );
    assert_eq!((a.weights, a.momentum, a.state), (b.weights, b.momentum, b.state));
}

/// A stop requested through the library, while steps are only queued (--sync-every 3): the
/// step under way is read back and checkpointed, the request is taken by the run it stopped,
/// and the resumed run's checkpoint equals a straight run's.
#[test]
fn request_stop_ends_a_library_run_with_a_checkpoint_that_resumes() {
    let args = |dir: &Path, steps: u64| TrainArgs {
        steps: Some(steps),
        sync_every: 3,
        checkpoint_dir: Some(dir.to_path_buf()),
        metrics: Some(dir.join("m.jsonl")),
        ..common::tiny_train_args()
    };
    let (i, s, e) = (
        common::TempDir::new("interrupt", "requested"),
        common::TempDir::new("interrupt", "lib-straight"),
        common::TempDir::new("interrupt", "early"),
    );
    let m = i.join("m.jsonl");
    let asker = std::thread::spawn(move || {
        wait_for_lines(&m, 1);
        interrupt::request_stop();
    });
    let sum = run(&args(&i, 500)).unwrap();
    asker.join().unwrap();
    assert!(sum.stopped && !interrupt::requested(), "the run took the request");
    let k = sum.steps;
    assert!((3..500).contains(&k), "stopped at step {k}");
    assert_eq!(step_of(&i.join("last.safetensors")), k);
    // The stop step's loss was read though k is no multiple of --sync-every, or was.
    assert_eq!(sum.losses.last().map(|l| l.0 + 1), Some(k));
    let end = (k + 4).max(8);
    let mut a = args(&i, end);
    a.resume = Some(String::new());
    let resumed = run(&a).unwrap();
    assert!(!resumed.stopped && resumed.steps == end);
    run(&args(&s, end)).unwrap();
    let (a, b) = (
        checkpoint::load(&i.join("last.safetensors")).unwrap(),
        checkpoint::load(&s.join("last.safetensors")).unwrap(),
    );
    assert_eq!((a.weights, a.momentum, a.state), (b.weights, b.momentum, b.state));
    // A request made before a run stops it after its first step.
    interrupt::request_stop();
    let early = run(&args(&e, 500)).unwrap();
    assert!(early.stopped && early.steps == 1 && !interrupt::requested());
    assert_eq!(step_of(&e.join("last.safetensors")), 1);
}
