//! The operator end to end, on both API server backends (the in-memory one and the real control
//! plane): real plugins, real HTTP, kube-rs, driven through the production start path.

mod common;

use common::cluster::*;
use common::operator::{Operator, plugins_dir, quiet};

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop::controller::ControllerOptions;
use wasmop::telemetry::Stats;

on_both_backends!(
    appoperator_lifecycle_create_ready_scale_heal_delete,
    idle_resync_makes_zero_writes,
    a_restarted_operator_sees_the_children_it_made_and_writes_nothing,
    invalid_spec_is_reported_without_a_retry_storm,
    a_timing_out_object_does_not_stall_the_others_and_pruning_and_finalizers_work,
    a_plugin_without_a_converter_serves_its_single_version_kind,
    a_stalled_controller_is_named_on_readyz,
    a_recurring_failure_is_one_event_series_and_each_child_its_own_event,
);

/// A parent failing on every retry gets one Warning Event whose `series.count` grows (the real
/// API server accepts the series update), not one Event per retry; the children a reconcile
/// writes get an Event each, though reason and action are the same.
async fn a_recurring_failure_is_one_event_series_and_each_child_its_own_event(cluster: Cluster) {
    use k8s_openapi::api::events::v1::Event;
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "crasher", json!({"mode": "panic"})).await;
    create(&client, &ar, ns, "calm", json!({"mode": "many", "count": 2})).await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let about = |name: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
            list.into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .collect::<Vec<Event>>()
        }
    };
    eventually("the crash Event counted at least three times", || async {
        let warnings: Vec<Event> =
            about("crasher").await.into_iter().filter(|e| e.type_.as_deref() == Some("Warning")).collect();
        warnings.len() == 1 && warnings[0].series.as_ref().is_some_and(|s| s.count >= 3)
    })
    .await;
    eventually("one Created Event per child of calm", || async {
        let created = about("calm").await.into_iter().filter(|e| e.reason.as_deref() == Some("Created")).count();
        created == 2
    })
    .await;
    running.stop().await;
    cluster.shutdown().await;
}

/// A controller with reconciles in flight and none finishing is named on `/readyz` (which stays
/// ready: the replica still serves), with its queue; the note goes once reconciles finish.
async fn a_stalled_controller_is_named_on_readyz(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some("[limits]\ntimeout_ms = 3000\n"))]);
    let options = ControllerOptions { stall_after: Duration::from_millis(500), ..quiet() };
    let running = Operator::start(&cluster, dir.path(), options);
    let ar = hostile_resource();
    create(&client, &ar, ns, "sleeper", json!({"mode": "sleep", "seconds": 600})).await;
    eventually("the stall named on /readyz", || async {
        running.readyz().await.is_some_and(|(code, body)| {
            code == 200
                && body.contains("stalled: controller hostile: no reconcile finished")
                && body.contains("1 in flight")
        })
    })
    .await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch("sleeper", &PatchParams::default(), &Patch::Merge(json!({"spec": {"mode": "ok"}}))).await.unwrap();
    eventually("reconciled", || ready_is(&client, &ar, ns, "sleeper", "True", "Reconciled")).await;
    eventually("the note gone", || async {
        running.readyz().await.is_some_and(|(code, body)| code == 200 && !body.contains("stalled"))
    })
    .await;
    running.stop().await;
    cluster.shutdown().await;
}

/// A plugin written against the WIT without an SDK, exporting `reconciler` only (world
/// `single-version-operator`), is an operator: its CRD installed, its parents reconciled.
async fn a_plugin_without_a_converter_serves_its_single_version_kind(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("single-version", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("test.wasmop.dev", "v1", "Single"),
        "singles",
    );
    wait_served(&client, &ar).await;
    create(&client, &ar, ns, "one", json!({})).await;
    eventually("Ready", || ready_is(&client, &ar, ns, "one", "True", "Reconciled")).await;
    let child = Api::<ConfigMap>::namespaced(client.clone(), ns).get("one").await.unwrap();
    assert_eq!(child.data.unwrap()["from"], "single");
    running.stop().await;
    cluster.shutdown().await;
}

/// The hostile test plugin with a 100 ms time limit, from its sidecar.
const HOSTILE_100MS: &str = "[limits]\ntimeout_ms = 100\n";

async fn appoperator_lifecycle_create_ready_scale_heal_delete(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    wait_served(&client, &ar).await;
    let parent = create(&client, &ar, ns, "web", json!({"workload": {"image": "nginx:1.27", "replicas": 3}})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);

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
    assert_eq!(d.annotations()["wasmop.dev/plugin-revision"], revision("appoperator"));

    // Ready once the simulator marks the replicas available, for the current generation.
    eventually("Ready=True", || ready_is(&client, &ar, ns, "web", "True", "Available")).await;
    let obj = get(&client, &ar, ns, "web").await.unwrap();
    assert_eq!(obj.data["status"]["observedGeneration"].as_i64(), obj.metadata.generation);
    assert_eq!(obj.data["status"]["conditions"][0]["message"], "3/3 replicas available");

    // Scale.
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    apps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"workload": {"replicas": 5}}})))
        .await
        .unwrap();
    eventually("deployment scaled", || async {
        deployments.get("web").await.unwrap().spec.unwrap().replicas == Some(5)
    })
    .await;
    eventually("Ready for generation 2", || async {
        let o = get(&client, &ar, ns, "web").await.unwrap();
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
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
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

    // Parent deleted: garbage collection (kube-controller-manager's on the real control plane)
    // takes the children.
    apps.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("deployment collected", || async { deployments.get_opt("web").await.unwrap().is_none() }).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn idle_resync_makes_zero_writes(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let options = ControllerOptions { resync: Duration::from_millis(500), ..ControllerOptions::default() };
    let running = Operator::start(&cluster, dir.path(), options);
    let ar = app_resource();
    ready_appoperators(&client, ns, 3, 2).await;
    // Settled once a resync of every parent makes no write; then watch two more go by.
    let writes = || Stats::get(&running.stats.applies) + Stats::get(&running.stats.status_writes);
    loop {
        let (reconciles, written) = (Stats::get(&running.stats.reconciles), writes());
        eventually("a resync of every parent", || async { Stats::get(&running.stats.reconciles) >= reconciles + 3 })
            .await;
        if writes() == written {
            break;
        }
    }
    let before = versions(&client, &ar, ns).await;
    let requests = cluster.memory_server().map(|s| s.stats());
    let (reconciles, written) = (Stats::get(&running.stats.reconciles), writes());
    eventually("two resyncs of every parent", || async { Stats::get(&running.stats.reconciles) >= reconciles + 6 })
        .await;
    // The host wrote nothing: neither a child nor a status, on either backend.
    assert_eq!(writes(), written, "the host wrote during idle resyncs");
    let after = versions(&client, &ar, ns).await;
    let parents = |v: &BTreeMap<String, String>| v.iter().filter(|(k, _)| k.starts_with("parent/")).count();
    assert_eq!(parents(&after), 3);
    if let (Some(server), Some(requests)) = (cluster.memory_server(), requests) {
        // Nobody else writes on the in-memory server: no object changed, no write request.
        assert_eq!(after, before, "objects changed during idle resyncs");
        let during = server.stats().since(&requests);
        assert_eq!(during.writes("*"), 0, "writes during idle resyncs: {during:?}");
    } else {
        // On the real control plane only the host writes the parents (kube-controller-manager
        // may still update a Deployment's status).
        let only = |v: &BTreeMap<String, String>| {
            v.iter().filter(|(k, _)| k.starts_with("parent/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
        };
        assert_eq!(only(&after), only(&before), "a parent changed during idle resyncs");
    }
    running.stop().await;
    cluster.shutdown().await;
}

/// At a start the caches are filled by lists, whose items of a built-in kind an API server
/// sends without apiVersion and kind (both backends do): the plugin must still recognise each
/// child, so a parent that was Ready stays Ready and an unchanged child is not written again.
async fn a_restarted_operator_sees_the_children_it_made_and_writes_nothing(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let first = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    ready_appoperators(&client, ns, 2, 1).await;
    first.stop().await;

    let second = Operator::start(&cluster, dir.path(), quiet());
    eventually("each parent's reconcile finished after the restart", || async {
        second.sample("controller_runtime_reconcile_time_seconds_count").await >= 2.0
    })
    .await;
    let writes = Stats::get(&second.stats.applies) + Stats::get(&second.stats.status_writes);
    assert_eq!(writes, 0, "the restarted operator wrote a child or a status");
    for i in 0..2 {
        let name = format!("app-{i}");
        assert!(ready_is(&client, &ar, ns, &name, "True", "Available").await, "{name} is no longer Ready");
    }
    second.stop().await;
    cluster.shutdown().await;
}

/// resourceVersion of every parent and Deployment in `ns`, by kind and name.
async fn versions(client: &Client, ar: &kube::core::ApiResource, ns: &str) -> BTreeMap<String, String> {
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut out = BTreeMap::new();
    for p in parents.list(&ListParams::default()).await.unwrap() {
        out.insert(format!("parent/{}", p.name_any()), p.resource_version().unwrap_or_default());
    }
    for d in deployments.list(&ListParams::default()).await.unwrap() {
        out.insert(format!("deployment/{}", d.name_any()), d.resource_version().unwrap_or_default());
    }
    out
}

async fn invalid_spec_is_reported_without_a_retry_storm(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let options = ControllerOptions { resync: Duration::from_millis(300), ..ControllerOptions::default() };
    let running = Operator::start(&cluster, dir.path(), options);
    let ar = app_resource();
    wait_served(&client, &ar).await;
    // Passes the CRD schema (non-empty) but the plugin refuses whitespace.
    create(&client, &ar, ns, "blank", json!({"workload": {"image": "   "}})).await;
    eventually("InvalidSpec reported", || ready_is(&client, &ar, ns, "blank", "False", "InvalidSpec")).await;
    // Several resyncs go by without calling the plugin again for the unchanged invalid spec.
    let calls = Stats::get(&running.stats.plugin_calls);
    let reconciles = Stats::get(&running.stats.reconciles);
    eventually("five resyncs", || async { Stats::get(&running.stats.reconciles) >= reconciles + 5 }).await;
    assert!(Stats::get(&running.stats.plugin_calls) <= calls + 1, "plugin called again for an unchanged invalid spec");
    let obj = get(&client, &ar, ns, "blank").await.unwrap();
    assert!(ready(&obj).unwrap().2.contains("spec.workload.image"), "{:?}", ready(&obj));

    // Fixing the spec (a new generation) reconciles again.
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    apps.patch("blank", &PatchParams::default(), &Patch::Merge(json!({"spec": {"workload": {"image": "nginx:1.27"}}})))
        .await
        .unwrap();
    eventually("fixed spec becomes Ready", || ready_is(&client, &ar, ns, "blank", "True", "Available")).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_timing_out_object_does_not_stall_the_others_and_pruning_and_finalizers_work(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some(HOSTILE_100MS))]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "stuck", json!({"mode": "loop"})).await;
    for i in 0..3 {
        create(&client, &ar, ns, &format!("fine-{i}"), json!({"mode": "ok"})).await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 0..3 {
        let name = format!("fine-{i}");
        eventually("healthy objects converge", || ready_is(&client, &ar, ns, &name, "True", "Reconciled")).await;
        assert!(config_maps.get_opt(&name).await.unwrap().is_some());
    }
    eventually("timeout reported", || ready_is(&client, &ar, ns, "stuck", "False", "PluginTimeout")).await;

    // A plugin that stops returning a child: it is pruned.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch("fine-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"mode": "empty"}}))).await.unwrap();
    eventually("child pruned", || async { config_maps.get_opt("fine-0").await.unwrap().is_none() }).await;

    // Finalizer: present before deletion; the plugin's finalize call releases the parent.
    let obj = get(&client, &ar, ns, "fine-1").await.unwrap();
    assert!(obj.finalizers().contains(&"wasmop.dev/finalizer".to_string()));
    api.delete("fine-1", &DeleteParams::default()).await.unwrap();
    eventually("finalized parent gone", || async { get(&client, &ar, ns, "fine-1").await.is_none() }).await;
    eventually("its child collected", || async { config_maps.get_opt("fine-1").await.unwrap().is_none() }).await;

    // A plugin that holds its finalizer keeps the parent (deleting) until it lets go.
    api.patch("fine-2", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holdFinalizer": true}})))
        .await
        .unwrap();
    eventually("new spec observed", || async {
        get(&client, &ar, ns, "fine-2").await.is_some_and(|o| o.data["status"]["observedGeneration"] == 2)
    })
    .await;
    api.delete("fine-2", &DeleteParams::default()).await.unwrap();
    // The host reports Finalizing only after the plugin, called with `finalizing`, answered
    // that it is not finished: the call happened and the deletion waits for it.
    eventually("finalizing reported", || ready_is(&client, &ar, ns, "fine-2", "False", "Finalizing")).await;
    let held = get(&client, &ar, ns, "fine-2").await.expect("held by its finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    // Letting go releases it.
    api.patch("fine-2", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holdFinalizer": false}})))
        .await
        .unwrap();
    eventually("released parent gone", || async { get(&client, &ar, ns, "fine-2").await.is_none() }).await;
    running.stop().await;
    cluster.shutdown().await;
}

/// Faults only the in-memory server can inject: failing patches, 409s, dropped watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_faults_and_a_restart_without_duplicates_or_orphans() {
    let cluster = Cluster::memory().await;
    let server = cluster.memory_server().unwrap();
    let client = cluster.client.clone();
    let dir = plugins_dir(&[("appoperator", None)]);
    let ar = app_resource();
    server.faults().fail_next("patch", "deployments", 3, 500);
    server.faults().fail_next("patch", "deployments", 2, 409);
    let first = Operator::start(&cluster, dir.path(), quiet());
    wait_served(&client, &ar).await;
    for i in 0..4 {
        create(&client, &ar, "default", &format!("svc-{i}"), json!({"workload": {"image": "app:1", "replicas": 1}}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.faults().drop_watches();
    // Restart the host mid-flight, with more parents created while it is down.
    first.stop().await;
    for i in 4..6 {
        create(&client, &ar, "default", &format!("svc-{i}"), json!({"workload": {"image": "app:1", "replicas": 1}}))
            .await;
    }
    let second = Operator::start(&cluster, dir.path(), quiet());
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
    cluster.shutdown().await;
}

/// Parents created while the watches are cut, past the server's history: the watches resume
/// too late (410), list again, and the parents that list brings are reconciled. (That they
/// reach the controller only once the cache holds them is pinned by `relist`'s unit tests: a
/// list of five ends too soon here for the order to show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_a_relist_after_an_expired_watch_brings_are_reconciled() {
    let cluster = Cluster::memory().await;
    let server = cluster.memory_server().unwrap();
    let client = cluster.client.clone();
    let dir = plugins_dir(&[("appoperator", None)]);
    let ar = app_resource();
    let running = Operator::start(&cluster, dir.path(), quiet());
    wait_served(&client, &ar).await;
    let spec = json!({"workload": {"image": "app:1", "replicas": 1}});
    create(&client, &ar, "default", "before", spec.clone()).await;
    wait_ready(&client, &ar, "default", "before", "True", "Available").await;

    // The parents' watch cut, and refused once (the watcher backs off about a second); parents
    // created meanwhile; the history it would resume from forgotten, as an etcd compaction
    // does. When it resumes it gets a 410 and lists again.
    server.faults().fail_next("watch", "appoperators", 1, 500);
    server.faults().drop_watches();
    for i in 0..5 {
        create(&client, &ar, "default", &format!("during-{i}"), spec.clone()).await;
    }
    server.faults().expire_history();
    for i in 0..5 {
        wait_ready(&client, &ar, "default", &format!("during-{i}"), "True", "Available").await;
    }
    running.stop().await;
    cluster.shutdown().await;
}

#[test]
fn wasmop_dev_once_exits_zero_on_the_examples_in_memory() {
    dev_once("memory");
}

#[test]
fn wasmop_dev_once_exits_zero_on_the_examples_on_the_real_control_plane() {
    dev_once("real");
}

/// `wasmop dev --once --control-plane BACKEND` on the shipped plugins and examples.
fn dev_once(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for p in ["appoperator", "deny-latest-tag"] {
        std::fs::copy(common::plugin(p), plugins.join(format!("{p}.wasm"))).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args(["dev", "--once", "--timeout", "90", "--control-plane", backend, "--plugins"])
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
    assert!(stdout.contains("API server at https://") == (backend == "real"), "{stdout}");
    assert!(stdout.contains("default/web") && stdout.contains("True"), "{stdout}");
    assert!(dir.path().join("kubeconfig").exists());
}

/// kubectl against the real control plane reports the version pinned in tools/controlplane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_the_real_servers_version() {
    let cluster = Cluster::real().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["version", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("kubectl (make test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let go_mod = std::fs::read_to_string(common::workspace().join("tools/controlplane/go.mod")).unwrap();
    let pinned = go_mod.lines().find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes ")).unwrap();
    let pinned = pinned.split_whitespace().next().unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], pinned, "{version}");
}
