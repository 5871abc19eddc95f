//! `tools.wasmop.dev/v1beta1`: still served, deprecated. The image and replica count sit at the
//! top of the spec; there is no port.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppoperatorStatus;

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
    deprecated = "tools.wasmop.dev/v1beta1 Appoperator is deprecated; use tools.wasmop.dev/v1 (spec.workload)",
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
    #[serde(default = "crate::default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
}
