//! Fault injection, request statistics, the Deployment simulator and the binary.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use wasmop_apiserver::Config;

use crate::common::{client, server, server_with, status};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "b"}})).unwrap()
}

#[tokio::test]
async fn injected_failures_hit_only_matching_requests() {
    let server = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    server.faults().fail_next("create", "configmaps", 2, 500);
    for _ in 0..2 {
        let err = status(api.create(&PostParams::default(), &cm("x")).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    }
    // Reads are unaffected, and the third create succeeds.
    api.list(&ListParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("x")).await.unwrap();

    server.faults().fail_next("*", "configmaps", 1, 409);
    let err = status(api.get("x").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    api.get("x").await.unwrap();

    server.faults().set_latency(Duration::from_millis(150));
    let t = Instant::now();
    api.get("x").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    server.faults().clear();
    server.shutdown().await;
}

#[tokio::test]
async fn stats_count_requests_by_verb_and_resource() {
    let server = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let before = server.stats();
    api.create(&PostParams::default(), &cm("s")).await.unwrap();
    api.get("s").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    let d = server.stats().since(&before);
    assert_eq!(d.count("create", "configmaps"), 1);
    assert_eq!(d.count("get", "configmaps"), 1);
    assert_eq!(d.count("list", "configmaps"), 1);
    assert_eq!(d.writes("*"), 1);
    assert_eq!(d.total(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn deployment_simulator_reports_ready_replicas() {
    let server = server_with(Config {
        simulate_deployments: true,
        simulate_delay: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(client(&server), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "sim"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let ready = |d: Option<&Deployment>| {
        d.and_then(|d| Some((d.metadata.generation?, d.status.as_ref()?))).is_some_and(|(g, s)| {
            s.observed_generation == Some(g) && s.ready_replicas == s.replicas && s.replicas.is_some()
        })
    };
    let got = tokio::time::timeout(Duration::from_secs(5), await_condition(api.clone(), "sim", ready))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.status.unwrap().available_replicas, Some(3));
    // Scaling: a new generation is observed again.
    api.patch("sim", &Default::default(), &kube::api::Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), await_condition(api.clone(), "sim", ready))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.status.as_ref().unwrap().ready_replicas, Some(5));
    assert_eq!(got.status.unwrap().observed_generation, Some(2));

    // StatefulSets too.
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client(&server), "default");
    let s: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"a": "db"}},
                 "template": {"metadata": {"labels": {"a": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    sts.create(&PostParams::default(), &s).await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(sts, "db", |s: Option<&k8s_openapi::api::apps::v1::StatefulSet>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.ready_replicas == Some(2))
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(got.status.unwrap().observed_generation, Some(1));
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let server = server().await;
    let url = server.url();
    server.shutdown().await;
    let c = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    assert!(api.list(&ListParams::default()).await.is_err());
}

#[tokio::test]
async fn binary_serves_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wasmop-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim().to_string()
    })
    .await
    .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains(&url));
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    api.create(&PostParams::default(), &cm("from-bin")).await.unwrap();
    // SIGTERM stops it cleanly.
    let pid = child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success());
}
