//! The control plane does what the operator's tests rely on: real RBAC and ServiceAccount
//! tokens, the real garbage collector, Deployments that become Available on kwok's fake node,
//! and a teardown that leaves no process or directory behind.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop_controlplane::ControlPlane;

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

async fn token_client(plane: &ControlPlane, admin: &Client, ns: &str, account: &str) -> Client {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    accounts.create(&PostParams::default(), &object(json!({"metadata": {"name": account}}))).await.unwrap();
    let request: TokenRequest = object(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}));
    let issued = accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap();
    let token = issued.status.unwrap().token;
    let kubeconfig = Kubeconfig::from_yaml(&plane.token_kubeconfig_yaml(&token)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_control_plane_with_rbac_gc_and_available_deployments() {
    let plane = ControlPlane::builder().start().await.unwrap_or_else(|e| panic!("{e}"));
    let admin = plane.client().await.unwrap();
    let dir = plane.dir().to_path_buf();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces.create(&PostParams::default(), &object(json!({"metadata": {"name": "cp"}}))).await.unwrap();

    // RBAC is enforced: a ServiceAccount's issued token authenticates but may do nothing yet.
    let sa = token_client(&plane, &admin, "cp", "nobody").await;
    let denied = Api::<ConfigMap>::namespaced(sa, "cp").list(&Default::default()).await.unwrap_err();
    assert!(matches!(&denied, kube::Error::Api(s) if s.code == 403), "{denied:?}");

    // A Deployment becomes Available: scheduler, kwok's fake node, ReplicaSet and Deployment
    // controllers.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "cp");
    let deployment: Deployment = object(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
    }));
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    eventually("Deployment Available", || async {
        let d = deployments.get("web").await.unwrap();
        d.status.and_then(|s| s.available_replicas) == Some(2)
    })
    .await;

    // The garbage collector deletes a dependent whose owner is gone.
    let owner = deployments.get("web").await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "cp");
    let dependent: ConfigMap = object(json!({"metadata": {"name": "dependent", "ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner.uid().unwrap(),
    }]}}));
    config_maps.create(&PostParams::default(), &dependent).await.unwrap();
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("dependent collected", || async { config_maps.get_opt("dependent").await.unwrap().is_none() }).await;

    // Dropping stops every process and removes the directory.
    drop(plane);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let refused = admin.apiserver_version().await;
    assert!(refused.is_err(), "the API server still answers after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = ControlPlane::builder().bin_dir(empty.path()).start().await.err().expect("no binaries");
    let message = err.to_string();
    assert!(message.contains("etcd not found") && message.contains("make controlplane"), "{message}");
}
