//! `wasmop-apiserver`: runs the in-memory Kubernetes API server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// In-memory Kubernetes API server for tests, scripts and kubectl sessions.
#[derive(Debug, Parser)]
#[command(name = "wasmop-apiserver", version)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Simulate Deployment and StatefulSet status (replicas become ready after a short delay).
    #[arg(long)]
    simulate_deployments: bool,
    /// Delay in milliseconds before simulated workloads become ready.
    #[arg(long, default_value_t = 500)]
    simulate_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = wasmop_apiserver::Config {
        port: args.port,
        simulate_deployments: args.simulate_deployments,
        simulate_delay: std::time::Duration::from_millis(args.simulate_delay_ms),
        ..Default::default()
    };
    let server = wasmop_apiserver::ApiServer::start(config).await.context("starting the API server")?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path).with_context(|| format!("writing kubeconfig to {}", path.display()))?;
    }
    // Handlers are installed before the URL is printed: whoever reads it may signal at once.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    println!("{}", server.url());
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
