//! The CRDs plugins ship: installing one (and migrating objects stored in an older version),
//! and pointing one installed by someone else at the host's conversion webhook.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use serde_json::{Value, json};

use crate::apply::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};
use crate::plugin::{OperatorPlugin, sha256_hex};
use crate::webhook::Conversion;

/// How long `--install-crds` waits for a CRD to become Established.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A plugin's CRD could not be installed or updated.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD could not be installed.
    #[error("cannot install the CRD of plugin {plugin}: {reason}")]
    Install {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// Server-side applies the plugin's CRD (if it ships one) and waits until it is Established.
/// When the plugin converts between versions, `conversion` (the host's webhook) becomes the
/// CRD's conversion; without a webhook such a CRD is installed with conversion `None` and a
/// warning. Then objects stored in an older version are migrated in the background.
pub async fn install(
    client: &Client,
    plugin: &OperatorPlugin,
    conversion: Option<&Conversion>,
) -> Result<(), CrdError> {
    let name = plugin.metadata().name.clone();
    let Some(crd) = &plugin.metadata().crd else { return Ok(()) };
    let bad = |reason: String| CrdError::Install { plugin: name.clone(), reason };
    let mut crd = crd.clone();
    match conversion {
        Some(conversion) if plugin.converts() => crd["spec"]["conversion"] = conversion.crd_conversion(),
        None if plugin.converts() => tracing::warn!(plugin = %name,
            "the plugin converts between versions but this wasmop serves no conversion webhook; \
             its CRD gets conversion None (only apiVersion changes between versions)"),
        _ => {}
    }
    let hash = sha256_hex(crd.to_string().as_bytes());
    crd["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = json!(hash);
    let crd_name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let live = api.get_opt(&crd_name).await.map_err(|e| bad(e.to_string()))?;
    let live = live.map(|l| serde_json::to_value(l).unwrap_or_default());
    if live.as_ref().is_some_and(|live| covers(live, &crd)) {
        // Unchanged: writing it anyway would make the API server rebuild the kind's storage and
        // close every watch of it.
        tracing::debug!(plugin = %name, crd = %crd_name, "CRD unchanged; not written");
    } else {
        if let Some(live) = &live {
            clear_other_member(&api, &crd_name, live, &crd).await.map_err(|e| bad(e.to_string()))?;
        }
        let typed: CustomResourceDefinition = serde_json::from_value(crd).map_err(|e| bad(e.to_string()))?;
        api.patch(&crd_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&typed))
            .await
            .map_err(|e| bad(e.to_string()))?;
    }
    established(api.clone(), &crd_name).await.map_err(bad)?;
    tracing::info!(plugin = %name, crd = %crd_name, "CRD installed");
    // Read again, from etcd: the watch `established` used may serve the CRD from before the
    // update (the API server's watch cache lags a write), which would hide the new storage
    // version and skip the migration.
    let installed = api.get(&crd_name).await.map_err(|e| bad(e.to_string()))?;
    if needs_migration(&installed) {
        tokio::spawn(crate::migrate::migrate_in_background(client.clone(), crd_name));
    }
    Ok(())
}

/// Server-side applies the `WasmPlugin` CRD and waits until it is Established (`wasmop run
/// --install-crds` with the cluster plugin source).
pub async fn install_wasmplugin(client: &Client) -> Result<(), CrdError> {
    let crd = crate::wasmplugin::crd();
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let bad = |reason: String| CrdError::Install { plugin: "WasmPlugin".into(), reason };
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(&crd_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
        .await
        .map_err(|e| bad(e.to_string()))?;
    established(api, &crd_name).await.map_err(bad)?;
    Ok(())
}

/// Waits (bounded) until CRD `name` is Established; returns it as last seen.
async fn established(
    api: Api<CustomResourceDefinition>,
    name: &str,
) -> Result<Option<CustomResourceDefinition>, String> {
    let established = await_condition(api, name, conditions::is_crd_established());
    tokio::time::timeout(CRD_ESTABLISH_TIMEOUT, established)
        .await
        .map_err(|_| format!("{name} was not Established within {CRD_ESTABLISH_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

/// Points the CRD of a converting plugin, installed by someone else (`make install`), at the
/// host's webhook with its CA bundle: a merge patch of `spec.conversion` only.
pub async fn inject_conversion(
    client: &Client,
    plugin: &OperatorPlugin,
    conversion: &Conversion,
) -> Result<(), CrdError> {
    let name = plugin.metadata().name.clone();
    let crd_name = plugin.metadata().crd.as_ref().and_then(|c| c["metadata"]["name"].as_str()).map(str::to_string);
    let Some(crd_name) = crd_name.filter(|_| plugin.converts()) else { return Ok(()) };
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let patch = json!({ "spec": { "conversion": clearing_the_other(conversion.crd_conversion()) } });
    api.patch(&crd_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| CrdError::Install {
        plugin: name.clone(),
        reason: format!("cannot point {crd_name} at the conversion webhook: {e}"),
    })?;
    tracing::info!(plugin = %name, crd = %crd_name, "conversion webhook CA bundle injected");
    Ok(())
}

/// Before `desired` is applied over `live`: when `live`'s conversion webhook is reached through
/// the other member of the `url` / `service` union (a CRD installed by `deploy/` and a wasmop
/// running outside the cluster, or the reverse), one merge patch sets `desired`'s member and
/// clears the other. Server-side apply cannot: it keeps the member another manager set, and
/// the API server refuses a clientConfig with both (422 "exactly one of url or service").
async fn clear_other_member(
    api: &Api<CustomResourceDefinition>,
    crd_name: &str,
    live: &Value,
    desired: &Value,
) -> Result<(), kube::Error> {
    let config = |crd: &Value| crd.pointer("/spec/conversion/webhook/clientConfig").cloned().unwrap_or_default();
    let (live_config, desired_config) = (config(live), config(desired));
    let member = |c: &Value| ["url", "service"].into_iter().find(|m| !c[*m].is_null());
    match (member(&live_config), member(&desired_config)) {
        (Some(had), Some(wants)) if had != wants => {
            let patch = json!({ "spec": { "conversion": clearing_the_other(desired["spec"]["conversion"].clone()) } });
            api.patch(crd_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            tracing::info!(crd = %crd_name, from = had, to = wants, "conversion webhook address switched");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `spec.conversion` as a merge patch that also clears the member of the `url` / `service`
/// union it does not set.
fn clearing_the_other(mut conversion: Value) -> Value {
    if let Some(config) = conversion.pointer_mut("/webhook/clientConfig") {
        crate::webhook::clear_the_other_member(config);
    }
    conversion
}

/// Whether `live` already holds everything `desired` says (fields the server defaults aside),
/// including the hash annotation of this exact desired CRD (so a field removed from the
/// plugin's CRD is removed by the next install).
fn covers(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, v)| l.get(k).map_or(v.is_null(), |lv| covers(lv, v))),
        (Value::Array(l), Value::Array(d)) => l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| covers(lv, dv)),
        _ => live == desired,
    }
}

/// Whether objects may be stored in a version other than the storage version.
fn needs_migration(crd: &CustomResourceDefinition) -> bool {
    let storage = crd.spec.versions.iter().find(|v| v.storage).map(|v| v.name.as_str());
    let stored = crd.status.as_ref().and_then(|s| s.stored_versions.as_deref()).unwrap_or_default();
    stored.iter().any(|v| Some(v.as_str()) != storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_crd_with_server_defaults_covers_what_was_applied() {
        let desired = json!({"spec": {"names": {"kind": "A"}, "versions": [{"name": "v1", "served": true}]}});
        let live = json!({"spec": {"names": {"kind": "A", "listKind": "AList"},
            "versions": [{"name": "v1", "served": true, "deprecated": false}]}, "status": {}});
        assert!(covers(&live, &desired));
        let changed = json!({"spec": {"names": {"kind": "A"}, "versions": [{"name": "v1", "served": false}]}});
        assert!(!covers(&live, &changed));
        let more = json!({"spec": {"versions": [{"name": "v1"}, {"name": "v2"}]}});
        assert!(!covers(&live, &more));
    }

    #[test]
    fn setting_one_member_of_the_client_config_union_clears_the_other() {
        let url = json!({"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://x/convert", "caBundle": "Q0E="}}});
        assert_eq!(
            clearing_the_other(url)["webhook"]["clientConfig"],
            json!({"url": "https://x/convert", "service": null, "caBundle": "Q0E="})
        );
        let service = json!({"webhook": {"clientConfig": {"service": {"name": "w", "namespace": "n"}}}});
        assert_eq!(clearing_the_other(service)["webhook"]["clientConfig"]["url"], Value::Null);
        assert!(clearing_the_other(json!({"strategy": "None"})).get("webhook").is_none());
    }
}
