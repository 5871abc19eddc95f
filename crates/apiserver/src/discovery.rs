//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceInfo};

/// Kubernetes version the server reports.
pub const MAJOR: &str = "1";
/// Minor version the server reports (matches the k8s-openapi feature the workspace uses).
pub const MINOR: &str = "34";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "emulationMajor": MAJOR,
        "emulationMinor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0-wasmop"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(json!({})),
    })
}

/// `/apis`.
pub fn groups(reg: &Registry) -> Value {
    let gs: Vec<Value> = reg.groups().iter().map(|(g, vs)| group_entry(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/{group}`.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == name)?;
    let mut v = group_entry(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn verbs(info: &ResourceInfo) -> Vec<&'static str> {
    if info.is_review() {
        return vec!["create"];
    }
    vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        .into_iter()
        .filter(|v| info.kind != "Namespace" || *v != "deletecollection")
        .collect()
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if !reg.serves(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for info in reg.in_group_version(group, version) {
        let mut r = json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": verbs(&info),
            "storageVersionHash": format!("{:x}", info.plural.len() * 7919 + info.kind.len()),
        });
        if !info.short_names.is_empty() {
            r["shortNames"] = json!(info.short_names);
        }
        if !info.categories.is_empty() {
            r["categories"] = json!(info.categories);
        }
        resources.push(r);
        if info.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", info.plural),
                "singularName": "",
                "namespaced": info.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if info.status {
            resources.push(json!({
                "name": format!("{}/status", info.plural),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// Whether `Accept` asks for aggregated discovery; returns the version asked for (`v2` or `v2beta1`).
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
        if p.starts_with("application/json") && !p.contains("as=") {
            return None;
        }
    }
    None
}

fn aggregated_group(reg: &Registry, group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = reg
                .in_group_version(group, v)
                .iter()
                .map(|info| {
                    let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
                    let mut r = json!({
                        "resource": info.plural,
                        "responseKind": gvk,
                        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": info.singular,
                        "verbs": verbs(info),
                    });
                    if !info.short_names.is_empty() {
                        r["shortNames"] = json!(info.short_names);
                    }
                    if !info.categories.is_empty() {
                        r["categories"] = json!(info.categories);
                    }
                    let mut subs = Vec::new();
                    if info.status {
                        subs.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
                    }
                    if info.scale.is_some() {
                        subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                    }
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs})
}

/// Aggregated discovery (`apidiscovery.k8s.io` `APIGroupDiscoveryList`) for `/api` (core) or `/apis`.
pub fn aggregated(reg: &Registry, core: bool, version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(reg, "", &["v1".to_string()])]
    } else {
        reg.groups().iter().map(|(g, vs)| aggregated_group(reg, g, vs)).collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_builtins_with_status_subresources() {
        let reg = Registry::builtin();
        let apps = resource_list(&reg, "apps", "v1").unwrap();
        let names: Vec<&str> =
            apps["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"deployments") && names.contains(&"deployments/status"));
        assert!(resource_list(&reg, "apps", "v9").is_none());
        let gs = groups(&reg);
        assert!(gs["groups"].as_array().unwrap().iter().any(|g| g["name"] == "batch"));
    }
}
