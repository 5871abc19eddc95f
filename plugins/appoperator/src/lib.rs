//! Appoperator: wasmop's default plugin.
//!
//! An `Appoperator` (`tools.wasmop.dev/v1beta1`) names a container image and a replica count; the
//! plugin answers with one Deployment running it and reports `Ready` once the Deployment has that
//! many replicas available.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, LabelSelector, ObjectMeta};
use kube::{CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmop_sdk::{ChildKind, Condition, Error, Gvk, Metadata, Operator, Request, Response};

/// Most replicas an Appoperator may ask for.
pub const MAX_REPLICAS: i32 = 1000;

/// Desired state of an Appoperator: an image and how many copies of it to run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tools.wasmop.dev",
    version = "v1beta1",
    kind = "Appoperator",
    plural = "appoperators",
    shortname = "appop",
    namespaced,
    status = "AppoperatorStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct AppoperatorSpec {
    /// Container image to run, e.g. `nginx:1.27`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Number of pods to run (0 to 1000).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
}

fn default_replicas() -> i32 {
    1
}

/// Observed state of an Appoperator. `conditions` and `observedGeneration` are written by the
/// wasmop host; the plugin fills in the replica counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppoperatorStatus {
    /// Replicas of the Deployment that are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Replicas asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, `Ready` among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<K8sCondition>,
}

/// The plugin.
pub struct Plugin;

impl Operator for Plugin {
    fn metadata() -> Metadata {
        Metadata {
            name: "appoperator".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            parent: Gvk::new(&Appoperator::group(&()), &Appoperator::version(&()), &Appoperator::kind(&())),
            children: vec![ChildKind::namespaced::<Deployment>()],
            crd: serde_json::to_value(Appoperator::crd()).ok(),
            finalizer: false,
        }
    }

    fn reconcile(req: Request) -> Result<Response, Error> {
        let app: Appoperator = req.parent_as()?;
        let name = app.metadata.name.clone().ok_or_else(|| Error::Invalid("parent has no metadata.name".into()))?;
        validate(&app.spec).map_err(|m| Error::Invalid(format!("{}: {m}", req.parent_ref())))?;

        let desired = app.spec.replicas;
        let available =
            req.child::<Deployment>(&name).and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
        let ready = available == desired;
        let message = format!("{available}/{desired} replicas available");
        let reason = if ready { "Available" } else { "Progressing" };

        Response::new()
            .child(&deployment(&name, &app.spec))?
            .status(&AppoperatorStatus {
                available_replicas: Some(available),
                replicas: Some(desired),
                ..AppoperatorStatus::default()
            })
            .map(|r| r.condition(Condition::ready(ready, reason, message)))
    }
}

wasmop_sdk::export_operator!(Plugin);

/// Checks what the CRD schema also checks, so a parent that skipped validation (offline
/// evaluation, an old CRD) is refused with a clear message instead of producing a bad Deployment.
pub fn validate(spec: &AppoperatorSpec) -> Result<(), String> {
    if spec.image.trim().is_empty() {
        return Err("spec.image must name a container image, e.g. nginx:1.27".into());
    }
    if !(0..=MAX_REPLICAS).contains(&spec.replicas) {
        return Err(format!("spec.replicas must be between 0 and {MAX_REPLICAS}, got {}", spec.replicas));
    }
    Ok(())
}

/// The Deployment an Appoperator named `name` asks for.
pub fn deployment(name: &str, spec: &AppoperatorSpec) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(spec.image.clone()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(spec: serde_json::Value, children: Vec<serde_json::Value>) -> Request {
        Request {
            parent: json!({
                "apiVersion": "tools.wasmop.dev/v1beta1", "kind": "Appoperator",
                "metadata": {"name": "web", "namespace": "shop", "generation": 2},
                "spec": spec,
            }),
            children,
            finalizing: false,
            settings: None,
        }
    }

    #[test]
    fn replicas_default_to_one() {
        let resp = Plugin::reconcile(request(json!({"image": "nginx:1.27"}), vec![])).unwrap();
        assert_eq!(resp.children[0]["spec"]["replicas"], 1);
    }

    #[test]
    fn ready_follows_available_replicas() {
        let observed = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "status": {"availableReplicas": 3},
        });
        let resp = Plugin::reconcile(request(json!({"image": "nginx", "replicas": 3}), vec![observed])).unwrap();
        assert_eq!(resp.conditions, vec![Condition::ready(true, "Available", "3/3 replicas available")]);
    }

    #[test]
    fn empty_image_is_invalid() {
        let err = Plugin::reconcile(request(json!({"image": " "}), vec![])).unwrap_err();
        assert!(matches!(err, Error::Invalid(m) if m.contains("shop/web") && m.contains("spec.image")));
    }

    #[test]
    fn crd_has_schema_validation() {
        let crd = serde_json::to_value(Appoperator::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["image"]));
        assert_eq!(spec["properties"]["replicas"]["maximum"], 1000.0);
        assert_eq!(spec["properties"]["replicas"]["default"], 1);
    }
}
