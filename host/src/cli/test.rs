//! `wasmop test`: a plugin's golden-file cases, offline (see [`wasmop::golden`]); also checks
//! that every case's parent round-trips through every version its CRD defines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use wasmop::golden::{self, Case};
use wasmop::plugin::{Limits, OperatorPlugin, Runtime};
use wasmop::roundtrip;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The operator plugin (default: the one `*.wasm` in DIR).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Policy plugins reviewing the children, in order (repeatable).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// Settings of one policy for every case, NAME=FILE (repeatable; default: the `[settings]`
    /// of the policy's NAME.toml beside it; a case's `policySettings:` overrides both).
    #[arg(long = "policy-settings", value_name = "NAME=FILE")]
    policy_settings: Vec<String>,
    /// Rewrite each case's `expect:` from the plugin's actual answer.
    #[arg(long)]
    update: bool,
    /// A project directory (its cases are under `tests/`), a directory of cases, or case files.
    #[arg(default_value = ".")]
    paths: Vec<PathBuf>,
}

pub(crate) fn run(rt: &Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let plugin_path = match &args.plugin {
        Some(path) => path.clone(),
        None => only_plugin_in(&args.paths)?,
    };
    let plugin = rt.load_operator(&plugin_path, Limits::default())?;
    let chain = super::eval::policy_chain(rt, &args.policies, &args.policy_settings)?;
    let cases = cases_in(&args.paths)?;
    if cases.is_empty() {
        bail!("no cases (*.yaml) in {:?}; a case is a YAML file with `parent:` and, last, `expect:`", args.paths);
    }
    let (mut failed, mut updated) = (0, 0);
    for path in &cases {
        let case = Case::read(path)?;
        case.policies(&chain)?;
        let answer = case.answer(&plugin, &chain);
        match (&case.expect, args.update) {
            (Some(expected), _) if *expected == answer => println!("ok      {}", path.display()),
            (_, true) => {
                case.update(&answer)?;
                updated += 1;
                println!("updated {}", path.display());
            }
            (None, false) => {
                failed += 1;
                println!("FAILED  {}: no `expect:` yet (run with --update to record the answer)", path.display());
            }
            (Some(expected), false) => {
                failed += 1;
                println!("FAILED  {}: the answer differs (- expected, + actual):", path.display());
                print!("{}", golden::diff(expected, &answer));
            }
        }
        failed += round_trips(&plugin, &case);
    }
    println!("{} cases: {} passed, {failed} failed, {updated} updated", cases.len(), cases.len() - failed - updated);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Failures of the case's parent round-tripping through the other versions.
fn round_trips(plugin: &OperatorPlugin, case: &Case) -> usize {
    let failures = roundtrip::check(plugin, std::slice::from_ref(&case.parent));
    for failure in &failures {
        println!("FAILED  {}: round trip: {failure}", case.path.display());
    }
    failures.len()
}

/// Case files: files as given; for a directory, its `tests/` when it has one, else itself.
fn cases_in(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let tests = path.join("tests");
            let dir = if tests.is_dir() { tests } else { path.clone() };
            files.extend(golden::case_files(&dir).with_context(|| format!("cannot read {}", dir.display()))?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The one `*.wasm` in the first directory given.
fn only_plugin_in(paths: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let dir = paths.iter().find(|p| p.is_dir()).map_or(Path::new("."), PathBuf::as_path);
    let wasm: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    match wasm.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no *.wasm in {}; build the plugin first (make) or name it with --plugin", dir.display()),
        _ => bail!("several *.wasm in {}; name the plugin with --plugin", dir.display()),
    }
}
