//! A hostile operator plugin for the sandbox tests. It uses the raw WIT bindings (not the SDK's
//! safe helpers) so it can break the contract on purpose. The parent's `spec.mode` picks the
//! misbehaviour:
//!
//! - `ok`: one ConfigMap named after the parent (the well-behaved baseline), whose payload is
//!   the plugin's settings when it has any
//! - `empty`: no children (what was there is pruned)
//! - `loop`: never returns
//! - `oom`: allocates without bound
//! - `panic`: panics with `spec.message`
//! - `huge`: returns a child of `spec.mebibytes` MiB (default 100)
//! - `bad-json`, `undeclared-kind`, `other-namespace`: break the output contract
//! - `given`: returns `spec.children` (objects, verbatim) and `spec.status` as they are, so a
//!   test can make it return exactly what a defect needs (stripped labels, a name someone else
//!   owns, a field that goes away)
//!
//! It declares a finalizer (not with the `nofinalizer` feature); when finalizing it answers
//! `finalized` unless `spec.holdFinalizer`.

use wasmop_sdk::bindings::operator::exports::wasmop::plugin::reconciler::{
    ChildKind, Error, Guest, OperatorMetadata, Request, Response,
};
use wasmop_sdk::bindings::operator::wasmop::plugin::types::Gvk;

struct Hostile;

fn gvk(group: &str, version: &str, kind: &str) -> Gvk {
    Gvk { group: group.into(), version: version.into(), kind: kind.into() }
}

/// Which build this is: the hot-reload tests swap one for the other.
const VARIANT: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

fn config_map(name: &str, namespace: Option<&str>, payload: &str) -> String {
    let mut cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"wasmop.test/variant": VARIANT}},
        "data": {"payload": payload},
    });
    if let Some(ns) = namespace {
        cm["metadata"]["namespace"] = ns.into();
    }
    cm.to_string()
}

impl Guest for Hostile {
    fn metadata() -> OperatorMetadata {
        OperatorMetadata {
            name: "hostile".into(),
            version: "0.0.1".into(),
            parent: gvk("test.wasmop.dev", "v1", if cfg!(feature = "kind2") { "Hostile2" } else { "Hostile" }),
            children: vec![ChildKind { gvk: gvk("", "v1", "ConfigMap"), cluster_scoped: false }],
            crd: None,
            finalizer: !cfg!(feature = "nofinalizer"),
        }
    }

    fn reconcile(req: Request) -> Result<Response, Error> {
        let parent: serde_json::Value = serde_json::from_str(&req.parent).map_err(|e| Error::Invalid(e.to_string()))?;
        let name = parent["metadata"]["name"].as_str().unwrap_or("hostile").to_string();
        let spec = &parent["spec"];
        if req.finalizing {
            let finalized = !spec["holdFinalizer"].as_bool().unwrap_or(false);
            return Ok(Response {
                children: vec![],
                status: None,
                conditions: vec![],
                requeue_after_seconds: Some(1),
                finalized,
            });
        }
        let children = match spec["mode"].as_str().unwrap_or("ok") {
            // The operator's settings (from the sidecar), if any, become the payload.
            "ok" => vec![config_map(&name, None, req.settings.as_deref().unwrap_or("fine"))],
            "empty" => vec![],
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("{}", spec["message"].as_str().unwrap_or("boom")),
            "huge" => {
                let mib = spec["mebibytes"].as_u64().unwrap_or(100) as usize;
                vec![config_map(&name, None, &"x".repeat(mib << 20))]
            }
            "bad-json" => vec!["{\"apiVersion\": \"v1\", \"kind\": ".to_string()],
            "undeclared-kind" => {
                vec![serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}).to_string()]
            }
            "other-namespace" => vec![config_map(&name, Some("kube-system"), "escape")],
            "given" => {
                let children = spec["children"].as_array().cloned().unwrap_or_default();
                let status = spec.get("status").filter(|s| s.is_object()).map(|s| s.to_string());
                let children = children.iter().map(|c| c.to_string()).collect();
                return Ok(Response {
                    children,
                    status,
                    conditions: vec![],
                    requeue_after_seconds: None,
                    finalized: false,
                });
            }
            other => return Err(Error::Invalid(format!("unknown spec.mode {other:?}"))),
        };
        Ok(Response { children, status: None, conditions: vec![], requeue_after_seconds: None, finalized: false })
    }
}

wasmop_sdk::bindings::operator::export_raw_operator!(Hostile);
