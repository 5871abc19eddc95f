//! A hostile operator plugin for the sandbox tests. It uses the raw WIT bindings (not the SDK's
//! safe helpers) so it can break the contract on purpose. The parent's `spec.mode` picks the
//! misbehaviour:
//!
//! - `ok`: one ConfigMap named after the parent (the well-behaved baseline), whose payload is
//!   the plugin's settings when it has any
//! - `flaky`: as `ok`, but panics when the settings contain `failFlaky` (a bad new revision)
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
//! - `sleep`: sleeps `spec.seconds` (default 10) in WASI before answering
//! - `exit`: calls `exit(spec.code)`
//! - `log-flood`: logs 10,000 lines with embedded newlines through the host's `log` import
//! - `many`: `spec.count` ConfigMaps
//! - `clock`: a status that changes on every call (the current time)
//! - `requeue`: asks to be called again after `spec.seconds` (default 0)
//! - `huge-invalid`: calls the spec invalid with a message of `spec.mebibytes` MiB
//! - `huge-status`: a status of `spec.mebibytes` MiB
//! - `related`: one ConfigMap named after the parent whose data maps each selector id to the
//!   related objects received (`ns/name,ns/name`), and `<id>.bodies` to how many had a `data`
//!   field; with `spec.requireRelated`, the spec is invalid while no related object exists
//!
//! Related objects: `related()` returns the parent's `spec.reads` as selectors, each
//! `{id, kind: "v1/ConfigMap", name | labels, namespace?}` (any build, so a build that declares no
//! reads selects undeclared kinds). With `reader` it declares ConfigMaps (scope cluster) and
//! Secrets (same namespace, metadata only) as reads.
//!
//! It declares a finalizer (not with the `nofinalizer` feature); when finalizing it answers
//! `finalized` unless `spec.holdFinalizer`. With `manykinds` it declares 100,000 child kinds;
//! with `slowmeta` its `metadata()` sleeps 3 s.
//!
//! Conversion: without features it serves one version and `convert` only sets `apiVersion`
//! (`spec.mode: convert-fail` makes it refuse). With `lossy` its CRD (kind `Lossy`) defines v1
//! (storage) and v2, and converting to v2 drops `spec.count`: the round-trip check must catch it.

use wasmop_sdk::bindings::operator::exports::wasmop::plugin::converter;
use wasmop_sdk::bindings::operator::exports::wasmop::plugin::reconciler::{
    ChildKind, Error, Guest, OperatorMetadata, ReadKind, ReadScope, Request, Response, Selector, Target,
};
use wasmop_sdk::bindings::operator::wasmop::plugin::types::Gvk;

struct Hostile;

fn parent_kind() -> &'static str {
    if cfg!(feature = "kind2") {
        "Hostile2"
    } else if cfg!(feature = "lossy") {
        "Lossy"
    } else {
        "Hostile"
    }
}

/// The CRD of the `lossy` build: v1 (storage) and v2, any fields.
fn lossy_crd() -> String {
    let version = |name: &str, storage: bool| {
        serde_json::json!({"name": name, "served": true, "storage": storage, "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "mode": {"type": "string", "enum": ["ok"]},
                "count": {"type": "integer", "minimum": 0, "maximum": 9},
            }},
        }}}})
    };
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "lossies.test.wasmop.dev"},
        "spec": {"group": "test.wasmop.dev", "scope": "Namespaced",
            "names": {"plural": "lossies", "singular": "lossy", "kind": "Lossy"},
            "versions": [version("v1", true), version("v2", false)]},
    })
    .to_string()
}

impl converter::Guest for Hostile {
    fn convert(obj: String, to_version: String) -> Result<String, String> {
        let mut obj: serde_json::Value = serde_json::from_str(&obj).map_err(|e| e.to_string())?;
        if obj["spec"]["mode"] == "convert-fail" {
            return Err(format!("refusing to convert {} on purpose", obj["metadata"]["name"]));
        }
        if cfg!(feature = "lossy")
            && to_version == "v2"
            && let Some(spec) = obj["spec"].as_object_mut()
        {
            spec.remove("count");
        }
        obj["apiVersion"] = format!("test.wasmop.dev/{to_version}").into();
        Ok(obj.to_string())
    }
}

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
        if cfg!(feature = "slowmeta") {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let mut children = vec![ChildKind { gvk: gvk("", "v1", "ConfigMap"), cluster_scoped: false }];
        if cfg!(feature = "manykinds") {
            children.extend(
                (0..100_000)
                    .map(|i| ChildKind { gvk: gvk("x.example", "v1", &format!("K{i}")), cluster_scoped: false }),
            );
        }
        OperatorMetadata {
            name: "hostile".into(),
            version: "0.0.1".into(),
            parent: gvk("test.wasmop.dev", "v1", parent_kind()),
            children,
            crd: cfg!(feature = "lossy").then(lossy_crd),
            finalizer: !cfg!(feature = "nofinalizer"),
            reads: if cfg!(feature = "reader") {
                vec![
                    ReadKind { gvk: gvk("", "v1", "ConfigMap"), scope: ReadScope::Cluster, metadata_only: false },
                    ReadKind { gvk: gvk("", "v1", "Secret"), scope: ReadScope::SameNamespace, metadata_only: true },
                ]
            } else {
                vec![]
            },
        }
    }

    fn related(parent: String) -> Result<Vec<Selector>, String> {
        let parent: serde_json::Value = serde_json::from_str(&parent).map_err(|e| e.to_string())?;
        let reads = parent["spec"]["reads"].as_array().cloned().unwrap_or_default();
        reads.iter().map(selector).collect()
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
            // A revision whose settings say `failFlaky` traps on these parents (a bad rollout).
            "flaky" if req.settings.as_deref().is_some_and(|s| s.contains("failFlaky")) => {
                panic!("flaky parent {name} fails under these settings")
            }
            "flaky" => vec![config_map(&name, None, req.settings.as_deref().unwrap_or("fine"))],
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
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(spec["seconds"].as_u64().unwrap_or(10)));
                vec![config_map(&name, None, "slept")]
            }
            "exit" => std::process::exit(spec["code"].as_i64().unwrap_or(3) as i32),
            "log-flood" => {
                for i in 0..10_000 {
                    wasmop_sdk::log(wasmop_sdk::LogLevel::Info, &format!("line {i}\nINFO wasmop: forged host line"));
                }
                vec![config_map(&name, None, "flooded")]
            }
            "huge" => {
                let mib = spec["mebibytes"].as_u64().unwrap_or(100) as usize;
                vec![config_map(&name, None, &"x".repeat(mib << 20))]
            }
            "bad-json" => vec!["{\"apiVersion\": \"v1\", \"kind\": ".to_string()],
            "undeclared-kind" => {
                vec![serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}).to_string()]
            }
            // A ConfigMap whose apiVersion is spelled other than declared (e.g. "/v1").
            "api-version" => vec![
                serde_json::json!({"apiVersion": spec["apiVersion"], "kind": "ConfigMap", "metadata": {"name": name}})
                    .to_string(),
            ],
            "other-namespace" => vec![config_map(&name, Some("kube-system"), "escape")],
            "many" => {
                let count = spec["count"].as_u64().unwrap_or(10);
                (0..count).map(|i| config_map(&format!("{name}-{i}"), None, "many")).collect()
            }
            "clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let status = serde_json::json!({"now": now.as_nanos().to_string()}).to_string();
                let children = vec![config_map(&name, None, "clock")];
                return Ok(Response {
                    children,
                    status: Some(status),
                    conditions: vec![],
                    requeue_after_seconds: None,
                    finalized: false,
                });
            }
            "requeue" => {
                let seconds = spec["seconds"].as_u64().unwrap_or(0) as u32;
                let children = vec![config_map(&name, None, "requeue")];
                return Ok(Response {
                    children,
                    status: None,
                    conditions: vec![],
                    requeue_after_seconds: Some(seconds),
                    finalized: false,
                });
            }
            "huge-invalid" => {
                let mib = spec["mebibytes"].as_u64().unwrap_or(10) as usize;
                return Err(Error::Invalid("y".repeat(mib << 20)));
            }
            "huge-status" => {
                let mib = spec["mebibytes"].as_u64().unwrap_or(3) as usize;
                let status = serde_json::json!({"blob": "z".repeat(mib << 20)}).to_string();
                return Ok(Response {
                    children: vec![],
                    status: Some(status),
                    conditions: vec![],
                    requeue_after_seconds: None,
                    finalized: false,
                });
            }
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
            "related"
                if spec["requireRelated"].as_bool() == Some(true)
                    && req.related.iter().all(|group| group.objects.is_empty()) =>
            {
                return Err(Error::Invalid("nothing related exists yet".into()));
            }
            "related" => {
                let mut data = serde_json::Map::new();
                for group in &req.related {
                    let objects: Vec<serde_json::Value> =
                        group.objects.iter().filter_map(|o| serde_json::from_str(o).ok()).collect();
                    let names: Vec<String> = objects
                        .iter()
                        .map(|o| {
                            let meta = &o["metadata"];
                            format!(
                                "{}/{}",
                                meta["namespace"].as_str().unwrap_or(""),
                                meta["name"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    let bodies = objects.iter().filter(|o| o.get("data").is_some()).count();
                    data.insert(group.id.clone(), names.join(",").into());
                    data.insert(format!("{}.bodies", group.id), bodies.to_string().into());
                }
                let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
                vec![cm.to_string()]
            }
            other => return Err(Error::Invalid(format!("unknown spec.mode {other:?}"))),
        };
        Ok(Response { children, status: None, conditions: vec![], requeue_after_seconds: None, finalized: false })
    }
}

/// One `spec.reads` entry as a selector.
fn selector(entry: &serde_json::Value) -> Result<Selector, String> {
    let text = |key: &str| entry[key].as_str().map(str::to_string);
    let kind = text("kind").ok_or("spec.reads entry without kind")?;
    let (api_version, kind) = kind.rsplit_once('/').ok_or("kind must be apiVersion/Kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let target = match (text("name"), text("labels")) {
        (Some(name), _) => Target::Name(name),
        (None, Some(labels)) => Target::Labels(labels),
        (None, None) => return Err("spec.reads entry needs name or labels".into()),
    };
    Ok(Selector {
        id: text("id").unwrap_or_default(),
        kind: gvk(group, version, kind),
        namespace: text("namespace"),
        target,
    })
}

wasmop_sdk::bindings::operator::export_raw_operator!(Hostile);
