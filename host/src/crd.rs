//! The CRDs plugins ship: installing one (and migrating objects stored in an older version),
//! and pointing one installed by someone else at the host's conversion webhook.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::apply::FIELD_MANAGER;
use crate::plugin::OperatorPlugin;
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
    let crd: CustomResourceDefinition = serde_json::from_value(crd).map_err(|e| bad(e.to_string()))?;
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(&crd_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
        .await
        .map_err(|e| bad(e.to_string()))?;
    let established = await_condition(api, &crd_name, conditions::is_crd_established());
    let installed = tokio::time::timeout(CRD_ESTABLISH_TIMEOUT, established)
        .await
        .map_err(|_| bad(format!("{crd_name} was not Established within {CRD_ESTABLISH_TIMEOUT:?}")))?
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(plugin = %name, crd = %crd_name, "CRD installed");
    if let Some(installed) = installed.filter(needs_migration) {
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::migrate::migrate(&client, &installed).await {
                tracing::error!(crd = %crd_name, error = %e, "storage version migration failed; run `wasmop migrate`");
            }
        });
    }
    Ok(())
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
    let patch = serde_json::json!({ "spec": { "conversion": conversion.crd_conversion() } });
    api.patch(&crd_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| CrdError::Install {
        plugin: name.clone(),
        reason: format!("cannot point {crd_name} at the conversion webhook: {e}"),
    })?;
    tracing::info!(plugin = %name, crd = %crd_name, "conversion webhook CA bundle injected");
    Ok(())
}

/// Whether objects may be stored in a version other than the storage version.
fn needs_migration(crd: &CustomResourceDefinition) -> bool {
    let storage = crd.spec.versions.iter().find(|v| v.storage).map(|v| v.name.as_str());
    let stored = crd.status.as_ref().and_then(|s| s.stored_versions.as_deref()).unwrap_or_default();
    stored.iter().any(|v| Some(v.as_str()) != storage)
}
