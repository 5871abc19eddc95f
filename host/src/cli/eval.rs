//! `wasmop eval`: one plugin (and policies) on custom resources from a file, offline. Prints the
//! desired children as multi-document YAML followed by the status and conditions as comments,
//! so the output can be piped to `kubectl apply -f -`; `-o json` prints everything as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use wasmop::golden;
use wasmop::manifest::{read_objects, to_yaml, to_yaml_documents};
use wasmop::plugin::{Desired, Gvk, OperatorPlugin, ReconcileRequest, Runtime};
use wasmop::policy::PolicyChain;
use wasmop::reconcile::related::Related;
use wasmop::sidecar;

use super::Output;

/// The operator plugin and policies to run, with their settings: shared by `eval` and `preview`.
#[derive(clap::Args)]
pub(crate) struct Candidate {
    /// The operator plugin to run (`preview` also takes `oci://REGISTRY/REPOSITORY@DIGEST`).
    #[arg(long)]
    plugin: PathBuf,
    /// Policy plugins to review the desired children, in order (repeatable).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// File whose contents are passed to the plugin as its settings (default: the `[settings]`
    /// of its NAME.toml, as `wasmop run` passes them).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Settings of one policy, NAME=FILE (repeatable; default: the `[settings]` of the policy's
    /// NAME.toml beside it).
    #[arg(long = "policy-settings", value_name = "NAME=FILE")]
    policy_settings: Vec<String>,
}

impl Candidate {
    /// The registry reference when the plugin is given as `oci://REF` (for `preview`).
    pub(crate) fn oci_reference(&self) -> Option<&str> {
        self.plugin.to_str().filter(|p| p.starts_with("oci://"))
    }

    /// Loads the plugin (with its sidecar's limits), the policy chain and the plugin's settings.
    pub(crate) fn load(&self, rt: &Runtime) -> anyhow::Result<(OperatorPlugin, PolicyChain, Option<String>)> {
        let sidecar = sidecar::read(&self.plugin)?;
        let plugin = rt.load_operator(&self.plugin, sidecar.limits)?;
        self.with_policies(rt, plugin, sidecar.settings)
    }

    /// The same for the plugin's pulled `bytes` (no sidecar: default limits, `--settings` only).
    pub(crate) fn load_pulled(
        &self,
        rt: &Runtime,
        bytes: &[u8],
    ) -> anyhow::Result<(OperatorPlugin, PolicyChain, Option<String>)> {
        let plugin = rt.load_operator_bytes(&self.plugin, bytes, Default::default())?;
        self.with_policies(rt, plugin, None)
    }

    fn with_policies(
        &self,
        rt: &Runtime,
        plugin: OperatorPlugin,
        sidecar_settings: Option<String>,
    ) -> anyhow::Result<(OperatorPlugin, PolicyChain, Option<String>)> {
        let chain = policy_chain(rt, &self.policies, &self.policy_settings)?;
        let settings = match self.settings.as_deref() {
            Some(path) => Some(read_settings(path)?),
            None => sidecar_settings,
        };
        Ok((plugin, chain, settings))
    }
}

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    candidate: Candidate,
    /// Children that exist now (multi-document YAML), as the plugin would observe them.
    #[arg(long)]
    observed: Option<PathBuf>,
    /// Objects of the kinds the plugin reads (multi-document YAML, repeatable), from which its
    /// `related` selectors are resolved as the host resolves them from its caches.
    #[arg(long = "related", value_name = "FILE")]
    related: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
    /// The custom resource(s) to evaluate (multi-document YAML).
    file: PathBuf,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(reference) = args.candidate.oci_reference() {
        bail!("wasmop eval runs a file: pull {reference} first with `wasmop plugin pull REF -o FILE`");
    }
    let (plugin, chain, settings) = args.candidate.load(rt)?;
    let observed = match &args.observed {
        Some(path) => read_objects(path)?,
        None => Vec::new(),
    };
    let parents = parents_of(&plugin, &args.file)?;
    let mut related_objects = Vec::new();
    for path in &args.related {
        related_objects.extend(read_objects(path)?);
    }
    let related = Related::offline(&plugin.metadata().reads, &related_objects);

    let mut results = Vec::new();
    for parent in parents {
        let children = observed_children(&parent, &observed);
        let req = ReconcileRequest {
            parent: parent.clone(),
            children,
            finalizing: false,
            settings: settings.clone(),
            related: Vec::new(),
        };
        let mut desired = related.reconcile(&plugin, req)?;
        let reviewed = chain.review(&parent, std::mem::take(&mut desired.children))?;
        desired.children = reviewed.children;
        for finding in reviewed.findings {
            eprintln!("monitor: {finding}");
        }
        results.push((parent, desired));
    }
    match args.output {
        Output::Json => {
            let out: Vec<Value> = results.iter().map(|(p, d)| result_json(p, d)).collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Yaml => {
            for (parent, desired) in &results {
                print!("{}", to_yaml_documents(&desired.children));
                print!("{}", status_comment(parent, desired));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The policies in order, each with the limits and settings of its NAME.toml, settings
/// overridden by `--policy-settings NAME=FILE`.
pub(crate) fn policy_chain(rt: &Runtime, paths: &[PathBuf], settings: &[String]) -> anyhow::Result<PolicyChain> {
    let mut overrides = std::collections::HashMap::new();
    for pair in settings {
        let (name, file) = pair.split_once('=').with_context(|| {
            format!("--policy-settings {pair:?} must be NAME=FILE (NAME as the policy names itself)")
        })?;
        overrides.insert(name.to_string(), read_settings(Path::new(file))?);
    }
    let mut policies = Vec::new();
    for path in paths {
        let sidecar = sidecar::read(path)?;
        let policy = rt.load_policy(path, sidecar.limits)?;
        let settings = overrides.remove(&policy.metadata().name).or(sidecar.settings);
        policies.push((policy, settings, sidecar.mode.unwrap_or_default()));
    }
    if let Some(name) = overrides.keys().next() {
        bail!("--policy-settings names policy {name:?}, which is not among the --policy files");
    }
    Ok(PolicyChain::new(policies))
}

fn read_settings(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read settings file {}", path.display()))
}

/// The objects in `file` of the plugin's parent kind, in any version its CRD defines (converted
/// by the plugin to the version it reconciles, as the API server would), each given the
/// `default` namespace if it names none and the kind is namespaced (as kubectl would).
fn parents_of(plugin: &OperatorPlugin, file: &Path) -> anyhow::Result<Vec<Value>> {
    let meta = plugin.metadata();
    let objects = read_objects(file)?;
    let found: Vec<String> = objects
        .iter()
        .map(|o| format!("{} {}", o["apiVersion"].as_str().unwrap_or("?"), o["kind"].as_str().unwrap_or("?")))
        .collect();
    let versions: Vec<String> = meta.crd_versions().into_iter().map(|v| v.name).collect();
    let is_parent = |o: &Value| {
        let gvk = Gvk::from_api_version(o["apiVersion"].as_str().unwrap_or(""), o["kind"].as_str().unwrap_or(""));
        gvk.group == meta.parent.group
            && gvk.kind == meta.parent.kind
            && (gvk.version == meta.parent.version || versions.contains(&gvk.version))
    };
    let mut parents: Vec<Value> = objects.into_iter().filter(is_parent).collect();
    if parents.is_empty() {
        bail!(
            "{} contains no {} for plugin {} (found: {}); check apiVersion and kind",
            file.display(),
            meta.parent,
            meta.name,
            if found.is_empty() { "nothing".into() } else { found.join(", ") }
        );
    }
    for parent in &mut parents {
        *parent = golden::as_parent(plugin, std::mem::take(parent))?;
    }
    Ok(parents)
}

/// Observed objects in the parent's namespace (offline there are no ownerReferences to follow).
fn observed_children(parent: &Value, observed: &[Value]) -> Vec<Value> {
    let ns = parent["metadata"]["namespace"].as_str();
    observed.iter().filter(|o| o["metadata"]["namespace"].as_str().is_none_or(|n| Some(n) == ns)).cloned().collect()
}

fn parent_ref(parent: &Value) -> String {
    let name = parent["metadata"]["name"].as_str().unwrap_or("?");
    match parent["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn result_json(parent: &Value, d: &Desired) -> Value {
    json!({
        "parent": parent_ref(parent),
        "children": d.children,
        "status": d.status,
        "conditions": d.conditions,
        "requeueAfterSeconds": d.requeue_after.map(|r| r.as_secs()),
    })
}

/// Status and conditions as YAML comments, so the document stream stays appliable.
fn status_comment(parent: &Value, d: &Desired) -> String {
    let mut summary = json!({ "status": d.status, "conditions": d.conditions });
    if let Some(requeue) = d.requeue_after {
        summary["requeueAfterSeconds"] = json!(requeue.as_secs());
    }
    let mut out = format!("# {} {}:\n", parent["kind"].as_str().unwrap_or("parent"), parent_ref(parent));
    for line in to_yaml(&summary).lines() {
        out.push_str("#   ");
        out.push_str(line);
        out.push('\n');
    }
    out
}
