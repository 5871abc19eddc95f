//! Plugins built against the frozen contract 0.1 (`wit/v0.1/plugin.wit`): their bindings, and
//! the translation of their calls to the current contract's types, so that the rest of the host
//! sees one contract. 0.1 has no `converter`: such a plugin serves a CRD with one version.

use super::bindings::operator::exports::wasmop::plugin::reconciler as cur;
use super::bindings::operator::wasmop::plugin::{host as cur_host, types as cur_types};
use super::bindings::policy::exports::wasmop::plugin::reviewer as cur_policy;
use super::sandbox::CallState;

/// Bindings of contract 0.1.
pub(crate) mod bindings {
    /// The 0.1 `operator` world (exports `reconciler`).
    pub mod operator {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "operator",
        });
    }

    /// The 0.1 `policy` world (exports `reviewer`).
    pub mod policy {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "policy",
            with: {
                "wasmop:plugin/types": super::operator::wasmop::plugin::types,
                "wasmop:plugin/host": super::operator::wasmop::plugin::host,
            },
        });
    }
}

use bindings::operator::exports::wasmop::plugin::reconciler as old;
use bindings::operator::wasmop::plugin::{host as old_host, types as old_types};
use bindings::policy::exports::wasmop::plugin::reviewer as old_policy;

impl old_types::Host for CallState {}

impl old_host::Host for CallState {
    fn log(&mut self, level: old_types::LogLevel, message: String) {
        let level = match level {
            old_types::LogLevel::Trace => cur_types::LogLevel::Trace,
            old_types::LogLevel::Debug => cur_types::LogLevel::Debug,
            old_types::LogLevel::Info => cur_types::LogLevel::Info,
            old_types::LogLevel::Warn => cur_types::LogLevel::Warn,
            old_types::LogLevel::Error => cur_types::LogLevel::Error,
        };
        cur_host::Host::log(self, level, message);
    }
}

fn gvk(g: old_types::Gvk) -> cur_types::Gvk {
    cur_types::Gvk { group: g.group, version: g.version, kind: g.kind }
}

fn condition(c: old_types::Condition) -> cur_types::Condition {
    let status = match c.status {
        old_types::ConditionStatus::True => cur_types::ConditionStatus::True,
        old_types::ConditionStatus::False => cur_types::ConditionStatus::False,
        old_types::ConditionStatus::Unknown => cur_types::ConditionStatus::Unknown,
    };
    cur_types::Condition { type_: c.type_, status, reason: c.reason, message: c.message }
}

/// A 0.1 operator's metadata in current terms.
pub(crate) fn metadata(m: old::OperatorMetadata) -> cur::OperatorMetadata {
    cur::OperatorMetadata {
        name: m.name,
        version: m.version,
        parent: gvk(m.parent),
        children: m
            .children
            .into_iter()
            .map(|c| cur::ChildKind { gvk: gvk(c.gvk), cluster_scoped: c.cluster_scoped })
            .collect(),
        crd: m.crd,
        finalizer: m.finalizer,
    }
}

/// A current request as a 0.1 plugin takes it.
pub(crate) fn request(r: &cur::Request) -> old::Request {
    old::Request {
        parent: r.parent.clone(),
        children: r.children.clone(),
        finalizing: r.finalizing,
        settings: r.settings.clone(),
    }
}

/// A 0.1 operator's answer in current terms.
pub(crate) fn answer(answer: Result<old::Response, old::Error>) -> Result<cur::Response, cur::Error> {
    match answer {
        Ok(r) => Ok(cur::Response {
            children: r.children,
            status: r.status,
            conditions: r.conditions.into_iter().map(condition).collect(),
            requeue_after_seconds: r.requeue_after_seconds,
            finalized: r.finalized,
        }),
        Err(old::Error::Invalid(message)) => Err(cur::Error::Invalid(message)),
        Err(old::Error::Retry(message)) => Err(cur::Error::Retry(message)),
    }
}

/// A 0.1 policy's metadata in current terms.
pub(crate) fn policy_metadata(m: old_policy::PolicyMetadata) -> cur_policy::PolicyMetadata {
    cur_policy::PolicyMetadata {
        name: m.name,
        version: m.version,
        applies_to: m.applies_to.into_iter().map(gvk).collect(),
    }
}

/// A 0.1 policy's verdict in current terms.
pub(crate) fn verdict(v: old_policy::Verdict) -> cur_policy::Verdict {
    match v {
        old_policy::Verdict::Allow => cur_policy::Verdict::Allow,
        old_policy::Verdict::Mutate(obj) => cur_policy::Verdict::Mutate(obj),
        old_policy::Verdict::Deny(message) => cur_policy::Verdict::Deny(message),
    }
}
