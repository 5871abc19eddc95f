//! Conversion between a resource's storage form and the form of the version a request uses.
//! Custom resources with conversion strategy None only change `apiVersion`; `events.k8s.io/v1`
//! Events share storage with core `v1` Events, as on a real server, so an Event written by
//! kube-runtime's recorder shows in `kubectl get events` and vice versa.
//!
//! Custom resources with strategy Webhook are stored in the version that was the storage
//! version when they were written, and converted by the CRD's webhook ([`crate::webhook`]),
//! never while the store's lock is held: reads hand out stored objects and [`finish`] converts
//! them afterwards; writes, which need objects converted while they run under the lock, are
//! replayed with a [`Memo`] of conversions made between attempts.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{ApiResult, StatusError};
use crate::resources::ResourceInfo;
use crate::webhook::WebhookConversion;

/// (events.k8s.io/v1 field, core/v1 field).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &mut Value, to_core: bool) {
    let Some(m) = obj.as_object_mut() else { return };
    let mut out = Map::new();
    for (k, v) in std::mem::take(m) {
        let renamed = EVENT_FIELDS
            .iter()
            .find(|(ev, core)| if to_core { ev == &k } else { core == &k })
            .map(|(ev, core)| if to_core { core.to_string() } else { ev.to_string() })
            .unwrap_or(k);
        out.insert(renamed, v);
    }
    *m = out;
}

fn is_events_v1(info: &ResourceInfo) -> bool {
    !info.custom && info.group == "events.k8s.io" && info.kind == "Event"
}

/// Storage key group of a resource (events.k8s.io Events are stored as core Events).
pub fn storage_group(group: &str, kind: &str, custom: bool) -> String {
    if !custom && group == "events.k8s.io" && kind == "Event" { String::new() } else { group.to_string() }
}

fn api_version_of(obj: &Value) -> &str {
    obj.get("apiVersion").and_then(Value::as_str).unwrap_or("")
}

/// Whether `stored` must go through `info`'s conversion webhook to be served by `info`.
pub fn needs_webhook(info: &ResourceInfo, stored: &Value) -> bool {
    info.conversion.is_some() && api_version_of(stored) != info.api_version()
}

/// The stored object as the version `info` serves it. An object that needs the conversion
/// webhook is returned as stored: [`finish`] converts it once the store's lock is released.
pub fn to_request(info: &ResourceInfo, stored: &Value) -> Value {
    let mut o = stored.clone();
    if is_events_v1(info) {
        rename(&mut o, false);
        o["apiVersion"] = Value::String(info.api_version());
    } else if info.custom && info.conversion.is_none() && api_version_of(stored) != info.api_version() {
        o["apiVersion"] = Value::String(info.api_version());
    }
    o
}

/// An object in `info`'s version converted to its storage form (not for webhook conversion,
/// which [`Memo`] answers).
pub fn to_storage(info: &ResourceInfo, obj: &mut Value) {
    if is_events_v1(info) {
        rename(obj, true);
        obj["apiVersion"] = Value::String("v1".into());
    } else if info.version != info.storage_version {
        obj["apiVersion"] = Value::String(storage_api_version(info));
    }
}

/// `group/storageVersion` of a custom resource.
pub fn storage_api_version(info: &ResourceInfo) -> String {
    format!("{}/{}", info.group, info.storage_version)
}

/// Finishes presenting objects the store handed out: those of a webhook-converted resource
/// stored in another version than `info`'s are converted by the webhook, all in one review
/// (`list` picks the error wording for list items). Other objects are returned as they are.
pub async fn finish(info: &ResourceInfo, mut objs: Vec<Arc<Value>>, list: bool) -> ApiResult<Vec<Arc<Value>>> {
    let Some(conv) = &info.conversion else {
        return Ok(objs);
    };
    let todo: Vec<usize> = (0..objs.len()).filter(|&i| needs_webhook(info, &objs[i])).collect();
    if todo.is_empty() {
        return Ok(objs);
    }
    let inputs: Vec<Value> = todo.iter().map(|&i| (*objs[i]).clone()).collect();
    let converted = crate::webhook::convert(conv, &inputs, &info.api_version(), list).await?;
    for (i, o) in todo.into_iter().zip(converted) {
        objs[i] = Arc::new(o);
    }
    Ok(objs)
}

/// [`finish`] for one object.
pub async fn finish_one(info: &ResourceInfo, obj: Value) -> ApiResult<Value> {
    if !needs_webhook(info, &obj) {
        return Ok(obj);
    }
    let out = finish(info, vec![Arc::new(obj)], false).await?;
    Ok(out.into_iter().next().map(Arc::unwrap_or_clone).unwrap_or_default())
}

/// A conversion a write needs before it can complete.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The CRD's webhook.
    pub conv: Arc<WebhookConversion>,
    /// The object to convert.
    pub object: Value,
    /// Target `group/version`.
    pub desired: String,
}

/// Webhook conversions made for one request. A write runs under the store's lock; when it
/// needs a conversion the memo does not have, it records it as pending and fails; the caller
/// releases the lock, calls the webhook, and runs the write again, which then finds it.
///
/// Answers are keyed by the target version and the object without the metadata a webhook
/// must not change (so a uid or timestamp made afresh by the replay still matches); the
/// object's own metadata is restored on each use, as kube-apiserver restores it.
#[derive(Debug, Default)]
pub struct Memo {
    done: HashMap<String, Value>,
    pending: Option<Pending>,
}

impl Memo {
    fn key(desired: &str, obj: &Value) -> String {
        let mut reduced = obj.clone();
        if let Some(m) = reduced.get_mut("metadata").and_then(Value::as_object_mut) {
            m.retain(|k, _| k == "labels" || k == "annotations");
        }
        format!("{desired}\n{reduced}")
    }

    /// `obj` converted to `desired`, or a 500 after recording the conversion as pending.
    pub fn convert(&mut self, conv: &Arc<WebhookConversion>, obj: &Value, desired: &str) -> ApiResult<Value> {
        let hit =
            self.done.get(&Self::key(desired, obj)).and_then(|c| crate::webhook::restore_meta(obj, c.clone()).ok());
        hit.ok_or_else(|| {
            self.pending = Some(Pending { conv: conv.clone(), object: obj.clone(), desired: desired.to_string() });
            StatusError::internal("a conversion webhook call is pending")
        })
    }

    /// The conversion the last attempt was missing, if any.
    pub fn take_pending(&mut self) -> Option<Pending> {
        self.pending.take()
    }

    /// Records the webhook's answer for a pending conversion.
    pub fn insert(&mut self, pending: &Pending, converted: Value) {
        self.done.insert(Self::key(&pending.desired, &pending.object), converted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use crate::webhook::Endpoint;
    use serde_json::json;

    #[test]
    fn memo_reuses_an_answer_for_the_same_content_with_fresh_metadata() {
        let conv = Arc::new(WebhookConversion {
            kind: "Gadget".into(),
            endpoint: Endpoint::Url("https://127.0.0.1:1/".into()),
            ca_bundle: Vec::new(),
            review_version: "v1".into(),
            schemas: Default::default(),
        });
        let first = json!({"apiVersion": "ex.com/v1alpha1", "kind": "Gadget",
            "metadata": {"name": "g", "uid": "u1", "labels": {"a": "b"}}, "spec": {"size": 1}});
        let mut memo = Memo::default();
        assert!(memo.convert(&conv, &first, "ex.com/v1").is_err(), "unknown: pending");
        let pending = memo.take_pending().expect("recorded");
        let answer = json!({"apiVersion": "ex.com/v1", "kind": "Gadget",
            "metadata": {"name": "g", "uid": "u1", "labels": {"a": "c"}}, "spec": {"resources": {"size": 1}}});
        memo.insert(&pending, answer);
        // A replay made a new uid: same content, so the answer applies, with the new metadata.
        let mut replay = first.clone();
        replay["metadata"]["uid"] = json!("u2");
        let out = memo.convert(&conv, &replay, "ex.com/v1").unwrap();
        assert_eq!(out["metadata"], json!({"name": "g", "uid": "u2", "labels": {"a": "c"}}));
        assert_eq!(out["spec"], json!({"resources": {"size": 1}}));
        let mut changed = first;
        changed["spec"]["size"] = json!(2);
        assert!(memo.convert(&conv, &changed, "ex.com/v1").is_err(), "other content: pending again");
    }

    #[test]
    fn events_round_trip_between_versions() {
        let reg = Registry::builtin();
        let ev = reg.get("events.k8s.io", "v1", "events").unwrap();
        let mut o = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "x"}, "note": "hi", "reason": "R"});
        to_storage(&ev, &mut o);
        assert_eq!(
            o,
            json!({"apiVersion": "v1", "kind": "Event", "involvedObject": {"name": "x"}, "message": "hi", "reason": "R"})
        );
        let back = to_request(&ev, &o);
        assert_eq!(back["regarding"]["name"], "x");
        assert_eq!(back["note"], "hi");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
