//! Staged rollouts of `WasmPlugin`s with `spec.rollout`.
//!
//! The catalog keeps a new operator revision beside the serving one as its [`Canary`]. The
//! status writer judges each rollout once per tick — the pause of its step, the canary's
//! failure rate as this replica measured it ([`Revisions`]), a `wasmop.dev/rollout-action`
//! annotation — and records the outcome in `status.rollout`. Every replica, the writer
//! included, follows that status through its watch: the share it names goes to the catalog
//! ([`Stage`]), so all replicas serve the same split.

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

use super::{Actor, Delivery, Failure, Fetched, Outcome, Record, Snapshot, Source, Stage, fingerprint};
use crate::catalog::Canary;
use crate::rollout::{self, ABORTED, COMPLETE, Decision, Figures, PROGRESSING, ROLLED_BACK};
use crate::wasmplugin::{
    OciSource, PluginSource, ROLLOUT_ACTION_ANNOTATION, RolloutStatus, StableSource, WasmPluginSpec,
};

/// The canary of WasmPlugin `name` in `snapshot`, if its rollout runs.
pub(super) fn canary_of<'a>(snapshot: &'a Snapshot, name: &str) -> Option<&'a std::sync::Arc<Canary>> {
    let source = Source::Cluster(name.to_string());
    snapshot.canaries.values().find(|c| c.revision.source == source)
}

/// The rollout status of the record's current generation, if any.
fn current(record: &Record) -> Option<&RolloutStatus> {
    let rollout = record.object.status.as_ref()?.rollout.as_ref()?;
    (rollout.generation == record.generation()).then_some(rollout)
}

/// The Ready condition while the delivered revision (`fingerprint`) rolls out or after it was
/// rolled back; `None` otherwise.
pub(super) fn rollout_condition(
    record: &Record,
    snapshot: &Snapshot,
    fingerprint: &str,
) -> Option<(&'static str, &'static str, String)> {
    let name = record.object.name_any();
    if let Some(canary) = canary_of(snapshot, &name).filter(|c| c.revision.fingerprint == fingerprint) {
        let message = format!(
            "revision {} rolls out to {}% of parents; the stable revision serves the others",
            canary.revision.plugin.file().revision(),
            canary.percent
        );
        return Some(("True", "RollingOut", message));
    }
    let rollout = current(record).filter(|r| r.phase == ROLLED_BACK || r.phase == ABORTED)?;
    let serving_it = snapshot.operators.values().any(|r| r.fingerprint == fingerprint);
    (!serving_it).then(|| ("False", "RolledBack", rollout.message.clone()))
}

/// Why the fetched `digest` must not serve: this generation's rollout of it was rolled back
/// (a replica starting after the rollback has no stable revision to serve instead).
pub(super) fn rolled_back_here(record: &Record, digest: &str) -> Option<String> {
    let rollout = current(record)?;
    let gone =
        (rollout.phase == ROLLED_BACK || rollout.phase == ABORTED) && rollout.canary_digest.as_deref() == Some(digest);
    gone.then(|| {
        format!(
            "{}; the digest is not served again until the spec changes (point spec.source at the stable revision, \
             or change spec.rollout to retry)",
            rollout.message
        )
    })
}

/// `spec`'s source pinned to the `digest` fetched (a ConfigMap key as it is), with its settings.
pub(super) fn pinned(spec: &WasmPluginSpec, digest: &str) -> StableSource {
    let oci = spec.source.oci.as_ref().map(|oci| {
        let reference = crate::registry::parse_reference(&oci.reference)
            .map(|r| r.clone_with_digest(digest.to_string()).whole())
            .unwrap_or_else(|_| oci.reference.clone());
        OciSource { reference, pull_secret_ref: oci.pull_secret_ref.clone() }
    });
    let source = PluginSource { oci, config_map: spec.source.config_map.clone() };
    StableSource { source, settings: spec.settings.clone() }
}

/// The stable source to fetch first, when the canary (`digest`) of a rollout in progress or
/// rolled back was fetched and nothing of this source serves yet (this replica just started).
pub(super) fn stable_missing(record: &Record, snapshot: &Snapshot, digest: &str) -> Option<StableSource> {
    let rollout = current(record).filter(|r| r.phase != COMPLETE)?;
    let source = Source::Cluster(record.object.name_any());
    let serving = snapshot.operators.values().any(|r| r.source == source);
    let first_try = record.stable_fetched != Some(record.generation());
    (rollout.canary_digest.as_deref() == Some(digest) && !serving && first_try)
        .then(|| rollout.stable_source.clone())
        .flatten()
}

/// The fingerprints of the revisions of WasmPlugin `name` that serve in `snapshot`: stable,
/// canary or policy.
pub(super) fn live_fingerprints(snapshot: &Snapshot, name: &str) -> std::collections::HashSet<String> {
    let source = Source::Cluster(name.to_string());
    let operators = snapshot.operators.values().filter(|r| r.source == source).map(|r| r.fingerprint.clone());
    let canaries = canary_of(snapshot, name).map(|c| c.revision.fingerprint.clone());
    let policies = snapshot.policies.iter().filter(|p| p.source == source).map(|p| p.fingerprint.clone());
    operators.chain(canaries).chain(policies).collect()
}

/// The stage the rollout's status names, for the catalog.
fn stage_of(record: &Record, rollout: &RolloutStatus) -> Stage {
    match rollout.phase.as_str() {
        PROGRESSING => Stage::Share {
            percent: rollout.percent,
            selector: record.object.spec.rollout.as_ref().and_then(|r| r.selector.clone()),
        },
        COMPLETE => Stage::Complete,
        _ => Stage::RollBack,
    }
}

/// The (stable, canary) figures of the record's rollout of `canary` since it began here.
fn measured(actor: &Actor, record: &Record, stable: &str, canary: &str) -> (Figures, Figures) {
    let since = |now: Figures, before: Figures| Figures {
        reconciles: now.reconciles.saturating_sub(before.reconciles),
        failures: now.failures.saturating_sub(before.failures),
    };
    let (stable_before, canary_before) = match &record.baseline {
        Some((revision, s, c)) if revision == canary => (*s, *c),
        _ => Default::default(),
    };
    (since(actor.revisions.get(stable), stable_before), since(actor.revisions.get(canary), canary_before))
}

/// What a `wasmop.dev/rollout-action` annotation asks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Promote,
    Abort,
    /// Neither: noted (so it is not read again) and ignored.
    Unknown,
}

/// What the annotation asks, if it is new: (the value, the action).
fn requested(record: &Record, rollout: &RolloutStatus) -> Option<(String, Action)> {
    let value = record.object.annotations().get(ROLLOUT_ACTION_ANNOTATION)?;
    if rollout.last_handled_action.as_ref() == Some(value) {
        return None;
    }
    Some((value.clone(), action_of(value)))
}

/// The action of an annotation value: `promote` or `abort`, with an optional `:token`.
fn action_of(value: &str) -> Action {
    match value.split(':').next().unwrap_or_default() {
        "promote" => Action::Promote,
        "abort" => Action::Abort,
        _ => Action::Unknown,
    }
}

impl Actor {
    /// Fetches the stable revision of `name`'s rollout (once per generation), reported as a
    /// stable outcome.
    pub(super) fn fetch_stable(&mut self, name: &str, generation: i64, stable: StableSource) {
        if let Some(record) = self.records.get_mut(name) {
            record.stable_fetched = Some(generation);
        }
        let spec = WasmPluginSpec { source: stable.source, settings: None, mode: None, rollout: None };
        let (fetcher, tx, name) = (self.fetcher.clone(), self.outcomes_tx.clone(), name.to_string());
        tokio::spawn(async move {
            let result = fetcher.fetch(&spec, None).await;
            let _ = tx.send(Outcome { name, generation, result, stable: true });
        });
    }

    /// Delivers a fetched stable revision (as the serving one), then the parked canary (of a
    /// rollout in progress) again.
    pub(super) async fn settle_stable(&mut self, name: String, generation: i64, result: Result<Fetched, Failure>) {
        let Some(record) = self.records.get_mut(&name) else { return };
        if record.generation() != generation {
            return;
        }
        let canary = record.parked.take();
        let stable = current(record).and_then(|r| r.stable_source.clone());
        match (result, stable) {
            (Ok(fetched), Some(stable)) => {
                let settings = stable.settings.as_ref().map(|s| s.to_string());
                let fingerprint = fingerprint(&fetched.bytes, settings.as_deref(), None, None);
                record.digests.insert(fingerprint.clone(), fetched.digest);
                record.sources.insert(fingerprint.clone(), stable);
                let (done, delivered) = tokio::sync::oneshot::channel();
                let put = Delivery::Put {
                    name: name.clone(),
                    bytes: fetched.bytes,
                    settings,
                    mode: None,
                    staged: false,
                    fingerprint,
                    done,
                };
                if self.deliveries.send(put).await.is_ok() {
                    let _ = delivered.await;
                }
            }
            (Err(failure), _) => tracing::warn!(wasmplugin = %name, error = %failure.message,
                "cannot fetch the stable revision of the rollout in progress; the canary serves every parent here"),
            (Ok(_), None) => {}
        }
        if let Some(canary) = canary {
            let _ =
                self.outcomes_tx.send(Outcome { name: name.clone(), generation, result: Ok(canary), stable: false });
        }
        self.write(&name).await;
    }

    /// Hands the catalog the stage the record's status names for its canary, when it differs
    /// from what serves.
    pub(super) async fn follow_rollout(&mut self, name: &str) {
        let snapshot = self.snapshots.borrow().clone();
        let Some(canary) = canary_of(&snapshot, name) else { return };
        let Some(record) = self.records.get(name) else { return };
        let Some(rollout) = current(record) else { return };
        if rollout.canary_revision != canary.revision.plugin.file().revision() {
            return;
        }
        let stage = stage_of(record, rollout);
        if matches!(&stage, Stage::Share { percent, selector } if *percent == canary.percent && *selector == canary.selector)
        {
            return;
        }
        let percent = match &stage {
            Stage::Share { percent, .. } => *percent,
            Stage::Complete | Stage::RollBack => 0,
        };
        self.metrics.rollout_percent(name, percent);
        let (done, staged) = tokio::sync::oneshot::channel();
        let delivery = super::Delivery::Stage { name: name.to_string(), stage, done };
        if self.deliveries.send(delivery).await.is_ok() {
            let _ = staged.await;
        }
    }

    /// As the status writer: judges every rollout in progress and records the outcome.
    pub(super) async fn drive_rollouts(&mut self) {
        if !*self.writer.borrow() {
            return;
        }
        let snapshot = self.snapshots.borrow().clone();
        let names: Vec<String> = self.records.keys().filter(|n| canary_of(&snapshot, n).is_some()).cloned().collect();
        for name in names {
            self.drive(&snapshot, &name).await;
        }
    }

    /// Judges the rollout of WasmPlugin `name` and writes its status when it moved.
    async fn drive(&mut self, snapshot: &Snapshot, name: &str) {
        let Some(canary) = canary_of(snapshot, name) else { return };
        let source = Source::Cluster(name.to_string());
        let Some(stable) = snapshot.operators.values().find(|r| r.source == source) else { return };
        let stable_fingerprint = stable.fingerprint.clone();
        let (stable, canary_rev) =
            (stable.plugin.file().revision().to_string(), canary.revision.plugin.file().revision());
        let Some(record) = self.records.get(name) else { return };
        let Some(Ok(plan)) = record.object.spec.rollout.as_ref().map(|r| r.plan()) else { return };
        let now = jiff::Timestamp::now();
        let (mut next, fresh) = match current(record).filter(|r| r.canary_revision == canary_rev) {
            Some(r) if r.phase != PROGRESSING => return,
            Some(r) => (r.clone(), false),
            None => {
                let previous = record.object.status.as_ref().and_then(|s| s.rollout.as_ref());
                let first = RolloutStatus {
                    phase: PROGRESSING.into(),
                    generation: record.generation(),
                    stable_revision: stable.clone(),
                    canary_revision: canary_rev.to_string(),
                    canary_digest: record.digests.get(&canary.revision.fingerprint).cloned(),
                    step: 0,
                    percent: plan.steps()[0].percent,
                    step_started_at: now.to_string(),
                    stable_source: record.sources.get(&stable_fingerprint).cloned(),
                    // An annotation left from an earlier rollout is not a request to this one.
                    last_handled_action: record
                        .object
                        .annotations()
                        .get(ROLLOUT_ACTION_ANNOTATION)
                        .cloned()
                        .or_else(|| previous.and_then(|p| p.last_handled_action.clone())),
                    ..RolloutStatus::default()
                };
                (first, true)
            }
        };
        if fresh {
            let baseline = (canary_rev.to_string(), self.revisions.get(&stable), self.revisions.get(canary_rev));
            if let Some(record) = self.records.get_mut(name) {
                record.baseline = Some(baseline);
            }
        }
        let Some(record) = self.records.get(name) else { return };
        let (stable_figures, canary_figures) = measured(self, record, &stable, canary_rev);
        let figures_moved = (next.stable, next.canary) != (stable_figures, canary_figures);
        (next.stable, next.canary) = (stable_figures, canary_figures);
        let step = next.step as usize;
        let started = next.step_started_at.parse::<jiff::Timestamp>().unwrap_or(now);
        let judged = plan.decide(step, now.duration_since(started).unsigned_abs(), canary_figures);
        let mut noted = false;
        let decision = match requested(record, &next) {
            Some((value, action)) => {
                next.last_handled_action = Some(value.clone());
                match (action, plan.steps().get(step + 1)) {
                    (Action::Abort, _) => None,
                    (Action::Promote, Some(_)) => Some(Decision::Promote(step + 1)),
                    (Action::Promote, None) => Some(Decision::Complete),
                    (Action::Unknown, _) => {
                        next.message = format!("ignored {ROLLOUT_ACTION_ANNOTATION}={value}: write promote or abort");
                        noted = true;
                        Some(judged)
                    }
                }
            }
            None => Some(judged),
        };
        let moved = self.moved(&source, &mut next, &plan, decision, now).await || noted;
        let stale = record.figures_written.is_none_or(|t| t.elapsed() >= super::FIGURES_EVERY);
        if fresh || moved || (figures_moved && stale) {
            self.write_rollout(name, next).await;
        }
    }

    /// Applies `decision` (`None`: aborted by hand) to `next`; whether the rollout moved.
    async fn moved(
        &self,
        source: &Source,
        next: &mut RolloutStatus,
        plan: &rollout::Plan,
        decision: Option<Decision>,
        now: jiff::Timestamp,
    ) -> bool {
        match decision {
            Some(Decision::Hold(_)) => return false,
            Some(Decision::Promote(step)) => {
                next.step = step as u32;
                next.percent = plan.steps()[step].percent;
                next.step_started_at = now.to_string();
                next.message = format!("step {} of {}: {}% of parents", step + 1, plan.steps().len(), next.percent);
            }
            Some(Decision::Complete) => {
                next.phase = COMPLETE.into();
                next.percent = 100;
                next.message = format!("revision {} serves every parent", next.canary_revision);
            }
            Some(Decision::RollBack(figures)) => {
                next.phase = ROLLED_BACK.into();
                next.message = format!(
                    "rolled back: {} of {} reconciles of revision {} failed ({:.1}%, more than the {:.1}% \
                     spec.rollout.analysis allows); revision {} serves every parent again",
                    figures.failures,
                    figures.reconciles,
                    next.canary_revision,
                    figures.rate() * 100.0,
                    plan.max_failure_rate() * 100.0,
                    next.stable_revision
                );
                self.rejections.rolled_back(source, &next.message).await;
            }
            None => {
                next.phase = ABORTED.into();
                next.message = format!(
                    "aborted by hand at {}% of parents; revision {} serves every parent again",
                    next.percent, next.stable_revision
                );
                self.rejections.rolled_back(source, &next.message).await;
            }
        }
        tracing::info!(wasmplugin = %source.short_name(), phase = %next.phase, percent = next.percent,
            message = %next.message, "rollout moved");
        true
    }

    /// Writes `status.rollout` of WasmPlugin `name`.
    async fn write_rollout(&mut self, name: &str, rollout: RolloutStatus) {
        let patch = Patch::Merge(serde_json::json!({ "status": { "rollout": rollout } }));
        match self.api.patch_status(name, &PatchParams::default(), &patch).await {
            Ok(object) => {
                if let Some(record) = self.records.get_mut(name) {
                    record.object = object;
                    record.figures_written = Some(tokio::time::Instant::now());
                }
                self.follow_rollout(name).await;
            }
            Err(e) => tracing::warn!(wasmplugin = name, error = %e, "cannot write the rollout's status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_values_name_an_action_with_an_optional_token() {
        assert_eq!(action_of("promote"), Action::Promote);
        assert_eq!(action_of("promote:2026-12-06T06:00:00Z"), Action::Promote);
        assert_eq!(action_of("abort:x"), Action::Abort);
        for other in ["", "Promote", "rollback", "aborted"] {
            assert_eq!(action_of(other), Action::Unknown, "{other}");
        }
    }
}
