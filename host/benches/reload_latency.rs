//! Reload latency: from the write of a new plugin version to its logic applied to every one of
//! N parents (default 1,000), against the in-memory API server. Uses the test plugin `hostile`
//! in its v1 and v2 builds (v2 labels its ConfigMaps differently); `make bench` builds both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Runtime, RuntimeConfig};
use wasmop::reload::Supervisor;
use wasmop_apiserver::{ApiServer, Config};

async fn count_variant(api: &Api<ConfigMap>, variant: &str) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else { return 0 };
    list.items.iter().filter(|c| c.labels().get("wasmop.test/variant").map(String::as_str) == Some(variant)).count()
}

async fn run(n: usize, v1: PathBuf, v2: PathBuf) {
    let server = ApiServer::start(Config::default()).await.expect("api server");
    let client = Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "hostiles.test.wasmop.dev"},
        "spec": {"group": "test.wasmop.dev", "scope": "Namespaced",
            "names": {"plural": "hostiles", "singular": "hostile", "kind": "Hostile"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .expect("crd");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.expect("create crd");
    await_condition(crds, "hostiles.test.wasmop.dev", conditions::is_crd_established()).await.expect("established");

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("hostile.wasm");
    std::fs::copy(&v1, &file).expect("copy v1");
    let cache = tempfile::tempdir().expect("cache");
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let supervisor =
        Supervisor::builder(client.clone(), Arc::new(runtime), dir.path().to_path_buf()).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", "v1", "Hostile"), "hostiles");
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let parents = parents.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
                    "metadata": {"name": format!("h-{i}"), "namespace": "default"}, "spec": {"mode": "ok"},
                }))
                .expect("object");
                parents.create(&PostParams::default(), &obj).await.expect("create");
            }
        })
        .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    while count_variant(&config_maps, "v1").await < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let tmp = dir.path().join("hostile.wasm.tmp");
    std::fs::copy(&v2, &tmp).expect("copy v2");
    std::fs::rename(&tmp, &file).expect("rename");
    while count_variant(&config_maps, "v2").await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "reload: new version applied to all {n} parents {:.2}s after the file write (cold compile of the new version included)",
        started.elapsed().as_secs_f64()
    );
    let _ = stop.send(true);
    let _ = task.await;
    server.shutdown().await;
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin");
    let (v1, v2) = (dir.join("hostile.wasm"), dir.join("hostile_v2.wasm"));
    assert!(v1.exists() && v2.exists(), "hostile plugins missing: run `make test-plugins` (make bench does)");
    // `WASMOP_BENCH_PARENTS=10000` for the 10k figure; a token size under `cargo test --benches`.
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
    let n = if std::env::args().any(|a| a == "--bench") { size } else { 20 };
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n, v1, v2));
}
