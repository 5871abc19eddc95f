//! `wasmop migrate`: rewrites the stored objects of a kind in its CRD's storage version and
//! trims the CRD's `status.storedVersions` (see [`wasmop::migrate`]).

use std::path::PathBuf;
use std::process::ExitCode;

use wasmop::migrate;

use super::Output;

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
    /// Output format of the report.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = super::run::client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let crd = migrate::find_crd(&client, &args.kind).await?;
    let done = migrate::migrate(&client, &crd).await?;
    let report = serde_json::to_value(&done)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", wasmop::manifest::to_yaml(&report)),
    }
    Ok(ExitCode::SUCCESS)
}
