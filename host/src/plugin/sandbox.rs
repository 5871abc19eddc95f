//! The per-call sandbox: a fresh Store with a WASI context that grants nothing (no files,
//! network, environment or arguments), a memory limiter, captured stdout/stderr and the host's
//! `log` import.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::operator::wasmop::plugin::{host, types};
use super::error::PluginError;
use super::limits::Limits;

/// Bytes of guest stdout or stderr kept per call; more traps the guest's write.
const CAPTURE_BYTES: usize = 1 << 20;

/// Store data of one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
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
    let wasi = WasiCtx::builder().stdout(stdout.clone()).stderr(stderr.clone()).build();
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { limit: limits.memory_bytes, denied: false },
        plugin: plugin.clone(),
        stdout,
        stderr,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(deadline_ticks);
    store.epoch_deadline_trap();
    store
}

/// Sends what the guest printed to the host log at debug level.
pub(crate) fn drain_output(store: &Store<CallState>) {
    let state = store.data();
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let bytes = pipe.contents();
        for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(plugin = &*state.plugin, stream, "{line}");
        }
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
    let message = match (panic_message(&stderr), err.downcast_ref::<wasmtime::Trap>()) {
        (Some(panic), _) => panic,
        (None, Some(trap)) => trap.to_string(),
        (None, None) => format!("{err:#}").lines().next().unwrap_or("unknown failure").to_string(),
    };
    PluginError::Trap { plugin, message }
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

/// Runs one call in a fresh Store and instance: instantiate, call, log the guest's output, and
/// classify any failure. Nothing survives the call.
pub(crate) fn run_call<I, R>(
    engine: &wasmtime::Engine,
    plugin: &Arc<str>,
    limits: &Limits,
    instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<I>,
    call: impl FnOnce(&mut Store<CallState>, &I) -> wasmtime::Result<R>,
) -> Result<R, PluginError> {
    let ticks = super::runtime::EpochTicker::ticks_for(limits.timeout);
    let mut store = new_store(engine, plugin, limits, ticks);
    let result = instantiate(&mut store).and_then(|instance| call(&mut store, &instance));
    drain_output(&store);
    result.map_err(|e| classify(e, &store, limits))
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn extracts_rust_panic_message() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(panic_message(stderr).as_deref(), Some("panicked at src/lib.rs:10:5: boom"));
        assert_eq!(panic_message("plain text"), None);
    }
}
