//! Validation of built-in kinds: the checks controllers most often trip over on a real
//! cluster (label syntax, workload selectors and containers, service ports, namespace names),
//! reported as 422 `Invalid` with one cause per field, in the real server's words.

use serde_json::{Map, Value};

use crate::error::Cause;
use crate::resources::ResourceInfo;

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty() || valid_name_part(v)
}

fn valid_qualified_name(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && crate::meta::validate_name(prefix).is_none()
                && valid_name_part(name)
        }
        None => valid_name_part(k),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn labels(map: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(m) = map.and_then(Value::as_object) else { return };
    for (k, v) in m {
        if !valid_qualified_name(k) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
            ));
        }
        let value = v.as_str().unwrap_or("");
        if !valid_label_value(value) {
            causes.push(Cause::new("FieldValueInvalid", path, format!("Invalid value: {value:?}: {LABEL_VALUE_MSG}")));
        }
    }
}

fn required(obj: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) -> bool {
    let present = obj.pointer(pointer).is_some_and(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => true,
    });
    if !present {
        causes.push(Cause::new("FieldValueRequired", field, "Required value"));
    }
    present
}

fn pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let empty = Value::Object(Map::new());
    let spec = spec.unwrap_or(&empty);
    if !required(spec, "/containers", &format!("{path}.containers"), causes) {
        return;
    }
    for (i, c) in spec.get("containers").and_then(Value::as_array).into_iter().flatten().enumerate() {
        required(c, "/name", &format!("{path}.containers[{i}].name"), causes);
        required(c, "/image", &format!("{path}.containers[{i}].image"), causes);
    }
}

fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let ml_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let me_ok = selector.get("matchExpressions").and_then(Value::as_array).is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&Value> =
                e.get("values").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
            let actual = labels.get(key);
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => actual.is_some_and(|a| values.contains(&a)),
                "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                _ => false,
            }
        })
    });
    ml_ok && me_ok
}

fn workload(obj: &Value, template_ptr: &str, template_path: &str, causes: &mut Vec<Cause>) {
    let has_selector = required(obj, "/spec/selector", "spec.selector", causes);
    let template = obj.pointer(template_ptr);
    let tlabels =
        template.and_then(|t| t.pointer("/metadata/labels")).and_then(Value::as_object).cloned().unwrap_or_default();
    if has_selector
        && let Some(sel) = obj.pointer("/spec/selector")
        && !selector_matches(sel, &tlabels)
    {
        let shown: Vec<String> = tlabels.iter().map(|(k, v)| format!("{k:?}:{}", show(v))).collect();
        causes.push(Cause::new(
            "FieldValueInvalid",
            format!("{template_path}.metadata.labels"),
            format!(
                "Invalid value: map[string]string{{{}}}: `selector` does not match template `labels`",
                shown.join(", ")
            ),
        ));
    }
    labels(template.and_then(|t| t.pointer("/metadata/labels")), &format!("{template_path}.metadata.labels"), causes);
    pod_spec(template.and_then(|t| t.get("spec")), &format!("{template_path}.spec"), causes);
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.replicas",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
}

/// At most one ownerReference may be the controller (every kind, as the real server checks).
fn owner_references(obj: &Value, causes: &mut Vec<Cause>) {
    let controllers: Vec<String> = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or(""), o["name"].as_str().unwrap_or("")))
        .collect();
    if controllers.len() > 1 {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.ownerReferences",
            format!(
                "Invalid value: only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

/// Validates an object; returns one cause per invalid field. Custom resources get only the
/// checks every kind gets (their schema is validated elsewhere).
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    owner_references(obj, &mut causes);
    if info.custom {
        return causes;
    }
    labels(obj.pointer("/metadata/labels"), "metadata.labels", &mut causes);
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Namespace") => {
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            if name.contains('.') {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.name",
                    format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
                ));
            }
        }
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for k in obj.get(field).and_then(Value::as_object).into_iter().flat_map(Map::keys) {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            format!("{field}[{k}]"),
                            format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
                        ));
                    }
                }
            }
        }
        ("", "Service") => {
            let external = obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
            if !external && ports.is_none_or(|p| p.is_empty()) {
                causes.push(Cause::new("FieldValueRequired", "spec.ports", "Required value"));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                match p.get("port").and_then(Value::as_i64) {
                    Some(n) if (1..=65535).contains(&n) => {}
                    Some(n) => causes.push(Cause::new(
                        "FieldValueInvalid",
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    )),
                    None => {
                        causes.push(Cause::new("FieldValueRequired", format!("spec.ports[{i}].port"), "Required value"))
                    }
                }
            }
        }
        ("", "Pod") => pod_spec(obj.get("spec"), "spec", &mut causes),
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet") => {
            workload(obj, "/spec/template", "spec.template", &mut causes)
        }
        ("batch", "Job") => pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes),
        ("batch", "CronJob") => {
            required(obj, "/spec/schedule", "spec.schedule", &mut causes);
            pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &mut causes,
            );
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    fn fields(group: &str, plural: &str, obj: Value) -> Vec<String> {
        let info = Registry::builtin().get(group, "v1", plural).unwrap();
        validate(&info, &obj).into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn two_controller_owner_references_are_refused() {
        let owner =
            |name: &str| json!({"apiVersion": "v1", "kind": "Thing", "name": name, "uid": name, "controller": true});
        let cm = json!({"metadata": {"name": "c", "ownerReferences": [owner("a"), owner("b")]}});
        assert_eq!(fields("", "configmaps", cm), ["metadata.ownerReferences"]);
        let one = json!({"metadata": {"name": "c", "ownerReferences": [owner("a")]}});
        assert!(fields("", "configmaps", one).is_empty());
    }

    #[test]
    fn deployment_selector_and_containers() {
        let ok = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(fields("apps", "deployments", ok).is_empty());
        let bad = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c"}]}}}});
        assert_eq!(
            fields("apps", "deployments", bad),
            vec!["spec.template.metadata.labels", "spec.template.spec.containers[0].image"]
        );
        let none = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {}}}});
        assert_eq!(fields("apps", "deployments", none), vec!["spec.selector", "spec.template.spec.containers"]);
    }

    #[test]
    fn labels_keys_ports_and_namespace_names() {
        assert_eq!(
            fields("", "configmaps", json!({"metadata": {"labels": {"a": "has space"}}})),
            vec!["metadata.labels"]
        );
        assert_eq!(fields("", "configmaps", json!({"data": {"bad key": "x", "good.key": "y"}})), vec!["data[bad key]"]);
        assert_eq!(fields("", "services", json!({"spec": {"ports": [{"port": 70000}]}})), vec!["spec.ports[0].port"]);
        assert_eq!(fields("", "namespaces", json!({"metadata": {"name": "a.b"}})), vec!["metadata.name"]);
        assert!(
            fields("", "configmaps", json!({"metadata": {"labels": {"app.kubernetes.io/name": "x", "e": ""}}}))
                .is_empty()
        );
    }
}
