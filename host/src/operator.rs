//! The plugins of a directory and their CRDs. Controllers are started by the supervisor
//! ([`crate::reload::Supervisor`]), the one start path of `wasmop run`, `wasmop dev` and the tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::apply::FIELD_MANAGER;
use crate::plugin::{LoadedPlugin, OperatorPlugin, PluginError, PolicyPlugin, Runtime};
use crate::webhook::Conversion;

/// How long `--install-crds` waits for a CRD to become Established.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The plugins found in a directory.
#[derive(Default)]
pub struct PluginSet {
    /// Operator plugins, in file-name order.
    pub operators: Vec<OperatorPlugin>,
    /// Policy plugins, in file-name order (the order they review in).
    pub policies: Vec<PolicyPlugin>,
    /// Files that could not be loaded, with why. They are reported, never fatal.
    pub failures: Vec<(PathBuf, PluginError)>,
}

/// Failure of the operator as a whole.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The plugins directory cannot be read.
    #[error("cannot read plugins directory {path}: {source}")]
    PluginsDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CRD could not be installed.
    #[error("cannot install the CRD of plugin {plugin}: {reason}")]
    InstallCrd {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// Loads every `*.wasm` in `dir` (sorted by name). A file that fails to load is logged and
/// listed in [`PluginSet::failures`]; the others still load.
pub fn load_dir(rt: &Runtime, dir: &Path) -> Result<PluginSet, OperatorError> {
    let files = plugin_files(dir).map_err(|source| OperatorError::PluginsDir { path: dir.to_path_buf(), source })?;
    let mut set = PluginSet::default();
    for path in files {
        match rt.load(&path) {
            Ok(LoadedPlugin::Operator(p)) => {
                tracing::info!(plugin = %p.metadata().name, file = %path.display(), revision = p.file().revision(), "loaded operator plugin");
                set.operators.push(p);
            }
            Ok(LoadedPlugin::Policy(p)) => {
                tracing::info!(policy = %p.metadata().name, file = %path.display(), "loaded policy plugin");
                set.policies.push(p);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "plugin not loaded");
                set.failures.push((path, e));
            }
        }
    }
    Ok(set)
}

/// Server-side applies the plugin's CRD (if it ships one) and waits until it is Established.
/// When the plugin converts between versions, `conversion` (the host's webhook) becomes the
/// CRD's conversion; without a webhook such a CRD is installed with conversion `None` and a
/// warning. Then objects stored in an older version are migrated in the background.
pub async fn install_crd(
    client: &Client,
    plugin: &OperatorPlugin,
    conversion: Option<&Conversion>,
) -> Result<(), OperatorError> {
    let name = plugin.metadata().name.clone();
    let Some(crd) = &plugin.metadata().crd else { return Ok(()) };
    let bad = |reason: String| OperatorError::InstallCrd { plugin: name.clone(), reason };
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
) -> Result<(), OperatorError> {
    let name = plugin.metadata().name.clone();
    let crd_name = plugin.metadata().crd.as_ref().and_then(|c| c["metadata"]["name"].as_str()).map(str::to_string);
    let Some(crd_name) = crd_name.filter(|_| plugin.converts()) else { return Ok(()) };
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "conversion": conversion.crd_conversion() } });
    api.patch(&crd_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| {
        OperatorError::InstallCrd {
            plugin: name.clone(),
            reason: format!("cannot point {crd_name} at the conversion webhook: {e}"),
        }
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

/// The `*.wasm` files of `dir` (symlinks followed), sorted by name: the one scanner of the
/// plugins directory.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}
