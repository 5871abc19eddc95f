//! Ownership and lifecycle: the host never fights, strands, forgets, overwrites or deletes what
//! is not its own. One test per defect, on both API server backends.

mod common;

use common::cluster::*;
use common::operator::{Operator, plugin_variant, plugins_dir, quiet};

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use wasmop::controller::ControllerOptions;
use wasmop::telemetry::Stats;

on_both_backends!(
    two_files_for_one_kind_do_not_fight_and_hand_over,
    a_removed_plugin_releases_its_finalizer_so_parents_can_be_deleted,
    a_version_that_stops_declaring_the_finalizer_removes_only_ours,
    a_recreated_parent_is_reconciled,
    dropped_status_and_child_fields_are_removed,
    existing_objects_are_never_taken_over_or_pruned,
    the_hosts_marks_always_win,
    policy_mutations_land_but_may_not_move_a_child,
    a_monitoring_policy_records_verdicts_and_protect_enforces_them,
);

/// The `given` mode of the hostile plugin: it returns `children` and `status` verbatim.
fn given(children: Value, status: Value) -> Value {
    json!({"mode": "given", "children": children, "status": status})
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// Replaces the whole spec of a Hostile parent: one new generation.
async fn set_spec(client: &Client, ns: &str, name: &str, spec: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &hostile_resource());
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec", "value": spec}])).unwrap();
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(ops)).await.unwrap();
}

/// Events in `ns` with `reason`, with their notes.
async fn events(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

fn short_resync() -> ControllerOptions {
    ControllerOptions { resync: Duration::from_millis(300), ..quiet() }
}

async fn two_files_for_one_kind_do_not_fight_and_hand_over(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    std::fs::copy(plugin_variant("hostile_v2.wasm"), dir.path().join("hostile_v2.wasm")).unwrap();
    let running = Operator::start(&cluster, dir.path(), short_resync());
    create(&client, &hostile_resource(), ns, "p", json!({"mode": "ok"})).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let variant = |cm: &ConfigMap| cm.labels().get("wasmop.test/variant").cloned().unwrap_or_default();
    eventually("served by the first file", || async {
        config_maps.get_opt("p").await.unwrap().is_some_and(|cm| variant(&cm) == "v1")
    })
    .await;
    // The later file is refused, naming both files.
    eventually("duplicate refused", || async {
        events(&client, ns, "PluginRejected")
            .await
            .iter()
            .any(|n| n.contains("hostile_v2.wasm") && n.contains("hostile.wasm"))
    })
    .await;
    // Several resyncs later the child has not been rewritten: one controller, no fight.
    let before = config_maps.get("p").await.unwrap().resource_version();
    let reconciles = Stats::get(&running.stats.reconciles);
    eventually("resyncs", || async { Stats::get(&running.stats.reconciles) >= reconciles + 3 }).await;
    assert_eq!(config_maps.get("p").await.unwrap().resource_version(), before, "the child was rewritten");
    // Removing the serving file hands the kind over to the other.
    std::fs::remove_file(dir.path().join("hostile.wasm")).unwrap();
    eventually("handed over to v2", || async {
        config_maps.get_opt("p").await.unwrap().is_some_and(|cm| variant(&cm) == "v2")
    })
    .await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_removed_plugin_releases_its_finalizer_so_parents_can_be_deleted(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    create(&client, &ar, ns, "p", json!({"mode": "ok"})).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("child", || async { config_maps.get_opt("p").await.unwrap().is_some() }).await;
    assert!(get(&client, &ar, ns, "p").await.unwrap().finalizers().contains(&"wasmop.dev/finalizer".into()));

    std::fs::remove_file(dir.path().join("hostile.wasm")).unwrap();
    eventually("finalizer released", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| p.finalizers().is_empty())
    })
    .await;
    assert!(!events(&client, ns, "FinalizerRemoved").await.is_empty());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.delete("p", &DeleteParams::default()).await.unwrap();
    eventually("parent deleted", || async { get(&client, &ar, ns, "p").await.is_none() }).await;
    eventually("child collected", || async { config_maps.get_opt("p").await.unwrap().is_none() }).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_version_that_stops_declaring_the_finalizer_removes_only_ours(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let mut parent: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
        "metadata": {"name": "p", "finalizers": ["example.com/keep"]}, "spec": {"mode": "ok"},
    }))
    .unwrap();
    parent.metadata.namespace = Some(ns.to_string());
    api.create(&PostParams::default(), &parent).await.unwrap();
    eventually("both finalizers", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| p.finalizers().len() == 2)
    })
    .await;

    std::fs::copy(plugin_variant("hostile_nofin.wasm"), dir.path().join("hostile.wasm")).unwrap();
    eventually("ours removed, theirs kept", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| p.finalizers() == ["example.com/keep".to_string()])
    })
    .await;
    // Let the namespace go: drop the foreign finalizer too.
    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("p", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_recreated_parent_is_reconciled(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    wait_served(&client, &ar).await;
    create(&client, &ar, ns, "web", json!({"workload": {"image": "   "}})).await;
    eventually("InvalidSpec", || ready_is(&client, &ar, ns, "web", "False", "InvalidSpec")).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("deleted", || async { get(&client, &ar, ns, "web").await.is_none() }).await;
    create(&client, &ar, ns, "web", json!({"workload": {"image": "nginx:1.27", "replicas": 1}})).await;
    eventually("the new parent is Ready", || ready_is(&client, &ar, ns, "web", "True", "Available")).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn dropped_status_and_child_fields_are_removed(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let mut child = config_map("c", json!({"a": "1", "b": "2"}));
    child["metadata"]["labels"] = json!({"extra": "yes"});
    create(&client, &ar, ns, "p", given(json!([child]), json!({"a": 1, "b": 2}))).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("status a and b", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| p.data["status"]["b"] == 2)
    })
    .await;
    eventually("child with a, b and the label", || async {
        config_maps.get_opt("c").await.unwrap().is_some_and(|cm| cm.data.unwrap_or_default().len() == 2)
    })
    .await;

    // A change of a value only, then a drop: the drop must still remove what the first write
    // set (a create recorded as an `Update` would keep it: see BENCHMARKS.md, issue 22).
    let mut changed = config_map("c", json!({"a": "3", "b": "2"}));
    changed["metadata"]["labels"] = json!({"extra": "yes"});
    set_spec(&client, ns, "p", given(json!([changed]), json!({"a": 1, "b": 2}))).await;
    eventually("child a changed", || async {
        config_maps.get_opt("c").await.unwrap().is_some_and(|cm| cm.data.unwrap_or_default()["a"] == "3")
    })
    .await;

    set_spec(&client, ns, "p", given(json!([config_map("c", json!({"a": "3"}))]), json!({"a": 1}))).await;
    eventually("status b gone", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| {
            p.data["status"]["observedGeneration"] == 3
                && p.data["status"].get("b").is_none()
                && p.data["status"]["a"] == 1
        })
    })
    .await;
    let cm = config_maps.get("c").await.unwrap();
    assert_eq!(cm.data.clone().unwrap_or_default().keys().collect::<Vec<_>>(), ["a"], "{cm:?}");
    assert!(!cm.labels().contains_key("extra"), "{cm:?}");
    running.stop().await;
    cluster.shutdown().await;
}

async fn existing_objects_are_never_taken_over_or_pruned(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let by_hand: ConfigMap = serde_json::from_value(config_map("by-hand", json!({"mine": "yes"}))).unwrap();
    config_maps.create(&PostParams::default(), &by_hand).await.unwrap();
    let owner = config_maps
        .create(&PostParams::default(), &serde_json::from_value(config_map("owner", json!({}))).unwrap())
        .await
        .unwrap();
    let owned: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "data": {"theirs": "yes"},
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
            "name": "owner", "uid": owner.uid().unwrap(), "controller": true}]},
    }))
    .unwrap();
    config_maps.create(&PostParams::default(), &owned).await.unwrap();

    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let wanted = json!([
        config_map("by-hand", json!({"x": "1"})),
        config_map("owned", json!({"x": "1"})),
        config_map("free", json!({"x": "1"}))
    ]);
    create(&client, &ar, ns, "p", given(wanted, json!({}))).await;
    eventually("ChildConflict naming both", || async {
        get(&client, &ar, ns, "p").await.and_then(|o| ready(&o)).is_some_and(|(s, r, m)| {
            s == "False"
                && r == "ChildConflict"
                && m.contains(&format!("ConfigMap {ns}/by-hand"))
                && m.contains("ConfigMap owner")
        })
    })
    .await;
    // The free name was created; neither existing object was touched.
    assert!(config_maps.get_opt("free").await.unwrap().is_some());
    assert_eq!(config_maps.get("by-hand").await.unwrap().data.unwrap()["mine"], "yes");
    assert_eq!(config_maps.get("owned").await.unwrap().data.unwrap()["theirs"], "yes");

    // Opting in adopts the object without a controller.
    let adopt = json!({"metadata": {"annotations": {"wasmop.dev/adopt": "true"}}});
    config_maps.patch("by-hand", &PatchParams::default(), &Patch::Merge(&adopt)).await.unwrap();
    eventually("adopted", || async {
        config_maps.get("by-hand").await.unwrap().owner_references().iter().any(|o| o.name == "p")
    })
    .await;

    // The plugin stops returning them: only what the host created for this parent is pruned.
    set_spec(&client, ns, "p", given(json!([]), json!({}))).await;
    eventually("Ready for the new spec", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|o| {
            o.data["status"]["observedGeneration"] == 2 && ready(&o).is_some_and(|(s, _, _)| s == "True")
        })
    })
    .await;
    eventually("free pruned", || async { config_maps.get_opt("free").await.unwrap().is_none() }).await;
    assert!(config_maps.get_opt("owned").await.unwrap().is_some(), "someone else's object was pruned");
    running.stop().await;
    cluster.shutdown().await;
}

async fn the_hosts_marks_always_win(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let mut stripped = config_map("stripped", json!({"a": "1"}));
    stripped["metadata"]["labels"] = Value::Null;
    stripped["metadata"]["annotations"] = json!("not a map");
    create(&client, &ar, ns, "p", given(json!([stripped]), json!({}))).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("child with the host's marks", || async {
        config_maps.get_opt("stripped").await.unwrap().is_some_and(|cm| {
            cm.labels().get("wasmop.dev/plugin").map(String::as_str) == Some("hostile")
                && cm.annotations().contains_key("wasmop.dev/plugin-revision")
        })
    })
    .await;

    // A child with finalizers is refused, saying why.
    let mut with_finalizer = config_map("held", json!({}));
    with_finalizer["metadata"]["finalizers"] = json!(["example.com/hold"]);
    set_spec(&client, ns, "p", given(json!([with_finalizer]), json!({}))).await;
    eventually("refused", || async {
        get(&client, &ar, ns, "p")
            .await
            .and_then(|o| ready(&o))
            .is_some_and(|(_, r, m)| r == "InvalidPluginOutput" && m.contains("metadata.finalizers"))
    })
    .await;
    assert!(config_maps.get_opt("held").await.unwrap().is_none());
    // A marked child is still pruned once no longer desired.
    set_spec(&client, ns, "p", given(json!([]), json!({}))).await;
    eventually("stripped child pruned", || async { config_maps.get_opt("stripped").await.unwrap().is_none() }).await;
    running.stop().await;
    cluster.shutdown().await;
}

async fn policy_mutations_land_but_may_not_move_a_child(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = plugins_dir(&[("hostile", None), ("mutator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let mutated = |name: &str, how: &str| {
        let mut cm = config_map(name, json!({"a": "1"}));
        cm["metadata"]["annotations"] = json!({"test.wasmop.dev/mutate": how});
        cm
    };
    create(&client, &ar, ns, "p", given(json!([mutated("a", "label"), mutated("b", "strip-labels")]), json!({}))).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("the mutated child landed", || async {
        config_maps
            .get_opt("a")
            .await
            .unwrap()
            .is_some_and(|cm| cm.labels().get("mutated").map(String::as_str) == Some("yes"))
    })
    .await;
    eventually("stripped labels restored by the host", || async {
        config_maps.get_opt("b").await.unwrap().is_some_and(|cm| cm.labels().get("wasmop.dev/plugin").is_some())
    })
    .await;
    for (how, field) in [("namespace", "/metadata/namespace"), ("kind", "/kind")] {
        set_spec(&client, ns, "p", given(json!([mutated("a", how)]), json!({}))).await;
        eventually("the move refused", || async {
            get(&client, &ar, ns, "p")
                .await
                .and_then(|o| ready(&o))
                .is_some_and(|(s, _, m)| s == "False" && m.contains(&format!("may not change {field}")))
        })
        .await;
    }
    assert!(config_maps.get_opt("a").await.unwrap().is_some(), "a refused review must not prune");
    running.stop().await;
    cluster.shutdown().await;
}

async fn a_monitoring_policy_records_verdicts_and_protect_enforces_them(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    install_policy_report_crd(&client).await;
    let reports: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
            "policyreports",
        ),
    );
    let dir = plugins_dir(&[("hostile", None), ("mutator", Some("mode = \"monitor\"\n"))]);
    let sidecar = dir.path().join("mutator.toml");
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let annotated = |name: &str, how: &str| {
        let mut cm = config_map(name, json!({"a": "1"}));
        cm["metadata"]["annotations"] = json!({"test.wasmop.dev/mutate": how});
        cm
    };
    // p: one child the policy denies; r: one it mutates; q: one it allows.
    create(&client, &ar, ns, "p", given(json!([annotated("p-denied", "deny")]), json!({}))).await;
    create(&client, &ar, ns, "r", given(json!([annotated("r-mutated", "label")]), json!({}))).await;
    create(&client, &ar, ns, "q", given(json!([config_map("q-plain", json!({}))]), json!({}))).await;

    // Monitor: nothing is blocked or changed; each parent says what the policy would have done.
    for name in ["p", "r", "q"] {
        wait_ready(&client, &ar, ns, name, "True", "Reconciled").await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(config_maps.get_opt("p-denied").await.unwrap().is_some(), "monitor mode blocked a child");
    let r_child = config_maps.get("r-mutated").await.unwrap();
    assert_eq!(r_child.labels().get("mutated"), None, "monitor mode applied a mutation");
    eventually("p's finding", || async {
        policy_condition(&client, ns, "p").await.is_some_and(|(s, r, m)| {
            s == "False"
                && r == "PolicyFindings"
                && m.contains(&format!(
                    "policy mutator on ConfigMap {ns}/p-denied: would deny: denied by its annotation"
                ))
        })
    })
    .await;
    let (_, _, r_message) = policy_condition(&client, ns, "r").await.expect("r's condition");
    assert!(r_message.contains("would change metadata.labels.mutated"), "{r_message}");
    let (q_status, q_reason, _) = policy_condition(&client, ns, "q").await.expect("q's condition");
    assert_eq!((q_status.as_str(), q_reason.as_str()), ("True", "NoFindings"));
    eventually("a Warning Event names the finding", || async {
        events(&client, ns, "PolicyFindings").await.iter().any(|note| note.contains(&format!("{ns}/p-denied")))
    })
    .await;
    // The cluster serves PolicyReports: p's findings are one, owned by p.
    let p_uid = get(&client, &ar, ns, "p").await.unwrap().uid().unwrap();
    let p_report = format!("wasmop-{p_uid}");
    eventually("p's PolicyReport", || async { reports.get_opt(&p_report).await.is_ok_and(|r| r.is_some()) }).await;
    let report = reports.get(&p_report).await.unwrap();
    assert_eq!(report.data["summary"]["fail"], 1, "{:?}", report.data);
    assert_eq!(report.data["results"][0]["policy"], "mutator");
    assert_eq!(report.data["results"][0]["resources"][0]["name"], "p-denied");
    assert_eq!(report.owner_references()[0].uid, p_uid);
    // An unchanged verdict is not reported again: p reconciles with a new status and the same
    // child (the status written after its findings were judged), and neither the findings metric
    // nor the report moves.
    let findings = "wasmop_policy_findings_total{policy=\"mutator\"}";
    let counted = running.sample(findings).await;
    assert!(counted >= 1.0, "the first findings were counted");
    set_spec(&client, ns, "p", given(json!([annotated("p-denied", "deny")]), json!({"round": 2}))).await;
    eventually("p reconciled again", || async {
        get(&client, &ar, ns, "p").await.is_some_and(|p| p.data["status"]["round"] == 2)
    })
    .await;
    assert_eq!(running.sample(findings).await, counted, "unchanged findings were reported again");
    let again = reports.get(&p_report).await.unwrap();
    assert_eq!(again.resource_version(), report.resource_version(), "the unchanged findings were written again");

    // Protect: the denial blocks p, the mutation lands, and no parent carries findings.
    std::fs::write(&sidecar, "mode = \"protect\"\n").unwrap();
    wait_ready(&client, &ar, ns, "p", "False", "PolicyDenied").await;
    eventually("the mutation lands", || async {
        config_maps.get("r-mutated").await.is_ok_and(|cm| cm.labels().get("mutated").map(String::as_str) == Some("yes"))
    })
    .await;
    eventually("r's findings condition goes", || async { policy_condition(&client, ns, "r").await.is_none() }).await;
    eventually("no policy monitors: p's report goes", || async {
        reports.get_opt(&p_report).await.is_ok_and(|r| r.is_none())
    })
    .await;

    // Back to monitor is refused: the protecting revision keeps serving.
    let failures = running.reloads.failures.load(std::sync::atomic::Ordering::Relaxed);
    std::fs::write(&sidecar, "mode = \"monitor\"\n").unwrap();
    eventually("protect to monitor refused", || async {
        running.reloads.failures.load(std::sync::atomic::Ordering::Relaxed) > failures
    })
    .await;
    assert!(ready_is(&client, &ar, ns, "p", "False", "PolicyDenied").await, "the protecting policy stopped serving");

    // A mode is for policies: an operator's sidecar saying one is refused, its revision serving on.
    let failures = running.reloads.failures.load(std::sync::atomic::Ordering::Relaxed);
    std::fs::write(dir.path().join("hostile.toml"), "mode = \"monitor\"\n").unwrap();
    eventually("an operator with a mode refused", || async {
        running.reloads.failures.load(std::sync::atomic::Ordering::Relaxed) > failures
    })
    .await;
    assert!(running.reloads.serving.lock().unwrap().contains_key("hostile"), "the operator stopped serving");
    running.stop().await;
    cluster.shutdown().await;
}
