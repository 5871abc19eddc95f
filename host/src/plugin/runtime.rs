//! The process-wide WebAssembly runtime: one Engine (component model, pooling allocator,
//! copy-on-write memory images, epoch interruption), one Linker, the compiled-code cache, and
//! the epoch ticker that enforces wall-time limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreContextMut};

use super::bindings;
use super::cache::{CacheStats, CodeCache, sha256_hex};
use super::error::PluginError;
use super::file::{PluginFile, World};
use super::legacy;
use super::limits::Limits;
use super::operator::{self, OperatorPlugin};
use super::policy::{self, PolicyPlugin};
use super::sandbox::{CallState, EpochTicker};

/// The newest contract version this host implements (`wit/plugin.wit`).
pub const CONTRACT_VERSION: &str = "0.3.0";
/// Every contract series this host loads, newest first.
pub const CONTRACT_SERIES: [&str; 3] = ["0.3", "0.2", "0.1"];
const RECONCILER_EXPORT: &str = "wasmop:plugin/reconciler";
const REVIEWER_EXPORT: &str = "wasmop:plugin/reviewer";

/// Bytes of linear memory and table kept resident in a pool slot between calls.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Settings of the runtime as a whole.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Directory of the compiled-code cache; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once (pool slots); calls beyond wait for none, they fail,
    /// so keep this above the reconcile concurrency.
    pub max_instances: u32,
    /// Largest memory limit any plugin may be given, in bytes (the pool's slot size).
    pub max_memory_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { cache_dir: default_cache_dir(), max_instances: 256, max_memory_bytes: 1 << 30 }
    }
}

/// `$WASMOP_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmop`, else `~/.cache/wasmop`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMOP_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("wasmop"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("wasmop"))
}

/// A loaded plugin of either world.
pub enum LoadedPlugin {
    /// An operator plugin.
    Operator(OperatorPlugin),
    /// A policy plugin.
    Policy(PolicyPlugin),
}

/// The runtime. Create one per process and share it; plugins loaded from it stay usable on
/// their own.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    cache: CodeCache,
    ticker: Arc<EpochTicker>,
    max_memory_bytes: u64,
}

/// Failure to set the runtime up (not a plugin's fault).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
}

impl Runtime {
    /// Builds the engine, linker and cache.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(8))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(8))
            .total_stacks(config.max_instances)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Keep the first pages of a slot's memory and tables resident between instances:
            // a reconcile touches about this much, and re-faulting it on every call costs more
            // than the memory it saves.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            // Where the kernel can say which pages an instance wrote (Linux 6.7+), reset only
            // those instead of the whole resident part of the slot.
            .pagemap_scan(Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        #[cfg(feature = "component-model-async")]
        wasm.wasm_component_model_async(true);
        wasm.epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        cap_wasi_sleeps(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        bindings::operator::Operator::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        legacy::v0_2::bindings::operator::Operator::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        legacy::v0_1::bindings::operator::Operator::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let cache = CodeCache::new(&engine, config.cache_dir);
        let ticker = Arc::new(EpochTicker::start(engine.clone())?);
        Ok(Runtime { engine, linker, cache, ticker, max_memory_bytes: config.max_memory_bytes })
    }

    /// How often compiled code came from the cache vs. was compiled.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Loads a plugin file of either world with the default limits.
    pub fn load(&self, path: &Path) -> Result<LoadedPlugin, PluginError> {
        self.load_with(path, Limits::default())
    }

    /// Loads a plugin file of either world with `limits`.
    pub fn load_with(&self, path: &Path, limits: Limits) -> Result<LoadedPlugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_path_buf(), source })?;
        self.load_bytes(path, &bytes, limits)
    }

    /// Loads a plugin of either world from `bytes` already read from `path` (named in errors
    /// and in [`PluginFile::path`]), so a caller that hashed the bytes does not read them again.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8], limits: Limits) -> Result<LoadedPlugin, PluginError> {
        let start = Instant::now();
        let display = path.display().to_string();
        check_header(bytes, &display)?;
        let limits = self.clamp(limits);
        let sha256 = sha256_hex(bytes);
        let (component, cache) = self
            .cache
            .component(&self.engine, bytes, &sha256)
            .map_err(|e| PluginError::Compile { path: path.to_path_buf(), reason: with_fix(format!("{e:#}")) })?;
        let (world, contract) = world_of(&self.engine, &component, &display)?;
        let series = series_of(&contract);
        let pre = self.linker.instantiate_pre(&component).map_err(|e| PluginError::Incompatible {
            plugin: display.clone(),
            reason: with_fix(format!("{e:#}; a plugin may import only wasmop:plugin/host and WASI")),
        })?;
        let file = PluginFile {
            path: path.to_path_buf(),
            sha256,
            size: bytes.len() as u64,
            world,
            contract,
            load_time: Duration::ZERO,
            cache,
        };
        Ok(match world {
            World::Operator => {
                let bad = |e| incompatible_exports(&display, e);
                let pre = match series.as_str() {
                    "0.1" => operator::Pre::v0_1(pre),
                    "0.2" => operator::Pre::v0_2(pre),
                    _ => operator::Pre::current(pre),
                }
                .map_err(bad)?;
                LoadedPlugin::Operator(OperatorPlugin::new(pre, self.ticker.clone(), limits, file, start)?)
            }
            World::Policy => {
                let bad = |e| incompatible_exports(&display, e);
                let pre = match series.as_str() {
                    "0.1" => legacy::v0_1::bindings::policy::PolicyPre::new(pre).map(policy::Pre::V01),
                    "0.2" => legacy::v0_2::bindings::policy::PolicyPre::new(pre).map(policy::Pre::V02),
                    _ => bindings::policy::PolicyPre::new(pre).map(policy::Pre::Current),
                }
                .map_err(bad)?;
                LoadedPlugin::Policy(PolicyPlugin::new(pre, self.ticker.clone(), limits, file, start)?)
            }
        })
    }

    /// Loads an operator plugin, refusing a policy plugin with a clear message.
    pub fn load_operator(&self, path: &Path, limits: Limits) -> Result<OperatorPlugin, PluginError> {
        operator_only(path, self.load_with(path, limits)?)
    }

    /// Loads an operator plugin from `bytes` (a pulled artifact, named `path` in messages),
    /// refusing a policy plugin with a clear message.
    pub fn load_operator_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<OperatorPlugin, PluginError> {
        operator_only(path, self.load_bytes(path, bytes, limits)?)
    }

    /// Loads a policy plugin, refusing an operator plugin with a clear message.
    pub fn load_policy(&self, path: &Path, limits: Limits) -> Result<PolicyPlugin, PluginError> {
        match self.load_with(path, limits)? {
            LoadedPlugin::Policy(p) => Ok(p),
            LoadedPlugin::Operator(p) => Err(PluginError::Incompatible {
                plugin: path.display().to_string(),
                reason: format!(
                    "it is the operator plugin {:?} (world operator) but a policy plugin (world policy) is needed here",
                    p.metadata().name
                ),
            }),
        }
    }

    fn clamp(&self, mut limits: Limits) -> Limits {
        if limits.memory_bytes > self.max_memory_bytes {
            tracing::warn!(
                asked = limits.memory_bytes,
                max = self.max_memory_bytes,
                "plugin memory limit lowered to the runtime's maximum"
            );
            limits.memory_bytes = self.max_memory_bytes;
        }
        limits
    }
}

/// The operator plugin `loaded` is, or a clear refusal naming `path` when it is a policy.
fn operator_only(path: &Path, loaded: LoadedPlugin) -> Result<OperatorPlugin, PluginError> {
    match loaded {
        LoadedPlugin::Operator(p) => Ok(p),
        LoadedPlugin::Policy(p) => Err(PluginError::Incompatible {
            plugin: path.display().to_string(),
            reason: format!(
                "it is the policy plugin {:?} (world policy) but an operator plugin (world operator) is needed here",
                p.metadata().name
            ),
        }),
    }
}

/// `reason` with the fix for the refusals that non-Rust toolchains cause by default.
fn with_fix(reason: String) -> String {
    let fix = if reason.contains("wasi:http") {
        "; built with componentize-js? pass `-d http fetch-event` to leave out wasi:http, which plugins may not use"
    } else if reason.contains("async") {
        "; this host calls plugins synchronously: build without component-model async \
         (componentize-qjs --sync, jco componentize --backend-qjs-disable-async)"
    } else {
        ""
    };
    format!("{reason}{fix}")
}

/// Distinguishes core modules and non-WebAssembly files from components before compiling.
fn check_header(bytes: &[u8], plugin: &str) -> Result<(), PluginError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() >= 8 && &bytes[..4] == MAGIC && bytes[4..8] == CORE_VERSION {
        return Err(PluginError::Incompatible {
            plugin: plugin.to_string(),
            reason: "it is a core WebAssembly module, not a component; build it for the wasm32-wasip2 target \
                     (or wrap it with `wasm-tools component new`)"
                .into(),
        });
    }
    Ok(())
}

/// Which world and contract version the component implements, from its exports; refuses other
/// contract versions.
fn world_of(engine: &Engine, component: &Component, plugin: &str) -> Result<(World, String), PluginError> {
    let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    let mut other_versions = Vec::new();
    for name in &exports {
        let (interface, version) = name.split_once('@').unwrap_or((name.as_str(), ""));
        let world = match interface {
            RECONCILER_EXPORT => World::Operator,
            REVIEWER_EXPORT => World::Policy,
            _ => continue,
        };
        if compatible(version) {
            return Ok((world, version.to_string()));
        }
        other_versions.push(format!("{interface}@{version}"));
    }
    let reason = if let Some(found) = other_versions.first() {
        format!(
            "it implements {found}, but this host supports contract versions 0.3.x, 0.2.x and 0.1.x; rebuild it against wasmop:plugin@{CONTRACT_VERSION}"
        )
    } else {
        format!(
            "it exports neither {RECONCILER_EXPORT}@{CONTRACT_VERSION} (world operator) nor {REVIEWER_EXPORT}@{CONTRACT_VERSION} (world policy); it exports [{}]",
            exports.join(", ")
        )
    };
    Err(PluginError::Incompatible { plugin: plugin.to_string(), reason })
}

/// `major.minor` of a package version (`""` if it has no minor).
fn series_of(version: &str) -> String {
    let mut parts = version.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => String::new(),
    }
}

/// Whether an exported package version is one this host speaks (a series of
/// [`CONTRACT_SERIES`]).
fn compatible(version: &str) -> bool {
    CONTRACT_SERIES.contains(&series_of(version).as_str())
}

fn incompatible_exports(plugin: &str, e: wasmtime::Error) -> PluginError {
    PluginError::Incompatible {
        plugin: plugin.to_string(),
        reason: format!("its exports do not match the contract: {e:#}"),
    }
}

/// Replaces WASI's `monotonic-clock.subscribe-duration` and `subscribe-instant` with versions
/// whose pollables are ready at the call's deadline at the latest ([`CallState::capped_sleep`]):
/// epoch interruption cannot interrupt a host call, so a plugin sleeping or polling would
/// otherwise hold its thread past its time limit.
fn cap_wasi_sleeps(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |mut store: StoreContextMut<'_, CallState>, (nanos,): (u64,)| {
        Ok((store.data_mut().capped_sleep(Duration::from_nanos(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store: StoreContextMut<'_, CallState>, (when,): (u64,)| {
        let state = store.data_mut();
        let now = state.monotonic_now();
        Ok((state.capped_sleep(Duration::from_nanos(when.saturating_sub(now)))?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_versions() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(compatible("0.2.0"));
        assert!(compatible("0.3.0"));
        assert!(!compatible("0.4.0"));
        assert!(!compatible(""));
    }

    #[test]
    fn refusals_name_the_toolchain_fix() {
        assert!(with_fix("import `wasi:http/types@0.2.3` not found".into()).contains("-d http fetch-event"));
        assert!(with_fix("`task.cancel` requires the component model async feature".into()).contains("--sync"));
        assert_eq!(with_fix("other".into()), "other");
    }

    #[test]
    fn deadline_covers_timeout() {
        assert_eq!(EpochTicker::ticks_for(Duration::from_millis(500)), 101);
        assert_eq!(EpochTicker::ticks_for(Duration::ZERO), 1);
    }
}
