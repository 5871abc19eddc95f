//! `wasmop new` as a new user runs it, in each language and world: create a project, build it
//! with its own Makefile, run its unit tests and golden cases (`make test`) and evaluate its
//! example (`make eval`).
//!
//! Shared between runs, so that only the first is slow: one cargo target directory for the Rust
//! projects, and for Python and JavaScript the tool directory `make polyglot` fills
//! (target/polyglot: the venv with componentize-py, node_modules with componentize-qjs), which a
//! project's `make tools` fills when it is missing. Policy projects review the children of
//! Appoperator, built by `make plugins`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("WASMOP", env!("CARGO_BIN_EXE_wasmop"))
        .env("WASMOP_CACHE_DIR", cache_dir())
        // One build directory for every run: the project's dependencies compile once.
        .env("CARGO_TARGET_DIR", common::workspace().join("target/new-projects"))
        // One tool directory for the Python and JavaScript projects (their Makefiles' TOOLS).
        .env("TOOLS", common::workspace().join("target/polyglot"))
        // The operator whose children the policy projects review (their Makefiles' OPERATOR).
        .env("OPERATOR", common::workspace().join("target/wasm32-wasip2/plugin/appoperator.wasm"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn cache_dir() -> PathBuf {
    common::workspace().join("target/test-code-cache")
}

/// `wasmop new --lang LANG --world WORLD NAME` in a new temporary directory: the directory (kept
/// until dropped) and the project in it.
fn new_project(lang: &str, world: &str, name: &str, says: &str) -> (tempfile::TempDir, PathBuf) {
    if world == "policy" {
        common::plugin("appoperator"); // built, or a message saying how
    }
    let dir = tempfile::tempdir().unwrap();
    let created = run(dir.path(), env!("CARGO_BIN_EXE_wasmop"), &["new", "--lang", lang, "--world", world, name]);
    assert!(created.contains(says), "{created}");
    let project = dir.path().join(name);
    (dir, project)
}

/// `make tools` (the pinned componentize-py or componentize-qjs in the shared tool directory),
/// one project at a time: two installs into one directory would collide.
fn install_tools(project: &Path) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    run(project, "make", &["tools"]);
}

/// Removes the compiled code of `wasm` from the shared code cache. componentize-py gives
/// different bytes on every build, so what a Python project's run compiled is never used again.
fn forget_compiled(wasm: &Path) {
    let sha256 = wasmop::plugin::sha256_hex(&std::fs::read(wasm).unwrap());
    for entry in std::fs::read_dir(cache_dir()).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&sha256) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `make test` passes both golden cases (after the project's unit tests, whose summary is
/// `unit_tests_passed`); returns what it printed.
fn make_test(project: &Path, unit_tests_passed: &str) -> String {
    let tested = run(project, "make", &["test"]);
    assert!(tested.contains(unit_tests_passed), "{tested}");
    assert!(tested.contains("2 cases: 2 passed, 0 failed"), "{tested}");
    tested
}

/// What an operator project's `make eval` shows: the example's ConfigMap, Ready.
fn evaluates_the_greeting(project: &Path, name: &str) {
    let evaluated = run(project, "make", &["eval"]);
    assert!(evaluated.contains(&format!("greeting: Hello from {name}")), "{evaluated}");
    assert!(evaluated.contains("reason: Greeted"), "{evaluated}");
}

/// What a policy project's `make eval` shows: the example Appoperator's Deployment, allowed.
fn evaluates_the_allowed_deployment(project: &Path) {
    let evaluated = run(project, "make", &["eval"]);
    assert!(evaluated.contains("kind: Deployment") && evaluated.contains("replicas: 3"), "{evaluated}");
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
    let again = common::wasmop_command().args(["new", "demo-app"]).current_dir(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{again:?}");
}

#[test]
fn a_new_rust_policy_reviews_appoperators_children() {
    let (_dir, project) = new_project("rust", "policy", "demo-rs-policy", "Rust policy plugin");
    make_test(&project, "test result: ok. 2 passed");
    evaluates_the_allowed_deployment(&project);
}

#[test]
fn a_new_python_operator_builds_tests_and_evaluates() {
    let (_dir, project) = new_project("python", "operator", "demo-py", "kind DemoPy");
    install_tools(&project);
    make_test(&project, "Ran 2 tests");
    evaluates_the_greeting(&project, "demo-py");
    forget_compiled(&project.join("demo-py.wasm"));
}

#[test]
fn a_new_python_policy_reviews_appoperators_children() {
    let (_dir, project) = new_project("python", "policy", "demo-py-policy", "Python policy plugin");
    install_tools(&project);
    make_test(&project, "Ran 2 tests");
    evaluates_the_allowed_deployment(&project);
    forget_compiled(&project.join("demo-py-policy.wasm"));
}

#[test]
fn a_new_js_operator_builds_tests_and_evaluates() {
    let (_dir, project) = new_project("js", "operator", "demo-js", "kind DemoJs");
    assert_pins_match_the_lockfile(&project);
    install_tools(&project);
    make_test(&project, "# pass 2");
    evaluates_the_greeting(&project, "demo-js");
}

#[test]
fn a_new_js_policy_reviews_appoperators_children() {
    let (_dir, project) = new_project("js", "policy", "demo-js-policy", "JavaScript policy plugin");
    install_tools(&project);
    make_test(&project, "# pass 2");
    evaluates_the_allowed_deployment(&project);
}

/// A JavaScript project's package.json asks for exactly what its (vendored) lockfile resolves,
/// or `npm ci` refuses to install.
fn assert_pins_match_the_lockfile(project: &Path) {
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(project.join(file)).unwrap()).unwrap()
    };
    let (package, lock) = (read("package.json"), read("package-lock.json"));
    assert_eq!(package["devDependencies"], lock["packages"][""]["devDependencies"], "{package}");
    assert_eq!(package["type"], "module", "plugin.js is an ES module, also for node --test");
}
