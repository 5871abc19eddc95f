//! CRD versions end to end, on both API server backends: an upgrade from a cluster where only
//! the contract-0.1 Appoperator (v1beta1) ever ran, through hot reload to the v1 plugin, its
//! conversion webhook, the storage version migration, and a webhook outage and recovery.

mod common;

use common::cluster::*;
use common::operator::{Operator, quiet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use wasmop::catalog::Catalog;

on_both_backends!(
    upgrade_from_v1beta1_converts_migrates_and_survives_a_webhook_outage,
    a_webhook_without_a_supervisor_answers_as_a_standby_replica_does,
    replicas_share_one_certificate_through_a_secret_and_renew_it,
    a_renewed_certificate_from_a_directory_is_served_and_its_ca_injected,
);

/// The tests installing a CRD with a webhook (cluster-wide, on the shared control plane) take
/// turns: the upgrade scenario timed out twice in CI while the others compiled and converted
/// beside it on 2 cores (cause not proven; see the closing note of session 6).
static LOSSY_CRD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CRD: &str = "appoperators.tools.wasmop.dev";

fn v1beta1() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tools.wasmop.dev", "v1beta1", "Appoperator"),
        "appoperators",
    )
}

async fn crd(cluster: &Cluster) -> CustomResourceDefinition {
    Api::<CustomResourceDefinition>::all(cluster.client.clone()).get(CRD).await.unwrap()
}

async fn stored_versions(cluster: &Cluster) -> Vec<String> {
    crd(cluster).await.status.and_then(|s| s.stored_versions).unwrap_or_default()
}

/// Runs `program` with `args` and `--kubeconfig`, expecting success and JSON on stdout.
fn cli(program: &str, args: &[&str], kubeconfig: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(program)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("WASMOP_CACHE_DIR", common::workspace().join("target/test-code-cache"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// The same object read through `ar`, or the error's text.
async fn read(cluster: &Cluster, ar: &ApiResource, name: &str) -> Result<DynamicObject, String> {
    Api::<DynamicObject>::namespaced_with(cluster.client.clone(), &cluster.ns, ar)
        .get(name)
        .await
        .map_err(|e| e.to_string())
}

async fn upgrade_from_v1beta1_converts_migrates_and_survives_a_webhook_outage(cluster: Cluster) {
    let _turn = LOSSY_CRD.lock().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let (old_ar, new_ar) = (v1beta1(), app_resource());

    // 1. The contract-0.1 build (kept as a fixture) loads, installs its v1beta1-only CRD and
    //    reconciles.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("appoperator.wasm");
    std::fs::copy(common::workspace().join("tests/fixtures/appoperator-0.1.0.wasm"), &file).unwrap();
    let running = Operator::start(&cluster, dir.path(), quiet());
    wait_served(&client, &old_ar).await;
    create(&client, &old_ar, &ns, "old", json!({"image": "nginx:1.25", "replicas": 1})).await;
    eventually("the 0.1 plugin reconciles", || ready_is(&client, &old_ar, &ns, "old", "True", "Available")).await;
    assert_eq!(stored_versions(&cluster).await, ["v1beta1"]);

    // 2. Dropping in the v1 build: its CRD (v1 stored, v1beta1 deprecated) points at the host's
    //    webhook with the host's CA, and what was stored as v1beta1 is migrated.
    let tmp = dir.path().join("appoperator.wasm.tmp");
    std::fs::copy(common::plugin("appoperator"), &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("storedVersions trimmed to v1", || async { stored_versions(&cluster).await == ["v1"] }).await;
    let conversion = crd(&cluster).await.spec.conversion.unwrap();
    assert_eq!(conversion.strategy, "Webhook");
    let client_config = conversion.webhook.unwrap().client_config.unwrap();
    assert!(client_config.ca_bundle.is_some_and(|ca| !ca.0.is_empty()), "no CA bundle injected");

    // 3. The v1beta1 object reads back as v1 and, unchanged, as v1beta1; the new plugin
    //    reconciles it.
    let as_v1 = read(&cluster, &new_ar, "old").await.unwrap();
    assert_eq!(as_v1.data["spec"], json!({"workload": {"image": "nginx:1.25", "replicas": 1}}));
    let as_v1beta1 = read(&cluster, &old_ar, "old").await.unwrap();
    assert_eq!(as_v1beta1.data["spec"], json!({"image": "nginx:1.25", "replicas": 1}));
    assert_eq!(as_v1beta1.metadata.annotations, None);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let revision = revision("appoperator");
    eventually("reconciled by the v1 plugin", || async {
        deployments.get_opt("old").await.unwrap().is_some_and(|d| {
            d.annotations().get("wasmop.dev/plugin-revision") == Some(&revision)
                && d.spec.as_ref().and_then(|s| s.replicas) == Some(1)
        })
    })
    .await;
    wait_ready(&client, &new_ar, &ns, "old", "True", "Available").await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml().await).unwrap();
    let shown =
        cli("kubectl", &["get", "appoperators.v1.tools.wasmop.dev", "old", "-n", &ns, "-o", "json"], &kubeconfig);
    assert_eq!(shown["spec"]["workload"]["image"], "nginx:1.25", "{shown}");
    let migrated = cli(env!("CARGO_BIN_EXE_wasmop"), &["migrate", "--kind", "appoperators", "-o", "json"], &kubeconfig);
    assert_eq!(
        (migrated["rewritten"].clone(), migrated["storedAfter"].clone()),
        (json!(0), json!(["v1"])),
        "{migrated}"
    );

    // 4. A field only v1 has travels through v1beta1 in an annotation and comes back.
    create(&client, &new_ar, &ns, "new", json!({"workload": {"image": "nginx:1.27", "replicas": 2, "port": 8080}}))
        .await;
    let seen_old = read(&cluster, &old_ar, "new").await.unwrap();
    assert_eq!(seen_old.data["spec"], json!({"image": "nginx:1.27", "replicas": 2}));
    let annotations = seen_old.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("appoperator.tools.wasmop.dev/v1-workload").map(String::as_str),
        Some(r#"{"port":8080}"#)
    );
    let api_old: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &old_ar);
    api_old.patch("new", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    let back = read(&cluster, &new_ar, "new").await.unwrap();
    assert_eq!(back.data["spec"]["workload"], json!({"image": "nginx:1.27", "replicas": 3, "port": 8080}));
    eventually("the port reaches the Deployment", || async {
        deployments.get_opt("new").await.unwrap().is_some_and(|d| {
            let port =
                serde_json::to_value(&d).unwrap()["spec"]["template"]["spec"]["containers"][0]["ports"][0].clone();
            port["containerPort"] == 8080 && d.spec.as_ref().and_then(|s| s.replicas) == Some(3)
        })
    })
    .await;

    // 5. With the webhook down, reads of the other version fail clearly; the stored version
    //    still reads; a new webhook (new port, new CA) recovers.
    running.stop().await;
    let err = read(&cluster, &old_ar, "new").await.unwrap_err();
    assert!(err.contains("conversion webhook"), "{err}");
    assert!(read(&cluster, &new_ar, "new").await.is_ok());
    let restarted = Operator::start(&cluster, dir.path(), quiet());
    eventually("conversion recovers", || async { read(&cluster, &old_ar, "new").await.is_ok() }).await;
    restarted.stop().await;
    cluster.shutdown().await;
}

/// A replica that is not the leader runs no supervisor, yet answers conversions: its webhook
/// follows the plugins directory by itself. (The test plugin's `Lossy` kind: the Appoperator
/// CRD belongs to the upgrade scenario on the shared control plane.)
async fn a_webhook_without_a_supervisor_answers_as_a_standby_replica_does(cluster: Cluster) {
    let _turn = LOSSY_CRD.lock().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = common::operator::plugin_variant("hostile_lossy.wasm");
    std::fs::copy(&file, dir.path().join("lossy.wasm")).unwrap();
    let runtime = std::sync::Arc::new(common::runtime());
    let catalog = Catalog::builder(runtime.clone()).dir(dir.path().to_path_buf()).start().await.unwrap();
    let standby = wasmop::webhook::Webhook::builder(([127, 0, 0, 1], 0).into())
        .catalog(&catalog)
        .start(client.clone())
        .await
        .unwrap();
    let plugin = runtime.load_operator(&file, wasmop::plugin::Limits::default()).unwrap();
    wasmop::crd::install(&client, &plugin, Some(&standby.conversion())).await.unwrap();
    let lossy = |version: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", version, "Lossy"), "lossies")
    };
    create(&client, &lossy("v1"), &ns, "one", json!({"mode": "ok", "count": 3})).await;
    eventually("the standby converts", || async { read(&cluster, &lossy("v2"), "one").await.is_ok() }).await;
    let seen = read(&cluster, &lossy("v2"), "one").await.unwrap();
    assert_eq!(seen.types.unwrap().api_version, "test.wasmop.dev/v2");
    assert_eq!(seen.data["spec"], json!({"mode": "ok"}), "not converted by the plugin");
    cluster.shutdown().await;
}

fn lossy(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", version, "Lossy"), "lossies")
}

/// Writes `material` as a mounted `kubernetes.io/tls` Secret (cert-manager's layout) into `dir`.
fn write_tls(dir: &std::path::Path, material: &wasmop::webhook::tls::Material) {
    std::fs::write(dir.join("tls.key"), &material.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &material.cert_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), &material.ca_bundle_pem).unwrap();
}

/// `--webhook-cert-dir` end to end, and the renewal path: a certificate replaced in the directory
/// (as cert-manager renews it, with a new CA) is served, and its CA is merge-patched into the
/// CRDs of the converting plugins, after which the API server's conversions go through again.
async fn a_renewed_certificate_from_a_directory_is_served_and_its_ca_injected(cluster: Cluster) {
    use wasmop::webhook::{CertSource, Webhook, tls};
    let _turn = LOSSY_CRD.lock().await;
    let (client, ns) = (cluster.client.clone(), cluster.ns.clone());
    let certs = tempfile::tempdir().unwrap();
    let names = vec!["127.0.0.1".to_string()];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let first = tls::generate(&names, now, None).unwrap();
    write_tls(certs.path(), &first);
    let plugins = tempfile::tempdir().unwrap();
    let file = common::operator::plugin_variant("hostile_lossy.wasm");
    std::fs::copy(&file, plugins.path().join("lossy.wasm")).unwrap();
    let runtime = std::sync::Arc::new(common::runtime());
    let catalog = Catalog::builder(runtime.clone()).dir(plugins.path().to_path_buf()).start().await.unwrap();
    let webhook = Webhook::builder(([127, 0, 0, 1], 0).into())
        .certs(CertSource::Dir(certs.path().to_path_buf()))
        .catalog(&catalog)
        .rotation_check(std::time::Duration::from_millis(200))
        .start(client.clone())
        .await
        .unwrap();
    let plugin = runtime.load_operator(&file, wasmop::plugin::Limits::default()).unwrap();
    wasmop::crd::install(&client, &plugin, Some(&webhook.conversion())).await.unwrap();
    let bundle = || async {
        let crd = Api::<CustomResourceDefinition>::all(client.clone()).get("lossies.test.wasmop.dev").await.unwrap();
        let config = crd.spec.conversion.and_then(|c| c.webhook).and_then(|w| w.client_config);
        config.and_then(|c| c.ca_bundle).map(|b| String::from_utf8(b.0).unwrap()).unwrap_or_default()
    };
    assert_eq!(bundle().await, first.ca_bundle_pem, "the directory's CA was not injected at install");
    create(&client, &lossy("v1"), &ns, "renewed", json!({"mode": "ok", "count": 3})).await;
    eventually("converted with the first certificate", || async {
        read(&cluster, &lossy("v2"), "renewed").await.is_ok()
    })
    .await;

    // cert-manager renews: a new key, leaf and CA in the same files.
    let second = tls::generate(&names, now, None).unwrap();
    assert_ne!(second.ca_bundle_pem, first.ca_bundle_pem);
    write_tls(certs.path(), &second);
    eventually("the new CA injected", || async { bundle().await == second.ca_bundle_pem }).await;
    // The API server now trusts only the new CA: conversions succeed only if the new leaf is served.
    eventually("converted with the renewed certificate", || async {
        read(&cluster, &lossy("v2"), "renewed").await.is_ok()
    })
    .await;
    cluster.shutdown().await;
}

/// Replicas racing to set up the webhook agree on one certificate kept in a Secret; one that is
/// due is renewed with the previous CA still trusted.
async fn replicas_share_one_certificate_through_a_secret_and_renew_it(cluster: Cluster) {
    use wasmop::webhook::tls;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let names = vec!["wasmop-webhook.wasmop-system.svc".to_string()];
    let now = 1_900_000_000;
    let (a, b) = tokio::join!(
        tls::from_secret(&api, &cluster.ns, "webhook-tls", &names, now),
        tls::from_secret(&api, &cluster.ns, "webhook-tls", &names, now)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "two replicas serve different certificates");
    let later = now + (tls::VALIDITY_DAYS - tls::RENEW_DAYS_BEFORE + 1) * 86_400;
    let renewed = tls::from_secret(&api, &cluster.ns, "webhook-tls", &names, later).await.unwrap();
    assert_ne!(renewed.cert_pem, a.cert_pem);
    assert!(renewed.ca_bundle_pem.contains(a.ca_bundle_pem.trim()), "the previous CA is no longer trusted");
    let again = tls::from_secret(&api, &cluster.ns, "webhook-tls", &names, later).await.unwrap();
    assert_eq!(again, renewed, "a fresh certificate was renewed again");
    cluster.shutdown().await;
}

/// A conversion the plugin refuses answers a `Failed` ConversionReview naming the plugin and
/// its reason; an unknown kind names what is loaded; neither takes the webhook down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_conversions_answer_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::operator::plugin_variant("hostile_lossy.wasm"), dir.path().join("lossy.wasm")).unwrap();
    let runtime = std::sync::Arc::new(common::runtime());
    let catalog = Catalog::builder(runtime).dir(dir.path().to_path_buf()).start().await.unwrap();
    let converters = wasmop::webhook::Converters::new(catalog.subscribe());
    let review = |name: &str, kind: &str, mode: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview", "request": {
            "uid": "u-1", "desiredAPIVersion": "test.wasmop.dev/v2",
            "objects": [{"apiVersion": "test.wasmop.dev/v1", "kind": kind,
                "metadata": {"name": name, "namespace": "default", "uid": "o-1"}, "spec": {"mode": mode}}],
        }})
        .to_string()
    };
    let answer = wasmop::webhook::review::answer(&converters, review("bad", "Lossy", "convert-fail").as_bytes()).await;
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["result"]["status"], "Failure");
    let message = answer["response"]["result"]["message"].as_str().unwrap();
    assert!(message.contains("plugin hostile cannot convert") && message.contains("refusing to convert"), "{message}");
    let answer = wasmop::webhook::review::answer(&converters, review("x", "Other", "ok").as_bytes()).await;
    assert!(answer["response"]["result"]["message"].as_str().unwrap().contains("no plugin loaded"), "{answer}");
    let answer = wasmop::webhook::review::answer(&converters, review("good", "Lossy", "ok").as_bytes()).await;
    assert_eq!(answer["response"]["result"]["status"], "Success");
    assert_eq!(answer["response"]["convertedObjects"][0]["apiVersion"], "test.wasmop.dev/v2");
}

/// The migration after a CRD update retries with backoff: the first lists of the kind fail
/// (as while the API server starts serving the new storage version), and storedVersions is
/// trimmed all the same. (In-memory server only: it injects the failures, 404s as while the
/// version is not served yet.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_migration_retries_until_the_kind_is_listed() {
    let cluster = Cluster::memory().await;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let crd = |storage: &str| -> CustomResourceDefinition {
        let version = |name: &str| {
            json!({"name": name, "served": true, "storage": name == storage,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        };
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.test.wasmop.dev"},
            "spec": {"group": "test.wasmop.dev", "scope": "Namespaced",
                "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                "versions": [version("v1beta1"), version("v1")]},
        }))
        .unwrap()
    };
    let apply = PatchParams::apply("wasmop-tests").force();
    crds.patch("gadgets.test.wasmop.dev", &apply, &Patch::Apply(&crd("v1beta1"))).await.unwrap();
    let old =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.wasmop.dev", "v1beta1", "Gadget"), "gadgets");
    wait_served(&cluster.client, &old).await;
    create(&cluster.client, &old, &cluster.ns, "g", json!({"size": 1})).await;
    crds.patch("gadgets.test.wasmop.dev", &apply, &Patch::Apply(&crd("v1"))).await.unwrap();
    let stored = || async {
        let crd = crds.get("gadgets.test.wasmop.dev").await.unwrap();
        crd.status.and_then(|s| s.stored_versions).unwrap_or_default()
    };
    assert_eq!(stored().await, ["v1beta1", "v1"]);
    let faults = cluster.memory_server().unwrap().faults();
    faults.fail_next("list", "gadgets", 2, 404);
    let migration =
        tokio::spawn(wasmop::migrate::migrate_in_background(cluster.client.clone(), "gadgets.test.wasmop.dev".into()));
    eventually("storedVersions trimmed to v1 after two failed lists", || async { stored().await == ["v1"] }).await;
    migration.await.unwrap();
    cluster.shutdown().await;
}
