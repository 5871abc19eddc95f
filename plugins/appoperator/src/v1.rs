//! `tools.wasmop.dev/v1`, the storage version: what to run is grouped under `spec.workload`,
//! which also holds what v1beta1 cannot express (the container port).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppoperatorStatus;

/// Desired state of an Appoperator: a workload to run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tools.wasmop.dev",
    version = "v1",
    kind = "Appoperator",
    plural = "appoperators",
    shortname = "appop",
    namespaced,
    status = "AppoperatorStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.workload.image"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.workload.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct AppoperatorSpec {
    /// The container to run and how many copies.
    pub workload: Workload,
}

/// One container image, its replica count and the port it listens on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Workload {
    /// Container image to run, e.g. `nginx:1.27`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Number of pods to run (0 to 1000).
    #[serde(default = "crate::default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Port the container listens on, declared on the pod (new in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Name of a ConfigMap in the same namespace whose keys become the container's environment
    /// (`envFrom`). Editing it rolls the pods: the pod template carries a hash of its content.
    #[serde(default, rename = "configRef", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub config_ref: Option<String>,
}
