//! Field-level differences (for `wasmop preview` and monitoring policies) between a desired
//! object and the live one, as server-side apply would make them: fields the desired object sets
//! to another value, and fields the host applied before (its managed fields) that the desired
//! object no longer sets. Fields only the server or other managers set (defaults, status,
//! `metadata.uid`…) are not differences.

use serde::Serialize;
use serde_json::{Map, Value};

/// One field that would change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    /// Where, as `spec.template.spec.containers[name=app].image`.
    pub path: String,
    /// The live value; absent when the field would be added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The new value; absent when the field would be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// Fields of `desired` that `observed` lacks or holds with another value. Objects are compared
/// key by key, lists of equal length element by element, anything else whole.
pub fn changed(desired: &Value, observed: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk_changed("", desired, observed, &mut out);
    out
}

fn walk_changed(path: &str, desired: &Value, observed: &Value, out: &mut Vec<FieldChange>) {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => {
            for (key, dv) in d {
                let path = join(path, key);
                match (o.get(key), dv) {
                    (Some(ov), _) => walk_changed(&path, dv, ov, out),
                    // A new object is named by its leaves.
                    (None, Value::Object(fields)) if !fields.is_empty() => {
                        walk_changed(&path, dv, &Value::Object(Map::new()), out)
                    }
                    (None, _) => out.push(FieldChange { path, from: None, to: Some(dv.clone()) }),
                }
            }
        }
        (Value::Array(d), Value::Array(o)) if d.len() == o.len() => {
            for (i, (dv, ov)) in d.iter().zip(o).enumerate() {
                walk_changed(&format!("{path}[{i}]"), dv, ov, out);
            }
        }
        (d, o) if crate::apply::contains(d, o) => {}
        (d, o) => out.push(FieldChange { path: path.to_string(), from: Some(o.clone()), to: Some(d.clone()) }),
    }
}

/// Every difference from `old` to `new` (both written whole by the host, as a status is): the
/// fields [`changed`] finds, plus fields of `old` that `new` drops.
pub fn both(new: &Value, old: &Value) -> Vec<FieldChange> {
    let mut out = changed(new, old);
    walk_dropped("", new, old, &mut out);
    out
}

fn walk_dropped(path: &str, new: &Value, old: &Value, out: &mut Vec<FieldChange>) {
    let (Value::Object(n), Value::Object(o)) = (new, old) else { return };
    for (key, ov) in o {
        let path = join(path, key);
        match n.get(key) {
            Some(nv) => walk_dropped(&path, nv, ov, out),
            None => out.push(FieldChange { path, from: Some(ov.clone()), to: None }),
        }
    }
}

/// Fields the field manager `manager` applied to `observed` (its `managedFields` entry of
/// operation `Apply`) that `desired` no longer sets: server-side apply removes them. Map fields
/// (`f:`) and list items by key (`k:`) are followed; sets of values (`v:`) and list items by
/// index are left to [`changed`].
pub fn removed(desired: &Value, observed: &Value, manager: &str) -> Vec<FieldChange> {
    let Some(fields) = observed["metadata"]["managedFields"].as_array().and_then(|entries| {
        entries.iter().find(|e| e["manager"] == manager && e["operation"] == "Apply").map(|e| &e["fieldsV1"])
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk_removed("", fields, desired, observed, &mut out);
    out
}

fn walk_removed(path: &str, fields: &Value, desired: &Value, observed: &Value, out: &mut Vec<FieldChange>) {
    let Some(fields) = fields.as_object() else { return };
    for (entry, nested) in fields {
        if let Some(key) = entry.strip_prefix("f:") {
            let path = join(path, key);
            match (desired.get(key), observed.get(key)) {
                (None, Some(ov)) => out.push(FieldChange { path, from: Some(ov.clone()), to: None }),
                (Some(dv), Some(ov)) => walk_removed(&path, nested, dv, ov, out),
                _ => {}
            }
        } else if let Some(key) =
            entry.strip_prefix("k:").and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
        {
            let path = format!(
                "{path}[{}]",
                key.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect::<Vec<_>>().join(",")
            );
            match (item(desired, &key), item(observed, &key)) {
                (None, Some(ov)) => out.push(FieldChange { path, from: Some(ov.clone()), to: None }),
                (Some(dv), Some(ov)) => walk_removed(&path, nested, dv, ov, out),
                _ => {}
            }
        }
    }
}

/// The element of the list `list` whose fields include every field of `key`.
fn item<'a>(list: &'a Value, key: &Map<String, Value>) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|element| key.iter().all(|(k, v)| element.get(k).is_some_and(|e| crate::apply::contains(v, e))))
}

fn scalar(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_names_each_differing_field_and_ignores_server_fields() {
        let desired = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "app", "image": "v2"}]}},
                             "metadata": {"labels": {"a": "1"}}});
        let observed = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "app", "image": "v1", "ports": []}]}},
                              "metadata": {"uid": "u", "labels": {"a": "1"}}, "status": {"x": 1}});
        let paths: Vec<(String, Option<Value>, Option<Value>)> =
            changed(&desired, &observed).into_iter().map(|c| (c.path, c.from, c.to)).collect();
        assert_eq!(
            paths,
            vec![
                ("spec.replicas".into(), Some(json!(2)), Some(json!(3))),
                ("spec.template.containers[0].image".into(), Some(json!("v1")), Some(json!("v2"))),
            ]
        );
        assert!(changed(&observed["metadata"], &observed["metadata"]).is_empty());
        let added = changed(&json!({"metadata": {"labels": {"x": "1"}}}), &json!({"metadata": {}}));
        assert_eq!(added, vec![FieldChange { path: "metadata.labels.x".into(), from: None, to: Some(json!("1")) }]);
    }

    #[test]
    fn both_sees_a_dropped_status_field() {
        let old = json!({"replicas": 2, "note": "x", "conditions": [{"type": "Ready", "status": "True"}]});
        let new = json!({"replicas": 3, "conditions": [{"type": "Ready", "status": "True"}]});
        let paths: Vec<String> = both(&new, &old).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, vec!["replicas", "note"]);
    }

    #[test]
    fn a_field_the_host_applied_and_no_longer_sets_is_removed() {
        let observed = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "managedFields": [
                {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:c": {}}}}},
                {"manager": "wasmop", "operation": "Apply", "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:args": {}}}}}}]},
            "spec": {"containers": [{"name": "app", "args": ["-v"]}]},
        });
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "app"}]}});
        let removed = removed(&desired, &observed, "wasmop");
        let paths: Vec<&str> = removed.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["metadata.labels.b", "spec.containers[name=app].args"]);
        assert_eq!(removed[0].from, Some(json!("2")));
        assert!(super::removed(&desired, &observed, "someone-else").is_empty());
    }
}
