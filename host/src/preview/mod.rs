//! `wasmop preview`'s engine: runs a candidate plugin (and policies) on the live parents of its
//! kind and their children, with the checks `wasmop run` makes, and reports per parent what it
//! would change — children created, adopted, updated (field by field) or deleted, status fields —
//! or why it would fail. It only reads: lists, and a get for each child it would create.
//!
//! The revision mark every child carries changes with any new plugin file, so re-stamping a
//! child whose content stays the same is not counted as a change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, TypeMeta};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::apply::{self, ChildKey, Owner, Ownership};
use crate::diff;
pub use crate::diff::FieldChange;
use crate::discovery::{self, KindNotServed};
use crate::plugin::{Desired, OperatorPlugin, ReadScope, ReconcileRequest};
use crate::policy::{Finding, PolicyChain, describe};
use crate::reconcile::related::{ReadKindCache, Related};
use crate::reconcile::{Conflict, ReconcileError, audit_condition, conflicts_message, status_report};
use crate::status;

/// Longest failure message kept per parent.
const MAX_MESSAGE: usize = 2048;

/// Why a preview could not run at all (one parent failing is an outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The parent kind or a child kind is not served by the cluster.
    #[error(transparent)]
    KindNotServed(#[from] KindNotServed),
    /// Listing objects failed.
    #[error("listing {what}: {source}")]
    List {
        /// What was being listed.
        what: String,
        /// The API error.
        source: kube::Error,
    },
}

/// What the candidate would do to the parents, in the order of their keys.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewReport {
    /// The plugin's name.
    pub plugin: String,
    /// The candidate's revision (what every child it writes would carry).
    pub revision: String,
    /// One entry per parent.
    pub parents: Vec<ParentPreview>,
    /// Counts per outcome.
    pub summary: Summary,
}

/// Parents per outcome.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Parents the candidate leaves as they are.
    pub unchanged: usize,
    /// Parents whose children or status it would change.
    pub changed: usize,
    /// Parents on which it would fail.
    pub failing: usize,
}

/// What the candidate would do to one parent.
#[derive(Debug, Serialize)]
pub struct ParentPreview {
    /// `Kind namespace/name`.
    pub parent: String,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The outcome for one parent.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// Nothing would be written but the revision mark.
    Unchanged,
    /// Children or status would change.
    Changed {
        /// Each child that would be written or deleted.
        children: Vec<ChildChange>,
        /// Status fields that would change.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        status: Vec<FieldChange>,
    },
    /// The reconcile would fail: the parent's `Ready=False` reason and message.
    Failing {
        /// The condition reason (`PluginTrap`, `PolicyDenied`, `ChildConflict`…).
        reason: String,
        /// What went wrong.
        message: String,
    },
}

/// A child that would be written or deleted.
#[derive(Debug, Serialize)]
pub struct ChildChange {
    /// `Kind namespace/name`.
    pub object: String,
    /// `create`, `adopt`, `update` or `delete`.
    pub action: &'static str,
    /// For an update, each field that would change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// A preview of one candidate plugin against a cluster.
pub struct Preview {
    client: Client,
    plugin: Arc<OperatorPlugin>,
    policies: PolicyChain,
    settings: Option<String>,
    namespace: Option<String>,
    concurrency: usize,
}

/// A declared child kind with its live children by controller-owner UID.
struct ChildKind {
    resource: ApiResource,
    by_owner: HashMap<String, Vec<DynamicObject>>,
}

impl Preview {
    /// A preview of `plugin` on every parent of its kind, without policies or settings.
    pub fn new(client: Client, plugin: Arc<OperatorPlugin>) -> Self {
        let concurrency = std::thread::available_parallelism().map_or(2, usize::from);
        Preview { client, plugin, policies: PolicyChain::default(), settings: None, namespace: None, concurrency }
    }

    /// The policies reviewing the candidate's children, as `wasmop run --policies` would.
    #[must_use]
    pub fn policies(mut self, policies: PolicyChain) -> Self {
        self.policies = policies;
        self
    }

    /// The settings passed to the plugin.
    #[must_use]
    pub fn settings(mut self, settings: Option<String>) -> Self {
        self.settings = settings;
        self
    }

    /// Only the parents (and children) of this namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Reads the parents and children and previews each parent (deleting parents are skipped:
    /// they are finalized, not reconciled).
    pub async fn run(&self) -> Result<PreviewReport, PreviewError> {
        let meta = self.plugin.metadata();
        let (parent_ar, _) = discovery::resolve(&self.client, &meta.parent).await?;
        let parents = self.list(&parent_ar, ListParams::default()).await?;
        let selector = format!("{}=wasmop,{}={}", apply::MANAGED_BY_LABEL, apply::PLUGIN_LABEL, meta.name);
        let mut kinds = Vec::new();
        for child in &meta.children {
            let (resource, _) = discovery::resolve(&self.client, &child.gvk).await?;
            let mut by_owner: HashMap<String, Vec<DynamicObject>> = HashMap::new();
            for object in self.list(&resource, ListParams::default().labels(&selector)).await? {
                if let Some(owner) = object.owner_references().iter().find(|o| o.controller == Some(true)) {
                    by_owner.entry(owner.uid.clone()).or_default().push(object);
                }
            }
            kinds.push(ChildKind { resource, by_owner });
        }
        let related = Arc::new(self.related().await?);
        let live = parents.into_iter().filter(|p| p.meta().deletion_timestamp.is_none());
        let mut previews: Vec<ParentPreview> = futures::stream::iter(live)
            .map(|parent| self.parent(&parent_ar, &kinds, &related, parent))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        previews.sort_by(|a, b| a.parent.cmp(&b.parent));
        let mut summary = Summary::default();
        for p in &previews {
            match p.outcome {
                Outcome::Unchanged => summary.unchanged += 1,
                Outcome::Changed { .. } => summary.changed += 1,
                Outcome::Failing { .. } => summary.failing += 1,
            }
        }
        let revision = self.plugin.file().revision().to_string();
        Ok(PreviewReport { plugin: meta.name.clone(), revision, parents: previews, summary })
    }

    /// The objects of the kinds the plugin reads, listed once (in the namespace, if one is set,
    /// unless the plugin reads the kind cluster-wide): its selectors pick from them as from the
    /// host's caches.
    async fn related(&self) -> Result<Related, PreviewError> {
        let mut kinds = Vec::new();
        for read in &self.plugin.metadata().reads {
            let (resource, namespaced) = discovery::resolve(&self.client, &read.gvk).await?;
            let within = if read.scope == ReadScope::Cluster { None } else { self.namespace.clone() };
            let objects = self.list_in(within.as_deref(), &resource, ListParams::default()).await?;
            kinds.push(ReadKindCache::filled(read.clone(), resource, namespaced, objects));
        }
        Ok(Related::new(kinds))
    }

    /// Every object of `resource` (in the namespace, if one is set), a page at a time.
    async fn list(&self, resource: &ApiResource, params: ListParams) -> Result<Vec<DynamicObject>, PreviewError> {
        self.list_in(self.namespace.as_deref(), resource, params).await
    }

    /// Every object of `resource` in `namespace` (or all), a page at a time.
    async fn list_in(
        &self,
        namespace: Option<&str>,
        resource: &ApiResource,
        params: ListParams,
    ) -> Result<Vec<DynamicObject>, PreviewError> {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        let objects = crate::paging::all(params, |params| {
            let api = &api;
            async move { api.list(&params).await }
        })
        .await
        .map_err(|source| PreviewError::List {
            what: format!("{} ({})", resource.plural, resource.api_version),
            source,
        })?;
        // A real server's list items carry no apiVersion and kind; the live objects are
        // compared with desired ones that do.
        let types = TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() };
        Ok(objects.into_iter().map(|o| DynamicObject { types: Some(types.clone()), ..o }).collect())
    }

    /// Previews one parent.
    async fn parent(
        &self,
        parent_ar: &ApiResource,
        kinds: &[ChildKind],
        related: &Arc<Related>,
        parent: DynamicObject,
    ) -> ParentPreview {
        let name = format!("{} {}", parent_ar.kind, crate::reconcile::finalizer::describe(&parent));
        let outcome = match self.outcome(parent_ar, kinds, related, &parent).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failing {
                reason: e.condition_reason().to_string(),
                message: crate::text::cap(&e.to_string(), MAX_MESSAGE),
            },
        };
        ParentPreview { parent: name, outcome }
    }

    async fn outcome(
        &self,
        parent_ar: &ApiResource,
        kinds: &[ChildKind],
        related: &Arc<Related>,
        parent: &DynamicObject,
    ) -> Result<Outcome, ReconcileError> {
        let uid = parent.uid().unwrap_or_default();
        let observed: HashMap<ChildKey, &DynamicObject> = kinds
            .iter()
            .flat_map(|kind| {
                let children = kind.by_owner.get(&uid).into_iter().flatten();
                children.map(|o| (ChildKey::of_object(&kind.resource, o), o))
            })
            .collect();
        let (desired, findings) = self.compute(parent_ar, parent, &observed, related.clone()).await?;
        let owner = Owner {
            api_version: parent_ar.api_version.clone(),
            kind: parent_ar.kind.clone(),
            name: parent.name_any(),
            uid: uid.clone(),
            // A sharded operator marks its children with their parent's shard: keep the mark.
            shard: observed.values().find_map(|child| child.labels().get(crate::shard::scope::SHARD_LABEL).cloned()),
        };
        let (mut children, conflicts) = self.writes(kinds, &owner, &desired, &observed).await?;
        let wanted: HashSet<ChildKey> = desired.children.iter().map(ChildKey::of).collect();
        let mut gone: Vec<(&ChildKey, &DynamicObject)> = observed
            .iter()
            .filter(|(key, child)| !wanted.contains(key) && apply::prunable(**child, &uid))
            .map(|(key, child)| (key, *child))
            .collect();
        gone.sort_by(|a, b| a.0.cmp(b.0));
        for (key, child) in gone {
            let object = format!("{} {}", key.kind, crate::reconcile::finalizer::describe(child));
            children.push(ChildChange { object, action: "delete", fields: Vec::new() });
        }
        if !conflicts.is_empty() {
            return Err(ReconcileError::ChildConflict { message: conflicts_message(&conflicts) });
        }
        // As `run` reports it, monitoring policies' findings included.
        let mut report = status_report(&desired, &[]);
        report.conditions.extend(audit_condition(&self.policies, &findings));
        let current = &parent.data["status"];
        let status = match status::next_status(current, parent.meta().generation, &report, &status::now()) {
            Some(next) => {
                diff::both(&next, current).into_iter().filter(|c| !c.path.ends_with("lastTransitionTime")).collect()
            }
            None => Vec::new(),
        };
        if children.is_empty() && status.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        Ok(Outcome::Changed { children, status })
    }

    /// The plugin's answer, reviewed by the policies, as `run`'s compute and review steps get
    /// it, with the monitoring policies' findings.
    async fn compute(
        &self,
        parent_ar: &ApiResource,
        parent: &DynamicObject,
        observed: &HashMap<ChildKey, &DynamicObject>,
        related: Arc<Related>,
    ) -> Result<(Desired, Vec<Finding>), ReconcileError> {
        let mut parent_json = serde_json::to_value(parent)?;
        parent_json["apiVersion"] = json!(parent_ar.api_version);
        parent_json["kind"] = json!(parent_ar.kind);
        let mut children: Vec<(&ChildKey, &DynamicObject)> = observed.iter().map(|(k, o)| (k, *o)).collect();
        children.sort_by(|a, b| a.0.cmp(b.0));
        let children = children.into_iter().map(|(_, o)| serde_json::to_value(o)).collect::<Result<Vec<_>, _>>()?;
        let request = ReconcileRequest {
            parent: parent_json.clone(),
            children,
            finalizing: false,
            settings: self.settings.clone(),
            related: Vec::new(),
        };
        let (plugin, policies) = (self.plugin.clone(), self.policies.clone());
        let answer = tokio::task::spawn_blocking(move || -> Result<(Desired, Vec<Finding>), ReconcileError> {
            let mut desired = related.reconcile(&*plugin, request)?;
            let reviewed = policies.review(&parent_json, std::mem::take(&mut desired.children))?;
            desired.children = reviewed.children;
            Ok((desired, reviewed.findings))
        })
        .await??;
        Ok(answer)
    }

    /// The children the candidate would write, with their changed fields, and the ones it may
    /// not write (someone else's).
    async fn writes(
        &self,
        kinds: &[ChildKind],
        owner: &Owner,
        desired: &Desired,
        observed: &HashMap<ChildKey, &DynamicObject>,
    ) -> Result<(Vec<ChildChange>, Vec<Conflict>), ReconcileError> {
        let (mut changes, mut conflicts) = (Vec::new(), Vec::new());
        let revision = self.plugin.file().revision();
        for mut child in desired.children.clone() {
            apply::mark_child(&mut child, owner, &self.plugin.metadata().name, revision);
            let object = describe(&child);
            let Some(kind) = kinds.iter().find(|k| {
                child["kind"].as_str() == Some(k.resource.kind.as_str())
                    && child["apiVersion"].as_str() == Some(k.resource.api_version.as_str())
            }) else {
                return Err(ReconcileError::UnknownChildKind { object });
            };
            let live = match observed.get(&ChildKey::of(&child)) {
                Some(live) => Live::Ours(serde_json::to_value(live)?),
                None => self.existing(kind, &child, &owner.uid).await?,
            };
            let change = match live {
                Live::Absent => ChildChange { object, action: "create", fields: Vec::new() },
                Live::Adoptable => ChildChange { object, action: "adopt", fields: Vec::new() },
                Live::Theirs(by) => {
                    conflicts.push(Conflict { object, owner: by });
                    continue;
                }
                Live::Ours(live) => {
                    let fields = field_changes(&child, &live);
                    if fields.is_empty() {
                        continue;
                    }
                    ChildChange { object, action: "update", fields }
                }
            };
            changes.push(change);
        }
        Ok((changes, conflicts))
    }

    /// The object of the desired child's name that the list did not show as this parent's.
    async fn existing(&self, kind: &ChildKind, child: &Value, parent_uid: &str) -> Result<Live, ReconcileError> {
        let found = apply::existing(&self.client, &kind.resource, child, parent_uid)
            .await
            .map_err(|source| ReconcileError::Api { action: format!("reading {}", describe(child)), source })?;
        Ok(match found {
            None => Live::Absent,
            Some((object, Ownership::Ours)) => Live::Ours(serde_json::to_value(&object)?),
            Some((_, Ownership::Adoptable)) => Live::Adoptable,
            Some((_, Ownership::Conflict(by))) => Live::Theirs(by),
        })
    }
}

/// What exists under a desired child's name.
enum Live {
    /// Nothing: the child would be created.
    Absent,
    /// This parent's child, as JSON.
    Ours(Value),
    /// An object without a controller that opted in to adoption.
    Adoptable,
    /// Someone else's object, and whose.
    Theirs(String),
}

/// The fields of the marked `child` that would change on `live`, leaving out the host's
/// revision and applied-configuration marks (they change with every new plugin file).
fn field_changes(child: &Value, live: &Value) -> Vec<FieldChange> {
    let marks =
        [apply::REVISION_ANNOTATION, apply::APPLIED_HASH_ANNOTATION].map(|m| format!("metadata.annotations.{m}"));
    let mut fields = diff::changed(child, live);
    fields.extend(diff::removed(child, live, apply::FIELD_MANAGER));
    fields.retain(|f| !marks.contains(&f.path));
    fields
}
