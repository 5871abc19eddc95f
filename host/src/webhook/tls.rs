//! The webhook's serving certificate: generated (a CA and a leaf signed by it, with rcgen), kept
//! in a Secret shared by every replica, or read from a directory (e.g. mounted by cert-manager).
//! Rotation replaces CA and leaf together and keeps the previous CA in the bundle the API server
//! trusts, so replicas still serving the old leaf stay trusted until they pick up the new one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How long a generated leaf (and its CA) is valid.
pub const VALIDITY_DAYS: i64 = 365;
/// A leaf with fewer days than this left is replaced.
pub const RENEW_DAYS_BEFORE: i64 = 120;
const NOT_AFTER_ANNOTATION: &str = "wasmop.dev/not-after";

/// A serving certificate, its key, and the CA bundle clients should trust (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// CA certificates to trust, newest first (PEM); empty when another party injects the CA.
    pub ca_bundle_pem: String,
    /// When the leaf expires (unix seconds); `None` when unknown (certificates from a directory).
    pub not_after: Option<i64>,
}

/// Why TLS material cannot be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused to generate.
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The PEM could not be parsed or is not a usable key.
    #[error("the webhook certificate or key is unusable: {0}")]
    Pem(String),
    /// A file of the certificate directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The Secret could not be read or written.
    #[error("cannot keep the webhook certificate in Secret {secret}: {source}")]
    Secret {
        /// `namespace/name`.
        secret: String,
        /// The API error.
        source: kube::Error,
    },
}

/// Generates a CA and a leaf for `dns_names` (IP addresses allowed), valid [`VALIDITY_DAYS`] from
/// `now`, with `previous_ca_pem` appended to the bundle.
pub fn generate(dns_names: &[String], now: i64, previous_ca_pem: Option<&str>) -> Result<Material, TlsError> {
    let start = time::OffsetDateTime::from_unix_timestamp(now - 3600).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let end = start + time::Duration::days(VALIDITY_DAYS);
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("wasmop webhook CA {now}"));
    (ca_params.not_before, ca_params.not_after) = (start, end);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut leaf_params = rcgen::CertificateParams::new(dns_names.to_vec())?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "wasmop webhook");
    (leaf_params.not_before, leaf_params.not_after) = (start, end);
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let mut bundle = ca.pem();
    if let Some(previous) = previous_ca_pem {
        // Only the previous CA: older ones signed leaves nobody serves any more.
        let first = previous.split_inclusive("-----END CERTIFICATE-----").next().unwrap_or("");
        bundle.push_str(first.trim_start());
        bundle.push('\n');
    }
    Ok(Material {
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        ca_bundle_pem: bundle,
        not_after: Some(end.unix_timestamp()),
    })
}

impl Material {
    /// Whether the leaf should be replaced at `now` (unknown expiry: never).
    pub fn due(&self, now: i64) -> bool {
        self.not_after.is_some_and(|end| end - now < RENEW_DAYS_BEFORE * 86_400)
    }

    /// The leaf and key as rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem(format!("key: {e}")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Pem(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    /// Reads `tls.crt`, `tls.key` and, when present, `ca.crt` from `dir` (the layout of a
    /// mounted `kubernetes.io/tls` Secret, as cert-manager writes it).
    pub fn from_dir(dir: &Path) -> Result<Material, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
        };
        Ok(Material {
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
            ca_bundle_pem: read("ca.crt").unwrap_or_default(),
            not_after: None,
        })
    }

    fn from_secret(secret: &Secret) -> Option<Material> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let not_after = secret.metadata.annotations.as_ref()?.get(NOT_AFTER_ANNOTATION)?.parse().ok();
        Some(Material {
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
            ca_bundle_pem: text("ca.crt")?,
            not_after,
        })
    }

    fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let annotations = self.not_after.map(|t| BTreeMap::from([(NOT_AFTER_ANNOTATION.to_string(), t.to_string())]));
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                annotations,
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), "wasmop".into())])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".into(), bytes(&self.cert_pem)),
                ("tls.key".into(), bytes(&self.key_pem)),
                ("ca.crt".into(), bytes(&self.ca_bundle_pem)),
            ])),
            ..Secret::default()
        }
    }
}

/// The material kept in Secret `namespace/name`: created when missing, replaced when due, and
/// otherwise what another replica stored. Replicas racing to create or replace it agree on the
/// winner's (the loser re-reads after its conflict).
pub async fn from_secret(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    dns_names: &[String],
    now: i64,
) -> Result<Material, TlsError> {
    let err = |source| TlsError::Secret { secret: format!("{namespace}/{name}"), source };
    for _ in 0..3 {
        let existing = api.get_opt(name).await.map_err(err)?;
        let current = existing.as_ref().and_then(Material::from_secret);
        if let Some(material) = current.as_ref().filter(|m| !m.due(now)) {
            return Ok(material.clone());
        }
        let fresh = generate(dns_names, now, current.as_ref().map(|m| m.ca_bundle_pem.as_str()))?;
        let mut secret = fresh.to_secret(namespace, name);
        let written = match existing {
            Some(old) => {
                secret.metadata.resource_version = old.metadata.resource_version;
                api.replace(name, &PostParams::default(), &secret).await
            }
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "webhook certificate issued");
                return Ok(fresh);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    let existing = api.get(name).await.map_err(err)?;
    Material::from_secret(&existing).ok_or_else(|| TlsError::Pem(format!("Secret {namespace}/{name} is incomplete")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_serves_and_rotation_keeps_the_previous_ca() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = generate(&names, 1_800_000_000, None).unwrap();
        assert!(first.certified_key().is_ok());
        assert!(!first.due(1_800_000_000));
        assert!(first.due(1_800_000_000 + (VALIDITY_DAYS - RENEW_DAYS_BEFORE + 1) * 86_400));
        let second = generate(&names, 1_900_000_000, Some(&first.ca_bundle_pem)).unwrap();
        assert_eq!(second.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(second.ca_bundle_pem.ends_with(&format!("{}\n", first.ca_bundle_pem.trim())));
        let third = generate(&names, 2_000_000_000, Some(&second.ca_bundle_pem)).unwrap();
        assert_eq!(third.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(), 2, "only the previous CA is kept");
    }

    #[test]
    fn a_certificate_directory_is_read_as_cert_manager_mounts_it() {
        let material = generate(&["svc".to_string()], 1_800_000_000, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), &material.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &material.key_pem).unwrap();
        let read = Material::from_dir(dir.path()).unwrap();
        assert!(read.certified_key().is_ok());
        assert_eq!(
            (read.ca_bundle_pem.as_str(), read.not_after),
            ("", None),
            "no ca.crt: the CA is left to cainjector"
        );
        assert!(!read.due(i64::MAX), "a mounted certificate is renewed by its issuer");
        let missing = Material::from_dir(&dir.path().join("nowhere")).unwrap_err();
        assert!(missing.to_string().contains("tls.crt"), "{missing}");
    }

    #[test]
    fn a_secret_round_trips() {
        let material = generate(&["svc".to_string()], 1_800_000_000, None).unwrap();
        let secret = material.to_secret("ns", "tls");
        assert_eq!(Material::from_secret(&secret), Some(material));
    }
}
