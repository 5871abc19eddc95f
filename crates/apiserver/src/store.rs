//! The object store: JSON objects keyed by resource and name, one global resourceVersion
//! counter, the retained event history, and every write operation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::apply::{self, ApplyRequest};
use crate::error::{ApiResult, Cause, StatusError};
use crate::meta;
use crate::patch;
use crate::resources::{self, ListType, Registry, ResKey, ResourceInfo};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector};

/// Largest object stored, as etcd's default request limit (1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 3 << 19;

/// Storage key of an object: (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as retained in history and sent to watchers.
#[derive(Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Type of change.
    pub kind: EventType,
    /// Resource the object belongs to.
    pub res: ResKey,
    /// The object after the change (for DELETED: the last state with the new resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, if any.
    pub old: Option<Arc<Value>>,
    /// The serialized wire line in the plain storage-version form, shared by all watchers.
    pub line: std::sync::OnceLock<bytes::Bytes>,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// Field manager name.
    pub manager: String,
    /// `dryRun=All`: validate and compute, but persist nothing.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being pruned.
    pub strict: bool,
    /// Subresource ("" or "status").
    pub subresource: String,
}

/// Patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `Background` (default), `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Result of a delete.
#[derive(Debug)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// The object is being deleted (finalizers pending); its current state.
    Pending(Value),
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Items in their stored form (see [`State::present`] for the requested version's form).
    pub items: Vec<Arc<Value>>,
    /// List resourceVersion.
    pub rv: u64,
    /// Continue token, when more items remain.
    pub cont: Option<String>,
    /// Items left after this page (only without selectors).
    pub remaining: Option<u64>,
}

/// The whole state of the server.
pub struct State {
    /// Last resourceVersion handed out.
    pub rv: u64,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    uids: HashMap<String, (ResKey, ObjKey)>,
    /// Retained events, oldest first.
    pub history: VecDeque<Arc<Event>>,
    /// Maximum retained events.
    pub history_limit: usize,
    /// Watches from a resourceVersion older than this get 410 Expired.
    pub compacted: u64,
    /// Open watch streams.
    pub watchers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    /// Served resources.
    pub registry: Registry,
    /// Notified of Deployment writes (status simulator).
    pub deployment_hook: Option<mpsc::UnboundedSender<(ResKey, ObjKey)>>,
    /// Webhook conversions available to the write in progress (see [`crate::convert::Memo`]).
    pub memo: crate::convert::Memo,
    gc_pending: bool,
    in_gc: bool,
}

fn ns_key() -> ResKey {
    (String::new(), "namespaces".into())
}

fn crd_key() -> ResKey {
    ("apiextensions.k8s.io".into(), "customresourcedefinitions".into())
}

/// Removes metadata (and status, when it is a subresource) to compare the "spec" part.
fn spec_part(v: &Value, drop_status: bool) -> Value {
    let mut c = v.clone();
    if let Value::Object(m) = &mut c {
        m.remove("metadata");
        if drop_status {
            m.remove("status");
        }
    }
    c
}

fn without_times(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(Value::Array(mf)) = c.get_mut("metadata").and_then(|m| m.get_mut("managedFields")) {
        for e in mf {
            if let Value::Object(m) = e {
                m.remove("time");
            }
        }
    }
    c
}

fn rv_of(obj: &Value) -> &str {
    meta::meta_str(obj, "resourceVersion").unwrap_or("")
}

impl State {
    /// A fresh state with the built-in kinds and the default namespaces.
    pub fn new(history_limit: usize) -> Self {
        let mut s = State {
            rv: 0,
            objects: HashMap::new(),
            uids: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
            registry: Registry::builtin(),
            deployment_hook: None,
            memo: Default::default(),
            gc_pending: false,
            in_gc: false,
        };
        if let Some(info) = s.registry.get("", "v1", "namespaces") {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                let opts = WriteOpts { manager: "kube-apiserver".into(), ..Default::default() };
                // Creating the defaults cannot fail: fixed, valid names.
                let _ = s.create(&info, "", body, &opts);
            }
        }
        s
    }

    /// Number of objects stored for a resource.
    pub fn count(&self, key: &ResKey) -> usize {
        self.objects.get(key).map_or(0, BTreeMap::len)
    }

    fn lookup(&self, key: &ResKey, ok: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(key)?.get(ok).cloned()
    }

    /// Converts a stored object to the version `info` serves, for a response: an object that
    /// needs the conversion webhook stays as stored (see [`crate::convert::finish`]).
    pub fn present(info: &ResourceInfo, obj: &Value) -> Value {
        crate::convert::to_request(info, obj)
    }

    /// Converts a stored object to the version `info` serves, for a write to build on; a
    /// webhook conversion comes from the memo (or is recorded as pending, failing the write).
    fn convert_in(&mut self, info: &ResourceInfo, obj: &Value) -> ApiResult<Value> {
        match &info.conversion {
            Some(conv) if crate::convert::needs_webhook(info, obj) => self.memo.convert(conv, obj, &info.api_version()),
            _ => Ok(Self::present(info, obj)),
        }
    }

    /// Converts an object in `info`'s version to its storage form.
    fn storage_form(&mut self, info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
        match &info.conversion {
            Some(conv) if info.version != info.storage_version => {
                *obj = self.memo.convert(conv, obj, &crate::convert::storage_api_version(info))?;
            }
            _ => crate::convert::to_storage(info, obj),
        }
        Ok(())
    }

    /// Reads one object in `info`'s version for a write to build on (see [`State::convert_in`]).
    pub fn get_for_write(&mut self, info: &ResourceInfo, ns: &str, name: &str) -> ApiResult<Value> {
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        let obj =
            self.lookup(&info.key(), &ok).ok_or_else(|| StatusError::not_found(&info.group, &info.plural, name))?;
        self.convert_in(info, &obj)
    }

    fn list_type_fn(info: &ResourceInfo) -> impl Fn(&[String]) -> ListType + '_ {
        move |p: &[String]| resources::list_type(info, p)
    }

    /// Reads one object.
    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> ApiResult<Value> {
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        self.lookup(&info.key(), &ok)
            .map(|o| Self::present(info, &o))
            .ok_or_else(|| StatusError::not_found(&info.group, &info.plural, name))
    }

    /// Lists objects, optionally in one namespace, filtered and paginated.
    pub fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> ApiResult<ListPage> {
        use base64::Engine;
        let (list_rv, start) = match cont {
            Some(token) if !token.is_empty() => {
                let bad = || StatusError::bad_request("continue key is not valid: illegal base64 data");
                let raw = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
                let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
                let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
                if rv < self.compacted {
                    return Err(StatusError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ));
                }
                let ns = v.get("ns").and_then(Value::as_str).unwrap_or("").to_string();
                let name = v.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                (rv, Some((ns, name)))
            }
            _ => (self.rv, None),
        };
        let empty = BTreeMap::new();
        let objs = self.objects.get(&info.key()).unwrap_or(&empty);
        let range: Box<dyn Iterator<Item = (&ObjKey, &Arc<Value>)>> = match &start {
            Some(k) => {
                Box::new(objs.range::<ObjKey, _>((std::ops::Bound::Excluded(k.clone()), std::ops::Bound::Unbounded)))
            }
            None => Box::new(objs.iter()),
        };
        let selecting = !labels.is_empty() || !fields.is_empty();
        let mut items = Vec::new();
        let mut last: Option<ObjKey> = None;
        let mut cont_token = None;
        let mut remaining = None;
        let limit = limit.filter(|l| *l > 0);
        let converts = info.key().0 != info.group;
        let mut iter = range.filter(|(k, o)| {
            ns.is_none_or(|n| k.0 == n)
                && labels.matches(o)
                && (fields.is_empty()
                    || if converts { fields.matches(&Self::present(info, o)) } else { fields.matches(o) })
        });
        for (k, o) in iter.by_ref() {
            items.push(o.clone());
            last = Some(k.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        if limit.is_some_and(|l| items.len() >= l) {
            let rest = iter.count() as u64;
            if rest > 0 {
                if let Some((lns, lname)) = &last {
                    let tok = json!({"rv": list_rv, "ns": lns, "name": lname}).to_string();
                    cont_token = Some(base64::engine::general_purpose::STANDARD.encode(tok));
                }
                if !selecting {
                    remaining = Some(rest);
                }
            }
        }
        Ok(ListPage { items, rv: list_rv, cont: cont_token, remaining })
    }

    fn check_namespace(&self, info: &ResourceInfo, ns: &str) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        match self.lookup(&ns_key(), &(String::new(), ns.to_string())) {
            None => Err(StatusError::not_found("", "namespaces", ns)),
            Some(n) if meta::is_deleting(&n) => Err(StatusError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                info.plural, "",
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Fills identity fields of a body for `info` in `ns`; checks apiVersion/kind/namespace.
    fn normalize_body(info: &ResourceInfo, ns: &str, body: &mut Value) -> ApiResult<()> {
        if !body.is_object() {
            return Err(StatusError::bad_request("the body of the request must be a JSON object"));
        }
        let api_version = info.api_version();
        match body.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != api_version => {
                return Err(StatusError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => body["apiVersion"] = json!(api_version),
        }
        match body.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != info.kind => {
                return Err(StatusError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind
                )));
            }
            _ => body["kind"] = json!(info.kind),
        }
        let m = meta::meta_mut(body);
        if info.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(StatusError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        Ok(())
    }

    /// Creates an object.
    pub fn create(&mut self, info: &ResourceInfo, ns: &str, mut body: Value, opts: &WriteOpts) -> ApiResult<Value> {
        Self::normalize_body(info, ns, &mut body)?;
        let m = meta::meta_mut(&mut body);
        let mut name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            let prefix = m.get("generateName").and_then(Value::as_str).unwrap_or("");
            if prefix.is_empty() {
                return Err(StatusError::invalid(
                    &info.group,
                    &info.kind,
                    "",
                    vec![Cause::new(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            }
            name = format!("{prefix}{}", meta::name_suffix());
            m.insert("name".into(), json!(name));
        }
        if let Some(msg) = meta::validate_name(&name) {
            return Err(StatusError::invalid(
                &info.group,
                &info.kind,
                &name,
                vec![Cause::new("FieldValueInvalid", "metadata.name", msg)],
            ));
        }
        self.check_namespace(info, ns)?;
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.clone());
        if self.lookup(&info.key(), &ok).is_some() {
            return Err(StatusError::already_exists(&info.group, &info.plural, &name));
        }
        let new = self.finish_write(info, None, body, opts, false)?;
        Ok(self.commit(info, ok, new, None, opts.dry_run))
    }

    /// Replaces an object (PUT), honouring the resourceVersion precondition.
    pub fn update(
        &mut self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        mut body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        Self::normalize_body(info, ns, &mut body)?;
        let body_name = meta::name(&body).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(StatusError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        meta::meta_mut(&mut body).insert("name".into(), json!(name));
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        let old =
            self.lookup(&info.key(), &ok).ok_or_else(|| StatusError::not_found(&info.group, &info.plural, name))?;
        let want = rv_of(&body).to_string();
        if want.is_empty() && info.custom {
            return Err(StatusError::invalid(
                &info.group,
                &info.kind,
                name,
                vec![Cause::new(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0: must be specified for an update",
                )],
            ));
        }
        if !want.is_empty() && want != rv_of(&old) {
            return Err(StatusError::conflict(&info.group, &info.plural, name, StatusError::MODIFIED));
        }
        let new = self.finish_write(info, Some(&old), body, opts, false)?;
        Ok(self.commit(info, ok, new, Some(old), opts.dry_run))
    }

    /// Patches an object; server-side apply creates it when missing.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &Value,
        force: bool,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        let old = self.lookup(&info.key(), &ok);
        let lt = Self::list_type_fn(info);
        if kind == PatchType::Apply {
            return self.server_side_apply(info, ns, name, old, body, force, opts);
        }
        let old = old.ok_or_else(|| StatusError::not_found(&info.group, &info.plural, name))?;
        let mut doc = self.convert_in(info, &old)?;
        match kind {
            PatchType::Merge => patch::merge_patch(&mut doc, body),
            PatchType::Json => patch::json_patch(&mut doc, body)?,
            PatchType::Strategic => {
                if info.custom {
                    return Err(StatusError::unsupported_media_type(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                patch::strategic_merge(&mut doc, body, &mut Vec::new(), &lt);
            }
            PatchType::Apply => {}
        }
        Self::normalize_body(info, ns, &mut doc)?;
        if meta::name(&doc) != name {
            return Err(StatusError::bad_request("metadata.name cannot be changed by a patch"));
        }
        // A resourceVersion in the patch is a precondition.
        let want = body.get("metadata").and_then(|m| m.get("resourceVersion")).and_then(Value::as_str).unwrap_or("");
        if kind != PatchType::Json && !want.is_empty() && want != rv_of(&old) {
            return Err(StatusError::conflict(&info.group, &info.plural, name, StatusError::MODIFIED));
        }
        if kind == PatchType::Json && rv_of(&doc) != rv_of(&old) && !rv_of(&doc).is_empty() {
            return Err(StatusError::conflict(&info.group, &info.plural, name, StatusError::MODIFIED));
        }
        let new = self.finish_write(info, Some(&old), doc, opts, false)?;
        Ok(self.commit(info, ok, new, Some(old), opts.dry_run))
    }

    #[allow(clippy::too_many_arguments)]
    fn server_side_apply(
        &mut self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        old: Option<Arc<Value>>,
        body: &Value,
        force: bool,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let bad = |msg: &str| StatusError::bad_request(msg.to_string());
        if !body.is_object() {
            return Err(bad("invalid object type: expected an object"));
        }
        if body.get("apiVersion").and_then(Value::as_str).unwrap_or("").is_empty() {
            return Err(bad("invalid object type: /, Kind="));
        }
        if body.get("kind").and_then(Value::as_str).unwrap_or("").is_empty() {
            return Err(bad(&format!("invalid object type: {}, Kind=", body["apiVersion"].as_str().unwrap_or(""))));
        }
        if body.get("metadata").and_then(|m| m.get("managedFields")).is_some() {
            return Err(bad("metadata.managedFields must be nil"));
        }
        if opts.manager.is_empty() {
            return Err(bad("PATCH, application/apply-patch+yaml: fieldManager is required for apply requests"));
        }
        let mut applied = body.clone();
        Self::normalize_body(info, ns, &mut applied)?;
        let body_name = meta::name(&applied);
        if !body_name.is_empty() && body_name != name {
            return Err(bad(&format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let want_rv = rv_of(&applied).to_string();
        let lt = Self::list_type_fn(info);
        let mut tracked = apply::trackable(&applied, info.status, &opts.subresource);
        if info.custom
            && let Some(s) = &info.schema
        {
            // Unknown fields are pruned before ownership is computed.
            let mut probe = tracked.clone();
            let mut pruned = Vec::new();
            schema::prune(&mut probe, &strip_meta_props(s), "", &mut pruned);
            if opts.strict && !pruned.is_empty() {
                return Err(apply_unknown_field(info, ns, name, &pruned[0]));
            }
            tracked = probe;
        }
        if !info.custom {
            // Undeclared fields of built-in kinds are dropped before ownership is computed.
            let mut probe = applied.clone();
            let mut pruned = Vec::new();
            crate::typed::decode_pruned(info, &mut probe, &mut pruned)?;
            if opts.strict && !pruned.is_empty() {
                return Err(apply_unknown_field(info, ns, name, &pruned[0]));
            }
            tracked = apply::trackable(&probe, info.status, &opts.subresource);
        }
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        let base = match &old {
            Some(o) => {
                if !want_rv.is_empty() && want_rv != rv_of(o) {
                    return Err(StatusError::conflict(&info.group, &info.plural, name, StatusError::MODIFIED));
                }
                self.convert_in(info, o)?
            }
            None => {
                if !opts.subresource.is_empty() {
                    return Err(StatusError::not_found(&info.group, &info.plural, name));
                }
                json!({
                    "apiVersion": info.api_version(),
                    "kind": info.kind,
                    "metadata": {"name": name, "namespace": ns},
                })
            }
        };
        let req = ApplyRequest {
            applied: &tracked,
            manager: &opts.manager,
            force,
            subresource: &opts.subresource,
            api_version: &info.api_version(),
            ident: (&info.group, &info.plural, name),
        };
        let mut merged = apply::apply(&base, &req, &lt)?;
        match old {
            Some(old) => {
                let new = self.finish_write(info, Some(&old), merged, opts, true)?;
                Ok(self.commit(info, ok, new, Some(old), opts.dry_run))
            }
            None => {
                if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut)
                    && !info.namespaced
                {
                    m.remove("namespace");
                }
                self.check_namespace(info, ns)?;
                if let Some(msg) = meta::validate_name(name) {
                    return Err(StatusError::invalid(
                        &info.group,
                        &info.kind,
                        name,
                        vec![Cause::new("FieldValueInvalid", "metadata.name", msg)],
                    ));
                }
                let new = self.finish_write(info, None, merged, opts, true)?;
                Ok(self.commit(info, ok, new, None, opts.dry_run))
            }
        }
    }

    /// Server-owned metadata, subresource separation, schema processing, generation and managedFields.
    fn finish_write(
        &mut self,
        info: &ResourceInfo,
        old: Option<&Value>,
        mut new: Value,
        opts: &WriteOpts,
        managed_done: bool,
    ) -> ApiResult<Value> {
        let sub = opts.subresource.as_str();
        let name = meta::name(&new).to_string();
        // Compare and carry over in the request's version.
        let old_presented = match old {
            Some(o) => Some(self.convert_in(info, o)?),
            None => None,
        };
        let old = old_presented.as_ref();
        // managedFields a client writes (kubectl rewrites them to move client-side-apply
        // ownership to server-side apply) replace the old ones, as on the real server.
        let managed_in = new.get("metadata").and_then(|m| m.get("managedFields")).cloned();
        match old {
            Some(old) => {
                if sub == "status" {
                    let status = new.get("status").cloned();
                    let mut base = old.clone();
                    match status {
                        Some(s) => base["status"] = s,
                        None => {
                            if let Some(m) = base.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                    if managed_done && let Some(mf) = &managed_in {
                        meta::meta_mut(&mut base).insert("managedFields".into(), mf.clone());
                    }
                    new = base;
                } else if info.status {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                let old_meta = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
                let m = meta::meta_mut(&mut new);
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "name",
                    "namespace",
                ] {
                    match old_meta.get(f) {
                        Some(v) => {
                            m.insert(f.into(), v.clone());
                        }
                        None => {
                            m.remove(f);
                        }
                    }
                }
                m.remove("resourceVersion");
                if meta::is_deleting(old) {
                    let before = meta::finalizers(old);
                    let added: Vec<String> =
                        meta::finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
                    if !added.is_empty() {
                        return Err(StatusError::invalid(
                            &info.group,
                            &info.kind,
                            &name,
                            vec![Cause::new(
                                "FieldValueForbidden",
                                "metadata.finalizers",
                                format!(
                                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                                ),
                            )],
                        ));
                    }
                }
            }
            None => {
                let m = meta::meta_mut(&mut new);
                m.insert("uid".into(), json!(meta::uid()));
                m.insert("creationTimestamp".into(), json!(meta::now()));
                m.remove("deletionTimestamp");
                m.remove("deletionGracePeriodSeconds");
                m.remove("resourceVersion");
                if info.generation || info.custom {
                    m.insert("generation".into(), json!(1));
                } else {
                    m.remove("generation");
                }
                if info.status
                    && let Some(o) = new.as_object_mut()
                {
                    o.remove("status");
                }
            }
        }
        if !managed_done && let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        crate::typed::decode(info, &mut new, opts.strict && !managed_done)?;
        crate::defaults::apply(info, &mut new, old.is_none());
        if let Some(old) = old
            && !info.custom
            && info.kind == "Service"
        {
            // Allocated values survive updates that omit them.
            for f in ["clusterIP", "clusterIPs"] {
                if new.pointer(&format!("/spec/{f}")).is_none()
                    && let (Some(v), Some(spec)) =
                        (old.pointer(&format!("/spec/{f}")), new.get_mut("spec").and_then(Value::as_object_mut))
                {
                    spec.insert(f.into(), v.clone());
                }
            }
        }
        // etcd's request limit, which the real server reports as 413.
        let size = serde_json::to_vec(&new).map(|v| v.len()).unwrap_or_default();
        if size > MAX_OBJECT_BYTES {
            return Err(StatusError::new(
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: the object is {size} bytes; etcdserver: request is too large"),
            ));
        }
        if !info.custom && sub != "status" {
            let causes = crate::validation::validate(info, &new);
            if !causes.is_empty() {
                return Err(StatusError::invalid(&info.group, &info.kind, &name, causes));
            }
        }
        if info.custom
            && let Some(s) = &info.schema
        {
            let (pruned, causes) = schema::process(&mut new, &strip_meta_props(s));
            if opts.strict && !pruned.is_empty() && !managed_done {
                return Err(strict_error(info, &pruned));
            }
            if !causes.is_empty() {
                return Err(StatusError::invalid(&info.group, &info.kind, &name, causes));
            }
        }
        if info.key() == crd_key() {
            crd_prepare(&mut new, &name, sub == "status")?;
        }
        if let Some(old) = old
            && (info.generation || info.custom)
        {
            let drop_status = info.status;
            if spec_part(old, drop_status) != spec_part(&new, drop_status) {
                let g = meta::generation(old) + 1;
                meta::meta_mut(&mut new).insert("generation".into(), json!(g));
            }
        }
        if !managed_done {
            let lt = Self::list_type_fn(info);
            let tracked_new = apply::trackable(&new, info.status, sub);
            let tracked_old = old.map(|o| apply::trackable(o, info.status, sub));
            let manager = if opts.manager.is_empty() { "unknown" } else { &opts.manager };
            let old_managed = old.and_then(|o| o.pointer("/metadata/managedFields"));
            let rewritten = match (&managed_in, old) {
                (Some(written), Some(o)) if Some(written) != old_managed => {
                    let mut o = o.clone();
                    meta::meta_mut(&mut o).insert("managedFields".into(), written.clone());
                    Some(o)
                }
                _ => None,
            };
            apply::record_update(
                rewritten.as_ref().or(old),
                &mut new,
                &tracked_new,
                tracked_old.as_ref(),
                manager,
                sub,
                &info.api_version(),
                &lt,
            );
        }
        self.storage_form(info, &mut new)?;
        Ok(new)
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, kind: EventType, res: ResKey, object: Arc<Value>, old: Option<Arc<Value>>) {
        let ev = Arc::new(Event { rv: self.rv, kind, res, object, old, line: std::sync::OnceLock::new() });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }

    /// Stores `new` (unless it is a no-op or a dry run), emits the event, and completes a
    /// deletion whose finalizers are gone. Returns the object as the client sees it.
    fn commit(
        &mut self,
        info: &ResourceInfo,
        ok: ObjKey,
        mut new: Value,
        old: Option<Arc<Value>>,
        dry_run: bool,
    ) -> Value {
        if let Some(o) = &old
            && without_times(o)
                == without_times(&{
                    let mut c = new.clone();
                    meta::meta_mut(&mut c).insert("resourceVersion".into(), json!(rv_of(o)));
                    c
                })
        {
            return Self::present(info, o);
        }
        if dry_run {
            if let Some(o) = &old {
                meta::meta_mut(&mut new).insert("resourceVersion".into(), json!(rv_of(o)));
            }
            return Self::present(info, &new);
        }
        let key = info.key();
        if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && !self.blocks_removal(&key, &new) {
            let gone = self.remove(&key, &ok, new);
            self.run_gc();
            return Self::present(info, &gone);
        }
        let rv = self.bump();
        meta::meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let arc = Arc::new(new);
        let kind = if old.is_some() { EventType::Modified } else { EventType::Added };
        self.uids.insert(meta::uid_of(&arc).to_string(), (key.clone(), ok.clone()));
        self.objects.entry(key.clone()).or_default().insert(ok.clone(), arc.clone());
        if key == crd_key() {
            self.register_crd(&arc);
        }
        if key.0 == "apps"
            && matches!(key.1.as_str(), "deployments" | "statefulsets")
            && old.as_ref().is_none_or(|o| meta::generation(o) != meta::generation(&arc))
            && let Some(hook) = &self.deployment_hook
        {
            let _ = hook.send((key.clone(), ok.clone()));
        }
        self.emit(kind, key, arc.clone(), old);
        if meta::is_deleting(&arc) || self.gc_pending {
            self.run_gc();
        }
        Self::present(info, &arc)
    }

    /// Removes an object for good: bumps the resourceVersion and emits DELETED carrying it.
    fn remove(&mut self, key: &ResKey, ok: &ObjKey, mut last: Value) -> Value {
        let old = self.objects.get_mut(key).and_then(|m| m.remove(ok));
        let rv = self.bump();
        meta::meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
        self.uids.remove(meta::uid_of(&last));
        if *key == crd_key() {
            self.unregister_crd(&last);
        }
        let arc = Arc::new(last.clone());
        self.emit(EventType::Deleted, key.clone(), arc, old);
        self.gc_pending = true;
        last
    }

    /// Whether something other than finalizers keeps a deleting object alive
    /// (a namespace with content, a CRD with custom resources).
    fn blocks_removal(&self, key: &ResKey, obj: &Value) -> bool {
        if *key == ns_key() {
            let ns = meta::name(obj);
            return self.objects.iter().any(|(_, m)| m.keys().any(|(n, _)| n == ns));
        }
        if *key == crd_key() {
            let group = obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
            let plural = obj.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
            return self.count(&(group.to_string(), plural.to_string())) > 0;
        }
        false
    }

    /// Deletes an object: immediately when nothing holds it, otherwise by setting deletionTimestamp.
    pub fn delete(&mut self, info: &ResourceInfo, ns: &str, name: &str, opts: &DeleteOpts) -> ApiResult<Deleted> {
        let ok = (if info.namespaced { ns.to_string() } else { String::new() }, name.to_string());
        let key = info.key();
        let obj = self.lookup(&key, &ok).ok_or_else(|| StatusError::not_found(&info.group, &info.plural, name))?;
        if let Some(uid) = &opts.uid
            && uid != meta::uid_of(&obj)
        {
            return Err(StatusError::conflict(
                &info.group,
                &info.plural,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta::uid_of(&obj)),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != rv_of(&obj)
        {
            return Err(StatusError::conflict(
                &info.group,
                &info.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    rv_of(&obj)
                ),
            ));
        }
        if meta::is_deleting(&obj) {
            return Ok(Deleted::Pending(Self::present(info, &obj)));
        }
        let mut fins = meta::finalizers(&obj);
        match opts.propagation.as_deref() {
            Some("Foreground") => fins.push("foregroundDeletion".into()),
            Some("Orphan") => fins.push("orphan".into()),
            Some("Background") | None => {}
            Some(other) => {
                return Err(StatusError::invalid(
                    "meta.k8s.io",
                    "DeleteOptions",
                    "",
                    vec![Cause::new(
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        format!(
                            "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                        ),
                    )],
                ));
            }
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(Self::present(info, &obj)));
        }
        if fins.is_empty() && !self.blocks_removal(&key, &obj) {
            let gone = self.remove(&key, &ok, (*obj).clone());
            self.run_gc();
            return Ok(Deleted::Gone(Self::present(info, &gone)));
        }
        let mut new = (*obj).clone();
        {
            let m = meta::meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(meta::now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        meta::set_finalizers(&mut new, fins);
        if meta::generation(&obj) > 0 {
            let g = meta::generation(&obj) + 1;
            meta::meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        if key == ns_key() {
            new["status"] = json!({"phase": "Terminating"});
        }
        let rv = self.bump();
        meta::meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let arc = Arc::new(new);
        self.objects.entry(key.clone()).or_default().insert(ok.clone(), arc.clone());
        self.emit(EventType::Modified, key.clone(), arc.clone(), Some(obj));
        self.run_gc();
        Ok(match self.lookup(&key, &ok) {
            Some(cur) if meta::uid_of(&cur) == meta::uid_of(&arc) => Deleted::Pending(Self::present(info, &cur)),
            _ => Deleted::Pending(Self::present(info, &arc)),
        })
    }

    /// Internal status write used by controllers living inside the server (simulator, GC).
    pub fn write_internal(
        &mut self,
        key: &ResKey,
        ok: &ObjKey,
        manager: &str,
        subresource: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let old = self.lookup(key, ok)?;
        let info = self.internal_info(key, &old)?;
        let mut new = (*old).clone();
        f(&mut new);
        let opts =
            WriteOpts { manager: manager.to_string(), subresource: subresource.to_string(), ..Default::default() };
        let new = self.finish_write(&info, Some(&old), new, &opts, false).ok()?;
        Some(self.commit(&info, ok.clone(), new, Some(old), false))
    }

    /// The resource entry an internal write of `obj` uses: the storage version's, or for an
    /// object of a webhook-converted resource still stored in an older version, that version's
    /// (the write keeps the object's version and calls no webhook).
    fn internal_info(&self, key: &ResKey, obj: &Value) -> Option<Arc<ResourceInfo>> {
        let info = self.registry.storage(key)?;
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let Some(conv) = info.conversion.clone().filter(|_| api_version != info.api_version()) else {
            return Some(info);
        };
        let version = resources::split_api_version(api_version).1.to_string();
        let mut own = (*info).clone();
        own.schema = conv.schemas.get(&version).cloned();
        own.storage_version = version.clone();
        own.version = version;
        Some(Arc::new(own))
    }

    /// Every stored object of every resource (for the garbage collector).
    pub fn all_objects(&self) -> Vec<(ResKey, ObjKey, Arc<Value>)> {
        self.objects.iter().flat_map(|(k, m)| m.iter().map(move |(ok, v)| (k.clone(), ok.clone(), v.clone()))).collect()
    }

    /// Whether an object with this uid exists.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// Looks up an object by uid.
    pub fn by_uid(&self, uid: &str) -> Option<(ResKey, ObjKey, Arc<Value>)> {
        let (k, ok) = self.uids.get(uid)?;
        Some((k.clone(), ok.clone(), self.lookup(k, ok)?))
    }

    /// Completes pending removals for the garbage collector: removes a deleting object whose
    /// finalizers are empty and nothing blocks.
    pub fn finish_if_done(&mut self, key: &ResKey, ok: &ObjKey) -> bool {
        let Some(obj) = self.lookup(key, ok) else {
            return false;
        };
        if meta::is_deleting(&obj) && meta::finalizers(&obj).is_empty() && !self.blocks_removal(key, &obj) {
            self.remove(key, ok, (*obj).clone());
            return true;
        }
        false
    }

    /// Runs the garbage collector until nothing changes.
    pub fn run_gc(&mut self) {
        if self.in_gc {
            return;
        }
        self.in_gc = true;
        self.gc_pending = false;
        crate::gc::collect(self);
        self.gc_pending = false;
        self.in_gc = false;
    }

    fn register_crd(&mut self, crd: &Value) {
        let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
        let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
        self.registry.remove(group, plural);
        for info in crd_resources(crd) {
            self.registry.insert(info);
        }
    }

    fn unregister_crd(&mut self, crd: &Value) {
        let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
        let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
        self.registry.remove(group, plural);
        self.objects.remove(&(group.to_string(), plural.to_string()));
    }

    /// Drops the retained history: every watch from an older resourceVersion gets 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

/// A CRD schema with `metadata`, `apiVersion` and `kind` left to the server's own handling.
pub(crate) fn strip_meta_props(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(p) = s.get_mut("properties").and_then(Value::as_object_mut) {
        p.remove("metadata");
        p.remove("apiVersion");
        p.remove("kind");
    }
    if let Some(p) = s.get_mut("properties").and_then(Value::as_object_mut) {
        p.insert("metadata".into(), json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
    }
    s
}

/// A server-side apply naming a field the schema does not declare, as the real server's
/// structured-merge-diff reports it (an error without a reason).
fn apply_unknown_field(info: &ResourceInfo, ns: &str, name: &str, field: &str) -> StatusError {
    let object = if ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") };
    StatusError::new(
        500,
        "",
        format!(
            "failed to create typed patch object ({object}; {}, Kind={}): .{field}: field not declared in schema",
            info.api_version(),
            info.kind
        ),
    )
}

fn strict_error(info: &ResourceInfo, pruned: &[String]) -> StatusError {
    let list: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{p}\"")).collect();
    StatusError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
        info.kind,
        info.version,
        info.kind,
        list.join(", ")
    ))
}

/// Validates a CRD and fills its status (names accepted, established, stored versions).
/// `status_write`: a `/status` write, whose `storedVersions` are taken as given, unchecked, as
/// kube-apiserver does (a client trims them there after a storage migration); other writes add
/// the storage version and check the list against `spec.versions`.
fn crd_prepare(crd: &mut Value, name: &str, status_write: bool) -> ApiResult<()> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("").to_string();
    let kind = crd.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or("").to_string();
    let mut causes = Vec::new();
    if group.is_empty() {
        causes.push(Cause::new("FieldValueRequired", "spec.group", "Required value"));
    }
    if plural.is_empty() {
        causes.push(Cause::new("FieldValueRequired", "spec.names.plural", "Required value"));
    }
    if kind.is_empty() {
        causes.push(Cause::new("FieldValueRequired", "spec.names.kind", "Required value"));
    }
    if !matches!(crd.pointer("/spec/scope").and_then(Value::as_str), Some("Namespaced" | "Cluster")) {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.scope",
            "Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
        ));
    }
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    }
    let storage: Vec<&Value> =
        versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).collect();
    if !versions.is_empty() && storage.len() != 1 {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    causes.extend(crd_conversion_causes(crd));
    if !causes.is_empty() {
        return Err(StatusError::invalid("apiextensions.k8s.io", "CustomResourceDefinition", name, causes));
    }
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if accepted.get("singular").is_none() {
        accepted["singular"] = json!(kind.to_lowercase());
        crd["spec"]["names"]["singular"] = json!(kind.to_lowercase());
    }
    if accepted.get("listKind").is_none() {
        accepted["listKind"] = json!(format!("{kind}List"));
        crd["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
    }
    let storage_version = storage.first().and_then(|v| v.get("name")).cloned().unwrap_or(json!(""));
    let now = meta::now();
    let mut stored: Vec<Value> =
        crd.pointer("/status/storedVersions").and_then(Value::as_array).cloned().unwrap_or_default();
    // The v1 API defaults an empty list to the storage version.
    if (!status_write || stored.is_empty()) && !stored.contains(&storage_version) {
        stored.push(storage_version);
    }
    let causes = if status_write { Vec::new() } else { stored_versions_causes(&stored, &versions) };
    if !causes.is_empty() {
        return Err(StatusError::invalid("apiextensions.k8s.io", "CustomResourceDefinition", name, causes));
    }
    let conditions = json!([
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": crd.pointer("/status/conditions/0/lastTransitionTime").cloned().unwrap_or(json!(now))},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": crd.pointer("/status/conditions/1/lastTransitionTime").cloned().unwrap_or(json!(now))},
    ]);
    crd["status"] = json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored});
    Ok(())
}

/// `status.storedVersions` entries missing from `spec.versions` (a spec write always lists the
/// storage version, the rest of kube-apiserver's `ValidateCustomResourceDefinitionStoredVersions`).
fn stored_versions_causes(stored: &[Value], versions: &[Value]) -> Vec<Cause> {
    let missing = |s: &&Value| !versions.iter().any(|v| v.get("name") == Some(*s));
    stored
        .iter()
        .enumerate()
        .filter(|(_, s)| missing(s))
        .map(|(i, s)| {
            let v = s.as_str().unwrap_or("");
            Cause::new(
                "FieldValueInvalid",
                format!("status.storedVersions[{i}]"),
                format!(
                    "Invalid value: {s}: missing from spec.versions; {v} was previously a storage version, and must remain in spec.versions until a storage migration ensures no data remains persisted in {v} and removes {v} from status.storedVersions"
                ),
            )
        })
        .collect()
}

/// `spec.conversion` checks (kube-apiserver's `validateCustomResourceConversion`; the field
/// paths are the internal ones it reports).
fn crd_conversion_causes(crd: &Value) -> Vec<Cause> {
    let Some(conversion) = crd.pointer("/spec/conversion") else {
        return Vec::new();
    };
    let strategy = conversion.get("strategy").and_then(Value::as_str).unwrap_or("");
    let client = conversion.pointer("/webhook/clientConfig");
    let review_versions = conversion.pointer("/webhook/conversionReviewVersions");
    let base = "spec.conversion";
    match strategy {
        "Webhook" => webhook_causes(client, review_versions),
        // The v1 API defaults an empty strategy to None.
        "None" | "" => {
            let mut causes = Vec::new();
            for (set, f) in
                [(client.is_some(), "webhookClientConfig"), (review_versions.is_some(), "conversionReviewVersions")]
            {
                if set {
                    let msg = "Forbidden: should not be set when strategy is not set to Webhook";
                    causes.push(Cause::new("FieldValueForbidden", format!("{base}.{f}"), msg));
                }
            }
            causes
        }
        other => vec![Cause::new(
            "FieldValueNotSupported",
            format!("{base}.strategy"),
            format!("Unsupported value: \"{other}\": supported values: \"None\", \"Webhook\""),
        )],
    }
}

fn webhook_causes(client: Option<&Value>, review_versions: Option<&Value>) -> Vec<Cause> {
    let cc = "spec.conversion.webhookClientConfig";
    let mut causes = Vec::new();
    match client {
        None => causes.push(Cause::new(
            "FieldValueRequired",
            cc,
            "Required value: required when strategy is set to Webhook",
        )),
        Some(c) => match (c.get("url").and_then(Value::as_str), c.get("service").is_some()) {
            (Some(_), true) | (None, false) => causes.push(Cause::new(
                "FieldValueRequired",
                cc,
                "Required value: exactly one of url or service is required",
            )),
            (Some(url), false) => causes.extend(webhook_url_cause(url)),
            (None, true) => {}
        },
    }
    let versions: Vec<&str> = review_versions
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let field = "spec.conversion.conversionReviewVersions";
    if versions.is_empty() {
        causes.push(Cause::new("FieldValueRequired", field, "Required value"));
    } else if !versions.iter().any(|v| matches!(*v, "v1" | "v1beta1")) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {}: must include at least one of v1, v1beta1", json!(versions)),
        ));
    }
    causes
}

/// A webhook URL must be https with a host (kube-apiserver's `ValidateWebhookURL`).
fn webhook_url_cause(url: &str) -> Option<Cause> {
    const FORM: &str = "; desired format: https://host[/path]";
    let field = "spec.conversion.webhookClientConfig.url";
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    if scheme != "https" {
        let msg = format!("Invalid value: \"{scheme}\": 'https' is the only allowed URL scheme{FORM}");
        return Some(Cause::new("FieldValueInvalid", field, msg));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    host.is_empty()
        .then(|| Cause::new("FieldValueInvalid", field, format!("Invalid value: \"\": host must be specified{FORM}")))
}

/// The resources a CRD serves, one per served version.
pub fn crd_resources(crd: &Value) -> Vec<ResourceInfo> {
    let spec = crd.get("spec").cloned().unwrap_or(json!({}));
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let group = s("/group");
    let plural = s("/names/plural");
    let kind = s("/names/kind");
    let singular = {
        let v = s("/names/singular");
        if v.is_empty() { kind.to_lowercase() } else { v }
    };
    let strs = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let conversion = crate::webhook::WebhookConversion::from_crd(crd).map(Arc::new);
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .map(|v| ResourceInfo {
            group: group.clone(),
            version: v.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            status: v.pointer("/subresources/status").is_some(),
            generation: true,
            short_names: strs("/names/shortNames"),
            categories: strs("/names/categories"),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            custom: true,
            storage_version: storage_version.clone(),
            scale: v.pointer("/subresources/scale").map(|sc| {
                let f = |k: &str| sc.get(k).and_then(Value::as_str).map(str::to_string);
                (
                    f("specReplicasPath").unwrap_or_else(|| ".spec.replicas".into()),
                    f("statusReplicasPath").unwrap_or_else(|| ".status.replicas".into()),
                    f("labelSelectorPath"),
                )
            }),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| {
                            let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                            (f("name"), f("type"), f("jsonPath"))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            conversion: conversion.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (State, Arc<ResourceInfo>, Arc<ResourceInfo>) {
        let s = State::new(100);
        let cm = s.registry.get("", "v1", "configmaps").unwrap();
        let dep = s.registry.get("apps", "v1", "deployments").unwrap();
        (s, cm, dep)
    }

    fn opts() -> WriteOpts {
        WriteOpts { manager: "test".into(), ..Default::default() }
    }

    #[test]
    fn resource_versions_are_global_and_no_op_writes_keep_them() {
        let (mut s, cm, _) = setup();
        let a = s.create(&cm, "default", json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), &opts()).unwrap();
        let b = s.create(&cm, "default", json!({"metadata": {"name": "b"}}), &opts()).unwrap();
        let rv = |o: &Value| rv_of(o).parse::<u64>().unwrap();
        assert_eq!(rv(&b), rv(&a) + 1);
        let before = s.rv;
        let same =
            s.patch(&cm, "default", "a", PatchType::Merge, &json!({"data": {"k": "v"}}), false, &opts()).unwrap();
        assert_eq!(rv(&same), rv(&a));
        assert_eq!(s.rv, before, "no-op write does not consume a resourceVersion");
        assert!(a.get("metadata").unwrap().get("generation").is_none(), "ConfigMaps have no generation");
    }

    #[test]
    fn deleted_event_carries_new_resource_version() {
        let (mut s, cm, _) = setup();
        s.create(&cm, "default", json!({"metadata": {"name": "a"}}), &opts()).unwrap();
        let Deleted::Gone(last) = s.delete(&cm, "default", "a", &DeleteOpts::default()).unwrap() else {
            panic!("no finalizers: deleted at once");
        };
        let ev = s.history.back().unwrap();
        assert_eq!(ev.kind, EventType::Deleted);
        assert_eq!(rv_of(&last), s.rv.to_string());
        assert_eq!(rv_of(&ev.object), s.rv.to_string());
    }

    #[test]
    fn history_is_bounded_and_compaction_is_tracked() {
        let mut s = State::new(3);
        let cm = s.registry.get("", "v1", "configmaps").unwrap();
        for i in 0..5 {
            s.create(&cm, "default", json!({"metadata": {"name": format!("c{i}")}}), &opts()).unwrap();
        }
        assert_eq!(s.history.len(), 3);
        assert_eq!(s.compacted, s.rv - 3);
        s.compact();
        assert!(s.history.is_empty());
        assert_eq!(s.compacted, s.rv);
    }

    #[test]
    fn generation_ignores_metadata_and_status() {
        let (mut s, _, dep) = setup();
        let body = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"replicas": 9}});
        let d = s.create(&dep, "default", body, &opts()).unwrap();
        assert_eq!(meta::generation(&d), 1);
        assert!(d.get("status").is_none(), "status dropped on create");
        let d = s
            .patch(
                &dep,
                "default",
                "d",
                PatchType::Merge,
                &json!({"metadata": {"annotations": {"a": "b"}}}),
                false,
                &opts(),
            )
            .unwrap();
        assert_eq!(meta::generation(&d), 1);
        let status_opts = WriteOpts { subresource: "status".into(), ..opts() };
        let d = s
            .patch(
                &dep,
                "default",
                "d",
                PatchType::Merge,
                &json!({"status": {"replicas": 1}, "spec": {"replicas": 4}}),
                false,
                &status_opts,
            )
            .unwrap();
        assert_eq!(meta::generation(&d), 1);
        assert_eq!(d["spec"]["replicas"], 1);
        let d =
            s.patch(&dep, "default", "d", PatchType::Merge, &json!({"spec": {"replicas": 2}}), false, &opts()).unwrap();
        assert_eq!(meta::generation(&d), 2);
        assert_eq!(d["status"]["replicas"], 1);
    }

    #[test]
    fn dry_run_persists_nothing() {
        let (mut s, cm, _) = setup();
        let dry = WriteOpts { dry_run: true, ..opts() };
        let before = s.rv;
        let o = s.create(&cm, "default", json!({"metadata": {"name": "a"}}), &dry).unwrap();
        assert_eq!(meta::name(&o), "a");
        assert_eq!(s.rv, before);
        assert!(s.get(&cm, "default", "a").is_err());
    }

    #[test]
    fn crd_registration_serves_and_unserves() {
        let mut s = State::new(100);
        let crds = s.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let crd = json!({
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"plural": "things", "kind": "Thing"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        let made = s.create(&crds, "", crd, &opts()).unwrap();
        assert_eq!(made["status"]["conditions"][1]["type"], "Established");
        assert_eq!(made["spec"]["names"]["singular"], "thing");
        let things = s.registry.get("example.com", "v1", "things").expect("served");
        assert!(!things.namespaced);
        s.delete(&crds, "", "things.example.com", &DeleteOpts::default()).unwrap();
        assert!(s.registry.get("example.com", "v1", "things").is_none());

        let bad = json!({"metadata": {"name": "wrong"}, "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "things", "kind": "Thing"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        assert_eq!(s.create(&crds, "", bad, &opts()).unwrap_err().code, 422);
    }

    fn webhook_crd(storage: &str, conversion: Value) -> Value {
        let version = |name: &str| json!({"name": name, "served": true, "storage": name == storage});
        json!({"metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"plural": "things", "kind": "Thing"},
                     "versions": [version("v1alpha1"), version("v1")], "conversion": conversion}})
    }

    #[test]
    fn crd_conversion_settings_are_validated() {
        let mut s = State::new(100);
        let crds = s.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let messages = |s: &mut State, conversion: Value| -> String {
            s.create(&crds, "", webhook_crd("v1", conversion), &opts()).unwrap_err().message
        };
        let m = messages(&mut s, json!({"strategy": "Magic"}));
        assert!(m.contains("spec.conversion.strategy: Unsupported value: \"Magic\""), "{m}");
        let m = messages(&mut s, json!({"strategy": "None", "webhook": {"clientConfig": {"url": "https://x"}}}));
        assert!(m.contains("spec.conversion.webhookClientConfig: Forbidden"), "{m}");
        let m = messages(
            &mut s,
            json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v9"], "clientConfig": {"url": "https://"}}}),
        );
        assert!(m.contains("url: Invalid value: \"\": host must be specified"), "{m}");
        assert!(
            m.contains("conversionReviewVersions: Invalid value: [\"v9\"]: must include at least one of v1, v1beta1"),
            "{m}"
        );
        let m = messages(&mut s, json!({"strategy": "Webhook"}));
        assert!(m.contains("webhookClientConfig: Required value: required when strategy is set to Webhook"), "{m}");
    }

    #[test]
    fn internal_writes_keep_an_old_stored_version_and_call_no_webhook() {
        let mut s = State::new(100);
        let crds = s.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let conversion = json!({"strategy": "Webhook",
            "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:1/"}}});
        s.create(&crds, "", webhook_crd("v1alpha1", conversion.clone()), &opts()).unwrap();
        let alpha = s.registry.get("example.com", "v1alpha1", "things").unwrap();
        s.create(&alpha, "", json!({"metadata": {"name": "t"}}), &opts()).unwrap();
        let mut crd = s.get(&crds, "", "things.example.com").unwrap();
        crd["spec"] = webhook_crd("v1", conversion)["spec"].clone();
        s.update(&crds, "", "things.example.com", crd, &opts()).unwrap();

        let ok = (String::new(), "t".to_string());
        let written = s.write_internal(&alpha.key(), &ok, "gc", "", |o| {
            meta::meta_mut(o).insert("labels".into(), json!({"gc": "done"}));
        });
        let written = written.expect("written without a webhook");
        assert_eq!(written["apiVersion"], "example.com/v1alpha1", "still stored in v1alpha1");
        assert_eq!(written["metadata"]["labels"]["gc"], "done");
        assert!(s.memo.take_pending().is_none());
    }
}
