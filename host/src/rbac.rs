//! Least-privilege RBAC derived from what the plugins declare: exactly the verbs the pipeline
//! uses on each kind, no wildcard. `wasmop rbac` prints it; the supervisor checks it at load
//! with SelfSubjectAccessReviews, so a plugin needing a rule the operator lacks is refused with
//! the rule named instead of failing later, object by object.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::plugin::{Gvk, OperatorMetadata, ReadScope};

/// Verbs the pipeline uses on parents: watch caches, finalizer JSON patches.
pub const PARENT_VERBS: &[&str] = &["get", "list", "watch", "patch"];
/// Verbs on the parents' status subresource: server-side apply.
pub const STATUS_VERBS: &[&str] = &["patch"];
/// Verbs on the parents' finalizers subresource: required to set `blockOwnerDeletion` on a
/// child whose owner is the parent (OwnerReferencesPermissionEnforcement).
pub const FINALIZERS_VERBS: &[&str] = &["update"];
/// Verbs on children: watch caches, the ownership read, server-side apply (which creates),
/// pruning.
pub const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
/// Verbs on the kinds a plugin reads (related objects): watch caches only.
pub const READ_VERBS: &[&str] = &["get", "list", "watch"];
/// Verbs on Events (the host creates Events and patches their series).
pub const EVENT_VERBS: &[&str] = &["create", "patch"];
/// Verbs on the leader-election Lease (kube-lease-manager).
pub const LEASE_VERBS: &[&str] = &["get", "create", "patch"];
/// Verbs on the plugins' own CRDs with `--install-crds` (server-side apply, wait for Established).
pub const CRD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch"];
/// Verbs on the CRDs of converting plugins: the conversion webhook's CA bundle is patched in.
pub const CA_INJECTION_VERBS: &[&str] = &["get", "patch"];
/// The Secret keeping the conversion webhook's certificate (`--webhook-service` default).
pub const WEBHOOK_SECRET: &str = "wasmop-webhook-tls";

/// One RBAC rule, as in a Role or ClusterRole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// API group ("" for core).
    pub group: String,
    /// Resource (plural), or `plural/subresource`.
    pub resource: String,
    /// Only these object names, if any.
    pub names: Vec<String>,
    /// Verbs.
    pub verbs: Vec<String>,
    /// Why the host needs it, for messages and comments.
    pub why: String,
    /// Whether it is needed cluster-wide even when the operator is limited to namespaces (a
    /// kind a plugin reads with scope cluster).
    pub cluster_wide: bool,
}

impl Rule {
    fn new(group: &str, resource: &str, verbs: &[&str], why: impl Into<String>) -> Rule {
        Rule {
            group: group.into(),
            resource: resource.into(),
            names: Vec::new(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            why: why.into(),
            cluster_wide: false,
        }
    }

    /// The rule as RBAC JSON.
    pub fn to_json(&self) -> Value {
        let mut rule = json!({"apiGroups": [self.group], "resources": [self.resource], "verbs": self.verbs});
        if !self.names.is_empty() {
            rule["resourceNames"] = json!(self.names);
        }
        rule
    }
}

/// The plural of a kind: the parent's from its CRD when it ships one, else kube's heuristic
/// (right for every built-in kind a plugin may declare).
fn plural(gvk: &Gvk, crd: Option<&Value>) -> String {
    let from_crd = crd
        .filter(|crd| crd["spec"]["names"]["kind"] == gvk.kind.as_str())
        .and_then(|crd| crd["spec"]["names"]["plural"].as_str());
    match from_crd {
        Some(plural) => plural.to_string(),
        None => ApiResource::from_gvk(&GroupVersionKind::gvk(&gvk.group, &gvk.version, &gvk.kind)).plural,
    }
}

/// The rules one operator plugin needs: its parents, their status and finalizers, its children,
/// and the kinds it reads (cluster-wide for scope cluster).
pub fn plugin_rules(meta: &OperatorMetadata) -> Vec<Rule> {
    let parent = plural(&meta.parent, meta.crd.as_ref());
    let group = &meta.parent.group;
    let mut rules = vec![
        Rule::new(group, &parent, PARENT_VERBS, format!("plugin {}: its parents", meta.name)),
        Rule::new(group, &format!("{parent}/status"), STATUS_VERBS, format!("plugin {}: parents' status", meta.name)),
        Rule::new(
            group,
            &format!("{parent}/finalizers"),
            FINALIZERS_VERBS,
            format!("plugin {}: children's blockOwnerDeletion", meta.name),
        ),
    ];
    for child in &meta.children {
        let why = format!("plugin {}: its {} children", meta.name, child.gvk.kind);
        rules.push(Rule::new(&child.gvk.group, &plural(&child.gvk, None), CHILD_VERBS, why));
    }
    for read in &meta.reads {
        let why = format!("plugin {}: the {} objects it reads", meta.name, read.gvk.kind);
        let mut rule = Rule::new(&read.gvk.group, &plural(&read.gvk, None), READ_VERBS, why);
        rule.cluster_wide = read.scope == ReadScope::Cluster;
        rules.push(rule);
    }
    rules
}

/// The rules the host itself needs beside the plugins': Events; the CRDs of the plugins with
/// `install_crds`; and with `webhook`, the CRDs of the plugins that convert between versions
/// (to inject the webhook's CA bundle). CRD rules name only those CRDs.
pub fn host_rules(plugins: &[OperatorMetadata], install_crds: bool, webhook: bool) -> Vec<Rule> {
    let mut rules = vec![Rule::new("events.k8s.io", "events", EVENT_VERBS, "Events about parents and reloads")];
    let crd_names = |converting_only: bool| {
        let mut names: Vec<String> = plugins
            .iter()
            .filter(|p| !converting_only || converts(p))
            .filter_map(|p| p.crd.as_ref()?["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let mut crd_rule = |names: Vec<String>, verbs: &[&str], why: &str| {
        if !names.is_empty() {
            let mut rule = Rule::new("apiextensions.k8s.io", "customresourcedefinitions", verbs, why);
            rule.names = names;
            rules.push(rule);
        }
    };
    if install_crds {
        crd_rule(crd_names(false), CRD_VERBS, "--install-crds: the plugins' CRDs");
    } else if webhook {
        crd_rule(crd_names(true), CA_INJECTION_VERBS, "the conversion webhook's CA bundle in the plugins' CRDs");
    }
    rules
}

/// Whether a plugin's CRD defines several versions, so the host serves its conversion.
pub fn converts(meta: &OperatorMetadata) -> bool {
    meta.crd_versions().len() > 1
}

/// Rules in the operator's own namespace for the conversion webhook's certificate Secret:
/// creating it (which cannot be limited by name) and reading and renewing only it.
pub fn webhook_secret_rules() -> Vec<Rule> {
    let mut own = Rule::new("", "secrets", &["get", "update"], "the conversion webhook's certificate");
    own.names = vec![WEBHOOK_SECRET.to_string()];
    vec![Rule::new("", "secrets", &["create"], "the conversion webhook's certificate"), own]
}

/// Rules merged: one per (group, resource, names), verbs united and sorted, so the output is
/// stable whatever the order of the plugins.
pub fn merge(rules: Vec<Rule>) -> Vec<Rule> {
    let mut merged: BTreeMap<(bool, String, String, Vec<String>), Rule> = BTreeMap::new();
    for rule in rules {
        let key = (rule.cluster_wide, rule.group.clone(), rule.resource.clone(), rule.names.clone());
        let entry = merged.entry(key).or_insert_with(|| Rule { verbs: Vec::new(), ..rule.clone() });
        entry.verbs.extend(rule.verbs);
        entry.verbs.sort();
        entry.verbs.dedup();
    }
    merged.into_values().collect()
}

/// Where the operator runs, and under which identity, for the generated manifests.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The operator's namespace (the Lease lives there).
    pub namespace: String,
    /// The operator's ServiceAccount.
    pub service_account: String,
    /// Namespaces the operator is limited to (`--namespace`); empty for cluster-wide.
    pub watched: Vec<String>,
    /// Whether it keeps a conversion webhook certificate in a Secret of its namespace.
    pub webhook_secret: bool,
    /// Whether it follows `WasmPlugin` objects (the cluster plugin source).
    pub wasmplugins: bool,
}

/// The cluster-wide rules of the cluster plugin source: following `WasmPlugin`s and writing
/// their status.
pub fn wasmplugin_rules() -> Vec<Rule> {
    vec![
        Rule::new("wasmop.dev", "wasmplugins", &["get", "list", "watch"], "the cluster plugin source"),
        Rule::new("wasmop.dev", "wasmplugins/status", &["patch"], "WasmPlugin status"),
    ]
}

/// With policies (which may run in monitor mode): writing each parent's wg-policy
/// `PolicyReport`, when the cluster serves that kind (server-side apply creates it).
pub fn policy_report_rule() -> Rule {
    Rule::new("wgpolicyk8s.io", "policyreports", &["create", "patch", "delete"], "monitoring policies' PolicyReports")
}

/// With `--install-crds` and the cluster plugin source: applying the `WasmPlugin` CRD (only it).
pub fn wasmplugin_crd_rule() -> Rule {
    let mut rule =
        Rule::new("apiextensions.k8s.io", "customresourcedefinitions", CRD_VERBS, "--install-crds: the WasmPlugin CRD");
    rule.names = vec!["wasmplugins.wasmop.dev".to_string()];
    rule
}

/// The rules of the cluster plugin source in the operator's own namespace: pull Secrets read
/// by name (`get` only) and ConfigMap sources followed.
pub fn wasmplugin_namespace_rules() -> Vec<Rule> {
    vec![
        Rule::new("", "secrets", &["get"], "WasmPlugin pull Secrets"),
        Rule::new("", "configmaps", &["get", "list", "watch"], "WasmPlugin ConfigMap sources"),
    ]
}

/// The manifests: a ClusterRole and binding (or a Role and binding per watched namespace),
/// plus a Role and binding for the leader-election Lease in the operator's namespace.
pub fn manifests(rules: &[Rule], identity: &Identity) -> Vec<Value> {
    let rules_json: Vec<Value> = rules.iter().map(Rule::to_json).collect();
    let subject =
        json!([{"kind": "ServiceAccount", "name": identity.service_account, "namespace": identity.namespace}]);
    let mut out = Vec::new();
    let role = |kind: &str, ns: Option<&str>, rules: Value| {
        let mut meta = json!({"name": "wasmop", "labels": {"app.kubernetes.io/name": "wasmop"}});
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules})
    };
    let binding = |kind: &str, role_kind: &str, name: &str, ns: Option<&str>| {
        let mut meta = json!({"name": name, "labels": {"app.kubernetes.io/name": "wasmop"}});
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "wasmop"},
            "subjects": subject})
    };
    let cluster_json: Vec<Value> =
        if identity.wasmplugins { wasmplugin_rules().iter().map(Rule::to_json).collect() } else { Vec::new() };
    if identity.watched.is_empty() {
        let all: Vec<Value> = rules_json.into_iter().chain(cluster_json).collect();
        out.push(role("ClusterRole", None, json!(all)));
        out.push(binding("ClusterRoleBinding", "ClusterRole", "wasmop", None));
    } else {
        let namespaced: Vec<Value> =
            rules.iter().zip(&rules_json).filter(|(r, _)| !r.cluster_wide).map(|(_, j)| j.clone()).collect();
        for ns in &identity.watched {
            out.push(role("Role", Some(ns), json!(namespaced)));
            out.push(binding("RoleBinding", "Role", "wasmop", Some(ns)));
        }
        // Kinds a plugin reads with scope cluster are read cluster-wide.
        let reads: Vec<Value> =
            rules.iter().zip(&rules_json).filter(|(r, _)| r.cluster_wide).map(|(_, j)| j.clone()).collect();
        // WasmPlugins are cluster-scoped: their rules stay cluster-wide.
        for (name, rules) in [("wasmop-cluster-reads", reads), ("wasmop-wasmplugins", cluster_json)] {
            if rules.is_empty() {
                continue;
            }
            let mut cluster_role = role("ClusterRole", None, json!(rules));
            cluster_role["metadata"]["name"] = json!(name);
            let mut cluster_binding = binding("ClusterRoleBinding", "ClusterRole", name, None);
            cluster_binding["roleRef"]["name"] = json!(name);
            out.push(cluster_role);
            out.push(cluster_binding);
        }
    }
    let mut others = Vec::new();
    if identity.webhook_secret {
        others.extend(webhook_secret_rules());
    }
    if identity.wasmplugins {
        others.extend(wasmplugin_namespace_rules());
    }
    // The Lease rule first: deploy/overlays/sharded patches it by position.
    let mut own_rules = vec![Rule::new("coordination.k8s.io", "leases", LEASE_VERBS, "leader election")];
    own_rules.extend(merge(others));
    let own_json: Vec<Value> = own_rules.iter().map(Rule::to_json).collect();
    let mut lease_role = role("Role", Some(&identity.namespace), json!(own_json));
    lease_role["metadata"]["name"] = json!("wasmop-leader-election");
    let mut lease_binding = binding("RoleBinding", "Role", "wasmop-leader-election", Some(&identity.namespace));
    lease_binding["roleRef"]["name"] = json!("wasmop-leader-election");
    out.push(lease_role);
    out.push(lease_binding);
    out
}

/// A rule the running identity lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The verb.
    pub verb: String,
    /// Group of the resource.
    pub group: String,
    /// The resource (plural, or `plural/subresource`).
    pub resource: String,
    /// The namespace checked, if namespaced.
    pub namespace: Option<String>,
    /// Why the host needs it.
    pub why: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "\"\" (core)" } else { &self.group };
        let scope = self.namespace.as_deref().map_or("cluster-wide".to_string(), |ns| format!("in namespace {ns}"));
        write!(
            f,
            "the operator may not {} {} (apiGroup {group}) {scope}, needed for {}; add it to its role (`wasmop rbac` prints the rules)",
            self.verb, self.resource, self.why
        )
    }
}

/// Asks the API server, with SelfSubjectAccessReviews, whether the running identity may do
/// everything `rules` say (in `namespace`, or cluster-wide; a cluster-wide rule always
/// cluster-wide); returns what it may not. A review that cannot be made is an error.
pub async fn check(client: &Client, rules: &[Rule], namespace: Option<&str>) -> Result<Vec<Missing>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for rule in rules {
        let namespace = if rule.cluster_wide { None } else { namespace };
        let (resource, subresource) = match rule.resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (rule.resource.clone(), None),
        };
        for verb in &rule.verbs {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(rule.group.clone()),
                        resource: Some(resource.clone()),
                        subresource: subresource.clone(),
                        verb: Some(verb.clone()),
                        namespace: namespace.map(str::to_string),
                        name: rule.names.first().cloned(),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = api.create(&PostParams::default(), &review).await?;
            if !answer.status.is_some_and(|s| s.allowed) {
                missing.push(Missing {
                    verb: verb.clone(),
                    group: rule.group.clone(),
                    resource: rule.resource.clone(),
                    namespace: namespace.map(str::to_string),
                    why: rule.why.clone(),
                });
            }
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::ChildKind;

    fn meta() -> OperatorMetadata {
        OperatorMetadata {
            name: "app".into(),
            version: "1".into(),
            parent: Gvk::new("tools.wasmop.dev", "v1beta1", "Appoperator"),
            children: vec![
                ChildKind { gvk: Gvk::new("apps", "v1", "Deployment"), cluster_scoped: false },
                ChildKind { gvk: Gvk::new("", "v1", "ConfigMap"), cluster_scoped: false },
            ],
            crd: Some(json!({"metadata": {"name": "appoperators.tools.wasmop.dev"},
                "spec": {"names": {"kind": "Appoperator", "plural": "appoperators"}}})),
            finalizer: false,
            reads: vec![],
        }
    }

    #[test]
    fn rules_name_every_kind_and_no_wildcard() {
        let mut rules = plugin_rules(&meta());
        rules.extend(host_rules(&[meta()], true, true));
        let rules = merge(rules);
        let resources: Vec<String> = rules.iter().map(|r| format!("{}/{}", r.group, r.resource)).collect();
        assert_eq!(
            resources,
            [
                "/configmaps",
                "apiextensions.k8s.io/customresourcedefinitions",
                "apps/deployments",
                "events.k8s.io/events",
                "tools.wasmop.dev/appoperators",
                "tools.wasmop.dev/appoperators/finalizers",
                "tools.wasmop.dev/appoperators/status",
            ]
        );
        for rule in &rules {
            assert!(!rule.verbs.iter().any(|v| v.contains('*')) && !rule.resource.contains('*') && rule.group != "*");
        }
        let crds = rules.iter().find(|r| r.resource == "customresourcedefinitions").unwrap();
        assert_eq!(crds.names, ["appoperators.tools.wasmop.dev"]);
    }

    /// An operator in namespace `ops` confined to namespace `a`, without webhook or WasmPlugins.
    fn confined_to_a() -> Identity {
        Identity {
            namespace: "ops".into(),
            service_account: "wasmop".into(),
            watched: vec!["a".into()],
            webhook_secret: false,
            wasmplugins: false,
        }
    }

    #[test]
    fn crds_only_with_install_crds_and_namespaced_roles_with_namespaces() {
        assert!(!host_rules(&[meta()], false, true).iter().any(|r| r.resource == "customresourcedefinitions"));
        let identity = confined_to_a();
        let docs = manifests(&merge(plugin_rules(&meta())), &identity);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Role", "RoleBinding", "Role", "RoleBinding"]);
        assert_eq!(docs[0]["metadata"]["namespace"], "a");
        assert_eq!(docs[2]["metadata"]["namespace"], "ops");
        assert_eq!(docs[2]["rules"][0]["resources"][0], "leases");
    }

    #[test]
    fn reads_are_get_list_watch_in_their_scope() {
        let mut meta = meta();
        meta.reads = vec![
            crate::plugin::ReadKind::same_namespace(Gvk::new("", "v1", "Secret")),
            crate::plugin::ReadKind::cluster(Gvk::new("", "v1", "Namespace")),
        ];
        let rules = merge(plugin_rules(&meta));
        let secrets = rules.iter().find(|r| r.resource == "secrets").unwrap();
        assert_eq!(
            (secrets.verbs.clone(), secrets.cluster_wide),
            (vec!["get".into(), "list".into(), "watch".into()], false)
        );
        assert!(rules.iter().any(|r| r.resource == "namespaces" && r.cluster_wide));
        let identity = confined_to_a();
        let docs = manifests(&rules, &identity);
        let role = docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "a").unwrap();
        assert!(role["rules"].as_array().unwrap().iter().all(|r| r["resources"][0] != "namespaces"), "{role}");
        let reads = docs.iter().find(|d| d["metadata"]["name"] == "wasmop-cluster-reads").unwrap();
        assert_eq!(reads["kind"], "ClusterRole");
        assert_eq!(reads["rules"][0]["resources"][0], "namespaces");
    }

    #[test]
    fn the_cluster_source_reads_wasmplugins_cluster_wide_and_secrets_only_at_home() {
        let identity = Identity {
            namespace: "ops".into(),
            service_account: "wasmop".into(),
            watched: vec!["a".into()],
            webhook_secret: true,
            wasmplugins: true,
        };
        let docs = manifests(&merge(plugin_rules(&meta())), &identity);
        let cluster = docs.iter().find(|d| d["metadata"]["name"] == "wasmop-wasmplugins" && d["kind"] == "ClusterRole");
        let cluster = cluster.expect("a ClusterRole for the cluster-scoped WasmPlugins");
        assert_eq!(cluster["rules"][0]["resources"][0], "wasmplugins");
        assert_eq!(cluster["rules"][1]["resources"][0], "wasmplugins/status");
        assert_eq!(cluster["rules"][1]["verbs"], json!(["patch"]));
        let own =
            docs.iter().find(|d| d["metadata"]["name"] == "wasmop-leader-election" && d["kind"] == "Role").unwrap();
        assert_eq!(own["metadata"]["namespace"], "ops");
        let secrets: Vec<&Value> =
            own["rules"].as_array().unwrap().iter().filter(|r| r["resources"][0] == "secrets").collect();
        assert!(secrets.iter().all(|r| !r["verbs"].as_array().unwrap().contains(&json!("list"))), "{secrets:?}");
        let namespaced: Vec<&Value> =
            docs.iter().filter(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "a").collect();
        assert!(namespaced.iter().all(|r| !r["rules"].to_string().contains("wasmplugins")));
    }
}
