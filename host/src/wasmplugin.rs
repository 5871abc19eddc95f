//! The `WasmPlugin` resource (`wasmop.dev/v1alpha1`, cluster-scoped): a plugin delivered to a
//! running cluster from an OCI registry (by digest) or a ConfigMap, instead of a file baked
//! into the image. The catalog follows these objects like files of the plugins directory
//! (see `catalog::cluster`); this module holds the types and their CRD.

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the spec's current generation serves.
pub const READY: &str = "Ready";
/// Condition type: an older revision serves because the newest cannot.
pub const DEGRADED: &str = "Degraded";

/// What a `WasmPlugin` asks for.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "wasmop.dev",
    version = "v1alpha1",
    kind = "WasmPlugin",
    status = "WasmPluginStatus",
    shortname = "wp",
    category = "wasmop",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Kinds","type":"string","jsonPath":".status.kinds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(oldSelf.mode) && oldSelf.mode == 'monitor') || !has(self.mode) || self.mode == 'protect'"
).message("a protecting policy cannot go back to monitor mode: delete the WasmPlugin and create it again"))]
pub struct WasmPluginSpec {
    /// Where the component comes from: exactly one of `oci` and `configMap`.
    pub source: PluginSource,
    /// Settings passed to the plugin on every call (a policy validates them at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub settings: Option<serde_json::Value>,
    /// For a policy: `protect` (default) enforces its verdicts; `monitor` records them on each
    /// parent (condition `PolicyCompliant`, Events) and applies the children anyway. Monitor to
    /// protect is allowed; protect to monitor needs the object re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::policy::Mode>,
}

/// Where a `WasmPlugin`'s component comes from. The API server refuses a source naming none or
/// both (a CEL rule), so `kubectl apply` says so at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.oci) != has(self.configMap)")
    .message("set exactly one of spec.source.oci and spec.source.configMap"))]
pub struct PluginSource {
    /// An OCI artifact (CNCF Wasm layout), by tag or digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    /// A key of a ConfigMap in the operator's namespace (gzip-compressed content accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
}

/// An OCI artifact source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OciSource {
    /// `REGISTRY/REPOSITORY@sha256:DIGEST` (pinned) or `REGISTRY/REPOSITORY:TAG` (resolved to a
    /// digest once per spec generation and recorded in `status.resolved`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// A `kubernetes.io/dockerconfigjson` Secret in the operator's namespace with the
    /// registry's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<LocalRef>,
}

/// A ConfigMap key source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// The ConfigMap, in the operator's namespace.
    pub name: String,
    /// The key of `binaryData` (or `data`) holding the component, raw or gzip-compressed.
    pub key: String,
}

/// An object in the operator's namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct LocalRef {
    /// Its name.
    pub name: String,
}

/// What the operator reports about a `WasmPlugin`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginStatus {
    /// The spec generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PluginCondition>,
    /// Digest of the artifact serving (`sha256:…`; for a ConfigMap, of its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The content-hash revision serving: the one its children carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The parent kinds it serves (`Kind.group`); empty for a policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// The digest a tag resolved to, recorded once per spec generation so every replica pulls
    /// the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolved>,
}

/// A tag resolved to a digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The reference as written in the spec.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The spec generation it was resolved for.
    pub generation: i64,
    /// What it resolved to.
    pub digest: String,
}

/// A status condition (the fields of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginCondition {
    /// `Ready` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What happened and what to do.
    pub message: String,
    /// The generation it was computed for.
    pub observed_generation: i64,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Any JSON object, kept as given.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The `WasmPlugin` CustomResourceDefinition, as `deploy/` installs it.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    WasmPlugin::crd()
}

/// The one source a valid spec names.
#[derive(Clone, Copy, Debug)]
pub enum SourceRef<'a> {
    /// An OCI artifact.
    Oci(&'a OciSource),
    /// A ConfigMap key.
    ConfigMap(&'a ConfigMapSource),
}

impl WasmPluginSpec {
    /// The source the spec names; refuses a spec that names none or both.
    pub fn source(&self) -> Result<SourceRef<'_>, String> {
        self.check()?;
        match (&self.source.oci, &self.source.config_map) {
            (Some(oci), _) => Ok(SourceRef::Oci(oci)),
            (None, Some(config_map)) => Ok(SourceRef::ConfigMap(config_map)),
            (None, None) => Err("spec.source names no source".into()),
        }
    }

    /// Refuses a spec that names no source or both.
    pub fn check(&self) -> Result<(), String> {
        match (&self.source.oci, &self.source.config_map) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (None, None) => Err("spec.source names no source; set spec.source.oci.ref or spec.source.configMap".into()),
            (Some(_), Some(_)) => Err("spec.source names both oci and configMap; keep one of the two".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_cluster_scoped_with_a_status_subresource_and_free_settings() {
        let crd = serde_json::to_value(crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "wasmplugins.wasmop.dev");
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["settings"]["x-kubernetes-preserve-unknown-fields"], true, "{}", spec["settings"]);
        let rules = &spec["source"]["x-kubernetes-validations"];
        assert_eq!(rules[0]["rule"], "has(self.oci) != has(self.configMap)", "{}", spec["source"]);
        assert_eq!(spec["mode"]["enum"], serde_json::json!(["protect", "monitor"]), "{}", spec["mode"]);
        let transition = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"];
        assert!(transition[0]["rule"].as_str().is_some_and(|r| r.contains("oldSelf.mode")), "{transition}");
    }

    #[test]
    fn a_spec_needs_exactly_one_source() {
        let spec = |oci: bool, cm: bool| WasmPluginSpec {
            source: PluginSource {
                oci: oci.then(|| OciSource { reference: "r/p:v1".into(), pull_secret_ref: None }),
                config_map: cm.then(|| ConfigMapSource { name: "n".into(), key: "k".into() }),
            },
            settings: None,
            mode: None,
        };
        assert!(spec(true, false).check().is_ok() && spec(false, true).check().is_ok());
        assert!(spec(false, false).check().unwrap_err().contains("names no source"));
        assert!(spec(true, true).check().unwrap_err().contains("both"));
    }
}
