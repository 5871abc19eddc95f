//! The supervisor: keeps one controller per parent kind running on the revision the catalog
//! says serves it, across every watched namespace.
//!
//! It follows the catalog's snapshots. A kind whose revision changed gets its new controller
//! once the revision passes the permission check and its CRD is installed (or pointed at the
//! conversion webhook); only then is the old one stopped (its reconciles in flight finish on
//! the old revision) and the new one started, which reconciles every parent. A new policy chain
//! restarts every controller on it. A kind that lost its plugin has its controller stopped; its
//! children stay, and its parents' finalizer is released.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::{Canary, Catalog, KindKey, OperatorRevision, PolicyRevision, Rejections, Snapshot};
use crate::controller::{self, ControllerOptions};
use crate::crd::{self, CrdError};
use crate::events::Publisher;
use crate::policy::PolicyChain;
use crate::rbac;
use crate::reconcile::finalizer as finalizers;
use crate::reconcile::{Logic, Start};
use crate::telemetry::Telemetry;
use crate::webhook::Conversion;

/// How soon a controller whose kinds the cluster does not serve yet is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

/// How often a plugin refused for missing permissions is checked again.
const ACCESS_RETRY: Duration = Duration::from_secs(10);

/// How long a stopping controller may take to finish its reconciles in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The controller of one parent kind: a revision, run in each watched namespace.
struct Running {
    revision: Arc<OperatorRevision>,
    /// The canary of a staged rollout serving beside it, if any.
    canary: Option<Arc<Canary>>,
    tasks: Vec<(watch::Sender<bool>, JoinHandle<()>)>,
    /// Where each namespace's controller takes new logic swapped in place.
    swaps: Vec<watch::Sender<Option<Logic>>>,
}

/// Keeps one controller per parent kind running on the revision the catalog serves.
pub struct Supervisor {
    client: Client,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    rejections: Rejections,
    options: ControllerOptions,
    namespaces: Vec<Option<String>>,
    install_crds: bool,
    conversion: Option<Conversion>,
    telemetry: Telemetry,
    events: Publisher,
    /// The one map from parent kind to its controller.
    running: HashMap<KindKey, Running>,
    /// Revisions whose rules the operator's identity lacks, with the refusal reported;
    /// checked again every [`ACCESS_RETRY`].
    blocked: HashMap<KindKey, Arc<OperatorRevision>>,
    /// The last refusal reported per kind, so a retry that fails the same way is not reported
    /// again.
    access_reported: HashMap<KindKey, String>,
    /// The policies every controller reviews with.
    policies: Vec<Arc<PolicyRevision>>,
}

/// How to build a [`Supervisor`]: the client and catalog, then optional settings.
#[must_use]
pub struct SupervisorBuilder {
    client: Client,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    rejections: Rejections,
    options: ControllerOptions,
    namespaces: Vec<String>,
    install_crds: bool,
    conversion: Option<Conversion>,
    telemetry: Telemetry,
}

impl SupervisorBuilder {
    /// Options of every controller (concurrency, resync, shards). Their `namespace`, if set,
    /// is the one namespace watched unless [`Self::namespaces`] names others.
    pub fn options(mut self, options: ControllerOptions) -> Self {
        self.options = options;
        self
    }

    /// Only reconcile parents in these namespaces (default: the options' namespace, else all).
    pub fn namespaces(mut self, namespaces: Vec<String>) -> Self {
        self.namespaces = namespaces;
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

    /// Counters, metrics and health to record into (default: the catalog's, which its
    /// rollouts read the per-revision figures from).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The supervisor; nothing runs until [`Supervisor::run`].
    pub fn build(self) -> Supervisor {
        let reporter = Reporter { controller: "wasmop".into(), instance: std::env::var("POD_NAME").ok() };
        let events = Publisher::new(self.client.clone(), reporter);
        let namespaces = if self.namespaces.is_empty() {
            vec![self.options.namespace.clone()]
        } else {
            self.namespaces.into_iter().map(Some).collect()
        };
        Supervisor {
            client: self.client,
            snapshots: self.snapshots,
            rejections: self.rejections,
            options: self.options,
            namespaces,
            install_crds: self.install_crds,
            conversion: self.conversion,
            telemetry: self.telemetry,
            events,
            running: HashMap::new(),
            blocked: HashMap::new(),
            access_reported: HashMap::new(),
            policies: Vec::new(),
        }
    }
}

impl Supervisor {
    /// A builder of a supervisor of what `catalog` serves.
    pub fn builder(client: Client, catalog: &Catalog) -> SupervisorBuilder {
        SupervisorBuilder {
            client,
            snapshots: catalog.subscribe(),
            rejections: catalog.rejections(),
            options: ControllerOptions::default(),
            namespaces: Vec::new(),
            install_crds: false,
            conversion: None,
            telemetry: catalog.telemetry(),
        }
    }

    /// Starts the controllers of the catalog's current snapshot, then follows its changes
    /// until `shutdown` (or the catalog stops); stops every controller before it returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let first = self.snapshots.borrow_and_update().clone();
        self.apply(&first).await;
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
                () = &mut shutdown => break,
                () = retry => {
                    // The canary comes from the current snapshot: a rollout may have begun
                    // while the revision waited for its permissions.
                    let snapshot = self.snapshots.borrow().clone();
                    for (kind, revision) in std::mem::take(&mut self.blocked) {
                        let canary = snapshot.canaries.get(&kind).cloned();
                        self.start(kind, revision, canary).await;
                    }
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let next = self.snapshots.borrow_and_update().clone();
                    self.apply(&next).await;
                }
            }
        }
        for (_, running) in self.running.drain() {
            stop(running).await;
        }
    }

    /// Brings the controllers in line with `snapshot`.
    async fn apply(&mut self, snapshot: &Snapshot) {
        let policies_changed = !same(&self.policies, &snapshot.policies);
        self.policies = snapshot.policies.clone();
        self.blocked.retain(|kind, revision| snapshot.operators.get(kind).is_some_and(|r| Arc::ptr_eq(r, revision)));
        let gone: Vec<KindKey> =
            self.running.keys().filter(|kind| !snapshot.operators.contains_key(*kind)).cloned().collect();
        for kind in gone {
            self.retire(&kind, None).await;
        }
        for (kind, revision) in &snapshot.operators {
            let current = self.running.get(kind);
            let canary = snapshot.canaries.get(kind).cloned();
            match current {
                Some(current) if Arc::ptr_eq(&current.revision, revision) => {
                    let same_canary = match (&current.canary, &canary) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    // A new share of a rollout restarts the controller: every parent is
                    // reconciled again by the revision that now serves it.
                    if !same_canary {
                        self.restart(kind, canary, Start::Rollout).await;
                    } else if policies_changed {
                        self.restart(kind, canary, Start::Reload).await;
                    }
                }
                _ if self.blocked.contains_key(kind) => {}
                Some(current) if !policies_changed && swappable(current, revision, canary.as_ref()) => {
                    self.swap(kind, revision.clone()).await;
                }
                _ => self.start(kind.clone(), revision.clone(), canary).await,
            }
        }
    }

    /// Starts `revision` for `kind` once it may run (permissions, CRD), replacing the
    /// revision running for the kind, if any.
    async fn start(&mut self, kind: KindKey, revision: Arc<OperatorRevision>, canary: Option<Arc<Canary>>) {
        if !self.allowed(&kind, &revision).await {
            self.blocked.insert(kind, revision);
            return;
        }
        if let Err(e) = self.prepare_crd(&revision).await {
            tracing::error!(source = %revision.source, error = %e, "new plugin version not started");
            return;
        }
        let why = match self.running.contains_key(&kind) {
            true => {
                self.retire(&kind, Some(&revision)).await;
                Start::Reload
            }
            false => Start::Startup,
        };
        let running = self.spawn(revision, canary, why);
        self.running.insert(kind, running);
    }

    /// Swaps `revision` into the running controller of `kind` (same kinds, CRD and finalizer,
    /// no rollout): a reload without stopping the watches — no relist of the parents and
    /// children; every parent is reconciled again by the new revision.
    async fn swap(&mut self, kind: &KindKey, revision: Arc<OperatorRevision>) {
        if !self.allowed(kind, &revision).await {
            self.blocked.insert(kind.clone(), revision);
            return;
        }
        let Some(running) = self.running.get_mut(kind) else { return };
        let meta = revision.plugin.metadata();
        tracing::info!(plugin = %meta.name, from = running.revision.plugin.file().revision(),
            to = revision.plugin.file().revision(), "plugin reloaded in place");
        let logic = Logic { plugin: Arc::new(revision.plugin.clone()), settings: revision.settings.clone() };
        for swaps in &running.swaps {
            let _ = swaps.send(Some(logic.clone()));
        }
        running.revision = revision.clone();
        let telemetry = &self.telemetry;
        telemetry.reloads.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut serving) = telemetry.reloads.serving.lock() {
            serving.insert(meta.name.clone(), revision.plugin.file().revision().to_string());
        }
        telemetry.metrics.plugin_serving(&meta.name, Some((&meta.version, revision.plugin.file().revision())));
        telemetry.metrics.reload("loaded");
    }

    /// Stops the controller of `kind`, which `successor` replaces (or nothing: the kind lost
    /// its plugin). Releases the parents' finalizer when the successor declares none.
    async fn retire(&mut self, kind: &KindKey, successor: Option<&Arc<OperatorRevision>>) {
        let Some(running) = self.running.remove(kind) else { return };
        let old = running.revision.clone();
        let name = old.plugin.metadata().name.clone();
        match successor {
            Some(new) => tracing::info!(plugin = %name, from = old.plugin.file().revision(),
                to = new.plugin.file().revision(), "plugin reloaded"),
            None => {
                tracing::info!(plugin = %name, source = %old.source,
                    "no plugin serves {kind} any more: controller stopped; its children and the parents' last status stay");
                self.telemetry.reloads.removals.fetch_add(1, Ordering::Relaxed);
                self.telemetry.metrics.reload("removed");
                self.telemetry.metrics.plugin_serving(&name, None);
                if let Ok(mut serving) = self.telemetry.reloads.serving.lock() {
                    serving.remove(&name);
                }
            }
        }
        stop(running).await;
        self.telemetry.health.set_synced(&name, true);
        if old.plugin.metadata().finalizer && !successor.is_some_and(|s| s.plugin.metadata().finalizer) {
            let why = format!("the plugin that declared it ({}) no longer serves this kind", old.source);
            for namespace in &self.namespaces {
                finalizers::release_all(&self.client, &self.events, &old.plugin, namespace.as_deref(), &why).await;
            }
        }
    }

    /// Restarts the controller of `kind` on the same revision (the policy chain or the
    /// rollout's canary changed: `why`).
    async fn restart(&mut self, kind: &KindKey, canary: Option<Arc<Canary>>, why: Start) {
        let Some(old) = self.running.remove(kind) else { return };
        let revision = old.revision.clone();
        stop(old).await;
        let running = self.spawn(revision, canary, why);
        self.running.insert(kind.clone(), running);
    }

    /// Before a revision starts: its CRD is installed (`--install-crds`) or pointed at the
    /// webhook. Only a failed install stops it: without the CA injection, parents of the
    /// version it reconciles still converge.
    async fn prepare_crd(&self, revision: &OperatorRevision) -> Result<(), CrdError> {
        if self.install_crds {
            return crd::install(&self.client, &revision.plugin, self.conversion.as_ref()).await;
        }
        if let Some(conversion) = &self.conversion
            && let Err(e) = crd::inject_conversion(&self.client, &revision.plugin, conversion).await
        {
            tracing::error!(source = %revision.source, error = %e, "reads of other versions will fail");
        }
        Ok(())
    }

    /// Whether the operator's identity may do everything the plugin needs, in every watched
    /// namespace (SelfSubjectAccessReviews); if not, the revision is refused with a
    /// `PluginRejected` Event naming the missing rules, once per distinct answer. A review that
    /// cannot be made lets the plugin start.
    async fn allowed(&mut self, kind: &KindKey, revision: &OperatorRevision) -> bool {
        let meta = revision.plugin.metadata();
        let mut rules = rbac::plugin_rules(meta);
        rules.extend(rbac::host_rules(std::slice::from_ref(meta), self.install_crds, self.conversion.is_some()));
        let mut missing = Vec::new();
        for namespace in &self.namespaces {
            match rbac::check(&self.client, &rules, namespace.as_deref()).await {
                Ok(lacking) => missing.extend(lacking.iter().map(ToString::to_string)),
                Err(e) => {
                    tracing::warn!(source = %revision.source, error = %e,
                        "cannot review the operator's permissions; starting anyway");
                    return true;
                }
            }
        }
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            self.access_reported.remove(kind);
            return true;
        }
        let reason = missing.join("; ");
        if self.access_reported.get(kind) != Some(&reason) {
            self.rejections.reject(&revision.source, &reason, None).await;
            self.access_reported.insert(kind.clone(), reason);
        }
        false
    }

    /// Runs `revision`'s controller in each watched namespace; `why` is the trigger of the
    /// reconciles of its first list.
    fn spawn(&self, revision: Arc<OperatorRevision>, canary: Option<Arc<Canary>>, why: Start) -> Running {
        let plugin = &revision.plugin;
        let meta = plugin.metadata();
        let telemetry = &self.telemetry;
        telemetry.reloads.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut serving) = telemetry.reloads.serving.lock() {
            serving.insert(meta.name.clone(), plugin.file().revision().to_string());
        }
        tracing::info!(plugin = %meta.name, revision = plugin.file().revision(), "starting controller");
        telemetry.metrics.plugin_serving(&meta.name, Some((&meta.version, plugin.file().revision())));
        telemetry.metrics.reload("loaded");
        // Not ready until its caches sync (a kind not served yet keeps it unready).
        telemetry.health.set_synced(&meta.name, false);
        let chain =
            PolicyChain::new(self.policies.iter().map(|p| (p.plugin.clone(), p.settings.clone(), p.mode)).collect());
        let (tasks, swaps): (Vec<_>, Vec<_>) = self
            .namespaces
            .iter()
            .map(|namespace| {
                let options = ControllerOptions {
                    namespace: namespace.clone(),
                    settings: revision.settings.clone(),
                    canary: canary.clone(),
                    start: why,
                    ..self.options.clone()
                };
                let (stop, rx) = watch::channel(false);
                let (swap, swaps) = watch::channel(None);
                let options = ControllerOptions { swaps: Some(swaps), ..options };
                let task = tokio::spawn(run_controller(
                    self.client.clone(),
                    revision.clone(),
                    chain.clone(),
                    options,
                    self.telemetry.clone(),
                    rx,
                ));
                ((stop, task), swap)
            })
            .unzip();
        if let Some(canary) = &canary {
            tracing::info!(plugin = %meta.name, canary = canary.revision.plugin.file().revision(),
                percent = canary.percent, "a staged rollout serves the canary beside the revision");
        }
        Running { revision, canary, tasks, swaps }
    }
}

/// Runs one controller until `stop` turns true; retries while its kinds are not served yet
/// (its CRD being installed by someone else).
async fn run_controller(
    client: Client,
    revision: Arc<OperatorRevision>,
    chain: PolicyChain,
    options: ControllerOptions,
    telemetry: Telemetry,
    rx: watch::Receiver<bool>,
) {
    let name = revision.plugin.metadata().name.clone();
    let logic = Arc::new(revision.plugin.clone());
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
        tracing::error!(plugin = %name, error = %e, "plugin's controller not started; retrying in {:?}", START_RETRY);
        let mut stop_rx = rx.clone();
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => {
                telemetry.health.set_synced(&name, true);
                return;
            }
            () = tokio::time::sleep(START_RETRY) => {}
        }
    }
}

/// Whether `next` can be swapped into `running` in place: no rollout on either side, and the
/// same parent kind, child kinds, finalizer, CRD and read kinds (what the watches, the RBAC and
/// the CRD were set up for).
fn swappable(running: &Running, next: &OperatorRevision, canary: Option<&Arc<Canary>>) -> bool {
    let (old, new) = (running.revision.plugin.metadata(), next.plugin.metadata());
    running.canary.is_none() && canary.is_none() && old.same_shape(new)
}

/// Whether two policy lists hold the same revisions in the same order.
fn same(a: &[Arc<PolicyRevision>], b: &[Arc<PolicyRevision>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Stops every namespace's controller of `running`, letting reconciles in flight finish.
async fn stop(running: Running) {
    for (stop, _) in &running.tasks {
        let _ = stop.send(true);
    }
    for (_, mut task) in running.tasks {
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "controller task ended abnormally"),
            // A controller stopped before its caches synced does not finish on its own.
            Err(_) => {
                tracing::warn!(plugin = %running.revision.plugin.metadata().name, "controller did not stop in time; aborted");
                task.abort();
            }
        }
    }
}
