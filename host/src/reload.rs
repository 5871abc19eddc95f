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

use std::collections::HashMap;
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
use crate::reconcile::Stats;
use crate::sidecar;

/// How soon a controller whose kinds the cluster does not serve yet is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

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

/// A running controller of one plugin file.
struct Running {
    /// sha256 of the plugin file and of its sidecar: a change to either reloads.
    fingerprint: String,
    settings: Option<String>,
    plugin: OperatorPlugin,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Watches a plugins directory and keeps one controller per operator plugin running on the
/// latest good version of its file.
pub struct Supervisor {
    client: Client,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    options: ControllerOptions,
    install_crds: bool,
    stats: Arc<Stats>,
    reloads: Arc<ReloadStats>,
    recorder: Recorder,
    running: HashMap<PathBuf, Running>,
    policies: HashMap<PathBuf, (String, PolicyPlugin, Option<String>)>,
    /// Content hash of the last bad bytes seen per file, so a broken file is reported once.
    failed: HashMap<PathBuf, String>,
}

impl Supervisor {
    /// A supervisor of `dir`; nothing runs until [`Supervisor::run`].
    pub fn new(
        client: Client,
        runtime: Arc<Runtime>,
        dir: PathBuf,
        options: ControllerOptions,
        install_crds: bool,
        stats: Arc<Stats>,
        reloads: Arc<ReloadStats>,
    ) -> Self {
        let reporter = Reporter { controller: "wasmop".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        Supervisor {
            client,
            runtime,
            dir,
            options,
            install_crds,
            stats,
            reloads,
            recorder,
            running: HashMap::new(),
            policies: HashMap::new(),
            failed: HashMap::new(),
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
        self.rescan().await;

        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
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

    /// Brings the controllers in line with the directory's current content.
    async fn rescan(&mut self) {
        let files = match wasm_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read plugins directory");
                return;
            }
        };
        let mut policies_changed = false;
        let mut to_start = Vec::new();
        for path in &files {
            let Ok(bytes) = std::fs::read(path) else { continue };
            let wasm_sha = sha256_hex(&bytes);
            let sidecar = match sidecar::read(path) {
                Ok(sidecar) => sidecar,
                Err(e) => {
                    let fingerprint = format!("{wasm_sha}:unreadable-sidecar");
                    if self.failed.get(path) != Some(&fingerprint) {
                        self.report_failure(path, fingerprint, &e).await;
                    }
                    continue;
                }
            };
            let fingerprint = format!("{wasm_sha}:{}", sha256_hex(&sidecar.bytes));
            let known =
                self.running.get(path).map(|r| &r.fingerprint).or_else(|| self.policies.get(path).map(|p| &p.0));
            if known == Some(&fingerprint) || self.failed.get(path) == Some(&fingerprint) {
                continue;
            }
            let runtime = self.runtime.clone();
            let file = path.clone();
            let limits = sidecar.limits;
            let loaded = tokio::task::spawn_blocking(move || runtime.load_with(&file, limits).and_then(smoke_test))
                .await
                .unwrap_or_else(|e| {
                    Err(PluginError::Trap { plugin: path.display().to_string(), message: e.to_string() })
                });
            let switched = match &loaded {
                Ok(LoadedPlugin::Policy(_)) if self.running.contains_key(path) => Some(("operator", "policy")),
                Ok(LoadedPlugin::Operator(_)) if self.policies.contains_key(path) => Some(("policy", "operator")),
                _ => None,
            };
            if let Some((was, now)) = switched {
                let reason = format!(
                    "the file switched from world {was} to world {now}; the {was} keeps serving. \
                     Give the {now} plugin a file of its own"
                );
                self.report_failure(path, fingerprint, &reason).await;
                continue;
            }
            match loaded {
                Ok(LoadedPlugin::Operator(plugin)) if plugin.file().sha256 == wasm_sha => {
                    self.failed.remove(path);
                    to_start.push((path.clone(), fingerprint, plugin, sidecar.settings));
                }
                // The file changed again while it compiled: the next event brings the rest.
                Ok(LoadedPlugin::Operator(_)) => {}
                Ok(LoadedPlugin::Policy(policy)) => {
                    self.failed.remove(path);
                    tracing::info!(policy = %policy.metadata().name, file = %path.display(), "policy loaded");
                    self.policies.insert(path.clone(), (fingerprint, policy, sidecar.settings));
                    policies_changed = true;
                }
                Err(e) => self.report_failure(path, fingerprint, &e).await,
            }
        }

        let removed: Vec<PathBuf> = self.running.keys().filter(|p| !files.contains(p)).cloned().collect();
        for path in removed {
            if let Some(running) = self.running.remove(&path) {
                tracing::info!(plugin = %running.plugin.metadata().name, file = %path.display(),
                    "plugin file removed: controller stopped; its children and the parents' last status stay");
                self.reloads.removals.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut serving) = self.reloads.serving.lock() {
                    serving.remove(&running.plugin.metadata().name);
                }
                stop(running).await;
            }
        }
        let before = self.policies.len();
        self.policies.retain(|p, _| files.contains(p));
        policies_changed |= self.policies.len() != before;

        if policies_changed {
            // Controllers about to start on a new version get the new chain anyway.
            let restart: Vec<PathBuf> =
                self.running.keys().filter(|p| !to_start.iter().any(|(s, ..)| s == *p)).cloned().collect();
            for path in restart {
                if let Some(old) = self.running.remove(&path) {
                    let (plugin, fingerprint, settings) =
                        (old.plugin.clone(), old.fingerprint.clone(), old.settings.clone());
                    stop(old).await;
                    let running = self.start(plugin, fingerprint, settings);
                    self.running.insert(path, running);
                }
            }
        }
        for (path, fingerprint, plugin, settings) in to_start {
            if self.install_crds
                && let Err(e) = operator::install_crd(&self.client, &plugin).await
            {
                tracing::error!(file = %path.display(), error = %e, "new plugin version not started");
                continue;
            }
            let old = self.running.remove(&path);
            if let Some(old) = &old {
                tracing::info!(plugin = %plugin.metadata().name, from = old.plugin.file().revision(),
                    to = plugin.file().revision(), "plugin reloaded");
            }
            if let Some(old) = old {
                stop(old).await;
            }
            let running = self.start(plugin, fingerprint, settings);
            self.running.insert(path, running);
        }
    }

    fn chain(&self) -> PolicyChain {
        let mut policies: Vec<_> = self.policies.iter().collect();
        policies.sort_by(|a, b| a.0.cmp(b.0));
        PolicyChain::new(policies.into_iter().map(|(_, (_, p, settings))| (p.clone(), settings.clone())).collect())
    }

    fn start(&self, plugin: OperatorPlugin, fingerprint: String, settings: Option<String>) -> Running {
        let (stop, mut rx) = watch::channel(false);
        self.reloads.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut serving) = self.reloads.serving.lock() {
            serving.insert(plugin.metadata().name.clone(), plugin.file().revision().to_string());
        }
        tracing::info!(plugin = %plugin.metadata().name, revision = plugin.file().revision(), "starting controller");
        let (client, logic, chain, stats) =
            (self.client.clone(), Arc::new(plugin.clone()), self.chain(), self.stats.clone());
        let options = ControllerOptions { settings: settings.clone(), ..self.options.clone() };
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
                    stats.clone(),
                    stopped,
                );
                let Err(e) = run.await else { return };
                // Typically the parent kind is not served yet (its CRD is being installed by
                // someone else): try again until it is, or until this version is stopped.
                tracing::error!(plugin = %name, error = %e, "plugin's controller not started; retrying in {:?}", START_RETRY);
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(START_RETRY) => {}
                }
            }
        });
        Running { fingerprint, settings, plugin, stop, task }
    }

    async fn report_failure(&mut self, path: &Path, fingerprint: String, e: &(dyn std::fmt::Display + Sync)) {
        self.reloads.failures.fetch_add(1, Ordering::Relaxed);
        let serving = self.running.get(path).map(|r| r.plugin.file().revision().to_string());
        tracing::error!(file = %path.display(), error = %e, serving = ?serving,
            "plugin file rejected; the previous version (if any) keeps serving");
        self.failed.insert(path.to_path_buf(), fingerprint);
        let note = format!("{}: {e}", path.display());
        let event = Event {
            type_: EventType::Warning,
            reason: "PluginRejected".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reload".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &operator_reference()).await {
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
/// POD_NAMESPACE from the downward API), else the `wasmop` name in the operator's namespace.
fn operator_reference() -> ObjectReference {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
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
            tracing::warn!(plugin = %running.plugin.metadata().name, "controller did not stop in time; aborted");
            running.task.abort();
        }
    }
}

/// The `*.wasm` files of `dir` (symlinks followed), sorted.
fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}
