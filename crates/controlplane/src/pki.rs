//! The control plane's keys and certificates, generated fresh for every start: a CA, the API
//! server's serving certificate (127.0.0.1 and localhost), an admin client certificate in
//! `system:masters`, and the ServiceAccount token signing key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::Error;

/// PEM files written into the control plane's directory.
#[derive(Clone, Debug)]
pub struct Pki {
    /// CA certificate (trusted by clients, and the client CA of the API server).
    pub ca_cert: PathBuf,
    /// API server serving certificate and key.
    pub serving_cert: PathBuf,
    /// Key of [`Pki::serving_cert`].
    pub serving_key: PathBuf,
    /// ServiceAccount token signing key (private).
    pub sa_key: PathBuf,
    /// ServiceAccount token verification key (public).
    pub sa_pub: PathBuf,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Admin client certificate (CN `wasmop-admin`, O `system:masters`), PEM.
    pub admin_cert_pem: String,
    /// Key of the admin client certificate, PEM.
    pub admin_key_pem: String,
}

fn pki_error(step: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Pki { step, source }
}

/// Generates every key and certificate and writes them under `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    let ca_key = KeyPair::generate().map_err(pki_error("CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "wasmop-controlplane-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(pki_error("CA certificate"))?;
    let issuer = Issuer::new(ca, ca_key);

    let serving_key = KeyPair::generate().map_err(pki_error("serving key"))?;
    let mut serving = CertificateParams::new(vec!["localhost".to_string(), "kubernetes.default.svc".to_string()])
        .map_err(pki_error("serving certificate names"))?;
    serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer).map_err(pki_error("serving certificate"))?;

    let admin_key = KeyPair::generate().map_err(pki_error("admin key"))?;
    let mut admin = CertificateParams::default();
    admin.distinguished_name.push(DnType::CommonName, "wasmop-admin");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).map_err(pki_error("admin certificate"))?;

    let sa = KeyPair::generate().map_err(pki_error("ServiceAccount key"))?;

    let write = |name: &str, pem: &str| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|source| Error::Io { what: format!("write {}", path.display()), source })?;
        Ok(path)
    };
    Ok(Pki {
        ca_cert: write("ca.crt", &ca_cert.pem())?,
        serving_cert: write("apiserver.crt", &serving_cert.pem())?,
        serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
        sa_key: write("sa.key", &sa.serialize_pem())?,
        sa_pub: write("sa.pub", &sa.public_key_pem())?,
        ca_pem: ca_cert.pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    })
}
