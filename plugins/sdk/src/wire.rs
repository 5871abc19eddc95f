//! Conversions between the SDK's types and the JSON strings that cross the WIT boundary.
//!
//! The export macros call these; [`reconcile_json`] is the same path without WebAssembly, so a
//! native build (tests, benchmarks) pays exactly the decoding and encoding a plugin pays.

use crate::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use crate::bindings::operator::wasmop::plugin::types as wit_types;
use crate::bindings::policy::exports::wasmop::plugin::reviewer as wit_policy;
use crate::bindings::policy::wasmop::plugin::types as wit_policy_types;
use crate::{Condition, ConditionStatus, Error, Operator, Policy, Request, Response, Verdict};
use serde_json::Value;

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

/// Decodes a request whose objects are JSON strings.
pub fn decode_request(
    parent: &str,
    children: &[String],
    finalizing: bool,
    settings: Option<String>,
) -> Result<Request, Error> {
    let parent: Value =
        serde_json::from_str(parent).map_err(|e| Error::Invalid(format!("parent is not valid JSON: {e}")))?;
    let children = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::from_str(c).map_err(|e| Error::Retry(format!("observed child {i} is not valid JSON: {e}")))
        })
        .collect::<Result<Vec<Value>, Error>>()?;
    Ok(Request { parent, children, finalizing, settings })
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

/// Runs an operator on JSON strings: decode, reconcile, encode.
pub fn reconcile_json<O: Operator>(
    parent: &str,
    children: &[String],
    finalizing: bool,
    settings: Option<String>,
) -> Result<EncodedResponse, Error> {
    let req = decode_request(parent, children, finalizing, settings)?;
    O::reconcile(req).map(encode_response)
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
    }
}

/// `reconcile()` of an operator plugin, in WIT types.
#[doc(hidden)]
pub fn operator_reconcile<O: Operator>(req: wit::Request) -> Result<wit::Response, wit::Error> {
    match reconcile_json::<O>(&req.parent, &req.children, req.finalizing, req.settings) {
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
