//! An operator written with kube-runtime, end to end: a CRD, a Controller owning Deployments,
//! the finalizer helper, server-side apply of children, status from the Deployment simulator,
//! an idle resync without writes, and cascading deletion.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wasmop_apiserver::Config;

use crate::common::{client, eventually, server_with};

/// A tiny app.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(group = "demo.wasmop.dev", version = "v1", kind = "Site", namespaced, status = "SiteStatus")]
pub struct SiteSpec {
    /// Image.
    pub image: String,
    /// Replicas.
    pub replicas: i32,
}

/// Status.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct SiteStatus {
    /// Whether the Deployment is available.
    pub ready: bool,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<kube::Error>>),
}

struct Ctx {
    client: kube::Client,
}

async fn apply(site: Arc<Site>, ctx: &Ctx) -> Result<Action, kube::Error> {
    let ns = site.namespace().unwrap_or_default();
    let name = site.name_any();
    let owner = site.controller_owner_ref(&()).expect("site has a uid");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {"replicas": site.spec.replicas, "selector": {"matchLabels": {"site": name}},
                 "template": {"metadata": {"labels": {"site": name}},
                              "spec": {"containers": [{"name": "web", "image": site.spec.image}]}}}
    });
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let d = deployments.patch(&name, &PatchParams::apply("site-operator").force(), &Patch::Apply(deployment)).await?;
    let ready = d.status.as_ref().is_some_and(|s| {
        s.available_replicas == Some(site.spec.replicas) && s.observed_generation == d.metadata.generation
    });
    if site.status.as_ref().map(|s| s.ready) != Some(ready) {
        let sites: Api<Site> = Api::namespaced(ctx.client.clone(), &ns);
        let status = json!({"apiVersion": "demo.wasmop.dev/v1", "kind": "Site", "status": {"ready": ready}});
        sites.patch_status(&name, &PatchParams::apply("site-operator").force(), &Patch::Apply(status)).await?;
    }
    Ok(Action::await_change())
}

async fn reconcile(site: Arc<Site>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let sites: Api<Site> = Api::namespaced(ctx.client.clone(), &site.namespace().unwrap_or_default());
    finalizer(&sites, "demo.wasmop.dev/cleanup", site, |event| async {
        match event {
            Finalizer::Apply(s) => apply(s, &ctx).await,
            Finalizer::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(_: Arc<Site>, _: &Error, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn operator_end_to_end() {
    let server = server_with(Config {
        simulate_deployments: true,
        simulate_delay: Duration::from_millis(100),
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let c = client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&PostParams::default(), &Site::crd()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(crds, "sites.demo.wasmop.dev", conditions::is_crd_established()),
    )
    .await
    .unwrap()
    .unwrap();
    let sites: Api<Site> = Api::namespaced(c.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let controller = Controller::new(Api::<Site>::all(c.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(c.clone()), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(Ctx { client: c.clone() }))
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    sites
        .create(&PostParams::default(), &Site::new("blog", SiteSpec { image: "nginx:1".into(), replicas: 2 }))
        .await
        .unwrap();
    // The Deployment is created, the simulator makes it available, the operator reports ready.
    eventually(10, "site ready", || async {
        sites.get("blog").await.ok().and_then(|s| s.status).filter(|s| s.ready).map(|_| ())
    })
    .await;
    let d = deployments.get("blog").await.unwrap();
    assert_eq!(d.owner_references()[0].name, "blog");

    // Idle: no more writes once everything has settled.
    eventually(10, "writes settle", || async {
        let before = server.stats();
        tokio::time::sleep(Duration::from_millis(500)).await;
        (server.stats().since(&before).writes("*") == 0).then_some(())
    })
    .await;

    // A spec change flows through: generation 2 observed, ready again.
    sites.patch("blog", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    eventually(10, "scaled deployment available", || async {
        let d = deployments.get("blog").await.ok()?;
        (d.status?.available_replicas == Some(3)).then_some(())
    })
    .await;

    // Deleting the site runs the finalizer, then the Deployment is garbage collected.
    sites.delete("blog", &DeleteParams::default()).await.unwrap();
    eventually(10, "site gone", || async { sites.get_opt("blog").await.ok()?.is_none().then_some(()) }).await;
    eventually(10, "deployment collected", || async {
        deployments.get_opt("blog").await.ok()?.is_none().then_some(())
    })
    .await;
    task.abort();
    server.shutdown().await;
}
