//! Conversion between v1beta1 and v1, on the JSON object so that nothing the plugin does not
//! know about is dropped. v1beta1 cannot hold `spec.workload.port` (nor any other field of
//! `spec.workload` beside image and replicas): those travel in the annotation [`V1_FIELDS`] and
//! come back on the way to v1, so every round trip gives back the original object.

use serde_json::{Map, Value};
use wasmop_sdk::conversion::{set_version, stash, unstash, version_of};

/// Annotation of a v1beta1 object holding the v1 workload fields it cannot express, as JSON.
pub const V1_FIELDS: &str = "appoperator.tools.wasmop.dev/v1-workload";

/// The versions this plugin converts between.
pub const VERSIONS: [&str; 2] = ["v1beta1", "v1"];

/// Converts an Appoperator of any version to `to_version`.
pub fn convert(mut obj: Value, to_version: &str) -> Result<Value, String> {
    let from = version_of(&obj).to_string();
    if !VERSIONS.contains(&from.as_str()) || !VERSIONS.contains(&to_version) {
        return Err(format!("cannot convert {from} to {to_version}: this plugin converts between {VERSIONS:?}"));
    }
    if from != to_version {
        let spec = take_spec(&mut obj, &from)?;
        let spec = if to_version == "v1" { to_v1(&mut obj, spec) } else { to_v1beta1(&mut obj, spec) };
        obj["spec"] = Value::Object(spec);
    }
    set_version(&mut obj, to_version);
    Ok(obj)
}

fn take_spec(obj: &mut Value, from: &str) -> Result<Map<String, Value>, String> {
    match obj.get_mut("spec").map(Value::take) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(spec)) => Ok(spec),
        Some(_) => Err(format!("spec of this {from} Appoperator is not an object")),
    }
}

/// v1beta1 `{image, replicas}` → v1 `{workload: {image, replicas, ...stashed}}`.
fn to_v1(obj: &mut Value, mut spec: Map<String, Value>) -> Map<String, Value> {
    let mut workload = match unstash(obj, V1_FIELDS) {
        Some(Value::Object(stashed)) => stashed,
        _ => Map::new(),
    };
    for key in ["image", "replicas"] {
        if let Some(value) = spec.remove(key) {
            workload.insert(key.into(), value);
        }
    }
    if !workload.is_empty() {
        spec.insert("workload".into(), Value::Object(workload));
    }
    spec
}

/// v1 `{workload: {image, replicas, port}}` → v1beta1 `{image, replicas}` + the rest stashed.
fn to_v1beta1(obj: &mut Value, mut spec: Map<String, Value>) -> Map<String, Value> {
    let mut workload = match spec.remove("workload") {
        Some(Value::Object(workload)) => workload,
        _ => Map::new(),
    };
    for key in ["image", "replicas"] {
        if let Some(value) = workload.remove(key) {
            spec.insert(key.into(), value);
        }
    }
    stash(obj, V1_FIELDS, &Value::Object(workload));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(workload: Value) -> Value {
        json!({
            "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"team": "a"}},
            "spec": {"workload": workload},
            "status": {"replicas": 2},
        })
    }

    #[test]
    fn v1_to_v1beta1_keeps_the_port_in_an_annotation_and_back() {
        let original = v1(json!({"image": "nginx:1.27", "replicas": 2, "port": 8080}));
        let old = convert(original.clone(), "v1beta1").unwrap();
        assert_eq!(old["apiVersion"], "tools.wasmop.dev/v1beta1");
        assert_eq!(old["spec"], json!({"image": "nginx:1.27", "replicas": 2}));
        assert_eq!(old["metadata"]["annotations"][V1_FIELDS], r#"{"port":8080}"#);
        assert_eq!(old["status"], original["status"]);
        assert_eq!(convert(old, "v1").unwrap(), original);
    }

    #[test]
    fn v1beta1_round_trips_without_an_annotation() {
        let original = json!({
            "apiVersion": "tools.wasmop.dev/v1beta1", "kind": "Appoperator",
            "metadata": {"name": "web"}, "spec": {"image": "a", "replicas": 1},
        });
        let new = convert(original.clone(), "v1").unwrap();
        assert_eq!(new["spec"], json!({"workload": {"image": "a", "replicas": 1}}));
        assert_eq!(convert(new, "v1beta1").unwrap(), original);
    }

    #[test]
    fn unknown_versions_are_refused() {
        let err = convert(v1(json!({"image": "a"})), "v2").unwrap_err();
        assert!(err.contains("v2") && err.contains("v1beta1"), "{err}");
    }
}
