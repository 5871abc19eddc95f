//! Plugins delivered to a running cluster: OCI artifacts through a real registry (`crane
//! registry serve`) and a client nobody here wrote (`oras`), and `WasmPlugin` objects followed
//! by `wasmop run --plugin-sources=cluster`, seen from outside (status, children, Events).

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};

use common::cluster::*;
use common::registry::{self, Registry, oras_ok, oras_push_wasm};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop::wasmplugin::{RolloutStatus, WasmPlugin};

fn run_ok(args: &[&str]) -> String {
    common::stdout(&common::wasmop(args)).trim().to_string()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_component_pushed_by_oras_is_pulled_and_run_by_wasmop() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::plugin("appoperator"), dir.path().join("appoperator.wasm")).unwrap();
    let reference = format!("{}:v1", registry.repo("plugins/app"));
    let pushed = oras_push_wasm(dir.path(), &reference, "appoperator.wasm");
    let out = dir.path().join("pulled.wasm");
    let pulled =
        run_ok(&["plugin", "pull", &reference, "--insecure-registry", &registry.host, "-o", out.to_str().unwrap()]);
    assert_eq!(pulled, pushed, "wasmop and oras disagree on the digest");
    assert_eq!(read(&out), read(&common::plugin("appoperator")), "pulled bytes differ");
    // And it runs.
    let desired =
        run_ok(&["eval", "--plugin", out.to_str().unwrap(), common::example("appoperator.yaml").to_str().unwrap()]);
    assert!(desired.contains("kind: Deployment"), "{desired}");
}

#[test]
fn a_component_pushed_by_wasmop_is_pulled_by_oras_byte_identical() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let plugin = common::plugin("appoperator");
    let reference = format!("{}:v1", registry.repo("plugins/app"));
    let digest =
        run_ok(&["plugin", "push", plugin.to_str().unwrap(), &reference, "--insecure-registry", &registry.host]);
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_eq!(oras_ok(dir.path(), &["resolve", "--plain-http", &reference]).trim(), digest);
    let pinned = format!("{}@{digest}", registry.repo("plugins/app"));
    oras_ok(dir.path(), &["pull", "--plain-http", &pinned, "-o", "out"]);
    assert_eq!(read(&dir.path().join("out/appoperator.wasm")), read(&plugin), "oras pulled other bytes");
    let manifest: serde_json::Value =
        serde_json::from_str(&oras_ok(dir.path(), &["manifest", "fetch", "--plain-http", &pinned])).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    // The same bytes again give the same digest: a push is reproducible.
    let again =
        run_ok(&["plugin", "push", plugin.to_str().unwrap(), &reference, "--insecure-registry", &registry.host]);
    assert_eq!(again, digest);
}

#[test]
fn push_and_pull_refuse_what_is_not_a_wasmop_plugin_with_what_to_do() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let reference = format!("{}:junk", registry.repo("plugins/app"));
    let out =
        common::wasmop(&["plugin", "push", junk.to_str().unwrap(), &reference, "--insecure-registry", &registry.host]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("junk.wasm is not a wasmop plugin; not pushed"), "{stderr}");

    // An image-like artifact (another config media type) is not a Wasm artifact.
    std::fs::write(dir.path().join("readme.txt"), b"hello").unwrap();
    let text = format!("{}:text", registry.repo("plugins/app"));
    oras_ok(dir.path(), &["push", "--plain-http", &text, "readme.txt:text/plain"]);
    let out = common::wasmop(&["plugin", "pull", &text, "--insecure-registry", &registry.host, "-o", "/dev/null"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not a Wasm artifact"), "{stderr}");

    // Over the size limit: refused from the manifest, before the layer is fetched.
    std::fs::copy(common::plugin("appoperator"), dir.path().join("app.wasm")).unwrap();
    let app = format!("{}:v1", registry.repo("plugins/app"));
    oras_push_wasm(dir.path(), &app, "app.wasm");
    let out =
        common::wasmop(&["plugin", "pull", &app, "--insecure-registry", &registry.host, "--max-plugin-size", "1Mi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("over the limit of 1048576 bytes"), "{stderr}");

    // Plain HTTP only when asked for: the default is HTTPS, which this registry does not speak.
    let out = common::wasmop(&["plugin", "pull", &app, "-o", "/dev/null"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--insecure-registry"), "{stderr}");
}

#[test]
fn a_password_from_stdin_never_reaches_the_logs() {
    use base64::Engine as _;
    let registry = Registry::start();
    let plugin = common::plugin("appoperator");
    let reference = format!("{}:v1", registry.repo("plugins/app"));
    let mut child = common::wasmop_command()
        .args(["plugin", "push", plugin.to_str().unwrap(), &reference, "--insecure-registry", &registry.host])
        .args(["--username", "robot", "--password-stdin"])
        .env("WASMOP_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cr3t-pass\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pushed"), "{stderr}");
    let encoded = base64::engine::general_purpose::STANDARD.encode("robot:s3cr3t-pass");
    for secret in ["s3cr3t-pass", encoded.as_str()] {
        assert!(!stderr.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret), "{stderr}");
    }
}

on_both_backends!(
    a_wasmplugin_delivers_rolls_back_and_survives_the_registry,
    a_policy_wasmplugin_monitors_then_protects,
    a_staged_rollout_promotes_rolls_back_and_aborts,
    shard_replicas_split_a_rollout_alike,
    a_rollout_selector_leads_and_an_incompatible_canary_is_refused,
);

/// WasmPlugins are cluster-wide: every operator on the shared control plane sees (and, as the
/// only replica, writes the status of) every test's, so the tests that create them take turns.
static CLUSTER_WIDE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's turn on the cluster-wide WasmPlugins, with the WasmPlugin and Hostile CRDs installed.
async fn hostile_turn(client: &Client) -> tokio::sync::MutexGuard<'static, ()> {
    let turn = CLUSTER_WIDE.lock().await;
    install_wasmplugin_crd(client).await;
    install_hostile_crd(client).await;
    turn
}

/// The revision wasmop gives a plugin file: the first 12 hex digits of its SHA-256.
fn short_revision(bytes: &[u8]) -> String {
    wasmop::plugin::sha256_hex(bytes)[..12].to_string()
}

/// A `wasmop run --plugin-sources=cluster` process on the cluster, its stderr kept in a file.
struct RunningOperator {
    child: Child,
}

impl RunningOperator {
    fn start(kubeconfig: &Path, ns: &str, registry: &str, cache: &Path, log: &Path) -> RunningOperator {
        RunningOperator::start_with(kubeconfig, ns, registry, cache, log, &[], None)
    }

    /// With `extra` arguments and, as its `POD_NAME`, a replica's `identity`.
    fn start_with(
        kubeconfig: &Path,
        ns: &str,
        registry: &str,
        cache: &Path,
        log: &Path,
        extra: &[&str],
        identity: Option<&str>,
    ) -> RunningOperator {
        let log = std::fs::File::options().create(true).append(true).open(log).unwrap();
        let mut command = common::wasmop_command();
        command
            .args(["run", "--plugin-sources=cluster", "--install-crds", "--no-metrics", "--webhook-addr=127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", ns, "--operator-namespace", ns, "--insecure-registry", registry])
            .arg("--plugin-cache-dir")
            .arg(cache)
            .args(extra)
            .env("WASMOP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(identity) = identity {
            command.env("POD_NAME", identity);
        }
        RunningOperator { child: command.spawn().unwrap() }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WasmPlugin's Ready condition: (status, reason, message), for the spec's generation.
async fn ready_of(api: &Api<WasmPlugin>, name: &str) -> Option<(String, String, String)> {
    let object = api.get_opt(name).await.ok()??;
    let status = object.status?;
    if status.observed_generation != object.metadata.generation {
        return None;
    }
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.status.clone(), ready.reason.clone(), ready.message.clone()))
}

async fn wait_plugin_ready(api: &Api<WasmPlugin>, name: &str, status: &str, reason: &str) -> String {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let now = ready_of(api, name).await;
            if let Some((s, r, m)) = &now
                && s == status
                && r == reason
            {
                return m.clone();
            }
            last = now;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("WasmPlugin {name} not Ready={status} ({reason}); last: {last:?}"))
}

async fn set_ref(api: &Api<WasmPlugin>, name: &str, reference: &str) {
    let patch = json!({"spec": {"source": {"oci": {"ref": reference}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Whether every Deployment of `ns` carries plugin revision `revision`.
async fn all_carry(client: &Client, ns: &str, count: usize, revision: &str) -> bool {
    let Ok(list) = Api::<Deployment>::namespaced(client.clone(), ns).list(&ListParams::default()).await else {
        return false;
    };
    list.items.len() == count
        && list
            .items
            .iter()
            .all(|d| d.annotations().get("wasmop.dev/plugin-revision").map(String::as_str) == Some(revision))
}

async fn install_wasmplugin_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = wasmop::wasmplugin::crd();
    api.patch("wasmplugins.wasmop.dev", &PatchParams::apply("wasmop-tests").force(), &Patch::Apply(&crd))
        .await
        .unwrap();
    await_condition(api, "wasmplugins.wasmop.dev", conditions::is_crd_established()).await.unwrap();
}

/// One scenario, in order, because a WasmPlugin is cluster-wide: every operator on the shared
/// control plane would see another test's.
async fn a_wasmplugin_delivers_rolls_back_and_survives_the_registry(cluster: Cluster) {
    let _turn = CLUSTER_WIDE.lock().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let v1 = read(&common::plugin("appoperator"));
    let v2 = registry::rebuilt(&v1, "v2");
    std::fs::write(dir.path().join("v1.wasm"), &v1).unwrap();
    std::fs::write(dir.path().join("v2.wasm"), &v2).unwrap();
    let (rev1, rev2) = (revision("appoperator"), wasmop::plugin::sha256_hex(&v2)[..12].to_string());
    let repo = registry.repo("plugins/app");
    let push = |file: &str, tag: &str| {
        let path = dir.path().join(file);
        run_ok(&[
            "plugin",
            "push",
            path.to_str().unwrap(),
            &format!("{repo}:{tag}"),
            "--insecure-registry",
            &registry.host,
        ])
    };
    let (digest1, digest2) = (push("v1.wasm", "v1"), push("v2.wasm", "v2"));
    // A 70 MiB artifact in the Wasm layout, pushed by oras (wasmop refuses to push it).
    std::fs::write(dir.path().join("huge.wasm"), vec![0u8; 70 << 20]).unwrap();
    oras_push_wasm(dir.path(), &format!("{repo}:huge"), "huge.wasm");

    install_wasmplugin_crd(&client).await;
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let (cache, log) = (dir.path().join("artifacts"), dir.path().join("wasmop.log"));
    let operator = RunningOperator::start(&kubeconfig, &ns, &registry.host, &cache, &log);

    // 1. A WasmPlugin by tag: resolved once, recorded, served; Appoperators become Ready.
    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let name = format!("app-{ns}");
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name},
        "spec": {"source": {"oci": {"ref": format!("{repo}:v1")}}},
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &object).await.unwrap();
    let message = wait_plugin_ready(&plugins, &name, "True", "Serving").await;
    assert!(message.contains(&rev1) && message.contains("Appoperator"), "{message}");
    let status = plugins.get(&name).await.unwrap().status.unwrap();
    assert_eq!(status.digest.as_deref(), Some(digest1.as_str()));
    assert_eq!(status.resolved.as_ref().map(|r| r.digest.as_str()), Some(digest1.as_str()));
    assert_eq!(status.kinds, ["Appoperator.tools.wasmop.dev"]);
    let app = app_resource();
    wait_served(&client, &app).await;
    for parent in ["a", "b", "c"] {
        create(&client, &app, &ns, parent, json!({"workload": {"image": "nginx:1.27"}})).await;
    }
    eventually("children carry v1", || all_carry(&client, &ns, 3, &rev1)).await;

    // A source naming both: the real API server refuses it (the CRD's CEL rule); the in-memory
    // one does not run CEL, and the host refuses it instead.
    let both = format!("both-{ns}");
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": both},
        "spec": {"source": {"oci": {"ref": format!("{repo}:v1")}, "configMap": {"name": "x", "key": "y"}}},
    }))
    .unwrap();
    let created = plugins.create(&PostParams::default(), &object).await;
    if cluster.memory_server().is_none() {
        let error = created.expect_err("the API server accepted a source naming both").to_string();
        assert!(error.contains("set exactly one of spec.source.oci and spec.source.configMap"), "{error}");
    } else {
        created.unwrap();
        let message = wait_plugin_ready(&plugins, &both, "False", "InvalidSpec").await;
        assert!(message.contains("keep one of the two"), "{message}");
        plugins.delete(&both, &DeleteParams::default()).await.unwrap();
    }

    // A second WasmPlugin for the same kind is refused, naming the one that serves it.
    let duplicate = format!("dup-{ns}");
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": duplicate},
        "spec": {"source": {"oci": {"ref": format!("{repo}@{digest2}")}}},
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &object).await.unwrap();
    let message = wait_plugin_ready(&plugins, &duplicate, "False", "KindConflict").await;
    assert!(message.contains(&format!("WasmPlugin {name}")), "{message}");
    plugins.delete(&duplicate, &DeleteParams::default()).await.unwrap();

    // 2. v2 by digest: every parent's children move to v2's revision.
    set_ref(&plugins, &name, &format!("{repo}@{digest2}")).await;
    wait_plugin_ready(&plugins, &name, "True", "Serving").await;
    eventually("children carry v2", || all_carry(&client, &ns, 3, &rev2)).await;

    // 3. A wrong digest, an unreachable registry, a 70 MiB artifact, bytes that are no wasmop
    //    plugin: Ready=False with the reason, Degraded=True, and v2 keeps serving (a new parent
    //    gets v2's children).
    std::fs::write(dir.path().join("junk.wasm"), b"not a component").unwrap();
    oras_push_wasm(dir.path(), &format!("{repo}:junk"), "junk.wasm");
    let junk = format!("{repo}:junk");
    let wrong = format!("{repo}@sha256:{}", "0".repeat(64));
    let unreachable = format!("{}/plugins/app:v1", registry::closed_address());
    let huge = format!("{repo}:huge");
    let junk_source = format!("wasmplugin/{name}");
    // Each refusal says what to do (or names the WasmPlugin whose bytes do not load).
    for (i, (reference, reason, says)) in [
        (wrong.as_str(), "NotFound", "check the repository and tag or digest"),
        (unreachable.as_str(), "RegistryUnreachable", "--insecure-registry"),
        (huge.as_str(), "TooLarge", "raise --max-plugin-size"),
        (junk.as_str(), "NotAWasmopPlugin", junk_source.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        set_ref(&plugins, &name, reference).await;
        let message = wait_plugin_ready(&plugins, &name, "False", reason).await;
        assert!(message.contains(says), "{reason}: {message}");
        let status = plugins.get(&name).await.unwrap().status.unwrap();
        let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "PreviousRevisionServing"));
        assert_eq!(status.revision.as_deref(), Some(rev2.as_str()), "v2 no longer serves after {reason}");
        let parent = format!("late-{i}");
        create(&client, &app, &ns, &parent, json!({"workload": {"image": "nginx:1.27"}})).await;
        eventually("a new parent is served by v2", || all_carry(&client, &ns, 4 + i, &rev2)).await;
    }

    // 4. Restart with the registry stopped: v1, pinned by digest, comes from the on-disk cache.
    drop(operator);
    registry.stop();
    set_ref(&plugins, &name, &format!("{repo}@{digest1}")).await;
    let operator = RunningOperator::start(&kubeconfig, &ns, &registry.host, &cache, &log);
    wait_plugin_ready(&plugins, &name, "True", "Serving").await;
    eventually("children back on v1, from the cache", || all_carry(&client, &ns, 7, &rev1)).await;

    // 5. Deleting the WasmPlugin stops its plugin, as removing a file does: a ConfigMap-sourced
    //    WasmPlugin for the same kind then serves it, not refused as a conflict. Its content is
    //    gzip-compressed, so the 1.24 MiB plugin fits a ConfigMap.
    plugins.delete(&name, &DeleteParams::default()).await.unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&v2).unwrap();
    let packed = gzip.finish().unwrap();
    assert!(packed.len() < 1 << 20, "gzipped default plugin is {} bytes", packed.len());
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "app-plugin"},
        "binaryData": {"app.wasm.gz": base64(&packed)},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &config_map).await.unwrap();
    let from_config_map = format!("cm-{ns}");
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": from_config_map},
        "spec": {"source": {"configMap": {"name": "app-plugin", "key": "app.wasm.gz"}}},
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &object).await.unwrap();
    let message = wait_plugin_ready(&plugins, &from_config_map, "True", "Serving").await;
    assert!(message.contains(&rev2), "{message}");
    eventually("children on the ConfigMap's v2", || all_carry(&client, &ns, 7, &rev2)).await;
    plugins.delete(&from_config_map, &DeleteParams::default()).await.unwrap();
    drop(operator);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("WasmPlugin deleted; its plugin stops serving"), "{log}");
    cluster.shutdown().await;
}

/// A policy delivered by a WasmPlugin in monitor mode records, then protects once its spec says
/// so; going back to monitor is refused by the API server's rule (the real one; the in-memory
/// server runs no CEL, and the host refuses it instead, keeping the protecting revision).
async fn a_policy_wasmplugin_monitors_then_protects(cluster: Cluster) {
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let _turn = hostile_turn(&client).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let (operator_name, policy_name) = (format!("hostile-{ns}"), format!("mutator-{ns}"));
    for (plugin, object, mode) in [("hostile", &operator_name, None), ("mutator", &policy_name, Some("monitor"))] {
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": plugin}, "binaryData": {"plugin.wasm": base64(&read(&common::plugin(plugin)))},
        }))
        .unwrap();
        config_maps.create(&PostParams::default(), &config_map).await.unwrap();
        let mut spec = json!({"source": {"configMap": {"name": plugin, "key": "plugin.wasm"}}});
        if let Some(mode) = mode {
            spec["mode"] = json!(mode);
        }
        let object: WasmPlugin = serde_json::from_value(json!({
            "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": object}, "spec": spec,
        }))
        .unwrap();
        plugins.create(&PostParams::default(), &object).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let (cache, log) = (dir.path().join("artifacts"), dir.path().join("wasmop.log"));
    let operator = RunningOperator::start(&kubeconfig, &ns, "127.0.0.1:1", &cache, &log);
    wait_plugin_ready(&plugins, &operator_name, "True", "Serving").await;
    let message = wait_plugin_ready(&plugins, &policy_name, "True", "Serving").await;
    assert!(message.contains("reviews as a policy"), "{message}");

    let ar = hostile_resource();
    let denied = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "p-denied", "annotations": {"test.wasmop.dev/mutate": "deny"}}, "data": {"a": "1"}});
    create(&client, &ar, &ns, "p", json!({"mode": "given", "children": [denied], "status": {}})).await;
    wait_ready(&client, &ar, &ns, "p", "True", "Reconciled").await;
    eventually("the finding on p", || async {
        policy_condition(&client, &ns, "p").await.is_some_and(|(s, _, m)| s == "False" && m.contains("would deny"))
    })
    .await;

    let mode = |mode: &str| json!({"spec": {"mode": mode}});
    plugins.patch(&policy_name, &PatchParams::default(), &Patch::Merge(&mode("protect"))).await.unwrap();
    wait_plugin_ready(&plugins, &policy_name, "True", "Serving").await;
    wait_ready(&client, &ar, &ns, "p", "False", "PolicyDenied").await;

    let back = plugins.patch(&policy_name, &PatchParams::default(), &Patch::Merge(&mode("monitor"))).await;
    if cluster.memory_server().is_none() {
        let error = back.expect_err("the API server let a protecting policy go back to monitor").to_string();
        assert!(error.contains("cannot go back to monitor mode"), "{error}");
    } else {
        back.unwrap();
        let message = wait_plugin_ready(&plugins, &policy_name, "False", "InvalidSpec").await;
        assert!(message.contains("may not go back to monitor mode"), "{message}");
    }
    assert!(ready_is(&client, &ar, &ns, "p", "False", "PolicyDenied").await, "the protecting policy stopped serving");
    for name in [&operator_name, &policy_name] {
        plugins.delete(name, &DeleteParams::default()).await.unwrap();
    }
    drop(operator);
    cluster.shutdown().await;
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates WasmPlugin `name` serving key `key` of ConfigMap `config_map`; waits until it serves.
async fn serve_from_config_map(plugins: &Api<WasmPlugin>, name: &str, config_map: &str, key: &str) {
    let object: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name},
        "spec": {"source": {"configMap": {"name": config_map, "key": key}}},
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &object).await.unwrap();
    wait_plugin_ready(plugins, name, "True", "Serving").await;
}

/// How many children of `ns` (ConfigMaps the host marked) carry each revision.
async fn revisions_of_children(client: &Client, ns: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let Ok(list) = Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await else {
        return counts;
    };
    for revision in list.items.iter().filter_map(|c| c.annotations().get("wasmop.dev/plugin-revision")) {
        *counts.entry(revision.clone()).or_default() += 1;
    }
    counts
}

/// The WasmPlugin's `status.rollout`, once it describes `canary` in `phase` at `percent`.
async fn wait_rollout(api: &Api<WasmPlugin>, name: &str, canary: &str, phase: &str, percent: u32) -> RolloutStatus {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let rollout = api.get(name).await.ok().and_then(|o| o.status).and_then(|s| s.rollout);
            if let Some(r) = &rollout
                && (r.canary_revision.as_str(), r.phase.as_str(), r.percent) == (canary, phase, percent)
            {
                return r.clone();
            }
            last = rollout;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("rollout of {canary} not {phase} at {percent}%; last: {last:?}"))
}

/// Asks the rollout of WasmPlugin `name` to go on or back, as `wasmop rollout` does.
fn rollout_cli(kubeconfig: &Path, verb: &str, name: &str) -> String {
    run_ok(&["rollout", verb, name, "--kubeconfig", kubeconfig.to_str().unwrap()])
}

/// A staged rollout over 1,000 parents: a good revision moves by steps to exactly the share
/// each step names (promoted by hand, completed after a pause); a revision failing on 20% of
/// parents is rolled back by its analysis; one aborted by hand goes back too. Children carry
/// the revision that computed them throughout.
async fn a_staged_rollout_promotes_rolls_back_and_aborts(cluster: Cluster) {
    const PARENTS: usize = 1_000;
    const FLAKY: usize = 200;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let _turn = hostile_turn(&client).await;
    let base = read(&common::plugin("hostile"));
    let builds: Vec<Vec<u8>> = ["v1", "v2", "v3", "v4"].iter().map(|tag| registry::rebuilt(&base, tag)).collect();
    let rev = |i: usize| short_revision(&builds[i]);
    let binary: std::collections::BTreeMap<String, String> =
        builds.iter().enumerate().map(|(i, b)| (format!("v{}.wasm", i + 1), base64(b))).collect();
    let config_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "hostile-builds"}, "binaryData": binary})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &config_map).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let log = dir.path().join("wasmop.log");
    let start = || RunningOperator::start(&kubeconfig, &ns, "127.0.0.1:1", &dir.path().join("artifacts"), &log);
    let operator = start();

    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let name = format!("rollout-{ns}");
    serve_from_config_map(&plugins, &name, "hostile-builds", "v1.wasm").await;
    let hostile = hostile_resource();
    wait_served(&client, &hostile).await;
    for i in 0..PARENTS {
        let mode = if i < FLAKY { "flaky" } else { "ok" };
        create(&client, &hostile, &ns, &format!("p{i:04}"), json!({"mode": mode})).await;
    }
    let all_on = |revision: String| {
        let client = client.clone();
        let ns = ns.clone();
        async move { revisions_of_children(&client, &ns).await == [(revision, PARENTS)].into() }
    };
    eventually("every child on v1", || all_on(rev(0))).await;

    // 1. A good v2 by steps of 10% and 50% (promoted by hand), then 100% for a pause of 1 s.
    let rollout = |key: &str, settings: serde_json::Value, steps: serde_json::Value, analysis: serde_json::Value| {
        json!({"spec": {"source": {"configMap": {"name": "hostile-builds", "key": key}}, "settings": settings,
            "rollout": {"steps": steps, "analysis": analysis}}})
    };
    let steps = json!([{"percent": 10}, {"percent": 50}, {"percent": 100, "pause": "1s"}]);
    let patch = rollout("v2.wasm", json!(null), steps, json!(null));
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    for percent in [10, 50] {
        wait_rollout(&plugins, &name, &rev(1), "Progressing", percent).await;
        let on_canary = PARENTS * percent as usize / 100;
        let expected: std::collections::BTreeMap<String, usize> =
            [(rev(1), on_canary), (rev(0), PARENTS - on_canary)].into_iter().filter(|(_, n)| *n > 0).collect();
        eventually(&format!("exactly {percent}% of children on v2"), || {
            let (client, ns, expected) = (client.clone(), ns.clone(), expected.clone());
            async move { revisions_of_children(&client, &ns).await == expected }
        })
        .await;
        rollout_cli(&kubeconfig, "promote", &name);
    }
    let done = wait_rollout(&plugins, &name, &rev(1), "Complete", 100).await;
    assert_eq!(done.stable_revision, rev(0));
    let message = wait_plugin_ready(&plugins, &name, "True", "Serving").await;
    assert!(message.contains(&rev(1)), "{message}");
    eventually("every child on v2", || all_on(rev(1))).await;

    // 2. A v3 that traps on the 20% flaky parents: rolled back by the analysis at its first
    //    step, every child back on v2, a Warning Event, Ready=False naming the failure rate.
    let steps = json!([{"percent": 50, "pause": "10m"}, {"percent": 100}]);
    let analysis = json!({"maxFailureRate": 0.05, "minReconciles": 50});
    let patch = rollout("v3.wasm", json!({"failFlaky": true}), steps.clone(), analysis);
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let rolled = wait_rollout(&plugins, &name, &rev(2), "RolledBack", 50).await;
    assert!(rolled.canary.failures * 20 > rolled.canary.reconciles, "{rolled:?}");
    assert!(rolled.message.contains("more than the 5.0%"), "{}", rolled.message);
    let message = wait_plugin_ready(&plugins, &name, "False", "RolledBack").await;
    assert!(message.contains("failed") && message.contains(&rev(1)), "{message}");
    eventually("every child back on v2", || all_on(rev(1))).await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns);
    eventually("a RolledBack Warning Event", || async {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| e.reason.as_deref() == Some("RolledBack") && e.type_.as_deref() == Some("Warning"))
        })
    })
    .await;

    // 3. A good v4 at 50%, through a restart of the operator: the new process fetches the stable
    //    v2 again (recorded in status.rollout.stableSource) and keeps the split — every parent,
    //    changed and reconciled by it, stays on the revision it had. Then aborted by hand: every
    //    child back on v2, and the status says so.
    let patch = rollout("v4.wasm", json!(null), steps, json!(null));
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let progressing = wait_rollout(&plugins, &name, &rev(3), "Progressing", 50).await;
    assert!(progressing.stable_source.is_some(), "{progressing:?}");
    let split: std::collections::BTreeMap<String, usize> = [(rev(1), PARENTS / 2), (rev(3), PARENTS / 2)].into();
    eventually("half the children on v4", || {
        let (client, ns, split) = (client.clone(), ns.clone(), split.clone());
        async move { revisions_of_children(&client, &ns).await == split }
    })
    .await;
    drop(operator);
    let operator = start();
    let parents = Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, &hostile);
    for i in 0..PARENTS {
        let bump = json!({"spec": {"round": 2}});
        parents.patch(&format!("p{i:04}"), &PatchParams::default(), &Patch::Merge(&bump)).await.unwrap();
    }
    eventually("every parent reconciled by the restarted operator", || async {
        parents.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().all(|p| p.data["status"]["observedGeneration"].as_i64() == p.metadata.generation)
        })
    })
    .await;
    assert_eq!(revisions_of_children(&client, &ns).await, split, "the split changed across the restart");
    let said = rollout_cli(&kubeconfig, "abort", &name);
    assert!(said.contains(&name), "{said}");
    wait_rollout(&plugins, &name, &rev(3), "Aborted", 50).await;
    eventually("every child back on v2 after the abort", || all_on(rev(1))).await;
    let status = rollout_cli(&kubeconfig, "status", &name);
    assert!(status.contains("Aborted") && status.contains(&rev(3)), "{status}");
    plugins.delete(&name, &DeleteParams::default()).await.unwrap();
    drop(operator);
    cluster.shutdown().await;
}

/// Two replicas with `--shards 2` during a rollout: the status writer (the holder of shard 0)
/// decides, the other follows `status.rollout`, and together they serve exactly the share of
/// the parents the step names, then complete it.
async fn shard_replicas_split_a_rollout_alike(cluster: Cluster) {
    const PARENTS: usize = 200;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let _turn = hostile_turn(&client).await;
    let base = read(&common::plugin("hostile"));
    let (v1, v2) = (registry::rebuilt(&base, "s1"), registry::rebuilt(&base, "s2"));
    let rev = short_revision;
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "shard-builds"},
        "binaryData": {"v1.wasm": base64(&v1), "v2.wasm": base64(&v2)}}))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &config_map).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let replica = |identity: &str| {
        let (cache, log) =
            (dir.path().join(format!("artifacts-{identity}")), dir.path().join(format!("{identity}.log")));
        let shards = ["--shards", "2", "--leader-elect-namespace", &ns];
        RunningOperator::start_with(&kubeconfig, &ns, "127.0.0.1:1", &cache, &log, &shards, Some(identity))
    };
    let (_a, _b) = (replica("replica-a"), replica("replica-b"));
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns);
    eventually("each replica holds one of the two shards", || async {
        let holder = |lease: Option<k8s_openapi::api::coordination::v1::Lease>| {
            lease.and_then(|l| l.spec).and_then(|s| s.holder_identity)
        };
        let zero = holder(leases.get_opt("wasmop-shard-0").await.ok().flatten());
        let one = holder(leases.get_opt("wasmop-shard-1").await.ok().flatten());
        zero.is_some() && one.is_some() && zero != one
    })
    .await;

    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let name = format!("sharded-{ns}");
    serve_from_config_map(&plugins, &name, "shard-builds", "v1.wasm").await;
    let hostile = hostile_resource();
    wait_served(&client, &hostile).await;
    for i in 0..PARENTS {
        create(&client, &hostile, &ns, &format!("s{i:03}"), json!({"mode": "ok"})).await;
    }
    let split = |pairs: &[(String, usize)]| -> std::collections::BTreeMap<String, usize> {
        pairs.iter().filter(|(_, n)| *n > 0).cloned().collect()
    };
    let wait_split = |expected: std::collections::BTreeMap<String, usize>, what: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            eventually(what, || {
                let (client, ns, expected) = (client.clone(), ns.clone(), expected.clone());
                async move { revisions_of_children(&client, &ns).await == expected }
            })
            .await
        }
    };
    wait_split(split(&[(rev(&v1), PARENTS)]), "every child on v1").await;

    let patch = json!({"spec": {"source": {"configMap": {"name": "shard-builds", "key": "v2.wasm"}},
        "rollout": {"steps": [{"percent": 50}, {"percent": 100}]}}});
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_rollout(&plugins, &name, &rev(&v2), "Progressing", 50).await;
    wait_split(split(&[(rev(&v1), PARENTS / 2), (rev(&v2), PARENTS / 2)]), "exactly half the children on v2").await;
    rollout_cli(&kubeconfig, "promote", &name);
    wait_rollout(&plugins, &name, &rev(&v2), "Progressing", 100).await;
    rollout_cli(&kubeconfig, "promote", &name);
    wait_rollout(&plugins, &name, &rev(&v2), "Complete", 100).await;
    wait_split(split(&[(rev(&v2), PARENTS)]), "every child on v2").await;
    plugins.delete(&name, &DeleteParams::default()).await.unwrap();
    cluster.shutdown().await;
}

/// The revision each parent's child (a ConfigMap the host marked) carries, by parent name.
async fn revision_by_parent(client: &Client, ns: &str) -> std::collections::BTreeMap<String, String> {
    let Ok(list) = Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await else {
        return Default::default();
    };
    list.items
        .iter()
        .filter_map(|c| {
            let revision = c.annotations().get("wasmop.dev/plugin-revision")?;
            Some((c.owner_references().first()?.name.clone(), revision.clone()))
        })
        .collect()
}

/// `spec.rollout.selector` puts the parents it selects on the canary from the first step, whatever
/// the share (1% of 20 parents is none of them); an abort takes them back. A canary that changes
/// the parent kind cannot serve beside the stable revision: the WasmPlugin says so
/// (`Ready=False`, `InvalidSpec`) and the stable revision keeps serving every parent.
async fn a_rollout_selector_leads_and_an_incompatible_canary_is_refused(cluster: Cluster) {
    const PARENTS: usize = 20;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let _turn = hostile_turn(&client).await;
    let base = read(&common::plugin("hostile"));
    let (v1, v2) = (registry::rebuilt(&base, "sel1"), registry::rebuilt(&base, "sel2"));
    let other_kind = read(&common::plugin("hostile-kind2"));
    let rev = short_revision;
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "selector-builds"},
        "binaryData": {"v1.wasm": base64(&v1), "v2.wasm": base64(&v2), "kind2.wasm": base64(&other_kind)}}))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &config_map).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let log = dir.path().join("wasmop.log");
    let _operator = RunningOperator::start(&kubeconfig, &ns, "127.0.0.1:1", &dir.path().join("artifacts"), &log);

    let plugins: Api<WasmPlugin> = Api::all(client.clone());
    let name = format!("selector-{ns}");
    serve_from_config_map(&plugins, &name, "selector-builds", "v1.wasm").await;
    let hostile = hostile_resource();
    wait_served(&client, &hostile).await;
    let parents = Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, &hostile);
    let early = ["s03", "s11", "s17"];
    for i in 0..PARENTS {
        let name = format!("s{i:02}");
        create(&client, &hostile, &ns, &name, json!({"mode": "ok"})).await;
        if early.contains(&name.as_str()) {
            let label = json!({"metadata": {"labels": {"ring": "early"}}});
            parents.patch(&name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
        }
    }
    let on = |assignment: std::collections::BTreeMap<String, String>, what: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            eventually(what, || {
                let (client, ns, assignment) = (client.clone(), ns.clone(), assignment.clone());
                async move { revision_by_parent(&client, &ns).await == assignment }
            })
            .await
        }
    };
    let all_on = |revision: &str| (0..PARENTS).map(|i| (format!("s{i:02}"), revision.to_string())).collect();
    on(all_on(&rev(&v1)), "every child on v1").await;

    let patch = json!({"spec": {"source": {"configMap": {"name": "selector-builds", "key": "v2.wasm"}},
        "rollout": {"steps": [{"percent": 1}, {"percent": 100}], "selector": {"matchLabels": {"ring": "early"}}}}});
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_rollout(&plugins, &name, &rev(&v2), "Progressing", 1).await;
    let mut leading: std::collections::BTreeMap<String, String> = all_on(&rev(&v1));
    for parent in early {
        leading.insert(parent.to_string(), rev(&v2));
    }
    on(leading, "exactly the selected parents on v2").await;
    rollout_cli(&kubeconfig, "abort", &name);
    wait_rollout(&plugins, &name, &rev(&v2), "Aborted", 1).await;
    on(all_on(&rev(&v1)), "every child back on v1 after the abort").await;

    // A canary serving another parent kind cannot run beside v1: refused, v1 keeps serving.
    let patch = json!({"spec": {"source": {"configMap": {"name": "selector-builds", "key": "kind2.wasm"}},
        "rollout": {"steps": [{"percent": 50}, {"percent": 100}], "selector": null}}});
    plugins.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let message = wait_plugin_ready(&plugins, &name, "False", "InvalidSpec").await;
    assert!(message.contains("side by side") && message.contains(&rev(&v1)), "{message}");
    let bump = json!({"spec": {"round": 2}});
    parents.patch("s00", &PatchParams::default(), &Patch::Merge(&bump)).await.unwrap();
    eventually("s00 reconciled by v1 after the refusal", || async {
        parents.get("s00").await.is_ok_and(|p| p.data["status"]["observedGeneration"].as_i64() == p.metadata.generation)
    })
    .await;
    assert_eq!(revision_by_parent(&client, &ns).await, all_on(&rev(&v1)));
    plugins.delete(&name, &DeleteParams::default()).await.unwrap();
    cluster.shutdown().await;
}
