//! The plugin contract's plain types, shared by the wasmop host and the Rust SDK: one definition,
//! so what an author builds natively is what the host checks. Serde only; builds for
//! `wasm32-wasip2` as well as natively. The WIT (`wit/plugin.wit`) stays the source of truth for
//! the wire; these are its Rust shapes, with the name rules ([`names`]) and the answer checks
//! ([`Condition::check`], [`check_conditions`]) both sides apply.

pub mod names;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Longest condition message the API server accepts (metav1.Condition validation).
pub const MAX_CONDITION_MESSAGE: usize = 32 * 1024;

/// A Kubernetes group/version/kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Gvk {
    /// API group; "" for the core group.
    pub group: String,
    /// Version within the group.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl Gvk {
    /// Builds a GVK from its parts.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Gvk { group: group.into(), version: version.into(), kind: kind.into() }
    }

    /// `group/version` as in an object's apiVersion (`version` alone for the core group).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether `obj` (a JSON object) is of this kind and version.
    pub fn matches(&self, obj: &Value) -> bool {
        obj["kind"].as_str() == Some(self.kind.as_str()) && obj["apiVersion"].as_str() == Some(&self.api_version())
    }

    /// The GVK of an object's `apiVersion` and `kind`.
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
    /// Plugin name: a lowercase DNS label.
    pub name: String,
    /// Plugin version (semver recommended).
    pub version: String,
    /// The kind it reconciles, at the version `reconcile` receives.
    pub parent: Gvk,
    /// Every kind of child it may return.
    pub children: Vec<ChildKind>,
    /// The parent's CustomResourceDefinition (all its versions), if the plugin owns it.
    pub crd: Option<Value>,
    /// Whether parents get `wasmop.dev/finalizer` and a `finalizing` call before deletion.
    pub finalizer: bool,
    /// Every kind it reads through [`Selector`]s (contract 0.3; empty for older plugins).
    pub reads: Vec<ReadKind>,
}

impl OperatorMetadata {
    /// The declared child kind matching `gvk`, if any.
    pub fn child_kind(&self, gvk: &Gvk) -> Option<&ChildKind> {
        self.children.iter().find(|c| &c.gvk == gvk)
    }

    /// Whether `other` has the shape a running controller is built from: the same parent kind,
    /// child kinds, finalizer, CRD and read kinds (in any order). A revision of the same shape
    /// can serve through a controller's watches and caches: swapped in on a reload, or beside
    /// it as a canary.
    pub fn same_shape(&self, other: &OperatorMetadata) -> bool {
        let children = |m: &OperatorMetadata| m.children.iter().map(|c| c.gvk.clone()).collect::<BTreeSet<_>>();
        let reads_of = |a: &OperatorMetadata, b: &OperatorMetadata| a.reads.iter().all(|r| b.reads.contains(r));
        self.parent == other.parent
            && children(self) == children(other)
            && self.finalizer == other.finalizer
            && self.crd == other.crd
            && self.reads.len() == other.reads.len()
            && reads_of(self, other)
            && reads_of(other, self)
    }

    /// The declared read kind matching `gvk`, if any.
    pub fn read_kind(&self, gvk: &Gvk) -> Option<&ReadKind> {
        self.reads.iter().find(|r| &r.gvk == gvk)
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

/// Where a plugin may look for objects of a kind it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadScope {
    /// Only the parent's namespace.
    SameNamespace,
    /// Any namespace, or a cluster-scoped kind.
    Cluster,
}

/// A kind a plugin reads besides its parent and children: the host watches it and the operator
/// needs `get`, `list` and `watch` on it in the scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadKind {
    /// Group/version/kind.
    pub gvk: Gvk,
    /// Where selectors of it may look.
    pub scope: ReadScope,
    /// Whether the plugin gets metadata only (no body, so no Secret data).
    pub metadata_only: bool,
}

impl ReadKind {
    /// A kind read in the parent's namespace, bodies included.
    pub fn same_namespace(gvk: Gvk) -> Self {
        ReadKind { gvk, scope: ReadScope::SameNamespace, metadata_only: false }
    }

    /// A kind read in any namespace (or a cluster-scoped kind), bodies included.
    pub fn cluster(gvk: Gvk) -> Self {
        ReadKind { gvk, scope: ReadScope::Cluster, metadata_only: false }
    }

    /// The same kind, read as metadata only.
    #[must_use]
    pub fn metadata_only(mut self) -> Self {
        self.metadata_only = true;
        self
    }
}

/// How a [`Selector`] picks objects of its kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// The object of this name.
    Name(String),
    /// Every object whose labels match this label selector (`kubectl get -l` syntax).
    Labels(String),
}

/// Objects one parent reads, of one declared kind: what a plugin's `related` returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Selector {
    /// The plugin's name for the selection; the request groups objects under it.
    pub id: String,
    /// The kind (a declared [`ReadKind`]).
    pub kind: Gvk,
    /// Where to look; `None`: the parent's namespace (scope same-namespace) or everywhere
    /// (scope cluster).
    pub namespace: Option<String>,
    /// By name or by labels.
    pub target: Target,
}

impl Selector {
    /// The object of `kind` named `name`, grouped under `id`.
    pub fn by_name(id: &str, kind: Gvk, name: &str) -> Self {
        Selector { id: id.into(), kind, namespace: None, target: Target::Name(name.into()) }
    }

    /// The objects of `kind` whose labels match `selector`, grouped under `id`.
    pub fn by_labels(id: &str, kind: Gvk, selector: &str) -> Self {
        Selector { id: id.into(), kind, namespace: None, target: Target::Labels(selector.into()) }
    }

    /// The same selection, looking in `namespace`.
    #[must_use]
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

/// What a policy plugin says about itself.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetadata {
    /// Policy name: a lowercase DNS label.
    pub name: String,
    /// Policy version.
    pub version: String,
    /// Child kinds reviewed; empty means every kind.
    pub applies_to: Vec<Gvk>,
}

impl PolicyMetadata {
    /// Whether this policy reviews children of `gvk`.
    pub fn applies_to(&self, gvk: &Gvk) -> bool {
        self.applies_to.is_empty() || self.applies_to.contains(gvk)
    }
}

/// Status of a condition, as in metav1.Condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known.
    Unknown,
}

impl ConditionStatus {
    /// `True`, `False` or `Unknown`, as the API stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A condition a plugin wants on its parent; the host adds `observedGeneration` and
/// `lastTransitionTime`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// CamelCase type, e.g. `Ready` or `example.com/Synced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word saying why, e.g. `Progressing`.
    pub reason: String,
    /// A sentence for humans.
    pub message: String,
}

impl Condition {
    /// A condition of the given type.
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        Condition { type_: type_.into(), status, reason: reason.into(), message: message.into() }
    }

    /// The `Ready` condition: true or false with a reason and message.
    pub fn ready(ready: bool, reason: &str, message: impl Into<String>) -> Self {
        let status = if ready { ConditionStatus::True } else { ConditionStatus::False };
        Condition::new("Ready", status, reason, message)
    }

    /// What the API server would refuse in this condition, as the host reports it.
    pub fn check(&self) -> Result<(), String> {
        if !names::is_condition_type(&self.type_) {
            return Err("type must be a CamelCase name such as Ready".into());
        }
        if !names::is_condition_reason(&self.reason) {
            return Err(format!("reason {:?} must be one CamelCase word such as Progressing", self.reason));
        }
        if self.message.len() > MAX_CONDITION_MESSAGE {
            return Err(format!("message is longer than {MAX_CONDITION_MESSAGE} bytes"));
        }
        Ok(())
    }
}

/// Checks every condition and that no type is given twice; on failure, the offending condition's
/// type and what is wrong.
pub fn check_conditions(conditions: &[Condition]) -> Result<(), (String, String)> {
    let mut seen = std::collections::HashSet::new();
    for c in conditions {
        c.check().map_err(|reason| (c.type_.clone(), reason))?;
        if !seen.insert(c.type_.as_str()) {
            return Err((c.type_.clone(), "returned twice".into()));
        }
    }
    Ok(())
}

/// A policy's decision on one child.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Apply the child as it is.
    Allow,
    /// Apply this object instead (same apiVersion, kind, name and namespace).
    Mutate(Value),
    /// Refuse the child, saying why and what to change.
    Deny(String),
}

/// Severity of a log line a plugin writes through the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// A failure.
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_are_checked_as_the_api_server_would() {
        assert!(Condition::ready(true, "Available", "ok").check().is_ok());
        assert!(Condition::ready(true, "not ready", "x").check().unwrap_err().contains("CamelCase"));
        let twice = [Condition::ready(true, "A", ""), Condition::ready(false, "B", "")];
        assert_eq!(check_conditions(&twice).unwrap_err(), ("Ready".into(), "returned twice".into()));
    }

    #[test]
    fn the_same_shape_means_the_same_kinds_whatever_their_order() {
        let meta = |children: &[&str], reads: Vec<ReadKind>| OperatorMetadata {
            name: "x".into(),
            version: "1".into(),
            parent: Gvk::new("g.io", "v1", "K"),
            children: children
                .iter()
                .map(|k| ChildKind { gvk: Gvk::new("", "v1", k), cluster_scoped: false })
                .collect(),
            crd: None,
            finalizer: false,
            reads,
        };
        let cm = ReadKind::same_namespace(Gvk::new("", "v1", "ConfigMap"));
        let secret = ReadKind::same_namespace(Gvk::new("", "v1", "Secret")).metadata_only();
        let a = meta(&["ConfigMap", "Service"], vec![cm.clone(), secret.clone()]);
        assert!(a.same_shape(&meta(&["Service", "ConfigMap"], vec![secret.clone(), cm.clone()])));
        assert!(!a.same_shape(&meta(&["ConfigMap", "Service"], vec![cm.clone()])), "a read kind fewer");
        let body = ReadKind::same_namespace(Gvk::new("", "v1", "Secret"));
        assert!(!a.same_shape(&meta(&["ConfigMap", "Service"], vec![cm, body])), "the Secret's bodies now");
    }

    #[test]
    fn crd_versions_and_storage() {
        let meta = OperatorMetadata {
            name: "x".into(),
            version: "1".into(),
            parent: Gvk::new("g.io", "v1", "K"),
            children: vec![],
            crd: Some(json!({"spec": {"versions": [
                {"name": "v1", "served": true, "storage": true},
                {"name": "v0", "served": true, "deprecated": true, "deprecationWarning": "use v1"},
            ]}})),
            finalizer: false,
            reads: vec![],
        };
        assert_eq!(meta.storage_version().as_deref(), Some("v1"));
        assert_eq!(meta.crd_versions()[1].deprecation_warning.as_deref(), Some("use v1"));
        assert!(Gvk::new("g.io", "v1", "K").matches(&json!({"apiVersion": "g.io/v1", "kind": "K"})));
    }
}
