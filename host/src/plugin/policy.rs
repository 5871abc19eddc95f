//! A loaded policy plugin: validated metadata and a review call in a fresh sandbox.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::bindings::policy::PolicyPre;
use super::bindings::policy::exports::wasmop::plugin::reviewer as wit;
use super::contract::{Gvk, PolicyMetadata, Verdict};
use super::error::PluginError;
use super::file::PluginFile;
use super::legacy::{v0_1, v0_2};
use super::limits::Limits;
use super::sandbox::{CallState, EpochTicker, call_in, instantiate_via_bindings};
use crate::names;

/// A loaded policy plugin. Cheap to clone; every review gets a fresh instance.
#[derive(Clone)]
pub struct PolicyPlugin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicyPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyPlugin")
            .field("name", &self.inner.meta.name)
            .field("version", &self.inner.meta.version)
            .field("revision", &self.inner.file.revision())
            .finish()
    }
}

/// How to instantiate a policy of either contract version.
pub(crate) enum Pre {
    /// Contract 0.3.
    Current(PolicyPre<CallState>),
    /// Contract 0.2 (frozen).
    V02(v0_2::bindings::policy::PolicyPre<CallState>),
    /// Contract 0.1 (frozen).
    V01(v0_1::bindings::policy::PolicyPre<CallState>),
}

instantiate_via_bindings!(
    PolicyPre<CallState> => super::bindings::policy::Policy,
    v0_2::bindings::policy::PolicyPre<CallState> => v0_2::bindings::policy::Policy,
    v0_1::bindings::policy::PolicyPre<CallState> => v0_1::bindings::policy::Policy,
);

impl Pre {
    fn metadata(&self, label: &Arc<str>, limits: &Limits) -> Result<wit::PolicyMetadata, PluginError> {
        match self {
            Pre::Current(pre) => call_in(pre, label, limits, |s, i| i.wasmop_plugin_reviewer().call_metadata(s)),
            Pre::V02(pre) => call_in(pre, label, limits, |s, i| i.wasmop_plugin_reviewer().call_metadata(s))
                .map(v0_2::policy_metadata),
            Pre::V01(pre) => call_in(pre, label, limits, |s, i| i.wasmop_plugin_reviewer().call_metadata(s))
                .map(v0_1::policy_metadata),
        }
    }

    fn review(
        &self,
        label: &Arc<str>,
        limits: &Limits,
        parent: String,
        child: String,
        settings: Option<&str>,
    ) -> Result<wit::Verdict, PluginError> {
        let (p, c, s) = (&parent, &child, settings);
        match self {
            Pre::Current(pre) => {
                call_in(pre, label, limits, |st, i| i.wasmop_plugin_reviewer().call_review(st, p, c, s))
            }
            Pre::V02(pre) => call_in(pre, label, limits, |st, i| i.wasmop_plugin_reviewer().call_review(st, p, c, s))
                .map(v0_2::verdict),
            Pre::V01(pre) => call_in(pre, label, limits, |st, i| i.wasmop_plugin_reviewer().call_review(st, p, c, s))
                .map(v0_1::verdict),
        }
    }
}

struct Inner {
    pre: Pre,
    meta: PolicyMetadata,
    name: Arc<str>,
    limits: Limits,
    file: PluginFile,
    _ticker: Arc<EpochTicker>,
}

impl PolicyPlugin {
    pub(crate) fn new(
        pre: Pre,
        ticker: Arc<EpochTicker>,
        limits: Limits,
        mut file: PluginFile,
        started: Instant,
    ) -> Result<Self, PluginError> {
        let label: Arc<str> = file.path.display().to_string().into();
        let raw = pre.metadata(&label, &limits)?;
        if !names::is_dns_label(&raw.name) {
            return Err(PluginError::InvalidMetadata {
                plugin: label.to_string(),
                reason: crate::text::cap(
                    &format!("name {:?} must be a lowercase DNS label (a-z, 0-9, '-')", raw.name),
                    crate::text::MAX_QUOTE,
                ),
            });
        }
        let meta = PolicyMetadata {
            name: raw.name,
            version: raw.version,
            applies_to: raw.applies_to.into_iter().map(Gvk::from).collect(),
        };
        file.load_time = started.elapsed();
        let name = meta.name.as_str().into();
        Ok(PolicyPlugin { inner: Arc::new(Inner { pre, meta, name, limits, file, _ticker: ticker }) })
    }

    /// What the policy says about itself.
    pub fn metadata(&self) -> &PolicyMetadata {
        &self.inner.meta
    }

    /// Facts about the file it was loaded from.
    pub fn file(&self) -> &PluginFile {
        &self.inner.file
    }

    /// The limits applied to each call.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Reviews one desired child of `parent`. A mutation may not change the child's identity
    /// (apiVersion, kind, name, namespace) nor what is the host's alone (ownerReferences,
    /// finalizers); the host's labels and annotations are applied after every policy.
    pub fn review(&self, parent: &Value, child: &Value, settings: Option<&str>) -> Result<Verdict, PluginError> {
        let inner = &*self.inner;
        let verdict = inner.pre.review(&inner.name, &inner.limits, parent.to_string(), child.to_string(), settings)?;
        match verdict {
            wit::Verdict::Allow => Ok(Verdict::Allow),
            wit::Verdict::Deny(message) => Ok(Verdict::Deny(message)),
            wit::Verdict::Mutate(raw) => {
                if raw.len() > inner.limits.output_bytes {
                    return Err(PluginError::OutputTooLarge {
                        plugin: inner.meta.name.clone(),
                        size: raw.len(),
                        limit: inner.limits.output_bytes,
                    });
                }
                let mutated: Value = serde_json::from_str(&raw)
                    .map_err(|e| self.invalid(child, format!("mutation is not valid JSON: {e}")))?;
                for pointer in [
                    "/apiVersion",
                    "/kind",
                    "/metadata/name",
                    "/metadata/namespace",
                    "/metadata/ownerReferences",
                    "/metadata/finalizers",
                ] {
                    if mutated.pointer(pointer) != child.pointer(pointer) {
                        return Err(self.invalid(child, format!("a mutation may not change {pointer}")));
                    }
                }
                Ok(Verdict::Mutate(mutated))
            }
        }
    }

    fn invalid(&self, child: &Value, reason: String) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.inner.meta.name.clone(),
            object: format!(
                "review of {} {}",
                child["kind"].as_str().unwrap_or("?"),
                child["metadata"]["name"].as_str().unwrap_or("?")
            ),
            reason,
        }
    }
}
