//! A real Jaeger (the all-in-one `jaeger` binary `make tracing` builds: an OTLP/HTTP receiver,
//! in-memory storage and the query API) on free loopback ports, for the trace tests and the
//! tracing overhead bench. Self-contained, so a bench can include it by path.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Jaeger process; killed when dropped.
pub struct Jaeger {
    child: Child,
    /// Where OTLP/HTTP is received (`--otlp-endpoint http://ADDR`).
    pub otlp: SocketAddr,
    /// Where the query API answers (`/api/traces`).
    pub query: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A free loopback address (bound, then released for the child process to take).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The configuration: OTLP/HTTP in, batches of at most 100 ms, memory storage, query API.
fn config(otlp: SocketAddr, query: SocketAddr, grpc: SocketAddr) -> String {
    format!(
        "service:\n  extensions: [jaeger_storage, jaeger_query]\n  pipelines:\n    traces:\n      \
         receivers: [otlp]\n      processors: [batch]\n      exporters: [jaeger_storage_exporter]\n  \
         telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
         extensions:\n  jaeger_query:\n    storage:\n      traces: memstore\n    http:\n      \
         endpoint: {query}\n    grpc:\n      endpoint: {grpc}\n  jaeger_storage:\n    backends:\n      \
         memstore:\n        memory:\n          max_traces: 100000\n\
         receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: {otlp}\n\
         processors:\n  batch:\n    timeout: 100ms\n\
         exporters:\n  jaeger_storage_exporter:\n    trace_storage: memstore\n"
    )
}

impl Jaeger {
    /// Starts Jaeger from `workspace`'s tool cache and waits until both ports accept.
    pub fn start(workspace: &Path) -> Jaeger {
        let path: PathBuf = workspace.join("target/tracing/bin/jaeger");
        assert!(path.exists(), "{} is missing: build it with `make tracing` (make test does)", path.display());
        let dir = tempfile::tempdir().unwrap();
        let (otlp, query, grpc) = (free_addr(), free_addr(), free_addr());
        std::fs::write(dir.path().join("jaeger.yaml"), config(otlp, query, grpc)).unwrap();
        let child = Command::new(path)
            .arg(format!("--config={}", dir.path().join("jaeger.yaml").display()))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("jaeger.log")).unwrap())
            .spawn()
            .expect("jaeger starts");
        let mut jaeger = Jaeger { child, otlp, query, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while [otlp, query].iter().any(|a| TcpStream::connect(a).is_err()) {
            let exited = jaeger.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "Jaeger did not start ({exited:?}): {}",
                jaeger.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        jaeger
    }

    /// What Jaeger logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// The spans of every trace of service `wasmop` Jaeger holds, by trace (Jaeger's JSON).
    pub async fn traces(&self) -> Vec<Vec<serde_json::Value>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(self.query).await.ok()?;
            let request = "GET /api/traces?service=wasmop&limit=1000&lookback=1h HTTP/1.0\r\nHost: localhost\r\n\r\n";
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.ok()?;
            let (_, body) = reply.split_once("\r\n\r\n")?;
            serde_json::from_str::<serde_json::Value>(body).ok()
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), fetch).await.ok().flatten().unwrap_or_default();
        let traces = answer["data"].as_array().cloned().unwrap_or_default();
        traces.iter().map(|t| t["spans"].as_array().cloned().unwrap_or_default()).collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
