//! Patches (merge, JSON, strategic), server-side apply, finalizers and garbage collection.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::common::{client, server, status};

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn json_merge_and_strategic_patches() {
    let server = server().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(&PostParams::default(), &cm("p")).await.unwrap();
    // A `test` of a missing path compares equal to null.
    let patch: json_patch_ops::Ops = json_patch_ops::ops(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]));
    let p = cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(patch.0)).await.unwrap();
    assert_eq!(p.finalizers(), ["x/y"]);
    let failing = json_patch_ops::ops(json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]));
    let err = status(cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing.0)).await.unwrap_err());
    assert_eq!(err.code, 422);

    let merged = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}, "data": {"k": null, "n": "1"}})),
        )
        .await
        .unwrap();
    assert!(merged.finalizers().is_empty());
    assert_eq!(merged.data.unwrap(), BTreeMap::from([("n".to_string(), "1".to_string())]));

    let deps: Api<Deployment> = Api::namespaced(c, "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "b:1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    deps.patch(
        "d",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}})),
    )
    .await
    .unwrap();
    // kubectl's client-side apply deletes a list item by its merge key alone.
    let s = deps
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a", "ports": [{"$patch": "delete", "containerPort": 80}, {"containerPort": 81}]}
            ]}}}})),
        )
        .await
        .unwrap();
    let ports: Vec<i32> = s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![81]);
    let containers = s.spec.unwrap().template.spec.unwrap().containers;
    let images: Vec<(String, Option<String>)> = containers.into_iter().map(|c| (c.name, c.image)).collect();
    assert_eq!(images, vec![("a".into(), Some("a:1".into())), ("b".into(), Some("b:2".into()))]);
    server.shutdown().await;
}

/// Tiny helper to build `json_patch::Patch` values without a direct dependency.
mod json_patch_ops {
    pub struct Ops(pub json_patch::Patch);
    pub fn ops(v: serde_json::Value) -> Ops {
        Ops(serde_json::from_value(v).expect("valid json patch"))
    }
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_force_and_removal() {
    let server = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let apply = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    // Create on apply.
    let a = cms
        .patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(apply(json!({"a": "1", "b": "1"}))))
        .await
        .unwrap();
    let mf = a.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(mf[0].fields_v1.as_ref().unwrap()).unwrap();
    assert_eq!(fields, json!({"f:data": {"f:a": {}, "f:b": {}}}));

    // Bob applying a different value for an owned field conflicts.
    let err = status(
        cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(apply(json!({"b": "2"})))).await.unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let causes = err.details.unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".data.b");
    assert!(causes[0].message.contains("alice"), "{}", causes[0].message);

    // Force takes ownership.
    let b =
        cms.patch("ssa", &PatchParams::apply("bob").force(), &Patch::Apply(apply(json!({"b": "2"})))).await.unwrap();
    assert_eq!(b.data.as_ref().unwrap()["b"], "2");
    let managers: Vec<String> = b.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert_eq!(managers, vec!["alice", "bob"]);

    // Alice stops applying `a`: nobody else owns it, so it is removed.
    let a2 = cms.patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(apply(json!({})))).await.unwrap();
    assert_eq!(a2.data.unwrap(), BTreeMap::from([("b".to_string(), "2".to_string())]));

    // An Update by another manager takes ownership of the fields it changed.
    let u = cms
        .patch(
            "ssa",
            &PatchParams { field_manager: Some("carol".into()), ..Default::default() },
            &Patch::Merge(json!({"data": {"b": "3"}})),
        )
        .await
        .unwrap();
    let carol = u.metadata.managed_fields.unwrap().into_iter().find(|m| m.manager.as_deref() == Some("carol")).unwrap();
    assert_eq!(carol.operation.as_deref(), Some("Update"));
    let err = status(
        cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(apply(json!({"b": "2"})))).await.unwrap_err(),
    );
    assert!(err.details.unwrap().causes[0].message.contains("carol"));
    server.shutdown().await;
}

#[tokio::test]
async fn apply_bodies_are_checked_like_the_real_server() {
    let server = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let err = status(
        cms.patch("x", &PatchParams::apply("m"), &Patch::Apply(json!({"metadata": {"name": "x"}}))).await.unwrap_err(),
    );
    assert_eq!(err.code, 400);
    let with_mf = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "managedFields": [{"manager": "m"}]}});
    let err = status(cms.patch("x", &PatchParams::apply("m"), &Patch::Apply(with_mf)).await.unwrap_err());
    assert_eq!(err.code, 400);
    server.shutdown().await;
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[tokio::test]
async fn kube_runtime_finalizer_helper_round_trip() {
    let server = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    cms.create(&PostParams::default(), &cm("f")).await.unwrap();
    let name = "example.com/cleanup";
    let obj = Arc::new(cms.get("f").await.unwrap());
    finalizer(&cms, name, obj, |_| async { Ok::<_, Never>(Action::await_change()) }).await.unwrap();
    let obj = cms.get("f").await.unwrap();
    assert_eq!(obj.finalizers(), [name]);
    let obj = Arc::new(obj);
    finalizer(&cms, name, obj, |ev| async move {
        assert!(matches!(ev, Finalizer::Apply(_)));
        Ok::<_, Never>(Action::await_change())
    })
    .await
    .unwrap();

    cms.delete("f", &DeleteParams::default()).await.unwrap();
    let deleting = cms.get("f").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    // No new finalizers once deleting.
    let err = status(
        cms.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": [name, "other/x"]}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    let cleaned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cleaned.clone();
    finalizer(&cms, name, Arc::new(deleting), |ev| async move {
        assert!(matches!(ev, Finalizer::Cleanup(_)));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, Never>(Action::await_change())
    })
    .await
    .unwrap();
    assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst));
    assert!(cms.get_opt("f").await.unwrap().is_none());
    server.shutdown().await;
}

fn child(name: &str, owner: &ConfigMap, block: bool, finalizers: &[&str]) -> Secret {
    let mut r = owner.controller_owner_ref(&()).unwrap();
    r.block_owner_deletion = Some(block);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![r]),
            finalizers: Some(finalizers.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn garbage_collection_background_foreground_orphan() {
    let server = server().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");

    // Background (default): the owner goes at once, then its dependents.
    let owner = cms.create(&PostParams::default(), &cm("bg")).await.unwrap();
    secrets.create(&PostParams::default(), &child("bg-1", &owner, false, &[])).await.unwrap();
    cms.delete("bg", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("bg").await.unwrap().is_none());
    assert!(secrets.get_opt("bg-1").await.unwrap().is_none());

    // Foreground: the owner waits for blocking dependents (held here by a finalizer).
    let owner = cms.create(&PostParams::default(), &cm("fg")).await.unwrap();
    secrets.create(&PostParams::default(), &child("fg-1", &owner, true, &["test/hold"])).await.unwrap();
    cms.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let waiting = cms.get("fg").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(waiting.finalizers().contains(&"foregroundDeletion".to_string()));
    let dep = secrets.get("fg-1").await.unwrap();
    assert!(dep.metadata.deletion_timestamp.is_some());
    secrets
        .patch("fg-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert!(secrets.get_opt("fg-1").await.unwrap().is_none());
    assert!(cms.get_opt("fg").await.unwrap().is_none());

    // Orphan: dependents stay, without the ownerReference.
    let owner = cms.create(&PostParams::default(), &cm("or")).await.unwrap();
    secrets.create(&PostParams::default(), &child("or-1", &owner, false, &[])).await.unwrap();
    cms.delete("or", &DeleteParams::orphan()).await.unwrap();
    assert!(cms.get_opt("or").await.unwrap().is_none());
    let orphan = secrets.get("or-1").await.unwrap();
    assert!(orphan.metadata.owner_references.unwrap_or_default().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_content() {
    let server = server().await;
    let c = client(&server);
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap();
    let made = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(made.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "tmp");
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    let terminating = nss.get("tmp").await.unwrap();
    assert_eq!(terminating.status.unwrap().phase.as_deref(), Some("Terminating"));
    let err = status(cms.create(&PostParams::default(), &cm("late")).await.unwrap_err());
    assert_eq!(err.code, 403);
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(nss.get_opt("tmp").await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_event_recorder_and_lease_concurrency() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};

    let server = server().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let obj = cms.create(&PostParams::default(), &cm("subject")).await.unwrap();
    let recorder = Recorder::new(c.clone(), Reporter::from("wasmop-test".to_string()));
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("all good".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    // The same event again becomes a series (a merge patch of the existing Event).
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "default");
    let list = events.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Reconciled"));
    assert_eq!(e.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("subject"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    // The same Event through core/v1, as `kubectl get events` and `describe` read it.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "default");
    let listed = core.list(&kube::api::ListParams::default().fields("involvedObject.name=subject")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].message.as_deref(), Some("all good"));
    assert_eq!(listed.items[0].involved_object.kind.as_deref(), Some("ConfigMap"));

    // Leases: optimistic concurrency as used by leader election.
    let leases: Api<Lease> = Api::namespaced(c, "default");
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
    )
    .unwrap();
    let l = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut mine = l.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases.replace("leader", &PostParams::default(), &mine).await.unwrap();
    let mut stale = l;
    stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = status(leases.replace("leader", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!(err.code, 409);
    server.shutdown().await;
}

#[tokio::test]
async fn objects_and_bodies_over_the_real_limits_are_refused() {
    let server = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let sized = |name: &str, bytes: usize| ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([("blob".to_string(), "x".repeat(bytes))])),
        ..Default::default()
    };
    // Over etcd's 1.5 MiB object limit, under the 3 MiB body limit.
    let err = status(cms.create(&PostParams::default(), &sized("big", 2 << 20)).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (413, "RequestEntityTooLarge"), "{err:?}");
    // Over the 3 MiB request body limit.
    let err = status(cms.create(&PostParams::default(), &sized("huge", 4 << 20)).await.unwrap_err());
    assert_eq!(err.code, 413, "{err:?}");
    assert!(cms.create(&PostParams::default(), &sized("fine", 1 << 20)).await.is_ok());
    server.shutdown().await;
}
