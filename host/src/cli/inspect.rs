//! `wasmop plugin inspect`: what a plugin declares and what loading it cost.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use wasmop::plugin::{LoadedPlugin, Runtime};

use super::Output;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The plugin file.
    plugin: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let loaded = rt.load(&args.plugin)?;
    let (file, meta, limits) = match &loaded {
        LoadedPlugin::Operator(p) => (p.file(), serde_json::to_value(p.metadata())?, p.limits()),
        LoadedPlugin::Policy(p) => (p.file(), serde_json::to_value(p.metadata())?, p.limits()),
    };
    let mut meta = meta;
    if let LoadedPlugin::Operator(p) = &loaded {
        meta["crdVersions"] = serde_json::to_value(p.metadata().crd_versions())?;
        meta["storageVersion"] = json!(p.metadata().storage_version());
        meta["conversion"] = json!(p.converts());
    }
    if let Some(obj) = meta.as_object_mut() {
        // The CRD is long; `wasmop crd` prints it.
        if obj.remove("crd").is_some_and(|c| !c.is_null()) {
            obj.insert("crd".into(), json!("yes (see `wasmop crd`)"));
        }
    }
    let report = json!({
        "file": file.path,
        "world": file.world,
        "contract": format!("wasmop:plugin@{}", file.contract),
        "revision": file.revision(),
        "sha256": file.sha256,
        "sizeBytes": file.size,
        "loadTimeMs": (file.load_time.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        "compiledCode": file.cache,
        "limits": {
            "timeoutMs": limits.timeout.as_millis() as u64,
            "memoryMiB": limits.memory_bytes >> 20,
            "outputMiB": limits.output_bytes >> 20,
        },
        "metadata": meta,
    });
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", wasmop::manifest::to_yaml(&report)),
    }
    Ok(ExitCode::SUCCESS)
}
