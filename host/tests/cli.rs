//! How the `wasmop` process behaves around its work: a one-shot command whose reader goes away,
//! and `wasmop run` started in a cluster without the webhook's Service.

mod common;

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
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
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
