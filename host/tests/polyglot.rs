//! Plugins in Python and JavaScript (`examples/python-operator`, `examples/js-policy`, built by
//! `make polyglot` with pinned tools) answer exactly as the Rust ones: the very same golden
//! cases, and readable errors.

mod common;

use common::wasmop;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
            // Its annotations (v1-workload, config-hash) are named after the plugin.
            ("appoperator.tools.wasmop.dev/", "pyapp.python.wasmop.dev/"),
            ("tools.wasmop.dev", "python.wasmop.dev"),
            ("kind: Appoperator", "kind: PyApp"),
            ("plugin appoperator ", "plugin pyapp "),
        ],
    );
    passes(&wasmop(&["test", "--plugin", &polyglot("python_operator.wasm"), cases.to_str().unwrap()]), 6);
    let out = wasmop(&["convert", "--check", "--plugin", &polyglot("python_operator.wasm")]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_js_policy_and_the_rust_policy_answer_the_same_cases() {
    let appoperator = common::plugin("appoperator").display().to_string();
    let js_cases = common::workspace().join("examples/js-policy/tests");
    let js = polyglot("js_policy.wasm");
    passes(&wasmop(&["test", "--plugin", &appoperator, "--policy", &js, js_cases.to_str().unwrap()]), 4);
    let (_keep, cases) = ported(
        &js_cases,
        &[("policy js-deny-latest-tag ", "policy deny-latest-tag "), ("  js-deny-latest-tag:", "  deny-latest-tag:")],
    );
    let rust = common::plugin("deny-latest-tag").display().to_string();
    passes(&wasmop(&["test", "--plugin", &appoperator, "--policy", &rust, cases.to_str().unwrap()]), 4);
}

#[test]
fn a_python_key_error_is_reported_with_its_text() {
    let file = common::workspace().join("examples/python-operator/failing/missing-image.yaml");
    let out = wasmop(&["eval", "--plugin", &polyglot("python_operator.wasm"), file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugin pyapp rejected the spec: default/noimage: KeyError"), "{stderr}");
}

/// Builds a throwaway Python operator from `source` (importing the vendored helper) with the
/// pinned componentize-py of `make polyglot`.
fn python_plugin(dir: &Path, name: &str, source: &str) -> PathBuf {
    let build = dir.join(format!("build-{name}"));
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join(format!("{name}.py")), source).unwrap();
    let root = common::workspace();
    std::fs::copy(root.join("plugins/sdk-python/wasmop_plugin.py"), build.join("wasmop_plugin.py")).unwrap();
    let out = dir.join(format!("{name}.wasm"));
    let status = Command::new(root.join("target/polyglot/venv/bin/componentize-py"))
        .args(["--quiet", "--wit-path"])
        .arg(root.join("wit/plugin.wit"))
        .args(["--world", "operator", "componentize", name, "--python-path", ".", "--output"])
        .arg(&out)
        .current_dir(&build)
        .status()
        .expect("componentize-py (make polyglot installs it)");
    assert!(status.success());
    out
}

/// Builds a throwaway JavaScript policy from `source` with the pinned componentize-qjs.
fn js_policy(dir: &Path, name: &str, source: &str) -> PathBuf {
    let js = dir.join(format!("{name}.js"));
    std::fs::write(&js, source).unwrap();
    let out = dir.join(format!("{name}.wasm"));
    let root = common::workspace();
    let status = Command::new(root.join("target/polyglot/node_modules/.bin/componentize-qjs"))
        .arg("--wit")
        .arg(root.join("wit/plugin.wit"))
        .args(["--world", "policy", "--sync", "--js"])
        .arg(&js)
        .arg("--output")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("componentize-qjs (make polyglot installs it)");
    assert!(status.success());
    out
}

const CRASHY_PY: &str = r#"
import json
import wasmop_plugin as wp

op = wp.Operator("crashy", "0.1.0", parent=("test.wasmop.dev", "v1", "Hostile"), children=["v1/ConfigMap"])

@op.reconcile
def reconcile(req):
    return wp.Response()

_Reconciler, Converter = op.exports()

class Reconciler(_Reconciler):
    """No helper around reconcile: a KeyError escapes to the runtime (the empty smoke parent passes)."""
    def reconcile(self, req):
        spec = json.loads(req.parent).get("spec") or {}
        if spec:
            return {"replicas": 1}["image"]
        return super().reconcile(req)
"#;

const BROKEN_METADATA_PY: &str = r#"
import wasmop_plugin as wp
op = wp.Operator("broken", "0.1.0", parent=("test.wasmop.dev", "v1", "Broken"), children=["v1/ConfigMap"])
_Reconciler, Converter = op.exports()

class Reconciler(_Reconciler):
    def metadata(self):
        return {}["name"]
"#;

const THROWY_JS: &str = r#"
export const reviewer = {
  metadata() { return { name: "throwy", version: "0.1.0", appliesTo: [] }; },
  review(parent, child, settings) {
    const c = JSON.parse(child);
    if ((c.metadata.labels || {}).boom) throw new Error("boom in " + c.metadata.name);
    return { tag: "allow" };
  },
};
"#;

const BROKEN_METADATA_JS: &str = r#"
export const reviewer = {
  metadata() { throw new Error("no metadata today"); },
  review(parent, child, settings) { return { tag: "allow" }; },
};
"#;

/// An uncaught Python `KeyError` and a JavaScript `throw` reach the parent's Ready condition and
/// the `PluginRejected` Event of a failed load with the exception's text, not a runtime panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_exceptions_reach_the_condition_and_the_reload_event() {
    use common::cluster::*;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams};
    use serde_json::json;

    let build = tempfile::tempdir().unwrap();
    let crashy = python_plugin(build.path(), "crashy", CRASHY_PY);
    let broken_py = python_plugin(build.path(), "brokenmeta", BROKEN_METADATA_PY);
    let throwy = js_policy(build.path(), "throwy", THROWY_JS);
    let broken_js = js_policy(build.path(), "brokenjs", BROKEN_METADATA_JS);

    // Offline first: `wasmop eval` shows the JavaScript exception.
    let parent = build.path().join("boom.yaml");
    std::fs::write(
        &parent,
        "apiVersion: test.wasmop.dev/v1\nkind: Hostile\nmetadata:\n  name: p\nspec:\n  mode: given\n  children:\n  \
         - {apiVersion: v1, kind: ConfigMap, metadata: {name: bang, labels: {boom: \"1\"}}}\n",
    )
    .unwrap();
    let hostile = common::plugin("hostile").display().to_string();
    let out = wasmop(&["eval", "--plugin", &hostile, "--policy", throwy.to_str().unwrap(), parent.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JavaScript exception in review: boom in bang (at review"), "{stderr}");

    let cluster = Cluster::memory().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    install_hostile_crd(&client).await;
    let dir = common::operator::plugins_dir(&[("hostile", None)]);
    std::fs::copy(&throwy, dir.path().join("zz_throwy.wasm")).unwrap();
    let running = common::operator::Operator::start(&cluster, dir.path(), common::operator::quiet());
    let ar = hostile_resource();
    let boom = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bang", "labels": {"boom": "1"}}});
    create(&client, &ar, &ns, "policy", json!({"mode": "given", "children": [boom]})).await;
    eventually("the JS exception in the condition", || async {
        get(&client, &ar, &ns, "policy").await.and_then(|o| ready(&o)).is_some_and(|(_, reason, message)| {
            reason == "PolicyError" && message.contains("JavaScript exception in review: boom in bang")
        })
    })
    .await;
    running.stop().await;

    // The Python plugin alone serves Hostile now.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&crashy, dir.path().join("crashy.wasm")).unwrap();
    let running = common::operator::Operator::start(&cluster, dir.path(), common::operator::quiet());
    create(&client, &ar, &ns, "python", json!({"replicas": 2})).await;
    eventually("the Python exception in the condition", || async {
        get(&client, &ar, &ns, "python")
            .await
            .and_then(|o| ready(&o))
            .is_some_and(|(_, _, message)| message.contains("KeyError: 'image' (File") && !message.contains("panicked"))
    })
    .await;
    std::fs::copy(&broken_py, dir.path().join("brokenmeta.wasm")).unwrap();
    std::fs::copy(&broken_js, dir.path().join("brokenjs.wasm")).unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    // Compiling a 19 MB Python component takes a while on a busy machine: wait longer than usual.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .map(|l| l.items.into_iter().filter_map(|e| e.note).collect())
            .unwrap_or_default();
        let python = notes.iter().any(|n| n.contains("brokenmeta.wasm") && n.contains("KeyError: 'name'"));
        let js = notes.iter().any(|n| n.contains("brokenjs.wasm") && n.contains("JavaScript exception in metadata"));
        if python && js {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rejections do not name the exceptions: {notes:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    running.stop().await;
    cluster.shutdown().await;
}
