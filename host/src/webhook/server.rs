//! The HTTPS server of the conversion webhook: `POST /convert` answers a `ConversionReview`;
//! the certificate can be swapped while serving (rotation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::Converters;
use super::review;

/// Largest ConversionReview body accepted (the API server's own request limit).
const MAX_BODY: usize = 3 << 20;

/// The certificate being served; [`CertSlot::set`] replaces it for new connections.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot serving `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<CertSlot> {
        Arc::new(CertSlot(RwLock::new(key)))
    }

    /// Serves `key` from now on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = key;
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// Serves the webhook on `listener` until the task is dropped.
pub fn serve(
    listener: TcpListener,
    certs: Arc<CertSlot>,
    converters: Converters,
) -> Result<tokio::task::JoinHandle<()>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    // Connections live in the accept task's JoinSet: stopping the server closes them too
    // (the API server keeps its connections open).
    Ok(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let (acceptor, converters) = (acceptor.clone(), converters.clone());
                    connections.spawn(connection(acceptor, stream, peer, converters));
                }
                Some(_) = connections.join_next() => {}
            }
        }
    }))
}

async fn connection(acceptor: TlsAcceptor, stream: tokio::net::TcpStream, peer: SocketAddr, converters: Converters) {
    let tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
            return;
        }
    };
    let service = service_fn(move |req| {
        let converters = converters.clone();
        async move { Ok::<_, Infallible>(respond(req, &converters).await) }
    });
    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %e, "webhook connection");
    }
}

async fn respond(req: Request<Incoming>, converters: &Converters) -> Response<Full<Bytes>> {
    if req.uri().path() != "/convert" || req.method() != Method::POST {
        return reply(StatusCode::NOT_FOUND, "text/plain", "wasmop serves POST /convert\n".into());
    }
    let span = tracing::info_span!("conversion review", objects = tracing::field::Empty, to = tracing::field::Empty);
    crate::traces::continue_remote(&span, req.headers());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("cannot read the body: {e}\n")),
    };
    let answer = review::answer(converters, &body).instrument(span).await;
    reply(StatusCode::OK, "application/json", answer.to_string())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
