//! `wasmop crd`: the CustomResourceDefinitions that plugins ship, as YAML.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use wasmop::manifest::to_yaml_documents;
use wasmop::plugin::{Limits, Runtime};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Operator plugin file (repeatable).
    #[arg(long = "plugin", required = true)]
    plugins: Vec<PathBuf>,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let mut crds = Vec::new();
    for path in &args.plugins {
        let plugin = rt.load_operator(path, Limits::default())?;
        match &plugin.metadata().crd {
            Some(crd) => crds.push(crd.clone()),
            None => bail!(
                "plugin {} ({}) ships no CRD: its parent kind {} is expected to exist already",
                plugin.metadata().name,
                path.display(),
                plugin.metadata().parent
            ),
        }
    }
    print!("{}", to_yaml_documents(&crds));
    Ok(ExitCode::SUCCESS)
}
