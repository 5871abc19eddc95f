//! Conversion between a resource's storage form and the form of the version a request uses.
//! Custom resources (conversion strategy None) only change `apiVersion`; `events.k8s.io/v1`
//! Events share storage with core `v1` Events, as on a real server, so an Event written by
//! kube-runtime's recorder shows in `kubectl get events` and vice versa.

use serde_json::{Map, Value};

use crate::resources::ResourceInfo;

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

/// The stored object as the version `info` serves it.
pub fn to_request(info: &ResourceInfo, stored: &Value) -> Value {
    let mut o = stored.clone();
    if is_events_v1(info) {
        rename(&mut o, false);
        o["apiVersion"] = Value::String(info.api_version());
    } else if info.version != info.storage_version {
        o["apiVersion"] = Value::String(info.api_version());
    }
    o
}

/// An object in `info`'s version converted to its storage form.
pub fn to_storage(info: &ResourceInfo, obj: &mut Value) {
    if is_events_v1(info) {
        rename(obj, true);
        obj["apiVersion"] = Value::String("v1".into());
    } else if info.version != info.storage_version {
        obj["apiVersion"] = Value::String(format!("{}/{}", info.group, info.storage_version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

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
