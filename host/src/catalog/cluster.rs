//! The cluster source of the catalog: `WasmPlugin` objects.
//!
//! Every replica (leader, standbys and shards alike) watches the `WasmPlugin`s, fetches each
//! one's component (an OCI artifact through the on-disk [`ArtifactCache`], or a ConfigMap key)
//! and delivers the bytes to the catalog, which loads and arbitrates them exactly as it does
//! files. A fetch that fails leaves the previous revision serving; a deleted object is a
//! removed file. One replica, the status writer (the leader, the holder of shard 0, or the
//! only replica), resolves tags to digests — recorded in `status.resolved`, so every replica
//! pulls the same digest — and writes the status: `Ready`/`Degraded` with observedGeneration,
//! the digest and revision serving and the kinds served.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

mod staged;

use super::{Rejections, Snapshot, Source, Stage};
use crate::policy::Mode;
use crate::registry::{self, ArtifactCache, Credentials, Registry, RegistryError};
use crate::rollout::Figures;
use crate::telemetry::{Metrics, Revisions};
use crate::wasmplugin::{
    DEGRADED, PluginCondition, READY, Resolved, RolloutSpec, SourceRef, WasmPlugin, WasmPluginSpec, WasmPluginStatus,
};
use staged::{rolled_back_here, rollout_condition};

/// How long [`super::CatalogBuilder::start`] waits for the first fetch of every `WasmPlugin`.
const DEFAULT_INITIAL_WAIT: Duration = Duration::from_secs(30);
/// First wait before a fetch the registry failed is tried again; it doubles up to the most.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a failing fetch.
const RETRY_MOST: Duration = Duration::from_secs(120);
/// How often the status writer judges the rollouts in progress.
const ROLLOUT_TICK: Duration = Duration::from_secs(1);
/// Least time between two writes of a rollout's figures alone (a step change writes at once).
const FIGURES_EVERY: Duration = Duration::from_secs(5);

/// What the cluster source hands the catalog task.
pub(super) enum Delivery {
    /// A fetched version of `WasmPlugin` `name`.
    Put {
        /// The object's name.
        name: String,
        /// The component.
        bytes: Vec<u8>,
        /// Its settings (JSON).
        settings: Option<String>,
        /// A policy's mode, if the spec sets one.
        mode: Option<Mode>,
        /// The spec asks for a staged rollout: a new operator revision becomes a canary.
        staged: bool,
        /// Of the bytes, settings, mode and rollout: the same fingerprint is the same revision.
        fingerprint: String,
        /// Told once the snapshot is published.
        done: oneshot::Sender<()>,
    },
    /// The rollout of `WasmPlugin` `name` moved (its status says so).
    Stage {
        /// The object's name.
        name: String,
        /// What its canary does now.
        stage: Stage,
        /// Told once the snapshot is published.
        done: oneshot::Sender<()>,
    },
    /// `WasmPlugin` `name` is gone.
    Remove {
        /// The object's name.
        name: String,
        /// Told once the snapshot is published.
        done: oneshot::Sender<()>,
    },
}

/// How to follow the cluster's `WasmPlugin`s: the client, the operator's namespace (where pull
/// Secrets and ConfigMaps are read), the artifact cache, then optional settings.
#[must_use]
pub struct ClusterSource {
    client: Client,
    namespace: String,
    cache: ArtifactCache,
    registry: Registry,
    writer: watch::Receiver<bool>,
    initial_wait: Duration,
}

impl ClusterSource {
    /// A source reading Secrets and ConfigMaps in `namespace`, caching artifacts in `cache`.
    pub fn new(client: Client, namespace: String, cache: ArtifactCache) -> ClusterSource {
        let (_, writer) = watch::channel(true);
        ClusterSource {
            client,
            namespace,
            cache,
            registry: Registry::default(),
            writer,
            initial_wait: DEFAULT_INITIAL_WAIT,
        }
    }

    /// How to reach registries (default: HTTPS, the docker config's credentials, 64 MiB).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Whether this replica resolves tags and writes status, as it changes (default: always).
    pub fn status_writer(mut self, writer: watch::Receiver<bool>) -> Self {
        self.writer = writer;
        self
    }

    /// How long the start waits for the first fetch of every object (default 30 s).
    pub fn initial_wait(mut self, wait: Duration) -> Self {
        self.initial_wait = wait;
        self
    }

    /// Starts following; returns when every object listed has been fetched once (or refused),
    /// or after the initial wait.
    pub(super) async fn start(
        self,
        deliveries: mpsc::Sender<Delivery>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        rejections: Rejections,
        telemetry: &crate::telemetry::Telemetry,
    ) -> Running {
        let (ready_tx, ready) = oneshot::channel();
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let fetcher = Arc::new(Fetcher {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            cache: self.cache,
            registry: self.registry,
        });
        let actor = Actor {
            api: Api::all(self.client.clone()),
            fetcher,
            deliveries,
            snapshots,
            rejections,
            writer: self.writer,
            records: BTreeMap::new(),
            outcomes_tx,
            listed: false,
            ready: Some(ready_tx),
            revisions: telemetry.revisions.clone(),
            metrics: telemetry.metrics.clone(),
        };
        let task = tokio::spawn(actor.run(self.client, self.namespace, outcomes));
        if tokio::time::timeout(self.initial_wait, ready).await.is_err() {
            tracing::warn!(wait = ?self.initial_wait,
                "WasmPlugins not all fetched at start; they serve as their fetches complete");
        }
        Running { task }
    }
}

/// The running cluster source; stops when dropped.
pub(super) struct Running {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a fetch failed: a condition reason and what to do.
#[derive(Clone, Debug, PartialEq)]
struct Failure {
    reason: &'static str,
    message: String,
    transient: bool,
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure { reason: e.reason(), transient: e.is_transient(), message: e.to_string() }
    }
}

/// A fetched component.
struct Fetched {
    /// Digest of the artifact (of the content, for a ConfigMap).
    digest: String,
    bytes: Vec<u8>,
    /// The digest a tag resolved to in this fetch, to record.
    resolved: Option<String>,
    /// The ConfigMap's resourceVersion, for a ConfigMap source.
    config_map_version: Option<String>,
}

/// The result of one fetch try of one generation.
struct Outcome {
    name: String,
    generation: i64,
    result: Result<Fetched, Failure>,
    /// A fetch of the stable revision of a rollout in progress (see `staged`).
    stable: bool,
}

/// Fetches components: registry, cache, Secrets and ConfigMaps.
struct Fetcher {
    client: Client,
    namespace: String,
    cache: ArtifactCache,
    registry: Registry,
}

impl Fetcher {
    /// Fetches the component `spec` names; `pinned` is the digest a tag was resolved to.
    async fn fetch(&self, spec: &WasmPluginSpec, pinned: Option<&str>) -> Result<Fetched, Failure> {
        let source = spec.source().map_err(|message| Failure { reason: "InvalidSpec", message, transient: false })?;
        let oci = match source {
            SourceRef::Oci(oci) => oci,
            SourceRef::ConfigMap(source) => return self.fetch_config_map(&source.name, &source.key).await,
        };
        let reference = registry::parse_reference(&oci.reference)?;
        let credentials = match &oci.pull_secret_ref {
            Some(secret) => Some(self.pull_secret(&secret.name).await?),
            None => None,
        };
        let (digest, resolved) = match (reference.digest(), pinned) {
            (Some(digest), _) => (digest.to_string(), None),
            (None, Some(pinned)) => (pinned.to_string(), None),
            (None, None) => {
                let digest = self.registry.resolve(&reference, credentials.as_ref()).await?;
                (digest.clone(), Some(digest))
            }
        };
        if let Some(bytes) = self.cache.get(&digest) {
            return Ok(Fetched { digest, bytes, resolved, config_map_version: None });
        }
        let pinned = reference.clone_with_digest(digest.clone());
        let artifact = self.registry.pull(&pinned, credentials.as_ref()).await?;
        self.cache.put(&artifact.digest, &artifact.bytes);
        Ok(Fetched { digest: artifact.digest, bytes: artifact.bytes, resolved, config_map_version: None })
    }

    /// The registry credentials of pull Secret `name` in the operator's namespace.
    async fn pull_secret(&self, name: &str) -> Result<Credentials, Failure> {
        let origin = format!("Secret {}/{name}", self.namespace);
        let failure = |message: String| Failure { reason: "AuthRefused", message, transient: true };
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| failure(format!("cannot read pull {origin}: {e}")))?
            .ok_or_else(|| {
                failure(format!("pull {origin} does not exist; create it (kubectl create secret docker-registry)"))
            })?;
        let json = secret.data.and_then(|mut data| data.remove(".dockerconfigjson")).ok_or_else(|| {
            failure(format!(
                "pull {origin} has no .dockerconfigjson key; make it of type kubernetes.io/dockerconfigjson"
            ))
        })?;
        Ok(Credentials::DockerConfigJson { origin, json: json.0 })
    }

    /// The component in key `key` of ConfigMap `name` (binaryData, else data), gunzipped when
    /// compressed.
    async fn fetch_config_map(&self, name: &str, key: &str) -> Result<Fetched, Failure> {
        let origin = format!("ConfigMap {}/{name}", self.namespace);
        let config_map = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Failure { reason: "ConfigMapUnreadable", message: format!("cannot read {origin}: {e}"), transient: true })?
            .ok_or_else(|| Failure {
                reason: "ConfigMapNotFound",
                message: format!("{origin} does not exist; create it with kubectl create configmap {name} --from-file={key}=PLUGIN.wasm.gz"),
                transient: false,
            })?;
        let version = config_map.metadata.resource_version.clone();
        let raw = config_map
            .binary_data
            .and_then(|mut d| d.remove(key).map(|b| b.0))
            .or_else(|| config_map.data.and_then(|mut d| d.remove(key).map(String::into_bytes)))
            .ok_or_else(|| Failure {
                reason: "ConfigMapKeyNotFound",
                message: format!("{origin} has no key {key}; check spec.source.configMap.key"),
                transient: false,
            })?;
        let bytes = gunzip(raw, self.registry.limit()).map_err(|message| Failure {
            reason: "TooLarge",
            message: format!("{origin} key {key}: {message}"),
            transient: false,
        })?;
        Ok(Fetched { digest: registry::sha256(&bytes), bytes, resolved: None, config_map_version: version })
    }
}

/// `raw` itself, or its gzip content when it starts with the gzip magic; at most `limit` bytes.
fn gunzip(raw: Vec<u8>, limit: u64) -> Result<Vec<u8>, String> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("is not valid gzip: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("decompresses to over {limit} bytes, the limit; raise --max-plugin-size"));
    }
    Ok(out)
}

/// Of a component, its settings, mode and rollout: the catalog's revision key for a cluster
/// source (a changed rollout spec delivers the component again: a rolled-back one is retried).
fn fingerprint(bytes: &[u8], settings: Option<&str>, mode: Option<Mode>, rollout: Option<&RolloutSpec>) -> String {
    let hex = |b: &[u8]| Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mode = mode.map(|m| format!(":{m}")).unwrap_or_default();
    let rollout = rollout.map(|r| format!(":{}", hex(serde_json::to_string(r).unwrap_or_default().as_bytes())));
    format!("{}:{}{mode}{}", hex(bytes), hex(settings.unwrap_or("").as_bytes()), rollout.unwrap_or_default())
}

/// Where one object's newest generation stands.
#[derive(Clone, Debug, PartialEq)]
enum Progress {
    /// Being fetched.
    Pending,
    /// Its tag waits for the status writer's resolution (this replica is not the writer).
    AwaitingResolution,
    /// The fetch failed.
    Failed(Failure),
    /// Delivered to the catalog with this fingerprint.
    Delivered { fingerprint: String },
}

/// What the source knows of one `WasmPlugin`.
struct Record {
    object: WasmPlugin,
    /// The generation a fetch was started for, with the ConfigMap version it read.
    started: Option<(i64, Option<String>)>,
    fetch: Option<tokio::task::AbortHandle>,
    progress: Progress,
    /// The digest each delivered fingerprint came from, to report the serving one.
    digests: BTreeMap<String, String>,
    /// A resolution made here, not yet seen in the object's status.
    resolved: Option<Resolved>,
    /// Seen in the current (re)list.
    seen: bool,
    /// The figures of (stable, canary) when this replica started the rollout of the canary
    /// revision named, subtracted from what it counts since.
    baseline: Option<(String, Figures, Figures)>,
    /// When this replica last wrote the rollout's figures.
    figures_written: Option<tokio::time::Instant>,
    /// Where each delivered fingerprint came from, pinned, to record a rollout's stable source.
    sources: BTreeMap<String, crate::wasmplugin::StableSource>,
    /// A canary fetched at start, waiting for its stable revision to be fetched first.
    parked: Option<Fetched>,
    /// The generation whose stable revision was fetched (or tried) at start.
    stable_fetched: Option<i64>,
}

impl Record {
    fn generation(&self) -> i64 {
        self.object.metadata.generation.unwrap_or(0)
    }
}

/// The cluster source's task: owns the records, starts fetches, delivers, writes status.
struct Actor {
    api: Api<WasmPlugin>,
    fetcher: Arc<Fetcher>,
    deliveries: mpsc::Sender<Delivery>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    rejections: Rejections,
    writer: watch::Receiver<bool>,
    records: BTreeMap<String, Record>,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    /// The first list is complete.
    listed: bool,
    /// Told when the first list is complete and every object fetched once.
    ready: Option<oneshot::Sender<()>>,
    /// Reconciles and failures per revision, which the rollouts judge.
    revisions: Arc<Revisions>,
    metrics: Arc<Metrics>,
}

impl Actor {
    async fn run(mut self, client: Client, namespace: String, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        let plugins = watcher::watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let mut plugins = std::pin::pin!(plugins);
        let config_maps = watcher::watcher(
            Api::<PartialObjectMeta<ConfigMap>>::namespaced(client, &namespace),
            watcher::Config::default(),
        )
        .default_backoff();
        let mut config_maps = std::pin::pin!(config_maps);
        let mut rollouts = tokio::time::interval(ROLLOUT_TICK);
        rollouts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(event) = plugins.next() => match event {
                    Ok(event) => self.observe(event).await,
                    Err(e) => tracing::warn!(error = %e,
                        "watching WasmPlugins failed; retrying. Is the WasmPlugin CRD installed (deploy/ installs \
                         it; or `wasmop crd --wasmplugin | kubectl apply -f -`, or --install-crds) and may this \
                         operator list and watch wasmplugins (`wasmop rbac --plugin-sources dir,cluster`)?"),
                },
                Some(Ok(event)) = config_maps.next() => self.config_map_changed(event),
                Some(outcome) = outcomes.recv() => self.settle(outcome).await,
                Ok(()) = self.snapshots.changed() => self.write_all().await,
                Ok(()) = self.writer.changed() => self.write_all().await,
                _ = rollouts.tick() => self.drive_rollouts().await,
            }
            self.check_ready();
        }
    }

    /// Follows the watch: new generations fetched, deletions removed.
    async fn observe(&mut self, event: Event<WasmPlugin>) {
        match event {
            Event::Init => self.records.values_mut().for_each(|r| r.seen = false),
            Event::InitApply(object) | Event::Apply(object) => self.apply(object).await,
            Event::InitDone => {
                let gone: Vec<String> = self.records.iter().filter(|(_, r)| !r.seen).map(|(n, _)| n.clone()).collect();
                for name in gone {
                    self.remove(name).await;
                }
                self.listed = true;
            }
            Event::Delete(object) => self.remove(object.name_any()).await,
        }
    }

    async fn apply(&mut self, object: WasmPlugin) {
        let name = object.name_any();
        let record = self.records.entry(name.clone()).or_insert_with(|| Record {
            object: object.clone(),
            started: None,
            fetch: None,
            progress: Progress::Pending,
            digests: BTreeMap::new(),
            resolved: None,
            seen: true,
            baseline: None,
            figures_written: None,
            sources: BTreeMap::new(),
            parked: None,
            stable_fetched: None,
        });
        record.object = object;
        record.seen = true;
        let generation = record.generation();
        let started = record.started.as_ref().map(|(g, _)| *g);
        if started != Some(generation) {
            self.start_fetch(&name, None);
        }
        self.follow_rollout(&name).await;
        self.write(&name).await;
    }

    /// Starts (or restarts) fetching the record's newest generation, unless its tag waits for
    /// the status writer's resolution.
    fn start_fetch(&mut self, name: &str, config_map_version: Option<String>) {
        let writer = *self.writer.borrow();
        let Some(record) = self.records.get_mut(name) else { return };
        let generation = record.generation();
        let spec = record.object.spec.clone();
        let pinned = pinned_digest(record);
        let is_tag = spec
            .source
            .oci
            .as_ref()
            .is_some_and(|o| registry::parse_reference(&o.reference).is_ok_and(|r| r.digest().is_none()));
        if is_tag && pinned.is_none() && !writer {
            record.progress = Progress::AwaitingResolution;
            return;
        }
        if let Some(fetch) = record.fetch.take() {
            fetch.abort();
        }
        if record.started.as_ref().map(|(g, _)| *g) != Some(generation) {
            record.progress = Progress::Pending;
            record.resolved = None;
        }
        record.started = Some((generation, config_map_version));
        let (fetcher, tx, name) = (self.fetcher.clone(), self.outcomes_tx.clone(), name.to_string());
        let task = tokio::spawn(async move {
            let mut wait = RETRY_FIRST;
            loop {
                let result = fetcher.fetch(&spec, pinned.as_deref()).await;
                let retry = matches!(&result, Err(f) if f.transient);
                if tx.send(Outcome { name: name.clone(), generation, result, stable: false }).is_err() || !retry {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MOST);
            }
        });
        record.fetch = Some(task.abort_handle());
    }

    /// A ConfigMap in the operator's namespace changed: refetch the objects reading it.
    fn config_map_changed(&mut self, event: Event<PartialObjectMeta<ConfigMap>>) {
        let (Event::Apply(meta) | Event::InitApply(meta)) = event else { return };
        let name = meta.name_any();
        let version = meta.metadata.resource_version.clone();
        let stale: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.object.spec.source.config_map.as_ref().is_some_and(|c| c.name == name))
            // A new version, or one that appeared after a fetch found none.
            .filter(|(_, r)| matches!(&r.started, Some((_, read)) if read.as_ref() != version.as_ref()))
            .map(|(n, _)| n.clone())
            .collect();
        for plugin in stale {
            tracing::info!(wasmplugin = %plugin, configmap = %name, "ConfigMap changed; fetching the plugin again");
            self.start_fetch(&plugin, version.clone());
        }
    }

    /// Takes in a fetch's outcome: a good one is delivered, a failure reported.
    async fn settle(&mut self, outcome: Outcome) {
        let Outcome { name, generation, result, stable } = outcome;
        if stable {
            return self.settle_stable(name, generation, result).await;
        }
        let Some(record) = self.records.get_mut(&name) else { return };
        if record.generation() != generation {
            return;
        }
        match result {
            Ok(fetched) => self.take_in(&name, generation, fetched).await,
            Err(failure) => {
                if record.progress != Progress::Failed(failure.clone()) {
                    let snapshot = self.snapshots.borrow().clone();
                    let serving = serving(&snapshot, &name).map(|s| s.revision);
                    self.rejections.reject(&Source::Cluster(name.clone()), &failure.message, serving.as_deref()).await;
                }
                record.progress = Progress::Failed(failure);
            }
        }
        self.write(&name).await;
    }

    /// Delivers a fetched component to the catalog — unless its rollout spec is invalid, or
    /// this replica must first fetch the stable revision of a rollout, or the component was
    /// rolled back for this generation.
    async fn take_in(&mut self, name: &str, generation: i64, fetched: Fetched) {
        let snapshot = self.snapshots.borrow().clone();
        let Some(record) = self.records.get_mut(name) else { return };
        let settings = record.object.spec.settings.as_ref().map(|s| s.to_string());
        let (mode, rollout) = (record.object.spec.mode, record.object.spec.rollout.as_ref());
        let fingerprint = fingerprint(&fetched.bytes, settings.as_deref(), mode, rollout);
        if let Some(Err(message)) = rollout.map(RolloutSpec::plan) {
            let message = format!("spec.rollout: {message}");
            record.progress = Progress::Failed(Failure { reason: "InvalidSpec", message, transient: false });
            return;
        }
        // A replica starting during a rollout (or after its rollback) serves nothing of this
        // source yet: it fetches the stable revision first, as the others serve it.
        let stable = staged::stable_missing(record, &snapshot, &fetched.digest);
        let rolled_back = rolled_back_here(record, &fetched.digest);
        if stable.is_some() || rolled_back.is_some() {
            match rolled_back {
                Some(message) => {
                    record.progress = Progress::Failed(Failure { reason: "RolledBack", message, transient: false })
                }
                None => record.parked = Some(fetched),
            }
            if let Some(stable) = stable {
                self.fetch_stable(name, generation, stable);
            }
            return;
        }
        if let Some(digest) = fetched.resolved {
            let reference = record.object.spec.source.oci.as_ref().map(|o| o.reference.clone());
            record.resolved = reference.map(|reference| Resolved { reference, generation, digest });
        }
        if let (Some((_, read)), Some(version)) = (&mut record.started, fetched.config_map_version) {
            *read = Some(version);
        }
        // What no revision of this source serves any more is forgotten: the maps stay small.
        let live = staged::live_fingerprints(&snapshot, name);
        record.sources.retain(|f, _| live.contains(f));
        record.digests.retain(|f, _| live.contains(f));
        record.sources.insert(fingerprint.clone(), staged::pinned(&record.object.spec, &fetched.digest));
        record.digests.insert(fingerprint.clone(), fetched.digest);
        record.progress = Progress::Delivered { fingerprint: fingerprint.clone() };
        let staged = rollout.is_some();
        let (done, delivered) = oneshot::channel();
        let put =
            Delivery::Put { name: name.to_string(), bytes: fetched.bytes, settings, mode, staged, fingerprint, done };
        if self.deliveries.send(put).await.is_ok() {
            let _ = delivered.await;
        }
        self.follow_rollout(name).await;
    }

    async fn remove(&mut self, name: String) {
        let Some(record) = self.records.remove(&name) else { return };
        if let Some(fetch) = record.fetch {
            fetch.abort();
        }
        tracing::info!(wasmplugin = %name, "WasmPlugin deleted; its plugin stops serving");
        let (done, removed) = oneshot::channel();
        if self.deliveries.send(Delivery::Remove { name, done }).await.is_ok() {
            let _ = removed.await;
        }
    }

    /// Tells the start that every object listed has an outcome (or waits for the writer: at
    /// start no replica is the writer yet, the leader included).
    fn check_ready(&mut self) {
        if self.listed
            && self.records.values().all(|r| r.progress != Progress::Pending)
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(());
        }
    }

    async fn write_all(&mut self) {
        let names: Vec<String> = self.records.keys().cloned().collect();
        for name in &names {
            // A replica that just became the writer resolves the tags the others wait on.
            if self.records.get(name).is_some_and(|r| r.progress == Progress::AwaitingResolution) {
                self.start_fetch(name, None);
            }
            self.write(name).await;
        }
    }

    /// Writes the object's status if this replica is the writer and it changed.
    async fn write(&mut self, name: &str) {
        if !*self.writer.borrow() {
            return;
        }
        let snapshot = self.snapshots.borrow().clone();
        let Some(record) = self.records.get(name) else { return };
        let current = record.object.status.clone().unwrap_or_default();
        let Some(status) = status_of(record, &snapshot, &current) else { return };
        if status == current {
            return;
        }
        let patch = Patch::Merge(merge_patch(&status));
        match self.api.patch_status(name, &PatchParams::default(), &patch).await {
            Ok(object) => {
                if let Some(record) = self.records.get_mut(name) {
                    record.object = object;
                }
            }
            Err(e) => tracing::warn!(wasmplugin = name, error = %e, "cannot write the WasmPlugin's status"),
        }
    }
}

/// The digest a tag ref resolved to for the record's generation (recorded in its status, or
/// just resolved here).
fn pinned_digest(record: &Record) -> Option<String> {
    let oci = record.object.spec.source.oci.as_ref()?;
    let generation = record.generation();
    let recorded = record.object.status.as_ref().and_then(|s| s.resolved.as_ref());
    [recorded, record.resolved.as_ref()]
        .into_iter()
        .flatten()
        .find(|r| r.reference == oci.reference && r.generation == generation)
        .map(|r| r.digest.clone())
}

/// The revision of a `WasmPlugin` serving now.
struct Serving {
    revision: String,
    fingerprint: String,
    kinds: Vec<String>,
}

fn serving(snapshot: &Snapshot, name: &str) -> Option<Serving> {
    let source = Source::Cluster(name.to_string());
    let mut kinds = Vec::new();
    let mut found = None;
    for (kind, revision) in &snapshot.operators {
        if revision.source == source {
            kinds.push(kind.to_string());
            found = Some((revision.plugin.file().revision().to_string(), revision.fingerprint.clone()));
        }
    }
    if found.is_none() {
        found = snapshot
            .policies
            .iter()
            .find(|p| p.source == source)
            .map(|p| (p.plugin.file().revision().to_string(), p.fingerprint.clone()));
    }
    found.map(|(revision, fingerprint)| Serving { revision, fingerprint, kinds })
}

/// The status the record should have, or `None` while its newest generation is undecided.
fn status_of(record: &Record, snapshot: &Snapshot, current: &WasmPluginStatus) -> Option<WasmPluginStatus> {
    let name = record.object.name_any();
    let generation = record.generation();
    let serving = serving(snapshot, &name);
    let source = Source::Cluster(name);
    let staged = match &record.progress {
        Progress::Delivered { fingerprint } => rollout_condition(record, snapshot, fingerprint),
        _ => None,
    };
    let (ready, reason, message) = match (staged, &record.progress) {
        (Some(said), _) => said,
        (None, Progress::Pending | Progress::AwaitingResolution) => return None,
        (None, Progress::Failed(failure)) => ("False", failure.reason, failure.message.clone()),
        (None, Progress::Delivered { fingerprint }) => match (&serving, snapshot.rejected.get(&source)) {
            (Some(s), None) if s.fingerprint == *fingerprint => {
                let message = match s.kinds.is_empty() {
                    true => format!("revision {} reviews as a policy", s.revision),
                    false => format!("revision {} serves {}", s.revision, s.kinds.join(", ")),
                };
                ("True", "Serving", message)
            }
            (_, Some(refusal)) if snapshot.conflicts.contains(&source) => ("False", "KindConflict", refusal.clone()),
            (_, Some(refusal)) if snapshot.settings_refused.contains(&source) => {
                ("False", "InvalidSpec", refusal.clone())
            }
            (_, Some(refusal)) => ("False", "NotAWasmopPlugin", refusal.clone()),
            _ => return None,
        },
    };
    let degraded = match (&serving, ready) {
        (Some(s), "False") => (
            "True",
            "PreviousRevisionServing",
            format!("revision {} of an earlier generation keeps serving", s.revision),
        ),
        _ => ("False", "AsExpected", String::from("nothing older serves in its place")),
    };
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        let previous = current.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => jiff::Timestamp::now().to_string(),
        };
        PluginCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: crate::text::cap(&message, crate::status::MAX_EVENT_NOTE),
            observed_generation: generation,
            last_transition_time,
        }
    };
    let resolved = pinned_digest(record).and_then(|digest| {
        let oci = record.object.spec.source.oci.as_ref()?;
        Some(Resolved { reference: oci.reference.clone(), generation, digest })
    });
    Some(WasmPluginStatus {
        observed_generation: Some(generation),
        conditions: vec![condition(READY, (ready, reason, message)), condition(DEGRADED, degraded)],
        digest: serving
            .as_ref()
            .and_then(|s| record.digests.get(&s.fingerprint).cloned())
            .or_else(|| current.digest.clone()),
        revision: serving.as_ref().map(|s| s.revision.clone()),
        kinds: serving.map(|s| s.kinds).unwrap_or_default(),
        resolved: resolved.or_else(|| current.resolved.clone()),
        rollout: current.rollout.clone(),
    })
}

/// A merge patch setting the whole status: absent optional fields are cleared.
fn merge_patch(status: &WasmPluginStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in ["digest", "revision", "kinds", "resolved"] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn gzip_content_is_unpacked_within_the_limit_and_raw_content_kept() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&[7u8; 1000]).unwrap();
        let packed = encoder.finish().unwrap();
        assert_eq!(gunzip(packed.clone(), 1000).unwrap(), vec![7u8; 1000]);
        assert!(gunzip(packed, 999).unwrap_err().contains("over 999 bytes"));
        assert_eq!(gunzip(b"\0asm".to_vec(), 10).unwrap(), b"\0asm");
    }

    #[test]
    fn settings_are_part_of_the_fingerprint() {
        assert_ne!(fingerprint(b"x", None, None, None), fingerprint(b"x", Some("{\"a\":1}"), None, None));
        assert_eq!(fingerprint(b"x", None, None, None), fingerprint(b"x", Some(""), None, None));
        assert_ne!(fingerprint(b"x", None, None, None), fingerprint(b"x", None, Some(Mode::Monitor), None));
        let rollout = RolloutSpec { steps: vec![], selector: None, analysis: None };
        assert_ne!(fingerprint(b"x", None, None, None), fingerprint(b"x", None, None, Some(&rollout)));
    }
}
