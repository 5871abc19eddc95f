//! Hot reload on both API server backends: real files, real notify events, real plugins.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use wasmop::plugin::sha256_hex;

use common::cluster::*;
use common::opens::Opens;
use common::operator::{Operator, plugins_dir, quiet};

on_both_backends!(
    replace_break_recover_and_remove_a_plugin_without_restart,
    configmap_style_data_symlink_swap_triggers_a_reload,
    a_new_version_with_another_parent_kind_moves_the_controller,
    each_plugin_file_is_read_once_and_not_at_idle,
);

/// A new version with the same kinds is swapped into the running controller: every child gets
/// it, and neither the parents nor the children are listed or watched again (the in-memory
/// server counts the requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_kinds_keeps_the_watches() {
    let cluster = Cluster::memory().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    install_hostile_crd(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.wasm");
    let v2 = std::fs::read(hostile_v2()).unwrap();
    let (rev1, rev2) = (revision("hostile"), sha256_hex(&v2)[..12].to_string());
    std::fs::copy(common::plugin("hostile"), &file).unwrap();
    let running = supervise(&cluster, dir.path());
    let ar = hostile_resource();
    for name in ["a", "b", "c"] {
        create(&client, &ar, &ns, name, json!({"mode": "ok"})).await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually("v1 children", || all_carry(&config_maps, &["a", "b", "c"], "v1", &rev1)).await;
    let server = cluster.memory_server().unwrap();
    let before = server.stats();
    replace(&file, &v2);
    eventually("v2 reaches every child", || all_carry(&config_maps, &["a", "b", "c"], "v2", &rev2)).await;
    let during = server.stats().since(&before);
    // (The test itself lists the ConfigMaps.)
    assert_eq!(during.count("list", "hostiles"), 0, "the parents listed again: {during:?}");
    for resource in ["hostiles", "configmaps"] {
        assert_eq!(during.count("watch", resource), 0, "{resource} watched again: {during:?}");
    }
    // The reload's restamping is not announced child by child: once a's next reconcile (a spec
    // change that updates its ConfigMap) has finished — its status observes the new generation,
    // written after its Event — its Updated Event is the first of its kind for a, not the
    // second of a series.
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let child = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"edited": "yes"}});
    let patch = json!({"spec": {"mode": "given", "children": [child]}});
    parents.patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let updated_a = || async {
        let list = events.list(&ListParams::default()).await.unwrap().items;
        list.into_iter()
            .filter(|e| e.reason.as_deref() == Some("Updated"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("a"))
            .collect::<Vec<Event>>()
    };
    eventually("a's spec change is reconciled", || async {
        get(&client, &ar, &ns, "a").await.is_some_and(|a| {
            let generation = a.metadata.generation.unwrap_or_default();
            generation >= 2 && a.data["status"]["observedGeneration"] == generation
        })
    })
    .await;
    let updated = updated_a().await;
    assert!(updated.len() == 1 && updated[0].series.is_none(), "the reload announced updates: {updated:?}");
    running.stop().await;
    cluster.shutdown().await;
}

fn supervise(cluster: &Cluster, dir: &Path) -> Operator {
    Operator::start(cluster, dir, quiet())
}

/// Writes `bytes` to `path` the way careful tools do: a temp file, then a rename.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hostile_v2() -> PathBuf {
    common::plugin("hostile").with_file_name("hostile_v2.wasm")
}

async fn all_carry(config_maps: &Api<ConfigMap>, names: &[&str], variant: &str, revision: &str) -> bool {
    let Ok(list) = config_maps.list(&ListParams::default()).await else { return false };
    names.iter().all(|name| {
        list.items.iter().any(|cm| {
            cm.name_any() == *name
                && cm.labels().get("wasmop.test/variant").map(String::as_str) == Some(variant)
                && cm.annotations().get("wasmop.dev/plugin-revision").map(String::as_str) == Some(revision)
        })
    })
}

async fn replace_break_recover_and_remove_a_plugin_without_restart(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.wasm");
    let v1 = std::fs::read(common::plugin("hostile")).unwrap();
    let v2 = std::fs::read(hostile_v2()).unwrap();
    let (rev1, rev2) = (revision("hostile"), sha256_hex(&v2)[..12].to_string());
    std::fs::write(&file, &v1).unwrap();
    let running = supervise(&cluster, dir.path());
    let ar = hostile_resource();
    for name in ["a", "b", "c"] {
        create(&client, &ar, ns, name, json!({"mode": "ok"})).await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("v1 children", || all_carry(&config_maps, &["a", "b", "c"], "v1", &rev1)).await;

    // v2 replaces v1: every existing child gets v2's label and revision.
    replace(&file, &v2);
    eventually("v2 reaches every child", || all_carry(&config_maps, &["a", "b", "c"], "v2", &rev2)).await;

    // Broken files: v2 keeps serving, each failure is counted.
    let failures = || running.reloads.failures.load(Ordering::Relaxed);
    std::fs::write(&file, &v1[..v1.len() / 3]).unwrap();
    eventually("truncated file rejected", || async { failures() >= 1 }).await;
    std::fs::write(&file, wat::parse_str("(module)").unwrap()).unwrap();
    eventually("core module rejected", || async { failures() >= 2 }).await;
    std::fs::copy(common::plugin("contract-future"), &file).unwrap();
    eventually("other contract rejected", || async { failures() >= 3 }).await;
    std::fs::copy(common::plugin("deny-latest-tag"), &file).unwrap();
    eventually("component of another world rejected", || async { failures() >= 4 }).await;
    create(&client, &ar, ns, "d", json!({"mode": "ok"})).await;
    eventually("old version still reconciles", || all_carry(&config_maps, &["d"], "v2", &rev2)).await;

    // Fixing the file recovers without a restart.
    replace(&file, &v1);
    eventually("fixed file serves", || all_carry(&config_maps, &["a", "b", "c", "d"], "v1", &rev1)).await;

    // Each rejection was recorded as an Event (no Pod here: on the operator's namespace).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    // The recorder folds repeats into one Event with a series count.
    let rejected: i32 = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PluginRejected"))
        .inspect(|e| assert!(e.note.as_deref().unwrap_or("").contains("hostile.wasm"), "{:?}", e.note))
        .map(|e| e.series.map_or(1, |s| s.count))
        .sum();
    assert!(rejected >= 4, "PluginRejected events: {rejected}");

    // The sidecar: a change to it reloads the plugin; a bad one is refused like a bad plugin.
    let loads = || running.reloads.loads.load(Ordering::Relaxed);
    let sidecar = dir.path().join("hostile.toml");
    let before = loads();
    std::fs::write(&sidecar, "[limits]\ntimeout_ms = 300\n\n[settings]\nowner = \"team-a\"\n").unwrap();
    eventually("sidecar change reloads", || async { loads() > before }).await;
    eventually("sidecar settings reach the plugin", || async {
        let cm = config_maps.get("a").await.unwrap();
        cm.data.unwrap_or_default().get("payload").map(String::as_str) == Some(r#"{"owner":"team-a"}"#)
    })
    .await;
    std::fs::write(&sidecar, "[limits]\nbogus = 1\n").unwrap();
    eventually("bad sidecar rejected", || async { failures() >= 5 }).await;
    std::fs::remove_file(&sidecar).unwrap();
    eventually("sidecar removal reloads", || async { loads() > before + 1 }).await;

    // 20 rapid writes: the last one wins, one controller.
    for i in 0..20 {
        std::fs::write(&file, if i % 2 == 0 { &v2 } else { &v1 }).unwrap();
    }
    std::fs::write(&file, &v2).unwrap();
    eventually("last write wins", || all_carry(&config_maps, &["a", "b", "c", "d"], "v2", &rev2)).await;

    // Removal stops reconciliation of that kind; children stay.
    std::fs::remove_file(&file).unwrap();
    eventually("removal noticed", || async { running.reloads.removals.load(Ordering::Relaxed) == 1 }).await;
    create(&client, &ar, ns, "late", json!({"mode": "ok"})).await;

    // A new file starts a new kind (its CRD installed on the way).
    std::fs::copy(common::plugin("appoperator"), dir.path().join("appoperator.wasm")).unwrap();
    wait_served(&client, &app_resource()).await;
    create(&client, &app_resource(), ns, "web", json!({"workload": {"image": "nginx:1.27"}})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually("new plugin reconciles", || async { deployments.get_opt("web").await.unwrap().is_some() }).await;
    // By now the new plugin has reconciled a parent created after "late": the removed one did not.
    assert!(config_maps.get_opt("late").await.unwrap().is_none(), "a removed plugin still reconciles");
    assert!(config_maps.get_opt("a").await.unwrap().is_some(), "children must stay");

    running.stop().await;
    cluster.shutdown().await;
}

async fn configmap_style_data_symlink_swap_triggers_a_reload(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    // The layout kubelet gives a mounted ConfigMap: NAME -> ..data/NAME, ..data -> ..<timestamp>/
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("..2026_11_24_a"), dir.path().join("..2026_11_24_b"));
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(common::plugin("hostile"), old.join("hostile.wasm")).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_a", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/hostile.wasm", dir.path().join("hostile.wasm")).unwrap();
    let running = supervise(&cluster, dir.path());
    create(&client, &hostile_resource(), ns, "x", json!({"mode": "ok"})).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let rev1 = revision("hostile");
    eventually("v1 child", || all_carry(&config_maps, &["x"], "v1", &rev1)).await;

    // The swap: a new timestamped dir, a temp symlink to it, renamed over ..data.
    std::fs::create_dir(&new).unwrap();
    std::fs::copy(hostile_v2(), new.join("hostile.wasm")).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_b", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    let rev2 = sha256_hex(&std::fs::read(hostile_v2()).unwrap())[..12].to_string();
    eventually("v2 after the swap", || all_carry(&config_maps, &["x"], "v2", &rev2)).await;

    // A plugin over a ConfigMap's 1 MiB in such a directory is refused, saying so with its
    // exact size.
    std::fs::write(new.join("big.wasm"), vec![0u8; 3 << 19]).unwrap();
    std::os::unix::fs::symlink("..data/big.wasm", dir.path().join("big.wasm")).unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually("big plugin refused", || async {
        events.list(&ListParams::default()).await.unwrap().items.iter().any(|e| {
            e.reason.as_deref() == Some("PluginRejected")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("big.wasm: 1572864 bytes (1.50 MiB) is over the 1048576 bytes (1 MiB)"))
        })
    })
    .await;

    running.stop().await;
    cluster.shutdown().await;
}

async fn a_new_version_with_another_parent_kind_moves_the_controller(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    install_hostile_crd_of(&client, "Hostile2").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.wasm");
    std::fs::copy(common::plugin("hostile"), &file).unwrap();
    let running = supervise(&cluster, dir.path());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    create(&client, &hostile_resource(), ns, "old-kind", json!({"mode": "ok"})).await;
    eventually("old kind reconciled", || async { config_maps.get_opt("old-kind").await.unwrap().is_some() }).await;

    replace(&file, &std::fs::read(common::plugin("hostile").with_file_name("hostile_kind2.wasm")).unwrap());
    let kind2 = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("test.wasmop.dev", "v1", "Hostile2"),
        "hostile2s",
    );
    wait_served(&client, &kind2).await;
    eventually("old kind's controller stopped", || async { running.reloads.loads.load(Ordering::Relaxed) >= 2 }).await;
    create(&client, &hostile_resource(), ns, "old-kind-late", json!({"mode": "ok"})).await;
    create(&client, &kind2, ns, "new-kind", json!({"mode": "ok"})).await;
    eventually("new kind reconciled", || async { config_maps.get_opt("new-kind").await.unwrap().is_some() }).await;
    // The new kind's parent, created after the old kind's, is reconciled: the old kind is not.
    assert!(config_maps.get_opt("old-kind-late").await.unwrap().is_none());

    running.stop().await;
    cluster.shutdown().await;
}

/// In-memory only: on the shared real control plane the CRD is already installed by other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_kind_is_not_served_yet_starts_once_it_is() {
    let cluster = Cluster::memory().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::plugin("hostile"), dir.path().join("hostile.wasm")).unwrap();
    let running = supervise(&cluster, dir.path());
    eventually("unready: its kind is not served", || async {
        running.health.ready().is_err_and(|waiting| waiting.contains("caches not synced: hostile"))
    })
    .await;
    install_hostile_crd(&client).await;
    eventually("ready once its caches synced", || async { running.health.ready().is_ok() }).await;
    create(&client, &hostile_resource(), ns, "late-crd", json!({"mode": "ok"})).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("reconciled after the CRD appeared", || async {
        config_maps.get_opt("late-crd").await.unwrap().is_some()
    })
    .await;
    running.stop().await;
    cluster.shutdown().await;
}

/// Start-up (the catalog, the webhook's converters and the supervisor) reads each plugin file
/// once; an idle host reads none, even when something else in the directory changes.
async fn each_plugin_file_is_read_once_and_not_at_idle(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some("[limits]\ntimeout_ms = 2000\n")), ("appoperator", None)]);
    common::opens::written_a_minute_ago(dir.path(), &["hostile.wasm", "hostile.toml", "appoperator.wasm"]);
    let opens = Opens::watch(dir.path());
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "x", json!({"mode": "ok"})).await;
    eventually("x reconciled", || ready_is(&client, &ar, ns, "x", "True", "Reconciled")).await;
    wait_served(&client, &app_resource()).await;
    opens.fence("fence-1").await;
    assert_eq!(
        (opens.count("hostile.wasm"), opens.count("appoperator.wasm")),
        (1, 1),
        "read more than once at start-up"
    );

    // A change beside the plugins makes the catalog scan again; the scan reads no plugin.
    let scans = running.reloads.scans.load(Ordering::Relaxed);
    std::fs::write(dir.path().join("notes.txt"), "not a plugin").unwrap();
    eventually("the directory scanned again", || async { running.reloads.scans.load(Ordering::Relaxed) > scans }).await;
    opens.fence("fence-2").await;
    assert_eq!((opens.count("hostile.wasm"), opens.count("appoperator.wasm")), (1, 1), "an idle scan read a plugin");
    assert_eq!(opens.count("hostile.toml"), 1, "an idle scan read a sidecar");
    running.stop().await;
    cluster.shutdown().await;
}
