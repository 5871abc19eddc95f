//! A faithful in-memory Kubernetes API server for wasmop's tests and `wasmop dev`.
//!
//! It serves the Kubernetes REST API over plain HTTP on 127.0.0.1, with the wire behaviour
//! kube-rs and kubectl depend on: discovery, OpenAPI, list/watch (bookmarks, 410 Expired,
//! streaming lists), create/replace/patch (merge, JSON, strategic, server-side apply),
//! finalizers and garbage collection, CRDs with schema validation and conversion webhooks,
//! plus fault injection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmop_apiserver::Error> {
//! let server = wasmop_apiserver::ApiServer::start(Default::default()).await?;
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

// `StatusError` carries the full Status (causes, details); boxing it would only obscure the
// handlers, and errors are not on any hot path.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod apply;
pub mod convert;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod faults;
mod gc;
pub mod http;
pub mod meta;
pub mod openapi;
pub mod output;
pub mod patch;
pub mod proto;
pub mod resources;
pub mod scale;
pub mod schema;
pub mod selector;
pub mod simulator;
pub mod stats;
pub mod store;
pub mod typed;
pub mod validation;
pub mod watch;
pub mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use error::{Cause, Error, StatusError};
pub use faults::Faults;
pub use stats::RequestStats;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Run the workload status simulator (Deployments and StatefulSets become ready).
    pub simulate_deployments: bool,
    /// Delay before the simulator reports a workload ready.
    pub simulate_delay: Duration,
    /// Number of events retained for watches; older resourceVersions get 410 Expired.
    pub history_size: usize,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Watch duration when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Honour `shardSelector` on lists and watches and echo it in the list's
    /// `metadata.shardInfo`, as kube-apiserver does with the `ShardedListAndWatch` feature
    /// gate (default: on). Off, the parameter is ignored, as a server without the gate does.
    pub shard_selector: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            simulate_deployments: false,
            simulate_delay: Duration::from_millis(500),
            history_size: 10_000,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            shard_selector: true,
        }
    }
}

/// A running server.
pub struct ApiServer {
    shared: Arc<http::Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    simulator: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds 127.0.0.1 and starts serving.
    pub async fn start(config: Config) -> Result<ApiServer, Error> {
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| Error::Bind { port: config.port, source })?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(store::State::new(config.history_size)));
        let simulator = if config.simulate_deployments {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            if let Ok(mut s) = state.lock() {
                s.deployment_hook = Some(tx);
            }
            Some(tokio::spawn(simulator::run(state.clone(), rx, config.simulate_delay)))
        } else {
            None
        };
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(http::Shared {
            faults: Faults::new(state.clone()),
            state,
            stats: Mutex::new(RequestStats::default()),
            config,
            shutdown: shutdown_rx.clone(),
            addr,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
        tracing::info!(%addr, "in-memory API server listening");
        Ok(ApiServer { shared, shutdown, accept, simulator })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A kubeconfig with one cluster, user and context pointing at [`ApiServer::url`].
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmop\n  cluster:\n    server: {url}\ncontexts:\n- name: wasmop\n  context:\n    cluster: wasmop\n    user: wasmop\n    namespace: default\ncurrent-context: wasmop\nusers:\n- name: wasmop\n  user:\n    token: wasmop\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Request counts so far.
    pub fn stats(&self) -> RequestStats {
        self.shared.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Resets the request counts.
    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = RequestStats::default();
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().map(|s| s.rv).unwrap_or(0)
    }

    /// Stops accepting, ends open watches and connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        if let Some(s) = self.simulator {
            s.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<http::Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => {
                let Ok((stream, _)) = res else { continue };
                let shared = shared.clone();
                let mut stop = shutdown.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| http::handle(shared.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}
