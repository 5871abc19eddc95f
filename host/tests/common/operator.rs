//! The operator as tests run it: the production path (a [`Supervisor`] over a plugins
//! directory, with `NAME.toml` sidecars), limited to the test's namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::ReloadStats;
use wasmop::telemetry::Stats;
use wasmop::telemetry::Telemetry;
use wasmop::webhook::Webhook;

use super::cluster::Cluster;

/// A running operator that stops when dropped.
pub struct Operator {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// Reconcile counters.
    pub stats: Arc<Stats>,
    /// Reload counters.
    pub reloads: Arc<ReloadStats>,
    /// Readiness, as `/readyz` reports it.
    pub health: Arc<wasmop::telemetry::Health>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub telemetry_addr: SocketAddr,
    serving: JoinHandle<()>,
}

impl Operator {
    /// Supervises `dir` with `options`, limited to the cluster's namespace, installing CRDs.
    pub fn start(cluster: &Cluster, dir: &Path, options: ControllerOptions) -> Operator {
        Operator::start_with(&cluster.client, dir, ControllerOptions { namespace: Some(cluster.ns.clone()), ..options })
    }

    /// Supervises `dir` with exactly `options`.
    pub fn start_with(client: &Client, dir: &Path, options: ControllerOptions) -> Operator {
        let (stop, mut rx) = watch::channel(false);
        let telemetry = Telemetry::new();
        let (stats, reloads, health) = (telemetry.stats.clone(), telemetry.reloads.clone(), telemetry.health.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let telemetry_addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let serving =
            wasmop::telemetry::serve_on(tokio::net::TcpListener::from_std(listener).unwrap(), telemetry.clone());
        let (client, runtime, dir) = (client.clone(), Arc::new(super::runtime()), dir.to_path_buf());
        let task = tokio::spawn(async move {
            // One catalog, read by the conversion webhook on loopback (as `wasmop dev` serves
            // it) and the supervisor.
            let catalog = Catalog::builder(runtime)
                .dir(dir)
                .events(client.clone(), options.namespace.clone())
                .telemetry(telemetry.clone())
                .start()
                .await
                .expect("plugin catalog");
            let webhook = Webhook::builder(([127, 0, 0, 1], 0).into())
                .catalog(&catalog)
                .start(client.clone())
                .await
                .expect("conversion webhook");
            let supervisor = Supervisor::builder(client, &catalog)
                .options(options)
                .install_crds(true)
                .conversion(webhook.conversion())
                .telemetry(telemetry)
                .build();
            supervisor
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            drop(webhook);
        });
        Operator { stop, task: Some(task), stats, reloads, health, telemetry_addr, serving }
    }

    /// Whether `/healthz` answers 200 within the 5 s a liveness probe would allow: the host's
    /// async runtime is not stalled.
    pub async fn healthz(&self) -> bool {
        self.get("/healthz").await.is_some_and(|(code, _)| code == 200)
    }

    /// `/readyz`: its status code and body.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        self.get("/readyz").await
    }

    /// The value of the sample line starting with `series` in `/metrics` (0 when absent).
    pub async fn sample(&self, series: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics").await else { return 0.0 };
        body.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    }

    /// A GET of the telemetry endpoint `path` answered within 5 s: status code and body.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(self.telemetry_addr).await.ok()?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: wasmop\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.ok()?;
            let code = reply.get(9..12)?.parse().ok()?;
            let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            Some((code, body))
        };
        tokio::time::timeout(Duration::from_secs(5), probe).await.ok().flatten()
    }

    /// Stops the operator and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.serving.abort();
        let _ = self.stop.send(true);
    }
}

/// A plugins directory holding the built `plugins` (crate names), each with an optional
/// `NAME.toml` sidecar.
pub fn plugins_dir(plugins: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, sidecar) in plugins {
        let file = dir.path().join(format!("{name}.wasm"));
        std::fs::copy(super::plugin(name), &file).unwrap();
        if let Some(toml) = sidecar {
            std::fs::write(file.with_extension("toml"), toml).unwrap();
        }
    }
    dir
}

/// Options for tests: resync rarely unless a test says otherwise.
pub fn quiet() -> ControllerOptions {
    ControllerOptions { resync: Duration::from_secs(600), ..ControllerOptions::default() }
}

/// Path of a built plugin's file with another name (e.g. `hostile_v2.wasm`).
pub fn plugin_variant(file_name: &str) -> PathBuf {
    super::plugin("hostile").with_file_name(file_name)
}
