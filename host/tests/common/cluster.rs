//! Helpers for tests against the in-memory API server.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};
use wasmop_apiserver::{ApiServer, Config};

/// How long `eventually` waits.
pub const WAIT: Duration = Duration::from_secs(30);

pub async fn server() -> ApiServer {
    let config = Config { simulate_deployments: true, simulate_delay: Duration::from_millis(200), ..Config::default() };
    ApiServer::start(config).await.expect("api server")
}

pub fn client(server: &ApiServer) -> Client {
    Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
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
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1beta1", "Appoperator"),
        "appoperators",
    )
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
    api.create(&PostParams::default(), &crd).await.unwrap();
    await_condition(api, &name, conditions::is_crd_established()).await.unwrap();
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
