//! Shared helpers: start a server and build a kube client for it.

use std::time::Duration;

use wasmop_apiserver::{ApiServer, Config};

/// Starts a server with default config.
pub async fn server() -> ApiServer {
    server_with(Config::default()).await
}

/// Starts a server with a config.
pub async fn server_with(config: Config) -> ApiServer {
    ApiServer::start(config).await.expect("server starts")
}

/// A kube client for the server.
pub fn client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("url parses"));
    kube::Client::try_from(config).expect("client builds")
}

/// Polls `f` until it returns Some, or panics after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Status error of a failed kube call.
pub fn status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
