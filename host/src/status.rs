//! The parent's status as the host writes it: the plugin's status fields, `observedGeneration`,
//! and conditions whose `lastTransitionTime` changes only when their status does.

use serde_json::{Map, Value, json};

use crate::plugin::{Condition, ConditionStatus};

/// What one reconcile concluded about a parent, to be written to its status.
#[derive(Clone, Debug)]
pub struct Report {
    /// The plugin's status fields; `None` keeps the fields the parent already has (e.g. after an
    /// error, the last known figures stay visible).
    pub fields: Option<Map<String, Value>>,
    /// Conditions to set; anything not listed is dropped.
    pub conditions: Vec<Condition>,
}

impl Report {
    /// A report of one failure: `Ready=False` with the reason and message, other fields kept.
    pub fn failure(reason: &str, message: String) -> Self {
        Report {
            fields: None,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ConditionStatus::False,
                reason: reason.into(),
                message,
            }],
        }
    }
}

pub use wasmop_contract::MAX_CONDITION_MESSAGE;
/// Longest Event note the API server accepts (events.k8s.io/v1 validation).
pub const MAX_EVENT_NOTE: usize = 1024;

/// The status the parent should have after `report`, given its current status and generation.
/// Returns `None` when it already has exactly that status, so no write is needed.
pub fn next_status(current: &Value, generation: Option<i64>, report: &Report, now: &str) -> Option<Value> {
    let mut status = match &report.fields {
        Some(fields) => fields.clone(),
        None => current.as_object().cloned().unwrap_or_default(),
    };
    if let Some(generation) = generation {
        status.insert("observedGeneration".into(), json!(generation));
    }
    let previous = current["conditions"].as_array().cloned().unwrap_or_default();
    let conditions: Vec<Value> = report
        .conditions
        .iter()
        .map(|c| {
            let prior = previous.iter().find(|p| p["type"] == c.type_.as_str());
            let unchanged = prior.is_some_and(|p| p["status"] == c.status.as_str());
            let since = match prior {
                Some(p) if unchanged => p["lastTransitionTime"].clone(),
                _ => json!(now),
            };
            let mut cond = json!({
                "type": c.type_,
                "status": c.status.as_str(),
                "reason": c.reason,
                "message": crate::text::cap(&c.message, MAX_CONDITION_MESSAGE),
                "lastTransitionTime": since,
            });
            if let Some(generation) = generation {
                cond["observedGeneration"] = json!(generation);
            }
            cond
        })
        .collect();
    status.insert("conditions".into(), Value::Array(conditions));
    let next = Value::Object(status);
    (next != *current).then_some(next)
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The `Ready` condition of a status, if any: (status, reason, message).
pub fn ready_of(status: &Value) -> Option<(String, String, String)> {
    let ready = status["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    let s = |k: &str| ready[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: ConditionStatus, reason: &str) -> Report {
        Report {
            fields: Some(json!({"replicas": 3}).as_object().unwrap().clone()),
            conditions: vec![Condition { type_: "Ready".into(), status, reason: reason.into(), message: "m".into() }],
        }
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let first = next_status(&json!({}), Some(2), &ready(ConditionStatus::False, "Progressing"), "T1").unwrap();
        assert_eq!(first["observedGeneration"], 2);
        assert_eq!(first["conditions"][0]["lastTransitionTime"], "T1");
        assert_eq!(first["conditions"][0]["observedGeneration"], 2);
        // Same status, new reason: time kept.
        let second = next_status(&first, Some(2), &ready(ConditionStatus::False, "Scaling"), "T2").unwrap();
        assert_eq!(second["conditions"][0]["lastTransitionTime"], "T1");
        // Status flips: time moves.
        let third = next_status(&second, Some(2), &ready(ConditionStatus::True, "Available"), "T3").unwrap();
        assert_eq!(third["conditions"][0]["lastTransitionTime"], "T3");
    }

    #[test]
    fn nothing_to_write_when_status_is_already_right() {
        let status = next_status(&json!({}), Some(1), &ready(ConditionStatus::True, "Available"), "T1").unwrap();
        assert_eq!(next_status(&status, Some(1), &ready(ConditionStatus::True, "Available"), "T9"), None);
    }

    #[test]
    fn huge_messages_are_capped_with_a_marker() {
        let huge = "é".repeat(20 * 1024 * 1024);
        let failed = next_status(&json!({}), Some(1), &Report::failure("InvalidSpec", huge), "T").unwrap();
        assert!(failed["conditions"][0]["message"].as_str().unwrap().len() <= MAX_CONDITION_MESSAGE);
    }

    #[test]
    fn failure_keeps_last_known_fields() {
        let ok = next_status(&json!({}), Some(1), &ready(ConditionStatus::True, "Available"), "T1").unwrap();
        let failed = next_status(&ok, Some(2), &Report::failure("PluginTimeout", "slow".into()), "T2").unwrap();
        assert_eq!(failed["replicas"], 3);
        assert_eq!(failed["observedGeneration"], 2);
        assert_eq!(ready_of(&failed).unwrap(), ("False".into(), "PluginTimeout".into(), "slow".into()));
    }
}
