//! What monitoring policies found on a parent's children, reported three ways, each only when
//! the findings change: the parent's `PolicyCompliant` condition (written by the report step), a
//! Warning Event with the findings metric, and a wg-policy `PolicyReport`
//! (`wgpolicyk8s.io/v1alpha2`, the kind Kyverno and Kubewarden install) when the cluster serves
//! it: one per namespaced parent, named by its UID and owned by it.

use kube::ResourceExt;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::{Context, owner_of, publish, uid};
use crate::apply::{self, MANAGED_BY_LABEL, Owner};
use crate::plugin::{Condition, ConditionStatus, Gvk};
use crate::policy::{Finding, FindingOutcome, PolicyChain};

/// Condition type of what monitoring policies found on a parent's children.
pub const POLICY_CONDITION: &str = "PolicyCompliant";
/// Findings named in the condition's message; the rest are counted.
const MAX_FINDINGS_NAMED: usize = 5;

/// The [`POLICY_CONDITION`] when any policy monitors: `True` when the monitoring policies found
/// nothing, `False` (`PolicyFindings`) naming what they would have denied or changed. `None`
/// when no policy monitors, so parents of a chain without one carry no such condition.
pub fn audit_condition(policies: &PolicyChain, findings: &[Finding]) -> Option<Condition> {
    let monitoring = policies.monitoring();
    if monitoring.is_empty() {
        return None;
    }
    let (status, reason, message) = if findings.is_empty() {
        (ConditionStatus::True, "NoFindings", format!("monitoring policies {} found nothing", monitoring.join(", ")))
    } else {
        let mut named: Vec<String> = findings.iter().take(MAX_FINDINGS_NAMED).map(Finding::to_string).collect();
        if findings.len() > MAX_FINDINGS_NAMED {
            named.push(format!("and {} more", findings.len() - MAX_FINDINGS_NAMED));
        }
        (ConditionStatus::False, "PolicyFindings", format!("not enforced (monitor mode): {}", named.join("; ")))
    };
    Some(Condition { type_: POLICY_CONDITION.into(), status, reason: reason.into(), message })
}

/// When the findings differ from what the parent's `PolicyCompliant` condition says (so an
/// unchanged verdict is not reported again on every reconcile): a Warning Event and the metric
/// for new findings, and the parent's `PolicyReport` written (or, once no policy monitors,
/// deleted) when the cluster serves that kind. A failed report write is logged; the condition
/// still says it.
pub(super) async fn record(parent: &DynamicObject, ctx: &Context, audit: Option<&Condition>, findings: &[Finding]) {
    // The host's own last status write when the cache does not show it yet (see `write_status`).
    let unseen = ctx.state.unseen_status(&uid(parent), &parent.resource_version().unwrap_or_default());
    let status = unseen.as_ref().unwrap_or(&parent.data["status"]);
    let current = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == POLICY_CONDITION))
        .and_then(|c| c["message"].as_str());
    if current == audit.map(|a| a.message.as_str()) {
        return;
    }
    if let Some(audit) = audit
        && !findings.is_empty()
    {
        for finding in findings {
            ctx.metrics.policy_finding(&finding.policy);
        }
        publish(ctx, parent, EventType::Warning, "PolicyFindings", "Review", audit.message.clone()).await;
    }
    let (Some(resource), Some(namespace)) = (&ctx.reports, parent.namespace()) else { return };
    let api: kube::Api<DynamicObject> = kube::Api::namespaced_with(ctx.client.clone(), &namespace, resource);
    let name = name(&uid(parent));
    let written = match audit {
        Some(_) => {
            let report = report(&owner_of(parent, ctx), &namespace, findings, jiff::Timestamp::now());
            let params = PatchParams::apply(apply::FIELD_MANAGER).force();
            api.patch(&name, &params, &Patch::Apply(&report)).await.map(drop)
        }
        None => match api.delete(&name, &Default::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(drop),
        },
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, report = %name, "cannot write the PolicyReport; the PolicyCompliant condition says the same");
    }
}

/// The report kind.
pub fn report_kind() -> Gvk {
    Gvk::new("wgpolicyk8s.io", "v1alpha2", "PolicyReport")
}

/// The report's name for the parent with `uid`.
fn name(uid: &str) -> String {
    format!("wasmop-{uid}")
}

/// The report of `findings` about the parent `owner` in `namespace` (no findings: a report
/// with none, the monitoring policies passing).
fn report(owner: &Owner, namespace: &str, findings: &[Finding], now: jiff::Timestamp) -> Value {
    let result = |outcome: FindingOutcome| match outcome {
        FindingOutcome::Deny => "fail",
        FindingOutcome::Mutate => "warn",
        FindingOutcome::Error => "error",
    };
    let count = |r: &str| findings.iter().filter(|f| result(f.outcome) == r).count();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "source": "wasmop",
                "policy": f.policy,
                "result": result(f.outcome),
                "message": f.to_string(),
                "resources": [f.resource],
                "scored": true,
                "properties": {"mode": "monitor"},
                "timestamp": {"seconds": now.as_second(), "nanos": 0},
            })
        })
        .collect();
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": name(&owner.uid),
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "wasmop"},
            "ownerReferences": [{
                "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "scope": {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "namespace": namespace, "uid": owner.uid},
        "summary": {"pass": 0, "fail": count("fail"), "warn": count("warn"), "error": count("error"), "skip": 0},
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_and_names_each_finding() {
        let owner =
            Owner { api_version: "x/v1".into(), kind: "App".into(), name: "web".into(), uid: "u1".into(), shard: None };
        let finding = |outcome| Finding {
            policy: "p".into(),
            object: "ConfigMap ns/c".into(),
            resource: json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns", "name": "c"}),
            outcome,
            message: "m".into(),
        };
        let findings = [finding(FindingOutcome::Deny), finding(FindingOutcome::Mutate), finding(FindingOutcome::Deny)];
        let report = report(&owner, "ns", &findings, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(report["metadata"]["name"], "wasmop-u1");
        assert_eq!(report["summary"], json!({"pass": 0, "fail": 2, "warn": 1, "error": 0, "skip": 0}));
        assert_eq!(report["results"][0]["message"], "policy p on ConfigMap ns/c: would deny: m");
        assert_eq!(report["results"][1]["resources"][0]["name"], "c");
        assert_eq!(report["scope"]["uid"], "u1");
    }
}
