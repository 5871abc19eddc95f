//! Metrics and health over HTTP: `/metrics` (Prometheus text format, via prometheus-client),
//! `/healthz` and `/readyz`. The counters live where the work happens (reconcile and reload
//! stats); a scrape reads them, so the hot path never touches the metrics registry.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::reconcile::Stats;
use crate::reload::ReloadStats;

/// What `/metrics` reports.
#[derive(Clone)]
pub struct Telemetry {
    /// Reconcile counters.
    pub stats: Arc<Stats>,
    /// Reload counters and serving revisions.
    pub reloads: Arc<ReloadStats>,
}

impl Telemetry {
    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("wasmop");
        let s = &self.stats;
        for (name, help, value) in [
            ("reconciles", "Reconciles started", &s.reconciles),
            ("reconcile_failures", "Reconciles that failed", &s.failures),
            ("plugin_calls", "Plugin calls made", &s.plugin_calls),
            ("child_applies", "Children written with server-side apply", &s.applies),
            ("child_prunes", "Children deleted because no longer desired", &s.prunes),
            ("status_writes", "Parent status writes", &s.status_writes),
        ] {
            registry.register(name, help, ConstCounter::new(Stats::get(value)));
        }
        let r = &self.reloads;
        for (name, help, value) in [
            ("plugin_loads", "Plugin versions started (first loads and reloads)", &r.loads),
            ("plugin_load_failures", "Plugin files rejected; the previous version kept serving", &r.failures),
            ("plugin_removals", "Plugins stopped because their file was removed", &r.removals),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        if let Ok(serving) = r.serving.lock() {
            for (plugin, revision) in serving.iter() {
                info.get_or_create(&vec![("plugin".into(), plugin.clone()), ("revision".into(), revision.clone())])
                    .set(1);
            }
        }
        registry.register("plugin_info", "The revision each plugin serves (value 1)", info);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Binds `addr` and serves metrics and health until the task is dropped. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let telemetry = telemetry.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &telemetry)) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

fn respond(req: &Request<Incoming>, telemetry: &Telemetry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", telemetry.render())
        }
        "/healthz" | "/readyz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn metrics_endpoint_reports_counters_and_revisions() {
        let telemetry = Telemetry { stats: Arc::new(Stats::default()), reloads: Arc::new(ReloadStats::default()) };
        telemetry.stats.reconciles.fetch_add(3, Ordering::Relaxed);
        telemetry.reloads.failures.fetch_add(1, Ordering::Relaxed);
        telemetry.reloads.serving.lock().unwrap().insert("appoperator".into(), "1746eea1de96".into());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), telemetry).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("wasmop_reconciles_total 3"), "{body}");
        assert!(body.contains("wasmop_plugin_load_failures_total 1"), "{body}");
        assert!(body.contains(r#"wasmop_plugin_info{plugin="appoperator",revision="1746eea1de96"} 1"#), "{body}");
        task.abort();
    }
}
