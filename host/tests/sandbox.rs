//! The sandbox holds against hostile plugins built from source: each failure is a typed error,
//! and the same runtime keeps serving a good plugin afterwards.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmop::plugin::{Limits, OperatorPlugin, PluginError, ReconcileRequest, Runtime, RuntimeConfig};

fn parent(spec: Value) -> ReconcileRequest {
    ReconcileRequest {
        parent: json!({
            "apiVersion": "test.wasmop.dev/v1", "kind": "Hostile",
            "metadata": {"name": "h", "namespace": "team-a", "generation": 1},
            "spec": spec,
        }),
        children: vec![],
        finalizing: false,
        settings: None,
        related: Vec::new(),
    }
}

fn hostile(rt: &Runtime, limits: Limits) -> OperatorPlugin {
    rt.load_operator(&common::plugin("hostile"), limits).expect("hostile plugin loads")
}

/// The good path still works: one ConfigMap beside the parent.
fn assert_still_serves(plugin: &OperatorPlugin) {
    let desired = plugin.reconcile(&parent(json!({"mode": "ok"}))).expect("good call after a failure");
    assert_eq!(desired.children.len(), 1);
    assert_eq!(desired.children[0]["metadata"]["namespace"], "team-a");
}

#[test]
fn infinite_loop_times_out_near_the_deadline() {
    let rt = common::runtime();
    let limits = Limits { timeout: Duration::from_millis(200), ..Limits::default() };
    let plugin = hostile(&rt, limits);
    let started = Instant::now();
    let err = plugin.reconcile(&parent(json!({"mode": "loop"}))).unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, PluginError::Timeout { ref plugin, limit } if plugin == "hostile" && limit == limits.timeout),
        "{err}"
    );
    // Interrupted, not left running: well under ten deadlines even on a loaded machine.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(err.condition_reason(), "PluginTimeout");
    assert_still_serves(&plugin);
}

#[test]
fn unbounded_memory_growth_is_out_of_memory() {
    let rt = common::runtime();
    let plugin = hostile(&rt, Limits::default());
    let err = plugin.reconcile(&parent(json!({"mode": "oom"}))).unwrap_err();
    assert!(matches!(err, PluginError::OutOfMemory { limit_mib: 64, .. }), "{err}");
    assert_still_serves(&plugin);
}

#[test]
fn panic_is_a_trap_with_the_panic_message() {
    let rt = common::runtime();
    let plugin = hostile(&rt, Limits::default());
    let err = plugin.reconcile(&parent(json!({"mode": "panic", "message": "database on fire"}))).unwrap_err();
    match &err {
        PluginError::Trap { plugin, message } => {
            assert_eq!(plugin, "hostile");
            assert!(message.contains("database on fire"), "{message}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert_still_serves(&plugin);
}

#[test]
fn hundred_mebibyte_output_is_refused() {
    let rt = common::runtime();
    // Under the default limits the plugin cannot even build it.
    let plugin = hostile(&rt, Limits::default());
    let err = plugin.reconcile(&parent(json!({"mode": "huge"}))).unwrap_err();
    assert!(matches!(err, PluginError::OutOfMemory { .. }), "{err}");
    assert_still_serves(&plugin);
    // With room to build it, the output limit refuses it.
    let roomy = hostile(&rt, Limits { memory_bytes: 768 << 20, timeout: Duration::from_secs(10), ..Limits::default() });
    let err = roomy.reconcile(&parent(json!({"mode": "huge"}))).unwrap_err();
    assert!(
        matches!(err, PluginError::OutputTooLarge { size, limit, .. } if size > 100 << 20 && limit == Limits::DEFAULT_OUTPUT_BYTES),
        "{err}"
    );
    assert_still_serves(&roomy);
}

#[test]
fn contract_breaking_output_is_refused_with_plugin_and_object_named() {
    let rt = common::runtime();
    let plugin = hostile(&rt, Limits::default());
    for (mode, expected) in [
        ("bad-json", "not valid JSON"),
        ("undeclared-kind", "v1 Secret is not among the declared children"),
        ("other-namespace", "namespace \"kube-system\" is not the parent's namespace \"team-a\""),
    ] {
        let err = plugin.reconcile(&parent(json!({"mode": mode}))).unwrap_err();
        assert!(matches!(err, PluginError::InvalidOutput { .. }), "{mode}: {err}");
        let message = err.to_string();
        assert!(message.contains("plugin hostile") && message.contains(expected), "{mode}: {message}");
        assert_still_serves(&plugin);
    }
}

#[test]
fn wrong_kinds_of_file_are_incompatible_or_unparseable() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module (func (export \"reconcile\")))").unwrap()).unwrap();
    let err = rt.load_operator(&core, Limits::default()).unwrap_err();
    assert!(matches!(err, PluginError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("core WebAssembly module, not a component"), "{err}");

    let policy = common::plugin("deny-latest-tag");
    let err = rt.load_operator(&policy, Limits::default()).unwrap_err();
    assert!(matches!(err, PluginError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("world policy"), "{err}");

    let empty = dir.path().join("empty-component.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();
    let err = rt.load_operator(&empty, Limits::default()).unwrap_err();
    assert!(err.to_string().contains("exports neither"), "{err}");

    let future = common::plugin("contract-future");
    let err = rt.load_operator(&future, Limits::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("wasmop:plugin/reconciler@0.9.0") && message.contains("0.3.x, 0.2.x and 0.1.x"),
        "{message}"
    );

    // Without a converter (world single-version-operator): an operator, unless its CRD has
    // several versions, which only a converter can serve.
    let single = rt.load_operator(&common::plugin("single-version"), Limits::default()).unwrap();
    assert!(!single.converts() && single.file().contract.starts_with("0.3"), "{:?}", single.file());
    let two = common::plugin("single-version").with_file_name("single_version_two.wasm");
    let message = rt.load_operator(&two, Limits::default()).unwrap_err().to_string();
    assert!(message.contains(r#"versions ["v1", "v2"] but it exports no converter"#), "{message}");

    let good = std::fs::read(common::plugin("appoperator")).unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let err = rt.load_operator(&truncated, Limits::default()).unwrap_err();
    assert!(matches!(err, PluginError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("truncated.wasm"), "{err}");

    let missing = dir.path().join("nope.wasm");
    assert!(matches!(rt.load_operator(&missing, Limits::default()), Err(PluginError::Read { .. })));

    // The runtime is unharmed.
    assert_still_serves(&hostile(&rt, Limits::default()));
}

#[test]
fn compiled_code_cache_is_used_on_the_second_load() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() };
    let path = common::plugin("appoperator");

    let first = Runtime::new(config.clone()).unwrap();
    let plugin = first.load_operator(&path, Limits::default()).unwrap();
    assert_eq!(plugin.file().cache, wasmop::plugin::CacheOutcome::Miss);
    assert_eq!(first.cache_stats().compiles, 1);

    let second = Runtime::new(config).unwrap();
    let plugin = second.load_operator(&path, Limits::default()).unwrap();
    assert_eq!(plugin.file().cache, wasmop::plugin::CacheOutcome::Hit);
    assert_eq!((second.cache_stats().hits, second.cache_stats().compiles), (1, 0));
    assert_eq!(plugin.metadata().name, "appoperator");
}

#[test]
fn calls_share_no_state() {
    let rt = common::runtime();
    let plugin = rt.load_operator(&common::plugin("appoperator"), Limits::default()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                let req = ReconcileRequest {
                    parent: json!({
                        "apiVersion": "tools.wasmop.dev/v1beta1", "kind": "Appoperator",
                        "metadata": {"name": format!("app-{i}"), "namespace": "default"},
                        "spec": {"image": format!("img:{i}"), "replicas": i},
                    }),
                    children: vec![],
                    finalizing: false,
                    settings: None,
                    related: Vec::new(),
                };
                let d = plugin.reconcile(&req).unwrap();
                (i, d.children[0]["spec"]["template"]["spec"]["containers"][0]["image"].clone())
            })
        })
        .collect();
    for t in threads {
        let (i, image) = t.join().unwrap();
        assert_eq!(image, json!(format!("img:{i}")));
    }
}

#[test]
fn exit_says_the_plugin_exited_with_its_code() {
    let rt = common::runtime();
    let plugin = hostile(&rt, Limits::default());
    // WASI preview 2's exit carries only success or failure: any non-zero code arrives as 1.
    let err = plugin.reconcile(&parent(json!({"mode": "exit", "code": 7}))).unwrap_err();
    assert!(err.to_string().contains("exited with code 1 instead of answering"), "{err}");
    assert_still_serves(&plugin);
}

#[test]
fn a_log_flood_does_not_break_the_call() {
    let rt = common::runtime();
    let plugin = hostile(&rt, Limits::default());
    let desired = plugin.reconcile(&parent(json!({"mode": "log-flood"}))).expect("answers despite the flood");
    assert_eq!(desired.children.len(), 1);
}

#[test]
fn a_wasi_sleep_ends_at_the_time_limit() {
    let rt = common::runtime();
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let plugin = hostile(&rt, limits);
    let started = Instant::now();
    let err = plugin.reconcile(&parent(json!({"mode": "sleep", "seconds": 10}))).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    // Cut at the deadline, not after the ten seconds asked for.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_still_serves(&plugin);
}
