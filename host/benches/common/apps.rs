//! Appoperators for the benches: create N of them, and wait until N are Ready.
// Each bench uses part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// Creates Appoperators `app-{i}` for `i` in `range` in namespace `ns`, 32 at a time, each
/// asking for 2 replicas.
pub async fn create(api: &Api<DynamicObject>, ns: &str, range: std::ops::Range<usize>) {
    create_with(api, ns, range, 2).await;
}

/// [`create`] with `replicas` replicas each (0: Ready at once, without a pod).
pub async fn create_with(api: &Api<DynamicObject>, ns: &str, range: std::ops::Range<usize>, replicas: u32) {
    futures::stream::iter(range)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
                    "metadata": {"name": format!("app-{i}"), "namespace": ns},
                    "spec": {"workload": {"image": "nginx:1.27", "replicas": replicas}},
                }))
                .expect("object");
                api.create(&PostParams::default(), &obj).await.expect("create");
            }
        })
        .await;
}

pub fn is_ready(o: &DynamicObject) -> bool {
    wasmop::status::ready_of(&o.data["status"]).is_some_and(|(s, _, _)| s == "True")
}

/// Waits until `n` parents are Ready, following them with one watch (default), or polling a
/// list every 250 ms (`WASMOP_BENCH_READY=list`, as up to 0.2.0: each list of 10,000 objects
/// costs the server a full serialisation). Panics when no parent became Ready for 120 s.
pub async fn wait_ready(label: &str, api: Api<DynamicObject>, n: usize, started: tokio::sync::oneshot::Receiver<()>) {
    let stall = Duration::from_secs(120);
    if std::env::var("WASMOP_BENCH_READY").is_ok_and(|v| v == "list") {
        let _ = started.await;
        let (mut last, mut progressed) = (0, Instant::now());
        loop {
            let ready = match api.list(&ListParams::default()).await {
                Ok(list) => list.items.iter().filter(|o| is_ready(o)).count(),
                Err(_) => 0,
            };
            if ready >= n {
                return;
            }
            if ready > last {
                (last, progressed) = (ready, Instant::now());
            }
            assert!(progressed.elapsed() < stall, "{label}: stalled at {ready}/{n} Ready for 120 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut ready = HashSet::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    while ready.len() < n {
        let event = tokio::time::timeout(stall, events.next()).await;
        let Ok(Some(event)) = event else { panic!("{label}: stalled at {}/{n} Ready for 120 s", ready.len()) };
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) if is_ready(&o) => {
                ready.insert(o.name_any());
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o)) => {
                ready.remove(&o.name_any());
            }
            _ => {}
        }
    }
}
