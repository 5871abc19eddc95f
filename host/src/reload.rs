//! Hot reload: the plugins directory is watched, and a changed file reaches every parent of its
//! plugin without a restart.
//!
//! Every burst of file-system events (debounced) triggers a rescan of the directory, so editors
//! and `cp` writing in several steps, write-to-temp-then-rename, and the `..data` symlink swap by
//! which Kubernetes updates a mounted ConfigMap all end in one reload of the final bytes. A file
//! whose content hash is unchanged is left alone. A new or changed operator plugin is compiled
//! and checked off the async threads; only then is its controller restarted on the new version
//! (reconciles in flight finish on the old one, and the restart reconciles every parent). A file
//! that fails any check leaves the old version serving and is reported in the log, the failure
//! counter and a Kubernetes Event. A removed file stops its controller; its children stay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::controller::{self, ControllerOptions};
use crate::operator::{self, OperatorError};
use crate::plugin::{LoadedPlugin, OperatorPlugin, PluginError, PolicyPlugin, Runtime};
use crate::plugin::{ReconcileRequest, sha256_hex};
use crate::policy::PolicyChain;
use crate::rbac;
use crate::reconcile::finalizer as finalizers;
use crate::sidecar;
use crate::telemetry::Telemetry;
use crate::webhook::Conversion;

/// Longest Event action the API server accepts.
const MAX_EVENT_ACTION: usize = 128;

/// How soon a controller whose kinds the cluster does not serve yet is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

/// The most a ConfigMap holds: a larger plugin cannot have come from one intact.
const CONFIGMAP_LIMIT: usize = 1 << 20;

/// How often a plugin refused for missing permissions is checked again.
const ACCESS_RETRY: Duration = Duration::from_secs(10);

/// Quiet time after the last file event before the directory is rescanned.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Counters of reloads, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Plugin versions started (the first load counts too).
    pub loads: AtomicU64,
    /// Files that failed to load; the previous version, if any, kept serving.
    pub failures: AtomicU64,
    /// Plugins stopped because their file was removed.
    pub removals: AtomicU64,
    /// Revision serving now, by plugin name.
    pub serving: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl ReloadStats {
    /// One line for humans: what serves, and how many reloads and rejections so far.
    pub fn summary(&self) -> String {
        let serving = self
            .serving
            .lock()
            .map(|m| m.iter().map(|(name, rev)| format!("{name}@{rev}")).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!(
            "plugins: {serving}  (loads {}, rejected {}, removed {})",
            self.loads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.removals.load(Ordering::Relaxed)
        )
    }
}

/// A loaded operator plugin version: serving, about to serve, or held as a refused duplicate.
#[derive(Clone)]
struct Candidate {
    /// sha256 of the plugin file and of its sidecar: a change to either reloads.
    fingerprint: String,
    plugin: OperatorPlugin,
    settings: Option<String>,
}

/// A running controller of one plugin file.
struct Running {
    candidate: Candidate,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A plugin file as read from the directory.
struct Scanned {
    path: PathBuf,
    wasm_sha: String,
    size: usize,
    sidecar: Result<sidecar::Sidecar, sidecar::SidecarError>,
}

/// The parent kind a plugin serves, as (group, kind): one file serves each.
fn kind_key(plugin: &OperatorPlugin) -> (String, String) {
    let parent = &plugin.metadata().parent;
    (parent.group.clone(), parent.kind.clone())
}

/// Watches a plugins directory and keeps one controller per operator plugin running on the
/// latest good version of its file.
pub struct Supervisor {
    client: Client,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    options: ControllerOptions,
    install_crds: bool,
    conversion: Option<Conversion>,
    telemetry: Telemetry,
    reloads: Arc<ReloadStats>,
    recorder: Recorder,
    running: HashMap<PathBuf, Running>,
    /// Operator plugins refused because another file serves their kind; one takes over when
    /// that file goes.
    held: HashMap<PathBuf, Candidate>,
    /// Operator plugins whose rules the operator's identity lacks, with the refusal reported;
    /// checked again every [`ACCESS_RETRY`].
    blocked: HashMap<PathBuf, Candidate>,
    /// The last refusal reported per file, so a retry that fails the same way is not reported again.
    access_reported: HashMap<PathBuf, String>,
    policies: HashMap<PathBuf, (String, PolicyPlugin, Option<String>)>,
    /// Content hash of the last bad bytes seen per file, so a broken file is reported once.
    failed: HashMap<PathBuf, String>,
}

/// How to build a [`Supervisor`]: the client, runtime and directory, then optional settings.
#[must_use]
pub struct SupervisorBuilder {
    client: Client,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    options: ControllerOptions,
    install_crds: bool,
    conversion: Option<Conversion>,
    telemetry: Telemetry,
}

impl SupervisorBuilder {
    /// Options of every controller (namespace, concurrency, resync).
    pub fn options(mut self, options: ControllerOptions) -> Self {
        self.options = options;
        self
    }

    /// Server-side apply each plugin's CRD before starting its controller.
    pub fn install_crds(mut self, install: bool) -> Self {
        self.install_crds = install;
        self
    }

    /// The conversion webhook that serves the plugins converting between versions of their
    /// kind; their CRDs point at it (default: none).
    pub fn conversion(mut self, conversion: Conversion) -> Self {
        self.conversion = Some(conversion);
        self
    }

    /// Counters, metrics and health to record into (default: fresh ones).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The supervisor; nothing runs until [`Supervisor::run`].
    pub fn build(self) -> Supervisor {
        let reporter = Reporter { controller: "wasmop".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(self.client.clone(), reporter);
        Supervisor {
            reloads: self.telemetry.reloads.clone(),
            client: self.client,
            runtime: self.runtime,
            dir: self.dir,
            options: self.options,
            install_crds: self.install_crds,
            conversion: self.conversion,
            telemetry: self.telemetry,
            recorder,
            running: HashMap::new(),
            held: HashMap::new(),
            blocked: HashMap::new(),
            access_reported: HashMap::new(),
            policies: HashMap::new(),
            failed: HashMap::new(),
        }
    }
}

impl Supervisor {
    /// A builder for a supervisor of `dir`.
    pub fn builder(client: Client, runtime: Arc<Runtime>, dir: PathBuf) -> SupervisorBuilder {
        SupervisorBuilder {
            client,
            runtime,
            dir,
            options: ControllerOptions::default(),
            install_crds: false,
            conversion: None,
            telemetry: Telemetry::new(),
        }
    }

    /// Loads the directory, starts the controllers, and follows changes until `shutdown`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), OperatorError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .map_err(|e| self.watch_error(e))?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive).map_err(|e| self.watch_error(e))?;
        // The webhook's converters come from here while this runs, not from a second load.
        let _fed = self.conversion.as_ref().map(|c| c.converters().feed());
        self.rescan().await;
        self.telemetry.health.set_loaded();

        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let retry = async {
                if self.blocked.is_empty() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(ACCESS_RETRY).await;
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = retry => {
                    let blocked: Vec<(PathBuf, Candidate)> = self.blocked.drain().collect();
                    self.start_all(blocked, false).await;
                }
                event = rx.recv() => {
                    if event.is_none() {
                        break;
                    }
                    // Wait for the burst to end: the last write wins.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    self.rescan().await;
                }
            }
        }
        for (_, running) in self.running.drain() {
            stop(running).await;
        }
        Ok(())
    }

    fn watch_error(&self, e: notify::Error) -> OperatorError {
        OperatorError::PluginsDir { path: self.dir.clone(), source: std::io::Error::other(e) }
    }

    /// Brings the controllers in line with the directory's current content, in four steps:
    /// read the files, load what changed, switch (decide which file serves each parent kind,
    /// stop what no longer serves), start the new versions.
    async fn rescan(&mut self) {
        let Some(files) = self.read() else { return };
        let (loaded, policies_changed) = self.load(&files).await;
        let to_start = self.switch(&files, loaded).await;
        self.start_all(to_start, policies_changed).await;
        if let Some(conversion) = &self.conversion {
            conversion.converters().replace(self.running.values().map(|r| r.candidate.plugin.clone()).collect());
        }
    }

    /// Step 1: the `*.wasm` files with their content hash and sidecar.
    fn read(&self) -> Option<Vec<Scanned>> {
        let files = match operator::plugin_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read plugins directory");
                return None;
            }
        };
        let scanned = files
            .into_iter()
            .filter_map(|path| {
                let bytes = std::fs::read(&path).ok()?;
                Some(Scanned { wasm_sha: sha256_hex(&bytes), size: bytes.len(), sidecar: sidecar::read(&path), path })
            })
            .collect();
        Some(scanned)
    }

    /// The fingerprint of the version of `path` that serves (or is held, or reviews).
    fn known(&self, path: &Path) -> Option<&String> {
        self.running
            .get(path)
            .map(|r| &r.candidate.fingerprint)
            .or_else(|| self.held.get(path).map(|c| &c.fingerprint))
            .or_else(|| self.blocked.get(path).map(|c| &c.fingerprint))
            .or_else(|| self.policies.get(path).map(|p| &p.0))
    }

    /// Step 2: compiles and smoke-tests every file whose bytes or sidecar changed. Returns the
    /// new operator versions, and whether the policy chain changed.
    async fn load(&mut self, files: &[Scanned]) -> (Vec<(PathBuf, Candidate)>, bool) {
        let mut loaded = Vec::new();
        let mut policies_changed = false;
        for file in files {
            let path = &file.path;
            let sidecar = match &file.sidecar {
                Ok(sidecar) => sidecar,
                Err(e) => {
                    let fingerprint = format!("{}:unreadable-sidecar", file.wasm_sha);
                    if self.failed.get(path) != Some(&fingerprint) {
                        self.report_failure(path, fingerprint, e).await;
                    }
                    continue;
                }
            };
            let fingerprint = format!("{}:{}", file.wasm_sha, sha256_hex(&sidecar.bytes));
            if self.known(path) == Some(&fingerprint) || self.failed.get(path) == Some(&fingerprint) {
                continue;
            }
            if file.size > CONFIGMAP_LIMIT && self.dir.join("..data").exists() {
                let reason = format!(
                    "{} MiB is over the 1 MiB a ConfigMap can hold, and this directory is mounted from one \
                     (it has ..data); ship a plugin this large in the image instead",
                    file.size.div_ceil(1 << 20)
                );
                self.report_failure(path, fingerprint, &reason).await;
                continue;
            }
            let (runtime, file_path, limits) = (self.runtime.clone(), path.clone(), sidecar.limits);
            let result =
                tokio::task::spawn_blocking(move || runtime.load_with(&file_path, limits).and_then(smoke_test))
                    .await
                    .unwrap_or_else(|e| {
                        Err(PluginError::Trap { plugin: path.display().to_string(), message: e.to_string() })
                    });
            if let Some(reason) = self.world_switch(path, &result) {
                self.report_failure(path, fingerprint, &reason).await;
                continue;
            }
            match result {
                Ok(LoadedPlugin::Operator(plugin)) if plugin.file().sha256 == file.wasm_sha => {
                    self.failed.remove(path);
                    loaded.push((path.clone(), Candidate { fingerprint, plugin, settings: sidecar.settings.clone() }));
                }
                // The file changed again while it compiled: the next event brings the rest.
                Ok(LoadedPlugin::Operator(_)) => {}
                Ok(LoadedPlugin::Policy(policy)) => {
                    self.failed.remove(path);
                    tracing::info!(policy = %policy.metadata().name, file = %path.display(), "policy loaded");
                    self.policies.insert(path.clone(), (fingerprint, policy, sidecar.settings.clone()));
                    policies_changed = true;
                }
                Err(e) => self.report_failure(path, fingerprint, &e).await,
            }
        }
        let before = self.policies.len();
        self.policies.retain(|p, _| files.iter().any(|f| &f.path == p));
        policies_changed |= self.policies.len() != before;
        policies_changed |= self.refuse_duplicate_policies().await;
        (loaded, policies_changed)
    }

    /// Why a file that switched between the operator and policy worlds is refused, if it did.
    fn world_switch(&self, path: &Path, result: &Result<LoadedPlugin, PluginError>) -> Option<String> {
        let (was, now) = match result {
            Ok(LoadedPlugin::Policy(_)) if self.running.contains_key(path) || self.held.contains_key(path) => {
                ("operator", "policy")
            }
            Ok(LoadedPlugin::Operator(_)) if self.policies.contains_key(path) => ("policy", "operator"),
            _ => return None,
        };
        Some(format!(
            "the file switched from world {was} to world {now}; the {was} keeps serving. Give the {now} plugin a file of its own"
        ))
    }

    /// One name per policy: of two files declaring the same policy name, the first in
    /// file-name order reviews; the other is refused. Returns whether any was dropped.
    async fn refuse_duplicate_policies(&mut self) -> bool {
        let mut paths: Vec<PathBuf> = self.policies.keys().cloned().collect();
        paths.sort();
        let mut first: HashMap<String, PathBuf> = HashMap::new();
        let mut dropped = false;
        for path in paths {
            let Some((fingerprint, policy, _)) = self.policies.get(&path) else { continue };
            let name = policy.metadata().name.clone();
            match first.get(&name) {
                None => {
                    first.insert(name, path);
                }
                Some(owner) => {
                    let reason = format!(
                        "policy {name} is already loaded from {} (the first file in name order wins); remove one of the two files",
                        owner.display()
                    );
                    let fingerprint = fingerprint.clone();
                    self.policies.remove(&path);
                    self.report_failure(&path, fingerprint, &reason).await;
                    dropped = true;
                }
            }
        }
        dropped
    }

    /// Step 3: decides which file serves each parent kind — the first in file-name order, so
    /// the choice is the same after a restart — stops controllers that no longer serve (file
    /// removed, replaced, or outranked), holds refused duplicates (reported once) so they can
    /// take over when the serving file goes, and releases the finalizer of parents whose kind
    /// lost its plugin. Returns the versions to start.
    async fn switch(&mut self, files: &[Scanned], loaded: Vec<(PathBuf, Candidate)>) -> Vec<(PathBuf, Candidate)> {
        let present: HashSet<&PathBuf> = files.iter().map(|f| &f.path).collect();
        self.held.retain(|p, _| present.contains(p));
        // Plugins waiting for permissions are decided again with the rest.
        for (path, candidate) in std::mem::take(&mut self.blocked) {
            if present.contains(&path) {
                self.held.insert(path, candidate);
            }
        }
        let mut fresh: HashMap<PathBuf, Candidate> = loaded.into_iter().collect();
        // Every file that could serve, by parent kind, in file-name order.
        let mut by_kind: BTreeMap<(String, String), Vec<PathBuf>> = BTreeMap::new();
        let candidates =
            self.running.keys().chain(self.held.keys()).chain(fresh.keys()).cloned().collect::<HashSet<_>>();
        for path in candidates.into_iter().filter(|p| present.contains(p)) {
            let Some(plugin) = self.candidate(&fresh, &path) else { continue };
            by_kind.entry(kind_key(plugin)).or_default().push(path);
        }
        let mut owners: HashMap<(String, String), PathBuf> = HashMap::new();
        for (kind, mut paths) in by_kind {
            paths.sort();
            for other in paths.iter().skip(1) {
                self.refuse_duplicate(other, &paths[0], &mut fresh).await;
            }
            owners.insert(kind, paths[0].clone());
        }
        self.stop_outranked(&owners, &present, &fresh).await;
        let mut to_start = Vec::new();
        for owner in owners.values() {
            if let Some(candidate) = fresh.remove(owner).or_else(|| self.held.remove(owner)) {
                to_start.push((owner.clone(), candidate));
            }
        }
        to_start.sort_by(|a, b| a.0.cmp(&b.0));
        to_start
    }

    /// The plugin a path would serve: its fresh version, else what runs or is held.
    fn candidate<'a>(&'a self, fresh: &'a HashMap<PathBuf, Candidate>, path: &Path) -> Option<&'a OperatorPlugin> {
        fresh
            .get(path)
            .or_else(|| self.running.get(path).map(|r| &r.candidate))
            .or_else(|| self.held.get(path))
            .map(|c| &c.plugin)
    }

    /// Refuses `path` because `owner` serves the same parent kind; its version is held.
    async fn refuse_duplicate(&mut self, path: &Path, owner: &Path, fresh: &mut HashMap<PathBuf, Candidate>) {
        let Some(candidate) = fresh.remove(path) else {
            // Already held (reported when it arrived), or serving and about to be outranked.
            if let Some(running) = self.running.get(path) {
                self.held.insert(path.to_path_buf(), running.candidate.clone());
            }
            return;
        };
        let parent = candidate.plugin.metadata().parent.clone();
        let reason = format!(
            "parent kind {parent} is already served by {} (the first file in name order serves a kind); \
             remove one of the two files",
            owner.display()
        );
        self.reject(path, &reason).await;
        self.held.insert(path.to_path_buf(), candidate);
    }

    /// Stops every controller whose file is gone, replaced by a fresh version, or outranked by
    /// another file for its kind; releases finalizers of kinds left without a plugin.
    async fn stop_outranked(
        &mut self,
        owners: &HashMap<(String, String), PathBuf>,
        present: &HashSet<&PathBuf>,
        fresh: &HashMap<PathBuf, Candidate>,
    ) {
        let serving: Vec<PathBuf> = self.running.keys().cloned().collect();
        for path in serving {
            let Some(running) = self.running.get(&path) else { continue };
            let kind = kind_key(&running.candidate.plugin);
            let stays = present.contains(&path) && !fresh.contains_key(&path) && owners.get(&kind) == Some(&path);
            if stays {
                continue;
            }
            let Some(running) = self.running.remove(&path) else { continue };
            let plugin = running.candidate.plugin.clone();
            if !present.contains(&path) {
                tracing::info!(plugin = %plugin.metadata().name, file = %path.display(),
                    "plugin file removed: controller stopped; its children and the parents' last status stay");
                self.reloads.removals.fetch_add(1, Ordering::Relaxed);
                self.telemetry.metrics.reload("removed");
                self.telemetry.metrics.plugin_serving(&plugin.metadata().name, None);
                if let Ok(mut serving) = self.reloads.serving.lock() {
                    serving.remove(&plugin.metadata().name);
                }
            }
            stop(running).await;
            self.telemetry.health.set_synced(&plugin.metadata().name, true);
            let successor = owners.get(&kind).and_then(|owner| self.candidate(fresh, owner));
            if plugin.metadata().finalizer && !successor.is_some_and(|s| s.metadata().finalizer) {
                let why = format!("the plugin that declared it ({}) no longer serves this kind", path.display());
                finalizers::release_all(&self.client, &self.recorder, &plugin, self.options.namespace.as_deref(), &why)
                    .await;
            }
        }
    }

    /// Step 4: installs CRDs and starts each new version; restarts the others on a new policy
    /// chain when it changed.
    async fn start_all(&mut self, to_start: Vec<(PathBuf, Candidate)>, policies_changed: bool) {
        if policies_changed {
            let restart: Vec<PathBuf> = self.running.keys().cloned().collect();
            for path in restart {
                if let Some(old) = self.running.remove(&path) {
                    let candidate = old.candidate.clone();
                    stop(old).await;
                    let running = self.start(candidate);
                    self.running.insert(path, running);
                }
            }
        }
        for (path, candidate) in to_start {
            if !self.allowed(&path, &candidate).await {
                self.blocked.insert(path, candidate);
                continue;
            }
            if let Err(e) = self.prepare_crd(&path, &candidate.plugin).await {
                tracing::error!(file = %path.display(), error = %e, "new plugin version not started");
                continue;
            }
            if let Some(old) = self.running.remove(&path) {
                tracing::info!(plugin = %candidate.plugin.metadata().name, from = old.candidate.plugin.file().revision(),
                    to = candidate.plugin.file().revision(), "plugin reloaded");
                stop(old).await;
            }
            let running = self.start(candidate);
            self.running.insert(path, running);
        }
    }

    /// Before a plugin version starts: the webhook learns its conversion, then its CRD is
    /// installed (`--install-crds`) or pointed at the webhook. Only a failed install stops it:
    /// without the CA injection, parents of the version it reconciles still converge.
    async fn prepare_crd(&self, path: &Path, plugin: &OperatorPlugin) -> Result<(), OperatorError> {
        if let Some(conversion) = &self.conversion {
            conversion.converters().publish(plugin);
        }
        if self.install_crds {
            return operator::install_crd(&self.client, plugin, self.conversion.as_ref()).await;
        }
        if let Some(conversion) = &self.conversion
            && let Err(e) = operator::inject_conversion(&self.client, plugin, conversion).await
        {
            tracing::error!(file = %path.display(), error = %e, "reads of other versions will fail");
        }
        Ok(())
    }

    /// Whether the operator's identity may do everything the plugin needs (SelfSubjectAccess
    /// Reviews); if not, the plugin is refused with a `PluginRejected` Event naming the missing
    /// rules, once per distinct answer. A review that cannot be made lets the plugin start.
    async fn allowed(&mut self, path: &Path, candidate: &Candidate) -> bool {
        let meta = candidate.plugin.metadata();
        let mut rules = rbac::plugin_rules(meta);
        rules.extend(rbac::host_rules(std::slice::from_ref(meta), self.install_crds, self.conversion.is_some()));
        let missing = match rbac::check(&self.client, &rules, self.options.namespace.as_deref()).await {
            Ok(missing) => missing,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot review the operator's permissions; starting anyway");
                return true;
            }
        };
        if missing.is_empty() {
            self.access_reported.remove(path);
            return true;
        }
        let reason = missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        if self.access_reported.get(path) != Some(&reason) {
            self.reject(path, &reason).await;
            self.access_reported.insert(path.to_path_buf(), reason);
        }
        false
    }

    fn chain(&self) -> PolicyChain {
        let mut policies: Vec<_> = self.policies.iter().collect();
        policies.sort_by(|a, b| a.0.cmp(b.0));
        PolicyChain::new(policies.into_iter().map(|(_, (_, p, settings))| (p.clone(), settings.clone())).collect())
    }

    fn start(&self, candidate: Candidate) -> Running {
        let plugin = candidate.plugin.clone();
        let (stop, mut rx) = watch::channel(false);
        self.reloads.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut serving) = self.reloads.serving.lock() {
            serving.insert(plugin.metadata().name.clone(), plugin.file().revision().to_string());
        }
        tracing::info!(plugin = %plugin.metadata().name, revision = plugin.file().revision(), "starting controller");
        let (client, logic, chain, telemetry) =
            (self.client.clone(), Arc::new(plugin.clone()), self.chain(), self.telemetry.clone());
        let meta = plugin.metadata();
        telemetry.metrics.plugin_serving(&meta.name, Some((&meta.version, plugin.file().revision())));
        // Not ready until its caches sync (a kind not served yet keeps it unready).
        telemetry.health.set_synced(&meta.name, false);
        telemetry.metrics.reload("loaded");
        let options = ControllerOptions { settings: candidate.settings.clone(), ..self.options.clone() };
        let name = plugin.metadata().name.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut stop_rx = rx.clone();
                let stopped = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                let run = controller::run_plugin(
                    client.clone(),
                    logic.clone(),
                    chain.clone(),
                    options.clone(),
                    telemetry.clone(),
                    stopped,
                );
                let Err(e) = run.await else { return };
                if *rx.borrow() {
                    telemetry.health.set_synced(&name, true);
                    return;
                }
                // Typically the parent kind is not served yet (its CRD is being installed by
                // someone else): try again until it is, or until this version is stopped.
                tracing::error!(plugin = %name, error = %e, "plugin's controller not started; retrying in {:?}", START_RETRY);
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => {
                        telemetry.health.set_synced(&name, true);
                        return;
                    }
                    _ = tokio::time::sleep(START_RETRY) => {}
                }
            }
        });
        Running { candidate, stop, task }
    }

    /// Rejects a broken file: reported once per content (its fingerprint is remembered).
    async fn report_failure(&mut self, path: &Path, fingerprint: String, e: &(dyn std::fmt::Display + Sync)) {
        self.reject(path, e).await;
        self.failed.insert(path.to_path_buf(), fingerprint);
    }

    /// Logs, counts and records a `PluginRejected` Event for `path`.
    async fn reject(&self, path: &Path, e: &(dyn std::fmt::Display + Sync)) {
        self.reloads.failures.fetch_add(1, Ordering::Relaxed);
        self.telemetry.metrics.reload("rejected");
        let serving = self.running.get(path).map(|r| r.candidate.plugin.file().revision().to_string());
        tracing::error!(file = %path.display(), error = %e, serving = ?serving,
            "plugin file rejected; the previous version (if any) keeps serving");
        let note = format!("{}: {e}", path.display());
        // The recorder folds Events with the same reason and action into one series that keeps
        // the first note: the action names the file, so each file's rejection is seen.
        let file = path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
        let event = Event {
            type_: EventType::Warning,
            reason: "PluginRejected".into(),
            note: Some(crate::text::cap(&note, crate::status::MAX_EVENT_NOTE)),
            action: crate::text::cap(&format!("Load {file}"), MAX_EVENT_ACTION),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &operator_reference(self.options.namespace.as_deref())).await {
            tracing::debug!(error = %err, "cannot publish reload event");
        }
    }
}

/// Calls a new operator plugin once on a minimal parent of its kind before it replaces the old
/// version: any answer (even `invalid`) passes; a crash, timeout or memory blow-up rejects it.
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

/// The object reload Events are about: the operator's own Pod when in-cluster (POD_NAME and
/// POD_NAMESPACE from the downward API), else the namespace the operator is limited to
/// (`--namespace`), else `default`.
fn operator_reference(watched: Option<&str>) -> ObjectReference {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| watched.unwrap_or("default").to_string());
    match std::env::var("POD_NAME") {
        Ok(name) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace),
            ..ObjectReference::default()
        },
        Err(_) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            // The Event is written into this namespace too (not `default`).
            namespace: Some(namespace.clone()),
            name: Some(namespace),
            ..ObjectReference::default()
        },
    }
}

/// How long a stopping controller may take to finish its reconciles in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);

async fn stop(mut running: Running) {
    let _ = running.stop.send(true);
    match tokio::time::timeout(STOP_GRACE, &mut running.task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "controller task ended abnormally"),
        // A controller stopped before its caches synced does not finish on its own.
        Err(_) => {
            tracing::warn!(plugin = %running.candidate.plugin.metadata().name, "controller did not stop in time; aborted");
            running.task.abort();
        }
    }
}
