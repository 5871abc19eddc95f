//! Plugins as OCI artifacts: push, resolve and pull the CNCF TAG Runtime Wasm layout (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), as `wkg` and `oras`
//! push it, through oras-project's `oci-client`.
//!
//! A pull is verified before anything else sees its bytes: the manifest against the pinned
//! digest, the layer against the manifest's digest and size, and both against the size limit
//! (checked from the manifest before the layer is fetched, and again while it streams).
//! Credentials are never logged: [`Credentials`] prints without its secret.

mod auth;
mod cache;

use std::collections::BTreeMap;
use std::str::FromStr;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};

pub use auth::Credentials;
pub use cache::ArtifactCache;
pub use oci_client::Reference;

/// Media type of the config of a Wasm artifact (CNCF TAG Runtime layout).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer of a Wasm artifact: the component's bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Default largest artifact a pull accepts, in bytes (64 MiB): a Python plugin is about 18 MB.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// The layer annotation `oras pull` names the written file by.
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Largest manifest read: a Wasm artifact's is well under 1 KiB.
const MAX_MANIFEST_SIZE: usize = 64 << 10;

/// A registry operation failed. Each variant says what to do; [`RegistryError::reason`] is the
/// condition reason it becomes on a `WasmPlugin`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(
        "{reference:?} is not an OCI reference ({source}); write REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST"
    )]
    BadReference {
        /// The text given.
        reference: String,
        /// Why it does not parse.
        source: oci_client::ParseError,
    },
    /// The registry cannot be reached.
    #[error(
        "registry {registry} is unreachable: {message}; check the address, that it serves HTTPS (or pass --insecure-registry {registry} for plain HTTP) and the network"
    )]
    Unreachable {
        /// Host (and port) of the registry.
        registry: String,
        /// What the connection attempt said.
        message: String,
    },
    /// The registry refused the credentials (or wants some).
    #[error(
        "registry {registry} refused access to {reference}: {message}; check the credentials (docker config, --username/--password-stdin, or the WasmPlugin's pullSecretRef)"
    )]
    AuthRefused {
        /// Host of the registry.
        registry: String,
        /// What was accessed.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// Nothing is at the reference.
    #[error("{reference} was not found in the registry: {message}; check the repository and tag or digest")]
    NotFound {
        /// What was asked for.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// Content does not match its digest.
    #[error(
        "{what} of {reference} has digest {actual}, not {expected}; the registry or a proxy altered it, or the pinned digest is wrong"
    )]
    DigestMismatch {
        /// The manifest or the layer.
        what: &'static str,
        /// What was pulled.
        reference: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// The artifact is larger than the limit.
    #[error(
        "{reference} is {size} bytes, over the limit of {limit} bytes; raise --max-plugin-size or shrink the plugin"
    )]
    TooLarge {
        /// What was pulled.
        reference: String,
        /// Its size (or the bytes received when over).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The artifact is not a Wasm component in the CNCF layout.
    #[error(
        "{reference} is not a Wasm artifact: {message}; push it with `wasmop plugin push` (config {WASM_CONFIG_MEDIA_TYPE}, one {WASM_LAYER_MEDIA_TYPE} layer)"
    )]
    NotWasm {
        /// What was pulled.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// Any other answer of the registry.
    #[error("registry {registry} failed on {reference}: {message}")]
    Other {
        /// Host of the registry.
        registry: String,
        /// What was accessed.
        reference: String,
        /// What happened.
        message: String,
    },
    /// Credentials cannot be read.
    #[error(transparent)]
    Credentials(#[from] auth::CredentialsError),
}

impl RegistryError {
    /// The `Ready=False` reason of a `WasmPlugin` whose pull failed this way.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::BadReference { .. } => "InvalidReference",
            RegistryError::Unreachable { .. } => "RegistryUnreachable",
            RegistryError::AuthRefused { .. } | RegistryError::Credentials(_) => "AuthRefused",
            RegistryError::NotFound { .. } => "NotFound",
            RegistryError::DigestMismatch { .. } => "DigestMismatch",
            RegistryError::TooLarge { .. } => "TooLarge",
            RegistryError::NotWasm { .. } => "NotAWasmComponent",
            RegistryError::Other { .. } => "PullFailed",
        }
    }

    /// Whether trying again later may succeed (the registry, not the artifact, failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. } | RegistryError::Other { .. })
    }
}

/// Parses `text` as an OCI reference (a bare `NAME:TAG` is on Docker Hub, as with docker).
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    let text = text.strip_prefix("oci://").unwrap_or(text);
    Reference::from_str(text).map_err(|source| RegistryError::BadReference { reference: text.to_string(), source })
}

/// A pulled and verified artifact.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Digest of its manifest (`sha256:…`): what a reference pins.
    pub digest: String,
    /// The component's bytes.
    pub bytes: Vec<u8>,
}

/// How to reach registries: which may be plain HTTP, whose credentials, and the size limit.
#[derive(Clone, Debug)]
pub struct Registry {
    insecure: Vec<String>,
    credentials: Credentials,
    max_size: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { insecure: Vec::new(), credentials: Credentials::docker_default(), max_size: DEFAULT_MAX_SIZE }
    }
}

impl Registry {
    /// Reach `hosts` (HOST or HOST:PORT) over plain HTTP instead of HTTPS.
    #[must_use]
    pub fn insecure(mut self, hosts: Vec<String>) -> Self {
        self.insecure = hosts;
        self
    }

    /// Credentials for every registry (default: the docker config file).
    #[must_use]
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Largest artifact a pull accepts, in bytes (default [`DEFAULT_MAX_SIZE`]).
    #[must_use]
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// The size limit.
    pub fn limit(&self) -> u64 {
        self.max_size
    }

    /// A client for one operation: oci-client keeps the first credentials it sees per
    /// registry, so credentials that differ per plugin need clients of their own.
    fn client(&self) -> oci_client::Client {
        // reqwest is built without a default TLS provider; kube uses ring, so does this.
        let _ = rustls::crypto::ring::default_provider().install_default();
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
            // A plugin is one small layer: one PUT, which every registry takes (crane's refuses
            // oci-client's chunked upload).
            use_monolithic_push: true,
            ..ClientConfig::default()
        })
    }

    fn auth(&self, reference: &Reference, credentials: Option<&Credentials>) -> Result<RegistryAuth, RegistryError> {
        Ok(credentials.unwrap_or(&self.credentials).for_registry(reference.resolve_registry())?)
    }

    /// Pushes `bytes` as a Wasm artifact to `reference`, its layer titled `title` (the file
    /// name `oras pull` writes). Returns the manifest's digest. The same bytes and title give
    /// the same digest.
    pub async fn push(&self, reference: &Reference, bytes: Vec<u8>, title: &str) -> Result<String, RegistryError> {
        let auth = self.auth(reference, None)?;
        let client = self.client();
        let layer_digest = sha256(&bytes);
        let config = serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        });
        let config = serde_json::to_vec(&config).map_err(|e| other(reference, e.to_string()))?;
        let manifest = OciImageManifest {
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
            config: descriptor(WASM_CONFIG_MEDIA_TYPE, &config, None),
            layers: vec![descriptor(
                WASM_LAYER_MEDIA_TYPE,
                &bytes,
                Some(BTreeMap::from([(TITLE_ANNOTATION.to_string(), title.to_string())])),
            )],
            ..OciImageManifest::default()
        };
        let manifest = serde_json::to_vec(&manifest).map_err(|e| other(reference, e.to_string()))?;
        client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        let classify = |e| classify(reference, e);
        push_blob(&client, reference, bytes, &layer_digest).await?;
        let config_digest = sha256(&config);
        push_blob(&client, reference, config, &config_digest).await?;
        let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        let digest = sha256(&manifest);
        client.push_manifest_raw(reference, manifest, content_type).await.map_err(classify)?;
        Ok(digest)
    }

    /// The digest `reference` names: its own when pinned, else what its tag points at now.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let auth = self.auth(reference, credentials)?;
        digest_of(&self.client(), &auth, reference).await
    }

    /// Pulls the artifact `reference` names (resolving a tag first), verified against its
    /// digest and the size limit.
    pub async fn pull(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Artifact, RegistryError> {
        let auth = self.auth(reference, credentials)?;
        let client = self.client();
        let digest = digest_of(&client, &auth, reference).await?;
        let pinned = reference.clone_with_digest(digest.clone());
        let (manifest, _) = client
            .pull_manifest_raw(&pinned, &auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| classify(&pinned, e))?;
        let actual = sha256(&manifest);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: "the manifest",
                reference: pinned.whole(),
                expected: digest,
                actual,
            });
        }
        let layer = self.wasm_layer(&pinned, &manifest)?;
        let bytes = self.pull_layer(&client, &pinned, &layer).await?;
        Ok(Artifact { digest, bytes })
    }

    /// The one Wasm layer of `manifest`, refused when the layout or its size is wrong.
    fn wasm_layer(&self, reference: &Reference, manifest: &[u8]) -> Result<OciDescriptor, RegistryError> {
        let not_wasm = |message: String| RegistryError::NotWasm { reference: reference.whole(), message };
        if manifest.len() > MAX_MANIFEST_SIZE {
            return Err(not_wasm(format!("its manifest is {} bytes", manifest.len())));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(manifest).map_err(|e| not_wasm(format!("its manifest does not parse: {e}")))?;
        let config_ok = manifest.config.media_type == WASM_CONFIG_MEDIA_TYPE
            || manifest.artifact_type.as_deref() == Some(WASM_CONFIG_MEDIA_TYPE);
        if !config_ok {
            return Err(not_wasm(format!("its config is {}", manifest.config.media_type)));
        }
        let mut layers = manifest.layers.into_iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE);
        let (Some(layer), None) = (layers.next(), layers.next()) else {
            return Err(not_wasm(format!("it needs exactly one {WASM_LAYER_MEDIA_TYPE} layer")));
        };
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > self.max_size {
            return Err(RegistryError::TooLarge { reference: reference.whole(), size, limit: self.max_size });
        }
        Ok(layer)
    }

    /// Streams the layer, stopping past the limit, and checks its digest.
    async fn pull_layer(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut stream = client.pull_blob_stream(reference, layer).await.map_err(|e| classify(reference, e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0));
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| other(reference, e.to_string()))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > self.max_size {
                let size = bytes.len() as u64;
                return Err(RegistryError::TooLarge { reference: reference.whole(), size, limit: self.max_size });
            }
        }
        let actual = sha256(&bytes);
        if actual != layer.digest {
            return Err(RegistryError::DigestMismatch {
                what: "the layer",
                reference: reference.whole(),
                expected: layer.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// The digest `reference` pins, or the one its tag points at now.
async fn digest_of(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reference: &Reference,
) -> Result<String, RegistryError> {
    match reference.digest() {
        Some(digest) => Ok(digest.to_string()),
        None => client.fetch_manifest_digest(reference, auth).await.map_err(|e| classify(reference, e)),
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Uploads one blob. A registry that answers the upload without the `Location` header the
/// spec asks for (crane's does) is asked whether the blob arrived, instead of failing.
async fn push_blob(
    client: &oci_client::Client,
    reference: &Reference,
    bytes: Vec<u8>,
    digest: &str,
) -> Result<(), RegistryError> {
    match client.push_blob(reference, bytes, digest).await {
        Ok(_) => Ok(()),
        Err(OciDistributionError::RegistryNoLocationError) => {
            match client.blob_exists(reference, digest).await.map_err(|e| classify(reference, e))? {
                true => Ok(()),
                false => Err(other(reference, format!("blob {digest} was not stored"))),
            }
        }
        Err(e) => Err(classify(reference, e)),
    }
}

fn descriptor(media_type: &str, bytes: &[u8], annotations: Option<BTreeMap<String, String>>) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: sha256(bytes),
        size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        annotations,
        ..OciDescriptor::default()
    }
}

fn other(reference: &Reference, message: String) -> RegistryError {
    RegistryError::Other { registry: reference.resolve_registry().to_string(), reference: reference.whole(), message }
}

/// Sorts oci-client's error into what the user should do about it.
fn classify(reference: &Reference, error: OciDistributionError) -> RegistryError {
    let registry = reference.resolve_registry().to_string();
    let whole = reference.whole();
    match error {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
            RegistryError::Unreachable { registry, message: chain(&e) }
        }
        OciDistributionError::UnauthorizedError { url } => {
            RegistryError::AuthRefused { registry, reference: whole, message: format!("401 from {url}") }
        }
        OciDistributionError::AuthenticationFailure(message) => {
            RegistryError::AuthRefused { registry, reference: whole, message }
        }
        OciDistributionError::ServerError { code: 401 | 403, message, .. } => {
            RegistryError::AuthRefused { registry, reference: whole, message }
        }
        OciDistributionError::ImageManifestNotFoundError(message)
        | OciDistributionError::ServerError { code: 404, message, .. } => {
            RegistryError::NotFound { reference: whole, message }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            RegistryError::NotFound { reference: whole, message: envelope.to_string() }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            RegistryError::AuthRefused { registry, reference: whole, message: envelope.to_string() }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::DigestInvalid)) =>
        {
            RegistryError::DigestMismatch {
                what: "the content",
                reference: whole,
                expected: reference.digest().unwrap_or("the digest asked for").to_string(),
                actual: envelope.to_string(),
            }
        }
        OciDistributionError::DigestError(e) => RegistryError::DigestMismatch {
            what: "the content",
            reference: whole,
            expected: String::from("the digest asked for"),
            actual: e.to_string(),
        },
        other => RegistryError::Other { registry, reference: whole, message: other.to_string() },
    }
}

/// An error with its causes, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_or_without_the_oci_scheme() {
        let pinned = parse_reference(
            "oci://127.0.0.1:5000/plugins/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(pinned.registry(), "127.0.0.1:5000");
        assert!(pinned.digest().is_some());
        let tagged = parse_reference("127.0.0.1:5000/plugins/app:v1").unwrap();
        assert_eq!(tagged.tag(), Some("v1"));
        let error = parse_reference("UPPER/Case:x").unwrap_err();
        assert_eq!(error.reason(), "InvalidReference");
        assert!(error.to_string().contains("REGISTRY/REPOSITORY:TAG"), "{error}");
    }

    #[test]
    fn a_manifest_that_is_not_the_wasm_layout_is_refused_with_what_is_wrong() {
        let registry = Registry::default().max_size(10);
        let reference = parse_reference("localhost:1/p:v1").unwrap();
        let manifest = |config: &str, layers: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": config, "digest": sha256(b"{}"), "size": 2},
                "layers": layers,
            }))
            .unwrap()
        };
        let layer =
            |media: &str, size: u64| serde_json::json!({"mediaType": media, "digest": sha256(b"x"), "size": size});
        let image =
            manifest("application/vnd.oci.image.config.v1+json", serde_json::json!([layer("application/wasm", 1)]));
        let error = registry.wasm_layer(&reference, &image).unwrap_err();
        assert_eq!(error.reason(), "NotAWasmComponent", "{error}");
        let two = manifest(
            WASM_CONFIG_MEDIA_TYPE,
            serde_json::json!([layer("application/wasm", 1), layer("application/wasm", 1)]),
        );
        assert!(registry.wasm_layer(&reference, &two).unwrap_err().to_string().contains("exactly one"));
        let big = manifest(WASM_CONFIG_MEDIA_TYPE, serde_json::json!([layer("application/wasm", 11)]));
        assert_eq!(registry.wasm_layer(&reference, &big).unwrap_err().reason(), "TooLarge");
        let good = manifest(WASM_CONFIG_MEDIA_TYPE, serde_json::json!([layer("application/wasm", 10)]));
        assert_eq!(registry.wasm_layer(&reference, &good).unwrap().size, 10);
    }
}
