//! Children by the UID of their controller owner, kept current from the same watch events that
//! fill a child kind's cache, so that observing one parent's children costs O(its children)
//! instead of a scan of every cached child of the kind.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::cached::CachedObject;
use kube::core::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

/// A child within its kind: namespace (`None` for cluster-scoped objects) and name. The index
/// keeps these, not `ObjectRef`s, which each carry a copy of the kind's five names.
type Name = (Option<String>, String);

/// Child names by controller-owner UID, plus each child's owner so a change of owner (or a
/// deletion) finds the old entry. A parent has a few children, so a `Vec` serves as its set.
#[derive(Debug, Default)]
struct Index {
    by_owner: HashMap<String, Vec<Name>>,
    owner_of: HashMap<Name, String>,
}

impl Index {
    fn apply(&mut self, key: Name, obj: &CachedObject) {
        self.delete(&key);
        let owner = obj.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        if let Some(owner) = owner {
            self.by_owner.entry(owner.uid.clone()).or_default().push(key.clone());
            self.owner_of.insert(key, owner.uid.clone());
        }
    }

    fn delete(&mut self, key: &Name) {
        if let Some(owner) = self.owner_of.remove(key)
            && let Some(children) = self.by_owner.get_mut(&owner)
        {
            children.retain(|child| child != key);
            if children.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

/// The index of one child kind; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct OwnerIndex {
    /// The kind, as the cache's keys carry it (part of their equality): added to each name
    /// when the references are handed out.
    resource: ApiResource,
    current: Arc<RwLock<Index>>,
    /// Built during a relist (between `Init` and `InitDone`), then swapped in, as the reflector
    /// store does.
    relisting: Arc<RwLock<Option<Index>>>,
}

impl OwnerIndex {
    /// An empty index of children of `resource`.
    pub fn new(resource: ApiResource) -> OwnerIndex {
        OwnerIndex { resource, current: Arc::default(), relisting: Arc::default() }
    }

    fn key(obj: &CachedObject) -> Name {
        (obj.metadata.namespace.clone(), obj.metadata.name.clone().unwrap_or_default())
    }

    /// Follows one watch event (call it for every event the cache's writer sees).
    pub fn observe(&self, event: &Event<CachedObject>) {
        match event {
            Event::Apply(obj) => self.with_current(|i| i.apply(Self::key(obj), obj)),
            Event::Delete(obj) => self.with_current(|i| i.delete(&Self::key(obj))),
            Event::Init => {
                if let Ok(mut relist) = self.relisting.write() {
                    *relist = Some(Index::default());
                }
            }
            Event::InitApply(obj) => {
                if let Ok(mut relist) = self.relisting.write()
                    && let Some(index) = relist.as_mut()
                {
                    index.apply(Self::key(obj), obj);
                }
            }
            Event::InitDone => {
                let built = self.relisting.write().ok().and_then(|mut r| r.take());
                if let (Some(built), Ok(mut current)) = (built, self.current.write()) {
                    *current = built;
                }
            }
        }
    }

    /// References of the children whose controller owner has `uid`.
    pub fn children_of(&self, uid: &str) -> Vec<ObjectRef<CachedObject>> {
        let Ok(index) = self.current.read() else { return Vec::new() };
        let children = index.by_owner.get(uid).map(Vec::as_slice).unwrap_or_default();
        children
            .iter()
            .map(|(namespace, name)| {
                let child = ObjectRef::new_with(name, self.resource.clone());
                match namespace {
                    Some(namespace) => child.within(namespace),
                    None => child,
                }
            })
            .collect()
    }

    fn with_current(&self, f: impl FnOnce(&mut Index)) {
        if let Ok(mut index) = self.current.write() {
            f(&mut index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn child(name: &str, owner: &str) -> CachedObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": [
                {"apiVersion": "g/v1", "kind": "P", "name": "p", "uid": owner, "controller": true}]},
        }))
        .unwrap()
    }

    fn names(index: &OwnerIndex, uid: &str) -> Vec<String> {
        let mut names: Vec<String> = index.children_of(uid).into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn follows_applies_owner_changes_deletes_and_relists() {
        let index = OwnerIndex::new(ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()));
        index.observe(&Event::Apply(child("a", "u1")));
        index.observe(&Event::Apply(child("b", "u1")));
        assert_eq!(names(&index, "u1"), ["a", "b"]);
        index.observe(&Event::Apply(child("b", "u2")));
        assert_eq!((names(&index, "u1"), names(&index, "u2")), (vec!["a".to_string()], vec!["b".to_string()]));
        index.observe(&Event::Delete(child("a", "u1")));
        assert!(names(&index, "u1").is_empty());
        // A relist replaces everything once it is complete.
        index.observe(&Event::Init);
        index.observe(&Event::InitApply(child("c", "u1")));
        assert_eq!(names(&index, "u2"), ["b"], "the old view serves until InitDone");
        index.observe(&Event::InitDone);
        assert_eq!((names(&index, "u1"), names(&index, "u2")), (vec!["c".to_string()], vec![]));
        // The references handed out find the child in the kind's cache (same kind and namespace).
        let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        assert_eq!(
            index.children_of("u1"),
            vec![kube::runtime::reflector::Lookup::to_object_ref(&child("c", "u1"), ar)]
        );
    }
}
