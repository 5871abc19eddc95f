//! Get/list/create/replace/delete, errors, resourceVersion and generation rules, status
//! subresource, selectors and pagination, discovery.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::discovery::{Discovery, Scope};
use serde_json::json;

use crate::common::{client, server, status};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}
        }
    }))
    .expect("valid deployment")
}

#[tokio::test]
async fn create_get_replace_delete_configmap() {
    let server = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let created = api.create(&PostParams::default(), &cm("one", &[])).await.unwrap();
    let md = &created.metadata;
    assert!(md.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(md.creation_timestamp.is_some());
    assert_eq!(md.namespace.as_deref(), Some("default"));
    let rv1: u64 = md.resource_version.as_deref().unwrap().parse().unwrap();

    let err = status(api.create(&PostParams::default(), &cm("one", &[])).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, "configmaps \"one\" already exists");

    let mut got = api.get("one").await.unwrap();
    got.data = Some(BTreeMap::from([("k".to_string(), "w".to_string())]));
    let replaced = api.replace("one", &PostParams::default(), &got).await.unwrap();
    let rv2: u64 = replaced.metadata.resource_version.as_deref().unwrap().parse().unwrap();
    assert!(rv2 > rv1);
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    // Stale resourceVersion: 409 Conflict.
    let err = status(api.replace("one", &PostParams::default(), &got).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"), "{}", err.message);

    api.delete("one", &DeleteParams::default()).await.unwrap();
    let err = status(api.get("one").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"one\" not found");
    server.shutdown().await;
}

#[tokio::test]
async fn generate_name_namespace_checks_and_cluster_scope() {
    let server = server().await;
    let c = client(&server);
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut generated = cm("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &generated).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let missing: Api<ConfigMap> = Api::namespaced(c.clone(), "nope");
    let err = status(missing.create(&PostParams::default(), &cm("x", &[])).await.unwrap_err());
    assert_eq!(err.code, 404);
    assert_eq!(err.message, "namespaces \"nope\" not found");

    let bad = status(api.create(&PostParams::default(), &cm("Bad_Name", &[])).await.unwrap_err());
    assert_eq!((bad.code, bad.reason.as_str()), (422, "Invalid"));

    let roles: Api<ClusterRole> = Api::all(c.clone());
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "reader"}, "rules": []})).unwrap();
    let r = roles.create(&PostParams::default(), &role).await.unwrap();
    assert!(r.metadata.namespace.is_none());
    assert!(roles.get("reader").await.is_ok());

    let nss: Api<Namespace> = Api::all(c);
    let names: Vec<String> =
        nss.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn generation_and_status_subresource() {
    let server = server().await;
    let api: Api<Deployment> = Api::namespaced(client(&server), "default");
    let d = api.create(&PostParams::default(), &deployment("web", 1)).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert!(d.status.is_none());

    // Status through the status subresource: generation unchanged, spec untouched.
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}, "spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(st.metadata.generation, Some(1));
    assert_eq!(st.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(1));

    // Status on the main resource is ignored; metadata changes don't bump generation.
    let p = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}, "status": {"readyReplicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(1));
    assert_eq!(p.status.as_ref().unwrap().ready_replicas, Some(1));

    // A spec change bumps generation.
    let p = api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(p.metadata.generation, Some(2));

    // A no-op write keeps the resourceVersion.
    let again =
        api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(again.metadata.resource_version, p.metadata.resource_version);
    server.shutdown().await;
}

#[tokio::test]
async fn label_field_selectors_and_pagination() {
    let server = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    for i in 0..7 {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        api.create(&PostParams::default(), &cm(&format!("cm-{i}"), &[("tier", tier), ("app", "x")])).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().filter_map(|c| c.metadata.name).collect()
    };
    assert_eq!(names(api.list(&ListParams::default().labels("tier=front")).await.unwrap()).len(), 4);
    assert_eq!(names(api.list(&ListParams::default().labels("tier in (back),app")).await.unwrap()).len(), 3);
    assert_eq!(names(api.list(&ListParams::default().labels("!app")).await.unwrap()).len(), 0);
    assert_eq!(names(api.list(&ListParams::default().fields("metadata.name=cm-3")).await.unwrap()), vec!["cm-3"]);
    let err = status(api.list(&ListParams::default().fields("data.k=v")).await.unwrap_err());
    assert_eq!(err.code, 400);

    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().unwrap();
    // Writes between pages don't change the list's resourceVersion.
    api.create(&PostParams::default(), &cm("zz", &[])).await.unwrap();
    let second = api.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let third = api
        .list(&ListParams::default().limit(3).continue_token(second.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    let mut all = names(first);
    all.extend(names(second));
    all.extend(names(third));
    assert_eq!(all.len(), 8);
    all.dedup();
    assert_eq!(all.len(), 8);
    server.shutdown().await;
}

#[tokio::test]
async fn discovery_lists_builtin_groups_and_scopes() {
    let server = server().await;
    let discovery = Discovery::new(client(&server)).run().await.unwrap();
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push((ar.kind.clone(), caps.scope == Scope::Namespaced));
        }
    }
    for (kind, namespaced) in [
        ("Deployment", true),
        ("ConfigMap", true),
        ("Namespace", false),
        ("ClusterRoleBinding", false),
        ("Lease", true),
        ("CustomResourceDefinition", false),
        ("CronJob", true),
    ] {
        assert!(found.contains(&(kind.to_string(), namespaced)), "{kind} missing from {found:?}");
    }
    // Aggregated discovery (one request per root) describes the same resources.
    let aggregated = Discovery::new(client(&server)).run_aggregated().await.unwrap();
    let mut agg = Vec::new();
    for group in aggregated.groups() {
        for (ar, caps) in group.recommended_resources() {
            agg.push((ar.kind.clone(), caps.scope == Scope::Namespaced));
        }
    }
    found.sort();
    agg.sort();
    assert_eq!(found, agg);
    let version = client(&server).apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_resources_are_404() {
    let server = server().await;
    let c = client(&server);
    let req = http::Request::get("/apis/nope.example.com/v1/things").body(vec![]).unwrap();
    let err = c.request::<serde_json::Value>(req).await.unwrap_err();
    assert_eq!(status(err).code, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_only_and_table_representations() {
    let server = server().await;
    let c = client(&server);
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    api.create(&PostParams::default(), &cm("meta", &[("a", "b")])).await.unwrap();
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.labels.as_ref().unwrap()["a"], "b");
    let one = api.get_metadata("meta").await.unwrap();
    assert_eq!(one.types.unwrap().kind, "PartialObjectMetadata");

    let req = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .body(vec![])
        .unwrap();
    let table: serde_json::Value = c.request(req).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(cols, vec!["Name", "Data", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], "meta");
    assert_eq!(table["rows"][0]["cells"][1], 1);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    server.shutdown().await;
}

#[tokio::test]
async fn built_in_objects_are_decoded_and_defaulted_like_the_real_server() {
    let server = server().await;
    let c = client(&server);
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d = api.create(&PostParams::default(), &deployment("defaults", 2)).await.unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));

    // Undeclared fields are dropped; with fieldValidation=Strict they are refused.
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(c.clone(), "default", &kube::api::ApiResource::erase::<ConfigMap>(&()));
    let with_junk: kube::api::DynamicObject =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "junk"}, "data": {"a": "b"}, "spec": {"x": 1}})).unwrap();
    let made = raw.create(&PostParams::default(), &with_junk).await.unwrap();
    assert!(made.data.get("spec").is_none());
    // Patches accept fieldValidation (kube's PostParams don't carry it).
    let err = status(
        raw.patch("junk", &PatchParams::default().validation_strict(), &Patch::Merge(json!({"spec": {"x": 1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(err.message.contains("unknown field \"spec\""), "{}", err.message);
    server.shutdown().await;
}

#[tokio::test]
async fn scale_subresource() {
    let server = server().await;
    let api: Api<Deployment> = Api::namespaced(client(&server), "default");
    api.create(&PostParams::default(), &deployment("sc", 2)).await.unwrap();
    let scale = api.get_scale("sc").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=sc"));
    let scaled =
        api.patch_scale("sc", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(5));
    let d = api.get("sc").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(5));
    assert_eq!(d.metadata.generation, Some(2));
    let err = status(
        api.patch_scale("sc", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": -1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_built_in_objects_are_422() {
    let server = server().await;
    let api: Api<Deployment> = Api::namespaced(client(&server), "default");
    let mut d = deployment("mismatch", 1);
    d.spec.as_mut().unwrap().selector.match_labels = Some(BTreeMap::from([("app".to_string(), "other".to_string())]));
    let err = status(api.create(&PostParams::default(), &d).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let causes = err.details.unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, "spec.template.metadata.labels");
    assert!(causes[0].message.contains("`selector` does not match template `labels`"));
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let err = status(cms.create(&PostParams::default(), &cm("bad-label", &[("app", "not valid")])).await.unwrap_err());
    assert_eq!(err.code, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn access_reviews_are_answered_not_stored() {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let server = server().await;
    let api: Api<SelfSubjectAccessReview> = Api::all(client(&server));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"verb": "create", "group": "apps", "resource": "deployments", "namespace": "default"}}
    }))
    .unwrap();
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    assert!(answer.status.unwrap().allowed);
    assert_eq!(answer.spec.resource_attributes.unwrap().resource.as_deref(), Some("deployments"));
    let err = status(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 405);
    server.shutdown().await;
}
