//! Appoperator: wasmop's default plugin.
//!
//! An `Appoperator` (`tools.wasmop.dev/v1`, storage; `v1beta1` still served, deprecated) names a
//! container image, a replica count and optionally a port; the plugin answers with one
//! Deployment running it and reports `Ready` once the Deployment has that many replicas
//! available. It also converts between the two versions ([`convert`]), which the host serves as
//! the CRD's conversion webhook.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, LabelSelector, ObjectMeta};
use kube::core::crd::merge_crds;
use kube::{CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmop_sdk::{ChildKind, ChildKindOf, Condition, Error, Gvk, Metadata, Operator, Request, Response, Value};

/// Most replicas an Appoperator may ask for.
pub const MAX_REPLICAS: i32 = 1000;

pub mod convert;
pub mod v1;
pub mod v1beta1;

pub use v1::{Appoperator, AppoperatorSpec, Workload};

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
    #[schemars(schema_with = "wasmop_sdk::schema::conditions")]
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
            crd: crd().ok(),
            finalizer: false,
            reads: vec![],
        }
    }

    fn reconcile(mut req: Request) -> Result<Response, Error> {
        if wasmop_sdk::conversion::version_of(&req.parent) != "v1" {
            // Offline evaluation of an older version: the API server would have converted it.
            req.parent = convert::convert(req.parent, "v1").map_err(Error::Invalid)?;
        }
        let app: Appoperator = req.parent_as()?;
        let name = app.metadata.name.clone().ok_or_else(|| Error::Invalid("parent has no metadata.name".into()))?;
        let workload = &app.spec.workload;
        validate(workload).map_err(|m| Error::Invalid(format!("{}: {m}", req.parent_ref())))?;

        let desired = workload.replicas;
        let available =
            req.child::<Deployment>(&name).and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
        let ready = available == desired;
        let message = format!("{available}/{desired} replicas available");
        let reason = if ready { "Available" } else { "Progressing" };

        Response::new()
            .child(&deployment(&name, workload))?
            .status(&AppoperatorStatus {
                available_replicas: Some(available),
                replicas: Some(desired),
                ..AppoperatorStatus::default()
            })?
            .condition(Condition::ready(ready, reason, message))
    }

    fn convert(obj: Value, to_version: &str) -> Result<Value, String> {
        convert::convert(obj, to_version)
    }
}

/// The CRD: both versions, v1 stored, v1beta1 served and deprecated.
pub fn crd() -> Result<Value, String> {
    let merged = merge_crds(vec![v1beta1::Appoperator::crd(), v1::Appoperator::crd()], "v1")
        .map_err(|e| format!("cannot merge the Appoperator CRD versions: {e}"))?;
    serde_json::to_value(merged).map_err(|e| e.to_string())
}

wasmop_sdk::export_operator!(Plugin);

/// Checks what the CRD schema also checks, so a parent that skipped validation (offline
/// evaluation, an old CRD) is refused with a clear message instead of producing a bad Deployment.
pub fn validate(workload: &Workload) -> Result<(), String> {
    if workload.image.trim().is_empty() {
        return Err("spec.workload.image must name a container image, e.g. nginx:1.27".into());
    }
    if !(0..=MAX_REPLICAS).contains(&workload.replicas) {
        return Err(format!("spec.workload.replicas must be between 0 and {MAX_REPLICAS}, got {}", workload.replicas));
    }
    if let Some(port) = workload.port.filter(|p| !(1..=65535).contains(p)) {
        return Err(format!("spec.workload.port must be between 1 and 65535, got {port}"));
    }
    Ok(())
}

/// The Deployment an Appoperator named `name` asks for.
pub fn deployment(name: &str, workload: &Workload) -> Deployment {
    let ports = workload.port.map(|port| vec![ContainerPort { container_port: port, ..ContainerPort::default() }]);
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(workload.replicas),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(workload.image.clone()),
                        ports,
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
        Request::new(json!({
            "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
            "metadata": {"name": "web", "namespace": "shop", "generation": 2},
            "spec": {"workload": spec},
        }))
        .with_children(children)
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
        assert!(matches!(err, Error::Invalid(m) if m.contains("shop/web") && m.contains("spec.workload.image")));
    }

    #[test]
    fn a_port_is_declared_on_the_container() {
        let resp = Plugin::reconcile(request(json!({"image": "a", "port": 8080}), vec![])).unwrap();
        assert_eq!(resp.children[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);
    }

    #[test]
    fn an_older_version_is_converted_before_reconciling() {
        let mut req = request(json!({}), vec![]);
        req.parent["apiVersion"] = json!("tools.wasmop.dev/v1beta1");
        req.parent["spec"] = json!({"image": "old:1", "replicas": 2});
        let resp = Plugin::reconcile(req).unwrap();
        assert_eq!(resp.children[0]["spec"]["replicas"], 2);
    }

    #[test]
    fn crd_has_both_versions_with_schema_validation() {
        let crd = crd().unwrap();
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let version = |name: &str| versions.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(
            (version("v1")["storage"].clone(), version("v1beta1")["storage"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(version("v1beta1")["deprecated"], true);
        let v1 = &version("v1")["schema"]["openAPIV3Schema"]["properties"];
        let workload = &v1["spec"]["properties"]["workload"];
        assert_eq!(workload["required"], json!(["image"]));
        assert_eq!(workload["properties"]["replicas"]["maximum"], 1000.0);
        assert_eq!(workload["properties"]["replicas"]["default"], 1);
        assert_eq!(v1["status"]["properties"]["conditions"]["items"]["properties"]["message"]["maxLength"], 32768);
    }
}
