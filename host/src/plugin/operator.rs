//! A loaded operator plugin: validated metadata and a reconcile call in a fresh sandbox.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use wasmtime::component::InstancePre;

use super::bindings::operator::OperatorPre;
use super::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use super::contract::{Desired, OperatorMetadata, ReconcileRequest, metadata_from_wit};
use super::error::PluginError;
use super::file::PluginFile;
use super::legacy;
use super::limits::Limits;
use super::output::{check_conversion, check_response};
use super::sandbox::{CallState, EpochTicker, Instantiate, call_in, instantiate_via_bindings};
use crate::names;
use crate::text::escape_controls;

/// A loaded operator plugin. Cheap to clone; every call gets a fresh instance, so concurrent
/// calls from many tasks are safe and share nothing.
#[derive(Clone)]
pub struct OperatorPlugin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OperatorPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorPlugin")
            .field("name", &self.inner.meta.name)
            .field("version", &self.inner.meta.version)
            .field("revision", &self.inner.file.revision())
            .finish()
    }
}

/// How to instantiate an operator of either contract version.
pub(crate) enum Pre {
    /// Contract 0.2, world `operator`: reconciler and converter.
    Current(OperatorPre<CallState>),
    /// Contract 0.2, world `single-version-operator`: reconciler only.
    SingleVersion(SingleVersionPre),
    /// Contract 0.1 (frozen): reconciler only.
    V01(legacy::bindings::operator::OperatorPre<CallState>),
}

instantiate_via_bindings!(
    OperatorPre<CallState> => super::bindings::operator::Operator,
    legacy::bindings::operator::OperatorPre<CallState> => legacy::bindings::operator::Operator,
);

/// A 0.2 operator exporting `reconciler` only: the `reconciler` export's own indices, so its
/// calls use the same bindings as the `operator` world's.
pub(crate) struct SingleVersionPre {
    pre: InstancePre<CallState>,
    indices: wit::GuestIndices,
}

/// An instance of a [`SingleVersionPre`].
pub(crate) struct SingleVersion(wit::Guest);

impl SingleVersion {
    fn wasmop_plugin_reconciler(&self) -> &wit::Guest {
        &self.0
    }
}

impl Instantiate for SingleVersionPre {
    type Instance = SingleVersion;
    fn engine(&self) -> &wasmtime::Engine {
        self.pre.engine()
    }
    fn instantiate(&self, store: &mut wasmtime::Store<CallState>) -> wasmtime::Result<SingleVersion> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(SingleVersion(self.indices.load(&mut *store, &instance)?))
    }
}

impl Pre {
    /// A contract 0.2 operator: with a converter if it exports one, else reconciler only.
    pub(crate) fn current(pre: InstancePre<CallState>) -> wasmtime::Result<Pre> {
        match OperatorPre::new(pre.clone()) {
            Ok(both) => Ok(Pre::Current(both)),
            Err(with_converter) => match wit::GuestIndices::new(&pre) {
                Ok(indices) => Ok(Pre::SingleVersion(SingleVersionPre { pre, indices })),
                // Not even the reconciler: the first error says what the operator world lacks.
                Err(_) => Err(with_converter),
            },
        }
    }

    fn metadata(&self, label: &Arc<str>, limits: &Limits) -> Result<wit::OperatorMetadata, PluginError> {
        match self {
            Pre::Current(pre) => call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)),
            Pre::SingleVersion(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s))
            }
            Pre::V01(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)).map(legacy::metadata)
            }
        }
    }

    fn reconcile(
        &self,
        label: &Arc<str>,
        limits: &Limits,
        req: &wit::Request,
    ) -> Result<Result<wit::Response, wit::Error>, PluginError> {
        match self {
            Pre::Current(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, req))
            }
            Pre::SingleVersion(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, req))
            }
            Pre::V01(pre) => {
                let old = legacy::request(req);
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, &old))
                    .map(legacy::answer)
            }
        }
    }

    /// `None` for a 0.1 plugin, which cannot convert.
    fn convert(
        &self,
        label: &Arc<str>,
        limits: &Limits,
        obj: String,
        to_version: &str,
    ) -> Option<Result<Result<String, String>, PluginError>> {
        let Pre::Current(pre) = self else { return None };
        let to_version = to_version.to_string();
        Some(call_in(pre, label, limits, |s, i| i.wasmop_plugin_converter().call_convert(s, &obj, &to_version)))
    }
}

struct Inner {
    pre: Pre,
    meta: OperatorMetadata,
    name: Arc<str>,
    limits: Limits,
    file: PluginFile,
    ticker: Arc<EpochTicker>,
}

impl OperatorPlugin {
    pub(crate) fn new(
        pre: Pre,
        ticker: Arc<EpochTicker>,
        limits: Limits,
        mut file: PluginFile,
        started: Instant,
    ) -> Result<Self, PluginError> {
        let label: Arc<str> = file.path.display().to_string().into();
        let raw = pre.metadata(&label, &limits)?;
        let meta = validate_metadata(raw, &label)?;
        let versions = meta.crd_versions();
        if matches!(pre, Pre::SingleVersion(_)) && versions.len() > 1 {
            let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
            return Err(PluginError::Incompatible {
                plugin: label.to_string(),
                reason: format!(
                    "its CRD defines versions {names:?} but it exports no converter \
                     (world single-version-operator); build it for world operator and export \
                     wasmop:plugin/converter, or define one version"
                ),
            });
        }
        file.load_time = started.elapsed();
        let name = meta.name.as_str().into();
        Ok(OperatorPlugin { inner: Arc::new(Inner { pre, meta, name, limits, file, ticker }) })
    }

    /// What the plugin says about itself (checked).
    pub fn metadata(&self) -> &OperatorMetadata {
        &self.inner.meta
    }

    /// Facts about the file it was loaded from.
    pub fn file(&self) -> &PluginFile {
        &self.inner.file
    }

    /// The limits applied to each call.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Computes the desired state of one parent, in a fresh sandbox, and checks the answer.
    pub fn reconcile(&self, req: &ReconcileRequest) -> Result<Desired, PluginError> {
        let inner = &*self.inner;
        let wit_req = wit::Request {
            parent: req.parent.to_string(),
            children: req.children.iter().map(Value::to_string).collect(),
            finalizing: req.finalizing,
            settings: req.settings.clone(),
        };
        let ticks = inner.ticker.ticks();
        let answer = inner.pre.reconcile(&inner.name, &inner.limits, &wit_req);
        // Shown on the reconcile's `plugin call` span, when the caller opened one: the epoch
        // ticks the call took, what its wall-time limit counts.
        tracing::Span::current().record("epoch_ticks", inner.ticker.ticks().saturating_sub(ticks));
        let answer = answer?;
        match answer {
            Ok(resp) => check_response(&inner.meta, &req.parent, resp, &inner.limits),
            // Control characters escaped: the text reaches the host's log lines.
            Err(wit::Error::Invalid(message)) => {
                Err(PluginError::InvalidSpec { plugin: inner.meta.name.clone(), message: escape_controls(&message) })
            }
            Err(wit::Error::Retry(message)) => {
                Err(PluginError::Retry { plugin: inner.meta.name.clone(), message: escape_controls(&message) })
            }
        }
    }
}

impl OperatorPlugin {
    /// Whether the plugin can convert between versions of its parent kind (contract 0.2 and a
    /// CRD with more than one version).
    pub fn converts(&self) -> bool {
        matches!(self.inner.pre, Pre::Current(_)) && self.metadata().crd_versions().len() > 1
    }

    /// Converts a parent object (any version its CRD defines) to `to_version`, in a fresh
    /// sandbox, and checks the answer: same kind and identity, the asked version, only spec,
    /// status, labels and annotations changed.
    pub fn convert(&self, obj: &Value, to_version: &str) -> Result<Value, PluginError> {
        let inner = &*self.inner;
        let failed = |message: String| PluginError::ConversionFailed {
            plugin: inner.meta.name.clone(),
            object: super::output::describe(obj),
            to_version: to_version.to_string(),
            message,
        };
        let answer =
            inner.pre.convert(&inner.name, &inner.limits, obj.to_string(), to_version).ok_or_else(|| {
                failed(
                    "it is built against contract 0.1, which has no conversion; rebuild it with wasmop-sdk 0.2".into(),
                )
            })??;
        let raw = answer.map_err(|message| failed(escape_controls(&message)))?;
        check_conversion(&inner.meta, obj, &raw, to_version, &inner.limits)
    }
}

/// Most child kinds one plugin may declare: each is a watch, a cache and RBAC rules.
pub const MAX_CHILD_KINDS: usize = 64;

fn validate_metadata(raw: wit::OperatorMetadata, label: &str) -> Result<OperatorMetadata, PluginError> {
    // The reason may quote guest text of any size (a name, the CRD's group): cut like every
    // other quote of it, so a refusal is never a 10 MiB log line.
    let bad = |reason: String| PluginError::InvalidMetadata {
        plugin: label.to_string(),
        reason: crate::text::cap(&reason, crate::text::MAX_QUOTE),
    };
    let (mut meta, crd) = metadata_from_wit(raw);
    if !names::is_dns_label(&meta.name) {
        return Err(bad(format!("name {:?} must be a lowercase DNS label (a-z, 0-9, '-')", meta.name)));
    }
    if meta.parent.kind.is_empty() || meta.parent.version.is_empty() {
        return Err(bad(format!("parent {:?} needs a version and a kind", meta.parent)));
    }
    if meta.children.len() > MAX_CHILD_KINDS {
        return Err(bad(format!(
            "it declares {} child kinds; at most {MAX_CHILD_KINDS} are allowed (each is a watch and a cache)",
            meta.children.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, child) in meta.children.iter().enumerate() {
        if child.gvk.kind.is_empty() || child.gvk.version.is_empty() {
            return Err(bad(format!("child kind {i} {:?} needs a version and a kind", child.gvk)));
        }
        if !seen.insert(&child.gvk) {
            return Err(bad(format!("child kind {} is declared twice", child.gvk)));
        }
    }
    if let Some(raw_crd) = crd {
        let crd: Value = serde_json::from_str(&raw_crd).map_err(|e| bad(format!("its CRD is not valid JSON: {e}")))?;
        meta.crd = Some(crd);
        check_crd(&meta).map_err(bad)?;
    }
    Ok(meta)
}

/// The CRD must define exactly the parent kind the plugin reconciles, serve the version it
/// reconciles, and store one version.
fn check_crd(meta: &OperatorMetadata) -> Result<(), String> {
    let Some(crd) = &meta.crd else { return Ok(()) };
    if crd["kind"] != "CustomResourceDefinition" || crd["apiVersion"] != "apiextensions.k8s.io/v1" {
        return Err("its CRD must be an apiextensions.k8s.io/v1 CustomResourceDefinition".into());
    }
    let spec = &crd["spec"];
    if spec["group"].as_str() != Some(meta.parent.group.as_str())
        || spec["names"]["kind"].as_str() != Some(meta.parent.kind.as_str())
    {
        return Err(format!(
            "its CRD defines {}/{} but the parent kind is {}",
            spec["group"].as_str().unwrap_or("?"),
            spec["names"]["kind"].as_str().unwrap_or("?"),
            meta.parent
        ));
    }
    let versions = meta.crd_versions();
    if !versions.iter().any(|v| v.name == meta.parent.version && v.served) {
        return Err(format!("its CRD does not serve version {} of the parent kind", meta.parent.version));
    }
    let storage: Vec<&str> = versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
    if storage.len() != 1 {
        return Err(format!(
            "its CRD must mark exactly one version as the storage version; it marks {storage:?} of {:?}",
            versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::operator::wasmop::plugin::types::Gvk as WitGvk;

    #[test]
    fn a_huge_name_is_refused_with_a_capped_quote() {
        let raw = wit::OperatorMetadata {
            name: "X".repeat(10 << 20),
            version: "1".into(),
            parent: WitGvk { group: "g".into(), version: "v1".into(), kind: "K".into() },
            children: vec![],
            crd: None,
            finalizer: false,
        };
        let err = validate_metadata(raw, "huge.wasm").unwrap_err().to_string();
        assert!(err.len() <= 2 * crate::text::MAX_QUOTE, "{} bytes", err.len());
        assert!(err.contains("huge.wasm") && err.contains("bytes truncated]"), "{err}");
    }
}
