//! The policy chain: every policy plugin that applies to a desired child reviews it, in order,
//! before it is applied. Mutations feed the next policy; one deny blocks the whole apply for
//! that parent. A policy in monitor mode changes and blocks nothing: its verdicts are findings.

use serde_json::{Value, json};

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

/// What a policy's verdicts do: `protect` (the default) enforces them: a deny blocks the
/// parent's apply, a mutation is applied. `monitor` only records them (the `PolicyCompliant`
/// condition on each parent, Events, a PolicyReport) and applies the children anyway. Monitor to
/// protect is allowed at any time; protect to monitor needs the policy removed and added again.
// The doc above is also the WasmPlugin CRD's description of `spec.mode`: it is written for users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Verdicts are enforced.
    #[default]
    Protect,
    /// Verdicts are recorded, not enforced.
    Monitor,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Protect => "protect",
            Mode::Monitor => "monitor",
        })
    }
}

/// A verdict of a monitoring policy that was not enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The policy's name.
    pub policy: String,
    /// The child, as `Kind namespace/name`.
    pub object: String,
    /// The child's `apiVersion`, `kind`, `namespace` and `name`, for a report.
    pub resource: Value,
    /// What the policy would have done.
    pub outcome: FindingOutcome,
    /// The denial's reason, the fields a mutation would change, or the failure.
    pub message: String,
}

/// What a monitoring policy would have done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingOutcome {
    /// Deny the child.
    Deny,
    /// Change fields of the child.
    Mutate,
    /// The policy failed on the child.
    Error,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = match self.outcome {
            FindingOutcome::Deny => "would deny: ",
            FindingOutcome::Mutate => "would change ",
            FindingOutcome::Error => "failed: ",
        };
        write!(f, "policy {} on {}: {verdict}{}", self.policy, self.object, self.message)
    }
}

/// The children as the policies left them, and what the monitoring policies found.
#[derive(Debug, Default)]
pub struct Reviewed {
    /// The children to apply.
    pub children: Vec<Value>,
    /// Verdicts of monitoring policies, in review order.
    pub findings: Vec<Finding>,
}

/// One policy of a chain.
#[derive(Clone)]
struct Member {
    plugin: PolicyPlugin,
    settings: Option<String>,
    mode: Mode,
}

/// Policies in the order they run, each with its settings and mode.
#[derive(Clone, Default)]
pub struct PolicyChain {
    policies: Vec<Member>,
}

impl PolicyChain {
    /// A chain of `policies` (with their settings and modes), run in the given order.
    pub fn new(policies: Vec<(PolicyPlugin, Option<String>, Mode)>) -> Self {
        let policies = policies.into_iter().map(|(plugin, settings, mode)| Member { plugin, settings, mode }).collect();
        PolicyChain { policies }
    }

    /// The same chain with the settings of the policies named in `settings` replaced; the
    /// error names a policy that is not in the chain.
    pub fn with_settings(&self, settings: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        if let Some(unknown) = settings.keys().find(|n| !self.policies.iter().any(|m| &m.plugin.metadata().name == *n))
        {
            return Err(unknown.clone());
        }
        let mut chain = self.clone();
        for member in &mut chain.policies {
            if let Some(s) = settings.get(&member.plugin.metadata().name) {
                member.settings = Some(s.clone());
            }
        }
        Ok(chain)
    }

    /// Whether no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The names of the policies in monitor mode.
    pub fn monitoring(&self) -> Vec<&str> {
        self.policies.iter().filter(|m| m.mode == Mode::Monitor).map(|m| m.plugin.metadata().name.as_str()).collect()
    }

    /// Reviews every child of `parent`; returns the children as the protecting policies left
    /// them and the monitoring policies' findings.
    pub fn review(&self, parent: &Value, children: Vec<Value>) -> Result<Reviewed, ReviewError> {
        let mut reviewed = Reviewed::default();
        for child in children {
            let child = self.review_one(parent, child, &mut reviewed.findings)?;
            reviewed.children.push(child);
        }
        Ok(reviewed)
    }

    fn review_one(&self, parent: &Value, mut child: Value, findings: &mut Vec<Finding>) -> Result<Value, ReviewError> {
        let gvk =
            Gvk::from_api_version(child["apiVersion"].as_str().unwrap_or(""), child["kind"].as_str().unwrap_or(""));
        for member in &self.policies {
            if !member.plugin.metadata().applies_to(&gvk) {
                continue;
            }
            let span = crate::traces::step_span(|| {
                tracing::info_span!(
                    "policy review",
                    policy = %member.plugin.metadata().name,
                    mode = ?member.mode,
                    child = %describe(&child),
                    verdict = tracing::field::Empty,
                )
            });
            let verdict = span.in_scope(|| member.plugin.review(parent, &child, member.settings.as_deref()));
            span.record("verdict", verdict_name(&verdict));
            let name = || member.plugin.metadata().name.clone();
            if member.mode == Mode::Monitor {
                if let Some((outcome, message)) = monitored(verdict, &child) {
                    let resource = json!({
                        "apiVersion": child["apiVersion"], "kind": child["kind"],
                        "namespace": child["metadata"]["namespace"], "name": child["metadata"]["name"],
                    });
                    findings.push(Finding { policy: name(), object: describe(&child), resource, outcome, message });
                }
                continue;
            }
            match verdict? {
                Verdict::Allow => {}
                Verdict::Mutate(mutated) => child = mutated,
                Verdict::Deny(message) => {
                    return Err(ReviewError::Denied { policy: name(), object: describe(&child), message });
                }
            }
        }
        Ok(child)
    }
}

/// What a monitoring policy's verdict on `child` would have done, if anything: a monitoring
/// policy that fails is recorded too, and does not block.
fn monitored(verdict: Result<Verdict, PluginError>, child: &Value) -> Option<(FindingOutcome, String)> {
    match verdict {
        Ok(Verdict::Allow) => None,
        Ok(Verdict::Deny(message)) => Some((FindingOutcome::Deny, message)),
        Ok(Verdict::Mutate(mutated)) => {
            let paths: Vec<String> = crate::diff::both(&mutated, child).into_iter().map(|c| c.path).collect();
            (!paths.is_empty()).then(|| (FindingOutcome::Mutate, paths.join(", ")))
        }
        Err(e) => Some((FindingOutcome::Error, e.to_string())),
    }
}

/// What a policy answered, for its span: allow, mutate, deny, or the failure's reason.
fn verdict_name(verdict: &Result<Verdict, PluginError>) -> &'static str {
    match verdict {
        Ok(Verdict::Allow) => "allow",
        Ok(Verdict::Mutate(_)) => "mutate",
        Ok(Verdict::Deny(_)) => "deny",
        Err(e) => e.metric_reason(),
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
