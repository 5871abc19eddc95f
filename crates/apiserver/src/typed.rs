//! Decoding of built-in kinds through their typed definitions (k8s-openapi), as the real
//! server decodes into Go structs: fields the type does not declare are dropped (or rejected
//! with `fieldValidation=Strict`), and values of the wrong type are a 400 BadRequest.

use serde_json::Value;

use crate::error::{ApiResult, StatusError};
use crate::resources::ResourceInfo;

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn typed_form(group: &str, kind: &str, v: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core, events::v1 as events,
        rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    Some(match (group, kind) {
        ("", "Namespace") => roundtrip::<core::Namespace>(v),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(v),
        ("", "Secret") => roundtrip::<core::Secret>(v),
        ("", "Service") => roundtrip::<core::Service>(v),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(v),
        ("", "Event") => roundtrip::<core::Event>(v),
        ("", "Pod") => roundtrip::<core::Pod>(v),
        ("events.k8s.io", "Event") => roundtrip::<events::Event>(v),
        ("apps", "Deployment") => roundtrip::<apps::Deployment>(v),
        ("apps", "StatefulSet") => roundtrip::<apps::StatefulSet>(v),
        ("apps", "DaemonSet") => roundtrip::<apps::DaemonSet>(v),
        ("apps", "ReplicaSet") => roundtrip::<apps::ReplicaSet>(v),
        ("batch", "Job") => roundtrip::<batch::Job>(v),
        ("batch", "CronJob") => roundtrip::<batch::CronJob>(v),
        ("coordination.k8s.io", "Lease") => roundtrip::<coord::Lease>(v),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::Role>(v),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::RoleBinding>(v),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::ClusterRole>(v),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => roundtrip::<rbac::ClusterRoleBinding>(v),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => roundtrip::<apiext::CustomResourceDefinition>(v),
        _ => return None,
    })
}

/// Removes from `orig` every field absent from `typed` (its typed round trip); returns the
/// paths of removed non-null fields.
fn prune_like(orig: &mut Value, typed: &Value, path: &str, pruned: &mut Vec<String>) {
    match (orig, typed) {
        (Value::Object(o), Value::Object(t)) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(&k) {
                    Some(tv) => {
                        if let Some(ov) = o.get_mut(&k) {
                            prune_like(ov, tv, &p, pruned);
                        }
                    }
                    None => {
                        if o.remove(&k).is_some_and(|v| !v.is_null()) {
                            pruned.push(p);
                        }
                    }
                }
            }
        }
        (Value::Array(o), Value::Array(t)) if o.len() == t.len() => {
            for (i, (ov, tv)) in o.iter_mut().zip(t).enumerate() {
                prune_like(ov, tv, &format!("{path}[{i}]"), pruned);
            }
        }
        _ => {}
    }
}

/// Decodes a built-in object like the real server: drops undeclared fields (an error when
/// `strict`), and rejects values of the wrong type. Custom resources are left alone.
pub fn decode(info: &ResourceInfo, obj: &mut Value, strict: bool) -> ApiResult<()> {
    let mut pruned = Vec::new();
    decode_pruned(info, obj, &mut pruned)?;
    if strict && !pruned.is_empty() {
        let list: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{p}\"")).collect();
        return Err(StatusError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            info.kind,
            info.version,
            info.kind,
            list.join(", ")
        )));
    }
    Ok(())
}

/// Like [`decode`], collecting the dropped fields' paths in `pruned` instead of failing on them.
pub fn decode_pruned(info: &ResourceInfo, obj: &mut Value, pruned: &mut Vec<String>) -> ApiResult<()> {
    if info.custom {
        return Ok(());
    }
    let cannot = |why: String| {
        StatusError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            info.kind, info.version, info.kind
        ))
    };
    let Some(result) = typed_form(&info.group, &info.kind, obj) else {
        return Ok(());
    };
    let typed = result.map_err(cannot)?;
    prune_like(obj, &typed, "", pruned);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_dropped_or_rejected() {
        let reg = Registry::builtin();
        let dep = reg.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "bogus": 1},
            "spec": {"replicas": 2, "replicass": 3, "template": {"spec": {"containers": [{"name": "c", "imagee": "x"}]}}}});
        decode(&dep, &mut d.clone(), false).unwrap();
        let err = decode(&dep, &mut d.clone(), true).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("unknown field \"spec.replicass\""), "{}", err.message);
        decode(&dep, &mut d, false).unwrap();
        assert!(d["spec"].get("replicass").is_none());
        assert!(d["metadata"].get("bogus").is_none());
        assert!(d["spec"]["template"]["spec"]["containers"][0].get("imagee").is_none());
        assert_eq!(d["spec"]["replicas"], 2);
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let reg = Registry::builtin();
        let cm = reg.get("", "v1", "configmaps").unwrap();
        let mut c = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": 1}});
        assert_eq!(decode(&cm, &mut c, false).unwrap_err().code, 400);
    }
}
