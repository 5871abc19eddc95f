//! `wasmop convert`: a plugin's conversion, offline — convert objects to a version, or check
//! that every version pair round-trips (`--check`) over the given and generated objects.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::Value;
use wasmop::manifest::{read_objects, to_yaml_documents};
use wasmop::plugin::{Limits, Runtime};
use wasmop::roundtrip;

use super::Output;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The operator plugin whose conversion to run.
    #[arg(long)]
    plugin: PathBuf,
    /// The version to convert to, e.g. v1.
    #[arg(long, required_unless_present = "check")]
    to: Option<String>,
    /// Check instead that every object round-trips through every other version unchanged.
    #[arg(long, conflicts_with = "to")]
    check: bool,
    /// With --check: also this many objects per version generated from the CRD's schemas.
    #[arg(long, default_value_t = 100)]
    generate: usize,
    /// Output format of converted objects.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
    /// Files of objects (multi-document YAML).
    files: Vec<PathBuf>,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let plugin = rt.load_operator(&args.plugin, Limits::default())?;
    let mut objects = Vec::new();
    for file in &args.files {
        objects.extend(read_objects(file)?);
    }
    let Some(to) = &args.to else {
        let versions = plugin.metadata().crd_versions();
        if versions.len() < 2 {
            println!("{}: one version, nothing to convert", plugin.metadata().name);
            return Ok(ExitCode::SUCCESS);
        }
        objects.extend(roundtrip::generate(&plugin, args.generate));
        let failures = roundtrip::check(&plugin, &objects);
        for failure in &failures {
            eprintln!("round trip failed: {failure}");
        }
        let names: Vec<String> = versions.into_iter().map(|v| v.name).collect();
        if !failures.is_empty() {
            bail!("{} of {} objects did not round-trip through {names:?}", failures.len(), objects.len());
        }
        println!("{}: {} objects round-trip through {names:?}", plugin.metadata().name, objects.len());
        return Ok(ExitCode::SUCCESS);
    };
    if objects.is_empty() {
        bail!("no objects to convert: name files of {}", plugin.metadata().parent.kind);
    }
    let converted = objects.iter().map(|o| plugin.convert(o, to)).collect::<Result<Vec<Value>, _>>()?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&converted)?),
        Output::Yaml => print!("{}", to_yaml_documents(&converted)),
    }
    Ok(ExitCode::SUCCESS)
}
