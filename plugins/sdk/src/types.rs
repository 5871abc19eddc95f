//! Plain-Rust types of the plugin contract, with helpers for the usual work.

use std::collections::BTreeMap;

use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use wasmop_contract::{
    ChildKind, Condition, ConditionStatus, Gvk, LogLevel, OperatorMetadata as Metadata, PolicyMetadata, ReadKind,
    ReadScope, Selector, Target, Verdict,
};

/// [`Gvk`] of a k8s-openapi (or kube-derived) type: `Gvk::of::<Deployment>()`.
pub trait GvkOf {
    /// The GVK of `K`.
    fn of<K: Resource>() -> Gvk;
}

impl GvkOf for Gvk {
    fn of<K: Resource>() -> Gvk {
        Gvk::new(K::GROUP, K::VERSION, K::KIND)
    }
}

/// [`ChildKind`] of a k8s-openapi type: `ChildKind::namespaced::<Deployment>()`.
pub trait ChildKindOf {
    /// A namespaced child kind.
    fn namespaced<K: Resource>() -> ChildKind;
    /// A cluster-scoped child kind.
    fn cluster_scoped<K: Resource>() -> ChildKind;
}

/// [`ReadKind`] of a k8s-openapi type: `ReadKind::of::<ConfigMap>()`.
pub trait ReadKindOf {
    /// `K`, read in the parent's namespace with bodies (chain `.metadata_only()` or use
    /// [`ReadKind::cluster`] otherwise).
    fn of<K: Resource>() -> ReadKind;
}

impl ReadKindOf for ReadKind {
    fn of<K: Resource>() -> ReadKind {
        ReadKind::same_namespace(Gvk::of::<K>())
    }
}

impl ChildKindOf for ChildKind {
    fn namespaced<K: Resource>() -> ChildKind {
        ChildKind { gvk: Gvk::of::<K>(), cluster_scoped: false }
    }

    fn cluster_scoped<K: Resource>() -> ChildKind {
        ChildKind { gvk: Gvk::of::<K>(), cluster_scoped: true }
    }
}

/// One reconcile of one parent.
#[derive(Clone, Debug)]
pub struct Request {
    /// The parent as stored in the cluster.
    pub parent: Value,
    /// Its children as they exist now.
    pub children: Vec<Value>,
    /// True when the parent is being deleted (only for plugins with a finalizer).
    pub finalizing: bool,
    /// The operator's settings for this plugin, if any.
    pub settings: Option<String>,
    /// The related objects, by the id of the selector that picked them (see
    /// [`Operator::related`](crate::Operator::related)), each ordered by namespace and name.
    pub related: BTreeMap<String, Vec<Value>>,
}

impl Request {
    /// A request for `parent` with no children, settings or related objects: the start of a
    /// native test's request.
    pub fn new(parent: Value) -> Self {
        Request { parent, children: Vec::new(), finalizing: false, settings: None, related: BTreeMap::new() }
    }

    /// The same request with these observed children.
    #[must_use]
    pub fn with_children(mut self, children: Vec<Value>) -> Self {
        self.children = children;
        self
    }

    /// The same request with these settings.
    #[must_use]
    pub fn with_settings(mut self, settings: &str) -> Self {
        self.settings = Some(settings.into());
        self
    }

    /// The same request with the objects the selector `id` picked.
    #[must_use]
    pub fn with_related(mut self, id: &str, objects: Vec<Value>) -> Self {
        self.related.insert(id.into(), objects);
        self
    }

    /// Decodes the parent into a typed struct (e.g. a `kube::CustomResource`). A parent that
    /// does not fit the type is an [`Error::Invalid`] naming the field serde complained about.
    pub fn parent_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.parent).map_err(|e| Error::Invalid(format!("{}: {e}", self.parent_ref())))
    }

    /// `namespace/name` (or `name`) of the parent, for messages.
    pub fn parent_ref(&self) -> String {
        let meta = &self.parent["metadata"];
        match (meta["namespace"].as_str(), meta["name"].as_str()) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.to_string(),
            _ => "<unnamed parent>".to_string(),
        }
    }

    /// The objects the selector `id` picked (none if it picked none or does not exist).
    pub fn related(&self, id: &str) -> &[Value] {
        self.related.get(id).map_or(&[], Vec::as_slice)
    }

    /// The objects the selector `id` picked, decoded as `K` (e.g. `ConfigMap`); one that does
    /// not decode is an [`Error::Retry`] naming it.
    pub fn related_as<K: DeserializeOwned>(&self, id: &str) -> Result<Vec<K>, Error> {
        self.related(id)
            .iter()
            .map(|obj| {
                K::deserialize(obj).map_err(|e| {
                    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
                    Error::Retry(format!("related object {name} (selector {id}) does not decode: {e}"))
                })
            })
            .collect()
    }

    /// The observed child of type `K` named `name`, if it exists and decodes.
    pub fn child<K: Resource + DeserializeOwned>(&self, name: &str) -> Option<K> {
        self.children
            .iter()
            .filter(|c| is_kind::<K>(c) && c["metadata"]["name"].as_str() == Some(name))
            .find_map(|c| K::deserialize(c).ok())
    }

    /// Every observed child of type `K` that decodes.
    pub fn children_of<K: Resource + DeserializeOwned>(&self) -> Vec<K> {
        self.children.iter().filter(|c| is_kind::<K>(c)).filter_map(|c| K::deserialize(c).ok()).collect()
    }
}

fn is_kind<K: Resource>(obj: &Value) -> bool {
    obj["apiVersion"].as_str() == Some(K::API_VERSION) && obj["kind"].as_str() == Some(K::KIND)
}

/// The plugin's answer for one parent.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Desired children, as JSON objects.
    pub children: Vec<Value>,
    /// Fields for the parent's `.status`.
    pub status: Option<Value>,
    /// Conditions for the parent.
    pub conditions: Vec<Condition>,
    /// Ask to be called again after this many seconds.
    pub requeue_after_seconds: Option<u32>,
    /// When finalizing: cleanup is complete.
    pub finalized: bool,
}

impl Response {
    /// An empty answer: no children, no status.
    pub fn new() -> Self {
        Response::default()
    }

    /// Adds a desired child (any k8s-openapi type, which serialises with apiVersion and kind).
    pub fn child<K: Serialize>(mut self, child: &K) -> Result<Self, Error> {
        let value = serde_json::to_value(child).map_err(|e| Error::Retry(format!("cannot encode child: {e}")))?;
        self.children.push(value);
        Ok(self)
    }

    /// Sets the status fields (any serialisable struct or JSON object).
    pub fn status<S: Serialize>(mut self, status: &S) -> Result<Self, Error> {
        let value = serde_json::to_value(status).map_err(|e| Error::Retry(format!("cannot encode status: {e}")))?;
        self.status = Some(value);
        Ok(self)
    }

    /// Adds a condition, checked as the host checks it (a CamelCase type and reason, a message
    /// within 32 KiB, no type twice), so a native test fails where the host would refuse it.
    pub fn condition(mut self, condition: Condition) -> Result<Self, Error> {
        add_condition(&mut self.conditions, condition)?;
        Ok(self)
    }

    /// Asks to be reconciled again after `seconds`.
    pub fn requeue_after(mut self, seconds: u32) -> Self {
        self.requeue_after_seconds = Some(seconds);
        self
    }

    /// Marks finalization complete.
    pub fn finalized(mut self) -> Self {
        self.finalized = true;
        self
    }
}

/// Adds `condition` to `conditions` and checks them all as the host does: the one rule for
/// [`Response::condition`] and the typed path's `EncodedResponse::condition`.
pub(crate) fn add_condition(conditions: &mut Vec<Condition>, condition: Condition) -> Result<(), Error> {
    conditions.push(condition);
    wasmop_contract::check_conditions(conditions)
        .map_err(|(type_, reason)| Error::Retry(format!("condition {type_:?}: {reason}")))
}

/// Why a reconcile produced no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The spec cannot be satisfied; the host will not retry until the spec changes.
    Invalid(String),
    /// A transient problem; the host retries with backoff.
    Retry(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Retry(m) => write!(f, "retry: {m}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_the_host_would_refuse_fails_natively() {
        let err = Response::new().condition(Condition::ready(true, "not camel case", "")).unwrap_err();
        assert!(matches!(&err, Error::Retry(m) if m.contains("CamelCase")), "{err}");
        let twice = Response::new().condition(Condition::ready(true, "A", "")).unwrap();
        assert!(twice.condition(Condition::ready(false, "B", "")).is_err());
    }
}
