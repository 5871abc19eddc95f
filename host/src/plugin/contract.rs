//! The plugin contract in host terms: plain Rust types converted from the WIT bindings, so the
//! rest of the host never touches generated code.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use super::bindings::operator::wasmop::plugin::types as wit_types;

/// A Kubernetes group/version/kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Gvk {
    /// API group; "" for the core group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl Gvk {
    /// Builds a GVK.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Gvk { group: group.into(), version: version.into(), kind: kind.into() }
    }

    /// The apiVersion string: `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether `obj` (a JSON object) has this apiVersion and kind.
    pub fn matches(&self, obj: &Value) -> bool {
        obj["kind"].as_str() == Some(self.kind.as_str()) && obj["apiVersion"].as_str() == Some(&self.api_version())
    }

    /// Parses an apiVersion and kind.
    pub fn from_api_version(api_version: &str, kind: &str) -> Self {
        match api_version.split_once('/') {
            Some((group, version)) => Gvk::new(group, version, kind),
            None => Gvk::new("", api_version, kind),
        }
    }
}

impl fmt::Display for Gvk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

impl From<wit_types::Gvk> for Gvk {
    fn from(g: wit_types::Gvk) -> Self {
        Gvk { group: g.group, version: g.version, kind: g.kind }
    }
}

/// A kind of child a plugin may return.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildKind {
    /// Group/version/kind.
    pub gvk: Gvk,
    /// Whether it is cluster-scoped.
    pub cluster_scoped: bool,
}

/// What an operator plugin says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorMetadata {
    /// Plugin name (a DNS label).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// The kind it reconciles.
    pub parent: Gvk,
    /// The kinds of children it may return.
    pub children: Vec<ChildKind>,
    /// The parent's CRD, if the plugin ships one.
    pub crd: Option<Value>,
    /// Whether parents get `wasmop.dev/finalizer`.
    pub finalizer: bool,
}

impl OperatorMetadata {
    /// The declared child kind matching `gvk`, if any.
    pub fn child_kind(&self, gvk: &Gvk) -> Option<&ChildKind> {
        self.children.iter().find(|c| &c.gvk == gvk)
    }

    /// The versions of the parent kind its CRD defines, in the CRD's order (empty without a
    /// CRD).
    pub fn crd_versions(&self) -> Vec<CrdVersion> {
        let versions = self.crd.as_ref().and_then(|crd| crd["spec"]["versions"].as_array());
        versions.into_iter().flatten().map(CrdVersion::from_crd).collect()
    }

    /// The CRD's storage version, if it has a CRD.
    pub fn storage_version(&self) -> Option<String> {
        self.crd_versions().into_iter().find(|v| v.storage).map(|v| v.name)
    }
}

/// One version of a parent kind, as its CRD defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrdVersion {
    /// The version, e.g. `v1`.
    pub name: String,
    /// Whether the API server serves it.
    pub served: bool,
    /// Whether objects are stored in it (exactly one version is).
    pub storage: bool,
    /// The warning clients get when they use it, if it is deprecated.
    pub deprecation_warning: Option<String>,
}

impl CrdVersion {
    fn from_crd(v: &Value) -> CrdVersion {
        let deprecated = v["deprecated"].as_bool().unwrap_or(false);
        CrdVersion {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            served: v["served"].as_bool().unwrap_or(false),
            storage: v["storage"].as_bool().unwrap_or(false),
            deprecation_warning: deprecated
                .then(|| v["deprecationWarning"].as_str().map_or_else(|| "deprecated".to_string(), str::to_string)),
        }
    }
}

/// What a policy plugin says about itself.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetadata {
    /// Policy name (a DNS label).
    pub name: String,
    /// Policy version.
    pub version: String,
    /// Kinds reviewed; empty means all.
    pub applies_to: Vec<Gvk>,
}

impl PolicyMetadata {
    /// Whether this policy reviews children of `gvk`.
    pub fn applies_to(&self, gvk: &Gvk) -> bool {
        self.applies_to.is_empty() || self.applies_to.contains(gvk)
    }
}

/// One reconcile of one parent, as the host asks it.
#[derive(Clone, Debug)]
pub struct ReconcileRequest {
    /// The parent object.
    pub parent: Value,
    /// Its observed children.
    pub children: Vec<Value>,
    /// Whether the parent is being deleted.
    pub finalizing: bool,
    /// Settings for the plugin.
    pub settings: Option<String>,
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Not known.
    Unknown,
}

impl ConditionStatus {
    /// The Kubernetes spelling: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A condition a plugin wants on its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// CamelCase type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl From<wit_types::Condition> for Condition {
    fn from(c: wit_types::Condition) -> Self {
        let status = match c.status {
            wit_types::ConditionStatus::True => ConditionStatus::True,
            wit_types::ConditionStatus::False => ConditionStatus::False,
            wit_types::ConditionStatus::Unknown => ConditionStatus::Unknown,
        };
        Condition { type_: c.type_, status, reason: c.reason, message: c.message }
    }
}

/// A plugin's checked answer for one parent: what the host should make true.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Desired children, each checked and placed in the right namespace.
    pub children: Vec<Value>,
    /// Status fields for the parent.
    pub status: Option<Map<String, Value>>,
    /// Conditions for the parent.
    pub conditions: Vec<Condition>,
    /// Requeue hint.
    pub requeue_after: Option<Duration>,
    /// Finalization complete.
    pub finalized: bool,
}

/// A policy's decision on one child.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Apply as is.
    Allow,
    /// Apply this object instead.
    Mutate(Value),
    /// Refuse.
    Deny(String),
}

pub(crate) fn metadata_from_wit(m: wit::OperatorMetadata) -> (OperatorMetadata, Option<String>) {
    let meta = OperatorMetadata {
        name: m.name,
        version: m.version,
        parent: m.parent.into(),
        children: m
            .children
            .into_iter()
            .map(|c| ChildKind { gvk: c.gvk.into(), cluster_scoped: c.cluster_scoped })
            .collect(),
        crd: None,
        finalizer: m.finalizer,
    };
    (meta, m.crd)
}
