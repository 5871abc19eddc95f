//! The host's checks on a plugin's answer. The plugin is untrusted: whatever it returns, only
//! objects of kinds it declared, in the parent's namespace, with sane names, reach the cluster.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use super::contract::{Condition, Desired, Gvk, OperatorMetadata};
use super::error::PluginError;
use super::limits::Limits;
use crate::names;

/// Largest object the API server stores (etcd's request limit): a bigger child cannot be applied.
pub const MAX_OBJECT_BYTES: usize = 3 << 19;

/// Largest status a plugin may return: the parent's spec and metadata need room beside it.
const MAX_STATUS_BYTES: usize = 1 << 20;

/// Status fields the host writes itself; a plugin must not set them.
const HOST_STATUS_FIELDS: [&str; 2] = ["conditions", "observedGeneration"];

/// Checks a raw answer against the plugin's metadata and limits and turns it into [`Desired`].
pub(crate) fn check_response(
    meta: &OperatorMetadata,
    parent: &Value,
    resp: wit::Response,
    limits: &Limits,
) -> Result<Desired, PluginError> {
    let size = response_size(&resp);
    // Shown on the reconcile's `plugin call` span, when the caller opened one.
    tracing::Span::current().record("output_bytes", size);
    if size > limits.output_bytes {
        return Err(PluginError::OutputTooLarge { plugin: meta.name.clone(), size, limit: limits.output_bytes });
    }
    if resp.children.len() > limits.max_children {
        return Err(PluginError::TooManyChildren {
            plugin: meta.name.clone(),
            count: resp.children.len(),
            limit: limits.max_children,
        });
    }
    let parent_namespace = parent["metadata"]["namespace"].as_str();
    let children = resp
        .children
        .iter()
        .enumerate()
        .map(|(i, raw)| check_child(meta, parent_namespace, i, raw))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_children(meta, &children)?;
    let status = resp.status.as_deref().map(|raw| check_status(meta, raw)).transpose()?;
    let conditions = check_conditions(meta, resp.conditions.into_iter().map(Condition::from).collect())?;
    Ok(Desired {
        children,
        status,
        conditions,
        requeue_after: resp.requeue_after_seconds.map(|s| Duration::from_secs(u64::from(s))),
        finalized: resp.finalized,
    })
}

/// Names an object for messages: `Kind namespace/name (apiVersion)`.
pub(crate) fn describe(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    let name = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    format!("{} {name} ({})", obj["kind"].as_str().unwrap_or("?"), obj["apiVersion"].as_str().unwrap_or("?"))
}

/// Metadata fields a conversion may change; the API server refuses a conversion that changes
/// any other.
const CONVERTIBLE_METADATA: [&str; 2] = ["labels", "annotations"];

/// Checks a converted object: valid JSON within the output limit, the asked apiVersion, the same
/// kind, and metadata unchanged but for labels and annotations.
pub(crate) fn check_conversion(
    meta: &OperatorMetadata,
    original: &Value,
    raw: &str,
    to_version: &str,
    limits: &Limits,
) -> Result<Value, PluginError> {
    let bad = |reason: String| invalid(meta, format!("conversion of {}", describe(original)), reason);
    if raw.len() > limits.output_bytes {
        return Err(PluginError::OutputTooLarge {
            plugin: meta.name.clone(),
            size: raw.len(),
            limit: limits.output_bytes,
        });
    }
    let converted: Value = serde_json::from_str(raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let want = Gvk::new(&meta.parent.group, to_version, &meta.parent.kind);
    if !want.matches(&converted) {
        return Err(bad(format!(
            "it is {} {}, expected {} {}",
            converted["apiVersion"].as_str().unwrap_or("?"),
            converted["kind"].as_str().unwrap_or("?"),
            want.api_version(),
            want.kind
        )));
    }
    let strip = |obj: &Value| {
        let mut m = obj["metadata"].as_object().cloned().unwrap_or_default();
        CONVERTIBLE_METADATA.iter().for_each(|k| drop(m.remove(*k)));
        m
    };
    if strip(&converted) != strip(original) {
        return Err(bad("it changed metadata other than labels and annotations".into()));
    }
    Ok(converted)
}

fn response_size(resp: &wit::Response) -> usize {
    let children: usize = resp.children.iter().map(String::len).sum();
    let conditions: usize = resp.conditions.iter().map(|c| c.type_.len() + c.reason.len() + c.message.len()).sum();
    children + resp.status.as_ref().map_or(0, String::len) + conditions
}

fn invalid(meta: &OperatorMetadata, object: String, reason: impl Into<String>) -> PluginError {
    PluginError::InvalidOutput { plugin: meta.name.clone(), object, reason: reason.into() }
}

fn check_child(
    meta: &OperatorMetadata,
    parent_ns: Option<&str>,
    index: usize,
    raw: &str,
) -> Result<Value, PluginError> {
    let label = format!("child {index}");
    if raw.len() > MAX_OBJECT_BYTES {
        return Err(invalid(
            meta,
            label,
            format!(
                "it is {} bytes; the API server stores objects up to {MAX_OBJECT_BYTES} bytes (1.5 MiB)",
                raw.len()
            ),
        ));
    }
    let mut child: Value =
        serde_json::from_str(raw).map_err(|e| invalid(meta, label.clone(), format!("not valid JSON: {e}")))?;
    let Some(obj) = child.as_object() else {
        return Err(invalid(meta, label, "not a JSON object"));
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
    let kind = obj.get("kind").and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(invalid(meta, label, "apiVersion and kind are required"));
    };
    let gvk = Gvk::from_api_version(api_version, kind);
    let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    let label = format!("child {index} ({gvk} {name:?})");
    if !names::is_dns_subdomain(name) {
        return Err(invalid(
            meta,
            label,
            "metadata.name must be a lowercase DNS subdomain (a-z, 0-9, '-', '.'; at most 253 characters)",
        ));
    }
    let Some(kind_decl) = meta.child_kind(&gvk) else {
        let declared: Vec<String> = meta.children.iter().map(|c| c.gvk.to_string()).collect();
        return Err(invalid(
            meta,
            label,
            format!(
                "kind {gvk} is not among the declared children [{}]; declare it in metadata()",
                declared.join(", ")
            ),
        ));
    };
    // The host's caches and applies key children by the exact apiVersion: "/v1" or "apps/v1/"
    // parse as a declared kind but match no cache.
    if !kind_decl.gvk.matches(&child) {
        return Err(invalid(
            meta,
            label,
            format!("apiVersion {api_version:?} is not spelled as declared: write {:?}", kind_decl.gvk.api_version()),
        ));
    }
    for field in ["ownerReferences", "finalizers"] {
        if obj.get("metadata").and_then(|m| m.get(field)).is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                meta,
                label,
                format!(
                    "metadata.{field} is the host's alone (it owns children by their parent and deletes them with it); drop it"
                ),
            ));
        }
    }
    let child_ns = obj.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
    let placed_ns = match (kind_decl.cluster_scoped, child_ns, parent_ns) {
        (true, Some(ns), _) => {
            return Err(invalid(meta, label, format!("{gvk} is cluster-scoped but names namespace {ns:?}")));
        }
        (true, None, _) => None,
        (false, Some(c), Some(p)) if c != p => {
            return Err(invalid(
                meta,
                label,
                format!("namespace {c:?} is not the parent's namespace {p:?}; children live beside their parent"),
            ));
        }
        (false, _, Some(p)) => Some(p.to_string()),
        (false, Some(c), None) => Some(c.to_string()),
        (false, None, None) => {
            return Err(invalid(
                meta,
                label,
                "the parent is cluster-scoped, so a namespaced child must name its namespace",
            ));
        }
    };
    if let (Some(ns), Some(metadata)) = (placed_ns, child.get_mut("metadata").and_then(Value::as_object_mut)) {
        metadata.insert("namespace".into(), Value::String(ns));
    }
    Ok(child)
}

fn check_unique_children(meta: &OperatorMetadata, children: &[Value]) -> Result<(), PluginError> {
    let mut seen = HashSet::new();
    for child in children {
        let key = (
            child["apiVersion"].as_str(),
            child["kind"].as_str(),
            child["metadata"]["namespace"].as_str(),
            child["metadata"]["name"].as_str(),
        );
        if !seen.insert(key) {
            return Err(invalid(
                meta,
                format!("child {} {:?}", key.1.unwrap_or(""), key.3.unwrap_or("")),
                "returned twice; each child must be unique by kind, namespace and name",
            ));
        }
    }
    Ok(())
}

fn check_status(meta: &OperatorMetadata, raw: &str) -> Result<Map<String, Value>, PluginError> {
    if raw.len() > MAX_STATUS_BYTES {
        return Err(invalid(
            meta,
            "status".into(),
            format!(
                "it is {} bytes; at most {MAX_STATUS_BYTES} (1 MiB), so the parent fits the API server's 1.5 MiB",
                raw.len()
            ),
        ));
    }
    let value: Value =
        serde_json::from_str(raw).map_err(|e| invalid(meta, "status".into(), format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(invalid(meta, "status".into(), "must be a JSON object of status fields"));
    };
    if let Some(field) = HOST_STATUS_FIELDS.iter().find(|f| map.contains_key(**f)) {
        return Err(invalid(
            meta,
            "status".into(),
            format!("status.{field} is written by the host; return conditions in the response's conditions list"),
        ));
    }
    Ok(map)
}

fn check_conditions(meta: &OperatorMetadata, conditions: Vec<Condition>) -> Result<Vec<Condition>, PluginError> {
    wasmop_contract::check_conditions(&conditions)
        .map_err(|(type_, reason)| invalid(meta, format!("condition {type_:?}"), reason))?;
    Ok(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::contract::ChildKind;
    use serde_json::json;

    fn meta() -> OperatorMetadata {
        OperatorMetadata {
            name: "demo".into(),
            version: "1".into(),
            parent: Gvk::new("example.com", "v1", "Thing"),
            children: vec![
                ChildKind { gvk: Gvk::new("", "v1", "ConfigMap"), cluster_scoped: false },
                ChildKind { gvk: Gvk::new("rbac.authorization.k8s.io", "v1", "ClusterRole"), cluster_scoped: true },
            ],
            crd: None,
            finalizer: false,
            reads: vec![],
        }
    }

    fn response(children: Vec<Value>) -> wit::Response {
        wit::Response {
            children: children.iter().map(Value::to_string).collect(),
            status: None,
            conditions: vec![],
            requeue_after_seconds: None,
            finalized: false,
        }
    }

    fn parent() -> Value {
        json!({"metadata": {"name": "p", "namespace": "team-a"}})
    }

    #[test]
    fn namespaced_child_is_placed_beside_parent() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let d = check_response(&meta(), &parent(), response(vec![cm]), &Limits::default()).unwrap();
        assert_eq!(d.children[0]["metadata"]["namespace"], "team-a");
    }

    #[test]
    fn other_namespace_is_refused() {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "kube-system"}});
        let err = check_response(&meta(), &parent(), response(vec![cm]), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("not the parent's namespace"), "{err}");
    }

    #[test]
    fn owner_references_and_finalizers_on_children_are_refused() {
        for field in ["ownerReferences", "finalizers"] {
            let value = if field == "finalizers" { json!(["x/y"]) } else { json!([{"uid": "forged"}]) };
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", field: value}});
            let err = check_response(&meta(), &parent(), response(vec![cm]), &Limits::default()).unwrap_err();
            assert!(err.to_string().contains(&format!("metadata.{field} is the host's alone")), "{err}");
        }
    }

    #[test]
    fn undeclared_kind_is_refused_naming_plugin_and_object() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let err = check_response(&meta(), &parent(), response(vec![secret]), &Limits::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("plugin demo") && msg.contains("v1 Secret") && msg.contains("not among the declared"),
            "{msg}"
        );
    }

    #[test]
    fn declared_cluster_scoped_child_has_no_namespace() {
        let role =
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}});
        let d = check_response(&meta(), &parent(), response(vec![role]), &Limits::default()).unwrap();
        assert!(d.children[0]["metadata"].get("namespace").is_none());
    }

    #[test]
    fn missing_name_and_duplicates_are_refused() {
        let nameless = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        assert!(check_response(&meta(), &parent(), response(vec![nameless]), &Limits::default()).is_err());
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let err = check_response(&meta(), &parent(), response(vec![cm.clone(), cm]), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("returned twice"), "{err}");
    }

    #[test]
    fn host_managed_status_fields_and_bad_reasons_are_refused() {
        let mut resp = response(vec![]);
        resp.status = Some(json!({"observedGeneration": 3}).to_string());
        assert!(check_response(&meta(), &parent(), resp, &Limits::default()).is_err());
        let mut resp = response(vec![]);
        resp.conditions.push(crate::plugin::bindings::operator::wasmop::plugin::types::Condition {
            type_: "Ready".into(),
            status: crate::plugin::bindings::operator::wasmop::plugin::types::ConditionStatus::True,
            reason: "all good".into(),
            message: String::new(),
        });
        let err = check_response(&meta(), &parent(), resp, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("CamelCase"), "{err}");
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "y".repeat(100)}});
        let limits = Limits { output_bytes: 64, ..Limits::default() };
        let err = check_response(&meta(), &parent(), response(vec![cm]), &limits).unwrap_err();
        assert!(matches!(err, PluginError::OutputTooLarge { .. }), "{err}");
    }
}
