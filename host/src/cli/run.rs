//! `wasmop run`: the operator, against the current kubeconfig or the in-cluster config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use wasmop::controller::ControllerOptions;
use wasmop::operator;
use wasmop::plugin::Runtime;
use wasmop::reconcile::Stats;
use wasmop::reload::{ReloadStats, Supervisor};
use wasmop::telemetry::{self, Telemetry};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of plugin files (`*.wasm`): operators and policies.
    #[arg(long)]
    plugins: PathBuf,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// Only reconcile parents in this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Server-side apply each plugin's CRD and wait for it to be Established before starting.
    #[arg(long)]
    install_crds: bool,
    /// Most reconciles running at once per plugin.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Reconcile every parent again this often (seconds) even when nothing changed.
    #[arg(long, default_value_t = 600)]
    resync_seconds: u64,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Do not serve metrics and health endpoints.
    #[arg(long)]
    no_metrics: bool,
}

pub(crate) async fn run(rt: Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let client = client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    // Fail fast on a directory with no usable operator; the supervisor then loads (from the
    // compiled-code cache), installs CRDs when asked, and follows changes.
    let plugins = operator::load_dir(&rt, &args.plugins)?;
    if plugins.operators.is_empty() {
        bail!("no operator plugin could be loaded from {}; build one with `make plugins`", args.plugins.display());
    }
    let options = ControllerOptions {
        concurrency: args.concurrency,
        resync: Duration::from_secs(args.resync_seconds),
        ..ControllerOptions::default()
    };
    drop(plugins);
    let stats = Arc::new(Stats::default());
    let reloads = Arc::new(ReloadStats::default());
    let runtime = Arc::new(rt);
    let _metrics = if args.no_metrics {
        None
    } else {
        let telemetry = Telemetry { stats: stats.clone(), reloads: reloads.clone() };
        match telemetry::serve(args.metrics_addr, telemetry).await {
            Ok((_, task)) => Some(task),
            Err(e) => {
                tracing::error!(addr = %args.metrics_addr, error = %e, "cannot serve metrics; pass --metrics-addr or --no-metrics");
                None
            }
        }
    };
    let namespaces: Vec<Option<String>> =
        if args.namespaces.is_empty() { vec![None] } else { args.namespaces.iter().cloned().map(Some).collect() };
    let runs = namespaces.into_iter().map(|namespace| {
        let options = ControllerOptions { namespace, ..options.clone() };
        let supervisor = Supervisor::new(
            client.clone(),
            runtime.clone(),
            args.plugins.clone(),
            options,
            args.install_crds,
            stats.clone(),
            reloads.clone(),
        );
        supervisor.run(shutdown_signal())
    });
    for result in futures::future::join_all(runs).await {
        result?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A client from an explicit kubeconfig file, or inferred (KUBECONFIG, ~/.kube/config, in-cluster).
pub(crate) async fn client(kubeconfig: Option<&std::path::Path>, context: Option<String>) -> anyhow::Result<Client> {
    let options = KubeConfigOptions { context, ..KubeConfigOptions::default() };
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await.context("no kubeconfig and not running in a cluster; pass --kubeconfig")?,
    };
    Ok(Client::try_from(config)?)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
