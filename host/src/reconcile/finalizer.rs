//! The host's finalizer on parents (`wasmop.dev/finalizer`), added and removed with JSON Patch
//! operations guarded by a `test` op, as kube-runtime's `finalizer()` does: a write that raced
//! with anyone else's change to the list fails (and is retried) instead of clobbering another
//! controller's finalizers. See `docs/architecture.md` ("Finalizers").

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::discovery::resolve;
use crate::events::Publisher;
use crate::plugin::OperatorPlugin;

/// The finalizer the host puts on parents of plugins that declare one.
pub const FINALIZER: &str = "wasmop.dev/finalizer";

/// The JSON Patch that adds [`FINALIZER`] to `parent`, failing if its finalizers changed.
pub fn add_patch(parent: &DynamicObject) -> Value {
    if parent.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": parent.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    }
}

/// The JSON Patch that removes [`FINALIZER`] from `parent` and nothing else, failing if the
/// entry moved; `None` if the parent does not carry it.
pub fn remove_patch(parent: &DynamicObject) -> Option<Value> {
    let index = parent.finalizers().iter().position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{index}");
    Some(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
}

/// Applies a JSON Patch to `parent` (a 404 — the parent is gone — is success).
pub async fn patch(api: &Api<DynamicObject>, parent: &DynamicObject, ops: Value) -> Result<(), kube::Error> {
    let ops: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    match api.patch(&parent.name_any(), &PatchParams::default(), &Patch::<()>::Json(ops)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the host's finalizer from every parent of `plugin`'s kind (in `namespace`, or all),
/// with a log line and a `FinalizerRemoved` Event on each saying `why`. Used when the plugin
/// that declared the finalizer stops serving the kind (its file removed, or replaced by a
/// version of another kind): without it, such a parent could never be deleted. Failures are
/// logged; the next reconcile by a plugin of the kind will see the finalizer again.
pub async fn release_all(
    client: &Client,
    events: &Publisher,
    plugin: &OperatorPlugin,
    namespace: Option<&str>,
    why: &str,
) {
    let kind = &plugin.metadata().parent;
    let ar = match resolve(client, kind).await {
        Ok((ar, _)) => ar,
        Err(e) => {
            tracing::warn!(kind = %kind, error = %e, "cannot release the finalizers of a kind that is not served");
            return;
        }
    };
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let parents = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::error!(kind = %kind, error = %e, "cannot list parents to release their finalizer");
            return;
        }
    };
    for parent in parents.iter().filter(|p| has_finalizer(p)) {
        let Some(ops) = remove_patch(parent) else { continue };
        let api: Api<DynamicObject> = match parent.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), &ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        if let Err(e) = patch(&api, parent, ops).await {
            tracing::error!(kind = %kind, object = %describe(parent), error = %e, "cannot release the finalizer");
            continue;
        }
        tracing::info!(kind = %kind, object = %describe(parent), why, "finalizer {FINALIZER} removed");
        let event = Event {
            type_: EventType::Normal,
            reason: "FinalizerRemoved".into(),
            note: Some(format!("finalizer {FINALIZER} removed: {why}")),
            action: "Finalize".into(),
            secondary: None,
        };
        if let Err(e) = events.publish(&event, &parent.object_ref(&ar)).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}

/// Whether `parent` carries the host's finalizer.
pub fn has_finalizer(parent: &DynamicObject) -> bool {
    parent.finalizers().iter().any(|f| f == FINALIZER)
}

/// `namespace/name` of a parent, for messages.
pub fn describe(parent: &impl kube::Resource) -> String {
    format!("{}/{}", parent.meta().namespace.as_deref().unwrap_or_default(), parent.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(finalizers: &[&str]) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "x/v1", "kind": "P",
            "metadata": {"name": "p", "finalizers": finalizers}}))
        .unwrap()
    }

    #[test]
    fn removal_touches_only_the_hosts_entry_and_tests_it() {
        let ops = remove_patch(&parent(&["other/keep", FINALIZER, "third/keep"])).unwrap();
        assert_eq!(ops[0], json!({"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER}));
        assert_eq!(ops[1], json!({"op": "remove", "path": "/metadata/finalizers/1"}));
        assert!(remove_patch(&parent(&["other/keep"])).is_none());
    }

    #[test]
    fn adding_tests_the_current_list() {
        let ops = add_patch(&parent(&["other/keep"]));
        assert_eq!(ops[0]["value"], json!(["other/keep"]));
        assert_eq!(ops[1]["path"], "/metadata/finalizers/-");
    }
}
