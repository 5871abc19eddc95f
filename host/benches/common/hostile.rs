//! The test plugin `hostile`'s parent kind for the benches: its CRD and N parents.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

/// The `Hostile` kind (test.wasmop.dev/v1).
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", "v1", "Hostile"), "hostiles")
}

/// The `Hostile` CRD (no schema: the plugin reads `spec.mode`).
pub fn crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "hostiles.test.wasmop.dev"},
        "spec": {"group": "test.wasmop.dev", "scope": "Namespaced",
            "names": {"plural": "hostiles", "singular": "hostile", "kind": "Hostile"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .expect("crd")
}

/// Creates `crd` and waits until it is Established.
pub async fn install(client: &Client, crd: CustomResourceDefinition) {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.expect("create crd");
    await_condition(crds, &name, conditions::is_crd_established()).await.expect("established");
}

/// Creates parents `h-0` … `h-{n-1}` in `default` (mode `ok`), 32 at a time.
#[allow(dead_code)]
pub async fn create_parents(client: &Client, n: usize) {
    create_parents_in_modes(client, n, |_| "ok").await;
}

/// Creates parents `h-0` … `h-{n-1}` in `default`, parent `i` in mode `mode(i)`, 32 at a time.
pub async fn create_parents_in_modes(client: &Client, n: usize, mode: fn(usize) -> &'static str) {
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource());
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let parents = parents.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
                    "metadata": {"name": format!("h-{i}"), "namespace": "default"}, "spec": {"mode": mode(i)},
                }))
                .expect("object");
                parents.create(&PostParams::default(), &obj).await.expect("create");
            }
        })
        .await;
}
