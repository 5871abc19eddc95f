//! Related objects at scale (issue 21's targets), against the in-memory API server in this
//! process, with the Appoperator plugin and its `configRef`:
//!
//! - N parents (default 10,000) each naming one of N ConfigMaps; edits of single ConfigMaps,
//!   one at a time: the time from the edit to the new hash on its parent's Deployment (p50,
//!   p99), and the API requests the operator made meanwhile, by verb and resource (no read of a
//!   ConfigMap: related objects come from the cache);
//! - the fan-out: one ConfigMap named by 1,000 more parents, edited: the time until all 1,000
//!   Deployments carry the new hash, beside one edit's;
//! - the index alone: the bytes one reference costs (a counting allocator around building it
//!   for N parents), and a lookup of an object selected by 1 parent vs by 1,000 (the cost is
//!   the selections that match, not the parents).
//!
//! `make bench` runs it; `WASMOP_BENCH_PARENTS` picks N. Under `cargo test --benches` it runs a
//! token size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::plugin::{Runtime, RuntimeConfig};
use wasmop::reconcile::related::ParentKey;
use wasmop::related::{Changed, KindRef, RelatedIndex, Selection, Target};
use wasmop::supervisor::Supervisor;
use wasmop_apiserver::{ApiServer, Config};

/// The system allocator, counting the bytes live, so the index's size can be measured.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NS: &str = "default";
const HASH: &str = "appoperator.tools.wasmop.dev/config-hash";

fn config_maps() -> KindRef {
    KindRef { group: String::new(), kind: "ConfigMap".into() }
}

/// A parent's key as `Related` files it: the namespace shared through the index.
fn parent(index: &mut RelatedIndex<ParentKey>, name: &str) -> ParentKey {
    ParentKey { namespace: Some(index.intern(NS)), name: name.into() }
}

fn by_name(name: &str) -> Selection {
    Selection { kind: config_maps(), namespace: Some(NS.into()), target: Target::Name(name.into()) }
}

/// The index alone: bytes per reference, and a lookup's time for 1 and for 1,000 selecting
/// parents among `n`.
fn index(n: usize, fan_out: usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut index = RelatedIndex::new();
    for i in 0..n {
        let key = parent(&mut index, &format!("app-{i}"));
        index.set(&key, vec![by_name(&format!("config-{i}"))]);
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "related index: {n} parents naming one ConfigMap each: {bytes} bytes, {} bytes per reference \
         (names like app-1234 / config-1234, namespace default)",
        bytes / n as isize
    );
    for j in 0..fan_out {
        let key = parent(&mut index, &format!("shared-{j}"));
        index.set(&key, vec![by_name("shared")]);
    }
    let (kind, labels) = (config_maps(), Default::default());
    let time = |name: &str| {
        let changed = Changed { kind: &kind, namespace: Some(NS), name, labels: &labels };
        let rounds = 200;
        let started = Instant::now();
        let mut found = 0;
        for _ in 0..rounds {
            found = index.parents_of(changed).0.len();
        }
        (started.elapsed() / rounds, found)
    };
    let (one, found_one) = time("config-42");
    let (many, found_many) = time("shared");
    println!(
        "related index lookup among {} parents: an object selected by {found_one}: {one:?}; by {found_many}: \
         {many:?} ({:.0}x for {}x the parents)",
        n + fan_out,
        many.as_secs_f64() / one.as_secs_f64().max(1e-12),
        found_many / found_one.max(1)
    );
}

/// Follows the Deployments' config hashes, and wakes waiters on every change.
#[derive(Clone, Default)]
struct Hashes {
    seen: Arc<Mutex<HashMap<String, String>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Hashes {
    fn follow(client: &Client) -> Hashes {
        let hashes = Hashes::default();
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let follower = hashes.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Ok(Some(d)) = events.try_next().await {
                let hash = d.spec.and_then(|s| s.template.metadata?.annotations?.get(HASH).cloned());
                if let (Some(hash), Ok(mut seen)) = (hash, follower.seen.lock()) {
                    seen.insert(d.metadata.name.unwrap_or_default(), hash);
                }
                follower.changed.notify_waiters();
            }
        });
        hashes
    }

    fn get(&self, name: &str) -> Option<String> {
        self.seen.lock().ok()?.get(name).cloned()
    }

    /// Waits until `done` holds, checking on every change (and every 100 ms).
    async fn until(&self, mut done: impl FnMut(&HashMap<String, String>) -> bool) {
        loop {
            let notified = self.changed.notified();
            if self.seen.lock().is_ok_and(|seen| done(&seen)) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

async fn put_config_map(api: &Api<ConfigMap>, name: &str, level: &str) {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"LEVEL": level}})).expect("config map");
    api.patch(name, &PatchParams::apply("bench").force(), &Patch::Apply(&cm)).await.expect("config map");
}

async fn create_parents(api: &Api<DynamicObject>, names: Vec<(String, String)>) {
    futures::stream::iter(names)
        .for_each_concurrent(32, |(name, config)| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"workload": {"image": "nginx:1.27", "replicas": 1, "configRef": config}},
                }))
                .expect("object");
                api.create(&PostParams::default(), &obj).await.expect("create");
            }
        })
        .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(n: usize, edits: usize, fan_out: usize, plugin: PathBuf) {
    let server = ApiServer::start(Config::default()).await.expect("api server");
    let client = Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(&plugin, dir.path().join("appoperator.wasm")).expect("copy");
    let cache = tempfile::tempdir().expect("cache");
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
            .expect("runtime"),
    );
    let loaded = runtime.load_operator(&plugin, Default::default()).expect("plugin");
    wasmop::crd::install(&client, &loaded, None).await.expect("crd");
    let catalog = Catalog::builder(runtime).dir(dir.path().to_path_buf()).start().await.expect("catalog");
    let options = ControllerOptions { concurrency: 16, ..ControllerOptions::default() };
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).build();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(supervisor.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = config_maps.clone();
            async move { put_config_map(&api, &format!("config-{i}"), "v0").await }
        })
        .await;
    let hashes = Hashes::follow(&client);
    let started = Instant::now();
    let parents = wasmop_apis(&client);
    create_parents(&parents, (0..n).map(|i| (format!("app-{i}"), format!("config-{i}"))).collect()).await;
    hashes.until(|seen| seen.len() >= n).await;
    println!("related: {n} parents, each naming its own ConfigMap, all carry its hash after {:.1?}", started.elapsed());

    // Until the first statuses are written (the edits' requests alone are counted below).
    let mut quiet = server.stats();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.stats();
        if now.since(&quiet).writes("*") == 0 {
            break;
        }
        quiet = now;
    }

    // Single edits, one at a time.
    let before = server.stats();
    let mut latencies = Vec::with_capacity(edits);
    for k in 0..edits {
        let i = (k * 7919) % n;
        let (name, old) = (format!("app-{i}"), hashes.get(&format!("app-{i}")));
        let edited = Instant::now();
        put_config_map(&config_maps, &format!("config-{i}"), &format!("v{}", k + 1)).await;
        hashes.until(|seen| seen.get(&name) != old.as_ref()).await;
        latencies.push(edited.elapsed());
    }
    let requests = server.stats().since(&before);
    latencies.sort();
    println!(
        "related: a ConfigMap edit to its parent's new Deployment template, over {edits} edits: p50 {:.1?}, p99 {:.1?}, \
         max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    let reads = requests.count("get", "configmaps") + requests.count("list", "configmaps");
    let per_edit: Vec<String> = requests
        .counts
        .iter()
        .map(|((verb, resource), count)| format!("{verb} {resource} {:.2}", *count as f64 / edits as f64))
        .collect();
    println!(
        "related: API requests meanwhile, per edit: {:.2} in all ({}); ConfigMap reads by the operator: {reads}",
        requests.total() as f64 / edits as f64,
        per_edit.join(", ")
    );

    // The fan-out: one ConfigMap named by `fan_out` parents.
    put_config_map(&config_maps, "shared", "v0").await;
    let shared: Vec<String> = (0..fan_out).map(|j| format!("shared-{j}")).collect();
    create_parents(&parents, shared.iter().map(|s| (s.clone(), "shared".to_string())).collect()).await;
    hashes.until(|seen| shared.iter().all(|s| seen.contains_key(s))).await;
    let old = hashes.get("shared-0");
    let edited = Instant::now();
    put_config_map(&config_maps, "shared", "v1").await;
    hashes.until(|seen| shared.iter().all(|s| seen.get(s) != old.as_ref())).await;
    println!(
        "related: one ConfigMap named by {fan_out} parents, edited: all {fan_out} Deployments carry the new hash after \
         {:.1?} (one parent's edit: p50 {:.1?})",
        edited.elapsed(),
        percentile(&latencies, 0.5)
    );
    let _ = stop.send(true);
    let _ = task.await;
    server.shutdown().await;
}

fn wasmop_apis(client: &Client) -> Api<DynamicObject> {
    let gvk = kube::core::GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator");
    Api::namespaced_with(client.clone(), NS, &kube::core::ApiResource::from_gvk_with_plural(&gvk, "appoperators"))
}

fn main() {
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    assert!(plugin.exists(), "appoperator.wasm missing: run `make plugins` (make bench does)");
    let size = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(10_000);
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, edits, fan_out) = if bench { (size, 200, 1000) } else { (20, 5, 20) };
    index(if bench { size } else { 1000 }, fan_out);
    tokio::runtime::Runtime::new().expect("tokio").block_on(run(n, edits, fan_out, plugin));
}
