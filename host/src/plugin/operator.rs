//! A loaded operator plugin: validated metadata and a reconcile call in a fresh sandbox.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use wasmtime::component::{Instance, InstancePre};

use super::bindings::operator::OperatorPre;
use super::bindings::operator::exports::wasmop::plugin::reconciler as wit;
use super::contract::{Desired, OperatorMetadata, Pick, ReconcileRequest, Selector, metadata_from_wit};
use super::error::PluginError;
use super::file::PluginFile;
use super::legacy::{v0_1, v0_2};
use super::limits::Limits;
use super::output::{check_conversion, check_response};
use super::sandbox::{CallState, EpochTicker, Instantiate, call_in, instantiate_via_bindings};
use crate::names;
use crate::text::escape_controls;
use v0_2::bindings::operator::exports::wasmop::plugin::reconciler as v02;

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

/// How to instantiate an operator of any contract version.
pub(crate) enum Pre {
    /// Contract 0.3, world `operator`: reconciler and converter.
    Current(OperatorPre<CallState>),
    /// Contract 0.3, world `single-version-operator`: reconciler only.
    SingleVersion(SingleVersionPre<wit::Guest>),
    /// Contract 0.2 (frozen), world `operator`.
    V02(v0_2::bindings::operator::OperatorPre<CallState>),
    /// Contract 0.2 (frozen), world `single-version-operator`.
    V02SingleVersion(SingleVersionPre<v02::Guest>),
    /// Contract 0.1 (frozen): reconciler only.
    V01(v0_1::bindings::operator::OperatorPre<CallState>),
}

instantiate_via_bindings!(
    OperatorPre<CallState> => super::bindings::operator::Operator,
    v0_2::bindings::operator::OperatorPre<CallState> => v0_2::bindings::operator::Operator,
    v0_1::bindings::operator::OperatorPre<CallState> => v0_1::bindings::operator::Operator,
);

/// A plugin's answer to `reconcile`, as the bindings give it.
type Answer = Result<wit::Response, wit::Error>;

/// Loads the `reconciler` export of an instance.
type LoadReconciler<G> = Box<dyn Fn(&mut wasmtime::Store<CallState>, &Instance) -> wasmtime::Result<G> + Send + Sync>;

/// An operator exporting `reconciler` only: the export's own indices, so its calls use the same
/// bindings as the `operator` world's of its contract.
pub(crate) struct SingleVersionPre<G> {
    pre: InstancePre<CallState>,
    load: LoadReconciler<G>,
}

/// An instance of a [`SingleVersionPre`].
pub(crate) struct SingleVersion<G>(G);

impl<G> SingleVersion<G> {
    fn wasmop_plugin_reconciler(&self) -> &G {
        &self.0
    }
}

impl<G> Instantiate for SingleVersionPre<G> {
    type Instance = SingleVersion<G>;
    fn engine(&self) -> &wasmtime::Engine {
        self.pre.engine()
    }
    fn instantiate(&self, store: &mut wasmtime::Store<CallState>) -> wasmtime::Result<SingleVersion<G>> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(SingleVersion((self.load)(store, &instance)?))
    }
}

impl Pre {
    /// A contract 0.3 operator: with a converter if it exports one, else reconciler only.
    pub(crate) fn current(pre: InstancePre<CallState>) -> wasmtime::Result<Pre> {
        match OperatorPre::new(pre.clone()) {
            Ok(both) => Ok(Pre::Current(both)),
            Err(with_converter) => match wit::GuestIndices::new(&pre) {
                Ok(indices) => {
                    let load = Box::new(move |s: &mut wasmtime::Store<CallState>, i: &Instance| indices.load(s, i));
                    Ok(Pre::SingleVersion(SingleVersionPre { pre, load }))
                }
                // Not even the reconciler: the first error says what the operator world lacks.
                Err(_) => Err(with_converter),
            },
        }
    }

    /// A contract 0.2 operator: with a converter if it exports one, else reconciler only.
    pub(crate) fn v0_2(pre: InstancePre<CallState>) -> wasmtime::Result<Pre> {
        match v0_2::bindings::operator::OperatorPre::new(pre.clone()) {
            Ok(both) => Ok(Pre::V02(both)),
            Err(with_converter) => match v02::GuestIndices::new(&pre) {
                Ok(indices) => {
                    let load = Box::new(move |s: &mut wasmtime::Store<CallState>, i: &Instance| indices.load(s, i));
                    Ok(Pre::V02SingleVersion(SingleVersionPre { pre, load }))
                }
                Err(_) => Err(with_converter),
            },
        }
    }

    /// A contract 0.1 operator.
    pub(crate) fn v0_1(pre: InstancePre<CallState>) -> wasmtime::Result<Pre> {
        Ok(Pre::V01(v0_1::bindings::operator::OperatorPre::new(pre)?))
    }

    /// Whether the plugin exports a converter (contract 0.2 and later, world `operator`).
    fn has_converter(&self) -> bool {
        matches!(self, Pre::Current(_) | Pre::V02(_))
    }

    fn metadata(&self, label: &Arc<str>, limits: &Limits) -> Result<wit::OperatorMetadata, PluginError> {
        match self {
            Pre::Current(pre) => call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)),
            Pre::SingleVersion(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s))
            }
            Pre::V02(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)).map(v0_2::metadata)
            }
            Pre::V02SingleVersion(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)).map(v0_2::metadata)
            }
            Pre::V01(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_metadata(s)).map(v0_1::metadata)
            }
        }
    }

    /// `related` on the parent, then `reconcile` with the objects `pick` resolves its selectors
    /// to, in one instance and under one call's limits; `None` for an older contract, which has
    /// no `related`.
    fn reconcile_related(
        &self,
        label: &Arc<str>,
        limits: &Limits,
        mut req: wit::Request,
        pick: &dyn Fn(Result<Vec<wit::Selector>, String>) -> Result<Vec<wit::RelatedObjects>, PluginError>,
    ) -> Option<Result<Result<Answer, PluginError>, PluginError>> {
        let mut both =
            |s: &mut wasmtime::Store<CallState>, g: &wit::Guest| -> wasmtime::Result<Result<Answer, PluginError>> {
                let selectors = g.call_related(&mut *s, &req.parent)?;
                req.related = match pick(selectors) {
                    Ok(related) => related,
                    Err(e) => return Ok(Err(e)),
                };
                Ok(Ok(g.call_reconcile(s, &req)?))
            };
        match self {
            Pre::Current(pre) => Some(call_in(pre, label, limits, |s, i| both(s, i.wasmop_plugin_reconciler()))),
            Pre::SingleVersion(pre) => Some(call_in(pre, label, limits, |s, i| both(s, i.wasmop_plugin_reconciler()))),
            Pre::V02(_) | Pre::V02SingleVersion(_) | Pre::V01(_) => None,
        }
    }

    fn reconcile(&self, label: &Arc<str>, limits: &Limits, req: &wit::Request) -> Result<Answer, PluginError> {
        match self {
            Pre::Current(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, req))
            }
            Pre::SingleVersion(pre) => {
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, req))
            }
            Pre::V02(pre) => {
                let old = v0_2::request(req);
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, &old))
                    .map(v0_2::answer)
            }
            Pre::V02SingleVersion(pre) => {
                let old = v0_2::request(req);
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, &old))
                    .map(v0_2::answer)
            }
            Pre::V01(pre) => {
                let old = v0_1::request(req);
                call_in(pre, label, limits, |s, i| i.wasmop_plugin_reconciler().call_reconcile(s, &old))
                    .map(v0_1::answer)
            }
        }
    }

    /// `None` for a plugin without a converter.
    fn convert(
        &self,
        label: &Arc<str>,
        limits: &Limits,
        obj: String,
        to_version: &str,
    ) -> Option<Result<Result<String, String>, PluginError>> {
        let to_version = to_version.to_string();
        match self {
            Pre::Current(pre) => {
                Some(call_in(pre, label, limits, |s, i| i.wasmop_plugin_converter().call_convert(s, &obj, &to_version)))
            }
            Pre::V02(pre) => {
                Some(call_in(pre, label, limits, |s, i| i.wasmop_plugin_converter().call_convert(s, &obj, &to_version)))
            }
            _ => None,
        }
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
        if matches!(pre, Pre::SingleVersion(_) | Pre::V02SingleVersion(_)) && versions.len() > 1 {
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
        let ticks = inner.ticker.ticks();
        let answer = inner.pre.reconcile(&inner.name, &inner.limits, &wit_request(req));
        self.checked(req, ticks, answer)
    }

    /// Picks the parent's related objects and computes its desired state, in one fresh sandbox:
    /// the plugin's `related`, the selectors resolved by `pick`, then `reconcile` with what they
    /// picked. A plugin that declares no reads, or of an older contract, is only reconciled.
    pub fn reconcile_related(&self, req: ReconcileRequest, pick: Pick<'_>) -> Result<Desired, PluginError> {
        let inner = &*self.inner;
        if inner.meta.reads.is_empty() {
            return self.reconcile(&req);
        }
        let pick_wit = |answer: Result<Vec<wit::Selector>, String>| {
            let selectors = answer.map_err(|message| PluginError::InvalidSpec {
                plugin: inner.meta.name.clone(),
                message: escape_controls(&message),
            })?;
            let picked = pick(selectors.into_iter().map(Selector::from).collect())?;
            Ok(picked
                .into_iter()
                .map(|(id, objects)| wit::RelatedObjects {
                    id,
                    objects: objects.iter().map(Value::to_string).collect(),
                })
                .collect())
        };
        let ticks = inner.ticker.ticks();
        // An older contract declares no reads (its metadata is translated with none).
        let Some(answer) = inner.pre.reconcile_related(&inner.name, &inner.limits, wit_request(&req), &pick_wit) else {
            return self.reconcile(&req);
        };
        self.checked(&req, ticks, answer.and_then(std::convert::identity))
    }

    /// The plugin's answer checked against its metadata and limits; the call's epoch ticks on
    /// the caller's `plugin call` span.
    fn checked(
        &self,
        req: &ReconcileRequest,
        ticks_before: u64,
        answer: Result<Answer, PluginError>,
    ) -> Result<Desired, PluginError> {
        let inner = &*self.inner;
        // Shown on the reconcile's `plugin call` span, when the caller opened one: the epoch
        // ticks the call took, what its wall-time limit counts.
        tracing::Span::current().record("epoch_ticks", inner.ticker.ticks().saturating_sub(ticks_before));
        match answer? {
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

/// A request in the bindings' terms.
fn wit_request(req: &ReconcileRequest) -> wit::Request {
    wit::Request {
        parent: req.parent.to_string(),
        children: req.children.iter().map(Value::to_string).collect(),
        finalizing: req.finalizing,
        settings: req.settings.clone(),
        related: req
            .related
            .iter()
            .map(|(id, objects)| wit::RelatedObjects {
                id: id.clone(),
                objects: objects.iter().map(Value::to_string).collect(),
            })
            .collect(),
    }
}

impl OperatorPlugin {
    /// Whether the plugin can convert between versions of its parent kind (contract 0.2 and a
    /// CRD with more than one version).
    pub fn converts(&self) -> bool {
        self.inner.pre.has_converter() && self.metadata().crd_versions().len() > 1
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
    if meta.reads.len() > MAX_CHILD_KINDS {
        return Err(bad(format!(
            "it declares {} kinds it reads; at most {MAX_CHILD_KINDS} are allowed (each is a watch and a cache)",
            meta.reads.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, read) in meta.reads.iter().enumerate() {
        if read.gvk.kind.is_empty() || read.gvk.version.is_empty() {
            return Err(bad(format!("read kind {i} {:?} needs a version and a kind", read.gvk)));
        }
        if !seen.insert(&read.gvk) {
            return Err(bad(format!("read kind {} is declared twice", read.gvk)));
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
            reads: vec![],
        };
        let err = validate_metadata(raw, "huge.wasm").unwrap_err().to_string();
        assert!(err.len() <= 2 * crate::text::MAX_QUOTE, "{} bytes", err.len());
        assert!(err.contains("huge.wasm") && err.contains("bytes truncated]"), "{err}");
    }
}
