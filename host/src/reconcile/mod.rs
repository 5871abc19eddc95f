//! The reconcile pipeline of one parent: observe → compute → review → apply → prune → report.
//! See DESIGN.md section 4.

mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};

pub use error::{BACKOFF_CAP, ReconcileError, backoff};

use crate::apply::{self, Owner};
use crate::plugin::{
    Condition, ConditionStatus, Desired, OperatorMetadata, OperatorPlugin, PluginError, ReconcileRequest,
};
use crate::policy::{PolicyChain, ReviewError, describe};
use crate::status::{self, Report};

/// The finalizer the host puts on parents of plugins that declare one.
pub const FINALIZER: &str = "wasmop.dev/finalizer";
/// How soon to ask a finalizing plugin again when it has not finished and gave no hint.
const FINALIZE_RETRY: Duration = Duration::from_secs(5);

/// The logic that computes a parent's desired state: a WebAssembly plugin in production, the
/// native build of the same logic in benchmarks.
pub trait Reconciler: Send + Sync + 'static {
    /// What the logic declares (parent and child kinds, finalizer, CRD).
    fn metadata(&self) -> &OperatorMetadata;
    /// Revision recorded on every child it computes.
    fn revision(&self) -> &str;
    /// Computes the checked desired state of one parent.
    fn reconcile(&self, req: &ReconcileRequest) -> Result<Desired, PluginError>;
}

impl Reconciler for OperatorPlugin {
    fn metadata(&self) -> &OperatorMetadata {
        OperatorPlugin::metadata(self)
    }
    fn revision(&self) -> &str {
        self.file().revision()
    }
    fn reconcile(&self, req: &ReconcileRequest) -> Result<Desired, PluginError> {
        OperatorPlugin::reconcile(self, req)
    }
}

/// A child kind the plugin declared, with the cache of its objects.
pub struct ChildKindCache {
    /// How to reach objects of the kind.
    pub resource: ApiResource,
    /// Children of this kind carrying the plugin's labels, kept current by a watch.
    pub store: Store<DynamicObject>,
}

/// Counters of what the pipeline did, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciles started.
    pub reconciles: AtomicU64,
    /// Plugin calls made.
    pub plugin_calls: AtomicU64,
    /// Children written with server-side apply.
    pub applies: AtomicU64,
    /// Children deleted because no longer desired.
    pub prunes: AtomicU64,
    /// Status writes.
    pub status_writes: AtomicU64,
    /// Reconciles that failed.
    pub failures: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Everything a reconcile of one plugin's parents needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator plugin (or native logic).
    pub plugin: Arc<dyn Reconciler>,
    /// Policies reviewing its children.
    pub policies: PolicyChain,
    /// Settings passed to the plugin.
    pub settings: Option<String>,
    /// The parent kind.
    pub parent: ApiResource,
    /// The declared child kinds with their caches.
    pub children: Vec<ChildKindCache>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Consecutive failures per parent, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Generation of each parent whose spec this plugin version called invalid: not retried
    /// until the generation changes (or the plugin is reloaded, which makes a new context).
    pub invalid: Mutex<HashMap<String, i64>>,
}

fn key(parent: &DynamicObject) -> String {
    format!("{}/{}", parent.namespace().unwrap_or_default(), parent.name_any())
}

/// Reconciles one parent. Errors are reported on the parent's status before they are returned,
/// so `kubectl get` shows them; the error policy then decides when to retry.
pub async fn reconcile(parent: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = info_span!(
        "reconcile",
        plugin = %ctx.plugin.metadata().name,
        object = %key(&parent),
        generation = parent.meta().generation.unwrap_or_default(),
    );
    Stats::bump(&ctx.stats.reconciles);
    let result = reconcile_inner(&parent, &ctx).instrument(span.clone()).await;
    let _entered = span.enter();
    match &result {
        Ok(_) => {
            if let Ok(mut failures) = ctx.failures.lock() {
                failures.remove(&key(&parent));
            }
        }
        Err(e) => {
            Stats::bump(&ctx.stats.failures);
            tracing::warn!(error = %e, "reconcile failed");
        }
    }
    result
}

/// Decides when to retry a failed reconcile: conflicts at once, everything else with
/// exponential backoff per parent, capped at five minutes.
pub fn error_policy(parent: Arc<DynamicObject>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        return Action::requeue(error::CONFLICT_RETRY);
    }
    let failures = match ctx.failures.lock() {
        Ok(mut map) => {
            let n = map.entry(key(&parent)).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    Action::requeue(backoff(failures))
}

async fn reconcile_inner(parent: &DynamicObject, ctx: &Context) -> Result<Action, ReconcileError> {
    let meta = ctx.plugin.metadata();
    let mut parent_json = serde_json::to_value(parent)?;
    parent_json["apiVersion"] = json!(ctx.parent.api_version);
    parent_json["kind"] = json!(ctx.parent.kind);
    let deleting = parent.meta().deletion_timestamp.is_some();
    let has_finalizer = parent.finalizers().iter().any(|f| f == FINALIZER);

    if deleting {
        if meta.finalizer && has_finalizer {
            return finalize(parent, parent_json, ctx).await;
        }
        // Garbage collection takes the children.
        return Ok(Action::await_change());
    }
    if invalid_spec_already_reported(parent, ctx) {
        // The spec has not changed since the plugin called it invalid: nothing to retry.
        return Ok(Action::await_change());
    }
    if meta.finalizer && !has_finalizer {
        add_finalizer(parent, ctx).await?;
    }

    let observed = observe(parent, ctx);
    let observed_json: Vec<Value> =
        observed.iter().map(|(_, o)| serde_json::to_value(&**o)).collect::<Result<_, _>>()?;
    let request = ReconcileRequest {
        parent: parent_json.clone(),
        children: observed_json.clone(),
        finalizing: false,
        settings: ctx.settings.clone(),
    };
    let desired = match compute(ctx, request).await {
        Ok(d) => d,
        Err(e) => {
            let reason = e.condition_reason();
            publish(ctx, parent, EventType::Warning, reason, "Reconcile", e.to_string()).await;
            report(ctx, parent, &Report::failure(reason, e.to_string())).await?;
            return match e {
                ReconcileError::Plugin(PluginError::InvalidSpec { .. }) => {
                    if let Ok(mut invalid) = ctx.invalid.lock() {
                        invalid.insert(key(parent), parent.meta().generation.unwrap_or_default());
                    }
                    Ok(Action::await_change())
                }
                ReconcileError::Review(ReviewError::Denied { .. }) => Ok(Action::await_change()),
                other => Err(other),
            };
        }
    };

    let owner = owner_of(parent, ctx);
    let revision = ctx.plugin.revision().to_string();
    let mut applied = 0usize;
    for mut child in desired.children.clone() {
        apply::mark_child(&mut child, &owner, &meta.name, &revision);
        let Some(kind) = child_kind(ctx, &child) else { continue };
        let existing = observed.iter().position(|(k, o)| {
            k.resource.kind == kind.resource.kind
                && o.meta().name.as_deref() == child["metadata"]["name"].as_str()
                && o.meta().namespace.as_deref() == child["metadata"]["namespace"].as_str()
        });
        if existing.is_some_and(|i| apply::already_applied(&child, &observed_json[i])) {
            continue;
        }
        if let Err(source) = apply::apply_child(&ctx.client, &kind.resource, &child).await {
            let err = ReconcileError::Api { action: format!("applying {}", describe(&child)), source };
            if !err.is_conflict() {
                publish(ctx, parent, EventType::Warning, "ApplyFailed", "Apply", err.to_string()).await;
                report(ctx, parent, &Report::failure("ApplyFailed", err.to_string())).await?;
            }
            return Err(err);
        }
        Stats::bump(&ctx.stats.applies);
        applied += 1;
        let verb = if existing.is_some() { "Updated" } else { "Created" };
        publish(ctx, parent, EventType::Normal, verb, "Apply", format!("{verb} {}", describe(&child))).await;
    }

    for (kind, child) in &observed {
        let wanted = desired.children.iter().any(|d| {
            d["kind"].as_str() == Some(kind.resource.kind.as_str())
                && d["metadata"]["name"].as_str() == child.meta().name.as_deref()
                && d["metadata"]["namespace"].as_str() == child.meta().namespace.as_deref()
        });
        if wanted {
            continue;
        }
        let what = format!("{} {}", kind.resource.kind, key(child));
        if let Err(source) = apply::prune_child(&ctx.client, &kind.resource, child).await {
            return Err(ReconcileError::Api { action: format!("pruning {what}"), source });
        }
        Stats::bump(&ctx.stats.prunes);
        publish(ctx, parent, EventType::Normal, "Deleted", "Prune", format!("Deleted {what}, no longer desired")).await;
    }

    let mut conditions = desired.conditions.clone();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.insert(
            0,
            Condition {
                type_: "Ready".into(),
                status: ConditionStatus::True,
                reason: "Reconciled".into(),
                message: format!("{} children in sync", desired.children.len()),
            },
        );
    }
    report(ctx, parent, &Report { fields: Some(desired.status.clone().unwrap_or_default()), conditions }).await?;
    tracing::debug!(applied, desired = desired.children.len(), "reconciled");
    Ok(match desired.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Children in the caches whose controller ownerReference is this parent.
fn observe<'a>(parent: &DynamicObject, ctx: &'a Context) -> Vec<(&'a ChildKindCache, Arc<DynamicObject>)> {
    let Some(uid) = parent.uid() else { return Vec::new() };
    ctx.children
        .iter()
        .flat_map(|kind| {
            kind.store
                .state()
                .into_iter()
                .filter(|child| child.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid))
                .map(move |child| (kind, child))
        })
        .collect()
}

fn child_kind<'a>(ctx: &'a Context, child: &Value) -> Option<&'a ChildKindCache> {
    ctx.children.iter().find(|k| {
        child["kind"].as_str() == Some(k.resource.kind.as_str())
            && child["apiVersion"].as_str() == Some(k.resource.api_version.as_str())
    })
}

fn owner_of(parent: &DynamicObject, ctx: &Context) -> Owner {
    Owner {
        api_version: ctx.parent.api_version.clone(),
        kind: ctx.parent.kind.clone(),
        name: parent.name_any(),
        uid: parent.uid().unwrap_or_default(),
    }
}

/// Calls the plugin off the async threads, then the policy chain.
async fn compute(ctx: &Context, request: ReconcileRequest) -> Result<Desired, ReconcileError> {
    Stats::bump(&ctx.stats.plugin_calls);
    let plugin = ctx.plugin.clone();
    let parent = request.parent.clone();
    let mut desired = tokio::task::spawn_blocking(move || plugin.reconcile(&request)).await??;
    if !ctx.policies.is_empty() {
        let policies = ctx.policies.clone();
        let children = std::mem::take(&mut desired.children);
        desired.children = tokio::task::spawn_blocking(move || policies.review(&parent, children)).await??;
    }
    Ok(desired)
}

fn invalid_spec_already_reported(parent: &DynamicObject, ctx: &Context) -> bool {
    let generation = parent.meta().generation.unwrap_or_default();
    ctx.invalid.lock().map(|m| m.get(&key(parent)) == Some(&generation)).unwrap_or(false)
}

/// Writes the parent's status when it differs from what is there.
async fn report(ctx: &Context, parent: &DynamicObject, report: &Report) -> Result<(), ReconcileError> {
    let current = &parent.data["status"];
    let Some(next) = status::next_status(current, parent.meta().generation, report, &status::now()) else {
        return Ok(());
    };
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    let patch = json!({ "status": next });
    match api.patch_status(&parent.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            Stats::bump(&ctx.stats.status_writes);
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api { action: format!("writing the status of {}", key(parent)), source }),
    }
}

async fn add_finalizer(parent: &DynamicObject, ctx: &Context) -> Result<(), ReconcileError> {
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    let mut finalizers = parent.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": parent.resource_version() } });
    api.patch(&parent.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|source| ReconcileError::Api { action: format!("adding the finalizer to {}", key(parent)), source })
}

async fn finalize(parent: &DynamicObject, parent_json: Value, ctx: &Context) -> Result<Action, ReconcileError> {
    let observed = observe(parent, ctx);
    let request = ReconcileRequest {
        parent: parent_json,
        children: observed.iter().map(|(_, o)| serde_json::to_value(&**o)).collect::<Result<_, _>>()?,
        finalizing: true,
        settings: ctx.settings.clone(),
    };
    Stats::bump(&ctx.stats.plugin_calls);
    let plugin = ctx.plugin.clone();
    let answer = tokio::task::spawn_blocking(move || plugin.reconcile(&request)).await?;
    let desired = match answer {
        Ok(d) => d,
        Err(e) => {
            publish(ctx, parent, EventType::Warning, e.condition_reason(), "Finalize", e.to_string()).await;
            return Err(e.into());
        }
    };
    if !desired.finalized {
        return Ok(Action::requeue(desired.requeue_after.unwrap_or(FINALIZE_RETRY)));
    }
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    let remaining: Vec<&String> = parent.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({ "metadata": { "finalizers": remaining, "resourceVersion": parent.resource_version() } });
    match api.patch(&parent.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => {
            return Err(ReconcileError::Api { action: format!("removing the finalizer from {}", key(parent)), source });
        }
    }
    publish(
        ctx,
        parent,
        EventType::Normal,
        "Finalized",
        "Finalize",
        "plugin finished cleanup; finalizer removed".into(),
    )
    .await;
    Ok(Action::await_change())
}

/// Publishes an Event about the parent; failing to publish is logged, never fatal.
async fn publish(ctx: &Context, parent: &DynamicObject, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &parent.object_ref(&ctx.parent)).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}
