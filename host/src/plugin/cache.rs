//! On-disk cache of compiled plugin code, so a restart or a reload of an unchanged file does
//! not recompile. Keyed by the sha256 of the plugin's bytes and the engine's
//! `precompile_compatibility_hash`, so a different wasmtime or engine setting never reuses code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled code came from for one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CacheOutcome {
    /// Loaded from the cache: no compilation.
    Hit,
    /// Compiled now and stored for next time.
    Miss,
    /// Compiled now; no cache directory is configured (or it could not be written).
    Disabled,
}

/// Counts of cache use since the runtime started, for tests, logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads served from the cache.
    pub hits: u64,
    /// Loads that compiled.
    pub compiles: u64,
}

/// The compiled-code cache.
pub(crate) struct CodeCache {
    dir: Option<PathBuf>,
    engine_key: String,
    hits: AtomicU64,
    compiles: AtomicU64,
}

/// Feeds `Hash` output into sha256 so the engine's compatibility hash is stable on disk.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Hex sha256 of `bytes`: the identity of a plugin build.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CodeCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..8]);
        CodeCache { dir, engine_key, hits: AtomicU64::new(0), compiles: AtomicU64::new(0) }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats { hits: self.hits.load(Ordering::Relaxed), compiles: self.compiles.load(Ordering::Relaxed) }
    }

    fn entry(&self, dir: &Path, sha256: &str) -> PathBuf {
        dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled component for `bytes`, from the cache when possible.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return self.compile(engine, bytes).map(|c| (c, CacheOutcome::Disabled));
        };
        let path = self.entry(dir, sha256);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this host into its own
            // cache directory under a name that includes the sha256 of the source bytes and the
            // engine's compatibility hash; wasmtime also checks the header before use.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled-code cache entry")
                }
            }
        }
        let component = self.compile(engine, bytes)?;
        let outcome = match store(&path, dir, &component) {
            Ok(()) => CacheOutcome::Miss,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write compiled-code cache; continuing without it");
                CacheOutcome::Disabled
            }
        };
        Ok((component, outcome))
    }

    fn compile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        Component::new(engine, bytes)
    }
}

/// Writes the serialized component atomically (temp file, then rename).
fn store(path: &Path, dir: &Path, component: &Component) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
