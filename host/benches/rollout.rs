//! Staged rollout, two figures over N parents of the test plugin `hostile` (default 10,000 with
//! `make bench`), the in-memory API server in a child process:
//!
//! - **Dual residency**: the time of a full reconcile pass (every parent, nothing to write) by a
//!   controller serving one revision, and by one serving a canary beside it at 50% (a second
//!   instance, the same revision, so both passes write nothing): the ratio is what two resident
//!   revisions and the per-parent choice cost.
//! - **Rollback**: a `WasmPlugin` rolls out a revision that traps on the 20% `flaky` parents;
//!   from the status writer's `RolledBack` to every child carrying the stable revision again,
//!   and from the patch to that decision.

#[path = "../tests/common/registry.rs"]
#[allow(dead_code)]
mod crane;
#[path = "common/hostile.rs"]
mod hostile;
#[path = "common/server.rs"]
mod server;
#[path = "common/tally.rs"]
mod tally;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop::catalog::{Canary, Catalog, ClusterSource, Revision, Source};
use wasmop::controller::{ControllerOptions, run_plugin};
use wasmop::plugin::{Limits, Runtime, RuntimeConfig};
use wasmop::policy::{Mode, PolicyChain};
use wasmop::registry::ArtifactCache;
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::{Stats, Telemetry};
use wasmop::wasmplugin::WasmPlugin;

use tally::Tally;

fn revision_of(c: &ConfigMap) -> Option<String> {
    c.annotations().get("wasmop.dev/plugin-revision").cloned()
}

fn plugin_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/hostile.wasm")
}

fn flaky_fifth(i: usize) -> &'static str {
    if i.is_multiple_of(5) { "flaky" } else { "ok" }
}

/// Seconds for one controller, started fresh, to reconcile all `n` parents once.
async fn pass(client: &Client, runtime: &Runtime, n: u64, canary: Option<Arc<Canary>>) -> f64 {
    let plugin =
        runtime.load_operator(&plugin_file(), Limits::default()).expect("hostile.wasm: run `make test-plugins`");
    let telemetry = Telemetry::new();
    let options = ControllerOptions {
        namespace: Some("default".into()),
        concurrency: 16,
        canary,
        ..ControllerOptions::default()
    };
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let stats = telemetry.stats.clone();
    let started = Instant::now();
    let task = tokio::spawn(run_plugin(
        client.clone(),
        Arc::new(plugin),
        PolicyChain::default(),
        options,
        telemetry,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    while Stats::get(&stats.reconciles) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The graceful shutdown lets the reconciles in flight finish.
    let _ = stop.send(true);
    let _ = task.await;
    started.elapsed().as_secs_f64()
}

/// The median of three passes each way, alternating.
async fn dual_residency(client: &Client, runtime: &Runtime, n: usize) {
    let second = runtime.load_operator(&plugin_file(), Limits::default()).expect("hostile.wasm");
    let revision = Revision {
        source: Source::File(plugin_file()),
        plugin: second,
        settings: None,
        mode: Mode::Protect,
        fingerprint: "bench-canary".into(),
    };
    let canary = Arc::new(Canary { revision: Arc::new(revision), percent: 50, selector: None });
    let (mut single, mut dual) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        single.push(pass(client, runtime, n as u64, None).await);
        dual.push(pass(client, runtime, n as u64, Some(canary.clone())).await);
    }
    single.sort_by(f64::total_cmp);
    dual.sort_by(f64::total_cmp);
    let (one, two) = (single[1], dual[1]);
    println!(
        "rollout: full pass over {n} parents: one revision {one:.2}s ({:.0}/s), a canary at 50% beside it {two:.2}s \
         ({:.0}/s): dual residency costs {:+.1}% of the throughput (median of 3 each)",
        n as f64 / one,
        n as f64 / two,
        (1.0 - one / two) * 100.0
    );
}

/// Rolls out a revision failing on the flaky fifth of the parents and times the rollback.
async fn rollback(client: &Client, runtime: Arc<Runtime>, n: usize) {
    let base = std::fs::read(plugin_file()).expect("hostile.wasm");
    let bad = crane::rebuilt(&base, "bad");
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "builds"},
        "binaryData": {"v1.wasm": b64(&base), "bad.wasm": b64(&bad)},
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &config_map)
        .await
        .expect("cm");
    let artifacts = tempfile::tempdir().expect("artifacts");
    let source =
        ClusterSource::new(client.clone(), "default".into(), ArtifactCache::new(artifacts.path().into(), 1 << 30));
    // The supervisor records into the catalog's telemetry, which the rollout's analysis reads.
    let catalog = Catalog::builder(runtime).cluster(source).start().await.expect("catalog");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "hostile"},
        "spec": {"source": {"configMap": {"name": "builds", "key": "v1.wasm"}}},
    }))
    .expect("object");
    plugins.create(&PostParams::default(), &object).await.expect("create WasmPlugin");
    let stable = wasmop::plugin::sha256_hex(&base)[..12].to_string();
    let mut revisions = Tally::follow(Api::namespaced(client.clone(), "default"), revision_of);
    revisions.wait(&stable, n).await;

    let patch = json!({"spec": {"source": {"configMap": {"name": "builds", "key": "bad.wasm"}},
        "settings": {"failFlaky": true},
        "rollout": {"steps": [{"percent": 50, "pause": "1h"}, {"percent": 100}],
            "analysis": {"maxFailureRate": 0.05, "minReconciles": 50}}}});
    let patched = Instant::now();
    plugins.patch("hostile", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let decided = loop {
        let rollout = plugins.get("hostile").await.ok().and_then(|o| o.status).and_then(|s| s.rollout);
        if rollout.is_some_and(|r| r.phase == wasmop::rollout::ROLLED_BACK) {
            break Instant::now();
        }
        assert!(patched.elapsed() < Duration::from_secs(300), "no rollback within 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    revisions.wait(&stable, n).await;
    let back = decided.elapsed().as_secs_f64();
    println!(
        "rollout: a canary failing on 20% of {n} parents rolled back {:.2}s after the patch; every parent back on \
         the stable revision {back:.2}s after the RolledBack decision",
        (decided - patched).as_secs_f64()
    );
    let _ = stop.send(true);
    let _ = task.await;
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn run(n: usize) {
    let remote = server::Remote::start(None);
    let client = Client::try_from(kube::Config::new(remote.url().parse().expect("url"))).expect("client");
    hostile::install(&client, hostile::crd()).await;
    hostile::install(&client, wasmop::wasmplugin::crd()).await;
    hostile::create_parents_in_modes(&client, n, flaky_fifth).await;
    let code_cache = tempfile::tempdir().expect("code cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(code_cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    let runtime = Arc::new(runtime);
    rollback(&client, runtime.clone(), n).await;
    dual_residency(&client, &runtime, n).await;
}

fn main() {
    server::serve_if_child();
    // `WASMOP_BENCH_PARENTS` for another size; a token size under `cargo test --benches`.
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(10_000);
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { size } else { 100 };
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n));
}
