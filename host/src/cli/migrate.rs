//! `wasmop migrate`: rewrites the stored objects of a kind in its CRD's storage version and
//! trims the CRD's `status.storedVersions` (see [`wasmop::migrate`]).

use std::path::PathBuf;
use std::process::ExitCode;

use wasmop::migrate;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The kind to migrate: Kind, plural or plural.group (e.g. appoperators.tools.wasmop.dev).
    #[arg(long)]
    kind: String,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = super::run::client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let crd = migrate::find_crd(&client, &args.kind).await?;
    let done = migrate::migrate(&client, &crd).await?;
    print!("{}", wasmop::manifest::to_yaml(&serde_json::to_value(&done)?));
    Ok(ExitCode::SUCCESS)
}
