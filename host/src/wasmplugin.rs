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
/// Annotation asking the rollout in progress to go on (`promote`) or to go back to the stable
/// revision (`abort`); a suffix after `:` (a timestamp, as `wasmop rollout` writes) makes the
/// same request again. Each value is acted on once (`status.rollout.lastHandledAction`).
pub const ROLLOUT_ACTION_ANNOTATION: &str = "wasmop.dev/rollout-action";

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
    /// How a new revision of an operator plugin replaces the serving one: by steps of a share
    /// of parents, with automatic rollback. Without it a new revision serves every parent at
    /// once. (A policy's new revision always replaces the old one at once.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// A staged rollout: steps of a share of parents, each held for a pause, and the analysis that
/// rolls back a canary failing too often.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Rising shares ending at 100, e.g. `[{percent: 5, pause: 2m}, {percent: 50, pause: 5m},
    /// {percent: 100}]`. A step without a pause waits for `wasmop rollout promote`.
    pub steps: Vec<RolloutStep>,
    /// Parents matching this label selector are on the canary from the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// When to roll back (default: more than 1% of at least 50 canary reconciles failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
}

/// One step of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// The share of parents the canary serves, 1–100.
    pub percent: u32,
    /// How long to hold the step (`30s`, `2m`, `1h30m`); none waits for a manual promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// The failure analysis of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// Roll back when more than this fraction of the canary's reconciles fail (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<f64>,
    /// Judge only after the canary made this many reconciles (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_reconciles: Option<u64>,
}

impl RolloutSpec {
    /// The validated plan, or what to fix.
    pub fn plan(&self) -> Result<crate::rollout::Plan, String> {
        let steps = self
            .steps
            .iter()
            .map(|s| {
                let pause = s.pause.as_deref().map(crate::rollout::parse_pause).transpose()?;
                Ok(crate::rollout::Step { percent: s.percent, pause })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let plan = crate::rollout::Plan::new(steps).map_err(|e| e.to_string())?;
        let analysis =
            self.analysis.clone().unwrap_or(RolloutAnalysis { max_failure_rate: None, min_reconciles: None });
        plan.analysis(
            analysis.max_failure_rate.unwrap_or(crate::rollout::DEFAULT_MAX_FAILURE_RATE),
            analysis.min_reconciles.unwrap_or(crate::rollout::DEFAULT_MIN_RECONCILES),
        )
        .map_err(|e| e.to_string())
    }
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
    /// The staged rollout of the newest revision, while it runs and after it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Where a staged rollout stands. Written by the status writer only; every replica serves
/// the share it says.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Progressing`, `Complete`, `RolledBack` or `Aborted`.
    pub phase: String,
    /// The spec generation rolled out.
    pub generation: i64,
    /// The revision serving the other parents (and every parent again after a rollback).
    pub stable_revision: String,
    /// The revision rolled out.
    pub canary_revision: String,
    /// Digest of the canary's artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_digest: Option<String>,
    /// The step (0-based) of `spec.rollout.steps`.
    pub step: u32,
    /// The share of parents the canary serves now.
    pub percent: u32,
    /// When the step began (RFC 3339).
    pub step_started_at: String,
    /// The stable revision's reconciles and failures since the rollout began (as the status
    /// writer measured them).
    pub stable: RevisionFigures,
    /// The canary's.
    pub canary: RevisionFigures,
    /// What happened last, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The last `wasmop.dev/rollout-action` annotation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_action: Option<String>,
    /// Where the stable revision came from, so a replica that starts during the rollout
    /// fetches it again to serve the other parents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_source: Option<StableSource>,
}

/// The source of a rollout's stable revision: an OCI ref pinned to its digest, or a ConfigMap
/// key, with the settings it served with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StableSource {
    /// The component.
    pub source: PluginSource,
    /// Its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub settings: Option<serde_json::Value>,
}

/// Reconciles and failures of one revision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionFigures {
    /// Reconciles made.
    pub reconciles: u64,
    /// Of which failed (plugin failures, child conflicts, children refused by the API server).
    pub failures: u64,
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

/// A `metav1.LabelSelector`: `matchLabels` and `matchExpressions`.
fn label_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {"type": "array", "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            }},
        },
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
    fn a_rollout_spec_is_a_plan_with_the_default_analysis_or_says_what_to_fix() {
        let spec = |steps: serde_json::Value| -> RolloutSpec {
            serde_json::from_value(serde_json::json!({"steps": steps})).unwrap()
        };
        let plan = spec(serde_json::json!([{"percent": 5, "pause": "2m"}, {"percent": 100}])).plan().unwrap();
        assert_eq!(plan.steps()[0].pause, Some(std::time::Duration::from_secs(120)));
        assert_eq!(plan.max_failure_rate(), crate::rollout::DEFAULT_MAX_FAILURE_RATE);
        let no_end = spec(serde_json::json!([{"percent": 50}])).plan().unwrap_err();
        assert!(no_end.contains("end with {percent: 100}"), "{no_end}");
        let bad_pause = spec(serde_json::json!([{"percent": 100, "pause": "soon"}])).plan().unwrap_err();
        assert!(bad_pause.contains("\"soon\" is not a duration"), "{bad_pause}");
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
            rollout: None,
        };
        assert!(spec(true, false).check().is_ok() && spec(false, true).check().is_ok());
        assert!(spec(false, false).check().unwrap_err().contains("names no source"));
        assert!(spec(true, true).check().unwrap_err().contains("both"));
    }
}
