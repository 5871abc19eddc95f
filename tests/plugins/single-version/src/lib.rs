//! An operator plugin written against `wit/plugin.wit` with wit-bindgen alone, as an author
//! without an SDK would: world `single-version-operator`, so it exports `reconciler` and no
//! `converter`. Its parent kind `Single` (`test.wasmop.dev/v1`) gets one ConfigMap; with the
//! feature `two-versions` its CRD defines v1 and v2, which the host must refuse.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "single-version-operator",
});

use exports::wasmop::plugin::reconciler::{ChildKind, Error, Guest, OperatorMetadata, Request, Response, Selector};
use wasmop::plugin::types::Gvk;

struct Single;

const VERSIONS: &str = if cfg!(feature = "two-versions") {
    r#"{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
       {"name": "v2", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}"#
} else {
    r#"{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}"#
};

fn gvk(group: &str, version: &str, kind: &str) -> Gvk {
    Gvk { group: group.into(), version: version.into(), kind: kind.into() }
}

impl Guest for Single {
    fn metadata() -> OperatorMetadata {
        let crd = format!(
            r#"{{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {{"name": "singles.test.wasmop.dev"}},
                "spec": {{"group": "test.wasmop.dev", "scope": "Namespaced",
                    "names": {{"plural": "singles", "singular": "single", "kind": "Single"}},
                    "versions": [{VERSIONS}]}}}}"#
        );
        OperatorMetadata {
            name: "single".into(),
            version: "1.0.0".into(),
            parent: gvk("test.wasmop.dev", "v1", "Single"),
            children: vec![ChildKind { gvk: gvk("", "v1", "ConfigMap"), cluster_scoped: false }],
            crd: Some(crd),
            finalizer: false,
            reads: vec![],
        }
    }

    fn related(_parent: String) -> Result<Vec<Selector>, String> {
        Ok(vec![])
    }

    fn reconcile(req: Request) -> Result<Response, Error> {
        let name = field(&req.parent, "\"name\":\"").unwrap_or("single");
        let child = format!(
            r#"{{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "{name}"}}, "data": {{"from": "single"}}}}"#
        );
        Ok(Response {
            children: vec![child],
            status: None,
            conditions: vec![],
            requeue_after_seconds: None,
            finalized: false,
        })
    }
}

/// The string value after `key` in compact JSON (enough for a parent's name, which is a DNS
/// name: no quotes or escapes), so the plugin needs no JSON crate.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(key)? + key.len();
    json[start..].split('"').next()
}

export!(Single);
