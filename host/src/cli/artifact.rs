//! `wasmop plugin push` and `wasmop plugin pull`: plugins as OCI artifacts in the CNCF Wasm
//! layout, by the same registry code `wasmop run` pulls with.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use wasmop::plugin::Runtime;
use wasmop::registry::{self, Credentials, Registry};

use super::run::parse_size;

/// How to reach the registry.
#[derive(clap::Args)]
pub(crate) struct RegistryArgs {
    /// Reach this registry (HOST or HOST:PORT) over plain HTTP instead of HTTPS (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Username for the registry (the password is read from stdin with --password-stdin);
    /// default: the docker config file's credentials.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password (or token) from stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

impl RegistryArgs {
    /// The registry client these flags describe.
    pub(crate) fn registry(&self) -> anyhow::Result<Registry> {
        let mut registry = Registry::default().insecure(self.insecure_registries.clone());
        if let Some(username) = &self.username {
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            registry = registry.credentials(Credentials::Basic { username: username.clone(), password });
        }
        Ok(registry)
    }
}

#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// The plugin file (`.wasm`); it must load as a wasmop plugin.
    file: PathBuf,
    /// Where to push: REGISTRY/REPOSITORY:TAG.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// What to pull: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST.
    reference: String,
    /// Where to write the component (default: REPOSITORY's last segment with `.wasm`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Largest artifact accepted (bytes, or with a Ki/Mi/Gi suffix).
    #[arg(long, default_value = "64Mi", value_parser = parse_size)]
    max_plugin_size: u64,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Checks the file loads as a plugin, pushes it, and prints the manifest digest.
pub(crate) fn push(rt: &Runtime, args: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = registry::parse_reference(&args.reference)?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    rt.load_bytes(&args.file, &bytes, Default::default())
        .with_context(|| format!("{} is not a wasmop plugin; not pushed", args.file.display()))?;
    let title = args.file.file_name().map_or_else(|| "plugin.wasm".into(), |n| n.to_string_lossy().into_owned());
    let registry = args.registry.registry()?;
    let digest = super::block_on_value(registry.push(&reference, bytes, &title))?;
    eprintln!("pushed {}@{digest}", reference.whole());
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// Pulls and verifies an artifact, writes the component, and prints the manifest digest.
pub(crate) fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = registry::parse_reference(&args.reference)?;
    let registry = args.registry.registry()?.max_size(args.max_plugin_size);
    let artifact = super::block_on_value(registry.pull(&reference, None))?;
    let output = args.output.unwrap_or_else(|| {
        let name = reference.repository().rsplit('/').next().unwrap_or("plugin");
        PathBuf::from(format!("{name}.wasm"))
    });
    std::fs::write(&output, &artifact.bytes).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!("pulled {}@{} to {}", reference.whole(), artifact.digest, output.display());
    println!("{}", artifact.digest);
    Ok(ExitCode::SUCCESS)
}
