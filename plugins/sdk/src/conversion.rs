//! Helpers for [`Operator::convert`](crate::Operator::convert): moving an object between the
//! versions of its kind without losing anything.
//!
//! Kubernetes' own conversions keep a field the target version cannot hold in an annotation of
//! the converted object and restore it on the way back; [`stash`] and [`unstash`] do that with a
//! JSON value under one annotation key, so that A → B → A gives back A exactly.

use serde_json::{Map, Value};

/// The group of an object's `apiVersion` (`""` for the core group).
pub fn group_of(obj: &Value) -> &str {
    obj["apiVersion"].as_str().and_then(|v| v.split_once('/')).map_or("", |(group, _)| group)
}

/// The version of an object's `apiVersion` (`"v1"` of `"apps/v1"`).
pub fn version_of(obj: &Value) -> &str {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    api_version.split_once('/').map_or(api_version, |(_, version)| version)
}

/// Sets `apiVersion` to `to_version` of the object's group.
pub fn set_version(obj: &mut Value, to_version: &str) {
    let group = group_of(obj);
    let api_version = if group.is_empty() { to_version.to_string() } else { format!("{group}/{to_version}") };
    obj["apiVersion"] = Value::String(api_version);
}

/// Keeps `value` as JSON in annotation `key` (nothing when `value` is an empty object or null),
/// for a field the target version cannot hold.
pub fn stash(obj: &mut Value, key: &str, value: &Value) {
    let empty = value.is_null() || value.as_object().is_some_and(Map::is_empty);
    if empty {
        return;
    }
    let Some(metadata) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// Takes back what [`stash`] kept under `key`, removing the annotation (and the annotations map
/// when it becomes empty, as the API server never stores an empty one). An annotation that is not
/// valid JSON is left in place and `None` returned, so that nothing is lost.
pub fn unstash(obj: &mut Value, key: &str) -> Option<Value> {
    let metadata = obj.get_mut("metadata")?.as_object_mut()?;
    let annotations = metadata.get_mut("annotations")?.as_object_mut()?;
    let value: Value = serde_json::from_str(annotations.get(key)?.as_str()?).ok()?;
    annotations.remove(key);
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stash_then_unstash_gives_back_the_object() {
        let original = json!({"apiVersion": "g.io/v1", "metadata": {"name": "a"}});
        let mut obj = original.clone();
        stash(&mut obj, "g.io/extra", &json!({"port": 80}));
        assert_eq!(obj["metadata"]["annotations"]["g.io/extra"], "{\"port\":80}");
        assert_eq!(unstash(&mut obj, "g.io/extra"), Some(json!({"port": 80})));
        assert_eq!(obj, original);
    }

    #[test]
    fn a_broken_annotation_stays() {
        let mut obj = json!({"metadata": {"annotations": {"k": "{not json"}}});
        assert_eq!(unstash(&mut obj, "k"), None);
        assert_eq!(obj["metadata"]["annotations"]["k"], "{not json");
    }

    #[test]
    fn versions() {
        let mut obj = json!({"apiVersion": "tools.wasmop.dev/v1beta1"});
        assert_eq!((group_of(&obj), version_of(&obj)), ("tools.wasmop.dev", "v1beta1"));
        set_version(&mut obj, "v1");
        assert_eq!(obj["apiVersion"], "tools.wasmop.dev/v1");
    }
}
