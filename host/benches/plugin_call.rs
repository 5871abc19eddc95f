//! Cost of one reconcile of the Appoperator plugin: a fresh WebAssembly instance per call
//! (instantiate + reconcile + output checks) against the same logic compiled natively with the
//! same JSON work. Prints both medians and their ratio at the end.
//!
//! Run with `make bench` (builds the plugin first) or `cargo bench -p wasmop --bench plugin_call`.
//!
//! With `WASMOP_PROFILE=wasm` (or `native`) it only runs [`PROFILE_CALLS`] calls (or
//! `WASMOP_PROFILE_CALLS`) of that path in [`profiled_calls`], for an instruction count under
//! callgrind or a `perf record` (see BENCHMARKS.md):
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profiled_calls*' <bench binary>`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;
use serde_json::{Value, json};
use wasmop::plugin::{Limits, ReconcileRequest, Runtime, RuntimeConfig};

fn request() -> ReconcileRequest {
    ReconcileRequest {
        parent: json!({
            "apiVersion": "tools.wasmop.dev/v1", "kind": "Appoperator",
            "metadata": {"name": "web", "namespace": "default", "uid": "4f1c", "generation": 3},
            "spec": {"workload": {"image": "nginx:1.27", "replicas": 3}},
        }),
        children: vec![json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 3},
            "status": {"availableReplicas": 2, "readyReplicas": 2, "replicas": 3},
        })],
        finalizing: false,
        settings: None,
        related: Vec::new(),
    }
}

/// The native path does what the host and guest do around the logic: serialise the request,
/// decode it, reconcile, encode the answer, and parse the children back.
fn native(req: &ReconcileRequest) -> Vec<Value> {
    let children: Vec<String> = req.children.iter().map(Value::to_string).collect();
    let encoded = wasmop_sdk::wire::EncodedRequest::new(req.parent.to_string()).children(children);
    let out = wasmop_sdk::wire::reconcile_json::<appoperator::Plugin>(&encoded).expect("native reconcile");
    out.children.iter().map(|c| serde_json::from_str(c).expect("child JSON")).collect()
}

fn median(mut f: impl FnMut(), samples: usize) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[samples / 2]
}

/// Calls of one path counted when profiling.
const PROFILE_CALLS: usize = 200;

/// The calls a profiler counts (callgrind: `--toggle-collect='*profiled_calls*'`).
#[inline(never)]
fn profiled_calls(mut call: impl FnMut()) {
    let calls = std::env::var("WASMOP_PROFILE_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(PROFILE_CALLS);
    for _ in 0..calls {
        call();
    }
}

fn main() {
    let plugin_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    assert!(plugin_path.exists(), "{} is missing: run `make plugins` (make bench does)", plugin_path.display());
    let profile = std::env::var("WASMOP_PROFILE").ok();
    // Valgrind cannot reserve the default pool's address space; two slots are enough to profile.
    let config = match profile {
        Some(_) => RuntimeConfig { max_instances: 2, ..RuntimeConfig::default() },
        None => RuntimeConfig::default(),
    };
    let rt = Runtime::new(config).expect("runtime");
    let plugin = rt.load_operator(&plugin_path, Limits::default()).expect("load appoperator");
    let req = request();
    let mut from_wasm = plugin.reconcile(&req).expect("wasm reconcile").children;
    // The host places children in the parent's namespace; the logic itself leaves it out.
    from_wasm.iter_mut().for_each(|c| drop(c["metadata"].as_object_mut().and_then(|m| m.remove("namespace"))));
    assert_eq!(from_wasm, native(&req), "both paths must compute the same children");
    match profile.as_deref() {
        Some("wasm") => return profiled_calls(|| drop(black_box(plugin.reconcile(black_box(&req))))),
        Some("native") => return profiled_calls(|| drop(black_box(native(black_box(&req))))),
        _ => {}
    }

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("appoperator-reconcile");
    group.bench_function("wasm", |b| b.iter(|| black_box(plugin.reconcile(black_box(&req)).expect("reconcile"))));
    group.bench_function("native", |b| b.iter(|| black_box(native(black_box(&req)))));
    group.finish();
    criterion.final_summary();

    // Under `cargo test --benches` only exercise the path.
    let samples = if std::env::args().any(|a| a == "--bench") { 5000 } else { 10 };
    let wasm = median(|| drop(black_box(plugin.reconcile(&req))), samples);
    let nat = median(|| drop(black_box(native(&req))), samples);
    println!();
    println!("appoperator reconcile, median of {samples} calls each:");
    println!("  wasm (fresh instance per call): {:>8.2} µs", wasm.as_secs_f64() * 1e6);
    println!("  native (same logic and JSON):   {:>8.2} µs", nat.as_secs_f64() * 1e6);
    println!("  ratio wasm/native:              {:>8.2}x", wasm.as_secs_f64() / nat.as_secs_f64());

    // Loading the plugin with a cold compiled-code cache (compile with Cranelift) and a warm one
    // (deserialize the cached code), each with a fresh runtime.
    let cache = tempfile::tempdir().expect("temp dir");
    let load = || {
        let rt =
            Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
                .expect("runtime");
        let started = Instant::now();
        let plugin = rt.load_operator(&plugin_path, Limits::default()).expect("load");
        (started.elapsed(), plugin.file().cache)
    };
    let (cold, cold_outcome) = load();
    let (warm, warm_outcome) = load();
    println!();
    println!(
        "loading appoperator.wasm ({} KiB):",
        std::fs::metadata(&plugin_path).map(|m| m.len() / 1024).unwrap_or(0)
    );
    println!("  cold cache ({cold_outcome:?}): {:>8.1} ms", cold.as_secs_f64() * 1e3);
    println!("  warm cache ({warm_outcome:?}):  {:>8.1} ms", warm.as_secs_f64() * 1e3);
}
