//! A test policy plugin: mutates each ConfigMap as its annotation `test.wasmop.dev/mutate` says.
//!
//! - `label`: adds the label `mutated: "yes"` (an allowed mutation);
//! - `namespace`: moves the child to namespace `elsewhere` (must be refused);
//! - `kind`: turns the child into a Secret (must be refused);
//! - `strip-labels`: sets `metadata.labels` to null (the host's marks must still win);
//! - `deny`: denies the child (for the monitor-mode tests);
//! - anything else, or no annotation: allows the child unchanged.

use serde_json::{Value, json};
use wasmop_sdk::{Gvk, Policy, PolicyMetadata, Verdict};

/// The policy.
pub struct Mutator;

impl Policy for Mutator {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata {
            name: "mutator".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            applies_to: vec![Gvk::new("", "v1", "ConfigMap")],
        }
    }

    fn review(_parent: &Value, mut child: Value, _settings: Option<&str>) -> Verdict {
        let how = child["metadata"]["annotations"]["test.wasmop.dev/mutate"].as_str().unwrap_or("").to_string();
        match how.as_str() {
            "label" => child["metadata"]["labels"]["mutated"] = json!("yes"),
            "namespace" => child["metadata"]["namespace"] = json!("elsewhere"),
            "kind" => child["kind"] = json!("Secret"),
            "strip-labels" => child["metadata"]["labels"] = Value::Null,
            "deny" => return Verdict::Deny("denied by its annotation test.wasmop.dev/mutate: deny".into()),
            _ => return Verdict::Allow,
        }
        Verdict::Mutate(child)
    }
}

wasmop_sdk::export_policy!(Mutator);
