//! Plain-Rust types of the plugin contract, with helpers for the usual work.

use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A Kubernetes group/version/kind.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// The GVK of a k8s-openapi (or kube-derived) resource type.
    pub fn of<K: Resource>() -> Self {
        Gvk::new(K::GROUP, K::VERSION, K::KIND)
    }

    /// `group/version` as in an object's apiVersion (`version` alone for the core group).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// A kind of child the plugin may return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildKind {
    /// The child's group/version/kind.
    pub gvk: Gvk,
    /// Whether the kind is cluster-scoped.
    pub cluster_scoped: bool,
}

impl ChildKind {
    /// A namespaced child kind given by its k8s-openapi type.
    pub fn namespaced<K: Resource>() -> Self {
        ChildKind { gvk: Gvk::of::<K>(), cluster_scoped: false }
    }

    /// A cluster-scoped child kind given by its k8s-openapi type.
    pub fn cluster_scoped<K: Resource>() -> Self {
        ChildKind { gvk: Gvk::of::<K>(), cluster_scoped: true }
    }
}

/// Describes an operator plugin.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// Plugin name: a lowercase DNS label.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The kind it reconciles.
    pub parent: Gvk,
    /// Every kind of child it may return.
    pub children: Vec<ChildKind>,
    /// The parent's CustomResourceDefinition, if the plugin owns it.
    pub crd: Option<Value>,
    /// Whether parents get a finalizer and a `finalizing` call before deletion.
    pub finalizer: bool,
}

/// Describes a policy plugin.
#[derive(Clone, Debug)]
pub struct PolicyMetadata {
    /// Policy name: a lowercase DNS label.
    pub name: String,
    /// The policy's version.
    pub version: String,
    /// Child kinds reviewed; empty means every kind.
    pub applies_to: Vec<Gvk>,
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
}

impl Request {
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

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known.
    Unknown,
}

/// A condition the plugin wants on its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// CamelCase type, e.g. `Ready`.
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word saying why.
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

    /// Adds a condition.
    pub fn condition(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
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

/// A policy's decision on one child.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Apply the child as it is.
    Allow,
    /// Apply this object instead.
    Mutate(Value),
    /// Refuse the child, saying why.
    Deny(String),
}

/// Severity of a log line.
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
