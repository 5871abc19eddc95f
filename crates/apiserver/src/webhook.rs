//! Conversion webhooks of custom resources (`spec.conversion.strategy: Webhook`): the
//! configuration read from a CRD, the `ConversionReview` exchange over HTTPS (the server is
//! verified with the CRD's `caBundle`), and the checks kube-apiserver makes on the answer
//! (k8s.io/apiextensions-apiserver `pkg/apiserver/conversion/webhook_converter.go`), with its
//! error texts.
//!
//! Only `url` client configs can be called: a `service` one needs a cluster's Service network.
//! Every call is bounded by [`TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::error::StatusError;
use crate::meta;

/// How long one webhook call may take. CRDs have no timeout field; kube-apiserver uses 30 s,
/// this server 10 s so a test with a hanging webhook fails sooner.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest webhook answer read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Where a conversion webhook is reached (`spec.conversion.webhook.clientConfig`).
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `url`: called directly.
    Url(String),
    /// `service`: a Service in the cluster, which this server cannot reach.
    Service {
        /// Service namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
}

/// A CRD's webhook conversion settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConversion {
    /// Kind of the custom resources (for error messages).
    pub kind: String,
    /// Where the webhook is.
    pub endpoint: Endpoint,
    /// PEM certificates the webhook's serving certificate must chain to.
    pub ca_bundle: Vec<u8>,
    /// `ConversionReview` version used: the first of `conversionReviewVersions` the server knows.
    pub review_version: String,
    /// Each version's OpenAPI schema: converted objects are pruned to the target's.
    pub schemas: BTreeMap<String, Value>,
}

impl WebhookConversion {
    /// The webhook settings of a CRD whose conversion strategy is `Webhook`.
    pub fn from_crd(crd: &Value) -> Option<WebhookConversion> {
        let conversion = crd.pointer("/spec/conversion")?;
        if conversion.get("strategy").and_then(Value::as_str) != Some("Webhook") {
            return None;
        }
        let webhook = conversion.get("webhook")?;
        let client = webhook.get("clientConfig")?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
        let endpoint = match client.get("url").and_then(Value::as_str) {
            Some(url) => Endpoint::Url(url.to_string()),
            None => Endpoint::Service {
                namespace: s(client.pointer("/service/namespace")),
                name: s(client.pointer("/service/name")),
            },
        };
        let ca = client.get("caBundle").and_then(Value::as_str).unwrap_or("");
        let review_version = review_version(webhook.get("conversionReviewVersions"))?;
        let schemas = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| Some((s(v.get("name")), v.pointer("/schema/openAPIV3Schema")?.clone())))
            .collect();
        Some(WebhookConversion {
            kind: s(crd.pointer("/spec/names/kind")),
            endpoint,
            ca_bundle: base64::engine::general_purpose::STANDARD.decode(ca).unwrap_or_default(),
            review_version,
            schemas,
        })
    }
}

/// The first `ConversionReview` version in the list that the server speaks.
fn review_version(versions: Option<&Value>) -> Option<String> {
    versions?.as_array()?.iter().filter_map(Value::as_str).find(|v| matches!(*v, "v1" | "v1beta1")).map(str::to_string)
}

/// Why a conversion failed; rendered after `conversion webhook for <group/version>, Kind=<Kind> `.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    /// The call, or the review it answered, failed.
    #[error("failed: {0}")]
    Failed(String),
    /// The answer has a different number of objects than were sent.
    #[error("returned {got} objects, expected {want}")]
    Count {
        /// Objects returned.
        got: usize,
        /// Objects sent.
        want: usize,
    },
    /// A returned object is not a valid conversion of the one sent.
    #[error("returned invalid {at}: {detail}")]
    Invalid {
        /// Which object (and part), in kube-apiserver's words.
        at: String,
        /// What is wrong.
        detail: String,
    },
}

/// The `ConversionReview` sent for `objects`.
pub fn review(review_version: &str, uid: &str, desired: &str, objects: &[Value]) -> Value {
    json!({
        "apiVersion": format!("apiextensions.k8s.io/{review_version}"),
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    })
}

/// `group/version, Kind=kind`, as Go prints a GroupVersionKind.
fn gvk(api_version: &str, kind: &str) -> String {
    let (group, version) = crate::resources::split_api_version(api_version);
    format!("{group}/{version}, Kind={kind}")
}

/// The converted objects of a webhook's answer, after the checks of the review itself.
pub fn converted_objects(review_version: &str, uid: &str, raw: &[u8]) -> Result<Vec<Value>, String> {
    let v: Value =
        serde_json::from_slice(raw).map_err(|e| format!("couldn't get version/kind; json parse error: {e}"))?;
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    if review_version == "v1" {
        let got = gvk(&text("/apiVersion"), &text("/kind"));
        let want = gvk("apiextensions.k8s.io/v1", "ConversionReview");
        if got != want {
            return Err(format!("expected webhook response of {want}, got {got}"));
        }
    }
    let response = v.get("response").filter(|r| r.is_object()).ok_or("no response provided")?;
    let got_uid = text("/response/uid");
    if review_version == "v1" && got_uid != uid {
        return Err(format!("expected response.uid={uid:?}, got {got_uid:?}"));
    }
    let status = text("/response/result/status");
    if status != "Success" {
        let message = text("/response/result/message");
        return Err(if message.is_empty() {
            format!("response.result.status was '{status}', not 'Success'")
        } else {
            message
        });
    }
    match response.get("convertedObjects") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(other) => Err(format!("response.convertedObjects must be a list, got {other}")),
    }
}

/// Which check of a returned object failed; picks kube-apiserver's wording.
#[derive(Clone, Copy)]
enum Check {
    Version,
    Identity,
    Metadata,
}

fn at(check: Check, index: usize, list: bool) -> String {
    match (check, list) {
        (Check::Version, false) => "object at index 0".into(),
        (Check::Identity, false) => "object".into(),
        (Check::Metadata, false) => "metadata".into(),
        (Check::Version | Check::Identity, true) => format!("converted object at index {index}"),
        (Check::Metadata, true) => format!("metadata in object at index {index}"),
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Checks one returned object against the one sent and restores its metadata.
fn check_object(original: &Value, converted: Value, desired: &str) -> Result<Value, (Check, String)> {
    let got = str_at(&converted, "/apiVersion");
    if got != desired {
        return Err((Check::Version, format!("invalid groupVersion (expected {desired}, received {got})")));
    }
    let (want_kind, got_kind) = (str_at(original, "/kind"), str_at(&converted, "/kind"));
    if want_kind != got_kind {
        return Err((Check::Version, format!("invalid kind (expected {want_kind}, received {got_kind})")));
    }
    for (field, p) in [("name", "/metadata/name"), ("namespace", "/metadata/namespace"), ("UID", "/metadata/uid")] {
        let (a, b) = (str_at(original, p), str_at(&converted, p));
        if a != b {
            return Err((Check::Identity, format!("must have the same {field}: {a} != {b}")));
        }
    }
    restore_meta(original, converted).map_err(|e| (Check::Metadata, e))
}

/// The converted object with the original's metadata, except labels and annotations, which
/// a webhook may change (as kube-apiserver's `restoreObjectMeta`).
pub fn restore_meta(original: &Value, mut converted: Value) -> Result<Value, String> {
    let returned = match converted.get("metadata") {
        None => return Err("missing metadata in converted object".into()),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(format!("invalid metadata of type {} in converted object", type_name(other))),
    };
    let mut restored = original.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    for field in ["labels", "annotations"] {
        match returned.get(field) {
            None | Some(Value::Null) => {
                restored.remove(field);
            }
            Some(Value::Object(m)) => {
                if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(format!(
                        "metadata.{field}[{k}] must be a string, but is {} in converted object",
                        type_name(v)
                    ));
                }
                restored.insert(field.into(), Value::Object(m.clone()));
            }
            Some(other) => {
                return Err(format!("invalid metadata.{field} of type {} in converted object", type_name(other)));
            }
        }
    }
    converted["metadata"] = Value::Object(restored);
    Ok(converted)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Checks every returned object against the one sent, restores metadata and prunes to the
/// target version's schema.
/// `list` picks kube-apiserver's wording for objects of a list.
pub fn check_converted(
    conv: &WebhookConversion,
    originals: &[Value],
    converted: Vec<Value>,
    desired: &str,
    list: bool,
) -> Result<Vec<Value>, WebhookError> {
    if converted.len() != originals.len() {
        return Err(WebhookError::Count { got: converted.len(), want: originals.len() });
    }
    let schema = conv.schemas.get(crate::resources::split_api_version(desired).1);
    originals
        .iter()
        .zip(converted)
        .enumerate()
        .map(|(i, (original, converted))| {
            let mut out = check_object(original, converted, desired)
                .map_err(|(check, detail)| WebhookError::Invalid { at: at(check, i, list), detail })?;
            if let Some(s) = schema {
                crate::schema::prune(&mut out, &crate::store::strip_meta_props(s), "", &mut Vec::new());
            }
            Ok(out)
        })
        .collect()
}

/// Converts `objects` (none of them in `desired` already; `list` when they are items of a
/// list) with one `ConversionReview`. Failures are the 500 Status kube-apiserver answers with.
pub async fn convert(
    conv: &WebhookConversion,
    objects: &[Value],
    desired: &str,
    list: bool,
) -> Result<Vec<Value>, StatusError> {
    let Some(first) = objects.first() else {
        return Ok(Vec::new());
    };
    let source = gvk(str_at(first, "/apiVersion"), &conv.kind);
    let fail = |e: WebhookError| StatusError::new(500, "", format!("conversion webhook for {source} {e}"));
    let uid = meta::uid();
    let body = review(&conv.review_version, &uid, desired, objects);
    let raw = call(conv, body.to_string().into_bytes()).await.map_err(|e| fail(WebhookError::Failed(e)))?;
    let converted = converted_objects(&conv.review_version, &uid, &raw).map_err(|e| fail(WebhookError::Failed(e)))?;
    check_converted(conv, objects, converted, desired, list).map_err(fail)
}

/// POSTs a review to the webhook and returns the body of a 2xx answer.
async fn call(conv: &WebhookConversion, body: Vec<u8>) -> Result<Bytes, String> {
    let url = match &conv.endpoint {
        Endpoint::Url(url) => url.clone(),
        Endpoint::Service { namespace, name } => {
            return Err(format!(
                "clientConfig.service {namespace}/{name} cannot be resolved: the in-memory API server has no cluster network and supports only clientConfig.url"
            ));
        }
    };
    // Like client-go, the request carries its timeout.
    let url = format!("{url}{}timeout={}s", if url.contains('?') { '&' } else { '?' }, TIMEOUT.as_secs());
    let post = |e: String| format!("Post {url:?}: {e}");
    let uri: http::Uri = url.parse().map_err(|e| post(format!("invalid URL: {e}")))?;
    let exchange = exchange(&uri, &conv.ca_bundle, body);
    let (code, raw) = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(r) => r.map_err(post)?,
        Err(_) => return Err(post(format!("no response within {}s", TIMEOUT.as_secs()))),
    };
    if !(200..300).contains(&code) {
        return Err(status_error(code, &raw));
    }
    Ok(raw)
}

/// The error client-go reports for a non-2xx answer.
fn status_error(code: u16, body: &[u8]) -> String {
    if let Ok(status) = serde_json::from_slice::<Value>(body)
        && status.get("kind").and_then(Value::as_str) == Some("Status")
        && let Some(message) = status.get("message").and_then(Value::as_str).filter(|m| !m.is_empty())
    {
        return message.to_string();
    }
    match code {
        400 => "the server rejected our request for an unknown reason".into(),
        404 => "the server could not find the requested resource".into(),
        500 => format!(
            "an error on the server ({:?}) has prevented the request from succeeding",
            String::from_utf8_lossy(body).trim()
        ),
        503 => "the server is currently unable to handle the request".into(),
        _ => format!("the server responded with the status code {code} but did not return more information"),
    }
}

/// TLS settings trusting only the CRD's `caBundle`.
fn tls_config(ca_bundle: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle) {
        let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("invalid caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One HTTPS request/response over a fresh connection: (status code, body).
async fn exchange(uri: &http::Uri, ca_bundle: &[u8], body: Vec<u8>) -> Result<(u16, Bytes), String> {
    if uri.scheme_str() != Some("https") {
        return Err("only https URLs can be called".into());
    }
    let host = uri.host().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("dial tcp {host}:{port}: connect: connection refused"),
        _ => format!("dial tcp {host}:{port}: {e}"),
    })?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("invalid server name {host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_bundle)?));
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let code = response.status().as_u16();
    let raw = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    Ok((code, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> WebhookConversion {
        WebhookConversion {
            kind: "Gadget".into(),
            endpoint: Endpoint::Url("https://127.0.0.1:1/convert".into()),
            ca_bundle: Vec::new(),
            review_version: "v1".into(),
            schemas: BTreeMap::new(),
        }
    }

    fn original() -> Value {
        json!({"apiVersion": "ex.com/v1alpha1", "kind": "Gadget",
               "metadata": {"name": "g", "namespace": "default", "uid": "u1", "resourceVersion": "7", "labels": {"a": "b"}},
               "spec": {"size": 3}})
    }

    fn answer(uid: &str, objects: Value) -> Vec<u8> {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
               "response": {"uid": uid, "result": {"status": "Success"}, "convertedObjects": objects}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_webhook_settings_from_a_crd() {
        let crd = json!({"spec": {"names": {"kind": "Gadget"},
            "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object"}}}],
            "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v2", "v1beta1", "v1"],
                "clientConfig": {"url": "https://127.0.0.1:9443/convert", "caBundle": "UEVN"}}}}});
        let c = WebhookConversion::from_crd(&crd).unwrap();
        assert_eq!(c.endpoint, Endpoint::Url("https://127.0.0.1:9443/convert".into()));
        assert_eq!(c.review_version, "v1beta1", "the first known review version");
        assert_eq!(c.ca_bundle, b"PEM");
        assert!(c.schemas.contains_key("v1"));
        let none = json!({"spec": {"conversion": {"strategy": "None"}}});
        assert!(WebhookConversion::from_crd(&none).is_none());
    }

    #[test]
    fn review_answers_are_checked_like_kube_apiserver() {
        let ok = answer("u", json!([{"x": 1}]));
        assert_eq!(converted_objects("v1", "u", &ok).unwrap(), vec![json!({"x": 1})]);
        assert_eq!(converted_objects("v1", "other", &ok).unwrap_err(), "expected response.uid=\"other\", got \"u\"");
        let failure = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "response": {"uid": "u", "result": {"status": "Failure", "message": "size too big"}}});
        assert_eq!(converted_objects("v1", "u", failure.to_string().as_bytes()).unwrap_err(), "size too big");
        let bare = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "response": {"uid": "u", "result": {"status": "Failure"}}});
        assert_eq!(
            converted_objects("v1", "u", bare.to_string().as_bytes()).unwrap_err(),
            "response.result.status was 'Failure', not 'Success'"
        );
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Status"});
        assert_eq!(
            converted_objects("v1", "u", wrong_kind.to_string().as_bytes()).unwrap_err(),
            "expected webhook response of apiextensions.k8s.io/v1, Kind=ConversionReview, got /v1, Kind=Status"
        );
        assert!(converted_objects("v1", "u", b"not json").unwrap_err().starts_with("couldn't get version/kind"));
    }

    #[test]
    fn converted_objects_keep_identity_and_metadata() {
        let c = conv();
        let mut good = original();
        good["apiVersion"] = json!("ex.com/v1");
        good["spec"] = json!({"resources": {"size": 3}});
        good["metadata"] =
            json!({"name": "g", "namespace": "default", "uid": "u1", "labels": {"a": "c"}, "generation": 9});
        let out = check_converted(&c, &[original()], vec![good.clone()], "ex.com/v1", false).unwrap();
        assert_eq!(out[0]["metadata"]["resourceVersion"], "7", "metadata restored from the original");
        assert!(out[0]["metadata"].get("generation").is_none());
        assert_eq!(out[0]["metadata"]["labels"]["a"], "c", "labels may change");

        let err =
            |obj: Value| check_converted(&c, &[original()], vec![obj], "ex.com/v1", false).unwrap_err().to_string();
        let mut renamed = good.clone();
        renamed["metadata"]["name"] = json!("h");
        assert_eq!(err(renamed), "returned invalid object: must have the same name: g != h");
        assert_eq!(
            err(original()),
            "returned invalid object at index 0: invalid groupVersion (expected ex.com/v1, received ex.com/v1alpha1)"
        );
        let mut bad_labels = good.clone();
        bad_labels["metadata"]["labels"] = json!("a=b");
        assert_eq!(
            err(bad_labels),
            "returned invalid metadata: invalid metadata.labels of type string in converted object"
        );
        let two = check_converted(&c, &[original()], vec![good.clone(), good], "ex.com/v1", false).unwrap_err();
        assert_eq!(two.to_string(), "returned 2 objects, expected 1");
    }

    #[test]
    fn non_success_codes_read_like_client_go() {
        assert_eq!(status_error(404, b""), "the server could not find the requested resource");
        assert_eq!(
            status_error(500, b"boom\n"),
            "an error on the server (\"boom\") has prevented the request from succeeding"
        );
        let status = json!({"kind": "Status", "message": "denied"}).to_string();
        assert_eq!(status_error(403, status.as_bytes()), "denied");
    }
}
