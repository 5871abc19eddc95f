//! The operator as tests run it: the production path (a [`Supervisor`] over a plugins
//! directory, with `NAME.toml` sidecars), limited to the test's namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmop::controller::ControllerOptions;
use wasmop::reconcile::Stats;
use wasmop::reload::{ReloadStats, Supervisor};
use wasmop::telemetry::Telemetry;

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
        let supervisor = Supervisor::builder(client.clone(), Arc::new(super::runtime()), dir.to_path_buf())
            .options(options)
            .install_crds(true)
            .telemetry(telemetry)
            .build();
        let task = tokio::spawn(async move {
            supervisor
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .expect("supervisor");
        });
        Operator { stop, task: Some(task), stats, reloads, health }
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
