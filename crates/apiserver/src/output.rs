//! Response shapes chosen by the `Accept` header: plain objects, `PartialObjectMetadata[List]`
//! (metadata-only, used by kube-runtime's `owns()` and `metadata_watcher`) and `Table` (kubectl).

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The objects themselves.
    Full,
    /// `meta.k8s.io/v1` `PartialObjectMetadata`.
    Metadata,
    /// `meta.k8s.io/v1` `Table`.
    Table,
}

/// Picks the first representation in `Accept` that the server supports.
pub fn negotiate(accept: &str) -> Shape {
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=PartialObjectMetadata") && (p.contains("g=meta.k8s.io") || !p.contains("g=")) {
            return Shape::Metadata;
        }
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") && p.contains("v=v1;") | p.ends_with("v=v1") {
            return Shape::Table;
        }
        if p.contains("as=") {
            continue;
        }
        if p.starts_with("application/json") || p.starts_with("*/*") || p.starts_with("application/*") {
            return Shape::Full;
        }
    }
    Shape::Full
}

/// `PartialObjectMetadata` of an object.
pub fn partial(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A built-in kind's object as a list item, in JSON: without `apiVersion` and `kind`, as
/// kube-apiserver lists them (only the list names its kind; custom resources' items keep theirs).
/// A client that takes a cached object's kind from the object itself breaks on a real server.
pub fn list_item(obj: &Value) -> String {
    let Value::Object(fields) = obj else { return obj.to_string() };
    let mut out = String::with_capacity(512);
    out.push('{');
    for (key, value) in fields.iter().filter(|(key, _)| *key != "apiVersion" && *key != "kind") {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

fn age(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn jsonpath(obj: &Value, path: &str) -> Value {
    let p = path.trim_start_matches('.');
    let mut cur = obj;
    for seg in p.split('.') {
        let (field, idx) = match seg.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        cur = match cur.get(field) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(i) = idx {
            cur = match cur.get(i) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    cur.clone()
}

type Cell = fn(&Value) -> Value;

fn int(obj: &Value, p: &str) -> i64 {
    obj.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn count(obj: &Value, p: &str) -> i64 {
    obj.pointer(p).and_then(Value::as_object).map_or(0, |m| m.len() as i64)
}

fn text(obj: &Value, p: &str) -> Value {
    obj.pointer(p).cloned().unwrap_or(json!("<none>"))
}

/// Server-side printer columns of built-in kinds (name, type, cell), as kubectl shows them.
fn builtin_columns(info: &ResourceInfo) -> Vec<(&'static str, &'static str, Cell)> {
    if info.custom {
        return Vec::new();
    }
    match info.kind.as_str() {
        "Deployment" => vec![
            ("Ready", "string", |o| json!(format!("{}/{}", int(o, "/status/readyReplicas"), int(o, "/spec/replicas")))),
            ("Up-to-date", "integer", |o| json!(int(o, "/status/updatedReplicas"))),
            ("Available", "integer", |o| json!(int(o, "/status/availableReplicas"))),
        ],
        "StatefulSet" => vec![("Ready", "string", |o| {
            json!(format!("{}/{}", int(o, "/status/readyReplicas"), int(o, "/spec/replicas")))
        })],
        "ReplicaSet" => vec![
            ("Desired", "integer", |o| json!(int(o, "/spec/replicas"))),
            ("Current", "integer", |o| json!(int(o, "/status/replicas"))),
            ("Ready", "integer", |o| json!(int(o, "/status/readyReplicas"))),
        ],
        "DaemonSet" => vec![
            ("Desired", "integer", |o| json!(int(o, "/status/desiredNumberScheduled"))),
            ("Current", "integer", |o| json!(int(o, "/status/currentNumberScheduled"))),
            ("Ready", "integer", |o| json!(int(o, "/status/numberReady"))),
        ],
        "Job" => vec![("Completions", "string", |o| {
            json!(format!(
                "{}/{}",
                int(o, "/status/succeeded"),
                o.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1)
            ))
        })],
        "Namespace" => vec![("Status", "string", |o| text(o, "/status/phase"))],
        "ConfigMap" => vec![("Data", "integer", |o| json!(count(o, "/data") + count(o, "/binaryData")))],
        "Secret" => vec![("Type", "string", |o| text(o, "/type")), ("Data", "integer", |o| json!(count(o, "/data")))],
        "Service" => vec![
            ("Type", "string", |o| text(o, "/spec/type")),
            ("Cluster-IP", "string", |o| text(o, "/spec/clusterIP")),
        ],
        "Pod" => vec![("Status", "string", |o| text(o, "/status/phase"))],
        _ => Vec::new(),
    }
}

fn is_crd(info: &ResourceInfo) -> bool {
    !info.custom && info.kind == "CustomResourceDefinition"
}

fn is_core_event(info: &ResourceInfo) -> bool {
    !info.custom && info.group.is_empty() && info.kind == "Event"
}

fn event_last_seen(o: &Value) -> Value {
    let ts = ["/lastTimestamp", "/eventTime", "/series/lastObservedTime", "/metadata/creationTimestamp"]
        .iter()
        .find_map(|p| o.pointer(p).and_then(Value::as_str));
    json!(age(ts))
}

fn event_object(o: &Value) -> Value {
    let kind = o.pointer("/involvedObject/kind").and_then(Value::as_str).unwrap_or("").to_lowercase();
    let name = o.pointer("/involvedObject/name").and_then(Value::as_str).unwrap_or("");
    json!(format!("{kind}/{name}"))
}

fn columns(info: &ResourceInfo) -> Vec<Value> {
    if is_crd(info) {
        return vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
            json!({"name": "Created At", "type": "date", "format": "", "description": "", "priority": 0}),
        ];
    }
    if is_core_event(info) {
        let col = |n: &str, p: u8| json!({"name": n, "type": "string", "format": if n == "Name" { "name" } else { "" }, "description": "", "priority": p});
        return vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Message", 0),
            col("Name", 1),
        ];
    }
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for (name, ty, _) in builtin_columns(info) {
        cols.push(json!({"name": name, "type": ty, "format": "", "description": "", "priority": 0}));
    }
    let mut has_age = false;
    for (name, ty, _) in &info.printer_columns {
        if name == "Age" {
            has_age = true;
        }
        cols.push(json!({"name": name, "type": if ty == "date" { "string" } else { ty.as_str() }, "format": "", "description": "", "priority": 0}));
    }
    if !has_age {
        cols.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    }
    cols
}

fn row(info: &ResourceInfo, obj: &Value) -> Value {
    if is_crd(info) {
        let cells = vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(json!("")),
        ];
        return json!({"cells": cells, "object": partial(obj)});
    }
    if is_core_event(info) {
        let cells = vec![
            event_last_seen(obj),
            text(obj, "/type"),
            text(obj, "/reason"),
            event_object(obj),
            text(obj, "/message"),
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
        ];
        return json!({"cells": cells, "object": partial(obj)});
    }
    let created = obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str);
    let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
    for (_, _, cell) in builtin_columns(info) {
        cells.push(cell(obj));
    }
    let mut has_age = false;
    for (name, ty, path) in &info.printer_columns {
        if name == "Age" {
            has_age = true;
        }
        let v = jsonpath(obj, path);
        cells.push(if ty == "date" {
            json!(age(v.as_str()))
        } else if v.is_null() {
            json!("<none>")
        } else {
            v
        });
    }
    if !has_age {
        cells.push(json!(age(created)));
    }
    json!({"cells": cells, "object": partial(obj)})
}

/// A `Table` of objects.
pub fn table(info: &ResourceInfo, objs: &[Value], rv: &str, cont: Option<&str>, headers: bool) -> Value {
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md,
        "columnDefinitions": if headers { Value::Array(columns(info)) } else { Value::Array(vec![]) },
        "rows": objs.iter().map(|o| row(info, o)).collect::<Vec<_>>(),
    })
}

/// Renders one object in the negotiated shape.
pub fn shape_object(info: &ResourceInfo, shape: Shape, obj: &Value, headers: bool) -> Value {
    match shape {
        Shape::Full => obj.clone(),
        Shape::Metadata => partial(obj),
        Shape::Table => {
            let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
            table(info, std::slice::from_ref(obj), rv, None, headers)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_item_of_a_built_in_kind_has_no_types() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a\"b"}, "spec": {}});
        let item: Value = serde_json::from_str(&list_item(&obj)).unwrap();
        assert_eq!(item, json!({"metadata": {"name": "a\"b"}, "spec": {}}));
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(negotiate("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"), Shape::Metadata);
        assert_eq!(
            negotiate(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            ),
            Shape::Table
        );
        assert_eq!(negotiate("application/json"), Shape::Full);
        assert_eq!(negotiate(""), Shape::Full);
    }
}
