//! CustomResourceDefinitions: serving versions, Established, validation, defaults, pruning.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

use crate::common::{client, server, status};

/// A CRD for `widgets.example.com` with two served versions and a constrained schema.
pub fn widget_crd() -> serde_json::Value {
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "minLength": 1, "pattern": "^[a-z0-9./:-]+$"},
                    "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                    "tier": {"type": "string", "enum": ["web", "worker"]},
                    "port": {"x-kubernetes-int-or-string": true},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }
            },
            "status": {"type": "object", "properties": {
                "ready": {"type": "boolean"},
                "conditions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }}
        }
    });
    let version = |name: &str, storage: bool| {
        json!({"name": name, "served": true, "storage": storage,
               "schema": {"openAPIV3Schema": schema.clone()},
               "subresources": {"status": {}},
               "additionalPrinterColumns": [{"name": "Image", "type": "string", "jsonPath": ".spec.image"}]})
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [version("v1", true), version("v1beta1", false)],
        }
    })
}

fn widget_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", version, "Widget"), "widgets")
}

async fn install(c: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd()).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(crds, "widgets.example.com", conditions::is_crd_established()),
    )
    .await
    .expect("established in time")
    .unwrap();
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

#[tokio::test]
async fn crd_becomes_established_and_serves_its_versions() {
    let server = server().await;
    let c = client(&server);
    install(&c).await;
    let discovery = Discovery::new(c.clone()).run().await.unwrap();
    let group = discovery.groups().find(|g| g.name() == "example.com").expect("group discovered");
    let versions: Vec<String> = group.versions().map(str::to_string).collect();
    assert_eq!(versions, vec!["v1", "v1beta1"]);

    let v1: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &widget_resource("v1"));
    let made = v1.create(&PostParams::default(), &widget("w1", json!({"image": "nginx"}))).await.unwrap();
    assert_eq!(made.metadata.generation, Some(1));
    // Served through the other version too, with that apiVersion.
    let beta: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &widget_resource("v1beta1"));
    let got = beta.get("w1").await.unwrap();
    assert_eq!(got.types.unwrap().api_version, "example.com/v1beta1");
    server.shutdown().await;
}

#[tokio::test]
async fn custom_resources_are_defaulted_pruned_and_validated() {
    let server = server().await;
    let c = client(&server);
    install(&c).await;
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &widget_resource("v1"));
    let made = api
        .create(
            &PostParams::default(),
            &widget("d", json!({"image": "nginx", "unknown": 1, "extra": {"free": "form"}, "port": "http"})),
        )
        .await
        .unwrap();
    assert_eq!(made.data["spec"]["replicas"], 1, "default applied");
    assert!(made.data["spec"].get("unknown").is_none(), "unknown field pruned");
    assert_eq!(made.data["spec"]["extra"]["free"], "form", "preserved");

    let err = status(
        api.create(&PostParams::default(), &widget("bad", json!({"replicas": 11, "tier": "db", "port": 1.5})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let details = err.details.unwrap();
    assert_eq!(details.kind, "Widget");
    let mut fields: Vec<String> = details.causes.iter().map(|c| c.field.clone()).collect();
    fields.sort();
    assert_eq!(fields, vec!["spec.image", "spec.port", "spec.replicas", "spec.tier"]);
    assert!(err.message.starts_with("Widget.example.com \"bad\" is invalid: ["), "{}", err.message);

    // Status subresource: status ignored on create and main writes, generation only on spec changes.
    let st = api
        .patch_status("d", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap();
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(st.metadata.generation, Some(1));
    let upd = api.patch("d", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    assert_eq!(upd.metadata.generation, Some(2));
    let err = status(
        api.patch("d", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": -1}}))).await.unwrap_err(),
    );
    assert_eq!(err.code, 422);
    let err = status(
        api.patch("d", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"replicas": 3}}))).await.unwrap_err(),
    );
    assert_eq!(err.code, 415);
    server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_crd_removes_its_resources() {
    let server = server().await;
    let c = client(&server);
    install(&c).await;
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &widget_resource("v1"));
    api.patch("a", &PatchParams::apply("t"), &Patch::Apply(widget("a", json!({"image": "x"})))).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    assert!(crds.get_opt("widgets.example.com").await.unwrap().is_none());
    let err = status(api.get("a").await.unwrap_err());
    assert_eq!(err.code, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_of_custom_resource_status() {
    let server = server().await;
    let c = client(&server);
    install(&c).await;
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &widget_resource("v1"));
    api.patch("s", &PatchParams::apply("user"), &Patch::Apply(widget("s", json!({"image": "x"})))).await.unwrap();
    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s"},
        "status": {"ready": true, "conditions": [{"type": "Ready", "status": "True"}]}});
    let st = api.patch_status("s", &PatchParams::apply("operator").force(), &Patch::Apply(status)).await.unwrap();
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(st.data["spec"]["image"], "x");
    assert_eq!(st.metadata.generation, Some(1));
    let entries: Vec<(String, String)> = st
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.subresource.unwrap_or_default()))
        .collect();
    assert!(entries.contains(&("operator".into(), "status".into())), "{entries:?}");
    assert!(entries.contains(&("user".into(), String::new())), "{entries:?}");
    // Re-applying the same spec and status is a no-op: no new resourceVersion.
    let again =
        api.patch("s", &PatchParams::apply("user"), &Patch::Apply(widget("s", json!({"image": "x"})))).await.unwrap();
    assert_eq!(again.metadata.resource_version, st.metadata.resource_version);
    server.shutdown().await;
}

mod derived {
    use std::collections::BTreeMap;

    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// Tier of an app.
    #[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
    pub enum Tier {
        /// Web.
        Web,
        /// Worker.
        Worker,
    }

    /// Port spec.
    #[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
    pub struct Port {
        /// Name.
        pub name: String,
        /// Number.
        pub port: i32,
    }

    /// An app, as a kube-derive user would write it.
    #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
    #[kube(
        group = "wasmop.dev",
        version = "v1alpha1",
        kind = "App",
        namespaced,
        status = "AppStatus",
        shortname = "app"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct AppSpec {
        /// Image.
        pub image: String,
        /// Replicas.
        pub replicas: Option<i32>,
        /// Tier.
        pub tier: Option<Tier>,
        /// Env.
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        /// Ports.
        #[serde(default)]
        pub ports: Vec<Port>,
        /// Free-form settings.
        #[serde(default)]
        #[schemars(schema_with = "free_form")]
        pub settings: Option<serde_json::Value>,
        /// Ratio.
        pub ratio: Option<f64>,
    }

    fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        serde_json::from_value(serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}))
            .expect("schema")
    }

    /// Status.
    #[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct AppStatus {
        /// Ready replicas.
        pub ready_replicas: Option<i32>,
        /// Observed generation.
        pub observed_generation: Option<i64>,
    }
}

#[tokio::test]
async fn kube_derive_crd_round_trips_typed_objects() {
    use derived::{App, AppSpec, AppStatus, Port, Tier};
    use kube::CustomResourceExt;

    let server = server().await;
    let c = client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.patch("apps.wasmop.dev", &PatchParams::apply("test").force(), &Patch::Apply(App::crd())).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(crds, "apps.wasmop.dev", conditions::is_crd_established()),
    )
    .await
    .unwrap()
    .unwrap();
    let apps: Api<App> = Api::namespaced(c, "default");
    let spec = AppSpec {
        image: "nginx:1".into(),
        replicas: Some(2),
        tier: Some(Tier::Web),
        env: [("A".to_string(), "1".to_string())].into(),
        ports: vec![Port { name: "http".into(), port: 80 }],
        settings: Some(json!({"nested": {"deep": [1, 2]}})),
        ratio: Some(0.5),
    };
    let made = apps.create(&PostParams::default(), &App::new("demo", spec.clone())).await.unwrap();
    assert_eq!(made.spec, spec);
    let st = apps
        .patch_status(
            "demo",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({"apiVersion": "wasmop.dev/v1alpha1", "kind": "App", "status": AppStatus { ready_replicas: Some(2), observed_generation: Some(1) }})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().ready_replicas, Some(2));
    // The generated schema is enforced: an enum value outside the list is refused.
    let bad = json!({"apiVersion": "wasmop.dev/v1alpha1", "kind": "App", "metadata": {"name": "bad"}, "spec": {"image": "x", "tier": "Batch"}});
    let err = status(apps.patch("bad", &PatchParams::apply("t"), &Patch::Apply(bad)).await.unwrap_err());
    assert_eq!(err.code, 422);
    let causes = err.details.unwrap().causes;
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].field, "spec.tier");
    server.shutdown().await;
}
