//! `deploy/monitoring`, checked with the real Prometheus tooling (promtool and prometheus, built
//! by `make observability`) and kubectl: the alert rules load and their unit tests pass (each
//! alert fires on its fault and none on a healthy operator), every alert has a runbook, the
//! dashboard's PromQL parses, shows every `wasmop_*` metric the host exports and evaluates
//! without error on a Prometheus that scraped a running wasmop, and the kustomization builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn monitoring() -> PathBuf {
    common::workspace().join("deploy/monitoring")
}

/// A binary `make observability` builds.
fn tool(name: &str) -> PathBuf {
    let path = common::workspace().join("target/observability/bin").join(name);
    assert!(path.exists(), "{} is missing: build it with `make observability` (make test does)", path.display());
    path
}

fn promtool() -> PathBuf {
    tool("promtool")
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

/// The queries of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
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
    let exprs = dashboard_queries();
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

/// A GET over HTTP/1.0 (no chunked answer to decode): the status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        let code = reply.get(9..12)?.parse().ok()?;
        Some((code, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), probe).await.ok().flatten()
}

/// `text` percent-encoded for a query string.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's JSON answer from the Prometheus at `addr`.
async fn query(addr: std::net::SocketAddr, promql: &str) -> Value {
    let (code, body) =
        http_get(addr, &format!("/api/v1/query?query={}", encoded(promql))).await.expect("Prometheus answers");
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{promql}: {e}: {body}"));
    assert_eq!((code, &answer["status"]), (200, &json!("success")), "{promql}: {answer}");
    answer
}

/// A free loopback address (bound, then released for the child process to take).
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A Prometheus process; killed when dropped.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes a running wasmop (the in-memory API server, the hostile plugin
/// reconciling a good parent and failing on another) every second, as the ServiceMonitor's job
/// `wasmop-metrics`; then every query of the dashboard evaluates without error, and the
/// reconcile, plugin call and failure panels show the operator's series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_evaluates_on_a_prometheus_scraping_wasmop() {
    use common::cluster::{Cluster, create, eventually, hostile_resource, install_hostile_crd};
    let cluster = Cluster::memory().await;
    install_hostile_crd(&cluster.client).await;
    let plugins = common::operator::plugins_dir(&[("hostile", None)]);
    let operator = common::operator::Operator::start(&cluster, plugins.path(), common::operator::quiet());
    for (name, mode) in [("good", "ok"), ("bad", "panic")] {
        create(&cluster.client, &hostile_resource(), &cluster.ns, name, json!({"mode": mode})).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: wasmop-metrics\n  \
         static_configs: [{{targets: ['{}'], labels: {{pod: wasmop-test}}}}]\n",
        operator.telemetry_addr
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let addr = free_addr();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts");
    let _prometheus = Prometheus(child);
    eventually("Prometheus ready", || async { http_get(addr, "/-/ready").await.is_some_and(|(code, _)| code == 200) })
        .await;
    // Rates need two samples of each series, after the failing parent's first failures.
    let has_data = |promql: &'static str| async move {
        let (_, body) = http_get(addr, &format!("/api/v1/query?query={}", encoded(promql))).await.unwrap_or_default();
        serde_json::from_str::<Value>(&body)
            .is_ok_and(|a| a["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
    };
    eventually("wasmop scraped, rates computable", || {
        has_data("rate(wasmop_plugin_failures_total{job=\"wasmop-metrics\"}[5m]) > 0")
    })
    .await;
    for promql in dashboard_queries() {
        query(addr, &promql).await;
    }
    for (panel, promql) in [
        (
            "reconciles by result",
            "sum by (controller, result) (rate(controller_runtime_reconcile_total{job=\"wasmop-metrics\"}[5m]))",
        ),
        (
            "plugin failures by reason",
            "sum by (plugin, reason) (rate(wasmop_plugin_failures_total{job=\"wasmop-metrics\"}[5m]))",
        ),
    ] {
        assert!(dashboard_queries().iter().any(|q| q == promql), "the dashboard no longer has {panel}: {promql}");
        let answer = query(addr, promql).await;
        let series = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(
            series
                .iter()
                .any(|s| s["metric"].get("controller").or(s["metric"].get("plugin")) == Some(&json!("hostile"))),
            "{panel} shows no series of plugin hostile: {answer}"
        );
    }
    operator.stop().await;
    cluster.shutdown().await;
}
