//! `wasmop new` as a new user runs it: create a project, build it with its own Makefile, run its
//! golden cases with `wasmop test` and evaluate its example.

mod common;

use std::process::Command;

fn run(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("WASMOP", env!("CARGO_BIN_EXE_wasmop"))
        .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
        // One build directory for every run: the project's dependencies compile once.
        .env("CARGO_TARGET_DIR", common::workspace().join("target/new-projects"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn a_new_rust_project_builds_tests_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let created = run(dir.path(), env!("CARGO_BIN_EXE_wasmop"), &["new", "--lang", "rust", "demo-app"]);
    assert!(created.contains("kind DemoApp"), "{created}");
    let project = dir.path().join("demo-app");
    let tested = run(&project, "make", &["test"]);
    assert!(tested.contains("2 cases: 2 passed, 0 failed"), "{tested}");
    let evaluated = run(&project, "make", &["eval"]);
    assert!(evaluated.contains("greeting: Hello from demo-app"), "{evaluated}");
    let again =
        Command::new(env!("CARGO_BIN_EXE_wasmop")).args(["new", "demo-app"]).current_dir(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{again:?}");
}
