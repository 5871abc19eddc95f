//! The per-call sandbox: a fresh Store with a WASI context that grants nothing (no files,
//! network, environment or arguments), a memory limiter, captured stdout/stderr and the host's
//! `log` import.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::operator::wasmop::plugin::{host, types};
use super::error::PluginError;
use super::limits::Limits;
use crate::text::{cap, escape_controls};

/// Bytes of guest stdout or stderr kept per call; more traps the guest's write.
const CAPTURE_BYTES: usize = 1 << 20;
/// Lines a plugin may send to the host log per call (the `log` import and its output together).
pub const LOG_LINES_PER_CALL: u32 = 100;
/// Bytes a plugin may send to the host log per call.
pub const LOG_BYTES_PER_CALL: usize = 64 << 10;
/// Longest single log line kept from a plugin.
const LOG_LINE_BYTES: usize = 4 << 10;

/// Store data of one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    log: LogBudget,
    /// When the call's time is up: no WASI sleep lasts past it.
    deadline: tokio::time::Instant,
    /// Origin of the guest's monotonic clock (this call's start).
    clock_origin: std::time::Instant,
    /// A WASI sleep was cut at the deadline: the call timed out, whatever it answers.
    cut_at_deadline: bool,
}

impl CallState {
    /// A `wasi:io/poll` pollable that is ready after `duration`, or at the call's deadline if
    /// that is sooner: a plugin that sleeps or polls cannot hold its thread past its time limit;
    /// once it runs again, epoch interruption ends the call as a timeout.
    pub(crate) fn capped_sleep(&mut self, duration: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let wanted = tokio::time::Instant::now() + duration;
        let until = wanted.min(self.deadline);
        self.cut_at_deadline |= wanted > self.deadline;
        let sleep = self.table.push(CappedSleep(until))?;
        subscribe(&mut self.table, sleep)
    }

    /// The guest's monotonic clock now, in nanoseconds since the call started.
    pub(crate) fn monotonic_now(&self) -> u64 {
        u64::try_from(self.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A WASI sleep that ends at a fixed instant.
struct CappedSleep(tokio::time::Instant);

#[async_trait::async_trait]
impl Pollable for CappedSleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

/// The guest's monotonic clock: nanoseconds since the call started.
struct CallClock(std::time::Instant);

impl HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a plugin may still log in this call; lines over the budget are counted, not logged.
#[derive(Debug, Default)]
struct LogBudget {
    lines: u32,
    bytes: usize,
    dropped: u32,
}

impl LogBudget {
    /// The line to log (capped, control characters escaped), or `None` when over budget.
    fn admit(&mut self, message: &str) -> Option<String> {
        if self.lines >= LOG_LINES_PER_CALL || self.bytes >= LOG_BYTES_PER_CALL {
            self.dropped += 1;
            return None;
        }
        let line = escape_controls(&cap(message, LOG_LINE_BYTES));
        self.lines += 1;
        self.bytes += line.len();
        Some(line)
    }
}

/// Refuses memory growth past the plugin's limit and remembers that it did, so the resulting
/// trap is reported as OutOfMemory rather than as a crash.
struct MemoryLimiter {
    limit: u64,
    denied: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired as u64 <= self.limit;
        if !allowed {
            self.denied = true;
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let Some(message) = self.log.admit(&message) else { return };
        let plugin = &*self.plugin;
        match level {
            types::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Creates the Store for one call of `plugin` under `limits`.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    plugin: &Arc<str>,
    limits: &Limits,
    deadline_ticks: u64,
) -> Store<CallState> {
    let stdout = MemoryOutputPipe::new(CAPTURE_BYTES);
    let stderr = MemoryOutputPipe::new(CAPTURE_BYTES);
    let clock_origin = std::time::Instant::now();
    let wasi = WasiCtx::builder()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .monotonic_clock(CallClock(clock_origin))
        .build();
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { limit: limits.memory_bytes, denied: false },
        plugin: plugin.clone(),
        stdout,
        stderr,
        log: LogBudget::default(),
        deadline: tokio::time::Instant::now() + limits.timeout,
        clock_origin,
        cut_at_deadline: false,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(deadline_ticks);
    store.epoch_deadline_trap();
    store
}

/// Sends what the guest printed to the host log at debug level, within the call's log budget,
/// then one line saying how many were dropped, if any.
pub(crate) fn drain_output(store: &mut Store<CallState>) {
    let state = store.data_mut();
    for (stream, pipe) in [("stdout", state.stdout.clone()), ("stderr", state.stderr.clone())] {
        let bytes = pipe.contents();
        for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
            if let Some(line) = state.log.admit(line) {
                tracing::debug!(plugin = &*state.plugin, stream, "{line}");
            }
        }
    }
    if state.log.dropped > 0 {
        tracing::warn!(
            plugin = &*state.plugin,
            dropped = state.log.dropped,
            "{} plugin log lines dropped: over the budget of {LOG_LINES_PER_CALL} lines / {LOG_BYTES_PER_CALL} bytes per call",
            state.log.dropped
        );
    }
}

/// Turns a wasmtime failure during a call into the typed error a user can act on.
pub(crate) fn classify(err: wasmtime::Error, store: &Store<CallState>, limits: &Limits) -> PluginError {
    let state = store.data();
    let plugin = state.plugin.to_string();
    if state.limiter.denied {
        return PluginError::OutOfMemory { plugin, limit_mib: limits.memory_bytes >> 20 };
    }
    if let Some(wasmtime::Trap::Interrupt) = err.downcast_ref::<wasmtime::Trap>() {
        return PluginError::Timeout { plugin, limit: limits.timeout };
    }
    let stderr = String::from_utf8_lossy(&state.stderr.contents()).trim().to_string();
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        let message = format!("the plugin exited with code {} instead of answering; return an error instead", exit.0);
        return PluginError::Trap { plugin, message };
    }
    if let Some(exception) = python_exception(&stderr).or_else(|| js_exception(&stderr)) {
        return PluginError::Trap { plugin, message: exception };
    }
    let message = match (panic_message(&stderr), err.downcast_ref::<wasmtime::Trap>()) {
        (Some(panic), _) => panic,
        (None, Some(trap)) => with_output_tail(trap.to_string(), &stderr),
        (None, None) => with_output_tail(describe_failure(&err), &stderr),
    };
    PluginError::Trap { plugin, message }
}

/// Most of the guest's output quoted in an error.
const OUTPUT_TAIL_BYTES: usize = 1024;

/// `what` followed by the last lines the guest wrote, when it wrote any: a JavaScript engine
/// prints the uncaught exception there before it aborts.
fn with_output_tail(what: String, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return what;
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail = cap(&escape_controls(&tail), OUTPUT_TAIL_BYTES);
    format!("{what}; the plugin wrote: {tail}")
}

/// The uncaught exception of a JavaScript guest built with QuickJS (componentize-qjs, jco's
/// QuickJS backend), whose runtime panics with `Failed to call 'review': ...Exception {
/// message: Some("..."), stack: Some("    at review (/p.js:4:30)\n") }`: `JavaScript exception in
/// review: ... (at review (/p.js:4:30))`.
fn js_exception(stderr: &str) -> Option<String> {
    let start = stderr.rfind("Failed to call '")?;
    let rest = &stderr[start + "Failed to call '".len()..];
    let function = rest.split('\'').next()?;
    let quoted = |field: &str| {
        let from = rest.find(&format!("{field}: Some(\""))? + field.len() + 8;
        let text = &rest[from..];
        text.find("\")").map(|end| text[..end].replace("\\n", "\n").replace("\\\"", "\""))
    };
    let message = quoted("message")?;
    let frame = quoted("stack").and_then(|s| s.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string));
    let text = match frame {
        Some(frame) => format!("JavaScript exception in {function}: {message} ({frame})"),
        None => format!("JavaScript exception in {function}: {message}"),
    };
    Some(cap(&escape_controls(&text), OUTPUT_TAIL_BYTES))
}

/// The uncaught exception of a Python guest (componentize-py prints the traceback, then its
/// runtime panics with a generic message): `KeyError: 'image' (File "app.py", line 9, in
/// reconcile)`.
fn python_exception(stderr: &str) -> Option<String> {
    let start = stderr.rfind("Traceback (most recent call last):")?;
    let block: Vec<&str> = stderr[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("thread '") && !l.contains("panicked at"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let exception = block.iter().rev().find(|l| !l.starts_with(' '))?.trim();
    let frame = block.iter().rev().find(|l| l.trim_start().starts_with("File \""));
    let text = match frame {
        Some(frame) => format!("{exception} ({})", frame.trim()),
        None => exception.to_string(),
    };
    Some(cap(&escape_controls(&text), OUTPUT_TAIL_BYTES))
}

/// The most telling line of a failure that is neither a trap nor a panic: the innermost cause
/// that is not wasmtime's generic "error while executing" wrapper.
fn describe_failure(err: &wasmtime::Error) -> String {
    err.chain()
        .map(|cause| cause.to_string())
        .filter_map(|text| text.lines().next().map(str::trim).map(str::to_string))
        .filter(|line| !line.is_empty() && !line.starts_with("error while executing"))
        .last()
        .unwrap_or_else(|| "the plugin failed without a message (no trap, no panic)".to_string())
}

/// The panic message of a Rust guest from its stderr (`thread '..' panicked at FILE:\nMESSAGE`).
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_start_matches("panicked at ").trim_end_matches(':');
    let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note:")).collect();
    Some(format!("panicked at {location}: {}", message.join("\n").trim()))
}

/// How often the epoch advances; wall-time limits are accurate to about this.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Advances the engine's epoch on a background thread until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    /// Ticks so far (the engine's epoch, which wasmtime does not expose).
    ticks: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), ticks.clone());
        let thread = std::thread::Builder::new().name("wasmop-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
                count.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(EpochTicker { stop, ticks, thread: Some(thread) })
    }

    /// Ticks so far: the difference across a call is the epoch it used.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Epoch ticks that cover `timeout` (plus one, since the current tick is partly spent).
    pub(crate) fn ticks_for(timeout: Duration) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        u64::try_from(timeout.as_micros().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pre-instantiated bindings of one world in one contract version (`OperatorPre`, its 0.1
/// twin, …): what [`call_in`] needs, so one call site serves every version.
pub(crate) trait Instantiate {
    /// The bindings' instance type.
    type Instance;
    /// The engine the component was compiled for.
    fn engine(&self) -> &wasmtime::Engine;
    /// A fresh instance in `store`.
    fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Self::Instance>;
}

/// Implements [`Instantiate`] for bindgen's `*Pre<CallState>` types, by their `Instance` type.
macro_rules! instantiate_via_bindings {
    ($($pre:ty => $instance:ty),+ $(,)?) => {$(
        impl $crate::plugin::sandbox::Instantiate for $pre {
            type Instance = $instance;
            fn engine(&self) -> &wasmtime::Engine {
                <$pre>::engine(self)
            }
            fn instantiate(
                &self,
                store: &mut wasmtime::Store<$crate::plugin::sandbox::CallState>,
            ) -> wasmtime::Result<$instance> {
                <$pre>::instantiate(self, store)
            }
        }
    )+};
}
pub(crate) use instantiate_via_bindings;

/// Runs `call` in a fresh instance of `pre` (see [`run_call`]).
pub(crate) fn call_in<P: Instantiate, R>(
    pre: &P,
    plugin: &Arc<str>,
    limits: &Limits,
    call: impl FnOnce(&mut Store<CallState>, &P::Instance) -> wasmtime::Result<R>,
) -> Result<R, PluginError> {
    run_call(pre.engine(), plugin, limits, |s| pre.instantiate(s), call)
}

/// Runs one call in a fresh Store and instance: instantiate, call, log the guest's output, and
/// classify any failure. Nothing survives the call.
fn run_call<I, R>(
    engine: &wasmtime::Engine,
    plugin: &Arc<str>,
    limits: &Limits,
    instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<I>,
    call: impl FnOnce(&mut Store<CallState>, &I) -> wasmtime::Result<R>,
) -> Result<R, PluginError> {
    let ticks = EpochTicker::ticks_for(limits.timeout);
    let mut store = new_store(engine, plugin, limits, ticks);
    let result = instantiate(&mut store).and_then(|instance| call(&mut store, &instance));
    drain_output(&mut store);
    if store.data().cut_at_deadline {
        return Err(PluginError::Timeout { plugin: plugin.to_string(), limit: limits.timeout });
    }
    result.map_err(|e| classify(e, &store, limits))
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn log_budget_drops_the_excess_and_escapes_controls() {
        let mut budget = super::LogBudget::default();
        assert_eq!(budget.admit("a\nINFO forged").as_deref(), Some("a\\nINFO forged"));
        for _ in 1..super::LOG_LINES_PER_CALL {
            assert!(budget.admit("x").is_some());
        }
        assert!(budget.admit("over").is_none());
        assert_eq!(budget.dropped, 1);
        let mut bytes = super::LogBudget::default();
        let big = "y".repeat(10 << 20);
        let line = bytes.admit(&big).unwrap();
        assert!(line.len() <= 4 << 10);
    }

    #[test]
    fn a_python_traceback_gives_the_exception_and_its_frame() {
        let stderr = "Traceback (most recent call last):\n  File \"/app.py\", line 3, in reconcile\n    \
                      spec[\"image\"]\nKeyError: 'image'\nthread '<unnamed>' panicked at runtime/src/lib.rs:1:1:\n\
                      Python function threw an unexpected exception";
        assert_eq!(
            super::python_exception(stderr).as_deref(),
            Some("KeyError: 'image' (File \"/app.py\", line 3, in reconcile)")
        );
        assert_eq!(super::python_exception("no traceback"), None);
    }

    #[test]
    fn a_quickjs_exception_gives_its_message_and_frame() {
        let stderr = "thread '<unnamed>' panicked at crates/runtime/src/interpreter.rs:51:31:\nFailed to call 'review': \
                      Exception(Exception { message: Some(\"cannot read property 'image' of undefined\"), \
                      stack: Some(\"    at review (/raw.js:4:30)\\n\") })";
        assert_eq!(
            super::js_exception(stderr).as_deref(),
            Some(
                "JavaScript exception in review: cannot read property 'image' of undefined (at review (/raw.js:4:30))"
            )
        );
    }

    #[test]
    fn a_trap_carries_the_last_lines_the_guest_wrote() {
        let message = super::with_output_tail("wasm trap: unreachable".into(), "a\n\nError: boom\n  at f (x.js:1)\n");
        assert_eq!(message, "wasm trap: unreachable; the plugin wrote: a | Error: boom | at f (x.js:1)");
        assert_eq!(super::with_output_tail("t".into(), " \n"), "t");
    }

    #[test]
    fn extracts_rust_panic_message() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(panic_message(stderr).as_deref(), Some("panicked at src/lib.rs:10:5: boom"));
        assert_eq!(panic_message("plain text"), None);
    }
}
