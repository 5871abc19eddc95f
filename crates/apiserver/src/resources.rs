//! The table of served resources: built-in kinds plus those registered by CRDs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Description of one served resource in one group/version.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: String,
    /// Version served at this entry.
    pub version: String,
    /// Kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Plural resource name, e.g. `configmaps`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists (main-resource writes then ignore status).
    pub status: bool,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// kubectl categories (e.g. `all`).
    pub categories: Vec<String>,
    /// For custom resources: the version's OpenAPI v3 schema, if any.
    pub schema: Option<Value>,
    /// Whether this resource comes from a CRD.
    pub custom: bool,
    /// Storage version (objects are stored with this apiVersion).
    pub storage_version: String,
    /// CRD additionalPrinterColumns (name, type, jsonPath).
    pub printer_columns: Vec<(String, String, String)>,
    /// The `/scale` subresource: (specReplicasPath, statusReplicasPath, labelSelectorPath).
    pub scale: Option<(String, String, Option<String>)>,
    /// For custom resources with conversion strategy Webhook: the webhook (None: strategy None).
    pub conversion: Option<Arc<crate::webhook::WebhookConversion>>,
}

impl ResourceInfo {
    /// `group/version` or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Storage key: (group, plural).
    pub fn key(&self) -> ResKey {
        (crate::convert::storage_group(&self.group, &self.kind, self.custom), self.plural.clone())
    }

    /// Whether this is a create-only review (access reviews, token reviews): the server
    /// answers it and stores nothing.
    pub fn is_review(&self) -> bool {
        !self.custom && self.kind.ends_with("Review")
    }

    /// `Kind.group` for error messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }
}

/// Storage key of a resource: (group, plural).
pub type ResKey = (String, String);

struct Builtin {
    gv: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
    generation: bool,
    short: &'static [&'static str],
    all: bool,
}

#[allow(clippy::too_many_arguments)]
const fn b(
    gv: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
    generation: bool,
    short: &'static [&'static str],
    all: bool,
) -> Builtin {
    Builtin { gv, kind, plural, namespaced, status, generation, short, all }
}

/// Built-in kinds: (group/version, kind, plural, namespaced, status subresource, generation, short names, in `all`).
const BUILTINS: &[Builtin] = &[
    b("v1", "Namespace", "namespaces", false, true, false, &["ns"], false),
    b("v1", "ConfigMap", "configmaps", true, false, false, &["cm"], false),
    b("v1", "Secret", "secrets", true, false, false, &[], false),
    b("v1", "Service", "services", true, true, false, &["svc"], true),
    b("v1", "ServiceAccount", "serviceaccounts", true, false, false, &["sa"], false),
    b("v1", "Event", "events", true, false, false, &["ev"], false),
    b("v1", "Pod", "pods", true, true, false, &["po"], true),
    b("events.k8s.io/v1", "Event", "events", true, false, false, &["ev"], false),
    b("apps/v1", "Deployment", "deployments", true, true, true, &["deploy"], true),
    b("apps/v1", "StatefulSet", "statefulsets", true, true, true, &["sts"], true),
    b("apps/v1", "DaemonSet", "daemonsets", true, true, true, &["ds"], true),
    b("apps/v1", "ReplicaSet", "replicasets", true, true, true, &["rs"], true),
    b("batch/v1", "Job", "jobs", true, true, true, &[], true),
    b("batch/v1", "CronJob", "cronjobs", true, true, true, &["cj"], true),
    b("coordination.k8s.io/v1", "Lease", "leases", true, false, false, &[], false),
    b("rbac.authorization.k8s.io/v1", "Role", "roles", true, false, false, &[], false),
    b("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true, false, false, &[], false),
    b("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false, false, false, &[], false),
    b("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false, false, false, &[], false),
    b(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
        true,
        &["crd", "crds"],
        false,
    ),
    // Create-only reviews: answered, never stored (see `ResourceInfo::is_review`).
    b(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        false,
        false,
        &[],
        false,
    ),
    b("authorization.k8s.io/v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false, false, false, &[], false),
    b("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews", false, false, false, &[], false),
    b("authentication.k8s.io/v1", "SelfSubjectReview", "selfsubjectreviews", false, false, false, &[], false),
    b("authentication.k8s.io/v1", "TokenReview", "tokenreviews", false, false, false, &[], false),
];

/// All served resources, indexed by group, version and plural.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// (group, version, plural) -> info.
    entries: BTreeMap<(String, String, String), Arc<ResourceInfo>>,
    /// Group -> preferred version and all versions in order.
    groups: BTreeMap<String, Vec<String>>,
}

impl Registry {
    /// The registry of built-in kinds.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        for bi in BUILTINS {
            let (group, version) = match bi.gv.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), bi.gv.to_string()),
            };
            r.insert(ResourceInfo {
                group,
                storage_version: version.clone(),
                version,
                kind: bi.kind.to_string(),
                plural: bi.plural.to_string(),
                singular: bi.kind.to_lowercase(),
                namespaced: bi.namespaced,
                status: bi.status,
                generation: bi.generation,
                short_names: bi.short.iter().map(|s| s.to_string()).collect(),
                categories: if bi.all { vec!["all".to_string()] } else { vec![] },
                schema: None,
                custom: false,
                printer_columns: Vec::new(),
                scale: matches!(bi.kind, "Deployment" | "StatefulSet" | "ReplicaSet").then(|| {
                    (".spec.replicas".to_string(), ".status.replicas".to_string(), Some(".status.selector".to_string()))
                }),
                conversion: None,
            });
        }
        r
    }

    /// Adds (or replaces) an entry.
    pub fn insert(&mut self, info: ResourceInfo) {
        let versions = self.groups.entry(info.group.clone()).or_default();
        if !versions.contains(&info.version) {
            versions.push(info.version.clone());
        }
        self.entries.insert((info.group.clone(), info.version.clone(), info.plural.clone()), Arc::new(info));
    }

    /// Removes every version of `group`/`plural`.
    pub fn remove(&mut self, group: &str, plural: &str) {
        self.entries.retain(|(g, _, p), _| !(g == group && p == plural));
        let still: Vec<String> =
            self.entries.keys().filter(|(g, _, _)| g == group).map(|(_, v, _)| v.clone()).collect();
        if let Some(vs) = self.groups.get_mut(group) {
            vs.retain(|v| still.contains(v));
            if vs.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Looks up a resource by group, version and plural.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.entries.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
    }

    /// Looks up a resource by apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let (group, version) = split_api_version(api_version);
        self.entries.values().find(|r| r.group == group && r.version == version && r.kind == kind).cloned()
    }

    /// The storage-version entry for (group, plural).
    pub fn storage(&self, key: &ResKey) -> Option<Arc<ResourceInfo>> {
        self.entries.values().find(|r| r.group == key.0 && r.plural == key.1 && r.version == r.storage_version).cloned()
    }

    /// Resources served in one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        self.entries.values().filter(|r| r.group == group && r.version == version).cloned().collect()
    }

    /// Whether a group/version is served at all.
    pub fn serves(&self, group: &str, version: &str) -> bool {
        self.groups.get(group).is_some_and(|vs| vs.iter().any(|v| v == version))
    }

    /// Groups (excluding core) with their versions, preferred first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.groups.iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| (g.clone(), sorted_versions(vs))).collect()
    }

    /// Every entry.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.entries.values().cloned().collect()
    }
}

/// Splits `group/version` (or a bare core `version`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Orders versions as Kubernetes does: GA before beta before alpha, higher first.
pub fn sorted_versions(versions: &[String]) -> Vec<String> {
    fn rank(v: &str) -> (u8, u32, u32) {
        let Some(rest) = v.strip_prefix('v') else {
            return (0, 0, 0);
        };
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major = digits.parse().unwrap_or(0);
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            (3, major, 0)
        } else if let Some(n) = tail.strip_prefix("beta") {
            (2, major, n.parse().unwrap_or(0))
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, major, n.parse().unwrap_or(0))
        } else {
            (0, major, 0)
        }
    }
    let mut vs = versions.to_vec();
    vs.sort_by(|a, b| rank(b).cmp(&rank(a)).then(a.cmp(b)));
    vs
}

/// How a list field merges under strategic merge patch and server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// A map keyed by the given fields.
    Map(Vec<String>),
}

/// List semantics for built-in kinds, keyed by the field's name and its parent's name.
pub fn builtin_list_type(kind: &str, path: &[String]) -> ListType {
    let field = path.last().map(String::as_str).unwrap_or("");
    let parent = if path.len() >= 2 { path[path.len() - 2].as_str() } else { "" };
    let key = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
    match field {
        "finalizers" if parent == "metadata" => ListType::Set,
        "ownerReferences" => key(&["uid"]),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "volumeClaimTemplates" => key(&["name"]),
        "volumeMounts" => key(&["mountPath"]),
        "volumeDevices" => key(&["devicePath"]),
        "conditions" => key(&["type"]),
        "tolerations" | "args" | "command" => ListType::Atomic,
        "ports" if kind == "Service" => key(&["port", "protocol"]),
        "ports" => key(&["containerPort", "protocol"]),
        _ => ListType::Atomic,
    }
}

/// List semantics from a CRD schema node (`x-kubernetes-list-type`).
pub fn schema_list_type(schema: &Value) -> ListType {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|ks| ks.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

/// Finds the schema node at a (field-name) path inside a CRD schema, descending through arrays.
pub fn schema_at<'a>(schema: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = schema;
    for seg in path {
        while node.get("type").and_then(Value::as_str) == Some("array") {
            node = node.get("items")?;
        }
        node = match node.get("properties").and_then(|p| p.get(seg)) {
            Some(n) => n,
            None => match node.get("additionalProperties") {
                Some(ap) if ap.is_object() => ap,
                _ => return None,
            },
        };
    }
    Some(node)
}

/// List semantics for a field of `info`'s objects at a path of field names.
pub fn list_type(info: &ResourceInfo, path: &[String]) -> ListType {
    if path.first().map(String::as_str) == Some("metadata") {
        return builtin_list_type(&info.kind, path);
    }
    if info.custom {
        return info.schema.as_ref().and_then(|s| schema_at(s, path)).map(schema_list_type).unwrap_or(ListType::Atomic);
    }
    builtin_list_type(&info.kind, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_served() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        assert!(d.namespaced && d.status && d.generation);
        let ns = r.get("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert!(r.by_kind("rbac.authorization.k8s.io/v1", "ClusterRole").is_some());
        assert!(r.serves("events.k8s.io", "v1"));
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let vs = vec!["v1beta1".into(), "v1alpha1".into(), "v2".into(), "v1".into()];
        assert_eq!(sorted_versions(&vs), vec!["v2", "v1", "v1beta1", "v1alpha1"]);
    }

    #[test]
    fn containers_merge_by_name() {
        let p: Vec<String> = ["spec", "template", "spec", "containers"].iter().map(|s| s.to_string()).collect();
        assert_eq!(builtin_list_type("Deployment", &p), ListType::Map(vec!["name".into()]));
    }
}
