//! Staged rollout of a new plugin revision: the plan (steps of a share of parents, each held for
//! a pause), which parents the canary serves, and when to promote, complete or roll back.
//!
//! Pure: no clock, no API. The caller passes the time and the figures it measured, so every
//! replica given the same status reaches the same decision, and the rules are tested here.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// Phase of a rollout in progress.
pub const PROGRESSING: &str = "Progressing";
/// Phase of a rollout whose canary serves every parent (it is the stable revision now).
pub const COMPLETE: &str = "Complete";
/// Phase of a rollout rolled back by its analysis.
pub const ROLLED_BACK: &str = "RolledBack";
/// Phase of a rollout aborted by hand.
pub const ABORTED: &str = "Aborted";

/// The analysis defaults: roll back above 1% failures, judged after 50 canary reconciles.
pub const DEFAULT_MAX_FAILURE_RATE: f64 = 0.01;
/// See [`DEFAULT_MAX_FAILURE_RATE`].
pub const DEFAULT_MIN_RECONCILES: u64 = 50;

/// A rollout plan that cannot be followed, saying what to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// No steps.
    #[error("spec.rollout.steps is empty; give at least one step, e.g. [{{percent: 100}}]")]
    NoSteps,
    /// A share outside 1–100, or not above the previous step's.
    #[error("spec.rollout.steps[{index}].percent is {percent}; each step needs 1 to 100, more than the step before")]
    BadPercent {
        /// The step.
        index: usize,
        /// Its share.
        percent: u32,
    },
    /// The last step is not 100%.
    #[error("the last of spec.rollout.steps has percent {0}; end with {{percent: 100}}")]
    DoesNotEnd(u32),
    /// The failure rate is not a fraction.
    #[error("spec.rollout.analysis.maxFailureRate is {0}; give a fraction from 0 to 1, e.g. 0.01")]
    BadRate(f64),
}

/// One step: the share of parents the canary serves, held for `pause` before the next step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Share, in percent (1–100).
    pub percent: u32,
    /// How long to hold it; `None` waits for a manual promote.
    pub pause: Option<Duration>,
}

/// A validated plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    steps: Vec<Step>,
    max_failure_rate: f64,
    min_reconciles: u64,
}

impl Plan {
    /// A plan of `steps` with the default analysis; refused unless the shares rise from 1 to
    /// end at 100.
    pub fn new(steps: Vec<Step>) -> Result<Plan, PlanError> {
        let Some(last) = steps.last() else { return Err(PlanError::NoSteps) };
        let mut previous = 0;
        for (index, step) in steps.iter().enumerate() {
            if step.percent == 0 || step.percent > 100 || step.percent <= previous {
                return Err(PlanError::BadPercent { index, percent: step.percent });
            }
            previous = step.percent;
        }
        if last.percent != 100 {
            return Err(PlanError::DoesNotEnd(last.percent));
        }
        Ok(Plan { steps, max_failure_rate: DEFAULT_MAX_FAILURE_RATE, min_reconciles: DEFAULT_MIN_RECONCILES })
    }

    /// The analysis: roll back when more than `max_failure_rate` of the canary's reconciles
    /// fail, judged once it has made `min_reconciles` (at least 1).
    pub fn analysis(mut self, max_failure_rate: f64, min_reconciles: u64) -> Result<Plan, PlanError> {
        if !(0.0..=1.0).contains(&max_failure_rate) {
            return Err(PlanError::BadRate(max_failure_rate));
        }
        self.max_failure_rate = max_failure_rate;
        self.min_reconciles = min_reconciles.max(1);
        Ok(self)
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The failure rate above which the canary is rolled back.
    pub fn max_failure_rate(&self) -> f64 {
        self.max_failure_rate
    }

    /// What to do at step `step`, held for `held` so far, given the canary's figures.
    pub fn decide(&self, step: usize, held: Duration, canary: Figures) -> Decision {
        if canary.reconciles >= self.min_reconciles && canary.rate() > self.max_failure_rate {
            return Decision::RollBack(canary);
        }
        let Some(current) = self.steps.get(step) else { return Decision::Complete };
        match current.pause {
            Some(pause) if held >= pause => match self.steps.get(step + 1) {
                Some(_) => Decision::Promote(step + 1),
                None => Decision::Complete,
            },
            Some(pause) => Decision::Hold(Some(pause - held)),
            None => Decision::Hold(None),
        }
    }
}

pub use crate::wasmplugin::RevisionFigures as Figures;

impl Figures {
    /// Failures per reconcile (0 before the first).
    pub fn rate(&self) -> f64 {
        if self.reconciles == 0 { 0.0 } else { self.failures as f64 / self.reconciles as f64 }
    }
}

/// What the rollout does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Stay at this step, for this long (`None`: until promoted by hand).
    Hold(Option<Duration>),
    /// Move to this step.
    Promote(usize),
    /// The canary serves every parent and becomes the stable revision.
    Complete,
    /// The canary failed too often: every parent goes back to the stable revision.
    RollBack(Figures),
}

/// Where a parent falls among all parents: a 64-bit hash of its UID, salted so it is
/// independent of the shard a parent falls in. The same UID always falls at the same point.
pub fn point(uid: &str) -> u64 {
    let digest = Sha256::digest(format!("wasmop.dev/rollout\0{uid}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The point below which parents are on the canary so that it serves `percent` of the parents
/// at `points` (exactly, up to rounding to a whole parent): the share is counted on the parents
/// there are, not left to the spread of a hash. A parent created later falls by its own point,
/// and as the share grows the threshold only rises, so a parent on the canary stays there.
pub fn threshold(points: impl IntoIterator<Item = u64>, percent: u32) -> u64 {
    let mut points: Vec<u64> = points.into_iter().collect();
    points.sort_unstable();
    let percent = percent.min(100);
    let take = (points.len() * percent as usize + 50) / 100;
    match points.get(take) {
        _ if percent == 100 => u64::MAX,
        Some(point) => *point,
        // No parents yet: the share of the whole range.
        None if points.is_empty() => u64::MAX / 100 * u64::from(percent),
        None => u64::MAX,
    }
}

/// Whether the canary serves the parent with `uid` below `threshold` (see [`threshold`]), or
/// because it matched the rollout's selector (`selected`).
pub fn serves_canary(uid: &str, threshold: u64, selected: bool) -> bool {
    selected || point(uid) < threshold
}

/// Parses a pause as Kubernetes users write durations: `30s`, `2m`, `1h`, `1h30m`.
pub fn parse_pause(text: &str) -> Result<Duration, String> {
    let bad = || format!("pause {text:?} is not a duration; write e.g. 30s, 2m, 1h30m");
    let (mut total, mut number) = (0u64, String::new());
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(spec: &[(u32, Option<u64>)]) -> Vec<Step> {
        spec.iter().map(|&(percent, pause)| Step { percent, pause: pause.map(Duration::from_secs) }).collect()
    }

    #[test]
    fn plans_rise_to_one_hundred_or_say_what_to_fix() {
        assert!(Plan::new(steps(&[(5, Some(120)), (50, Some(300)), (100, None)])).is_ok());
        assert_eq!(Plan::new(vec![]), Err(PlanError::NoSteps));
        assert_eq!(Plan::new(steps(&[(50, None), (40, None)])), Err(PlanError::BadPercent { index: 1, percent: 40 }));
        assert_eq!(Plan::new(steps(&[(0, None)])), Err(PlanError::BadPercent { index: 0, percent: 0 }));
        assert_eq!(Plan::new(steps(&[(5, None), (50, None)])), Err(PlanError::DoesNotEnd(50)));
        let plan = Plan::new(steps(&[(100, None)])).unwrap();
        assert_eq!(plan.analysis(1.5, 1), Err(PlanError::BadRate(1.5)));
    }

    #[test]
    fn shares_are_met_to_the_parent_and_only_grow() {
        for count in [7, 1_000, 10_000] {
            let uids: Vec<String> = (0..count).map(|i| format!("7c9e6679-7425-40de-944b-e07fc1f9{i:04}")).collect();
            let mut before: Vec<bool> = vec![false; uids.len()];
            for percent in [0, 5, 20, 50, 100] {
                let cut = threshold(uids.iter().map(|u| point(u)), percent);
                let now: Vec<bool> = uids.iter().map(|u| serves_canary(u, cut, false)).collect();
                let on = now.iter().filter(|c| **c).count();
                assert_eq!(on, (count * percent as usize + 50) / 100, "{percent}% of {count}");
                assert!(before.iter().zip(&now).all(|(b, n)| !b || *n), "a parent left the canary at {percent}%");
                before = now;
            }
            assert!(serves_canary(&uids[0], 0, true), "a selected parent is on the canary from the first step");
        }
        assert_eq!(threshold([], 20), u64::MAX / 100 * 20, "with no parents yet, the share of the range");
    }

    #[test]
    fn the_shard_hash_and_the_rollout_point_are_independent() {
        let on_canary_in_shard_0 = (0..4_000)
            .map(crate::shard::test_uid)
            .filter(|u| serves_canary(u, u64::MAX / 2, false))
            .filter(|u| crate::shard::shard_of(u, 2) == 0)
            .count();
        assert!((900..=1100).contains(&on_canary_in_shard_0), "{on_canary_in_shard_0} of ~1000");
    }

    #[test]
    fn decisions_hold_promote_complete_and_roll_back() {
        let plan = Plan::new(steps(&[(5, Some(120)), (50, None), (100, Some(60))])).unwrap().analysis(0.1, 20).unwrap();
        let fine = Figures { reconciles: 100, failures: 5 };
        assert_eq!(plan.decide(0, Duration::from_secs(30), fine), Decision::Hold(Some(Duration::from_secs(90))));
        assert_eq!(plan.decide(0, Duration::from_secs(120), fine), Decision::Promote(1));
        assert_eq!(plan.decide(1, Duration::from_secs(9999), fine), Decision::Hold(None), "no pause: by hand");
        assert_eq!(plan.decide(2, Duration::from_secs(60), fine), Decision::Complete);
        let failing = Figures { reconciles: 100, failures: 20 };
        assert_eq!(plan.decide(0, Duration::ZERO, failing), Decision::RollBack(failing));
        let too_few = Figures { reconciles: 10, failures: 5 };
        assert_eq!(plan.decide(0, Duration::ZERO, too_few), Decision::Hold(Some(Duration::from_secs(120))));
    }

    #[test]
    fn pauses_read_as_kubectl_users_write_them() {
        assert_eq!(parse_pause("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_pause("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_pause("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "2x", "m"] {
            assert!(parse_pause(bad).unwrap_err().contains("30s"), "{bad}");
        }
    }
}
