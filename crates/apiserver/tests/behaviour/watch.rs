//! Watch wire details and kube-runtime watchers, reflectors and controllers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use kube::{Resource, ResourceExt};
use serde_json::json;
use wasmop_apiserver::Config;

use crate::common::{client, eventually, server_with};

fn fast() -> Config {
    Config { bookmark_interval: Duration::from_millis(100), ..Config::default() }
}

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

async fn next<T>(s: &mut (impl futures::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("event in time").expect("stream open")
}

#[tokio::test]
async fn watch_events_bookmarks_and_deleted_resource_version() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let created = api.create(&PostParams::default(), &cm("w")).await.unwrap();
    let rv = created.resource_version().unwrap();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    let modified_rv = match next(&mut stream).await.unwrap() {
        WatchEvent::Modified(o) => o.resource_version().unwrap().parse::<u64>().unwrap(),
        other => panic!("expected MODIFIED, got {other:?}"),
    };
    api.delete("w", &DeleteParams::default()).await.unwrap();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Deleted(o) => {
            let deleted_rv: u64 = o.resource_version().unwrap().parse().unwrap();
            assert!(deleted_rv > modified_rv, "DELETED carries the deletion's new resourceVersion");
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
    match next(&mut stream).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "ConfigMap");
            assert_eq!(b.types.api_version, "v1");
            assert_eq!(b.metadata.resource_version, server.resource_version().to_string());
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_stream_410() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    server.faults().expire_history();
    let mut stream = api.watch(&WatchParams::default(), "1").await.unwrap().boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let rv = server.resource_version().to_string();
    let started = tokio::time::Instant::now();
    let mut stream = api.watch(&WatchParams::default().timeout(1), &rv).await.unwrap().boxed();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = stream.next().await {
            assert!(matches!(ev, Ok(WatchEvent::Bookmark(_))), "only bookmarks on an idle watch");
        }
    })
    .await
    .expect("the server ends the stream");
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.shutdown().await;
}

#[tokio::test]
async fn send_initial_events_ends_with_annotated_bookmark() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    for n in ["a", "b"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let mut stream = api.watch(&WatchParams::streaming_lists(), "").await.unwrap().boxed();
    let mut names = Vec::new();
    loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(o) => names.push(o.name_any()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, vec!["a", "b"]);
    server.shutdown().await;
}

#[tokio::test]
async fn selector_transitions_become_added_and_deleted() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    api.create(&PostParams::default(), &cm("s")).await.unwrap();
    let rv = server.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default().labels("sel=yes"), &rv).await.unwrap().boxed();
    api.patch("s", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})))
        .await
        .unwrap();
    assert!(matches!(next(&mut stream).await.unwrap(), WatchEvent::Added(_)));
    api.patch("s", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})))
        .await
        .unwrap();
    assert!(matches!(next(&mut stream).await.unwrap(), WatchEvent::Deleted(_)));
    server.shutdown().await;
}

fn store_names(store: &reflector::Store<ConfigMap>) -> Vec<String> {
    let mut v: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
    v.sort();
    v
}

async fn reflector_survives(config: watcher::Config) {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watch_fn(api.clone(), config)).default_backoff().touched_objects();
    // Errors (the injected 500, the 410) are reported on the stream and the watcher carries on.
    let task = tokio::spawn(stream.for_each(|_| async {}));
    eventually(10, "initial sync", || async { (store_names(&reader) == ["a", "b", "c"]).then_some(()) }).await;

    // The watch is dropped and its first re-watch fails, so it resumes only after changes
    // were made and the history was compacted: the resume gets an in-stream 410 and relists.
    let watches = server.stats().count("watch", "configmaps");
    server.faults().fail_next("watch", "configmaps", 1, 500);
    server.faults().drop_watches();
    eventually(10, "failed re-watch", || async {
        (server.stats().count("watch", "configmaps") > watches).then_some(())
    })
    .await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("d")).await.unwrap();
    let lists = server.stats().count("list", "configmaps") + server.stats().count("watch", "configmaps");
    server.faults().expire_history();
    eventually(15, "resync after 410", || async { (store_names(&reader) == ["b", "c", "d"]).then_some(()) }).await;
    // Recovering took a new list (or a streaming-list watch) after the expiry.
    assert!(server.stats().count("list", "configmaps") + server.stats().count("watch", "configmaps") >= lists + 2);

    // A plain dropped watch resumes from its last resourceVersion without missing changes.
    server.faults().drop_watches();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("e")).await.unwrap();
    eventually(15, "resume after drop", || async { (store_names(&reader) == ["c", "d", "e"]).then_some(()) }).await;
    task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn reflector_across_restarts_and_forced_410() {
    reflector_survives(watcher::Config::default().page_size(2)).await;
}

#[tokio::test]
async fn reflector_with_streaming_lists() {
    reflector_survives(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn metadata_watcher_sees_partial_objects() {
    let server = server_with(fast()).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    api.create(&PostParams::default(), &cm("m1")).await.unwrap();
    let meta: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client(&server), "default");
    let mut stream = watch_fn(meta, watcher::Config::default()).applied_objects().boxed();
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("m1"));
    api.create(&PostParams::default(), &cm("m2")).await.unwrap();
    let second = next(&mut stream).await.unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("m2"));
    server.shutdown().await;
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(#[from] kube::Error);

#[tokio::test]
async fn controller_with_owns_sees_child_changes() {
    let server = server_with(fast()).await;
    let c = client(&server);
    let parents: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let children: Api<Secret> = Api::namespaced(c.clone(), "default");
    let reconciles = Arc::new(AtomicUsize::new(0));
    struct Ctx {
        secrets: Api<Secret>,
        count: Arc<AtomicUsize>,
    }
    let ctx = Arc::new(Ctx { secrets: children.clone(), count: reconciles.clone() });
    async fn reconcile(obj: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
        ctx.count.fetch_add(1, Ordering::SeqCst);
        let owner = obj.controller_owner_ref(&()).expect("has uid");
        let child = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{}-child", obj.name_any()), "ownerReferences": [owner]},
            "stringData": {"from": obj.name_any()},
        });
        ctx.secrets
            .patch(
                &format!("{}-child", obj.name_any()),
                &PatchParams::apply("test-controller").force(),
                &Patch::Apply(child),
            )
            .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new(parents.clone(), watcher::Config::default())
        .owns(children.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    parents.create(&PostParams::default(), &cm("parent")).await.unwrap();
    eventually(10, "child created", || async { children.get_opt("parent-child").await.ok().flatten() }).await;
    let settled = eventually(10, "reconciles settle", || async {
        let n = reconciles.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        (n == reconciles.load(Ordering::SeqCst) && n > 0).then_some(n)
    })
    .await;
    // A change to the child triggers a reconcile of its owner.
    children
        .patch(
            "parent-child",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    eventually(10, "owner reconciled after child change", || async {
        (reconciles.load(Ordering::SeqCst) > settled).then_some(())
    })
    .await;
    task.abort();
    server.shutdown().await;
}
