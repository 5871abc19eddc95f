//! Findings of monitoring policies as a wg-policy `PolicyReport` (`wgpolicyk8s.io/v1alpha2`,
//! the kind Kyverno and Kubewarden install): one per namespaced parent, named by its UID and
//! owned by it, written only when the findings change. Used only when the cluster serves the
//! kind; the parent's `PolicyCompliant` condition says the same either way.

use serde_json::{Value, json};

use crate::apply::{MANAGED_BY_LABEL, Owner};
use crate::plugin::Gvk;
use crate::policy::{Finding, FindingOutcome};

/// The report kind.
pub fn kind() -> Gvk {
    Gvk::new("wgpolicyk8s.io", "v1alpha2", "PolicyReport")
}

/// The report's name for the parent with `uid`.
pub fn name(uid: &str) -> String {
    format!("wasmop-{uid}")
}

/// The report of `findings` about the parent `owner` in `namespace` (no findings: a report
/// with none, the monitoring policies passing).
pub fn report(owner: &Owner, namespace: &str, findings: &[Finding], now: jiff::Timestamp) -> Value {
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
        let owner = Owner { api_version: "x/v1".into(), kind: "App".into(), name: "web".into(), uid: "u1".into() };
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
