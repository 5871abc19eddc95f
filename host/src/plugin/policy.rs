//! A loaded policy plugin: validated metadata and a review call in a fresh sandbox.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::bindings::policy::PolicyPre;
use super::bindings::policy::exports::wasmop::plugin::reviewer as wit;
use super::contract::{Gvk, PolicyMetadata, Verdict};
use super::error::PluginError;
use super::limits::Limits;
use super::runtime::{EpochTicker, PluginFile};
use super::sandbox::{CallState, run_call};
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

struct Inner {
    pre: PolicyPre<CallState>,
    meta: PolicyMetadata,
    name: Arc<str>,
    limits: Limits,
    file: PluginFile,
    _ticker: Arc<EpochTicker>,
}

impl PolicyPlugin {
    pub(crate) fn new(
        pre: PolicyPre<CallState>,
        ticker: Arc<EpochTicker>,
        limits: Limits,
        mut file: PluginFile,
        started: Instant,
    ) -> Result<Self, PluginError> {
        let label: Arc<str> = file.path.display().to_string().into();
        let engine = pre.engine().clone();
        let raw = run_call(
            &engine,
            &label,
            &limits,
            |s| pre.instantiate(s),
            |s, i| i.wasmop_plugin_reviewer().call_metadata(s),
        )?;
        if !names::is_dns_label(&raw.name) {
            return Err(PluginError::InvalidMetadata {
                plugin: label.to_string(),
                reason: format!("name {:?} must be a lowercase DNS label (a-z, 0-9, '-')", raw.name),
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
        let (p, c, s) = (parent.to_string(), child.to_string(), settings.map(str::to_string));
        let verdict = run_call(
            inner.pre.engine(),
            &inner.name,
            &inner.limits,
            |st| inner.pre.instantiate(st),
            |st, i| i.wasmop_plugin_reviewer().call_review(st, &p, &c, s.as_deref()),
        )?;
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
