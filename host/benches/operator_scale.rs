//! End to end at scale: N Appoperators created at once against the in-memory API server, until
//! every one is `Ready`. Run once with the WebAssembly plugin and once with the native build of
//! the same logic, so the Wasm share of the cost is visible. Prints wall time, reconciles per
//! second, API requests and writes per object, and host memory.
//!
//! `make bench` runs it; `WASMOP_BENCH_PARENTS=1000,10000` picks the sizes (default 1000).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use wasmop::controller::{self, ControllerOptions};
use wasmop::operator;
use wasmop::plugin::{
    Condition, ConditionStatus, Desired, Limits, OperatorMetadata, OperatorPlugin, PluginError, ReconcileRequest,
    Runtime, RuntimeConfig,
};
use wasmop::policy::PolicyChain;
use wasmop::reconcile::{Reconciler, Stats};
use wasmop_apiserver::{ApiServer, Config};

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
        let out =
            wasmop_sdk::wire::reconcile_json::<appoperator::Plugin>(&req.parent.to_string(), &children, false, None)
                .map_err(|e| match e {
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

fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn ready_count(api: &Api<DynamicObject>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else { return 0 };
    list.items
        .iter()
        .filter(|o| wasmop::status::ready_of(&o.data["status"]).is_some_and(|(s, _, _)| s == "True"))
        .count()
}

async fn run(label: &str, logic: Arc<dyn Reconciler>, plugin: &OperatorPlugin, n: usize) {
    let config = Config { simulate_deployments: true, simulate_delay: Duration::from_millis(100), ..Config::default() };
    let server = ApiServer::start(config).await.expect("api server");
    let client = Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    operator::install_crd(&client, plugin, None).await.expect("crd");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator"),
        "appoperators",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);

    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let telemetry = wasmop::telemetry::Telemetry::new();
    let stats = telemetry.stats.clone();
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let task = tokio::spawn(controller::run_plugin(
        client.clone(),
        logic,
        PolicyChain::default(),
        options,
        telemetry,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.reset_stats();

    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
                    "metadata": {"name": format!("app-{i}"), "namespace": "default"},
                    "spec": {"workload": {"image": "nginx:1.27", "replicas": 2}},
                }))
                .expect("object");
                api.create(&PostParams::default(), &obj).await.expect("create");
            }
        })
        .await;
    // A bench that cannot converge says so instead of waiting forever.
    let (mut last, mut progressed) = (0, Instant::now());
    loop {
        let ready = ready_count(&api).await;
        if ready >= n {
            break;
        }
        if ready > last {
            (last, progressed) = (ready, Instant::now());
        }
        assert!(progressed.elapsed() < Duration::from_secs(120), "{label}: stalled at {ready}/{n} Ready for 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed();
    let requests = server.stats();
    let reconciles = Stats::get(&stats.reconciles);
    println!(
        "{label:<7} {n:>6} parents: all Ready in {:>7.2}s  {:>7.0} reconciles/s  {:>5.2} API requests/object ({:.2} writes, creates included)  RSS {} MiB (peak {} MiB)",
        wall.as_secs_f64(),
        reconciles as f64 / wall.as_secs_f64(),
        requests.total() as f64 / n as f64,
        requests.writes("*") as f64 / n as f64,
        memory_kib("VmRSS:") / 1024,
        memory_kib("VmHWM:") / 1024,
    );
    // Where the requests go, per object: what to cut next.
    let per_object: Vec<String> = requests
        .counts
        .iter()
        .map(|((verb, resource), count)| format!("{verb} {resource} {:.2}", *count as f64 / n as f64))
        .collect();
    println!("{label:<7} {n:>6} parents: requests per object: {}", per_object.join(", "));
    let _ = stop.send(true);
    let _ = task.await;
    server.shutdown().await;
}

fn main() {
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
    for n in sizes {
        tokio.block_on(run("wasm", Arc::new(plugin.clone()), &plugin, n));
        let native = Arc::new(Native { meta: plugin.metadata().clone() });
        tokio.block_on(run("native", native, &plugin, n));
    }
}
