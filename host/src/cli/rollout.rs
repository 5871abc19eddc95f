//! `wasmop rollout status|promote|abort NAME`: follows and steers the staged rollout of a
//! `WasmPlugin` (see `spec.rollout`). Promote and abort set the `wasmop.dev/rollout-action`
//! annotation, as `kubectl annotate` would; the status writer acts on it once.

use std::path::PathBuf;
use std::process::ExitCode;

use kube::Api;
use kube::api::{Patch, PatchParams};
use wasmop::wasmplugin::{ROLLOUT_ACTION_ANNOTATION, WasmPlugin};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// What to do.
    #[arg(value_enum)]
    verb: Verb,
    /// The WasmPlugin.
    name: String,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Verb {
    /// Print where the rollout stands.
    Status,
    /// Move to the next step now (the last step completes the rollout).
    Promote,
    /// Go back to the stable revision; the canary's digest is not served again until the
    /// spec changes.
    Abort,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = super::run::client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let api: Api<WasmPlugin> = Api::all(client);
    let object = api.get_opt(&args.name).await?.ok_or_else(|| {
        anyhow::anyhow!("WasmPlugin {} does not exist; list them with kubectl get wasmplugins", args.name)
    })?;
    let rollout = object.status.and_then(|s| s.rollout);
    let verb = match args.verb {
        Verb::Status => {
            match rollout {
                Some(r) => println!(
                    "WasmPlugin {}: {} at step {} ({}% of parents)\n  stable {}: {} reconciles, {} failed\n  \
                     canary {}: {} reconciles, {} failed\n  {}",
                    args.name,
                    r.phase,
                    r.step + 1,
                    r.percent,
                    r.stable_revision,
                    r.stable.reconciles,
                    r.stable.failures,
                    r.canary_revision,
                    r.canary.reconciles,
                    r.canary.failures,
                    r.message
                ),
                None => println!("WasmPlugin {}: no staged rollout has run", args.name),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Promote => "promote",
        Verb::Abort => "abort",
    };
    if rollout.is_none_or(|r| r.phase != wasmop::rollout::PROGRESSING) {
        anyhow::bail!("WasmPlugin {} has no rollout in progress to {verb}; see `wasmop rollout status`", args.name);
    }
    let value = format!("{verb}:{}", jiff::Timestamp::now());
    let patch = serde_json::json!({"metadata": {"annotations": {ROLLOUT_ACTION_ANNOTATION: value}}});
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    println!("asked the rollout of WasmPlugin {} to {verb} ({ROLLOUT_ACTION_ANNOTATION}={value})", args.name);
    Ok(ExitCode::SUCCESS)
}
