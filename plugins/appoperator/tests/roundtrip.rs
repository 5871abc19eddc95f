//! Every version pair round-trips: A → B → A gives back A exactly, over generated objects.

use appoperator::convert::convert;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn labels() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn metadata() -> impl Strategy<Value = Value> {
    (labels(), labels()).prop_map(|(labels, annotations)| {
        let mut meta = json!({"name": "web", "namespace": "shop", "uid": "u-1", "generation": 3});
        if !labels.is_empty() {
            meta["labels"] = Value::Object(labels);
        }
        if !annotations.is_empty() {
            meta["annotations"] = Value::Object(annotations);
        }
        meta
    })
}

fn status() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of((0..1000i32, 0..1000i32).prop_map(|(r, a)| json!({"replicas": r, "availableReplicas": a})))
}

fn object(version: &str, meta: Value, spec: Value, status: Option<Value>) -> Value {
    let mut obj = json!({"apiVersion": format!("tools.wasmop.dev/{version}"), "kind": "Appoperator", "metadata": meta, "spec": spec});
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

proptest! {
    #[test]
    fn v1_round_trips_through_v1beta1(
        meta in metadata(),
        image in "[a-z]{1,12}(:[0-9]{1,3})?",
        replicas in proptest::option::of(0..=1000i32),
        port in proptest::option::of(1..=65535i32),
        status in status(),
    ) {
        let mut workload = json!({"image": image});
        if let Some(r) = replicas { workload["replicas"] = json!(r); }
        if let Some(p) = port { workload["port"] = json!(p); }
        let original = object("v1", meta, json!({"workload": workload}), status);
        let there = convert(original.clone(), "v1beta1").unwrap();
        prop_assert_eq!(convert(there, "v1").unwrap(), original);
    }

    #[test]
    fn v1beta1_round_trips_through_v1(
        meta in metadata(),
        image in "[a-z]{1,12}",
        replicas in proptest::option::of(0..=1000i32),
        status in status(),
    ) {
        let mut spec = json!({"image": image});
        if let Some(r) = replicas { spec["replicas"] = json!(r); }
        let original = object("v1beta1", meta, spec, status);
        let there = convert(original.clone(), "v1").unwrap();
        prop_assert_eq!(convert(there, "v1beta1").unwrap(), original);
    }
}
