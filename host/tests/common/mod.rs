//! Helpers shared by the integration tests: where the real plugins are built, and a runtime.

#![allow(dead_code)]

pub mod cluster;
pub mod jaeger;
pub mod opens;
pub mod operator;
pub mod registry;

use std::path::PathBuf;
use std::process::{Command, Output};

use wasmop::plugin::{Runtime, RuntimeConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A plugin compiled from source by `make plugins` / `make test-plugins` (wasm32-wasip2).
pub fn plugin(crate_name: &str) -> PathBuf {
    let path = workspace().join("target/wasm32-wasip2/plugin").join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `make plugins test-plugins` (make test does)",
        path.display()
    );
    path
}

/// A runtime sharing one compiled-code cache across the test binaries, so each plugin is
/// compiled once per test run.
pub fn runtime() -> Runtime {
    let cache = workspace().join("target/test-code-cache");
    Runtime::new(RuntimeConfig { cache_dir: Some(cache), ..RuntimeConfig::default() }).expect("runtime")
}

/// Path of a file under `examples/`.
pub fn example(name: &str) -> PathBuf {
    workspace().join("examples").join(name)
}

/// A `wasmop` command (this build) sharing the tests' compiled-code cache.
pub fn wasmop_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmop"));
    command.env("WASMOP_CACHE_DIR", workspace().join("target/test-code-cache"));
    command
}

/// Runs `wasmop ARGS` (see [`wasmop_command`]) to its end.
pub fn wasmop(args: &[&str]) -> Output {
    wasmop_command().args(args).output().expect("run wasmop")
}

/// The standard output of a command that must have succeeded.
pub fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "wasmop failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}
