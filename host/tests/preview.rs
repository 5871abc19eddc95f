//! `wasmop preview` from outside, as a user runs it against a cluster: it reports exactly the
//! parents a new version then changes, names the fields, reports the parents that would fail,
//! and writes nothing. Both backends.

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use common::cluster::*;
use common::operator::{Operator, quiet};

on_both_backends!(
    preview_reports_exactly_what_a_new_version_then_changes,
    a_candidate_in_a_registry_is_pulled_by_digest_and_previewed,
    preview_reads_the_related_objects_from_the_cluster,
);

fn hostile_v2() -> std::path::PathBuf {
    common::plugin("hostile").with_file_name("hostile_v2.wasm")
}

/// Runs `wasmop preview` with the candidate `plugin` against the cluster's namespace.
async fn preview(cluster: &Cluster, plugin: &std::path::Path, extra: &[&str]) -> Output {
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), cluster.kubeconfig_yaml().await).unwrap();
    let mut args: Vec<String> = vec![
        "preview".into(),
        "--plugin".into(),
        plugin.display().to_string(),
        "--kubeconfig".into(),
        kubeconfig.path().display().to_string(),
        "--namespace".into(),
        cluster.ns.clone(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let out = common::wasmop_command().args(&args).output().expect("run wasmop");
        drop(kubeconfig);
        out
    })
    .await
    .unwrap()
}

/// Every object the test cares about, by kind and name, with its resourceVersion: equal before
/// and after a preview when it wrote nothing.
async fn versions(cluster: &Cluster) -> BTreeMap<String, String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let parents: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &cluster.ns, &hostile_resource());
    let mut out = BTreeMap::new();
    for cm in config_maps.list(&ListParams::default()).await.unwrap() {
        out.insert(format!("ConfigMap {}", cm.name_any()), cm.resource_version().unwrap_or_default());
    }
    for p in parents.list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Hostile {}", p.name_any()), p.resource_version().unwrap_or_default());
    }
    out
}

/// The ConfigMaps' content a user reads (labels and data), without the host's marks.
async fn contents(cluster: &Cluster) -> BTreeMap<String, Value> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let list = config_maps.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().map(|cm| (cm.name_any(), json!({"labels": cm.labels(), "data": cm.data}))).collect()
}

fn outcomes(report: &Value) -> BTreeMap<String, String> {
    let parents = report["parents"].as_array().expect("parents");
    parents
        .iter()
        .map(|p| (p["parent"].as_str().unwrap().to_string(), p["outcome"].as_str().unwrap().to_string()))
        .collect()
}

fn entry<'a>(report: &'a Value, parent: &str) -> &'a Value {
    report["parents"].as_array().unwrap().iter().find(|p| p["parent"] == parent).expect("parent in the report")
}

async fn preview_reports_exactly_what_a_new_version_then_changes(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    install_hostile_crd(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.wasm");
    std::fs::copy(common::plugin("hostile"), &file).unwrap();
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let kept = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d-kept"}, "data": {"k": "v"}});
    // a, b: v2 labels their ConfigMap differently; c, d: the same children under v1 and v2;
    // e: traps under both; f: its status follows its spec; g: its spec drops a field of its child.
    create(&client, &ar, &ns, "a", json!({"mode": "ok"})).await;
    create(&client, &ar, &ns, "b", json!({"mode": "ok"})).await;
    create(&client, &ar, &ns, "c", json!({"mode": "empty"})).await;
    create(&client, &ar, &ns, "d", json!({"mode": "given", "children": [kept]})).await;
    create(&client, &ar, &ns, "e", json!({"mode": "panic", "message": "boom on e"})).await;
    create(&client, &ar, &ns, "f", json!({"mode": "given", "children": [], "status": {"phase": "one"}})).await;
    let g_child =
        |data: Value| json!([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g-cm"}, "data": data}]);
    create(&client, &ar, &ns, "g", json!({"mode": "given", "children": g_child(json!({"a": "1", "b": "2"}))})).await;
    for name in ["a", "b", "c", "d", "f", "g"] {
        wait_ready(&client, &ar, &ns, name, "True", "Reconciled").await;
    }
    wait_ready(&client, &ar, &ns, "e", "False", "PluginError").await;
    running.stop().await;

    // With the operator stopped, f's spec moves on: its status would follow.
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let patch = json!({"spec": {"status": {"phase": "two"}}});
    parents.patch("f", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // g's child loses data.b: only the host's managed fields (as the server records them) say so.
    let patch = json!({"spec": {"children": g_child(json!({"a": "1"}))}});
    parents.patch("g", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();

    let before = (versions(&cluster).await, cluster.memory_server().map(|s| s.stats()));
    let out = preview(&cluster, &hostile_v2(), &["-o", "json"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing parent fails the preview: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(versions(&cluster).await, before.0, "the preview wrote nothing");
    if let (Some(server), Some(stats)) = (cluster.memory_server(), &before.1) {
        assert_eq!(server.stats().since(stats).writes("*"), 0, "no write request reached the server");
    }
    let expected: BTreeMap<String, String> = [
        ("a", "changed"),
        ("b", "changed"),
        ("c", "unchanged"),
        ("d", "unchanged"),
        ("e", "failing"),
        ("f", "changed"),
        ("g", "changed"),
    ]
    .into_iter()
    .map(|(n, o)| (format!("Hostile {ns}/{n}"), o.to_string()))
    .collect();
    assert_eq!(outcomes(&report), expected, "{report:#}");
    assert_eq!(report["summary"], json!({"unchanged": 2, "changed": 4, "failing": 1}));
    let a = entry(&report, &format!("Hostile {ns}/a"));
    assert_eq!(
        a["children"],
        json!([{"object": format!("ConfigMap {ns}/a"), "action": "update",
                "fields": [{"path": "metadata.labels.wasmop.test/variant", "from": "v1", "to": "v2"}]}])
    );
    let e = entry(&report, &format!("Hostile {ns}/e"));
    assert_eq!(e["reason"], "PluginError");
    assert!(e["message"].as_str().unwrap().contains("boom on e"), "{e}");
    let g = entry(&report, &format!("Hostile {ns}/g"));
    assert_eq!(
        g["children"],
        json!([{"object": format!("ConfigMap {ns}/g-cm"), "action": "update", "fields": [{"path": "data.b", "from": "2"}]}])
    );
    let f = entry(&report, &format!("Hostile {ns}/f"));
    let status: Vec<(&str, &Value)> =
        f["status"].as_array().unwrap().iter().map(|c| (c["path"].as_str().unwrap(), &c["to"])).collect();
    assert!(status.contains(&("phase", &json!("two"))), "{f}");
    assert!(status.contains(&("observedGeneration", &json!(2))), "{f}");

    // The readable report and the exit codes: once no parent fails, a change passes unless
    // --fail-on-change.
    let patch = json!({"spec": {"mode": "empty"}});
    parents.patch("e", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let out = preview(&cluster, &hostile_v2(), &[]).await;
    let text = common::stdout(&out);
    assert!(text.contains(&format!("Hostile {ns}/a: changes\n  update ConfigMap {ns}/a\n")), "{text}");
    assert!(text.contains("metadata.labels.wasmop.test/variant: \"v1\" -> \"v2\""), "{text}");
    assert!(text.ends_with("on 7 parents: 2 unchanged, 5 changed, 0 failing\n"), "{text}");
    let out = preview(&cluster, &hostile_v2(), &["--fail-on-change"]).await;
    assert_eq!(out.status.code(), Some(1), "--fail-on-change fails on a change");

    // The roll: exactly the parents the preview named change.
    let contents_before = contents(&cluster).await;
    std::fs::copy(hostile_v2(), &file).unwrap();
    let _running = Operator::start(&cluster, dir.path(), quiet());
    let rev2 = revision("hostile_v2");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually("v2 stamps every child", || async {
        let list = config_maps.list(&ListParams::default().labels("wasmop.dev/plugin=hostile")).await.unwrap();
        list.items.len() == 4
            && list.items.iter().all(|cm| cm.annotations().get("wasmop.dev/plugin-revision") == Some(&rev2))
    })
    .await;
    eventually("f's status follows", || async {
        get(&client, &ar, &ns, "f").await.is_some_and(|f| f.data["status"]["phase"] == "two")
    })
    .await;
    let after = contents(&cluster).await;
    let changed: Vec<&String> = after.keys().filter(|k| contents_before.get(*k) != after.get(*k)).collect();
    assert_eq!(changed, vec!["a", "b", "g-cm"], "the children that changed are those of the parents the preview named");
}

/// `--plugin oci://REF`: the digest about to go into a WasmPlugin, previewed as it is.
async fn a_candidate_in_a_registry_is_pulled_by_digest_and_previewed(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    install_hostile_crd(&client).await;
    let registry = common::registry::Registry::start();
    let reference = format!("{}:v2", registry.repo("plugins/hostile"));
    let v2 = hostile_v2().display().to_string();
    let (host, pushed) = (registry.host.clone(), reference.clone());
    let push = tokio::task::spawn_blocking(move || {
        common::wasmop(&["plugin", "push", &v2, &pushed, "--insecure-registry", &host])
    });
    let digest = common::stdout(&push.await.unwrap()).trim().to_string();
    create(&client, &hostile_resource(), &ns, "fresh", json!({"mode": "ok"})).await;

    let pinned = format!("oci://{}@{digest}", registry.repo("plugins/hostile"));
    let out =
        preview(&cluster, std::path::Path::new(&pinned), &["-o", "json", "--insecure-registry", &registry.host]).await;
    let report: Value = serde_json::from_str(&common::stdout(&out)).expect("JSON report");
    assert_eq!(report["revision"], wasmop::plugin::sha256_hex(&std::fs::read(hostile_v2()).unwrap())[..12]);
    let fresh = entry(&report, &format!("Hostile {ns}/fresh"));
    assert_eq!(fresh["children"], json!([{"object": format!("ConfigMap {ns}/fresh"), "action": "create"}]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("previewing {}@{digest}", registry.repo("plugins/hostile"))), "{stderr}");
    cluster.shutdown().await;
}

/// A plugin that reads related objects is previewed on the ones the cluster holds now: a
/// ConfigMap edited while the operator was stopped shows as the pod-template hash it changes.
async fn preview_reads_the_related_objects_from_the_cluster(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let dir = common::operator::plugins_dir(&[("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    wait_served(&client, &ar).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = |level: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"}, "data": {"LEVEL": level}});
    let apply = PatchParams::apply("wasmop-tests").force();
    config_maps.patch("web-config", &apply, &Patch::Apply(config("info"))).await.unwrap();
    let spec = json!({"workload": {"image": "nginx:1.27", "configRef": "web-config"}});
    create(&client, &ar, &ns, "web", spec).await;
    create(&client, &ar, &ns, "plain", json!({"workload": {"image": "nginx:1.27"}})).await;
    for name in ["web", "plain"] {
        wait_ready(&client, &ar, &ns, name, "True", "Available").await;
    }
    running.stop().await;

    config_maps.patch("web-config", &apply, &Patch::Apply(config("debug"))).await.unwrap();
    let out = preview(&cluster, &common::plugin("appoperator"), &["-o", "json"]).await;
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(outcomes(&report)[&format!("Appoperator {ns}/plain")], "unchanged", "{report:#}");
    let web = entry(&report, &format!("Appoperator {ns}/web"));
    let fields = &web["children"][0]["fields"];
    assert_eq!(
        fields[0]["path"], "spec.template.metadata.annotations.appoperator.tools.wasmop.dev/config-hash",
        "{web}"
    );
    assert_ne!(fields[0]["from"], fields[0]["to"], "{web}");
}
