//! Throughput benchmark: listing 10,000 objects, and 100 concurrent watchers receiving
//! 10,000 writes. Prints rates and the process's peak memory.
//!
//! Run with `cargo bench -p wasmop-apiserver --bench throughput`; `WASMOP_BENCH_OBJECTS` and
//! `WASMOP_BENCH_WATCHERS` scale it down.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use wasmop_apiserver::{ApiServer, Config};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string()).unwrap_or_else(|| "?".into())
    };
    format!("rss {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let objects = env_usize("WASMOP_BENCH_OBJECTS", 10_000);
    let watchers = env_usize("WASMOP_BENCH_WATCHERS", 100);
    let server = ApiServer::start(Config { history_size: objects * 2 + 100, ..Config::default() }).await?;
    let client = kube::Client::try_from(kube::Config::new(server.url().parse()?))?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let t = Instant::now();
    let chunks: Vec<Vec<usize>> =
        (0..objects).collect::<Vec<_>>().chunks(objects.div_ceil(8).max(1)).map(<[usize]>::to_vec).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("cm-{i:05}"), "labels": {"bench": "yes", "shard": (i % 10).to_string()}},
                    "data": {"payload": "x".repeat(200), "index": i.to_string()}
                }))
                .expect("valid configmap");
                api.create(&PostParams::default(), &cm).await.expect("create");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("create: {objects} objects in {secs:.2}s ({:.0} creates/s); {}", objects as f64 / secs, memory());

    let rounds = 5;
    let t = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..rounds {
        let list = api.list(&ListParams::default()).await?;
        assert_eq!(list.items.len(), objects);
        bytes += serde_json::to_vec(&list)?.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "list: {rounds} x {objects} objects in {secs:.2}s ({:.1} lists/s, {:.0} objects/s, ~{:.1} MB/s); {}",
        rounds as f64 / secs,
        (rounds * objects) as f64 / secs,
        bytes as f64 / secs / 1e6,
        memory()
    );
    let t = Instant::now();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(c) = &token {
            lp = lp.continue_token(c);
        }
        let page = api.list(&lp).await?;
        pages += 1;
        token = page.metadata.continue_.clone();
        if token.is_none() {
            break;
        }
    }
    println!("paginated list: {pages} pages of 500 in {:.2}s", t.elapsed().as_secs_f64());

    let rv = server.resource_version().to_string();
    let writes = objects;
    let mut watch_tasks = Vec::new();
    for _ in 0..watchers {
        let api = api.clone();
        let rv = rv.clone();
        watch_tasks.push(tokio::spawn(async move {
            let mut stream = api.watch(&WatchParams::default().timeout(290), &rv).await.expect("watch").boxed();
            let mut seen = 0usize;
            while seen < writes {
                match tokio::time::timeout(Duration::from_secs(120), stream.next()).await {
                    Ok(Some(Ok(WatchEvent::Modified(_)))) => seen += 1,
                    Ok(Some(Ok(_))) => {}
                    other => panic!("watch ended early after {seen}: {other:?}"),
                }
            }
            seen
        }));
    }
    // Let every watch register before writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    let per = writes.div_ceil(8).max(1);
    for w in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w * per)..((w + 1) * per).min(writes) {
                api.patch(
                    &format!("cm-{i:05}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"index": format!("w{i}")}})),
                )
                .await
                .expect("patch");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let write_secs = t.elapsed().as_secs_f64();
    let mut delivered = 0;
    for t in watch_tasks {
        delivered += t.await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "watch: {watchers} watchers x {writes} writes: writes took {write_secs:.2}s ({:.0} writes/s); all {delivered} events delivered in {secs:.2}s ({:.0} events/s); {}",
        writes as f64 / write_secs,
        delivered as f64 / secs,
        memory()
    );
    server.shutdown().await;
    Ok(())
}
