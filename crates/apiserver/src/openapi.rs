//! Minimal OpenAPI documents: `/openapi/v3`, its per-group-version documents, and `/openapi/v2`.
//! They describe every served kind with its paths (the PATCH operations advertise the
//! `fieldValidation` parameter so kubectl validates server-side) and a schema per kind
//! (CRDs contribute their structural schema).

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceInfo};

fn hash_of(v: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// Name of the schema of a kind, in the style of the real documents.
pub fn schema_name(info: &ResourceInfo) -> String {
    if info.custom {
        let rev: Vec<&str> = info.group.split('.').rev().collect();
        format!("{}.{}.{}", rev.join("."), info.version, info.kind)
    } else {
        let g = if info.group.is_empty() { "core" } else { info.group.split('.').next().unwrap_or("") };
        format!("io.k8s.api.{g}.{}.{}", info.version, info.kind)
    }
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn kind_schema(info: &ResourceInfo) -> Value {
    let mut s = match &info.schema {
        Some(sc) => sc.clone(),
        None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    let props = s.as_object_mut().map(|m| m.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(p)) = props {
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
        p.insert("metadata".into(), json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}]}));
    }
    s["type"] = json!("object");
    s["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
    s
}

fn query(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn op(info: &ResourceInfo, action: &str, params: &[&str]) -> Value {
    let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(info))});
    json!({
        "operationId": format!("{action}{}", info.kind),
        "parameters": params.iter().map(|p| query(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(info),
    })
}

/// `/openapi/v3/{api/v1 | apis/{group}/{version}}`.
pub fn group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if !reg.serves(group, version) {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        OBJECT_META.into(),
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"}, "generateName": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        }}),
    );
    for info in reg.in_group_version(group, version) {
        let base = format!("/{}", gv_path(group, version));
        let coll = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", info.plural)
        } else {
            format!("{base}/{}", info.plural)
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        let patch = ["dryRun", "fieldManager", "fieldValidation", "force"];
        paths.insert(
            coll.clone(),
            json!({
                "get": op(&info, "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]),
                "post": op(&info, "post", &write),
                "delete": op(&info, "deletecollection", &["labelSelector", "fieldSelector"]),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": op(&info, "get", &[]),
                "put": op(&info, "put", &write),
                "patch": op(&info, "patch", &patch),
                "delete": op(&info, "delete", &["propagationPolicy", "dryRun"]),
            }),
        );
        if info.status {
            paths.insert(
                format!("{coll}/{{name}}/status"),
                json!({"get": op(&info, "get", &[]), "put": op(&info, "put", &write), "patch": op(&info, "patch", &patch)}),
            );
        }
        schemas.insert(schema_name(&info), kind_schema(&info));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::MAJOR, crate::discovery::MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs = vec![(String::new(), "v1".to_string())];
    for (g, vs) in reg.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        if let Some(doc) = group_version(reg, &g, &v) {
            let p = gv_path(&g, &v);
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash_of(&doc))}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2`: a Swagger 2.0 document with a definition per kind.
pub fn v2(reg: &Registry) -> Value {
    let mut defs = Map::new();
    for info in reg.all() {
        let mut s = kind_schema(&info);
        if let Some(Value::Object(p)) = s.get_mut("properties") {
            p.insert("metadata".into(), json!({"type": "object"}));
        }
        defs.insert(schema_name(&info), s);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::MAJOR, crate::discovery::MINOR)},
        "paths": {},
        "definitions": defs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_advertise_field_validation() {
        let reg = Registry::builtin();
        let doc = group_version(&reg, "apps", "v1").unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(p["parameters"].as_array().unwrap().iter().any(|x| x["name"] == "fieldValidation"));
        let idx = index(&reg);
        assert!(idx["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap().starts_with("/openapi/v3/api/v1?hash="));
    }
}
