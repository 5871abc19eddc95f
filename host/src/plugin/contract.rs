//! The plugin contract in host terms: the plain types of `wasmop-contract` (one definition,
//! shared with the Rust SDK) converted from the WIT bindings, so the rest of the host never
//! touches generated code, plus what only the host needs (the request it sends, the checked
//! answer it acts on).

use std::time::Duration;

use serde_json::{Map, Value};
pub use wasmop_contract::{
    ChildKind, Condition, ConditionStatus, CrdVersion, Gvk, OperatorMetadata, PolicyMetadata, ReadKind, ReadScope,
    Selector, Target, Verdict,
};

use super::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use super::bindings::operator::wasmop::plugin::types as wit_types;

impl From<wit_types::Gvk> for Gvk {
    fn from(g: wit_types::Gvk) -> Self {
        Gvk { group: g.group, version: g.version, kind: g.kind }
    }
}

/// The related objects of one parent: `(selector id, objects)`, in the selectors' order.
pub type RelatedObjects = Vec<(String, Vec<Value>)>;

/// Resolves the selectors a plugin's `related` returned into the objects they pick (the host's
/// caches, or objects given offline).
pub type Pick<'a> = &'a dyn Fn(Vec<Selector>) -> Result<RelatedObjects, super::PluginError>;

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
    /// The related objects, one group per selector the plugin's `related` returned, in its
    /// order: the selector's id and the objects it picked.
    pub related: RelatedObjects,
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
        reads: m
            .reads
            .into_iter()
            .map(|r| ReadKind {
                gvk: r.gvk.into(),
                scope: match r.scope {
                    wit::ReadScope::SameNamespace => ReadScope::SameNamespace,
                    wit::ReadScope::Cluster => ReadScope::Cluster,
                },
                metadata_only: r.metadata_only,
            })
            .collect(),
    };
    (meta, m.crd)
}

impl From<wit::Selector> for Selector {
    fn from(s: wit::Selector) -> Self {
        let target = match s.target {
            wit::Target::Name(name) => Target::Name(name),
            wit::Target::Labels(labels) => Target::Labels(labels),
        };
        Selector { id: s.id, kind: s.kind.into(), namespace: s.namespace, target }
    }
}
