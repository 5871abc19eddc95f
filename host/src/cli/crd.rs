//! `wasmop crd`: the CustomResourceDefinitions that plugins ship, as YAML.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use wasmop::manifest::to_yaml_documents;
use wasmop::plugin::{Limits, Runtime};
use wasmop::webhook::{self, Endpoint};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Operator plugin file (repeatable).
    #[arg(long = "plugin", required_unless_present = "wasmplugin")]
    plugins: Vec<PathBuf>,
    /// Print the `WasmPlugin` CRD (wasmop's own, for the cluster plugin source) first.
    #[arg(long)]
    wasmplugin: bool,
    /// For plugins that convert between versions: the conversion webhook Service,
    /// NAMESPACE/NAME (port 443, path /convert); the running host injects the CA bundle.
    #[arg(long)]
    webhook_service: Option<String>,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let mut crds = Vec::new();
    if args.wasmplugin {
        crds.push(serde_json::to_value(wasmop::wasmplugin::crd())?);
    }
    for path in &args.plugins {
        let plugin = rt.load_operator(path, Limits::default())?;
        match &plugin.metadata().crd {
            Some(crd) => {
                let mut crd = crd.clone();
                if let (Some(service), true) = (&args.webhook_service, plugin.converts()) {
                    let (namespace, name) = service
                        .split_once('/')
                        .ok_or_else(|| anyhow::anyhow!("--webhook-service {service:?} must be NAMESPACE/NAME"))?;
                    let endpoint = Endpoint::Service { namespace: namespace.into(), name: name.into(), port: 443 };
                    crd["spec"]["conversion"] = webhook::crd_conversion(endpoint.client_config());
                }
                crds.push(crd);
            }
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
