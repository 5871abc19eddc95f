//! Golden-file tests of a plugin, offline: each case is a YAML file giving the plugin's input
//! (a parent of any version its CRD defines, optional observed children, `related` objects of
//! the kinds the plugin reads — its selectors pick from them as from the host's caches —
//! settings, and `policySettings` by policy name) and,
//! last, under `expect:`, what it must answer (children after the policies, status, conditions,
//! or an error). `wasmop test` runs them, shows a diff when an answer differs, and with
//! `--update` rewrites each `expect:` from the actual answer (everything above it is kept,
//! comments included).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::manifest::to_yaml;
use crate::plugin::{OperatorPlugin, PluginError, ReconcileRequest};
use crate::policy::PolicyChain;
use crate::reconcile::related::Related;

/// Settings as the plugin receives them: a string as is, any other YAML as JSON.
fn settings_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The key that starts a case's expectation; it must be the case's last top-level key.
const EXPECT: &str = "expect:";

/// Why a case could not be run (not a mismatch: a broken case file).
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The case file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid case.
    #[error("{path}: {reason}")]
    Invalid {
        /// The case file.
        path: PathBuf,
        /// What is wrong and what a case looks like.
        reason: String,
    },
}

/// One case file.
#[derive(Clone, Debug)]
pub struct Case {
    /// Where it was read from.
    pub path: PathBuf,
    /// The parent, as written.
    pub parent: Value,
    /// Observed children.
    pub observed: Vec<Value>,
    /// Objects of the kinds the plugin reads, its `related` selectors' pool.
    pub related: Vec<Value>,
    /// Settings passed to the plugin (a string, or any YAML given as JSON).
    pub settings: Option<String>,
    /// Settings of policies for this case, by policy name (each as `settings`).
    pub policy_settings: std::collections::BTreeMap<String, String>,
    /// Whether the parent is being deleted.
    pub finalizing: bool,
    /// The expected answer, if the file has one yet.
    pub expect: Option<Value>,
}

impl Case {
    /// Reads a case file.
    pub fn read(path: &Path) -> Result<Case, CaseError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaseError::Io { path: path.into(), source })?;
        let invalid = |reason: String| CaseError::Invalid { path: path.into(), reason };
        let doc: Value = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let parent = doc.get("parent").filter(|p| p["apiVersion"].is_string() && p["kind"].is_string()).cloned();
        let parent = parent.ok_or_else(|| invalid("a case needs `parent:` with apiVersion and kind".into()))?;
        let observed = match &doc["observed"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items.clone(),
            _ => return Err(invalid("`observed:` must be a list of objects".into())),
        };
        let related = match &doc["related"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items.clone(),
            _ => return Err(invalid("`related:` must be a list of objects (of the kinds the plugin reads)".into())),
        };
        let settings = settings_text(&doc["settings"]);
        let policy_settings = match &doc["policySettings"] {
            Value::Null => Default::default(),
            Value::Object(by_name) => {
                by_name.iter().filter_map(|(name, value)| Some((name.clone(), settings_text(value)?))).collect()
            }
            _ => return Err(invalid("`policySettings:` must map policy names to their settings".into())),
        };
        let finalizing = doc["finalizing"].as_bool().unwrap_or(false);
        let expect = doc.get("expect").cloned();
        Ok(Case { path: path.into(), parent, observed, related, settings, policy_settings, finalizing, expect })
    }

    /// Runs the case: the plugin's answer (after `policies`) as the `expect:` value.
    pub fn answer(&self, plugin: &OperatorPlugin, policies: &PolicyChain) -> Value {
        match self.evaluate(plugin, policies) {
            Ok(answer) => answer,
            Err(error) => json!({ "error": error }),
        }
    }

    /// The chain with this case's `policySettings`; the error names a policy not in the chain.
    pub fn policies(&self, policies: &PolicyChain) -> Result<PolicyChain, CaseError> {
        policies.with_settings(&self.policy_settings).map_err(|name| CaseError::Invalid {
            path: self.path.clone(),
            reason: format!("`policySettings:` names policy {name:?}, which is not among the --policy files"),
        })
    }

    fn evaluate(&self, plugin: &OperatorPlugin, policies: &PolicyChain) -> Result<Value, Value> {
        let failed = |reason: &str, message: String| json!({ "reason": reason, "message": message });
        let policies = &self.policies(policies).map_err(|e| failed("InvalidCase", e.to_string()))?;
        let parent = as_parent(plugin, self.parent.clone()).map_err(|e| failed(e.condition_reason(), e.to_string()))?;
        let req = ReconcileRequest {
            parent: parent.clone(),
            children: self.observed.clone(),
            finalizing: self.finalizing,
            settings: self.settings.clone(),
            related: Vec::new(),
        };
        let desired = Related::offline(&plugin.metadata().reads, &self.related)
            .reconcile(plugin, req)
            .map_err(|e| failed(e.condition_reason(), e.to_string()))?;
        let reviewed =
            policies.review(&parent, desired.children).map_err(|e| failed(e.condition_reason(), e.to_string()))?;
        let children = reviewed.children;
        let mut answer = Map::new();
        answer.insert("children".into(), Value::Array(children));
        if let Some(status) = desired.status {
            answer.insert("status".into(), Value::Object(status));
        }
        answer.insert("conditions".into(), serde_json::to_value(&desired.conditions).unwrap_or_default());
        if let Some(requeue) = desired.requeue_after {
            answer.insert("requeueAfterSeconds".into(), json!(requeue.as_secs()));
        }
        if desired.finalized {
            answer.insert("finalized".into(), json!(true));
        }
        Ok(Value::Object(answer))
    }

    /// Rewrites the file's `expect:` with `answer`, keeping everything above it.
    pub fn update(&self, answer: &Value) -> Result<(), CaseError> {
        let io = |source| CaseError::Io { path: self.path.clone(), source };
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let mut kept: String = text.lines().take_while(|l| !l.starts_with(EXPECT)).map(|l| format!("{l}\n")).collect();
        kept.push_str(EXPECT);
        kept.push('\n');
        for line in to_yaml(answer).lines() {
            kept.push_str("  ");
            kept.push_str(line);
            kept.push('\n');
        }
        std::fs::write(&self.path, kept).map_err(io)
    }
}

/// A parent the plugin can take: converted to the version it reconciles when written in
/// another version its CRD defines (as the API server would), and given the `default`
/// namespace when namespaced and without one (as kubectl would).
pub fn as_parent(plugin: &OperatorPlugin, mut parent: Value) -> Result<Value, PluginError> {
    let meta = plugin.metadata();
    if !meta.parent.matches(&parent) {
        parent = plugin.convert(&parent, &meta.parent.version)?;
    }
    let cluster_scoped = meta.crd.as_ref().is_some_and(|crd| crd["spec"]["scope"] == "Cluster");
    if !cluster_scoped && let Some(metadata) = parent["metadata"].as_object_mut() {
        metadata.entry("namespace").or_insert_with(|| json!("default"));
    }
    Ok(parent)
}

/// The case files under `dir` (`*.yaml` and `*.yml`, recursively, sorted).
pub fn case_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(case_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A line diff of `expected` against `actual` rendered as YAML: `-` lines only expected, `+`
/// lines only actual, two lines of context around each change.
pub fn diff(expected: &Value, actual: &Value) -> String {
    let (a, b) = (to_yaml(expected), to_yaml(actual));
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            lines.push(('+', b[j]));
            j += 1;
        } else {
            lines.push(('-', a[i]));
            i += 1;
        }
    }
    let near_change = |k: usize| lines[k.saturating_sub(2)..(k + 3).min(lines.len())].iter().any(|(m, _)| *m != ' ');
    (0..lines.len()).filter(|&k| near_change(k)).map(|k| format!("{} {}\n", lines[k].0, lines[k].1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_what_changed() {
        let expected = json!({"replicas": 3, "image": "a"});
        let actual = json!({"replicas": 2, "image": "a"});
        let d = diff(&expected, &actual);
        assert!(d.contains("- replicas: 3") && d.contains("+ replicas: 2"), "{d}");
        assert_eq!(diff(&expected, &expected), "");
    }

    #[test]
    fn update_keeps_what_is_above_expect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "# a comment\nparent:\n  apiVersion: v1\n  kind: X\nexpect:\n  old: 1\n").unwrap();
        let case = Case::read(&path).unwrap();
        case.update(&json!({"children": []})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# a comment\nparent:"), "{text}");
        assert_eq!(Case::read(&path).unwrap().expect, Some(json!({"children": []})));
    }
}
