//! `wasmop preview`: what a candidate plugin would change on the live parents of its kind,
//! without writing anything. Exit code 1 when any parent would fail (or, with
//! `--fail-on-change`, change), so CI can gate a new version on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;
use wasmop::plugin::Runtime;
use wasmop::preview::{FieldChange, Outcome, Preview, PreviewReport};
use wasmop::registry;

use super::artifact::RegistryArgs;
use super::eval::Candidate;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    candidate: Candidate,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// Only the parents of this namespace (default: every namespace).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Output format: a readable report, or one JSON document for CI.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Exit with code 1 when any parent would change, not only when one would fail.
    #[arg(long)]
    fail_on_change: bool,
    /// Largest artifact accepted for `--plugin oci://REF` (bytes, or with a Ki/Mi/Gi suffix).
    #[arg(long, default_value = "64Mi", value_parser = super::run::parse_size)]
    max_plugin_size: u64,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub(crate) async fn run(rt: Runtime, args: Args) -> anyhow::Result<ExitCode> {
    // `--plugin oci://REF`: the artifact, pulled and verified as `wasmop run` pulls it.
    let (plugin, chain, settings) = match args.candidate.oci_reference() {
        Some(reference) => {
            let reference = registry::parse_reference(reference)?;
            let registry = args.registry.registry()?.max_size(args.max_plugin_size);
            let artifact = registry.pull(&reference, None).await?;
            eprintln!("previewing {}@{}", reference.whole(), artifact.digest);
            args.candidate.load_pulled(&rt, &artifact.bytes)?
        }
        None => args.candidate.load(&rt)?,
    };
    let client = super::run::client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let report = Preview::new(client, Arc::new(plugin))
        .policies(chain)
        .settings(settings)
        .namespace(args.namespace.clone())
        .run()
        .await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", text(&report)),
    }
    let fails = report.summary.failing > 0 || (args.fail_on_change && report.summary.changed > 0);
    Ok(if fails { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The report for a terminal: one block per changed or failing parent, then the summary.
fn text(report: &PreviewReport) -> String {
    let mut out = String::new();
    for parent in &report.parents {
        match &parent.outcome {
            Outcome::Unchanged => {}
            Outcome::Failing { reason, message } => {
                out.push_str(&format!("{}: fails ({reason}): {message}\n", parent.parent))
            }
            Outcome::Changed { children, status } => {
                out.push_str(&format!("{}: changes\n", parent.parent));
                for child in children {
                    out.push_str(&format!("  {} {}\n", child.action, child.object));
                    fields(&mut out, "      ", &child.fields);
                }
                if !status.is_empty() {
                    out.push_str("  status\n");
                    fields(&mut out, "      ", status);
                }
            }
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "{} (revision {}) on {} parents: {} unchanged, {} changed, {} failing\n",
        report.plugin,
        report.revision,
        report.parents.len(),
        s.unchanged,
        s.changed,
        s.failing
    ));
    out
}

fn fields(out: &mut String, indent: &str, fields: &[FieldChange]) {
    let show = |v: &Option<Value>| v.as_ref().map_or_else(|| "(absent)".to_string(), |v| short(&v.to_string()));
    for f in fields {
        out.push_str(&format!("{indent}{}: {} -> {}\n", f.path, show(&f.from), show(&f.to)));
    }
}

/// A value on one line, cut at 200 characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
