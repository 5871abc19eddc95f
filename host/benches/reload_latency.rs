//! Reload latency: from the write of a new plugin version to its logic applied to every one of
//! N parents (default 1,000), against the in-memory API server. Uses the test plugin `hostile`
//! in its v1 and v2 builds (v2 labels its ConfigMaps differently); `make bench` builds both.
//! The API server runs in a child process (`WASMOP_BENCH_SERVER=inproc`: in this one) and the
//! ConfigMaps are followed with one watch (`WASMOP_BENCH_READY=list`: a list polled every
//! 50 ms, as up to 0.2.0, whose cost at 10,000 objects was most of the figure).

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
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Runtime, RuntimeConfig};
use wasmop::supervisor::Supervisor;
use wasmop_apiserver::{ApiServer, Config};

use tally::Tally;

async fn count_variant(api: &Api<ConfigMap>, variant: &str) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else { return 0 };
    list.items.iter().filter(|c| c.labels().get("wasmop.test/variant").map(String::as_str) == Some(variant)).count()
}

/// Waits until `n` ConfigMaps carry `variant`: from the tally, or with
/// `WASMOP_BENCH_READY=list` from a list polled `every` interval.
async fn wait(tally: &mut Tally, api: &Api<ConfigMap>, variant: &str, n: usize, every: Duration) {
    if std::env::var("WASMOP_BENCH_READY").is_ok_and(|v| v == "list") {
        while count_variant(api, variant).await < n {
            tokio::time::sleep(every).await;
        }
        return;
    }
    tally.wait(variant, n).await;
}

fn variant(c: &ConfigMap) -> Option<String> {
    c.labels().get("wasmop.test/variant").cloned()
}

async fn run(n: usize, v1: PathBuf, v2: PathBuf) {
    let (local, remote) = if std::env::var("WASMOP_BENCH_SERVER").is_ok_and(|v| v == "inproc") {
        (Some(ApiServer::start(Config::default()).await.expect("api server")), None)
    } else {
        (None, Some(server::Remote::start(None)))
    };
    let url =
        local.as_ref().map_or_else(|| remote.as_ref().map(|r| r.url().to_string()).unwrap_or_default(), |s| s.url());
    let client = Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
    hostile::install(&client, hostile::crd()).await;

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("hostile.wasm");
    std::fs::copy(&v1, &file).expect("copy v1");
    let cache = tempfile::tempdir().expect("cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let catalog = Catalog::builder(Arc::new(runtime)).dir(dir.path().to_path_buf()).start().await.expect("catalog");
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    hostile::create_parents(&client, n).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut variants = Tally::follow(config_maps.clone(), variant);
    wait(&mut variants, &config_maps, "v1", n, Duration::from_millis(100)).await;

    let pid = remote.as_ref().map(server::Remote::pid);
    let cpu = (server::cpu_seconds(None), server::cpu_seconds(pid));
    let started = Instant::now();
    let tmp = dir.path().join("hostile.wasm.tmp");
    std::fs::copy(&v2, &tmp).expect("copy v2");
    std::fs::rename(&tmp, &file).expect("rename");
    wait(&mut variants, &config_maps, "v2", n, Duration::from_millis(50)).await;
    let wall = started.elapsed().as_secs_f64();
    let (operator_cpu, server_cpu) = (server::cpu_seconds(None) - cpu.0, server::cpu_seconds(pid) - cpu.1);
    println!(
        "reload: new version applied to all {n} parents {wall:.2}s after the file write (cold compile of the new version included)"
    );
    if pid.is_some() {
        println!(
            "reload: CPU seconds meanwhile: operator process {operator_cpu:.1}, server process {server_cpu:.1}; operator RSS {} MiB",
            server::memory_kib(None, "VmRSS:") / 1024
        );
    }
    let _ = stop.send(true);
    let _ = task.await;
    if let Some(server) = local {
        server.shutdown().await;
    }
}

fn main() {
    server::serve_if_child();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin");
    let (v1, v2) = (dir.join("hostile.wasm"), dir.join("hostile_v2.wasm"));
    assert!(v1.exists() && v2.exists(), "hostile plugins missing: run `make test-plugins` (make bench does)");
    // `WASMOP_BENCH_PARENTS=10000` for the 10k figure; a token size under `cargo test --benches`.
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
    let n = if std::env::args().any(|a| a == "--bench") { size } else { 20 };
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n, v1, v2));
}
