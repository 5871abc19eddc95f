//! Appoperator: wasmop's default plugin.
//!
//! An `Appoperator` (`tools.wasmop.dev/v1`, storage; `v1beta1` still served, deprecated) names a
//! container image, a replica count and optionally a port; the plugin answers with one
//! Deployment running it and reports `Ready` once the Deployment has that many replicas
//! available. It also converts between the two versions ([`convert`]), which the host serves as
//! the CRD's conversion webhook.
//!
//! With `spec.workload.configRef` it reads that ConfigMap (a related object, contract 0.3): its
//! keys become the container's environment, and a hash of its content on the pod template
//! ([`CONFIG_HASH`]) rolls the pods when it is edited. A missing ConfigMap is `Ready=False` with
//! reason `ConfigMissing`; the Deployment keeps the hash it had, so nothing rolls meanwhile.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, LabelSelector, ObjectMeta};
use kube::core::crd::merge_crds;
use kube::{CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmop_sdk::raw::RawRequest;
use wasmop_sdk::wire::EncodedResponse;
use wasmop_sdk::{
    ChildKind, ChildKindOf, Condition, Error, Gvk, GvkOf, Metadata, Operator, ReadKind, ReadKindOf, Request, Response,
    Selector, Value,
};

/// Most replicas an Appoperator may ask for.
pub const MAX_REPLICAS: i32 = 1000;
/// Pod-template annotation holding the hash of the content of the ConfigMap `configRef` names.
pub const CONFIG_HASH: &str = "appoperator.tools.wasmop.dev/config-hash";
/// The id of the `configRef` selector.
const CONFIG: &str = "config";

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
            reads: vec![ReadKind::of::<ConfigMap>()],
        }
    }

    fn related(parent: &Value) -> Result<Vec<Selector>, String> {
        let parent = as_v1(parent.clone()).map_err(|e| e.to_string())?;
        let config_ref = parent["spec"]["workload"]["configRef"].as_str();
        Ok(config_ref.map(|name| Selector::by_name(CONFIG, Gvk::of::<ConfigMap>(), name)).into_iter().collect())
    }

    fn reconcile(mut req: Request) -> Result<Response, Error> {
        req.parent = as_v1(req.parent)?;
        let app: Appoperator = req.parent_as()?;
        let answer = Answer::of(&app, &req.parent_ref(), |name| req.child(name), || first(req.related_as(CONFIG)))?;
        Response::new().child(&answer.deployment)?.status(&answer.status)?.condition(answer.ready)
    }

    /// The typed path: the same answer, decoded from and encoded to JSON text directly. A parent
    /// of another version (offline evaluation) takes [`Operator::reconcile`]'s path, which
    /// converts it.
    fn reconcile_raw(req: RawRequest<'_>) -> Result<EncodedResponse, Error> {
        if req.parent_api_version() != Appoperator::api_version(&()) {
            return Self::reconcile(req.decode()?).map(wasmop_sdk::wire::encode_response);
        }
        let app: Appoperator = req.parent_as()?;
        let answer = Answer::of(&app, &req.parent_ref(), |name| req.child(name), || first(req.related_as(CONFIG)))?;
        EncodedResponse::new().child(&answer.deployment)?.status(&answer.status)?.condition(answer.ready)
    }

    fn convert(obj: Value, to_version: &str) -> Result<Value, String> {
        convert::convert(obj, to_version)
    }
}

/// What an Appoperator asks for: the decoded inputs of both reconcile paths, and their answer.
struct Answer {
    deployment: Deployment,
    status: AppoperatorStatus,
    ready: Condition,
}

impl Answer {
    /// The answer for `app` (`parent_ref` names it in messages), given a lookup of its observed
    /// Deployment by name and of the ConfigMap `configRef` names (called only when it names one).
    fn of(
        app: &Appoperator,
        parent_ref: &str,
        observed: impl FnOnce(&str) -> Option<Deployment>,
        config_map: impl FnOnce() -> Result<Option<ConfigMap>, Error>,
    ) -> Result<Answer, Error> {
        let name = app.metadata.name.clone().ok_or_else(|| Error::Invalid("parent has no metadata.name".into()))?;
        let workload = &app.spec.workload;
        validate(workload).map_err(|m| Error::Invalid(format!("{parent_ref}: {m}")))?;

        let observed = observed(&name);
        let config = match &workload.config_ref {
            None => Config::None,
            Some(config_ref) => match config_map()? {
                Some(cm) => Config::Found(config_hash(&cm)),
                None => Config::Missing(config_ref.clone(), observed.as_ref().and_then(template_hash)),
            },
        };
        let desired = workload.replicas;
        let available = observed.and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
        let (ready, reason, message) = match &config {
            Config::Missing(config_ref, _) => (
                false,
                "ConfigMissing",
                format!("ConfigMap {config_ref} (spec.workload.configRef) does not exist in this namespace; create it"),
            ),
            _ if available == desired => (true, "Available", format!("{available}/{desired} replicas available")),
            _ => (false, "Progressing", format!("{available}/{desired} replicas available")),
        };
        Ok(Answer {
            deployment: deployment(&name, workload, config.hash()),
            status: AppoperatorStatus {
                available_replicas: Some(available),
                replicas: Some(desired),
                ..AppoperatorStatus::default()
            },
            ready: Condition::ready(ready, reason, message),
        })
    }
}

/// The first of the objects a selector picked.
fn first(picked: Result<Vec<ConfigMap>, Error>) -> Result<Option<ConfigMap>, Error> {
    picked.map(|objects| objects.into_iter().next())
}

/// The parent at v1: an older version (offline evaluation) is converted as the API server
/// would have.
fn as_v1(parent: Value) -> Result<Value, Error> {
    if wasmop_sdk::conversion::version_of(&parent) == "v1" {
        return Ok(parent);
    }
    convert::convert(parent, "v1").map_err(Error::Invalid)
}

/// The ConfigMap `configRef` names, as far as the reconcile is concerned.
enum Config {
    /// No `configRef`.
    None,
    /// It exists; the hash of its content.
    Found(String),
    /// It does not exist: its name, and the hash the Deployment carries now (kept, so nothing
    /// rolls until it is back).
    Missing(String, Option<String>),
}

impl Config {
    fn hash(&self) -> Option<&str> {
        match self {
            Config::None | Config::Missing(_, None) => None,
            Config::Found(hash) | Config::Missing(_, Some(hash)) => Some(hash),
        }
    }
}

/// A hash of a ConfigMap's content (`data` and `binaryData`, in key order): 64-bit FNV-1a, as
/// 16 hex digits. Stable across builds and platforms, so a reconcile that changes nothing
/// changes no pod template.
pub fn config_hash(cm: &ConfigMap) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for (key, value) in cm.data.iter().flatten() {
        feed(b"d");
        feed(key.as_bytes());
        feed(value.as_bytes());
    }
    for (key, value) in cm.binary_data.iter().flatten() {
        feed(b"b");
        feed(key.as_bytes());
        feed(&value.0);
    }
    format!("{hash:016x}")
}

/// The config hash on a Deployment's pod template, if any.
fn template_hash(deployment: &Deployment) -> Option<String> {
    let template = deployment.spec.as_ref()?.template.metadata.as_ref()?;
    template.annotations.as_ref()?.get(CONFIG_HASH).cloned()
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

/// The Deployment an Appoperator named `name` asks for; `config_hash` (of the ConfigMap
/// `configRef` names) goes on its pod template.
pub fn deployment(name: &str, workload: &Workload, config_hash: Option<&str>) -> Deployment {
    let ports = workload.port.map(|port| vec![ContainerPort { container_port: port, ..ContainerPort::default() }]);
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    let env_from = workload.config_ref.as_ref().map(|config_ref| {
        vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name: config_ref.clone(), optional: None }),
            ..EnvFromSource::default()
        }]
    });
    let annotations = config_hash.map(|hash| BTreeMap::from([(CONFIG_HASH.to_string(), hash.to_string())]));
    Deployment {
        metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(workload.replicas),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), annotations, ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(workload.image.clone()),
                        ports,
                        env_from,
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

    fn config_map(data: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": "shop"}, "data": data})
    }

    fn template(resp: &Response) -> &serde_json::Value {
        &resp.children[0]["spec"]["template"]
    }

    #[test]
    fn a_config_ref_is_read_becomes_env_from_and_its_content_hash_rolls_the_pods() {
        let spec = json!({"image": "a", "configRef": "web-config"});
        let selectors = Plugin::related(&request(spec.clone(), vec![]).parent).unwrap();
        assert_eq!(selectors, [Selector::by_name("config", Gvk::of::<ConfigMap>(), "web-config")]);
        assert!(Plugin::related(&request(json!({"image": "a"}), vec![]).parent).unwrap().is_empty());

        let reconcile = |data| {
            let req = request(spec.clone(), vec![]).with_related("config", vec![config_map(data)]);
            Plugin::reconcile(req).unwrap()
        };
        let first = reconcile(json!({"LEVEL": "info"}));
        let container = &template(&first)["spec"]["containers"][0];
        assert_eq!(container["envFrom"], json!([{"configMapRef": {"name": "web-config"}}]));
        let hash = template(&first)["metadata"]["annotations"][CONFIG_HASH].clone();
        assert!(hash.as_str().is_some_and(|h| h.len() == 16), "{hash}");
        assert_eq!(reconcile(json!({"LEVEL": "info"})).children, first.children, "the same content, the same template");
        let edited = reconcile(json!({"LEVEL": "debug"}));
        assert_ne!(template(&edited)["metadata"]["annotations"][CONFIG_HASH], hash);
        // Keys and values do not run together.
        assert_ne!(reconcile(json!({"ab": "c"})).children, reconcile(json!({"a": "bc"})).children);
    }

    #[test]
    fn a_missing_config_map_is_config_missing_and_keeps_the_hash_the_deployment_has() {
        let spec = json!({"image": "a", "configRef": "web-config"});
        let observed = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"metadata": {"annotations": {CONFIG_HASH: "0123456789abcdef"}}}},
            "status": {"availableReplicas": 1},
        });
        let resp = Plugin::reconcile(request(spec.clone(), vec![observed])).unwrap();
        assert_eq!(resp.conditions[0].reason, "ConfigMissing");
        assert!(resp.conditions[0].message.contains("web-config"), "{}", resp.conditions[0].message);
        assert_eq!(template(&resp)["metadata"]["annotations"][CONFIG_HASH], "0123456789abcdef");
        let fresh = Plugin::reconcile(request(spec, vec![])).unwrap();
        assert_eq!(fresh.conditions[0].reason, "ConfigMissing");
        assert!(template(&fresh)["metadata"]["annotations"].is_null(), "no hash to keep");
    }

    /// The request as it crosses the boundary (every object JSON text).
    fn encoded(req: &Request) -> wasmop_sdk::wire::EncodedRequest {
        let mut out = wasmop_sdk::wire::EncodedRequest::new(req.parent.to_string())
            .children(req.children.iter().map(|c| c.to_string()).collect());
        for (id, objects) in &req.related {
            out = out.related(id, objects.iter().map(|o| o.to_string()).collect());
        }
        out
    }

    #[test]
    fn the_typed_path_answers_as_reconcile_does() {
        let observed = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"metadata": {"annotations": {CONFIG_HASH: "0123456789abcdef"}}}},
            "status": {"availableReplicas": 2},
        });
        let config = json!({"image": "a", "replicas": 2, "configRef": "web-config"});
        let mut older = request(json!({"image": "a", "port": 80}), vec![]);
        older.parent["apiVersion"] = json!("tools.wasmop.dev/v1beta1");
        older.parent["spec"] = json!({"image": "a", "replicas": 3});
        let cases = [
            request(json!({"image": "a", "port": 8080}), vec![]),
            request(json!({"image": "a", "replicas": 2}), vec![observed.clone()]),
            request(config.clone(), vec![observed.clone()]).with_related("config", vec![config_map(json!({"k": "v"}))]),
            request(config, vec![observed]),
            request(json!({"image": " "}), vec![]),
            older,
        ];
        let parse = |s: &String| serde_json::from_str::<serde_json::Value>(s).unwrap();
        for req in cases {
            let raw = Plugin::reconcile_raw(RawRequest::new(&encoded(&req)));
            let tree = Plugin::reconcile(req.clone()).map(wasmop_sdk::wire::encode_response);
            match (raw, tree) {
                (Ok(raw), Ok(tree)) => {
                    assert_eq!(
                        raw.children.iter().map(parse).collect::<Vec<_>>(),
                        tree.children.iter().map(parse).collect::<Vec<_>>()
                    );
                    assert_eq!(raw.status.as_ref().map(parse), tree.status.as_ref().map(parse));
                    assert_eq!(raw.conditions, tree.conditions);
                }
                (raw, tree) => assert_eq!(raw.err(), tree.err(), "{}", req.parent),
            }
        }
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
