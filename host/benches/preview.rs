//! `wasmop preview`: the time to preview a new plugin version on N parents (default 1,000;
//! `WASMOP_BENCH_PARENTS=10000` for the target's figure) that v1 reconciled, and the requests it
//! made, counted by the in-memory API server (in a child process): the writes must be zero. Uses
//! the test plugin `hostile` (v1, and v2, which labels every child differently).

#[path = "common/hostile.rs"]
mod hostile;
#[path = "common/server.rs"]
mod server;
#[path = "common/tally.rs"]
mod tally;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::{Client, ResourceExt};
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Limits, Runtime, RuntimeConfig};
use wasmop::preview::Preview;
use wasmop::supervisor::Supervisor;

use tally::Tally;

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin")
}

fn variant(c: &ConfigMap) -> Option<String> {
    c.labels().get("wasmop.test/variant").cloned()
}

/// Runs v1 until all `n` parents carry its children, then stops it.
async fn reconcile_with_v1(client: &Client, runtime: Arc<Runtime>, n: usize) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(plugins_dir().join("hostile.wasm"), dir.path().join("hostile.wasm"))
        .expect("hostile.wasm: run `make test-plugins`");
    let catalog = Catalog::builder(runtime).dir(dir.path().to_path_buf()).start().await.expect("catalog");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    hostile::create_parents(client, n).await;
    Tally::follow(Api::namespaced(client.clone(), "default"), variant).wait("v1", n).await;
    let _ = stop.send(true);
    let _ = task.await;
}

async fn run(n: usize) {
    let mut remote = server::Remote::start(None);
    let client = Client::try_from(kube::Config::new(remote.url().parse().expect("url"))).expect("client");
    hostile::install(&client, hostile::crd()).await;
    let cache = tempfile::tempdir().expect("code cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    let runtime = Arc::new(runtime);
    reconcile_with_v1(&client, runtime.clone(), n).await;

    let v2 = runtime.load_operator(&plugins_dir().join("hostile_v2.wasm"), Limits::default()).expect("hostile_v2.wasm");
    remote.reset_stats();
    let started = Instant::now();
    let report = Preview::new(client.clone(), Arc::new(v2)).run().await.expect("preview");
    let wall = started.elapsed().as_secs_f64();
    let stats = remote.stats();
    let writes: u64 = stats
        .iter()
        .filter(|((verb, _), _)| ["create", "update", "patch", "delete", "deletecollection"].contains(&verb.as_str()))
        .map(|(_, n)| n)
        .sum();
    let requests: Vec<String> = stats.iter().map(|((verb, resource), n)| format!("{verb} {resource} {n}")).collect();
    let s = &report.summary;
    println!(
        "preview: {n} parents in {wall:.2}s ({} changed, {} unchanged, {} failing); writes {writes}; requests: {}",
        s.changed,
        s.unchanged,
        s.failing,
        requests.join(", ")
    );
    assert_eq!(writes, 0, "the preview wrote");
    assert_eq!(s.changed, n, "v2 changes every parent's child");
}

fn main() {
    server::serve_if_child();
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { size } else { 20 };
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n));
}
