//! `deploy/monitoring`, checked with the real Prometheus tooling (promtool, built by `make
//! observability`) and kubectl: the alert rules load and their unit tests pass (each alert fires
//! on its fault and none on a healthy operator), every alert has a runbook, the dashboard's
//! PromQL parses and shows every `wasmop_*` metric the host exports, and the kustomization builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn monitoring() -> PathBuf {
    common::workspace().join("deploy/monitoring")
}

fn promtool() -> PathBuf {
    let path = common::workspace().join("target/observability/bin/promtool");
    assert!(path.exists(), "{} is missing: build it with `make observability` (make test does)", path.display());
    path
}

/// Runs promtool with `args` in `dir`; its output, or a failure naming what it said.
fn promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool()).args(args).current_dir(dir).output().expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The PrometheusRule as a Prometheus rules file (its `spec`).
fn rules() -> Value {
    let path = monitoring().join("prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("prometheusrule.yaml");
    let objects = wasmop::manifest::parse_objects(&text, &path).expect("YAML");
    assert_eq!(objects[0]["kind"], "PrometheusRule");
    objects[0]["spec"].clone()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring().join("wasmop-dashboard.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn the_alerts_load_and_fire_on_their_faults_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), wasmop::manifest::to_yaml(&rules())).unwrap();
    std::fs::copy(monitoring().join("tests/alerts-test.yaml"), dir.path().join("alerts-test.yaml")).unwrap();
    let checked = promtool_ok(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool_ok(dir.path(), &["test", "rules", "alerts-test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_links_a_runbook_that_exists() {
    let index = std::fs::read_to_string(common::workspace().join("docs/runbooks/README.md")).unwrap();
    for rule in rules()["groups"][0]["rules"].as_array().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(url, format!("docs/runbooks/{alert}.md"), "{alert}");
        let page = std::fs::read_to_string(common::workspace().join(url)).unwrap_or_default();
        assert!(page.starts_with(&format!("# {alert}\n")), "{url} is missing or not {alert}'s runbook");
        assert!(index.contains(&format!("[{alert}.md]({alert}.md)")), "docs/runbooks/README.md does not list {alert}");
    }
}

#[test]
fn the_dashboard_parses_and_shows_every_wasmop_metric() {
    let dashboard = dashboard();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 18, "{} queries", exprs.len());
    // Each query as a recording rule: promtool parses the PromQL.
    let recording: Vec<Value> =
        exprs.iter().enumerate().map(|(i, e)| json!({"record": format!("dashboard:query_{i}"), "expr": e})).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = json!({"groups": [{"name": "dashboard", "rules": recording}]});
    std::fs::write(dir.path().join("dashboard.yaml"), wasmop::manifest::to_yaml(&file)).unwrap();
    promtool_ok(dir.path(), &["check", "rules", "dashboard.yaml"]);
    // Every wasmop family the host registers (a counter's series add `_total`).
    let metrics = wasmop::telemetry::Metrics::new();
    let families: Vec<&str> = metrics
        .families()
        .iter()
        .copied()
        .filter(|name| name.starts_with("wasmop_") && *name != "wasmop_plugin_info")
        .collect();
    assert!(families.len() >= 10, "{families:?}");
    for family in families {
        assert!(exprs.iter().any(|e| e.contains(family)), "no dashboard panel shows {family}");
    }
}

#[test]
fn the_kustomization_builds_the_monitor_the_rules_and_the_dashboard() {
    let out = Command::new("kubectl").args(["kustomize"]).arg(monitoring()).output().expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let objects = wasmop::manifest::parse_objects(&text, Path::new("kustomize")).unwrap();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let config_map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: Value = serde_json::from_str(config_map["data"]["wasmop-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(embedded, dashboard());
}
