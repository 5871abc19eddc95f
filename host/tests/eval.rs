//! `wasmop eval`, `wasmop crd` and `wasmop plugin inspect` as a user runs them: the real binary
//! on the real default plugin.

mod common;

use common::{stdout, wasmop};

use std::path::Path;

use serde_json::{Value, json};

fn appoperator() -> String {
    common::plugin("appoperator").display().to_string()
}

fn eval_json(file: &Path, extra: &[&str]) -> Value {
    let plugin = appoperator();
    let mut args = vec!["eval", "--plugin", &plugin, "-o", "json"];
    args.extend_from_slice(extra);
    let file = file.display().to_string();
    args.push(&file);
    serde_json::from_str(&stdout(&wasmop(&args))).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn example_gives_exactly_the_expected_deployment() {
    let result = eval_json(&common::example("appoperator.yaml"), &[]);
    let expected = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
            },
        },
    });
    assert_eq!(result[0]["parent"], "default/web");
    assert_eq!(result[0]["children"], json!([expected]));
    assert_eq!(result[0]["conditions"][0]["type"], "Ready");
    assert_eq!(result[0]["conditions"][0]["status"], "False");
    assert_eq!(result[0]["conditions"][0]["message"], "0/3 replicas available");
}

#[test]
fn yaml_output_is_appliable_documents_with_status_as_comments() {
    let plugin = appoperator();
    let example = common::example("appoperator.yaml").display().to_string();
    let text = stdout(&wasmop(&["eval", "--plugin", &plugin, &example]));
    assert!(text.starts_with("---\napiVersion: apps/v1\nkind: Deployment\n"), "{text}");
    let docs = wasmop::manifest::parse_objects(&text, Path::new("stdout")).unwrap();
    assert_eq!(docs.len(), 1, "status must not be a document: {text}");
    assert!(text.contains("#     reason: Progressing"), "{text}");
}

#[test]
fn observed_children_drive_the_ready_condition() {
    let dir = tempfile::tempdir().unwrap();
    let observed = |available: u32| {
        write(
            dir.path(),
            &format!("observed-{available}.yaml"),
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\nstatus:\n  availableReplicas: {available}\n"
            ),
        )
    };
    let example = common::example("appoperator.yaml");
    let partly = eval_json(&example, &["--observed", observed(2).to_str().unwrap()]);
    assert_eq!(partly[0]["conditions"][0]["status"], "False");
    assert_eq!(partly[0]["conditions"][0]["reason"], "Progressing");
    assert_eq!(partly[0]["conditions"][0]["message"], "2/3 replicas available");
    assert_eq!(partly[0]["status"]["availableReplicas"], 2);

    let fully = eval_json(&example, &["--observed", observed(3).to_str().unwrap()]);
    assert_eq!(fully[0]["conditions"][0]["status"], "True");
    assert_eq!(fully[0]["conditions"][0]["message"], "3/3 replicas available");
}

#[test]
fn related_objects_come_from_files_as_from_the_caches() {
    let dir = tempfile::tempdir().unwrap();
    let parent = write(
        dir.path(),
        "app.yaml",
        "apiVersion: tools.wasmop.dev/v1\nkind: Appoperator\nmetadata: {name: web, namespace: shop}\n\
         spec: {workload: {image: nginx:1.27, configRef: web-config}}\n",
    );
    let related = write(
        dir.path(),
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config, namespace: shop}\ndata: {LEVEL: info}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config, namespace: blog}\ndata: {LEVEL: debug}\n",
    );
    let found = eval_json(&parent, &["--related", related.to_str().unwrap()]);
    let template = &found[0]["children"][0]["spec"]["template"];
    assert!(template["metadata"]["annotations"]["appoperator.tools.wasmop.dev/config-hash"].is_string(), "{found}");
    assert_eq!(template["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"], "web-config");
    let missing = eval_json(&parent, &[]);
    assert_eq!(missing[0]["conditions"][0]["reason"], "ConfigMissing", "{missing}");
}

#[test]
fn replicas_default_to_one_and_namespace_to_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        "apiVersion: tools.wasmop.dev/v1beta1\nkind: Appoperator\nmetadata:\n  name: api\nspec:\n  image: api:2\n",
    );
    let result = eval_json(&file, &[]);
    assert_eq!(result[0]["children"][0]["spec"]["replicas"], 1);
    assert_eq!(result[0]["children"][0]["metadata"]["namespace"], "default");
}

#[test]
fn invalid_specs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = appoperator();
    for (name, spec, needle) in [
        ("empty-image", "image: \"\"", "spec.workload.image must name a container image"),
        ("too-many", "image: nginx:1.27\n  replicas: 5000", "spec.workload.replicas must be between 0 and 1000"),
        ("wrong-type", "image: nginx:1.27\n  replicas: lots", "default/bad"),
    ] {
        let file = write(
            dir.path(),
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: tools.wasmop.dev/v1beta1\nkind: Appoperator\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  {spec}\n"
            ),
        );
        let out = wasmop(&["eval", "--plugin", &plugin, file.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with("error: plugin appoperator rejected the spec"), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
}

#[test]
fn wrong_kind_in_file_names_the_file_and_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
    let plugin = appoperator();
    let out = wasmop(&["eval", "--plugin", &plugin, file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cm.yaml contains no tools.wasmop.dev/v1 Appoperator") && stderr.contains("v1 ConfigMap"),
        "{stderr}"
    );
}

#[test]
fn policies_review_the_desired_children() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::plugin("deny-latest-tag").display().to_string();
    let plugin = appoperator();
    let latest = write(
        dir.path(),
        "latest.yaml",
        "apiVersion: tools.wasmop.dev/v1beta1\nkind: Appoperator\nmetadata:\n  name: web\nspec:\n  image: nginx:latest\n",
    );
    let out = wasmop(&["eval", "--plugin", &plugin, "--policy", &policy, latest.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("policy deny-latest-tag denied Deployment default/web"), "{stderr}");

    let pinned = eval_json(&common::example("appoperator.yaml"), &["--policy", &policy]);
    assert_eq!(pinned[0]["children"].as_array().unwrap().len(), 1);
}

#[test]
fn checked_in_rbac_matches_the_plugins() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["appoperator", "deny-latest-tag"] {
        std::fs::copy(common::plugin(p), dir.path().join(format!("{}.wasm", p.replace('-', "_")))).unwrap();
    }
    let args = ["rbac", "--plugins", dir.path().to_str().unwrap(), "--plugin-sources", "dir,cluster"];
    let generated = stdout(&wasmop(&args));
    let path = common::workspace().join("deploy/base/rbac.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "{} is out of date with the plugins; regenerate it with `make manifests`",
        path.display()
    );
    assert!(!generated.contains('*'), "a wildcard in the generated RBAC:\n{generated}");
}

#[test]
fn checked_in_wasmplugin_crd_matches_the_host() {
    let generated = stdout(&wasmop(&["crd", "--wasmplugin"]));
    let path = common::workspace().join("deploy/base/crds/wasmplugin.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "{} is out of date with the host; regenerate it with `make manifests`",
        path.display()
    );
    let crd = &wasmop::manifest::parse_objects(&generated, Path::new("crd")).unwrap()[0];
    assert_eq!(crd["metadata"]["name"], "wasmplugins.wasmop.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
}

#[test]
fn checked_in_crd_matches_the_plugin() {
    let plugin = appoperator();
    let generated = stdout(&wasmop(&["crd", "--plugin", &plugin]));
    let path = common::workspace().join("deploy/base/crds/appoperator.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "{} is out of date with the plugin's CRD; regenerate it with `make manifests`",
        path.display()
    );
    let crd = &wasmop::manifest::parse_objects(&generated, Path::new("crd")).unwrap()[0];
    assert_eq!(crd["metadata"]["name"], "appoperators.tools.wasmop.dev");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Image", "Replicas", "Ready", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["appop"]));
    // The running wasmop owns spec.conversion (its address and CA): deploy/ sets none of it, so
    // applying deploy/ never fights the address a wasmop set (url or service).
    assert!(crd["spec"].get("conversion").is_none(), "{}", crd["spec"]["conversion"]);
}

#[test]
fn crd_with_a_webhook_service_points_conversion_at_it() {
    let plugin = appoperator();
    let generated = stdout(&wasmop(&["crd", "--plugin", &plugin, "--webhook-service", "wasmop-system/wasmop-webhook"]));
    let crd = &wasmop::manifest::parse_objects(&generated, Path::new("crd")).unwrap()[0];
    assert_eq!(crd["spec"]["conversion"]["strategy"], "Webhook");
    assert_eq!(
        crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"],
        json!({"namespace": "wasmop-system", "name": "wasmop-webhook", "path": "/convert", "port": 443})
    );
}

#[test]
fn inspect_reports_what_the_plugin_declares() {
    let plugin = appoperator();
    let out = stdout(&wasmop(&["plugin", "inspect", &plugin, "-o", "json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["world"], "operator");
    assert_eq!(report["metadata"]["name"], "appoperator");
    assert_eq!(report["metadata"]["parent"]["kind"], "Appoperator");
    assert_eq!(report["metadata"]["children"][0]["gvk"]["kind"], "Deployment");
    assert_eq!(report["metadata"]["finalizer"], false);
    assert_eq!(report["sizeBytes"].as_u64(), Some(std::fs::metadata(&plugin).unwrap().len()));
    assert!(report["loadTimeMs"].as_f64().is_some());
    assert_eq!(report["contract"], "wasmop:plugin@0.3.0");
    assert_eq!(report["metadata"]["storageVersion"], "v1");
    assert_eq!(report["metadata"]["conversion"], true);
    let versions = report["metadata"]["crdVersions"].as_array().unwrap();
    let beta = versions.iter().find(|v| v["name"] == "v1beta1").unwrap();
    assert!(beta["deprecationWarning"].as_str().unwrap().contains("use tools.wasmop.dev/v1"), "{beta}");

    // The contract-0.1 build still loads: one version, no conversion.
    let old = common::workspace().join("tests/fixtures/appoperator-0.1.0.wasm");
    let out = stdout(&wasmop(&["plugin", "inspect", old.to_str().unwrap(), "-o", "json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["contract"], "wasmop:plugin@0.1.0");
    assert_eq!(report["metadata"]["conversion"], false);
    assert_eq!(report["metadata"]["storageVersion"], "v1beta1");
    assert_eq!(report["metadata"]["reads"], json!([]));

    // The contract-0.2 build too: it converts, reads nothing, and reconciles as it did.
    let old = common::workspace().join("tests/fixtures/appoperator-0.2.0.wasm");
    let out = stdout(&wasmop(&["plugin", "inspect", old.to_str().unwrap(), "-o", "json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["contract"], "wasmop:plugin@0.2.0");
    assert_eq!(report["metadata"]["conversion"], true);
    assert_eq!(report["metadata"]["reads"], json!([]));
    let example = common::example("appoperator.yaml");
    let eval = |plugin: &str| -> Value {
        serde_json::from_str(&stdout(&wasmop(&["eval", "--plugin", plugin, "-o", "json", example.to_str().unwrap()])))
            .unwrap()
    };
    let (old_out, new_out) = (eval(old.to_str().unwrap()), eval(&plugin));
    assert_eq!(old_out[0]["children"], new_out[0]["children"], "the 0.2 build reconciles as the current one");
}

#[test]
fn convert_moves_fields_between_versions_and_back() {
    let plugin = appoperator();
    let old = common::example("appoperator-v1beta1.yaml");
    let v1: Value = serde_json::from_str(&stdout(&wasmop(&[
        "convert",
        "--plugin",
        &plugin,
        "--to",
        "v1",
        "-o",
        "json",
        old.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(v1[0]["apiVersion"], "tools.wasmop.dev/v1");
    assert_eq!(v1[0]["spec"], json!({"workload": {"image": "nginx:1.26", "replicas": 1}}));
    let new = common::example("appoperator.yaml");
    let out = stdout(&wasmop(&["convert", "--plugin", &plugin, "--to", "v1beta1", new.to_str().unwrap()]));
    assert!(out.contains(r#"appoperator.tools.wasmop.dev/v1-workload: "{\"port\":80}""#), "{out}");
}

#[test]
fn the_round_trip_check_passes_appoperator_and_catches_a_lossy_conversion() {
    let plugin = appoperator();
    let (new, old) = (common::example("appoperator.yaml"), common::example("appoperator-v1beta1.yaml"));
    let args = ["convert", "--check", "--plugin", &plugin, new.to_str().unwrap(), old.to_str().unwrap()];
    let out = stdout(&wasmop(&args));
    assert!(out.contains("202 objects round-trip through [\"v1\", \"v1beta1\"]"), "{out}");

    let lossy = common::plugin("hostile").with_file_name("hostile_lossy.wasm");
    let out = wasmop(&["convert", "--check", "--plugin", lossy.to_str().unwrap()]);
    assert!(!out.status.success(), "a lossy conversion passed the check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("via v2: /spec/count: was ") && stderr.contains("came back absent"), "{stderr}");
}

#[test]
fn version_names_the_contracts() {
    let out = stdout(&wasmop(&["version"]));
    assert!(out.starts_with(&format!("wasmop {}\n", env!("CARGO_PKG_VERSION"))), "{out}");
    assert!(out.contains("wasmop:plugin@0.3.0") && out.contains("0.1.x"), "{out}");
}

#[test]
fn golden_cases_of_the_shipped_plugin_pass() {
    let plugin = appoperator();
    let dir = common::workspace().join("plugins/appoperator");
    let out = stdout(&wasmop(&["test", "--plugin", &plugin, dir.to_str().unwrap()]));
    assert!(out.contains("6 cases: 6 passed, 0 failed"), "{out}");
}

#[test]
fn a_changed_answer_shows_a_diff_and_update_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let golden = common::workspace().join("plugins/appoperator/tests/golden/new-parent.yaml");
    let text = std::fs::read_to_string(golden).unwrap();
    let case = write(dir.path(), "case.yaml", &text.replace("message: 0/3 replicas", "message: 0/4 replicas"));
    let plugin = appoperator();
    let out = wasmop(&["test", "--plugin", &plugin, case.to_str().unwrap()]);
    assert!(!out.status.success(), "a wrong expectation passed");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("- - message: 0/4 replicas available\n+ - message: 0/3 replicas available"), "{report}");
    stdout(&wasmop(&["test", "--plugin", &plugin, "--update", case.to_str().unwrap()]));
    let updated = std::fs::read_to_string(&case).unwrap();
    assert!(updated.starts_with("# A new Appoperator"), "comments above expect: were lost: {updated}");
    assert!(stdout(&wasmop(&["test", "--plugin", &plugin, case.to_str().unwrap()])).contains("1 passed"));
}

#[test]
fn policy_settings_come_from_the_flag_or_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = appoperator();
    let edge = write(
        dir.path(),
        "edge.yaml",
        "apiVersion: tools.wasmop.dev/v1\nkind: Appoperator\nmetadata:\n  name: web\nspec:\n  workload:\n    image: nginx:edge\n",
    );
    let policy = dir.path().join("deny_latest_tag.wasm");
    std::fs::copy(common::plugin("deny-latest-tag"), &policy).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "--plugin", &plugin, "--policy", policy.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(edge.to_str().unwrap());
        wasmop(&args)
    };
    assert!(run(&[]).status.success(), "edge is allowed by default");
    let settings = write(dir.path(), "settings.json", r#"{"deniedTags": ["edge"]}"#);
    let flag = format!("deny-latest-tag={}", settings.display());
    let denied = run(&["--policy-settings", &flag]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("policy deny-latest-tag denied"), "{denied:?}");
    write(dir.path(), "deny_latest_tag.toml", "[settings]\ndeniedTags = [\"edge\"]\n");
    let denied = run(&[]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("not one of [\"edge\"]"), "{denied:?}");
}

#[test]
fn a_case_naming_a_policy_not_loaded_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let case = common::workspace().join("examples/js-policy/tests/edge-denied-by-settings.yaml");
    let text = std::fs::read_to_string(case).unwrap();
    let case = write(dir.path(), "case.yaml", &text);
    let policy = common::plugin("deny-latest-tag").display().to_string();
    let out = wasmop(&["test", "--plugin", &appoperator(), "--policy", &policy, case.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("case.yaml")
            && stderr.contains("names policy \"js-deny-latest-tag\", which is not among the --policy files"),
        "{stderr}"
    );
}
