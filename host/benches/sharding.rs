//! Sharding: N Appoperators against the in-memory API server, reconciled by 1, 2 and 3 replicas
//! in this process (`--shards` equal to the replica count), each with its own client, caches and
//! shard claimer. Prints, per run, the time until every parent is Ready and how many reconciles
//! each replica ran; then, with 2 and 3 replicas, a failover: one replica dies without releasing
//! its Leases, and the bench prints how long until its shard is held again and until a further
//! N/10 parents are all Ready.
//!
//! The replicas share this machine's cores, so more replicas do not finish sooner here: what the
//! figures show is the split of the work and the takeover. `make bench` runs it;
//! `WASMOP_BENCH_PARENTS=10000` picks the size (default 1000).

#[path = "common/apps.rs"]
mod apps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::crd;
use wasmop::leader::LeaderSettings;
use wasmop::plugin::{Limits, OperatorPlugin, Runtime, RuntimeConfig};
use wasmop::shard::{self, ShardSettings, Shards};
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::Stats;
use wasmop::telemetry::Telemetry;
use wasmop_apiserver::{ApiServer, Config};

/// Lease timing of the bench's replicas (shorter than the 15 s default, to keep the run short).
const LEASE: (u64, u64, u64) = (6, 4, 1);

struct Replica {
    shards: Shards,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    /// A replica as `wasmop run --shards` runs one: a catalog of `dir`, the supervisor and the
    /// shard claimer.
    async fn start(url: &str, dir: &std::path::Path, identity: String, count: u32) -> Replica {
        let client = Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
        let shards = Shards::none(count);
        let telemetry = Telemetry::new();
        let stats = telemetry.stats.clone();
        let (stop, rx) = watch::channel(false);
        let options = ControllerOptions { concurrency: 16, shards: shards.clone(), ..ControllerOptions::default() };
        let metrics = telemetry.metrics.clone();
        let mut stopped = rx.clone();
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
        let catalog = Catalog::builder(runtime).dir(dir.to_path_buf()).start().await.expect("catalog");
        let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).telemetry(telemetry).build();
        let controller = tokio::spawn(async move {
            supervisor
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            drop(catalog);
        });
        let settings = ShardSettings {
            shards: count,
            lease: LeaderSettings {
                lease_name: "wasmop-shard".into(),
                namespace: "default".into(),
                identity,
                lease_duration: Duration::from_secs(LEASE.0),
                renew_deadline: Duration::from_secs(LEASE.1),
                retry_period: Duration::from_secs(LEASE.2),
            },
        };
        let claimer = tokio::spawn({
            let shards = shards.clone();
            async move {
                if let Err(e) = shard::run(client, settings, shards, metrics, rx).await {
                    eprintln!("claimer: {e}");
                }
            }
        });
        Replica { shards, stats, stop, tasks: vec![controller, claimer] }
    }

    fn reconciles(&self) -> u64 {
        Stats::get(&self.stats.reconciles)
    }

    /// A crash: nothing is released.
    fn kill(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Creates parents `range` and waits until `total` parents are Ready.
async fn create_until_ready(api: &Api<DynamicObject>, range: std::ops::Range<usize>, total: usize, what: &str) {
    let (created, started) = tokio::sync::oneshot::channel();
    let ready = tokio::spawn({
        let (api, what) = (api.clone(), what.to_string());
        async move { apps::wait_ready(&what, api, total, started).await }
    });
    apps::create(api, "default", range).await;
    let _ = created.send(());
    ready.await.expect("ready");
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(120), "{what}: not within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(plugin: &OperatorPlugin, replicas: u32, n: usize) {
    let config = Config { simulate_deployments: true, simulate_delay: Duration::from_millis(100), ..Config::default() };
    let server = ApiServer::start(config).await.expect("api server");
    let client = Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    crd::install(&client, plugin, None).await.expect("crd");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator"),
        "appoperators",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let dir = tempfile::tempdir().expect("plugins directory");
    std::fs::copy(plugin.file().path.clone(), dir.path().join("appoperator.wasm")).expect("copy the plugin");
    let mut started = Vec::new();
    for i in 0..replicas {
        started.push(Replica::start(&server.url(), dir.path(), format!("r{i}"), replicas).await);
    }
    // Balanced before the clock starts: one shard each.
    until("one shard each", || started.iter().all(|r| r.shards.owned().len() == 1)).await;

    let clock = Instant::now();
    create_until_ready(&api, 0..n, n, "sharded run").await;
    let wall = clock.elapsed();
    let counts: Vec<String> = started
        .iter()
        .enumerate()
        .map(|(i, r)| format!("r{i} {:?} {} ({:.0}%)", r.shards.owned(), r.reconciles(), share(r, &started)))
        .collect();
    println!(
        "{replicas} replica(s), {n:>6} parents: all Ready in {:>6.2}s; reconciles per replica: {}",
        wall.as_secs_f64(),
        counts.join(", ")
    );

    if replicas > 1 {
        let dead = started.last().expect("a replica");
        let orphaned = dead.shards.owned();
        dead.kill();
        let clock = Instant::now();
        let survivors = &started[..started.len() - 1];
        until("the dead replica's shard held again", || {
            orphaned.iter().all(|s| survivors.iter().any(|r| r.shards.owned().contains(s)))
        })
        .await;
        let taken = clock.elapsed();
        let more = n / 10;
        create_until_ready(&api, n..n + more, n + more, "after failover").await;
        println!(
            "{replicas} replica(s), {n:>6} parents: failover: shard {orphaned:?} held again after {:.1}s (lease {}s, retry {}s); {more} new parents all Ready {:.1}s after the kill",
            taken.as_secs_f64(),
            LEASE.0,
            LEASE.2,
            clock.elapsed().as_secs_f64()
        );
    }
    for replica in &started {
        let _ = replica.stop.send(true);
        replica.kill();
    }
    server.shutdown().await;
}

/// The replica's share of all reconciles, in percent.
fn share(replica: &Replica, all: &[Replica]) -> f64 {
    let total: u64 = all.iter().map(Replica::reconciles).sum();
    100.0 * replica.reconciles() as f64 / total.max(1) as f64
}

fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    assert!(path.exists(), "{} is missing: run `make plugins` (make bench does)", path.display());
    let n: usize = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1000);
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = rt.load_operator(&path, Limits::default()).expect("load appoperator");
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    // Under `cargo test --benches` run a token size so the bench is exercised, not measured.
    let (n, runs) = if std::env::args().any(|a| a == "--bench") { (n, vec![1, 2, 3]) } else { (20, vec![2]) };
    for replicas in runs {
        tokio.block_on(run(&plugin, replicas, n));
    }
}
