//! Sharding (`wasmop run --shards N`) with replicas in one process, on both API server
//! backends: the replicas split the parents, a replica that joins takes a share, one that stops
//! gives its shards back, one that dies has its shard taken over once its Leases expire — and at
//! no moment do two replicas hold the same shard. (`tests/deploy.rs` runs the same with real
//! processes, the deploy/ RBAC and the sharded overlay.)

mod common;

use common::cluster::*;
use common::operator::{Operator, plugins_dir, quiet};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmop::controller::ControllerOptions;
use wasmop::leader::LeaderSettings;
use wasmop::shard::scope::SHARD_LABEL;
use wasmop::shard::{self, ShardSettings, Shards};
use wasmop::telemetry::Metrics;
use wasmop::telemetry::Stats;

/// Runs the async scenario `$name(cluster: Cluster)` on each way a replica can select its
/// shards' parents: the in-memory server honouring `shardSelector` (`memory`) and ignoring it as a
/// server without the feature does (`memory_by_label`, the label path), and the real control
/// plane with the `ShardedListAndWatch` gate on (`real`; `tests/deploy.rs` runs replicas on one
/// with the gate off).
macro_rules! on_every_sharding_path {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use super::common::cluster::Cluster;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Cluster::memory().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_by_label() {
                super::$name(Cluster::memory_with(|c| wasmop_apiserver::Config { shard_selector: false, ..c }).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                super::$name(Cluster::real_with(super::gated).await).await
            }
        }
    )+};
}

on_every_sharding_path!(
    replicas_split_rebalance_and_take_over_shards,
    a_moving_shard_moves_its_cache_and_prunes_nothing
);

/// On the label path, a parent whose label patch failed (the API server refused it once) is
/// labelled by the assigner's next sweep, and reconciled: not left waiting for an event it will
/// never get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_label_patch_failed_is_labelled_on_the_next_sweep() {
    let cluster = Cluster::memory_with(|c| wasmop_apiserver::Config { shard_selector: false, ..c }).await;
    let server = cluster.memory_server().unwrap();
    install_hostile_crd(&cluster.client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let a = Replica::start(&cluster, dir.path(), "a", 1);
    eventually("a holds the shard", || async { a.shards.owned() == [0] }).await;
    server.faults().fail_next("patch", "hostiles", 1, 500);
    create_and_converge(&cluster, 0..1).await;
    let parent = get(&cluster.client, &hostile_resource(), &cluster.ns, "p0").await.unwrap();
    let label = parent.metadata.labels.unwrap_or_default().remove(SHARD_LABEL);
    assert_eq!(label.as_deref(), Some("0-of-1"));
    a.stop().await;
    cluster.shutdown().await;
}

/// The control plane of this binary: with server-side sharded list and watch.
fn gated() -> wasmop_controlplane::Builder {
    wasmop_controlplane::ControlPlane::builder().feature_gates("ShardedListAndWatch=true")
}

/// Whether the cluster selects by `shardSelector` (else the replicas select by label).
async fn server_side(cluster: &Cluster) -> bool {
    let url =
        Api::<kube::api::DynamicObject>::namespaced_with(cluster.client.clone(), &cluster.ns, &hostile_resource());
    shard::scope::server_honours(&cluster.client, url.resource_url()).await
}

/// One replica: an operator reconciling only its shards, and the claimer of its shards.
struct Replica {
    operator: Operator,
    shards: Shards,
    stop: watch::Sender<bool>,
    claimer: JoinHandle<()>,
}

impl Replica {
    fn start(cluster: &Cluster, dir: &std::path::Path, identity: &str, count: u32) -> Replica {
        let shards = Shards::none(count);
        let operator = Operator::start(cluster, dir, ControllerOptions { shards: shards.clone(), ..quiet() });
        let settings = ShardSettings {
            shards: count,
            lease: LeaderSettings {
                lease_name: "shard".into(),
                namespace: cluster.ns.clone(),
                identity: identity.into(),
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_secs(1),
            },
        };
        let (stop, rx) = watch::channel(false);
        let claimer = tokio::spawn({
            let (client, shards) = (cluster.client.clone(), shards.clone());
            async move { shard::run(client, settings, shards, Arc::new(Metrics::new()), rx).await.unwrap() }
        });
        Replica { operator, shards, stop, claimer }
    }

    /// The objects in this replica's cache `cache` (`parents`, or a child kind).
    async fn cached(&self, cache: &str) -> usize {
        let series = format!("wasmop_cached_objects{{controller=\"hostile\",cache=\"{cache}\"}}");
        self.operator.sample(&series).await as usize
    }

    fn reconciles(&self) -> u64 {
        Stats::get(&self.operator.stats.reconciles)
    }

    /// A clean stop: its shards are given back, then it ends.
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.claimer.await.unwrap();
        self.operator.stop().await;
    }

    /// A crash: its Leases are neither renewed nor released.
    fn kill(self) {
        self.claimer.abort();
        drop(self.operator);
    }
}

/// The replicas whose shards are checked, by name.
type Watched = Arc<std::sync::Mutex<Vec<(&'static str, Shards)>>>;

/// Checks every few milliseconds that no shard is held by two live replicas at once.
fn watch_exclusive(replicas: Watched, violated: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let held: Vec<(&str, Vec<u32>)> =
                replicas.lock().unwrap().iter().map(|(name, shards)| (*name, shards.owned())).collect();
            let total: usize = held.iter().map(|(_, h)| h.len()).sum();
            let distinct: std::collections::BTreeSet<u32> = held.iter().flat_map(|(_, h)| h.iter().copied()).collect();
            if distinct.len() != total {
                eprintln!("a shard held twice: {held:?}");
                violated.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Creates Hostile parents `names` and waits for each one's ConfigMap.
async fn create_and_converge(cluster: &Cluster, names: std::ops::Range<usize>) {
    let (client, ns) = (&cluster.client, cluster.ns.as_str());
    for i in names.clone() {
        create(client, &hostile_resource(), ns, &format!("p{i}"), json!({"mode": "ok"})).await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in names {
        eventually(&format!("p{i} reconciled"), || async {
            config_maps.get_opt(&format!("p{i}")).await.unwrap().is_some()
        })
        .await;
    }
}

async fn replicas_split_rebalance_and_take_over_shards(cluster: Cluster) {
    install_hostile_crd(&cluster.client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let violated = Arc::new(AtomicBool::new(false));
    let sets: Watched = Arc::default();
    let exclusive = watch_exclusive(sets.clone(), violated.clone());
    let held = |replicas: &[&Replica]| replicas.iter().map(|r| r.shards.owned()).collect::<Vec<_>>();

    // Two replicas, three shards: every shard held, each replica at least one.
    let a = Replica::start(&cluster, dir.path(), "a", 3);
    let b = Replica::start(&cluster, dir.path(), "b", 3);
    sets.lock().unwrap().extend([("a", a.shards.clone()), ("b", b.shards.clone())]);
    eventually("a and b hold all three", || async {
        let held = held(&[&a, &b]);
        held.iter().all(|h| !h.is_empty()) && held.iter().map(Vec::len).sum::<usize>() == 3
    })
    .await;
    create_and_converge(&cluster, 0..16).await;
    assert!(a.reconciles() > 0 && b.reconciles() > 0, "a: {}, b: {}", a.reconciles(), b.reconciles());
    if let Some(server) = cluster.memory_server() {
        // Holding shards costs no LIST per retry period: the replicas read one Lease watch.
        let before = server.stats();
        assert!(before.count("list", "leases") > 0, "the replicas' first list of Leases is not counted: {before:?}");
        let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.ns);
        let renewed = || async { leases.get("shard-0").await.unwrap().spec.unwrap().renew_time.unwrap().0 };
        let first = renewed().await.as_second();
        // Renewed once a retry period (1 s): three seconds on, three periods have passed.
        eventually("shard-0's Lease renewed three periods on", || async { renewed().await.as_second() >= first + 3 })
            .await;
        let during = server.stats().since(&before);
        assert_eq!(during.count("list", "leases"), 0, "Leases listed while holding shards: {during:?}");
    }

    // c joins: the one holding two gives one back, and c claims it.
    let c = Replica::start(&cluster, dir.path(), "c", 3);
    sets.lock().unwrap().push(("c", c.shards.clone()));
    eventually("one shard each", || async { held(&[&a, &b, &c]).iter().all(|h| h.len() == 1) }).await;
    let before = c.reconciles();
    create_and_converge(&cluster, 16..32).await;
    assert!(c.reconciles() > before, "c reconciled nothing");

    // b stops cleanly: its shard is given back and taken by a or c.
    b.stop().await;
    eventually("a and c hold all three", || async { held(&[&a, &c]).iter().map(Vec::len).sum::<usize>() == 3 }).await;
    create_and_converge(&cluster, 32..40).await;

    // c dies: once its Leases expire, a holds every shard and reconciles every new parent. (A
    // dead process holds nothing: c's own view of its shards is no longer checked.)
    sets.lock().unwrap().retain(|(name, _)| *name != "c");
    c.kill();
    eventually("a holds all three", || async { a.shards.owned() == [0, 1, 2] }).await;
    create_and_converge(&cluster, 40..48).await;

    exclusive.abort();
    assert!(!violated.load(Ordering::SeqCst), "a shard was held by two replicas at once");
    a.stop().await;
    cluster.shutdown().await;
}

/// Per parent `p0`… `p{n-1}`: its shard label, its ConfigMap's, the ConfigMap's UID, and the
/// parent's shard as a label value.
async fn labels_and_uids(cluster: &Cluster, n: usize) -> Vec<(Option<String>, Option<String>, String, String)> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let mut seen = Vec::new();
    for i in 0..n {
        let parent = get(&cluster.client, &hostile_resource(), &cluster.ns, &format!("p{i}")).await.unwrap();
        let child = config_maps.get(&format!("p{i}")).await.unwrap();
        let label = |labels: Option<&std::collections::BTreeMap<String, String>>| labels?.get(SHARD_LABEL).cloned();
        let shard = format!("{}-of-2", shard::shard_of(parent.metadata.uid.as_deref().unwrap(), 2));
        let labels = (label(parent.metadata.labels.as_ref()), label(child.metadata.labels.as_ref()));
        seen.push((labels.0, labels.1, child.metadata.uid.unwrap(), shard));
    }
    seen
}

async fn a_moving_shard_moves_its_cache_and_prunes_nothing(cluster: Cluster) {
    install_hostile_crd(&cluster.client).await;
    let dir = plugins_dir(&[("hostile", None)]);
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let a = Replica::start(&cluster, dir.path(), "a", 2);
    let (violated, sets): (Arc<AtomicBool>, Watched) = Default::default();
    let exclusive = watch_exclusive(sets.clone(), violated.clone());
    sets.lock().unwrap().push(("a", a.shards.clone()));
    eventually("a holds both shards", || async { a.shards.owned() == [0, 1] }).await;
    // Created without a shard label: a labels each (its holder), and only then caches and
    // reconciles it.
    create_and_converge(&cluster, 0..12).await;
    let by_server = server_side(&cluster).await;
    let before = labels_and_uids(&cluster, 12).await;
    let shard_of = |i: usize| before[i].3.clone();
    for (i, (parent, child, _, shard)) in before.iter().enumerate() {
        // Selected by the server, a parent needs no label; by label, it has its shard's.
        let labelled = if by_server { None } else { Some(shard) };
        assert_eq!(parent.as_ref(), labelled, "p{i}'s shard label");
        assert_eq!(child.as_ref(), Some(shard), "p{i}'s ConfigMap does not carry its parent's shard");
    }
    eventually("a caches all 12 parents and ConfigMaps", || async {
        a.cached("parents").await == 12 && a.cached("ConfigMap").await == 12
    })
    .await;

    // b joins: one shard moves to it, and its parents and children with it.
    let b = Replica::start(&cluster, dir.path(), "b", 2);
    sets.lock().unwrap().push(("b", b.shards.clone()));
    eventually("one shard each", || async { a.shards.owned().len() == 1 && b.shards.owned().len() == 1 }).await;
    let of_b = format!("{}-of-2", b.shards.owned()[0]);
    let moved: Vec<usize> = (0..12).filter(|&i| shard_of(i) == of_b).collect();
    assert!(!moved.is_empty() && moved.len() < 12, "12 parents in one shard: {before:?}");
    eventually("each replica caches its shard's parents and ConfigMaps only", || async {
        let (stay, go) = (12 - moved.len(), moved.len());
        (a.cached("parents").await, a.cached("ConfigMap").await) == (stay, stay)
            && (b.cached("parents").await, b.cached("ConfigMap").await) == (go, go)
    })
    .await;
    // Gaining a shard reconciles its parents (though nothing about them changed).
    eventually("b reconciled the parents it gained", || async { b.reconciles() >= moved.len() as u64 }).await;
    // Moving between caches is no deletion: every ConfigMap is the one that was there, and every
    // parent still stands with its finalizer.
    assert_eq!(labels_and_uids(&cluster, 12).await, before, "a ConfigMap was pruned or recreated in the move");
    for i in 0..12 {
        let parent = get(&client, &hostile_resource(), &ns, &format!("p{i}")).await.unwrap();
        assert!(
            parent.metadata.deletion_timestamp.is_none() && parent.metadata.finalizers.is_some(),
            "p{i}: {parent:?}"
        );
    }

    // b owns what moved: a moved parent that stops wanting its ConfigMap has it pruned (by b, the
    // only replica caching it).
    let reconciles = b.reconciles();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &hostile_resource());
    let patch = json!({"spec": {"mode": "empty"}});
    let name = format!("p{}", moved[0]);
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually("the moved parent's ConfigMap pruned", || async { config_maps.get_opt(&name).await.unwrap().is_none() })
        .await;
    assert!(b.reconciles() > reconciles, "b did not reconcile its parent");

    // Each replica's selector, as the server answers it, is what the replica caches.
    if by_server {
        for replica in [&a, &b] {
            let selector = replica.shards.server_selector().unwrap();
            let list = sharded_list(&cluster, &selector).await;
            assert_eq!(list["metadata"]["shardInfo"]["selector"], selector.as_str(), "the selector is not echoed");
            assert_eq!(list["items"].as_array().unwrap().len(), replica.cached("parents").await);
        }
        exclusive.abort();
        assert!(!violated.load(Ordering::SeqCst), "two replicas held one shard at once");
        a.stop().await;
        b.stop().await;
        return cluster.shutdown().await;
    }

    // By label: a parent labelled with no shard of this count is labelled right and reconciled
    // by its shard's holder.
    for (name, label) in [("wrong", "9-of-2"), ("other-count", "0-of-5")] {
        let parent = json!({"apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
            "metadata": {"name": name, "labels": {SHARD_LABEL: label}}, "spec": {"mode": "ok"}});
        api.create(&Default::default(), &serde_json::from_value(parent).unwrap()).await.unwrap();
        eventually(&format!("{name} relabelled and reconciled"), || async {
            config_maps.get_opt(name).await.unwrap().is_some()
        })
        .await;
        let parent = get(&client, &hostile_resource(), &ns, name).await.unwrap();
        let uid = parent.metadata.uid.clone().unwrap();
        assert_eq!(parent.metadata.labels.unwrap()[SHARD_LABEL], format!("{}-of-2", shard::shard_of(&uid, 2)));
    }
    // One filed under the other shard (by hand) reaches that shard's holder, which files it back.
    let own = shard_of(1);
    let other = if own == "0-of-2" { "1-of-2" } else { "0-of-2" };
    let patch = json!({"metadata": {"labels": {SHARD_LABEL: other}}});
    api.patch("p1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    eventually("p1 filed back under its own shard", || async {
        let parent = get(&client, &hostile_resource(), &ns, "p1").await.unwrap();
        parent.metadata.labels.unwrap().get(SHARD_LABEL) == Some(&own)
    })
    .await;
    exclusive.abort();
    assert!(!violated.load(Ordering::SeqCst), "two replicas held one shard at once");
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

/// The list of the test's parents with `shardSelector=selector`, as JSON.
async fn sharded_list(cluster: &Cluster, selector: &str) -> serde_json::Value {
    let api =
        Api::<kube::api::DynamicObject>::namespaced_with(cluster.client.clone(), &cluster.ns, &hostile_resource());
    let query: String = selector
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    let request = http::Request::get(format!("{}?shardSelector={query}", api.resource_url())).body(Vec::new()).unwrap();
    cluster.client.request(request).await.unwrap()
}
