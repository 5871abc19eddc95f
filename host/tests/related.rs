//! Related objects (contract 0.3): a plugin reads the objects it declares, picked per parent,
//! and a change to one of them reconciles exactly the parents that picked it.

mod common;

use common::cluster::*;
use common::operator::{Operator, plugin_variant, plugins_dir, quiet};

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

on_both_backends!(
    a_config_map_edit_rolls_only_the_parents_that_reference_it,
    a_label_selected_secret_reconciles_exactly_the_selecting_parents,
    a_selector_outside_the_declaration_is_refused_naming_it,
    a_plugin_selecting_too_much_is_capped_and_others_are_unaffected,
);

const HASH: &str = "appoperator.tools.wasmop.dev/config-hash";

/// A plugins directory with the `reader` build of Hostile (reads ConfigMaps cluster-wide and
/// Secrets in the parent's namespace, as metadata) as `hostile.wasm`, and Appoperator.
fn reader_dir(sidecar: Option<&str>) -> tempfile::TempDir {
    let dir = plugins_dir(&[("appoperator", None)]);
    std::fs::copy(plugin_variant("hostile_reader.wasm"), dir.path().join("hostile.wasm")).unwrap();
    if let Some(toml) = sidecar {
        std::fs::write(dir.path().join("hostile.toml"), toml).unwrap();
    }
    dir
}

async fn put_config_map(client: &Client, ns: &str, name: &str, labels: Value, data: Value) {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&cm))
        .await
        .unwrap();
}

async fn put_secret(client: &Client, ns: &str, name: &str, labels: Value) {
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&secret))
        .await
        .unwrap();
}

/// The config hash on the pod template of Appoperator `name`'s Deployment.
async fn template_hash(client: &Client, ns: &str, name: &str) -> Option<String> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await.ok()??;
    let annotations = deployment.spec?.template.metadata?.annotations?;
    annotations.get(HASH).cloned()
}

/// What Hostile (`mode: related`) says it received, from its ConfigMap named after the parent.
async fn received(client: &Client, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await.ok()??.data
}

async fn received_is(client: &Client, ns: &str, name: &str, id: &str, want: &str) -> bool {
    received(client, ns, name).await.is_some_and(|d| d.get(id).map(String::as_str) == Some(want))
}

fn app(config_ref: Option<&str>) -> Value {
    let mut workload = json!({"image": "nginx:1.27", "replicas": 1});
    if let Some(name) = config_ref {
        workload["configRef"] = json!(name);
    }
    json!({"workload": workload})
}

/// Appoperator's `configRef`: the pod template carries the ConfigMap's content hash; editing the
/// ConfigMap changes it for the parents that name it and for no other; a parent naming a
/// ConfigMap that does not exist is `ConfigMissing` until it is created.
async fn a_config_map_edit_rolls_only_the_parents_that_reference_it(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    wait_served(&client, &ar).await;
    put_config_map(&client, ns, "shared", json!({}), json!({"LEVEL": "info"})).await;
    put_config_map(&client, ns, "own", json!({}), json!({"LEVEL": "info"})).await;
    for (name, config_ref) in [("a", Some("shared")), ("b", Some("shared")), ("c", Some("own")), ("d", None)] {
        create(&client, &ar, ns, name, app(config_ref)).await;
    }
    create(&client, &ar, ns, "late", app(Some("later"))).await;
    for name in ["a", "b", "c"] {
        eventually(&format!("{name} carries a hash"), || async { template_hash(&client, ns, name).await.is_some() })
            .await;
    }
    let before: Vec<Option<String>> =
        futures::future::join_all(["a", "c"].map(|n| template_hash(&client, ns, n))).await;
    assert_eq!(template_hash(&client, ns, "b").await, before[0], "the same ConfigMap, the same hash");
    let d = Api::<Deployment>::namespaced(client.clone(), ns).get("d").await.unwrap();
    assert!(d.spec.unwrap().template.metadata.unwrap().annotations.is_none(), "no configRef, no hash");

    put_config_map(&client, ns, "shared", json!({}), json!({"LEVEL": "debug"})).await;
    for name in ["a", "b"] {
        eventually(&format!("{name}'s hash follows the edit"), || async {
            template_hash(&client, ns, name).await.is_some_and(|h| Some(h) != before[0])
        })
        .await;
    }
    assert_eq!(template_hash(&client, ns, "c").await, before[1], "a parent naming another ConfigMap kept its hash");
    let env = Api::<Deployment>::namespaced(client.clone(), ns).get("a").await.unwrap();
    let container = &env.spec.unwrap().template.spec.unwrap().containers[0];
    let env_from = container.env_from.as_ref().unwrap();
    assert_eq!(env_from[0].config_map_ref.as_ref().unwrap().name, "shared");

    // Missing, then created.
    wait_ready(&client, &ar, ns, "late", "False", "ConfigMissing").await;
    let late = get(&client, &ar, ns, "late").await.unwrap();
    assert!(ready(&late).unwrap().2.contains("ConfigMap later"), "{:?}", ready(&late));
    put_config_map(&client, ns, "later", json!({}), json!({"LEVEL": "info"})).await;
    eventually("late is Ready once its ConfigMap exists", || ready_is(&client, &ar, ns, "late", "True", "Available"))
        .await;
    assert!(template_hash(&client, ns, "late").await.is_some());
    running.stop().await;
    cluster.shutdown().await;
}

/// Secrets picked by a label selector, read as metadata: the plugin gets exactly the matching
/// ones and never their data; a new matching Secret, and one relabelled away, reconcile the
/// parents whose selectors it enters or leaves.
async fn a_label_selected_secret_reconciles_exactly_the_selecting_parents(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    put_secret(&client, ns, "s1", json!({"team": "a"})).await;
    let dir = reader_dir(None);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let reads = |team: &str| json!([{"id": "creds", "kind": "v1/Secret", "labels": format!("team={team}")}]);
    create(&client, &ar, ns, "team-a", json!({"mode": "related", "reads": reads("a")})).await;
    create(&client, &ar, ns, "team-b", json!({"mode": "related", "reads": reads("b")})).await;
    let (s1, s2) = (format!("{ns}/s1"), format!("{ns}/s2"));
    let both = format!("{s1},{s2}");
    eventually("team-a got s1", || received_is(&client, ns, "team-a", "creds", &s1)).await;
    eventually("team-b got none", || received_is(&client, ns, "team-b", "creds", "")).await;
    let data = received(&client, ns, "team-a").await.unwrap();
    assert_eq!(data["creds.bodies"], "0", "Secret data crossed into the plugin");

    put_secret(&client, ns, "s2", json!({"team": "a"})).await;
    eventually("team-a got s2 too", || received_is(&client, ns, "team-a", "creds", &both)).await;
    // Relabelled: it leaves team-a's selection (found by its old labels) and enters team-b's.
    put_secret(&client, ns, "s1", json!({"team": "b"})).await;
    eventually("team-b got s1", || received_is(&client, ns, "team-b", "creds", &s1)).await;
    eventually("team-a lost s1", || received_is(&client, ns, "team-a", "creds", &s2)).await;
    Api::<Secret>::namespaced(client.clone(), ns).delete("s2", &DeleteParams::default()).await.unwrap();
    eventually("team-a saw s2 go", || received_is(&client, ns, "team-a", "creds", "")).await;
    running.stop().await;
    cluster.shutdown().await;
}

/// A selector of a kind the plugin does not declare, or outside the declared scope, is refused
/// on its parent with an error naming it; the plugin's other parents are reconciled. A spec
/// called invalid is judged again when a related object changes.
async fn a_selector_outside_the_declaration_is_refused_naming_it(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    let dir = reader_dir(None);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let undeclared = json!([{"id": "svc", "kind": "v1/Service", "name": "web"}]);
    let elsewhere = json!([{"id": "creds", "kind": "v1/Secret", "name": "x", "namespace": "kube-system"}]);
    let fine = json!([{"id": "config", "kind": "v1/ConfigMap", "name": "x"}]);
    create(&client, &ar, ns, "undeclared", json!({"mode": "related", "reads": undeclared})).await;
    create(&client, &ar, ns, "elsewhere", json!({"mode": "related", "reads": elsewhere})).await;
    create(&client, &ar, ns, "fine", json!({"mode": "related", "reads": fine})).await;
    for (name, says) in [
        ("undeclared", "kind v1 Service is not among the kinds the plugin declares it reads (v1 ConfigMap, v1 Secret)"),
        ("elsewhere", "namespace \"kube-system\" is outside the declared scope of kind v1 Secret"),
    ] {
        wait_ready(&client, &ar, ns, name, "False", "InvalidRelatedSelector").await;
        let obj = get(&client, &ar, ns, name).await.unwrap();
        let message = ready(&obj).unwrap().2;
        assert!(message.contains(says), "{name}: {message}");
    }
    wait_ready(&client, &ar, ns, "fine", "True", "Reconciled").await;

    // A spec the plugin calls invalid is judged again when what it reads changes, though the
    // spec itself did not.
    let waiting = json!([{"id": "config", "kind": "v1/ConfigMap", "name": "arrives-later"}]);
    create(&client, &ar, ns, "waiting", json!({"mode": "related", "reads": waiting, "requireRelated": true})).await;
    wait_ready(&client, &ar, ns, "waiting", "False", "InvalidSpec").await;
    put_config_map(&client, ns, "arrives-later", json!({}), json!({"k": "v"})).await;
    wait_ready(&client, &ar, ns, "waiting", "True", "Reconciled").await;
    running.stop().await;
    cluster.shutdown().await;
}

/// A parent whose selectors pick more than `max_related` objects is not reconciled (the plugin
/// never sees a partial view) and says so; once fewer match it is, and other parents are never
/// held up.
async fn a_plugin_selecting_too_much_is_capped_and_others_are_unaffected(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    install_hostile_crd(&client).await;
    for i in 0..5 {
        put_config_map(&client, ns, &format!("bulk-{i}"), json!({"bulk": "yes"}), json!({})).await;
    }
    let dir = reader_dir(Some("[limits]\nmax_related = 3\n"));
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = hostile_resource();
    let greedy = json!([{"id": "all", "kind": "v1/ConfigMap", "labels": "bulk=yes"}]);
    let modest = json!([{"id": "one", "kind": "v1/ConfigMap", "name": "bulk-0"}]);
    create(&client, &ar, ns, "greedy", json!({"mode": "related", "reads": greedy})).await;
    create(&client, &ar, ns, "modest", json!({"mode": "related", "reads": modest})).await;
    wait_ready(&client, &ar, ns, "greedy", "False", "TooManyRelatedObjects").await;
    let message = ready(&get(&client, &ar, ns, "greedy").await.unwrap()).unwrap().2;
    assert!(message.contains("the limit of 3") && message.contains("\"all\""), "{message}");
    assert!(received(&client, ns, "greedy").await.is_none(), "the plugin ran on a partial view");
    let bulk_0 = format!("{ns}/bulk-0");
    eventually("modest got bulk-0", || received_is(&client, ns, "modest", "one", &bulk_0)).await;
    wait_ready(&client, &ar, ns, "modest", "True", "Reconciled").await;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 3..5 {
        config_maps.delete(&format!("bulk-{i}"), &DeleteParams::default()).await.unwrap();
    }
    eventually("greedy reconciled once three match", || ready_is(&client, &ar, ns, "greedy", "True", "Reconciled"))
        .await;
    let all = (0..3).map(|i| format!("{ns}/bulk-{i}")).collect::<Vec<_>>().join(",");
    assert!(received_is(&client, ns, "greedy", "all", &all).await, "{:?}", received(&client, ns, "greedy").await);
    running.stop().await;
    cluster.shutdown().await;
}

/// On the real control plane: the kube-controller-manager rolls the Deployment (a new
/// ReplicaSet) when the ConfigMap its Appoperator names is edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_manager_rolls_the_pods_after_a_config_map_edit() {
    let cluster = Cluster::real().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.as_str());
    let dir = plugins_dir(&[("appoperator", None)]);
    let running = Operator::start(&cluster, dir.path(), quiet());
    let ar = app_resource();
    wait_served(&client, &ar).await;
    put_config_map(&client, ns, "web-config", json!({}), json!({"LEVEL": "info"})).await;
    create(&client, &ar, ns, "web", app(Some("web-config"))).await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let hashes = || async {
        let list = replica_sets.list(&Default::default()).await.unwrap().items;
        let mut hashes: Vec<String> = list
            .iter()
            .filter_map(|rs| rs.spec.as_ref()?.template.as_ref()?.metadata.as_ref()?.annotations.as_ref()?.get(HASH))
            .cloned()
            .collect();
        hashes.sort();
        hashes
    };
    eventually("one ReplicaSet with the hash", || async { hashes().await.len() == 1 }).await;
    let first = hashes().await;
    put_config_map(&client, ns, "web-config", json!({}), json!({"LEVEL": "debug"})).await;
    eventually("a second ReplicaSet, of the new hash", || async { hashes().await.len() == 2 }).await;
    let now = template_hash(&client, ns, "web").await.unwrap();
    assert!(!first.contains(&now) && hashes().await.contains(&now), "{first:?} then {now}");
    running.stop().await;
    cluster.shutdown().await;
}
