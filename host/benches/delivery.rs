//! Plugin delivery: a pull plus verify of the 1.24 MiB default plugin from a loopback registry
//! (`crane registry serve`, built by `make registry`), and the time from a `WasmPlugin`'s new
//! digest (a patch, as `kubectl apply` sends) to its revision on the children of all N parents
//! (default 1,000), with the new version's compiled code already cached (warm) and not (cold).
//! The in-memory API server runs in a child process. Uses the test plugin `hostile` (v1, v2).

#[path = "../tests/common/registry.rs"]
#[allow(dead_code)]
mod crane;
#[path = "common/hostile.rs"]
mod hostile;
#[path = "common/server.rs"]
mod server;
#[path = "common/tally.rs"]
mod tally;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop::catalog::{Catalog, ClusterSource};
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Limits, Runtime, RuntimeConfig};
use wasmop::registry::{self, ArtifactCache, Registry};
use wasmop::supervisor::Supervisor;

use tally::Tally;

fn revision(c: &ConfigMap) -> Option<String> {
    c.annotations().get("wasmop.dev/plugin-revision").cloned()
}

/// Pulls (and verifies) the default plugin `rounds` times; prints the median and the fastest.
async fn pull_figures(crane: &crane::Registry, rounds: usize) {
    let plugin = plugins_dir().join("appoperator.wasm");
    let bytes = std::fs::read(&plugin).expect("appoperator.wasm: run `make plugins`");
    let registry = Registry::default().insecure(vec![crane.host.clone()]);
    let reference = registry::parse_reference(&format!("{}/bench/app:v1", crane.host)).expect("ref");
    let digest = registry.push(&reference, bytes.clone(), "appoperator.wasm").await.expect("push");
    let pinned = reference.clone_with_digest(digest);
    let mut times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let artifact = registry.pull(&pinned, None).await.expect("pull");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(artifact.bytes.len(), bytes.len());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "delivery: pull + verify of the {:.2} MiB default plugin from a loopback registry: median {:.1} ms, fastest {:.1} ms ({rounds} pulls)",
        bytes.len() as f64 / (1024.0 * 1024.0),
        times[times.len() / 2],
        times[0]
    );
}

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin")
}

/// Patches the WasmPlugin to `digest` and waits for its revision on all `n` children.
async fn roll(
    plugins: &Api<DynamicObject>,
    revisions: &mut Tally,
    repo: &str,
    digest: &str,
    bytes: &[u8],
    n: usize,
) -> f64 {
    let revision = wasmop::plugin::sha256_hex(bytes)[..12].to_string();
    let started = Instant::now();
    let patch = json!({"spec": {"source": {"oci": {"ref": format!("{repo}@{digest}")}}}});
    plugins.patch("hostile", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    revisions.wait(&revision, n).await;
    started.elapsed().as_secs_f64()
}

async fn run(n: usize, rounds: usize) {
    let crane = crane::Registry::start();
    pull_figures(&crane, rounds).await;

    let remote = server::Remote::start(None);
    let client = Client::try_from(kube::Config::new(remote.url().parse().expect("url"))).expect("client");
    hostile::install(&client, hostile::crd()).await;
    hostile::install(&client, wasmop::wasmplugin::crd()).await;
    let v1 = std::fs::read(plugins_dir().join("hostile.wasm")).expect("hostile.wasm: run `make test-plugins`");
    let warm = std::fs::read(plugins_dir().join("hostile_v2.wasm")).expect("hostile_v2.wasm");
    let cold = crane::rebuilt(&warm, "cold");
    let registry = Registry::default().insecure(vec![crane.host.clone()]);
    let repo = format!("{}/bench/hostile", crane.host);
    let mut digests = Vec::new();
    for (tag, bytes) in [("v1", &v1), ("warm", &warm), ("cold", &cold)] {
        let reference = registry::parse_reference(&format!("{repo}:{tag}")).expect("ref");
        digests.push(registry.push(&reference, bytes.to_vec(), "hostile.wasm").await.expect("push"));
    }

    let code_cache = tempfile::tempdir().expect("code cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(code_cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    // Warm: the new version's compiled code is in the cache, as on a second replica or after
    // `wasmop preview`; cold compiles it on the way.
    runtime.load_bytes(Path::new("warm.wasm"), &warm, Limits::default()).expect("precompile");
    let artifacts = tempfile::tempdir().expect("artifacts");
    let source =
        ClusterSource::new(client.clone(), "default".into(), ArtifactCache::new(artifacts.path().into(), 1 << 30))
            .registry(registry);
    let catalog = Catalog::builder(Arc::new(runtime)).cluster(source).start().await.expect("catalog");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    let wasmplugins = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wasmop.dev", "v1alpha1", "WasmPlugin"),
        "wasmplugins",
    );
    let plugins: Api<DynamicObject> = Api::all_with(client.clone(), &wasmplugins);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "hostile"},
        "spec": {"source": {"oci": {"ref": format!("{repo}@{}", digests[0])}}},
    }))
    .expect("object");
    plugins.create(&PostParams::default(), &object).await.expect("create WasmPlugin");
    hostile::create_parents(&client, n).await;
    let mut revisions = Tally::follow(Api::namespaced(client.clone(), "default"), revision);
    revisions.wait(&wasmop::plugin::sha256_hex(&v1)[..12], n).await;

    let warm_s = roll(&plugins, &mut revisions, &repo, &digests[1], &warm, n).await;
    println!(
        "delivery: new digest applied to all {n} parents {warm_s:.2}s after the WasmPlugin patch (warm compiled-code cache)"
    );
    let cold_s = roll(&plugins, &mut revisions, &repo, &digests[2], &cold, n).await;
    println!(
        "delivery: new digest applied to all {n} parents {cold_s:.2}s after the WasmPlugin patch (cold: compiled on the way)"
    );
    let _ = stop.send(true);
    let _ = task.await;
}

fn main() {
    server::serve_if_child();
    // `WASMOP_BENCH_PARENTS=10000` for a larger figure; a token size under `cargo test --benches`.
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if bench { (size, 20) } else { (20, 2) };
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n, rounds));
}
