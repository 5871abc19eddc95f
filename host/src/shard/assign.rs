//! Assigning parents to shards: the holder of a parent's shard sets its [`SHARD_LABEL`] once,
//! so the sharded watches (which select by it) see it. One light metadata-only watch of the
//! parents without a valid label finds them; a parent of a shard nobody holds waits for the
//! shard's next holder.

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::Shards;
use super::scope::SHARD_LABEL;
use crate::apply::{self, FIELD_MANAGER};

/// Labels the unassigned parents of kind `parent` (in `namespace`, or all) whose shard this
/// replica holds, as they appear, whenever a shard is gained and every [`SWEEP`], up to
/// [`AT_ONCE`] patches at a time. Runs until dropped; nothing when unsplit.
pub async fn run(client: Client, parent: ApiResource, namespace: Option<String>, shards: Shards) {
    let Some(unassigned) = shards.unassigned_selector() else { return };
    let api: Api<PartialObjectMeta<DynamicObject>> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &parent),
        None => Api::all_with(client.clone(), &parent),
    };
    let writer = reflector::store::Writer::new(parent.clone());
    let store = writer.as_reader();
    let events = watcher(api, watcher::Config::default().labels(&unassigned))
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .map(Some);
    // A shard gained, and every so often (a label patch that failed is tried again): the
    // cached unassigned parents of the held shards.
    let gained = futures::stream::select(shards.gained(), crate::ticks::every(SWEEP)).map(|()| None);
    let (client, parent, shards, store) = (&client, &parent, &shards, &store);
    futures::stream::select(events, gained)
        .for_each_concurrent(AT_ONCE, |wake| async move {
            match wake {
                Some(Ok(object)) => label_if_held(client, parent, shards, &object).await,
                Some(Err(e)) => tracing::warn!(kind = %parent.kind, error = %e, "cannot watch the unassigned parents"),
                None => label_held(client, parent, shards, store).await,
            }
        })
        .await;
}

/// The most label patches in flight at once (a burst of new parents is labelled in parallel).
pub const AT_ONCE: usize = 16;

/// How often the unassigned parents of held shards are labelled again, for those whose patch
/// failed (the watch holds only unassigned parents, so this costs nothing once all are labelled).
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(15);

/// Labels every cached unassigned parent whose shard is held (a shard was just gained, or the
/// sweep came round).
async fn label_held(
    client: &Client,
    parent: &ApiResource,
    shards: &Shards,
    store: &Store<PartialObjectMeta<DynamicObject>>,
) {
    futures::stream::iter(store.state())
        .for_each_concurrent(AT_ONCE, |object| async move { label_if_held(client, parent, shards, &object).await })
        .await;
}

/// Labels `object` with its shard if this replica holds that shard.
async fn label_if_held(
    client: &Client,
    parent: &ApiResource,
    shards: &Shards,
    object: &PartialObjectMeta<DynamicObject>,
) {
    let Some(uid) = object.uid() else { return };
    let Some(value) = shards.label_of(&uid) else { return };
    if shards.holds(&uid) {
        label(client, parent, object.namespace().as_deref(), &object.name_any(), &value).await;
    }
}

/// Sets the parent's [`SHARD_LABEL`] to `value` (a merge patch of that one label). A failure
/// is logged, naming the parent; the parent is tried again at the next [`SWEEP`].
pub async fn label(client: &Client, parent: &ApiResource, namespace: Option<&str>, name: &str, value: &str) {
    let api: Api<DynamicObject> = apply::api_for(client, parent, namespace);
    let patch = json!({"metadata": {"labels": {SHARD_LABEL: value}}});
    match api
        .patch(
            name,
            &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => tracing::debug!(kind = %parent.kind, namespace, name, shard = value, "parent assigned to its shard"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => tracing::warn!(kind = %parent.kind, namespace, name, error = %e,
            "cannot label the parent with its shard ({SHARD_LABEL}={value}); it is not reconciled until it is"),
    }
}
