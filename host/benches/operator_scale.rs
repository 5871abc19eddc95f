//! End to end at scale: N Appoperators created at once against the in-memory API server, until
//! every one is `Ready`. Run once with the WebAssembly plugin and once with the native build of
//! the same logic, so the Wasm share of the cost is visible. Prints wall time, reconciles per
//! second, API requests and writes per object, and the operator's memory and CPU: the API
//! server runs in a child process (the bench binary re-executed), so the bench process is the
//! operator alone. Ready is followed with one watch.
//!
//! `WASMOP_BENCH_SERVER=inproc` runs the server in this process and `WASMOP_BENCH_READY=list`
//! polls a list for Ready, as the bench did up to 0.2.0, to compare.
//!
//! `WASMOP_BENCH_PLANE=real` runs against the real control plane (`make controlplane`), each
//! run in its own namespace; the API request counts are then not available.
//!
//! The plugin runs twice more with OpenTelemetry traces on at 10% sampling, exported to a real
//! Jaeger (`make tracing`), alternating with runs without: the traced throughput as a share of
//! the untraced is the cost of traces. All runs log as `wasmop run` does (info, to a sink), so
//! the only difference is the trace layer.
//!
//! `make bench` runs it; `WASMOP_BENCH_PARENTS=1000,10000` picks the sizes (default 1000).
//! `WASMOP_BENCH_ONCE=1` runs the plugin once per size and nothing else: what a heap profile
//! of the operator at all Ready needs (`heaptrack`, see BENCHMARKS.md).

#[path = "common/apps.rs"]
mod apps;
#[path = "../tests/common/jaeger.rs"]
mod jaeger;
#[path = "common/server.rs"]
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use server::{Remote, cpu_seconds, memory_kib};
use tracing_subscriber::Layer;
use wasmop::catalog::Catalog;
use wasmop::controller::{self, ControllerOptions};
use wasmop::crd;
use wasmop::plugin::{
    Condition, ConditionStatus, Desired, Limits, OperatorMetadata, OperatorPlugin, PluginError, ReconcileRequest,
    Runtime, RuntimeConfig,
};
use wasmop::policy::PolicyChain;
use wasmop::reconcile::Reconciler;
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::Stats;
use wasmop::traces::{TraceSettings, Traces};
use wasmop_apiserver::{ApiServer, Config, RequestStats};
use wasmop_controlplane::ControlPlane;

/// The Appoperator logic compiled natively, behind the same interface as the plugin.
struct Native {
    meta: OperatorMetadata,
}

impl Reconciler for Native {
    fn metadata(&self) -> &OperatorMetadata {
        &self.meta
    }
    fn revision(&self) -> &str {
        "native"
    }
    fn reconcile(&self, req: &ReconcileRequest) -> Result<Desired, PluginError> {
        let children: Vec<String> = req.children.iter().map(Value::to_string).collect();
        let plugin = || self.meta.name.clone();
        let encoded = wasmop_sdk::wire::EncodedRequest::new(req.parent.to_string()).children(children);
        let out = wasmop_sdk::wire::reconcile_json::<appoperator::Plugin>(&encoded).map_err(|e| match e {
            wasmop_sdk::Error::Invalid(message) => PluginError::InvalidSpec { plugin: plugin(), message },
            wasmop_sdk::Error::Retry(message) => PluginError::Retry { plugin: plugin(), message },
        })?;
        let namespace = req.parent["metadata"]["namespace"].clone();
        let children = out
            .children
            .iter()
            .map(|c| {
                let mut child: Value = serde_json::from_str(c).unwrap_or(Value::Null);
                child["metadata"]["namespace"] = namespace.clone();
                child
            })
            .collect();
        let status =
            out.status.and_then(|s| serde_json::from_str::<Value>(&s).ok()).and_then(|v| v.as_object().cloned());
        let conditions = out
            .conditions
            .into_iter()
            .map(|c| Condition {
                type_: c.type_,
                status: match c.status {
                    wasmop_sdk::ConditionStatus::True => ConditionStatus::True,
                    wasmop_sdk::ConditionStatus::False => ConditionStatus::False,
                    wasmop_sdk::ConditionStatus::Unknown => ConditionStatus::Unknown,
                },
                reason: c.reason,
                message: c.message,
            })
            .collect();
        Ok(Desired { children, status, conditions, requeue_after: None, finalized: false })
    }
}

/// Where the API server runs: in another process (default; the RSS printed is the operator's
/// own) or in this one (`WASMOP_BENCH_SERVER=inproc`, as up to 0.2.0: RSS is the sum).
enum Server {
    Local(ApiServer),
    Remote(Remote),
    /// The real control plane (`WASMOP_BENCH_PLANE=real`): etcd, kube-apiserver,
    /// kube-controller-manager, kube-scheduler and kwok, built by `make controlplane`.
    Real(&'static ControlPlane),
}

impl Server {
    async fn start(simulate: Duration) -> Server {
        if std::env::var("WASMOP_BENCH_PLANE").is_ok_and(|v| v == "real") {
            return Server::Real(ControlPlane::shared().await.expect("the real control plane (make controlplane)"));
        }
        if std::env::var("WASMOP_BENCH_SERVER").is_ok_and(|v| v == "inproc") {
            let config = Config { simulate_deployments: true, simulate_delay: simulate, ..Config::default() };
            return Server::Local(ApiServer::start(config).await.expect("api server"));
        }
        Server::Remote(Remote::start(Some(simulate)))
    }

    /// A client with kube-rs's defaults: no client-side rate limit (client-go's would be 5 QPS,
    /// burst 10).
    async fn client(&self) -> Client {
        let url = match self {
            Server::Local(s) => s.url(),
            Server::Remote(r) => r.url().to_string(),
            Server::Real(plane) => return plane.client().await.expect("client"),
        };
        Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client")
    }

    /// The namespace of one run: `default`, or a fresh one per run on the shared real plane.
    async fn namespace(&self, client: &Client, label: &str) -> String {
        if !matches!(self, Server::Real(_)) {
            return "default".into();
        }
        let ns = format!("bench-{label}-{}", std::process::id());
        let namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.expect("namespace");
        ns
    }

    fn reset_stats(&mut self) {
        match self {
            Server::Local(s) => s.reset_stats(),
            Server::Remote(r) => r.reset_stats(),
            Server::Real(_) => {}
        }
    }

    fn stats(&mut self) -> RequestStats {
        match self {
            Server::Local(s) => s.stats(),
            Server::Remote(r) => RequestStats { counts: r.stats() },
            // The real API server's counts are not read here.
            Server::Real(_) => RequestStats::default(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::Remote(r) => Some(r.pid()),
            _ => None,
        }
    }

    async fn shutdown(self) {
        if let Server::Local(s) = self {
            s.shutdown().await;
        }
    }
}

/// What reconciles: the plugin file through the supervisor, or the native baseline.
enum Logic {
    /// A directory holding the plugin.
    Wasm(PathBuf),
    /// The same logic compiled into the host.
    Native(Arc<dyn Reconciler>),
}

/// Reconciles per second of one run, for the traced-to-untraced ratio.
type Throughput = f64;

async fn run(label: &str, logic: Logic, plugin: &OperatorPlugin, n: usize) -> Throughput {
    let mut server = Server::start(Duration::from_millis(100)).await;
    let client = server.client().await;
    crd::install(&client, plugin, None).await.expect("crd");
    let ns = server.namespace(&client, label).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator"),
        "appoperators",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);

    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let telemetry = wasmop::telemetry::Telemetry::new();
    let stats = telemetry.stats.clone();
    let options = ControllerOptions { concurrency: 16, namespace: Some(ns.clone()), ..ControllerOptions::default() };
    let stopped = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The plugin runs as in production: a catalog of its directory and the supervisor. The
    // native baseline (the same logic compiled into the host) has no file, so it starts its
    // controller directly; production never takes that path.
    let _catalog;
    let task = match logic {
        Logic::Wasm(dir) => {
            let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
            let catalog = Catalog::builder(runtime).dir(dir).start().await.expect("catalog");
            let supervisor =
                Supervisor::builder(client.clone(), &catalog).options(options).telemetry(telemetry).build();
            _catalog = Some(catalog);
            tokio::spawn(supervisor.run(stopped))
        }
        Logic::Native(logic) => {
            _catalog = None;
            let run =
                controller::run_plugin(client.clone(), logic, PolicyChain::default(), options, telemetry, stopped);
            tokio::spawn(async move {
                let _ = run.await;
            })
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (created, created_rx) = tokio::sync::oneshot::channel();
    let ready = tokio::spawn({
        let (api, label) = (api.clone(), label.to_string());
        async move { apps::wait_ready(&label, api, n, created_rx).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.reset_stats();
    let cpu = (cpu_seconds(None), cpu_seconds(server.pid()));

    let started = Instant::now();
    apps::create(&api, &ns, 0..n).await;
    let _ = created.send(());
    ready.await.expect("ready");
    let wall = started.elapsed();
    let requests = server.stats();
    let reconciles = Stats::get(&stats.reconciles);
    let (operator_cpu, server_cpu) = (cpu_seconds(None) - cpu.0, cpu_seconds(server.pid()) - cpu.1);
    let rss = match (&server, server.pid()) {
        (Server::Local(_), _) => format!(
            "RSS {} MiB (peak {} MiB, server and operator)",
            memory_kib(None, "VmRSS:") / 1024,
            memory_kib(None, "VmHWM:") / 1024
        ),
        (_, pid) => format!(
            "operator RSS {} MiB (peak {} MiB){}",
            memory_kib(None, "VmRSS:") / 1024,
            memory_kib(None, "VmHWM:") / 1024,
            pid.map(|p| format!(", server process RSS {} MiB", memory_kib(Some(p), "VmRSS:") / 1024))
                .unwrap_or_default(),
        ),
    };
    // The real API server's requests are not counted here: say so rather than print zeros.
    let counted = match server {
        Server::Real(_) => "API requests not counted on the real API server".to_string(),
        _ => format!(
            "{:>5.2} API requests/object ({:.2} writes, creates included)",
            requests.total() as f64 / n as f64,
            requests.writes("*") as f64 / n as f64
        ),
    };
    let throughput = reconciles as f64 / wall.as_secs_f64();
    println!(
        "{label:<7} {n:>6} parents: all Ready in {:>7.2}s  {throughput:>7.0} reconciles/s  {counted}  {rss}",
        wall.as_secs_f64(),
    );
    if server.pid().is_some() {
        println!(
            "{label:<7} {n:>6} parents: CPU seconds: operator process {operator_cpu:.1}, server process {server_cpu:.1}"
        );
    }
    // Where the requests go, per object: what to cut next.
    if !matches!(server, Server::Real(_)) {
        let per_object: Vec<String> = requests
            .counts
            .iter()
            .map(|((verb, resource), count)| format!("{verb} {resource} {:.2}", *count as f64 / n as f64))
            .collect();
        println!("{label:<7} {n:>6} parents: requests per object: {}", per_object.join(", "));
    }
    let _ = stop.send(true);
    let _ = task.await;
    server.shutdown().await;
    throughput
}

/// The trace layer, switched on for the traced run only.
type TraceSwitch = tracing_subscriber::reload::Handle<
    Option<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>,
    tracing_subscriber::Registry,
>;

/// Logs as `wasmop run` does (info, here to a sink) with an empty trace layer to switch on.
fn install_subscriber() -> TraceSwitch {
    use tracing_subscriber::prelude::*;
    let (traces, switch) = tracing_subscriber::reload::Layer::new(None);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry().with(traces.with_filter(wasmop::traces::exported_spans())).with(logs).init();
    switch
}

fn main() {
    server::serve_if_child();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    assert!(path.exists(), "{} is missing: run `make plugins` (make bench does)", path.display());
    let sizes: Vec<usize> = std::env::var("WASMOP_BENCH_PARENTS")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = rt.load_operator(&path, Limits::default()).expect("load appoperator");
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    // Under `cargo test --benches` run a token size so the bench is exercised, not measured.
    let sizes = if std::env::args().any(|a| a == "--bench") { sizes } else { vec![20] };
    let dir = tempfile::tempdir().expect("plugins directory");
    std::fs::copy(&path, dir.path().join("appoperator.wasm")).expect("copy the plugin");
    let switch = install_subscriber();
    let jaeger = jaeger::Jaeger::start(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let endpoint = format!("http://{}", jaeger.otlp);
    let settings = TraceSettings::new(Some(&endpoint), 0.1, "wasmop").expect("trace settings");
    for n in sizes {
        if std::env::var("WASMOP_BENCH_ONCE").is_ok_and(|v| v == "1") {
            tokio.block_on(run("wasm", Logic::Wasm(dir.path().to_path_buf()), &plugin, n));
            continue;
        }
        // Two pairs, alternating, so a drift of the machine falls on both sides.
        let (mut untraced, mut traced) = (0.0, 0.0);
        for _ in 0..2 {
            untraced += tokio.block_on(run("wasm", Logic::Wasm(dir.path().to_path_buf()), &plugin, n));
            let traces = Traces::start(&settings).expect("traces");
            switch.reload(Some(traces.unfiltered_layer().boxed())).expect("trace layer on");
            traced += tokio.block_on(run("traced", Logic::Wasm(dir.path().to_path_buf()), &plugin, n));
            switch.reload(None).expect("trace layer off");
            traces.shutdown();
        }
        let kept = tokio.block_on(jaeger.traces()).len();
        println!(
            "traced  {n:>6} parents: traces at 10% sampling to Jaeger ({kept} traces there, at most 1000 \
             counted): {:.1}% of the untraced throughput (two alternating pairs)",
            100.0 * traced / untraced
        );
        let native = Arc::new(Native { meta: plugin.metadata().clone() });
        tokio.block_on(run("native", Logic::Native(native), &plugin, n));
    }
}
