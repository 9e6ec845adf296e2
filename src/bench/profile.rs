//! One training step profiled launch by launch ([`crate::Device::profile_start`]), summed three
//! ways: by group (pass and layer kind: `bwd conv`, `fwd pool`, `optimizer`, ...), by kernel,
//! and by layer (`bwd conv3_2`). What `vgg bench train --profile` prints: where the step's
//! time goes beside the convolutions that `vgg bench conv` times on their own.

use crate::device::LaunchTime;
use serde::Serialize;
use std::fmt::Write;

/// The launches of one profiled step.
#[derive(Clone, Debug, Serialize)]
pub struct StepProfile {
    /// The profiled step, timed as a whole (its events add a little to it).
    pub step_ms: f64,
    /// Every launch and memset of the step, in the order queued.
    pub launches: Vec<LaunchTime>,
}

/// A sum over some of a step's launches.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileSum {
    /// The key summed over: a label (`fwd conv3_2`), a group (`fwd conv`) or a kernel name.
    pub name: String,
    /// The launches' device times added up, in ms.
    pub ms: f64,
    /// Launches (and memsets) in the sum.
    pub launches: usize,
}

/// `bwd conv3_2` -> `bwd conv`; `fwd fc6` -> `fwd fc`; `optimizer` stays.
fn group_of(label: &str) -> String {
    label.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_').to_string()
}

/// Sums of `ms` per key, keys in order of first appearance.
fn sums<'a>(items: impl Iterator<Item = (String, &'a LaunchTime)>) -> Vec<ProfileSum> {
    let mut out: Vec<ProfileSum> = vec![];
    for (key, l) in items {
        match out.iter_mut().find(|s| s.name == key) {
            Some(s) => {
                s.ms += l.ms;
                s.launches += 1;
            }
            None => out.push(ProfileSum { name: key, ms: l.ms, launches: 1 }),
        }
    }
    out
}

impl StepProfile {
    /// Sum of the launches' own device times (the step less the gaps between them).
    pub fn launches_ms(&self) -> f64 {
        self.launches.iter().map(|l| l.ms).sum()
    }

    /// Per layer and pass (`fwd conv3_2`, `bwd pool1`, `optimizer`), in step order.
    pub fn by_label(&self) -> Vec<ProfileSum> {
        sums(self.launches.iter().map(|l| (l.label.clone(), l)))
    }

    /// Per pass and layer kind (`fwd conv`, `bwd fc`, `loss`), in step order.
    pub fn by_group(&self) -> Vec<ProfileSum> {
        sums(self.launches.iter().map(|l| (group_of(&l.label), l)))
    }

    /// Per kernel, slowest first.
    pub fn by_kernel(&self) -> Vec<ProfileSum> {
        let mut k = sums(self.launches.iter().map(|l| (l.kernel.to_string(), l)));
        k.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        k
    }

    /// The three tables as text, times in ms and as a share of the launches' sum.
    pub fn report(&self) -> String {
        let total = self.launches_ms();
        let pct = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  profiled step: {:.3} ms, its {} launches {:.3} ms (the rest: gaps between them)",
            self.step_ms,
            self.launches.len(),
            total
        );
        let _ = writeln!(s, "  {:<24} {:>10} {:>6} {:>8}", "by group", "ms", "%", "launches");
        for g in self.by_group() {
            let _ = writeln!(s, "  {:<24} {:>10.3} {:>6.1} {:>8}", g.name, g.ms, pct(g.ms), g.launches);
        }
        let _ = writeln!(s, "  {:<40} {:>10} {:>6} {:>8}", "by kernel", "ms", "%", "launches");
        for k in self.by_kernel() {
            let _ = writeln!(s, "  {:<40} {:>10.3} {:>6.1} {:>8}", k.name, k.ms, pct(k.ms), k.launches);
        }
        let _ = writeln!(s, "  by layer (ms: kernels)");
        for l in self.by_label() {
            let kernels = sums(self.launches.iter().filter(|x| x.label == l.name).map(|x| (x.kernel.to_string(), x)));
            let list: Vec<String> = kernels.iter().map(|k| format!("{} {:.3}", k.name, k.ms)).collect();
            let _ = writeln!(s, "  {:<16} {:>8.3}: {}", l.name, l.ms, list.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(label: &str, kernel: &'static str, ms: f64) -> LaunchTime {
        LaunchTime { label: label.into(), kernel, ms }
    }

    #[test]
    fn sums_by_group_kernel_and_layer() {
        let p = StepProfile {
            step_ms: 10.0,
            launches: vec![
                launch("fwd conv1_1", "a", 1.0),
                launch("fwd conv1_2", "b", 2.0),
                launch("fwd pool1", "p", 0.5),
                launch("bwd conv1_2", "b", 3.0),
                launch("bwd conv1_2", "w", 0.25),
                launch("optimizer", "sgd", 1.0),
            ],
        };
        assert_eq!(p.launches_ms(), 7.75);
        let g = p.by_group();
        let names: Vec<&str> = g.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fwd conv", "fwd pool", "bwd conv", "optimizer"]);
        assert_eq!((g[0].ms, g[0].launches), (3.0, 2));
        assert_eq!((g[2].ms, g[2].launches), (3.25, 2));
        let k = p.by_kernel();
        assert_eq!((k[0].name.as_str(), k[0].ms, k[0].launches), ("b", 5.0, 2));
        assert_eq!(p.by_label().len(), 5);
        let r = p.report();
        assert!(r.contains("bwd conv1_2"), "{r}");
        assert!(r.contains("b 3.000, w 0.250"), "{r}");
    }
}
