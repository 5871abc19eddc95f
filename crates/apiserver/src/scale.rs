//! The `/scale` subresource (`autoscaling/v1` `Scale`) used by `kubectl scale` and autoscalers.

use serde_json::{Value, json};

use crate::error::{ApiResult, StatusError};
use crate::meta;
use crate::resources::ResourceInfo;

fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

/// The Scale view of an object.
pub fn view(info: &ResourceInfo, obj: &Value) -> ApiResult<Value> {
    let Some((spec, status, selector)) = &info.scale else {
        return Err(StatusError::not_found(&info.group, &format!("{}/scale", info.plural), meta::name(obj)));
    };
    let md = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut scale_md = json!({});
    for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = md.get(f) {
            scale_md[f] = v.clone();
        }
    }
    let mut st = json!({"replicas": obj.pointer(&pointer(status)).cloned().unwrap_or(json!(0))});
    let sel = match selector.as_deref() {
        Some(".status.selector") | None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")),
        Some(p) => obj.pointer(&pointer(p)).and_then(Value::as_str).map(str::to_string),
    };
    if let Some(sel) = sel {
        st["selector"] = json!(sel);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_md,
        "spec": {"replicas": obj.pointer(&pointer(spec)).cloned().unwrap_or(json!(0))},
        "status": st,
    }))
}

/// A merge patch setting the spec replicas path to `replicas`.
pub fn replicas_patch(info: &ResourceInfo, replicas: &Value) -> Value {
    let path = info.scale.as_ref().map(|s| s.0.clone()).unwrap_or_else(|| ".spec.replicas".into());
    let mut patch = replicas.clone();
    for seg in path.trim_start_matches('.').split('.').rev() {
        patch = json!({ seg: patch });
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn deployment_scale_view_and_patch() {
        let reg = Registry::builtin();
        let info = reg.get("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d", "namespace": "n"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}}}, "status": {"replicas": 1}});
        let s = view(&info, &d).unwrap();
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["replicas"], 1);
        assert_eq!(s["status"]["selector"], "app=d");
        assert_eq!(replicas_patch(&info, &json!(5)), json!({"spec": {"replicas": 5}}));
    }
}
