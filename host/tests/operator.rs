//! The operator end to end against the in-memory API server: real plugins, real HTTP, kube-rs.

mod common;

use common::cluster::*;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmop::controller::ControllerOptions;
use wasmop::operator::{self, PluginSet};
use wasmop::plugin::{Limits, OperatorPlugin};
use wasmop::reconcile::Stats;

/// A running operator that stops when dropped.
struct Running {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn start(client: &Client, plugin: &OperatorPlugin, options: ControllerOptions) -> Running {
    let (stop, mut rx) = watch::channel(false);
    let stats = Arc::new(Stats::default());
    let set = PluginSet { operators: vec![plugin.clone()], policies: vec![], failures: vec![] };
    let (client, task_stats) = (client.clone(), stats.clone());
    let task = tokio::spawn(async move {
        operator::run(client, &set, options, task_stats, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
    });
    Running { stop, task: Some(task), stats }
}

fn appoperator() -> OperatorPlugin {
    common::runtime().load_operator(&common::plugin("appoperator"), Limits::default()).unwrap()
}

fn hostile(timeout: Duration) -> OperatorPlugin {
    let limits = Limits { timeout, ..Limits::default() };
    common::runtime().load_operator(&common::plugin("hostile"), limits).unwrap()
}

fn fast() -> ControllerOptions {
    ControllerOptions { resync: Duration::from_secs(600), ..ControllerOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appoperator_lifecycle_create_ready_scale_heal_delete() {
    let server = server().await;
    let client = client(&server);
    let plugin = appoperator();
    operator::install_crd(&client, &plugin).await.unwrap();
    let running = start(&client, &plugin, fast());
    let ar = app_resource();
    let parent = create(&client, &ar, "default", "web", json!({"image": "nginx:1.27", "replicas": 3})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // Create: the Deployment with the right spec, ownership and labels.
    eventually("deployment created", || async { deployments.get_opt("web").await.unwrap().is_some() }).await;
    let d = deployments.get("web").await.unwrap();
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.template.spec.unwrap().containers[0].image.as_deref(), Some("nginx:1.27"));
    let owner = &d.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Appoperator", parent.uid().unwrap().as_str()));
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    assert_eq!(d.labels()["app.kubernetes.io/managed-by"], "wasmop");
    assert_eq!(d.labels()["wasmop.dev/plugin"], "appoperator");
    assert_eq!(d.annotations()["wasmop.dev/plugin-revision"], plugin.file().revision());

    // Ready once the simulator marks the replicas available, for the current generation.
    eventually("Ready=True", || ready_is(&client, &ar, "default", "web", "True", "Available")).await;
    let obj = get(&client, &ar, "default", "web").await.unwrap();
    assert_eq!(obj.data["status"]["observedGeneration"].as_i64(), obj.metadata.generation);
    assert_eq!(obj.data["status"]["conditions"][0]["message"], "3/3 replicas available");

    // Scale.
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    apps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    eventually("deployment scaled", || async {
        deployments.get("web").await.unwrap().spec.unwrap().replicas == Some(5)
    })
    .await;
    eventually("Ready for generation 2", || async {
        let o = get(&client, &ar, "default", "web").await.unwrap();
        o.data["status"]["observedGeneration"] == 2
            && ready(&o).is_some_and(|(s, _, m)| s == "True" && m == "5/5 replicas available")
    })
    .await;

    // A child deleted by hand is recreated.
    let uid_before = deployments.get("web").await.unwrap().uid();
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("deployment recreated", || async {
        deployments.get_opt("web").await.unwrap().is_some_and(|d| d.uid() != uid_before)
    })
    .await;

    // A child edited out of band is put back.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
    eventually("deployment restored", || async {
        deployments.get("web").await.unwrap().spec.unwrap().replicas == Some(5)
    })
    .await;

    // Each change to a child was recorded as an Event on the parent.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"Created".to_string()) && reasons.contains(&"Updated".to_string()), "{reasons:?}");

    // Parent deleted: garbage collection takes the children.
    apps.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("deployment collected", || async { deployments.get_opt("web").await.unwrap().is_none() }).await;
    running.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_resync_makes_zero_writes() {
    let server = server().await;
    let client = client(&server);
    let plugin = appoperator();
    operator::install_crd(&client, &plugin).await.unwrap();
    let options = ControllerOptions { resync: Duration::from_millis(500), ..ControllerOptions::default() };
    let running = start(&client, &plugin, options);
    let ar = app_resource();
    for i in 0..3 {
        create(&client, &ar, "default", &format!("app-{i}"), json!({"image": "nginx:1.27", "replicas": 2})).await;
    }
    for i in 0..3 {
        let name = format!("app-{i}");
        eventually("all Ready", || ready_is(&client, &ar, "default", &name, "True", "Available")).await;
    }
    // Let the last status write's own watch event settle, then watch a few resyncs go by.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.stats();
    let reconciles = Stats::get(&running.stats.reconciles);
    eventually("two resyncs of every parent", || async { Stats::get(&running.stats.reconciles) >= reconciles + 6 })
        .await;
    let during = server.stats().since(&before);
    assert_eq!(during.writes("*"), 0, "writes during idle resyncs: {during:?}");
    running.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_is_reported_without_a_retry_storm() {
    let server = server().await;
    let client = client(&server);
    let plugin = appoperator();
    operator::install_crd(&client, &plugin).await.unwrap();
    let options = ControllerOptions { resync: Duration::from_millis(300), ..ControllerOptions::default() };
    let running = start(&client, &plugin, options);
    let ar = app_resource();
    // Passes the CRD schema (non-empty) but the plugin refuses whitespace.
    create(&client, &ar, "default", "blank", json!({"image": "   "})).await;
    eventually("InvalidSpec reported", || ready_is(&client, &ar, "default", "blank", "False", "InvalidSpec")).await;
    let calls = Stats::get(&running.stats.plugin_calls);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(Stats::get(&running.stats.plugin_calls) <= calls + 1, "plugin called again for an unchanged invalid spec");
    let obj = get(&client, &ar, "default", "blank").await.unwrap();
    assert!(ready(&obj).unwrap().2.contains("spec.image"), "{:?}", ready(&obj));

    // Fixing the spec (a new generation) reconciles again.
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    apps.patch("blank", &PatchParams::default(), &Patch::Merge(json!({"spec": {"image": "nginx:1.27"}})))
        .await
        .unwrap();
    eventually("fixed spec becomes Ready", || ready_is(&client, &ar, "default", "blank", "True", "Available")).await;
    running.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timing_out_object_does_not_stall_the_others_and_pruning_and_finalizers_work() {
    let server = server().await;
    let client = client(&server);
    install_hostile_crd(&client).await;
    let plugin = hostile(Duration::from_millis(100));
    let running = start(&client, &plugin, fast());
    let ar = hostile_resource();
    create(&client, &ar, "default", "stuck", json!({"mode": "loop"})).await;
    for i in 0..3 {
        create(&client, &ar, "default", &format!("fine-{i}"), json!({"mode": "ok"})).await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        let name = format!("fine-{i}");
        eventually("healthy objects converge", || ready_is(&client, &ar, "default", &name, "True", "Reconciled")).await;
        assert!(config_maps.get_opt(&name).await.unwrap().is_some());
    }
    eventually("timeout reported", || ready_is(&client, &ar, "default", "stuck", "False", "PluginTimeout")).await;

    // A plugin that stops returning a child: it is pruned.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    api.patch("fine-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"mode": "empty"}}))).await.unwrap();
    eventually("child pruned", || async { config_maps.get_opt("fine-0").await.unwrap().is_none() }).await;

    // Finalizer: present before deletion; the plugin's finalize call releases the parent.
    let obj = get(&client, &ar, "default", "fine-1").await.unwrap();
    assert!(obj.finalizers().contains(&"wasmop.dev/finalizer".to_string()));
    api.delete("fine-1", &DeleteParams::default()).await.unwrap();
    eventually("finalized parent gone", || async { get(&client, &ar, "default", "fine-1").await.is_none() }).await;
    eventually("its child collected", || async { config_maps.get_opt("fine-1").await.unwrap().is_none() }).await;

    // A plugin that holds its finalizer keeps the parent (deleting) until it lets go.
    api.patch("fine-2", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holdFinalizer": true}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.delete("fine-2", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = get(&client, &ar, "default", "fine-2").await.expect("held by its finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    running.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_faults_and_a_restart_without_duplicates_or_orphans() {
    let server = server().await;
    let client = client(&server);
    let plugin = appoperator();
    operator::install_crd(&client, &plugin).await.unwrap();
    let ar = app_resource();
    server.faults().fail_next("patch", "deployments", 3, 500);
    server.faults().fail_next("patch", "deployments", 2, 409);
    let first = start(&client, &plugin, fast());
    for i in 0..4 {
        create(&client, &ar, "default", &format!("svc-{i}"), json!({"image": "app:1", "replicas": 1})).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.faults().drop_watches();
    // Restart the host mid-flight, with more parents created while it is down.
    first.stop().await;
    for i in 4..6 {
        create(&client, &ar, "default", &format!("svc-{i}"), json!({"image": "app:1", "replicas": 1})).await;
    }
    let second = start(&client, &plugin, fast());
    for i in 0..6 {
        let name = format!("svc-{i}");
        eventually("all Ready", || ready_is(&client, &ar, "default", &name, "True", "Available")).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let list = deployments.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<String> = list.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, (0..6).map(|i| format!("svc-{i}")).collect::<Vec<_>>());
    assert!(list.items.iter().all(|d| d.owner_references().len() == 1));
    second.stop().await;
    server.shutdown().await;
}

#[test]
fn wasmop_dev_once_exits_zero_on_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for p in ["appoperator", "deny-latest-tag"] {
        std::fs::copy(common::plugin(p), plugins.join(format!("{p}.wasm"))).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args(["dev", "--once", "--timeout", "30", "--plugins"])
        .arg(&plugins)
        .arg("--examples")
        .arg(common::workspace().join("examples"))
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("default/web") && stdout.contains("True"), "{stdout}");
    assert!(dir.path().join("kubeconfig").exists());
}
