//! One kube-runtime Controller per operator plugin: watches the parent kind, keeps a cache of
//! each declared child kind (filtered by the plugin's label) that also triggers the parent's
//! reconcile, and runs the pipeline.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::apply::{MANAGED_BY_LABEL, PLUGIN_LABEL};
use crate::cached::CachedObject;
use crate::discovery::{KindNotServed, resolve};
use crate::plugin::{ReadKind, ReadScope};
use crate::policy::PolicyChain;
use crate::reconcile::related::{ParentKey, ReadKindCache, Related};
use crate::reconcile::{self, ChildKindCache, Context, OwnerIndex, Reconciler, Start, Trigger, Triggers, cache_ready};
use crate::shard::scope::Selection;
use crate::shard::{self, Shards};
use crate::telemetry::{Health, Telemetry};

/// How a plugin's controller runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Only reconcile parents in this namespace; `None` for all.
    pub namespace: Option<String>,
    /// Most reconciles running at once for this plugin.
    pub concurrency: u16,
    /// Every parent is reconciled again this often even when nothing changed.
    pub resync: Duration,
    /// Settings passed to the plugin.
    pub settings: Option<String>,
    /// The shards of parents this replica reconciles (default: all parents, unsharded).
    pub shards: Shards,
    /// How long reconciles may be in flight with none finishing before the controller is
    /// reported stalled (a warning naming the plugin and its queue, and a `/readyz` note).
    pub stall_after: Duration,
    /// The canary of a staged rollout, serving its share of the parents (default: none).
    pub canary: Option<Arc<crate::catalog::Canary>>,
    /// Why the controller starts: the trigger of the reconciles of its first list.
    pub start: Start,
    /// New logic with the same kinds to swap in while running (a reload without a relist):
    /// every parent is reconciled again by it, with the trigger `reload`. Default: none.
    pub swaps: Option<tokio::sync::watch::Receiver<Option<reconcile::Logic>>>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            namespace: None,
            concurrency: 8,
            resync: Duration::from_secs(600),
            settings: None,
            shards: Shards::all(),
            stall_after: Duration::from_secs(60),
            canary: None,
            start: Start::Startup,
            swaps: None,
        }
    }
}

/// Resolves the plugin's kinds and runs its controller until `shutdown` completes. The caller
/// marks the controller unsynced in the health before; it is marked synced once its caches are
/// (and when it stops).
pub async fn run_plugin(
    client: Client,
    plugin: Arc<dyn Reconciler>,
    policies: PolicyChain,
    options: ControllerOptions,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), KindNotServed> {
    let meta = plugin.metadata().clone();
    let (parent_ar, _) = resolve(&client, &meta.parent).await?;
    let selector = format!("{MANAGED_BY_LABEL}=wasmop,{PLUGIN_LABEL}={}", meta.name);

    let (parent_api, selection) = parent_watch(&client, &parent_ar, &options, &meta.name).await;
    let triggers = Arc::new(Triggers::default());
    let cached = |cache: &str| telemetry.metrics.cached_objects(&meta.name, cache);
    // With shards, the child caches take a new scope first; the parents' follows (`scope`).
    let (mut children, mut child_streams, mut listed) = (Vec::new(), Vec::new(), Vec::new());
    for child in &meta.children {
        let (ar, namespaced) = resolve(&client, &child.gvk).await?;
        let api: Api<CachedObject> = match (&options.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let writer = Writer::new(ar.clone());
        let store = writer.as_reader();
        let owners = OwnerIndex::new(ar.clone());
        let index = owners.clone();
        let config = watcher::Config::default().labels(&selector);
        let (events, scope) = shard::scope::scoped(api, config, options.shards.clone(), Selection::Labels, Vec::new());
        listed.push(scope.listed);
        let (count, gauge) = (store.clone(), cached(&ar.kind));
        let stream = events.inspect_ok(move |event| index.observe(event)).reflect(writer).inspect(move |_| {
            gauge.set(count.len() as i64);
        });
        // A list's children trigger their parents once the cache holds them.
        let stream = crate::relist::at_list_end(stream).touched_objects().inspect_ok(note_child(
            triggers.clone(),
            parent_ar.clone(),
            ar.kind.clone(),
        ));
        child_streams.push((stream, ar.clone()));
        children.push(ChildKindCache { resource: ar, store, owners });
    }
    // Resyncs and child events reconcile too (see `parent_events` for the parents' own).
    let writer = Writer::new(parent_ar.clone());
    let parents = writer.as_reader();
    let (events, parent_scope) =
        shard::scope::scoped(parent_api, watcher::Config::default(), options.shards.clone(), selection.clone(), listed);
    let watch = ParentWatch { writer, cached: cached("parents"), rescoping: parent_scope.rescoping.clone() };
    let trigger = parent_events(events, watch, triggers.clone(), options.start);
    let mut controller = Controller::for_stream_with(trigger, parents.clone(), parent_ar.clone());
    for (stream, ar) in child_streams {
        controller = controller.owns_stream_with(stream, ar);
    }
    let related = match watch_related(&client, &meta.reads, options.namespace.as_deref()).await? {
        Some((related, streams)) => {
            for (kind, stream, before) in streams {
                let to = Selecting { parents: parents.clone(), parent: parent_ar.clone(), triggers: triggers.clone() };
                let mapper = related_parents(related.clone(), kind, before, to);
                controller = controller.watches_stream_with(stream, mapper, related.kinds[kind].resource.clone());
            }
            Some(related)
        }
        None => None,
    };

    // Selected by label, the holder of an unlabelled parent's shard labels it (it then reaches
    // the cache).
    let assign =
        shard::assign::run(client.clone(), parent_ar.clone(), options.namespace.clone(), options.shards.clone());
    let assigner = tokio::spawn(async move {
        if matches!(selection, Selection::Labels) {
            assign.await;
        }
    });
    let reporter = Reporter { controller: "wasmop".into(), instance: std::env::var("POD_NAME").ok() };
    // Findings of monitoring policies also go to a PolicyReport, if the cluster serves the kind
    // (looked up even when no policy monitors now: a parent that had findings loses its report).
    let reports = resolve(&client, &reconcile::findings::report_kind()).await.ok().map(|(ar, _)| ar);
    // Split across replicas, the canary's share is counted over every parent, not this cache.
    let every =
        options.shards.is_split().then(|| crate::apply::api_for(&client, &parent_ar, options.namespace.as_deref()));
    let canary = options.canary.as_deref().map(|canary| reconcile::CanaryLogic::new(canary).across_shards(every));
    let ctx = Arc::new(Context {
        client: client.clone(),
        stable: std::sync::RwLock::new(reconcile::Logic { plugin: plugin.clone(), settings: options.settings.clone() }),
        plugin,
        policies,
        parent: parent_ar,
        parents,
        children,
        related,
        events: crate::events::Publisher::new(client, reporter),
        stats: telemetry.stats.clone(),
        metrics: telemetry.metrics.clone(),
        state: Default::default(),
        bucket: Default::default(),
        shards: options.shards.clone(),
        progress: Default::default(),
        reports,
        canary,
        revisions: telemetry.revisions.clone(),
        triggers: triggers.clone(),
    });
    let health = telemetry.health.clone();
    let synced = wait_for_caches(ctx.clone(), health.clone(), meta.name.clone());
    let ctx_for_watchdog = ctx.clone();
    // A resync reconciles every parent (those of other shards are skipped). A shard newly held
    // brings its parents in the re-scoped list (`parent_events`).
    let resync = crate::ticks::every(options.resync).map(|()| Trigger::Resync);
    // New logic swapped in: every parent again, by it.
    let resync = futures::stream::select(resync, swapped(ctx.clone(), options.swaps.clone())).map({
        let (triggers, parents) = (triggers.clone(), ctx.parents.clone());
        move |trigger| {
            let uids: Vec<String> = parents.state().iter().filter_map(|p| p.uid()).collect();
            triggers.note_all(uids.iter().map(String::as_str), &trigger);
        }
    });
    tracing::info!(plugin = %meta.name, parent = %meta.parent, "controller started");
    let run = controller
        .with_config(ControllerConfig::default().concurrency(options.concurrency))
        .reconcile_all_on(resync)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let synced = tokio::spawn(synced);
    let watchdog =
        tokio::spawn(watch_progress(ctx_for_watchdog, health.clone(), meta.name.clone(), options.stall_after));
    run.await;
    assigner.abort();
    synced.abort();
    watchdog.abort();
    health.set_stalled(&meta.name, None);
    health.set_synced(&meta.name, true);
    tracing::info!(plugin = %meta.name, "controller stopped");
    Ok(())
}

/// The API of the parents to watch, and how a sharded replica selects its shards' parents: by
/// the server's `shardSelector` when the server honours it (through a client that adds it),
/// else by their shard label.
async fn parent_watch(
    client: &Client,
    parent: &kube::core::ApiResource,
    options: &ControllerOptions,
    plugin: &str,
) -> (Api<CachedObject>, Selection) {
    let api = |client: Client| match &options.namespace {
        Some(ns) => Api::namespaced_with(client, ns, parent),
        None => Api::all_with(client, parent),
    };
    let plain = api(client.clone());
    if !options.shards.is_split() {
        return (plain, Selection::Labels);
    }
    if shard::scope::server_honours(client, plain.resource_url()).await {
        tracing::info!(plugin, kind = %parent.kind, "the server honours shardSelector: this replica's parents are selected by it");
        let slot = shard::scope::ServerSelector::default();
        return (api(shard::scope::server_client(client, slot.clone())), Selection::Server(slot));
    }
    tracing::info!(plugin, kind = %parent.kind,
        "the server ignores shardSelector (no shardInfo in its list): parents are selected by their {} label",
        shard::scope::SHARD_LABEL);
    (plain, Selection::Labels)
}

/// Where the parents' watch events go: their cache, its size gauge, and the flag a sharded
/// watch raises while it delivers a re-scoped list.
struct ParentWatch {
    writer: Writer<CachedObject>,
    cached: prometheus_client::metrics::gauge::Gauge,
    rescoping: Arc<std::sync::atomic::AtomicBool>,
}

/// The parents that need a reconcile, from their watch through `writer` (the cache): those
/// whose generation changed (spec, deletion) — not status or metadata writes, or the host's own
/// status write would trigger the next reconcile. A list's parents are passed on at its end
/// ([`crate::relist`]). Each is noted in `triggers`: `start` for the first list's, `shard gained`
/// for a re-scoped list's (`rescoping`), `relist` for a relist's, `parent` otherwise.
fn parent_events(
    events: impl futures::Stream<Item = Result<watcher::Event<CachedObject>, watcher::Error>> + Send + 'static,
    watch: ParentWatch,
    triggers: Arc<Triggers>,
    start: Start,
) -> impl futures::Stream<Item = Result<CachedObject, watcher::Error>> + Send + 'static {
    let ParentWatch { writer, cached, rescoping } = watch;
    let store = writer.as_reader();
    let mut passing = Passing { rescoping, triggers, start, generations: Generations::default(), listing: None };
    crate::relist::at_list_end(events.reflect(writer)).filter_map(move |event| {
        cached.set(store.len() as i64);
        futures::future::ready(passing.on(event, &store))
    })
}

/// What [`parent_events`] passes on to the controller, event by event.
struct Passing {
    rescoping: Arc<std::sync::atomic::AtomicBool>,
    triggers: Arc<Triggers>,
    start: Start,
    generations: Generations,
    /// Why the parents of the list being delivered are reconciled (set when it starts).
    listing: Option<Trigger>,
}

impl Passing {
    fn on(
        &mut self,
        event: Result<watcher::Event<CachedObject>, watcher::Error>,
        store: &kube::runtime::reflector::Store<CachedObject>,
    ) -> Option<Result<CachedObject, watcher::Error>> {
        match event {
            Ok(watcher::Event::Apply(parent) | watcher::Event::InitApply(parent)) => {
                if !self.generations.changed(&parent) {
                    return None;
                }
                let trigger = self.listing.clone().unwrap_or(Trigger::Parent);
                self.triggers.note(&parent.uid().unwrap_or_default(), trigger);
                Some(Ok(parent))
            }
            Ok(watcher::Event::Delete(parent)) => {
                self.generations.forget(&parent);
                None
            }
            Ok(watcher::Event::Init) => {
                let rescoping = self.rescoping.load(std::sync::atomic::Ordering::Relaxed);
                self.listing = Some(match (self.generations.listed, rescoping) {
                    (false, _) => Trigger::Start(self.start),
                    (true, true) => Trigger::ShardGained,
                    (true, false) => Trigger::Relist,
                });
                None
            }
            Ok(watcher::Event::InitDone) => {
                self.generations.keep_cached(store);
                self.listing = None;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// The generation each cached parent was last passed on at: only a parent new to the cache or
/// with a new generation needs a reconcile. A parent that leaves the cache (deleted, or moved
/// to another replica's shard) is forgotten, so it is reconciled again when it comes back.
#[derive(Default)]
struct Generations {
    seen: std::collections::HashMap<String, Option<i64>>,
    /// The first list was delivered.
    listed: bool,
}

impl Generations {
    /// Whether `parent` is new or changed its generation (always, for a kind without one).
    fn changed(&mut self, parent: &CachedObject) -> bool {
        let generation = parent.metadata.generation;
        let before = self.seen.insert(parent.uid().unwrap_or_default(), generation);
        generation.is_none() || before != Some(generation)
    }

    fn forget(&mut self, parent: &CachedObject) {
        self.seen.remove(&parent.uid().unwrap_or_default());
    }

    /// After a list: forgets the parents the cache no longer holds (a relist or re-scope drops
    /// them without a delete event).
    fn keep_cached(&mut self, cache: &kube::runtime::reflector::Store<CachedObject>) {
        let cached: std::collections::HashSet<String> = cache.state().iter().filter_map(|p| p.uid()).collect();
        self.seen.retain(|uid, _| cached.contains(uid));
        self.listed = true;
    }
}

/// A watch of one read kind, feeding its cache.
type RelatedStream = futures::stream::BoxStream<'static, Result<CachedObject, watcher::Error>>;

/// What the cache held of each object before its latest event, by `namespace/name`: noted before
/// the event reaches the cache (after it, the old labels are gone) and taken when the event is
/// mapped to parents — at once for a watch event, at the list's end for a listed object.
type Before = Arc<std::sync::Mutex<std::collections::HashMap<String, Noted>>>;

/// The key of `obj` in [`Before`].
fn noted_key(obj: &CachedObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// An object's cached copy, against the event that replaces it.
#[derive(Default)]
struct Noted {
    /// The event changes nothing (a relist delivering the same resourceVersion): no parent
    /// needs it.
    unchanged: bool,
    /// The parents the cached copy's labels matched, when the labels changed.
    parents: Vec<ParentKey>,
}

/// The watches of the kinds a plugin reads (none without reads): one cache per kind, in
/// [`Related`], and per kind index the stream of its changed objects, to be mapped to the
/// parents that selected them. A kind read as metadata only is watched as metadata only.
async fn watch_related(
    client: &Client,
    reads: &[ReadKind],
    namespace: Option<&str>,
) -> Result<Option<(Arc<Related>, Vec<(usize, RelatedStream, Before)>)>, KindNotServed> {
    if reads.is_empty() {
        return Ok(None);
    }
    let (mut kinds, mut watches) = (Vec::new(), Vec::new());
    for read in reads {
        let (ar, namespaced) = resolve(client, &read.gvk).await?;
        // A host confined to one namespace reads there, unless the plugin reads cluster-wide.
        let within = match (namespace, namespaced, read.scope) {
            (Some(ns), true, ReadScope::SameNamespace) => Some(ns.to_string()),
            _ => None,
        };
        let writer = Writer::new(ar.clone());
        kinds.push(ReadKindCache { read: read.clone(), resource: ar.clone(), namespaced, store: writer.as_reader() });
        watches.push((related_events(client, &ar, within.as_deref(), read.metadata_only), writer));
    }
    let related = Arc::new(Related::new(kinds));
    let streams = watches
        .into_iter()
        .enumerate()
        .map(|(kind, (events, writer))| {
            let before: Before = Arc::default();
            let (related, noted) = (related.clone(), before.clone());
            let stream = events
                .default_backoff()
                .inspect_ok(move |event| note_before(&related, kind, event, &noted))
                .reflect(writer);
            // A list's objects wake their parents once the cache holds them.
            let stream = crate::relist::at_list_end(stream).touched_objects().boxed();
            (kind, stream, before)
        })
        .collect();
    Ok(Some((related, streams)))
}

/// The watch events of one read kind, as whole objects (without a body when metadata only).
fn related_events(
    client: &Client,
    ar: &kube::core::ApiResource,
    within: Option<&str>,
    metadata_only: bool,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<CachedObject>, watcher::Error>> {
    if metadata_only {
        let api: Api<PartialObjectMeta<DynamicObject>> = match within {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        let types = kube::core::TypeMeta { api_version: ar.api_version.clone(), kind: ar.kind.clone() };
        return watcher(api, watcher::Config::default()).map_ok(move |event| metadata_event(event, &types)).boxed();
    }
    let api: Api<CachedObject> = match within {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    watcher(api, watcher::Config::default()).boxed()
}

/// Before an object of read kind `kind` replaces its cached copy: whether it is unchanged (a
/// relist re-delivers every object; none needs a reconcile), and when its labels changed, the
/// parents the cached copy matched (it may leave their selections).
fn note_before(related: &Related, kind: usize, event: &watcher::Event<CachedObject>, before: &Before) {
    let obj = match event {
        watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => obj,
        // A list starting again: what an interrupted one noted is never taken.
        watcher::Event::Init => return noted(before).clear(),
        _ => return,
    };
    let cache = &related.kinds[kind];
    let Some(old) = cache.store.get(&kube::runtime::reflector::ObjectRef::from_obj_with(obj, cache.resource.clone()))
    else {
        return;
    };
    let unchanged =
        old.metadata.resource_version.is_some() && old.metadata.resource_version == obj.metadata.resource_version;
    let parents = if !unchanged && old.metadata.labels != obj.metadata.labels {
        related.parents_of(kind, &old)
    } else {
        Vec::new()
    };
    noted(before).insert(noted_key(obj), Noted { unchanged, parents });
}

/// The notes of [`Before`], even if a panic poisoned them.
fn noted(before: &Before) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Noted>> {
    match before.lock() {
        Ok(notes) => notes,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A metadata-only watch event as one of whole objects with no body.
fn metadata_event(
    event: watcher::Event<PartialObjectMeta<DynamicObject>>,
    types: &kube::core::TypeMeta,
) -> watcher::Event<CachedObject> {
    let object = |o: PartialObjectMeta<DynamicObject>| {
        CachedObject::from(PartialObjectMeta::<DynamicObject> { types: Some(types.clone()), ..o })
    };
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(object(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(object(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(object(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Where the parents a related object's change reaches are: their cache, kind and triggers.
struct Selecting {
    parents: kube::runtime::reflector::Store<CachedObject>,
    parent: kube::core::ApiResource,
    triggers: Arc<Triggers>,
}

/// Maps a changed object of read kind `kind` to the parents that select it now or selected it
/// before the change (`before`), noting the trigger (`related Kind ns/name`) on each.
fn related_parents(
    related: Arc<Related>,
    kind: usize,
    before: Before,
    to: Selecting,
) -> impl Fn(CachedObject) -> Vec<kube::runtime::reflector::ObjectRef<CachedObject>> + Send + Sync + 'static {
    move |obj| {
        let noted = noted(&before).remove(&noted_key(&obj)).unwrap_or_default();
        if noted.unchanged {
            return Vec::new();
        }
        let mut selecting = noted.parents;
        for parent in related.parents_of(kind, &obj) {
            if !selecting.contains(&parent) {
                selecting.push(parent);
            }
        }
        if selecting.is_empty() {
            return Vec::new();
        }
        let what =
            format!("{} {}/{}", related.kinds[kind].resource.kind, obj.namespace().unwrap_or_default(), obj.name_any());
        selecting
            .iter()
            .map(|p| {
                let oref = p.object_ref(&to.parent);
                if let Some(uid) = to.parents.get(&oref).and_then(|p| p.uid()) {
                    to.triggers.note(&uid, Trigger::Related(what.clone()));
                }
                oref
            })
            .collect()
    }
}

/// Each logic sent on `swaps`, installed as the controller's stable logic, as a trigger of
/// every parent (`reload`); nothing without `swaps`.
fn swapped(
    ctx: Arc<Context>,
    swaps: Option<tokio::sync::watch::Receiver<Option<reconcile::Logic>>>,
) -> impl futures::Stream<Item = Trigger> + Send + 'static {
    futures::stream::unfold((ctx, swaps), |(ctx, swaps)| async move {
        let mut rx = swaps?;
        loop {
            rx.changed().await.ok()?;
            let Some(logic) = rx.borrow_and_update().clone() else { continue };
            tracing::info!(plugin = %ctx.plugin.metadata().name, revision = logic.plugin.revision(),
                "new revision swapped in; reconciling every parent");
            match ctx.stable.write() {
                Ok(mut stable) => *stable = logic,
                Err(poisoned) => *poisoned.into_inner() = logic,
            }
            return Some((Trigger::Start(Start::Reload), (ctx, Some(rx))));
        }
    })
}

/// Notes a child's watch event as the trigger of its controller parent's reconcile (the
/// parent of kind `parent` named by a controller ownerReference).
fn note_child(
    triggers: Arc<Triggers>,
    parent: kube::core::ApiResource,
    kind: String,
) -> impl Fn(&CachedObject) + Send + 'static {
    move |child| {
        let owner = child
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == parent.kind && o.api_version == parent.api_version);
        if let Some(owner) = owner {
            let name = format!("{kind} {}/{}", child.namespace().unwrap_or_default(), child.name_any());
            triggers.note(&owner.uid, Trigger::Child(name));
        }
    }
}

/// Reports the controller stalled while reconciles are in flight and none has finished for
/// `after`: a warning naming the plugin, its reconciles in flight, the parents waiting for a
/// retry or requeue and the parents cached, and the same as a `/readyz` note (readiness is kept:
/// the replica still serves conversions). Says so again when reconciles finish once more.
async fn watch_progress(ctx: Arc<Context>, health: Arc<Health>, name: String, after: Duration) {
    let check = (after / 4).max(Duration::from_millis(50));
    let (mut last, mut since, mut stalled) = (0, tokio::time::Instant::now(), false);
    loop {
        tokio::time::sleep(check).await;
        let finished = ctx.progress.finished.load(std::sync::atomic::Ordering::Relaxed);
        let in_flight = ctx.progress.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        if finished != last || in_flight == 0 {
            if stalled {
                tracing::info!(plugin = %name, "controller progressing again");
                health.set_stalled(&name, None);
            }
            (last, since, stalled) = (finished, tokio::time::Instant::now(), false);
            continue;
        }
        if !stalled && since.elapsed() >= after {
            let note = format!(
                "no reconcile finished for {:?}: {in_flight} in flight, {} parents waiting for a retry or requeue, \
                 {} parents cached",
                since.elapsed(),
                ctx.state.scheduled(),
                ctx.parents.len()
            );
            tracing::warn!(plugin = %name, in_flight, "controller stalled: {note}");
            health.set_stalled(&name, Some(note));
            stalled = true;
        }
    }
}

/// Marks the controller synced in `health` once the parent cache and every child cache have
/// their first full list.
async fn wait_for_caches(ctx: Arc<Context>, health: Arc<Health>, name: String) {
    if !cache_ready(&ctx.parents).await {
        return;
    }
    for child in &ctx.children {
        if !cache_ready(&child.store).await {
            return;
        }
    }
    for read in ctx.related.iter().flat_map(|r| r.kinds.iter()) {
        if !cache_ready(&read.store).await {
            return;
        }
    }
    tracing::info!(plugin = %name, "caches synced");
    health.set_synced(&name, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(uid: &str, generation: Option<i64>) -> CachedObject {
        let ar = kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let mut parent = DynamicObject::new(uid, &ar);
        parent.metadata.uid = Some(uid.into());
        parent.metadata.generation = generation;
        CachedObject::from(parent)
    }

    #[test]
    fn a_parent_is_passed_on_when_new_changed_or_back_in_the_cache() {
        let mut generations = Generations::default();
        assert!(generations.changed(&parent("a", Some(1))), "new");
        assert!(!generations.changed(&parent("a", Some(1))), "a status write: same generation");
        assert!(generations.changed(&parent("a", Some(2))), "a spec change");
        assert!(generations.changed(&parent("n", None)) && generations.changed(&parent("n", None)), "no generation");
        // Moved out of the cache by a re-scope (no delete event): forgotten at the list's end,
        // so its return is a reconcile although its generation did not change.
        let ar = kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let mut writer = Writer::new(ar);
        let store = writer.as_reader();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        generations.keep_cached(&store);
        assert!(generations.listed);
        assert!(generations.changed(&parent("a", Some(2))), "back in the cache");
        generations.forget(&parent("a", Some(2)));
        assert!(generations.changed(&parent("a", Some(2))), "after a delete event");
    }
}
