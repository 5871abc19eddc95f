//! Conversions between the SDK's types and the JSON strings that cross the WIT boundary.
//!
//! The export macros call these; [`reconcile_json`] is the same path without WebAssembly, so a
//! native build (tests, benchmarks) pays exactly the decoding and encoding a plugin pays.

use crate::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use crate::bindings::operator::wasmop::plugin::types as wit_types;
use crate::bindings::policy::exports::wasmop::plugin::reviewer as wit_policy;
use crate::bindings::policy::wasmop::plugin::types as wit_policy_types;
use crate::{
    Condition, ConditionStatus, Error, Operator, Policy, ReadScope, Request, Response, Selector, Target, Verdict,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// A response with every object encoded as a JSON string, as it crosses the boundary.
#[derive(Clone, Debug, Default)]
pub struct EncodedResponse {
    /// Desired children as JSON.
    pub children: Vec<String>,
    /// Status fields as JSON.
    pub status: Option<String>,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Requeue hint in seconds.
    pub requeue_after_seconds: Option<u32>,
    /// Finalization complete.
    pub finalized: bool,
}

/// A request with every object encoded as a JSON string, as it crosses the boundary.
#[derive(Clone, Debug, Default)]
pub struct EncodedRequest {
    /// The parent as JSON.
    pub parent: String,
    /// Observed children as JSON.
    pub children: Vec<String>,
    /// Whether the parent is being deleted.
    pub finalizing: bool,
    /// Settings, if any.
    pub settings: Option<String>,
    /// Related objects as JSON, by selector id, in the selectors' order.
    pub related: Vec<(String, Vec<String>)>,
}

impl EncodedRequest {
    /// A request for `parent` (JSON) with no children, settings or related objects.
    pub fn new(parent: impl Into<String>) -> Self {
        EncodedRequest { parent: parent.into(), ..EncodedRequest::default() }
    }

    /// The same request with these observed children.
    #[must_use]
    pub fn children(mut self, children: Vec<String>) -> Self {
        self.children = children;
        self
    }

    /// The same request with the objects selector `id` picked.
    #[must_use]
    pub fn related(mut self, id: &str, objects: Vec<String>) -> Self {
        self.related.push((id.to_string(), objects));
        self
    }
}

/// Decodes a request whose objects are JSON strings.
pub fn decode_request(req: &EncodedRequest) -> Result<Request, Error> {
    let parent: Value =
        serde_json::from_str(&req.parent).map_err(|e| Error::Invalid(format!("parent is not valid JSON: {e}")))?;
    let children = req
        .children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::from_str(c).map_err(|e| Error::Retry(format!("observed child {i} is not valid JSON: {e}")))
        })
        .collect::<Result<Vec<Value>, Error>>()?;
    let mut related = BTreeMap::new();
    for (id, objects) in &req.related {
        let decoded = objects
            .iter()
            .map(|o| {
                serde_json::from_str(o)
                    .map_err(|e| Error::Retry(format!("related object of selector {id} is not valid JSON: {e}")))
            })
            .collect::<Result<Vec<Value>, Error>>()?;
        related.insert(id.clone(), decoded);
    }
    Ok(Request { parent, children, finalizing: req.finalizing, settings: req.settings.clone(), related })
}

/// Encodes a response's objects as JSON strings.
pub fn encode_response(resp: Response) -> EncodedResponse {
    EncodedResponse {
        children: resp.children.iter().map(Value::to_string).collect(),
        status: resp.status.as_ref().map(Value::to_string),
        conditions: resp.conditions,
        requeue_after_seconds: resp.requeue_after_seconds,
        finalized: resp.finalized,
    }
}

/// Runs an operator's conversion on a JSON string: decode, convert, encode.
pub fn convert_json<O: Operator>(obj: &str, to_version: &str) -> Result<String, String> {
    let obj: Value = serde_json::from_str(obj).map_err(|e| format!("the object is not valid JSON: {e}"))?;
    O::convert(obj, to_version).map(|converted| converted.to_string())
}

/// Runs an operator on JSON strings, as the export macro does: its
/// [`Operator::reconcile_raw`] (by default: decode, reconcile, encode).
pub fn reconcile_json<O: Operator>(req: &EncodedRequest) -> Result<EncodedResponse, Error> {
    O::reconcile_raw(crate::raw::RawRequest::new(req))
}

/// Runs an operator's `related` on the parent's JSON.
pub fn related_json<O: Operator>(parent: &str) -> Result<Vec<Selector>, String> {
    let parent: Value = serde_json::from_str(parent).map_err(|e| format!("parent is not valid JSON: {e}"))?;
    O::related(&parent)
}

fn gvk_to_wit(g: crate::Gvk) -> wit_types::Gvk {
    wit_types::Gvk { group: g.group, version: g.version, kind: g.kind }
}

fn condition_to_wit(c: Condition) -> wit_types::Condition {
    let status = match c.status {
        ConditionStatus::True => wit_types::ConditionStatus::True,
        ConditionStatus::False => wit_types::ConditionStatus::False,
        ConditionStatus::Unknown => wit_types::ConditionStatus::Unknown,
    };
    wit_types::Condition { type_: c.type_, status, reason: c.reason, message: c.message }
}

/// `metadata()` of an operator plugin, in WIT types.
#[doc(hidden)]
pub fn operator_metadata<O: Operator>() -> wit::OperatorMetadata {
    let m = O::metadata();
    wit::OperatorMetadata {
        name: m.name,
        version: m.version,
        parent: gvk_to_wit(m.parent),
        children: m
            .children
            .into_iter()
            .map(|c| wit::ChildKind { gvk: gvk_to_wit(c.gvk), cluster_scoped: c.cluster_scoped })
            .collect(),
        crd: m.crd.map(|v| v.to_string()),
        finalizer: m.finalizer,
        reads: m
            .reads
            .into_iter()
            .map(|r| wit::ReadKind {
                gvk: gvk_to_wit(r.gvk),
                scope: match r.scope {
                    ReadScope::SameNamespace => wit::ReadScope::SameNamespace,
                    ReadScope::Cluster => wit::ReadScope::Cluster,
                },
                metadata_only: r.metadata_only,
            })
            .collect(),
    }
}

/// `related()` of an operator plugin, in WIT types.
#[doc(hidden)]
pub fn operator_related<O: Operator>(parent: &str) -> Result<Vec<wit::Selector>, String> {
    let selectors = related_json::<O>(parent)?;
    Ok(selectors
        .into_iter()
        .map(|s| wit::Selector {
            id: s.id,
            kind: gvk_to_wit(s.kind),
            namespace: s.namespace,
            target: match s.target {
                Target::Name(name) => wit::Target::Name(name),
                Target::Labels(labels) => wit::Target::Labels(labels),
            },
        })
        .collect())
}

/// `reconcile()` of an operator plugin, in WIT types.
#[doc(hidden)]
pub fn operator_reconcile<O: Operator>(req: wit::Request) -> Result<wit::Response, wit::Error> {
    let req = EncodedRequest {
        parent: req.parent,
        children: req.children,
        finalizing: req.finalizing,
        settings: req.settings,
        related: req.related.into_iter().map(|r| (r.id, r.objects)).collect(),
    };
    match reconcile_json::<O>(&req) {
        Ok(r) => Ok(wit::Response {
            children: r.children,
            status: r.status,
            conditions: r.conditions.into_iter().map(condition_to_wit).collect(),
            requeue_after_seconds: r.requeue_after_seconds,
            finalized: r.finalized,
        }),
        Err(Error::Invalid(m)) => Err(wit::Error::Invalid(m)),
        Err(Error::Retry(m)) => Err(wit::Error::Retry(m)),
    }
}

/// `metadata()` of a policy plugin, in WIT types.
#[doc(hidden)]
pub fn policy_metadata<P: Policy>() -> wit_policy::PolicyMetadata {
    let m = P::metadata();
    wit_policy::PolicyMetadata {
        name: m.name,
        version: m.version,
        applies_to: m
            .applies_to
            .into_iter()
            .map(|g| wit_policy_types::Gvk { group: g.group, version: g.version, kind: g.kind })
            .collect(),
    }
}

/// `review()` of a policy plugin, in WIT types.
#[doc(hidden)]
pub fn policy_review<P: Policy>(parent: String, child: String, settings: Option<String>) -> wit_policy::Verdict {
    let parent: Value = match serde_json::from_str(&parent) {
        Ok(v) => v,
        Err(e) => return wit_policy::Verdict::Deny(format!("parent is not valid JSON: {e}")),
    };
    let child: Value = match serde_json::from_str(&child) {
        Ok(v) => v,
        Err(e) => return wit_policy::Verdict::Deny(format!("child is not valid JSON: {e}")),
    };
    match P::review(&parent, child, settings.as_deref()) {
        Verdict::Allow => wit_policy::Verdict::Allow,
        Verdict::Mutate(v) => wit_policy::Verdict::Mutate(v.to_string()),
        Verdict::Deny(m) => wit_policy::Verdict::Deny(m),
    }
}
