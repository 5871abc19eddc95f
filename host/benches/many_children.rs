//! One reconcile of a parent whose N children are all unchanged (N = 1,000, 10,000, 20,000 by
//! default; `WASMOP_BENCH_CHILDREN=1000,5000` to choose), against the in-memory API server in
//! the same process: wall time and CPU time of the reconcile (the process's, so the server's
//! share of reading the status write is included), and peak RSS. The test plugin `hostile`
//! returns N ConfigMaps (`mode: many`); a spec change forces the reconcile, which must write no
//! child. `make bench` builds the plugin.

#[path = "common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Runtime, RuntimeConfig};
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::Telemetry;
use wasmop_apiserver::{ApiServer, Config};

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set size of this process, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    kb / 1024
}

async fn run(n: usize, plugin: PathBuf) {
    let server = ApiServer::start(Config::default()).await.expect("api server");
    let client = Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    hostile::install(&client, hostile::crd()).await;

    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(&plugin, dir.path().join("hostile.wasm")).expect("copy");
    let sidecar = format!("[limits]\nmax_children = {n}\noutput_mib = 64\nmemory_mib = 512\ntimeout_ms = 30000\n");
    std::fs::write(dir.path().join("hostile.toml"), sidecar).expect("sidecar");
    let cache = tempfile::tempdir().expect("cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    let telemetry = Telemetry::new();
    let stats = telemetry.stats.clone();
    let options =
        ControllerOptions { concurrency: 4, resync: Duration::from_secs(3600), ..ControllerOptions::default() };
    let catalog = Catalog::builder(Arc::new(runtime)).dir(dir.path().to_path_buf()).start().await.expect("catalog");
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).telemetry(telemetry).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &hostile::resource());
    let parent: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
        "metadata": {"name": "crowd", "namespace": "default"}, "spec": {"mode": "many", "count": n},
    }))
    .expect("parent");
    parents.create(&PostParams::default(), &parent).await.expect("create");
    let observed = |generation: i64| {
        let parents = parents.clone();
        async move {
            loop {
                let p = parents.get("crowd").await.expect("get");
                if p.data["status"]["observedGeneration"] == generation {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let started = Instant::now();
    observed(1).await;
    let first = started.elapsed();

    let applies = wasmop::telemetry::Stats::get(&stats.applies);
    let (cpu, wall) = (cpu_time(), Instant::now());
    parents.patch("crowd", &PatchParams::default(), &Patch::Merge(json!({"spec": {"nonce": 1}}))).await.expect("patch");
    observed(2).await;
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    let writes = wasmop::telemetry::Stats::get(&stats.applies) - applies;
    println!(
        "children {n:>6}: first reconcile (all created) {:>6.2}s; unchanged reconcile {:>7.1} ms wall, {:>7.1} ms CPU, {writes} child writes; peak RSS {} MiB",
        first.as_secs_f64(),
        wall.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        peak_rss_mib()
    );
    let _ = stop.send(true);
    let _ = task.await;
    server.shutdown().await;
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("target/wasm32-wasip2/plugin/hostile.wasm");
    assert!(plugin.exists(), "{} missing: run `make bench` (it builds the test plugins)", plugin.display());
    let sizes: Vec<usize> = std::env::var("WASMOP_BENCH_CHILDREN")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 20_000]);
    // Under `cargo test --benches` run a token size so the bench is exercised, not measured.
    let sizes = if std::env::args().any(|a| a == "--bench") { sizes } else { vec![20] };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for n in sizes {
        rt.block_on(run(n, plugin.clone()));
    }
}
