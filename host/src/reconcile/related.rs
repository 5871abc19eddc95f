//! Related objects of one plugin's parents: the caches of the kinds the plugin declares it
//! reads, the selections each parent made ([`RelatedIndex`]), and the resolution of a parent's
//! selectors from those caches — checked against the declaration, capped, and with zero API
//! requests.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};

use crate::cached::CachedObject;
use crate::plugin::{
    Desired, Gvk, PluginError, ReadKind, ReadScope, ReconcileRequest, RelatedObjects, Selector, Target,
};
use crate::related::{Changed, KindRef, RelatedIndex, Selection, parse_labels};

/// Most selectors one parent may return: each is an entry in the index.
pub const MAX_SELECTORS: usize = 64;
/// Entries the index may hold beyond the live parents before it is swept.
const SWEEP_SLACK: usize = 1024;

/// A kind the plugin reads, with the cache of its objects.
pub struct ReadKindCache {
    /// What the plugin declared.
    pub read: ReadKind,
    /// How to reach objects of the kind.
    pub resource: ApiResource,
    /// Whether the kind is namespaced.
    pub namespaced: bool,
    /// Its objects (metadata only when the plugin declared so), kept current by a watch.
    pub store: Store<CachedObject>,
}

impl ReadKindCache {
    /// A cache of `read` holding `objects` (listed once, as `wasmop preview` and the offline
    /// tools do), not kept current by a watch.
    pub fn filled(
        read: ReadKind,
        resource: ApiResource,
        namespaced: bool,
        objects: impl IntoIterator<Item = DynamicObject>,
    ) -> Self {
        use kube::runtime::watcher::Event;
        let mut writer = kube::runtime::reflector::store::Writer::new(resource.clone());
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(CachedObject::from(object)));
        }
        writer.apply_watcher_event(&Event::InitDone);
        ReadKindCache { read, resource, namespaced, store: writer.as_reader() }
    }
}

/// A parent, as the index names it: namespace and name (compact: no UID, no API resource; the
/// index shares one copy of each namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParentKey {
    /// Its namespace (`None` when cluster-scoped).
    pub namespace: Option<Arc<str>>,
    /// Its name.
    pub name: Arc<str>,
}

impl ParentKey {
    /// The key of `parent`.
    pub fn of(parent: &impl kube::Resource) -> ParentKey {
        let meta = parent.meta();
        ParentKey {
            namespace: meta.namespace.as_deref().map(Arc::from),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }

    /// The key of a parent given as JSON.
    pub fn of_json(parent: &Value) -> ParentKey {
        let meta = &parent["metadata"];
        ParentKey {
            namespace: meta["namespace"].as_str().map(Arc::from),
            name: meta["name"].as_str().unwrap_or_default().into(),
        }
    }

    /// The controller's reference to the parent of kind `resource`.
    pub fn object_ref(&self, resource: &ApiResource) -> ObjectRef<CachedObject> {
        let oref = ObjectRef::new_with(&self.name, resource.clone());
        match &self.namespace {
            Some(ns) => oref.within(ns),
            None => oref,
        }
    }
}

/// The related objects of one plugin's parents: one cache per declared kind and one index.
pub struct Related {
    /// The declared kinds, in the plugin's order.
    pub kinds: Vec<ReadKindCache>,
    index: Mutex<RelatedIndex<ParentKey>>,
}

/// The objects a parent's selectors picked: `(selector id, objects)` in the selectors' order.
pub type Picked = RelatedObjects;

impl Related {
    /// Related objects over these caches, with an empty index.
    pub fn new(kinds: Vec<ReadKindCache>) -> Related {
        Related { kinds, index: Mutex::new(RelatedIndex::new()) }
    }

    /// Related objects over caches filled from `objects` (a file's), for the offline tools: a
    /// kind is taken as namespaced unless its objects have no namespace, and its plural is
    /// guessed. Objects of kinds not in `reads` are ignored.
    pub fn offline(reads: &[ReadKind], objects: &[Value]) -> Related {
        let kinds = reads
            .iter()
            .map(|read| {
                let gvk = kube::core::GroupVersionKind::gvk(&read.gvk.group, &read.gvk.version, &read.gvk.kind);
                let mine: Vec<DynamicObject> = objects
                    .iter()
                    .filter(|o| read.gvk.matches(o))
                    .filter_map(|o| serde_json::from_value(o.clone()).ok())
                    .collect();
                let namespaced = mine.is_empty() || mine.iter().any(|o| o.metadata.namespace.is_some());
                ReadKindCache::filled(read.clone(), ApiResource::from_gvk(&gvk), namespaced, mine)
            })
            .collect();
        Related::new(kinds)
    }

    /// Reconciles `req` with `plugin`, the related objects its selectors pick resolved here (in
    /// one sandbox for a WebAssembly plugin): what the reconcile pipeline and the offline tools
    /// all do.
    pub fn reconcile(&self, plugin: &dyn super::Reconciler, req: ReconcileRequest) -> Result<Desired, PluginError> {
        let key = ParentKey::of_json(&req.parent);
        let (name, limit) = (plugin.metadata().name.clone(), plugin.max_related());
        plugin.reconcile_related(req, &|selectors| self.resolve(&name, &key, selectors, limit))
    }

    /// The parents whose selections match `obj` (an object of `self.kinds[kind]`).
    pub fn parents_of(&self, kind: usize, obj: &CachedObject) -> Vec<ParentKey> {
        let Some(cache) = self.kinds.get(kind) else { return Vec::new() };
        let kind = kind_ref(&cache.read.gvk);
        let empty = BTreeMap::new();
        let changed = Changed {
            kind: &kind,
            namespace: obj.metadata.namespace.as_deref(),
            name: obj.metadata.name.as_deref().unwrap_or_default(),
            labels: obj.metadata.labels.as_ref().unwrap_or(&empty),
        };
        self.with_index(|index| index.parents_of(changed).0)
    }

    /// Checks `selectors` (what the plugin's `related` returned for `parent`) against the
    /// declared kinds and their scope, files them in the index, and picks their objects from the
    /// caches. More than `limit` objects in all is [`PluginError::TooManyRelated`]: the plugin
    /// is not called with a partial view. The selections stay filed either way, so a change to
    /// what they match reconciles the parent again.
    pub fn resolve(
        &self,
        plugin: &str,
        parent: &ParentKey,
        selectors: Vec<Selector>,
        limit: usize,
    ) -> Result<Picked, PluginError> {
        let checked = match self.check(plugin, parent, selectors) {
            Ok(checked) => checked,
            Err(e) => {
                self.with_index(|index| index.remove(parent));
                return Err(e);
            }
        };
        let selections = checked.iter().map(|c| c.selection.clone()).collect();
        self.with_index(|index| {
            let shared = ParentKey {
                namespace: parent.namespace.as_deref().map(|ns| index.intern(ns)),
                name: parent.name.clone(),
            };
            index.set(&shared, selections);
        });
        let mut picked = Vec::with_capacity(checked.len());
        let mut count = 0;
        for c in checked {
            let objects = self.objects(&c);
            count += objects.len();
            if count > limit {
                return Err(PluginError::TooManyRelated { plugin: plugin.into(), selector: c.id, count, limit });
            }
            let cache = &self.kinds[c.cache];
            picked.push((c.id, objects.iter().map(|o| to_json(cache, o)).collect()));
        }
        Ok(picked)
    }

    /// Forgets what a deleted parent selected.
    pub fn forget(&self, parent: &ParentKey) {
        self.with_index(|index| index.remove(parent));
    }

    /// Drops the selections of parents that no longer exist, once the index has grown past the
    /// live count plus a slack; `live` is asked only then.
    pub fn sweep(&self, live_count: usize, live: impl FnOnce() -> HashSet<ParentKey>) {
        if self.with_index(|index| index.len()) <= live_count + SWEEP_SLACK {
            return;
        }
        let live = live();
        self.with_index(|index| index.retain(|p| live.contains(p)));
    }

    fn with_index<R>(&self, f: impl FnOnce(&mut RelatedIndex<ParentKey>) -> R) -> R {
        match self.index.lock() {
            Ok(mut index) => f(&mut index),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Each selector checked and resolved to the cache it reads and what it selects.
    fn check(&self, plugin: &str, parent: &ParentKey, selectors: Vec<Selector>) -> Result<Vec<Checked>, PluginError> {
        if selectors.len() > MAX_SELECTORS {
            let id = selectors.get(MAX_SELECTORS).map(|s| s.id.clone()).unwrap_or_default();
            let reason = format!("{} selectors for one parent; at most {MAX_SELECTORS} are allowed", selectors.len());
            return Err(PluginError::InvalidSelector { plugin: plugin.into(), selector: id, reason });
        }
        let mut ids = HashSet::new();
        let mut checked = Vec::with_capacity(selectors.len());
        for selector in selectors {
            let bad = |reason: String| PluginError::InvalidSelector {
                plugin: plugin.into(),
                selector: crate::text::cap(&selector.id, crate::text::MAX_QUOTE),
                reason: crate::text::cap(&reason, crate::text::MAX_QUOTE),
            };
            if selector.id.is_empty() || !ids.insert(selector.id.clone()) {
                return Err(bad("every selector needs an id of its own (empty, or given twice)".into()));
            }
            checked.push(self.check_one(parent, &selector).map_err(bad)?.with_id(selector.id));
        }
        Ok(checked)
    }

    fn check_one(&self, parent: &ParentKey, selector: &Selector) -> Result<Checked, String> {
        let Some((cache_index, cache)) = self.kinds.iter().enumerate().find(|(_, k)| k.read.gvk == selector.kind)
        else {
            let declared: Vec<String> = self.kinds.iter().map(|k| k.read.gvk.to_string()).collect();
            return Err(format!(
                "kind {} is not among the kinds the plugin declares it reads ({}); add it to `reads` in the plugin's \
                 metadata",
                selector.kind,
                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
            ));
        };
        let parent_ns = parent.namespace.as_deref().map(str::to_string);
        let namespace = scoped_namespace(cache, parent_ns, selector.namespace.clone())?;
        let target = match &selector.target {
            Target::Name(name) if name.is_empty() => return Err("the name to select is empty".into()),
            Target::Name(name) => crate::related::Target::Name(name.clone()),
            Target::Labels(text) => crate::related::Target::Labels(parse_labels(text)?),
        };
        let selection = Selection { kind: kind_ref(&cache.read.gvk), namespace, target };
        Ok(Checked { id: String::new(), cache: cache_index, selection })
    }

    /// The objects one checked selector picks from its cache, ordered by namespace and name.
    fn objects(&self, c: &Checked) -> Vec<Arc<CachedObject>> {
        let cache = &self.kinds[c.cache];
        let ns = c.selection.namespace.as_deref();
        let mut objects: Vec<Arc<CachedObject>> = match &c.selection.target {
            crate::related::Target::Name(name) if ns.is_some() || !cache.namespaced => {
                let oref = ObjectRef::new_with(name, cache.resource.clone());
                let oref = match ns {
                    Some(ns) => oref.within(ns),
                    None => oref,
                };
                cache.store.get(&oref).into_iter().collect()
            }
            crate::related::Target::Name(name) => {
                cache.store.state().into_iter().filter(|o| o.metadata.name.as_deref() == Some(name)).collect()
            }
            crate::related::Target::Labels(selector) => {
                use kube::core::SelectorExt;
                let empty = BTreeMap::new();
                cache
                    .store
                    .state()
                    .into_iter()
                    .filter(|o| ns.is_none() || o.metadata.namespace.as_deref() == ns)
                    .filter(|o| selector.matches(o.metadata.labels.as_ref().unwrap_or(&empty)))
                    .collect()
            }
        };
        objects
            .sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
        objects
    }
}

/// A selector checked against its declared kind.
struct Checked {
    id: String,
    cache: usize,
    selection: Selection,
}

impl Checked {
    fn with_id(mut self, id: String) -> Checked {
        self.id = id;
        self
    }
}

/// Where a selector of `cache`'s kind looks, given the parent's namespace and the namespace it
/// asked for; an error says what the scope allows.
fn scoped_namespace(
    cache: &ReadKindCache,
    parent_ns: Option<String>,
    asked: Option<String>,
) -> Result<Option<String>, String> {
    let gvk = &cache.read.gvk;
    match (cache.read.scope, cache.namespaced) {
        (ReadScope::SameNamespace, false) => {
            Err(format!("kind {gvk} is cluster-scoped; declare it in `reads` with scope cluster"))
        }
        (ReadScope::SameNamespace, true) => match (parent_ns, asked) {
            (None, _) => Err(format!(
                "the parent is cluster-scoped, so scope same-namespace of kind {gvk} has no namespace; declare scope \
                 cluster"
            )),
            (Some(own), None) => Ok(Some(own)),
            (Some(own), Some(asked)) if asked == own => Ok(Some(own)),
            (Some(own), Some(asked)) => Err(format!(
                "namespace {asked:?} is outside the declared scope of kind {gvk} (same-namespace: {own:?}); declare \
                 scope cluster to read other namespaces"
            )),
        },
        (ReadScope::Cluster, false) if asked.is_some() => {
            Err(format!("kind {gvk} is cluster-scoped; give no namespace"))
        }
        (ReadScope::Cluster, _) => Ok(asked),
    }
}

/// The object as the plugin gets it: `apiVersion` and `kind` set; only them and `metadata`
/// when the kind is read as metadata only.
fn to_json(cache: &ReadKindCache, obj: &CachedObject) -> Value {
    let (api_version, kind) = (&cache.resource.api_version, &cache.resource.kind);
    if cache.read.metadata_only {
        return json!({"apiVersion": api_version, "kind": kind, "metadata": obj.metadata});
    }
    obj.to_json(&cache.resource).unwrap_or(Value::Null)
}

/// The index's name for a kind: group and kind (a kind is one set of objects in every version).
fn kind_ref(gvk: &Gvk) -> KindRef {
    KindRef { group: gvk.group.clone(), kind: gvk.kind.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads() -> Vec<ReadKind> {
        vec![
            ReadKind::same_namespace(Gvk::new("", "v1", "ConfigMap")),
            ReadKind::same_namespace(Gvk::new("", "v1", "Secret")).metadata_only(),
            ReadKind::cluster(Gvk::new("", "v1", "Namespace")),
        ]
    }

    fn objects() -> Vec<Value> {
        let mut objects: Vec<Value> = ["shop", "blog"]
            .iter()
            .flat_map(|ns| {
                (0..3).map(move |i| {
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("c{i}"), "namespace": ns, "labels": {"i": i.to_string()}},
                        "data": {"k": "v"}})
                })
            })
            .collect();
        objects.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "shop"},
            "data": {"password": "aHVudGVyMg=="}}));
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        objects
    }

    fn shop(name: &str) -> ParentKey {
        ParentKey { namespace: Some("shop".into()), name: name.into() }
    }

    fn resolve(selectors: Vec<Selector>, limit: usize) -> Result<Picked, PluginError> {
        Related::offline(&reads(), &objects()).resolve("p", &shop("web"), selectors, limit)
    }

    fn names(picked: &Picked) -> Vec<Vec<String>> {
        picked
            .iter()
            .map(|(_, objects)| {
                objects.iter().map(|o| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"])).collect()
            })
            .collect()
    }

    fn refusal(selectors: Vec<Selector>) -> String {
        match resolve(selectors, 100) {
            Err(PluginError::InvalidSelector { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn selectors_pick_from_the_parents_namespace_by_name_or_label_in_order() {
        let cm = Gvk::new("", "v1", "ConfigMap");
        let picked = resolve(
            vec![Selector::by_name("one", cm.clone(), "c1"), Selector::by_labels("some", cm.clone(), "i in (0,2)")],
            100,
        )
        .unwrap();
        assert_eq!(picked[0].0, "one");
        assert_eq!(names(&picked), [vec!["\"shop\"/\"c1\""], vec!["\"shop\"/\"c0\"", "\"shop\"/\"c2\""]]);
        assert_eq!(picked[0].1[0]["data"]["k"], "v");
        let missing = resolve(vec![Selector::by_name("gone", cm, "nope")], 100).unwrap();
        assert!(missing[0].1.is_empty());
    }

    #[test]
    fn metadata_only_kinds_carry_no_body() {
        let picked = resolve(vec![Selector::by_name("s", Gvk::new("", "v1", "Secret"), "s")], 100).unwrap();
        let secret = &picked[0].1[0];
        assert_eq!(secret["metadata"]["name"], "s");
        assert!(secret.get("data").is_none(), "{secret}");
    }

    #[test]
    fn a_selector_outside_the_declaration_is_refused_saying_what_to_declare() {
        let service = refusal(vec![Selector::by_name("x", Gvk::new("", "v1", "Service"), "web")]);
        assert!(service.contains("kind v1 Service is not among") && service.contains("add it to `reads`"), "{service}");
        let other_version = refusal(vec![Selector::by_name("x", Gvk::new("", "v2", "ConfigMap"), "c0")]);
        assert!(other_version.contains("v2 ConfigMap"), "{other_version}");
        let elsewhere =
            refusal(vec![Selector::by_name("x", Gvk::new("", "v1", "ConfigMap"), "c0").in_namespace("blog")]);
        assert!(elsewhere.contains("outside the declared scope") && elsewhere.contains("declare"), "{elsewhere}");
        let twice = refusal(vec![
            Selector::by_name("x", Gvk::new("", "v1", "ConfigMap"), "c0"),
            Selector::by_name("x", Gvk::new("", "v1", "ConfigMap"), "c1"),
        ]);
        assert!(twice.contains("id of its own"), "{twice}");
        let bad = refusal(vec![Selector::by_labels("x", Gvk::new("", "v1", "ConfigMap"), "i in 0")]);
        assert!(bad.contains("parentheses"), "{bad}");
    }

    #[test]
    fn a_cluster_scoped_kind_is_read_without_a_namespace() {
        let ns = Gvk::new("", "v1", "Namespace");
        let picked = resolve(vec![Selector::by_name("ns", ns.clone(), "shop")], 100).unwrap();
        assert_eq!(picked[0].1[0]["metadata"]["name"], "shop");
        let refused = refusal(vec![Selector::by_name("ns", ns, "shop").in_namespace("shop")]);
        assert!(refused.contains("give no namespace"), "{refused}");
    }

    #[test]
    fn more_than_the_limit_is_refused_and_the_selection_stays_filed() {
        let related = Related::offline(&reads(), &objects());
        let all = vec![Selector::by_labels("all", Gvk::new("", "v1", "ConfigMap"), "")];
        match related.resolve("p", &shop("web"), all, 2) {
            Err(PluginError::TooManyRelated { selector, count, limit, .. }) => {
                assert_eq!((selector.as_str(), count, limit), ("all", 3, 2));
            }
            other => panic!("not capped: {other:?}"),
        }
        let cm: CachedObject = serde_json::from_value(objects()[0].clone()).unwrap();
        assert_eq!(related.parents_of(0, &cm), [shop("web")], "a change must still reach the capped parent");
        related.forget(&shop("web"));
        assert!(related.parents_of(0, &cm).is_empty());
    }
}
