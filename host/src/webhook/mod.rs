//! The CRD conversion webhook the host serves for plugins whose CRD defines several versions:
//! the API server sends a `ConversionReview`, the plugin's `convert` answers it in the sandbox.
//! The host owns the TLS: a generated certificate (kept in a Secret shared by the replicas, or
//! in memory) or one from a directory (cert-manager), rotated before it expires, with its CA
//! injected into each CRD's `spec.conversion.webhook.clientConfig.caBundle`.
//!
//! Every replica serves the webhook, leader or not: the API server calls whichever the Service
//! picks.

pub mod review;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::catalog::{Catalog, Snapshot};
use crate::plugin::OperatorPlugin;
use server::CertSlot;
use tls::Material;

/// How often the certificate is checked for renewal (and a directory re-read).
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// The path the webhook answers on.
pub const PATH: &str = "/convert";

/// The plugins that convert, read from the catalog's latest snapshot: the serving plugin of a
/// kind converts it, if it converts at all. Every replica has one, leader or standby.
#[derive(Clone, Default)]
pub struct Converters {
    snapshots: Option<watch::Receiver<Arc<Snapshot>>>,
    /// Where conversion reviews are counted (`wasmop_conversions_total`).
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

impl Converters {
    /// The converters of what `snapshots` serves, as it changes.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Converters {
        Converters { snapshots: Some(snapshots), metrics: None }
    }

    /// Counts one conversion review answered (`failed`: answered `Failed`).
    pub fn counted(&self, failed: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.conversion(failed);
        }
    }

    /// The plugin converting `group` `kind`, if one serves it.
    pub fn get(&self, group: &str, kind: &str) -> Option<OperatorPlugin> {
        let snapshot = self.snapshots.as_ref()?.borrow().clone();
        snapshot.operator(group, kind).map(|r| r.plugin.clone()).filter(OperatorPlugin::converts)
    }

    fn crd_names(&self) -> Vec<String> {
        let Some(snapshots) = &self.snapshots else { return Vec::new() };
        let snapshot = snapshots.borrow().clone();
        snapshot
            .operators
            .values()
            .filter(|r| r.plugin.converts())
            .filter_map(|r| r.plugin.metadata().crd.as_ref()?["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
}

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A URL, e.g. `https://127.0.0.1:9443/convert` (out of cluster, tests, `wasmop dev`).
    Url(String),
    /// A Service in front of every replica (in cluster).
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: u16,
    },
}

impl Endpoint {
    /// Names the serving certificate must carry.
    fn dns_names(&self) -> Vec<String> {
        match self {
            // An IPv6 host keeps its brackets in `Uri::host`; the certificate wants the address.
            Endpoint::Url(url) => url
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_string()))
                .into_iter()
                .collect(),
            Endpoint::Service { namespace, name, .. } => vec![
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
                format!("{name}.{namespace}"),
            ],
        }
    }

    /// `clientConfig` of a CRD's conversion webhook, without the CA.
    pub fn client_config(&self) -> Value {
        match self {
            Endpoint::Url(url) => json!({ "url": url }),
            Endpoint::Service { namespace, name, port } => {
                json!({ "service": { "namespace": namespace, "name": name, "path": PATH, "port": port } })
            }
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Generated and kept in memory (one replica: tests, `wasmop dev`).
    Memory,
    /// Generated once and kept in this Secret, shared by every replica.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `tls.crt`, `tls.key` and optionally `ca.crt` in a directory (e.g. a cert-manager Secret
    /// mounted there). Without `ca.crt` the host injects no CA (cert-manager's cainjector does).
    Dir(PathBuf),
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate could not be made or read.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the conversion webhook: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// rustls refused the configuration.
    #[error("cannot configure TLS for the conversion webhook: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the supervisor needs from the webhook: where to publish converting plugins, and the
/// `spec.conversion` to put in their CRDs.
#[derive(Clone)]
pub struct Conversion {
    converters: Converters,
    client_config: watch::Receiver<Value>,
}

impl Conversion {
    /// The registry the webhook answers from.
    pub fn converters(&self) -> &Converters {
        &self.converters
    }

    /// `spec.conversion` for a CRD whose plugin converts: strategy Webhook, this endpoint and
    /// the current CA bundle.
    pub fn crd_conversion(&self) -> Value {
        crd_conversion(self.client_config.borrow().clone())
    }
}

/// Makes a `clientConfig` merge patch clear the member of the `url` / `service` union it does
/// not set: the API server refuses a clientConfig with both, and a merge patch (or server-side
/// apply) setting one keeps the other.
pub(crate) fn clear_the_other_member(client_config: &mut Value) {
    let Some(config) = client_config.as_object_mut() else { return };
    for (member, other) in [("url", "service"), ("service", "url")] {
        if config.get(member).is_some_and(|v| !v.is_null()) {
            config.insert(other.to_string(), Value::Null);
        }
    }
}

/// `spec.conversion` of a CRD converted by a webhook at `client_config`.
pub fn crd_conversion(client_config: Value) -> Value {
    json!({ "strategy": "Webhook", "webhook": { "conversionReviewVersions": ["v1"], "clientConfig": client_config } })
}

/// Settings of the webhook; [`WebhookBuilder::start`] binds and serves.
#[must_use]
pub struct WebhookBuilder {
    addr: SocketAddr,
    endpoint: Endpoint,
    certs: CertSource,
    converters: Converters,
    rotation_check: Duration,
}

impl WebhookBuilder {
    /// Where the API server reaches the webhook (default: `https://127.0.0.1:PORT/convert` with
    /// the bound port).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Where the certificate comes from (default: generated in memory).
    pub fn certs(mut self, certs: CertSource) -> Self {
        self.certs = certs;
        self
    }

    /// Answer from the converting plugins `catalog` serves, as it changes (default: none, and
    /// every review is refused).
    pub fn catalog(mut self, catalog: &Catalog) -> Self {
        self.converters = Converters::new(catalog.subscribe());
        self
    }

    /// Count the conversion reviews answered into `metrics` (default: not counted).
    pub fn metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.converters.metrics = Some(metrics);
        self
    }

    /// How often the certificate source is read again for a renewed certificate (default: an
    /// hour; a directory mounted from a cert-manager Secret changes when it renews).
    pub fn rotation_check(mut self, every: Duration) -> Self {
        self.rotation_check = every;
        self
    }

    /// Binds, obtains the certificate and serves; keeps the certificate fresh until dropped.
    pub async fn start(self, client: Client) -> Result<Webhook, WebhookError> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| WebhookError::Bind { addr: self.addr, source })?;
        let addr = listener.local_addr().map_err(|source| WebhookError::Bind { addr: self.addr, source })?;
        let endpoint = match self.endpoint {
            Endpoint::Url(url) if url.is_empty() => Endpoint::Url(format!("https://127.0.0.1:{}{PATH}", addr.port())),
            other => other,
        };
        let source = Source { client: client.clone(), endpoint, certs: self.certs };
        let material = match source.fetch(None).await {
            Ok(material) => material,
            // A Secret the operator may not manage must not stop it: this replica serves a
            // certificate of its own, and says what the others will lack.
            Err(e @ tls::TlsError::Secret { .. }) => {
                tracing::error!(error = %e, "serving an in-memory webhook certificate instead; conversions answered by \
                    other replicas fail until the operator may get, create and update that Secret (wasmop rbac prints the rules)");
                tls::generate(&source.endpoint.dns_names(), jiff::Timestamp::now().as_second(), None)?
            }
            Err(e) => return Err(e.into()),
        };
        let slot = CertSlot::new(material.certified_key()?);
        let converters = self.converters;
        let serving = server::serve(listener, slot.clone(), converters.clone())?;
        let (config_tx, config_rx) = watch::channel(source.client_config(&material));
        let renewal = Renewal { every: self.rotation_check, slot, config: config_tx, converters: converters.clone() };
        let rotation = tokio::spawn(rotate(source, material, renewal));
        tracing::info!(%addr, "serving the conversion webhook");
        let conversion = Conversion { converters, client_config: config_rx };
        Ok(Webhook { addr, conversion, tasks: [serving, rotation] })
    }
}

/// A running webhook; stops when dropped.
pub struct Webhook {
    /// The bound address.
    pub addr: SocketAddr,
    conversion: Conversion,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Webhook {
    /// A builder listening on `addr` (port 0 picks one).
    pub fn builder(addr: SocketAddr) -> WebhookBuilder {
        WebhookBuilder {
            addr,
            endpoint: Endpoint::Url(String::new()),
            certs: CertSource::Memory,
            converters: Converters::default(),
            rotation_check: ROTATION_CHECK,
        }
    }

    /// The handle the supervisor takes.
    pub fn conversion(&self) -> Conversion {
        self.conversion.clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

struct Source {
    client: Client,
    endpoint: Endpoint,
    certs: CertSource,
}

impl Source {
    /// The material to serve now; `current` is what is served.
    async fn fetch(&self, current: Option<&Material>) -> Result<Material, tls::TlsError> {
        let now = jiff::Timestamp::now().as_second();
        match &self.certs {
            CertSource::Memory => match current {
                Some(m) if !m.due(now) => Ok(m.clone()),
                _ => tls::generate(&self.endpoint.dns_names(), now, current.map(|m| m.ca_bundle_pem.as_str())),
            },
            CertSource::Secret { namespace, name } => {
                let api = Api::namespaced(self.client.clone(), namespace);
                tls::from_secret(&api, namespace, name, &self.endpoint.dns_names(), now).await
            }
            CertSource::Dir(dir) => Material::from_dir(dir),
        }
    }

    fn client_config(&self, material: &Material) -> Value {
        let mut config = self.endpoint.client_config();
        if !material.ca_bundle_pem.is_empty() {
            config["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(&material.ca_bundle_pem));
        }
        config
    }
}

/// Where a renewed certificate goes: the served slot, the CRDs' client config, and the CRDs of
/// the converting plugins.
struct Renewal {
    every: Duration,
    slot: Arc<CertSlot>,
    config: watch::Sender<Value>,
    converters: Converters,
}

/// Checks the certificate every `renewal.every`; on a new one, serves it and injects its CA
/// bundle into the CRDs of the converting plugins.
async fn rotate(source: Source, mut material: Material, renewal: Renewal) {
    let Renewal { every, slot, config, converters } = renewal;
    loop {
        tokio::time::sleep(every).await;
        let fresh = match source.fetch(Some(&material)).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the conversion webhook certificate; serving the current one");
                continue;
            }
        };
        if fresh == material {
            continue;
        }
        match fresh.certified_key() {
            Ok(key) => slot.set(key),
            Err(e) => {
                tracing::error!(error = %e, "the renewed webhook certificate is unusable; serving the current one");
                continue;
            }
        }
        let client_config = source.client_config(&fresh);
        config.send_replace(client_config.clone());
        inject(&source.client, &converters.crd_names(), &client_config).await;
        tracing::info!("conversion webhook certificate renewed");
        material = fresh;
    }
}

/// Puts `client_config` (with the new CA bundle) into each CRD's conversion webhook.
async fn inject(client: &Client, crds: &[String], client_config: &Value) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut client_config = client_config.clone();
    clear_the_other_member(&mut client_config);
    let patch = json!({ "spec": { "conversion": { "webhook": { "clientConfig": client_config } } } });
    for name in crds {
        if let Err(e) = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::error!(crd = %name, error = %e, "cannot inject the webhook CA bundle");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_what_the_certificate_must_cover() {
        let url = Endpoint::Url("https://127.0.0.1:9443/convert".into());
        assert_eq!(url.dns_names(), vec!["127.0.0.1"]);
        let v6 = Endpoint::Url("https://[::1]:9443/convert?x=1".into());
        assert_eq!(v6.dns_names(), vec!["::1"]);
        let name = Endpoint::Url("https://hooks.example.com/convert".into());
        assert_eq!(name.dns_names(), vec!["hooks.example.com"]);
        let svc = Endpoint::Service { namespace: "wasmop-system".into(), name: "wasmop-webhook".into(), port: 443 };
        assert!(svc.dns_names().contains(&"wasmop-webhook.wasmop-system.svc".to_string()));
        assert_eq!(svc.client_config()["service"]["path"], "/convert");
    }
}
