//! Learning-rate schedules: the paper's (divide by 10 when validation accuracy stops
//! improving), and step and cosine schedules as options.

use super::checkpoint::TrainState;
use anyhow::{bail, Result};

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The paper's: divide by 10 when validation top-1 has not improved for `patience`
    /// evaluations, at most `max_decays` times.
    Plateau {
        /// Validations in a row without progress before a decay (`plateau:PATIENCE`, 1 by
        /// default).
        patience: u32,
        /// The most decays (3).
        max_decays: u32,
    },
    /// Divide by 10 every `every` epochs.
    Step {
        /// Epochs between decays (`step:EPOCHS`).
        every: u64,
    },
    /// Cosine from the base rate to 0 over the run.
    Cosine,
}

impl LrSchedule {
    /// A `--schedule` value: `plateau` (patience 1), `plateau:PATIENCE`, `step:EPOCHS` (each a
    /// positive number) or `cosine`; anything else is an error naming the forms.
    pub fn parse(s: &str) -> Result<Self> {
        let num = |prefix: &str| s.strip_prefix(prefix).and_then(|v| v.parse::<u64>().ok()).filter(|&v| v > 0);
        Ok(match s {
            // The paper gives no patience; 1 reacts to the first epoch without progress.
            "plateau" => LrSchedule::Plateau { patience: 1, max_decays: 3 },
            "cosine" => LrSchedule::Cosine,
            _ if s.starts_with("plateau:") => match num("plateau:").and_then(|p| u32::try_from(p).ok()) {
                Some(patience) => LrSchedule::Plateau { patience, max_decays: 3 },
                None => bail!("--schedule `{s}`: plateau:PATIENCE needs a positive number of validations"),
            },
            _ if s.starts_with("step:") => match num("step:") {
                Some(every) => LrSchedule::Step { every },
                None => bail!("--schedule `{s}`: step:EPOCHS needs a positive number of epochs"),
            },
            _ => bail!("unknown --schedule `{s}` (plateau[:PATIENCE], step:EPOCHS, cosine)"),
        })
    }

    /// The rate of the step `st.step` (in epoch `st.epoch`) of a run of `total` steps whose
    /// base rate is `base`. The plateau schedule's rate is the one it keeps in `st.lr`.
    pub fn rate(&self, base: f32, st: &TrainState, total: u64) -> f32 {
        match *self {
            LrSchedule::Cosine => {
                base * 0.5 * (1.0 + (std::f32::consts::PI * st.step as f32 / total.max(1) as f32).cos())
            }
            LrSchedule::Step { every } => base * 0.1f32.powi((st.epoch / every).min(i32::MAX as u64) as i32),
            LrSchedule::Plateau { .. } => st.lr,
        }
    }

    /// After a validation pass with top-1 accuracy `top1`: the plateau schedule divides
    /// `st.lr` by 10 once `patience` passes in a row have not improved on the best by more
    /// than 1e-3 (a tie is no improvement), at most `max_decays` times. Returns whether it
    /// did. The other schedules keep no memory.
    pub fn after_validation(&self, st: &mut TrainState, top1: f64) -> bool {
        let LrSchedule::Plateau { patience, max_decays } = *self else { return false };
        if top1 > st.best_val + 1e-3 {
            (st.best_val, st.bad_evals) = (top1, 0);
            return false;
        }
        st.bad_evals += 1;
        if st.bad_evals < patience || st.decays >= max_decays {
            return false;
        }
        st.lr /= 10.0;
        st.decays += 1;
        st.bad_evals = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lr: f32) -> TrainState {
        TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            loss_scale: 1.0,
            scaler_clean_steps: 0,
            scaler_skipped: 0,
            lr,
            best_val: -1.0,
            bad_evals: 0,
            decays: 0,
            seed: 0,
            batch: 1,
            keep_last: false,
            conv_plans: vec![],
            test_scale: None,
            best_top1: None,
            settings: None,
            epoch_sums: Default::default(),
        }
    }

    #[test]
    fn the_best_top1_moves_only_on_a_better_value() {
        let mut st = state(0.1);
        let seen: Vec<(bool, Option<f64>)> =
            [0.2, 0.2, 0.1, 0.3].into_iter().map(|v| (st.improves_best(v), st.best_top1)).collect();
        assert_eq!(seen, [(true, Some(0.2)), (false, Some(0.2)), (false, Some(0.2)), (true, Some(0.3))]);
    }

    #[test]
    fn plateau_divides_by_ten_when_accuracy_stalls_at_most_max_decays_times() {
        let s = LrSchedule::parse("plateau").unwrap();
        let mut st = state(0.01);
        // Improving accuracy keeps the rate; each stall (patience 1) divides it, three times.
        let evals = [0.2, 0.3, 0.3, 0.3005, 0.5, 0.4, 0.4, 0.4];
        let lrs: Vec<f32> = evals
            .iter()
            .map(|&v| {
                s.after_validation(&mut st, v);
                s.rate(0.01, &st, 100)
            })
            .collect();
        let want = [0.01, 0.01, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got / want - 1.0).abs() < 1e-5, "{lrs:?}");
        }
        assert_eq!((st.decays, st.best_val), (3, 0.5));
        // Patience 2: one stall keeps the rate, a second in a row divides it.
        let s = LrSchedule::parse("plateau:2").unwrap();
        assert_eq!(s, LrSchedule::Plateau { patience: 2, max_decays: 3 });
        let mut st = state(0.01);
        let lrs: Vec<f32> = [0.2, 0.1, 0.3, 0.3, 0.3]
            .iter()
            .map(|&v| {
                s.after_validation(&mut st, v);
                s.rate(0.01, &st, 100)
            })
            .collect();
        let want = [0.01, 0.01, 0.01, 0.01, 1e-3];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got / want - 1.0).abs() < 1e-5, "{lrs:?}");
        }
    }

    #[test]
    fn step_and_cosine_follow_their_formulas() {
        let step = LrSchedule::parse("step:3").unwrap();
        let mut st = state(0.0);
        for (epoch, want) in [(0, 0.1f32), (2, 0.1), (3, 0.01), (7, 0.001)] {
            st.epoch = epoch;
            assert!((step.rate(0.1, &st, 100) / want - 1.0).abs() < 1e-5, "epoch {epoch}");
            assert!(!step.after_validation(&mut st, 0.0));
        }
        let cos = LrSchedule::Cosine;
        for (s, want) in [(0, 0.1f32), (50, 0.05), (100, 0.0)] {
            st.step = s;
            assert!((cos.rate(0.1, &st, 100) - want).abs() < 1e-6, "step {s}");
        }
        for bad in ["", "step:0", "step:x", "linear", "plateau:0", "plateau:-1", "plateau:x"] {
            assert!(LrSchedule::parse(bad).unwrap_err().to_string().contains("--schedule"));
        }
        // A bad value of a known form says what the form needs, not that the schedule is unknown.
        for bad in ["step:0", "step:x", "plateau:0"] {
            assert!(!LrSchedule::parse(bad).unwrap_err().to_string().contains("unknown"), "{bad}");
        }
    }
}
