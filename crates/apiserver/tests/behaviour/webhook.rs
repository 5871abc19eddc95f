//! A conversion webhook for the tests: HTTPS on 127.0.0.1 with a certificate from its own CA
//! (rcgen), converting `Gadget`s between `v1alpha1` (`spec.size`) and `v1`
//! (`spec.resources.size`). It records every review it gets, can be told to answer badly,
//! and can be stopped and restarted on the same port.

use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How the webhook answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Converts correctly.
    Convert,
    /// `result.status: Failure` with this message.
    Fail(String),
    /// Answers with another uid.
    WrongUid,
    /// Answers 200 with a body that is not JSON.
    NotJson,
    /// Answers with this HTTP status and a plain-text body.
    Status(u16),
    /// Returns no objects.
    NoObjects,
    /// Returns the objects unconverted (their apiVersion unchanged).
    Unconverted,
    /// Renames the objects.
    Rename,
}

/// One review the webhook received: the objects' apiVersions and the desired one.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `apiVersion` of each object sent.
    pub from: Vec<String>,
    /// `desiredAPIVersion`.
    pub to: String,
}

struct Shared {
    mode: Mode,
    calls: Vec<Call>,
}

/// A running (or stopped) test webhook.
pub struct Webhook {
    port: u16,
    ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
}

impl Webhook {
    /// Starts on a free port.
    pub async fn start() -> Webhook {
        let (ca_pem, tls) = pki();
        let shared = Arc::new(Mutex::new(Shared { mode: Mode::Convert, calls: Vec::new() }));
        let mut hook = Webhook { port: 0, ca_pem, tls: Arc::new(tls), shared, task: None };
        hook.listen().await;
        hook
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("webhook binds");
        self.port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(self.tls.clone());
        self.task = Some(tokio::spawn(serve(listener, acceptor, self.shared.clone())));
    }

    /// Stops listening and drops open connections; returns once the port is closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL for the CRD's `clientConfig.url`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/convert", self.port)
    }

    /// The CRD's `clientConfig.caBundle`: the CA that signed the serving certificate.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// Changes how the webhook answers.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = mode;
    }

    /// Reviews received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().unwrap().calls.clone()
    }
}

/// A CA and a serving certificate for 127.0.0.1 signed by it: (CA PEM, server TLS config).
fn pki() -> (String, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "conversion-webhook-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let serving = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = serving.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    (ca_cert.pem(), tls)
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Mutex<Shared>>) {
    // Dropped with this task on `stop`, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        conns.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = service_fn(move |req| answer(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn answer(
    shared: Arc<Mutex<Shared>>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    let request = &review["request"];
    let desired = request["desiredAPIVersion"].as_str().unwrap_or("").to_string();
    let objects = request["objects"].as_array().cloned().unwrap_or_default();
    let mode = {
        let mut s = shared.lock().unwrap();
        let from = objects.iter().map(|o| o["apiVersion"].as_str().unwrap_or("").to_string()).collect();
        s.calls.push(Call { from, to: desired.clone() });
        s.mode.clone()
    };
    let (code, body) = match mode {
        Mode::NotJson => (200, "this is not a ConversionReview".to_string()),
        Mode::Status(code) => (code, "webhook exploded".to_string()),
        mode => (200, respond(&mode, request, objects, &desired).to_string()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    Ok(response)
}

fn respond(mode: &Mode, request: &Value, objects: Vec<Value>, desired: &str) -> Value {
    let uid = if *mode == Mode::WrongUid { json!("not-the-request-uid") } else { request["uid"].clone() };
    let result = match mode {
        Mode::Fail(message) => json!({"status": "Failure", "message": message}),
        _ => json!({"status": "Success"}),
    };
    let converted: Vec<Value> = match mode {
        Mode::NoObjects => Vec::new(),
        Mode::Unconverted => objects,
        Mode::Rename => objects
            .into_iter()
            .map(|mut o| {
                o["metadata"]["name"] = json!("renamed");
                convert(o, desired)
            })
            .collect(),
        _ => objects.into_iter().map(|o| convert(o, desired)).collect(),
    };
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
           "response": {"uid": uid, "result": result, "convertedObjects": converted}})
}

/// The conversion itself: `spec.size` (v1alpha1) <-> `spec.resources.size` (v1).
fn convert(mut obj: Value, desired: &str) -> Value {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if desired.ends_with("/v1") {
            if let Some(size) = spec.remove("size") {
                spec.insert("resources".into(), json!({"size": size}));
            }
        } else if let Some(size) = spec.remove("resources").and_then(|r| r.get("size").cloned()) {
            spec.insert("size".into(), size);
        }
    }
    obj["apiVersion"] = json!(desired);
    obj
}
