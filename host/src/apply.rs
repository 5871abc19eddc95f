//! Applying desired children: the host's ownership marks, server-side apply that skips writes
//! when the cluster already matches, and pruning of children no longer desired.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};

/// Field manager of every write the host makes.
pub const FIELD_MANAGER: &str = "wasmop";
/// Label on every child: who manages it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label on every child: which plugin computed it.
pub const PLUGIN_LABEL: &str = "wasmop.dev/plugin";
/// Annotation on every child: the revision (content hash prefix) of the plugin that computed it.
pub const REVISION_ANNOTATION: &str = "wasmop.dev/plugin-revision";

/// The parent a child belongs to, as its ownerReference needs it.
#[derive(Clone, Debug)]
pub struct Owner {
    /// apiVersion of the parent.
    pub api_version: String,
    /// Kind of the parent.
    pub kind: String,
    /// Name of the parent.
    pub name: String,
    /// UID of the parent.
    pub uid: String,
}

/// Adds the host's marks to a desired child: the managed-by and plugin labels, the revision
/// annotation, and a controller ownerReference to the parent (with blockOwnerDeletion, so
/// foreground deletion of the parent waits for it). Any ownerReferences the plugin set are
/// replaced: the host decides ownership.
pub fn mark_child(child: &mut Value, owner: &Owner, plugin: &str, revision: &str) {
    let Some(metadata) = child.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = metadata.entry("labels").or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(MANAGED_BY_LABEL.into(), json!("wasmop"));
        labels.insert(PLUGIN_LABEL.into(), json!(plugin));
    }
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(REVISION_ANNOTATION.into(), json!(revision));
    }
    metadata.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": owner.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]),
    );
}

/// Whether everything `desired` says is already true of `observed`: every field of `desired`
/// is present in `observed` with an equal value (objects recursively; lists element by element
/// with equal length). Fields only in `observed` (defaults, status, server metadata) are ignored.
pub fn already_applied(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => {
            d.iter().all(|(k, dv)| o.get(k).is_some_and(|ov| already_applied(dv, ov)))
        }
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| already_applied(dv, ov))
        }
        (Value::Number(d), Value::Number(o)) => d == o || d.as_f64() == o.as_f64(),
        (d, o) => d == o,
    }
}

/// The API for objects of `ar` in `namespace` (or cluster-wide).
pub fn api_for(client: &Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Server-side applies one child (field manager `wasmop`, force).
pub async fn apply_child(client: &Client, ar: &ApiResource, child: &Value) -> Result<(), kube::Error> {
    let name = child["metadata"]["name"].as_str().unwrap_or_default();
    let api = api_for(client, ar, child["metadata"]["namespace"].as_str());
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(child)).await.map(drop)
}

/// Deletes a child that is no longer desired (background propagation, so its own dependents are
/// collected after it). A child already gone is not an error.
pub async fn prune_child(client: &Client, ar: &ApiResource, child: &DynamicObject) -> Result<(), kube::Error> {
    let name = child.meta().name.clone().unwrap_or_default();
    let api = api_for(client, ar, child.meta().namespace.as_deref());
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            api_version: "tools.wasmop.dev/v1beta1".into(),
            kind: "Appoperator".into(),
            name: "web".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn marks_labels_annotation_and_controller_owner() {
        let mut child = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web",
            "labels": {"app": "web"}, "ownerReferences": [{"uid": "forged"}]}});
        mark_child(&mut child, &owner(), "appoperator", "abc123");
        let meta = &child["metadata"];
        assert_eq!(meta["labels"]["app"], "web");
        assert_eq!(meta["labels"][MANAGED_BY_LABEL], "wasmop");
        assert_eq!(meta["labels"][PLUGIN_LABEL], "appoperator");
        assert_eq!(meta["annotations"][REVISION_ANNOTATION], "abc123");
        assert_eq!(meta["ownerReferences"].as_array().unwrap().len(), 1);
        assert_eq!(meta["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        assert_eq!(meta["ownerReferences"][0]["blockOwnerDeletion"], true);
    }

    #[test]
    fn already_applied_ignores_server_fields_but_not_drift() {
        let desired = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "app", "image": "a:1"}]}}});
        let observed = json!({"metadata": {"uid": "x"}, "status": {"ready": 1},
            "spec": {"replicas": 3, "strategy": {}, "template": {"containers": [{"name": "app", "image": "a:1", "imagePullPolicy": "IfNotPresent"}]}}});
        assert!(already_applied(&desired, &observed));
        let drifted = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "app", "image": "a:1"}]}}});
        assert!(!already_applied(&desired, &drifted));
        let extra_container = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "app", "image": "a:1"}, {"name": "b"}]}}});
        assert!(!already_applied(&desired, &extra_container));
    }
}
