//! The reconcile pipeline of one parent, in six steps: observe (its children in the caches),
//! compute (the plugin), review (the policies), apply (server-side apply of what changed),
//! prune (what is no longer desired), report (status and Events). See
//! `docs/architecture.md` for the state each step keeps and the ownership rules.

mod error;
pub mod finalizer;
pub mod findings;
mod owners;
pub mod ratelimit;
pub mod related;
mod state;
pub mod trigger;

use crate::telemetry::Stats;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};

pub use error::{BACKOFF_CAP, ReconcileError, backoff};
pub use finalizer::FINALIZER;
pub use findings::{POLICY_CONDITION, audit_condition};
pub use owners::OwnerIndex;
pub use state::ParentState;
pub use trigger::{Start, Trigger, Triggers};

use crate::apply::{self, ChildKey, Owner, Ownership};
use crate::cached::CachedObject;
use crate::plugin::{
    Condition, ConditionStatus, Desired, Limits, OperatorMetadata, OperatorPlugin, Pick, PluginError, ReconcileRequest,
};
use crate::policy::{Finding, PolicyChain, ReviewError, describe};
use crate::shard::Shards;
use crate::status::{self, Report};
use crate::telemetry::Metrics;

/// How soon to ask a finalizing plugin again when it has not finished and gave no hint.
const FINALIZE_RETRY: Duration = Duration::from_secs(5);
/// How long the first status of a new parent waits for the children its first reconcile wrote,
/// when they are not ready yet: if they are within this time, the first status written is the
/// final one (one write instead of a `Progressing` then an `Available`); if not, `Progressing`
/// is written at its end.
const FIRST_STATUS_GRACE: Duration = Duration::from_secs(2);

/// Whether `store` got its first full list (false if its writer is gone). kube-runtime's
/// readiness signal wakes only its latest waiter, and several tasks wait on one store (the
/// controller's sync report, reconciles waiting for related objects), so this asks again every
/// 100 ms instead of waiting once.
pub async fn cache_ready<K: kube::runtime::reflector::Lookup + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// The logic that computes a parent's desired state: a WebAssembly plugin in production, the
/// native build of the same logic in benchmarks.
pub trait Reconciler: Send + Sync + 'static {
    /// What the logic declares (parent and child kinds, finalizer, CRD).
    fn metadata(&self) -> &OperatorMetadata;
    /// Revision recorded on every child it computes.
    fn revision(&self) -> &str;
    /// Computes the checked desired state of one parent.
    fn reconcile(&self, req: &ReconcileRequest) -> Result<Desired, PluginError>;
    /// Picks the related objects of one parent (`pick` resolves its selectors) and computes
    /// its desired state with them. The default picks none.
    fn reconcile_related(&self, req: ReconcileRequest, pick: Pick<'_>) -> Result<Desired, PluginError> {
        let _ = pick;
        self.reconcile(&req)
    }
    /// Most related objects one parent may read.
    fn max_related(&self) -> usize {
        Limits::DEFAULT_MAX_RELATED
    }
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
    fn reconcile_related(&self, req: ReconcileRequest, pick: Pick<'_>) -> Result<Desired, PluginError> {
        OperatorPlugin::reconcile_related(self, req, pick)
    }
    fn max_related(&self) -> usize {
        self.limits().max_related
    }
}

/// A child kind the plugin declared, with the cache of its objects.
pub struct ChildKindCache {
    /// How to reach objects of the kind.
    pub resource: ApiResource,
    /// Children of this kind carrying the plugin's labels, kept current by a watch.
    pub store: Store<CachedObject>,
    /// The same children by controller-owner UID, from the same watch.
    pub owners: OwnerIndex,
}

/// Everything a reconcile of one plugin's parents needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator plugin (or native logic) the controller started with: its metadata (name,
    /// kinds) hold for the controller's life; the logic serving may be swapped ([`Context::stable`]).
    pub plugin: Arc<dyn Reconciler>,
    /// Policies reviewing its children.
    pub policies: PolicyChain,
    /// The stable logic and its settings: the start's, or a new revision with the same kinds
    /// swapped in place (a reload without a relist).
    pub stable: std::sync::RwLock<Logic>,
    /// The parent kind.
    pub parent: ApiResource,
    /// The parents the controller watches (to forget the state of deleted ones).
    pub parents: Store<CachedObject>,
    /// The declared child kinds with their caches.
    pub children: Vec<ChildKindCache>,
    /// The kinds the plugin reads, with their caches and the index of what each parent
    /// selected; `None` when it declares no reads.
    pub related: Option<Arc<related::Related>>,
    /// Publishes Kubernetes Events.
    pub events: crate::events::Publisher,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The metrics registry's families.
    pub metrics: Arc<Metrics>,
    /// Per-parent memory (backoff, invalid specs, status writes, loops): one entry per UID.
    pub state: ParentState,
    /// The controller's overall limit on retries and requeues.
    pub bucket: ratelimit::TokenBucket,
    /// The shards of parents this replica reconciles; others' parents are skipped.
    pub shards: Shards,
    /// Reconciles in flight and finished, watched for a stall (`controller::watch_progress`).
    pub progress: Progress,
    /// The `PolicyReport` kind, when the cluster serves it (for monitoring policies' findings).
    pub reports: Option<ApiResource>,
    /// The canary of a staged rollout, serving its share of the parents.
    pub canary: Option<CanaryLogic>,
    /// Reconciles and failures per revision, for the rollout's analysis.
    pub revisions: Arc<crate::telemetry::Revisions>,
    /// What asked for each pending reconcile, noted by the watches, taken by the reconcile.
    pub triggers: Arc<Triggers>,
}

/// The logic serving one parent, with its settings.
#[derive(Clone)]
pub struct Logic {
    /// The operator plugin (or native logic).
    pub plugin: Arc<dyn Reconciler>,
    /// Settings passed to it.
    pub settings: Option<String>,
}

impl std::fmt::Debug for Logic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logic").field("revision", &self.plugin.revision()).finish_non_exhaustive()
    }
}

/// The canary revision as a controller serves it: its logic, the share and the selector.
pub struct CanaryLogic {
    /// The canary's logic.
    pub plugin: Arc<dyn Reconciler>,
    /// Its settings.
    pub settings: Option<String>,
    percent: u32,
    selector: Option<kube::core::Selector>,
    /// The point below which parents are on the canary, counted once the parent cache is full.
    threshold: tokio::sync::OnceCell<u64>,
    /// Every parent the controller serves, when this replica caches only its shards': the share
    /// is counted over all of them, so the replicas together serve it exactly.
    across_shards: Option<kube::Api<DynamicObject>>,
}

impl CanaryLogic {
    /// The logic of `canary`; a selector that does not parse selects nothing (logged).
    pub fn new(canary: &crate::catalog::Canary) -> CanaryLogic {
        let selector = canary.selector.clone().and_then(|s| match kube::core::Selector::try_from(s) {
            Ok(selector) => Some(selector),
            Err(e) => {
                tracing::warn!(error = %e, "spec.rollout.selector does not parse; it selects no parent");
                None
            }
        });
        CanaryLogic {
            plugin: Arc::new(canary.revision.plugin.clone()),
            settings: canary.revision.settings.clone(),
            percent: canary.percent,
            selector,
            threshold: tokio::sync::OnceCell::new(),
            across_shards: None,
        }
    }

    /// Counts the share over every parent `api` lists rather than over this replica's cache
    /// (set when the replica caches only its shards' parents).
    #[must_use]
    pub fn across_shards(mut self, api: Option<kube::Api<DynamicObject>>) -> CanaryLogic {
        self.across_shards = api;
        self
    }

    /// Where each parent falls ([`crate::rollout::point`]): every parent's, listed by metadata
    /// when counting across shards (the cache's, if that list fails), else the cache's.
    async fn points(&self, parents: &Store<CachedObject>) -> Vec<u64> {
        if let Some(api) = &self.across_shards {
            match every_uid(api).await {
                Ok(uids) => return uids.iter().map(|u| crate::rollout::point(u)).collect(),
                Err(e) => tracing::warn!(error = %e,
                    "listing every parent for the canary's share failed; counting this replica's shards only"),
            }
        }
        cache_ready(parents).await;
        parents.state().iter().map(|p| crate::rollout::point(&uid(p.as_ref()))).collect()
    }
}

/// The UIDs of every parent `api` lists, a page of metadata at a time.
async fn every_uid(api: &kube::Api<DynamicObject>) -> Result<Vec<String>, kube::Error> {
    let parents =
        crate::paging::all(kube::api::ListParams::default(), |params| async move { api.list_metadata(&params).await })
            .await?;
    Ok(parents.into_iter().filter_map(|p| p.metadata.uid).collect())
}

impl Context {
    /// The logic serving `parent`: the canary for its share of the parents (and the selected
    /// ones), the stable revision for the others.
    async fn logic_for(&self, parent: &DynamicObject) -> Logic {
        let stable = || match self.stable.read() {
            Ok(logic) => logic.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(canary) = &self.canary else { return stable() };
        let selected = canary.selector.as_ref().is_some_and(|s| kube::core::SelectorExt::matches(s, parent.labels()));
        let threshold = canary
            .threshold
            .get_or_init(|| async { crate::rollout::threshold(canary.points(&self.parents).await, canary.percent) })
            .await;
        match crate::rollout::serves_canary(&uid(parent), *threshold, selected) {
            true => Logic { plugin: canary.plugin.clone(), settings: canary.settings.clone() },
            false => stable(),
        }
    }
}

/// Reconciles of one controller in flight and finished: a controller with reconciles in flight
/// and none finishing is stalled.
#[derive(Debug, Default)]
pub struct Progress {
    /// Reconciles running now.
    pub in_flight: std::sync::atomic::AtomicU64,
    /// Reconciles finished so far (any outcome).
    pub finished: std::sync::atomic::AtomicU64,
}

fn key(parent: &DynamicObject) -> String {
    finalizer::describe(parent)
}

fn uid(parent: &impl Resource) -> String {
    parent.uid().unwrap_or_default()
}

/// Reconciles one parent. Errors are reported on the parent's status before they are returned,
/// so `kubectl get` shows them; the error policy then decides when to retry.
pub async fn reconcile(cached: Arc<CachedObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let trigger = ctx.triggers.take(&uid(&*cached));
    // Another replica's shard: nothing to do here (the shard's holder reconciles it; gaining
    // the shard reconciles its parents). One cached under a wrong shard label is labelled
    // right, so that it reaches its shard's cache. Only a parent of this shard is decoded.
    let Some(_in_shard) = ctx.shards.enter(&uid(&*cached)) else {
        misfiled(&*cached, &ctx).await;
        return Ok(Action::await_change());
    };
    let parent = cached.to_object()?;
    let logic = ctx.logic_for(&parent).await;
    let span = reconcile_span(&parent, &ctx, &logic, &trigger);
    Stats::bump(&ctx.stats.reconciles);
    let controller = ctx.plugin.metadata().name.clone();
    ctx.state.started(&uid(&parent));
    ctx.metrics.set_workqueue_depth(&controller, ctx.state.scheduled());
    let workers = ctx.metrics.active_workers(&controller);
    workers.inc();
    let started = std::time::Instant::now();
    let writes = || Stats::get(&ctx.stats.applies) + Stats::get(&ctx.stats.status_writes);
    let writes_before = writes();
    ctx.progress.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = pipeline(&parent, &ctx, &logic, &trigger).instrument(span.clone()).await;
    let failed = result.as_ref().is_err_and(ReconcileError::counts_against_revision);
    ctx.revisions.record(logic.plugin.revision(), failed);
    ctx.metrics.revision_reconciled(&controller, logic.plugin.revision(), failed);
    ctx.progress.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    ctx.progress.finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Approximate (other parents' writes count too): enough to tell a busy loop from a resync.
    let wrote = writes() > writes_before;
    workers.dec();
    let outcome = match &result {
        Ok(action) if *action == Action::await_change() => "success",
        Ok(_) => "requeue_after",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(&controller, outcome, started.elapsed().as_secs_f64());
    if wrote || outcome == "requeue_after" {
        watch_for_loop(&parent, &ctx).await;
    }
    let _entered = span.enter();
    tracing::debug!(outcome, seconds = started.elapsed().as_secs_f64(), "reconcile finished");
    remember(&parent, &ctx, &result);
    result
}

/// The span of one reconcile: the plugin and its revision, the parent (kind, namespace, name,
/// UID, generation), what triggered it, and its trace id when traces are on and keep it (so
/// log lines name the trace).
fn reconcile_span(parent: &DynamicObject, ctx: &Context, logic: &Logic, trigger: &Trigger) -> tracing::Span {
    let span = info_span!(
        "reconcile",
        plugin = %ctx.plugin.metadata().name,
        revision = logic.plugin.revision(),
        object = %key(parent),
        parent.kind = %ctx.parent.kind,
        parent.namespace = parent.namespace().unwrap_or_default(),
        parent.name = parent.name_any(),
        parent.uid = uid(parent),
        generation = parent.meta().generation.unwrap_or_default(),
        trigger = %trigger,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = crate::traces::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Counts a reconcile that wrote or requeued without a spec change; reports a loop (Warning
/// Event, metric) when there are too many.
async fn watch_for_loop(parent: &DynamicObject, ctx: &Context) {
    let Some(count) = ctx.state.record_loop(&uid(parent), parent.meta().generation.unwrap_or_default()) else {
        return;
    };
    let note = format!(
        "reconciled {count} times within {:?} without a spec change, each writing or requeueing: the plugin \
         requeues too often, or fights another writer over a child; requeues and retries are rate limited",
        ratelimit::LOOP_WINDOW
    );
    tracing::warn!(count, "reconcile loop");
    ctx.metrics.reconcile_loop(&ctx.plugin.metadata().name);
    publish(ctx, parent, EventType::Warning, "ReconcileLoop", "Reconcile", note).await;
}

/// Updates the per-parent state after a reconcile: a requeue is scheduled, a success forgets
/// the parent (unless its spec was called invalid), a failure is counted; then the state of
/// deleted parents is swept.
fn remember(parent: &DynamicObject, ctx: &Context, result: &Result<Action, ReconcileError>) {
    let uid = uid(parent);
    match result {
        Ok(action) if *action != Action::await_change() => {
            ctx.state.schedule(&uid);
            ctx.triggers.note(&uid, Trigger::Requeue);
        }
        Ok(_) => {}
        Err(e) => {
            Stats::bump(&ctx.stats.failures);
            tracing::warn!(error = %e, "reconcile failed");
        }
    }
    if result.is_ok() && !ctx.state.is_reported_invalid(&uid, parent.meta().generation.unwrap_or_default()) {
        ctx.state.forget(&uid);
    }
    let live = || ctx.parents.state().iter().map(|p| self::uid(p.as_ref())).collect::<HashSet<String>>();
    ctx.state.sweep(ctx.parents.len(), live);
    ctx.triggers.sweep(ctx.parents.len(), live);
    if let Some(related) = &ctx.related {
        let live = || ctx.parents.state().iter().map(|p| related::ParentKey::of(p.as_ref())).collect();
        related.sweep(ctx.parents.len(), live);
    }
}

/// Decides when to retry a failed reconcile: conflicts at once, everything else with
/// exponential backoff per parent, capped at five minutes.
pub fn error_policy(parent: Arc<CachedObject>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.state.schedule(&uid(&*parent));
    ctx.triggers.note(&uid(&*parent), Trigger::Retry);
    ctx.metrics.set_workqueue_depth(&ctx.plugin.metadata().name, ctx.state.scheduled());
    let limited = ctx.bucket.reserve();
    if err.is_conflict() {
        return Action::requeue(error::CONFLICT_RETRY.max(limited));
    }
    Action::requeue(backoff(ctx.state.record_failure(&uid(&*parent))).max(limited))
}

/// The six steps, with the finalizer handling around them. The trigger matters twice: a spec
/// called invalid is judged again when a related object changed (the plugin's input did), and a
/// reload's restamping of every child is not announced one Event each (10,000 parents, 10,000
/// Events; the reload is logged and counted once).
async fn pipeline(
    parent: &DynamicObject,
    ctx: &Context,
    logic: &Logic,
    trigger: &Trigger,
) -> Result<Action, ReconcileError> {
    let meta = ctx.plugin.metadata();
    let deleting = parent.meta().deletion_timestamp.is_some();
    if !meta.finalizer && finalizer::has_finalizer(parent) {
        // This plugin (version) does not declare the finalizer: release the parent.
        release_finalizer(parent, ctx, "the plugin does not declare a finalizer").await?;
        return Ok(Action::await_change());
    }
    if deleting {
        if finalizer::has_finalizer(parent) {
            return finalize(parent, ctx, logic).await;
        }
        // Garbage collection takes the children.
        ctx.state.forget_all(&uid(parent));
        forget_related(parent, ctx);
        return Ok(Action::await_change());
    }
    let related_changed = matches!(trigger, Trigger::Related(_));
    if !related_changed && ctx.state.is_reported_invalid(&uid(parent), parent.meta().generation.unwrap_or_default()) {
        // Neither the spec nor what it reads changed since the plugin called it invalid.
        return Ok(Action::await_change());
    }
    if meta.finalizer {
        add_finalizer(parent, ctx).await?;
    }
    let observed = observe(parent, ctx)?;
    let desired = match compute(parent, ctx, logic, &observed, false).await {
        Ok(d) => review(parent, ctx, d).await,
        Err(e) => Err(e),
    };
    let (desired, findings) = match desired {
        Ok(d) => d,
        Err(e) => return report_failure(parent, ctx, e).await,
    };
    let announce_updates = *trigger != Trigger::Start(Start::Reload);
    let applied = apply(parent, ctx, logic.plugin.revision(), &desired, &observed, announce_updates).await?;
    prune(parent, ctx, &desired, &observed).await?;
    let audit = audit_condition(&ctx.policies, &findings);
    findings::record(parent, ctx, audit.as_ref(), &findings).await;
    report(parent, ctx, &desired, &applied, audit).await
}

/// A parent's children as the caches hold them, keyed by full identity: the index of their
/// kind in [`Context::children`], the cached object, and its JSON (decoded once, for the plugin
/// and for the skip-if-applied check).
pub struct Observed {
    children: HashMap<ChildKey, (usize, Arc<CachedObject>, Value)>,
}

impl Observed {
    /// The children as JSON, for the plugin, in key order.
    fn to_json(&self) -> Vec<Value> {
        let mut children: Vec<(&ChildKey, &Value)> = self.children.iter().map(|(k, (_, _, j))| (k, j)).collect();
        children.sort_by(|a, b| a.0.cmp(b.0));
        children.into_iter().map(|(_, json)| json.clone()).collect()
    }
}

/// Step 1, observe: children in the caches whose controller ownerReference is this parent.
fn observe(parent: &DynamicObject, ctx: &Context) -> Result<Observed, ReconcileError> {
    let uid = uid(parent);
    let mut children = HashMap::new();
    for (index, kind) in ctx.children.iter().enumerate() {
        for child in kind.owners.children_of(&uid).iter().filter_map(|key| kind.store.get(key)) {
            if child.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid) {
                let key = ChildKey::of_object(&kind.resource, child.as_ref());
                let json = child.to_json(&kind.resource)?;
                children.insert(key, (index, child, json));
            }
        }
    }
    Ok(Observed { children })
}

/// The parent as the plugin sees it: apiVersion and kind always set (a real API server's list
/// items carry neither, as [`CachedObject::to_json`] says).
fn parent_json(parent: &DynamicObject, ctx: &Context) -> Result<Value, ReconcileError> {
    let mut json = serde_json::to_value(parent)?;
    json["apiVersion"] = json!(ctx.parent.api_version);
    json["kind"] = json!(ctx.parent.kind);
    Ok(json)
}

/// Forgets what a parent that is gone selected.
fn forget_related(parent: &DynamicObject, ctx: &Context) {
    if let Some(related) = &ctx.related {
        related.forget(&related::ParentKey::of(parent));
    }
}

/// Step 2, compute: calls the plugin off the async threads (its `related`, then `reconcile`).
async fn compute(
    parent: &DynamicObject,
    ctx: &Context,
    logic: &Logic,
    observed: &Observed,
    finalizing: bool,
) -> Result<Desired, ReconcileError> {
    let request = ReconcileRequest {
        parent: parent_json(parent, ctx)?,
        children: observed.to_json(),
        finalizing,
        settings: logic.settings.clone(),
        related: Vec::new(),
    };
    let related = ctx.related.clone();
    // A plugin must not see a partial view of what it reads (a ConfigMap missing only because
    // its watch has not listed yet): wait for the first list of every read kind.
    for read in related.iter().flat_map(|r| r.kinds.iter()) {
        cache_ready(&read.store).await;
    }
    Stats::bump(&ctx.stats.plugin_calls);
    let plugin = logic.plugin.clone();
    let started = std::time::Instant::now();
    let span = crate::traces::step_span(|| {
        info_span!(
            "plugin call",
            plugin = %ctx.plugin.metadata().name,
            revision = logic.plugin.revision(),
            finalizing,
            epoch_ticks = tracing::field::Empty,
            output_bytes = tracing::field::Empty,
            failure = tracing::field::Empty,
        )
    });
    let answer = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let answer = match &related {
            Some(related) => related.reconcile(&*plugin, request),
            None => plugin.reconcile(&request),
        };
        if let Err(e) = &answer {
            span.record("failure", e.metric_reason());
        }
        answer
    })
    .await?;
    let name = &ctx.plugin.metadata().name;
    ctx.metrics.plugin_call(name, "operator", logic.plugin.revision(), started.elapsed().as_secs_f64());
    if let Err(e) = &answer {
        ctx.metrics.plugin_failure(name, logic.plugin.revision(), e.metric_reason());
    }
    Ok(answer?)
}

/// Step 3, review: the policy chain may allow, mutate or deny each child; monitoring policies
/// only add findings.
async fn review(
    parent: &DynamicObject,
    ctx: &Context,
    mut desired: Desired,
) -> Result<(Desired, Vec<Finding>), ReconcileError> {
    if ctx.policies.is_empty() {
        return Ok((desired, Vec::new()));
    }
    let (policies, parent) = (ctx.policies.clone(), parent_json(parent, ctx)?);
    let children = std::mem::take(&mut desired.children);
    let span = tracing::Span::current();
    let reviewed = tokio::task::spawn_blocking(move || span.in_scope(|| policies.review(&parent, children))).await??;
    desired.children = reviewed.children;
    Ok((desired, reviewed.findings))
}

/// Reports a failed compute or review on the parent; an invalid spec or a denial waits for a
/// change, anything else is retried with backoff.
async fn report_failure(parent: &DynamicObject, ctx: &Context, e: ReconcileError) -> Result<Action, ReconcileError> {
    let reason = e.condition_reason();
    if ctx.policies.monitoring().is_empty() {
        // The failure's status drops the findings condition: the report goes with it.
        findings::record(parent, ctx, None, &[]).await;
    }
    if let ReconcileError::Review(ReviewError::Denied { policy, .. }) = &e {
        ctx.metrics.policy_denial(policy);
    }
    publish(ctx, parent, EventType::Warning, reason, "Reconcile", e.to_string()).await;
    write_status(parent, ctx, &Report::failure(reason, e.to_string())).await?;
    match e {
        ReconcileError::Plugin(PluginError::InvalidSpec { .. }) => {
            ctx.state.record_invalid(&uid(parent), parent.meta().generation.unwrap_or_default());
            Ok(Action::await_change())
        }
        ReconcileError::Review(ReviewError::Denied { .. }) => Ok(Action::await_change()),
        other => Err(other),
    }
}

/// A desired child the host may not write, with why.
pub struct Conflict {
    /// `Kind namespace/name`.
    pub object: String,
    /// Who controls it instead.
    pub owner: String,
}

/// What the apply step did.
#[derive(Default)]
struct Applied {
    /// Desired children the host may not write.
    conflicts: Vec<Conflict>,
    /// Children written.
    written: usize,
}

/// Step 4, apply: marks each desired child and server-side applies the ones that changed.
/// An existing object this parent does not control is never written (see [`Ownership`]); it
/// is returned as a conflict. Each write is announced by an Event, updates only when
/// `announce_updates`.
async fn apply(
    parent: &DynamicObject,
    ctx: &Context,
    revision: &str,
    desired: &Desired,
    observed: &Observed,
    announce_updates: bool,
) -> Result<Applied, ReconcileError> {
    let (owner, meta) = (owner_of(parent, ctx), ctx.plugin.metadata());
    let mut applied = Applied::default();
    for mut child in desired.children.clone() {
        apply::mark_child(&mut child, &owner, &meta.name, revision);
        let Some(kind) = child_kind(ctx, &child) else {
            return Err(ReconcileError::UnknownChildKind { object: describe(&child) });
        };
        let verb = match observed.children.get(&ChildKey::of(&child)) {
            Some((_, _, current)) if apply::already_applied(&child, current) => continue,
            Some(_) => "Updated",
            None => match existing_ownership(ctx, kind, &child, &owner.uid).await? {
                None => "Created",
                Some(Ownership::Ours) => "Updated",
                Some(Ownership::Adoptable) => "Adopted",
                Some(Ownership::Conflict(owner)) => {
                    applied.conflicts.push(Conflict { object: describe(&child), owner });
                    continue;
                }
            },
        };
        let span = crate::traces::step_span(|| info_span!("apply", child = %describe(&child), verb));
        if let Err(source) = apply::apply_child(&ctx.client, &kind.resource, &child).instrument(span).await {
            let err = ReconcileError::Api { action: format!("applying {}", describe(&child)), source };
            if !err.is_conflict() {
                publish(ctx, parent, EventType::Warning, "ApplyFailed", "Apply", err.to_string()).await;
                write_status(parent, ctx, &Report::failure("ApplyFailed", err.to_string())).await?;
            }
            return Err(err);
        }
        written(parent, ctx, kind, verb, &child, announce_updates || verb != "Updated").await;
        applied.written += 1;
    }
    Ok(applied)
}

/// Counts a child write and, when `announce`, publishes its Event (`verb`: Created, Updated, Adopted).
async fn written(
    parent: &DynamicObject,
    ctx: &Context,
    kind: &ChildKindCache,
    verb: &str,
    child: &Value,
    announce: bool,
) {
    Stats::bump(&ctx.stats.applies);
    ctx.metrics.child_written(&ctx.plugin.metadata().name, &kind.resource.kind, false);
    if announce {
        publish(ctx, parent, EventType::Normal, verb, "Apply", format!("{verb} {}", describe(child))).await;
    }
}

/// Who controls an object the caches do not show as this parent's: `None` if it does not exist.
async fn existing_ownership(
    ctx: &Context,
    kind: &ChildKindCache,
    child: &Value,
    parent_uid: &str,
) -> Result<Option<Ownership>, ReconcileError> {
    match apply::existing(&ctx.client, &kind.resource, child, parent_uid).await {
        Ok(found) => Ok(found.map(|(_, ownership)| ownership)),
        Err(source) => Err(ReconcileError::Api { action: format!("reading {}", describe(child)), source }),
    }
}

/// Step 5, prune: deletes observed children no longer desired — only objects the host created
/// for this parent ([`apply::prunable`]).
async fn prune(
    parent: &DynamicObject,
    ctx: &Context,
    desired: &Desired,
    observed: &Observed,
) -> Result<(), ReconcileError> {
    let wanted: HashSet<ChildKey> = desired.children.iter().map(ChildKey::of).collect();
    let uid = uid(parent);
    for (key, (index, child, _)) in &observed.children {
        if wanted.contains(key) || !apply::prunable(child.as_ref(), &uid) {
            continue;
        }
        let kind = &ctx.children[*index];
        let what = format!("{} {}", kind.resource.kind, finalizer::describe(child.as_ref()));
        let span = crate::traces::step_span(|| info_span!("prune", child = %what));
        if let Err(source) = apply::prune_child(&ctx.client, &kind.resource, child.as_ref()).instrument(span).await {
            return Err(ReconcileError::Api { action: format!("pruning {what}"), source });
        }
        Stats::bump(&ctx.stats.prunes);
        ctx.metrics.child_written(&ctx.plugin.metadata().name, &kind.resource.kind, true);
        publish(ctx, parent, EventType::Normal, "Deleted", "Prune", format!("Deleted {what}, no longer desired")).await;
    }
    Ok(())
}

/// Step 6, report: the plugin's status and conditions (a default `Ready=True` when it gave
/// none), or `Ready=False/ChildConflict` naming each object the host may not write.
async fn report(
    parent: &DynamicObject,
    ctx: &Context,
    desired: &Desired,
    applied: &Applied,
    audit: Option<Condition>,
) -> Result<Action, ReconcileError> {
    let conflicts = &applied.conflicts;
    let mut report = status_report(desired, conflicts);
    report.conditions.extend(audit);
    if !conflicts.is_empty() {
        let message = conflicts_message(conflicts);
        publish(ctx, parent, EventType::Warning, "ChildConflict", "Apply", message.clone()).await;
        write_status(parent, ctx, &report).await?;
        return Err(ReconcileError::ChildConflict { message });
    }
    if let Some(wait) = first_status_wait(parent, ctx, &report, applied.written > 0) {
        return Ok(Action::requeue(wait));
    }
    ctx.state.first_status_done(&uid(parent));
    write_status(parent, ctx, &report).await?;
    Ok(match desired.requeue_after {
        Some(after) => Action::requeue(after.max(ratelimit::MIN_REQUEUE).max(ctx.bucket.reserve())),
        None => Action::await_change(),
    })
}

/// The status a reconcile reports for `desired`: the plugin's status and conditions (a default
/// `Ready=True` when it gave none), or `Ready=False/ChildConflict` naming each object the host
/// may not write. Pure, so `wasmop preview` reports exactly what `run` would write.
pub fn status_report(desired: &Desired, conflicts: &[Conflict]) -> Report {
    let mut conditions = desired.conditions.clone();
    if !conflicts.is_empty() {
        conditions.retain(|c| c.type_ != "Ready");
        conditions.insert(0, ready(ConditionStatus::False, "ChildConflict", conflicts_message(conflicts)));
    } else if !conditions.iter().any(|c| c.type_ == "Ready") {
        let message = format!("{} children in sync", desired.children.len());
        conditions.insert(0, ready(ConditionStatus::True, "Reconciled", message));
    }
    Report { fields: Some(desired.status.clone().unwrap_or_default()), conditions }
}

/// `Kind ns/name exists and is …` for each conflict, joined.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    conflicts.iter().map(|c| format!("{} exists and is {}", c.object, c.owner)).collect::<Vec<_>>().join("; ")
}

/// How long a new parent's first status may wait (see [`FIRST_STATUS_GRACE`]): only a parent
/// that has no conditions yet, whose report is not `Ready=True`, and whose children were
/// written by this reconcile or one of the same generation within the grace time.
fn first_status_wait(parent: &DynamicObject, ctx: &Context, report: &Report, wrote: bool) -> Option<Duration> {
    let uid = uid(parent);
    let ready = report.conditions.iter().any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True);
    let cached_rv = parent.resource_version().unwrap_or_default();
    let has_status =
        !parent.data["status"]["conditions"].is_null() || ctx.state.unseen_status(&uid, &cached_rv).is_some();
    if ready || has_status {
        return None;
    }
    ctx.state.first_status_wait(&uid, parent.meta().generation.unwrap_or_default(), wrote, FIRST_STATUS_GRACE)
}

fn ready(status: ConditionStatus, reason: &str, message: String) -> Condition {
    Condition { type_: "Ready".into(), status, reason: reason.into(), message }
}

fn child_kind<'a>(ctx: &'a Context, child: &Value) -> Option<&'a ChildKindCache> {
    ctx.children.iter().find(|k| {
        child["kind"].as_str() == Some(k.resource.kind.as_str())
            && child["apiVersion"].as_str() == Some(k.resource.api_version.as_str())
    })
}

/// Labels a parent cached under another shard's label (set by hand, or before the hash
/// changed) with its own shard. (A parent selected by the server's `shardSelector` carries
/// no label and is left alone.)
async fn misfiled(parent: &impl Resource, ctx: &Context) {
    let Some(own) = ctx.shards.label_of(&uid(parent)) else { return };
    let label = parent.labels().get(crate::shard::scope::SHARD_LABEL);
    if label.is_some_and(|label| *label != own) {
        let namespace = parent.namespace();
        crate::shard::assign::label(&ctx.client, &ctx.parent, namespace.as_deref(), &parent.name_any(), &own).await;
    }
}

fn owner_of(parent: &DynamicObject, ctx: &Context) -> Owner {
    Owner {
        api_version: ctx.parent.api_version.clone(),
        kind: ctx.parent.kind.clone(),
        name: parent.name_any(),
        uid: uid(parent),
        shard: ctx.shards.label_of(&uid(parent)),
    }
}

/// Writes the parent's status with server-side apply (field manager `wasmop`), when it differs
/// from what is there: a field the plugin stops returning goes away. "What is there" is the
/// cached parent, or the host's own last write when the cache does not show it yet (a child
/// event often triggers the next reconcile before the parent's watch delivers the status the
/// last one wrote; comparing with the stale copy would write the same status again).
async fn write_status(parent: &DynamicObject, ctx: &Context, report: &Report) -> Result<(), ReconcileError> {
    let cached_rv = parent.resource_version().unwrap_or_default();
    let unseen = ctx.state.unseen_status(&uid(parent), &cached_rv);
    let current = unseen.as_ref().unwrap_or(&parent.data["status"]);
    let Some(next) = status::next_status(current, parent.meta().generation, report, &status::now()) else {
        return Ok(());
    };
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    let patch = json!({ "apiVersion": ctx.parent.api_version, "kind": ctx.parent.kind, "status": next });
    let params = PatchParams::apply(apply::FIELD_MANAGER).force();
    let span = crate::traces::step_span(|| info_span!("status write", object = %key(parent)));
    match api.patch_status(&parent.name_any(), &params, &Patch::Apply(&patch)).instrument(span).await {
        Ok(_) => {
            Stats::bump(&ctx.stats.status_writes);
            ctx.state.status_written(&uid(parent), &cached_rv, &next);
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api { action: format!("writing the status of {}", key(parent)), source }),
    }
}

async fn add_finalizer(parent: &DynamicObject, ctx: &Context) -> Result<(), ReconcileError> {
    if finalizer::has_finalizer(parent) {
        return Ok(());
    }
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    finalizer::patch(&api, parent, finalizer::add_patch(parent))
        .await
        .map_err(|source| ReconcileError::Api { action: format!("adding the finalizer to {}", key(parent)), source })
}

/// Removes the host's finalizer (and only it) from `parent`, with an Event saying why.
async fn release_finalizer(parent: &DynamicObject, ctx: &Context, why: &str) -> Result<(), ReconcileError> {
    let Some(ops) = finalizer::remove_patch(parent) else { return Ok(()) };
    let api = apply::api_for(&ctx.client, &ctx.parent, parent.namespace().as_deref());
    finalizer::patch(&api, parent, ops).await.map_err(|source| ReconcileError::Api {
        action: format!("removing the finalizer from {}", key(parent)),
        source,
    })?;
    tracing::info!(why, "finalizer {FINALIZER} removed");
    let note = format!("finalizer {FINALIZER} removed: {why}");
    publish(ctx, parent, EventType::Normal, "FinalizerRemoved", "Finalize", note).await;
    Ok(())
}

/// A deleting parent with the host's finalizer: the plugin is called with `finalizing`; the
/// finalizer is removed once it answers `finalized`, otherwise it is asked again later.
async fn finalize(parent: &DynamicObject, ctx: &Context, logic: &Logic) -> Result<Action, ReconcileError> {
    let observed = observe(parent, ctx)?;
    let desired = match compute(parent, ctx, logic, &observed, true).await {
        Ok(d) => d,
        Err(e) => {
            publish(ctx, parent, EventType::Warning, e.condition_reason(), "Finalize", e.to_string()).await;
            return Err(e);
        }
    };
    if !desired.finalized {
        let message = "the plugin is cleaning up; deletion waits for it".to_string();
        write_status(
            parent,
            ctx,
            &Report { fields: None, conditions: vec![ready(ConditionStatus::False, "Finalizing", message)] },
        )
        .await?;
        return Ok(Action::requeue(desired.requeue_after.unwrap_or(FINALIZE_RETRY)));
    }
    release_finalizer(parent, ctx, "the plugin finished its cleanup").await?;
    ctx.state.forget_all(&uid(parent));
    forget_related(parent, ctx);
    Ok(Action::await_change())
}

/// Publishes an Event about the parent (naming the reconcile's trace when one is kept); failing
/// to publish is logged, never fatal.
async fn publish(ctx: &Context, parent: &DynamicObject, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.events.publish(&event, &parent.object_ref(&ctx.parent)).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}
