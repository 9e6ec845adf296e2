//! `vgg bench copy` on the emu device: every copy form lands every tile where the checksum
//! expects it (blocks taking unequal numbers of tiles, a matrix re-read), a launch that writes
//! nothing cannot pass, bad matrices and options are refused by name, and the JSON rows.

mod common;

use common::vgg;
use vgg_cuda::bench::copy::{bench_case, CopyCase, CopyMethod, CopyProbe, CopyRow, Phase, TILE_BYTES};
use vgg_cuda::device::Schedule;
use vgg_cuda::Device;

fn case(rows: usize, pitch: usize, count: usize) -> CopyCase {
    CopyCase { name: "t".into(), rows, pitch, count }
}

#[test]
fn every_form_copies_every_tile_to_its_place() {
    let dev = Device::emu();
    // 2 row blocks x 3 tiles a row block, 7 tiles over 3 blocks (3, 2, 2): tiles 6 wraps to 0.
    let c = case(512, 24, 7);
    let mut rows = vec![];
    let got = bench_case(&dev, &c, &CopyMethod::ALL, 3, |r| rows.push(r.clone())).unwrap();
    assert_eq!(got.len(), 10, "{got:#?}");
    assert_eq!(rows.len(), 10);
    for r in &got {
        let what = format!("{} {:?}", r.method, r.phase);
        assert!(r.error.is_none() && r.check_ok, "{what}: {r:?}");
        assert_eq!(r.bytes, 7 * TILE_BYTES, "{what}");
        let t = r.timing.unwrap_or_else(|| panic!("{what}: no timing"));
        assert!(t.median_ms > 0.0 && r.gb_s.is_some_and(|g| g > 0.0), "{what}: {r:?}");
    }
    let phases: Vec<Phase> = got.iter().map(|r| r.phase).collect();
    assert_eq!(&phases[..2], &[Phase::Rows, Phase::Runs]);
}

/// Under the reverse and random schedules a copy lands late (at the wait that must cover it, or
/// at random), so a pipeline that reads a buffer before its copies are waited for sums stale
/// bytes there; every form must still give the host's sums.
#[test]
fn every_form_waits_for_its_copies_under_late_landing_schedules() {
    for schedule in [Schedule::Reverse, Schedule::Random(7), Schedule::Random(8)] {
        let dev = Device::emu();
        dev.set_schedule(schedule);
        let mut p = CopyProbe::new(&dev, &case(512, 16, 11), 3).unwrap();
        let want = p.expected();
        for m in CopyMethod::ALL {
            for &phase in m.phases() {
                assert_eq!(p.checked_sums(m, phase).unwrap(), want, "{} {phase:?} under {schedule:?}", m.name());
            }
        }
    }
}

#[test]
fn the_expected_sums_depend_on_where_each_unit_lands() {
    let dev = Device::emu();
    let mut p = CopyProbe::new(&dev, &case(256, 16, 2), 2).unwrap();
    let want = p.expected();
    assert_eq!(want.len(), 2);
    // Two different tiles, so two different sums; and each is what the kernels compute.
    assert_ne!(want[0], want[1]);
    for m in CopyMethod::ALL {
        assert_eq!(p.checked_sums(m, Phase::Rows).unwrap(), want, "{}", m.name());
    }
    // A block with no tile writes the empty sum, 0, not the poison.
    let mut idle = CopyProbe::new(&dev, &case(256, 8, 1), 2).unwrap();
    let sums = idle.checked_sums(CopyMethod::CgZfill, Phase::Runs).unwrap();
    assert_eq!(sums, idle.expected());
    assert_eq!(sums[1], 0);
}

#[test]
fn bad_matrices_are_refused_by_name() {
    let dev = Device::emu();
    for (c, needle) in [
        (case(300, 8, 1), "multiple of 256"),
        (case(256, 12, 1), "multiple of 8"),
        (case(256, 8, 0), "at least 1 tile"),
    ] {
        let e = CopyProbe::new(&dev, &c, 2).err().unwrap_or_else(|| panic!("{c:?} accepted")).to_string();
        assert!(e.contains(needle) && e.contains("copy probe"), "{c:?}: {e}");
    }
    let e = CopyProbe::new(&dev, &case(256, 8, 1), 0).err().expect("grid 0 accepted").to_string();
    assert!(e.contains("grid"), "{e}");
}

#[test]
fn cli_writes_the_rows_and_names_bad_options() {
    let dir = common::TempDir::new("bench-copy", "cli");
    let json = dir.join("copy.json");
    let out = vgg(&["bench", "copy", "--device", "emu", "--methods", "cg,ldg", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<CopyRow> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["cg", "cg", "ldg", "ldg"]);
    assert!(rows.iter().all(|r| r.check_ok && r.case == "l2"), "{rows:#?}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with(" ok")).count(), 4, "{stdout}");

    for (args, needle) in [
        (&["--methods", "cgz,tmem"][..], "unknown copy method `tmem`"),
        (&["--cases", "l2,l3"][..], "unknown case `l3`"),
    ] {
        let out = vgg(&[&["bench", "copy", "--device", "emu"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
