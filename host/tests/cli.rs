//! How the `wasmop` process behaves around its work: a one-shot command whose reader goes away,
//! `wasmop run` started in a cluster without the webhook's Service, and `wasmop run` over several
//! namespaces reading each plugin file once.

mod common;

use common::cluster::*;
use common::opens::{Opens, written_a_minute_ago};
use common::operator::plugins_dir;
use serde_json::json;

on_both_backends!(wasmop_run_reads_each_plugin_once_for_every_namespace);

/// `wasmop run --namespace A --namespace B`: the fail-fast check, the conversion webhook and the
/// controllers of both namespaces share one load of each plugin file, seen from outside.
async fn wasmop_run_reads_each_plugin_once_for_every_namespace(cluster: Cluster) {
    let client = cluster.client.clone();
    install_hostile_crd(&client).await;
    let second = format!("{}-b", cluster.ns);
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": second}})).unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&Default::default(), &namespace)
        .await
        .unwrap();
    let dir = plugins_dir(&[("hostile", None), ("appoperator", None)]);
    written_a_minute_ago(dir.path(), &["hostile.wasm", "appoperator.wasm"]);
    let opens = Opens::watch(dir.path());
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let mut child = common::wasmop_command()
        .args(["run", "--no-metrics", "--webhook-addr=127.0.0.1:0", "--plugins"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", &cluster.ns, "--namespace", &second])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ar = hostile_resource();
    for ns in [cluster.ns.as_str(), second.as_str()] {
        create(&client, &ar, ns, "x", json!({"mode": "ok"})).await;
    }
    for ns in [cluster.ns.as_str(), second.as_str()] {
        eventually("reconciled in both namespaces", || ready_is(&client, &ar, ns, "x", "True", "Reconciled")).await;
    }
    opens.fence("fence").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((opens.count("hostile.wasm"), opens.count("appoperator.wasm")), (1, 1), "a plugin read more than once");
    cluster.shutdown().await;
}

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_one_shot_command_ends_quietly_when_its_reader_goes_away() {
    // `wasmop eval … | head -0`: the reader is gone before anything is written.
    let plugin = common::plugin("appoperator").display().to_string();
    let example = common::example("appoperator.yaml").display().to_string();
    let mut child = common::wasmop_command()
        .args(["eval", "--plugin", &plugin, &example])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn run_in_a_cluster_without_the_webhook_service_warns_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::plugin("appoperator"), dir.path().join("appoperator.wasm")).unwrap();
    // A kubeconfig whose server is never reached before the warning.
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let log = dir.path().join("stderr.log");
    let mut child = common::wasmop_command()
        .args(["run", "--no-metrics", "--webhook-addr=127.0.0.1:0", "--plugins"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || {
        let mut text = String::new();
        let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
        text
    };
    let started = Instant::now();
    while !read().contains("without --webhook-service") && started.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(
        text.contains("without --webhook-service") && text.contains("pass --webhook-service NAMESPACE/NAME"),
        "{text}"
    );
}

#[test]
fn run_without_a_usable_operator_names_each_refused_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").unwrap();
    std::fs::copy(common::plugin("deny-latest-tag"), dir.path().join("policy.wasm")).unwrap();
    // Nothing runs without an operator: the server is never reached.
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let out = common::wasmop_command()
        .args(["run", "--no-metrics", "--no-webhook", "--plugins"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no operator plugin could be loaded from"), "{stderr}");
    assert!(stderr.contains("broken.wasm: ") && stderr.contains("is not a valid WebAssembly component"), "{stderr}");
}

/// A kubeconfig in `dir` whose server nothing listens on.
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    kubeconfig
}

/// Bad trace settings stop `wasmop run` at once with an error naming the flag and what to give,
/// before anything connects.
#[test]
fn run_refuses_bad_trace_settings_naming_the_flag() {
    for (args, says) in [
        (["--otlp-endpoint", "http://jaeger:4318", "--trace-sample-ratio", "1.5"], "--trace-sample-ratio 1.5"),
        (["--otlp-endpoint", "jaeger:4318", "--trace-sample-ratio", "0.1"], "--otlp-endpoint \"jaeger:4318\""),
    ] {
        let out =
            common::wasmop_command().arg("run").args(args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says) && stderr.contains("give"), "{args:?}: {stderr}");
    }
}
