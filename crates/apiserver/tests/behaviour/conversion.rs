//! CRD conversion webhooks: objects stored in the storage version of their time, converted by
//! a real HTTPS webhook (`webhook.rs`) for every read and write in another version, the
//! failures kube-apiserver reports, and `status.storedVersions`. The round trip and the error
//! texts also run against the real control plane (`crates/controlplane`).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::{Value, json};
use wasmop_apiserver::ApiServer;
use wasmop_controlplane::ControlPlane;

use crate::common::{client, eventually, server, status};
use crate::webhook::{Call, Mode, Webhook};

const GROUP: &str = "conv.example.com";
const CRD: &str = "gadgets.conv.example.com";
const ALPHA: &str = "conv.example.com/v1alpha1";
const V1: &str = "conv.example.com/v1";

fn version(name: &str, storage: bool, spec: Value) -> Value {
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": spec},
        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    }});
    json!({"name": name, "served": true, "storage": storage, "schema": {"openAPIV3Schema": schema},
           "subresources": {"status": {}}})
}

/// `spec.versions` with `storage` as the storage version: v1alpha1 has `spec.size`, v1 has
/// `spec.resources.size`.
fn versions(storage: &str) -> Value {
    let color = json!({"type": "string"});
    json!([
        version("v1alpha1", storage == "v1alpha1", json!({"size": {"type": "integer"}, "color": color})),
        version(
            "v1",
            storage == "v1",
            json!({"resources": {"type": "object", "properties": {"size": {"type": "integer"}}}, "color": color})
        ),
    ])
}

fn crd_in(group: &str, client_config: Value, storage: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("gadgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": versions(storage),
            "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": client_config}},
        }
    })
}

fn crd_with(client_config: Value, storage: &str) -> Value {
    crd_in(GROUP, client_config, storage)
}

fn gadget_crd(hook: &Webhook, storage: &str) -> Value {
    crd_with(json!({"url": hook.url(), "caBundle": hook.ca_bundle()}), storage)
}

fn crds(c: &kube::Client) -> Api<CustomResourceDefinition> {
    Api::all(c.clone())
}

async fn install(c: &kube::Client, crd: Value) -> CustomResourceDefinition {
    crds(c).create(&PostParams::default(), &serde_json::from_value(crd).unwrap()).await.unwrap()
}

fn gadgets(c: &kube::Client, version: &str) -> Api<DynamicObject> {
    gadgets_in(c, GROUP, version)
}

fn gadgets_in(c: &kube::Client, group: &str, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, "Gadget");
    Api::namespaced_with(c.clone(), "default", &ApiResource::from_gvk_with_plural(&gvk, "gadgets"))
}

fn gadget(api_version: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": api_version, "kind": "Gadget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn call(from: &[&str], to: &str) -> Call {
    Call { from: from.iter().map(|s| s.to_string()).collect(), to: to.to_string() }
}

fn api_version(o: &DynamicObject) -> String {
    o.types.as_ref().map(|t| t.api_version.clone()).unwrap_or_default()
}

fn stored_versions(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.status.as_ref().and_then(|s| s.stored_versions.clone()).unwrap_or_default()
}

async fn next<T>(s: &mut (impl futures::Stream<Item = T> + Unpin)) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("event or end of stream in time")
}

/// The next object event of a watch (bookmarks skipped).
async fn next_event(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin),
) -> WatchEvent<DynamicObject> {
    loop {
        match next(s).await.expect("stream open").unwrap() {
            WatchEvent::Bookmark(_) => continue,
            ev => return ev,
        }
    }
}

fn pp() -> PostParams {
    PostParams::default()
}

#[tokio::test]
async fn objects_round_trip_through_the_webhook_between_versions() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    let (alpha, v1) = (gadgets(&c, "v1alpha1"), gadgets(&c, "v1"));

    let created = alpha.create(&pp(), &gadget(ALPHA, "g", json!({"size": 3, "color": "red"}))).await.unwrap();
    assert_eq!((api_version(&created).as_str(), &created.data["spec"]), (ALPHA, &json!({"size": 3, "color": "red"})));
    // The body was converted to the storage version, the stored object back for the answer.
    let calls = hook.calls();
    assert_eq!((&calls[0], &calls[1]), (&call(&[ALPHA], V1), &call(&[V1], ALPHA)));

    let as_v1 = v1.get("g").await.unwrap();
    assert_eq!(api_version(&as_v1), V1);
    assert_eq!(as_v1.data["spec"], json!({"resources": {"size": 3}, "color": "red"}), "the field moved");
    assert_eq!(hook.calls().len(), calls.len(), "reading the stored version calls no webhook");

    let back = alpha.get("g").await.unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&created).unwrap());
    assert_eq!(hook.calls().last(), Some(&call(&[V1], ALPHA)));
    server.shutdown().await;
}

#[tokio::test]
async fn writes_in_another_version_are_converted_both_ways() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    let (alpha, v1) = (gadgets(&c, "v1alpha1"), gadgets(&c, "v1"));
    v1.create(&pp(), &gadget(V1, "g", json!({"resources": {"size": 1}}))).await.unwrap();
    let size = |o: &DynamicObject| o.data["spec"]["resources"]["size"].clone();

    let patched = alpha.patch("g", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 5}}))).await.unwrap();
    assert_eq!(patched.data["spec"]["size"], 5);
    assert_eq!(size(&v1.get("g").await.unwrap()), 5);

    let applied = alpha
        .patch("g", &PatchParams::apply("tester").force(), &Patch::Apply(gadget(ALPHA, "g", json!({"size": 6}))))
        .await
        .unwrap();
    assert_eq!(applied.data["spec"]["size"], 6);
    assert_eq!(size(&v1.get("g").await.unwrap()), 6);

    let mut current = alpha.get("g").await.unwrap();
    current.data["spec"]["size"] = json!(7);
    let replaced = alpha.replace("g", &pp(), &current).await.unwrap();
    assert_eq!(replaced.data["spec"]["size"], 7);
    assert_eq!(size(&v1.get("g").await.unwrap()), 7);

    let st = alpha
        .patch_status("g", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap();
    assert_eq!((st.data["status"]["ready"].clone(), st.data["spec"]["size"].clone()), (json!(true), json!(7)));
    let stored = v1.get("g").await.unwrap();
    assert_eq!((stored.data["status"]["ready"].clone(), size(&stored)), (json!(true), json!(7)));
    assert!(hook.calls().iter().all(|c| c.from.len() == 1), "one object per write conversion");
    server.shutdown().await;
}

#[tokio::test]
async fn lists_and_watches_in_another_version_are_converted() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    let (alpha, v1) = (gadgets(&c, "v1alpha1"), gadgets(&c, "v1"));
    for (name, size) in [("a", 1), ("b", 2)] {
        v1.create(&pp(), &gadget(V1, name, json!({"resources": {"size": size}}))).await.unwrap();
    }
    assert!(hook.calls().is_empty());

    let list = alpha.list(&ListParams::default()).await.unwrap();
    let sizes: Vec<Value> = list.items.iter().map(|o| o.data["spec"]["size"].clone()).collect();
    assert_eq!(sizes, vec![json!(1), json!(2)]);
    assert!(list.items.iter().all(|o| api_version(o) == ALPHA));
    assert_eq!(hook.calls(), vec![call(&[V1, V1], ALPHA)], "one review for the whole list");

    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = alpha.watch(&WatchParams::default().timeout(30), &rv).await.unwrap().boxed();
    v1.create(&pp(), &gadget(V1, "c", json!({"resources": {"size": 3}}))).await.unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Added(o) => assert_eq!((api_version(&o), o.data["spec"]["size"].clone()), (ALPHA.into(), json!(3))),
        other => panic!("expected ADDED, got {other:?}"),
    }
    v1.patch("c", &PatchParams::default(), &Patch::Merge(json!({"spec": {"resources": {"size": 4}}}))).await.unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Modified(o) => assert_eq!(o.data["spec"]["size"], 4),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // A watch from "0" starts with the current objects, converted in one review.
    let before = hook.calls().len();
    let mut fresh = alpha.watch(&WatchParams::default().timeout(30), "0").await.unwrap().boxed();
    let mut initial = Vec::new();
    for _ in 0..3 {
        match next_event(&mut fresh).await {
            WatchEvent::Added(o) => initial.push(o.data["spec"]["size"].clone()),
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    assert_eq!(initial, vec![json!(1), json!(2), json!(4)]);
    assert_eq!(hook.calls()[before..], [call(&[V1, V1, V1], ALPHA)]);
    server.shutdown().await;
}

#[tokio::test]
async fn objects_keep_their_stored_version_until_rewritten_and_stored_versions_are_tracked() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    let crd = install(&c, gadget_crd(&hook, "v1alpha1")).await;
    assert_eq!(stored_versions(&crd), vec!["v1alpha1"]);
    let (alpha, v1) = (gadgets(&c, "v1alpha1"), gadgets(&c, "v1"));
    alpha.create(&pp(), &gadget(ALPHA, "old", json!({"size": 1}))).await.unwrap();
    assert!(hook.calls().is_empty(), "written in the storage version: no conversion");

    let spec_patch = |storage: &str| Patch::Merge(json!({"spec": {"versions": versions(storage)}}));
    let crd = crds(&c).patch(CRD, &PatchParams::default(), &spec_patch("v1")).await.unwrap();
    assert_eq!(stored_versions(&crd), vec!["v1alpha1", "v1"], "the new storage version is recorded");

    // `old` is still stored as v1alpha1: reading it in v1, the storage version, converts it.
    assert_eq!(v1.get("old").await.unwrap().data["spec"]["resources"]["size"], 1);
    assert_eq!(hook.calls(), vec![call(&[ALPHA], V1)]);
    // Rewriting it stores it as v1; then v1 reads need no webhook.
    alpha.patch("old", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 2}}))).await.unwrap();
    let calls = hook.calls().len();
    assert_eq!(v1.get("old").await.unwrap().data["spec"]["resources"]["size"], 2);
    assert_eq!(hook.calls().len(), calls);

    // v1alpha1 cannot leave spec.versions while storedVersions lists it ...
    let only_v1 = Patch::Merge(json!({"spec": {"versions": [versions("v1")[1].clone()]}}));
    let err = status(crds(&c).patch(CRD, &PatchParams::default(), &only_v1).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert!(err.message.contains("status.storedVersions[0]: Invalid value: \"v1alpha1\": missing from spec.versions; v1alpha1 was previously a storage version"), "{}", err.message);
    // ... until a client, having migrated the objects, trims it through /status.
    let trim = |list: Value| Patch::Merge(json!({"status": {"storedVersions": list}}));
    let crd = crds(&c).patch_status(CRD, &PatchParams::default(), &trim(json!(["v1"]))).await.unwrap();
    assert_eq!(stored_versions(&crd), vec!["v1"]);
    let crd = crds(&c).patch(CRD, &PatchParams::default(), &only_v1).await.unwrap();
    assert_eq!(stored_versions(&crd), vec!["v1"], "spec writes never re-add trimmed versions");
    // As in the v1 API, an empty list becomes the storage version.
    let crd = crds(&c).patch_status(CRD, &PatchParams::default(), &trim(json!([]))).await.unwrap();
    assert_eq!(stored_versions(&crd), vec!["v1"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_is_down_fails_conversions_until_it_is_back() {
    let mut hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    let (alpha, v1) = (gadgets(&c, "v1alpha1"), gadgets(&c, "v1"));
    let made = v1.create(&pp(), &gadget(V1, "g", json!({"resources": {"size": 1}}))).await.unwrap();
    let rv = made.metadata.resource_version.clone().unwrap();
    let mut watch = alpha.watch(&WatchParams::default().timeout(60), &rv).await.unwrap().boxed();
    hook.stop().await;

    assert_eq!(v1.get("g").await.unwrap().data["spec"]["resources"]["size"], 1, "no conversion needed");
    let prefix = format!("conversion webhook for {V1}, Kind=Gadget failed: Post \"{}?timeout=10s\": ", hook.url());
    let err = status(alpha.get("g").await.unwrap_err());
    assert_eq!(err.code, 500);
    assert!(err.message.starts_with(&prefix), "{}", err.message);
    let err = status(alpha.list(&ListParams::default()).await.unwrap_err());
    assert!(err.message.starts_with(&prefix), "{}", err.message);
    let err = status(alpha.create(&pp(), &gadget(ALPHA, "h", json!({"size": 2}))).await.unwrap_err());
    let failed = format!("conversion webhook for {ALPHA}, Kind=Gadget failed: Post \"{}?timeout=10s\": ", hook.url());
    assert!((err.code == 500) && err.message.starts_with(&failed), "{}", err.message);
    assert_eq!(v1.list(&ListParams::default()).await.unwrap().items.len(), 1, "nothing stored");
    // The open watch cannot convert the next event: the stream ends instead of sending it unconverted.
    v1.patch("g", &PatchParams::default(), &Patch::Merge(json!({"spec": {"color": "blue"}}))).await.unwrap();
    assert!(next(&mut watch).await.is_none(), "the watch ends");

    hook.restart().await;
    let back = alpha.get("g").await.unwrap();
    assert_eq!((back.data["spec"]["size"].clone(), back.data["spec"]["color"].clone()), (json!(1), json!("blue")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_failure_result_message_reaches_the_client() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    gadgets(&c, "v1").create(&pp(), &gadget(V1, "g", json!({"resources": {"size": 7}}))).await.unwrap();
    hook.set_mode(Mode::Fail("size 7 cannot be expressed in v1alpha1".into()));
    let err = status(gadgets(&c, "v1alpha1").get("g").await.unwrap_err());
    assert_eq!(err.code, 500);
    assert_eq!(
        err.message,
        format!("conversion webhook for {V1}, Kind=Gadget failed: size 7 cannot be expressed in v1alpha1")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_webhook_answers_fail_the_request() {
    let hook = Webhook::start().await;
    let server = server().await;
    let c = client(&server);
    install(&c, gadget_crd(&hook, "v1")).await;
    let alpha = gadgets(&c, "v1alpha1");
    gadgets(&c, "v1").create(&pp(), &gadget(V1, "g", json!({"resources": {"size": 1}}))).await.unwrap();
    let cases = [
        (Mode::WrongUid, "failed: expected response.uid="),
        (Mode::NotJson, "failed: couldn't get version/kind; json parse error: "),
        (
            Mode::Status(500),
            "failed: an error on the server (\"webhook exploded\") has prevented the request from succeeding",
        ),
        (Mode::Status(404), "failed: the server could not find the requested resource"),
        (Mode::NoObjects, "returned 0 objects, expected 1"),
        (
            Mode::Unconverted,
            "returned invalid object at index 0: invalid groupVersion (expected conv.example.com/v1alpha1, received conv.example.com/v1)",
        ),
        (Mode::Rename, "returned invalid object: must have the same name: g != renamed"),
    ];
    for (mode, want) in cases {
        hook.set_mode(mode.clone());
        let err = status(alpha.get("g").await.unwrap_err());
        let want = format!("conversion webhook for {V1}, Kind=Gadget {want}");
        assert_eq!(err.code, 500, "{mode:?}");
        assert!(err.message.starts_with(&want), "{mode:?}: {}", err.message);
    }
    // List items are named as kube-apiserver names them.
    let err = status(alpha.list(&ListParams::default()).await.unwrap_err());
    assert!(
        err.message.ends_with("returned invalid converted object at index 0: must have the same name: g != renamed"),
        "{}",
        err.message
    );
    hook.set_mode(Mode::Convert);
    assert_eq!(alpha.get("g").await.unwrap().data["spec"]["size"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn service_client_configs_cannot_be_called() {
    let server = server().await;
    let c = client(&server);
    let service = json!({"service": {"namespace": "default", "name": "converter", "path": "/convert", "port": 443}});
    install(&c, crd_with(service, "v1")).await;
    gadgets(&c, "v1").create(&pp(), &gadget(V1, "g", json!({"resources": {"size": 1}}))).await.unwrap();
    let err = status(gadgets(&c, "v1alpha1").get("g").await.unwrap_err());
    assert_eq!(err.code, 500);
    assert!(err.message.starts_with(&format!("conversion webhook for {V1}, Kind=Gadget failed: ")), "{}", err.message);
    assert!(err.message.contains("supports only clientConfig.url"), "{}", err.message);
    server.shutdown().await;
}

#[tokio::test]
async fn webhook_conversion_settings_are_validated() {
    let server = server().await;
    let c = client(&server);
    let crd: CustomResourceDefinition =
        serde_json::from_value(crd_with(json!({"url": "http://127.0.0.1:1/convert"}), "v1")).unwrap();
    let err = status(crds(&c).create(&pp(), &crd).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert!(err.message.contains("'https' is the only allowed URL scheme"), "{}", err.message);
    let crd: CustomResourceDefinition = serde_json::from_value(crd_with(json!({}), "v1")).unwrap();
    let err = status(crds(&c).create(&pp(), &crd).await.unwrap_err());
    assert!(err.message.contains("exactly one of url or service is required"), "{}", err.message);
    server.shutdown().await;
}

/// A test's API server: a fresh in-memory one, or the real control plane shared by the tests.
struct Backend {
    memory: Option<ApiServer>,
    client: kube::Client,
}

impl Backend {
    async fn memory() -> Backend {
        let server = server().await;
        Backend { client: client(&server), memory: Some(server) }
    }

    async fn real() -> Backend {
        let plane = ControlPlane::shared().await.unwrap_or_else(|e| panic!("real control plane: {e}"));
        Backend { client: plane.client().await.unwrap(), memory: None }
    }

    async fn shutdown(self) {
        if let Some(server) = self.memory {
            server.shutdown().await;
        }
    }
}

mod on_both_backends {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        super::round_trip_and_error_texts(super::Backend::memory().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real() {
        super::round_trip_and_error_texts(super::Backend::real().await).await
    }
}

/// The same conversions and error texts on the in-memory server and a real kube-apiserver
/// (whose webhook client sends `?timeout=30s` where this server sends `?timeout=10s`).
async fn round_trip_and_error_texts(b: Backend) {
    let group = "both.conv.example.com";
    let (alpha_v, v1_v) = (format!("{group}/v1alpha1"), format!("{group}/v1"));
    let mut hook = Webhook::start().await;
    let c = b.client.clone();
    let crd = crd_in(group, json!({"url": hook.url(), "caBundle": hook.ca_bundle()}), "v1");
    install(&c, crd).await;
    let (alpha, v1) = (gadgets_in(&c, group, "v1alpha1"), gadgets_in(&c, group, "v1"));
    // A real server serves a new CRD's resources shortly after creating it.
    let body = gadget(&alpha_v, "g", json!({"size": 3, "color": "red"}));
    let created =
        eventually(10, "the custom resource is served", || async { alpha.create(&pp(), &body).await.ok() }).await;
    assert_eq!(created.data["spec"], json!({"size": 3, "color": "red"}));
    assert_eq!(v1.get("g").await.unwrap().data["spec"], json!({"resources": {"size": 3}, "color": "red"}));
    let back = alpha.get("g").await.unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&created).unwrap());

    hook.set_mode(Mode::Fail("size 3 is reserved".into()));
    let err = status(alpha.get("g").await.unwrap_err());
    let failed = format!("conversion webhook for {v1_v}, Kind=Gadget failed: ");
    assert_eq!((err.code, err.reason.as_str()), (500, ""));
    assert_eq!(err.message, format!("{failed}size 3 is reserved"));
    hook.set_mode(Mode::Rename);
    let err = status(alpha.get("g").await.unwrap_err());
    let invalid = format!(
        "conversion webhook for {v1_v}, Kind=Gadget returned invalid object: must have the same name: g != renamed"
    );
    assert_eq!(err.message, invalid);

    hook.set_mode(Mode::Convert);
    hook.stop().await;
    let post = format!("{failed}Post \"{}?timeout=", hook.url());
    let refused = format!(": dial tcp 127.0.0.1:{}: connect: connection refused", hook.port());
    // A connection the server kept from before the stop may be reset first (both servers pool
    // them); a new one is refused, and the error says so.
    eventually(10, "the webhook's refused connection named", || async {
        let err = status(alpha.get("g").await.unwrap_err());
        assert!(err.message.starts_with(&post), "{}", err.message);
        err.message.ends_with(&refused).then_some(())
    })
    .await;
    assert_eq!(v1.get("g").await.unwrap().data["spec"]["resources"]["size"], 3);
    hook.restart().await;
    assert_eq!(alpha.get("g").await.unwrap().data["spec"]["size"], 3);
    b.shutdown().await;
}
