//! `deploy/monitoring`, checked with the real Prometheus tooling (promtool and prometheus, built
//! by `make observability`) and kubectl: the alert rules load and their unit tests pass (each
//! alert fires on its fault and none on a healthy operator), every alert has a runbook, the
//! dashboard's PromQL parses, shows every `wasmop_*` metric the host exports and evaluates
//! without error on a Prometheus that scraped a running wasmop, and the kustomization builds.
//! And traces: a reconcile's trace, read back from a real Jaeger (`make tracing`).

mod common;

use common::cluster::Cluster;

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

on_both_backends!(a_reconcile_is_traced_to_a_real_jaeger);

/// Prints the operator's log when the test fails (dropped while panicking).
struct ShowLog(PathBuf);

impl Drop for ShowLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- wasmop log ---\n{}", std::fs::read_to_string(&self.0).unwrap_or_default());
        }
    }
}

/// A span's tag `key` as a string (Jaeger types tags; numbers are shown as numbers).
fn tag(span: &Value, key: &str) -> Option<String> {
    let tags = span["tags"].as_array()?;
    let value = &tags.iter().find(|t| t["key"] == key)?["value"];
    Some(value.as_str().map_or_else(|| value.to_string(), str::to_string))
}

/// The spans of `trace` that are children of `parent` and named `name`.
fn children_named<'a>(trace: &'a [Value], parent: &Value, name: &str) -> Vec<&'a Value> {
    trace
        .iter()
        .filter(|s| s["operationName"] == name)
        .filter(|s| {
            s["references"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["refType"] == "CHILD_OF" && r["spanID"] == parent["spanID"]))
        })
        .collect()
}

/// The trace whose root is a reconcile of `parent_name` triggered by `trigger` (a prefix), with
/// its root span.
fn reconcile_trace(traces: &[Vec<Value>], parent_name: &str, trigger: &str) -> Option<(Vec<Value>, Value)> {
    traces.iter().find_map(|trace| {
        let root = trace.iter().find(|s| {
            s["operationName"] == "reconcile"
                && tag(s, "parent.name").as_deref() == Some(parent_name)
                && tag(s, "trigger").is_some_and(|t| t.starts_with(trigger))
        })?;
        Some((trace.clone(), root.clone()))
    })
}

/// `wasmop run --otlp-endpoint` exports each reconcile as a trace that a real Jaeger shows:
/// a `reconcile` span carrying the plugin, its revision, the parent and the trigger, with child
/// spans for the plugin call (epoch ticks, output bytes), the policy review, each apply and the
/// status write. The Events the reconcile publishes name the trace; a child's deletion shows as
/// that child's trigger; a read of another version shows the conversion webhook's spans; a new
/// build of the plugin shows as the trigger `reload`.
async fn a_reconcile_is_traced_to_a_real_jaeger(cluster: Cluster) {
    use common::cluster::{app_resource, eventually, wait_ready};
    let jaeger = common::jaeger::Jaeger::start(&common::workspace());
    let dir = common::operator::plugins_dir(&[("appoperator", None), ("deny-latest-tag", None)]);
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let log = dir.path().join("wasmop.log");
    let mut child = common::wasmop_command()
        .args(["run", "--install-crds", "--no-metrics", "--webhook-addr=127.0.0.1:0", "--log-format=json"])
        .arg("--plugins")
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", &cluster.ns, "--otlp-endpoint", &format!("http://{}", jaeger.otlp)])
        .env("WASMOP_LOG", "wasmop=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let apps = app_resource();
    let _show = ShowLog(log.clone());
    common::cluster::wait_served(&cluster.client, &apps).await;
    let spec = json!({"workload": {"image": "nginx:1.27", "replicas": 1, "port": 80}});
    common::cluster::create(&cluster.client, &apps, &cluster.ns, "web", spec).await;
    wait_ready(&cluster.client, &apps, &cluster.ns, "web", "True", "Available").await;

    // The reconcile that created the children, as Jaeger shows it.
    let with_applies = |traces: Vec<Vec<Value>>| {
        traces.into_iter().find_map(|trace| {
            let (trace, root) = reconcile_trace(std::slice::from_ref(&trace), "web", "")?;
            (!children_named(&trace, &root, "apply").is_empty()).then_some((trace, root))
        })
    };
    eventually("a reconcile of web with its applies in Jaeger", || async {
        with_applies(jaeger.traces().await).is_some()
    })
    .await;
    let (trace, root) = with_applies(jaeger.traces().await).unwrap();
    assert_eq!(tag(&root, "plugin").as_deref(), Some("appoperator"), "{root}");
    assert_eq!(tag(&root, "parent.kind").as_deref(), Some("Appoperator"), "{root}");
    assert_eq!(tag(&root, "parent.namespace").as_deref(), Some(cluster.ns.as_str()), "{root}");
    assert!(tag(&root, "parent.uid").is_some_and(|u| u.len() > 8), "{root}");
    assert!(tag(&root, "revision").is_some_and(|r| !r.is_empty()), "{root}");
    let trigger = tag(&root, "trigger").unwrap_or_default();
    assert!(["parent", "startup"].contains(&trigger.as_str()), "a new parent's first reconcile: {trigger}");
    let call = children_named(&trace, &root, "plugin call");
    assert_eq!(call.len(), 1, "one plugin call under the reconcile: {trace:?}");
    assert!(tag(call[0], "output_bytes").is_some_and(|b| b.parse::<u64>().is_ok_and(|b| b > 100)), "{}", call[0]);
    assert!(tag(call[0], "epoch_ticks").is_some_and(|t| t.parse::<u64>().is_ok()), "{}", call[0]);
    let reviews = trace.iter().filter(|s| s["operationName"] == "policy review").count();
    assert!(reviews >= 1, "the policy reviewed the children: {trace:?}");
    let applies = children_named(&trace, &root, "apply");
    assert!(applies.iter().any(|a| tag(a, "child").is_some_and(|c| c.starts_with("Deployment "))), "{applies:?}");

    // The Events of the reconcile name its trace; the logs carry the trace id too.
    let trace_id = root["traceID"].as_str().unwrap().to_string();
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.ns);
    eventually("an Event naming the trace", || async {
        let list = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        list.iter().any(|e| e.note.as_deref().is_some_and(|n| n.contains(&format!("(trace {trace_id})"))))
    })
    .await;
    eventually("a log line naming the trace", || async {
        std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.contains(&trace_id))
    })
    .await;

    // Deleting the Deployment reconciles web again, triggered by that child.
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.ns);
    deployments.delete("web", &Default::default()).await.unwrap();
    let child_trigger = format!("child Deployment {}/web", cluster.ns);
    eventually("a reconcile triggered by the deleted Deployment", || async {
        reconcile_trace(&jaeger.traces().await, "web", &child_trigger).is_some()
    })
    .await;

    // Reading the other version goes through the conversion webhook, which is traced too.
    let beta = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("tools.wasmop.dev", "v1beta1", "Appoperator"),
        "appoperators",
    );
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(cluster.client.clone(), &cluster.ns, &beta);
    let old = api.get("web").await.unwrap();
    assert_eq!(old.data["spec"]["image"], "nginx:1.27");
    eventually("a conversion review with its convert span", || async {
        jaeger.traces().await.iter().any(|trace| {
            trace.iter().filter(|s| s["operationName"] == "conversion review").any(|review| {
                children_named(trace, review, "convert").iter().any(|c| tag(c, "name").as_deref() == Some("web"))
            })
        })
    })
    .await;

    // A new build of the plugin reloads it: its first reconciles say so.
    let rebuilt = common::registry::rebuilt(&std::fs::read(common::plugin("appoperator")).unwrap(), "v2");
    std::fs::write(dir.path().join("next.tmp"), rebuilt).unwrap();
    std::fs::rename(dir.path().join("next.tmp"), dir.path().join("appoperator.wasm")).unwrap();
    eventually("a reconcile triggered by the reload", || async {
        reconcile_trace(&jaeger.traces().await, "web", "reload").is_some()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    cluster.shutdown().await;
}
