//! Server-side defaults of built-in kinds, as the real server's defaulting functions set them
//! (the common ones: controllers that compare desired and actual objects see the same drift).

use serde_json::{Map, Value, json};

use crate::resources::ResourceInfo;

fn obj_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        cur = cur.get_mut(*p)?;
    }
    cur.as_object_mut()
}

fn set(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    let image = m.get("image").and_then(Value::as_str).unwrap_or("").to_string();
    set(m, "terminationMessagePath", json!("/dev/termination-log"));
    set(m, "terminationMessagePolicy", json!("File"));
    set(m, "imagePullPolicy", json!(image_pull_policy(&image)));
    set(m, "resources", json!({}));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(p, "protocol", json!("TCP"));
        }
    }
}

/// Defaults of a PodSpec.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            cs.iter_mut().for_each(container);
        }
    }
}

fn template(obj: &mut Value, path: &[&str]) {
    if let Some(spec) = obj_at(obj, path) {
        pod_spec(spec);
    }
}

/// Applies defaults of built-in kinds (`creating` for create-only ones such as status).
pub fn apply(info: &ResourceInfo, obj: &mut Value, creating: bool) {
    if info.custom {
        return;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Namespace") => {
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            if let Some(md) = obj_at(obj, &["metadata"]) {
                let labels = md.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), name);
                }
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if creating {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Secret") if obj.get("type").and_then(Value::as_str).unwrap_or("").is_empty() => {
            obj["type"] = json!("Opaque");
        }
        ("", "Service") => {
            if !obj.get("spec").is_some_and(Value::is_object) {
                obj["spec"] = json!({});
            }
            if let Some(spec) = obj_at(obj, &["spec"]) {
                set(spec, "type", json!("ClusterIP"));
                set(spec, "sessionAffinity", json!("None"));
                if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                    if creating && spec.get("clusterIP").is_none_or(Value::is_null) {
                        let r = crate::meta::random_u64();
                        let ip = format!("10.96.{}.{}", (r >> 8) & 0xff, (r & 0xfe) + 1);
                        spec.insert("clusterIP".into(), json!(ip));
                        spec.insert("clusterIPs".into(), json!([ip]));
                    }
                    set(spec, "ipFamilies", json!(["IPv4"]));
                    set(spec, "ipFamilyPolicy", json!("SingleStack"));
                    set(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("", "Pod") => {
            template(obj, &["spec"]);
            if creating {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        ("apps", kind @ ("Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet")) => {
            if let Some(spec) = obj_at(obj, &["spec"]) {
                if kind != "DaemonSet" {
                    set(spec, "replicas", json!(1));
                }
                match kind {
                    "Deployment" => {
                        set(spec, "revisionHistoryLimit", json!(10));
                        set(spec, "progressDeadlineSeconds", json!(600));
                        set(
                            spec,
                            "strategy",
                            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                        );
                    }
                    "StatefulSet" => {
                        set(spec, "revisionHistoryLimit", json!(10));
                        set(spec, "podManagementPolicy", json!("OrderedReady"));
                        set(
                            spec,
                            "updateStrategy",
                            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                        );
                        set(
                            spec,
                            "persistentVolumeClaimRetentionPolicy",
                            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                        );
                    }
                    "DaemonSet" => {
                        set(spec, "revisionHistoryLimit", json!(10));
                        set(
                            spec,
                            "updateStrategy",
                            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                        );
                    }
                    _ => {}
                }
            }
            template(obj, &["spec", "template", "spec"]);
        }
        ("batch", "Job") => {
            if let Some(spec) = obj_at(obj, &["spec"]) {
                set(spec, "backoffLimit", json!(6));
                set(spec, "completions", json!(1));
                set(spec, "parallelism", json!(1));
                set(spec, "completionMode", json!("NonIndexed"));
                set(spec, "suspend", json!(false));
            }
            template(obj, &["spec", "template", "spec"]);
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj_at(obj, &["spec"]) {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
            }
            template(obj, &["spec", "jobTemplate", "spec", "template", "spec"]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn deployment_and_container_defaults() {
        let reg = Registry::builtin();
        let info = reg.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx:1.27"}
        ]}}}});
        apply(&info, &mut d, true);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn explicit_values_are_kept() {
        let reg = Registry::builtin();
        let info = reg.get("", "v1", "services").unwrap();
        let mut s = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}});
        apply(&info, &mut s, true);
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    }
}
