//! Containment: no plugin output, however large or hostile, stalls, floods or crashes the host,
//! and a well-behaved parent keeps converging beside a misbehaving one.

mod common;

use common::cluster::*;
use common::operator::{Operator, plugin_variant, plugins_dir, quiet};

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use wasmop::telemetry::Stats;

on_both_backends!(
    too_many_children_are_refused_and_others_converge,
    a_status_that_changes_on_every_call_does_not_loop,
    huge_messages_and_status_are_capped_or_refused,
    sleeping_plugins_do_not_starve_another_plugin,
    a_child_of_an_undeclared_api_version_spelling_is_refused_on_the_parent,
);

/// What every containment test proves beside its own point, while the misbehaving parents are
/// still there: the host answers `/healthz`, and a parent of another plugin (an Appoperator)
/// becomes Ready.
async fn others_are_unharmed(cluster: &Cluster, running: &Operator) {
    let (client, ns) = (&cluster.client, cluster.ns.as_str());
    let ar = app_resource();
    wait_served(client, &ar).await;
    create(client, &ar, ns, "bystander", json!({"workload": {"image": "nginx:1.27", "replicas": 1}})).await;
    eventually("another plugin's parent converges", || ready_is(client, &ar, ns, "bystander", "True", "Available"))
        .await;
    assert!(running.healthz().await, "/healthz did not answer within 5 s");
}

async fn too_many_children_are_refused_and_others_converge(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some("[limits]\nmax_children = 5\n")), ("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "crowd", json!({"mode": "many", "count": 10})).await;
    create(&client, &ar, ns, "fine", json!({"mode": "ok"})).await;
    eventually("TooManyChildren", || ready_is(&client, &ar, ns, "crowd", "False", "TooManyChildren")).await;
    eventually("the other parent converges", || ready_is(&client, &ar, ns, "fine", "True", "Reconciled")).await;
    let obj = get(&client, &ar, ns, "crowd").await.unwrap();
    assert!(ready(&obj).unwrap().2.contains("the limit is 5 (max_children"), "{:?}", ready(&obj));
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(config_maps.get_opt("crowd-0").await.unwrap().is_none(), "a child was applied over the limit");
    others_are_unharmed(&cluster, &running).await;
    // Within the limit, everything is applied.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch("crowd", &PatchParams::default(), &Patch::Merge(json!({"spec": {"count": 5}}))).await.unwrap();
    eventually("five children", || async { config_maps.get_opt("crowd-4").await.unwrap().is_some() }).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_status_that_changes_on_every_call_does_not_loop(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None), ("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "clock", json!({"mode": "clock"})).await;
    eventually("clock reconciled", || async {
        get(&client, &ar, ns, "clock").await.is_some_and(|o| o.data["status"]["now"].is_string())
    })
    .await;
    // A parent created afterwards converging proves the controller went on working meanwhile;
    // the clock parent's own status writes did not trigger it again and again.
    create(&client, &ar, ns, "marker", json!({"mode": "ok"})).await;
    eventually("marker reconciled", || ready_is(&client, &ar, ns, "marker", "True", "Reconciled")).await;
    let reconciles = Stats::get(&running.stats.reconciles);
    assert!(reconciles <= 8, "{reconciles} reconciles for two parents: the status write fed back");
    others_are_unharmed(&cluster, &running).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn huge_messages_and_status_are_capped_or_refused(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some("[limits]\nmemory_mib = 128\noutput_mib = 8\n")), ("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "loud", json!({"mode": "huge-invalid", "mebibytes": 10})).await;
    create(&client, &ar, ns, "fat", json!({"mode": "huge-status", "mebibytes": 3})).await;
    eventually("capped InvalidSpec", || async {
        get(&client, &ar, ns, "loud").await.and_then(|o| ready(&o)).is_some_and(|(s, r, m)| {
            s == "False" && r == "InvalidSpec" && m.len() <= 32 * 1024 && m.ends_with("bytes truncated]")
        })
    })
    .await;
    eventually("refused status", || async {
        get(&client, &ar, ns, "fat")
            .await
            .and_then(|o| ready(&o))
            .is_some_and(|(_, r, m)| r == "InvalidPluginOutput" && m.contains("at most 1048576 (1 MiB)"))
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let notes: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.note).collect();
    assert!(notes.iter().all(|n| n.len() <= 1024), "an Event note over 1 KiB");
    assert!(notes.iter().any(|n| n.ends_with("bytes truncated]")), "{notes:?}");
    others_are_unharmed(&cluster, &running).await;
    running.stop().await;
    cluster.shutdown().await;
}

/// Parents whose plugin blocks in a WASI sleep far past its time limit get `PluginTimeout`, and
/// eight of them (the reconcile concurrency) do not hold up another plugin's parent.
async fn sleeping_plugins_do_not_starve_another_plugin(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", Some("[limits]\ntimeout_ms = 300\n")), ("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    for i in 0..8 {
        create(&client, &ar, ns, &format!("sleeper-{i}"), json!({"mode": "sleep", "seconds": 600})).await;
    }
    others_are_unharmed(&cluster, &running).await;
    for i in 0..8 {
        let name = format!("sleeper-{i}");
        eventually("PluginTimeout", || ready_is(&client, &ar, ns, &name, "False", "PluginTimeout")).await;
    }
    running.stop().await;
    cluster.shutdown().await;
}

/// A child whose apiVersion is spelled other than its declared kind's ("/v1" for "v1") is
/// refused like any other invalid output: `Ready=False/InvalidPluginOutput` on the parent,
/// naming the child, and nothing applied.
async fn a_child_of_an_undeclared_api_version_spelling_is_refused_on_the_parent(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "slash", json!({"mode": "api-version", "apiVersion": "/v1"})).await;
    eventually("InvalidPluginOutput", || ready_is(&client, &ar, ns, "slash", "False", "InvalidPluginOutput")).await;
    let obj = get(&client, &ar, ns, "slash").await.unwrap();
    let message = ready(&obj).unwrap().2;
    assert!(message.contains(r#"apiVersion "/v1" is not spelled as declared: write "v1""#), "{message}");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(config_maps.get_opt("slash").await.unwrap().is_none(), "the refused child was applied");
    running.stop().await;
    cluster.shutdown().await;
}

/// `requeue-after-seconds: 0` is clamped to one second and reported as a loop (in-memory only:
/// it takes the loop threshold's worth of seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_zero_is_clamped_and_reported_as_a_loop() {
    let cluster = Cluster::memory().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None), ("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let started = Instant::now();
    create(&client, &hostile_resource(), ns, "eager", json!({"mode": "requeue", "seconds": 0})).await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        if let Some(e) = list.items.iter().find(|e| e.reason.as_deref() == Some("ReconcileLoop")) {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("eager"));
            break;
        }
        assert!(Instant::now() < deadline, "no ReconcileLoop event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // At most about one reconcile per second since the parent was created.
    let reconciles = Stats::get(&running.stats.reconciles) as f64;
    let seconds = started.elapsed().as_secs_f64();
    assert!(reconciles <= seconds + 3.0, "{reconciles} reconciles in {seconds:.1}s");
    others_are_unharmed(&cluster, &running).await;
    running.stop().await;
    cluster.shutdown().await;
}

#[test]
fn declaring_very_many_child_kinds_is_refused_quickly() {
    let Err(err) =
        common::runtime().load_operator(&plugin_variant("hostile_manykinds.wasm"), wasmop::plugin::Limits::default())
    else {
        panic!("a plugin declaring 100,000 child kinds was loaded");
    };
    assert!(err.to_string().contains("at most 64 are allowed"), "{err}");
}

#[test]
fn a_plugin_whose_metadata_blocks_is_rejected_and_the_others_serve() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(async {
        let cluster = Cluster::memory().await;
        let yaml = cluster.kubeconfig_yaml().await;
        (cluster, yaml)
    });
    let dir = plugins_dir(&[("appoperator", None)]);
    std::fs::copy(plugin_variant("hostile_slowmeta.wasm"), dir.path().join("slow.wasm")).unwrap();
    let config = dir.path().join("kubeconfig.yaml");
    std::fs::write(&config, &cluster.1).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args(["run", "--no-metrics", "--webhook-addr=127.0.0.1:0", "--install-crds", "--plugins"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&config)
        .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It comes up and serves the other plugin: its parents converge.
    rt.block_on(async {
        let (client, ns, ar) = (cluster.0.client.clone(), cluster.0.ns.as_str(), app_resource());
        wait_served(&client, &ar).await;
        create(&client, &ar, ns, "bystander", json!({"workload": {"image": "nginx:1.27", "replicas": 1}})).await;
        eventually("the other plugin's parent converges", || {
            ready_is(&client, &ar, ns, "bystander", "True", "Available")
        })
        .await;
    });
    assert!(child.try_wait().unwrap().is_none(), "wasmop run exited");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("slow.wasm") && l.contains("timed out")), "{stderr}");
    rt.block_on(cluster.0.shutdown());
}
