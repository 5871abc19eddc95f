//! In-cluster deployment on the real control plane, where RBAC and Leases are enforced:
//! `kubectl apply -k deploy/`, `wasmop run` processes with the deploy/ ServiceAccount's token and
//! exactly the generated RBAC, leader election, a clear failure per missing rule, and the
//! metrics and health endpoints.

mod common;

use common::cluster::*;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wasmop_controlplane::ControlPlane;

/// A `wasmop run` process, killed on drop, its stderr in a file.
struct Wasmop {
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Wasmop {
    /// Starts `wasmop run` with `kubeconfig` (YAML), the shipped plugins and `extra` flags.
    fn start(name: &str, kubeconfig: &str, plugins: &Path, extra: &[&str]) -> Wasmop {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kubeconfig");
        std::fs::write(&config, kubeconfig).unwrap();
        let log = dir.path().join("stderr.log");
        let metrics = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_wasmop"))
            .args(["run", "--plugins"])
            .arg(plugins)
            .arg("--kubeconfig")
            .arg(&config)
            .arg(format!("--metrics-addr={metrics}"))
            .arg("--webhook-addr=127.0.0.1:0")
            .args(extra)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", "wasmop-system")
            .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Wasmop { child, log, metrics, _dir: dir }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path).await
    }

    /// The value of a sample line starting with `series` in /metrics, if present.
    async fn sample(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    async fn leading(&self) -> bool {
        self.sample("leader_election_master_status{name=\"wasmop-leader\"}").await == Some(1.0)
    }

    /// Reconciles this process has run, over every controller and result.
    async fn reconciles(&self) -> f64 {
        let Some((_, body)) = self.get("/metrics").await else { return 0.0 };
        body.lines()
            .filter(|l| l.starts_with("controller_runtime_reconcile_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a plain syscall on our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Wasmop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: wasmop\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn shipped_plugins() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in ["appoperator", "deny-latest-tag"] {
        std::fs::copy(common::plugin(p), dir.path().join(format!("{}.wasm", p.replace('-', "_")))).unwrap();
    }
    dir
}

fn kubectl(kubeconfig: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig).unwrap();
    let out = Command::new("kubectl")
        .args(args)
        .arg("--kubeconfig")
        .arg(&config)
        .current_dir(common::workspace())
        .output()
        .expect("kubectl (make test installs it)");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs deploy/ once per test binary (server-side apply is idempotent).
async fn install(plane: &ControlPlane) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            kubectl(plane.kubeconfig_yaml(), &["apply", "--server-side", "-k", "deploy/"]);
        })
        .await;
}

/// A kubeconfig holding a token issued (TokenRequest) for ServiceAccount `wasmop-system/name`.
async fn token_kubeconfig(plane: &ControlPlane, client: &Client, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "wasmop-system");
    if accounts.get_opt(name).await.unwrap().is_none() {
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts.create(&PostParams::default(), &account).await.unwrap();
    }
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = accounts.create_token_request(name, &PostParams::default(), &request).await.unwrap();
    plane.token_kubeconfig_yaml(&token.status.unwrap().token)
}

async fn create_app(client: &Client, ns: &str, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }
    create(client, &app_resource(), ns, name, json!({"workload": {"image": "nginx:1.27", "replicas": 1}})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_installs_and_two_replicas_elect_one_leader_with_the_generated_rbac() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), "wasmop-system").get("wasmop").await.unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));

    let kubeconfig = token_kubeconfig(plane, &client, "wasmop").await;
    let plugins = shipped_plugins();
    let a = Wasmop::start("replica-a", &kubeconfig, plugins.path(), &["--leader-elect", "--namespace=team-a"]);
    eventually("replica-a leads", || a.leading()).await;
    let b = Wasmop::start("replica-b", &kubeconfig, plugins.path(), &["--leader-elect", "--namespace=team-a"]);
    eventually("replica-b ready and idle", || async {
        b.get("/readyz").await.is_some_and(|(status, _)| status == 200) && !b.leading().await
    })
    .await;

    create_app(&client, "team-a", "web").await;
    let ar = app_resource();
    eventually("reconciled by the leader", || ready_is(&client, &ar, "team-a", "web", "True", "Available")).await;
    assert!(a.reconciles().await > 0.0);
    assert_eq!(b.reconciles().await, 0.0, "the standby reconciled");

    // kill -9 of the leader: the standby takes over within the lease duration plus a margin.
    let killed = Instant::now();
    a.signal(libc::SIGKILL);
    eventually("replica-b leads", || b.leading()).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15 + 10), "takeover took {took:?}");
    create_app(&client, "team-a", "api").await;
    eventually("reconciled by the new leader", || ready_is(&client, &ar, "team-a", "api", "True", "Available")).await;

    // SIGTERM releases the Lease: a standby leads at once and the leader exits 0.
    let mut c = Wasmop::start("replica-c", &kubeconfig, plugins.path(), &["--leader-elect", "--namespace=team-a"]);
    eventually("replica-c ready", || async { c.get("/readyz").await.is_some_and(|(s, _)| s == 200) }).await;
    b.signal(libc::SIGTERM);
    let mut b = b;
    let status = tokio::task::spawn_blocking(move || b.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "replica-b exited with {status}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "wasmop-system");
    let released = leases.get("wasmop-leader").await.unwrap();
    let holder = released.spec.and_then(|s| s.holder_identity);
    assert_ne!(holder.as_deref(), Some("replica-b"), "the Lease was not released");
    eventually("replica-c leads", || c.leading()).await;
    let _ = c.child.kill();
    assert!(!a.log().contains("panicked"));
}

/// The objects of deploy/base/rbac.yaml (generated by `wasmop rbac`).
fn base_rbac() -> Vec<Value> {
    let path = common::workspace().join("deploy/base/rbac.yaml");
    wasmop::manifest::parse_objects(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

/// Binds ServiceAccount `wasmop-system/account` to ClusterRole `cluster_role` and, when given,
/// to Role `role` of wasmop-system; the bindings are named after the account.
async fn bind(client: &Client, account: &str, cluster_role: &str, role: Option<&str>) {
    let apply = PatchParams::apply("wasmop-tests").force();
    let subjects = json!([{"kind": "ServiceAccount", "name": account, "namespace": "wasmop-system"}]);
    let binding = |kind: &str, name: &str| {
        json!({
            "metadata": {"name": account, "namespace": "wasmop-system"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": subjects,
        })
    };
    let mut cluster_binding = binding("ClusterRole", cluster_role);
    cluster_binding["metadata"] = json!({"name": account});
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(cluster_binding).unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(account, &apply, &Patch::Apply(&cluster_binding))
        .await
        .unwrap();
    if let Some(role) = role {
        let binding: RoleBinding = serde_json::from_value(binding("Role", role)).unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), "wasmop-system")
            .patch(account, &apply, &Patch::Apply(&binding))
            .await
            .unwrap();
    }
}

/// The generated ClusterRole minus `drop` (a rule, by resource, or one verb of it).
fn role_without(rbac: &[Value], resource: &str, verb: Option<&str>) -> Value {
    let mut role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap().clone();
    let rules = role["rules"].as_array_mut().unwrap();
    let index = rules.iter().position(|r| r["resources"][0] == resource).unwrap();
    match verb {
        Some(verb) => rules[index]["verbs"].as_array_mut().unwrap().retain(|v| v != verb),
        None => {
            rules.remove(index);
        }
    }
    role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_generated_rule_fails_clearly() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    let rbac = base_rbac();
    let plugins = shipped_plugins();
    let cases: [(&str, &str, Option<&str>, &str); 7] = [
        ("parents", "appoperators", Some("watch"), "may not watch appoperators (apiGroup tools.wasmop.dev)"),
        ("status", "appoperators/status", None, "may not patch appoperators/status"),
        ("finalizers", "appoperators/finalizers", None, "may not update appoperators/finalizers"),
        ("children", "deployments", Some("delete"), "may not delete deployments (apiGroup apps)"),
        ("events", "events", None, "may not create events (apiGroup events.k8s.io)"),
        (
            "reads",
            "configmaps",
            Some("list"),
            "may not list configmaps (apiGroup \"\" (core)) cluster-wide, needed for plugin appoperator: the ConfigMap objects it reads",
        ),
        ("leases", "", None, "leader election on Lease wasmop-system/wasmop-leader"),
    ];
    for (case, resource, verb, expected) in cases {
        let account = format!("minus-{case}");
        let mut role = if resource.is_empty() {
            rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap().clone()
        } else {
            role_without(&rbac, resource, verb)
        };
        role["metadata"] = json!({"name": account});
        let role: ClusterRole = serde_json::from_value(role).unwrap();
        let apply = PatchParams::apply("wasmop-tests").force();
        Api::<ClusterRole>::all(client.clone()).patch(&account, &apply, &Patch::Apply(&role)).await.unwrap();
        bind(&client, &account, &account, (!resource.is_empty()).then_some("wasmop-leader-election")).await;
        let kubeconfig = token_kubeconfig(plane, &client, &account).await;
        let flags: &[&str] =
            if resource.is_empty() { &["--leader-elect", "--leader-elect-id=minus-leases"] } else { &[] };
        let process = Wasmop::start(&account, &kubeconfig, plugins.path(), flags);
        let expected =
            expected.replace("wasmop-leader", if resource.is_empty() { "minus-leases" } else { "wasmop-leader" });
        eventually(&format!("{case}: the log says {expected:?}"), || async { process.log().contains(&expected) }).await;
        let log = process.log();
        if resource.is_empty() {
            assert!(log.contains("forbidden"), "{case}: {log}");
        } else {
            assert!(log.contains("plugin rejected"), "{case}: {log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_readyz_waits_for_cache_sync() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::plugin("hostile"), dir.path().join("hostile.wasm")).unwrap();
    // Its kind is not served yet: the controller cannot sync, so the process is not ready.
    let process = Wasmop::start("metrics", plane.kubeconfig_yaml(), dir.path(), &[]);
    eventually("/readyz says what it waits for", || async {
        process.get("/readyz").await.is_some_and(|(s, body)| s == 503 && body.contains("caches not synced: hostile"))
    })
    .await;
    assert_eq!(process.get("/healthz").await.map(|(s, _)| s), Some(200));
    install_hostile_crd(&client).await;
    let deadline = Instant::now() + WAIT;
    while process.get("/readyz").await.is_none_or(|(s, _)| s != 200) {
        let state = process.get("/readyz").await;
        assert!(Instant::now() < deadline, "not ready once synced: {state:?}\n{}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "metrics"}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    let ar = hostile_resource();
    create(&client, &ar, "metrics", "p", json!({"mode": "ok"})).await;
    eventually("reconciled", || ready_is(&client, &ar, "metrics", "p", "True", "Reconciled")).await;

    let (status, body) = process.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_prometheus_text(&body);
    for series in [
        "controller_runtime_reconcile_total{controller=\"hostile\",result=\"success\"}",
        "controller_runtime_reconcile_time_seconds_count{controller=\"hostile\"}",
        "controller_runtime_active_workers{controller=\"hostile\"}",
        "wasmop_plugin_call_duration_seconds_count{plugin=\"hostile\",world=\"operator\",revision=",
        "wasmop_children_applied_total{plugin=\"hostile\",kind=\"ConfigMap\"}",
        "wasmop_reloads_total{result=\"loaded\"}",
        "wasmop_plugin_info{plugin=\"hostile\",version=\"0.0.1\",revision=",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
}

/// Every line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or `name{labels} value`.
fn assert_prometheus_text(body: &str) {
    assert!(body.trim_end().ends_with("# EOF"), "no # EOF terminator");
    for line in body.lines() {
        if line.starts_with('#') {
            assert!(
                ["# HELP ", "# TYPE ", "# UNIT ", "# EOF"].iter().any(|p| line.starts_with(p)),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels: {line}");
        }
    }
}

/// The shards `replica` holds, from its `leader_election_master_status{name="wasmop-shard-i"}`.
async fn shards_held(replica: &Wasmop) -> Option<Vec<u32>> {
    let (_, body) = replica.get("/metrics").await?;
    let prefix = "leader_election_master_status{name=\"wasmop-shard-";
    let mut held: Vec<u32> = body
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|rest| rest.ends_with(" 1"))
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    held.sort_unstable();
    Some(held)
}

/// Which replica (by `POD_NAME`) reported Events about each parent in `ns`.
async fn reporters(
    client: &Client,
    ns: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut by_parent: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for event in events.list(&Default::default()).await.unwrap() {
        let (Some(regarding), Some(instance)) = (event.regarding, event.reporting_instance) else { continue };
        if regarding.kind.as_deref() == Some("Appoperator") {
            by_parent.entry(regarding.name.unwrap_or_default()).or_default().insert(instance);
        }
    }
    by_parent
}

/// Every parent in `names` is Ready, labelled with its shard (this binary's control plane runs
/// without the `ShardedListAndWatch` gate, so the replicas select their parents by label), and
/// its Events come only from the replica holding its shard (`holders[shard]`).
async fn reconciled_by_their_shard(client: &Client, ns: &str, names: &[String], holders: &[&str]) {
    let ar = app_resource();
    for name in names {
        eventually(&format!("{name} Ready"), || ready_is(client, &ar, ns, name, "True", "Available")).await;
    }
    let reporters = reporters(client, ns).await;
    for name in names {
        let parent = get(client, &ar, ns, name).await.unwrap();
        let uid = parent.metadata.uid.unwrap();
        let (shard, count) = (wasmop::shard::shard_of(&uid, holders.len() as u32), holders.len());
        let label = parent.metadata.labels.unwrap_or_default().remove(wasmop::shard::scope::SHARD_LABEL);
        assert_eq!(label, Some(format!("{shard}-of-{count}")), "{name}'s shard label");
        let holder = holders[shard as usize];
        let seen = reporters.get(name).cloned().unwrap_or_default();
        assert_eq!(seen, [holder.to_string()].into(), "{name} (shard of {holder}) was reported by {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_replicas_split_the_parents_and_take_over_a_dead_replicas_shard() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    // The overlay: three replicas with --shards=3, and `list` on Leases for the members. Only
    // its Role is applied here (a superset of the base's): the other tests keep the base's
    // two-replica Deployment.
    let rendered = kubectl(plane.kubeconfig_yaml(), &["kustomize", "deploy/overlays/sharded"]);
    let objects = wasmop::manifest::parse_objects(&rendered, Path::new("deploy/overlays/sharded")).unwrap();
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args.as_array().unwrap().contains(&json!("--shards=3")), "{args}");
    assert!(!args.as_array().unwrap().contains(&json!("--leader-elect")), "{args}");
    let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(role.clone()).unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), "wasmop-system")
        .patch("wasmop-leader-election", &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&role))
        .await
        .unwrap();

    let kubeconfig = token_kubeconfig(plane, &client, "wasmop").await;
    let plugins = shipped_plugins();
    // Only this test's namespace: the other tests' operators do not see it either.
    let flags = [
        "--namespace=team-shards",
        "--shards=3",
        "--leader-elect-lease-duration=6s",
        "--leader-elect-renew-deadline=4s",
        "--leader-elect-retry-period=1s",
    ];
    let names = ["shard-a", "shard-b", "shard-c"];
    let replicas: Vec<Wasmop> = names.iter().map(|n| Wasmop::start(n, &kubeconfig, plugins.path(), &flags)).collect();
    // Started together, they spread out: one shard each.
    let one_each = || async {
        let mut holders = [""; 3];
        for (replica, name) in replicas.iter().zip(names) {
            match shards_held(replica).await.as_deref() {
                Some([shard]) if holders[*shard as usize].is_empty() => holders[*shard as usize] = name,
                _ => return None,
            }
        }
        Some(holders)
    };
    eventually("each replica holds one shard", || async { one_each().await.is_some() }).await;
    let mut holders = one_each().await.unwrap();
    let ns = "team-shards";
    let first: Vec<String> = (0..24).map(|i| format!("app-{i}")).collect();
    for name in &first {
        create_app(&client, ns, name).await;
    }
    reconciled_by_their_shard(&client, ns, &first, &holders).await;
    for replica in &replicas {
        assert!(replica.reconciles().await > 0.0, "a replica reconciled nothing");
    }

    // kill -9 of the holder of shard 1: its Leases expire and one of the others takes it over.
    let dead = names.iter().position(|n| *n == holders[1]).unwrap();
    replicas[dead].signal(libc::SIGKILL);
    let taker = || async {
        for (i, replica) in replicas.iter().enumerate() {
            if i != dead && shards_held(replica).await.is_some_and(|held| held.contains(&1)) {
                return Some(names[i]);
            }
        }
        None
    };
    eventually("shard 1 taken over", || async { taker().await.is_some() }).await;
    holders[1] = taker().await.unwrap();
    let second: Vec<String> = (24..36).map(|i| format!("app-{i}")).collect();
    for name in &second {
        create_app(&client, ns, name).await;
    }
    reconciled_by_their_shard(&client, ns, &second, &holders).await;

    // SIGTERM of the other survivor gives its shards back at once; the last one holds all
    // three, and the one stopped exits clean.
    let mut alive: Vec<(usize, Wasmop)> = replicas.into_iter().enumerate().filter(|(i, _)| *i != dead).collect();
    let (_, mut stopped) = alive.pop().unwrap();
    let (last, last_replica) = alive.pop().unwrap();
    stopped.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || stopped.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "the stopped replica exited with {status}");
    eventually("the last replica holds every shard", || async {
        shards_held(&last_replica).await == Some(vec![0, 1, 2])
    })
    .await;
    let third: Vec<String> = (36..42).map(|i| format!("app-{i}")).collect();
    for name in &third {
        create_app(&client, ns, name).await;
    }
    reconciled_by_their_shard(&client, ns, &third, &[names[last]; 3]).await;
    assert!(!last_replica.log().contains("panicked"), "{}", last_replica.log());
}

#[test]
fn every_overlay_renders_on_the_base() {
    // kustomize refuses an overlay inside its base's directory, which deploy/ once was.
    let overlays = common::workspace().join("deploy/overlays");
    let mut rendered = 0;
    for entry in std::fs::read_dir(&overlays).unwrap() {
        let dir = entry.unwrap().path();
        let out = Command::new("kubectl").arg("kustomize").arg(&dir).output().expect("kubectl (make test installs it)");
        assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        let objects = wasmop::manifest::parse_objects(&String::from_utf8_lossy(&out.stdout), &dir).unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").expect("a Deployment");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        if dir.ends_with("configmap-plugins") {
            assert!(args.contains("--plugins=/plugins-configmap"), "{args}");
        }
        if dir.ends_with("registry-plugins") {
            assert!(
                args.contains("--plugins=/plugins-default") && args.contains("--plugin-sources=dir,cluster"),
                "{args}"
            );
        }
        rendered += 1;
    }
    assert!(rendered >= 2, "no overlays under {}", overlays.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharding_without_list_on_leases_says_what_to_grant() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    // The base's rules exactly (its Role has no `list` on Leases), bound to a fresh account.
    let rbac = base_rbac();
    let account = "minus-lease-list";
    let apply = PatchParams::apply("wasmop-tests").force();
    let mut role = rbac.iter().find(|d| d["kind"] == "Role").unwrap().clone();
    role["metadata"] = json!({"name": account, "namespace": "wasmop-system"});
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(role).unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), "wasmop-system")
        .patch(account, &apply, &Patch::Apply(&role))
        .await
        .unwrap();
    let cluster_role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap()["metadata"]["name"].clone();
    bind(&client, account, cluster_role.as_str().unwrap(), Some(account)).await;

    let kubeconfig = token_kubeconfig(plane, &client, account).await;
    let plugins = shipped_plugins();
    let process =
        Wasmop::start(account, &kubeconfig, plugins.path(), &["--shards=2", "--shard-lease-prefix=minus-list"]);
    let expected = "sharding needs `list` and `watch` on leases (coordination.k8s.io) in namespace wasmop-system";
    eventually("the log names the missing rule", || async { process.log().contains(expected) }).await;
    assert!(process.log().contains("deploy/overlays/sharded grants them"), "{}", process.log());
}

/// Whoever sets the conversion webhook's address sets it whole, clearing the other member of
/// the `url` / `service` union (the API server refuses both with a 422), and deploy/ sets
/// neither: `kubectl apply --server-side -k deploy/` works over a CRD a wasmop outside the
/// cluster pointed at itself (`wasmop dev --no-operator`, `wasmop run --install-crds`), and a
/// wasmop outside the cluster can point a CRD addressed by Service at itself, by installing it
/// or by injecting its address. Each is followed by a read of the other version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversion_address_is_switched_whole_by_whoever_sets_it() {
    use wasmop::webhook::{Endpoint, Webhook};
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    let dir = shipped_plugins();
    let catalog = wasmop::catalog::Catalog::builder(std::sync::Arc::new(common::runtime()))
        .dir(dir.path().to_path_buf())
        .start()
        .await
        .unwrap();
    let plugin = catalog.snapshot().operator("tools.wasmop.dev", "Appoperator").unwrap().plugin.clone();
    let outside = Webhook::builder(([127, 0, 0, 1], 0).into()).catalog(&catalog).start(client.clone()).await.unwrap();
    // What an in-cluster replica sets: the Service (unreachable from here, never called).
    let service = Endpoint::Service { namespace: "wasmop-system".into(), name: "wasmop-webhook".into(), port: 443 };
    let inside = Webhook::builder(([127, 0, 0, 1], 0).into())
        .endpoint(service)
        .catalog(&catalog)
        .start(client.clone())
        .await
        .unwrap();
    let ns = "conversion-address";
    create_app(&client, ns, "web").await;
    let old = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("tools.wasmop.dev", "v1beta1", "Appoperator"),
        "appoperators",
    );
    let read_old = || async {
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &old).get("web").await.is_ok()
    };
    let member = || async {
        let crd =
            Api::<CustomResourceDefinition>::all(client.clone()).get("appoperators.tools.wasmop.dev").await.unwrap();
        let config = crd.spec.conversion.and_then(|c| c.webhook).and_then(|w| w.client_config).unwrap();
        (config.url.is_some(), config.service.is_some())
    };

    // A wasmop outside installs the CRD pointing at itself; deploy/ applied over it.
    wasmop::crd::install(&client, &plugin, Some(&outside.conversion())).await.unwrap();
    assert_eq!(member().await, (true, false));
    // (Forced: other tests of this binary apply deploy/'s Roles with rules of their own. Forcing
    // takes no field from wasmop here, and would not have avoided the 422 of a Service stanza.)
    kubectl(plane.kubeconfig_yaml(), &["apply", "--server-side", "--force-conflicts", "-k", "deploy/"]);
    eventually("v1beta1 read through the url", read_old).await;

    // An in-cluster replica points it at the Service; a wasmop outside installs it again.
    wasmop::crd::inject_conversion(&client, &plugin, &inside.conversion()).await.unwrap();
    assert_eq!(member().await, (false, true));
    wasmop::crd::install(&client, &plugin, Some(&outside.conversion())).await.unwrap();
    assert_eq!(member().await, (true, false));
    eventually("v1beta1 read after the install", read_old).await;

    // The same, by injection (`wasmop run` without --install-crds).
    wasmop::crd::inject_conversion(&client, &plugin, &inside.conversion()).await.unwrap();
    wasmop::crd::inject_conversion(&client, &plugin, &outside.conversion()).await.unwrap();
    assert_eq!(member().await, (true, false));
    eventually("v1beta1 read after the injection", read_old).await;
}

/// The base's `--plugin-sources=dir,cluster` under exactly the generated RBAC: the leader reads
/// a pull Secret in its own namespace, pulls a policy delivered as a WasmPlugin from a real
/// registry by tag, records the digest and writes the WasmPlugin's status; the standby pulls the
/// same digest into its own cache; and the policy then reviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_rbac_follows_a_wasmplugin_with_a_pull_secret() {
    use base64::Engine as _;
    use common::registry::Registry;
    use k8s_openapi::api::core::v1::Secret;
    use wasmop::wasmplugin::WasmPlugin;
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    install(plane).await;
    let registry = Registry::start();
    let policy = common::plugin("deny-latest-tag");
    let reference = format!("{}:v1", registry.repo("policies/deny-latest-tag"));
    common::stdout(&common::wasmop(&[
        "plugin",
        "push",
        policy.to_str().unwrap(),
        &reference,
        "--insecure-registry",
        &registry.host,
    ]));
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:token");
    let config = json!({"auths": {registry.host.clone(): {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "regcred-deploy-test"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)},
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "wasmop-system");
    secrets
        .patch("regcred-deploy-test", &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&secret))
        .await
        .unwrap();

    let kubeconfig = token_kubeconfig(plane, &client, "wasmop").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::plugin("appoperator"), dir.path().join("appoperator.wasm")).unwrap();
    let cache = dir.path().join("artifacts");
    let flags = [
        "--leader-elect",
        "--leader-elect-id=wasmplugin-test",
        "--namespace=team-wp",
        "--plugin-sources=dir,cluster",
        "--insecure-registry",
        &registry.host,
        "--plugin-cache-dir",
        cache.to_str().unwrap(),
    ];
    let process = Wasmop::start("replica-wp", &kubeconfig, dir.path(), &flags);
    eventually("replica-wp leads", || async {
        process.sample("leader_election_master_status{name=\"wasmplugin-test\"}").await == Some(1.0)
    })
    .await;
    // A standby pulls too (the digest the leader resolved), into its own cache.
    let standby_cache = dir.path().join("standby-artifacts");
    let mut standby_flags = flags.to_vec();
    *standby_flags.last_mut().unwrap() = standby_cache.to_str().unwrap();
    let standby = Wasmop::start("replica-wp-standby", &kubeconfig, dir.path(), &standby_flags);

    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "deny-latest-deploy-test"},
        "spec": {"source": {"oci": {"ref": reference, "pullSecretRef": {"name": "regcred-deploy-test"}}}},
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &object).await.unwrap();
    eventually("the WasmPlugin's status says it reviews", || async {
        let Some(status) = plugins.get_opt("deny-latest-deploy-test").await.unwrap().and_then(|p| p.status) else {
            return false;
        };
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True" && c.message.contains("policy"))
    })
    .await;
    let resolved = plugins.get("deny-latest-deploy-test").await.unwrap().status.unwrap().resolved.unwrap();
    let cached = standby_cache.join(format!("{}.wasm", resolved.digest.trim_start_matches("sha256:")));
    eventually("the standby pulled the resolved digest", || async { cached.exists() }).await;
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(&policy).unwrap());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt("team-wp").await.unwrap().is_none() {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-wp"}})).unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }
    let app = app_resource();
    create(&client, &app, "team-wp", "latest", json!({"workload": {"image": "nginx:latest"}})).await;
    eventually("the delivered policy denies", || ready_is(&client, &app, "team-wp", "latest", "False", "PolicyDenied"))
        .await;
    plugins.delete("deny-latest-deploy-test", &Default::default()).await.unwrap();
    assert!(!process.log().contains("forbidden"), "{}", process.log());
    assert!(!standby.log().contains("forbidden"), "{}", standby.log());
}
