//! Plugins in Python and JavaScript (`examples/python-operator`, `examples/js-policy`, built by
//! `make polyglot` with pinned tools) answer exactly as the Rust ones: the very same golden
//! cases, and readable errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wasmop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args(args)
        .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
        .output()
        .expect("run wasmop")
}

fn passes(out: &Output, cases: usize) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("{cases} cases: {cases} passed")), "{text}{out:?}");
}

/// A plugin built by `make polyglot`.
fn polyglot(file: &str) -> String {
    let path = common::workspace().join("target/wasm32-wasip2/plugin").join(file);
    assert!(path.exists(), "{} is missing: run `make polyglot` (make test does)", path.display());
    path.display().to_string()
}

/// `dir`'s cases copied to a temporary directory with each `(from, to)` replaced.
fn ported(dir: &Path, replace: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = replace.iter().fold(std::fs::read_to_string(&path).unwrap(), |t, (a, b)| t.replace(a, b));
        std::fs::write(out.path().join(path.file_name().unwrap()), text).unwrap();
    }
    let path = out.path().to_path_buf();
    (out, path)
}

#[test]
fn the_python_appoperator_answers_the_rust_golden_cases() {
    let rust_cases = common::workspace().join("plugins/appoperator/tests/golden");
    let (_keep, cases) = ported(
        &rust_cases,
        &[
            ("appoperator.tools.wasmop.dev/v1-workload", "pyapp.python.wasmop.dev/v1-workload"),
            ("tools.wasmop.dev", "python.wasmop.dev"),
            ("kind: Appoperator", "kind: PyApp"),
            ("plugin appoperator ", "plugin pyapp "),
        ],
    );
    passes(&wasmop(&["test", "--plugin", &polyglot("python_operator.wasm"), cases.to_str().unwrap()]), 4);
    let out = wasmop(&["convert", "--check", "--plugin", &polyglot("python_operator.wasm")]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_js_policy_and_the_rust_policy_answer_the_same_cases() {
    let appoperator = common::plugin("appoperator").display().to_string();
    let js_cases = common::workspace().join("examples/js-policy/tests");
    let js = polyglot("js_policy.wasm");
    passes(&wasmop(&["test", "--plugin", &appoperator, "--policy", &js, js_cases.to_str().unwrap()]), 3);
    let (_keep, cases) = ported(&js_cases, &[("policy js-deny-latest-tag ", "policy deny-latest-tag ")]);
    let rust = common::plugin("deny-latest-tag").display().to_string();
    passes(&wasmop(&["test", "--plugin", &appoperator, "--policy", &rust, cases.to_str().unwrap()]), 3);
}

#[test]
fn a_python_key_error_is_reported_with_its_text() {
    let file = common::workspace().join("examples/python-operator/failing/missing-image.yaml");
    let out = wasmop(&["eval", "--plugin", &polyglot("python_operator.wasm"), file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugin pyapp rejected the spec: default/noimage: KeyError"), "{stderr}");
}
