//! Storage version migration: rewrites every stored object of a custom resource in the CRD's
//! storage version, then trims the CRD's `status.storedVersions` to it, so that an old version
//! can later be dropped from the CRD. Idempotent; what kube-storage-version-migrator does.
//!
//! An update of an object stores it in the current storage version; the API server skips
//! writing only when the stored bytes would be identical, which they are not while the object
//! is stored in another version. A conflict means someone else wrote the object meanwhile —
//! in the storage version — so it counts as migrated.

use futures::TryStreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// The CRD.
    pub crd: String,
    /// Its storage version.
    pub storage_version: String,
    /// Objects rewritten.
    pub rewritten: usize,
    /// `status.storedVersions` before.
    pub stored_before: Vec<String>,
    /// `status.storedVersions` after.
    pub stored_after: Vec<String>,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// No CRD defines the kind.
    #[error("no CustomResourceDefinition defines kind {0}; name it as Kind, plural or plural.group")]
    UnknownKind(String),
    /// The CRD has no storage version.
    #[error("CRD {0} marks no version as its storage version")]
    NoStorageVersion(String),
    /// An API call failed.
    #[error("migrating {crd}: {step} failed: {source}")]
    Api {
        /// The CRD.
        crd: String,
        /// What was being done.
        step: &'static str,
        /// The API error.
        source: kube::Error,
    },
}

/// Finds the CRD of `kind` (a Kind, plural or `plural.group`) among the cluster's CRDs.
pub async fn find_crd(client: &Client, kind: &str) -> Result<CustomResourceDefinition, MigrateError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = api.list(&ListParams::default()).await.map_err(|source| MigrateError::Api {
        crd: kind.into(),
        step: "listing CRDs",
        source,
    })?;
    crds.items
        .into_iter()
        .find(|crd| {
            let names = &crd.spec.names;
            crd.name_any() == kind || names.kind == kind || names.plural == kind
        })
        .ok_or_else(|| MigrateError::UnknownKind(kind.into()))
}

/// How many times [`migrate_in_background`] tries before it gives up and says to run
/// `wasmop migrate` (about eight minutes with the reconcile backoff between attempts).
const BACKGROUND_ATTEMPTS: u32 = 10;

/// Migrates CRD `name` after the host changed it, retrying with backoff: right after a CRD
/// update the API server may not serve the new storage version yet (a 404 on the list), nor
/// reach the conversion webhook with the new CA. The CRD is read again on each attempt, so a
/// retry uses what is installed then.
pub async fn migrate_in_background(client: Client, name: String) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for attempt in 1..=BACKGROUND_ATTEMPTS {
        let outcome = match api.get(&name).await {
            Ok(crd) => migrate(&client, &crd).await.map(drop),
            Err(source) => Err(MigrateError::Api { crd: name.clone(), step: "reading the CRD", source }),
        };
        match outcome {
            Ok(()) => return,
            Err(e) if attempt < BACKGROUND_ATTEMPTS => {
                tracing::warn!(crd = %name, attempt, error = %e, "storage version migration failed; retrying");
                tokio::time::sleep(crate::reconcile::backoff(attempt)).await;
            }
            Err(e) => tracing::error!(crd = %name, error = %e,
                "storage version migration failed; run `wasmop migrate --kind {name}`"),
        }
    }
}

/// Migrates every object of `crd` to its storage version and trims `status.storedVersions`.
pub async fn migrate(client: &Client, crd: &CustomResourceDefinition) -> Result<Migration, MigrateError> {
    let name = crd.name_any();
    let err = |step| {
        let crd = name.clone();
        move |source| MigrateError::Api { crd, step, source }
    };
    let storage = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone())
        .ok_or_else(|| MigrateError::NoStorageVersion(name.clone()))?;
    let stored_before = crd.status.as_ref().and_then(|s| s.stored_versions.clone()).unwrap_or_default();
    let resource = ApiResource {
        group: crd.spec.group.clone(),
        version: storage.clone(),
        api_version: format!("{}/{storage}", crd.spec.group),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    };
    let mut migration =
        Migration { crd: name.clone(), storage_version: storage.clone(), stored_before, ..Migration::default() };
    if migration.stored_before != [storage.clone()] {
        migration.rewritten = rewrite_all(client, &resource).await.map_err(err("rewriting objects"))?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let patch = json!({ "status": { "storedVersions": [storage] } });
        crds.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("trimming status.storedVersions"))?;
    }
    migration.stored_after = vec![storage];
    tracing::info!(crd = %name, rewritten = migration.rewritten, before = ?migration.stored_before,
        "storage version migration done");
    Ok(migration)
}

/// Rewrites each object of `resource` (all namespaces), page by page; returns how many.
async fn rewrite_all(client: &Client, resource: &ApiResource) -> Result<usize, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let pages = crate::paging::pages(ListParams::default(), |params| {
        let api = &api;
        async move { api.list(&params).await }
    });
    futures::pin_mut!(pages);
    let mut rewritten = 0;
    while let Some(page) = pages.try_next().await? {
        for obj in &page {
            if rewrite(client, resource, obj).await? {
                rewritten += 1;
            }
        }
    }
    Ok(rewritten)
}

/// Writes `obj` back unchanged; false when it changed or went away meanwhile.
async fn rewrite(client: &Client, resource: &ApiResource, obj: &DynamicObject) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = match obj.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    match api.replace(&obj.name_any(), &PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
