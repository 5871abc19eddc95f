//! The cluster the end-to-end tests run on: the in-memory API server or the real control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, built by
//! `make controlplane`), behind one [`Cluster`] so the same test code runs on both. Each test
//! gets its own in-memory server, or its own namespace on the one real control plane shared by
//! the test binary.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};
use wasmop_apiserver::{ApiServer, Config};
use wasmop_controlplane::ControlPlane;

/// How long `eventually` waits.
pub const WAIT: Duration = Duration::from_secs(120);

/// A test's API server, client and namespace.
pub struct Cluster {
    /// An admin client.
    pub client: Client,
    /// The test's namespace: `default` on the in-memory server, a fresh one on the real one.
    pub ns: String,
    memory: Option<ApiServer>,
}

/// With `WASMOP_TEST_LOG` set (an `EnvFilter`, e.g. `wasmop=debug`), the host's logs go to
/// the test's output, to see what an operator in a failing test did.
fn logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WASMOP_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
    });
}

impl Cluster {
    /// A fresh in-memory API server with the Deployment simulator.
    pub async fn memory() -> Cluster {
        Cluster::memory_with(|config| config).await
    }

    /// [`Cluster::memory`] with its configuration edited by `edit`.
    pub async fn memory_with(edit: impl FnOnce(Config) -> Config) -> Cluster {
        logs();
        let config =
            Config { simulate_deployments: true, simulate_delay: Duration::from_millis(200), ..Config::default() };
        let config = edit(config);
        let server = ApiServer::start(config).await.expect("api server");
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        Cluster { client, ns: "default".into(), memory: Some(server) }
    }

    /// A fresh namespace on the test binary's real control plane.
    pub async fn real() -> Cluster {
        Cluster::real_with(ControlPlane::builder).await
    }

    /// [`Cluster::real`] on the binary's control plane started by `builder` (if this is the
    /// binary's first use of it: every real test of a binary must ask for the same one).
    pub async fn real_with(builder: impl FnOnce() -> wasmop_controlplane::Builder) -> Cluster {
        logs();
        let plane = match ControlPlane::shared_with(builder).await {
            Ok(plane) => plane,
            Err(e) => panic!("the real control plane did not start: {e}"),
        };
        let client = plane.client().await.expect("client");
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ns = format!("t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
        // Pods of a namespace are refused until kube-controller-manager has made its `default`
        // ServiceAccount, and the ReplicaSet controller retries them with a backoff that grows
        // to minutes: a test whose Deployment raced it would wait for no fault of the operator.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        await_condition(accounts, "default", |sa: Option<&ServiceAccount>| sa.is_some()).await.unwrap();
        Cluster { client, ns, memory: None }
    }

    /// The in-memory server, for what only it can do (faults, request counts).
    pub fn memory_server(&self) -> Option<&ApiServer> {
        self.memory.as_ref()
    }

    /// A kubeconfig for kubectl or a `wasmop` process.
    pub async fn kubeconfig_yaml(&self) -> String {
        match &self.memory {
            Some(server) => server.kubeconfig_yaml(),
            None => ControlPlane::shared().await.unwrap().kubeconfig_yaml().to_string(),
        }
    }

    /// Stops an in-memory server (the real control plane lives until the binary exits).
    pub async fn shutdown(self) {
        if let Some(server) = self.memory {
            server.shutdown().await;
        }
    }
}

/// Runs the async scenario `$name(cluster: Cluster)` as two tests, `$name::memory` and
/// `$name::real`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::common::cluster::Cluster::memory().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                super::$name(super::common::cluster::Cluster::real().await).await
            }
        }
    )+};
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn app_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("tools.wasmop.dev", "v1", "Appoperator"), "appoperators")
}

pub fn hostile_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", "v1", "Hostile"), "hostiles")
}

pub async fn install_hostile_crd(client: &Client) {
    install_hostile_crd_of(client, "Hostile").await;
}

/// Installs the CRD of the test plugin's parent kind `kind` (`Hostile` or `Hostile2`).
pub async fn install_hostile_crd_of(client: &Client, kind: &str) {
    let plural = format!("{}s", kind.to_lowercase());
    let name = format!("{plural}.test.wasmop.dev");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "test.wasmop.dev", "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Server-side apply: tests sharing a real control plane install the same CRD.
    api.patch(&name, &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    await_condition(api, &name, conditions::is_crd_established()).await.unwrap();
}

/// The `PolicyCompliant` condition of Hostile `name` (what monitoring policies found):
/// (status, reason, message).
pub async fn policy_condition(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let parent = get(client, &hostile_resource(), ns, name).await?;
    let conditions = parent.data["status"]["conditions"].as_array()?.clone();
    let c = conditions.into_iter().find(|c| c["type"] == "PolicyCompliant")?;
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Installs a CRD of the wg-policy `PolicyReport` kind (`wgpolicyk8s.io/v1alpha2`, as Kyverno
/// ships it; here with an open schema) and waits until it is served.
pub async fn install_policy_report_crd(client: &Client) {
    let name = "policyreports.wgpolicyk8s.io";
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "wgpolicyk8s.io", "scope": "Namespaced",
            "names": {"plural": "policyreports", "singular": "policyreport", "kind": "PolicyReport", "shortNames": ["polr"]},
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(name, &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    await_condition(api, name, conditions::is_crd_established()).await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    );
    wait_served(client, &ar).await;
}

pub async fn create(client: &Client, ar: &ApiResource, ns: &str, name: &str, spec: Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

pub async fn get(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar).get_opt(name).await.unwrap()
}

pub fn ready(obj: &DynamicObject) -> Option<(String, String, String)> {
    wasmop::status::ready_of(&obj.data["status"])
}

pub async fn ready_is(client: &Client, ar: &ApiResource, ns: &str, name: &str, status: &str, reason: &str) -> bool {
    get(client, ar, ns, name).await.and_then(|o| ready(&o)).is_some_and(|(s, r, _)| s == status && r == reason)
}

/// Waits for `name`'s Ready condition to be `status`/`reason`; on timeout the panic shows the
/// last condition seen, so a failure says where the parent stood.
pub async fn wait_ready(client: &Client, ar: &ApiResource, ns: &str, name: &str, status: &str, reason: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = get(client, ar, ns, name).await.and_then(|o| ready(&o));
        if last.as_ref().is_some_and(|(s, r, _)| s == status && r == reason) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {ns}/{name} Ready={status} ({reason}); last Ready condition: {last:?}");
}

/// Once the Appoperator kind is served, creates `count` Appoperators `app-0`… of `replicas` pods
/// each and waits until every one is Ready (`Available`): the opening of the tests that then
/// watch a settled operator.
pub async fn ready_appoperators(client: &Client, ns: &str, count: usize, replicas: u32) {
    let ar = app_resource();
    wait_served(client, &ar).await;
    let names: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
    for name in &names {
        create(client, &ar, ns, name, json!({"workload": {"image": "nginx:1.27", "replicas": replicas}})).await;
    }
    for name in &names {
        wait_ready(client, &ar, ns, name, "True", "Available").await;
    }
}

/// Waits until the API server serves `ar`'s kind (its CRD installed by the operator).
pub async fn wait_served(client: &Client, ar: &ApiResource) {
    let gvk = wasmop::plugin::Gvk::new(&ar.group, &ar.version, &ar.kind);
    eventually("kind served", || async { wasmop::discovery::resolve(client, &gvk).await.is_ok() }).await;
}

/// The revision (hash prefix) of a built plugin, as children carry it.
pub fn revision(plugin: &str) -> String {
    wasmop::plugin::sha256_hex(&std::fs::read(super::plugin(plugin)).unwrap())[..12].to_string()
}
