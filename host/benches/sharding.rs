//! Sharding: N Appoperators against the in-memory API server, reconciled by 1, 2 and 4 replicas,
//! each its own process (this bench re-executed, as `wasmop run --shards` runs one: a catalog,
//! the supervisor, the shard claimer), with `--shards` equal to the replica count. Prints, per
//! run, the time until every parent is Ready, the CPU seconds of the replicas and of this process
//! (which runs the in-memory server), and per replica: its shards, its RSS, its CPU seconds, the
//! objects in its caches, the bytes it received in answers to GETs (lists and watches: parents,
//! children, Leases), and its reconciles. Then, with 2 and 4 replicas, a failover: one replica is
//! killed (SIGKILL, nothing released), and the bench prints how long until its shard is held
//! again and until a further N/10 parents are all Ready.
//!
//! `WASMOP_BENCH_SHARD_SELECTOR=off` makes the server ignore `shardSelector` (the label path);
//! by default it honours it. `WASMOP_BENCH_PLANE=real` runs on a real control plane of its own
//! (`make controlplane`; kube-apiserver with the `ShardedListAndWatch` gate unless
//! `WASMOP_BENCH_SHARD_SELECTOR=off`), with `WASMOP_BENCH_REPLICAS` (default `1,3`) replicas and
//! Appoperators of 0 pods, so that kube-controller-manager's pod work does not bound the run. The replicas share this machine's cores, so more replicas do not
//! finish sooner here: the figures show the split of the work and of the memory. `make bench`
//! runs it; `WASMOP_BENCH_PARENTS=100000` picks the size (default 1000).

#[path = "common/apps.rs"]
mod apps;
#[path = "common/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::watch;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::crd;
use wasmop::leader::LeaderSettings;
use wasmop::plugin::{Limits, Runtime, RuntimeConfig};
use wasmop::shard::{self, ShardSettings, Shards};
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::{Stats, Telemetry};
use wasmop_apiserver::{ApiServer, Config};

/// Lease timing of the bench's replicas (shorter than the 15 s default, to keep the run short).
const LEASE: (u64, u64, u64) = (6, 4, 1);

/// Set in a replica child: `SERVER DIR IDENTITY COUNT`, where `SERVER` is a URL or
/// `kubeconfig:PATH`.
const REPLICA_ENV: &str = "WASMOP_BENCH_REPLICA";

/// What a replica reports.
#[derive(Debug, Default)]
struct Figures {
    held: Vec<u32>,
    rss_mib: u64,
    parents: i64,
    children: i64,
    received: u64,
    reconciles: u64,
    requests: u64,
    /// CPU seconds (user + system) the replica process used since it started.
    cpu: f64,
}

/// When this process is a replica child: runs the replica, answering `figures` on stdin until
/// stdin closes, then exits. Otherwise returns at once.
fn replica_if_child() {
    let Ok(spec) = std::env::var(REPLICA_ENV) else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [url, dir, identity, count] = parts[..] else { panic!("{REPLICA_ENV}: {spec}") };
    let count: u32 = count.parse().expect("count");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = rt.enter();
    let traffic = Traffic::default();
    let client = counting(rt.block_on(client_of(url)), &traffic);
    let shards = Shards::none(count);
    let telemetry = Telemetry::new();
    let (stats, metrics) = (telemetry.stats.clone(), telemetry.metrics.clone());
    let (stop, stopped) = watch::channel(false);
    let options = ControllerOptions { concurrency: 16, shards: shards.clone(), ..ControllerOptions::default() };
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
    let catalog = rt.block_on(Catalog::builder(runtime).dir(PathBuf::from(dir)).start()).expect("catalog");
    let supervisor = Supervisor::builder(client.clone(), &catalog).options(options).telemetry(telemetry).build();
    let mut until = stopped.clone();
    rt.spawn(async move {
        supervisor
            .run(async move {
                let _ = until.wait_for(|s| *s).await;
            })
            .await;
        drop(catalog);
    });
    let settings = ShardSettings { shards: count, lease: lease(identity) };
    rt.spawn(shard::run(client, settings, shards.clone(), metrics.clone(), stopped));
    println!("started");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "figures" {
            let cached = |cache: &str| metrics.cached_objects("appoperator", cache).get();
            println!(
                "{} {} {} {} {} {} {} {}",
                shards.owned().iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                server::memory_kib(None, "VmRSS:") / 1024,
                cached("parents"),
                cached("Deployment") + cached("Service"),
                traffic.received.load(Ordering::Relaxed),
                Stats::get(&stats.reconciles),
                traffic.requests.load(Ordering::Relaxed),
                server::cpu_seconds(None),
            );
        }
        println!("end");
    }
    let _ = stop.send(true);
    std::process::exit(0);
}

/// A client of `server`: a URL (the in-memory server) or `kubeconfig:PATH`.
async fn client_of(server: &str) -> Client {
    let Some(path) = server.strip_prefix("kubeconfig:") else {
        return Client::try_from(kube::Config::new(server.parse().expect("url"))).expect("client");
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

/// Where the bench runs: the in-memory server, or a real control plane of its own.
enum Plane {
    Memory(ApiServer),
    Real(Box<wasmop_controlplane::ControlPlane>),
}

impl Plane {
    async fn start(real: bool, shard_selector: bool) -> Plane {
        if real {
            let gates = wasmop_controlplane::ControlPlane::builder().nodes(false);
            let gates = if shard_selector { gates.feature_gates("ShardedListAndWatch=true") } else { gates };
            return Plane::Real(Box::new(gates.start().await.expect("the real control plane (make controlplane)")));
        }
        let config = Config {
            simulate_deployments: true,
            simulate_delay: Duration::from_millis(100),
            shard_selector,
            ..Config::default()
        };
        Plane::Memory(ApiServer::start(config).await.expect("api server"))
    }

    /// What a replica is given to reach the server (see [`REPLICA_ENV`]).
    fn server(&self) -> String {
        match self {
            Plane::Memory(server) => server.url(),
            Plane::Real(plane) => format!("kubeconfig:{}", plane.dir().join("admin.kubeconfig").display()),
        }
    }

    async fn client(&self) -> Client {
        client_of(&self.server()).await
    }

    async fn shutdown(self) {
        if let Plane::Memory(server) = self {
            server.shutdown().await;
        }
    }
}

/// The Lease settings of replica `identity`.
fn lease(identity: &str) -> LeaderSettings {
    LeaderSettings {
        lease_name: "wasmop-shard".into(),
        namespace: "default".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(LEASE.0),
        renew_deadline: Duration::from_secs(LEASE.1),
        retry_period: Duration::from_secs(LEASE.2),
    }
}

/// What a replica's client sent and received.
#[derive(Clone, Default)]
struct Traffic {
    /// Requests sent (every verb; a watch counts once, however long it runs).
    requests: Arc<AtomicU64>,
    /// Body bytes of the answers to GETs (lists and watches).
    received: Arc<AtomicU64>,
}

/// `client`, counting its requests and the body bytes of the answers to its GETs in `traffic`.
fn counting(client: Client, traffic: &Traffic) -> Client {
    use http_body_util::BodyExt;
    let (inner, traffic) = (client.clone(), traffic.clone());
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (inner, received) = (inner.clone(), traffic.received.clone());
        traffic.requests.fetch_add(1, Ordering::Relaxed);
        let get = request.method() == http::Method::GET;
        async move {
            let response = inner.send(request).await?;
            Ok::<_, kube::Error>(response.map(move |body| {
                body.map_frame(move |frame| {
                    if let Some(data) = frame.data_ref().filter(|_| get) {
                        received.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    frame
                })
            }))
        }
    });
    Client::new(service, client.default_namespace())
}

/// A replica child.
struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Replica {
    fn start(url: &str, dir: &Path, identity: &str, count: u32) -> Replica {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(REPLICA_ENV, format!("{url} {} {identity} {count}", dir.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a replica");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut started = String::new();
        stdout.read_line(&mut started).expect("replica started");
        Replica { child, stdin, stdout }
    }

    fn figures(&mut self) -> Figures {
        writeln!(self.stdin, "figures").expect("replica stdin");
        self.stdin.flush().expect("replica stdin");
        let (mut line, mut end) = (String::new(), String::new());
        self.stdout.read_line(&mut line).expect("figures");
        self.stdout.read_line(&mut end).expect("end");
        let fields: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or_default();
        Figures {
            held: fields.first().map(|h| h.split(',').filter_map(|s| s.parse().ok()).collect()).unwrap_or_default(),
            rss_mib: number(1),
            parents: number(2) as i64,
            children: number(3) as i64,
            received: number(4),
            reconciles: number(5),
            requests: number(6),
            cpu: fields.get(7).and_then(|f| f.parse().ok()).unwrap_or_default(),
        }
    }

    /// A crash: SIGKILL, nothing released.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates parents `range` (with `pods` replicas each) and waits until `total` parents are Ready.
async fn create_until_ready(
    api: &Api<DynamicObject>,
    range: std::ops::Range<usize>,
    total: usize,
    pods: u32,
    what: &str,
) {
    let (created, started) = tokio::sync::oneshot::channel();
    let ready = tokio::spawn({
        let (api, what) = (api.clone(), what.to_string());
        async move { apps::wait_ready(&what, api, total, started).await }
    });
    apps::create_with(api, "default", range, pods).await;
    let _ = created.send(());
    ready.await.expect("ready");
}

async fn until(what: &str, replicas: &mut [Replica], mut check: impl FnMut(&[Figures]) -> bool) {
    let started = Instant::now();
    loop {
        let figures: Vec<Figures> = replicas.iter_mut().map(Replica::figures).collect();
        if check(&figures) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{what}: not within 120 s: {figures:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(plugin: &Path, replicas: u32, n: usize, real: bool, shard_selector: bool) {
    let server = Plane::start(real, shard_selector).await;
    let client = server.client().await;
    let pods = if real { 0 } else { 2 };
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let loaded = runtime.load_operator(plugin, Limits::default()).expect("load appoperator");
    crd::install(&client, &loaded, None).await.expect("crd");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let established = kube::runtime::wait::conditions::is_crd_established();
    kube::runtime::wait::await_condition(crds, "appoperators.tools.wasmop.dev", established).await.expect("crd");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator"),
        "appoperators",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let dir = tempfile::tempdir().expect("plugins directory");
    std::fs::copy(plugin, dir.path().join("appoperator.wasm")).expect("copy the plugin");
    let mut started: Vec<Replica> =
        (0..replicas).map(|i| Replica::start(&server.server(), dir.path(), &format!("r{i}"), replicas)).collect();
    // Balanced before the clock starts: one shard each.
    until("one shard each", &mut started, |f| f.iter().all(|f| f.held.len() == 1)).await;

    let (clock, bench_cpu) = (Instant::now(), server::cpu_seconds(None));
    create_until_ready(&api, 0..n, n, pods, "sharded run").await;
    let (wall, bench_cpu) = (clock.elapsed(), server::cpu_seconds(None) - bench_cpu);
    let path = if shard_selector { "shardSelector" } else { "labels" };
    let plane = if real { "real control plane" } else { "in-memory server" };
    println!("{replicas} replica(s), {n:>6} parents, {plane} ({path}): all Ready in {:>6.2}s", wall.as_secs_f64());
    let figures: Vec<Figures> = started.iter_mut().map(Replica::figures).collect();
    let total: u64 = figures.iter().map(|f| f.reconciles).sum();
    let requests: u64 = figures.iter().map(|f| f.requests).sum();
    println!("  {:.2} requests per parent, all replicas together", requests as f64 / n as f64);
    // On a machine of fewer cores than processes, the wall time is bound by the CPU they share.
    let cpu: f64 = figures.iter().map(|f| f.cpu).sum();
    let server_cpu = if real { String::new() } else { " (the in-memory server and the creates)".into() };
    println!(
        "  CPU seconds: the replicas together {cpu:.1} (since they started), this process {bench_cpu:.1}{server_cpu} during the run, on {} cores",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    for (i, f) in figures.iter().enumerate() {
        println!(
            "  r{i} shards {:?}: RSS {} MiB, CPU {:.1} s, cached {} parents + {} children, received {:.1} MiB, {} reconciles ({:.0}%)",
            f.held,
            f.rss_mib,
            f.cpu,
            f.parents,
            f.children,
            f.received as f64 / f64::from(1 << 20),
            f.reconciles,
            100.0 * f.reconciles as f64 / total.max(1) as f64
        );
    }

    if replicas > 1 {
        let mut dead = started.pop().expect("a replica");
        let orphaned = dead.figures().held;
        dead.kill();
        let clock = Instant::now();
        until("the dead replica's shard held again", &mut started, |f| {
            orphaned.iter().all(|s| f.iter().any(|f| f.held.contains(s)))
        })
        .await;
        let taken = clock.elapsed();
        let more = n / 10;
        create_until_ready(&api, n..n + more, n + more, pods, "after failover").await;
        println!(
            "  failover: shard {orphaned:?} held again after {:.1}s (lease {}s, retry {}s); {more} new parents all Ready {:.1}s after the kill",
            taken.as_secs_f64(),
            LEASE.0,
            LEASE.2,
            clock.elapsed().as_secs_f64()
        );
    }
    drop(started);
    server.shutdown().await;
}

fn main() {
    replica_if_child();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    assert!(path.exists(), "{} is missing: run `make plugins` (make bench does)", path.display());
    let n: usize = std::env::var("WASMOP_BENCH_PARENTS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1000);
    let shard_selector = std::env::var("WASMOP_BENCH_SHARD_SELECTOR").map_or(true, |v| v != "off");
    let real = std::env::var("WASMOP_BENCH_PLANE").is_ok_and(|v| v == "real");
    let default = if real { "1,3" } else { "1,2,4" };
    let counts = std::env::var("WASMOP_BENCH_REPLICAS").unwrap_or_else(|_| default.into());
    let counts: Vec<u32> = counts.split(',').filter_map(|c| c.trim().parse().ok()).collect();
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    // Under `cargo test --benches` run a token size so the bench is exercised, not measured.
    let (n, runs) = if std::env::args().any(|a| a == "--bench") { (n, counts) } else { (20, vec![2]) };
    for replicas in runs {
        tokio.block_on(run(&path, replicas, n, real, shard_selector));
    }
}
