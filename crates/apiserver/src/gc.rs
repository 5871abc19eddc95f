//! Garbage collection: ownerReference cascades (background, foreground, orphan), namespace
//! and CRD cleanup, and completion of deletions whose finalizers are gone.

use serde_json::{Value, json};

use crate::meta;
use crate::store::{DeleteOpts, State};

/// Objects whose ownerReferences include `uid`.
fn dependents(
    state: &State,
    uid: &str,
) -> Vec<(crate::resources::ResKey, crate::store::ObjKey, std::sync::Arc<Value>)> {
    state
        .all_objects()
        .into_iter()
        .filter(|(_, _, o)| meta::owner_refs(o).iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
        .collect()
}

fn delete_object(
    state: &mut State,
    key: &crate::resources::ResKey,
    ok: &crate::store::ObjKey,
    propagation: &str,
) -> bool {
    let Some(info) = state.registry.storage(key) else {
        return false;
    };
    let opts = DeleteOpts { propagation: Some(propagation.to_string()), ..Default::default() };
    state.delete(&info, &ok.0, &ok.1, &opts).is_ok()
}

fn drop_finalizer(state: &mut State, key: &crate::resources::ResKey, ok: &crate::store::ObjKey, finalizer: &str) {
    state.write_internal(key, ok, "kube-controller-manager", "", |o| {
        let f: Vec<String> = meta::finalizers(o).into_iter().filter(|x| x != finalizer).collect();
        meta::set_finalizers(o, f);
    });
}

/// One pass over everything; returns whether anything changed.
fn pass(state: &mut State) -> bool {
    let mut changed = false;
    for (key, ok, obj) in state.all_objects() {
        // The object may have been removed or changed earlier in this pass.
        let Some((_, _, cur)) = state.by_uid(meta::uid_of(&obj)) else {
            continue;
        };
        let uid = meta::uid_of(&cur).to_string();
        if meta::is_deleting(&cur) {
            let fins = meta::finalizers(&cur);
            if fins.iter().any(|f| f == "orphan") {
                for (dk, dok, _) in dependents(state, &uid) {
                    state.write_internal(&dk, &dok, "kube-controller-manager", "", |o| {
                        let refs: Vec<Value> = meta::owner_refs(o)
                            .into_iter()
                            .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                            .collect();
                        let m = meta::meta_mut(o);
                        if refs.is_empty() {
                            m.remove("ownerReferences");
                        } else {
                            m.insert("ownerReferences".into(), json!(refs));
                        }
                    });
                }
                drop_finalizer(state, &key, &ok, "orphan");
                changed = true;
                continue;
            }
            if fins.iter().any(|f| f == "foregroundDeletion") {
                let deps = dependents(state, &uid);
                for (dk, dok, d) in &deps {
                    if !meta::is_deleting(d) && delete_object(state, dk, dok, "Foreground") {
                        changed = true;
                    }
                }
                let blocking = dependents(state, &uid).iter().any(|(_, _, d)| {
                    meta::owner_refs(d).iter().any(|r| {
                        r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                            && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    })
                });
                if !blocking {
                    drop_finalizer(state, &key, &ok, "foregroundDeletion");
                    changed = true;
                }
                continue;
            }
            if key == (String::new(), "namespaces".to_string()) {
                let ns = meta::name(&cur).to_string();
                for (k, o, d) in state.all_objects() {
                    if o.0 == ns && !meta::is_deleting(&d) && delete_object(state, &k, &o, "Background") {
                        changed = true;
                    }
                }
            }
            if key == ("apiextensions.k8s.io".to_string(), "customresourcedefinitions".to_string()) {
                let group = cur.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
                let plural = cur.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("").to_string();
                let crkey = (group, plural);
                for (k, o, d) in state.all_objects() {
                    if k == crkey && !meta::is_deleting(&d) && delete_object(state, &k, &o, "Background") {
                        changed = true;
                    }
                }
            }
            if state.finish_if_done(&key, &ok) {
                changed = true;
            }
        } else {
            let refs = meta::owner_refs(&cur);
            if !refs.is_empty()
                && refs.iter().all(|r| !state.uid_exists(r.get("uid").and_then(Value::as_str).unwrap_or("")))
                && delete_object(state, &key, &ok, "Background")
            {
                changed = true;
            }
        }
    }
    changed
}

/// Runs passes until a fixed point (bounded, so a cycle cannot spin forever).
pub fn collect(state: &mut State) {
    for _ in 0..64 {
        if !pass(state) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::meta;
    use crate::store::{DeleteOpts, State, WriteOpts};

    #[test]
    fn chains_of_dependents_are_collected() {
        let mut s = State::new(100);
        let cm = s.registry.get("", "v1", "configmaps").unwrap();
        let opts = WriteOpts::default();
        let a = s.create(&cm, "default", json!({"metadata": {"name": "a"}}), &opts).unwrap();
        let owner = |o: &serde_json::Value| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": meta::name(o), "uid": meta::uid_of(o)}]);
        let b =
            s.create(&cm, "default", json!({"metadata": {"name": "b", "ownerReferences": owner(&a)}}), &opts).unwrap();
        s.create(&cm, "default", json!({"metadata": {"name": "c", "ownerReferences": owner(&b)}}), &opts).unwrap();
        s.delete(&cm, "default", "a", &DeleteOpts::default()).unwrap();
        for n in ["a", "b", "c"] {
            assert!(s.get(&cm, "default", n).is_err(), "{n} collected");
        }
    }
}
