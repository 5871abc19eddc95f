//! The policy chain: every policy plugin that applies to a desired child reviews it, in order,
//! before it is applied. Mutations feed the next policy; one deny blocks the whole apply for
//! that parent.

use serde_json::Value;

use crate::plugin::{Gvk, PluginError, PolicyPlugin, Verdict};

/// Why a parent's children may not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// A policy refused a child.
    #[error("policy {policy} denied {object}: {message}")]
    Denied {
        /// The policy's name.
        policy: String,
        /// The child, as `Kind namespace/name`.
        object: String,
        /// The policy's reason.
        message: String,
    },
    /// A policy plugin failed; failing closed, nothing is applied.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl ReviewError {
    /// The `reason` of the `Ready=False` condition this produces.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            ReviewError::Denied { .. } => "PolicyDenied",
            ReviewError::Plugin(_) => "PolicyError",
        }
    }
}

/// Policies in the order they run, each with its settings.
#[derive(Clone, Default)]
pub struct PolicyChain {
    policies: Vec<(PolicyPlugin, Option<String>)>,
}

impl PolicyChain {
    /// A chain of `policies` (with their settings), run in the given order.
    pub fn new(policies: Vec<(PolicyPlugin, Option<String>)>) -> Self {
        PolicyChain { policies }
    }

    /// The same chain with the settings of the policies named in `settings` replaced; the
    /// error names a policy that is not in the chain.
    pub fn with_settings(&self, settings: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        if let Some(unknown) = settings.keys().find(|n| !self.policies.iter().any(|(p, _)| &p.metadata().name == *n)) {
            return Err(unknown.clone());
        }
        let policies = self
            .policies
            .iter()
            .map(|(p, current)| (p.clone(), settings.get(&p.metadata().name).cloned().or_else(|| current.clone())))
            .collect();
        Ok(PolicyChain { policies })
    }

    /// Whether no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Reviews every child of `parent`; returns the children as the policies left them.
    pub fn review(&self, parent: &Value, children: Vec<Value>) -> Result<Vec<Value>, ReviewError> {
        children.into_iter().map(|child| self.review_one(parent, child)).collect()
    }

    fn review_one(&self, parent: &Value, mut child: Value) -> Result<Value, ReviewError> {
        let gvk =
            Gvk::from_api_version(child["apiVersion"].as_str().unwrap_or(""), child["kind"].as_str().unwrap_or(""));
        for (policy, settings) in &self.policies {
            if !policy.metadata().applies_to(&gvk) {
                continue;
            }
            match policy.review(parent, &child, settings.as_deref())? {
                Verdict::Allow => {}
                Verdict::Mutate(mutated) => child = mutated,
                Verdict::Deny(message) => {
                    return Err(ReviewError::Denied {
                        policy: policy.metadata().name.clone(),
                        object: describe(&child),
                        message,
                    });
                }
            }
        }
        Ok(child)
    }
}

/// `Kind namespace/name` of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}
