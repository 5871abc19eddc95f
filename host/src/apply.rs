//! Applying desired children: the host's ownership marks, server-side apply that skips writes
//! when the cluster already matches, and pruning of children no longer desired.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Map, Value, json};

/// Field manager of every write the host makes.
pub const FIELD_MANAGER: &str = "wasmop";
/// Label on every child: who manages it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label on every child: which plugin computed it.
pub const PLUGIN_LABEL: &str = "wasmop.dev/plugin";
/// Annotation on every child: the revision (content hash prefix) of the plugin that computed it.
pub const REVISION_ANNOTATION: &str = "wasmop.dev/plugin-revision";

/// The parent a child belongs to, as its ownerReference and shard label need it.
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
    /// The parent's shard label value, which the child carries too, when sharded.
    pub shard: Option<String>,
}

/// Annotation on every child: a hash of the configuration the host last applied, so an
/// unchanged child is not written again and a changed one (even one that only lost a field) is.
pub const APPLIED_HASH_ANNOTATION: &str = "wasmop.dev/applied-hash";
/// Annotation by which the owner of an existing object opts in to its adoption by a parent
/// whose plugin desires an object of that name (`"true"`). Without it, the host never writes an
/// object it does not control.
pub const ADOPT_ANNOTATION: &str = "wasmop.dev/adopt";

/// Adds the host's marks to a desired child, after the plugin and every policy, so they always
/// win: the managed-by and plugin labels (and the parent's shard label when sharded), the
/// revision annotation, a controller ownerReference to the parent (with blockOwnerDeletion, so
/// foreground deletion of the parent waits for it), and last the applied-configuration hash. `labels` or `annotations` that are not objects
/// (`null`, a string) are replaced.
pub fn mark_child(child: &mut Value, owner: &Owner, plugin: &str, revision: &str) {
    let Some(metadata) = child.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    with_object(metadata, "labels", |labels| {
        labels.insert(MANAGED_BY_LABEL.into(), json!("wasmop"));
        labels.insert(PLUGIN_LABEL.into(), json!(plugin));
        if let Some(shard) = &owner.shard {
            labels.insert(crate::shard::scope::SHARD_LABEL.into(), json!(shard));
        }
    });
    with_object(metadata, "annotations", |annotations| {
        annotations.insert(REVISION_ANNOTATION.into(), json!(revision));
        annotations.remove(APPLIED_HASH_ANNOTATION);
    });
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
    let hash = crate::plugin::sha256_hex(child.to_string().as_bytes())[..16].to_string();
    if let Some(annotations) = child.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.insert(APPLIED_HASH_ANNOTATION.into(), json!(hash));
    }
}

/// Edits the object at `key` of `map` with `edit`, replacing whatever non-object is there.
fn with_object(map: &mut Map<String, Value>, key: &str, edit: impl FnOnce(&mut Map<String, Value>)) {
    let mut object = match map.remove(key) {
        Some(Value::Object(object)) => object,
        _ => Map::new(),
    };
    edit(&mut object);
    map.insert(key.to_string(), Value::Object(object));
}

/// Whether the marked `desired` child needs no write: `observed` carries the same
/// applied-configuration hash (so the plugin asked for exactly this last time, and a field it
/// dropped is not mistaken for "in sync") and every field of `desired` is still present in
/// `observed` with an equal value (so an edit by someone else is put back).
pub fn already_applied(desired: &Value, observed: &Value) -> bool {
    let hash = |v: &Value| {
        v.pointer(&format!("/metadata/annotations/{}", APPLIED_HASH_ANNOTATION.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    hash(desired).is_some() && hash(desired) == hash(observed) && contains(desired, observed)
}

/// Whether every field of `desired` is present in `observed` with an equal value (objects
/// recursively; lists element by element with equal length). Fields only in `observed`
/// (defaults, status, server metadata) are ignored.
pub fn contains(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| o.get(k).is_some_and(|ov| contains(dv, ov))),
        (Value::Array(d), Value::Array(o)) => d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| contains(dv, ov)),
        (Value::Number(d), Value::Number(o)) => d == o || d.as_f64() == o.as_f64(),
        (d, o) => d == o,
    }
}

/// Identity of a child: full apiVersion and kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildKey {
    /// `group/version` or `version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ChildKey {
    /// The key of a child as JSON (desired or observed).
    pub fn of(child: &Value) -> ChildKey {
        let s = |p: &str| child.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        ChildKey {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
        }
    }

    /// The key of a cached or listed object of the kind `resource`.
    pub fn of_object(resource: &ApiResource, object: &impl Resource) -> ChildKey {
        ChildKey {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
        }
    }
}

/// Why the host may not write an existing object that a parent's plugin desires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The object is controlled by this parent: the host's to write.
    Ours,
    /// The object has no controller and opted in with `wasmop.dev/adopt: "true"`.
    Adoptable,
    /// The object belongs to someone else; the message names its controller, if any.
    Conflict(String),
}

/// Whether the existing object `existing` may be written for the parent with `parent_uid`.
pub fn ownership(existing: &impl Resource, parent_uid: &str) -> Ownership {
    let controller = existing.owner_references().iter().find(|o| o.controller == Some(true));
    match controller {
        Some(o) if o.uid == parent_uid => Ownership::Ours,
        Some(o) => Ownership::Conflict(format!("controlled by {} {} (uid {})", o.kind, o.name, o.uid)),
        None if existing.annotations().get(ADOPT_ANNOTATION).map(String::as_str) == Some("true") => {
            Ownership::Adoptable
        }
        None => Ownership::Conflict(format!(
            "not created by wasmop and without a controller; annotate it {ADOPT_ANNOTATION}=\"true\" to let this parent adopt it"
        )),
    }
}

/// Whether the host may prune `child` for the parent with `parent_uid`: only an object it
/// created for that parent (controller ownerReference to it, and the host's managed-by label).
pub fn prunable(child: &impl Resource, parent_uid: &str) -> bool {
    ownership(child, parent_uid) == Ownership::Ours
        && child.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some("wasmop")
}

/// The object of `ar` named like the desired `child` (in its namespace), read from the API
/// server, and who may write it for the parent with `parent_uid`; `None` if it does not exist.
pub async fn existing(
    client: &Client,
    ar: &ApiResource,
    child: &Value,
    parent_uid: &str,
) -> Result<Option<(DynamicObject, Ownership)>, kube::Error> {
    let api = api_for(client, ar, child["metadata"]["namespace"].as_str());
    let existing = api.get_opt(child["metadata"]["name"].as_str().unwrap_or_default()).await?;
    Ok(existing.map(|object| {
        let ownership = ownership(&object, parent_uid);
        (object, ownership)
    }))
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
pub async fn prune_child(client: &Client, ar: &ApiResource, child: &impl Resource) -> Result<(), kube::Error> {
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
            shard: None,
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
    fn contains_ignores_server_fields_but_not_drift() {
        let desired = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "app", "image": "a:1"}]}}});
        let observed = json!({"metadata": {"uid": "x"}, "status": {"ready": 1},
            "spec": {"replicas": 3, "strategy": {}, "template": {"containers": [{"name": "app", "image": "a:1", "imagePullPolicy": "IfNotPresent"}]}}});
        assert!(contains(&desired, &observed));
        let drifted = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "app", "image": "a:1"}]}}});
        assert!(!contains(&desired, &drifted));
        let extra_container = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "app", "image": "a:1"}, {"name": "b"}]}}});
        assert!(!contains(&desired, &extra_container));
    }

    fn marked(data: Value) -> Value {
        let mut child = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
        mark_child(&mut child, &owner(), "p", "r1");
        child
    }

    #[test]
    fn a_dropped_field_is_not_already_applied() {
        let before = marked(json!({"a": "1", "b": "2"}));
        // What the cluster holds after the first apply (plus server fields).
        let mut observed = before.clone();
        observed["metadata"]["uid"] = json!("x");
        assert!(already_applied(&before, &observed));
        // The plugin stops setting "b": still a subset, but not what was applied.
        let after = marked(json!({"a": "1"}));
        assert!(contains(&after["data"], &observed["data"]));
        assert!(!already_applied(&after, &observed));
        // Drift by someone else is caught even with an equal hash.
        observed["data"]["a"] = json!("edited");
        assert!(!already_applied(&before, &observed));
    }

    #[test]
    fn marks_win_over_labels_of_any_shape() {
        for labels in [json!(null), json!("x"), json!([1])] {
            let mut child = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": labels, "annotations": null}});
            mark_child(&mut child, &owner(), "p", "r1");
            assert_eq!(child["metadata"]["labels"][MANAGED_BY_LABEL], "wasmop");
            assert_eq!(child["metadata"]["labels"][PLUGIN_LABEL], "p");
            assert_eq!(child["metadata"]["annotations"][REVISION_ANNOTATION], "r1");
        }
    }

    fn existing(owner: Option<&str>, adopt: bool) -> DynamicObject {
        let mut meta = json!({"name": "c", "namespace": "ns"});
        if let Some(uid) = owner {
            meta["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": uid, "controller": true}]);
        }
        if adopt {
            meta["annotations"] = json!({ADOPT_ANNOTATION: "true"});
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})).unwrap()
    }

    #[test]
    fn ownership_writes_only_what_this_parent_controls_or_may_adopt() {
        assert_eq!(ownership(&existing(Some("u-1"), false), "u-1"), Ownership::Ours);
        assert!(
            matches!(ownership(&existing(Some("other"), true), "u-1"), Ownership::Conflict(m) if m.contains("Thing t"))
        );
        assert!(
            matches!(ownership(&existing(None, false), "u-1"), Ownership::Conflict(m) if m.contains(ADOPT_ANNOTATION))
        );
        assert_eq!(ownership(&existing(None, true), "u-1"), Ownership::Adoptable);
        // Prune needs the host's label too.
        assert!(!prunable(&existing(Some("u-1"), false), "u-1"));
    }
}
