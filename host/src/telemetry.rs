//! Metrics and health over HTTP: `/metrics` (Prometheus text format, via prometheus-client),
//! `/healthz` and `/readyz`.
//!
//! [`Metrics`] owns the one registry: it is created at the top (the command) and handed down to
//! the supervisor, the controllers and the pipeline, which record into its families; nothing
//! is global and nothing is read upward. Names follow controller-runtime where it has one
//! (`controller_runtime_reconcile_total{controller,result}`, `..._errors_total`,
//! `..._time_seconds`, `..._active_workers`, `workqueue_depth`, `leader_election_master_status`);
//! wasmop's own are `wasmop_*`. [`Health`] says when `/readyz` is ready.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Labels of a metric family: (name, value) pairs.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counters of reloads, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Plugin versions started (the first load counts too).
    pub loads: AtomicU64,
    /// Plugin versions refused; the previous version, if any, kept serving.
    pub failures: AtomicU64,
    /// Plugins stopped because their kind lost its plugin (the file removed).
    pub removals: AtomicU64,
    /// Scans of the plugins directory completed (each follows a change to it).
    pub scans: AtomicU64,
    /// Revision serving now, by plugin name.
    pub serving: Mutex<std::collections::BTreeMap<String, String>>,
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

/// The metric families, registered once in one registry.
pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_time: Family<Labels, Histogram, fn() -> Histogram>,
    active_workers: Family<Labels, Gauge>,
    workqueue_depth: Family<Labels, Gauge>,
    cached_objects: Family<Labels, Gauge>,
    leader: Family<Labels, Gauge>,
    plugin_call_duration: Family<Labels, Histogram, fn() -> Histogram>,
    plugin_failures: Family<Labels, Counter>,
    policy_denials: Family<Labels, Counter>,
    policy_findings: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    children_applied: Family<Labels, Counter>,
    children_pruned: Family<Labels, Counter>,
    plugin_info: Family<Labels, Gauge>,
    reconcile_loops: Family<Labels, Counter>,
    revision_reconciles: Family<Labels, Counter>,
    rollout_percent: Family<Labels, Gauge>,
    rollbacks: Family<Labels, Counter>,
    conversions: Family<Labels, Counter>,
    /// The names of the families registered, as registered (counters without `_total`).
    families: Vec<&'static str>,
    /// The `plugin_info` labels set per plugin, to remove them on a change.
    served: Mutex<std::collections::HashMap<String, Labels>>,
}

/// Registers `metric` as `name` and notes the name in `families`.
fn register(
    registry: &mut Registry,
    families: &mut Vec<&'static str>,
    name: &'static str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    families.push(name);
    registry.register(name, help, metric);
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family, registered.
    pub fn new() -> Metrics {
        let histogram = || Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        let m = Metrics {
            registry: Registry::default(),
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: histogram(),
            active_workers: Family::default(),
            workqueue_depth: Family::default(),
            cached_objects: Family::default(),
            leader: Family::default(),
            plugin_call_duration: histogram(),
            plugin_failures: Family::default(),
            policy_denials: Family::default(),
            policy_findings: Family::default(),
            reloads: Family::default(),
            children_applied: Family::default(),
            children_pruned: Family::default(),
            plugin_info: Family::default(),
            reconcile_loops: Family::default(),
            revision_reconciles: Family::default(),
            rollout_percent: Family::default(),
            rollbacks: Family::default(),
            conversions: Family::default(),
            families: Vec::new(),
            served: Mutex::default(),
        };
        let (mut registry, mut families) = (Registry::default(), Vec::new());
        register(
            &mut registry,
            &mut families,
            "controller_runtime_reconcile",
            "Reconciles per controller and result",
            m.reconcile_total.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "controller_runtime_reconcile_errors",
            "Reconcile errors per controller",
            m.reconcile_errors.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "controller_runtime_reconcile_time_seconds",
            "Time per reconcile",
            m.reconcile_time.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "controller_runtime_active_workers",
            "Reconciles running now",
            m.active_workers.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "workqueue_depth",
            "Parents with a retry or requeue scheduled, not yet started",
            m.workqueue_depth.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_cached_objects",
            "Objects in a controller's cache: its parents, or one child kind (a sharded replica caches its shards')",
            m.cached_objects.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "leader_election_master_status",
            "1 while this replica leads",
            m.leader.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_plugin_call_duration_seconds",
            "Time per plugin call",
            m.plugin_call_duration.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_plugin_failures",
            "Plugin calls that failed, by reason",
            m.plugin_failures.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_policy_denials",
            "Children denied, by policy",
            m.policy_denials.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_policy_findings",
            "New verdicts of monitoring policies (not enforced), by policy",
            m.policy_findings.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_reloads",
            "Plugin files loaded, rejected or removed",
            m.reloads.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_children_applied",
            "Children written with server-side apply",
            m.children_applied.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_children_pruned",
            "Children deleted as no longer desired",
            m.children_pruned.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_plugin_info",
            "The version and revision each plugin serves (value 1)",
            m.plugin_info.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_reconcile_loops",
            "Parents reconciled too often without a spec change, by plugin",
            m.reconcile_loops.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_revision_reconciles",
            "Reconciles per plugin revision and result (success, failure), what a rollout judges",
            m.revision_reconciles.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_rollout_canary_percent",
            "Share of parents the canary of a WasmPlugin's rollout serves (0 when none runs)",
            m.rollout_percent.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_rollout_rollbacks",
            "Rollouts rolled back, automatically or by hand, per WasmPlugin",
            m.rollbacks.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "wasmop_conversions",
            "Conversion reviews answered by the webhook, by result (success, failure)",
            m.conversions.clone(),
        );
        Metrics { registry, families, ..m }
    }

    /// The webhook answered a conversion review (`failed`: with `Failed`).
    pub fn conversion(&self, failed: bool) {
        let result = if failed { "failure" } else { "success" };
        self.conversions.get_or_create(&labels(&[("result", result)])).inc();
    }

    /// A reconcile by `revision` of `plugin` ended; `failed` as a rollout counts failures.
    pub fn revision_reconciled(&self, plugin: &str, revision: &str, failed: bool) {
        let result = if failed { "failure" } else { "success" };
        self.revision_reconciles
            .get_or_create(&labels(&[("plugin", plugin), ("revision", revision), ("result", result)]))
            .inc();
    }

    /// The canary of WasmPlugin `name` serves `percent` of parents now.
    pub fn rollout_percent(&self, name: &str, percent: u32) {
        self.rollout_percent.get_or_create(&labels(&[("wasmplugin", name)])).set(i64::from(percent));
    }

    /// The rollout of WasmPlugin `name` went back to its stable revision.
    pub fn rolled_back(&self, name: &str) {
        self.rollbacks.get_or_create(&labels(&[("wasmplugin", name)])).inc();
    }

    /// A reconcile of `controller` ended with `result` (`success`, `requeue_after`, `error`)
    /// after `seconds`.
    pub fn reconciled(&self, controller: &str, result: &str, seconds: f64) {
        self.reconcile_total.get_or_create(&labels(&[("controller", controller), ("result", result)])).inc();
        if result == "error" {
            self.reconcile_errors.get_or_create(&labels(&[("controller", controller)])).inc();
        }
        self.reconcile_time.get_or_create(&labels(&[("controller", controller)])).observe(seconds);
    }

    /// Reconciles of `controller` running now.
    pub fn active_workers(&self, controller: &str) -> Gauge {
        self.active_workers.get_or_create(&labels(&[("controller", controller)])).clone()
    }

    /// Parents of `controller` waiting for a scheduled retry or requeue.
    pub fn set_workqueue_depth(&self, controller: &str, depth: usize) {
        self.workqueue_depth.get_or_create(&labels(&[("name", controller)])).set(depth as i64);
    }

    /// The gauge of the objects in `controller`'s cache `cache` (`parents` or a child kind).
    pub fn cached_objects(&self, controller: &str, cache: &str) -> Gauge {
        self.cached_objects.get_or_create(&labels(&[("controller", controller), ("cache", cache)])).clone()
    }

    /// Whether this replica leads (`lease` names the election).
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader.get_or_create(&labels(&[("name", lease)])).set(i64::from(leading));
    }

    /// One call of `revision` of `plugin` took `seconds`; `world` is `operator` or `policy`.
    pub fn plugin_call(&self, plugin: &str, world: &str, revision: &str, seconds: f64) {
        let labels = labels(&[("plugin", plugin), ("world", world), ("revision", revision)]);
        self.plugin_call_duration.get_or_create(&labels).observe(seconds);
    }

    /// A call of `revision` of `plugin` failed for `reason` (`timeout`, `memory`, `trap`,
    /// `invalid_output`, ...).
    pub fn plugin_failure(&self, plugin: &str, revision: &str, reason: &str) {
        self.plugin_failures
            .get_or_create(&labels(&[("plugin", plugin), ("reason", reason), ("revision", revision)]))
            .inc();
    }

    /// A parent of `plugin` was found reconciling in a loop.
    pub fn reconcile_loop(&self, plugin: &str) {
        self.reconcile_loops.get_or_create(&labels(&[("plugin", plugin)])).inc();
    }

    /// A policy denied a child.
    pub fn policy_denial(&self, policy: &str) {
        self.policy_denials.get_or_create(&labels(&[("policy", policy)])).inc();
    }

    /// A monitoring policy's verdict was recorded, not enforced.
    pub fn policy_finding(&self, policy: &str) {
        self.policy_findings.get_or_create(&labels(&[("policy", policy)])).inc();
    }

    /// A reload ended with `result` (`loaded`, `rejected`, `removed`).
    pub fn reload(&self, result: &str) {
        self.reloads.get_or_create(&labels(&[("result", result)])).inc();
    }

    /// A child of `kind` was applied (or, with `pruned`, deleted) for `plugin`.
    pub fn child_written(&self, plugin: &str, kind: &str, pruned: bool) {
        let family = if pruned { &self.children_pruned } else { &self.children_applied };
        family.get_or_create(&labels(&[("plugin", plugin), ("kind", kind)])).inc();
    }

    /// `plugin` serves `version` at `revision` (or, with `None`, no longer serves).
    pub fn plugin_serving(&self, plugin: &str, version_revision: Option<(&str, &str)>) {
        let mut served = match self.served.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(old) = served.remove(plugin) {
            self.plugin_info.remove(&old);
        }
        if let Some((version, revision)) = version_revision {
            let info = labels(&[("plugin", plugin), ("version", version), ("revision", revision)]);
            self.plugin_info.get_or_create(&info).set(1);
            served.insert(plugin.to_string(), info);
        }
    }

    /// The names of every family registered (counters without their `_total`), used or not:
    /// what dashboards and alerts can be checked against.
    pub fn families(&self) -> &[&'static str] {
        &self.families
    }

    /// The registry in the text exposition format (what `/metrics` serves before the plain
    /// counters of [`Telemetry::render`]); a family with no series yet is left out.
    pub fn encode(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = encode(out, &self.registry);
    }
}

/// What `/readyz` reports: ready once the plugins are loaded and every started controller's
/// watch caches have synced — or at once on a standby replica, which is healthy and idle.
#[derive(Debug, Default)]
pub struct Health {
    loaded: AtomicBool,
    standby: AtomicBool,
    unsynced: Mutex<BTreeSet<String>>,
    stalled: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Health {
    /// The plugins directory has been read and its plugins started.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// Whether this replica waits for the leadership (ready and idle).
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    /// `controller`'s caches are filling (`false`) or have synced or stopped (`true`).
    pub fn set_synced(&self, controller: &str, synced: bool) {
        let mut unsynced = match self.unsynced.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if synced {
            unsynced.remove(controller);
        } else {
            unsynced.insert(controller.to_string());
        }
    }

    /// Notes `controller` stalled, with why (`None`: progressing).
    pub fn set_stalled(&self, controller: &str, note: Option<String>) {
        let mut stalled = match self.stalled.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match note {
            Some(note) => stalled.insert(controller.to_string(), note),
            None => stalled.remove(controller),
        };
    }

    /// What `/readyz` says beside its verdict: each stalled controller and why.
    pub fn notes(&self) -> Vec<String> {
        let stalled = match self.stalled.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        stalled.iter().map(|(name, note)| format!("stalled: controller {name}: {note}")).collect()
    }

    /// `Ok` when ready, else what it waits for.
    pub fn ready(&self) -> Result<(), String> {
        if self.standby.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !self.loaded.load(Ordering::Relaxed) {
            return Err("plugins not loaded yet".into());
        }
        let unsynced = self.unsynced.lock().map(|u| u.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if unsynced.is_empty() { Ok(()) } else { Err(format!("caches not synced: {}", unsynced.join(", "))) }
    }
}

/// What `/metrics`, `/healthz` and `/readyz` report.
#[derive(Clone)]
pub struct Telemetry {
    /// Reconcile counters.
    pub stats: Arc<Stats>,
    /// Reload counters and serving revisions.
    pub reloads: Arc<ReloadStats>,
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Reconciles and failures per plugin revision, which a rollout's analysis reads.
    pub revisions: Arc<Revisions>,
}

/// Reconciles and failures per plugin revision, counted by the controllers and read by the
/// status writer of a rollout (handed down to both, like the other counters).
#[derive(Debug, Default)]
pub struct Revisions {
    figures: Mutex<std::collections::HashMap<String, crate::rollout::Figures>>,
}

impl Revisions {
    /// Counts a reconcile by `revision` (allocating only for a revision's first).
    pub fn record(&self, revision: &str, failed: bool) {
        let Ok(mut figures) = self.figures.lock() else { return };
        let entry = match figures.get_mut(revision) {
            Some(entry) => entry,
            None => figures.entry(revision.to_string()).or_default(),
        };
        entry.reconciles += 1;
        entry.failures += u64::from(failed);
    }

    /// What `revision` made so far on this replica.
    pub fn get(&self, revision: &str) -> crate::rollout::Figures {
        self.figures.lock().ok().and_then(|f| f.get(revision).copied()).unwrap_or_default()
    }
}

impl Telemetry {
    /// Fresh counters, registry and health.
    pub fn new() -> Telemetry {
        Telemetry {
            stats: Arc::default(),
            reloads: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            health: Arc::default(),
            revisions: Arc::default(),
        }
    }

    /// The metrics in the Prometheus text exposition format: the registry, then the plain
    /// `wasmop_*_total` counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.metrics.encode(&mut out);
        let mut registry = Registry::with_prefix("wasmop");
        let s = &self.stats;
        for (name, help, value) in [
            ("reconciles", "Reconciles started", &s.reconciles),
            ("reconcile_failures", "Reconciles that failed", &s.failures),
            ("plugin_calls", "Plugin calls made", &s.plugin_calls),
            ("child_applies", "Children written with server-side apply", &s.applies),
            ("child_prunes", "Children deleted because no longer desired", &s.prunes),
            ("status_writes", "Parent status writes", &s.status_writes),
        ] {
            registry.register(name, help, ConstCounter::new(Stats::get(value)));
        }
        let r = &self.reloads;
        for (name, help, value) in [
            ("plugin_loads", "Plugin versions started (first loads and reloads)", &r.loads),
            ("plugin_load_failures", "Plugin files rejected; the previous version kept serving", &r.failures),
            ("plugin_removals", "Plugins stopped because their file was removed", &r.removals),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
        // The registry above ends with `# EOF`; the plain counters go before it.
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// Binds `addr` and serves metrics and health until the task is dropped. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = serve_on(listener, telemetry);
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

/// Serves metrics and health on an already bound `listener` until the task is dropped.
pub fn serve_on(listener: TcpListener, telemetry: Telemetry) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let telemetry = telemetry.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &telemetry)) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    })
}

fn respond(req: &Request<Incoming>, telemetry: &Telemetry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", telemetry.render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let notes: String = telemetry.health.notes().iter().map(|n| format!("{n}\n")).collect();
            match telemetry.health.ready() {
                Ok(()) => (StatusCode::OK, "text/plain", format!("ok\n{notes}")),
                Err(waiting) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {waiting}\n{notes}"))
                }
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn metrics_endpoint_reports_counters_and_revisions() {
        let telemetry = Telemetry::new();
        telemetry.stats.reconciles.fetch_add(3, Ordering::Relaxed);
        telemetry.reloads.failures.fetch_add(1, Ordering::Relaxed);
        telemetry.metrics.reconciled("appoperator", "success", 0.002);
        telemetry.metrics.plugin_serving("appoperator", Some(("0.1.0", "1746eea1de96")));
        telemetry.metrics.plugin_serving("appoperator", Some(("0.2.0", "aaaaaaaaaaaa")));
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), telemetry).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("wasmop_reconciles_total 3"), "{body}");
        assert!(body.contains("wasmop_plugin_load_failures_total 1"), "{body}");
        assert!(
            body.contains(r#"controller_runtime_reconcile_total{controller="appoperator",result="success"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"controller_runtime_reconcile_time_seconds_count{controller="appoperator"} 1"#),
            "{body}"
        );
        // A new version replaces the info series instead of adding one.
        assert!(body.contains(r#"wasmop_plugin_info{plugin="appoperator",version="0.2.0",revision="aaaaaaaaaaaa"} 1"#));
        assert!(!body.contains("1746eea1de96"), "{body}");
        assert_eq!(body.matches("# EOF").count(), 1, "{body}");
        task.abort();
    }
}
