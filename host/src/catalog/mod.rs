//! The catalog of plugin revisions: the one owner of plugin sources.
//!
//! The catalog watches the plugins directory, reads and loads each file version once (keyed
//! by the sha256 of its bytes and of its `NAME.toml` sidecar), decides which revision serves
//! each parent kind and which policies review, reports every refusal (log, counter, a
//! `PluginRejected` Event), and hands out immutable [`Snapshot`]s of the result. Everything
//! that needs plugins reads those snapshots: the supervisor's controllers, the conversion
//! webhook's converters, `wasmop run`'s fail-fast check, for every watched namespace alike.
//!
//! A [`Source`] names where a revision comes from: a file of the directory, or a `WasmPlugin`
//! object of the cluster (see [`cluster`]), whose bytes come from a registry or a ConfigMap.
//! Both feed the same entries, loads and arbitration, with the same guarantees; a revision is
//! plain data ([`Revision`]), so a second resident revision of one plugin adds a field, not
//! another owner.

pub mod cluster;
mod events;
mod scan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot, watch};

pub use cluster::ClusterSource;
pub use events::Rejections;
pub use scan::{PluginSet, load_dir, plugin_files};

use crate::plugin::{Limits, LoadedPlugin, OperatorPlugin, PluginError, PolicyPlugin, ReconcileRequest, Runtime};
use crate::policy::Mode;
use crate::telemetry::Telemetry;
use cluster::Delivery;
use scan::Stamp;

/// Quiet time after the last file event before the directory is rescanned, so editors, `cp`
/// writing in several steps and the `..data` symlink swap of a mounted ConfigMap end in one
/// load of the final bytes.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The parent kind an operator plugin serves, as (group, kind): one revision serves each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KindKey {
    /// API group of the parent.
    pub group: String,
    /// Kind of the parent.
    pub kind: String,
}

impl KindKey {
    /// The kind `plugin` serves.
    pub fn of(plugin: &OperatorPlugin) -> KindKey {
        let parent = &plugin.metadata().parent;
        KindKey { group: parent.group.clone(), kind: parent.kind.clone() }
    }
}

impl fmt::Display for KindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.group)
    }
}

/// Where a revision comes from. The order is the arbitration order: files (in name order)
/// before `WasmPlugin`s (in name order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A `*.wasm` file of the plugins directory, with its `NAME.toml` sidecar.
    File(PathBuf),
    /// A `WasmPlugin` object, by name.
    Cluster(String),
}

impl Source {
    /// The short name Events use for the source (a file's name, a WasmPlugin's name).
    pub fn short_name(&self) -> String {
        match self {
            Source::File(path) => {
                path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
            }
            Source::Cluster(name) => name.clone(),
        }
    }

    /// The path the runtime names the plugin by in errors and logs.
    fn display_path(&self) -> PathBuf {
        match self {
            Source::File(path) => path.clone(),
            Source::Cluster(name) => PathBuf::from(format!("wasmplugin/{name}")),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Cluster(name) => write!(f, "WasmPlugin {name}"),
        }
    }
}

/// One loaded version of a plugin with its settings: immutable, shared by every snapshot and
/// reader that holds it.
#[derive(Debug)]
pub struct Revision<P> {
    /// Where it came from.
    pub source: Source,
    /// The loaded plugin.
    pub plugin: P,
    /// Settings passed to the plugin on every call (JSON), from its sidecar.
    pub settings: Option<String>,
    /// A policy's mode (protect for operators).
    pub mode: Mode,
    /// sha256 of the plugin's bytes and of its sidecar's: a change to either is a new revision.
    pub fingerprint: String,
}

/// A loaded operator plugin version.
pub type OperatorRevision = Revision<OperatorPlugin>;
/// A loaded policy plugin version.
pub type PolicyRevision = Revision<PolicyPlugin>;

/// A second resident revision of an operator plugin while a staged rollout runs: it serves
/// the share of parents its stage says (see [`crate::rollout::serves_canary`]), the stable
/// revision the others.
#[derive(Debug)]
pub struct Canary {
    /// The revision rolled out.
    pub revision: Arc<OperatorRevision>,
    /// The share of parents it serves, 0–100.
    pub percent: u32,
    /// Parents matching it are on the canary at every step.
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// What a rollout's status tells the catalog to do with a source's canary.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Serve this share of parents (and the selected ones).
    Share {
        /// 0–100.
        percent: u32,
        /// Parents on the canary whatever the share.
        selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    },
    /// The canary becomes the stable revision.
    Complete,
    /// The canary goes; the stable revision serves every parent.
    RollBack,
}

/// What serves at one moment. Handed out whole and never changed: a new state is a new
/// snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The operator revision serving each parent kind.
    pub operators: BTreeMap<KindKey, Arc<OperatorRevision>>,
    /// The canary of a staged rollout, per parent kind, beside the revision in `operators`.
    pub canaries: BTreeMap<KindKey, Arc<Canary>>,
    /// The policy revisions, in review order (source order).
    pub policies: Vec<Arc<PolicyRevision>>,
    /// Sources present but not serving (or whose newest version is refused while an older one
    /// serves), with why.
    pub rejected: BTreeMap<Source, String>,
    /// The rejected sources refused only because an earlier source serves their kind (or
    /// policy name): they take over when it goes.
    pub conflicts: BTreeSet<Source>,
    /// The rejected sources refused for what their sidecar or spec says (a `mode`), not for
    /// their component.
    pub settings_refused: BTreeSet<Source>,
}

impl Snapshot {
    /// The operator plugin serving `group` `kind`, if any.
    pub fn operator(&self, group: &str, kind: &str) -> Option<&Arc<OperatorRevision>> {
        self.operators.get(&KindKey { group: group.to_string(), kind: kind.to_string() })
    }

    /// Whether `other` serves exactly the same revisions (refusals aside).
    pub fn serves_same(&self, other: &Snapshot) -> bool {
        self.operators.len() == other.operators.len()
            && self.operators.iter().zip(&other.operators).all(|((k, a), (l, b))| k == l && Arc::ptr_eq(a, b))
            && self.policies.len() == other.policies.len()
            && self.policies.iter().zip(&other.policies).all(|(a, b)| Arc::ptr_eq(a, b))
            && self.canaries.len() == other.canaries.len()
            && self.canaries.iter().zip(&other.canaries).all(|((k, a), (l, b))| k == l && Arc::ptr_eq(a, b))
    }
}

/// The catalog cannot follow its sources.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The plugins directory cannot be read.
    #[error("cannot read plugins directory {path}: {source}; check that it exists and is readable")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugins directory cannot be watched for changes.
    #[error("cannot watch plugins directory {path} for changes: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

/// How to start a [`Catalog`]: the runtime, then its sources and optional settings.
#[must_use]
pub struct CatalogBuilder {
    runtime: Arc<Runtime>,
    dir: Option<PathBuf>,
    cluster: Option<ClusterSource>,
    client: Option<Client>,
    namespace: Option<String>,
    telemetry: Telemetry,
}

impl CatalogBuilder {
    /// Follow the plugins directory `dir` (its `*.wasm` files and their sidecars).
    pub fn dir(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Follow the cluster's `WasmPlugin` objects too.
    pub fn cluster(mut self, source: ClusterSource) -> Self {
        self.cluster = Some(source);
        self
    }

    /// Publish refusals as `PluginRejected` Events through `client` (default: logs and
    /// counters only). Out of a cluster they are about `namespace` (else `default`); in a Pod
    /// (POD_NAME, POD_NAMESPACE) about the Pod.
    pub fn events(mut self, client: Client, namespace: Option<String>) -> Self {
        self.client = Some(client);
        self.namespace = namespace;
        self
    }

    /// Counters and metrics to record loads and refusals into (default: fresh ones).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Reads every source once (the first snapshot is ready when this returns: the directory
    /// scanned, the `WasmPlugin`s listed and fetched, bounded by the cluster source's wait),
    /// then follows their changes in tasks until the catalog is dropped.
    pub async fn start(self) -> Result<Catalog, CatalogError> {
        let rejections = Rejections::new(self.client, self.namespace.as_deref(), &self.telemetry);
        let telemetry = self.telemetry.clone();
        let (events_tx, events) = mpsc::unbounded_channel();
        let watcher = match &self.dir {
            Some(dir) => Some(watch_dir(dir, events_tx)?),
            None => None,
        };
        let mut state = State {
            runtime: self.runtime,
            dir: self.dir.clone(),
            entries: BTreeMap::new(),
            duplicates: HashMap::new(),
            rejections: rejections.clone(),
            telemetry: self.telemetry,
        };
        let first = state
            .rescan()
            .await
            .map_err(|source| CatalogError::Dir { path: self.dir.clone().unwrap_or_default(), source })?;
        let (tx, snapshots) = watch::channel(Arc::new(first));
        let (deliveries_tx, deliveries) = mpsc::channel(16);
        let task = tokio::spawn(follow(state, watcher, events, deliveries, tx));
        let cluster = match self.cluster {
            Some(source) => Some(source.start(deliveries_tx, snapshots.clone(), rejections.clone(), &telemetry).await),
            None => None,
        };
        Ok(Catalog { snapshots, rejections, telemetry, dir: self.dir, task, _cluster: cluster })
    }
}

/// Watches `dir` for changes, sending one message per change (reads excepted).
fn watch_dir(dir: &Path, events: mpsc::UnboundedSender<()>) -> Result<notify::RecommendedWatcher, CatalogError> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (the catalog's own among them) are not changes: following them would
        // rescan forever.
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = events.send(());
        }
    })
    .map_err(|source| CatalogError::Watch { path: dir.to_path_buf(), source })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| CatalogError::Watch { path: dir.to_path_buf(), source })?;
    Ok(watcher)
}

/// The running catalog: the latest snapshot, and a way to follow the next ones. Stops
/// following the sources when dropped.
pub struct Catalog {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    rejections: Rejections,
    telemetry: Telemetry,
    dir: Option<PathBuf>,
    task: tokio::task::JoinHandle<()>,
    _cluster: Option<cluster::Running>,
}

impl Catalog {
    /// A builder of a catalog; give it a directory, a cluster source, or both.
    pub fn builder(runtime: Arc<Runtime>) -> CatalogBuilder {
        CatalogBuilder { runtime, dir: None, cluster: None, client: None, namespace: None, telemetry: Telemetry::new() }
    }

    /// What serves now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every new snapshot (it sees the current one as already seen).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Where refusals are reported, for what refuses a revision after the catalog (the
    /// supervisor's permission check).
    pub fn rejections(&self) -> Rejections {
        self.rejections.clone()
    }

    /// The counters and metrics the catalog records into: the supervisor's default, so the
    /// controllers count per revision what the catalog's rollouts judge.
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// The directory followed, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rescans after every burst of file changes, takes in every delivery of the cluster source,
/// and publishes what changed.
async fn follow(
    mut state: State,
    _watcher: Option<notify::RecommendedWatcher>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut deliveries: mpsc::Receiver<Delivery>,
    tx: watch::Sender<Arc<Snapshot>>,
) {
    loop {
        let (next, done) = tokio::select! {
            Some(()) = events.recv() => {
                // Wait for the burst to end: the last write wins.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
                match state.rescan().await {
                    Ok(next) => (next, None),
                    Err(e) => {
                        let dir = state.dir.as_deref().unwrap_or(Path::new("")).display().to_string();
                        tracing::error!(dir, error = %e, "cannot read plugins directory");
                        continue;
                    }
                }
            }
            Some(delivery) = deliveries.recv() => {
                let (next, done) = state.deliver(delivery).await;
                (next, Some(done))
            }
            else => break,
        };
        tx.send_if_modified(|current| {
            let changed = !current.serves_same(&next) || current.rejected != next.rejected;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// What the catalog knows of one source.
struct Entry {
    /// What a file and its sidecar looked like when last read: unchanged, it is not read.
    stamp: Option<Stamp>,
    /// Of the bytes last read.
    fingerprint: String,
    /// The newest good version, serving until a newer good one replaces it.
    loaded: Option<Loaded>,
    /// Why the newest version read is refused, if it is.
    failure: Option<Refused>,
    /// A newer operator revision rolled out beside `loaded` (a `WasmPlugin` with
    /// `spec.rollout`), with the share it serves.
    canary: Option<Arc<Canary>>,
}

/// Why a version is not loaded.
enum Refused {
    /// The component: unreadable, not a plugin, crashed its smoke test, switched worlds.
    Component(String),
    /// What its sidecar or spec says about it (a `mode` it may not have or take).
    Settings(String),
}

impl Refused {
    /// Why, for the log, the Event and the status.
    fn reason(&self) -> &str {
        match self {
            Refused::Component(reason) | Refused::Settings(reason) => reason,
        }
    }
}

/// The bytes of a version to load, with what the runtime needs besides.
struct Content {
    bytes: Vec<u8>,
    limits: Limits,
    settings: Option<String>,
    mode: Option<Mode>,
    /// A new operator revision is rolled out beside the serving one, not put in its place.
    staged: bool,
}

/// A loaded revision of either world.
#[derive(Clone)]
enum Loaded {
    Operator(Arc<OperatorRevision>),
    Policy(Arc<PolicyRevision>),
}

/// The catalog's own state, owned by its task.
struct State {
    runtime: Arc<Runtime>,
    dir: Option<PathBuf>,
    entries: BTreeMap<Source, Entry>,
    /// The last duplicate refusal reported per source, so it is reported once.
    duplicates: HashMap<Source, String>,
    rejections: Rejections,
    telemetry: Telemetry,
}

impl State {
    /// Brings the file entries in line with the directory: files gone are forgotten, files
    /// whose stamp changed are read, and loaded when their content changed. Returns what
    /// serves now.
    async fn rescan(&mut self) -> std::io::Result<Snapshot> {
        if let Some(dir) = self.dir.clone() {
            let files = plugin_files(&dir)?;
            let gone = |source: &Source| matches!(source, Source::File(path) if !files.contains(path));
            self.entries.retain(|source, _| !gone(source));
            self.duplicates.retain(|source, _| !gone(source));
            for path in files {
                let stamp = Stamp::of(&path);
                let source = Source::File(path);
                if self.entries.get(&source).is_some_and(|e| e.stamp.as_ref() == Some(&stamp) && !stamp.is_recent()) {
                    continue;
                }
                let Source::File(path) = &source else { continue };
                let read = scan::read(path);
                let fingerprint = read.fingerprint();
                let content = read.into_parts().map_err(|e| e.to_string()).and_then(|(bytes, sidecar)| {
                    match scan::over_configmap_limit(&dir, bytes.len()) {
                        Some(reason) => Err(reason),
                        None => Ok(Content {
                            bytes,
                            limits: sidecar.limits,
                            settings: sidecar.settings,
                            mode: sidecar.mode,
                            staged: false,
                        }),
                    }
                });
                self.refresh(source, Some(stamp), fingerprint, content).await;
            }
        }
        self.telemetry.reloads.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.settle().await)
    }

    /// Takes in a delivery of the cluster source; returns what serves now and whom to tell.
    async fn deliver(&mut self, delivery: Delivery) -> (Snapshot, oneshot::Sender<()>) {
        let done = match delivery {
            Delivery::Put { name, bytes, settings, mode, staged, fingerprint, done } => {
                let content = Content { bytes, limits: Limits::default(), settings, mode, staged };
                self.refresh(Source::Cluster(name), None, fingerprint, Ok(content)).await;
                done
            }
            Delivery::Stage { name, stage, done } => {
                if let Some(entry) = self.entries.get_mut(&Source::Cluster(name)) {
                    entry.stage(stage);
                }
                done
            }
            Delivery::Remove { name, done } => {
                let source = Source::Cluster(name);
                self.entries.remove(&source);
                self.duplicates.remove(&source);
                done
            }
        };
        (self.settle().await, done)
    }

    /// Who serves now, with the duplicate refusals reported.
    async fn settle(&mut self) -> Snapshot {
        let (snapshot, duplicates) = self.arbitrate();
        self.report_duplicates(duplicates).await;
        snapshot
    }

    /// Records a version of `source` read with `fingerprint`; loads it when its content
    /// changed. A refused version leaves the previous good one serving.
    async fn refresh(
        &mut self,
        source: Source,
        stamp: Option<Stamp>,
        fingerprint: String,
        content: Result<Content, String>,
    ) {
        let previous = self.entries.remove(&source);
        let (loaded, known, canary) =
            previous.map_or((None, None, None), |e| (e.loaded, Some((e.fingerprint, e.failure)), e.canary));
        if let Some((known, failure)) = known.filter(|(f, _)| *f == fingerprint) {
            self.entries.insert(source, Entry { stamp, fingerprint: known, loaded, failure, canary });
            return;
        }
        let staged = content.as_ref().is_ok_and(|c| c.staged);
        let outcome = match content {
            Ok(content) => self.load(&source, content, &fingerprint, loaded.as_ref()).await,
            Err(reason) => Err(Refused::Component(reason)),
        };
        let entry = match outcome {
            Ok(fresh) if staged => staged_entry(&source, loaded.clone(), fresh).map_err(Refused::Settings),
            Ok(fresh) => Ok((Some(fresh), None)),
            Err(refused) => Err(refused),
        };
        let (loaded, failure, canary) = match entry {
            Ok((fresh, canary)) => (fresh, None, canary),
            Err(refused) => {
                let serving = loaded.as_ref().map(|l| l.revision().to_string());
                self.rejections.reject(&source, &refused.reason(), serving.as_deref()).await;
                // A canary of an earlier version is not what the source asks for any more.
                (loaded, Some(refused), None)
            }
        };
        self.entries.insert(source, Entry { stamp, fingerprint, loaded, failure, canary });
    }

    /// Loads and smoke-tests `content`, off the async threads.
    async fn load(
        &self,
        source: &Source,
        content: Content,
        fingerprint: &str,
        previous: Option<&Loaded>,
    ) -> Result<Loaded, Refused> {
        let Content { bytes, limits, settings, mode, staged: _ } = content;
        let (runtime, file) = (self.runtime.clone(), source.display_path());
        let result =
            tokio::task::spawn_blocking(move || runtime.load_bytes(&file, &bytes, limits).and_then(smoke_test))
                .await
                .unwrap_or_else(|e| Err(PluginError::Trap { plugin: source.to_string(), message: e.to_string() }));
        let (source, fingerprint) = (source.clone(), fingerprint.to_string());
        let loaded = match result.map_err(|e| Refused::Component(e.to_string()))? {
            LoadedPlugin::Operator(_) if mode.is_some() => {
                let message = "`mode` applies to policy plugins only; remove it from the operator's sidecar or spec";
                return Err(Refused::Settings(message.into()));
            }
            LoadedPlugin::Operator(plugin) => {
                tracing::info!(plugin = %plugin.metadata().name, source = %source,
                    revision = plugin.file().revision(), "loaded operator plugin");
                Loaded::Operator(Arc::new(Revision { source, plugin, settings, mode: Mode::Protect, fingerprint }))
            }
            LoadedPlugin::Policy(plugin) => {
                let mode = mode.unwrap_or_default();
                tracing::info!(policy = %plugin.metadata().name, source = %source, %mode,
                    revision = plugin.file().revision(), "loaded policy plugin");
                Loaded::Policy(Arc::new(Revision { source, plugin, settings, mode, fingerprint }))
            }
        };
        match (previous, &loaded) {
            (Some(Loaded::Policy(was)), Loaded::Policy(now))
                if was.mode == Mode::Protect && now.mode == Mode::Monitor =>
            {
                Err(Refused::Settings(format!(
                    "policy {} protects and may not go back to monitor mode; the protecting revision keeps \
                     serving. Remove it (the file, or the WasmPlugin) and add it again to monitor",
                    was.plugin.metadata().name
                )))
            }
            (Some(Loaded::Operator(_)), Loaded::Policy(_)) => {
                Err(Refused::Component(world_switch("operator", "policy")))
            }
            (Some(Loaded::Policy(_)), Loaded::Operator(_)) => {
                Err(Refused::Component(world_switch("policy", "operator")))
            }
            _ => Ok(loaded),
        }
    }

    /// Who serves: per parent kind the first source in order (files by name, then
    /// `WasmPlugin`s by name, so the choice is the same after a restart), per policy name
    /// likewise; the others are refused and held, to take over when the first goes.
    fn arbitrate(&self) -> (Snapshot, BTreeMap<Source, String>) {
        let mut snapshot = Snapshot::default();
        let mut duplicates = BTreeMap::new();
        let mut policy_owner: HashMap<String, &Source> = HashMap::new();
        let mut kind_owner: HashMap<KindKey, &Source> = HashMap::new();
        for (source, entry) in &self.entries {
            if let Some(failure) = &entry.failure {
                snapshot.rejected.insert(source.clone(), failure.reason().to_string());
                if matches!(failure, Refused::Settings(_)) {
                    snapshot.settings_refused.insert(source.clone());
                }
            }
            match &entry.loaded {
                None => {}
                Some(Loaded::Operator(rev)) => {
                    let kind = KindKey::of(&rev.plugin);
                    if let Some(owner) = kind_owner.get(&kind) {
                        let reason = format!(
                            "parent kind {} is already served by {owner} (files in name order serve first, then \
                             WasmPlugins in name order); remove one of the two",
                            rev.plugin.metadata().parent,
                        );
                        duplicates.insert(source.clone(), reason);
                        continue;
                    }
                    kind_owner.insert(kind.clone(), source);
                    if let Some(canary) = &entry.canary {
                        snapshot.canaries.insert(kind.clone(), canary.clone());
                    }
                    snapshot.operators.insert(kind, rev.clone());
                }
                Some(Loaded::Policy(rev)) => {
                    let name = rev.plugin.metadata().name.clone();
                    if let Some(owner) = policy_owner.get(&name) {
                        let reason = format!(
                            "policy {name} is already loaded from {owner} (files in name order first, then \
                             WasmPlugins in name order); remove one of the two"
                        );
                        duplicates.insert(source.clone(), reason);
                        continue;
                    }
                    policy_owner.insert(name, source);
                    snapshot.policies.push(rev.clone());
                }
            }
        }
        for (source, reason) in &duplicates {
            snapshot.rejected.entry(source.clone()).or_insert_with(|| reason.clone());
            snapshot.conflicts.insert(source.clone());
        }
        (snapshot, duplicates)
    }

    /// Reports each source newly refused as a duplicate, once per reason.
    async fn report_duplicates(&mut self, duplicates: BTreeMap<Source, String>) {
        self.duplicates.retain(|source, _| duplicates.contains_key(source));
        for (source, reason) in duplicates {
            if self.duplicates.get(&source) == Some(&reason) {
                continue;
            }
            self.rejections.reject(&source, &reason, None).await;
            self.duplicates.insert(source, reason);
        }
    }
}

/// Where a new revision of a source with a staged rollout goes: beside the serving operator
/// revision as its canary (serving no parent until the rollout's status gives it a share), or
/// in its place when nothing serves yet, it is a policy, or it is the same component. Returns
/// (loaded, canary), or why the rollout cannot run.
fn staged_entry(
    source: &Source,
    serving: Option<Loaded>,
    fresh: Loaded,
) -> Result<(Option<Loaded>, Option<Arc<Canary>>), String> {
    let (Some(Loaded::Operator(stable)), Loaded::Operator(canary)) = (&serving, &fresh) else {
        return Ok((Some(fresh), None));
    };
    if stable.plugin.file().revision() == canary.plugin.file().revision() {
        return Ok((Some(fresh), None));
    }
    if !stable.plugin.metadata().same_shape(canary.plugin.metadata()) {
        return Err(format!(
            "{source}: revision {} changes the parent kind, child kinds, finalizer, CRD or read kinds of revision {}, \
             which a staged rollout cannot serve side by side; remove spec.rollout to replace it at once",
            canary.plugin.file().revision(),
            stable.plugin.file().revision()
        ));
    }
    let canary = Canary { revision: canary.clone(), percent: 0, selector: None };
    Ok((serving, Some(Arc::new(canary))))
}

impl Entry {
    /// Follows the rollout's status: a new share, the canary promoted, or dropped.
    fn stage(&mut self, stage: Stage) {
        let Some(canary) = self.canary.take() else { return };
        match stage {
            Stage::Share { percent, selector } if canary.percent == percent && canary.selector == selector => {
                self.canary = Some(canary);
            }
            Stage::Share { percent, selector } => {
                self.canary = Some(Arc::new(Canary { revision: canary.revision.clone(), percent, selector }));
            }
            Stage::Complete => self.loaded = Some(Loaded::Operator(canary.revision.clone())),
            Stage::RollBack => {}
        }
    }
}

impl Loaded {
    fn revision(&self) -> &str {
        match self {
            Loaded::Operator(r) => r.plugin.file().revision(),
            Loaded::Policy(r) => r.plugin.file().revision(),
        }
    }
}

fn world_switch(was: &str, now: &str) -> String {
    format!(
        "the file switched from world {was} to world {now}; the {was} keeps serving. Give the {now} plugin a file of its own"
    )
}

/// Calls a new operator plugin once on a minimal parent of its kind before it may serve: any
/// answer (even `invalid`) passes; a crash, timeout or memory blow-up refuses it.
fn smoke_test(loaded: LoadedPlugin) -> Result<LoadedPlugin, PluginError> {
    let LoadedPlugin::Operator(plugin) = &loaded else { return Ok(loaded) };
    let parent = &plugin.metadata().parent;
    let request = ReconcileRequest {
        parent: serde_json::json!({
            "apiVersion": parent.api_version(), "kind": parent.kind,
            "metadata": {"name": "wasmop-smoke-test", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000", "generation": 1},
            "spec": {},
        }),
        children: vec![],
        finalizing: false,
        settings: None,
        related: Vec::new(),
    };
    match plugin.reconcile(&request) {
        Err(e @ (PluginError::Timeout { .. } | PluginError::OutOfMemory { .. } | PluginError::Trap { .. })) => {
            Err(PluginError::Trap {
                plugin: plugin.metadata().name.clone(),
                message: format!("smoke test on an empty parent failed: {e}"),
            })
        }
        _ => Ok(loaded),
    }
}
